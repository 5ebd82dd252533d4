//! `warren publish`, `warren enqueue`, `warren call`: a message from JSON (or protobuf), checked against its
//! contract, sent through `warren-reflect`.

use std::io::Read;
use std::time::Duration;

use warren::{CallOptions, Code, Priority, PublishOptions, WireFormat};
use warren_reflect::{Catalog, Format, Reply};

use crate::output::Output;
use crate::{Failure, exit};

/// The most a message given on the command line, in a file or on stdin may be.
const MAX_INPUT: u64 = 16 * 1024 * 1024;
/// The most messages one `--count` sends.
const MAX_COUNT: u32 = 1_000_000;

/// Arguments of `publish` and `enqueue`.
#[derive(Debug, clap::Args)]
pub(crate) struct PublishArgs {
    /// The event (or task): full proto name, or a unique short one.
    name: String,
    /// The message: JSON text, `@file`, or `-` for stdin.
    input: String,
    /// A header to send, `name=value` (repeatable).
    #[arg(long = "header", value_name = "NAME=VALUE")]
    headers: Vec<String>,
    /// The message's priority instead of the contract's.
    #[arg(long, value_enum)]
    priority: Option<PriorityArg>,
    /// How the input is given (and sent): JSON, or protobuf bytes (from a file or stdin).
    #[arg(long, value_enum, default_value = "json")]
    format: FormatArg,
    /// Send the message this many times, pipelined, for a quick load (each confirmed; at most 1,000,000).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_COUNT)))]
    count: u32,
}

/// Arguments of `call`.
#[derive(Debug, clap::Args)]
pub(crate) struct CallArgs {
    /// The method: `Service/Method`, full or short (`at.v1.IntSummator/IntSum`, `IntSummator/IntSum`).
    method: String,
    /// The request: JSON text, `@file`, or `-` for stdin.
    input: String,
    /// The call's deadline instead of the contract's (e.g. 500ms, 5s).
    #[arg(long, value_parser = crate::parse_duration)]
    timeout: Option<Duration>,
    /// A header to send, `name=value` (repeatable).
    #[arg(long = "header", value_name = "NAME=VALUE")]
    headers: Vec<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum PriorityArg {
    Low,
    Normal,
    High,
    Critical,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    Json,
    Protobuf,
}

pub(crate) async fn publish(
    catalog: &Catalog,
    url: Option<&str>,
    args: &PublishArgs,
    out: &Output,
) -> Result<(), Failure> {
    let event = catalog.event(&args.name)?;
    let message = catalog.parse(&event.full_name, &read_input(&args.input)?, format(args.format))?;
    let options = options(args)?;
    let bus = &crate::connect(url).await?;
    let sends = (0..args.count).map(|_| catalog.publish(bus, event, &message, options.clone()));
    report(futures(sends).await, out)
}

pub(crate) async fn enqueue(
    catalog: &Catalog,
    url: Option<&str>,
    args: &PublishArgs,
    out: &Output,
) -> Result<(), Failure> {
    let task = catalog.task(&args.name)?;
    let message = catalog.parse(&task.full_name, &read_input(&args.input)?, format(args.format))?;
    let options = options(args)?;
    let bus = &crate::connect(url).await?;
    let sends = (0..args.count).map(|_| catalog.enqueue(bus, task, &message, options.clone()));
    report(futures(sends).await, out)
}

pub(crate) async fn call(catalog: &Catalog, url: Option<&str>, args: &CallArgs, out: &Output) -> Result<(), Failure> {
    let (service, method) = catalog.method(&args.method)?;
    let request = catalog.parse(&method.input, &read_input(&args.input)?, Format::Json)?;
    let mut options = CallOptions::new();
    if let Some(timeout) = args.timeout {
        options = options.timeout(timeout);
    }
    for (name, value) in headers(&args.headers)? {
        options = options.header(name, value);
    }
    let bus = &crate::connect(url).await?;
    match catalog.call(bus, service, method, &request, &options).await {
        Ok(Reply::Response(response)) => {
            out.value(&warren_reflect::to_json(&response));
            Ok(())
        }
        Ok(Reply::Error { error, message }) => {
            let type_name = prost_reflect::ReflectMessage::descriptor(&error).full_name().to_owned();
            let details = warren_reflect::to_json(&error);
            out.value(&serde_json::json!({ "error": type_name, "details": details, "message": message }));
            Err(Failure::new(exit::DECLARED_ERROR, format!("{} answered {type_name}: {message}", args.method)))
        }
        Err(status) => {
            let code = status.code();
            out.value(&serde_json::json!({ "code": code.as_str(), "message": status.message() }));
            let exit_code = exit::STATUS_BASE + u8::try_from(code.as_i32()).unwrap_or(2);
            let exit_code = if code == Code::Ok { exit::FAILED } else { exit_code };
            Err(Failure::new(exit_code, status.to_string()))
        }
    }
}

/// Runs the sends at most 256 at a time, in order of completion.
async fn futures<F: Future<Output = Result<String, warren_reflect::Error>>>(
    sends: impl Iterator<Item = F>,
) -> Vec<Result<String, warren_reflect::Error>> {
    use futures_util::StreamExt;
    futures_util::stream::iter(sends).buffer_unordered(256).collect().await
}

fn report(results: Vec<Result<String, warren_reflect::Error>>, out: &Output) -> Result<(), Failure> {
    let total = results.len();
    let mut first_error = None;
    let mut sent = 0;
    for result in results {
        match result {
            Ok(id) if total == 1 => {
                out.record(&[("message_id", id)]);
                sent += 1;
            }
            Ok(_) => sent += 1,
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    if total > 1 {
        out.record(&[("confirmed", sent.to_string()), ("failed", (total - sent).to_string())]);
    }
    match first_error {
        None => Ok(()),
        Some(error) => Err(Failure::from(error)),
    }
}

fn options(args: &PublishArgs) -> Result<PublishOptions, Failure> {
    let mut options = PublishOptions::new();
    if let Some(priority) = args.priority {
        options = options.priority(match priority {
            PriorityArg::Low => Priority::Low,
            PriorityArg::Normal => Priority::Normal,
            PriorityArg::High => Priority::High,
            PriorityArg::Critical => Priority::Critical,
        });
    }
    if matches!(args.format, FormatArg::Protobuf) {
        options = options.format(WireFormat::Protobuf);
    }
    for (name, value) in headers(&args.headers)? {
        options = options.header(name, value);
    }
    Ok(options)
}

fn format(format: FormatArg) -> Format {
    match format {
        FormatArg::Json => Format::Json,
        FormatArg::Protobuf => Format::Protobuf,
    }
}

/// `name=value` pairs.
fn headers(given: &[String]) -> Result<Vec<(String, String)>, Failure> {
    given
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
            // Only the name is echoed: the value may be a credential (`Authorization: Bearer …`).
            _ => {
                let name: String = pair.split([':', ' ', '=']).next().unwrap_or_default().chars().take(64).collect();
                Err(Failure::new(2, format!("--header {name:?}…: write it as name=value (not \"Name: value\")")))
            }
        })
        .collect()
}

/// The input as given: text, `@file`, or `-` for stdin; at most [`MAX_INPUT`] bytes.
fn read_input(input: &str) -> Result<Vec<u8>, Failure> {
    let too_large = || Failure::new(exit::INVALID, format!("the input is larger than {MAX_INPUT} bytes"));
    let mut bytes = Vec::new();
    match input {
        "-" => {
            std::io::stdin()
                .take(MAX_INPUT + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| Failure::new(exit::INVALID, format!("cannot read stdin: {e}")))?;
        }
        path if path.starts_with('@') => {
            let file = std::fs::File::open(&path[1..])
                .map_err(|e| Failure::new(exit::NOT_FOUND, format!("cannot read {}: {e}", &path[1..])))?;
            file.take(MAX_INPUT + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| Failure::new(exit::INVALID, format!("cannot read {}: {e}", &path[1..])))?;
        }
        text => bytes = text.as_bytes().to_vec(),
    }
    if bytes.len() as u64 > MAX_INPUT {
        return Err(too_large());
    }
    Ok(bytes)
}
