//! `cargo xtask check-compat [--against <rev or file>] [--allow RULE]...`: breaking changes to the contracts.
//!
//! The current contracts are built from `proto/`; the baseline is a manifest: by default `proto/warren.lock` as
//! committed at `HEAD` (so the check covers your uncommitted edits, whether or not you already ran `regen`),
//! or the file or git revision `--against` names. Every breaking change is printed with file:line, its rule,
//! why it breaks and how to fix it; any that is not waived makes the command fail.

use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result, anyhow, bail};
use warren_codegen::compat::{self, Rule};
use warren_codegen::manifest::LOCK_FILE;
use warren_codegen::{Config, Manifest};

/// Parsed command-line options.
#[derive(Debug, Default)]
pub(crate) struct Options {
    /// A manifest file or a git revision.
    pub(crate) against: Option<String>,
    /// Rules to waive.
    pub(crate) allow: Vec<Rule>,
}

impl Options {
    pub(crate) fn parse(args: &[&str]) -> Result<Options> {
        let mut options = Options::default();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match *arg {
                "--against" => {
                    let value = args.next().context("--against needs a git revision or a manifest file")?;
                    options.against = Some((*value).to_owned());
                }
                "--allow" => {
                    let value = args.next().context("--allow needs a rule name")?;
                    options.allow.push(value.parse()?);
                }
                other => bail!(
                    "unknown argument to check-compat: {other}; usage: cargo xtask check-compat [--against <rev or \
                     file>] [--allow RULE]..."
                ),
            }
        }
        Ok(options)
    }
}

/// Where the baseline came from, and its text; `None` when the revision has no manifest yet.
struct Baseline {
    label: String,
    text: Option<String>,
}

pub(crate) fn run(root: &Path, options: &Options) -> Result<ExitCode> {
    let baseline = baseline(root, options.against.as_deref())?;
    let Some(text) = baseline.text else {
        println!("check-compat: {} does not exist, so there is no baseline to break; nothing to check", baseline.label);
        return Ok(ExitCode::SUCCESS);
    };
    let old = Manifest::parse(&text).with_context(|| format!("reading {}", baseline.label))?;
    let config = Config::for_workspace(root)?;
    let contracts = warren_codegen::load(&config).map_err(|e| anyhow!("{e}"))?;
    let new = warren_codegen::manifest(&config, &contracts).map_err(|e| anyhow!("{e}"))?;
    let report = compat::check(&old, &new, &options.allow);
    for change in report.waived() {
        println!("{change}\n");
    }
    for change in report.blocking() {
        eprintln!("{change}\n");
    }
    let (blocking, waived) = (report.blocking().count(), report.waived().count());
    if blocking == 0 {
        println!("check-compat: no breaking change against {} ({waived} waived)", baseline.label);
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "check-compat: {blocking} breaking change{} against {} ({waived} waived)",
            if blocking == 1 { "" } else { "s" },
            baseline.label
        );
        Ok(ExitCode::FAILURE)
    }
}

fn baseline(root: &Path, against: Option<&str>) -> Result<Baseline> {
    match against {
        Some(file) if Path::new(file).is_file() => Ok(Baseline {
            label: file.to_owned(),
            text: Some(std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?),
        }),
        Some(rev) => {
            if !git(root, &["rev-parse", "--verify", "--quiet", &format!("{rev}^{{commit}}")])?.0 {
                bail!("--against {rev}: no such file, and git knows no such revision (a shallow clone?)");
            }
            from_git(root, rev)
        }
        None => {
            // Without git (or before the manifest's first commit) the file on disk is the baseline.
            let committed = git(root, &["cat-file", "-e", &format!("HEAD:./{LOCK_FILE}")]).is_ok_and(|(ok, _)| ok);
            if committed {
                return from_git(root, "HEAD");
            }
            let path = root.join(LOCK_FILE);
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!("no baseline: {LOCK_FILE} is neither committed nor on disk; run `cargo xtask regen`")
            })?;
            Ok(Baseline { label: LOCK_FILE.to_owned(), text: Some(text) })
        }
    }
}

/// The manifest as committed at `rev`. Its path is given relative to the workspace (`./`), which need not be
/// the repository's root (a workspace in a monorepo's folder): a path from the root would find nothing there,
/// and the check would pass with no baseline.
fn from_git(root: &Path, rev: &str) -> Result<Baseline> {
    let label = format!("{LOCK_FILE} at {rev}");
    if !git(root, &["cat-file", "-e", &format!("{rev}:./{LOCK_FILE}")])?.0 {
        return Ok(Baseline { label, text: None });
    }
    let (ok, text) = git(root, &["show", &format!("{rev}:./{LOCK_FILE}")])?;
    if !ok {
        bail!("git show {rev}:{LOCK_FILE} failed");
    }
    Ok(Baseline { label, text: Some(text) })
}

/// Runs git in `root`: whether it succeeded, and what it printed.
fn git(root: &Path, args: &[&str]) -> Result<(bool, String)> {
    let output = Command::new("git").current_dir(root).args(args).output().context("running git")?;
    Ok((output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned()))
}
