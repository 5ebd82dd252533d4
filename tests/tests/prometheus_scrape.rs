//! A known workload, then a real HTTP scrape of `warren::prometheus::serve`: every counter and every histogram's
//! count is exactly what the workload did, and the gauges sampled at the scrape (bus health, queue depth) are
//! what the broker holds, on RabbitMQ and in memory.
//!
//! The in-memory run uses the real clock (not the paused one of the conformance suite): the endpoint's read
//! deadline would otherwise be skipped to while the scrape waits on its socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
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

/// The lines of the gauges sampled at the scrape, sorted (a family's series come in no set order).
fn sampled(body: &str) -> Vec<String> {
    let gauges = ["warren_bus_up{", "warren_bus_state{", "warren_queue_depth{"];
    let mut lines: Vec<String> =
        body.lines().filter(|l| gauges.iter().any(|g| l.starts_with(g))).map(str::to_owned).collect();
    lines.sort_unstable();
    lines
}

/// `warren_bus_up` and `warren_bus_state` of a bus of service `service` in `state`, and `depths` as
/// `warren_queue_depth` lines, sorted.
fn expected_gauges(service: &str, state: &str, depths: &[(&str, u64)]) -> Vec<String> {
    let up = u8::from(matches!(state, "connected" | "degraded"));
    let mut lines = vec![format!(r#"warren_bus_up{{service="{service}"}} {up}"#)];
    for each in ["connected", "blocked", "degraded", "recovering", "failed", "closed"] {
        lines.push(format!(r#"warren_bus_state{{service="{service}",state="{each}"}} {}"#, u8::from(each == state)));
    }
    lines.extend(depths.iter().map(|(queue, depth)| format!(r#"warren_queue_depth{{queue="{queue}"}} {depth}"#)));
    lines.sort_unstable();
    lines
}

/// Publishes users 1 to 5 to a subscriber that fails user 3's first delivery (retried, then acked) and
/// every delivery of user 4 (retried, then dead-lettered: two attempts); makes one RPC call that succeeds
/// and one that ends in the contract's declared `Overflow` error; then scrapes.
async fn counts_of_a_known_workload_are_exact(h: &Harness) {
    let metrics = PrometheusLayer::new();
    let endpoint = warren::prometheus::serve("127.0.0.1:0", &metrics).await.unwrap();
    let bus = h.bus_with(h.config("prometheus-test").middleware(metrics.clone())).await;
    metrics.watch(&bus);

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
    // Requests for methods the server does not have, named by a plain client: counted under one label, not
    // one each (the `type` is the caller's to choose).
    for made_up in ["/at.v1.IntSummator/Nope", "/other.v1.Service/Call"] {
        let request = warren::MessageProperties::default().with_kind(made_up);
        bus.publish_bytes("", IntSummatorClient::SERVICE.queue, b"", request).await.unwrap();
    }
    let other = format!(r#"warren_rpc_server_seconds_count{{method="{}"}} 2"#, warren::OTHER_METHODS);
    within(30, "the made-up methods served", async {
        while !metrics.encode().lines().any(|l| l == other) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

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
        format!(r#"warren_rpc_server_calls_total{{method="{}",code="UNIMPLEMENTED"}} 2"#, warren::OTHER_METHODS),
        other,
    ];
    expected.sort_unstable();
    assert_eq!(counted, expected, "the whole scrape:\n{body}");
    assert_eq!(sampled(&body), expected_gauges("prometheus-test", "connected", &[(&queue, 0)]), "{body}");

    serving.stop().await;
    subscription.stop().await;
    endpoint.stop().await;
}

/// Four events for a subscriber that takes one at a time and holds the first: three wait in its queue, and the
/// scrape says so; once they are handled, none; once the bus is closed, it is down and its queue gone.
async fn health_and_queue_depth_are_sampled_at_each_scrape(h: &Harness) {
    let metrics = PrometheusLayer::new();
    let endpoint = warren::prometheus::serve("127.0.0.1:0", &metrics).await.unwrap();
    let bus = h.bus_with(h.config("depth-test").middleware(metrics.clone())).await;
    metrics.watch(&bus);
    let (started, mut handler_started) = mpsc::unbounded_channel();
    let release = Arc::new(Semaphore::new(0));
    let held = Arc::clone(&release);
    let subscription = UserRegistered::subscribe(&bus, &unique("deep"))
        .temporary()
        .prefetch(1)
        .concurrency(1)
        .handle(move |_: UserRegistered, _| {
            let _ = started.send(());
            let held = Arc::clone(&held);
            async move { held.acquire().await.map(|permit| permit.forget()).map_err(HandlerError::from) }
        })
        .await
        .unwrap();
    let queue = subscription.queue().to_owned();
    for user_id in 1..=4 {
        bus.publish(&UserRegistered { user_id, ..Default::default() }).await.unwrap();
    }
    within(10, "the first delivery", handler_started.recv()).await.unwrap();

    let waiting = expected_gauges("depth-test", "connected", &[(&queue, 3)]);
    within(30, "three messages waiting, scraped", async {
        while sampled(&scrape(&endpoint).await.1) != waiting {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    release.add_permits(4);
    bus.wait_handled::<UserRegistered>(4, Duration::from_secs(30)).await.unwrap();
    let (_, body) = within(30, "a scrape", scrape(&endpoint)).await;
    assert_eq!(sampled(&body), expected_gauges("depth-test", "connected", &[(&queue, 0)]), "{body}");

    within(30, "close", bus.close()).await.unwrap();
    let (_, body) = within(30, "a scrape", scrape(&endpoint)).await;
    assert_eq!(sampled(&body), expected_gauges("depth-test", "closed", &[]), "down, its queue gone:\n{body}");
    drop(subscription);
    endpoint.stop().await;
}

#[tokio::test]
async fn rabbitmq_health_and_queue_depth_are_sampled_at_each_scrape() {
    health_and_queue_depth_are_sampled_at_each_scrape(&Harness::rabbitmq().await).await;
}

#[tokio::test]
async fn in_memory_health_and_queue_depth_are_sampled_at_each_scrape() {
    health_and_queue_depth_are_sampled_at_each_scrape(&Harness::in_memory().await).await;
}

#[tokio::test]
async fn rabbitmq_counts_of_a_known_workload_are_exact() {
    counts_of_a_known_workload_are_exact(&Harness::rabbitmq().await).await;
}

#[tokio::test]
async fn in_memory_counts_of_a_known_workload_are_exact() {
    counts_of_a_known_workload_are_exact(&Harness::in_memory().await).await;
}
