//! What generated code tells the runtime about a contract: exchanges, events, services and methods.
//!
//! These are plain `'static` data filled in by `warren-codegen`; the runtime never parses protos.

use std::fmt;
use std::time::Duration;

/// How an exchange routes messages to the queues bound to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    /// The binding key equals the routing key.
    Direct,
    /// Dotted patterns: `*` matches one word, `#` zero or more.
    Topic,
    /// Every bound queue, whatever the key.
    Fanout,
    /// By header values.
    Headers,
}

impl ExchangeKind {
    /// The AMQP name of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Headers => "headers",
        }
    }
}

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
    pub const MAX_AMQP: u8 = 3;

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
    /// The routing key it is published with (empty on fanout and headers exchanges).
    pub routing_key: &'static str,
    /// Default priority; `Some` makes subscriber queues of the event priority queues.
    pub priority: Option<Priority>,
    /// The contract's retry policy for subscribers, when it declares one.
    pub retry: Option<crate::RetryPolicy>,
    /// Whether subscribers get quorum queues (with `x-delivery-limit`).
    pub quorum: bool,
}

/// A message type that the contract declares as an event. Implemented by generated code.
pub trait Event: prost::Message + Default + Send + Sync + 'static {
    /// Exchange, routing key and type name from the contract.
    const SPEC: &'static EventSpec;
}

/// Something a subscriber can receive: one event type, or a generated enum of several.
///
/// Implemented for every [`Event`], and by generated code for each exchange's event enum.
pub trait Inbound: Sized + Send + 'static {
    /// The exchange subscriptions bind to.
    fn exchange() -> &'static ExchangeSpec;
    /// The routing keys of the events this type accepts.
    fn routing_keys() -> Vec<&'static str>;
    /// The part of the default queue name after the group, e.g. the event's type name.
    fn queue_suffix() -> &'static str;
    /// Decodes a delivery whose AMQP `type` property is `type_name`.
    fn decode(type_name: &str, payload: &[u8]) -> Result<Self, DecodeError>;
    /// Whether the contract prioritizes any of these events, making subscriber queues priority queues.
    fn prioritized() -> bool {
        false
    }
    /// Whether the contract asks for quorum queues for these events.
    fn quorum() -> bool {
        false
    }
    /// The contract's retry policy for these events, when it declares one.
    fn retry_policy() -> Option<crate::RetryPolicy> {
        None
    }
}

impl<E: Event> Inbound for E {
    fn exchange() -> &'static ExchangeSpec {
        &E::SPEC.exchange
    }

    fn routing_keys() -> Vec<&'static str> {
        vec![E::SPEC.routing_key]
    }

    fn queue_suffix() -> &'static str {
        E::SPEC.type_name
    }

    fn prioritized() -> bool {
        E::SPEC.priority.is_some()
    }

    fn quorum() -> bool {
        E::SPEC.quorum
    }

    fn retry_policy() -> Option<crate::RetryPolicy> {
        E::SPEC.retry
    }

    fn decode(type_name: &str, payload: &[u8]) -> Result<Self, DecodeError> {
        if type_name != E::SPEC.type_name {
            return Err(DecodeError::unexpected_type(type_name));
        }
        decode(payload)
    }
}

/// Why a delivery could not become a typed value. Such deliveries are dead-lettered at once, never retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The AMQP `type` property names a type this subscriber does not accept.
    #[error("unexpected message type \"{0}\"")]
    UnexpectedType(String),
    /// The payload is not a valid protobuf encoding of the type.
    #[error("payload does not decode as {type_name}: {reason}")]
    Malformed {
        /// The type it should have been.
        type_name: String,
        /// prost's description.
        reason: String,
    },
}

impl DecodeError {
    /// A delivery of a type the subscriber does not accept; `type_name` is empty when the property was missing.
    pub fn unexpected_type(type_name: &str) -> Self {
        let shown = if type_name.is_empty() { "(no type property)" } else { type_name };
        DecodeError::UnexpectedType(shown.to_owned())
    }
}

/// Decodes a protobuf payload as `M`, naming `M` in the error.
pub fn decode<M: prost::Message + Default>(payload: &[u8]) -> Result<M, DecodeError> {
    M::decode(payload).map_err(|e| DecodeError::Malformed {
        type_name: std::any::type_name::<M>().rsplit("::").next().unwrap_or_default().to_owned(),
        reason: e.to_string(),
    })
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
