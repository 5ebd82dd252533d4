//! The encoded call path: a method read from a contract at run time (the `warren` CLI, the gateway, through
//! `warren-reflect`), called the way generated clients call: the same envelope, deadline, layers and trace
//! context.

use std::time::Duration;

use super::client::{RpcClient, Target};
use crate::bus::{Bus, Encoded};
use crate::codec::WireFormat;
use crate::contract::{ServiceSpec, intern};
use crate::headers::Headers;
use crate::status::{Code, Status};

use super::CallOptions;

/// An RPC method as its contract declares it, for [`Bus::call_encoded`].
///
/// ```
/// # use std::time::Duration;
/// let call = warren::EncodedCall::new("at.v1.IntSummator", "at.int_summator", "IntSum", Duration::from_secs(5));
/// assert_eq!(call.path(), "/at.v1.IntSummator/IntSum");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EncodedCall {
    /// The service's full proto name, e.g. `at.v1.IntSummator`.
    pub service: String,
    /// The queue its servers consume.
    pub queue: String,
    /// The method's name, e.g. `IntSum`.
    pub method: String,
    /// The call's deadline unless [`CallOptions::timeout`] sets one: the method's, or its service's default.
    pub timeout: Duration,
    /// Whether the queue is a quorum queue (the contract's `queue_type: QUORUM`): callers declare it too, and
    /// RabbitMQ refuses a declaration of another type. See [`EncodedCall::quorum`].
    pub quorum: bool,
}

impl EncodedCall {
    /// Method `method` of `service`, served from `queue`, with deadline `timeout`.
    pub fn new(
        service: impl Into<String>,
        queue: impl Into<String>,
        method: impl Into<String>,
        timeout: Duration,
    ) -> Self {
        EncodedCall { service: service.into(), queue: queue.into(), method: method.into(), timeout, quorum: false }
    }

    /// The same call to a service whose queue is a quorum queue when `quorum` (the contract's
    /// `queue_type: QUORUM`; `warren-reflect` reads it from the contract).
    pub fn quorum(mut self, quorum: bool) -> Self {
        self.quorum = quorum;
        self
    }

    /// `/<service>/<method>`, the request's AMQP `type`.
    pub fn path(&self) -> String {
        format!("/{}/{}", self.service, self.method)
    }
}

/// What a server answered to [`Bus::call_encoded`]: the response, or one of the method's declared errors.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct EncodedReply {
    /// `None`: `body` is the response. `Some(type)`: the method failed with one of its declared errors, and
    /// `body` is that error message, of this full proto name.
    pub error_type: Option<String>,
    /// The server's description of a declared error; empty for a response.
    pub message: String,
    /// How `body` is encoded (the request's format).
    pub format: WireFormat,
    /// The payload.
    pub body: Vec<u8>,
    /// The application's headers on the reply.
    pub headers: Headers,
}

impl Bus {
    /// Calls `call` with `request` and waits for the reply within the deadline, as a generated client does;
    /// the request goes in its own format and the reply comes back in it. A failure other than a declared error
    /// is the call's [`Status`] (`DEADLINE_EXCEEDED`, `UNAVAILABLE`, a server's own status, …).
    ///
    /// For tools that read contracts at run time: the request is sent as it is, so check it against the
    /// contract's rules first (`warren-reflect` does). Generated clients are the typed way.
    pub async fn call_encoded(
        &self,
        call: &EncodedCall,
        request: &Encoded,
        options: &CallOptions,
    ) -> Result<EncodedReply, Status> {
        let kept = |name: &str| intern(name).map_err(|e| Status::invalid_argument(e.to_string()));
        let (name, queue) = (kept(&call.service)?, kept(&call.queue)?);
        let service = ServiceSpec { name, queue, default_timeout: call.timeout, fingerprint: "", quorum: call.quorum };
        let target = Target { path: kept(&call.path())?, timeout: None };
        let outgoing = request.outgoing().map_err(|e| Status::invalid_argument(e.to_string()))?;
        let client = RpcClient { bus: self.clone(), service, timeout: None };
        let reply = client.exchange(target, &outgoing, options).await?;
        let code = Code::from_i32(reply.code);
        if code != Code::Ok && reply.error_type.is_none() {
            return Err(Status::new(code, reply.message));
        }
        Ok(EncodedReply {
            error_type: if code == Code::Ok { None } else { reply.error_type },
            message: reply.message,
            format: reply.format,
            body: reply.payload,
            headers: reply.headers,
        })
    }
}
