//! Reading queues as they are, message by message, settling each by hand: for operators' tools (the `warren`
//! CLI's `tail` and `dlq` commands, the gateway's streams). Applications use subscribers.
//!
//! A [`QueueReader`] consumes through the same reconnecting feed as subscribers: after a lost connection it
//! consumes again, and what it held unsettled goes back to the queue (the broker redelivers it, flagged
//! `redelivered`).

use std::sync::Arc;
use std::time::Duration;

use crate::bus::{Bus, RawMessage};
use crate::envelope;
use crate::error::{Error, Result};
use crate::feed::{Feed, Setup, Stop};
use crate::headers::{Headers, MessageProperties};
use crate::transport::{ConsumeOn, Delivery, QueueSettings, Settle};

/// The longest binding pattern [`Bus::watch`] takes: RabbitMQ's limit for a routing key.
pub const MAX_PATTERN_LEN: usize = warren_topology::MAX_NAME_LEN;

/// The headers Warren adds when it dead-letters a message, which [`Bus::replay`] takes off again.
const DEAD_LETTER_HEADERS: [&str; 8] = [
    envelope::DLQ_REASON,
    envelope::DLQ_EXCHANGE,
    envelope::DLQ_ROUTING_KEY,
    envelope::DLQ_CONSUMER,
    envelope::DLQ_SERVICE,
    envelope::DLQ_FAILED_AT,
    envelope::FIRST_FAILED_AT,
    envelope::ATTEMPTS,
];

/// Reads one queue message by message; see [`Bus::read_queue`] and [`Bus::watch`].
#[derive(Debug)]
pub struct QueueReader {
    feed: Feed,
    stop: Stop,
    queue: String,
    /// The bus that declared the reader's own queue ([`Bus::watch`]): told to forget it once the reader is
    /// closed or dropped, so that a reconnection does not declare and bind it again, and the bus's record of
    /// what to declare does not grow with every watch.
    owned_by: Option<Bus>,
}

impl Drop for QueueReader {
    fn drop(&mut self) {
        if let Some(bus) = self.owned_by.take() {
            bus.inner.transport.forget_queues(std::slice::from_ref(&self.queue));
        }
    }
}

/// A message taken from a queue by a [`QueueReader`] and not yet settled: [`Taken::ack`] removes it from the
/// queue, [`Taken::requeue`] puts it back; dropped unsettled, it goes back when the reader closes.
#[derive(Debug)]
pub struct Taken {
    /// The message.
    pub message: RawMessage,
    delivery: Delivery,
}

impl Taken {
    /// Removes the message from its queue. An error means it could not be acknowledged (the connection was
    /// lost): the broker will deliver it again.
    pub async fn ack(self) -> Result<()> {
        self.settle(Settle::Ack).await
    }

    /// Puts the message back in its queue, at its place where the broker can (RabbitMQ's classic queues can).
    pub async fn requeue(self) -> Result<()> {
        self.settle(Settle::Requeue).await
    }

    async fn settle(self, how: Settle) -> Result<()> {
        if self.delivery.settle(how).await {
            Ok(())
        } else {
            Err(Error::config(
                "the message could not be settled (the connection was lost); the broker delivers it again",
            ))
        }
    }
}

impl QueueReader {
    /// The queue it reads.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The next message, if one arrives within `within`: `None` when none did (or the reader's connection
    /// is being replaced; call again).
    pub async fn next_within(&mut self, within: Duration) -> Option<Taken> {
        let delivery = tokio::time::timeout(within, self.feed.next()).await.ok().flatten()?;
        let message = RawMessage {
            exchange: delivery.message.exchange.to_string(),
            routing_key: delivery.message.routing_key.to_string(),
            redelivered: delivery.redelivered,
            properties: delivery.message.properties.clone().into_plain(),
            body: delivery.message.body.clone(),
        };
        Some(Taken { message, delivery })
    }

    /// Stops reading: messages taken and not settled go back to the queue.
    pub async fn close(mut self) {
        self.stop.stop(std::time::Instant::now());
        self.feed.cancel().await;
    }
}

/// What a queue holds and who reads it, as [`Bus::queue_stats`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStats {
    /// Messages ready for delivery (not those delivered and not yet acknowledged).
    pub messages: u64,
    /// Consumers reading it now.
    pub consumers: u32,
}

impl Bus {
    /// How many messages are ready in `queue`; an error naming the queue when it does not exist.
    pub async fn queue_depth(&self, queue: &str) -> Result<u64> {
        Ok(self.queue_stats(queue).await?.messages)
    }

    /// The messages ready in `queue` and its consumers; an error naming the queue when it does not exist.
    pub async fn queue_stats(&self, queue: &str) -> Result<QueueStats> {
        let (messages, consumers) =
            self.inner.transport.queue_stats(queue).await.map_err(|error| missing(queue, error))?;
        Ok(QueueStats { messages, consumers })
    }

    /// Reads `queue`, which must exist, taking up to `prefetch` messages ahead of the ones settled. Nothing is
    /// declared: a missing queue is an error naming it.
    pub async fn read_queue(&self, queue: &str, prefetch: u16) -> Result<QueueReader> {
        self.queue_depth(queue).await?;
        let name = queue.to_owned();
        let setup: Setup = Arc::new(move |bus: Bus| {
            let name = name.clone();
            Box::pin(async move { bus.queue_depth(&name).await.map(drop) })
        });
        self.reader(queue, prefetch.max(1), setup).await
    }

    /// Watches what is published to `exchange` with a routing key matching `pattern` (`#` for everything, on
    /// a topic exchange), through a queue of its own: auto-deleted when the reader closes, expiring if it is
    /// left behind, never taking a message from anyone else's queue. Acknowledge each message read
    /// ([`Taken::ack`]): the reader takes at most 256 ahead of those settled.
    ///
    /// The exchange is declared as described first (once per bus), so a watch can start before anyone
    /// publishes.
    pub async fn watch(&self, exchange: &crate::Exchange, pattern: &str) -> Result<QueueReader> {
        if pattern.len() > MAX_PATTERN_LEN {
            return Err(Error::config(format!(
                "the pattern is {} bytes; RabbitMQ takes at most {MAX_PATTERN_LEN}",
                pattern.len()
            )));
        }
        let spec = crate::contract::ExchangeSpec {
            name: crate::contract::intern(&exchange.name)?,
            kind: exchange.kind,
            durable: exchange.durable,
            auto_delete: exchange.auto_delete,
        };
        self.declare_exchange(&spec).await?;
        let queue = format!("warren.watch.{}", envelope::new_id());
        let (exchange, pattern, name) = (exchange.name.clone(), pattern.to_owned(), queue.clone());
        let setup: Setup = Arc::new(move |bus: Bus| {
            let (exchange, pattern, name) = (exchange.clone(), pattern.clone(), name.clone());
            Box::pin(async move {
                let transport = &bus.inner.transport;
                transport.declare_queue(&name, &QueueSettings::plain(true)).await?;
                transport.bind(&name, &exchange, &pattern).await
            })
        });
        let reader = self.reader(&queue, 256, setup).await;
        match reader {
            Ok(mut reader) => {
                reader.owned_by = Some(self.clone());
                Ok(reader)
            }
            Err(error) => {
                // Its queue may have been declared before the consume failed.
                self.inner.transport.forget_queues(&[queue]);
                Err(error)
            }
        }
    }

    async fn reader(&self, queue: &str, prefetch: u16, setup: Setup) -> Result<QueueReader> {
        let (stop, signal) = Stop::new();
        let feed = Feed::open(self, queue, prefetch, "warren.reader", setup, signal, ConsumeOn::Consuming).await?;
        Ok(QueueReader { feed, stop, queue: queue.to_owned(), owned_by: None })
    }

    /// Publishes a dead-lettered `message` again: to the exchange and routing key it was first published with
    /// (Warren records them when it dead-letters), or to `queue` when given. Warren's dead-letter headers
    /// (reason, attempts, consumer, times) are taken off, so the message starts its retries afresh; its id,
    /// type, body and the application's headers stay. Mandatory and confirmed: returns once the broker has it.
    pub async fn replay(&self, message: &RawMessage, queue: Option<&str>) -> Result<()> {
        let (exchange, routing_key) = match queue {
            Some(queue) => (String::new(), queue.to_owned()),
            None => {
                let original = |name| message.header_str(name).map(str::to_owned);
                match (original(envelope::DLQ_EXCHANGE), original(envelope::DLQ_ROUTING_KEY)) {
                    (Some(exchange), Some(routing_key)) => (exchange, routing_key),
                    _ => {
                        return Err(Error::config(format!(
                            "message {} does not say where it was published first (no {} header: Warren did not \
                             dead-letter it); replay it to a queue instead",
                            message.properties.message_id.as_deref().unwrap_or("without an id"),
                            envelope::DLQ_ROUTING_KEY
                        )));
                    }
                }
            }
        };
        let mut properties: MessageProperties = message.properties.clone();
        let mut headers = Headers::new();
        for (name, value) in message.properties.headers.iter() {
            if !DEAD_LETTER_HEADERS.contains(&name)
                && !name.starts_with("x-death")
                && !name.starts_with("x-first-death")
            {
                headers.insert(name, value.clone());
            }
        }
        properties.headers = headers;
        self.publish_bytes(&exchange, &routing_key, &message.body, properties).await
    }
}

/// `error`, or one naming `queue` when the broker says it does not exist.
fn missing(queue: &str, error: Error) -> Error {
    let text = error.to_string();
    if text.contains("NOT_FOUND") || text.contains("does not exist") {
        Error::config(format!("queue \"{queue}\" does not exist (check its name, and the vhost in the URL)"))
    } else {
        error
    }
}
