//! RPC over RabbitMQ: requests to the service's queue, replies over direct reply-to.
//!
//! Each bus has one long-lived reply consumer on `amq.rabbitmq.reply-to` (no-ack, as RabbitMQ requires),
//! on the same channel the requests are published on; replies are matched to calls by correlation id.
//! Requests go out without publisher confirms or `mandatory`: the reply is the confirmation. The caller declares
//! the service's queue before its first call, so a request is routed even when no server runs yet (it waits, and
//! expires with the call's deadline); a lost connection ends the reply consumer, which fails every waiting call at
//! once. A confirm per request would cost every call a broker round of work and a client wake-up and tell the
//! caller nothing the reply does not. Servers publish replies without `mandatory` (RabbitMQ ≤ 4.1 would return
//! every direct reply otherwise).
//!
//! - `client.rs`: [`RpcClient`] (used by generated clients), per-call [`CallOptions`], the reply path.
//! - `server.rs`: [`serve`] (used by generated servers), [`ServerOptions`], [`RpcContext`], [`Serving`].
//! - `encoded.rs`: [`crate::Bus::call_encoded`], a call to a method read from a contract at run time.
//! - `error.rs`: [`RpcError`] and the declared errors' traits.

mod client;
mod encoded;
mod error;
mod server;

pub(crate) use client::Replies;
pub use client::{CallOptions, Response, RpcClient};
pub use encoded::{EncodedCall, EncodedReply};
pub use error::{DeclaredError, Failure, RpcError, ServiceError};
pub use server::{
    DEFAULT_SERVER_CONCURRENCY, OTHER_METHODS, REPLY_TO_PREFIXES, RpcContext, ServerOptions, Serving, decode_request,
    encode_reply, serve, serve_options, serve_with, unimplemented,
};

/// A boxed future, as returned by generated dispatch code.
pub type BoxFuture<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send>>;
