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

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use tokio::sync::{Semaphore, oneshot};

use crate::bus::{Bus, durability};
use crate::codec::{self, Payload, WireFormat};
use crate::contract::{MethodSpec, ServiceSpec};
use crate::envelope::{self, Envelope, Properties};
use crate::error::{Error, Later, Result};
use crate::feed::{Feed, Handlers, Setup, Stop};
use crate::status::{Code, Status};
use crate::transport::{Delivery, Publish, ReplyPath, Settle};

/// A boxed future, as returned by generated dispatch code.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Reply>>>>;

struct Reply {
    code: i32,
    message: String,
    payload: Vec<u8>,
    /// The declared error type the payload holds, when the method failed with one.
    error_type: Option<String>,
    format: WireFormat,
}

/// The error of a call to a method whose contract declares errors: one of those, or a transport-level
/// [`Status`] (deadline exceeded, unavailable, invalid argument, internal, …).
///
/// ```
/// # #[derive(Debug)] enum AuthError { InvalidCredentials, AccountLocked }
/// # fn show(result: Result<(), warren::RpcError<AuthError>>) {
/// match result {
///     Ok(()) => {}
///     Err(warren::RpcError::Service(AuthError::InvalidCredentials)) => println!("wrong password"),
///     Err(warren::RpcError::Service(AuthError::AccountLocked)) => println!("locked"),
///     Err(warren::RpcError::Status(status)) => println!("call failed: {status}"),
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum RpcError<E> {
    /// One of the errors the contract declares for the method.
    Service(E),
    /// A failure outside the contract's errors.
    Status(Status),
}

impl<E> RpcError<E> {
    /// The status, when the failure is not one of the declared errors.
    pub fn status(&self) -> Option<&Status> {
        match self {
            RpcError::Service(_) => None,
            RpcError::Status(status) => Some(status),
        }
    }

    /// The status code; a declared error travels as `UNKNOWN`.
    pub fn code(&self) -> Code {
        match self {
            RpcError::Service(_) => Code::Unknown,
            RpcError::Status(status) => status.code(),
        }
    }
}

impl<E> From<Status> for RpcError<E> {
    fn from(status: Status) -> Self {
        RpcError::Status(status)
    }
}

impl<E: std::fmt::Display> std::fmt::Display for RpcError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RpcError::Service(error) => error.fmt(f),
            RpcError::Status(status) => status.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for RpcError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RpcError::Service(error) => Some(error),
            RpcError::Status(status) => Some(status),
        }
    }
}

/// The errors a method declares: the enum of an error message's oneof. Implemented by generated code.
pub trait ServiceError: std::fmt::Display + Sized + Send + 'static {
    /// The error message, whose oneof this enum is.
    type Message: Payload;
    /// Wraps the error in its message, to send it.
    fn into_message(self) -> Self::Message;
    /// The error a received message holds; `None` when it holds a case this side does not know.
    fn from_message(message: Self::Message) -> Option<Self>;
}

/// How a server handler failed, as it is sent back. Used by generated servers.
pub enum Failure {
    /// A transport-level status.
    Status(Status),
    /// A declared error, encoded in the request's format when the reply is sent.
    Service(Box<dyn DeclaredError>),
}

impl std::fmt::Debug for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status(status) => f.debug_tuple("Status").field(status).finish(),
            Failure::Service(error) => f.debug_tuple("Service").field(&error.describe()).finish(),
        }
    }
}

/// A declared error with its type erased, for [`Failure`].
pub trait DeclaredError: Send {
    /// Full proto name of the error message.
    fn type_name(&self) -> &'static str;
    /// Human-readable description.
    fn describe(&self) -> String;
    /// The error message, encoded.
    fn encode(self: Box<Self>, format: WireFormat) -> Result<Vec<u8>>;
}

impl<E: ServiceError> DeclaredError for E {
    fn type_name(&self) -> &'static str {
        E::Message::TYPE_NAME
    }

    fn describe(&self) -> String {
        self.to_string()
    }

    fn encode(self: Box<Self>, format: WireFormat) -> Result<Vec<u8>> {
        codec::encode(&self.into_message(), format)
    }
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        Failure::Status(status)
    }
}

impl<E: ServiceError> From<RpcError<E>> for Failure {
    fn from(error: RpcError<E>) -> Self {
        match error {
            RpcError::Service(error) => Failure::Service(Box::new(error)),
            RpcError::Status(status) => Failure::Status(status),
        }
    }
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
                let waiter = routes.lock().expect("pending calls").remove(id);
                match waiter {
                    Some(waiter) => {
                        let p = &delivery.properties;
                        let code = p.header_i64(envelope::STATUS_CODE).map_or(0, |c| c as i32);
                        let message = p.header_str(envelope::STATUS_MESSAGE).unwrap_or_default();
                        let error_type = p.header_str(envelope::ERROR_TYPE);
                        let format = p.format();
                        let payload = delivery.into_message().body;
                        let _ = waiter.send(Reply { code, message, payload, error_type, format });
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

/// Calls methods of one service. Used by generated clients.
#[derive(Debug, Clone)]
pub struct RpcClient {
    bus: Bus,
    service: &'static ServiceSpec,
    timeout: Option<Duration>,
}

impl RpcClient {
    /// A client for `service` over `bus`.
    pub fn new(bus: &Bus, service: &'static ServiceSpec) -> Self {
        RpcClient { bus: bus.clone(), service, timeout: None }
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
        let reply = self.call_raw(method, request).await?;
        match Code::from_i32(reply.code) {
            Code::Ok => decode_reply(method, &reply),
            code => Err(Status::new(code, reply.message)),
        }
    }

    /// [`RpcClient::call`] for a method that declares errors: a declared error arrives as
    /// [`RpcError::Service`], anything else as [`RpcError::Status`].
    pub async fn call_with_errors<Req: Payload, Resp: Payload, E: ServiceError>(
        &self,
        method: &MethodSpec,
        request: &Req,
    ) -> std::result::Result<Resp, RpcError<E>> {
        let reply = self.call_raw(method, request).await?;
        match (Code::from_i32(reply.code), &reply.error_type) {
            (Code::Ok, _) => Ok(decode_reply(method, &reply)?),
            (_, Some(error_type)) if error_type == E::Message::TYPE_NAME => {
                let message: E::Message = decode_reply(method, &reply)?;
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
            (code, _) => Err(RpcError::Status(Status::new(code, reply.message))),
        }
    }

    async fn call_raw<Req: Payload>(&self, method: &MethodSpec, request: &Req) -> std::result::Result<Reply, Status> {
        let timeout = self.timeout.or(method.timeout).unwrap_or(self.service.default_timeout);
        let started = Instant::now();
        if let Err(violations) = request.validate() {
            return Err(Status::invalid_argument(format!("{method}: {} is invalid: {violations}", Req::TYPE_NAME)));
        }
        let payload = request.encode_to_vec();
        let bus = &self.bus;
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
        bus.declare_queue(self.service.queue, durability(false)).await?;
        bus.check_size(payload.len())?;

        // The schema fingerprint goes on a sample of requests, as on events (see `Publishes::stamps_schema`). The
        // method's `Publishes` only samples: nothing counts it as published, so metrics snapshots leave it out.
        let mut envelope = Envelope::new(method.path, WireFormat::Protobuf, "", bus.inner.app_id);
        if bus.inner.metrics.publishes(method.path).stamps_schema(envelope.timestamp) {
            envelope.schema = Req::FINGERPRINT;
        }
        envelope.reply_to = Some(Arc::clone(&replies.path.address));
        // RabbitMQ refuses a per-message TTL above 2^32 - 1 ms (about 49 days) by closing the channel.
        envelope.expiration_ms = Some(timeout.as_millis().clamp(1, u128::from(u32::MAX)) as u64);
        let id = envelope.message_id.as_str().to_owned();
        let (tx, rx) = oneshot::channel();
        replies.pending.lock().expect("pending calls").insert(id.clone(), tx);
        let guard = PendingGuard { pending: &replies.pending, id: &id };
        let deadline_error =
            || Status::deadline_exceeded(format!("{method} got no reply within {timeout:?} (is a server running?)"));
        // Neither confirmed nor mandatory (see the module's docs): sent once lapin has written it.
        let publish = Publish { exchange: "", routing_key: self.service.queue, mandatory: false, confirm: false };
        let until = started.later(timeout);
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
        let reply = tokio::time::timeout_at(until, exchange).await.unwrap_or_else(|_| Err(deadline_error()))?;
        drop(guard);
        Ok(reply)
    }
}

fn decode_reply<M: Payload>(method: &MethodSpec, reply: &Reply) -> std::result::Result<M, Status> {
    codec::decode(reply.format, &reply.payload)
        .map_err(|e| Status::internal(format!("reply of {method} did not decode: {e}")))
}

/// Removes a call's entry when the call ends for any reason, so gave-up calls leave nothing behind.
struct PendingGuard<'a> {
    pending: &'a Pending,
    id: &'a str,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.pending.lock().expect("pending calls").remove(self.id);
    }
}

/// What a server handler knows about a request beyond its payload.
#[derive(Debug, Clone)]
pub struct RpcContext {
    method: String,
    caller: Option<String>,
    message_id: Option<String>,
    deadline: Option<Instant>,
    format: WireFormat,
}

impl RpcContext {
    /// The method's path, e.g. `/at.v1.IntSummator/IntSum`.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The calling service's name (its `app_id`).
    pub fn caller(&self) -> Option<&str> {
        self.caller.as_deref()
    }

    /// The request's unique id.
    pub fn message_id(&self) -> Option<&str> {
        self.message_id.as_deref()
    }

    /// When the caller stops waiting, as far as the request says; work past it is wasted.
    pub fn deadline(&self) -> Option<std::time::Instant> {
        self.deadline.map(Instant::into_std)
    }

    /// The request's wire format; the reply is sent in the same one.
    pub fn format(&self) -> WireFormat {
        self.format
    }
}

type Handler = dyn Fn(String, Vec<u8>, RpcContext) -> BoxFuture<std::result::Result<Vec<u8>, Failure>> + Send + Sync;

/// A running RPC server. Dropping it leaves it running; call [`Serving::stop`] to end it.
#[derive(Debug)]
pub struct Serving {
    stop: Stop,
    task: tokio::task::JoinHandle<()>,
    timeout: Duration,
}

impl Serving {
    /// Stops taking requests, lets running ones reply (up to the bus's operation timeout), and cancels the
    /// consumer; requests not yet taken stay queued for another server. Requests still being answered at the
    /// timeout are abandoned (their handlers dropped) and go back to the queue.
    pub async fn stop(mut self) {
        self.stop.stop(std::time::Instant::now().later(self.timeout));
        if tokio::time::timeout(self.timeout.saturating_add(Duration::from_millis(200)), &mut self.task).await.is_err()
        {
            self.task.abort();
        }
    }
}

const SERVER_CONCURRENCY: usize = 64;

/// Serves `service` on its queue with `handler`. Used by generated servers.
pub async fn serve<F>(bus: &Bus, service: &'static ServiceSpec, handler: F) -> Result<Serving>
where
    F: Fn(String, Vec<u8>, RpcContext) -> BoxFuture<std::result::Result<Vec<u8>, Failure>> + Send + Sync + 'static,
{
    let handler: Arc<Handler> = Arc::new(handler);
    let timeout = bus.config().operation_timeout;
    let setup: Setup = Arc::new(move |bus: Bus| {
        Box::pin(async move { bus.inner.transport.declare_queue(service.queue, &durability(false)).await })
    });
    let (stop, signal) = Stop::new();
    let mut feed =
        Feed::open(bus, service.queue, SERVER_CONCURRENCY as u16, service.name, setup, signal.clone()).await?;
    let transport = bus.inner.transport.clone();
    let limit = Arc::new(Semaphore::new(SERVER_CONCURRENCY));
    let app_id: Arc<str> = bus.config().service_name.as_str().into();
    let task = bus.inner.running.run(&stop, move |done| {
        tokio::spawn(async move {
            // The requests being answered, each in a task of its own: dropped with this task, so that a stop whose
            // deadline passes abandons them rather than leaving them running with the bus.
            let mut answering = Handlers::new(SERVER_CONCURRENCY);
            loop {
                let Some(delivery) = feed.next().await else { break }; // stopped
                let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
                    break;
                };
                let answer = answer(delivery, Arc::clone(&handler), transport.clone(), app_id.clone(), timeout, permit);
                answering.spawn(answer);
            }
            let until = signal.deadline().unwrap_or_else(|| std::time::Instant::now().later(timeout));
            let _ = tokio::time::timeout_at(until.into(), limit.acquire_many(SERVER_CONCURRENCY as u32)).await;
            // Past the deadline: requests still being answered are abandoned, and go back to the queue with the
            // consumer.
            drop(answering);
            feed.cancel().await;
            let _ = done.send(true);
        })
    });
    Ok(Serving { stop, task, timeout })
}

/// Answers one request: runs the handler, replies to the caller (if it asked for a reply), acknowledges.
async fn answer(
    mut delivery: Delivery,
    handler: Arc<Handler>,
    transport: crate::transport::Transport,
    app_id: Arc<str>,
    timeout: Duration,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    // The handler takes the request's body: moved out, unless the message is shared (never over AMQP).
    let body = match Arc::get_mut(&mut delivery.message) {
        Some(message) => std::mem::take(&mut message.body),
        None => delivery.body.clone(),
    };
    let p = &delivery.properties;
    let method = p.kind().unwrap_or_default().to_owned();
    let deadline = p.expiration_ms().map(|ms| Instant::now().later(Duration::from_millis(ms)));
    let context = RpcContext {
        method: method.clone(),
        caller: p.app_id().map(str::to_owned),
        message_id: p.message_id().map(str::to_owned),
        deadline,
        format: p.format(),
    };
    let format = context.format;
    let method_name = method.clone();
    // A handler that panics is answered `INTERNAL` at once, rather than left to time out.
    let handling = std::panic::AssertUnwindSafe(async { handler(method, body, context).await });
    let result = futures_util::FutureExt::catch_unwind(handling).await.unwrap_or_else(|_| {
        tracing::warn!(method = %method_name, correlation_id = ?p.correlation_id(), "an RPC handler panicked; answering INTERNAL");
        Err(Failure::Status(Status::internal("the handler panicked")))
    });
    if let (Some(reply_to), Some(correlation_id)) = (p.reply_to(), p.correlation_id()) {
        let mut headers = FieldTable::default();
        let (payload, code, message) = match result {
            Ok(payload) => (payload, 0, String::new()),
            Err(Failure::Status(status)) => (Vec::new(), status.code().as_i32(), status.message().to_owned()),
            Err(Failure::Service(error)) => {
                let (type_name, message) = (error.type_name(), error.describe());
                match error.encode(format) {
                    Ok(payload) => {
                        headers.insert(ShortString::from(envelope::ERROR_TYPE), envelope::long_string(type_name));
                        (payload, Code::Unknown.as_i32(), message)
                    }
                    Err(e) => (Vec::new(), Code::Internal.as_i32(), format!("{message} ({e})")),
                }
            }
        };
        let properties = BasicProperties::default()
            .with_correlation_id(ShortString::from(correlation_id))
            .with_app_id(ShortString::from(&*app_id))
            .with_content_type(ShortString::from(format.content_type()));
        // A success goes without headers: the caller reads a missing status as OK. A header table costs lapin a
        // map and its strings to build and to parse, on both sides of every call.
        let properties = if code == 0 && message.is_empty() {
            properties
        } else {
            headers.insert(ShortString::from(envelope::STATUS_CODE), AMQPValue::LongInt(code));
            headers.insert(ShortString::from(envelope::STATUS_MESSAGE), envelope::long_string(&message));
            properties.with_headers(headers)
        };
        // Not mandatory (RabbitMQ ≤ 4.1 would return every direct reply), not confirmed: direct
        // reply-to is at-most-once anyway. On the publishing connection, although the consuming one
        // (where the request came in) would wake one I/O thread per call instead of two: under a
        // resource alarm RabbitMQ blocks every connection that publishes, and a blocked consuming
        // connection would stall the acks that drain the queues.
        let publish = Publish { exchange: "", routing_key: reply_to, mandatory: false, confirm: false };
        // Worth sending while the caller waits, and for no longer than the operation timeout.
        let until = std::time::Instant::now().later(timeout);
        let until = deadline.map_or(until, |caller| until.min(caller.into_std()));
        // Boxed: each request's task holds this future, and tokio copies a task's future whole when spawning
        // it; inline, the publish made it 2,848 bytes, copied three times a call.
        let sent = Box::pin(transport.publish_until(publish, payload, properties.into(), Some(until))).await;
        if sent.is_err() {
            tracing::warn!(correlation_id, "reply could not be sent; the caller will time out");
        }
    }
    delivery.settle(Settle::Ack).await;
    drop(permit);
}

/// Decodes and validates a request, or answers `INVALID_ARGUMENT` naming the type, the field and the problem.
pub fn decode_request<M: Payload>(context: &RpcContext, payload: &[u8]) -> std::result::Result<M, Failure> {
    codec::decode::<M>(context.format, payload).map_err(|e| Failure::Status(Status::invalid_argument(e.to_string())))
}

/// The failure for a method the server does not have.
pub fn unimplemented(method: &str) -> Failure {
    Failure::Status(Status::unimplemented(format!("this server has no method \"{method}\"")))
}

/// Encodes a handler's result as the reply, in the request's format.
pub fn encode_reply<M: Payload, F: Into<Failure>>(
    result: std::result::Result<M, F>,
    format: WireFormat,
) -> std::result::Result<Vec<u8>, Failure> {
    let response = result.map_err(Into::into)?;
    codec::encode(&response, format).map_err(|e| Failure::Status(Status::internal(e.to_string())))
}
