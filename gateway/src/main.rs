//! `warren-gateway`: Warren's contracts over HTTP and WebSocket, as a process. Configuration comes from a TOML
//! file (`--config`), then flags and environment variables (which add to the file's lists). It binds
//! 127.0.0.1 by default; a non-loopback address needs tokens for every group of routes it exposes, or
//! `--allow-public-without-auth`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use warren_gateway::{GatewayConfig, Group, StreamRule};
use warren_reflect::Catalog;

/// Serve Warren's contracts over HTTP and WebSocket: POST /events/{type}, /tasks/{type}, /rpc/{Service}/{Method},
/// GET /ws, /health, /ready, /catalog, /dlq, /metrics, /openapi.json, /asyncapi.yaml, and a page at /.
///
/// Example: warren-gateway --event 'streaming.v1.*' --alias /messaging/user-notification=streaming.v1.UserNotification
#[derive(Debug, Parser)]
#[command(name = "warren-gateway", version)]
struct Args {
    /// The address to listen on.
    #[arg(long, env = "WARREN_GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The broker: amqp://user:password@host:port/vhost (several host:port for a cluster), or memory:// (the
    /// password is never printed). Default: RABBITMQ_URL, else RABBITMQ_HOST/_PORT/_USER/_PASSWORD/_VHOST,
    /// else the local broker's default vhost as guest.
    #[arg(long)]
    url: Option<String>,
    /// A TOML configuration file (allow-lists, tokens, aliases, WebSocket limits; see docs/gateway.md).
    #[arg(long, env = "WARREN_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Read the contracts from this proto tree instead of the embedded ones.
    #[arg(long, value_name = "DIR", conflicts_with = "descriptor_set")]
    proto: Option<PathBuf>,
    /// Read the contracts from an encoded FileDescriptorSet (protoc --include_imports -o FILE).
    #[arg(long, value_name = "FILE")]
    descriptor_set: Option<PathBuf>,
    /// An event that may be published (repeatable; full or short name, `package.*`, `*`).
    #[arg(long = "event", value_name = "NAME")]
    events: Vec<String>,
    /// A task that may be enqueued (repeatable).
    #[arg(long = "task", value_name = "NAME")]
    tasks: Vec<String>,
    /// A service (or `Service/Method`) that may be called (repeatable).
    #[arg(long = "service", value_name = "NAME")]
    services: Vec<String>,
    /// An exchange and pattern the WebSocket may stream, `exchange=pattern` (repeatable).
    #[arg(long = "stream", value_name = "EXCHANGE=PATTERN")]
    streams: Vec<String>,
    /// A path that publishes one event or task, `/path=Type` (repeatable).
    #[arg(long = "alias", value_name = "PATH=TYPE")]
    aliases: Vec<String>,
    /// A bearer token for a group of routes, `group=token` with group publish, call, stream or docs
    /// (repeatable; the environment variable takes them comma-separated).
    #[arg(
        long = "token",
        value_name = "GROUP=TOKEN",
        env = "WARREN_GATEWAY_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    tokens: Vec<String>,
    /// The WebSocket's `flush_interval` (`5ms`, `1s`, `0`; at most 1s): stream messages arriving sooner after a
    /// socket's last write wait this long after it and go out together. Overrides the file's
    /// `[websocket] flush_interval`.
    #[arg(long, value_name = "DURATION", env = "WARREN_GATEWAY_WS_FLUSH_INTERVAL")]
    ws_flush_interval: Option<String>,
    /// Allow every event, task and service of the contracts (for local development).
    #[arg(long)]
    allow_all: bool,
    /// Listen on a non-loopback address even though some routes have no tokens.
    #[arg(long)]
    allow_public_without_auth: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let config = config(&args)?;
    let catalog = match (&args.proto, &args.descriptor_set) {
        (Some(dir), _) => Catalog::from_proto_dir(dir),
        (None, Some(file)) => Catalog::from_descriptor_set_file(file),
        (None, None) => Catalog::from_descriptor_set(warren_contracts::FILE_DESCRIPTOR_SET),
    }
    .map_err(|e| e.to_string())?;
    config.check(&catalog).map_err(|e| format!("the configuration: {e}"))?;
    let open = config.open_groups();
    if !args.listen.ip().is_loopback() && !open.is_empty() && !args.allow_public_without_auth {
        let names: Vec<&str> = open.iter().map(|group| group.name()).collect();
        return Err(format!(
            "refusing to listen on {}, which is not a loopback address, while groups of routes have no bearer \
             tokens ({}); give each a token (--token {}=…) or pass --allow-public-without-auth",
            args.listen,
            names.join(", "),
            names.join("=… --token ")
        ));
    }
    // The environment's `WARREN_*` settings apply over the gateway's defaults, whichever names the broker.
    let bus_config = match &args.url {
        Some(url) => warren::BusConfig::new(url),
        None => warren::BusConfig::from_env(),
    }
    .map(|config| config.service_name("warren-gateway").connect_timeout(Duration::from_secs(30)))
    .and_then(warren::BusConfig::with_env)
    .map_err(|e| e.to_string())?;
    #[cfg(feature = "prometheus")]
    let (bus_config, config) = {
        let metrics = warren_gateway::Metrics::new();
        let mut config = config;
        let layer = metrics.layer().clone();
        config.metrics = Some(metrics);
        (bus_config.middleware(layer), config)
    };
    let shown = bus_config.redacted_url();
    let bus = warren::Bus::with_config(bus_config).await.map_err(|e| e.to_string())?;
    let shutdown = config.shutdown.clone();
    let header_timeout = config.header_timeout();
    let app = warren_gateway::router(bus.clone(), Arc::new(catalog), config);
    let listener = listen(args.listen).map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    eprintln!(
        "warren-gateway: listening on http://{} (bus {shown})",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    let (stopping, stopped) = tokio::sync::oneshot::channel();
    let serving = warren_gateway::serve(listener, app, header_timeout, async move {
        let _ = warren::terminated().await;
        let _ = stopping.send(());
        // WebSockets are not the server's to close: each gets a close frame first.
        shutdown.close(Duration::from_secs(5)).await;
    });
    // The server waits for every connection to finish: a request still running (a call with a long deadline, a
    // body trickling in) is given DRAIN to, and then the gateway exits anyway.
    tokio::select! {
        served = serving => served.map_err(|e| e.to_string())?,
        () = async {
            if stopped.await.is_ok() {
                tokio::time::sleep(DRAIN).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            eprintln!("warren-gateway: requests still running {} s after the signal; exiting anyway", DRAIN.as_secs());
        }
    }
    let _ = bus.close().await;
    Ok(())
}

/// How long a shutdown waits for running requests before the gateway exits anyway.
const DRAIN: Duration = Duration::from_secs(30);

/// Each connection's kernel send buffer (Linux doubles it for its bookkeeping). Left to itself, the kernel grows
/// it up to `net.ipv4.tcp_wmem`'s maximum (4 MiB by default): a WebSocket client that stopped reading would
/// take that much of the stream, many seconds of it, before its buffer in the gateway filled and it was closed
/// as slow, and a thousand of them 4 GiB of kernel memory. 256 KiB still carries 2.5 MB/s to a client 100 ms
/// away.
const SEND_BUFFER: u32 = 256 * 1024;

/// A listener on `address` whose connections have [`SEND_BUFFER`] (set on the listening socket, which they
/// inherit).
fn listen(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if address.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_send_buffer_size(SEND_BUFFER)?;
    socket.bind(address)?;
    socket.listen(1024)
}

/// The file's configuration, with the flags' lists added.
fn config(args: &Args) -> Result<GatewayConfig, String> {
    let mut config = match &args.config {
        Some(path) => GatewayConfig::from_file(path).map_err(|e| e.to_string())?,
        None => GatewayConfig::new(),
    };
    if args.allow_all {
        config = config.allow_all();
    }
    if let Some(interval) = &args.ws_flush_interval {
        config.websocket.flush_interval = warren_gateway::WebSocketConfig::parse_flush_interval(interval)
            .map_err(|e| format!("--ws-flush-interval: {e}"))?;
    }
    config.events.extend(args.events.iter().cloned());
    config.tasks.extend(args.tasks.iter().cloned());
    config.services.extend(args.services.iter().cloned());
    for stream in &args.streams {
        let (exchange, pattern) = pair(stream, "--stream", "exchange=pattern")?;
        config.streams.push(StreamRule { exchange, patterns: vec![pattern] });
    }
    for alias in &args.aliases {
        let (path, name) = pair(alias, "--alias", "/path=Type")?;
        config.aliases.insert(path, name);
    }
    for token in &args.tokens {
        let (group, token) = pair(token, "--token", "group=token")?;
        let group = match group.as_str() {
            "publish" => Group::Publish,
            "call" => Group::Call,
            "stream" => Group::Stream,
            "docs" => Group::Docs,
            // Not echoed: a token given without its group may have an `=` of its own (base64's padding).
            _ => {
                return Err("--token: the part before '=' is not a group; write it as GROUP=TOKEN, the group one of \
                            publish, call, stream or docs"
                    .to_owned());
            }
        };
        config.tokens.add(group, token);
    }
    Ok(config)
}

fn pair(text: &str, flag: &str, shape: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok((a.trim().to_owned(), b.trim().to_owned())),
        // The token's value is never echoed.
        _ if flag == "--token" => Err(format!("--token: write it as {shape}")),
        _ => Err(format!("{flag} {text:?}: write it as {shape}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_arguments_are_consistent() {
        Args::command().debug_assert();
    }
}
