//! A known workload, then a real HTTP scrape of `warren::prometheus::serve`: every counter and every histogram's
//! count is exactly what the workload did, on RabbitMQ and in memory.
//!
//! The in-memory run uses the real clock (not the paused one of the conformance suite): the endpoint's read
//! deadline would otherwise be skipped to while the scrape waits on its socket.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren::prometheus::{CONTENT_TYPE, PrometheusLayer};
use warren::{HandlerError, RetryPolicy};
use warren_contracts::at::v1::{IntSumRequest, IntSummatorClient, IntSummatorServer};
use warren_contracts::gametrade::v1::UserRegistered;
use warren_tests::{Harness, Summator, unique, within};

const EVENT: &str = "gametrade.v1.UserRegistered";
const METHOD: &str = "/at.v1.IntSummator/IntSum";

/// `GET /metrics` over a plain TCP connection: the status line, the headers and the body.
async fn scrape(endpoint: &warren::prometheus::MetricsEndpoint) -> (String, String) {
    let mut stream = TcpStream::connect(endpoint.local_addr()).await.expect("the endpoint listens");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head, a blank line and a body");
    (head.to_owned(), body.to_owned())
}

/// Publishes users 1 to 5 to a subscriber that fails user 3's first delivery (retried, then acked) and
/// every delivery of user 4 (retried, then dead-lettered: two attempts); makes one RPC call that succeeds
/// and one that ends in the contract's declared `Overflow` error; then scrapes.
async fn counts_of_a_known_workload_are_exact(h: &Harness) {
    let metrics = PrometheusLayer::new();
    let endpoint = warren::prometheus::serve("127.0.0.1:0", &metrics).await.unwrap();
    let bus = h.bus_with(h.config("prometheus-test").middleware(metrics.clone())).await;

    let failed_once = AtomicBool::new(false);
    let subscription = UserRegistered::subscribe(&bus, &unique("counted"))
        .temporary()
        .retry(RetryPolicy::exponential(2, Duration::from_millis(50)))
        .handle(move |event: UserRegistered, _| {
            let fail = match event.user_id {
                3 => !failed_once.swap(true, Ordering::SeqCst),
                4 => true,
                _ => false,
            };
            async move { if fail { Err(HandlerError::from("not this time")) } else { Ok(()) } }
        })
        .await
        .unwrap();
    let queue = subscription.queue().to_owned();
    for user_id in 1..=5 {
        bus.publish(&UserRegistered { user_id, ..Default::default() }).await.unwrap();
    }

    let serving = IntSummatorServer::new(Summator).serve(&bus).await.unwrap();
    let client = IntSummatorClient::new(&bus);
    assert_eq!(within(30, "a sum", client.int_sum(IntSumRequest { a: 1, b: 2 })).await.unwrap().sum, 3);
    let overflow = within(30, "an overflow", client.int_sum(IntSumRequest { a: i64::MAX, b: 1 })).await;
    assert!(overflow.is_err(), "i64::MAX + 1 overflows: {overflow:?}");

    // The handler's last return comes a moment before its delivery is settled and counted.
    let settled = format!(r#"warren_handled_total{{type="{EVENT}",queue="{queue}",outcome="dead_lettered"}} 1"#);
    let acked = format!(r#"warren_handled_total{{type="{EVENT}",queue="{queue}",outcome="acked"}} 4"#);
    within(30, "every delivery settled", async {
        while !metrics.encode().lines().any(|l| l == settled) || !metrics.encode().lines().any(|l| l == acked) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    let (head, body) = within(30, "a scrape", scrape(&endpoint)).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains(&format!("\r\nContent-Type: {CONTENT_TYPE}")), "{head}");
    assert!(body.ends_with("# EOF\n"), "{body}");

    // Every counter, every histogram's count and the gauge: nothing more, nothing less.
    let mut counted: Vec<&str> = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.contains("_total{") || l.contains("_seconds_count{") || l.contains("_in_flight{"))
        .collect();
    counted.sort_unstable();
    let mut expected = vec![
        format!(r#"warren_published_total{{type="{EVENT}",outcome="ok"}} 5"#),
        format!(r#"warren_publish_seconds_count{{type="{EVENT}"}} 5"#),
        acked,
        format!(r#"warren_handled_total{{type="{EVENT}",queue="{queue}",outcome="retried"}} 2"#),
        settled,
        format!(r#"warren_handle_failed_total{{type="{EVENT}",queue="{queue}"}} 3"#),
        format!(r#"warren_handle_seconds_count{{type="{EVENT}",queue="{queue}"}} 7"#),
        format!(r#"warren_handlers_in_flight{{type="{EVENT}",queue="{queue}"}} 0"#),
        format!(r#"warren_rpc_client_calls_total{{method="{METHOD}",code="OK"}} 1"#),
        format!(r#"warren_rpc_client_calls_total{{method="{METHOD}",code="UNKNOWN"}} 1"#),
        format!(r#"warren_rpc_client_seconds_count{{method="{METHOD}"}} 2"#),
        format!(r#"warren_rpc_server_calls_total{{method="{METHOD}",code="OK"}} 1"#),
        format!(r#"warren_rpc_server_calls_total{{method="{METHOD}",code="UNKNOWN"}} 1"#),
        format!(r#"warren_rpc_server_seconds_count{{method="{METHOD}"}} 2"#),
    ];
    expected.sort_unstable();
    assert_eq!(counted, expected, "the whole scrape:\n{body}");

    serving.stop().await;
    subscription.stop().await;
    endpoint.stop().await;
}

#[tokio::test]
async fn rabbitmq_counts_of_a_known_workload_are_exact() {
    counts_of_a_known_workload_are_exact(&Harness::rabbitmq().await).await;
}

#[tokio::test]
async fn in_memory_counts_of_a_known_workload_are_exact() {
    counts_of_a_known_workload_are_exact(&Harness::in_memory().await).await;
}
