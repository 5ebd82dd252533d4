//! RPC: success across connections, server errors, concurrent calls, wrong argument types, deadlines.

use std::time::Duration;

use warren::{Code, RpcError};
use warren_contracts::at::v1::int_sum_error::Reason;
use warren_contracts::at::v1::{IntSumRequest, IntSumResponse, IntSummatorClient, IntSummatorServer, Overflow};
use warren_tests::{Harness, RiskDesk, Summator, within};

/// What AT_QUEUE's SumRequester sends when it gets the types wrong: `a` as a string.
#[derive(Clone, PartialEq, prost::Message)]
struct WrongArguments {
    #[prost(string, tag = "1")]
    a: String,
}

impl warren::Payload for WrongArguments {
    const TYPE_NAME: &'static str = "at.v1.IntSumRequest";
}

// The RabbitMQ variant shares the contract's queue `at.IntSummator` with every other user of the broker, so
// its steps run one after another inside one test.
async fn int_summator_over_the_bus(h: &Harness) {
    a_call_across_two_connections_returns_the_sum(h).await;
    a_wrong_argument_type_is_answered_with_invalid_argument(h).await;
    a_call_nobody_serves_fails_with_a_deadline_error_on_time(h).await;
    a_panicking_handler_is_answered_internal_and_the_server_goes_on(h).await;
    a_handler_still_running_at_the_deadline_is_abandoned_and_frees_its_slot(h).await;
}

async fn a_call_across_two_connections_returns_the_sum(h: &Harness) {
    let server_bus = h.bus("int-summator").await;
    let client_bus = h.bus("sum-requester").await;
    let serving = IntSummatorServer::new(Summator).serve(&server_bus).await.unwrap();
    let client = IntSummatorClient::new(&client_bus);

    let reply = within(10, "int_sum reply", client.int_sum(IntSumRequest { a: 5, b: 18 })).await.unwrap();
    assert_eq!(reply.sum, 23);

    // A declared error reaches the caller typed, with its details.
    let error = client.int_sum(IntSumRequest { a: i64::MAX, b: 1 }).await.unwrap_err();
    assert_eq!(error, RpcError::Service(Reason::Overflow(Overflow { a: i64::MAX, b: 1 })), "{error}");

    // Many calls in flight at once are matched to their replies by correlation id.
    let calls = (0..50).map(|i| {
        let client = client.clone();
        async move { client.int_sum(IntSumRequest { a: i, b: 1000 }).await.map(|r| (i, r.sum)) }
    });
    for result in futures_util::future::join_all(calls).await {
        let (i, sum) = result.unwrap();
        assert_eq!(sum, i + 1000);
    }
    serving.stop().await;
}

async fn a_wrong_argument_type_is_answered_with_invalid_argument(h: &Harness) {
    let server_bus = h.bus("int-summator").await;
    let serving = IntSummatorServer::new(Summator).serve(&server_bus).await.unwrap();
    let client = warren::RpcClient::new(&h.bus("sum-requester").await, IntSummatorClient::SERVICE);
    const INT_SUM: warren::__codegen::MethodSpec = warren::__codegen::MethodSpec {
        service: IntSummatorClient::SERVICE,
        name: "IntSum",
        path: "/at.v1.IntSummator/IntSum",
        timeout: None,
    };
    let status = within(10, "a reply", client.call::<_, IntSumResponse>(&INT_SUM, &WrongArguments { a: "5".into() }))
        .await
        .expect_err("a string where int64 belongs does not decode");
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");
    assert!(status.message().contains("IntSumRequest"), "the message names the expected type: {status}");
    serving.stop().await;
}

async fn a_call_nobody_serves_fails_with_a_deadline_error_on_time(h: &Harness) {
    let client_bus = h.bus("sum-requester").await;
    let deadline = Duration::from_millis(800);
    let client = IntSummatorClient::new(&client_bus).with_timeout(deadline);
    let started = tokio::time::Instant::now();
    let status = client.int_sum(IntSumRequest { a: 1, b: 2 }).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status}");
    assert!(took >= deadline, "gave up early, after {took:?}");
    assert!(took <= deadline + Duration::from_secs(1), "took {took:?}, more than the deadline + 1 s");
}

/// Sums, but panics on `a == 13`.
struct Unlucky;

impl warren_contracts::at::v1::IntSummator for Unlucky {
    async fn int_sum(&self, request: IntSumRequest, _: warren::RpcContext) -> Result<IntSumResponse, RpcError<Reason>> {
        assert_ne!(request.a, 13, "unlucky");
        Ok(IntSumResponse { sum: request.a + request.b })
    }
}

async fn a_panicking_handler_is_answered_internal_and_the_server_goes_on(h: &Harness) {
    let serving = IntSummatorServer::new(Unlucky).serve(&h.bus("int-summator").await).await.unwrap();
    let client = IntSummatorClient::new(&h.bus("sum-requester").await);
    let status = within(10, "a reply", client.int_sum(IntSumRequest { a: 13, b: 1 })).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status}");
    assert!(status.to_string().contains("panicked"), "{status}");
    // The server goes on.
    for a in 0..3 {
        let reply = within(10, "a reply", client.int_sum(IntSumRequest { a, b: 1 })).await.unwrap();
        assert_eq!(reply.sum, a + 1);
    }
    serving.stop().await;
}

/// Sums, but never returns on `a == 99`; says when such a handler is dropped.
struct Stuck(tokio::sync::mpsc::UnboundedSender<()>);

/// Sends on drop.
struct Dropped(tokio::sync::mpsc::UnboundedSender<()>);

impl Drop for Dropped {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

impl warren_contracts::at::v1::IntSummator for Stuck {
    async fn int_sum(&self, request: IntSumRequest, _: warren::RpcContext) -> Result<IntSumResponse, RpcError<Reason>> {
        if request.a == 99 {
            let _dropped = Dropped(self.0.clone());
            std::future::pending::<()>().await;
        }
        Ok(IntSumResponse { sum: request.a + request.b })
    }
}

async fn a_handler_still_running_at_the_deadline_is_abandoned_and_frees_its_slot(h: &Harness) {
    let (tx, mut dropped) = tokio::sync::mpsc::unbounded_channel();
    let serving = IntSummatorServer::new(Stuck(tx)).concurrency(1).serve(&h.bus("int-summator").await).await.unwrap();
    let client = IntSummatorClient::new(&h.bus("sum-requester").await);
    let short = client.clone().with_timeout(Duration::from_millis(300));
    let status = within(10, "the deadline", short.int_sum(IntSumRequest { a: 99, b: 1 })).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status}");
    within(10, "the stuck handler to be dropped", dropped.recv()).await.expect("dropped at the caller's deadline");
    // Its one slot is free again.
    let client = client.with_timeout(Duration::from_secs(5));
    let reply = within(10, "a reply", client.int_sum(IntSumRequest { a: 1, b: 1 })).await.unwrap();
    assert_eq!(reply.sum, 2);
    serving.stop().await;
}

/// A server replies through the default exchange to the request's `reply_to`: a caller naming another
/// service's queue there would make the server write into it. It replies only to direct reply-to addresses and
/// server-named queues; a request with any other `reply_to` goes unanswered and is counted.
async fn a_request_whose_reply_to_names_another_queue_gets_no_reply(h: &Harness) {
    use prost::Message as _;
    let server_bus = h.bus("int-summator").await;
    let serving = IntSummatorServer::new(Summator).serve(&server_bus).await.unwrap();
    // Another service's work queue, holding one message of its own.
    let caller = h.bus("mallory").await;
    let victim = warren_tests::unique("victim");
    let own = warren::Encoded::new("at.v1.IntSumRequest", warren::WireFormat::Protobuf, vec![]);
    caller.enqueue_encoded(&victim, warren::QueueSettings::plain(false), &own, Default::default()).await.unwrap();
    assert_eq!(caller.queue_stats(&victim).await.unwrap().messages, 1);

    let request = IntSumRequest { a: 1, b: 2 }.encode_to_vec();
    let properties = warren::MessageProperties::default()
        .with_kind("/at.v1.IntSummator/IntSum")
        .with_content_type("application/x-protobuf")
        .with_message_id(warren_tests::unique("request"))
        .with_correlation_id("confused-deputy")
        .with_reply_to(victim.as_str());
    caller.publish_bytes("", "at.IntSummator", &request, properties).await.unwrap();
    within(10, "the request to be refused", async {
        while server_bus.metrics().await.rpc_reply_to_refused < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    // The server goes on answering ordinary calls (over direct reply-to).
    let client = IntSummatorClient::new(&h.bus("sum-requester").await);
    let reply = within(10, "int_sum reply", client.int_sum(IntSumRequest { a: 5, b: 18 })).await.unwrap();
    assert_eq!(reply.sum, 23);
    assert_eq!(caller.queue_stats(&victim).await.unwrap().messages, 1, "the server wrote nothing into {victim}");
    assert_eq!(server_bus.metrics().await.rpc_reply_to_refused, 1);
    serving.stop().await;
}

/// A service whose contract says `queue_type: QUORUM` is served from a quorum queue (on RabbitMQ, where the
/// type exists; the in-memory broker has one kind of queue) and answers as any other.
async fn a_quorum_service_is_served_from_a_quorum_queue(h: &Harness) {
    use warren_contracts::trading::v1::{OrderCheck, RiskGateClient, RiskGateServer, Side};
    assert!(RiskGateClient::SERVICE.quorum, "the contract asks for a quorum queue");
    let server_bus = h.bus("risk-gate").await;
    let serving = RiskGateServer::new(RiskDesk).serve(&server_bus).await.unwrap();
    if let Some(vhost) = h.vhost() {
        let listed = warren_tests::faults::rabbitmqctl(&[
            "list_queues",
            "-q",
            "--no-table-headers",
            "-p",
            vhost,
            "name",
            "type",
        ]);
        let kind = listed.lines().find_map(|line| line.strip_prefix("trading.risk-gate\t"));
        assert_eq!(kind.map(str::trim), Some("quorum"), "{listed}");
    }
    let client = RiskGateClient::new(&h.bus("strategy").await);
    let order =
        |quantity: f64| OrderCheck { symbol: "BTCUSDT".into(), side: Side::Buy as i32, quantity, price: 50_000.0 };
    let small = within(10, "a small order's verdict", client.check_order(order(2.0))).await.unwrap();
    assert!(small.approved && small.reason.is_empty(), "{small:?}");
    let big = within(10, "a big order's verdict", client.check_order(order(100.0))).await.unwrap();
    assert!(!big.approved && big.reason.contains("over the limit"), "{big:?}");
    serving.stop().await;
}

warren_tests::on_both_transports!(
    int_summator_over_the_bus,
    a_request_whose_reply_to_names_another_queue_gets_no_reply,
    a_quorum_service_is_served_from_a_quorum_queue,
);
