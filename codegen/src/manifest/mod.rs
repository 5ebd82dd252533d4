//! The contract manifest: a normalized description of everything consumers depend on.
//!
//! It lists, sorted by name, every message (fields with numbers, labels, types, JSON names and validation
//! rules; reserved numbers and names), enum (values; reserved), exchange (kind and flags), event (exchange,
//! routing key, priority, retry policy, queue type, wire format), task (work queue, prefetch, retry policy,
//! queue type, wire format), the queues Warren declares for events and tasks (name, arguments, bindings,
//! dead-letter and retry queues) and RPC service (queue, methods, types, timeouts). Comments are left out, so
//! editing one changes nothing here.
//!
//! The text form is versioned ([`FORMAT_VERSION`]); [`Manifest::parse`] also reads the older versions, which
//! record less (see [`Manifest::format_version`]), so that a lock file committed by an older Warren still
//! serves as a baseline.
//!
//! `cargo xtask regen` writes it to `proto/warren.lock` ([`Manifest::render`]), and `cargo xtask check-compat`
//! compares the contracts with a baseline read back from such a file ([`Manifest::parse`]) using
//! [`crate::compat::check`].
//!
//! Only top-level items record where they are declared (`at file:line`): that is enough to point at a
//! removed item, and keeps the lock's diffs free of churn when lines move inside a message. Items loaded from
//! protos ([`crate::manifest()`]) also know where each field, value and method is.

mod build;
mod definitions;
mod parse;
mod render;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;

pub use definitions::{DefinitionsOptions, MAX_GROUP_LEN, group_problem};
pub use parse::{ParseError, ParseErrorKind};

pub(crate) use build::{build, scalar_name};
pub(crate) use render::bound_text;

use crate::compat::Rule;
use crate::error::Location;
use crate::model::ExchangeKind;

/// Where `cargo xtask regen` writes the manifest, relative to the workspace root.
pub const LOCK_FILE: &str = "proto/warren.lock";

/// The placeholder for a subscriber's group in queue names, e.g. `<group>.gametrade.v1.UserRegistered`.
pub const GROUP: &str = "<group>";

/// The version of the text format that [`Manifest::render`] writes: `warren-manifest 2`.
///
/// Version 1 had no tasks, no wire formats and no validation rules.
pub const FORMAT_VERSION: u32 = 2;

/// Every contract, normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The version of the text format it was read from; [`FORMAT_VERSION`] when built from protos. An older
    /// version records less: see [`Manifest::records_tasks_and_rules`].
    pub format_version: u32,
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
    /// Tasks by the full name of their message.
    pub tasks: BTreeMap<String, Task>,
    /// Queues by name; subscriber queues are templates over [`GROUP`].
    pub queues: BTreeMap<String, Queue>,
    /// RPC services by full name.
    pub services: BTreeMap<String, Service>,
}

impl Default for Manifest {
    /// An empty manifest of the current [`FORMAT_VERSION`].
    fn default() -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            files: BTreeMap::new(),
            exchanges: BTreeMap::new(),
            messages: BTreeMap::new(),
            enums: BTreeMap::new(),
            events: BTreeMap::new(),
            tasks: BTreeMap::new(),
            queues: BTreeMap::new(),
            services: BTreeMap::new(),
        }
    }
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
    /// Its validation rules (`[(warren.rules) = { ... }]`); empty when it has none.
    pub rules: FieldRules,
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

/// The validation rules of a field: the model's [`Rules`](crate::model::Rules), recorded as they are.
pub use crate::model::Rules as FieldRules;

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

    /// What of this reservation a field or value numbered `number` and named `name` takes up: `number N` or
    /// `name "x"`; `None` when neither is reserved.
    pub fn taken_by(&self, number: i64, name: &str) -> Option<String> {
        if self.has_number(number) {
            Some(format!("number {number}"))
        } else {
            self.names.contains(name).then(|| format!("name \"{name}\""))
        }
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
    pub retry: Option<RetryPolicy>,
    /// Whether its subscribers get quorum queues.
    pub quorum: bool,
    /// How publishers encode it unless they choose otherwise.
    pub wire_format: WireFormat,
    /// Where its message is declared.
    pub location: Location,
}

/// A task: a message put on a work queue, each taken by one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// The work queue, which senders publish to through the default exchange.
    pub queue: String,
    /// How many tasks a worker holds unacknowledged; `None`: the bus's prefetch.
    pub prefetch: Option<u16>,
    /// The contract's retry policy for its workers; `None`: the runtime's default.
    pub retry: Option<RetryPolicy>,
    /// Whether the work queue is a quorum queue.
    pub quorum: bool,
    /// How senders encode it unless they choose otherwise.
    pub wire_format: WireFormat,
    /// Where its option is declared.
    pub location: Location,
}

/// How an event or task is encoded by default (the AMQP `content_type` says which, message by message).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum WireFormat {
    /// Protobuf binary, `application/x-protobuf`.
    #[default]
    Protobuf,
    /// The proto3 JSON mapping, `application/json`.
    Json,
}

impl WireFormat {
    /// `protobuf` or `json`, as the manifest writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            WireFormat::Protobuf => "protobuf",
            WireFormat::Json => "json",
        }
    }

    /// The format of a model's `json` flag.
    pub(crate) fn of(json: bool) -> WireFormat {
        if json { WireFormat::Json } else { WireFormat::Protobuf }
    }
}

/// A retry policy: capped attempts with exponential backoff (the model's, also read back from the file).
pub use warren_topology::RetryPolicy;

/// A queue Warren declares: a subscriber queue template, a task's work queue or an RPC service's queue.
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
    /// For subscriber and work queues, the contract's retry policy (`None`: the runtime's default); code may
    /// override it per subscriber or worker.
    pub retry: Option<RetryPolicy>,
    /// Its retry delay queues (`<queue>.retry.<ms>`) under that policy, first retry first.
    pub retry_queues: Vec<String>,
}

/// Who consumes a queue.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Consumer {
    /// Subscribers of these events (one event type, or an exchange's event enum).
    Events(BTreeSet<String>),
    /// The workers of this task type.
    Task(String),
    /// The server of this RPC service.
    Service(String),
}

/// The value of a queue argument (the topology rules' type).
pub use warren_topology::Argument;

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
    /// Whether the manifest records tasks, wire formats and validation rules: built from protos, or read
    /// from a file of format version 2 or later. A baseline from an older `warren.lock` does not, and the
    /// rules about them have nothing to compare it with (so they report nothing).
    pub fn records_tasks_and_rules(&self) -> bool {
        self.format_version >= 2
    }

    /// The rules waived for the item named `subject` (a message, enum or service) by markers in the protos.
    pub fn allowed(&self, subject: &str) -> Option<&BTreeSet<Rule>> {
        self.messages
            .get(subject)
            .map(|m| &m.allow)
            .or_else(|| self.enums.get(subject).map(|e| &e.allow))
            .or_else(|| self.services.get(subject).map(|s| &s.allow))
    }

    /// Every type name the contracts use: field types (map values included), rpc requests and responses,
    /// events and tasks.
    pub fn referenced_types(&self) -> BTreeSet<&str> {
        let mut used: BTreeSet<&str> = self.events.keys().chain(self.tasks.keys()).map(String::as_str).collect();
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

/// The first word of the format line, the first non-comment line: `warren-manifest <version>`.
const FORMAT: &str = "warren-manifest";

/// The priority names of Warren's options, by AMQP priority.
pub(crate) const PRIORITIES: [&str; 4] = ["low", "normal", "high", "critical"];
