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
    let fire_and_forget = warren::PublishOptions { fire_and_forget: true, ..Default::default() };
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
    let metrics = tokio::runtime::Handle::current().metrics();
    let subscribe = || async {
        UserRegistered::subscribe(&bus, &unique("churn"))
            .temporary()
            .handle(|_: UserRegistered, _| std::future::ready(Ok::<_, HandlerError>(())))
            .await
            .expect("subscribe")
    };
    subscribe().await.stop().await; // whatever the first subscription starts for the bus as a whole
    let before = metrics.num_alive_tasks();
    for _ in 0..20 {
        subscribe().await.stop().await;
    }
    // A stopped consumer closes its channel in a task of its own, which takes a moment.
    within(5, "the stopped subscriptions' tasks to end", async {
        while metrics.num_alive_tasks() > before {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}
