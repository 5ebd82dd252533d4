//! How a bus's connection to its broker is doing.

use std::time::SystemTime;

/// The state of a bus's connection, from [`crate::Bus::health`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// Connected; publishing and consuming work.
    Connected {
        /// The node the bus is connected to: its `host:port` as configured (`memory` in memory).
        node: String,
    },
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
        /// The node the bus is connected to (`host:port`).
        node: String,
        /// Each declaration that failed: what it was and why.
        failed: Vec<String>,
    },
    /// Connected, but the broker has blocked this bus's publishing connection (`connection.blocked`): it is
    /// short of memory or disk (a resource alarm). Publishes wait for it to unblock and fail with
    /// [`crate::Error::Blocked`] once [`crate::BusConfig::publish_timeout`] passes; subscribers keep receiving
    /// and acknowledging, on their own connection. Ends by itself when the broker unblocks the connection.
    Blocked {
        /// The node the bus is connected to (`host:port`).
        node: String,
        /// The broker's reason, e.g. `low on memory`.
        reason: String,
        /// When the broker blocked the connection.
        since: SystemTime,
    },
    /// The bus was shut down or closed.
    Closed,
}

impl Health {
    /// Whether the bus can publish and consume right now (not while [`Health::Blocked`]: it cannot publish).
    pub fn is_connected(&self) -> bool {
        matches!(self, Health::Connected { .. } | Health::Degraded { .. })
    }

    /// The node the bus is connected to (`host:port`; `memory` in memory), when it is connected.
    pub fn node(&self) -> Option<&str> {
        match self {
            Health::Connected { node } | Health::Degraded { node, .. } | Health::Blocked { node, .. } => Some(node),
            Health::Recovering { .. } | Health::Failed { .. } | Health::Closed => None,
        }
    }
}

/// What the broker says about itself (RabbitMQ's server properties), for operators: see [`crate::Bus::broker`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BrokerInfo {
    /// The product, e.g. `RabbitMQ`.
    pub product: String,
    /// Its version, e.g. `4.0.5`.
    pub version: String,
    /// The cluster's name (by default RabbitMQ's first node, e.g. `rabbit@host`).
    pub cluster_name: String,
    /// The platform it runs on, e.g. `Erlang/OTP 27.2`.
    pub platform: String,
}

impl crate::Bus {
    /// What the broker says about itself when a connection opens. Over AMQP this opens a TCP connection of its
    /// own (over TLS for `amqps://`), to the node the bus is on, to read the broker's `connection.start` (no
    /// login) and closes it, within the operation timeout. In memory: Warren's in-memory broker and this crate's
    /// version.
    pub async fn broker(&self) -> crate::Result<BrokerInfo> {
        let config = self.config();
        let uri = match &config.endpoint {
            crate::config::Endpoint::Memory(_) => {
                return Ok(BrokerInfo {
                    product: "Warren in-memory broker".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    cluster_name: "memory".into(),
                    platform: "this process".into(),
                });
            }
            crate::config::Endpoint::Amqp { uri, .. } => uri,
        };
        let mut uri = uri.clone();
        if let Some(node) = self.node_address() {
            uri.authority.host = node.host;
            uri.authority.port = node.port;
        }
        let properties =
            crate::transport::amqp::probe::server_properties(config, &uri, config.operation_timeout).await?;
        let get = |key: &str| properties.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()).unwrap_or_default();
        Ok(BrokerInfo {
            product: get("product"),
            version: get("version"),
            cluster_name: get("cluster_name"),
            platform: get("platform"),
        })
    }
}
