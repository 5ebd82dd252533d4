//! The bus: one broker connection (RabbitMQ or in memory), shared by publishers, subscribers and RPC.

use rustc_hash::FxHashSet;
use std::sync::{Arc, Mutex as StdMutex};

use crate::codec::{Payload, WireFormat};
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
use crate::transport::{Need, Publish, QueueSettings, Transport};
use warren_topology::{dead_letter_queue, is_retry_queue};

mod encoded;
mod publish;

pub use encoded::Encoded;
pub use publish::PublishOptions;

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
            Endpoint::Amqp { .. } => Transport::Amqp(Amqp::connect(&config).await?),
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

    /// The metrics of this bus: per event type and per subscriber, with queue depths from the broker.
    pub async fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics.snapshot(&self.queue_depths(self.inner.config.operation_timeout).await)
    }

    /// The messages waiting in each running subscriber's queue, as the broker reports them (a passive declare
    /// on RabbitMQ, the queues asked at once); `None` for a queue the broker could not be asked about, or did
    /// not answer about `within`.
    pub(crate) async fn queue_depths(
        &self,
        within: std::time::Duration,
    ) -> std::collections::BTreeMap<String, Option<u64>> {
        let ask = |queue: String| async move {
            let depth = tokio::time::timeout(within, self.inner.transport.queue_depth(&queue)).await;
            (queue, depth.ok().and_then(Result::ok))
        };
        futures_util::future::join_all(self.inner.metrics.queues().into_iter().map(ask)).await.into_iter().collect()
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

    /// Declares `exchange` (once per bus) as the contract describes it.
    pub(crate) async fn declare_exchange(&self, exchange: &ExchangeSpec) -> Result<()> {
        let exchanges = &self.inner.exchanges;
        let done = || exchanges.read().expect("exchange set").contains(exchange.name);
        let record = || exchanges.write().expect("exchange set").insert(exchange.name);
        let needs = [Need::Exchange(exchange)];
        self.single_flight(done, || self.inner.transport.ensure(&self.inner.config, &needs), record).await
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

    /// The delays of `queue`'s delay queues (`<queue>.retry.<ms>`) this bus has declared.
    pub(crate) fn declared_retry_delays(&self, queue: &str) -> Vec<u32> {
        let declared = self.inner.declared.lock().expect("declared set");
        declared
            .iter()
            .filter(|name| is_retry_queue(queue, name))
            .filter_map(|name| name.rsplit('.').next()?.parse().ok())
            .collect()
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

    /// Declares a queue (once per bus); in [`crate::TopologyMode::Verify`], checks that it exists.
    pub(crate) async fn declare_queue(&self, queue: &str, options: QueueSettings) -> Result<()> {
        self.declare_queues(&[(queue, options)]).await
    }

    /// Declares queues (each once per bus), in order; in [`crate::TopologyMode::Verify`], checks that they
    /// exist, failing with one error naming every one missing.
    pub(crate) async fn declare_queues(&self, queues: &[(&str, QueueSettings)]) -> Result<()> {
        let declared = &self.inner.declared;
        let done = || {
            let declared = declared.lock().expect("declared set");
            queues.iter().all(|(queue, _)| declared.contains(*queue))
        };
        let record = || {
            let mut declared = declared.lock().expect("declared set");
            for (queue, _) in queues {
                declared.insert((*queue).to_owned());
            }
        };
        let needs: Vec<Need<'_>> = queues.iter().map(|(queue, options)| Need::Queue(queue, options)).collect();
        self.single_flight(done, || self.inner.transport.ensure(&self.inner.config, &needs), record).await
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
        self.inner.closed.store(true, std::sync::atomic::Ordering::Relaxed);
        // A call opening the reply path holds this lock while it waits on the broker: not past the deadline.
        let replies = tokio::time::timeout_at(by.into(), self.inner.replies.lock()).await;
        if let Ok(mut replies) = replies
            && let Some(replies) = replies.take()
        {
            replies.fail_pending(&crate::Status::cancelled("the bus is shutting down"));
        }
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

    /// How the connection to the broker is doing: connected (to which node), blocked by a resource alarm,
    /// recovering (since when, how many attempts), failed, or closed.
    pub fn health(&self) -> crate::Health {
        // Closed is this bus's own state: an in-memory broker outlives the buses that use it.
        if self.is_closed() { crate::Health::Closed } else { self.inner.transport.health() }
    }

    /// The address of the RabbitMQ node the bus is connected to (or was, last); `None` in memory.
    pub(crate) fn node_address(&self) -> Option<crate::config::Address> {
        match &self.inner.transport {
            crate::transport::Transport::Amqp(amqp) => amqp.node_address(),
            crate::transport::Transport::Memory(_) => None,
        }
    }
}

/// Options of the work queue of task type `T`: a consumer queue with the quorum delivery limit from the
/// contract's policy and the contract's length limit, so that every worker and sender declares it identically.
pub(crate) fn work_queue<T: Inbound>(queue: &str) -> QueueSettings {
    let quorum = T::quorum().then(|| T::retry_policy().unwrap_or_default().max_attempts);
    QueueSettings::consumer(queue, false, T::prioritized(), quorum).with_limit(T::queue_limit())
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
