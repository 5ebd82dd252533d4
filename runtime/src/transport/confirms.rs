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
//! So each channel in confirm mode has a router task that owns its publishes in flight, and a lock under which
//! a publish is numbered, queued and handed to the router as one step. RabbitMQ sends a message's
//! `basic.return` before the ack that covers it, and lapin reads frames in order, so once lapin has finished the
//! ack frame that completed a confirm, that message's return, if there is one, sits in a confirm completed by
//! that frame or an earlier one. When a confirm completes, the router waits for lapin to finish the frame (lapin
//! holds its confirm lock across it), takes every confirm completed by then, and only then tells each publish
//! its outcome: returned when a return carrying its message id came back, whichever confirm carried it.

use std::collections::HashMap;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use lapin::message::BasicReturnMessage;
use lapin::{Channel, Confirmation};
use tokio::sync::{mpsc, oneshot};

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

/// A confirmed publish: lapin's send, then its confirm.
pub(crate) type Sending = Pin<Box<dyn Future<Output = lapin::Result<Confirmation>> + Send>>;

struct InFlight {
    /// The message id, matched against returned messages; `None` for a message without one, which is then
    /// judged by the confirm lapin pairs it with.
    id: Option<MessageId>,
    sending: Sending,
    outcome: oneshot::Sender<Outcome>,
}

/// A publish in flight, as the router waits for it: resolves with the publish and its confirm.
struct Waiting(Option<InFlight>);

impl Future for Waiting {
    type Output = (InFlight, lapin::Result<Confirmation>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(publish) = self.0.as_mut() else { return Poll::Pending }; // completed: never polled again
        let confirmed = std::task::ready!(publish.sending.as_mut().poll(cx));
        let publish = self.0.take().expect("a publish in flight");
        Poll::Ready((publish, confirmed))
    }
}

/// The matching side of a channel in confirm mode. Its router stops once this is dropped and nothing is in
/// flight.
pub(crate) struct Confirms {
    in_order: Arc<Mutex<()>>,
    router: mpsc::UnboundedSender<InFlight>,
}

impl Confirms {
    /// Starts the router of `channel`, which must be in confirm mode.
    pub(crate) fn new(channel: Channel) -> Confirms {
        let in_order = Arc::new(Mutex::new(()));
        let (router, in_flight) = mpsc::unbounded_channel();
        tokio::spawn(route(channel, Arc::clone(&in_order), in_flight));
        Confirms { in_order, router }
    }

    /// Sends a publish (`sending`, not yet polled: lapin numbers the publish and queues its frames in its first
    /// poll) and waits for its outcome.
    pub(crate) async fn publish(&self, id: Option<MessageId>, sending: Sending) -> Outcome {
        let (outcome, decided) = oneshot::channel();
        let mut publish = Some(InFlight { id, sending, outcome });
        let handed = poll_fn(|cx| {
            let Some(mut publish) = publish.take() else { return Poll::Ready(false) };
            let _turn = self.in_order.lock().unwrap_or_else(PoisonError::into_inner);
            if let Poll::Ready(done) = publish.sending.as_mut().poll(cx) {
                publish.sending = Box::pin(std::future::ready(done)); // failed at once: the router reports it
            }
            Poll::Ready(self.router.send(publish).is_ok())
        })
        .await;
        match decided.await {
            Ok(outcome) if handed => outcome,
            _ => Outcome::Failed(
                lapin::ErrorKind::IOError(Arc::new(std::io::Error::other("confirm router stopped"))).into(),
            ),
        }
    }
}

/// Owns the publishes in flight on `channel` and tells each its outcome (see the module's docs).
async fn route(channel: Channel, in_order: Arc<Mutex<()>>, mut arriving: mpsc::UnboundedReceiver<InFlight>) {
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    // Ids of returned messages whose own confirm has not completed yet.
    let mut returned: HashMap<MessageId, u32> = HashMap::new();
    let mut done = Vec::new();
    loop {
        let first = poll_fn(|cx| {
            open = take_arrivals(&mut arriving, &mut in_flight, cx) && open;
            match in_flight.poll_next_unpin(cx) {
                Poll::Ready(Some(completed)) => Poll::Ready(Some(completed)),
                Poll::Ready(None) if !open => Poll::Ready(None),
                _ => Poll::Pending,
            }
        })
        .await;
        let Some(first) = first else { return };
        done.push(first);
        // lapin completes an ack frame's confirms under its confirm lock, which `wait_for_confirms` takes
        // first thing: once it has it, the frame is finished. Once `in_order` is free, every publish numbered
        // so far has been handed over.
        let _ = channel.wait_for_confirms().now_or_never();
        drop(in_order.lock().unwrap_or_else(PoisonError::into_inner));
        poll_fn(|cx| {
            open = take_arrivals(&mut arriving, &mut in_flight, cx) && open;
            while let Poll::Ready(Some(completed)) = in_flight.poll_next_unpin(cx) {
                done.push(completed);
            }
            Poll::Ready(())
        })
        .await;
        settle(&mut done, &mut returned);
    }
}

/// Moves newly handed publishes into `in_flight`; `false` once no more can come.
fn take_arrivals(
    arriving: &mut mpsc::UnboundedReceiver<InFlight>,
    in_flight: &mut FuturesUnordered<Waiting>,
    cx: &mut Context<'_>,
) -> bool {
    loop {
        match arriving.poll_recv(cx) {
            Poll::Ready(Some(publish)) => in_flight.push(Waiting(Some(publish))),
            Poll::Ready(None) => return false,
            Poll::Pending => return true,
        }
    }
}

/// Tells each completed publish its outcome, matching returns by message id.
fn settle(done: &mut Vec<(InFlight, lapin::Result<Confirmation>)>, returned: &mut HashMap<MessageId, u32>) {
    // First every return, whichever confirm carries it; a return without a message id stays with its carrier.
    let mut carried = Vec::with_capacity(done.len());
    for (_, confirmed) in done.iter_mut() {
        let message = match confirmed {
            Ok(Confirmation::Ack(message) | Confirmation::Nack(message)) => message.take(),
            _ => None,
        };
        let anonymous = match message.as_ref().and_then(returned_id) {
            Some(id) => {
                *returned.entry(id).or_default() += 1;
                false
            }
            None => message.is_some(),
        };
        carried.push(anonymous);
    }
    for ((publish, confirmed), anonymous) in done.drain(..).zip(carried) {
        let was_returned = publish.id.is_some_and(|id| take(returned, id)) || (anonymous && publish.id.is_none());
        let outcome = match confirmed {
            Ok(Confirmation::Ack(_) | Confirmation::NotRequested) if was_returned => Outcome::Returned,
            Ok(Confirmation::Ack(_) | Confirmation::NotRequested) => Outcome::Delivered,
            Ok(Confirmation::Nack(_)) => Outcome::Refused,
            Err(error) => Outcome::Failed(error),
        };
        let _ = publish.outcome.send(outcome); // the publish may have stopped waiting (its deadline passed)
    }
}

/// The message id of a returned message, when it is one of Warren's.
fn returned_id(message: &BasicReturnMessage) -> Option<MessageId> {
    message.properties.message_id().as_ref().and_then(|id| MessageId::parse(id.as_str()))
}

/// Takes one return of message `id`, if one came back.
fn take(returned: &mut HashMap<MessageId, u32>, id: MessageId) -> bool {
    match returned.get_mut(&id) {
        Some(1) => returned.remove(&id).is_some(),
        Some(count) => {
            *count -= 1;
            true
        }
        None => false,
    }
}
