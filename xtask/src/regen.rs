//! `cargo xtask regen [--check]`: everything derived from `proto/`, written (or checked) in one go.
//!
//! That is the `generated/` crate, the contract manifest `proto/warren.lock`, the docs under `docs/`, and the
//! types codegen reads Warren's own options into (`codegen/src/options_pb.rs`).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, anyhow};

use crate::files::{Derived, sync};

/// Regenerates everything derived from the protos; with `check`, only reports what is stale.
pub(crate) fn run(root: &Path, check: bool) -> Result<ExitCode> {
    let config = warren_codegen::Config::for_workspace(root)?;
    let contracts = warren_codegen::load(&config).map_err(|e| anyhow!("{e}"))?;
    let mut derived = Derived::default();
    let generated = warren_codegen::generate_from(&config, &contracts).map_err(|e| anyhow!("{e}"))?;
    derived.extend(Path::new("generated"), generated);
    // Files generated earlier that the contracts no longer produce are removed from here.
    derived.owned_dirs.push("generated/src".into());
    let lock = warren_codegen::manifest_file(&config, &contracts).map_err(|e| anyhow!("{e}"))?;
    derived.files.insert(warren_codegen::manifest::LOCK_FILE.into(), lock.into_bytes());
    derived.extend(Path::new(crate::docs::DIR), crate::docs::files(&config, &contracts)?);
    // The types codegen reads Warren's options into: generated from proto/warren/options.proto, and compiled
    // into codegen itself, so a renamed option field breaks its build instead of going unread.
    let options = warren_codegen::options_types().map_err(|e| anyhow!("{e}"))?;
    derived.files.insert(warren_codegen::OPTIONS_TYPES_FILE.into(), options.into_bytes());
    sync(root, &derived, check, "cargo xtask regen")
}
