//! `warren:allow` markers: a deliberate breaking change, waived in the proto itself.
//!
//! A marker is `warren:allow RULE[,RULE...]` anywhere in a comment, optionally followed by why:
//!
//! ```proto
//! // A new user finished registration.
//! // warren:allow routing-key-changed: every subscriber moved to "user.signed-up" in release 42.
//! message UserRegistered { ... }
//! ```
//!
//! A marker in the comments of a message, enum or service (or of one of its fields, values or rpcs) waives the
//! rule for that item, its event and its queues; a marker in a comment that belongs to no item (the comment at
//! the top of the file, or one standing alone between blank lines) waives the rule for everything declared in
//! that file, including items the change removed from it.

use super::rule::{Rule, UnknownRule};

/// The text that starts a marker.
pub const MARKER: &str = crate::compile::MARKER;

/// The rules that the markers in `comment` waive; an error for a name that is no rule.
pub(crate) fn parse(comment: &str) -> Result<Vec<Rule>, UnknownRule> {
    let mut rules = Vec::new();
    let mut rest = comment;
    while let Some(at) = rest.find(MARKER) {
        rest = &rest[at + MARKER.len()..];
        let list = rest.split_whitespace().next().unwrap_or_default();
        for name in list.split(',') {
            // Allow `warren:allow field-removed: why` and `warren:allow field-removed.`
            let name = name.trim_end_matches([':', ';', '.', ')']);
            if name.is_empty() {
                continue;
            }
            rules.push(name.parse()?);
        }
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_name_rules_and_may_give_a_reason() {
        assert_eq!(parse("A user.\nwarren:allow field-removed: nobody reads it"), Ok(vec![Rule::FieldRemoved]));
        assert_eq!(
            parse("warren:allow field-renamed,enum-value-renamed\nwarren:allow routing-key-changed."),
            Ok(vec![Rule::FieldRenamed, Rule::EnumValueRenamed, Rule::RoutingKeyChanged])
        );
        assert_eq!(parse("no marker here"), Ok(vec![]));
        assert_eq!(parse("warren:allow field-remove"), Err(UnknownRule { name: "field-remove".into() }));
    }
}
