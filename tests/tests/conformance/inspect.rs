//! What tools that read contracts at run time rely on (the `warren` CLI, through `warren-reflect`): encoded
//! publishes and calls behave as generated ones, and queues can be watched, read, settled by hand and their
//! dead letters replayed.

use std::time::Duration;

use prost::Message as _;
use warren::{
    CallOptions, Code, Encoded, EncodedCall, Exchange, ExchangeKind, HandlerError, Outcome, PublishOptions, Subscriber,
    WireFormat,
};
use warren_contracts::at::v1::{IntSumRequest, IntSumResponse, IntSummatorServer, Overflow};
use warren_contracts::gametrade::v1::{BackgroundTask, UserRegistered};
use warren_tests::{Harness, unique, within};

use crate::collect;

fn events_exchange() -> Exchange {
    Exchange::new("gametrade.events", ExchangeKind::Topic, true, false)
}

async fn an_encoded_publish_arrives_as_a_generated_one(h: &Harness) {
    let bus = h.bus("encoded-test").await;
    let (subscription, mut rx) = collect(UserRegistered::subscribe(&bus, &unique("encoded"))).await;
    let event = UserRegistered { user_id: 9, username: "ada".into(), email: "ada@example.com".into() };
    for format in [WireFormat::Protobuf, WireFormat::Json] {
        let body = match format {
            WireFormat::Json => br#"{"userId":"9","username":"ada","email":"ada@example.com"}"#.to_vec(),
            _ => event.encode_to_vec(),
        };
        let encoded = Encoded::new("gametrade.v1.UserRegistered", format, body);
        let options = PublishOptions::new().header("tenant", "eu-1");
        let id = bus.publish_encoded(&events_exchange(), "user.registered", &encoded, options).await.unwrap();
        let (received, ctx) = within(10, "the encoded event", rx.recv()).await.unwrap();
        assert_eq!(received, event);
        assert_eq!(ctx.message_id(), Some(id.as_str()));
        assert_eq!(ctx.headers().get_str("tenant"), Some("eu-1"));
    }
    let nowhere = Encoded::new("gametrade.v1.UserRegistered", WireFormat::Protobuf, event.encode_to_vec());
    let unroutable = bus.publish_encoded(&events_exchange(), "user.nobody", &nowhere, PublishOptions::new()).await;
    assert!(matches!(unroutable, Err(warren::Error::Unroutable { .. })), "{unroutable:?}");
    subscription.stop().await;
}

async fn an_encoded_call_gets_replies_declared_errors_and_statuses(h: &Harness) {
    let bus = h.bus("encoded-call-test").await;
    let serving = IntSummatorServer::new(warren_tests::Summator).serve(&bus).await.unwrap();
    let call = EncodedCall::new("at.v1.IntSummator", "at.IntSummator", "IntSum", Duration::from_secs(10));

    let request =
        Encoded::new("at.v1.IntSumRequest", WireFormat::Protobuf, IntSumRequest { a: 2, b: 3 }.encode_to_vec());
    let reply = bus.call_encoded(&call, &request, &CallOptions::new()).await.unwrap();
    assert_eq!(reply.error_type, None);
    assert_eq!(IntSumResponse::decode(reply.body.as_slice()).unwrap().sum, 5);

    // JSON in, JSON back.
    let json = Encoded::new("at.v1.IntSumRequest", WireFormat::Json, br#"{"a":"40","b":"2"}"#.to_vec());
    let reply = bus.call_encoded(&call, &json, &CallOptions::new()).await.unwrap();
    assert_eq!((reply.format, reply.body.as_slice()), (WireFormat::Json, br#"{"sum":"42"}"#.as_slice()));

    let overflow = IntSumRequest { a: i64::MAX, b: 1 }.encode_to_vec();
    let reply = bus
        .call_encoded(&call, &Encoded::new("at.v1.IntSumRequest", WireFormat::Protobuf, overflow), &CallOptions::new())
        .await
        .unwrap();
    assert_eq!(reply.error_type.as_deref(), Some("at.v1.IntSumError"));
    let error = warren_contracts::at::v1::IntSumError::decode(reply.body.as_slice()).unwrap();
    let expected = warren_contracts::at::v1::int_sum_error::Reason::Overflow(Overflow { a: i64::MAX, b: 1 });
    assert_eq!(error.reason, Some(expected));

    serving.stop().await;
    let options = CallOptions::new().timeout(Duration::from_millis(300));
    let request =
        Encoded::new("at.v1.IntSumRequest", WireFormat::Protobuf, IntSumRequest { a: 1, b: 1 }.encode_to_vec());
    let status = bus.call_encoded(&call, &request, &options).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status}");
}

async fn a_watch_sees_what_is_published_and_goes_away_with_its_reader(h: &Harness) {
    let bus = h.bus("watch-test").await;
    let mut watch = bus.watch(&events_exchange(), "user.*").await.unwrap();
    let queue = watch.queue().to_owned();
    bus.publish(&UserRegistered { user_id: 1, ..Default::default() }).await.unwrap();
    bus.publish(&warren_contracts::gametrade::v1::ItemListed::default()).await.unwrap_err(); // nobody wants items
    let taken = within(10, "the watched event", watch.next_within(Duration::from_secs(5))).await.expect("one arrives");
    assert_eq!(taken.message.routing_key, "user.registered");
    assert_eq!(taken.message.properties.kind.as_deref(), Some("gametrade.v1.UserRegistered"));
    taken.ack().await.unwrap();
    assert!(watch.next_within(h.quiet_period()).await.is_none(), "only what matches the pattern");
    let recorded = |bus: &warren::Bus, queue: &str| {
        let topology = bus.topology();
        topology.queue(queue).is_some() || topology.bindings.iter().any(|b| b.queue == queue)
    };
    assert!(recorded(&bus, &queue), "declared again after a reconnection while it reads");
    watch.close().await;
    within(10, "the watch's queue to go", async {
        while bus.queue_depth(&queue).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // Forgotten once closed, or dropped: a reconnection does not declare it again, and a bus that watches
    // all day does not keep a record of every watch.
    assert!(!recorded(&bus, &queue), "the closed watch's queue is still in the bus's topology");
    let dropped = bus.watch(&events_exchange(), "user.*").await.unwrap();
    let dropped_queue = dropped.queue().to_owned();
    drop(dropped);
    assert!(!recorded(&bus, &dropped_queue), "the dropped watch's queue is still in the bus's topology");

    let long = "a.".repeat(200);
    let refused = bus.watch(&events_exchange(), &long).await.unwrap_err();
    assert!(refused.to_string().contains("at most 255"), "{refused}");
}

async fn a_queue_read_by_hand_keeps_what_is_not_acknowledged(h: &Harness) {
    let bus = h.bus("read-test").await;
    let missing = bus.read_queue(&unique("no-such-queue"), 10).await.unwrap_err();
    assert!(missing.to_string().contains("does not exist"), "{missing}");

    for id in 1..=3 {
        bus.enqueue(&BackgroundTask { task_id: id, description: "read by hand".into() }).await.unwrap();
    }
    assert_eq!(bus.queue_depth("gametrade.tasks").await.unwrap(), 3);
    let mut reader = bus.read_queue("gametrade.tasks", 10).await.unwrap();
    let mut taken = Vec::new();
    for _ in 0..3 {
        taken.push(within(10, "a task", reader.next_within(Duration::from_secs(5))).await.expect("a task"));
    }
    let ids: Vec<i64> =
        taken.iter().map(|t| BackgroundTask::decode(t.message.body.as_slice()).unwrap().task_id).collect();
    assert_eq!(ids, [1, 2, 3], "in queue order");
    let mut taken = taken.into_iter();
    taken.next().unwrap().requeue().await.unwrap();
    taken.next().unwrap().ack().await.unwrap();
    drop(taken); // the third, unsettled, goes back when the reader closes
    reader.close().await;
    within(10, "two tasks back in the queue", async {
        while bus.queue_depth("gametrade.tasks").await.unwrap() != 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut left: Vec<i64> = Vec::new();
    while let Some(message) = bus.fetch("gametrade.tasks").await.unwrap() {
        assert!(message.redelivered, "both were delivered before");
        left.push(BackgroundTask::decode(message.body.as_slice()).unwrap().task_id);
    }
    // Sorted: on RabbitMQ the requeued task can be delivered again to the reader, still open, and then come
    // back with the third when it closes, in either order.
    left.sort();
    assert_eq!(left, [1, 3]);
}

async fn a_dead_letter_replayed_starts_afresh_where_it_was_first_published(h: &Harness) {
    let bus = h.bus("replay-test").await;
    let group = unique("replay");
    let failing = Subscriber::<UserRegistered>::new(&bus, &group)
        .handle(|_: UserRegistered, _| async { Ok::<_, HandlerError>(Outcome::DeadLetter { reason: "broken".into() }) })
        .await
        .unwrap();
    let queue = failing.queue().to_owned();
    let dlq = format!("{queue}.dlq");
    let options = PublishOptions::new().header("tenant", "eu-1");
    bus.publish_with(&UserRegistered { user_id: 5, ..Default::default() }, options).await.unwrap();
    within(10, "the dead letter", async {
        while bus.queue_depth(&dlq).await.unwrap() != 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    failing.stop().await;

    let mut reader = bus.read_queue(&dlq, 10).await.unwrap();
    let taken = within(10, "the dead letter", reader.next_within(Duration::from_secs(5))).await.unwrap();
    assert_eq!(taken.message.header_str("x-warren-reason"), Some("broken"));
    bus.replay(&taken.message, None).await.unwrap();
    taken.ack().await.unwrap();
    reader.close().await;

    let back = crate::next_in(&bus, &queue).await;
    assert_eq!(UserRegistered::decode(back.body.as_slice()).unwrap().user_id, 5);
    assert_eq!(back.header_str("tenant"), Some("eu-1"), "the application's headers stay");
    let dead_letter_headers =
        ["reason", "original-exchange", "original-routing-key", "consumer", "failed-at", "attempts"];
    for header in dead_letter_headers.map(|h| format!("x-warren-{h}")) {
        assert!(back.headers().get(&header).is_none(), "{header} is taken off: {:?}", back.headers());
    }
    assert_eq!(bus.queue_depth(&dlq).await.unwrap(), 0);

    // A message Warren did not dead-letter does not say where it came from: replayed to a queue only.
    let raw = warren::RawMessage::clone(&back);
    let refused = bus.replay(&raw, None).await.unwrap_err();
    assert!(refused.to_string().contains("replay it to a queue instead"), "{refused}");
    bus.replay(&raw, Some(&dlq)).await.unwrap();
    assert_eq!(crate::next_in(&bus, &dlq).await.body, raw.body);
}

async fn the_broker_says_what_it_is(h: &Harness) {
    let bus = h.bus("broker-test").await;
    let broker = bus.broker().await.unwrap();
    match h.transport {
        warren_tests::Transport::RabbitMq => {
            assert_eq!(broker.product, "RabbitMQ");
            assert!(broker.version.split('.').count() >= 2, "{broker:?}");
            assert!(broker.cluster_name.contains('@'), "{broker:?}");
        }
        warren_tests::Transport::InMemory => assert_eq!(broker.product, "Warren in-memory broker"),
    }
}

warren_tests::on_both_transports!(
    the_broker_says_what_it_is,
    an_encoded_publish_arrives_as_a_generated_one,
    an_encoded_call_gets_replies_declared_errors_and_statuses,
    a_watch_sees_what_is_published_and_goes_away_with_its_reader,
    a_queue_read_by_hand_keeps_what_is_not_acknowledged,
    a_dead_letter_replayed_starts_afresh_where_it_was_first_published,
);
