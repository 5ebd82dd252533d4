//! Warren's runtime: typed publish, subscribe and RPC over RabbitMQ, driven by code that `warren-codegen`
//! generates from `.proto` contracts.
//!
//! ```no_run
//! # use warren::Bus;
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! # #[derive(Clone, PartialEq, prost::Message)] struct UserRegistered { #[prost(int64, tag = "1")] user_id: i64 }
//! # impl warren::__codegen::Event for UserRegistered { const SPEC: &'static warren::__codegen::EventSpec = &warren::__codegen::EventSpec {
//! #     type_name: "gametrade.v1.UserRegistered", routing_key: "user.registered", binding: "user.registered", priority: None,
//! #     retry: None, quorum: false, limit: None, format: warren::WireFormat::Protobuf,
//! #     exchange: warren::__codegen::ExchangeSpec { name: "gametrade.events", kind: warren::__codegen::ExchangeKind::Topic, durable: true, auto_delete: false } }; }
//! # impl warren::Payload for UserRegistered { const TYPE_NAME: &'static str = "gametrade.v1.UserRegistered"; }
//! let bus = Bus::from_env().await?;
//! // Generated: `UserRegistered::subscribe(&bus, "email-service")` is this:
//! let subscription = warren::Subscriber::<UserRegistered>::new(&bus, "email-service")
//!     .handle(|event: UserRegistered, _ctx| async move {
//!         println!("welcome, user {}", event.user_id);
//!         Ok::<_, warren::HandlerError>(())
//!     })
//!     .await?;
//! bus.publish(&UserRegistered { user_id: 123 }).await?; // returns once the broker confirmed it
//! # subscription.stop().await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - `bus/`: [`Bus`], the connection, topology declaration and shutdown (`mod.rs`), confirmed, mandatory
//!   publishing with [`PublishOptions`] (`publish.rs`), and [`Encoded`] messages from contracts read at run
//!   time (`encoded.rs`).
//! - `subscriber/`: [`Subscriber`] → [`Subscription`] and the consume loop (`mod.rs`), one delivery through its
//!   handler to an ack, a retry or a dead letter (`worker.rs`), [`Outcome`] (`policy.rs`),
//!   [`Context`] (`context.rs`).
//! - `feed.rs`: a consumer that survives reconnections, and the tasks handlers run in.
//! - `rpc/`: `client.rs` (one reply consumer per bus, [`CallOptions`]), `server.rs` ([`ServerOptions`],
//!   [`RpcContext`], [`Serving`]), `error.rs` ([`RpcError`]).
//! - `contract.rs`: the `'static` contract data generated code hands to the runtime.
//! - `topology.rs`: [`Topology`], what a bus declared (the rules that decide it are the `warren-topology`
//!   crate's, which the code generator's manifest shares), and [`TopologyMode`]: declare it, or only verify it.
//! - `envelope.rs`: the AMQP properties and headers Warren reads and writes.
//! - `headers.rs`: [`Headers`], [`HeaderValue`] and [`MessageProperties`], Warren's own metadata types.
//! - `transport/`: `amqp/` (RabbitMQ through lapin: `supervise.rs`, `publish.rs`, `consume.rs`, `probe.rs` (the
//!   broker's server properties, [`Bus::broker`]), and
//!   `properties.rs`, the only place lapin's property and header types meet Warren's); `confirms/` (publisher
//!   confirms, each matched to its publish: the publish path in `mod.rs`, who drives the confirms and the
//!   watchdog in `driver.rs`, the bookkeeping that decides outcomes in `state.rs`, the publishes in flight in
//!   `slots.rs`); `memory/` (the in-memory broker: the handle, its state and topology in `mod.rs`, publishing
//!   and routing in `publish.rs`, TTL and dead-lettering in `queue.rs`, consumers and acks in `consume.rs`,
//!   direct reply-to in `reply.rs`); `ensure.rs` (what a bus needs on the broker, declared or, in
//!   [`TopologyMode::Verify`], checked passively, on either transport).
//! - `inspect.rs`: [`QueueReader`] and [`Taken`], reading a queue message by message for operators' tools
//!   ([`Bus::watch`], [`Bus::read_queue`], [`Bus::replay`] of dead letters).
//! - `registry.rs`: who serves what, live: servers announce themselves ([`Bus::services`]).
//! - `middleware.rs`: [`Middleware`], the layers around publish, consume, RPC call and RPC serve, and what
//!   each hook sees ([`middleware`]'s context types).
//! - `trace.rs`: [`TraceContext`], W3C trace context in `traceparent`/`tracestate` headers, the context of
//!   the handler or RPC method running now, and the `tracing` spans of messages sent and handled;
//!   `trace/otel.rs` (feature `otel`): those spans in OpenTelemetry, parented and identified by the W3C ids.
//! - `prometheus/` (feature `prometheus`): `prometheus::PrometheusLayer`, a layer counting traffic into a
//!   Prometheus registry (`mod.rs`), the gauges it samples from the buses it watches at each scrape, bus
//!   health and queue depth (`sampled.rs`), and `prometheus::serve`, its `/metrics` endpoint (`http.rs`).
//! - `metrics.rs`, `health.rs`, `backoff.rs`, `codec.rs`: counters and history, connection state, retry
//!   waits, wire formats and validation.
//! - `config.rs`, `error.rs`, `status.rs`: settings (password never shown), errors, RPC status codes.
//! - `signal.rs`: [`terminated`], the SIGINT/SIGTERM a service stops on.
//!
//! Generated code uses only [`__codegen`], so the runtime can change inside without regenerating.

mod backoff;
mod bus;
mod codec;
mod config;
mod contract;
mod envelope;
mod error;
mod feed;
mod headers;
mod health;
mod inspect;
mod metrics;
pub mod middleware;
#[cfg(feature = "prometheus")]
pub mod prometheus;
mod registry;
mod rpc;
mod signal;
mod status;
mod subscriber;
pub mod topic;
mod topology;
mod trace;
mod transport;

pub use bus::{Bus, Encoded, PublishOptions, RawMessage};
pub use codec::{CONTENT_TYPE_JSON, CONTENT_TYPE_PROTOBUF, Payload, Schema, Violation, Violations, WireFormat};
pub use config::{BusConfig, DEFAULT_URL, parse_duration};
pub use contract::{DecodeError, Event, Inbound, Priority, Task};
pub use error::{BrokerError, Error, Result};
pub use headers::{HeaderValue, Headers, MAX_HEADER_NAME_LEN, MessageProperties};
pub use health::{BrokerInfo, Health};
pub use inspect::{MAX_PATTERN_LEN, QueueReader, QueueStats, Taken};
pub use metrics::{Counters, MAX_HISTORY, MetricsSnapshot, OTHER_TYPES, SubscriberMetrics};
pub use middleware::{Middleware, Refusal};
pub use registry::{ANNOUNCEMENT_TYPE, REGISTRY_QUEUE, ServerInstance};
pub use rpc::{
    CallOptions, DEFAULT_SERVER_CONCURRENCY, EncodedCall, EncodedReply, OTHER_METHODS, REPLY_TO_PREFIXES, Response,
    RpcClient, RpcContext, RpcError, ServerOptions, ServiceError, Serving,
};
pub use signal::terminated;
pub use status::{Code, Status};
pub use subscriber::{
    Context, HandlerError, MAX_CONCURRENCY, Outcome, RETRY_LADDER, RetryPolicy, Subscriber, Subscription,
};
pub use topology::{Argument, Binding, Exchange, ExchangeKind, QueueLimit, QueueSettings, Topology, TopologyMode};
pub use trace::{TRACEPARENT, TRACESTATE, TraceContext};

/// What generated code uses. Not a stable API for hand-written code.
#[doc(hidden)]
pub mod __codegen {
    /// The version of this API, which `warren-codegen` writes code for (its `RUNTIME_API_VERSION`).
    pub const API_VERSION: u32 = 6;

    /// Stops the build of generated code written for another version of this API.
    pub const fn check_version(generated_for: u32) {
        if generated_for != API_VERSION {
            panic!(
                "this code was generated for another version of the warren runtime; regenerate it with the \
                 warren-codegen that matches (in this workspace: `cargo xtask regen`)"
            );
        }
    }

    pub use crate::codec::{Payload, Schema, Violations, WireFormat, join};
    pub use crate::contract::{
        DEFAULT_EXCHANGE, DecodeError, Event, EventSpec, ExchangeKind, ExchangeSpec, Inbound, MethodSpec, QueueLimit,
        ServiceSpec, Task, TaskSpec, decode_as, enum_word, fingerprint_of, key_word,
    };
    pub use crate::rpc::{
        BoxFuture, DeclaredError, Failure, RpcClient, ServiceError, decode_request, encode_reply, serve, serve_options,
        serve_with, unimplemented,
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn code_generated_for_another_runtime_api_is_told_to_regenerate() {
        super::__codegen::check_version(super::__codegen::API_VERSION);
        let refused = std::panic::catch_unwind(|| super::__codegen::check_version(super::__codegen::API_VERSION + 1));
        let message = *refused.expect_err("another version is refused").downcast::<&str>().unwrap();
        assert!(message.contains("cargo xtask regen"), "{message}");
    }
}
