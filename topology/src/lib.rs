//! The rules of Warren's broker topology, in one place: the runtime declares what they say, and the code
//! generator records the same in the contract manifest (`proto/warren.lock`) that `cargo xtask check-compat`
//! compares, so the checker sees exactly what a deploy declares.
//!
//! - [`topic`]: topic patterns (`*` one word, `#` zero or more): matching, overlap, routing-key words.
//! - [`ExchangeKind`]: how an exchange routes.
//! - [`QueueSettings`]: the flags and `x-` arguments of each queue Warren declares (consumer queues, their
//!   dead-letter queues [`dead_letter_queue`], delay queues [`retry_queue`]); [`QueueLimit`]: a length limit.
//! - [`RetryPolicy`]: how failed messages are retried, and the delay queues a policy implies
//!   ([`RetryPolicy::delays_ms`]); [`RETRY_LADDER`]: the delays a handler's own choice is rounded to.
//!
//! ```
//! use std::time::Duration;
//! use warren_topology::{QueueSettings, RetryPolicy, retry_queue};
//!
//! let policy = RetryPolicy::exponential(3, Duration::from_secs(1));
//! let queue = QueueSettings::consumer("billing.orders", false, false, Some(policy.max_attempts));
//! assert_eq!(queue.delivery_limit, Some(5));
//! let delays: Vec<String> = policy.delays_ms().into_iter().map(|ms| retry_queue("billing.orders", ms)).collect();
//! assert_eq!(delays, ["billing.orders.retry.1000", "billing.orders.retry.2000"]);
//! ```
//!
//! # Layout
//! - `topic.rs`: topic patterns.
//! - `exchange.rs`: [`ExchangeKind`].
//! - `queue.rs`: queue names and [`QueueSettings`].
//! - `retry.rs`: [`RetryPolicy`], [`RETRY_LADDER`].

mod exchange;
mod queue;
mod retry;
pub mod topic;

pub use exchange::ExchangeKind;
pub use queue::{
    Argument, DELIVERY_LIMIT_MARGIN, MAX_NAME_LEN, MAX_PRIORITY, MAX_QUEUE_NAME_LEN, MAX_TTL_MS, QueueLimit,
    QueueSettings, REGISTRY_QUEUE, REJECT_PUBLISH, TEMPORARY_QUEUE_EXPIRY_MS, dead_letter_queue, is_retry_queue,
    is_side_queue, name_problem, retry_queue,
};
pub use retry::{RETRY_LADDER, RetryPolicy, delay_ms, retry_rung};
