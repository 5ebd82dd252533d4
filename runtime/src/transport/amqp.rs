//! The AMQP transport: RabbitMQ through lapin, with a deadline on every wait.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::Mutex;

use std::sync::Arc;

use super::{Acker, Canceller, Consumer, Delivery, Message, Publish, QueueOptions, ReplyPath, Settle, Transport};
use crate::config::BusConfig;
use crate::contract::{ExchangeKind, ExchangeSpec};
use crate::error::{Error, Result, deadline};

/// Direct reply-to: RabbitMQ's pseudo-queue for RPC replies.
pub(crate) const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// One connection to RabbitMQ and its publishing channel.
pub(crate) struct Amqp {
    connection: Connection,
    /// In confirm mode; replaced when the broker closes it.
    publisher: Mutex<Channel>,
    timeout: Duration,
}

impl std::fmt::Debug for Amqp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Amqp").field("connected", &self.connection.status().connected()).finish_non_exhaustive()
    }
}

impl Amqp {
    /// Connects, retrying with backoff until the connect deadline.
    pub(crate) async fn connect(config: &BusConfig) -> Result<Amqp> {
        let connection = connect(config).await?;
        let publisher = open_confirmed(&connection, config.operation_timeout).await?;
        Ok(Amqp { connection, publisher: Mutex::new(publisher), timeout: config.operation_timeout })
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn channel(&self) -> Result<Channel> {
        if !self.connection.status().connected() {
            return Err(Error::Closed);
        }
        deadline("channel open", self.timeout, self.connection.create_channel()).await
    }

    /// Runs one topology operation on a fresh channel: a refused declaration closes its channel, and must not
    /// take the publisher down.
    async fn on_fresh_channel<T, F>(&self, operation: &'static str, run: impl FnOnce(Channel) -> F) -> Result<T>
    where
        F: Future<Output = lapin::Result<T>>,
    {
        let channel = self.channel().await?;
        let result = deadline(operation, self.timeout, run(channel.clone())).await;
        close_quietly(&channel).await;
        result
    }

    pub(crate) async fn declare_exchange(&self, exchange: &ExchangeSpec) -> Result<()> {
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
        self.on_fresh_channel("exchange declare", |channel| async move {
            channel.exchange_declare(ShortString::from(exchange.name), kind, options, FieldTable::default()).await
        })
        .await
    }

    pub(crate) async fn declare_queue(&self, queue: &str, options: &QueueOptions) -> Result<()> {
        let declare = QueueDeclareOptions {
            durable: options.durable,
            auto_delete: options.auto_delete,
            ..QueueDeclareOptions::default()
        };
        let arguments = options.arguments();
        self.on_fresh_channel("queue declare", |channel| async move {
            channel.queue_declare(ShortString::from(queue), declare, arguments).await.map(drop)
        })
        .await
    }

    pub(crate) async fn bind(&self, queue: &str, exchange: &str, key: &str) -> Result<()> {
        self.on_fresh_channel("queue bind", |channel| async move {
            channel
                .queue_bind(
                    ShortString::from(queue),
                    ShortString::from(exchange),
                    ShortString::from(key),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
        })
        .await
    }

    pub(crate) async fn publish(&self, publish: Publish<'_>, body: &[u8], properties: BasicProperties) -> Result<()> {
        let channel = {
            let mut channel = self.publisher.lock().await;
            if !channel.status().connected() {
                *channel = open_confirmed(&self.connection, self.timeout).await?;
            }
            channel.clone()
        };
        publish_on(&channel, publish, body, properties, self.timeout).await
    }

    pub(crate) async fn consume(&self, queue: &str, prefetch: u16, tag: String) -> Result<Consumer> {
        let channel = self.channel().await?;
        deadline("basic qos", self.timeout, channel.basic_qos(prefetch, BasicQosOptions::default())).await?;
        let consumer = deadline(
            "basic consume",
            self.timeout,
            channel.basic_consume(
                ShortString::from(queue),
                ShortString::from(tag.as_str()),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        Ok(Consumer { tag, stream: Box::pin(consumer.map(delivery)), cancel: Canceller::Amqp(channel) })
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
        Ok(got.map(|message| {
            let d = message.delivery;
            Delivery {
                message: Arc::new(Message {
                    exchange: d.exchange.as_str().into(),
                    routing_key: d.routing_key.as_str().into(),
                    properties: d.properties,
                    body: d.data,
                }),
                redelivered: d.redelivered,
                acker: Acker::None,
            }
        }))
    }

    pub(crate) async fn reply_path(self: &std::sync::Arc<Self>) -> Result<ReplyPath> {
        let channel = open_confirmed(&self.connection, self.timeout).await?;
        let tag = format!("replies.{}", crate::envelope::new_id());
        let consumer = deadline(
            "basic consume (reply-to)",
            self.timeout,
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
            stream: Box::pin(consumer.map(|d| delivery(d).map(|d| Delivery { acker: Acker::None, ..d }))),
            cancel: Canceller::Amqp(channel.clone()),
        };
        Ok(ReplyPath {
            address: REPLY_TO.to_owned(),
            requests: Transport::Amqp(std::sync::Arc::clone(self)),
            amqp_channel: Some(channel),
            replies,
        })
    }

    pub(crate) async fn close(&self) -> Result<()> {
        if self.connection.status().connected() {
            deadline("connection close", self.timeout, self.connection.close(200, ShortString::from("bye"))).await?;
        }
        Ok(())
    }
}

fn delivery(result: lapin::Result<lapin::message::Delivery>) -> Result<Delivery> {
    let d = result.map_err(|e| Error::broker("consume", e))?;
    Ok(Delivery {
        message: Arc::new(Message {
            exchange: d.exchange.as_str().into(),
            routing_key: d.routing_key.as_str().into(),
            properties: d.properties,
            body: d.data,
        }),
        redelivered: d.redelivered,
        acker: Acker::Amqp(d.acker),
    })
}

/// Publishes on `channel` and, when asked, waits for the broker's confirm.
pub(crate) async fn publish_on(
    channel: &Channel,
    publish: Publish<'_>,
    body: &[u8],
    properties: BasicProperties,
    timeout: Duration,
) -> Result<()> {
    let confirm = deadline(
        "publish",
        timeout,
        channel.basic_publish(
            ShortString::from(publish.exchange),
            ShortString::from(publish.routing_key),
            BasicPublishOptions { mandatory: publish.mandatory, ..BasicPublishOptions::default() },
            body,
            properties,
        ),
    )
    .await?;
    if !publish.confirm {
        return Ok(());
    }
    match deadline("publisher confirm", timeout, confirm).await? {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_returned)) => Err(Error::Unroutable {
            exchange: publish.exchange.to_owned(),
            routing_key: publish.routing_key.to_owned(),
        }),
        Confirmation::Nack(_) => {
            Err(Error::Nacked { exchange: publish.exchange.to_owned(), routing_key: publish.routing_key.to_owned() })
        }
    }
}

pub(crate) async fn settle(acker: &lapin::Acker, how: Settle) -> bool {
    let result = match how {
        Settle::Ack => acker.ack(BasicAckOptions::default()).await,
        Settle::Requeue => acker.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await,
        Settle::Reject => acker.reject(BasicRejectOptions { requeue: false }).await,
    };
    matches!(result, Ok(true))
}

pub(crate) async fn ack_multiple(last: &lapin::Acker) -> bool {
    matches!(last.ack(BasicAckOptions { multiple: true }).await, Ok(true))
}

pub(crate) async fn cancel(channel: &Channel, tag: &str, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, channel.basic_cancel(ShortString::from(tag), BasicCancelOptions::default()))
        .await;
    close_quietly(channel).await;
}

async fn open_confirmed(connection: &Connection, timeout: Duration) -> Result<Channel> {
    let channel = deadline("channel open", timeout, connection.create_channel()).await?;
    deadline("confirm select", timeout, channel.confirm_select(ConfirmSelectOptions::default())).await?;
    Ok(channel)
}

async fn close_quietly(channel: &Channel) {
    if channel.status().connected() {
        let _ = tokio::time::timeout(Duration::from_secs(1), channel.close(200, ShortString::from("done"))).await;
    }
}

/// Connects, retrying with backoff until the connect deadline.
async fn connect(config: &BusConfig) -> Result<Connection> {
    let started = Instant::now();
    let crate::config::Endpoint::Amqp(uri) = &config.endpoint else {
        return Err(Error::config("the AMQP transport needs an amqp:// URL"));
    };
    let mut uri = uri.clone();
    uri.query.heartbeat = Some(config.heartbeat_secs);
    let properties =
        ConnectionProperties::default().with_connection_name(format!("warren:{}", config.service_name).into());
    let mut attempts = 0;
    let mut backoff = Duration::from_millis(100);
    loop {
        attempts += 1;
        let remaining = config.connect_timeout.saturating_sub(started.elapsed());
        let reason =
            match tokio::time::timeout(remaining, Connection::connect_uri(uri.clone(), properties.clone())).await {
                Ok(Ok(connection)) => return Ok(connection),
                Ok(Err(error)) => config.redact(&error.to_string()),
                Err(_) => format!("no answer within {:?}", config.connect_timeout),
            };
        let elapsed = started.elapsed();
        if elapsed + backoff >= config.connect_timeout {
            return Err(Error::Connect { url: config.redacted_url(), attempts, elapsed, reason });
        }
        tracing::debug!(url = %config.redacted_url(), attempts, %reason, "connect failed; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
