//! Private RabbitMQ nodes and clusters on loopback, for Warren's fault tests and `cargo xtask cluster`.
//!
//! Each node runs from the recipe in the project notes (RABBITMQ.md, "Fault injection on one machine" and "A
//! three-node cluster on one machine"): `rabbitmq-server -detached` as the `rabbitmq` user, with its own node
//! name, AMQP and distribution ports on 127.0.0.1, and its own data dir (`mnesia/`, `log/`, `rabbitmq.conf`,
//! `enabled_plugins`, `node.pid`); `HOME=/var/lib/rabbitmq` so that it shares the Erlang cookie with
//! `rabbitmqctl`. The machine's system node (5672) is never touched. Needs root (to `su rabbitmq`) and the
//! Debian layout of RabbitMQ (`/usr/lib/rabbitmq/bin/rabbitmq-server`).
//!
//! ```no_run
//! # fn main() -> Result<(), warren_brokers::Error> {
//! let mut cluster = warren_brokers::Cluster::start("warren-doc", 5697, 3)?;
//! println!("connect to {}", cluster.url("/"));
//! cluster.stop(0)?; // the first node goes down, its data kept
//! cluster.start_again(0)?; // and rejoins
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - `node.rs`: [`NodeSpec`] and [`Node`] (start, stop, start again, `rabbitmqctl` on it).
//! - `cluster.rs`: [`Cluster`] (start and join, attach to a running one, leaders and members of quorum queues).
//! - `command.rs`: running the CLI tools with a deadline.
//! - `error.rs`: [`Error`], which says what failed and where the node's log is.
//!
//! Every wait has a deadline: a node gets [`START_TIMEOUT`] to start, a CLI command [`CTL_TIMEOUT`].

mod cluster;
mod command;
mod error;
mod node;

pub use cluster::Cluster;
pub use error::{Error, Result};
pub use node::{CTL_TIMEOUT, Node, NodeSpec, START_TIMEOUT};
