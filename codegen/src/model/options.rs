//! Reading Warren's options out of the descriptors into the model, checking each item on its own.

use std::collections::BTreeMap;
use std::path::PathBuf;

use prost_reflect::{DescriptorPool, DynamicMessage, ExtensionDescriptor, MessageDescriptor, ReflectMessage, Value};

use super::validate::{check_names, check_queues};
use super::{Contracts, ErrorSet, Event, EventGroup, Exchange, ExchangeKind, Method, Package, Retry, Service, Task};
use super::{Subscription, keys, messages};
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

pub(super) fn extension_message(options: &DynamicMessage, ext: &ExtensionDescriptor) -> Option<DynamicMessage> {
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
