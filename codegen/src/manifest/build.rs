//! Building the manifest from the checked contracts and their descriptors.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use prost_reflect::{Cardinality, EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor, Syntax};

use super::{
    Consumer, Enum, EnumValue, Event, Exchange, Field, FieldRules, File, GROUP, Label, Manifest, Message, Method,
    Queue, Reserved, RetryPolicy, Service, Task, WireFormat,
};
use crate::compat::{Rule, marker};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::{self, Contracts};
use crate::sources::{Source, Sources};
use warren_topology::QueueSettings;

/// The manifest of `contracts`, with paths shown as `config` shows them in generated headers.
pub(crate) fn build(config: &Config, contracts: &Contracts) -> Result<Manifest> {
    let sources = Sources::new(config, contracts);
    let mut manifest = Manifest::default();
    // Rules waived by markers in services' comments, until the services are read from the model.
    let mut service_allow: HashMap<String, BTreeSet<Rule>> = HashMap::new();
    for source in &sources.files {
        read_file(source, &mut manifest, &mut service_allow)?;
    }
    for (name, exchange) in &contracts.exchanges {
        manifest.exchanges.insert(
            name.clone(),
            Exchange {
                kind: exchange.kind,
                durable: exchange.durable,
                auto_delete: exchange.auto_delete,
                location: sources.display(&exchange.location),
            },
        );
    }
    // Validation rules, as the model read and checked them (it lists only fields that have any).
    for message in contracts.packages.iter().flat_map(|p| &p.messages) {
        let Some(entry) = manifest.messages.get_mut(&message.full_name) else { continue };
        for check in &message.checks {
            if let Some(field) = entry.fields.values_mut().find(|f| f.name == check.name) {
                field.rules = check.rules;
            }
        }
    }
    let mut subscribers: BTreeMap<String, Vec<&model::Event>> = BTreeMap::new();
    for package in &contracts.packages {
        for event in &package.events {
            manifest.events.insert(
                event.full_name.clone(),
                Event {
                    exchange: event.exchange.name.clone(),
                    kind: event.exchange.kind,
                    routing_key: event.routing_key.clone(),
                    priority: event.priority,
                    retry: event.retry,
                    quorum: event.quorum,
                    wire_format: WireFormat::of(event.json),
                    location: sources.display(&event.location),
                },
            );
            // `Event::subscribe(&bus, group)` consumes `<group>.<type>`.
            subscribers.entry(format!("{GROUP}.{}", event.full_name)).or_default().push(event);
        }
        for group in &package.groups {
            // The exchange's event enum consumes `<group>.<exchange>`.
            let queue = subscribers.entry(format!("{GROUP}.{}", group.exchange.name)).or_default();
            queue.extend(group.events.iter().map(|&index| &package.events[index]));
        }
        for task in &package.tasks {
            read_task(task, &sources, &mut manifest);
        }
        for service in &package.services {
            let allow = service_allow.remove(&service.full_name).unwrap_or_default();
            read_service(service, allow, &sources, &mut manifest);
        }
    }
    for (name, events) in subscribers {
        let queue = event_queue(&name, &events);
        manifest.queues.insert(name, queue);
    }
    Ok(manifest)
}

/// Messages, enums and markers of one file.
fn read_file(
    source: &Source<'_>,
    manifest: &mut Manifest,
    service_allow: &mut HashMap<String, BTreeSet<Rule>>,
) -> Result<()> {
    let file = &source.descriptor;
    let proto2 = file.syntax() == Syntax::Proto2;
    // Descriptor path of each item → its full name, to attribute markers.
    let mut items: HashMap<Vec<i32>, String> = HashMap::new();
    let mut messages: Vec<MessageDescriptor> = file.messages().collect();
    let mut enums: Vec<EnumDescriptor> = file.enums().collect();
    while let Some(message) = messages.pop() {
        if message.is_map_entry() {
            continue;
        }
        messages.extend(message.child_messages());
        enums.extend(message.child_enums());
        items.insert(message.path().to_vec(), message.full_name().to_owned());
        manifest.messages.insert(message.full_name().to_owned(), read_message(source, &message, proto2));
    }
    for descriptor in enums {
        items.insert(descriptor.path().to_vec(), descriptor.full_name().to_owned());
        manifest.enums.insert(descriptor.full_name().to_owned(), read_enum(source, &descriptor));
    }
    for service in file.services() {
        items.insert(service.path().to_vec(), service.full_name().to_owned());
    }

    let mut entry = File { package: file.package_name().to_owned(), allow: BTreeSet::new() };
    for comment in source.comments() {
        let rules = marker::parse(comment.text).map_err(|unknown| {
            let offset = comment.text.find(&unknown.name).unwrap_or_default();
            Error::contract(
                comment.location_at(offset),
                format!("`{}` marker names an {unknown}", marker::MARKER),
                "name a rule from the list, e.g. `// warren:allow field-removed: <why>`",
            )
        })?;
        if rules.is_empty() {
            continue;
        }
        // The innermost item the comment belongs to; a detached comment belongs to the file.
        let owner = (0..=comment.path.len())
            .rev()
            .filter(|_| comment.attached)
            .find_map(|len| items.get(&comment.path[..len]))
            .cloned();
        let allow = match owner {
            Some(name) => match manifest.messages.get_mut(&name) {
                Some(message) => &mut message.allow,
                None => match manifest.enums.get_mut(&name) {
                    Some(descriptor) => &mut descriptor.allow,
                    None => service_allow.entry(name).or_default(),
                },
            },
            None => &mut entry.allow,
        };
        allow.extend(rules);
    }
    manifest.files.insert(source.display.display().to_string(), entry);
    Ok(())
}

fn read_message(source: &Source<'_>, message: &MessageDescriptor, proto2: bool) -> Message {
    let fields = message
        .fields()
        .map(|field| {
            let entry = Field {
                name: field.name().to_owned(),
                label: label(&field, proto2),
                r#type: type_name(&field),
                json_name: field.json_name().to_owned(),
                rules: FieldRules::default(),
                location: Some(source.location(field.path())),
            };
            (field.number(), entry)
        })
        .collect();
    let reserved = Reserved {
        // Message ranges end exclusively; the manifest writes inclusive ranges, as `reserved 9 to 11;` reads.
        ranges: message.reserved_ranges().map(|r| i64::from(r.start)..=i64::from(r.end) - 1).collect(),
        names: message.reserved_names().map(str::to_owned).collect(),
    };
    Message { fields, reserved, allow: BTreeSet::new(), location: source.location(message.path()) }
}

fn read_enum(source: &Source<'_>, descriptor: &EnumDescriptor) -> Enum {
    let mut values: Vec<EnumValue> = descriptor
        .values()
        .map(|value| EnumValue {
            number: value.number(),
            name: value.name().to_owned(),
            location: Some(source.location(value.path())),
        })
        .collect();
    values.sort_by(|a, b| (a.number, &a.name).cmp(&(b.number, &b.name)));
    let reserved = Reserved {
        ranges: descriptor.reserved_ranges().map(|r| i64::from(*r.start())..=i64::from(*r.end())).collect(),
        names: descriptor.reserved_names().map(str::to_owned).collect(),
    };
    Enum { values, reserved, allow: BTreeSet::new(), location: source.location(descriptor.path()) }
}

fn read_service(service: &model::Service, allow: BTreeSet<Rule>, sources: &Sources<'_>, manifest: &mut Manifest) {
    let source = sources.files.iter().find(|f| f.descriptor.services().any(|s| s.full_name() == service.full_name));
    let descriptor = source.and_then(|s| s.descriptor.services().find(|d| d.full_name() == service.full_name));
    let methods = service
        .methods
        .iter()
        .map(|method| {
            let location = descriptor
                .as_ref()
                .and_then(|d| d.methods().find(|m| m.name() == method.name))
                .zip(source)
                .map(|(m, source)| source.location(m.path()));
            let entry = Method {
                request: method.input.clone(),
                response: method.output.clone(),
                timeout_ms: method.timeout_ms.unwrap_or(service.default_timeout_ms),
                location,
            };
            (method.name.clone(), entry)
        })
        .collect();
    manifest.services.insert(
        service.full_name.clone(),
        Service {
            queue: service.queue.clone(),
            default_timeout_ms: service.default_timeout_ms,
            methods,
            allow,
            location: sources.display(&service.location),
        },
    );
    // RPC queues are durable (quorum queues when asked for); requests reach them through the default exchange.
    let settings = QueueSettings::requests(service.quorum);
    manifest.queues.insert(
        service.queue.clone(),
        Queue {
            consumer: Consumer::Service(service.full_name.clone()),
            durable: settings.durable,
            arguments: settings.arguments().into_iter().map(|(key, value)| (key.to_owned(), value)).collect(),
            bindings: BTreeSet::new(),
            dead_letter_queue: None,
            retry: None,
            retry_queues: Vec::new(),
        },
    );
}

/// A task and its work queue: workers of every group consume the contract's queue, which senders reach through
/// the default exchange (so it has no bindings); tasks have no priorities.
fn read_task(task: &model::Task, sources: &Sources<'_>, manifest: &mut Manifest) {
    manifest.tasks.insert(
        task.full_name.clone(),
        Task {
            queue: task.queue.clone(),
            prefetch: task.prefetch,
            retry: task.retry,
            quorum: task.quorum,
            wire_format: WireFormat::of(task.json),
            location: sources.display(&task.location),
        },
    );
    let declaration = Declaration { prioritized: false, quorum: task.quorum, retry: task.retry, limit: task.limit };
    let queue = subscriber_queue(&task.queue, declaration, Consumer::Task(task.full_name.clone()), BTreeSet::new());
    manifest.queues.insert(task.queue.clone(), queue);
}

/// The queue that subscribers of `events` consume: a priority queue when any of them is prioritized, a quorum
/// queue when all of them ask for one, bound to each event's exchange with its routing key.
fn event_queue(name: &str, events: &[&model::Event]) -> Queue {
    // The contract's policy applies only when every event agrees on it, as in the generated event enums.
    let first = events.first().and_then(|e| e.retry);
    let declaration = Declaration {
        prioritized: events.iter().any(|e| e.priority.is_some()),
        quorum: events.iter().all(|e| e.quorum),
        retry: first.filter(|_| events.iter().all(|e| e.retry == first)),
        limit: crate::emit::events::group_limit(events),
    };
    let bindings = events
        .iter()
        .map(|e| {
            let key = if e.exchange.kind.uses_routing_key() { e.binding.clone() } else { String::new() };
            (e.exchange.name.clone(), key)
        })
        .collect();
    let consumer = Consumer::Events(events.iter().map(|e| e.full_name.clone()).collect());
    subscriber_queue(name, declaration, consumer, bindings)
}

/// What decides the arguments of a queue that subscribers or workers consume: the runtime's `subscriber_queue`
/// (`runtime/src/bus.rs`) takes the same facts.
#[derive(Debug, Clone, Copy)]
struct Declaration {
    /// Whether any message it takes is prioritized: a priority queue.
    prioritized: bool,
    /// Whether it is a quorum queue.
    quorum: bool,
    /// The contract's retry policy; `None`: the runtime's default.
    retry: Option<RetryPolicy>,
    /// Its length limit: the contract's, or for several events, the strictest when all of them set one.
    limit: Option<warren_topology::QueueLimit>,
}

/// A subscriber or work queue as the runtime declares it: durable, dead-lettering to `<queue>.dlq` through the
/// default exchange, a priority queue when prioritized, a quorum queue with a delivery limit just above the
/// retry policy's attempts when asked for one, limited in length when the contract says so, retrying through `<queue>.retry.<ms>`.
fn subscriber_queue(
    name: &str,
    declaration: Declaration,
    consumer: Consumer,
    bindings: BTreeSet<(String, String)>,
) -> Queue {
    let effective = declaration.retry.unwrap_or_default();
    let quorum = declaration.quorum.then_some(effective.max_attempts);
    let settings = QueueSettings::consumer(name, false, declaration.prioritized, quorum).with_limit(declaration.limit);
    Queue {
        consumer,
        durable: settings.durable,
        arguments: settings.arguments().into_iter().map(|(key, value)| (key.to_owned(), value)).collect(),
        bindings,
        dead_letter_queue: Some(warren_topology::dead_letter_queue(name)),
        retry: declaration.retry,
        retry_queues: effective.delays_ms().into_iter().map(|ms| warren_topology::retry_queue(name, ms)).collect(),
    }
}

fn label(field: &FieldDescriptor, proto2: bool) -> Label {
    if field.is_map() {
        return Label::Map;
    }
    if field.is_list() {
        return Label::Repeated;
    }
    if field.cardinality() == Cardinality::Required {
        return Label::Required;
    }
    match field.containing_oneof() {
        Some(oneof) if !oneof.is_synthetic() => Label::Oneof(oneof.name().to_owned()),
        Some(_) => Label::Optional,
        None if proto2 => Label::Optional,
        None => Label::Singular,
    }
}

/// `int64`, a message or enum's full name, or `map<K,V>`.
fn type_name(field: &FieldDescriptor) -> String {
    if let Kind::Message(entry) = field.kind()
        && field.is_map()
    {
        let key = entry.map_entry_key_field();
        let value = entry.map_entry_value_field();
        return format!("map<{},{}>", kind_name(&key.kind()), kind_name(&value.kind()));
    }
    kind_name(&field.kind())
}

fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Message(message) => message.full_name().to_owned(),
        Kind::Enum(descriptor) => descriptor.full_name().to_owned(),
        scalar => scalar_name(scalar).to_owned(),
    }
}

/// The proto name of a scalar kind, e.g. `int64`; empty for messages and enums.
pub(crate) fn scalar_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Double => "double",
        Kind::Float => "float",
        Kind::Int32 => "int32",
        Kind::Int64 => "int64",
        Kind::Uint32 => "uint32",
        Kind::Uint64 => "uint64",
        Kind::Sint32 => "sint32",
        Kind::Sint64 => "sint64",
        Kind::Fixed32 => "fixed32",
        Kind::Fixed64 => "fixed64",
        Kind::Sfixed32 => "sfixed32",
        Kind::Sfixed64 => "sfixed64",
        Kind::Bool => "bool",
        Kind::String => "string",
        Kind::Bytes => "bytes",
        Kind::Message(_) | Kind::Enum(_) => "",
    }
}
