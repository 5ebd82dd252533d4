//! Priorities: the trading bus's LOW..CRITICAL, from the contract or per publish; higher goes first.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};
use warren::{HandlerError, Priority, PublishOptions};
use warren_contracts::trading::v1::{MarketTick, TradingEvents, TradingSignal};
use warren_tests::{Harness, unique, within};

async fn higher_priority_messages_are_delivered_first(h: &Harness) {
    let bus = h.bus("priority-test").await;
    let gate = Arc::new(Semaphore::new(0));
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let subscription = TradingEvents::subscribe(&bus, &unique("strategy"), "#")
        .temporary()
        .prefetch(1)
        .handle({
            let gate = Arc::clone(&gate);
            move |event: TradingEvents, _| {
                let (gate, seen_tx) = (Arc::clone(&gate), seen_tx.clone());
                async move {
                    let symbol = match event {
                        TradingEvents::MarketTick(tick) => tick.symbol,
                        TradingEvents::TradingSignal(signal) => signal.symbol,
                    };
                    seen_tx.send(symbol).unwrap();
                    gate.acquire().await.unwrap().forget();
                    Ok::<_, HandlerError>(())
                }
            }
        })
        .await
        .unwrap();
    // The first message occupies the only prefetch slot; the rest queue up behind it.
    bus.publish(&MarketTick { symbol: "first".into(), ..Default::default() }).await.unwrap();
    assert_eq!(within(10, "the first message", seen.recv()).await.as_deref(), Some("first"));

    let with = |priority| PublishOptions::new().priority(priority);
    bus.publish_with(&MarketTick { symbol: "low".into(), ..Default::default() }, with(Priority::Low)).await.unwrap();
    bus.publish(&MarketTick { symbol: "normal (contract default)".into(), ..Default::default() }).await.unwrap();
    bus.publish(&TradingSignal { symbol: "high (contract default)".into(), ..Default::default() }).await.unwrap();
    let critical = MarketTick { symbol: "critical".into(), ..Default::default() };
    bus.publish_with(&critical, with(Priority::Critical)).await.unwrap();

    gate.add_permits(5);
    let mut order = Vec::new();
    for _ in 0..4 {
        order.push(within(10, "a queued message", seen.recv()).await.unwrap());
    }
    assert_eq!(order, ["critical", "high (contract default)", "normal (contract default)", "low"]);
    subscription.stop().await;
}

warren_tests::on_both_transports!(higher_priority_messages_are_delivered_first);
