//! W3C trace context (`traceparent`, `tracestate`) carried in AMQP headers, the context of the handler or RPC
//! method running now, and the `tracing` spans Warren opens after OpenTelemetry's messaging conventions.
//!
//! Built into the runtime rather than a [`crate::Middleware`] layer: a layer's hooks are synchronous and cannot
//! wrap the handler's future, which is what continuing a trace from inside a handler takes. An application
//! replaces what Warren sends by setting `traceparent` itself (in [`crate::PublishOptions`],
//! [`crate::CallOptions`], or from a layer's `before_publish`/`before_call`): Warren then leaves it as it is.
//!
//! With the `otel` feature, `otel.rs` ties these spans to the W3C ids in OpenTelemetry (see there).

use std::fmt;
use std::sync::Arc;

use crate::envelope::IdText;
use crate::headers::Headers;

#[cfg(feature = "otel")]
mod otel;

/// The header carrying a message's trace and its sender's span (W3C Trace Context).
pub const TRACEPARENT: &str = "traceparent";
/// The header carrying vendors' trace data alongside `traceparent` (W3C Trace Context).
pub const TRACESTATE: &str = "tracestate";

/// The length of a version-00 `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`.
const TRACEPARENT_LEN: usize = 55;
/// W3C's limit for `tracestate`; a longer one is dropped rather than passed on.
const TRACESTATE_MAX: usize = 512;

tokio::task_local! {
    /// The trace context of the handler or RPC method this task runs.
    static CURRENT: TraceContext;
}

/// A W3C trace context: which trace a message belongs to and which span it comes from.
///
/// Warren writes it as `traceparent` (and `tracestate`, when there is one) on every event and task published
/// and every RPC request, and reads it from every delivery and request: a handler's context is a child of the
/// publisher's span, in the same trace; a message without a valid `traceparent` (a plain AMQP client's) starts
/// a new trace. While a handler or an RPC method runs, [`TraceContext::current`] gives its context, and what it
/// publishes or calls continues the trace.
///
/// With the `otel` feature and `tracing-opentelemetry`'s layer installed, the ids are OpenTelemetry's: a
/// handler's context is its span's (parented on the sender's span), and what is sent carries its own span's.
///
/// ```
/// use warren::TraceContext;
///
/// let parent = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
/// let child = parent.child();
/// assert_eq!(child.trace_id(), parent.trace_id());
/// assert_eq!(child.parent_id(), Some(parent.span_id()));
/// assert!(child.to_header().starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
/// assert!(TraceContext::parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent_id: Option<[u8; 8]>,
    flags: u8,
    tracestate: Option<Arc<str>>,
}

impl TraceContext {
    /// Reads a `traceparent` value, strictly as W3C says: version `00`, lowercase hex, a trace id and a span
    /// id that are not all zeros. `None` for anything else (a message carrying it starts a new trace).
    pub fn parse(traceparent: &str) -> Option<TraceContext> {
        let b = traceparent.as_bytes();
        if b.len() != TRACEPARENT_LEN || &b[..3] != b"00-" || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let mut trace_id = [0; 16];
        let mut span_id = [0; 8];
        let mut flags = [0; 1];
        unhex(&b[3..35], &mut trace_id)?;
        unhex(&b[36..52], &mut span_id)?;
        unhex(&b[53..55], &mut flags)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceContext { trace_id, span_id, parent_id: None, flags: flags[0], tracestate: None })
    }

    /// A new trace: random ids, no parent, sampled.
    pub fn new_root() -> TraceContext {
        TraceContext {
            trace_id: nonzero(|| fastrand::u128(..)).to_be_bytes(),
            span_id: new_span_id(),
            parent_id: None,
            flags: 0x01,
            tracestate: None,
        }
    }

    /// A span in the same trace, child of this one: a new span id, this one's as its parent, the same flags
    /// and `tracestate`.
    pub fn child(&self) -> TraceContext {
        TraceContext { span_id: new_span_id(), parent_id: Some(self.span_id), ..self.clone() }
    }

    /// The context of the handler or RPC method running in this task, if any. A task it spawns has none
    /// (carry it over with a clone, if it should continue the trace).
    pub fn current() -> Option<TraceContext> {
        CURRENT.try_with(TraceContext::clone).ok()
    }

    /// The `traceparent` value: `00-<trace id>-<span id>-<flags>`, in lowercase hex.
    pub fn to_header(&self) -> String {
        let mut out = [0u8; TRACEPARENT_LEN];
        out[..3].copy_from_slice(b"00-");
        hex(&self.trace_id, &mut out[3..35]);
        out[35] = b'-';
        hex(&self.span_id, &mut out[36..52]);
        out[52] = b'-';
        hex(&[self.flags], &mut out[53..55]);
        // Only ASCII was written.
        String::from_utf8(out.to_vec()).unwrap_or_default()
    }

    /// The trace's id.
    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    /// This span's id.
    pub fn span_id(&self) -> [u8; 8] {
        self.span_id
    }

    /// The parent span's id: the sender's span for a handler's or an RPC method's context; `None` for a new
    /// trace, or a context read straight from a header.
    pub fn parent_id(&self) -> Option<[u8; 8]> {
        self.parent_id
    }

    /// The trace flags (bit 0: sampled).
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the trace is sampled (flag bit 0).
    pub fn sampled(&self) -> bool {
        self.flags & 0x01 != 0
    }

    /// The `tracestate` that came with it, passed on as it is.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// This context with `tracestate` (one longer than W3C's 512 characters, or empty, is left out).
    pub fn with_tracestate(mut self, tracestate: &str) -> TraceContext {
        self.tracestate = (!tracestate.is_empty() && tracestate.len() <= TRACESTATE_MAX).then(|| Arc::from(tracestate));
        self
    }

    /// The context sent in `headers` (`traceparent`, and `tracestate` with it), when it is valid.
    pub fn from_headers(headers: &Headers) -> Option<TraceContext> {
        let context = TraceContext::parse(headers.get_str(TRACEPARENT)?)?;
        Some(match headers.get_str(TRACESTATE) {
            Some(state) => context.with_tracestate(state),
            None => context,
        })
    }

    /// The trace id in lowercase hex, for logs and span fields.
    fn trace_hex(&self) -> Hex<16> {
        Hex(self.trace_id)
    }

    /// The span id in lowercase hex.
    fn span_hex(&self) -> Hex<8> {
        Hex(self.span_id)
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceContext")
            .field("trace_id", &format_args!("{}", self.trace_hex()))
            .field("span_id", &format_args!("{}", self.span_hex()))
            .field("parent_id", &self.parent_id.map(Hex))
            .field("flags", &self.flags)
            .field("tracestate", &self.tracestate)
            .finish()
    }
}

/// Shows as the `traceparent` value.
impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{}-{}-{:02x}", self.trace_hex(), self.span_hex(), self.flags)
    }
}

/// Bytes shown in lowercase hex.
struct Hex<const N: usize>([u8; N]);

impl<const N: usize> fmt::Display for Hex<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

impl<const N: usize> fmt::Debug for Hex<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn new_span_id() -> [u8; 8] {
    nonzero(|| fastrand::u64(..)).to_be_bytes()
}

/// A random id that is not zero (W3C's invalid id), drawn from the whole range: a range that leaves out zero
/// costs `fastrand` wide multiplications and a division (of 128 bits, for a trace id) for every id, on every
/// delivery.
fn nonzero<T: PartialEq + Default>(random: impl Fn() -> T) -> T {
    loop {
        let id = random();
        if id != T::default() {
            return id;
        }
    }
}

/// Writes `bytes` as lowercase hex into `out` (twice as long).
fn hex(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0x0f)];
    }
}

/// Reads lowercase hex into `out` (half as long); `None` on any other character.
fn unhex(text: &[u8], out: &mut [u8]) -> Option<()> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    for (pair, byte) in text.chunks_exact(2).zip(out.iter_mut()) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(())
}

/// The context of a handler or RPC method for a message with `headers`: a child of the sender's span, or a
/// new trace when the message carries no valid `traceparent`.
#[cfg(any(test, not(feature = "otel")))]
fn incoming(headers: Option<&Headers>) -> TraceContext {
    child_or_root(headers.and_then(TraceContext::from_headers).as_ref())
}

/// A child of `sender`'s span, or a new trace without one.
fn child_or_root(sender: Option<&TraceContext>) -> TraceContext {
    sender.map_or_else(TraceContext::new_root, TraceContext::child)
}

/// The context and the span of a handler or RPC method for a message with `headers`: a child of the
/// sender's span, or a new trace when the message carries no valid `traceparent`.
///
/// With the `otel` feature, and an OpenTelemetry layer that sees the span, the span's OpenTelemetry parent is
/// the sender's span (or none: a new trace), and the context takes the span's OpenTelemetry ids, so that what
/// the handler sends names a span that is exported.
pub(crate) fn incoming_span(about: &About<'_>, headers: Option<&Headers>) -> (TraceContext, tracing::Span) {
    #[cfg(feature = "otel")]
    {
        let sender = headers.and_then(TraceContext::from_headers);
        let span = span(about, None);
        let context = otel::adopt(&span, sender.as_ref()).unwrap_or_else(|| child_or_root(sender.as_ref()));
        record_ids(&span, &context);
        (context, span)
    }
    #[cfg(not(feature = "otel"))]
    {
        let context = incoming(headers);
        let span = span(about, Some(&context));
        (context, span)
    }
}

/// Writes `traceparent` (and `tracestate`) for a message about to be sent, when `write` and unless the
/// caller set `traceparent` already: a span of the current handler's trace, or a new trace outside any
/// handler. Returns the context the message carries, when it is valid.
fn stamp(headers: &mut Headers, write: bool) -> Option<TraceContext> {
    if !write || headers.contains(TRACEPARENT) {
        return TraceContext::from_headers(headers);
    }
    let context = TraceContext::current().map_or_else(TraceContext::new_root, |current| current.child());
    write_header(headers, &context);
    Some(context)
}

/// Writes `context` as `traceparent`, and its `tracestate` unless the headers have one.
fn write_header(headers: &mut Headers, context: &TraceContext) {
    headers.insert(TRACEPARENT, context.to_header());
    if let Some(state) = context.tracestate()
        && !headers.contains(TRACESTATE)
    {
        headers.insert(TRACESTATE, state);
    }
}

/// [`stamp`]s a message about to be sent and opens its span; returns the context it carries and the span.
///
/// With the `otel` feature, when Warren writes the `traceparent` and an OpenTelemetry layer sees the span, the
/// `traceparent` is the span's own OpenTelemetry context (a child of the current OpenTelemetry span: the
/// handler's, or one of the application's), so that the receiver's span is parented on a span that is exported.
pub(crate) fn outgoing_span(
    about: &About<'_>,
    headers: &mut Headers,
    write: bool,
) -> (Option<TraceContext>, tracing::Span) {
    #[cfg(feature = "otel")]
    if write && !headers.contains(TRACEPARENT) {
        let span = span(about, None);
        let context = match otel::own(&span) {
            Some(context) => {
                write_header(headers, &context);
                Some(context)
            }
            None => stamp(headers, true),
        };
        if let Some(context) = &context {
            record_ids(&span, context);
        }
        return (context, span);
    }
    let context = stamp(headers, write);
    let span = span(about, context.as_ref());
    (context, span)
}

/// Records the W3C ids on a span opened without them.
#[cfg(feature = "otel")]
fn record_ids(span: &tracing::Span, context: &TraceContext) {
    span.record("trace_id", tracing::field::display(context.trace_hex()));
    span.record("span_id", tracing::field::display(context.span_hex()));
}

/// Runs `future` with `context` as the current trace context.
pub(crate) fn scope<F: Future>(context: TraceContext, future: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(context, future)
}

/// What a span describes: OpenTelemetry's `messaging.operation.type` and the span's kind.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Operation {
    /// Publishing an event or a task: `publish <exchange or queue>`, a producer span.
    Publish,
    /// Handling a delivery: `process <queue>`, a consumer span.
    Process,
    /// Sending an RPC request and waiting for the reply: `send <queue>`, a client span.
    Call,
    /// Serving an RPC request: `process <queue>`, a server span.
    Serve,
}

/// What a message's span describes, all but its trace ids.
#[derive(Debug, Clone, Copy)]
pub(crate) struct About<'a> {
    /// Publish, process, call or serve.
    pub(crate) operation: Operation,
    /// The exchange published to, or the queue (a task's, a subscriber's, an RPC service's).
    pub(crate) destination: &'a str,
    /// The message's routing key.
    pub(crate) routing_key: &'a str,
    /// The message's id.
    pub(crate) message_id: Option<IdText<'a>>,
    /// The message's correlation id.
    pub(crate) conversation_id: Option<IdText<'a>>,
    /// The RPC method's path, on RPC spans.
    pub(crate) rpc_method: Option<&'a str>,
}

/// The `tracing` span of one message sent or handled, after OpenTelemetry's messaging conventions: named
/// `publish <destination>`, `send <destination>` or `process <destination>` (in `otel.name`, which
/// `tracing-opentelemetry` takes as the span's name), with the destination, routing key, message and
/// conversation ids, the RPC method, and the W3C ids. Costs a callsite check when no subscriber listens.
fn span(about: &About<'_>, context: Option<&TraceContext>) -> tracing::Span {
    let (name, kind, verb) = match about.operation {
        Operation::Publish => ("send", "producer", "publish"),
        Operation::Process => ("process", "consumer", "process"),
        Operation::Call => ("send", "client", "send"),
        Operation::Serve => ("process", "server", "process"),
    };
    tracing::info_span!(
        "warren",
        otel.name = %format!("{verb} {}", about.destination),
        otel.kind = kind,
        messaging.system = "rabbitmq",
        messaging.operation.type = name,
        messaging.destination.name = about.destination,
        messaging.rabbitmq.destination.routing_key = about.routing_key,
        messaging.message.id = about.message_id.map(IdText::as_str),
        messaging.message.conversation_id = about.conversation_id.map(IdText::as_str),
        rpc.method = about.rpc_method,
        trace_id = context.map(|c| tracing::field::display(c.trace_hex())),
        span_id = context.map(|c| tracing::field::display(c.span_hex())),
        error.type = tracing::field::Empty,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const W3C: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_w3c_example_reads_and_writes_back_the_same() {
        let context = TraceContext::parse(W3C).expect("valid");
        assert_eq!(context.trace_id()[..4], [0x4b, 0xf9, 0x2f, 0x35]);
        assert_eq!(context.span_id(), [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert!(context.sampled() && context.parent_id().is_none());
        assert_eq!(context.to_header(), W3C);
        assert_eq!(context.to_string(), W3C);
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!TraceContext::parse(unsampled).unwrap().sampled());
    }

    #[test]
    fn anything_but_a_strict_version_00_traceparent_is_refused() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // all-zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // all-zero span id
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", // uppercase
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version ff
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // a version this does not know
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-", // longer than version 00
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01", // dashes misplaced
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bx-01", // not hex
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "",
            "garbage",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_points_at_its_parent() {
        let parent = TraceContext::parse(W3C).unwrap().with_tracestate("congo=t61rcWkgMzE");
        let child = parent.child();
        assert_eq!((child.trace_id(), child.parent_id()), (parent.trace_id(), Some(parent.span_id())));
        assert_ne!(child.span_id(), parent.span_id());
        assert_eq!(child.tracestate(), Some("congo=t61rcWkgMzE"));
        let root = TraceContext::new_root();
        assert_ne!(root.trace_id(), [0; 16]);
        assert_eq!(TraceContext::parse(&root.to_header()).unwrap().trace_id(), root.trace_id());
        assert_eq!(TraceContext::parse(W3C).unwrap().with_tracestate(&"x".repeat(513)).tracestate(), None);
    }

    #[tokio::test]
    async fn a_message_sent_inside_a_scope_continues_its_trace_and_one_outside_starts_another() {
        let handler = incoming(Some(&Headers::new().with(TRACEPARENT, W3C)));
        assert_eq!(handler.parent_id(), Some(TraceContext::parse(W3C).unwrap().span_id()));
        let sent = scope(handler.clone(), async {
            assert_eq!(TraceContext::current().as_ref(), Some(&handler));
            let mut headers = Headers::new();
            stamp(&mut headers, true).unwrap();
            TraceContext::from_headers(&headers).unwrap()
        })
        .await;
        assert_eq!(sent.trace_id(), handler.trace_id());
        assert!(TraceContext::current().is_none());
        let mut outside = Headers::new();
        assert_ne!(stamp(&mut outside, true).unwrap().trace_id(), handler.trace_id());
        let mut own = Headers::new().with(TRACEPARENT, W3C);
        assert_eq!(stamp(&mut own, true).unwrap().span_id(), TraceContext::parse(W3C).unwrap().span_id());
        assert_eq!(own.get_str(TRACEPARENT), Some(W3C), "the caller's own traceparent is left as it is");
        let mut off = Headers::new();
        assert!(stamp(&mut off, false).is_none() && off.is_empty(), "turned off, nothing is written");
        let plain = incoming(Some(&Headers::new().with(TRACEPARENT, "00-garbage")));
        assert!(plain.parent_id().is_none(), "an invalid traceparent starts a new trace");
    }
}
