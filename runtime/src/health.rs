//! How a bus's connection to its broker is doing.

use std::time::SystemTime;

/// The state of a bus's connection, from [`crate::Bus::health`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// Connected; publishing and consuming work.
    Connected,
    /// The connection was lost and the bus is reconnecting. Publishes wait (within their deadline) and are
    /// sent once it is back; subscribers resume by themselves.
    Recovering {
        /// When the connection was lost.
        since: SystemTime,
        /// Reconnection attempts so far.
        attempts: u32,
        /// Why the connection was lost, or why the last attempt failed.
        last_error: String,
    },
    /// Reconnecting has failed for longer than [`crate::BusConfig::recovery_timeout`]. The bus keeps trying;
    /// this is the point to alert someone.
    Failed {
        /// Why the last attempt failed.
        last_error: String,
    },
    /// Connected, but some of what this bus declared could not be declared again after a reconnection (a
    /// queue that someone redeclared with other arguments, a permission taken away). Everything else was
    /// recovered and works; this names what did not, with the broker's reply, until the next reconnection
    /// declares everything again.
    Degraded {
        /// Each declaration that failed: what it was and why.
        failed: Vec<String>,
    },
    /// The bus was shut down or closed.
    Closed,
}

impl Health {
    /// Whether the bus can publish and consume right now.
    pub fn is_connected(&self) -> bool {
        matches!(self, Health::Connected | Health::Degraded { .. })
    }
}
