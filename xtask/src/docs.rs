//! `cargo xtask docs [--check]`: the AsyncAPI document and the contract catalog under `docs/`.
//!
//! `cargo xtask regen` writes them too, so one command keeps everything derived from the protos fresh; this
//! command is for working on the docs alone.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, anyhow};
use warren_codegen::{Config, Contracts};

use crate::files::{Derived, sync};

/// Where the docs go, relative to the workspace root.
pub(crate) const DIR: &str = "docs";

/// The docs of `contracts`, relative to [`DIR`].
pub(crate) fn files(config: &Config, contracts: &Contracts) -> Result<warren_codegen::Files> {
    warren_codegen::docs::generate(config, contracts).map_err(|e| anyhow!("{e}"))
}

/// Writes (or, with `check`, checks) `docs/asyncapi.yaml` and `docs/CATALOG.md`.
pub(crate) fn run(root: &Path, check: bool) -> Result<ExitCode> {
    let config = Config::for_workspace(root)?;
    let contracts = warren_codegen::load(&config).map_err(|e| anyhow!("{e}"))?;
    let mut derived = Derived::default();
    derived.extend(Path::new(DIR), files(&config, &contracts)?);
    sync(root, &derived, check, "cargo xtask docs")
}
