//! `docs/asyncapi.yaml` is a valid AsyncAPI 3.0 document: it parses, and validates against the official JSON
//! schema, vendored from the npm package `@asyncapi/specs` at `docs/schemas/asyncapi-3.0.0.json`.

use serde_json::Value;
use warren_tests::workspace_root;

fn read_yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(workspace_root().join(path)).unwrap();
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

fn asyncapi_schema() -> Value {
    let text = std::fs::read_to_string(workspace_root().join("docs/schemas/asyncapi-3.0.0.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn the_asyncapi_document_validates_against_the_asyncapi_3_schema() {
    let document = read_yaml("docs/asyncapi.yaml");
    let validator = jsonschema::draft7::new(&asyncapi_schema()).expect("the vendored schema compiles");
    let errors: Vec<String> =
        validator.iter_errors(&document).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "docs/asyncapi.yaml is not valid AsyncAPI 3.0:\n{}", errors.join("\n"));
}

#[test]
fn the_validation_catches_an_invalid_document() {
    // The schema really is applied: a document with an unknown operation action must fail.
    let mut document = read_yaml("docs/asyncapi.yaml");
    let operations = document["operations"].as_object_mut().unwrap();
    let (_, operation) = operations.iter_mut().next().unwrap();
    operation["action"] = Value::from("publish");
    let validator = jsonschema::draft7::new(&asyncapi_schema()).unwrap();
    assert!(!validator.is_valid(&document), "an operation with action \"publish\" passed validation");
}

/// The manifest's blocks (`event <name>`, `service <name>`, …) with their indented lines.
fn manifest_blocks(kind: &str) -> Vec<(String, Vec<String>)> {
    let manifest = std::fs::read_to_string(workspace_root().join("proto/warren.lock")).unwrap();
    let mut blocks: Vec<(String, Vec<String>)> = Vec::new();
    let mut current = false;
    for line in manifest.lines() {
        if let Some(rest) = line.strip_prefix("  ") {
            if current {
                blocks.last_mut().unwrap().1.push(rest.to_owned());
            }
        } else {
            current = line.strip_prefix(kind).and_then(|rest| rest.strip_prefix(' ')).is_some();
            if current {
                blocks.push((line[kind.len() + 1..].to_owned(), Vec::new()));
            }
        }
    }
    blocks
}

/// The value of the block's line `key value`.
fn field<'a>(lines: &'a [String], key: &str) -> &'a str {
    lines.iter().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')).unwrap_or_else(|| panic!("no {key}"))
}

#[test]
fn every_event_and_rpc_has_a_channel_operations_and_a_payload() {
    let document = read_yaml("docs/asyncapi.yaml");
    let (events, services) = (manifest_blocks("event"), manifest_blocks("service"));
    assert!(events.len() > 10 && services.len() >= 3, "the manifest lists the contracts' events and services");
    for (event, lines) in &events {
        let channel = &document["channels"][event.as_str()];
        let exchange = field(lines, "exchange");
        assert_eq!(channel["bindings"]["amqp"]["exchange"]["name"], exchange, "{event}'s channel");
        assert!(channel["address"].is_string(), "{event}'s channel has an address");
        assert_eq!(document["operations"][format!("{event}.publish")]["action"], "send", "{event}");
        assert_eq!(document["operations"][format!("{event}.subscribe")]["action"], "receive", "{event}");
        assert!(document["components"]["schemas"][event.as_str()]["schema"].is_string(), "{event}'s payload");
    }
    for (service, lines) in &services {
        let queue = field(lines, "queue");
        assert_eq!(document["channels"][service.as_str()]["bindings"]["amqp"]["queue"]["name"], queue, "{service}");
        for method in lines.iter().filter_map(|l| l.strip_prefix("method ")) {
            let name = method.split(' ').next().unwrap();
            let call = &document["operations"][format!("{service}.{name}.call")];
            assert_eq!(call["action"], "send", "{service}.{name}");
        }
    }
    // One of each, in detail.
    let channel = &document["channels"]["gametrade.v1.UserRegistered"];
    assert_eq!(channel["address"], "user.registered");
    assert_eq!(channel["bindings"]["amqp"]["exchange"]["name"], "gametrade.events");
    assert_eq!(channel["bindings"]["amqp"]["exchange"]["type"], "topic");
    assert_eq!(document["operations"]["gametrade.v1.UserRegistered.publish"]["action"], "send");
    assert_eq!(document["operations"]["gametrade.v1.UserRegistered.subscribe"]["action"], "receive");
    let rpc = &document["operations"]["at.v1.IntSummator.IntSum.call"];
    assert_eq!(rpc["bindings"]["amqp"]["expiration"], 5000);
    assert_eq!(document["channels"]["at.v1.IntSummator"]["bindings"]["amqp"]["queue"]["name"], "at.IntSummator");
    let schema = &document["components"]["schemas"]["gametrade.v1.ItemListed"];
    assert_eq!(schema["schemaFormat"], "application/vnd.google.protobuf;version=3");
    let proto = schema["schema"].as_str().unwrap();
    assert!(proto.contains("message ItemListed {") && proto.contains("message Money {"), "{proto}");
    assert!(proto.contains("// Asking price.\n  Money price = 5;"), "field comments are kept:\n{proto}");
}
