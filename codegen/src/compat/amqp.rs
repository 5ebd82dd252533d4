//! AMQP rules: what running services declared on the broker, and what subscribers bound to, must not move;
//! events and tasks must keep being published and consumed where they were.

use std::collections::BTreeSet;

use super::{Break, Findings, or_waive};
use crate::compat::Rule;
use crate::manifest::{Argument, Consumer, PRIORITIES};

pub(super) fn check(f: &mut Findings<'_>) {
    exchanges(f);
    events(f);
    tasks(f);
    queues(f);
    rpc_queues(f);
}

fn exchanges(f: &mut Findings<'_>) {
    for (name, old) in &f.baseline.exchanges {
        let Some(new) = f.current.exchanges.get(name) else { continue };
        let waive = |rule| or_waive(rule, &format!("the file that declares exchange \"{name}\" (at its top)"));
        if old.kind != new.kind {
            f.report(
                Rule::ExchangeKindChanged,
                &new.location,
                name,
                format!("exchange \"{name}\" is now {} (was {})", new.kind.as_str(), old.kind.as_str()),
                format!(
                    "keep it {}; declare a new exchange with a new name for the new kind and move events to it \
                     one at a time; {}",
                    old.kind.as_str(),
                    waive(Rule::ExchangeKindChanged)
                ),
            );
        }
        if (old.durable, old.auto_delete) != (new.durable, new.auto_delete) {
            let flags = |d: bool, a: bool| format!("durable: {d}, auto_delete: {a}");
            f.report(
                Rule::ExchangeDurabilityChanged,
                &new.location,
                name,
                format!(
                    "exchange \"{name}\" is now declared with {} (was {})",
                    flags(new.durable, new.auto_delete),
                    flags(old.durable, old.auto_delete)
                ),
                format!(
                    "keep {}; or declare a new exchange under a new name; {}",
                    flags(old.durable, old.auto_delete),
                    waive(Rule::ExchangeDurabilityChanged)
                ),
            );
        }
    }
}

fn events(f: &mut Findings<'_>) {
    for (name, old) in &f.baseline.events {
        let Some(new) = f.current.events.get(name) else {
            // A removed message is `type-removed`'s; here the message stays but is no longer an event.
            if let Some(message) = f.current.messages.get(name) {
                f.report(
                    Rule::EventRemoved,
                    &message.location,
                    name,
                    format!(
                        "message {name} is no longer an event (it was published to exchange \"{}\"{})",
                        old.exchange,
                        if old.kind.uses_routing_key() {
                            format!(" with routing key \"{}\"", old.routing_key)
                        } else {
                            String::new()
                        }
                    ),
                    format!(
                        "keep its `(warren.event)` option until no service publishes or subscribes to it; {}",
                        or_waive(Rule::EventRemoved, &format!("message {name}"))
                    ),
                );
            }
            continue;
        };
        let waive = |rule| or_waive(rule, &format!("message {name}"));
        if old.exchange != new.exchange {
            f.report(
                Rule::EventExchangeChanged,
                &new.location,
                name,
                format!("event {name} is now published to exchange \"{}\" (was \"{}\")", new.exchange, old.exchange),
                format!(
                    "keep publishing it to \"{}\"; to move it, add a new event type on the new exchange and publish \
                     both until every subscriber moved; {}",
                    old.exchange,
                    waive(Rule::EventExchangeChanged)
                ),
            );
        }
        if old.routing_key != new.routing_key && new.kind.uses_routing_key() {
            f.report(
                Rule::RoutingKeyChanged,
                &new.location,
                name,
                format!(
                    "event {name} is now published with routing key \"{}\" (was \"{}\")",
                    new.routing_key, old.routing_key
                ),
                format!(
                    "keep routing key \"{}\"; to change it, add a new event type with the new key and publish both \
                     until every subscriber moved; {}",
                    old.routing_key,
                    waive(Rule::RoutingKeyChanged)
                ),
            );
        }
    }
}

fn tasks(f: &mut Findings<'_>) {
    for (name, old) in &f.baseline.tasks {
        let waive = |rule| or_waive(rule, &format!("message {name}"));
        let Some(new) = f.current.tasks.get(name) else {
            // A removed message is `type-removed`'s; here the message stays but is no longer a task.
            if let Some(message) = f.current.messages.get(name) {
                f.report(
                    Rule::TaskRemoved,
                    &message.location,
                    name,
                    format!("message {name} is no longer a task (it was put on work queue \"{}\")", old.queue),
                    format!(
                        "keep its `(warren.task)` option until no service sends it and queue \"{}\" is empty; {}",
                        old.queue,
                        waive(Rule::TaskRemoved)
                    ),
                );
            }
            continue;
        };
        if old.queue != new.queue {
            f.report(
                Rule::TaskQueueRenamed,
                &new.location,
                name,
                format!("task {name} is now put on work queue \"{}\" (was \"{}\")", new.queue, old.queue),
                format!(
                    "keep queue \"{}\"; to move, add a new task type on the new queue, send it instead, and keep \
                     workers on the old queue until it is empty; {}",
                    old.queue,
                    waive(Rule::TaskQueueRenamed)
                ),
            );
        }
    }
}

fn queues(f: &mut Findings<'_>) {
    for (name, old) in &f.baseline.queues {
        let Some(new) = f.current.queues.get(name) else { continue };
        if (old.durable, &old.arguments) == (new.durable, &new.arguments) {
            continue;
        }
        let mut changes = Vec::new();
        if old.durable != new.durable {
            changes.push(format!("durable {} → {}", old.durable, new.durable));
        }
        let keys: BTreeSet<&String> = old.arguments.keys().chain(new.arguments.keys()).collect();
        let mut limit_changed = false;
        for key in keys {
            let (before, after) = (old.arguments.get(key), new.arguments.get(key));
            if before != after {
                changes.push(format!("{key} {} → {}", argument(before), argument(after)));
                limit_changed |= LIMIT_ARGUMENTS.contains(&key.as_str());
            }
        }
        let (location, subjects, mut cause, item) = match &new.consumer {
            Consumer::Events(events) => {
                // Point at the event whose priority changed, if one did: that is what changes the arguments.
                let changed = events.iter().find(|e| {
                    let before = f.baseline.events.get(*e).map(|e| e.priority.is_some());
                    let after = f.current.events.get(*e).map(|e| e.priority.is_some());
                    before.is_some() && before != after
                });
                let event = changed.or(events.first());
                let location = event.and_then(|e| f.current.events.get(e)).map(|e| e.location.clone());
                let cause = changed.map(|e| priority_change(f, e)).unwrap_or_default();
                let item = match event {
                    Some(event) if changed.is_some() || events.len() == 1 => format!("message {event}"),
                    _ => "the message of one of its events".to_owned(),
                };
                (location, events.iter().cloned().collect::<Vec<_>>(), cause, item)
            }
            Consumer::Task(task) => {
                let location = f.current.tasks.get(task).map(|t| t.location.clone());
                (location, vec![task.clone()], String::new(), format!("message {task}"))
            }
            Consumer::Service(service) => {
                let location = f.current.services.get(service).map(|s| s.location.clone());
                (location, vec![service.clone()], String::new(), format!("service {service}"))
            }
        };
        let Some(location) = location else { continue };
        if limit_changed && cause.is_empty() {
            cause = ", because the contract's queue limit changed".to_owned();
        }
        let policy = if limit_changed {
            "; a running queue's limit can instead be set by a RabbitMQ policy (`max-length`, `max-length-bytes`, \
             `overflow` `reject-publish`; the smaller of policy and argument applies)"
        } else {
            ""
        };
        f.breaks.push(Break {
            rule: Rule::QueueArgumentsChanged,
            location,
            message: format!("queue {name} would be declared with {}{cause}", changes.join(", ")),
            fix: format!(
                "keep the queue's arguments as they were{}; or, when deploying, delete the existing queues (they \
                 lose their messages) so they are declared anew{policy}; {}",
                if cause.contains("priority") { " (keep the priority set, or unset)" } else { "" },
                or_waive(Rule::QueueArgumentsChanged, &item)
            ),
            subjects,
            waived: None,
        });
    }
}

/// The arguments a contract's queue limit sets.
const LIMIT_ARGUMENTS: [&str; 3] = ["x-max-length", "x-max-length-bytes", "x-overflow"];

fn priority_change(f: &Findings<'_>, event: &str) -> String {
    let name = |p: Option<u8>| p.map_or("none", |p| PRIORITIES[usize::from(p.min(3))]);
    let before = f.baseline.events.get(event).and_then(|e| e.priority);
    let after = f.current.events.get(event).and_then(|e| e.priority);
    format!(", because event {event}'s priority changed from {} to {}", name(before), name(after))
}

fn argument(value: Option<&Argument>) -> String {
    match value {
        None => "unset".to_owned(),
        Some(Argument::Int(n)) => n.to_string(),
        Some(Argument::Str(s)) => format!("{s:?}"),
    }
}

fn rpc_queues(f: &mut Findings<'_>) {
    for (name, old) in &f.baseline.services {
        let Some(new) = f.current.services.get(name) else { continue };
        if old.queue != new.queue {
            f.report(
                Rule::RpcQueueRenamed,
                &new.location,
                name,
                format!("service {name} now consumes queue \"{}\" (was \"{}\")", new.queue, old.queue),
                format!(
                    "keep queue \"{}\"; to move, serve both queues until every caller moved; {}",
                    old.queue,
                    or_waive(Rule::RpcQueueRenamed, &format!("service {name}"))
                ),
            );
        }
    }
}
