//! `cargo xtask topology [--vhost V] [--group G]...`: RabbitMQ definitions of the workspace's contracts on
//! stdout, for `rabbitmqctl import_definitions` (see docs/security.md). The CLI's `warren topology` writes the
//! same for any contracts; both call `Manifest::definitions`.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, anyhow, bail};
use warren_codegen::Config;
use warren_codegen::manifest::DefinitionsOptions;

/// Writes the definitions for `args` (`--vhost V`, `--group G`, repeatable) to stdout.
pub(crate) fn run(root: &Path, args: &[&str]) -> Result<ExitCode> {
    let mut options = DefinitionsOptions::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let mut value = |flag: &str| rest.next().copied().ok_or_else(|| anyhow!("{flag} needs a value"));
        match *arg {
            "--vhost" => options = options.vhost(value("--vhost")?),
            "--group" => {
                let group = value("--group")?;
                if let Some(problem) = warren_codegen::manifest::group_problem(group) {
                    bail!("{problem}");
                }
                options = options.group(group);
            }
            other => bail!("unknown argument {other}; usage: cargo xtask topology [--vhost V] [--group G]..."),
        }
    }
    let config = Config::for_workspace(root)?;
    let contracts = warren_codegen::load(&config).map_err(|e| anyhow!("{e}"))?;
    let manifest = warren_codegen::manifest(&config, &contracts).map_err(|e| anyhow!("{e}"))?;
    std::io::stdout().write_all(manifest.definitions(&options).as_bytes())?;
    Ok(ExitCode::SUCCESS)
}
