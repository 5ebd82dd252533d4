//! Closing the WebSockets on shutdown: axum's graceful shutdown stops accepting and finishes HTTP requests, but
//! an upgraded socket is no longer its business. [`Shutdown::close`] sends each one a close frame (1001,
//! "shutdown") and waits for them to end.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

/// A handle that closes the gateway's WebSockets; give a clone to [`crate::GatewayConfig::shutdown`].
#[derive(Debug, Clone)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    closing: watch::Sender<bool>,
    open: AtomicUsize,
    all_closed: Notify,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A handle no socket has seen yet.
    pub fn new() -> Self {
        let (closing, _) = watch::channel(false);
        Shutdown { inner: Arc::new(Inner { closing, open: AtomicUsize::new(0), all_closed: Notify::new() }) }
    }

    /// Tells every open socket to close, and waits at most `within` for them to; returns how many were still
    /// open then. Sockets opened afterwards are closed at once.
    pub async fn close(&self, within: Duration) -> usize {
        self.inner.closing.send_replace(true);
        let _ = tokio::time::timeout(within, async {
            loop {
                let notified = self.inner.all_closed.notified();
                if self.inner.open.load(Ordering::Acquire) == 0 {
                    break;
                }
                notified.await;
            }
        })
        .await;
        self.inner.open.load(Ordering::Acquire)
    }

    /// Whether [`Shutdown::close`] was called.
    pub fn is_closing(&self) -> bool {
        *self.inner.closing.borrow()
    }

    /// A socket opens: the guard counts it until dropped, and `closing` says when to close it.
    pub(crate) fn open(&self) -> (Open, watch::Receiver<bool>) {
        self.inner.open.fetch_add(1, Ordering::AcqRel);
        (Open(self.inner.clone()), self.inner.closing.subscribe())
    }
}

/// One open socket, counted until dropped.
#[derive(Debug)]
pub(crate) struct Open(Arc<Inner>);

impl Drop for Open {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.all_closed.notify_waiters();
        }
    }
}
