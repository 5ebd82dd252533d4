//! Retry policies and the delays Warren retries after.

use std::time::Duration;

use crate::queue::MAX_TTL_MS;

/// How a subscriber retries messages whose handler failed, panicked or timed out.
///
/// Each retry waits in a delay queue (`<queue>.retry.<ms>`, a TTL queue that dead-letters back into the
/// subscriber's queue), so a waiting message holds no consumer slot and survives a restart. After
/// `max_attempts` deliveries the message goes to `<queue>.dlq` with the last error.
///
/// ```
/// use std::time::Duration;
/// use warren_topology::RetryPolicy;
///
/// // Five deliveries, 200 ms, then 400 ms, 800 ms, 1.6 s apart (never more than ten seconds).
/// let policy = RetryPolicy::exponential(5, Duration::from_millis(200)).max_backoff(Duration::from_secs(10));
/// assert_eq!(policy.backoff(1), Duration::from_millis(200));
/// assert_eq!(policy.backoff(4), Duration::from_millis(1600));
/// assert_eq!(RetryPolicy::never().max_attempts, 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Deliveries in all, the first included; 1 means never retry.
    pub max_attempts: u32,
    /// Wait before the first retry.
    pub initial_backoff: Duration,
    /// Each further wait is this many times the previous one.
    pub multiplier: u32,
    /// Waits never exceed this.
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// `max_attempts` deliveries, waiting `initial_backoff`, then `multiplier` times longer each time, up to
    /// `max_backoff`.
    pub const fn new(max_attempts: u32, initial_backoff: Duration, multiplier: u32, max_backoff: Duration) -> Self {
        RetryPolicy { max_attempts, initial_backoff, multiplier, max_backoff }
    }

    /// No retries: the first failure dead-letters the message.
    pub const fn never() -> Self {
        RetryPolicy::new(1, Duration::ZERO, 1, Duration::ZERO)
    }

    /// `max_attempts` deliveries, waiting `initial_backoff`, then twice as long each time, up to five minutes.
    pub const fn exponential(max_attempts: u32, initial_backoff: Duration) -> Self {
        RetryPolicy::new(max_attempts, initial_backoff, 2, Duration::from_secs(300))
    }

    /// The same policy with `max_backoff` as the longest wait.
    pub const fn max_backoff(mut self, max_backoff: Duration) -> Self {
        self.max_backoff = max_backoff;
        self
    }

    /// The same policy with each wait `multiplier` times the previous one.
    pub const fn multiplier(mut self, multiplier: u32) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// The wait after failed delivery number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = self.multiplier.max(1).saturating_pow(attempt.saturating_sub(1));
        self.initial_backoff.saturating_mul(factor).min(self.max_backoff)
    }

    /// The distinct waits after failed deliveries 1 to `max_attempts - 1`, in milliseconds as a delay queue's
    /// TTL takes them ([`delay_ms`]), first retry first: each is a delay queue `<queue>.retry.<ms>`.
    ///
    /// The waits never shrink, and once one equals the one before (capped by `max_backoff`, or not growing
    /// at all) every later one does too: the list ends there, however many attempts the policy allows (a
    /// `max_attempts` of 4,294,967,295 takes as long as 3).
    pub fn delays_ms(&self) -> Vec<u32> {
        let mut delays: Vec<u32> = Vec::new();
        let mut previous = None;
        for attempt in 1..self.max_attempts {
            let wait = self.backoff(attempt);
            if previous == Some(wait) {
                break;
            }
            previous = Some(wait);
            delays.push(delay_ms(wait));
        }
        delays.dedup();
        delays
    }
}

impl Default for RetryPolicy {
    /// Three deliveries, one and two seconds apart.
    fn default() -> Self {
        RetryPolicy::exponential(3, Duration::from_secs(1))
    }
}

/// The delays a handler's `Outcome::Retry` (in the runtime) is rounded up to: each distinct delay is a queue on
/// the broker (`<queue>.retry.<ms>`), so a handler choosing its own (with jitter, say) would otherwise make them
/// without bound. From 10 ms to a day, about two rungs to every power of ten.
pub const RETRY_LADDER: [Duration; 23] = {
    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }
    const S: u64 = 1000;
    [
        ms(10),
        ms(25),
        ms(50),
        ms(100),
        ms(250),
        ms(500),
        ms(S),
        ms(2 * S),
        ms(5 * S),
        ms(10 * S),
        ms(15 * S),
        ms(30 * S),
        ms(60 * S),
        ms(120 * S),
        ms(300 * S),
        ms(600 * S),
        ms(900 * S),
        ms(1800 * S),
        ms(3600 * S),
        ms(7200 * S),
        ms(6 * 3600 * S),
        ms(12 * 3600 * S),
        ms(24 * 3600 * S),
    ]
};

/// `after` rounded up to the next rung of [`RETRY_LADDER`]; anything above a day waits a day.
pub fn retry_rung(after: Duration) -> Duration {
    RETRY_LADDER.iter().copied().find(|rung| *rung >= after).unwrap_or(RETRY_LADDER[RETRY_LADDER.len() - 1])
}

/// A wait as the TTL of its delay queue: whole milliseconds, at least 1 and at most RabbitMQ's limit of
/// 2^31 - 1 (about 24 days).
pub fn delay_ms(after: Duration) -> u32 {
    u32::try_from(after.as_millis().clamp(1, u128::from(MAX_TTL_MS))).unwrap_or(MAX_TTL_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_chosen_delays_round_up_to_the_ladder() {
        let ms = Duration::from_millis;
        for (asked, waits) in [(0, 10), (1, 10), (10, 10), (11, 25), (999, 1000), (1001, 2000), (3_000, 5_000)] {
            assert_eq!(retry_rung(ms(asked)), ms(waits), "{asked} ms");
        }
        assert_eq!(retry_rung(Duration::MAX), Duration::from_secs(24 * 3600), "a day at most");
        assert!(RETRY_LADDER.windows(2).all(|pair| pair[0] < pair[1]), "rising");
        // Jittered delays land on a handful of queues.
        let rungs: std::collections::BTreeSet<Duration> = (0..10_000).map(|i| retry_rung(ms(1000 + i))).collect();
        assert_eq!(rungs.len(), 5, "1 s to 11 s: {rungs:?}");
    }

    #[test]
    fn each_distinct_wait_is_one_delay_queue() {
        let policy = RetryPolicy::exponential(6, Duration::from_millis(500)).max_backoff(Duration::from_secs(2));
        assert_eq!(policy.delays_ms(), [500, 1000, 2000], "waits of 2 s repeat");
        assert_eq!(RetryPolicy::never().delays_ms(), Vec::<u32>::new());
        assert_eq!(RetryPolicy::exponential(2, Duration::ZERO).delays_ms(), [1], "at least a millisecond");
        let huge = RetryPolicy::exponential(3, Duration::from_secs(1 << 40)).max_backoff(Duration::MAX);
        assert_eq!(huge.delays_ms(), [MAX_TTL_MS], "at most RabbitMQ's TTL limit");
        // "Retry for ever", written as the most attempts there are: the list stops growing with the waits.
        let forever = RetryPolicy::exponential(u32::MAX, Duration::from_secs(1));
        assert_eq!(forever.delays_ms().len(), 10, "1 s doubling to the 300 s cap: {:?}", forever.delays_ms());
        assert_eq!(RetryPolicy::new(u32::MAX, Duration::from_secs(1), 1, Duration::MAX).delays_ms(), [1000]);
    }
}
