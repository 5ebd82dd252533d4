//! `proto/warren.lock` is exactly what `cargo xtask regen` writes and reads back as what it says. It is
//! committed: its diff is the review of every contract change (no snapshot repeats it).

use warren_codegen::manifest::LOCK_FILE;
use warren_codegen::{Config, Manifest};
use warren_tests::workspace_root;

fn lock_text() -> String {
    let config = Config::for_workspace(&workspace_root()).unwrap();
    let contracts = warren_codegen::load(&config).unwrap();
    warren_codegen::manifest_file(&config, &contracts).unwrap()
}

#[test]
fn the_lock_file_matches_the_protos() {
    let on_disk = std::fs::read_to_string(workspace_root().join(LOCK_FILE)).unwrap_or_default();
    assert!(on_disk == lock_text(), "{LOCK_FILE} is stale: run `cargo xtask regen` and commit the result");
}

#[test]
fn the_lock_file_reads_back_as_what_it_says() {
    let text = lock_text();
    let manifest = Manifest::parse(&text).unwrap_or_else(|e| panic!("{LOCK_FILE} does not parse: {e}"));
    let header: String = text.lines().take_while(|l| l.starts_with("# @generated")).map(|l| format!("{l}\n")).collect();
    assert_eq!(manifest.render(&header), text, "rendering the parsed manifest changed it");
    assert!(manifest.events.contains_key("gametrade.v1.UserRegistered"));
    assert!(manifest.queues.contains_key("<group>.trading.events"));
}

#[test]
fn a_manifest_file_that_is_not_one_is_refused_with_its_line() {
    let error = Manifest::parse("warren-manifest 1\n\nmessage a.B\n  field one x singular int64 json=x\n").unwrap_err();
    assert_eq!(error.line, 4);
    assert!(error.to_string().contains("\"one\" is not a number"), "{error}");
    let error = Manifest::parse("# made by hand\nsomething else\n").unwrap_err();
    assert!(error.to_string().contains("expected `warren-manifest 1`"), "{error}");
}
