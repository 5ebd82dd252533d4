//! The queues Warren declares: their names and their settings.

use std::fmt;

/// RabbitMQ's largest TTL, expiry or delivery limit: it reads them as signed 32-bit integers.
pub const MAX_TTL_MS: u32 = i32::MAX as u32;

/// The highest AMQP priority Warren uses (LOW..CRITICAL are 0..3); prioritized queues are declared with this
/// `x-max-priority`.
pub const MAX_PRIORITY: u8 = 3;

/// How long a temporary queue (and its dead-letter queue) lives unused, in milliseconds.
pub const TEMPORARY_QUEUE_EXPIRY_MS: u32 = 60_000;

/// How many deliveries a quorum queue allows beyond the retry policy's attempts before the broker itself
/// dead-letters a message (one that keeps crashing its consumer, say).
pub const DELIVERY_LIMIT_MARGIN: u32 = 2;

/// AMQP's limit on an exchange name, a queue name or a routing key (a "short string"), in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// The longest name of a queue Warren consumes: room is left for its delay queues' `.retry.<ms>`.
pub const MAX_QUEUE_NAME_LEN: usize = MAX_NAME_LEN - ".retry.2147483647".len();

/// What is wrong with `name` as an AMQP name (`what`: "queue", "exchange", "routing key", …) of at most `max`
/// bytes, if anything: a message naming it (cut short), its length and the limit.
pub fn name_problem(what: &str, name: &str, max: usize) -> Option<String> {
    if name.len() <= max {
        return None;
    }
    let mut end = 40;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    Some(format!(
        "{what} \"{}…\" is {} bytes, above the {max} AMQP allows{}; use a shorter one",
        &name[..end],
        name.len(),
        if max < MAX_NAME_LEN { " (with room for its delay queues' names)" } else { "" }
    ))
}

/// The `x-overflow` Warren declares limited queues with: a full queue refuses new messages.
pub const REJECT_PUBLISH: &str = "reject-publish";

/// The queue RPC servers announce themselves in (Warren's live registry): a plain durable queue, declared by
/// every server and by whoever lists the servers, and part of the definitions Warren writes.
pub const REGISTRY_QUEUE: &str = "warren.registry";

/// The dead-letter queue of `queue`: `<queue>.dlq`.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dlq")
}

/// The delay queue that holds messages of `queue` for `delay_ms` before they return to it:
/// `<queue>.retry.<ms>`.
pub fn retry_queue(queue: &str, delay_ms: u32) -> String {
    format!("{queue}.retry.{delay_ms}")
}

/// Whether `name` is one of Warren's side queues: a dead-letter queue (`<queue>.dlq`) or a delay queue
/// (`<queue>.retry.<ms>`), of any queue.
pub fn is_side_queue(name: &str) -> bool {
    if name.ends_with(".dlq") {
        return true;
    }
    name.rsplit_once(".retry.").is_some_and(|(queue, _)| is_retry_queue(queue, name))
}

/// Whether `name` is one of the delay queues of `queue` (`<queue>.retry.<ms>`).
pub fn is_retry_queue(queue: &str, name: &str) -> bool {
    name.strip_prefix(queue)
        .and_then(|rest| rest.strip_prefix(".retry."))
        .is_some_and(|ms| !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()))
}

/// How Warren declares a queue: its flags and its `x-` arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct QueueSettings {
    /// Survives broker restarts.
    pub durable: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Where rejected and expired messages go: (exchange, routing key).
    pub dead_letter: Option<(String, String)>,
    /// Messages expire this many milliseconds after entering the queue.
    pub message_ttl: Option<u32>,
    /// The queue is deleted after this many milliseconds unused.
    pub expires: Option<u32>,
    /// Priorities 0..=max are honoured.
    pub max_priority: Option<u8>,
    /// A replicated quorum queue.
    pub quorum: bool,
    /// A message returned to the queue more often than this is dead-lettered.
    pub delivery_limit: Option<u32>,
    /// How much the queue holds; when full, the broker refuses new messages (`x-overflow` `reject-publish`).
    pub limit: Option<QueueLimit>,
}

/// A bound on what a queue holds: `x-max-length` (ready messages) and `x-max-length-bytes` (their bodies'
/// bytes), with `x-overflow` `reject-publish`. A message that would not fit is refused: the broker nacks the
/// publish (the publisher sees a negative confirm) and what is already queued stays. Warren never uses
/// RabbitMQ's default `drop-head`, which silently drops (or dead-letters) the oldest messages of a business
/// queue, nor `reject-publish-dlx`, which quorum queues do not support and which would dead-letter a copy of a
/// message its publisher is told was refused (and may send again).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct QueueLimit {
    /// The most messages the queue holds ready (`x-max-length`).
    pub max_messages: Option<u32>,
    /// The most bytes of message bodies the queue holds ready (`x-max-length-bytes`).
    pub max_bytes: Option<u32>,
}

impl QueueLimit {
    /// At most `max_messages` messages and `max_bytes` bytes ready; `None` leaves that side unbounded.
    pub const fn new(max_messages: Option<u32>, max_bytes: Option<u32>) -> Self {
        QueueLimit { max_messages, max_bytes }
    }

    /// At most `max` messages ready.
    pub fn messages(max: u32) -> Self {
        QueueLimit { max_messages: Some(max), max_bytes: None }
    }

    /// At most `max` bytes of message bodies ready.
    pub fn bytes(max: u32) -> Self {
        QueueLimit { max_messages: None, max_bytes: Some(max) }
    }

    /// Also at most `max` messages ready.
    pub fn with_messages(mut self, max: u32) -> Self {
        self.max_messages = Some(max);
        self
    }

    /// Also at most `max` bytes of message bodies ready.
    pub fn with_bytes(mut self, max: u32) -> Self {
        self.max_bytes = Some(max);
        self
    }

    /// Whether a queue holding `messages` ready messages of `bytes` body bytes in all has room for one more
    /// of `body` bytes: a classic queue's rule on RabbitMQ, where the message must fit whole (quorum queues
    /// refuse only once the limit is reached, so their last message may go beyond the bytes limit).
    pub fn has_room(&self, messages: usize, bytes: usize, body: usize) -> bool {
        let fits = |after: usize, max: Option<u32>| max.is_none_or(|max| after <= max as usize);
        fits(messages.saturating_add(1), self.max_messages) && fits(bytes.saturating_add(body), self.max_bytes)
    }

    /// The strictest of two limits: the smaller bound of each kind that either sets.
    pub fn strictest(self, other: QueueLimit) -> QueueLimit {
        let min = |a: Option<u32>, b: Option<u32>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        QueueLimit {
            max_messages: min(self.max_messages, other.max_messages),
            max_bytes: min(self.max_bytes, other.max_bytes),
        }
    }
}

impl fmt::Display for QueueLimit {
    /// E.g. `at most 1000 messages and 1048576 bytes`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.max_messages, self.max_bytes) {
            (Some(messages), Some(bytes)) => write!(f, "at most {messages} messages and {bytes} bytes"),
            (Some(messages), None) => write!(f, "at most {messages} messages"),
            (None, Some(bytes)) => write!(f, "at most {bytes} bytes"),
            (None, None) => write!(f, "no limit"),
        }
    }
}

impl QueueSettings {
    /// A plain queue (a dead-letter queue, an RPC queue): durable, or if `temporary`, auto-deleted and
    /// expiring after [`TEMPORARY_QUEUE_EXPIRY_MS`] unused.
    pub fn plain(temporary: bool) -> Self {
        if temporary {
            QueueSettings { auto_delete: true, expires: Some(TEMPORARY_QUEUE_EXPIRY_MS), ..QueueSettings::default() }
        } else {
            QueueSettings { durable: true, ..QueueSettings::default() }
        }
    }

    /// An RPC service's request queue: durable, and a quorum queue when the contract asks for one (requests
    /// carry their own expiry, the caller's deadline, so it needs no delivery limit or dead-letter queue).
    pub fn requests(quorum: bool) -> Self {
        QueueSettings { quorum, ..QueueSettings::plain(false) }
    }

    /// A queue that subscribers or workers consume: rejected messages go to [`dead_letter_queue`] through the
    /// default exchange; a priority queue if `prioritized`.
    ///
    /// `quorum_attempts` (the retry policy's attempts, for a contract that asks for a quorum queue) makes it a
    /// quorum queue with `x-delivery-limit` a little above the policy ([`DELIVERY_LIMIT_MARGIN`]), so that a
    /// message that keeps crashing its consumer is dead-lettered by the broker instead of looping. Temporary
    /// queues are never quorum queues (RabbitMQ's cannot be auto-delete).
    pub fn consumer(queue: &str, temporary: bool, prioritized: bool, quorum_attempts: Option<u32>) -> Self {
        let quorum_attempts = quorum_attempts.filter(|_| !temporary);
        QueueSettings {
            dead_letter: Some((String::new(), dead_letter_queue(queue))),
            max_priority: prioritized.then_some(MAX_PRIORITY),
            quorum: quorum_attempts.is_some(),
            delivery_limit: quorum_attempts.map(|attempts| attempts.saturating_add(DELIVERY_LIMIT_MARGIN)),
            ..QueueSettings::plain(temporary)
        }
    }

    /// The dead-letter queue of a queue declared with `consumer`: durable (or temporary, as it is), and a quorum
    /// queue when `consumer` is one. A classic queue lives on the node that declared it and cannot be declared
    /// again on another while that node is down; a quorum consumer queue's side queues must be on every node
    /// it is, or a subscriber that moved to another node could not start there.
    pub fn dead_letter(consumer: &QueueSettings) -> Self {
        QueueSettings { quorum: consumer.quorum, ..QueueSettings::plain(consumer.auto_delete) }
    }

    /// These settings with `limit` (see [`QueueLimit`]); `None` leaves the queue unbounded.
    pub fn with_limit(mut self, limit: Option<QueueLimit>) -> Self {
        self.limit = limit;
        self
    }

    /// The delay queue [`retry_queue`]`(queue, delay_ms)`: each message waits `delay_ms` there, then the broker
    /// dead-letters it back into `queue` through the default exchange. A quorum queue when `quorum` (the
    /// consumer queue is one; see [`QueueSettings::dead_letter`]) and not `temporary`.
    pub fn retry_delay(queue: &str, delay_ms: u32, temporary: bool, quorum: bool) -> Self {
        QueueSettings {
            message_ttl: Some(delay_ms),
            dead_letter: Some((String::new(), queue.to_owned())),
            quorum: quorum && !temporary,
            ..QueueSettings::plain(temporary)
        }
    }

    /// The `x-` arguments these settings are declared with, in a fixed order.
    pub fn arguments(&self) -> Vec<(&'static str, Argument)> {
        let mut arguments = Vec::new();
        if let Some((exchange, routing_key)) = &self.dead_letter {
            arguments.push(("x-dead-letter-exchange", Argument::Str(exchange.clone())));
            arguments.push(("x-dead-letter-routing-key", Argument::Str(routing_key.clone())));
        }
        if let Some(ttl) = self.message_ttl {
            arguments.push(("x-message-ttl", Argument::Int(i64::from(ttl))));
        }
        if let Some(expires) = self.expires {
            arguments.push(("x-expires", Argument::Int(i64::from(expires))));
        }
        if let Some(max) = self.max_priority {
            arguments.push(("x-max-priority", Argument::Int(i64::from(max))));
        }
        if self.quorum {
            arguments.push(("x-queue-type", Argument::Str("quorum".to_owned())));
        }
        if let Some(limit) = self.delivery_limit {
            arguments.push(("x-delivery-limit", Argument::Int(i64::from(limit))));
        }
        if let Some(limit) = self.limit {
            if let Some(max) = limit.max_messages {
                arguments.push(("x-max-length", Argument::Int(i64::from(max))));
            }
            if let Some(max) = limit.max_bytes {
                arguments.push(("x-max-length-bytes", Argument::Int(i64::from(max))));
            }
            arguments.push(("x-overflow", Argument::Str(REJECT_PUBLISH.to_owned())));
        }
        arguments
    }

    /// Refuses a TTL, expiry, delivery limit or length limit RabbitMQ cannot take ([`MAX_TTL_MS`]): sent as a
    /// signed 32-bit integer, a larger value would wrap negative; and a length limit of 0, which would refuse
    /// every message. The error names the queue, the argument and the limit.
    pub fn check(&self, queue: &str) -> Result<(), String> {
        let limit = self.limit.unwrap_or_default();
        for (argument, value) in [("x-max-length", limit.max_messages), ("x-max-length-bytes", limit.max_bytes)] {
            if value == Some(0) {
                return Err(format!(
                    "queue \"{queue}\": {argument} of 0 would refuse every message; use at least 1, or no limit"
                ));
            }
        }
        let limits = [
            ("x-message-ttl", self.message_ttl),
            ("x-expires", self.expires),
            ("x-delivery-limit", self.delivery_limit),
            ("x-max-length", limit.max_messages),
            ("x-max-length-bytes", limit.max_bytes),
        ];
        for (argument, value) in limits {
            if let Some(value) = value.filter(|v| *v > MAX_TTL_MS) {
                return Err(format!(
                    "queue \"{queue}\": {argument} of {value} is above RabbitMQ's limit of {MAX_TTL_MS} (2^31 - 1); use a smaller value"
                ));
            }
        }
        Ok(())
    }
}

/// The value of a queue's `x-` argument.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Argument {
    /// A number, e.g. `x-max-priority` 3.
    Int(i64),
    /// Text, e.g. `x-queue-type` `quorum`.
    Str(String),
}

impl fmt::Display for Argument {
    /// A number as is, text quoted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Argument::Int(value) => write!(f, "{value}"),
            Argument::Str(value) => write!(f, "{value:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumer_queue_dead_letters_and_a_quorum_one_has_a_delivery_limit() {
        let queue = QueueSettings::consumer("g.orders", false, true, Some(5));
        assert_eq!(
            queue.arguments(),
            [
                ("x-dead-letter-exchange", Argument::Str(String::new())),
                ("x-dead-letter-routing-key", Argument::Str("g.orders.dlq".to_owned())),
                ("x-max-priority", Argument::Int(3)),
                ("x-queue-type", Argument::Str("quorum".to_owned())),
                ("x-delivery-limit", Argument::Int(7)),
            ]
        );
        assert!(queue.durable && !queue.auto_delete);
        let temporary = QueueSettings::consumer("g.orders", true, false, Some(5));
        assert!(!temporary.quorum && temporary.delivery_limit.is_none(), "never a temporary quorum queue");
        assert_eq!(temporary.expires, Some(TEMPORARY_QUEUE_EXPIRY_MS));
    }

    #[test]
    fn retry_queues_are_named_by_their_delay_and_recognized() {
        assert_eq!(retry_queue("g.orders", 1000), "g.orders.retry.1000");
        assert!(is_retry_queue("g.orders", "g.orders.retry.1000"));
        for other in ["g.orders", "g.orders.dlq", "g.orders.retry.", "g.orders.retry.1s", "g.ordersx.retry.1"] {
            assert!(!is_retry_queue("g.orders", other), "{other}");
        }
        let delay = QueueSettings::retry_delay("g.orders", 1000, false, false);
        assert_eq!(delay.dead_letter, Some((String::new(), "g.orders".to_owned())));
        assert_eq!(delay.message_ttl, Some(1000));
    }

    #[test]
    fn names_longer_than_amqp_carries_are_named_with_their_length() {
        assert_eq!(name_problem("queue", &"q".repeat(MAX_NAME_LEN), MAX_NAME_LEN), None);
        let problem = name_problem("routing key", &"é".repeat(200), MAX_NAME_LEN).unwrap();
        assert!(problem.starts_with("routing key \"éééé") && problem.contains("400 bytes"), "{problem}");
        let longest_retry = retry_queue(&"q".repeat(MAX_QUEUE_NAME_LEN), u32::try_from(i32::MAX).unwrap());
        assert_eq!(longest_retry.len(), MAX_NAME_LEN, "a consumer queue's delay queues fit");
    }

    #[test]
    fn a_limited_queue_rejects_publishes_and_says_so_in_its_arguments() {
        let limit = QueueLimit::messages(10).with_bytes(4096);
        let queue = QueueSettings::consumer("g.orders", false, false, None).with_limit(Some(limit));
        let arguments = queue.arguments();
        assert_eq!(
            arguments[2..],
            [
                ("x-max-length", Argument::Int(10)),
                ("x-max-length-bytes", Argument::Int(4096)),
                ("x-overflow", Argument::Str("reject-publish".to_owned())),
            ]
        );
        assert!(limit.has_room(9, 4000, 96) && !limit.has_room(10, 0, 0) && !limit.has_room(0, 4000, 97));
        assert!(!QueueLimit::bytes(10).has_room(0, 0, 11), "a message bigger than the limit never fits");
        assert_eq!(
            QueueLimit::messages(5).strictest(QueueLimit::messages(3).with_bytes(9)),
            QueueLimit::messages(3).with_bytes(9)
        );
        assert_eq!(limit.to_string(), "at most 10 messages and 4096 bytes");
        let empty = QueueSettings::plain(false).with_limit(Some(QueueLimit::messages(0)));
        assert!(empty.check("q").unwrap_err().contains("x-max-length of 0"));
        let huge = QueueSettings::plain(false).with_limit(Some(QueueLimit::bytes(u32::MAX)));
        assert!(huge.check("q").unwrap_err().contains("x-max-length-bytes of 4294967295"));
    }

    #[test]
    fn limits_above_i32_are_refused_by_name() {
        let fits = QueueSettings { message_ttl: Some(MAX_TTL_MS), expires: Some(60_000), ..Default::default() };
        assert_eq!(fits.check("q"), Ok(()));
        for (too_big, argument) in [
            (QueueSettings { message_ttl: Some(u32::MAX), ..Default::default() }, "x-message-ttl"),
            (QueueSettings { expires: Some(1 << 31), ..Default::default() }, "x-expires"),
            (QueueSettings { delivery_limit: Some(u32::MAX), ..Default::default() }, "x-delivery-limit"),
        ] {
            let problem = too_big.check("q").unwrap_err();
            assert!(problem.contains(argument) && problem.contains("2147483647"), "{problem}");
        }
    }
}
