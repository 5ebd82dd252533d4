//! `POST /events/{type}`, `POST /tasks/{type}`, `POST /rpc/{Service}/{Method}` and the configured aliases:
//! bearer tokens first, then the type (404 unless allowed), the body (at most the bus's `max_message_size`),
//! the contract's rules, and the bus.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::json;
use warren::{CallOptions, PublishOptions};
use warren_reflect::{Format, Reply};

use crate::config::Group;
use crate::{Gateway, Problem, Target};

type Shared = State<Arc<Gateway>>;

/// The routes the gateway itself serves, which an alias may not take.
const RESERVED: [&str; 11] = [
    "/events",
    "/tasks",
    "/rpc",
    "/health",
    "/ready",
    "/catalog",
    "/asyncapi.yaml",
    "/openapi.json",
    "/metrics",
    "/ws",
    "/dlq",
];

/// What is wrong with `path` as an alias's path, if anything.
pub(crate) fn alias_path_problem(path: &str) -> Option<&'static str> {
    if !path.starts_with('/') || path.len() < 2 {
        return Some("must start with / and name something");
    }
    if path.len() > 200 {
        return Some("is longer than 200 bytes");
    }
    if !path.bytes().all(|b| b.is_ascii_alphanumeric() || b"/-._~".contains(&b)) || path.contains("//") {
        return Some("may hold only letters, digits, '/', '-', '.', '_' and '~' (no parameters, no empty segments)");
    }
    if RESERVED.iter().any(|r| path == *r || path.strip_prefix(r).is_some_and(|rest| rest.starts_with('/'))) {
        return Some("is one of the gateway's own routes");
    }
    None
}

impl Gateway {
    /// Checks the request's bearer token against `group`'s tokens (none configured: open).
    pub(crate) fn authorize(
        &self,
        group: Group,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<(), Problem> {
        let tokens = self.config.tokens.of(group);
        if tokens.is_empty() {
            return Ok(());
        }
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
            .map(str::trim)
            .or(query_token);
        match given {
            None => Err(Problem::unauthorized("this route needs a bearer token (Authorization: Bearer <token>)")),
            Some(given) if tokens.iter().any(|token| same(token.as_bytes(), given.as_bytes())) => Ok(()),
            Some(_) => Err(Problem::unauthorized("the bearer token is not accepted for this route")),
        }
    }

    /// The bus can send now, or a 503 saying why not.
    pub(crate) fn connected(&self) -> Result<(), Problem> {
        let health = self.bus.health();
        if health.is_connected() {
            Ok(())
        } else {
            Err(Problem::unavailable(format!("the gateway's bus is not connected to the broker ({})", state(&health)))
                .with("bus", crate::docs::health_json(&health)))
        }
    }

    pub(crate) async fn publish(
        &self,
        full_name: &str,
        body: &[u8],
        format: Format,
        headers: &HeaderMap,
    ) -> Result<String, Problem> {
        let event = self.catalog.event(full_name).map_err(|e| Problem::from_reflect(&e))?;
        let message = self.catalog.parse(&event.full_name, body, format).map_err(|e| Problem::from_reflect(&e))?;
        self.connected()?;
        self.catalog
            .publish(&self.bus, event, &message, publish_options(headers))
            .await
            .map_err(|e| Problem::from_reflect(&e))
    }

    pub(crate) async fn enqueue(
        &self,
        full_name: &str,
        body: &[u8],
        format: Format,
        headers: &HeaderMap,
    ) -> Result<String, Problem> {
        let task = self.catalog.task(full_name).map_err(|e| Problem::from_reflect(&e))?;
        let message = self.catalog.parse(&task.full_name, body, format).map_err(|e| Problem::from_reflect(&e))?;
        self.connected()?;
        self.catalog
            .enqueue(&self.bus, task, &message, publish_options(headers))
            .await
            .map_err(|e| Problem::from_reflect(&e))
    }
}

fn state(health: &warren::Health) -> &'static str {
    match health {
        warren::Health::Connected { .. } => "connected",
        warren::Health::Blocked { .. } => "blocked",
        warren::Health::Recovering { .. } => "recovering",
        warren::Health::Failed { .. } => "failed",
        warren::Health::Degraded { .. } => "degraded",
        warren::Health::Closed => "closed",
        _ => "unknown",
    }
}

/// The W3C trace context of an HTTP request (`traceparent`, and `tracestate` with it), to pass on to the bus, so
/// that a trace the HTTP client started continues through the broker to handlers and servers. A value that is not
/// text or is longer than W3C allows (55 and 512 bytes) is left out; `tracestate` goes only with a `traceparent`.
fn trace_context(headers: &HeaderMap) -> Vec<(&'static str, String)> {
    let value = |name: &str, limit: usize| {
        headers.get(name).and_then(|v| v.to_str().ok()).filter(|v| v.len() <= limit).map(str::to_owned)
    };
    let Some(parent) = value(warren::TRACEPARENT, 55) else { return Vec::new() };
    let mut context = vec![(warren::TRACEPARENT, parent)];
    context.extend(value(warren::TRACESTATE, 512).map(|state| (warren::TRACESTATE, state)));
    context
}

/// A publish's options: the request's trace context as headers.
fn publish_options(headers: &HeaderMap) -> PublishOptions {
    trace_context(headers).into_iter().fold(PublishOptions::new(), |options, (name, value)| options.header(name, value))
}

/// Compares without stopping at the first difference, so the time taken tells nothing of the token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST /events/{type}`.
pub(crate) async fn publish_event(
    State(gateway): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        gateway.authorize(Group::Publish, &headers, None)?;
        let full_name = reachable(&gateway.events, &gateway.catalog.event(&name).map(|e| e.full_name.clone()))
            .ok_or_else(|| Problem::not_found(format!("no event named \"{}\" is published here", cut(&name))))?;
        let (body, format) = read(&gateway, &headers, body).await?;
        gateway.publish(&full_name, &body, format, &headers).await
    };
    accepted(result.await)
}

/// `POST /tasks/{type}`.
pub(crate) async fn enqueue_task(
    State(gateway): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        gateway.authorize(Group::Publish, &headers, None)?;
        let full_name = reachable(&gateway.tasks, &gateway.catalog.task(&name).map(|t| t.full_name.clone()))
            .ok_or_else(|| Problem::not_found(format!("no task named \"{}\" is enqueued here", cut(&name))))?;
        let (body, format) = read(&gateway, &headers, body).await?;
        gateway.enqueue(&full_name, &body, format, &headers).await
    };
    accepted(result.await)
}

/// An alias's `POST`: publishes (or enqueues) its one type.
pub(crate) async fn publish_alias(State(gateway): Shared, target: Target, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        gateway.authorize(Group::Publish, &headers, None)?;
        let (body, format) = read(&gateway, &headers, body).await?;
        match &target {
            Target::Event(name) => gateway.publish(name, &body, format, &headers).await,
            Target::Task(name) => gateway.enqueue(name, &body, format, &headers).await,
            Target::Health => Err(Problem::not_found("the health alias answers GET")),
        }
    };
    accepted(result.await)
}

/// `POST /rpc/{Service}/{Method}`.
pub(crate) async fn call(
    State(gateway): Shared,
    Path((service, method)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        gateway.authorize(Group::Call, &headers, None)?;
        let name = format!("{service}/{method}");
        let not_found = || Problem::not_found(format!("no method \"{}\" is called here", cut(&name)));
        let (service, method) = gateway.catalog.method(&name).map_err(|_| not_found())?;
        if !gateway.methods.contains(&format!("{}/{}", service.full_name, method.name)) {
            return Err(not_found());
        }
        let contract = Duration::from_millis(u64::from(method.timeout_ms.unwrap_or(service.default_timeout_ms)));
        let timeout = requested_timeout(&headers)?.map_or(contract, |asked| asked.min(contract));
        let (body, format) = read(&gateway, &headers, body).await?;
        let request = gateway.catalog.parse(&method.input, &body, format).map_err(|e| Problem::from_reflect(&e))?;
        gateway.connected()?;
        let options = trace_context(&headers)
            .into_iter()
            .fold(CallOptions::new().timeout(timeout), |options, (name, value)| options.header(name, value));
        match gateway.catalog.call(&gateway.bus, service, method, &request, &options).await {
            Ok(Reply::Response(response)) => Ok(Json(warren_reflect::to_json(&response)).into_response()),
            Ok(Reply::Error { error, message }) => {
                let type_name = prost_reflect::ReflectMessage::descriptor(&error).full_name().to_owned();
                Err(Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &format!("error:{type_name}"),
                    &type_name,
                    if message.is_empty() { format!("{name} answered {type_name}") } else { message },
                )
                .with("error", json!(type_name))
                .with("details", warren_reflect::to_json(&error)))
            }
            Err(status) => Err(Problem::from_status(&status)),
        }
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// Any other path.
pub(crate) async fn fallback() -> Problem {
    Problem::not_found("the gateway has no such route; see /openapi.json")
}

fn accepted(result: Result<String, Problem>) -> Response {
    match result {
        Ok(id) => (StatusCode::ACCEPTED, Json(json!({ "message_id": id }))).into_response(),
        Err(problem) => problem.into_response(),
    }
}

fn reachable<E>(allowed: &std::collections::BTreeSet<String>, found: &Result<String, E>) -> Option<String> {
    found.as_ref().ok().filter(|name| allowed.contains(*name)).cloned()
}

/// A name or value from a request as an answer shows it: at most 120 characters, then `…`.
pub(crate) fn cut(text: &str) -> String {
    shorten(text, 120)
}

/// `text`, at most `max` characters, then `…`.
pub(crate) fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// The body, at most the bus's `max_message_size` bytes, and its format from `Content-Type`.
async fn read(gateway: &Gateway, headers: &HeaderMap, body: Body) -> Result<(Vec<u8>, Format), Problem> {
    let format = format(headers)?;
    let limit = gateway.limit;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if let Some(length) = declared.filter(|length| *length > limit) {
        return Err(Problem::too_large(length, limit));
    }
    // What the client says it sends is only a hint: room for it is made as it arrives.
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0).min(limit).min(64 * 1024));
    let mut stream = body.into_data_stream();
    let reading = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                let detail = format!("the body could not be read: {e}");
                Problem::new(StatusCode::BAD_REQUEST, "body", "Unreadable body", detail)
            })?;
            if bytes.len() + chunk.len() > limit {
                return Err(Problem::too_large(bytes.len() + chunk.len(), limit));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(())
    };
    // A client that trickles its body (or stops sending it) does not hold the request, and a shutdown, for ever.
    let within = gateway.config.body_timeout();
    match tokio::time::timeout(within, reading).await {
        Ok(read) => read?,
        Err(_) => {
            return Err(Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "body-timeout",
                "Body too slow",
                format!("the body did not arrive within {within:?} (body_timeout_ms); send it at once"),
            ));
        }
    }
    Ok((bytes, format))
}

fn format(headers: &HeaderMap) -> Result<Format, Problem> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else { return Ok(Format::Json) };
    let media = value.to_str().unwrap_or_default().split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    match media.as_str() {
        "application/json" | "" => Ok(Format::Json),
        "application/x-protobuf" | "application/protobuf" | "application/vnd.google.protobuf" => Ok(Format::Protobuf),
        other => Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "media-type",
            "Unsupported media type",
            format!("send application/json (the proto3 JSON mapping) or application/x-protobuf, not {}", cut(other)),
        )),
    }
}

/// The deadline the client asks for: `X-Warren-Timeout` (`500ms`, `2s`, `1m`) or `grpc-timeout` (`500m`,
/// `2S`: an integer and one of `H M S m u n`).
fn requested_timeout(headers: &HeaderMap) -> Result<Option<Duration>, Problem> {
    let bad = |name: &str, value: &str| {
        Problem::bad_request(
            format!("header {name}: {:?} is not a timeout", cut(value)),
            json!([{ "field": name, "problem": "write it as 500ms, 2s or 1m (grpc-timeout: 500m, 2S)" }]),
        )
    };
    if let Some(value) = headers.get("x-warren-timeout") {
        let text = value.to_str().unwrap_or_default().trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().map_err(|_| bad("X-Warren-Timeout", text))?;
        let duration = match unit {
            "ms" => Duration::from_millis(number),
            "s" | "" => Duration::from_secs(number),
            "m" => Duration::from_secs(number.saturating_mul(60)),
            _ => return Err(bad("X-Warren-Timeout", text)),
        };
        return Ok(Some(duration));
    }
    if let Some(value) = headers.get("grpc-timeout") {
        let text = value.to_str().unwrap_or_default().trim();
        let (number, unit) = text.split_at(text.len().saturating_sub(1));
        let number: u64 = number.parse().map_err(|_| bad("grpc-timeout", text))?;
        let duration = match unit {
            "H" => Duration::from_secs(number.saturating_mul(3600)),
            "M" => Duration::from_secs(number.saturating_mul(60)),
            "S" => Duration::from_secs(number),
            "m" => Duration::from_millis(number),
            "u" => Duration::from_micros(number),
            "n" => Duration::from_nanos(number),
            _ => return Err(bad("grpc-timeout", text)),
        };
        return Ok(Some(duration));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_read_both_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(requested_timeout(&headers).unwrap(), None);
        headers.insert("grpc-timeout", "250m".parse().unwrap());
        assert_eq!(requested_timeout(&headers).unwrap(), Some(Duration::from_millis(250)));
        headers.insert("x-warren-timeout", "2s".parse().unwrap());
        assert_eq!(requested_timeout(&headers).unwrap(), Some(Duration::from_secs(2)));
        headers.insert("x-warren-timeout", "soon".parse().unwrap());
        assert_eq!(requested_timeout(&headers).unwrap_err().status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn aliases_keep_clear_of_the_gateways_routes() {
        assert_eq!(alias_path_problem("/messaging/user-notification"), None);
        assert!(alias_path_problem("/events/x").is_some());
        assert!(alias_path_problem("/health").is_some());
        assert!(alias_path_problem("/a/{b}").is_some());
        assert!(alias_path_problem("relative").is_some());
        assert!(same(b"token", b"token") && !same(b"token", b"tokem") && !same(b"t", b"token"));
    }
}
