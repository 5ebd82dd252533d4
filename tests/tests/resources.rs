//! Nothing a bus starts outlives it, or what it was started for: connections close when the bus is dropped, and
//! the tasks a subscription starts end with it.

use std::time::Duration;

use warren::{BusConfig, HandlerError};
use warren_contracts::at::v1::{IntSumRequest, IntSummatorClient, IntSummatorServer};
use warren_contracts::gametrade::v1::UserRegistered;
use warren_tests::faults::Relay;
use warren_tests::{Harness, Summator, unique, within};

fn event(user_id: i64) -> UserRegistered {
    UserRegistered { user_id, ..Default::default() }
}

/// A bus dropped without `close()` closes its connections. Its supervisor used to hold them, with lapin's I/O
/// thread for each, for as long as the process lived: a service that made a bus per job leaked two connections
/// a job (the benchmark had 112 open by its ninth workload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_bus_closes_its_connections() {
    let h = Harness::rabbitmq().await;
    let (relay, url) = Relay::in_front_of(h.url());
    let bus = h.bus_with(BusConfig::new(&url).unwrap().service_name("fault-dropped")).await;
    // Everything that keeps something running beside the bus: a publishing channel of each kind with the
    // confirmed one's watchdog, a subscription, an RPC server and a client's reply consumer.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let subscription = UserRegistered::subscribe(&bus, &unique("dropped"))
        .temporary()
        .handle(move |e: UserRegistered, _| std::future::ready(tx.send(e.user_id).map_err(HandlerError::from)))
        .await
        .expect("subscribe");
    bus.publish(&event(1)).await.expect("a confirmed publish");
    let fire_and_forget = warren::PublishOptions::new().fire_and_forget();
    bus.publish_with(&event(2), fire_and_forget).await.expect("a fire-and-forget publish");
    let serving = IntSummatorServer::new(Summator).serve(&bus).await.expect("serve");
    let client = IntSummatorClient::new(&bus);
    let reply = within(10, "a reply", client.int_sum(IntSumRequest { a: 2, b: 3 })).await.expect("a call");
    assert_eq!(reply.sum, 5);
    assert_eq!(within(10, "the events", async { [rx.recv().await, rx.recv().await] }).await, [Some(1), Some(2)]);
    assert_eq!(relay.open(), 2, "a bus holds a publishing and a consuming connection");

    serving.stop().await;
    subscription.stop().await;
    drop((client, bus));
    within(5, "the dropped bus's connections to close", async {
        while relay.open() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Subscribing and stopping, again and again, leaves no task behind: each consumer's watch on the connection's
/// reconnections used to run until the next reconnection, one more per subscription.
#[tokio::test]
async fn subscribing_and_stopping_leaves_no_task_behind() {
    let h = Harness::rabbitmq().await;
    let bus = h.bus("churn").await;
    let subscribe = || async {
        UserRegistered::subscribe(&bus, &unique("churn"))
            .temporary()
            .handle(|_: UserRegistered, _| std::future::ready(Ok::<_, HandlerError>(())))
            .await
            .expect("subscribe")
    };
    subscribe().await.stop().await; // whatever the first subscription starts for the bus as a whole
    let before = tokio::runtime::Handle::current().metrics().num_alive_tasks();
    for _ in 0..20 {
        subscribe().await.stop().await;
    }
    // A stopped consumer closes its channel in a task of its own, which takes a moment.
    until_tasks_are_back_to(before, "the stopped subscriptions' tasks to end").await;
}

/// Counts tokio's live tasks until they are back to `before`, for at most five seconds.
async fn until_tasks_are_back_to(before: usize, what: &str) {
    let metrics = tokio::runtime::Handle::current().metrics();
    within(5, what, async {
        while metrics.num_alive_tasks() > before {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// A bus that made RPC calls through a shared in-memory broker, then was dropped, leaves nothing there: its reply
/// path's reader used to wait for as long as the broker lived, and the broker kept its sender.
#[tokio::test]
async fn a_dropped_in_memory_client_leaves_no_reply_reader_on_a_shared_broker() {
    let url = format!("memory://{}", unique("replies"));
    let server = warren::Bus::connect(&url).await.expect("memory:// connects");
    let serving = IntSummatorServer::new(Summator).serve(&server).await.expect("serve");
    let call = |bus: warren::Bus, a: i64| async move {
        let reply = within(5, "a reply", IntSummatorClient::new(&bus).int_sum(IntSumRequest { a, b: 1 })).await;
        assert_eq!(reply.expect("a call").sum, a + 1);
    };
    // The first call starts what the broker keeps for the service's queue (its expiry task).
    call(warren::Bus::connect(&url).await.expect("memory:// connects"), 0).await;
    let before = tokio::runtime::Handle::current().metrics().num_alive_tasks();
    for a in 1..=20 {
        call(warren::Bus::connect(&url).await.expect("memory:// connects"), a).await;
    }
    until_tasks_are_back_to(before, "the dropped clients' reply readers to end").await;
    serving.stop().await;
}

/// An in-memory broker dropped with queues that held expiring messages (RPC requests carry their deadline)
/// leaves no task behind: each such queue's expiry task used to wait for ever.
#[tokio::test]
async fn a_dropped_in_memory_broker_leaves_no_expiry_task() {
    let before = tokio::runtime::Handle::current().metrics().num_alive_tasks();
    for a in 0..20 {
        let bus = warren::Bus::in_memory();
        let serving = IntSummatorServer::new(Summator).serve(&bus).await.expect("serve");
        let reply = within(5, "a reply", IntSummatorClient::new(&bus).int_sum(IntSumRequest { a, b: 1 })).await;
        assert_eq!(reply.expect("a call").sum, a + 1);
        serving.stop().await;
    }
    until_tasks_are_back_to(before, "the dropped brokers' expiry tasks to end").await;
}

/// A subscriber asked for unbounded concurrency runs with [`warren::MAX_CONCURRENCY`] handlers at most,
/// rather than panicking when it starts (tokio's semaphore refuses more than `usize::MAX >> 3` permits).
#[tokio::test]
async fn a_subscriber_asked_for_unbounded_concurrency_runs() {
    let bus = warren::Bus::in_memory();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let subscription = UserRegistered::subscribe(&bus, &unique("unbounded"))
        .concurrency(usize::MAX)
        .handle(move |e: UserRegistered, _| std::future::ready(tx.send(e.user_id).map_err(HandlerError::from)))
        .await
        .unwrap();
    bus.publish(&event(7)).await.unwrap();
    assert_eq!(within(10, "the event handled", rx.recv()).await, Some(7));
    subscription.stop().await;
}
