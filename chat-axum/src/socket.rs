//! One WebSocket connection, one task: it reads frames and hands them to the hub, and
//! frames what the hub queued for the session in batches (up to `write_batch` frames,
//! 64 KiB), each written with one syscall from a per-thread scratch buffer. The same
//! loop serves the Autobahn echo endpoint.
//!
//! The task never waits for the hub: when the hub's inbox is full it stops reading the
//! socket (the peer's TCP window closes: that is the backpressure) and keeps writing, so
//! a busy engine never makes its own senders slow consumers.

use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use chat_core::CloseReason;
use chat_core::runtime::Hub;
use chat_core::runtime::transport::{BatchLimit, Inbound, Outbound, Outbox, PeerFrame};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::RouterOptions;
use crate::caps::Caps;
use crate::ws::{self, Fail, Incoming, Reader};

/// What the connection does with incoming frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Speak the chat protocol through the hub, as the host's identity if given.
    Chat(Option<chat_core::Identity>),
    /// Echo every data frame back (protocol-compliance testing only).
    #[cfg_attr(not(feature = "autobahn"), allow(dead_code))]
    Echo,
}

const IDLE: Fail = Fail {
    code: 1001,
    reason: "idle timeout",
};
/// The session's queue ended without the engine's close: the hub's task is gone.
const HUB_GONE: Fail = Fail {
    code: 1011,
    reason: "chat hub stopped",
};
const NO_HELLO: Fail = Fail {
    code: 1008,
    reason: "no hello",
};

/// Bytes read per syscall at most (a stack buffer: nothing is kept between reads).
const READ_CHUNK: usize = 8 * 1024;

/// Serves one upgraded connection until it is closed.
pub(crate) async fn run<IO>(
    io: IO,
    hub: Hub,
    opts: Arc<RouterOptions>,
    caps: Arc<Caps>,
    peer: Option<SocketAddr>,
    mode: Mode,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let chat = matches!(mode, Mode::Chat(_));
    let (inbound, outbound) = match mode {
        Mode::Chat(identity) => {
            let connected = match identity {
                Some(identity) => hub.connect_as(identity).await,
                None => hub.connect().await,
            };
            match connected {
                Ok(conn) => {
                    let (inbound, outbound) = conn.split();
                    (Some(inbound), Some(outbound))
                }
                Err(_) => return,
            }
        }
        Mode::Echo => (None, None),
    };
    let session = inbound.as_ref().map(Inbound::session);
    let now = Instant::now();
    let mut conn = Conn {
        io,
        reader: Reader::new(hub.limits().max_frame_bytes),
        out: Vec::new(),
        written: 0,
        outbound,
        inbound,
        hub_full: false,
        backlogged: false,
        read_failed: false,
        close_sent: false,
        close_received: false,
        fin_sent: false,
        deadline: None,
        last_read: now,
        last_write: now,
        last_ping: now,
        stalled: false,
        hello_by: chat.then(|| now + opts.hello_timeout),
        why: None,
        opts,
        caps,
        counted: 0,
    };
    let sleep = tokio::time::sleep_until(conn.next_check());
    tokio::pin!(sleep);
    let end = conn.serve(sleep).await;
    conn.outbound = None; // what is still queued is not written now
    if let Some(inbound) = conn.inbound.take() {
        inbound.disconnect().await;
    }
    // A FIN after our last bytes, when the socket still takes one; bounded for a peer
    // that reads nothing.
    let stuck = end == End::TimedOut && conn.written < conn.out.len();
    if end != End::Broken && !stuck && !conn.fin_sent {
        let close_timeout = conn.opts.close_timeout;
        let _ = tokio::time::timeout(close_timeout, poll_fn(|cx| conn.poll_shutdown(cx))).await;
    }
    let why = match (conn.why, end) {
        (Some(why), _) => why,
        (None, End::Closed) => "peer_closed",
        (None, End::TimedOut) => "close_timeout",
        (None, End::Gone) => "peer_gone",
        (None, End::Broken) => "broken",
    };
    conn.caps.rebuffer(conn.counted, 0);
    ::metrics::counter!("chat_ws_closes_total", "reason" => why).increment(1);
    tracing::debug!(?session, ?peer, ?end, why, "connection closed");
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Both close frames were exchanged.
    Closed,
    /// We closed and the peer did not answer in time, or never read our close.
    TimedOut,
    /// The peer hung up without a close handshake.
    Gone,
    /// The socket failed.
    Broken,
}

/// What [`Conn::take`] did.
enum Took {
    /// The queue is empty.
    Nothing,
    /// Frames were written (or queued behind a full socket).
    Wrote,
    /// ... ending with the core's close.
    Closed,
    /// The queue ended without a close.
    Ended,
    /// The socket failed.
    Broken,
}

/// Frames taken from a session's queue and their bytes, per worker thread: a busy
/// server frames every batch into one hot buffer instead of one buffer per connection
/// (with a thousand connections those alone outgrew the CPU caches).
#[derive(Default)]
struct Scratch {
    items: Vec<Outbound>,
    bytes: Vec<u8>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Frame bytes taken per write at most (besides `write_batch` frames), so what a slow
/// peer leaves in the connection's buffer stays bounded whatever the frame sizes.
const BATCH_BYTES: usize = 64 * 1024;

/// Scratch bytes kept between batches at most.
const SCRATCH_KEEP: usize = 256 * 1024;

/// What woke the connection.
enum Wake {
    /// Bytes were read into the reader.
    Read,
    /// The hub's inbox took what waited for room: read on.
    HubReady,
    /// The session's queue ended without a close: the hub's task is gone.
    QueueEnded,
    /// The core closed the session: the close frame is queued.
    SessionClosed,
    Timer,
    End(End),
}

struct Conn<IO> {
    io: IO,
    reader: Reader,
    /// Bytes to write; `out[written..]` is still pending.
    out: Vec<u8>,
    written: usize,
    /// The session's queue; `None` once it ended (or for the echo endpoint).
    outbound: Option<Outbox>,
    /// The session; `None` once this side ended it (or for the echo endpoint).
    inbound: Option<Inbound>,
    /// The hub's inbox was full: an input waits in `inbound` and the socket is not read
    /// until the hub takes it.
    hub_full: bool,
    /// The session's queue was half full, counting the answers it is still owed for
    /// input handed over: the peer's next frames wait (read, not handed over) and the
    /// socket is not read until the queue is written, and the answers settled, below
    /// half.
    backlogged: bool,
    /// A bad frame was read: the rest of the input is discarded.
    read_failed: bool,
    close_sent: bool,
    close_received: bool,
    /// Our side of the TCP connection is shut down (after a failure).
    fin_sent: bool,
    /// After our close: when to stop waiting for the peer's.
    deadline: Option<Instant>,
    /// When bytes last came from the peer: any frame is a sign of life, a pong too.
    last_read: Instant,
    last_write: Instant,
    last_ping: Instant,
    /// The last write could not take everything (the peer reads slowly or not at all).
    stalled: bool,
    /// Until the peer's first message: when to give up waiting for it.
    hello_by: Option<Instant>,
    /// Why the connection ends, once known (the `reason` of `chat_ws_closes_total`).
    why: Option<&'static str>,
    opts: Arc<RouterOptions>,
    /// Where the buffers' bytes are counted (`chat_ws_buffer_bytes`).
    caps: Arc<Caps>,
    /// The buffers' bytes as last counted there.
    counted: usize,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Conn<IO> {
    async fn serve(&mut self, mut sleep: Pin<&mut Sleep>) -> End {
        loop {
            self.count_buffers();
            let wake = poll_fn(|cx| self.poll_wake(cx, sleep.as_mut())).await;
            match wake {
                Wake::Read => {
                    self.last_read = Instant::now();
                    if let Err(end) = self.dispatch().await {
                        return end;
                    }
                }
                Wake::HubReady => {
                    // What waited was heard only now, and the socket is read again now.
                    self.last_read = Instant::now();
                    if let Err(end) = self.dispatch().await {
                        return end;
                    }
                }
                Wake::QueueEnded => {
                    self.outbound = None;
                    if self.inbound.is_some() {
                        // Not ended by us: the engine always closes with a reason, so
                        // the hub's task is gone.
                        self.why.get_or_insert("hub_gone");
                        self.close(HUB_GONE);
                    }
                }
                Wake::SessionClosed => {}
                Wake::Timer => {
                    if let Err(end) = self.on_timer() {
                        return end;
                    }
                    sleep.as_mut().reset(self.next_check());
                }
                Wake::End(end) => return end,
            }
            if self.close_sent && self.deadline.is_none() {
                self.deadline = Some(Instant::now() + self.opts.close_timeout);
                sleep.as_mut().reset(self.next_check());
            }
        }
    }

    /// Brings this connection's share of `chat_ws_buffer_bytes` up to date.
    fn count_buffers(&mut self) {
        let now = self.out.capacity() + self.reader.capacity();
        if now != self.counted {
            self.caps.rebuffer(self.counted, now);
            self.counted = now;
        }
    }

    /// Writes what is pending, frames what the session's queue holds, reads, and waits.
    fn poll_wake(&mut self, cx: &mut Context<'_>, mut sleep: Pin<&mut Sleep>) -> Poll<Wake> {
        loop {
            match self.poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    if self.close_sent && self.close_received {
                        return Poll::Ready(Wake::End(End::Closed));
                    }
                    if self.read_failed && self.close_sent && !self.fin_sent {
                        // A failed connection (RFC 6455 §7.1.7): our close is out, so end
                        // our side now (FIN), and read on until the peer hangs up, so
                        // that unread input does not turn our close into a reset.
                        if Pin::new(&mut self.io).poll_shutdown(cx).is_ready() {
                            self.fin_sent = true;
                        }
                    }
                }
                Poll::Ready(Err(())) => return Poll::Ready(Wake::End(End::Broken)),
                Poll::Pending => {
                    if !std::mem::replace(&mut self.stalled, true) {
                        // Stuck from now: look again after `close_timeout` whether the
                        // core has given up on the session meanwhile.
                        let check = Instant::now() + self.opts.close_timeout;
                        if check < sleep.deadline() {
                            sleep.as_mut().reset(check);
                        }
                    }
                }
            }
            // Take more only while the socket keeps up: otherwise the session's queue
            // fills and the core applies its slow-consumer policy.
            let room = self.out.len() - self.written < self.opts.write_buffer_bytes.max(1);
            if !room || self.close_sent {
                break;
            }
            match self.take(cx) {
                Took::Nothing => break,
                Took::Wrote => self.last_write = Instant::now(),
                Took::Closed => {
                    self.why.get_or_insert("server_closed");
                    self.last_write = Instant::now();
                    self.close_sent = true;
                    self.outbound = None;
                    return Poll::Ready(Wake::SessionClosed);
                }
                Took::Ended => return Poll::Ready(Wake::QueueEnded),
                Took::Broken => return Poll::Ready(Wake::End(End::Broken)),
            }
        }
        if self.backlogged {
            if self.outbound.as_ref().is_some_and(Outbox::is_filling) {
                // Below half once the socket takes more (its wake-up) or once the hub
                // has answered what it was given (the outbox wakes us).
            } else {
                self.backlogged = false;
                return Poll::Ready(Wake::HubReady);
            }
        }
        if self.hub_full {
            match self.inbound.as_mut().map(|inbound| inbound.poll_ready(cx)) {
                Some(Poll::Pending) => {}
                _ => {
                    self.hub_full = false;
                    return Poll::Ready(Wake::HubReady);
                }
            }
        }
        if !self.close_received && !self.hub_full && !self.backlogged {
            // Uninitialised: this runs on every wake-up, also those for writing only,
            // and zeroing 8 KiB each time showed up in the profile.
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let len = self.opts.read_buffer_bytes.clamp(256, READ_CHUNK);
            let mut buf = ReadBuf::uninit(&mut chunk[..len]);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                    return Poll::Ready(Wake::End(End::Gone));
                }
                Poll::Ready(Ok(())) => {
                    if !self.read_failed {
                        self.reader.extend(buf.filled());
                        return Poll::Ready(Wake::Read);
                    }
                    // After a bad frame the rest is noise: drop it, wait for EOF or the
                    // deadline. Poll again (this read consumed the wake-up).
                    cx.waker().wake_by_ref();
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Wake::End(End::Gone)),
                Poll::Pending => {}
            }
        }
        ready!(sleep.poll(cx));
        Poll::Ready(Wake::Timer)
    }

    /// Takes a batch from the session's queue, frames it into this thread's scratch
    /// buffer and writes it from there; only what the socket does not take at once is
    /// kept in the connection's own buffer (after whatever is already pending there).
    fn take(&mut self, cx: &mut Context<'_>) -> Took {
        let Some(outbound) = self.outbound.as_mut() else {
            return Took::Nothing;
        };
        SCRATCH.with_borrow_mut(|scratch| {
            let Scratch { items, bytes } = scratch;
            let limit = BatchLimit {
                frames: self.opts.write_batch.max(1),
                bytes: BATCH_BYTES,
            };
            match outbound.poll_recv_many(cx, items, limit) {
                Poll::Ready(0) => return Took::Ended,
                Poll::Ready(_) => {}
                Poll::Pending => return Took::Nothing,
            }
            let mut took = Took::Wrote;
            bytes.clear();
            for item in items.drain(..) {
                match item {
                    Outbound::Frame(frame) => ws::write_frame(bytes, ws::TEXT, frame.bytes()),
                    Outbound::Close(reason) => {
                        ws::write_close(bytes, Some(reason.ws_code()), reason.as_str());
                        took = Took::Closed;
                        break; // nothing follows a close
                    }
                }
            }
            let mut at = 0;
            if self.written == self.out.len() {
                while at < bytes.len() {
                    match Pin::new(&mut self.io).poll_write(cx, &bytes[at..]) {
                        Poll::Ready(Ok(0) | Err(_)) => return Took::Broken,
                        Poll::Ready(Ok(n)) => at += n,
                        Poll::Pending => break,
                    }
                }
            }
            self.out.extend_from_slice(&bytes[at..]);
            if bytes.capacity() > SCRATCH_KEEP {
                *bytes = Vec::new();
            }
            took
        })
    }

    /// Writes `out[written..]`: ready when all is written, `Err` when the socket failed.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        while self.written < self.out.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.out[self.written..]) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Err(())),
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Pending => return Poll::Pending,
            }
        }
        self.stalled = false;
        self.out.clear();
        self.written = 0;
        if self.out.capacity() > 4 * self.opts.write_buffer_bytes.max(4096) {
            self.out = Vec::new(); // a burst is over: give the memory back
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if ready!(self.poll_flush(cx)).is_err() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    /// Handles every complete frame read so far, or those the hub's inbox has room for.
    async fn dispatch(&mut self) -> Result<(), End> {
        loop {
            if self.outbound.as_ref().is_some_and(Outbox::is_filling) {
                // The session's own answers fill its queue, or will once the hub
                // has answered what it was given: write some, or wait, first.
                self.backlogged = true;
                break;
            }
            if let Some(inbound) = self.inbound.as_mut() {
                // Hand nothing more over while an input waits for room in the inbox.
                match poll_fn(|cx| Poll::Ready(inbound.poll_ready(cx))).await {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => return Err(End::Gone), // the hub is gone
                    Poll::Pending => {
                        self.hub_full = true;
                        break;
                    }
                }
            }
            let incoming = match self.reader.next() {
                Ok(Some(incoming)) => incoming,
                Ok(None) => break,
                Err(fail) => {
                    tracing::debug!(code = fail.code, reason = fail.reason, "bad frame");
                    self.why.get_or_insert(match fail.code {
                        1009 => "too_big",
                        1007 => "bad_utf8",
                        _ => "protocol_error",
                    });
                    self.read_failed = true;
                    self.close(fail);
                    break;
                }
            };
            if matches!(incoming, Incoming::Text(_) | Incoming::Binary(_)) {
                self.hello_by = None; // it spoke: the core judges what it said
            }
            match incoming {
                Incoming::Text(p) | Incoming::Binary(p) if self.close_sent => {
                    let _ = p; // the session is over: what still arrives is dropped
                }
                Incoming::Text(p) => match &mut self.inbound {
                    Some(inbound) => {
                        if inbound
                            .start(PeerFrame::Text(self.reader.payload(&p)))
                            .is_err()
                        {
                            return Err(End::Gone); // the hub is gone
                        }
                    }
                    None => ws::write_frame(&mut self.out, ws::TEXT, self.reader.payload(&p)),
                },
                Incoming::Binary(p) => match &mut self.inbound {
                    Some(inbound) => {
                        if inbound
                            .start(PeerFrame::Binary(self.reader.payload(&p)))
                            .is_err()
                        {
                            return Err(End::Gone);
                        }
                    }
                    None => ws::write_frame(&mut self.out, ws::BINARY, self.reader.payload(&p)),
                },
                Incoming::Ping(p) => {
                    // A peer that pings but does not read would otherwise grow our buffer
                    // without bound (pings pass no flood control): with a backlog, only
                    // pings that find room are answered (RFC 6455 §5.5.3 allows answering
                    // just the most recent one).
                    let backlog = self.out.len() - self.written;
                    if !self.close_sent && backlog < self.opts.write_buffer_bytes.max(1) {
                        ws::write_frame(&mut self.out, ws::PONG, self.reader.payload(&p));
                    }
                }
                Incoming::Pong => {}
                Incoming::Close(code, p) => {
                    self.close_received = true;
                    self.why.get_or_insert("peer_closed");
                    if !self.close_sent {
                        // Echo the peer's code, as RFC 6455 §5.5.1 suggests.
                        let reason = std::str::from_utf8(self.reader.payload(&p)).unwrap_or("");
                        ws::write_close(&mut self.out, code, reason);
                        self.close_sent = true;
                    }
                    self.end_session().await;
                    break;
                }
            }
        }
        self.reader.compact();
        Ok(())
    }

    /// Queues our close frame after what is already framed, and ends the session.
    fn close(&mut self, fail: Fail) {
        if !self.close_sent {
            ws::write_close(&mut self.out, Some(fail.code), fail.reason);
            self.close_sent = true;
        }
        // The session ends now (the hub forgets it and drops its queue); the socket
        // lives until the peer answers our close or `close_timeout` passes.
        if let Some(inbound) = self.inbound.take() {
            drop(inbound); // disconnects through the hub's unbounded control channel
        }
        self.outbound = None;
    }

    async fn end_session(&mut self) {
        // The queue goes first: while the disconnect waits for room in the hub's inbox,
        // a queue nobody drains must not make this a slow consumer.
        self.outbound = None;
        if let Some(inbound) = self.inbound.take() {
            inbound.disconnect().await;
        }
    }

    fn on_timer(&mut self) -> Result<(), End> {
        let now = Instant::now();
        if let Some(deadline) = self.deadline {
            if now >= deadline {
                return Err(End::TimedOut);
            }
            return Ok(());
        }
        if self.stalled
            && let Some(reason) = self.outbound.as_ref().and_then(Outbox::close_reason)
        {
            // The core closed the session (a slow consumer) while the socket was full:
            // what is still queued will not be read either.
            self.outbound = None;
            self.why.get_or_insert(close_label(reason));
            self.close(Fail {
                code: reason.ws_code(),
                reason: reason.as_str(),
            });
            return Ok(());
        }
        if self.hello_by.is_some_and(|by| now >= by) {
            self.why.get_or_insert("no_hello");
            self.close(NO_HELLO);
        } else if now >= self.idle_at() {
            self.why.get_or_insert("idle");
            self.close(IDLE);
        } else if now >= self.next_ping() {
            ws::write_frame(&mut self.out, ws::PING, b"");
            self.last_ping = now;
            self.last_write = now;
        }
        Ok(())
    }

    /// When to ping: once the peer has been silent for `ping_interval` (and again every
    /// `ping_interval` while it stays silent), however much we write to it: only the
    /// peer's answer shows it is alive. Also once we have written nothing for
    /// `ping_interval`, so that the peer, and any proxy in between (nginx drops a
    /// WebSocket its upstream has not written to for 60 s by default), hears from us at
    /// least that often even when the peer talks and gets no answers.
    fn next_ping(&self) -> Instant {
        let every = self.opts.ping_interval;
        (self.last_read.max(self.last_ping) + every).min(self.last_write + every)
    }

    /// When the peer will have been silent too long: never while its frames wait for
    /// room in the hub (the socket is not read meanwhile).
    fn idle_at(&self) -> Instant {
        if self.hub_full {
            return Instant::now() + self.opts.idle_timeout;
        }
        self.last_read + self.opts.idle_timeout
    }

    /// When the timer must next look: the idle limit, the next ping, the close deadline,
    /// and while a write is stuck, whether the core has given up on the session.
    fn next_check(&self) -> Instant {
        if let Some(deadline) = self.deadline {
            return deadline;
        }
        let mut at = self.idle_at().min(self.next_ping());
        if let Some(by) = self.hello_by {
            at = at.min(by);
        }
        if self.stalled {
            at = at.min(Instant::now() + self.opts.close_timeout);
        }
        at
    }
}

/// The `/metrics` label of a close the engine asked for.
fn close_label(reason: CloseReason) -> &'static str {
    match reason {
        CloseReason::SlowConsumer => "slow_consumer",
        CloseReason::Flood => "flood",
        CloseReason::Shutdown => "shutdown",
        CloseReason::AuthFailed => "auth_failed",
        CloseReason::UnsupportedVersion => "unsupported_version",
        _ => "server_closed",
    }
}
