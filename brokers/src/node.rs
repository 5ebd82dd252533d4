//! One private RabbitMQ node: its own name, ports and data directory, run as the `rabbitmq` user.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::command::{run, run_ok};
use crate::error::{Error, Result};

/// How long a node may take to start (or to start again) before [`Node::start`] gives up.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one `rabbitmqctl` command may take before it is killed and reported as failed.
pub const CTL_TIMEOUT: Duration = Duration::from_secs(120);

/// What a private node is: its name, its two ports, extra `rabbitmq.conf` lines and where its files live.
///
/// ```
/// let spec = warren_brokers::NodeSpec::new("warren-example", 5699).config("consumer_timeout = 60000");
/// assert_eq!(spec.dist_port, 25699);
/// assert_eq!(spec.node_name(), "warren-example@localhost");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// The node's short name (`warren-c1`), or its full name (`warren-c1@localhost`).
    pub name: String,
    /// The AMQP port, on 127.0.0.1.
    pub amqp_port: u16,
    /// The Erlang distribution port (clustering and the CLI tools).
    pub dist_port: u16,
    /// Lines appended to the node's `rabbitmq.conf` (e.g. `consumer_timeout = 60000`).
    pub extra_config: Vec<String>,
    /// The node's data directory; `None` means `<temp dir>/warren-brokers/<name>`.
    pub dir: Option<PathBuf>,
}

impl NodeSpec {
    /// A node named `name` with AMQP on `amqp_port` and distribution on `amqp_port + 20000`, its data in the
    /// temp dir.
    pub fn new(name: impl Into<String>, amqp_port: u16) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            amqp_port,
            dist_port: amqp_port.saturating_add(20_000),
            extra_config: Vec::new(),
            dir: None,
        }
    }

    /// Sets the Erlang distribution port.
    pub fn dist_port(mut self, port: u16) -> NodeSpec {
        self.dist_port = port;
        self
    }

    /// Appends a line to the node's `rabbitmq.conf`.
    pub fn config(mut self, line: impl Into<String>) -> NodeSpec {
        self.extra_config.push(line.into());
        self
    }

    /// Keeps the node's files in `dir` (created if missing; the node's files are removed with it on drop).
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> NodeSpec {
        self.dir = Some(dir.into());
        self
    }

    /// The node's full Erlang name, `<name>@localhost` unless the name has a host.
    pub fn node_name(&self) -> String {
        if self.name.contains('@') { self.name.clone() } else { format!("{}@localhost", self.name) }
    }

    /// The data directory: the one set, or `<temp dir>/warren-brokers/<short name>`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| {
            let short = self.name.split('@').next().unwrap_or(&self.name);
            std::env::temp_dir().join("warren-brokers").join(short)
        })
    }
}

/// A private RabbitMQ node on loopback, started from the notes' recipe (`docs`: RABBITMQ.md "Fault injection"):
/// its own data dir, ports and node name, run as the `rabbitmq` user with `HOME=/var/lib/rabbitmq` so that it
/// shares the Erlang cookie with `rabbitmqctl`. Never the machine's system node.
///
/// Dropping it shuts the node down and removes its files, unless [`Node::keep`] was called.
#[derive(Debug)]
pub struct Node {
    spec: NodeSpec,
    name: String,
    dir: PathBuf,
    keep: bool,
}

impl Node {
    /// Starts a fresh node (its directory emptied first) and waits, up to [`START_TIMEOUT`], until it answers.
    ///
    /// Fails if a node of that name already runs, or if the node does not start in time (the error names its
    /// log directory).
    pub fn start(spec: NodeSpec) -> Result<Node> {
        let node = Node::launch(spec)?;
        node.await_startup()?;
        Ok(node)
    }

    /// A handle on a node that may already run (started earlier with [`Node::keep`], e.g. by
    /// `cargo xtask cluster up`): nothing is started or checked. Dropping it shuts the node down and removes its
    /// files, unless [`Node::keep`] is called.
    pub fn attach(spec: NodeSpec) -> Node {
        let (name, dir) = (spec.node_name(), spec.data_dir());
        Node { spec, name, dir, keep: false }
    }

    /// Writes a fresh data dir and launches the server detached, without waiting for it.
    pub(crate) fn launch(spec: NodeSpec) -> Result<Node> {
        let node = Node::attach(spec);
        if node.is_running() {
            let mut node = node;
            // Not ours to stop: keep it running.
            node.keep = true;
            let name = &node.name;
            return Err(Error::new(format!(
                "start RabbitMQ: a node named {name} is already running (stop it with `rabbitmqctl -n {name} shutdown`)"
            )));
        }
        let dir = &node.dir;
        if dir.display().to_string().contains('\'') {
            return Err(Error::new(format!(
                "start RabbitMQ: the node's directory {} has a ' in its path, which the server's start script cannot \
                 quote; give the node another (NodeSpec::dir)",
                dir.display()
            )));
        }
        if dir.exists() {
            // Only what a node left: a directory given by mistake (a home, the workspace) is never emptied.
            let entries = std::fs::read_dir(dir)
                .map_err(|e| Error::io(format!("start RabbitMQ: reading {}", dir.display()), e))?
                .filter_map(|entry| entry.ok().map(|entry| entry.file_name().to_string_lossy().into_owned()));
            let known = ["mnesia", "log", "rabbitmq.conf", "enabled_plugins", "node.pid", "erl_crash.dump"];
            if let Some(other) = entries.into_iter().find(|name| !known.contains(&name.as_str())) {
                return Err(Error::new(format!(
                    "start RabbitMQ: {} holds {other}, which no node wrote; refusing to empty it (give the node a \
                     directory of its own)",
                    dir.display()
                )));
            }
            std::fs::remove_dir_all(dir)
                .map_err(|e| Error::io(format!("start RabbitMQ: emptying {}", dir.display()), e))?;
        }
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| Error::io(format!("start RabbitMQ: creating {}", dir.join(sub).display()), e))?;
        }
        let mut conf = format!("listeners.tcp.default = 127.0.0.1:{}\n", node.spec.amqp_port);
        for line in &node.spec.extra_config {
            conf.push_str(line);
            conf.push('\n');
        }
        let write = |file: &str, contents: &str| {
            std::fs::write(dir.join(file), contents)
                .map_err(|e| Error::io(format!("start RabbitMQ: writing {}", dir.join(file).display()), e))
        };
        write("rabbitmq.conf", &conf)?;
        write("enabled_plugins", "[].\n")?;
        run("chown", &["-R", "rabbitmq:rabbitmq", &dir.display().to_string()], CTL_TIMEOUT)
            .map_err(|e| Error::new(format!("start RabbitMQ: giving {} to the rabbitmq user: {e}", dir.display())))?;
        node.spawn_server()?;
        Ok(node)
    }

    /// Runs `rabbitmq-server -detached` as the `rabbitmq` user with this node's environment.
    fn spawn_server(&self) -> Result<()> {
        let d = self.dir.display();
        let script = format!(
            "cd '{d}' && exec env RABBITMQ_NODENAME='{name}' RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
             RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {{127,0,0,1}}' \
             ERL_EPMD_ADDRESS=127.0.0.1 ERL_CRASH_DUMP='{d}/log/erl_crash.dump' \
             RABBITMQ_NODE_PORT={amqp} RABBITMQ_DIST_PORT={dist} RABBITMQ_MNESIA_BASE='{d}/mnesia' \
             RABBITMQ_LOG_BASE='{d}/log' RABBITMQ_CONFIG_FILE='{d}/rabbitmq.conf' \
             RABBITMQ_ENABLED_PLUGINS_FILE='{d}/enabled_plugins' RABBITMQ_PID_FILE='{d}/node.pid' \
             HOME=/var/lib/rabbitmq /usr/lib/rabbitmq/bin/rabbitmq-server -detached",
            name = self.name,
            amqp = self.spec.amqp_port,
            dist = self.spec.dist_port,
        );
        run("su", &["rabbitmq", "-s", "/bin/sh", "-c", &script], CTL_TIMEOUT)
            .map(drop)
            .map_err(|e| Error::new(format!("start RabbitMQ: launching the private node {}: {e}", self.name)))
    }

    /// Waits, up to [`START_TIMEOUT`], for the node's application to run.
    pub(crate) fn await_startup(&self) -> Result<()> {
        let started = Instant::now();
        loop {
            if run_ok("rabbitmqctl", &["-n", &self.name, "await_startup", "--timeout", "5"], Duration::from_secs(15)) {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(Error::new(format!(
                    "start RabbitMQ: the private node {} did not start within {} s (see {}/log){}",
                    self.name,
                    START_TIMEOUT.as_secs(),
                    self.dir.display(),
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The last lines of the node's log, to quote in an error.
    fn log_tail(&self) -> String {
        let log = self.dir.join("log").join(format!("{}.log", self.name));
        let Ok(text) = std::fs::read_to_string(&log) else { return String::new() };
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(5)..].join("\n  ");
        format!("; its log ends:\n  {tail}")
    }

    /// Whether the node's Erlang VM answers the CLI tools (`rabbitmqctl ping`).
    pub fn is_running(&self) -> bool {
        run_ok("rabbitmqctl", &["-n", &self.name, "ping", "--timeout", "5"], Duration::from_secs(15))
    }

    /// The node's AMQP URL for `vhost` as guest (loopback only), e.g. `amqp://guest:guest@127.0.0.1:5681/%2f`.
    pub fn url(&self, vhost: &str) -> String {
        format!("amqp://guest:guest@{}/{}", self.address(), encode_vhost(vhost))
    }

    /// `127.0.0.1:<amqp port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.spec.amqp_port)
    }

    /// Runs `rabbitmqctl -n <node> <args>` (within [`CTL_TIMEOUT`]) and returns what it printed.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        self.tool("rabbitmqctl", args)
    }

    /// Runs `rabbitmq-queues -n <node> <args>` (within [`CTL_TIMEOUT`]) and returns what it printed.
    pub fn queues(&self, args: &[&str]) -> Result<String> {
        self.tool("rabbitmq-queues", args)
    }

    fn tool(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run(program, &all, CTL_TIMEOUT).map_err(|e| {
            Error::new(format!("{program} -n {} {}: {e} (see {}/log)", self.name, args.join(" "), self.dir.display()))
        })
    }

    /// Shuts the node down (`rabbitmqctl shutdown`, which waits for its OS process to exit) and keeps its data,
    /// so [`Node::start_again`] brings it back with the same queues and cluster membership.
    pub fn stop(&self) -> Result<()> {
        self.ctl(&["shutdown"]).map(drop)
    }

    /// Kills the node's OS process at once (`kill -9`), as a crash would; its data stays.
    pub fn kill(&self) -> Result<()> {
        let pid_file = self.dir.join("node.pid");
        let pid = std::fs::read_to_string(&pid_file)
            .map_err(|e| Error::io(format!("kill {}: reading {}", self.name, pid_file.display()), e))?;
        run("kill", &["-9", pid.trim()], CTL_TIMEOUT)
            .map(drop)
            .map_err(|e| Error::new(format!("kill {} (pid {}): {e}", self.name, pid.trim())))
    }

    /// Starts the node again on the same data dir after [`Node::stop`]: a cluster member rejoins its cluster.
    /// Waits up to [`START_TIMEOUT`].
    pub fn start_again(&self) -> Result<()> {
        self.spawn_server()?;
        self.await_startup()
    }

    /// The node's full Erlang name, e.g. `warren-c1@localhost`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's AMQP port on 127.0.0.1.
    pub fn amqp_port(&self) -> u16 {
        self.spec.amqp_port
    }

    /// The node's data directory (its log is in `log/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the node was started from.
    pub fn spec(&self) -> &NodeSpec {
        &self.spec
    }

    /// Leaves the node running, and its files in place, when this handle is dropped.
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Shuts the node down (if it runs) and removes its files now, whatever [`Node::keep`] said.
    pub fn remove(mut self) -> Result<()> {
        self.keep = true;
        let _ = self.ctl(&["shutdown"]);
        if self.is_running() {
            return Err(Error::new(format!("stop RabbitMQ: the private node {} is still running", self.name)));
        }
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(format!("removing {}", self.dir.display()), e))
            }
            _ => Ok(()),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if !self.keep {
            let _ = run("rabbitmqctl", &["-n", &self.name, "shutdown"], CTL_TIMEOUT);
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A vhost as the path of an AMQP URL: `/` is `%2f`; anything but unreserved characters is percent-encoded.
pub(crate) fn encode_vhost(vhost: &str) -> String {
    let mut out = String::new();
    for byte in vhost.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vhosts_are_encoded_as_url_paths() {
        assert_eq!(encode_vhost("/"), "%2f");
        assert_eq!(encode_vhost("warren-test_1"), "warren-test_1");
        assert_eq!(encode_vhost("a b/c"), "a%20b%2fc");
    }

    #[test]
    fn a_spec_names_its_node_and_dir() {
        let spec = NodeSpec::new("warren-x1", 5681);
        assert_eq!((spec.node_name().as_str(), spec.dist_port), ("warren-x1@localhost", 25681));
        assert!(spec.data_dir().ends_with("warren-brokers/warren-x1"));
        let spec = NodeSpec::new("n@host", 1).dist_port(2).dir("/x");
        assert_eq!((spec.node_name().as_str(), spec.dist_port, spec.data_dir()), ("n@host", 2, PathBuf::from("/x")));
    }
}
