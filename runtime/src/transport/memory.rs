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
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, ShortString};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::{
    Acker as AnyAcker, Canceller as AnyCanceller, Consumer, Delivery, Publish, QueueOptions, ReplyPath, Settle,
};
use crate::contract::{ExchangeKind, ExchangeSpec};
use crate::error::{Error, Result};
use crate::topic;

/// Prefix of reply addresses, as RabbitMQ's direct reply-to names them.
const REPLY_PREFIX: &str = "amq.rabbitmq.reply-to.";

/// An in-memory broker. Clones share it.
#[derive(Clone, Default)]
pub(crate) struct Broker {
    state: Arc<Mutex<State>>,
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
            return Broker { state };
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
        }
    }

    pub(crate) fn declare_queue(&self, name: &str, options: &QueueOptions) -> Result<()> {
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
                Ok(())
            }
        }
    }

    pub(crate) fn bind(&self, queue: &str, exchange: &str, key: &str, arguments: FieldTable) -> Result<()> {
        let mut state = self.lock();
        if !state.queues.contains_key(queue) {
            return Err(Error::config(format!("cannot bind queue \"{queue}\": it does not exist")));
        }
        let Some(exchange) = state.exchanges.get_mut(exchange) else {
            return Err(Error::ExchangeNotFound { exchange: exchange.to_owned() });
        };
        let binding = Binding { queue: queue.to_owned(), key: key.to_owned(), arguments };
        if !exchange.bindings.contains(&binding) {
            exchange.bindings.push(binding);
        }
        Ok(())
    }

    pub(crate) fn publish(&self, publish: Publish<'_>, body: &[u8], properties: BasicProperties) -> Result<()> {
        let mut state = self.lock();
        if publish.exchange.is_empty() && publish.routing_key.starts_with(REPLY_PREFIX) {
            // Direct reply-to: straight to the waiting client, or nowhere (replies are at-most-once).
            if let Some(sink) = state.replies.get(publish.routing_key) {
                let _ = sink.send(Ok(Delivery {
                    exchange: String::new(),
                    routing_key: publish.routing_key.to_owned(),
                    redelivered: false,
                    properties,
                    body: body.to_vec(),
                    acker: AnyAcker::None,
                }));
            }
            return Ok(());
        }
        let queues = state.route(publish.exchange, publish.routing_key, &properties)?;
        if queues.is_empty() {
            return if publish.mandatory {
                Err(Error::Unroutable {
                    exchange: publish.exchange.to_owned(),
                    routing_key: publish.routing_key.to_owned(),
                })
            } else {
                Ok(())
            };
        }
        let message = Message {
            exchange: publish.exchange.to_owned(),
            routing_key: publish.routing_key.to_owned(),
            properties,
            body: body.to_vec(),
            redelivered: false,
            expires_at: None,
        };
        let last = queues.len() - 1;
        let mut message = Some(message);
        for (i, queue) in queues.into_iter().enumerate() {
            let copy = if i == last { message.take().expect("moved once") } else { message.clone().expect("kept") };
            state.enqueue(&queue, copy, &self.state);
        }
        Ok(())
    }

    pub(crate) fn consume(&self, queue: &str, prefetch: u16, tag: String) -> Result<Consumer> {
        let mut state = self.lock();
        state.next_consumer += 1;
        let id = state.next_consumer;
        let Some(q) = state.queues.get_mut(queue) else {
            return Err(Error::config(format!("cannot consume from queue \"{queue}\": it does not exist")));
        };
        let (sender, receiver) = mpsc::unbounded_channel();
        q.consumers.push(Slot { id, sender, prefetch: usize::from(prefetch), unacked: 0 });
        let canceller = Canceller { state: Arc::downgrade(&self.state), queue: queue.into(), consumer: id };
        state.dispatch(queue, &self.state);
        Ok(Consumer {
            tag,
            stream: Box::pin(Deliveries { receiver, canceller: Some(canceller.clone()) }),
            cancel: AnyCanceller::Memory(canceller),
        })
    }

    pub(crate) fn fetch(&self, queue: &str) -> Result<Option<Delivery>> {
        let mut state = self.lock();
        let shared = Arc::clone(&self.state);
        state.expire(queue, &shared);
        let Some(q) = state.queues.get_mut(queue) else {
            return Err(Error::config(format!("cannot fetch from queue \"{queue}\": it does not exist")));
        };
        let message = q.ready.iter_mut().rev().find_map(VecDeque::pop_front);
        Ok(message.map(|m| Delivery {
            exchange: m.exchange,
            routing_key: m.routing_key,
            redelivered: m.redelivered,
            properties: m.properties,
            body: m.body,
            acker: AnyAcker::None,
        }))
    }

    pub(crate) fn reply_path(&self) -> ReplyPath {
        let address = format!("{REPLY_PREFIX}{}", crate::envelope::new_id());
        let (sender, receiver) = mpsc::unbounded_channel();
        self.lock().replies.insert(address.clone(), sender);
        let canceller = Canceller { state: Arc::downgrade(&self.state), queue: address.as_str().into(), consumer: 0 };
        ReplyPath {
            address: address.clone(),
            requests: super::Transport::Memory(self.clone()),
            amqp_channel: None,
            replies: Consumer {
                tag: address,
                stream: Box::pin(Deliveries { receiver, canceller: Some(canceller.clone()) }),
                cancel: AnyCanceller::Memory(canceller),
            },
        }
    }
}

/// Consumer deliveries; dropping the stream cancels the consumer, like closing its channel.
struct Deliveries {
    receiver: mpsc::UnboundedReceiver<Result<Delivery>>,
    canceller: Option<Canceller>,
}

impl Stream for Deliveries {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.receiver.poll_recv(cx)
    }
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        if let Some(canceller) = self.canceller.take() {
            canceller.cancel();
        }
    }
}

#[derive(Default)]
struct State {
    exchanges: HashMap<String, Exchange>,
    queues: HashMap<String, Queue>,
    replies: HashMap<String, mpsc::UnboundedSender<Result<Delivery>>>,
    next_consumer: u64,
}

struct Exchange {
    kind: ExchangeKind,
    bindings: Vec<Binding>,
}

#[derive(PartialEq)]
struct Binding {
    queue: String,
    key: String,
    arguments: FieldTable,
}

#[derive(Clone)]
struct Message {
    exchange: String,
    routing_key: String,
    properties: BasicProperties,
    body: Vec<u8>,
    redelivered: bool,
    expires_at: Option<Instant>,
}

struct Slot {
    id: u64,
    sender: mpsc::UnboundedSender<Result<Delivery>>,
    /// 0 = unlimited.
    prefetch: usize,
    unacked: usize,
}

struct Queue {
    name: Arc<str>,
    options: QueueOptions,
    /// One FIFO per priority level, highest last.
    ready: Vec<VecDeque<Message>>,
    consumers: Vec<Slot>,
    /// Round-robin position among consumers.
    next: usize,
    unacked: HashMap<u64, (u64, Message)>,
    next_tag: u64,
    /// Wakes the expiry task when the head of the queue may have changed.
    expiry: Option<Arc<Notify>>,
}

impl Queue {
    fn new(name: &str, options: QueueOptions) -> Queue {
        let levels = options.max_priority.map_or(1, |max| usize::from(max) + 1);
        Queue {
            name: name.into(),
            options,
            ready: (0..levels).map(|_| VecDeque::new()).collect(),
            consumers: Vec::new(),
            next: 0,
            unacked: HashMap::new(),
            next_tag: 0,
            expiry: None,
        }
    }

    fn level(&self, message: &Message) -> usize {
        let priority = usize::from(message.properties.priority().unwrap_or(0));
        priority.min(self.ready.len() - 1)
    }

    /// The earliest expiry among the heads of the priority levels.
    fn next_expiry(&self) -> Option<Instant> {
        self.ready.iter().filter_map(|level| level.front().and_then(|m| m.expires_at)).min()
    }
}

impl State {
    /// The queues a message published to `exchange` with `key` goes to.
    fn route(&self, exchange: &str, key: &str, properties: &BasicProperties) -> Result<Vec<String>> {
        if exchange.is_empty() {
            return Ok(if self.queues.contains_key(key) { vec![key.to_owned()] } else { Vec::new() });
        }
        let Some(exchange_state) = self.exchanges.get(exchange) else {
            return Err(Error::ExchangeNotFound { exchange: exchange.to_owned() });
        };
        let mut queues: Vec<String> = Vec::new();
        for binding in &exchange_state.bindings {
            let matched = match exchange_state.kind {
                ExchangeKind::Direct => binding.key == key,
                ExchangeKind::Topic => topic::matches(&binding.key, key),
                ExchangeKind::Fanout => true,
                ExchangeKind::Headers => headers_match(&binding.arguments, properties.headers().as_ref()),
            };
            if matched && !queues.contains(&binding.queue) {
                queues.push(binding.queue.clone());
            }
        }
        Ok(queues)
    }

    fn enqueue(&mut self, name: &str, mut message: Message, shared: &Arc<Mutex<State>>) {
        let Some(queue) = self.queues.get_mut(name) else { return };
        let now = Instant::now();
        let per_message = message
            .properties
            .expiration()
            .as_ref()
            .and_then(|ms| ms.as_str().parse::<u64>().ok())
            .map(|ms| now + Duration::from_millis(ms));
        let per_queue = queue.options.message_ttl.map(|ms| now + Duration::from_millis(u64::from(ms)));
        message.expires_at = match (per_message, per_queue) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let level = queue.level(&message);
        let expires = message.expires_at.is_some();
        queue.ready[level].push_back(message);
        if expires {
            Self::watch_expiry(queue, shared);
        }
        self.dispatch(name, shared);
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
                    let mut state = shared.lock().unwrap_or_else(|p| p.into_inner());
                    state.expire(&name, &shared);
                    match state.queues.get(&*name) {
                        None => return,
                        Some(queue) => queue.next_expiry(),
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
        let mut expired = Vec::new();
        let mut gone = Vec::new();
        if let Some(queue) = self.queues.get_mut(name) {
            let now = Instant::now();
            while let Some(level) = queue.ready.iter().rposition(|level| !level.is_empty()) {
                let count = queue.consumers.len();
                let Some(offset) = (0..count).find(|i| {
                    let slot = &queue.consumers[(queue.next + i) % count];
                    (slot.prefetch == 0 || slot.unacked < slot.prefetch) && !gone.contains(&slot.id)
                }) else {
                    break;
                };
                let index = (queue.next + offset) % count;
                queue.next = (index + 1) % count;
                let message = queue.ready[level].pop_front().expect("level is not empty");
                if message.expires_at.is_some_and(|at| at <= now) {
                    expired.push(message);
                    continue;
                }
                queue.next_tag += 1;
                let tag = queue.next_tag;
                let slot = &mut queue.consumers[index];
                let delivery = Delivery {
                    exchange: message.exchange.clone(),
                    routing_key: message.routing_key.clone(),
                    redelivered: message.redelivered,
                    properties: message.properties.clone(),
                    body: message.body.clone(),
                    acker: AnyAcker::Memory(Acker {
                        state: Arc::downgrade(shared),
                        queue: Arc::clone(&queue.name),
                        tag,
                    }),
                };
                if slot.sender.send(Ok(delivery)).is_err() {
                    // The consumer went away without cancelling: put the message back, forget the consumer.
                    gone.push(slot.id);
                    queue.ready[level].push_front(message);
                    continue;
                }
                slot.unacked += 1;
                queue.unacked.insert(tag, (slot.id, message));
            }
        }
        for message in expired {
            self.dead_letter(name, message, "expired", shared);
        }
        for consumer in gone {
            self.remove_consumer(name, consumer, shared);
        }
    }

    fn settle(&mut self, name: &str, tag: u64, how: Settle, shared: &Arc<Mutex<State>>) -> bool {
        let Some(queue) = self.queues.get_mut(name) else { return false };
        let Some((consumer, mut message)) = queue.unacked.remove(&tag) else { return false };
        if let Some(slot) = queue.consumers.iter_mut().find(|s| s.id == consumer) {
            slot.unacked -= 1;
        }
        match how {
            Settle::Ack => {}
            Settle::Requeue => {
                message.redelivered = true;
                let level = queue.level(&message);
                queue.ready[level].push_front(message);
            }
            Settle::Reject => self.dead_letter(name, message, "rejected", shared),
        }
        self.dispatch(name, shared);
        true
    }

    /// Removes a consumer; its unacknowledged messages go back to the queue, marked redelivered.
    fn remove_consumer(&mut self, name: &str, consumer: u64, shared: &Arc<Mutex<State>>) {
        let Some(queue) = self.queues.get_mut(name) else { return };
        queue.consumers.retain(|slot| slot.id != consumer);
        let mut returned: Vec<(u64, Message)> = Vec::new();
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
        for (_, mut message) in returned {
            message.redelivered = true;
            let level = queue.level(&message);
            queue.ready[level].push_front(message);
        }
        if queue.options.auto_delete && queue.consumers.is_empty() {
            self.delete_queue(name);
            return;
        }
        self.dispatch(name, shared);
    }

    fn delete_queue(&mut self, name: &str) {
        if let Some(notify) = self.queues.remove(name).and_then(|queue| queue.expiry) {
            notify.notify_one(); // the expiry task sees the queue gone and ends
        }
        for exchange in self.exchanges.values_mut() {
            exchange.bindings.retain(|b| b.queue != name);
        }
    }

    /// Sends `message` to the queue's dead-letter exchange with an `x-death` record, or drops it.
    fn dead_letter(&mut self, name: &str, message: Message, reason: &str, shared: &Arc<Mutex<State>>) {
        let Some((exchange, key)) = self.queues.get(name).and_then(|q| q.options.dead_letter.clone()) else {
            return;
        };
        let key = if key.is_empty() { message.routing_key.clone() } else { key };
        // RabbitMQ drops a per-message TTL when dead-lettering, so the copy does not expire again at once.
        let properties = without_expiration(&record_death(&message, name, reason));
        let Ok(queues) = self.route(&exchange, &key, &properties) else { return };
        let copy = Message {
            exchange,
            routing_key: key,
            properties,
            body: message.body,
            redelivered: false,
            expires_at: None,
        };
        for queue in queues {
            self.enqueue(&queue, copy.clone(), shared);
        }
    }
}

/// Properties with RabbitMQ's dead-letter headers added: `x-death` (newest first, one entry per queue and
/// reason, with a count) and the `x-first-death-*` trio.
fn record_death(message: &Message, queue: &str, reason: &str) -> BasicProperties {
    let mut headers = message.properties.headers().clone().unwrap_or_default();
    let mut deaths: Vec<AMQPValue> = match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(array)) => array.as_slice().to_vec(),
        _ => Vec::new(),
    };
    let text = |value: &str| AMQPValue::LongString(value.into());
    let same = |entry: &AMQPValue| match entry {
        AMQPValue::FieldTable(table) => {
            table.inner().get("queue") == Some(&text(queue)) && table.inner().get("reason") == Some(&text(reason))
        }
        _ => false,
    };
    let previous = deaths.iter().position(same).map(|i| deaths.remove(i));
    let count = match &previous {
        Some(AMQPValue::FieldTable(table)) => match table.inner().get("count") {
            Some(AMQPValue::LongLongInt(n)) => n + 1,
            _ => 1,
        },
        _ => 1,
    };
    let mut entry = FieldTable::default();
    entry.insert(ShortString::from("count"), AMQPValue::LongLongInt(count));
    entry.insert(ShortString::from("reason"), text(reason));
    entry.insert(ShortString::from("queue"), text(queue));
    entry.insert(ShortString::from("exchange"), text(&message.exchange));
    entry.insert(
        ShortString::from("routing-keys"),
        AMQPValue::FieldArray(FieldArray::from(vec![text(&message.routing_key)])),
    );
    entry.insert(ShortString::from("time"), AMQPValue::Timestamp(crate::envelope::now_unix()));
    deaths.insert(0, AMQPValue::FieldTable(entry));
    if !headers.contains_key("x-first-death-queue") {
        headers.insert(ShortString::from("x-first-death-queue"), text(queue));
        headers.insert(ShortString::from("x-first-death-reason"), text(reason));
        headers.insert(ShortString::from("x-first-death-exchange"), text(&message.exchange));
    }
    headers.insert(ShortString::from("x-death"), AMQPValue::FieldArray(FieldArray::from(deaths)));
    message.properties.clone().with_headers(headers)
}

/// `properties` minus `expiration` (lapin's properties have setters but no way to clear a field).
fn without_expiration(p: &BasicProperties) -> BasicProperties {
    let mut out = BasicProperties::default();
    macro_rules! copy {
        ($($get:ident => $set:ident),* $(,)?) => {
            $( if let Some(value) = p.$get().clone() { out = out.$set(value); } )*
        };
    }
    copy!(
        content_type => with_content_type, content_encoding => with_content_encoding, headers => with_headers,
        delivery_mode => with_delivery_mode, priority => with_priority, correlation_id => with_correlation_id,
        reply_to => with_reply_to, message_id => with_message_id, timestamp => with_timestamp,
        kind => with_type, user_id => with_user_id, app_id => with_app_id, cluster_id => with_cluster_id,
    );
    out
}

/// Headers-exchange matching: `x-match` = `all` (default) or `any` over the binding's non-`x-` arguments.
fn headers_match(binding: &FieldTable, headers: Option<&FieldTable>) -> bool {
    let any = matches!(binding.inner().get("x-match"), Some(AMQPValue::LongString(s)) if s.as_bytes() == b"any");
    let mut wanted = binding.inner().iter().filter(|(key, _)| !key.as_str().starts_with("x-")).peekable();
    if wanted.peek().is_none() {
        return true;
    }
    let has = |(key, value): (&ShortString, &AMQPValue)| {
        headers
            .and_then(|h| h.inner().get(key.as_str()))
            .is_some_and(|v| v == value || matches!(value, AMQPValue::Void))
    };
    if any { wanted.any(has) } else { wanted.all(has) }
}

/// Settles one delivery of the in-memory broker.
#[derive(Debug)]
pub(crate) struct Acker {
    state: Weak<Mutex<State>>,
    queue: Arc<str>,
    tag: u64,
}

impl Acker {
    pub(crate) fn settle(&self, how: Settle) -> bool {
        let Some(shared) = self.state.upgrade() else { return false };
        let mut state = shared.lock().unwrap_or_else(|p| p.into_inner());
        state.settle(&self.queue, self.tag, how, &shared)
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
        let mut state = shared.lock().unwrap_or_else(|p| p.into_inner());
        if self.queue.starts_with(REPLY_PREFIX) {
            state.replies.remove(&*self.queue);
        } else {
            state.remove_consumer(&self.queue, self.consumer, &shared);
        }
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("queues", &self.queues.len()).finish_non_exhaustive()
    }
}
