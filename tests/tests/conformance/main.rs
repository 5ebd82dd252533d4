//! The conformance suite: every behaviour Warren relies on, written once and run against RabbitMQ and the
//! in-memory transport (`rabbitmq::…` and `in_memory::…` in each module). A difference between the two that
//! cannot be removed is listed in docs/in-memory.md under "Documented differences".

mod contracts;
mod delivery;
mod failures;
mod inspect;
mod lifecycle;
mod limits;
mod metadata;
mod middleware;
mod observability;
mod priority;
mod registry;
mod routing;
mod rpc;
mod tracing;

use std::time::Duration;

use tokio::sync::mpsc;
use warren::{Bus, Context, HandlerError, Inbound, RawMessage, Subscriber, Subscription};
use warren_tests::within;

/// Starts `subscriber` (temporary queue) sending each message and its context to the returned receiver.
async fn collect<T: Inbound + Send>(
    subscriber: Subscriber<T>,
) -> (Subscription, mpsc::UnboundedReceiver<(T, Context)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let subscription = subscriber
        .temporary()
        .handle(move |message: T, ctx: Context| {
            let sent = tx.send((message, ctx)).map_err(|_| HandlerError::from("the test stopped listening"));
            async move { sent }
        })
        .await
        .expect("subscribing works");
    (subscription, rx)
}

/// Waits for one message in `queue`.
async fn next_in(bus: &Bus, queue: &str) -> RawMessage {
    within(600, &format!("a message in {queue}"), async {
        loop {
            if let Some(message) = bus.fetch(queue).await.unwrap() {
                return message;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}
