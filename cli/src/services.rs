//! `warren services`: the live registry. Every service of the contracts with its queue and the servers
//! consuming it now, and every running instance as it announced itself (`Bus::services`): id, host, process,
//! start, last heartbeat, and the contract fingerprint it was built from, flagged when it differs from these
//! contracts' (version skew).

use warren::Bus;
use warren_reflect::Catalog;

use crate::Failure;
use crate::output::Output;

pub(crate) async fn run(catalog: &Catalog, bus: &Bus, out: &Output) -> Result<(), Failure> {
    let instances = bus.services().await?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let mut rows = Vec::new();
    for service in catalog.services() {
        let consumers = match bus.queue_stats(&service.queue).await {
            Ok(stats) => stats.consumers.to_string(),
            Err(_) => "no queue".to_owned(),
        };
        let running: Vec<_> = instances.iter().filter(|i| i.service == service.full_name).collect();
        if running.is_empty() {
            rows.push(vec![
                service.full_name.clone(),
                service.queue.clone(),
                consumers.clone(),
                "-".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                "no server announces itself".into(),
            ]);
        }
        for instance in running {
            let note = if instance.fingerprint == service.fingerprint {
                String::new()
            } else {
                format!("SKEW: built from other contracts (these: {})", service.fingerprint)
            };
            rows.push(row(instance, consumers.clone(), now, note));
        }
    }
    for instance in instances.iter().filter(|i| catalog.services().all(|s| s.full_name != i.service)) {
        rows.push(row(instance, String::new(), now, "not in these contracts".into()));
    }
    let columns =
        ["service", "queue", "consumers", "instance", "host", "pid", "started", "heartbeat", "fingerprint", "note"];
    out.table(&columns, &rows);
    Ok(())
}

/// One instance's row: its service and queue as it announced them, `consumers` on that queue, and `note`.
fn row(instance: &warren::ServerInstance, consumers: String, now_ms: u64, note: String) -> Vec<String> {
    vec![
        instance.service.clone(),
        instance.queue.clone(),
        consumers,
        instance.instance.clone(),
        instance.host.clone(),
        instance.pid.to_string(),
        rfc3339(instance.started_at_ms),
        format!("{:.1}s ago", now_ms.saturating_sub(instance.last_heartbeat_ms) as f64 / 1000.0),
        instance.fingerprint.clone(),
        note,
    ]
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn rfc3339(ms: u64) -> String {
    let seconds = ms / 1000;
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    // Days to a civil date (Howard Hinnant's algorithm), for dates after 1970.
    let z = days as i64 + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest % 3600 / 60, rest % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_read_as_utc() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_796_558_400_000), "2026-12-06T12:00:00Z");
        assert_eq!(super::rfc3339(951_825_600_000), "2000-02-29T12:00:00Z");
    }
}
