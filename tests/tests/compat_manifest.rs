//! `proto/warren.lock` is exactly what `cargo xtask regen` writes and reads back as what it says. It is
//! committed: its diff is the review of every contract change (no snapshot repeats it).

use warren_codegen::manifest::{Consumer, FORMAT_VERSION, FieldRules, LOCK_FILE, WireFormat};
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
    assert_eq!(manifest.format_version, FORMAT_VERSION);
    // Tasks, their work queues, wire formats and validation rules read back too.
    let task = &manifest.tasks["gametrade.v1.BackgroundTask"];
    assert_eq!((task.queue.as_str(), task.prefetch, task.quorum), ("gametrade.tasks", Some(8), true));
    assert_eq!(task.wire_format, WireFormat::Protobuf);
    let queue = &manifest.queues["gametrade.tasks"];
    assert_eq!(queue.consumer, Consumer::Task("gametrade.v1.BackgroundTask".into()));
    assert!(queue.bindings.is_empty() && queue.dead_letter_queue.as_deref() == Some("gametrade.tasks.dlq"));
    let rules = manifest.messages["gametrade.v1.BackgroundTask"].fields[&2].rules;
    assert_eq!(rules, FieldRules { required: true, max_len: Some(1000), ..FieldRules::default() });
}

#[test]
fn a_version_1_manifest_still_reads_and_says_what_it_lacks() {
    let old = "warren-manifest 1\n\nmessage a.B\n  at a.proto:3\n  field 1 x singular int64 json=x\n\nevent a.B\n  at \
               a.proto:3\n  exchange e\n  kind topic\n  routing-key b\n  priority none\n  retry default\n  \
               queue-type classic\n";
    let manifest = Manifest::parse(old).unwrap_or_else(|e| panic!("a version-1 manifest must still read: {e}"));
    assert_eq!(manifest.format_version, 1);
    assert!(!manifest.records_tasks_and_rules());
    assert!(manifest.messages["a.B"].fields[&1].rules.is_empty());
}

#[test]
fn field_rules_are_written_in_one_fixed_order_and_read_back() {
    let text = "warren-manifest 2\n\nmessage a.B\n  at a.proto:3\n  field 1 x singular double json=x \
                rules=required,min=-1.5,max=1e300,min-len=0,max-len=7,defined\n";
    let manifest = Manifest::parse(text).unwrap();
    let rules = manifest.messages["a.B"].fields[&1].rules;
    let expected = FieldRules {
        required: true,
        min: Some(-1.5),
        max: Some(1e300),
        min_len: Some(0),
        max_len: Some(7),
        defined: true,
    };
    assert_eq!(rules, expected);
    assert!(
        manifest.render("").contains("  field 1 x singular double json=x rules=required,min=-1.5,max=1e300,min-len=0,")
    );
    assert_eq!(Manifest::parse(&manifest.render("")).unwrap(), manifest);
    let error = Manifest::parse(
        "warren-manifest 2\n\nmessage a.B\n  at a.proto:3\n  field 1 x singular int64 \
                                 json=x rules=required,most=3\n",
    )
    .unwrap_err();
    assert_eq!(error.line, 5);
    assert!(error.to_string().contains("\"rules=required,most=3\" is not a valid rule list"), "{error}");
}

#[test]
fn a_manifest_file_that_is_not_one_is_refused_with_its_line() {
    let error = Manifest::parse("warren-manifest 1\n\nmessage a.B\n  field one x singular int64 json=x\n").unwrap_err();
    assert_eq!(error.line, 4);
    assert!(error.to_string().contains("\"one\" is not a number"), "{error}");
    let error = Manifest::parse("# made by hand\nsomething else\n").unwrap_err();
    assert!(error.to_string().contains("expected `warren-manifest 2` (or an older version)"), "{error}");
    // A newer format than this Warren reads says what to do.
    let error = Manifest::parse("warren-manifest 3\n").unwrap_err();
    assert!(error.to_string().contains("format version 3, newer than this Warren reads (2): update"), "{error}");
}
