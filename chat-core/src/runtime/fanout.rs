//! The driver's last step: every frame into its session's [`outbox`](super::outbox).
//!
//! By default the driver does it itself ([`Fanout::inline`]): for a room event, one
//! table index, one queue push and (when the connection was waiting) one wake-up per
//! recipient, on the driver's core. That per-recipient work is most of what one driver
//! core can carry (docs/BENCHMARKS.md, "Many cores"): measured alone, the wake-ups cost
//! it ~5 times what the engine and the pushes do. With
//! [`HubConfig::fanout_threads`](super::HubConfig::fanout_threads) = K it is done by K
//! threads instead ([`Fanout::threads`]), each owning the queues of the sessions whose
//! id falls to it (`id % K`). The driver hands every output once to every thread that
//! needs it (a room event: a handle on the encoded frame and the room's shared recipient
//! list, not one item per recipient), in batches, one lock and at most one wake-up per
//! thread per batch; each thread walks the list and queues to its own sessions.
//!
//! Why by session and not by room: everything addressed to one session (its answers,
//! every room's events, its close, the settling of what it is owed) goes through one
//! thread, in the driver's order, so a session sees exactly the order it sees with the
//! driver doing the work; and a single busy room, the case that saturates the driver,
//! is spread over every thread.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::Thread;

use tokio::sync::{Notify, mpsc, oneshot};

use super::outbox::{self, OutboxTx};
use super::transport::Outbound;
use super::{Cmd, Counters};
use crate::ids::SessionId;
use crate::protocol::Encoded;
use crate::server::{CloseReason, Input, Recipients};

/// Sessions by id, for ids handed out in order. A lookup is an index, no hashing and
/// no probing. It holds 8 bytes per id from the oldest open session to the newest
/// (closed ones in between included), and shrinks from either end as sessions close.
#[derive(Default)]
pub(super) struct SessionTable {
    /// The id of `slots[0]`.
    base: u64,
    slots: VecDeque<Option<OutboxTx>>,
}

impl SessionTable {
    #[inline]
    fn get(&self, id: u64) -> Option<&OutboxTx> {
        let i = usize::try_from(id.checked_sub(self.base)?).ok()?;
        self.slots.get(i)?.as_ref()
    }

    fn insert(&mut self, id: u64, tx: OutboxTx) {
        if self.slots.is_empty() {
            self.base = id;
        }
        while id < self.base {
            // Ids reach the driver nearly in order; an earlier one widens the front.
            self.slots.push_front(None);
            self.base -= 1;
        }
        let i = usize::try_from(id - self.base).expect("fits: the table holds every slot");
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, || None);
        }
        self.slots[i] = Some(tx);
    }

    fn remove(&mut self, id: u64) -> Option<OutboxTx> {
        let i = usize::try_from(id.checked_sub(self.base)?).ok()?;
        let tx = self.slots.get_mut(i)?.take()?;
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.base += 1;
        }
        while let Some(None) = self.slots.back() {
            self.slots.pop_back();
        }
        if self.slots.capacity() > 64 && self.slots.capacity() > 4 * self.slots.len() {
            self.slots.shrink_to(2 * self.slots.len());
        }
        Some(tx)
    }

    fn drain(&mut self) -> impl Iterator<Item = OutboxTx> + '_ {
        self.slots.drain(..).flatten()
    }
}

/// Queues one frame; true if it was queued. A full queue is reported to the core (by
/// `report`): after a reliable frame was refused the queue refuses everything until the
/// close the core sends for it, so the session never skips a message.
#[inline]
fn queue(
    tx: &OutboxTx,
    session: SessionId,
    frame: Encoded,
    report: &mut impl FnMut(Input),
) -> bool {
    let ephemeral = frame.is_ephemeral();
    match tx.try_send(Outbound::Frame(frame)) {
        Ok(()) => true,
        Err(outbox::Refused::Full) => {
            report(Input::QueueFull { session, ephemeral });
            false
        }
        Err(outbox::Refused::Closed) => false,
    }
}

/// Closes a session's queue after the frames it holds, and counts it.
fn close(tx: OutboxTx, reason: CloseReason, counters: &Counters) {
    counters.connections.fetch_sub(1, Ordering::Relaxed);
    if reason == CloseReason::SlowConsumer {
        counters.slow_consumers.fetch_add(1, Ordering::Relaxed);
    }
    // The close needs no room (a slow consumer's queue is full).
    tx.close(reason);
}

/// Who puts the driver's frames into the sessions' queues.
pub(super) enum Fanout {
    /// The driver, as it drains the core's outputs.
    Inline(Inline),
    /// The fan-out threads.
    Threads(Threads),
}

impl Fanout {
    /// The driver does the work itself.
    pub(super) fn inline(counters: Arc<Counters>) -> Fanout {
        Fanout::Inline(Inline {
            table: SessionTable::default(),
            counters,
        })
    }

    /// `k` (≥ 1) threads do it; a full queue is reported on `control`.
    pub(super) fn threads(
        k: usize,
        counters: Arc<Counters>,
        control: mpsc::UnboundedSender<Cmd>,
    ) -> std::io::Result<Fanout> {
        Threads::start(k, counters, control).map(Fanout::Threads)
    }

    /// A new session's queue.
    pub(super) fn open(&mut self, session: SessionId, tx: OutboxTx) {
        match self {
            Fanout::Inline(d) => d.table.insert(session.0, tx),
            Fanout::Threads(t) => t.push(session, Job::Open(session, tx)),
        }
    }

    /// One frame to one session. The frames queued here (the threads count their own).
    #[inline]
    pub(super) fn send(&mut self, to: SessionId, frame: Encoded, deferred: &mut Vec<Input>) -> u64 {
        match self {
            Fanout::Inline(d) => d.send(to, frame, deferred),
            Fanout::Threads(t) => {
                t.push(to, Job::Frame(to, frame));
                0
            }
        }
    }

    /// One frame to a room's recipients. The frames queued here.
    pub(super) fn broadcast(
        &mut self,
        to: Recipients,
        frame: &Encoded,
        deferred: &mut Vec<Input>,
    ) -> u64 {
        match self {
            Fanout::Inline(d) => d.broadcast(&to, frame, deferred),
            Fanout::Threads(t) => {
                t.broadcast(to, frame);
                0
            }
        }
    }

    /// The core closed a session: after the frames queued for it, its close.
    pub(super) fn close(&mut self, session: SessionId, reason: CloseReason) {
        match self {
            Fanout::Inline(d) => d.close(session, reason),
            Fanout::Threads(t) => t.push(session, Job::Close(session, reason)),
        }
    }

    /// The connection went away by itself: its queue is dropped.
    pub(super) fn disconnected(&mut self, session: SessionId) {
        match self {
            Fanout::Inline(d) => d.disconnected(session),
            Fanout::Threads(t) => t.push(session, Job::Forget(session)),
        }
    }

    /// Settles `n` answers the session was owed, after the frames queued so far.
    pub(super) fn settle(&mut self, session: SessionId, n: usize) {
        match self {
            Fanout::Inline(d) => {
                if let Some(tx) = d.table.get(session.0) {
                    tx.settle(n);
                }
            }
            Fanout::Threads(t) => t.push(session, Job::Settle(session, n)),
        }
    }

    /// Hands what this batch made to the threads (nothing to do inline).
    pub(super) fn flush(&mut self) {
        if let Fanout::Threads(t) = self {
            t.flush();
        }
    }

    /// Waits while a thread holds more than [`LANE_HIGH`] items from the driver: the
    /// driver then takes no more input, as it would if it queued the frames itself.
    pub(super) async fn room(&self) {
        if let Fanout::Threads(t) = self {
            t.room().await;
        }
    }

    /// Shutdown: every session the core did not close is closed, after its frames.
    pub(super) async fn finish(self) {
        match self {
            Fanout::Inline(d) => d.finish(),
            Fanout::Threads(t) => t.finish().await,
        }
    }
}

/// The driver queueing the frames itself.
pub(super) struct Inline {
    table: SessionTable,
    counters: Arc<Counters>,
}

impl Inline {
    #[inline]
    fn send(&self, to: SessionId, frame: Encoded, deferred: &mut Vec<Input>) -> u64 {
        match self.table.get(to.0) {
            Some(tx) => u64::from(queue(tx, to, frame, &mut |i| deferred.push(i))),
            None => 0,
        }
    }

    fn broadcast(&self, to: &Recipients, frame: &Encoded, deferred: &mut Vec<Input>) -> u64 {
        let mut out = 0;
        for sid in to.iter() {
            if let Some(tx) = self.table.get(sid.0) {
                out += u64::from(queue(tx, sid, frame.clone(), &mut |i| deferred.push(i)));
            }
        }
        out
    }

    fn close(&mut self, session: SessionId, reason: CloseReason) {
        if let Some(tx) = self.table.remove(session.0) {
            close(tx, reason, &self.counters);
        }
    }

    fn disconnected(&mut self, session: SessionId) {
        if self.table.remove(session.0).is_some() {
            self.counters.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn finish(mut self) {
        for tx in self.table.drain() {
            close(tx, CloseReason::Shutdown, &self.counters);
        }
    }
}

/// Items a thread may hold from the driver before the driver waits for it.
const LANE_HIGH: usize = 16_384;

/// What the driver hands a fan-out thread, in the order the core made it.
enum Job {
    Open(SessionId, OutboxTx),
    Frame(SessionId, Encoded),
    /// To the thread's own sessions among the recipients.
    Broadcast(Recipients, Encoded),
    Settle(SessionId, usize),
    Close(SessionId, CloseReason),
    Forget(SessionId),
}

/// The driver's side of the threads.
pub(super) struct Threads {
    /// This batch's items per thread, handed over by [`Threads::flush`].
    pending: Vec<Vec<Job>>,
    lanes: Vec<Arc<Lane>>,
    /// Dropped by each thread as it ends.
    done: Vec<oneshot::Receiver<()>>,
}

impl Threads {
    /// Starts `k` (≥ 1) threads, named `chat-fanout-N`.
    fn start(
        k: usize,
        counters: Arc<Counters>,
        control: mpsc::UnboundedSender<Cmd>,
    ) -> std::io::Result<Threads> {
        let k = k.max(1);
        let mut lanes = Vec::with_capacity(k);
        let mut done = Vec::with_capacity(k);
        for me in 0..k {
            let lane = Arc::new(Lane::default());
            let (done_tx, done_rx) = oneshot::channel::<()>();
            let worker = Worker {
                lane: lane.clone(),
                me: me as u64,
                k: k as u64,
                counters: counters.clone(),
                control: control.clone(),
                table: SessionTable::default(),
            };
            let handle = std::thread::Builder::new()
                .name(format!("chat-fanout-{me}"))
                .spawn(move || {
                    worker.run();
                    drop(done_tx);
                })?;
            lane.thread
                .set(handle.thread().clone())
                .expect("set once, here");
            lanes.push(lane);
            done.push(done_rx);
        }
        Ok(Threads {
            pending: (0..k).map(|_| Vec::new()).collect(),
            lanes,
            done,
        })
    }

    /// A room event: one item to every thread, each queueing to its own recipients;
    /// to one thread alone when it has one recipient.
    fn broadcast(&mut self, to: Recipients, frame: &Encoded) {
        if to.len() == 1 {
            if let Some(only) = to.iter().next() {
                self.push(only, Job::Frame(only, frame.clone()));
            }
        } else if to.len() > 1 {
            for pending in &mut self.pending {
                pending.push(Job::Broadcast(to.clone(), frame.clone()));
            }
        }
    }

    /// See [`Fanout::room`].
    async fn room(&self) {
        for lane in &self.lanes {
            loop {
                let space = lane.space.notified();
                {
                    let mut state = lane.lock();
                    if state.jobs.len() <= LANE_HIGH {
                        break;
                    }
                    state.driver_waiting = true;
                }
                space.await;
            }
        }
    }

    /// Hands over the last batch, then every thread closes its sessions and ends.
    async fn finish(mut self) {
        self.flush();
        for lane in &self.lanes {
            lane.lock().end = Some(true);
            lane.unpark();
        }
        for done in std::mem::take(&mut self.done) {
            let _ = done.await;
        }
    }

    #[inline]
    fn push(&mut self, session: SessionId, job: Job) {
        let k = self.pending.len() as u64;
        let i = usize::try_from(session.0 % k).expect("below the thread count");
        self.pending[i].push(job);
    }

    fn flush(&mut self) {
        for (pending, lane) in self.pending.iter_mut().zip(&self.lanes) {
            if pending.is_empty() {
                continue;
            }
            let wake = {
                let mut state = lane.lock();
                if state.jobs.is_empty() {
                    std::mem::swap(&mut state.jobs, pending);
                } else {
                    state.jobs.append(pending);
                }
                std::mem::take(&mut state.sleeping)
            };
            if wake {
                lane.unpark();
            }
        }
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        // The driver is gone without a shutdown (its runtime dropped): the threads end
        // after what they hold; the queues end without a close, as the driver's would.
        for lane in &self.lanes {
            let mut state = lane.lock();
            if state.end.is_none() {
                state.end = Some(false);
            }
            drop(state);
            lane.unpark();
        }
    }
}

/// One thread's inbox from the driver.
#[derive(Default)]
struct Lane {
    state: Mutex<LaneState>,
    /// Told when the thread takes its items and the driver waits for room.
    space: Notify,
    thread: std::sync::OnceLock<Thread>,
}

#[derive(Default)]
struct LaneState {
    jobs: Vec<Job>,
    /// The thread found nothing and parks: the next hand-over unparks it.
    sleeping: bool,
    /// The driver waits for room ([`Fanout::room`]).
    driver_waiting: bool,
    /// End after the items held: `Some(true)` closing every session (shutdown),
    /// `Some(false)` dropping them.
    end: Option<bool>,
}

impl Lane {
    fn lock(&self) -> MutexGuard<'_, LaneState> {
        // Nothing panics while holding it; recover the data regardless.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn unpark(&self) {
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }
}

/// One fan-out thread: the queues of the sessions with `id % k == me`.
struct Worker {
    lane: Arc<Lane>,
    me: u64,
    k: u64,
    counters: Arc<Counters>,
    control: mpsc::UnboundedSender<Cmd>,
    /// Indexed by `id / k`: dense, as the ids that fall here are every k-th.
    table: SessionTable,
}

impl Worker {
    fn run(mut self) {
        let mut jobs = Vec::new();
        let mut timed = super::Sampler::default();
        loop {
            let notify = {
                let mut state = self.lane.lock();
                loop {
                    if !state.jobs.is_empty() {
                        std::mem::swap(&mut state.jobs, &mut jobs);
                        break;
                    }
                    if let Some(close_all) = state.end {
                        drop(state);
                        if close_all {
                            for tx in self.table.drain() {
                                close(tx, CloseReason::Shutdown, &self.counters);
                            }
                        }
                        return;
                    }
                    state.sleeping = true;
                    drop(state);
                    std::thread::park();
                    state = self.lane.lock();
                }
                state.sleeping = false;
                std::mem::take(&mut state.driver_waiting)
            };
            if notify {
                self.lane.space.notify_one();
            }
            let started = timed.start();
            let mut out = 0u64;
            for job in jobs.drain(..) {
                out += self.carry_out(job);
            }
            if out > 0 {
                self.counters.frames_out.fetch_add(out, Ordering::Relaxed);
                metrics::counter!("chat_frames_out_total").increment(out);
                timed.count();
                if let Some(started) = started {
                    // One batch from the driver, every frame into its session's queue.
                    metrics::histogram!("chat_fanout_seconds").record(started.elapsed());
                }
            }
            if jobs.capacity() > 4 * LANE_HIGH {
                jobs = Vec::new();
            }
        }
    }

    /// One item; the frames it queued.
    #[inline]
    fn carry_out(&mut self, job: Job) -> u64 {
        let k = self.k;
        let control = &self.control;
        let mut report = |input| {
            let _ = control.send(Cmd::Input(input));
        };
        match job {
            Job::Open(s, tx) => self.table.insert(s.0 / k, tx),
            Job::Frame(s, frame) => {
                if let Some(tx) = self.table.get(s.0 / k) {
                    return u64::from(queue(tx, s, frame, &mut report));
                }
            }
            Job::Broadcast(to, frame) => {
                let mut out = 0;
                for s in to.iter().filter(|s| s.0 % k == self.me) {
                    if let Some(tx) = self.table.get(s.0 / k) {
                        out += u64::from(queue(tx, s, frame.clone(), &mut report));
                    }
                }
                return out;
            }
            Job::Settle(s, n) => {
                if let Some(tx) = self.table.get(s.0 / k) {
                    tx.settle(n);
                }
            }
            Job::Close(s, reason) => {
                if let Some(tx) = self.table.remove(s.0 / k) {
                    close(tx, reason, &self.counters);
                }
            }
            Job::Forget(s) => {
                if self.table.remove(s.0 / k).is_some() {
                    self.counters.connections.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        0
    }
}
