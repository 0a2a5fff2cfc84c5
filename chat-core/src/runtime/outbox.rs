//! The queue between the driver and one connection: frames for the session, then at
//! most one close.
//!
//! One producer (the driver) and one consumer (the connection's task), so the queue is a
//! `VecDeque` behind a mutex that only these two ever take, each for a few nanoseconds:
//! no lock is shared between sessions. What makes it cheaper than a tokio channel for
//! fan-out is the wake-up rule: the consumer leaves its waker only when it found the
//! queue empty, so a burst of frames wakes the connection once, not once per frame,
//! and the consumer takes a whole batch under one lock. An empty queue holds no memory.
//!
//! The close is kept beside the queue, not in it: it needs no room, so a session closed
//! because its queue is full (a slow consumer) still learns why.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use super::transport::{BatchLimit, Outbound};
use crate::server::CloseReason;

/// Why [`OutboxTx::try_send`] did not queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The queue holds its capacity: the session does not read fast enough.
    Full,
    /// The connection is gone.
    Closed,
}

struct State {
    /// Frames only: the close is `close`.
    frames: VecDeque<Outbound>,
    /// The consumer's waker, left when it found the queue empty.
    waker: Option<Waker>,
    /// The transport's reader, waiting in [`Inbound::poll_ready`] for the queue to be
    /// less than half full (transport rule 3).
    ///
    /// [`Inbound::poll_ready`]: super::transport::Inbound::poll_ready
    ready_waker: Option<Waker>,
    /// The engine's close, delivered after the frames.
    close: Option<CloseReason>,
    /// Whether the consumer has taken the close.
    close_taken: bool,
    sender_gone: bool,
    receiver_gone: bool,
    /// Frames the session is still owed for input its transport handed over, not yet
    /// settled by the driver (transport rule 3 counts them with the queued frames).
    owed: usize,
    /// The bytes of the queued frames (a frame shared with other sessions counts in
    /// full in each queue that holds it).
    bytes: usize,
    /// A reliable frame was refused (the queue was full): every later frame is refused
    /// too, until the close the core sends for it. Otherwise a frame queued after the
    /// reader freed some room would follow the hole, and the client, resuming from the
    /// last seq it saw, would never get the refused message.
    refusing: bool,
}

/// Slots an empty queue keeps: a queue drained after a backlog (a slow reader, a
/// stalled server) gives the rest back, so what a connection holds between bursts is at
/// most this many slots, not its largest backlog.
const KEEP_SLOTS: usize = 64;

impl State {
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

    /// Whether the queue, with the answers still owed, is half full or more, in frames
    /// or in bytes.
    fn filling(&self, limit: Limit) -> bool {
        2 * (self.frames.len() + self.owed) >= limit.frames || 2 * self.bytes >= limit.bytes
    }
}

/// What one queue holds at most: frames, and bytes of frames.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limit {
    /// Frames ([`HubConfig::outbound_queue`](super::HubConfig::outbound_queue)).
    pub(crate) frames: usize,
    /// Bytes ([`HubConfig::outbound_bytes`](super::HubConfig::outbound_bytes)); one frame
    /// larger than this is still taken into an empty queue.
    pub(crate) bytes: usize,
}

struct Shared {
    state: Mutex<State>,
    limit: Limit,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; recover the data regardless.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A bounded queue for one session, holding at most `limit` frames and bytes.
pub(crate) fn outbox(limit: Limit) -> (OutboxTx, Outbox) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            frames: VecDeque::new(),
            waker: None,
            ready_waker: None,
            close: None,
            close_taken: false,
            sender_gone: false,
            receiver_gone: false,
            owed: 0,
            bytes: 0,
            refusing: false,
        }),
        limit: Limit {
            frames: limit.frames.max(1),
            bytes: limit.bytes.max(1),
        },
    });
    (
        OutboxTx {
            shared: shared.clone(),
        },
        Outbox { shared },
    )
}

/// The driver's end. Dropping it ends the queue after what it holds, without a close.
pub(crate) struct OutboxTx {
    shared: Arc<Shared>,
}

impl OutboxTx {
    /// Queues a frame unless the queue is full or its connection is gone.
    pub(crate) fn try_send(&self, item: Outbound) -> Result<(), Refused> {
        debug_assert!(
            matches!(item, Outbound::Frame(_)),
            "closes go through close()"
        );
        let mut state = self.shared.lock();
        if state.receiver_gone || state.refusing {
            return Err(Refused::Closed);
        }
        let (len, ephemeral) = match &item {
            Outbound::Frame(frame) => (frame.bytes().len(), frame.is_ephemeral()),
            Outbound::Close(_) => (0, false),
        };
        let limit = self.shared.limit;
        if state.frames.len() >= limit.frames
            || (!state.frames.is_empty() && state.bytes.saturating_add(len) > limit.bytes)
        {
            state.refusing = !ephemeral;
            return Err(Refused::Full);
        }
        state.bytes += len;
        state.frames.push_back(item);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }
}

impl OutboxTx {
    /// The driver settles `n` answers owed (see [`Owed`]): their frames are queued now,
    /// or the input that owed them made none. Wakes a consumer that waits for the queue
    /// when this takes it below half, as its transport may have stopped reading for them.
    pub(crate) fn settle(&self, n: usize) {
        let mut state = self.shared.lock();
        let was = state.filling(self.shared.limit);
        state.owed = state.owed.saturating_sub(n);
        let (waker, ready) = if was && !state.filling(self.shared.limit) {
            (state.waker.take(), state.ready_waker.take())
        } else {
            (None, None)
        };
        drop(state);
        for waker in [waker, ready].into_iter().flatten() {
            waker.wake();
        }
    }

    /// Ends the queue with `reason`, after the frames it holds, full or not.
    pub(crate) fn close(self, reason: CloseReason) {
        self.shared.lock().close = Some(reason);
        // Dropping `self` wakes the consumer.
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

/// The answers a session is owed for the input its transport has handed over: the
/// [`Inbound`](super::transport::Inbound) side adds when it hands an input over, the
/// driver settles ([`OutboxTx::settle`]) once the input's answers are in the queue.
#[derive(Clone)]
pub(crate) struct Owed(Arc<Shared>);

impl Owed {
    /// `n` more answers are owed.
    pub(crate) fn add(&self, n: usize) {
        let mut state = self.0.lock();
        state.owed = state.owed.saturating_add(n);
    }

    /// Ready once the queue, with what is owed, is below half full; pending until then,
    /// woken when the queue is read or the answers settle below half. Ready too once
    /// the queue has ended (nothing more will be queued or read).
    pub(crate) fn poll_room(&self, cx: &Context<'_>) -> Poll<()> {
        let mut state = self.0.lock();
        if !state.filling(self.0.limit) || state.sender_gone || state.receiver_gone {
            return Poll::Ready(());
        }
        match &mut state.ready_waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// A session's outgoing frames, for its transport to write: [`Outbound::Frame`]s, then
/// one [`Outbound::Close`] with the engine's reason. It ends without a close when this
/// side disconnected or the hub's task is gone. Dropping it drops what is queued.
pub struct Outbox {
    shared: Arc<Shared>,
}

impl Outbox {
    /// Moves the next batch into `into` under one lock, bounded by `limit`: ready with
    /// how many items were added (the close comes after the last frame, in the same
    /// batch when it has room), or with 0 once the queue has ended and everything was
    /// taken; pending while it is empty (the task is woken by the next item, once per
    /// burst).
    pub fn poll_recv_many(
        &mut self,
        cx: &mut Context<'_>,
        into: &mut Vec<Outbound>,
        limit: BatchLimit,
    ) -> Poll<usize> {
        let max_frames = limit.frames.max(1);
        let mut state = self.shared.lock();
        let was_filling = state.filling(self.shared.limit);
        let mut n = 0;
        let mut bytes = 0usize;
        for item in state.frames.iter().take(max_frames) {
            if n > 0 && bytes >= limit.bytes {
                break;
            }
            bytes = bytes.saturating_add(match item {
                Outbound::Frame(frame) => frame.bytes().len(),
                Outbound::Close(_) => 0,
            });
            n += 1;
        }
        if n > 0 {
            into.reserve(n);
            into.extend(state.frames.drain(..n));
            state.bytes = state.bytes.saturating_sub(bytes);
            state.give_back();
            if was_filling
                && !state.filling(self.shared.limit)
                && let Some(ready) = state.ready_waker.take()
            {
                ready.wake();
            }
        }
        if state.frames.is_empty()
            && n < max_frames
            && !state.close_taken
            && let Some(reason) = state.close
        {
            state.close_taken = true;
            into.push(Outbound::Close(reason));
            n += 1;
        }
        if n > 0 {
            return Poll::Ready(n);
        }
        if state.sender_gone {
            return Poll::Ready(0);
        }
        state.park(cx);
        Poll::Pending
    }

    /// Waits for the next batch: [`Outbox::poll_recv_many`] as a future. Cancel-safe:
    /// nothing is taken unless it completes.
    pub async fn recv_many(&mut self, into: &mut Vec<Outbound>, limit: BatchLimit) -> usize {
        poll_fn(|cx| self.poll_recv_many(cx, into, limit)).await
    }

    /// One item, for [`super::transport::Connection::recv`] and tests.
    pub(crate) async fn recv(&mut self) -> Option<Outbound> {
        let mut one = Vec::with_capacity(1);
        let limit = BatchLimit {
            frames: 1,
            bytes: usize::MAX,
        };
        match self.recv_many(&mut one, limit).await {
            0 => None,
            _ => one.pop(),
        }
    }

    /// How many frames wait in the queue now.
    #[must_use]
    pub fn queued(&self) -> usize {
        self.shared.lock().frames.len()
    }

    /// How many frames the queue holds before the engine closes the session as a slow
    /// consumer ([`HubConfig::outbound_queue`](super::HubConfig::outbound_queue)).
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.shared.limit.frames
    }

    /// How many bytes of frames wait in the queue now.
    #[must_use]
    pub fn queued_bytes(&self) -> usize {
        self.shared.lock().bytes
    }

    /// How many bytes of frames the queue holds before the engine closes the session as
    /// a slow consumer ([`HubConfig::outbound_bytes`](super::HubConfig::outbound_bytes)).
    #[must_use]
    pub fn capacity_bytes(&self) -> usize {
        self.shared.limit.bytes
    }

    /// Whether the queue is half full or more (in frames or in bytes), counting the answers the session is still
    /// owed for input already handed to the hub (an ack and its own message for each
    /// send, one frame for anything else) as if they were queued: a transport hands over
    /// no more of the peer's input until its writer has taken the queue below half and
    /// the hub has answered what it was given (rule 3 of the
    /// [transport API](super::transport)), so a peer that sends fast but reads is slowed
    /// to the pace of its own answers instead of being closed for them. The outbox wakes
    /// its reader when the answers settle below half with nothing to write.
    #[must_use]
    pub fn is_filling(&self) -> bool {
        self.shared.lock().filling(self.shared.limit)
    }

    /// How many frames the session is still owed for input handed to the hub that has
    /// not been answered yet (its answers are not queued).
    #[must_use]
    pub fn owed(&self) -> usize {
        self.shared.lock().owed
    }

    /// The handle its [`Inbound`](super::transport::Inbound) counts owed answers with.
    pub(crate) fn owed_handle(&self) -> Owed {
        Owed(self.shared.clone())
    }

    /// Why the engine closed the session, as soon as it has, even while frames before
    /// the close still wait: a writer stuck behind a peer that reads nothing can stop
    /// trying. `None` while the session is open or when it ended without a close.
    #[must_use]
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.lock().close
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.receiver_gone = true;
        state.frames = VecDeque::new();
        state.bytes = 0;
    }
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("Outbox")
            .field("queued", &state.frames.len())
            .field("owed", &state.owed)
            .field("bytes", &state.bytes)
            .field("limit", &self.shared.limit)
            .field("close", &state.close)
            .field("ended", &state.sender_gone)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Encoded, ErrorCode, ServerFrame};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn frame(len: usize) -> Outbound {
        Outbound::Frame(Encoded::new(&ServerFrame::Error {
            id: None,
            code: ErrorCode::BadFrame,
            message: "x".repeat(len),
        }))
    }

    /// A typing notice: a frame the core lets go under backpressure.
    fn typing() -> Outbound {
        Outbound::Frame(Encoded::new(&ServerFrame::Typing {
            room: crate::ids::RoomName::parse("general", 64, 32).expect("a room name"),
            user: crate::ids::UserName::parse("ann", 32).expect("a user name"),
            active: true,
        }))
    }

    /// A queue bounded in frames only.
    fn frames_only(frames: usize) -> Limit {
        Limit {
            frames,
            bytes: usize::MAX,
        }
    }

    fn frames(n: usize) -> BatchLimit {
        BatchLimit {
            frames: n,
            bytes: usize::MAX,
        }
    }

    /// A queue full in bytes refuses the next frame while it holds others, an empty
    /// queue takes a frame of any size, and the bytes taken out are given back.
    #[test]
    fn a_queue_is_bounded_in_bytes_and_gives_them_back_when_read() {
        let one = frame(100);
        let size = match &one {
            Outbound::Frame(f) => f.bytes().len(),
            Outbound::Close(_) => unreachable!(),
        };
        let (tx, mut rx) = outbox(Limit {
            frames: 100,
            bytes: 3 * size,
        });
        for _ in 0..3 {
            tx.try_send(frame(100)).expect("room in bytes");
        }
        assert_eq!(rx.queued_bytes(), 3 * size);
        // Probed with a typing notice: a refused reliable frame would stop the queue.
        assert_eq!(tx.try_send(typing()), Err(Refused::Full));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut got = Vec::new();
        assert_eq!(
            rx.poll_recv_many(&mut cx, &mut got, frames(2)),
            Poll::Ready(2)
        );
        assert_eq!(rx.queued_bytes(), size);
        tx.try_send(frame(100)).expect("room again");
        assert_eq!(
            rx.poll_recv_many(&mut cx, &mut got, frames(9)),
            Poll::Ready(2)
        );
        assert_eq!(rx.queued_bytes(), 0);
        // Bigger than the whole bound: an empty queue still takes it.
        tx.try_send(frame(10 * size))
            .expect("an empty queue takes any frame");
        assert_eq!(tx.try_send(frame(1)), Err(Refused::Full));
    }

    /// Half the bytes queued is "filling" (rule 3 stops reading the peer), whatever
    /// the frame count.
    #[test]
    fn half_the_bytes_queued_is_filling() {
        let (tx, rx) = outbox(Limit {
            frames: 1000,
            bytes: 1000,
        });
        tx.try_send(frame(300)).expect("room");
        assert!(!rx.is_filling());
        tx.try_send(frame(300)).expect("room");
        assert!(rx.is_filling());
    }

    fn kinds(items: &[Outbound]) -> Vec<&'static str> {
        let kind = |o: &Outbound| match o {
            Outbound::Frame(_) => "frame",
            Outbound::Close(_) => "close",
        };
        items.iter().map(kind).collect()
    }

    #[test]
    fn a_burst_wakes_the_consumer_once_and_is_taken_in_one_batch() {
        let (tx, mut rx) = outbox(frames_only(8));
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut got = Vec::new();
        assert_eq!(
            rx.poll_recv_many(&mut cx, &mut got, frames(64)),
            Poll::Pending
        );
        for _ in 0..5 {
            tx.try_send(frame(1)).unwrap();
        }
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "one wake for five items");
        assert_eq!(
            rx.poll_recv_many(&mut cx, &mut got, frames(3)),
            Poll::Ready(3)
        );
        assert_eq!(
            rx.poll_recv_many(&mut cx, &mut got, frames(64)),
            Poll::Ready(2)
        );
        assert_eq!(got.len(), 5);
    }

    #[test]
    fn a_batch_stops_at_its_byte_budget_but_always_takes_one() {
        let (tx, mut rx) = outbox(frames_only(8));
        let (small, big) = (frame(10), frame(1000));
        for f in [&small, &small, &small, &big] {
            tx.try_send(f.clone()).unwrap();
        }
        let Outbound::Frame(f) = &small else {
            unreachable!()
        };
        let two = 2 * f.bytes().len();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut got = Vec::new();
        let limit = |bytes| BatchLimit { frames: 64, bytes };
        assert_eq!(
            rx.poll_recv_many(&mut cx, &mut got, limit(two)),
            Poll::Ready(2)
        );
        assert_eq!(
            rx.poll_recv_many(&mut cx, &mut got, limit(5)),
            Poll::Ready(1)
        );
        assert_eq!(
            rx.poll_recv_many(&mut cx, &mut got, limit(5)),
            Poll::Ready(1),
            "one over"
        );
        assert_eq!(got.len(), 4);
    }

    /// The close needs no room: a session closed because its queue is full still gets
    /// every frame, then the reason, then the end.
    #[test]
    fn a_drained_backlog_gives_its_memory_back() {
        // A slow reader's backlog fills the queue to its limit; once the reader has
        // caught up the queue must not keep the backlog's slots (40 bytes each, for
        // every connection that ever fell behind).
        let (tx, mut rx) = outbox(frames_only(1024));
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        for round in 0..2 {
            for _ in 0..1024 {
                tx.try_send(frame(1)).unwrap();
            }
            assert!(rx.shared.lock().frames.capacity() >= 1024);
            let mut got = Vec::new();
            let batch = if round == 0 { 100 } else { 1 };
            while let Poll::Ready(n) = rx.poll_recv_many(&mut cx, &mut got, frames(batch)) {
                assert!(n > 0);
            }
            assert_eq!(got.len(), 1024);
            let kept = rx.shared.lock().frames.capacity();
            assert!(
                kept <= KEEP_SLOTS,
                "round {round}: {kept} slots kept after the backlog"
            );
        }
    }

    /// Once a reliable frame was refused, nothing more is queued, even after the
    /// reader made room, until the close: the client never sees a message after a hole.
    /// A refused typing notice stops nothing.
    #[test]
    fn after_a_refused_message_the_queue_takes_nothing_more() {
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let (tx, mut rx) = outbox(frames_only(2));
        tx.try_send(frame(1)).unwrap();
        tx.try_send(frame(1)).unwrap();
        assert_eq!(tx.try_send(typing()), Err(Refused::Full));
        let mut got = Vec::new();
        assert_eq!(
            rx.poll_recv_many(&mut cx, &mut got, frames(1)),
            Poll::Ready(1)
        );
        tx.try_send(frame(1))
            .expect("a refused typing notice stops nothing");
        assert_eq!(tx.try_send(frame(1)), Err(Refused::Full));
        assert_eq!(
            rx.poll_recv_many(&mut cx, &mut got, frames(8)),
            Poll::Ready(2)
        );
        // Empty now, but the message refused before must not be followed by another.
        assert_eq!(tx.try_send(frame(1)), Err(Refused::Closed));
        assert_eq!(tx.try_send(typing()), Err(Refused::Closed));
        tx.close(CloseReason::SlowConsumer);
        assert_eq!(
            rx.poll_recv_many(&mut cx, &mut got, frames(8)),
            Poll::Ready(1)
        );
        assert_eq!(kinds(&got), ["frame", "frame", "frame", "close"]);
    }

    #[test]
    fn a_full_queue_still_ends_with_its_close() {
        let (tx, mut rx) = outbox(frames_only(2));
        tx.try_send(frame(1)).unwrap();
        tx.try_send(frame(1)).unwrap();
        assert_eq!(tx.try_send(frame(1)), Err(Refused::Full));
        assert_eq!(rx.close_reason(), None);
        tx.close(CloseReason::SlowConsumer);
        assert_eq!(rx.close_reason(), Some(CloseReason::SlowConsumer));
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut got = Vec::new();
        assert_eq!(
            rx.poll_recv_many(&mut cx, &mut got, frames(2)),
            Poll::Ready(2)
        );
        assert_eq!(
            rx.poll_recv_many(&mut cx, &mut got, frames(2)),
            Poll::Ready(1)
        );
        assert!(matches!(
            got.last(),
            Some(Outbound::Close(CloseReason::SlowConsumer))
        ));
        assert_eq!(
            rx.poll_recv_many(&mut cx, &mut got, frames(2)),
            Poll::Ready(0)
        );
        assert_eq!(kinds(&got), ["frame", "frame", "close"]);

        // With room, the close comes in the same batch as the frames before it.
        let (tx, mut rx) = outbox(frames_only(2));
        tx.try_send(frame(1)).unwrap();
        tx.close(CloseReason::Flood);
        let mut got = Vec::new();
        assert_eq!(
            rx.poll_recv_many(&mut cx, &mut got, frames(8)),
            Poll::Ready(2)
        );
        assert_eq!(kinds(&got), ["frame", "close"]);

        let (tx, rx) = outbox(frames_only(2));
        drop(rx);
        assert_eq!(tx.try_send(frame(1)), Err(Refused::Closed));
    }

    #[test]
    fn dropping_the_sender_ends_the_queue_without_a_close_and_wakes_the_consumer() {
        let (tx, mut rx) = outbox(frames_only(2));
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut got = Vec::new();
        assert_eq!(
            rx.poll_recv_many(&mut cx, &mut got, frames(1)),
            Poll::Pending
        );
        tx.try_send(frame(1)).unwrap();
        drop(tx);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(
            rx.poll_recv_many(&mut cx, &mut got, frames(8)),
            Poll::Ready(1)
        );
        assert_eq!(
            rx.poll_recv_many(&mut cx, &mut got, frames(8)),
            Poll::Ready(0)
        );
        assert_eq!(kinds(&got), ["frame"]);
        assert_eq!(rx.close_reason(), None);
    }

    /// Owed answers count toward half full like queued frames; settling them below half
    /// wakes a consumer that waits on an empty queue (its transport stopped reading for
    /// them), once, and settling that does not cross half wakes nobody.
    #[test]
    fn settling_owed_answers_below_half_wakes_the_waiting_consumer_once() {
        let (tx, mut rx) = outbox(frames_only(8));
        let owed = rx.owed_handle();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut got = Vec::new();
        owed.add(2);
        tx.try_send(frame(1)).unwrap();
        assert!(!rx.is_filling(), "3 of 8");
        owed.add(2);
        assert!(rx.is_filling(), "5 of 8, 4 of them owed");
        assert_eq!(rx.owed(), 4);
        assert_eq!(
            rx.poll_recv_many(&mut cx, &mut got, frames(8)),
            Poll::Ready(1)
        );
        assert!(rx.is_filling(), "nothing queued, 4 owed");
        assert_eq!(
            rx.poll_recv_many(&mut cx, &mut got, frames(8)),
            Poll::Pending
        );
        tx.settle(1);
        assert!(!rx.is_filling());
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "woken below half");
        assert!(rx.poll_recv_many(&mut cx, &mut got, frames(8)).is_pending());
        tx.settle(1);
        tx.settle(5);
        assert_eq!(rx.owed(), 0, "never below nothing");
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "no wake without crossing"
        );
    }
}
