//! Metadata: headers from publisher to handler and both ways on an RPC call, Warren's own names refused, the
//! caller's deadline on the server, and a server's concurrency.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use warren::{CallOptions, Code, Error, HeaderValue, MessageProperties, PublishOptions, RpcContext, RpcError};
use warren_contracts::at::v1::int_sum_error::Reason;
use warren_contracts::at::v1::{IntSumRequest, IntSumResponse, IntSummator, IntSummatorClient, IntSummatorServer};
use warren_contracts::gametrade::v1::UserRegistered;
use warren_tests::{Harness, unique, within};

use crate::{collect, next_in};

async fn headers_travel_from_publisher_to_handler_and_warrens_own_are_refused(h: &Harness) {
    let bus = h.bus("headers-test").await;
    let (subscription, mut rx) = collect(UserRegistered::subscribe(&bus, &unique("headers"))).await;
    let options = PublishOptions::new().header("tenant", "eu-1").header("hops", 3).header("trace", true);
    bus.publish_with(&UserRegistered { user_id: 1, ..Default::default() }, options).await.unwrap();
    let (_, ctx) = within(10, "the event with headers", rx.recv()).await.unwrap();
    assert_eq!(ctx.headers().get_str("tenant"), Some("eu-1"));
    assert_eq!(ctx.headers().get_i64("hops"), Some(3));
    assert_eq!(ctx.headers().get("trace"), Some(&HeaderValue::Bool(true)));

    for reserved in ["x-warren-reason", "Warren-Status", ""] {
        let options = PublishOptions::new().header(reserved, "forged");
        match bus.publish_with(&UserRegistered { user_id: 2, ..Default::default() }, options).await {
            Err(Error::Header { name, problem }) => {
                assert_eq!(name, reserved);
                assert!(problem.contains("reserved for Warren") || problem.contains("empty"), "{problem}");
            }
            other => panic!("header {reserved:?} is refused, got {other:?}"),
        }
    }
    // Nothing of the refused publishes arrived.
    bus.publish(&UserRegistered { user_id: 3, ..Default::default() }).await.unwrap();
    let (next, ctx) = within(10, "the next event", rx.recv()).await.unwrap();
    assert_eq!(next.user_id, 3);
    assert!(ctx.headers().is_empty(), "{:?}", ctx.headers());
    subscription.stop().await;
}

/// Echoes the caller's `tenant` header and reports how long the caller waits, in reply headers.
#[derive(Debug)]
struct Echo;

impl IntSummator for Echo {
    async fn int_sum(&self, request: IntSumRequest, ctx: RpcContext) -> Result<IntSumResponse, RpcError<Reason>> {
        let tenant = ctx.headers().get_str("tenant").unwrap_or("none").to_owned();
        ctx.reply_header("served-tenant", tenant).unwrap();
        let left = ctx.deadline().map(|d| d.saturating_duration_since(std::time::Instant::now()));
        ctx.reply_header("deadline-left-ms", left.map_or(-1, |d| d.as_millis() as i64)).unwrap();
        assert!(matches!(ctx.reply_header("warren-status", 0), Err(Error::Header { .. })), "reserved on replies too");
        Ok(IntSumResponse { sum: request.a + request.b })
    }
}

async fn rpc_headers_travel_both_ways_with_the_callers_deadline(h: &Harness) {
    let bus = h.bus("rpc-metadata").await;
    let serving = IntSummatorServer::new(Echo).serve(&bus).await.unwrap();
    let client = IntSummatorClient::new(&bus);
    let options = CallOptions::new().timeout(Duration::from_secs(3)).header("tenant", "eu-1");
    let response =
        within(10, "a call with options", client.int_sum_with(IntSumRequest { a: 1, b: 2 }, options)).await.unwrap();
    assert_eq!(response.message.sum, 3);
    assert_eq!(response.headers.get_str("served-tenant"), Some("eu-1"));
    let left = response.headers.get_i64("deadline-left-ms").unwrap();
    assert!((1_000..=3_000).contains(&left), "the server saw the caller's deadline: {left} ms left");
    assert!(response.headers.iter().all(|(name, _)| !name.starts_with("warren-")), "{:?}", response.headers);

    // The client was not consumed by the per-call options; its plain calls go on as before.
    assert_eq!(client.int_sum(IntSumRequest { a: 2, b: 2 }).await.unwrap().sum, 4);

    let forged = CallOptions::new().header("x-warren-deadline", 0);
    let error = client.int_sum_with(IntSumRequest { a: 1, b: 1 }, forged).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error}");
    serving.stop().await;
}

/// Counts the requests it handles.
#[derive(Debug, Clone, Default)]
struct Counting {
    handled: Arc<AtomicUsize>,
    running: Arc<AtomicUsize>,
    most_at_once: Arc<AtomicUsize>,
}

impl IntSummator for Counting {
    async fn int_sum(&self, request: IntSumRequest, _: RpcContext) -> Result<IntSumResponse, RpcError<Reason>> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_at_once.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.handled.fetch_add(1, Ordering::SeqCst);
        Ok(IntSumResponse { sum: request.a + request.b })
    }
}

async fn a_request_whose_deadline_passed_in_the_queue_is_answered_without_running(h: &Harness) {
    let bus = h.bus("late-requests").await;
    let counting = Counting::default();
    // A queue to receive the reply in: a subscriber's dead-letter queue, which nothing consumes. Not a reply
    // address, so the server must be told to reply there.
    let (subscription, _rx) = collect(UserRegistered::subscribe(&bus, &unique("late"))).await;
    let replies = format!("{}.dlq", subscription.queue());
    let serving = IntSummatorServer::new(counting.clone()).allow_reply_to(replies.as_str()).serve(&bus).await.unwrap();
    let past = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64 - 5_000;
    let body = prost::Message::encode_to_vec(&IntSumRequest { a: 1, b: 2 });
    let request = MessageProperties::default()
        .with_kind("/at.v1.IntSummator/IntSum")
        .with_message_id(uuid::Uuid::now_v7().to_string())
        .with_correlation_id("late-1")
        .with_reply_to(replies.as_str())
        .with_header("x-warren-deadline", past);
    bus.publish_bytes("", IntSummatorClient::SERVICE.queue, &body, request).await.unwrap();
    let reply = next_in(&bus, &replies).await;
    assert_eq!(reply.properties.correlation_id.as_deref(), Some("late-1"));
    assert_eq!(reply.header_i64("warren-status"), Some(i64::from(Code::DeadlineExceeded.as_i32())));
    assert_eq!(counting.handled.load(Ordering::SeqCst), 0, "the handler never ran");

    // A request in time is handled.
    let sum = IntSummatorClient::new(&bus).int_sum(IntSumRequest { a: 1, b: 2 }).await.unwrap().sum;
    assert_eq!((sum, counting.handled.load(Ordering::SeqCst)), (3, 1));
    serving.stop().await;
    subscription.stop().await;
}

async fn a_server_answers_at_most_its_concurrency_at_once(h: &Harness) {
    let bus = h.bus("concurrency-test").await;
    let counting = Counting::default();
    let serving = IntSummatorServer::new(counting.clone()).concurrency(2).serve(&bus).await.unwrap();
    let client = IntSummatorClient::new(&bus);
    let calls = (0..10).map(|i| {
        let client = client.clone();
        async move { client.int_sum(IntSumRequest { a: i, b: 0 }).await.map(|r| r.sum) }
    });
    let sums = within(30, "ten calls", futures_util::future::join_all(calls)).await;
    assert_eq!(sums.into_iter().collect::<Result<Vec<_>, _>>().unwrap(), (0..10).collect::<Vec<_>>());
    assert_eq!(counting.most_at_once.load(Ordering::SeqCst), 2, "two at once, no more");
    serving.stop_within(Duration::from_secs(5)).await;
}

warren_tests::on_both_transports!(
    headers_travel_from_publisher_to_handler_and_warrens_own_are_refused,
    rpc_headers_travel_both_ways_with_the_callers_deadline,
    a_request_whose_deadline_passed_in_the_queue_is_answered_without_running,
    a_server_answers_at_most_its_concurrency_at_once,
);
