//! Waiting between attempts: one exponential backoff with jitter, for every loop that retries the broker.

use std::time::Duration;

/// Exponential backoff with jitter: each wait is the current step scaled by a random factor in [0.5, 1.5),
/// so that many clients losing one broker do not come back in step; the step doubles up to its ceiling.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    first: Duration,
    step: Duration,
    max: Duration,
}

impl Backoff {
    /// Starting at `first`, doubling up to `max`.
    pub(crate) const fn new(first: Duration, max: Duration) -> Self {
        Backoff { first, step: first, max }
    }

    /// The wait before the next attempt; the one after is twice as long (up to the ceiling).
    pub(crate) fn next_wait(&mut self) -> Duration {
        let wait = jittered(self.step);
        self.step = self.step.saturating_mul(2).min(self.max);
        wait
    }

    /// Back to the first step, after a success.
    pub(crate) fn reset(&mut self) {
        self.step = self.first;
    }
}

/// `base` scaled by a random factor in [0.5, 1.5).
fn jittered(base: Duration) -> Duration {
    base.mul_f64(0.5 + fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_ceiling_with_jitter_around_each_step() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(700));
        let steps = [100, 200, 400, 700, 700];
        for step in steps {
            let wait = backoff.next_wait().as_secs_f64() * 1000.0;
            let step = f64::from(step);
            assert!((step * 0.5..step * 1.5).contains(&wait), "{wait} ms around a step of {step} ms");
        }
        backoff.reset();
        assert!(backoff.next_wait() < Duration::from_millis(150), "back to the first step");
        let waits: std::collections::HashSet<Duration> = (0..20).map(|_| jittered(Duration::from_secs(1))).collect();
        assert!(waits.len() > 1, "jittered, not fixed");
    }
}
