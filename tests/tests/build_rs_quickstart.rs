//! Code generated from `build.rs` into OUT_DIR (the README's quick start) works like the checked-in crate.

use tokio::sync::mpsc;
use warren::HandlerError;
use warren_tests::quickstart::shop::v1::OrderPlaced;
use warren_tests::{bus, unique, within};

#[tokio::test]
async fn the_quick_start_contract_generated_in_build_rs_publishes_and_subscribes() {
    let bus = bus("quickstart-test").await;
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
