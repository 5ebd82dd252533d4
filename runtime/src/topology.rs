//! What a bus has declared on its broker: a record both transports keep, which the AMQP transport replays
//! after a reconnection and [`Bus::topology`](crate::Bus::topology) shows.

use crate::contract::ExchangeSpec;
pub use warren_topology::{Argument, ExchangeKind, QueueLimit, QueueSettings};

/// The exchanges, queues and bindings a bus has declared, each once, in the order it first declared them:
/// what it declares again after a reconnection. Queues of subscribers that stopped are left out (they are no
/// longer declared again), as are delay queues that no message has needed yet. From
/// [`Bus::topology`](crate::Bus::topology).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Topology {
    /// Exchanges.
    pub exchanges: Vec<Exchange>,
    /// Queues, by name, with their settings.
    pub queues: Vec<(String, QueueSettings)>,
    /// Bindings of queues to exchanges.
    pub bindings: Vec<Binding>,
}

/// An exchange as Warren declares it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Exchange {
    /// Its name.
    pub name: String,
    /// How it routes.
    pub kind: ExchangeKind,
    /// Survives broker restarts.
    pub durable: bool,
    /// Deleted by the broker once its last queue is unbound.
    pub auto_delete: bool,
}

impl Exchange {
    /// Exchange `name` of `kind`, surviving broker restarts if `durable`, deleted with its last queue if `auto_delete`.
    pub fn new(name: impl Into<String>, kind: ExchangeKind, durable: bool, auto_delete: bool) -> Self {
        Exchange { name: name.into(), kind, durable, auto_delete }
    }
}

impl From<&ExchangeSpec> for Exchange {
    fn from(spec: &ExchangeSpec) -> Self {
        Exchange { name: spec.name.to_owned(), kind: spec.kind, durable: spec.durable, auto_delete: spec.auto_delete }
    }
}

/// A queue bound to an exchange with a binding key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub struct Binding {
    /// The bound queue.
    pub queue: String,
    /// The exchange it takes messages from.
    pub exchange: String,
    /// The binding key (a pattern on topic exchanges; empty on fanout ones).
    pub key: String,
}

impl Topology {
    /// The settings queue `name` was declared with, if it was.
    pub fn queue(&self, name: &str) -> Option<&QueueSettings> {
        self.queues.iter().find(|(queue, _)| queue == name).map(|(_, settings)| settings)
    }

    pub(crate) fn record_exchange(&mut self, exchange: &ExchangeSpec) {
        if !self.exchanges.iter().any(|known| known.name == exchange.name) {
            self.exchanges.push(Exchange::from(exchange));
        }
    }

    pub(crate) fn record_queue(&mut self, name: &str, settings: &QueueSettings) {
        if self.queue(name).is_none() {
            self.queues.push((name.to_owned(), settings.clone()));
        }
    }

    pub(crate) fn record_binding(&mut self, queue: &str, exchange: &str, key: &str) {
        let binding = Binding { queue: queue.to_owned(), exchange: exchange.to_owned(), key: key.to_owned() };
        if !self.bindings.contains(&binding) {
            self.bindings.push(binding);
        }
    }

    /// Leaves out `queues` and their bindings.
    pub(crate) fn forget(&mut self, queues: &[String]) {
        self.queues.retain(|(name, _)| !queues.contains(name));
        self.bindings.retain(|binding| !queues.contains(&binding.queue));
    }
}
