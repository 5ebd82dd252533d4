//! One insta snapshot per generated file, so every contract change is a reviewed diff.

use warren_codegen::Config;
use warren_tests::workspace_root;

#[test]
fn generated_files() {
    let files = warren_codegen::generate(&Config::for_workspace(&workspace_root()).unwrap()).unwrap();
    for (path, contents) in &files {
        let Ok(text) = std::str::from_utf8(contents) else {
            continue; // the descriptor set is binary; it is covered by the up-to-date check
        };
        let name = path.display().to_string().replace('/', "__");
        insta::with_settings!({ snapshot_path => "snapshots", prepend_module_to_snapshot => false, omit_expression => true }, {
            insta::assert_snapshot!(name, text);
        });
    }
}
