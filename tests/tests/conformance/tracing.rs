//! Trace context: `traceparent` written on publish and call, read on consume and serve, so that one trace id
//! runs from a publish through its handler, an RPC call the handler makes, the server, and back.

use tokio::sync::mpsc;
use warren::{
    Context, HandlerError, Headers, MessageProperties, PublishOptions, RpcContext, RpcError, TRACEPARENT, TRACESTATE,
    TraceContext,
};
use warren_contracts::at::v1::int_sum_error::Reason;
use warren_contracts::at::v1::{IntSumRequest, IntSumResponse, IntSummator, IntSummatorClient, IntSummatorServer};
use warren_contracts::gametrade::v1::UserRegistered;
use warren_tests::{Harness, unique, within};

use super::collect;

/// The W3C specification's example.
const W3C: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A summator that reports each request's trace context and `traceparent` header.
struct Traced(mpsc::UnboundedSender<(TraceContext, Option<TraceContext>, String)>);

impl IntSummator for Traced {
    async fn int_sum(&self, request: IntSumRequest, ctx: RpcContext) -> Result<IntSumResponse, RpcError<Reason>> {
        let sent = ctx.headers().get_str(TRACEPARENT).unwrap_or_default().to_owned();
        let _ = self.0.send((ctx.trace().clone(), TraceContext::current(), sent));
        Ok(IntSumResponse { sum: request.a + request.b })
    }
}

/// A bus that writes trace context (off by default).
async fn traced_bus(h: &Harness, service: &str) -> warren::Bus {
    h.bus_with(h.config(service).trace_context(true)).await
}

fn user(user_id: i64) -> UserRegistered {
    UserRegistered { user_id, ..Default::default() }
}

fn parse(traceparent: &str) -> TraceContext {
    TraceContext::parse(traceparent).unwrap_or_else(|| panic!("a valid traceparent, not {traceparent:?}"))
}

async fn one_trace_runs_from_a_publish_through_its_handler_and_an_rpc_call_to_the_server(h: &Harness) {
    let (served, mut server_saw) = mpsc::unbounded_channel();
    let serving = IntSummatorServer::new(Traced(served)).serve(&traced_bus(h, "int-summator").await).await.unwrap();
    let bus = traced_bus(h, "trace-test").await;
    let (handled, mut handler_saw) = mpsc::unbounded_channel();
    let subscription = UserRegistered::subscribe(&bus, &unique("traced"))
        .temporary()
        .handle(move |event: UserRegistered, ctx: Context| {
            let handled = handled.clone();
            async move {
                let current = TraceContext::current();
                let reply = IntSummatorClient::new(ctx.bus()).int_sum(IntSumRequest { a: event.user_id, b: 2 }).await;
                let sent = ctx.headers().get_str(TRACEPARENT).unwrap_or_default().to_owned();
                handled
                    .send((ctx.trace().clone(), current, sent, reply.map(|reply| reply.sum)))
                    .map_err(|_| HandlerError::from("the test stopped listening"))
            }
        })
        .await
        .unwrap();

    // Outside any handler: a new trace, whose publish span is the handler's parent.
    bus.publish(&user(1)).await.unwrap();
    let (handler, current, sent, sum) = within(10, "the handler", handler_saw.recv()).await.unwrap();
    assert_eq!(sum.expect("the call from inside the handler was answered"), 3);
    let published = parse(&sent);
    assert_eq!(handler.trace_id(), published.trace_id(), "the handler is in the publisher's trace");
    assert_eq!(handler.parent_id(), Some(published.span_id()), "a child of the publish's span");
    assert_ne!(handler.span_id(), published.span_id());
    assert_eq!(current.as_ref(), Some(&handler), "TraceContext::current is the handler's while it runs");

    // The call from inside the handler continues the trace into the server.
    let (server, server_current, requested) = within(10, "the server", server_saw.recv()).await.unwrap();
    let call = parse(&requested);
    assert_eq!(call.trace_id(), handler.trace_id(), "the call is in the handler's trace");
    assert_ne!(call.span_id(), handler.span_id(), "the call is a span of its own, under the handler's");
    assert_eq!(server.trace_id(), handler.trace_id(), "one trace id from the publish to the server");
    assert_eq!(server.parent_id(), Some(call.span_id()), "the server's span is a child of the caller's");
    assert_eq!(server_current.as_ref(), Some(&server), "TraceContext::current is the method's while it runs");

    // A second publish outside any handler starts another trace.
    bus.publish(&user(5)).await.unwrap();
    let (next, ..) = within(10, "the handler", handler_saw.recv()).await.unwrap();
    assert_ne!(next.trace_id(), handler.trace_id());
    subscription.stop().await;
    serving.stop().await;
}

async fn a_message_without_a_valid_traceparent_starts_a_new_trace(h: &Harness) {
    let bus = traced_bus(h, "trace-test").await;
    let (subscription, mut rx) = collect(UserRegistered::subscribe(&bus, &unique("untraced"))).await;
    let payload = prost::Message::encode_to_vec(&user(1));
    let plain = MessageProperties::default().with_kind("gametrade.v1.UserRegistered");
    // From a plain AMQP client: no traceparent at all, then an uppercase one, which W3C does not allow.
    bus.publish_bytes("", subscription.queue(), &payload, plain.clone()).await.unwrap();
    let malformed = W3C.to_uppercase();
    let headers = Headers::new().with(TRACEPARENT, malformed.as_str());
    bus.publish_bytes("", subscription.queue(), &payload, plain.with_headers(headers)).await.unwrap();

    let (_, first) = within(10, "the first message", rx.recv()).await.unwrap();
    let (_, second) = within(10, "the second message", rx.recv()).await.unwrap();
    for ctx in [&first, &second] {
        assert_eq!(ctx.trace().parent_id(), None, "a new trace: no parent");
        assert_ne!(ctx.trace().trace_id(), parse(W3C).trace_id(), "the malformed header is ignored");
    }
    assert_eq!(second.headers().get_str(TRACEPARENT), Some(malformed.as_str()), "left as it came");
    assert_ne!(first.trace().trace_id(), second.trace().trace_id(), "each starts its own");
    subscription.stop().await;
}

async fn a_traceparent_the_publisher_sets_itself_is_sent_as_it_is(h: &Harness) {
    let bus = traced_bus(h, "trace-test").await;
    let (subscription, mut rx) = collect(UserRegistered::subscribe(&bus, &unique("own-trace"))).await;
    let options = PublishOptions::new().header(TRACEPARENT, W3C).header(TRACESTATE, "congo=t61rcWkgMzE");
    bus.publish_with(&user(1), options).await.unwrap();

    let (_, ctx) = within(10, "the event", rx.recv()).await.unwrap();
    assert_eq!(ctx.headers().get_str(TRACEPARENT), Some(W3C), "Warren kept the publisher's own");
    let own = parse(W3C);
    assert_eq!((ctx.trace().trace_id(), ctx.trace().parent_id()), (own.trace_id(), Some(own.span_id())));
    assert_eq!(ctx.trace().tracestate(), Some("congo=t61rcWkgMzE"), "tracestate travels with it");
    subscription.stop().await;
}

async fn a_bus_writes_no_trace_context_unless_asked(h: &Harness) {
    let bus = h.bus("trace-test").await;
    let (subscription, mut rx) = collect(UserRegistered::subscribe(&bus, &unique("off"))).await;
    bus.publish(&user(1)).await.unwrap();
    let (_, ctx) = within(10, "the event", rx.recv()).await.unwrap();
    assert_eq!(ctx.headers().get(TRACEPARENT), None, "nothing written");
    assert_eq!(ctx.trace().parent_id(), None, "the handler starts a trace of its own");
    subscription.stop().await;
}

warren_tests::on_both_transports!(
    one_trace_runs_from_a_publish_through_its_handler_and_an_rpc_call_to_the_server,
    a_message_without_a_valid_traceparent_starts_a_new_trace,
    a_traceparent_the_publisher_sets_itself_is_sent_as_it_is,
    a_bus_writes_no_trace_context_unless_asked,
);
