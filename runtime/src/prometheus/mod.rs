//! Prometheus metrics (the `prometheus` feature): [`PrometheusLayer`], a [`Middleware`] that counts what passes
//! through a bus into a [`prometheus_client`] registry, and [`serve`], a `/metrics` endpoint for it that needs
//! no web framework.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use warren::prometheus::PrometheusLayer;
//!
//! let metrics = PrometheusLayer::new();
//! // Registered first, the layer sees every publish, delivery, call and request of the bus.
//! let bus = warren::Bus::with_config(warren::BusConfig::from_env()?.middleware(metrics.clone())).await?;
//! // Its health and its subscribers' queue depths, sampled at each scrape.
//! metrics.watch(&bus);
//! let endpoint = warren::prometheus::serve("127.0.0.1:9464", &metrics).await?;
//! println!("scrape http://{}/metrics", endpoint.local_addr());
//! # let _ = bus; Ok(()) }
//! ```
//!
//! Label values are bounded: message type names, queue names, RPC method paths, outcomes and status codes,
//! never a message id. A temporary subscriber's queue has a generated name, so each run of it is a new series.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `warren_published_total` | counter | `type`, `outcome`: `ok`, `unroutable`, `nacked`, `timed_out`, `blocked`, `refused`, `cancelled` (the publish's future dropped first), `other` |
//! | `warren_publish_seconds` | histogram | `type`: from the layers' before-hooks to the broker's confirm |
//! | `warren_handled_total` | counter | `type`, `queue`, `outcome`: `acked`, `retried`, `dead_lettered`, `abandoned` |
//! | `warren_handle_failed_total` | counter | `type`, `queue`: the handler failed (error, panic, timeout), the message did not decode, or a layer refused it |
//! | `warren_handle_seconds` | histogram | `type`, `queue`: from the layers' before-hooks to the end of the handler |
//! | `warren_handlers_in_flight` | gauge | `type`, `queue` |
//! | `warren_rpc_client_calls_total` | counter | `method`, `code` (`OK`, `NOT_FOUND`, …) |
//! | `warren_rpc_client_seconds` | histogram | `method` |
//! | `warren_rpc_server_calls_total` | counter | `method`, `code` (`UNKNOWN` for a declared error) |
//! | `warren_rpc_server_seconds` | histogram | `method` |
//! | `warren_bus_up` | gauge | `service`: 1 when a [watched](PrometheusLayer::watch) bus can publish and consume, else 0 |
//! | `warren_bus_state` | gauge | `service`, `state`: `connected`, `blocked`, `degraded`, `recovering`, `failed`, `closed`; 1 for the bus's state |
//! | `warren_queue_depth` | gauge | `queue`: messages ready in each running subscriber's queue of a watched bus |
//! | `warren_rpc_reply_to_refused` | gauge | `service`: RPC requests a watched bus's servers refused for their `reply_to` (see [`crate::ServerOptions::allow_reply_to`]), since it started |
//!
//! The last four are sampled when the endpoint is scraped (or [`PrometheusLayer::sample`] is called), not
//! counted from the hooks: a queue depth takes a passive declare on RabbitMQ (a channel opened and closed per
//! queue), so it is read once per scrape, never per message.
//!
//! Histograms have exponential buckets from 50 µs to about 13 s (doubling), fit for sub-millisecond work.

mod http;
mod sampled;
mod series;

use std::fmt;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use self::http::{CONTENT_TYPE, MetricsEndpoint, serve};
use self::sampled::Sampled;
use self::series::Series;
use crate::bus::Bus;
use crate::error::Error;
use crate::middleware::{Called, Delivery, Handled, Middleware, Published, Refusal, Served, Settled};

/// Every metric name [`PrometheusLayer`] exposes, as scraped (counters with their `_total`).
pub const METRIC_NAMES: &[&str] = &[
    "warren_published_total",
    "warren_publish_seconds",
    "warren_handled_total",
    "warren_handle_failed_total",
    "warren_handle_seconds",
    "warren_handlers_in_flight",
    "warren_rpc_client_calls_total",
    "warren_rpc_client_seconds",
    "warren_rpc_server_calls_total",
    "warren_rpc_server_seconds",
    "warren_bus_up",
    "warren_bus_state",
    "warren_queue_depth",
    "warren_rpc_reply_to_refused",
];

/// The upper bounds of the latency histograms' buckets, in seconds: 50 µs doubling 19 times, to about 13 s.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(50e-6, 2.0, 19)
}

fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

fn histograms<L: EncodeLabelSet + Clone + std::hash::Hash + Eq>() -> Histograms<L> {
    Family::new_with_constructor(latency_histogram)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeOutcome {
    r#type: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Consumer {
    r#type: String,
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConsumerOutcome {
    r#type: String,
    queue: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodCode {
    method: String,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Debug)]
struct Metrics {
    published: Family<TypeOutcome, Counter>,
    publish_seconds: Histograms<TypeLabel>,
    handled: Family<ConsumerOutcome, Counter>,
    handle_failed: Family<Consumer, Counter>,
    handle_seconds: Histograms<Consumer>,
    in_flight: Family<Consumer, Gauge>,
    client_calls: Family<MethodCode, Counter>,
    client_seconds: Histograms<MethodLabel>,
    server_calls: Family<MethodCode, Counter>,
    server_seconds: Histograms<MethodLabel>,
    sampled: Sampled,
    /// The series publishes and deliveries touch, kept after their first lookup.
    series: Series,
}

/// A [`Middleware`] that counts a bus's traffic into a Prometheus registry; see the [module](self) for the
/// metrics. Cheap to clone: clones share the registry, so register one clone with the bus and hand another
/// to [`serve`] (or [`encode`](Self::encode) it yourself).
///
/// Register it first (before other layers), as [`crate::BusConfig::middleware`] keeps the order: a delivery
/// that an earlier layer refuses never reaches this layer's `before_handle`, so it is not among the handlers
/// in flight (though it is counted as handled, with its outcome).
#[derive(Clone)]
pub struct PrometheusLayer {
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
}

impl PrometheusLayer {
    /// A layer with a registry of its own.
    pub fn new() -> Self {
        Self::with_registry(Registry::default())
    }

    /// A layer that adds Warren's metrics to `registry`, which may hold the application's own; [`serve`] and
    /// [`encode`](Self::encode) then expose both.
    pub fn with_registry(mut registry: Registry) -> Self {
        let metrics = Metrics {
            published: Family::default(),
            publish_seconds: histograms(),
            handled: Family::default(),
            handle_failed: Family::default(),
            handle_seconds: histograms(),
            in_flight: Family::default(),
            client_calls: Family::default(),
            client_seconds: histograms(),
            server_calls: Family::default(),
            server_seconds: histograms(),
            sampled: Sampled::default(),
            series: Series::default(),
        };
        // Counters are registered without `_total`: the encoder appends it.
        let r = &mut registry;
        r.register("warren_published", "Events and tasks published, by outcome", metrics.published.clone());
        r.register(
            "warren_publish_seconds",
            "Time from publishing to the broker's confirm (or the failure)",
            metrics.publish_seconds.clone(),
        );
        r.register("warren_handled", "Deliveries settled by subscribers, by outcome", metrics.handled.clone());
        r.register(
            "warren_handle_failed",
            "Deliveries that failed: handler error, panic or timeout, undecodable, or refused by a layer",
            metrics.handle_failed.clone(),
        );
        r.register(
            "warren_handle_seconds",
            "Time from a delivery's arrival at the layers to the end of its handler",
            metrics.handle_seconds.clone(),
        );
        r.register("warren_handlers_in_flight", "Deliveries being handled now", metrics.in_flight.clone());
        r.register("warren_rpc_client_calls", "RPC calls made, by status code", metrics.client_calls.clone());
        r.register(
            "warren_rpc_client_seconds",
            "RPC call latency, as the caller saw it",
            metrics.client_seconds.clone(),
        );
        r.register("warren_rpc_server_calls", "RPC requests answered, by status code", metrics.server_calls.clone());
        r.register("warren_rpc_server_seconds", "Time to answer an RPC request", metrics.server_seconds.clone());
        metrics.sampled.register(r);
        PrometheusLayer { metrics: Arc::new(metrics), registry: Arc::new(registry) }
    }

    /// Watches `bus`: each scrape of [`serve`]'s endpoint (or [`sample`](Self::sample)) sets `warren_bus_up`
    /// and `warren_bus_state` from its [`health`](Bus::health), labelled with its service name, and
    /// `warren_queue_depth` for each of its running subscribers' queues, from the broker. Held weakly (a
    /// dropped bus leaves the metrics); buses watched by one layer should have distinct service names.
    pub fn watch(&self, bus: &Bus) {
        self.metrics.sampled.watch(bus);
    }

    /// Samples the watched buses now: their health, and their subscribers' queue depths (at most 2 s for a
    /// bus's depths; past that, or while a bus is not connected, its queues are left out). [`serve`]'s
    /// endpoint does this before each answer; call it before [`encode`](Self::encode) in an endpoint of
    /// your own.
    pub async fn sample(&self) {
        self.metrics.sampled.sample().await;
    }

    /// The registry, to encode in a format or endpoint of your own.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The metrics in the OpenMetrics text format ([`CONTENT_TYPE`]), as `/metrics` answers them (the sampled
    /// gauges as the last [`sample`](Self::sample) left them).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

impl Default for PrometheusLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for PrometheusLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrometheusLayer").finish_non_exhaustive()
    }
}

/// The `outcome` label of a publish.
fn publish_outcome(result: Result<(), &Error>) -> &'static str {
    match result {
        Ok(()) => "ok",
        Err(Error::Unroutable { .. }) => "unroutable",
        Err(Error::Nacked { .. }) => "nacked",
        Err(Error::Timeout { .. }) => "timed_out",
        Err(Error::Blocked { .. }) => "blocked",
        Err(Error::Refused { .. }) => "refused",
        Err(Error::Cancelled) => "cancelled",
        Err(_) => "other",
    }
}

/// The `outcome` label of a settled delivery.
fn settled_outcome(settled: Settled<'_>) -> &'static str {
    match settled {
        Settled::Acked => "acked",
        Settled::Retried { .. } => "retried",
        Settled::DeadLettered { .. } => "dead_lettered",
        Settled::Abandoned => "abandoned",
        #[allow(unreachable_patterns)] // `Settled` is non-exhaustive to other crates only
        _ => "other",
    }
}

impl Middleware for PrometheusLayer {
    fn name(&self) -> &str {
        "prometheus"
    }

    fn after_publish(&self, published: &Published<'_>) {
        let m = &self.metrics;
        let series = m.series.publish(m, published.type_name);
        series.published(m, publish_outcome(published.result)).inc();
        series.publish_seconds.observe(published.elapsed.as_secs_f64());
    }

    fn before_handle(&self, delivery: &Delivery<'_>) -> Result<(), Refusal> {
        let m = &self.metrics;
        m.series.consumer(m, delivery.metric_type, delivery.queue).in_flight.inc();
        Ok(())
    }

    fn after_handle(&self, handled: &Handled<'_>) {
        let m = &self.metrics;
        let series = m.series.consumer(m, handled.metric_type, handled.queue);
        if handled.seen {
            series.in_flight.dec(); // what `before_handle` counted; a delivery refused before it never was
        }
        series.handle_seconds.observe(handled.elapsed.as_secs_f64());
        if handled.failed {
            series.handle_failed(m).inc();
        }
        series.handled(m, settled_outcome(handled.settled)).inc();
    }

    fn after_call(&self, called: &Called<'_>) {
        let m = &self.metrics;
        m.client_calls
            .get_or_create(&MethodCode { method: called.method.to_owned(), code: called.code.as_str() })
            .inc();
        m.client_seconds
            .get_or_create(&MethodLabel { method: called.method.to_owned() })
            .observe(called.elapsed.as_secs_f64());
    }

    fn after_serve(&self, served: &Served<'_>) {
        let m = &self.metrics;
        m.server_calls
            .get_or_create(&MethodCode { method: served.metric_method.to_owned(), code: served.code.as_str() })
            .inc();
        m.server_seconds
            .get_or_create(&MethodLabel { method: served.metric_method.to_owned() })
            .observe(served.elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::headers::Headers;
    use crate::status::Code;

    /// An in-memory bus with one (registered, not running) subscriber's queue, `q`, holding `ready` messages.
    async fn bus_with_queue(ready: usize) -> (Bus, Arc<crate::metrics::SubscriberStats>) {
        let bus = Bus::in_memory();
        bus.declare_queue("q", crate::transport::QueueSettings::plain(false)).await.unwrap();
        for _ in 0..ready {
            let properties = crate::MessageProperties::default().with_message_id(uuid::Uuid::now_v7().to_string());
            bus.publish_bytes("", "q", b"x", properties).await.unwrap();
        }
        let stats = bus.inner.metrics.subscriber("g", "q");
        (bus, stats)
    }

    #[tokio::test]
    async fn every_listed_name_is_exposed_once_there_is_traffic_and_only_those() {
        let layer = PrometheusLayer::new();
        let (bus, _subscriber) = bus_with_queue(0).await;
        layer.watch(&bus);
        layer.sample().await;
        let headers = Headers::new();
        let elapsed = Duration::from_micros(120);
        layer.after_publish(&Published {
            type_name: "t.v1.E",
            exchange: "x",
            routing_key: "k",
            headers: &headers,
            result: Ok(()),
            elapsed,
        });
        let (type_name, metric_type) = ("t.v1.E", "t.v1.E");
        let delivery = Delivery { type_name, metric_type, queue: "q", routing_key: "k", headers: &headers, attempt: 1 };
        layer.before_handle(&delivery).unwrap();
        let handled = |settled, seen| Handled {
            type_name,
            metric_type,
            queue: "q",
            routing_key: "k",
            headers: &headers,
            attempt: 1,
            settled,
            failed: true,
            elapsed,
            seen,
        };
        layer.after_handle(&handled(Settled::Retried { reason: "boom" }, true));
        // Refused by a layer before this one: heard, never seen, so not taken off the handlers in flight.
        layer.after_handle(&handled(Settled::DeadLettered { reason: "refused by gate: no" }, false));
        layer.after_call(&Called { service: "s.v1.S", method: "/s.v1.S/M", code: Code::NotFound, elapsed });
        let served = Served {
            method: "/s.v1.S/M",
            metric_method: "/s.v1.S/M",
            caller: None,
            headers: &headers,
            code: Code::Ok,
            elapsed,
        };
        layer.after_serve(&served);

        let text = layer.encode();
        for line in [
            r#"warren_published_total{type="t.v1.E",outcome="ok"} 1"#,
            r#"warren_publish_seconds_count{type="t.v1.E"} 1"#,
            r#"warren_publish_seconds_bucket{le="0.00005",type="t.v1.E"} 0"#,
            r#"warren_publish_seconds_bucket{le="0.0002",type="t.v1.E"} 1"#,
            r#"warren_handled_total{type="t.v1.E",queue="q",outcome="retried"} 1"#,
            r#"warren_handled_total{type="t.v1.E",queue="q",outcome="dead_lettered"} 1"#,
            r#"warren_handle_failed_total{type="t.v1.E",queue="q"} 2"#,
            r#"warren_handlers_in_flight{type="t.v1.E",queue="q"} 0"#,
            r#"warren_rpc_client_calls_total{method="/s.v1.S/M",code="NOT_FOUND"} 1"#,
            r#"warren_rpc_server_calls_total{method="/s.v1.S/M",code="OK"} 1"#,
            r#"warren_queue_depth{queue="q"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line} in\n{text}");
        }
        let mut exposed: Vec<&str> =
            text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).map(|l| l.split(' ').next().unwrap()).collect();
        let mut listed: Vec<&str> =
            METRIC_NAMES.iter().map(|name| name.strip_suffix("_total").unwrap_or(name)).collect();
        exposed.sort_unstable();
        listed.sort_unstable();
        assert_eq!(exposed, listed, "METRIC_NAMES lists what the registry holds");
        assert!(text.ends_with("# EOF\n"));
    }

    #[tokio::test]
    async fn the_sampled_gauges_follow_the_watched_bus_and_leave_with_it() {
        let layer = PrometheusLayer::new();
        let (bus, subscriber) = bus_with_queue(3).await;
        layer.watch(&bus);
        layer.watch(&bus.clone());
        let service = bus.config().service_name.clone();
        // The sampled gauges' lines, sorted (a family encodes its series in no set order).
        let sampled = |text: &str| -> Vec<String> {
            let gauges = ["warren_bus_up{", "warren_bus_state{", "warren_queue_depth{"];
            let mut lines: Vec<String> =
                text.lines().filter(|l| gauges.iter().any(|g| l.starts_with(g))).map(str::to_owned).collect();
            lines.sort_unstable();
            lines
        };
        let states = |now: &str| {
            sampled::STATES.map(|state| {
                format!(r#"warren_bus_state{{service="{service}",state="{state}"}} {}"#, i32::from(state == now))
            })
        };

        assert!(sampled(&layer.encode()).is_empty(), "nothing until sampled");
        layer.sample().await;
        let mut expected = vec![format!(r#"warren_bus_up{{service="{service}"}} 1"#)];
        expected.extend(states("connected"));
        expected.push(r#"warren_queue_depth{queue="q"} 3"#.to_owned());
        expected.sort_unstable();
        assert_eq!(sampled(&layer.encode()), expected, "watched twice, sampled once");

        // A retired subscriber's queue leaves; a closed bus is down.
        bus.inner.metrics.retire(&subscriber);
        bus.close().await.unwrap();
        layer.sample().await;
        let mut expected = vec![format!(r#"warren_bus_up{{service="{service}"}} 0"#)];
        expected.extend(states("closed"));
        expected.sort_unstable();
        assert_eq!(sampled(&layer.encode()), expected);

        // A dropped bus leaves the metrics.
        drop(bus);
        layer.sample().await;
        assert_eq!(sampled(&layer.encode()), Vec::<String>::new());
    }

    #[test]
    fn publish_outcomes_are_a_few_words() {
        let unroutable = Error::Unroutable { exchange: "x".into(), routing_key: "k".into() };
        let timeout = Error::Timeout { operation: "publish", after: Duration::from_secs(1) };
        assert_eq!(publish_outcome(Ok(())), "ok");
        assert_eq!(publish_outcome(Err(&unroutable)), "unroutable");
        assert_eq!(publish_outcome(Err(&timeout)), "timed_out");
        assert_eq!(publish_outcome(Err(&Error::Closed)), "other");
        // Each outcome it names has its own series: none falls into `other` by being left off the list.
        let blocked = Error::Blocked { after: Duration::from_secs(1), reason: "memory".into() };
        for error in [&unroutable, &timeout, &blocked, &Error::Cancelled] {
            assert!(series::PUBLISHED.contains(&publish_outcome(Err(error))), "{error}");
        }
        assert_eq!(series::PUBLISHED.last(), Some(&"other"));
    }
}
