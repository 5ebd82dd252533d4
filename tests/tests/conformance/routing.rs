//! Routing: topic patterns, direct keys, fanout, refused patterns, unroutable publishes.

use std::sync::Arc;

use warren::{Error, HandlerError, Outcome, PublishOptions};
use warren_contracts::gametrade::v1::{GametradeEvents, ItemListed, UserRegistered};
use warren_contracts::streaming::v1::{OrderCompleted, OrderProcessing, SystemEvent};
use warren_tests::{Harness, Transport, unique, within};

use super::{collect, next_in};

async fn a_published_event_reaches_its_typed_subscriber_equal(h: &Harness) {
    let bus = h.bus("events-test").await;
    let (subscription, mut rx) = collect(UserRegistered::subscribe(&bus, &unique("email"))).await;
    let sent = UserRegistered { user_id: 123, username: "gametrader1".into(), email: "g@example.com".into() };
    bus.publish(&sent).await.expect("a bound event publishes and is confirmed");
    let (received, ctx) = within(10, "delivery", rx.recv()).await.unwrap();
    assert_eq!(received, sent);
    let id = ctx.message_id().expect("a message id");
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7, "message ids are UUID v7");
    assert_eq!(ctx.correlation_id(), Some(id), "the correlation id defaults to the message id");
    assert_eq!(ctx.app_id(), Some("events-test"));
    assert_eq!((ctx.exchange(), ctx.routing_key()), ("gametrade.events", "user.registered"));
    assert!(!ctx.redelivered());
    assert_eq!(ctx.attempt(), 1);
    subscription.stop().await;
}

/// A message that starts a conversation travels without a correlation id (its message id says it) and is read
/// as its own; one given a correlation id carries it. Seen on the wire through the dead-letter copies.
async fn a_correlation_id_travels_only_when_it_differs_from_the_message_id(h: &Harness) {
    let bus = h.bus("correlation-test").await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let subscription = UserRegistered::subscribe(&bus, &unique("correlation"))
        .temporary()
        .handle(move |_: UserRegistered, ctx: warren::Context| {
            let seen = (ctx.message_id().map(str::to_owned), ctx.correlation_id().map(str::to_owned));
            let sent = tx.send(seen).map_err(|_| HandlerError::from("the test stopped listening"));
            async move { sent.map(|()| Outcome::DeadLetter { reason: "to look at it".into() }) }
        })
        .await
        .unwrap();
    let dlq = format!("{}.dlq", subscription.queue());

    bus.publish(&UserRegistered { user_id: 1, ..Default::default() }).await.unwrap();
    let (id, correlation) = within(10, "the first delivery", rx.recv()).await.unwrap();
    assert_eq!(correlation, id, "a message that starts a conversation is read as its own correlation id");
    let dead = next_in(&bus, &dlq).await;
    assert_eq!(dead.properties.message_id, id);
    assert_eq!(dead.properties.correlation_id, None, "it travels without one");

    let options = PublishOptions::new().correlation_id("order-7");
    bus.publish_with(&UserRegistered { user_id: 2, ..Default::default() }, options).await.unwrap();
    let (_, correlation) = within(10, "the second delivery", rx.recv()).await.unwrap();
    assert_eq!(correlation.as_deref(), Some("order-7"));
    let dead = next_in(&bus, &dlq).await;
    assert_eq!(dead.properties.correlation_id.as_deref(), Some("order-7"));
    subscription.stop().await;
}

async fn a_user_pattern_subscriber_gets_user_registered_and_not_item_listed(h: &Harness) {
    let bus = h.bus("pattern-test").await;
    let (users_sub, mut users) = collect(GametradeEvents::subscribe(&bus, &unique("audit"), "user.*")).await;
    // A second group bound to item.# keeps ItemListed routable (publishes are mandatory).
    let (items_sub, mut items) = collect(GametradeEvents::subscribe(&bus, &unique("catalog"), "item.#")).await;

    // ItemListed first: queues are FIFO, so had it been routed to the user.* queue it would arrive first.
    bus.publish(&ItemListed { item_id: 7, ..Default::default() }).await.unwrap();
    bus.publish(&UserRegistered { user_id: 1, ..Default::default() }).await.unwrap();

    match within(10, "user.* delivery", users.recv()).await.unwrap().0 {
        GametradeEvents::UserRegistered(event) => assert_eq!(event.user_id, 1),
        other => panic!("the user.* subscriber received {other:?}"),
    }
    match within(10, "item.# delivery", items.recv()).await.unwrap().0 {
        GametradeEvents::ItemListed(event) => assert_eq!(event.item_id, 7),
        other => panic!("the item.# subscriber received {other:?}"),
    }
    assert!(users.try_recv().is_err(), "nothing else reached the user.* subscriber");
    users_sub.stop().await;
    items_sub.stop().await;
}

async fn a_direct_exchange_routes_by_exact_key(h: &Harness) {
    let bus = h.bus("direct-test").await;
    let (subscription, mut rx) = collect(OrderProcessing::subscribe(&bus, &unique("orders"))).await;
    bus.publish(&OrderProcessing { order_id: 456, status: "processing".into(), ..Default::default() }).await.unwrap();
    let (order, ctx) = within(10, "the order", rx.recv()).await.unwrap();
    assert_eq!((order.order_id, ctx.exchange(), ctx.routing_key()), (456, "orders", "process"));
    subscription.stop().await;
}

async fn a_fanout_exchange_delivers_to_every_group(h: &Harness) {
    let bus = h.bus("fanout-test").await;
    let (first_sub, mut first) = collect(SystemEvent::subscribe(&bus, &unique("monitoring"))).await;
    let (second_sub, mut second) = collect(SystemEvent::subscribe(&bus, &unique("audit"))).await;
    bus.publish(&SystemEvent { event_name: "service_restart".into(), ..Default::default() }).await.unwrap();
    for rx in [&mut first, &mut second] {
        let (event, _) = within(10, "the system event", rx.recv()).await.unwrap();
        assert_eq!(event.event_name, "service_restart");
    }
    first_sub.stop().await;
    second_sub.stop().await;
}

/// One message, several queues, subscribers of different types: each gets its own equal value (the in-memory
/// broker decodes once per type and clones for the rest; nothing one handler does is seen by another).
async fn one_event_reaches_groups_of_different_types_each_with_its_own_copy(h: &Harness) {
    let bus = h.bus("fan-out-test").await;
    let (typed_sub, mut typed) = collect(UserRegistered::subscribe(&bus, &unique("welcome"))).await;
    let (first_sub, mut first) = collect(GametradeEvents::subscribe(&bus, &unique("audit"), "user.*")).await;
    let (second_sub, mut second) = collect(GametradeEvents::subscribe(&bus, &unique("stats"), "#")).await;
    let sent: Vec<UserRegistered> = (1..=20)
        .map(|i| UserRegistered { user_id: i, username: format!("player{i}"), email: format!("p{i}@example.com") })
        .collect();
    for event in &sent {
        bus.publish(event).await.unwrap();
    }
    for expected in &sent {
        assert_eq!(&within(10, "the typed subscriber", typed.recv()).await.unwrap().0, expected);
        for rx in [&mut first, &mut second] {
            match within(10, "an enum subscriber", rx.recv()).await.unwrap().0 {
                GametradeEvents::UserRegistered(mut received) => {
                    assert_eq!(&received, expected);
                    received.username.push_str("-changed"); // owned: the other groups' copies are unaffected
                }
                other => panic!("expected UserRegistered, got {other:?}"),
            }
        }
    }
    for subscription in [typed_sub, first_sub, second_sub] {
        subscription.stop().await;
    }
}

/// `Subscriber::shared` handlers get the event behind an `Arc`, alongside owned ones of the same type on the same
/// message. In memory, the shared subscribers of one message hold the very same value; over RabbitMQ each
/// delivery is decoded on its own, so only equality holds there.
async fn shared_subscribers_read_one_value_and_owned_ones_keep_their_own(h: &Harness) {
    let bus = h.bus("shared-test").await;
    let (first_sub, mut first) = collect(GametradeEvents::subscribe(&bus, &unique("first"), "user.*").shared()).await;
    let (owned_sub, mut owned) = collect(GametradeEvents::subscribe(&bus, &unique("owned"), "user.*")).await;
    let (second_sub, mut second) = collect(GametradeEvents::subscribe(&bus, &unique("second"), "#").shared()).await;
    let sent: Vec<UserRegistered> = (1..=5)
        .map(|i| UserRegistered { user_id: i, username: format!("player{i}"), email: format!("p{i}@example.com") })
        .collect();
    for event in &sent {
        bus.publish(event).await.unwrap();
    }
    for expected in &sent {
        let expected = GametradeEvents::UserRegistered(expected.clone());
        let (one, _) = within(10, "the first shared subscriber", first.recv()).await.unwrap();
        let (mine, _) = within(10, "the owned subscriber", owned.recv()).await.unwrap();
        let (other, _) = within(10, "the second shared subscriber", second.recv()).await.unwrap();
        assert_eq!((&*one, &mine, &*other), (&expected, &expected, &expected));
        if h.transport == Transport::InMemory {
            assert!(Arc::ptr_eq(&one, &other), "in memory, shared subscribers of one message share its value");
        }
    }
    // A typed subscriber can share too (its own type's decoding: the "#" group above decodes its own enum).
    let (typed_sub, mut typed) = collect(ItemListed::subscribe(&bus, &unique("typed")).shared()).await;
    let item = ItemListed { item_id: 7, ..Default::default() };
    bus.publish(&item).await.unwrap();
    assert_eq!(*within(10, "the typed shared subscriber", typed.recv()).await.unwrap().0, item);
    for subscription in [first_sub, owned_sub, second_sub, typed_sub] {
        subscription.stop().await;
    }
}

async fn a_pattern_that_matches_no_event_is_refused_at_subscribe_time(h: &Harness) {
    let bus = h.bus("pattern-test").await;
    let error = GametradeEvents::subscribe(&bus, &unique("typo"), "usr.*")
        .temporary()
        .handle(|_: GametradeEvents, _| async { Ok::<_, HandlerError>(()) })
        .await
        .expect_err("usr.* matches no routing key of gametrade.events");
    assert!(matches!(error, Error::Config { .. }), "{error:?}");
    assert!(error.to_string().contains("cannot match any event"), "{error}");
}

async fn an_unroutable_publish_is_an_error_not_a_silent_drop(h: &Harness) {
    let bus = h.bus("unroutable-test").await;
    // Nothing in the suite binds the `orders` exchange with key "completed"; publishing declares the
    // exchange, so the only outcome left is a return from the broker.
    match bus.publish(&OrderCompleted { order_id: 1, ..Default::default() }).await {
        Err(Error::Unroutable { exchange, routing_key }) => {
            assert_eq!((exchange.as_str(), routing_key.as_str()), ("orders", "completed"));
        }
        Ok(()) => {
            panic!("publish succeeded: some queue is bound to orders/completed on this broker; the test needs none")
        }
        Err(other) => panic!("expected Unroutable, got {other:?}"),
    }
}

/// Waits for publishing lanes that each return what went wrong, and asserts nothing did.
async fn none_wrong(mut lanes: tokio::task::JoinSet<Vec<String>>, how: &str) {
    let mut wrong = Vec::new();
    while let Some(lane) = within(120, "the publishers", lanes.join_next()).await {
        wrong.extend(lane.unwrap());
    }
    assert!(wrong.is_empty(), "{} publishes {how}, e.g. {:?}", wrong.len(), &wrong[..wrong.len().min(5)]);
}

/// Receives until `count` distinct `UserRegistered` events have arrived; their user ids.
async fn receive_distinct(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(UserRegistered, warren::Context)>,
    count: usize,
    what: &str,
) -> std::collections::BTreeSet<i64> {
    let mut received = std::collections::BTreeSet::new();
    while received.len() < count {
        let (event, _) = within(30, what, rx.recv()).await.unwrap();
        received.insert(event.user_id);
    }
    received
}

/// Many publishes in flight at once, routable and unroutable mixed: each gets its own outcome. (lapin hands a
/// returned message to whichever confirm it completes next, and RabbitMQ acks many publishes at once: before
/// Warren matched returns by message id, one publish in nine to twenty here got another's outcome.)
async fn concurrent_publishes_each_get_their_own_outcome(h: &Harness) {
    let bus = h.bus("pairing-test").await;
    let (subscription, mut rx) = collect(UserRegistered::subscribe(&bus, &unique("pairing"))).await;
    // Large routable messages keep lapin busy between numbering a publish and queueing it.
    let large = "x".repeat(64 * 1024);
    let mut lanes = tokio::task::JoinSet::new();
    for lane in 0..32_i64 {
        let (bus, large) = (bus.clone(), large.clone());
        lanes.spawn(async move {
            let mut wrong = Vec::new();
            for i in 0..100_i64 {
                let seq = lane * 100 + i;
                if seq % 2 == 0 {
                    let event = UserRegistered { user_id: seq, username: large.clone(), email: String::new() };
                    if let Err(error) = bus.publish(&event).await {
                        wrong.push(format!("routable {seq}: {error}"));
                    }
                } else {
                    match bus.publish(&OrderCompleted { order_id: seq, ..Default::default() }).await {
                        Err(Error::Unroutable { .. }) => {}
                        other => wrong.push(format!("unroutable {seq}: {other:?}")),
                    }
                }
            }
            wrong
        });
    }
    none_wrong(lanes, "got another's outcome").await;
    // Every routable event arrives (unroutable ones are another type: they cannot).
    receive_distinct(&mut rx, 1_600, "the routable events").await;
    subscription.stop().await;
}

/// A publish to a missing exchange fails alone: RabbitMQ closes the channel for it, and lapin fails every confirm
/// waiting on that channel with the same error, but the publishes in flight beside it are sent again.
async fn a_publish_to_a_missing_exchange_fails_alone(h: &Harness) {
    let bus = h.bus("missing-exchange-test").await;
    let (subscription, mut rx) = collect(UserRegistered::subscribe(&bus, &unique("beside"))).await;
    let mut lanes = tokio::task::JoinSet::new();
    for lane in 0..16_i64 {
        let bus = bus.clone();
        lanes.spawn(async move {
            let mut wrong = Vec::new();
            for i in 0..50_i64 {
                let seq = lane * 50 + i;
                if seq % 25 == 7 {
                    match bus.publish_bytes("no-such-exchange", "key", b"payload", Default::default()).await {
                        Err(Error::ExchangeNotFound { exchange }) if exchange == "no-such-exchange" => {}
                        other => wrong.push(format!("to the missing exchange {seq}: {other:?}")),
                    }
                } else if let Err(error) = bus.publish(&UserRegistered { user_id: seq, ..Default::default() }).await {
                    wrong.push(format!("beside it {seq}: {error:?}"));
                }
            }
            wrong
        });
    }
    none_wrong(lanes, "got the wrong outcome").await;
    // Every event beside the failing publishes arrives, at least once.
    receive_distinct(&mut rx, 800 - 32, "the events beside").await;
    subscription.stop().await;
}

/// A publish polled once and then dropped is sent all the same, as the memory transport sends it at its first
/// poll. (Over AMQP, a publish that finds others in flight waits one poll to be handed to lapin with the
/// publishes ready beside it; dropped before that, it is handed over as it is dropped, not left until another
/// publish comes.)
async fn a_publish_dropped_after_its_first_poll_is_sent_all_the_same(h: &Harness) {
    let bus = h.bus("dropped-test").await;
    let (subscription, mut rx) = collect(UserRegistered::subscribe(&bus, &unique("dropped"))).await;
    // The first publish opens the publishing channel; the ones below find it open.
    bus.publish(&UserRegistered { user_id: 1_000, ..Default::default() }).await.unwrap();
    assert_eq!(within(30, "the first event", rx.recv()).await.unwrap().0.user_id, 1_000);
    for round in 0..10_i64 {
        // A fresh cooperative budget: the memory transport's publish spends a unit of it at its first poll.
        tokio::task::yield_now().await;
        let awaited = UserRegistered { user_id: 2 * round, ..Default::default() };
        let mut in_flight = std::pin::pin!(bus.publish(&awaited));
        // Polled twice: sent (the second poll hands over a publish that waited to be sent with others), so the
        // one dropped below is the only one not yet handed to the broker.
        let mut polled = std::task::Poll::Pending;
        for _ in 0..2 {
            if polled.is_pending() {
                polled = std::future::poll_fn(|cx| std::task::Poll::Ready(in_flight.as_mut().poll(cx))).await;
            }
        }
        let dropped = UserRegistered { user_id: 2 * round + 1, ..Default::default() };
        let _ = futures_util::FutureExt::now_or_never(bus.publish(&dropped));
        match polled {
            std::task::Poll::Ready(published) => published.unwrap(),
            std::task::Poll::Pending => in_flight.await.unwrap(),
        }
        // Both arrive before anything else is published.
        let received = receive_distinct(&mut rx, 2, "the awaited event and the dropped one").await;
        assert_eq!(received, [2 * round, 2 * round + 1].into(), "round {round}");
    }
    subscription.stop().await;
}

warren_tests::on_both_transports!(
    a_published_event_reaches_its_typed_subscriber_equal,
    a_correlation_id_travels_only_when_it_differs_from_the_message_id,
    a_user_pattern_subscriber_gets_user_registered_and_not_item_listed,
    a_direct_exchange_routes_by_exact_key,
    a_fanout_exchange_delivers_to_every_group,
    one_event_reaches_groups_of_different_types_each_with_its_own_copy,
    shared_subscribers_read_one_value_and_owned_ones_keep_their_own,
    a_pattern_that_matches_no_event_is_refused_at_subscribe_time,
    an_unroutable_publish_is_an_error_not_a_silent_drop,
    concurrent_publishes_each_get_their_own_outcome,
    a_publish_to_a_missing_exchange_fails_alone,
    a_publish_dropped_after_its_first_poll_is_sent_all_the_same,
);
