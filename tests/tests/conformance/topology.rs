//! `TopologyMode::Verify`: a bus that declares nothing, for users without `configure` permission. It checks that
//! what it needs exists, and fails where it would have declared it with one error listing everything missing.

use std::time::Duration;

use warren::{Error, HandlerError, Outcome, RetryPolicy, TopologyMode};
use warren_contracts::at::v1::{IntSumRequest, IntSummatorClient, IntSummatorServer};
use warren_contracts::gametrade::v1::UserRegistered;
use warren_tests::{Harness, Summator, unique, within};

fn missing(error: Error) -> Vec<String> {
    match error {
        Error::MissingTopology { missing } => missing,
        other => panic!("expected MissingTopology, got: {other}"),
    }
}

async fn a_verifying_bus_declares_nothing_and_lists_what_is_missing(h: &Harness) {
    let verifying = h.bus_with(h.config("verifier").topology(TopologyMode::Verify)).await;
    let event = UserRegistered { user_id: 7, username: "ada".into(), ..Default::default() };

    // A subscriber needs its exchange, its queue and dead-letter queue, and its policy's delay queues.
    let subscriber = UserRegistered::subscribe(&verifying, "audit").retry(RetryPolicy::default());
    let queue = subscriber.queue_name();
    let error = subscriber.handle(|_: UserRegistered, _| async { Ok::<_, warren::HandlerError>(()) }).await;
    let error = error.expect_err("nothing exists yet");
    let text = error.to_string();
    let missing_items = missing(error);
    assert_eq!(missing_items.len(), 5, "exchange, queue, dlq, two delay queues: {text}");
    for name in ["exchange \"gametrade.events\"", &format!("queue \"{queue}\""), ".dlq\"", ".retry.1000", ".retry.2000"]
    {
        assert!(text.contains(name), "names {name}: {text}");
    }
    assert!(text.contains("rabbitmqadmin") && text.contains("rabbitmqctl import_definitions"), "{text}");

    // A publish needs its exchange; a server its queue and the registry it announces itself in.
    assert_eq!(missing(verifying.publish(&event).await.unwrap_err()).len(), 1);
    let error = IntSummatorServer::new(Summator).serve(&verifying).await.unwrap_err();
    let text = error.to_string();
    assert_eq!(missing(error).len(), 2, "{text}");
    assert!(text.contains("\"at.IntSummator\"") && text.contains("\"warren.registry\""), "{text}");

    // It declared nothing.
    assert!(verifying.topology().queues.is_empty() && verifying.topology().exchanges.is_empty());
    let declaring = h.bus("declarer").await;
    assert!(declaring.queue_stats(&queue).await.is_err(), "the verifying bus declared {queue}");

    // Once they exist (declared here by a bus that may), the verifying bus consumes, publishes and serves.
    let declarer = UserRegistered::subscribe(&declaring, "audit")
        .retry(RetryPolicy::never())
        .handle(|_: UserRegistered, _| async { Ok::<_, HandlerError>(()) })
        .await
        .unwrap();
    declarer.stop().await; // its queue stays, bound
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let subscription = UserRegistered::subscribe(&verifying, "audit")
        .retry(RetryPolicy::never())
        .handle(move |event: UserRegistered, _| {
            let sent = tx.send(event.user_id).map_err(|_| HandlerError::from("the test stopped listening"));
            async move { sent }
        })
        .await
        .expect("everything the subscriber needs exists");
    verifying.publish(&event).await.unwrap();
    assert_eq!(within(10, "the event", rx.recv()).await, Some(7));
    subscription.stop().await;

    IntSummatorServer::new(Summator).serve(&declaring).await.unwrap().stop().await;
    declaring.services().await.unwrap(); // declares the registry
    let serving = IntSummatorServer::new(Summator).serve(&verifying).await.expect("its queue and the registry exist");
    let client = IntSummatorClient::new(&verifying);
    let reply = within(10, "a reply", client.int_sum(IntSumRequest { a: 2, b: 3 })).await.unwrap();
    assert_eq!(reply.sum, 5);
    serving.stop().await;
    assert!(verifying.topology().queues.is_empty(), "the verifying bus declared no queue");
}

/// A handler may ask for a delay its policy does not have, whose delay queue a verifying bus finds missing (it
/// checks the policy's delays when it subscribes): the delivery is dead-lettered with why, once, not requeued
/// to fail again for ever with its attempts never counted.
async fn a_retry_that_cannot_be_scheduled_is_dead_lettered_with_why(h: &Harness) {
    let declaring = h.bus("declarer").await;
    let group = unique("unscheduled");
    // One retry, after 100 ms: a delay queue `….retry.100`, which a declaring bus declares at its first retry.
    let policy = RetryPolicy::new(2, Duration::from_millis(100), 1, Duration::from_millis(100));
    let (tx, mut attempts) = tokio::sync::mpsc::unbounded_channel();
    let declarer = UserRegistered::subscribe(&declaring, &group)
        .retry(policy)
        .handle(move |_: UserRegistered, ctx| {
            let _ = tx.send(ctx.attempt());
            let outcome =
                if ctx.attempt() == 1 { Outcome::Retry { after: Duration::from_millis(100) } } else { Outcome::Ack };
            async move { Ok::<_, HandlerError>(outcome) }
        })
        .await
        .unwrap();
    let queue = declarer.queue().to_owned();
    declaring.publish(&UserRegistered { user_id: 1, ..Default::default() }).await.unwrap();
    for attempt in 1..=2 {
        assert_eq!(within(10, "the declarer's attempts", attempts.recv()).await, Some(attempt));
    }
    declarer.stop().await;
    let verifying = h.bus_with(h.config("verifier").topology(TopologyMode::Verify)).await;
    let (tx, mut handled) = tokio::sync::mpsc::unbounded_channel();
    let subscription = UserRegistered::subscribe(&verifying, &group)
        .retry(policy)
        .handle(move |event: UserRegistered, _| {
            let _ = tx.send(event.user_id);
            async { Ok::<_, HandlerError>(Outcome::Retry { after: Duration::from_secs(30) }) }
        })
        .await
        .expect("what the policy needs exists");
    verifying.publish(&UserRegistered { user_id: 9, ..Default::default() }).await.unwrap();
    assert_eq!(within(10, "the handler", handled.recv()).await, Some(9));
    let dlq = format!("{queue}.dlq");
    let dead = within(10, "the dead letter", async {
        loop {
            if let Some(message) = declaring.fetch(&dlq).await.unwrap() {
                break message;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let reason = dead.header_str("x-warren-reason").unwrap_or_default().to_owned();
    assert!(reason.contains("its retry could not be scheduled") && reason.contains(".retry.30000"), "{reason}");
    tokio::time::sleep(h.quiet_period()).await;
    assert!(handled.try_recv().is_err(), "handled once, not requeued to fail again");
    subscription.stop().await;
}

warren_tests::on_both_transports!(
    a_verifying_bus_declares_nothing_and_lists_what_is_missing,
    a_retry_that_cannot_be_scheduled_is_dead_lettered_with_why,
);
