//! What generated code tells the runtime about a contract: exchanges, events, services and methods.
//!
//! These are plain `'static` data filled in by `warren-codegen`; the runtime never parses protos.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use crate::codec::{Payload, Violations, WireFormat};
use crate::error::Error;

pub use warren_topology::{ExchangeKind, QueueLimit};

/// An exchange as the contract declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExchangeSpec {
    /// Name on the broker.
    pub name: &'static str,
    /// Routing kind.
    pub kind: ExchangeKind,
    /// Survives a broker restart.
    pub durable: bool,
    /// Deleted by the broker once its last queue is unbound.
    pub auto_delete: bool,
}

/// How urgent a message is: higher priorities are delivered first from prioritized queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Background work.
    Low,
    /// The usual case.
    Normal,
    /// Ahead of normal traffic.
    High,
    /// Ahead of everything.
    Critical,
}

impl Priority {
    /// The highest AMQP priority Warren uses; prioritized queues are declared with this `x-max-priority`.
    pub const MAX_AMQP: u8 = warren_topology::MAX_PRIORITY;

    /// The AMQP message priority: LOW..CRITICAL are 0..3.
    pub fn as_amqp(self) -> u8 {
        self as u8
    }
}

/// Where an event goes, as the contract declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSpec {
    /// Full proto name, sent as the AMQP `type` property, e.g. `gametrade.v1.UserRegistered`.
    pub type_name: &'static str,
    /// The exchange the event is published to.
    pub exchange: ExchangeSpec,
    /// The routing key it is published with (empty on fanout and headers exchanges); may hold templates such
    /// as `{region}`, filled from the event's fields by [`Event::routing_key`].
    pub routing_key: &'static str,
    /// The key subscribers bind with by default: the routing key, with `*` for each template.
    pub binding: &'static str,
    /// Default priority; `Some` makes subscriber queues of the event priority queues.
    pub priority: Option<Priority>,
    /// The contract's retry policy for subscribers, when it declares one.
    pub retry: Option<crate::RetryPolicy>,
    /// Whether subscribers get quorum queues (with `x-delivery-limit`).
    pub quorum: bool,
    /// The length limit of every subscriber queue of the event, when the contract sets one: a full queue
    /// refuses the publish ([`Error::Nacked`]).
    pub limit: Option<QueueLimit>,
    /// How the event is encoded unless the publisher says otherwise.
    pub format: WireFormat,
}

/// A message type that the contract declares as an event. Implemented by generated code.
pub trait Event: Payload {
    /// Exchange, routing key and type name from the contract.
    const SPEC: &'static EventSpec;

    /// The routing key of this event: the contract's, with any templates filled from the event's fields.
    /// Fails with [`Error::RoutingKey`] when a field's value cannot be a routing-key word.
    fn routing_key(&self) -> Result<Cow<'static, str>, Error> {
        Ok(Cow::Borrowed(Self::SPEC.routing_key))
    }
}

/// A work queue as the contract declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskSpec {
    /// Full proto name, sent as the AMQP `type` property.
    pub type_name: &'static str,
    /// The durable queue tasks are put on and workers consume.
    pub queue: &'static str,
    /// How many tasks each worker holds unacknowledged, unless the worker sets it.
    pub prefetch: Option<u16>,
    /// The contract's retry policy, when it declares one.
    pub retry: Option<crate::RetryPolicy>,
    /// Whether the work queue is a quorum queue.
    pub quorum: bool,
    /// The length limit of the work queue, when the contract sets one: a full queue refuses the task
    /// ([`Error::Nacked`]).
    pub limit: Option<QueueLimit>,
    /// How the task is encoded unless the sender says otherwise.
    pub format: WireFormat,
}

/// A message type that the contract declares as a task: work for exactly one of the workers on its queue.
/// Implemented by generated code.
pub trait Task: Payload + Inbound {
    /// Queue, prefetch and retry policy from the contract.
    const SPEC: &'static TaskSpec;
}

/// Where tasks are published: the default exchange, which routes by queue name.
pub const DEFAULT_EXCHANGE: ExchangeSpec =
    ExchangeSpec { name: "", kind: ExchangeKind::Direct, durable: true, auto_delete: false };

/// `value` as one word of a routing key, or [`Error::RoutingKey`] naming the field and the problem.
pub fn key_word<'v>(type_name: &'static str, field: &'static str, value: &'v str) -> Result<&'v str, Error> {
    match crate::topic::word_problem(value) {
        None => Ok(value),
        Some(problem) => Err(Error::RoutingKey { type_name, field, value: value.to_owned(), problem }),
    }
}

/// An enum field's value as a routing-key word: the value's proto name without the enum's `prefix` (as prost
/// strips it for variant names), in lower case: `NOTIFICATION_TYPE_WARNING` → `warning`. `name` is `None`
/// when the number is not a value of the enum.
pub fn enum_word(
    type_name: &'static str,
    field: &'static str,
    name: Option<&str>,
    prefix: &str,
    number: i32,
) -> Result<String, Error> {
    match name {
        Some(name) => Ok(crate::topic::enum_word(name, prefix)),
        None => Err(Error::RoutingKey {
            type_name,
            field,
            value: number.to_string(),
            problem: "is not a value of the field's enum",
        }),
    }
}

/// Something a subscriber can receive: one event type, or a generated enum of several.
///
/// Implemented for every [`Event`], by generated code for each exchange's event enum, and for `Arc<T>` of any of
/// them (see [`Subscriber::shared`](crate::Subscriber::shared)).
pub trait Inbound: Clone + Sized + Send + Sync + 'static {
    /// The exchange subscriptions bind to.
    fn exchange() -> &'static ExchangeSpec;
    /// The keys subscribers bind with by default, one per accepted event (templates as `*`).
    fn routing_keys() -> Vec<&'static str>;
    /// The part of the default queue name after the group, e.g. the event's type name.
    fn queue_suffix() -> &'static str;
    /// Decodes (and validates) a delivery whose AMQP `type` property is `type_name`.
    fn decode(type_name: &str, format: WireFormat, payload: &[u8]) -> Result<Self, DecodeError>;
    /// The schema fingerprint of accepted type `type_name`; `None` if the type is not accepted.
    fn fingerprint(type_name: &str) -> Option<&'static str>;
    /// The one type accepted, when exactly one is (an event, a task): a delivery without a `type` property
    /// (from a plain AMQP client) is read as this type. `None` for enums of several.
    fn sole_type() -> Option<&'static str> {
        None
    }
    /// For tasks: the work queue all workers share, whatever their group. `None` for events.
    fn work_queue() -> Option<&'static str> {
        None
    }
    /// The contract's prefetch, when it sets one.
    fn default_prefetch() -> Option<u16> {
        None
    }
    /// Whether the contract prioritizes any of these events, making subscriber queues priority queues.
    fn prioritized() -> bool {
        false
    }
    /// Whether the contract asks for quorum queues for these events.
    fn quorum() -> bool {
        false
    }
    /// The length limit the contract sets on the queues these are consumed from, if any.
    fn queue_limit() -> Option<QueueLimit> {
        None
    }
    /// The contract's retry policy for these events, when it declares one.
    fn retry_policy() -> Option<crate::RetryPolicy> {
        None
    }
    /// Keeps a decoded value for the other subscribers of the same message (in memory, a message routed to
    /// several queues is decoded once). Implementations keep the default.
    #[doc(hidden)]
    fn into_shared(self) -> std::sync::Arc<dyn std::any::Any + Send + Sync> {
        std::sync::Arc::new(self)
    }
    /// This subscriber's value from one that [`Inbound::into_shared`] kept, if it is of this type: a clone.
    /// Implementations keep the default.
    #[doc(hidden)]
    fn from_shared(kept: &std::sync::Arc<dyn std::any::Any + Send + Sync>) -> Option<Self> {
        (**kept).downcast_ref::<Self>().cloned()
    }
}

/// A decoded value kept for the other subscribers of a message; see [`Inbound::into_shared`].
pub(crate) type Shared = std::sync::Arc<dyn std::any::Any + Send + Sync>;

impl<E: Event> Inbound for E {
    fn exchange() -> &'static ExchangeSpec {
        &E::SPEC.exchange
    }

    fn routing_keys() -> Vec<&'static str> {
        vec![E::SPEC.binding]
    }

    fn queue_suffix() -> &'static str {
        E::SPEC.type_name
    }

    fn sole_type() -> Option<&'static str> {
        Some(E::SPEC.type_name)
    }

    fn prioritized() -> bool {
        E::SPEC.priority.is_some()
    }

    fn quorum() -> bool {
        E::SPEC.quorum
    }

    fn queue_limit() -> Option<QueueLimit> {
        E::SPEC.limit
    }

    fn retry_policy() -> Option<crate::RetryPolicy> {
        E::SPEC.retry
    }

    fn decode(type_name: &str, format: WireFormat, payload: &[u8]) -> Result<Self, DecodeError> {
        decode_as::<E>(type_name, format, payload)
    }

    fn fingerprint(type_name: &str) -> Option<&'static str> {
        fingerprint_of::<E>(type_name)
    }
}

/// What a [`Subscriber::shared`](crate::Subscriber::shared) handler receives: the decoded value behind an
/// [`Arc`](std::sync::Arc), so the subscribers of one message in this process can share it instead of each
/// getting a copy. Everything else (exchange, keys, queue, policy) is `T`'s.
impl<T: Inbound> Inbound for std::sync::Arc<T> {
    fn exchange() -> &'static ExchangeSpec {
        T::exchange()
    }

    fn routing_keys() -> Vec<&'static str> {
        T::routing_keys()
    }

    fn queue_suffix() -> &'static str {
        T::queue_suffix()
    }

    fn decode(type_name: &str, format: WireFormat, payload: &[u8]) -> Result<Self, DecodeError> {
        T::decode(type_name, format, payload).map(std::sync::Arc::new)
    }

    fn fingerprint(type_name: &str) -> Option<&'static str> {
        T::fingerprint(type_name)
    }

    fn sole_type() -> Option<&'static str> {
        T::sole_type()
    }

    fn work_queue() -> Option<&'static str> {
        T::work_queue()
    }

    fn default_prefetch() -> Option<u16> {
        T::default_prefetch()
    }

    fn prioritized() -> bool {
        T::prioritized()
    }

    fn quorum() -> bool {
        T::quorum()
    }

    fn queue_limit() -> Option<QueueLimit> {
        T::queue_limit()
    }

    fn retry_policy() -> Option<crate::RetryPolicy> {
        T::retry_policy()
    }

    /// The value itself, not a copy: an `Arc<T>` is already shared.
    fn into_shared(self) -> std::sync::Arc<dyn std::any::Any + Send + Sync> {
        self
    }

    /// Another handle on the very value that was kept, when it is a `T`.
    fn from_shared(kept: &std::sync::Arc<dyn std::any::Any + Send + Sync>) -> Option<Self> {
        kept.clone().downcast::<T>().ok()
    }
}

/// Decodes a delivery of `type_name` as `P`, which must be that type.
pub fn decode_as<P: Payload>(type_name: &str, format: WireFormat, payload: &[u8]) -> Result<P, DecodeError> {
    if type_name != P::TYPE_NAME {
        return Err(DecodeError::unexpected_type(type_name));
    }
    crate::codec::decode(format, payload)
}

/// `P`'s fingerprint, if `type_name` is `P`.
pub fn fingerprint_of<P: Payload>(type_name: &str) -> Option<&'static str> {
    (type_name == P::TYPE_NAME).then_some(P::FINGERPRINT)
}

/// Why a delivery could not become a typed value. Such deliveries are dead-lettered at once, never retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The AMQP `type` property names a type this subscriber does not accept.
    #[error("unexpected message type \"{0}\"")]
    UnexpectedType(String),
    /// The payload is not a valid protobuf (or JSON) encoding of the type.
    #[error("payload does not decode as {type_name}: {reason}")]
    Malformed {
        /// The type it should have been.
        type_name: String,
        /// The decoder's description.
        reason: String,
    },
    /// The message decoded but breaks the contract's validation rules.
    #[error("{type_name} is invalid: {violations}")]
    Invalid {
        /// The type.
        type_name: String,
        /// The broken rules.
        violations: Violations,
    },
}

impl DecodeError {
    /// A delivery of a type the subscriber does not accept; `type_name` is empty when the property was missing.
    pub fn unexpected_type(type_name: &str) -> Self {
        let shown = if type_name.is_empty() { "(no type property)" } else { type_name };
        DecodeError::UnexpectedType(shown.to_owned())
    }
}

/// An RPC service as the contract declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Full proto name, e.g. `at.v1.IntSummator`.
    pub name: &'static str,
    /// The queue the server consumes.
    pub queue: &'static str,
    /// Deadline of a call unless the method or the caller sets one.
    pub default_timeout: Duration,
    /// A hash of its rpcs and their messages' schemas, announced by its servers; empty when unknown.
    pub fingerprint: &'static str,
    /// Whether its request queue is a quorum queue (the contract's `queue_type: QUORUM`).
    pub quorum: bool,
}

/// One rpc of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodSpec {
    /// The service.
    pub service: &'static ServiceSpec,
    /// Name in the proto, e.g. `IntSum`.
    pub name: &'static str,
    /// `/<service>/<method>`, sent as the request's AMQP `type` property.
    pub path: &'static str,
    /// The method's own deadline, when the contract sets one.
    pub timeout: Option<Duration>,
}

impl fmt::Display for MethodSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path)
    }
}

/// The most distinct names [`intern`] keeps: far above any set of contracts, low enough that a caller passing a
/// fresh name per message is stopped long before the memory matters.
pub(crate) const MAX_INTERNED: usize = 10_000;

/// `name` with a `'static` lifetime, as the names generated code hands over: for contracts read at run time
/// (the encoded publish and call paths), whose names the bus keeps as it keeps generated ones (exchanges
/// declared, metrics per type). Each distinct name is kept once, for the life of the process; past
/// [`MAX_INTERNED`] distinct names, new ones are refused.
pub(crate) fn intern(name: &str) -> Result<&'static str, Error> {
    static NAMES: std::sync::Mutex<Option<std::collections::HashSet<&'static str>>> = std::sync::Mutex::new(None);
    let mut names = NAMES.lock().expect("interned names");
    let names = names.get_or_insert_with(Default::default);
    if let Some(kept) = names.get(name) {
        return Ok(kept);
    }
    if names.len() >= MAX_INTERNED {
        return Err(Error::config(format!(
            "more than {MAX_INTERNED} distinct type, exchange or queue names went through the encoded publish and \
             call paths (the latest: {:?}); pass the names of contracts, not a value per message",
            name.chars().take(64).collect::<String>()
        )));
    }
    let kept: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(kept);
    Ok(kept)
}
