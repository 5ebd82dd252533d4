//! The contract model: what the protos declare, read with prost-reflect and checked.
//!
//! Everything downstream (code, and later docs and compatibility checks) reads this model, never the raw
//! descriptors, so a rule is enforced in one place.
//!
//! This file holds the model's types. `Contracts::build` in `options.rs` reads Warren's options out of the
//! descriptors into them, checking each item on its own (`services.rs` reads RPC services); `validate.rs`
//! checks items against each other (routing keys, subscriptions, queues, generated names); `keys.rs` handles
//! routing keys and subscriptions, `messages.rs` every message's validation rules and fingerprint.
//!
//! Every problem is reported in one run, not only the first: an item that fails is left out and reading goes
//! on, so that later checks do not report it again in other words.

mod keys;
mod messages;
mod options;
mod services;
mod validate;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use keys::{KeyKind, KeyPart, Subscription};
pub use messages::{FieldCheck, FieldKind, Message, Rules, Shape};

use prost_reflect::DescriptorPool;

use crate::error::Location;

pub(crate) use options::options_types;

pub use warren_topology::ExchangeKind;

/// An exchange declared with `option (warren.exchange)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// Name on the broker.
    pub name: String,
    /// Routing kind.
    pub kind: ExchangeKind,
    /// Survives broker restarts.
    pub durable: bool,
    /// Deleted when its last queue is unbound.
    pub auto_delete: bool,
    /// Where it is declared.
    pub location: Location,
}

/// A message marked with `option (warren.event)`.
#[derive(Debug, Clone)]
pub struct Event {
    /// Full proto name, e.g. `gametrade.v1.UserRegistered`; also the AMQP `type` property.
    pub full_name: String,
    /// Rust path relative to the package module, e.g. `UserRegistered` or `outer::Inner`.
    pub rust_path: String,
    /// Name of the variant in the exchange's event enum.
    pub variant: String,
    /// The exchange it is published to.
    pub exchange: Exchange,
    /// The routing key it is published with, templates included.
    pub routing_key: String,
    /// The routing key word by word, with templates resolved to fields.
    pub key_parts: Vec<KeyPart>,
    /// The key subscribers bind with by default: the routing key with `*` for each template.
    pub binding: String,
    /// Whether it is sent as JSON by default.
    pub json: bool,
    /// Its default priority (0 = LOW … 3 = CRITICAL), when the contract prioritizes it.
    pub priority: Option<u8>,
    /// Its retry policy, when the contract declares one.
    pub retry: Option<RetryPolicy>,
    /// Whether its subscribers get quorum queues.
    pub quorum: bool,
    /// The length limit of its subscribers' queues, when the contract sets one.
    pub limit: Option<QueueLimit>,
    /// The message's proto comment.
    pub doc: String,
    /// Where the message is declared.
    pub location: Location,
}

/// A message marked with `option (warren.task)`.
#[derive(Debug, Clone)]
pub struct Task {
    /// Full proto name.
    pub full_name: String,
    /// Rust path relative to the package module.
    pub rust_path: String,
    /// The work queue.
    pub queue: String,
    /// Default prefetch of workers.
    pub prefetch: Option<u16>,
    /// Its retry policy, when the contract declares one.
    pub retry: Option<RetryPolicy>,
    /// Whether the work queue is a quorum queue.
    pub quorum: bool,
    /// The length limit of the work queue, when the contract sets one.
    pub limit: Option<QueueLimit>,
    /// Whether it is sent as JSON by default.
    pub json: bool,
    /// The message's proto comment.
    pub doc: String,
    /// Where the message is declared.
    pub location: Location,
}

/// The errors a method declares: a message with one oneof, generated as an enum.
#[derive(Debug, Clone)]
pub struct ErrorSet {
    /// Full proto name of the error message.
    pub full_name: String,
    /// Rust path of the message, relative to the package module.
    pub rust_path: String,
    /// Rust path of the oneof's enum, relative to the package module.
    pub enum_path: String,
    /// Rust name of the oneof field.
    pub field: String,
    /// The cases: Rust variant name and proto field name.
    pub cases: Vec<(String, String)>,
}

/// A retry policy from `(warren.event).retry` or `(warren.task).retry`, defaults filled in: the runtime's own
/// type, from the topology rules both share.
pub use warren_topology::{QueueLimit, RetryPolicy};

/// The events of one package published to one exchange; generated as one enum for pattern subscriptions.
#[derive(Debug, Clone)]
pub struct EventGroup {
    /// Name of the generated enum.
    pub rust_name: String,
    /// The exchange.
    pub exchange: Exchange,
    /// Indexes into [`Package::events`].
    pub events: Vec<usize>,
}

/// One rpc of a service.
#[derive(Debug, Clone)]
pub struct Method {
    /// Name in the proto, e.g. `IntSum`; part of the request's AMQP `type` (`/at.v1.IntSummator/IntSum`).
    pub name: String,
    /// Rust method name, e.g. `int_sum`.
    pub rust_name: String,
    /// Full proto name of the request message.
    pub input: String,
    /// Rust path of the request type, relative to the package module.
    pub input_rust: String,
    /// Full proto name of the response message.
    pub output: String,
    /// Rust path of the response type, relative to the package module.
    pub output_rust: String,
    /// Per-method deadline override in milliseconds.
    pub timeout_ms: Option<u32>,
    /// The errors it declares, when it declares any.
    pub errors: Option<ErrorSet>,
    /// The rpc's proto comment.
    pub doc: String,
}

/// A service marked with `option (warren.service)`.
#[derive(Debug, Clone)]
pub struct Service {
    /// Full proto name, e.g. `at.v1.IntSummator`.
    pub full_name: String,
    /// Name in the proto, e.g. `IntSummator`.
    pub name: String,
    /// A hash of its rpcs and their messages' schemas, which servers announce (see `warren services`).
    pub fingerprint: String,
    /// Queue the server consumes.
    pub queue: String,
    /// Default deadline per call, in milliseconds.
    pub default_timeout_ms: u32,
    /// Whether its request queue is a quorum queue.
    pub quorum: bool,
    /// Its methods, in proto order.
    pub methods: Vec<Method>,
    /// The service's proto comment.
    pub doc: String,
    /// Where it is declared.
    pub location: Location,
}

/// One proto package: the unit that becomes one Rust module.
#[derive(Debug, Clone)]
pub struct Package {
    /// Package name, e.g. `gametrade.v1`.
    pub name: String,
    /// Its files, as proto names, sorted.
    pub files: Vec<String>,
    /// Paths of its files for display, e.g. `proto/gametrade/v1/events.proto`.
    pub paths: Vec<PathBuf>,
    /// The top-of-file comments of its files, joined.
    pub doc: String,
    /// Events declared in the package, in declaration order.
    pub events: Vec<Event>,
    /// One group per exchange the package's events use.
    pub groups: Vec<EventGroup>,
    /// Services declared in the package.
    pub services: Vec<Service>,
    /// Tasks declared in the package.
    pub tasks: Vec<Task>,
    /// Subscriptions declared in the package.
    pub subscriptions: Vec<Subscription>,
    /// Every message of the package (nested ones included), for `Payload` impls.
    pub messages: Vec<Message>,
}

impl Package {
    /// The error sets the package's services use, once each, in order of first use.
    pub fn error_sets(&self) -> Vec<&ErrorSet> {
        let mut sets: Vec<&ErrorSet> = Vec::new();
        for set in self.services.iter().flat_map(|s| &s.methods).filter_map(|m| m.errors.as_ref()) {
            if !sets.iter().any(|s| s.full_name == set.full_name) {
                sets.push(set);
            }
        }
        sets
    }
}

/// All compiled contracts: the model plus the descriptors it came from.
#[derive(Debug)]
pub struct Contracts {
    /// Packages of the requested files, sorted by name.
    pub packages: Vec<Package>,
    /// Every exchange declared by the requested files or their imports, by name.
    pub exchanges: BTreeMap<String, Exchange>,
    /// The encoded `FileDescriptorSet` (with imports and source info).
    pub descriptor_set: Vec<u8>,
    pub(crate) pool: DescriptorPool,
    pub(crate) requested: Vec<String>,
}
