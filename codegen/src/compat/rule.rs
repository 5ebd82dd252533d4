//! The compatibility rules: their names, what each protects, and which consumers it protects.

use std::fmt;
use std::str::FromStr;

/// Which consumers a rule protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category {
    /// Readers of the protobuf binary encoding, and code generated from the contracts.
    Wire,
    /// Readers of the protobuf JSON mapping, which names fields and enum values.
    Json,
    /// Senders whose messages receivers check against the fields' validation rules.
    Validation,
    /// The broker topology: exchanges, routing keys and queues that running services declared.
    Amqp,
}

impl Category {
    /// `wire`, `json`, `validation` or `amqp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Wire => "wire",
            Category::Json => "json",
            Category::Validation => "validation",
            Category::Amqp => "amqp",
        }
    }
}

/// One breaking-change rule of `cargo xtask check-compat`.
///
/// Its [name](Rule::name) is what reports print, what `--allow` takes and what a `warren:allow` marker names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Rule {
    /// A field number now carries a field with another name and type, or a field that moved there.
    FieldNumberReused,
    /// A field kept its number and name but its type changed to one that decodes differently.
    FieldTypeChanged,
    /// A field was removed without reserving its number and name.
    FieldRemoved,
    /// A field changed between singular, `optional`, `repeated`, map, `required` or a oneof.
    FieldLabelChanged,
    /// An enum value was removed without reserving its number and name.
    EnumValueRemoved,
    /// An enum value name now has another number.
    EnumValueRenumbered,
    /// A message or enum that a field, an rpc, an event or a task used is gone.
    TypeRemoved,
    /// An rpc was removed from a service (or the service was removed).
    MethodRemoved,
    /// An rpc's request or response type changed.
    MethodTypeChanged,
    /// An event or task is encoded in another format by default (protobuf ↔ JSON).
    WireFormatChanged,
    /// A field kept its number but has a new name.
    FieldRenamed,
    /// An enum value kept its number but has a new name.
    EnumValueRenamed,
    /// A field's validation rules reject messages they accepted: a new `required`, `defined` or bound, a raised
    /// minimum or a lowered maximum, or a new field whose rules reject its default value.
    RulesTightened,
    /// An event is published to another exchange.
    EventExchangeChanged,
    /// An exchange's kind (direct, topic, fanout, headers) changed.
    ExchangeKindChanged,
    /// An exchange's `durable` or `auto_delete` flag changed.
    ExchangeDurabilityChanged,
    /// An event is published with another routing key.
    RoutingKeyChanged,
    /// A subscriber or work queue's declared arguments (priority, queue type, delivery limit, dead-lettering,
    /// durability) changed.
    QueueArgumentsChanged,
    /// An RPC service consumes another queue.
    RpcQueueRenamed,
    /// A task is put on another work queue.
    TaskQueueRenamed,
    /// A message that stays is no longer an event (its `(warren.event)` option was dropped).
    EventRemoved,
    /// A message that stays is no longer a task (its `(warren.task)` option was dropped).
    TaskRemoved,
}

impl Rule {
    /// Every rule, in the order reports and docs list them.
    pub const ALL: &'static [Rule] = &[
        Rule::FieldNumberReused,
        Rule::FieldTypeChanged,
        Rule::FieldRemoved,
        Rule::FieldLabelChanged,
        Rule::EnumValueRemoved,
        Rule::EnumValueRenumbered,
        Rule::TypeRemoved,
        Rule::MethodRemoved,
        Rule::MethodTypeChanged,
        Rule::WireFormatChanged,
        Rule::FieldRenamed,
        Rule::EnumValueRenamed,
        Rule::RulesTightened,
        Rule::EventExchangeChanged,
        Rule::ExchangeKindChanged,
        Rule::ExchangeDurabilityChanged,
        Rule::RoutingKeyChanged,
        Rule::QueueArgumentsChanged,
        Rule::RpcQueueRenamed,
        Rule::TaskQueueRenamed,
        Rule::EventRemoved,
        Rule::TaskRemoved,
    ];

    /// The rule's name, e.g. `field-removed`.
    pub fn name(self) -> &'static str {
        match self {
            Rule::FieldNumberReused => "field-number-reused",
            Rule::FieldTypeChanged => "field-type-changed",
            Rule::FieldRemoved => "field-removed",
            Rule::FieldLabelChanged => "field-label-changed",
            Rule::EnumValueRemoved => "enum-value-removed",
            Rule::EnumValueRenumbered => "enum-value-renumbered",
            Rule::TypeRemoved => "type-removed",
            Rule::MethodRemoved => "method-removed",
            Rule::MethodTypeChanged => "method-type-changed",
            Rule::WireFormatChanged => "wire-format-changed",
            Rule::FieldRenamed => "field-renamed",
            Rule::EnumValueRenamed => "enum-value-renamed",
            Rule::RulesTightened => "rules-tightened",
            Rule::EventExchangeChanged => "event-exchange-changed",
            Rule::ExchangeKindChanged => "exchange-kind-changed",
            Rule::ExchangeDurabilityChanged => "exchange-durability-changed",
            Rule::RoutingKeyChanged => "routing-key-changed",
            Rule::QueueArgumentsChanged => "queue-arguments-changed",
            Rule::RpcQueueRenamed => "rpc-queue-renamed",
            Rule::TaskQueueRenamed => "task-queue-renamed",
            Rule::EventRemoved => "event-removed",
            Rule::TaskRemoved => "task-removed",
        }
    }

    /// Which consumers the rule protects.
    pub fn category(self) -> Category {
        match self {
            Rule::FieldRenamed | Rule::EnumValueRenamed => Category::Json,
            Rule::RulesTightened => Category::Validation,
            Rule::EventExchangeChanged
            | Rule::ExchangeKindChanged
            | Rule::ExchangeDurabilityChanged
            | Rule::RoutingKeyChanged
            | Rule::QueueArgumentsChanged
            | Rule::RpcQueueRenamed
            | Rule::TaskQueueRenamed
            | Rule::EventRemoved
            | Rule::TaskRemoved => Category::Amqp,
            Rule::FieldNumberReused
            | Rule::FieldTypeChanged
            | Rule::FieldRemoved
            | Rule::FieldLabelChanged
            | Rule::EnumValueRemoved
            | Rule::EnumValueRenumbered
            | Rule::TypeRemoved
            | Rule::MethodRemoved
            | Rule::MethodTypeChanged
            | Rule::WireFormatChanged => Category::Wire,
        }
    }

    /// Why a change the rule catches breaks consumers: what goes wrong, and for whom.
    pub fn why(self) -> &'static str {
        match self {
            Rule::FieldNumberReused => {
                "old readers decode the new field's bytes as the old field (or drop them as malformed), and new \
                 readers misread messages still in queues"
            }
            Rule::FieldTypeChanged => {
                "the number now carries another encoding: readers on the old contract fail to decode the message, \
                 or silently read garbage"
            }
            Rule::FieldRemoved => {
                "a later field could reuse the number or name, and readers on the old contract would misread it; \
                 `reserved` keeps both retired"
            }
            Rule::FieldLabelChanged => {
                "singular, optional, repeated, map and oneof fields merge and encode differently, and the generated \
                 Rust field changes type (`T`, `Option<T>`, `Vec<T>`)"
            }
            Rule::EnumValueRemoved => {
                "messages still carrying the number decode to an unknown value, and a later value could reuse the \
                 number or name"
            }
            Rule::EnumValueRenumbered => "the same name is another number on the wire: old and new readers disagree",
            Rule::TypeRemoved => {
                "subscribers, callers and generated code of the old contract still name it; an event's queues stop \
                 receiving it, and a task's work queue keeps the tasks already in it with no worker to take them"
            }
            Rule::MethodRemoved => {
                "callers on the old contract still send it: their requests are answered `UNIMPLEMENTED`, or time out"
            }
            Rule::MethodTypeChanged => {
                "callers and servers on different versions encode different messages for the same method"
            }
            Rule::WireFormatChanged => {
                "Warren's subscribers, workers and servers read each message's content type and decode both formats, \
                 but readers in other languages (or plain AMQP consumers) decode the one format they were written \
                 for, and fail on every message in the other"
            }
            Rule::FieldRenamed => {
                "the protobuf JSON mapping names fields: JSON readers lose the field and the generated Rust field is \
                 renamed"
            }
            Rule::EnumValueRenamed => "the protobuf JSON mapping writes enum values by name: JSON readers reject it",
            Rule::RulesTightened => {
                "senders on the old contract still send messages the old rules accept, and such messages wait in \
                 queues: receivers on the new contract reject them (events and tasks are dead-lettered, calls \
                 answered INVALID_ARGUMENT)"
            }
            Rule::EventExchangeChanged => {
                "subscriber queues are bound to the old exchange and stop receiving the event, without an error"
            }
            Rule::ExchangeKindChanged => {
                "RabbitMQ refuses to redeclare an existing exchange with another kind (PRECONDITION_FAILED), so \
                 the next deploy fails; bindings also match differently"
            }
            Rule::ExchangeDurabilityChanged => {
                "RabbitMQ refuses to redeclare an existing exchange with other flags (PRECONDITION_FAILED), so the \
                 next deploy fails"
            }
            Rule::RoutingKeyChanged => {
                "subscribers bind by routing key: existing bindings and patterns stop matching and their queues \
                 receive nothing, without an error"
            }
            Rule::QueueArgumentsChanged => {
                "RabbitMQ refuses to redeclare an existing queue with other arguments (PRECONDITION_FAILED), so \
                 subscribers and workers of the new version fail to start until the queue is deleted"
            }
            Rule::RpcQueueRenamed => {
                "callers on the old contract send to the old queue, which no server consumes: their calls time out"
            }
            Rule::TaskQueueRenamed => {
                "senders on the old contract still put tasks on the old work queue, which workers on the new \
                 contract no longer consume: those tasks, and the ones already waiting there, are never worked"
            }
            Rule::EventRemoved => {
                "publishers on the old contract keep publishing it into subscriber queues that no subscriber on the \
                 new contract drains, and subscribers on the old contract stop receiving it, without an error"
            }
            Rule::TaskRemoved => {
                "senders on the old contract keep putting it on its work queue, which no worker on the new contract \
                 consumes: those tasks, and the ones already waiting there, are never worked"
            }
        }
    }

    /// The rule named `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Rule> {
        Rule::ALL.iter().copied().find(|rule| rule.name() == name)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A rule name that names no rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown rule \"{name}\" (rules: {})", Rule::ALL.iter().map(|r| r.name()).collect::<Vec<_>>().join(", "))]
pub struct UnknownRule {
    /// The name that was given.
    pub name: String,
}

impl FromStr for Rule {
    type Err = UnknownRule;

    fn from_str(name: &str) -> Result<Rule, UnknownRule> {
        Rule::from_name(name).ok_or_else(|| UnknownRule { name: name.to_owned() })
    }
}
