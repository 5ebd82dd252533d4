//! `warren dlq`: dead-letter queues. `list` and `show` look without taking anything for good (messages are read
//! unacknowledged and go back when the reader closes); `replay` republishes each message where it was first
//! published (or to a queue), with a confirm, and removes it from the DLQ only after that confirm; `purge`
//! removes messages, after asking.
//!
//! Nothing is lost or duplicated silently: a message is acknowledged (removed) only after its replay was
//! confirmed, so a connection lost in between leaves it in the DLQ, where the broker delivers it again; the
//! replay remembers the ids it has replayed in this run, and a message delivered again after its replay was
//! confirmed (its acknowledgement was lost with the connection) is removed without a second replay, and counted.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, Write};
use std::time::Duration;

use warren::{Bus, Taken};
use warren_reflect::Catalog;

use crate::output::Output;
use crate::{Failure, exit};

/// The most messages one command reads from a queue.
const MAX_SCAN: u32 = 1_000_000;
/// How long a read waits for the next message before the queue counts as read to its end.
const IDLE: Duration = Duration::from_secs(2);
/// How many messages a reader holds unsettled ahead: messages that do not match the filters are held until the
/// command ends, so this bounds how many of them it can pass over.
const PREFETCH: u16 = 5_000;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum DlqCommand {
    /// Every dead-letter queue the contracts imply (the tasks' `<queue>.dlq`), and any named, with its depth,
    /// the oldest message's time and counts by reason.
    ///
    /// Example: warren dlq list email-service.gametrade.events.dlq
    List {
        /// More queues to look at (subscribers' DLQs are named by their groups, which the contracts do not know).
        queues: Vec<String>,
        /// Read at most this many messages of each queue for the times and reasons.
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SCAN)))]
        scan: u32,
    },
    /// Show a DLQ's messages, decoded, with the x-warren-* headers; nothing is taken off the queue.
    ///
    /// Example: warren dlq show gametrade.tasks.dlq --limit 5 --reason timeout
    Show(Selection),
    /// Republish a DLQ's messages where they were first published (or to --to-queue), each confirmed before it
    /// leaves the DLQ. Warren's dead-letter headers (reason, attempts) are taken off: the message starts its
    /// retries afresh.
    ///
    /// Example: warren dlq replay gametrade.tasks.dlq --type BackgroundTask --rate 100
    Replay {
        #[command(flatten)]
        selection: Selection,
        /// Republish at most this many per second.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        rate: Option<u32>,
        /// Republish to this queue (through the default exchange) instead.
        #[arg(long)]
        to_queue: Option<String>,
        /// Show what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove a DLQ's messages (those matching the filters); asks first unless --yes.
    ///
    /// Example: warren dlq purge gametrade.tasks.dlq --reason 'invalid' --yes
    Purge {
        #[command(flatten)]
        selection: Selection,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
}

/// Which messages of a DLQ a command takes.
#[derive(Debug, clap::Args)]
pub(crate) struct Selection {
    /// The dead-letter queue.
    queue: String,
    /// At most this many messages.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SCAN)))]
    limit: Option<u32>,
    /// Only messages whose x-warren-reason matches this regular expression.
    #[arg(long, value_parser = reason_pattern)]
    reason: Option<regex::Regex>,
    /// Only messages of this type (full or short name).
    #[arg(long = "type")]
    type_name: Option<String>,
}

fn reason_pattern(text: &str) -> Result<regex::Regex, String> {
    if text.len() > 1_000 {
        return Err("the pattern is longer than 1,000 characters".into());
    }
    regex::RegexBuilder::new(text).size_limit(1 << 20).build().map_err(|e| e.to_string())
}

impl Selection {
    fn type_filter(&self, catalog: &Catalog) -> Result<Option<String>, Failure> {
        match &self.type_name {
            None => Ok(None),
            Some(name) => Ok(Some(catalog.message(name)?.full_name().to_owned())),
        }
    }

    fn matches(&self, taken: &Taken, type_name: Option<&str>) -> bool {
        let reason = taken.message.header_str("x-warren-reason").unwrap_or_default();
        self.reason.as_ref().is_none_or(|pattern| pattern.is_match(reason))
            && type_name.is_none_or(|t| taken.message.properties.kind.as_deref() == Some(t))
    }
}

pub(crate) async fn run(catalog: &Catalog, bus: &Bus, command: &DlqCommand, out: &Output) -> Result<(), Failure> {
    match command {
        DlqCommand::List { queues, scan } => list(catalog, bus, queues, *scan, out).await,
        DlqCommand::Show(selection) => show(catalog, bus, selection).await,
        DlqCommand::Replay { selection, rate, to_queue, dry_run } => {
            replay(catalog, bus, selection, *rate, to_queue.as_deref(), *dry_run, out).await
        }
        DlqCommand::Purge { selection, yes } => purge(catalog, bus, selection, *yes, out).await,
    }
}

async fn list(catalog: &Catalog, bus: &Bus, named: &[String], scan: u32, out: &Output) -> Result<(), Failure> {
    let mut queues: Vec<String> = catalog.tasks().map(|t| warren_reflect::dead_letter_queue(&t.queue)).collect();
    for queue in named {
        if !queues.contains(queue) {
            queues.push(queue.clone());
        }
    }
    let mut rows = Vec::new();
    for queue in &queues {
        let depth = match bus.queue_depth(queue).await {
            Ok(depth) => depth,
            Err(_) => {
                rows.push(vec![queue.clone(), "-".into(), "-".into(), "not declared yet".into()]);
                continue;
            }
        };
        let mut reader = bus.read_queue(queue, PREFETCH).await?;
        let mut oldest: Option<String> = None;
        let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
        let mut held = Vec::new();
        let wanted = depth.min(u64::from(scan));
        let cap = wanted.min(u64::from(PREFETCH));
        while (held.len() as u64) < cap {
            let Some(taken) = reader.next_within(IDLE).await else { break };
            let failed_at = match taken.message.headers().get("x-warren-failed-at") {
                Some(warren::HeaderValue::Timestamp(seconds)) => Some(*seconds),
                _ => taken.message.properties.timestamp,
            };
            let time = failed_at.map(|seconds| crate::services::rfc3339(seconds.saturating_mul(1000)));
            if oldest.is_none() {
                oldest = time;
            }
            let reason = taken.message.header_str("x-warren-reason").unwrap_or("(none)");
            *reasons.entry(short_reason(reason)).or_default() += 1;
            held.push(taken);
        }
        reader.close().await;
        let mut reasons = reasons.iter().map(|(reason, n)| format!("{n}× {reason}")).collect::<Vec<_>>().join("; ");
        if wanted > cap {
            reasons.push_str(&format!(" (of the first {cap} messages: a command holds at most {PREFETCH} at once)"));
        }
        rows.push(vec![queue.clone(), depth.to_string(), oldest.unwrap_or_default(), reasons]);
    }
    out.table(&["queue", "depth", "oldest", "reasons"], &rows);
    Ok(())
}

async fn show(catalog: &Catalog, bus: &Bus, selection: &Selection) -> Result<(), Failure> {
    let type_name = selection.type_filter(catalog)?;
    let Read { held, .. } = read(bus, selection, type_name.as_deref()).await?;
    for (taken, selected) in &held {
        if *selected {
            let mut line = crate::tail::line(catalog, &taken.message, false);
            let headers: serde_json::Map<String, serde_json::Value> = taken
                .message
                .headers()
                .iter()
                .filter(|(name, _)| name.starts_with("x-warren-"))
                .map(|(name, value)| (name.to_owned(), header_json(value)))
                .collect();
            line["headers"] = serde_json::Value::Object(headers);
            crate::output::say!("{line}");
        }
    }
    // Dropped unsettled: every message goes back to the queue when the reader closes.
    Ok(())
}

/// What a read of a queue found: each message with whether the filters select it, the reader holding them
/// unsettled, and how many messages it left unread because it holds no more than [`PREFETCH`] at once.
struct Read {
    held: Vec<(Taken, bool)>,
    reader: warren::QueueReader,
    unread: u64,
}

/// Reads `selection.queue` to its end (as it was when reading began), or to `--limit` selected messages, or to
/// [`PREFETCH`] messages (then says so on stderr). Nothing is settled: the caller acks or lets go.
async fn read(bus: &Bus, selection: &Selection, type_name: Option<&str>) -> Result<Read, Failure> {
    let depth = bus.queue_depth(&selection.queue).await?;
    let mut reader = bus.read_queue(&selection.queue, PREFETCH).await?;
    let limit = u64::from(selection.limit.unwrap_or(MAX_SCAN));
    let mut held = Vec::new();
    let mut selected = 0;
    while (held.len() as u64) < depth && selected < limit && held.len() < usize::from(PREFETCH) {
        let Some(taken) = reader.next_within(IDLE).await else { break };
        let chosen = selection.matches(&taken, type_name);
        selected += u64::from(chosen);
        held.push((taken, chosen));
    }
    let unread = if held.len() >= usize::from(PREFETCH) && selected < limit {
        depth.saturating_sub(held.len() as u64)
    } else {
        0
    };
    if unread > 0 {
        eprintln!(
            "warren: read only the first {PREFETCH} of the {depth} messages in {}: a command holds at most {PREFETCH} \
             at once; {unread} were not read (narrow the filters, or run it again once some have left the queue)",
            selection.queue
        );
    }
    Ok(Read { held, reader, unread })
}

async fn replay(
    catalog: &Catalog,
    bus: &Bus,
    selection: &Selection,
    rate: Option<u32>,
    to_queue: Option<&str>,
    dry_run: bool,
    out: &Output,
) -> Result<(), Failure> {
    let type_name = selection.type_filter(catalog)?;
    // Checked once, not found out message by message (each then failing as unroutable).
    if let Some(to) = to_queue
        && let Err(error) = bus.queue_depth(to).await
    {
        let shown: String = to.chars().take(255).collect();
        // `queue_depth` says "does not exist" for a missing queue; anything else (a timeout, a refusal) is
        // passed on as it is.
        if error.to_string().contains("does not exist") {
            return Err(Failure::new(
                exit::NOT_FOUND,
                format!("--to-queue {shown:?}: no such queue (check the name, and the vhost in the URL)"),
            ));
        }
        return Err(Failure::from(error));
    }
    if dry_run {
        let Read { held, reader, .. } = read(bus, selection, type_name.as_deref()).await?;
        for (taken, _) in held.iter().filter(|(_, chosen)| *chosen) {
            let m = &taken.message;
            let to = to_queue.map(str::to_owned).unwrap_or_else(|| {
                let exchange = m.header_str("x-warren-original-exchange").unwrap_or("?");
                let key = m.header_str("x-warren-original-routing-key").unwrap_or("?");
                format!("{exchange} {key}")
            });
            out.record(&[("would_replay", m.properties.message_id.clone().unwrap_or_default()), ("to", to)]);
        }
        reader.close().await;
        return Ok(());
    }
    let limit = u64::from(selection.limit.unwrap_or(MAX_SCAN));
    let start_depth = bus.queue_depth(&selection.queue).await?;
    let pace = rate.map(|r| Duration::from_secs_f64(1.0 / f64::from(r)));
    let mut ledger = Ledger::default();
    let mut replayed_ids: HashSet<String> = HashSet::new();
    let mut failed_ids: HashSet<String> = HashSet::new();
    // Failures of messages without an id, which a later success cannot be matched to.
    let mut failed_without_id = 0;
    let mut passed_over = Vec::new();
    let mut reader = bus.read_queue(&selection.queue, PREFETCH).await?;
    let mut last_progress = std::time::Instant::now();
    let mut progress_shown = false;
    // Idle reads in a row: after a lost connection the reader takes a moment to consume again.
    let mut idle_reads = 0;
    loop {
        let failed = !failed_ids.is_empty() || failed_without_id > 0;
        if ledger.replayed >= limit || (!failed && ledger.replayed + ledger.passed_over >= start_depth) {
            break;
        }
        let Some(taken) = reader.next_within(IDLE).await else {
            // Nothing ready (what is left, this reader holds) or the reader is consuming again.
            idle_reads += 1;
            if idle_reads >= 3 || bus.queue_depth(&selection.queue).await.ok() == Some(0) {
                break;
            }
            continue;
        };
        idle_reads = 0;
        // Only an id tells two messages apart: one without (a plain client's) is never taken for another.
        let id = taken.message.properties.message_id.clone().filter(|id| !id.is_empty());
        if taken.message.redelivered && id.as_ref().is_some_and(|id| replayed_ids.contains(id)) {
            // Replayed and confirmed before; its acknowledgement was lost with the connection. (A copy that is
            // not a redelivery was dead-lettered again after its replay: a new dead letter, kept.)
            ledger.duplicates += 1;
            let _ = taken.ack().await;
            continue;
        }
        if !selection.matches(&taken, type_name.as_deref()) {
            ledger.passed_over += 1;
            passed_over.push(taken);
            continue;
        }
        match bus.replay(&taken.message, to_queue).await {
            Ok(()) => {
                if let Some(id) = id {
                    failed_ids.remove(&id);
                    replayed_ids.insert(id);
                }
                ledger.replayed += 1;
                if taken.ack().await.is_err() {
                    ledger.ack_lost += 1;
                }
            }
            // It cannot be replayed as asked (no record of where it came from): passed over, not failed.
            Err(error @ warren::Error::Config { .. }) => {
                eprintln!("passed over (left in the DLQ): {error}");
                ledger.passed_over += 1;
                passed_over.push(taken);
            }
            Err(error) => {
                eprintln!("not replayed (left in the DLQ): {error}");
                match id {
                    Some(id) => _ = failed_ids.insert(id),
                    None => failed_without_id += 1,
                }
            }
        }
        if last_progress.elapsed() >= Duration::from_secs(1) && !out.is_json() {
            eprint!("\rreplayed {} of {} …", ledger.replayed, start_depth.min(limit));
            progress_shown = true;
            let _ = std::io::stderr().flush();
            last_progress = std::time::Instant::now();
        }
        if let Some(pace) = pace {
            tokio::time::sleep(pace).await;
        }
    }
    ledger.failed = failed_ids.len() as u64 + failed_without_id;
    // The messages passed over are held until the end: with PREFETCH of them the broker sends no more.
    if ledger.replayed < limit && passed_over.len() >= usize::from(PREFETCH) {
        ledger.unread = start_depth.saturating_sub(ledger.replayed + ledger.passed_over + ledger.duplicates);
    }
    drop(passed_over);
    reader.close().await;
    if progress_shown {
        eprintln!();
    }
    out.record(&ledger.fields());
    if ledger.failed > 0 {
        return Err(Failure::new(exit::NOT_ACCEPTED, format!("{} message(s) could not be replayed", ledger.failed)));
    }
    if ledger.unread > 0 {
        let message = format!(
            "passed over {PREFETCH} messages, as many as a command holds at once: {} message(s) of {} were not \
             read (narrow the filters, or run it again once some have left the queue)",
            ledger.unread, selection.queue
        );
        return Err(Failure::new(exit::FAILED, message));
    }
    Ok(())
}

async fn purge(catalog: &Catalog, bus: &Bus, selection: &Selection, yes: bool, out: &Output) -> Result<(), Failure> {
    let type_name = selection.type_filter(catalog)?;
    let Read { held, reader, unread } = read(bus, selection, type_name.as_deref()).await?;
    let chosen = held.iter().filter(|(_, chosen)| *chosen).count();
    let cut_short = || {
        let message = format!("{unread} message(s) of {} were not read; run it again to go on", selection.queue);
        Failure::new(exit::FAILED, message)
    };
    if chosen == 0 {
        out.record(&[("purged", "0".into()), ("unread", unread.to_string())]);
        reader.close().await;
        return if unread > 0 { Err(cut_short()) } else { Ok(()) };
    }
    if !yes {
        eprint!("remove {chosen} message(s) from {} for good? [y/N] ", selection.queue);
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            reader.close().await;
            return Err(Failure::new(exit::FAILED, "not purged"));
        }
    }
    let mut purged = 0u64;
    for (taken, chosen) in held {
        if chosen && taken.ack().await.is_ok() {
            purged += 1;
        }
    }
    reader.close().await;
    out.record(&[("purged", purged.to_string()), ("unread", unread.to_string())]);
    if unread > 0 {
        return Err(cut_short());
    }
    Ok(())
}

/// Where each message of a replay ended.
#[derive(Debug, Default)]
struct Ledger {
    replayed: u64,
    duplicates: u64,
    passed_over: u64,
    failed: u64,
    ack_lost: u64,
    /// Left unread: the reader held as many passed-over messages as it may.
    unread: u64,
}

impl Ledger {
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("replayed", self.replayed.to_string()),
            ("duplicates_removed", self.duplicates.to_string()),
            ("passed_over", self.passed_over.to_string()),
            ("failed", self.failed.to_string()),
            ("ack_lost", self.ack_lost.to_string()),
            ("unread", self.unread.to_string()),
        ]
    }
}

/// A header's value as JSON: text and numbers as they are, times in RFC 3339, anything else as its debug form.
fn header_json(value: &warren::HeaderValue) -> serde_json::Value {
    if let warren::HeaderValue::Timestamp(seconds) = value {
        return serde_json::Value::String(crate::services::rfc3339(seconds.saturating_mul(1000)));
    }
    match (value.as_str(), value.as_i64()) {
        (Some(text), _) => serde_json::Value::String(text.to_owned()),
        (None, Some(number)) => serde_json::Value::from(number),
        (None, None) => serde_json::Value::String(format!("{value:?}")),
    }
}

/// A reason without its details, for counting: `handler failed: …` → `handler failed`.
fn short_reason(reason: &str) -> String {
    reason.split(':').next().unwrap_or(reason).trim().chars().take(80).collect()
}
