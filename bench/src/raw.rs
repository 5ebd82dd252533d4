//! The baseline: hand-written lapin code with the best practice the notes describe — publishes pipelined with
//! up to a thousand confirms in flight, consumers acknowledging in batches with `multiple`, RPC clients with one
//! long-lived direct reply-to consumer. It encodes and decodes the same protobuf messages. Its events carry the
//! envelope a hand-written service would: message id, type, content type and persistence. With
//! `--raw-envelope warren` they carry Warren's whole envelope instead (also app id, timestamp and the
//! `x-warren-schema` header, stamped as often as Warren stamps it; like Warren's, an event that starts a
//! conversation goes without a correlation id), and its RPC calls Warren's too (a request also carries its
//! id, app id, timestamp, content type, a TTL and the absolute deadline in `x-warren-deadline`; a reply its app
//! id and content type), so both sides send the same bytes and the ratio is the layer's cost alone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use prost::Message as _;
use tokio::sync::oneshot;
use warren_contracts::at::v1::{IntSumRequest, IntSumResponse};
use warren_contracts::gametrade::v1::{PaymentCompleted, UserRegistered};

/// The exchange raw publishes go to (Warren's go to its contract's `gametrade.events`).
pub(crate) const EXCHANGE: &str = "bench.raw.events";
/// Publishes in flight at once, on both sides.
pub(crate) const WINDOW: usize = 1000;

pub(crate) async fn connect(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default()).await.expect("start RabbitMQ: the benchmark connects")
}

pub(crate) async fn channel(connection: &Connection, confirms: bool) -> Channel {
    let channel = connection.create_channel().await.expect("channel");
    if confirms {
        channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirm select");
    }
    channel
}

/// How long a benchmark queue outlives its last use. Workloads delete their queues, and the run's vhost goes at
/// its end; this is for a run killed outright, whose vhost stays behind, so that its queues do not keep their
/// messages (and the broker's memory) until someone deletes it.
const QUEUE_EXPIRY_MS: u32 = 120_000;

/// Whether the benchmark's queues are quorum queues (`--cluster`).
static QUORUM: AtomicBool = AtomicBool::new(false);

/// Makes every queue the benchmark declares from now on a quorum queue (replicated on the cluster's nodes).
pub(crate) fn use_quorum_queues() {
    QUORUM.store(true, Ordering::Relaxed);
}

/// Whether the benchmark's queues are quorum queues.
pub(crate) fn quorum() -> bool {
    QUORUM.load(Ordering::Relaxed)
}

/// Declares `queue` and binds it to `exchange` with `user.registered` (the topology, not timed).
pub(crate) async fn queue(channel: &Channel, queue: &str, exchange: &str, durable: bool) {
    queue_for(channel, queue, exchange, "user.registered", durable).await;
}

/// Declares `queue` (a durable quorum queue under `--cluster`) and binds it to `exchange` with `key`.
pub(crate) async fn queue_for(channel: &Channel, queue: &str, exchange: &str, key: &str, durable: bool) {
    let kind = ExchangeKind::Topic;
    let options = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    channel.exchange_declare(exchange.into(), kind, options, FieldTable::default()).await.expect("exchange");
    let options = QueueDeclareOptions { durable: durable || quorum(), ..QueueDeclareOptions::default() };
    let mut arguments = FieldTable::default();
    arguments.insert("x-expires".into(), AMQPValue::LongUInt(QUEUE_EXPIRY_MS));
    if quorum() {
        arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    }
    channel.queue_declare(queue.into(), options, arguments).await.expect("queue");
    let bind = QueueBindOptions::default();
    channel.queue_bind(queue.into(), exchange.into(), key.into(), bind, FieldTable::default()).await.expect("bind");
}

pub(crate) async fn delete(channel: &Channel, queue: &str) {
    let _ = channel.queue_delete(queue.into(), QueueDeleteOptions::default()).await;
}

/// Whether raw events carry Warren's whole envelope (`--raw-envelope warren`).
static WARRENS_ENVELOPE: AtomicBool = AtomicBool::new(false);

/// Makes raw events carry Warren's whole envelope from now on.
pub(crate) fn send_warrens_envelope() {
    WARRENS_ENVELOPE.store(true, Ordering::Relaxed);
}

/// Whether this event gets the schema header, as Warren decides it: the first, the first in each second (`now`,
/// Unix seconds) and one in 64. Counted per process, where Warren counts per bus: a few stamps fewer.
fn stamps_schema(now: u64) -> bool {
    static BEGUN: AtomicU64 = AtomicU64::new(0);
    static STAMPED_IN: AtomicU64 = AtomicU64::new(u64::MAX);
    let stamp = BEGUN.fetch_add(1, Ordering::Relaxed).is_multiple_of(64) || STAMPED_IN.load(Ordering::Relaxed) != now;
    if stamp {
        STAMPED_IN.store(now, Ordering::Relaxed);
    }
    stamp
}

fn properties(persistent: bool) -> BasicProperties {
    properties_of::<UserRegistered>(persistent)
}

fn properties_of<M: warren::Payload>(persistent: bool) -> BasicProperties {
    let id = uuid::Uuid::now_v7().to_string();
    let properties = BasicProperties::default()
        .with_type(M::TYPE_NAME.into())
        .with_content_type("application/x-protobuf".into())
        .with_delivery_mode(if persistent { 2 } else { 1 });
    if !WARRENS_ENVELOPE.load(Ordering::Relaxed) {
        return properties.with_message_id(ShortString::from(id));
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let properties = if stamps_schema(now.as_secs()) {
        let mut headers = FieldTable::default();
        let fingerprint = M::FINGERPRINT;
        headers.insert("x-warren-schema".into(), AMQPValue::LongString(fingerprint.as_bytes().to_vec().into()));
        properties.with_headers(headers)
    } else {
        properties
    };
    properties.with_message_id(ShortString::from(id)).with_app_id("warren-bench".into()).with_timestamp(now.as_secs())
}

/// Publishes one event to [`EXCHANGE`], waiting for its confirm when `confirm`.
pub(crate) async fn publish(channel: &Channel, event: &UserRegistered, confirm: bool, persistent: bool) {
    publish_to(channel, EXCHANGE, event, confirm, persistent).await;
}

/// Publishes one event to `exchange`, waiting for its confirm when `confirm`.
pub(crate) async fn publish_to(
    channel: &Channel,
    exchange: &str,
    event: &UserRegistered,
    confirm: bool,
    persistent: bool,
) {
    let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
    let body = event.encode_to_vec();
    let sent = channel
        .basic_publish(exchange.into(), "user.registered".into(), options, &body, properties(persistent))
        .await
        .expect("publish");
    if confirm {
        assert!(sent.await.expect("confirm").is_ack(), "the broker acknowledged");
    }
}

/// Publishes one `PaymentCompleted` (`payment.completed`, persistent) to `exchange` and waits for its confirm:
/// the events of W4 on the cluster, whose contract asks for quorum queues.
pub(crate) async fn publish_payment(channel: &Channel, exchange: &str, event: &PaymentCompleted) {
    let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
    let body = event.encode_to_vec();
    let properties = properties_of::<PaymentCompleted>(true);
    let sent = channel
        .basic_publish(exchange.into(), "payment.completed".into(), options, &body, properties)
        .await
        .expect("publish");
    assert!(sent.await.expect("confirm").is_ack(), "the broker acknowledged");
}

/// Consumes `count` messages from `queue` with prefetch 256, decoding each and acknowledging every 64 with
/// `multiple` (and the rest at the end).
pub(crate) async fn consume(channel: &Channel, queue: &str, count: u64) {
    consume_as::<UserRegistered>(channel, queue, count).await;
}

/// [`consume`], decoding each message as an `M`.
pub(crate) async fn consume_as<M: prost::Message + Default>(channel: &Channel, queue: &str, count: u64) {
    channel.basic_qos(256, BasicQosOptions::default()).await.expect("qos");
    let mut consumer = channel
        .basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("consume");
    let mut seen = 0;
    let mut last = None;
    while seen < count {
        let delivery = consumer.next().await.expect("deliveries").expect("delivery");
        let _ = M::decode(delivery.data.as_slice()).expect("decodes");
        seen += 1;
        if seen % 64 == 0 {
            delivery.acker.ack(BasicAckOptions { multiple: true }).await.expect("ack");
            last = None;
        } else {
            last = Some(delivery.acker);
        }
    }
    if let Some(acker) = last {
        acker.ack(BasicAckOptions { multiple: true }).await.expect("ack");
    }
}

/// A raw RPC server answering `IntSum` on `queue`, replying through the default exchange without
/// `mandatory`, acknowledging after the reply.
pub(crate) async fn serve_int_sum(connection: &Connection, queue: &str) {
    let channel = channel(connection, false).await;
    channel.queue_declare(queue.into(), QueueDeclareOptions::default(), FieldTable::default()).await.expect("queue");
    channel.basic_qos(64, BasicQosOptions::default()).await.expect("qos");
    let mut requests = channel
        .basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("consume");
    tokio::spawn(async move {
        while let Some(Ok(request)) = requests.next().await {
            let sum = IntSumRequest::decode(request.data.as_slice()).map(|r| r.a + r.b).unwrap_or_default();
            let reply_to = request.properties.reply_to().clone().expect("reply_to");
            let id = request.properties.correlation_id().clone().expect("correlation id");
            let body = IntSumResponse { sum }.encode_to_vec();
            let properties = BasicProperties::default().with_correlation_id(id);
            // Warren's reply: also its app id and content type.
            let properties = if WARRENS_ENVELOPE.load(Ordering::Relaxed) {
                properties.with_app_id("warren-bench".into()).with_content_type("application/x-protobuf".into())
            } else {
                properties
            };
            let publish = BasicPublishOptions::default();
            let _ = channel.basic_publish("".into(), reply_to, publish, &body, properties).await;
            let _ = request.acker.ack(BasicAckOptions::default()).await;
        }
    });
}

/// A raw RPC client: one direct reply-to consumer, on the channel that publishes the requests.
#[derive(Clone)]
pub(crate) struct RpcClient {
    channel: Channel,
    pending: Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>>,
    queue: String,
}

impl RpcClient {
    pub(crate) async fn new(connection: &Connection, queue: &str) -> RpcClient {
        let channel = channel(connection, false).await;
        let options = BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() };
        let mut replies = channel
            .basic_consume("amq.rabbitmq.reply-to".into(), "".into(), options, FieldTable::default())
            .await
            .expect("reply consumer");
        let pending: Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>> = Arc::default();
        let routes = Arc::clone(&pending);
        tokio::spawn(async move {
            while let Some(Ok(reply)) = replies.next().await {
                let id = reply.properties.correlation_id().as_ref().map(|c| c.as_str().to_owned()).unwrap_or_default();
                if let Some(waiter) = routes.lock().unwrap().remove(&id) {
                    let _ = waiter.send(reply.data);
                }
            }
        });
        RpcClient { channel, pending, queue: queue.to_owned() }
    }

    pub(crate) async fn int_sum(&self, a: i64, b: i64) -> i64 {
        let id = uuid::Uuid::now_v7().to_string();
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id.clone(), tx);
        let properties = BasicProperties::default()
            .with_correlation_id(id.as_str().into())
            .with_reply_to("amq.rabbitmq.reply-to".into())
            .with_type("/at.v1.IntSummator/IntSum".into());
        let properties = if WARRENS_ENVELOPE.load(Ordering::Relaxed) {
            // Warren's request: also its id, app id, timestamp, content type, a TTL and the absolute deadline.
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let mut headers = FieldTable::default();
            let deadline = i64::try_from(now.as_millis()).unwrap_or(i64::MAX).saturating_add(10_000);
            headers.insert("x-warren-deadline".into(), AMQPValue::LongLongInt(deadline));
            properties
                .with_message_id(id.into())
                .with_app_id("warren-bench".into())
                .with_timestamp(now.as_secs())
                .with_content_type("application/x-protobuf".into())
                .with_expiration("10000".into())
                .with_headers(headers)
        } else {
            properties
        };
        let body = IntSumRequest { a, b }.encode_to_vec();
        let publish = BasicPublishOptions::default();
        self.channel
            .basic_publish("".into(), self.queue.as_str().into(), publish, &body, properties)
            .await
            .expect("request");
        let reply = tokio::time::timeout(std::time::Duration::from_secs(10), rx)
            .await
            .expect("a reply in time")
            .expect("reply");
        IntSumResponse::decode(reply.as_slice()).expect("decodes").sum
    }
}
