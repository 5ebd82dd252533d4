//! `warren tail`: what is published to an exchange, one decoded message per line, through a queue of the tail's
//! own (auto-deleted, expiring), until `--count`, `--for` or Ctrl-C.

use std::time::Duration;

use serde_json::{Value, json};
use warren::RawMessage;
use warren_reflect::Catalog;

use crate::output::Output;
use crate::{Failure, exit};

/// Arguments of `tail`.
#[derive(Debug, clap::Args)]
pub(crate) struct TailArgs {
    /// The exchange, as the contracts name it.
    exchange: String,
    /// A binding pattern (`*` one word, `#` any); everything when left out.
    #[arg(default_value = "#")]
    pattern: String,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this long (e.g. 30s, 5m).
    #[arg(long = "for", value_parser = crate::parse_duration)]
    duration: Option<Duration>,
    /// Print bodies as hex, without decoding them.
    #[arg(long)]
    raw: bool,
}

pub(crate) async fn run(catalog: &Catalog, url: Option<&str>, args: &TailArgs, out: &Output) -> Result<(), Failure> {
    let exchange = catalog.exchange(&args.exchange)?;
    if let Some(problem) = catalog.watch_problem(&exchange.name, &args.pattern) {
        return Err(Failure::new(exit::INVALID, problem));
    }
    let bus = crate::connect(url).await?;
    let mut reader = bus.watch(&exchange, &args.pattern).await?;
    if !out.is_json() {
        eprintln!("tailing {} {} (Ctrl-C to stop)", exchange.name, args.pattern);
    }
    let until = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut seen = 0u64;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        if args.count.is_some_and(|count| seen >= count) || until.is_some_and(|u| tokio::time::Instant::now() >= u) {
            break;
        }
        let wait = until.map_or(Duration::from_secs(1), |u| {
            u.saturating_duration_since(tokio::time::Instant::now()).min(Duration::from_secs(1))
        });
        let taken = tokio::select! {
            taken = reader.next_within(wait) => taken,
            _ = &mut interrupted => break,
        };
        let Some(taken) = taken else { continue };
        crate::output::say!("{}", line(catalog, &taken.message, args.raw));
        seen += 1;
        let _ = taken.ack().await;
    }
    reader.close().await;
    Ok(())
}

/// One message as a JSON line: where it went, its id and type, and the payload decoded (or hex, with why).
pub(crate) fn line(catalog: &Catalog, message: &RawMessage, raw: bool) -> Value {
    let p = &message.properties;
    let mut line = json!({
        "routing_key": message.routing_key,
        "type": p.kind,
        "message_id": p.message_id,
        "time": p.timestamp.map(|seconds| crate::services::rfc3339(seconds.saturating_mul(1000))),
    });
    if raw {
        line["body_hex"] = Value::String(hex(&message.body));
        return line;
    }
    match catalog.decode(message) {
        Ok(payload) => line["payload"] = payload,
        Err(error) => {
            line["body_hex"] = Value::String(hex(&message.body));
            line["undecodable"] = Value::String(error.to_string());
        }
    }
    line
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
