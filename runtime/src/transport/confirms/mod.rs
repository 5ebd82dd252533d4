//! Publisher confirms over AMQP, each matched to its own publish.
//!
//! lapin gets two things wrong when many confirmed publishes share a channel, as Warren's do (up to a thousand
//! in flight on one):
//!
//! - It numbers a publish (the delivery tag its confirm is matched by) and queues its frames under two
//!   different locks, so publishes from two threads can be numbered in one order and sent in the other. The
//!   broker numbers them as they arrive: a publish lost with its connection could then be reported confirmed
//!   by the confirm of one that arrived.
//! - It hands a returned message (a `mandatory` publish that no queue took) to whichever confirm it completes
//!   next, and completes the confirms that one `multiple` ack covers in hash order. RabbitMQ coalesces
//!   confirms into such acks, so a return regularly went to another publish: the unroutable message was
//!   reported delivered, and a delivered one unroutable.
//!
//! So publishes are handed to lapin (which numbers each and queues its frames) and put in flight here in one
//! step, under the lock of the list of publishes registered but not yet handed over (`unsent`), and each outcome
//! is decided here, not by the confirm lapin hands it. RabbitMQ sends a message's `basic.return` before the ack
//! that covers it, sends returns in publish order, and sends the acks of one flush in ascending order (one
//! `multiple` ack, then single ones); lapin reads frames in order. So once lapin has finished the ack frame that
//! completed a confirm, that message's return, if there is one, sits in a confirm completed by that frame or an
//! earlier one. Whoever drives (below) therefore decides a confirm only after a sync with lapin begun after the
//! confirm was collected: lapin holds its confirm lock across each ack frame, and the sync takes it. By then
//! every confirm of those frames is collected and its return counted, and the confirm is decided: returned when
//! a return carrying its message id came back, whichever confirm carried it.
//!
//! Message ids must be distinct among the publishes in flight on a channel; Warren's are. A message whose id is
//! not of Warren's form (36 characters) is judged by the return, if any, that lapin pairs with it.
//!
//! Who drives the confirms in flight (polls them when lapin wakes them, syncs, decides, wakes the publishes
//! decided) depends on how many publishes wait. A publish alone (a caller awaiting each one, the common case of a
//! service) drives its own: lapin wakes its task directly, as it would without Warren. As soon as a second
//! publish waits, the channel's watchdog task drives them all, until a publish finds itself alone again. So no
//! publish's outcome depends on another publish's future being polled: one polled and then held without being
//! polled or dropped (a `select!` branch switched off, say) delays nobody but itself. The confirms in flight are
//! polled only when lapin wakes them; the wakers put them on a list under a lock, so that after a sync, taking the
//! list takes every confirm lapin completed before it. (Until December 2026 the publishes waiting took turns
//! driving instead, and a held one could keep the others' outcomes until their deadline.)
//!
//! Publishes are handed to lapin in batches. lapin's I/O thread writes whatever is queued each time it wakes,
//! and every publish handed over wakes it. Handed over one at a time, each at its first poll, Warren's
//! publishes were written three or four to a `sendto`: 4,400 to 7,600 writes for W2's 20,000 publishes, where
//! raw lapin, which does less between two publishes, made 2,400 to 4,200; in batches, 1,800 to 3,600. A publish that
//! finds others in flight or waiting to be handed over registers and yields once, so that the publishes ready
//! beside it register too; the first of them polled again hands every one registered so far to lapin. (Under
//! `FuturesUnordered`, which `buffer_unordered` and `join_all` use, that is two a poll of the task, which then
//! yields to the scheduler; so a publish that finds [`BATCH`] registered hands them over without waiting.) A
//! publish alone (a caller awaiting each one) is handed over at once. One registered and then held without
//! being polled is handed over by the next publish that hands any over, or when it is dropped; its deadline runs
//! meanwhile.
//!
//! The watchdog, one task per channel, also keeps the deadlines, sleeping until the earliest deadline of the
//! publishes waiting (see [`Confirms::publish`]). A publish whose deadline passes is told so whoever drives, and
//! its confirm, should it come, is decided with the others.

use std::collections::HashMap;
use std::future::poll_fn;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use futures_util::FutureExt;
use futures_util::task::AtomicWaker;
use lapin::message::BasicReturnMessage;
use lapin::{Channel, Confirmation};

use crate::envelope::MessageId;

/// What the broker said about one confirmed publish.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Confirmed and routed.
    Delivered,
    /// Returned (no queue was bound for it), then confirmed.
    Returned,
    /// Refused: a negative confirm.
    Refused,
    /// The channel failed before the broker answered.
    Failed(lapin::Error),
    /// Its deadline passed first. Its confirm, should it come, is still decided, to account for its return.
    TimedOut,
}

/// A confirmed publish: lapin's send, then its confirm, as [`Confirmed`]. It owns what it sends (the channel
/// too, as an `Arc<Channel>`, which holds nothing of this module's), so it can outlive its caller.
pub(crate) type Sending = Pin<Box<dyn Future<Output = lapin::Result<Confirmed>> + Send>>;

/// lapin's confirm of one publish, reduced to what deciding its outcome needs. lapin's `Confirmation` carries
/// the whole returned message inline (472 bytes, returned or not); moved through the polls, the list of
/// completed confirms and the decision, it cost about 500 instructions a publish in copies (callgrind, W2, Warren
/// against raw lapin in one binary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Confirmed {
    /// Acknowledged (or confirms were not requested), not refused.
    positive: bool,
    /// The return lapin paired with this confirm, which may be another publish's.
    returned: Returned,
}

/// A return lapin paired with a confirm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Returned {
    None,
    /// A message with an id of Warren's form: counted against that id.
    Id(MessageId),
    /// A message without one: judged by the confirm lapin paired it with.
    Anonymous,
}

impl From<Confirmation> for Confirmed {
    fn from(confirmation: Confirmation) -> Self {
        let (positive, message) = match confirmation {
            Confirmation::Ack(message) => (true, message),
            Confirmation::Nack(message) => (false, message),
            Confirmation::NotRequested => (true, None),
        };
        let returned = match message.as_ref().map(returned_id) {
            None => Returned::None,
            Some(Some(id)) => Returned::Id(id),
            Some(None) => Returned::Anonymous,
        };
        Confirmed { positive, returned }
    }
}

/// The confirm side of a channel in confirm mode.
pub(crate) struct Confirms {
    /// Shared with the watchdog, which holds it weakly.
    shared: Arc<Shared>,
    /// Tells the watchdog to look at the deadlines again: one earlier than its timer's was registered, or
    /// (once `shared` is dropped, so declared after it) this is dropped.
    alarm: Alarm,
}

/// What a channel's publishes and its watchdog share.
struct Shared {
    /// Publishes registered but not yet handed to lapin, in registration order. Held while handing them over
    /// and putting them in flight, so that lapin numbers them in the order it queues them.
    unsent: Mutex<Vec<Waiting>>,
    state: Mutex<State>,
    /// Returns once lapin has finished the ack frames it began (see the module's docs).
    sync: Box<dyn Fn() + Send + Sync>,
    /// Wakes the watchdog to drive the confirms (see [`Driver`]); the watchdog waits for it.
    nudged: Arc<tokio::sync::Notify>,
}

/// Wakes the watchdog, to look at the deadlines again or to find its channel gone; when dropped, to end.
struct Alarm(Arc<tokio::sync::Notify>);

impl Drop for Alarm {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

/// The waker the watchdog drives the confirms with: a nudge.
struct Nudge(Arc<tokio::sync::Notify>);

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
enum Driver {
    /// The channel's watchdog: whenever more than one publish waits.
    #[default]
    Watchdog,
    /// This publish, alone when it last looked.
    Publish(u64),
}

/// No publish: decided publishes are all woken.
const NOBODY: u64 = u64::MAX;

#[derive(Default)]
struct State {
    in_flight: InFlight,
    /// The publishes waiting for their outcome, by number.
    waiting: HashMap<u64, Slot, BuildHasherDefault<Numbers>>,
    next: u64,
    /// Completed confirms, not yet decided.
    done: Vec<Done>,
    /// Counts calls of [`State::collect`]; a confirm collected by call `n` is decided after a sync begun later.
    collections: u64,
    /// Message ids returned whose own confirm has not completed yet.
    returned: HashMap<MessageId, u32>,
    /// Who polls `in_flight` and is woken when a confirm completes.
    driver: Driver,
    /// The watchdog's waker, registered with `in_flight` while it drives (`None` in unit tests of the state).
    nudge: Option<Waker>,
    /// When the watchdog's timer fires; `None` while it has no publish to watch.
    armed: Option<Instant>,
    /// The watchdog task, spawned by the first publish; spawned again by the next publish should it have ended
    /// without this being dropped (its runtime shut down while the bus lives on, used from another).
    watchdog: Option<tokio::task::JoinHandle<()>>,
}

/// A publish waiting for its outcome.
struct Slot {
    /// Matched against returned messages; `None` for a message without an id of Warren's form, which is then
    /// judged by the confirm lapin pairs it with.
    id: Option<MessageId>,
    /// When the publish gives up waiting, if not decided by then.
    deadline: Instant,
    outcome: Option<Outcome>,
    waker: Option<Waker>,
    /// Its publish stopped waiting (its deadline passed, or its future was dropped): decided all the same, to
    /// account for its return.
    abandoned: bool,
}

impl Slot {
    fn new(id: Option<MessageId>, deadline: Instant) -> Slot {
        Slot { id, deadline, outcome: None, waker: None, abandoned: false }
    }
}

/// A completed confirm, its return (if any) already counted.
struct Done {
    number: u64,
    /// The [`State::collect`] call that collected it.
    collection: u64,
    /// Acknowledged (`true`) or refused, or the channel failed.
    confirmed: lapin::Result<bool>,
    /// It carried a return without a message id of Warren's form.
    anonymous_return: bool,
}

/// A publish in flight: resolves with its number and its confirm.
struct Waiting {
    number: u64,
    sending: Sending,
}

impl Future for Waiting {
    type Output = (u64, lapin::Result<Confirmed>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let confirmed = std::task::ready!(self.sending.as_mut().poll(cx));
        Poll::Ready((self.number, confirmed))
    }
}

/// The publishes in flight, each polled only when lapin wakes it. (Like `FuturesUnordered`, but its queue of
/// woken publishes is a plain list under a lock, so taking it takes every publish woken so far, which the
/// sync relies on; and each slot keeps its waker, so a publish allocates none.)
#[derive(Default)]
struct InFlight {
    slots: Vec<Option<Waiting>>,
    free: Vec<usize>,
    /// The waker of each slot, made once: it puts the slot on `woken`'s list.
    wakers: Vec<Waker>,
    woken: Arc<Woken>,
    /// The list being worked through, kept for its capacity.
    taking: Vec<usize>,
    len: usize,
}

/// The slots woken since the list was last taken, and who to tell.
#[derive(Default)]
struct Woken {
    slots: Mutex<Vec<usize>>,
    driver: AtomicWaker,
}

/// The waker of one slot.
struct SlotWaker {
    slot: usize,
    woken: Arc<Woken>,
}

impl std::task::Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.slots.lock().unwrap_or_else(PoisonError::into_inner).push(self.slot);
        self.woken.driver.wake();
    }
}

impl InFlight {
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a publish, to be polled by the next [`InFlight::completed`].
    fn insert(&mut self, waiting: Waiting) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            let slot = self.slots.len() - 1;
            self.wakers.push(Waker::from(Arc::new(SlotWaker { slot, woken: Arc::clone(&self.woken) })));
            slot
        });
        self.slots[slot] = Some(waiting);
        self.len += 1;
        self.woken.slots.lock().unwrap_or_else(PoisonError::into_inner).push(slot);
    }

    /// Polls every publish woken so far and hands those completed to `completed`; `cx` is woken when another
    /// publish is.
    fn completed(&mut self, waker: &Waker, mut completed: impl FnMut(u64, lapin::Result<Confirmed>)) {
        self.woken.driver.register(waker);
        std::mem::swap(&mut *self.woken.slots.lock().unwrap_or_else(PoisonError::into_inner), &mut self.taking);
        for slot in self.taking.drain(..) {
            // A slot may be listed twice, or woken late for a publish it held before: polling it again is harmless.
            let Some(waiting) = self.slots[slot].as_mut() else { continue };
            if let Poll::Ready(done) = Pin::new(waiting).poll(&mut Context::from_waker(&self.wakers[slot])) {
                self.slots[slot] = None;
                self.free.push(slot);
                self.len -= 1;
                completed(done.0, done.1);
            }
        }
    }
}

impl Confirms {
    /// The confirm side of `channel`, which must be in confirm mode. Its watchdog (see [`Confirms::publish`])
    /// is spawned by the first publish, on that publish's runtime, and ends when this is dropped.
    pub(crate) fn new(channel: Arc<Channel>) -> Confirms {
        // lapin completes an ack frame's confirms under its confirm lock, which `wait_for_confirms` takes first
        // thing: once it has it, the frames begun so far are finished.
        Confirms::with_sync(Box::new(move || {
            let _ = channel.wait_for_confirms().now_or_never();
        }))
    }

    /// Confirms that sync with lapin through `sync`.
    fn with_sync(sync: Box<dyn Fn() + Send + Sync>) -> Confirms {
        let nudged = Arc::new(tokio::sync::Notify::new());
        let nudge = Waker::from(Arc::new(Nudge(Arc::clone(&nudged))));
        let state = State { nudge: Some(nudge.clone()), ..State::default() };
        state.in_flight.woken.driver.register(&nudge);
        let shared = Shared { unsent: Mutex::default(), state: Mutex::new(state), sync, nudged };
        Confirms { shared: Arc::new(shared), alarm: Alarm(Arc::default()) }
    }

    /// Sends a publish (`sending`, not yet polled: lapin numbers the publish and queues its frames in its first
    /// poll) and waits for its outcome, until `deadline` at the latest ([`Outcome::TimedOut`]).
    ///
    /// The deadlines are kept by one watchdog task per channel rather than a timer per publish (a tokio timer
    /// registered and removed for every publish cost about 880 instructions each): it sleeps until the earliest
    /// deadline of the publishes waiting, then tells those whose deadline passed and sleeps until the next.
    /// Only a publish whose deadline is earlier than the watchdog's timer wakes it. Publishes sent with one
    /// timeout arrive in deadline order, and an idle watchdog looks again every [`IDLE_LOOK`], so a publish due
    /// later than that (the default publish timeout is 30 s) registers without a wake-up, whether it comes
    /// alone or among many.
    pub(crate) async fn publish(&self, id: Option<MessageId>, sending: Sending, deadline: Instant) -> Outcome {
        let shared = &*self.shared;
        let (number, alone) = {
            let mut unsent = shared.unsent();
            let mut state = shared.state();
            keep_watch(&mut state, &self.shared, &self.alarm.0);
            let (number, look_again) = state.register(id, deadline);
            if look_again {
                self.alarm.0.notify_one();
            }
            if state.waiting.len() > 1 {
                state.hand_to_watchdog();
            }
            let alone = unsent.is_empty() && state.in_flight.is_empty();
            unsent.push(Waiting { number, sending });
            (number, alone || unsent.len() >= BATCH)
        };
        let mut waiting = Awaiting { shared, number, decided: false };
        if !alone {
            yield_once().await; // the publishes ready beside it register meanwhile (see the module's docs)
        }
        shared.send_unsent();
        poll_fn(|cx| waiting.poll(cx)).await
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The publishes not yet handed to lapin; taken before [`Shared::state`] when both are.
    fn unsent(&self) -> MutexGuard<'_, Vec<Waiting>> {
        self.unsent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands every publish registered so far to lapin and puts them in flight; false if there was none. Each is
    /// then polled by whoever drives, woken by the slot's waker.
    fn send_unsent(&self) -> bool {
        let mut unsent = self.unsent();
        if unsent.is_empty() {
            return false;
        }
        // Taken out while lapin polls them: should a poll panic, the others are not polled again (they are
        // dropped, and their publishes fail at their deadline).
        let mut batch = std::mem::take(&mut *unsent);
        // lapin numbers a publish and queues its frames in its first poll. The waker it keeps is replaced by
        // the slot's when `in_flight` polls it.
        let mut first_poll = Context::from_waker(Waker::noop());
        for publish in &mut batch {
            if let Poll::Ready(failed) = publish.sending.as_mut().poll(&mut first_poll) {
                publish.sending = Box::pin(std::future::ready(failed)); // decided with the others, like any outcome
            }
        }
        let mut state = self.state();
        for publish in batch.drain(..) {
            state.in_flight.insert(publish);
        }
        *unsent = batch; // empty, kept for its capacity
        if state.driver == Driver::Watchdog
            && let Some(nudge) = state.nudge.clone()
        {
            // Polled now with their slots' wakers, so that lapin wakes the watchdog when they complete. One
            // complete already (a publish refused at once by a closed channel) woke only the no-op waker of its
            // first poll: the watchdog is woken to decide it.
            state.collect(&nudge);
            if !state.done.is_empty() {
                nudge.wake_by_ref();
            }
        }
        true
    }

    /// The outcome of publish `number` once decided. A publish alone drives the confirms itself meanwhile;
    /// with others waiting, the watchdog does.
    fn poll_outcome(&self, number: u64, cx: &mut Context<'_>) -> Poll<Outcome> {
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

    /// Publish `number`'s future was dropped before it took its outcome (see [`State::abandon`]). One not yet
    /// handed to lapin is handed over now: a publish polled once is sent, as it is by the memory transport,
    /// and not left for another publish to send.
    fn abandon(&self, number: u64) {
        let unsent = self.unsent().iter().any(|publish| publish.number == number);
        let handed_over = unsent && self.send_unsent();
        let mut state = self.state();
        if handed_over {
            state.in_flight.woken.driver.wake(); // whoever drives polls them; this publish will not
        }
        state.abandon(number);
    }
}

impl State {
    /// Registers a publish waiting for its outcome until `deadline`, and numbers it; true if the watchdog
    /// must look again (its timer is set for later, or not set).
    fn register(&mut self, id: Option<MessageId>, deadline: Instant) -> (u64, bool) {
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
    fn collect(&mut self, waker: &Waker) {
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
    fn decide(&mut self, collected: u64, me: u64) {
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
    fn take(&mut self, number: u64) -> Option<Outcome> {
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
    fn expire(&mut self, now: Instant) -> Instant {
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
    fn abandon(&mut self, number: u64) {
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

    /// When publish `number` leaves and was driving, the watchdog drives whatever is left.
    fn hand_on(&mut self, number: u64) {
        if self.driver == Driver::Publish(number) && (!self.waiting.is_empty() || !self.in_flight.is_empty()) {
            self.hand_to_watchdog();
        }
    }

    /// The watchdog drives the confirms from now on: it is the one woken when one completes, and is woken now
    /// should any have completed while a publish drove (its wake-up may not lead to a poll).
    fn hand_to_watchdog(&mut self) {
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

/// Waits for one publish's outcome; stops waiting (handing the turn on) when dropped first.
struct Awaiting<'a> {
    shared: &'a Shared,
    number: u64,
    decided: bool,
}

impl Awaiting<'_> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Outcome> {
        let outcome = std::task::ready!(self.shared.poll_outcome(self.number, cx));
        self.decided = true;
        Poll::Ready(outcome)
    }
}

impl Drop for Awaiting<'_> {
    fn drop(&mut self) {
        if !self.decided {
            self.shared.abandon(self.number);
        }
    }
}

/// Spawns the watchdog of `shared` (whose state `state` is) on the current runtime unless it is running. One
/// atomic load when it is: a publish pays no more for the check.
fn keep_watch(state: &mut State, shared: &Arc<Shared>, alarm: &Arc<tokio::sync::Notify>) {
    if state.watchdog.as_ref().is_none_or(tokio::task::JoinHandle::is_finished) {
        let nudged = Arc::clone(&shared.nudged);
        state.watchdog = Some(tokio::spawn(watch(Arc::downgrade(shared), Arc::clone(alarm), nudged)));
    }
}

/// How long a watchdog with no publish to watch sleeps before it looks again. Sleeping until woken instead, it
/// was woken by every publish that found it idle: one task wake-up and one timer a publish for a publisher that
/// sends one at a time (W3), the common case of a service. Once a second per idle channel costs nothing
/// measurable.
const IDLE_LOOK: std::time::Duration = std::time::Duration::from_secs(1);

/// Drives the confirms of one channel's publishes while several wait, and keeps their deadlines (see
/// [`Confirms::publish`]), until its [`Confirms`] is dropped.
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

/// Returns `Pending` once, waking its task first: the futures and tasks ready beside it run before it goes on.
async fn yield_once() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
}

/// The message id of a returned message, when it is one of Warren's form.
fn returned_id(message: &BasicReturnMessage) -> Option<MessageId> {
    message.properties.message_id().as_ref().and_then(|id| MessageId::parse(id.as_str()))
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

/// A publish that finds this many registered and not yet handed to lapin hands them over without yielding.
const BATCH: usize = 64;

/// How many times one poll syncs with lapin while confirms keep completing, before it yields its thread.
const SYNCS_PER_POLL: usize = 4;

/// Hashes publish numbers, which are distinct counters: one multiplication spreads them.
#[derive(Default)]
struct Numbers(u64);

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

#[cfg(test)]
mod tests {
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
}
