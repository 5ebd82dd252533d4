//! RPC services: their `(warren.service)` and `(warren.method)` options, the errors they declare, and the
//! client method names their rpcs become.

use super::options::{Extensions, extension};
use super::{ErrorSet, Method, Service};
use crate::compile::SourceInfo;
use crate::error::{Error, Location, Problems, Result};
use crate::ident;
use crate::options_pb as pb;

// Field numbers inside descriptor protos, for source locations.
const SERVICE_OPTIONS: i32 = 3;
const SERVICE_EXT: i32 = 50102;

/// Reads a service and its methods; `None`, with every problem kept, when any of them is wrong.
pub(super) fn read_service(
    service: &prost_reflect::ServiceDescriptor,
    ext: &Extensions,
    info: &SourceInfo<'_>,
    problems: &mut Problems,
) -> Option<Service> {
    let found_before = problems.len();
    let location = info.location(service.path());
    let full_name = service.full_name().to_owned();
    let mut option_path = service.path().to_vec();
    option_path.extend([SERVICE_OPTIONS, SERVICE_EXT]);
    let option_location = info.location(&option_path);
    let option = problems.keep(extension::<pb::Service>(&service.options(), &ext.service, &option_location));
    let option = option.flatten().unwrap_or_default();
    let quorum = option.queue_type() == pb::QueueType::Quorum;
    let queue = option.queue;
    if queue.is_empty() {
        problems.push(Error::contract(
            option_location,
            format!("service {full_name} has no queue"),
            format!(
                "add `option (warren.service) = {{ queue: \"{}\" }};` inside the service",
                full_name.rsplit('.').next().unwrap_or_default()
            ),
        ));
    }
    let default_timeout_ms = Some(option.default_timeout_ms).filter(|t| *t > 0).unwrap_or(30_000);
    let service_errors = Some(option.errors).filter(|e| !e.is_empty());
    // Resolved when a method first uses it, so that a wrong one is reported once, not once per method.
    let mut service_set: Option<Option<ErrorSet>> = None;
    let mut methods = Vec::new();
    for method in service.methods() {
        let method_location = info.location(method.path());
        if method.is_client_streaming() || method.is_server_streaming() {
            problems.push(Error::contract(
                method_location,
                format!("rpc {}.{} streams, which Warren does not support over AMQP", full_name, method.name()),
                "use unary rpcs; publish a stream of events instead",
            ));
            continue;
        }
        let Some(method_option) =
            problems.keep(extension::<pb::Method>(&method.options(), &ext.method, &method_location))
        else {
            continue;
        };
        let method_option = method_option.unwrap_or_default();
        let timeout_ms = Some(method_option.timeout_ms).filter(|t| *t > 0);
        // `Some(None)`: the rpc declares errors, but they are wrong (and reported).
        let errors = match Some(method_option.errors).filter(|e| !e.is_empty()) {
            Some(name) => Some(problems.keep(read_errors(&name, service, method_location))),
            None => service_errors.as_ref().map(|name| {
                service_set.get_or_insert_with(|| problems.keep(read_errors(name, service, location.clone()))).clone()
            }),
        };
        let errors = match errors {
            Some(None) => continue,
            Some(Some(set)) => Some(set),
            None => None,
        };
        let input = method.input();
        let output = method.output();
        methods.push(Method {
            name: method.name().to_owned(),
            rust_name: ident::field_name(method.name()),
            input_rust: ident::rust_type_path(service.package_name(), &input),
            input: input.full_name().to_owned(),
            output_rust: ident::rust_type_path(service.package_name(), &output),
            output: output.full_name().to_owned(),
            timeout_ms,
            errors,
            doc: info.comment(method.path()),
        });
    }
    // The client has `new`, `with_timeout` and, per rpc, `<rpc>` and `<rpc>_with`: no two may share a name.
    let mut taken: std::collections::HashMap<String, String> =
        [("new", "the client's constructor"), ("with_timeout", "the client's deadline setter")]
            .map(|(name, what)| (name.to_owned(), what.to_owned()))
            .into();
    // Every rpc counts, read or not: a clash is a problem whatever else is wrong with the rpcs.
    for method in service.methods() {
        let rust_name = ident::field_name(method.name());
        let plain = rust_name.trim_start_matches("r#");
        let names = [plain.to_owned(), format!("{plain}_with")];
        if let Some((name, other)) = names.iter().find_map(|name| taken.get(name).map(|other| (name, other))) {
            problems.push(Error::contract(
                info.location(method.path()),
                format!(
                    "rpc {full_name}.{} would generate client method `{name}`, which {other} already has",
                    method.name()
                ),
                "rename the rpc: each rpc gets a client method `<rpc>` and `<rpc>_with` in snake case",
            ));
            continue;
        }
        for name in names {
            taken.insert(name, format!("rpc {}", method.name()));
        }
    }
    if problems.len() > found_before {
        return None;
    }
    let fingerprint = service_fingerprint(service);
    Some(Service {
        name: service.name().to_owned(),
        fingerprint,
        full_name,
        queue,
        default_timeout_ms,
        quorum,
        methods,
        doc: info.comment(service.path()),
        location,
    })
}

/// Resolves an `errors` option: a message of the service's package that is one oneof.
fn read_errors(name: &str, service: &prost_reflect::ServiceDescriptor, location: Location) -> Result<ErrorSet> {
    let package = service.package_name();
    let pool = service.parent_pool();
    let message = pool
        .get_message_by_name(&format!("{package}.{name}"))
        .or_else(|| pool.get_message_by_name(name))
        .ok_or_else(|| {
            Error::contract(
                location.clone(),
                format!("service {} names errors \"{name}\", but there is no such message", service.full_name()),
                format!("declare `message {name} {{ oneof reason {{ ... }} }}` in package {package}, or fix the name"),
            )
        })?;
    let full_name = message.full_name().to_owned();
    if message.package_name() != package {
        return Err(Error::contract(
            location,
            format!("service {} names errors {full_name} from another package", service.full_name()),
            format!("declare the error message in package {package}, next to the service"),
        ));
    }
    let oneofs: Vec<_> = message.oneofs().filter(|o| !o.is_synthetic()).collect();
    let loose: Vec<String> =
        message.fields().filter(|f| f.containing_oneof().is_none()).map(|f| f.name().to_owned()).collect();
    let [oneof] = oneofs.as_slice() else {
        return Err(Error::contract(
            location,
            format!("error message {full_name} must consist of exactly one oneof, but has {}", oneofs.len()),
            format!("write `message {} {{ oneof reason {{ NotFound not_found = 1; ... }} }}`", message.name()),
        ));
    };
    if !loose.is_empty() {
        return Err(Error::contract(
            location,
            format!("error message {full_name} has fields outside its oneof: {}", loose.join(", ")),
            "move them into the cases' messages: each case carries its own details",
        ));
    }
    let rust_path = ident::rust_type_path(package, &message);
    let parent = rust_path.rsplit_once("::").map(|(p, _)| format!("{p}::")).unwrap_or_default();
    Ok(ErrorSet {
        enum_path: format!("{parent}{}::{}", ident::field_name(message.name()), ident::type_name(oneof.name())),
        field: ident::field_name(oneof.name()),
        cases: oneof.fields().map(|f| (ident::type_name(f.name()), f.name().to_owned())).collect(),
        full_name,
        rust_path,
    })
}

/// A hash of what the service's callers and servers must agree on: each rpc's name, request and response
/// (their schema fingerprints, so fields count), in proto order. Servers announce it, so that instances built
/// from other contracts stand out (`warren services`).
fn service_fingerprint(service: &prost_reflect::ServiceDescriptor) -> String {
    let mut text = format!("service {}{{", service.full_name());
    for method in service.methods() {
        let (input, output) =
            (super::messages::fingerprint(&method.input()), super::messages::fingerprint(&method.output()));
        text.push_str(&format!("{}({input})->{output};", method.name()));
    }
    text.push('}');
    super::messages::fnv64(&text)
}
