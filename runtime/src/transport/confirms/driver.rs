//! Who drives the confirms in flight: a publish alone drives its own, the channel's watchdog drives them
//! while several wait; the watchdog also keeps the deadlines.

use std::sync::{Arc, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use super::state::State;
use super::{Outcome, Shared};

/// Wakes the watchdog, to look at the deadlines again or to find its channel gone; when dropped, to end.
pub(super) struct Alarm(pub(super) Arc<tokio::sync::Notify>);

impl Drop for Alarm {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

/// The waker the watchdog drives the confirms with: a nudge.
pub(super) struct Nudge(pub(super) Arc<tokio::sync::Notify>);

impl std::task::Wake for Nudge {
    fn wake(self: Arc<Self>) {
        self.0.notify_one();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.notify_one();
    }
}

/// Who polls the confirms in flight, and is woken when one completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Driver {
    /// The channel's watchdog: whenever more than one publish waits.
    #[default]
    Watchdog,
    /// This publish, alone when it last looked.
    Publish(u64),
}

/// No publish: decided publishes are all woken.
const NOBODY: u64 = u64::MAX;

impl Shared {
    /// The outcome of publish `number` once decided. A publish alone drives the confirms itself meanwhile;
    /// with others waiting, the watchdog does.
    pub(super) fn poll_outcome(&self, number: u64, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut state = self.state();
        if let Some(outcome) = state.take(number) {
            return Poll::Ready(outcome);
        }
        if let Some(slot) = state.waiting.get_mut(&number)
            && !slot.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
        {
            slot.waker = Some(cx.waker().clone());
        }
        if state.waiting.len() > 1 {
            // The watchdog decides, woken by lapin (see `send_unsent`).
            state.hand_to_watchdog();
            return Poll::Pending;
        }
        state.driver = Driver::Publish(number);
        state.collect(cx.waker());
        let mut state = self.settle(state, Driver::Publish(number), cx.waker());
        match state.take(number) {
            Some(outcome) => Poll::Ready(outcome),
            None => Poll::Pending,
        }
    }

    /// Decides the confirms collected so far, for `driver` (the publish driving, or the watchdog), whose waker
    /// `waker` is. A confirm is decided only after lapin has finished the ack frame that completed it;
    /// collecting after a sync may take confirms of a frame lapin is still completing, which wait for the next
    /// sync. Stops when another takes over driving meanwhile: it decides them.
    fn settle<'a>(&'a self, mut state: MutexGuard<'a, State>, driver: Driver, waker: &Waker) -> MutexGuard<'a, State> {
        let me = match driver {
            Driver::Publish(number) => number,
            Driver::Watchdog => NOBODY,
        };
        for _ in 0..SYNCS_PER_POLL {
            if state.done.is_empty() {
                break;
            }
            let collected = state.collections;
            drop(state);
            (self.sync)();
            // Once `unsent` is free, every publish handed to lapin so far is in `in_flight`.
            drop(self.unsent());
            state = self.state();
            if state.driver != driver {
                return state;
            }
            state.collect(waker);
            state.decide(collected, me);
        }
        if !state.done.is_empty() {
            waker.wake_by_ref(); // confirms keep completing: the rest on the driver's next turn
        }
        state
    }

    /// The watchdog's turn at the confirms, when it drives them.
    fn drive(&self) {
        let mut state = self.state();
        if state.driver != Driver::Watchdog {
            return;
        }
        let Some(nudge) = state.nudge.clone() else { return };
        state.collect(&nudge);
        drop(self.settle(state, Driver::Watchdog, &nudge));
    }
}

impl State {
    /// When publish `number` leaves and was driving, the watchdog drives whatever is left.
    pub(super) fn hand_on(&mut self, number: u64) {
        if self.driver == Driver::Publish(number) && (!self.waiting.is_empty() || !self.in_flight.is_empty()) {
            self.hand_to_watchdog();
        }
    }

    /// The watchdog drives the confirms from now on: it is the one woken when one completes, and is woken now
    /// should any have completed while a publish drove (its wake-up may not lead to a poll).
    pub(super) fn hand_to_watchdog(&mut self) {
        if self.driver == Driver::Watchdog {
            return;
        }
        self.driver = Driver::Watchdog;
        if let Some(nudge) = &self.nudge {
            self.in_flight.woken.driver.register(nudge);
            if !self.in_flight.is_empty() || !self.done.is_empty() {
                nudge.wake_by_ref();
            }
        }
    }
}

/// Spawns the watchdog of `shared` (whose state `state` is) on the current runtime unless it is running. One
/// atomic load when it is: a publish pays no more for the check.
pub(super) fn keep_watch(state: &mut State, shared: &Arc<Shared>, alarm: &Arc<tokio::sync::Notify>) {
    if state.watchdog.as_ref().is_none_or(tokio::task::JoinHandle::is_finished) {
        let nudged = Arc::clone(&shared.nudged);
        state.watchdog = Some(tokio::spawn(watch(Arc::downgrade(shared), Arc::clone(alarm), nudged)));
    }
}

/// Drives the confirms of one channel's publishes while several wait, and keeps their deadlines (see
/// [`Confirms::publish`](super::Confirms::publish)), until its [`Confirms`](super::Confirms) is dropped.
async fn watch(shared: std::sync::Weak<Shared>, alarm: Arc<tokio::sync::Notify>, nudged: Arc<tokio::sync::Notify>) {
    // One timer for the watchdog's life, moved only when the deadline it watches for changes: it is woken for
    // every ack frame while it drives, and a timer made and dropped per wake-up costs about 900 instructions.
    let mut at = Instant::now();
    let timer = tokio::time::sleep_until(at.into());
    tokio::pin!(timer);
    let mut look = true;
    loop {
        {
            let Some(shared) = shared.upgrade() else { return };
            shared.drive();
            if look || Instant::now() >= at {
                // Always later than now: a deadline passed is told, and no longer watched.
                let next = shared.state().expire(Instant::now());
                if next != at {
                    at = next;
                    timer.as_mut().reset(at.into());
                }
            }
        }
        look = tokio::select! {
            () = &mut timer => true,
            () = alarm.notified() => true,
            () = nudged.notified() => false,
        };
    }
}

/// How many times one poll syncs with lapin while confirms keep completing, before it yields its thread.
const SYNCS_PER_POLL: usize = 4;
