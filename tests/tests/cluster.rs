//! Failover on a three-node RabbitMQ cluster: nothing confirmed is lost when a node goes down.
//!
//! The test starts its own cluster of private nodes (`warren-ct1..3@localhost`, AMQP on 127.0.0.1:5691-5693,
//! distribution on 25691-25693, so it never collides with `cargo xtask cluster` on 5681-5683 nor touches the
//! system broker), makes a private vhost, runs the scenarios of issue 30 one after another, and removes the
//! cluster. One `#[test]` runs them all, so the cluster's start (about 20 s) is paid once.
//!
//! Events are `gametrade.v1.PaymentCompleted`, whose contract asks for quorum queues; the sequence number is
//! its `trade_id`. Every scenario keeps a sequence ledger and prints it (`ledger <scenario>: sent … confirmed …
//! failed … consumed … duplicates … lost …`); lost must be 0. Each is bounded in count and in time.
//!
//! Counts: 20,000 publishes where the issue says so (the publisher's node stopping), 10,000 for the other
//! stop-one-node scenarios, and fewer where the cluster has lost its quorum: together they keep this file
//! within about four minutes on a two-core machine.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use warren::{Bus, BusConfig, Error, HandlerError};
use warren_brokers::{Cluster, NodeSpec};
use warren_contracts::at::v1::{IntSumRequest, IntSummatorClient, IntSummatorServer};
use warren_contracts::gametrade::v1::PaymentCompleted;
use warren_tests::faults::{Ledger, publish_lanes};
use warren_tests::{RiskDesk, Summator, unique, within};

/// The test cluster's nodes: names, and the first AMQP port (distribution ports are 20000 above).
const PREFIX: &str = "warren-ct";
const FIRST_PORT: u16 = 5691;

type Shared = Arc<Mutex<Cluster>>;

/// Warnings (reconnections, re-subscriptions) go to the test's output, to read alongside the ledger.
fn logs() {
    let _ = tracing_subscriber::fmt().with_env_filter("warren=info").with_test_writer().try_init();
}

/// Runs `f` on the cluster on a blocking thread (the CLI tools take seconds).
async fn on_cluster<T: Send + 'static>(cluster: &Shared, f: impl FnOnce(&mut Cluster) -> T + Send + 'static) -> T {
    let cluster = Arc::clone(cluster);
    tokio::task::spawn_blocking(move || f(&mut cluster.lock().unwrap())).await.expect("the cluster task ran")
}

/// Stops node `i`, timing it.
async fn stop(cluster: &Shared, i: usize) {
    let started = Instant::now();
    on_cluster(cluster, move |c| c.stop(i)).await.unwrap_or_else(|e| panic!("stopping node {i}: {e}"));
    println!("node {i} stopped in {:?}", started.elapsed());
}

/// Starts node `i` again on its data and waits until the whole cluster runs.
async fn start_again(cluster: &Shared, i: usize) {
    let started = Instant::now();
    on_cluster(cluster, move |c| {
        c.start_again(i)?;
        c.await_all_running(Duration::from_secs(60))
    })
    .await
    .unwrap_or_else(|e| panic!("start RabbitMQ: starting node {i} again: {e}"));
    println!("node {i} back in the cluster in {:?}", started.elapsed());
}

/// A bus on the cluster's vhost whose address list starts at node `first`: it connects there, and on loss
/// recovers through the others.
async fn bus_on(cluster: &Shared, vhost: &str, first: usize, service: &str, publish_timeout: Duration) -> Bus {
    let url = cluster.lock().unwrap().url_from(first, vhost);
    let config = BusConfig::new(&url)
        .expect("the cluster URL is valid")
        .service_name(service)
        .connect_timeout(Duration::from_secs(10))
        .publish_timeout(publish_timeout);
    let shown = config.redacted_url();
    let bus = Bus::with_config(config)
        .await
        .unwrap_or_else(|error| panic!("start RabbitMQ: no node of the test cluster answered at {shown}: {error}"));
    let address = cluster.lock().unwrap().node(first).address();
    assert_eq!(bus.health().node(), Some(address.as_str()), "{service}'s health names its node");
    for role in ["publish", "consume"] {
        let on = node_of(cluster, vhost, service, role).await;
        assert_eq!(on, Some(first), "{service} connects ({role}) to the first address of its list: {:?}", bus.health());
    }
    bus
}

/// Which node the `role` (`publish` or `consume`) connection of the bus of `service` is on, as the cluster
/// sees it (`rabbitmqctl list_connections`: the server port of the connection named `warren:<service>:<role>`);
/// `None` while it has none.
async fn node_of(cluster: &Shared, vhost: &str, service: &str, role: &str) -> Option<usize> {
    let (vhost, name) = (vhost.to_owned(), format!("\"warren:{service}:{role}\""));
    on_cluster(cluster, move |c| {
        let listed =
            c.ctl(&["list_connections", "-q", "--no-table-headers", "vhost", "port", "client_properties"]).ok()?;
        let port = listed.lines().find_map(|line| {
            let mut columns = line.splitn(3, '\t');
            let (on, port, properties) = (columns.next()?, columns.next()?, columns.next()?);
            (on == vhost && properties.contains(&name)).then(|| port.trim().parse::<u16>().ok())?
        })?;
        c.nodes().iter().position(|node| node.amqp_port() == port)
    })
    .await
}

/// Waits (up to 60 s) until the `role` connection of `service` is on a node other than `gone`; which node, and
/// how long that took from `since`.
async fn until_moved_off(
    cluster: &Shared,
    vhost: &str,
    (service, role): (&str, &str),
    gone: usize,
    since: Instant,
) -> (usize, Duration) {
    within(60, "the bus to reconnect to another node", async {
        loop {
            match node_of(cluster, vhost, service, role).await {
                Some(node) if node != gone => return (node, since.elapsed()),
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
    .await
}

fn event(seq: i64) -> PaymentCompleted {
    PaymentCompleted { payment_id: format!("payment-{seq}"), trade_id: seq, ..Default::default() }
}

/// The index of the node leading quorum queue `queue`.
async fn leader_of(cluster: &Shared, vhost: &str, queue: &str) -> warren_brokers::Result<usize> {
    let (vhost, queue) = (vhost.to_owned(), queue.to_owned());
    on_cluster(cluster, move |c| c.leader_of(&vhost, &queue)).await
}

/// A subscriber (prefetch 256) in group `group` that records every delivery in the ledger.
async fn recording(bus: &Bus, group: &str, ledger: &Arc<Ledger>) -> warren::Subscription {
    let ledger = Arc::clone(ledger);
    PaymentCompleted::subscribe(bus, group)
        .prefetch(256)
        .handle(move |event: PaymentCompleted, _| {
            ledger.consumed(event.trade_id);
            std::future::ready(Ok::<_, HandlerError>(()))
        })
        .await
        .expect("subscribe")
}

/// The quorum queue `queue` has a replica on each of the three nodes.
async fn assert_three_members(cluster: &Shared, vhost: &str, queue: &str) {
    let (vhost, queue) = (vhost.to_owned(), queue.to_owned());
    let members = on_cluster(cluster, move |c| c.members_of(&vhost, &queue)).await.expect("list_queues members");
    assert_eq!(members.len(), 3, "the quorum queue is replicated on every node: {members:?}");
}

/// One stop-a-node scenario: the group's quorum queue declared from node `declare_on` (so that node leads it:
/// RabbitMQ places a new queue's leader on the declaring client's node), a publisher on node `publisher`, a
/// consumer on node `consumer`, `n` confirmed publishes; node `victim` (or, if `None`, the queue's leader) stops
/// once `at` are confirmed, and comes back after the run.
struct StopOne {
    name: &'static str,
    declare_on: usize,
    publisher: usize,
    consumer: usize,
    victim: Option<usize>,
    n: i64,
    at: usize,
}

async fn stop_one(cluster: &Shared, vhost: &str, s: StopOne) {
    let started = Instant::now();
    let group = unique("cluster");
    if s.declare_on != s.consumer {
        let declaring = bus_on(cluster, vhost, s.declare_on, "cluster-declare", Duration::from_secs(10)).await;
        recording(&declaring, &group, &Arc::new(Ledger::default())).await.stop().await;
        declaring.shutdown(Duration::from_secs(5)).await.expect("the declaring bus shuts down");
    }
    let publisher = bus_on(cluster, vhost, s.publisher, "cluster-publisher", Duration::from_secs(60)).await;
    let consumer = bus_on(cluster, vhost, s.consumer, "cluster-consumer", Duration::from_secs(60)).await;
    let ledger = Arc::new(Ledger::default());
    let subscription = recording(&consumer, &group, &ledger).await;
    let queue = subscription.queue().to_owned();
    assert_three_members(cluster, vhost, &queue).await;
    let leader = leader_of(cluster, vhost, &queue).await.expect("the queue has a leader");
    let victim = s.victim.unwrap_or(leader);
    println!(
        "{}: publisher on node {}, consumer on node {}, queue led by node {leader}; node {victim} will stop",
        s.name, s.publisher, s.consumer
    );
    let publishing = tokio::spawn({
        let (bus, ledger, n) = (publisher.clone(), Arc::clone(&ledger), s.n);
        async move { publish_lanes(&bus, 0..n, &ledger, event).await }
    });
    ledger.until_confirmed(s.at).await;
    let fault = Instant::now();
    stop(cluster, victim).await;
    for (who, bus, was) in [("publisher", &publisher, s.publisher), ("consumer", &consumer, s.consumer)] {
        if was == victim {
            let (service, role) =
                if who == "publisher" { ("cluster-publisher", "publish") } else { ("cluster-consumer", "consume") };
            let (now, took) = until_moved_off(cluster, vhost, (service, role), victim, fault).await;
            println!(
                "{}: the {who} moved from node {victim} to node {now} {took:?} after the fault ({:?})",
                s.name,
                bus.health()
            );
        }
    }
    within(180, "publishing", publishing).await.unwrap();
    ledger.drain(Duration::from_secs(60)).await;
    let verdict = ledger.assert_nothing_lost(s.name);
    assert_eq!(verdict.confirmed as i64, s.n, "{}: every publish was confirmed in the end", s.name);
    // The node brought back may not answer `rabbitmqctl` at once: a few tries, then a failure.
    let mut leader = leader_of(cluster, vhost, &queue).await;
    for _ in 0..15 {
        if leader.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        leader = leader_of(cluster, vhost, &queue).await;
    }
    let leader = leader.unwrap_or_else(|e| panic!("{}: the queue's leader: {e}", s.name));
    assert_ne!(leader, victim, "{}: a stopped node does not lead the queue", s.name);
    println!("{}: queue led by node {leader} after the fault", s.name);
    subscription.stop().await;
    publisher.shutdown(Duration::from_secs(5)).await.expect("the publisher shuts down");
    consumer.shutdown(Duration::from_secs(5)).await.expect("the consumer shuts down");
    start_again(cluster, victim).await;
    println!("{} took {:?}", s.name, started.elapsed());
}

/// Two of three nodes stop, so the queue loses its quorum: publishes wait, then fail with a timeout at the
/// publish deadline; nothing confirmed is lost; once one node returns everything works again.
async fn quorum_lost(cluster: &Shared, vhost: &str) {
    let name = "two of three nodes stopped";
    let started = Instant::now();
    let deadline = Duration::from_secs(5);
    let bus = bus_on(cluster, vhost, 0, "cluster-quorum", deadline).await;
    let ledger = Arc::new(Ledger::default());
    let subscription = recording(&bus, &unique("cluster"), &ledger).await;
    assert_three_members(cluster, vhost, subscription.queue()).await;
    publish_lanes(&bus, 0..2_000, &ledger, event).await;
    assert_eq!(ledger.confirmed(), 2_000, "{name}: all confirmed while the cluster is whole");
    stop(cluster, 1).await;
    stop(cluster, 2).await;
    // Without a quorum nothing can be confirmed: each publish fails at its deadline with a timeout.
    let waiting = Instant::now();
    let attempts = (2_000..2_100).map(|seq| {
        ledger.sent(seq);
        let bus = bus.clone();
        async move { (seq, bus.publish(&event(seq)).await) }
    });
    let outcomes = within(60, "publishes without a quorum to end", futures_util::future::join_all(attempts)).await;
    let took = waiting.elapsed();
    for (seq, outcome) in &outcomes {
        ledger.published(*seq, outcome.is_ok());
    }
    let errors: Vec<&Error> = outcomes.iter().filter_map(|(_, outcome)| outcome.as_ref().err()).collect();
    println!("{name}: {} publishes without a quorum ended after {took:?}; e.g. {:?}", outcomes.len(), errors.first());
    assert_eq!(errors.len(), outcomes.len(), "{name}: nothing is confirmed without a quorum");
    assert!(
        errors.iter().all(|e| matches!(e, Error::Timeout { .. })),
        "{name}: each failed at its deadline: {}",
        errors[0]
    );
    assert!(
        took >= deadline && took < deadline * 3,
        "{name}: they failed at the deadline, not before nor long after: {took:?}"
    );
    // One node back: a quorum again, and publishing resumes.
    start_again_alone(cluster, 1).await;
    let resumed = Instant::now();
    within(60, "a publish to be confirmed once the quorum is back", async {
        let mut seq = 2_100;
        loop {
            ledger.sent(seq);
            let confirmed = bus.publish(&event(seq)).await.is_ok();
            ledger.published(seq, confirmed);
            seq += 1;
            if confirmed {
                break;
            }
        }
    })
    .await;
    println!("{name}: publishes confirmed again {:?} after the node returned", resumed.elapsed());
    publish_lanes(&bus, 3_000..5_000, &ledger, event).await;
    ledger.drain(Duration::from_secs(60)).await;
    let verdict = ledger.assert_nothing_lost(name);
    assert!(verdict.confirmed >= 4_000, "{name}: the publishes after the quorum returned were confirmed");
    subscription.stop().await;
    bus.shutdown(Duration::from_secs(5)).await.expect("the bus shuts down");
    start_again(cluster, 2).await;
    println!("{name} took {:?}", started.elapsed());
}

/// Starts node `i` again without waiting for the others (some are down on purpose).
async fn start_again_alone(cluster: &Shared, i: usize) {
    let started = Instant::now();
    on_cluster(cluster, move |c| c.start_again(i))
        .await
        .unwrap_or_else(|e| panic!("start RabbitMQ: starting node {i} again: {e}"));
    println!("node {i} started again in {:?}", started.elapsed());
}

/// A caller that calls in a loop until finished, counting calls answered right, answered wrong and failed.
struct Calls {
    counts: Arc<[AtomicU64; 3]>,
    calling: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Calls {
    const ANSWERED: usize = 0;
    const WRONG: usize = 1;
    const FAILED: usize = 2;

    /// Calls `call(n)` for n = 1, 2, …: `Ok(true)` is a right answer, `Ok(false)` a wrong one, `Err` a failure.
    fn start<F, Fut>(call: F) -> Calls
    where
        F: Fn(i64) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<bool, warren::Status>> + Send,
    {
        let counts: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
        let calling = Arc::new(AtomicBool::new(true));
        let task = tokio::spawn({
            let (counts, calling) = (Arc::clone(&counts), Arc::clone(&calling));
            async move {
                let mut n = 0;
                while calling.load(Ordering::Relaxed) {
                    n += 1;
                    let kind = match call(n).await {
                        Ok(true) => Calls::ANSWERED,
                        Ok(false) => Calls::WRONG,
                        Err(_) => Calls::FAILED,
                    };
                    counts[kind].fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Calls { counts, calling, task }
    }

    fn answered(&self) -> u64 {
        self.counts[Calls::ANSWERED].load(Ordering::Relaxed)
    }

    /// Waits (up to `secs`) until `more` calls more than now are answered.
    async fn until_answered(&self, more: u64, secs: u64, what: &str) {
        let target = self.answered() + more;
        within(secs, what, async {
            while self.answered() < target {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }

    /// Stops calling; prints the ledger of scenario `name` and checks that no call got another's answer.
    async fn finish(self, name: &str) -> [u64; 3] {
        self.calling.store(false, Ordering::Relaxed);
        within(10, "the caller to stop", self.task).await.unwrap();
        let [answered, wrong, failed] =
            [Calls::ANSWERED, Calls::WRONG, Calls::FAILED].map(|i| self.counts[i].load(Ordering::Relaxed));
        println!(
            "ledger {name}: calls {} answered {answered} failed {failed} wrong {wrong}",
            answered + failed + wrong
        );
        assert_eq!(wrong, 0, "{name}: no call gets another call's answer");
        [answered, wrong, failed]
    }
}

/// An RPC server on node 0 and its caller on node 1; the server's node restarts. `at.v1.IntSummator`'s request
/// queue is a classic queue, on node 0: calls during the outage fail (at the call deadline); calls after it
/// succeed; no call gets a wrong answer.
async fn rpc_across_a_restart(cluster: &Shared, vhost: &str) {
    let name = "RPC server's node restarts";
    let started = Instant::now();
    let server_bus = bus_on(cluster, vhost, 0, "cluster-rpc-server", Duration::from_secs(10)).await;
    let client_bus = bus_on(cluster, vhost, 1, "cluster-rpc-client", Duration::from_secs(10)).await;
    let serving = IntSummatorServer::new(Summator).serve(&server_bus).await.expect("serve");
    let client = IntSummatorClient::new(&client_bus).with_timeout(Duration::from_secs(2));
    let calls = Calls::start(move |a| {
        let client = client.clone();
        async move { client.int_sum(IntSumRequest { a, b: 1 }).await.map(|reply| reply.sum == a + 1).map_err(status) }
    });
    calls.until_answered(200, 30, "calls to be answered").await;
    let fault = Instant::now();
    stop(cluster, 0).await;
    let (now, took) = until_moved_off(cluster, vhost, ("cluster-rpc-server", "consume"), 0, fault).await;
    println!("{name}: the server moved to node {now} {took:?} after the fault ({:?})", server_bus.health());
    tokio::time::sleep(Duration::from_secs(2)).await;
    start_again(cluster, 0).await;
    calls.until_answered(200, 60, "calls to be answered again after the restart").await;
    println!("{name}: calls answered again {:?} after the fault", fault.elapsed());
    calls.finish(name).await;
    serving.stop().await;
    client_bus.shutdown(Duration::from_secs(5)).await.expect("the client shuts down");
    server_bus.shutdown(Duration::from_secs(5)).await.expect("the server shuts down");
    println!("{name} took {:?}", started.elapsed());
}

/// `trading.v1.RiskGate`, whose request queue is a quorum queue: servers on nodes 0 and 1 (node 0's declares
/// the queue, so node 0 leads it), the caller on node 2. Node 0 stops: a new leader is elected, node 0's
/// server moves to another node, and calls are answered again while node 0 is still down (a classic queue
/// would wait for its node, as the scenario above shows).
async fn rpc_on_a_quorum_queue_while_its_leader_is_down(cluster: &Shared, vhost: &str) {
    use warren_contracts::trading::v1::{OrderCheck, RiskGateClient, RiskGateServer};
    let name = "RPC quorum queue's leader stopped";
    let started = Instant::now();
    let first = bus_on(cluster, vhost, 0, "cluster-risk-0", Duration::from_secs(10)).await;
    let first_serving = RiskGateServer::new(RiskDesk).serve(&first).await.expect("serve on node 0");
    assert_eq!(leader_of(cluster, vhost, "trading.risk-gate").await.expect("the queue's leader"), 0);
    let second = bus_on(cluster, vhost, 1, "cluster-risk-1", Duration::from_secs(10)).await;
    let second_serving = RiskGateServer::new(RiskDesk).serve(&second).await.expect("serve on node 1");
    let client_bus = bus_on(cluster, vhost, 2, "cluster-risk-client", Duration::from_secs(10)).await;
    let client = RiskGateClient::new(&client_bus).with_timeout(Duration::from_secs(2));
    let calls = Calls::start(move |n| {
        let client = client.clone();
        // Orders alternate between approved and refused, so each answer is checked against its own question.
        let quantity = if n % 2 == 0 { 1.0 } else { 1_000_000.0 };
        let order = OrderCheck { symbol: format!("S{n}"), side: 1, quantity, price: 10.0 };
        async move {
            let verdict = client.check_order(order).await.map_err(status)?;
            Ok(verdict.approved == (quantity * 10.0 <= RiskDesk::LIMIT))
        }
    });
    calls.until_answered(200, 30, "calls to be answered").await;
    let fault = Instant::now();
    stop(cluster, 0).await;
    calls.until_answered(200, 60, "calls to be answered with node 0 down").await;
    let leader = leader_of(cluster, vhost, "trading.risk-gate").await.expect("a new leader");
    println!("{name}: answered again {:?} after the fault, node {leader} leads the queue", fault.elapsed());
    assert!(on_cluster(cluster, |c| !c.is_up(0)).await, "{name}: node 0 was still down while calls were answered");
    assert_ne!(leader, 0);
    start_again(cluster, 0).await;
    calls.finish(name).await;
    for serving in [first_serving, second_serving] {
        serving.stop().await;
    }
    for bus in [client_bus, first, second] {
        bus.shutdown(Duration::from_secs(5)).await.expect("the bus shuts down");
    }
    println!("{name} took {:?}", started.elapsed());
}

/// A call's failure as a status, for [`Calls`].
fn status<E: std::fmt::Display>(error: E) -> warren::Status {
    warren::Status::unavailable(error.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_loses_nothing_when_nodes_stop() {
    logs();
    let started = Instant::now();
    let cluster: Shared = tokio::task::spawn_blocking(|| {
        let specs = Cluster::specs(PREFIX, FIRST_PORT, 3);
        // Nodes of ours left running by an earlier run that was killed would make the start fail.
        let stale = Cluster::attach(specs.clone());
        if (0..3).any(|i| stale.is_up(i)) {
            println!("removing nodes {PREFIX}1..3 left running by an earlier run");
        }
        stale.remove().unwrap_or_else(|e| panic!("start RabbitMQ: removing stale test nodes: {e}"));
        let specs: Vec<NodeSpec> = specs.into_iter().map(|s| s.config("consumer_timeout = 60000")).collect();
        Cluster::start_nodes(specs).unwrap_or_else(|e| panic!("{e}"))
    })
    .await
    .map(|c| Arc::new(Mutex::new(c)))
    .expect("the cluster starts");
    println!("cluster of 3 started in {:?}", started.elapsed());
    let vhost = unique("cluster");
    on_cluster(&cluster, {
        let vhost = vhost.clone();
        move |c| {
            c.ctl(&["add_vhost", &vhost])?;
            c.ctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"])
        }
    })
    .await
    .expect("a private vhost on the cluster");

    // Each queue is declared from a node of its own choosing, so that node leads it and only the fault named
    // is tested: the publisher's node, the consumer's node, then the leader's (where neither client is).
    // The last scenario is the consumer's own node stopping when that node also declared the group's queues,
    // its dead-letter queue included: a quorum queue like the consumer queue (a classic one would live on that
    // node alone, and declaring it again from another node would fail with "home node … is down", so the
    // consumer could not resume anywhere until its node returned; measured before side queues became quorum
    // queues).
    let scenarios = [
        StopOne {
            name: "publisher's node stopped",
            declare_on: 1,
            publisher: 0,
            consumer: 1,
            victim: Some(0),
            n: 20_000,
            at: 5_000,
        },
        StopOne {
            name: "consumer's node stopped",
            declare_on: 1,
            publisher: 0,
            consumer: 2,
            victim: Some(2),
            n: 10_000,
            at: 3_000,
        },
        StopOne {
            name: "consumer's node stopped, the node that declared its queues",
            declare_on: 2,
            publisher: 0,
            consumer: 2,
            victim: Some(2),
            n: 5_000,
            at: 1_500,
        },
        StopOne {
            name: "quorum queue's leader stopped",
            declare_on: 0,
            publisher: 1,
            consumer: 2,
            victim: None,
            n: 10_000,
            at: 3_000,
        },
    ];
    for scenario in scenarios {
        stop_one(&cluster, &vhost, scenario).await;
    }
    quorum_lost(&cluster, &vhost).await;
    rpc_across_a_restart(&cluster, &vhost).await;
    rpc_on_a_quorum_queue_while_its_leader_is_down(&cluster, &vhost).await;

    let cluster = Arc::try_unwrap(cluster).expect("nothing else holds the cluster").into_inner().unwrap();
    tokio::task::spawn_blocking(move || cluster.remove()).await.unwrap().expect("the cluster stops");
    println!("all scenarios, with the cluster's start and stop, took {:?}", started.elapsed());
}
