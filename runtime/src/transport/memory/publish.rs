//! Publishing to the in-memory broker: where a message goes (exchanges by kind, the routes remembered per
//! exchange and key until the topology changes) and one shared copy of it in each queue.

use std::sync::Arc;

use super::{Broker, Queued, REPLY_PREFIX, State, with_state};
use crate::contract::ExchangeKind;
use crate::envelope::Properties;
use crate::error::{Error, Result};
use crate::headers::{HeaderValue, Headers};
use crate::topic;
use crate::transport::{Acker as AnyAcker, Delivery, Message, Name, Publish};

impl Broker {
    pub(crate) fn publish(&self, publish: Publish<'_>, body: Vec<u8>, properties: Properties) -> Result<()> {
        let shared = &self.state;
        with_state(shared, |state| {
            if publish.exchange.is_empty() && publish.routing_key.starts_with(REPLY_PREFIX) {
                // Direct reply-to: straight to the waiting client, or nowhere (replies are at-most-once).
                if let Some(sink) = state.replies.get(publish.routing_key) {
                    let message = Message::new(Name::Static(""), publish.routing_key, properties.received(), body);
                    let delivery = Delivery { message: Arc::new(message), redelivered: false, acker: AnyAcker::None };
                    let _ = sink.send(Ok(delivery));
                }
                return Ok(());
            }
            let route = state.resolve(publish.exchange, publish.routing_key, &properties)?;
            if route.queues.is_empty() {
                return if publish.mandatory {
                    Err(Error::Unroutable {
                        exchange: publish.exchange.to_owned(),
                        routing_key: publish.routing_key.to_owned(),
                    })
                } else {
                    Ok(())
                };
            }
            if route.limited {
                return state.publish_limited(&route, publish, body, properties, shared);
            }
            // One shared copy, however many queues it goes to.
            let (exchange, key) = (route.exchange.clone(), route.key.clone());
            let mut message = Message::new(exchange, key, properties.received(), body);
            if route.queues.len() > 1 {
                message = message.fanned_out();
            }
            // The last queue takes the message itself: with one queue, no clone and drop of the publisher's own
            // reference (W9: the count's line is on the core of the consumer that dropped this memory last, and
            // each change of the count there costs a cache miss).
            let message = Arc::new(message);
            let (last, others) = route.queues.split_last().expect("not empty: checked above");
            for queue in others {
                state.enqueue(queue, Queued::new(Arc::clone(&message)), shared);
            }
            state.enqueue(last, Queued::new(message), shared);
            Ok(())
        })
    }
}

/// Where messages with one exchange and routing key go, and those names as the messages carry them.
pub(super) struct Route {
    exchange: Name,
    key: Name,
    queues: Box<[Arc<str>]>,
    /// Whether any of the queues has a length limit (their settings cannot change while the route is kept).
    limited: bool,
}

impl State {
    /// Where a message goes: decided once per exchange and routing key, then remembered until the topology
    /// changes (matching a routing key against every topic binding is the costliest part of a publish).
    /// Headers exchanges decide per message.
    ///
    /// Shared rather than cloned out of the map: one reference count to change per publish, not one for each
    /// name and the list of queues.
    fn resolve(&mut self, exchange: &str, key: &str, properties: &Properties) -> Result<Arc<Route>> {
        /// Distinct routing keys remembered per exchange; keys made from templates can be unbounded.
        const MAX_ROUTES: usize = 4096;
        if let Some(route) = self.routes.get(exchange).and_then(|routes| routes.get(key)) {
            return Ok(Arc::clone(route));
        }
        let queues: Box<[Arc<str>]> = self.route(exchange, key, properties)?.into();
        let (exchange_name, routing_key) = self.intern(exchange, key);
        let limited = queues.iter().any(|q| self.queues.get(&**q).is_some_and(|q| q.options.limit.is_some()));
        let route = Arc::new(Route { exchange: exchange_name, key: routing_key, queues, limited });
        if self.exchanges.get(exchange).is_some_and(|e| e.kind == ExchangeKind::Headers) {
            return Ok(route);
        }
        let routes = self.routes.entry(exchange.into()).or_default();
        if routes.len() >= MAX_ROUTES {
            routes.clear();
        }
        routes.insert(key.into(), Arc::clone(&route));
        Ok(route)
    }

    /// `exchange` and `key` as messages hold them ([`Name::interned`]), remembered while there are not too many
    /// distinct ones (the process-wide list is behind a lock of its own).
    pub(super) fn intern(&mut self, exchange: &str, key: &str) -> (Name, Name) {
        const MAX_NAMES: usize = 4096;
        let mut get = |name: &str| match self.names.get(name) {
            Some(known) => known.clone(),
            None => {
                let interned = Name::interned(name);
                if self.names.len() < MAX_NAMES {
                    self.names.insert(name.into(), interned.clone());
                }
                interned
            }
        };
        (get(exchange), get(key))
    }

    /// The queues a message published to `exchange` with `key` goes to.
    pub(super) fn route(&self, exchange: &str, key: &str, properties: &Properties) -> Result<Vec<Arc<str>>> {
        if exchange.is_empty() {
            return Ok(self.queues.get(key).map(|q| Arc::clone(&q.name)).into_iter().collect());
        }
        let Some(exchange_state) = self.exchanges.get(exchange) else {
            return Err(Error::ExchangeNotFound { exchange: exchange.to_owned() });
        };
        let mut queues = Vec::new();
        for binding in &exchange_state.bindings {
            let matched = match exchange_state.kind {
                ExchangeKind::Direct => binding.key == key,
                ExchangeKind::Topic => topic::matches(&binding.key, key),
                ExchangeKind::Fanout => true,
                ExchangeKind::Headers => headers_match(&binding.arguments, properties.headers()),
            };
            if matched && !queues.contains(&binding.queue) {
                queues.push(Arc::clone(&binding.queue));
            }
        }
        Ok(queues)
    }
}

impl State {
    /// A publish to queues of which some have a length limit: as RabbitMQ's `reject-publish`, the message goes
    /// to every queue with room for it, and the publish is refused (a negative confirm) if any queue is full;
    /// a publish without a confirm learns nothing.
    fn publish_limited(
        &mut self,
        route: &Route,
        publish: Publish<'_>,
        body: Vec<u8>,
        properties: Properties,
        shared: &Arc<std::sync::Mutex<State>>,
    ) -> Result<()> {
        let (with_room, full): (Vec<&Arc<str>>, Vec<&Arc<str>>) =
            route.queues.iter().partition(|queue| self.has_room(queue, body.len()));
        let mut message = Message::new(route.exchange.clone(), route.key.clone(), properties.received(), body);
        if route.queues.len() > 1 {
            message = message.fanned_out();
        }
        let message = Arc::new(message);
        for queue in with_room {
            self.enqueue(queue, Queued::new(Arc::clone(&message)), shared);
        }
        let Some(queue) = full.first() else { return Ok(()) };
        if !publish.confirm {
            // As RabbitMQ's reject-publish: without a confirm to nack, the message is dropped unsaid.
            return Ok(());
        }
        let limit = self.queues.get(&***queue).and_then(|q| q.options.limit).unwrap_or_default();
        Err(Error::Nacked {
            exchange: publish.exchange.to_owned(),
            routing_key: publish.routing_key.to_owned(),
            reason: format!(
                "queue \"{queue}\" is full ({limit}; x-max-length with reject-publish): the message was refused{}; \
                 publish it again once consumers have taken some, or raise the contract's limit",
                if full.len() < route.queues.len() {
                    " there, though the other queues it routes to took it"
                } else {
                    ""
                }
            ),
        })
    }
}

/// Headers-exchange matching: `x-match` = `all` (default) or `any` over the binding's non-`x-` arguments.
fn headers_match(binding: &Headers, headers: Option<&Headers>) -> bool {
    let any = binding.get_str("x-match") == Some("any");
    let mut wanted = binding.iter().filter(|(key, _)| !key.starts_with("x-")).peekable();
    if wanted.peek().is_none() {
        return true;
    }
    let has = |(key, value): (&str, &HeaderValue)| {
        headers.and_then(|h| h.get(key)).is_some_and(|v| v == value || matches!(value, HeaderValue::Void))
    };
    if any { wanted.any(has) } else { wanted.all(has) }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::contract::ExchangeSpec;
    use crate::transport::{QueueSettings, Settle};

    const TOPIC: ExchangeSpec =
        ExchangeSpec { name: "routes.test", kind: ExchangeKind::Topic, durable: false, auto_delete: false };

    fn send(broker: &Broker, exchange: &str, key: &str) -> Result<()> {
        let publish = Publish { exchange, routing_key: key, mandatory: true, confirm: true };
        broker.publish(publish, b"x".to_vec(), crate::MessageProperties::default().into())
    }

    fn depth(broker: &Broker, queue: &str) -> u64 {
        broker.queue_stats(queue).expect("queue exists").0
    }

    /// Remembered routes must never outlive the topology they were decided on.
    #[tokio::test]
    async fn remembered_routes_follow_bindings_and_deleted_queues() {
        let broker = Broker::default();
        broker.declare_exchange(&TOPIC).unwrap();
        assert!(matches!(send(&broker, TOPIC.name, "user.created"), Err(Error::Unroutable { .. })));

        let mut auto_delete = QueueSettings::default();
        auto_delete.auto_delete = true;
        broker.declare_queue("a", &auto_delete).unwrap();
        broker.bind("a", TOPIC.name, "user.*", Headers::new()).unwrap();
        send(&broker, TOPIC.name, "user.created").unwrap();
        assert_eq!(depth(&broker, "a"), 1, "the new binding is used although the key was unroutable before");

        broker.declare_queue("b", &QueueSettings::default()).unwrap();
        broker.bind("b", TOPIC.name, "*.created", Headers::new()).unwrap();
        send(&broker, TOPIC.name, "user.created").unwrap();
        assert_eq!((depth(&broker, "a"), depth(&broker, "b")), (2, 1), "a second binding adds a queue");

        // The default exchange reaches a queue declared after a publish found none by that name.
        assert!(matches!(send(&broker, "", "c"), Err(Error::Unroutable { .. })));
        broker.declare_queue("c", &QueueSettings::default()).unwrap();
        send(&broker, "", "c").unwrap();
        assert_eq!(depth(&broker, "c"), 1);

        // An auto-delete queue goes with its last consumer, and its binding with it.
        send(&broker, TOPIC.name, "user.deleted").unwrap();
        let consumer = broker.consume("a", 0, "t".into()).unwrap();
        consumer.cancel.cancel("t", Duration::from_secs(1)).await;
        assert!(broker.queue_stats("a").is_err(), "auto-delete queue removed");
        send(&broker, TOPIC.name, "user.created").unwrap();
        assert_eq!(depth(&broker, "b"), 2, "only the remaining queue receives");
        assert!(matches!(send(&broker, TOPIC.name, "user.deleted"), Err(Error::Unroutable { .. })));
    }

    /// Messages put back return to their places, as in a RabbitMQ classic queue: one requeued (and delivered
    /// again at once) and the others returned with their consumer come back in the order they were published.
    /// (The conformance suite cannot see this: on RabbitMQ, when a requeued message is delivered again races
    /// with the consumer's going.)
    #[tokio::test]
    async fn messages_put_back_return_to_their_places() {
        use futures_util::StreamExt;
        let broker = Broker::default();
        broker.declare_queue("places", &QueueSettings::plain(false)).unwrap();
        for body in [b"1", b"2", b"3"] {
            let publish = Publish { exchange: "", routing_key: "places", mandatory: true, confirm: true };
            broker.publish(publish, body.to_vec(), crate::MessageProperties::default().into()).unwrap();
        }
        let mut consumer = broker.consume("places", 0, "t".into()).unwrap();
        let first = consumer.stream.next().await.unwrap().unwrap();
        assert!(first.settle(Settle::Requeue).await);
        // Delivered again at once, after the other two; then the consumer goes, and all three go back.
        let mut unsettled = Vec::new();
        for _ in 0..3 {
            unsettled.push(consumer.stream.next().await.unwrap().unwrap());
        }
        consumer.cancel.cancel("t", Duration::from_secs(1)).await;
        drop(unsettled);
        let mut order = Vec::new();
        while let Some(delivery) = broker.fetch("places").unwrap() {
            order.push(String::from_utf8(delivery.message.body.clone()).unwrap());
        }
        assert_eq!(order, ["1", "2", "3"]);
    }

    /// An exchange declared again must be declared alike, as RabbitMQ insists (406 PRECONDITION_FAILED).
    #[tokio::test]
    async fn an_exchange_declared_again_with_other_flags_is_refused() {
        let broker = Broker::default();
        broker.declare_exchange(&TOPIC).unwrap();
        broker.declare_exchange(&TOPIC).expect("the same declaration again is fine");
        let durable = ExchangeSpec { durable: true, ..TOPIC };
        let refused = broker.declare_exchange(&durable).unwrap_err().to_string();
        assert!(refused.contains("durable=false") && refused.contains("PRECONDITION_FAILED"), "{refused}");
    }

    /// A bytes limit counts the bodies of ready messages, and a message must fit whole, as in a classic queue.
    #[tokio::test]
    async fn a_bytes_limit_refuses_a_body_that_does_not_fit() {
        let broker = Broker::default();
        let limited = QueueSettings::plain(false).with_limit(Some(warren_topology::QueueLimit::bytes(3)));
        broker.declare_queue("small", &limited).unwrap();
        for _ in 0..3 {
            send(&broker, "", "small").unwrap(); // one byte each
        }
        let Err(Error::Nacked { reason, .. }) = send(&broker, "", "small") else { panic!("the fourth byte fits") };
        assert!(reason.contains("queue \"small\" is full (at most 3 bytes"), "{reason}");
        assert_eq!(depth(&broker, "small"), 3, "nothing dropped, nothing added");
        broker.fetch("small").unwrap().expect("a message");
        send(&broker, "", "small").unwrap();
    }
}
