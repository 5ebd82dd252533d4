//! Exchange kinds.

/// How an exchange routes messages to the queues bound to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExchangeKind {
    /// The binding key equals the routing key.
    Direct,
    /// Dotted patterns: `*` matches one word, `#` zero or more.
    Topic,
    /// Every bound queue, whatever the key.
    Fanout,
    /// By header values.
    Headers,
}

impl ExchangeKind {
    /// The kind's name in AMQP and in Warren's contract options: `direct`, `topic`, `fanout` or `headers`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Headers => "headers",
        }
    }

    /// Whether routing keys mean anything on this kind of exchange (fanout and headers exchanges ignore them).
    pub fn uses_routing_key(self) -> bool {
        matches!(self, ExchangeKind::Direct | ExchangeKind::Topic)
    }
}
