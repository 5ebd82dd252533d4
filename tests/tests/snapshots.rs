//! One insta snapshot per file generated from the codegen fixtures (`fixtures/build_rs/`: awkward names, the
//! richer contract options, the quick start), so every change to what the generator writes is a reviewed diff.
//!
//! The seed contracts' output needs no snapshot: `generated/` and `proto/warren.lock` are committed, their diff
//! is the review, and `codegen_up_to_date` / `compat_manifest` fail when they are stale. So the everyday loop —
//! edit a proto, `cargo xtask regen`, `cargo test` — is green with nothing else to run.

use warren_codegen::{Config, Layout};
use warren_tests::workspace_root;

#[test]
fn generated_files_of_the_fixtures() {
    // Relative to the test's package, as `cargo test` runs it, so the headers name the same paths everywhere.
    let fixtures = "fixtures/build_rs";
    assert!(workspace_root().join("tests").join(fixtures).is_dir());
    let protos = ["shop/v1/shop.proto", "awkward/v1/awkward.proto", "rich/v1/rich.proto"];
    let mut config = Config::new([fixtures], protos);
    config.layout(Layout::OutDir).command("tests/tests/snapshots.rs");
    let files = warren_codegen::generate(&config).unwrap();
    for (path, contents) in &files {
        let Ok(text) = std::str::from_utf8(contents) else {
            continue; // the descriptor set is binary
        };
        let name = format!("fixtures__{}", path.display().to_string().replace('/', "__"));
        insta::with_settings!({ snapshot_path => "snapshots", prepend_module_to_snapshot => false, omit_expression => true }, {
            insta::assert_snapshot!(name, text);
        });
    }
}
