//! Several broker addresses on one bus (a cluster's nodes): the bus connects to the first that answers and,
//! when it loses that one, recovers through the others. Two relays in front of the local broker stand in for
//! two nodes, so losing one is dropping its relay; the cluster itself is tested in `cluster.rs`.

use std::sync::Arc;
use std::time::Duration;

use warren::{Bus, BusConfig, Health, PublishOptions};
use warren_contracts::gametrade::v1::UserRegistered;
use warren_tests::faults::{Ledger, Relay};
use warren_tests::{Harness, unique, within};

/// The harness's URL with its host and port replaced by `addresses`.
fn with_addresses(url: &str, addresses: &[String]) -> String {
    let (scheme, rest) = url.split_once("://").expect("an AMQP URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let userinfo = authority.rsplit_once('@').map(|(userinfo, _)| format!("{userinfo}@")).unwrap_or_default();
    format!("{scheme}://{userinfo}{}{path}", addresses.join(","))
}

async fn until_on(bus: &Bus, node: &str) {
    within(30, "the bus to be connected to the other node", async {
        while bus.health().node() != Some(node) || !bus.health().is_connected() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn the_first_address_that_answers_is_used_and_health_names_it() {
    let h = Harness::rabbitmq().await;
    let broker = h.url().split('@').nth(1).and_then(|rest| rest.split('/').next()).unwrap().to_owned();
    // Port 1 refuses at once: nothing listens there.
    let url = with_addresses(h.url(), &["127.0.0.1:1".to_owned(), broker.clone()]);
    let config = BusConfig::new(&url).unwrap().service_name("addresses").connect_timeout(Duration::from_secs(10));
    assert!(config.redacted_url().contains(&format!("@127.0.0.1:1,{broker}/")), "{}", config.redacted_url());
    let bus = within(15, "connect", Bus::with_config(config)).await.unwrap();
    assert_eq!(bus.health(), Health::Connected { node: broker.clone() });
    // The broker probe asks the node the bus is on.
    assert_eq!(within(10, "the broker's properties", bus.broker()).await.unwrap().product, "RabbitMQ");
    bus.publish_with(&UserRegistered { user_id: 1, ..Default::default() }, PublishOptions::new().fire_and_forget())
        .await
        .unwrap();
    bus.close().await.unwrap();

    // None answering: the error names each address and what it said.
    let url = with_addresses(h.url(), &["127.0.0.1:1".to_owned(), "127.0.0.1:2".to_owned()]);
    let config = BusConfig::new(&url).unwrap().connect_timeout(Duration::from_secs(2));
    let error = within(10, "the connect to fail", Bus::with_config(config)).await.unwrap_err().to_string();
    assert!(error.contains("127.0.0.1:1: ") && error.contains("127.0.0.1:2: "), "{error}");
    assert!(!error.contains(":guest@"), "the password stays hidden: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_node_moves_the_bus_to_another_and_nothing_is_lost() {
    let h = Harness::rabbitmq().await;
    let (first, url_first) = Relay::in_front_of(h.url());
    let (second, _) = Relay::in_front_of(h.url());
    let nodes = [format!("127.0.0.1:{}", first.port()), format!("127.0.0.1:{}", second.port())];
    let url = with_addresses(&url_first, &nodes);
    let config = BusConfig::new(&url).unwrap().service_name("addresses").publish_timeout(Duration::from_secs(30));
    let bus = within(15, "connect", Bus::with_config(config)).await.unwrap();
    assert_eq!(bus.health().node(), Some(nodes[0].as_str()), "the first address answers first");

    let ledger = Arc::new(Ledger::default());
    let consumer = h.bus("addresses-consumer").await;
    let recorded = Arc::clone(&ledger);
    let group = unique("addresses");
    let subscription = UserRegistered::subscribe(&consumer, &group)
        .temporary()
        .handle(move |event: UserRegistered, _| {
            recorded.consumed(event.user_id);
            std::future::ready(Ok::<(), warren::HandlerError>(()))
        })
        .await
        .unwrap();

    let publish = |from: i64, to: i64| {
        let (bus, ledger) = (bus.clone(), Arc::clone(&ledger));
        async move {
            for seq in from..to {
                ledger.sent(seq);
                let outcome = bus.publish(&UserRegistered { user_id: seq, ..Default::default() }).await;
                ledger.published(seq, outcome.is_ok());
            }
        }
    };
    publish(0, 200).await;
    // The node goes away: its relay stops, with the connections through it.
    drop(first);
    let during = tokio::spawn(publish(200, 400));
    until_on(&bus, &nodes[1]).await;
    within(60, "the publishes during the move", during).await.unwrap();
    publish(400, 500).await;
    ledger.drain(Duration::from_secs(30)).await;
    let verdict = ledger.verdict("a node lost, the bus moved to the other");
    assert_eq!(verdict.confirmed, 500, "every publish was confirmed, riding out the move: {verdict:?}");
    assert!(verdict.lost.is_empty() && verdict.unexpected.is_empty(), "{verdict:?}");
    subscription.stop().await;
    bus.close().await.unwrap();
    drop(second);
}
