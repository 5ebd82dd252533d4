//! The contract model: what the protos declare, read with prost-reflect and checked.
//!
//! Everything downstream (code, and later docs and compatibility checks) reads this model, never the raw
//! descriptors, so a rule is enforced in one place.

use std::collections::BTreeMap;
use std::path::PathBuf;

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
    /// The routing key it is published with.
    pub routing_key: String,
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
        }
    }
}

fn string_field(message: &DynamicMessage, name: &str) -> String {
    message.get_field_by_name(name).and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

fn u32_field(message: &DynamicMessage, name: &str) -> u32 {
    message.get_field_by_name(name).and_then(|v| v.as_u32()).unwrap_or_default()
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
                if let Some(event) = read_event(&message, &ext, &info, &exchanges)? {
                    package.events.push(event);
                }
            }
            for service in file.services() {
                package.services.push(read_service(&service, &ext, &info)?);
            }
        }
        let mut packages: Vec<Package> = packages.into_values().collect();
        for package in &mut packages {
            // Declaration order within the package, independent of traversal order.
            package
                .events
                .sort_by(|a, b| (&a.location.file, a.location.line).cmp(&(&b.location.file, b.location.line)));
            check_routing_keys(&package.events)?;
            package.groups = group_events(&package.events);
            check_names(package, &pool)?;
        }
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
        if routing_key.contains(['*', '#']) || routing_key.split('.').any(str::is_empty) {
            return Err(Error::contract(
                location,
                format!("event {full_name} has routing key \"{routing_key}\", which is not a plain dotted key"),
                "use non-empty words separated by single dots, without the wildcards `*` and `#` (those belong in subscriptions)",
            ));
        }
    }
    let priority = option.get_field_by_name("priority").and_then(|v| v.as_enum_number()).unwrap_or(0);
    let priority = (1..=4).contains(&priority).then(|| (priority - 1) as u8);
    let retry_field = option.descriptor().get_field_by_name("retry").expect("options.proto declares retry");
    let retry = if option.has_field(&retry_field) {
        let Value::Message(retry) = option.get_field(&retry_field).into_owned() else {
            unreachable!("a message field")
        };
        let or = |value: u32, default: u32| if value == 0 { default } else { value };
        let max_attempts = u32_field(&retry, "max_attempts");
        if max_attempts == 0 {
            return Err(Error::contract(
                location,
                format!("event {full_name} has a retry policy without max_attempts"),
                "add `max_attempts: N` (deliveries in all, at least 1) to its `retry`",
            ));
        }
        Some(Retry {
            max_attempts,
            initial_backoff_ms: or(u32_field(&retry, "initial_backoff_ms"), 1_000),
            multiplier: or(u32_field(&retry, "multiplier"), 2),
            max_backoff_ms: or(u32_field(&retry, "max_backoff_ms"), 300_000),
        })
    } else {
        None
    };
    let quorum = option.get_field_by_name("queue_type").and_then(|v| v.as_enum_number()) == Some(2);
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
        doc: info.comment(message.path()),
        location: info.location(message.path()),
    }))
}

fn check_routing_keys(events: &[Event]) -> Result<()> {
    let mut seen: BTreeMap<(&str, &str), &Event> = BTreeMap::new();
    for event in events.iter().filter(|e| e.exchange.kind.uses_routing_key()) {
        if let Some(first) = seen.insert((&event.exchange.name, &event.routing_key), event) {
            return Err(Error::contract(
                event.location.clone(),
                format!(
                    "events {} and {} both use routing key \"{}\" on exchange \"{}\"",
                    first.full_name, event.full_name, event.routing_key, event.exchange.name
                ),
                "give each event its own routing key; subscribers bind by key and could not tell them apart",
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
    let mut methods = Vec::new();
    for method in service.methods() {
        if method.is_client_streaming() || method.is_server_streaming() {
            return Err(Error::contract(
                info.location(method.path()),
                format!("rpc {}.{} streams, which Warren does not support over AMQP", full_name, method.name()),
                "use unary rpcs; publish a stream of events instead",
            ));
        }
        let timeout_ms =
            extension_message(&method.options(), &ext.method).map(|o| u32_field(&o, "timeout_ms")).filter(|t| *t > 0);
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
            doc: info.comment(method.path()),
        });
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
