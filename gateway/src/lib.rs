//! Warren's contracts over HTTP and WebSocket, on axum: publish events, enqueue tasks and call RPC methods
//! from JSON (or protobuf), stream an exchange live over a WebSocket, and answer health, readiness, an
//! OpenAPI document generated from the same descriptors, the AsyncAPI document and the catalog; and a page
//! at `/` to watch it all in a browser.
//!
//! Every message goes through [`warren_reflect`], as the `warren` CLI's do: the same lookup by name, the
//! same JSON mapping, the same validation rules, the same routing. Nothing is reachable until the
//! [`GatewayConfig`] allows it.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! let bus = warren::Bus::from_env().await?;
//! let catalog = Arc::new(warren_reflect::Catalog::from_descriptor_set(warren_contracts::FILE_DESCRIPTOR_SET)?);
//! let config = warren_gateway::GatewayConfig::from_toml(r#"events = ["streaming.v1.*"]"#, "inline")?;
//! let app = axum::Router::new().nest("/bus", warren_gateway::router(bus, catalog, config));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let header_timeout = std::time::Duration::from_secs(75);
//! warren_gateway::serve(listener, app, header_timeout, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - `lib.rs`: [`router`], and the shared state.
//! - `config.rs`: [`GatewayConfig`]: allow-lists, tokens, aliases, WebSocket limits; read from TOML.
//! - `problem.rs`: errors as RFC 9457 problem details; how bus errors and RPC statuses map to HTTP.
//! - `routes.rs`: `POST /events/…`, `/tasks/…`, `/rpc/…/…` and aliases; bearer tokens; request bodies.
//! - `docs.rs`: `GET /health`, `/ready`, `/catalog`, `/asyncapi.yaml`, `/openapi.json`, `/metrics`.
//! - `metrics.rs`: [`Metrics`] (feature `prometheus`): Warren's and the gateway's own, counted per route.
//! - `openapi.rs`: the OpenAPI 3.1 document, generated from the descriptors.
//! - `page.rs`, `page.html`: `GET /`, a page showing the catalog, message rates, a live tail and the
//!   dead-letter queues; `GET /dlq`, their depths.
//! - `server.rs`: [`serve`]: the router on a listener, with a deadline for request headers.
//! - `shutdown.rs`: [`Shutdown`], closing the WebSockets when the server stops.
//! - `ws.rs`: `GET /ws`: subscriptions fanned out from one broker queue per exchange and pattern, and
//!   publishing over the socket.

mod config;
mod docs;
#[cfg(feature = "prometheus")]
mod metrics;
mod openapi;
mod page;
mod problem;
mod routes;
mod server;
mod shutdown;
mod ws;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use warren::Bus;
use warren_reflect::Catalog;

pub use config::{ConfigError, GatewayConfig, Group, StreamRule, Tokens, WebSocketConfig};
#[cfg(feature = "prometheus")]
pub use metrics::Metrics;
pub use problem::{PROBLEM_JSON, Problem, http_status};
pub use server::serve;
pub use shutdown::Shutdown;

/// The gateway's routes over `bus`, for the contracts of `catalog`, exposing what `config` allows. Mount it
/// in an application's own axum app (`Router::nest`), or serve it as it is (the `warren-gateway` binary
/// does).
///
/// Names in `config` that the contracts do not have are ignored here (so nothing is reachable through
/// them); call [`GatewayConfig::check`] first to refuse them instead.
pub fn router(bus: Bus, catalog: Arc<Catalog>, config: GatewayConfig) -> Router {
    let state = Arc::new(Gateway::new(bus, catalog, config));
    let mut app = Router::new()
        .route("/events/{type}", post(routes::publish_event))
        .route("/tasks/{type}", post(routes::enqueue_task))
        .route("/rpc/{service}/{method}", post(routes::call))
        .route("/health", get(docs::health))
        .route("/ready", get(docs::ready))
        .route("/catalog", get(docs::catalog))
        .route("/asyncapi.yaml", get(docs::asyncapi))
        .route("/openapi.json", get(docs::openapi))
        .route("/metrics", get(docs::metrics))
        .route("/ws", get(ws::upgrade))
        .route("/", get(page::page))
        .route("/dlq", get(page::dead_letters));
    for (path, target) in &state.aliases {
        app = match target.clone() {
            Target::Health => app.route(path, get(docs::health)),
            target => app.route(
                path,
                post(move |state, headers, body| routes::publish_alias(state, target.clone(), headers, body)),
            ),
        };
    }
    #[cfg(feature = "prometheus")]
    let app = app.route_layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track));
    app.fallback(routes::fallback).with_state(state)
}

/// What the handlers share.
#[derive(Debug)]
pub(crate) struct Gateway {
    pub(crate) bus: Bus,
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) config: GatewayConfig,
    /// The full names of the events, tasks and methods (`Service/Method`) reachable.
    pub(crate) events: BTreeSet<String>,
    pub(crate) tasks: BTreeSet<String>,
    pub(crate) methods: BTreeSet<String>,
    /// Alias path → the full name of its event or task.
    pub(crate) aliases: BTreeMap<String, Target>,
    /// The largest request body: the bus's `max_message_size`.
    pub(crate) limit: usize,
    pub(crate) hub: ws::Hub,
}

/// What an alias reaches: an event or task it publishes (`POST`), or the health check (`GET`).
#[derive(Debug, Clone)]
pub(crate) enum Target {
    Event(String),
    Task(String),
    Health,
}

impl Gateway {
    fn new(bus: Bus, catalog: Arc<Catalog>, config: GatewayConfig) -> Self {
        let resolve_event = |name: &str| catalog.event(name).ok().map(|e| e.full_name.clone());
        let resolve_task = |name: &str| catalog.task(name).ok().map(|t| t.full_name.clone());
        let events = catalog
            .events()
            .map(|e| e.full_name.clone())
            .filter(|name| config::listed(&config.events, name, resolve_event))
            .collect();
        let tasks = catalog
            .tasks()
            .map(|t| t.full_name.clone())
            .filter(|name| config::listed(&config.tasks, name, resolve_task))
            .collect();
        let resolve_service = |name: &str| {
            if name.contains('/') {
                catalog.method(name).ok().map(|(s, m)| format!("{}/{}", s.full_name, m.name))
            } else {
                catalog.service(name).ok().map(|s| s.full_name.clone())
            }
        };
        let methods = catalog
            .services()
            .flat_map(|s| s.methods.iter().map(move |m| (s.full_name.clone(), format!("{}/{}", s.full_name, m.name))))
            .filter(|(service, path)| {
                config::listed(&config.services, service, resolve_service)
                    || config::listed(&config.services, path, resolve_service)
            })
            .map(|(_, path)| path)
            .collect();
        let mut aliases = BTreeMap::new();
        for (path, name) in &config.aliases {
            if let Some(problem) = routes::alias_path_problem(path) {
                tracing::warn!(path, problem, "alias ignored");
                continue;
            }
            let target = match (catalog.event(name), catalog.task(name)) {
                _ if name == "health" => Target::Health,
                (Ok(event), _) => Target::Event(event.full_name.clone()),
                (_, Ok(task)) => Target::Task(task.full_name.clone()),
                _ => {
                    tracing::warn!(path, name, "alias ignored: no event or task has this name");
                    continue;
                }
            };
            aliases.insert(path.clone(), target);
        }
        let limit = bus.config().max_message_size;
        let hub = ws::Hub::new(config.websocket);
        Gateway { bus, catalog, config, events, tasks, methods, aliases, limit, hub }
    }
}
