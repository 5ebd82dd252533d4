//! Middleware: layers around publish, consume, RPC call and RPC serve, registered on the bus and per subscriber
//! or server, in order.

use std::sync::{Arc, Mutex};

use prost::Message;
use tokio::sync::mpsc;
use warren::middleware::{
    Call, Called, Delivery, Handled, Middleware, Publish, Published, Refusal, Request, Served, Settled,
};
use warren::{CallOptions, Code, Error, HandlerError, PublishOptions, RetryPolicy, Status};
use warren_contracts::at::v1::{IntSumRequest, IntSummatorClient, IntSummatorServer};
use warren_contracts::gametrade::v1::UserRegistered;
use warren_tests::{Harness, Summator, unique, within};

use super::{collect, next_in};

/// Appends its name to the `layers` header of every publish, and to a shared record of every delivery it sees.
struct Trail {
    name: &'static str,
    seen: Arc<Mutex<Vec<&'static str>>>,
}

impl Trail {
    fn new(name: &'static str, seen: &Arc<Mutex<Vec<&'static str>>>) -> Self {
        Trail { name, seen: Arc::clone(seen) }
    }
}

impl Middleware for Trail {
    fn name(&self) -> &str {
        self.name
    }

    fn before_publish(&self, publish: &mut Publish<'_>) -> Result<(), Refusal> {
        let trail = match publish.headers.get_str("layers") {
            Some(before) => format!("{before},{}", self.name),
            None => self.name.to_owned(),
        };
        publish.headers.insert("layers", trail);
        Ok(())
    }

    fn before_handle(&self, _: &Delivery<'_>) -> Result<(), Refusal> {
        self.seen.lock().unwrap().push(self.name);
        Ok(())
    }
}

/// Refuses what carries the header `blocked`, and reports every outcome it hears of.
struct Gate {
    outcomes: mpsc::UnboundedSender<String>,
}

impl Gate {
    fn new() -> (Self, mpsc::UnboundedReceiver<String>) {
        let (outcomes, rx) = mpsc::unbounded_channel();
        (Gate { outcomes }, rx)
    }
}

impl Middleware for Gate {
    fn name(&self) -> &str {
        "gate"
    }

    fn before_publish(&self, publish: &mut Publish<'_>) -> Result<(), Refusal> {
        if publish.headers.contains("blocked") { Err(Refusal::new("blocked")) } else { Ok(()) }
    }

    fn after_publish(&self, published: &Published<'_>) {
        let outcome = match published.result {
            Ok(()) => format!("published {}", published.routing_key),
            Err(error) => format!("not published: {error}"),
        };
        let _ = self.outcomes.send(outcome);
    }

    fn before_handle(&self, delivery: &Delivery<'_>) -> Result<(), Refusal> {
        if delivery.headers.contains("blocked") { Err(Refusal::new("blocked")) } else { Ok(()) }
    }

    fn after_handle(&self, handled: &Handled<'_>) {
        let settled = match handled.settled {
            Settled::Acked => "acked".to_owned(),
            Settled::Retried { reason } => format!("retried ({reason})"),
            Settled::DeadLettered { reason } => format!("dead-lettered ({reason})"),
            Settled::Abandoned => "abandoned".to_owned(),
            _ => "other".to_owned(),
        };
        let failed = if handled.failed { ", failed" } else { "" };
        let _ = self.outcomes.send(format!("attempt {}: {settled}{failed}", handled.attempt));
    }
}

async fn next_outcome(outcomes: &mut mpsc::UnboundedReceiver<String>) -> String {
    within(600, "a layer's after-hook", outcomes.recv()).await.expect("the layer is alive")
}

fn user(user_id: i64) -> UserRegistered {
    UserRegistered { user_id, ..Default::default() }
}

async fn publish_layers_write_headers_the_handler_reads_and_run_in_registration_order(h: &Harness) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let config =
        h.config("middleware-test").middleware(Trail::new("first", &seen)).middleware(Trail::new("second", &seen));
    let bus = h.bus_with(config).await;
    let subscriber = UserRegistered::subscribe(&bus, &unique("layered")).middleware(Trail::new("own", &seen));
    let (subscription, mut rx) = collect(subscriber).await;

    bus.publish(&user(1)).await.unwrap();
    let (event, ctx) = within(600, "the event", rx.recv()).await.unwrap();
    assert_eq!(event.user_id, 1);
    assert_eq!(ctx.headers().get_str("layers"), Some("first,second"), "each layer saw the one before it");
    assert_eq!(*seen.lock().unwrap(), ["first", "second", "own"], "the bus's layers, then the subscriber's");
    subscription.stop().await;
}

async fn a_refused_publish_fails_with_the_reason_and_nothing_is_delivered(h: &Harness) {
    let (gate, mut outcomes) = Gate::new();
    let bus = h.bus_with(h.config("middleware-test").middleware(gate)).await;
    let (subscription, mut rx) = collect(UserRegistered::subscribe(&bus, &unique("gated"))).await;

    let refused = bus.publish_with(&user(1), PublishOptions::new().header("blocked", true)).await.unwrap_err();
    assert!(
        matches!(&refused, Error::Refused { layer, reason } if layer == "gate" && reason == "blocked"),
        "{refused:?}"
    );
    assert_eq!(refused.to_string(), "refused by middleware \"gate\": blocked");
    assert_eq!(next_outcome(&mut outcomes).await, "not published: refused by middleware \"gate\": blocked");

    bus.publish(&user(2)).await.unwrap();
    // The queue keeps order: had the refused event been sent, it would arrive first.
    assert_eq!(within(600, "the event", rx.recv()).await.unwrap().0.user_id, 2);
    // The handler may finish before the publisher hears the confirm: either order.
    let mut heard = [next_outcome(&mut outcomes).await, next_outcome(&mut outcomes).await];
    heard.sort();
    assert_eq!(heard, ["attempt 1: acked", "published user.registered"], "the bus's layers see both sides");
    subscription.stop().await;
    assert!(rx.try_recv().is_err() && outcomes.try_recv().is_err(), "nothing else happened");

    // Layers write application headers: Warren's own names are refused from them as from the application.
    let forger = h.bus_with(h.config("middleware-test").middleware(Forger)).await;
    let error = forger.publish(&user(3)).await.unwrap_err();
    assert!(matches!(&error, Error::Header { name, .. } if name == "x-warren-reason"), "{error:?}");
}

/// Tries to send one of Warren's own headers.
struct Forger;

impl Middleware for Forger {
    fn before_publish(&self, publish: &mut Publish<'_>) -> Result<(), Refusal> {
        publish.headers.insert("x-warren-reason", "forged");
        Ok(())
    }
}

async fn a_refused_delivery_is_dead_lettered_with_the_reason_and_never_handled(h: &Harness) {
    let bus = h.bus("middleware-test").await;
    let (gate, mut outcomes) = Gate::new();
    let (subscription, mut rx) = collect(UserRegistered::subscribe(&bus, &unique("refusing")).middleware(gate)).await;

    bus.publish_with(&user(1), PublishOptions::new().header("blocked", true)).await.unwrap();
    bus.publish(&user(2)).await.unwrap();
    assert_eq!(next_outcome(&mut outcomes).await, "attempt 1: dead-lettered (refused by gate: blocked), failed");
    assert_eq!(within(600, "the allowed event", rx.recv()).await.unwrap().0.user_id, 2, "the refused one was not");
    assert_eq!(next_outcome(&mut outcomes).await, "attempt 1: acked");

    let dead = next_in(&bus, &format!("{}.dlq", subscription.queue())).await;
    assert_eq!(UserRegistered::decode(dead.body.as_slice()).unwrap().user_id, 1);
    assert_eq!(dead.header_str("x-warren-reason"), Some("refused by gate: blocked"));
    assert_eq!(dead.header_i64("x-warren-attempts"), Some(1));
    subscription.stop().await;
    assert!(rx.try_recv().is_err(), "the handler never ran for the refused event");
}

/// Counts the deliveries between its before- and after-hooks, as a gauge of handlers in flight does, and reports
/// what it hears: whether its before-hook saw the delivery, and the count once it is done.
struct InFlight {
    now: Arc<std::sync::atomic::AtomicI64>,
    heard: mpsc::UnboundedSender<(bool, i64)>,
}

impl Middleware for InFlight {
    fn name(&self) -> &str {
        "in-flight"
    }

    fn before_handle(&self, _: &Delivery<'_>) -> Result<(), Refusal> {
        self.now.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn after_handle(&self, handled: &Handled<'_>) {
        if handled.seen {
            self.now.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
        let _ = self.heard.send((handled.seen, self.now.load(std::sync::atomic::Ordering::SeqCst)));
    }
}

async fn a_layer_after_a_refusing_one_hears_the_delivery_as_unseen(h: &Harness) {
    let bus = h.bus("middleware-test").await;
    let (gate, mut outcomes) = Gate::new();
    let (heard, mut heard_rx) = mpsc::unbounded_channel();
    let in_flight = InFlight { now: Arc::default(), heard };
    let subscriber = UserRegistered::subscribe(&bus, &unique("unseen")).middleware(gate).middleware(in_flight);
    let (subscription, mut rx) = collect(subscriber).await;

    bus.publish_with(&user(1), PublishOptions::new().header("blocked", true)).await.unwrap();
    assert_eq!(next_outcome(&mut outcomes).await, "attempt 1: dead-lettered (refused by gate: blocked), failed");
    let refused = within(600, "the second layer's after-hook", heard_rx.recv()).await.unwrap();
    assert_eq!(refused, (false, 0), "refused before it: not seen, and nothing to undo");

    bus.publish(&user(2)).await.unwrap();
    assert_eq!(within(600, "the allowed event", rx.recv()).await.unwrap().0.user_id, 2);
    assert_eq!(next_outcome(&mut outcomes).await, "attempt 1: acked");
    let handled = within(600, "the second layer's after-hook", heard_rx.recv()).await.unwrap();
    assert_eq!(handled, (true, 0), "seen, and undone");
    subscription.stop().await;
}

async fn after_hooks_hear_retries_and_the_final_outcome(h: &Harness) {
    let bus = h.bus("middleware-test").await;
    let (gate, mut outcomes) = Gate::new();
    let subscription = UserRegistered::subscribe(&bus, &unique("flaky"))
        .temporary()
        .retry(RetryPolicy::exponential(2, h.backoff()))
        .middleware(gate)
        .handle(|event: UserRegistered, ctx| async move {
            match (event.user_id, ctx.attempt()) {
                (1, 1) => Err(HandlerError::from("not yet")),
                (1, _) => Ok(warren::Outcome::Ack),
                _ => Ok(warren::Outcome::DeadLetter { reason: "not wanted".into() }),
            }
        })
        .await
        .unwrap();
    bus.publish(&user(1)).await.unwrap();
    assert_eq!(next_outcome(&mut outcomes).await, "attempt 1: retried (handler failed: not yet), failed");
    assert_eq!(next_outcome(&mut outcomes).await, "attempt 2: acked");
    bus.publish(&user(2)).await.unwrap();
    assert_eq!(next_outcome(&mut outcomes).await, "attempt 1: dead-lettered (not wanted)", "chosen, not failed");
    // Layers run before decoding: they hear of a message that does not decode too.
    let garbage = warren::MessageProperties::default().with_kind("gametrade.v1.UserRegistered");
    bus.publish_bytes("", subscription.queue(), b"\xff\xff\xff\xff", garbage).await.unwrap();
    let outcome = next_outcome(&mut outcomes).await;
    assert!(outcome.starts_with("attempt 1: dead-lettered (") && outcome.ends_with("), failed"), "{outcome}");
    assert!(outcome.contains("does not decode"), "{outcome}");
    subscription.stop().await;
}

/// Panics in every hook when the message or request carries the header `boom`, and in every after-hook.
struct Boom;

impl Middleware for Boom {
    fn name(&self) -> &str {
        "boom"
    }

    fn before_handle(&self, delivery: &Delivery<'_>) -> Result<(), Refusal> {
        assert!(!delivery.headers.contains("boom"), "boom");
        Ok(())
    }

    fn after_handle(&self, _: &Handled<'_>) {
        panic!("after boom");
    }

    fn before_serve(&self, request: &Request<'_>) -> Result<(), Status> {
        assert!(!request.headers.contains("boom"), "boom");
        Ok(())
    }

    fn after_serve(&self, _: &Served<'_>) {
        panic!("after boom");
    }
}

async fn a_panicking_layer_refuses_and_the_subscriber_and_the_server_go_on(h: &Harness) {
    let bus = h.bus("middleware-test").await;
    let (subscription, mut rx) = collect(UserRegistered::subscribe(&bus, &unique("boom")).middleware(Boom)).await;
    bus.publish_with(&user(1), PublishOptions::new().header("boom", true)).await.unwrap();
    bus.publish(&user(2)).await.unwrap();
    assert_eq!(within(600, "the next event", rx.recv()).await.unwrap().0.user_id, 2, "the subscriber went on");
    let dead = next_in(&bus, &format!("{}.dlq", subscription.queue())).await;
    assert_eq!(UserRegistered::decode(dead.body.as_slice()).unwrap().user_id, 1);
    assert_eq!(dead.header_str("x-warren-reason"), Some("refused by boom: the layer panicked: boom"));
    subscription.stop().await;

    let serving = IntSummatorServer::new(Summator).middleware(Boom).serve(&h.bus("int-summator").await).await.unwrap();
    let client = IntSummatorClient::new(&h.bus("sum-requester").await);
    let boom = CallOptions::new().header("boom", true);
    let error = within(10, "a reply", client.int_sum_with(IntSumRequest { a: 1, b: 2 }, boom)).await.unwrap_err();
    assert_eq!(error.status(), Some(&Status::internal("the layer panicked: boom")));
    let reply = within(10, "a reply", client.int_sum(IntSumRequest { a: 1, b: 2 })).await.unwrap();
    assert_eq!(reply.sum, 3, "the server went on");
    serving.stop().await;
}

/// The docs' example: answers `UNAUTHENTICATED` to a caller without the bearer token.
struct RequireToken {
    token: String,
}

impl Middleware for RequireToken {
    fn name(&self) -> &str {
        "require-token"
    }

    fn before_serve(&self, request: &Request<'_>) -> Result<(), Status> {
        match request.headers.get_str("authorization") {
            Some(given) if given.strip_prefix("Bearer ") == Some(self.token.as_str()) => Ok(()),
            _ => Err(Status::unauthenticated(format!("{} needs a bearer token", request.method))),
        }
    }
}

/// Records, in order, each layer's name as it sees a request, and each status code it hears of.
struct Record {
    name: &'static str,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Middleware for Record {
    fn name(&self) -> &str {
        self.name
    }

    fn before_serve(&self, _: &Request<'_>) -> Result<(), Status> {
        self.seen.lock().unwrap().push(self.name.to_owned());
        Ok(())
    }

    fn after_serve(&self, served: &Served<'_>) {
        self.seen.lock().unwrap().push(format!("{} served {}: {}", self.name, served.method, served.code));
    }

    fn after_call(&self, called: &Called<'_>) {
        self.seen.lock().unwrap().push(format!("{} called {}: {}", self.name, called.method, called.code));
    }
}

/// A client's layer: sends its token with every call, or refuses to call without one.
struct BearerToken(Option<&'static str>);

impl Middleware for BearerToken {
    fn before_call(&self, call: &mut Call<'_>) -> Result<(), Status> {
        match self.0 {
            Some(token) => {
                call.headers.insert("authorization", format!("Bearer {token}"));
                Ok(())
            }
            None => Err(Status::unauthenticated(format!("no token to call {} with", call.method))),
        }
    }
}

async fn an_auth_layer_on_a_server_answers_unauthenticated_to_a_call_without_the_token(h: &Harness) {
    let server_seen = Arc::new(Mutex::new(Vec::new()));
    let record = |name| Record { name, seen: Arc::clone(&server_seen) };
    let server_bus = h.bus_with(h.config("int-summator").middleware(record("bus"))).await;
    let serving = IntSummatorServer::new(Summator)
        .middleware(RequireToken { token: "s3cret".into() })
        .middleware(record("server"))
        .serve(&server_bus)
        .await
        .unwrap();
    const PATH: &str = "/at.v1.IntSummator/IntSum";

    let anonymous = IntSummatorClient::new(&h.bus("sum-requester").await);
    let error = within(10, "a reply", anonymous.int_sum(IntSumRequest { a: 1, b: 2 })).await.unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated, "{error}");
    assert_eq!(error.status().unwrap().message(), format!("{PATH} needs a bearer token"));
    let with_token = CallOptions::new().header("authorization", "Bearer s3cret");
    let reply = within(10, "a reply", anonymous.int_sum_with(IntSumRequest { a: 1, b: 2 }, with_token)).await.unwrap();
    assert_eq!(reply.message.sum, 3);
    assert_eq!(
        *server_seen.lock().unwrap(),
        [
            // Refused by the second layer: the third never saw the request, but every layer hears the answer.
            "bus".to_owned(),
            format!("bus served {PATH}: UNAUTHENTICATED"),
            format!("server served {PATH}: UNAUTHENTICATED"),
            "bus".to_owned(),
            "server".to_owned(),
            format!("bus served {PATH}: OK"),
            format!("server served {PATH}: OK"),
        ]
    );

    // A client's layer sends the token with every call, or refuses to call at all without one.
    let client_seen = Arc::new(Mutex::new(Vec::new()));
    let client_config = |token| {
        h.config("sum-requester")
            .middleware(BearerToken(token))
            .middleware(Record { name: "client", seen: Arc::clone(&client_seen) })
    };
    let client = IntSummatorClient::new(&h.bus_with(client_config(Some("s3cret"))).await);
    assert_eq!(within(10, "a reply", client.int_sum(IntSumRequest { a: 2, b: 3 })).await.unwrap().sum, 5);
    let tokenless = IntSummatorClient::new(&h.bus_with(client_config(None)).await);
    let error = tokenless.int_sum(IntSumRequest { a: 2, b: 3 }).await.unwrap_err();
    assert_eq!(error.status(), Some(&Status::unauthenticated(format!("no token to call {PATH} with"))));
    assert_eq!(
        *client_seen.lock().unwrap(),
        [format!("client called {PATH}: OK"), format!("client called {PATH}: UNAUTHENTICATED")]
    );
    assert_eq!(server_seen.lock().unwrap().len(), 11, "one more request served, the refused call never sent");
    serving.stop().await;
}

/// A handler abandoned unfinished, by a stop whose deadline passed, is heard of as such: a layer that counts
/// handlers in flight (Prometheus' gauge) gets back to zero.
async fn a_handler_abandoned_at_a_stop_is_heard_as_abandoned(h: &Harness) {
    let (gate, mut outcomes) = Gate::new();
    let bus = h.bus("abandon-test").await;
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let subscription = UserRegistered::subscribe(&bus, &unique("abandoned"))
        .temporary()
        .middleware(gate)
        .handle(move |_: UserRegistered, _| {
            let _ = started_tx.send(());
            std::future::pending::<Result<(), HandlerError>>()
        })
        .await
        .unwrap();
    bus.publish(&user(1)).await.unwrap();
    within(10, "the handler to start", started.recv()).await;
    subscription.stop_within(std::time::Duration::from_millis(100)).await;
    assert_eq!(next_outcome(&mut outcomes).await, "attempt 1: abandoned");
}

/// Never answers.
struct Hang;

impl warren_contracts::at::v1::IntSummator for Hang {
    async fn int_sum(
        &self,
        _: IntSumRequest,
        _: warren::RpcContext,
    ) -> Result<
        warren_contracts::at::v1::IntSumResponse,
        warren::RpcError<warren_contracts::at::v1::int_sum_error::Reason>,
    > {
        std::future::pending().await
    }
}

/// A call its caller drops, and a request a stopping server abandons, are heard of as `CANCELLED`: what a layer
/// counts adds up.
async fn a_dropped_call_and_an_abandoned_request_are_heard_as_cancelled(h: &Harness) {
    const PATH: &str = "/at.v1.IntSummator/IntSum";
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = |name| Record { name, seen: Arc::clone(&seen) };
    let serving =
        IntSummatorServer::new(Hang).middleware(record("server")).serve(&h.bus("int-summator").await).await.unwrap();
    let client_bus = h.bus_with(h.config("sum-requester").middleware(record("client"))).await;
    let client = IntSummatorClient::new(&client_bus).with_timeout(std::time::Duration::from_secs(30));
    // The caller gives up first, dropping the call.
    let call = client.int_sum(IntSumRequest { a: 1, b: 2 });
    assert!(tokio::time::timeout(std::time::Duration::from_millis(500), call).await.is_err(), "nothing answers");
    // The server stops with the request still running.
    within(10, "the stop", serving.stop_within(std::time::Duration::from_millis(100))).await;
    assert_eq!(
        *seen.lock().unwrap(),
        ["server".to_owned(), format!("client called {PATH}: CANCELLED"), format!("server served {PATH}: CANCELLED")]
    );
}

warren_tests::on_both_transports!(
    a_dropped_call_and_an_abandoned_request_are_heard_as_cancelled,
    a_handler_abandoned_at_a_stop_is_heard_as_abandoned,
    publish_layers_write_headers_the_handler_reads_and_run_in_registration_order,
    a_refused_publish_fails_with_the_reason_and_nothing_is_delivered,
    a_refused_delivery_is_dead_lettered_with_the_reason_and_never_handled,
    a_layer_after_a_refusing_one_hears_the_delivery_as_unseen,
    after_hooks_hear_retries_and_the_final_outcome,
    an_auth_layer_on_a_server_answers_unauthenticated_to_a_call_without_the_token,
    a_panicking_layer_refuses_and_the_subscriber_and_the_server_go_on,
);
