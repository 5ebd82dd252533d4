//! Messages in the in-memory broker's queues: enqueued by priority, expired by TTL at the head of the queue,
//! dead-lettered with `x-death`; a queue's depth and a fetch from it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Broker, Queue, State, with_state};
use crate::envelope::Properties;
use crate::error::{Error, Later, Result};
use crate::headers::{HeaderValue, Headers};
use crate::transport::{Acker as AnyAcker, Delivery, Message};

/// A message in a queue: the shared message, plus what is this queue's own.
#[derive(Clone)]
pub(super) struct Queued {
    pub(super) message: Arc<Message>,
    pub(super) redelivered: bool,
    pub(super) expires_at: Option<Instant>,
    /// Times it came back to the queue unacknowledged (for `x-delivery-limit`).
    pub(super) returned: u32,
    /// Its place in the queue, set when enqueued.
    pub(super) seq: u64,
}

impl Queued {
    pub(super) fn new(message: Arc<Message>) -> Self {
        Queued { message, redelivered: false, expires_at: None, returned: 0, seq: 0 }
    }
}

impl Broker {
    /// Messages ready in `queue`, and its consumers.
    pub(crate) fn queue_stats(&self, queue: &str) -> Result<(u64, u32)> {
        match self.lock().queues.get(queue) {
            Some(q) => Ok((q.ready.iter().map(|level| level.len() as u64).sum(), q.consumers.len() as u32)),
            None => Err(Error::config(format!("queue \"{queue}\" does not exist"))),
        }
    }

    pub(crate) fn fetch(&self, queue: &str) -> Result<Option<Delivery>> {
        with_state(&self.state, |state| {
            state.expire(queue, &self.state);
            let Some(q) = state.queues.get_mut(queue) else {
                return Err(Error::config(format!("cannot fetch from queue \"{queue}\": it does not exist")));
            };
            let queued = (0..q.ready.len()).rev().find_map(|level| q.pop_ready(level));
            Ok(queued.map(|q| Delivery { message: q.message, redelivered: q.redelivered, acker: AnyAcker::None }))
        })
    }
}

impl State {
    /// Whether `queue` has room for a message of `size` body bytes under its length limit (see
    /// [`QueueLimit::has_room`](warren_topology::QueueLimit::has_room)): only ready messages count, as on
    /// RabbitMQ. The queue keeps its bytes as messages come and go: nothing is summed per publish.
    pub(super) fn has_room(&self, queue: &str, size: usize) -> bool {
        let Some(q) = self.queues.get(queue) else { return true };
        let Some(limit) = q.options.limit else { return true };
        let messages = q.ready.iter().map(VecDeque::len).sum();
        let bytes = q.ready_bytes;
        limit.has_room(messages, bytes, size)
    }

    pub(super) fn enqueue(&mut self, name: &str, mut message: Queued, shared: &Arc<Mutex<State>>) {
        let Some(queue) = self.queues.get_mut(name) else { return };
        if queue.options.message_ttl.is_some() || message.message.properties.expiration_ms().is_some() {
            Self::set_expiry(queue, &mut message);
        }
        let level = queue.level(&message);
        let expires = message.expires_at.is_some();
        message.seq = queue.next_seq;
        queue.next_seq += 1;
        queue.push_ready(level, message);
        if expires {
            Self::watch_expiry(queue, shared);
        }
        let expired = Self::dispatch_queue(queue, &mut self.wakes);
        for message in expired {
            self.dead_letter(name, message, "expired", shared);
        }
    }

    /// When `message` expires in `queue`: the earlier of its own `expiration` and the queue's TTL.
    fn set_expiry(queue: &Queue, message: &mut Queued) {
        let now = Instant::now();
        let per_message = message.message.properties.expiration_ms().map(|ms| now.later(Duration::from_millis(ms)));
        let per_queue = queue.options.message_ttl.map(|ms| now.later(Duration::from_millis(u64::from(ms))));
        message.expires_at = match (per_message, per_queue) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// Makes sure a task expires this queue's messages when they reach the head and their time comes.
    pub(super) fn watch_expiry(queue: &mut Queue, shared: &Arc<Mutex<State>>) {
        if let Some(notify) = &queue.expiry {
            notify.notify_one();
            return;
        }
        let notify = Arc::new(Notify::new());
        queue.expiry = Some(Arc::clone(&notify));
        let state = Arc::downgrade(shared);
        let name = Arc::clone(&queue.name);
        tokio::spawn(async move {
            loop {
                let next = {
                    let Some(shared) = state.upgrade() else { return };
                    let next = with_state(&shared, |state| {
                        state.expire(&name, &shared);
                        state.queues.get(&*name).map(Queue::next_expiry)
                    });
                    match next {
                        None => return,
                        Some(next) => next,
                    }
                };
                match next {
                    Some(at) => {
                        tokio::select! {
                            () = tokio::time::sleep_until(at) => {}
                            () = notify.notified() => {}
                        }
                    }
                    None => notify.notified().await,
                }
            }
        });
    }

    /// Dead-letters (or drops) expired messages at the heads of `name`'s priority levels.
    fn expire(&mut self, name: &str, shared: &Arc<Mutex<State>>) {
        let now = Instant::now();
        let mut expired = Vec::new();
        if let Some(queue) = self.queues.get_mut(name) {
            for level in 0..queue.ready.len() {
                while queue.ready[level].front().is_some_and(|m| m.expires_at.is_some_and(|at| at <= now)) {
                    expired.extend(queue.pop_ready(level));
                }
            }
        }
        for message in expired {
            self.dead_letter(name, message, "expired", shared);
        }
    }

    /// Sends `message` to the queue's dead-letter exchange with an `x-death` record, or drops it.
    pub(super) fn dead_letter(&mut self, name: &str, queued: Queued, reason: &str, shared: &Arc<Mutex<State>>) {
        let Some((exchange, key)) = self.queues.get(name).and_then(|q| q.options.dead_letter.clone()) else {
            return;
        };
        let message = &queued.message;
        let key = if key.is_empty() { message.routing_key.to_string() } else { key };
        // RabbitMQ drops a per-message TTL when dead-lettering, so the copy does not expire again at once.
        let properties = record_death(message, name, reason).without_expiration();
        let Ok(queues) = self.route(&exchange, &key, &properties) else { return };
        let body = match Arc::try_unwrap(queued.message) {
            Ok(message) => message.body,
            Err(shared) => shared.body.clone(),
        };
        let (exchange, routing_key) = self.intern(&exchange, &key);
        let copy = Arc::new(Message::new(exchange, routing_key, properties.received(), body));
        for queue in queues {
            // As RabbitMQ: dead-lettering is not confirmed, and a full queue with `reject-publish` drops what is
            // dead-lettered into it.
            if self.has_room(&queue, copy.body.len()) {
                self.enqueue(&queue, Queued::new(Arc::clone(&copy)), shared);
            } else {
                tracing::warn!(queue = %queue, from = name, "a dead-lettered message was dropped: its queue is full");
            }
        }
    }
}

/// Properties with RabbitMQ's dead-letter headers added: `x-death` (newest first, one entry per queue and
/// reason, with a count) and the `x-first-death-*` trio.
fn record_death(message: &Message, queue: &str, reason: &str) -> Properties {
    let mut headers = message.properties.headers().cloned().unwrap_or_default();
    let mut deaths: Vec<HeaderValue> = match headers.remove("x-death") {
        Some(HeaderValue::Array(deaths)) => deaths,
        _ => Vec::new(),
    };
    let same = |entry: &HeaderValue| {
        entry
            .as_table()
            .is_some_and(|table| table.get_str("queue") == Some(queue) && table.get_str("reason") == Some(reason))
    };
    let previous = deaths.iter().position(same).map(|i| deaths.remove(i));
    let count = previous
        .as_ref()
        .and_then(HeaderValue::as_table)
        .and_then(|table| table.get_i64("count"))
        .map_or(1, |n| n.saturating_add(1));
    let entry = Headers::new()
        .with("count", count)
        .with("reason", reason)
        .with("queue", queue)
        .with("exchange", &*message.exchange)
        .with("routing-keys", vec![HeaderValue::from(&*message.routing_key)])
        .with("time", HeaderValue::Timestamp(crate::envelope::now_unix()));
    deaths.insert(0, HeaderValue::Table(entry));
    if !headers.contains("x-first-death-queue") {
        headers.insert("x-first-death-queue", queue);
        headers.insert("x-first-death-reason", reason);
        headers.insert("x-first-death-exchange", &*message.exchange);
    }
    headers.insert("x-death", deaths);
    message.properties.with_headers(headers)
}
