//! The live registry: servers announce themselves on start and by heartbeat and say goodbye on stop; any bus
//! lists who serves what (`Bus::services`), and an instance that stops announcing itself disappears.

use std::time::Duration;

use warren::{MessageProperties, REGISTRY_QUEUE};
use warren_contracts::at::v1::{IntSummatorClient, IntSummatorServer};
use warren_tests::{Harness, within};

async fn servers_are_listed_while_they_run(h: &Harness) {
    let config = h.config("registry-test").registry_heartbeat(Duration::from_millis(300));
    let bus = h.bus_with(config).await;
    assert!(bus.services().await.unwrap().is_empty(), "nobody serves yet");
    let first = IntSummatorServer::new(warren_tests::Summator).serve(&bus).await.unwrap();
    let second = IntSummatorServer::new(warren_tests::Summator).serve(&bus).await.unwrap();

    let listed = within(10, "both servers listed", async {
        loop {
            let listed = h.bus("registry-reader").await.services().await.unwrap();
            if listed.len() == 2 {
                return listed;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    for instance in &listed {
        assert_eq!(instance.service, "at.v1.IntSummator");
        assert_eq!(instance.queue, "at.IntSummator");
        assert_eq!(instance.pid, std::process::id());
        assert_eq!(instance.app, "registry-test");
        assert_eq!(instance.fingerprint, IntSummatorClient::SERVICE.fingerprint);
        assert_eq!(instance.heartbeat, Duration::from_millis(300));
    }
    assert_ne!(listed[0].instance, listed[1].instance);
    assert_eq!(bus.queue_stats("at.IntSummator").await.unwrap().consumers, 2);

    // Heartbeats keep them listed; reading the registry takes nothing from it.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(bus.services().await.unwrap().len(), 2);
    assert_eq!(bus.services().await.unwrap().len(), 2);

    first.stop().await;
    within(10, "the stopped server gone", async {
        while bus.services().await.unwrap().len() != 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    second.stop().await;
    within(10, "both gone", async {
        while !bus.services().await.unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

async fn an_instance_that_stops_announcing_itself_disappears(h: &Harness) {
    let bus = h.bus("registry-silent").await;
    assert!(bus.services().await.unwrap().is_empty());
    // A server that died without a goodbye: its last hello, as a server sends it, and nothing after.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let hello = serde_json::json!({
        "event": "hello", "service": "at.v1.IntSummator", "queue": "at.IntSummator", "instance": "gone-1",
        "host": "elsewhere", "pid": 1, "app": "crashed", "started_at_ms": now, "sent_at_ms": now,
        "heartbeat_ms": 200, "fingerprint": "0000000000000000",
    });
    let properties = MessageProperties::default()
        .with_content_type("application/json")
        .with_kind(warren::ANNOUNCEMENT_TYPE)
        .with_expiration_ms(600);
    bus.publish_bytes("", REGISTRY_QUEUE, hello.to_string().as_bytes(), properties).await.unwrap();
    let listed = bus.services().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].host, "elsewhere");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(bus.services().await.unwrap().is_empty(), "three heartbeats missed");
}

warren_tests::on_both_transports!(
    servers_are_listed_while_they_run,
    an_instance_that_stops_announcing_itself_disappears
);
