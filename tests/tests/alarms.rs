//! Broker alarms: RabbitMQ short of memory blocks publishing connections (`connection.blocked`). On a private
//! node (the alarm would block everyone on the shared one): health says Blocked, publishes wait and fail with
//! `Error::Blocked` at their deadline, a subscriber on its own connection keeps consuming and acknowledging,
//! and once the alarm clears everything resumes; the ledger shows nothing confirmed was lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use warren::{Bus, BusConfig, Error, HandlerError, Health};
use warren_contracts::gametrade::v1::UserRegistered;
use warren_tests::faults::{Ledger, PrivateNode};
use warren_tests::within;

fn event(seq: i64) -> UserRegistered {
    UserRegistered { user_id: seq, username: format!("user-{seq}"), email: String::new() }
}

async fn ctl(node: &Arc<PrivateNode>, args: &'static [&'static str]) {
    let node = Arc::clone(node);
    tokio::task::spawn_blocking(move || node.ctl(args)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_alarm_blocks_publishes_not_consumers_and_nothing_is_lost() {
    let _ = tracing_subscriber::fmt().with_env_filter("warren=info").with_test_writer().try_init();
    let node = Arc::new(tokio::task::spawn_blocking(PrivateNode::start).await.unwrap());
    let publish_timeout = Duration::from_secs(6);
    let config = |name: &str| {
        BusConfig::new(&node.url())
            .unwrap()
            .service_name(name)
            .operation_timeout(Duration::from_secs(2))
            .publish_timeout(publish_timeout)
    };
    let publisher = Bus::with_config(config("alarm-publisher")).await.expect("start RabbitMQ: the private node");
    let consumer = Bus::with_config(config("alarm-consumer")).await.expect("start RabbitMQ: the private node");

    // A slow subscriber, so that messages are still waiting in its queue when the alarm goes off.
    let ledger = Arc::new(Ledger::default());
    let recorded = Arc::clone(&ledger);
    let subscription = UserRegistered::subscribe(&consumer, "alarm-ledger")
        .prefetch(10)
        .handle(move |event: UserRegistered, _| {
            let recorded = Arc::clone(&recorded);
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                recorded.consumed(event.user_id);
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();
    let publish = |seqs: std::ops::Range<i64>| {
        let (bus, ledger) = (publisher.clone(), Arc::clone(&ledger));
        async move {
            let mut outcomes = Vec::new();
            for seq in seqs {
                ledger.sent(seq);
                let outcome = bus.publish(&event(seq)).await;
                ledger.published(seq, outcome.is_ok());
                outcomes.push(outcome);
            }
            outcomes
        }
    };
    assert!(publish(0..1_000).await.iter().all(Result::is_ok));

    // The alarm: any memory use is too much.
    ctl(&node, &["set_vm_memory_high_watermark", "0.000001"]).await;
    let consumed_at_alarm = ledger.verdict("at the alarm").consumed;
    let started = Instant::now();
    let blocked = publish(1_000..1_001).await;
    let waited = started.elapsed();
    match &blocked[0] {
        Err(error @ Error::Blocked { reason, .. }) => {
            assert!(reason.contains("memory"), "the broker's reason: {error}");
            assert!(error.to_string().contains("check_alarms"), "says what to do: {error}");
        }
        other => panic!("a publish while blocked fails as Blocked, not {other:?}"),
    }
    assert!(waited >= publish_timeout - Duration::from_millis(100), "it waited its deadline: {waited:?}");
    assert!(waited < publish_timeout + Duration::from_secs(5), "and no longer: {waited:?}");
    match publisher.health() {
        Health::Blocked { reason, node: on, .. } => {
            assert!(reason.contains("memory"), "{reason}");
            assert_eq!(on, format!("127.0.0.1:{}", warren_tests::faults::PRIVATE_PORT));
        }
        other => panic!("health shows the block: {other:?}"),
    }
    assert!(!publisher.health().is_connected(), "a blocked bus cannot publish");
    let consumed_while_blocked = ledger.verdict("while blocked").consumed;
    assert!(
        consumed_while_blocked > consumed_at_alarm,
        "the subscriber kept consuming while publishing was blocked: {consumed_at_alarm} -> {consumed_while_blocked}"
    );

    // A publish begun while blocked goes through once the alarm clears within its deadline.
    let waiting = tokio::spawn(publish(1_001..1_002));
    tokio::time::sleep(Duration::from_secs(1)).await;
    ctl(&node, &["set_vm_memory_high_watermark", "0.4"]).await;
    let resumed = within(30, "the waiting publish", waiting).await.unwrap();
    assert!(resumed[0].is_ok(), "{:?}", resumed[0]);
    within(10, "health to clear", async {
        while !matches!(publisher.health(), Health::Connected { .. }) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(publish(1_002..2_000).await.iter().all(Result::is_ok));

    ledger.drain(Duration::from_secs(60)).await;
    let verdict = ledger.verdict("memory alarm: block, publish timeout, unblock");
    assert!(verdict.lost.is_empty() && verdict.unexpected.is_empty(), "{verdict:?}");
    assert_eq!(verdict.confirmed, 1_999, "all but the publish that ran out of time: {verdict:?}");
    subscription.stop().await;
    publisher.close().await.unwrap();
    consumer.close().await.unwrap();
}
