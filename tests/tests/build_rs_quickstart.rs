//! Code generated from `build.rs` into OUT_DIR (the README's quick start) works like the checked-in crate.

use tokio::sync::mpsc;
use warren::HandlerError;
use warren_tests::quickstart::shop::v1::OrderPlaced;
use warren_tests::{Harness, unique, within};

#[tokio::test]
async fn the_quick_start_contract_generated_in_build_rs_publishes_and_subscribes() {
    let h = Harness::rabbitmq().await;
    let bus = h.bus("quickstart-test").await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let subscription = OrderPlaced::subscribe(&bus, &unique("billing"))
        .temporary()
        .handle(move |order: OrderPlaced, _ctx| {
            let tx = tx.clone();
            async move {
                tx.send(order.order_id).unwrap();
                Ok::<_, HandlerError>(())
            }
        })
        .await
        .unwrap();
    bus.publish(&OrderPlaced { order_id: 7 }).await.unwrap();
    assert_eq!(within(10, "the order", rx.recv()).await, Some(7));
    assert!(!warren_tests::quickstart::FILE_DESCRIPTOR_SET.is_empty());
    subscription.stop().await;
}

#[test]
fn prost_build_settings_pass_through_the_builder() {
    // tests/build.rs adds `#[derive(PartialOrd)]` to OrderPlaced through `Builder::type_attribute`.
    assert!(OrderPlaced { order_id: 1 } < OrderPlaced { order_id: 2 });
}

#[test]
fn an_extern_path_uses_the_named_type_instead_of_generating_one() {
    let fixtures = warren_tests::workspace_root().join("tests/fixtures/build_rs");
    let mut config = warren_codegen::Config::new([fixtures], ["rich/v1/rich.proto"]);
    config.extern_path(".rich.v1.Line", "::order_lines::Line");
    let contracts = warren_codegen::load(&config).unwrap();
    let files = warren_codegen::generate_from(&config, &contracts).unwrap();
    let messages = String::from_utf8(files[std::path::Path::new("rich.v1.rs")].clone()).unwrap();
    assert!(messages.contains("::order_lines::Line"), "fields use the extern type:\n{messages}");
    assert!(!messages.contains("pub struct Line {"), "and Line is not generated:\n{messages}");
}
