//! Writing derived files only where they changed, or checking that none is stale (rust-analyzer's
//! `ensure_file_contents`, for a whole set of files).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};

/// Files derived from the protos, by path relative to the workspace root.
#[derive(Debug, Default)]
pub(crate) struct Derived {
    pub(crate) files: BTreeMap<PathBuf, Vec<u8>>,
    /// Directories whose every file is derived: a file there that is not in `files` is stale.
    pub(crate) owned_dirs: Vec<PathBuf>,
}

impl Derived {
    /// Adds `files` (relative to `dir`).
    pub(crate) fn extend(&mut self, dir: &Path, files: warren_codegen::Files) {
        self.files.extend(files.into_iter().map(|(path, contents)| (dir.join(path), contents)));
    }
}

/// Writes the files that differ (and removes orphans); with `check`, only lists them and fails if any.
pub(crate) fn sync(root: &Path, derived: &Derived, check: bool, command: &str) -> Result<ExitCode> {
    let mut stale = Vec::new();
    for (path, contents) in &derived.files {
        let target = root.join(path);
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
    let mut orphans = Vec::new();
    for dir in &derived.owned_dirs {
        for entry in walk(&root.join(dir))? {
            let relative = entry.strip_prefix(root).expect("walked under root").to_path_buf();
            if !derived.files.contains_key(&relative) {
                orphans.push(relative.display().to_string());
                if !check {
                    std::fs::remove_file(&entry).with_context(|| format!("removing {}", entry.display()))?;
                }
            }
        }
    }
    if check {
        if stale.is_empty() && orphans.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
        for path in &stale {
            eprintln!("stale: {path}");
        }
        for path in &orphans {
            eprintln!("no longer generated: {path}");
        }
        eprintln!("files derived from proto/ are out of date: run `{command}` and commit the result");
        return Ok(ExitCode::FAILURE);
    }
    for path in &stale {
        println!("wrote {path}");
    }
    for path in &orphans {
        println!("removed {path}");
    }
    if stale.is_empty() && orphans.is_empty() {
        println!("everything derived from proto/ is up to date");
    }
    Ok(ExitCode::SUCCESS)
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
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
