//! Prometheus metrics of a gateway (feature `prometheus`): Warren's, from the layer its bus carries, and the
//! gateway's own, in one registry that `GET /metrics` encodes.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use warren::prometheus::PrometheusLayer;

use crate::Gateway;

/// A gateway's metrics: Warren's [`PrometheusLayer`] (register [`Metrics::layer`] with the gateway's bus) and
/// the gateway's own, sharing one registry:
///
/// - `warren_gateway_requests_total{route, status}`: HTTP requests answered, by route template
///   (`/events/{type}`, an alias's path, …) and status code;
/// - `warren_gateway_request_seconds{route}`: the time to answer them;
/// - `warren_gateway_websocket_clients`: WebSocket clients connected now;
/// - `warren_gateway_websocket_slow_disconnects_total`: clients closed for falling behind.
///
/// Label values are bounded: routes are the router's templates, never a request's path.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let metrics = warren_gateway::Metrics::new();
/// let bus = warren::Bus::with_config(warren::BusConfig::from_env()?.middleware(metrics.layer().clone())).await?;
/// let mut config = warren_gateway::GatewayConfig::new().allow_all();
/// config.metrics = Some(metrics);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Metrics {
    layer: PrometheusLayer,
    pub(crate) own: Arc<Own>,
}

#[derive(Debug)]
pub(crate) struct Own {
    requests: Family<RequestLabels, Counter>,
    seconds: Family<RouteLabels, Histogram>,
    pub(crate) clients: Gauge,
    pub(crate) slow: Counter,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

impl Metrics {
    /// Warren's metrics and the gateway's, in a registry of their own.
    pub fn new() -> Self {
        Self::with_registry(Registry::default())
    }

    /// Warren's metrics and the gateway's, added to `registry` (which may hold the application's own).
    pub fn with_registry(mut registry: Registry) -> Self {
        let own = Own {
            requests: Family::default(),
            seconds: Family::new_with_constructor(|| Histogram::new(warren::prometheus::latency_buckets())),
            clients: Gauge::default(),
            slow: Counter::default(),
        };
        registry.register(
            "warren_gateway_requests",
            "HTTP requests answered, by route and status code",
            own.requests.clone(),
        );
        registry.register("warren_gateway_request_seconds", "Time to answer an HTTP request", own.seconds.clone());
        registry.register("warren_gateway_websocket_clients", "WebSocket clients connected", own.clients.clone());
        registry.register(
            "warren_gateway_websocket_slow_disconnects",
            "WebSocket clients closed for falling behind",
            own.slow.clone(),
        );
        Metrics { layer: PrometheusLayer::with_registry(registry), own: Arc::new(own) }
    }

    /// The layer to register with the gateway's bus ([`warren::BusConfig::middleware`]).
    pub fn layer(&self) -> &PrometheusLayer {
        &self.layer
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts and times each request of a matched route.
pub(crate) async fn track(State(gateway): State<Arc<Gateway>>, request: Request, next: Next) -> Response {
    let Some(metrics) = &gateway.config.metrics else { return next.run(request).await };
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let own = &metrics.own;
    own.seconds.get_or_create(&RouteLabels { route: route.clone() }).observe(started.elapsed().as_secs_f64());
    own.requests.get_or_create(&RequestLabels { route, status: response.status().as_u16() }).inc();
    response
}
