//! The gateway's HTTP routes end to end, with a real HTTP client, on RabbitMQ (a private vhost; "start
//! RabbitMQ: …" when none answers) and on the in-memory bus: every route and status with its body.

mod support;

use std::time::Duration;

use prost::Message as _;
use serde_json::json;
use support::{ADA, Server};
use warren_contracts::at::v1::IntSummatorServer;
use warren_contracts::gametrade::v1::UserRegistered;
use warren_gateway::GatewayConfig;
use warren_tests::Harness;

fn config() -> GatewayConfig {
    GatewayConfig::from_toml(
        r#"
        events = ["gametrade.v1.UserRegistered", "streaming.v1.*"]
        tasks = ["BackgroundTask"]
        services = ["at.v1.IntSummator/IntSum"]
        [aliases]
        "/messaging/user-notification" = "streaming.v1.UserNotification"
        "/messaging/health" = "health"
        "#,
        "test",
    )
    .unwrap()
}

async fn events_are_published_with_confirm_and_refused_with_reasons(h: &Harness) {
    let bus = h.bus("gateway").await;
    let server = Server::start(bus.clone(), config()).await;

    // Nobody is bound yet: the broker returns it, and the answer says so.
    let unroutable = server.post("/events/UserRegistered", ADA).await.problem(422);
    assert!(unroutable["detail"].as_str().unwrap().contains("no queue is bound"), "{unroutable}");
    assert_eq!(unroutable["routing_key"], "user.registered");

    let catalog = warren_reflect::Catalog::from_descriptor_set(warren_contracts::FILE_DESCRIPTOR_SET).unwrap();
    let mut tail = bus.watch(&catalog.exchange("gametrade.events").unwrap(), "user.*").await.unwrap();
    let accepted = server.post("/events/UserRegistered", ADA).await;
    assert_eq!(accepted.status, 202, "{}", accepted.text);
    let id = accepted.json()["message_id"].as_str().unwrap().to_owned();
    let seen = tail.next_within(Duration::from_secs(10)).await.expect("the event arrives");
    assert_eq!(seen.message.properties.message_id.as_deref(), Some(id.as_str()));
    assert_eq!(catalog.decode(&seen.message).unwrap()["username"], "ada");
    seen.ack().await.unwrap();

    // Protobuf in, by content type.
    let event = UserRegistered { user_id: 8, username: "grace".into(), email: "grace@example.com".into() };
    let request = server
        .http
        .post(server.url("/events/gametrade.v1.UserRegistered"))
        .header("content-type", "application/x-protobuf")
        .body(event.encode_to_vec());
    let protobuf = support::Answer::of(request).await;
    assert_eq!(protobuf.status, 202, "{}", protobuf.text);
    let seen = tail.next_within(Duration::from_secs(10)).await.expect("the protobuf event arrives");
    assert_eq!(catalog.decode(&seen.message).unwrap()["username"], "grace");
    seen.ack().await.unwrap();
    tail.close().await;

    // Not allowed and unknown types are the same 404.
    let not_allowed = server.post("/events/gametrade.v1.UserActivated", "{}").await.problem(404);
    assert!(not_allowed["detail"].as_str().unwrap().contains("is published here"), "{not_allowed}");
    server.post("/events/NoSuchEvent", "{}").await.problem(404);
    server.post("/nowhere", "{}").await.problem(404);

    // Bad JSON names the field; broken rules list every violation.
    let typo = server.post("/events/UserRegistered", r#"{"userID": "7"}"#).await.problem(400);
    assert!(typo["violations"][0]["problem"].as_str().unwrap().contains("userID"), "{typo}");
    let not_json = server.post("/events/UserRegistered", "{").await.problem(400);
    assert_eq!(not_json["violations"].as_array().unwrap().len(), 1, "{not_json}");
    let rules = server.post("/messaging/user-notification", r#"{"userId": "0", "message": ""}"#).await.problem(400);
    assert_eq!(
        rules["violations"],
        json!([
            { "field": "user_id", "problem": "must be at least 1" },
            { "field": "message", "problem": "is required (must be set, non-empty and non-zero)" },
        ]),
        "{rules}"
    );

    // The seed's path publishes the contract's event.
    let mut notifications = bus.watch(&catalog.exchange("notifications").unwrap(), "user.*").await.unwrap();
    let alias =
        server.post("/messaging/user-notification", r#"{"userId": "7", "message": "your order is ready"}"#).await;
    assert_eq!(alias.status, 202, "{}", alias.text);
    let seen = notifications.next_within(Duration::from_secs(10)).await.expect("the notification arrives");
    assert_eq!(seen.message.properties.kind.as_deref(), Some("streaming.v1.UserNotification"));
    seen.ack().await.unwrap();
    notifications.close().await;

    // Other content types are refused.
    let text = server.http.post(server.url("/events/UserRegistered")).header("content-type", "text/plain").body(ADA);
    support::Answer::of(text).await.problem(415);

    // Tasks go to their work queue.
    let task = server.post("/tasks/BackgroundTask", r#"{"taskId": "1", "description": "reindex"}"#).await;
    assert_eq!(task.status, 202, "{}", task.text);
    assert_eq!(bus.queue_depth("gametrade.tasks").await.unwrap(), 1);
    server.post("/tasks/ProcessOrder", "{}").await.problem(404);

    // A closed bus: 503 with Retry-After, and not ready.
    bus.close().await.unwrap();
    let unavailable = server.post("/events/UserRegistered", ADA).await;
    let body = unavailable.problem(503);
    assert_eq!(unavailable.header("retry-after"), "5");
    assert!(body["detail"].as_str().unwrap().contains("closed"), "{body}");
    // The in-memory bus reports itself connected even once closed (its health is always Connected).
    if h.transport == warren_tests::Transport::RabbitMq {
        assert_eq!(body["bus"]["state"], "closed", "{body}");
        let ready = server.get("/ready").await;
        assert_eq!(ready.status, 503, "{}", ready.text);
        assert_eq!(ready.header("retry-after"), "5");
        assert_eq!(ready.json()["bus"]["state"], "closed");
    }
    assert_eq!(server.get("/health").await.status, 200, "the process is still up");
    server.stop().await;
}

async fn bodies_over_the_bus_limit_are_413(h: &Harness) {
    let bus = h.bus_with(h.config("gateway").max_message_size(1024)).await;
    let server = Server::start(bus, config()).await;
    let big = json!({ "userId": "7", "username": "x".repeat(2000), "email": "a@b.c" }).to_string();
    let too_large = server.post("/events/UserRegistered", &big).await.problem(413);
    assert_eq!(too_large["limit"], 1024);
    // Without a length up front (chunked), the limit holds as the body is read.
    let chunks = futures_util::stream::iter((0..4).map(|_| Ok::<_, std::io::Error>(vec![b' '; 600])));
    let request = server
        .http
        .post(server.url("/events/UserRegistered"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks));
    support::Answer::of(request).await.problem(413);
    server.stop().await;
}

async fn methods_answer_replies_declared_errors_and_statuses(h: &Harness) {
    let bus = h.bus("gateway").await;
    let serving = IntSummatorServer::new(warren_tests::Summator).serve(&bus).await.unwrap();
    let server = Server::start(bus.clone(), config()).await;

    let sum = server.post("/rpc/IntSummator/IntSum", r#"{"a": "2", "b": "3"}"#).await;
    assert_eq!(sum.status, 200, "{}", sum.text);
    assert_eq!(sum.json(), json!({ "sum": "5" }));
    let full = server.post("/rpc/at.v1.IntSummator/IntSum", r#"{"a": 1, "b": 1}"#).await;
    assert_eq!(full.json(), json!({ "sum": "2" }));

    let overflow = server.post("/rpc/IntSummator/IntSum", r#"{"a": "9223372036854775807", "b": "1"}"#).await;
    let body = overflow.problem(422);
    assert_eq!(body["error"], "at.v1.IntSumError");
    assert_eq!(body["details"]["overflow"]["a"], "9223372036854775807");

    server.post("/rpc/IntSummator/Nope", "{}").await.problem(404);
    server.post("/rpc/IntSummator/IntSum", r#"{"c": 1}"#).await.problem(400);
    let bad_timeout = server
        .http
        .post(server.url("/rpc/IntSummator/IntSum"))
        .header("x-warren-timeout", "soon")
        .body(r#"{"a": "1", "b": "1"}"#);
    support::Answer::of(bad_timeout).await.problem(400);

    // Nobody serves: the deadline asked for (bounded by the contract's) passes, as grpc-gateway's 504.
    serving.stop().await;
    let started = std::time::Instant::now();
    let late = server
        .http
        .post(server.url("/rpc/IntSummator/IntSum"))
        .header("x-warren-timeout", "300ms")
        .body(r#"{"a": "1", "b": "1"}"#);
    let late = support::Answer::of(late).await;
    let body = late.problem(504);
    assert_eq!(body["code"], "DEADLINE_EXCEEDED");
    assert!(started.elapsed() < Duration::from_secs(5), "the header's deadline applied");
    let grpc = server
        .http
        .post(server.url("/rpc/IntSummator/IntSum"))
        .header("grpc-timeout", "200m")
        .body(r#"{"a": "1", "b": "1"}"#);
    support::Answer::of(grpc).await.problem(504);
    server.stop().await;
}

async fn an_http_callers_trace_context_continues_through_the_broker(h: &Harness) {
    let bus = h.bus("gateway").await;
    let server = Server::start(bus.clone(), config()).await;
    let catalog = warren_reflect::Catalog::from_descriptor_set(warren_contracts::FILE_DESCRIPTOR_SET).unwrap();
    let mut tail = bus.watch(&catalog.exchange("gametrade.events").unwrap(), "user.*").await.unwrap();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traced = server
        .http
        .post(server.url("/events/UserRegistered"))
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .header("tracestate", "vendor=1")
        .body(ADA);
    assert_eq!(support::Answer::of(traced).await.status, 202);
    let seen = tail.next_within(Duration::from_secs(10)).await.expect("the traced event arrives");
    let parent = seen.message.header_str("traceparent").expect("the trace context travels").to_owned();
    assert_eq!(&parent[3..35], trace_id, "the HTTP caller's trace: {parent}");
    assert_eq!(seen.message.header_str("tracestate"), Some("vendor=1"));
    seen.ack().await.unwrap();

    // A value longer than W3C allows is not passed on.
    let forged = server
        .http
        .post(server.url("/events/UserRegistered"))
        .header("content-type", "application/json")
        .header("traceparent", "0".repeat(300))
        .body(ADA);
    assert_eq!(support::Answer::of(forged).await.status, 202);
    let seen = tail.next_within(Duration::from_secs(10)).await.expect("the event arrives");
    assert_eq!(seen.message.header_str("traceparent"), None);
    seen.ack().await.unwrap();
    tail.close().await;
    server.stop().await;
}

/// A service on a quorum queue (`trading.v1.RiskGate`): the gateway's caller declares the request queue as the
/// contract says, as the server does (RabbitMQ would refuse a classic declaration of it), and the call answers.
async fn a_service_on_a_quorum_queue_is_called(h: &Harness) {
    let bus = h.bus("gateway").await;
    let serving = warren_contracts::trading::v1::RiskGateServer::new(warren_tests::RiskDesk).serve(&bus).await.unwrap();
    let config = GatewayConfig::from_toml(r#"services = ["trading.v1.RiskGate/CheckOrder"]"#, "test").unwrap();
    let server = Server::start(bus.clone(), config).await;
    let order = r#"{"symbol": "BTCUSDT", "side": "SIDE_SELL", "quantity": 100, "price": 50000}"#;
    let verdict = server.post("/rpc/RiskGate/CheckOrder", order).await;
    assert_eq!(verdict.status, 200, "{}", verdict.text);
    assert_eq!(verdict.json()["approved"], json!(null), "false is left out, as the proto3 JSON mapping does");
    assert!(verdict.json()["reason"].as_str().unwrap().contains("over the limit"), "{}", verdict.text);
    serving.stop().await;
    server.stop().await;
}

on_both_transports!(
    a_service_on_a_quorum_queue_is_called,
    an_http_callers_trace_context_continues_through_the_broker,
    events_are_published_with_confirm_and_refused_with_reasons,
    bodies_over_the_bus_limit_are_413,
    methods_answer_replies_declared_errors_and_statuses,
);

/// A broker that stops answering without closing anything (a network that drops packets, through a relay that
/// holds every byte): the publish gets no confirm, and the caller gets 504 at the bus's publish deadline, not a
/// hang. Once the network is back, the same gateway publishes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_whose_confirm_never_comes_is_504_at_the_deadline() {
    let h = Harness::rabbitmq().await;
    let (relay, url) = warren_tests::faults::Relay::in_front_of(h.url());
    let publish_timeout = Duration::from_millis(1500);
    let stalling = warren::BusConfig::new(&url).unwrap().service_name("gateway-stall");
    let bus = h.bus_with(stalling.operation_timeout(Duration::from_millis(800)).publish_timeout(publish_timeout)).await;
    let catalog = warren_reflect::Catalog::from_descriptor_set(warren_contracts::FILE_DESCRIPTOR_SET).unwrap();
    let mut tail = bus.watch(&catalog.exchange("gametrade.events").unwrap(), "user.*").await.unwrap();
    let server = Server::start(bus.clone(), config()).await;
    assert_eq!(server.post("/events/UserRegistered", ADA).await.status, 202, "published before the stall");

    relay.freeze(true);
    let started = std::time::Instant::now();
    let stalled = server.post("/events/UserRegistered", ADA).await.problem(504);
    let took = started.elapsed();
    assert_eq!(stalled["type"], "urn:warren:problem:timeout", "{stalled}");
    assert!(stalled["detail"].as_str().unwrap().contains("publish"), "{stalled}");
    assert!(took >= publish_timeout && took < publish_timeout + Duration::from_secs(3), "answered after {took:?}");

    relay.freeze(false);
    support::eventually(30, "a publish after the stall", || async {
        server.post("/events/UserRegistered", ADA).await.status == 202
    })
    .await;
    let first = tail.next_within(Duration::from_secs(10)).await.expect("the event before the stall");
    first.ack().await.unwrap();
    tail.close().await;
    server.stop().await;
}

/// A body that trickles in, or stops coming, is answered 408 at `body_timeout_ms`: it holds neither the request
/// nor a shutdown for ever.
#[tokio::test]
async fn a_body_that_stops_coming_is_408_at_its_timeout() {
    let mut config = config();
    config.body_timeout_ms = Some(300);
    let server = Server::start(warren::Bus::in_memory(), config).await;
    let first = futures_util::stream::iter([Ok::<_, std::io::Error>(b"{\"userId\": ".to_vec())]);
    let stalled = futures_util::StreamExt::chain(first, futures_util::stream::pending());
    let request = server
        .http
        .post(server.url("/events/UserRegistered"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stalled));
    let started = std::time::Instant::now();
    let problem = tokio::time::timeout(Duration::from_secs(10), support::Answer::of(request))
        .await
        .expect("answered, not held")
        .problem(408);
    assert!(started.elapsed() >= Duration::from_millis(300), "not before the timeout");
    assert!(problem["detail"].as_str().unwrap().contains("body_timeout_ms"), "{problem}");
    assert_eq!(server.get("/health").await.status, 200, "the next request is served");
    server.stop().await;
}

#[tokio::test]
async fn tokens_guard_their_groups_and_health_stays_open() {
    let mut config = config();
    config.tokens.add(warren_gateway::Group::Publish, "pub-token");
    config.tokens.add(warren_gateway::Group::Call, "call-token");
    config.tokens.add(warren_gateway::Group::Docs, "docs-token");
    let server = Server::start(warren::Bus::in_memory(), config).await;

    let missing = server.post("/events/UserRegistered", ADA).await;
    missing.problem(401);
    assert_eq!(missing.header("www-authenticate"), "Bearer realm=\"warren-gateway\"");
    let wrong = server.http.post(server.url("/events/UserRegistered")).bearer_auth("call-token").body(ADA);
    support::Answer::of(wrong).await.problem(401);
    // The token is checked before the type: a not-allowed type tells nothing without one.
    server.post("/events/gametrade.v1.UserActivated", "{}").await.problem(401);
    let right = server.http.post(server.url("/events/UserRegistered")).bearer_auth("pub-token").body(ADA);
    support::Answer::of(right).await.problem(422);

    server.post("/rpc/IntSummator/IntSum", "{}").await.problem(401);
    server.get("/openapi.json").await.problem(401);
    server.get("/catalog").await.problem(401);
    let docs = Server::get_with(&server, "/openapi.json", "docs-token").await;
    assert_eq!(docs.status, 200);
    assert_eq!(docs.json()["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    assert_eq!(server.get("/health").await.status, 200);
    assert_eq!(server.get("/ready").await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn health_ready_catalog_and_asyncapi_answer() {
    let server = Server::start(warren::Bus::in_memory(), config()).await;
    let health = server.get("/health").await;
    assert_eq!((health.status, health.json()), (200, json!({ "status": "ok" })));
    let seed = server.get("/messaging/health").await;
    assert_eq!((seed.status, seed.json()), (200, json!({ "status": "ok" })), "the seed's health path");
    let ready = server.get("/ready").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["bus"]["state"], "connected");

    let catalog = server.get("/catalog").await.json();
    let events: Vec<&str> = catalog["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(events.contains(&"gametrade.v1.UserRegistered") && events.contains(&"streaming.v1.SystemEvent"));
    assert!(!events.contains(&"gametrade.v1.UserActivated"), "only what is allowed is listed: {events:?}");
    assert_eq!(catalog["methods"][0]["path"], "/rpc/at.v1.IntSummator/IntSum");
    assert_eq!(catalog["aliases"]["/messaging/user-notification"], "streaming.v1.UserNotification");

    let asyncapi = server.get("/asyncapi.yaml").await;
    assert_eq!(asyncapi.status, 200);
    assert_eq!(asyncapi.header("content-type"), "application/yaml");
    assert!(asyncapi.text.contains("\nasyncapi: 3.0.0\n"), "{}", &asyncapi.text[..80]);

    // Without metrics in its configuration (or without the feature) a gateway has no /metrics.
    server.get("/metrics").await.problem(404);
    server.stop().await;
}

impl Server {
    async fn get_with(&self, path: &str, token: &str) -> support::Answer {
        support::Answer::of(self.http.get(self.url(path)).bearer_auth(token)).await
    }
}

#[cfg(feature = "prometheus")]
#[tokio::test]
async fn metrics_are_served_with_the_prometheus_feature() {
    let metrics = warren_gateway::Metrics::new();
    let bus =
        warren::Bus::with_config(warren::BusConfig::in_memory().middleware(metrics.layer().clone())).await.unwrap();
    let mut config = config();
    config.metrics = Some(metrics);
    let server = Server::start(bus.clone(), config).await;
    let catalog = warren_reflect::Catalog::from_descriptor_set(warren_contracts::FILE_DESCRIPTOR_SET).unwrap();
    let _tail = bus.watch(&catalog.exchange("gametrade.events").unwrap(), "user.*").await.unwrap();
    assert_eq!(server.post("/events/UserRegistered", ADA).await.status, 202);
    let metrics = server.get("/metrics").await;
    assert_eq!(metrics.status, 200, "{}", metrics.text);
    assert!(metrics.header("content-type").starts_with("application/openmetrics-text"));
    assert!(metrics.text.contains("warren_published_total"), "{}", metrics.text);
    // The gateway's own: the publish above and a 404, by route template and status, never by path.
    assert_eq!(server.post("/events/NoSuchEvent", ADA).await.status, 404);
    let metrics = server.get("/metrics").await;
    for line in [
        r#"warren_gateway_requests_total{route="/events/{type}",status="202"} 1"#,
        r#"warren_gateway_requests_total{route="/events/{type}",status="404"} 1"#,
        r#"warren_gateway_request_seconds_count{route="/events/{type}"} 2"#,
        "warren_gateway_websocket_clients 0",
        "warren_gateway_websocket_slow_disconnects_total 0",
    ] {
        assert!(metrics.text.lines().any(|l| l == line), "no line {line} in:\n{}", metrics.text);
    }
    assert!(!metrics.text.contains("NoSuchEvent"), "label values are route templates");
    server.stop().await;
}
