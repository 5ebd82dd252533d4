//! The gauges sampled from the buses a [`PrometheusLayer`](super::PrometheusLayer) watches, at each scrape
//! rather than on every message: the bus's health, and the messages waiting in each running subscriber's queue.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::bus::{Bus, Inner};
use crate::health::Health;

/// How long one sampling waits for a bus's queue depths; past it, that bus's queues are left out.
const DEPTH_DEADLINE: Duration = Duration::from_secs(2);

/// `warren_bus_state`'s `state` values: each watched bus has a series for each, 1 for its state, 0 for the others.
pub(super) const STATES: [&str; 6] = ["connected", "blocked", "degraded", "recovering", "failed", "closed"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceState {
    service: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

/// The series the last sampling set, so that the next removes those it no longer sees (a bus dropped, a
/// subscriber stopped) instead of leaving their last values behind.
#[derive(Debug, Default)]
struct Seen {
    services: Vec<String>,
    queues: Vec<String>,
}

/// The watched buses and their gauges.
#[derive(Debug, Default)]
pub(super) struct Sampled {
    /// Held weakly: the layer is part of a bus's configuration, and must not keep it alive.
    buses: Mutex<Vec<Weak<Inner>>>,
    /// One sampling at a time; what the last one set.
    sampling: tokio::sync::Mutex<Seen>,
    up: Family<ServiceLabel, Gauge>,
    state: Family<ServiceState, Gauge>,
    depth: Family<QueueLabel, Gauge>,
    refused: Family<ServiceLabel, Gauge>,
}

impl Sampled {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "warren_bus_up",
            "Whether the bus can publish and consume now (connected, or degraded), by service name",
            self.up.clone(),
        );
        registry.register(
            "warren_bus_state",
            "The bus's connection state: 1 for the state it is in, 0 for the others",
            self.state.clone(),
        );
        registry.register(
            "warren_queue_depth",
            "Messages ready in a running subscriber's queue, as the broker reported them at the scrape",
            self.depth.clone(),
        );
        registry.register(
            "warren_rpc_reply_to_refused",
            "RPC requests the bus's servers refused (unhandled, unanswered) for a reply_to that is neither direct \
             reply-to nor a server-named queue, since the bus started",
            self.refused.clone(),
        );
    }

    pub(super) fn watch(&self, bus: &Bus) {
        let mut buses = self.buses.lock().expect("watched buses");
        buses.retain(|watched| watched.strong_count() > 0);
        if !buses.iter().any(|watched| std::ptr::eq(watched.as_ptr(), Arc::as_ptr(&bus.inner))) {
            buses.push(Arc::downgrade(&bus.inner));
        }
    }

    pub(super) async fn sample(&self) {
        let mut seen = self.sampling.lock().await;
        let buses: Vec<Bus> = {
            let mut buses = self.buses.lock().expect("watched buses");
            buses.retain(|watched| watched.strong_count() > 0);
            buses.iter().filter_map(Weak::upgrade).map(|inner| Bus { inner }).collect()
        };
        // Everything read first, then set at once: a scrape that encodes meanwhile sees one sampling or the other.
        let mut states = Vec::with_capacity(buses.len());
        let mut depths = Vec::new();
        for bus in &buses {
            let health = bus.health();
            // Blocked by an alarm too: a backlog is what an operator looks for then, and reading depths is not
            // publishing. A queue that does not answer in time loses its series alone.
            if health.node().is_some() {
                let read = bus.queue_depths(DEPTH_DEADLINE).await;
                depths.extend(read.into_iter().filter_map(|(queue, depth)| Some((queue, depth?))));
            }
            let refused = bus.inner.metrics.reply_to_refused().load(std::sync::atomic::Ordering::Relaxed);
            states.push((bus.config().service_name.clone(), health, refused));
        }
        drop(buses);

        for (service, health, refused) in &states {
            let refused = i64::try_from(*refused).unwrap_or(i64::MAX);
            self.refused.get_or_create(&ServiceLabel { service: service.clone() }).set(refused);
            self.up.get_or_create(&ServiceLabel { service: service.clone() }).set(i64::from(health.is_connected()));
            let now = state_word(health);
            for state in STATES {
                let labels = ServiceState { service: service.clone(), state };
                self.state.get_or_create(&labels).set(i64::from(state == now));
            }
        }
        for (queue, depth) in &depths {
            let depth = i64::try_from(*depth).unwrap_or(i64::MAX);
            self.depth.get_or_create(&QueueLabel { queue: queue.clone() }).set(depth);
        }
        for gone in seen.services.iter().filter(|old| !states.iter().any(|(service, ..)| service == *old)) {
            self.up.remove(&ServiceLabel { service: gone.clone() });
            self.refused.remove(&ServiceLabel { service: gone.clone() });
            for state in STATES {
                self.state.remove(&ServiceState { service: gone.clone(), state });
            }
        }
        for gone in seen.queues.iter().filter(|old| !depths.iter().any(|(queue, _)| queue == *old)) {
            self.depth.remove(&QueueLabel { queue: gone.clone() });
        }
        *seen = Seen {
            services: states.into_iter().map(|(service, ..)| service).collect(),
            queues: depths.into_iter().map(|(queue, _)| queue).collect(),
        };
    }
}

/// The `state` label of a bus's health.
fn state_word(health: &Health) -> &'static str {
    match health {
        Health::Connected { .. } => "connected",
        Health::Blocked { .. } => "blocked",
        Health::Degraded { .. } => "degraded",
        Health::Recovering { .. } => "recovering",
        Health::Failed { .. } => "failed",
        Health::Closed => "closed",
    }
}
