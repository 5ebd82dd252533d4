//! Direct reply-to in the in-memory broker: a reply address per RPC client, to which a publish hands replies
//! straight (at most once, as RabbitMQ's are; see `Broker::publish`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::mpsc;

use super::{Broker, Canceller, REPLY_PREFIX};
use crate::error::Result;
use crate::transport::{Canceller as AnyCanceller, Consumer, Delivery, ReplyPath, Transport};

impl Broker {
    pub(crate) fn reply_path(&self) -> ReplyPath {
        let address = format!("{REPLY_PREFIX}{}", crate::envelope::new_id());
        let (sender, receiver) = mpsc::unbounded_channel();
        self.lock().replies.insert(address.clone(), sender);
        let canceller = Canceller { state: Arc::downgrade(&self.state), queue: address.as_str().into(), consumer: 0 };
        ReplyPath {
            address: address.as_str().into(),
            requests: Transport::Memory(self.clone()),
            amqp_channel: None,
            replies: Consumer {
                tag: address,
                stream: Box::pin(Replies { receiver, canceller: Some(canceller.clone()) }),
                cancel: AnyCanceller::Memory(canceller),
                generation: 0,
            },
        }
    }
}

/// RPC replies for one client.
struct Replies {
    receiver: mpsc::UnboundedReceiver<Result<Delivery>>,
    canceller: Option<Canceller>,
}

impl Stream for Replies {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.receiver.poll_recv(cx)
    }
}

impl Drop for Replies {
    fn drop(&mut self) {
        if let Some(canceller) = self.canceller.take() {
            canceller.cancel();
        }
    }
}
