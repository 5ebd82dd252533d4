//! `warren list` and `warren describe`: the contracts, from the catalog alone (no broker).

use prost_reflect::{Cardinality, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Value, json};
use warren_reflect::{Catalog, Item, RetryPolicy};

use crate::Failure;
use crate::output::Output;

/// What `warren list` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum What {
    Events,
    Tasks,
    Services,
    Exchanges,
}

pub(crate) fn list(catalog: &Catalog, what: Option<What>, out: &Output) -> Result<(), Failure> {
    let all = what.is_none();
    let mut printed = false;
    let mut section = |title: &str, columns: &[&str], rows: Vec<Vec<String>>| {
        if !out.is_json() && printed {
            crate::output::say!();
        }
        if !out.is_json() && all {
            crate::output::say!("# {title}");
        }
        out.table(columns, &rows);
        printed = true;
    };
    if all || what == Some(What::Events) {
        let rows = catalog
            .events()
            .map(|e| vec![e.full_name.clone(), e.exchange.name.clone(), e.routing_key.clone(), summary(&e.doc)])
            .collect();
        section("events", &["event", "exchange", "routing_key", "doc"], rows);
    }
    if all || what == Some(What::Tasks) {
        let rows = catalog.tasks().map(|t| vec![t.full_name.clone(), t.queue.clone(), summary(&t.doc)]).collect();
        section("tasks", &["task", "queue", "doc"], rows);
    }
    if all || what == Some(What::Services) {
        let rows = catalog
            .services()
            .flat_map(|s| {
                s.methods.iter().map(move |m| {
                    vec![format!("{}/{}", s.full_name, m.name), s.queue.clone(), m.input.clone(), m.output.clone()]
                })
            })
            .collect();
        section("services", &["method", "queue", "request", "response"], rows);
    }
    if all || what == Some(What::Exchanges) {
        let rows = catalog
            .exchanges()
            .map(|x| {
                let events = catalog.events().filter(|e| e.exchange.name == x.name).count();
                vec![x.name.clone(), format!("{:?}", x.kind).to_lowercase(), events.to_string()]
            })
            .collect();
        section("exchanges", &["exchange", "kind", "events"], rows);
    }
    Ok(())
}

pub(crate) fn describe(catalog: &Catalog, name: &str, out: &Output) -> Result<(), Failure> {
    let described = match catalog.item(name)? {
        Item::Event(e) => json!({
            "event": e.full_name,
            "doc": e.doc,
            "exchange": e.exchange.name,
            "exchange_kind": format!("{:?}", e.exchange.kind).to_lowercase(),
            "routing_key": e.routing_key,
            "binding": e.binding,
            "format": if e.json { "json" } else { "protobuf" },
            "priority": e.priority.map(priority_name),
            "retry": e.retry.map(retry),
            "quorum": e.quorum,
            "fields": fields(catalog, &catalog.message(&e.full_name)?),
        }),
        Item::Task(t) => json!({
            "task": t.full_name,
            "doc": t.doc,
            "queue": t.queue,
            "dead_letter_queue": warren_reflect::dead_letter_queue(&t.queue),
            "prefetch": t.prefetch,
            "format": if t.json { "json" } else { "protobuf" },
            "retry": t.retry.map(retry),
            "quorum": t.quorum,
            "fields": fields(catalog, &catalog.message(&t.full_name)?),
        }),
        Item::Service(s) => json!({
            "service": s.full_name,
            "doc": s.doc,
            "queue": s.queue,
            "default_timeout_ms": s.default_timeout_ms,
            "methods": s.methods.iter().map(|m| method(catalog, s, m)).collect::<Result<Vec<_>, Failure>>()?,
        }),
        Item::Method(s, m) => method(catalog, s, m)?,
        Item::Exchange(x) => json!({
            "exchange": x.name,
            "kind": format!("{:?}", x.kind).to_lowercase(),
            "durable": x.durable,
            "auto_delete": x.auto_delete,
            "events": catalog
                .events()
                .filter(|e| e.exchange.name == x.name)
                .map(|e| json!({"event": e.full_name, "routing_key": e.routing_key}))
                .collect::<Vec<_>>(),
        }),
        Item::Message(m) => json!({ "message": m.full_name(), "fields": fields(catalog, &m) }),
    };
    out.document(&described);
    Ok(())
}

fn method(catalog: &Catalog, service: &warren_reflect::Service, m: &warren_reflect::Method) -> Result<Value, Failure> {
    let errors = match &m.errors {
        Some(set) => {
            let message = catalog.message(&set.full_name)?;
            json!({ "type": set.full_name, "cases": fields(catalog, &message) })
        }
        None => Value::Null,
    };
    Ok(json!({
        "method": format!("{}/{}", service.full_name, m.name),
        "doc": m.doc,
        "queue": service.queue,
        "timeout_ms": m.timeout_ms.unwrap_or(service.default_timeout_ms),
        "request": { "type": m.input, "fields": fields(catalog, &catalog.message(&m.input)?) },
        "response": { "type": m.output, "fields": fields(catalog, &catalog.message(&m.output)?) },
        "errors": errors,
    }))
}

/// Each field: its proto and JSON names, type, and the contract's rules.
fn fields(catalog: &Catalog, message: &MessageDescriptor) -> Vec<Value> {
    message
        .fields()
        .map(|field| {
            let rules = catalog.rules(message.full_name(), field.name());
            json!({
                "name": field.name(),
                "json": field.json_name(),
                "type": type_name(&field),
                "rules": rules,
            })
        })
        .collect()
}

fn type_name(field: &FieldDescriptor) -> String {
    let base = match field.kind() {
        Kind::Message(m) => m.full_name().to_owned(),
        Kind::Enum(e) => e.full_name().to_owned(),
        kind => format!("{kind:?}").to_lowercase(),
    };
    if field.is_map() {
        return format!("map<{base}>");
    }
    match field.cardinality() {
        Cardinality::Repeated => format!("repeated {base}"),
        _ if field.supports_presence() && !matches!(field.kind(), Kind::Message(_)) => format!("optional {base}"),
        _ => base,
    }
}

fn retry(policy: RetryPolicy) -> Value {
    json!({ "max_attempts": policy.max_attempts, "delays_ms": policy.delays_ms() })
}

fn priority_name(level: u8) -> &'static str {
    ["low", "normal", "high", "critical"].get(usize::from(level)).copied().unwrap_or("critical")
}

/// The first sentence of a doc comment, on one line: up to a full stop followed by a capital letter.
fn summary(doc: &str) -> String {
    let line = doc.split("\n\n").next().unwrap_or_default().replace('\n', " ");
    let bytes = line.as_bytes();
    let end = (0..bytes.len().saturating_sub(2))
        .find(|&i| bytes[i] == b'.' && bytes[i + 1] == b' ' && bytes[i + 2].is_ascii_uppercase())
        .map_or(line.len(), |i| i + 1);
    line[..end].trim().to_owned()
}
