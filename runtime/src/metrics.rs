//! Metrics and history: what a bus published and what its subscribers did with what they received.
//!
//! Counting is a few relaxed atomic increments per message; a snapshot ([`crate::Bus::metrics`]) adds up
//! the counters and asks the broker how deep each subscriber's queue is.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustc_hash::FxHashMap;
use tokio::time::Instant;

/// The type a subscriber's delivery is counted under when the subscriber does not take its `type` (then it is
/// dead-lettered): one name for them all, so that the counters stay bounded whatever senders put there.
pub const OTHER_TYPES: &str = "(other types)";

/// Everything counted about one event type or one subscriber, as of a snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Counters {
    /// Messages published by this bus.
    pub published: u64,
    /// Deliveries received by subscribers (retries and redeliveries included).
    pub delivered: u64,
    /// Deliveries whose handler succeeded.
    pub processed: u64,
    /// Deliveries that failed: undecodable, or a handler error, panic or timeout.
    pub failed: u64,
    /// Failed deliveries scheduled for another attempt.
    pub retried: u64,
    /// Messages sent to a dead-letter queue.
    pub dead_lettered: u64,
    /// Deliveries whose handler was dropped unfinished (a stop or shutdown past its deadline): the broker
    /// delivers them again.
    pub abandoned: u64,
    /// Handlers running now.
    pub in_flight: u64,
    /// Mean handler time.
    pub processing_time_mean: Duration,
    /// 99th percentile handler time (to within about 19%: the histogram has four buckets per doubling).
    pub processing_time_p99: Duration,
    /// Processed messages per second since the bus (or subscriber) started.
    pub rate_per_second: f64,
}

/// One subscriber's metrics.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SubscriberMetrics {
    /// Its consumer group.
    pub group: String,
    /// Its queue.
    pub queue: String,
    /// Its counters (`published` is always 0 here).
    pub counters: Counters,
    /// Messages waiting in its queue, as the broker reports them; `None` if the broker could not be asked.
    pub queue_depth: Option<u64>,
    /// How long it has been running.
    pub uptime: Duration,
    /// Deliveries whose `x-warren-schema` fingerprint differed from the subscriber's own for their type: the
    /// sender was built from another version of the contract. They were still decoded (protobuf and JSON
    /// tolerate added and removed fields); a growing count says which services to regenerate. A Warren sender
    /// stamps its first message of each type, then the first in each second and one in 64, so this counts
    /// samples, not every message.
    pub schema_mismatches: u64,
    /// The foreign fingerprints seen, as `<type>@<fingerprint>`, sorted.
    pub foreign_schemas: Vec<String>,
}

/// A bus's metrics at one moment: what the trading bus's `get_performance_metrics` gave, typed.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Time since the bus was made.
    pub uptime: Duration,
    /// Per event type (full proto name), over this bus's publishers and all its subscribers.
    pub events: BTreeMap<String, Counters>,
    /// Per running subscriber, by queue: the workers of one group on this bus are added up. A subscriber
    /// leaves it when it stops; what it counted stays in `events`.
    pub subscribers: BTreeMap<String, SubscriberMetrics>,
    /// RPC requests this bus's servers refused for their `reply_to`: neither direct reply-to nor a
    /// server-named queue, nor a prefix the server allows ([`crate::ServerOptions::allow_reply_to`]).
    pub rpc_reply_to_refused: u64,
}

/// Latency histogram: bucket `i` holds durations around `2^(i/4)` nanoseconds.
const BUCKETS: usize = 4 * 40;

/// Counters of one event type at one subscriber. A delivery is in flight from `delivered` until one of its
/// fates (`processed`, `retried`, `dead_lettered`) is counted, so a delivery costs two counter updates.
pub(crate) struct Stats {
    delivered: AtomicU64,
    processed: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    abandoned: AtomicU64,
    time_total_ns: AtomicU64,
    timed: AtomicU64,
    histogram: [AtomicU64; BUCKETS],
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            delivered: AtomicU64::new(0),
            processed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            time_total_ns: AtomicU64::new(0),
            timed: AtomicU64::new(0),
            histogram: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

fn bucket(ns: u64) -> usize {
    if ns < 2 {
        return 0;
    }
    let log2 = 63 - ns.leading_zeros() as usize;
    // The two bits after the leading one pick the quarter within the doubling; below 4 ns there are no two
    // bits to read, so the whole doubling is one bucket (its last quarter).
    let quarter = if log2 >= 2 { ((ns >> (log2 - 2)) & 0b11) as usize } else { 3 };
    (log2 * 4 + quarter).min(BUCKETS - 1)
}

/// The upper bound of bucket `i`.
fn bucket_limit(i: usize) -> Duration {
    let (log2, quarter) = (i / 4, (i % 4) as u64);
    let base = 1u64 << log2;
    // Rounded up, so that the limit still bounds its bucket where a quarter is less than a nanosecond.
    Duration::from_nanos(base + (base * (quarter + 1)).div_ceil(4))
}

impl Stats {
    fn add(&self, into: &mut Counters) {
        // Fates first: `delivered` is counted before any fate, so read after them it is never behind.
        let (processed, retried, dead_lettered, abandoned) = (
            self.processed.load(Ordering::Relaxed),
            self.retried.load(Ordering::Relaxed),
            self.dead_lettered.load(Ordering::Relaxed),
            self.abandoned.load(Ordering::Relaxed),
        );
        let delivered = self.delivered.load(Ordering::Relaxed);
        into.delivered += delivered;
        into.processed += processed;
        into.failed += self.failed.load(Ordering::Relaxed);
        into.retried += retried;
        into.dead_lettered += dead_lettered;
        into.abandoned += abandoned;
        into.in_flight += delivered.saturating_sub(processed + retried + dead_lettered + abandoned);
    }

    /// Adds `other`'s counts to these.
    fn absorb(&self, other: &Stats) {
        let pairs = [
            (&self.delivered, &other.delivered),
            (&self.processed, &other.processed),
            (&self.failed, &other.failed),
            (&self.retried, &other.retried),
            (&self.dead_lettered, &other.dead_lettered),
            (&self.abandoned, &other.abandoned),
            (&self.time_total_ns, &other.time_total_ns),
            (&self.timed, &other.timed),
        ];
        for (into, from) in pairs.into_iter().chain(self.histogram.iter().zip(&other.histogram)) {
            into.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    fn times(&self) -> (u64, u64, [u64; BUCKETS]) {
        let histogram = std::array::from_fn(|i| self.histogram[i].load(Ordering::Relaxed));
        (self.time_total_ns.load(Ordering::Relaxed), self.timed.load(Ordering::Relaxed), histogram)
    }
}

/// Mean and p99 from summed times.
fn latency(total_ns: u64, count: u64, histogram: &[u64; BUCKETS]) -> (Duration, Duration) {
    if count == 0 {
        return (Duration::ZERO, Duration::ZERO);
    }
    let mean = Duration::from_nanos(total_ns / count);
    let rank = count - count / 100; // the smallest count covering 99 %
    let mut seen = 0;
    for (i, n) in histogram.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return (mean, bucket_limit(i));
        }
    }
    (mean, bucket_limit(BUCKETS - 1))
}

/// One subscriber's counters, per event type (its totals are their sums).
pub(crate) struct SubscriberStats {
    pub(crate) group: String,
    pub(crate) queue: String,
    started: Instant,
    by_type: RwLock<FxHashMap<String, Arc<Stats>>>,
    schema_mismatches: AtomicU64,
    foreign_schemas: Mutex<std::collections::BTreeSet<String>>,
}

/// What happened to one delivery, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    Processed,
    Retried,
    DeadLettered,
}

/// The most foreign schema fingerprints a subscriber remembers (and logs); more are only counted.
const MAX_FOREIGN_SCHEMAS: usize = 16;

impl SubscriberStats {
    fn new(group: &str, queue: &str) -> Self {
        SubscriberStats {
            group: group.to_owned(),
            queue: queue.to_owned(),
            started: Instant::now(),
            by_type: RwLock::default(),
            schema_mismatches: AtomicU64::new(0),
            foreign_schemas: Mutex::default(),
        }
    }

    /// Counts a delivery of `type_name` encoded with schema `seen` instead of `expected`; logs each foreign
    /// fingerprint once. The header is the sender's to fill: at most [`MAX_FOREIGN_SCHEMAS`] fingerprints (of at
    /// most 64 characters) are remembered, and past that only counted.
    pub(crate) fn schema_mismatch(&self, type_name: &str, seen: &str, expected: &str) {
        self.schema_mismatches.fetch_add(1, Ordering::Relaxed);
        let seen: String = seen.chars().take(64).collect();
        let first = {
            let mut foreign = self.foreign_schemas.lock().expect("metrics");
            foreign.len() < MAX_FOREIGN_SCHEMAS && foreign.insert(format!("{type_name}@{seen}"))
        };
        if first {
            tracing::warn!(
                queue = %self.queue,
                type_name,
                sender_schema = seen,
                own_schema = expected,
                "a sender uses another version of this message's schema; decoding anyway (regenerate the contracts on one side)"
            );
        }
    }

    fn of_type(&self, type_name: &str) -> Arc<Stats> {
        if let Some(stats) = self.by_type.read().expect("metrics").get(type_name) {
            return Arc::clone(stats);
        }
        Arc::clone(self.by_type.write().expect("metrics").entry(type_name.to_owned()).or_default())
    }

    /// Counts a delivery of `type_name` arriving; the returned tracker counts the rest. `last` remembers the
    /// previous delivery's type, so that a stream of one type finds its counters without a lookup.
    pub(crate) fn delivered<'a>(&self, type_name: &str, last: &'a mut LastType) -> Tracker<'a> {
        let stats = match last.0.take() {
            Some((name, stats)) if *name == *type_name => (name, stats),
            _ => (type_name.into(), self.of_type(type_name)),
        };
        let of_type = &last.0.insert(stats).1;
        let n = of_type.delivered.fetch_add(1, Ordering::Relaxed);
        Tracker { of_type, timed: n.is_multiple_of(TIME_EVERY), started: None, ended: false }
    }
}

/// The event type a subscriber's worker saw last, and its counters.
#[derive(Default)]
pub(crate) struct LastType(Option<(Box<str>, Arc<Stats>)>);

/// Follows one delivery through its handler.
pub(crate) struct Tracker<'a> {
    of_type: &'a Stats,
    /// Whether this run is one of the timed ones.
    timed: bool,
    started: Option<Instant>,
    /// Whether [`Tracker::ended`] counted its fate; dropped without, the handler was abandoned.
    ended: bool,
}

impl Drop for Tracker<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.of_type.abandoned.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One handler run in this many is timed: reading the clock twice per message is a measurable cost on the
/// in-memory transport, and a sample gives the same mean and p99.
const TIME_EVERY: u64 = 8;

impl Tracker<'_> {
    /// The handler starts.
    pub(crate) fn start(&mut self) {
        if self.timed {
            self.started = Some(Instant::now());
        }
    }

    /// The handler ended (in any way).
    pub(crate) fn stop(&mut self) {
        if let Some(started) = self.started.take() {
            let ns = started.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
            let s = self.of_type;
            s.time_total_ns.fetch_add(ns, Ordering::Relaxed);
            s.timed.fetch_add(1, Ordering::Relaxed);
            s.histogram[bucket(ns)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How the delivery ended; a failure is counted as such before it is retried or dead-lettered.
    pub(crate) fn ended(mut self, fate: Fate, failed: bool) {
        self.ended = true;
        self.stop();
        let s = self.of_type;
        if failed {
            s.failed.fetch_add(1, Ordering::Relaxed);
        }
        let counter = match fate {
            Fate::Processed => &s.processed,
            Fate::Retried => &s.retried,
            Fate::DeadLettered => &s.dead_lettered,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The most published messages a bus keeps per type ([`crate::BusConfig::history`]): each holds its body.
pub const MAX_HISTORY: usize = 100_000;

/// A recently published message, kept when history is on.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub(crate) body: Vec<u8>,
}

/// One event type's publishes from this bus (or an RPC method's requests, for [`Publishes::stamps_schema`] alone).
#[derive(Debug, Default)]
pub(crate) struct Publishes {
    /// Publishes begun, confirmed or not: numbers them for [`Publishes::stamps_schema`].
    begun: AtomicU64,
    /// Publishes that went through.
    done: AtomicU64,
    /// The Unix second of the last publish that carried the schema fingerprint.
    stamped_in: AtomicU64,
}

/// A bus stamps a type's schema fingerprint on at least one in this many of its messages of that type.
pub(crate) const SCHEMA_STAMP_EVERY: u64 = 64;

impl Publishes {
    /// Begins a publish at Unix second `now`; `true` when it is to carry the schema fingerprint: the first
    /// publish of the type (or RPC method), at least one begun in each second (concurrent publishers may both
    /// stamp), and one in [`SCHEMA_STAMP_EVERY`]. So a type sent now and then is stamped every time, and a
    /// subscriber learns of a sender built from another contract within a second or 64 messages, whichever side
    /// was rebuilt (and even if a stamped publish failed).
    ///
    /// Stamping every message instead costs each one a header table, which lapin builds and parses as a
    /// `BTreeMap` with owned strings (about a tenth of a fan-out delivery's client CPU).
    pub(crate) fn stamps_schema(&self, now: u64) -> bool {
        let n = self.begun.fetch_add(1, Ordering::Relaxed);
        let stamp = n.is_multiple_of(SCHEMA_STAMP_EVERY) || self.stamped_in.load(Ordering::Relaxed) != now;
        if stamp {
            self.stamped_in.store(now, Ordering::Relaxed);
        }
        stamp
    }
}

/// A bus's counters and history.
pub(crate) struct Metrics {
    started: Instant,
    published: RwLock<FxHashMap<&'static str, Arc<Publishes>>>,
    subscribers: Mutex<Vec<Arc<SubscriberStats>>>,
    /// Per event type, what subscribers that have stopped counted: kept for the per-type totals, while the
    /// subscribers themselves leave the snapshot.
    retired: Mutex<FxHashMap<String, Arc<Stats>>>,
    history_capacity: usize,
    history: Mutex<FxHashMap<&'static str, VecDeque<Recorded>>>,
    /// RPC requests refused for their `reply_to`.
    reply_to_refused: Arc<AtomicU64>,
}

impl Metrics {
    pub(crate) fn new(history_capacity: usize) -> Self {
        Metrics {
            started: Instant::now(),
            published: RwLock::default(),
            subscribers: Mutex::default(),
            retired: Mutex::default(),
            history_capacity: history_capacity.min(crate::MAX_HISTORY),
            history: Mutex::default(),
            reply_to_refused: Arc::default(),
        }
    }

    /// The counter of RPC requests refused for their `reply_to`, for servers to add to.
    pub(crate) fn reply_to_refused(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.reply_to_refused)
    }

    /// The publish counters of `type_name` (an event or task type, or an RPC method's path).
    pub(crate) fn publishes(&self, type_name: &'static str) -> Arc<Publishes> {
        if let Some(publishes) = self.published.read().expect("metrics").get(type_name) {
            return Arc::clone(publishes);
        }
        Arc::clone(self.published.write().expect("metrics").entry(type_name).or_default())
    }

    /// Counts a publish of `type_name` that went through, and keeps `body` when history is on.
    pub(crate) fn published(&self, type_name: &'static str, publishes: &Publishes, body: Option<Vec<u8>>) {
        publishes.done.fetch_add(1, Ordering::Relaxed);
        if let Some(body) = body.filter(|_| self.history_capacity > 0) {
            let mut history = self.history.lock().expect("history");
            let recent = history.entry(type_name).or_default();
            if recent.len() == self.history_capacity {
                recent.pop_front();
            }
            recent.push_back(Recorded { body });
        }
    }

    /// The recent messages of `type_name` this bus published, oldest first.
    pub(crate) fn history(&self, type_name: &str) -> Vec<Recorded> {
        self.history.lock().expect("history").get(type_name).map(|h| h.iter().cloned().collect()).unwrap_or_default()
    }

    pub(crate) fn history_enabled(&self) -> bool {
        self.history_capacity > 0
    }

    /// Registers a subscriber's counters, until [`Metrics::retire`].
    pub(crate) fn subscriber(&self, group: &str, queue: &str) -> Arc<SubscriberStats> {
        let stats = Arc::new(SubscriberStats::new(group, queue));
        self.subscribers.lock().expect("metrics").push(Arc::clone(&stats));
        stats
    }

    /// Takes a stopped subscriber out of the snapshot; its counts stay in the per-type totals.
    pub(crate) fn retire(&self, stats: &Arc<SubscriberStats>) {
        self.subscribers.lock().expect("metrics").retain(|s| !Arc::ptr_eq(s, stats));
        let mut retired = self.retired.lock().expect("metrics");
        for (type_name, of_type) in stats.by_type.read().expect("metrics").iter() {
            retired.entry(type_name.clone()).or_default().absorb(of_type);
        }
    }

    /// Handler successes for `type_name` over all of this bus's subscribers, stopped ones included.
    pub(crate) fn processed(&self, type_name: &str) -> u64 {
        let subscribers = self.subscribers.lock().expect("metrics").clone();
        let retired = self.retired.lock().expect("metrics").get(type_name).map(|s| s.processed.load(Ordering::Relaxed));
        subscribers
            .iter()
            .filter_map(|s| s.by_type.read().expect("metrics").get(type_name).cloned())
            .map(|stats| stats.processed.load(Ordering::Relaxed))
            .sum::<u64>()
            + retired.unwrap_or(0)
    }

    /// Adds everything up; `depth` answers queue depths.
    pub(crate) fn snapshot(&self, depths: &BTreeMap<String, Option<u64>>) -> MetricsSnapshot {
        let uptime = self.started.elapsed();
        let per_second = |n: u64, over: Duration| if over.is_zero() { 0.0 } else { n as f64 / over.as_secs_f64() };
        let mut events: BTreeMap<String, (Counters, u64, u64, [u64; BUCKETS])> = BTreeMap::new();
        for (type_name, count) in self.published.read().expect("metrics").iter() {
            let done = count.done.load(Ordering::Relaxed);
            if done == 0 {
                continue; // none went through: reported as before any publish
            }
            events
                .entry((*type_name).to_owned())
                .or_insert_with(|| (Counters::default(), 0, 0, [0; BUCKETS]))
                .0
                .published = done;
        }
        for (type_name, of_type) in self.retired.lock().expect("metrics").iter() {
            let entry = events.entry(type_name.clone()).or_insert_with(|| (Counters::default(), 0, 0, [0; BUCKETS]));
            of_type.add(&mut entry.0);
            let (total, count, histogram) = of_type.times();
            entry.1 += total;
            entry.2 += count;
            for (sum, n) in entry.3.iter_mut().zip(histogram) {
                *sum += n;
            }
        }
        // Subscribers of one queue (workers of one group on this bus) are reported together.
        let mut by_queue: BTreeMap<String, Vec<Arc<SubscriberStats>>> = BTreeMap::new();
        for stats in self.subscribers.lock().expect("metrics").iter() {
            by_queue.entry(stats.queue.clone()).or_default().push(Arc::clone(stats));
        }
        let mut subscribers = BTreeMap::new();
        for (queue, of_queue) in by_queue {
            let mut counters = Counters::default();
            let (mut time_total, mut timed, mut times) = (0, 0, [0; BUCKETS]);
            let by_type = of_queue.iter().flat_map(|stats| {
                let by_type = stats.by_type.read().expect("metrics");
                by_type.iter().map(|(name, of_type)| (name.clone(), Arc::clone(of_type))).collect::<Vec<_>>()
            });
            for (type_name, of_type) in by_type {
                let entry = events.entry(type_name).or_insert_with(|| (Counters::default(), 0, 0, [0; BUCKETS]));
                of_type.add(&mut entry.0);
                of_type.add(&mut counters);
                let (total, count, histogram) = of_type.times();
                entry.1 += total;
                entry.2 += count;
                time_total += total;
                timed += count;
                for ((sum, all), n) in entry.3.iter_mut().zip(times.iter_mut()).zip(histogram) {
                    *sum += n;
                    *all += n;
                }
            }
            (counters.processing_time_mean, counters.processing_time_p99) = latency(time_total, timed, &times);
            let running = of_queue.iter().map(|stats| stats.started.elapsed()).max().unwrap_or_default();
            counters.rate_per_second = per_second(counters.processed, running);
            let queue_depth = depths.get(&queue).copied().flatten();
            let foreign: std::collections::BTreeSet<String> = of_queue
                .iter()
                .flat_map(|stats| stats.foreign_schemas.lock().expect("metrics").iter().cloned().collect::<Vec<_>>())
                .collect();
            subscribers.insert(
                queue.clone(),
                SubscriberMetrics {
                    group: of_queue[0].group.clone(),
                    queue,
                    counters,
                    queue_depth,
                    uptime: running,
                    schema_mismatches: of_queue.iter().map(|s| s.schema_mismatches.load(Ordering::Relaxed)).sum(),
                    foreign_schemas: foreign.into_iter().collect(),
                },
            );
        }
        let events = events
            .into_iter()
            .map(|(name, (mut counters, total, count, histogram))| {
                (counters.processing_time_mean, counters.processing_time_p99) = latency(total, count, &histogram);
                counters.rate_per_second = per_second(counters.processed, uptime);
                (name, counters)
            })
            .collect();
        let rpc_reply_to_refused = self.reply_to_refused.load(Ordering::Relaxed);
        MetricsSnapshot { uptime, events, subscribers, rpc_reply_to_refused }
    }

    /// The queues of this bus's subscribers.
    pub(crate) fn queues(&self) -> Vec<String> {
        let queues: std::collections::BTreeSet<String> =
            self.subscribers.lock().expect("metrics").iter().map(|s| s.queue.clone()).collect();
        queues.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_grow_in_quarters_of_a_doubling_and_bound_their_values() {
        for ns in [2u64, 3, 5, 100, 1_000, 12_345, 1_000_000, 987_654_321] {
            let limit = bucket_limit(bucket(ns));
            assert!(limit >= Duration::from_nanos(ns), "{ns} ns over its bucket's limit {limit:?}");
            assert!(limit.as_nanos() as f64 <= ns as f64 * 1.26 + 2.0, "{ns} ns: limit {limit:?} too loose");
        }
    }

    #[test]
    fn foreign_schemas_are_remembered_up_to_a_bound_and_counted_past_it() {
        let stats = SubscriberStats::new("group", "queue");
        for n in 0..1_000 {
            stats.schema_mismatch("a.v1.T", &format!("{n}{}", "f".repeat(100)), "own");
        }
        assert_eq!(stats.schema_mismatches.load(Ordering::Relaxed), 1_000, "every one counted");
        let foreign = stats.foreign_schemas.lock().unwrap();
        assert_eq!(foreign.len(), MAX_FOREIGN_SCHEMAS, "a sender's header cannot grow the set");
        assert!(foreign.iter().all(|entry| entry.len() == "a.v1.T@".len() + 64), "cut to 64: {foreign:?}");
    }

    #[test]
    fn the_schema_goes_on_the_first_publish_the_first_of_each_second_and_one_in_64() {
        let publishes = Publishes::default();
        let stamped: Vec<u64> = (0..130).filter(|_| publishes.stamps_schema(1_000)).collect();
        assert_eq!(stamped.len(), 3, "publishes 0, 64 and 128 within one second");
        assert!(publishes.stamps_schema(1_001), "the first in a new second");
        assert!(!publishes.stamps_schema(1_001), "the second in that second");
        assert!(publishes.stamps_schema(1_000), "a clock stepped back is another second");
    }

    #[test]
    fn a_type_none_of_whose_publishes_went_through_is_not_reported() {
        let metrics = Metrics::new(0);
        let failing = metrics.publishes("pkg.Failing");
        assert!(failing.stamps_schema(1));
        let sent = metrics.publishes("pkg.Sent");
        metrics.published("pkg.Sent", &sent, None);
        let events = metrics.snapshot(&BTreeMap::new()).events;
        assert_eq!(events.keys().collect::<Vec<_>>(), ["pkg.Sent"]);
        assert_eq!(events["pkg.Sent"].published, 1);
    }

    #[test]
    fn a_delivery_is_in_flight_until_its_fate_and_subscriber_totals_sum_the_types() {
        let metrics = Metrics::new(0);
        let stats = metrics.subscriber("group", "queue");
        let mut last = LastType::default();
        // Types interleaved, so the remembered type is replaced each time.
        let a = stats.delivered("pkg.A", &mut last);
        a.ended(Fate::Processed, false);
        let b = stats.delivered("pkg.B", &mut last);
        b.ended(Fate::Retried, true);
        let a = stats.delivered("pkg.A", &mut last);
        a.ended(Fate::DeadLettered, true);
        let pending = stats.delivered("pkg.A", &mut last);
        let snapshot = metrics.snapshot(&BTreeMap::new());
        let of = |name: &str| {
            let c = &snapshot.events[name];
            (c.delivered, c.processed, c.failed, c.retried, c.dead_lettered, c.in_flight)
        };
        assert_eq!(of("pkg.A"), (3, 1, 1, 0, 1, 1));
        assert_eq!(of("pkg.B"), (1, 0, 1, 1, 0, 0));
        let total = &snapshot.subscribers["queue"].counters;
        assert_eq!(
            (total.delivered, total.processed, total.failed, total.retried, total.dead_lettered, total.in_flight),
            (4, 1, 2, 1, 1, 1)
        );
        pending.ended(Fate::Processed, false);
        assert_eq!(metrics.snapshot(&BTreeMap::new()).subscribers["queue"].counters.in_flight, 0);
    }

    #[test]
    fn workers_of_one_queue_add_up_and_a_stopped_one_leaves_the_snapshot_but_not_the_totals() {
        let metrics = Metrics::new(0);
        let (one, two) = (metrics.subscriber("billing", "billing.q"), metrics.subscriber("billing", "billing.q"));
        let mut last = LastType::default();
        one.delivered("pkg.A", &mut last).ended(Fate::Processed, false);
        let mut last = LastType::default();
        two.delivered("pkg.A", &mut last).ended(Fate::Processed, false);
        two.delivered("pkg.A", &mut last).ended(Fate::Processed, false);
        let snapshot = metrics.snapshot(&BTreeMap::new());
        assert_eq!(snapshot.subscribers["billing.q"].counters.processed, 3, "both workers counted");
        assert_eq!(metrics.queues(), ["billing.q"]);

        metrics.retire(&one);
        metrics.retire(&two);
        let snapshot = metrics.snapshot(&BTreeMap::new());
        assert!(snapshot.subscribers.is_empty(), "{:?}", snapshot.subscribers);
        assert_eq!(snapshot.events["pkg.A"].processed, 3, "the per-type totals keep what they counted");
        assert_eq!(metrics.processed("pkg.A"), 3);
        assert!(metrics.queues().is_empty());
    }

    #[test]
    fn p99_ignores_the_slowest_percent() {
        let mut histogram = [0; BUCKETS];
        histogram[bucket(1_000)] = 99;
        histogram[bucket(1_000_000)] = 1;
        let (mean, p99) = latency(99 * 1_000 + 1_000_000, 100, &histogram);
        assert_eq!(mean, Duration::from_nanos(10_990));
        assert!(p99 < Duration::from_micros(2), "{p99:?}");
    }
}
