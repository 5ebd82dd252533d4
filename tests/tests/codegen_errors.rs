//! Contract errors say where the problem is (file and line), what it is, and how to fix it.
//!
//! Each case loads one tiny fixture from `fixtures/errors/<case>/<case>.proto` whose offending declaration
//! sits on a known line; `errors_in_two_files/` holds two files with one mistake each, reported together.

use std::path::PathBuf;

use warren_codegen::{Config, Contracts, Error};

/// The include directory of one fixture case.
fn case_dir(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/errors").join(case)
}

/// Loads `<case>/<case>.proto`.
fn load(case: &str) -> Result<Contracts, Error> {
    warren_codegen::load(&Config::new([case_dir(case)], [format!("{case}.proto")]))
}

/// Loads a case that must fail, and returns its error.
fn load_error(case: &str) -> Error {
    match load(case) {
        Ok(contracts) => panic!("fixture {case} loaded, but it should fail: {contracts:#?}"),
        Err(error) => error,
    }
}

/// Asserts that `error` points at `line` of the case's file, and that its message contains every phrase.
fn assert_reported(error: &Error, case: &str, line: usize, phrases: &[&str]) {
    let text = error.to_string();
    let file = format!("{case}.proto");
    let location = error.location().unwrap_or_else(|| panic!("error has no location: {text}"));
    assert!(location.file.ends_with(&file), "location file {} is not {file}; error:\n{text}", location.file.display());
    assert_eq!(location.line, line, "wrong line; error:\n{text}");
    assert!(text.contains(&format!("{file}:{line}")), "message does not say `{file}:{line}`:\n{text}");
    for phrase in phrases {
        assert!(text.contains(phrase), "message does not contain {phrase:?}:\n{text}");
    }
}

/// Asserts that the message carries a `help:` line with `fix` in it.
fn assert_help(error: &Error, fix: &str) {
    let text = error.to_string();
    let help = text.split_once("\n  help: ").map(|(_, help)| help);
    let help = help.unwrap_or_else(|| panic!("message has no `help:` line:\n{text}"));
    assert!(help.contains(fix), "help does not contain {fix:?}:\n{text}");
}

#[test]
fn a_proto_syntax_error_is_a_proto_error_at_its_line() {
    let error = load_error("syntax_error");
    assert!(matches!(error, Error::Proto { .. }), "expected Error::Proto, got {error:?}");
    // `int64 id 1;` on line 6 lacks its `=`.
    assert_reported(&error, "syntax_error", 6, &["expected '=', but found '1'"]);
}

#[test]
fn an_unknown_option_field_is_a_proto_error_naming_the_field() {
    let error = load_error("unknown_option_field");
    assert!(matches!(error, Error::Proto { .. }), "expected Error::Proto, got {error:?}");
    assert_reported(&error, "unknown_option_field", 10, &["(warren.event)", "'routnig_key'"]);
}

#[test]
fn an_event_without_exchange_says_it_has_no_exchange() {
    let error = load_error("event_without_exchange");
    assert!(matches!(error, Error::Contract { .. }), "expected Error::Contract, got {error:?}");
    assert_reported(&error, "event_without_exchange", 10, &["event fixtures.v1.OrderPlaced has no exchange"]);
    assert_help(&error, "add `exchange: \"<name>\"`");
}

#[test]
fn an_event_on_an_undeclared_exchange_lists_the_declared_ones() {
    let error = load_error("undeclared_exchange");
    assert!(matches!(error, Error::Contract { .. }), "expected Error::Contract, got {error:?}");
    assert_reported(
        &error,
        "undeclared_exchange",
        11,
        &["uses exchange \"order.events\", which is not declared", "declared: \"orders.events\", \"users.events\""],
    );
    assert_help(&error, "option (warren.exchange) = { name: \"order.events\" kind: TOPIC };");
}

#[test]
fn two_events_with_one_routing_key_on_one_exchange_are_rejected() {
    let error = load_error("duplicate_routing_key");
    assert!(matches!(error, Error::Contract { .. }), "expected Error::Contract, got {error:?}");
    // The second event, `message OrderCreated` on line 14, is the one reported.
    assert_reported(
        &error,
        "duplicate_routing_key",
        14,
        &[
            "fixtures.v1.OrderPlaced and fixtures.v1.OrderCreated",
            "both use routing key \"order.placed\" on exchange \"orders.events\"",
        ],
    );
    assert_help(&error, "give each event its own routing key");
}

#[test]
fn an_rpc_service_without_a_queue_says_it_has_no_queue() {
    let error = load_error("service_without_queue");
    assert!(matches!(error, Error::Contract { .. }), "expected Error::Contract, got {error:?}");
    assert_reported(&error, "service_without_queue", 7, &["service fixtures.v1.Pricer has no queue"]);
    assert_help(&error, "add `option (warren.service) = { queue: \"Pricer\" };` inside the service");
}

#[test]
fn an_exchange_without_kind_says_it_has_no_kind() {
    let error = load_error("exchange_without_kind");
    assert!(matches!(error, Error::Contract { .. }), "expected Error::Contract, got {error:?}");
    assert_reported(&error, "exchange_without_kind", 7, &["exchange \"orders.events\" has no kind"]);
    assert_help(&error, "add `kind: TOPIC`");
}

#[test]
fn a_routing_key_with_a_wildcard_is_not_a_plain_dotted_key() {
    let error = load_error("wildcard_routing_key");
    assert!(matches!(error, Error::Contract { .. }), "expected Error::Contract, got {error:?}");
    assert_reported(&error, "wildcard_routing_key", 10, &["routing key \"order.*\", which is not a plain dotted key"]);
    assert_help(&error, "without the wildcards");
}

#[test]
fn an_exchange_declared_twice_names_both_declarations() {
    let error = load_error("exchange_declared_twice");
    assert!(matches!(error, Error::Contract { .. }), "expected Error::Contract, got {error:?}");
    // The second declaration (line 9) is reported, and the first (line 7) named.
    assert_reported(
        &error,
        "exchange_declared_twice",
        9,
        &["exchange \"orders.events\" is declared twice", "first at ", "exchange_declared_twice.proto:7"],
    );
    assert_help(&error, "declare each exchange once");
}

#[test]
fn a_streaming_rpc_is_rejected_because_it_streams() {
    let error = load_error("streaming_rpc");
    assert!(matches!(error, Error::Contract { .. }), "expected Error::Contract, got {error:?}");
    assert_reported(&error, "streaming_rpc", 10, &["rpc fixtures.v1.Ticker.Watch streams"]);
    assert_help(&error, "use unary rpcs");
}

#[test]
fn rpcs_whose_client_methods_would_share_a_name_are_rejected() {
    let error = load_error("method_name_collision");
    assert!(matches!(error, Error::Contract { .. }), "expected Error::Contract, got {error:?}");
    // `GetWith`'s `get_with` is `Get`'s per-call-options method.
    assert_reported(&error, "method_name_collision", 10, &["client method `get_with`", "rpc Get already has"]);
    assert_help(&error, "rename the rpc");
}

#[test]
fn a_valid_contract_loads_with_its_events_and_services() {
    let contracts = load("valid").unwrap_or_else(|e| panic!("valid fixture failed to load:\n{e}"));
    assert_eq!(contracts.packages.len(), 1);
    let package = &contracts.packages[0];
    assert_eq!(package.name, "fixtures.v1");
    let events: Vec<(&str, &str)> =
        package.events.iter().map(|e| (e.full_name.as_str(), e.routing_key.as_str())).collect();
    assert_eq!(
        events,
        [
            ("fixtures.v1.OrderPlaced", "order.placed"),
            ("fixtures.v1.OrderShipped", "order.shipped"),
            ("fixtures.v1.Audited", ""),
        ]
    );
    assert_eq!(package.groups.len(), 2, "one event group per exchange");
    assert_eq!(package.services.len(), 1);
    let service = &package.services[0];
    assert_eq!(
        (service.name.as_str(), service.queue.as_str(), service.default_timeout_ms),
        ("Pricer", "fixtures.Pricer", 5000)
    );
    assert_eq!(service.methods.len(), 1);
    assert_eq!(contracts.exchanges.keys().map(String::as_str).collect::<Vec<_>>(), ["audit", "orders.events"]);
}

#[test]
fn a_quorum_event_with_a_priority_is_rejected_because_quorum_queues_have_none() {
    let error = load_error("quorum_with_priority");
    assert!(matches!(error, Error::Contract { .. }), "{error:?}");
    assert_reported(&error, "quorum_with_priority", 10, &["quorum queues and a priority"]);
    assert_help(&error, "drop `priority`, or use `queue_type: CLASSIC`");
}

#[test]
fn a_retry_policy_without_max_attempts_is_rejected() {
    let error = load_error("retry_without_attempts");
    assert!(matches!(error, Error::Contract { .. }), "{error:?}");
    assert_reported(&error, "retry_without_attempts", 10, &["retry policy without max_attempts"]);
    assert_help(&error, "add `max_attempts: N`");
}

#[test]
fn a_queue_limit_without_a_bound_is_rejected() {
    let error = load_error("queue_limit_without_bound");
    assert!(matches!(error, Error::Contract { .. }), "{error:?}");
    assert_reported(
        &error,
        "queue_limit_without_bound",
        10,
        &["event fixtures.v1.Bounded has a queue limit without a bound"],
    );
    assert_help(&error, "set `max_messages: N` and/or `max_bytes: N`");
}

#[test]
fn a_queue_limit_rabbitmq_cannot_take_is_rejected() {
    let error = load_error("queue_limit_too_large");
    assert_reported(
        &error,
        "queue_limit_too_large",
        9,
        &["task fixtures.v1.Huge has a queue limit of 4294967295 max_bytes, above RabbitMQ's limit of 2147483647"],
    );
    assert_help(&error, "between 1 and 2147483647");
}

#[test]
fn a_template_naming_no_field_lists_the_fields() {
    let error = load_error("template_unknown_field");
    assert_reported(
        &error,
        "template_unknown_field",
        10,
        &["routing key \"order.{regoin}.placed\", but it has no field \"regoin\" (fields: id, region)"],
    );
    assert_help(&error, "name one of the event's fields");
}

#[test]
fn a_template_on_a_float_field_says_why_it_cannot_be_a_key_word() {
    let error = load_error("template_float_field");
    assert_reported(&error, "template_float_field", 10, &["field \"amount\" is a floating-point number"]);
    assert_help(&error, "template a singular string, integer, bool or enum field");
}

/// A proto2 `optional` field has no synthetic oneof, but prost makes it an `Option` all the same: it may be
/// unset, and cannot fill a routing key (the generated code would not compile).
#[test]
fn a_template_field_must_always_have_a_value() {
    let error = load_error("template_proto2_optional");
    assert_reported(&error, "template_proto2_optional", 10, &["field \"region\" may be unset"]);
    assert_help(&error, "template a singular string, integer, bool or enum field");
}

#[test]
fn a_template_needs_a_topic_exchange() {
    let error = load_error("template_on_direct");
    assert_reported(&error, "template_on_direct", 10, &["templated routing key \"order.{region}\" on direct exchange"]);
    assert_help(&error, "templates need a topic exchange");
}

#[test]
fn keys_some_routing_key_matches_both_are_refused() {
    let error = load_error("overlapping_keys");
    assert_reported(
        &error,
        "overlapping_keys",
        14,
        &["have routing keys \"order.{region}\" and \"order.eu\", which some key matches both"],
    );
}

#[test]
fn a_declared_subscription_that_can_never_match_is_a_codegen_error() {
    let error = load_error("subscription_never_matches");
    assert_reported(
        &error,
        "subscription_never_matches",
        8,
        &["subscription \"users\" has pattern \"user.*\", which can never match an event", "order.placed"],
    );
    assert_help(&error, "fix the pattern");
}

#[test]
fn a_rule_that_does_not_fit_the_field_type_is_a_codegen_error() {
    let error = load_error("rule_misfit");
    assert_reported(
        &error,
        "rule_misfit",
        11,
        &["field fixtures.v1.OrderPlaced.customer has `min`/`max`, which apply to singular number fields only"],
    );
    assert_help(&error, "min_len");
}

/// A bound codegen would write as a literal the field cannot hold (or as `inff64`, which is no literal) is a
/// contract error, not a panic of `regen` or generated code that does not compile.
#[test]
fn bounds_must_be_finite_and_fit_the_field() {
    let error = load_error("bound_not_finite");
    assert_reported(&error, "bound_not_finite", 11, &["field fixtures.v1.OrderPlaced.total has the bound inf"]);
    assert_help(&error, "finite");
    // 2^63 - 1 reads as the double 2^63, which no i64 holds.
    let error = load_error("bound_beyond_type");
    assert_reported(
        &error,
        "bound_beyond_type",
        11,
        &["field fixtures.v1.OrderPlaced.id is an integer field (i64), but has the bound 9223372036854776000"],
    );
}

/// What Warren generates must compile: names it would generate twice, or that are no Rust names, are contract
/// errors at the declaration that makes them.
#[test]
fn generated_names_are_rust_names_and_distinct() {
    let error = load_error("nested_event_names_collide");
    assert_reported(
        &error,
        "nested_event_names_collide",
        13,
        &["events fixtures.v1.Order.Created and fixtures.v1.Invoice.Created would both be the variant Created"],
    );
    assert_help(&error, "rename one of the messages");
    let error = load_error("field_named_like_generated_method");
    assert_reported(
        &error,
        "field_named_like_generated_method",
        12,
        &["field `worker` of task fixtures.v1.SendMail: prost generates a method worker() for it"],
    );
    let error = load_error("exchange_name_not_rust");
    assert_reported(
        &error,
        "exchange_name_not_rust",
        7,
        &["exchange \"3pl.events\" would name its generated enum 3plEvents, which is not a Rust name"],
    );
}

#[test]
fn declared_errors_must_be_one_oneof() {
    let error = load_error("errors_not_oneof");
    assert_reported(
        &error,
        "errors_not_oneof",
        7,
        &["error message fixtures.v1.OrderError must consist of exactly one oneof"],
    );
    assert_help(&error, "oneof reason");
}

#[test]
fn a_message_cannot_be_both_event_and_task() {
    let error = load_error("event_and_task");
    assert_reported(&error, "event_and_task", 11, &["message fixtures.v1.OrderPlaced is both an event and a task"]);
}

/// An item that fails is left out of the checks that follow, so a fixture with one mistake reports one
/// problem: an exchange without a kind does not also make its event's exchange "undeclared".
#[test]
fn a_contract_with_one_mistake_reports_one_problem() {
    let cases = std::fs::read_dir(case_dir("")).unwrap().map(|entry| entry.unwrap().file_name());
    let cases: Vec<String> = cases.map(|name| name.into_string().unwrap()).collect();
    for case in cases.iter().filter(|case| !["valid", "errors_in_two_files"].contains(&case.as_str())) {
        let error = load_error(case);
        assert_eq!(error.errors().len(), 1, "{case} reports more than its one mistake:\n{error}");
    }
}

/// Reading goes on past a mistake: one run reports every problem, each at its file and line, under a count.
#[test]
fn mistakes_in_two_files_are_both_reported_in_one_run() {
    let dir = case_dir("errors_in_two_files");
    let error = match warren_codegen::load(&Config::new([&dir], ["orders.proto", "pricing.proto"])) {
        Ok(contracts) => panic!("the fixture loaded, but it should fail: {contracts:#?}"),
        Err(error) => error,
    };
    assert!(matches!(error, Error::Errors(_)), "expected Error::Errors, got {error:?}");
    let [orders, pricing] = error.errors() else { panic!("expected two errors:\n{error}") };
    // `OrderPlaced`'s event option (line 10) lacks its routing key; `Pricer` (line 7) lacks its queue.
    assert_reported(orders, "orders", 10, &["event fixtures.v1.OrderPlaced has no routing key"]);
    assert_reported(pricing, "pricing", 7, &["service fixtures.v1.Pricer has no queue"]);
    assert_eq!(error.location(), orders.location(), "the aggregate's location is its first error's");
    let text = error.to_string().replace(&format!("{}/", dir.display()), "");
    insta::with_settings!({ snapshot_path => "snapshots", prepend_module_to_snapshot => false, omit_expression => true }, {
        insta::assert_snapshot!("errors__errors_in_two_files", text);
    });
}
