//! `GET /health` (the process is up), `/ready` (the bus is connected), and the documents: `/catalog` (what
//! this gateway exposes), `/asyncapi.yaml` (the contracts' AsyncAPI document, as `cargo xtask docs` writes
//! it), `/openapi.json` (the HTTP routes) and `/metrics` (Prometheus, with the `prometheus` feature).

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use warren::Health;

use crate::config::Group;
use crate::{Gateway, Problem};

/// The AsyncAPI document of the workspace's contracts (the embedded ones).
const ASYNCAPI: &str = include_str!("../../docs/asyncapi.yaml");

type Shared = State<Arc<Gateway>>;

/// `GET /health`: the process answers.
pub(crate) async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /ready`: 200 while the bus is connected, else 503 with the bus's health.
pub(crate) async fn ready(State(gateway): Shared) -> Response {
    let health = gateway.bus.health();
    let hub = &gateway.hub;
    let websocket = json!({
        "connections": hub.connections(),
        "queues": hub.queues(),
        "slow_disconnects": hub.slow_disconnects(),
    });
    let status = if health.is_connected() { "ready" } else { "unavailable" };
    let body = json!({ "status": status, "bus": health_json(&health), "websocket": websocket });
    if health.is_connected() {
        Json(body).into_response()
    } else {
        let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        response
    }
}

/// The bus's health as JSON: `{"state": "recovering", "attempts": 3, "last_error": "…", "since": 1765000000}`;
/// connected states name the node (`"node": "127.0.0.1:5672"`).
pub(crate) fn health_json(health: &Health) -> Value {
    match health {
        Health::Connected { node } => json!({ "state": "connected", "node": node }),
        Health::Blocked { node, reason, since } => json!({
            "state": "blocked",
            "node": node,
            "reason": reason,
            "since": since.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default(),
        }),
        Health::Recovering { since, attempts, last_error } => json!({
            "state": "recovering",
            "since": since.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default(),
            "attempts": attempts,
            "last_error": last_error,
        }),
        Health::Failed { last_error } => json!({ "state": "failed", "last_error": last_error }),
        Health::Degraded { node, failed } => json!({ "state": "degraded", "node": node, "failed": failed }),
        Health::Closed => json!({ "state": "closed" }),
        other => json!({ "state": format!("{other:?}") }),
    }
}

/// `GET /catalog`: what this gateway exposes, with the routes to reach it.
pub(crate) async fn catalog(State(gateway): Shared, headers: HeaderMap) -> Response {
    if let Err(problem) = gateway.authorize(Group::Docs, &headers, None) {
        return problem.into_response();
    }
    let catalog = &gateway.catalog;
    let events: Vec<Value> = catalog
        .events()
        .filter(|e| gateway.events.contains(&e.full_name))
        .map(|e| {
            json!({
                "type": e.full_name,
                "path": format!("/events/{}", e.full_name),
                "exchange": e.exchange.name,
                "routing_key": e.routing_key,
                "doc": e.doc,
            })
        })
        .collect();
    let tasks: Vec<Value> = catalog
        .tasks()
        .filter(|t| gateway.tasks.contains(&t.full_name))
        .map(|t| json!({ "type": t.full_name, "path": format!("/tasks/{}", t.full_name), "queue": t.queue, "doc": t.doc }))
        .collect();
    let methods: Vec<Value> = catalog
        .services()
        .flat_map(|s| s.methods.iter().map(move |m| (s, m)))
        .filter(|(s, m)| gateway.methods.contains(&format!("{}/{}", s.full_name, m.name)))
        .map(|(s, m)| {
            json!({
                "method": format!("{}/{}", s.full_name, m.name),
                "path": format!("/rpc/{}/{}", s.full_name, m.name),
                "input": m.input,
                "output": m.output,
                "timeout_ms": m.timeout_ms.unwrap_or(s.default_timeout_ms),
                "errors": m.errors.as_ref().map(|e| e.full_name.clone()),
                "doc": m.doc,
            })
        })
        .collect();
    let streams: Vec<Value> =
        gateway.config.streams.iter().map(|s| json!({ "exchange": s.exchange, "patterns": s.patterns })).collect();
    let aliases: serde_json::Map<String, Value> = gateway
        .aliases
        .iter()
        .map(|(path, target)| {
            let name = match target {
                crate::Target::Event(name) | crate::Target::Task(name) => name.as_str(),
                crate::Target::Health => "health",
            };
            (path.clone(), json!(name))
        })
        .collect();
    Json(json!({ "events": events, "tasks": tasks, "methods": methods, "streams": streams, "aliases": aliases }))
        .into_response()
}

/// `GET /asyncapi.yaml`.
pub(crate) async fn asyncapi(State(gateway): Shared, headers: HeaderMap) -> Response {
    if let Err(problem) = gateway.authorize(Group::Docs, &headers, None) {
        return problem.into_response();
    }
    ([(header::CONTENT_TYPE, "application/yaml")], ASYNCAPI).into_response()
}

/// `GET /openapi.json`.
pub(crate) async fn openapi(State(gateway): Shared, headers: HeaderMap) -> Response {
    if let Err(problem) = gateway.authorize(Group::Docs, &headers, None) {
        return problem.into_response();
    }
    Json(crate::openapi::document(&gateway)).into_response()
}

/// `GET /metrics`: the runtime's Prometheus metrics, when the gateway is built with the `prometheus` feature
/// and given a layer.
pub(crate) async fn metrics(State(gateway): Shared, headers: HeaderMap) -> Response {
    if let Err(problem) = gateway.authorize(Group::Docs, &headers, None) {
        return problem.into_response();
    }
    #[cfg(feature = "prometheus")]
    if let Some(metrics) = &gateway.config.metrics {
        let layer = metrics.layer();
        layer.sample().await;
        return ([(header::CONTENT_TYPE, warren::prometheus::CONTENT_TYPE)], layer.encode()).into_response();
    }
    Problem::not_found("metrics are off: build warren-gateway with the `prometheus` feature and give it a layer")
        .into_response()
}
