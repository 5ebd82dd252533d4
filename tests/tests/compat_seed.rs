//! `check-compat` on the seed contracts: they match the checked-in lock, a breaking edit to one of them is
//! reported with file:line and rule, a safe edit passes; CI's baseline file names a commit.

use std::path::{Path, PathBuf};

use warren_codegen::compat::{self, Report, Rule};
use warren_codegen::manifest::LOCK_FILE;
use warren_codegen::{Config, Manifest};
use warren_tests::{unique, workspace_root};

fn checked_in_lock() -> Manifest {
    let text = std::fs::read_to_string(workspace_root().join(LOCK_FILE)).unwrap();
    Manifest::parse(&text).unwrap()
}

fn check_workspace(root: &Path) -> Report {
    let config = Config::for_workspace(root).unwrap();
    let contracts = warren_codegen::load(&config).unwrap_or_else(|e| panic!("{e}"));
    compat::check(&checked_in_lock(), &warren_codegen::manifest(&config, &contracts).unwrap(), &[])
}

/// A copy of the workspace's `proto/` with `edit` applied to `gametrade/v1/events.proto`.
fn edited_workspace(edit: impl FnOnce(String) -> String) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("compat-seed"));
    copy_dir(&workspace_root().join("proto"), &root.join("proto"));
    let events = root.join("proto/gametrade/v1/events.proto");
    let text = std::fs::read_to_string(&events).unwrap();
    let edited = edit(text.clone());
    assert_ne!(edited, text, "the edit changed nothing");
    std::fs::write(&events, edited).unwrap();
    root
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

#[test]
fn the_seed_contracts_match_the_checked_in_lock() {
    let report = check_workspace(&workspace_root());
    assert!(report.breaks.is_empty(), "{:?}", report.breaks);
}

#[test]
fn a_breaking_edit_to_a_seed_proto_names_file_line_and_rule() {
    let root =
        edited_workspace(|text| text.replace("routing_key: \"user.registered\"", "routing_key: \"user.signed-up\""));
    let report = check_workspace(&root);
    let blocking: Vec<String> = report.blocking().map(ToString::to_string).collect();
    assert_eq!(blocking.len(), 1, "{blocking:#?}");
    assert!(
        blocking[0].starts_with(
            "proto/gametrade/v1/events.proto:40:1: routing-key-changed: event gametrade.v1.UserRegistered"
        ),
        "{}",
        blocking[0]
    );
    assert_eq!(report.breaks[0].rule, Rule::RoutingKeyChanged);
}

#[test]
fn a_safe_edit_to_a_seed_proto_passes() {
    let root = edited_workspace(|text| {
        text.replace(
            "  // E-mail address the user registered with.\n  string email = 3;\n",
            "  // E-mail address the user registered with, as typed.\n  string email = 3;\n  // Where the user \
             signed up from, e.g. \"web\".\n  string source = 4;\n",
        )
    });
    let report = check_workspace(&root);
    assert!(report.breaks.is_empty(), "{:?}", report.breaks);
}

#[test]
fn the_ci_compat_base_is_one_full_commit_hash() {
    // `.ci/run` reads the first line that is 40 lowercase hex digits; anything else would silently fall back
    // to HEAD~1.
    let text = std::fs::read_to_string(workspace_root().join(".ci/compat-base")).unwrap();
    let hashes: Vec<&str> = text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).collect();
    let full = |h: &&str| h.len() == 40 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    assert!(
        hashes.len() == 1 && hashes.iter().all(full),
        ".ci/compat-base must hold one full commit hash (`git rev-parse HEAD`) besides `#` lines, found {hashes:?}"
    );
}
