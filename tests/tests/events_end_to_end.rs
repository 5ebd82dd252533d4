//! Typed events over the real RabbitMQ: publish → subscribe, pattern bindings, unroutable and bad input.

use std::time::Duration;

use tokio::sync::mpsc;
use warren::{Error, HandlerError, Outcome};
use warren_contracts::gametrade::v1::{GametradeEvents, ItemListed, UserRegistered};
use warren_tests::{bus, unique, within};

#[tokio::test]
async fn a_published_event_reaches_its_typed_subscriber_equal() {
    let bus = bus("events-test").await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let group = unique("email");
    let subscription = UserRegistered::subscribe(&bus, &group)
        .temporary()
        .handle(move |event: UserRegistered, ctx| {
            let tx = tx.clone();
            async move {
                tx.send((event, ctx.message_id().map(str::to_owned), ctx.app_id().map(str::to_owned))).unwrap();
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();

    let sent = UserRegistered { user_id: 123, username: "gametrader1".into(), email: "g@example.com".into() };
    bus.publish(&sent).await.expect("a bound event publishes and is confirmed");
    let (received, message_id, app_id) = within(10, "delivery", rx.recv()).await.unwrap();
    assert_eq!(received, sent);
    assert!(message_id.is_some_and(|id| uuid::Uuid::parse_str(&id).is_ok_and(|u| u.get_version_num() == 7)));
    assert_eq!(app_id.as_deref(), Some("events-test"));
    subscription.stop().await;
}

#[tokio::test]
async fn a_user_pattern_subscriber_gets_user_registered_and_not_item_listed() {
    let bus = bus("pattern-test").await;
    let (user_tx, mut users) = mpsc::unbounded_channel();
    let (item_tx, mut items) = mpsc::unbounded_channel();
    let user_sub = GametradeEvents::subscribe(&bus, &unique("audit"), "user.*")
        .temporary()
        .handle(move |event: GametradeEvents, _| {
            let tx = user_tx.clone();
            async move {
                tx.send(event).unwrap();
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();
    // A second group bound to item.* keeps ItemListed routable (publishes are mandatory).
    let item_sub = GametradeEvents::subscribe(&bus, &unique("catalog"), "item.*")
        .temporary()
        .handle(move |event: GametradeEvents, _| {
            let tx = item_tx.clone();
            async move {
                tx.send(event).unwrap();
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();

    // ItemListed first: queues are FIFO, so had it been routed to the user.* queue it would arrive first.
    bus.publish(&ItemListed { item_id: 7, ..Default::default() }).await.unwrap();
    bus.publish(&UserRegistered { user_id: 1, username: "u".into(), ..Default::default() }).await.unwrap();

    match within(10, "user.* delivery", users.recv()).await.unwrap() {
        GametradeEvents::UserRegistered(event) => assert_eq!(event.user_id, 1),
        other => panic!("the user.* subscriber received {other:?}"),
    }
    match within(10, "item.* delivery", items.recv()).await.unwrap() {
        GametradeEvents::ItemListed(event) => assert_eq!(event.item_id, 7),
        other => panic!("the item.* subscriber received {other:?}"),
    }
    assert!(users.try_recv().is_err(), "nothing else reached the user.* subscriber");
    user_sub.stop().await;
    item_sub.stop().await;
}

#[tokio::test]
async fn a_pattern_that_matches_no_event_is_refused_at_subscribe_time() {
    let bus = bus("pattern-test").await;
    let error = GametradeEvents::subscribe(&bus, &unique("typo"), "usr.*")
        .temporary()
        .handle(|_: GametradeEvents, _| async { Ok::<_, HandlerError>(()) })
        .await
        .expect_err("usr.* matches no routing key of gametrade.events");
    assert!(matches!(error, Error::Config { .. }), "{error:?}");
    assert!(error.to_string().contains("cannot match any event"), "{error}");
}

#[tokio::test]
async fn an_unroutable_publish_is_an_error_not_a_silent_drop() {
    let bus = bus("unroutable-test").await;
    // Nothing in this test suite binds the `orders` exchange with key "completed"; publishing declares the
    // exchange, so the only outcome left is a return from the broker.
    use warren_contracts::streaming::v1::OrderCompleted;
    match bus.publish(&OrderCompleted { order_id: 1, ..Default::default() }).await {
        Err(Error::Unroutable { exchange, routing_key }) => {
            assert_eq!((exchange.as_str(), routing_key.as_str()), ("orders", "completed"));
        }
        Ok(()) => panic!(
            "publish succeeded: some other queue is bound to orders/completed on this broker; the test needs none"
        ),
        Err(other) => panic!("expected Unroutable, got {other:?}"),
    }
}

#[tokio::test]
async fn garbage_and_wrong_type_go_to_the_dead_letter_queue_with_a_reason() {
    let bus = bus("dlq-test").await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let group = unique("poison");
    let subscription = UserRegistered::subscribe(&bus, &group)
        .temporary()
        .handle(move |event: UserRegistered, _| {
            let tx = tx.clone();
            async move {
                tx.send(event.user_id).unwrap();
                Ok::<_, HandlerError>(Outcome::Ack)
            }
        })
        .await
        .unwrap();
    let queue = subscription.queue().to_owned();

    let raw = raw_channel().await;
    let publish = |body: &'static [u8], kind: &'static str| {
        let raw = raw.clone();
        let queue = queue.clone();
        async move {
            raw.basic_publish(
                "".into(),
                queue.as_str().into(),
                Default::default(),
                body,
                lapin::BasicProperties::default().with_type(kind.into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
    };
    publish(b"\xff\xff\xff\xff garbage", "gametrade.v1.UserRegistered").await;
    publish(b"", "gametrade.v1.ItemListed").await;
    bus.publish(&UserRegistered { user_id: 99, ..Default::default() }).await.unwrap();

    // The consumer went on past both bad messages.
    assert_eq!(within(10, "the good message", rx.recv()).await, Some(99));
    let mut reasons = Vec::new();
    for _ in 0..2 {
        let message = within(10, "a dead letter", get_one(&raw, &format!("{queue}.dlq"))).await;
        reasons.push(message);
    }
    reasons.sort();
    assert!(reasons[0].contains("payload does not decode"), "{reasons:?}");
    assert!(reasons[1].contains("unexpected message type \"gametrade.v1.ItemListed\""), "{reasons:?}");
    subscription.stop().await;
}

async fn raw_channel() -> lapin::Channel {
    let url = std::env::var("RABBITMQ_URL").unwrap_or_else(|_| warren::DEFAULT_URL.to_owned());
    let connection = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .expect("start RabbitMQ: the raw test client could not connect");
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    std::mem::forget(connection); // lives for the test process
    channel
}

/// Polls `queue` until a message arrives; returns its `x-warren-reason` header.
async fn get_one(channel: &lapin::Channel, queue: &str) -> String {
    loop {
        if let Some(message) =
            channel.basic_get(queue.into(), lapin::options::BasicGetOptions { no_ack: true }).await.unwrap()
        {
            let headers = message.delivery.properties.headers().clone().unwrap_or_default();
            return match headers.inner().get("x-warren-reason") {
                Some(lapin::types::AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                other => panic!("dead letter without a reason header: {other:?}"),
            };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
