//! `GET /ws` end to end with a real WebSocket client, on RabbitMQ (a private vhost) and in memory:
//! subscriptions checked and fanned out from one broker queue, publishing with an ack, and the limits (the
//! connection cap, the slow client closed without slowing the others, the idle timeout).

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::{ADA, Server, eventually};
use tokio_tungstenite::tungstenite::Message;
use warren_gateway::GatewayConfig;
use warren_tests::Harness;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn config() -> GatewayConfig {
    GatewayConfig::from_toml(
        r#"
        events = ["UserRegistered"]
        [[streams]]
        exchange = "gametrade.events"
        patterns = ["user.*", "nothing.here"]
        "#,
        "test",
    )
    .unwrap()
}

async fn connect(server: &Server) -> Socket {
    let url = format!("ws://{}/ws", server.addr);
    let (socket, _) = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(url))
        .await
        .expect("the upgrade answers within 10 s")
        .expect("the upgrade succeeds");
    socket
}

async fn send(socket: &mut Socket, frame: Value) {
    socket.send(Message::text(frame.to_string())).await.unwrap();
}

/// The next JSON frame, within 10 s.
async fn next(socket: &mut Socket) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a frame arrives within 10 s")
            .expect("the socket is open")
            .expect("the frame reads");
        match frame {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Reads until the server closes, returning the close frame's code and reason.
async fn closed(socket: &mut Socket) -> (u16, String) {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), socket.next()).await.expect("closed within 20 s") {
            Some(Ok(Message::Close(Some(frame)))) => {
                // Reading on sends the client's own close frame, which ends the handshake.
                let _ = tokio::time::timeout(Duration::from_secs(5), socket.next()).await;
                return (frame.code.into(), frame.reason.to_string());
            }
            Some(Ok(_)) => continue,
            other => panic!("the socket ended without a close frame: {other:?}"),
        }
    }
}

async fn subscribers_share_one_queue_and_publish_with_an_ack(h: &Harness) {
    let server = Server::start(h.bus("gateway").await, config()).await;
    let mut alice = connect(&server).await;
    let mut bob = connect(&server).await;
    let user = json!({ "subscribe": { "exchange": "gametrade.events", "pattern": "user.*" } });
    // Both at once: the second waits for the queue the first one's request binds, and shares it.
    send(&mut alice, user.clone()).await;
    send(&mut bob, user.clone()).await;
    assert_eq!(
        next(&mut alice).await,
        json!({ "subscribed": { "exchange": "gametrade.events", "pattern": "user.*" } })
    );
    assert!(next(&mut bob).await.get("subscribed").is_some());
    let ready = server.get("/ready").await.json();
    assert_eq!(ready["websocket"]["queues"], 1, "one broker queue for both: {ready}");
    assert_eq!(ready["websocket"]["connections"], 2);

    // Refusals: a pattern the configuration does not allow, a broken one, an overlong one, another exchange.
    for (exchange, pattern) in [
        ("gametrade.events", "#"),
        ("gametrade.events", "user..x"),
        ("gametrade.events", &*"a".repeat(300)),
        ("notifications", "user.*"),
    ] {
        send(&mut alice, json!({ "subscribe": { "exchange": exchange, "pattern": pattern } })).await;
        let refused = next(&mut alice).await;
        assert_eq!(refused["error"]["request"], "subscribe", "{refused}");
    }
    // Allowed, but no event of the exchange can match it.
    send(&mut alice, json!({ "subscribe": { "exchange": "gametrade.events", "pattern": "nothing.here" } })).await;
    let silent = next(&mut alice).await;
    assert!(silent["error"]["detail"].as_str().unwrap().contains("cannot match any event"), "{silent}");

    let published = server.post("/events/UserRegistered", ADA).await;
    assert_eq!(published.status, 202, "{}", published.text);
    let id = published.json()["message_id"].clone();
    for socket in [&mut alice, &mut bob] {
        let message = next(socket).await;
        assert_eq!(message["message_id"], id);
        assert_eq!(message["type"], "gametrade.v1.UserRegistered");
        assert_eq!(message["routing_key"], "user.registered");
        assert_eq!(message["payload"]["username"], "ada");
        assert!(message["timestamp"].is_u64(), "{message}");
    }

    // Publishing over the socket: an ack with the id, then the message itself.
    send(&mut bob, json!({ "publish": { "type": "UserRegistered", "payload": serde_json::from_str::<Value>(ADA).unwrap(), "id": 7 } })).await;
    let ack = next(&mut bob).await;
    assert_eq!(ack["ack"]["id"], 7, "{ack}");
    let message_id = ack["ack"]["message_id"].clone();
    assert!(message_id.is_string(), "{ack}");
    assert_eq!(next(&mut bob).await["message_id"], message_id);
    assert_eq!(next(&mut alice).await["message_id"], message_id);
    send(&mut bob, json!({ "publish": { "type": "UserActivated", "payload": {}, "id": 8 } })).await;
    let refused = next(&mut bob).await;
    assert_eq!(refused["ack"]["error"]["status"], 404, "{refused}");
    send(&mut bob, json!({ "publish": { "type": "UserRegistered", "payload": { "userID": 1 }, "id": 9 } })).await;
    assert_eq!(next(&mut bob).await["ack"]["error"]["status"], 400);

    send(&mut alice, json!({ "unsubscribe": { "exchange": "gametrade.events", "pattern": "user.*" } })).await;
    assert!(next(&mut alice).await.get("unsubscribed").is_some());
    bob.close(None).await.unwrap();
    alice.close(None).await.unwrap();
    eventually(10, "the stream's queue goes with its last subscriber", || async {
        let ready = server.get("/ready").await.json();
        ready["websocket"]["queues"] == 0 && ready["websocket"]["connections"] == 0
    })
    .await;
    if let Some(vhost) = h.vhost() {
        // What the gateway declared does not outlive the stream: the watch queue is gone from the broker.
        let vhost = vhost.to_owned();
        eventually(10, "the watch queue is deleted on RabbitMQ", || {
            let vhost = vhost.clone();
            async move {
                let listed = tokio::task::spawn_blocking(move || {
                    std::process::Command::new("rabbitmqctl")
                        .args(["list_queues", "-q", "-p", &vhost, "name"])
                        .output()
                        .expect("rabbitmqctl runs")
                })
                .await
                .unwrap();
                !String::from_utf8_lossy(&listed.stdout).contains("warren.watch.")
            }
        })
        .await;
    }
    server.stop().await;
}

/// Subscribes `socket` to `gametrade.events` / `user.*` and waits for the answer.
async fn subscribe_to_users(socket: &mut Socket) {
    send(socket, json!({ "subscribe": { "exchange": "gametrade.events", "pattern": "user.*" } })).await;
    assert!(next(socket).await.get("subscribed").is_some());
}

/// Writes are at most one per `flush_interval`, but a message after a quiet spell is not held for it: with an
/// interval of a second, each lone event reaches the client well within the second.
async fn a_lone_message_after_a_quiet_spell_goes_out_at_once(h: &Harness) {
    let mut config = config();
    config.websocket.flush_interval = Duration::from_secs(1);
    let server = Server::start(h.bus("gateway").await, config).await;
    let mut socket = connect(&server).await;
    subscribe_to_users(&mut socket).await;
    for round in 1..=2 {
        let started = tokio::time::Instant::now();
        let published = server.post("/events/UserRegistered", ADA).await;
        assert_eq!(published.status, 202, "{}", published.text);
        let message = next(&mut socket).await;
        let took = started.elapsed();
        assert_eq!(message["message_id"], published.json()["message_id"]);
        assert!(took < Duration::from_millis(900), "lone event {round} took {took:?}: it was held for the interval");
        if round == 1 {
            // A quiet spell longer than the interval before the next one.
            tokio::time::sleep(Duration::from_millis(1_100)).await;
        }
    }
    server.stop().await;
}

/// A burst of events published as fast as the bus confirms them reaches the client complete and in order,
/// whether each is written at once (`flush_interval` 0) or they go out in batches (50 ms).
async fn a_burst_arrives_complete_and_in_order(h: &Harness) {
    for interval in [Duration::ZERO, Duration::from_millis(50)] {
        let mut config = config();
        config.websocket.flush_interval = interval;
        config.websocket.buffer = 1_024;
        let bus = h.bus("gateway").await;
        let server = Server::start(bus.clone(), config).await;
        let mut socket = connect(&server).await;
        subscribe_to_users(&mut socket).await;
        let count = 500;
        let publishing = tokio::spawn(async move {
            for n in 1..=count {
                let event = warren_contracts::gametrade::v1::UserRegistered {
                    user_id: n,
                    username: "u".into(),
                    email: "a@b.c".into(),
                };
                bus.publish(&event).await.unwrap();
            }
        });
        for n in 1..=count {
            let message = next(&mut socket).await;
            assert_eq!(message["payload"]["userId"], n.to_string(), "event {n} of {count} in order ({interval:?})");
        }
        publishing.await.unwrap();
        socket.close(None).await.unwrap();
        server.stop().await;
    }
}

on_both_transports!(
    subscribers_share_one_queue_and_publish_with_an_ack,
    a_lone_message_after_a_quiet_spell_goes_out_at_once,
    a_burst_arrives_complete_and_in_order,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_closed_and_the_others_get_everything() {
    let mut config = config();
    config.websocket.buffer = 64;
    let bus = warren::Bus::in_memory();
    let server = Server::start(bus.clone(), config).await;
    let mut slow = connect(&server).await;
    let mut quick = connect(&server).await;
    let user = json!({ "subscribe": { "exchange": "gametrade.events", "pattern": "user.*" } });
    send(&mut slow, user.clone()).await;
    next(&mut slow).await;
    send(&mut quick, user).await;
    next(&mut quick).await;

    // 400 events of 64 KiB (26 MB): far more than the slow client's buffer and its socket's, which it never
    // reads. Each is published once the quick client has the one before, so that only the slow one falls
    // behind, however loaded the machine (the frames are read as text: parsing 64 KiB of JSON each would
    // make this test's own client the slow one).
    let count = 400;
    let username = "x".repeat(64 * 1024);
    for n in 1..=count {
        let event = warren_contracts::gametrade::v1::UserRegistered {
            user_id: n,
            username: username.clone(),
            email: "a@b.c".into(),
        };
        bus.publish(&event).await.unwrap();
        let frame = loop {
            match tokio::time::timeout(Duration::from_secs(10), quick.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => break text,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                other => panic!("the quick client lost its stream after {} messages: {other:?}", n - 1),
            }
        };
        assert!(frame.contains(&format!("\"userId\":\"{n}\"")), "message {n} in order");
    }
    assert_eq!(closed(&mut slow).await, (1008, "slow".to_owned()));
    let ready = server.get("/ready").await.json();
    assert_eq!(ready["websocket"]["slow_disconnects"], 1, "{ready}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_503_and_quiet_ones_time_out() {
    let mut config = config();
    config.websocket.max_connections = 1;
    config.websocket.ping_interval_ms = 50;
    config.websocket.idle_timeout_ms = 300;
    let server = Server::start(warren::Bus::in_memory(), config).await;
    let mut first = connect(&server).await;
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr)).await.unwrap_err();
    match refused {
        tokio_tungstenite::tungstenite::Error::Http(response) => assert_eq!(response.status().as_u16(), 503),
        other => panic!("expected a 503, got {other:?}"),
    }
    // The first client reads nothing, so answers no ping: it is closed as idle.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(closed(&mut first).await, (1001, "idle".to_owned()));
    let url = format!("ws://{}/ws", server.addr);
    eventually(10, "the slot is free again", || async { tokio_tungstenite::connect_async(url.clone()).await.is_ok() })
        .await;
    // A plain GET is told to upgrade.
    server.get("/ws").await.problem(426);
    server.stop().await;
}

/// A client that sends requests and never reads their answers falls behind on no stream; once a write to it has
/// waited past the idle timeout it is closed, and its slot is free again (the write used to wait forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answers_is_closed_and_its_slot_freed() {
    let mut config = config();
    config.websocket.max_connections = 1;
    config.websocket.ping_interval_ms = 50;
    config.websocket.idle_timeout_ms = 300;
    let server = Server::start(warren::Bus::in_memory(), config).await;
    let (mut requests, answers) = connect(&server).await.split();
    // Each `{}` is answered with an error frame, which this client never reads: the answers fill its socket
    // and the gateway's, and the gateway's write waits. Bounded, and aborted at the end.
    let sending = tokio::spawn(async move {
        for sent in 0..2_000_000 {
            if requests.send(Message::text("{}")).await.is_err() {
                return Some(sent);
            }
        }
        None
    });
    let url = format!("ws://{}/ws", server.addr);
    eventually(20, "the slot is free again", || async { tokio_tungstenite::connect_async(url.clone()).await.is_ok() })
        .await;
    let cut_off = tokio::time::timeout(Duration::from_secs(10), sending).await.expect("the sender stops").unwrap();
    assert!(cut_off.is_some(), "the gateway closed the socket while the client was still sending");
    drop(answers);
    let ready = server.get("/ready").await.json();
    assert_eq!(ready["websocket"]["slow_disconnects"], 1, "{ready}");
    server.stop().await;
}

/// A frame is never parsed into a generic JSON tree larger than its request: a subscribe request over 4 KiB is
/// refused, and a client without the publish token may not send frames over 64 KiB at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_refused_without_being_parsed_whole() {
    let server = Server::start(warren::Bus::in_memory(), config()).await;
    let mut socket = connect(&server).await;
    let padding = vec![0; 5_000];
    send(&mut socket, json!({ "subscribe": { "exchange": "gametrade.events", "pattern": "user.*", "x": padding } }))
        .await;
    let refused = next(&mut socket).await;
    assert_eq!(refused["error"]["detail"], "a subscribe or unsubscribe request is at most 4 KiB", "{refused}");
    // Still serving: a request of the usual size is answered.
    send(&mut socket, json!({ "subscribe": { "exchange": "gametrade.events", "pattern": "user.*" } })).await;
    assert_eq!(next(&mut socket).await["subscribed"]["pattern"], "user.*");
    // With no publish tokens configured anyone may publish, and so send frames up to the bus's limit.
    let big = json!({ "publish": { "type": "UserRegistered", "payload": { "username": "x".repeat(70_000) } } });
    send(&mut socket, big.clone()).await;
    assert!(next(&mut socket).await["ack"].is_object());
    server.stop().await;

    // A client connected without the publish token may not send a frame over 64 KiB at all.
    let mut config = config();
    config.tokens.add(warren_gateway::Group::Publish, "pub-token");
    let server = Server::start(warren::Bus::in_memory(), config).await;
    let mut socket = connect(&server).await;
    let _ = socket.send(Message::text(big.to_string())).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match socket.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the socket is ended, the frame unread");
    assert_eq!(server.get("/health").await.status, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_need_the_stream_token() {
    let mut config = config();
    config.tokens.add(warren_gateway::Group::Stream, "stream-token");
    let server = Server::start(warren::Bus::in_memory(), config).await;
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr)).await.unwrap_err();
    match refused {
        tokio_tungstenite::tungstenite::Error::Http(response) => assert_eq!(response.status().as_u16(), 401),
        other => panic!("expected a 401, got {other:?}"),
    }
    let url = format!("ws://{}/ws?access_token=stream-token", server.addr);
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.expect("the token lets it in");
    send(&mut socket, json!({ "subscribe": { "exchange": "gametrade.events", "pattern": "user.*" } })).await;
    assert!(next(&mut socket).await.get("subscribed").is_some());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_socket_with_a_close_frame() {
    let config = config();
    let shutdown = config.shutdown.clone();
    let server = Server::start(warren::Bus::in_memory(), config).await;
    let mut first = connect(&server).await;
    let mut second = connect(&server).await;
    send(&mut first, json!({ "subscribe": { "exchange": "gametrade.events", "pattern": "user.*" } })).await;
    next(&mut first).await;
    let closing = tokio::spawn(async move { shutdown.close(Duration::from_secs(10)).await });
    assert_eq!(closed(&mut first).await, (1001, "shutdown".to_owned()));
    assert_eq!(closed(&mut second).await, (1001, "shutdown".to_owned()));
    assert_eq!(closing.await.unwrap(), 0, "every socket ended within the deadline");
    let ready = server.get("/ready").await.json();
    assert_eq!(ready["websocket"]["queues"], 0, "the stream's queue went with it: {ready}");
    server.stop().await;
}
