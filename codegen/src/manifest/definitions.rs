//! RabbitMQ definitions from the contracts: the exchanges, queues (with their arguments) and bindings Warren
//! would declare, as JSON that `rabbitmqctl import_definitions` (or the management UI) loads. For deployments
//! whose services may not declare topology: an operator imports them, and the services run with
//! `TopologyMode::Verify` as users without `configure` permission (docs/security.md).
//!
//! Everything comes from the manifest, whose queues a test proves are what the runtime declares
//! (`tests/tests/topology_agrees.rs`), and from `warren-topology`'s rules for what the manifest leaves to the
//! runtime: the delay queues' settings and the registry queue.

use serde_json::{Map, Value, json};
use warren_topology::{Argument, QueueSettings, REGISTRY_QUEUE, dead_letter_queue, retry_queue};

use super::{Consumer, GROUP, Manifest, Queue};

/// What [`Manifest::definitions`] writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DefinitionsOptions {
    /// The vhost every exchange, queue and binding goes in (`rabbitmqctl import_definitions` needs one on
    /// each); `/` when `None`. The vhost itself is not in the definitions: create it first (`add_vhost`).
    pub vhost: Option<String>,
    /// The subscriber groups whose queues to include: a subscriber's queue is `<group>.<event or exchange>`,
    /// so events' queues are written once per group, and not at all without one. Work queues (tasks), RPC
    /// service queues and the registry are always written.
    pub groups: Vec<String>,
}

/// The longest subscriber group [`DefinitionsOptions::group`] takes: room for the longest event name and the
/// delay queues' suffix under AMQP's 255 bytes.
pub const MAX_GROUP_LEN: usize = 64;

/// Why `group` cannot name subscriber queues in definitions, if it cannot: empty, or over [`MAX_GROUP_LEN`].
pub fn group_problem(group: &str) -> Option<String> {
    (group.is_empty() || group.len() > MAX_GROUP_LEN).then(|| {
        let shown: String = group.chars().take(MAX_GROUP_LEN).collect();
        format!("group {shown:?}: give a name of 1 to {MAX_GROUP_LEN} bytes")
    })
}

impl DefinitionsOptions {
    /// Definitions for vhost `/` and no subscriber group.
    pub fn new() -> Self {
        DefinitionsOptions::default()
    }

    /// Puts everything in `vhost`.
    pub fn vhost(mut self, vhost: impl Into<String>) -> Self {
        self.vhost = Some(vhost.into());
        self
    }

    /// Adds the queues of subscriber group `group`.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.groups.push(group.into());
        self
    }
}

impl Manifest {
    /// RabbitMQ definitions (JSON: `exchanges`, `queues`, `bindings`, each object with its `vhost`) of every
    /// exchange, work queue, RPC queue and the registry, and of the subscriber queues of `options.groups`,
    /// each consumer queue with its dead-letter queue and the delay queues (`<queue>.retry.<ms>`) of the
    /// contract's retry policy (the runtime's default where the contract has none). Sorted by name, so the
    /// output is stable. A subscriber or worker whose code chooses another retry policy (or a handler that
    /// retries after its own delay) needs delay queues these definitions do not have.
    pub fn definitions(&self, options: &DefinitionsOptions) -> String {
        let vhost = options.vhost.as_deref().unwrap_or("/");
        let exchanges: Vec<Value> = self
            .exchanges
            .iter()
            .map(|(name, exchange)| {
                json!({
                    "name": name,
                    "vhost": vhost,
                    "type": exchange.kind.as_str(),
                    "durable": exchange.durable,
                    "auto_delete": exchange.auto_delete,
                    "internal": false,
                    "arguments": {},
                })
            })
            .collect();
        let mut queues: Vec<(String, bool, Map<String, Value>)> = Vec::new();
        let mut bindings: Vec<(String, String, String)> = Vec::new();
        let plain = |name: &str| (name.to_owned(), true, arguments(&QueueSettings::plain(false).arguments()));
        queues.push(plain(REGISTRY_QUEUE));
        for (template, queue) in &self.queues {
            match &queue.consumer {
                Consumer::Service(_) => queues.push(plain(template)),
                Consumer::Task(_) => consumer_queue(template, queue, "", &mut queues, &mut bindings),
                Consumer::Events(_) => {
                    for group in &options.groups {
                        consumer_queue(template, queue, group, &mut queues, &mut bindings);
                    }
                }
            }
        }
        queues.sort_by(|a, b| a.0.cmp(&b.0));
        queues.dedup_by(|a, b| a.0 == b.0);
        bindings.sort();
        bindings.dedup();
        let queues: Vec<Value> = queues
            .into_iter()
            .map(|(name, durable, arguments)| {
                json!({ "name": name, "vhost": vhost, "durable": durable, "auto_delete": false, "arguments": arguments })
            })
            .collect();
        let bindings: Vec<Value> = bindings
            .into_iter()
            .map(|(exchange, queue, key)| {
                json!({
                    "source": exchange,
                    "vhost": vhost,
                    "destination": queue,
                    "destination_type": "queue",
                    "routing_key": key,
                    "arguments": {},
                })
            })
            .collect();
        let definitions = json!({ "exchanges": exchanges, "queues": queues, "bindings": bindings });
        let mut text = serde_json::to_string_pretty(&definitions).expect("JSON values always serialize");
        text.push('\n');
        text
    }
}

/// A consumer queue of `template` (with `group` for [`GROUP`]), its dead-letter queue, its delay queues and
/// its bindings.
fn consumer_queue(
    template: &str,
    queue: &Queue,
    group: &str,
    queues: &mut Vec<(String, bool, Map<String, Value>)>,
    bindings: &mut Vec<(String, String, String)>,
) {
    let name = template.replace(GROUP, group);
    let own: Vec<(&str, Argument)> = queue
        .arguments
        .iter()
        .map(|(key, value)| match value {
            Argument::Str(text) => (key.as_str(), Argument::Str(text.replace(GROUP, group))),
            number => (key.as_str(), number.clone()),
        })
        .collect();
    // Its side queues are quorum queues when it is one (`QueueSettings::dead_letter`), as the runtime declares them.
    let mut consumer = QueueSettings::plain(false);
    consumer.quorum = own.iter().any(|(key, value)| *key == "x-queue-type" && *value == Argument::Str("quorum".into()));
    queues.push((name.clone(), queue.durable, arguments(&own)));
    if queue.dead_letter_queue.is_some() {
        let dead_letter = QueueSettings::dead_letter(&consumer);
        queues.push((dead_letter_queue(&name), true, arguments(&dead_letter.arguments())));
    }
    for ms in queue.retry.unwrap_or_default().delays_ms() {
        let delay = QueueSettings::retry_delay(&name, ms, false, consumer.quorum);
        queues.push((retry_queue(&name, ms), delay.durable, arguments(&delay.arguments())));
    }
    for (exchange, key) in &queue.bindings {
        bindings.push((exchange.clone(), name.clone(), key.clone()));
    }
}

fn arguments(arguments: &[(&str, Argument)]) -> Map<String, Value> {
    arguments
        .iter()
        .map(|(key, value)| {
            let value = match value {
                Argument::Int(n) => Value::from(*n),
                Argument::Str(s) => Value::from(s.as_str()),
            };
            ((*key).to_owned(), value)
        })
        .collect()
}
