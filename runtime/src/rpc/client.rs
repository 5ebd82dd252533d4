//! The calling side: one reply consumer per bus, requests matched to replies by correlation id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::RpcError;
use super::error::ServiceError;
use crate::bus::Bus;
use crate::codec::{self, Outgoing, Payload, WireFormat};
use crate::contract::{MethodSpec, ServiceSpec};
use crate::envelope::{self, Envelope, IdText, MessageId, Properties};
use crate::error::{Error, Later, Result};
use crate::headers::Headers;
use crate::middleware;
use crate::status::{Code, Status};
use crate::trace;
use crate::transport::QueueSettings;
use crate::transport::{Publish, ReplyPath};

/// Calls waiting for their replies, by request id (a reply's correlation id): an id held inline, so a call
/// neither checks its text nor allocates a copy of it to be found again.
type Pending = Arc<Mutex<HashMap<MessageId, oneshot::Sender<Reply>>>>;

pub(super) struct Reply {
    pub(super) code: i32,
    pub(super) message: String,
    pub(super) payload: Vec<u8>,
    /// The declared error type the payload holds, when the method failed with one.
    pub(super) error_type: Option<String>,
    pub(super) format: WireFormat,
    /// The application's headers on the reply (Warren's own left out).
    pub(super) headers: Headers,
}

/// The bus's RPC reply path and the calls waiting on it.
pub(crate) struct Replies {
    path: ReplyPath,
    pending: Pending,
    /// Cleared when the reply consumer ends (its connection was lost): the next call opens a new path.
    alive: Arc<std::sync::atomic::AtomicBool>,
}

impl Replies {
    /// Fails every call still waiting, with `status`.
    pub(crate) fn fail_pending(&self, status: &Status) {
        for (_, waiter) in self.pending.lock().expect("pending calls").drain() {
            let _ = waiter.send(Reply {
                code: status.code().as_i32(),
                message: status.message().to_owned(),
                payload: Vec::new(),
                error_type: None,
                format: WireFormat::Protobuf,
                headers: Headers::new(),
            });
        }
    }
}

impl Drop for Replies {
    fn drop(&mut self) {
        // In memory the broker holds the reply path's sender, and the reader task (`open`) ends only once it is
        // gone; over AMQP the reply consumer ends with its connection.
        if let crate::transport::Canceller::Memory(canceller) = &self.path.replies.cancel {
            canceller.cancel();
        }
    }
}

impl Replies {
    async fn open(bus: &Bus) -> Result<Replies> {
        let mut path = bus.inner.transport.reply_path().await?;
        let pending: Pending = Arc::default();
        let routes = Arc::clone(&pending);
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let still = Arc::clone(&alive);
        let mut replies = std::mem::replace(&mut path.replies.stream, Box::pin(futures_util::stream::empty()));
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = replies.next().await {
                let Some(id) = delivery.properties.correlation_id() else { continue };
                // Not one of this path's ids (a plain AMQP server's reply with some other correlation id): no
                // call waits for it.
                let waiter = MessageId::parse(id).and_then(|key| routes.lock().expect("pending calls").remove(&key));
                match waiter {
                    Some(waiter) => {
                        let p = &delivery.properties;
                        let code = p
                            .header_i64(envelope::STATUS_CODE)
                            .map_or(0, |c| i32::try_from(c).unwrap_or(Code::Unknown.as_i32()));
                        let message = p.header_str(envelope::STATUS_MESSAGE).unwrap_or_default().to_owned();
                        let error_type = p.header_str(envelope::ERROR_TYPE).map(str::to_owned);
                        let format = p.format();
                        let headers = p.headers().map(Headers::without_reserved).unwrap_or_default();
                        let payload = delivery.into_message().body;
                        let _ = waiter.send(Reply { code, message, payload, error_type, format, headers });
                    }
                    None => tracing::debug!(correlation_id = id, "reply for a call that already gave up; dropped"),
                }
            }
            // The reply path is gone: fail every waiting call now rather than at its deadline.
            still.store(false, std::sync::atomic::Ordering::Relaxed);
            routes.lock().expect("pending calls").clear();
        });
        Ok(Replies { path, pending, alive })
    }
}

/// Settings of one call, for the generated clients' `<method>_with`:
///
/// ```
/// # use std::time::Duration;
/// let options = warren::CallOptions::new().timeout(Duration::from_millis(500)).header("tenant", "eu-1");
/// // let response = client.int_sum_with(IntSumRequest { a: 2, b: 3 }, options).await?;
/// // println!("{} (served by {:?})", response.message.sum, response.headers.get_str("served-by"));
/// # assert_eq!(options.headers.get_str("tenant"), Some("eu-1"));
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CallOptions {
    /// The call's deadline instead of the client's (or the contract's).
    pub timeout: Option<Duration>,
    /// Headers to send with the request; the server reads them with [`crate::RpcContext::headers`]. Names
    /// starting with `x-warren-` or `warren-` are Warren's own and are refused (`INVALID_ARGUMENT`, nothing sent).
    pub headers: Headers,
}

impl CallOptions {
    /// The defaults: the client's deadline, no headers.
    pub fn new() -> Self {
        CallOptions::default()
    }

    /// This call's deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sends header `name` with `value`.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<crate::HeaderValue>) -> Self {
        self.headers.insert(name, value);
        self
    }
}

/// A reply with the headers the server sent along ([`crate::RpcContext::reply_header`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Response<T> {
    /// The reply.
    pub message: T,
    /// The server's headers (Warren's own left out).
    pub headers: Headers,
}

impl<T> Response<T> {
    /// The reply, without its headers.
    pub fn into_inner(self) -> T {
        self.message
    }
}

/// Calls methods of one service. Used by generated clients.
#[derive(Debug, Clone)]
pub struct RpcClient {
    pub(super) bus: Bus,
    pub(super) service: ServiceSpec,
    pub(super) timeout: Option<Duration>,
}

/// No per-call settings.
static DEFAULTS: CallOptions = CallOptions { timeout: None, headers: Headers::EMPTY };

/// A layered call's `after_call`, told once: with its status, or `CANCELLED` when its future is dropped first.
struct CallHeard<'a> {
    layers: &'a crate::middleware::Layers,
    service: &'a str,
    path: &'a str,
    started: Instant,
    armed: bool,
}

impl CallHeard<'_> {
    fn tell(&mut self, code: Code) {
        self.armed = false;
        let called =
            middleware::Called { service: self.service, method: self.path, code, elapsed: self.started.elapsed() };
        self.layers.after(|layer| layer.after_call(&called));
    }
}

impl Drop for CallHeard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.tell(Code::Cancelled);
        }
    }
}

impl RpcClient {
    /// A client for `service` over `bus`.
    pub fn new(bus: &Bus, service: &'static ServiceSpec) -> Self {
        RpcClient { bus: bus.clone(), service: *service, timeout: None }
    }

    /// Uses `timeout` as every call's deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Calls `method` with `request` and waits for the typed reply, or a [`Status`] error, within the deadline.
    /// A request that breaks its contract's validation rules is not sent: `INVALID_ARGUMENT`.
    pub async fn call<Req: Payload, Resp: Payload>(
        &self,
        method: &MethodSpec,
        request: &Req,
    ) -> std::result::Result<Resp, Status> {
        let reply = self.call_raw(method, request, &DEFAULTS).await?;
        plain_outcome(method, &reply)
    }

    /// [`RpcClient::call`] with per-call options, returning the reply's headers too.
    pub async fn call_with<Req: Payload, Resp: Payload>(
        &self,
        method: &MethodSpec,
        request: &Req,
        options: &CallOptions,
    ) -> std::result::Result<Response<Resp>, Status> {
        let reply = self.call_raw(method, request, options).await?;
        let message = plain_outcome(method, &reply)?;
        Ok(Response { message, headers: reply.headers })
    }

    /// [`RpcClient::call`] for a method that declares errors: a declared error arrives as
    /// [`RpcError::Service`], anything else as [`RpcError::Status`].
    pub async fn call_with_errors<Req: Payload, Resp: Payload, E: ServiceError>(
        &self,
        method: &MethodSpec,
        request: &Req,
    ) -> std::result::Result<Resp, RpcError<E>> {
        let reply = self.call_raw(method, request, &DEFAULTS).await?;
        declared_outcome(method, &reply)
    }

    /// [`RpcClient::call_with_errors`] with per-call options, returning the reply's headers too.
    pub async fn call_with_errors_with<Req: Payload, Resp: Payload, E: ServiceError>(
        &self,
        method: &MethodSpec,
        request: &Req,
        options: &CallOptions,
    ) -> std::result::Result<Response<Resp>, RpcError<E>> {
        let reply = self.call_raw(method, request, options).await?;
        let message = declared_outcome(method, &reply)?;
        Ok(Response { message, headers: reply.headers })
    }

    async fn call_raw<Req: Payload>(
        &self,
        method: &MethodSpec,
        request: &Req,
        options: &CallOptions,
    ) -> std::result::Result<Reply, Status> {
        self.exchange(Target { path: method.path, timeout: method.timeout }, request, options).await
    }

    /// Sends `request` to `target` and waits for the reply, through the bus's layers when it has any.
    pub(super) async fn exchange<Req: Outgoing>(
        &self,
        target: Target,
        request: &Req,
        options: &CallOptions,
    ) -> std::result::Result<Reply, Status> {
        if self.bus.inner.config.middleware.get().is_none() {
            return self.send_call(target, request, options.timeout, options.headers.clone()).await;
        }
        // Boxed: calls without layers carry no room for the layers' state.
        Box::pin(self.call_layered(target, request, options)).await
    }

    /// [`RpcClient::send_call`] between the layers' hooks: each may change the headers or refuse with a
    /// status, and each hears the call's status (a refusal included).
    async fn call_layered<Req: Outgoing>(
        &self,
        method: Target,
        request: &Req,
        options: &CallOptions,
    ) -> std::result::Result<Reply, Status> {
        let layers = &self.bus.inner.config.middleware;
        let (service, path) = (self.service.name, method.path);
        let started = Instant::now();
        let mut headers = options.headers.clone();
        let mut call = middleware::Call { service, method: path, headers: &mut headers };
        let refused = layers.before(|layer| layer.before_call(&mut call), Status::internal);
        // Told once: with the call's status, or `CANCELLED` when the caller drops the call first.
        let mut heard = CallHeard { layers, service, path, started, armed: true };
        let result = match refused {
            Ok(()) => self.send_call(method, request, options.timeout, headers).await,
            Err((_, status)) => Err(status),
        };
        heard.tell(match &result {
            Ok(reply) => Code::from_i32(reply.code),
            Err(status) => status.code(),
        });
        result
    }

    /// Sends the request with `headers` and waits for the reply, within the call's deadline.
    async fn send_call<Req: Outgoing>(
        &self,
        method: Target,
        request: &Req,
        timeout: Option<Duration>,
        mut headers: Headers,
    ) -> std::result::Result<Reply, Status> {
        let timeout = timeout.or(self.timeout).or(method.timeout).unwrap_or(self.service.default_timeout);
        let started = Instant::now();
        if let Err(error) = headers.check_application() {
            return Err(Status::invalid_argument(format!("{method}: {error}")));
        }
        if let Err(violations) = request.validate() {
            let type_name = request.type_name();
            return Err(Status::invalid_argument(format!("{method}: {type_name} is invalid: {violations}")));
        }
        let format = request.format();
        let payload = request.encode(format).map_err(|e| Status::invalid_argument(format!("{method}: {e}")))?;
        let bus = &self.bus;
        bus.check_size(payload.len())?;
        let until = started.later(timeout);
        // Within the call's deadline too (each wait on the broker in there has the longer operation timeout).
        // Ready at once, as it nearly always is, it registers no timer.
        let ready = tokio::time::timeout_at(until, async {
            let replies = {
                let mut current = bus.inner.replies.lock().await;
                match current.as_ref() {
                    Some(replies) if replies.alive.load(std::sync::atomic::Ordering::Relaxed) => Arc::clone(replies),
                    _ => {
                        let replies = Arc::new(Replies::open(bus).await?);
                        *current = Some(Arc::clone(&replies));
                        replies
                    }
                }
            };
            // Declared by callers too, so requests wait in the queue for a server that starts late, instead of
            // being returned as unroutable; each request expires with its deadline, so none piles up.
            bus.declare_queue(self.service.queue, QueueSettings::requests(self.service.quorum)).await?;
            Ok::<_, Error>(replies)
        });
        let replies = match ready.await {
            Ok(ready) => ready?,
            Err(_) => return Err(deadline_error(method, timeout)),
        };

        // The schema fingerprint goes on a sample of requests, as on events (see `Publishes::stamps_schema`). The
        // method's `Publishes` only samples: nothing counts it as published, so metrics snapshots leave it out.
        let mut envelope = Envelope::new(method.path, format, "", bus.inner.app_id);
        if bus.inner.metrics.publishes(method.path).stamps_schema(envelope.timestamp) {
            envelope.schema = request.fingerprint();
        }
        envelope.reply_to = Some(Arc::clone(&replies.path.address));
        // What is left of the call's time once the reply path is open and the queue declared: the TTL bounds
        // the request's wait in the queue, the absolute deadline tells the server how long its caller waits,
        // time in the queue included. RabbitMQ refuses a TTL above 2^32 - 1 ms (about 49 days) by closing the
        // channel.
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(deadline_error(method, timeout));
        }
        envelope.expiration_ms = Some(left.as_millis().clamp(1, u128::from(u32::MAX)) as u64);
        headers.insert(envelope::DEADLINE, envelope::unix_millis_after(left));
        // After the layers, so that a `traceparent` set by the caller or a layer is kept.
        // Held, not entered, until the reply: the call's time is the span's.
        let (_, _span) = trace::outgoing_span(
            &trace::About {
                operation: trace::Operation::Call,
                destination: self.service.queue,
                routing_key: self.service.queue,
                message_id: Some(IdText::Id(&envelope.message_id)),
                conversation_id: envelope.correlation_id.as_deref().map(IdText::Text),
                rpc_method: Some(method.path),
            },
            &mut headers,
            bus.inner.config.trace_context,
        );
        envelope.headers = Some(headers);
        let id = envelope.message_id;
        let (tx, rx) = oneshot::channel();
        replies.pending.lock().expect("pending calls").insert(id, tx);
        let guard = PendingGuard { pending: &replies.pending, id };

        // Neither confirmed nor mandatory (see the module's docs): sent once lapin has written it.
        let publish = Publish { exchange: "", routing_key: self.service.queue, mandatory: false, confirm: false };
        let exchange = async {
            match replies.path.send_request(publish, payload, Properties::from(envelope)).await {
                Ok(()) => {}
                Err(Error::Closed) => return Err(Status::cancelled(format!("{method}: the bus is shutting down"))),
                Err(error) => return Err(Status::unavailable(format!("{method}: request not sent: {error}"))),
            }
            match rx.await {
                Ok(reply) => Ok(reply),
                // A call that raced a shutdown (its reply path closed under it) was cancelled, like the calls
                // shutdown found waiting.
                Err(_) if bus.is_closed() => Err(Status::cancelled(format!("{method}: the bus is shutting down"))),
                Err(_) => Err(Status::unavailable(format!("{method}: the reply channel closed"))),
            }
        };
        // One timer for the whole call: the send and the reply share the call's deadline.
        let reply =
            tokio::time::timeout_at(until, exchange).await.unwrap_or_else(|_| Err(deadline_error(method, timeout)))?;
        drop(guard);
        Ok(reply)
    }
}

/// Where a call goes: a method of the client's service.
#[derive(Debug, Clone, Copy)]
pub(super) struct Target {
    /// `/<service>/<method>`.
    pub(super) path: &'static str,
    /// The method's own deadline, when its contract sets one.
    pub(super) timeout: Option<Duration>,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.path)
    }
}

/// The status of a call that got no reply within `timeout`.
fn deadline_error(method: impl std::fmt::Display, timeout: Duration) -> Status {
    Status::deadline_exceeded(format!("{method} got no reply within {timeout:?} (is a server running?)"))
}

/// A reply of a method without declared errors: the response, or the status.
fn plain_outcome<Resp: Payload>(method: &MethodSpec, reply: &Reply) -> std::result::Result<Resp, Status> {
    match Code::from_i32(reply.code) {
        Code::Ok => decode_reply(method, reply),
        code => Err(Status::new(code, reply.message.clone())),
    }
}

/// A reply of a method with declared errors: the response, one of the errors, or the status.
fn declared_outcome<Resp: Payload, E: ServiceError>(
    method: &MethodSpec,
    reply: &Reply,
) -> std::result::Result<Resp, RpcError<E>> {
    match (Code::from_i32(reply.code), &reply.error_type) {
        (Code::Ok, _) => Ok(decode_reply(method, reply)?),
        (_, Some(error_type)) if error_type == E::Message::TYPE_NAME => {
            let message: E::Message = decode_reply(method, reply)?;
            match E::from_message(message) {
                Some(error) => Err(RpcError::Service(error)),
                None => Err(RpcError::Status(Status::new(
                    Code::Unknown,
                    format!(
                        "{method} failed with an error this client does not know (regenerate it): {}",
                        reply.message
                    ),
                ))),
            }
        }
        (code, _) => Err(RpcError::Status(Status::new(code, reply.message.clone()))),
    }
}

fn decode_reply<M: Payload>(method: &MethodSpec, reply: &Reply) -> std::result::Result<M, Status> {
    codec::decode(reply.format, &reply.payload)
        .map_err(|e| Status::internal(format!("reply of {method} did not decode: {e}")))
}

/// Removes a call's entry when the call ends for any reason, so gave-up calls leave nothing behind.
struct PendingGuard<'a> {
    pending: &'a Pending,
    id: MessageId,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.pending.lock().expect("pending calls").remove(&self.id);
    }
}
