//! Making sure the exchanges and queues a bus needs are there: declared ([`TopologyMode::Declare`]), or only
//! checked passively ([`TopologyMode::Verify`]), alike on both transports.

use super::Transport;
use crate::config::{BusConfig, Endpoint};
use crate::contract::ExchangeSpec;
use crate::error::{Error, Result};
use crate::topology::{QueueSettings, TopologyMode};
use warren_topology::is_side_queue;

/// Something a publisher, subscriber, server or client needs on the broker.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Need<'a> {
    /// An exchange, as the contract describes it.
    Exchange(&'a ExchangeSpec),
    /// A queue, with Warren's settings for it.
    Queue(&'a str, &'a QueueSettings),
    /// A queue bound to an exchange with a key.
    Binding { queue: &'a str, exchange: &'a str, key: &'a str },
}

impl Transport {
    /// Declares `needs` in order (stopping at the first refusal), or in [`TopologyMode::Verify`] checks that each
    /// exchange and queue exists and, if they all do, binds: one [`Error::MissingTopology`] lists every
    /// exchange and queue missing (or binding refused), each with the command that creates it.
    pub(crate) async fn ensure(&self, config: &BusConfig, needs: &[Need<'_>]) -> Result<()> {
        if config.topology == TopologyMode::Declare {
            for need in needs {
                let declared = match *need {
                    Need::Exchange(spec) => self.declare_exchange(spec).await,
                    Need::Queue(name, settings) => match self.declare_queue(name, settings).await {
                        Err(error) if settings.quorum && is_side_queue(name) && other_queue_type(&error) => {
                            self.keep_classic(name, error).await
                        }
                        declared => declared,
                    },
                    Need::Binding { queue, exchange, key } => self.bind(queue, exchange, key).await,
                };
                declared.map_err(|error| refused_hint(error, need))?;
            }
            return Ok(());
        }
        let vhost = match &config.endpoint {
            Endpoint::Amqp { uri, .. } => Some(uri.vhost.as_str()),
            Endpoint::Memory(_) => None,
        };
        let mut missing = Vec::new();
        for need in needs {
            match *need {
                Need::Exchange(spec) => {
                    super::check_name("exchange", spec.name)?;
                    if !spec.name.is_empty() && !self.exchange_exists(spec.name).await? {
                        missing.push(missing_exchange(spec, vhost));
                    }
                }
                Need::Queue(name, settings) => {
                    settings.check(name).map_err(Error::config)?;
                    super::check_name("queue", name)?;
                    if !self.queue_exists(name).await? {
                        missing.push(missing_queue(name, settings, vhost));
                    }
                }
                Need::Binding { .. } => {}
            }
        }
        if missing.is_empty() {
            // No configure permission needed: `write` on the queue, `read` on the exchange. Binding again what
            // the definitions bound changes nothing.
            for need in needs {
                let Need::Binding { queue, exchange, key } = *need else { continue };
                match self.bind(queue, exchange, key).await {
                    Ok(()) => {}
                    Err(Error::Broker { source, .. }) if source.reply_code().is_some() => missing.push(format!(
                        "binding of queue \"{queue}\" to exchange \"{exchange}\" with key \"{key}\": the broker \
                         refused it ({source}); give the user write permission on the queue and read on the exchange"
                    )),
                    Err(error @ (Error::Config { .. } | Error::ExchangeNotFound { .. })) => {
                        missing.push(format!("binding of queue \"{queue}\" to exchange \"{exchange}\": {error}"))
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        if missing.is_empty() { Ok(()) } else { Err(Error::MissingTopology { missing }) }
    }

    /// A side queue (dead-letter or delay queue) an earlier Warren declared as a classic queue, where this one
    /// declares a quorum queue: kept as it is, with a warning, so that upgrading does not stop a subscriber.
    /// It still works; but it lives on one node, and a subscriber cannot start on another while that node is
    /// down. Deleting it (when empty) lets the next declaration make it a quorum queue.
    async fn keep_classic(&self, name: &str, refused: Error) -> Result<()> {
        if !self.queue_exists(name).await? {
            return Err(refused);
        }
        tracing::warn!(
            queue = %name,
            "queue exists as a classic queue, where Warren now declares a quorum queue (a quorum consumer queue's \
             side queues are quorum queues, so that they survive the loss of a node); keeping it: delete it once \
             empty to have it declared again as a quorum queue"
        );
        Ok(())
    }

    /// Whether exchange `name` exists (a passive declare over AMQP).
    async fn exchange_exists(&self, name: &str) -> Result<bool> {
        match self {
            Transport::Amqp(amqp) => amqp.exchange_exists(name).await,
            Transport::Memory(broker) => Ok(broker.exchange_exists(name)),
        }
    }

    /// Whether queue `name` exists (a passive declare over AMQP).
    async fn queue_exists(&self, name: &str) -> Result<bool> {
        match self {
            Transport::Amqp(amqp) => amqp.queue_exists(name).await,
            Transport::Memory(broker) => Ok(broker.queue_exists(name)),
        }
    }
}

/// Whether `error` is the broker refusing a queue declaration because the queue exists with another
/// `x-queue-type` (`PRECONDITION_FAILED - inequivalent arg 'x-queue-type'`).
fn other_queue_type(error: &Error) -> bool {
    matches!(error, Error::Broker { source, .. } if source.reply_code() == Some(406) && source.to_string().contains("x-queue-type"))
}

/// A declaration refused for want of permission (`ACCESS_REFUSED`), said with what to do; other errors as they are.
fn refused_hint(error: Error, need: &Need<'_>) -> Error {
    match &error {
        Error::Broker { source, .. } if source.reply_code() == Some(403) => {
            let what = match *need {
                Need::Exchange(spec) => format!("exchange \"{}\"", spec.name),
                Need::Queue(name, _) => format!("queue \"{name}\""),
                Need::Binding { queue, exchange, .. } => format!("the binding of \"{queue}\" to \"{exchange}\""),
            };
            Error::config(format!(
                "declaring {what} was refused ({source}): the user lacks configure permission on it (or write and \
                 read, for a binding); grant it, or provision the topology (`warren topology` then `rabbitmqctl \
                 import_definitions`) and run the bus with TopologyMode::Verify (docs/security.md)"
            ))
        }
        _ => error,
    }
}

/// `rabbitmqadmin`'s vhost option, when the bus is on RabbitMQ.
fn vhost_option(vhost: Option<&str>) -> String {
    vhost.map(|vhost| format!(" --vhost={}", shell_word(vhost))).unwrap_or_default()
}

/// `text` as one shell word: as is when it is plain, else single-quoted.
fn shell_word(text: &str) -> String {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/@%+=".contains(&b)) {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

fn missing_exchange(spec: &ExchangeSpec, vhost: Option<&str>) -> String {
    format!(
        "exchange \"{}\" ({}{}): `rabbitmqadmin{} declare exchange name={} type={} durable={} auto_delete={}`",
        spec.name,
        spec.kind.as_str(),
        if spec.durable { ", durable" } else { "" },
        vhost_option(vhost),
        shell_word(spec.name),
        spec.kind.as_str(),
        spec.durable,
        spec.auto_delete
    )
}

fn missing_queue(name: &str, settings: &QueueSettings, vhost: Option<&str>) -> String {
    let arguments: serde_json::Map<String, serde_json::Value> = settings
        .arguments()
        .into_iter()
        .map(|(key, value)| {
            let value = match value {
                crate::topology::Argument::Int(n) => serde_json::Value::from(n),
                crate::topology::Argument::Str(s) => serde_json::Value::from(s),
            };
            (key.to_owned(), value)
        })
        .collect();
    let arguments = if arguments.is_empty() {
        String::new()
    } else {
        format!(" arguments={}", shell_word(&serde_json::Value::Object(arguments).to_string()))
    };
    format!(
        "queue \"{name}\": `rabbitmqadmin{} declare queue name={} durable={} auto_delete={}{arguments}`",
        vhost_option(vhost),
        shell_word(name),
        settings.durable,
        settings.auto_delete
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::ExchangeKind;

    #[test]
    fn each_missing_item_comes_with_the_command_that_creates_it() {
        static EXCHANGE: ExchangeSpec =
            ExchangeSpec { name: "shop.events", kind: ExchangeKind::Topic, durable: true, auto_delete: false };
        assert_eq!(
            missing_exchange(&EXCHANGE, Some("prod")),
            "exchange \"shop.events\" (topic, durable): `rabbitmqadmin --vhost=prod declare exchange \
             name=shop.events type=topic durable=true auto_delete=false`"
        );
        let settings = QueueSettings::consumer("billing.orders", false, false, None);
        assert_eq!(
            missing_queue("billing.orders", &settings, None),
            "queue \"billing.orders\": `rabbitmqadmin declare queue name=billing.orders durable=true \
             auto_delete=false arguments='{\"x-dead-letter-exchange\":\"\",\"x-dead-letter-routing-key\":\
             \"billing.orders.dlq\"}'`"
        );
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }
}
