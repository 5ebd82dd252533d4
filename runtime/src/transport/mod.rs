//! Transports: what the bus needs from a broker, over AMQP (lapin) or in memory.
//!
//! Both speak AMQP's model — exchanges, queues, bindings, properties and headers (Warren's
//! [`Properties`] and [`crate::Headers`], which become lapin's only on the way to RabbitMQ, in
//! `amqp/properties.rs`) — so everything above this module (subscribers, retries, dead letters, RPC) is written once
//! and behaves the same on both.

pub(crate) mod amqp;
mod confirms;
mod ensure;
pub(crate) mod memory;

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;

use crate::contract::ExchangeSpec;
use crate::envelope::{Properties, Received};
use crate::error::{Error, Result};

/// A consumer tag: the subscriber's group (or the service, or `replies`) and a number unique in this process,
/// e.g. `billing.7`.
///
/// A tag only has to be unique on its channel. A short one also costs less on every delivery: lapin looks the
/// consumer up by its tag, hashing it, for each of a delivery's three frames.
pub(crate) fn consumer_tag(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    format!("{prefix}.{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

pub(crate) use ensure::Need;

/// A queue's settings, as both transports understand them: Warren's topology rules decide them.
pub(crate) use warren_topology::QueueSettings;

/// An exchange's name or a routing key, as a message carries it: for the life of the process, or shared.
///
/// The in-memory broker routes with names it interned for good ([`Name::interned`]), so that a message carries
/// them without counting references. With a shared `Arc<str>`, the publisher's thread incremented the count and
/// the consumer's decremented it, once per name per message, each a cache miss on the other core's line
/// (`perf record` on W9: 14% of the in-memory publish's samples on the two increments). Equal by their text,
/// whichever they are.
#[derive(Clone)]
pub(crate) enum Name {
    Static(&'static str),
    Shared(std::sync::Arc<str>),
}

/// Names interned for the life of the process: at most this many ...
const MAX_INTERNED: usize = 4096;
/// ... and this many bytes of them. Exchanges and routing keys are few in practice, but keys made from templates
/// can be unbounded; past either bound, names are shared strings.
const MAX_INTERNED_BYTES: usize = 256 * 1024;

/// Interned names, within a bound on their number and bytes.
struct Interner {
    names: rustc_hash::FxHashSet<&'static str>,
    bytes: usize,
    max_names: usize,
    max_bytes: usize,
}

impl Interner {
    fn new(max_names: usize, max_bytes: usize) -> Self {
        Interner { names: Default::default(), bytes: 0, max_names, max_bytes }
    }

    /// `name` for the rest of the process while within the bounds, else a new shared string. A name refused
    /// once is refused for good: the count and the bytes only grow.
    fn intern(&mut self, name: &str) -> Name {
        if let Some(known) = self.names.get(name) {
            return Name::Static(known);
        }
        if self.names.len() >= self.max_names || self.bytes + name.len() > self.max_bytes {
            return Name::Shared(name.into());
        }
        let leaked: &'static str = Box::leak(name.into());
        self.names.insert(leaked);
        self.bytes += name.len();
        Name::Static(leaked)
    }
}

impl Name {
    /// `name` for the rest of the process, within [`MAX_INTERNED`] names and [`MAX_INTERNED_BYTES`]; past
    /// them, a new shared string.
    ///
    /// Behind a lock of the process: a broker remembers the names it interned, so this runs once per name and
    /// broker while the broker's own list has room (then once per route it works out: a headers exchange's on
    /// every publish, other exchanges' after each change of topology).
    pub(crate) fn interned(name: &str) -> Name {
        static NAMES: std::sync::OnceLock<std::sync::Mutex<Interner>> = std::sync::OnceLock::new();
        let names = NAMES.get_or_init(|| std::sync::Mutex::new(Interner::new(MAX_INTERNED, MAX_INTERNED_BYTES)));
        names.lock().unwrap_or_else(std::sync::PoisonError::into_inner).intern(name)
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            Name::Static(name) => name,
            Name::Shared(name) => name,
        }
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Name {}

impl std::ops::Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for Name {
    fn from(name: &str) -> Self {
        Name::Shared(name.into())
    }
}

impl From<std::sync::Arc<str>> for Name {
    fn from(name: std::sync::Arc<str>) -> Self {
        Name::Shared(name)
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message as published: where to and what. Shared, never copied, between the queues a message is routed
/// to, its deliveries, and the handler's [`crate::Context`].
pub(crate) struct Message {
    pub(crate) exchange: Name,
    pub(crate) routing_key: Name,
    pub(crate) properties: Received,
    pub(crate) body: Vec<u8>,
    /// For a message routed to several queues: the payload as the first subscriber decoded it, for the
    /// others of the same type to clone (or, for `Arc<T>` handlers, share) instead of decoding again.
    decoded: Option<std::sync::OnceLock<crate::contract::Shared>>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .field("properties", &self.properties)
            .field("body", &self.body.len())
            .finish_non_exhaustive()
    }
}

impl Message {
    pub(crate) fn new(
        exchange: impl Into<Name>,
        routing_key: impl Into<Name>,
        properties: Received,
        body: Vec<u8>,
    ) -> Self {
        Message { exchange: exchange.into(), routing_key: routing_key.into(), properties, body, decoded: None }
    }

    /// A message that goes to several queues: subscribers of the same type share one decoding.
    pub(crate) fn fanned_out(mut self) -> Self {
        self.decoded = Some(std::sync::OnceLock::new());
        self
    }

    /// The payload as a `T`: decoded, or taken from another subscriber's decoding of the same message (a clone
    /// of the value, or for [`Subscriber::shared`](crate::Subscriber::shared) handlers the value itself).
    pub(crate) fn decode<T: crate::contract::Inbound>(
        &self,
        type_name: &str,
        format: crate::WireFormat,
    ) -> std::result::Result<T, crate::contract::DecodeError> {
        let Some(slot) = &self.decoded else { return T::decode(type_name, format, &self.body) };
        if let Some(kept) = slot.get() {
            if let Some(value) = T::from_shared(kept) {
                return Ok(value);
            }
            return T::decode(type_name, format, &self.body); // a subscriber of another type decoded it
        }
        let decoded = T::decode(type_name, format, &self.body)?.into_shared();
        // Another subscriber may have been quicker; if it was of another type, decode again for this one.
        match T::from_shared(slot.get_or_init(|| decoded)) {
            Some(value) => Ok(value),
            None => T::decode(type_name, format, &self.body),
        }
    }
}

/// A message handed to a consumer, with the means to settle it.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub(crate) message: std::sync::Arc<Message>,
    pub(crate) redelivered: bool,
    pub(crate) acker: Acker,
}

impl Delivery {
    /// The message itself, copied only if something else still shares it.
    pub(crate) fn into_message(self) -> Message {
        std::sync::Arc::try_unwrap(self.message).unwrap_or_else(|shared| {
            Message::new(
                shared.exchange.clone(),
                shared.routing_key.clone(),
                shared.properties.clone(),
                shared.body.clone(),
            )
        })
    }
}

impl std::ops::Deref for Delivery {
    type Target = Message;

    fn deref(&self) -> &Message {
        &self.message
    }
}

/// How a delivery is settled on its transport.
#[derive(Debug)]
pub(crate) enum Acker {
    Amqp(amqp::AmqpAcker),
    Memory(memory::Acker),
    /// Replies: consumed without acknowledgement.
    None,
}

impl Acker {
    /// Acknowledges a run of deliveries of one consumer, in delivery order, at once: one `multiple` ack on
    /// AMQP (valid because every earlier delivery of the consumer is already settled or in the run), one lock
    /// in memory. `false` if they could not be (the broker will redeliver them).
    pub(crate) async fn ack_all(ackers: &mut Vec<Acker>) -> bool {
        let settled = match ackers.last() {
            None => true,
            Some(Acker::Amqp(last)) => amqp::ack_multiple(last).await,
            Some(Acker::Memory(_)) => memory::Acker::ack_all(ackers.iter().filter_map(|a| match a {
                Acker::Memory(acker) => Some(acker),
                _ => None,
            })),
            Some(Acker::None) => true,
        };
        ackers.clear();
        settled
    }
}

/// How to settle a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    /// Done; remove it.
    Ack,
    /// Put it back for redelivery.
    Requeue,
    /// Drop it, or dead-letter it when the queue has a dead-letter exchange.
    Reject,
}

impl Delivery {
    /// Settles the delivery; `false` when it could not be (the broker will redeliver it).
    pub(crate) async fn settle(&self, how: Settle) -> bool {
        match &self.acker {
            Acker::Amqp(acker) => amqp::settle(acker, how).await,
            Acker::Memory(acker) => acker.settle(how),
            Acker::None => true,
        }
    }
}

/// A stream of deliveries from one consumer; ends when the broker cancels it or the connection goes.
pub(crate) struct Consumer {
    pub(crate) tag: String,
    pub(crate) stream: Pin<Box<dyn Stream<Item = Result<Delivery>> + Send + Sync>>,
    pub(crate) cancel: Canceller,
    /// The transport generation (see [`Transport::generations`]) the consumer was opened on; a newer one
    /// means this consumer is dead. Always 0 in memory.
    pub(crate) generation: u64,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer").field("tag", &self.tag).finish_non_exhaustive()
    }
}

impl Stream for Consumer {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.as_mut().poll_next(cx)
    }
}

/// Stops a consumer: no more deliveries; unacknowledged ones go back to the queue.
#[derive(Debug, Clone)]
pub(crate) enum Canceller {
    Amqp(amqp::Cancel),
    Memory(memory::Canceller),
}

impl Canceller {
    pub(crate) async fn cancel(&self, tag: &str, timeout: std::time::Duration) {
        match self {
            Canceller::Amqp(channel) => amqp::cancel(channel, tag, timeout).await,
            Canceller::Memory(canceller) => canceller.cancel(),
        }
    }
}

/// The broker behind a bus.
#[derive(Debug, Clone)]
pub(crate) enum Transport {
    Amqp(std::sync::Arc<amqp::Amqp>),
    Memory(memory::Broker),
}

/// Which of a bus's two connections a consumer reads on (in memory there is one broker, and no difference).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConsumeOn {
    /// The consuming connection: subscribers and workers. Under a resource alarm RabbitMQ stops reading every
    /// connection that publishes; nothing is published here, so their acks, which drain the queues, never wait.
    Consuming,
    /// The publishing connection: RPC servers. A server's reply goes out on the publishing connection (see
    /// `rpc::server`), and its requests come in there too, so that a call wakes one connection's I/O on the
    /// server, not two (W5: about a third of a call's CPU). Under an alarm the replies wait anyway; the
    /// requests' acks wait with them, and the subscribers' do not.
    Publishing,
}

/// What a publish needs besides the payload.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Publish<'a> {
    pub(crate) exchange: &'a str,
    pub(crate) routing_key: &'a str,
    /// Unroutable messages are returned as an error rather than dropped.
    pub(crate) mandatory: bool,
    /// Wait for the broker to take responsibility (publisher confirm).
    pub(crate) confirm: bool,
}

/// Refuses a name AMQP cannot carry (over 255 bytes), on both transports alike: lapin would panic on it.
fn check_name(what: &str, name: &str) -> Result<()> {
    match warren_topology::name_problem(what, name, warren_topology::MAX_NAME_LEN) {
        None => Ok(()),
        Some(problem) => Err(Error::config(problem)),
    }
}

impl Transport {
    pub(crate) async fn declare_exchange(&self, exchange: &ExchangeSpec) -> Result<()> {
        check_name("exchange", exchange.name)?;
        match self {
            Transport::Amqp(amqp) => amqp.declare_exchange(exchange).await,
            Transport::Memory(broker) => broker.declare_exchange(exchange),
        }
    }

    pub(crate) async fn declare_queue(&self, queue: &str, options: &QueueSettings) -> Result<()> {
        options.check(queue).map_err(Error::config)?;
        check_name("queue", queue)?;
        match self {
            Transport::Amqp(amqp) => amqp.declare_queue(queue, options).await,
            Transport::Memory(broker) => broker.declare_queue(queue, options),
        }
    }

    pub(crate) async fn bind(&self, queue: &str, exchange: &str, key: &str) -> Result<()> {
        check_name("queue", queue)?;
        check_name("exchange", exchange)?;
        check_name("binding key", key)?;
        match self {
            Transport::Amqp(amqp) => amqp.bind(queue, exchange, key).await,
            Transport::Memory(broker) => broker.bind(queue, exchange, key, crate::Headers::new()),
        }
    }

    /// Stops re-declaring `queues` after reconnections (the in-memory broker never reconnects, but forgets
    /// them alike).
    pub(crate) fn forget_queues(&self, queues: &[String]) {
        match self {
            Transport::Amqp(amqp) => amqp.forget_queues(queues),
            Transport::Memory(broker) => broker.record().forget(queues),
        }
    }

    /// What this bus declared.
    pub(crate) fn topology(&self) -> crate::Topology {
        match self {
            Transport::Amqp(amqp) => amqp.topology(),
            Transport::Memory(broker) => broker.record().clone(),
        }
    }

    /// Publishes, re-sending after connection failures (over AMQP) within the bus's publish timeout.
    pub(crate) fn publish(
        &self,
        publish: Publish<'_>,
        body: Vec<u8>,
        properties: Properties,
    ) -> impl Future<Output = Result<()>> {
        self.publish_until(publish, body, properties, None)
    }

    /// [`Transport::publish`], giving up at `until` when given (an RPC reply is worth sending only while its
    /// caller waits, and no longer than the operation timeout) instead of after the publish timeout.
    ///
    /// Written as a function returning an `async` block rather than an `async fn`, as are the other functions
    /// a publish passes through: an `async fn` keeps its arguments in its future as well as the locals they are
    /// moved into, so each layer held its own copy of the 176-byte envelope, and a caller running many publishes
    /// at once (`buffer_unordered`, `join_all`, a task each) copies each whole future into its slot. With
    /// lapin's own publish boxed (see `amqp::publish_written`), a publish future went from 3,192 to 1,632 bytes.
    #[expect(clippy::manual_async_fn, reason = "smaller future; see `Transport::publish_until`")]
    pub(crate) fn publish_until(
        &self,
        publish: Publish<'_>,
        body: Vec<u8>,
        properties: Properties,
        until: Option<std::time::Instant>,
    ) -> impl Future<Output = Result<()>> {
        async move {
            check_name("exchange", publish.exchange)?;
            check_name("routing key", publish.routing_key)?;
            match self {
                Transport::Amqp(amqp) => {
                    let by = until.unwrap_or_else(|| amqp.publish_deadline());
                    amqp.publish(publish, body, &properties, by).await
                }
                Transport::Memory(broker) => {
                    // The in-memory broker never makes a publish wait, so a publishing loop would never give its
                    // thread to anyone else (its subscribers included) without a turn of tokio's cooperative
                    // budget here, as a bounded tokio channel's send takes.
                    tokio::task::coop::consume_budget().await;
                    broker.publish(publish, body, properties)
                }
            }
        }
    }

    pub(crate) async fn consume(&self, queue: &str, prefetch: u16, tag: String, on: ConsumeOn) -> Result<Consumer> {
        check_name("queue", queue)?;
        match self {
            Transport::Amqp(amqp) => amqp.consume(queue, prefetch, tag, on).await,
            Transport::Memory(broker) => broker.consume(queue, prefetch, tag),
        }
    }

    /// Messages ready in `queue`.
    pub(crate) async fn queue_depth(&self, queue: &str) -> Result<u64> {
        Ok(self.queue_stats(queue).await?.0)
    }

    /// Messages ready in `queue`, and its consumers.
    pub(crate) async fn queue_stats(&self, queue: &str) -> Result<(u64, u32)> {
        check_name("queue", queue)?;
        match self {
            Transport::Amqp(amqp) => amqp.queue_stats(queue).await,
            Transport::Memory(broker) => broker.queue_stats(queue),
        }
    }

    /// Takes one ready message from `queue`, acknowledged on receipt.
    pub(crate) async fn fetch(&self, queue: &str) -> Result<Option<Delivery>> {
        check_name("queue", queue)?;
        match self {
            Transport::Amqp(amqp) => amqp.fetch(queue).await,
            Transport::Memory(broker) => broker.fetch(queue),
        }
    }

    /// Opens the RPC reply path: an address to put in `reply_to`, requests sent through it, replies from it.
    pub(crate) async fn reply_path(&self) -> Result<ReplyPath> {
        match self {
            Transport::Amqp(amqp) => amqp.reply_path().await,
            Transport::Memory(broker) => Ok(broker.reply_path()),
        }
    }

    /// Closes the transport once publishes in flight are confirmed, or at `by`.
    pub(crate) async fn close(&self, by: std::time::Instant) -> Result<()> {
        match self {
            Transport::Amqp(amqp) => amqp.close(by).await,
            Transport::Memory(_) => Ok(()),
        }
    }

    /// Changes whenever the transport reconnected: consumers opened before are dead, whether or not their
    /// streams say so. `None` for transports that never reconnect.
    pub(crate) fn generations(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        match self {
            Transport::Amqp(amqp) => Some(amqp.generations()),
            Transport::Memory(_) => None,
        }
    }

    pub(crate) fn health(&self) -> crate::Health {
        match self {
            Transport::Amqp(amqp) => amqp.health(),
            Transport::Memory(_) => crate::Health::Connected { node: "memory".to_owned() },
        }
    }
}

/// A client's side of RPC: where replies come back, and how requests go out so that they do.
pub(crate) struct ReplyPath {
    /// The `reply_to` address.
    pub(crate) address: std::sync::Arc<str>,
    /// Publishes requests (on AMQP, on the channel that consumes replies, as direct reply-to requires).
    pub(crate) requests: Transport,
    pub(crate) amqp_channel: Option<amqp::RequestChannel>,
    /// Replies, in arrival order.
    pub(crate) replies: Consumer,
}

impl ReplyPath {
    /// Sends a request once. It has no deadline of its own: the caller bounds the send with the call's.
    pub(crate) async fn send_request(&self, publish: Publish<'_>, body: Vec<u8>, properties: Properties) -> Result<()> {
        match (&self.amqp_channel, &self.requests) {
            (Some(channel), Transport::Amqp(_)) => {
                check_name("queue", publish.routing_key)?;
                channel.send(publish, &body, &properties).await
            }
            _ => self.requests.publish(publish, body, properties).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Interner, Name};

    /// A name is interned once, and interning stops at either bound: names past it are shared strings, equal
    /// by their text all the same.
    #[test]
    fn names_are_interned_once_and_no_further_than_the_bounds() {
        let mut names = Interner::new(3, 1024);
        let (first, again) = (names.intern("gametrade.events"), names.intern("gametrade.events"));
        let (Name::Static(a), Name::Static(b)) = (&first, &again) else { panic!("interned: {first:?}, {again:?}") };
        assert!(std::ptr::eq(*a, *b), "one copy");
        names.intern("user.registered");
        names.intern("user.deleted");
        let past = names.intern("order.placed");
        assert!(matches!(past, Name::Shared(_)), "past the bound on names: {past:?}");
        assert_eq!(past, Name::Static("order.placed"), "equal by text");
        assert!(matches!(names.intern("gametrade.events"), Name::Static(_)), "what was interned stays interned");

        let mut small = Interner::new(100, 10);
        assert!(matches!(small.intern("0123456789"), Name::Static(_)));
        assert!(matches!(small.intern("x"), Name::Shared(_)), "past the bound on bytes");
    }
}
