//! What a handler decides about a message: [`Outcome`] (acknowledge, retry after a delay, dead-letter), and
//! [`HandlerError`]. The retry policy and its delays are `warren-topology`'s, shared with the code generator.

use super::*;

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
