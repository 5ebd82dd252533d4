//! The wire format rule: events and tasks keep the default encoding their readers expect.

use super::{Findings, or_waive};
use crate::compat::Rule;
use crate::error::Location;
use crate::manifest::WireFormat;

pub(super) fn check(f: &mut Findings<'_>) {
    // A lock file older than format version 2 does not record wire formats: nothing to compare.
    if !f.baseline.records_tasks_and_rules() {
        return;
    }
    for (name, old) in &f.baseline.events {
        if let Some(new) = f.current.events.get(name) {
            let what = format!("event {name} is now published");
            changed(f, name, &what, (old.wire_format, new.wire_format), &new.location);
        }
    }
    for (name, old) in &f.baseline.tasks {
        if let Some(new) = f.current.tasks.get(name) {
            let what = format!("task {name} is now sent");
            changed(f, name, &what, (old.wire_format, new.wire_format), &new.location);
        }
    }
}

/// Reports `name` if its format changed; `what` says how it goes out, e.g. "event a.B is now published".
fn changed(f: &mut Findings<'_>, name: &str, what: &str, (before, after): (WireFormat, WireFormat), at: &Location) {
    if before == after {
        return;
    }
    let label = |format: WireFormat| match format {
        WireFormat::Protobuf => "PROTOBUF",
        WireFormat::Json => "JSON",
    };
    f.report(
        Rule::WireFormatChanged,
        at,
        name,
        format!("{what} as {} by default (was {})", label(after), label(before)),
        format!(
            "keep `wire_format: {}` (a sender can still choose the other format per message), and switch only once \
             every reader outside Warren decodes both; {}",
            label(before),
            or_waive(Rule::WireFormatChanged, &format!("message {name}"))
        ),
    );
}
