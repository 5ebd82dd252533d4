//! The Markdown contract catalog: events with exchange and routing key, the topology (exchanges → queues with
//! their arguments), RPC services with methods, timeouts and errors, and every other message and enum, each
//! with its proto comment.

use askama::Template;

use super::{Docs, at, summary};
use crate::manifest::{Argument, Consumer, Label, Manifest, PRIORITIES};

#[derive(Template)]
#[template(path = "CATALOG.md", escape = "none")]
struct Catalog {
    header: String,
    events: Vec<EventDoc>,
    exchanges: Vec<ExchangeDoc>,
    rpc_queues: Vec<QueueRow>,
    services: Vec<ServiceDoc>,
    types: Vec<TypeDoc>,
}

struct EventDoc {
    name: String,
    anchor: String,
    summary: String,
    comment: String,
    exchange: String,
    kind: &'static str,
    routing_key: String,
    priority: String,
    location: String,
    queue: String,
    queue_type: &'static str,
    fields: Vec<FieldRow>,
}

struct FieldRow {
    number: String,
    name: String,
    r#type: String,
    label: String,
    comment: String,
}

struct ExchangeDoc {
    name: String,
    kind: &'static str,
    flags: String,
    comment: String,
    location: String,
    queues: Vec<QueueRow>,
}

struct QueueRow {
    name: String,
    consumes: String,
    bindings: String,
    arguments: String,
    retries: String,
}

struct ServiceDoc {
    name: String,
    comment: String,
    queue: String,
    default_timeout_ms: u32,
    location: String,
    methods: Vec<MethodRow>,
}

struct MethodRow {
    name: String,
    request: String,
    response: String,
    timeout_ms: u32,
    comment: String,
}

struct TypeDoc {
    kind: &'static str,
    name: String,
    comment: String,
    location: String,
    /// Fields (messages) or values (enums).
    rows: Vec<FieldRow>,
}

pub(super) fn render(docs: &Docs<'_>, generated: &str) -> askama::Result<String> {
    let manifest = docs.manifest;
    let events = manifest
        .events
        .iter()
        .map(|(name, event)| {
            let comment = docs.comment(name);
            EventDoc {
                name: name.clone(),
                anchor: anchor(name),
                summary: cell(&summary(&comment)),
                comment,
                exchange: event.exchange.clone(),
                kind: event.kind.as_str(),
                routing_key: if event.kind.uses_routing_key() {
                    format!("`{}`", event.routing_key)
                } else {
                    format!("— ({} exchange)", event.kind.as_str())
                },
                priority: event.priority.map_or("—".to_owned(), |p| {
                    format!("{} ({p})", PRIORITIES[usize::from(p.min(3))].to_uppercase())
                }),
                location: at(&event.location),
                queue: format!("{}.{name}", crate::manifest::GROUP),
                queue_type: if event.quorum { "quorum" } else { "classic" },
                fields: fields(docs, manifest, name),
            }
        })
        .collect();
    let exchanges = manifest
        .exchanges
        .iter()
        .map(|(name, exchange)| ExchangeDoc {
            name: name.clone(),
            kind: exchange.kind.as_str(),
            flags: match (exchange.durable, exchange.auto_delete) {
                (true, false) => "durable".to_owned(),
                (durable, auto_delete) => {
                    format!(
                        "{}{}",
                        if durable { "durable" } else { "transient" },
                        if auto_delete { ", auto-delete" } else { "" }
                    )
                }
            },
            comment: docs.exchange_comment(name),
            location: at(&exchange.location),
            queues: manifest
                .queues
                .iter()
                .filter(|(_, q)| q.bindings.iter().any(|(e, _)| e == name))
                .map(|(queue, q)| queue_row(queue, q))
                .collect(),
        })
        .collect();
    let rpc_queues = manifest
        .queues
        .iter()
        .filter(|(_, q)| matches!(q.consumer, Consumer::Service(_)))
        .map(|(queue, q)| queue_row(queue, q))
        .collect();
    let services = manifest
        .services
        .iter()
        .map(|(name, service)| ServiceDoc {
            name: name.clone(),
            comment: docs.comment(name),
            queue: service.queue.clone(),
            default_timeout_ms: service.default_timeout_ms,
            location: at(&service.location),
            methods: service
                .methods
                .iter()
                .map(|(method, m)| MethodRow {
                    name: method.clone(),
                    request: type_link(manifest, &m.request),
                    response: type_link(manifest, &m.response),
                    timeout_ms: m.timeout_ms,
                    comment: cell(&docs.method_comment(name, method)),
                })
                .collect(),
        })
        .collect();
    let mut types: Vec<TypeDoc> = manifest
        .messages
        .iter()
        .filter(|(name, _)| !manifest.events.contains_key(*name))
        .map(|(name, message)| TypeDoc {
            kind: "A message",
            name: name.clone(),
            comment: docs.comment(name),
            location: at(&message.location),
            rows: fields(docs, manifest, name),
        })
        .collect();
    types.extend(manifest.enums.iter().map(|(name, descriptor)| {
        let pool = &docs.contracts.pool;
        let values = pool.get_enum_by_name(name);
        TypeDoc {
            kind: "An enum",
            name: name.clone(),
            comment: docs.comment(name),
            location: at(&descriptor.location),
            rows: descriptor
                .values
                .iter()
                .map(|value| {
                    let comment = values
                        .as_ref()
                        .and_then(|e| e.get_value_by_name(&value.name))
                        .and_then(|v| docs.sources.get(v.parent_file().name()).map(|s| s.comment(v.path())))
                        .unwrap_or_default();
                    FieldRow {
                        number: value.number.to_string(),
                        name: format!("`{}`", value.name),
                        r#type: String::new(),
                        label: String::new(),
                        comment: cell(&comment),
                    }
                })
                .collect(),
        }
    }));
    types.sort_by(|a, b| a.name.cmp(&b.name));
    Catalog { header: format!("<!-- {generated} -->"), events, exchanges, rpc_queues, services, types }.render()
}

fn fields(docs: &Docs<'_>, manifest: &Manifest, message: &str) -> Vec<FieldRow> {
    let Some(entry) = manifest.messages.get(message) else { return Vec::new() };
    let descriptor = docs.contracts.pool.get_message_by_name(message);
    entry
        .fields
        .iter()
        .map(|(number, field)| {
            let comment = descriptor
                .as_ref()
                .and_then(|d| d.get_field(*number))
                .and_then(|f| docs.sources.get(f.parent_file().name()).map(|s| s.comment(f.path())))
                .unwrap_or_default();
            FieldRow {
                number: number.to_string(),
                name: format!("`{}`", field.name),
                r#type: type_link(manifest, &field.r#type),
                label: match &field.label {
                    Label::Singular => String::new(),
                    Label::Oneof(oneof) => format!("oneof `{oneof}`"),
                    other => format!("{other:?}").to_lowercase(),
                },
                comment: cell(&comment),
            }
        })
        .collect()
}

fn queue_row(name: &str, queue: &crate::manifest::Queue) -> QueueRow {
    let consumes = match &queue.consumer {
        Consumer::Events(events) if events.len() == 1 => {
            events.iter().map(|e| format!("[`{e}`](#{})", anchor(e))).collect::<Vec<_>>().join("")
        }
        Consumer::Events(events) => format!("{} events (the exchange's event enum)", events.len()),
        Consumer::Task(task) => format!("workers of [`{task}`](#{})", anchor(task)),
        Consumer::Service(service) => format!("server of [`{service}`](#{})", anchor(service)),
    };
    let bindings = if queue.bindings.is_empty() {
        "default exchange".to_owned()
    } else {
        queue
            .bindings
            .iter()
            .map(|(_, key)| if key.is_empty() { "(all)".to_owned() } else { format!("`{key}`") })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut arguments: Vec<String> = queue
        .arguments
        .iter()
        .map(|(key, value)| match value {
            Argument::Int(n) => format!("`{key}` {n}"),
            Argument::Str(s) => format!("`{key}` \"{s}\""),
        })
        .collect();
    arguments.insert(0, if queue.durable { "durable".to_owned() } else { "transient".to_owned() });
    let retries = match (&queue.consumer, &queue.retry) {
        (Consumer::Service(_), _) => "—".to_owned(),
        (_, policy) => {
            let attempts = policy.unwrap_or_default().max_attempts;
            let delays: Vec<String> =
                queue.retry_queues.iter().filter_map(|q| q.rsplit('.').next()).map(|ms| format!("{ms} ms")).collect();
            let source = if policy.is_some() { "contract" } else { "default" };
            let waits = if delays.is_empty() { String::new() } else { format!(", waits {}", delays.join(", ")) };
            format!("{attempts} attempts{waits} ({source})")
        }
    };
    QueueRow { name: format!("`{name}`"), consumes, bindings, arguments: cell(&arguments.join(", ")), retries }
}

/// A type for a table cell: linked when the catalog describes it.
fn type_link(manifest: &Manifest, r#type: &str) -> String {
    if manifest.messages.contains_key(r#type) || manifest.enums.contains_key(r#type) {
        format!("[`{type}`](#{})", anchor(r#type))
    } else {
        format!("`{}`", r#type.replace(',', ", "))
    }
}

/// GitHub's anchor for a heading that is `text`.
fn anchor(text: &str) -> String {
    text.to_lowercase().chars().filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_').collect()
}

/// Text that fits in one table cell.
fn cell(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ").replace('|', "\\|")
}
