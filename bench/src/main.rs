//! Warren's benchmarks: `cargo xtask bench [--quick] [--memory] [--only W1,W7]` builds this in release mode and
//! prints one table; `--profile NAME [--raw]` runs one workload once, for `valgrind --tool=callgrind` or `perf`.
//!
//! Each RabbitMQ workload runs for Warren and for a raw-lapin baseline written with best practice
//! (`raw.rs`), alternating the two sides round by round (A B A B …), and reports each side's median, the ratio
//! Warren / raw, and the client CPU per message. The in-memory workload (W9) does the same against a plain tokio
//! channel carrying the same events, prost-encoded (`memory.rs`). Absolute numbers depend on the machine; the
//! ratios, measured in one run, are the claim. The RabbitMQ workloads run in a vhost of their own (`vhost.rs`),
//! made with `rabbitmqctl` for the run and deleted at its end.

mod gateway;
mod measure;
mod memory;
mod raw;
mod vhost;
mod websocket;
mod workloads;

use std::time::Duration;

use measure::{Run, median, thousands};
use memory::Values;
use workloads::{Env, Side};

/// How much work each workload does.
#[derive(Debug, Clone, Copy)]
struct Scale {
    rounds: usize,
    sizes: &'static [usize],
    publish: u64,
    latency: u64,
    consume: u64,
    rpc_serial: u64,
    rpc_parallel: u64,
    fan_out: u64,
    memory_one: u64,
    memory_fan_out: u64,
    /// Seconds each WebSocket fan-out (G2, G3) publishes for.
    websocket_seconds: u64,
}

const QUICK: Scale = Scale {
    rounds: 3,
    sizes: &[100],
    publish: 20_000,
    latency: 1_000,
    consume: 20_000,
    rpc_serial: 500,
    rpc_parallel: 5_000,
    fan_out: 2_000,
    memory_one: 200_000,
    memory_fan_out: 30_000,
    websocket_seconds: 3,
};

const FULL: Scale = Scale {
    // Five, not three: two full runs of one binary five minutes apart read W7 0.89x / 0.83x and 0.94x / 0.90x;
    // a median of five rides out a slow spell that takes one or two rounds of a side.
    rounds: 5,
    sizes: &[100, 1024],
    publish: 100_000,
    latency: 5_000,
    consume: 100_000,
    rpc_serial: 2_000,
    rpc_parallel: 20_000,
    fan_out: 10_000,
    memory_one: 1_000_000,
    memory_fan_out: 200_000,
    websocket_seconds: 10,
};

/// `--cluster`: the first node of `cargo xtask cluster up`, which both sides connect to (raw lapin takes one
/// address), and its name, for `rabbitmqctl` (a vhost made there is the whole cluster's).
const CLUSTER_URL: &str = "amqp://guest:guest@127.0.0.1:5681/%2f";
const CLUSTER_NODE: &str = "warren-c1@localhost";

/// What a workload's ratio must meet.
#[derive(Debug, Clone, Copy)]
enum Goal {
    /// Warren's rate at least this fraction of raw's.
    Throughput(f64),
    /// Warren's p50 latency at most this multiple of raw's.
    Latency(f64),
}

const USAGE: &str =
    "usage: warren-bench [--quick] [--memory] [--cluster] [--only W1,W2,…] [--raw-envelope minimal|warren]
                    [--profile NAME [--raw] [--messages N] [--payload 1024]]
  --quick          a reduced set (100 B payloads, fewer messages), in under two minutes
  --memory         only W9, the in-memory transport (no broker needed); the same as --only W9
  --cluster        only W2 and W4, on the three-node cluster of `cargo xtask cluster up`, both sides on its first
                   node (RABBITMQ_URL, by default amqp://guest:guest@127.0.0.1:5681/%2f; the vhost made on
                   warren-c1@localhost), with quorum queues on both sides (W4 with PaymentCompleted events,
                   whose contract asks for quorum queues)
  --only W1,W7     only the workloads named (W1–W9; W2o, W4o, W7o: W2, W4, W7 with trace context and Prometheus;
                   G1: the gateway's HTTP publish against the bus publishing directly; G2, G3: the gateway's
                   WebSocket fan-out to 1,000 clients, G3 with 10 of them never reading)
  --raw-envelope   what raw lapin's messages carry: minimal (the default: message id, type, content type,
                   persistence, as a hand-written service would; RPC requests a correlation id, reply-to
                   and type) or warren (Warren's whole envelope: also app id, timestamp and the schema
                   header; RPC requests also a TTL and the x-warren-deadline header, replies an app id
                   and content type; the same bytes as Warren's)
  --profile NAME   run one workload once and exit, for a profiler: one, fan-out, fan-out-shared (W9, in memory) or W1–W8
                   (Warren's side, 100 B, the --quick size; with --raw, the raw-lapin side, or for W9 the
                   tokio-channel baseline)
  --messages N     with --profile: N messages (W7, fan-out, fan-out-shared: N publishes) rather than the usual
                   size (one: 20,000, the fan-outs: 5,000, W1–W8: the --quick size), so that a sampling
                   profiler sees the workload rather than its setup
  --payload 1024   with --profile W1–W8: payloads of that many bytes rather than 100
  --ws-rate N      G2, G3: publish N events a second rather than 1,000
The RabbitMQ workloads (W1–W8) run in a vhost of their own on RABBITMQ_URL's broker (default: the local one),
made with rabbitmqctl for the run and deleted at its end: run them on the broker's host.";

/// The number after option `name`, within `range`.
fn in_range(name: &str, value: Option<String>, range: std::ops::RangeInclusive<u64>) -> Result<u64, String> {
    let value = value.unwrap_or_default();
    value
        .parse()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| format!("{name} takes a number from {} to {}, not \"{value}\"", range.start(), range.end()))
}

/// What the command line asked for.
#[derive(Debug, Default)]
struct Args {
    quick: bool,
    memory: bool,
    /// `--cluster`: W2 and W4 on `cargo xtask cluster`'s nodes, with quorum queues.
    cluster: bool,
    only: Option<Vec<String>>,
    profile: Option<String>,
    raw: bool,
    warrens_envelope: bool,
    /// `--messages`: the profiled run's size.
    messages: Option<u64>,
    /// `--payload`: the profiled run's payload size in bytes.
    payload: Option<usize>,
    /// `--ws-rate`: events a second for G2 and G3 instead of the 1,000.
    ws_rate: Option<u64>,
}

impl Args {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut parsed = Args::default();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => parsed.quick = true,
                "--memory" => parsed.memory = true,
                "--cluster" => parsed.cluster = true,
                "--raw" => parsed.raw = true,
                "--raw-envelope" => match args.next().as_deref() {
                    Some("minimal") => parsed.warrens_envelope = false,
                    Some("warren") => parsed.warrens_envelope = true,
                    other => {
                        return Err(format!(
                            "--raw-envelope takes minimal or warren, not {}",
                            other.unwrap_or("nothing")
                        ));
                    }
                },
                "--only" | "--profile" => {
                    let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
                    if arg == "--only" {
                        let names: Vec<String> = value.split(',').map(|w| w.trim().to_uppercase()).collect();
                        let other = |w: &str| ["W9", "G2", "G3"].contains(&w);
                        if let Some(bad) = names.iter().find(|w| rabbitmq(w).is_none() && !other(w)) {
                            return Err(format!("--only: no workload \"{bad}\" (W1–W9, W2o, W4o, W7o, G1–G3)"));
                        }
                        parsed.only = Some(names);
                    } else {
                        let name = value.to_uppercase();
                        let known =
                            ["ONE", "FAN-OUT", "FAN-OUT-SHARED"].contains(&name.as_str()) || rabbitmq(&name).is_some();
                        if !known {
                            return Err(format!(
                                "--profile: no workload \"{value}\" (one, fan-out, fan-out-shared, W1–W8)"
                            ));
                        }
                        parsed.profile = Some(name);
                    }
                }
                "--messages" => {
                    parsed.messages = Some(in_range(&arg, args.next(), 1..=1_000_000_000)?);
                }
                "--ws-rate" => parsed.ws_rate = Some(in_range(&arg, args.next(), 1..=100_000)?),
                "--payload" => {
                    let bytes = in_range(&arg, args.next(), 12..=1 << 20)?;
                    parsed.payload = Some(usize::try_from(bytes).map_err(|e| e.to_string())?);
                }
                "-h" | "--help" => return Err(String::new()),
                other => return Err(format!("unknown argument \"{other}\"")),
            }
        }
        let profiles_rabbitmq = parsed.profile.as_deref().is_some_and(|name| rabbitmq(name).is_some());
        if parsed.payload.is_some() && !profiles_rabbitmq {
            return Err("--payload goes with --profile W1–W8".to_owned());
        }
        if parsed.messages.is_some() && parsed.profile.is_none() {
            return Err("--messages goes with --profile".to_owned());
        }
        if parsed.memory {
            parsed.only = Some(vec!["W9".to_owned()]);
        }
        if parsed.cluster {
            if parsed.memory || parsed.profile.is_some() {
                return Err("--cluster goes with neither --memory nor --profile".to_owned());
            }
            let only = parsed.only.get_or_insert_with(|| vec!["W2".to_owned(), "W4".to_owned()]);
            if let Some(other) = only.iter().find(|w| *w != "W2" && *w != "W4") {
                return Err(format!("--cluster runs W2 and W4 only, not {other}"));
            }
        }
        Ok(parsed)
    }

    /// Whether the table includes the workload whose row is `name` ("W4 consume, …").
    fn runs(&self, name: &str) -> bool {
        self.only.as_ref().is_none_or(|only| {
            let id = name.split(' ').next().unwrap_or(name);
            only.iter().any(|w| w.eq_ignore_ascii_case(id))
        })
    }
}

type Workload = fn(Env, Side) -> std::pin::Pin<Box<dyn Future<Output = Run>>>;

/// One RabbitMQ workload: its row, its goal, how many messages a run takes, and how to run one side.
struct Spec {
    /// The row's name; its first word ("W4") is what `--only` and `--profile` take.
    name: &'static str,
    goal: Goal,
    messages: fn(&Scale) -> u64,
    run: Workload,
}

impl Spec {
    fn id(&self) -> &'static str {
        self.name.split(' ').next().unwrap_or(self.name)
    }
}

/// The RabbitMQ workloads, in table order.
const RABBITMQ: [Spec; 12] = [
    Spec {
        name: "W1 publish, no confirms",
        goal: Goal::Throughput(0.9),
        messages: |s| s.publish,
        run: |e, s| Box::pin(async move { workloads::publish(&e, s, false, false).await }),
    },
    Spec {
        name: "W2 publish, confirms",
        goal: Goal::Throughput(0.9),
        messages: |s| s.publish,
        run: |e, s| Box::pin(async move { workloads::publish(&e, s, true, false).await }),
    },
    Spec {
        name: "W3 one confirm in flight (latency)",
        goal: Goal::Latency(1.1),
        messages: |s| s.latency,
        run: |e, s| Box::pin(async move { workloads::confirm_latency(&e, s).await }),
    },
    Spec {
        name: "W4 consume, prefetch 256, manual ack",
        goal: Goal::Throughput(0.9),
        messages: |s| s.consume,
        run: |e, s| Box::pin(async move { workloads::consume(&e, s).await }),
    },
    Spec {
        name: "W5 RPC, one call at a time (latency)",
        goal: Goal::Latency(1.1),
        messages: |s| s.rpc_serial,
        run: |e, s| Box::pin(async move { workloads::rpc(&e, s, 1).await }),
    },
    Spec {
        name: "W6 RPC, 64 calls in flight",
        goal: Goal::Throughput(0.9),
        messages: |s| s.rpc_parallel,
        run: |e, s| Box::pin(async move { workloads::rpc(&e, s, 64).await }),
    },
    Spec {
        name: "W7 fan-out to 10 queues (deliveries)",
        goal: Goal::Throughput(0.9),
        messages: |s| s.fan_out,
        run: |e, s| Box::pin(async move { workloads::fan_out(&e, s).await }),
    },
    Spec {
        name: "W8 persistent, durable queue, confirms",
        goal: Goal::Throughput(0.9),
        messages: |s| s.publish,
        run: |e, s| Box::pin(async move { workloads::publish(&e, s, true, true).await }),
    },
    // W2, W4 and W7 again with trace context written and a Prometheus layer counting (no exporter attached):
    // the cost of observability is the difference from the rows without `o`, in the same run.
    Spec {
        name: "W2o W2, observed (trace context + Prometheus layer)",
        goal: Goal::Throughput(0.9),
        messages: |s| s.publish,
        run: |e, s| Box::pin(async move { workloads::publish(&Env { observed: true, ..e }, s, true, false).await }),
    },
    Spec {
        name: "W4o W4, observed (trace context + Prometheus layer)",
        goal: Goal::Throughput(0.9),
        messages: |s| s.consume,
        run: |e, s| Box::pin(async move { workloads::consume(&Env { observed: true, ..e }, s).await }),
    },
    Spec {
        name: "W7o W7, observed (trace context + Prometheus layer)",
        goal: Goal::Throughput(0.9),
        messages: |s| s.fan_out,
        run: |e, s| Box::pin(async move { workloads::fan_out(&Env { observed: true, ..e }, s).await }),
    },
    // The gateway (issue 29): its baseline is not raw lapin but the bus publishing the same events directly.
    Spec {
        name: "G1 gateway: HTTP POST /events, 64 keep-alive clients (baseline: Bus::publish, 64 in flight)",
        goal: Goal::Throughput(0.5),
        messages: |s| s.rpc_parallel,
        run: |e, s| Box::pin(async move { gateway::http_publish(&e, s).await }),
    },
];

/// The RabbitMQ workload `--only` or `--profile` names.
fn rabbitmq(id: &str) -> Option<&'static Spec> {
    RABBITMQ.iter().find(|spec| spec.id().eq_ignore_ascii_case(id))
}

/// Runs one workload of one side once, for a profiler.
async fn profile(name: &str, side: Side, url: String, args: &Args) {
    let run = match name {
        "ONE" => {
            let n = args.messages.unwrap_or(20_000);
            match side {
                Side::Warren => memory::in_memory_one_subscriber(n).await,
                Side::Raw => memory::channel_one_subscriber(n).await,
            }
        }
        "FAN-OUT" | "FAN-OUT-SHARED" => {
            let values = if name == "FAN-OUT" { Values::Owned } else { Values::Shared };
            let n = args.messages.unwrap_or(5_000);
            let run = match side {
                Side::Warren => memory::in_memory_fan_out(n, 10, values).await,
                Side::Raw => memory::channel_fan_out(n, 10).await,
            };
            return println!(
                "{name} {side:?}: {} deliveries/s",
                thousands((n * 10) as f64 / run.elapsed.as_secs_f64())
            );
        }
        id => {
            let spec = rabbitmq(id).expect("names are checked when parsed");
            let n = args.messages.unwrap_or((spec.messages)(&QUICK));
            (spec.run)(Env { url, n, size: args.payload.unwrap_or(100), observed: false }, side).await
        }
    };
    println!(
        "{name} {side:?}: {}/s, {:.1} µs CPU and {:.3} context switches per message",
        thousands(run.rate()),
        run.cpu_per_message().as_secs_f64() * 1e6,
        run.switches_per_message()
    );
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(problem) => {
            if problem.is_empty() {
                println!("{USAGE}");
                return std::process::ExitCode::SUCCESS;
            }
            eprintln!("warren-bench: {problem}\n{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    let base = std::env::var("RABBITMQ_URL")
        .unwrap_or_else(|_| if args.cluster { CLUSTER_URL.to_owned() } else { warren::DEFAULT_URL.to_owned() });
    if args.cluster {
        vhost::use_node(CLUSTER_NODE);
        raw::use_quorum_queues();
    }
    if args.warrens_envelope {
        raw::send_warrens_envelope();
    }
    // `--memory` (`--only W9`) and the in-memory profiles need no broker, and so no vhost.
    let uses_rabbitmq = match &args.profile {
        Some(name) => rabbitmq(name).is_some(),
        None => RABBITMQ.iter().any(|spec| args.runs(spec.name)) || args.runs("G2 ") || args.runs("G3 "),
    };
    let vhost = if uses_rabbitmq {
        match private_vhost(&base).await {
            Ok(vhost) => Some(vhost),
            Err(problem) => {
                eprintln!("warren-bench: {problem}");
                return std::process::ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let url = vhost.as_ref().map_or(base, |vhost| vhost.url().to_owned());
    let code = tokio::select! {
        code = run(&args, url, uses_rabbitmq) => code,
        Ok(()) = tokio::signal::ctrl_c() => {
            // Tasks of the workload cut short may still run, and panic when the vhost goes: not worth a word.
            std::panic::set_hook(Box::new(|_| {}));
            let deleting = vhost.as_ref().map(|vhost| format!("; deleting vhost {}", vhost.name()));
            eprintln!("warren-bench: interrupted{}", deleting.unwrap_or_default());
            std::process::ExitCode::from(130)
        }
    };
    // Dropping the vhost deletes it, also when a workload panics (the panic unwinds through here).
    drop(vhost);
    code
}

/// Runs what `args` asks for, on the broker at `url` (or in memory).
async fn run(args: &Args, url: String, uses_rabbitmq: bool) -> std::process::ExitCode {
    if let Some(name) = &args.profile {
        profile(name, if args.raw { Side::Raw } else { Side::Warren }, url, args).await;
        return std::process::ExitCode::SUCCESS;
    }
    let scale = if args.quick { QUICK } else { FULL };
    println!(
        "Warren benchmarks: {} rounds per side, alternating, median shown; CPU is client CPU per message, \
         switches the client's context switches per message (Warren / raw).",
        scale.rounds
    );
    if args.cluster {
        println!(
            "On a three-node RabbitMQ cluster (`cargo xtask cluster up`), every queue a quorum queue, both sides \
             connected to its first node (127.0.0.1:5681 unless RABBITMQ_URL says otherwise)."
        );
    }
    if args.warrens_envelope {
        println!(
            "Raw lapin's messages carry Warren's whole envelope (--raw-envelope warren): both sides send the same bytes."
        );
    }
    println!();
    println!(
        "| workload | payload | Warren | raw lapin | Warren / raw | CPU/msg Warren | CPU/msg raw | switches/msg | goal |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
    let sizes: &[usize] = if uses_rabbitmq { scale.sizes } else { &[] };
    for &size in sizes {
        for spec in RABBITMQ.iter().filter(|spec| args.runs(spec.name)) {
            let env = Env { url: url.clone(), n: (spec.messages)(&scale), size, observed: false };
            compare(spec, &env, scale.rounds).await;
        }
    }
    if uses_rabbitmq && (args.runs("G2 ") || args.runs("G3 ")) {
        websocket_rows(args, &url, &scale).await;
    }
    if args.runs("W9 ") {
        // In memory a round takes about a second, and the machine's speed drifts over seconds: more rounds, with
        // the variants and their baselines taking turns (as the two sides do above), so a slow spell hits each a
        // little. The baseline of the `shared()` subscribers is the fan-out's: the same events to ten tasks.
        let rounds = scale.rounds.max(9);
        let n = scale.memory_fan_out;
        let (mut one, mut one_raw) = (Vec::new(), Vec::new());
        let (mut fan, mut fan_raw, mut shared) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            one.push(memory::in_memory_one_subscriber(scale.memory_one).await);
            one_raw.push(memory::channel_one_subscriber(scale.memory_one).await);
            fan.push(memory::in_memory_fan_out(n, 10, Values::Owned).await);
            fan_raw.push(memory::channel_fan_out(n, 10).await);
            shared.push(memory::in_memory_fan_out(n, 10, Values::Shared).await);
        }
        let goal = Some(0.5);
        let one_name = "W9 in-memory publish → handler, 1 subscriber (raw: tokio `mpsc`, 256)";
        memory_row(one_name, 1, &one, &one_raw, "events/s", goal);
        let fan_name = "W9 in-memory topic exchange → 10 subscribers (raw: tokio `broadcast`)";
        memory_row(fan_name, 1, &fan, &fan_raw, "events/s", goal);
        memory_row("W9 … the same, counted per delivery", 10, &fan, &fan_raw, "deliveries/s", None);
        memory_row("W9 … 10 `shared()` subscribers (one `Arc` value)", 1, &shared, &fan_raw, "events/s", goal);
    }
    std::process::ExitCode::SUCCESS
}

/// G2 and G3: the gateway's WebSocket fan-out, one run each (a run is many seconds of 1,000 clients), in a
/// table of their own: their measure is not a ratio to raw lapin but whether every message reached every client
/// in time, within the memory goal.
async fn websocket_rows(args: &Args, url: &str, scale: &Scale) {
    println!();
    println!(
        "| workload | clients | events/s | delivered / expected | deliveries/s | p50 | p99 | p99.9 | gateway RSS | goal |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    let rate = args.ws_rate.unwrap_or(1_000);
    let rows = [
        (
            "G2",
            "G2 WebSocket fan-out, user.*",
            websocket::FanOut { readers: 1_000, stalled: 0, rate, seconds: scale.websocket_seconds },
        ),
        (
            "G3",
            "G3 … 10 of them never read",
            websocket::FanOut { readers: 990, stalled: 10, rate, seconds: scale.websocket_seconds },
        ),
    ];
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    for (id, name, run) in rows {
        if !args.runs(&format!("{id} ")) {
            continue;
        }
        match websocket::fan_out(url, run).await {
            Ok(r) => {
                let all = r.delivered == r.expected && r.readers_closed == 0;
                let on_time = r.latency[1] <= Duration::from_millis(50);
                let small = r.gateway_rss_mib <= 200.0;
                let slow = if run.stalled > 0 {
                    format!(
                        "; {}/{} stalled closed as slow {}",
                        r.closed_slow,
                        run.stalled,
                        tick(r.closed_slow == run.stalled)
                    )
                } else {
                    String::new()
                };
                println!(
                    "| {name} | {} + {} | {} | {} / {} ({} published) | {}/s | {} | {} | {} | {:.0} MiB | every message {}; p99 ≤ 50 ms {}; RSS ≤ 200 MiB {}{slow} |",
                    run.readers,
                    run.stalled,
                    run.rate,
                    thousands(r.delivered as f64),
                    thousands(r.expected as f64),
                    thousands(r.published as f64),
                    thousands(r.rate),
                    ms(r.latency[0]),
                    ms(r.latency[1]),
                    ms(r.latency[2]),
                    r.gateway_rss_mib,
                    tick(all),
                    tick(on_time),
                    tick(small),
                );
            }
            Err(problem) => println!("| {name} | — | — | failed: {problem} | | | | | | ✘ |"),
        }
    }
}

fn tick(ok: bool) -> &'static str {
    if ok { "✔" } else { "✘" }
}

/// Makes the run's vhost on the broker at `base` (see `vhost.rs`), checks that it can be reached there, and says
/// which it is.
async fn private_vhost(base: &str) -> Result<vhost::Vhost, String> {
    let redacted = |url: &str| warren::BusConfig::new(url).map(|config| config.redacted_url());
    redacted(base).map_err(|error| format!("RABBITMQ_URL: {error}"))?;
    let base = base.to_owned();
    let vhost = tokio::task::spawn_blocking(move || vhost::Vhost::create(&base)).await.map_err(|e| e.to_string())??;
    let shown = redacted(vhost.url()).map_err(|error| format!("the vhost's URL: {error}"))?;
    match lapin::Connection::connect(vhost.url(), lapin::ConnectionProperties::default()).await {
        Ok(connection) => {
            let _ = connection.close(200, "checked".into()).await;
        }
        Err(error) => {
            return Err(format!(
                "rabbitmqctl made vhost {} but the broker does not let the benchmark in at {shown} ({error}): is \
                 RabbitMQ running there, and is it the node rabbitmqctl manages? Run the benchmark on the broker's \
                 host.",
                vhost.name()
            ));
        }
    }
    println!("RabbitMQ workloads run in vhost {} ({shown}), made for this run and deleted at its end.", vhost.name());
    Ok(vhost)
}

/// Runs `spec` for both sides, alternating, and prints its row.
async fn compare(spec: &Spec, env: &Env, rounds: usize) {
    let (name, goal, workload) = (spec.name, spec.goal, spec.run);
    let (mut warren, mut raw) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        warren.push(workload(env.clone(), Side::Warren).await);
        workloads::settle().await;
        raw.push(workload(env.clone(), Side::Raw).await);
        workloads::settle().await;
    }
    let (w, r) = (median(warren), median(raw));
    let micros = |d: Duration| format!("{:.1} µs", d.as_secs_f64() * 1e6);
    let cpu = |run: &Run| micros(run.cpu_per_message());
    let (shown_w, shown_r, ratio, verdict) = match (goal, w.latency, r.latency) {
        (Goal::Latency(max), Some(lw), Some(lr)) => {
            let ratio = lw[0].as_secs_f64() / lr[0].as_secs_f64();
            let show = |l: [Duration; 3]| format!("p50 {} p99 {} p99.9 {}", micros(l[0]), micros(l[1]), micros(l[2]));
            (show(lw), show(lr), ratio, format!("p50 ≤ {max}× {}", if ratio <= max { "✔" } else { "✘" }))
        }
        (Goal::Throughput(min), _, _) => {
            let ratio = w.rate() / r.rate();
            // A throughput workload that timed each message (G1) shows its p50 and p99 too.
            let show = |run: &Run| match run.latency {
                Some(l) => format!("{}/s (p50 {} p99 {})", thousands(run.rate()), micros(l[0]), micros(l[1])),
                None => format!("{}/s", thousands(run.rate())),
            };
            (show(&w), show(&r), ratio, format!("≥ {min}× {}", if ratio >= min { "✔" } else { "✘" }))
        }
        _ => unreachable!("latency workloads record latencies"),
    };
    let cpu_ok = w.cpu_per_message() <= r.cpu_per_message() + Duration::from_micros(1);
    println!(
        "| {name} | {} B | {shown_w} | {shown_r} | {ratio:.2} | {} | {} | {:.2} / {:.2} | {verdict}; CPU ≤ raw + 1 µs {} |",
        env.size,
        cpu(&w),
        cpu(&r),
        w.switches_per_message(),
        r.switches_per_message(),
        if cpu_ok { "✔" } else { "✘" }
    );
}

/// Prints a W9 row: for Warren's `runs` and the baseline's `raw` (each of a number of events), each side's median
/// rate in `unit` (`per_event` of them an event) and its range, the ratio of the medians, client CPU and context
/// switches per `unit`, and the goal if any (Warren's median at least that fraction of the baseline's).
fn memory_row(name: &str, per_event: u64, runs: &[Run], raw: &[Run], unit: &str, goal: Option<f64>) {
    let rate = |run: &Run| run.rate() * per_event as f64;
    let show = |runs: &[Run]| {
        let mut rates: Vec<f64> = runs.iter().map(rate).collect();
        rates.sort_by(f64::total_cmp);
        let (slowest, fastest) = (rates[0], rates[rates.len() - 1]);
        let median = median(runs.to_vec());
        (median, format!("{} {unit} (range {}–{})", thousands(rate(&median)), thousands(slowest), thousands(fastest)))
    };
    let ((w, shown_w), (r, shown_r)) = (show(runs), show(raw));
    let ratio = rate(&w) / rate(&r);
    let goal = match goal {
        Some(min) => format!("≥ {min}× {}", if ratio >= min { "✔" } else { "✘" }),
        None => "—".to_owned(),
    };
    let per_delivery = |run: &Run| {
        let deliveries = (run.messages * per_event) as f64;
        (run.cpu.as_secs_f64() * 1e6 / deliveries, run.switches as f64 / deliveries)
    };
    let ((cpu_w, switches_w), (cpu_r, switches_r)) = (per_delivery(&w), per_delivery(&r));
    let bytes = prost::Message::encoded_len(&memory::event(w.messages - 1));
    println!(
        "| {name} | {bytes} B | {shown_w} | {shown_r} | {ratio:.2} | {cpu_w:.2} µs | {cpu_r:.2} µs | \
         {switches_w:.3} / {switches_r:.3} | {goal} |"
    );
}
