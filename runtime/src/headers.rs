//! Warren's own message metadata types: [`Headers`], [`HeaderValue`] and [`MessageProperties`].
//!
//! They model AMQP 0-9-1's properties and field tables, so that any AMQP client's message can be read and
//! written, without making a client library's types part of Warren's API. The AMQP transport converts them at
//! its edge; the in-memory broker carries them as they are.

use std::collections::BTreeMap;
use std::fmt;

/// The longest header name AMQP can carry (a short string).
pub const MAX_HEADER_NAME_LEN: usize = warren_topology::MAX_NAME_LEN;

/// A header's value: the types of an AMQP field table, with every integer width read as an `i64`.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub enum HeaderValue {
    /// A boolean.
    Bool(bool),
    /// An integer. AMQP has eight widths; all are read as this, and it is written as a signed 64-bit integer,
    /// as RabbitMQ writes its own.
    Int(i64),
    /// A floating-point number (a decimal value is read as this too).
    Float(f64),
    /// Text. Written as an AMQP long string, which every client reads.
    String(String),
    /// Bytes that are not text.
    Bytes(Vec<u8>),
    /// Seconds since the Unix epoch.
    Timestamp(u64),
    /// A list of values (e.g. RabbitMQ's `x-death`).
    Array(Vec<HeaderValue>),
    /// A nested table.
    Table(Headers),
    /// No value.
    Void,
}

impl HeaderValue {
    /// The text, when this is text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            HeaderValue::String(text) => Some(text),
            _ => None,
        }
    }

    /// The integer, when this is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            HeaderValue::Int(n) => Some(*n),
            _ => None,
        }
    }

    /// The boolean, when this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            HeaderValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The bytes of text or of a byte array.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            HeaderValue::String(text) => Some(text.as_bytes()),
            HeaderValue::Bytes(bytes) => Some(bytes),
            _ => None,
        }
    }

    /// The nested table, when this is one.
    pub fn as_table(&self) -> Option<&Headers> {
        match self {
            HeaderValue::Table(table) => Some(table),
            _ => None,
        }
    }

    /// The list, when this is one.
    pub fn as_array(&self) -> Option<&[HeaderValue]> {
        match self {
            HeaderValue::Array(values) => Some(values),
            _ => None,
        }
    }
}

impl fmt::Debug for HeaderValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderValue::Bool(b) => write!(f, "{b}"),
            HeaderValue::Int(n) => write!(f, "{n}"),
            HeaderValue::Float(x) => write!(f, "{x}"),
            HeaderValue::String(text) => write!(f, "{text:?}"),
            HeaderValue::Bytes(bytes) => write!(f, "<{} bytes>", bytes.len()),
            HeaderValue::Timestamp(t) => write!(f, "timestamp({t})"),
            HeaderValue::Array(values) => f.debug_list().entries(values).finish(),
            HeaderValue::Table(table) => table.fmt(f),
            HeaderValue::Void => f.write_str("void"),
        }
    }
}

macro_rules! from_int {
    ($($t:ty),*) => { $( impl From<$t> for HeaderValue { fn from(n: $t) -> Self { HeaderValue::Int(i64::from(n)) } } )* };
}
from_int!(i8, u8, i16, u16, i32, u32, i64);

impl From<bool> for HeaderValue {
    fn from(b: bool) -> Self {
        HeaderValue::Bool(b)
    }
}

impl From<f64> for HeaderValue {
    fn from(x: f64) -> Self {
        HeaderValue::Float(x)
    }
}

impl From<&str> for HeaderValue {
    fn from(text: &str) -> Self {
        HeaderValue::String(text.to_owned())
    }
}

impl From<String> for HeaderValue {
    fn from(text: String) -> Self {
        HeaderValue::String(text)
    }
}

impl From<Vec<u8>> for HeaderValue {
    fn from(bytes: Vec<u8>) -> Self {
        HeaderValue::Bytes(bytes)
    }
}

impl From<Vec<HeaderValue>> for HeaderValue {
    fn from(values: Vec<HeaderValue>) -> Self {
        HeaderValue::Array(values)
    }
}

impl From<Headers> for HeaderValue {
    fn from(table: Headers) -> Self {
        HeaderValue::Table(table)
    }
}

/// A message's headers (an AMQP field table): names to values, in name order.
///
/// Names starting with `x-warren-` or `warren-` are Warren's own (see [`Headers::is_reserved`]): an
/// application may read them but not send them. `Debug` output hides the values of headers whose names look
/// like credentials (`authorization`, `…token…`, `…secret…`, `…password…`, `cookie`, `…api-key…`).
#[derive(Clone, Default, PartialEq)]
pub struct Headers(BTreeMap<String, HeaderValue>);

/// No headers, to lend where a message has none.
pub(crate) static NO_HEADERS: Headers = Headers::EMPTY;

impl Headers {
    /// No headers, as a constant.
    pub(crate) const EMPTY: Headers = Headers(BTreeMap::new());

    /// No headers.
    pub fn new() -> Self {
        Headers::default()
    }

    /// Sets header `name`, returning its previous value.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<HeaderValue>) -> Option<HeaderValue> {
        self.0.insert(name.into(), value.into())
    }

    /// These headers with `name` set to `value`.
    pub fn with(mut self, name: impl Into<String>, value: impl Into<HeaderValue>) -> Self {
        self.insert(name, value);
        self
    }

    /// Header `name`'s value.
    pub fn get(&self, name: &str) -> Option<&HeaderValue> {
        self.0.get(name)
    }

    /// Header `name` as text, when it is text.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name)?.as_str()
    }

    /// Header `name` as an integer, when it is one.
    pub fn get_i64(&self, name: &str) -> Option<i64> {
        self.get(name)?.as_i64()
    }

    /// Removes header `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<HeaderValue> {
        self.0.remove(name)
    }

    /// Whether header `name` is set.
    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The headers, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &HeaderValue)> {
        self.0.iter().map(|(name, value)| (name.as_str(), value))
    }

    /// Whether `name` is one of Warren's own header names (`x-warren-*`, `warren-*`, any case), which carry
    /// schema fingerprints, RPC statuses and dead-letter records and which applications may not send.
    pub fn is_reserved(name: &str) -> bool {
        let starts = |prefix: &str| name.get(..prefix.len()).is_some_and(|head| head.eq_ignore_ascii_case(prefix));
        starts("x-warren-") || starts("warren-")
    }

    /// Why `name` cannot be an application's header, if it cannot: reserved, empty or too long for AMQP.
    pub(crate) fn name_problem(name: &str) -> Option<String> {
        if name.is_empty() {
            Some("a header name cannot be empty".to_owned())
        } else if name.len() > MAX_HEADER_NAME_LEN {
            Some(format!("the name is {} bytes, longer than AMQP's {MAX_HEADER_NAME_LEN}", name.len()))
        } else if Headers::is_reserved(name) {
            Some("names starting with `x-warren-` or `warren-` are reserved for Warren; choose another name".to_owned())
        } else {
            None
        }
    }

    /// The first name in these headers, or in tables nested in them, that AMQP cannot carry (empty, or over
    /// 255 bytes), with what is wrong with it.
    fn unsendable_name(&self) -> Option<(&str, String)> {
        fn in_value(value: &HeaderValue) -> Option<(&str, String)> {
            match value {
                HeaderValue::Table(table) => table.unsendable_name(),
                HeaderValue::Array(values) => values.iter().find_map(in_value),
                _ => None,
            }
        }
        self.0.iter().find_map(|(name, value)| {
            if name.len() > MAX_HEADER_NAME_LEN {
                Some((
                    name.as_str(),
                    format!("the name is {} bytes, longer than AMQP's {MAX_HEADER_NAME_LEN}", name.len()),
                ))
            } else {
                in_value(value)
            }
        })
    }

    /// Refuses headers an application may not send (see [`Headers::name_problem`]), and names in nested
    /// tables that AMQP cannot carry.
    pub(crate) fn check_application(&self) -> crate::Result<()> {
        if self.is_empty() {
            return Ok(()); // every publish without headers: no walk through nothing
        }
        if let Some((name, problem)) = self.unsendable_name() {
            return Err(crate::Error::Header { name: cut(name), problem });
        }
        for name in self.0.keys() {
            if let Some(problem) = Headers::name_problem(name) {
                return Err(crate::Error::Header { name: cut(name), problem });
            }
        }
        Ok(())
    }

    /// Adds every header of `other`, replacing those of the same name.
    pub(crate) fn append(&mut self, other: Headers) {
        self.0.extend(other.0);
    }

    /// These headers without Warren's own.
    pub(crate) fn without_reserved(&self) -> Headers {
        Headers(
            self.0
                .iter()
                .filter(|(name, _)| !Headers::is_reserved(name))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
        )
    }
}

/// `name` cut to AMQP's longest, on a character boundary, to show in an error.
fn cut(name: &str) -> String {
    let mut end = name.len().min(MAX_HEADER_NAME_LEN);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

/// Whether a header of this name probably holds a credential, whose value `Debug` hides.
fn looks_secret(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    ["authorization", "token", "secret", "password", "passwd", "cookie", "api-key", "api_key", "apikey"]
        .iter()
        .any(|word| lower.contains(word))
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (name, value) in &self.0 {
            if looks_secret(name) {
                map.entry(name, &format_args!("***"));
            } else {
                map.entry(name, value);
            }
        }
        map.finish()
    }
}

impl<K: Into<String>, V: Into<HeaderValue>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        Headers(pairs.into_iter().map(|(name, value)| (name.into(), value.into())).collect())
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a String, &'a HeaderValue);
    type IntoIter = std::collections::btree_map::Iter<'a, String, HeaderValue>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// A message's AMQP properties, as any client may set them: for [`crate::Bus::publish_bytes`] and
/// [`crate::RawMessage`]. Build with the `with_*` methods:
///
/// ```
/// let properties = warren::MessageProperties::default()
///     .with_message_id("0193a5b2-7c1e-7d3f-9a4b-1c2d3e4f5a6b")
///     .with_content_type("application/json")
///     .with_header("tenant", "eu-1")
///     .persistent();
/// assert_eq!(properties.headers.get_str("tenant"), Some("eu-1"));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct MessageProperties {
    /// MIME type of the body (`application/x-protobuf`, `application/json`).
    pub content_type: Option<String>,
    /// Encoding of the body (e.g. `gzip`).
    pub content_encoding: Option<String>,
    /// Application headers.
    pub headers: Headers,
    /// 2: persistent (written to disk by a durable queue); 1 or none: transient.
    pub delivery_mode: Option<u8>,
    /// 0–255; queues honour up to their `x-max-priority`.
    pub priority: Option<u8>,
    /// Ties a message to the one that caused it, or a reply to its request.
    pub correlation_id: Option<String>,
    /// Where an RPC reply goes.
    pub reply_to: Option<String>,
    /// Per-message TTL in milliseconds, as text (AMQP's form).
    pub expiration: Option<String>,
    /// The message's id.
    pub message_id: Option<String>,
    /// Seconds since the Unix epoch.
    pub timestamp: Option<u64>,
    /// AMQP's `type`: the message type's full proto name for Warren's messages.
    pub kind: Option<String>,
    /// The publishing user, which RabbitMQ checks against the connection's.
    pub user_id: Option<String>,
    /// The publishing application (Warren: the bus's service name).
    pub app_id: Option<String>,
}

impl MessageProperties {
    /// Refuses properties AMQP cannot carry: a text property, or a header name at any depth, over 255 bytes
    /// (an AMQP short string). Warren's own header names are allowed here: a raw publish is raw.
    pub(crate) fn check(&self) -> crate::Result<()> {
        let short = [
            ("content_type", &self.content_type),
            ("content_encoding", &self.content_encoding),
            ("correlation_id", &self.correlation_id),
            ("reply_to", &self.reply_to),
            ("expiration", &self.expiration),
            ("message_id", &self.message_id),
            ("kind", &self.kind),
            ("user_id", &self.user_id),
            ("app_id", &self.app_id),
        ];
        for (property, value) in short {
            if let Some(value) = value.as_deref().filter(|v| v.len() > MAX_HEADER_NAME_LEN) {
                return Err(crate::Error::Config {
                    message: format!(
                        "property `{property}` is {} bytes; AMQP carries at most {MAX_HEADER_NAME_LEN} (a short string)",
                        value.len()
                    ),
                });
            }
        }
        // RabbitMQ closes the channel (406) for anything but a count of milliseconds; the in-memory broker
        // would read it as no TTL at all.
        if let Some(expiration) = self.expiration.as_deref()
            && expiration.parse::<u64>().is_err()
        {
            return Err(crate::Error::Config {
                message: format!(
                    "property `expiration` is {:?}: it is a message's time to live in milliseconds, as digits \
                     (\"60000\")",
                    cut(expiration)
                ),
            });
        }
        match self.headers.unsendable_name() {
            Some((name, problem)) => Err(crate::Error::Header { name: cut(name), problem }),
            None => Ok(()),
        }
    }

    /// With content type `content_type`.
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// With content encoding `encoding`.
    pub fn with_content_encoding(mut self, encoding: impl Into<String>) -> Self {
        self.content_encoding = Some(encoding.into());
        self
    }

    /// With `headers` instead of the current ones.
    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// With header `name` set to `value`.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<HeaderValue>) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Persistent: written to disk by a durable queue (delivery mode 2).
    pub fn persistent(mut self) -> Self {
        self.delivery_mode = Some(2);
        self
    }

    /// With priority `priority`.
    pub fn with_priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }

    /// With correlation id `id`.
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// With reply address `reply_to`.
    pub fn with_reply_to(mut self, reply_to: impl Into<String>) -> Self {
        self.reply_to = Some(reply_to.into());
        self
    }

    /// Expiring `ms` milliseconds after it enters a queue.
    pub fn with_expiration_ms(mut self, ms: u64) -> Self {
        self.expiration = Some(ms.to_string());
        self
    }

    /// With message id `id`.
    pub fn with_message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    /// With timestamp `seconds` since the Unix epoch.
    pub fn with_timestamp(mut self, seconds: u64) -> Self {
        self.timestamp = Some(seconds);
        self
    }

    /// With AMQP `type` `kind` (for Warren, the payload's full proto name).
    pub fn with_kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = Some(kind.into());
        self
    }

    /// With user id `user_id` (RabbitMQ refuses one that is not the connection's user).
    pub fn with_user_id(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = Some(user_id.into());
        self
    }

    /// With application id `app_id`.
    pub fn with_app_id(mut self, app_id: impl Into<String>) -> Self {
        self.app_id = Some(app_id.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expiration_is_milliseconds_as_digits() {
        let with = |expiration: &str| MessageProperties { expiration: Some(expiration.into()), ..Default::default() };
        assert!(with("60000").check().is_ok());
        for bad in ["-1", "1.5", "ten", ""] {
            let error = with(bad).check().unwrap_err().to_string();
            assert!(error.contains("property `expiration`") && error.contains("milliseconds"), "{bad}: {error}");
        }
    }

    #[test]
    fn reserved_names_are_warrens_in_any_case() {
        for name in ["x-warren-reason", "X-Warren-Schema", "warren-status", "WARREN-x"] {
            assert!(Headers::is_reserved(name), "{name}");
            assert!(Headers::name_problem(name).unwrap().contains("reserved for Warren"), "{name}");
        }
        for name in ["x-death", "traceparent", "tenant", "warren", "x-warren"] {
            assert!(!Headers::is_reserved(name), "{name}");
        }
        assert!(Headers::name_problem("").unwrap().contains("empty"));
        assert!(Headers::name_problem(&"a".repeat(256)).unwrap().contains("255"));
        assert_eq!(Headers::name_problem(&"a".repeat(255)), None);
    }

    #[test]
    fn names_amqp_cannot_carry_are_refused_at_any_depth() {
        let long = "n".repeat(256);
        let nested = Headers::new().with("outer", Headers::new().with(long.as_str(), 1));
        assert!(nested.check_application().unwrap_err().to_string().contains("256 bytes"));
        let in_list = Headers::new().with("list", vec![HeaderValue::Table(Headers::new().with(long.as_str(), 1))]);
        assert!(in_list.check_application().is_err());
        let properties = MessageProperties::default().with_kind("k".repeat(256));
        assert!(properties.check().unwrap_err().to_string().contains("`kind`"));
        assert!(MessageProperties::default().with_header("x-warren-reason", "raw is raw").check().is_ok());
    }

    #[test]
    fn debug_hides_values_of_headers_that_look_like_credentials() {
        let headers = Headers::new()
            .with("Authorization", "Bearer hunter2")
            .with("x-api-key", "hunter3")
            .with("tenant", "eu-1")
            .with("attempts", 3);
        let shown = format!("{headers:?}");
        assert!(!shown.contains("hunter"), "{shown}");
        assert!(shown.contains("\"tenant\": \"eu-1\"") && shown.contains("\"attempts\": 3"), "{shown}");
    }

    #[test]
    fn values_convert_from_rust_types_and_read_back() {
        let headers: Headers =
            [("n", HeaderValue::from(7u8)), ("s", "text".into()), ("b", true.into())].into_iter().collect();
        assert_eq!(headers.get_i64("n"), Some(7));
        assert_eq!(headers.get_str("s"), Some("text"));
        assert_eq!(headers.get("b").and_then(HeaderValue::as_bool), Some(true));
        assert_eq!(headers.get_str("n"), None, "an integer is not text");
    }
}
