//! docs/grafana-dashboard.json is a dashboard Grafana can import, and every metric it names is one
//! `warren::prometheus::PrometheusLayer` exports.

use std::collections::BTreeSet;

use serde_json::Value;
use warren::prometheus::METRIC_NAMES;
use warren_tests::workspace_root;

/// Every string in `value`, however deep.
fn strings<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
    match value {
        Value::String(text) => found.push(text),
        Value::Array(items) => items.iter().for_each(|item| strings(item, found)),
        Value::Object(fields) => fields.values().for_each(|field| strings(field, found)),
        _ => {}
    }
}

/// The `warren_…` identifiers in `text`.
fn metric_names(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|word| word.starts_with("warren_"))
}

/// The family a sample name belongs to: a histogram's `_bucket`, `_count` and `_sum` are its own name's.
fn family(sample: &str) -> &str {
    ["_bucket", "_count", "_sum"].iter().find_map(|suffix| sample.strip_suffix(suffix)).unwrap_or(sample)
}

#[test]
fn the_grafana_dashboard_names_only_metrics_the_prometheus_layer_exports() {
    let path = workspace_root().join("docs/grafana-dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()));

    let panels = dashboard["panels"].as_array().expect("a dashboard has panels");
    assert!(dashboard["title"].is_string() && !panels.is_empty());
    let ids: BTreeSet<u64> = panels.iter().map(|panel| panel["id"].as_u64().expect("each panel has an id")).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    for panel in panels {
        let targets = panel["targets"].as_array().expect("each panel has queries");
        assert!(targets.iter().all(|target| target["expr"].is_string()), "{}", panel["title"]);
    }

    let mut found = Vec::new();
    strings(&dashboard, &mut found);
    let named: BTreeSet<&str> = found.into_iter().flat_map(metric_names).map(family).collect();
    let unknown: Vec<&&str> = named.iter().filter(|name| !METRIC_NAMES.contains(name)).collect();
    assert!(unknown.is_empty(), "the dashboard names metrics the layer does not export: {unknown:?}");
    for needed in [
        "warren_published_total",
        "warren_handled_total",
        "warren_handle_seconds",
        "warren_handlers_in_flight",
        "warren_queue_depth",
        "warren_bus_up",
    ] {
        assert!(named.contains(needed), "the dashboard shows {needed}");
    }
    assert!(text.contains("histogram_quantile(0.99, sum by (le, queue) (rate(warren_handle_seconds_bucket"));
}
