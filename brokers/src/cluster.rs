//! Several private nodes joined into one RabbitMQ cluster, and what a fault test asks of it.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::node::{Node, NodeSpec, encode_vhost};

/// A RabbitMQ cluster of private nodes on loopback (the notes' "three-node cluster on one machine").
///
/// Dropping it shuts every node down and removes their files, unless [`Cluster::keep`] was called.
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<Node>,
    /// Whether each node runs, as far as this handle knows (it changes them through `stop`/`start_again`).
    up: Vec<bool>,
}

impl Cluster {
    /// The specs of `n` nodes `<prefix>1@localhost`…`<prefix>n@localhost` on AMQP ports `first_amqp_port`…
    /// and distribution ports 20000 above them, with their data in the temp dir.
    pub fn specs(prefix: &str, first_amqp_port: u16, n: usize) -> Vec<NodeSpec> {
        (0..n).map(|i| NodeSpec::new(format!("{prefix}{}", i + 1), first_amqp_port + i as u16)).collect()
    }

    /// Starts `n` fresh nodes from [`Cluster::specs`] and joins them into one cluster.
    pub fn start(prefix: &str, first_amqp_port: u16, n: usize) -> Result<Cluster> {
        Cluster::start_nodes(Cluster::specs(prefix, first_amqp_port, n))
    }

    /// Starts fresh nodes from `specs` (all at once, then waits for each) and joins every other node to the
    /// first: `stop_app`, `join_cluster <first>`, `start_app`. Checks that the first node then sees them all
    /// running.
    pub fn start_nodes(specs: Vec<NodeSpec>) -> Result<Cluster> {
        if specs.is_empty() {
            return Err(Error::new("start RabbitMQ: a cluster needs at least one node"));
        }
        let mut nodes = Vec::with_capacity(specs.len());
        for spec in specs {
            // Dropping what was launched so far (on an error) shuts it down again.
            nodes.push(Node::launch(spec)?);
        }
        let up = vec![true; nodes.len()];
        let cluster = Cluster { nodes, up };
        for node in &cluster.nodes {
            node.await_startup()?;
        }
        let first = cluster.nodes[0].name().to_owned();
        for node in &cluster.nodes[1..] {
            let join = || -> Result<()> {
                node.ctl(&["stop_app"])?;
                node.ctl(&["join_cluster", &first])?;
                node.ctl(&["start_app"])?;
                node.await_startup()
            };
            join().map_err(|e| Error::new(format!("start RabbitMQ: joining {} to {first}: {e}", node.name())))?;
        }
        let running = cluster.running_nodes()?;
        let missing: Vec<&str> =
            cluster.nodes.iter().map(Node::name).filter(|name| !running.iter().any(|r| r == name)).collect();
        if !missing.is_empty() {
            return Err(Error::new(format!(
                "start RabbitMQ: {first} does not see {} running in its cluster (it sees {})",
                missing.join(", "),
                running.join(", ")
            )));
        }
        Ok(cluster)
    }

    /// A handle on a cluster that may already run (e.g. `cargo xtask cluster up`): asks each node whether it
    /// runs, starts nothing. Dropping it shuts the nodes down and removes their files, unless
    /// [`Cluster::keep`] is called.
    pub fn attach(specs: Vec<NodeSpec>) -> Cluster {
        let nodes: Vec<Node> = specs.into_iter().map(Node::attach).collect();
        let up = std::thread::scope(|scope| {
            let asked: Vec<_> = nodes.iter().map(|node| scope.spawn(|| node.is_running())).collect();
            asked.into_iter().map(|answer| answer.join().unwrap_or(false)).collect()
        });
        Cluster { nodes, up }
    }

    /// The nodes, in the order of their specs.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `i` (from 0). Panics if there is no such node.
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// Whether node `i` runs, as far as this handle knows (from [`Cluster::attach`], [`Cluster::stop`] and
    /// [`Cluster::start_again`]).
    pub fn is_up(&self, i: usize) -> bool {
        self.up[i]
    }

    /// Every node's `127.0.0.1:<port>`, in order.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(Node::address).collect()
    }

    /// The multi-host URL of the whole cluster for `vhost` as guest:
    /// `amqp://guest:guest@127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/<vhost>`.
    pub fn url(&self, vhost: &str) -> String {
        self.url_from(0, vhost)
    }

    /// The multi-host URL with the addresses rotated to begin at node `first` (a client that takes the first
    /// address that answers lands on that node).
    pub fn url_from(&self, first: usize, vhost: &str) -> String {
        let mut addresses = self.addresses();
        let shift = first % addresses.len().max(1);
        addresses.rotate_left(shift);
        format!("amqp://guest:guest@{}/{}", addresses.join(","), encode_vhost(vhost))
    }

    /// Runs `rabbitmqctl <args>` on the first node that runs.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        self.any_up()?.ctl(args)
    }

    fn any_up(&self) -> Result<&Node> {
        self.nodes
            .iter()
            .zip(&self.up)
            .find_map(|(node, up)| up.then_some(node))
            .ok_or_else(|| Error::new("no node of the cluster is running"))
    }

    /// The nodes the cluster says are running (`rabbitmqctl cluster_status`, asked of a running node).
    pub fn running_nodes(&self) -> Result<Vec<String>> {
        let status = self.ctl(&["cluster_status", "--formatter", "json"])?;
        json_names(&status, "running_nodes")
            .ok_or_else(|| Error::new(format!("cluster_status without running_nodes: {status}")))
    }

    /// The nodes that are members of the cluster, running or not (`cluster_status`'s disc nodes).
    pub fn members(&self) -> Result<Vec<String>> {
        let status = self.ctl(&["cluster_status", "--formatter", "json"])?;
        json_names(&status, "disk_nodes")
            .ok_or_else(|| Error::new(format!("cluster_status without disk_nodes: {status}")))
    }

    /// The index of the node that leads quorum queue `queue` in `vhost` (`rabbitmqctl list_queues name leader`).
    pub fn leader_of(&self, vhost: &str, queue: &str) -> Result<usize> {
        let leader = self.queue_column(vhost, queue, "leader")?;
        self.nodes.iter().position(|node| node.name() == leader).ok_or_else(|| {
            Error::new(format!("queue {queue} in {vhost} is led by {leader}, not a node of this cluster"))
        })
    }

    /// The nodes holding a replica of quorum queue `queue` in `vhost` (`rabbitmqctl list_queues name members`).
    pub fn members_of(&self, vhost: &str, queue: &str) -> Result<Vec<String>> {
        let members = self.queue_column(vhost, queue, "members")?;
        Ok(members
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(|name| name.trim().trim_matches('\'').to_owned())
            .filter(|name| !name.is_empty())
            .collect())
    }

    /// One column of `list_queues -p <vhost> name <column>` for `queue`.
    fn queue_column(&self, vhost: &str, queue: &str, column: &str) -> Result<String> {
        let listed = self.ctl(&["list_queues", "-q", "--no-table-headers", "-p", vhost, "name", column])?;
        listed
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once('\t')?;
                (name == queue).then(|| value.trim().to_owned())
            })
            .ok_or_else(|| Error::new(format!("no queue {queue} in vhost {vhost}: {listed}")))
    }

    /// Shuts node `i` down, keeping its data (see [`Node::stop`]).
    pub fn stop(&mut self, i: usize) -> Result<()> {
        self.nodes[i].stop()?;
        self.up[i] = false;
        Ok(())
    }

    /// Kills node `i` (see [`Node::kill`]).
    pub fn kill(&mut self, i: usize) -> Result<()> {
        self.nodes[i].kill()?;
        self.up[i] = false;
        Ok(())
    }

    /// Starts node `i` again on its data: it rejoins the cluster (see [`Node::start_again`]).
    pub fn start_again(&mut self, i: usize) -> Result<()> {
        self.nodes[i].start_again()?;
        self.up[i] = true;
        Ok(())
    }

    /// Waits (up to `within`) until every node is running in the cluster, as seen from a running node.
    pub fn await_all_running(&self, within: Duration) -> Result<()> {
        let started = std::time::Instant::now();
        loop {
            let running = self.running_nodes().unwrap_or_default();
            if self.nodes.iter().all(|node| running.iter().any(|r| r == node.name())) {
                return Ok(());
            }
            if started.elapsed() > within {
                return Err(Error::new(format!(
                    "the cluster's running nodes are {} after {} s, not all of them",
                    running.join(", "),
                    within.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Leaves every node running, and their files in place, when this handle is dropped.
    pub fn keep(&mut self) {
        self.nodes.iter_mut().for_each(Node::keep);
    }

    /// Shuts every node down and removes their files now (in parallel), whatever [`Cluster::keep`] said.
    pub fn remove(mut self) -> Result<()> {
        let nodes = std::mem::take(&mut self.nodes);
        let results: Vec<Result<()>> = std::thread::scope(|scope| {
            let removing: Vec<_> = nodes.into_iter().map(|node| scope.spawn(move || node.remove())).collect();
            removing.into_iter().map(|handle| handle.join().unwrap_or_else(|_| Err(Error::new("panicked")))).collect()
        });
        results.into_iter().collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Each node's drop shuts it down (unless kept); in parallel, as each takes a few seconds.
        let nodes = std::mem::take(&mut self.nodes);
        std::thread::scope(|scope| {
            for node in nodes {
                scope.spawn(move || drop(node));
            }
        });
    }
}

/// The node names in `"<key>":["a@h","b@h"]` of RabbitMQ's JSON output.
fn json_names(json: &str, key: &str) -> Option<Vec<String>> {
    let start = json.find(&format!("\"{key}\""))?;
    let rest = &json[start..];
    let list = &rest[rest.find('[')? + 1..];
    let list = &list[..list.find(']')?];
    Some(list.split(',').map(|name| name.trim().trim_matches('"').to_owned()).filter(|n| !n.is_empty()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_from_cluster_status() {
        let json = r#"{"disk_nodes":["a@localhost","b@localhost"],"running_nodes":["a@localhost"],"x":[]}"#;
        assert_eq!(json_names(json, "running_nodes").unwrap(), ["a@localhost"]);
        assert_eq!(json_names(json, "disk_nodes").unwrap(), ["a@localhost", "b@localhost"]);
        assert_eq!(json_names(json, "nope"), None);
    }

    #[test]
    fn urls_list_every_node() {
        let cluster =
            Cluster { nodes: Cluster::specs("u", 5681, 3).into_iter().map(Node::attach).collect(), up: vec![] };
        assert_eq!(cluster.url("/"), "amqp://guest:guest@127.0.0.1:5681,127.0.0.1:5682,127.0.0.1:5683/%2f");
        assert_eq!(cluster.url_from(1, "v"), "amqp://guest:guest@127.0.0.1:5682,127.0.0.1:5683,127.0.0.1:5681/v");
        let mut cluster = cluster;
        cluster.keep();
    }
}
