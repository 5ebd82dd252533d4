//! Middleware: layers around publish, consume, RPC call and RPC serve, in the spirit of tower layers and
//! tonic interceptors. Metrics are meant to be built as layers, so an application can replace them or add its
//! own (authentication, tenancy, auditing). Trace context is built in ([`crate::TraceContext`]): a hook cannot
//! wrap a handler's future, which continuing a trace inside it needs; a layer can still set `traceparent`.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::headers::Headers;
use crate::status::{Code, Status};
use crate::subscriber::panic_message;

/// A layer around Warren's traffic: every hook has a default that does nothing, so a layer implements only the
/// points it cares about.
///
/// | point | sees | may refuse? |
/// |---|---|---|
/// | [`before_publish`](Middleware::before_publish) | type, exchange, routing key, headers to send (`&mut`) | yes: the publish fails with [`Error::Refused`], nothing is sent |
/// | [`after_publish`](Middleware::after_publish) | the same, and whether it was confirmed | — |
/// | [`before_handle`](Middleware::before_handle) | type, queue, routing key, headers, attempt | yes: the message is dead-lettered with the reason, no handler runs |
/// | [`after_handle`](Middleware::after_handle) | the same, and what became of the message | — |
/// | [`before_call`](Middleware::before_call) | service, method, headers to send (`&mut`) | yes: the call fails with the [`Status`], nothing is sent |
/// | [`after_call`](Middleware::after_call) | the same, and the status code | — |
/// | [`before_serve`](Middleware::before_serve) | method, caller, the caller's headers | yes: answered with the [`Status`], the handler does not run |
/// | [`after_serve`](Middleware::after_serve) | the same, and the status code answered | — |
///
/// Register layers for all traffic of a bus with [`crate::BusConfig::middleware`], for one subscriber with
/// [`crate::Subscriber::middleware`], and for one RPC server with the generated server's `middleware` (which is
/// [`crate::ServerOptions::middleware`]). Before-hooks run in registration order, the bus's layers before a
/// subscriber's or a server's; the first refusal stops the rest. After-hooks run for every layer, in the same
/// order, whatever happened (a refusal by another layer included), so counts add up.
///
/// Hooks are synchronous, as tonic's interceptors are: they run on every message, where an `async` hook
/// would cost a boxed future each time, and what they do (read a header, check a token against keys in
/// memory, count, open a span) does not wait. A layer that must wait for something refreshes it in a task of
/// its own and reads the latest value. A hook that panics is caught: a before-hook's panic refuses (the reason
/// says it panicked; `INTERNAL` for RPC), an after-hook's is logged and passed over.
///
/// Raw traffic is left alone: [`crate::Bus::publish_bytes`], and Warren's own copies to retry and
/// dead-letter queues, pass no layer.
///
/// An authentication layer for an RPC server, answering `UNAUTHENTICATED` to a caller without the token:
///
/// ```
/// use warren::middleware::{Middleware, Request};
/// use warren::Status;
///
/// struct RequireToken {
///     token: String,
/// }
///
/// impl Middleware for RequireToken {
///     fn name(&self) -> &str {
///         "require-token"
///     }
///
///     fn before_serve(&self, request: &Request<'_>) -> Result<(), Status> {
///         match request.headers.get_str("authorization") {
///             Some(given) if given.strip_prefix("Bearer ") == Some(self.token.as_str()) => Ok(()),
///             _ => Err(Status::unauthenticated(format!("{} needs a bearer token", request.method))),
///         }
///     }
/// }
///
/// // For one server: `IntSummatorServer::new(Summator).middleware(RequireToken { .. }).serve(&bus)`, which
/// // sets these options; `BusConfig::middleware` would guard every server of the bus.
/// let options = warren::ServerOptions::new().middleware(RequireToken { token: "s3cret".into() });
/// let shown = format!("{options:?}");
/// assert!(shown.contains("require-token") && !shown.contains("s3cret"), "Debug names layers, nothing more");
/// ```
///
/// And a layer that stamps every publish with the tenant it runs for, and refuses deliveries for other tenants:
///
/// ```
/// use warren::middleware::{Delivery, Middleware, Publish, Refusal};
///
/// struct Tenant(&'static str);
///
/// impl Middleware for Tenant {
///     fn name(&self) -> &str {
///         "tenant"
///     }
///
///     fn before_publish(&self, publish: &mut Publish<'_>) -> Result<(), Refusal> {
///         publish.headers.insert("tenant", self.0);
///         Ok(())
///     }
///
///     fn before_handle(&self, delivery: &Delivery<'_>) -> Result<(), Refusal> {
///         match delivery.headers.get_str("tenant") {
///             Some(tenant) if tenant == self.0 => Ok(()),
///             other => Err(Refusal::new(format!("for tenant {other:?}, not {}", self.0))),
///         }
///     }
/// }
///
/// let config = warren::BusConfig::in_memory().middleware(Tenant("eu-1"));
/// assert_eq!(format!("{config:?}").matches("tenant").count(), 1, "Debug names the layer");
/// ```
pub trait Middleware: Send + Sync + 'static {
    /// The layer's name, in refusals' reasons and in `Debug` output. Defaults to the type's name.
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }

    /// Before an event or task is published: may change the headers to send (e.g. add `traceparent`), or
    /// refuse, and then the publish fails with [`Error::Refused`] and nothing is sent.
    fn before_publish(&self, publish: &mut Publish<'_>) -> Result<(), Refusal> {
        let _ = publish;
        Ok(())
    }

    /// After a publish: whether it was sent (and confirmed, unless fire-and-forget), or why not (a layer's
    /// refusal included).
    fn after_publish(&self, published: &Published<'_>) {
        let _ = published;
    }

    /// Before a delivery reaches its handler (before it is even decoded): may refuse, and then the message is
    /// dead-lettered with the reason (`x-warren-reason`: `refused by <layer>: <reason>`) and no handler runs.
    fn before_handle(&self, delivery: &Delivery<'_>) -> Result<(), Refusal> {
        let _ = delivery;
        Ok(())
    }

    /// After a delivery is settled: acknowledged (the acknowledgement may go out with others a moment later),
    /// sent to retry, or dead-lettered.
    fn after_handle(&self, handled: &Handled<'_>) {
        let _ = handled;
    }

    /// Before an RPC request is sent: may change its headers (e.g. add a token), or refuse, and then the call
    /// fails with that status and nothing is sent.
    fn before_call(&self, call: &mut Call<'_>) -> Result<(), Status> {
        let _ = call;
        Ok(())
    }

    /// After a call ends, with its status code.
    fn after_call(&self, called: &Called<'_>) {
        let _ = called;
    }

    /// Before a server runs its handler for a request: may refuse, and then the request is answered with that
    /// status and the handler does not run.
    fn before_serve(&self, request: &Request<'_>) -> Result<(), Status> {
        let _ = request;
        Ok(())
    }

    /// After a request is answered, with the status code answered.
    fn after_serve(&self, served: &Served<'_>) {
        let _ = served;
    }
}

/// Why a layer refused a publish or a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    reason: String,
}

impl Refusal {
    /// A refusal for `reason` (say what is wrong, and what to do about it).
    pub fn new(reason: impl Into<String>) -> Self {
        Refusal { reason: reason.into() }
    }

    /// The reason given.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl<T: Into<String>> From<T> for Refusal {
    fn from(reason: T) -> Self {
        Refusal::new(reason)
    }
}

/// A publish about to be sent.
#[derive(Debug)]
#[non_exhaustive]
pub struct Publish<'a> {
    /// The message's full proto name (`gametrade.v1.UserRegistered`).
    pub type_name: &'a str,
    /// The exchange it goes to (empty for a task, which goes to its queue through the default exchange).
    pub exchange: &'a str,
    /// Its routing key (a task's: its queue).
    pub routing_key: &'a str,
    /// The application headers to send. Warren's own names (`x-warren-*`, `warren-*`) are refused here too.
    pub headers: &'a mut Headers,
}

/// A publish, and how it went.
#[derive(Debug)]
#[non_exhaustive]
pub struct Published<'a> {
    /// The message's full proto name.
    pub type_name: &'a str,
    /// The exchange.
    pub exchange: &'a str,
    /// The routing key.
    pub routing_key: &'a str,
    /// The application headers, as the layers left them.
    pub headers: &'a Headers,
    /// `Ok` once sent (and confirmed, unless fire-and-forget), or why not.
    pub result: Result<(), &'a Error>,
    /// From the layers' before-hooks to the broker's confirm (or the failure).
    pub elapsed: Duration,
}

/// A delivery about to reach its handler.
#[derive(Debug)]
#[non_exhaustive]
pub struct Delivery<'a> {
    /// The message's full proto name, from its AMQP `type` (or the queue's sole type when it has none).
    pub type_name: &'a str,
    /// The type to count it under, for a label whose values must stay few (Prometheus'): `type_name` when the
    /// subscriber takes that type, else [`crate::OTHER_TYPES`] (the `type` is the sender's to choose; such a
    /// delivery is dead-lettered).
    pub metric_type: &'a str,
    /// The queue it came from.
    pub queue: &'a str,
    /// The routing key it was published with.
    pub routing_key: &'a str,
    /// Its headers, Warren's own included.
    pub headers: &'a Headers,
    /// Which delivery of the message this is: 1 the first time, 2 on the first retry, and so on.
    pub attempt: u32,
}

/// What became of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settled<'a> {
    /// The handler succeeded, and the message is acknowledged.
    Acked,
    /// Sent to a retry queue, to come back later; why.
    Retried {
        /// The handler's failure, or that it asked to retry.
        reason: &'a str,
    },
    /// Copied to the dead-letter queue; why.
    DeadLettered {
        /// The reason recorded with the copy (`x-warren-reason`).
        reason: &'a str,
    },
    /// Its handler was abandoned unfinished (a stop or shutdown whose deadline passed): not settled, so the
    /// broker delivers it again.
    Abandoned,
}

/// A delivery settled.
#[derive(Debug)]
#[non_exhaustive]
pub struct Handled<'a> {
    /// The message's full proto name.
    pub type_name: &'a str,
    /// The type to count it under: as [`Delivery::metric_type`].
    pub metric_type: &'a str,
    /// The queue it came from.
    pub queue: &'a str,
    /// The routing key it was published with.
    pub routing_key: &'a str,
    /// Its headers.
    pub headers: &'a Headers,
    /// Which delivery of the message this was.
    pub attempt: u32,
    /// What became of it.
    pub settled: Settled<'a>,
    /// Whether it failed: the handler returned an error, panicked or timed out, the message did not decode,
    /// or a layer refused it (as opposed to a handler that chose to retry or dead-letter).
    pub failed: bool,
    /// From the layers' before-hooks to the end of the handler (or the refusal).
    pub elapsed: Duration,
    /// Whether this layer's [`before_handle`](Middleware::before_handle) saw the delivery: `false` when a layer
    /// registered before it refused the delivery first. After-hooks run for every layer whatever happened; a
    /// layer that pairs its hooks (a count of deliveries in progress, say) undoes in `after_handle` only what
    /// its `before_handle` did.
    pub seen: bool,
}

/// An RPC request about to be sent.
#[derive(Debug)]
#[non_exhaustive]
pub struct Call<'a> {
    /// The service's full proto name (`at.v1.IntSummator`).
    pub service: &'a str,
    /// The method's path (`/at.v1.IntSummator/IntSum`).
    pub method: &'a str,
    /// The application headers to send. Warren's own names (`x-warren-*`, `warren-*`) are refused here too.
    pub headers: &'a mut Headers,
}

/// An RPC call that ended.
#[derive(Debug)]
#[non_exhaustive]
pub struct Called<'a> {
    /// The service's full proto name.
    pub service: &'a str,
    /// The method's path.
    pub method: &'a str,
    /// The status: the reply's (`OK`, or the code of the error the server answered), or the caller's own
    /// (`DEADLINE_EXCEEDED`, `UNAVAILABLE`, a layer's refusal, `CANCELLED` when the caller dropped the call,
    /// …). It is heard before the reply is decoded: a reply that then does not decode is `INTERNAL` to the
    /// caller, and the server's `OK` here.
    pub code: Code,
    /// From the layers' before-hooks to the reply (or the failure).
    pub elapsed: Duration,
}

/// An RPC request a server is about to handle.
#[derive(Debug)]
#[non_exhaustive]
pub struct Request<'a> {
    /// The method's path (`/at.v1.IntSummator/IntSum`).
    pub method: &'a str,
    /// The calling service's name (its `app_id`), when it sent one.
    pub caller: Option<&'a str>,
    /// The caller's headers, Warren's own included.
    pub headers: &'a Headers,
}

/// An RPC request answered.
#[derive(Debug)]
#[non_exhaustive]
pub struct Served<'a> {
    /// The method's path, as the request named it.
    pub method: &'a str,
    /// The method to count it under, for a label whose values must stay few (Prometheus'): `method` when the
    /// server has that method, else [`crate::OTHER_METHODS`] (a request's `type` is the caller's to choose). A
    /// method is known to be the server's once its handler has answered it, so a request refused by a layer or
    /// found late before then is counted as `OTHER_METHODS`.
    pub metric_method: &'a str,
    /// The calling service's name, when it sent one.
    pub caller: Option<&'a str>,
    /// The caller's headers.
    pub headers: &'a Headers,
    /// The status answered: `OK`, a handler's or a layer's status, `UNKNOWN` for a declared error.
    pub code: Code,
    /// From the layers' before-hooks to the answer being ready.
    pub elapsed: Duration,
}

/// Layers registered in one place, in order. Empty costs a branch: no allocation, no call.
#[derive(Clone, Default)]
pub(crate) struct Layers(Option<Arc<[Arc<dyn Middleware>]>>);

impl Layers {
    /// The layers, or `None` when there are none.
    pub(crate) fn get(&self) -> Option<&[Arc<dyn Middleware>]> {
        self.0.as_deref()
    }

    /// These layers with `layer` after them.
    pub(crate) fn with(&self, layer: Arc<dyn Middleware>) -> Layers {
        self.then(&Layers(Some(Arc::from([layer]))))
    }

    /// These layers, then `more`'s.
    pub(crate) fn then(&self, more: &Layers) -> Layers {
        match (self.get(), more.get()) {
            (_, None) => self.clone(),
            (None, _) => more.clone(),
            (Some(first), Some(then)) => Layers(Some(first.iter().chain(then).cloned().collect())),
        }
    }

    /// Runs `before` on each layer in order; the first refusal, with the refusing layer's name. A layer that
    /// panics refuses, with what `panicked` makes of the panic's message.
    pub(crate) fn before<E>(
        &self,
        before: impl FnMut(&dyn Middleware) -> Result<(), E>,
        panicked: impl Fn(String) -> E,
    ) -> Result<(), (&str, E)> {
        self.before_counted(before, panicked).map_err(|(_, layer, refusal)| (layer, refusal))
    }

    /// [`Layers::before`], saying on a refusal how many layers' before-hooks ran (the refusing layer's
    /// included), for [`Layers::after_seen`].
    pub(crate) fn before_counted<E>(
        &self,
        mut before: impl FnMut(&dyn Middleware) -> Result<(), E>,
        panicked: impl Fn(String) -> E,
    ) -> Result<(), (usize, &str, E)> {
        for (index, layer) in self.get().unwrap_or_default().iter().enumerate() {
            std::panic::catch_unwind(AssertUnwindSafe(|| before(layer.as_ref())))
                .unwrap_or_else(|panic| Err(panicked(format!("the layer panicked: {}", panic_message(&panic)))))
                .map_err(|refusal| (index + 1, layer.name(), refusal))?;
        }
        Ok(())
    }

    /// Runs `after` on each layer in order, telling each whether it was among the first `seen`, whose
    /// before-hooks ran. A layer that panics is logged and passed over.
    pub(crate) fn after_seen(&self, seen: usize, mut after: impl FnMut(&dyn Middleware, bool)) {
        for (index, layer) in self.get().unwrap_or_default().iter().enumerate() {
            if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| after(layer.as_ref(), index < seen))) {
                let panic = panic_message(&panic);
                tracing::warn!(layer = layer.name(), panic, "a middleware layer's after-hook panicked; passed over");
            }
        }
    }

    /// Runs `after` on each layer in order. A layer that panics is logged and passed over.
    pub(crate) fn after(&self, after: impl Fn(&dyn Middleware)) {
        self.after_seen(usize::MAX, |layer, _| after(layer));
    }
}

impl fmt::Debug for Layers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.get().unwrap_or_default().iter().map(|layer| layer.name())).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Named(&'static str);

    impl Middleware for Named {
        fn name(&self) -> &str {
            self.0
        }

        fn before_handle(&self, _: &Delivery<'_>) -> Result<(), Refusal> {
            if self.0 == "no" { Err("not today".into()) } else { Ok(()) }
        }
    }

    struct Unnamed;
    impl Middleware for Unnamed {}

    #[test]
    fn layers_keep_their_order_and_the_first_refusal_names_its_layer() {
        let bus = Layers::default().with(Arc::new(Named("a")));
        let all = bus.then(&Layers::default().with(Arc::new(Named("no")))).with(Arc::new(Named("b")));
        assert_eq!(format!("{all:?}"), r#"["a", "no", "b"]"#);
        let headers = Headers::new();
        let delivery =
            Delivery { type_name: "t", metric_type: "t", queue: "q", routing_key: "k", headers: &headers, attempt: 1 };
        let mut ran = Vec::new();
        let refused = all.before(
            |layer| {
                ran.push(layer.name().to_owned());
                layer.before_handle(&delivery)
            },
            Refusal::new,
        );
        assert_eq!(refused, Err(("no", Refusal::new("not today"))));
        assert_eq!(ran, ["a", "no"], "the first refusal stops the rest");
        assert!(Layers::default().get().is_none() && Layers::default().then(&Layers::default()).get().is_none());
        assert!(Unnamed.name().ends_with("Unnamed"));
    }
}
