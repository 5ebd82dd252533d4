//! `GET /ws`: live streams of exchanges, and publishing, over one WebSocket per client.
//!
//! A client sends `{"subscribe": {"exchange": "gametrade.events", "pattern": "user.*"}}` (answered
//! `{"subscribed": …}` once the broker queue is bound) and receives each matching message as
//! `{"type", "routing_key", "message_id", "timestamp", "exchange", "pattern", "payload"}`; `unsubscribe` takes
//! the same shape; `{"publish": {"type": …, "payload": …, "id": …}}` is answered `{"ack": {"id", "message_id"}}`
//! or `{"ack": {"id", "error": <problem>}}`.
//!
//! One broker queue ([`warren::Bus::watch`]) per exchange and pattern per gateway, however many clients
//! subscribe to it: a pump task reads it and hands each message, encoded once, to every subscriber's bounded
//! buffer without waiting. A client whose buffer is full is closed with code 1008 and reason "slow" (and
//! counted); it never slows the others or the queue. The queue goes away with its last subscriber.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use warren_reflect::Format;

use crate::config::{Group, StreamRule};
use crate::{Gateway, Problem, WebSocketConfig};

/// Close code for a client that fell behind (policy violation), and for one that went quiet or a gateway that
/// stops (going away).
const SLOW: u16 = 1008;
const IDLE: u16 = 1001;
/// How long a closing client has to take its close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// How long binding a stream's queue may take (the hub waits meanwhile).
const WATCH_WAIT: Duration = Duration::from_secs(10);

/// Why a socket's loop ended.
enum End {
    Gone,
    Slow,
    Idle,
    Shutdown,
}

/// An exchange and a binding pattern.
type Key = (String, String);

/// Every socket's subscriptions, and the one broker queue per exchange and pattern they share.
#[derive(Debug)]
pub(crate) struct Hub {
    config: WebSocketConfig,
    connections: AtomicUsize,
    slow: Arc<AtomicU64>,
    next_client: AtomicU64,
    /// Never held across an await: a stream is in the map while the broker binds its queue, and a subscribe
    /// to it meanwhile waits for that stream alone.
    streams: Mutex<HashMap<Key, Arc<Stream>>>,
    /// How many `streams` holds, readable without its lock.
    queues: AtomicUsize,
}

/// One broker queue and the clients reading it.
#[derive(Debug)]
struct Stream {
    subscribers: Mutex<Vec<Subscriber>>,
    stop: Notify,
    /// Whether its queue is bound: `None` while the first subscriber's request binds it, then what came of it.
    bound: watch::Sender<Option<Result<(), String>>>,
}

#[derive(Debug)]
struct Subscriber {
    client: Arc<Client>,
    sender: mpsc::Sender<Utf8Bytes>,
}

/// What the pump tasks know of a client: whether it fell behind.
#[derive(Debug)]
struct Client {
    id: u64,
    slow: AtomicBool,
    fell_behind: Notify,
}

impl Client {
    /// Marks the client as fallen behind (a stream's buffer for it full, or a write to it waiting too long):
    /// counted once, and its socket told to close as slow.
    fn fall_behind(&self, gateway: &Gateway) {
        if self.slow.swap(true, Ordering::Relaxed) {
            return;
        }
        gateway.hub.slow.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "prometheus")]
        if let Some(metrics) = &gateway.config.metrics {
            metrics.own.slow.inc();
        }
        self.fell_behind.notify_one();
    }
}

impl Hub {
    pub(crate) fn new(config: WebSocketConfig) -> Self {
        Hub {
            config,
            connections: AtomicUsize::new(0),
            slow: Arc::new(AtomicU64::new(0)),
            next_client: AtomicU64::new(1),
            streams: Mutex::new(HashMap::new()),
            queues: AtomicUsize::new(0),
        }
    }

    /// How many sockets are open.
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// How many clients were closed for falling behind.
    pub(crate) fn slow_disconnects(&self) -> u64 {
        self.slow.load(Ordering::Relaxed)
    }

    /// How many broker queues the streams hold. Never waits: `/ready` answers while a subscribe waits on the
    /// broker.
    pub(crate) fn queues(&self) -> usize {
        self.queues.load(Ordering::Relaxed)
    }
}

/// The most stream messages written to a client together, before one flush (and at most its buffer).
const MAX_BATCH: usize = 256;

/// The read buffer of a socket. Clients send little (requests, pongs), and tungstenite zero-fills the whole
/// buffer each time it tries a read, even one that finds nothing: with its default of 128 KiB, that memset was
/// most of the gateway's CPU with 1,000 clients, and most of its resident memory. Larger frames still read,
/// in several reads.
const READ_BUFFER: usize = 4 * 1024;

/// Counts a socket while it is open.
struct Connection(Arc<Gateway>);

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.hub.connections.fetch_sub(1, Ordering::Relaxed);
        #[cfg(feature = "prometheus")]
        if let Some(metrics) = &self.0.config.metrics {
            metrics.own.clients.dec();
        }
    }
}

/// `GET /ws`: the stream token (header or `?access_token=`), the connection limit, then the upgrade.
pub(crate) async fn upgrade(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    uri: Uri,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let token = uri
        .query()
        .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("access_token=")))
        .and_then(|token| percent_encoding::percent_decode_str(token).decode_utf8().ok());
    let token = token.as_deref();
    if let Err(problem) = gateway.authorize(Group::Stream, &headers, token) {
        return problem.into_response();
    }
    let Ok(upgrade) = upgrade else {
        return Problem::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade",
            "WebSocket only",
            "GET /ws is a WebSocket: connect with a WebSocket client",
        )
        .into_response();
    };
    let max = gateway.hub.config.max_connections;
    if gateway.hub.connections.fetch_add(1, Ordering::Relaxed) >= max {
        gateway.hub.connections.fetch_sub(1, Ordering::Relaxed);
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too-many-connections",
            "Too many connections",
            format!("the gateway holds its maximum of {max} WebSocket connections; try again later"),
        )
        .into_response();
    }
    let connection = Connection(gateway.clone());
    #[cfg(feature = "prometheus")]
    if let Some(metrics) = &gateway.config.metrics {
        metrics.own.clients.inc();
    }
    let (open, closing) = gateway.config.shutdown.open();
    let can_publish = gateway.authorize(Group::Publish, &headers, token).is_ok();
    // Only a client that may publish sends frames larger than a few names.
    let largest = if can_publish { gateway.limit } else { MAX_FRAME_WITHOUT_PUBLISH };
    upgrade.max_message_size(largest).read_buffer_size(READ_BUFFER).on_upgrade(move |socket| async move {
        serve(connection, socket, can_publish, closing).await;
        drop(open);
    })
}

async fn serve(connection: Connection, socket: WebSocket, can_publish: bool, mut closing: watch::Receiver<bool>) {
    let gateway = connection.0.clone();
    let config = gateway.hub.config;
    let client = Arc::new(Client {
        id: gateway.hub.next_client.fetch_add(1, Ordering::Relaxed),
        slow: AtomicBool::new(false),
        fell_behind: Notify::new(),
    });
    let (sender, mut receiver) = mpsc::channel::<Utf8Bytes>(config.buffer.max(1));
    let (mut sink, mut incoming) = socket.split();
    let mut subscriptions: Vec<Key> = Vec::new();
    let mut ping = tokio::time::interval(config.ping_interval());
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    // Stream messages are written at most once per `flush_interval`: after a write, the client's queue is left
    // alone until `flush_interval` has passed (`resume`), and then whatever came meanwhile goes out in one write
    // (with a thousand clients at a thousand messages a second, a write per message per client was most of the
    // gateway's work). A message after a quiet spell goes out at once; answers and pings never wait.
    let flush_interval = config.flush_interval.min(WebSocketConfig::MAX_FLUSH_INTERVAL);
    let batch = config.buffer.clamp(1, MAX_BATCH);
    let mut resume: Option<Instant> = None;
    let ended = 'serving: loop {
        // What to write first: an answer, a ping, or a stream message (`true`); the queue's others follow it.
        let (first, streamed) = tokio::select! {
            frame = incoming.next() => {
                let Some(Ok(frame)) = frame else { break End::Gone };
                last_heard = Instant::now();
                let reply = match frame {
                    Message::Text(text) => {
                        handle(&gateway, &client, &sender, &mut subscriptions, can_publish, text.as_str()).await
                    }
                    Message::Binary(_) => Some(error("frames are JSON text")),
                    Message::Close(_) => break End::Gone,
                    Message::Ping(_) | Message::Pong(_) => None,
                };
                let Some(reply) = reply else { continue };
                (Message::Text(reply.to_string().into()), false)
            }
            Some(message) = receiver.recv(), if resume.is_none() => (Message::Text(message), true),
            _ = sleep_until(resume), if resume.is_some() => {
                resume = None;
                continue;
            }
            _ = client.fell_behind.notified() => break End::Slow,
            _ = closed(&mut closing) => break End::Shutdown,
            _ = ping.tick() => {
                if last_heard.elapsed() > config.idle_timeout() {
                    break End::Idle;
                }
                (Message::Ping(Default::default()), false)
            }
        };
        // Whatever else is queued for the client goes out with it, flushed once: a client with a backlog costs
        // one write, not one a message.
        let write = async {
            let mut drained = 0;
            sink.feed(first).await?;
            while drained < batch {
                let Ok(more) = receiver.try_recv() else { break };
                sink.feed(Message::Text(more)).await?;
                drained += 1;
            }
            sink.flush().await.map(|()| drained)
        };
        // A write that waits on a client that does not read must not outlast its falling behind, the idle
        // timeout (a client that only sends requests and never reads their answers falls behind on no stream),
        // or the gateway's shutdown. The ping's interval times it: no timer of its own per write.
        let mut write = std::pin::pin!(write);
        let began = Instant::now();
        let drained = loop {
            tokio::select! {
                sent = &mut write => match sent {
                    Ok(drained) => break drained,
                    Err(_) => break 'serving End::Gone,
                },
                _ = client.fell_behind.notified() => break 'serving End::Slow,
                _ = closed(&mut closing) => break 'serving End::Shutdown,
                _ = ping.tick() => {
                    if began.elapsed() > config.idle_timeout() {
                        client.fall_behind(&gateway);
                        break 'serving End::Slow;
                    }
                }
            }
        };
        if (streamed || drained > 0) && !flush_interval.is_zero() {
            resume = Some(Instant::now() + flush_interval);
        }
    };
    // Out of every stream first, so that a last subscriber's queue goes now, not after the farewell.
    for key in std::mem::take(&mut subscriptions) {
        unsubscribe(&gateway, &client, &key).await;
    }
    let close = |code: u16, reason: &'static str| Message::Close(Some(CloseFrame { code, reason: reason.into() }));
    let farewell = match ended {
        End::Gone => None,
        End::Slow => {
            tracing::warn!(client = client.id, "WebSocket client fell behind; closing it");
            Some(close(SLOW, "slow"))
        }
        End::Idle => Some(close(IDLE, "idle")),
        End::Shutdown => Some(close(IDLE, "shutdown")),
    };
    if let Some(farewell) = farewell {
        // Queued after whatever the client has not read yet; then the client's own close frame ends the
        // handshake (what it sends meanwhile, such as pongs, is read and dropped, so the connection ends with a
        // FIN rather than a reset). A client that never reads is dropped after CLOSE_WAIT.
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            if sink.send(farewell).await.is_ok() {
                while let Some(Ok(frame)) = incoming.next().await {
                    if matches!(frame, Message::Close(_)) {
                        break;
                    }
                }
            }
        })
        .await;
    }
    drop(connection);
}

/// Returns at `at`; never without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Returns once the gateway shuts down.
async fn closed(closing: &mut watch::Receiver<bool>) {
    if closing.wait_for(|closing| *closing).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// One frame from the client; the answer to send back, if any.
async fn handle(
    gateway: &Arc<Gateway>,
    client: &Arc<Client>,
    sender: &mpsc::Sender<Utf8Bytes>,
    subscriptions: &mut Vec<Key>,
    can_publish: bool,
    text: &str,
) -> Option<Value> {
    let Ok(frame) = serde_json::from_str::<Frame<'_>>(text) else {
        return Some(error("a frame is a JSON object: {\"subscribe\": …}, {\"unsubscribe\": …} or {\"publish\": …}"));
    };
    if let Some(request) = frame.subscribe {
        let Some(request) = small(request) else {
            return Some(json!({ "error": { "request": "subscribe", "detail": TOO_BIG } }));
        };
        let key = match key(gateway, &request) {
            Ok(key) => key,
            Err(detail) => return Some(json!({ "error": { "request": "subscribe", "detail": detail } })),
        };
        if subscriptions.contains(&key) {
            return Some(json!({ "subscribed": { "exchange": key.0, "pattern": key.1 } }));
        }
        if subscriptions.len() >= gateway.hub.config.max_subscriptions {
            let detail = format!("a socket holds at most {} subscriptions", gateway.hub.config.max_subscriptions);
            return Some(json!({ "error": { "request": "subscribe", "detail": detail } }));
        }
        return Some(match subscribe(gateway, client, sender.clone(), &key).await {
            Ok(()) => {
                subscriptions.push(key.clone());
                json!({ "subscribed": { "exchange": key.0, "pattern": key.1 } })
            }
            Err(detail) => json!({ "error": { "request": "subscribe", "detail": detail } }),
        });
    }
    if let Some(request) = frame.unsubscribe {
        let Some(request) = small(request) else {
            return Some(json!({ "error": { "request": "unsubscribe", "detail": TOO_BIG } }));
        };
        let exchange = request.get("exchange").and_then(Value::as_str).unwrap_or_default().to_owned();
        let pattern = request.get("pattern").and_then(Value::as_str).unwrap_or("#").to_owned();
        let key = (exchange, pattern);
        if let Some(at) = subscriptions.iter().position(|k| *k == key) {
            subscriptions.remove(at);
            unsubscribe(gateway, client, &key).await;
        }
        return Some(json!({ "unsubscribed": { "exchange": key.0, "pattern": key.1 } }));
    }
    if let Some(request) = frame.publish {
        // Echoed as it came, when it is an id's size.
        let id = request.id.and_then(small).unwrap_or(Value::Null);
        return Some(match publish(gateway, can_publish, &request).await {
            Ok(message_id) => json!({ "ack": { "id": id, "message_id": message_id } }),
            Err(problem) => json!({ "ack": { "id": id, "error": problem.body() } }),
        });
    }
    Some(error("a frame is {\"subscribe\": …}, {\"unsubscribe\": …} or {\"publish\": …}"))
}

/// A frame, each request kept as the client's text until it is known what it is: no frame becomes a generic
/// JSON tree larger than the request it carries (that tree takes tens of times the frame's size), and a
/// publish's payload is parsed once, by the catalog, against its type.
#[derive(serde::Deserialize)]
struct Frame<'a> {
    #[serde(borrow, default)]
    subscribe: Option<&'a RawValue>,
    #[serde(borrow, default)]
    unsubscribe: Option<&'a RawValue>,
    #[serde(borrow, default)]
    publish: Option<Publish<'a>>,
}

/// `{"publish": {"type": …, "payload": …, "id": …}}`.
#[derive(serde::Deserialize)]
struct Publish<'a> {
    #[serde(rename = "type", default)]
    type_name: Option<String>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
}

/// The largest frame a client without the publish token may send (a larger one ends its socket).
const MAX_FRAME_WITHOUT_PUBLISH: usize = 64 * 1024;

/// The most a subscribe or unsubscribe request, or a publish's id, may take: each is a few names.
const SMALL_REQUEST: usize = 4 * 1024;

const TOO_BIG: &str = "a subscribe or unsubscribe request is at most 4 KiB";

/// `raw` as a JSON value, when it is at most [`SMALL_REQUEST`] bytes.
fn small(raw: &RawValue) -> Option<Value> {
    (raw.get().len() <= SMALL_REQUEST).then(|| serde_json::from_str(raw.get()).ok()).flatten()
}

fn error(detail: &str) -> Value {
    json!({ "error": { "detail": detail } })
}

/// The exchange and pattern of a subscribe request, checked: a bounded, valid pattern the configuration
/// allows on an exchange the contracts declare, that some event of the exchange can match.
fn key(gateway: &Gateway, request: &Value) -> Result<Key, String> {
    let exchange = request.get("exchange").and_then(Value::as_str).ok_or("name the exchange: {\"exchange\": …}")?;
    let pattern = request.get("pattern").and_then(Value::as_str).unwrap_or("#");
    if pattern.len() > warren::MAX_PATTERN_LEN || exchange.len() > warren::MAX_PATTERN_LEN {
        return Err(format!("patterns and exchange names are at most {} bytes", warren::MAX_PATTERN_LEN));
    }
    if let Some(problem) = warren::topic::pattern_problem(pattern) {
        return Err(format!("bad pattern: {problem}"));
    }
    if !allowed(&gateway.config.streams, exchange, pattern) {
        return Err(format!("exchange {exchange:?} with pattern {pattern:?} is not streamed here"));
    }
    // An allowed exchange and pattern that no contract event can reach would be a silent stream.
    if let Some(problem) = gateway.catalog.watch_problem(exchange, pattern) {
        return Err(problem);
    }
    Ok((exchange.to_owned(), pattern.to_owned()))
}

/// Whether a rule allows `pattern` on `exchange`: a pattern listed as it is, any pattern under `#`, or a
/// plain routing key a listed pattern matches.
pub(crate) fn allowed(rules: &[StreamRule], exchange: &str, pattern: &str) -> bool {
    let plain = !pattern.split('.').any(|word| word == "*" || word == "#");
    rules.iter().filter(|rule| rule.exchange == exchange).any(|rule| {
        rule.patterns.iter().any(|p| p == "#" || p == pattern || (plain && warren::topic::matches(p, pattern)))
    })
}

async fn subscribe(
    gateway: &Arc<Gateway>,
    client: &Arc<Client>,
    sender: mpsc::Sender<Utf8Bytes>,
    key: &Key,
) -> Result<(), String> {
    let subscriber = Subscriber { client: client.clone(), sender };
    let (stream, first) = {
        let mut streams = lock(&gateway.hub.streams);
        match streams.get(key) {
            Some(stream) => {
                lock(&stream.subscribers).push(subscriber);
                (stream.clone(), false)
            }
            None => {
                let stream = Arc::new(Stream {
                    subscribers: Mutex::new(vec![subscriber]),
                    stop: Notify::new(),
                    bound: watch::channel(None).0,
                });
                streams.insert(key.clone(), stream.clone());
                gateway.hub.queues.store(streams.len(), Ordering::Relaxed);
                (stream, true)
            }
        }
    };
    if !first {
        // Another request binds it: wait for that (within its own deadline), not for every stream's.
        let mut bound = stream.bound.subscribe();
        let outcome = bound.wait_for(Option::is_some).await.map(|outcome| outcome.clone());
        return outcome.ok().flatten().unwrap_or_else(|| Err(format!("the stream of {} was not bound", key.0)));
    }
    // Whatever ends this request (an error, a deadline, the socket closing), the stream does not stay in the
    // map unbound, and those waiting for it hear.
    let mut unbound = Unbound { gateway, key, stream: &stream, armed: true };
    let bound = async {
        let exchange = gateway.catalog.exchange(&key.0).map_err(|e| e.to_string())?;
        tokio::time::timeout(WATCH_WAIT, gateway.bus.watch(&exchange, &key.1))
            .await
            .map_err(|_| format!("the broker did not bind a queue to {} within {WATCH_WAIT:?}", key.0))?
            .map_err(|e| format!("cannot watch {}: {e}", key.0))
    };
    let reader = match bound.await {
        Ok(reader) => reader,
        Err(error) => {
            unbound.fail(error.clone());
            return Err(error);
        }
    };
    unbound.armed = false;
    stream.bound.send_replace(Some(Ok(())));
    tokio::spawn(pump(gateway.clone(), key.clone(), reader, stream.clone()));
    Ok(())
}

/// A stream whose queue is being bound: unless disarmed, on drop takes it out of the map (if it is still
/// there) and tells those waiting for it that it failed.
struct Unbound<'a> {
    gateway: &'a Gateway,
    key: &'a Key,
    stream: &'a Arc<Stream>,
    armed: bool,
}

impl Unbound<'_> {
    fn fail(&mut self, error: String) {
        self.armed = false;
        let mut streams = lock(&self.gateway.hub.streams);
        if streams.get(self.key).is_some_and(|s| Arc::ptr_eq(s, self.stream)) {
            streams.remove(self.key);
            self.gateway.hub.queues.store(streams.len(), Ordering::Relaxed);
        }
        drop(streams);
        self.stream.bound.send_replace(Some(Err(error)));
    }
}

impl Drop for Unbound<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.fail(format!("the request that bound the stream of {} ended first", self.key.0));
        }
    }
}

async fn unsubscribe(gateway: &Gateway, client: &Client, key: &Key) {
    let mut streams = lock(&gateway.hub.streams);
    let Some(stream) = streams.get(key) else { return };
    let empty = {
        let mut subscribers = lock(&stream.subscribers);
        subscribers.retain(|s| s.client.id != client.id);
        subscribers.is_empty()
    };
    if empty {
        // `notify_one` keeps the wake-up for a pump not waiting yet.
        stream.stop.notify_one();
        streams.remove(key);
        gateway.hub.queues.store(streams.len(), Ordering::Relaxed);
    }
}

/// Reads one broker queue and hands each message to every subscriber, never waiting for one.
async fn pump(gateway: Arc<Gateway>, key: Key, mut reader: warren::QueueReader, stream: Arc<Stream>) {
    loop {
        let taken = tokio::select! {
            _ = stream.stop.notified() => break,
            taken = reader.next_within(Duration::from_secs(1)) => taken,
        };
        let Some(taken) = taken else { continue };
        let frame: Utf8Bytes = message_frame(&gateway, &key, &taken.message).to_string().into();
        // Settled before it is fanned out: a stream is a live view, not a work queue.
        let _ = taken.ack().await;
        for subscriber in lock(&stream.subscribers).iter() {
            if let Err(mpsc::error::TrySendError::Full(_)) = subscriber.sender.try_send(frame.clone()) {
                subscriber.client.fall_behind(&gateway);
            }
        }
    }
    reader.close().await;
}

/// A message as the client receives it.
fn message_frame(gateway: &Gateway, key: &Key, message: &warren::RawMessage) -> Value {
    let p = &message.properties;
    let mut frame = json!({
        "type": p.kind,
        "routing_key": message.routing_key,
        "message_id": p.message_id,
        "timestamp": p.timestamp,
        "exchange": key.0,
        "pattern": key.1,
    });
    match gateway.catalog.decode(message) {
        Ok(payload) => frame["payload"] = payload,
        Err(error) => {
            frame["payload"] = Value::Null;
            frame["undecodable"] = json!(error.to_string());
        }
    }
    frame
}

async fn publish(gateway: &Gateway, can_publish: bool, request: &Publish<'_>) -> Result<String, Problem> {
    if !can_publish {
        return Err(Problem::unauthorized(
            "publishing over the socket needs a publish token when connecting (Authorization or ?access_token=)",
        ));
    }
    let name = request.type_name.as_deref().unwrap_or_default();
    let body = request.payload.map_or("{}", RawValue::get);
    if body.len() > gateway.limit {
        return Err(Problem::too_large(body.len(), gateway.limit));
    }
    if let Ok(event) = gateway.catalog.event(name)
        && gateway.events.contains(&event.full_name)
    {
        return gateway.publish(&event.full_name, body.as_bytes(), Format::Json, &HeaderMap::new()).await;
    }
    if let Ok(task) = gateway.catalog.task(name)
        && gateway.tasks.contains(&task.full_name)
    {
        return gateway.enqueue(&task.full_name, body.as_bytes(), Format::Json, &HeaderMap::new()).await;
    }
    Err(Problem::not_found(format!("no event or task named {:?} is published here", crate::routes::cut(name))))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_allowed_by_their_rule() {
        let rules = [
            StreamRule { exchange: "gametrade.events".into(), patterns: vec!["user.*".into()] },
            StreamRule { exchange: "system".into(), patterns: vec!["#".into()] },
        ];
        assert!(allowed(&rules, "gametrade.events", "user.*"));
        assert!(allowed(&rules, "gametrade.events", "user.registered"));
        assert!(!allowed(&rules, "gametrade.events", "#"));
        assert!(!allowed(&rules, "gametrade.events", "user.#"));
        assert!(!allowed(&rules, "notifications", "user.*"));
        assert!(allowed(&rules, "system", "anything.#"));
    }
}
