//! W9: the in-memory transport, publish → handler.

use std::time::{Duration, Instant};

use crate::measure::Counter;
use warren::{Bus, HandlerError, Subscription};
use warren_contracts::gametrade::v1::{GametradeEvents, UserRegistered};

async fn counting<T: warren::Inbound>(subscriber: warren::Subscriber<T>, counter: &Counter) -> Subscription {
    let counter = counter.clone();
    subscriber
        .temporary()
        .handle(move |_: T, _| {
            counter.hit();
            std::future::ready(Ok::<_, HandlerError>(()))
        })
        .await
        .expect("subscribe")
}

fn event(i: u64) -> UserRegistered {
    UserRegistered { user_id: i as i64, username: "gametrader1".into(), email: "g@example.com".into() }
}

/// Publishes `n` events from a task of the runtime, as application code does.
async fn publish_from_a_task(bus: &Bus, n: u64) {
    let bus = bus.clone();
    tokio::spawn(async move {
        for i in 0..n {
            bus.publish(&event(i)).await.expect("publish");
        }
    })
    .await
    .expect("the publisher task");
}

/// Publish → handler on the in-memory transport, one subscriber: time from the first publish to the last handled.
pub(crate) async fn in_memory_one_subscriber(n: u64) -> Duration {
    let bus = Bus::in_memory();
    let counter = Counter::new(n);
    let subscription = counting(UserRegistered::subscribe(&bus, "bench"), &counter).await;
    let started = Instant::now();
    publish_from_a_task(&bus, n).await;
    counter.done.notified().await;
    let took = started.elapsed();
    subscription.stop().await;
    took
}

/// What the fan-out's handlers take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Values {
    /// Each handler its own `T` (the default): one decoding, a clone for each further subscriber.
    Owned,
    /// `Subscriber::shared`: every handler an `Arc<T>` of the one decoded value.
    Shared,
}

/// Publish through a topic exchange to `groups` subscribers bound with `user.*`.
pub(crate) async fn in_memory_fan_out(n: u64, groups: usize, values: Values) -> Duration {
    let bus = Bus::in_memory();
    // A counter per subscriber, as W7's: one shared by handlers on both threads would cost each delivery a
    // contended atomic that is the benchmark's, not Warren's.
    let counters = Counter::group(n, groups);
    let mut subscriptions = Vec::new();
    for (g, counter) in counters.iter().enumerate() {
        let subscriber = GametradeEvents::subscribe(&bus, &format!("bench-{g}"), "user.*");
        subscriptions.push(match values {
            Values::Owned => counting(subscriber, counter).await,
            Values::Shared => counting(subscriber.shared(), counter).await,
        });
    }
    let started = Instant::now();
    publish_from_a_task(&bus, n).await;
    counters[0].done.notified().await;
    let took = started.elapsed();
    for subscription in subscriptions {
        subscription.stop().await;
    }
    took
}
