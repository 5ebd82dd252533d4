//! `warren`, the command line for Warren's contracts: what grpcurl is to gRPC, for RabbitMQ. It reads the
//! contracts (embedded from `warren-contracts`, or `--proto DIR`, or `--descriptor-set FILE`) and so knows
//! every type, exchange, routing key, queue and error; publishing, calling and decoding go through
//! `warren-reflect`, which the gateway shares.
//!
//! Exit codes: 0 ok; 1 any other failure; 2 usage; 3 not found (a type, method, exchange or queue); 4 invalid
//! input (JSON that does not fit, a broken rule); 5 broker unavailable; 6 not accepted (unroutable, refused,
//! timed out); 9 the method answered one of its declared errors; 10 + the gRPC status code for any other RPC
//! status (`DEADLINE_EXCEEDED`, 4, exits 14; `UNAVAILABLE`, 14, exits 24).
//!
//! Layout: `main.rs` (arguments, connecting, exit codes), `catalog.rs` (`list`, `describe`), `send.rs`
//! (`publish`, `enqueue`, `call`), `tail.rs`, `dlq.rs`, `services.rs` (the live registry), `output.rs`
//! (tables and JSON lines).

mod catalog;
mod dlq;
mod output;
mod send;
mod services;
mod tail;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use warren_reflect::Catalog;

/// The command line for Warren's contracts: list and describe them, publish, enqueue and call from JSON, tail
/// an exchange, and inspect and replay dead letters.
#[derive(Debug, Parser)]
#[command(name = "warren", version, propagate_version = true)]
struct Cli {
    /// The broker: amqp://user:password@host:port/vhost, several host:port for a cluster (the password is never
    /// printed). Default: RABBITMQ_URL, else RABBITMQ_HOST/_PORT/_USER/_PASSWORD/_VHOST, else the local broker's
    /// default vhost as guest.
    #[arg(long, global = true)]
    url: Option<String>,
    /// Read the contracts from this proto tree (compiled now) instead of the embedded ones.
    #[arg(long, global = true, value_name = "DIR", conflicts_with = "descriptor_set")]
    proto: Option<PathBuf>,
    /// Read the contracts from an encoded FileDescriptorSet (protoc --include_imports -o FILE).
    #[arg(long, global = true, value_name = "FILE")]
    descriptor_set: Option<PathBuf>,
    /// One JSON object per line instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the contracts' events, tasks, services or exchanges.
    ///
    /// Example: warren list events
    List {
        /// What to list; everything when left out.
        #[arg(value_enum)]
        what: Option<catalog::What>,
    },
    /// Describe an event, task, service, method, exchange or message: fields with types and rules, exchange and
    /// routing key, queues, retry policy, declared errors, the proto comments.
    ///
    /// Example: warren describe UserRegistered
    Describe {
        /// Full proto name, or a unique short one (`UserRegistered`, `IntSummator/IntSum`).
        name: String,
    },
    /// Publish an event, confirmed; prints its message id. An event no queue is bound for is an error.
    ///
    /// Example: warren publish UserRegistered '{"userId": "7", "username": "ada", "email": "ada@example.com"}'
    Publish(send::PublishArgs),
    /// Put a task on its work queue, confirmed; prints its message id.
    ///
    /// Example: warren enqueue RenderTradeReport '{"userId": "7", "since": "1700000000"}'
    Enqueue(send::PublishArgs),
    /// Call an RPC method and print the reply as JSON; a declared error prints its type and details; any other
    /// status prints its code and message, and exits with 10 + the code.
    ///
    /// Example: warren call IntSummator/IntSum '{"a": "2", "b": "3"}'
    Call(send::CallArgs),
    /// Print what is published to an exchange, one decoded message per line, through a queue of its own
    /// (deleted when the tail ends).
    ///
    /// Example: warren tail gametrade.events 'user.*' --for 30s
    Tail(tail::TailArgs),
    /// Dead-letter queues: list, show, replay, purge.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// The live registry: every service of the contracts with its queue, how many servers consume it now, and
    /// each running instance (id, host, pid, start, last heartbeat, contract fingerprint; SKEW when it was
    /// built from other contracts than these).
    ///
    /// Example: warren services
    Services,
    /// Connect and print the bus's health and the broker's product, version, cluster and platform; exits 5
    /// when the broker is unavailable.
    ///
    /// Example: warren health
    Health,
    /// Print RabbitMQ definitions of the contracts (exchanges, queues with their arguments, dead-letter and delay
    /// queues, bindings) for `rabbitmqctl import_definitions`, so that services can run as users without
    /// configure permission (BusConfig::topology(TopologyMode::Verify); see docs/security.md). Reads no broker.
    ///
    /// Example: warren topology --vhost prod --group billing --group audit > definitions.json
    Topology {
        /// The vhost to put everything in (it must exist: rabbitmqctl add_vhost); `/` when left out.
        #[arg(long, value_name = "VHOST")]
        vhost: Option<String>,
        /// A subscriber group whose queues (`<group>.<event or exchange>`) to include; repeat for each. Work
        /// queues, RPC queues and the registry are always included.
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
    },
    /// Print shell completions.
    ///
    /// Example: warren completions bash > /etc/bash_completion.d/warren
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// How a command failed, and the exit code that says so.
#[derive(Debug)]
pub(crate) struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Self {
        Failure { code, message: message.into() }
    }
}

/// Exit codes (see the crate's docs).
pub(crate) mod exit {
    pub(crate) const FAILED: u8 = 1;
    pub(crate) const NOT_FOUND: u8 = 3;
    pub(crate) const INVALID: u8 = 4;
    pub(crate) const UNAVAILABLE: u8 = 5;
    pub(crate) const NOT_ACCEPTED: u8 = 6;
    pub(crate) const DECLARED_ERROR: u8 = 9;
    pub(crate) const STATUS_BASE: u8 = 10;
}

impl From<warren_reflect::Error> for Failure {
    fn from(error: warren_reflect::Error) -> Self {
        use warren_reflect::Error as E;
        let code = match &error {
            E::NotFound { .. } | E::Ambiguous { .. } => exit::NOT_FOUND,
            E::Malformed { .. } | E::Invalid { .. } | E::RoutingKey { .. } => exit::INVALID,
            E::Bus(error) => return Failure::from(error),
            _ => exit::FAILED,
        };
        Failure::new(code, error.to_string())
    }
}

impl From<&warren::Error> for Failure {
    fn from(error: &warren::Error) -> Self {
        use warren::Error as E;
        let code = match error {
            E::Connect { .. } | E::Closed => exit::UNAVAILABLE,
            E::Unroutable { .. } | E::Refused { .. } | E::Timeout { .. } | E::Nacked { .. } | E::Blocked { .. } => {
                exit::NOT_ACCEPTED
            }
            E::Invalid { .. } | E::Header { .. } | E::TooLarge { .. } | E::RoutingKey { .. } => exit::INVALID,
            E::ExchangeNotFound { .. } | E::MissingTopology { .. } => exit::NOT_FOUND,
            E::Config { message } if message.contains("does not exist") => exit::NOT_FOUND,
            _ => exit::FAILED,
        };
        Failure::new(code, error.to_string())
    }
}

impl From<warren::Error> for Failure {
    fn from(error: warren::Error) -> Self {
        Failure::from(&error)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(exit::FAILED);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "warren", &mut std::io::stdout());
        return Ok(());
    }
    let catalog = load_catalog(&cli)?;
    let out = output::Output::new(cli.json);
    match &cli.command {
        Command::List { what } => catalog::list(&catalog, *what, &out),
        Command::Describe { name } => catalog::describe(&catalog, name, &out),
        // Input is checked against the contracts before anything connects.
        Command::Publish(args) => send::publish(&catalog, cli.url.as_deref(), args, &out).await,
        Command::Enqueue(args) => send::enqueue(&catalog, cli.url.as_deref(), args, &out).await,
        Command::Call(args) => send::call(&catalog, cli.url.as_deref(), args, &out).await,
        Command::Tail(args) => tail::run(&catalog, cli.url.as_deref(), args, &out).await,
        Command::Dlq(command) => dlq::run(&catalog, &connect(cli.url.as_deref()).await?, command, &out).await,
        Command::Services => services::run(&catalog, &connect(cli.url.as_deref()).await?, &out).await,
        Command::Health => health(cli.url.as_deref(), &out).await,
        Command::Topology { vhost, groups } => topology(&catalog, vhost.as_deref(), groups),
        Command::Completions { .. } => Ok(()),
    }
}

fn load_catalog(cli: &Cli) -> Result<Catalog, Failure> {
    let loaded = match (&cli.proto, &cli.descriptor_set) {
        (Some(dir), _) => Catalog::from_proto_dir(dir),
        (None, Some(file)) => Catalog::from_descriptor_set_file(file),
        (None, None) => Catalog::from_descriptor_set(warren_contracts::FILE_DESCRIPTOR_SET),
    };
    loaded.map_err(|error| Failure::new(exit::INVALID, error.to_string()))
}

/// The broker configuration: the broker at `url`, or the environment's (`RABBITMQ_URL`, `RABBITMQ_HOST`…);
/// service name `warren-cli` and a connect timeout of ten seconds unless `WARREN_SERVICE_NAME` or
/// `WARREN_CONNECT_TIMEOUT` say otherwise; the other `WARREN_*` variables and `RABBITMQ_CA_FILE` as set.
fn bus_config(url: Option<&str>) -> Result<warren::BusConfig, Failure> {
    let config = match url {
        Some(url) => warren::BusConfig::new(url),
        None => warren::BusConfig::from_env(),
    };
    config
        .map(|config| config.service_name("warren-cli").connect_timeout(Duration::from_secs(10)))
        .and_then(warren::BusConfig::with_env)
        .map_err(|error| Failure::new(2, error.to_string()))
}

/// The bus at `url` (or the environment's broker), failing within ten seconds (unless configured otherwise)
/// when no broker answers.
pub(crate) async fn connect(url: Option<&str>) -> Result<warren::Bus, Failure> {
    warren::Bus::with_config(bus_config(url)?).await.map_err(Failure::from)
}

async fn health(url: Option<&str>, out: &output::Output) -> Result<(), Failure> {
    let config = bus_config(url)?;
    let shown = config.redacted_url();
    let bus = match warren::Bus::with_config(config).await {
        Ok(bus) => bus,
        Err(error) => {
            out.record(&[("url", shown.clone()), ("health", "unavailable".into()), ("error", error.to_string())]);
            return Err(Failure::new(exit::UNAVAILABLE, format!("the broker at {shown} is unavailable")));
        }
    };
    let health = bus.health();
    let mut fields = vec![("url", shown), ("health", format!("{health:?}"))];
    match bus.broker().await {
        Ok(broker) => {
            fields.push(("broker", format!("{} {}", broker.product, broker.version)));
            fields.push(("cluster", broker.cluster_name));
            fields.push(("platform", broker.platform));
        }
        Err(error) => fields.push(("broker", format!("unknown ({error})"))),
    }
    out.record(&fields);
    let _ = bus.close().await;
    if health.is_connected() { Ok(()) } else { Err(Failure::new(exit::UNAVAILABLE, "the bus is not connected")) }
}

/// `warren topology`: the contracts' RabbitMQ definitions on stdout.
fn topology(catalog: &Catalog, vhost: Option<&str>, groups: &[String]) -> Result<(), Failure> {
    let mut options = warren_codegen::manifest::DefinitionsOptions::new();
    if let Some(vhost) = vhost {
        options = options.vhost(vhost);
    }
    for group in groups {
        if let Some(problem) = warren_codegen::manifest::group_problem(group) {
            return Err(Failure::new(exit::INVALID, problem));
        }
        options = options.group(group);
    }
    let config = warren_codegen::Config::new(Vec::<PathBuf>::new(), Vec::<PathBuf>::new());
    let manifest = warren_codegen::manifest(&config, catalog.contracts())
        .map_err(|error| Failure::new(exit::INVALID, error.to_string()))?;
    print!("{}", manifest.definitions(&options));
    Ok(())
}

/// `30s`, `500ms`, `2m`, `1h`, or plain seconds, as Warren reads durations everywhere.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    warren::parse_duration(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("9999h").is_err());
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn the_arguments_are_consistent() {
        Cli::command().debug_assert();
    }
}
