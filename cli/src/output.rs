//! Output: readable tables and `key: value` records by default, one JSON object per line with `--json`.

use std::io::Write;

use serde_json::{Map, Value};

/// Writes `text` to stdout; a closed stdout (`warren list | head`) ends the program quietly, as for any
/// command-line tool, instead of panicking.
pub(crate) fn write_out(text: std::fmt::Arguments<'_>) {
    if std::io::stdout().lock().write_fmt(text).is_err() {
        std::process::exit(0);
    }
}

/// `println!` through [`write_out`].
macro_rules! say {
    () => {
        $crate::output::write_out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use say;

/// Where results go, and in which form.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Output {
    json: bool,
}

impl Output {
    pub(crate) fn new(json: bool) -> Self {
        Output { json }
    }

    pub(crate) fn is_json(&self) -> bool {
        self.json
    }

    /// Rows under `columns`: an aligned table, or one JSON object per row.
    pub(crate) fn table(&self, columns: &[&str], rows: &[Vec<String>]) {
        if self.json {
            for row in rows {
                let object: Map<String, Value> =
                    columns.iter().zip(row).map(|(c, v)| ((*c).to_owned(), Value::String(v.clone()))).collect();
                say!("{}", Value::Object(object));
            }
            return;
        }
        let mut widths: Vec<usize> = columns.iter().map(|c| c.len()).collect();
        for row in rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |cells: Vec<&str>| {
            let mut text = String::new();
            for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
                if i + 1 == cells.len() {
                    text.push_str(cell);
                } else {
                    text.push_str(&format!("{cell:<width$}  "));
                }
            }
            say!("{}", text.trim_end());
        };
        line(columns.iter().map(|c| c.to_uppercase()).collect::<Vec<_>>().iter().map(String::as_str).collect());
        for row in rows {
            line(row.iter().map(String::as_str).collect());
        }
    }

    /// One record: `key: value` lines, or one JSON object.
    pub(crate) fn record(&self, fields: &[(&str, String)]) {
        if self.json {
            let object: Map<String, Value> =
                fields.iter().map(|(k, v)| ((*k).to_owned(), Value::String(v.clone()))).collect();
            say!("{}", Value::Object(object));
        } else {
            for (key, value) in fields {
                say!("{key}: {value}");
            }
        }
    }

    /// A JSON value: pretty for people, one line with `--json`.
    pub(crate) fn value(&self, value: &Value) {
        if self.json {
            say!("{value}");
        } else {
            say!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
        }
    }
}

/// The order keys are shown in by [`Output::document`]: names first, then where things go, then details.
const KEY_ORDER: &[&str] = &[
    "event",
    "task",
    "service",
    "method",
    "message",
    "exchange",
    "name",
    "type",
    "doc",
    "exchange_kind",
    "kind",
    "routing_key",
    "binding",
    "queue",
    "dead_letter_queue",
    "format",
    "priority",
    "prefetch",
    "timeout_ms",
    "default_timeout_ms",
    "retry",
    "max_attempts",
    "delays_ms",
    "quorum",
    "durable",
    "auto_delete",
    "json",
    "rules",
    "request",
    "response",
    "errors",
    "cases",
    "fields",
    "methods",
    "events",
];

impl Output {
    /// A description: indented `key: value` text for people (empty values left out), one JSON line with
    /// `--json`.
    pub(crate) fn document(&self, value: &Value) {
        if self.json {
            say!("{value}");
        } else {
            let mut text = String::new();
            render(value, 0, &mut text);
            write_out(format_args!("{text}"));
        }
    }
}

fn ordered(object: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut entries: Vec<(&String, &Value)> = object.iter().collect();
    let rank = |key: &str| KEY_ORDER.iter().position(|k| *k == key).unwrap_or(KEY_ORDER.len());
    entries.sort_by(|(a, _), (b, _)| rank(a).cmp(&rank(b)).then(a.cmp(b)));
    entries
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.is_empty(),
        _ => false,
    }
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
            Some(items.iter().filter_map(scalar).collect::<Vec<_>>().join(", "))
        }
        Value::Object(_) | Value::Array(_) => None,
        other => Some(other.to_string()),
    }
}

fn render(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(object) => {
            for (key, value) in ordered(object) {
                if is_empty(value) {
                    continue;
                }
                match scalar(value) {
                    Some(text) => {
                        let mut lines = text.lines();
                        out.push_str(&format!("{pad}{key}: {}\n", lines.next().unwrap_or_default()));
                        for line in lines {
                            out.push_str(&format!("{pad}  {line}\n"));
                        }
                    }
                    None => {
                        out.push_str(&format!("{pad}{key}:\n"));
                        render(value, indent + 2, out);
                    }
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                let mut inner = String::new();
                render(item, indent + 2, &mut inner);
                match scalar(item) {
                    Some(text) => out.push_str(&format!("{pad}- {text}\n")),
                    None => out.push_str(&format!("{pad}- {}\n", inner.trim())),
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other).unwrap_or_default())),
    }
}
