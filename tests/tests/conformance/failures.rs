//! Failures: undecodable and mistyped messages, failing, panicking and slow handlers; retries and the DLQ.

use std::time::Duration;

use tokio::sync::mpsc;
use warren::{HandlerError, RetryPolicy};
use warren::{HeaderValue, MessageProperties};
use warren_contracts::gametrade::v1::UserRegistered;
use warren_tests::{Harness, unique, within};

use super::{collect, next_in};

async fn garbage_and_mistyped_messages_go_to_the_dead_letter_queue_at_once(h: &Harness) {
    let bus = h.bus("dlq-test").await;
    let (subscription, mut rx) = collect(UserRegistered::subscribe(&bus, &unique("poison"))).await;
    let queue = subscription.queue().to_owned();
    let typed = |kind: &str| MessageProperties::default().with_kind(kind);
    bus.publish_bytes("", &queue, b"\xff\xff\xff\xff garbage", typed("gametrade.v1.UserRegistered")).await.unwrap();
    bus.publish_bytes("", &queue, b"", typed("gametrade.v1.ItemListed")).await.unwrap();
    bus.publish(&UserRegistered { user_id: 99, ..Default::default() }).await.unwrap();

    // The consumer went on past both bad messages.
    assert_eq!(within(10, "the good message", rx.recv()).await.unwrap().0.user_id, 99);
    let dlq = format!("{queue}.dlq");
    let mut reasons = vec![next_in(&bus, &dlq).await, next_in(&bus, &dlq).await];
    reasons.sort_by_key(|m| m.header_str("x-warren-reason").map(str::to_owned));
    let reason = |i: usize| reasons[i].header_str("x-warren-reason").unwrap();
    assert!(reason(0).contains("payload does not decode"), "{}", reason(0));
    assert!(reason(1).contains("unexpected message type \"gametrade.v1.ItemListed\""), "{}", reason(1));
    for message in &reasons {
        assert_eq!(message.header_i64("x-warren-attempts"), Some(1), "never retried");
    }
    // A type the subscriber does not take is counted under one name for them all: what senders put in `type`
    // cannot grow the counters (or the Prometheus series) without bound.
    let metrics = bus.metrics().await;
    assert!(!metrics.events.contains_key("gametrade.v1.ItemListed"), "{:?}", metrics.events.keys());
    assert_eq!(metrics.events[warren::OTHER_TYPES].dead_lettered, 1, "{:?}", metrics.events);
    subscription.stop().await;
}

async fn a_failing_handler_is_retried_with_backoff_then_dead_lettered_with_its_history(h: &Harness) {
    let bus = h.bus("retry-test").await;
    let group = unique("flaky");
    let (attempts_tx, mut attempts) = mpsc::unbounded_channel();
    let subscription = UserRegistered::subscribe(&bus, &group)
        .temporary()
        .retry(RetryPolicy::exponential(3, h.backoff()))
        .handle(move |_: UserRegistered, ctx| {
            attempts_tx.send((ctx.attempt(), tokio::time::Instant::now())).unwrap();
            async { Err::<(), HandlerError>("payment provider unavailable".into()) }
        })
        .await
        .unwrap();
    bus.publish(&UserRegistered { user_id: 5, ..Default::default() }).await.unwrap();

    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(within(600, "an attempt", attempts.recv()).await.unwrap());
    }
    assert_eq!(seen.iter().map(|(attempt, _)| *attempt).collect::<Vec<_>>(), [1, 2, 3]);
    let (first_wait, second_wait) = (seen[1].1 - seen[0].1, seen[2].1 - seen[1].1);
    assert!(first_wait >= h.backoff(), "waited {first_wait:?} before the first retry");
    assert!(second_wait >= 2 * h.backoff(), "the backoff doubles: waited {second_wait:?}");

    let dead = next_in(&bus, &format!("{}.dlq", subscription.queue())).await;
    assert_eq!(UserRegistered::decode_from(&dead.body).user_id, 5);
    assert_eq!(dead.header_i64("x-warren-attempts"), Some(3));
    assert_eq!(dead.header_str("x-warren-reason"), Some("handler failed: payment provider unavailable"));
    assert_eq!(dead.header_str("x-warren-original-exchange"), Some("gametrade.events"));
    assert_eq!(dead.header_str("x-warren-original-routing-key"), Some("user.registered"));
    assert_eq!(dead.header_str("x-warren-consumer"), Some(group.as_str()));
    assert_eq!(dead.header_str("x-warren-service"), Some("retry-test"));
    let headers = dead.headers();
    for time in ["x-warren-first-failed-at", "x-warren-failed-at"] {
        assert!(matches!(headers.get(time), Some(HeaderValue::Timestamp(_))), "{time} is recorded: {headers:?}");
    }
    // Each retry hop expired out of a delay queue; the broker recorded it in `x-death`, newest first.
    let deaths = headers.get("x-death").and_then(HeaderValue::as_array).expect("an x-death array");
    let queue = subscription.queue();
    let retry_queues: Vec<String> =
        [2u32, 1].iter().map(|n| format!("{queue}.retry.{}", (h.backoff() * *n).as_millis())).collect();
    assert_eq!(deaths.len(), 2, "{deaths:?}");
    for (death, retry_queue) in deaths.iter().zip(&retry_queues) {
        let death = death.as_table().unwrap_or_else(|| panic!("x-death entries are tables: {death:?}"));
        assert_eq!(death.get_str("queue"), Some(retry_queue.as_str()), "{death:?}");
        assert_eq!(death.get_str("reason"), Some("expired"), "{death:?}");
        assert_eq!(death.get_i64("count"), Some(1), "{death:?}");
    }
    tokio::time::sleep(h.quiet_period()).await;
    assert!(attempts.try_recv().is_err(), "no fourth attempt");
    subscription.stop().await;
}

async fn a_panicking_handler_counts_as_a_failure_and_the_consumer_goes_on(h: &Harness) {
    let bus = h.bus("panic-test").await;
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let subscription = UserRegistered::subscribe(&bus, &unique("panicky"))
        .temporary()
        .retry(RetryPolicy::never())
        .handle(move |event: UserRegistered, _| {
            let done_tx = done_tx.clone();
            async move {
                assert!(event.user_id % 10 != 0, "user ids divisible by ten are cursed");
                done_tx.send(event.user_id).unwrap();
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();
    for user_id in 9..=11 {
        bus.publish(&UserRegistered { user_id, ..Default::default() }).await.unwrap();
    }
    assert_eq!(within(10, "9", done.recv()).await, Some(9));
    assert_eq!(within(10, "11, after the panic on 10", done.recv()).await, Some(11));
    let dead = next_in(&bus, &format!("{}.dlq", subscription.queue())).await;
    assert_eq!(UserRegistered::decode_from(&dead.body).user_id, 10);
    let reason = dead.header_str("x-warren-reason").unwrap();
    assert!(reason.starts_with("handler panicked: user ids divisible by ten are cursed"), "{reason}");
    subscription.stop().await;
}

async fn a_handler_past_its_timeout_fails_and_follows_the_retry_policy(h: &Harness) {
    let bus = h.bus("timeout-test").await;
    let limit = h.backoff() * 2;
    let (attempts_tx, mut attempts) = mpsc::unbounded_channel();
    let subscription = UserRegistered::subscribe(&bus, &unique("slow"))
        .temporary()
        .handler_timeout(limit)
        .retry(RetryPolicy::exponential(2, h.backoff()))
        .handle(move |_: UserRegistered, ctx| {
            attempts_tx.send(ctx.attempt()).unwrap();
            async move {
                tokio::time::sleep(limit * 10).await;
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();
    bus.publish(&UserRegistered { user_id: 1, ..Default::default() }).await.unwrap();
    assert_eq!(within(600, "attempt 1", attempts.recv()).await, Some(1));
    assert_eq!(within(600, "attempt 2", attempts.recv()).await, Some(2));
    let dead = next_in(&bus, &format!("{}.dlq", subscription.queue())).await;
    assert_eq!(dead.header_str("x-warren-reason"), Some(format!("handler timed out after {limit:?}").as_str()));
    assert_eq!(dead.header_i64("x-warren-attempts"), Some(2));
    subscription.stop().await;
}

async fn the_contracts_retry_policy_governs_subscribers_unless_code_overrides_it(h: &Harness) {
    use warren_contracts::gametrade::v1::PaymentFailed;
    let bus = h.bus("contract-retry-test").await;
    let failing = |tx: mpsc::UnboundedSender<(u32, tokio::time::Instant)>| {
        move |_: PaymentFailed, ctx: warren::Context| {
            tx.send((ctx.attempt(), tokio::time::Instant::now())).unwrap();
            async { Err::<(), HandlerError>("ledger service down".into()) }
        }
    };
    // No `.retry(..)`: the contract says 5 attempts, 500 ms apart at first (and a quorum queue).
    let (attempts_tx, mut attempts) = mpsc::unbounded_channel();
    let contract = PaymentFailed::subscribe(&bus, &unique("payments")).handle(failing(attempts_tx)).await.unwrap();
    // The code's own policy: 2 attempts, 50 ms apart.
    let (overridden_tx, mut overridden) = mpsc::unbounded_channel();
    let own = PaymentFailed::subscribe(&bus, &unique("payments-own"))
        .retry(RetryPolicy::exponential(2, Duration::from_millis(50)))
        .handle(failing(overridden_tx))
        .await
        .unwrap();
    bus.publish(&PaymentFailed { payment_id: "p-1".into(), ..Default::default() }).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(within(600, "an attempt", attempts.recv()).await.unwrap());
    }
    assert_eq!(seen.iter().map(|(attempt, _)| *attempt).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    let first_wait = seen[1].1 - seen[0].1;
    assert!(first_wait >= Duration::from_millis(500), "the contract's first backoff is 500 ms: {first_wait:?}");
    let dead = next_in(&bus, &format!("{}.dlq", contract.queue())).await;
    assert_eq!(dead.header_i64("x-warren-attempts"), Some(5));
    // The overriding subscriber gave up after its own 2 attempts.
    let dead = next_in(&bus, &format!("{}.dlq", own.queue())).await;
    assert_eq!(dead.header_i64("x-warren-attempts"), Some(2));
    let mut own_attempts = Vec::new();
    while let Ok((attempt, _)) = overridden.try_recv() {
        own_attempts.push(attempt);
    }
    assert_eq!(own_attempts, [1, 2], "the code's policy, not the contract's, governs the overriding subscriber");
    contract.stop().await;
    own.stop().await;
}

/// Decoding helper for dead letters.
trait DecodeFrom: prost::Message + Default {
    fn decode_from(body: &[u8]) -> Self {
        Self::decode(body).expect("the dead letter keeps the original payload")
    }
}

impl<M: prost::Message + Default> DecodeFrom for M {}

/// What a plain AMQP client (any language) sends when it knows the queue but not Warren's envelope: no `type`
/// property. A queue for one type reads it as that type (protobuf unless the content type says JSON); a
/// subscriber of several types cannot tell, and dead-letters it.
async fn a_message_without_a_type_is_read_as_the_one_type_its_queue_takes(h: &Harness) {
    let bus = h.bus("untyped-test").await;
    let (subscription, mut rx) = collect(UserRegistered::subscribe(&bus, &unique("untyped"))).await;
    let body = prost::Message::encode_to_vec(&UserRegistered { user_id: 41, ..Default::default() });
    bus.publish_bytes("", subscription.queue(), &body, MessageProperties::default()).await.unwrap();
    let (event, ctx) = within(10, "the untyped message", rx.recv()).await.unwrap();
    assert_eq!(event.user_id, 41);
    assert_eq!(ctx.content_type(), None);
    let json = br#"{"userId": "42"}"#;
    bus.publish_bytes(
        "",
        subscription.queue(),
        json,
        MessageProperties::default().with_content_type("application/json"),
    )
    .await
    .unwrap();
    assert_eq!(within(10, "the untyped JSON message", rx.recv()).await.unwrap().0.user_id, 42);
    // Another type is still refused.
    let other = MessageProperties::default().with_kind("gametrade.v1.ItemListed");
    bus.publish_bytes("", subscription.queue(), &body, other).await.unwrap();
    let dead = next_in(&bus, &format!("{}.dlq", subscription.queue())).await;
    assert!(dead.header_str("x-warren-reason").unwrap().contains("gametrade.v1.ItemListed"));
    subscription.stop().await;

    let (several, _rx) =
        collect(warren_contracts::gametrade::v1::GametradeEvents::subscribe(&bus, &unique("several"), "user.*")).await;
    bus.publish_bytes("", several.queue(), &body, MessageProperties::default()).await.unwrap();
    let dead = next_in(&bus, &format!("{}.dlq", several.queue())).await;
    assert!(dead.header_str("x-warren-reason").unwrap().contains("no type property"), "{dead:?}");
    several.stop().await;
}

warren_tests::on_both_transports!(
    a_message_without_a_type_is_read_as_the_one_type_its_queue_takes,
    garbage_and_mistyped_messages_go_to_the_dead_letter_queue_at_once,
    a_failing_handler_is_retried_with_backoff_then_dead_lettered_with_its_history,
    a_panicking_handler_counts_as_a_failure_and_the_consumer_goes_on,
    a_handler_past_its_timeout_fails_and_follows_the_retry_policy,
    the_contracts_retry_policy_governs_subscribers_unless_code_overrides_it,
);
