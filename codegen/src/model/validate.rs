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
