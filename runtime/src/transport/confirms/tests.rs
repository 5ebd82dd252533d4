use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::ShortString;

use super::*;

fn id(n: u8) -> MessageId {
    MessageId::parse(&format!("0190a5c8-0000-7000-8000-0000000000{n:02}")).expect("36 characters")
}

fn returned(id: Option<MessageId>) -> BasicReturnMessage {
    let mut delivery = lapin::message::Delivery::mock(0, "orders".into(), "completed".into(), false, Vec::new());
    delivery.properties = BasicProperties::default();
    if let Some(id) = id {
        delivery.properties = delivery.properties.with_message_id(ShortString::from(id.as_str()));
    }
    BasicReturnMessage { delivery, reply_code: 312, reply_text: "NO_ROUTE".into() }
}

/// A deadline no test reaches.
fn later() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

/// Registers a publish (id `id`) whose confirm has completed with `confirmed`.
fn publish(state: &mut State, id: Option<MessageId>, confirmed: Confirmation) -> u64 {
    let (number, _) = state.register(id, later());
    state.in_flight.insert(Waiting { number, sending: Box::pin(std::future::ready(Ok(confirmed.into()))) });
    number
}

/// Registers a publish (id `id`) whose confirm completes when the returned sender sends it.
fn pending(state: &mut State, id: Option<MessageId>) -> (u64, tokio::sync::oneshot::Sender<Confirmation>) {
    pending_until(state, id, later())
}

/// [`pending`], waiting until `deadline`.
fn pending_until(
    state: &mut State,
    id: Option<MessageId>,
    deadline: Instant,
) -> (u64, tokio::sync::oneshot::Sender<Confirmation>) {
    let (complete, completed) = tokio::sync::oneshot::channel();
    let (number, _) = state.register(id, deadline);
    let sending = Box::pin(async move { Ok(Confirmed::from(completed.await.expect("completed"))) });
    state.in_flight.insert(Waiting { number, sending });
    (number, complete)
}

fn collect(state: &mut State) {
    state.collect(Waker::noop());
}

fn outcome(state: &mut State, number: u64) -> String {
    state.take(number).map_or_else(|| "undecided".to_owned(), |outcome| format!("{outcome:?}"))
}

#[test]
fn a_return_is_matched_to_its_message_whichever_confirm_carries_it() {
    let mut state = State::default();
    // One `multiple` ack: lapin handed the first message's return to the third confirm.
    let a = publish(&mut state, Some(id(1)), Confirmation::Ack(None));
    let b = publish(&mut state, Some(id(2)), Confirmation::Ack(None));
    let c = publish(&mut state, Some(id(3)), Confirmation::Ack(Some(returned(Some(id(1))))));
    collect(&mut state);
    state.decide(state.collections, u64::MAX);
    assert_eq!(outcome(&mut state, a), "Returned");
    assert_eq!(outcome(&mut state, b), "Delivered");
    assert_eq!(outcome(&mut state, c), "Delivered");
    assert!(state.returned.is_empty() && state.waiting.is_empty());
}

#[test]
fn a_return_carried_by_an_earlier_frame_waits_for_its_own_confirm() {
    let mut state = State::default();
    let (owner, complete) = pending(&mut state, Some(id(2)));
    let holder = publish(&mut state, Some(id(1)), Confirmation::Ack(Some(returned(Some(id(2))))));
    collect(&mut state);
    state.decide(state.collections, u64::MAX);
    assert_eq!(outcome(&mut state, holder), "Delivered");
    assert_eq!(outcome(&mut state, owner), "undecided");
    complete.send(Confirmation::Ack(None)).unwrap();
    collect(&mut state);
    state.decide(state.collections, u64::MAX);
    assert_eq!(outcome(&mut state, owner), "Returned");
}

#[test]
fn a_confirm_collected_after_the_sync_began_waits_for_the_next_one() {
    let mut state = State::default();
    let first = publish(&mut state, Some(id(1)), Confirmation::Ack(None));
    collect(&mut state);
    let synced = state.collections;
    // Collected after the sync: lapin may still be completing its frame, whose other confirms could carry
    // its return.
    let second = publish(&mut state, Some(id(2)), Confirmation::Ack(None));
    collect(&mut state);
    state.decide(synced, u64::MAX);
    assert_eq!(outcome(&mut state, first), "Delivered");
    assert_eq!(outcome(&mut state, second), "undecided");
    let carrier = publish(&mut state, Some(id(3)), Confirmation::Ack(Some(returned(Some(id(2))))));
    collect(&mut state);
    state.decide(state.collections, u64::MAX);
    assert_eq!(outcome(&mut state, second), "Returned");
    assert_eq!(outcome(&mut state, carrier), "Delivered");
}

#[test]
fn an_abandoned_publish_still_takes_its_return_and_nacks_and_failures_are_told() {
    let mut state = State::default();
    let gone = publish(&mut state, Some(id(1)), Confirmation::Ack(None));
    state.waiting.get_mut(&gone).unwrap().abandoned = true;
    let nacked = publish(&mut state, Some(id(2)), Confirmation::Nack(Some(returned(Some(id(1))))));
    let anonymous = publish(&mut state, None, Confirmation::Ack(Some(returned(None))));
    collect(&mut state);
    state.decide(state.collections, u64::MAX);
    assert_eq!(outcome(&mut state, nacked), "Refused");
    assert_eq!(outcome(&mut state, anonymous), "Returned", "an id-less return stays with its carrier");
    assert!(state.returned.is_empty(), "the abandoned publish took its return");
    assert!(state.waiting.is_empty(), "and left");
}

/// Counts its wake-ups.
#[derive(Default)]
struct Count(std::sync::atomic::AtomicUsize);

impl std::task::Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Relaxed);
    }
}

/// A state whose watchdog's nudges are counted.
fn nudged_state() -> (State, Arc<Count>) {
    let nudges = Arc::new(Count::default());
    (State { nudge: Some(Waker::from(Arc::clone(&nudges))), ..State::default() }, nudges)
}

#[test]
fn a_publish_driving_alone_hands_the_confirms_to_the_watchdog_when_it_leaves_others_waiting() {
    let (mut state, nudges) = nudged_state();
    let (driver, complete) = pending(&mut state, Some(id(1)));
    let (other, _keep) = pending(&mut state, Some(id(2)));
    state.driver = Driver::Publish(driver);
    complete.send(Confirmation::Ack(None)).unwrap();
    collect(&mut state);
    state.decide(state.collections, driver);
    assert_eq!(outcome(&mut state, driver), "Delivered");
    assert_eq!(state.driver, Driver::Watchdog, "the watchdog drives what is left");
    assert_eq!(nudges.0.load(Relaxed), 1, "and is woken, as a confirm may have completed meanwhile");
    assert!(state.waiting.contains_key(&other));
}

#[test]
fn a_publish_leaving_alone_leaves_nothing_to_drive() {
    let (mut state, nudges) = nudged_state();
    let driver = publish(&mut state, Some(id(1)), Confirmation::Ack(None));
    state.driver = Driver::Publish(driver);
    collect(&mut state);
    state.decide(state.collections, driver);
    assert_eq!(outcome(&mut state, driver), "Delivered");
    assert_eq!(state.driver, Driver::Publish(driver), "no hand-over: the next publish alone drives itself");
    assert_eq!(nudges.0.load(Relaxed), 0, "a publisher sending one at a time never wakes the watchdog");
}

#[test]
fn the_watchdog_takes_over_from_a_publish_once_a_second_waits_and_only_wakes_with_work() {
    let (mut state, nudges) = nudged_state();
    state.driver = Driver::Publish(0);
    state.hand_to_watchdog();
    assert_eq!((state.driver, nudges.0.load(Relaxed)), (Driver::Watchdog, 0), "nothing in flight: no wake-up");
    state.driver = Driver::Publish(0);
    let (_, _keep) = pending(&mut state, Some(id(1)));
    state.hand_to_watchdog();
    assert_eq!(nudges.0.load(Relaxed), 1, "a confirm in flight may have completed for the publish");
    state.hand_to_watchdog();
    assert_eq!(nudges.0.load(Relaxed), 1, "already driving: nothing more");
}

#[test]
fn a_publish_past_its_deadline_times_out_and_its_late_confirm_still_takes_its_return() {
    let mut state = State::default();
    let now = Instant::now();
    let (late, complete) = pending_until(&mut state, Some(id(1)), now - Duration::from_millis(1));
    let (on_time, _keep) = pending_until(&mut state, Some(id(2)), now + Duration::from_secs(1));
    let woken = Arc::new(Count::default());
    state.waiting.get_mut(&late).unwrap().waker = Some(Waker::from(Arc::clone(&woken)));
    assert_eq!(state.expire(now), now + Duration::from_secs(1), "armed for the next deadline");
    assert_eq!(woken.0.load(Relaxed), 1, "the late one is told");
    assert_eq!(outcome(&mut state, late), "TimedOut");
    assert_eq!(outcome(&mut state, on_time), "undecided");
    // Its confirm comes after all, carrying its own return: counted, and not left for another publish.
    complete.send(Confirmation::Ack(Some(returned(Some(id(1)))))).unwrap();
    collect(&mut state);
    state.decide(state.collections, u64::MAX);
    assert!(state.returned.is_empty(), "the timed-out publish took its return");
    assert!(!state.waiting.contains_key(&late), "and left");
    assert_eq!(outcome(&mut state, on_time), "undecided");
}

#[test]
fn only_a_deadline_earlier_than_the_watchdogs_timer_wakes_the_watchdog() {
    let mut state = State::default();
    let now = Instant::now();
    let (_, look_again) = state.register(None, now + Duration::from_secs(2));
    assert!(look_again, "an idle watchdog is woken");
    let (_, look_again) = state.register(None, now + Duration::from_secs(3));
    assert!(!look_again, "a later deadline waits for the timer set");
    let (_, look_again) = state.register(None, now + Duration::from_secs(1));
    assert!(look_again, "an earlier one moves it");
    assert_eq!(state.armed, Some(now + Duration::from_secs(1)));
}

#[test]
fn an_idle_watchdog_looks_again_within_a_second_so_later_deadlines_do_not_wake_it() {
    let mut state = State::default();
    let now = Instant::now();
    assert_eq!(state.expire(now), now + IDLE_LOOK, "nothing to watch: it looks again in a second");
    let (_, look_again) = state.register(None, now + Duration::from_secs(30));
    assert!(!look_again, "a publish due later is found then");
    assert_eq!(state.expire(now + IDLE_LOOK), now + Duration::from_secs(30), "and watched from then on");
    let (_, look_again) = state.register(None, now + IDLE_LOOK + Duration::from_millis(500));
    assert!(look_again, "one due earlier than the timer wakes it");
}

#[test]
fn a_timed_out_publish_dropped_before_it_looks_still_takes_its_return() {
    let mut state = State::default();
    let now = Instant::now();
    let (late, complete) = pending_until(&mut state, Some(id(1)), now - Duration::from_millis(1));
    state.expire(now);
    state.abandon(late); // its future is dropped before it polls again
    assert!(state.waiting.contains_key(&late), "kept until its confirm is decided");
    complete.send(Confirmation::Ack(Some(returned(Some(id(1)))))).unwrap();
    collect(&mut state);
    state.decide(state.collections, u64::MAX);
    assert!(state.returned.is_empty(), "it took its return, which no other publish of that id can now");
    assert!(!state.waiting.contains_key(&late), "and left");
}

/// Confirms with no channel behind them: syncing is a no-op.
fn confirms() -> Confirms {
    Confirms::with_sync(Box::new(|| {}))
}

/// Registers a publish due in `after` whose waker counts, and tells the watchdog.
fn due_in(confirms: &Confirms, after: Duration) -> (u64, Arc<Count>) {
    let woken = Arc::new(Count::default());
    let mut state = confirms.shared.state();
    keep_watch(&mut state, &confirms.shared, &confirms.alarm.0);
    let (number, look_again) = state.register(Some(id(1)), Instant::now() + after);
    assert!(look_again, "the first deadline wakes the watchdog");
    state.waiting.get_mut(&number).unwrap().waker = Some(Waker::from(Arc::clone(&woken)));
    drop(state);
    confirms.alarm.0.notify_one();
    (number, woken)
}

/// Waits until `woken` counts a wake-up; how long that took.
async fn told(woken: &Count) -> Duration {
    let started = Instant::now();
    let told = tokio::time::timeout(Duration::from_secs(5), async {
        while woken.0.load(Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    told.await.expect("the watchdog told the publish, not 5 s later");
    started.elapsed()
}

#[tokio::test]
async fn the_watchdog_tells_a_publish_at_its_deadline_and_ends_with_its_channel() {
    let confirms = confirms();
    keep_watch(&mut confirms.shared.state(), &confirms.shared, &confirms.alarm.0);
    tokio::task::yield_now().await; // the watchdog runs, finds nothing to watch and sleeps for a second
    let (number, woken) = due_in(&confirms, Duration::from_millis(100));
    let after = told(&woken).await;
    assert!(after >= Duration::from_millis(90), "not before its deadline: {after:?}");
    assert_eq!(outcome(&mut confirms.shared.state(), number), "TimedOut");
    let watchdog = confirms.shared.state().watchdog.take().expect("spawned");
    drop(confirms);
    tokio::time::timeout(Duration::from_secs(5), watchdog)
        .await
        .expect("the watchdog ended with its state")
        .expect("without panicking");
}

#[test]
fn a_watchdog_whose_runtime_shut_down_is_spawned_again_by_the_next_publish() {
    let runtime = || tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let confirms = confirms();
    runtime().block_on(async { keep_watch(&mut confirms.shared.state(), &confirms.shared, &confirms.alarm.0) });
    assert!(confirms.shared.state().watchdog.as_ref().unwrap().is_finished(), "gone with its runtime");
    runtime().block_on(async {
        let (number, woken) = due_in(&confirms, Duration::from_millis(50));
        told(&woken).await;
        assert_eq!(outcome(&mut confirms.shared.state(), number), "TimedOut");
    });
}

/// A publish whose send fails at once (a channel already closed) while the watchdog drives wakes the
/// watchdog in the hand-over: the hand-over's poll, with a no-op waker, was its only wake-up, and it would
/// otherwise wait for the watchdog's next timer.
#[test]
fn a_publish_complete_at_hand_over_wakes_the_watchdog() {
    let confirms = confirms();
    let nudges = Arc::new(Count::default());
    let (number, _) = {
        let mut state = confirms.shared.state();
        state.nudge = Some(Waker::from(Arc::clone(&nudges)));
        state.register(Some(id(1)), later())
    };
    let refused: Sending = Box::pin(std::future::ready(Ok(Confirmed::from(Confirmation::Nack(None)))));
    confirms.shared.unsent().push(Waiting { number, sending: refused });
    assert!(confirms.shared.send_unsent());
    assert_eq!(nudges.0.load(Relaxed), 1, "the watchdog is woken to decide it");
    assert_eq!(confirms.shared.state().done.len(), 1);
}

/// Two publishes wait; the confirms complete; nobody polls either publish: the watchdog decides both.
#[tokio::test]
async fn with_several_waiting_the_watchdog_decides_without_any_publish_being_polled() {
    let confirms = confirms();
    let woken = Arc::new(Count::default());
    let mut completes = Vec::new();
    let numbers: Vec<u64> = {
        let mut state = confirms.shared.state();
        keep_watch(&mut state, &confirms.shared, &confirms.alarm.0);
        (1..=2)
            .map(|n| {
                let (number, complete) = pending(&mut state, Some(id(n)));
                state.waiting.get_mut(&number).unwrap().waker = Some(Waker::from(Arc::clone(&woken)));
                completes.push(complete);
                number
            })
            .collect()
    };
    confirms.shared.state().hand_to_watchdog();
    for complete in completes {
        complete.send(Confirmation::Ack(None)).unwrap();
    }
    told(&woken).await;
    tokio::time::timeout(Duration::from_secs(5), async {
        while woken.0.load(Relaxed) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("both decided");
    for number in numbers {
        assert_eq!(outcome(&mut confirms.shared.state(), number), "Delivered");
    }
}
