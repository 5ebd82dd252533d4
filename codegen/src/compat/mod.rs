//! Breaking-change detection: the current contracts against a baseline manifest, rule by rule.
//!
//! [`check`] is pure: it compares two [`Manifest`]s (the baseline usually read from the committed
//! `proto/warren.lock`, the current one built from the protos) and returns every breaking change with where it
//! is, the [`Rule`] it breaks, why that breaks consumers and how to fix it. A deliberate break is waived by
//! naming its rule in `allow` (`cargo xtask check-compat --allow RULE`) or by a [`MARKER`] comment in the proto
//! (see [`marker`]).
//!
//! The rules live by what they protect: `messages.rs` (wire and JSON encoding of messages and enums),
//! `formats.rs` (the default wire format of events and tasks), `validation.rs` (fields' validation rules),
//! `services.rs` (RPC methods), `amqp.rs` (exchanges, routing keys, queues, and which messages are events and
//! tasks).
//!
//! A baseline read from an older lock file records less (see [`Manifest::records_tasks_and_rules`]): the rules
//! about what it does not record compare nothing, rather than report everything as new.

mod amqp;
mod formats;
pub mod marker;
mod messages;
mod rule;
mod services;
mod validation;

use std::fmt;

pub use marker::MARKER;
pub use rule::{Category, Rule, UnknownRule};

use crate::error::Location;
use crate::manifest::Manifest;

/// One breaking change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    /// The rule it breaks.
    pub rule: Rule,
    /// The current declaration, or the baseline's for something removed.
    pub location: Location,
    /// What changed, naming the item.
    pub message: String,
    /// How to make the change compatible, or how to waive it.
    pub fix: String,
    /// The items (messages, enums, services) whose `warren:allow` markers can waive it.
    pub subjects: Vec<String>,
    /// Whether and how it was waived.
    pub waived: Option<Waiver>,
}

/// How a breaking change was waived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiver {
    /// By `--allow RULE`.
    Flag,
    /// By a `warren:allow RULE` marker in the protos.
    Marker,
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.location, self.rule, self.message)?;
        write!(f, "\n  why: {}", self.rule.why())?;
        write!(f, "\n  fix: {}", self.fix)?;
        match self.waived {
            Some(Waiver::Flag) => write!(f, "\n  waived by --allow {}", self.rule),
            Some(Waiver::Marker) => write!(f, "\n  waived by a `{MARKER} {}` marker", self.rule),
            None => Ok(()),
        }
    }
}

/// Every breaking change between a baseline and the current contracts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The changes, waived ones included, sorted by location.
    pub breaks: Vec<Break>,
}

impl Report {
    /// The changes nobody waived: each one fails `check-compat`.
    pub fn blocking(&self) -> impl Iterator<Item = &Break> {
        self.breaks.iter().filter(|b| b.waived.is_none())
    }

    /// The changes that were waived.
    pub fn waived(&self) -> impl Iterator<Item = &Break> {
        self.breaks.iter().filter(|b| b.waived.is_some())
    }

    /// Whether the current contracts may replace the baseline.
    pub fn is_compatible(&self) -> bool {
        self.blocking().next().is_none()
    }
}

/// Compares `current` with `baseline`; rules in `allow` are waived wherever they fire.
pub fn check(baseline: &Manifest, current: &Manifest, allow: &[Rule]) -> Report {
    let mut findings = Findings { baseline, current, breaks: Vec::new() };
    messages::check(&mut findings);
    formats::check(&mut findings);
    validation::check(&mut findings);
    services::check(&mut findings);
    amqp::check(&mut findings);
    let mut breaks = findings.breaks;
    for change in &mut breaks {
        change.waived = waiver(change, current, allow);
    }
    breaks.sort_by(|a, b| {
        (&a.location.file, a.location.line, a.rule, &a.message).cmp(&(
            &b.location.file,
            b.location.line,
            b.rule,
            &b.message,
        ))
    });
    Report { breaks }
}

fn waiver(change: &Break, current: &Manifest, allow: &[Rule]) -> Option<Waiver> {
    if allow.contains(&change.rule) {
        return Some(Waiver::Flag);
    }
    let by_item = change.subjects.iter().any(|s| current.allowed(s).is_some_and(|rules| rules.contains(&change.rule)));
    let file = change.location.file.display().to_string();
    let by_file = current.files.get(&file).is_some_and(|f| f.allow.contains(&change.rule));
    (by_item || by_file).then_some(Waiver::Marker)
}

/// The two manifests and the breaks found so far.
struct Findings<'a> {
    baseline: &'a Manifest,
    current: &'a Manifest,
    breaks: Vec<Break>,
}

impl Findings<'_> {
    fn report(&mut self, rule: Rule, location: &Location, subject: &str, message: String, fix: String) {
        self.breaks.push(Break {
            rule,
            location: location.clone(),
            message,
            fix,
            subjects: vec![subject.to_owned()],
            waived: None,
        });
    }
}

/// The fix advice's common ending: how to waive a break that is meant.
fn or_waive(rule: Rule, item: &str) -> String {
    format!(
        "if the break is deliberate, add `// {MARKER} {rule}: <why>` to the comment of {item} or pass --allow {rule}"
    )
}
