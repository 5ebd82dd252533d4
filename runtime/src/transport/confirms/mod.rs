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

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use futures_util::FutureExt;
use lapin::message::BasicReturnMessage;
use lapin::{Channel, Confirmation};

use crate::envelope::MessageId;

mod driver;
mod slots;
mod state;
#[cfg(test)]
mod tests;

use driver::{Alarm, Driver, Nudge, keep_watch};
use state::State;

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

/// A publish that finds this many registered and not yet handed to lapin hands them over without yielding.
const BATCH: usize = 64;

/// How long a watchdog with no publish to watch sleeps before it looks again. Sleeping until woken instead, it
/// was woken by every publish that found it idle: one task wake-up and one timer a publish for a publisher that
/// sends one at a time (W3), the common case of a service. Once a second per idle channel costs nothing
/// measurable.
const IDLE_LOOK: std::time::Duration = std::time::Duration::from_secs(1);
