//! `cargo xtask regen [--check]`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result};

/// Regenerates `generated/`; with `check`, only reports what is stale.
pub(crate) fn run(root: &Path, check: bool) -> Result<ExitCode> {
    let files = warren_codegen_generated(root)?;
    let out = root.join("generated");
    let mut stale = Vec::new();
    for (path, contents) in &files {
        let target = out.join(path);
        if std::fs::read(&target).ok().as_deref() == Some(contents.as_slice()) {
            continue;
        }
        stale.push(path.display().to_string());
        if !check {
            if let Some(dir) = target.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            std::fs::write(&target, contents).with_context(|| format!("writing {}", target.display()))?;
        }
    }
    // Files generated earlier that the contracts no longer produce.
    let mut orphans = Vec::new();
    for entry in walk(&out.join("src"))? {
        let relative = entry.strip_prefix(&out).expect("walked under out").to_path_buf();
        if !files.contains_key(&relative) {
            orphans.push(relative.display().to_string());
            if !check {
                std::fs::remove_file(&entry).with_context(|| format!("removing {}", entry.display()))?;
            }
        }
    }
    if check {
        if stale.is_empty() && orphans.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
        for path in &stale {
            eprintln!("stale: generated/{path}");
        }
        for path in &orphans {
            eprintln!("no longer generated: generated/{path}");
        }
        eprintln!("generated/ is out of date with proto/: run `cargo xtask regen` and commit the result");
        return Ok(ExitCode::FAILURE);
    }
    for path in &stale {
        println!("wrote generated/{path}");
    }
    for path in &orphans {
        println!("removed generated/{path}");
    }
    if stale.is_empty() && orphans.is_empty() {
        println!("generated/ is up to date");
    }
    Ok(ExitCode::SUCCESS)
}

fn warren_codegen_generated(root: &Path) -> Result<warren_codegen::Files> {
    let config = warren_codegen::Config::for_workspace(root).context("listing proto/")?;
    warren_codegen::generate(&config).map_err(|e| anyhow::anyhow!("{e}"))
}

fn walk(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(files);
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(walk(&path)?);
        } else {
            files.push(path);
        }
    }
    Ok(files)
}
