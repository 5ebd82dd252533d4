//! Fault injection against RabbitMQ: nothing confirmed is lost, nothing hangs, bad input is dead-lettered.
//!
//! Each test publishes sequence numbers (as `UserRegistered::user_id`) and keeps a ledger; each prints it.
//! Faults that only touch the test's own connections run in a private vhost of the shared broker; stopping
//! the broker happens on a private node (`PrivateNode`) that the test starts and shuts down.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use warren::{Bus, BusConfig, Code, Error, HandlerError, Health, Outcome, RetryPolicy};
use warren_contracts::at::v1::{IntSumRequest, IntSummatorClient, IntSummatorServer};
use warren_contracts::gametrade::v1::UserRegistered;
use warren_tests::faults::{Ledger, PrivateNode, Relay, publish_lanes, rabbitmqctl, unacknowledged};
use warren_tests::{Harness, Summator, unique, within};

/// Warnings (reconnections, re-subscriptions) go to the test's output, to read alongside the ledger.
fn logs() {
    let _ = tracing_subscriber::fmt().with_env_filter("warren=info").with_test_writer().try_init();
}

/// Waits until the bus reports it is connected again.
async fn until_connected(bus: &Bus) {
    within(30, "health to be Connected", async {
        while !matches!(bus.health(), Health::Connected { .. }) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// The number a `rabbitmqctl list_queues … arguments` line gives queue argument `name`, e.g. 7 in
/// `[{"x-delivery-limit",7},…]`.
fn argument(line: &str, name: &str) -> Option<u32> {
    let (_, rest) = line.split_once(&format!("\"{name}\","))?;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// A child process killed (and reaped) when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl KillOnDrop {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

fn event(seq: i64) -> UserRegistered {
    UserRegistered { user_id: seq, username: format!("user-{seq}"), email: String::new() }
}

/// A subscriber that records every delivery in the ledger.
async fn recording(bus: &Bus, group: &str, ledger: &Arc<Ledger>) -> warren::Subscription {
    let ledger = Arc::clone(ledger);
    UserRegistered::subscribe(bus, group)
        .prefetch(256)
        .handle(move |event: UserRegistered, _| {
            ledger.consumed(event.user_id);
            std::future::ready(Ok::<_, HandlerError>(()))
        })
        .await
        .expect("subscribe")
}

/// A temporary subscriber in group `group` that sends each event's sequence number to the returned receiver.
async fn forwarding(bus: &Bus, group: &str) -> (warren::Subscription, tokio::sync::mpsc::UnboundedReceiver<i64>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let subscription = UserRegistered::subscribe(bus, &unique(group))
        .temporary()
        .handle(move |e: UserRegistered, _| std::future::ready(tx.send(e.user_id).map_err(HandlerError::from)))
        .await
        .expect("subscribe");
    (subscription, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_all_connections_twice_during_a_run_loses_nothing() {
    logs();
    let h = Harness::rabbitmq().await;
    let vhost = h.vhost().expect("a private vhost").to_owned();
    let bus = h.bus("fault-close-all").await;
    let ledger = Arc::new(Ledger::default());
    let subscription = recording(&bus, &unique("ledger"), &ledger).await;
    let n = 20_000;
    let publishing = tokio::spawn({
        let (bus, ledger) = (bus.clone(), Arc::clone(&ledger));
        async move { publish_lanes(&bus, 0..n, &ledger, event).await }
    });
    for at in [3_000, 10_000] {
        ledger.until_confirmed(at).await;
        let vhost = vhost.clone();
        tokio::task::spawn_blocking(move || rabbitmqctl(&["close_all_connections", "-p", &vhost, "fault injection"]))
            .await
            .unwrap();
    }
    within(120, "publishing", publishing).await.unwrap();
    ledger.drain(Duration::from_secs(60)).await;
    let verdict = ledger.assert_nothing_lost("close_all_connections x2");
    assert_eq!(verdict.confirmed as i64, n, "every publish was confirmed in the end (re-sent after recovery)");
    until_connected(&bus).await;
    let depth = bus.metrics().await.subscribers[subscription.queue()].queue_depth;
    assert_eq!(depth, Some(0), "the queue is drained");
    subscription.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_run_is_a_pause_not_an_outage() {
    logs();
    let node = tokio::task::spawn_blocking(PrivateNode::start).await.unwrap();
    let config =
        BusConfig::new(&node.url()).unwrap().service_name("fault-restart").publish_timeout(Duration::from_secs(60));
    let bus = Bus::with_config(config).await.expect("start RabbitMQ: the private node answers");
    let ledger = Arc::new(Ledger::default());
    let subscription = recording(&bus, "restart-ledger", &ledger).await;
    let n = 5_000;
    let publishing = tokio::spawn({
        let (bus, ledger) = (bus.clone(), Arc::clone(&ledger));
        async move { publish_lanes(&bus, 0..n, &ledger, event).await }
    });
    ledger.until_confirmed(1_000).await;
    let node = Arc::new(node);
    let stopped_at = Instant::now();
    let ctl = Arc::clone(&node);
    tokio::task::spawn_blocking(move || ctl.ctl(&["stop_app"])).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(matches!(bus.health(), Health::Recovering { .. }), "health shows the outage: {:?}", bus.health());
    tokio::time::sleep(Duration::from_secs(4)).await;
    let ctl = Arc::clone(&node);
    tokio::task::spawn_blocking(move || ctl.ctl(&["start_app"])).await.unwrap();
    within(120, "publishing", publishing).await.unwrap();
    ledger.drain(Duration::from_secs(60)).await;
    println!("outage and recovery took {:?}", stopped_at.elapsed());
    let verdict = ledger.assert_nothing_lost("stop_app 5 s, start_app");
    assert_eq!(verdict.confirmed as i64, n, "publishes rode out the restart");
    until_connected(&bus).await;
    subscription.stop().await;
    bus.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// A consumer acknowledges in batches (a quarter of its prefetch), and sends what it holds once no delivery has
/// come for a moment: a few messages, far fewer than a batch, are all acknowledged while it keeps running.
#[tokio::test]
async fn an_idle_consumer_sends_the_acknowledgements_it_holds() {
    let h = Harness::rabbitmq().await;
    let bus = h.bus("fault-idle-acks").await;
    let ledger = Arc::new(Ledger::default());
    let subscription = recording(&bus, &unique("idle-acks"), &ledger).await;
    let (vhost, queue) = (h.vhost().expect("a RabbitMQ harness has a vhost"), subscription.queue().to_owned());
    let all_acknowledged = || {
        within(10, "the idle consumer's acknowledgements to reach the broker", async {
            loop {
                let held = unacknowledged(vhost, &queue);
                if held == 0 {
                    break;
                }
                eprintln!("{held} still unacknowledged");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    // Three, one at a time: each delivery leaves the consumer idle, holding its ack.
    for seq in 0..3 {
        ledger.sent(seq);
        ledger.published(seq, bus.publish(&event(seq)).await.is_ok());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ledger.drain(Duration::from_secs(10)).await;
    ledger.assert_nothing_lost("idle consumer");
    all_acknowledged().await;
    // Then a burst of eight, still fewer than a batch: deliveries end waits early, and the last wait still ends
    // with the acks sent.
    let burst = (3..11).map(|seq| {
        ledger.sent(seq);
        let bus = bus.clone();
        async move { (seq, bus.publish(&event(seq)).await.is_ok()) }
    });
    for (seq, confirmed) in futures_util::future::join_all(burst).await {
        ledger.published(seq, confirmed);
    }
    ledger.drain(Duration::from_secs(10)).await;
    ledger.assert_nothing_lost("idle consumer after a burst");
    all_acknowledged().await;
    subscription.stop().await;
    bus.shutdown(Duration::from_secs(5)).await.expect("the bus shuts down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_mid_batch_leaves_its_messages_to_another() {
    let h = Harness::rabbitmq().await;
    let bus = h.bus("fault-kill").await;
    let group = unique("killed");
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_fault_consumer"))
            .env("RABBITMQ_URL", h.url())
            .env("GROUP", &group)
            .stdout(Stdio::piped())
            .spawn()
            .expect("the consumer process starts"),
    );
    // Its lines, read on a thread of their own, so that every wait for one has a deadline.
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stdout = child.0.stdout.take().unwrap();
    std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).try_for_each(|l| tx.send(l)));
    assert_eq!(within(30, "the consumer to be ready", lines.recv()).await.as_deref(), Some("ready"));
    let ledger = Arc::new(Ledger::default());
    for seq in 0..300 {
        ledger.sent(seq);
        ledger.published(seq, bus.publish(&event(seq)).await.is_ok());
    }
    // Let it handle some, then kill it: it holds up to its prefetch (50) unacknowledged.
    let mut handled_by_child = 0;
    while handled_by_child < 40 {
        let line = within(30, "the child to report", lines.recv()).await.expect("the child keeps reporting");
        let seq: i64 = line.strip_prefix("handled ").unwrap().parse().unwrap();
        ledger.consumed(seq);
        handled_by_child += 1;
    }
    child.kill();
    // What it wrote before it died: the pipe ends with it.
    while let Some(line) = within(30, "the child's last lines", lines.recv()).await {
        if let Some(seq) = line.strip_prefix("handled ") {
            ledger.consumed(seq.parse().unwrap());
        }
    }
    let redelivered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let rescuer = UserRegistered::subscribe(&bus, &group)
        .handle({
            let (ledger, redelivered) = (Arc::clone(&ledger), Arc::clone(&redelivered));
            move |event: UserRegistered, ctx| {
                ledger.consumed(event.user_id);
                if ctx.redelivered() {
                    redelivered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                std::future::ready(Ok::<_, HandlerError>(()))
            }
        })
        .await
        .unwrap();
    ledger.drain(Duration::from_secs(30)).await;
    ledger.assert_nothing_lost("consumer killed with SIGKILL");
    assert!(redelivered.load(std::sync::atomic::Ordering::Relaxed) > 0, "the killed consumer's messages came back");
    rescuer.stop().await;
}

#[tokio::test]
async fn a_handler_panicking_on_every_tenth_message_dead_letters_exactly_those() {
    let h = Harness::rabbitmq().await;
    let bus = h.bus("fault-panic").await;
    let ledger = Arc::new(Ledger::default());
    let subscription = UserRegistered::subscribe(&bus, &unique("panics"))
        .retry(RetryPolicy::exponential(2, Duration::from_millis(20)))
        .handle({
            let ledger = Arc::clone(&ledger);
            move |event: UserRegistered, _| {
                assert!(event.user_id % 10 != 0, "every tenth message panics");
                ledger.consumed(event.user_id);
                std::future::ready(Ok::<_, HandlerError>(()))
            }
        })
        .await
        .unwrap();
    for seq in 1..=200 {
        ledger.sent(seq);
        ledger.published(seq, bus.publish(&event(seq)).await.is_ok());
    }
    let dlq = format!("{}.dlq", subscription.queue());
    within(60, "twenty dead letters", async {
        let mut found = 0;
        while found < 20 {
            match bus.fetch(&dlq).await.unwrap() {
                Some(message) => {
                    let seq = <UserRegistered as prost::Message>::decode(message.body.as_slice()).unwrap().user_id;
                    assert_eq!(seq % 10, 0, "only the panicking messages are dead-lettered");
                    assert_eq!(message.header_i64("x-warren-attempts"), Some(2));
                    ledger.dead_lettered(seq);
                    found += 1;
                }
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    ledger.drain(Duration::from_secs(30)).await;
    let verdict = ledger.assert_nothing_lost("panic on every 10th");
    assert_eq!((verdict.consumed, verdict.dead_lettered), (180, 20));
    subscription.stop().await;
}

/// A broker that stops answering without closing anything (a network that drops packets) must not hang a
/// publish: it fails at its deadline, and once the network is back the bus publishes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_whose_confirm_never_comes_fails_at_its_deadline() {
    logs();
    let h = Harness::rabbitmq().await;
    let (relay, url) = Relay::in_front_of(h.url());
    let (operation, publish) = (Duration::from_millis(800), Duration::from_millis(1500));
    let config = BusConfig::new(&url).unwrap().service_name("fault-stall");
    let bus = h.bus_with(config.operation_timeout(operation).publish_timeout(publish)).await;
    let (subscription, mut rx) = forwarding(&bus, "stall").await;
    bus.publish(&event(1)).await.expect("published before the stall");

    relay.freeze(true);
    let stalled_events: Vec<UserRegistered> = (2..66).map(event).collect();
    let started = Instant::now();
    let stalled = within(
        10,
        "the stalled publishes",
        futures_util::future::join_all(stalled_events.iter().map(|e| bus.publish(e))),
    )
    .await;
    let took = started.elapsed();
    for result in &stalled {
        assert!(matches!(result, Err(Error::Timeout { .. })), "a stalled publish times out: {result:?}");
    }
    assert!(took >= publish && took < publish + operation + Duration::from_secs(1), "failed after {took:?}");

    relay.freeze(false);
    within(30, "a publish after the stall", async {
        while bus.publish(&event(100)).await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let mut seen = Vec::new();
    while !seen.contains(&100) {
        seen.push(within(10, "the deliveries", rx.recv()).await.unwrap());
    }
    assert_eq!(seen.first(), Some(&1), "{seen:?}");
    subscription.stop().await;
}

#[tokio::test]
async fn an_oversize_publish_is_refused_and_the_next_one_succeeds() {
    let h = Harness::rabbitmq().await;
    let bus = h.bus_with(h.config("fault-oversize").max_message_size(1024)).await;
    let (subscription, mut rx) = forwarding(&bus, "sizes").await;
    let huge = UserRegistered { user_id: 1, username: "x".repeat(4096), email: String::new() };
    match bus.publish(&huge).await {
        Err(Error::TooLarge { size, limit }) => assert!(size > limit && limit == 1024),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    bus.publish(&event(2)).await.expect("the publisher still works");
    assert_eq!(within(10, "the next message", rx.recv()).await, Some(2));
    subscription.stop().await;
}

#[tokio::test]
async fn a_publish_to_a_missing_exchange_is_a_typed_error_and_the_publisher_goes_on() {
    let h = Harness::rabbitmq().await;
    let bus = h.bus("fault-missing-exchange").await;
    let (subscription, mut rx) = forwarding(&bus, "after").await;
    let error = bus
        .publish_bytes("no-such-exchange", "key", b"payload", Default::default())
        .await
        .expect_err("the broker has no such exchange");
    assert!(matches!(&error, Error::ExchangeNotFound { exchange } if exchange == "no-such-exchange"), "{error:?}");
    bus.publish(&event(7)).await.expect("the publisher replaced its channel");
    assert_eq!(within(10, "the next message", rx.recv()).await, Some(7));
    subscription.stop().await;
}

#[tokio::test]
async fn rpc_callers_time_out_while_the_server_is_down_and_succeed_once_it_is_back() {
    let h = Harness::rabbitmq().await;
    let client = IntSummatorClient::new(&h.bus("fault-rpc-client").await).with_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let status = client.int_sum(IntSumRequest { a: 1, b: 2 }).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(started.elapsed() < Duration::from_millis(1_500), "on time: {:?}", started.elapsed());
    let server_bus = h.bus("fault-rpc-server").await;
    let serving = IntSummatorServer::new(Summator).serve(&server_bus).await.unwrap();
    let reply = within(10, "a reply", client.int_sum(IntSumRequest { a: 5, b: 18 })).await.unwrap();
    assert_eq!(reply.sum, 23, "the same client works once a server is up");
    serving.stop().await;
}

/// A call's deadline covers everything it waits for: opening the bus's reply path and declaring the service's
/// queue too, which wait on the broker (within the longer operation timeout) before the request is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_reply_path_cannot_open_fails_at_the_call_deadline() {
    let h = Harness::rabbitmq().await;
    let (relay, url) = Relay::in_front_of(h.url());
    let config =
        BusConfig::new(&url).unwrap().service_name("fault-reply-path").operation_timeout(Duration::from_secs(8));
    let bus = h.bus_with(config).await;
    // The first call opens the reply path: a channel and a consumer, which the frozen relay never answers.
    relay.freeze(true);
    let client = IntSummatorClient::new(&bus).with_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let status = within(20, "the call", client.int_sum(IntSumRequest { a: 1, b: 2 })).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status}");
    assert!(took < Duration::from_secs(2), "at the call's deadline, not the operation timeout's: {took:?}");
    relay.freeze(false);
    let server_bus = h.bus("fault-reply-path-server").await;
    let serving = IntSummatorServer::new(Summator).serve(&server_bus).await.unwrap();
    let client = IntSummatorClient::new(&bus).with_timeout(Duration::from_secs(5));
    let reply = within(30, "a call once the broker answers again", async {
        loop {
            match client.int_sum(IntSumRequest { a: 5, b: 18 }).await {
                Ok(reply) => break reply,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await;
    assert_eq!(reply.sum, 23);
    serving.stop().await;
}

#[tokio::test]
async fn connecting_to_a_broker_that_is_down_fails_at_its_deadline_saying_what_was_tried() {
    // Nothing listens on this loopback port.
    let config =
        BusConfig::new("amqp://guest:guest@127.0.0.1:5699/%2f").unwrap().connect_timeout(Duration::from_secs(2));
    let started = Instant::now();
    let error = Bus::with_config(config).await.expect_err("nothing answers");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1500) && took < Duration::from_secs(4), "gave up after {took:?}");
    match &error {
        Error::Connect { url, attempts, .. } => {
            assert_eq!(url, "amqp://guest:***@127.0.0.1:5699/%2f", "as given, password hidden");
            assert!(*attempts > 1, "it retried: {attempts} attempt(s)");
        }
        other => panic!("expected a Connect error, got {other:?}"),
    }
    assert!(error.to_string().contains("start RabbitMQ"), "{error}");
}

/// The broker cancels a consumer (its queue deleted) while the consumer's handler runs: lapin says so once, and
/// the subscriber must notice it however it next looks at its deliveries (it takes a ready one first, without
/// waiting), then declare the queue again and consume again.
#[tokio::test]
async fn a_queue_deleted_while_its_handler_runs_is_declared_again_once_the_handler_returns() {
    logs();
    let h = Harness::rabbitmq().await;
    let vhost = h.vhost().unwrap().to_owned();
    let bus = h.bus("fault-delete-busy").await;
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let (handled_tx, mut handled) = tokio::sync::mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Notify::new());
    let held = Arc::clone(&release);
    let subscription = UserRegistered::subscribe(&bus, &unique("busy-deleted"))
        .handle(move |event: UserRegistered, _| {
            let (started, handled, held) = (started_tx.clone(), handled_tx.clone(), Arc::clone(&held));
            async move {
                if event.user_id == 0 {
                    let _ = started.send(());
                    held.notified().await;
                }
                let _ = handled.send(event.user_id);
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();
    let queue = subscription.queue().to_owned();
    bus.publish(&event(0)).await.unwrap();
    within(10, "the first handler to start", started.recv()).await.unwrap();
    tokio::task::spawn_blocking(move || rabbitmqctl(&["delete_queue", "-p", &vhost, &queue])).await.unwrap();
    // The broker's basic.cancel reaches lapin while the handler still runs.
    tokio::time::sleep(Duration::from_millis(500)).await;
    release.notify_one();
    assert_eq!(within(10, "the first handler to return", handled.recv()).await, Some(0));
    let mut seq = 1;
    within(30, "the queue to be declared again", async {
        loop {
            match bus.publish(&event(seq)).await {
                Ok(()) => break,
                Err(Error::Unroutable { .. }) => {
                    seq += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(other) => panic!("{other:?}"),
            }
        }
    })
    .await;
    assert_eq!(within(10, "the event published once it was back", handled.recv()).await, Some(seq));
    subscription.stop().await;
}

#[tokio::test]
async fn a_queue_deleted_under_a_consumer_is_declared_again_and_consumption_resumes() {
    let h = Harness::rabbitmq().await;
    let vhost = h.vhost().unwrap().to_owned();
    let bus = h.bus("fault-delete-queue").await;
    let ledger = Arc::new(Ledger::default());
    let subscription = recording(&bus, &unique("deleted"), &ledger).await;
    let queue = subscription.queue().to_owned();
    for seq in 0..100 {
        ledger.sent(seq);
        ledger.published(seq, bus.publish(&event(seq)).await.is_ok());
    }
    ledger.drain(Duration::from_secs(30)).await;
    tokio::task::spawn_blocking(move || rabbitmqctl(&["delete_queue", "-p", &vhost, &queue])).await.unwrap();
    // Publishing right away may find no queue bound yet: wait until the consumer has declared it again.
    let mut seq = 100;
    within(30, "the queue to be back", async {
        loop {
            ledger.sent(seq);
            match bus.publish(&event(seq)).await {
                Ok(()) => {
                    ledger.published(seq, true);
                    break;
                }
                Err(Error::Unroutable { .. }) => {
                    ledger.published(seq, false);
                    seq += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(other) => panic!("{other:?}"),
            }
        }
    })
    .await;
    for next in seq + 1..seq + 101 {
        ledger.sent(next);
        ledger.published(next, bus.publish(&event(next)).await.is_ok());
    }
    ledger.drain(Duration::from_secs(30)).await;
    ledger.assert_nothing_lost("queue deleted under the consumer");
    subscription.stop().await;
}

#[tokio::test]
async fn quorum_queues_from_the_contract_always_carry_a_delivery_limit() {
    use warren_contracts::gametrade::v1::PaymentCompleted;
    let h = Harness::rabbitmq().await;
    let vhost = h.vhost().unwrap().to_owned();
    let bus = h.bus("fault-quorum").await;
    let group = unique("quorum");
    let subscription = PaymentCompleted::subscribe(&bus, &group)
        .handle(|_: PaymentCompleted, _| std::future::ready(Ok::<_, HandlerError>(())))
        .await
        .unwrap();
    // Another instance of the group, whose code retries otherwise, declares the queue identically: its
    // delivery limit is the contract's, not the code's.
    let other = PaymentCompleted::subscribe(&bus, &group)
        .retry(RetryPolicy::exponential(2, Duration::from_millis(20)))
        .handle(|_: PaymentCompleted, _| std::future::ready(Ok::<_, HandlerError>(())))
        .await
        .expect("a second instance with its own retry policy starts on the same queue");
    other.stop().await;
    let queue = subscription.queue().to_owned();
    let listed = tokio::task::spawn_blocking(move || {
        Command::new("rabbitmqctl").args(["list_queues", "-p", &vhost, "name", "type", "arguments"]).output().unwrap()
    })
    .await
    .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let line = listed.lines().find(|l| l.starts_with(&format!("{queue}\t"))).unwrap_or_else(|| panic!("{listed}"));
    assert!(line.contains("quorum"), "{line}");
    // The contract allows 5 attempts; the broker's own limit sits just above it.
    assert_eq!(argument(line, "x-delivery-limit"), Some(5 + warren_topology::DELIVERY_LIMIT_MARGIN), "{line}");
    // Its dead-letter queue is a quorum queue too: a classic one would live on one node, and a subscriber could
    // not start on another while that node is down.
    let dlq = format!("{queue}.dlq\t");
    let line = listed.lines().find(|l| l.starts_with(&dlq)).unwrap_or_else(|| panic!("{listed}"));
    assert!(line.contains("quorum"), "{line}");
    subscription.stop().await;
}

/// A dead-letter queue an earlier Warren declared as a classic queue stays as it is (with a warning): the
/// subscriber of a quorum contract starts, handles and dead-letters as before.
#[tokio::test]
async fn a_classic_dead_letter_queue_from_before_is_kept_and_the_subscriber_starts() {
    use warren_contracts::gametrade::v1::PaymentCompleted;
    logs();
    let h = Harness::rabbitmq().await;
    let group = unique("upgraded");
    let queue = format!("{group}.gametrade.v1.PaymentCompleted");
    let bus = h.bus("fault-upgrade").await;
    // As Warren before declared it: durable, classic, no arguments.
    let connection = lapin::Connection::connect(h.url(), lapin::ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let durable = lapin::options::QueueDeclareOptions { durable: true, ..Default::default() };
    let dlq = format!("{queue}.dlq");
    channel.queue_declare(dlq.as_str().into(), durable, Default::default()).await.unwrap();
    connection.close(200, "declared".into()).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let subscription = PaymentCompleted::subscribe(&bus, &group)
        .handle(move |event: PaymentCompleted, _| {
            let outcome = match event.payment_id.as_str() {
                "p-bad" => Outcome::DeadLetter { reason: "refused by the test".into() },
                _ => Outcome::Ack,
            };
            std::future::ready(tx.send(event.payment_id).map(|()| outcome).map_err(HandlerError::from))
        })
        .await
        .expect("the subscriber starts beside the classic dead-letter queue");
    assert_eq!(subscription.queue(), queue);
    for id in ["p-1", "p-bad"] {
        bus.publish(&PaymentCompleted { payment_id: id.into(), trade_id: 1, ..Default::default() }).await.unwrap();
        assert_eq!(within(10, "the event", rx.recv()).await.as_deref(), Some(id));
    }
    let dead = within(10, "the dead letter", async {
        loop {
            match bus.fetch(&dlq).await.unwrap() {
                Some(message) => break message,
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    assert_eq!(dead.header_str("x-warren-reason"), Some("refused by the test"));
    let vhost = h.vhost().unwrap().to_owned();
    let listed = tokio::task::spawn_blocking(move || {
        Command::new("rabbitmqctl").args(["list_queues", "-q", "-p", &vhost, "name", "type"]).output().unwrap()
    })
    .await
    .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let line = listed.lines().find(|l| l.starts_with(&format!("{dlq}\t"))).unwrap_or_else(|| panic!("{listed}"));
    assert!(line.ends_with("\tclassic"), "the classic dead-letter queue is kept as it was: {line}");
    subscription.stop().await;
}

/// After a reconnection the bus declares again what it declared: a declaration the broker now refuses (here
/// a queue someone redeclared with other arguments) is named in `health()`, and the rest is recovered; a
/// stopped subscriber's temporary queue is not declared again.
#[tokio::test]
async fn a_refused_redeclaration_is_named_in_health_and_the_rest_recovers() {
    use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
    use lapin::types::{AMQPValue, FieldTable};
    logs();
    let h = Harness::rabbitmq().await;
    let vhost = h.vhost().unwrap().to_owned();
    let bus = h.bus("fault-replay").await;
    bus.publish(&event(0)).await.unwrap_err(); // declares the exchange; nothing bound yet
    let (temporary, _rx) = within(10, "a temporary subscriber", async {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let subscription = UserRegistered::subscribe(&bus, &unique("gone"))
            .temporary()
            .handle(move |event: UserRegistered, _| {
                let _ = tx.send(event.user_id);
                async { Ok::<_, HandlerError>(()) }
            })
            .await
            .unwrap();
        (subscription, rx)
    })
    .await;
    let gone = temporary.queue().to_owned();
    temporary.stop().await;
    // A call declares the service's queue; nobody serves it.
    let client = IntSummatorClient::new(&bus).with_timeout(Duration::from_millis(100));
    client.int_sum(IntSumRequest { a: 1, b: 2 }).await.unwrap_err();

    // Someone else redeclares that queue with other arguments.
    let outsider = lapin::Connection::connect(h.url(), lapin::ConnectionProperties::default()).await.unwrap();
    let channel = outsider.create_channel().await.unwrap();
    let queue = IntSummatorClient::SERVICE.queue;
    channel.queue_delete(queue.into(), QueueDeleteOptions::default()).await.unwrap();
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongInt(5));
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(queue.into(), durable, arguments).await.unwrap();

    let close_vhost = vhost.clone();
    tokio::task::spawn_blocking(move || rabbitmqctl(&["close_all_connections", "-p", &close_vhost, "fault injection"]))
        .await
        .unwrap();
    let failed = within(30, "health to name the refused queue", async {
        loop {
            if let Health::Degraded { failed, .. } = bus.health() {
                return failed;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].contains(&format!("queue \"{queue}\"")) && failed[0].contains("PRECONDITION_FAILED"),
        "{failed:?}"
    );
    assert!(bus.health().is_connected(), "degraded, not down");

    // The rest was recovered: the exchange is there, and a new subscriber gets events.
    let (subscription, mut rx) = forwarding(&bus, &unique("after")).await;
    bus.publish(&event(7)).await.unwrap();
    assert_eq!(within(10, "an event after recovery", rx.recv()).await, Some(7));
    // The stopped temporary subscriber's queue was not declared again.
    let listed =
        tokio::task::spawn_blocking(move || rabbitmqctl(&["list_queues", "-p", &vhost, "name"])).await.unwrap();
    assert!(!listed.lines().any(|line| line.trim() == gone), "{gone} came back: {listed}");
    subscription.stop().await;
}

/// A publish polled until it waits for its confirm, and then held without being polled (a `select!` branch
/// switched off, say), must not hold back the other publishes on its channel. The relay holds the broker's
/// confirms back until every publish waits, so the held one is the last to have polled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_held_unpolled_holds_back_no_other_publish() {
    logs();
    let h = Harness::rabbitmq().await;
    let (relay, url) = Relay::in_front_of(h.url());
    let bus = h.bus_with(BusConfig::new(&url).unwrap().service_name("fault-held")).await;
    let (subscription, _rx) = forwarding(&bus, "held").await;
    bus.publish(&event(0)).await.expect("published before the freeze");

    relay.freeze(true);
    let others = tokio::spawn({
        let bus = bus.clone();
        async move {
            let events: Vec<UserRegistered> = (1..=200).map(event).collect();
            futures_util::future::join_all(events.iter().map(|e| bus.publish(e))).await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await; // the others wait for their confirms
    let held_event = event(-1);
    let mut held = std::pin::pin!(bus.publish(&held_event));
    for _ in 0..5 {
        let polled = std::future::poll_fn(|cx| std::task::Poll::Ready(held.as_mut().poll(cx))).await;
        assert!(polled.is_pending(), "nothing is confirmed while the relay is frozen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.freeze(false);
    let started = Instant::now();
    let results = within(10, "the other publishes, with one held unpolled", others).await.unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "they took {:?}", started.elapsed());
    within(10, "the held publish, polled again", held).await.unwrap();
    subscription.stop().await;
}

/// A temporary subscriber's dead-letter and delay queues have no consumers, so RabbitMQ deletes them once
/// their `x-expires` (a minute) passes without a declaration. While the subscriber runs, they are kept: past
/// that minute it still retries and dead-letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_subscriber_still_retries_and_dead_letters_after_its_side_queues_would_expire() {
    logs();
    let h = Harness::rabbitmq().await;
    let bus = h.bus("fault-temporary").await;
    let (tx, mut attempts) = tokio::sync::mpsc::unbounded_channel();
    let subscription = UserRegistered::subscribe(&bus, &unique("temporary"))
        .temporary()
        .handle(move |event: UserRegistered, ctx| {
            let outcome = match (event.user_id, ctx.attempt()) {
                (1, 1) => Outcome::Retry { after: Duration::from_millis(10) },
                (1, _) => Outcome::Ack,
                _ => Outcome::DeadLetter { reason: "not wanted".into() },
            };
            std::future::ready(tx.send((event.user_id, ctx.attempt())).map(|()| outcome).map_err(HandlerError::from))
        })
        .await
        .unwrap();
    let dlq = format!("{}.dlq", subscription.queue());
    let retried_once = async |attempts: &mut tokio::sync::mpsc::UnboundedReceiver<(i64, u32)>| {
        bus.publish(&event(1)).await.unwrap();
        for attempt in [1, 2] {
            assert_eq!(within(10, "an attempt", attempts.recv()).await, Some((1, attempt)));
        }
    };
    retried_once(&mut attempts).await;
    let expiry = Duration::from_millis(u64::from(warren_topology::TEMPORARY_QUEUE_EXPIRY_MS));
    tokio::time::sleep(expiry + Duration::from_secs(5)).await;
    retried_once(&mut attempts).await;
    bus.publish(&event(2)).await.unwrap();
    assert_eq!(within(10, "the last event", attempts.recv()).await, Some((2, 1)));
    let dead = within(10, "the dead letter", async {
        loop {
            match bus.fetch(&dlq).await.expect("the dead-letter queue is still there") {
                Some(message) => break message,
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    assert_eq!(dead.header_str("x-warren-reason"), Some("not wanted"));
    subscription.stop().await;
}
