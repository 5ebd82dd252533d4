//! Warren's contracts read at run time, for tools that are not compiled against a generated crate: the `warren`
//! CLI and the HTTP/WebSocket gateway. A [`Catalog`] holds the contract model (the one `warren-codegen` checks
//! and generates from, so the same names, routing keys, queues and rules), and over a [`warren::Bus`] it
//! publishes, enqueues and calls messages given as JSON or protobuf, and decodes what it reads back.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let catalog = warren_reflect::Catalog::from_descriptor_set(warren_contracts::FILE_DESCRIPTOR_SET)?;
//! let event = catalog.event("UserRegistered")?; // a unique short name, or the full proto name
//! let message = catalog.parse_json(&event.full_name, r#"{"userId": "7", "username": "ada", "email": "ada@example.com"}"#)?;
//! assert_eq!(catalog.routing_key(event, &message)?, "user.registered");
//!
//! let bus = warren::Bus::in_memory();
//! let mut tail = bus.watch(&catalog.exchange("gametrade.events")?, "user.*").await?;
//! let id = catalog.publish(&bus, event, &message, warren::PublishOptions::new()).await?;
//! let seen = tail.next_within(std::time::Duration::from_secs(1)).await.expect("the event arrives");
//! assert_eq!(seen.message.properties.message_id.as_deref(), Some(id.as_str()));
//! assert_eq!(catalog.decode(&seen.message)?["username"], "ada");
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - `lib.rs`: [`Catalog`] (loading contracts) and [`Error`].
//! - `names.rs`: finding events, tasks, services, methods and messages by full or unique short name, with
//!   the closest names when none matches.
//! - `check.rs`: the contract's validation rules on a message read at run time, worded as generated checks
//!   word them.
//! - `send.rs`: JSON and protobuf in and out, routing keys from templates, publish, enqueue, call, decode.

mod check;
mod names;
mod send;

use std::path::{Path, PathBuf};

pub use names::Item;
pub use send::{Format, Reply, to_json};
pub use warren_codegen::Contracts;
pub use warren_codegen::model::{Event, Exchange, Method, RetryPolicy, Rules, Service, Task};
pub use warren_topology::dead_letter_queue;

/// What went wrong reading contracts or a message, or sending one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The contracts did not load (a proto that does not compile, a broken contract, an unreadable file).
    #[error("{0}")]
    Contracts(String),
    /// No event, task, service, method or message has this name.
    #[error("no {what} is named \"{name}\"{}", did_you_mean(.suggestions))]
    NotFound {
        /// What was looked for: `event`, `task`, …
        what: &'static str,
        /// The name given.
        name: String,
        /// The closest names there are.
        suggestions: Vec<String>,
    },
    /// A short name several items share.
    #[error("\"{name}\" could be any of {}; give the full name", .candidates.join(", "))]
    Ambiguous {
        /// The name given.
        name: String,
        /// The full names it could mean.
        candidates: Vec<String>,
    },
    /// The input does not decode as the message.
    #[error("the input is not a valid {type_name}: {}{reason}", at(.field.as_deref()))]
    Malformed {
        /// The message's full name.
        type_name: String,
        /// Where in the input, as a path from the message (`userId`, `items[2].price`), when the decoder knew.
        field: Option<String>,
        /// Why, e.g. `invalid type: integer, expected a string`.
        reason: String,
    },
    /// The message breaks its contract's validation rules.
    #[error("{type_name} is invalid: {violations}")]
    Invalid {
        /// The message's full name.
        type_name: String,
        /// Each broken rule, by field.
        violations: warren::Violations,
    },
    /// A routing-key template's field has a value that cannot be a word of a key.
    #[error("field `{field}` of {type_name} fills the routing key, but its value {value:?} {problem}")]
    RoutingKey {
        /// The event's full name.
        type_name: String,
        /// The field.
        field: String,
        /// Its value.
        value: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] warren::Error),
}

impl Error {
    /// [`Error::Malformed`] without a place in the input: the input as a whole does not fit.
    fn malformed(type_name: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Malformed { type_name: type_name.into(), field: None, reason: reason.into() }
    }
}

/// `at userId: ` before a reason that has a place in the input; nothing before one that does not.
fn at(field: Option<&str>) -> String {
    field.map(|field| format!("at {field}: ")).unwrap_or_default()
}

fn did_you_mean(suggestions: &[String]) -> String {
    match suggestions {
        [] => String::new(),
        [one] => format!("; did you mean {one}?"),
        more => format!("; did you mean one of {}?", more.join(", ")),
    }
}

/// Contracts loaded at run time: the checked model and its descriptors.
#[derive(Debug)]
pub struct Catalog {
    contracts: Contracts,
    /// Every message of the model by full name, as (package, message) indexes: looked up for each message
    /// checked or encoded, so found once here rather than by a scan each time.
    messages: std::collections::HashMap<String, (usize, usize)>,
}

impl Catalog {
    fn new(contracts: Contracts) -> Catalog {
        let messages = contracts
            .packages
            .iter()
            .enumerate()
            .flat_map(|(p, package)| package.messages.iter().enumerate().map(move |(m, message)| (message, (p, m))))
            .map(|(message, at)| (message.full_name.clone(), at))
            .collect();
        Catalog { contracts, messages }
    }

    /// The model's message `full_name` (its fingerprint and rules), when the contracts define it.
    fn model_message(&self, full_name: &str) -> Option<&warren_codegen::model::Message> {
        let &(package, message) = self.messages.get(full_name)?;
        Some(&self.contracts.packages[package].messages[message])
    }

    /// The contracts of an encoded `FileDescriptorSet` with its imports: a generated crate's
    /// `FILE_DESCRIPTOR_SET`, or what `protoc --include_imports --include_source_info -o FILE` writes.
    pub fn from_descriptor_set(bytes: &[u8]) -> Result<Catalog, Error> {
        let contracts = warren_codegen::load_descriptor_set(bytes).map_err(|e| Error::Contracts(e.to_string()))?;
        Ok(Catalog::new(contracts))
    }

    /// The contracts of a file written by `protoc --include_imports -o FILE` (or a generated crate's
    /// `file_descriptor_set.bin`).
    pub fn from_descriptor_set_file(path: &Path) -> Result<Catalog, Error> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Contracts(format!("cannot read descriptor set {}: {e}", path.display())))?;
        Catalog::from_descriptor_set(&bytes)
    }

    /// Compiles every `.proto` file under `dir` (the include root, as `proto/` in this workspace), checking
    /// the contracts as `cargo xtask regen` does. Warren's own `warren/options.proto` need not be there.
    pub fn from_proto_dir(dir: &Path) -> Result<Catalog, Error> {
        let mut files = Vec::new();
        collect_protos(dir, dir, &mut files)
            .map_err(|e| Error::Contracts(format!("cannot read proto directory {}: {e}", dir.display())))?;
        files.retain(|file| file != Path::new("warren/options.proto"));
        if files.is_empty() {
            return Err(Error::Contracts(format!("no .proto files under {}", dir.display())));
        }
        files.sort();
        let config = warren_codegen::Config::new([dir], files);
        let contracts = warren_codegen::load(&config).map_err(|e| Error::Contracts(e.to_string()))?;
        Ok(Catalog::new(contracts))
    }

    /// The contract model: packages with their events, tasks, services and messages; exchanges.
    pub fn contracts(&self) -> &Contracts {
        &self.contracts
    }

    /// Every event, by package.
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.contracts.packages.iter().flat_map(|p| &p.events)
    }

    /// Every task, by package.
    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.contracts.packages.iter().flat_map(|p| &p.tasks)
    }

    /// Every RPC service, by package.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.contracts.packages.iter().flat_map(|p| &p.services)
    }

    /// Exchange `name` as the contracts declare it, for [`warren::Bus::watch`].
    pub fn exchange(&self, name: &str) -> Result<warren::Exchange, Error> {
        match self.contracts.exchanges.get(name) {
            Some(e) => Ok(warren::Exchange::new(&e.name, e.kind, e.durable, e.auto_delete)),
            None => {
                let names: Vec<String> = self.contracts.exchanges.keys().cloned().collect();
                Err(names::not_found("exchange", name, names))
            }
        }
    }

    /// Every exchange the contracts declare.
    pub fn exchanges(&self) -> impl Iterator<Item = &Exchange> {
        self.contracts.exchanges.values()
    }

    /// Why watching exchange `exchange` with binding `pattern` would be a mistake, if it would: an exchange the
    /// contracts do not declare, a pattern that is not one, or (on an exchange that routes by key) a pattern
    /// no event of the exchange can ever match.
    ///
    /// ```
    /// let catalog = warren_reflect::Catalog::from_descriptor_set(warren_contracts::FILE_DESCRIPTOR_SET).unwrap();
    /// assert_eq!(catalog.watch_problem("gametrade.events", "user.*"), None);
    /// assert!(catalog.watch_problem("gametrade.events", "nothing.here").unwrap().contains("cannot match"));
    /// assert!(catalog.watch_problem("gametrade.events", "user..x").is_some());
    /// assert!(catalog.watch_problem("gametrade.event", "#").unwrap().contains("did you mean gametrade.events"));
    /// ```
    pub fn watch_problem(&self, exchange: &str, pattern: &str) -> Option<String> {
        let Some(declared) = self.contracts.exchanges.get(exchange) else {
            return Some(
                names::not_found("exchange", exchange, self.contracts.exchanges.keys().cloned().collect()).to_string(),
            );
        };
        if pattern.len() > warren::MAX_PATTERN_LEN {
            return Some(format!(
                "the pattern is {} bytes; RabbitMQ takes at most {}",
                pattern.len(),
                warren::MAX_PATTERN_LEN
            ));
        }
        if let Some(problem) = warren::topic::pattern_problem(pattern) {
            return Some(format!("bad pattern: {problem}"));
        }
        let keys: Vec<&str> =
            self.events().filter(|e| e.exchange.name == declared.name).map(|e| e.binding.as_str()).collect();
        if declared.kind.uses_routing_key() && !keys.iter().any(|key| warren::topic::overlaps(pattern, key)) {
            return Some(format!(
                "pattern {pattern:?} cannot match any event of {exchange} (its routing keys: {})",
                keys.join(", ")
            ));
        }
        None
    }
}

/// Every `.proto` file under `dir`, relative to `root`.
fn collect_protos(root: &Path, dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(root, &path, files)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            files.push(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
        }
    }
    Ok(())
}
