//! Configuration from environment variables, as the systems Warren replaces set it: `RABBITMQ_URL`, or the
//! FastStream setup's `RABBITMQ_HOST` / `_PORT` / `_USER` / `_PASSWORD` / `_VHOST`, and `WARREN_*` for the
//! timeouts and limits.

use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::{BusConfig, DEFAULT_URL};
use crate::error::{Error, Result};

/// The variables that say where the broker is, other than `RABBITMQ_URL`.
const BROKER_PARTS: [&str; 5] =
    ["RABBITMQ_HOST", "RABBITMQ_PORT", "RABBITMQ_USER", "RABBITMQ_PASSWORD", "RABBITMQ_VHOST"];

/// What a URL's user, password and vhost must percent-encode: everything but RFC 3986's unreserved characters.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The largest message RabbitMQ can be configured to take (its `max_message_size` setting's limit, 512 MiB).
const RABBITMQ_MAX_MESSAGE_SIZE: usize = 512 * 1024 * 1024;

/// The longest duration [`parse_duration`] reads: seven days. Longer is a typo (or a unit forgotten).
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

impl BusConfig {
    /// Configuration from the environment.
    ///
    /// Where the broker is, the first that applies:
    /// 1. `RABBITMQ_URL` (e.g. `amqp://user:password@host:5672/vhost`, several `host:port`s for a cluster);
    /// 2. `RABBITMQ_HOST`, `RABBITMQ_PORT`, `RABBITMQ_USER`, `RABBITMQ_PASSWORD`, `RABBITMQ_VHOST` when any of
    ///    them is set (the FastStream setup's variables), the others defaulting to `127.0.0.1`, `5672`,
    ///    `guest`, `guest` and `/`; `RABBITMQ_HOST` may list several hosts, comma-separated, each with or
    ///    without a port;
    /// 3. [`DEFAULT_URL`].
    ///
    /// Then, each when set: `WARREN_SERVICE_NAME`, `WARREN_CONNECT_TIMEOUT`, `WARREN_OPERATION_TIMEOUT`,
    /// `WARREN_PUBLISH_TIMEOUT`, `WARREN_RECOVERY_TIMEOUT` (durations, as [`crate::parse_duration`] reads
    /// them: `500ms`, `10s`, `2m`), `WARREN_HEARTBEAT` (seconds), `WARREN_PREFETCH` (1–65535) and
    /// `WARREN_MAX_MESSAGE_SIZE` (bytes) and `WARREN_TOPOLOGY` (`declare` or `verify`, see
    /// [`crate::TopologyMode`]). A value that does not parse is an error naming the variable. And
    /// `RABBITMQ_CA_FILE`, as [`BusConfig::tls_ca`] (for `amqps://`).
    ///
    /// `memory://` in `RABBITMQ_URL` selects the in-memory broker. To fall back to it when nothing names a
    /// broker, as the demo does, ask [`BusConfig::broker_in_env`] first.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Whether the environment names a broker: `RABBITMQ_URL` or any of `RABBITMQ_HOST`, `RABBITMQ_PORT`,
    /// `RABBITMQ_USER`, `RABBITMQ_PASSWORD`, `RABBITMQ_VHOST` is set (and not empty).
    pub fn broker_in_env() -> bool {
        broker_named(&|name| std::env::var(name).ok())
    }

    /// This configuration with the environment's settings applied over it: each of the `WARREN_*` variables
    /// [`BusConfig::from_env`] reads, and `RABBITMQ_CA_FILE`, when set. The broker stays this configuration's.
    ///
    /// For a tool with a `--url` flag and defaults of its own, which the environment still overrides:
    ///
    /// ```
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), warren::Error> {
    /// let flag: Option<&str> = Some("amqp://guest:guest@127.0.0.1:5672/%2f");
    /// let config = match flag {
    ///     Some(url) => warren::BusConfig::new(url)?,
    ///     None => warren::BusConfig::from_env()?,
    /// }
    /// .service_name("my-tool")
    /// .connect_timeout(Duration::from_secs(10))
    /// .with_env()?; // WARREN_SERVICE_NAME, WARREN_CONNECT_TIMEOUT, WARREN_TOPOLOGY, … win when set
    /// # let _ = config; Ok(()) }
    /// ```
    pub fn with_env(self) -> Result<Self> {
        self.with_vars(|name| std::env::var(name).ok())
    }

    /// [`BusConfig::from_env`], reading variables through `var`.
    pub(crate) fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let set = |name: &str| var(name).map(|value| value.trim().to_owned()).filter(|value| !value.is_empty());
        let config = match set("RABBITMQ_URL") {
            Some(url) => Self::new(&url).map_err(|error| named("RABBITMQ_URL", error))?,
            None if BROKER_PARTS.iter().any(|name| set(name).is_some()) => {
                // A user or password is taken as written: spaces at either end may be part of it.
                let raw = |name: &str| var(name).filter(|value| !value.trim().is_empty());
                let url = url_from_parts(&set, &raw)?;
                Self::new(&url).map_err(|error| named("RABBITMQ_HOST", error))?
            }
            None => Self::new(DEFAULT_URL)?,
        };
        config.with_vars(var)
    }

    /// [`BusConfig::with_env`], reading variables through `var`.
    fn with_vars(mut self, var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let set = |name: &str| var(name).map(|value| value.trim().to_owned()).filter(|value| !value.is_empty());
        let config = &mut self;
        if let Some(name) = set("WARREN_SERVICE_NAME") {
            config.service_name = name;
        }
        // 0 means something for these two: one connect attempt; health `Failed` at the first failed reconnect.
        for (name, field, least) in [
            ("WARREN_CONNECT_TIMEOUT", &mut config.connect_timeout, Duration::ZERO),
            ("WARREN_OPERATION_TIMEOUT", &mut config.operation_timeout, MIN_TIMEOUT),
            ("WARREN_PUBLISH_TIMEOUT", &mut config.publish_timeout, MIN_TIMEOUT),
            ("WARREN_RECOVERY_TIMEOUT", &mut config.recovery_timeout, Duration::ZERO),
        ] {
            if let Some(value) = set(name) {
                *field = duration(name, &value, least)?;
            }
        }
        if let Some(value) = set("WARREN_TOPOLOGY") {
            config.topology = match value.to_ascii_lowercase().as_str() {
                "declare" => crate::TopologyMode::Declare,
                "verify" => crate::TopologyMode::Verify,
                _ => {
                    return Err(Error::config(format!(
                        "WARREN_TOPOLOGY=\"{}\" is neither declare nor verify",
                        shorten(&value)
                    )));
                }
            };
        }
        if let Some(value) = set("WARREN_HEARTBEAT") {
            config.heartbeat_secs = number(("WARREN_HEARTBEAT", "seconds, 0-65535"), &value)?;
        }
        if let Some(value) = set("WARREN_PREFETCH") {
            let prefetch: u16 = number(("WARREN_PREFETCH", "a count, 1-65535"), &value)?;
            if prefetch == 0 {
                return Err(Error::config("WARREN_PREFETCH=0: a subscriber needs at least 1 (try 256)"));
            }
            config.prefetch = prefetch;
        }
        if let Some(value) = set("WARREN_MAX_MESSAGE_SIZE") {
            let size: usize = number(("WARREN_MAX_MESSAGE_SIZE", "bytes"), &value)?;
            if size == 0 {
                return Err(Error::config("WARREN_MAX_MESSAGE_SIZE=0: no message would fit (try 16777216)"));
            }
            if size > RABBITMQ_MAX_MESSAGE_SIZE {
                return Err(Error::config(format!(
                    "WARREN_MAX_MESSAGE_SIZE={size}: RabbitMQ takes messages of at most {RABBITMQ_MAX_MESSAGE_SIZE} \
                     bytes (the default is 16777216)"
                )));
            }
            config.max_message_size = size;
        }
        if let Some(path) = set("RABBITMQ_CA_FILE") {
            config.tls_ca = Some(path.into());
        }
        Ok(self)
    }
}

fn broker_named(var: &dyn Fn(&str) -> Option<String>) -> bool {
    std::iter::once("RABBITMQ_URL")
        .chain(BROKER_PARTS)
        .any(|name| var(name).is_some_and(|value| !value.trim().is_empty()))
}

/// `amqp://user:password@host:port/vhost` from the `RABBITMQ_*` parts (`set`: trimmed; `raw`: as written,
/// for the credentials), percent-encoded.
fn url_from_parts(set: &dyn Fn(&str) -> Option<String>, raw: &dyn Fn(&str) -> Option<String>) -> Result<String> {
    let port = match set("RABBITMQ_PORT") {
        Some(port) => number::<u16>(("RABBITMQ_PORT", "a port number, 1-65535"), &port)
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| {
                Error::config(format!("RABBITMQ_PORT=\"{}\" is not a port number (1-65535)", shorten(&port)))
            })?,
        None => 5672,
    };
    let hosts = set("RABBITMQ_HOST").unwrap_or_else(|| "127.0.0.1".to_owned());
    let mut listed = Vec::new();
    for host in hosts.split(',') {
        let (host, own_port) = super::addresses::parse(host)
            .map_err(|problem| Error::config(format!("RABBITMQ_HOST: {problem}; expected host or host:port")))?;
        let host = if host.contains(':') { format!("[{host}]") } else { host };
        listed.push(format!("{host}:{}", own_port.unwrap_or(port)));
    }
    let encode = |part: String| utf8_percent_encode(&part, COMPONENT).to_string();
    let user = encode(raw("RABBITMQ_USER").unwrap_or_else(|| "guest".to_owned()));
    let password = encode(raw("RABBITMQ_PASSWORD").unwrap_or_else(|| "guest".to_owned()));
    let vhost = encode(set("RABBITMQ_VHOST").unwrap_or_else(|| "/".to_owned()));
    Ok(format!("amqp://{user}:{password}@{}/{vhost}", listed.join(",")))
}

/// `error` (from parsing the URL made of the environment) saying which variable it came from.
fn named(variable: &str, error: Error) -> Error {
    Error::config(format!("{variable}: {error}"))
}

fn number<T: std::str::FromStr>((name, expected): (&str, &str), value: &str) -> Result<T> {
    value.parse().map_err(|_| Error::config(format!("{name}=\"{}\" is not {expected}", shorten(value))))
}

/// A duration as people write it: `500ms`, `10s`, `2m`, `1h`, or a bare number of seconds; decimals allowed
/// (`1.5s`); at most seven days. The error says what is wrong and how to write it. How Warren's environment
/// variables and command-line tools read durations.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(warren::parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert_eq!(warren::parse_duration("90"), Ok(Duration::from_secs(90)));
/// assert!(warren::parse_duration("10 parsecs").is_err());
/// ```
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("\"{}\" is not a duration: write it as 500ms, 10s, 2m or 1h", shorten(text)))?;
    let seconds = match unit.trim() {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" | "min" => number * 60.0,
        "h" => number * 3600.0,
        unit => {
            return Err(format!("\"{}\" has the unknown unit \"{}\": use ms, s, m or h", shorten(text), shorten(unit)));
        }
    };
    if !(0.0..=MAX_DURATION.as_secs_f64()).contains(&seconds) {
        return Err(format!("\"{}\" is out of range: at most 7 days", shorten(text)));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// The shortest operation or publish timeout: below it every declare or publish would time out at once.
const MIN_TIMEOUT: Duration = Duration::from_millis(100);

/// A `WARREN_*` duration variable's value, at least `least` (given as [`MIN_TIMEOUT`] where shorter is useless).
fn duration(name: &str, value: &str, least: Duration) -> Result<Duration> {
    let duration = parse_duration(value).map_err(|problem| Error::config(format!("{name}={problem}")))?;
    if duration < least {
        return Err(Error::config(format!(
            "{name}=\"{}\" is too short: every wait would time out at once; at least 100ms (try 10s)",
            shorten(value)
        )));
    }
    Ok(duration)
}

/// A value as shown in an error: at most 64 characters.
fn shorten(value: &str) -> String {
    match value.char_indices().nth(64) {
        Some((cut, _)) => format!("{}…", &value[..cut]),
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<BusConfig> {
        BusConfig::from_vars(|name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v).to_owned()))
    }

    #[test]
    fn a_ca_file_is_trusted_for_amqps() {
        let tls = config(&[("RABBITMQ_URL", "amqps://a:b@h/v"), ("RABBITMQ_CA_FILE", " /etc/warren/ca.pem ")]).unwrap();
        assert_eq!(tls.tls_ca.as_deref(), Some(std::path::Path::new("/etc/warren/ca.pem")));
        assert_eq!(tls.redacted_url(), "amqps://a:***@h:5671/v");
        assert_eq!(config(&[("RABBITMQ_CA_FILE", "")]).unwrap().tls_ca, None);
    }

    #[test]
    fn the_url_comes_first_then_the_parts_then_the_default() {
        let both = config(&[("RABBITMQ_URL", "amqp://a:b@h:1/v"), ("RABBITMQ_HOST", "other")]).unwrap();
        assert_eq!(both.redacted_url(), "amqp://a:***@h:1/v");
        let parts = config(&[
            ("RABBITMQ_HOST", "rabbitmq.production.com"),
            ("RABBITMQ_PORT", "5673"),
            ("RABBITMQ_USER", "app_user"),
            ("RABBITMQ_PASSWORD", "secure/pass@word"),
            ("RABBITMQ_VHOST", "/production"),
        ])
        .unwrap();
        assert_eq!(parts.redacted_url(), "amqp://app_user:***@rabbitmq.production.com:5673/%2Fproduction");
        let crate::config::Endpoint::Amqp { uri, .. } = &parts.endpoint else { unreachable!() };
        assert_eq!((uri.authority.userinfo.password.as_str(), uri.vhost.as_str()), ("secure/pass@word", "/production"));
        assert!(!format!("{parts:?}").contains("secure"));
        let spaced = config(&[("RABBITMQ_HOST", "h"), ("RABBITMQ_PASSWORD", " pass phrase ")]).unwrap();
        let crate::config::Endpoint::Amqp { uri, .. } = &spaced.endpoint else { unreachable!() };
        assert_eq!(uri.authority.userinfo.password, " pass phrase ", "a password is taken as written");
        let host_only = config(&[("RABBITMQ_HOST", "h1,h2:5674")]).unwrap();
        assert_eq!(host_only.redacted_url(), "amqp://guest:***@h1:5672,h2:5674/%2F");
        assert_eq!(config(&[]).unwrap().redacted_url(), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(config(&[("RABBITMQ_URL", "  ")]).unwrap().redacted_url(), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert!(config(&[("RABBITMQ_URL", "memory://x")]).unwrap().is_in_memory());
    }

    #[test]
    fn warren_variables_set_the_knobs() {
        let config = config(&[
            ("WARREN_SERVICE_NAME", "billing"),
            ("WARREN_CONNECT_TIMEOUT", "500ms"),
            ("WARREN_OPERATION_TIMEOUT", "3"),
            ("WARREN_PUBLISH_TIMEOUT", "2m"),
            ("WARREN_RECOVERY_TIMEOUT", "45s"),
            ("WARREN_HEARTBEAT", "5"),
            ("WARREN_PREFETCH", "64"),
            ("WARREN_MAX_MESSAGE_SIZE", "1048576"),
            ("WARREN_TOPOLOGY", "Verify"),
        ])
        .unwrap();
        assert_eq!(config.service_name, "billing");
        assert_eq!(config.connect_timeout, Duration::from_millis(500));
        assert_eq!(config.operation_timeout, Duration::from_secs(3));
        assert_eq!(config.publish_timeout, Duration::from_secs(120));
        assert_eq!(config.recovery_timeout, Duration::from_secs(45));
        assert_eq!((config.heartbeat_secs, config.prefetch, config.max_message_size), (5, 64, 1_048_576));
        assert_eq!(config.topology, crate::TopologyMode::Verify);
    }

    #[test]
    fn the_environment_overrides_a_tools_defaults_but_not_its_broker() {
        let vars = [("RABBITMQ_URL", "amqp://a:b@elsewhere/v"), ("WARREN_TOPOLOGY", "verify")];
        let tool = BusConfig::new("amqp://u:p@flag:5672/x").unwrap().service_name("tool");
        let config = tool.with_vars(|name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v).to_owned()));
        let config = config.unwrap();
        assert_eq!(config.redacted_url(), "amqp://u:***@flag:5672/x", "the broker stays the tool's");
        assert_eq!((config.service_name.as_str(), config.topology), ("tool", crate::TopologyMode::Verify));
        let named = config.with_vars(|name| (name == "WARREN_SERVICE_NAME").then(|| "billing".to_owned()));
        assert_eq!(named.unwrap().service_name, "billing");
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (vars, expected) in [
            (&[("RABBITMQ_PORT", "abc")][..], "RABBITMQ_PORT=\"abc\" is not a port number"),
            (&[("RABBITMQ_PORT", "0")], "RABBITMQ_PORT=\"0\""),
            (&[("RABBITMQ_HOST", "h1,,h2")], "RABBITMQ_HOST: an empty address"),
            (&[("RABBITMQ_HOST", "rabbit/prod")], "has '/' in its host"),
            (&[("RABBITMQ_URL", "amqp://u:hunter2@h:x/")], "RABBITMQ_URL: invalid broker URL"),
            (&[("WARREN_PUBLISH_TIMEOUT", "ten")], "WARREN_PUBLISH_TIMEOUT=\"ten\" is not a duration"),
            (&[("WARREN_PUBLISH_TIMEOUT", "10d")], "has the unknown unit \"d\""),
            (&[("WARREN_CONNECT_TIMEOUT", "99999999999")], "out of range: at most 7 days"),
            (&[("WARREN_OPERATION_TIMEOUT", "0")], "WARREN_OPERATION_TIMEOUT=\"0\" is too short"),
            (&[("WARREN_PUBLISH_TIMEOUT", "5ms")], "at least 100ms"),
            (&[("WARREN_PREFETCH", "0")], "WARREN_PREFETCH=0"),
            (&[("WARREN_MAX_MESSAGE_SIZE", "1073741824")], "RabbitMQ takes messages of at most 536870912"),
            (&[("WARREN_PREFETCH", "70000")], "WARREN_PREFETCH=\"70000\" is not a count"),
            (&[("WARREN_HEARTBEAT", "-1")], "WARREN_HEARTBEAT"),
            (&[("WARREN_MAX_MESSAGE_SIZE", "1MB")], "WARREN_MAX_MESSAGE_SIZE=\"1MB\" is not bytes"),
            (&[("WARREN_TOPOLOGY", "maybe")], "WARREN_TOPOLOGY=\"maybe\" is neither declare nor verify"),
        ] {
            let error = config(vars).unwrap_err().to_string();
            assert!(error.contains(expected), "{vars:?}: {error}");
            assert!(!error.contains("hunter2"), "{error}");
        }
        assert!(broker_named(&|name| (name == "RABBITMQ_VHOST").then(|| "/x".to_owned())));
        assert!(!broker_named(&|name| (name == "RABBITMQ_URL").then(|| " ".to_owned())));
    }
}
