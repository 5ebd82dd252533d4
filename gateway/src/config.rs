//! What the gateway exposes and to whom: allow-lists of events, tasks, services and streams; bearer tokens
//! per group of routes; path aliases; WebSocket limits. Read from a TOML file (`warren-gateway --config`) or
//! built in code.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use warren_reflect::Catalog;

/// What the gateway exposes and to whom. Nothing is reachable until it is allowed: an empty configuration
/// serves only `/health`, `/ready` and the documents.
///
/// ```toml
/// events = ["gametrade.v1.UserRegistered", "streaming.v1.*"]
/// tasks = ["*"]
/// services = ["at.v1.IntSummator"]
///
/// [[streams]]
/// exchange = "gametrade.events"
/// patterns = ["user.*"]
///
/// [tokens]
/// publish = ["s3cret"]
///
/// [aliases]
/// "/messaging/user-notification" = "streaming.v1.UserNotification"
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// Events that `POST /events/{type}` may publish: full or unique short names, `package.*` for a whole
    /// package, `*` for all.
    pub events: Vec<String>,
    /// Tasks that `POST /tasks/{type}` may enqueue, named as [`GatewayConfig::events`].
    pub tasks: Vec<String>,
    /// Services whose methods `POST /rpc/{Service}/{Method}` may call: services (every method), single
    /// methods as `Service/Method`, `package.*` or `*`.
    pub services: Vec<String>,
    /// Exchanges and patterns the WebSocket may stream.
    pub streams: Vec<StreamRule>,
    /// Bearer tokens per group of routes; a group without tokens is open.
    pub tokens: Tokens,
    /// Extra `POST` paths, each publishing (or enqueueing) one event (or task), e.g.
    /// `"/messaging/user-notification" = "streaming.v1.UserNotification"`. An alias is reachable whether or
    /// not its type is in [`GatewayConfig::events`]; the `publish` tokens apply. The target `health` makes a
    /// `GET` path answering as `/health` (`"/messaging/health" = "health"`).
    pub aliases: BTreeMap<String, String>,
    /// How long a request's body may take to arrive, in milliseconds (default 30,000): a client that trickles
    /// it, or stops sending it, is answered 408 then, and holds neither the request nor a shutdown longer.
    pub body_timeout_ms: Option<u64>,
    /// How long a connection may go without sending a request's whole headers, in milliseconds (default 75,000),
    /// counted from when it opened or the response before was written: then [`crate::serve`] closes it. So an
    /// idle keep-alive connection is closed after this long too: keep it above the idle timeout of a proxy in
    /// front (nginx's upstream keepalive and AWS ALB's are 60 s), or the proxy may reuse a connection the
    /// gateway is closing.
    pub header_timeout_ms: Option<u64>,
    /// WebSocket limits.
    pub websocket: WebSocketConfig,
    /// Closes the WebSockets on shutdown (keep a clone and call [`crate::Shutdown::close`]).
    #[serde(skip)]
    pub shutdown: crate::Shutdown,
    /// The metrics `GET /metrics` answers with: Warren's (register [`crate::Metrics::layer`] with the bus) and
    /// the gateway's own.
    #[cfg(feature = "prometheus")]
    #[serde(skip)]
    pub metrics: Option<crate::Metrics>,
}

/// An exchange the WebSocket may stream, and the binding patterns a client may subscribe with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamRule {
    /// The exchange, as the contracts name it.
    pub exchange: String,
    /// Patterns allowed: a client's pattern must be one of them, or a routing key (no wildcards) one of them
    /// matches; `#` allows any pattern.
    #[serde(default = "everything")]
    pub patterns: Vec<String>,
}

fn everything() -> Vec<String> {
    vec!["#".to_owned()]
}

/// Bearer tokens per group of routes (`Authorization: Bearer <token>`). A group with no tokens is open.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tokens {
    /// `POST /events/…`, `POST /tasks/…`, aliases, and publishing over the WebSocket.
    pub publish: Vec<String>,
    /// `POST /rpc/…`.
    pub call: Vec<String>,
    /// `GET /ws` (subscribing).
    pub stream: Vec<String>,
    /// `GET /catalog`, `/openapi.json`, `/asyncapi.yaml`, `/metrics`.
    pub docs: Vec<String>,
}

impl std::fmt::Debug for Tokens {
    // Tokens are credentials: never printed, only counted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("publish", &self.publish.len())
            .field("call", &self.call.len())
            .field("stream", &self.stream.len())
            .field("docs", &self.docs.len())
            .finish()
    }
}

/// A group of routes that shares its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// Publishing and enqueueing.
    Publish,
    /// RPC calls.
    Call,
    /// WebSocket streams.
    Stream,
    /// The documents and metrics.
    Docs,
}

impl Tokens {
    /// The tokens of `group`.
    pub fn of(&self, group: Group) -> &[String] {
        match group {
            Group::Publish => &self.publish,
            Group::Call => &self.call,
            Group::Stream => &self.stream,
            Group::Docs => &self.docs,
        }
    }

    /// Adds `token` to `group`.
    pub fn add(&mut self, group: Group, token: impl Into<String>) {
        match group {
            Group::Publish => self.publish.push(token.into()),
            Group::Call => self.call.push(token.into()),
            Group::Stream => self.stream.push(token.into()),
            Group::Docs => self.docs.push(token.into()),
        }
    }
}

/// WebSocket limits.
#[derive(Debug, Clone, Copy, Deserialize)]
#[non_exhaustive]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// The most sockets open at once; an upgrade over it is answered 503.
    pub max_connections: usize,
    /// The most subscriptions one socket holds.
    pub max_subscriptions: usize,
    /// Messages buffered for one socket; a socket further behind is closed with reason "slow".
    pub buffer: usize,
    /// How often the gateway pings (milliseconds).
    pub ping_interval_ms: u64,
    /// A socket that sends nothing (not even a pong) for this long is closed (milliseconds).
    pub idle_timeout_ms: u64,
    /// The shortest time between two writes of stream messages to one socket: a message arriving sooner after
    /// the last write waits until this much time has passed since it, and goes out with whatever else came
    /// meanwhile, in one write. A message after a quiet spell goes out at once; answers to the client's own
    /// requests and pings are never held. Zero writes every message as it comes; at most
    /// [`WebSocketConfig::MAX_FLUSH_INTERVAL`]. In TOML a duration: `flush_interval = "20ms"` (`ms` or `s`).
    #[serde(deserialize_with = "flush_interval")]
    pub flush_interval: Duration,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            max_connections: 1_000,
            max_subscriptions: 16,
            buffer: 256,
            ping_interval_ms: 20_000,
            idle_timeout_ms: 60_000,
            flush_interval: Duration::from_millis(20),
        }
    }
}

impl WebSocketConfig {
    /// The longest [`WebSocketConfig::flush_interval`] accepted: one second.
    pub const MAX_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

    /// Reads a [`WebSocketConfig::flush_interval`] as the TOML file and the `--ws-flush-interval` flag write
    /// it (`"5ms"`, `"1s"`, `"0"`), refusing one over [`WebSocketConfig::MAX_FLUSH_INTERVAL`].
    pub fn parse_flush_interval(text: &str) -> Result<Duration, ConfigError> {
        let interval = warren::parse_duration(text)
            .map_err(|problem| ConfigError::Invalid(format!("websocket.flush_interval: {problem}")))?;
        flush_interval_problem(interval).map_or(Ok(interval), |problem| Err(ConfigError::Invalid(problem)))
    }

    /// Whether the limits can work: a `flush_interval` over [`WebSocketConfig::MAX_FLUSH_INTERVAL`] cannot
    /// (it would hold every stream message that long), and is refused with the fix.
    pub fn check(&self) -> Result<(), ConfigError> {
        flush_interval_problem(self.flush_interval).map_or(Ok(()), |problem| Err(ConfigError::Invalid(problem)))
    }

    pub(crate) fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms.max(10))
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms.max(20))
    }
}

/// Why `interval` cannot be the `flush_interval`, naming the setting and the fix.
fn flush_interval_problem(interval: Duration) -> Option<String> {
    (interval > WebSocketConfig::MAX_FLUSH_INTERVAL).then(|| {
        format!(
            "websocket.flush_interval {interval:?} is over the limit of 1s: every stream message could wait that \
             long; set it to at most \"1s\" (a few milliseconds, such as the default \"20ms\", batches writes \
             without a noticeable delay; \"0\" writes every message at once)"
        )
    })
}

fn flush_interval<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    WebSocketConfig::parse_flush_interval(&text).map_err(serde::de::Error::custom)
}

/// A configuration that names what the contracts do not have.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The TOML file does not parse, or has a key the gateway does not know.
    #[error("{path}: {problem}")]
    Toml {
        /// The file.
        path: String,
        /// Where and why: line, column and the parser's message, never the text of the file (a line of it may
        /// hold a token), and for a problem among the tokens not the parser's message either (it may quote one).
        problem: String,
    },
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A name in an allow-list or alias that the contracts do not have.
    #[error("{list}: {source}")]
    Name {
        /// Which list, e.g. `events` or `aliases./messaging/x`.
        list: String,
        /// The lookup's error, with the closest names.
        #[source]
        source: Box<warren_reflect::Error>,
    },
    /// Anything else that cannot work: a bad alias path, a bad stream pattern, a `flush_interval` over 1 s.
    #[error("{0}")]
    Invalid(String),
}

impl GatewayConfig {
    /// [`GatewayConfig::header_timeout_ms`], or its default of 75 s.
    pub fn header_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.header_timeout_ms.unwrap_or(75_000).max(1))
    }

    /// [`GatewayConfig::body_timeout_ms`], or its default of 30 s.
    pub fn body_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.body_timeout_ms.unwrap_or(30_000).max(1))
    }

    /// An empty configuration: nothing allowed, no tokens.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads a TOML configuration.
    pub fn from_toml(text: &str, path: &str) -> Result<Self, ConfigError> {
        toml::from_str(text)
            .map_err(|error| ConfigError::Toml { path: path.to_owned(), problem: toml_problem(text, &error) })
    }

    /// Reads a TOML configuration file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        Self::from_toml(&text, &shown)
    }

    /// Allows every event, task, service and exchange of the contracts (for local development).
    pub fn allow_all(mut self) -> Self {
        self.events = vec!["*".into()];
        self.tasks = vec!["*".into()];
        self.services = vec!["*".into()];
        self
    }

    /// Checks every name against `catalog`, so that a typo fails at start, not as a 404 later, and the
    /// WebSocket limits ([`WebSocketConfig::check`]).
    pub fn check(&self, catalog: &Catalog) -> Result<(), ConfigError> {
        self.websocket.check()?;
        let name =
            |list: &'static str| move |source| ConfigError::Name { list: list.to_owned(), source: Box::new(source) };
        for entry in self.events.iter().filter(|e| !is_wildcard(e)) {
            catalog.event(entry).map_err(name("events"))?;
        }
        for entry in self.tasks.iter().filter(|e| !is_wildcard(e)) {
            catalog.task(entry).map_err(name("tasks"))?;
        }
        for entry in self.services.iter().filter(|e| !is_wildcard(e)) {
            if entry.contains('/') {
                catalog.method(entry).map_err(name("services"))?;
            } else {
                catalog.service(entry).map_err(name("services"))?;
            }
        }
        for stream in &self.streams {
            catalog.exchange(&stream.exchange).map_err(name("streams"))?;
            for pattern in &stream.patterns {
                if let Some(problem) = warren::topic::pattern_problem(pattern) {
                    return Err(ConfigError::Invalid(format!("streams: a pattern of {}: {problem}", stream.exchange)));
                }
            }
        }
        for (path, target) in &self.aliases {
            crate::routes::alias_path_problem(path)
                .map_or(Ok(()), |problem| Err(ConfigError::Invalid(format!("aliases: path {path:?} {problem}"))))?;
            if target == "health" {
                continue;
            }
            // An event's suggestions when it is neither: aliases mostly name events.
            let found = catalog.event(target).map(drop).or_else(|e| catalog.task(target).map(drop).map_err(|_| e));
            found.map_err(|source| ConfigError::Name { list: format!("aliases.{path}"), source: Box::new(source) })?;
        }
        Ok(())
    }

    /// Whether any group that has something to reach has no tokens: binding a public address then needs an
    /// explicit decision.
    pub fn has_open_group(&self) -> bool {
        !self.open_groups().is_empty()
    }

    /// The groups that have something to reach and no tokens. `docs` always has: the catalog, the
    /// dead-letter queues' depths and the metrics.
    pub fn open_groups(&self) -> Vec<Group> {
        let publishes =
            !self.events.is_empty() || !self.tasks.is_empty() || self.aliases.values().any(|target| target != "health");
        [
            (Group::Publish, publishes),
            (Group::Call, !self.services.is_empty()),
            (Group::Stream, !self.streams.is_empty()),
            (Group::Docs, true),
        ]
        .into_iter()
        .filter(|(group, reachable)| *reachable && self.tokens.of(*group).is_empty())
        .map(|(group, _)| group)
        .collect()
    }
}

impl Group {
    /// The group's name, as `--token <group>=…` and `[tokens]` write it.
    pub fn name(self) -> &'static str {
        match self {
            Group::Publish => "publish",
            Group::Call => "call",
            Group::Stream => "stream",
            Group::Docs => "docs",
        }
    }
}

/// Where a TOML error is and what it says, told without quoting the file: `line L, column C: message`.
fn toml_problem(text: &str, error: &toml::de::Error) -> String {
    let Some(at) = error.span().map(|span| span.start.min(text.len())) else {
        return crate::routes::shorten(error.message(), 400);
    };
    let before = text.get(..at).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |start| start.chars().count()) + 1;
    // In `[tokens]` (or at a `tokens…` key): the message may quote the value, and the value may be a token.
    let this_line = before.rsplit('\n').next().unwrap_or_default().trim_start();
    // The table's header as TOML reads it: `[ tokens ]  # prod` is `[tokens]`.
    let header = |line: &str| line.split('#').next().unwrap_or_default().split_whitespace().collect::<String>();
    let section = before.lines().rev().map(str::trim).find(|l| l.starts_with('[')).map(header);
    let message = if this_line.starts_with("tokens") || section.as_deref() == Some("[tokens]") {
        "tokens are lists of strings by group: publish = [\"…\"], call, stream or docs (the value is not shown: it \
         may be a token)"
            .to_owned()
    } else {
        crate::routes::shorten(error.message(), 400)
    };
    format!("line {line}, column {column}: {message}")
}

fn is_wildcard(entry: &str) -> bool {
    entry == "*" || entry.ends_with(".*")
}

/// Whether `full_name` is allowed by one of `entries` (full names, unique short names, `package.*`, `*`).
pub(crate) fn listed(entries: &[String], full_name: &str, resolve: impl Fn(&str) -> Option<String>) -> bool {
    entries.iter().any(|entry| {
        if entry == "*" {
            return true;
        }
        if let Some(package) = entry.strip_suffix(".*") {
            return full_name.strip_prefix(package).is_some_and(|rest| rest.starts_with('.'));
        }
        entry == full_name || resolve(entry).is_some_and(|resolved| resolved == full_name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_reads() {
        let text = r#"
            events = ["gametrade.v1.UserRegistered", "streaming.v1.*"]
            tasks = ["*"]
            services = ["at.v1.IntSummator"]
            [[streams]]
            exchange = "gametrade.events"
            patterns = ["user.*"]
            [tokens]
            publish = ["s3cret"]
            [aliases]
            "/messaging/user-notification" = "streaming.v1.UserNotification"
        "#;
        let config = GatewayConfig::from_toml(text, "gateway.toml").unwrap();
        let catalog = Catalog::from_descriptor_set(warren_contracts::FILE_DESCRIPTOR_SET).unwrap();
        config.check(&catalog).unwrap();
        assert!(!format!("{config:?}").contains("s3cret"), "tokens are never printed");
        assert!(config.has_open_group(), "services and streams have no tokens");
        assert_eq!(config.open_groups(), [Group::Call, Group::Stream, Group::Docs]);
        let mut closed = config.clone();
        for group in [Group::Call, Group::Stream, Group::Docs] {
            closed.tokens.add(group, "t");
        }
        assert!(!closed.has_open_group(), "every group that has something to reach has a token");
        assert!(listed(&config.events, "streaming.v1.SystemEvent", |_| None));
        assert!(!listed(&config.events, "gametrade.v1.UserActivated", |_| None));
    }

    #[test]
    fn a_toml_error_says_where_without_quoting_a_token() {
        for text in [
            "events = [\"*\"]\n[tokens]\npublish = \"s3cret\"\n",
            "tokens.publish = \"s3cret\"\n",
            "[ tokens ]  # prod\npublish = \"s3cret\"\n",
        ] {
            let error = GatewayConfig::from_toml(text, "gateway.toml").unwrap_err().to_string();
            assert!(!error.contains("s3cret"), "{error}");
            assert!(error.starts_with("gateway.toml: line ") && error.contains("lists of strings"), "{error}");
        }
        let error = GatewayConfig::from_toml("events = [\"*\"]\nbody_timeout_ms = \"soon\"\n", "g.toml").unwrap_err();
        assert!(error.to_string().starts_with("g.toml: line 2, column 19: "), "{error}");
    }

    #[test]
    fn the_configuration_in_docs_gateway_md_reads() {
        let page = include_str!("../../docs/gateway.md");
        let toml = page.split("```toml\n").nth(1).and_then(|rest| rest.split("```").next()).expect("a TOML example");
        let config = GatewayConfig::from_toml(toml, "docs/gateway.md").unwrap();
        let catalog = Catalog::from_descriptor_set(warren_contracts::FILE_DESCRIPTOR_SET).unwrap();
        config.check(&catalog).unwrap();
        assert_eq!(config.websocket.max_connections, WebSocketConfig::default().max_connections);
        assert_eq!(config.aliases["/messaging/health"], "health");
    }

    #[test]
    fn a_flush_interval_over_a_second_is_refused_with_the_fix() {
        let read = |value: &str| {
            GatewayConfig::from_toml(&format!("[websocket]\nflush_interval = {value:?}\n"), "g.toml")
                .map(|config| config.websocket.flush_interval)
        };
        assert_eq!(read("5ms").unwrap(), Duration::from_millis(5));
        assert_eq!(read("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(read("0").unwrap(), Duration::ZERO);
        assert_eq!(WebSocketConfig::default().flush_interval, Duration::from_millis(20));
        for over in ["2s", "1001ms"] {
            let error = read(over).unwrap_err().to_string();
            assert!(error.contains("websocket.flush_interval") && error.contains("over the limit of 1s"), "{error}");
            assert!(error.contains("set it to at most \"1s\""), "{error}");
        }
        let error = read("soon").unwrap_err().to_string();
        assert!(
            error.contains("websocket.flush_interval") && error.contains("is not a duration: write it as 500ms"),
            "{error}"
        );
        // Set in code, it is refused by `check`, as the binary calls it at start.
        let mut config = GatewayConfig::new();
        config.websocket.flush_interval = Duration::from_secs(2);
        let catalog = Catalog::from_descriptor_set(warren_contracts::FILE_DESCRIPTOR_SET).unwrap();
        let error = config.check(&catalog).unwrap_err().to_string();
        assert!(error.contains("websocket.flush_interval 2s is over the limit of 1s"), "{error}");
    }

    #[test]
    fn typos_fail_at_start_with_the_closest_name() {
        let catalog = Catalog::from_descriptor_set(warren_contracts::FILE_DESCRIPTOR_SET).unwrap();
        let config = GatewayConfig::from_toml(r#"events = ["UserRegisterd"]"#, "g.toml").unwrap();
        let error = config.check(&catalog).unwrap_err().to_string();
        assert!(error.contains("did you mean gametrade.v1.UserRegistered"), "{error}");
        let unknown = GatewayConfig::from_toml(r#"event = ["UserRegistered"]"#, "g.toml").unwrap_err();
        assert!(unknown.to_string().contains("unknown field"), "{unknown}");
    }
}
