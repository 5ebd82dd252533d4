//! Warren's benchmarks: `cargo xtask bench [--quick] [--memory]` builds this in release mode and prints one table.
//!
//! Each RabbitMQ workload runs for Warren and for a raw-lapin baseline written with best practice
//! (`raw.rs`), alternating the two sides round by round (A B A B …), and reports each side's median, the ratio
//! Warren / raw, and the client CPU per message. The in-memory workload (W9) has no baseline. Absolute numbers
//! depend on the machine; the ratios, measured in one run, are the claim.

mod measure;
mod memory;
mod raw;
mod workloads;

use std::time::Duration;

use measure::{Run, median, thousands};
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
};

const FULL: Scale = Scale {
    rounds: 3,
    sizes: &[100, 1024],
    publish: 100_000,
    latency: 5_000,
    consume: 100_000,
    rpc_serial: 2_000,
    rpc_parallel: 20_000,
    fan_out: 10_000,
    memory_one: 1_000_000,
    memory_fan_out: 200_000,
};

/// What a workload's ratio must meet.
#[derive(Debug, Clone, Copy)]
enum Goal {
    /// Warren's rate at least this fraction of raw's.
    Throughput(f64),
    /// Warren's p50 latency at most this multiple of raw's.
    Latency(f64),
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    // Small in-memory runs, for `valgrind --tool=callgrind`.
    if args.iter().any(|a| a == "--profile-one") {
        memory::in_memory_one_subscriber(20_000).await;
        return;
    }
    if args.iter().any(|a| a == "--profile-fan-out") {
        memory::in_memory_fan_out(5_000, 10).await;
        return;
    }
    let scale = if args.iter().any(|a| a == "--quick") { QUICK } else { FULL };
    let url = std::env::var("RABBITMQ_URL").unwrap_or_else(|_| warren::DEFAULT_URL.to_owned());
    println!(
        "Warren benchmarks: {} rounds per side, alternating, median shown; CPU is client CPU per message.",
        scale.rounds
    );
    println!();
    println!("| workload | payload | Warren | raw lapin | Warren / raw | CPU/msg Warren | CPU/msg raw | goal |");
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    // `--memory`: only W9, which needs no broker.
    let sizes: &[usize] = if args.iter().any(|a| a == "--memory") { &[] } else { scale.sizes };
    for &size in sizes {
        let env = |n| Env { url: url.clone(), n, size };
        compare("W1 publish, no confirms", &env(scale.publish), scale.rounds, Goal::Throughput(0.9), |e, s| {
            Box::pin(async move { workloads::publish(&e, s, false, false).await })
        })
        .await;
        compare("W2 publish, confirms", &env(scale.publish), scale.rounds, Goal::Throughput(0.9), |e, s| {
            Box::pin(async move { workloads::publish(&e, s, true, false).await })
        })
        .await;
        compare("W3 one confirm in flight (latency)", &env(scale.latency), scale.rounds, Goal::Latency(1.1), |e, s| {
            Box::pin(async move { workloads::confirm_latency(&e, s).await })
        })
        .await;
        compare(
            "W4 consume, prefetch 256, manual ack",
            &env(scale.consume),
            scale.rounds,
            Goal::Throughput(0.9),
            |e, s| Box::pin(async move { workloads::consume(&e, s).await }),
        )
        .await;
        compare(
            "W5 RPC, one call at a time (latency)",
            &env(scale.rpc_serial),
            scale.rounds,
            Goal::Latency(1.1),
            |e, s| Box::pin(async move { workloads::rpc(&e, s, 1).await }),
        )
        .await;
        compare("W6 RPC, 64 calls in flight", &env(scale.rpc_parallel), scale.rounds, Goal::Throughput(0.9), |e, s| {
            Box::pin(async move { workloads::rpc(&e, s, 64).await })
        })
        .await;
        compare(
            "W7 fan-out to 10 queues (deliveries)",
            &env(scale.fan_out),
            scale.rounds,
            Goal::Throughput(0.9),
            |e, s| Box::pin(async move { workloads::fan_out(&e, s).await }),
        )
        .await;
        compare(
            "W8 persistent, durable queue, confirms",
            &env(scale.publish),
            scale.rounds,
            Goal::Throughput(0.9),
            |e, s| Box::pin(async move { workloads::publish(&e, s, true, true).await }),
        )
        .await;
    }
    // In memory, a round takes about a second and scheduling noise is large: more rounds for a steadier median.
    let rounds = scale.rounds.max(5);
    let one = median_memory(rounds, || memory::in_memory_one_subscriber(scale.memory_one)).await;
    memory_row("W9 in-memory publish → handler, 1 subscriber", scale.memory_one, one, "events/s");
    let fan = median_memory(rounds, || memory::in_memory_fan_out(scale.memory_fan_out, 10)).await;
    memory_row("W9 in-memory topic exchange → 10 subscribers", scale.memory_fan_out, fan, "events/s");
    memory_row("W9 … the same, counted per delivery", scale.memory_fan_out * 10, fan, "deliveries/s");
}

type Workload = fn(Env, Side) -> std::pin::Pin<Box<dyn Future<Output = Run>>>;

/// Runs `workload` for both sides, alternating, and prints its row.
async fn compare(name: &str, env: &Env, rounds: usize, goal: Goal, workload: Workload) {
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
            let show = |run: &Run| format!("{}/s", thousands(run.rate()));
            (show(&w), show(&r), ratio, format!("≥ {min}× {}", if ratio >= min { "✔" } else { "✘" }))
        }
        _ => unreachable!("latency workloads record latencies"),
    };
    let cpu_ok = w.cpu_per_message() <= r.cpu_per_message() + Duration::from_micros(1);
    println!(
        "| {name} | {} B | {shown_w} | {shown_r} | {ratio:.2} | {} | {} | {verdict}; CPU ≤ raw + 1 µs {} |",
        env.size,
        cpu(&w),
        cpu(&r),
        if cpu_ok { "✔" } else { "✘" }
    );
}

async fn median_memory<F, Fut>(rounds: usize, mut run: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Duration>,
{
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        times.push(run().await);
    }
    times.sort();
    times[times.len() / 2]
}

fn memory_row(name: &str, messages: u64, took: Duration, unit: &str) {
    let rate = messages as f64 / took.as_secs_f64();
    println!(
        "| {name} | 100 B | {} {unit} | — | — | — | — | ≥ 1,000,000 (1 subscriber) / 300,000 (10) |",
        thousands(rate)
    );
}
