//! The contract manifest: a normalized description of everything consumers depend on.
//!
//! It lists, sorted by name, every message (fields with numbers, labels, types and JSON names; reserved numbers
//! and names), enum (values; reserved), exchange (kind and flags), event (exchange, routing key, priority), the
//! queues Warren declares for them (name, arguments, bindings) and RPC service (queue, methods, types,
//! timeouts). Comments are left out, so editing one changes nothing here.
//!
//! `cargo xtask regen` writes it to `proto/warren.lock` ([`Manifest::render`]), and `cargo xtask check-compat`
//! compares the contracts with a baseline read back from such a file ([`Manifest::parse`]) using
//! [`crate::compat::check`].
//!
//! Only top-level items record where they are declared (`at file:line`): that is enough to point at a
//! removed item, and keeps the lock's diffs free of churn when lines move inside a message. Items loaded from
//! protos ([`crate::manifest()`]) also know where each field, value and method is.

mod build;
mod parse;
mod render;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;

pub use parse::{ParseError, ParseErrorKind};

pub(crate) use build::{build, scalar_name};

use crate::compat::Rule;
use crate::error::Location;
use crate::model::ExchangeKind;

/// Where `cargo xtask regen` writes the manifest, relative to the workspace root.
pub const LOCK_FILE: &str = "proto/warren.lock";

/// The placeholder for a subscriber's group in queue names, e.g. `<group>.gametrade.v1.UserRegistered`.
pub const GROUP: &str = "<group>";

/// Every contract, normalized.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// Proto files by display path (e.g. `proto/at/v1/int_summator.proto`).
    pub files: BTreeMap<String, File>,
    /// Exchanges by name.
    pub exchanges: BTreeMap<String, Exchange>,
    /// Messages by full name, nested ones included (map entries excluded: they are part of their field).
    pub messages: BTreeMap<String, Message>,
    /// Enums by full name, nested ones included.
    pub enums: BTreeMap<String, Enum>,
    /// Events by the full name of their message.
    pub events: BTreeMap<String, Event>,
    /// Queues by name; subscriber queues are templates over [`GROUP`].
    pub queues: BTreeMap<String, Queue>,
    /// RPC services by full name.
    pub services: BTreeMap<String, Service>,
}

/// One proto file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct File {
    /// Its package.
    pub package: String,
    /// Rules waived by markers in comments of the file that belong to no item.
    pub allow: BTreeSet<Rule>,
}

/// An exchange, as Warren declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// How it routes.
    pub kind: ExchangeKind,
    /// Survives broker restarts.
    pub durable: bool,
    /// Deleted when its last queue is unbound.
    pub auto_delete: bool,
    /// Where it is declared.
    pub location: Location,
}

/// A message type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its fields, by number.
    pub fields: BTreeMap<u32, Field>,
    /// Retired numbers and names.
    pub reserved: Reserved,
    /// Rules waived by `warren:allow` markers in its comments.
    pub allow: BTreeSet<Rule>,
    /// Where it is declared.
    pub location: Location,
}

/// A field of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Name in the proto.
    pub name: String,
    /// Singular, optional, repeated, …
    pub label: Label,
    /// `int64`, `string`, a message or enum's full name, or `map<K,V>`.
    pub r#type: String,
    /// Name in the protobuf JSON mapping, e.g. `userId`.
    pub json_name: String,
    /// Where it is declared, when loaded from protos (a manifest file does not record it).
    pub location: Option<Location>,
}

/// How many values a field holds and how its presence is tracked.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Label {
    /// proto3 implicit presence: a default value is not sent.
    Singular,
    /// Explicit presence (`optional`).
    Optional,
    /// proto2 `required`.
    Required,
    /// `repeated`.
    Repeated,
    /// `map<K, V>`.
    Map,
    /// A member of the named `oneof`.
    Oneof(String),
}

/// Retired numbers and names of a message or enum.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reserved {
    /// Inclusive number ranges, sorted.
    pub ranges: Vec<RangeInclusive<i64>>,
    /// Names, sorted.
    pub names: BTreeSet<String>,
}

impl Reserved {
    /// Whether `number` is reserved.
    pub fn has_number(&self, number: i64) -> bool {
        self.ranges.iter().any(|range| range.contains(&number))
    }
}

/// An enum type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enum {
    /// Its values, sorted by number then name (aliases share a number).
    pub values: Vec<EnumValue>,
    /// Retired numbers and names.
    pub reserved: Reserved,
    /// Rules waived by `warren:allow` markers in its comments.
    pub allow: BTreeSet<Rule>,
    /// Where it is declared.
    pub location: Location,
}

/// A value of an enum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnumValue {
    /// Its number.
    pub number: i32,
    /// Its name.
    pub name: String,
    /// Where it is declared, when loaded from protos.
    pub location: Option<Location>,
}

/// An event: a message published to an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The exchange's name.
    pub exchange: String,
    /// The exchange's kind.
    pub kind: ExchangeKind,
    /// Routing key; empty on fanout and headers exchanges.
    pub routing_key: String,
    /// Default priority (0 = LOW … 3 = CRITICAL), if the event is prioritized.
    pub priority: Option<u8>,
    /// The contract's retry policy for its subscribers; `None`: the runtime's default.
    pub retry: Option<Retry>,
    /// Whether its subscribers get quorum queues.
    pub quorum: bool,
    /// Where its message is declared.
    pub location: Location,
}

/// A retry policy: capped attempts with exponential backoff (the model's, also read back from the file).
pub use crate::model::Retry;

impl Retry {
    /// The runtime's `RetryPolicy::default()`: three deliveries, one and two seconds apart.
    pub const DEFAULT: Retry =
        Retry { max_attempts: 3, initial_backoff_ms: 1_000, multiplier: 2, max_backoff_ms: 300_000 };

    /// The distinct waits after failed deliveries, in milliseconds, as the runtime computes them (each wait
    /// is a delay queue `<queue>.retry.<ms>`).
    pub fn delays_ms(&self) -> Vec<u64> {
        let mut delays: Vec<u64> = (1..self.max_attempts)
            .map(|attempt| {
                let factor = u64::from(self.multiplier.max(1)).saturating_pow(attempt - 1);
                let wait =
                    u64::from(self.initial_backoff_ms).saturating_mul(factor).min(u64::from(self.max_backoff_ms));
                wait.clamp(1, u64::from(u32::MAX))
            })
            .collect();
        delays.dedup();
        delays
    }
}

/// A queue Warren declares: a subscriber queue template or an RPC service's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queue {
    /// Who consumes it.
    pub consumer: Consumer,
    /// Survives broker restarts.
    pub durable: bool,
    /// Its `x-` arguments.
    pub arguments: BTreeMap<String, Argument>,
    /// (exchange, binding key) pairs it is bound with.
    pub bindings: BTreeSet<(String, String)>,
    /// Where messages it rejects go, if anywhere.
    pub dead_letter_queue: Option<String>,
    /// For subscriber queues, the contract's retry policy (`None`: the runtime's default); code may override
    /// it per subscriber.
    pub retry: Option<Retry>,
    /// Its retry delay queues (`<queue>.retry.<ms>`) under that policy, first retry first.
    pub retry_queues: Vec<String>,
}

/// Who consumes a queue.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Consumer {
    /// Subscribers of these events (one event type, or an exchange's event enum).
    Events(BTreeSet<String>),
    /// The server of this RPC service.
    Service(String),
}

/// The value of a queue argument.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Argument {
    /// A number (e.g. `x-max-priority 3`).
    Int(i64),
    /// A string (e.g. `x-dead-letter-exchange ""`).
    Str(String),
}

/// An RPC service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// The queue its server consumes.
    pub queue: String,
    /// Deadline of a call, unless the method sets one.
    pub default_timeout_ms: u32,
    /// Its methods, by name.
    pub methods: BTreeMap<String, Method>,
    /// Rules waived by `warren:allow` markers in its comments.
    pub allow: BTreeSet<Rule>,
    /// Where it is declared.
    pub location: Location,
}

/// An rpc of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Method {
    /// Full name of the request message.
    pub request: String,
    /// Full name of the response message.
    pub response: String,
    /// The method's deadline (its own, or the service's default).
    pub timeout_ms: u32,
    /// Where it is declared, when loaded from protos.
    pub location: Option<Location>,
}

impl Manifest {
    /// The rules waived for the item named `subject` (a message, enum or service) by markers in the protos.
    pub fn allowed(&self, subject: &str) -> Option<&BTreeSet<Rule>> {
        self.messages
            .get(subject)
            .map(|m| &m.allow)
            .or_else(|| self.enums.get(subject).map(|e| &e.allow))
            .or_else(|| self.services.get(subject).map(|s| &s.allow))
    }

    /// Every type name the contracts use: field types (map values included), rpc requests and responses,
    /// events.
    pub fn referenced_types(&self) -> BTreeSet<&str> {
        let mut used: BTreeSet<&str> = self.events.keys().map(String::as_str).collect();
        for message in self.messages.values() {
            for field in message.fields.values() {
                let r#type = field.r#type.as_str();
                let value = r#type
                    .strip_prefix("map<")
                    .and_then(|rest| rest.strip_suffix('>'))
                    .and_then(|kv| kv.split_once(',').map(|(_, v)| v))
                    .unwrap_or(r#type);
                used.insert(value);
            }
        }
        for service in self.services.values() {
            for method in service.methods.values() {
                used.insert(&method.request);
                used.insert(&method.response);
            }
        }
        used
    }
}

/// The version of the text format, written on the first non-comment line.
const FORMAT: &str = "warren-manifest 1";

/// The priority names of Warren's options, by AMQP priority.
pub(crate) const PRIORITIES: [&str; 4] = ["low", "normal", "high", "critical"];
