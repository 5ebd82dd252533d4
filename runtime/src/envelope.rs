//! The envelope: what Warren puts in AMQP properties and headers, so any AMQP client can interoperate.

use std::sync::Arc;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::codec::WireFormat;

/// Header carrying the fingerprint of the schema a message was encoded with.
pub(crate) const SCHEMA: &str = "x-warren-schema";
/// Header naming the error message type of an RPC reply that carries a declared service error.
pub(crate) const ERROR_TYPE: &str = "warren-error";
/// Header carrying an RPC reply's status code (gRPC numbering).
pub(crate) const STATUS_CODE: &str = "warren-status";
/// Header carrying an RPC reply's status message.
pub(crate) const STATUS_MESSAGE: &str = "warren-message";
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
    /// The 74 random bits come from a per-thread generator seeded from the OS, not from the OS for each id:
    /// unique all the same, at a fraction of the cost.
    pub(crate) fn with_time() -> (Self, u64) {
        thread_local! {
            static RANDOM: std::cell::Cell<u64> = std::cell::Cell::new(uuid::Uuid::now_v7().as_u64_pair().1);
        }
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let random = RANDOM.with(|state| {
            // splitmix64: a full-period sequence per thread; two outputs give the 80 bits the builder takes.
            let next = || {
                let seed = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
                state.set(seed);
                let mut z = seed;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^ (z >> 31)
            };
            let (high, low) = (next(), next());
            let mut bytes = [0; 10];
            bytes[..8].copy_from_slice(&high.to_le_bytes());
            bytes[8..].copy_from_slice(&low.to_le_bytes()[..2]);
            bytes
        });
        let millis = u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX);
        let id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
        let mut text = [0; uuid::fmt::Hyphenated::LENGTH];
        id.hyphenated().encode_lower(&mut text);
        (MessageId(text), since_epoch.as_secs())
    }

    /// The id `text` holds, when it has an id's length (as Warren's ids, and any other UUID in text form).
    pub(crate) fn parse(text: &str) -> Option<MessageId> {
        text.as_bytes().try_into().ok().map(MessageId)
    }

    pub(crate) fn as_str(&self) -> &str {
        // Always UTF-8: written by the UUID formatter above, or taken whole from a `str`.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Debug for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What Warren puts in the properties of a message it publishes, in a form that is cheap to build, share
/// and drop: the contract's names are `'static`, the service name is shared, the id is inline. It becomes
/// lapin's properties only when it goes to RabbitMQ; the in-memory broker carries it as it is.
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
    /// one, unless it is an RPC request (see [`Envelope::to_amqp`]).
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
    pub(crate) headers: Option<FieldTable>,
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

    /// The AMQP properties. A message that starts a conversation is sent without a correlation id, as its
    /// own id already says it: one short string fewer for every consumer to parse, allocate and free (a
    /// thousand instructions of the 30,000 a fanned-out delivery costs the client, by callgrind). Readers
    /// take the message id instead ([`Properties::correlation_id`]). An RPC request always carries one: an
    /// RPC server written for plain AMQP replies with the correlation id it received.
    fn to_amqp(&self) -> BasicProperties {
        let id = self.message_id.as_str();
        let mut properties = BasicProperties::default().with_message_id(ShortString::from(id));
        if let Some(correlation_id) = self.correlation_id.as_deref().or(self.reply_to.as_ref().map(|_| id)) {
            properties = properties.with_correlation_id(ShortString::from(correlation_id));
        }
        let mut properties = properties
            .with_type(ShortString::from(self.kind))
            .with_app_id(ShortString::from(self.app_id))
            .with_timestamp(self.timestamp)
            .with_content_type(ShortString::from(self.format.content_type()));
        if self.persistent {
            properties = properties.with_delivery_mode(2);
        }
        if let Some(priority) = self.priority {
            properties = properties.with_priority(priority);
        }
        if let Some(reply_to) = &self.reply_to {
            properties = properties.with_reply_to(ShortString::from(&**reply_to));
        }
        if let Some(ms) = self.expiration_ms {
            properties = properties.with_expiration(ShortString::from(ms.to_string()));
        }
        let mut headers = self.headers.clone();
        if !self.schema.is_empty() {
            // A long string: RabbitMQ reads the short-string field type as a 16-bit integer.
            headers.get_or_insert_default().insert(ShortString::from(SCHEMA), long_string(self.schema));
        }
        match headers {
            Some(headers) => properties.with_headers(headers),
            None => properties,
        }
    }
}

/// A message's properties: as Warren built them for a publish, or as anyone else set them (a broker
/// delivery, a raw publish). Read through one set of accessors either way.
///
/// `A` holds lapin's properties: boxed (the default) where properties travel by value, inline in a
/// [`crate::transport::Message`], which lives in an `Arc` of its own.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Properties<A = Box<BasicProperties>> {
    // A publish's properties are moved through several layers on their way to a queue. Warren's envelope
    // (under two hundred bytes) is copied along: that costs less than allocating and freeing a box for it
    // (callgrind, W2: 280 instructions a publish fewer than boxed). Lapin's three hundred bytes are boxed
    // there, and kept inline in a received message: over AMQP one allocation and one copy fewer per delivery
    // (an in-memory message, built from a publish's properties, is about a hundred bytes larger instead).
    Warren(Envelope),
    Amqp(A),
}

/// A received message's properties, lapin's kept inline.
pub(crate) type Received = Properties<Inline>;

/// Lapin's properties, inline.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Inline(pub(crate) BasicProperties);

impl std::ops::Deref for Inline {
    type Target = BasicProperties;

    fn deref(&self) -> &BasicProperties {
        &self.0
    }
}

impl From<Envelope> for Properties {
    fn from(envelope: Envelope) -> Self {
        Properties::Warren(envelope)
    }
}

impl From<BasicProperties> for Properties {
    fn from(properties: BasicProperties) -> Self {
        Properties::Amqp(Box::new(properties))
    }
}

impl Properties {
    /// The same properties, lapin's inline: a message's.
    pub(crate) fn received(self) -> Received {
        match self {
            Properties::Warren(envelope) => Properties::Warren(envelope),
            Properties::Amqp(properties) => Properties::Amqp(Inline(*properties)),
        }
    }
}

impl Received {
    /// As lapin's properties, without copying lapin's.
    pub(crate) fn into_amqp(self) -> BasicProperties {
        match self {
            Properties::Warren(envelope) => envelope.to_amqp(),
            Properties::Amqp(properties) => properties.0,
        }
    }
}

impl<A: std::ops::Deref<Target = BasicProperties>> Properties<A> {
    /// As lapin's properties, for RabbitMQ and for [`crate::RawMessage`].
    pub(crate) fn to_amqp(&self) -> BasicProperties {
        match self {
            Properties::Warren(envelope) => envelope.to_amqp(),
            Properties::Amqp(properties) => BasicProperties::clone(properties),
        }
    }

    /// The AMQP `type`: the message type's full proto name, or the RPC method.
    pub(crate) fn kind(&self) -> Option<&str> {
        match self {
            Properties::Warren(envelope) => Some(envelope.kind),
            Properties::Amqp(p) => short(p.kind()),
        }
    }

    /// The wire format the `content_type` names.
    pub(crate) fn format(&self) -> WireFormat {
        match self {
            Properties::Warren(envelope) => envelope.format,
            Properties::Amqp(p) => WireFormat::from_content_type(short(p.content_type())),
        }
    }

    pub(crate) fn content_type(&self) -> Option<&str> {
        match self {
            Properties::Warren(envelope) => Some(envelope.format.content_type()),
            Properties::Amqp(p) => short(p.content_type()),
        }
    }

    pub(crate) fn message_id(&self) -> Option<&str> {
        match self {
            Properties::Warren(envelope) => Some(envelope.message_id.as_str()),
            Properties::Amqp(p) => short(p.message_id()),
        }
    }

    /// The message id as a [`MessageId`], when it has an id's length.
    pub(crate) fn id(&self) -> Option<MessageId> {
        match self {
            Properties::Warren(envelope) => Some(envelope.message_id),
            Properties::Amqp(p) => short(p.message_id()).and_then(MessageId::parse),
        }
    }

    /// The correlation id; the message id when the message has none (it starts a conversation).
    pub(crate) fn correlation_id(&self) -> Option<&str> {
        match self {
            Properties::Warren(e) => Some(e.correlation_id.as_deref().unwrap_or_else(|| e.message_id.as_str())),
            Properties::Amqp(p) => short(p.correlation_id()).or_else(|| short(p.message_id())),
        }
    }

    pub(crate) fn app_id(&self) -> Option<&str> {
        match self {
            Properties::Warren(envelope) => Some(envelope.app_id),
            Properties::Amqp(p) => short(p.app_id()),
        }
    }

    pub(crate) fn reply_to(&self) -> Option<&str> {
        match self {
            Properties::Warren(envelope) => envelope.reply_to.as_deref(),
            Properties::Amqp(p) => short(p.reply_to()),
        }
    }

    pub(crate) fn timestamp(&self) -> Option<u64> {
        match self {
            Properties::Warren(envelope) => Some(envelope.timestamp),
            Properties::Amqp(p) => *p.timestamp(),
        }
    }

    pub(crate) fn priority(&self) -> Option<u8> {
        match self {
            Properties::Warren(envelope) => envelope.priority,
            Properties::Amqp(p) => *p.priority(),
        }
    }

    /// The per-message TTL (`expiration`), when set and a number of milliseconds.
    pub(crate) fn expiration_ms(&self) -> Option<u64> {
        match self {
            Properties::Warren(envelope) => envelope.expiration_ms,
            Properties::Amqp(p) => short(p.expiration()).and_then(|ms| ms.parse().ok()),
        }
    }

    /// The headers, without the schema fingerprint of a Warren envelope (see [`Properties::schema`]).
    pub(crate) fn headers(&self) -> Option<&FieldTable> {
        match self {
            Properties::Warren(envelope) => envelope.headers.as_ref(),
            Properties::Amqp(p) => p.headers().as_ref(),
        }
    }

    /// The fingerprint of the schema the sender encoded with, when it sent one.
    pub(crate) fn schema(&self) -> Option<&str> {
        match self {
            Properties::Warren(envelope) => Some(envelope.schema).filter(|s| !s.is_empty()),
            Properties::Amqp(p) => match p.headers().as_ref()?.inner().get(SCHEMA)? {
                AMQPValue::ShortString(s) => Some(s.as_str()),
                AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
                _ => None,
            },
        }
    }

    pub(crate) fn header_str(&self, key: &str) -> Option<String> {
        header_str(self.headers(), key)
    }

    pub(crate) fn header_i64(&self, key: &str) -> Option<i64> {
        header_i64(self.headers(), key)
    }

    /// The same properties with `headers` instead of the current ones (a Warren envelope keeps its schema).
    pub(crate) fn with_headers(&self, headers: FieldTable) -> Properties {
        match self {
            Properties::Warren(envelope) => {
                Properties::Warren(Envelope { headers: Some(headers), ..Envelope::clone(envelope) })
            }
            Properties::Amqp(p) => Properties::Amqp(Box::new(BasicProperties::clone(p).with_headers(headers))),
        }
    }

    /// The same properties without a per-message TTL.
    pub(crate) fn without_expiration(&self) -> Properties {
        match self {
            Properties::Warren(envelope) => {
                Properties::Warren(Envelope { expiration_ms: None, ..Envelope::clone(envelope) })
            }
            Properties::Amqp(p) => Properties::Amqp(Box::new(amqp_without_expiration(p))),
        }
    }
}

/// `properties` minus `expiration` (lapin's properties have setters but no way to clear a field).
fn amqp_without_expiration(p: &BasicProperties) -> BasicProperties {
    let mut out = BasicProperties::default();
    macro_rules! copy {
        ($($get:ident => $set:ident),* $(,)?) => {
            $( if let Some(value) = p.$get().clone() { out = out.$set(value); } )*
        };
    }
    copy!(
        content_type => with_content_type, content_encoding => with_content_encoding, headers => with_headers,
        delivery_mode => with_delivery_mode, priority => with_priority, correlation_id => with_correlation_id,
        reply_to => with_reply_to, message_id => with_message_id, timestamp => with_timestamp,
        kind => with_type, user_id => with_user_id, app_id => with_app_id, cluster_id => with_cluster_id,
    );
    out
}

pub(crate) fn short(value: &Option<ShortString>) -> Option<&str> {
    value.as_ref().map(ShortString::as_str)
}

pub(crate) fn header_str(headers: Option<&FieldTable>, key: &str) -> Option<String> {
    match headers?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

pub(crate) fn header_i64(headers: Option<&FieldTable>, key: &str) -> Option<i64> {
    match headers?.inner().get(key)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}

pub(crate) fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let amqp = event.to_amqp();
        assert_eq!(amqp.correlation_id(), &None);
        let read = Properties::from(amqp);
        assert_eq!(read.correlation_id(), Some(event.message_id.as_str()), "read as its message id");

        let mut caused = event.clone();
        caused.correlation_id = Some(Arc::from("order-7"));
        assert_eq!(caused.to_amqp().correlation_id().as_ref().map(|c| c.as_str()), Some("order-7"));

        // A server written for plain AMQP replies with the correlation id it got; there must be one.
        let mut request = Envelope::new("/at.v1.IntSummator/IntSum", WireFormat::Protobuf, "", "svc");
        request.reply_to = Some(Arc::from("amq.rabbitmq.reply-to"));
        let amqp = request.to_amqp();
        assert_eq!(amqp.correlation_id().as_ref().map(|c| c.as_str()), Some(request.message_id.as_str()));
    }

    #[test]
    fn service_names_are_kept_once() {
        let a = static_name(&String::from("billing-service"));
        let b = static_name("billing-service");
        assert!(std::ptr::eq(a, b));
        assert_eq!(a, "billing-service");
    }
}
