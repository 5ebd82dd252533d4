//! Consumers of the in-memory broker: deliveries handed round robin within each consumer's prefetch, through
//! its inbox to its stream; ack, requeue (`redelivered`, `x-delivery-limit`), reject, and cancel.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use futures_util::Stream;
use futures_util::task::AtomicWaker;
use tokio::time::Instant;

use super::{Broker, Queue, Queued, REPLY_PREFIX, State, with_state};
use crate::error::{Error, Result};
use crate::transport::{Acker as AnyAcker, Canceller as AnyCanceller, Consumer, Delivery, Message, Settle};

impl Broker {
    pub(crate) fn consume(&self, queue: &str, prefetch: u16, tag: String) -> Result<Consumer> {
        let (inbox, target, id) = with_state(&self.state, |state| {
            state.next_consumer += 1;
            let id = state.next_consumer;
            let Some(q) = state.queues.get_mut(queue) else {
                return Err(Error::config(format!("cannot consume from queue \"{queue}\": it does not exist")));
            };
            let inbox = Arc::new(Inbox {
                deliveries: Mutex::default(),
                waker: AtomicWaker::new(),
                closed: AtomicBool::new(false),
            });
            q.consumers.push(Slot {
                id,
                inbox: Arc::clone(&inbox),
                prefetch: usize::from(prefetch),
                unacked: VecDeque::new(),
            });
            let target =
                Arc::new(Target { state: Arc::downgrade(&self.state), queue: Arc::clone(&q.name), consumer: id });
            state.dispatch(queue, &self.state);
            Ok((inbox, target, id))
        })?;
        let canceller = Canceller { state: Arc::downgrade(&self.state), queue: queue.into(), consumer: id };
        Ok(Consumer {
            tag,
            stream: Box::pin(Deliveries { inbox, target, taken: VecDeque::new(), canceller: Some(canceller.clone()) }),
            cancel: AnyCanceller::Memory(canceller),
            generation: 0,
        })
    }
}

pub(super) struct Slot {
    id: u64,
    inbox: Arc<Inbox>,
    /// 0 = unlimited.
    prefetch: usize,
    /// This consumer's deliveries not yet settled, by tag, in the order they were delivered. A consumer settles
    /// mostly in that order, so a settlement usually takes the front: no hash map of every queue's deliveries
    /// to insert each into and remove it from.
    unacked: VecDeque<(u64, Queued)>,
}

impl Slot {
    /// Takes the delivery `tag` out of those not yet settled.
    fn settled(&mut self, tag: u64) -> Option<Queued> {
        let index = match self.unacked.front() {
            Some((first, _)) if *first == tag => 0,
            _ => self.unacked.binary_search_by_key(&tag, |(tag, _)| *tag).ok()?,
        };
        self.unacked.remove(index).map(|(_, message)| message)
    }
}

impl Drop for Slot {
    /// The broker lets go of the consumer (cancelled, queue deleted, broker gone): its stream ends.
    fn drop(&mut self) {
        self.inbox.close();
    }
}

/// One consumer's deliveries: put there by the broker under its lock, taken by the consumer's task without
/// it. Replaces a channel per consumer: no sender to clone per delivery, and one wake-up per batch rather
/// than per message.
pub(super) struct Inbox {
    deliveries: Mutex<VecDeque<Handed>>,
    /// The consumer's task, when it waits for deliveries.
    pub(super) waker: AtomicWaker,
    /// The broker let go of the consumer (queue deleted, broker gone): the stream ends once drained.
    closed: AtomicBool,
}

/// Where a consumer's deliveries are settled: its broker, queue and consumer. Shared by the consumer's ackers,
/// in an allocation of its own: the inbox's lock, which the publisher takes, is not on the cache line whose
/// reference count the consumer changes for every delivery.
struct Target {
    state: Weak<Mutex<State>>,
    queue: Arc<str>,
    consumer: u64,
}

impl Inbox {
    /// Adds a delivery; `true` when the inbox was empty, so the consumer may be waiting and must be woken.
    fn put(&self, delivery: Handed) -> bool {
        let mut deliveries = self.deliveries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        deliveries.push_back(delivery);
        deliveries.len() == 1
    }

    /// Moves every waiting delivery into `into` (empty), trading buffers: one lock for the whole batch.
    fn take_all(&self, into: &mut VecDeque<Handed>) {
        std::mem::swap(&mut *self.deliveries.lock().unwrap_or_else(|poisoned| poisoned.into_inner()), into);
    }

    /// Ends the stream. Deliveries not yet taken are dropped: the broker has put them back in the queue.
    fn close(&self) {
        let untaken = std::mem::take(&mut *self.deliveries.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        self.closed.store(true, Ordering::Release);
        self.waker.wake();
        drop(untaken);
    }
}

/// A delivery as the broker hands it to a consumer's inbox. The consumer makes it a [`Delivery`], with an
/// acker that points at the consumer's [`Target`]: counting that reference on the consumer's thread, not the
/// publisher's, keeps the count from bouncing between two cores' caches on every message.
struct Handed {
    message: Arc<Message>,
    redelivered: bool,
    tag: u64,
}

/// Consumer deliveries; dropping the stream cancels the consumer, like closing its channel.
struct Deliveries {
    inbox: Arc<Inbox>,
    target: Arc<Target>,
    /// Taken from the inbox, not yet handed out.
    taken: VecDeque<Handed>,
    canceller: Option<Canceller>,
}

impl Deliveries {
    fn next_taken(&mut self) -> Option<Delivery> {
        if self.taken.is_empty() {
            self.inbox.take_all(&mut self.taken);
        }
        let Handed { message, redelivered, tag } = self.taken.pop_front()?;
        Some(Delivery {
            message,
            redelivered,
            acker: AnyAcker::Memory(Acker { target: Arc::clone(&self.target), tag }),
        })
    }
}

impl Stream for Deliveries {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.inbox.closed.load(Ordering::Acquire) {
            self.taken.clear(); // back in the queue already
            return Poll::Ready(None);
        }
        if let Some(delivery) = self.next_taken() {
            return Poll::Ready(Some(Ok(delivery)));
        }
        self.inbox.waker.register(cx.waker());
        // Again after registering: a delivery put in between would otherwise wait for the next wake-up.
        if let Some(delivery) = self.next_taken() {
            return Poll::Ready(Some(Ok(delivery)));
        }
        if self.inbox.closed.load(Ordering::Acquire) { Poll::Ready(None) } else { Poll::Pending }
    }
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        if let Some(canceller) = self.canceller.take() {
            canceller.cancel();
        }
    }
}

impl State {
    /// Hands ready messages to consumers with room under their prefetch, round robin.
    fn dispatch(&mut self, name: &str, shared: &Arc<Mutex<State>>) {
        let Some(queue) = self.queues.get_mut(name) else { return };
        let expired = Self::dispatch_queue(queue, &mut self.wakes);
        for message in expired {
            self.dead_letter(name, message, "expired", shared);
        }
    }

    /// [`State::dispatch`] on a queue already looked up; returns the messages found expired, to dead-letter.
    pub(super) fn dispatch_queue(queue: &mut Queue, wakes: &mut Vec<Arc<Inbox>>) -> Vec<Queued> {
        let mut expired = Vec::new();
        let mut now = None;
        while let Some(level) = queue.ready.iter().rposition(|level| !level.is_empty()) {
            let count = queue.consumers.len();
            let Some(offset) = (0..count).find(|i| {
                let slot = &queue.consumers[(queue.next + i) % count];
                slot.prefetch == 0 || slot.unacked.len() < slot.prefetch
            }) else {
                break;
            };
            let index = (queue.next + offset) % count;
            queue.next = (index + 1) % count;
            let message = queue.pop_ready(level).expect("level is not empty");
            if message.expires_at.is_some_and(|at| at <= *now.get_or_insert_with(Instant::now)) {
                expired.push(message);
                continue;
            }
            queue.next_tag += 1;
            let tag = queue.next_tag;
            let slot = &mut queue.consumers[index];
            let delivery = Handed { message: Arc::clone(&message.message), redelivered: message.redelivered, tag };
            if slot.inbox.put(delivery) {
                wakes.push(Arc::clone(&slot.inbox));
            }
            slot.unacked.push_back((tag, message));
        }
        expired
    }

    /// Acknowledges deliveries of `consumer` on `name` by tag, looking both up once; `false` if any was not
    /// pending.
    fn ack(&mut self, name: &str, consumer: u64, tags: impl Iterator<Item = u64>) -> bool {
        let Some(queue) = self.queues.get_mut(name) else { return false };
        let Some(slot) = queue.consumers.iter_mut().find(|s| s.id == consumer) else { return false };
        let mut all = true;
        for tag in tags {
            match slot.settled(tag) {
                Some(message) => self.acknowledged.push(message),
                None => all = false,
            }
        }
        all
    }

    fn settle(&mut self, name: &str, consumer: u64, tag: u64, how: Settle, shared: &Arc<Mutex<State>>) -> bool {
        let Some(queue) = self.queues.get_mut(name) else { return false };
        let Some(slot) = queue.consumers.iter_mut().find(|s| s.id == consumer) else { return false };
        let Some(mut message) = slot.settled(tag) else { return false };
        match how {
            Settle::Ack => self.acknowledged.push(message),
            Settle::Requeue => {
                message.redelivered = true;
                message.returned += 1;
                if queue.options.delivery_limit.is_some_and(|limit| message.returned > limit) {
                    self.dead_letter(name, message, "delivery_limit", shared);
                } else if queue.put_back(message) {
                    // Its time may pass before a consumer takes it: expired at the head, as on RabbitMQ.
                    Self::watch_expiry(queue, shared);
                }
            }
            Settle::Reject => self.dead_letter(name, message, "rejected", shared),
        }
        true
    }

    /// Removes a consumer; its unacknowledged messages go back to the queue, marked redelivered.
    fn remove_consumer(&mut self, name: &str, consumer: u64, shared: &Arc<Mutex<State>>) {
        let Some(queue) = self.queues.get_mut(name) else { return };
        // Already gone (cancelled twice: explicitly, then by its stream's drop): nothing changes, and an
        // auto-delete queue declared again since is not deleted before anyone consumed from it.
        let Some(index) = queue.consumers.iter().position(|slot| slot.id == consumer) else { return };
        let returned = std::mem::take(&mut queue.consumers.remove(index).unacked);
        let limit = queue.options.delivery_limit;
        let mut over_limit = Vec::new();
        // Back at their places, ahead of what was never delivered.
        let mut expire = false;
        for (_, mut message) in returned {
            message.redelivered = true;
            message.returned += 1;
            if limit.is_some_and(|limit| message.returned > limit) {
                over_limit.push(message);
            } else {
                expire |= queue.put_back(message);
            }
        }
        if expire {
            Self::watch_expiry(queue, shared);
        }
        for message in over_limit {
            self.dead_letter(name, message, "delivery_limit", shared);
        }
        let Some(queue) = self.queues.get_mut(name) else { return };
        if queue.options.auto_delete && queue.consumers.is_empty() {
            self.delete_queue(name);
            return;
        }
        self.dispatch(name, shared);
    }
}

/// Settles one delivery of the in-memory broker.
pub(crate) struct Acker {
    /// The consumer it was delivered to, and its broker and queue.
    target: Arc<Target>,
    tag: u64,
}

impl std::fmt::Debug for Acker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acker").field("queue", &self.target.queue).field("tag", &self.tag).finish()
    }
}

impl Acker {
    /// Acknowledges deliveries of one consumer under one lock.
    pub(crate) fn ack_all<'a>(ackers: impl Iterator<Item = &'a Acker>) -> bool {
        let mut ackers = ackers.peekable();
        let Some(first) = ackers.peek() else { return true };
        let target = Arc::clone(&first.target);
        let Some(shared) = target.state.upgrade() else { return false };
        let queue = &target.queue;
        with_state(&shared, |state| {
            let all = state.ack(queue, target.consumer, ackers.map(|acker| acker.tag));
            state.dispatch(queue, &shared);
            all
        })
    }

    pub(crate) fn settle(&self, how: Settle) -> bool {
        let Some(shared) = self.target.state.upgrade() else { return false };
        let queue = &self.target.queue;
        with_state(&shared, |state| {
            let settled = state.settle(queue, self.target.consumer, self.tag, how, &shared);
            state.dispatch(queue, &shared);
            settled
        })
    }
}

/// Cancels one consumer (or a reply path) of the in-memory broker.
#[derive(Debug, Clone)]
pub(crate) struct Canceller {
    pub(super) state: Weak<Mutex<State>>,
    pub(super) queue: Arc<str>,
    pub(super) consumer: u64,
}

impl Canceller {
    pub(crate) fn cancel(&self) {
        let Some(shared) = self.state.upgrade() else { return };
        with_state(&shared, |state| {
            if self.queue.starts_with(REPLY_PREFIX) {
                state.replies.remove(&*self.queue);
            } else {
                state.remove_consumer(&self.queue, self.consumer, &shared);
            }
        });
    }
}
