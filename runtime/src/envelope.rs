//! The envelope: what Warren puts in AMQP properties and headers, so any AMQP client can interoperate.

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

/// A fresh, time-ordered message id.
pub(crate) fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Properties of a message Warren publishes; `fingerprint` (of the message's schema) goes in a header unless
/// it is empty.
pub(crate) fn properties(
    type_name: &str,
    format: WireFormat,
    fingerprint: &str,
    app_id: &str,
    message_id: String,
    correlation_id: String,
) -> BasicProperties {
    let properties = BasicProperties::default()
        .with_message_id(ShortString::from(message_id))
        .with_correlation_id(ShortString::from(correlation_id))
        .with_type(ShortString::from(type_name))
        .with_app_id(ShortString::from(app_id))
        .with_timestamp(now_unix())
        .with_content_type(ShortString::from(format.content_type()));
    if fingerprint.is_empty() {
        return properties;
    }
    let mut headers = FieldTable::default();
    // A long string: RabbitMQ reads the short-string field type as a 16-bit integer.
    headers.insert(ShortString::from(SCHEMA), long_string(fingerprint));
    properties.with_headers(headers)
}

/// The wire format a message's `content_type` names.
pub(crate) fn format_of(properties: &BasicProperties) -> WireFormat {
    WireFormat::from_content_type(short(properties.content_type()))
}

pub(crate) fn short(value: &Option<ShortString>) -> Option<&str> {
    value.as_ref().map(ShortString::as_str)
}

pub(crate) fn header_str(headers: &Option<FieldTable>, key: &str) -> Option<String> {
    match headers.as_ref()?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

pub(crate) fn header_i64(headers: &Option<FieldTable>, key: &str) -> Option<i64> {
    match headers.as_ref()?.inner().get(key)? {
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
