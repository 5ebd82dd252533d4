//! The encoded publish paths: a contract message encoded by a tool that read its contract at run time (the
//! `warren` CLI, the gateway, through `warren-reflect`), sent the way generated code's messages are: the same
//! envelope, layers, trace context, confirm and metrics.

use super::*;
use crate::codec::Outgoing;
use crate::contract::intern;

/// A contract message its sender encoded, for [`Bus::publish_encoded`], [`Bus::enqueue_encoded`] and
/// [`Bus::call_encoded`]. The sender has checked it against its contract's validation rules:
/// these paths send the bytes as they are.
///
/// ```
/// let message = warren::Encoded::new("gametrade.v1.UserRegistered", warren::WireFormat::Json, br#"{"userId":"7"}"#.to_vec());
/// assert_eq!(message.type_name, "gametrade.v1.UserRegistered");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Encoded {
    /// Full proto name, sent as the AMQP `type`. Kept by the bus for the life of the process (metrics count per
    /// type, as for generated types): pass contract names, never a value per message.
    pub type_name: String,
    /// The schema's fingerprint, sent on a sample of messages as generated code sends it; empty when unknown.
    pub fingerprint: String,
    /// How `body` is encoded.
    pub format: WireFormat,
    /// The payload.
    pub body: Vec<u8>,
}

impl Encoded {
    /// Message `type_name` with `body` in `format`, without a fingerprint.
    pub fn new(type_name: impl Into<String>, format: WireFormat, body: Vec<u8>) -> Self {
        Encoded { type_name: type_name.into(), fingerprint: String::new(), format, body }
    }

    /// With the schema fingerprint `fingerprint`.
    pub fn fingerprint(mut self, fingerprint: impl Into<String>) -> Self {
        self.fingerprint = fingerprint.into();
        self
    }

    /// The message as the publish paths take it: names kept for the life of the process.
    pub(crate) fn outgoing(&self) -> Result<Interned<'_>> {
        Ok(Interned {
            type_name: intern(&self.type_name)?,
            fingerprint: intern(&self.fingerprint)?,
            format: self.format,
            body: &self.body,
        })
    }
}

/// An [`Encoded`] with its names interned.
pub(crate) struct Interned<'a> {
    type_name: &'static str,
    fingerprint: &'static str,
    format: WireFormat,
    body: &'a [u8],
}

impl Outgoing for Interned<'_> {
    fn type_name(&self) -> &'static str {
        self.type_name
    }

    fn fingerprint(&self) -> &'static str {
        self.fingerprint
    }

    fn encode(&self, format: WireFormat) -> Result<Vec<u8>> {
        if format == self.format {
            Ok(self.body.to_vec())
        } else {
            Err(Error::Encode {
                type_name: self.type_name,
                reason: format!("it is encoded as {:?}, not {format:?}", self.format),
            })
        }
    }

    fn protobuf(&self) -> Option<Vec<u8>> {
        (self.format == WireFormat::Protobuf).then(|| self.body.to_vec())
    }

    fn format(&self) -> WireFormat {
        self.format
    }
}

impl Bus {
    /// Publishes `message` to `exchange` (declared as described, once per bus) with `routing_key`, as
    /// [`Bus::publish_with`] publishes a generated event: mandatory and confirmed, through the bus's layers,
    /// with the bus's trace context; returns the message's id once the broker has confirmed it. An event no
    /// queue is bound for is an [`Error::Unroutable`]. `options.format` is ignored: the message is already
    /// encoded.
    ///
    /// For tools that read contracts at run time; generated code uses [`Bus::publish`].
    pub async fn publish_encoded(
        &self,
        exchange: &crate::Exchange,
        routing_key: &str,
        message: &Encoded,
        options: PublishOptions,
    ) -> Result<String> {
        options.headers.check_application()?;
        let outgoing = message.outgoing()?;
        let spec = ExchangeSpec {
            name: intern(&exchange.name)?,
            kind: exchange.kind,
            durable: exchange.durable,
            auto_delete: exchange.auto_delete,
        };
        self.declare_exchange(&spec).await?;
        let (format, priority) = (message.format, options.priority);
        let id = self.send(&outgoing, spec.name, routing_key, format, priority, options, true).await?;
        Ok(id.as_str().to_owned())
    }

    /// Puts `message` on work queue `queue` (declared with `settings`, and its dead-letter queue, once per bus),
    /// as [`Bus::enqueue_with`] puts a generated task; returns the message's id once the broker has confirmed
    /// it. `options.format` is ignored: the message is already encoded.
    pub async fn enqueue_encoded(
        &self,
        queue: &str,
        settings: QueueSettings,
        message: &Encoded,
        options: PublishOptions,
    ) -> Result<String> {
        options.headers.check_application()?;
        let outgoing = message.outgoing()?;
        let dlq = dead_letter_queue(queue);
        let dead_letter = QueueSettings::dead_letter(&settings);
        self.declare_queues(&[(&dlq, dead_letter), (queue, settings)]).await?;
        let (format, priority) = (message.format, options.priority);
        let id = self.send(&outgoing, "", queue, format, priority, options, true).await?;
        Ok(id.as_str().to_owned())
    }
}
