//! The in-memory transport: the parts of a RabbitMQ broker Warren uses, modelled in process.
//!
//! Exchanges (direct, topic with `*` and `#`, fanout, headers), the default exchange, queues and bindings;
//! competing consumers served round robin within their prefetch; ack, requeue (`redelivered`) and reject;
//! per-queue and per-message TTL (expired at the head of the queue, as RabbitMQ does); dead-letter exchanges
//! with `x-death`; `mandatory` returns; priority queues; auto-delete; and direct reply-to for RPC.
//!
//! Time is tokio's, so tests on a paused clock run TTLs and delays instantly. The broker state sits behind one
//! mutex that is never held across an `.await`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use rustc_hash::FxHashMap;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::{Delivery, Name, QueueSettings};
use crate::contract::{ExchangeKind, ExchangeSpec};
use crate::error::{Error, Result};
use crate::headers::Headers;
use crate::topology::Topology;

mod consume;
mod publish;
mod queue;
mod reply;

pub(crate) use consume::{Acker, Canceller};
use consume::{Inbox, Slot};
use publish::Route;
use queue::Queued;

/// Prefix of reply addresses, as RabbitMQ's direct reply-to names them.
const REPLY_PREFIX: &str = "amq.rabbitmq.reply-to.";

/// An in-memory broker. Clones share it.
#[derive(Clone, Default)]
pub(crate) struct Broker {
    state: Arc<Mutex<State>>,
    /// What the bus holding this handle declared (buses sharing a named broker each keep their own).
    declared: Arc<Mutex<Topology>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("Broker")
            .field("exchanges", &state.exchanges.len())
            .field("queues", &state.queues.len())
            .finish_non_exhaustive()
    }
}

/// Brokers by name, for `memory://<name>` URLs: buses with the same URL share one broker while any is alive.
fn registry() -> &'static Mutex<HashMap<String, Weak<Mutex<State>>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Weak<Mutex<State>>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

impl Broker {
    /// The broker named `name`, created when no live bus uses it.
    pub(crate) fn named(name: &str) -> Broker {
        let mut registry = registry().lock().expect("broker registry");
        registry.retain(|_, broker| broker.strong_count() > 0);
        if let Some(state) = registry.get(name).and_then(Weak::upgrade) {
            return Broker { state, declared: Arc::default() };
        }
        let broker = Broker::default();
        registry.insert(name.to_owned(), Arc::downgrade(&broker.state));
        broker
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way later operations would
        // trip over more than the panic itself did; keep serving.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether exchange `name` exists, as a passive declare on RabbitMQ says.
    pub(crate) fn exchange_exists(&self, name: &str) -> bool {
        self.lock().exchanges.contains_key(name)
    }

    /// Whether queue `name` exists, as a passive declare on RabbitMQ says.
    pub(crate) fn queue_exists(&self, name: &str) -> bool {
        self.lock().queues.contains_key(name)
    }

    pub(crate) fn declare_exchange(&self, spec: &ExchangeSpec) -> Result<()> {
        let mut state = self.lock();
        match state.exchanges.get(spec.name) {
            Some(existing) if existing.kind != spec.kind => Err(Error::config(format!(
                "exchange \"{}\" already exists as {}, not {}: the contracts disagree, or an old exchange remains",
                spec.name,
                existing.kind.as_str(),
                spec.kind.as_str()
            ))),
            Some(existing) if (existing.durable, existing.auto_delete) != (spec.durable, spec.auto_delete) => {
                Err(Error::config(format!(
                    "exchange \"{}\" already exists with durable={}, auto_delete={}, not durable={}, auto_delete={}; \
                     RabbitMQ would refuse this with PRECONDITION_FAILED: the contracts disagree, or an old exchange \
                     remains",
                    spec.name, existing.durable, existing.auto_delete, spec.durable, spec.auto_delete
                )))
            }
            Some(_) => Ok(()),
            None => {
                let exchange = Exchange {
                    kind: spec.kind,
                    durable: spec.durable,
                    auto_delete: spec.auto_delete,
                    bindings: Vec::new(),
                };
                state.exchanges.insert(spec.name.to_owned(), exchange);
                Ok(())
            }
        }?;
        self.record().record_exchange(spec);
        Ok(())
    }

    pub(crate) fn declare_queue(&self, name: &str, options: &QueueSettings) -> Result<()> {
        let mut state = self.lock();
        match state.queues.get(name) {
            Some(queue) if queue.options != *options => Err(Error::config(format!(
                "queue \"{name}\" already exists with other arguments ({:?}, not {:?}); RabbitMQ would refuse this \
                 with PRECONDITION_FAILED: delete the queue or use the same settings",
                queue.options, options
            ))),
            Some(_) => Ok(()),
            None => {
                state.queues.insert(name.to_owned(), Queue::new(name, options.clone()));
                state.routes.remove(""); // the default exchange routes to every queue by name
                Ok(())
            }
        }?;
        drop(state);
        self.record().record_queue(name, options);
        Ok(())
    }

    pub(crate) fn bind(&self, queue: &str, exchange: &str, key: &str, arguments: Headers) -> Result<()> {
        let mut state = self.lock();
        if !state.queues.contains_key(queue) {
            return Err(Error::config(format!("cannot bind queue \"{queue}\": it does not exist")));
        }
        let Some(exchange_state) = state.exchanges.get_mut(exchange) else {
            return Err(Error::ExchangeNotFound { exchange: exchange.to_owned() });
        };
        let binding = Binding { queue: queue.into(), key: key.to_owned(), arguments };
        if !exchange_state.bindings.contains(&binding) {
            exchange_state.bindings.push(binding);
            state.routes.remove(exchange);
        }
        drop(state);
        self.record().record_binding(queue, exchange, key);
        Ok(())
    }

    /// What this handle's bus declared.
    pub(crate) fn record(&self) -> MutexGuard<'_, Topology> {
        self.declared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Default)]
struct State {
    exchanges: FxHashMap<String, Exchange>,
    queues: FxHashMap<String, Queue>,
    replies: FxHashMap<String, mpsc::UnboundedSender<Result<Delivery>>>,
    next_consumer: u64,
    /// Consumers that got deliveries while they may be waiting: woken after the lock is released (a wake-up
    /// may wake a thread, which must not happen while holding the broker).
    wakes: Vec<Arc<Inbox>>,
    /// Routing decisions by exchange and routing key, forgotten whenever the topology changes.
    routes: FxHashMap<Box<str>, FxHashMap<Box<str>, Arc<Route>>>,
    /// Exchange names and routing keys seen, as the messages that carry them hold them.
    names: FxHashMap<Box<str>, Name>,
    /// Acknowledged messages, freed after the lock is released (freeing is not free, and the publisher waits
    /// for this lock).
    acknowledged: Vec<Queued>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("queues", &self.queues.len()).finish_non_exhaustive()
    }
}

/// Buffers kept for reuse by [`with_state`].
#[derive(Default)]
struct Spare {
    acknowledged: Vec<Queued>,
    wakes: Vec<Arc<Inbox>>,
}

/// Spare buffers larger than this are let go rather than kept.
const SPARE_LIMIT: usize = 4096;

thread_local! {
    /// This thread's emptied buffers from earlier [`with_state`] calls, swapped into the state for the next:
    /// taking a batch out from under the lock then costs no allocation (a batch of acks is past malloc's
    /// fast path, and freeing it was a tenth of an in-memory message's cost).
    static SPARE: std::cell::RefCell<Spare> = std::cell::RefCell::default();
}

/// Runs `operation` on the broker state, then, outside the lock, drops the messages it acknowledged and wakes
/// the consumers it gave deliveries to.
fn with_state<R>(shared: &Arc<Mutex<State>>, operation: impl FnOnce(&mut State) -> R) -> R {
    let mut state = shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let result = operation(&mut state);
    if state.acknowledged.is_empty() && state.wakes.is_empty() {
        return result;
    }
    let mut taken = SPARE.with_borrow_mut(|spare| Spare {
        acknowledged: std::mem::replace(&mut state.acknowledged, std::mem::take(&mut spare.acknowledged)),
        wakes: std::mem::replace(&mut state.wakes, std::mem::take(&mut spare.wakes)),
    });
    drop(state);
    taken.acknowledged.clear();
    for inbox in taken.wakes.drain(..) {
        inbox.waker.wake();
    }
    if taken.acknowledged.capacity() <= SPARE_LIMIT && taken.wakes.capacity() <= SPARE_LIMIT {
        SPARE.with_borrow_mut(|spare| *spare = taken);
    }
    result
}

struct Exchange {
    kind: ExchangeKind,
    /// As declared: RabbitMQ refuses a declaration that differs in these (406 PRECONDITION_FAILED).
    durable: bool,
    auto_delete: bool,
    bindings: Vec<Binding>,
}

#[derive(PartialEq)]
struct Binding {
    queue: Arc<str>,
    key: String,
    arguments: Headers,
}

struct Queue {
    name: Arc<str>,
    options: QueueSettings,
    /// One FIFO per priority level, highest last.
    ready: Vec<VecDeque<Queued>>,
    consumers: Vec<Slot>,
    /// Round-robin position among consumers.
    next: usize,
    next_tag: u64,
    /// The place of the next message enqueued: a message put back (requeued, or its consumer gone) returns
    /// to its place, as in a RabbitMQ classic queue, however many others came back before it.
    next_seq: u64,
    /// The bodies' bytes of the messages in `ready`, for a bytes limit: kept as they come and go, not summed
    /// per publish. Every change to `ready` goes through [`Queue::push_ready`], [`Queue::pop_ready`] or
    /// [`Queue::put_back`].
    ready_bytes: usize,
    /// Wakes the expiry task when the head of the queue may have changed.
    expiry: Option<Arc<Notify>>,
}

impl Drop for Queue {
    fn drop(&mut self) {
        // Deleted, or its broker dropped: the expiry task, waking, finds neither the queue nor the broker, and ends.
        if let Some(notify) = &self.expiry {
            notify.notify_one();
        }
    }
}

impl Queue {
    fn new(name: &str, options: QueueSettings) -> Queue {
        let levels = options.max_priority.map_or(1, |max| usize::from(max) + 1);
        Queue {
            name: name.into(),
            options,
            ready: (0..levels).map(|_| VecDeque::new()).collect(),
            consumers: Vec::new(),
            next: 0,
            next_tag: 0,
            next_seq: 0,
            ready_bytes: 0,
            expiry: None,
        }
    }

    /// Adds `message` at the end of priority `level`.
    fn push_ready(&mut self, level: usize, message: Queued) {
        self.ready_bytes += message.message.body.len();
        self.ready[level].push_back(message);
    }

    /// Takes the first message of priority `level`.
    fn pop_ready(&mut self, level: usize) -> Option<Queued> {
        let message = self.ready[level].pop_front()?;
        self.ready_bytes -= message.message.body.len();
        Some(message)
    }

    /// Puts `message` back at its place in its priority level; `true` when it has an expiry to watch.
    fn put_back(&mut self, message: Queued) -> bool {
        self.ready_bytes += message.message.body.len();
        let expires = message.expires_at.is_some();
        let index = self.level(&message);
        let level = &mut self.ready[index];
        let at = level.partition_point(|queued| queued.seq < message.seq);
        level.insert(at, message);
        expires
    }

    fn level(&self, queued: &Queued) -> usize {
        let priority = usize::from(queued.message.properties.priority().unwrap_or(0));
        priority.min(self.ready.len() - 1)
    }

    /// The earliest expiry among the heads of the priority levels.
    fn next_expiry(&self) -> Option<Instant> {
        self.ready.iter().filter_map(|level| level.front().and_then(|m| m.expires_at)).min()
    }
}

impl State {
    fn delete_queue(&mut self, name: &str) {
        self.routes.clear();
        self.queues.remove(name); // its drop ends its expiry task
        for exchange in self.exchanges.values_mut() {
            exchange.bindings.retain(|b| &*b.queue != name);
        }
    }
}
