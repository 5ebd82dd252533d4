//! What every contract message knows about itself, and how it travels: protobuf or the canonical proto3 JSON
//! mapping (chosen per message by its `content_type`), the schema it was generated from, its fingerprint, and
//! its validation rules.

use std::fmt;
use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};

use crate::contract::DecodeError;
use crate::error::Error;

/// Content type of protobuf payloads.
pub const CONTENT_TYPE_PROTOBUF: &str = "application/x-protobuf";
/// Content type of JSON payloads (the canonical proto3 JSON mapping).
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// How a message body is encoded. Receivers go by the message's `content_type`, so they accept both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WireFormat {
    /// Protobuf binary encoding (`application/x-protobuf`): compact and fast. The default.
    #[default]
    Protobuf,
    /// The canonical proto3 JSON mapping (`application/json`): lowerCamelCase field names, enums by name,
    /// 64-bit integers as strings, default values omitted. For services without protobuf, e.g. Python ones
    /// during a migration.
    Json,
}

impl WireFormat {
    /// The AMQP `content_type` of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            WireFormat::Protobuf => CONTENT_TYPE_PROTOBUF,
            WireFormat::Json => CONTENT_TYPE_JSON,
        }
    }

    /// The format a `content_type` names: JSON for `application/json` (parameters such as `; charset=utf-8`
    /// allowed, case ignored), protobuf for anything else, including no content type at all.
    pub fn from_content_type(content_type: Option<&str>) -> Self {
        // Warren's own content types first, as they are on nearly every message: no parsing.
        match content_type {
            Some(CONTENT_TYPE_PROTOBUF) => return WireFormat::Protobuf,
            Some(CONTENT_TYPE_JSON) => return WireFormat::Json,
            _ => {}
        }
        let essence = content_type.map(|c| c.split(';').next().unwrap_or_default().trim());
        match essence {
            Some(c) if c.eq_ignore_ascii_case(CONTENT_TYPE_JSON) => WireFormat::Json,
            _ => WireFormat::Protobuf,
        }
    }
}

/// The descriptors of a generated contract crate, decoded on first use (only the JSON format needs them).
pub struct Schema {
    descriptor_set: &'static [u8],
    pool: OnceLock<DescriptorPool>,
}

impl Schema {
    /// A schema over an encoded `google.protobuf.FileDescriptorSet`, as generated code embeds it.
    pub const fn new(descriptor_set: &'static [u8]) -> Self {
        Schema { descriptor_set, pool: OnceLock::new() }
    }

    /// The decoded descriptors.
    ///
    /// # Panics
    ///
    /// If the embedded descriptor set does not decode, which generated code rules out.
    pub fn pool(&self) -> &DescriptorPool {
        self.pool.get_or_init(|| {
            DescriptorPool::decode(self.descriptor_set)
                .expect("a generated descriptor set decodes; regenerate the contracts")
        })
    }

    /// The descriptor of message `full_name`, e.g. `gametrade.v1.UserRegistered`.
    pub fn message(&self, full_name: &str) -> Option<MessageDescriptor> {
        self.pool().get_message_by_name(full_name)
    }
}

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schema").field("bytes", &self.descriptor_set.len()).finish_non_exhaustive()
    }
}

/// A message type of a contract: it knows its proto name, the fingerprint of its schema, where its descriptors
/// are (for JSON), and its validation rules. Implemented by generated code for every message.
pub trait Payload: prost::Message + Clone + Default + Send + Sync + 'static {
    /// Full proto name, e.g. `gametrade.v1.UserRegistered`; sent as the AMQP `type` property.
    const TYPE_NAME: &'static str;
    /// A hash of the message's schema (its fields and the types they use, transitively): equal
    /// fingerprints mean both sides were generated from the same definition. Empty when unknown.
    const FINGERPRINT: &'static str = "";

    /// The descriptors the message was generated from; needed for JSON.
    fn schema() -> Option<&'static Schema> {
        None
    }

    /// Adds the contract's rule violations of this message to `violations`, naming fields under `path`.
    #[doc(hidden)]
    fn check(&self, path: &str, violations: &mut Violations) {
        let _ = (path, violations);
    }

    /// Checks the contract's validation rules (`[(warren.rules) = { ... }]` on fields).
    fn validate(&self) -> Result<(), Violations> {
        let mut violations = Violations::default();
        self.check("", &mut violations);
        if violations.is_empty() { Ok(()) } else { Err(violations) }
    }
}

/// Which validation rules a message breaks, by field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Violations {
    list: Vec<Violation>,
}

/// One broken validation rule.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Violation {
    /// Path of the field, by proto names, e.g. `details.total_minor` or `items[2].name`.
    pub field: String,
    /// What is wrong, e.g. `must not be empty`.
    pub problem: String,
}

impl Violations {
    /// Records that field `field` (under `path`) breaks a rule.
    pub fn push(&mut self, path: &str, field: &str, problem: impl Into<String>) {
        self.list.push(Violation { field: join(path, field), problem: problem.into() });
    }

    /// Whether no rule is broken.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The broken rules.
    pub fn iter(&self) -> impl Iterator<Item = &Violation> {
        self.list.iter()
    }
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.list.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "field `{}` {}", v.field, v.problem)?;
        }
        Ok(())
    }
}

impl std::error::Error for Violations {}

/// `path.field`, or `field` at the top.
pub fn join(path: &str, field: &str) -> String {
    if path.is_empty() { field.to_owned() } else { format!("{path}.{field}") }
}

fn descriptor<P: Payload>() -> Result<MessageDescriptor, String> {
    let schema = P::schema().ok_or_else(|| format!("{} has no schema, which JSON needs", P::TYPE_NAME))?;
    schema.message(P::TYPE_NAME).ok_or_else(|| format!("the schema has no message {}", P::TYPE_NAME))
}

/// Encodes `message` in `format`.
pub(crate) fn encode<P: Payload>(message: &P, format: WireFormat) -> Result<Vec<u8>, Error> {
    match format {
        WireFormat::Protobuf => Ok(message.encode_to_vec()),
        WireFormat::Json => {
            let encoded = descriptor::<P>().and_then(|descriptor| {
                let mut dynamic = DynamicMessage::new(descriptor);
                dynamic.transcode_from(message).map_err(|e| e.to_string())?;
                let mut out = Vec::new();
                dynamic
                    .serialize_with_options(&mut serde_json::Serializer::new(&mut out), &SerializeOptions::new())
                    .map_err(|e| e.to_string())?;
                Ok(out)
            });
            encoded.map_err(|reason| Error::Encode { type_name: P::TYPE_NAME, reason })
        }
    }
}

/// A message on its way out, as the publish paths see it: a generated contract message, or one a tool encoded
/// from a contract read at run time ([`crate::Encoded`]). Generic code over it compiles to what it did for
/// [`Payload`] alone.
pub(crate) trait Outgoing: Sync {
    /// Full proto name, sent as the AMQP `type`.
    fn type_name(&self) -> &'static str;
    /// The schema's fingerprint; empty when unknown.
    fn fingerprint(&self) -> &'static str;
    /// The body in `format`.
    fn encode(&self, format: WireFormat) -> Result<Vec<u8>, Error>;
    /// The body as protobuf, for the history; `None` when it cannot be had.
    fn protobuf(&self) -> Option<Vec<u8>>;
    /// The format it goes in unless told otherwise (RPC requests).
    fn format(&self) -> WireFormat {
        WireFormat::Protobuf
    }
    /// Checks the contract's validation rules, where this side knows them.
    fn validate(&self) -> Result<(), Violations> {
        Ok(())
    }
}

impl<P: Payload> Outgoing for P {
    fn type_name(&self) -> &'static str {
        P::TYPE_NAME
    }

    fn fingerprint(&self) -> &'static str {
        P::FINGERPRINT
    }

    fn encode(&self, format: WireFormat) -> Result<Vec<u8>, Error> {
        encode(self, format)
    }

    fn protobuf(&self) -> Option<Vec<u8>> {
        Some(self.encode_to_vec())
    }

    fn validate(&self) -> Result<(), Violations> {
        Payload::validate(self)
    }
}

/// Decodes a payload in `format` as `P` and checks its validation rules.
pub(crate) fn decode<P: Payload>(format: WireFormat, payload: &[u8]) -> Result<P, DecodeError> {
    let malformed = |reason: String| DecodeError::Malformed { type_name: P::TYPE_NAME.to_owned(), reason };
    let message = match format {
        WireFormat::Protobuf => P::decode(payload).map_err(|e| malformed(e.to_string()))?,
        WireFormat::Json => {
            let descriptor = descriptor::<P>().map_err(malformed)?;
            let mut json = serde_json::Deserializer::from_slice(payload);
            let mut track = serde_path_to_error::Track::new();
            // Unknown fields are skipped, as protobuf skips unknown tags: newer senders stay readable.
            let options = DeserializeOptions::new().deny_unknown_fields(false);
            let dynamic = DynamicMessage::deserialize_with_options(
                descriptor,
                serde_path_to_error::Deserializer::new(&mut json, &mut track),
                &options,
            )
            .map_err(|e| {
                let path = track.path().to_string();
                let at = if path == "." || path.is_empty() { String::new() } else { format!("field `{path}`: ") };
                malformed(format!("invalid JSON: {at}{e}"))
            })?;
            json.end().map_err(|e| malformed(format!("invalid JSON: {e}")))?;
            dynamic.transcode_to::<P>().map_err(|e| malformed(e.to_string()))?
        }
    };
    message.validate().map_err(|violations| DecodeError::Invalid { type_name: P::TYPE_NAME.to_owned(), violations })?;
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_name_formats() {
        assert_eq!(WireFormat::from_content_type(Some("application/json")), WireFormat::Json);
        assert_eq!(WireFormat::from_content_type(Some("Application/JSON; charset=utf-8")), WireFormat::Json);
        assert_eq!(WireFormat::from_content_type(Some(CONTENT_TYPE_PROTOBUF)), WireFormat::Protobuf);
        assert_eq!(WireFormat::from_content_type(None), WireFormat::Protobuf);
    }

    #[test]
    fn violations_name_each_field() {
        let mut v = Violations::default();
        v.push("", "name", "must not be empty");
        v.push("details", "total", "must be at least 0");
        assert_eq!(v.to_string(), "field `name` must not be empty; field `details.total` must be at least 0");
    }
}
