//! Typed subscribers: a consumer group's durable queue, bound by the contract, feeding a handler.

use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{FieldTable, ShortString};
use tokio::sync::{Semaphore, watch};

use crate::bus::{Bus, Durability, close_quietly, dead_letter_arguments};
use crate::contract::{ExchangeKind, Inbound};
use crate::envelope::{self, short};
use crate::error::{Error, Result, deadline};
use crate::topic;

/// What a handler decided about a message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Done: the message is acknowledged and removed.
    Ack,
    /// Try again later: the message is redelivered after `after`.
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

/// Envelope data of a delivery, passed to handlers beside the typed message.
#[derive(Debug, Clone)]
pub struct Context {
    bus: Bus,
    message_id: Option<String>,
    correlation_id: Option<String>,
    app_id: Option<String>,
    exchange: String,
    routing_key: String,
    redelivered: bool,
    timestamp: Option<u64>,
}

impl Context {
    fn new(bus: &Bus, delivery: &Delivery) -> Self {
        let p = &delivery.properties;
        Context {
            bus: bus.clone(),
            message_id: short(p.message_id()).map(str::to_owned),
            correlation_id: short(p.correlation_id()).map(str::to_owned),
            app_id: short(p.app_id()).map(str::to_owned),
            exchange: delivery.exchange.as_str().to_owned(),
            routing_key: delivery.routing_key.as_str().to_owned(),
            redelivered: delivery.redelivered,
            timestamp: *p.timestamp(),
        }
    }

    /// The bus the message arrived on, to publish follow-up events.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// The publisher's unique id for the message (stable across redeliveries: use it to deduplicate).
    pub fn message_id(&self) -> Option<&str> {
        self.message_id.as_deref()
    }

    /// The correlation id the publisher set.
    pub fn correlation_id(&self) -> Option<&str> {
        self.correlation_id.as_deref()
    }

    /// The publishing service's name.
    pub fn app_id(&self) -> Option<&str> {
        self.app_id.as_deref()
    }

    /// The exchange the message was published to.
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// The routing key it was published with.
    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }

    /// Whether the broker delivered it before (to this or another consumer) without an acknowledgement.
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// When it was published, in Unix seconds.
    pub fn timestamp(&self) -> Option<u64> {
        self.timestamp
    }
}

/// A subscriber being configured; start it with [`Subscriber::handle`].
///
/// Made by the generated `subscribe` functions, e.g. `UserRegistered::subscribe(&bus, "email-service")`.
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
            prefetch: bus.config().prefetch,
            concurrency: 1,
            temporary: false,
            _type: PhantomData,
        }
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

    /// The queue this subscriber consumes.
    pub fn queue_name(&self) -> String {
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
    /// The message is acknowledged only after the handler returns `Ok`. A handler `Err` or panic
    /// dead-letters the message with the error as its reason; a payload that does not decode, or has the
    /// wrong type, is dead-lettered at once.
    pub async fn handle<F, Fut, O, E>(self, handler: F) -> Result<Subscription>
    where
        F: Fn(T, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<O, E>> + Send + 'static,
        O: Into<Outcome>,
        E: Into<HandlerError>,
    {
        let exchange = T::exchange();
        let bindings: Vec<String> = match (&self.pattern, exchange.kind) {
            (_, ExchangeKind::Fanout | ExchangeKind::Headers) => vec![String::new()],
            (Some(pattern), kind) => {
                let keys = T::routing_keys();
                let matches = |key: &&str| match kind {
                    ExchangeKind::Topic => topic::matches(pattern, key),
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
        bus.declare_exchange(exchange).await?;
        let durability = if self.temporary {
            Durability::Temporary
        } else {
            Durability::Durable
        };
        bus.declare_queue(&format!("{queue}.dlq"), durability, FieldTable::default())
            .await?;
        bus.declare_queue(&queue, durability, dead_letter_arguments(&queue))
            .await?;
        for key in &bindings {
            bus.bind(&queue, exchange.name, key).await?;
        }

        let timeout = bus.config().operation_timeout;
        let channel = bus.channel().await?;
        deadline(
            "basic qos",
            timeout,
            channel.basic_qos(self.prefetch, BasicQosOptions::default()),
        )
        .await?;
        let tag = format!("{}.{}", self.group, envelope::new_id());
        let consumer = deadline(
            "basic consume",
            timeout,
            channel.basic_consume(
                ShortString::from(queue.as_str()),
                ShortString::from(tag.as_str()),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;

        let (stop_tx, mut stop_rx) = watch::channel(false);
        let limit = Arc::new(Semaphore::new(self.concurrency));
        let handler = Arc::new(handler);
        let worker = Worker {
            bus: bus.clone(),
            group: self.group.clone(),
            queue: queue.clone(),
        };
        let loop_limit = Arc::clone(&limit);
        let concurrency = self.concurrency;
        let task = tokio::spawn(async move {
            let mut consumer = consumer;
            loop {
                let next = tokio::select! {
                    next = consumer.next() => next,
                    _ = stop_rx.changed() => break,
                };
                let delivery = match next {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(error)) => {
                        tracing::warn!(queue = %worker.queue, %error, "consumer failed; stopping");
                        break;
                    }
                    None => {
                        tracing::warn!(queue = %worker.queue, "consumer cancelled by the broker; stopping");
                        break;
                    }
                };
                let Ok(permit) = Arc::clone(&loop_limit).acquire_owned().await else {
                    break;
                };
                let handler = Arc::clone(&handler);
                let worker = worker.clone();
                tokio::spawn(async move {
                    worker
                        .process::<T, _, _, _, _>(delivery, handler.as_ref())
                        .await;
                    drop(permit);
                });
            }
            let _ = tokio::time::timeout(
                timeout,
                channel.basic_cancel(
                    ShortString::from(tag.as_str()),
                    BasicCancelOptions::default(),
                ),
            )
            .await;
            // Wait for running handlers so their deliveries are settled before the channel closes.
            let _ =
                tokio::time::timeout(timeout, loop_limit.acquire_many(concurrency as u32)).await;
            close_quietly(&channel).await;
        });
        Ok(Subscription {
            queue,
            stop: stop_tx,
            task,
        })
    }
}

#[derive(Clone)]
struct Worker {
    bus: Bus,
    group: String,
    queue: String,
}

impl Worker {
    async fn process<T, F, Fut, O, E>(&self, delivery: Delivery, handler: &F)
    where
        T: Inbound,
        F: Fn(T, Context) -> Fut,
        Fut: Future<Output = std::result::Result<O, E>>,
        O: Into<Outcome>,
        E: Into<HandlerError>,
    {
        let type_name = short(delivery.properties.kind()).unwrap_or_default();
        let message = match T::decode(type_name, &delivery.data) {
            Ok(message) => message,
            Err(error) => return self.dead_letter(&delivery, &error.to_string()).await,
        };
        let context = Context::new(&self.bus, &delivery);
        let outcome = match AssertUnwindSafe(handler(message, context))
            .catch_unwind()
            .await
        {
            Ok(Ok(outcome)) => outcome.into(),
            Ok(Err(error)) => Outcome::DeadLetter {
                reason: format!("handler failed: {}", error.into()),
            },
            Err(panic) => Outcome::DeadLetter {
                reason: format!("handler panicked: {}", panic_message(&panic)),
            },
        };
        match outcome {
            Outcome::Ack => {
                if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
                    tracing::warn!(queue = %self.queue, %error, "ack failed; the message will be redelivered");
                }
            }
            Outcome::Retry { after } => {
                tokio::time::sleep(after).await;
                let _ = delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await;
            }
            Outcome::DeadLetter { reason } => self.dead_letter(&delivery, &reason).await,
        }
    }

    /// Copies the delivery to `<queue>.dlq` with the reason in headers, then acknowledges it. If the copy cannot
    /// be confirmed, rejects it instead, so the broker dead-letters it (without the reason) rather than losing it.
    async fn dead_letter(&self, delivery: &Delivery, reason: &str) {
        tracing::warn!(queue = %self.queue, reason, "dead-lettering message");
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        for (key, value) in [
            (envelope::DLQ_REASON, reason),
            (envelope::DLQ_EXCHANGE, delivery.exchange.as_str()),
            (envelope::DLQ_ROUTING_KEY, delivery.routing_key.as_str()),
            (envelope::DLQ_CONSUMER, self.group.as_str()),
        ] {
            headers.insert(
                ShortString::from(key),
                envelope::long_string(reason_safe(value)),
            );
        }
        headers.insert(
            ShortString::from(envelope::DLQ_FAILED_AT),
            lapin::types::AMQPValue::Timestamp(envelope::now_unix()),
        );
        let properties = delivery.properties.clone().with_headers(headers);
        let dlq = format!("{}.dlq", self.queue);
        match self
            .bus
            .publish_raw("", &dlq, &delivery.data, properties)
            .await
        {
            Ok(()) => {
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
            Err(error) => {
                tracing::warn!(queue = %self.queue, %error, "could not copy to the dead-letter queue; rejecting");
                let _ = delivery
                    .nack(BasicNackOptions {
                        requeue: false,
                        ..BasicNackOptions::default()
                    })
                    .await;
            }
        }
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

/// A running subscriber. Dropping it leaves the subscriber running; call [`Subscription::stop`] to end it.
#[derive(Debug)]
pub struct Subscription {
    queue: String,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscription {
    /// The queue being consumed.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Stops consuming, waits for running handlers to settle their messages, and closes the channel.
    /// Messages not yet handled stay in the queue for the next consumer.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
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
}
