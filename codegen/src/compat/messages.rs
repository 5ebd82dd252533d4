//! Wire and JSON rules for messages and enums: numbers, names, types and labels must keep their meaning.

use super::{Findings, or_waive};
use crate::compat::Rule;
use crate::manifest::{Enum, Manifest, Message};

/// Scalar types whose encodings read each other's values (protobuf's documented compatible groups, without
/// `bool` and enums, whose JSON form differs).
const COMPATIBLE: &[&[&str]] = &[
    &["int32", "int64", "uint32", "uint64"],
    &["sint32", "sint64"],
    &["fixed32", "sfixed32"],
    &["fixed64", "sfixed64"],
];

fn compatible(old: &str, new: &str) -> bool {
    old == new || COMPATIBLE.iter().any(|group| group.contains(&old) && group.contains(&new))
}

pub(super) fn check(f: &mut Findings<'_>) {
    let referenced = f.baseline.referenced_types();
    for (name, old) in &f.baseline.messages {
        match f.current.messages.get(name) {
            Some(new) => fields(f, name, old, new),
            None if referenced.contains(name.as_str()) => removed(f, "message", name, &old.location),
            None => {}
        }
    }
    for (name, old) in &f.baseline.enums {
        match f.current.enums.get(name) {
            Some(new) => values(f, name, old, new),
            None if referenced.contains(name.as_str()) => removed(f, "enum", name, &old.location),
            None => {}
        }
    }
}

fn removed(f: &mut Findings<'_>, kind: &str, name: &str, location: &crate::error::Location) {
    let users = users(f.baseline, name);
    f.report(
        Rule::TypeRemoved,
        location,
        name,
        format!("{kind} {name} was removed, but the contract used it ({users})"),
        format!(
            "keep {kind} {name} (mark it deprecated) until nothing uses it; {}",
            or_waive(Rule::TypeRemoved, "the file it was in (at its top)")
        ),
    );
}

/// What in `manifest` uses type `name`, for messages: "event", "task", "field a.B.c", "rpc a.S.M".
fn users(manifest: &Manifest, name: &str) -> String {
    let mut users = Vec::new();
    if manifest.events.contains_key(name) {
        users.push("it is an event".to_owned());
    }
    if let Some(task) = manifest.tasks.get(name) {
        users.push(format!("it is a task on work queue \"{}\"", task.queue));
    }
    for (message, m) in &manifest.messages {
        for field in m.fields.values() {
            let used = field.r#type == name || field.r#type.ends_with(&format!(",{name}>"));
            if used {
                users.push(format!("field {message}.{}", field.name));
            }
        }
    }
    for (service, s) in &manifest.services {
        for (method, m) in &s.methods {
            if m.request == name || m.response == name {
                users.push(format!("rpc {service}.{method}"));
            }
        }
    }
    let more = users.len().saturating_sub(3);
    users.truncate(3);
    if more > 0 {
        users.push(format!("{more} more"));
    }
    users.join(", ")
}

fn fields(f: &mut Findings<'_>, name: &str, old: &Message, new: &Message) {
    let waive = |rule| or_waive(rule, &format!("message {name}"));
    // A number or name the baseline reserved was retired so that no reader mistakes new data for old: one
    // taken up again is a reuse, whether or not the reservation was dropped with it.
    for (number, after) in new.fields.iter().filter(|(number, _)| !old.fields.contains_key(*number)) {
        let Some(what) = old.reserved.taken_by(i64::from(*number), &after.name) else { continue };
        f.report(
            Rule::FieldNumberReused,
            after.location.as_ref().unwrap_or(&new.location),
            name,
            format!("field {number} `{}` of {name} takes up {what}, which the baseline reserved", after.name),
            format!("give the field a number and name never used in {name}; {}", waive(Rule::FieldNumberReused)),
        );
    }
    for (number, before) in &old.fields {
        let Some(after) = new.fields.get(number) else {
            if new.reserved.has_number(i64::from(*number)) && new.reserved.names.contains(&before.name) {
                continue;
            }
            f.report(
                Rule::FieldRemoved,
                &new.location,
                name,
                format!("field {number} `{}` of {name} was removed without reserving its number and name", before.name),
                format!(
                    "add `reserved {number}; reserved \"{}\";` to message {name}; {}",
                    before.name,
                    waive(Rule::FieldRemoved)
                ),
            );
            continue;
        };
        let at = after.location.as_ref().unwrap_or(&new.location);
        let moved = after.name != before.name && new.fields.values().any(|f| f.name == before.name);
        if after.name != before.name && (moved || !compatible(&before.r#type, &after.r#type)) {
            let why = if moved { format!("`{}` moved to another number", before.name) } else { String::new() };
            f.report(
                Rule::FieldNumberReused,
                at,
                name,
                format!(
                    "field {number} of {name} is now `{} {}` (was `{} {}`){}",
                    after.r#type,
                    after.name,
                    before.r#type,
                    before.name,
                    if why.is_empty() { why } else { format!("; {why}") }
                ),
                format!(
                    "give the new field a new number, keep `{}` at {number} (or reserve {number} and \"{}\"); {}",
                    before.name,
                    before.name,
                    waive(Rule::FieldNumberReused)
                ),
            );
            continue;
        }
        if after.name != before.name {
            f.report(
                Rule::FieldRenamed,
                at,
                name,
                format!(
                    "field {number} of {name} was renamed from `{}` to `{}` (JSON name {} → {})",
                    before.name, after.name, before.json_name, after.json_name
                ),
                format!("keep the name `{}`; {}", before.name, waive(Rule::FieldRenamed)),
            );
        } else if after.json_name != before.json_name {
            // The JSON wire format names fields by it: a reader of the old name finds the field missing.
            f.report(
                Rule::FieldRenamed,
                at,
                name,
                format!(
                    "field {number} `{}` of {name} changed its JSON name from {} to {}",
                    after.name, before.json_name, after.json_name
                ),
                format!("keep the JSON name {}; {}", before.json_name, waive(Rule::FieldRenamed)),
            );
        } else if !compatible(&before.r#type, &after.r#type) {
            f.report(
                Rule::FieldTypeChanged,
                at,
                name,
                format!(
                    "field {number} `{}` of {name} changed type from {} to {}",
                    after.name, before.r#type, after.r#type
                ),
                format!(
                    "keep type {}: add a new field with a new number for the new type, and reserve this one when it \
                     is no longer written; {}",
                    before.r#type,
                    waive(Rule::FieldTypeChanged)
                ),
            );
        }
        if after.label != before.label {
            f.report(
                Rule::FieldLabelChanged,
                at,
                name,
                format!(
                    "field {number} `{}` of {name} changed from {} to {}",
                    after.name,
                    label(&before.label),
                    label(&after.label)
                ),
                format!(
                    "keep it {}; add a new field with a new number instead; {}",
                    label(&before.label),
                    waive(Rule::FieldLabelChanged)
                ),
            );
        }
    }
}

fn label(label: &crate::manifest::Label) -> String {
    use crate::manifest::Label;
    match label {
        Label::Singular => "singular".into(),
        Label::Optional => "optional".into(),
        Label::Required => "required".into(),
        Label::Repeated => "repeated".into(),
        Label::Map => "a map".into(),
        Label::Oneof(oneof) => format!("a member of oneof {oneof}"),
    }
}

fn values(f: &mut Findings<'_>, name: &str, old: &Enum, new: &Enum) {
    let waive = |rule| or_waive(rule, &format!("enum {name}"));
    // A reserved number or name stands for a value removed earlier: one taken up again gives data written with
    // the old value to the new one.
    let new_values = new.values.iter().filter(|v| !old.values.iter().any(|o| o.number == v.number || o.name == v.name));
    for after in new_values {
        let Some(what) = old.reserved.taken_by(i64::from(after.number), &after.name) else { continue };
        f.report(
            Rule::EnumValueRemoved,
            after.location.as_ref().unwrap_or(&new.location),
            name,
            format!("{name}.{} takes up {what}, which the baseline reserved for a removed value", after.name),
            format!("give the value a number and name never used in {name}; {}", waive(Rule::EnumValueRemoved)),
        );
    }
    for before in &old.values {
        let same_name: Vec<_> = new.values.iter().filter(|v| v.name == before.name).collect();
        if same_name.iter().any(|v| v.number == before.number) {
            continue;
        }
        if let Some(after) = same_name.first() {
            f.report(
                Rule::EnumValueRenumbered,
                after.location.as_ref().unwrap_or(&new.location),
                name,
                format!("{name}.{} is now {} (was {})", before.name, after.number, before.number),
                format!(
                    "give {} its number {} back, and add a new value for the new number; {}",
                    before.name,
                    before.number,
                    waive(Rule::EnumValueRenumbered)
                ),
            );
            continue;
        }
        match new.values.iter().find(|v| v.number == before.number) {
            Some(after) if !old.values.iter().any(|v| v.name == after.name) => f.report(
                Rule::EnumValueRenamed,
                after.location.as_ref().unwrap_or(&new.location),
                name,
                format!("{name} value {} was renamed from {} to {}", before.number, before.name, after.name),
                format!("keep the name {}; {}", before.name, waive(Rule::EnumValueRenamed)),
            ),
            Some(after) => f.report(
                Rule::EnumValueRemoved,
                after.location.as_ref().unwrap_or(&new.location),
                name,
                format!(
                    "{name}.{} was removed, and its number {} now belongs to {}",
                    before.name, before.number, after.name
                ),
                format!("keep {} = {}; {}", before.name, before.number, waive(Rule::EnumValueRemoved)),
            ),
            None if new.reserved.has_number(i64::from(before.number)) && new.reserved.names.contains(&before.name) => {}
            None => f.report(
                Rule::EnumValueRemoved,
                &new.location,
                name,
                format!("{name}.{} = {} was removed without reserving its number and name", before.name, before.number),
                format!(
                    "add `reserved {}; reserved \"{}\";` to enum {name}; {}",
                    before.number,
                    before.name,
                    waive(Rule::EnumValueRemoved)
                ),
            ),
        }
    }
}
