//! Bus configuration: where the broker is and the limits Warren works within.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use lapin::uri::AMQPUri;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use url::Url;

use crate::error::{Error, Result};
use crate::middleware::{Layers, Middleware};

/// Which broker a bus talks to.
#[derive(Clone)]
pub(crate) enum Endpoint {
    /// RabbitMQ at this URI.
    Amqp(AMQPUri),
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
    /// Deadline for establishing the connection, retries included.
    pub connect_timeout: Duration,
    /// Deadline for each other broker operation: declare, publish confirm, channel open.
    pub operation_timeout: Duration,
    /// Deadline for a publish as a whole: it rides out a reconnection (re-sending the message) until then.
    pub publish_timeout: Duration,
    /// How long reconnecting may fail before [`crate::Bus::health`] reports [`crate::Health::Failed`].
    pub recovery_timeout: Duration,
    /// AMQP heartbeat in seconds; a dead peer is detected within about twice this.
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
        let uri = AMQPUri::from_str(url).map_err(|reason| {
            let shown = redact_url(url);
            Error::config(format!(
                "invalid broker URL {shown}: {}; expected amqp://user:password@host:port/vhost",
                redact_text(&reason, url, &shown)
            ))
        })?;
        Ok(Self::with_endpoint(Endpoint::Amqp(uri), url))
    }

    /// Configuration for a private in-memory broker (see [`crate::Bus::in_memory`]).
    pub fn in_memory() -> Self {
        Self::with_endpoint(Endpoint::Memory(None), "memory://")
    }

    fn with_endpoint(endpoint: Endpoint, url: &str) -> Self {
        BusConfig {
            endpoint,
            url: url.to_owned(),
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
            topology: crate::TopologyMode::Declare,
        }
    }

    /// Configuration from `RABBITMQ_URL`, or [`DEFAULT_URL`] when it is unset.
    pub fn from_env() -> Result<Self> {
        match std::env::var("RABBITMQ_URL") {
            Ok(url) if !url.trim().is_empty() => Self::new(url.trim()),
            _ => Self::new(DEFAULT_URL),
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
    /// tests and for inspection (the trading bus's event history).
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
            Endpoint::Amqp(uri) => redacted_amqp_url(&self.url, uri),
            Endpoint::Memory(Some(name)) => format!("memory://{name}"),
            Endpoint::Memory(None) => "memory:// (private)".to_owned(),
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
            Endpoint::Amqp(_) => redact_text(text, &self.url, &self.redacted_url()),
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
            .field("topology", &self.topology)
            .finish()
    }
}

/// The AMQP URL `url`, which parsed as `uri`, for showing: its password replaced by `***`, its query left
/// out, and the user, port and vhost lapin uses filled in where `url` leaves them out.
fn redacted_amqp_url(url: &str, uri: &AMQPUri) -> String {
    let auth = &uri.authority;
    let vhost = || format!("/{}", utf8_percent_encode(&uri.vhost, NON_ALPHANUMERIC));
    let from_url = || {
        let mut shown = Url::parse(url).ok()?;
        if shown.username().is_empty() {
            shown.set_username(&auth.userinfo.username).ok()?;
        }
        shown.set_password(Some("***")).ok()?;
        if shown.port().is_none() {
            shown.set_port(Some(auth.port)).ok()?;
        }
        if shown.path().is_empty() {
            shown.set_path(&vhost());
        }
        shown.set_query(None);
        shown.set_fragment(None);
        Some(String::from(shown))
    };
    // A URL without a host (`amqp:///vhost`) has no room for a user: show what lapin connects to.
    from_url().unwrap_or_else(|| {
        let user = utf8_percent_encode(&auth.userinfo.username, NON_ALPHANUMERIC);
        format!("{}://{user}:***@{}:{}{}", uri.scheme, auth.host, auth.port, vhost())
    })
}

/// `url`, which may not parse, with anything between the user name and the last `@` replaced by `***`.
fn redact_url(url: &str) -> String {
    let (scheme, rest, separator) = match url.split_once("://") {
        Some((scheme, rest)) => (scheme, rest, "://"),
        // `amqp:user:password@host` does not parse, but shows what was meant.
        None => match url.split_once(':') {
            Some((scheme, rest)) => (scheme, rest, ":"),
            None => return url.to_owned(),
        },
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) if separator == "://" => format!("{scheme}://{user}:***@{host}"),
            _ if separator == "://" => url.to_owned(),
            _ => format!("{scheme}:***@{host}"),
        },
        None => url.to_owned(),
    }
}

/// `text` with `url` (the configured URL) replaced by `shown` wherever it appears whole, when it has a
/// password, and then the password of every AMQP URL in it replaced by `***`.
fn redact_text(text: &str, url: &str, shown: &str) -> String {
    let text = if redact_url(url) != url { text.replace(url, shown) } else { text.to_owned() };
    redact_amqp_passwords(&text)
}

/// `text` with the password of every `amqp://user:password@` or `amqps://user:password@` in it (the scheme in
/// any case) replaced by `***`.
fn redact_amqp_passwords(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut redacted = String::with_capacity(text.len());
    // Up to where `text` has been copied to `redacted`, and from where to look for the next URL.
    let (mut copied, mut from) = (0, 0);
    while let Some(found) = lower[from..].find("amqp") {
        let start = from + found;
        let Some(scheme) = ["amqp://", "amqps://"].into_iter().find(|scheme| lower[start..].starts_with(scheme)) else {
            from = start + "amqp".len();
            continue;
        };
        // The authority ends where the path, query or fragment begins, or the text moves on.
        let authority_start = start + scheme.len();
        let authority_end = text[authority_start..]
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace() || c.is_control())
            .map_or(text.len(), |end| authority_start + end);
        from = authority_end;
        // The userinfo ends at the authority's last `@` (as the `url` crate reads it); the password after the
        // userinfo's first `:`.
        let Some(at) = text[authority_start..authority_end].rfind('@') else { continue };
        let userinfo = &text[authority_start..authority_start + at];
        let Some(colon) = userinfo.find(':') else { continue };
        if colon + 1 == userinfo.len() {
            continue;
        }
        redacted.push_str(&text[copied..authority_start + colon + 1]);
        redacted.push_str("***");
        copied = authority_start + at;
    }
    redacted.push_str(&text[copied..]);
    redacted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_errors_hide_the_password() {
        let config = BusConfig::new("amqp://app:hunter2-secret@127.0.0.1:5672/%2f").unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2-secret"), "{shown}");
        assert!(shown.contains("amqp://app:***@127.0.0.1:5672/"), "{shown}");
        let error = BusConfig::new("amqp://app:hunter2-secret@127.0.0.1:notaport/%2f").unwrap_err();
        assert!(!error.to_string().contains("hunter2-secret"), "{error}");
        assert!(!format!("{error:?}").contains("hunter2-secret"), "{error:?}");
    }

    #[test]
    fn the_redacted_url_keeps_all_but_the_password() {
        for (url, shown) in [
            ("amqps://app:s3cret@broker.example:5671/prod", "amqps://app:***@broker.example:5671/prod"),
            ("amqps://app:s3cret@broker.example/prod", "amqps://app:***@broker.example:5671/prod"),
            ("amqp://app:s3cret@broker.example:5673/%2f?heartbeat=5", "amqp://app:***@broker.example:5673/%2f"),
            ("amqp://app%20x:s3cret@127.0.0.1:5672/", "amqp://app%20x:***@127.0.0.1:5672/"),
            ("amqp://broker.example", "amqp://guest:***@broker.example:5672/%2F"),
            ("amqp:///prod", "amqp://guest:***@localhost:5672/prod"),
        ] {
            assert_eq!(BusConfig::new(url).unwrap().redacted_url(), shown, "{url}");
        }
        assert_eq!(BusConfig::new("memory://x").unwrap().redacted_url(), "memory://x");
    }

    #[test]
    fn only_passwords_in_urls_are_redacted() {
        let config = BusConfig::new("amqp://guest:a@host:5672/%2f").unwrap();
        assert_eq!(
            config.redact("a bad thing happened at amqp://guest:a@host:5672/%2f"),
            "a bad thing happened at amqp://guest:***@host:5672/%2f"
        );
        // Any AMQP URL, the scheme in any case; not an `@` further on in the text.
        assert_eq!(
            config.redact("AMQPS://bob:x@other:5671 then amqp://host:5672 told alice@example: no, (amqp://u:p@h)"),
            "AMQPS://bob:***@other:5671 then amqp://host:5672 told alice@example: no, (amqp://u:***@h)"
        );
        assert_eq!(config.redact("amqp://guest@host amqp://guest:@host"), "amqp://guest@host amqp://guest:@host");
        // Without a password the configured URL is left as it is.
        let config = BusConfig::new("amqp://guest@host").unwrap();
        assert_eq!(config.redact("at amqp://guest@host"), "at amqp://guest@host");
        assert_eq!(BusConfig::in_memory().redact("a: amqp://u:p@h"), "a: amqp://u:p@h");
    }

    #[test]
    fn encoded_and_odd_passwords_are_redacted() {
        let url = "amqp://guest:p%40ss@host:5672/%2f";
        let config = BusConfig::new(url).unwrap();
        let Endpoint::Amqp(uri) = &config.endpoint else { unreachable!() };
        assert_eq!(uri.authority.userinfo.password, "p@ss");
        assert_eq!(config.redacted_url(), "amqp://guest:***@host:5672/%2f");
        // As configured, as lapin prints it, and decoded inside a URL.
        let text = format!("{url} / {uri} / amqp://guest:p@ss@host");
        let redacted = config.redact(&text);
        assert!(!redacted.contains("p%40ss") && !redacted.contains("p@ss"), "{redacted}");
        assert_eq!(redacted.matches("guest:***@host").count(), 3, "{redacted}");

        // A space goes unencoded into the URL: the URL as given is replaced whole.
        let url = "amqp://guest:my pass@host:5672/%2f";
        let config = BusConfig::new(url).unwrap();
        assert_eq!(config.redact(&format!("failed: {url}")), "failed: amqp://guest:***@host:5672/%2f");

        let error = BusConfig::new("amqp:guest:hunter2@host").unwrap_err().to_string();
        assert!(!error.contains("hunter2"), "{error}");
    }
}
