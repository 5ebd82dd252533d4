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

use rustc_hash::FxHashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use futures_util::task::AtomicWaker;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::{
    Acker as AnyAcker, Canceller as AnyCanceller, Consumer, Delivery, Message, Publish, QueueSettings, ReplyPath,
    Settle,
};
use crate::contract::{ExchangeKind, ExchangeSpec};
use crate::envelope::Properties;
use crate::error::{Error, Later, Result};
use crate::headers::{HeaderValue, Headers};
use crate::topic;
use crate::topology::Topology;

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

    pub(crate) fn declare_exchange(&self, spec: &ExchangeSpec) -> Result<()> {
        let mut state = self.lock();
        match state.exchanges.get(spec.name) {
            Some(existing) if existing.kind != spec.kind => Err(Error::config(format!(
                "exchange \"{}\" already exists as {}, not {}: the contracts disagree, or an old exchange remains",
                spec.name,
                existing.kind.as_str(),
                spec.kind.as_str()
            ))),
            Some(_) => Ok(()),
            None => {
                state.exchanges.insert(spec.name.to_owned(), Exchange { kind: spec.kind, bindings: Vec::new() });
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

    pub(crate) fn publish(&self, publish: Publish<'_>, body: Vec<u8>, properties: Properties) -> Result<()> {
        let shared = &self.state;
        with_state(shared, |state| {
            if publish.exchange.is_empty() && publish.routing_key.starts_with(REPLY_PREFIX) {
                // Direct reply-to: straight to the waiting client, or nowhere (replies are at-most-once).
                if let Some(sink) = state.replies.get(publish.routing_key) {
                    let message = Message::new("".into(), publish.routing_key.into(), properties.received(), body);
                    let delivery = Delivery { message: Arc::new(message), redelivered: false, acker: AnyAcker::None };
                    let _ = sink.send(Ok(delivery));
                }
                return Ok(());
            }
            let route = state.resolve(publish.exchange, publish.routing_key, &properties)?;
            if route.queues.is_empty() {
                return if publish.mandatory {
                    Err(Error::Unroutable {
                        exchange: publish.exchange.to_owned(),
                        routing_key: publish.routing_key.to_owned(),
                    })
                } else {
                    Ok(())
                };
            }
            // One shared copy, however many queues it goes to.
            let mut message = Message::new(route.exchange, route.key, properties.received(), body);
            if route.queues.len() > 1 {
                message = message.fanned_out();
            }
            // The last queue takes the message itself: with one queue, no clone and drop of the publisher's own
            // reference (W9: the count's line is on the core of the consumer that dropped this memory last, and
            // each change of the count there costs a cache miss).
            let message = Arc::new(message);
            let (last, others) = route.queues.split_last().expect("not empty: checked above");
            for queue in others {
                state.enqueue(queue, Queued::new(Arc::clone(&message)), shared);
            }
            state.enqueue(last, Queued::new(message), shared);
            Ok(())
        })
    }

    pub(crate) fn consume(&self, queue: &str, prefetch: u16, tag: String) -> Result<Consumer> {
        let (inbox, id) = with_state(&self.state, |state| {
            state.next_consumer += 1;
            let id = state.next_consumer;
            let Some(q) = state.queues.get_mut(queue) else {
                return Err(Error::config(format!("cannot consume from queue \"{queue}\": it does not exist")));
            };
            let inbox = Arc::new(Inbox {
                deliveries: Mutex::default(),
                waker: AtomicWaker::new(),
                closed: AtomicBool::new(false),
                state: Arc::downgrade(&self.state),
                queue: Arc::clone(&q.name),
            });
            q.consumers.push(Slot { id, inbox: Arc::clone(&inbox), prefetch: usize::from(prefetch), unacked: 0 });
            state.dispatch(queue, &self.state);
            Ok((inbox, id))
        })?;
        let canceller = Canceller { state: Arc::downgrade(&self.state), queue: queue.into(), consumer: id };
        Ok(Consumer {
            tag,
            stream: Box::pin(Deliveries { inbox, taken: VecDeque::new(), canceller: Some(canceller.clone()) }),
            cancel: AnyCanceller::Memory(canceller),
            generation: 0,
        })
    }

    pub(crate) fn queue_depth(&self, queue: &str) -> Result<u64> {
        match self.lock().queues.get(queue) {
            Some(q) => Ok(q.ready.iter().map(|level| level.len() as u64).sum()),
            None => Err(Error::config(format!("queue \"{queue}\" does not exist"))),
        }
    }

    pub(crate) fn fetch(&self, queue: &str) -> Result<Option<Delivery>> {
        with_state(&self.state, |state| {
            state.expire(queue, &self.state);
            let Some(q) = state.queues.get_mut(queue) else {
                return Err(Error::config(format!("cannot fetch from queue \"{queue}\": it does not exist")));
            };
            let queued = q.ready.iter_mut().rev().find_map(VecDeque::pop_front);
            Ok(queued.map(|q| Delivery { message: q.message, redelivered: q.redelivered, acker: AnyAcker::None }))
        })
    }

    pub(crate) fn reply_path(&self) -> ReplyPath {
        let address = format!("{REPLY_PREFIX}{}", crate::envelope::new_id());
        let (sender, receiver) = mpsc::unbounded_channel();
        self.lock().replies.insert(address.clone(), sender);
        let canceller = Canceller { state: Arc::downgrade(&self.state), queue: address.as_str().into(), consumer: 0 };
        ReplyPath {
            address: address.as_str().into(),
            requests: super::Transport::Memory(self.clone()),
            amqp_channel: None,
            replies: Consumer {
                tag: address,
                stream: Box::pin(Replies { receiver, canceller: Some(canceller.clone()) }),
                cancel: AnyCanceller::Memory(canceller),
                generation: 0,
            },
        }
    }
}

/// One consumer's deliveries: put there by the broker under its lock, taken by the consumer's task without
/// it. Replaces a channel per consumer: no sender to clone per delivery, and one wake-up per batch rather
/// than per message.
struct Inbox {
    deliveries: Mutex<VecDeque<Handed>>,
    /// The consumer's task, when it waits for deliveries.
    waker: AtomicWaker,
    /// The broker let go of the consumer (queue deleted, broker gone): the stream ends once drained.
    closed: AtomicBool,
    state: Weak<Mutex<State>>,
    queue: Arc<str>,
}

impl Inbox {
    /// Adds a delivery; `true` when the inbox was empty, so the consumer may be waiting and must be woken.
    fn put(&self, delivery: Handed) -> bool {
        let mut deliveries = self.deliveries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        deliveries.push_back(delivery);
        deliveries.len() == 1
    }

    /// Moves every waiting delivery into `into` (empty), trading buffers: one lock for the whole batch.
    fn take_all(&self, into: &mut VecDeque<Handed>) {
        std::mem::swap(&mut *self.deliveries.lock().unwrap_or_else(|poisoned| poisoned.into_inner()), into);
    }

    /// Ends the stream. Deliveries not yet taken are dropped: the broker has put them back in the queue.
    fn close(&self) {
        let untaken = std::mem::take(&mut *self.deliveries.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        self.closed.store(true, Ordering::Release);
        self.waker.wake();
        drop(untaken);
    }
}

/// A delivery as the broker hands it to a consumer's inbox. The consumer makes it a [`Delivery`], with an
/// acker that points back at the inbox: counting that reference on the consumer's thread, not the
/// publisher's, keeps the count from bouncing between two cores' caches on every message.
struct Handed {
    message: Arc<Message>,
    redelivered: bool,
    tag: u64,
}

/// Consumer deliveries; dropping the stream cancels the consumer, like closing its channel.
struct Deliveries {
    inbox: Arc<Inbox>,
    /// Taken from the inbox, not yet handed out.
    taken: VecDeque<Handed>,
    canceller: Option<Canceller>,
}

impl Deliveries {
    fn next_taken(&mut self) -> Option<Delivery> {
        if self.taken.is_empty() {
            self.inbox.take_all(&mut self.taken);
        }
        let Handed { message, redelivered, tag } = self.taken.pop_front()?;
        Some(Delivery { message, redelivered, acker: AnyAcker::Memory(Acker { inbox: Arc::clone(&self.inbox), tag }) })
    }
}

impl Stream for Deliveries {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.inbox.closed.load(Ordering::Acquire) {
            self.taken.clear(); // back in the queue already
            return Poll::Ready(None);
        }
        if let Some(delivery) = self.next_taken() {
            return Poll::Ready(Some(Ok(delivery)));
        }
        self.inbox.waker.register(cx.waker());
        // Again after registering: a delivery put in between would otherwise wait for the next wake-up.
        if let Some(delivery) = self.next_taken() {
            return Poll::Ready(Some(Ok(delivery)));
        }
        if self.inbox.closed.load(Ordering::Acquire) { Poll::Ready(None) } else { Poll::Pending }
    }
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        if let Some(canceller) = self.canceller.take() {
            canceller.cancel();
        }
    }
}

/// RPC replies for one client.
struct Replies {
    receiver: mpsc::UnboundedReceiver<Result<Delivery>>,
    canceller: Option<Canceller>,
}

impl Stream for Replies {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.receiver.poll_recv(cx)
    }
}

impl Drop for Replies {
    fn drop(&mut self) {
        if let Some(canceller) = self.canceller.take() {
            canceller.cancel();
        }
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
    routes: FxHashMap<Box<str>, FxHashMap<Box<str>, Route>>,
    /// Exchange names and routing keys seen, shared by the messages that carry them.
    names: FxHashMap<Box<str>, Arc<str>>,
    /// Acknowledged messages, freed after the lock is released (freeing is not free, and the publisher waits
    /// for this lock).
    acknowledged: Vec<Queued>,
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
    bindings: Vec<Binding>,
}

#[derive(PartialEq)]
struct Binding {
    queue: Arc<str>,
    key: String,
    arguments: Headers,
}

/// A message in a queue: the shared message, plus what is this queue's own.
#[derive(Clone)]
struct Queued {
    message: Arc<Message>,
    redelivered: bool,
    expires_at: Option<Instant>,
    /// Times it came back to the queue unacknowledged (for `x-delivery-limit`).
    returned: u32,
}

impl Queued {
    fn new(message: Arc<Message>) -> Self {
        Queued { message, redelivered: false, expires_at: None, returned: 0 }
    }
}

struct Slot {
    id: u64,
    inbox: Arc<Inbox>,
    /// 0 = unlimited.
    prefetch: usize,
    unacked: usize,
}

impl Drop for Slot {
    /// The broker lets go of the consumer (cancelled, queue deleted, broker gone): its stream ends.
    fn drop(&mut self) {
        self.inbox.close();
    }
}

struct Queue {
    name: Arc<str>,
    options: QueueSettings,
    /// One FIFO per priority level, highest last.
    ready: Vec<VecDeque<Queued>>,
    consumers: Vec<Slot>,
    /// Round-robin position among consumers.
    next: usize,
    unacked: FxHashMap<u64, (u64, Queued)>,
    next_tag: u64,
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
            unacked: FxHashMap::default(),
            next_tag: 0,
            expiry: None,
        }
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

/// Where messages with one exchange and routing key go, and those names as shared strings for the messages.
#[derive(Clone)]
struct Route {
    exchange: Arc<str>,
    key: Arc<str>,
    queues: Arc<[Arc<str>]>,
}

impl State {
    /// Where a message goes: decided once per exchange and routing key, then remembered until the topology
    /// changes (matching a routing key against every topic binding is the costliest part of a publish).
    /// Headers exchanges decide per message.
    fn resolve(&mut self, exchange: &str, key: &str, properties: &Properties) -> Result<Route> {
        /// Distinct routing keys remembered per exchange; keys made from templates can be unbounded.
        const MAX_ROUTES: usize = 4096;
        if let Some(route) = self.routes.get(exchange).and_then(|routes| routes.get(key)) {
            return Ok(route.clone());
        }
        let queues: Arc<[Arc<str>]> = self.route(exchange, key, properties)?.into();
        let (exchange_name, routing_key) = self.intern(exchange, key);
        let route = Route { exchange: exchange_name, key: routing_key, queues };
        if self.exchanges.get(exchange).is_some_and(|e| e.kind == ExchangeKind::Headers) {
            return Ok(route);
        }
        let routes = self.routes.entry(exchange.into()).or_default();
        if routes.len() >= MAX_ROUTES {
            routes.clear();
        }
        routes.insert(key.into(), route.clone());
        Ok(route)
    }

    /// `exchange` and `key` as shared strings, interned while there are not too many distinct ones.
    fn intern(&mut self, exchange: &str, key: &str) -> (Arc<str>, Arc<str>) {
        const MAX_NAMES: usize = 4096;
        let mut get = |name: &str| match self.names.get(name) {
            Some(shared) => Arc::clone(shared),
            None => {
                let shared: Arc<str> = name.into();
                if self.names.len() < MAX_NAMES {
                    self.names.insert(name.into(), Arc::clone(&shared));
                }
                shared
            }
        };
        (get(exchange), get(key))
    }

    /// The queues a message published to `exchange` with `key` goes to.
    fn route(&self, exchange: &str, key: &str, properties: &Properties) -> Result<Vec<Arc<str>>> {
        if exchange.is_empty() {
            return Ok(self.queues.get(key).map(|q| Arc::clone(&q.name)).into_iter().collect());
        }
        let Some(exchange_state) = self.exchanges.get(exchange) else {
            return Err(Error::ExchangeNotFound { exchange: exchange.to_owned() });
        };
        let mut queues = Vec::new();
        for binding in &exchange_state.bindings {
            let matched = match exchange_state.kind {
                ExchangeKind::Direct => binding.key == key,
                ExchangeKind::Topic => topic::matches(&binding.key, key),
                ExchangeKind::Fanout => true,
                ExchangeKind::Headers => headers_match(&binding.arguments, properties.headers()),
            };
            if matched && !queues.contains(&binding.queue) {
                queues.push(Arc::clone(&binding.queue));
            }
        }
        Ok(queues)
    }

    fn enqueue(&mut self, name: &str, mut message: Queued, shared: &Arc<Mutex<State>>) {
        let Some(queue) = self.queues.get_mut(name) else { return };
        if queue.options.message_ttl.is_some() || message.message.properties.expiration_ms().is_some() {
            Self::set_expiry(queue, &mut message);
        }
        let level = queue.level(&message);
        let expires = message.expires_at.is_some();
        queue.ready[level].push_back(message);
        if expires {
            Self::watch_expiry(queue, shared);
        }
        let expired = Self::dispatch_queue(queue, &mut self.wakes);
        for message in expired {
            self.dead_letter(name, message, "expired", shared);
        }
    }

    /// When `message` expires in `queue`: the earlier of its own `expiration` and the queue's TTL.
    fn set_expiry(queue: &Queue, message: &mut Queued) {
        let now = Instant::now();
        let per_message = message.message.properties.expiration_ms().map(|ms| now.later(Duration::from_millis(ms)));
        let per_queue = queue.options.message_ttl.map(|ms| now.later(Duration::from_millis(u64::from(ms))));
        message.expires_at = match (per_message, per_queue) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// Makes sure a task expires this queue's messages when they reach the head and their time comes.
    fn watch_expiry(queue: &mut Queue, shared: &Arc<Mutex<State>>) {
        if let Some(notify) = &queue.expiry {
            notify.notify_one();
            return;
        }
        let notify = Arc::new(Notify::new());
        queue.expiry = Some(Arc::clone(&notify));
        let state = Arc::downgrade(shared);
        let name = Arc::clone(&queue.name);
        tokio::spawn(async move {
            loop {
                let next = {
                    let Some(shared) = state.upgrade() else { return };
                    let next = with_state(&shared, |state| {
                        state.expire(&name, &shared);
                        state.queues.get(&*name).map(Queue::next_expiry)
                    });
                    match next {
                        None => return,
                        Some(next) => next,
                    }
                };
                match next {
                    Some(at) => {
                        tokio::select! {
                            () = tokio::time::sleep_until(at) => {}
                            () = notify.notified() => {}
                        }
                    }
                    None => notify.notified().await,
                }
            }
        });
    }

    /// Dead-letters (or drops) expired messages at the heads of `name`'s priority levels.
    fn expire(&mut self, name: &str, shared: &Arc<Mutex<State>>) {
        let now = Instant::now();
        let mut expired = Vec::new();
        if let Some(queue) = self.queues.get_mut(name) {
            for level in &mut queue.ready {
                while level.front().is_some_and(|m| m.expires_at.is_some_and(|at| at <= now)) {
                    expired.extend(level.pop_front());
                }
            }
        }
        for message in expired {
            self.dead_letter(name, message, "expired", shared);
        }
    }

    /// Hands ready messages to consumers with room under their prefetch, round robin.
    fn dispatch(&mut self, name: &str, shared: &Arc<Mutex<State>>) {
        let Some(queue) = self.queues.get_mut(name) else { return };
        let expired = Self::dispatch_queue(queue, &mut self.wakes);
        for message in expired {
            self.dead_letter(name, message, "expired", shared);
        }
    }

    /// [`State::dispatch`] on a queue already looked up; returns the messages found expired, to dead-letter.
    fn dispatch_queue(queue: &mut Queue, wakes: &mut Vec<Arc<Inbox>>) -> Vec<Queued> {
        let mut expired = Vec::new();
        let mut now = None;
        while let Some(level) = queue.ready.iter().rposition(|level| !level.is_empty()) {
            let count = queue.consumers.len();
            let Some(offset) = (0..count).find(|i| {
                let slot = &queue.consumers[(queue.next + i) % count];
                slot.prefetch == 0 || slot.unacked < slot.prefetch
            }) else {
                break;
            };
            let index = (queue.next + offset) % count;
            queue.next = (index + 1) % count;
            let message = queue.ready[level].pop_front().expect("level is not empty");
            if message.expires_at.is_some_and(|at| at <= *now.get_or_insert_with(Instant::now)) {
                expired.push(message);
                continue;
            }
            queue.next_tag += 1;
            let tag = queue.next_tag;
            let slot = &mut queue.consumers[index];
            let delivery = Handed { message: Arc::clone(&message.message), redelivered: message.redelivered, tag };
            slot.unacked += 1;
            if slot.inbox.put(delivery) {
                wakes.push(Arc::clone(&slot.inbox));
            }
            queue.unacked.insert(tag, (slot.id, message));
        }
        expired
    }

    /// Acknowledges deliveries of `name` by tag, looking the queue up once; `false` if any was not pending.
    fn ack(&mut self, name: &str, tags: impl Iterator<Item = u64>) -> bool {
        let Some(queue) = self.queues.get_mut(name) else { return false };
        let mut all = true;
        for tag in tags {
            let Some((consumer, message)) = queue.unacked.remove(&tag) else {
                all = false;
                continue;
            };
            if let Some(slot) = queue.consumers.iter_mut().find(|s| s.id == consumer) {
                slot.unacked -= 1;
            }
            self.acknowledged.push(message);
        }
        all
    }

    fn settle(&mut self, name: &str, tag: u64, how: Settle, shared: &Arc<Mutex<State>>) -> bool {
        let Some(queue) = self.queues.get_mut(name) else { return false };
        let Some((consumer, mut message)) = queue.unacked.remove(&tag) else { return false };
        if let Some(slot) = queue.consumers.iter_mut().find(|s| s.id == consumer) {
            slot.unacked -= 1;
        }
        match how {
            Settle::Ack => self.acknowledged.push(message),
            Settle::Requeue => {
                message.redelivered = true;
                message.returned += 1;
                if queue.options.delivery_limit.is_some_and(|limit| message.returned > limit) {
                    self.dead_letter(name, message, "delivery_limit", shared);
                } else {
                    let level = queue.level(&message);
                    queue.ready[level].push_front(message);
                }
            }
            Settle::Reject => self.dead_letter(name, message, "rejected", shared),
        }
        true
    }

    /// Removes a consumer; its unacknowledged messages go back to the queue, marked redelivered.
    fn remove_consumer(&mut self, name: &str, consumer: u64, shared: &Arc<Mutex<State>>) {
        let Some(queue) = self.queues.get_mut(name) else { return };
        queue.consumers.retain(|slot| slot.id != consumer);
        let mut returned: Vec<(u64, Queued)> = Vec::new();
        queue.unacked.retain(|tag, (owner, message)| {
            if *owner == consumer {
                returned.push((*tag, message.clone()));
                false
            } else {
                true
            }
        });
        // Back in delivery order, ahead of what was never delivered.
        returned.sort_by_key(|(tag, _)| std::cmp::Reverse(*tag));
        let limit = queue.options.delivery_limit;
        let mut over_limit = Vec::new();
        for (_, mut message) in returned {
            message.redelivered = true;
            message.returned += 1;
            if limit.is_some_and(|limit| message.returned > limit) {
                over_limit.push(message);
            } else {
                let level = queue.level(&message);
                queue.ready[level].push_front(message);
            }
        }
        for message in over_limit {
            self.dead_letter(name, message, "delivery_limit", shared);
        }
        let Some(queue) = self.queues.get_mut(name) else { return };
        if queue.options.auto_delete && queue.consumers.is_empty() {
            self.delete_queue(name);
            return;
        }
        self.dispatch(name, shared);
    }

    fn delete_queue(&mut self, name: &str) {
        self.routes.clear();
        self.queues.remove(name); // its drop ends its expiry task
        for exchange in self.exchanges.values_mut() {
            exchange.bindings.retain(|b| &*b.queue != name);
        }
    }

    /// Sends `message` to the queue's dead-letter exchange with an `x-death` record, or drops it.
    fn dead_letter(&mut self, name: &str, queued: Queued, reason: &str, shared: &Arc<Mutex<State>>) {
        let Some((exchange, key)) = self.queues.get(name).and_then(|q| q.options.dead_letter.clone()) else {
            return;
        };
        let message = &queued.message;
        let key = if key.is_empty() { message.routing_key.to_string() } else { key };
        // RabbitMQ drops a per-message TTL when dead-lettering, so the copy does not expire again at once.
        let properties = record_death(message, name, reason).without_expiration();
        let Ok(queues) = self.route(&exchange, &key, &properties) else { return };
        let body = match Arc::try_unwrap(queued.message) {
            Ok(message) => message.body,
            Err(shared) => shared.body.clone(),
        };
        let (exchange, routing_key) = self.intern(&exchange, &key);
        let copy = Arc::new(Message::new(exchange, routing_key, properties.received(), body));
        for queue in queues {
            self.enqueue(&queue, Queued::new(Arc::clone(&copy)), shared);
        }
    }
}

/// Properties with RabbitMQ's dead-letter headers added: `x-death` (newest first, one entry per queue and
/// reason, with a count) and the `x-first-death-*` trio.
fn record_death(message: &Message, queue: &str, reason: &str) -> Properties {
    let mut headers = message.properties.headers().cloned().unwrap_or_default();
    let mut deaths: Vec<HeaderValue> = match headers.remove("x-death") {
        Some(HeaderValue::Array(deaths)) => deaths,
        _ => Vec::new(),
    };
    let same = |entry: &HeaderValue| {
        entry
            .as_table()
            .is_some_and(|table| table.get_str("queue") == Some(queue) && table.get_str("reason") == Some(reason))
    };
    let previous = deaths.iter().position(same).map(|i| deaths.remove(i));
    let count =
        previous.as_ref().and_then(HeaderValue::as_table).and_then(|table| table.get_i64("count")).map_or(1, |n| n + 1);
    let entry = Headers::new()
        .with("count", count)
        .with("reason", reason)
        .with("queue", queue)
        .with("exchange", &*message.exchange)
        .with("routing-keys", vec![HeaderValue::from(&*message.routing_key)])
        .with("time", HeaderValue::Timestamp(crate::envelope::now_unix()));
    deaths.insert(0, HeaderValue::Table(entry));
    if !headers.contains("x-first-death-queue") {
        headers.insert("x-first-death-queue", queue);
        headers.insert("x-first-death-reason", reason);
        headers.insert("x-first-death-exchange", &*message.exchange);
    }
    headers.insert("x-death", deaths);
    message.properties.with_headers(headers)
}

/// Headers-exchange matching: `x-match` = `all` (default) or `any` over the binding's non-`x-` arguments.
fn headers_match(binding: &Headers, headers: Option<&Headers>) -> bool {
    let any = binding.get_str("x-match") == Some("any");
    let mut wanted = binding.iter().filter(|(key, _)| !key.starts_with("x-")).peekable();
    if wanted.peek().is_none() {
        return true;
    }
    let has = |(key, value): (&str, &HeaderValue)| {
        headers.and_then(|h| h.get(key)).is_some_and(|v| v == value || matches!(value, HeaderValue::Void))
    };
    if any { wanted.any(has) } else { wanted.all(has) }
}

/// Settles one delivery of the in-memory broker.
pub(crate) struct Acker {
    /// The consumer it was delivered to, which knows its broker and queue.
    inbox: Arc<Inbox>,
    tag: u64,
}

impl std::fmt::Debug for Acker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acker").field("queue", &self.inbox.queue).field("tag", &self.tag).finish()
    }
}

impl Acker {
    /// Acknowledges deliveries of one consumer under one lock.
    pub(crate) fn ack_all<'a>(ackers: impl Iterator<Item = &'a Acker>) -> bool {
        let mut ackers = ackers.peekable();
        let Some(first) = ackers.peek() else { return true };
        let Some(shared) = first.inbox.state.upgrade() else { return false };
        let queue = Arc::clone(&first.inbox.queue);
        with_state(&shared, |state| {
            let all = state.ack(&queue, ackers.map(|acker| acker.tag));
            state.dispatch(&queue, &shared);
            all
        })
    }

    pub(crate) fn settle(&self, how: Settle) -> bool {
        let Some(shared) = self.inbox.state.upgrade() else { return false };
        let queue = &self.inbox.queue;
        with_state(&shared, |state| {
            let settled = state.settle(queue, self.tag, how, &shared);
            state.dispatch(queue, &shared);
            settled
        })
    }
}

/// Cancels one consumer (or a reply path) of the in-memory broker.
#[derive(Debug, Clone)]
pub(crate) struct Canceller {
    state: Weak<Mutex<State>>,
    queue: Arc<str>,
    consumer: u64,
}

impl Canceller {
    pub(crate) fn cancel(&self) {
        let Some(shared) = self.state.upgrade() else { return };
        with_state(&shared, |state| {
            if self.queue.starts_with(REPLY_PREFIX) {
                state.replies.remove(&*self.queue);
            } else {
                state.remove_consumer(&self.queue, self.consumer, &shared);
            }
        });
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("queues", &self.queues.len()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPIC: ExchangeSpec =
        ExchangeSpec { name: "routes.test", kind: ExchangeKind::Topic, durable: false, auto_delete: false };

    fn send(broker: &Broker, exchange: &str, key: &str) -> Result<()> {
        let publish = Publish { exchange, routing_key: key, mandatory: true, confirm: true };
        broker.publish(publish, b"x".to_vec(), crate::MessageProperties::default().into())
    }

    fn depth(broker: &Broker, queue: &str) -> u64 {
        broker.queue_depth(queue).expect("queue exists")
    }

    /// Remembered routes must never outlive the topology they were decided on.
    #[tokio::test]
    async fn remembered_routes_follow_bindings_and_deleted_queues() {
        let broker = Broker::default();
        broker.declare_exchange(&TOPIC).unwrap();
        assert!(matches!(send(&broker, TOPIC.name, "user.created"), Err(Error::Unroutable { .. })));

        let mut auto_delete = QueueSettings::default();
        auto_delete.auto_delete = true;
        broker.declare_queue("a", &auto_delete).unwrap();
        broker.bind("a", TOPIC.name, "user.*", Headers::new()).unwrap();
        send(&broker, TOPIC.name, "user.created").unwrap();
        assert_eq!(depth(&broker, "a"), 1, "the new binding is used although the key was unroutable before");

        broker.declare_queue("b", &QueueSettings::default()).unwrap();
        broker.bind("b", TOPIC.name, "*.created", Headers::new()).unwrap();
        send(&broker, TOPIC.name, "user.created").unwrap();
        assert_eq!((depth(&broker, "a"), depth(&broker, "b")), (2, 1), "a second binding adds a queue");

        // The default exchange reaches a queue declared after a publish found none by that name.
        assert!(matches!(send(&broker, "", "c"), Err(Error::Unroutable { .. })));
        broker.declare_queue("c", &QueueSettings::default()).unwrap();
        send(&broker, "", "c").unwrap();
        assert_eq!(depth(&broker, "c"), 1);

        // An auto-delete queue goes with its last consumer, and its binding with it.
        send(&broker, TOPIC.name, "user.deleted").unwrap();
        let consumer = broker.consume("a", 0, "t".into()).unwrap();
        consumer.cancel.cancel("t", Duration::from_secs(1)).await;
        assert!(broker.queue_depth("a").is_err(), "auto-delete queue removed");
        send(&broker, TOPIC.name, "user.created").unwrap();
        assert_eq!(depth(&broker, "b"), 2, "only the remaining queue receives");
        assert!(matches!(send(&broker, TOPIC.name, "user.deleted"), Err(Error::Unroutable { .. })));
    }
}
