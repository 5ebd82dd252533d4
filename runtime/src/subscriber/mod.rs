//! Typed subscribers: a consumer group's durable queue, bound by the contract, feeding a handler.

use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::headers::{HeaderValue, Headers};
use futures_util::FutureExt;
use tokio::sync::Semaphore;

use crate::bus::{self, Bus};
use crate::contract::{ExchangeKind, Inbound};
use crate::envelope;
use crate::error::{Error, Later, Result};
use crate::feed::{Feed, Handlers, Setup, Stop};
use crate::metrics::{Fate, LastType, SubscriberStats};
use crate::middleware::Layers;
use crate::topic;
use crate::transport::{Acker, ConsumeOn, Delivery, Message, Settle};
use crate::transport::{Need, QueueSettings};

mod context;
mod policy;
mod worker;

pub use context::Context;
pub use policy::{HandlerError, Outcome};
pub use warren_topology::{RETRY_LADDER, RetryPolicy};
use warren_topology::{dead_letter_queue, retry_rung};
pub(crate) use worker::panic_message;
use worker::*;

/// A subscriber being configured; start it with [`Subscriber::handle`].
///
/// Made by the generated `subscribe` functions, e.g. `UserRegistered::subscribe(&bus, "email-service")`, which
/// is `Subscriber::new(&bus, "email-service")`:
///
/// ```no_run
/// # use std::time::Duration;
/// # async fn run(bus: warren::Bus) -> Result<(), warren::Error> {
/// # #[derive(Clone, PartialEq, prost::Message)] struct UserRegistered { #[prost(int64, tag = "1")] user_id: i64 }
/// # impl warren::__codegen::Event for UserRegistered { const SPEC: &'static warren::__codegen::EventSpec = &warren::__codegen::EventSpec {
/// #     type_name: "gametrade.v1.UserRegistered", routing_key: "user.registered", binding: "user.registered", priority: None,
/// #     retry: None, quorum: false, limit: None, format: warren::WireFormat::Protobuf,
/// #     exchange: warren::__codegen::ExchangeSpec { name: "gametrade.events", kind: warren::__codegen::ExchangeKind::Topic, durable: true, auto_delete: false } }; }
/// # impl warren::Payload for UserRegistered { const TYPE_NAME: &'static str = "gametrade.v1.UserRegistered"; }
/// let subscription = warren::Subscriber::<UserRegistered>::new(&bus, "email-service")
///     .concurrency(8)                                    // eight handlers at once
///     .retry(warren::RetryPolicy::exponential(5, Duration::from_millis(200)))
///     .handler_timeout(Duration::from_secs(10))          // a slower handler fails, and is retried
///     .handle(|event: UserRegistered, ctx: warren::Context| async move {
///         let tenant = ctx.headers().get_str("tenant").unwrap_or("default");
///         println!("{tenant}: welcome user {} (attempt {})", event.user_id, ctx.attempt());
///         Ok::<_, warren::HandlerError>(())
///     })
///     .await?;
/// subscription.stop().await; // handlers running finish first
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a subscriber does nothing until `handle` is awaited"]
pub struct Subscriber<T> {
    bus: Bus,
    group: String,
    pattern: Option<String>,
    queue: Option<String>,
    prefetch: u16,
    concurrency: usize,
    temporary: bool,
    retry: RetryPolicy,
    handler_timeout: Option<Duration>,
    middleware: Layers,
    _type: PhantomData<fn() -> T>,
}

impl<T: Inbound> Subscriber<T> {
    /// A subscriber for consumer group `group`, bound with the contract's routing keys.
    pub fn new(bus: &Bus, group: &str) -> Self {
        Subscriber {
            bus: bus.clone(),
            group: group.to_owned(),
            pattern: None,
            queue: None,
            prefetch: T::default_prefetch().unwrap_or(bus.config().prefetch),
            concurrency: 1,
            temporary: false,
            retry: T::retry_policy().unwrap_or_default(),
            handler_timeout: None,
            middleware: Layers::default(),
            _type: PhantomData,
        }
    }

    /// Sets how failed messages are retried, instead of the contract's policy (or [`RetryPolicy::default`]
    /// when the contract has none).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Fails a handler run that takes longer than `limit`; the message is then retried under the policy.
    pub fn handler_timeout(mut self, limit: Duration) -> Self {
        self.handler_timeout = Some(limit);
        self
    }

    /// Adds `layer` around this subscriber's deliveries, after the bus's layers ([`crate::BusConfig::middleware`])
    /// and those added before it: it may refuse a delivery, which is then dead-lettered with the reason
    /// without running the handler (see [`crate::Middleware`]).
    pub fn middleware(mut self, layer: impl crate::Middleware) -> Self {
        self.middleware = self.middleware.with(Arc::new(layer));
        self
    }

    /// Binds with `pattern` (e.g. `user.*`) instead of the contract's keys. It must be able to match at least
    /// one of the contract's routing keys, or [`Subscriber::handle`] fails.
    pub fn pattern(mut self, pattern: &str) -> Self {
        self.pattern = Some(pattern.to_owned());
        self
    }

    /// Consumes from `queue` instead of the default `<group>.<type or exchange>[.<pattern>]`.
    pub fn queue(mut self, queue: &str) -> Self {
        self.queue = Some(queue.to_owned());
        self
    }

    /// At most `n` deliveries unacknowledged at once (default from [`crate::BusConfig::prefetch`]).
    pub fn prefetch(mut self, n: u16) -> Self {
        self.prefetch = n.max(1);
        self
    }

    /// At most `n` handlers running at once (default 1, which keeps the queue's order; at least 1, at most
    /// [`MAX_CONCURRENCY`]).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.clamp(1, MAX_CONCURRENCY);
        self
    }

    /// Uses a temporary queue: not durable, deleted once the subscriber stops, and (with its dead-letter queue)
    /// expired by the broker after a minute unused. For demos, tests and throwaway listeners; messages
    /// published while no temporary subscriber runs are not kept.
    pub fn temporary(mut self) -> Self {
        self.temporary = true;
        self
    }

    /// Hands the handler an `Arc<T>` instead of a `T`: the same queue, bindings and policies, but when a
    /// message reaches several subscribers of `T` (a fan-out on the in-memory transport), they share one decoded
    /// value instead of each getting a clone. A message keeps one decoding, of the type that decoded it first:
    /// subscribers of another type decode their own. For handlers that only read the event; over RabbitMQ every
    /// delivery is decoded on its own either way. (Once is enough: `.shared().shared()` would hand over an
    /// `Arc<Arc<T>>`.)
    ///
    /// ```no_run
    /// # async fn example<T: warren::Inbound + std::fmt::Debug>(subscriber: warren::Subscriber<T>) -> warren::Result<()> {
    /// use std::sync::Arc;
    ///
    /// // `subscriber` as the generated code makes it, e.g. `UserRegistered::subscribe(&bus, "audit")`:
    /// let subscription = subscriber
    ///     .shared()
    ///     .handle(|event: Arc<T>, _| async move {
    ///         println!("audit: {event:?}");
    ///         Ok::<_, warren::HandlerError>(())
    ///     })
    ///     .await?;
    /// # subscription.stop().await;
    /// # Ok(()) }
    /// ```
    pub fn shared(self) -> Subscriber<std::sync::Arc<T>> {
        // Every field named (no `..`): a field added later must be carried over here, or this does not compile.
        Subscriber {
            bus: self.bus,
            group: self.group,
            pattern: self.pattern,
            queue: self.queue,
            prefetch: self.prefetch,
            concurrency: self.concurrency,
            temporary: self.temporary,
            retry: self.retry,
            handler_timeout: self.handler_timeout,
            middleware: self.middleware,
            _type: PhantomData,
        }
    }

    /// The queue this subscriber consumes.
    pub fn queue_name(&self) -> String {
        if let Some(queue) = T::work_queue() {
            return queue.to_owned();
        }
        if let Some(queue) = &self.queue {
            return queue.clone();
        }
        match &self.pattern {
            Some(pattern) => format!("{}.{}.{}", self.group, T::queue_suffix(), pattern),
            None => format!("{}.{}", self.group, T::queue_suffix()),
        }
    }

    /// Declares the queue (and its `<queue>.dlq`), binds it, and starts calling `handler` for each message.
    ///
    /// The message is acknowledged only after the handler returns `Ok`. A handler `Err`, panic or timeout is
    /// retried under the [`RetryPolicy`], then dead-lettered with the error as its reason; a payload that does
    /// not decode, or has the wrong type, is dead-lettered at once.
    pub async fn handle<F, Fut, O, E>(self, handler: F) -> Result<Subscription>
    where
        F: Fn(T, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<O, E>> + Send + 'static,
        O: Into<Outcome>,
        E: Into<HandlerError>,
    {
        let exchange = T::exchange();
        let work_queue = T::work_queue();
        if let Some(queue) = work_queue
            && (self.pattern.is_some() || self.queue.is_some() || self.temporary)
        {
            return Err(Error::config(format!(
                "workers of a task consume its contract's queue \"{queue}\": drop `pattern`, `queue` and `temporary`"
            )));
        }
        let bindings: Vec<String> = match (&self.pattern, exchange.kind) {
            _ if work_queue.is_some() => Vec::new(),
            (_, ExchangeKind::Fanout | ExchangeKind::Headers) => vec![String::new()],
            (Some(pattern), kind) => {
                if let Some(problem) = topic::pattern_problem(pattern) {
                    return Err(Error::config(format!("bad binding pattern: {problem}")));
                }
                let keys = T::routing_keys();
                let matches = |key: &&str| match kind {
                    ExchangeKind::Topic => topic::overlaps(pattern, key),
                    _ => pattern == key,
                };
                if !keys.iter().any(matches) {
                    return Err(Error::config(format!(
                        "pattern \"{pattern}\" cannot match any event on exchange \"{}\" (routing keys: {}); fix the pattern",
                        exchange.name,
                        keys.join(", ")
                    )));
                }
                vec![pattern.clone()]
            }
            (None, _) => T::routing_keys().into_iter().map(str::to_owned).collect(),
        };
        let queue = self.queue_name();
        if let Some(problem) = warren_topology::name_problem("queue", &queue, warren_topology::MAX_QUEUE_NAME_LEN) {
            return Err(Error::config(format!("{problem} (a shorter group, pattern or queue name)")));
        }
        let bus = self.bus.clone();
        // Declared now and again whenever the feed consumes anew (after a reconnection, or if someone
        // deleted the queue): bypassing the bus's declared-once cache on purpose.
        let setup: Setup = {
            let (queue, temporary, prioritized) = (queue.clone(), self.temporary, T::prioritized());
            let options = match work_queue {
                Some(queue) => bus::work_queue::<T>(queue),
                // The delivery limit is the contract's, as the work queues', `warren topology`'s and
                // check-compat's: every instance of the group declares the queue identically, whatever policy
                // its code sets with `retry` (retries go through delay queues, which the limit does not count).
                None => QueueSettings::consumer(
                    &queue,
                    temporary,
                    prioritized,
                    T::quorum().then(|| T::retry_policy().unwrap_or_default().max_attempts),
                )
                .with_limit(T::queue_limit()),
            };
            let retry = self.retry;
            Arc::new(move |bus: Bus| {
                let (queue, bindings, options) = (queue.clone(), bindings.clone(), options.clone());
                Box::pin(async move {
                    let config = bus.config();
                    let dlq = (dead_letter_queue(&queue), QueueSettings::dead_letter(&options));
                    // Verifying, the retry policy's delay queues are checked now, not when a message first
                    // needs one (declaring, they are declared then).
                    let delays: Vec<(String, QueueSettings)> = match config.topology {
                        crate::TopologyMode::Verify => retry
                            .delays_ms()
                            .into_iter()
                            .map(|ms| {
                                let name = warren_topology::retry_queue(&queue, ms);
                                (name, QueueSettings::retry_delay(&queue, ms, temporary, options.quorum))
                            })
                            .collect(),
                        _ => Vec::new(),
                    };
                    let mut needs = Vec::new();
                    if work_queue.is_none() {
                        needs.push(Need::Exchange(exchange));
                    }
                    needs.push(Need::Queue(&dlq.0, &dlq.1));
                    needs.push(Need::Queue(&queue, &options));
                    needs.extend(delays.iter().map(|(name, settings)| Need::Queue(name, settings)));
                    needs.extend(bindings.iter().map(|key| Need::Binding {
                        queue: &queue,
                        exchange: exchange.name,
                        key,
                    }));
                    bus.inner.transport.ensure(config, &needs).await
                })
            })
        };
        let (stop, signal) = Stop::new();
        let mut feed =
            Feed::open(&bus, &queue, self.prefetch, &self.group, setup, signal.clone(), ConsumeOn::Consuming).await?;
        if self.temporary && bus.config().topology == crate::TopologyMode::Declare {
            tokio::spawn(keep_side_queues(bus.clone(), queue.clone(), signal.clone()));
        }

        let timeout = bus.config().operation_timeout;
        let concurrency = self.concurrency;
        let limit = Arc::new(Semaphore::new(concurrency));
        let handler = Arc::new(handler);
        let worker = Worker {
            stats: bus.inner.metrics.subscriber(&self.group, &queue),
            bus: bus.clone(),
            context_bus: Arc::new(bus.clone()),
            group: self.group.clone(),
            queue: queue.clone(),
            retry: self.retry,
            handler_timeout: self.handler_timeout,
            temporary: self.temporary,
            // As `QueueSettings::consumer` decides: temporary queues are never quorum queues.
            quorum: T::quorum() && !self.temporary,
            layers: bus.config().middleware.then(&self.middleware),
        };
        let batch = usize::from(self.prefetch / 4).max(1);
        // Lingering saves the in-memory publisher a thread wake-up per message; over AMQP, lapin's own I/O
        // thread wakes the consumer anyway, and yielding would only churn the scheduler. Over AMQP, acks are
        // frames: a consumer that caught up waits a moment for the next delivery before acknowledging, or it
        // would send an ack per message whenever it is faster than the broker.
        let memory = matches!(bus.inner.transport, crate::transport::Transport::Memory(_));
        let registered = Registered { bus: bus.clone(), stats: Arc::clone(&worker.stats) };
        let task = bus.inner.running.run(&stop, move |done| {
            tokio::spawn(async move {
                // Declared first, so dropped last: after the handlers, whether the task ends or is aborted.
                let _registered = registered;
                let mut acks = Vec::with_capacity(batch);
                let mut last = LastType::default();
                // With `concurrency` above 1, the handlers running in tasks of their own: dropped with this task, so
                // that a stop whose deadline passes abandons them rather than leaving them running with the bus.
                let mut handlers = Handlers::new(concurrency);
                while signal.deadline().is_none() {
                    // A turn of tokio's cooperative budget per delivery: a consumer that always finds one ready
                    // (a backlog, a fast publisher) still lets the other tasks of its thread run now and then.
                    tokio::task::coop::consume_budget().await;
                    // Take what is ready without waiting; before waiting, send the acks collected so far, so an
                    // idle consumer never holds one back.
                    let delivery = match feed.ready() {
                        Some(delivery) => delivery,
                        None => match next_delivery(&mut feed, &mut acks, memory).await {
                            Some(delivery) => delivery,
                            None => break, // stopped
                        },
                    };
                    if signal.deadline().is_some() {
                        // Stopped while this task waited or gave up its thread: no handler starts after a stop.
                        // The delivery goes back to the queue with the consumer.
                        break;
                    }
                    if concurrency == 1 {
                        // One at a time: run the handler right here, in order, without a task per message, and
                        // acknowledge in batches.
                        if let Some(acker) =
                            worker.process::<T, _, _, _, _>(delivery, handler.as_ref(), &mut last).await
                        {
                            acks.push(acker);
                            if acks.len() >= batch {
                                Acker::ack_all(&mut acks).await;
                            }
                        }
                        continue;
                    }
                    let Ok(permit) = Arc::clone(&limit).acquire_owned().await else { break };
                    let handler = Arc::clone(&handler);
                    let worker = worker.clone();
                    handlers.spawn(async move {
                        let mut last = LastType::default();
                        if let Some(acker) =
                            worker.process::<T, _, _, _, _>(delivery, handler.as_ref(), &mut last).await
                        {
                            Acker::ack_all(&mut vec![acker]).await;
                        }
                        drop(permit);
                    });
                }
                Acker::ack_all(&mut acks).await;
                // Let running handlers settle their deliveries, until the stop deadline.
                let until = signal.deadline().unwrap_or_else(|| Instant::now().later(timeout));
                let _ = tokio::time::timeout_at(until.into(), limit.acquire_many(concurrency as u32)).await;
                // Past the deadline: the handlers still running are abandoned, and their messages go back to the
                // queue with the consumer.
                handlers.abort_all().await;
                feed.cancel().await;
                let _ = done.send(true);
            })
        });
        Ok(Subscription { queue, stop, task, timeout })
    }
}

/// Keeps a temporary subscriber's dead-letter and delay queues declared while it runs. They have no consumers,
/// so RabbitMQ deletes them once `x-expires` ([`warren_topology::TEMPORARY_QUEUE_EXPIRY_MS`]) passes without
/// a declaration (a publish does not count): without this, a temporary subscriber running past a minute lost
/// what it dead-lettered (nowhere to go) and could not retry. Once it stops, they expire, as intended.
async fn keep_side_queues(bus: Bus, queue: String, mut stop: crate::feed::StopSignal) {
    let every = Duration::from_millis(u64::from(warren_topology::TEMPORARY_QUEUE_EXPIRY_MS) / 3);
    let dlq = (dead_letter_queue(&queue), QueueSettings::plain(true));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.stopped() => return,
        }
        let delays: Vec<(String, QueueSettings)> = bus
            .declared_retry_delays(&queue)
            .into_iter()
            .map(|ms| (warren_topology::retry_queue(&queue, ms), QueueSettings::retry_delay(&queue, ms, true, false)))
            .collect();
        let mut needs = vec![Need::Queue(&dlq.0, &dlq.1)];
        needs.extend(delays.iter().map(|(name, settings)| Need::Queue(name, settings)));
        let config = bus.config();
        match tokio::time::timeout(config.operation_timeout, bus.inner.transport.ensure(config, &needs)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%queue, %error, "could not renew a temporary subscriber's side queues"),
            Err(_) => tracing::warn!(%queue, "renewing a temporary subscriber's side queues timed out"),
        }
    }
}

/// The most handlers a subscriber runs at once ([`Subscriber::concurrency`]): as many as a prefetch can hold.
pub const MAX_CONCURRENCY: usize = u16::MAX as usize;

/// How long a consumer over AMQP that has caught up waits for the next delivery before sending the acks it holds.
/// RabbitMQ delivers in bursts with gaps of a few milliseconds between them; at 2 ms a W7 consumer sent an ack
/// frame at most of those gaps (4,900 acks for 200,000 deliveries, raw lapin's batches of 64 send 3,130), at
/// 10 ms it sends 3,160, and twelve alternating `--only W7` pairs went from 0.90x / 0.87x to 0.94x / 0.90x raw
/// lapin, a microsecond less client CPU per delivery. An idle consumer's last acks reach the broker 10 ms after
/// its handler returns, at most; a stop waits as long for the wait to end.
const ACK_DELAY: Duration = Duration::from_millis(10);

/// The next delivery when none is ready: before waiting for long, sends the acks collected so far, so an idle
/// consumer never holds one back. `None` once stopped.
async fn next_delivery(feed: &mut Feed, acks: &mut Vec<Acker>, memory: bool) -> Option<Delivery> {
    if !memory
        && !acks.is_empty()
        && let Some(delivery) = feed.next_within(ACK_DELAY).await
    {
        return Some(delivery);
    }
    Acker::ack_all(acks).await;
    if memory && let Some(delivery) = linger(feed).await {
        return Some(delivery);
    }
    feed.next().await
}

/// Before a consumer parks its thread, it yields a few times: under load the next message is usually a moment
/// away, and catching it saves the publisher a thread wake-up (a syscall) per message. Bounded, so an idle
/// consumer costs nothing measurable.
async fn linger(feed: &mut Feed) -> Option<Delivery> {
    const YIELDS: usize = 4;
    for _ in 0..YIELDS {
        tokio::task::yield_now().await;
        if let Some(delivery) = feed.ready() {
            return Some(delivery);
        }
    }
    None
}

/// A running subscriber. Dropping it leaves the subscriber running; call [`Subscription::stop`] to end it, or
/// shut the bus down.
#[derive(Debug)]
pub struct Subscription {
    queue: String,
    stop: Stop,
    task: tokio::task::JoinHandle<()>,
    timeout: Duration,
}

impl Subscription {
    /// The queue being consumed.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Stops consuming, waits for running handlers to settle their messages (up to the bus's operation
    /// timeout), and cancels the consumer. Messages not yet handled stay in the queue for the next consumer.
    pub async fn stop(self) {
        let deadline = self.timeout;
        self.stop_within(deadline).await;
    }

    /// [`Subscription::stop`] with an explicit deadline: handlers still running when it passes are abandoned,
    /// and their messages go back to the queue, marked redelivered, for another consumer.
    pub async fn stop_within(mut self, deadline: Duration) {
        let until = Instant::now().later(deadline);
        self.stop.stop(until);
        // A little past the deadline: the task itself cancels its consumer once the deadline passes.
        if tokio::time::timeout(deadline.saturating_add(Duration::from_millis(200)), &mut self.task).await.is_err() {
            // Still inside a handler: abandon it. Dropping the task drops its feed, which cancels the consumer.
            self.task.abort();
            let _ = (&mut self.task).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_reasons_are_cut_on_a_char_boundary() {
        let long = "é".repeat(5000);
        let cut = reason_safe(&long);
        assert!(cut.len() <= 4096);
        assert!(long.starts_with(cut));
    }
}
