//! Queue length limits: a contract's `limit` makes a queue refuse what does not fit (`x-max-length` with
//! `reject-publish`), and the publisher learns it from a negative confirm, as `Error::Nacked` with the reason.

use prost::Message as _;
use warren::{Error, HandlerError};
use warren_tests::quickstart::rich::v1::{RenderThumbnail, StockLow};
use warren_tests::{Harness, Transport, unique, within};

/// The contract's work queue of `RenderThumbnail`, which holds at most 3 ready tasks.
const QUEUE: &str = "rich.thumbnails";

fn thumbnail(n: u32) -> RenderThumbnail {
    RenderThumbnail { url: format!("https://img.example/{n}.png") }
}

/// The url of the next task in the queue: taking it frees a place.
async fn take(bus: &warren::Bus) -> String {
    let message = within(10, "a fetch", bus.fetch(QUEUE)).await.unwrap().expect("a task is ready");
    RenderThumbnail::decode(message.body.as_slice()).expect("a thumbnail task").url
}

async fn a_full_queue_refuses_the_next_publish_until_a_message_is_taken(h: &Harness) {
    let bus = h.bus("limits-test").await;
    for n in 1..=3 {
        within(10, "an enqueue", bus.enqueue(&thumbnail(n))).await.expect("the queue has room");
    }
    let refused = within(10, "the refused enqueue", bus.enqueue(&thumbnail(4))).await.expect_err("the queue is full");
    let Error::Nacked { exchange, routing_key, reason } = &refused else {
        panic!("a full queue's refusal is Error::Nacked, not: {refused:?}")
    };
    assert_eq!((exchange.as_str(), routing_key.as_str()), ("", QUEUE));
    let expected = match h.transport {
        // The in-memory broker knows which queue refused it.
        Transport::InMemory => {
            "queue \"rich.thumbnails\" is full (at most 3 messages; x-max-length with reject-publish)"
        }
        // RabbitMQ's nack says nothing: Warren says what usually causes one.
        Transport::RabbitMq => {
            "the broker refused it; a queue it routes to may be full (x-max-length with reject-publish)"
        }
    };
    assert!(reason.contains(expected), "{refused}");
    assert!(refused.to_string().contains(reason.as_str()), "the reason is part of the message: {refused}");
    assert_eq!(bus.queue_depth(QUEUE).await.unwrap(), 3, "what the queue held stays; the refused task is not in it");

    // Taking one frees a place: the next publish is confirmed, and the one after is refused again.
    assert_eq!(take(&bus).await, thumbnail(1).url);
    within(10, "an enqueue", bus.enqueue(&thumbnail(5))).await.expect("a place was freed");
    let again = within(10, "the refused enqueue", bus.enqueue(&thumbnail(6))).await;
    assert!(matches!(again, Err(Error::Nacked { .. })), "full again: {again:?}");
    let mut left = Vec::new();
    for _ in 0..3 {
        left.push(take(&bus).await);
    }
    assert_eq!(left, [2, 3, 5].map(|n| thumbnail(n).url), "in order, none dropped (no drop-head)");
    bus.close().await.unwrap();
}

/// Without a confirm there is no nack to carry the refusal: a fire-and-forget publish to a full queue succeeds
/// as far as its sender can tell, and the message is dropped, as RabbitMQ's reject-publish drops it.
async fn a_fire_and_forget_publish_to_a_full_queue_is_dropped_unsaid(h: &Harness) {
    let bus = h.bus("limits-test").await;
    for n in 1..=3 {
        within(10, "an enqueue", bus.enqueue(&thumbnail(n))).await.expect("the queue has room");
    }
    let forget = warren::PublishOptions::default().fire_and_forget();
    within(10, "the unconfirmed enqueue", bus.enqueue_with(&thumbnail(4), forget)).await.expect("no confirm, no nack");
    let after = within(10, "a confirmed enqueue", bus.enqueue(&thumbnail(5))).await;
    assert!(matches!(after, Err(Error::Nacked { .. })), "still full: {after:?}");
    // The unconfirmed one went on another channel: give it time to arrive before a place is freed.
    tokio::time::sleep(h.quiet_period()).await;
    let mut left = Vec::new();
    for _ in 0..3 {
        left.push(take(&bus).await);
    }
    assert_eq!(left, [1, 2, 3].map(|n| thumbnail(n).url), "the dropped task is not in the queue");
    bus.close().await.unwrap();
}

async fn an_event_refused_by_one_full_queue_still_reaches_the_others(h: &Harness) {
    let bus = h.bus("limits-test").await;
    let groups = [unique("stock-a"), unique("stock-b")];
    // Each group's durable queue (at most 2 ready events) is declared by its subscriber, and stays once stopped.
    for group in &groups {
        let subscription =
            StockLow::subscribe(&bus, group).handle(|_: StockLow, _| async { Ok::<_, HandlerError>(()) });
        within(10, "a subscriber", subscription).await.unwrap().stop().await;
    }
    let queues = groups.map(|group| format!("{group}.rich.v1.StockLow"));
    let low = |sku: &str| StockLow { sku: sku.to_owned() };
    for sku in ["a", "b"] {
        within(10, "a publish", bus.publish(&low(sku))).await.expect("both queues have room");
    }
    // The first group takes one: its queue has room again, the second's does not.
    let taken = within(10, "a fetch", bus.fetch(&queues[0])).await.unwrap().expect("an event is ready");
    assert_eq!(StockLow::decode(taken.body.as_slice()).unwrap(), low("a"));
    let refused = within(10, "the refused publish", bus.publish(&low("c"))).await.expect_err("one queue is full");
    let Error::Nacked { exchange, routing_key, reason } = &refused else { panic!("not Error::Nacked: {refused:?}") };
    assert_eq!((exchange.as_str(), routing_key.as_str()), ("rich.events", "stock.low"));
    if h.transport == Transport::InMemory {
        let full = format!("queue \"{}\" is full (at most 2 messages; x-max-length with reject-publish)", queues[1]);
        assert!(reason.contains(&full), "{refused}");
        assert!(reason.contains("though the other queues it routes to took it"), "{refused}");
    }
    // As on RabbitMQ: the queue with room took it, the full one did not.
    assert_eq!(bus.queue_depth(&queues[0]).await.unwrap(), 2, "the first group's queue took the refused event");
    assert_eq!(bus.queue_depth(&queues[1]).await.unwrap(), 2, "the full queue did not");
    bus.close().await.unwrap();
}

warren_tests::on_both_transports!(
    a_full_queue_refuses_the_next_publish_until_a_message_is_taken,
    an_event_refused_by_one_full_queue_still_reaches_the_others,
    a_fire_and_forget_publish_to_a_full_queue_is_dropped_unsaid,
);
