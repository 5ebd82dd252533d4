//! The slot table of the publishes in flight ([`InFlight`]): a slot each, polled only when lapin wakes it, so
//! that taking the list of woken slots after a sync takes every confirm lapin completed before it.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use futures_util::task::AtomicWaker;

use super::{Confirmed, Waiting};

/// The publishes in flight, each polled only when lapin wakes it. (Like `FuturesUnordered`, but its queue of
/// woken publishes is a plain list under a lock, so taking it takes every publish woken so far, which the
/// sync relies on; and each slot keeps its waker, so a publish allocates none.)
#[derive(Default)]
pub(super) struct InFlight {
    slots: Vec<Option<Waiting>>,
    free: Vec<usize>,
    /// The waker of each slot, made once: it puts the slot on `woken`'s list.
    wakers: Vec<Waker>,
    pub(super) woken: Arc<Woken>,
    /// The list being worked through, kept for its capacity.
    taking: Vec<usize>,
    len: usize,
}

/// The slots woken since the list was last taken, and who to tell.
#[derive(Default)]
pub(super) struct Woken {
    slots: Mutex<Vec<usize>>,
    pub(super) driver: AtomicWaker,
}

/// The waker of one slot.
struct SlotWaker {
    slot: usize,
    woken: Arc<Woken>,
}

impl std::task::Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.slots.lock().unwrap_or_else(PoisonError::into_inner).push(self.slot);
        self.woken.driver.wake();
    }
}

impl InFlight {
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a publish, to be polled by the next [`InFlight::completed`].
    pub(super) fn insert(&mut self, waiting: Waiting) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            let slot = self.slots.len() - 1;
            self.wakers.push(Waker::from(Arc::new(SlotWaker { slot, woken: Arc::clone(&self.woken) })));
            slot
        });
        self.slots[slot] = Some(waiting);
        self.len += 1;
        self.woken.slots.lock().unwrap_or_else(PoisonError::into_inner).push(slot);
    }

    /// Polls every publish woken so far and hands those completed to `completed`; `cx` is woken when another
    /// publish is.
    pub(super) fn completed(&mut self, waker: &Waker, mut completed: impl FnMut(u64, lapin::Result<Confirmed>)) {
        self.woken.driver.register(waker);
        std::mem::swap(&mut *self.woken.slots.lock().unwrap_or_else(PoisonError::into_inner), &mut self.taking);
        for slot in self.taking.drain(..) {
            // A slot may be listed twice, or woken late for a publish it held before: polling it again is harmless.
            let Some(waiting) = self.slots[slot].as_mut() else { continue };
            if let Poll::Ready(done) = Pin::new(waiting).poll(&mut Context::from_waker(&self.wakers[slot])) {
                self.slots[slot] = None;
                self.free.push(slot);
                self.len -= 1;
                completed(done.0, done.1);
            }
        }
    }
}
