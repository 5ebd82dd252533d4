//! Checks across items: routing keys that must be told apart, subscriptions that must match an event, names
//! that must be unique among all packages or must not collide with what Warren generates.
//!
//! Each check reports every problem it finds and goes on.

use std::collections::BTreeMap;

use prost_reflect::DescriptorPool;

use super::{Package, keys};
use crate::error::{Error, Problems};

/// Runs every check across the items of `packages` (read, and their events grouped by exchange).
pub(super) fn check(packages: &[Package], pool: &DescriptorPool, problems: &mut Problems) {
    for package in packages {
        keys::check_distinct(&package.events, problems);
        for subscription in &package.subscriptions {
            problems.keep(keys::check_subscription(subscription, &package.groups, &package.events));
        }
        check_names(package, pool, problems);
        check_generated_names(package, pool, problems);
    }
    check_queues(packages, problems);
}

/// Work queues and service queues are shared by name on the broker: two declarations of one name would fight.
fn check_queues(packages: &[Package], problems: &mut Problems) {
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    let tasks = packages.iter().flat_map(|p| &p.tasks).map(|t| (t.queue.as_str(), t.full_name.as_str(), &t.location));
    let services =
        packages.iter().flat_map(|p| &p.services).map(|s| (s.queue.as_str(), s.full_name.as_str(), &s.location));
    for (queue, owner, location) in tasks.chain(services) {
        match seen.get(queue) {
            Some(first) => problems.push(Error::contract(
                location.clone(),
                format!("{owner} uses queue \"{queue}\", which {first} already uses"),
                "give each task and service its own queue",
            )),
            None => {
                seen.insert(queue, owner);
            }
        }
    }
}

/// Generated names (event enums, clients, servers) must not collide with message or enum names.
fn check_names(package: &Package, pool: &DescriptorPool, problems: &mut Problems) {
    let taken = |name: &str| {
        let full = if package.name.is_empty() { name.to_owned() } else { format!("{}.{name}", package.name) };
        pool.get_message_by_name(&full).is_some() || pool.get_enum_by_name(&full).is_some()
    };
    for group in &package.groups {
        if taken(&group.rust_name) {
            problems.push(Error::contract(
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
                problems.push(Error::contract(
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
}

/// What Warren generates for a package must be Rust that compiles: one enum per exchange (a Rust name, distinct),
/// one variant per event of an exchange (distinct), one `subscribe_<name>` per subscription (distinct across the
/// package's files), and no method of a message's own (`subscribe`, `enqueue`, `worker`) that prost also
/// generates for one of its fields. Each would otherwise surface as a compile error in generated code.
fn check_generated_names(package: &Package, pool: &DescriptorPool, problems: &mut Problems) {
    let mut enums: BTreeMap<&str, &str> = BTreeMap::new();
    for group in &package.groups {
        let (rust_name, exchange) = (group.rust_name.as_str(), group.exchange.name.as_str());
        let location = &group.exchange.location;
        if !rust_name.starts_with(|c: char| c.is_ascii_alphabetic()) {
            problems.push(Error::contract(
                location.clone(),
                format!("exchange \"{exchange}\" would name its generated enum {rust_name}, which is not a Rust name"),
                "start the exchange's name with a letter",
            ));
        } else if let Some(first) = enums.insert(rust_name, exchange) {
            problems.push(Error::contract(
                location.clone(),
                format!("exchanges \"{first}\" and \"{exchange}\" would both name their generated enum {rust_name}"),
                "rename one of the exchanges",
            ));
        }
        let mut variants: BTreeMap<&str, &str> = BTreeMap::new();
        for event in group.events.iter().map(|&index| &package.events[index]) {
            if let Some(first) = variants.insert(event.variant.as_str(), event.full_name.as_str()) {
                problems.push(Error::contract(
                    event.location.clone(),
                    format!(
                        "events {first} and {} would both be the variant {} of {rust_name}, the enum of exchange \"{exchange}\"",
                        event.full_name, event.variant
                    ),
                    "rename one of the messages",
                ));
            }
        }
    }
    let mut subscriptions: BTreeMap<&str, &crate::error::Location> = BTreeMap::new();
    for subscription in &package.subscriptions {
        match subscriptions.get(subscription.name.as_str()) {
            // The same file reports its own duplicates as it is read.
            Some(first) if first.file != subscription.location.file => problems.push(Error::contract(
                subscription.location.clone(),
                format!(
                    "subscription \"{}\" is declared in {} too: package {} would get two functions {}",
                    subscription.name,
                    first.file.display(),
                    package.name,
                    subscription.rust_name
                ),
                "give each subscription of a package its own name",
            )),
            Some(_) => {}
            None => {
                subscriptions.insert(&subscription.name, &subscription.location);
            }
        }
    }
    let events = package.events.iter().map(|e| (e.full_name.as_str(), &e.location, "event", &["subscribe"][..]));
    let tasks = package.tasks.iter().map(|t| (t.full_name.as_str(), &t.location, "task", &["enqueue", "worker"][..]));
    for (full_name, location, what, methods) in events.chain(tasks) {
        let Some(message) = pool.get_message_by_name(full_name) else { continue };
        for field in message.fields().filter(|field| methods.contains(&field.name())) {
            // prost generates a getter of the field's name for an enum field and for one that may be unset.
            let optional = field.supports_presence()
                && field.cardinality() == prost_reflect::Cardinality::Optional
                && !matches!(field.kind(), prost_reflect::Kind::Message(_));
            if matches!(field.kind(), prost_reflect::Kind::Enum(_)) || optional {
                problems.push(Error::contract(
                    location.clone(),
                    format!(
                        "field `{}` of {what} {full_name}: prost generates a method {}() for it, and Warren one of the same name for the {what}",
                        field.name(),
                        field.name()
                    ),
                    "rename the field",
                ));
            }
        }
    }
}
