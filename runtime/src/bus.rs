//! The bus: one broker connection (RabbitMQ or in memory), shared by publishers, subscribers and RPC.

use rustc_hash::FxHashSet;
use std::sync::{Arc, Mutex as StdMutex};

use crate::codec::{self, Payload, WireFormat};
use crate::config::{BusConfig, Endpoint};
use crate::contract::{Event, ExchangeSpec, Inbound, Task};
use crate::envelope::{self, Envelope, Properties};
use crate::error::{Error, Later, Result};
use crate::headers::{HeaderValue, Headers, MessageProperties};
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::middleware;
use crate::rpc::Replies;
use crate::trace;
use crate::transport::amqp::Amqp;
use crate::transport::memory::Broker;
use crate::transport::{Publish, QueueSettings, Transport};
use warren_topology::{dead_letter_queue, is_retry_queue};

/// A handle to the message bus. Cheap to clone; clones share one connection.
///
/// Running subscriptions and servers, and RPC clients, hold their bus. Once they have stopped (or been dropped)
/// and the last clone is dropped, its connections close at once, without waiting for anything in flight;
/// [`Bus::shutdown`] lets work in progress finish first.
///
/// ```no_run
/// # async fn run() -> Result<(), warren::Error> {
/// let bus = warren::Bus::from_env().await?; // RABBITMQ_URL, or amqp://guest:guest@127.0.0.1:5672/%2f
/// let test_bus = warren::Bus::in_memory();  // no broker needed: same API, same behaviour
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Bus {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: BusConfig,
    pub(crate) transport: Transport,
    /// Queues this bus has declared, so each is declared once.
    declared: StdMutex<FxHashSet<String>>,
    /// Exchanges this bus has declared; read on every publish, so keyed by the contract's `'static` names.
    exchanges: std::sync::RwLock<FxHashSet<&'static str>>,
    /// Held while declaring, so that a burst of first publishes declares once: each declaration over AMQP
    /// opens a channel, and a thousand at once would leave lapin's channel table a thousand slots wide for
    /// good (it walks the whole table for every frame it writes).
    declaring: tokio::sync::Mutex<()>,
    /// Declarations sent to the transport, for tests.
    #[cfg(test)]
    declarations: std::sync::atomic::AtomicUsize,
    /// The RPC client's reply path, opened on the first call (and again after a reconnection).
    pub(crate) replies: tokio::sync::Mutex<Option<Arc<Replies>>>,
    pub(crate) metrics: Metrics,
    /// The service name, for every message's `app_id`.
    pub(crate) app_id: &'static str,
    /// Subscribers and servers, for shutdown.
    pub(crate) running: crate::feed::Running,
    /// Set by shutdown and close: publishing fails with [`Error::Closed`] from then on.
    closed: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

/// Per-publish settings; the defaults suit almost every event.
///
/// ```
/// # use warren::{PublishOptions, Priority};
/// let options = PublishOptions::new()
///     .correlation_id("order-7")      // the message that caused this one
///     .priority(Priority::High)
///     .header("tenant", "eu-1");      // read by handlers with `ctx.headers()`
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PublishOptions {
    /// Correlation id to send. Set it to the correlation id of the message that caused this one, to trace a
    /// chain of events. Without one the message starts a conversation: it travels without a correlation id,
    /// and [`crate::Context::correlation_id`] gives its message id.
    pub correlation_id: Option<String>,
    /// Priority of this message instead of the contract's default.
    pub priority: Option<crate::Priority>,
    /// Do not wait for the broker's confirm: faster, but a message the broker loses or cannot route goes
    /// unnoticed (no [`Error::Unroutable`], no re-send after a connection failure). For telemetry-like events
    /// where throughput matters more than each message.
    pub fire_and_forget: bool,
    /// Wire format of this message instead of the contract's (protobuf unless the contract says JSON).
    pub format: Option<WireFormat>,
    /// Application headers to send. Names starting with `x-warren-` or `warren-` are Warren's own and are
    /// refused ([`Error::Config`], nothing sent), as are empty names and names over 255 bytes.
    pub headers: Headers,
}

impl PublishOptions {
    /// The defaults: confirmed, the contract's priority and format, no correlation id, no headers.
    pub fn new() -> Self {
        PublishOptions::default()
    }

    /// Sends correlation id `id` (see [`PublishOptions::correlation_id`](#structfield.correlation_id)).
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Sends with `priority` instead of the contract's.
    pub fn priority(mut self, priority: crate::Priority) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Does not wait for the broker's confirm (see [`PublishOptions::fire_and_forget`](#structfield.fire_and_forget)).
    pub fn fire_and_forget(mut self) -> Self {
        self.fire_and_forget = true;
        self
    }

    /// Sends in `format` instead of the contract's.
    pub fn format(mut self, format: WireFormat) -> Self {
        self.format = Some(format);
        self
    }

    /// Sends header `name` with `value`; handlers read it with [`crate::Context::headers`].
    pub fn header(mut self, name: impl Into<String>, value: impl Into<HeaderValue>) -> Self {
        self.headers.insert(name, value);
        self
    }
}

/// A message as it travels: for interoperating with publishers that do not use Warren, and for inspecting
/// queues such as a dead-letter queue.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RawMessage {
    /// The exchange it was published to (empty for the default exchange).
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// Whether it was delivered before.
    pub redelivered: bool,
    /// AMQP properties and headers.
    pub properties: MessageProperties,
    /// The payload.
    pub body: Vec<u8>,
}

impl RawMessage {
    /// The headers.
    pub fn headers(&self) -> &Headers {
        &self.properties.headers
    }

    /// A header's value as text, when it is a string.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.properties.headers.get_str(name)
    }

    /// A header's value as an integer, when it is one.
    pub fn header_i64(&self, name: &str) -> Option<i64> {
        self.properties.headers.get_i64(name)
    }
}

impl Bus {
    /// Connects to the broker at `url` with default settings (`amqp://…`, or `memory://` for the in-memory
    /// broker).
    pub async fn connect(url: &str) -> Result<Bus> {
        Self::with_config(BusConfig::new(url)?).await
    }

    /// Connects to `RABBITMQ_URL`, or to the local default broker when it is unset.
    pub async fn from_env() -> Result<Bus> {
        Self::with_config(BusConfig::from_env()?).await
    }

    /// A bus on a new, private in-memory broker: the same API and behaviour as RabbitMQ, no broker needed.
    /// Clones of the bus share the broker; to share it between separately made buses, connect them all to
    /// the same `memory://<name>` URL instead.
    pub fn in_memory() -> Bus {
        Self::on(BusConfig::in_memory(), Transport::Memory(Broker::default()))
    }

    /// Connects with explicit settings. Retries until `config.connect_timeout`, then fails with what was tried.
    pub async fn with_config(config: BusConfig) -> Result<Bus> {
        if config.service_name.len() > crate::MAX_HEADER_NAME_LEN {
            return Err(Error::config(format!(
                "service name of {} bytes: it is every message's `app_id`, which AMQP carries up to {} bytes; \
                 choose a shorter one (BusConfig::service_name)",
                config.service_name.len(),
                crate::MAX_HEADER_NAME_LEN
            )));
        }
        let transport = match &config.endpoint {
            Endpoint::Amqp(_) => Transport::Amqp(Amqp::connect(&config).await?),
            Endpoint::Memory(Some(name)) => Transport::Memory(Broker::named(name)),
            Endpoint::Memory(None) => Transport::Memory(Broker::default()),
        };
        Ok(Self::on(config, transport))
    }

    fn on(config: BusConfig, transport: Transport) -> Bus {
        let metrics = Metrics::new(config.history);
        let app_id = envelope::static_name(&config.service_name);
        Bus {
            inner: Arc::new(Inner {
                config,
                transport,
                declared: StdMutex::default(),
                exchanges: std::sync::RwLock::default(),
                declaring: tokio::sync::Mutex::new(()),
                #[cfg(test)]
                declarations: std::sync::atomic::AtomicUsize::new(0),
                replies: tokio::sync::Mutex::new(None),
                metrics,
                app_id,
                running: crate::feed::Running::default(),
                closed: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// The settings this bus was made with.
    pub fn config(&self) -> &BusConfig {
        &self.inner.config
    }

    /// Publishes `event` to its exchange with its routing key, both from the contract, and returns once the
    /// broker has confirmed it. An event no queue is bound for is an [`Error::Unroutable`], never a silent drop.
    ///
    /// A publish future polled and then left unpolled (a `select!` branch switched off) delays no other
    /// publish; over AMQP it may itself wait to be sent together with the publishes beside it, its deadline
    /// running meanwhile, so await it to the end or drop it.
    ///
    /// ```
    /// # #[derive(Clone, PartialEq, prost::Message)] struct UserRegistered { #[prost(int64, tag = "1")] user_id: i64 }
    /// # impl warren::__codegen::Event for UserRegistered { const SPEC: &'static warren::__codegen::EventSpec = &warren::__codegen::EventSpec {
    /// #     type_name: "gametrade.v1.UserRegistered", routing_key: "user.registered", binding: "user.registered", priority: None,
    /// #     retry: None, quorum: false, format: warren::WireFormat::Protobuf,
    /// #     exchange: warren::__codegen::ExchangeSpec { name: "gametrade.events", kind: warren::__codegen::ExchangeKind::Topic, durable: true, auto_delete: false } }; }
    /// # impl warren::Payload for UserRegistered { const TYPE_NAME: &'static str = "gametrade.v1.UserRegistered"; }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), warren::Error> {
    /// use warren::{Bus, Error};
    ///
    /// let bus = Bus::in_memory(); // or Bus::from_env().await? for RabbitMQ: the same behaviour
    /// // Nobody subscribed yet: the broker would drop it, so Warren says so instead.
    /// let unroutable = bus.publish(&UserRegistered { user_id: 1 }).await;
    /// assert!(matches!(unroutable, Err(Error::Unroutable { .. })));
    ///
    /// let welcome = warren::Subscriber::<UserRegistered>::new(&bus, "email")
    ///     .handle(|event: UserRegistered, _ctx| async move { println!("welcome, {}", event.user_id); Ok::<_, warren::HandlerError>(()) })
    ///     .await?;
    /// bus.publish(&UserRegistered { user_id: 2 }).await?; // confirmed: it is in the queue
    /// welcome.stop().await;
    /// # Ok(()) }
    /// ```
    pub async fn publish<E: Event>(&self, event: &E) -> Result<()> {
        self.publish_with(event, PublishOptions::default()).await
    }

    /// Publishes several events at once: all are sent without waiting for each other's confirm (pipelined),
    /// and the call returns when the broker has confirmed them all. Fails with [`Error::Batch`] naming each
    /// event that failed, by position; the others were published.
    pub async fn publish_batch<'a, E: Event>(&self, events: impl IntoIterator<Item = &'a E>) -> Result<()> {
        let results = futures_util::future::join_all(events.into_iter().map(|event| self.publish(event))).await;
        let total = results.len();
        let failed: Vec<(usize, Error)> =
            results.into_iter().enumerate().filter_map(|(i, result)| result.err().map(|e| (i, e))).collect();
        if failed.is_empty() { Ok(()) } else { Err(Error::Batch { total, failed }) }
    }

    /// [`Bus::publish`] with per-message options.
    ///
    /// Fails before sending anything when the event breaks its contract's validation rules
    /// ([`Error::Invalid`]) or a routing-key template's field has an unusable value ([`Error::RoutingKey`]).
    #[expect(clippy::manual_async_fn, reason = "smaller future; see `Transport::publish_until`")]
    pub fn publish_with<E: Event>(&self, event: &E, options: PublishOptions) -> impl Future<Output = Result<()>> {
        async move {
            let spec = E::SPEC;
            options.headers.check_application()?;
            event.validate().map_err(|violations| Error::Invalid { type_name: E::TYPE_NAME, violations })?;
            let routing_key = event.routing_key()?;
            self.declare_exchange(&spec.exchange).await?;
            let format = options.format.unwrap_or(spec.format);
            let priority = options.priority.or(spec.priority);
            self.send(event, spec.exchange.name, &routing_key, format, priority, options, true).await
        }
    }

    /// Puts `task` on its work queue (declared with the contract's settings if this bus has not yet), for
    /// exactly one worker to take; returns once the broker has confirmed it. Tasks wait in the queue until a
    /// worker starts.
    pub async fn enqueue<T: Task>(&self, task: &T) -> Result<()> {
        self.enqueue_with(task, PublishOptions::default()).await
    }

    /// [`Bus::enqueue`] with per-message options.
    pub async fn enqueue_with<T: Task>(&self, task: &T, options: PublishOptions) -> Result<()> {
        let spec = T::SPEC;
        options.headers.check_application()?;
        task.validate().map_err(|violations| Error::Invalid { type_name: T::TYPE_NAME, violations })?;
        self.declare_queue(&dead_letter_queue(spec.queue), QueueSettings::plain(false)).await?;
        self.declare_queue(spec.queue, work_queue::<T>(spec.queue)).await?;
        let format = options.format.unwrap_or(spec.format);
        self.send(task, "", spec.queue, format, options.priority, options, true).await
    }

    /// [`Bus::send`] between the layers' hooks: each may change the headers or refuse, and each hears how
    /// it went (a refusal included).
    async fn send_layered<P: Payload>(
        &self,
        message: &P,
        exchange: &str,
        routing_key: &str,
        format: WireFormat,
        priority: Option<crate::Priority>,
        mut options: PublishOptions,
    ) -> Result<()> {
        let layers = &self.inner.config.middleware;
        let type_name = P::TYPE_NAME;
        let started = tokio::time::Instant::now();
        let mut publish = middleware::Publish { type_name, exchange, routing_key, headers: &mut options.headers };
        let refused = layers
            .before(|layer| layer.before_publish(&mut publish), middleware::Refusal::new)
            .err()
            .map(|(layer, refusal)| Error::Refused { layer: layer.to_owned(), reason: refusal.reason().to_owned() });
        let headers = options.headers.clone();
        let result = match refused {
            Some(error) => Err(error),
            None => match options.headers.check_application() {
                Ok(()) => self.send(message, exchange, routing_key, format, priority, options, false).await,
                Err(error) => Err(error),
            },
        };
        let published = middleware::Published {
            type_name,
            exchange,
            routing_key,
            headers: &headers,
            result: result.as_ref().map(|_| ()),
            elapsed: started.elapsed(),
        };
        layers.after(|layer| layer.after_publish(&published));
        result
    }

    /// Encodes and publishes a contract message, confirmed unless fire-and-forget, and records it; through the
    /// bus's layers first when it has any and `through_layers`.
    ///
    /// The layers' path is boxed, and branches off inside this future rather than around it: a publish without
    /// layers then carries no room for their state, and no second copy of the arguments (a future awaiting
    /// another keeps both).
    #[expect(clippy::manual_async_fn, reason = "smaller future; see `Transport::publish_until`")]
    #[expect(clippy::too_many_arguments, reason = "private; the publish's parts, passed on as they are")]
    fn send<P: Payload>(
        &self,
        message: &P,
        exchange: &str,
        routing_key: &str,
        format: WireFormat,
        priority: Option<crate::Priority>,
        mut options: PublishOptions,
        through_layers: bool,
    ) -> impl Future<Output = Result<()>> + Send {
        async move {
            if through_layers && self.inner.config.middleware.get().is_some() {
                // `dyn`: `send_layered` calls this function again.
                let layered: std::pin::Pin<Box<dyn Future<Output = Result<()>> + Send + '_>> =
                    Box::pin(self.send_layered(message, exchange, routing_key, format, priority, options));
                return layered.await;
            }
            let payload = codec::encode(message, format)?;
            let mut envelope = Envelope::new(P::TYPE_NAME, format, "", self.inner.app_id);
            let publishes = self.inner.metrics.publishes(P::TYPE_NAME);
            if publishes.stamps_schema(envelope.timestamp) {
                envelope.schema = P::FINGERPRINT;
            }
            envelope.correlation_id = options.correlation_id.map(Arc::from);
            // After the layers, so that a `traceparent` set by the caller or a layer is kept.
            let context = trace::stamp(&mut options.headers, self.inner.config.trace_context);
            // Held, not entered, until the publish is confirmed: its time is the span's.
            let _span = trace::span(
                trace::Operation::Publish,
                if exchange.is_empty() { routing_key } else { exchange },
                routing_key,
                Some(envelope.message_id.as_str()),
                envelope.correlation_id.as_deref(),
                None,
                context.as_ref(),
            );
            if !options.headers.is_empty() {
                envelope.headers = Some(options.headers);
            }
            envelope.persistent = true;
            envelope.priority = priority.map(crate::Priority::as_amqp);
            let properties = Properties::from(envelope);
            // History keeps protobuf, whatever went on the wire.
            let kept = self.inner.metrics.history_enabled().then(|| match format {
                WireFormat::Protobuf => payload.clone(),
                WireFormat::Json => message.encode_to_vec(),
            });
            if options.fire_and_forget {
                self.check_open_and_size(payload.len())?;
                let publish = Publish { exchange, routing_key, mandatory: false, confirm: false };
                self.inner.transport.publish(publish, payload, properties).await?;
            } else {
                self.publish_raw(exchange, routing_key, payload, properties).await?;
            }
            self.inner.metrics.published(P::TYPE_NAME, &publishes, kept);
            Ok(())
        }
    }

    /// The metrics of this bus: per event type and per subscriber, with queue depths from the broker.
    pub async fn metrics(&self) -> MetricsSnapshot {
        let mut depths = std::collections::BTreeMap::new();
        for queue in self.inner.metrics.queues() {
            let depth = self.inner.transport.queue_depth(&queue).await.ok();
            depths.insert(queue, depth);
        }
        self.inner.metrics.snapshot(&depths)
    }

    /// The recent `E` events (or tasks) this bus published, oldest first: the last [`BusConfig::history`] of
    /// them. Empty unless history is on. For tests: `assert_eq!(bus.published::<UserRegistered>(), [expected])`.
    pub fn published<E: Payload>(&self) -> Vec<E> {
        self.inner
            .metrics
            .history(E::TYPE_NAME)
            .into_iter()
            .filter_map(|recorded| E::decode(recorded.body.as_slice()).ok())
            .collect()
    }

    /// Waits until this bus's subscribers have handled at least `count` `E` events in all, or `deadline`
    /// passes ([`Error::Timeout`]). For tests: publish, then wait for the handlers instead of sleeping.
    pub async fn wait_handled<E: Payload>(&self, count: u64, deadline: std::time::Duration) -> Result<()> {
        let wait = async {
            while self.inner.metrics.processed(E::TYPE_NAME) < count {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(deadline, wait)
            .await
            .map_err(|_| Error::Timeout { operation: "waiting for handlers", after: deadline })
    }

    /// Publishes bytes, `mandatory` and confirmed, after the size check.
    pub(crate) async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: Vec<u8>,
        properties: Properties,
    ) -> Result<()> {
        self.check_open_and_size(payload.len())?;
        let publish = Publish { exchange, routing_key, mandatory: true, confirm: true };
        self.inner.transport.publish(publish, payload, properties).await
    }

    /// Publishes raw bytes with explicit properties to `exchange` with `routing_key`: no contract, no envelope
    /// added. Mandatory and confirmed like every publish. For interop (a message in another format) and tests;
    /// typed code uses [`Bus::publish`].
    ///
    /// A returned (unroutable) message is matched to its publish by its `message_id`: give each message one of
    /// its own (as UUIDs in text form, 36 characters) and keep them distinct among the publishes in flight, or an
    /// unroutable message can be reported as another's outcome.
    pub async fn publish_bytes(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: MessageProperties,
    ) -> Result<()> {
        properties.check()?;
        self.publish_raw(exchange, routing_key, body.to_vec(), properties.into()).await
    }

    /// Takes one ready message from `queue`, if there is one, acknowledging it at once; e.g. to inspect or
    /// drain `<queue>.dlq`.
    pub async fn fetch(&self, queue: &str) -> Result<Option<RawMessage>> {
        let delivery = self.inner.transport.fetch(queue).await?;
        Ok(delivery.map(|d| {
            let redelivered = d.redelivered;
            let m = d.into_message();
            RawMessage {
                exchange: m.exchange.to_string(),
                routing_key: m.routing_key.to_string(),
                redelivered,
                properties: m.properties.into_plain(),
                body: m.body,
            }
        }))
    }

    /// Whether shutdown or close has begun.
    pub(crate) fn is_closed(&self) -> bool {
        self.inner.closed.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn check_open_and_size(&self, size: usize) -> Result<()> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        self.check_size(size)
    }

    pub(crate) fn check_size(&self, size: usize) -> Result<()> {
        let limit = self.inner.config.max_message_size;
        if size > limit { Err(Error::TooLarge { size, limit }) } else { Ok(()) }
    }

    /// Runs `declare` unless this bus already declared `key`.
    async fn declare_once<F: Future<Output = Result<()>>>(&self, key: &str, declare: impl FnOnce() -> F) -> Result<()> {
        let declared = &self.inner.declared;
        let done = || declared.lock().expect("declared set").contains(key);
        let record = || declared.lock().expect("declared set").insert(key.to_owned());
        self.single_flight(done, declare, record).await
    }

    /// Declares `exchange` (once per bus) as the contract describes it.
    pub(crate) async fn declare_exchange(&self, exchange: &ExchangeSpec) -> Result<()> {
        let exchanges = &self.inner.exchanges;
        let done = || exchanges.read().expect("exchange set").contains(exchange.name);
        let record = || exchanges.write().expect("exchange set").insert(exchange.name);
        self.single_flight(done, || self.inner.transport.declare_exchange(exchange), record).await
    }

    /// Runs `declare` unless `done`, one declaration at a time, and `record`s it before the next may start:
    /// calls that waited find it done.
    async fn single_flight<R, F: Future<Output = Result<()>>>(
        &self,
        done: impl Fn() -> bool,
        declare: impl FnOnce() -> F,
        record: impl FnOnce() -> R,
    ) -> Result<()> {
        if done() {
            return Ok(());
        }
        // Boxed, and made only here: a declaration's futures (a channel, a round trip) take kilobytes, and
        // every publish, which may have to declare, would otherwise carry them.
        Box::pin(async {
            let _declaring = self.inner.declaring.lock().await;
            if done() {
                return Ok(()); // declared while this call waited
            }
            self.count_declaration().await;
            declare().await?;
            record();
            Ok(())
        })
        .await
    }

    /// Counts a declaration (in tests), and lets other tasks run before it is sent, as a declaration over
    /// the network would.
    async fn count_declaration(&self) {
        #[cfg(test)]
        {
            self.inner.declarations.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::task::yield_now().await;
        }
    }

    /// Forgets the queues of a subscriber that stopped, unless another subscriber of this bus still consumes
    /// `queue`: its queue, dead-letter queue and retry queues are no longer declared again after a
    /// reconnection, and are declared anew should a subscriber use them again. Without this, a bus that starts
    /// and stops subscribers (temporary ones above all) would replay every queue it ever had.
    pub(crate) fn forget_subscriber_queues(&self, queue: &str) {
        if self.inner.metrics.queues().iter().any(|running| running == queue) {
            return;
        }
        let dlq = dead_letter_queue(queue);
        let is_retry = |name: &str| is_retry_queue(queue, name);
        let mut forgotten = vec![queue.to_owned(), dlq.clone()];
        self.inner.declared.lock().expect("declared set").retain(|name| {
            let ours = name == queue || *name == dlq || is_retry(name);
            if ours && is_retry(name) {
                forgotten.push(name.clone());
            }
            !ours
        });
        self.inner.transport.forget_queues(&forgotten);
    }

    /// Declares a queue (once per bus).
    pub(crate) async fn declare_queue(&self, queue: &str, options: QueueSettings) -> Result<()> {
        self.declare_once(queue, || self.inner.transport.declare_queue(queue, &options)).await
    }

    /// Closes the connection at once. Subscribers and servers stop, abandoning the handlers they are running
    /// (whose messages go back to their queues); RPC calls waiting for a reply fail with `CANCELLED`. Prefer
    /// [`Bus::shutdown`], which lets work in progress finish first.
    pub async fn close(&self) -> Result<()> {
        let now = std::time::Instant::now();
        // Handlers are abandoned at once; a consumer still sends the acknowledgements it holds for messages
        // already handled (or they would be delivered again) and cancels, within a second at most.
        let grace = self.config().operation_timeout.min(std::time::Duration::from_secs(1));
        self.inner.running.stop_all(now, now + grace).await;
        self.end(now).await
    }

    /// Shuts down gracefully within `deadline`: stops every subscriber and server from taking new messages,
    /// lets running handlers finish and settles their messages, fails RPC calls still waiting with
    /// `CANCELLED`, waits for publishes in flight to be confirmed, then closes the connections. What is not
    /// done by the deadline is left to the broker: unacknowledged messages are redelivered to another consumer.
    pub async fn shutdown(&self, deadline: std::time::Duration) -> Result<()> {
        let by = std::time::Instant::now().later(deadline);
        self.inner.running.stop_all(by, by).await;
        self.end(by).await
    }

    /// Once subscribers and servers have stopped: fails RPC calls still waiting, refuses publishes from now on,
    /// waits (until `by`) for those in flight to be confirmed and closes the connections.
    async fn end(&self, by: std::time::Instant) -> Result<()> {
        if let Some(replies) = self.inner.replies.lock().await.take() {
            replies.fail_pending(&crate::Status::cancelled("the bus is shutting down"));
        }
        self.inner.closed.store(true, std::sync::atomic::Ordering::Relaxed);
        self.inner.transport.close(by).await
    }

    /// Waits for SIGINT (Ctrl-C) or, on Unix, SIGTERM, then [`Bus::shutdown`]s within `deadline`. Returns the
    /// signal's name. For services: `bus.shutdown_on_signal(Duration::from_secs(10)).await?` after starting
    /// subscribers and servers.
    pub async fn shutdown_on_signal(&self, deadline: std::time::Duration) -> Result<&'static str> {
        let signal = crate::signal::terminated().await;
        tracing::info!(signal, "shutting down");
        self.shutdown(deadline).await?;
        Ok(signal)
    }

    /// The exchanges, queues and bindings this bus has declared so far: what its subscribers, workers,
    /// servers and publishers needed, each with the settings Warren's topology rules gave it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let bus = warren::Bus::in_memory();
    /// assert!(bus.topology().queues.is_empty(), "nothing declared yet");
    /// # }
    /// ```
    pub fn topology(&self) -> crate::Topology {
        self.inner.transport.topology()
    }

    /// How the connection to the broker is doing: connected, recovering (since when, how many attempts),
    /// failed, or closed.
    pub fn health(&self) -> crate::Health {
        self.inner.transport.health()
    }
}

/// Options of the work queue of task type `T`: a consumer queue with the quorum delivery limit from the
/// contract's policy, so that every worker and sender declares it identically.
pub(crate) fn work_queue<T: Inbound>(queue: &str) -> QueueSettings {
    let quorum = T::quorum().then(|| T::retry_policy().unwrap_or_default().max_attempts);
    QueueSettings::consumer(queue, false, T::prioritized(), quorum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::ExchangeKind;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_first_publishes_declares_the_exchange_once() {
        static EXCHANGE: ExchangeSpec =
            ExchangeSpec { name: "burst.events", kind: ExchangeKind::Topic, durable: true, auto_delete: false };
        let bus = Bus::in_memory();
        let mut declaring = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let bus = bus.clone();
            declaring.spawn(async move { bus.declare_exchange(&EXCHANGE).await });
        }
        while let Some(declared) = declaring.join_next().await {
            declared.unwrap().unwrap();
        }
        assert_eq!(bus.inner.declarations.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
