//! Who serves what, live: the AT_QUEUE registry without a registry process. Every RPC server announces itself
//! when it starts, again every [`BusConfig::registry_heartbeat`](crate::BusConfig::registry_heartbeat), and
//! says goodbye when it stops, with a message in the queue [`REGISTRY_QUEUE`] that expires after three
//! heartbeats. [`Bus::services`] reads that queue without taking anything from it (the messages go back), and
//! keeps each instance's latest word: instances that said goodbye, or missed three heartbeats, are gone.
//!
//! The announcements are JSON (type [`ANNOUNCEMENT_TYPE`]), readable by any client:
//! `{"event": "hello" | "heartbeat" | "goodbye", "service", "queue", "instance", "host", "pid",
//! "started_at_ms", "sent_at_ms", "heartbeat_ms", "fingerprint"}`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::bus::Bus;
use crate::contract::ServiceSpec;
use crate::envelope::{self, Envelope, Properties};
use crate::error::Result;
use crate::feed::StopSignal;
use crate::transport::{Publish, QueueSettings};

/// The queue servers announce themselves in.
pub use warren_topology::REGISTRY_QUEUE;
/// The AMQP `type` of an announcement.
pub const ANNOUNCEMENT_TYPE: &str = "warren.registry.Announcement";
/// The most announcements [`Bus::services`] reads: three per instance and heartbeat, for far more instances
/// than any deployment runs.
const MAX_READ: u64 = 30_000;

/// One running server instance, as it last announced itself.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerInstance {
    /// The service's full proto name, e.g. `at.v1.IntSummator`.
    pub service: String,
    /// The queue it consumes.
    pub queue: String,
    /// This instance's id (a UUID), new each time a server starts.
    pub instance: String,
    /// The host it runs on.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// The bus's service name ([`crate::BusConfig::service_name`]).
    pub app: String,
    /// When it started, in milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// When it last announced itself.
    pub last_heartbeat_ms: u64,
    /// How often it announces itself.
    pub heartbeat: Duration,
    /// The fingerprint of the contract it was built from: instances of one service with different
    /// fingerprints were built from different contracts.
    pub fingerprint: String,
}

impl Bus {
    /// Every RPC server instance running now, on any bus of the broker (vhost), by service then start time.
    /// Reads the registry without taking anything from it.
    pub async fn services(&self) -> Result<Vec<ServerInstance>> {
        self.declare_queue(REGISTRY_QUEUE, QueueSettings::plain(false)).await?;
        let depth = self.queue_depth(REGISTRY_QUEUE).await?.min(MAX_READ);
        let mut latest: HashMap<String, (bool, ServerInstance)> = HashMap::new();
        if depth > 0 {
            let mut reader = self.read_queue(REGISTRY_QUEUE, depth.min(u64::from(u16::MAX)) as u16).await?;
            let mut held = Vec::new();
            while (held.len() as u64) < depth {
                let Some(taken) = reader.next_within(Duration::from_secs(1)).await else { break };
                if let Some((gone, instance)) = parse(&taken.message.body) {
                    let newer = latest
                        .get(&instance.instance)
                        .is_none_or(|(_, seen)| (seen.last_heartbeat_ms, false) < (instance.last_heartbeat_ms, gone));
                    if newer {
                        latest.insert(instance.instance.clone(), (gone, instance));
                    }
                }
                held.push(taken);
            }
            // Everything read goes back to the registry.
            drop(held);
            reader.close().await;
        }
        let now = unix_ms(SystemTime::now());
        let mut running: Vec<ServerInstance> = latest
            .into_values()
            .filter(|(gone, instance)| {
                let missed = instance.heartbeat.saturating_mul(3).as_millis() as u64;
                !gone && now.saturating_sub(instance.last_heartbeat_ms) <= missed
            })
            .map(|(_, instance)| instance)
            .collect();
        running.sort_by(|a, b| {
            (&a.service, a.started_at_ms, &a.instance).cmp(&(&b.service, b.started_at_ms, &b.instance))
        });
        Ok(running)
    }
}

/// Announces one server: hello now, a heartbeat every interval, goodbye once `stop` fires. Runs until then;
/// failures are logged and never reach the server.
pub(crate) fn announce(bus: &Bus, service: &'static ServiceSpec, mut stop: StopSignal) {
    let interval = bus.config().registry_heartbeat;
    if interval.is_zero() {
        return;
    }
    let bus = bus.clone();
    let instance = envelope::new_id();
    let started = unix_ms(SystemTime::now());
    tokio::spawn(async move {
        let say = |event: &'static str| {
            let body = json!({
                "event": event,
                "service": service.name,
                "queue": service.queue,
                "instance": instance,
                "host": host(),
                "pid": std::process::id(),
                "app": bus.config().service_name,
                "started_at_ms": started,
                "sent_at_ms": unix_ms(SystemTime::now()),
                "heartbeat_ms": interval.as_millis() as u64,
                "fingerprint": service.fingerprint,
            });
            let bus = bus.clone();
            async move {
                if let Err(error) = send(&bus, body, interval).await {
                    tracing::debug!(service = service.name, %error, "registry announcement not sent");
                }
            }
        };
        say("hello").await;
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => say("heartbeat").await,
                () = stop.stopped() => break,
            }
        }
        say("goodbye").await;
    });
}

async fn send(bus: &Bus, body: Value, interval: Duration) -> Result<()> {
    bus.declare_queue(REGISTRY_QUEUE, QueueSettings::plain(false)).await?;
    let mut envelope = Envelope::new(ANNOUNCEMENT_TYPE, crate::WireFormat::Json, "", bus.inner.app_id);
    // RabbitMQ refuses a TTL above 2^32 - 1 ms (about 49 days) by closing the channel.
    envelope.expiration_ms = Some(interval.saturating_mul(3).as_millis().clamp(1, u128::from(u32::MAX)) as u64);
    let publish = Publish { exchange: "", routing_key: REGISTRY_QUEUE, mandatory: false, confirm: false };
    let payload = serde_json::to_vec(&body).unwrap_or_default();
    bus.inner.transport.publish(publish, payload, Properties::from(envelope)).await
}

/// An announcement: whether it is a goodbye, and the instance it describes.
fn parse(body: &[u8]) -> Option<(bool, ServerInstance)> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
    let number = |key: &str| value.get(key).and_then(Value::as_u64);
    let instance = ServerInstance {
        service: text("service")?,
        queue: text("queue")?,
        instance: text("instance")?,
        host: text("host").unwrap_or_default(),
        pid: number("pid").and_then(|p| u32::try_from(p).ok()).unwrap_or_default(),
        app: text("app").unwrap_or_default(),
        started_at_ms: number("started_at_ms")?,
        last_heartbeat_ms: number("sent_at_ms")?,
        heartbeat: Duration::from_millis(number("heartbeat_ms")?),
        fingerprint: text("fingerprint").unwrap_or_default(),
    };
    Some((text("event")? == "goodbye", instance))
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// This machine's name: `HOSTNAME`, else `/etc/hostname`, else `unknown`.
fn host() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().chars().take(255).collect::<String>())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}
