//! `warren dlq replay` loses nothing when its connection is killed in the middle: 5,000 dead letters, the
//! connections of the test's private vhost closed by the broker (`rabbitmqctl close_all_connections -p`) once
//! a third of them are replayed, and a ledger of where each message ended. Its own binary, and its own vhost,
//! so that nothing else loses its connection.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use warren::{HandlerError, Outcome, Subscriber};
use warren_contracts::gametrade::v1::UserRegistered;
use warren_tests::Harness;

const MESSAGES: i64 = 5_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_cut_off_mid_way_leaves_every_message_in_exactly_one_place() {
    let h = Harness::rabbitmq().await;
    let vhost = h.vhost().expect("a RabbitMQ harness has a vhost").to_owned();
    let bus = h.bus("ledger").await;

    // 5,000 dead letters: a subscriber that dead-letters everything, then stops (its queue stays, bound).
    let dead_lettering = Subscriber::<UserRegistered>::new(&bus, "ledger")
        .prefetch(500)
        .concurrency(64)
        .handle(|_: UserRegistered, _| async { Ok::<_, HandlerError>(Outcome::DeadLetter { reason: "ledger".into() }) })
        .await
        .unwrap();
    let queue = dead_lettering.queue().to_owned();
    let dlq = format!("{queue}.dlq");
    let events: Vec<UserRegistered> =
        (0..MESSAGES).map(|i| UserRegistered { user_id: i, username: format!("u{i}"), email: String::new() }).collect();
    for chunk in events.chunks(500) {
        bus.publish_batch(chunk).await.unwrap();
    }
    wait_until(Duration::from_secs(60), || async { bus.queue_depth(&dlq).await.ok() == Some(MESSAGES as u64) }).await;
    dead_lettering.stop().await;

    let mut replay = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["dlq", "replay", &dlq, "--json"])
        .env("RABBITMQ_URL", h.url())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("warren runs");
    // Cut it off once a third is back in the subscriber's queue.
    wait_until(Duration::from_secs(60), || async { bus.queue_depth(&queue).await.ok().is_some_and(|n| n >= 1_700) })
        .await;
    let at_cut = bus.queue_depth(&queue).await.unwrap();
    assert!(at_cut < MESSAGES as u64, "the replay was still going when it was cut off ({at_cut} replayed)");
    let closed = Command::new("rabbitmqctl")
        .args(["close_all_connections", "-p", &vhost, "ledger test: cut the replay off"])
        .output()
        .expect("start RabbitMQ: rabbitmqctl runs");
    assert!(closed.status.success(), "{}", String::from_utf8_lossy(&closed.stderr));
    // Still running once its connection was closed: the cut hit it mid-replay, not after it ended.
    assert!(replay.try_wait().unwrap().is_none(), "the replay ended before its connection was cut");

    let output = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut child = replay;
        loop {
            if child.try_wait().unwrap().is_some() {
                return child.wait_with_output().unwrap();
            }
            if started.elapsed() > Duration::from_secs(120) {
                let _ = child.kill();
                panic!("the replay ran past 120 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&output.stdout).trim()).expect("one JSON ledger");

    // Where did each message end? Count every copy in the subscriber's queue and in the DLQ.
    let mut copies: BTreeMap<i64, (u32, u32)> = BTreeMap::new();
    for (queue, in_dlq) in [(&queue, false), (&dlq, true)] {
        while let Some(message) = bus.fetch(queue).await.unwrap() {
            let event: UserRegistered = prost::Message::decode(message.body.as_slice()).unwrap();
            let entry = copies.entry(event.user_id).or_default();
            if in_dlq { entry.1 += 1 } else { entry.0 += 1 }
        }
    }
    let lost: Vec<i64> = (0..MESSAGES).filter(|i| !copies.contains_key(i)).collect();
    let in_both = copies.values().filter(|(q, d)| *q > 0 && *d > 0).count();
    let duplicates: u32 = copies.values().map(|(q, d)| q + d - 1).sum();
    let replayed = copies.values().filter(|(q, _)| *q > 0).count();
    eprintln!(
        "ledger: sent {MESSAGES}, replayed {replayed}, left in the DLQ {}, duplicates {duplicates}, in both {in_both}, lost {}; \
         the CLI said {report}",
        copies.values().filter(|(_, d)| *d > 0).count(),
        lost.len()
    );
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert_eq!(in_both, 0, "a message replayed and still in the DLQ");
    assert_eq!(replayed as i64, MESSAGES, "the replay went on after the cut and finished: {report}");
    assert_eq!(report["replayed"], MESSAGES.to_string(), "{report}");
    // A duplicate is a publish confirmed twice: re-sent after the cut because its first confirm was lost.
    // Each is counted; there are at most the publishes in flight at the cut.
    assert!(duplicates <= 16, "{duplicates} duplicates");
}

async fn wait_until<F: Future<Output = bool>>(limit: Duration, mut check: impl FnMut() -> F) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "not reached within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
