//! A consumer that outlives its channel, and the stop signal shared by everything that consumes.
//!
//! A consumer's stream ends when the connection is lost, the queue is deleted, or the broker cancels it. A
//! [`Feed`] then declares its queue again (topology replay may not have run yet, and a deleted queue needs
//! it anyway) and consumes again, with backoff, until it is stopped. Subscribers and RPC servers read their
//! deliveries through one.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use tokio::sync::watch;

use crate::bus::Bus;
use crate::error::Result;
use crate::transport::{Consumer, Delivery};

/// Declares what a feed consumes from: the queue, its dead-letter queue, its bindings.
pub(crate) type Setup = Arc<dyn Fn(Bus) -> Pin<Box<dyn Future<Output = Result<()>> + Send>> + Send + Sync>;

/// Tells a consumer to stop; carries the deadline its running handlers get.
#[derive(Debug, Clone)]
pub(crate) struct Stop {
    sender: watch::Sender<Option<Instant>>,
    stopped: Arc<AtomicBool>,
}

/// The consumer's side of a [`Stop`].
#[derive(Debug, Clone)]
pub(crate) struct StopSignal {
    receiver: watch::Receiver<Option<Instant>>,
    /// Set once the deadline is: a consumer asks twice per delivery, and one load is cheaper than the watch's
    /// read lock (perf, W7: the read lock was 0.4 % of the client's CPU samples).
    stopped: Arc<AtomicBool>,
}

impl Stop {
    pub(crate) fn new() -> (Stop, StopSignal) {
        let (sender, receiver) = watch::channel(None);
        let stopped = Arc::new(AtomicBool::new(false));
        (Stop { sender, stopped: Arc::clone(&stopped) }, StopSignal { receiver, stopped })
    }

    /// Stops the consumer; handlers still running may finish until `deadline`.
    pub(crate) fn stop(&self, deadline: Instant) {
        self.sender.send_if_modified(|current| {
            let earlier = current.is_none_or(|at| deadline < at);
            if earlier {
                *current = Some(deadline);
            }
            earlier
        });
        // After the deadline is in the watch: whoever sees the flag finds it there.
        self.stopped.store(true, Ordering::Release);
    }
}

impl StopSignal {
    /// The deadline, once stopped.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        if !self.stopped.load(Ordering::Acquire) {
            return None;
        }
        *self.receiver.borrow()
    }

    /// Resolves when stopped.
    pub(crate) async fn stopped(&mut self) {
        let _ = self.receiver.wait_for(Option::is_some).await;
    }
}

/// The consumers running on a bus, so that shutdown can stop them all and wait for them.
#[derive(Default)]
pub(crate) struct Running {
    consumers: Mutex<Vec<(Stop, watch::Receiver<bool>)>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").finish_non_exhaustive()
    }
}

impl Running {
    /// Registers a consumer; it flips the returned flag to `true` when it has finished.
    pub(crate) fn register(&self, stop: &Stop) -> watch::Sender<bool> {
        let (done, finished) = watch::channel(false);
        let mut consumers = self.consumers.lock().expect("running consumers");
        consumers.retain(|(_, finished)| !*finished.borrow());
        consumers.push((stop.clone(), finished));
        done
    }

    /// Stops every consumer and waits, until `deadline`, for them to settle what they hold.
    pub(crate) async fn stop_all(&self, deadline: Instant) {
        let consumers = std::mem::take(&mut *self.consumers.lock().expect("running consumers"));
        for (stop, _) in &consumers {
            stop.stop(deadline);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let wait_all = async {
            for (_, mut finished) in consumers {
                let _ = finished.wait_for(|done| *done).await;
            }
        };
        let _ = tokio::time::timeout(remaining, wait_all).await;
    }
}

/// Why a consumer whose stream simply ended is consumed again.
const CANCELLED: &str = "the broker cancelled the consumer (queue deleted, or connection lost)";

/// Deliveries from one queue, consumed again whenever the broker ends the consumer, until stopped.
pub(crate) struct Feed {
    bus: Bus,
    queue: String,
    prefetch: u16,
    tag_prefix: String,
    setup: Setup,
    current: Option<Consumer>,
    stop: StopSignal,
    /// The transport's reconnections; a consumer from an earlier generation is dead.
    generations: Option<watch::Receiver<u64>>,
    /// Why the current consumer's stream ended, when [`Feed::next_within`] saw it end.
    ended: Option<String>,
    /// What ends a wait of [`Feed::next_within`].
    timer: WaitTimer,
}

/// One timer for all of a feed's short waits, re-armed only when it fires too early for the current one.
struct WaitTimer {
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// Set to a deadline not yet seen to pass (and at or before the current wait's end, while one waits).
    armed: bool,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed").field("queue", &self.queue).finish_non_exhaustive()
    }
}

impl Feed {
    /// Runs `setup` and starts consuming `queue`; errors here are the caller's (a subscription that cannot
    /// start fails loudly), later ones are retried.
    pub(crate) async fn open(
        bus: &Bus,
        queue: &str,
        prefetch: u16,
        tag_prefix: &str,
        setup: Setup,
        stop: StopSignal,
    ) -> Result<Feed> {
        let mut feed = Feed {
            bus: bus.clone(),
            queue: queue.to_owned(),
            prefetch,
            tag_prefix: tag_prefix.to_owned(),
            setup,
            current: None,
            stop,
            generations: bus.inner.transport.generations(),
            ended: None,
            timer: WaitTimer { sleep: Box::pin(tokio::time::sleep(Duration::ZERO)), armed: false },
        };
        feed.current = Some(feed.subscribe().await?);
        Ok(feed)
    }

    async fn subscribe(&self) -> Result<Consumer> {
        (self.setup)(self.bus.clone()).await?;
        self.bus
            .inner
            .transport
            .consume(&self.queue, self.prefetch, crate::transport::consumer_tag(&self.tag_prefix))
            .await
    }

    /// A delivery that is ready now, without waiting.
    pub(crate) fn ready(&mut self) -> Option<Delivery> {
        match self.current.as_mut()?.next().now_or_never()? {
            Some(Ok(delivery)) => Some(delivery),
            _ => None, // an ended stream is noticed (and handled) by `next`
        }
    }

    /// The current consumer's next delivery, if one arrives within `within`. Waits on nothing else: an
    /// ended stream is left for [`Feed::next`] to handle.
    ///
    /// A consumer that keeps up with the broker calls this for one delivery in four or so (W7: 51,000 times for
    /// 200,000 deliveries), so the feed keeps one timer and re-arms it only when it fires before the current
    /// wait's end: a timer made and dropped per wait costs about 900 instructions, two locks of tokio's timer
    /// wheel and a clone of the runtime's handle shared by every thread.
    pub(crate) async fn next_within(&mut self, within: Duration) -> Option<Delivery> {
        if self.ended.is_some() {
            return None;
        }
        let consumer = self.current.as_mut()?;
        let until = tokio::time::Instant::now() + within;
        let timer = &mut self.timer;
        if !timer.armed {
            timer.sleep.as_mut().reset(until);
            timer.armed = true;
        }
        // Armed by an earlier wait, the timer fires at or before `until`; when it fires before, the wait goes on.
        let next = std::future::poll_fn(|cx| {
            if let Poll::Ready(next) = consumer.poll_next_unpin(cx) {
                return Poll::Ready(Some(next));
            }
            while timer.sleep.as_mut().poll(cx).is_ready() {
                if timer.sleep.deadline() >= until {
                    timer.armed = false;
                    return Poll::Ready(None);
                }
                timer.sleep.as_mut().reset(until);
            }
            Poll::Pending
        });
        match next.await? {
            Some(Ok(delivery)) => Some(delivery),
            Some(Err(error)) => {
                self.ended = Some(error.to_string());
                None
            }
            None => {
                self.ended = Some(CANCELLED.to_owned());
                None
            }
        }
    }

    /// The next delivery; `None` once stopped.
    pub(crate) async fn next(&mut self) -> Option<Delivery> {
        let mut backoff = Duration::from_millis(50);
        loop {
            if self.stop.deadline().is_some() {
                return None;
            }
            if let Some(reason) = self.ended.take() {
                tracing::warn!(queue = %self.queue, %reason, "consumer ended; consuming again");
                self.discard();
            }
            if let Some(consumer) = self.current.as_mut() {
                // Only a link newer than the consumer's own ends it: the consumer may have been opened on the
                // new link already (after its stream failed), and one that is alive must not be abandoned.
                let opened_on = consumer.generation;
                let reconnected = async {
                    match self.generations.as_mut() {
                        Some(generations) => {
                            if generations.wait_for(|current| *current > opened_on).await.is_err() {
                                std::future::pending::<()>().await;
                            }
                        }
                        None => std::future::pending().await,
                    }
                };
                let ended = tokio::select! {
                    next = consumer.next() => match next {
                        Some(Ok(delivery)) => return Some(delivery),
                        Some(Err(error)) => error.to_string(),
                        None => CANCELLED.to_owned(),
                    },
                    () = reconnected => "the connection was replaced".to_owned(),
                    () = self.stop.stopped() => return None,
                };
                tracing::warn!(queue = %self.queue, reason = %ended, "consumer ended; consuming again");
                self.discard();
            }
            match self.subscribe().await {
                Ok(consumer) => {
                    tracing::info!(queue = %self.queue, "consuming again");
                    self.current = Some(consumer);
                    backoff = Duration::from_millis(50);
                }
                Err(error) => {
                    tracing::debug!(queue = %self.queue, %error, "cannot consume yet; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = self.stop.stopped() => return None,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Lets go of the current consumer. Its channel is closed in the background, in case it is still open:
    /// a consumer left open on a live channel would keep up to `prefetch` deliveries from everyone.
    fn discard(&mut self) {
        if let Some(consumer) = self.current.take() {
            let timeout = self.bus.config().operation_timeout;
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { consumer.cancel.cancel(&consumer.tag, timeout).await });
            }
        }
    }

    /// Cancels the consumer: what it holds unacknowledged goes back to the queue.
    pub(crate) async fn cancel(&mut self) {
        if let Some(consumer) = self.current.take() {
            consumer.cancel.cancel(&consumer.tag, self.bus.config().operation_timeout).await;
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        // Dropped without `cancel` (the consuming task was aborted): close the channel anyway, so the broker
        // requeues what this consumer held.
        self.discard();
    }
}
