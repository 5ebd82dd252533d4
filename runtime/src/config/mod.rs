//! Bus configuration: where the broker is and the limits Warren works within.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use lapin::uri::{AMQPScheme, AMQPUri};

use crate::error::{Error, Result};
use crate::middleware::{Layers, Middleware};

mod addresses;
mod env;
pub use env::parse_duration;
mod redact;

pub(crate) use addresses::Address;
use redact::{redact_text, redact_url, redacted_amqp_url};

/// Which broker a bus talks to.
#[derive(Clone)]
pub(crate) enum Endpoint {
    /// RabbitMQ: the URI lapin parsed (with the first address), and every node's address, in the order given.
    Amqp {
        /// Credentials, vhost and options; its host and port are the first address's.
        uri: AMQPUri,
        /// Each node's address (at least one).
        addresses: Vec<Address>,
    },
    /// The in-memory broker of this name (`memory://<name>`); `None` for a private one.
    Memory(Option<String>),
}

/// The URL used when neither the caller nor `RABBITMQ_URL` gives one.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// How a [`crate::Bus`] connects and behaves.
///
/// `Debug` and every error show the URL with the password replaced by `***`.
///
/// ```
/// use std::time::Duration;
/// let config = warren::BusConfig::new("amqps://billing:s3cret@rabbit.internal:5671/prod")?
///     .service_name("billing")
///     .publish_timeout(Duration::from_secs(10))
///     .prefetch(64);
/// assert_eq!(config.redacted_url(), "amqps://billing:***@rabbit.internal:5671/prod");
/// assert!(!format!("{config:?}").contains("s3cret"));
/// # Ok::<(), warren::Error>(())
/// ```
#[derive(Clone)]
pub struct BusConfig {
    pub(crate) endpoint: Endpoint,
    /// The URL exactly as given, to redact it wherever it appears.
    url: String,
    /// The URL for showing: password redacted, every address listed.
    shown: String,
    /// Deadline for establishing the connection, retries included.
    pub connect_timeout: Duration,
    /// Deadline for each other broker operation: declare, publish confirm, channel open.
    pub operation_timeout: Duration,
    /// Deadline for a publish as a whole: it rides out a reconnection (re-sending the message) until then.
    pub publish_timeout: Duration,
    /// How long reconnecting may fail before [`crate::Bus::health`] reports [`crate::Health::Failed`].
    pub recovery_timeout: Duration,
    /// AMQP heartbeat in seconds (default 10, or the URL's `?heartbeat=N`); a dead peer is detected within about
    /// twice this.
    pub heartbeat_secs: u16,
    /// Sent as `app_id` on every message: the name of the service publishing.
    pub service_name: String,
    /// Largest encoded message the bus sends; larger ones fail with [`Error::TooLarge`] before sending.
    pub max_message_size: usize,
    /// Default unacknowledged deliveries per subscriber.
    pub prefetch: u16,
    /// How many recently published messages to keep per event type, for [`crate::Bus::published`] (0: none).
    pub history: usize,
    /// Whether to write W3C trace context (`traceparent`, `tracestate`) on every publish, enqueue and RPC call
    /// (off by default; see [`crate::TraceContext`]). Off, messages go with the headers they were given; what
    /// arrives is still read. Off by default because a header on every message costs lapin a header table to
    /// build and parse: W2 lost about a fifth of its throughput with it on (docs/observability.md).
    pub trace_context: bool,
    /// How often this bus's RPC servers announce themselves in the registry ([`crate::Bus::services`]); an
    /// instance missing three heartbeats counts as gone. Zero: they do not announce themselves at all.
    pub registry_heartbeat: Duration,
    /// Layers around all of this bus's traffic, in registration order ([`BusConfig::middleware`]).
    pub(crate) middleware: Layers,
    /// For `amqps://`: a PEM file of certificate authorities trusted for the broker's certificate, besides the
    /// system's roots ([`BusConfig::tls_ca`], or `RABBITMQ_CA_FILE`).
    pub tls_ca: Option<PathBuf>,
    /// For `amqps://` to a broker that asks for a client certificate: PEM files of the certificate and of its
    /// private key ([`BusConfig::tls_client_identity`]).
    pub tls_client_identity: Option<(PathBuf, PathBuf)>,
    /// Whether the bus declares its exchanges and queues or only checks that they exist (see
    /// [`crate::TopologyMode`]; default [`crate::TopologyMode::Declare`]).
    pub topology: crate::TopologyMode,
}

impl BusConfig {
    /// Configuration for `url`, with defaults for the rest: `amqp://user:password@host:port/vhost` for
    /// RabbitMQ, or `memory://` (optionally `memory://<name>`) for the in-memory broker, shared by every bus
    /// of this process with the same URL.
    pub fn new(url: &str) -> Result<Self> {
        if let Some(name) = url.strip_prefix("memory://") {
            return Ok(Self::with_endpoint(Endpoint::Memory(Some(name.trim_end_matches('/').to_owned())), url));
        }
        let invalid = |reason: &str| {
            let shown = redact_url(url);
            Error::config(format!(
                "invalid broker URL {shown}: {}; expected amqp://user:password@host:port/vhost, or for a cluster \
                 amqp://user:password@host1:port1,host2:port2/vhost",
                redact_text(reason, url, &shown)
            ))
        };
        let (first, listed) = match addresses::split(url) {
            Ok(Some((first, listed))) => (first, listed),
            Ok(None) => (url.to_owned(), Vec::new()),
            Err(problem) => return Err(invalid(&problem)),
        };
        let mut uri = AMQPUri::from_str(&first).map_err(|reason| invalid(&reason))?;
        // lapin takes a URL's host from its domain name, which a `[v6]` address has none of, and would connect
        // to `localhost` (with the URL's credentials) instead.
        if let Some(host) = addresses::first_host(&first).map_err(|problem| invalid(&problem))?
            && host.contains(':')
        {
            uri.authority.host = host;
        }
        let default_port = default_port(&uri);
        let mut addresses = vec![Address { host: uri.authority.host.clone(), port: uri.authority.port }];
        addresses.extend(
            listed.into_iter().skip(1).map(|(host, port)| Address { host, port: port.unwrap_or(default_port) }),
        );
        // The URL's `?heartbeat=N` is the default; `heartbeat_secs` (or `WARREN_HEARTBEAT`) may still change it.
        let heartbeat = uri.query.heartbeat;
        let mut config = Self::with_endpoint(Endpoint::Amqp { uri, addresses }, url);
        if let Some(seconds) = heartbeat {
            config.heartbeat_secs = seconds;
        }
        config.shown = config.show();
        Ok(config)
    }

    /// Connects to these broker nodes (`host:port`, `host` for the scheme's default port, or `[v6]:port`)
    /// instead of the URL's: the nodes of one cluster, sharing the URL's user, password and vhost. The bus
    /// connects to the first that answers, in this order; after losing a connection it tries them all again,
    /// in a shuffled order (the node it lost last), as RabbitMQ's Java and .NET clients do.
    /// [`crate::Bus::health`] names the node it is on. The same as listing them in the URL:
    /// `amqp://user:password@h1:5672,h2:5673,h3:5674/vhost`.
    ///
    /// ```
    /// let config = warren::BusConfig::new("amqp://app:s3cret@127.0.0.1:5672/prod")?
    ///     .addresses(["127.0.0.1:5681", "127.0.0.1:5682", "127.0.0.1:5683"])?;
    /// assert_eq!(config.redacted_url(), "amqp://app:***@127.0.0.1:5681,127.0.0.1:5682,127.0.0.1:5683/prod");
    /// # Ok::<(), warren::Error>(())
    /// ```
    ///
    /// Fails for an empty list, more than 64 addresses, an address that does not parse, or a `memory://` bus.
    pub fn addresses<A: AsRef<str>>(mut self, addresses: impl IntoIterator<Item = A>) -> Result<Self> {
        let Endpoint::Amqp { uri, addresses: current } = &mut self.endpoint else {
            return Err(Error::config("broker addresses apply to RabbitMQ (amqp://); this bus is in memory"));
        };
        let default_port = default_port(uri);
        let mut parsed = Vec::new();
        for address in addresses {
            if parsed.len() == addresses::MAX_ADDRESSES {
                return Err(Error::config(format!(
                    "more than {} broker addresses; a bus takes at most that many",
                    addresses::MAX_ADDRESSES
                )));
            }
            let (host, port) = addresses::parse(address.as_ref())
                .map_err(|problem| Error::config(format!("invalid broker address: {problem}")))?;
            parsed.push(Address { host, port: port.unwrap_or(default_port) });
        }
        let Some(first) = parsed.first() else {
            return Err(Error::config("no broker addresses given; give at least one host:port"));
        };
        uri.authority.host.clone_from(&first.host);
        uri.authority.port = first.port;
        *current = parsed;
        self.shown = self.show();
        Ok(self)
    }

    /// Configuration for a private in-memory broker (see [`crate::Bus::in_memory`]).
    pub fn in_memory() -> Self {
        Self::with_endpoint(Endpoint::Memory(None), "memory://")
    }

    fn with_endpoint(endpoint: Endpoint, url: &str) -> Self {
        BusConfig {
            endpoint,
            url: url.to_owned(),
            shown: String::new(),
            connect_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(10),
            publish_timeout: Duration::from_secs(30),
            recovery_timeout: Duration::from_secs(120),
            heartbeat_secs: 10,
            service_name: std::env::current_exe()
                .ok()
                .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "warren".to_owned()),
            max_message_size: 16 * 1024 * 1024,
            prefetch: 256,
            history: 0,
            trace_context: false,
            registry_heartbeat: Duration::from_secs(10),
            middleware: Layers::default(),
            tls_ca: None,
            tls_client_identity: None,
            topology: crate::TopologyMode::Declare,
        }
    }

    /// Sets the service name sent as `app_id`.
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = name.into();
        self
    }

    /// Sets the connection deadline.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Keeps the last `per_type` published messages of each event type, for [`crate::Bus::published`] in
    /// tests and for inspection (the trading bus's event history); at most [`crate::MAX_HISTORY`] (more is
    /// taken as that many: each kept message holds its body in memory).
    pub fn history(mut self, per_type: usize) -> Self {
        self.history = per_type;
        self
    }

    /// Sets the largest encoded message the bus sends (checked before sending).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Sets the deadline of a publish as a whole, reconnection included.
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Sets how long reconnecting may fail before health reports [`crate::Health::Failed`].
    pub fn recovery_timeout(mut self, timeout: Duration) -> Self {
        self.recovery_timeout = timeout;
        self
    }

    /// Sets the deadline of every other broker operation.
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// Sets the AMQP heartbeat, in seconds (0: none; a dead peer is then noticed only by TCP).
    pub fn heartbeat_secs(mut self, seconds: u16) -> Self {
        self.heartbeat_secs = seconds;
        self
    }

    /// Sets the default number of unacknowledged deliveries per subscriber (at least 1).
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// Writes W3C trace context on what this bus sends (`true`), or not (the default; see
    /// [`BusConfig::trace_context`](#structfield.trace_context)).
    pub fn trace_context(mut self, on: bool) -> Self {
        self.trace_context = on;
        self
    }

    /// Has this bus's RPC servers announce themselves every `interval` (zero: never; see
    /// [`BusConfig::registry_heartbeat`](#structfield.registry_heartbeat)).
    pub fn registry_heartbeat(mut self, interval: Duration) -> Self {
        self.registry_heartbeat = interval;
        self
    }

    /// Adds `layer` around all of this bus's traffic: every publish, every delivery to its subscribers, every
    /// RPC call and every request its servers answer; after the layers added before it, and before a
    /// subscriber's or a server's own (see [`crate::Middleware`]).
    pub fn middleware(mut self, layer: impl Middleware) -> Self {
        self.middleware = self.middleware.with(Arc::new(layer));
        self
    }

    /// Trusts the certificate authorities in PEM file `path` for the broker's certificate over `amqps://`,
    /// besides the system's roots: for a broker whose certificate a private CA signed. Needs the `tls` feature;
    /// the file is read at each connection.
    pub fn tls_ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_ca = Some(path.into());
        self
    }

    /// Presents the client certificate in PEM file `certificate` (its chain may follow it) with its private key
    /// in PEM file `key` (unencrypted PKCS#8, or RSA / EC) to a broker that asks for one (RabbitMQ's
    /// `ssl_options.verify = verify_peer`). Only the paths are kept, and the files read at each connection:
    /// the key never appears in `Debug`, logs or errors. Needs the `tls` feature.
    pub fn tls_client_identity(mut self, certificate: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls_client_identity = Some((certificate.into(), key.into()));
        self
    }

    /// Declares the exchanges and queues this bus needs ([`crate::TopologyMode::Declare`], the default), or
    /// only checks that they exist ([`crate::TopologyMode::Verify`], for a user without `configure` permission).
    pub fn topology(mut self, mode: crate::TopologyMode) -> Self {
        self.topology = mode;
        self
    }

    /// The URL with the password replaced by `***`: `scheme://user:***@host:port/vhost`, with the scheme,
    /// user, host and vhost as given (the query left out), and the user, port and vhost used when the URL
    /// leaves them out.
    pub fn redacted_url(&self) -> String {
        match &self.endpoint {
            Endpoint::Amqp { .. } => self.shown.clone(),
            Endpoint::Memory(Some(name)) => format!("memory://{name}"),
            Endpoint::Memory(None) => "memory:// (private)".to_owned(),
        }
    }

    /// The redacted URL, with every address: computed once, when the addresses are set.
    fn show(&self) -> String {
        match &self.endpoint {
            Endpoint::Amqp { uri, addresses } => {
                let first = match addresses::split(&self.url) {
                    Ok(Some((first, _))) => first,
                    _ => self.url.clone(),
                };
                addresses::show(&redacted_amqp_url(&first, uri), addresses)
            }
            Endpoint::Memory(_) => self.redacted_url(),
        }
    }

    /// Whether this configuration selects the in-memory broker.
    pub fn is_in_memory(&self) -> bool {
        matches!(self.endpoint, Endpoint::Memory(_))
    }

    /// `text` (an error from lapin, say) with the password of every `amqp://` or `amqps://` URL in it replaced
    /// by `***`, and the configured URL wherever it appears whole replaced by [`Self::redacted_url`]. The
    /// password alone is left be: outside a URL it cannot be told from ordinary words (think of `a`).
    pub(crate) fn redact(&self, text: &str) -> String {
        match self.endpoint {
            Endpoint::Amqp { .. } => redact_text(text, &self.url, &self.shown),
            Endpoint::Memory(_) => text.to_owned(),
        }
    }
}

impl fmt::Debug for BusConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusConfig")
            .field("url", &self.redacted_url())
            .field("connect_timeout", &self.connect_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .field("publish_timeout", &self.publish_timeout)
            .field("recovery_timeout", &self.recovery_timeout)
            .field("heartbeat_secs", &self.heartbeat_secs)
            .field("service_name", &self.service_name)
            .field("max_message_size", &self.max_message_size)
            .field("prefetch", &self.prefetch)
            .field("history", &self.history)
            .field("trace_context", &self.trace_context)
            .field("registry_heartbeat", &self.registry_heartbeat)
            .field("middleware", &self.middleware)
            .field("tls_ca", &self.tls_ca)
            .field("tls_client_identity", &self.tls_client_identity)
            .field("topology", &self.topology)
            .finish()
    }
}

/// The port of an address given without one: the scheme's (5671 for `amqps://`, else 5672).
fn default_port(uri: &AMQPUri) -> u16 {
    if uri.scheme == AMQPScheme::AMQPS { 5671 } else { 5672 }
}
