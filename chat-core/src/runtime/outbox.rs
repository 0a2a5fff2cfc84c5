//! The queue between the driver and one connection: frames for the session, then at
//! most one close.
//!
//! One producer (the driver) and one consumer (the connection's task), so the queue is a
//! `VecDeque` behind a mutex that only these two ever take, each for a few nanoseconds:
//! no lock is shared between sessions. What makes it cheaper than a tokio channel for
//! fan-out is the wake-up rule: the consumer leaves its waker only when it found the
//! queue empty, so a burst of frames wakes the connection once, not once per frame,
//! and the consumer takes a whole batch under one lock. An empty queue holds no memory.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use super::Outbound;

/// Why [`OutboxTx::try_send`] did not queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The queue holds its capacity: the session does not read fast enough.
    Full,
    /// The connection is gone.
    Closed,
}

struct State {
    frames: VecDeque<Outbound>,
    /// The consumer's waker, left when it found the queue empty.
    waker: Option<Waker>,
    sender_gone: bool,
    receiver_gone: bool,
}

/// Slots an empty queue keeps: a queue drained after a backlog (a slow reader, a
/// stalled server) gives the rest back, so what a connection holds between bursts is at
/// most this many slots, not its largest backlog.
const KEEP_SLOTS: usize = 64;

impl State {
    /// The next item; a queue that is then empty keeps at most [`KEEP_SLOTS`] slots.
    fn pop(&mut self) -> Option<Outbound> {
        let item = self.frames.pop_front();
        self.give_back();
        item
    }

    /// Frees an empty queue's slots beyond [`KEEP_SLOTS`].
    fn give_back(&mut self) {
        if self.frames.is_empty() && self.frames.capacity() > KEEP_SLOTS {
            self.frames = VecDeque::new();
        }
    }

    /// Leaves the consumer's waker for the next item (or the end of the queue).
    fn park(&mut self, cx: &Context<'_>) {
        match &mut self.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
    }
}

struct Shared {
    state: Mutex<State>,
    capacity: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; recover the data regardless.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A bounded queue for one session, holding at most `capacity` items.
pub(crate) fn outbox(capacity: usize) -> (OutboxTx, Outbox) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            frames: VecDeque::new(),
            waker: None,
            sender_gone: false,
            receiver_gone: false,
        }),
        capacity: capacity.max(1),
    });
    (
        OutboxTx {
            shared: shared.clone(),
        },
        Outbox { shared },
    )
}

/// The driver's end. Dropping it ends the queue after what it holds.
pub(crate) struct OutboxTx {
    shared: Arc<Shared>,
}

impl OutboxTx {
    /// Queues `item` unless the queue is full or its connection is gone.
    pub(crate) fn try_send(&self, item: Outbound) -> Result<(), Refused> {
        let mut state = self.shared.lock();
        if state.receiver_gone {
            return Err(Refused::Closed);
        }
        if state.frames.len() >= self.shared.capacity {
            return Err(Refused::Full);
        }
        state.frames.push_back(item);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }
}

impl Drop for OutboxTx {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.sender_gone = true;
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// A session's outgoing frames, ending with a close from the core, or with `None` when
/// the core dropped the session without one (a slow consumer) or the hub stopped.
pub struct Outbox {
    shared: Arc<Shared>,
}

impl Outbox {
    /// The next item; `None` once the queue has ended and is empty.
    pub async fn recv(&mut self) -> Option<Outbound> {
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            if let Some(item) = state.pop() {
                return Poll::Ready(Some(item));
            }
            if state.sender_gone {
                return Poll::Ready(None);
            }
            state.park(cx);
            Poll::Pending
        })
        .await
    }

    /// The next item if one is queued: `Ok(None)` when none is, `Err(())` once the queue
    /// has ended and is empty.
    #[allow(clippy::result_unit_err)]
    pub fn try_recv(&mut self) -> Result<Option<Outbound>, ()> {
        let mut state = self.shared.lock();
        match state.pop() {
            Some(item) => Ok(Some(item)),
            None if state.sender_gone => Err(()),
            None => Ok(None),
        }
    }

    /// Moves up to `limit` queued items into `into` under one lock: ready with how many,
    /// or with 0 once the queue has ended and is empty; pending (and woken by the next
    /// item) when it is empty.
    pub fn poll_recv_many(
        &mut self,
        cx: &mut Context<'_>,
        into: &mut Vec<Outbound>,
        limit: usize,
    ) -> Poll<usize> {
        self.poll_recv_batch(cx, into, limit, usize::MAX)
    }

    /// As [`Outbox::poll_recv_many`], also stopping once the frames taken hold
    /// `max_bytes` (at least one item is taken): a writer's batch stays bounded in bytes
    /// whatever the frame sizes.
    pub fn poll_recv_batch(
        &mut self,
        cx: &mut Context<'_>,
        into: &mut Vec<Outbound>,
        limit: usize,
        max_bytes: usize,
    ) -> Poll<usize> {
        let mut state = self.shared.lock();
        if state.frames.is_empty() {
            if state.sender_gone {
                return Poll::Ready(0);
            }
            state.park(cx);
            return Poll::Pending;
        }
        let mut n = 0;
        let mut bytes = 0usize;
        for item in state.frames.iter().take(limit.max(1)) {
            if n > 0 && bytes >= max_bytes {
                break;
            }
            bytes = bytes.saturating_add(match item {
                Outbound::Frame(frame) => frame.bytes().len(),
                Outbound::Close(_) => 0,
            });
            n += 1;
        }
        into.reserve(n);
        into.extend(state.frames.drain(..n));
        state.give_back();
        Poll::Ready(n)
    }

    /// Items waiting.
    #[must_use]
    pub fn len(&self) -> usize {
        self.shared.lock().frames.len()
    }

    /// Whether nothing is waiting.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the core has let go of the session (nothing more will be queued).
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.shared.lock().sender_gone
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.receiver_gone = true;
        state.frames = VecDeque::new();
    }
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("Outbox")
            .field("queued", &state.frames.len())
            .field("capacity", &self.shared.capacity)
            .field("closed", &state.sender_gone)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::CloseReason;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn close() -> Outbound {
        Outbound::Close(CloseReason::Shutdown)
    }

    #[test]
    fn a_burst_wakes_the_consumer_once_and_is_taken_in_one_batch() {
        let (tx, mut rx) = outbox(8);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut got = Vec::new();
        assert_eq!(rx.poll_recv_many(&mut cx, &mut got, 64), Poll::Pending);
        for _ in 0..5 {
            tx.try_send(close()).unwrap();
        }
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "one wake for five items");
        assert_eq!(rx.poll_recv_many(&mut cx, &mut got, 3), Poll::Ready(3));
        assert_eq!(rx.poll_recv_many(&mut cx, &mut got, 64), Poll::Ready(2));
        assert_eq!(got.len(), 5);
    }

    #[test]
    fn a_batch_stops_at_its_byte_budget_but_always_takes_one() {
        use crate::protocol::{Encoded, ErrorCode, ServerFrame};
        let (tx, mut rx) = outbox(8);
        let frame = |len: usize| {
            Encoded::new(&ServerFrame::Error {
                id: None,
                code: ErrorCode::BadFrame,
                message: "x".repeat(len),
            })
        };
        let (small, big) = (frame(10), frame(1000));
        for f in [&small, &small, &small, &big] {
            tx.try_send(Outbound::Frame(f.clone())).unwrap();
        }
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut got = Vec::new();
        let two = 2 * small.bytes().len();
        assert_eq!(
            rx.poll_recv_batch(&mut cx, &mut got, 64, two),
            Poll::Ready(2)
        );
        assert_eq!(rx.poll_recv_batch(&mut cx, &mut got, 64, 5), Poll::Ready(1));
        assert_eq!(
            rx.poll_recv_batch(&mut cx, &mut got, 64, 5),
            Poll::Ready(1),
            "one over"
        );
        assert_eq!(got.len(), 4);
    }

    #[test]
    fn a_drained_backlog_gives_its_memory_back() {
        // A slow reader's backlog fills the queue to its limit; once the reader has
        // caught up the queue must not keep the backlog's slots (40 bytes each, for
        // every connection that ever fell behind).
        let (tx, mut rx) = outbox(1024);
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        for round in 0..2 {
            for _ in 0..1024 {
                tx.try_send(close()).unwrap();
            }
            assert!(rx.shared.lock().frames.capacity() >= 1024);
            let mut got = Vec::new();
            if round == 0 {
                while let Poll::Ready(n) = rx.poll_recv_batch(&mut cx, &mut got, 100, usize::MAX) {
                    assert!(n > 0);
                }
            } else {
                while let Ok(Some(_)) = rx.try_recv() {}
            }
            let kept = rx.shared.lock().frames.capacity();
            assert!(
                kept <= KEEP_SLOTS,
                "round {round}: {kept} slots kept after the backlog"
            );
        }
    }

    #[test]
    fn full_closed_and_ended() {
        let (tx, mut rx) = outbox(2);
        tx.try_send(close()).unwrap();
        tx.try_send(close()).unwrap();
        assert_eq!(tx.try_send(close()), Err(Refused::Full));
        assert!(!rx.is_closed());
        drop(tx);
        assert!(rx.is_closed());
        assert!(
            matches!(rx.try_recv(), Ok(Some(_))),
            "what was queued is still read"
        );
        assert!(matches!(rx.try_recv(), Ok(Some(_))));
        assert_eq!(rx.try_recv().map(|o| o.is_some()), Err(()));

        let (tx, rx) = outbox(2);
        drop(rx);
        assert_eq!(tx.try_send(close()), Err(Refused::Closed));
    }

    #[test]
    fn dropping_the_sender_wakes_a_waiting_consumer() {
        let (tx, mut rx) = outbox(2);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        assert_eq!(
            rx.poll_recv_many(&mut cx, &mut Vec::new(), 1),
            Poll::Pending
        );
        drop(tx);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(
            rx.poll_recv_many(&mut cx, &mut Vec::new(), 1),
            Poll::Ready(0)
        );
    }
}
