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

use crate::backoff::Backoff;
use crate::bus::Bus;
use crate::error::{Later, Result};
use crate::transport::{ConsumeOn, Consumer, Delivery};

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
            // Under the watch's write lock, before its waiters are woken: whoever is woken sees the flag, and
            // whoever sees the flag reads the deadline (its read waits for this write).
            self.stopped.store(true, Ordering::Release);
            earlier
        });
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
    consumers: Mutex<Vec<Registered>>,
}

/// A running consumer: how to stop it, whether it has finished, and its task, to abort past the deadline.
struct Registered {
    stop: Stop,
    finished: watch::Receiver<bool>,
    task: tokio::task::AbortHandle,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").finish_non_exhaustive()
    }
}

impl Running {
    /// Starts a consumer's task with `start`, which gets the flag the task sets to `true` once it has finished.
    pub(crate) fn run(
        &self,
        stop: &Stop,
        start: impl FnOnce(watch::Sender<bool>) -> tokio::task::JoinHandle<()>,
    ) -> tokio::task::JoinHandle<()> {
        let (done, finished) = watch::channel(false);
        let task = start(done);
        let mut consumers = self.consumers.lock().expect("running consumers");
        // Finished or aborted: nothing left to stop.
        consumers.retain(|consumer| !consumer.task.is_finished());
        consumers.push(Registered { stop: stop.clone(), finished, task: task.abort_handle() });
        task
    }

    /// Stops every consumer, abandoning the handlers still running at `deadline`, and waits, until `wait_until`
    /// (not before `deadline`), for them to settle what they hold and cancel. A consumer that has not finished
    /// by then (one running its handler in its own task, as one at a time does, or still cancelling) is
    /// aborted: its messages go back to the queue with its channel.
    pub(crate) async fn stop_all(&self, deadline: Instant, wait_until: Instant) {
        let mut consumers = std::mem::take(&mut *self.consumers.lock().expect("running consumers"));
        for consumer in &consumers {
            consumer.stop.stop(deadline);
        }
        let remaining = wait_until.max(deadline).saturating_duration_since(Instant::now());
        let wait_all = async {
            for consumer in &mut consumers {
                let _ = consumer.finished.wait_for(|done| *done).await;
            }
        };
        let _ = tokio::time::timeout(remaining, wait_all).await;
        for consumer in &consumers {
            consumer.task.abort();
        }
    }
}

/// The tasks one consumer runs its messages in, when it runs several at once: aborted together when dropped,
/// so that a consumer stopped past its deadline leaves no handler running (with its bus) behind it.
///
/// A list of abort handles, purged of finished tasks whenever it reaches twice the consumer's concurrency: about
/// two atomic loads a task at full concurrency. (A `JoinSet` takes a lock and a list node per task; callgrind on
/// W6 put it at 1,360 instructions a call against this list's 900, most of either within what inlining moves
/// between two binaries.)
pub(crate) struct Handlers {
    running: Vec<tokio::task::JoinHandle<()>>,
    /// At most this many run at once (the consumer's semaphore keeps to it).
    concurrency: usize,
}

impl Handlers {
    pub(crate) fn new(concurrency: usize) -> Handlers {
        Handlers { running: Vec::with_capacity(2 * concurrency), concurrency }
    }

    /// Runs `task` in a task of its own, aborted with the others when `self` is dropped.
    pub(crate) fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        if self.running.len() >= 2 * self.concurrency {
            self.running.retain(|task| !task.is_finished());
        }
        self.running.push(tokio::spawn(task));
    }

    /// Aborts the handlers still running and waits (a second at most) until each is dropped, so that what
    /// dropping one does (counting it abandoned, telling the layers) has happened when this returns.
    pub(crate) async fn abort_all(mut self) {
        let running = std::mem::take(&mut self.running);
        for task in &running {
            task.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), futures_util::future::join_all(running)).await;
    }
}

impl Drop for Handlers {
    fn drop(&mut self) {
        for task in &self.running {
            task.abort();
        }
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
    /// Which connection it consumes on.
    on: ConsumeOn,
    current: Option<Consumer>,
    stop: StopSignal,
    /// The transport's reconnections; a consumer from an earlier generation is dead.
    generations: Option<watch::Receiver<u64>>,
    /// Why the current consumer's stream ended, when [`Feed::next_within`] saw it end.
    ended: Option<String>,
    /// What ends a wait of [`Feed::next_within`], made at the first.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Waits between failed attempts to consume again: kept across calls, so that a caller waiting in short
    /// slices (`next_within`, `QueueReader::next_within`) does not start it over at its shortest each time.
    backoff: Backoff,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed").field("queue", &self.queue).finish_non_exhaustive()
    }
}

impl Feed {
    /// Runs `setup` and starts consuming `queue` on connection `on` (see [`ConsumeOn`]); errors here are the
    /// caller's (a subscription that cannot start fails loudly), later ones are retried.
    pub(crate) async fn open(
        bus: &Bus,
        queue: &str,
        prefetch: u16,
        tag_prefix: &str,
        setup: Setup,
        stop: StopSignal,
        on: ConsumeOn,
    ) -> Result<Feed> {
        let mut feed = Feed {
            bus: bus.clone(),
            queue: queue.to_owned(),
            prefetch,
            tag_prefix: tag_prefix.to_owned(),
            setup,
            on,
            current: None,
            stop,
            generations: bus.inner.transport.generations(),
            ended: None,
            timer: None,
            backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(5)),
        };
        feed.current = Some(feed.subscribe().await?);
        Ok(feed)
    }

    async fn subscribe(&self) -> Result<Consumer> {
        (self.setup)(self.bus.clone()).await?;
        self.bus
            .inner
            .transport
            .consume(&self.queue, self.prefetch, crate::transport::consumer_tag(&self.tag_prefix), self.on)
            .await
    }

    /// A delivery that is ready now, without waiting. An ended stream is recorded, for [`Feed::next`] to
    /// handle: lapin says a consumer ended (the broker cancelled it, its queue deleted) only once, and a
    /// stream polled again after that waits forever.
    pub(crate) fn ready(&mut self) -> Option<Delivery> {
        if self.ended.is_some() {
            return None;
        }
        let next = self.current.as_mut()?.next().now_or_never()?;
        self.delivery_or_end(next)
    }

    /// The delivery the consumer's stream gave, or `None` with why the stream ended recorded.
    fn delivery_or_end(&mut self, next: Option<Result<Delivery>>) -> Option<Delivery> {
        match next {
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

    /// The current consumer's next delivery, if one arrives within `within`. Waits on nothing else: an
    /// ended stream is left for [`Feed::next`] to handle.
    ///
    /// A consumer that keeps up with the broker calls this for one delivery in four or so (W7: 51,000 times for
    /// 200,000 deliveries), so the feed keeps one timer and moves its deadline: a timer made and dropped per
    /// wait costs about 900 instructions, two locks of tokio's timer wheel and a clone of the runtime's handle
    /// shared by every thread. Moving a deadline that has not passed takes none of the wheel's locks (tokio
    /// extends it in place).
    pub(crate) async fn next_within(&mut self, within: Duration) -> Option<Delivery> {
        if self.ended.is_some() {
            return None;
        }
        let consumer = self.current.as_mut()?;
        let until = tokio::time::Instant::now().later(within);
        let timer = match &mut self.timer {
            Some(timer) => {
                timer.as_mut().reset(until);
                timer
            }
            None => self.timer.insert(Box::pin(tokio::time::sleep_until(until))),
        };
        let next = std::future::poll_fn(|cx| match consumer.poll_next_unpin(cx) {
            Poll::Ready(next) => Poll::Ready(Some(next)),
            Poll::Pending => timer.as_mut().poll(cx).map(|()| None),
        });
        let next = next.await?;
        self.delivery_or_end(next)
    }

    /// The next delivery; `None` once stopped.
    pub(crate) async fn next(&mut self) -> Option<Delivery> {
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
                    self.backoff.reset();
                }
                Err(error) => {
                    tracing::debug!(queue = %self.queue, %error, "cannot consume yet; retrying");
                    let wait = self.backoff.next_wait();
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = self.stop.stopped() => return None,
                    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{Publish, QueueSettings};

    /// Finished tasks are let go of, so a long-running consumer keeps at most twice its concurrency of handles;
    /// dropping the list aborts those still running.
    #[tokio::test]
    async fn handlers_keep_few_handles_and_abort_on_drop() {
        let mut handlers = Handlers::new(4);
        for _ in 0..100 {
            handlers.spawn(async {});
            tokio::task::yield_now().await; // the task runs and finishes
        }
        assert!(handlers.running.len() <= 8, "{} handles kept", handlers.running.len());
        let (alive, mut gone) = tokio::sync::mpsc::unbounded_channel::<()>();
        handlers.spawn(async move {
            let _alive = alive;
            std::future::pending::<()>().await;
        });
        tokio::task::yield_now().await;
        drop(handlers);
        assert_eq!(gone.recv().await, None, "the running task was aborted, dropping what it held");
    }

    /// A consumer whose task finished, or was aborted, is no longer kept for shutdown.
    #[tokio::test]
    async fn running_forgets_consumers_that_finished_or_were_aborted() {
        let running = Running::default();
        let stop = Stop::new().0;
        let finished = running.run(&stop, |done| tokio::spawn(async move { done.send(true).unwrap() }));
        finished.await.unwrap();
        let aborted = running.run(&stop, |_| tokio::spawn(std::future::pending()));
        aborted.abort();
        let _ = aborted.await;
        let _alive = running.run(&stop, |_| tokio::spawn(std::future::pending()));
        assert_eq!(running.consumers.lock().unwrap().len(), 1, "only the running one is kept");
    }

    async fn feed(bus: &Bus) -> Feed {
        let setup: Setup = Arc::new(|bus: Bus| {
            Box::pin(async move { bus.inner.transport.declare_queue("q", &QueueSettings::default()).await })
        });
        let (_, signal) = Stop::new();
        Feed::open(bus, "q", 10, "test", setup, signal, ConsumeOn::Consuming).await.expect("the feed opens")
    }

    async fn publish(bus: &Bus) {
        let to = Publish { exchange: "", routing_key: "q", mandatory: true, confirm: false };
        let properties = crate::MessageProperties::default().into();
        bus.inner.transport.publish(to, b"x".to_vec(), properties).await.expect("published");
    }

    /// The feed keeps one timer across waits: a wait that begins soon after another ended with a delivery
    /// still lasts its whole span, not until the earlier wait's deadline.
    #[tokio::test(start_paused = true)]
    async fn each_wait_lasts_its_whole_span() {
        let bus = Bus::in_memory();
        let mut feed = feed(&bus).await;
        let within = Duration::from_millis(10);
        publish(&bus).await;
        assert!(feed.next_within(within).await.is_some(), "a waiting delivery comes at once");
        tokio::time::sleep(Duration::from_millis(6)).await;
        let began = tokio::time::Instant::now();
        assert!(feed.next_within(within).await.is_none(), "nothing else was published");
        assert_eq!(began.elapsed(), within, "the wait ended at its own deadline, not the first wait's");
        // Once a wait has ended at its deadline, the next one waits again, and a delivery ends it.
        let publisher = tokio::spawn({
            let bus = bus.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(3)).await;
                publish(&bus).await;
            }
        });
        let began = tokio::time::Instant::now();
        assert!(feed.next_within(within).await.is_some(), "the delivery published during the wait");
        assert_eq!(began.elapsed(), Duration::from_millis(3));
        publisher.await.expect("published");
    }
}
