//! `GET /openapi.json` is a valid OpenAPI 3.1 document of exactly the allowed routes: it validates against the
//! official OpenAPI 3.1 JSON schema (vendored at `tests/fixtures/openapi-3.1-schema.json`), and its request
//! schemas carry the contracts' fields and rules.

mod support;

use serde_json::Value;
use support::Server;
use warren_gateway::GatewayConfig;

fn openapi_schema() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/openapi-3.1-schema.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn errors(document: &Value) -> Vec<String> {
    let validator = jsonschema::draft202012::new(&openapi_schema()).expect("the vendored schema compiles");
    validator.iter_errors(document).map(|e| format!("{e} at {}", e.instance_path())).collect()
}

async fn document(config: &str) -> Value {
    let config = GatewayConfig::from_toml(config, "test").unwrap();
    let server = Server::start(warren::Bus::in_memory(), config).await;
    let answer = server.get("/openapi.json").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    server.stop().await;
    answer.json()
}

#[tokio::test]
async fn the_document_validates_against_the_openapi_3_1_schema() {
    let all = document(
        r#"
        events = ["*"]
        tasks = ["*"]
        services = ["*"]
        [aliases]
        "/messaging/user-notification" = "streaming.v1.UserNotification"
        "#,
    )
    .await;
    let errors = errors(&all);
    assert!(errors.is_empty(), "/openapi.json is not valid OpenAPI 3.1:\n{}", errors.join("\n"));
    let paths = all["paths"].as_object().unwrap();
    for path in [
        "/events/gametrade.v1.UserRegistered",
        "/tasks/gametrade.v1.BackgroundTask",
        "/rpc/at.v1.IntSummator/IntSum",
        "/messaging/user-notification",
    ] {
        assert!(paths.contains_key(path), "{path} is documented: {:?}", paths.keys().collect::<Vec<_>>());
    }
    let notification = &all["components"]["schemas"]["streaming.v1.UserNotification"];
    assert_eq!(notification["properties"]["userId"]["minimum"], 1.0, "{notification}");
    assert_eq!(notification["properties"]["message"]["maxLength"], 1000, "{notification}");
    assert_eq!(notification["required"], serde_json::json!(["message"]), "{notification}");
    assert_eq!(
        notification["properties"]["notificationType"]["enum"][1], "NOTIFICATION_TYPE_INFO",
        "enums by name, as the JSON mapping writes them"
    );
    let nested = &all["components"]["schemas"]["streaming.v1.OrderProcessing"]["properties"]["details"];
    assert_eq!(nested["$ref"], "#/components/schemas/streaming.v1.OrderProcessing.Details");
    let authenticated = &all["components"]["schemas"]["gametrade.v1.AuthenticateResponse"];
    assert_eq!(
        authenticated["properties"]["expiresInSeconds"],
        serde_json::json!({ "type": "integer", "minimum": 0, "maximum": 4_294_967_295_u32 }),
        "uint32 is bounded, not OpenAPI's signed int32: {authenticated}"
    );
    let rpc = &all["paths"]["/rpc/at.v1.IntSummator/IntSum"]["post"];
    assert!(rpc["responses"]["422"].is_object(), "the method declares errors: {rpc}");
}

#[tokio::test]
async fn only_allowed_routes_are_documented() {
    let some = document(r#"events = ["UserRegistered"]"#).await;
    assert!(errors(&some).is_empty());
    let paths: Vec<&String> = some["paths"].as_object().unwrap().keys().collect();
    assert_eq!(paths, ["/events/gametrade.v1.UserRegistered", "/health", "/ready"]);
    let none = document("").await;
    assert!(errors(&none).is_empty());
    let paths: Vec<&String> = none["paths"].as_object().unwrap().keys().collect();
    assert_eq!(paths, ["/health", "/ready"], "nothing allowed: only the health checks");
}

#[test]
fn the_validation_catches_an_invalid_document() {
    let broken = serde_json::json!({ "openapi": "3.1.0", "info": { "title": "x" }, "paths": { "no-slash": {} } });
    assert!(!errors(&broken).is_empty(), "the schema really is applied");
}
