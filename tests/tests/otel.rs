//! The `otel` feature with `tracing-opentelemetry`'s layer installed: Warren's spans are OpenTelemetry spans
//! in the W3C trace their messages carry. One trace id runs from a publish through its handler, an RPC call
//! the handler makes and the server, back to the caller; a message from a plain client starts a new trace; a
//! publish inside an application's span continues that span's trace. On RabbitMQ and in memory, into an
//! in-memory exporter.
//!
//! The layer is this test binary's global subscriber (Warren's tasks run wherever the runtime puts them), so
//! each test picks its own spans out of the exporter by trace id.

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::{SpanId, SpanKind, TraceId, TracerProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tokio::sync::mpsc;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use warren::{Context, HandlerError, MessageProperties, RpcContext, RpcError, TRACEPARENT, TraceContext};
use warren_contracts::at::v1::int_sum_error::Reason;
use warren_contracts::at::v1::{IntSumRequest, IntSumResponse, IntSummator, IntSummatorClient, IntSummatorServer};
use warren_contracts::gametrade::v1::UserRegistered;
use warren_tests::{Harness, unique, within};

/// The exporter every span of this binary ends in (and the provider that feeds it, kept alive).
fn exported() -> &'static InMemorySpanExporter {
    static INSTALLED: OnceLock<(InMemorySpanExporter, SdkTracerProvider)> = OnceLock::new();
    &INSTALLED
        .get_or_init(|| {
            let exporter = InMemorySpanExporter::default();
            let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
            let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("warren-tests"));
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
                .expect("this binary installs no other subscriber");
            (exporter, provider)
        })
        .0
}

/// Waits until the exporter holds `count` spans of trace `trace_id`, and returns them.
async fn spans_of(trace_id: [u8; 16], count: usize) -> Vec<SpanData> {
    let trace_id = TraceId::from_bytes(trace_id);
    let of_trace = || -> Vec<SpanData> {
        let spans = exported().get_finished_spans().expect("the in-memory exporter answers");
        spans.into_iter().filter(|span| span.span_context.trace_id() == trace_id).collect()
    };
    within(10, &format!("{count} spans of trace {trace_id}"), async {
        while of_trace().len() < count {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let spans = of_trace();
    assert_eq!(spans.len(), count, "no more spans than expected in trace {trace_id}: {spans:#?}");
    spans
}

/// The one span named `name` among `spans`.
fn named<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    let mut matching = spans.iter().filter(|span| span.name == name);
    let span = matching.next().unwrap_or_else(|| panic!("a span named {name:?} among {spans:#?}"));
    assert!(matching.next().is_none(), "one span named {name:?}");
    span
}

/// The W3C ids of an exported span, in Warren's terms.
fn ids(span: &SpanData) -> ([u8; 16], [u8; 8]) {
    (span.span_context.trace_id().to_bytes(), span.span_context.span_id().to_bytes())
}

/// A summator that reports each request's trace context.
struct Traced(mpsc::UnboundedSender<TraceContext>);

impl IntSummator for Traced {
    async fn int_sum(&self, request: IntSumRequest, ctx: RpcContext) -> Result<IntSumResponse, RpcError<Reason>> {
        let _ = self.0.send(ctx.trace().clone());
        Ok(IntSumResponse { sum: request.a + request.b })
    }
}

fn user(user_id: i64) -> UserRegistered {
    UserRegistered { user_id, ..Default::default() }
}

/// What a handler saw: its trace context, the `traceparent` it was sent with, and the answer to its call.
type Seen = (TraceContext, String, Option<i64>);

async fn one_trace_runs_from_a_publish_through_a_handler_and_its_rpc_call_to_the_server_and_back(h: &Harness) {
    exported();
    let (served, mut server_saw) = mpsc::unbounded_channel();
    let server_bus = h.bus_with(h.config("int-summator").trace_context(true)).await;
    let serving = IntSummatorServer::new(Traced(served)).serve(&server_bus).await.unwrap();
    let bus = h.bus_with(h.config("otel-test").trace_context(true)).await;
    let (handled, mut handler_saw) = mpsc::unbounded_channel::<Seen>();
    let subscription = UserRegistered::subscribe(&bus, &unique("otel"))
        .temporary()
        .handle(move |event: UserRegistered, ctx: Context| {
            let handled = handled.clone();
            async move {
                let reply = IntSummatorClient::new(ctx.bus()).int_sum(IntSumRequest { a: event.user_id, b: 2 }).await;
                let sent = ctx.headers().get_str(TRACEPARENT).unwrap_or_default().to_owned();
                handled
                    .send((ctx.trace().clone(), sent, reply.ok().map(|reply| reply.sum)))
                    .map_err(|_| HandlerError::from("the test stopped listening"))
            }
        })
        .await
        .unwrap();
    let queue = subscription.queue().to_owned();

    bus.publish(&user(1)).await.unwrap();
    let (handler, sent, sum) = within(10, "the handler", handler_saw.recv()).await.unwrap();
    assert_eq!(sum, Some(3), "the call from inside the handler was answered");
    let server = within(10, "the server", server_saw.recv()).await.unwrap();

    let spans = spans_of(handler.trace_id(), 4).await;
    let publish = named(&spans, "publish gametrade.events");
    let process = named(&spans, &format!("process {queue}"));
    let call = named(&spans, "send at.IntSummator");
    let serve = named(&spans, "process at.IntSummator");
    let kinds = [&publish.span_kind, &process.span_kind, &call.span_kind, &serve.span_kind];
    assert_eq!(kinds, [&SpanKind::Producer, &SpanKind::Consumer, &SpanKind::Client, &SpanKind::Server]);

    // The chain, each span the parent of the next: across the broker (remote parents) and within the handler.
    assert_eq!(publish.parent_span_id, SpanId::INVALID, "published outside any span: the trace's root");
    assert_eq!((process.parent_span_id, process.parent_span_is_remote), (publish.span_context.span_id(), true));
    assert_eq!((call.parent_span_id, call.parent_span_is_remote), (process.span_context.span_id(), false));
    assert_eq!((serve.parent_span_id, serve.parent_span_is_remote), (call.span_context.span_id(), true));

    // What travelled in `traceparent` and what handlers see are the exported spans' ids.
    let traceparent = TraceContext::parse(&sent).expect("the publish carried a valid traceparent");
    assert_eq!((traceparent.trace_id(), traceparent.span_id()), ids(publish), "traceparent is the publish span");
    assert_eq!((handler.trace_id(), handler.span_id()), ids(process), "the handler's context is its span");
    assert_eq!(handler.parent_id(), Some(traceparent.span_id()));
    assert_eq!((server.trace_id(), server.span_id()), ids(serve), "the method's context is its span");
    assert_eq!(server.parent_id(), Some(ids(call).1), "the server's parent is the call's span");

    subscription.stop().await;
    serving.stop().await;
}

async fn a_message_from_a_plain_client_starts_a_new_trace(h: &Harness) {
    exported();
    let bus = h.bus_with(h.config("otel-test").trace_context(true)).await;
    let (handled, mut handler_saw) = mpsc::unbounded_channel();
    let subscription = UserRegistered::subscribe(&bus, &unique("plain"))
        .temporary()
        .handle(move |_: UserRegistered, ctx: Context| {
            let sent = handled.send((ctx.trace().clone(), ctx.headers().get(TRACEPARENT).is_some()));
            async move { sent.map_err(|_| HandlerError::from("the test stopped listening")) }
        })
        .await
        .unwrap();
    let queue = subscription.queue().to_owned();
    let payload = prost::Message::encode_to_vec(&user(1));
    let plain = MessageProperties::default().with_kind("gametrade.v1.UserRegistered");

    // Twice, inside an application's span: the message's trace is its own, not the span's nor the other's.
    let app = tracing::info_span!("app");
    let app_trace = app.context().span_context_ids();
    for _ in 0..2 {
        bus.publish_bytes("", &queue, &payload, plain.clone()).instrument(app.clone()).await.unwrap();
    }
    let (first, first_had) = within(10, "the first message", handler_saw.recv()).await.unwrap();
    let (second, second_had) = within(10, "the second message", handler_saw.recv()).await.unwrap();
    assert!(!first_had && !second_had, "publish_bytes sends no traceparent");
    assert_ne!(first.trace_id(), second.trace_id(), "each message starts its own trace");
    for handler in [&first, &second] {
        assert_ne!(handler.trace_id(), app_trace.0, "not the publisher's span's trace");
        assert_eq!(handler.parent_id(), None);
        let spans = spans_of(handler.trace_id(), 1).await;
        let process = named(&spans, &format!("process {queue}"));
        assert_eq!(process.parent_span_id, SpanId::INVALID, "the root of a new trace");
        assert_eq!(ids(process), (handler.trace_id(), handler.span_id()));
    }
    subscription.stop().await;
}

async fn a_publish_inside_an_application_span_continues_its_trace(h: &Harness) {
    exported();
    let bus = h.bus_with(h.config("otel-test").trace_context(true)).await;
    let (handled, mut handler_saw) = mpsc::unbounded_channel();
    let subscription = UserRegistered::subscribe(&bus, &unique("in-span"))
        .temporary()
        .handle(move |_: UserRegistered, ctx: Context| {
            let sent = handled.send(ctx.trace().clone());
            async move { sent.map_err(|_| HandlerError::from("the test stopped listening")) }
        })
        .await
        .unwrap();
    let queue = subscription.queue().to_owned();

    let checkout = tracing::info_span!("checkout");
    let (trace_id, checkout_id) = checkout.context().span_context_ids();
    bus.publish(&user(1)).instrument(checkout.clone()).await.unwrap();
    drop(checkout);
    let handler = within(10, "the handler", handler_saw.recv()).await.unwrap();
    assert_eq!(handler.trace_id(), trace_id, "the message continues the application's trace");

    let spans = spans_of(trace_id, 3).await;
    let publish = named(&spans, "publish gametrade.events");
    let process = named(&spans, &format!("process {queue}"));
    assert_eq!(publish.parent_span_id.to_bytes(), checkout_id, "the publish span is the application span's child");
    assert_eq!(process.parent_span_id, publish.span_context.span_id());
    assert_eq!(handler.parent_id(), Some(ids(publish).1));
    named(&spans, "checkout");
    subscription.stop().await;
}

/// A span's OpenTelemetry trace and span ids.
trait Ids {
    fn span_context_ids(&self) -> ([u8; 16], [u8; 8]);
}

impl Ids for opentelemetry::Context {
    fn span_context_ids(&self) -> ([u8; 16], [u8; 8]) {
        use opentelemetry::trace::TraceContextExt;
        let span = self.span();
        let ids = span.span_context();
        assert!(ids.is_valid(), "the OpenTelemetry layer sees the span");
        (ids.trace_id().to_bytes(), ids.span_id().to_bytes())
    }
}

warren_tests::on_both_transports!(
    one_trace_runs_from_a_publish_through_a_handler_and_its_rpc_call_to_the_server_and_back,
    a_message_from_a_plain_client_starts_a_new_trace,
    a_publish_inside_an_application_span_continues_its_trace,
);
