//! Lifecycle: graceful shutdown lets running handlers finish, fails waiting RPC calls, refuses new publishes; a
//! stop past its deadline, or a close, abandons what is still running.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prost::Message as _;
use tokio::sync::mpsc;
use warren::{Code, Error, HandlerError, Health, RpcContext, RpcError, Subscription};
use warren_contracts::at::v1::int_sum_error::Reason;
use warren_contracts::at::v1::{IntSumRequest, IntSumResponse, IntSummator, IntSummatorClient, IntSummatorServer};
use warren_contracts::gametrade::v1::UserRegistered;
use warren_tests::{Harness, unique, within};

use crate::next_in;

async fn shutdown_lets_a_running_handler_finish_and_settle_its_message(h: &Harness) {
    let bus = h.bus("shutdown-test").await;
    let finished = Arc::new(AtomicBool::new(false));
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let subscription = UserRegistered::subscribe(&bus, &unique("graceful"))
        .handle({
            let finished = Arc::clone(&finished);
            move |_: UserRegistered, _| {
                let (finished, started_tx) = (Arc::clone(&finished), started_tx.clone());
                async move {
                    started_tx.send(()).unwrap();
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    finished.store(true, Ordering::SeqCst);
                    Ok::<_, HandlerError>(())
                }
            }
        })
        .await
        .unwrap();
    let queue = subscription.queue().to_owned();
    bus.publish(&UserRegistered { user_id: 1, ..Default::default() }).await.unwrap();
    within(10, "the handler to start", started.recv()).await;

    within(10, "shutdown", bus.shutdown(Duration::from_secs(5))).await.unwrap();
    assert!(finished.load(Ordering::SeqCst), "shutdown waited for the running handler");
    let observer = h.bus("observer").await;
    assert!(observer.fetch(&queue).await.unwrap().is_none(), "the message was acknowledged, not left in the queue");
    match bus.publish(&UserRegistered::default()).await {
        Err(Error::Closed) => {}
        other => panic!("a publish after shutdown is refused, got {other:?}"),
    }
    drop(subscription);
}

async fn shutdown_fails_rpc_calls_still_waiting_with_cancelled(h: &Harness) {
    let bus = h.bus("shutdown-rpc").await;
    // Nobody serves this call: it would wait for its whole deadline.
    let client = IntSummatorClient::new(&bus).with_timeout(Duration::from_secs(30));
    let call = tokio::spawn(async move { client.int_sum(IntSumRequest { a: 1, b: 2 }).await });
    // Waiting means its request is in the queue (a fixed pause was too short on a busy machine: shut down
    // before the request went out, the call fails as the bus closes, not as a call cut short).
    let observer = h.bus("shutdown-rpc-observer").await;
    within(10, "the request to wait in its queue", async {
        while observer.queue_depth(IntSummatorClient::SERVICE.queue).await.unwrap_or(0) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    within(10, "shutdown", bus.shutdown(Duration::from_secs(1))).await.unwrap();
    let status = within(5, "the waiting call to end", call).await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Cancelled, "{status}");
}

/// Subscribes with `concurrency` handlers that never return, publishes event `user_id` and waits until a handler
/// holds it. The receiver closes once nothing of the handler is left: every clone of its sender lives there.
async fn stuck_on(bus: &warren::Bus, concurrency: usize, user_id: i64) -> (Subscription, mpsc::UnboundedReceiver<()>) {
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (alive, gone) = mpsc::unbounded_channel::<()>();
    let subscription = UserRegistered::subscribe(bus, &unique("stuck"))
        .concurrency(concurrency)
        .handle(move |_: UserRegistered, _| {
            let (started_tx, alive) = (started_tx.clone(), alive.clone());
            async move {
                let _alive = alive;
                started_tx.send(()).unwrap();
                std::future::pending::<()>().await;
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();
    bus.publish(&UserRegistered { user_id, ..Default::default() }).await.unwrap();
    within(10, "the handler to start", started.recv()).await;
    (subscription, gone)
}

/// Past a stop's deadline, a handler still running is abandoned: dropped, not left running with the bus, with
/// one handler at a time and with several. Its message goes back to the queue.
async fn a_stop_abandons_the_handlers_still_running_at_its_deadline(h: &Harness) {
    for concurrency in [1, 4] {
        let bus = h.bus("abandon-test").await;
        let (subscription, mut gone) = stuck_on(&bus, concurrency, 7).await;
        let queue = subscription.queue().to_owned();

        within(10, "the stop", subscription.stop_within(Duration::from_millis(100))).await;
        let left = within(5, "the abandoned handler to be dropped", gone.recv()).await;
        assert_eq!(left, None, "concurrency {concurrency}");
        let message = next_in(&bus, &queue).await;
        assert_eq!(UserRegistered::decode(&message.body[..]).unwrap().user_id, 7, "concurrency {concurrency}");
        assert!(message.redelivered, "the abandoned message went back to the queue, marked redelivered");
        // Counted as abandoned, not left running for the life of the bus.
        let counted = &bus.metrics().await.events["gametrade.v1.UserRegistered"];
        assert_eq!((counted.abandoned, counted.in_flight), (1, 0), "concurrency {concurrency}: {counted:?}");
    }
}

/// `shutdown` and `close` abandon the handlers still running at their deadline as a stop does, one at a time or
/// several, and do not wait past it. The messages go back to the queue.
async fn shutdown_and_close_abandon_the_handlers_still_running(h: &Harness) {
    for (concurrency, close) in [(1, false), (4, false), (1, true), (4, true)] {
        let case = format!("concurrency {concurrency}, {}", if close { "close" } else { "shutdown" });
        let bus = h.bus("abandon-shutdown").await;
        let (subscription, mut gone) = stuck_on(&bus, concurrency, 9).await;
        let queue = subscription.queue().to_owned();

        let began = tokio::time::Instant::now();
        if close {
            within(10, "close", bus.close()).await.unwrap();
        } else {
            within(10, "shutdown", bus.shutdown(Duration::from_millis(200))).await.unwrap();
        }
        assert!(began.elapsed() < Duration::from_secs(2), "{case}: took {:?}", began.elapsed());
        assert_eq!(within(5, "the abandoned handler to be dropped", gone.recv()).await, None, "{case}");
        let message = next_in(&h.bus("abandon-observer").await, &queue).await;
        assert_eq!(UserRegistered::decode(&message.body[..]).unwrap().user_id, 9, "{case}");
        drop(subscription);
    }
}

/// Answers nothing: reports each request it takes, then holds it for ever, with a clone of `alive`.
struct Stuck {
    started: mpsc::UnboundedSender<()>,
    alive: mpsc::UnboundedSender<()>,
}

impl IntSummator for Stuck {
    async fn int_sum(&self, _: IntSumRequest, _: RpcContext) -> Result<IntSumResponse, RpcError<Reason>> {
        let _alive = self.alive.clone();
        self.started.send(()).unwrap();
        std::future::pending().await
    }
}

/// Past a server's stop deadline (the bus's operation timeout), a request still being answered is abandoned.
async fn a_server_stop_abandons_the_requests_still_being_answered(h: &Harness) {
    let bus = h.bus_with(h.config("abandon-server").operation_timeout(Duration::from_millis(300))).await;
    let (started, mut taken) = mpsc::unbounded_channel();
    let (alive, mut gone) = mpsc::unbounded_channel::<()>();
    let serving = IntSummatorServer::new(Stuck { started, alive }).serve(&bus).await.unwrap();
    let client = IntSummatorClient::new(&bus).with_timeout(Duration::from_secs(30));
    let call = tokio::spawn(async move { client.int_sum(IntSumRequest { a: 1, b: 2 }).await });
    within(10, "the server to take the request", taken.recv()).await;

    within(10, "the stop", serving.stop()).await;
    assert_eq!(within(5, "the abandoned request to be dropped", gone.recv()).await, None);
    call.abort();
}

/// `close` stops subscribers at once: what is published after it stays in the queue.
async fn close_stops_subscribers_at_once(h: &Harness) {
    let bus = h.bus("close-test").await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let subscription = UserRegistered::subscribe(&bus, &unique("closed"))
        .handle(move |event: UserRegistered, _| std::future::ready(tx.send(event.user_id).map_err(HandlerError::from)))
        .await
        .unwrap();
    let queue = subscription.queue().to_owned();
    bus.publish(&UserRegistered { user_id: 1, ..Default::default() }).await.unwrap();
    assert_eq!(within(10, "the first event", rx.recv()).await, Some(1));
    assert!(matches!(bus.health(), Health::Connected { .. }), "{:?}", bus.health());

    within(10, "close", bus.close()).await.unwrap();
    assert_eq!(bus.health(), Health::Closed, "closed, on either transport");
    let other = h.bus("close-publisher").await;
    assert!(matches!(other.health(), Health::Connected { .. }), "the broker is still there for other buses");
    other.publish(&UserRegistered { user_id: 2, ..Default::default() }).await.unwrap();
    // The handler (with the sender it holds) is dropped once the subscriber has ended.
    assert_eq!(within(5, "the subscriber to end", rx.recv()).await, None, "the closed bus handled nothing more");
    let message = next_in(&other, &queue).await;
    assert_eq!(UserRegistered::decode(&message.body[..]).unwrap().user_id, 2);
    drop(subscription);
}

/// `Duration::MAX` (or any huge value) means "no deadline" to a caller; `Instant + Duration` panicked on it.
async fn huge_deadlines_saturate_instead_of_panicking(h: &Harness) {
    let bus = h.bus("huge-deadlines").await;
    let server = IntSummatorServer::new(warren_tests::Summator).serve(&bus).await.unwrap();
    let client = IntSummatorClient::new(&bus).with_timeout(Duration::MAX);
    let reply = within(10, "a call with no deadline", client.int_sum(IntSumRequest { a: 2, b: 3 })).await.unwrap();
    assert_eq!(reply.sum, 5);
    let (subscription, _received) = crate::collect(UserRegistered::subscribe(&bus, &unique("huge"))).await;
    within(10, "a stop with no deadline", subscription.stop_within(Duration::MAX)).await;
    within(10, "a server stop", server.stop()).await;
    within(10, "a shutdown with no deadline", bus.shutdown(Duration::MAX)).await.unwrap();
}

warren_tests::on_both_transports!(
    huge_deadlines_saturate_instead_of_panicking,
    shutdown_lets_a_running_handler_finish_and_settle_its_message,
    shutdown_fails_rpc_calls_still_waiting_with_cancelled,
    a_stop_abandons_the_handlers_still_running_at_its_deadline,
    shutdown_and_close_abandon_the_handlers_still_running,
    a_server_stop_abandons_the_requests_still_being_answered,
    close_stops_subscribers_at_once,
);
