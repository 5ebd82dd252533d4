//! Fault injection: the sequence ledger that decides "nothing lost", and a private RabbitMQ node for faults
//! that would disturb everyone else on the shared one (stopping the broker).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What happened to each message of a run, by sequence number (modelled on rabbitmq/jepsen's checker).
///
/// lost = confirmed but never consumed (must be empty); duplicates = consumed more than once (allowed,
/// counted); unexpected = consumed but never sent (must be empty).
#[derive(Debug, Default)]
pub struct Ledger {
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    sent: u64,
    confirmed: BTreeSet<i64>,
    failed: BTreeSet<i64>,
    consumed: BTreeMap<i64, u32>,
    dead_lettered: BTreeSet<i64>,
}

/// The verdict of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Messages published.
    pub sent: u64,
    /// Confirmed by the broker.
    pub confirmed: usize,
    /// Distinct messages consumed.
    pub consumed: usize,
    /// Extra deliveries of messages already consumed.
    pub duplicates: u64,
    /// Messages found in a dead-letter queue.
    pub dead_lettered: usize,
    /// Confirmed, never consumed nor dead-lettered.
    pub lost: Vec<i64>,
    /// Failed for the caller (an error, e.g. the publish deadline passed).
    pub failed: usize,
    /// Failed for the caller, and consumed all the same (the broker had them after all).
    pub recovered: usize,
    /// Consumed, never sent.
    pub unexpected: Vec<i64>,
}

impl Ledger {
    /// Records that `seq` was published.
    pub fn sent(&self, _seq: i64) {
        self.inner.lock().unwrap().sent += 1;
    }

    /// Records the publisher's outcome for `seq`.
    pub fn published(&self, seq: i64, confirmed: bool) {
        let mut entries = self.inner.lock().unwrap();
        if confirmed {
            entries.confirmed.insert(seq);
        } else {
            entries.failed.insert(seq);
        }
    }

    /// Records a delivery of `seq` to a handler.
    pub fn consumed(&self, seq: i64) {
        *self.inner.lock().unwrap().consumed.entry(seq).or_default() += 1;
    }

    /// Records `seq` found in a dead-letter queue.
    pub fn dead_lettered(&self, seq: i64) {
        self.inner.lock().unwrap().dead_lettered.insert(seq);
    }

    /// How many were confirmed so far.
    pub fn confirmed(&self) -> usize {
        self.inner.lock().unwrap().confirmed.len()
    }

    /// Whether every confirmed message was consumed or dead-lettered.
    pub fn settled(&self) -> bool {
        let entries = self.inner.lock().unwrap();
        entries.confirmed.iter().all(|seq| entries.consumed.contains_key(seq) || entries.dead_lettered.contains(seq))
    }

    /// Waits (until `within`) for every confirmed message to be consumed, then a quiet moment for late
    /// duplicates.
    pub async fn drain(&self, within: Duration) {
        let started = Instant::now();
        while !self.settled() && started.elapsed() < within {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    /// Waits (60 s at most, then fails the test) until `count` publishes are confirmed.
    pub async fn until_confirmed(&self, count: usize) {
        crate::within(60, "publishing progress", async {
            while self.confirmed() < count {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }

    /// The verdict of test `name`, asserting that nothing confirmed was lost and nothing unsent arrived (the
    /// first 20 of either are named).
    pub fn assert_nothing_lost(&self, name: &str) -> Verdict {
        let verdict = self.verdict(name);
        let first = |ids: &[i64]| ids.iter().take(20).map(i64::to_string).collect::<Vec<_>>().join(", ");
        assert!(
            verdict.lost.is_empty(),
            "{name}: {} confirmed but never consumed, e.g. {}",
            verdict.lost.len(),
            first(&verdict.lost)
        );
        assert!(
            verdict.unexpected.is_empty(),
            "{name}: {} consumed but never sent, e.g. {}",
            verdict.unexpected.len(),
            first(&verdict.unexpected)
        );
        verdict
    }

    /// The verdict, printed as the ledger line of test `name`.
    pub fn verdict(&self, name: &str) -> Verdict {
        let entries = self.inner.lock().unwrap();
        let lost = entries
            .confirmed
            .iter()
            .filter(|seq| !entries.consumed.contains_key(seq) && !entries.dead_lettered.contains(seq))
            .copied()
            .collect();
        let unexpected = entries
            .consumed
            .keys()
            .filter(|seq| !entries.confirmed.contains(seq) && !entries.failed.contains(seq))
            .copied()
            .collect();
        let verdict = Verdict {
            sent: entries.sent,
            confirmed: entries.confirmed.len(),
            consumed: entries.consumed.len(),
            duplicates: entries.consumed.values().map(|n| u64::from(n - 1)).sum(),
            dead_lettered: entries.dead_lettered.len(),
            lost,
            failed: entries.failed.len(),
            recovered: entries.failed.iter().filter(|seq| entries.consumed.contains_key(seq)).count(),
            unexpected,
        };
        println!(
            "ledger {name}: sent {} confirmed {} failed {} (consumed all the same {}) consumed {} duplicates {} \
             dead-lettered {} lost {} unexpected {}",
            verdict.sent,
            verdict.confirmed,
            verdict.failed,
            verdict.recovered,
            verdict.consumed,
            verdict.duplicates,
            verdict.dead_lettered,
            verdict.lost.len(),
            verdict.unexpected.len()
        );
        verdict
    }
}

/// A RabbitMQ node of the test's own, on 127.0.0.1:5679, started from the notes' recipe (by
/// [`warren_brokers::Node`]) and shut down (and its files removed) when dropped. The machine's shared broker is
/// never touched.
#[derive(Debug)]
pub struct PrivateNode {
    node: warren_brokers::Node,
}

/// The private node's AMQP port.
pub const PRIVATE_PORT: u16 = 5679;

impl PrivateNode {
    /// Starts the node and waits (up to 60 s) until it answers; panics with "start RabbitMQ: …" if it does not.
    pub fn start() -> PrivateNode {
        let spec = warren_brokers::NodeSpec::new("warren-rtest", PRIVATE_PORT)
            .dist_port(25679)
            .config("max_message_size = 1048576")
            .dir(std::env::temp_dir().join(format!("warren-rtest-{}", std::process::id())));
        match warren_brokers::Node::start(spec) {
            Ok(node) => PrivateNode { node },
            Err(error) => panic!("{error}"),
        }
    }

    /// The node's URL.
    pub fn url(&self) -> String {
        self.node.url("/")
    }

    /// Runs `rabbitmqctl -n <node> <args>`, failing the test if it fails.
    pub fn ctl(&self, args: &[&str]) {
        if let Err(error) = self.node.ctl(args) {
            panic!("{error}");
        }
    }
}

/// Runs `rabbitmqctl` against the shared node for something scoped to the test's own vhost; what it printed.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let output = Command::new("rabbitmqctl").args(args).output().expect("rabbitmqctl runs");
    assert!(
        output.status.success(),
        "rabbitmqctl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// How many of `queue`'s messages, in `vhost` of the shared node, are delivered and not yet acknowledged.
pub fn unacknowledged(vhost: &str, queue: &str) -> u64 {
    let listed =
        rabbitmqctl(&["list_queues", "-q", "--no-table-headers", "-p", vhost, "name", "messages_unacknowledged"]);
    listed
        .lines()
        .find_map(|line| {
            let (name, count) = line.split_once('\t')?;
            if name == queue { count.trim().parse().ok() } else { None }
        })
        .unwrap_or_else(|| panic!("no queue \"{queue}\" in vhost {vhost}: {listed}"))
}

/// A TCP relay in front of a broker that can stall: while frozen it forwards nothing either way and closes
/// nothing, as a network that silently drops packets would. Counts the connections open through it. Stops (with
/// its connections) when dropped.
#[derive(Debug)]
pub struct Relay {
    port: u16,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stopped: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Relay {
    /// Listens on a free loopback port and relays each connection to `target` (`host:port`).
    pub fn start(target: &str) -> Relay {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
        listener.set_nonblocking(true).expect("a non-blocking listener");
        let port = listener.local_addr().expect("the relay's address").port();
        let (frozen, stopped) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let open = Arc::new(AtomicUsize::new(0));
        let (on_ice, done, target) = (Arc::clone(&frozen), Arc::clone(&stopped), target.to_owned());
        let counted = Arc::clone(&open);
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let Ok(server) = std::net::TcpStream::connect(&target) else { continue };
                        // Accepted sockets may inherit the listener's non-blocking mode (on some systems).
                        let _ = client.set_nonblocking(false);
                        for socket in [&client, &server] {
                            let _ = socket.set_nodelay(true);
                            let _ = socket.set_write_timeout(Some(Duration::from_secs(1)));
                        }
                        // Open until the client's side ends (its close, or the broker's, which shuts it down).
                        counted.fetch_add(1, Ordering::SeqCst);
                        for (upstream, from, to) in [(true, &client, &server), (false, &server, &client)] {
                            let (from, to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                            let (on_ice, done, counted) =
                                (Arc::clone(&on_ice), Arc::clone(&done), Arc::clone(&counted));
                            std::thread::spawn(move || {
                                pump(from, to, &on_ice, &done);
                                if upstream {
                                    counted.fetch_sub(1, Ordering::SeqCst);
                                }
                            });
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Relay { port, frozen, stopped, open }
    }

    /// `host:port` of the broker behind `url` (`amqp://[user:password@]host[:port]/vhost`), and `url` with the
    /// relay in front of that broker instead.
    pub fn in_front_of(url: &str) -> (Relay, String) {
        let authority = url.split("://").nth(1).and_then(|rest| rest.split('/').next()).expect("a broker URL");
        let broker = authority.rsplit('@').next().unwrap_or(authority);
        let relay = Relay::start(&if broker.contains(':') { broker.to_owned() } else { format!("{broker}:5672") });
        let relayed = url.replacen(broker, &format!("127.0.0.1:{}", relay.port()), 1);
        (relay, relayed)
    }

    /// How many connections are open through the relay: accepted, and not yet closed by either end.
    pub fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The relay's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops forwarding (`true`) or forwards again, including what was held back (`false`).
    pub fn freeze(&self, frozen: bool) {
        self.frozen.store(frozen, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stopped.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Copies `from` to `to` until either closes or the relay stops; holds everything while frozen.
fn pump(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    frozen: &std::sync::atomic::AtomicBool,
    stopped: &std::sync::atomic::AtomicBool,
) {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering::Relaxed;
    let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buffer = vec![0; 64 * 1024];
    while !stopped.load(Relaxed) {
        if frozen.load(Relaxed) {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                while frozen.load(Relaxed) && !stopped.load(Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// Publishes the events `event(seq)` for `seqs` through `bus`, 64 at a time (one lane per residue), recording
/// each as sent and then as confirmed or failed in `ledger`.
pub async fn publish_lanes<E: warren::Event + Send + Sync + 'static>(
    bus: &warren::Bus,
    seqs: std::ops::Range<i64>,
    ledger: &std::sync::Arc<Ledger>,
    event: fn(i64) -> E,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..64 {
        let (bus, ledger) = (bus.clone(), std::sync::Arc::clone(ledger));
        tasks.spawn(async move {
            let mut seq = seqs.start + lane;
            while seq < seqs.end {
                ledger.sent(seq);
                let confirmed = bus.publish(&event(seq)).await.is_ok();
                ledger.published(seq, confirmed);
                seq += 64;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}
