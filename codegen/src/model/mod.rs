//! The contract model: what the protos declare, read with prost-reflect and checked.
//!
//! Everything downstream (code, and later docs and compatibility checks) reads this model, never the raw
//! descriptors, so a rule is enforced in one place.

mod keys;
mod messages;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use keys::{KeyKind, KeyPart, Subscription};
pub use messages::{FieldCheck, FieldKind, Message, Rules, Shape};

use prost_reflect::{DescriptorPool, DynamicMessage, ExtensionDescriptor, MessageDescriptor, ReflectMessage, Value};

use crate::compile::{Compiled, OPTIONS_PROTO_NAME, SourceInfo};
use crate::error::{Error, Location, Result};
use crate::ident;

// Field numbers inside descriptor protos, for source locations.
const FILE_OPTIONS: i32 = 8;
const MESSAGE_OPTIONS: i32 = 7;
const SERVICE_OPTIONS: i32 = 3;
const EXCHANGE_EXT: i32 = 50100;
const EVENT_EXT: i32 = 50101;
const SERVICE_EXT: i32 = 50102;
const TASK_EXT: i32 = 50104;
const SUBSCRIPTION_EXT: i32 = 50105;

/// How an exchange routes messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Exact routing key match.
    Direct,
    /// Dotted patterns with `*` and `#`.
    Topic,
    /// Every bound queue.
    Fanout,
    /// By header values.
    Headers,
}

impl ExchangeKind {
    /// The kind's name in Warren's options and in AMQP.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Headers => "headers",
        }
    }

    /// Whether routing keys mean anything on this kind of exchange.
    pub fn uses_routing_key(self) -> bool {
        matches!(self, ExchangeKind::Direct | ExchangeKind::Topic)
    }
}

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
    pub retry: Option<Retry>,
    /// Whether its subscribers get quorum queues.
    pub quorum: bool,
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
    pub retry: Option<Retry>,
    /// Whether the work queue is a quorum queue.
    pub quorum: bool,
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

/// A retry policy from `(warren.event).retry`, defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Deliveries in all, the first included.
    pub max_attempts: u32,
    /// First wait, in milliseconds.
    pub initial_backoff_ms: u32,
    /// Growth factor of the waits.
    pub multiplier: u32,
    /// Longest wait, in milliseconds.
    pub max_backoff_ms: u32,
}

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
    /// Queue the server consumes.
    pub queue: String,
    /// Default deadline per call, in milliseconds.
    pub default_timeout_ms: u32,
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

struct Extensions {
    exchange: ExtensionDescriptor,
    event: ExtensionDescriptor,
    service: ExtensionDescriptor,
    method: ExtensionDescriptor,
    task: ExtensionDescriptor,
    subscription: ExtensionDescriptor,
    rules: ExtensionDescriptor,
}

impl Extensions {
    fn load(pool: &DescriptorPool) -> Self {
        // The options file is always compiled (embedded if not on the include path) when any file imports it;
        // when no file does, there is nothing to read, and the lookups below cannot fail either: we compile
        // the options file ourselves if needed (see `Contracts::build`).
        let ext = |name: &str| pool.get_extension_by_name(name).expect("warren/options.proto is in the pool");
        Extensions {
            exchange: ext("warren.exchange"),
            event: ext("warren.event"),
            service: ext("warren.service"),
            method: ext("warren.method"),
            task: ext("warren.task"),
            subscription: ext("warren.subscription"),
            rules: ext("warren.rules"),
        }
    }
}

fn string_field(message: &DynamicMessage, name: &str) -> String {
    message.get_field_by_name(name).and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

fn u32_field(message: &DynamicMessage, name: &str) -> u32 {
    message.get_field_by_name(name).and_then(|v| v.as_u32()).unwrap_or_default()
}

fn enum_field(message: &DynamicMessage, name: &str) -> i32 {
    message.get_field_by_name(name).and_then(|v| v.as_enum_number()).unwrap_or_default()
}

fn extension_message(options: &DynamicMessage, ext: &ExtensionDescriptor) -> Option<DynamicMessage> {
    if !options.has_extension(ext) {
        return None;
    }
    match options.get_extension(ext).into_owned() {
        Value::Message(m) => Some(m),
        _ => None,
    }
}

impl Contracts {
    pub(crate) fn build(compiled: Compiled) -> Result<Contracts> {
        let Compiled { pool, descriptor_set, paths, requested } = compiled;
        let pool = if pool.get_file_by_name(OPTIONS_PROTO_NAME).is_some() {
            pool
        } else {
            // No file imports Warren's options: add them so extension lookups work; nothing will use them.
            let mut with_options = pool.clone();
            let options = crate::compile::compile(&[], &[PathBuf::from(OPTIONS_PROTO_NAME)])?;
            for file in options.pool.file_descriptor_protos() {
                if with_options.get_file_by_name(file.name()).is_none() {
                    with_options.add_file_descriptor_proto(file.clone()).expect("options.proto is valid");
                }
            }
            with_options
        };
        let ext = Extensions::load(&pool);
        let path_of = |name: &str| paths.get(name).cloned().unwrap_or_else(|| PathBuf::from(name));

        // Exchanges from every file, imports included: an event may use an exchange an imported file declares.
        let mut exchanges: BTreeMap<String, Exchange> = BTreeMap::new();
        for file in pool.files() {
            let info = SourceInfo::new(file.file_descriptor_proto(), path_of(file.name()));
            let options = file.options();
            if !options.has_extension(&ext.exchange) {
                continue;
            }
            let Value::List(list) = options.get_extension(&ext.exchange).into_owned() else {
                continue;
            };
            for (index, value) in list.iter().enumerate() {
                let Value::Message(m) = value else { continue };
                let location = info.location(&[FILE_OPTIONS, EXCHANGE_EXT, index as i32]);
                let exchange = read_exchange(m, location)?;
                if let Some(previous) = exchanges.get(&exchange.name) {
                    return Err(Error::contract(
                        exchange.location,
                        format!("exchange \"{}\" is declared twice (first at {})", exchange.name, previous.location),
                        "declare each exchange once, in one file, and import that file where events use it",
                    ));
                }
                exchanges.insert(exchange.name.clone(), exchange);
            }
        }

        let mut packages: BTreeMap<String, Package> = BTreeMap::new();
        for name in &requested {
            let file = pool.get_file_by_name(name).expect("requested files are in the pool");
            if name == OPTIONS_PROTO_NAME {
                continue;
            }
            let info = SourceInfo::new(file.file_descriptor_proto(), path_of(name));
            let package = packages.entry(file.package_name().to_owned()).or_insert_with(|| Package {
                name: file.package_name().to_owned(),
                files: Vec::new(),
                paths: Vec::new(),
                doc: String::new(),
                events: Vec::new(),
                groups: Vec::new(),
                services: Vec::new(),
                tasks: Vec::new(),
                subscriptions: Vec::new(),
                messages: Vec::new(),
            });
            package.files.push(name.clone());
            package.paths.push(path_of(name));
            let comment = info.file_comment();
            if !comment.is_empty() {
                if !package.doc.is_empty() {
                    package.doc.push_str("\n\n");
                }
                package.doc.push_str(&comment);
            }
            let mut messages: Vec<MessageDescriptor> = file.messages().collect();
            while let Some(message) = messages.pop() {
                messages.extend(message.child_messages());
                let event = read_event(&message, &ext, &info, &exchanges)?;
                let task = read_task(&message, &ext, &info)?;
                if let (Some(event), Some(task)) = (&event, &task) {
                    return Err(Error::contract(
                        task.location.clone(),
                        format!("message {} is both an event and a task", event.full_name),
                        "an event goes to every subscriber group, a task to one worker: choose one, or declare two messages",
                    ));
                }
                package.events.extend(event);
                package.tasks.extend(task);
            }
            for service in file.services() {
                package.services.push(read_service(&service, &ext, &info)?);
            }
            package.subscriptions.extend(read_subscriptions(&file, &ext, &info)?);
        }
        let files: Vec<_> = requested
            .iter()
            .filter(|name| name.as_str() != OPTIONS_PROTO_NAME)
            .map(|name| pool.get_file_by_name(name).expect("requested files are in the pool"))
            .collect();
        let infos: Vec<(String, SourceInfo<'_>)> = files
            .iter()
            .map(|f| (f.name().to_owned(), SourceInfo::new(f.file_descriptor_proto(), path_of(f.name()))))
            .collect();
        for (package, messages) in messages::read(&pool, &infos, &ext.rules)? {
            if let Some(package) = packages.get_mut(&package) {
                package.messages = messages;
            }
        }
        let mut packages: Vec<Package> = packages.into_values().collect();
        for package in &mut packages {
            // Declaration order within the package, independent of traversal order.
            package
                .events
                .sort_by(|a, b| (&a.location.file, a.location.line).cmp(&(&b.location.file, b.location.line)));
            keys::check_distinct(&package.events)?;
            package.groups = group_events(&package.events);
            for subscription in &package.subscriptions {
                keys::check_subscription(subscription, &package.groups, &package.events)?;
            }
            check_names(package, &pool)?;
        }
        check_queues(&packages)?;
        Ok(Contracts { packages, exchanges, descriptor_set, pool, requested })
    }
}

fn read_exchange(m: &DynamicMessage, location: Location) -> Result<Exchange> {
    let name = string_field(m, "name");
    if name.is_empty() {
        return Err(Error::contract(
            location,
            "exchange has no name",
            "add `name: \"<exchange>\"` to the (warren.exchange) option",
        ));
    }
    if name.starts_with("amq.") {
        return Err(Error::contract(
            location,
            format!("exchange name \"{name}\" starts with \"amq.\", which RabbitMQ reserves"),
            "choose a name without the \"amq.\" prefix",
        ));
    }
    let kind = match m.get_field_by_name("kind").and_then(|v| v.as_enum_number()).unwrap_or(0) {
        1 => ExchangeKind::Direct,
        2 => ExchangeKind::Topic,
        3 => ExchangeKind::Fanout,
        4 => ExchangeKind::Headers,
        _ => {
            return Err(Error::contract(
                location,
                format!("exchange \"{name}\" has no kind"),
                "add `kind: TOPIC` (or DIRECT, FANOUT, HEADERS) to the (warren.exchange) option",
            ));
        }
    };
    let durable_field = m.descriptor().get_field_by_name("durable").expect("options.proto declares durable");
    let durable =
        if m.has_field(&durable_field) { m.get_field(&durable_field).as_bool().unwrap_or(true) } else { true };
    let auto_delete = m.get_field_by_name("auto_delete").and_then(|v| v.as_bool()).unwrap_or(false);
    Ok(Exchange { name, kind, durable, auto_delete, location })
}

fn read_event(
    message: &MessageDescriptor,
    ext: &Extensions,
    info: &SourceInfo<'_>,
    exchanges: &BTreeMap<String, Exchange>,
) -> Result<Option<Event>> {
    let Some(option) = extension_message(&message.options(), &ext.event) else {
        return Ok(None);
    };
    let mut option_path = message.path().to_vec();
    option_path.extend([MESSAGE_OPTIONS, EVENT_EXT]);
    let location = info.location(&option_path);
    let exchange_name = string_field(&option, "exchange");
    let full_name = message.full_name().to_owned();
    if exchange_name.is_empty() {
        return Err(Error::contract(
            location,
            format!("event {full_name} has no exchange"),
            "add `exchange: \"<name>\"` to its (warren.event) option, naming an exchange declared with (warren.exchange)",
        ));
    }
    let Some(exchange) = exchanges.get(&exchange_name) else {
        let declared = if exchanges.is_empty() {
            "none is declared".to_owned()
        } else {
            format!("declared: {}", exchanges.keys().map(|k| format!("\"{k}\"")).collect::<Vec<_>>().join(", "))
        };
        return Err(Error::contract(
            location,
            format!("event {full_name} uses exchange \"{exchange_name}\", which is not declared ({declared})"),
            format!(
                "declare it at file level with `option (warren.exchange) = {{ name: \"{exchange_name}\" kind: TOPIC }};` or fix the name"
            ),
        ));
    };
    let routing_key = string_field(&option, "routing_key");
    if exchange.kind.uses_routing_key() {
        if routing_key.is_empty() {
            return Err(Error::contract(
                location,
                format!(
                    "event {full_name} has no routing key, but exchange \"{}\" is {}",
                    exchange.name,
                    exchange.kind.as_str()
                ),
                "add `routing_key: \"<words.separated.by.dots>\"` to its (warren.event) option",
            ));
        }
        if routing_key.contains(['*', '#']) || routing_key.split('.').any(str::is_empty) || routing_key.len() > 255 {
            return Err(Error::contract(
                location,
                format!("event {full_name} has routing key \"{routing_key}\", which is not a plain dotted key"),
                "use non-empty words separated by single dots, without the wildcards `*` and `#` (those belong in subscriptions)",
            ));
        }
    }
    let (key_parts, binding) = if exchange.kind.uses_routing_key() {
        keys::parse_template(&routing_key, message, exchange, &location)?
    } else {
        (Vec::new(), routing_key.clone())
    };
    let priority = enum_field(&option, "priority");
    let priority = (1..=4).contains(&priority).then(|| (priority - 1) as u8);
    let retry = read_retry(&option, &format!("event {full_name}"), &location)?;
    let quorum = enum_field(&option, "queue_type") == 2;
    if quorum && priority.is_some() {
        return Err(Error::contract(
            location,
            format!(
                "event {full_name} asks for quorum queues and a priority; RabbitMQ 3 quorum queues have no priorities"
            ),
            "drop `priority`, or use `queue_type: CLASSIC`",
        ));
    }
    Ok(Some(Event {
        priority,
        retry,
        quorum,
        rust_path: ident::rust_type_path(message.package_name(), message),
        variant: ident::type_name(message.name()),
        full_name,
        exchange: exchange.clone(),
        routing_key,
        key_parts,
        binding,
        json: enum_field(&option, "wire_format") == 2,
        doc: info.comment(message.path()),
        location: info.location(message.path()),
    }))
}

/// The `retry` of an event or task option, defaults filled in.
fn read_retry(option: &DynamicMessage, what: &str, location: &Location) -> Result<Option<Retry>> {
    let retry_field = option.descriptor().get_field_by_name("retry").expect("options.proto declares retry");
    if !option.has_field(&retry_field) {
        return Ok(None);
    }
    let Value::Message(retry) = option.get_field(&retry_field).into_owned() else { unreachable!("a message field") };
    let or = |value: u32, default: u32| if value == 0 { default } else { value };
    let max_attempts = u32_field(&retry, "max_attempts");
    if max_attempts == 0 {
        return Err(Error::contract(
            location.clone(),
            format!("{what} has a retry policy without max_attempts"),
            "add `max_attempts: N` (deliveries in all, at least 1) to its `retry`",
        ));
    }
    Ok(Some(Retry {
        max_attempts,
        initial_backoff_ms: or(u32_field(&retry, "initial_backoff_ms"), 1_000),
        multiplier: or(u32_field(&retry, "multiplier"), 2),
        max_backoff_ms: or(u32_field(&retry, "max_backoff_ms"), 300_000),
    }))
}

fn read_task(message: &MessageDescriptor, ext: &Extensions, info: &SourceInfo<'_>) -> Result<Option<Task>> {
    let Some(option) = extension_message(&message.options(), &ext.task) else {
        return Ok(None);
    };
    let mut option_path = message.path().to_vec();
    option_path.extend([MESSAGE_OPTIONS, TASK_EXT]);
    let location = info.location(&option_path);
    let full_name = message.full_name().to_owned();
    let queue = string_field(&option, "queue");
    if queue.is_empty() || queue.starts_with("amq.") {
        return Err(Error::contract(
            location,
            format!("task {full_name} has no usable queue (\"{queue}\")"),
            "add `queue: \"<name>\"` to its (warren.task) option; names starting with \"amq.\" are reserved",
        ));
    }
    let prefetch = match u32_field(&option, "prefetch") {
        0 => None,
        n => Some(u16::try_from(n).map_err(|_| {
            Error::contract(
                location.clone(),
                format!("task {full_name} has prefetch {n}, above AMQP's limit of 65535"),
                "use a prefetch between 1 and 65535 (tens to hundreds suit most workers)",
            )
        })?),
    };
    Ok(Some(Task {
        retry: read_retry(&option, &format!("task {full_name}"), &location)?,
        quorum: enum_field(&option, "queue_type") == 2,
        json: enum_field(&option, "wire_format") == 2,
        rust_path: ident::rust_type_path(message.package_name(), message),
        full_name,
        queue,
        prefetch,
        doc: info.comment(message.path()),
        location,
    }))
}

fn read_subscriptions(
    file: &prost_reflect::FileDescriptor,
    ext: &Extensions,
    info: &SourceInfo<'_>,
) -> Result<Vec<Subscription>> {
    let options = file.options();
    if !options.has_extension(&ext.subscription) {
        return Ok(Vec::new());
    }
    let Value::List(list) = options.get_extension(&ext.subscription).into_owned() else {
        return Ok(Vec::new());
    };
    let mut out: Vec<Subscription> = Vec::new();
    for (index, value) in list.iter().enumerate() {
        let Value::Message(m) = value else { continue };
        let path = [FILE_OPTIONS, SUBSCRIPTION_EXT, index as i32];
        let subscription = Subscription {
            name: string_field(m, "name"),
            rust_name: format!("subscribe_{}", string_field(m, "name")),
            exchange: string_field(m, "exchange"),
            pattern: string_field(m, "pattern"),
            doc: info.comment(&path),
            location: info.location(&path),
        };
        if out.iter().any(|s| s.name == subscription.name) {
            return Err(Error::contract(
                subscription.location,
                format!("subscription \"{}\" is declared twice", subscription.name),
                "give each subscription its own name",
            ));
        }
        out.push(subscription);
    }
    Ok(out)
}

/// Work queues and service queues are shared by name on the broker: two declarations of one name would fight.
fn check_queues(packages: &[Package]) -> Result<()> {
    let mut seen: BTreeMap<&str, (&str, &Location)> = BTreeMap::new();
    let tasks = packages.iter().flat_map(|p| &p.tasks).map(|t| (t.queue.as_str(), t.full_name.as_str(), &t.location));
    let services =
        packages.iter().flat_map(|p| &p.services).map(|s| (s.queue.as_str(), s.full_name.as_str(), &s.location));
    for (queue, owner, location) in tasks.chain(services) {
        if let Some((first, _)) = seen.insert(queue, (owner, location)) {
            return Err(Error::contract(
                location.clone(),
                format!("{owner} uses queue \"{queue}\", which {first} already uses"),
                "give each task and service its own queue",
            ));
        }
    }
    Ok(())
}

fn group_events(events: &[Event]) -> Vec<EventGroup> {
    let mut groups: Vec<EventGroup> = Vec::new();
    for (index, event) in events.iter().enumerate() {
        match groups.iter_mut().find(|g| g.exchange.name == event.exchange.name) {
            Some(group) => group.events.push(index),
            None => groups.push(EventGroup {
                rust_name: ident::type_name(&event.exchange.name.replace(['.', '-'], "_")),
                exchange: event.exchange.clone(),
                events: vec![index],
            }),
        }
    }
    groups
}

fn read_service(
    service: &prost_reflect::ServiceDescriptor,
    ext: &Extensions,
    info: &SourceInfo<'_>,
) -> Result<Service> {
    let location = info.location(service.path());
    let full_name = service.full_name().to_owned();
    let option = extension_message(&service.options(), &ext.service);
    let queue = option.as_ref().map(|o| string_field(o, "queue")).unwrap_or_default();
    if queue.is_empty() {
        let mut at = service.path().to_vec();
        at.extend([SERVICE_OPTIONS, SERVICE_EXT]);
        return Err(Error::contract(
            info.location(&at),
            format!("service {full_name} has no queue"),
            format!(
                "add `option (warren.service) = {{ queue: \"{}\" }};` inside the service",
                full_name.rsplit('.').next().unwrap_or_default()
            ),
        ));
    }
    let default_timeout_ms =
        option.as_ref().map(|o| u32_field(o, "default_timeout_ms")).filter(|t| *t > 0).unwrap_or(30_000);
    let service_errors = option.as_ref().map(|o| string_field(o, "errors")).filter(|e| !e.is_empty());
    let mut methods = Vec::new();
    for method in service.methods() {
        if method.is_client_streaming() || method.is_server_streaming() {
            return Err(Error::contract(
                info.location(method.path()),
                format!("rpc {}.{} streams, which Warren does not support over AMQP", full_name, method.name()),
                "use unary rpcs; publish a stream of events instead",
            ));
        }
        let method_option = extension_message(&method.options(), &ext.method);
        let timeout_ms = method_option.as_ref().map(|o| u32_field(o, "timeout_ms")).filter(|t| *t > 0);
        let errors = match method_option.map(|o| string_field(&o, "errors")).filter(|e| !e.is_empty()) {
            Some(name) => Some(read_errors(&name, service, info.location(method.path()))?),
            None => match &service_errors {
                Some(name) => Some(read_errors(name, service, location.clone())?),
                None => None,
            },
        };
        let input = method.input();
        let output = method.output();
        methods.push(Method {
            name: method.name().to_owned(),
            rust_name: ident::field_name(method.name()),
            input_rust: ident::rust_type_path(service.package_name(), &input),
            input: input.full_name().to_owned(),
            output_rust: ident::rust_type_path(service.package_name(), &output),
            output: output.full_name().to_owned(),
            timeout_ms,
            errors,
            doc: info.comment(method.path()),
        });
    }
    // The client has `new`, `with_timeout` and, per rpc, `<rpc>` and `<rpc>_with`: no two may share a name.
    let mut taken: std::collections::HashMap<String, String> =
        [("new", "the client's constructor"), ("with_timeout", "the client's deadline setter")]
            .map(|(name, what)| (name.to_owned(), what.to_owned()))
            .into();
    for (method, descriptor) in methods.iter().zip(service.methods()) {
        let plain = method.rust_name.trim_start_matches("r#");
        for name in [plain.to_owned(), format!("{plain}_with")] {
            if let Some(other) = taken.insert(name.clone(), format!("rpc {}", method.name)) {
                return Err(Error::contract(
                    info.location(descriptor.path()),
                    format!(
                        "rpc {full_name}.{} would generate client method `{name}`, which {other} already has",
                        method.name
                    ),
                    "rename the rpc: each rpc gets a client method `<rpc>` and `<rpc>_with` in snake case",
                ));
            }
        }
    }
    Ok(Service {
        name: service.name().to_owned(),
        full_name,
        queue,
        default_timeout_ms,
        methods,
        doc: info.comment(service.path()),
        location,
    })
}

/// Resolves an `errors` option: a message of the service's package that is one oneof.
fn read_errors(name: &str, service: &prost_reflect::ServiceDescriptor, location: Location) -> Result<ErrorSet> {
    let package = service.package_name();
    let pool = service.parent_pool();
    let message = pool
        .get_message_by_name(&format!("{package}.{name}"))
        .or_else(|| pool.get_message_by_name(name))
        .ok_or_else(|| {
            Error::contract(
                location.clone(),
                format!("service {} names errors \"{name}\", but there is no such message", service.full_name()),
                format!("declare `message {name} {{ oneof reason {{ ... }} }}` in package {package}, or fix the name"),
            )
        })?;
    let full_name = message.full_name().to_owned();
    if message.package_name() != package {
        return Err(Error::contract(
            location,
            format!("service {} names errors {full_name} from another package", service.full_name()),
            format!("declare the error message in package {package}, next to the service"),
        ));
    }
    let oneofs: Vec<_> = message.oneofs().filter(|o| !o.is_synthetic()).collect();
    let loose: Vec<String> =
        message.fields().filter(|f| f.containing_oneof().is_none()).map(|f| f.name().to_owned()).collect();
    let [oneof] = oneofs.as_slice() else {
        return Err(Error::contract(
            location,
            format!("error message {full_name} must consist of exactly one oneof, but has {}", oneofs.len()),
            format!("write `message {} {{ oneof reason {{ NotFound not_found = 1; ... }} }}`", message.name()),
        ));
    };
    if !loose.is_empty() {
        return Err(Error::contract(
            location,
            format!("error message {full_name} has fields outside its oneof: {}", loose.join(", ")),
            "move them into the cases' messages: each case carries its own details",
        ));
    }
    let rust_path = ident::rust_type_path(package, &message);
    let parent = rust_path.rsplit_once("::").map(|(p, _)| format!("{p}::")).unwrap_or_default();
    Ok(ErrorSet {
        enum_path: format!("{parent}{}::{}", ident::field_name(message.name()), ident::type_name(oneof.name())),
        field: ident::field_name(oneof.name()),
        cases: oneof.fields().map(|f| (ident::type_name(f.name()), f.name().to_owned())).collect(),
        full_name,
        rust_path,
    })
}

/// Generated names (event enums, clients, servers) must not collide with message or enum names.
fn check_names(package: &Package, pool: &DescriptorPool) -> Result<()> {
    let taken = |name: &str| {
        let full = if package.name.is_empty() { name.to_owned() } else { format!("{}.{name}", package.name) };
        pool.get_message_by_name(&full).is_some() || pool.get_enum_by_name(&full).is_some()
    };
    for group in &package.groups {
        if taken(&group.rust_name) {
            return Err(Error::contract(
                group.exchange.location.clone(),
                format!(
                    "the enum Warren generates for exchange \"{}\" would be named {}, like a message in package {}",
                    group.exchange.name, group.rust_name, package.name
                ),
                "rename the message, or the exchange",
            ));
        }
    }
    for service in &package.services {
        for generated in [format!("{}Client", service.name), format!("{}Server", service.name)] {
            if taken(&generated) {
                return Err(Error::contract(
                    service.location.clone(),
                    format!(
                        "service {} would generate {generated}, which is already a message in {}",
                        service.full_name, package.name
                    ),
                    "rename the message or the service",
                ));
            }
        }
    }
    Ok(())
}
