//! The envelope: what Warren puts in AMQP properties and headers, so any AMQP client can interoperate.

use std::sync::Arc;

use crate::codec::WireFormat;
use crate::headers::{Headers, MessageProperties};
use crate::transport::amqp::Delivered;

/// Header carrying the fingerprint of the schema a message was encoded with.
pub(crate) const SCHEMA: &str = "x-warren-schema";
/// Header naming the error message type of an RPC reply that carries a declared service error.
pub(crate) const ERROR_TYPE: &str = "warren-error";
/// Header carrying an RPC reply's status code (gRPC numbering).
pub(crate) const STATUS_CODE: &str = "warren-status";
/// Header carrying an RPC reply's status message.
pub(crate) const STATUS_MESSAGE: &str = "warren-message";
/// Header carrying an RPC request's deadline: when its caller stops waiting, in Unix milliseconds.
pub(crate) const DEADLINE: &str = "x-warren-deadline";
/// Headers added to a dead-lettered message.
pub(crate) const DLQ_REASON: &str = "x-warren-reason";
pub(crate) const DLQ_EXCHANGE: &str = "x-warren-original-exchange";
pub(crate) const DLQ_ROUTING_KEY: &str = "x-warren-original-routing-key";
pub(crate) const DLQ_CONSUMER: &str = "x-warren-consumer";
pub(crate) const DLQ_SERVICE: &str = "x-warren-service";
pub(crate) const DLQ_FAILED_AT: &str = "x-warren-failed-at";
pub(crate) const FIRST_FAILED_AT: &str = "x-warren-first-failed-at";
/// Deliveries of the message that have failed so far.
pub(crate) const ATTEMPTS: &str = "x-warren-attempts";

pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The Unix time in milliseconds `after` from now (saturating), for [`DEADLINE`].
pub(crate) fn unix_millis_after(after: std::time::Duration) -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.saturating_add(after).as_millis()).unwrap_or(i64::MAX)
}

/// How long until the Unix time `millis`: zero when it has passed.
pub(crate) fn until_unix_millis(millis: i64) -> std::time::Duration {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let then = std::time::Duration::from_millis(u64::try_from(millis).unwrap_or(0));
    then.saturating_sub(now)
}

/// `name` for the rest of the process: service names are few and live as long as their buses, and a message
/// can then carry its sender's name without counting references to it.
pub(crate) fn static_name(name: &str) -> &'static str {
    static NAMES: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<&'static str>>> =
        std::sync::OnceLock::new();
    let mut names = NAMES.get_or_init(Default::default).lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(known) = names.get(name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

/// A fresh, time-ordered message id.
pub(crate) fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A message id in text form, held inline: making one allocates nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct MessageId([u8; uuid::fmt::Hyphenated::LENGTH]);

impl MessageId {
    /// A fresh, time-ordered id (UUID v7), and the Unix time in seconds it holds: one clock reading for both.
    ///
    /// The 74 random bits come from `fastrand`'s per-thread generator (seeded from the OS), not from the OS
    /// for each id: unique all the same, at a fraction of the cost.
    pub(crate) fn with_time() -> (Self, u64) {
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let mut random = [0; 10];
        random[..8].copy_from_slice(&fastrand::u64(..).to_le_bytes());
        random[8..].copy_from_slice(&fastrand::u16(..).to_le_bytes());
        let millis = u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX);
        let id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
        (MessageId(hyphenated(id.as_bytes())), since_epoch.as_secs())
    }

    /// The id `text` holds, when it has an id's length (as Warren's ids, and any other UUID in text form).
    pub(crate) fn parse(text: &str) -> Option<MessageId> {
        text.as_bytes().try_into().ok().map(MessageId)
    }

    pub(crate) fn as_str(&self) -> &str {
        // Always UTF-8: ASCII written by `hyphenated`, or taken whole from a `str`.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// A UUID's bytes as its text: lowercase hex, hyphenated 8-4-4-4-12, as `uuid`'s own formatter writes it, but a
/// table lookup per byte rather than a branch per nibble (callgrind: about half the instructions, for every
/// message published).
fn hyphenated(bytes: &[u8; 16]) -> [u8; uuid::fmt::Hyphenated::LENGTH] {
    const PAIRS: [[u8; 2]; 256] = {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut pairs = [[0; 2]; 256];
        let mut byte = 0;
        while byte < 256 {
            pairs[byte] = [DIGITS[byte >> 4], DIGITS[byte & 0x0f]];
            byte += 1;
        }
        pairs
    };
    let mut text = [b'-'; uuid::fmt::Hyphenated::LENGTH];
    let mut at = 0;
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1; // past a hyphen
        }
        text[at..at + 2].copy_from_slice(&PAIRS[usize::from(*byte)]);
        at += 2;
    }
    text
}

/// A message's id or correlation id for its span: borrowed, and read as text only if a subscriber records the
/// span (a Warren id's text is checked to be UTF-8 at each reading, which a message nobody traces need not pay).
#[derive(Debug, Clone, Copy)]
pub(crate) enum IdText<'a> {
    /// Text as it came.
    Text(&'a str),
    /// A Warren id, held inline.
    Id(&'a MessageId),
}

impl<'a> IdText<'a> {
    pub(crate) fn as_str(self) -> &'a str {
        match self {
            IdText::Text(text) => text,
            IdText::Id(id) => id.as_str(),
        }
    }
}

impl std::fmt::Debug for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What Warren puts in the properties of a message it publishes, in a form that is cheap to build, share
/// and drop: the contract's names are `'static`, the service name is shared, the id is inline. It becomes
/// AMQP properties only when it goes to RabbitMQ; the in-memory broker carries it as it is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Envelope {
    /// The message type's full proto name (AMQP `type`), or the RPC method's path.
    pub(crate) kind: &'static str,
    pub(crate) format: WireFormat,
    /// Fingerprint of the schema, sent as the `x-warren-schema` header unless empty.
    pub(crate) schema: &'static str,
    pub(crate) app_id: &'static str,
    pub(crate) message_id: MessageId,
    /// `None`: the message starts a conversation, and its own id is its correlation id. It then goes without
    /// one, unless it is an RPC request (see [`Envelope::correlation_to_send`]).
    pub(crate) correlation_id: Option<Arc<str>>,
    /// Unix seconds.
    pub(crate) timestamp: u64,
    /// Delivery mode 2: written to disk by a durable queue.
    pub(crate) persistent: bool,
    pub(crate) priority: Option<u8>,
    pub(crate) reply_to: Option<Arc<str>>,
    /// Per-message TTL.
    pub(crate) expiration_ms: Option<u64>,
    /// Headers besides the schema.
    pub(crate) headers: Option<Headers>,
}

impl Envelope {
    /// The envelope of a new message of type `kind`, from service `app_id`.
    pub(crate) fn new(kind: &'static str, format: WireFormat, schema: &'static str, app_id: &'static str) -> Self {
        let (message_id, timestamp) = MessageId::with_time();
        Envelope {
            kind,
            format,
            schema,
            app_id,
            message_id,
            correlation_id: None,
            timestamp,
            persistent: false,
            priority: None,
            reply_to: None,
            expiration_ms: None,
            headers: None,
        }
    }

    /// The correlation id to send. A message that starts a conversation is sent without one, as its own id
    /// already says it: one short string fewer for every consumer to parse, allocate and free (a thousand
    /// instructions of the 30,000 a fanned-out delivery costs the client, by callgrind). Readers take the
    /// message id instead ([`Properties::correlation_id`]). An RPC request always carries one: an RPC server
    /// written for plain AMQP replies with the correlation id it received.
    pub(crate) fn correlation_to_send(&self) -> Option<&str> {
        self.correlation_id.as_deref().or(self.reply_to.as_ref().map(|_| self.message_id.as_str()))
    }

    /// The headers to send: the application's and Warren's, with the schema fingerprint unless empty.
    pub(crate) fn headers_to_send(&self) -> Option<Headers> {
        let mut headers = self.headers.clone();
        if !self.schema.is_empty() {
            headers.get_or_insert_default().insert(SCHEMA, self.schema);
        }
        headers
    }

    /// As plain properties, as any client would read them.
    pub(crate) fn to_plain(&self) -> MessageProperties {
        MessageProperties {
            content_type: Some(self.format.content_type().to_owned()),
            content_encoding: None,
            headers: self.headers_to_send().unwrap_or_default(),
            delivery_mode: self.persistent.then_some(2),
            priority: self.priority,
            correlation_id: self.correlation_to_send().map(str::to_owned),
            reply_to: self.reply_to.as_deref().map(str::to_owned),
            expiration: self.expiration_ms.map(|ms| ms.to_string()),
            message_id: Some(self.message_id.as_str().to_owned()),
            timestamp: Some(self.timestamp),
            kind: Some(self.kind.to_owned()),
            user_id: None,
            app_id: Some(self.app_id.to_owned()),
        }
    }
}

/// A message's properties: as Warren built them for a publish, as anyone else set them (a raw publish, the
/// in-memory broker's deliveries of those), or as RabbitMQ delivered them. Read through one set of accessors
/// whichever they are.
///
/// `A` holds plain [`MessageProperties`] and `R` a RabbitMQ delivery's: boxed (the defaults) where properties
/// travel by value, inline in a [`crate::transport::Message`], which lives in an `Arc` of its own.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Properties<A = Box<MessageProperties>, R = Box<Delivered>> {
    // A publish's properties are moved through several layers on their way to a queue. Warren's envelope
    // (under two hundred bytes) is copied along: that costs less than allocating and freeing a box for it
    // (callgrind, W2: 280 instructions a publish fewer than boxed). The others (about three hundred bytes)
    // are boxed there, and kept inline in a received message: one allocation and one copy fewer per delivery.
    Warren(Envelope),
    Plain(A),
    /// As lapin parsed them, read in place (see [`Delivered`]).
    Delivered(R),
}

/// A received message's properties, kept inline.
pub(crate) type Received = Properties<Inline, Inline<Delivered>>;

/// Properties kept inline.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Inline<T = MessageProperties>(pub(crate) T);

impl<T> std::ops::Deref for Inline<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl From<Envelope> for Properties {
    fn from(envelope: Envelope) -> Self {
        Properties::Warren(envelope)
    }
}

impl From<MessageProperties> for Properties {
    fn from(properties: MessageProperties) -> Self {
        Properties::Plain(Box::new(properties))
    }
}

impl Properties {
    /// The same properties, kept inline: a message's.
    pub(crate) fn received(self) -> Received {
        match self {
            Properties::Warren(envelope) => Properties::Warren(envelope),
            Properties::Plain(properties) => Properties::Plain(Inline(*properties)),
            Properties::Delivered(delivered) => Properties::Delivered(Inline(*delivered)),
        }
    }
}

impl Received {
    /// As plain properties, without copying plain ones.
    pub(crate) fn into_plain(self) -> MessageProperties {
        match self {
            Properties::Warren(envelope) => envelope.to_plain(),
            Properties::Plain(properties) => properties.0,
            Properties::Delivered(delivered) => delivered.0.to_plain(),
        }
    }
}

impl<A: std::ops::Deref<Target = MessageProperties>, R: std::ops::Deref<Target = Delivered>> Properties<A, R> {
    /// The AMQP `type`: the message type's full proto name, or the RPC method.
    pub(crate) fn kind(&self) -> Option<&str> {
        match self {
            Properties::Warren(envelope) => Some(envelope.kind),
            Properties::Plain(p) => p.kind.as_deref(),
            Properties::Delivered(d) => d.kind(),
        }
    }

    /// The wire format the `content_type` names.
    pub(crate) fn format(&self) -> WireFormat {
        match self {
            Properties::Warren(envelope) => envelope.format,
            _ => WireFormat::from_content_type(self.content_type()),
        }
    }

    pub(crate) fn content_type(&self) -> Option<&str> {
        match self {
            Properties::Warren(envelope) => Some(envelope.format.content_type()),
            Properties::Plain(p) => p.content_type.as_deref(),
            Properties::Delivered(d) => d.content_type(),
        }
    }

    pub(crate) fn message_id(&self) -> Option<&str> {
        match self {
            Properties::Warren(envelope) => Some(envelope.message_id.as_str()),
            Properties::Plain(p) => p.message_id.as_deref(),
            Properties::Delivered(d) => d.message_id(),
        }
    }

    /// The message id as a [`MessageId`], when it has an id's length.
    pub(crate) fn id(&self) -> Option<MessageId> {
        match self {
            Properties::Warren(envelope) => Some(envelope.message_id),
            _ => self.message_id().and_then(MessageId::parse),
        }
    }

    /// The correlation id; the message id when the message has none (it starts a conversation).
    pub(crate) fn correlation_id(&self) -> Option<&str> {
        match self {
            Properties::Warren(e) => Some(e.correlation_id.as_deref().unwrap_or_else(|| e.message_id.as_str())),
            Properties::Plain(p) => p.correlation_id.as_deref().or(p.message_id.as_deref()),
            Properties::Delivered(d) => d.correlation_id().or_else(|| d.message_id()),
        }
    }

    /// [`Properties::message_id`] and [`Properties::correlation_id`] together, for a span: a Warren envelope's id
    /// is not read as text unless the span is recorded, and is both when the message starts a conversation.
    pub(crate) fn ids(&self) -> (Option<IdText<'_>>, Option<IdText<'_>>) {
        match self {
            Properties::Warren(e) => {
                let id = IdText::Id(&e.message_id);
                (Some(id), Some(e.correlation_id.as_deref().map_or(id, IdText::Text)))
            }
            _ => (self.message_id().map(IdText::Text), self.correlation_id().map(IdText::Text)),
        }
    }

    pub(crate) fn app_id(&self) -> Option<&str> {
        match self {
            Properties::Warren(envelope) => Some(envelope.app_id),
            Properties::Plain(p) => p.app_id.as_deref(),
            Properties::Delivered(d) => d.app_id(),
        }
    }

    pub(crate) fn reply_to(&self) -> Option<&str> {
        match self {
            Properties::Warren(envelope) => envelope.reply_to.as_deref(),
            Properties::Plain(p) => p.reply_to.as_deref(),
            Properties::Delivered(d) => d.reply_to(),
        }
    }

    pub(crate) fn timestamp(&self) -> Option<u64> {
        match self {
            Properties::Warren(envelope) => Some(envelope.timestamp),
            Properties::Plain(p) => p.timestamp,
            Properties::Delivered(d) => d.timestamp(),
        }
    }

    pub(crate) fn priority(&self) -> Option<u8> {
        match self {
            Properties::Warren(envelope) => envelope.priority,
            Properties::Plain(p) => p.priority,
            Properties::Delivered(d) => d.priority(),
        }
    }

    /// The per-message TTL (`expiration`), when set and a number of milliseconds.
    pub(crate) fn expiration_ms(&self) -> Option<u64> {
        match self {
            Properties::Warren(envelope) => envelope.expiration_ms,
            Properties::Plain(p) => p.expiration.as_deref().and_then(|ms| ms.parse().ok()),
            Properties::Delivered(d) => d.expiration().and_then(|ms| ms.parse().ok()),
        }
    }

    /// The headers, without the schema fingerprint of a Warren envelope (see [`Properties::schema`]).
    pub(crate) fn headers(&self) -> Option<&Headers> {
        match self {
            Properties::Warren(envelope) => envelope.headers.as_ref(),
            Properties::Plain(p) => Some(&p.headers).filter(|h| !h.is_empty()),
            Properties::Delivered(d) => d.headers(),
        }
    }

    /// The fingerprint of the schema the sender encoded with, when it sent one.
    pub(crate) fn schema(&self) -> Option<&str> {
        match self {
            Properties::Warren(envelope) => Some(envelope.schema).filter(|s| !s.is_empty()),
            _ => self.header_str(SCHEMA),
        }
    }

    pub(crate) fn header_str(&self, key: &str) -> Option<&str> {
        match self {
            Properties::Delivered(d) => d.header_str(key),
            _ => self.headers()?.get_str(key),
        }
    }

    pub(crate) fn header_i64(&self, key: &str) -> Option<i64> {
        match self {
            Properties::Delivered(d) => d.header_i64(key),
            _ => self.headers()?.get_i64(key),
        }
    }

    /// The same properties with `headers` instead of the current ones (a Warren envelope keeps its schema).
    pub(crate) fn with_headers(&self, headers: Headers) -> Properties {
        match self {
            Properties::Warren(envelope) => {
                Properties::Warren(Envelope { headers: Some(headers), ..Envelope::clone(envelope) })
            }
            Properties::Plain(p) => Properties::Plain(Box::new(MessageProperties::clone(p).with_headers(headers))),
            Properties::Delivered(d) => Properties::Plain(Box::new(d.to_plain().with_headers(headers))),
        }
    }

    /// The same properties without a per-message TTL.
    pub(crate) fn without_expiration(&self) -> Properties {
        let plain = |p: MessageProperties| Properties::Plain(Box::new(MessageProperties { expiration: None, ..p }));
        match self {
            Properties::Warren(envelope) => {
                Properties::Warren(Envelope { expiration_ms: None, ..Envelope::clone(envelope) })
            }
            Properties::Plain(p) => plain(MessageProperties::clone(p)),
            Properties::Delivered(d) => plain(d.to_plain()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_written_as_uuid_writes_them() {
        let mut cases = vec![[0u8; 16], [0xff; 16], *uuid::Uuid::now_v7().as_bytes()];
        cases.extend((0..1000).map(|_| fastrand::u128(..).to_be_bytes()));
        for bytes in cases {
            let text = hyphenated(&bytes);
            assert_eq!(std::str::from_utf8(&text).unwrap(), uuid::Uuid::from_bytes(bytes).hyphenated().to_string());
        }
    }

    #[test]
    fn message_ids_are_distinct_uuid_v7_holding_the_current_time() {
        let before = now_unix();
        let ids: Vec<(MessageId, u64)> = (0..10_000).map(|_| MessageId::with_time()).collect();
        let after = now_unix();
        let distinct: std::collections::HashSet<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(distinct.len(), ids.len(), "no id repeats");
        for (id, seconds) in &ids {
            let parsed = uuid::Uuid::parse_str(id.as_str()).expect("a UUID");
            assert_eq!(parsed.get_version_num(), 7);
            assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
            let (held, _) = parsed.get_timestamp().expect("v7 has a timestamp").to_unix();
            assert_eq!(held, *seconds, "the returned time is the id's own");
            assert!((before..=after).contains(seconds));
        }
        // Other threads draw from their own generators.
        let other = std::thread::spawn(|| MessageId::with_time().0).join().unwrap();
        assert!(!distinct.contains(other.as_str()));
    }

    #[test]
    fn an_rpc_request_always_carries_a_correlation_id_and_an_event_only_one_of_its_own() {
        let event = Envelope::new("gametrade.v1.UserRegistered", WireFormat::Protobuf, "", "svc");
        let plain = event.to_plain();
        assert_eq!(plain.correlation_id, None);
        let read = Properties::from(plain);
        assert_eq!(read.correlation_id(), Some(event.message_id.as_str()), "read as its message id");

        let mut caused = event.clone();
        caused.correlation_id = Some(Arc::from("order-7"));
        assert_eq!(caused.to_plain().correlation_id.as_deref(), Some("order-7"));

        // A server written for plain AMQP replies with the correlation id it got; there must be one.
        let mut request = Envelope::new("/at.v1.IntSummator/IntSum", WireFormat::Protobuf, "", "svc");
        request.reply_to = Some(Arc::from("amq.rabbitmq.reply-to"));
        assert_eq!(request.to_plain().correlation_id.as_deref(), Some(request.message_id.as_str()));
    }

    #[test]
    fn service_names_are_kept_once() {
        let a = static_name(&String::from("billing-service"));
        let b = static_name("billing-service");
        assert!(std::ptr::eq(a, b));
        assert_eq!(a, "billing-service");
    }
}
