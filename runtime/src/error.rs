//! The runtime's error type: says what failed, where, and what to do.

use std::time::Duration;

/// Everything that can go wrong talking to the broker.
///
/// Messages never contain the broker password (see [`crate::BusConfig`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is unusable (bad URL, zero limits, a pattern no event can match, …).
    #[error("{message}")]
    Config {
        /// What is wrong and how to fix it.
        message: String,
    },
    /// No connection could be made.
    #[error(
        "could not connect to RabbitMQ at {url} ({attempts} attempt(s) over {elapsed:?}): {reason}; {hint}",
        hint = connect_hint(reason)
    )]
    Connect {
        /// The URL tried, password redacted.
        url: String,
        /// How many attempts were made.
        attempts: u32,
        /// How long they took.
        elapsed: Duration,
        /// The last failure.
        reason: String,
    },
    /// A broker operation did not finish within its deadline.
    #[error("{operation} did not complete within {after:?}; {hint}", hint = timeout_hint(operation))]
    Timeout {
        /// What was waited for.
        operation: &'static str,
        /// The deadline.
        after: Duration,
    },
    /// The broker rejected or failed an operation.
    #[error("{operation} failed: {source}")]
    Broker {
        /// What was attempted.
        operation: &'static str,
        /// What the broker, or the connection to it, said.
        #[source]
        source: BrokerError,
    },
    /// A mandatory publish matched no queue; the message was returned, not delivered.
    #[error(
        "message to exchange \"{exchange}\" with routing key \"{routing_key}\" is unroutable: no queue is bound for it (start a subscriber first, or check the routing key)"
    )]
    Unroutable {
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
    },
    /// The exchange does not exist on the broker.
    #[error("exchange \"{exchange}\" does not exist; declare it (publishing a contract event declares its exchange)")]
    ExchangeNotFound {
        /// The exchange.
        exchange: String,
    },
    /// The broker blocked publishing (`connection.blocked`: it is short of memory or disk) and did not unblock
    /// within the publish deadline; the message was not confirmed. See [`crate::Health::Blocked`].
    #[error(
        "RabbitMQ blocked publishing ({reason}) and did not unblock it within {after:?}; the message was not confirmed. The broker has a memory or disk alarm: free memory or disk on it (`rabbitmq-diagnostics check_alarms` shows which), or raise BusConfig::publish_timeout to wait longer"
    )]
    Blocked {
        /// The broker's reason, e.g. `low on memory`.
        reason: String,
        /// The publish deadline that passed.
        after: Duration,
    },
    /// The broker refused responsibility for the message (a negative publisher confirm).
    #[error("the broker nacked the message to exchange \"{exchange}\" with routing key \"{routing_key}\": {reason}")]
    Nacked {
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
        /// Why, as far as Warren knows: the in-memory broker names the full queue; RabbitMQ's nack carries no
        /// reason, so over AMQP this says what usually causes one.
        reason: String,
    },
    /// The encoded message is larger than the configured limit; nothing was sent.
    #[error(
        "message of {size} bytes exceeds the limit of {limit} bytes; nothing was sent (raise BusConfig::max_message_size, or send a reference instead of the payload)"
    )]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A routing-key template's field holds a value that cannot be a routing-key word; nothing was sent.
    #[error(
        "cannot publish {type_name}: its routing key takes field `{field}`, whose value \"{value}\" {problem}; a routing-key word must be non-empty and free of '.', '*' and '#'"
    )]
    RoutingKey {
        /// The event's proto name.
        type_name: &'static str,
        /// The field named in the template.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The message breaks its contract's validation rules; nothing was sent.
    #[error("cannot send {type_name}: {violations}")]
    Invalid {
        /// The message's proto name.
        type_name: &'static str,
        /// The broken rules.
        violations: crate::Violations,
    },
    /// A header the application asked to send cannot be sent (a reserved `x-warren-*` / `warren-*` name, an
    /// empty name, a name over 255 bytes); nothing was sent.
    #[error("cannot send header \"{name}\": {problem}")]
    Header {
        /// The header's name (cut to 255 bytes).
        name: String,
        /// What is wrong with it, and what to do.
        problem: String,
    },
    /// The message could not be encoded in the requested format; nothing was sent.
    #[error("cannot encode {type_name}: {reason}")]
    Encode {
        /// The message's proto name.
        type_name: &'static str,
        /// Why.
        reason: String,
    },
    /// A middleware layer ([`crate::Middleware`]) refused the publish; nothing was sent.
    #[error("refused by middleware \"{layer}\": {reason}")]
    Refused {
        /// The refusing layer's [`crate::Middleware::name`].
        layer: String,
        /// The reason it gave.
        reason: String,
    },
    /// In [`crate::TopologyMode::Verify`], exchanges or queues the bus needs do not exist on the broker (or
    /// a binding could not be made); nothing was declared.
    #[error(
        "{} of the exchanges and queues this bus needs {} missing, and TopologyMode::Verify declares nothing:\n{}\n         create them all from the contracts: `warren topology --vhost <vhost> --group <group>... > definitions.json` \
         (or `cargo xtask topology`), then `rabbitmqctl import_definitions definitions.json`; or let a user with \
         configure permission declare them (TopologyMode::Declare)",
        missing.len(),
        if missing.len() == 1 { "is" } else { "are" },
        missing.iter().map(|m| format!("  - {m}")).collect::<Vec<_>>().join("\n")
    )]
    MissingTopology {
        /// One line per missing exchange, queue or binding: what it is and the command that creates it.
        missing: Vec<String>,
    },
    /// The bus was closed or shut down.
    #[error("the bus is closed")]
    Closed,
    /// The operation's future was dropped before it finished (a `select!` took another branch, a timeout of
    /// the caller's fired): what the middleware layers hear of such a publish. Its outcome is unknown: the
    /// broker may have it.
    #[error("the publish was dropped before its outcome was known")]
    Cancelled,
    /// Some events of a [`crate::Bus::publish_batch`] failed; the others were published.
    #[error("{} of {total} events were not published; first: #{}: {}", failed.len(), failed[0].0, failed[0].1)]
    Batch {
        /// How many events the batch had.
        total: usize,
        /// The position and error of each event that failed (never empty).
        failed: Vec<(usize, Error)>,
    },
}

impl Error {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error::Config { message: message.into() }
    }

    pub(crate) fn broker(operation: &'static str, source: lapin::Error) -> Self {
        Error::Broker { operation, source: BrokerError(source) }
    }

    /// Whether trying again later may succeed (timeouts, lost connections, a broker alarm), as opposed to a bad
    /// request. A broker's refusal that only a change of permissions or topology fixes (403 access refused, 406
    /// precondition failed, 530 not allowed) is not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Broker { source, .. } => !matches!(source.reply_code(), Some(403 | 406 | 530)),
            // A refused login or certificate is refused again until someone changes the settings.
            Error::Connect { reason, .. } => !connect_is_final(reason),
            Error::Timeout { .. } | Error::Blocked { .. } => true,
            _ => false,
        }
    }
}

/// What to do about an operation that timed out.
fn timeout_hint(operation: &str) -> &'static str {
    match operation {
        "waiting for handlers" => "give the stop or shutdown a longer deadline, or make the handlers return sooner",
        _ if operation.starts_with("publish") => {
            "check the broker (`warren health`; a broker under load or an alarm confirms late), or raise \
             BusConfig::publish_timeout (WARREN_PUBLISH_TIMEOUT)"
        }
        _ => "check the broker (`warren health`), or raise BusConfig::operation_timeout (WARREN_OPERATION_TIMEOUT)",
    }
}

/// What to do about a failed connection, from its `reason`: a certificate that did not verify is a TLS
/// setting to fix, not a broker to start.
fn connect_hint(reason: &str) -> &'static str {
    if login_refused(reason) {
        "check the user, password and vhost (RABBITMQ_URL, or RABBITMQ_USER/_PASSWORD/_VHOST) and the user's permissions on that vhost"
    } else if reason.contains("certificate") || reason.contains("tls_") {
        "check the TLS settings (BusConfig::tls_ca / RABBITMQ_CA_FILE, BusConfig::tls_client_identity) and that the URL's host is a name in the broker's certificate"
    } else {
        "start RabbitMQ (e.g. `rabbitmq-server -detached`) or set RABBITMQ_URL"
    }
}

/// Whether a connect failed because the broker refused the login or the vhost: it answered, and will refuse
/// again until the credentials, the vhost or the user's permissions change.
pub(crate) fn login_refused(reason: &str) -> bool {
    // Not "vhost … is down" (NOT_ALLOWED too): that one passes while RabbitMQ restarts the vhost.
    reason.contains("ACCESS_REFUSED") || (reason.contains("NOT_ALLOWED") && reason.contains("not found"))
}

/// Whether a connect failed in a way trying again does not change: the login, the vhost or a certificate
/// refused.
pub(crate) fn connect_is_final(reason: &str) -> bool {
    login_refused(reason) || crate::transport::amqp::tls::is_final(reason)
}

/// What the broker, or the connection to it, said when an operation failed: the source of
/// [`Error::Broker`]. Its text is the broker's reply (`NOT_FOUND - no queue 'orders' in vhost '/'`) or the
/// connection's failure; [`BrokerError::reply_code`] gives the AMQP reply code when the broker refused.
#[derive(Clone)]
pub struct BrokerError(lapin::Error);

impl BrokerError {
    /// The AMQP reply code, when the broker refused the operation: 403 access refused, 404 not found,
    /// 405 resource locked, 406 precondition failed (e.g. a queue redeclared with other arguments),
    /// 320 connection forced, 530 not allowed, ….
    pub fn reply_code(&self) -> Option<u16> {
        match self.0.kind() {
            lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
            _ => None,
        }
    }

    /// The client library's error, for the AMQP transport's own decisions.
    pub(crate) fn lapin(&self) -> &lapin::Error {
        &self.0
    }
}

impl std::fmt::Display for BrokerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Debug for BrokerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerError")
            .field("reply_code", &self.reply_code())
            .field("message", &self.to_string())
            .finish()
    }
}

impl std::error::Error for BrokerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.0)
    }
}

/// `Result` with the runtime's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `self + by`, saturating: a caller may pass [`Duration::MAX`] (or a peer a huge TTL) to mean "no deadline",
/// and `Instant + Duration` panics on overflow. Past what an `Instant` can hold, the result is a century away.
pub(crate) trait Later: Sized {
    /// The instant `by` after this one, or a century after it when that overflows.
    fn later(self, by: Duration) -> Self;
}

/// How far away "never" is: far enough that nothing waits that long, near enough that every platform's
/// `Instant` can hold it.
const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl Later for std::time::Instant {
    fn later(self, by: Duration) -> Self {
        self.checked_add(by).or_else(|| self.checked_add(CENTURY)).unwrap_or(self)
    }
}

impl Later for tokio::time::Instant {
    fn later(self, by: Duration) -> Self {
        self.checked_add(by).or_else(|| self.checked_add(CENTURY)).unwrap_or(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(reason: &str) -> Error {
        Error::Connect {
            url: "amqp://u:***@h:5672/v".into(),
            attempts: 1,
            elapsed: Duration::ZERO,
            reason: reason.into(),
        }
    }

    /// What RabbitMQ says when it refuses a login or a vhost, as lapin shows it: final, with a hint about the
    /// credentials. A vhost that is down (being restarted) and a broker that does not answer are worth retrying.
    #[test]
    fn a_refused_login_or_missing_vhost_is_final_and_says_what_to_check() {
        for reason in [
            "protocol error: AMQP soft error: ACCESS-REFUSED: ACCESS_REFUSED - Login was refused using authentication \
             mechanism PLAIN. For details see the broker logfile.",
            "protocol error: AMQP hard error: NOT-ALLOWED: NOT_ALLOWED - vhost nope not found",
        ] {
            let error = connect(reason);
            assert!(!error.is_transient(), "{reason}");
            assert!(error.to_string().contains("check the user, password and vhost"), "{error}");
        }
        for reason in [
            "protocol error: AMQP hard error: NOT-ALLOWED: NOT_ALLOWED - vhost prod is down",
            "IO error: Connection refused (os error 111)",
        ] {
            let error = connect(reason);
            assert!(error.is_transient(), "{reason}");
            assert!(!error.to_string().contains("check the user"), "{error}");
        }
    }
}
