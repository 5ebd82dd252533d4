//! Measuring: rounds alternated between the two sides, medians, latency percentiles, client CPU.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// What one run of one side measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Run {
    /// Wall time of the timed section.
    pub(crate) elapsed: Duration,
    /// Messages (or calls) in it.
    pub(crate) messages: u64,
    /// Process CPU time (user + system) spent in it.
    pub(crate) cpu: Duration,
    /// Context switches of the process's threads in it (see [`context_switches`]).
    pub(crate) switches: u64,
    /// Latency percentiles, for latency workloads: p50, p99, p99.9.
    pub(crate) latency: Option<[Duration; 3]>,
}

impl Run {
    pub(crate) fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }

    pub(crate) fn cpu_per_message(&self) -> Duration {
        self.cpu / self.messages.max(1) as u32
    }

    pub(crate) fn switches_per_message(&self) -> f64 {
        self.switches as f64 / self.messages.max(1) as f64
    }
}

/// Process CPU time so far (user + system, every thread, to the nanosecond): `CLOCK_PROCESS_CPUTIME_ID`.
/// `/proc/self/stat` and `getrusage` count the same time, but the first only in 10 ms ticks, which made a
/// per-message figure of a 500-call run jump by 20 µs.
pub(crate) fn cpu_time() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Context switches so far, voluntary and not, of the threads of this process that are alive, from
/// `/proc/self/task/*/status` (`getrusage` would count exited threads too, but needs `unsafe`). A client that
/// wakes lapin's I/O thread once more per publish pays for it here rather than in instructions; the threads
/// that do that live through a timed section, so the count of one is the difference of two readings. Zero
/// where `/proc` is not mounted.
pub(crate) fn context_switches() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    let count = |status: String| -> u64 {
        status
            .lines()
            .filter_map(|line| {
                line.strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            })
            .filter_map(|value| value.trim().parse::<u64>().ok())
            .sum()
    };
    tasks.flatten().filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok()).map(count).sum()
}

/// Times `body`, which handles `messages` messages, with its CPU and context switches.
pub(crate) async fn timed<F: Future<Output = ()>>(messages: u64, body: F) -> Run {
    let (cpu, switches, started) = (cpu_time(), context_switches(), Instant::now());
    body.await;
    let elapsed = started.elapsed();
    let (cpu, switches) = (cpu_time().saturating_sub(cpu), context_switches().saturating_sub(switches));
    Run { elapsed, messages, cpu, switches, latency: None }
}

/// Latency percentiles of `samples`.
pub(crate) fn percentiles(samples: &mut [Duration]) -> [Duration; 3] {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    [at(0.50), at(0.99), at(0.999)]
}

/// The run with the median rate (or median p50 latency, for latency workloads).
pub(crate) fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| match (a.latency, b.latency) {
        (Some(x), Some(y)) => x[0].cmp(&y[0]),
        _ => a.rate().total_cmp(&b.rate()),
    });
    runs[runs.len() / 2]
}

/// Groups digits by thousands.
pub(crate) fn thousands(value: f64) -> String {
    let digits = format!("{value:.0}");
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A count alone on its cache lines: the counters of a group are allocated one after another, and two sharing a
/// line would make their subscribers' threads contend for it.
#[derive(Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

/// Counts handled messages and wakes the benchmark when `target` is reached (by every counter of its group).
#[derive(Clone)]
pub(crate) struct Counter {
    seen: Arc<Padded>,
    pub(crate) done: Arc<Notify>,
    target: u64,
    /// The counters of the group still short of their target.
    short: Arc<AtomicU64>,
}

impl Counter {
    pub(crate) fn new(target: u64) -> Self {
        Counter::group(target, 1).pop().expect("one counter")
    }

    /// `n` counters, one per subscriber, each to `target`, sharing one `done`, notified once all of them got
    /// there. Each subscriber counts on its own, as raw lapin's consumers do: one counter shared by handlers on
    /// both threads would cost every delivery a contended atomic that raw lapin's side does not pay.
    pub(crate) fn group(target: u64, n: usize) -> Vec<Counter> {
        let (done, short) = (Arc::new(Notify::new()), Arc::new(AtomicU64::new(n as u64)));
        (0..n)
            .map(|_| Counter { seen: Arc::default(), done: Arc::clone(&done), target, short: Arc::clone(&short) })
            .collect()
    }

    /// Waits (up to 10 s, or panics) until `count` messages were handled.
    pub(crate) async fn wait_for(&self, count: u64) {
        let waited = tokio::time::timeout(Duration::from_secs(10), async {
            while self.seen.0.load(Ordering::Relaxed) < count {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        waited.await.expect("the warm-up messages arrive within 10 s");
    }

    pub(crate) fn hit(&self) {
        if self.seen.0.fetch_add(1, Ordering::Relaxed) + 1 == self.target
            && self.short.fetch_sub(1, Ordering::AcqRel) == 1
        {
            self.done.notify_one();
        }
    }
}
