//! The AsyncAPI 3.0 document: one channel per event (its exchange and routing key) and per RPC service (its
//! queue, plus one for replies), send and receive operations with AMQP bindings, and protobuf payload schemas.

use askama::Template;

use super::{Docs, proto_text, summary};
use crate::manifest::Consumer;

/// Version of the AMQP bindings the document uses.
const AMQP_BINDING_VERSION: &str = "0.3.0";
/// Indentation of a payload schema's proto text inside its YAML block scalar.
const SCHEMA_INDENT: usize = 8;

#[derive(Template)]
#[template(path = "asyncapi.yaml", escape = "none")]
struct AsyncApi {
    header: String,
    description: String,
    binding_version: String,
    channels: Vec<Channel>,
    operations: Vec<Operation>,
    messages: Vec<MessageDoc>,
    schemas: Vec<Schema>,
}

/// A channel; every text field is a YAML scalar, already quoted.
struct Channel {
    key: String,
    address: String,
    title: String,
    description: String,
    /// (key in the channel, `$ref` of the component message).
    messages: Vec<(String, String)>,
    /// Routing-key templates: (name, description), both quoted.
    parameters: Vec<(String, String)>,
    binding: Option<ChannelBinding>,
}

enum ChannelBinding {
    /// Published to an exchange with a routing key.
    Exchange { name: String, kind: String, durable: bool, auto_delete: bool },
    /// Sent to a queue through the default exchange.
    Queue { name: String },
}

struct Operation {
    key: String,
    action: &'static str,
    channel: String,
    title: String,
    description: String,
    messages: Vec<String>,
    reply: Option<Reply>,
    /// `key: value` lines of the operation's AMQP binding.
    bindings: Vec<String>,
}

struct Reply {
    channel: String,
    messages: Vec<String>,
}

struct MessageDoc {
    key: String,
    name: String,
    title: String,
    summary: String,
    description: String,
    payload: String,
    message_type: Option<String>,
}

struct Schema {
    key: String,
    /// `application/vnd.google.protobuf;version=3` (or 2).
    format: String,
    /// The proto text, each line indented for the block scalar.
    text: String,
}

pub(super) fn render(docs: &Docs<'_>, generated: &str) -> askama::Result<String> {
    let manifest = docs.manifest;
    let mut api = AsyncApi {
        header: format!("# {generated}"),
        description: yaml(
            "Every event and RPC service of the Warren contracts: where each message is published (exchange and \
             routing key) or sent (queue), how, and its protobuf payload. Messages are protobuf-encoded \
             (content type application/x-protobuf); the AMQP `type` property names the message (for RPC \
             requests, `/<service>/<method>`).",
        ),
        binding_version: yaml(AMQP_BINDING_VERSION),
        channels: Vec::new(),
        operations: Vec::new(),
        messages: Vec::new(),
        schemas: Vec::new(),
    };
    let mut payloads = std::collections::BTreeSet::new();
    for (name, event) in &manifest.events {
        let comment = docs.comment(name);
        let short = short_name(name);
        let message_ref = format!("#/components/messages/{name}");
        let channel_ref = format!("#/channels/{name}");
        let in_channel = format!("{channel_ref}/messages/{short}");
        let exchange = manifest.exchanges.get(&event.exchange);
        api.channels.push(Channel {
            key: name.clone(),
            address: yaml(if event.kind.uses_routing_key() { &event.routing_key } else { &event.exchange }),
            title: yaml(name),
            description: yaml(&with_default(&comment, &format!("Event {name}."))),
            messages: vec![(short.to_owned(), yaml(&message_ref))],
            parameters: event
                .routing_key
                .split('.')
                .filter_map(|w| w.strip_prefix('{').and_then(|w| w.strip_suffix('}')))
                .map(|field| {
                    (field.to_owned(), yaml(&format!("Filled from field `{field}` of the event when it is published.")))
                })
                .collect(),
            binding: Some(ChannelBinding::Exchange {
                name: yaml(&event.exchange),
                kind: event.kind.as_str().to_owned(),
                durable: exchange.is_none_or(|e| e.durable),
                auto_delete: exchange.is_some_and(|e| e.auto_delete),
            }),
        });
        let mut publish_bindings = vec!["deliveryMode: 2".to_owned(), "mandatory: true".to_owned()];
        if let Some(priority) = event.priority {
            publish_bindings.push(format!("priority: {priority}"));
        }
        publish_bindings.push("timestamp: true".to_owned());
        api.operations.push(Operation {
            key: format!("{name}.publish"),
            action: "send",
            channel: yaml(&channel_ref),
            title: yaml(&format!("Publish {short}")),
            description: yaml(&format!(
                "`bus.publish(&{short} {{ .. }})`: persistent, mandatory and confirmed, to exchange \"{}\".",
                event.exchange
            )),
            messages: vec![yaml(&in_channel)],
            reply: None,
            bindings: publish_bindings,
        });
        let queue = format!("{}.{name}", crate::manifest::GROUP);
        let retries = manifest.queues.get(&queue).map(|q| q.retry_queues.join("`, `")).unwrap_or_default();
        let retries =
            if retries.is_empty() { "not retried".to_owned() } else { format!("retried through `{retries}`") };
        api.operations.push(Operation {
            key: format!("{name}.subscribe"),
            action: "receive",
            channel: yaml(&channel_ref),
            title: yaml(&format!("Subscribe to {short}")),
            description: yaml(&format!(
                "`{short}::subscribe(&bus, group)`: each group consumes durable queue `{queue}`, acknowledging \
                 after its handler succeeds; failures are {retries} (under the contract's or the default retry \
                 policy), then dead-lettered to `{queue}.dlq`."
            )),
            messages: vec![yaml(&in_channel)],
            reply: None,
            bindings: vec!["ack: true".to_owned()],
        });
        api.messages.push(MessageDoc {
            key: name.clone(),
            name: yaml(short),
            title: yaml(name),
            summary: yaml(&summary(&comment)),
            description: yaml(&comment),
            payload: yaml(&format!("#/components/schemas/{name}")),
            message_type: Some(yaml(name)),
        });
        payloads.insert(name.clone());
    }
    for (name, service) in &manifest.services {
        let comment = docs.comment(name);
        let channel_ref = format!("#/channels/{name}");
        let replies_ref = format!("#/channels/{name}.replies");
        let mut requests = Vec::new();
        let mut responses = Vec::new();
        for (method, m) in &service.methods {
            let request_key = format!("{name}.{method}.request");
            let response_key = format!("{name}.{method}.response");
            let method_comment = docs.method_comment(name, method);
            requests.push((format!("{method}.request"), yaml(&format!("#/components/messages/{request_key}"))));
            responses.push((format!("{method}.response"), yaml(&format!("#/components/messages/{response_key}"))));
            let request_ref = yaml(&format!("{channel_ref}/messages/{method}.request"));
            let response_ref = yaml(&format!("{replies_ref}/messages/{method}.response"));
            for (suffix, action, verb) in [("call", "send", "Call"), ("serve", "receive", "Serve")] {
                api.operations.push(Operation {
                    key: format!("{name}.{method}.{suffix}"),
                    action,
                    channel: yaml(&channel_ref),
                    title: yaml(&format!("{verb} {}.{method}", short_name(name))),
                    description: yaml(&with_default(&method_comment, &format!("rpc {method}."))),
                    messages: vec![request_ref.clone()],
                    reply: Some(Reply { channel: yaml(&replies_ref), messages: vec![response_ref.clone()] }),
                    bindings: vec![
                        format!("expiration: {}", m.timeout_ms),
                        "deliveryMode: 2".to_owned(),
                        "mandatory: true".to_owned(),
                    ],
                });
            }
            api.messages.push(MessageDoc {
                key: request_key,
                name: yaml(&format!("{method}.request")),
                title: yaml(&format!("{name}.{method} request ({})", m.request)),
                summary: yaml(&summary(&method_comment)),
                description: yaml(&method_comment),
                payload: yaml(&format!("#/components/schemas/{}", m.request)),
                message_type: Some(yaml(&format!("/{name}/{method}"))),
            });
            api.messages.push(MessageDoc {
                key: response_key,
                name: yaml(&format!("{method}.response")),
                title: yaml(&format!("{name}.{method} response ({})", m.response)),
                summary: yaml(&format!("The reply to {method}.")),
                description: yaml(&format!(
                    "The reply to {method}. A failure carries headers `warren-status` (a gRPC code) and \
                     `warren-message`, with an empty body; a declared error also carries `warren-error` naming its \
                     type, and its body is the encoded error. A reply without `warren-status` succeeded."
                )),
                payload: yaml(&format!("#/components/schemas/{}", m.response)),
                message_type: None,
            });
            payloads.insert(m.request.clone());
            payloads.insert(m.response.clone());
        }
        let queue = manifest.queues.get(&service.queue);
        debug_assert!(queue.is_some_and(|q| matches!(&q.consumer, Consumer::Service(s) if s == name)));
        api.channels.push(Channel {
            key: name.clone(),
            address: yaml(&service.queue),
            title: yaml(name),
            description: yaml(&with_default(&comment, &format!("Service {name}."))),
            messages: requests,
            parameters: Vec::new(),
            binding: Some(ChannelBinding::Queue { name: yaml(&service.queue) }),
        });
        api.channels.push(Channel {
            key: format!("{name}.replies"),
            address: "null".to_owned(),
            title: yaml(&format!("{name} replies")),
            description: yaml(
                "Replies travel over RabbitMQ's direct reply-to: each caller's address is in the request's \
                 `reply_to` property.",
            ),
            messages: responses,
            parameters: Vec::new(),
            binding: None,
        });
    }
    for name in payloads {
        if let Some(message) = docs.contracts.pool.get_message_by_name(&name) {
            let text = proto_text::schema(docs.sources, &message);
            let version = if message.parent_file().syntax() == prost_reflect::Syntax::Proto2 { 2 } else { 3 };
            let format = format!("application/vnd.google.protobuf;version={version}");
            api.schemas.push(Schema { key: name, format, text: indent(&text, SCHEMA_INDENT) });
        }
    }
    api.render()
}

/// `full.name.Short` → `Short`.
fn short_name(full_name: &str) -> &str {
    full_name.rsplit('.').next().unwrap_or(full_name)
}

fn with_default(comment: &str, default: &str) -> String {
    if comment.trim().is_empty() { default.to_owned() } else { comment.to_owned() }
}

/// A YAML double-quoted scalar (JSON string syntax, which YAML reads the same).
fn yaml(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `text` with every non-empty line indented by `by` spaces.
fn indent(text: &str, by: usize) -> String {
    let lines: Vec<String> =
        text.trim_end().lines().map(|l| if l.is_empty() { String::new() } else { format!("{:by$}{l}", "") }).collect();
    lines.join("\n")
}
