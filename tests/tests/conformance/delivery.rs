//! Delivery: competing consumers, prefetch, redelivery of what a stopped consumer left unacknowledged, and
//! publishers and consumers that share their thread with other tasks.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use warren::HandlerError;
use warren_contracts::gametrade::v1::UserRegistered;
use warren_tests::{Harness, unique, within};

use super::collect;

async fn consumers_of_one_group_share_the_messages(h: &Harness) {
    let bus = h.bus("competing-test").await;
    let group = unique("workers");
    let (first_sub, mut first) = collect(UserRegistered::subscribe(&bus, &group)).await;
    let (second_sub, mut second) = collect(UserRegistered::subscribe(&bus, &group)).await;
    assert_eq!(first_sub.queue(), second_sub.queue(), "one group, one queue");
    for user_id in 0..20 {
        bus.publish(&UserRegistered { user_id, ..Default::default() }).await.unwrap();
    }
    let (mut by_first, mut by_second) = (BTreeSet::new(), BTreeSet::new());
    while by_first.len() + by_second.len() < 20 {
        tokio::select! {
            Some((event, _)) = first.recv() => assert!(by_first.insert(event.user_id), "duplicate {}", event.user_id),
            Some((event, _)) = second.recv() => assert!(by_second.insert(event.user_id), "duplicate {}", event.user_id),
            () = tokio::time::sleep(Duration::from_secs(10)) => panic!("only {} of 20 delivered", by_first.len() + by_second.len()),
        }
    }
    assert!(by_first.is_disjoint(&by_second), "each message went to one consumer");
    assert_eq!(by_first.len(), 10, "round robin: {by_first:?} / {by_second:?}");
    assert_eq!(by_second.len(), 10, "round robin: {by_first:?} / {by_second:?}");
    first_sub.stop().await;
    second_sub.stop().await;
}

async fn prefetch_limits_the_messages_in_flight(h: &Harness) {
    let bus = h.bus("prefetch-test").await;
    let running = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let subscription = UserRegistered::subscribe(&bus, &unique("prefetch"))
        .temporary()
        .prefetch(2)
        .concurrency(10)
        .handle({
            let (running, gate) = (Arc::clone(&running), Arc::clone(&gate));
            move |event: UserRegistered, _| {
                let (running, gate, started_tx, done_tx) =
                    (Arc::clone(&running), Arc::clone(&gate), started_tx.clone(), done_tx.clone());
                async move {
                    running.fetch_add(1, Ordering::SeqCst);
                    started_tx.send(()).unwrap();
                    gate.acquire().await.unwrap().forget();
                    running.fetch_sub(1, Ordering::SeqCst);
                    done_tx.send(event.user_id).unwrap();
                    Ok::<_, HandlerError>(())
                }
            }
        })
        .await
        .unwrap();
    for user_id in 0..5 {
        bus.publish(&UserRegistered { user_id, ..Default::default() }).await.unwrap();
    }
    within(10, "two handlers start", async {
        started.recv().await;
        started.recv().await;
    })
    .await;
    tokio::time::sleep(h.quiet_period()).await;
    assert_eq!(running.load(Ordering::SeqCst), 2, "with prefetch 2, only two messages are in flight");
    gate.add_permits(5);
    let mut handled = BTreeSet::new();
    while handled.len() < 5 {
        handled.insert(within(10, "the rest", done.recv()).await.unwrap());
    }
    assert_eq!(handled, (0..5).collect());
    subscription.stop().await;
}

async fn messages_a_stopped_consumer_left_unacknowledged_are_redelivered(h: &Harness) {
    let bus = h.bus("redelivery-test").await;
    let group = unique("crashy");
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let stuck = UserRegistered::subscribe(&bus, &group)
        .temporary()
        .handle(move |event: UserRegistered, _| {
            started_tx.send(event.user_id).unwrap();
            std::future::pending::<Result<(), HandlerError>>() // never finishes: never acknowledged
        })
        .await
        .unwrap();
    // A second consumer keeps the temporary queue alive when the first goes.
    let (rescuer, mut rescued) = collect(UserRegistered::subscribe(&bus, &group).prefetch(1)).await;
    // Make sure the stuck consumer holds the message, not the rescuer.
    let mut published = 0;
    loop {
        published += 1;
        bus.publish(&UserRegistered { user_id: published, ..Default::default() }).await.unwrap();
        tokio::select! {
            Some(id) = started.recv() => { assert_eq!(id, published); break; }
            Some(_) = rescued.recv() => continue,
            () = tokio::time::sleep(Duration::from_secs(10)) => panic!("no consumer got message {published}"),
        }
    }
    stuck.stop_within(Duration::from_millis(100)).await;
    let (event, ctx) = within(10, "the redelivery", rescued.recv()).await.unwrap();
    assert_eq!(event.user_id, published);
    assert!(ctx.redelivered(), "a message delivered before is marked redelivered");
    rescuer.stop().await;
}

async fn fire_and_forget_and_confirmed_publishes_both_arrive(h: &Harness) {
    let bus = h.bus("fire-and-forget-test").await;
    let (subscription, mut received) = collect(UserRegistered::subscribe(&bus, &unique("mixed"))).await;
    let fire_and_forget = warren::PublishOptions::new().fire_and_forget();
    // Alternating, so each kind of publish runs after the other (over AMQP they use separate channels).
    for user_id in 0..20 {
        let event = UserRegistered { user_id, ..Default::default() };
        if user_id % 2 == 0 {
            bus.publish_with(&event, fire_and_forget.clone()).await.unwrap();
        } else {
            bus.publish(&event).await.unwrap();
        }
    }
    let mut seen = BTreeSet::new();
    while seen.len() < 20 {
        let (event, _) = within(10, "all twenty", received.recv()).await.unwrap();
        assert!(seen.insert(event.user_id), "duplicate {}", event.user_id);
    }
    let metrics = bus.metrics().await;
    assert_eq!(metrics.events["gametrade.v1.UserRegistered"].published, 20, "both kinds are counted as published");
    subscription.stop().await;
}

/// A handler that counts the events it handles in `handled`.
fn counting(
    handled: &Arc<AtomicUsize>,
) -> impl Fn(UserRegistered, warren::Context) -> std::future::Ready<Result<(), HandlerError>> + Clone + Send + Sync + 'static
{
    let handled = Arc::clone(handled);
    move |_, _| {
        handled.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(()))
    }
}

/// Waits until `counter` reaches `goal` (callers bound the wait with [`within`]).
async fn until(counter: &AtomicUsize, goal: usize) {
    while counter.load(Ordering::SeqCst) < goal {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Publishes `count` `UserRegistered` events, one after the other.
async fn publish_users(bus: &warren::Bus, count: usize) {
    for user_id in 0..count as i64 {
        bus.publish(&UserRegistered { user_id, ..Default::default() }).await.unwrap();
    }
}

/// On one thread (the tests' runtime), a loop of publishes and a consumer with a backlog each let other tasks
/// run as they go: neither holds the thread until its work is done.
async fn a_publishing_loop_and_a_consumer_with_a_backlog_let_other_tasks_run(h: &Harness) {
    const EVENTS: usize = 1_000;
    let bus = h.bus("fairness-test").await;
    let group = unique("fair");
    let handled = Arc::new(AtomicUsize::new(0));
    let subscription = UserRegistered::subscribe(&bus, &group).handle(counting(&handled)).await.unwrap();
    publish_users(&bus, EVENTS).await;
    let while_publishing = handled.load(Ordering::SeqCst);
    assert!(
        while_publishing > 0,
        "the subscriber handled none of {EVENTS} events while a loop published them: the loop kept the thread"
    );
    within(30, "every event handled", until(&handled, EVENTS)).await;
    subscription.stop().await;

    // The group's queue stays: fill it with nobody consuming, then consume the backlog beside a task that
    // counts its turns on the thread.
    publish_users(&bus, EVENTS).await;
    let turns = Arc::new(AtomicUsize::new(0));
    let seen_turns = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let backlog = Arc::new(AtomicUsize::new(0));
    let subscription = UserRegistered::subscribe(&bus, &group)
        .handle({
            let (turns, seen_turns, backlog) = (Arc::clone(&turns), Arc::clone(&seen_turns), Arc::clone(&backlog));
            move |_: UserRegistered, _| {
                seen_turns.lock().unwrap().insert(turns.load(Ordering::SeqCst));
                backlog.fetch_add(1, Ordering::SeqCst);
                std::future::ready(Ok::<_, HandlerError>(()))
            }
        })
        .await
        .unwrap();
    // Spawned after the consumer, so it runs only when the consumer gives up the thread; it stops once the
    // backlog is done (and after a bound), since a task that is always ready stops a paused clock.
    let other_task = tokio::spawn({
        let (turns, backlog) = (Arc::clone(&turns), Arc::clone(&backlog));
        async move {
            for _ in 0..1_000_000 {
                if backlog.load(Ordering::SeqCst) >= EVENTS {
                    break;
                }
                turns.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        }
    });
    within(30, "the backlog handled", until(&backlog, EVENTS)).await;
    other_task.abort();
    let seen_turns = seen_turns.lock().unwrap().len();
    assert!(
        seen_turns > 1,
        "the other task never ran while the consumer worked through a backlog of {EVENTS}: it kept the thread"
    );
    subscription.stop().await;
}

/// Once `stop` is called, no handler starts: what the subscriber had not begun stays in the queue.
async fn a_stopped_subscriber_starts_no_more_handlers(h: &Harness) {
    const EVENTS: usize = 1_000;
    let bus = h.bus("stop-test").await;
    let group = unique("stopping");
    let handled = Arc::new(AtomicUsize::new(0));
    UserRegistered::subscribe(&bus, &group).handle(counting(&handled)).await.unwrap().stop().await;
    publish_users(&bus, EVENTS).await;
    let subscription = UserRegistered::subscribe(&bus, &group).handle(counting(&handled)).await.unwrap();
    // Bounded, as a task that is always ready stops a paused clock.
    for _ in 0..1_000_000 {
        if handled.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let before_stop = handled.load(Ordering::SeqCst);
    assert!(before_stop > 0, "the subscriber started on its backlog");
    subscription.stop().await;
    assert_eq!(handled.load(Ordering::SeqCst), before_stop, "a handler started after stop was called");
    // The rest is still in the queue, and each message is handled once.
    let rest = UserRegistered::subscribe(&bus, &group).handle(counting(&handled)).await.unwrap();
    within(30, "the rest handled", until(&handled, EVENTS)).await;
    tokio::time::sleep(h.quiet_period()).await;
    assert_eq!(handled.load(Ordering::SeqCst), EVENTS, "a message was handled twice");
    rest.stop().await;
}

/// A publish future polled once and then held without being polled (a `select!` branch switched off, say)
/// must not hold back the outcomes of the other publishes on its bus.
async fn a_publish_held_unpolled_delays_no_other_publish(h: &Harness) {
    let bus = h.bus("held-publish").await;
    let (subscription, _rx) = collect(UserRegistered::subscribe(&bus, &unique("held"))).await;
    let done = Arc::new(AtomicUsize::new(0));
    let others = tokio::spawn({
        let (bus, done) = (bus.clone(), Arc::clone(&done));
        async move {
            let publishes = (0..1_000).map(|i| {
                let (bus, done) = (&bus, &done);
                async move {
                    bus.publish(&UserRegistered { user_id: i, ..Default::default() }).await.unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
            futures_util::future::join_all(publishes).await;
        }
    });
    // Once the others are under way, this publish is polled, last of all, and then held.
    // Bounded, as a task that is always ready stops a paused clock; a publish that failed ends `others`.
    for _ in 0..10_000_000 {
        if done.load(Ordering::Relaxed) >= 50 || others.is_finished() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(done.load(Ordering::Relaxed) >= 50, "the other publishes are under way");
    let event = UserRegistered { user_id: -1, ..Default::default() };
    let mut held = std::pin::pin!(bus.publish(&event));
    // Polled a few times, as a `select!` does before another branch fires: past its first yield, it waits for
    // its confirm like the others.
    let mut first = std::task::Poll::Pending;
    for _ in 0..3 {
        first = std::future::poll_fn(|cx| std::task::Poll::Ready(held.as_mut().poll(cx))).await;
        if first.is_ready() {
            break;
        }
        tokio::task::yield_now().await;
    }
    let started = tokio::time::Instant::now();
    within(5, "the other 1,000 publishes, with one held unpolled", others).await.unwrap();
    assert_eq!(done.load(Ordering::Relaxed), 1_000);
    tokio::time::sleep_until(started + Duration::from_secs(10)).await; // held for 10 s in all
    if first.is_pending() {
        within(10, "the held publish, polled again", held).await.unwrap();
    }
    subscription.stop().await;
}

warren_tests::on_both_transports!(
    a_publish_held_unpolled_delays_no_other_publish,
    a_stopped_subscriber_starts_no_more_handlers,
    a_publishing_loop_and_a_consumer_with_a_backlog_let_other_tasks_run,
    fire_and_forget_and_confirmed_publishes_both_arrive,
    consumers_of_one_group_share_the_messages,
    prefetch_limits_the_messages_in_flight,
    messages_a_stopped_consumer_left_unacknowledged_are_redelivered,
);
