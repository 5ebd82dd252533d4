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
//!
//! This file holds [`Amqp`]: the link, its channels, declarations, and the entry points. The rest, by concern:
//! `supervise.rs` (connecting, noticing a lost link, reconnecting, replaying the topology), `publish.rs`
//! (publishing, and classifying a failed publish), `consume.rs` (deliveries and settling them),
//! `properties.rs` (lapin's property and header types to and from Warren's) and `tls.rs` (`amqps://`).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
use super::{
    Acker, Canceller, ConsumeOn, Consumer, Delivery, Message, Publish, QueueSettings, ReplyPath, Settle, Transport,
};
use crate::backoff::Backoff;
use crate::config::{BusConfig, Endpoint};
use crate::contract::{ExchangeKind, ExchangeSpec};
use crate::envelope::{Inline, Properties};
use crate::error::{Error, Later, Result, connect_is_final};
use crate::health::Health;
use crate::topology::{Binding, Exchange, Topology};

mod consume;
pub(crate) mod probe;
mod properties;
mod publish;
mod supervise;
pub(crate) mod tls;

use consume::*;
pub(crate) use consume::{ack_multiple, cancel, settle};
pub(crate) use properties::{Delivered, to_lapin};
use publish::*;
use supervise::*;

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
    /// What this bus declared, replayed on every new connection.
    pub(super) topology: StdMutex<Topology>,
    /// At most this many publishes wait for confirms at once.
    window: Semaphore,
    closing: AtomicBool,
    /// Times the supervisor reconnected (for tests and metrics).
    recoveries: AtomicU64,
    /// The node the link is on: an index into the configured addresses.
    node: AtomicUsize,
    /// Whether the broker blocks publishing (`connection.blocked`), read on every publish; why and since when,
    /// for health; and a watch that publishes waiting for it to end wait on.
    blocked: AtomicBool,
    blocked_by: StdMutex<Option<(String, SystemTime)>>,
    unblocked: watch::Sender<bool>,
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
        tls::check(config)?;
        let Endpoint::Amqp { addresses, .. } = &config.endpoint else {
            return Err(Error::config("the AMQP transport needs an amqp:// URL"));
        };
        // The first time, in the order given: the first node that answers.
        let order: Vec<usize> = (0..addresses.len()).collect();
        let (publish, consume, node) = connect_pair(config, config.connect_timeout, started, &order).await?;
        let link = Link { generation: 1, publish: Arc::new(publish), consume: Arc::new(consume) };
        let node_name = addresses[node].to_string();
        let amqp = Arc::new(Amqp {
            config: config.clone(),
            link: watch::Sender::new(Some(link.clone())),
            health: StdMutex::new(Health::Connected { node: node_name }),
            publishers: [StdRwLock::new(None), StdRwLock::new(None)],
            opening: Mutex::new(()),
            topology: StdMutex::default(),
            window: Semaphore::new(PUBLISH_WINDOW),
            closing: AtomicBool::new(false),
            recoveries: AtomicU64::new(0),
            node: AtomicUsize::new(node),
            blocked: AtomicBool::new(false),
            blocked_by: StdMutex::new(None),
            unblocked: watch::Sender::new(true),
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
        let health = self.health.lock().expect("health").clone();
        match (health, self.blocked_by.lock().expect("blocked").clone()) {
            (Health::Connected { node } | Health::Degraded { node, .. }, Some((reason, since))) => {
                Health::Blocked { node, reason, since }
            }
            (health, _) => health,
        }
    }

    /// How many nodes the bus may connect to.
    pub(super) fn nodes(&self) -> usize {
        match &self.config.endpoint {
            Endpoint::Amqp { addresses, .. } => addresses.len(),
            Endpoint::Memory(_) => 0,
        }
    }

    /// The address of the node the link is on (or was on last).
    pub(crate) fn node_address(&self) -> Option<crate::config::Address> {
        match &self.config.endpoint {
            Endpoint::Amqp { addresses, .. } => addresses.get(self.node.load(Ordering::Relaxed)).cloned(),
            Endpoint::Memory(_) => None,
        }
    }

    /// The node the link is on, as `host:port`.
    pub(super) fn node_name(&self) -> String {
        self.node_address().map(|address| address.to_string()).unwrap_or_default()
    }

    /// Records that the broker blocked publishing (`Some(reason)`) or unblocked it.
    pub(super) fn set_blocked(&self, reason: Option<String>) {
        let blocked = reason.is_some();
        *self.blocked_by.lock().expect("blocked") = reason.map(|reason| (reason, SystemTime::now()));
        self.blocked.store(blocked, Ordering::Relaxed);
        self.unblocked.send_replace(!blocked);
    }

    /// Waits while the broker blocks publishing, until `by`; [`Error::Blocked`] if it still does then.
    async fn while_blocked(&self, by: Instant) -> Result<()> {
        let mut unblocked = self.unblocked.subscribe();
        let wait = unblocked.wait_for(|unblocked| *unblocked);
        match tokio::time::timeout(by.saturating_duration_since(Instant::now()), wait).await {
            Ok(_) => Ok(()),
            Err(_) => Err(self.blocked_error()),
        }
    }

    /// The error of a publish that ran out of time while the broker blocked publishing.
    fn blocked_error(&self) -> Error {
        let reason = self.blocked_by.lock().expect("blocked").as_ref().map(|(reason, _)| reason.clone());
        Error::Blocked {
            reason: reason.unwrap_or_else(|| "a resource alarm".to_owned()),
            after: self.config.publish_timeout,
        }
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
        let by = Instant::now().later(self.timeout());
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
        let result = declare_exchange_on(&channel, &Exchange::from(exchange), self.timeout()).await;
        close_quietly(&channel).await;
        result?;
        self.topology.lock().expect("topology").record_exchange(exchange);
        Ok(())
    }

    pub(crate) async fn declare_queue(&self, queue: &str, options: &QueueSettings) -> Result<()> {
        let channel = self.channel_on(false).await?;
        let result = declare_queue_on(&channel, queue, options, self.timeout()).await;
        close_quietly(&channel).await;
        result?;
        self.topology.lock().expect("topology").record_queue(queue, options);
        Ok(())
    }

    /// What this bus declared.
    pub(crate) fn topology(&self) -> Topology {
        self.topology.lock().expect("topology").clone()
    }

    /// Stops replaying `queues` (and their bindings) after reconnections: what they served has stopped.
    pub(crate) fn forget_queues(&self, queues: &[String]) {
        self.topology.lock().expect("topology").forget(queues);
    }

    pub(crate) async fn bind(&self, queue: &str, exchange: &str, key: &str) -> Result<()> {
        let channel = self.channel_on(false).await?;
        let result = bind_on(&channel, queue, exchange, key, self.timeout()).await;
        close_quietly(&channel).await;
        result?;
        self.topology.lock().expect("topology").record_binding(queue, exchange, key);
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
            // While the broker blocks publishing, nothing is sent: it would only pile up unread.
            if self.blocked.load(Ordering::Relaxed) {
                Box::pin(self.while_blocked(by)).await?;
            }
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
                    Failure::Transient if self.blocked.load(Ordering::Relaxed) => {
                        // Sent before the block, or while it began: sent again once it ends (the same
                        // message id), or failed as blocked when the deadline comes first.
                        Box::pin(self.while_blocked(by)).await?;
                        attempt += 1;
                    }
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

    pub(crate) async fn consume(&self, queue: &str, prefetch: u16, tag: String, on: ConsumeOn) -> Result<Consumer> {
        let (channel, generation) = self.channel_and_generation(on == ConsumeOn::Consuming).await?;
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
        let stream = Box::pin(Deliveries::new(consumer, false));
        Ok(Consumer { tag, stream, cancel: Canceller::Amqp(Cancel(channel)), generation })
    }

    /// Messages ready in `queue`, and its consumers.
    pub(crate) async fn queue_stats(&self, queue: &str) -> Result<(u64, u32)> {
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let declared = self
            .on_fresh_channel("queue declare (passive)", |channel| async move {
                channel.queue_declare(ShortString::from(queue), passive, FieldTable::default()).await
            })
            .await?;
        Ok((u64::from(declared.message_count()), declared.consumer_count()))
    }

    /// Whether exchange `name` exists: a passive declare, which needs no `configure` permission.
    pub(crate) async fn exchange_exists(&self, name: &str) -> Result<bool> {
        let passive = ExchangeDeclareOptions { passive: true, ..ExchangeDeclareOptions::default() };
        let declared = self
            .on_fresh_channel("exchange declare (passive)", |channel| async move {
                // The kind is not compared on a passive declare.
                let kind = lapin::ExchangeKind::Direct;
                channel.exchange_declare(ShortString::from(name), kind, passive, FieldTable::default()).await
            })
            .await;
        exists(declared)
    }

    /// Whether queue `name` exists: a passive declare, which needs no `configure` permission.
    pub(crate) async fn queue_exists(&self, name: &str) -> Result<bool> {
        exists(self.queue_stats(name).await.map(drop))
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
        let link = self.link(Instant::now().later(self.timeout())).await?;
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
            stream: Box::pin(Deliveries::new(consumer, true)),
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

/// Opens a channel on `connection`, within `timeout`.
/// A passive declare's outcome: `NOT_FOUND` means the thing does not exist; other failures are errors.
fn exists(declared: Result<()>) -> Result<bool> {
    match declared {
        Ok(()) => Ok(true),
        Err(Error::Broker { source, .. }) if source.reply_code() == Some(404) => Ok(false),
        Err(error) => Err(error),
    }
}

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
