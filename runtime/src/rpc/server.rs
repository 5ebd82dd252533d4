//! The serving side: requests from the service's queue, each answered in a task of its own.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::BoxFuture;
use super::error::Failure;
use crate::bus::Bus;
use crate::codec::{self, Payload, WireFormat};
use crate::contract::ServiceSpec;
use crate::envelope;
use crate::error::{Later, Result};
use crate::feed::{Feed, Handlers, Setup, Stop};
use crate::headers::{Headers, MessageProperties};
use crate::middleware::{self, Layers, Middleware};
use crate::status::{Code, Status};
use crate::trace::{self, TraceContext};
use crate::transport::{ConsumeOn, Delivery, Publish, Settle};
use crate::transport::{Need, QueueSettings};

/// What a server handler knows about a request beyond its payload: who called, the caller's deadline and
/// headers, and a place for headers to send back with the reply. Cheap to clone: it shares the request.
///
/// A handler (of a generated service trait) that checks a caller's token, says which replica answered, and
/// gives up early when the caller will not wait long enough:
///
/// ```
/// use std::time::{Duration, Instant};
/// use warren::{RpcContext, RpcError, Status};
///
/// fn admit<E>(ctx: &RpcContext) -> Result<(), RpcError<E>> {
///     if ctx.headers().get_str("authorization") != Some("Bearer s3cret") {
///         return Err(RpcError::Status(Status::unauthenticated("a bearer token is required")));
///     }
///     ctx.reply_header("served-by", "replica-1").map_err(|e| RpcError::Status(Status::internal(e.to_string())))?;
///     // The caller's own deadline, carried with the request: time spent queued counts against it.
///     if ctx.deadline().is_some_and(|deadline| deadline < Instant::now() + Duration::from_millis(50)) {
///         return Err(RpcError::Status(Status::deadline_exceeded("not enough time left to do this well")));
///     }
///     Ok(())
/// }
/// ```
#[derive(Debug, Clone)]
pub struct RpcContext {
    request: Arc<crate::transport::Message>,
    deadline: Option<Instant>,
    format: WireFormat,
    /// Headers the handler adds to its reply.
    reply_headers: Arc<std::sync::Mutex<Headers>>,
    trace: TraceContext,
}

impl RpcContext {
    /// The method's path, e.g. `/at.v1.IntSummator/IntSum`.
    pub fn method(&self) -> &str {
        self.request.properties.kind().unwrap_or_default()
    }

    /// The calling service's name (its `app_id`).
    pub fn caller(&self) -> Option<&str> {
        self.request.properties.app_id()
    }

    /// The request's unique id.
    pub fn message_id(&self) -> Option<&str> {
        self.request.properties.message_id()
    }

    /// When the caller stops waiting: the absolute deadline the caller sent (`x-warren-deadline`, so time the
    /// request spent in the queue counts), else its TTL from receipt; `None` when the request says neither.
    /// Work past it is wasted: a request found past it is answered `DEADLINE_EXCEEDED` without running the
    /// handler, and a handler still running at it is abandoned (its future dropped). Across hosts it relies on their clocks agreeing, as gRPC's deadlines do not (they travel
    /// as durations): keep clocks synchronised (NTP) or give calls room.
    pub fn deadline(&self) -> Option<std::time::Instant> {
        self.deadline.map(Instant::into_std)
    }

    /// The request's wire format; the reply is sent in the same one.
    pub fn format(&self) -> WireFormat {
        self.format
    }

    /// The headers the caller sent ([`crate::CallOptions::header`]), Warren's own included. Empty when none.
    pub fn headers(&self) -> &Headers {
        self.request.properties.headers().unwrap_or(&crate::headers::NO_HEADERS)
    }

    /// The method's trace context: in the caller's trace, a child of the caller's span (the request's
    /// `traceparent`), or a new trace when the request came without a valid one. The same as
    /// [`TraceContext::current`] while the method runs.
    pub fn trace(&self) -> &TraceContext {
        &self.trace
    }

    /// Sends header `name` with `value` on the reply, whatever it turns out to be (the caller reads it from
    /// [`crate::Response::headers`]). Warren's own names (`x-warren-*`, `warren-*`) are refused.
    pub fn reply_header(&self, name: impl Into<String>, value: impl Into<crate::HeaderValue>) -> Result<()> {
        let header = Headers::new().with(name, value);
        header.check_application()?; // its name, and any nested in its value
        self.reply_headers.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).append(header);
        Ok(())
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
    pub async fn stop(self) {
        let timeout = self.timeout;
        self.stop_within(timeout).await;
    }

    /// [`Serving::stop`] with an explicit deadline: requests still being answered when it passes are
    /// abandoned, and go back to the queue, marked redelivered, for another server.
    pub async fn stop_within(mut self, deadline: Duration) {
        self.stop.stop(std::time::Instant::now().later(deadline));
        // A little past the deadline: the task itself cancels its consumer once the deadline passes.
        if tokio::time::timeout(deadline.saturating_add(Duration::from_millis(200)), &mut self.task).await.is_err() {
            self.task.abort();
            let _ = (&mut self.task).await;
        }
    }
}

/// How many requests a server answers at once unless told otherwise.
pub const DEFAULT_SERVER_CONCURRENCY: u16 = 64;

/// How an RPC server runs: what the generated server's `concurrency` and `middleware` set.
///
/// ```
/// let options = warren::ServerOptions::new().concurrency(8);
/// assert_eq!(options.concurrency, 8);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerOptions {
    /// How many requests are answered at once (at least one; default [`DEFAULT_SERVER_CONCURRENCY`]), each in
    /// a task of its own. The broker sends no more than that before they are acknowledged.
    pub concurrency: u16,
    /// Layers around this server's requests, after the bus's.
    middleware: Layers,
    /// `reply_to` prefixes accepted besides direct reply-to and server-named queues (see
    /// [`ServerOptions::allow_reply_to`]).
    reply_to: Vec<String>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions { concurrency: DEFAULT_SERVER_CONCURRENCY, middleware: Layers::default(), reply_to: Vec::new() }
    }
}

impl ServerOptions {
    /// The defaults: [`DEFAULT_SERVER_CONCURRENCY`] requests at once, no layers of its own.
    pub fn new() -> Self {
        ServerOptions::default()
    }

    /// Answers up to `n` requests at once (at least one).
    pub fn concurrency(mut self, n: u16) -> Self {
        self.concurrency = n;
        self
    }

    /// Adds `layer` around this server's requests, after the bus's layers ([`crate::BusConfig::middleware`])
    /// and those added before it: it may refuse a request, which is then answered with its status without
    /// running the handler (see [`crate::Middleware`]).
    pub fn middleware(mut self, layer: impl Middleware) -> Self {
        self.middleware = self.middleware.with(Arc::new(layer));
        self
    }

    /// Also replies to requests whose `reply_to` starts with `prefix`.
    ///
    /// A server publishes its reply to the request's `reply_to` through the default exchange, that is into
    /// the queue of that name: left open, any caller could make the server write into any queue its user may
    /// write to (another service's work queue, say). So by default a server replies only to RabbitMQ's direct
    /// reply-to addresses (`amq.rabbitmq.reply-to…`, what Warren's clients use) and to server-named queues
    /// (`amq.gen-…`, a client's exclusive reply queue). A request with any other `reply_to` is not handled
    /// and gets no reply: it is acknowledged, logged as a warning, and counted in
    /// [`crate::MetricsSnapshot::rpc_reply_to_refused`]. Callers of other clients that reply to queues of their
    /// own naming are let in with their prefix (e.g. `"legacy-client.replies."`); an empty prefix lets in any
    /// `reply_to`, as before this rule.
    ///
    /// ```
    /// let options = warren::ServerOptions::new().allow_reply_to("legacy-client.replies.");
    /// # let _ = options;
    /// ```
    pub fn allow_reply_to(mut self, prefix: impl Into<String>) -> Self {
        self.reply_to.push(prefix.into());
        self
    }
}

/// The `reply_to` prefixes a server always replies to: RabbitMQ's direct reply-to pseudo-queue (and the
/// addresses it hands out, `amq.rabbitmq.reply-to.<token>`), and server-named queues (`amq.gen-…`), which only
/// the connection that declared them may consume.
pub const REPLY_TO_PREFIXES: [&str; 2] = ["amq.rabbitmq.reply-to", "amq.gen-"];

/// Whether a server replies to `reply_to`: one of [`REPLY_TO_PREFIXES`], or one of the `allowed` prefixes.
fn reply_to_allowed(reply_to: &str, allowed: &[String]) -> bool {
    REPLY_TO_PREFIXES.iter().any(|prefix| reply_to.starts_with(prefix))
        || allowed.iter().any(|prefix| reply_to.starts_with(prefix.as_str()))
}

/// `text` cut to at most `max` bytes (at a character boundary), for logging a value a caller chose.
fn bounded(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Serves `service` on its queue with `handler`, answering up to [`DEFAULT_SERVER_CONCURRENCY`] requests at
/// once. Used by generated servers.
pub async fn serve<F>(bus: &Bus, service: &'static ServiceSpec, handler: F) -> Result<Serving>
where
    F: Fn(String, Vec<u8>, RpcContext) -> BoxFuture<std::result::Result<Vec<u8>, Failure>> + Send + Sync + 'static,
{
    serve_options(bus, service, ServerOptions::new(), handler).await
}

/// [`serve`], answering up to `concurrency` requests at once (at least one). Used by generated servers.
pub async fn serve_with<F>(bus: &Bus, service: &'static ServiceSpec, concurrency: u16, handler: F) -> Result<Serving>
where
    F: Fn(String, Vec<u8>, RpcContext) -> BoxFuture<std::result::Result<Vec<u8>, Failure>> + Send + Sync + 'static,
{
    serve_options(bus, service, ServerOptions::new().concurrency(concurrency), handler).await
}

/// [`serve`] with `options`. Used by generated servers.
pub async fn serve_options<F>(
    bus: &Bus,
    service: &'static ServiceSpec,
    options: ServerOptions,
    handler: F,
) -> Result<Serving>
where
    F: Fn(String, Vec<u8>, RpcContext) -> BoxFuture<std::result::Result<Vec<u8>, Failure>> + Send + Sync + 'static,
{
    let concurrency = options.concurrency.max(1);
    let layers = bus.config().middleware.then(&options.middleware);
    let handler: Arc<Handler> = Arc::new(handler);
    let timeout = bus.config().operation_timeout;
    let setup: Setup = Arc::new(move |bus: Bus| {
        Box::pin(async move {
            let config = bus.config();
            let requests = QueueSettings::requests(service.quorum);
            let durable = QueueSettings::plain(false);
            let mut needs = vec![Need::Queue(service.queue, &requests)];
            // Verifying, a missing registry is reported with the service's queue, not only logged by the
            // announcements (declaring, they declare it).
            if config.topology == crate::TopologyMode::Verify && !config.registry_heartbeat.is_zero() {
                needs.push(Need::Queue(crate::REGISTRY_QUEUE, &durable));
            }
            bus.inner.transport.ensure(config, &needs).await
        })
    });
    let (stop, signal) = Stop::new();
    // On the publishing connection, where the replies go: one connection's I/O per call (see `ConsumeOn`).
    let on = ConsumeOn::Publishing;
    let mut feed = Feed::open(bus, service.queue, concurrency, service.name, setup, signal.clone(), on).await?;
    crate::registry::announce(bus, service, signal.clone());
    let transport = bus.inner.transport.clone();
    let limit = Arc::new(Semaphore::new(usize::from(concurrency)));
    let app_id: Arc<str> = bus.config().service_name.as_str().into();
    let reply_to: Arc<[String]> = options.reply_to.into();
    let refused = bus.inner.metrics.reply_to_refused();
    let known = Known::default();
    let task = bus.inner.running.run(&stop, move |done| {
        tokio::spawn(async move {
            // The requests being answered, each in a task of its own: dropped with this task, so that a stop whose
            // deadline passes abandons them rather than leaving them running with the bus.
            let mut answering = Handlers::new(usize::from(concurrency));
            loop {
                let Some(delivery) = feed.next().await else { break }; // stopped
                let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
                    break;
                };
                let server = Answering {
                    handler: Arc::clone(&handler),
                    transport: transport.clone(),
                    app_id: app_id.clone(),
                    timeout,
                    layers: layers.clone(),
                    reply_to: Arc::clone(&reply_to),
                    refused: Arc::clone(&refused),
                    service: service.name,
                    known: Arc::clone(&known),
                };
                let answer = answer(delivery, server, permit);
                answering.spawn(answer);
            }
            let until = signal.deadline().unwrap_or_else(|| std::time::Instant::now().later(timeout));
            let _ = tokio::time::timeout_at(until.into(), limit.acquire_many(u32::from(concurrency))).await;
            // Past the deadline: requests still being answered are abandoned, and go back to the queue with the
            // consumer.
            answering.abort_all().await;
            feed.cancel().await;
            let _ = done.send(true);
        })
    });
    Ok(Serving { stop, task, timeout })
}

/// When the caller of a request stops waiting: its absolute deadline, else its TTL from now.
fn caller_deadline(p: &crate::envelope::Received) -> Option<Instant> {
    match p.header_i64(envelope::DEADLINE) {
        Some(millis) => Some(Instant::now().later(envelope::until_unix_millis(millis))),
        None => p.expiration_ms().map(|ms| Instant::now().later(Duration::from_millis(ms))),
    }
}

/// Tells the layers of a request abandoned before it was answered, on drop.
struct ServeHeard<'a> {
    layers: &'a Layers,
    method: &'a str,
    metric_method: &'a str,
    caller: Option<&'a str>,
    headers: &'a Headers,
    started: Instant,
    armed: bool,
}

impl Drop for ServeHeard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let served = middleware::Served {
            method: self.method,
            metric_method: self.metric_method,
            caller: self.caller,
            headers: self.headers,
            code: Code::Cancelled,
            elapsed: self.started.elapsed(),
        };
        self.layers.after(|layer| layer.after_serve(&served));
    }
}

/// What answering a request takes from its server.
struct Answering {
    handler: Arc<Handler>,
    transport: crate::transport::Transport,
    app_id: Arc<str>,
    timeout: Duration,
    /// The bus's layers, then the server's.
    layers: Layers,
    /// `reply_to` prefixes allowed besides [`REPLY_TO_PREFIXES`].
    reply_to: Arc<[String]>,
    /// Counts requests refused for their `reply_to`.
    refused: Arc<std::sync::atomic::AtomicU64>,
    /// The service's full name.
    service: &'static str,
    /// The methods its handler has answered.
    known: Known,
}

/// Answers one request: runs the handler (unless a layer refuses the request), replies to the caller (if it
/// asked for a reply), acknowledges. A request whose caller's deadline has passed is answered
/// `DEADLINE_EXCEEDED` without running the handler.
async fn answer(mut delivery: Delivery, server: Answering, permit: tokio::sync::OwnedSemaphorePermit) {
    let Answering { handler, transport, app_id, timeout, layers, reply_to, refused, service, known } = server;
    if let Some(to) = delivery.properties.reply_to()
        && !reply_to_allowed(to, &reply_to)
    {
        // Not handled either: the request is suspect, and its caller cannot learn the result anyway.
        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            reply_to = bounded(to, 64),
            method = bounded(delivery.properties.kind().unwrap_or_default(), 128),
            caller = bounded(delivery.properties.app_id().unwrap_or_default(), 64),
            "refusing an RPC request whose reply_to is neither direct reply-to nor a server-named queue \
             (ServerOptions::allow_reply_to lets more in); not handled, no reply sent"
        );
        delivery.settle(Settle::Ack).await;
        drop(permit);
        return;
    }
    // The handler takes the request's body: moved out, unless the message is shared (never over AMQP).
    let body = match Arc::get_mut(&mut delivery.message) {
        Some(message) => std::mem::take(&mut message.body),
        None => delivery.body.clone(),
    };
    let p = &delivery.properties;
    let method = p.kind().unwrap_or_default().to_owned();
    let deadline = caller_deadline(p);
    let reply_headers = Arc::new(std::sync::Mutex::new(Headers::new()));
    let format = p.format();
    let late = deadline.is_some_and(|deadline| deadline <= Instant::now());
    // Only with layers (and only the time is kept while the handler runs: each request's task holds this future).
    let started = layers.get().map(|_| Instant::now());
    let headers = || p.headers().unwrap_or(&crate::headers::NO_HEADERS);
    let refused = match started {
        Some(_) if !late => {
            let request = middleware::Request { method: &method, caller: p.app_id(), headers: headers() };
            layers.before(|layer| layer.before_serve(&request), Status::internal).err()
        }
        _ => None,
    };
    let ran = !late && refused.is_none();
    // Heard as `CANCELLED` should the request be abandoned (a stop past its deadline drops this future), so that
    // what the layers count adds up.
    let mut abandoned = started.map(|started| ServeHeard {
        layers: &layers,
        method: &method,
        metric_method: served_as(&known, service, &method, None),
        caller: p.app_id(),
        headers: headers(),
        started,
        armed: true,
    });
    let result = if late {
        tracing::debug!(method, correlation_id = ?p.correlation_id(), "the caller's deadline passed in the queue; not running the handler");
        Err(Failure::Status(Status::deadline_exceeded(format!(
            "{method}: the caller's deadline passed before a server took the request"
        ))))
    } else if let Some((layer, status)) = refused {
        tracing::debug!(method, layer, code = %status.code(), "a layer refused the request; not running the handler");
        Err(Failure::Status(status))
    } else {
        let method_name = method.clone();
        let (message_id, conversation_id) = p.ids();
        let (trace, span) = trace::incoming_span(
            &trace::About {
                operation: trace::Operation::Serve,
                destination: &delivery.routing_key,
                routing_key: &delivery.routing_key,
                message_id,
                conversation_id,
                rpc_method: Some(&method),
            },
            p.headers(),
        );
        let context = RpcContext {
            request: Arc::clone(&delivery.message),
            deadline,
            format,
            reply_headers: Arc::clone(&reply_headers),
            trace: trace.clone(),
        };
        // What the method publishes or calls continues its trace, and its events are in its span.
        let handling = trace::scope(trace, async { handler(method_name, body, context).await });
        let handling = tracing::Instrument::instrument(handling, span.clone());
        // A handler that panics is answered `INTERNAL` at once, rather than left to time out.
        let handling = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(handling));
        // One still running at the caller's deadline is abandoned, as tonic abandons a handler at its
        // `grpc-timeout`: nobody waits for its answer, and a handler that never returns must not hold one of the
        // server's `concurrency` slots for good. A request without a deadline (a plain AMQP client's) has none.
        let finished = match deadline {
            Some(until) => tokio::time::timeout_at(until, handling).await,
            None => Ok(handling.await),
        };
        let result = match finished {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => {
                tracing::warn!(method = %method, correlation_id = ?p.correlation_id(), "an RPC handler panicked; answering INTERNAL");
                Err(Failure::Status(Status::internal("the handler panicked")))
            }
            Err(_) => {
                tracing::warn!(method = %method, correlation_id = ?p.correlation_id(), "an RPC handler was still running at the caller's deadline; abandoned");
                Err(Failure::Status(Status::deadline_exceeded(format!(
                    "{method}: the handler was still running at the caller's deadline"
                ))))
            }
        };
        match &result {
            Ok(_) => {}
            Err(Failure::Status(status)) => _ = span.record("error.type", status.code().as_str()),
            Err(Failure::Service(error)) => _ = span.record("error.type", error.type_name()),
        }
        result
    };
    if let Some(abandoned) = abandoned.as_mut() {
        abandoned.armed = false; // heard below, with the status
    }
    if let Some(started) = started {
        let code = match &result {
            Ok(_) => Code::Ok,
            Err(Failure::Status(status)) => status.code(),
            Err(Failure::Service(_)) => Code::Unknown,
        };
        let served = middleware::Served {
            method: &method,
            metric_method: served_as(&known, service, &method, ran.then_some(&result)),
            caller: p.app_id(),
            headers: headers(),
            code,
            elapsed: started.elapsed(),
        };
        layers.after(|layer| layer.after_serve(&served));
    }
    if let (Some(reply_to), Some(correlation_id)) = (p.reply_to(), p.correlation_id()) {
        let mut headers = std::mem::take(&mut *reply_headers.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        let (payload, code, message) = match result {
            Ok(payload) => (payload, 0, String::new()),
            Err(Failure::Status(status)) => (Vec::new(), status.code().as_i32(), status.message().to_owned()),
            Err(Failure::Service(error)) => {
                let (type_name, message) = (error.type_name(), error.describe());
                match error.encode(format) {
                    Ok(payload) => {
                        headers.insert(envelope::ERROR_TYPE, type_name);
                        (payload, Code::Unknown.as_i32(), message)
                    }
                    Err(e) => (Vec::new(), Code::Internal.as_i32(), format!("{message} ({e})")),
                }
            }
        };
        // A success goes without a status: the caller reads a missing status as OK. A header table costs lapin a
        // map and its strings to build and to parse, on both sides of every call.
        if code != 0 || !message.is_empty() {
            headers.insert(envelope::STATUS_CODE, code);
            headers.insert(envelope::STATUS_MESSAGE, message);
        }
        let properties = MessageProperties::default()
            .with_correlation_id(correlation_id)
            .with_app_id(&*app_id)
            .with_content_type(format.content_type())
            .with_headers(headers);
        // Not mandatory (RabbitMQ ≤ 4.1 would return every direct reply), not confirmed: direct
        // reply-to is at-most-once anyway. On the publishing connection, where the request came in (the
        // server consumes there): under a resource alarm RabbitMQ stops reading every connection that
        // publishes, and the consuming one must keep taking the acks that drain the subscribers' queues.
        let publish = Publish { exchange: "", routing_key: reply_to, mandatory: false, confirm: false };
        // Within the operation timeout, even past the caller's deadline by this host's clock: a caller whose
        // clock runs behind still waits (and a late request learns why at once). The publish is not confirmed,
        // so the timeout only matters when the connection is down or blocked.
        let until = std::time::Instant::now().later(timeout);
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
    Failure::Status(Status::unimplemented(no_such_method(method)))
}

fn no_such_method(method: &str) -> String {
    format!("this server has no method \"{method}\"")
}

/// The methods a server's handler has answered (not as a method it does not have): what a request its handler
/// did not run for (late, or refused by a layer) may be counted under.
type Known = Arc<std::sync::RwLock<std::collections::HashSet<Box<str>>>>;

/// The method a served request is counted under (`Served::metric_method`, which Prometheus labels by): its own when
/// the server has it, else [`OTHER_METHODS`]. The request's `type` is the caller's to choose, and a label per
/// made-up method would grow the metrics without bound. `result` is the handler's, when it ran; a request it
/// did not run for keeps its method when the handler has answered that method before.
fn served_as<'a>(
    known: &Known,
    service: &str,
    method: &'a str,
    result: Option<&std::result::Result<Vec<u8>, Failure>>,
) -> &'a str {
    /// More methods than any service has: a handler that answers every name is not believed past it.
    const MAX_KNOWN: usize = 1024;
    let own = method.strip_prefix('/').and_then(|rest| rest.strip_prefix(service)).is_some_and(|m| m.starts_with('/'));
    if !own {
        return OTHER_METHODS;
    }
    let is_known = known.read().unwrap_or_else(|poisoned| poisoned.into_inner()).contains(method);
    match result {
        _ if is_known => method,
        Some(Err(Failure::Status(status)))
            if status.code() == Code::Unimplemented && status.message() == no_such_method(method) =>
        {
            OTHER_METHODS
        }
        Some(_) => {
            let mut known = known.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            if known.len() >= MAX_KNOWN {
                return OTHER_METHODS;
            }
            known.insert(method.into());
            method
        }
        None => OTHER_METHODS,
    }
}

/// The method a request for a method its server does not have is counted under.
pub const OTHER_METHODS: &str = "(other methods)";

/// Encodes a handler's result as the reply, in the request's format.
pub fn encode_reply<M: Payload, F: Into<Failure>>(
    result: std::result::Result<M, F>,
    format: WireFormat,
) -> std::result::Result<Vec<u8>, Failure> {
    let response = result.map_err(Into::into)?;
    codec::encode(&response, format).map_err(|e| Failure::Status(Status::internal(e.to_string())))
}
