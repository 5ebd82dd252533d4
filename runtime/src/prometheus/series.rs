//! The series a delivery or a publish touches, looked up once per (type, queue) or type and kept: a delivery
//! then costs one read lock and two FxHash lookups of the names, where it cost four `Family` lookups, each a
//! SipHash of a label set built from freshly allocated strings (callgrind, W7o: about 4,000 instructions a
//! delivery, most of the layer's cost). Series are still created on first use, so what is exposed is unchanged.

use std::sync::{Arc, OnceLock, RwLock};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use rustc_hash::FxHashMap;

use super::{Consumer, ConsumerOutcome, Metrics, TypeLabel, TypeOutcome};

/// The `outcome` labels of a settled delivery, in the order [`ConsumerSeries::handled`] keeps them.
pub(super) const SETTLED: [&str; 5] = ["acked", "retried", "dead_lettered", "abandoned", "other"];
/// The `outcome` labels of a publish.
/// Every outcome `publish_outcome` names, `other` last (what an outcome not listed counts as).
pub(super) const PUBLISHED: [&str; 8] =
    ["ok", "unroutable", "nacked", "timed_out", "blocked", "refused", "cancelled", "other"];

/// One consumer's series: a message type on a queue.
pub(super) struct ConsumerSeries {
    labels: Consumer,
    pub(super) in_flight: Gauge,
    pub(super) handle_seconds: Histogram,
    handle_failed: OnceLock<Counter>,
    handled: [OnceLock<Counter>; SETTLED.len()],
}

impl ConsumerSeries {
    pub(super) fn handle_failed(&self, metrics: &Metrics) -> &Counter {
        self.handle_failed.get_or_init(|| metrics.handle_failed.get_or_create(&self.labels).clone())
    }

    pub(super) fn handled(&self, metrics: &Metrics, outcome: &'static str) -> &Counter {
        let index = SETTLED.iter().position(|o| *o == outcome).unwrap_or(SETTLED.len() - 1);
        self.handled[index].get_or_init(|| {
            let Consumer { r#type, queue } = self.labels.clone();
            metrics.handled.get_or_create(&ConsumerOutcome { r#type, queue, outcome: SETTLED[index] }).clone()
        })
    }
}

/// One published type's series.
pub(super) struct PublishSeries {
    r#type: String,
    pub(super) publish_seconds: Histogram,
    published: [OnceLock<Counter>; PUBLISHED.len()],
}

impl PublishSeries {
    pub(super) fn published(&self, metrics: &Metrics, outcome: &'static str) -> &Counter {
        let index = PUBLISHED.iter().position(|o| *o == outcome).unwrap_or(PUBLISHED.len() - 1);
        self.published[index].get_or_init(|| {
            let labels = TypeOutcome { r#type: self.r#type.clone(), outcome: PUBLISHED[index] };
            metrics.published.get_or_create(&labels).clone()
        })
    }
}

/// One type's consumer series, by queue.
type ByQueue = FxHashMap<Box<str>, Arc<ConsumerSeries>>;

/// The series looked up so far.
#[derive(Default)]
pub(super) struct Series {
    /// By type, then queue.
    consumers: RwLock<FxHashMap<Box<str>, ByQueue>>,
    publishes: RwLock<FxHashMap<Box<str>, Arc<PublishSeries>>>,
}

impl Series {
    /// The series of `type_name` on `queue`, created on first use.
    pub(super) fn consumer(&self, metrics: &Metrics, type_name: &str, queue: &str) -> Arc<ConsumerSeries> {
        let found = self.consumers.read().expect("series").get(type_name).and_then(|q| q.get(queue)).cloned();
        if let Some(series) = found {
            return series;
        }
        let labels = Consumer { r#type: type_name.to_owned(), queue: queue.to_owned() };
        let series = Arc::new(ConsumerSeries {
            in_flight: metrics.in_flight.get_or_create(&labels).clone(),
            handle_seconds: metrics.handle_seconds.get_or_create(&labels).clone(),
            handle_failed: OnceLock::new(),
            handled: Default::default(),
            labels,
        });
        let mut consumers = self.consumers.write().expect("series");
        let queues = consumers.entry(type_name.into()).or_default();
        Arc::clone(queues.entry(queue.into()).or_insert(series))
    }

    /// The series of published `type_name`, created on first use.
    pub(super) fn publish(&self, metrics: &Metrics, type_name: &str) -> Arc<PublishSeries> {
        if let Some(series) = self.publishes.read().expect("series").get(type_name) {
            return Arc::clone(series);
        }
        let series = Arc::new(PublishSeries {
            r#type: type_name.to_owned(),
            publish_seconds: metrics.publish_seconds.get_or_create(&TypeLabel { r#type: type_name.to_owned() }).clone(),
            published: Default::default(),
        });
        Arc::clone(self.publishes.write().expect("series").entry(type_name.into()).or_insert(series))
    }
}

impl std::fmt::Debug for Series {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Series").finish_non_exhaustive()
    }
}
