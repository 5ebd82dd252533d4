//! Typed subscribers: a consumer group's durable queue, bound by the contract, feeding a handler.

use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::headers::{HeaderValue, Headers};
use futures_util::FutureExt;
use tokio::sync::Semaphore;

use crate::bus::{self, Bus, durability, subscriber_queue};
use crate::contract::{ExchangeKind, Inbound};
use crate::envelope;
use crate::error::{Error, Later, Result};
use crate::feed::{Feed, Handlers, Setup, Stop};
use crate::metrics::{Fate, LastType, SubscriberStats};
use crate::topic;
use crate::transport::{Acker, Delivery, Message, Settle};

/// How a subscriber retries messages whose handler failed, panicked or timed out.
///
/// Each retry waits in a delay queue (`<queue>.retry.<ms>`, a TTL queue that dead-letters back into the
/// subscriber's queue), so a waiting message holds no consumer slot and survives a restart. After
/// `max_attempts` deliveries the message goes to `<queue>.dlq` with the last error.
///
/// ```
/// use std::time::Duration;
/// use warren::RetryPolicy;
///
/// // Five deliveries, 200 ms, then 400 ms, 800 ms, 1.6 s apart (never more than ten seconds).
/// let policy = RetryPolicy::exponential(5, Duration::from_millis(200)).max_backoff(Duration::from_secs(10));
/// assert_eq!(policy.backoff(1), Duration::from_millis(200));
/// assert_eq!(policy.backoff(4), Duration::from_millis(1600));
/// assert_eq!(RetryPolicy::never().max_attempts, 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Deliveries in all, the first included; 1 means never retry.
    pub max_attempts: u32,
    /// Wait before the first retry.
    pub initial_backoff: Duration,
    /// Each further wait is this many times the previous one.
    pub multiplier: u32,
    /// Waits never exceed this.
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// `max_attempts` deliveries, waiting `initial_backoff`, then `multiplier` times longer each time, up to
    /// `max_backoff`.
    pub const fn new(max_attempts: u32, initial_backoff: Duration, multiplier: u32, max_backoff: Duration) -> Self {
        RetryPolicy { max_attempts, initial_backoff, multiplier, max_backoff }
    }

    /// No retries: the first failure dead-letters the message.
    pub const fn never() -> Self {
        RetryPolicy::new(1, Duration::ZERO, 1, Duration::ZERO)
    }

    /// `max_attempts` deliveries, waiting `initial_backoff`, then twice as long each time, up to five minutes.
    pub const fn exponential(max_attempts: u32, initial_backoff: Duration) -> Self {
        RetryPolicy::new(max_attempts, initial_backoff, 2, Duration::from_secs(300))
    }

    /// The same policy with `max_backoff` as the longest wait.
    pub const fn max_backoff(mut self, max_backoff: Duration) -> Self {
        self.max_backoff = max_backoff;
        self
    }

    /// The same policy with each wait `multiplier` times the previous one.
    pub const fn multiplier(mut self, multiplier: u32) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// The wait after failed delivery number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = self.multiplier.max(1).saturating_pow(attempt.saturating_sub(1));
        self.initial_backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

impl Default for RetryPolicy {
    /// Three deliveries, one and two seconds apart.
    fn default() -> Self {
        RetryPolicy::exponential(3, Duration::from_secs(1))
    }
}

/// The delays a handler's [`Outcome::Retry`] is rounded up to: each distinct delay is a queue on the broker
/// (`<queue>.retry.<ms>`), so a handler choosing its own (with jitter, say) would otherwise make them without
/// bound. From 10 ms to a day, about two rungs to every power of ten.
pub const RETRY_LADDER: [Duration; 23] = {
    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }
    const S: u64 = 1000;
    [
        ms(10),
        ms(25),
        ms(50),
        ms(100),
        ms(250),
        ms(500),
        ms(S),
        ms(2 * S),
        ms(5 * S),
        ms(10 * S),
        ms(15 * S),
        ms(30 * S),
        ms(60 * S),
        ms(120 * S),
        ms(300 * S),
        ms(600 * S),
        ms(900 * S),
        ms(1800 * S),
        ms(3600 * S),
        ms(7200 * S),
        ms(6 * 3600 * S),
        ms(12 * 3600 * S),
        ms(24 * 3600 * S),
    ]
};

/// `after` rounded up to the next rung of [`RETRY_LADDER`]; anything above a day waits a day.
fn retry_rung(after: Duration) -> Duration {
    RETRY_LADDER.iter().copied().find(|rung| *rung >= after).unwrap_or(RETRY_LADDER[RETRY_LADDER.len() - 1])
}

/// What a handler decided about a message. A handler returning `Ok(())` acknowledges; one returning an
/// `Outcome` says more:
///
/// ```
/// use std::time::Duration;
/// use warren::{HandlerError, Outcome};
///
/// fn decide(stock: u32) -> Result<Outcome, HandlerError> {
///     Ok(match stock {
///         0 => Outcome::Retry { after: Duration::from_secs(30) }, // rounded up to a rung of RETRY_LADDER
///         n if n > 1_000_000 => Outcome::DeadLetter { reason: format!("implausible stock {n}") },
///         _ => Outcome::Ack,
///     })
/// }
/// assert_eq!(decide(3).unwrap(), Outcome::Ack);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Done: the message is acknowledged and removed.
    Ack,
    /// Try again later: the message is redelivered after `after`, rounded up to the next rung of
    /// [`RETRY_LADDER`] (10 ms to a day), as each distinct delay is a queue on the broker; counts as a failed
    /// attempt, so the retry policy's limit still applies.
    Retry {
        /// How long to wait before redelivery.
        after: Duration,
    },
    /// Never succeed: the message goes to the queue's dead-letter queue (`<queue>.dlq`) with `reason`.
    DeadLetter {
        /// Why, kept in the `x-warren-reason` header.
        reason: String,
    },
}

impl From<()> for Outcome {
    fn from((): ()) -> Self {
        Outcome::Ack
    }
}

/// The error type handlers may return; anything convertible (any `std::error::Error`, `anyhow::Error`, a
/// `String`) works with `?`.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// Envelope data of a delivery, passed to handlers beside the typed message. Cheap: it shares the delivered
/// message rather than copying from it.
#[derive(Debug, Clone)]
pub struct Context {
    // The subscriber's own handle: cloning the bus itself for every delivery would have every subscriber
    // thread count references on one shared cache line.
    bus: Arc<Bus>,
    message: Arc<Message>,
    redelivered: bool,
    attempt: u32,
}

impl Context {
    fn new(bus: &Arc<Bus>, delivery: &Delivery, attempt: u32) -> Self {
        Context {
            bus: Arc::clone(bus),
            message: Arc::clone(&delivery.message),
            redelivered: delivery.redelivered,
            attempt,
        }
    }

    /// The bus the message arrived on, to publish follow-up events.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// The publisher's unique id for the message (stable across redeliveries: use it to deduplicate).
    pub fn message_id(&self) -> Option<&str> {
        self.message.properties.message_id()
    }

    /// The correlation id the publisher set ([`crate::PublishOptions::correlation_id`]), or the message id for a
    /// message that starts a conversation (it travels without one).
    pub fn correlation_id(&self) -> Option<&str> {
        self.message.properties.correlation_id()
    }

    /// The publishing service's name.
    pub fn app_id(&self) -> Option<&str> {
        self.message.properties.app_id()
    }

    /// The exchange the message was published to.
    pub fn exchange(&self) -> &str {
        &self.message.exchange
    }

    /// The routing key it was published with.
    pub fn routing_key(&self) -> &str {
        &self.message.routing_key
    }

    /// The content type it was sent with: `application/x-protobuf` or `application/json`.
    pub fn content_type(&self) -> Option<&str> {
        self.message.properties.content_type()
    }

    /// The fingerprint of the schema the sender was generated from, when it sent one. A Warren bus stamps it
    /// on its first message of each type, then on the first in each second and on one in 64; other senders
    /// may never stamp it.
    pub fn schema_fingerprint(&self) -> Option<&str> {
        self.message.properties.schema()
    }

    /// Whether the broker delivered it before (to this or another consumer) without an acknowledgement.
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// When it was published, in Unix seconds.
    pub fn timestamp(&self) -> Option<u64> {
        self.message.properties.timestamp()
    }

    /// The headers it was published with ([`crate::PublishOptions::header`]), Warren's own `x-warren-*`
    /// ones included (a retried message carries its failure record). Empty when it has none.
    pub fn headers(&self) -> &Headers {
        self.message.properties.headers().unwrap_or(&crate::headers::NO_HEADERS)
    }

    /// Which delivery of the message this is: 1 the first time, 2 on the first retry, and so on.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

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
/// #     retry: None, quorum: false, format: warren::WireFormat::Protobuf,
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

    /// At most `n` handlers running at once (default 1, which keeps the queue's order).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
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
        let bus = self.bus.clone();
        // Declared now and again whenever the feed consumes anew (after a reconnection, or if someone
        // deleted the queue): bypassing the bus's declared-once cache on purpose.
        let setup: Setup = {
            let (queue, temporary, prioritized) = (queue.clone(), self.temporary, T::prioritized());
            let options = match work_queue {
                Some(queue) => bus::work_queue::<T>(queue),
                None => {
                    subscriber_queue(&queue, temporary, prioritized, T::quorum().then_some(self.retry.max_attempts))
                }
            };
            Arc::new(move |bus: Bus| {
                let (queue, bindings, options) = (queue.clone(), bindings.clone(), options.clone());
                Box::pin(async move {
                    let transport = &bus.inner.transport;
                    if work_queue.is_none() {
                        transport.declare_exchange(exchange).await?;
                    }
                    transport.declare_queue(&format!("{queue}.dlq"), &durability(temporary)).await?;
                    transport.declare_queue(&queue, &options).await?;
                    for key in &bindings {
                        transport.bind(&queue, exchange.name, key).await?;
                    }
                    Ok(())
                })
            })
        };
        let (stop, signal) = Stop::new();
        let mut feed = Feed::open(&bus, &queue, self.prefetch, &self.group, setup, signal.clone()).await?;

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
                drop(handlers);
                feed.cancel().await;
                let _ = done.send(true);
            })
        });
        Ok(Subscription { queue, stop, task, timeout })
    }
}

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

#[derive(Clone)]
struct Worker {
    stats: Arc<SubscriberStats>,
    bus: Bus,
    /// What handlers' contexts share.
    context_bus: Arc<Bus>,
    group: String,
    queue: String,
    retry: RetryPolicy,
    handler_timeout: Option<Duration>,
    temporary: bool,
}

/// What became of one handler run, before settling the delivery.
enum Verdict {
    /// The handler returned an outcome.
    Decided(Outcome),
    /// It failed, panicked or timed out: retried under the policy.
    Failed(String),
}

impl Worker {
    /// Handles one delivery; returns its acker when it is to be acknowledged (the caller batches acks), after
    /// settling it otherwise.
    async fn process<T, F, Fut, O, E>(&self, delivery: Delivery, handler: &F, last: &mut LastType) -> Option<Acker>
    where
        T: Inbound,
        F: Fn(T, Context) -> Fut,
        Fut: Future<Output = std::result::Result<O, E>>,
        O: Into<Outcome>,
        E: Into<HandlerError>,
    {
        let properties = &delivery.properties;
        // A plain AMQP client may send no `type`: on a queue for one type, the message is read as that type.
        let type_name = properties.kind().filter(|kind| !kind.is_empty()).or(T::sole_type()).unwrap_or_default();
        let mut tracker = self.stats.delivered(type_name, last);
        if let Some(seen) = properties.schema()
            && let Some(own) = T::fingerprint(type_name)
            && !own.is_empty()
            && seen != own
        {
            self.stats.schema_mismatch(type_name, seen, own);
        }
        let message = match delivery.message.decode::<T>(type_name, properties.format()) {
            Ok(message) => message,
            // Decoding will never succeed: dead-letter at once, no retries.
            Err(error) => {
                self.dead_letter(&delivery, &error.to_string(), 1).await;
                tracker.ended(Fate::DeadLettered, true);
                return None;
            }
        };
        let attempt = 1 + properties.header_i64(envelope::ATTEMPTS).unwrap_or(0).clamp(0, 1 << 20) as u32;
        let context = Context::new(&self.context_bus, &delivery, attempt);
        let run = async {
            // A handler may panic while making its future, not only while it runs: catch both.
            let future = match std::panic::catch_unwind(AssertUnwindSafe(|| handler(message, context))) {
                Ok(future) => future,
                Err(panic) => return Verdict::Failed(format!("handler panicked: {}", panic_message(&panic))),
            };
            match AssertUnwindSafe(future).catch_unwind().await {
                Ok(Ok(outcome)) => Verdict::Decided(outcome.into()),
                Ok(Err(error)) => Verdict::Failed(format!("handler failed: {}", error.into())),
                Err(panic) => Verdict::Failed(format!("handler panicked: {}", panic_message(&panic))),
            }
        };
        tracker.start();
        let verdict = match self.handler_timeout {
            Some(limit) => tokio::time::timeout(limit, run)
                .await
                .unwrap_or_else(|_| Verdict::Failed(format!("handler timed out after {limit:?}"))),
            None => run.await,
        };
        tracker.stop();
        match verdict {
            Verdict::Decided(Outcome::Ack) => {
                tracker.ended(Fate::Processed, false);
                return Some(delivery.acker);
            }
            Verdict::Decided(Outcome::Retry { after }) => {
                let after = retry_rung(after);
                let fate = self.retry_or_dead_letter(&delivery, attempt, after, "the handler asked to retry").await;
                tracker.ended(fate, false);
            }
            Verdict::Decided(Outcome::DeadLetter { reason }) => {
                self.dead_letter(&delivery, &reason, attempt).await;
                tracker.ended(Fate::DeadLettered, false);
            }
            Verdict::Failed(reason) => {
                let after = self.retry.backoff(attempt);
                let fate = self.retry_or_dead_letter(&delivery, attempt, after, &reason).await;
                tracker.ended(fate, true);
            }
        }
        None
    }

    /// Retries through a delay queue while attempts remain, then dead-letters.
    async fn retry_or_dead_letter(&self, delivery: &Delivery, attempt: u32, after: Duration, reason: &str) -> Fate {
        if attempt >= self.retry.max_attempts {
            self.dead_letter(delivery, reason, attempt).await;
            return Fate::DeadLettered;
        }
        tracing::debug!(queue = %self.queue, attempt, ?after, reason, "retrying message");
        // `<queue>.retry.<ms>`: messages wait there for the TTL, then the broker dead-letters them back into the
        // queue through the default exchange. One queue per delay, so no message waits behind a longer one.
        // RabbitMQ takes a TTL of at most 2^31 - 1 ms (about 24 days).
        let delay_ms = u32::try_from(after.as_millis().clamp(1, i32::MAX as u128)).unwrap_or(i32::MAX as u32);
        let retry_queue = format!("{}.retry.{delay_ms}", self.queue);
        let options = crate::transport::QueueOptions {
            message_ttl: Some(delay_ms),
            dead_letter: Some((String::new(), self.queue.clone())),
            ..durability(self.temporary)
        };
        let mut headers = self.failure_headers(delivery, reason);
        headers.insert(envelope::ATTEMPTS, attempt);
        let properties = delivery.properties.with_headers(headers);
        let sent = match self.bus.declare_queue(&retry_queue, options).await {
            Ok(()) => self.bus.publish_raw("", &retry_queue, delivery.body.clone(), properties).await,
            Err(error) => Err(error),
        };
        match sent {
            Ok(()) => {
                delivery.settle(Settle::Ack).await;
            }
            Err(error) => {
                // Not lost: back to the queue at once, marked redelivered.
                tracing::warn!(queue = %self.queue, %error, "could not schedule a retry; requeueing");
                delivery.settle(Settle::Requeue).await;
            }
        }
        Fate::Retried
    }

    /// Copies the delivery to `<queue>.dlq` with why, where from and how often it failed, then acknowledges it.
    /// If the copy cannot be confirmed, rejects it instead, so the broker dead-letters it (without the reason)
    /// rather than losing it.
    async fn dead_letter(&self, delivery: &Delivery, reason: &str, attempts: u32) {
        tracing::warn!(queue = %self.queue, reason, attempts, "dead-lettering message");
        let mut headers = self.failure_headers(delivery, reason);
        headers.insert(envelope::ATTEMPTS, attempts);
        let properties = delivery.properties.with_headers(headers);
        let dlq = format!("{}.dlq", self.queue);
        match self.bus.publish_raw("", &dlq, delivery.body.clone(), properties).await {
            Ok(()) => {
                delivery.settle(Settle::Ack).await;
            }
            Err(error) => {
                tracing::warn!(queue = %self.queue, %error, "could not copy to the dead-letter queue; rejecting");
                delivery.settle(Settle::Reject).await;
            }
        }
    }

    /// The delivery's headers plus the failure record. The original exchange and routing key, and the time of
    /// the first failure, are kept from the first failure on, across retry hops.
    fn failure_headers(&self, delivery: &Delivery, reason: &str) -> Headers {
        let old = delivery.properties.headers();
        let mut headers = old.cloned().unwrap_or_default();
        let now = HeaderValue::Timestamp(envelope::now_unix());
        if !headers.contains(envelope::DLQ_EXCHANGE) {
            headers.insert(envelope::DLQ_EXCHANGE, &*delivery.exchange);
            headers.insert(envelope::DLQ_ROUTING_KEY, &*delivery.routing_key);
        }
        if !headers.contains(envelope::FIRST_FAILED_AT) {
            headers.insert(envelope::FIRST_FAILED_AT, now.clone());
        }
        headers.insert(envelope::DLQ_FAILED_AT, now);
        headers.insert(envelope::DLQ_REASON, reason_safe(reason));
        headers.insert(envelope::DLQ_CONSUMER, self.group.as_str());
        headers.insert(envelope::DLQ_SERVICE, self.bus.config().service_name.as_str());
        headers
    }
}

/// A running subscriber's place in its bus's metrics, given up when its consume task ends or is aborted.
struct Registered {
    bus: Bus,
    stats: Arc<crate::metrics::SubscriberStats>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.bus.inner.metrics.retire(&self.stats);
        self.bus.forget_subscriber_queues(&self.stats.queue);
    }
}

/// Header values are bounded: a huge error text must not make the dead-letter copy oversize.
fn reason_safe(value: &str) -> &str {
    const MAX: usize = 4096;
    if value.len() <= MAX {
        return value;
    }
    let mut end = MAX;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
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

    #[test]
    fn handler_chosen_delays_round_up_to_the_ladder() {
        let ms = Duration::from_millis;
        for (asked, waits) in [(0, 10), (1, 10), (10, 10), (11, 25), (999, 1000), (1001, 2000), (3_000, 5_000)] {
            assert_eq!(retry_rung(ms(asked)), ms(waits), "{asked} ms");
        }
        assert_eq!(retry_rung(Duration::MAX), Duration::from_secs(24 * 3600), "a day at most");
        assert!(RETRY_LADDER.windows(2).all(|pair| pair[0] < pair[1]), "rising");
        // Jittered delays land on a handful of queues.
        let rungs: std::collections::BTreeSet<Duration> = (0..10_000).map(|i| retry_rung(ms(1000 + i))).collect();
        assert_eq!(rungs.len(), 5, "1 s to 11 s: {rungs:?}");
    }
}
