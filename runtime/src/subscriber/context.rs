//! What a handler knows about the message beside its payload.

use super::*;
use crate::trace::TraceContext;

/// Envelope data of a delivery, passed to handlers beside the typed message. Cheap: it shares the delivered
/// message rather than copying from it.
#[derive(Debug, Clone)]
pub struct Context {
    // The subscriber's own handle: cloning the bus itself for every delivery would have every subscriber
    // thread count references on one shared cache line.
    bus: Arc<Bus>,
    message: Arc<Message>,
    redelivered: bool,
    attempt: u32,
    trace: TraceContext,
}

impl Context {
    pub(super) fn new(bus: &Arc<Bus>, delivery: &Delivery, attempt: u32, trace: TraceContext) -> Self {
        Context {
            bus: Arc::clone(bus),
            message: Arc::clone(&delivery.message),
            redelivered: delivery.redelivered,
            attempt,
            trace,
        }
    }

    /// The bus the message arrived on, to publish follow-up events.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// The publisher's unique id for the message (stable across redeliveries: use it to deduplicate).
    pub fn message_id(&self) -> Option<&str> {
        self.message.properties.message_id()
    }

    /// The correlation id the publisher set ([`crate::PublishOptions::correlation_id`]), or the message id for a
    /// message that starts a conversation (it travels without one).
    pub fn correlation_id(&self) -> Option<&str> {
        self.message.properties.correlation_id()
    }

    /// The publishing service's name.
    pub fn app_id(&self) -> Option<&str> {
        self.message.properties.app_id()
    }

    /// The exchange the message was published to.
    pub fn exchange(&self) -> &str {
        &self.message.exchange
    }

    /// The routing key it was published with.
    pub fn routing_key(&self) -> &str {
        &self.message.routing_key
    }

    /// The content type it was sent with: `application/x-protobuf` or `application/json`.
    pub fn content_type(&self) -> Option<&str> {
        self.message.properties.content_type()
    }

    /// The fingerprint of the schema the sender was generated from, when it sent one. A Warren bus stamps it
    /// on its first message of each type, then on the first in each second and on one in 64; other senders
    /// may never stamp it.
    pub fn schema_fingerprint(&self) -> Option<&str> {
        self.message.properties.schema()
    }

    /// Whether the broker delivered it before (to this or another consumer) without an acknowledgement.
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// When it was published, in Unix seconds.
    pub fn timestamp(&self) -> Option<u64> {
        self.message.properties.timestamp()
    }

    /// The headers it was published with ([`crate::PublishOptions::header`]), Warren's own `x-warren-*`
    /// ones included (a retried message carries its failure record). Empty when it has none.
    pub fn headers(&self) -> &Headers {
        self.message.properties.headers().unwrap_or(&crate::headers::NO_HEADERS)
    }

    /// Which delivery of the message this is: 1 the first time, 2 on the first retry, and so on.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The handler's trace context: in the publisher's trace, a child of the span that published the message
    /// (its `traceparent`), or a new trace when the message came without a valid one. The same as
    /// [`TraceContext::current`] while the handler runs.
    pub fn trace(&self) -> &TraceContext {
        &self.trace
    }
}
