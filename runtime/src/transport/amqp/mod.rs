//! The AMQP transport: RabbitMQ through lapin, supervised.
//!
//! lapin 4 recovers connections only partly, so this module does it itself:
//!
//! - two connections, one for publishing (and topology, and RPC replies) and one for consuming, so a
//!   publisher the broker blocks cannot stall consumers' acks;
//! - a supervisor task that notices a lost connection (lapin's error event, or its status), reconnects both
//!   with exponential backoff and jitter, replays every exchange, queue and binding this bus declared, and
//!   then bumps the link's generation so that everything holding a channel opens a new one;
//! - publishes that keep their message until the broker confirms it and send it again, with the same
//!   `message_id`, after a connection or channel failure (at-least-once), within the publish deadline;
//! - a deadline on every wait.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, RwLock as StdRwLock, Weak};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use futures_util::{Stream, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ErrorKind};
use tokio::sync::{Mutex, Semaphore, watch};

use super::confirms::{Confirmed, Confirms, Outcome};
use super::{Acker, Canceller, Consumer, Delivery, Message, Publish, QueueOptions, ReplyPath, Settle, Transport};
use crate::backoff::Backoff;
use crate::config::{BusConfig, Endpoint};
use crate::contract::{ExchangeKind, ExchangeSpec};
use crate::envelope::{Inline, Properties};
use crate::error::{Error, Later, Result};
use crate::health::Health;

mod properties;
pub(crate) use properties::{Delivered, to_lapin};

/// Runs a broker operation with a deadline: every wait on the broker goes through here.
///
/// A plain function around [`tokio::time::timeout`], not an `async fn`: an `async fn` would keep the future
/// it is given and the timeout wrapping it side by side, doubling the size of every publish in flight.
pub(crate) fn deadline<T>(
    operation: &'static str,
    after: Duration,
    future: impl Future<Output = lapin::Result<T>>,
) -> impl Future<Output = Result<T>> {
    use futures_util::FutureExt;
    tokio::time::timeout(after, future).map(move |outcome| match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(Error::broker(operation, source)),
        Err(_) => Err(Error::Timeout { operation, after }),
    })
}

/// Settles one delivery over AMQP (lapin's acker, kept inside this module).
#[derive(Debug)]
pub(crate) struct AmqpAcker(lapin::Acker);

/// Cancels a consumer over AMQP: its channel.
#[derive(Debug, Clone)]
pub(crate) struct Cancel(Channel);

/// The channel an RPC client's requests go out on: the one its replies come in on, as direct reply-to requires.
#[derive(Debug, Clone)]
pub(crate) struct RequestChannel(Channel);

impl RequestChannel {
    /// Sends a request once, done once lapin has written it. No deadline of its own: the caller bounds it.
    pub(crate) async fn send(&self, publish: Publish<'_>, body: &[u8], properties: &Properties) -> Result<()> {
        publish_written(&self.0, publish, body, properties).await.map_err(|source| Error::broker("publish", source))
    }
}

/// Direct reply-to: RabbitMQ's pseudo-queue for RPC replies.
pub(crate) const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// The connections in use. A new generation replaces both after a failure.
#[derive(Clone)]
struct Link {
    generation: u64,
    publish: Arc<Connection>,
    consume: Arc<Connection>,
}

/// What this bus declared, replayed on every new connection.
#[derive(Default)]
struct Topology {
    exchanges: Vec<ExchangeSpec>,
    queues: Vec<(String, QueueOptions)>,
    bindings: Vec<(String, String, String)>,
}

/// A publishing channel and the link generation it was opened on.
type Publisher = (u64, Arc<PublishChannel>);

/// A channel that publishes; in confirm mode, with what matches its confirms to its publishes.
struct PublishChannel {
    channel: Arc<Channel>,
    confirms: Option<Confirms>,
}

/// RabbitMQ, through two supervised connections.
pub(crate) struct Amqp {
    config: BusConfig,
    link: watch::Sender<Option<Link>>,
    health: StdMutex<Health>,
    /// The publishing channels and the generation each belongs to: `[fire-and-forget, confirmed]`. The
    /// first is not in confirm mode, so fire-and-forget publishes cost neither the broker nor lapin a confirm.
    /// Read on every publish, so a plain read lock, and an `Arc`: one count to take, where a `Channel`
    /// clone takes a dozen; `opening` serializes replacing them.
    publishers: [StdRwLock<Option<Publisher>>; 2],
    opening: Mutex<()>,
    topology: StdMutex<Topology>,
    /// At most this many publishes wait for confirms at once.
    window: Semaphore,
    closing: AtomicBool,
    /// Times the supervisor reconnected (for tests and metrics).
    recoveries: AtomicU64,
}

impl std::fmt::Debug for Amqp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Amqp").field("health", &self.health()).finish_non_exhaustive()
    }
}

/// Publishes in flight at once, per bus.
const PUBLISH_WINDOW: usize = 1024;

impl Amqp {
    /// Connects (retrying with backoff until the connect deadline) and starts the supervisor.
    pub(crate) async fn connect(config: &BusConfig) -> Result<Arc<Amqp>> {
        let started = Instant::now();
        let (publish, consume) = connect_pair(config, config.connect_timeout, started).await?;
        let link = Link { generation: 1, publish: Arc::new(publish), consume: Arc::new(consume) };
        let amqp = Arc::new(Amqp {
            config: config.clone(),
            link: watch::Sender::new(Some(link.clone())),
            health: StdMutex::new(Health::Connected),
            publishers: [StdRwLock::new(None), StdRwLock::new(None)],
            opening: Mutex::new(()),
            topology: StdMutex::default(),
            window: Semaphore::new(PUBLISH_WINDOW),
            closing: AtomicBool::new(false),
            recoveries: AtomicU64::new(0),
        });
        tokio::spawn(supervise(Arc::downgrade(&amqp), amqp.link.subscribe(), link));
        Ok(amqp)
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.config.operation_timeout
    }

    /// How long one publish attempt may take: the operation timeout, but not past `by`.
    pub(crate) fn attempt_timeout(&self, by: Instant) -> Duration {
        self.timeout().min(by.saturating_duration_since(Instant::now()))
    }

    /// When a publish begun now gives up: the publish timeout from now.
    pub(crate) fn publish_deadline(&self) -> Instant {
        Instant::now().later(self.config.publish_timeout)
    }

    /// The link's generation, now and after each reconnection. The task that keeps it ends with the receiver
    /// (a feed's), or with the transport.
    pub(crate) fn generations(&self) -> watch::Receiver<u64> {
        let mut generation = self.link.subscribe();
        let (sender, receiver) = watch::channel(generation.borrow().as_ref().map_or(0, |l| l.generation));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = generation.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let current = generation.borrow().as_ref().map_or(0, |l| l.generation);
                        if sender.send(current).is_err() {
                            return;
                        }
                    }
                    () = sender.closed() => return,
                }
            }
        });
        receiver
    }

    pub(crate) fn health(&self) -> Health {
        self.health.lock().expect("health").clone()
    }

    /// The current link, waiting (until `by`) while the supervisor recovers.
    async fn link(&self, by: Instant) -> Result<Link> {
        // The common case, without subscribing to changes.
        if let Some(link) = self.link.borrow().as_ref()
            && link.publish.status().connected()
            && link.consume.status().connected()
            && !self.closing.load(Ordering::Relaxed)
        {
            return Ok(link.clone());
        }
        let mut watcher = self.link.subscribe();
        loop {
            if self.closing.load(Ordering::Relaxed) {
                return Err(Error::Closed);
            }
            if let Some(link) = watcher.borrow_and_update().clone()
                && link.publish.status().connected()
                && link.consume.status().connected()
            {
                return Ok(link);
            }
            let remaining = by.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Error::Timeout { operation: "waiting for the broker connection", after: self.timeout() });
            }
            // Woken by a new link, or re-checked shortly: lapin updates statuses without telling us.
            let _ = tokio::time::timeout(remaining.min(Duration::from_millis(50)), watcher.changed()).await;
        }
    }

    async fn channel_on(&self, consume: bool) -> Result<Channel> {
        Ok(self.channel_and_generation(consume).await?.0)
    }

    /// A new channel, and the generation of the link it was opened on.
    async fn channel_and_generation(&self, consume: bool) -> Result<(Channel, u64)> {
        let by = Instant::now() + self.timeout();
        loop {
            let link = self.link(by).await?;
            let connection = if consume { &link.consume } else { &link.publish };
            match open_channel(connection, self.timeout()).await {
                // Just after the broker closed a channel, lapin refuses new ones for a moment.
                Err(Error::Broker { source, .. })
                    if matches!(source.lapin().kind(), ErrorKind::InvalidChannelState(..)) && Instant::now() < by =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                result => return result.map(|channel| (channel, link.generation)),
            }
        }
    }

    /// Runs one topology operation on a fresh channel: a refused declaration closes its channel, and must not
    /// take the publisher down.
    async fn on_fresh_channel<T, F>(&self, operation: &'static str, run: impl FnOnce(Channel) -> F) -> Result<T>
    where
        F: Future<Output = lapin::Result<T>>,
    {
        let channel = self.channel_on(false).await?;
        let result = deadline(operation, self.timeout(), run(channel.clone())).await;
        close_quietly(&channel).await;
        result
    }

    pub(crate) async fn declare_exchange(&self, exchange: &ExchangeSpec) -> Result<()> {
        let channel = self.channel_on(false).await?;
        let result = declare_exchange_on(&channel, exchange, self.timeout()).await;
        close_quietly(&channel).await;
        result?;
        let mut topology = self.topology.lock().expect("topology");
        if !topology.exchanges.contains(exchange) {
            topology.exchanges.push(*exchange);
        }
        Ok(())
    }

    pub(crate) async fn declare_queue(&self, queue: &str, options: &QueueOptions) -> Result<()> {
        let channel = self.channel_on(false).await?;
        let result = declare_queue_on(&channel, queue, options, self.timeout()).await;
        close_quietly(&channel).await;
        result?;
        let mut topology = self.topology.lock().expect("topology");
        if !topology.queues.iter().any(|(name, _)| name == queue) {
            topology.queues.push((queue.to_owned(), options.clone()));
        }
        Ok(())
    }

    /// Stops replaying `queues` (and their bindings) after reconnections: what they served has stopped.
    pub(crate) fn forget_queues(&self, queues: &[String]) {
        let mut topology = self.topology.lock().expect("topology");
        topology.queues.retain(|(name, _)| !queues.contains(name));
        topology.bindings.retain(|(queue, _, _)| !queues.contains(queue));
    }

    pub(crate) async fn bind(&self, queue: &str, exchange: &str, key: &str) -> Result<()> {
        let channel = self.channel_on(false).await?;
        let result = bind_on(&channel, queue, exchange, key, self.timeout()).await;
        close_quietly(&channel).await;
        result?;
        let binding = (queue.to_owned(), exchange.to_owned(), key.to_owned());
        let mut topology = self.topology.lock().expect("topology");
        if !topology.bindings.contains(&binding) {
            topology.bindings.push(binding);
        }
        Ok(())
    }

    /// Publishes and waits for the confirm, re-sending after connection or channel failures until `by` (at the
    /// latest; each attempt also ends at the operation timeout). Unroutable, nacked and missing-exchange
    /// outcomes are final.
    #[expect(clippy::manual_async_fn, reason = "smaller future; see `Transport::publish_until`")]
    pub(crate) fn publish(
        &self,
        publish: Publish<'_>,
        body: Vec<u8>,
        properties: &Properties,
        by: Instant,
    ) -> impl Future<Output = Result<()>> {
        async move {
            // A free slot needs no timer; only a full window is waited for, within the publish deadline. The
            // waits off the common path are boxed: thousands of publishes may be in flight, each as large as the
            // largest state of this function.
            let _slot = match self.window.try_acquire() {
                Ok(slot) => slot,
                Err(tokio::sync::TryAcquireError::Closed) => return Err(Error::Closed),
                Err(tokio::sync::TryAcquireError::NoPermits) => {
                    let after = by.saturating_duration_since(Instant::now());
                    Box::pin(tokio::time::timeout(after, self.window.acquire()))
                        .await
                        .map_err(|_| Error::Timeout { operation: "publish window", after })?
                        .map_err(|_| Error::Closed)?
                }
            };
            // Shared with each attempt's send, which may outlive this function (see `confirms`).
            let body = Arc::new(body);
            let mut attempt = 0u32;
            let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
            loop {
                let channel = match self.current_publisher(publish.confirm) {
                    Some(channel) => Ok(channel),
                    None => Box::pin(self.publisher(publish.confirm, by)).await,
                };
                let error = match channel {
                    Ok(channel) => {
                        match publish_through(&channel, publish, &body, properties, self.attempt_timeout(by)).await {
                            Ok(()) => return Ok(()),
                            Err(error) => error,
                        }
                    }
                    Err(error) => error,
                };
                match classify(&error, publish.exchange) {
                    Failure::Final(error) => return Err(error),
                    Failure::Transient if Instant::now() < by && !self.closing.load(Ordering::Relaxed) => {
                        attempt += 1;
                        tracing::debug!(%error, attempt, "publish not confirmed; sending it again");
                        let pause = backoff.next_wait();
                        Box::pin(tokio::time::sleep(pause.min(by.saturating_duration_since(Instant::now())))).await;
                        if Instant::now() >= by {
                            // No time left for another attempt.
                            return Err(gave_up(error, publish.exchange, self.config.publish_timeout));
                        }
                    }
                    Failure::Transient => return Err(gave_up(error, publish.exchange, self.config.publish_timeout)),
                }
            }
        }
    }

    /// The publishing channel of the current link (in confirm mode if `confirmed`), opened when missing or
    /// broken.
    async fn publisher(&self, confirmed: bool, by: Instant) -> Result<Arc<PublishChannel>> {
        if let Some(channel) = self.current_publisher(confirmed) {
            return Ok(channel);
        }
        let link = self.link(by).await?;
        let after = self.attempt_timeout(by);
        let _opening = tokio::time::timeout(after, self.opening.lock())
            .await
            .map_err(|_| Error::Timeout { operation: "publishing channel", after })?;
        if let Some(channel) = self.current_publisher(confirmed) {
            return Ok(channel); // another publish opened it meanwhile
        }
        let after = self.attempt_timeout(by);
        let channel = if confirmed {
            open_confirmed(&link.publish, after).await?
        } else {
            open_channel(&link.publish, after).await?
        };
        let channel = Arc::new(channel);
        let confirms = confirmed.then(|| Confirms::new(Arc::clone(&channel)));
        let channel = Arc::new(PublishChannel { channel, confirms });
        *self.publishers[usize::from(confirmed)].write().expect("publisher") = Some((link.generation, channel.clone()));
        Ok(channel)
    }

    /// The publishing channel (in confirm mode if `confirmed`), if it belongs to the current link and is open.
    fn current_publisher(&self, confirmed: bool) -> Option<Arc<PublishChannel>> {
        let generation = self.link.borrow().as_ref().map(|link| link.generation)?;
        let publisher = self.publishers[usize::from(confirmed)].read().expect("publisher");
        let (of, channel) = publisher.as_ref()?;
        (*of == generation && channel.channel.status().connected()).then(|| channel.clone())
    }

    pub(crate) async fn consume(&self, queue: &str, prefetch: u16, tag: String) -> Result<Consumer> {
        let (channel, generation) = self.channel_and_generation(true).await?;
        deadline("basic qos", self.timeout(), channel.basic_qos(prefetch, BasicQosOptions::default())).await?;
        let consumer = deadline(
            "basic consume",
            self.timeout(),
            channel.basic_consume(
                ShortString::from(queue),
                ShortString::from(tag.as_str()),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        let stream = Box::pin(Deliveries { consumer, names: Names::default(), no_ack: false });
        Ok(Consumer { tag, stream, cancel: Canceller::Amqp(Cancel(channel)), generation })
    }

    pub(crate) async fn queue_depth(&self, queue: &str) -> Result<u64> {
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let declared = self
            .on_fresh_channel("queue declare (passive)", |channel| async move {
                channel.queue_declare(ShortString::from(queue), passive, FieldTable::default()).await
            })
            .await?;
        Ok(u64::from(declared.message_count()))
    }

    pub(crate) async fn fetch(&self, queue: &str) -> Result<Option<Delivery>> {
        let got = self
            .on_fresh_channel("basic get", |channel| async move {
                channel.basic_get(ShortString::from(queue), lapin::options::BasicGetOptions { no_ack: true }).await
            })
            .await?;
        // Fetched with no_ack: nothing to settle.
        Ok(got.map(|message| from_lapin(message.delivery, &mut Names::default(), |_| Acker::None)))
    }

    pub(crate) async fn reply_path(self: &Arc<Self>) -> Result<ReplyPath> {
        let link = self.link(Instant::now() + self.timeout()).await?;
        // Not in confirm mode: requests are not confirmed (see `rpc`).
        let channel = open_channel(&link.publish, self.timeout()).await?;
        let tag = super::consumer_tag("replies");
        let consumer = deadline(
            "basic consume (reply-to)",
            self.timeout(),
            channel.basic_consume(
                ShortString::from(REPLY_TO),
                ShortString::from(tag.as_str()),
                // Direct reply-to requires no-ack consumption on the channel that publishes the requests.
                BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() },
                FieldTable::default(),
            ),
        )
        .await?;
        let replies = Consumer {
            tag,
            stream: Box::pin(Deliveries { consumer, names: Names::default(), no_ack: true }),
            cancel: Canceller::Amqp(Cancel(channel.clone())),
            generation: link.generation,
        };
        Ok(ReplyPath {
            address: REPLY_TO.into(),
            requests: Transport::Amqp(Arc::clone(self)),
            amqp_channel: Some(RequestChannel(channel)),
            replies,
        })
    }

    /// Waits until publishes in flight are confirmed (or `by` passes), then closes both connections.
    pub(crate) async fn close(&self, by: Instant) -> Result<()> {
        let remaining = by.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(remaining, self.window.acquire_many(PUBLISH_WINDOW as u32)).await;
        self.closing.store(true, Ordering::Relaxed);
        self.window.close();
        *self.health.lock().expect("health") = Health::Closed;
        let link = self.link.send_replace(None);
        if let Some(link) = link {
            for connection in [&link.publish, &link.consume] {
                if connection.status().connected() {
                    let close = connection.close(200, ShortString::from("bye"));
                    let _ = tokio::time::timeout(self.timeout(), close).await;
                }
            }
        }
        Ok(())
    }
}

/// Whether to try a failed publish again.
enum Failure {
    Final(Error),
    Transient,
}

fn classify(error: &Error, exchange: &str) -> Failure {
    match error {
        Error::Unroutable { .. } | Error::Nacked { .. } | Error::TooLarge { .. } | Error::Closed => {
            Failure::Final(clone_final(error))
        }
        // RabbitMQ closes the channel for a publish to a missing exchange, and lapin fails every confirm waiting
        // on it with that error: only the publish to the exchange it names failed; the others are sent again on
        // a new channel.
        Error::Broker { .. } if let Some(reply) = not_found_reply(error) => {
            if names_exchange(reply, exchange) {
                Failure::Final(Error::ExchangeNotFound { exchange: exchange.to_owned() })
            } else {
                Failure::Transient
            }
        }
        Error::Broker { source, .. } => match source.lapin().kind() {
            ErrorKind::ProtocolError(amqp)
                if amqp.kind() == &AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) =>
            {
                Failure::Final(Error::Broker { operation: "publish", source: source.clone() })
            }
            _ => Failure::Transient,
        },
        _ => Failure::Transient,
    }
}

/// The error a publish to `exchange` ends with when it gives up after `error`, `after` its start. Another
/// publish's missing exchange names that exchange, not this one: this publish ran out of time while its channel
/// kept closing under it.
fn gave_up(error: Error, exchange: &str, after: Duration) -> Error {
    if not_found_reply(&error).is_some_and(|reply| !names_exchange(reply, exchange)) {
        return Error::Timeout {
            operation: "publish (its channel kept being closed by publishes to a missing exchange)",
            after,
        };
    }
    error
}

/// The broker's reply text, when `error` is a channel closed with `NOT_FOUND`.
fn not_found_reply(error: &Error) -> Option<&str> {
    match error {
        Error::Broker { source, .. } => match source.lapin().kind() {
            ErrorKind::ProtocolError(amqp) if amqp.kind() == &AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => {
                Some(amqp.get_message().as_str())
            }
            _ => None,
        },
        _ => None,
    }
}

/// Whether RabbitMQ's reply text (`NOT_FOUND - no exchange 'orders' in vhost '/'`) names `exchange`. A reply
/// that names no exchange at all is taken to mean this one. RabbitMQ cuts a reply to 255 bytes, ending it with
/// `...`: a name cut short there matches the exchange it begins.
fn names_exchange(reply: &str, exchange: &str) -> bool {
    let Some((_, named)) = reply.split_once("no exchange '") else { return true };
    match named.split_once('\'') {
        Some((name, _)) => name == exchange,
        None => named.strip_suffix("...").is_some_and(|cut| exchange.starts_with(cut)),
    }
}

fn clone_final(error: &Error) -> Error {
    match error {
        Error::Unroutable { exchange, routing_key } => {
            Error::Unroutable { exchange: exchange.clone(), routing_key: routing_key.clone() }
        }
        Error::Nacked { exchange, routing_key } => {
            Error::Nacked { exchange: exchange.clone(), routing_key: routing_key.clone() }
        }
        Error::TooLarge { size, limit } => Error::TooLarge { size: *size, limit: *limit },
        _ => Error::Closed,
    }
}

/// Watches the link; on a failure, reconnects with backoff and jitter, replays the topology, and publishes the
/// new link. Ends when the transport is closed, or when it is dropped: then it closes both connections, which
/// its `link` would otherwise keep open (with lapin's I/O threads) for as long as the process lives. `owner` is
/// a receiver of the transport's link, which fails when the transport is dropped.
async fn supervise(amqp: Weak<Amqp>, mut owner: watch::Receiver<Option<Link>>, mut link: Link) {
    loop {
        let failure = match wait_for_failure(&link, &mut owner).await {
            Some(failure) => failure,
            None => {
                drop(owner); // it holds the last link too
                for connection in [&link.publish, &link.consume] {
                    if connection.status().connected() {
                        let close = connection.close(200, ShortString::from("bye"));
                        let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
                    }
                }
                return;
            }
        };
        let Some(this) = amqp.upgrade() else { return };
        if this.closing.load(Ordering::Relaxed) {
            return;
        }
        tracing::warn!(reason = %this.config.redact(&failure), "connection to RabbitMQ lost; recovering");
        let since = SystemTime::now();
        let started = Instant::now();
        let mut attempts = 0u32;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        *this.health.lock().expect("health") =
            Health::Recovering { since, attempts, last_error: this.config.redact(&failure) };
        for connection in [&link.publish, &link.consume] {
            // Drop whichever connection survived: both are rebuilt together.
            if connection.status().connected() {
                let _ = tokio::time::timeout(Duration::from_secs(1), connection.close(200, "recovering".into())).await;
            }
        }
        drop(this);
        link = loop {
            let Some(this) = amqp.upgrade() else { return };
            if this.closing.load(Ordering::Relaxed) {
                return;
            }
            attempts += 1;
            let result = match connect_pair(&this.config, this.config.connect_timeout, Instant::now()).await {
                Ok((publish, consume)) => match replay(&this, &publish).await {
                    Ok(failed) => Ok((publish, consume, failed)),
                    Err(error) => Err(error.to_string()),
                },
                Err(error) => Err(error.to_string()),
            };
            match result {
                Ok((publish, consume, failed)) => {
                    let generation = link.generation + 1;
                    let new = Link { generation, publish: Arc::new(publish), consume: Arc::new(consume) };
                    this.recoveries.fetch_add(1, Ordering::Relaxed);
                    *this.health.lock().expect("health") =
                        if failed.is_empty() { Health::Connected } else { Health::Degraded { failed } };
                    this.link.send_replace(Some(new.clone()));
                    tracing::info!(attempts, after = ?started.elapsed(), "reconnected to RabbitMQ");
                    break new;
                }
                Err(error) => {
                    let error = this.config.redact(&error);
                    let health = if started.elapsed() > this.config.recovery_timeout {
                        Health::Failed { last_error: error }
                    } else {
                        Health::Recovering { since, attempts, last_error: error }
                    };
                    *this.health.lock().expect("health") = health;
                    drop(this);
                    tokio::time::sleep(backoff.next_wait()).await;
                }
            }
        };
    }
}

/// Resolves with a description once either connection of `link` fails, or with `None` once the transport that
/// `owner` receives from is dropped.
async fn wait_for_failure(link: &Link, owner: &mut watch::Receiver<Option<Link>>) -> Option<String> {
    let mut publish_events = link.publish.events_listener();
    let mut consume_events = link.consume.events_listener();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            // A new link (this supervisor's own) or none (`close`, which the tick sees) changes it; it fails once
            // the transport, which holds its sender, is dropped.
            changed = owner.changed() => {
                if changed.is_err() {
                    return None;
                }
            }
            // A soft error (e.g. 404 on a publish) closes only its channel: not a reason to reconnect.
            Some(event) = publish_events.next() => {
                if let lapin::Event::Error(error) = event && !error.is_amqp_soft_error() {
                    return Some(format!("publishing connection: {error}"));
                }
            }
            Some(event) = consume_events.next() => {
                if let lapin::Event::Error(error) = event && !error.is_amqp_soft_error() {
                    return Some(format!("consuming connection: {error}"));
                }
            }
            _ = tick.tick() => {
                if !link.publish.status().connected() { return Some("publishing connection closed".to_owned()) }
                if !link.consume.status().connected() { return Some("consuming connection closed".to_owned()) }
            }
        }
    }
}

/// Declares everything this bus declared before, on a new connection.
/// Declares again everything this bus declared, on a new connection. One declaration the broker refuses does
/// not stop the others: it is logged and returned, and the rest are declared on a fresh channel (a refusal
/// closes its channel). Fails only when no channel can be opened.
async fn replay(amqp: &Amqp, connection: &Connection) -> Result<Vec<String>> {
    let (exchanges, queues, bindings) = {
        let topology = amqp.topology.lock().expect("topology");
        (topology.exchanges.clone(), topology.queues.clone(), topology.bindings.clone())
    };
    let timeout = amqp.timeout();
    let mut channel = open_channel(connection, timeout).await?;
    let mut failed = Vec::new();
    let mut refused = async |what: String, error: Error, channel: &mut Channel| -> Result<()> {
        let error = amqp.config.redact(&error.to_string());
        tracing::warn!(%error, "could not declare {what} again after reconnecting; recovering the rest");
        failed.push(format!("{what}: {error}"));
        close_quietly(channel).await;
        *channel = open_channel(connection, timeout).await?;
        Ok(())
    };
    for exchange in &exchanges {
        if let Err(error) = declare_exchange_on(&channel, exchange, timeout).await {
            refused(format!("exchange \"{}\"", exchange.name), error, &mut channel).await?;
        }
    }
    for (queue, options) in &queues {
        if let Err(error) = declare_queue_on(&channel, queue, options, timeout).await {
            refused(format!("queue \"{queue}\""), error, &mut channel).await?;
        }
    }
    for (queue, exchange, key) in &bindings {
        if let Err(error) = bind_on(&channel, queue, exchange, key, timeout).await {
            refused(format!("binding of queue \"{queue}\" to \"{exchange}\" with \"{key}\""), error, &mut channel)
                .await?;
        }
    }
    close_quietly(&channel).await;
    Ok(failed)
}

async fn declare_exchange_on(channel: &Channel, exchange: &ExchangeSpec, timeout: Duration) -> Result<()> {
    let kind = match exchange.kind {
        ExchangeKind::Direct => lapin::ExchangeKind::Direct,
        ExchangeKind::Topic => lapin::ExchangeKind::Topic,
        ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
        ExchangeKind::Headers => lapin::ExchangeKind::Headers,
    };
    let options = ExchangeDeclareOptions {
        durable: exchange.durable,
        auto_delete: exchange.auto_delete,
        ..ExchangeDeclareOptions::default()
    };
    let declare = channel.exchange_declare(ShortString::from(exchange.name), kind, options, FieldTable::default());
    deadline("exchange declare", timeout, declare).await
}

async fn declare_queue_on(channel: &Channel, queue: &str, options: &QueueOptions, timeout: Duration) -> Result<()> {
    let declare_options =
        QueueDeclareOptions { durable: options.durable, auto_delete: options.auto_delete, ..Default::default() };
    let declare =
        channel.queue_declare(ShortString::from(queue), declare_options, properties::queue_arguments(options));
    deadline("queue declare", timeout, declare).await.map(drop)
}

async fn bind_on(channel: &Channel, queue: &str, exchange: &str, key: &str, timeout: Duration) -> Result<()> {
    let bind = channel.queue_bind(
        ShortString::from(queue),
        ShortString::from(exchange),
        ShortString::from(key),
        QueueBindOptions::default(),
        FieldTable::default(),
    );
    deadline("queue bind", timeout, bind).await
}

/// A lapin consumer's deliveries, as the transport's. A stream of its own rather than `StreamExt::map` with a
/// closure: the adapter moved each 432-byte lapin delivery once more on its way (callgrind, W7, Warren against raw
/// lapin in one binary: about 230 instructions of copies a delivery).
struct Deliveries {
    consumer: lapin::Consumer,
    names: Names,
    /// Consumed without acknowledgements (direct reply-to): nothing to settle.
    no_ack: bool,
}

impl Stream for Deliveries {
    type Item = Result<Delivery>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let delivery = match std::task::ready!(Pin::new(&mut this.consumer).poll_next(cx)) {
            None => return Poll::Ready(None),
            Some(Err(error)) => return Poll::Ready(Some(Err(Error::broker("consume", error)))),
            Some(Ok(delivery)) => delivery,
        };
        let no_ack = this.no_ack;
        Poll::Ready(Some(Ok(from_lapin(delivery, &mut this.names, |acker| {
            if no_ack { Acker::None } else { Acker::Amqp(AmqpAcker(acker)) }
        }))))
    }
}

/// A consumer's last exchange and routing key: a queue's deliveries nearly always repeat them, and sharing
/// the previous one's saves two allocations per delivery.
#[derive(Default)]
struct Names {
    exchange: Option<Arc<str>>,
    routing_key: Option<Arc<str>>,
}

/// `name` as an `Arc<str>`: `last`'s if it is the same, else a new one, remembered.
fn shared(last: &mut Option<Arc<str>>, name: &str) -> Arc<str> {
    match last {
        Some(same) if **same == *name => Arc::clone(same),
        _ => Arc::clone(last.insert(Arc::from(name))),
    }
}

/// A lapin delivery as the transport's, settled through `acker` (given lapin's acker).
fn from_lapin(d: lapin::message::Delivery, names: &mut Names, acker: impl FnOnce(lapin::Acker) -> Acker) -> Delivery {
    Delivery {
        message: Arc::new(Message::new(
            shared(&mut names.exchange, d.exchange.as_str()),
            shared(&mut names.routing_key, d.routing_key.as_str()),
            Properties::Delivered(Inline(properties::Delivered::new(d.properties))),
            d.data,
        )),
        redelivered: d.redelivered,
        acker: acker(d.acker),
    }
}

/// Publishes on `channel`, which is not in confirm mode, within `timeout`: done once lapin has written it.
pub(crate) fn publish_on(
    channel: &Channel,
    publish: Publish<'_>,
    body: &[u8],
    properties: &Properties,
    timeout: Duration,
) -> impl Future<Output = Result<()>> {
    deadline("publish", timeout, publish_written(channel, publish, body, properties))
}

/// Publishes on `channel`, which is not in confirm mode: done once lapin has written it. No deadline of its own:
/// the caller bounds the wait.
///
/// lapin's publish is boxed. Inline it made every publish future 1,100 bytes larger, confirmed ones too (a
/// future is as large as its largest state), and a caller that runs many publishes at once copies each whole
/// future into a task or a `FuturesUnordered` slot.
pub(crate) async fn publish_written(
    channel: &Channel,
    publish: Publish<'_>,
    body: &[u8],
    properties: &Properties,
) -> lapin::Result<()> {
    let sending = Box::pin(channel.basic_publish(
        ShortString::from(publish.exchange),
        ShortString::from(publish.routing_key),
        BasicPublishOptions { mandatory: publish.mandatory, ..BasicPublishOptions::default() },
        body,
        to_lapin(properties),
    ));
    sending.await.map(drop)
}

/// Publishes on `channel` and, when it is in confirm mode, waits for the broker's confirm; one deadline covers
/// both. A confirmed publish's deadline is kept by its channel's watchdog (see `confirms`), not a timer of its
/// own: with a thousand publishes in flight, timers are a measurable cost.
#[expect(clippy::manual_async_fn, reason = "smaller future; see `Transport::publish_until`")]
fn publish_through(
    channel: &Arc<PublishChannel>,
    publish: Publish<'_>,
    body: &Arc<Vec<u8>>,
    properties: &Properties,
    timeout: Duration,
) -> impl Future<Output = Result<()>> {
    async move {
        let Some(confirms) = &channel.confirms else {
            return publish_on(&channel.channel, publish, body, properties, timeout).await;
        };
        let sending = {
            let (channel, body) = (Arc::clone(&channel.channel), Arc::clone(body));
            let (exchange, routing_key) = (ShortString::from(publish.exchange), ShortString::from(publish.routing_key));
            let options = BasicPublishOptions { mandatory: publish.mandatory, ..BasicPublishOptions::default() };
            let properties = to_lapin(properties);
            Box::pin(async move {
                let confirm = channel.basic_publish(exchange, routing_key, options, &body, properties).await?;
                confirm.await.map(Confirmed::from)
            })
        };
        let outcome = confirms.publish(properties.id(), sending, Instant::now() + timeout).await;
        let named = || (publish.exchange.to_owned(), publish.routing_key.to_owned());
        match outcome {
            Outcome::Delivered => Ok(()),
            Outcome::Returned => {
                let (exchange, routing_key) = named();
                Err(Error::Unroutable { exchange, routing_key })
            }
            Outcome::Refused => {
                let (exchange, routing_key) = named();
                Err(Error::Nacked { exchange, routing_key })
            }
            Outcome::Failed(source) => Err(Error::broker("publish and confirm", source)),
            Outcome::TimedOut => Err(Error::Timeout { operation: "publish and confirm", after: timeout }),
        }
    }
}

/// How long an ack, nack or reject may take to be written. Past it, the connection is as good as gone: the
/// delivery counts as not settled, and the broker redelivers it once it notices. Without a limit, a consumer
/// whose connection died under it (lapin does not always fail the pending write) would wait forever instead
/// of consuming again.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) async fn settle(AmqpAcker(acker): &AmqpAcker, how: Settle) -> bool {
    let settling = async {
        match how {
            Settle::Ack => acker.ack(BasicAckOptions::default()).await,
            Settle::Requeue => acker.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await,
            Settle::Reject => acker.reject(BasicRejectOptions { requeue: false }).await,
        }
    };
    matches!(tokio::time::timeout(SETTLE_TIMEOUT, settling).await, Ok(Ok(true)))
}

pub(crate) async fn ack_multiple(AmqpAcker(last): &AmqpAcker) -> bool {
    let acking = last.ack(BasicAckOptions { multiple: true });
    matches!(tokio::time::timeout(SETTLE_TIMEOUT, acking).await, Ok(Ok(true)))
}

pub(crate) async fn cancel(Cancel(channel): &Cancel, tag: &str, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, channel.basic_cancel(ShortString::from(tag), BasicCancelOptions::default()))
        .await;
    close_quietly(channel).await;
}

/// Opens a channel on `connection`, within `timeout`.
async fn open_channel(connection: &Connection, timeout: Duration) -> Result<Channel> {
    deadline("channel open", timeout, connection.create_channel()).await
}

async fn open_confirmed(connection: &Connection, timeout: Duration) -> Result<Channel> {
    let channel = open_channel(connection, timeout).await?;
    deadline("confirm select", timeout, channel.confirm_select(ConfirmSelectOptions::default())).await?;
    Ok(channel)
}

async fn close_quietly(channel: &Channel) {
    if channel.status().connected() {
        let _ = tokio::time::timeout(Duration::from_secs(1), channel.close(200, ShortString::from("done"))).await;
    }
}

/// Connects the publishing and the consuming connection, retrying with backoff until `within` has passed
/// since `started`; the error says what was tried.
async fn connect_pair(config: &BusConfig, within: Duration, started: Instant) -> Result<(Connection, Connection)> {
    let publish = connect(config, "publish", within, started).await?;
    let consume = connect(config, "consume", within, started).await?;
    Ok((publish, consume))
}

async fn connect(config: &BusConfig, role: &str, within: Duration, started: Instant) -> Result<Connection> {
    let Endpoint::Amqp(uri) = &config.endpoint else {
        return Err(Error::config("the AMQP transport needs an amqp:// URL"));
    };
    let mut uri = uri.clone();
    uri.query.heartbeat = Some(config.heartbeat_secs);
    let properties =
        ConnectionProperties::default().with_connection_name(format!("warren:{}:{role}", config.service_name).into());
    let mut attempts = 0;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        attempts += 1;
        let remaining = within.saturating_sub(started.elapsed());
        let reason =
            match tokio::time::timeout(remaining, Connection::connect_uri(uri.clone(), properties.clone())).await {
                Ok(Ok(connection)) => return Ok(connection),
                Ok(Err(error)) => config.redact(&error.to_string()),
                Err(_) => format!("no answer within {within:?}"),
            };
        let elapsed = started.elapsed();
        // Keep trying until the deadline itself; the last wait is cut to what is left of it.
        let left = within.saturating_sub(elapsed);
        if left < Duration::from_millis(10) {
            return Err(Error::Connect { url: config.redacted_url(), attempts, elapsed, reason });
        }
        tracing::debug!(url = %config.redacted_url(), attempts, %reason, "connect failed; retrying");
        tokio::time::sleep(backoff.next_wait().min(left)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_exchange_is_blamed_only_on_the_publish_to_it() {
        let reply = "NOT_FOUND - no exchange 'no-such-exchange' in vhost 'test'";
        assert!(names_exchange(reply, "no-such-exchange"));
        assert!(!names_exchange(reply, "gametrade.events"));
        assert!(!names_exchange(reply, "no-such"), "a prefix of the name is another exchange");
        assert!(names_exchange("NOT_FOUND - something else", "orders"));
        let long = "x".repeat(250);
        let cut = format!("NOT_FOUND - no exchange '{}...", &long[..227]);
        assert!(names_exchange(&cut, &long), "a name RabbitMQ cut short still names its exchange");
        assert!(!names_exchange(&cut, "orders"));
    }

    #[test]
    fn a_publish_that_runs_out_of_time_behind_another_exchanges_error_says_so() {
        let not_found = |exchange: &str| {
            Error::broker(
                "publish and confirm",
                ErrorKind::ProtocolError(lapin::protocol::AMQPError::new(
                    AMQPSoftError::NOTFOUND.into(),
                    format!("NOT_FOUND - no exchange '{exchange}' in vhost '/'").into(),
                ))
                .into(),
            )
        };
        let after = Duration::from_secs(30);
        let error = gave_up(not_found("missing"), "orders", after);
        assert!(matches!(error, Error::Timeout { after: a, .. } if a == after), "{error:?}");
        assert!(error.to_string().contains("missing exchange"), "{error}");
        let own = gave_up(not_found("orders"), "orders", after);
        assert!(matches!(own, Error::Broker { .. }), "its own exchange's error stays as it is: {own:?}");
        let Error::Broker { source, .. } = own else { unreachable!() };
        assert_eq!(source.reply_code(), Some(404), "the reply code is Warren's to give");
    }

    /// The size of the future `make` would return, without calling it.
    fn future_size<Fut>(_make: impl FnOnce() -> Fut) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// Never called: gives the closures above a value of any type.
    fn never<T>() -> T {
        unreachable!("only used in closures that are never called")
    }

    #[test]
    fn a_repeated_name_is_shared_and_a_new_one_replaces_it() {
        let mut last = None;
        let first = shared(&mut last, "user.registered");
        let again = shared(&mut last, "user.registered");
        assert!(Arc::ptr_eq(&first, &again), "the same routing key is shared, not allocated again");
        let other = shared(&mut last, "user.deleted");
        assert_eq!(&*other, "user.deleted");
        assert!(Arc::ptr_eq(&other, &shared(&mut last, "user.deleted")), "the new name is remembered");
        assert_eq!(&*first, "user.registered", "names handed out earlier stay as they were");
    }

    #[test]
    fn a_publish_in_flight_is_not_much_larger_than_lapins_own() {
        // Thousands of publishes may be in flight, each allocated at this size. An `async fn` wrapper around a
        // future it is given keeps two copies of it, which once made a publish three times lapin's.
        let lapin = future_size(|| {
            never::<&Channel>().basic_publish(never(), never(), never(), &[], lapin::BasicProperties::default())
        });
        let publish = Publish { exchange: "", routing_key: "", mandatory: false, confirm: true };
        let warren = future_size(|| never::<&Amqp>().publish(publish, Vec::new(), never(), never()));
        assert!(warren <= lapin + 1024, "a publish future takes {warren} bytes, lapin's basic_publish {lapin}");
    }
}
