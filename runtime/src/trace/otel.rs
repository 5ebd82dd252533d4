//! The `otel` feature: Warren's spans in OpenTelemetry take their trace from the W3C trace context that
//! messages carry, through `tracing-opentelemetry`'s layer, when the application installs one.
//!
//! A handler's or RPC method's span is parented on the sender's span (a remote parent built from
//! `traceparent`), or starts a new trace when the message carries none; the handler's [`TraceContext`] then
//! takes that span's ids, so that what it sends points at a span that is exported. A publish's or call's
//! `traceparent` is its own span's context. Without the layer (or with Warren's spans filtered out), nothing
//! changes: Warren's own ids, as without the feature.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::TraceContext;

/// Makes `span`, a handler's or an RPC method's, a child of the sender's span in OpenTelemetry (or the root
/// of a new trace, for a message without trace context), and returns the context the handler runs in: the
/// span's OpenTelemetry ids, the sender's span as its parent, the sender's `tracestate`. `None` when no
/// OpenTelemetry layer sees the span.
pub(super) fn adopt(span: &tracing::Span, sender: Option<&TraceContext>) -> Option<TraceContext> {
    let parent = match sender {
        Some(sender) => opentelemetry::Context::new().with_remote_span_context(remote(sender)),
        // Not the span the consumer happens to run in: a message without trace context starts a trace.
        None => opentelemetry::Context::new(),
    };
    span.set_parent(parent).ok()?;
    let own = own(span)?;
    Some(TraceContext {
        parent_id: sender.map(TraceContext::span_id),
        tracestate: sender.and_then(|sender| sender.tracestate.clone()),
        ..own
    })
}

/// The OpenTelemetry context of `span` (started, if it was not yet) as a [`TraceContext`] without a parent;
/// `None` when no OpenTelemetry layer sees the span.
pub(super) fn own(span: &tracing::Span) -> Option<TraceContext> {
    let context = span.context();
    let otel = context.span();
    let ids = otel.span_context();
    if !ids.is_valid() {
        return None;
    }
    let state = ids.trace_state().header();
    let own = TraceContext {
        trace_id: ids.trace_id().to_bytes(),
        span_id: ids.span_id().to_bytes(),
        parent_id: None,
        flags: ids.trace_flags().to_u8(),
        tracestate: None,
    };
    Some(own.with_tracestate(&state))
}

/// The sender's span, as OpenTelemetry's remote parent.
fn remote(sender: &TraceContext) -> SpanContext {
    // A `tracestate` OpenTelemetry cannot read is left out of the parent (Warren still passes it on).
    let state = sender.tracestate().and_then(|state| state.parse().ok()).unwrap_or_default();
    SpanContext::new(
        TraceId::from_bytes(sender.trace_id),
        SpanId::from_bytes(sender.span_id),
        TraceFlags::new(sender.flags),
        true,
        state,
    )
}
