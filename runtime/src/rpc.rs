//! RPC over RabbitMQ: requests to the service's queue, replies over direct reply-to.
//!
//! Each bus has one long-lived reply consumer on `amq.rabbitmq.reply-to` (no-ack, as RabbitMQ requires),
//! on the same channel the requests are published on; replies are matched to calls by correlation id.
//! Servers publish replies without `mandatory` (RabbitMQ ≤ 4.1 would return every direct reply otherwise).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};
use tokio::sync::{Semaphore, oneshot, watch};

use crate::bus::{Bus, Durability, close_quietly};
use crate::contract::{MethodSpec, ServiceSpec};
use crate::envelope::{self, header_i64, header_str, short};
use crate::error::{Error, Result, deadline};
use crate::status::{Code, Status};

const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// A boxed future, as returned by generated dispatch code.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Reply>>>>;

struct Reply {
    code: i32,
    message: String,
    payload: Vec<u8>,
}

/// The bus's reply consumer and request channel.
pub(crate) struct ReplyChannel {
    channel: Channel,
    pending: Pending,
}

impl ReplyChannel {
    async fn open(bus: &Bus) -> Result<ReplyChannel> {
        let timeout = bus.config().operation_timeout;
        let channel = bus.channel().await?;
        deadline(
            "confirm select",
            timeout,
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        let mut consumer = deadline(
            "basic consume (reply-to)",
            timeout,
            channel.basic_consume(
                ShortString::from(REPLY_TO),
                ShortString::from(format!("replies.{}", envelope::new_id())),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await?;
        let pending: Pending = Arc::default();
        let routes = Arc::clone(&pending);
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let Some(id) = short(delivery.properties.correlation_id()) else {
                    continue;
                };
                let waiter = routes.lock().expect("pending calls").remove(id);
                match waiter {
                    Some(waiter) => {
                        let headers = delivery.properties.headers();
                        let _ = waiter.send(Reply {
                            code: header_i64(headers, envelope::STATUS_CODE)
                                .map_or(0, |c| c as i32),
                            message: header_str(headers, envelope::STATUS_MESSAGE)
                                .unwrap_or_default(),
                            payload: delivery.data,
                        });
                    }
                    None => tracing::debug!(
                        correlation_id = id,
                        "reply for a call that already gave up; dropped"
                    ),
                }
            }
            // The channel is gone: fail every waiting call now rather than at its deadline.
            routes.lock().expect("pending calls").clear();
        });
        Ok(ReplyChannel { channel, pending })
    }
}

/// Calls methods of one service. Used by generated clients.
#[derive(Debug, Clone)]
pub struct RpcClient {
    bus: Bus,
    service: &'static ServiceSpec,
    timeout: Option<Duration>,
}

impl RpcClient {
    /// A client for `service` over `bus`.
    pub fn new(bus: &Bus, service: &'static ServiceSpec) -> Self {
        RpcClient {
            bus: bus.clone(),
            service,
            timeout: None,
        }
    }

    /// Uses `timeout` as every call's deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Calls `method` with `request` and waits for the typed reply, or a [`Status`] error, within the deadline.
    pub async fn call<Req, Resp>(
        &self,
        method: &MethodSpec,
        request: &Req,
    ) -> std::result::Result<Resp, Status>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let timeout = self
            .timeout
            .or(method.timeout)
            .unwrap_or(self.service.default_timeout);
        let started = Instant::now();
        let payload = self
            .call_raw(method, request.encode_to_vec(), timeout, started)
            .await?;
        Resp::decode(payload.as_slice())
            .map_err(|e| Status::internal(format!("reply of {method} did not decode: {e}")))
    }

    async fn call_raw(
        &self,
        method: &MethodSpec,
        payload: Vec<u8>,
        timeout: Duration,
        started: Instant,
    ) -> std::result::Result<Vec<u8>, Status> {
        let bus = &self.bus;
        let replies = bus
            .inner
            .replies
            .get_or_try_init(|| ReplyChannel::open(bus))
            .await?;
        // Declared by callers too, so requests wait in the queue for a server that starts late, instead of
        // being returned as unroutable; each request expires with its deadline, so none piles up.
        bus.declare_queue(
            self.service.queue,
            Durability::Durable,
            FieldTable::default(),
        )
        .await?;
        let limit = bus.config().max_message_size;
        if payload.len() > limit {
            return Err(Error::TooLarge {
                size: payload.len(),
                limit,
            }
            .into());
        }

        let id = envelope::new_id();
        let (tx, rx) = oneshot::channel();
        replies
            .pending
            .lock()
            .expect("pending calls")
            .insert(id.clone(), tx);
        let guard = PendingGuard {
            pending: &replies.pending,
            id: &id,
        };
        let expiration = timeout.as_millis().max(1).to_string();
        let properties = envelope::properties(
            method.path,
            &bus.config().service_name,
            id.clone(),
            id.clone(),
        )
        .with_reply_to(ShortString::from(REPLY_TO))
        .with_expiration(ShortString::from(expiration));
        let deadline_error = || {
            Status::deadline_exceeded(format!(
                "{method} got no reply within {timeout:?} (is a server running?)"
            ))
        };
        let publish = async {
            let confirm = replies
                .channel
                .basic_publish(
                    ShortString::from(""),
                    ShortString::from(self.service.queue),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &payload,
                    properties,
                )
                .await?;
            confirm.await
        };
        let remaining = timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(remaining, publish).await {
            Err(_) => return Err(deadline_error()),
            Ok(Err(error)) => {
                return Err(Status::unavailable(format!(
                    "{method}: request not sent: {error}"
                )));
            }
            Ok(Ok(Confirmation::Ack(Some(_)))) => {
                return Err(Status::unavailable(format!(
                    "{method}: no queue \"{}\" to take the request",
                    self.service.queue
                )));
            }
            Ok(Ok(Confirmation::Nack(_))) => {
                return Err(Status::unavailable(format!(
                    "{method}: the broker refused the request"
                )));
            }
            Ok(Ok(_)) => {}
        }
        let remaining = timeout.saturating_sub(started.elapsed());
        let reply = match tokio::time::timeout(remaining, rx).await {
            Err(_) => return Err(deadline_error()),
            Ok(Err(_)) => {
                return Err(Status::unavailable(format!(
                    "{method}: the reply channel closed"
                )));
            }
            Ok(Ok(reply)) => reply,
        };
        drop(guard);
        match Code::from_i32(reply.code) {
            Code::Ok => Ok(reply.payload),
            code => Err(Status::new(code, reply.message)),
        }
    }
}

/// Removes a call's entry when the call ends for any reason, so gave-up calls leave nothing behind.
struct PendingGuard<'a> {
    pending: &'a Pending,
    id: &'a str,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.pending.lock().expect("pending calls").remove(self.id);
    }
}

/// What a server handler knows about a request beyond its payload.
#[derive(Debug, Clone)]
pub struct RpcContext {
    method: String,
    caller: Option<String>,
    message_id: Option<String>,
    deadline: Option<Instant>,
}

impl RpcContext {
    /// The method's path, e.g. `/at.v1.IntSummator/IntSum`.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The calling service's name (its `app_id`).
    pub fn caller(&self) -> Option<&str> {
        self.caller.as_deref()
    }

    /// The request's unique id.
    pub fn message_id(&self) -> Option<&str> {
        self.message_id.as_deref()
    }

    /// When the caller stops waiting, as far as the request says; work past it is wasted.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

type Handler = dyn Fn(String, Vec<u8>, RpcContext) -> BoxFuture<std::result::Result<Vec<u8>, Status>>
    + Send
    + Sync;

/// A running RPC server. Dropping it leaves it running; call [`Serving::stop`] to end it.
#[derive(Debug)]
pub struct Serving {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Serving {
    /// Stops taking requests, lets running ones reply, and closes the channel.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

const SERVER_CONCURRENCY: usize = 64;

/// Serves `service` on its queue with `handler`. Used by generated servers.
pub async fn serve<F>(bus: &Bus, service: &'static ServiceSpec, handler: F) -> Result<Serving>
where
    F: Fn(String, Vec<u8>, RpcContext) -> BoxFuture<std::result::Result<Vec<u8>, Status>>
        + Send
        + Sync
        + 'static,
{
    let handler: Arc<Handler> = Arc::new(handler);
    let timeout = bus.config().operation_timeout;
    bus.declare_queue(service.queue, Durability::Durable, FieldTable::default())
        .await?;
    let channel = bus.channel().await?;
    deadline(
        "basic qos",
        timeout,
        channel.basic_qos(SERVER_CONCURRENCY as u16, BasicQosOptions::default()),
    )
    .await?;
    let mut consumer = deadline(
        "basic consume",
        timeout,
        channel.basic_consume(
            ShortString::from(service.queue),
            ShortString::from(format!("{}.{}", service.name, envelope::new_id())),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    // Replies go out on their own channel, unconfirmed: direct reply-to is at-most-once anyway.
    let replies = bus.channel().await?;
    let (stop, mut stopped) = watch::channel(false);
    let limit = Arc::new(Semaphore::new(SERVER_CONCURRENCY));
    let app_id = bus.config().service_name.clone();
    let task = tokio::spawn(async move {
        loop {
            let delivery = tokio::select! {
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(error)) => {
                        tracing::warn!(service = service.name, %error, "server consumer failed; stopping");
                        break;
                    }
                    None => break,
                },
                _ = stopped.changed() => break,
            };
            let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
                break;
            };
            let handler = Arc::clone(&handler);
            let replies = replies.clone();
            let app_id = app_id.clone();
            tokio::spawn(async move {
                let p = &delivery.properties;
                let method = short(p.kind()).unwrap_or_default().to_owned();
                let deadline = short(p.expiration())
                    .and_then(|ms| ms.parse::<u64>().ok())
                    .map(|ms| Instant::now() + Duration::from_millis(ms));
                let context = RpcContext {
                    method: method.clone(),
                    caller: short(p.app_id()).map(str::to_owned),
                    message_id: short(p.message_id()).map(str::to_owned),
                    deadline,
                };
                let result = handler(method, delivery.data.clone(), context).await;
                if let (Some(reply_to), Some(correlation_id)) =
                    (short(p.reply_to()), short(p.correlation_id()))
                {
                    let (payload, code, message) = match result {
                        Ok(payload) => (payload, 0, String::new()),
                        Err(status) => (
                            Vec::new(),
                            status.code().as_i32(),
                            status.message().to_owned(),
                        ),
                    };
                    let mut headers = FieldTable::default();
                    headers.insert(
                        ShortString::from(envelope::STATUS_CODE),
                        AMQPValue::LongInt(code),
                    );
                    headers.insert(
                        ShortString::from(envelope::STATUS_MESSAGE),
                        envelope::long_string(&message),
                    );
                    let properties = BasicProperties::default()
                        .with_correlation_id(ShortString::from(correlation_id))
                        .with_app_id(ShortString::from(app_id.as_str()))
                        .with_content_type(ShortString::from(envelope::CONTENT_TYPE_PROTOBUF))
                        .with_headers(headers);
                    let sent = tokio::time::timeout(
                        timeout,
                        replies.basic_publish(
                            ShortString::from(""),
                            ShortString::from(reply_to),
                            BasicPublishOptions::default(),
                            &payload,
                            properties,
                        ),
                    )
                    .await;
                    if !matches!(sent, Ok(Ok(_))) {
                        tracing::warn!(
                            correlation_id,
                            "reply could not be sent; the caller will time out"
                        );
                    }
                }
                let _ = delivery.ack(BasicAckOptions::default()).await;
                drop(permit);
            });
        }
        let _ = tokio::time::timeout(timeout, limit.acquire_many(SERVER_CONCURRENCY as u32)).await;
        close_quietly(&channel).await;
        close_quietly(&replies).await;
    });
    Ok(Serving { stop, task })
}

/// Decodes a request, or answers `INVALID_ARGUMENT` naming the type and the problem.
pub fn decode_request<M: prost::Message + Default>(
    payload: &[u8],
) -> std::result::Result<M, Status> {
    crate::contract::decode::<M>(payload).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// The status for a method the server does not have.
pub fn unimplemented(method: &str) -> Status {
    Status::unimplemented(format!("this server has no method \"{method}\""))
}

/// Encodes a reply.
pub fn encode<M: prost::Message>(message: &M) -> Vec<u8> {
    message.encode_to_vec()
}
