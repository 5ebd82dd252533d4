//! Warren's benchmarks. Run through `cargo xtask bench [--quick]`, which builds this in release mode.
//!
//! Each workload runs several rounds and reports the median, because one machine's neighbours make single
//! runs noisy. Absolute figures depend on the machine; compare within one run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use warren::{Bus, HandlerError, Subscription};
use warren_contracts::gametrade::v1::{GametradeEvents, UserRegistered};

/// How much work each workload does.
#[derive(Debug, Clone, Copy)]
struct Scale {
    rounds: usize,
    one_subscriber: u64,
    fan_out_events: u64,
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    if std::env::args().any(|a| a == "--profile-one") {
        // One small single-subscriber run, for `valgrind --tool=callgrind`.
        in_memory_one_subscriber(20_000).await;
        return;
    }
    let scale = if quick {
        Scale { rounds: 3, one_subscriber: 200_000, fan_out_events: 30_000 }
    } else {
        Scale { rounds: 5, one_subscriber: 1_000_000, fan_out_events: 200_000 }
    };
    println!("Warren benchmarks ({} rounds each, median shown{})", scale.rounds, if quick { ", --quick" } else { "" });
    println!();
    println!("| workload | messages | median | rate |");
    println!("|---|---:|---:|---:|");
    let one = median(scale.rounds, || in_memory_one_subscriber(scale.one_subscriber)).await;
    row("W9 in-memory publish → handler, 1 subscriber", scale.one_subscriber, one, "events/s");
    let fan = median(scale.rounds, || in_memory_fan_out(scale.fan_out_events, 10)).await;
    row("W9 in-memory topic exchange → 10 subscribers", scale.fan_out_events, fan, "events/s");
    row("   … the same, counted per delivery", scale.fan_out_events * 10, fan, "deliveries/s");
}

fn row(name: &str, messages: u64, took: Duration, unit: &str) {
    let rate = messages as f64 / took.as_secs_f64();
    println!("| {name} | {messages} | {:.1} ms | {} {unit} |", took.as_secs_f64() * 1e3, thousands(rate));
}

fn thousands(rate: f64) -> String {
    let digits = format!("{:.0}", rate);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

async fn median<F, Fut>(rounds: usize, mut run: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Duration>,
{
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        times.push(run().await);
    }
    times.sort();
    times[times.len() / 2]
}

/// Counts handled messages and wakes the benchmark when `target` is reached.
#[derive(Clone)]
struct Counter {
    seen: Arc<AtomicU64>,
    done: Arc<Notify>,
    target: u64,
}

impl Counter {
    fn new(target: u64) -> Self {
        Counter { seen: Arc::default(), done: Arc::default(), target }
    }

    fn hit(&self) {
        if self.seen.fetch_add(1, Ordering::Relaxed) + 1 == self.target {
            self.done.notify_one();
        }
    }
}

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
async fn in_memory_one_subscriber(n: u64) -> Duration {
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

/// Publish through a topic exchange to `groups` subscribers bound with `user.*`.
async fn in_memory_fan_out(n: u64, groups: usize) -> Duration {
    let bus = Bus::in_memory();
    let counter = Counter::new(n * groups as u64);
    let mut subscriptions = Vec::new();
    for g in 0..groups {
        let subscriber = GametradeEvents::subscribe(&bus, &format!("bench-{g}"), "user.*");
        subscriptions.push(counting(subscriber, &counter).await);
    }
    let started = Instant::now();
    publish_from_a_task(&bus, n).await;
    counter.done.notified().await;
    let took = started.elapsed();
    for subscription in subscriptions {
        subscription.stop().await;
    }
    took
}
