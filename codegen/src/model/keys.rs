//! Routing keys: templates such as `order.{region}.created`, checks that keys on one exchange cannot be
//! confused, and subscriptions declared in contracts, whose patterns must be able to match an event.

use prost_reflect::{Kind, MessageDescriptor};

use super::{Event, EventGroup, Exchange, ExchangeKind};
use crate::error::{Error, Location, Problems, Result};
use crate::ident;

/// One word of a routing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// Fixed text.
    Literal(String),
    /// Filled from a field at publish time.
    Field {
        /// Proto name of the field.
        name: String,
        /// Rust name of the field.
        rust_name: String,
        /// How its value becomes a word.
        kind: KeyKind,
    },
}

/// How a template field's value becomes a routing-key word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// A string, checked at publish time.
    Text,
    /// An integer, as decimal digits.
    Integer,
    /// `true` or `false`.
    Bool,
    /// The value's proto name without the enum's prefix, in lower case.
    Enum {
        /// The enum's Rust type.
        path: String,
        /// The prefix its values' names share by convention, e.g. `NOTIFICATION_TYPE_`.
        prefix: String,
    },
}

/// Parses `key` of `message`: each word `{field}` must name a singular scalar or enum field. Returns the
/// parts (one per word) and the binding (each template as `*`).
pub(crate) fn parse_template(
    key: &str,
    message: &MessageDescriptor,
    exchange: &Exchange,
    location: &Location,
) -> Result<(Vec<KeyPart>, String)> {
    let full_name = message.full_name();
    let mut parts = Vec::new();
    for word in key.split('.') {
        let Some(field_name) = word.strip_prefix('{').and_then(|w| w.strip_suffix('}')) else {
            if word.contains(['{', '}']) {
                return Err(Error::contract(
                    location.clone(),
                    format!(
                        "event {full_name} has routing key \"{key}\", whose word \"{word}\" mixes a template with text"
                    ),
                    "a template fills a whole word: write e.g. \"order.{region}.created\", not \"order.eu-{region}\"",
                ));
            }
            parts.push(KeyPart::Literal(word.to_owned()));
            continue;
        };
        let Some(field) = message.get_field_by_name(field_name) else {
            let names: Vec<String> = message.fields().map(|f| f.name().to_owned()).collect();
            return Err(Error::contract(
                location.clone(),
                format!(
                    "event {full_name} has routing key \"{key}\", but it has no field \"{field_name}\" (fields: {})",
                    names.join(", ")
                ),
                "name one of the event's fields in the template, or fix the field name",
            ));
        };
        let unfit = |why: &str| {
            Err(Error::contract(
                location.clone(),
                format!("event {full_name} has routing key \"{key}\", but field \"{field_name}\" {why}"),
                "template a singular string, integer, bool or enum field (not optional, repeated, a map, a message or in a oneof)",
            ))
        };
        if field.is_list() || field.is_map() {
            return unfit("holds several values");
        }
        // A oneof member, a proto3 `optional`, or any proto2 `optional` (which prost makes an `Option` with no
        // synthetic oneof): each may be unset.
        let holds_message = matches!(field.kind(), Kind::Message(_));
        let optional = field.supports_presence() && field.cardinality() == prost_reflect::Cardinality::Optional;
        if field.containing_oneof().is_some() || (optional && !holds_message) {
            return unfit("may be unset (it is optional or in a oneof)");
        }
        let kind = match field.kind() {
            Kind::String => KeyKind::Text,
            Kind::Bool => KeyKind::Bool,
            Kind::Int32
            | Kind::Sint32
            | Kind::Sfixed32
            | Kind::Int64
            | Kind::Sint64
            | Kind::Sfixed64
            | Kind::Uint32
            | Kind::Fixed32
            | Kind::Uint64
            | Kind::Fixed64 => KeyKind::Integer,
            Kind::Enum(e) => KeyKind::Enum {
                path: ident::rust_enum_path(message.package_name(), &e),
                prefix: format!("{}_", heck::ToShoutySnakeCase::to_shouty_snake_case(e.name())),
            },
            Kind::Float | Kind::Double => return unfit("is a floating-point number, whose text may contain a dot"),
            Kind::Bytes => return unfit("is bytes, which have no text form"),
            Kind::Message(_) => return unfit("is a message"),
        };
        parts.push(KeyPart::Field { name: field_name.to_owned(), rust_name: ident::field_name(field_name), kind });
    }
    let templated = parts.iter().any(|p| matches!(p, KeyPart::Field { .. }));
    if templated && exchange.kind != ExchangeKind::Topic {
        return Err(Error::contract(
            location.clone(),
            format!(
                "event {full_name} has a templated routing key \"{key}\" on {} exchange \"{}\"",
                exchange.kind.as_str(),
                exchange.name
            ),
            "templates need a topic exchange (subscribers bind with `*` in the template's place)",
        ));
    }
    let binding = parts
        .iter()
        .map(|p| match p {
            KeyPart::Literal(word) => word.as_str(),
            KeyPart::Field { .. } => "*",
        })
        .collect::<Vec<_>>()
        .join(".");
    Ok((parts, binding))
}

/// Two events on one exchange whose keys some routing key matches both could not be told apart by bindings.
/// Each event that clashes with an earlier one is reported once, naming the first it clashes with.
pub(crate) fn check_distinct(events: &[Event], problems: &mut Problems) {
    let keyed: Vec<&Event> = events.iter().filter(|e| e.exchange.kind.uses_routing_key()).collect();
    for (i, event) in keyed.iter().enumerate() {
        let clash = keyed[..i].iter().find(|first| {
            first.exchange.name == event.exchange.name
                && match event.exchange.kind {
                    ExchangeKind::Topic => warren_topology::topic::overlaps(&first.binding, &event.binding),
                    _ => first.binding == event.binding,
                }
        });
        if let Some(first) = clash {
            let what = if first.routing_key == event.routing_key {
                format!("both use routing key \"{}\"", event.routing_key)
            } else {
                format!(
                    "have routing keys \"{}\" and \"{}\", which some key matches both",
                    first.routing_key, event.routing_key
                )
            };
            problems.push(Error::contract(
                event.location.clone(),
                format!(
                    "events {} and {} {what} on exchange \"{}\"",
                    first.full_name, event.full_name, event.exchange.name
                ),
                "give each event its own routing key; subscribers bind by key and could not tell them apart",
            ));
        }
    }
}

/// A binding pattern declared in a contract with `option (warren.subscription)`.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Its name, e.g. `user_activity`.
    pub name: String,
    /// Name of the generated function, e.g. `subscribe_user_activity`.
    pub rust_name: String,
    /// The exchange.
    pub exchange: String,
    /// The binding pattern.
    pub pattern: String,
    /// Its proto comment.
    pub doc: String,
    /// Where it is declared.
    pub location: Location,
}

/// Checks a declared subscription against the package's events on its exchange.
pub(crate) fn check_subscription(subscription: &Subscription, groups: &[EventGroup], events: &[Event]) -> Result<()> {
    let fail = |message: String, help: &str| Err(Error::contract(subscription.location.clone(), message, help));
    let name = &subscription.name;
    if name.is_empty() || ident::field_name(name) != *name || name.starts_with("r#") {
        return fail(
            format!("subscription \"{name}\" needs a snake_case name that is not a Rust keyword"),
            "name it like `user_activity`",
        );
    }
    let Some(group) = groups.iter().find(|g| g.exchange.name == subscription.exchange) else {
        return fail(
            format!(
                "subscription \"{name}\" is on exchange \"{}\", which no event of this package is published to",
                subscription.exchange
            ),
            "name the exchange of this package's events, or declare the subscription in the package that has them",
        );
    };
    let pattern = &subscription.pattern;
    let kind = group.exchange.kind;
    if !kind.uses_routing_key() {
        return fail(
            format!(
                "subscription \"{name}\" has a pattern, but exchange \"{}\" is {}",
                group.exchange.name,
                kind.as_str()
            ),
            "drop the subscription: every subscriber of a fanout or headers exchange gets every event",
        );
    }
    if let Some(problem) = warren_topology::topic::pattern_problem(pattern) {
        return fail(format!("subscription \"{name}\" has a bad pattern: {problem}"), "write words separated by dots");
    }
    let keys: Vec<&Event> = group.events.iter().map(|i| &events[*i]).collect();
    let matches = |event: &&Event| match kind {
        ExchangeKind::Topic => warren_topology::topic::overlaps(pattern, &event.binding),
        _ => *pattern == event.binding,
    };
    if !keys.iter().any(matches) {
        let listed: Vec<&str> = keys.iter().map(|e| e.routing_key.as_str()).collect();
        return fail(
            format!(
                "subscription \"{name}\" has pattern \"{pattern}\", which can never match an event on exchange \"{}\" (routing keys: {})",
                group.exchange.name,
                listed.join(", ")
            ),
            if kind == ExchangeKind::Direct {
                "a direct exchange matches whole keys: use one of the routing keys"
            } else {
                "fix the pattern: `*` matches one word, `#` zero or more"
            },
        );
    }
    Ok(())
}
