//! Lifecycle: graceful shutdown lets running handlers finish, fails waiting RPC calls, refuses new publishes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use warren::{Code, Error, HandlerError};
use warren_contracts::at::v1::{IntSumRequest, IntSummatorClient};
use warren_contracts::gametrade::v1::UserRegistered;
use warren_tests::{Harness, unique, within};

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
    tokio::time::sleep(Duration::from_millis(200)).await;
    within(10, "shutdown", bus.shutdown(Duration::from_secs(1))).await.unwrap();
    let status = within(5, "the waiting call to end", call).await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Cancelled, "{status}");
}

warren_tests::on_both_transports!(
    shutdown_lets_a_running_handler_finish_and_settle_its_message,
    shutdown_fails_rpc_calls_still_waiting_with_cancelled,
);
