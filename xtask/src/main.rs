//! Project automation: `cargo xtask regen [--check]` rewrites (or checks) everything derived from `proto/`
//! (`generated/`, `proto/warren.lock`, `docs/`, `codegen/src/options_pb.rs`); `check-compat` finds breaking
//! contract changes; `docs` writes the docs alone; `bench` runs the benchmarks; `cluster up|down|status` runs a
//! three-node RabbitMQ cluster of private nodes on loopback.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};

mod cluster;
mod compat;
mod docs;
mod files;
mod regen;
mod topology;

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["regen"] => regen::run(&workspace_root()?, false),
        ["regen", "--check"] => regen::run(&workspace_root()?, true),
        ["docs"] => docs::run(&workspace_root()?, false),
        ["docs", "--check"] => docs::run(&workspace_root()?, true),
        ["check-compat", rest @ ..] => compat::run(&workspace_root()?, &compat::Options::parse(rest)?),
        ["bench", rest @ ..] => bench(&workspace_root()?, rest),
        ["topology", rest @ ..] => topology::run(&workspace_root()?, rest),
        ["cluster", rest @ ..] => cluster::run(&workspace_root()?, rest),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 commands:\n  \
                 regen            rewrite generated/, proto/warren.lock, docs/ and codegen/src/options_pb.rs from proto/\n                   (only files that changed)\n  \
                 regen --check    exit non-zero, listing stale files, if any of them is out of date\n  \
                 check-compat [--against <git rev or manifest file>] [--allow RULE]...\n                   \
                 report breaking contract changes against proto/warren.lock as committed (or the baseline given)\n  \
                 docs [--check]   rewrite (or check) docs/asyncapi.yaml and docs/CATALOG.md alone\n  \
                 bench [--quick] [--memory] [--cluster] [--only W1,W7] [--raw-envelope minimal|warren] [--profile NAME [--raw]]\n                   build the benchmarks in release mode and print their table\n  \
                 cluster up|down|status\n                   \
                 a three-node RabbitMQ cluster of private nodes on 127.0.0.1:5681-5683 (warren-c1..c3@localhost,\n                   \
                 data in target/cluster/): start it (idempotent), stop and remove it, or show its nodes\n  \
                 topology [--vhost V] [--group G]...\n                   \
                 print RabbitMQ definitions (exchanges, queues, bindings) for rabbitmqctl import_definitions"
            );
            if args.is_empty() || args == ["help"] || args == ["--help"] {
                Ok(ExitCode::SUCCESS)
            } else {
                bail!("unknown command: {}", args.join(" "))
            }
        }
    }
}

/// `cargo xtask bench [args]` (see `warren-bench --help`): the benchmarks never run inside `cargo test`; they run here, optimised.
/// With `--cluster`, the cluster of `cargo xtask cluster up` is started first (if it is not up).
fn bench(root: &Path, args: &[&str]) -> Result<ExitCode> {
    if args.contains(&"--cluster") {
        cluster::run(root, &["up"])?;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    // The WebSocket rows (G2, G3) run the gateway as a process of its own, beside the benchmark's binary.
    let built = std::process::Command::new(&cargo)
        .current_dir(root)
        .args(["build", "--quiet", "--release", "--package", "warren-gateway", "--bin", "warren-gateway"])
        .status()
        .context("running cargo")?;
    if !built.success() {
        return Ok(ExitCode::FAILURE);
    }
    let status = std::process::Command::new(cargo)
        .current_dir(root)
        .args(["run", "--quiet", "--release", "--package", "warren-bench", "--"])
        .args(args)
        .status()
        .context("running cargo")?;
    Ok(if status.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn workspace_root() -> Result<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().context("xtask lives inside the workspace")?;
    Ok(root.to_path_buf())
}
