//! What a handler decides about a message, and how failed ones are retried.

use super::*;

/// How a subscriber retries messages whose handler failed, panicked or timed out.
///
/// Each retry waits in a delay queue (`<queue>.retry.<ms>`, a TTL queue that dead-letters back into the
/// subscriber's queue), so a waiting message holds no consumer slot and survives a restart. After
/// `max_attempts` deliveries the message goes to `<queue>.dlq` with the last error.
///
/// ```
/// use std::time::Duration;
/// use warren::RetryPolicy;
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
}

impl Default for RetryPolicy {
    /// Three deliveries, one and two seconds apart.
    fn default() -> Self {
        RetryPolicy::exponential(3, Duration::from_secs(1))
    }
}

/// The delays a handler's [`Outcome::Retry`] is rounded up to: each distinct delay is a queue on the broker
/// (`<queue>.retry.<ms>`), so a handler choosing its own (with jitter, say) would otherwise make them without
/// bound. From 10 ms to a day, about two rungs to every power of ten.
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
pub(super) fn retry_rung(after: Duration) -> Duration {
    RETRY_LADDER.iter().copied().find(|rung| *rung >= after).unwrap_or(RETRY_LADDER[RETRY_LADDER.len() - 1])
}

/// What a handler decided about a message. A handler returning `Ok(())` acknowledges; one returning an
/// `Outcome` says more:
///
/// ```
/// use std::time::Duration;
/// use warren::{HandlerError, Outcome};
///
/// fn decide(stock: u32) -> Result<Outcome, HandlerError> {
///     Ok(match stock {
///         0 => Outcome::Retry { after: Duration::from_secs(30) }, // rounded up to a rung of RETRY_LADDER
///         n if n > 1_000_000 => Outcome::DeadLetter { reason: format!("implausible stock {n}") },
///         _ => Outcome::Ack,
///     })
/// }
/// assert_eq!(decide(3).unwrap(), Outcome::Ack);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Done: the message is acknowledged and removed.
    Ack,
    /// Try again later: the message is redelivered after `after`, rounded up to the next rung of
    /// [`RETRY_LADDER`] (10 ms to a day), as each distinct delay is a queue on the broker; counts as a failed
    /// attempt, so the retry policy's limit still applies.
    Retry {
        /// How long to wait before redelivery.
        after: Duration,
    },
    /// Never succeed: the message goes to the queue's dead-letter queue (`<queue>.dlq`) with `reason`.
    DeadLetter {
        /// Why, kept in the `x-warren-reason` header.
        reason: String,
    },
}

impl From<()> for Outcome {
    fn from((): ()) -> Self {
        Outcome::Ack
    }
}

/// The error type handlers may return; anything convertible (any `std::error::Error`, `anyhow::Error`, a
/// `String`) works with `?`.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;
