//! Publishing over AMQP: a publish written by lapin, or confirmed (see `confirms`), and how a failed one is
//! classified: final (unroutable, nacked, a missing exchange) or worth sending again after a reconnection.

use super::*;

/// What a nack from RabbitMQ means, as far as a client can tell: the nack itself carries no reason.
pub(super) const NACK_REASON: &str = "the broker refused it; a queue it routes to may be full (x-max-length with \
     reject-publish), or the broker failed to store it; publish it again later, or slow down";

/// Whether to try a failed publish again.
pub(super) enum Failure {
    Final(Error),
    Transient,
}

pub(super) fn classify(error: &Error, exchange: &str) -> Failure {
    match error {
        Error::Unroutable { .. } | Error::Nacked { .. } | Error::TooLarge { .. } | Error::Closed => {
            Failure::Final(clone_final(error))
        }
        // RabbitMQ closes the channel for a publish to a missing exchange, and lapin fails every confirm waiting
        // on it with that error: only the publish to the exchange it names failed; the others are sent again on
        // a new channel.
        Error::Broker { .. } if let Some(reply) = not_found_reply(error) => {
            if names_exchange(reply, exchange) {
                Failure::Final(Error::ExchangeNotFound { exchange: exchange.to_owned() })
            } else {
                Failure::Transient
            }
        }
        Error::Broker { source, .. } => match source.lapin().kind() {
            ErrorKind::ProtocolError(amqp)
                if amqp.kind() == &AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) =>
            {
                Failure::Final(Error::Broker { operation: "publish", source: source.clone() })
            }
            _ => Failure::Transient,
        },
        _ => Failure::Transient,
    }
}

/// The error a publish to `exchange` ends with when it gives up after `error`, `after` its start. Another
/// publish's missing exchange names that exchange, not this one: this publish ran out of time while its channel
/// kept closing under it.
pub(super) fn gave_up(error: Error, exchange: &str, after: Duration) -> Error {
    if not_found_reply(&error).is_some_and(|reply| !names_exchange(reply, exchange)) {
        return Error::Timeout {
            operation: "publish (its channel kept being closed by publishes to a missing exchange)",
            after,
        };
    }
    error
}

/// The broker's reply text, when `error` is a channel closed with `NOT_FOUND`.
pub(super) fn not_found_reply(error: &Error) -> Option<&str> {
    match error {
        Error::Broker { source, .. } => match source.lapin().kind() {
            ErrorKind::ProtocolError(amqp) if amqp.kind() == &AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => {
                Some(amqp.get_message().as_str())
            }
            _ => None,
        },
        _ => None,
    }
}

/// Whether RabbitMQ's reply text (`NOT_FOUND - no exchange 'orders' in vhost '/'`) names `exchange`. A reply
/// that names no exchange at all is taken to mean this one. RabbitMQ cuts a reply to 255 bytes, ending it with
/// `...`: a name cut short there matches the exchange it begins.
pub(super) fn names_exchange(reply: &str, exchange: &str) -> bool {
    let Some((_, named)) = reply.split_once("no exchange '") else { return true };
    match named.split_once('\'') {
        Some((name, _)) => name == exchange,
        None => named.strip_suffix("...").is_some_and(|cut| exchange.starts_with(cut)),
    }
}

pub(super) fn clone_final(error: &Error) -> Error {
    match error {
        Error::Unroutable { exchange, routing_key } => {
            Error::Unroutable { exchange: exchange.clone(), routing_key: routing_key.clone() }
        }
        Error::Nacked { exchange, routing_key, reason } => {
            Error::Nacked { exchange: exchange.clone(), routing_key: routing_key.clone(), reason: reason.clone() }
        }
        Error::TooLarge { size, limit } => Error::TooLarge { size: *size, limit: *limit },
        _ => Error::Closed,
    }
}

/// Publishes on `channel`, which is not in confirm mode, within `timeout`: done once lapin has written it.
pub(crate) fn publish_on(
    channel: &Channel,
    publish: Publish<'_>,
    body: &[u8],
    properties: &Properties,
    timeout: Duration,
) -> impl Future<Output = Result<()>> {
    deadline("publish", timeout, publish_written(channel, publish, body, properties))
}

/// Publishes on `channel`, which is not in confirm mode: done once lapin has written it. No deadline of its own:
/// the caller bounds the wait.
///
/// lapin's publish is boxed. Inline it made every publish future 1,100 bytes larger, confirmed ones too (a
/// future is as large as its largest state), and a caller that runs many publishes at once copies each whole
/// future into a task or a `FuturesUnordered` slot.
pub(crate) async fn publish_written(
    channel: &Channel,
    publish: Publish<'_>,
    body: &[u8],
    properties: &Properties,
) -> lapin::Result<()> {
    let sending = Box::pin(channel.basic_publish(
        ShortString::from(publish.exchange),
        ShortString::from(publish.routing_key),
        BasicPublishOptions { mandatory: publish.mandatory, ..BasicPublishOptions::default() },
        body,
        to_lapin(properties),
    ));
    sending.await.map(drop)
}

/// Publishes on `channel` and, when it is in confirm mode, waits for the broker's confirm; one deadline covers
/// both. A confirmed publish's deadline is kept by its channel's watchdog (see `confirms`), not a timer of its
/// own: with a thousand publishes in flight, timers are a measurable cost.
#[expect(clippy::manual_async_fn, reason = "smaller future; see `Transport::publish_until`")]
pub(super) fn publish_through(
    channel: &Arc<PublishChannel>,
    publish: Publish<'_>,
    body: &Arc<Vec<u8>>,
    properties: &Properties,
    timeout: Duration,
) -> impl Future<Output = Result<()>> {
    async move {
        let Some(confirms) = &channel.confirms else {
            return publish_on(&channel.channel, publish, body, properties, timeout).await;
        };
        let sending = {
            let (channel, body) = (Arc::clone(&channel.channel), Arc::clone(body));
            let (exchange, routing_key) = (ShortString::from(publish.exchange), ShortString::from(publish.routing_key));
            let options = BasicPublishOptions { mandatory: publish.mandatory, ..BasicPublishOptions::default() };
            let properties = to_lapin(properties);
            Box::pin(async move {
                let confirm = channel.basic_publish(exchange, routing_key, options, &body, properties).await?;
                confirm.await.map(Confirmed::from)
            })
        };
        let outcome = confirms.publish(properties.id(), sending, Instant::now().later(timeout)).await;
        let named = || (publish.exchange.to_owned(), publish.routing_key.to_owned());
        match outcome {
            Outcome::Delivered => Ok(()),
            Outcome::Returned => {
                let (exchange, routing_key) = named();
                Err(Error::Unroutable { exchange, routing_key })
            }
            Outcome::Refused => {
                let (exchange, routing_key) = named();
                Err(Error::Nacked { exchange, routing_key, reason: NACK_REASON.to_owned() })
            }
            Outcome::Failed(source) => Err(Error::broker("publish and confirm", source)),
            Outcome::TimedOut => Err(Error::Timeout { operation: "publish and confirm", after: timeout }),
        }
    }
}
