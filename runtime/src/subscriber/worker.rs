//! One delivery through its handler: decoding, the handler (its panics and timeout caught), then an ack, a
//! retry through a delay queue, or the dead-letter queue with why.

use std::borrow::Cow;

use super::*;
use crate::metrics::Tracker;
use crate::middleware::{self, Layers};
use crate::trace;

#[derive(Clone)]
pub(super) struct Worker {
    pub(super) stats: Arc<SubscriberStats>,
    pub(super) bus: Bus,
    /// What handlers' contexts share.
    pub(super) context_bus: Arc<Bus>,
    pub(super) group: String,
    pub(super) queue: String,
    pub(super) retry: RetryPolicy,
    pub(super) handler_timeout: Option<Duration>,
    pub(super) temporary: bool,
    /// Whether the queue is a quorum queue, and so its delay queues too.
    pub(super) quorum: bool,
    /// The bus's layers, then the subscriber's.
    pub(super) layers: Layers,
}

/// The type name a delivery is counted under (and layers' metrics, by `metric_type`): its own when
/// the subscriber takes that type, else [`crate::OTHER_TYPES`]. The `type` property is the sender's
/// to choose, and a foreign producer's (an id per message, say) would grow the counters without bound; such a
/// delivery is dead-lettered anyway, its real type named in the reason.
fn counted_as<T: Inbound>(type_name: &str) -> &str {
    if T::fingerprint(type_name).is_some() { type_name } else { crate::metrics::OTHER_TYPES }
}

/// Tells the layers of a delivery whose handling was dropped unfinished: [`middleware::Settled::Abandoned`].
struct Unfinished<'a> {
    layers: &'a Layers,
    before: &'a middleware::Delivery<'a>,
    started: tokio::time::Instant,
    /// How many layers' before-hooks saw the delivery.
    seen: usize,
    /// Cleared once the delivery's end is known and told.
    armed: bool,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let b = self.before;
        let mut handled = middleware::Handled {
            type_name: b.type_name,
            metric_type: b.metric_type,
            queue: b.queue,
            routing_key: b.routing_key,
            headers: b.headers,
            attempt: b.attempt,
            settled: middleware::Settled::Abandoned,
            failed: false,
            elapsed: self.started.elapsed(),
            seen: true,
        };
        self.layers.after_seen(self.seen, |layer, seen| {
            handled.seen = seen;
            layer.after_handle(&handled);
        });
    }
}

/// What became of a delivery, and whether it failed (see [`crate::middleware::Handled::failed`]).
pub(super) struct Ending {
    settled: Settling,
    failed: bool,
    /// When the handler ended (or the delivery was refused or found undecodable), before any retry or
    /// dead-letter went to the broker: what the layers hear as the handling's time. Read only with layers.
    ended: Option<tokio::time::Instant>,
}

/// [`crate::middleware::Settled`], owning its reason.
enum Settling {
    Acked,
    Retried(Cow<'static, str>),
    DeadLettered(Cow<'static, str>),
}

impl Ending {
    fn new(settled: Settling, failed: bool) -> Self {
        Ending { settled, failed, ended: None }
    }

    /// This ending, the handling having ended at `ended`.
    fn at(mut self, ended: Option<tokio::time::Instant>) -> Self {
        self.ended = ended;
        self
    }

    /// After retrying or dead-lettering for `reason`, as `fate` says.
    fn after(fate: Fate, reason: impl Into<Cow<'static, str>>, failed: bool) -> Self {
        let reason = reason.into();
        match fate {
            Fate::DeadLettered => Ending::new(Settling::DeadLettered(reason), failed),
            _ => Ending::new(Settling::Retried(reason), failed),
        }
    }
}

/// What became of one handler run, before settling the delivery.
pub(super) enum Verdict {
    /// The handler returned an outcome.
    Decided(Outcome),
    /// It failed, panicked or timed out: retried under the policy.
    Failed(String),
}

impl Worker {
    /// Handles one delivery; returns its acker when it is to be acknowledged (the caller batches acks), after
    /// settling it otherwise.
    pub(super) async fn process<T, F, Fut, O, E>(
        &self,
        delivery: Delivery,
        handler: &F,
        last: &mut LastType,
    ) -> Option<Acker>
    where
        T: Inbound,
        F: Fn(T, Context) -> Fut,
        Fut: Future<Output = std::result::Result<O, E>>,
        O: Into<Outcome>,
        E: Into<HandlerError>,
    {
        let properties = &delivery.properties;
        // A plain AMQP client may send no `type`: on a queue for one type, the message is read as that type.
        let type_name = properties.kind().filter(|kind| !kind.is_empty()).or(T::sole_type()).unwrap_or_default();
        let tracker = self.stats.delivered(counted_as::<T>(type_name), last);
        if let Some(seen) = properties.schema()
            && let Some(own) = T::fingerprint(type_name)
            && !own.is_empty()
            && seen != own
        {
            self.stats.schema_mismatch(type_name, seen, own);
        }
        let attempt = 1 + properties.header_i64(envelope::ATTEMPTS).unwrap_or(0).clamp(0, 1 << 20) as u32;
        let ending = if self.layers.get().is_none() {
            self.run(&delivery, handler, tracker, type_name, attempt).await
        } else {
            // Boxed: subscribers without layers carry no room for the layers' state.
            Box::pin(self.run_layered(&delivery, handler, tracker, type_name, attempt)).await
        };
        match ending.settled {
            Settling::Acked => Some(delivery.acker),
            _ => None,
        }
    }

    /// [`Worker::run`] between the layers' hooks: each may refuse the delivery, which is then dead-lettered
    /// with the reason, and each hears what became of it.
    async fn run_layered<T, F, Fut, O, E>(
        &self,
        delivery: &Delivery,
        handler: &F,
        tracker: Tracker<'_>,
        type_name: &str,
        attempt: u32,
    ) -> Ending
    where
        T: Inbound,
        F: Fn(T, Context) -> Fut,
        Fut: Future<Output = std::result::Result<O, E>>,
        O: Into<Outcome>,
        E: Into<HandlerError>,
    {
        let started = tokio::time::Instant::now();
        let headers = delivery.properties.headers().unwrap_or(&crate::headers::NO_HEADERS);
        let (queue, routing_key) = (self.queue.as_str(), &*delivery.routing_key);
        let shown = counted_as::<T>(type_name);
        let before = middleware::Delivery { type_name, metric_type: shown, queue, routing_key, headers, attempt };
        // Until what became of the delivery is known: a handler abandoned unfinished (a stop past its deadline)
        // drops this future here, and the layers still hear of it, so that what they count adds up.
        // Every layer saw it, unless one refuses it below.
        let seen = usize::MAX;
        let mut unfinished = Unfinished { layers: &self.layers, before: &before, started, seen, armed: true };
        let ending = match self.layers.before_counted(|layer| layer.before_handle(&before), middleware::Refusal::new) {
            Ok(()) => self.run(delivery, handler, tracker, type_name, attempt).await,
            Err((seen, layer, refusal)) => {
                unfinished.seen = seen;
                let refused_at = tokio::time::Instant::now();
                let reason = format!("refused by {layer}: {refusal}");
                self.dead_letter(delivery, &reason, attempt).await;
                tracker.ended(Fate::DeadLettered, true);
                Ending::new(Settling::DeadLettered(reason.into()), true).at(Some(refused_at))
            }
        };
        let settled = match &ending.settled {
            Settling::Acked => middleware::Settled::Acked,
            Settling::Retried(reason) => middleware::Settled::Retried { reason },
            Settling::DeadLettered(reason) => middleware::Settled::DeadLettered { reason },
        };
        let mut handled = middleware::Handled {
            type_name,
            metric_type: shown,
            queue,
            routing_key,
            headers,
            attempt,
            settled,
            failed: ending.failed,
            elapsed: ending.ended.unwrap_or_else(tokio::time::Instant::now).saturating_duration_since(started),
            seen: true,
        };
        unfinished.armed = false;
        self.layers.after_seen(unfinished.seen, |layer, seen| {
            handled.seen = seen;
            layer.after_handle(&handled);
        });
        ending
    }

    /// Decodes the delivery, runs the handler, and retries or dead-letters it when it does not succeed; an
    /// acknowledgement is left to the caller, who batches them.
    async fn run<T, F, Fut, O, E>(
        &self,
        delivery: &Delivery,
        handler: &F,
        mut tracker: Tracker<'_>,
        type_name: &str,
        attempt: u32,
    ) -> Ending
    where
        T: Inbound,
        F: Fn(T, Context) -> Fut,
        Fut: Future<Output = std::result::Result<O, E>>,
        O: Into<Outcome>,
        E: Into<HandlerError>,
    {
        let message = match delivery.message.decode::<T>(type_name, delivery.properties.format()) {
            Ok(message) => message,
            // Decoding will never succeed: dead-letter at once, no retries.
            Err(error) => {
                let ended = self.layers.get().map(|_| tokio::time::Instant::now());
                let reason = error.to_string();
                self.dead_letter(delivery, &reason, 1).await;
                tracker.ended(Fate::DeadLettered, true);
                return Ending::new(Settling::DeadLettered(reason.into()), true).at(ended);
            }
        };
        let (message_id, conversation_id) = delivery.properties.ids();
        let (trace, span) = trace::incoming_span(
            &trace::About {
                operation: trace::Operation::Process,
                destination: &self.queue,
                routing_key: &delivery.routing_key,
                message_id,
                conversation_id,
                rpc_method: None,
            },
            delivery.properties.headers(),
        );
        let context = Context::new(&self.context_bus, delivery, attempt, trace.clone());
        let run = async {
            // A handler may panic while making its future, not only while it runs: catch both.
            let future = match std::panic::catch_unwind(AssertUnwindSafe(|| handler(message, context))) {
                Ok(future) => future,
                Err(panic) => return Verdict::Failed(format!("handler panicked: {}", panic_message(&panic))),
            };
            match AssertUnwindSafe(future).catch_unwind().await {
                Ok(Ok(outcome)) => Verdict::Decided(outcome.into()),
                Ok(Err(error)) => Verdict::Failed(format!("handler failed: {}", error.into())),
                Err(panic) => Verdict::Failed(format!("handler panicked: {}", panic_message(&panic))),
            }
        };
        // What the handler publishes or calls continues its trace, and its events are in its span.
        let run = tracing::Instrument::instrument(trace::scope(trace, run), span.clone());
        tracker.start();
        let verdict = match self.handler_timeout {
            Some(limit) => tokio::time::timeout(limit, run)
                .await
                .unwrap_or_else(|_| Verdict::Failed(format!("handler timed out after {limit:?}"))),
            None => run.await,
        };
        tracker.stop();
        // Only with layers: a clock reading per message is a cost the in-memory transport measures.
        let ended = self.layers.get().map(|_| tokio::time::Instant::now());
        if let Verdict::Failed(reason) = &verdict {
            span.record("error.type", error_type(reason));
        }
        let ending = match verdict {
            Verdict::Decided(Outcome::Ack) => {
                tracker.ended(Fate::Processed, false);
                Ending::new(Settling::Acked, false)
            }
            Verdict::Decided(Outcome::Retry { after }) => {
                let after = retry_rung(after);
                const ASKED: &str = "the handler asked to retry";
                let fate = self.retry_or_dead_letter(delivery, attempt, after, ASKED).await;
                tracker.ended(fate, false);
                Ending::after(fate, ASKED, false)
            }
            Verdict::Decided(Outcome::DeadLetter { reason }) => {
                self.dead_letter(delivery, &reason, attempt).await;
                tracker.ended(Fate::DeadLettered, false);
                Ending::new(Settling::DeadLettered(reason.into()), false)
            }
            Verdict::Failed(reason) => {
                let after = self.retry.backoff(attempt);
                let fate = self.retry_or_dead_letter(delivery, attempt, after, &reason).await;
                tracker.ended(fate, true);
                Ending::after(fate, reason, true)
            }
        };
        ending.at(ended)
    }

    /// Retries through a delay queue while attempts remain, then dead-letters.
    async fn retry_or_dead_letter(&self, delivery: &Delivery, attempt: u32, after: Duration, reason: &str) -> Fate {
        if attempt >= self.retry.max_attempts {
            self.dead_letter(delivery, reason, attempt).await;
            return Fate::DeadLettered;
        }
        tracing::debug!(queue = %self.queue, attempt, ?after, reason, "retrying message");
        // `<queue>.retry.<ms>`: messages wait there for the TTL, then the broker dead-letters them back into the
        // queue through the default exchange. One queue per delay, so no message waits behind a longer one.
        let delay_ms = warren_topology::delay_ms(after);
        let retry_queue = warren_topology::retry_queue(&self.queue, delay_ms);
        let options = QueueSettings::retry_delay(&self.queue, delay_ms, self.temporary, self.quorum);
        let mut headers = self.failure_headers(delivery, reason);
        headers.insert(envelope::ATTEMPTS, attempt);
        let properties = delivery.properties.with_headers(headers);
        let sent = match self.bus.declare_queue(&retry_queue, options).await {
            Ok(()) => self.bus.publish_raw("", &retry_queue, delivery.body.clone(), properties).await,
            Err(error) => Err(error),
        };
        match sent {
            Ok(()) => {
                delivery.settle(Settle::Ack).await;
                Fate::Retried
            }
            Err(error) if error.is_transient() || matches!(error, Error::Closed) => {
                // Not lost: back to the queue at once, marked redelivered (or by the broker, the bus closing).
                tracing::warn!(queue = %self.queue, %error, "could not schedule a retry; requeueing");
                delivery.settle(Settle::Requeue).await;
                Fate::Retried
            }
            Err(error) => {
                // It never will be (a delay queue a verifying bus cannot find, one declared with other
                // arguments): requeued, the delivery would come back, fail and be requeued again, for ever, its
                // attempts never counted.
                let reason = format!("{reason}; its retry could not be scheduled: {error}");
                self.dead_letter(delivery, &reason, attempt).await;
                Fate::DeadLettered
            }
        }
    }

    /// Copies the delivery to `<queue>.dlq` with why, where from and how often it failed, then acknowledges it.
    /// If the copy cannot be confirmed, rejects it instead, so the broker dead-letters it (without the reason)
    /// rather than losing it.
    async fn dead_letter(&self, delivery: &Delivery, reason: &str, attempts: u32) {
        tracing::warn!(queue = %self.queue, reason, attempts, "dead-lettering message");
        let mut headers = self.failure_headers(delivery, reason);
        headers.insert(envelope::ATTEMPTS, attempts);
        let properties = delivery.properties.with_headers(headers);
        let dlq = warren_topology::dead_letter_queue(&self.queue);
        match self.bus.publish_raw("", &dlq, delivery.body.clone(), properties).await {
            Ok(()) => {
                delivery.settle(Settle::Ack).await;
            }
            Err(error) => {
                tracing::warn!(queue = %self.queue, %error, "could not copy to the dead-letter queue; rejecting");
                delivery.settle(Settle::Reject).await;
            }
        }
    }

    /// The delivery's headers plus the failure record. The original exchange and routing key, and the time of
    /// the first failure, are kept from the first failure on, across retry hops.
    fn failure_headers(&self, delivery: &Delivery, reason: &str) -> Headers {
        let old = delivery.properties.headers();
        let mut headers = old.cloned().unwrap_or_default();
        let now = HeaderValue::Timestamp(envelope::now_unix());
        if !headers.contains(envelope::DLQ_EXCHANGE) {
            headers.insert(envelope::DLQ_EXCHANGE, &*delivery.exchange);
            headers.insert(envelope::DLQ_ROUTING_KEY, &*delivery.routing_key);
        }
        if !headers.contains(envelope::FIRST_FAILED_AT) {
            headers.insert(envelope::FIRST_FAILED_AT, now.clone());
        }
        headers.insert(envelope::DLQ_FAILED_AT, now);
        headers.insert(envelope::DLQ_REASON, reason_safe(reason));
        headers.insert(envelope::DLQ_CONSUMER, self.group.as_str());
        headers.insert(envelope::DLQ_SERVICE, self.bus.config().service_name.as_str());
        headers
    }
}

/// A running subscriber's place in its bus's metrics, given up when its consume task ends or is aborted.
pub(super) struct Registered {
    pub(super) bus: Bus,
    pub(super) stats: Arc<crate::metrics::SubscriberStats>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.bus.inner.metrics.retire(&self.stats);
        self.bus.forget_subscriber_queues(&self.stats.queue);
    }
}

/// Header values are bounded: a huge error text must not make the dead-letter copy oversize.
pub(super) fn reason_safe(value: &str) -> &str {
    const MAX: usize = 4096;
    if value.len() <= MAX {
        return value;
    }
    let mut end = MAX;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

/// OpenTelemetry's `error.type` for a handler's failure: low-cardinality, unlike the reason.
fn error_type(reason: &str) -> &'static str {
    if reason.starts_with("handler panicked") {
        "panic"
    } else if reason.starts_with("handler timed out") {
        "timeout"
    } else {
        "handler_error"
    }
}

/// What a caught panic said, when it said it with a string.
pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}
