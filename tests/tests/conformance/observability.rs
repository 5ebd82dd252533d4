//! Observability: metrics per event type and per subscriber, history, and the test helpers built on them.

use std::time::Duration;

use warren::{HandlerError, RetryPolicy};
use warren_contracts::gametrade::v1::UserRegistered;
use warren_tests::{Harness, unique, within};

async fn metrics_count_what_happened_per_event_type_and_per_subscriber(h: &Harness) {
    let bus = h.bus("metrics-test").await;
    let subscription = UserRegistered::subscribe(&bus, &unique("counted"))
        .temporary()
        .retry(RetryPolicy::never())
        .handle(|event: UserRegistered, _| async move {
            if event.user_id == 13 {
                return Err(HandlerError::from("unlucky"));
            }
            Ok(())
        })
        .await
        .unwrap();
    // The failing one first: handled in order, it is settled before the three that succeed.
    for user_id in [13, 1, 2, 3] {
        bus.publish(&UserRegistered { user_id, ..Default::default() }).await.unwrap();
    }
    within(10, "three handled", bus.wait_handled::<UserRegistered>(3, Duration::from_secs(10))).await.unwrap();

    let metrics = bus.metrics().await;
    let event = &metrics.events["gametrade.v1.UserRegistered"];
    assert_eq!(
        (event.published, event.delivered, event.processed, event.failed, event.retried, event.dead_lettered),
        (4, 4, 3, 1, 0, 1),
        "{event:?}"
    );
    assert_eq!(event.in_flight, 0);
    assert!(event.processing_time_p99 >= event.processing_time_mean / 2, "{event:?}");
    let subscriber = &metrics.subscribers[subscription.queue()];
    assert_eq!((subscriber.counters.processed, subscriber.counters.dead_lettered), (3, 1));
    assert_eq!(subscriber.queue_depth, Some(0), "the broker reports an empty queue");
    assert!(subscriber.counters.rate_per_second > 0.0);
    assert!(metrics.uptime >= subscriber.uptime);
    subscription.stop().await;
}

async fn history_keeps_the_last_published_events_per_type_for_typed_assertions(h: &Harness) {
    let bus = h.bus_with(h.config("history-test").history(2)).await;
    let (subscription, _rx) = super::collect(UserRegistered::subscribe(&bus, &unique("history"))).await;
    for user_id in 1..=3 {
        bus.publish(&UserRegistered { user_id, ..Default::default() }).await.unwrap();
    }
    let ids: Vec<i64> = bus.published::<UserRegistered>().iter().map(|e| e.user_id).collect();
    assert_eq!(ids, [2, 3], "the two most recent, oldest first");
    within(10, "handled", bus.wait_handled::<UserRegistered>(3, Duration::from_secs(10))).await.unwrap();
    let error = bus.wait_handled::<UserRegistered>(4, Duration::from_millis(100)).await.unwrap_err();
    assert!(matches!(error, warren::Error::Timeout { .. }), "waiting for more than happened times out: {error}");
    subscription.stop().await;
}

warren_tests::on_both_transports!(
    metrics_count_what_happened_per_event_type_and_per_subscriber,
    history_keeps_the_last_published_events_per_type_for_typed_assertions,
);
