//! The bus: one connection to RabbitMQ, shared by publishers, subscribers and RPC.

use std::collections::HashSet;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::{Mutex, OnceCell};

use crate::config::BusConfig;
use crate::contract::{Event, ExchangeKind, ExchangeSpec};
use crate::envelope;
use crate::error::{Error, Result, deadline};
use crate::rpc::ReplyChannel;

/// A handle to the message bus. Cheap to clone; clones share one connection.
///
/// ```no_run
/// # async fn run() -> Result<(), warren::Error> {
/// let bus = warren::Bus::from_env().await?; // RABBITMQ_URL, or amqp://guest:guest@127.0.0.1:5672/%2f
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Bus {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: BusConfig,
    connection: Connection,
    /// The publishing channel, in confirm mode; replaced when the broker closes it.
    publisher: Mutex<Channel>,
    /// Exchanges and queues this bus has declared, so each is declared once.
    declared: StdMutex<HashSet<String>>,
    /// The RPC client's reply consumer, created on the first call.
    pub(crate) replies: OnceCell<ReplyChannel>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Per-publish settings; the defaults suit almost every event.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// Correlation id to send; defaults to the new message's id. Set it to the id of the message that caused
    /// this one to trace a chain of events.
    pub correlation_id: Option<String>,
}

impl Bus {
    /// Connects to the broker at `url` with default settings.
    pub async fn connect(url: &str) -> Result<Bus> {
        Self::with_config(BusConfig::new(url)?).await
    }

    /// Connects to `RABBITMQ_URL`, or to the local default broker when it is unset.
    pub async fn from_env() -> Result<Bus> {
        Self::with_config(BusConfig::from_env()?).await
    }

    /// Connects with explicit settings. Retries until `config.connect_timeout`, then fails with what was tried.
    pub async fn with_config(config: BusConfig) -> Result<Bus> {
        let connection = connect(&config).await?;
        let publisher = open_publisher(&connection, config.operation_timeout).await?;
        Ok(Bus {
            inner: Arc::new(Inner {
                config,
                connection,
                publisher: Mutex::new(publisher),
                declared: StdMutex::new(HashSet::new()),
                replies: OnceCell::new(),
            }),
        })
    }

    /// The settings this bus was made with.
    pub fn config(&self) -> &BusConfig {
        &self.inner.config
    }

    /// Publishes `event` to its exchange with its routing key, both from the contract, and returns once the
    /// broker has confirmed it. An event no queue is bound for is an [`Error::Unroutable`], never a silent drop.
    pub async fn publish<E: Event>(&self, event: &E) -> Result<()> {
        self.publish_with(event, PublishOptions::default()).await
    }

    /// [`Bus::publish`] with per-message options.
    pub async fn publish_with<E: Event>(&self, event: &E, options: PublishOptions) -> Result<()> {
        let spec = E::SPEC;
        self.declare_exchange(&spec.exchange).await?;
        let payload = event.encode_to_vec();
        let message_id = envelope::new_id();
        let correlation_id = options.correlation_id.unwrap_or_else(|| message_id.clone());
        let properties = envelope::properties(
            spec.type_name,
            &self.inner.config.service_name,
            message_id,
            correlation_id,
        )
        .with_delivery_mode(2);
        self.publish_raw(spec.exchange.name, spec.routing_key, &payload, properties)
            .await
    }

    /// Publishes bytes with `mandatory` on the confirmed channel and waits for the confirm.
    pub(crate) async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<()> {
        let limit = self.inner.config.max_message_size;
        if payload.len() > limit {
            return Err(Error::TooLarge {
                size: payload.len(),
                limit,
            });
        }
        let timeout = self.inner.config.operation_timeout;
        let channel = self.publisher().await?;
        let confirm = deadline(
            "publish",
            timeout,
            channel.basic_publish(
                ShortString::from(exchange),
                ShortString::from(routing_key),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                payload,
                properties,
            ),
        )
        .await?;
        match deadline("publisher confirm", timeout, confirm).await? {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_returned)) => Err(Error::Unroutable {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            }),
            Confirmation::Nack(_) => Err(Error::Nacked {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            }),
            Confirmation::NotRequested => {
                unreachable!("the publisher channel is always in confirm mode")
            }
        }
    }

    /// The publishing channel, reopened if the broker closed it (e.g. after a failed operation).
    async fn publisher(&self) -> Result<Channel> {
        let mut channel = self.inner.publisher.lock().await;
        if !channel.status().connected() {
            *channel =
                open_publisher(&self.inner.connection, self.inner.config.operation_timeout).await?;
        }
        Ok(channel.clone())
    }

    /// Opens a new channel with a deadline.
    pub(crate) async fn channel(&self) -> Result<Channel> {
        if !self.inner.connection.status().connected() {
            return Err(Error::Closed);
        }
        deadline(
            "channel open",
            self.inner.config.operation_timeout,
            self.inner.connection.create_channel(),
        )
        .await
    }

    /// Declares `exchange` (once per bus) as the contract describes it.
    pub(crate) async fn declare_exchange(&self, exchange: &ExchangeSpec) -> Result<()> {
        let key = format!("exchange:{}", exchange.name);
        if self
            .inner
            .declared
            .lock()
            .expect("declared set")
            .contains(&key)
        {
            return Ok(());
        }
        // A dedicated channel: a refused declaration closes its channel, and must not take the publisher down.
        let channel = self.channel().await?;
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
        let result = deadline(
            "exchange declare",
            self.inner.config.operation_timeout,
            channel.exchange_declare(
                ShortString::from(exchange.name),
                kind,
                options,
                FieldTable::default(),
            ),
        )
        .await;
        close_quietly(&channel).await;
        result?;
        self.inner
            .declared
            .lock()
            .expect("declared set")
            .insert(key);
        Ok(())
    }

    /// Declares a queue with `arguments` (once per bus).
    pub(crate) async fn declare_queue(
        &self,
        queue: &str,
        durability: Durability,
        mut arguments: FieldTable,
    ) -> Result<()> {
        let key = format!("queue:{queue}");
        if self
            .inner
            .declared
            .lock()
            .expect("declared set")
            .contains(&key)
        {
            return Ok(());
        }
        let options = match durability {
            Durability::Durable => QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            Durability::Temporary => {
                arguments.insert(
                    ShortString::from("x-expires"),
                    AMQPValue::LongInt(TEMPORARY_QUEUE_EXPIRY_MS),
                );
                QueueDeclareOptions {
                    durable: false,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                }
            }
        };
        let channel = self.channel().await?;
        let result = deadline(
            "queue declare",
            self.inner.config.operation_timeout,
            channel.queue_declare(ShortString::from(queue), options, arguments),
        )
        .await;
        close_quietly(&channel).await;
        result?;
        self.inner
            .declared
            .lock()
            .expect("declared set")
            .insert(key);
        Ok(())
    }

    /// Binds `queue` to `exchange` with `key`.
    pub(crate) async fn bind(&self, queue: &str, exchange: &str, key: &str) -> Result<()> {
        let channel = self.channel().await?;
        let result = deadline(
            "queue bind",
            self.inner.config.operation_timeout,
            channel.queue_bind(
                ShortString::from(queue),
                ShortString::from(exchange),
                ShortString::from(key),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await;
        close_quietly(&channel).await;
        result
    }

    /// Closes the connection. Subscribers and servers stop; calls in flight fail.
    pub async fn close(&self) -> Result<()> {
        let timeout = self.inner.config.operation_timeout;
        if self.inner.connection.status().connected() {
            deadline(
                "connection close",
                timeout,
                self.inner.connection.close(200, ShortString::from("bye")),
            )
            .await?;
        }
        Ok(())
    }
}

/// Whether a queue outlives its consumers and broker restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// Durable, kept until deleted.
    Durable,
    /// Not durable, auto-deleted, and expired after [`TEMPORARY_QUEUE_EXPIRY_MS`] unused.
    Temporary,
}

const TEMPORARY_QUEUE_EXPIRY_MS: i32 = 60_000;

/// Arguments of a subscriber queue: rejected messages go to `<queue>.dlq` through the default exchange.
pub(crate) fn dead_letter_arguments(queue: &str) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString("".into()),
    );
    arguments.insert(
        ShortString::from("x-dead-letter-routing-key"),
        AMQPValue::LongString(format!("{queue}.dlq").into()),
    );
    arguments
}

async fn open_publisher(connection: &Connection, timeout: Duration) -> Result<Channel> {
    let channel = deadline("channel open", timeout, connection.create_channel()).await?;
    deadline(
        "confirm select",
        timeout,
        channel.confirm_select(ConfirmSelectOptions::default()),
    )
    .await?;
    Ok(channel)
}

pub(crate) async fn close_quietly(channel: &Channel) {
    if channel.status().connected() {
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            channel.close(200, ShortString::from("done")),
        )
        .await;
    }
}

/// Connects, retrying with backoff until the connect deadline.
async fn connect(config: &BusConfig) -> Result<Connection> {
    let started = Instant::now();
    let mut uri = config.uri.clone();
    uri.query.heartbeat = Some(config.heartbeat_secs);
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("warren:{}", config.service_name).into());
    let mut attempts = 0;
    let mut backoff = Duration::from_millis(100);
    loop {
        attempts += 1;
        let remaining = config.connect_timeout.saturating_sub(started.elapsed());
        let reason = match tokio::time::timeout(
            remaining,
            Connection::connect_uri(uri.clone(), properties.clone()),
        )
        .await
        {
            Ok(Ok(connection)) => return Ok(connection),
            Ok(Err(error)) => config.redact(&error.to_string()),
            Err(_) => format!("no answer within {:?}", config.connect_timeout),
        };
        let elapsed = started.elapsed();
        if elapsed + backoff >= config.connect_timeout {
            return Err(Error::Connect {
                url: config.redacted_url(),
                attempts,
                elapsed,
                reason,
            });
        }
        tracing::debug!(url = %config.redacted_url(), attempts, %reason, "connect failed; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
