//! Typed RPC over the real RabbitMQ: success across connections, typed errors, bad input, deadlines.

use std::time::{Duration, Instant};

use warren::{Code, RpcContext, Status};
use warren_contracts::at::v1::{IntSumRequest, IntSumResponse, IntSummator, IntSummatorClient, IntSummatorServer};
use warren_tests::{bus, within};

/// The AT_QUEUE IntSummator component.
struct Summator;

impl IntSummator for Summator {
    async fn int_sum(&self, request: IntSumRequest, _: RpcContext) -> Result<IntSumResponse, Status> {
        let sum = request
            .a
            .checked_add(request.b)
            .ok_or_else(|| Status::invalid_argument(format!("{} + {} overflows int64", request.a, request.b)))?;
        Ok(IntSumResponse { sum })
    }
}

// One test owns the shared `at.IntSummator` queue at a time: the tests below run one after another.
#[tokio::test]
async fn int_summator_over_the_bus() {
    a_call_across_two_connections_returns_the_sum().await;
    garbage_bytes_are_answered_with_invalid_argument().await;
    a_call_nobody_serves_fails_with_a_deadline_error_on_time().await;
}

async fn a_call_across_two_connections_returns_the_sum() {
    let server_bus = bus("int-summator").await;
    let client_bus = bus("sum-requester").await;
    let serving = IntSummatorServer::new(Summator).serve(&server_bus).await.unwrap();
    let client = IntSummatorClient::new(&client_bus);

    let reply = within(10, "int_sum reply", client.int_sum(IntSumRequest { a: 5, b: 18 })).await.unwrap();
    assert_eq!(reply.sum, 23);

    // A server-side Status reaches the caller with its code and message.
    let status = client.int_sum(IntSumRequest { a: i64::MAX, b: 1 }).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("overflows"), "{status}");

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

async fn garbage_bytes_are_answered_with_invalid_argument() {
    let server_bus = bus("int-summator").await;
    let serving = IntSummatorServer::new(Summator).serve(&server_bus).await.unwrap();

    // A hand-made client on the raw lapin API: send bytes that are not an IntSumRequest.
    let url = std::env::var("RABBITMQ_URL").unwrap_or_else(|_| warren::DEFAULT_URL.to_owned());
    let connection = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut replies = channel
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "".into(),
            lapin::options::BasicConsumeOptions { no_ack: true, ..Default::default() },
            Default::default(),
        )
        .await
        .unwrap();
    channel
        .basic_publish(
            "".into(),
            "at.IntSummator".into(),
            Default::default(),
            b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01 not protobuf",
            lapin::BasicProperties::default()
                .with_type("/at.v1.IntSummator/IntSum".into())
                .with_reply_to("amq.rabbitmq.reply-to".into())
                .with_correlation_id("garbage-1".into()),
        )
        .await
        .unwrap();
    use futures_util::StreamExt;
    let reply = within(10, "a reply to garbage", replies.next()).await.unwrap().unwrap();
    let headers = reply.properties.headers().clone().unwrap_or_default();
    let code = match headers.inner().get("warren-status") {
        Some(lapin::types::AMQPValue::LongInt(code)) => *code,
        other => panic!("reply without a status code: {other:?}"),
    };
    assert_eq!(Code::from_i32(code), Code::InvalidArgument);
    assert_eq!(reply.properties.correlation_id().as_ref().map(|c| c.as_str()), Some("garbage-1"));
    let _ = connection.close(200, "done".into()).await;
    serving.stop().await;
}

async fn a_call_nobody_serves_fails_with_a_deadline_error_on_time() {
    let client_bus = bus("sum-requester").await;
    let deadline = Duration::from_millis(800);
    let client = IntSummatorClient::new(&client_bus).with_timeout(deadline);
    let started = Instant::now();
    let status = client.int_sum(IntSumRequest { a: 1, b: 2 }).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status}");
    assert!(took >= deadline, "gave up early, after {took:?}");
    assert!(took <= deadline.mul_f64(1.2), "took {took:?}, more than the deadline + 20%");
}
