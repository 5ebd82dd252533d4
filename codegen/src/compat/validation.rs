//! The validation rule: a field's rules (`[(warren.rules) = { ... }]`) must not reject what they accepted.
//!
//! Tightening is a raised lower bound or a lowered upper bound (a field's type bounds count: `min: 0` on a
//! `uint32` is no bound), a new `required` or `defined`, or a new field whose rules reject its default value,
//! which is what senders on the old contract leave in it. Loosening is not reported.

use super::{Findings, or_waive};
use crate::compat::Rule;
use crate::manifest::{Field, Label, bound_text};

pub(super) fn check(f: &mut Findings<'_>) {
    // A lock file older than format version 2 does not record rules: nothing to compare.
    if !f.baseline.records_tasks_and_rules() {
        return;
    }
    for (name, old) in &f.baseline.messages {
        let Some(new) = f.current.messages.get(name) else { continue };
        let waive = or_waive(Rule::RulesTightened, &format!("message {name}"));
        for (number, after) in &new.fields {
            let at = after.location.as_ref().unwrap_or(&new.location);
            let field = &after.name;
            match old.fields.get(number) {
                // Another field at this number: `field-number-reused` says so, and old rules mean nothing.
                Some(before) if before.name != after.name && before.r#type != after.r#type => {}
                Some(before) => {
                    let changes = tightened(before, after);
                    if changes.is_empty() {
                        continue;
                    }
                    f.report(
                        Rule::RulesTightened,
                        at,
                        name,
                        format!(
                            "field {number} `{field}` of {name} now rejects values it accepted: {}",
                            changes.join(", ")
                        ),
                        format!(
                            "keep the field's rules as they were ({}), and check the stricter rule in the receivers' \
                             handlers until no sender on the old contract is left and the queues have drained; {waive}",
                            describe(before)
                        ),
                    );
                }
                None => {
                    let changes = refuses_default(after);
                    if changes.is_empty() {
                        continue;
                    }
                    f.report(
                        Rule::RulesTightened,
                        at,
                        name,
                        format!(
                            "new field {number} `{field}` of {name} has rules that reject its default value, which \
                             every message from a sender on the old contract has: {}",
                            changes.join(", ")
                        ),
                        format!(
                            "drop {} from the new field until every sender sets it{}; {waive}",
                            changes.join(" and "),
                            if after.rules.required {
                                ""
                            } else {
                                " (or make it `optional`: an unset optional field passes its bounds)"
                            }
                        ),
                    );
                }
            }
        }
    }
}

/// The rules of `after` that reject values the rules of `before` accepted, e.g. "`min: 5` (was 1)".
fn tightened(before: &Field, after: &Field) -> Vec<String> {
    let (old, new) = (&before.rules, &after.rules);
    let (lowest, highest) = range(&after.r#type);
    let low = |min: Option<f64>| min.map_or(lowest, |m| m.max(lowest));
    let high = |max: Option<f64>| max.map_or(highest, |m| m.min(highest));
    let was = |bound: Option<String>| bound.map_or("new".to_owned(), |b| format!("was {b}"));
    let mut changes = Vec::new();
    if new.required && !old.required {
        changes.push("`required` (new)".to_owned());
    }
    if let Some(min) = new.min
        && low(new.min) > low(old.min)
    {
        changes.push(format!("`min: {}` ({})", bound_text(min), was(old.min.map(bound_text))));
    }
    if let Some(max) = new.max
        && high(new.max) < high(old.max)
    {
        changes.push(format!("`max: {}` ({})", bound_text(max), was(old.max.map(bound_text))));
    }
    if let Some(min_len) = new.min_len
        && min_len > old.min_len.unwrap_or(0)
    {
        changes.push(format!("`min_len: {min_len}` ({})", was(old.min_len.map(|m| m.to_string()))));
    }
    if let Some(max_len) = new.max_len
        && max_len < old.max_len.unwrap_or(u32::MAX)
    {
        changes.push(format!("`max_len: {max_len}` ({})", was(old.max_len.map(|m| m.to_string()))));
    }
    if new.defined && !old.defined {
        changes.push("`defined` (new)".to_owned());
    }
    changes
}

/// The rules of a new field that its default value breaks: an unset value, zero, or empty (an `optional`
/// field that is unset passes its bounds).
fn refuses_default(field: &Field) -> Vec<String> {
    let rules = &field.rules;
    let (lowest, highest) = range(&field.r#type);
    let mut changes = Vec::new();
    if rules.required {
        changes.push("`required`".to_owned());
    }
    if field.label == Label::Optional {
        return changes;
    }
    if let Some(min) = rules.min.filter(|m| m.max(lowest) > 0.0) {
        changes.push(format!("`min: {}`", bound_text(min)));
    }
    if let Some(max) = rules.max.filter(|m| m.min(highest) < 0.0) {
        changes.push(format!("`max: {}`", bound_text(max)));
    }
    if let Some(min_len) = rules.min_len.filter(|m| *m > 0) {
        changes.push(format!("`min_len: {min_len}`"));
    }
    changes
}

/// The field's rules in options.proto's words, e.g. "`required`, `max_len: 64`", or "none".
fn describe(field: &Field) -> String {
    let rules = &field.rules;
    let mut parts = Vec::new();
    if rules.required {
        parts.push("`required`".to_owned());
    }
    parts.extend(rules.min.map(|m| format!("`min: {}`", bound_text(m))));
    parts.extend(rules.max.map(|m| format!("`max: {}`", bound_text(m))));
    parts.extend(rules.min_len.map(|m| format!("`min_len: {m}`")));
    parts.extend(rules.max_len.map(|m| format!("`max_len: {m}`")));
    if rules.defined {
        parts.push("`defined`".to_owned());
    }
    if parts.is_empty() { "no rules".to_owned() } else { parts.join(", ") }
}

/// The values a field of scalar type `r#type` can hold: bounds outside them bound nothing.
fn range(r#type: &str) -> (f64, f64) {
    match r#type {
        "int32" | "sint32" | "sfixed32" => (f64::from(i32::MIN), f64::from(i32::MAX)),
        "uint32" | "fixed32" => (0.0, f64::from(u32::MAX)),
        "int64" | "sint64" | "sfixed64" => (i64::MIN as f64, i64::MAX as f64),
        "uint64" | "fixed64" => (0.0, u64::MAX as f64),
        _ => (f64::NEG_INFINITY, f64::INFINITY),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::FieldRules;

    fn field(r#type: &str, label: Label, rules: FieldRules) -> Field {
        Field { name: "f".into(), label, r#type: r#type.into(), json_name: "f".into(), rules, location: None }
    }

    fn singular(r#type: &str, rules: FieldRules) -> Field {
        field(r#type, Label::Singular, rules)
    }

    #[test]
    fn raised_minimums_lowered_maximums_and_new_flags_tighten() {
        let none = FieldRules::default();
        let strict = FieldRules {
            required: true,
            min: Some(5.0),
            max: Some(10.0),
            min_len: None,
            max_len: None,
            defined: false,
        };
        let loose = FieldRules { min: Some(1.0), max: Some(100.0), ..none };
        assert_eq!(
            tightened(&singular("int64", loose), &singular("int64", strict)),
            ["`required` (new)", "`min: 5` (was 1)", "`max: 10` (was 100)"]
        );
        let lengths = FieldRules { min_len: Some(2), max_len: Some(64), defined: true, ..none };
        assert_eq!(
            tightened(&singular("string", none), &singular("string", lengths)),
            ["`min_len: 2` (new)", "`max_len: 64` (new)", "`defined` (new)"]
        );
    }

    #[test]
    fn loosening_and_bounds_the_type_already_has_do_not_tighten() {
        let none = FieldRules::default();
        let strict = FieldRules { required: true, min: Some(5.0), max_len: Some(10), ..none };
        assert!(tightened(&singular("int64", strict), &singular("int64", none)).is_empty());
        // `min: 0` on an unsigned field bounds nothing; neither does `max` at the type's largest value.
        let trivial = FieldRules { min: Some(0.0), max: Some(f64::from(u32::MAX)), ..none };
        assert!(tightened(&singular("uint32", none), &singular("uint32", trivial)).is_empty());
    }

    #[test]
    fn a_new_field_breaks_old_senders_only_with_rules_its_default_fails() {
        let none = FieldRules::default();
        let required = FieldRules { required: true, ..none };
        assert_eq!(refuses_default(&singular("string", required)), ["`required`"]);
        let at_least_one = FieldRules { min: Some(1.0), min_len: None, ..none };
        assert_eq!(refuses_default(&singular("int64", at_least_one)), ["`min: 1`"]);
        // An unset optional field passes its bounds; upper bounds and `defined` accept zero and empty.
        assert!(refuses_default(&field("int64", Label::Optional, at_least_one)).is_empty());
        let upper = FieldRules { max: Some(10.0), max_len: Some(5), defined: true, ..none };
        assert!(refuses_default(&singular("int32", upper)).is_empty());
        let non_empty = FieldRules { min_len: Some(1), ..none };
        assert_eq!(refuses_default(&field("string", Label::Repeated, non_empty)), ["`min_len: 1`"]);
    }
}
