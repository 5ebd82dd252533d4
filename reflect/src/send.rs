//! Messages in and out: JSON (the canonical proto3 mapping, as the runtime's JSON wire format) and protobuf,
//! routing keys filled from their templates, and publish, enqueue, call and decode over a bus.

use std::time::Duration;

use prost::Message as _;
use prost_reflect::{DeserializeOptions, DynamicMessage, ReflectMessage, SerializeOptions, Value};
use warren::{Bus, CallOptions, Encoded, EncodedCall, PublishOptions, QueueSettings, Status, WireFormat};
use warren_codegen::model::{KeyKind, KeyPart};

use crate::{Catalog, Error, Event, Method, Service, Task};

/// How a message is given or sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// The canonical proto3 JSON mapping.
    #[default]
    Json,
    /// Protobuf binary.
    Protobuf,
}

/// A method's answer: its response, or one of its declared errors, each decoded.
#[derive(Debug, Clone)]
pub enum Reply {
    /// The response.
    Response(DynamicMessage),
    /// A declared error: the error message (its oneof names the case) and the server's description.
    Error {
        /// The error message.
        error: DynamicMessage,
        /// How the server described it.
        message: String,
    },
}

impl Catalog {
    /// Reads `json` as message `type_name` (full or short name). Unknown fields are refused (a typo would
    /// otherwise send a default value); the reason names the field.
    pub fn parse_json(&self, type_name: &str, json: &str) -> Result<DynamicMessage, Error> {
        let descriptor = self.message(type_name)?;
        let malformed = |field: Option<String>, reason: String| Error::Malformed {
            type_name: descriptor.full_name().to_owned(),
            field: field.as_deref().map(crate::names::cut),
            reason: crate::names::cut(&reason),
        };
        let mut input = serde_json::Deserializer::from_str(json);
        let mut track = serde_path_to_error::Track::new();
        let options = DeserializeOptions::new().deny_unknown_fields(true);
        let message = DynamicMessage::deserialize_with_options(
            descriptor.clone(),
            serde_path_to_error::Deserializer::new(&mut input, &mut track),
            &options,
        )
        .map_err(|error| {
            let path = track.path().to_string();
            let path = path.trim_start_matches('.');
            malformed((!path.is_empty()).then(|| path.to_owned()), error.to_string())
        })?;
        input.end().map_err(|error| malformed(None, format!("after the message: {error}")))?;
        Ok(message)
    }

    /// Reads `bytes` as protobuf message `type_name`.
    pub fn parse_protobuf(&self, type_name: &str, bytes: &[u8]) -> Result<DynamicMessage, Error> {
        let descriptor = self.message(type_name)?;
        DynamicMessage::decode(descriptor.clone(), bytes)
            .map_err(|error| Error::malformed(descriptor.full_name(), error.to_string()))
    }

    /// Reads `input` in `format` as message `type_name` and checks its contract's rules.
    pub fn parse(&self, type_name: &str, input: &[u8], format: Format) -> Result<DynamicMessage, Error> {
        let message = match format {
            Format::Json => {
                let text = std::str::from_utf8(input)
                    .map_err(|e| Error::malformed(type_name, format!("the JSON is not UTF-8: {e}")))?;
                self.parse_json(type_name, text)?
            }
            Format::Protobuf => self.parse_protobuf(type_name, input)?,
        };
        self.validate(&message)?;
        Ok(message)
    }

    /// The routing key `event` is published with: its template, each `{field}` filled from `message` as the
    /// generated code fills it.
    pub fn routing_key(&self, event: &Event, message: &DynamicMessage) -> Result<String, Error> {
        let mut words = Vec::with_capacity(event.key_parts.len());
        for part in &event.key_parts {
            match part {
                KeyPart::Literal(word) => words.push(word.clone()),
                KeyPart::Field { name, kind, .. } => {
                    let value = message.get_field_by_name(name).map(|v| v.into_owned());
                    let word = match (kind, value) {
                        (KeyKind::Text, Some(Value::String(text))) => text,
                        (KeyKind::Integer, Some(value)) => integer(&value).unwrap_or_default(),
                        (KeyKind::Bool, Some(Value::Bool(b))) => b.to_string(),
                        (KeyKind::Enum { prefix, .. }, Some(Value::EnumNumber(number))) => {
                            let field = message.descriptor().get_field_by_name(name);
                            let enum_value = field.as_ref().and_then(|f| f.kind().as_enum().cloned());
                            match enum_value.and_then(|e| e.get_value(number)) {
                                Some(value) => warren::topic::enum_word(value.name(), prefix),
                                None => {
                                    return Err(key_error(
                                        event,
                                        name,
                                        number.to_string(),
                                        "is not a value of the field's enum",
                                    ));
                                }
                            }
                        }
                        (_, value) => {
                            return Err(key_error(event, name, format!("{value:?}"), "does not fit its template"));
                        }
                    };
                    if let Some(problem) = warren::topic::word_problem(&word) {
                        return Err(key_error(event, name, word, problem));
                    }
                    words.push(word);
                }
            }
        }
        let key = words.join(".");
        if key.len() > warren_topology::MAX_NAME_LEN {
            // Named after the field that filled the most of it: the one to shorten.
            let longest = event
                .key_parts
                .iter()
                .zip(&words)
                .filter_map(|(part, word)| match part {
                    KeyPart::Field { name, .. } => Some((name, word)),
                    KeyPart::Literal(_) => None,
                })
                .max_by_key(|(_, word)| word.len());
            if let Some((name, word)) = longest {
                let problem = format!(
                    "makes the key {} bytes long, over AMQP's {}: shorten it",
                    key.len(),
                    warren_topology::MAX_NAME_LEN
                );
                let shown: String = word.chars().take(64).collect();
                return Err(key_error(event, name, shown, &problem));
            }
        }
        Ok(key)
    }

    /// `message` encoded in `format`, with its fingerprint, ready for the bus.
    pub fn encode(&self, message: &DynamicMessage, format: WireFormat) -> Encoded {
        let type_name = message.descriptor().full_name().to_owned();
        let body = match format {
            WireFormat::Json => serde_json::to_vec(&to_json(message)).unwrap_or_default(),
            _ => message.encode_to_vec(),
        };
        let fingerprint = self.model_message(&type_name).map(|m| m.fingerprint.clone()).unwrap_or_default();
        Encoded::new(type_name, format, body).fingerprint(fingerprint)
    }

    /// Publishes `message` as `event` (checked against the contract's rules first), confirmed; returns its
    /// message id. The contract's wire format and priority apply unless `options` sets them.
    pub async fn publish(
        &self,
        bus: &Bus,
        event: &Event,
        message: &DynamicMessage,
        options: PublishOptions,
    ) -> Result<String, Error> {
        self.check_type(message, &event.full_name)?;
        self.validate(message)?;
        let routing_key = self.routing_key(event, message)?;
        let format = options.format.unwrap_or(if event.json { WireFormat::Json } else { WireFormat::Protobuf });
        let options = match (options.priority, event.priority) {
            (None, Some(level)) => options.priority(priority(level)),
            _ => options,
        };
        let exchange = self.exchange(&event.exchange.name)?;
        let encoded = self.encode(message, format);
        Ok(bus.publish_encoded(&exchange, &routing_key, &encoded, options).await?)
    }

    /// Puts `message` on `task`'s work queue (declared as workers declare it), confirmed; returns its message id.
    pub async fn enqueue(
        &self,
        bus: &Bus,
        task: &Task,
        message: &DynamicMessage,
        options: PublishOptions,
    ) -> Result<String, Error> {
        self.check_type(message, &task.full_name)?;
        self.validate(message)?;
        let format = options.format.unwrap_or(if task.json { WireFormat::Json } else { WireFormat::Protobuf });
        let quorum = task.quorum.then(|| task.retry.unwrap_or_default().max_attempts);
        let settings = QueueSettings::consumer(&task.queue, false, false, quorum).with_limit(task.limit);
        let encoded = self.encode(message, format);
        Ok(bus.enqueue_encoded(&task.queue, settings, &encoded, options).await?)
    }

    /// Calls `method` of `service` with `request` and waits for its reply within the method's deadline (or
    /// `options.timeout`). A failure that is not a declared error is the call's status.
    pub async fn call(
        &self,
        bus: &Bus,
        service: &Service,
        method: &Method,
        request: &DynamicMessage,
        options: &CallOptions,
    ) -> Result<Reply, Status> {
        let invalid = |e: Error| Status::invalid_argument(format!("/{}/{}: {e}", service.full_name, method.name));
        self.check_type(request, &method.input).map_err(invalid)?;
        self.validate(request).map_err(invalid)?;
        let timeout = Duration::from_millis(u64::from(method.timeout_ms.unwrap_or(service.default_timeout_ms)));
        let call = EncodedCall::new(&service.full_name, &service.queue, &method.name, timeout).quorum(service.quorum);
        let encoded = self.encode(request, WireFormat::Protobuf);
        let reply = bus.call_encoded(&call, &encoded, options).await?;
        let undecodable = |e: Error| Status::internal(format!("the reply of {} did not decode: {e}", call.path()));
        let decode = |type_name: &str| -> Result<DynamicMessage, Status> {
            match reply.format {
                WireFormat::Json => self
                    .parse_json(type_name, std::str::from_utf8(&reply.body).unwrap_or_default())
                    .map_err(undecodable),
                _ => self.parse_protobuf(type_name, &reply.body).map_err(undecodable),
            }
        };
        match &reply.error_type {
            None => Ok(Reply::Response(decode(&method.output)?)),
            Some(error_type) => Ok(Reply::Error { error: decode(error_type)?, message: reply.message.clone() }),
        }
    }

    /// A message read from a queue, decoded by its `type` property and content type into JSON. An error says
    /// why it could not be (no type, a type the contracts do not know, a body that does not decode).
    pub fn decode(&self, message: &warren::RawMessage) -> Result<serde_json::Value, Error> {
        let properties = &message.properties;
        let Some(type_name) = properties.kind.as_deref() else {
            return Err(Error::malformed("?", "the message has no type property"));
        };
        // RPC requests carry the method's path: decode them as its request.
        let request_of = |path: &str| self.method(path).ok().map(|(_, method)| method.input.clone());
        let type_name = type_name.strip_prefix('/').and_then(request_of).unwrap_or_else(|| type_name.to_owned());
        let format = WireFormat::from_content_type(properties.content_type.as_deref());
        let message = match format {
            WireFormat::Json => {
                let text = std::str::from_utf8(&message.body)
                    .map_err(|e| Error::malformed(type_name.clone(), format!("the JSON is not UTF-8: {e}")))?;
                // A newer sender's fields are skipped, as receivers skip them.
                let descriptor = self.message(&type_name)?;
                let options = DeserializeOptions::new().deny_unknown_fields(false);
                let mut input = serde_json::Deserializer::from_str(text);
                DynamicMessage::deserialize_with_options(descriptor, &mut input, &options)
                    .map_err(|e| Error::malformed(type_name.clone(), e.to_string()))?
            }
            _ => self.parse_protobuf(&type_name, &message.body)?,
        };
        Ok(to_json(&message))
    }

    fn check_type(&self, message: &DynamicMessage, expected: &str) -> Result<(), Error> {
        let actual = message.descriptor().full_name().to_owned();
        if actual == expected { Ok(()) } else { Err(Error::malformed(expected, format!("the message is a {actual}"))) }
    }
}

/// `message` in the canonical proto3 JSON mapping (lowerCamelCase names, enums by name, 64-bit integers as
/// strings, defaults left out), as the runtime's JSON wire format writes it.
pub fn to_json(message: &DynamicMessage) -> serde_json::Value {
    message
        .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
        .unwrap_or(serde_json::Value::Null)
}

fn integer(value: &Value) -> Option<String> {
    Some(match value {
        Value::I32(n) => n.to_string(),
        Value::I64(n) => n.to_string(),
        Value::U32(n) => n.to_string(),
        Value::U64(n) => n.to_string(),
        _ => return None,
    })
}

fn priority(level: u8) -> warren::Priority {
    match level {
        0 => warren::Priority::Low,
        1 => warren::Priority::Normal,
        2 => warren::Priority::High,
        _ => warren::Priority::Critical,
    }
}

fn key_error(event: &Event, field: &str, value: String, problem: &str) -> Error {
    Error::RoutingKey {
        type_name: event.full_name.clone(),
        field: field.to_owned(),
        value,
        problem: problem.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn a_routing_key_over_255_bytes_is_refused_naming_the_field_that_fills_it() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/build_rs");
        let catalog = Catalog::from_proto_dir(&dir).expect("the rich fixture compiles");
        let event = catalog.events().find(|e| e.full_name == "rich.v1.OrderCreated").expect("an event");
        let order = |shop: &str| {
            let json = format!(
                r#"{{"orderId": "1", "region": "REGION_EU", "shop": "{shop}", "express": true, "class": 3,
                    "lines": [{{"sku": "a", "quantity": 1}}]}}"#
            );
            catalog.parse_json("rich.v1.OrderCreated", &json).expect("the order parses")
        };
        let key = catalog.routing_key(event, &order("corner")).unwrap();
        assert_eq!(key, "order.eu.created.corner.true.3");
        let long = "s".repeat(250);
        match catalog.routing_key(event, &order(&long)) {
            Err(Error::RoutingKey { field, problem, value, .. }) => {
                assert_eq!(field, "shop");
                assert!(problem.contains("274 bytes long, over AMQP's 255"), "{problem}");
                assert_eq!(value.len(), 64, "the value shown is cut short");
            }
            other => panic!("expected a routing-key error, got {other:?}"),
        }
    }
}
