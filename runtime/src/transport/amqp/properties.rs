//! Warren's metadata types to and from lapin's: the only place the two meet.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};

use crate::envelope::{Envelope, Properties};
use crate::headers::{HeaderValue, Headers, MessageProperties};
use crate::transport::QueueSettings;
use warren_topology::Argument;

/// lapin's properties for a publish. A Warren envelope goes straight to lapin's, without plain properties in
/// between: this is every publish's path.
pub(crate) fn to_lapin<A, R>(properties: &Properties<A, R>) -> BasicProperties
where
    A: std::ops::Deref<Target = MessageProperties>,
    R: std::ops::Deref<Target = Delivered>,
{
    match properties {
        Properties::Warren(envelope) => envelope_to_lapin(envelope),
        Properties::Plain(plain) => plain_to_lapin(plain),
        Properties::Delivered(delivered) => delivered.properties.clone(),
    }
}

/// A delivery's properties as lapin parsed them, read in place. Copied into [`MessageProperties`] on every
/// delivery, they cost about 1,200 instructions (callgrind, W4), a string allocated and freed for each
/// property; read here, only what is asked for is looked at, and the headers are converted once, when first
/// asked for as a whole (a single header is read from lapin's table directly).
#[derive(Clone, PartialEq)]
pub(crate) struct Delivered {
    properties: BasicProperties,
    headers: std::sync::OnceLock<Headers>,
}

impl std::fmt::Debug for Delivered {
    /// As Warren's properties show themselves: header values that look like credentials hidden (lapin's
    /// `Debug` would print them).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Delivered").field(&self.to_plain()).finish()
    }
}

impl Delivered {
    pub(crate) fn new(properties: BasicProperties) -> Self {
        Delivered { properties, headers: std::sync::OnceLock::new() }
    }

    pub(crate) fn kind(&self) -> Option<&str> {
        short(self.properties.kind())
    }

    pub(crate) fn content_type(&self) -> Option<&str> {
        short(self.properties.content_type())
    }

    pub(crate) fn message_id(&self) -> Option<&str> {
        short(self.properties.message_id())
    }

    pub(crate) fn correlation_id(&self) -> Option<&str> {
        short(self.properties.correlation_id())
    }

    pub(crate) fn app_id(&self) -> Option<&str> {
        short(self.properties.app_id())
    }

    pub(crate) fn reply_to(&self) -> Option<&str> {
        short(self.properties.reply_to())
    }

    pub(crate) fn expiration(&self) -> Option<&str> {
        short(self.properties.expiration())
    }

    pub(crate) fn timestamp(&self) -> Option<u64> {
        *self.properties.timestamp()
    }

    pub(crate) fn priority(&self) -> Option<u8> {
        *self.properties.priority()
    }

    /// The headers but the schema fingerprint (read with `header_str`), as a Warren envelope's: converted on
    /// first use; `None` when there are none.
    pub(crate) fn headers(&self) -> Option<&Headers> {
        let table = self.properties.headers().as_ref()?;
        let headers = self.headers.get_or_init(|| {
            let mut headers = table_from_lapin(table);
            headers.remove(crate::envelope::SCHEMA);
            headers
        });
        Some(headers).filter(|headers| !headers.is_empty())
    }

    /// Header `key` as text, read in place.
    pub(crate) fn header_str(&self, key: &str) -> Option<&str> {
        match self.properties.headers().as_ref()?.inner().get(key)? {
            AMQPValue::LongString(text) => std::str::from_utf8(text.as_bytes()).ok(),
            AMQPValue::ShortString(text) => Some(text.as_str()),
            _ => None,
        }
    }

    /// Header `key` as an integer, read in place.
    pub(crate) fn header_i64(&self, key: &str) -> Option<i64> {
        match value_from_lapin(self.properties.headers().as_ref()?.inner().get(key)?) {
            HeaderValue::Int(n) => Some(n),
            _ => None,
        }
    }

    /// As Warren's plain properties.
    pub(crate) fn to_plain(&self) -> MessageProperties {
        from_lapin(self.properties.clone())
    }
}

fn short(value: &Option<ShortString>) -> Option<&str> {
    value.as_ref().map(ShortString::as_str)
}

fn envelope_to_lapin(envelope: &Envelope) -> BasicProperties {
    let id = envelope.message_id.as_str();
    let mut properties = BasicProperties::default().with_message_id(ShortString::from(id));
    if let Some(correlation_id) = envelope.correlation_to_send() {
        properties = properties.with_correlation_id(ShortString::from(correlation_id));
    }
    let mut properties = properties
        .with_type(ShortString::from(envelope.kind))
        .with_app_id(ShortString::from(envelope.app_id))
        .with_timestamp(envelope.timestamp)
        .with_content_type(ShortString::from(envelope.format.content_type()));
    if envelope.persistent {
        properties = properties.with_delivery_mode(2);
    }
    if let Some(priority) = envelope.priority {
        properties = properties.with_priority(priority);
    }
    if let Some(reply_to) = &envelope.reply_to {
        properties = properties.with_reply_to(ShortString::from(&**reply_to));
    }
    if let Some(ms) = envelope.expiration_ms {
        properties = properties.with_expiration(ShortString::from(ms.to_string()));
    }
    match envelope.headers_to_send() {
        Some(headers) => properties.with_headers(table_to_lapin(&headers)),
        None => properties,
    }
}

fn plain_to_lapin(p: &MessageProperties) -> BasicProperties {
    let mut out = BasicProperties::default();
    let short = |text: &String| ShortString::from(text.as_str());
    if let Some(v) = &p.content_type {
        out = out.with_content_type(short(v));
    }
    if let Some(v) = &p.content_encoding {
        out = out.with_content_encoding(short(v));
    }
    if !p.headers.is_empty() {
        out = out.with_headers(table_to_lapin(&p.headers));
    }
    if let Some(v) = p.delivery_mode {
        out = out.with_delivery_mode(v);
    }
    if let Some(v) = p.priority {
        out = out.with_priority(v);
    }
    if let Some(v) = &p.correlation_id {
        out = out.with_correlation_id(short(v));
    }
    if let Some(v) = &p.reply_to {
        out = out.with_reply_to(short(v));
    }
    if let Some(v) = &p.expiration {
        out = out.with_expiration(short(v));
    }
    if let Some(v) = &p.message_id {
        out = out.with_message_id(short(v));
    }
    if let Some(v) = p.timestamp {
        out = out.with_timestamp(v);
    }
    if let Some(v) = &p.kind {
        out = out.with_type(short(v));
    }
    if let Some(v) = &p.user_id {
        out = out.with_user_id(short(v));
    }
    if let Some(v) = &p.app_id {
        out = out.with_app_id(short(v));
    }
    out
}

/// A delivery's properties as Warren's. lapin's short strings become `String`s without copying; header
/// tables are copied (lapin's cannot be taken apart).
pub(crate) fn from_lapin(p: BasicProperties) -> MessageProperties {
    let string = |value: Option<ShortString>| value.map(String::from);
    MessageProperties {
        headers: p.headers().as_ref().map(table_from_lapin).unwrap_or_default(),
        delivery_mode: *p.delivery_mode(),
        priority: *p.priority(),
        timestamp: *p.timestamp(),
        content_type: string(p.content_type().clone()),
        content_encoding: string(p.content_encoding().clone()),
        correlation_id: string(p.correlation_id().clone()),
        reply_to: string(p.reply_to().clone()),
        expiration: string(p.expiration().clone()),
        message_id: string(p.message_id().clone()),
        kind: string(p.kind().clone()),
        user_id: string(p.user_id().clone()),
        app_id: string(p.app_id().clone()),
    }
}

/// Warren's headers as an AMQP field table. Text goes as a long string: RabbitMQ reads the short-string
/// field type as a 16-bit integer.
pub(crate) fn table_to_lapin(headers: &Headers) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in headers.iter() {
        table.insert(ShortString::from(name), value_to_lapin(value));
    }
    table
}

fn value_to_lapin(value: &HeaderValue) -> AMQPValue {
    match value {
        HeaderValue::Bool(b) => AMQPValue::Boolean(*b),
        // As RabbitMQ writes its own (`x-death`'s `count`, which it reads back when a message dies again).
        HeaderValue::Int(n) => AMQPValue::LongLongInt(*n),
        HeaderValue::Float(x) => AMQPValue::Double(*x),
        HeaderValue::String(text) => AMQPValue::LongString(LongString::from(text.as_bytes())),
        HeaderValue::Bytes(bytes) => AMQPValue::ByteArray(bytes.as_slice().into()),
        HeaderValue::Timestamp(t) => AMQPValue::Timestamp(*t),
        HeaderValue::Array(values) => {
            AMQPValue::FieldArray(FieldArray::from(values.iter().map(value_to_lapin).collect::<Vec<_>>()))
        }
        HeaderValue::Table(table) => AMQPValue::FieldTable(table_to_lapin(table)),
        // Warren's enum may grow; anything it cannot say in AMQP goes as no value.
        #[allow(unreachable_patterns)]
        _ => AMQPValue::Void,
    }
}

pub(crate) fn table_from_lapin(table: &FieldTable) -> Headers {
    table.inner().iter().map(|(name, value)| (name.as_str(), value_from_lapin(value))).collect()
}

fn value_from_lapin(value: &AMQPValue) -> HeaderValue {
    let text = |bytes: &[u8]| match std::str::from_utf8(bytes) {
        Ok(text) => HeaderValue::String(text.to_owned()),
        Err(_) => HeaderValue::Bytes(bytes.to_vec()),
    };
    match value {
        AMQPValue::Boolean(b) => HeaderValue::Bool(*b),
        AMQPValue::ShortShortInt(n) => HeaderValue::Int(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => HeaderValue::Int(i64::from(*n)),
        AMQPValue::ShortInt(n) => HeaderValue::Int(i64::from(*n)),
        AMQPValue::ShortUInt(n) => HeaderValue::Int(i64::from(*n)),
        AMQPValue::LongInt(n) => HeaderValue::Int(i64::from(*n)),
        AMQPValue::LongUInt(n) => HeaderValue::Int(i64::from(*n)),
        AMQPValue::LongLongInt(n) => HeaderValue::Int(*n),
        AMQPValue::Float(x) => HeaderValue::Float(f64::from(*x)),
        AMQPValue::Double(x) => HeaderValue::Float(*x),
        AMQPValue::DecimalValue(d) => HeaderValue::Float(f64::from(d.value) / 10f64.powi(i32::from(d.scale))),
        AMQPValue::ShortString(s) => HeaderValue::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => text(s.as_bytes()),
        AMQPValue::ByteArray(bytes) => HeaderValue::Bytes(bytes.as_slice().to_vec()),
        AMQPValue::FieldArray(values) => HeaderValue::Array(values.as_slice().iter().map(value_from_lapin).collect()),
        AMQPValue::Timestamp(t) => HeaderValue::Timestamp(*t),
        AMQPValue::FieldTable(table) => HeaderValue::Table(table_from_lapin(table)),
        AMQPValue::Void => HeaderValue::Void,
    }
}

/// The AMQP `x-` arguments of a queue (after [`QueueSettings::check`]). RabbitMQ compares them, types
/// included, with an existing queue's: their types are as Warren has always declared them.
pub(crate) fn queue_arguments(options: &QueueSettings) -> FieldTable {
    let mut arguments = FieldTable::default();
    for (name, value) in options.arguments() {
        let value = match value {
            // A priority has always gone as an unsigned byte, the rest as 32-bit integers.
            Argument::Int(max) if name == "x-max-priority" => {
                AMQPValue::ShortShortUInt(u8::try_from(max).unwrap_or(u8::MAX))
            }
            Argument::Int(value) => AMQPValue::LongInt(i32::try_from(value).unwrap_or(i32::MAX)),
            Argument::Str(text) => AMQPValue::LongString(text.into()),
        };
        arguments.insert(ShortString::from(name), value);
    }
    arguments
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::WireFormat;

    #[test]
    fn headers_survive_the_trip_through_lapin() {
        let nested = Headers::new().with("count", 2).with("queue", "orders");
        let headers = Headers::new()
            .with("text", "é")
            .with("int", -5)
            .with("flag", true)
            .with("float", 1.5)
            .with("bytes", vec![0xff, 0x00])
            .with("when", HeaderValue::Timestamp(1_700_000_000))
            .with("list", vec![HeaderValue::from("a"), HeaderValue::Table(nested)])
            .with("none", HeaderValue::Void);
        assert_eq!(table_from_lapin(&table_to_lapin(&headers)), headers);
    }

    #[test]
    fn every_integer_width_and_a_short_string_read_as_warrens() {
        let mut table = FieldTable::default();
        table.insert("a".into(), AMQPValue::ShortShortUInt(200));
        table.insert("b".into(), AMQPValue::LongUInt(u32::MAX));
        table.insert("c".into(), AMQPValue::ShortString("hi".into()));
        table.insert("d".into(), AMQPValue::LongString(LongString::from(vec![0xff])));
        let read = table_from_lapin(&table);
        assert_eq!(read.get_i64("a"), Some(200));
        assert_eq!(read.get_i64("b"), Some(i64::from(u32::MAX)));
        assert_eq!(read.get_str("c"), Some("hi"));
        assert_eq!(read.get("d"), Some(&HeaderValue::Bytes(vec![0xff])), "not text: bytes");
    }

    #[test]
    fn a_delivery_read_in_place_says_what_its_plain_copy_says() {
        let plain = MessageProperties::default()
            .with_message_id("m-1")
            .with_kind("shop.v1.OrderPlaced")
            .with_content_type("application/json")
            .with_header("x-warren-attempts", 3)
            .with_header("x-warren-reason", "boom")
            .with_reply_to("amq.rabbitmq.reply-to")
            .with_expiration_ms(250)
            .with_app_id("shop");
        let delivered = Properties::<Box<MessageProperties>, Box<Delivered>>::Delivered(Box::new(Delivered::new(
            to_lapin(&Properties::from(plain.clone())),
        )));
        let copy = Properties::from(plain.clone());
        assert_eq!(delivered.kind(), copy.kind());
        assert_eq!(delivered.format(), copy.format());
        assert_eq!(delivered.correlation_id(), Some("m-1"), "the message id when it has no correlation id");
        assert_eq!(delivered.reply_to(), copy.reply_to());
        assert_eq!(delivered.expiration_ms(), Some(250));
        assert_eq!(delivered.header_i64("x-warren-attempts"), Some(3));
        assert_eq!(delivered.header_str("x-warren-reason"), Some("boom"));
        assert_eq!(delivered.headers(), Some(&plain.headers));
        let Properties::Delivered(inner) = &delivered else { unreachable!() };
        assert_eq!(inner.to_plain(), plain);
        assert_eq!(delivered.with_headers(Headers::new()), Properties::from(plain.with_headers(Headers::new())));
    }

    #[test]
    fn plain_properties_and_envelopes_reach_lapin_whole() {
        let plain = MessageProperties::default()
            .with_message_id("m-1")
            .with_correlation_id("c-1")
            .with_kind("shop.v1.OrderPlaced")
            .with_content_type("application/json")
            .with_header("tenant", "eu")
            .with_expiration_ms(500)
            .with_priority(3)
            .with_reply_to("amq.rabbitmq.reply-to")
            .with_app_id("shop")
            .with_user_id("guest")
            .with_content_encoding("identity")
            .with_timestamp(7)
            .persistent();
        assert_eq!(from_lapin(to_lapin(&Properties::from(plain.clone()))), plain);

        let mut envelope = Envelope::new("shop.v1.OrderPlaced", WireFormat::Json, "abc", "shop");
        envelope.headers = Some(Headers::new().with("tenant", "eu"));
        let sent = from_lapin(to_lapin(&Properties::from(envelope.clone())));
        assert_eq!(sent, envelope.to_plain(), "the fast path says what the plain form says");
        assert_eq!(sent.headers.get_str(crate::envelope::SCHEMA), Some("abc"));
    }
}
