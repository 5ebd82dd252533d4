//! Consuming over AMQP: lapin's deliveries as the transport's, and settling them within a deadline.

use super::*;

/// A lapin consumer's deliveries, as the transport's. A stream of its own rather than `StreamExt::map` with a
/// closure: the adapter moved each 432-byte lapin delivery once more on its way (callgrind, W7, Warren against raw
/// lapin in one binary: about 230 instructions of copies a delivery).
pub(super) struct Deliveries {
    consumer: lapin::Consumer,
    names: Names,
    /// Consumed without acknowledgements (direct reply-to): nothing to settle.
    no_ack: bool,
}

impl Deliveries {
    /// `consumer`'s deliveries; `no_ack` for a consumer without acknowledgements (direct reply-to).
    pub(super) fn new(consumer: lapin::Consumer, no_ack: bool) -> Self {
        Deliveries { consumer, names: Names::default(), no_ack }
    }
}

impl Stream for Deliveries {
    type Item = Result<Delivery>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let delivery = match std::task::ready!(Pin::new(&mut this.consumer).poll_next(cx)) {
            None => return Poll::Ready(None),
            Some(Err(error)) => return Poll::Ready(Some(Err(Error::broker("consume", error)))),
            Some(Ok(delivery)) => delivery,
        };
        let no_ack = this.no_ack;
        Poll::Ready(Some(Ok(from_lapin(delivery, &mut this.names, |acker| {
            if no_ack { Acker::None } else { Acker::Amqp(AmqpAcker(acker)) }
        }))))
    }
}

/// A consumer's last exchange and routing key: a queue's deliveries nearly always repeat them, and sharing
/// the previous one's saves two allocations per delivery.
#[derive(Default)]
pub(super) struct Names {
    exchange: Option<Arc<str>>,
    routing_key: Option<Arc<str>>,
}

/// `name` as an `Arc<str>`: `last`'s if it is the same, else a new one, remembered.
pub(super) fn shared(last: &mut Option<Arc<str>>, name: &str) -> Arc<str> {
    match last {
        Some(same) if **same == *name => Arc::clone(same),
        _ => Arc::clone(last.insert(Arc::from(name))),
    }
}

/// A lapin delivery as the transport's, settled through `acker` (given lapin's acker).
pub(super) fn from_lapin(
    d: lapin::message::Delivery,
    names: &mut Names,
    acker: impl FnOnce(lapin::Acker) -> Acker,
) -> Delivery {
    Delivery {
        message: Arc::new(Message::new(
            shared(&mut names.exchange, d.exchange.as_str()),
            shared(&mut names.routing_key, d.routing_key.as_str()),
            Properties::Delivered(Inline(properties::Delivered::new(d.properties))),
            d.data,
        )),
        redelivered: d.redelivered,
        acker: acker(d.acker),
    }
}

/// How long an ack, nack or reject may take to be written. Past it, the connection is as good as gone: the
/// delivery counts as not settled, and the broker redelivers it once it notices. Without a limit, a consumer
/// whose connection died under it (lapin does not always fail the pending write) would wait forever instead
/// of consuming again.
pub(super) const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) async fn settle(AmqpAcker(acker): &AmqpAcker, how: Settle) -> bool {
    let settling = async {
        match how {
            Settle::Ack => acker.ack(BasicAckOptions::default()).await,
            Settle::Requeue => acker.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await,
            Settle::Reject => acker.reject(BasicRejectOptions { requeue: false }).await,
        }
    };
    matches!(tokio::time::timeout(SETTLE_TIMEOUT, settling).await, Ok(Ok(true)))
}

pub(crate) async fn ack_multiple(AmqpAcker(last): &AmqpAcker) -> bool {
    let acking = last.ack(BasicAckOptions { multiple: true });
    matches!(tokio::time::timeout(SETTLE_TIMEOUT, acking).await, Ok(Ok(true)))
}

pub(crate) async fn cancel(Cancel(channel): &Cancel, tag: &str, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, channel.basic_cancel(ShortString::from(tag), BasicCancelOptions::default()))
        .await;
    close_quietly(channel).await;
}
