//! Each compatibility rule fires, at the right file and line, on a fixture that breaks it, and on nothing else.
//!
//! Every case is `fixtures/compat/<case>/shop.proto`: `fixtures/compat/baseline/shop.proto` changed in one way.
//! The baseline goes through the manifest's text form, as `check-compat` reads it from `proto/warren.lock`, with
//! its paths made the case's: it is the same file, as it was before the change.

use std::path::PathBuf;

use warren_codegen::compat::{self, Report, Rule, Waiver};
use warren_codegen::{Config, Error, Manifest};

fn case_dir(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/compat").join(case)
}

/// The manifest of `<case>/shop.proto`.
fn manifest(case: &str) -> Result<Manifest, Error> {
    let config = Config::new([case_dir(case)], ["shop.proto"]);
    let contracts = warren_codegen::load(&config).unwrap_or_else(|e| panic!("fixture {case} does not load:\n{e}"));
    warren_codegen::manifest(&config, &contracts)
}

/// The baseline of `case`, written and read back as a lock file is.
fn baseline(case: &str) -> Manifest {
    let text = manifest("baseline").unwrap().render("");
    let text = text.replace(&case_dir("baseline").display().to_string(), &case_dir(case).display().to_string());
    Manifest::parse(&text).unwrap_or_else(|e| panic!("the baseline's manifest does not read back: {e}\n{text}"))
}

fn check(case: &str, allow: &[Rule]) -> Report {
    compat::check(&baseline(case), &manifest(case).unwrap(), allow)
}

/// Asserts that `case` breaks exactly `rules`, each at `line` of the case's file (of the baseline's version of
/// it, for a removal), and that every report names its rule, why and how to fix it.
fn assert_breaks(case: &str, rules: &[Rule], line: usize) -> Report {
    let report = check(case, &[]);
    let fired: Vec<Rule> = report.breaks.iter().map(|b| b.rule).collect();
    assert_eq!(fired, rules, "{case}: wrong rules fired:\n{}", text(&report));
    for change in &report.breaks {
        let shown = change.to_string();
        assert!(change.location.file.ends_with(format!("{case}/shop.proto")), "{case}: wrong file:\n{shown}");
        assert_eq!(change.location.line, line, "{case}: wrong line:\n{shown}");
        assert!(shown.contains(&format!("shop.proto:{line}")), "{case}: no file:line in:\n{shown}");
        assert!(shown.contains(&format!(": {}: ", change.rule)), "{case}: rule not named in:\n{shown}");
        assert!(shown.contains("\n  why: ") && shown.contains("\n  fix: "), "{case}: no why/fix in:\n{shown}");
        assert!(change.waived.is_none(), "{case}: waived without a waiver:\n{shown}");
    }
    assert!(!report.is_compatible());
    report
}

fn text(report: &Report) -> String {
    report.breaks.iter().map(|b| format!("{b}\n")).collect()
}

#[test]
fn the_baseline_is_compatible_with_itself() {
    let report = check("baseline", &[]);
    assert!(report.breaks.is_empty(), "{}", text(&report));
}

#[test]
fn safe_changes_pass() {
    // A new field, event, method and enum value, a method timeout, a retry policy on a classic queue (its delay
    // queues are named by their delay, so new delays are new queues), a task's prefetch and retry policy, and
    // edited and added comments.
    let report = check("safe", &[]);
    assert!(report.breaks.is_empty(), "safe changes were reported:\n{}", text(&report));
}

#[test]
fn field_number_reused_with_another_name_and_type() {
    let report = assert_breaks("field_number_reused", &[Rule::FieldNumberReused], 37);
    assert!(report.breaks[0].message.contains("is now `int64 customer_id` (was `string customer`)"));
}

#[test]
fn field_type_changed_incompatibly() {
    let report = assert_breaks("field_type_changed", &[Rule::FieldTypeChanged], 50);
    assert!(report.breaks[0].message.contains("changed type from int64 to string"));
}

#[test]
fn field_removed_without_reserved() {
    let report = assert_breaks("field_removed", &[Rule::FieldRemoved], 32);
    assert!(report.breaks[0].fix.contains("reserved 4; reserved \"skus\";"), "{}", report.breaks[0]);
}

#[test]
fn field_label_changed_from_repeated_to_singular() {
    let report = assert_breaks("field_label_changed", &[Rule::FieldLabelChanged], 41);
    assert!(report.breaks[0].message.contains("changed from repeated to singular"));
}

#[test]
fn enum_value_removed() {
    assert_breaks("enum_value_removed", &[Rule::EnumValueRemoved], 22);
}

#[test]
fn enum_value_renumbered() {
    let report = assert_breaks("enum_value_renumbered", &[Rule::EnumValueRenumbered], 28);
    assert!(report.breaks[0].message.contains("PAYMENT_METHOD_TRANSFER is now 3 (was 2)"));
}

#[test]
fn type_removed_while_referenced_points_at_the_baseline() {
    let report = assert_breaks("type_removed", &[Rule::TypeRemoved], 47);
    assert!(report.breaks[0].message.contains("message shop.v1.OrderShipped was removed"));
    assert!(report.breaks[0].message.contains("it is an event"));
}

#[test]
fn method_removed() {
    let report = assert_breaks("method_removed", &[Rule::MethodRemoved], 73);
    assert!(report.breaks[0].message.contains("rpc shop.v1.Pricer.Requote was removed"));
}

#[test]
fn method_type_changed() {
    let report = assert_breaks("method_type_changed", &[Rule::MethodTypeChanged], 76);
    assert!(report.breaks[0].message.contains("response shop.v1.Money (was shop.v1.Quote)"));
}

#[test]
fn field_renamed_breaks_json() {
    let report = assert_breaks("field_renamed", &[Rule::FieldRenamed], 37);
    assert!(report.breaks[0].message.contains("JSON name customer → customerName"));
}

#[test]
fn a_changed_json_name_breaks_json() {
    let report = assert_breaks("field_json_name_changed", &[Rule::FieldRenamed], 37);
    assert!(report.breaks[0].message.contains("changed its JSON name from customer to client"), "{}", text(&report));
}

/// Numbers the baseline reserved (a message's and an enum's), taken up again once the reservations are dropped:
/// what `reserved` guards against, with the guard removed in the same change.
#[test]
fn a_reserved_number_taken_up_again_is_a_reuse() {
    let dir = |side: &str| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/compat_reserved").join(side);
    let manifest_of = |side: &str| {
        let config = Config::new([dir(side)], ["shop.proto"]);
        let contracts = warren_codegen::load(&config).unwrap_or_else(|e| panic!("{side} does not load:\n{e}"));
        warren_codegen::manifest(&config, &contracts).unwrap()
    };
    let before = Manifest::parse(&manifest_of("before").render("")).unwrap();
    let report = compat::check(&before, &manifest_of("after"), &[]);
    let mut fired: Vec<(Rule, usize)> = report.breaks.iter().map(|b| (b.rule, b.location.line)).collect();
    fired.sort_by_key(|(_, line)| *line);
    assert_eq!(fired, [(Rule::EnumValueRemoved, 15), (Rule::FieldNumberReused, 26)], "{}", text(&report));
    let shown = text(&report);
    assert!(shown.contains("shop.v1.Carrier.CARRIER_DRONE takes up number 3, which the baseline reserved"), "{shown}");
    assert!(shown.contains("field 3 `voucher` of shop.v1.OrderPlaced takes up number 3"), "{shown}");
}

#[test]
fn enum_value_renamed_breaks_json() {
    assert_breaks("enum_value_renamed", &[Rule::EnumValueRenamed], 28);
}

#[test]
fn event_moved_to_another_exchange() {
    let report = assert_breaks("event_exchange_changed", &[Rule::EventExchangeChanged], 49);
    assert!(report.breaks[0].message.contains("\"shop.shipping\" (was \"shop.events\")"));
}

#[test]
fn exchange_kind_changed() {
    let report = assert_breaks("exchange_kind_changed", &[Rule::ExchangeKindChanged], 9);
    assert!(report.breaks[0].message.contains("exchange \"shop.events\" is now direct (was topic)"));
}

#[test]
fn exchange_durability_changed() {
    assert_breaks("exchange_durability_changed", &[Rule::ExchangeDurabilityChanged], 11);
}

#[test]
fn routing_key_changed() {
    let report = assert_breaks("routing_key_changed", &[Rule::RoutingKeyChanged], 47);
    assert!(report.breaks[0].message.contains("\"order.sent\" (was \"order.shipped\")"));
}

#[test]
fn queue_arguments_changed_by_a_new_priority() {
    // Both queues that take the event become priority queues: its own and its exchange's event enum's.
    let report = assert_breaks("queue_arguments_changed", &[Rule::QueueArgumentsChanged; 2], 47);
    let messages: Vec<&str> = report.breaks.iter().map(|b| b.message.as_str()).collect();
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("queue <group>.shop.events would be declared with x-max-priority unset → 3"))
    );
    assert!(messages.iter().any(|m| m.starts_with("queue <group>.shop.v1.OrderShipped would be declared with")));
}

#[test]
fn queue_arguments_changed_by_a_quorum_queue() {
    // Only the event's own queue: the exchange's event enum gets a quorum queue only if all its events ask.
    let report = assert_breaks("quorum_queue", &[Rule::QueueArgumentsChanged], 47);
    let message = &report.breaks[0].message;
    assert!(
        message.contains("x-delivery-limit unset → 5") && message.contains("x-queue-type unset → \"quorum\""),
        "{message}"
    );
}

#[test]
fn queue_arguments_changed_by_a_new_queue_limit() {
    // Only the event's own queue: the exchange's event enum is limited only if all its events are. RabbitMQ
    // refuses to redeclare a queue with another `x-max-length` (PRECONDITION_FAILED), so a limit is breaking.
    let report = assert_breaks("queue_limit", &[Rule::QueueArgumentsChanged], 47);
    let shown = report.breaks[0].to_string();
    assert!(shown.contains("queue <group>.shop.v1.OrderShipped would be declared with"), "{shown}");
    assert!(shown.contains("x-max-length unset → 10000"), "{shown}");
    assert!(shown.contains("x-overflow unset → \"reject-publish\""), "{shown}");
    assert!(shown.contains("because the contract's queue limit changed"), "{shown}");
    assert!(shown.contains("RabbitMQ policy (`max-length`"), "{shown}");
}

#[test]
fn queue_arguments_changed_by_a_work_queue_limit() {
    let report = assert_breaks("task_queue_limit", &[Rule::QueueArgumentsChanged], 83);
    let message = &report.breaks[0].message;
    assert!(message.starts_with("queue shop.packing would be declared with"), "{message}");
    assert!(message.contains("x-max-length unset → 500, x-max-length-bytes unset → 1048576"), "{message}");
}

#[test]
fn rpc_queue_renamed() {
    let report = assert_breaks("rpc_queue_renamed", &[Rule::RpcQueueRenamed], 73);
    assert!(report.breaks[0].message.contains("\"shop.pricing\" (was \"shop.Pricer\")"));
}

#[test]
fn task_queue_renamed() {
    // The old work queue is gone and a new one appears: no `queue-arguments-changed` on top.
    let report = assert_breaks("task_queue_renamed", &[Rule::TaskQueueRenamed], 83);
    assert!(report.breaks[0].message.contains("\"shop.packers\" (was \"shop.packing\")"), "{}", report.breaks[0]);
}

#[test]
fn task_removed_while_its_message_stays() {
    let report = assert_breaks("task_removed", &[Rule::TaskRemoved], 82);
    assert!(report.breaks[0].message.contains("shop.v1.PackOrder is no longer a task"), "{}", report.breaks[0]);
    assert!(report.breaks[0].fix.contains("queue \"shop.packing\" is empty"), "{}", report.breaks[0]);
}

#[test]
fn a_removed_task_message_is_a_removed_type() {
    let report = assert_breaks("type_removed_task", &[Rule::TypeRemoved], 82);
    assert!(report.breaks[0].message.contains("it is a task on work queue \"shop.packing\""), "{}", report.breaks[0]);
}

#[test]
fn event_removed_while_its_message_stays() {
    // Only `event-removed`: the message is still there (no `type-removed`), and the queues that remain keep
    // their arguments.
    let report = assert_breaks("event_removed", &[Rule::EventRemoved], 47);
    assert!(report.breaks[0].message.contains("shop.v1.OrderShipped is no longer an event"), "{}", report.breaks[0]);
}

#[test]
fn wire_format_changed_on_an_event() {
    let report = assert_breaks("wire_format_changed", &[Rule::WireFormatChanged], 47);
    let shown = report.breaks[0].to_string();
    assert!(shown.contains("is now published as JSON by default (was PROTOBUF)"), "{shown}");
    assert!(shown.contains("readers in other languages"), "{shown}");
}

#[test]
fn wire_format_changed_on_a_task() {
    let report = assert_breaks("task_wire_format_changed", &[Rule::WireFormatChanged], 83);
    assert!(report.breaks[0].message.contains("task shop.v1.PackOrder is now sent as JSON"), "{}", report.breaks[0]);
}

#[test]
fn queue_arguments_changed_by_a_quorum_work_queue() {
    let report = assert_breaks("task_quorum_queue", &[Rule::QueueArgumentsChanged], 83);
    let message = &report.breaks[0].message;
    assert!(message.starts_with("queue shop.packing would be declared with"), "{message}");
    assert!(message.contains("x-queue-type unset → \"quorum\""), "{message}");
}

#[test]
fn queue_arguments_changed_by_a_quorum_request_queue() {
    // RabbitMQ refuses to declare the service's queue again as another type, so the servers would not start.
    let report = assert_breaks("rpc_quorum_queue", &[Rule::QueueArgumentsChanged], 73);
    let message = &report.breaks[0].message;
    assert!(message.starts_with("queue shop.Pricer would be declared with"), "{message}");
    assert!(message.contains("x-queue-type unset → \"quorum\""), "{message}");
}

#[test]
fn rules_tightened_on_a_field() {
    let report = assert_breaks("rules_tightened", &[Rule::RulesTightened], 37);
    let message = &report.breaks[0].message;
    assert!(message.contains("`required` (new), `max_len: 64` (new)"), "{message}");
    assert!(report.breaks[0].fix.contains("(no rules)"), "{}", report.breaks[0]);
}

#[test]
fn rules_tightened_by_a_new_field_its_default_breaks() {
    // Only `shop`: the optional, upper-bounded and `defined` new fields accept what old senders leave there.
    let report = assert_breaks("rules_tightened_by_a_new_field", &[Rule::RulesTightened], 45);
    let message = &report.breaks[0].message;
    assert!(message.contains("new field 6 `shop`") && message.ends_with(": `required`"), "{message}");
}

#[test]
fn loosened_rules_pass() {
    // A bound dropped, a bound widened, and `min: 0` on a uint32 (which bounds nothing).
    let report = check("rules_loosened", &[]);
    assert!(report.breaks.is_empty(), "loosened rules were reported:\n{}", text(&report));
}

/// `text`, a manifest of the current format, as format version 1 wrote it: no tasks (nor their work queues),
/// wire formats or validation rules.
fn as_version_1(text: &str) -> String {
    let mut out = Vec::new();
    for paragraph in text.split("\n\n") {
        if paragraph.starts_with("task ") || paragraph.lines().any(|l| l.starts_with("  task ")) {
            continue;
        }
        let lines = paragraph
            .lines()
            .filter(|l| !l.starts_with("  wire-format "))
            .map(|l| l.split(" rules=").next().unwrap_or(l).replace("warren-manifest 2", "warren-manifest 1"));
        out.push(lines.collect::<Vec<_>>().join("\n"));
    }
    out.join("\n\n")
}

#[test]
fn a_version_1_baseline_compares_only_what_it_records() {
    let v1 = as_version_1(&manifest("baseline").unwrap().render(""));
    let old = Manifest::parse(&v1).unwrap_or_else(|e| panic!("a version-1 manifest does not read: {e}\n{v1}"));
    assert_eq!(old.format_version, 1);
    assert!(old.tasks.is_empty() && !old.records_tasks_and_rules());
    // What version 1 did not record is not reported as changed: every field seems to have gained its rules,
    // and every event its wire format.
    let new = manifest("baseline").unwrap();
    let report = compat::check(&old, &new, &[]);
    assert!(report.breaks.is_empty(), "{}", text(&report));
    for case in ["rules_tightened", "wire_format_changed", "task_queue_renamed"] {
        let report = compat::check(&old, &manifest(case).unwrap(), &[]);
        assert!(report.breaks.is_empty(), "{case}:\n{}", text(&report));
    }
    // What it did record still counts.
    let report = compat::check(&old, &manifest("routing_key_changed").unwrap(), &[]);
    assert_eq!(report.breaks.iter().map(|b| b.rule).collect::<Vec<_>>(), [Rule::RoutingKeyChanged]);
    // The same baseline claiming version 2 would report every rule as new: the version is what keeps it quiet.
    let claimed = Manifest { format_version: 2, ..old };
    let report = compat::check(&claimed, &new, &[]);
    assert!(report.breaks.iter().any(|b| b.rule == Rule::RulesTightened), "{}", text(&report));
}

#[test]
fn a_marker_on_the_item_waives_its_rule() {
    let report = check("waived_by_marker", &[]);
    let [change] = report.breaks.as_slice() else { panic!("expected one break:\n{}", text(&report)) };
    assert_eq!((change.rule, change.waived), (Rule::RoutingKeyChanged, Some(Waiver::Marker)));
    assert!(report.is_compatible());
}

#[test]
fn a_marker_at_the_top_of_the_file_waives_a_removal_from_it() {
    let report = check("waived_by_file_marker", &[]);
    let [change] = report.breaks.as_slice() else { panic!("expected one break:\n{}", text(&report)) };
    assert_eq!((change.rule, change.waived), (Rule::TypeRemoved, Some(Waiver::Marker)));
    assert!(report.is_compatible());
}

#[test]
fn allow_waives_a_rule_everywhere() {
    let report = check("queue_arguments_changed", &[Rule::QueueArgumentsChanged]);
    assert_eq!(report.breaks.len(), 2);
    assert!(report.breaks.iter().all(|b| b.waived == Some(Waiver::Flag)));
    assert!(report.is_compatible());
    // Other rules still fire.
    assert!(!check("routing_key_changed", &[Rule::QueueArgumentsChanged]).is_compatible());
}

#[test]
fn a_marker_naming_no_rule_is_an_error_at_its_line() {
    let error = manifest("unknown_rule_in_marker").expect_err("an unknown rule in a marker must fail");
    let text = error.to_string();
    assert_eq!(error.location().map(|l| l.line), Some(47), "{text}");
    assert!(text.contains("unknown rule \"routing-key-change\""), "{text}");
}

#[test]
fn every_rule_has_a_fixture_and_a_docs_entry() {
    for rule in Rule::ALL {
        let case = rule.name().replace('-', "_");
        assert!(case_dir(&case).join("shop.proto").is_file(), "no fixture for {rule}");
    }
    // docs/compat.md's table lists every rule, in `Rule::ALL`'s order, with what it protects.
    let page = std::fs::read_to_string(warren_tests::workspace_root().join("docs/compat.md")).unwrap();
    let rows: Vec<(String, String)> = page
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|row| {
            let (rule, rest) = row.split_once("` | ")?;
            let protects = rest.split(" | ").next()?;
            Some((rule.to_owned(), protects.to_lowercase()))
        })
        .collect();
    let expected: Vec<(String, String)> =
        Rule::ALL.iter().map(|r| (r.name().to_owned(), r.category().as_str().to_owned())).collect();
    assert_eq!(rows, expected, "docs/compat.md's rule table is out of step with Rule::ALL (name, protects)");
}
