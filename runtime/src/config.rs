//! Bus configuration: where the broker is and the limits Warren works within.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use lapin::uri::AMQPUri;

use crate::error::{Error, Result};

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
#[derive(Clone)]
pub struct BusConfig {
    pub(crate) endpoint: Endpoint,
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
}

impl BusConfig {
    /// Configuration for `url`, with defaults for the rest: `amqp://user:password@host:port/vhost` for
    /// RabbitMQ, or `memory://` (optionally `memory://<name>`) for the in-memory broker, shared by every bus
    /// of this process with the same URL.
    pub fn new(url: &str) -> Result<Self> {
        if let Some(name) = url.strip_prefix("memory://") {
            return Ok(Self::with_endpoint(Endpoint::Memory(Some(name.trim_end_matches('/').to_owned()))));
        }
        let uri = AMQPUri::from_str(url).map_err(|reason| {
            Error::config(format!(
                "invalid broker URL {}: {}; expected amqp://user:password@host:port/vhost",
                redact_url(url),
                redact_in(&reason, url)
            ))
        })?;
        Ok(Self::with_endpoint(Endpoint::Amqp(uri)))
    }

    /// Configuration for a private in-memory broker (see [`crate::Bus::in_memory`]).
    pub fn in_memory() -> Self {
        Self::with_endpoint(Endpoint::Memory(None))
    }

    fn with_endpoint(endpoint: Endpoint) -> Self {
        BusConfig {
            endpoint,
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

    /// The URL with the password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        match &self.endpoint {
            Endpoint::Amqp(uri) => {
                let auth = &uri.authority;
                let vhost = percent_encoding::utf8_percent_encode(&uri.vhost, percent_encoding::NON_ALPHANUMERIC);
                format!("amqp://{}:***@{}:{}/{vhost}", auth.userinfo.username, auth.host, auth.port)
            }
            Endpoint::Memory(Some(name)) => format!("memory://{name}"),
            Endpoint::Memory(None) => "memory:// (private)".to_owned(),
        }
    }

    /// Whether this configuration selects the in-memory broker.
    pub fn is_in_memory(&self) -> bool {
        matches!(self.endpoint, Endpoint::Memory(_))
    }

    /// The broker password, for redacting text that might echo it.
    pub(crate) fn password(&self) -> &str {
        match &self.endpoint {
            Endpoint::Amqp(uri) => &uri.authority.userinfo.password,
            Endpoint::Memory(_) => "",
        }
    }

    /// Replaces every occurrence of the password in `text`.
    pub(crate) fn redact(&self, text: &str) -> String {
        let password = self.password();
        if password.is_empty() { text.to_owned() } else { text.replace(password, "***") }
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
            .finish()
    }
}

/// `url` with anything between `://user:` and `@` replaced by `***`.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

/// Removes the password part of `url` from `text`.
fn redact_in(text: &str, url: &str) -> String {
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password)
        .unwrap_or_default();
    if password.is_empty() { text.to_owned() } else { text.replace(password, "***") }
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
}
