//! Names and shapes that break naive generators (`tests/fixtures/build_rs/awkward/v1/awkward.proto`, generated
//! into OUT_DIR): the code compiles with every item documented (the docs lint runs under clippy), and values
//! round-trip on the bus, on both transports.

use std::collections::HashMap;

use tokio::sync::mpsc;
use warren::{HandlerError, RpcContext, Status};
use warren_tests::quickstart::awkward::v1::{
    AbcService, AbcServiceClient, AbcServiceServer, AwkwardEvents, Option as Opt, Result as Res, option,
};
use warren_tests::{Harness, unique, within};

fn full_option() -> Opt {
    Opt {
        r#box: Some(option::Box { content: "a cat".into() }),
        kind: option::Kind::Some as i32,
        choice: Some(option::Choice::Number(42)),
        counts: HashMap::from([("a".to_owned(), 1), ("b".to_owned(), 2)]),
        at: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 5 }),
        took: Some(prost_types::Duration { seconds: 3, nanos: 0 }),
        boxes: vec![option::Box { content: "x".into() }, option::Box { content: "y".into() }],
    }
}

async fn awkward_events_round_trip_equal(h: &Harness) {
    let bus = h.bus("awkward-events").await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let subscription = AwkwardEvents::subscribe(&bus, &unique("awkward"), "#")
        .temporary()
        .handle(move |event: AwkwardEvents, _| std::future::ready(tx.send(event).map_err(HandlerError::from)))
        .await
        .unwrap();
    let result = Res { r#type: "keyword".into(), self_: -7, option: Some(full_option()) };
    bus.publish(&result).await.unwrap();
    bus.publish(&full_option()).await.unwrap();
    match within(10, "the Result event", rx.recv()).await.unwrap() {
        AwkwardEvents::Result(received) => assert_eq!(received, result),
        other => panic!("expected Result first, got {other:?}"),
    }
    match within(10, "the Option event", rx.recv()).await.unwrap() {
        AwkwardEvents::Option(received) => assert_eq!(received, full_option()),
        other => panic!("expected Option, got {other:?}"),
    }
    subscription.stop().await;
}

/// Answers `Type` with the option inside the request.
struct Abc;

impl AbcService for Abc {
    async fn r#type(&self, request: Res, _: RpcContext) -> std::result::Result<Opt, Status> {
        request.option.ok_or_else(|| Status::invalid_argument("no option"))
    }
}

async fn an_rpc_named_like_a_keyword_round_trips(h: &Harness) {
    let server_bus = h.bus("abc-server").await;
    let serving = AbcServiceServer::new(Abc).serve(&server_bus).await.unwrap();
    let client = AbcServiceClient::new(&h.bus("abc-client").await);
    let reply = within(10, "a reply", client.r#type(Res { option: Some(full_option()), ..Default::default() })).await;
    assert_eq!(reply.unwrap(), full_option());
    let status = client.r#type(Res::default()).await.unwrap_err();
    assert_eq!(status.code(), warren::Code::InvalidArgument);
    serving.stop().await;
}

warren_tests::on_both_transports!(awkward_events_round_trip_equal, an_rpc_named_like_a_keyword_round_trips);
