//! The bookkeeping of a channel's confirmed publishes: the publishes waiting, numbered; the confirms completed;
//! returns matched by message id; outcomes decided, and deadlines told.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::task::Waker;
use std::time::Instant;

use super::driver::Driver;
use super::slots::InFlight;
use super::{Confirmed, IDLE_LOOK, Outcome, Returned};
use crate::envelope::MessageId;

#[derive(Default)]
pub(super) struct State {
    pub(super) in_flight: InFlight,
    /// The publishes waiting for their outcome, by number.
    pub(super) waiting: HashMap<u64, Slot, BuildHasherDefault<Numbers>>,
    pub(super) next: u64,
    /// Completed confirms, not yet decided.
    pub(super) done: Vec<Done>,
    /// Counts calls of [`State::collect`]; a confirm collected by call `n` is decided after a sync begun later.
    pub(super) collections: u64,
    /// Message ids returned whose own confirm has not completed yet.
    pub(super) returned: HashMap<MessageId, u32>,
    /// Who polls `in_flight` and is woken when a confirm completes.
    pub(super) driver: Driver,
    /// The watchdog's waker, registered with `in_flight` while it drives (`None` in unit tests of the state).
    pub(super) nudge: Option<Waker>,
    /// When the watchdog's timer fires; `None` while it has no publish to watch.
    pub(super) armed: Option<Instant>,
    /// The watchdog task, spawned by the first publish; spawned again by the next publish should it have ended
    /// without this being dropped (its runtime shut down while the bus lives on, used from another).
    pub(super) watchdog: Option<tokio::task::JoinHandle<()>>,
}

/// A publish waiting for its outcome.
pub(super) struct Slot {
    /// Matched against returned messages; `None` for a message without an id of Warren's form, which is then
    /// judged by the confirm lapin pairs it with.
    id: Option<MessageId>,
    /// When the publish gives up waiting, if not decided by then.
    deadline: Instant,
    outcome: Option<Outcome>,
    pub(super) waker: Option<Waker>,
    /// Its publish stopped waiting (its deadline passed, or its future was dropped): decided all the same, to
    /// account for its return.
    pub(super) abandoned: bool,
}

impl Slot {
    fn new(id: Option<MessageId>, deadline: Instant) -> Slot {
        Slot { id, deadline, outcome: None, waker: None, abandoned: false }
    }
}

/// A completed confirm, its return (if any) already counted.
pub(super) struct Done {
    number: u64,
    /// The [`State::collect`] call that collected it.
    collection: u64,
    /// Acknowledged (`true`) or refused, or the channel failed.
    confirmed: lapin::Result<bool>,
    /// It carried a return without a message id of Warren's form.
    anonymous_return: bool,
}

impl State {
    /// Registers a publish waiting for its outcome until `deadline`, and numbers it; true if the watchdog
    /// must look again (its timer is set for later, or not set).
    pub(super) fn register(&mut self, id: Option<MessageId>, deadline: Instant) -> (u64, bool) {
        let number = self.next;
        self.next += 1;
        self.waiting.insert(number, Slot::new(id, deadline));
        let look_again = self.armed.is_none_or(|armed| deadline < armed);
        if look_again {
            self.armed = Some(deadline);
        }
        (number, look_again)
    }

    /// Moves the confirms completed so far to `done`, counting the returns they carry, and registers `waker`
    /// to be woken when the next one completes.
    pub(super) fn collect(&mut self, waker: &Waker) {
        self.collections += 1;
        let (returned, done, collection) = (&mut self.returned, &mut self.done, self.collections);
        self.in_flight.completed(waker, |number, confirmed| {
            let anonymous_return = match &confirmed {
                Ok(Confirmed { returned: Returned::Id(id), .. }) => {
                    *returned.entry(*id).or_default() += 1;
                    false
                }
                Ok(Confirmed { returned, .. }) => *returned == Returned::Anonymous,
                Err(_) => false,
            };
            let confirmed = confirmed.map(|confirmed| confirmed.positive);
            done.push(Done { number, collection, confirmed, anonymous_return });
        });
    }

    /// Decides the outcome of the confirms collected by call `collected` of [`State::collect`] or earlier,
    /// matching returns by message id, and wakes each publish decided (but `me`, which is running).
    pub(super) fn decide(&mut self, collected: u64, me: u64) {
        // Collected in order: those to decide come first.
        let decided = self.done.partition_point(|done| done.collection <= collected);
        for Done { number, confirmed, anonymous_return, .. } in self.done.drain(..decided) {
            let Some(slot) = self.waiting.get_mut(&number) else { continue };
            let returned = match slot.id {
                Some(id) => take_one(&mut self.returned, id),
                None => anonymous_return,
            };
            if slot.abandoned {
                self.waiting.remove(&number);
                continue;
            }
            slot.outcome = Some(match confirmed {
                Ok(true) if returned => Outcome::Returned,
                Ok(true) => Outcome::Delivered,
                Ok(false) => Outcome::Refused,
                Err(error) => Outcome::Failed(error),
            });
            if number != me
                && let Some(waker) = slot.waker.take()
            {
                waker.wake();
            }
        }
        if self.in_flight.is_empty() && self.done.is_empty() {
            // Every confirm is in: a return still unmatched has no publish left to match (RabbitMQ returns a
            // message before acknowledging it, so this holds nothing; it only bounds what a broker that did
            // not could leave).
            self.returned.clear();
        }
    }

    /// The outcome of publish `number`, once decided; it then stops waiting. One timed out stays, abandoned,
    /// until its confirm is decided.
    pub(super) fn take(&mut self, number: u64) -> Option<Outcome> {
        let outcome = self.waiting.get_mut(&number)?.outcome.take()?;
        if let Outcome::TimedOut = outcome {
            self.abandon(number); // undecided again: kept, as one dropped undecided is
        } else {
            self.waiting.remove(&number);
            self.hand_on(number);
        }
        Some(outcome)
    }

    /// Times out the undecided publishes whose deadline is `now` or earlier, waking each, and arms the
    /// watchdog for the earliest deadline left, or, with none left, for [`IDLE_LOOK`] from `now`.
    pub(super) fn expire(&mut self, now: Instant) -> Instant {
        let mut next: Option<Instant> = None;
        for slot in self.waiting.values_mut() {
            if slot.abandoned || slot.outcome.is_some() {
                continue;
            }
            if slot.deadline <= now {
                slot.outcome = Some(Outcome::TimedOut);
                if let Some(waker) = slot.waker.take() {
                    waker.wake();
                }
            } else if next.is_none_or(|next| slot.deadline < next) {
                next = Some(slot.deadline);
            }
        }
        let at = next.unwrap_or(now + IDLE_LOOK);
        self.armed = Some(at);
        at
    }

    /// Publish `number` stops waiting before taking its outcome. One decided leaves. One undecided, or told
    /// that its deadline passed (its confirm may still come, carrying its return), stays, abandoned, until its
    /// confirm is decided. Either way, if it was driving, the watchdog drives what is left.
    pub(super) fn abandon(&mut self, number: u64) {
        if let Some(slot) = self.waiting.get_mut(&number) {
            match slot.outcome {
                None | Some(Outcome::TimedOut) => {
                    slot.abandoned = true;
                    slot.waker = None;
                }
                Some(_) => {
                    self.waiting.remove(&number);
                }
            }
        }
        self.hand_on(number);
    }
}

/// Takes one return of message `id`, if one came back.
fn take_one(returned: &mut HashMap<MessageId, u32>, id: MessageId) -> bool {
    match returned.get_mut(&id) {
        Some(1) => returned.remove(&id).is_some(),
        Some(count) => {
            *count -= 1;
            true
        }
        None => false,
    }
}

/// Hashes publish numbers, which are distinct counters: one multiplication spreads them.
#[derive(Default)]
pub(super) struct Numbers(u64);

impl Hasher for Numbers {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 << 8 | u64::from(byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}
