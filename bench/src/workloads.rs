//! The RabbitMQ workloads W1–W8, each for Warren and for the raw-lapin baseline.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use warren::{Bus, HandlerError, PublishOptions, RpcContext};
use warren_contracts::at::v1::{IntSumRequest, IntSumResponse, IntSummator, IntSummatorClient, IntSummatorServer};
use warren_contracts::gametrade::v1::{PaymentCompleted, UserRegistered};

use crate::measure::{Counter, Run, percentiles, timed};
use crate::raw;

/// Which side runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Warren,
    Raw,
}

/// A workload's parameters.
#[derive(Debug, Clone)]
pub(crate) struct Env {
    pub(crate) url: String,
    /// Messages per run.
    pub(crate) n: u64,
    /// Encoded payload size in bytes.
    pub(crate) size: usize,
    /// Warren's bus writes trace context and counts into a Prometheus layer (no exporter scrapes it): the
    /// `W2o`, `W4o` and `W7o` rows, against the same workloads without.
    pub(crate) observed: bool,
}

/// An event whose encoding is about `size` bytes.
pub(crate) fn event(size: usize, i: u64) -> UserRegistered {
    UserRegistered { user_id: i as i64, username: "x".repeat(size.saturating_sub(12)), email: String::new() }
}

const WARREN_EXCHANGE: &str = "gametrade.events";

pub(crate) fn unique(what: &str) -> String {
    format!("bench.{what}.{}", uuid::Uuid::now_v7().simple())
}

pub(crate) async fn bus(env: &Env) -> Bus {
    let mut config = warren::BusConfig::new(&env.url).expect("url").service_name("warren-bench");
    if env.observed {
        config = config.trace_context(true).middleware(warren::prometheus::PrometheusLayer::new());
    }
    Bus::with_config(config).await.expect("start RabbitMQ: the benchmark connects")
}

/// W1, W2, W8: publish `n`, pipelined with up to [`raw::WINDOW`] in flight; `confirm` and `durable` as named.
pub(crate) async fn publish(env: &Env, side: Side, confirm: bool, durable: bool) -> Run {
    let connection = raw::connect(&env.url).await;
    let setup = raw::channel(&connection, false).await;
    let queue = unique("publish");
    let exchange = if side == Side::Warren { WARREN_EXCHANGE } else { raw::EXCHANGE };
    raw::queue(&setup, &queue, exchange, durable).await;
    let n = env.n;
    let run = match side {
        Side::Warren => {
            let bus = bus(env).await;
            bus.publish(&event(env.size, 0)).await.expect("warm-up publish"); // declares the exchange
            let options = if confirm { PublishOptions::new() } else { PublishOptions::new().fire_and_forget() };
            timed(n, async {
                futures_util::stream::iter(0..n)
                    .map(|i| {
                        let (bus, options) = (&bus, options.clone());
                        async move { bus.publish_with(&event(env.size, i), options).await.expect("publish") }
                    })
                    .buffer_unordered(raw::WINDOW)
                    .for_each(|()| async {})
                    .await;
            })
            .await
        }
        Side::Raw => {
            let channel = raw::channel(&connection, confirm).await;
            timed(n, async {
                futures_util::stream::iter(0..n)
                    .map(|i| {
                        let channel = &channel;
                        async move { raw::publish(channel, &event(env.size, i), confirm, true).await }
                    })
                    .buffer_unordered(raw::WINDOW)
                    .for_each(|()| async {})
                    .await;
            })
            .await
        }
    };
    raw::delete(&setup, &queue).await;
    let _ = connection.close(200, "done".into()).await;
    run
}

/// W3: one publish with its confirm at a time; latency per message.
pub(crate) async fn confirm_latency(env: &Env, side: Side) -> Run {
    let connection = raw::connect(&env.url).await;
    let setup = raw::channel(&connection, false).await;
    let queue = unique("latency");
    let exchange = if side == Side::Warren { WARREN_EXCHANGE } else { raw::EXCHANGE };
    raw::queue(&setup, &queue, exchange, false).await;
    let n = env.n;
    let mut samples = Vec::with_capacity(n as usize);
    let bus = if side == Side::Warren { Some(bus(env).await) } else { None };
    let channel = raw::channel(&connection, true).await;
    if let Some(bus) = &bus {
        bus.publish(&event(env.size, 0)).await.expect("warm-up publish");
    }
    let mut run = timed(n, async {
        for i in 0..n {
            let started = Instant::now();
            match &bus {
                Some(bus) => bus.publish(&event(env.size, i)).await.expect("publish"),
                None => raw::publish(&channel, &event(env.size, i), true, true).await,
            }
            samples.push(started.elapsed());
        }
    })
    .await;
    run.latency = Some(percentiles(&mut samples));
    raw::delete(&setup, &queue).await;
    let _ = connection.close(200, "done".into()).await;
    run
}

async fn counting(bus: &Bus, group: &str, counter: &Counter, temporary: bool) -> warren::Subscription {
    let counter = counter.clone();
    let subscriber = UserRegistered::subscribe(bus, group);
    let subscriber = if temporary { subscriber.temporary() } else { subscriber };
    subscriber
        .handle(move |_: UserRegistered, _| {
            counter.hit();
            std::future::ready(Ok::<_, HandlerError>(()))
        })
        .await
        .expect("subscribe")
}

/// W4: consume `n` messages already in the queue, prefetch 256, manual acks.
pub(crate) async fn consume(env: &Env, side: Side) -> Run {
    if raw::quorum() {
        return consume_quorum(env, side).await;
    }
    let connection = raw::connect(&env.url).await;
    let setup = raw::channel(&connection, false).await;
    let publisher = raw::channel(&connection, true).await;
    // Filling is not timed: n events, pipelined, with the type property Warren's subscriber checks.
    let fill = |channel: lapin::Channel, exchange: &'static str| async move {
        futures_util::stream::iter(0..env.n)
            .map(|i| {
                let channel = channel.clone();
                async move { raw::publish_to(&channel, exchange, &event(env.size, i), true, false).await }
            })
            .buffer_unordered(raw::WINDOW)
            .for_each(|()| async {})
            .await;
    };
    match side {
        Side::Warren => {
            let bus = bus(env).await;
            let group = unique("consume");
            // Subscribe once to declare the group's (durable) queue and stop: it stays, bound, while it fills.
            let subscription = counting(&bus, &group, &Counter::new(u64::MAX), false).await;
            let queue = subscription.queue().to_owned();
            subscription.stop().await;
            fill(publisher.clone(), WARREN_EXCHANGE).await;
            let counter = Counter::new(env.n);
            let run = timed(env.n, async {
                let subscription = counting(&bus, &group, &counter, false).await;
                counter.done.notified().await;
                subscription.stop().await;
            })
            .await;
            raw::delete(&setup, &queue).await;
            raw::delete(&setup, &format!("{queue}.dlq")).await;
            let _ = connection.close(200, "done".into()).await;
            run
        }
        Side::Raw => {
            let queue = unique("consume");
            raw::queue(&setup, &queue, raw::EXCHANGE, false).await;
            fill(publisher.clone(), raw::EXCHANGE).await;
            let channel = raw::channel(&connection, false).await;
            let run = timed(env.n, raw::consume(&channel, &queue, env.n)).await;
            raw::delete(&setup, &queue).await;
            let _ = connection.close(200, "done".into()).await;
            run
        }
    }
}

/// A `PaymentCompleted` whose encoding is about `size` bytes.
fn payment(size: usize, i: u64) -> PaymentCompleted {
    PaymentCompleted { payment_id: "x".repeat(size.saturating_sub(12)), trade_id: i as i64, ..Default::default() }
}

/// W4 on the cluster (`--cluster`): the same on quorum queues, with `PaymentCompleted` events, whose contract
/// asks for quorum queues (Warren's subscriber declares its group's queue as one; raw lapin declares its own).
async fn consume_quorum(env: &Env, side: Side) -> Run {
    let connection = raw::connect(&env.url).await;
    let setup = raw::channel(&connection, false).await;
    let publisher = raw::channel(&connection, true).await;
    let fill = |channel: lapin::Channel, exchange: &'static str| async move {
        futures_util::stream::iter(0..env.n)
            .map(|i| {
                let channel = channel.clone();
                async move { raw::publish_payment(&channel, exchange, &payment(env.size, i)).await }
            })
            .buffer_unordered(raw::WINDOW)
            .for_each(|()| async {})
            .await;
    };
    let counting = |bus: Bus, group: String, counter: Counter| async move {
        PaymentCompleted::subscribe(&bus, &group)
            .handle(move |_: PaymentCompleted, _| {
                counter.hit();
                std::future::ready(Ok::<_, HandlerError>(()))
            })
            .await
            .expect("subscribe")
    };
    let run = match side {
        Side::Warren => {
            let bus = bus(env).await;
            let group = unique("consume");
            // Subscribe once to declare the group's quorum queue and stop: it stays, bound, while it fills.
            let subscription = counting(bus.clone(), group.clone(), Counter::new(u64::MAX)).await;
            let queue = subscription.queue().to_owned();
            subscription.stop().await;
            fill(publisher.clone(), WARREN_EXCHANGE).await;
            let counter = Counter::new(env.n);
            let run = timed(env.n, async {
                let subscription = counting(bus.clone(), group.clone(), counter.clone()).await;
                counter.done.notified().await;
                subscription.stop().await;
            })
            .await;
            raw::delete(&setup, &queue).await;
            raw::delete(&setup, &format!("{queue}.dlq")).await;
            run
        }
        Side::Raw => {
            let queue = unique("consume");
            raw::queue_for(&setup, &queue, raw::EXCHANGE, "payment.completed", true).await;
            fill(publisher.clone(), raw::EXCHANGE).await;
            let channel = raw::channel(&connection, false).await;
            let run = timed(env.n, raw::consume_as::<PaymentCompleted>(&channel, &queue, env.n)).await;
            raw::delete(&setup, &queue).await;
            run
        }
    };
    let _ = connection.close(200, "done".into()).await;
    run
}

struct Summator;

impl IntSummator for Summator {
    async fn int_sum(
        &self,
        request: IntSumRequest,
        _: RpcContext,
    ) -> Result<IntSumResponse, warren::RpcError<warren_contracts::at::v1::int_sum_error::Reason>> {
        Ok(IntSumResponse { sum: request.a + request.b })
    }
}

/// W5 (`in_flight` 1, latency) and W6 (`in_flight` 64, calls/s): RPC over direct reply-to.
pub(crate) async fn rpc(env: &Env, side: Side, in_flight: usize) -> Run {
    let n = env.n;
    let mut samples = Vec::with_capacity(n as usize);
    let mut run = match side {
        Side::Warren => {
            let server_bus = bus(env).await;
            let serving = IntSummatorServer::new(Summator).serve(&server_bus).await.expect("serve");
            let client = IntSummatorClient::new(&bus(env).await);
            client.int_sum(IntSumRequest { a: 1, b: 1 }).await.expect("warm-up call");
            let run = if in_flight == 1 {
                timed(n, async {
                    for i in 0..n as i64 {
                        let started = Instant::now();
                        assert_eq!(client.int_sum(IntSumRequest { a: i, b: 1 }).await.expect("call").sum, i + 1);
                        samples.push(started.elapsed());
                    }
                })
                .await
            } else {
                timed(n, async {
                    futures_util::stream::iter(0..n as i64)
                        .map(|i| {
                            let client = client.clone();
                            async move { client.int_sum(IntSumRequest { a: i, b: 1 }).await.expect("call") }
                        })
                        .buffer_unordered(in_flight)
                        .for_each(|_| async {})
                        .await;
                })
                .await
            };
            serving.stop().await;
            run
        }
        Side::Raw => {
            let connection = raw::connect(&env.url).await;
            let queue = unique("rpc");
            raw::serve_int_sum(&connection, &queue).await;
            let client = raw::RpcClient::new(&raw::connect(&env.url).await, &queue).await;
            client.int_sum(1, 1).await;
            let run = if in_flight == 1 {
                timed(n, async {
                    for i in 0..n as i64 {
                        let started = Instant::now();
                        assert_eq!(client.int_sum(i, 1).await, i + 1);
                        samples.push(started.elapsed());
                    }
                })
                .await
            } else {
                timed(n, async {
                    futures_util::stream::iter(0..n as i64)
                        .map(|i| {
                            let client = client.clone();
                            async move { client.int_sum(i, 1).await }
                        })
                        .buffer_unordered(in_flight)
                        .for_each(|_| async {})
                        .await;
                })
                .await
            };
            let setup = raw::channel(&connection, false).await;
            raw::delete(&setup, &queue).await;
            run
        }
    };
    if in_flight == 1 {
        run.latency = Some(percentiles(&mut samples));
    }
    run
}

/// W7: publish `n` events to a topic exchange with 10 subscriber queues; deliveries per second.
pub(crate) async fn fan_out(env: &Env, side: Side) -> Run {
    const QUEUES: usize = 10;
    let n = env.n;
    let deliveries = n * QUEUES as u64;
    match side {
        Side::Warren => {
            let bus = bus(env).await;
            // The warm-up event's deliveries count too; the timer starts once they are in, with the publishing
            // channel open, as raw's is.
            let counters = Counter::group(1 + n, QUEUES);
            let mut subscriptions = Vec::new();
            for (q, counter) in counters.iter().enumerate() {
                subscriptions.push(counting(&bus, &unique(&format!("fan{q}")), counter, true).await);
            }
            bus.publish(&event(env.size, 0)).await.expect("warm-up publish");
            for counter in &counters {
                counter.wait_for(1).await;
            }
            let run = timed(deliveries, async {
                futures_util::stream::iter(0..n)
                    .map(|i| {
                        let bus = &bus;
                        async move { bus.publish(&event(env.size, i)).await.expect("publish") }
                    })
                    .buffer_unordered(raw::WINDOW)
                    .for_each(|()| async {})
                    .await;
                counters[0].done.notified().await;
            })
            .await;
            for subscription in subscriptions {
                subscription.stop().await;
            }
            run
        }
        Side::Raw => {
            let connection = raw::connect(&env.url).await;
            let setup = raw::channel(&connection, false).await;
            let mut queues = Vec::new();
            for q in 0..QUEUES {
                let queue = unique(&format!("fan{q}"));
                raw::queue(&setup, &queue, raw::EXCHANGE, false).await;
                queues.push(queue);
            }
            let consumers = raw::connect(&env.url).await;
            let publisher = raw::channel(&connection, true).await;
            let run = timed(deliveries, async {
                let mut tasks = tokio::task::JoinSet::new();
                for queue in &queues {
                    let channel = raw::channel(&consumers, false).await;
                    let queue = queue.clone();
                    tasks.spawn(async move { raw::consume(&channel, &queue, n).await });
                }
                futures_util::stream::iter(0..n)
                    .map(|i| {
                        let publisher = &publisher;
                        async move { raw::publish(publisher, &event(env.size, i), true, true).await }
                    })
                    .buffer_unordered(raw::WINDOW)
                    .for_each(|()| async {})
                    .await;
                while tasks.join_next().await.is_some() {}
            })
            .await;
            for queue in &queues {
                raw::delete(&setup, queue).await;
            }
            let _ = consumers.close(200, "done".into()).await;
            let _ = connection.close(200, "done".into()).await;
            run
        }
    }
}

/// A pause between runs, so one run's broker work does not spill into the next.
pub(crate) async fn settle() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}
