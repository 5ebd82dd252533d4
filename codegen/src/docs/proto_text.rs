//! A message's payload schema for the AsyncAPI document: proto source text of the message and of every type
//! of its package it uses, with their comments, so a consumer in any language can decode it.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use prost_reflect::{EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor, Syntax};

use crate::sources::Sources;

/// The proto text that defines `root` (first) and what it uses; types of other packages are imported.
pub(crate) fn schema(sources: &Sources<'_>, root: &MessageDescriptor) -> String {
    let package = root.package_name().to_owned();
    let mut imports = BTreeSet::new();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut queue = vec![Top::Message(outermost(root))];
    let mut body = String::new();
    while let Some(top) = queue.pop() {
        if !done.insert(top.full_name()) {
            continue;
        }
        let mut used = Vec::new();
        match &top {
            Top::Message(message) => message_text(sources, message, &package, 0, &mut body, &mut used),
            Top::Enum(descriptor) => enum_text(sources, descriptor, 0, &mut body),
        }
        for dependency in used.into_iter().rev() {
            if dependency.package() != package {
                imports.insert(dependency.file());
            } else if !done.contains(&dependency.full_name()) {
                queue.push(dependency);
            }
        }
    }
    let syntax = if root.parent_file().syntax() == Syntax::Proto2 { "proto2" } else { "proto3" };
    let mut out = format!("// Payload: {}\nsyntax = \"{syntax}\";\n", root.full_name());
    if !package.is_empty() {
        let _ = writeln!(out, "package {package};");
    }
    for import in imports {
        let _ = writeln!(out, "import \"{import}\";");
    }
    out.push_str(&body);
    out
}

/// A top-level type to render.
enum Top {
    Message(MessageDescriptor),
    Enum(EnumDescriptor),
}

impl Top {
    fn of_message(message: &MessageDescriptor) -> Top {
        Top::Message(outermost(message))
    }

    fn of_enum(descriptor: &EnumDescriptor) -> Top {
        match descriptor.parent_message() {
            Some(parent) => Top::Message(outermost(&parent)),
            None => Top::Enum(descriptor.clone()),
        }
    }

    fn full_name(&self) -> String {
        match self {
            Top::Message(m) => m.full_name().to_owned(),
            Top::Enum(e) => e.full_name().to_owned(),
        }
    }

    fn package(&self) -> String {
        match self {
            Top::Message(m) => m.package_name().to_owned(),
            Top::Enum(e) => e.package_name().to_owned(),
        }
    }

    fn file(&self) -> String {
        match self {
            Top::Message(m) => m.parent_file().name().to_owned(),
            Top::Enum(e) => e.parent_file().name().to_owned(),
        }
    }
}

fn outermost(message: &MessageDescriptor) -> MessageDescriptor {
    let mut message = message.clone();
    while let Some(parent) = message.parent_message() {
        message = parent;
    }
    message
}

fn comment(sources: &Sources<'_>, file: &str, path: &[i32], indent: usize, out: &mut String) {
    let Some(source) = sources.get(file) else { return };
    for line in source.comment(path).lines() {
        let _ = writeln!(out, "{:indent$}//{}{line}", "", if line.is_empty() { "" } else { " " });
    }
}

fn message_text(
    sources: &Sources<'_>,
    message: &MessageDescriptor,
    package: &str,
    indent: usize,
    out: &mut String,
    used: &mut Vec<Top>,
) {
    let file = message.parent_file();
    out.push('\n');
    comment(sources, file.name(), message.path(), indent, out);
    let _ = writeln!(out, "{:indent$}message {} {{", "", message.name());
    let inner = indent + 2;
    let proto2 = file.syntax() == Syntax::Proto2;
    let mut oneofs_done = BTreeSet::new();
    for field in message.fields() {
        match field.containing_oneof().filter(|o| !o.is_synthetic()) {
            Some(oneof) => {
                if !oneofs_done.insert(oneof.name().to_owned()) {
                    continue;
                }
                let _ = writeln!(out, "{:inner$}oneof {} {{", "", oneof.name());
                for member in oneof.fields() {
                    field_text(sources, &member, package, inner + 2, false, out, used);
                }
                let _ = writeln!(out, "{:inner$}}}", "");
            }
            None => field_text(sources, &field, package, inner, proto2, out, used),
        }
    }
    for range in message.reserved_ranges() {
        let end = range.end - 1;
        let text = if range.start == end { range.start.to_string() } else { format!("{} to {end}", range.start) };
        let _ = writeln!(out, "{:inner$}reserved {text};", "");
    }
    for name in message.reserved_names() {
        let _ = writeln!(out, "{:inner$}reserved \"{name}\";", "");
    }
    for nested in message.child_messages().filter(|m| !m.is_map_entry()) {
        message_text(sources, &nested, package, inner, out, used);
    }
    for nested in message.child_enums() {
        out.push('\n');
        enum_text(sources, &nested, inner, out);
    }
    let _ = writeln!(out, "{:indent$}}}", "");
}

fn field_text(
    sources: &Sources<'_>,
    field: &FieldDescriptor,
    package: &str,
    indent: usize,
    proto2: bool,
    out: &mut String,
    used: &mut Vec<Top>,
) {
    comment(sources, field.parent_file().name(), field.path(), indent, out);
    let r#type = if field.is_map() {
        let Kind::Message(entry) = field.kind() else { unreachable!("map fields are messages") };
        let key = type_ref(&entry.map_entry_key_field().kind(), package, used);
        let value = type_ref(&entry.map_entry_value_field().kind(), package, used);
        format!("map<{key}, {value}>")
    } else {
        type_ref(&field.kind(), package, used)
    };
    let label = if field.is_map() {
        ""
    } else if field.is_list() {
        "repeated "
    } else if field.field_descriptor_proto().proto3_optional() || (proto2 && field.containing_oneof().is_none()) {
        if field.cardinality() == prost_reflect::Cardinality::Required { "required " } else { "optional " }
    } else {
        ""
    };
    let _ = writeln!(out, "{:indent$}{label}{type} {} = {};", "", field.name(), field.number());
}

/// The name to write for a field's type, noting message and enum types as used.
fn type_ref(kind: &Kind, package: &str, used: &mut Vec<Top>) -> String {
    let (full, top) = match kind {
        Kind::Message(m) => (m.full_name().to_owned(), Top::of_message(m)),
        Kind::Enum(e) => (e.full_name().to_owned(), Top::of_enum(e)),
        scalar => return crate::manifest::scalar_name(scalar).to_owned(),
    };
    let local = if top.package() == package && !package.is_empty() {
        full.strip_prefix(&format!("{package}.")).map(str::to_owned)
    } else {
        None
    };
    used.push(top);
    local.unwrap_or(format!(".{full}"))
}

fn enum_text(sources: &Sources<'_>, descriptor: &EnumDescriptor, indent: usize, out: &mut String) {
    if indent == 0 {
        out.push('\n');
    }
    comment(sources, descriptor.parent_file().name(), descriptor.path(), indent, out);
    let _ = writeln!(out, "{:indent$}enum {} {{", "", descriptor.name());
    let inner = indent + 2;
    for value in descriptor.values() {
        comment(sources, descriptor.parent_file().name(), value.path(), inner, out);
        let _ = writeln!(out, "{:inner$}{} = {};", "", value.name(), value.number());
    }
    for range in descriptor.reserved_ranges() {
        let (start, end) = (*range.start(), *range.end());
        let text = if start == end { start.to_string() } else { format!("{start} to {end}") };
        let _ = writeln!(out, "{:inner$}reserved {text};", "");
    }
    for name in descriptor.reserved_names() {
        let _ = writeln!(out, "{:inner$}reserved \"{name}\";", "");
    }
    let _ = writeln!(out, "{:indent$}}}", "");
}
