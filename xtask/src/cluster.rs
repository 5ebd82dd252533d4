//! `cargo xtask cluster up|down|status`: a three-node RabbitMQ cluster of private nodes on loopback, for trying
//! Warren on a cluster. Nodes `warren-c1..c3@localhost`, AMQP on 127.0.0.1:5681-5683, Erlang distribution on
//! 25681-25683, data under `target/cluster/`. The system broker (5672) is never touched; the fault tests
//! (`tests/tests/cluster.rs`) start a cluster of their own on other ports.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, bail};
use warren_brokers::{Cluster, NodeSpec};

/// The nodes' names, before their number.
const PREFIX: &str = "warren-c";
/// The first node's AMQP port; the others follow, and each distribution port is 20000 above.
const FIRST_PORT: u16 = 5681;
const NODES: usize = 3;

fn specs(root: &Path) -> Vec<NodeSpec> {
    Cluster::specs(PREFIX, FIRST_PORT, NODES)
        .into_iter()
        .map(|spec| {
            let dir = root.join("target").join("cluster").join(&spec.name);
            spec.dir(dir)
        })
        .collect()
}

/// Runs `cargo xtask cluster <args>`.
pub(crate) fn run(root: &Path, args: &[&str]) -> Result<ExitCode> {
    match args {
        ["up"] => up(root),
        ["down"] => down(root),
        ["status"] => status(root),
        _ => bail!("usage: cargo xtask cluster up|down|status"),
    }
}

/// Starts the cluster, or what is missing of it; leaves it running.
fn up(root: &Path) -> Result<ExitCode> {
    let specs = specs(root);
    let mut attached = Cluster::attach(specs.clone());
    attached.keep();
    let running: Vec<usize> = (0..NODES).filter(|&i| attached.is_up(i)).collect();
    let mut cluster = if running.is_empty() {
        drop(attached);
        println!(
            "starting {NODES} private RabbitMQ nodes {PREFIX}1..{PREFIX}{NODES}@localhost on 127.0.0.1:{FIRST_PORT}-{} \
             (data in {})…",
            FIRST_PORT + NODES as u16 - 1,
            root.join("target/cluster").display()
        );
        let cluster = Cluster::start_nodes(specs)?;
        println!("joined {} into one cluster", sorted(cluster.running_nodes()?).join(", "));
        cluster
    } else {
        let mut cluster = attached;
        let mut started = 0;
        for i in (0..NODES).filter(|i| !running.contains(i)) {
            let node = cluster.node(i);
            if !node.dir().join("mnesia").exists() {
                bail!(
                    "{} is down and has no data in {}, while other nodes run: run `cargo xtask cluster down`, then \
                     `cargo xtask cluster up`",
                    node.name(),
                    node.dir().display()
                );
            }
            println!("starting {} again…", node.name());
            cluster.start_again(i)?;
            started += 1;
        }
        cluster.await_all_running(std::time::Duration::from_secs(60))?;
        let state = if started == 0 { "was already up" } else { "is up again" };
        println!("the cluster {state}: {}", sorted(cluster.running_nodes()?).join(", "));
        cluster
    };
    cluster.keep();
    println!("\nconnect with:\n  RABBITMQ_URL={}", cluster.url("/"));
    println!("stop with `cargo xtask cluster down`; each node's log is in its data dir's log/");
    Ok(ExitCode::SUCCESS)
}

/// Prints each node up or down, and the membership the cluster reports; fails unless all are running.
fn status(root: &Path) -> Result<ExitCode> {
    let mut cluster = Cluster::attach(specs(root));
    cluster.keep();
    for (i, node) in cluster.nodes().iter().enumerate() {
        let state = if cluster.is_up(i) { "up" } else { "down" };
        println!("{:<22} 127.0.0.1:{}  {state}", node.name(), node.amqp_port());
    }
    if !(0..NODES).any(|i| cluster.is_up(i)) {
        println!("no node is running: `cargo xtask cluster up` starts them");
        return Ok(ExitCode::FAILURE);
    }
    let (running, members) = (sorted(cluster.running_nodes()?), sorted(cluster.members()?));
    println!("cluster members: {}", members.join(", "));
    println!("running:         {}", running.join(", "));
    let all = cluster.nodes().iter().all(|node| running.iter().any(|r| r == node.name()));
    if all {
        println!("URL: {}", cluster.url("/"));
    }
    Ok(if all { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Stops every node and removes its data.
fn down(root: &Path) -> Result<ExitCode> {
    let cluster = Cluster::attach(specs(root));
    let names: Vec<String> = cluster.nodes().iter().map(|node| node.name().to_owned()).collect();
    cluster.remove()?;
    let _ = std::fs::remove_dir(root.join("target/cluster"));
    println!("stopped {} and removed their data", names.join(", "));
    Ok(ExitCode::SUCCESS)
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}
