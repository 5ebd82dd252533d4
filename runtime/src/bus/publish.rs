//! Publishing: [`PublishOptions`] and the bus's publish paths (events, tasks, raw bytes), through the layers
//! when it has any, to a confirm.

use super::*;
use crate::codec::Outgoing;
use crate::envelope::{IdText, MessageId};

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

/// A layered publish's `after_publish`, told once: with its outcome, or, when its future is dropped first,
/// with [`Error::Cancelled`], so that what the layers count adds up.
struct Heard<'a> {
    layers: &'a middleware::Layers,
    type_name: &'a str,
    exchange: &'a str,
    routing_key: &'a str,
    headers: &'a Headers,
    started: tokio::time::Instant,
    armed: bool,
}

impl Heard<'_> {
    fn tell(&mut self, result: std::result::Result<(), &Error>) {
        self.armed = false;
        let published = middleware::Published {
            type_name: self.type_name,
            exchange: self.exchange,
            routing_key: self.routing_key,
            headers: self.headers,
            result,
            elapsed: self.started.elapsed(),
        };
        self.layers.after(|layer| layer.after_publish(&published));
    }
}

impl Drop for Heard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.tell(Err(&Error::Cancelled));
        }
    }
}

impl Bus {
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
    /// #     retry: None, quorum: false, limit: None, format: warren::WireFormat::Protobuf,
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
    ///
    /// Every event of the batch is encoded and in flight at once, so that they share one publish timeout (a
    /// blocked broker fails the batch within it): batches of tens of thousands of large events are better
    /// published in parts.
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
            self.send(event, spec.exchange.name, &routing_key, format, priority, options, true).await.map(drop)
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
        let dlq = dead_letter_queue(spec.queue);
        let queue = work_queue::<T>(spec.queue);
        self.declare_queues(&[(&dlq, QueueSettings::dead_letter(&queue)), (spec.queue, queue)]).await?;
        let format = options.format.unwrap_or(spec.format);
        self.send(task, "", spec.queue, format, options.priority, options, true).await.map(drop)
    }

    /// [`Bus::send`] between the layers' hooks: each may change the headers or refuse, and each hears how
    /// it went (a refusal included).
    async fn send_layered<P: Outgoing>(
        &self,
        message: &P,
        exchange: &str,
        routing_key: &str,
        format: WireFormat,
        priority: Option<crate::Priority>,
        mut options: PublishOptions,
    ) -> Result<MessageId> {
        let layers = &self.inner.config.middleware;
        let type_name = message.type_name();
        let started = tokio::time::Instant::now();
        let mut publish = middleware::Publish { type_name, exchange, routing_key, headers: &mut options.headers };
        let refused = layers
            .before(|layer| layer.before_publish(&mut publish), middleware::Refusal::new)
            .err()
            .map(|(layer, refusal)| Error::Refused { layer: layer.to_owned(), reason: refusal.reason().to_owned() });
        let headers = options.headers.clone();
        let mut heard = Heard { layers, type_name, exchange, routing_key, headers: &headers, started, armed: true };
        let result = match refused {
            Some(error) => Err(error),
            None => match options.headers.check_application() {
                Ok(()) => self.send(message, exchange, routing_key, format, priority, options, false).await,
                Err(error) => Err(error),
            },
        };
        heard.tell(result.as_ref().map(|_| ()));
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
    pub(super) fn send<P: Outgoing>(
        &self,
        message: &P,
        exchange: &str,
        routing_key: &str,
        format: WireFormat,
        priority: Option<crate::Priority>,
        mut options: PublishOptions,
        through_layers: bool,
    ) -> impl Future<Output = Result<MessageId>> + Send {
        async move {
            if through_layers && self.inner.config.middleware.get().is_some() {
                // `dyn`: `send_layered` calls this function again.
                let layered: std::pin::Pin<Box<dyn Future<Output = Result<MessageId>> + Send + '_>> =
                    Box::pin(self.send_layered(message, exchange, routing_key, format, priority, options));
                return layered.await;
            }
            let payload = message.encode(format)?;
            let type_name = message.type_name();
            let mut envelope = Envelope::new(type_name, format, "", self.inner.app_id);
            let publishes = self.inner.metrics.publishes(type_name);
            if publishes.stamps_schema(envelope.timestamp) {
                envelope.schema = message.fingerprint();
            }
            let id = envelope.message_id;
            envelope.correlation_id = options.correlation_id.map(Arc::from);
            // After the layers, so that a `traceparent` set by the caller or a layer is kept.
            // Held, not entered, until the publish is confirmed: its time is the span's.
            let (_, _span) = trace::outgoing_span(
                &trace::About {
                    operation: trace::Operation::Publish,
                    destination: if exchange.is_empty() { routing_key } else { exchange },
                    routing_key,
                    message_id: Some(IdText::Id(&envelope.message_id)),
                    conversation_id: envelope.correlation_id.as_deref().map(IdText::Text),
                    rpc_method: None,
                },
                &mut options.headers,
                self.inner.config.trace_context,
            );
            if !options.headers.is_empty() {
                envelope.headers = Some(options.headers);
            }
            envelope.persistent = true;
            envelope.priority = priority.map(crate::Priority::as_amqp);
            let properties = Properties::from(envelope);
            // History keeps protobuf, whatever went on the wire.
            let kept = match format {
                _ if !self.inner.metrics.history_enabled() => None,
                WireFormat::Protobuf => Some(payload.clone()),
                WireFormat::Json => message.protobuf(),
            };
            // Straight to the transport, as `publish_raw` does when confirmed: a future fewer to move the
            // properties and body through.
            self.check_open_and_size(payload.len())?;
            let confirm = !options.fire_and_forget;
            let publish = Publish { exchange, routing_key, mandatory: confirm, confirm };
            self.inner.transport.publish(publish, payload, properties).await?;
            self.inner.metrics.published(type_name, &publishes, kept);
            Ok(id)
        }
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
}
