//! The OpenAPI 3.1 document of the gateway's routes, generated from the descriptors: one path per reachable
//! event, task, method and alias, each request's schema from its message's fields (in the proto3 JSON
//! mapping, with the contract's rules as `minimum`, `maxLength`, `required`, …).

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use crate::config::Group;
use crate::{Gateway, Target};

/// The document for what `gateway` exposes.
pub(crate) fn document(gateway: &Gateway) -> Value {
    let mut doc = Document { gateway, schemas: Map::new(), paths: Map::new() };
    let catalog = &gateway.catalog;
    for event in catalog.events().filter(|e| gateway.events.contains(&e.full_name)) {
        let path = format!("/events/{}", event.full_name);
        doc.send(&path, &event.full_name, &event.doc, "events", Group::Publish);
    }
    for task in catalog.tasks().filter(|t| gateway.tasks.contains(&t.full_name)) {
        let path = format!("/tasks/{}", task.full_name);
        doc.send(&path, &task.full_name, &task.doc, "tasks", Group::Publish);
    }
    for (path, target) in &gateway.aliases {
        let (name, doc_text) = match target {
            Target::Event(name) => (name, catalog.event(name).map(|e| e.doc.clone()).unwrap_or_default()),
            Target::Task(name) => (name, catalog.task(name).map(|t| t.doc.clone()).unwrap_or_default()),
            Target::Health => continue,
        };
        doc.send(path, name, &doc_text, "aliases", Group::Publish);
    }
    for service in catalog.services() {
        for method in &service.methods {
            let name = format!("{}/{}", service.full_name, method.name);
            if gateway.methods.contains(&name) {
                doc.call(&name, &method.input, &method.output, &method.doc, method.errors.is_some());
            }
        }
    }
    let Document { schemas, mut paths, .. } = doc;
    paths.insert(
        "/health".into(),
        json!({ "get": {
            "operationId": "health",
            "tags": ["health"],
            "summary": "The process is up.",
            "responses": { "200": { "description": "Up.", "content": { "application/json": { "schema": { "type": "object" } } } } },
        } }),
    );
    paths.insert(
        "/ready".into(),
        json!({ "get": {
            "operationId": "ready",
            "tags": ["health"],
            "summary": "The bus is connected to the broker.",
            "responses": {
                "200": { "description": "Ready; the bus's health and the WebSocket counts.", "content": { "application/json": { "schema": { "type": "object" } } } },
                "503": { "description": "Not connected; the bus's health says why.", "content": { "application/json": { "schema": { "type": "object" } } } },
            },
        } }),
    );
    let mut components = json!({
        "schemas": schemas,
        "responses": { "Problem": {
            "description": "An error, as RFC 9457 problem details.",
            "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } },
        } },
    });
    components["schemas"]["Problem"] = problem_schema();
    let secured = [Group::Publish, Group::Call].iter().any(|g| !gateway.config.tokens.of(*g).is_empty());
    if secured {
        components["securitySchemes"] = json!({ "bearer": { "type": "http", "scheme": "bearer" } });
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Warren gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Warren's contracts over HTTP: publish events, enqueue tasks and call methods, generated from the contracts' descriptors.",
        },
        "paths": paths,
        "components": components,
    })
}

struct Document<'a> {
    gateway: &'a Gateway,
    schemas: Map<String, Value>,
    paths: Map<String, Value>,
}

impl Document<'_> {
    /// A `POST` that publishes or enqueues `type_name`, answered 202.
    fn send(&mut self, path: &str, type_name: &str, doc: &str, tag: &str, group: Group) {
        let Ok(descriptor) = self.gateway.catalog.message(type_name) else { return };
        self.message(&descriptor);
        let mut operation = json!({
            "operationId": operation_id(&format!("{tag}_{path}")),
            "tags": [tag],
            "summary": summary(doc, type_name),
            "requestBody": request_body(type_name),
            "responses": {
                "202": {
                    "description": "Published, confirmed by the broker.",
                    "content": { "application/json": { "schema": {
                        "type": "object",
                        "properties": { "message_id": { "type": "string" } },
                        "required": ["message_id"],
                    } } },
                },
                "400": problem(), "404": problem(), "413": problem(), "415": problem(), "422": problem(),
                "503": problem(), "504": problem(),
            },
        });
        if !doc.is_empty() {
            operation["description"] = json!(doc);
        }
        self.secure(&mut operation, group);
        self.paths.insert(path.to_owned(), json!({ "post": operation }));
    }

    /// `POST /rpc/{Service}/{Method}`, answered 200 with the response.
    fn call(&mut self, method: &str, input: &str, output: &str, doc: &str, declares_errors: bool) {
        let (Ok(request), Ok(response)) = (self.gateway.catalog.message(input), self.gateway.catalog.message(output))
        else {
            return;
        };
        self.message(&request);
        self.message(&response);
        let timeout = |name: &str, example: &str| {
            json!({
                "name": name,
                "in": "header",
                "required": false,
                "description": "The call's deadline, at most the method's contract timeout.",
                "schema": { "type": "string", "examples": [example] },
            })
        };
        let mut operation = json!({
            "operationId": operation_id(&format!("rpc_{method}")),
            "tags": ["rpc"],
            "summary": summary(doc, method),
            "parameters": [timeout("X-Warren-Timeout", "500ms"), timeout("grpc-timeout", "500m")],
            "requestBody": request_body(input),
            "responses": {
                "200": {
                    "description": "The method's response.",
                    "content": { "application/json": { "schema": reference(output) } },
                },
                "400": problem(), "404": problem(), "413": problem(), "503": problem(), "504": problem(),
                "default": problem(),
            },
        });
        if declares_errors {
            operation["responses"]["422"] = json!({
                "description": "One of the method's declared errors: `error` names its type, `details` holds it.",
                "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } },
            });
        }
        if !doc.is_empty() {
            operation["description"] = json!(doc);
        }
        self.secure(&mut operation, Group::Call);
        self.paths.insert(format!("/rpc/{method}"), json!({ "post": operation }));
    }

    fn secure(&self, operation: &mut Value, group: Group) {
        if self.gateway.config.tokens.of(group).is_empty() {
            return;
        }
        operation["security"] = json!([{ "bearer": [] }]);
        operation["responses"]["401"] = problem();
    }

    /// Adds the schema of `message` (and of every message it holds) to the components.
    fn message(&mut self, message: &MessageDescriptor) {
        let name = message.full_name().to_owned();
        if self.schemas.contains_key(&name) || well_known(message).is_some() {
            return;
        }
        // Reserved first, so that a message holding itself ends.
        self.schemas.insert(name.clone(), json!({}));
        let checks = self
            .gateway
            .catalog
            .contracts()
            .packages
            .iter()
            .flat_map(|p| &p.messages)
            .find(|m| m.full_name == name)
            .map(|m| m.checks.clone())
            .unwrap_or_default();
        let mut properties = Map::new();
        let mut required = Vec::new();
        for field in message.fields() {
            let mut schema = self.field(&field);
            if let Some(check) = checks.iter().find(|c| c.name == field.name()) {
                let rules = check.rules;
                let target = if field.is_list() { &mut schema["items"] } else { &mut schema };
                if let Some(min) = rules.min {
                    target["minimum"] = json!(min);
                }
                if let Some(max) = rules.max {
                    target["maximum"] = json!(max);
                }
                let (min_key, max_key) = if field.is_list() || field.is_map() {
                    ("minItems", "maxItems")
                } else {
                    ("minLength", "maxLength")
                };
                if let Some(min) = rules.min_len {
                    schema[min_key] = json!(min);
                }
                if let Some(max) = rules.max_len {
                    schema[max_key] = json!(max);
                }
                if rules.required {
                    required.push(json!(field.json_name()));
                }
            }
            properties.insert(field.json_name().to_owned(), schema);
        }
        let mut schema = json!({ "type": "object", "properties": properties, "additionalProperties": false });
        if !required.is_empty() {
            schema["required"] = Value::Array(required);
        }
        self.schemas.insert(name, schema);
    }

    fn field(&mut self, field: &FieldDescriptor) -> Value {
        if field.is_map() {
            let Kind::Message(entry) = field.kind() else { return json!({}) };
            let value = entry.map_entry_value_field();
            return json!({ "type": "object", "additionalProperties": self.kind(&value.kind()) });
        }
        let single = self.kind(&field.kind());
        if field.is_list() { json!({ "type": "array", "items": single }) } else { single }
    }

    fn kind(&mut self, kind: &Kind) -> Value {
        match kind {
            Kind::Double | Kind::Float => json!({ "type": "number" }),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => json!({ "type": "integer", "format": "int32" }),
            // OpenAPI's `int32` is signed: an unsigned 32-bit field is bounded instead.
            Kind::Uint32 | Kind::Fixed32 => json!({ "type": "integer", "minimum": 0, "maximum": u32::MAX }),
            // 64-bit integers are strings in the proto3 JSON mapping; numbers are read too.
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => {
                json!({ "type": ["string", "integer"], "format": "int64", "pattern": "^-?[0-9]+$" })
            }
            Kind::Bool => json!({ "type": "boolean" }),
            Kind::String => json!({ "type": "string" }),
            Kind::Bytes => json!({ "type": "string", "contentEncoding": "base64" }),
            Kind::Enum(e) => {
                let names: Vec<String> = e.values().map(|v| v.name().to_owned()).collect();
                json!({ "type": "string", "enum": names })
            }
            Kind::Message(m) => match well_known(m) {
                Some(schema) => schema,
                None => {
                    self.message(m);
                    reference(m.full_name())
                }
            },
        }
    }
}

/// The JSON shape of the well-known types the proto3 mapping writes specially.
fn well_known(message: &MessageDescriptor) -> Option<Value> {
    Some(match message.full_name() {
        "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
        "google.protobuf.Duration" => json!({ "type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?s$" }),
        "google.protobuf.FieldMask" => json!({ "type": "string" }),
        "google.protobuf.Struct" | "google.protobuf.Any" | "google.protobuf.Empty" => json!({ "type": "object" }),
        "google.protobuf.ListValue" => json!({ "type": "array" }),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.StringValue" | "google.protobuf.BytesValue" => json!({ "type": ["string", "null"] }),
        "google.protobuf.BoolValue" => json!({ "type": ["boolean", "null"] }),
        "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => json!({ "type": ["number", "null"] }),
        "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => json!({ "type": ["integer", "null"] }),
        "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => {
            json!({ "type": ["string", "integer", "null"] })
        }
        _ => return None,
    })
}

fn reference(type_name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{type_name}") })
}

fn problem() -> Value {
    json!({ "$ref": "#/components/responses/Problem" })
}

fn request_body(type_name: &str) -> Value {
    json!({
        "required": true,
        "content": {
            "application/json": { "schema": reference(type_name) },
            "application/x-protobuf": { "schema": { "type": "string", "contentMediaType": "application/x-protobuf" } },
        },
    })
}

fn problem_schema() -> Value {
    json!({
        "type": "object",
        "description": "RFC 9457 problem details.",
        "properties": {
            "type": { "type": "string", "format": "uri-reference" },
            "title": { "type": "string" },
            "status": { "type": "integer" },
            "detail": { "type": "string" },
            "violations": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": { "field": { "type": "string" }, "problem": { "type": "string" } },
                    "required": ["field", "problem"],
                },
            },
            "code": { "type": "string", "description": "The RPC status code, e.g. DEADLINE_EXCEEDED." },
            "error": { "type": "string", "description": "A declared error's full type name." },
            "details": { "type": "object", "description": "A declared error, in the proto3 JSON mapping." },
        },
        "required": ["type", "title", "status"],
    })
}

/// The first sentence of `doc`, or the name.
fn summary(doc: &str, name: &str) -> String {
    let first = doc.lines().next().unwrap_or_default().trim();
    if first.is_empty() { name.to_owned() } else { first.to_owned() }
}

fn operation_id(path: &str) -> String {
    path.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect::<String>().replace("__", "_")
}
