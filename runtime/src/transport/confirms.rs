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
//! So a publish is numbered, queued and registered here in one step (under `in_order`), and its outcome is
//! decided here, not by the confirm lapin hands it. RabbitMQ sends a message's `basic.return` before the ack
//! that covers it, and lapin reads frames in order, so once lapin has finished the ack frame that completed a
//! confirm, that message's return, if there is one, sits in a confirm completed by that frame or an earlier
//! one. When confirms complete, whoever drives (below) waits for lapin to finish the frame (lapin holds its
//! confirm lock across it), takes every confirm completed by then, and only then decides each outcome: returned
//! when a return carrying its message id came back, whichever confirm carried it.
//!
//! There is no task of its own: the publishes waiting take turns. The last one to poll the confirms in flight
//! is woken when one completes, decides every outcome that is ready, wakes their publishes, and hands the turn
//! on when it leaves. A publish alone in flight (a caller awaiting each one) is woken as often as it was by
//! lapin directly.

use std::collections::HashMap;
use std::future::poll_fn;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
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
}

/// A confirmed publish: lapin's send, then its confirm. It owns what it sends (the channel too, as an
/// `Arc<Channel>`, which holds nothing of this module's), so it can outlive its caller.
pub(crate) type Sending = Pin<Box<dyn Future<Output = lapin::Result<Confirmation>> + Send>>;

/// The confirm side of a channel in confirm mode.
pub(crate) struct Confirms {
    channel: Arc<Channel>,
    in_order: Mutex<()>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    in_flight: FuturesUnordered<Waiting>,
    /// The publishes waiting for their outcome, by number.
    waiting: HashMap<u64, Slot, BuildHasherDefault<Numbers>>,
    next: u64,
    /// Completed confirms, not yet decided.
    done: Vec<(u64, lapin::Result<Confirmation>)>,
    /// Message ids returned whose own confirm has not completed yet.
    returned: HashMap<MessageId, u32>,
    /// The publish whose task polled `in_flight` last: the one woken when a confirm completes.
    driver: Option<u64>,
}

/// A publish waiting for its outcome.
struct Slot {
    /// Matched against returned messages; `None` for a message without an id of Warren's form, which is then
    /// judged by the confirm lapin pairs it with.
    id: Option<MessageId>,
    outcome: Option<Outcome>,
    waker: Option<Waker>,
    /// Its publish stopped waiting (its deadline passed): decided all the same, to account for its return.
    abandoned: bool,
}

/// A publish in flight: resolves with its number and its confirm.
struct Waiting {
    number: u64,
    sending: Sending,
}

impl Future for Waiting {
    type Output = (u64, lapin::Result<Confirmation>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let confirmed = std::task::ready!(self.sending.as_mut().poll(cx));
        Poll::Ready((self.number, confirmed))
    }
}

impl Confirms {
    /// The confirm side of `channel`, which must be in confirm mode.
    pub(crate) fn new(channel: Arc<Channel>) -> Confirms {
        Confirms { channel, in_order: Mutex::new(()), state: Mutex::default() }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends a publish (`sending`, not yet polled: lapin numbers the publish and queues its frames in its first
    /// poll) and waits for its outcome.
    pub(crate) async fn publish(&self, id: Option<MessageId>, sending: Sending) -> Outcome {
        let mut sending = Some(sending);
        let number = poll_fn(|cx| {
            let mut sending = sending.take().expect("polled once");
            let _turn = self.in_order.lock().unwrap_or_else(PoisonError::into_inner);
            if let Poll::Ready(failed) = sending.as_mut().poll(cx) {
                sending = Box::pin(std::future::ready(failed)); // decided with the others, like any outcome
            }
            let mut state = self.state();
            let number = state.next;
            state.next += 1;
            state.waiting.insert(number, Slot { id, outcome: None, waker: None, abandoned: false });
            state.in_flight.push(Waiting { number, sending });
            Poll::Ready(number)
        })
        .await;
        let mut waiting = Awaiting { confirms: self, number, decided: false };
        poll_fn(|cx| waiting.poll(cx)).await
    }

    /// The outcome of publish `number` once decided; meanwhile drives the confirms in flight.
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
        state.driver = Some(number);
        if !state.collect(cx) {
            return Poll::Pending;
        }
        drop(state);
        // lapin completes an ack frame's confirms under its confirm lock, which `wait_for_confirms` takes first
        // thing: once it has it, the frame is finished. Once `in_order` is free, every publish numbered so far
        // is in `in_flight`.
        let _ = self.channel.wait_for_confirms().now_or_never();
        drop(self.in_order.lock().unwrap_or_else(PoisonError::into_inner));
        let mut state = self.state();
        state.driver = Some(number);
        state.collect(cx);
        state.decide(number);
        match state.take(number) {
            Some(outcome) => Poll::Ready(outcome),
            None => Poll::Pending,
        }
    }

    /// Publish `number` stopped waiting (its deadline passed); its confirm is still decided with the others.
    fn abandon(&self, number: u64) {
        let mut state = self.state();
        if let Some(slot) = state.waiting.get_mut(&number) {
            if slot.outcome.is_some() {
                state.waiting.remove(&number);
            } else {
                slot.abandoned = true;
                slot.waker = None;
            }
        }
        state.hand_on(number);
    }
}

impl State {
    /// Moves the confirms completed so far to `done`; `true` if there were any. Registers `cx` to be woken
    /// when the next one completes.
    fn collect(&mut self, cx: &mut Context<'_>) -> bool {
        let before = self.done.len();
        while let Poll::Ready(Some(completed)) = self.in_flight.poll_next_unpin(cx) {
            self.done.push(completed);
        }
        self.done.len() > before
    }

    /// Decides the outcome of every completed confirm, matching returns by message id, and wakes each
    /// publish decided (but `me`, which is running).
    fn decide(&mut self, me: u64) {
        // First every return, whichever confirm carries it; one without a message id stays with its carrier.
        let mut anonymous = Vec::with_capacity(self.done.len());
        for (_, confirmed) in &mut self.done {
            let message = match confirmed {
                Ok(Confirmation::Ack(message) | Confirmation::Nack(message)) => message.take(),
                _ => None,
            };
            anonymous.push(match message.as_ref().and_then(returned_id) {
                Some(id) => {
                    *self.returned.entry(id).or_default() += 1;
                    false
                }
                None => message.is_some(),
            });
        }
        for ((number, confirmed), anonymous) in std::mem::take(&mut self.done).into_iter().zip(anonymous) {
            let id = self.waiting.get(&number).and_then(|slot| slot.id);
            let returned = match id {
                Some(id) => take_one(&mut self.returned, id),
                None => anonymous,
            };
            let Some(slot) = self.waiting.get_mut(&number) else { continue };
            if slot.abandoned {
                self.waiting.remove(&number);
                continue;
            }
            slot.outcome = Some(match confirmed {
                Ok(Confirmation::Ack(_) | Confirmation::NotRequested) if returned => Outcome::Returned,
                Ok(Confirmation::Ack(_) | Confirmation::NotRequested) => Outcome::Delivered,
                Ok(Confirmation::Nack(_)) => Outcome::Refused,
                Err(error) => Outcome::Failed(error),
            });
            if number != me
                && let Some(waker) = slot.waker.take()
            {
                waker.wake();
            }
        }
        if self.in_flight.is_empty() {
            // Every confirm is in: a return still unmatched has no publish left to match (RabbitMQ returns a
            // message before acknowledging it, so this holds nothing; it only bounds what a broker that did
            // not could leave).
            self.returned.clear();
        }
    }

    /// The outcome of publish `number`, once decided; it then stops waiting.
    fn take(&mut self, number: u64) -> Option<Outcome> {
        let outcome = self.waiting.get_mut(&number)?.outcome.take()?;
        self.waiting.remove(&number);
        self.hand_on(number);
        Some(outcome)
    }

    /// When publish `number` leaves and was the driver, wakes another waiting publish to take the turn.
    fn hand_on(&mut self, number: u64) {
        if self.driver == Some(number) {
            self.driver = None;
            if let Some(waker) = self.waiting.values_mut().find_map(|slot| slot.waker.take()) {
                waker.wake();
            }
        }
    }
}

/// Waits for one publish's outcome; stops waiting (handing the turn on) when dropped first.
struct Awaiting<'a> {
    confirms: &'a Confirms,
    number: u64,
    decided: bool,
}

impl Awaiting<'_> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Outcome> {
        let outcome = std::task::ready!(self.confirms.poll_outcome(self.number, cx));
        self.decided = true;
        Poll::Ready(outcome)
    }
}

impl Drop for Awaiting<'_> {
    fn drop(&mut self) {
        if !self.decided {
            self.confirms.abandon(self.number);
        }
    }
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
