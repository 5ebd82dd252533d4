//! W9: the in-memory transport, publish → handler, and its baseline: the same events, prost-encoded by the
//! publisher and decoded by each receiving task, through a plain tokio channel.

use std::sync::Arc;

use prost::Message as _;
use tokio::sync::{broadcast, mpsc};

use crate::measure::{Counter, Run, timed};
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

/// The `i`th event W9 publishes (about 30 bytes encoded).
pub(crate) fn event(i: u64) -> UserRegistered {
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
pub(crate) async fn in_memory_one_subscriber(n: u64) -> Run {
    let bus = Bus::in_memory();
    let counter = Counter::new(n);
    let subscription = counting(UserRegistered::subscribe(&bus, "bench"), &counter).await;
    let run = timed(n, async {
        publish_from_a_task(&bus, n).await;
        counter.done.notified().await;
    })
    .await;
    subscription.stop().await;
    run
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
pub(crate) async fn in_memory_fan_out(n: u64, groups: usize, values: Values) -> Run {
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
    let run = timed(n, async {
        publish_from_a_task(&bus, n).await;
        counters[0].done.notified().await;
    })
    .await;
    for subscription in subscriptions {
        subscription.stop().await;
    }
    run
}

/// Decodes an event as a handler's subscriber would, and counts it.
fn handle(body: &[u8], counter: &Counter) {
    std::hint::black_box(UserRegistered::decode(body).expect("decodes"));
    counter.hit();
}

/// The baseline of [`in_memory_one_subscriber`]: a task publishes `n` events, each prost-encoded, through a
/// bounded `mpsc` channel (256) to a task that decodes each.
pub(crate) async fn channel_one_subscriber(n: u64) -> Run {
    let (sender, mut receiver) = mpsc::channel::<Vec<u8>>(256);
    let counter = Counter::new(n);
    let handler = counter.clone();
    let subscriber = tokio::spawn(async move {
        while let Some(body) = receiver.recv().await {
            handle(&body, &handler);
        }
    });
    let run = timed(n, async {
        tokio::spawn(async move {
            for i in 0..n {
                sender.send(event(i).encode_to_vec()).await.expect("the subscriber is there");
            }
        })
        .await
        .expect("the publisher task");
        counter.done.notified().await;
    })
    .await;
    subscriber.await.expect("the subscriber task");
    run
}

/// The baseline of [`in_memory_fan_out`]: a task publishes `n` events, each prost-encoded once, through a
/// `broadcast` channel of the encoded bytes to `groups` tasks that decode each.
///
/// A broadcast sender never waits: a receiver more than the channel's capacity behind loses the oldest messages.
/// So the capacity holds the whole run, as the in-memory broker's queues are unbounded, and the publisher spends
/// a unit of tokio's cooperative budget per event, as an in-memory publish does, so that it gives up its thread.
pub(crate) async fn channel_fan_out(n: u64, groups: usize) -> Run {
    let (sender, _) = broadcast::channel::<Arc<Vec<u8>>>(usize::try_from(n).expect("n fits").max(1));
    let counters = Counter::group(n, groups);
    let subscribers: Vec<_> = counters
        .iter()
        .map(|counter| {
            let (mut receiver, counter) = (sender.subscribe(), counter.clone());
            tokio::spawn(async move {
                loop {
                    match receiver.recv().await {
                        Ok(body) => handle(&body, &counter),
                        Err(broadcast::error::RecvError::Closed) => break,
                        Err(broadcast::error::RecvError::Lagged(lost)) => panic!("a subscriber lost {lost} events"),
                    }
                }
            })
        })
        .collect();
    let run = timed(n, async {
        tokio::spawn(async move {
            for i in 0..n {
                sender.send(Arc::new(event(i).encode_to_vec())).expect("the subscribers are there");
                tokio::task::coop::consume_budget().await;
            }
        })
        .await
        .expect("the publisher task");
        counters[0].done.notified().await;
    })
    .await;
    for subscriber in subscribers {
        subscriber.await.expect("a subscriber task");
    }
    run
}
