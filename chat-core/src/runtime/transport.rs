//! The API for writing a transport: what a WebSocket server, an SSE endpoint, a QUIC
//! listener or a test harness uses to connect its clients to a [`Hub`].
//!
//! A transport calls [`Hub::connect`] once per client and gets a [`Connection`]. Hosts
//! and tests can talk through it directly with typed frames ([`Connection::send`],
//! [`Connection::recv`]); a transport splits it ([`Connection::split`]) into the two
//! halves it drives, usually concurrently:
//!
//! - [`Inbound`] takes what the peer sent, one [`PeerFrame`] at a time: a text frame
//!   (decoded in the caller's task), a binary frame, or "this was malformed, because …".
//!   The engine answers a bad one with a `bad_frame` error; the transport never needs to
//!   know the protocol. Inbound has backpressure: the async [`Inbound::send`] (or
//!   [`Inbound::ready`] then [`Inbound::start`]) waits while the hub's inbox is full;
//!   the poll form is [`Inbound::poll_ready`] then [`Inbound::start`], as a `Sink`.
//! - [`Outbox`] holds what to write: [`Outbound::Frame`]s, then exactly one
//!   [`Outbound::Close`] with the reason when the engine ends the session. Take them in
//!   batches bounded by count and bytes ([`BatchLimit`]) with [`Outbox::recv_many`] or
//!   [`Outbox::poll_recv_many`].
//!
//! Four rules make a transport well-behaved:
//!
//! 1. **Stop reading, never stop writing.** While [`Inbound`] is not ready, read nothing
//!    more from the peer (its flow control, e.g. the TCP window, is the backpressure),
//!    but keep writing the outbox: a writer that waits for the inbox lets its session's
//!    queue fill, and the engine closes a full queue as a slow consumer.
//! 2. **Take only what the peer takes.** Take the next batch once the previous one is
//!    written; a peer that reads nothing fills its queue ([`HubConfig::outbound_queue`])
//!    and is closed as a slow consumer, which is the point.
//! 3. **Hand over input only while the outbox has room.** While
//!    [`Outbox::is_filling`], hand the peer's next frame to [`Inbound`] only after the
//!    writer has taken the outbox below half and the hub has answered what it was
//!    given: each input makes answers for the session itself (an ack, its own message),
//!    and a peer that sends quickly but reads would otherwise fill its queue with them
//!    and be closed as a slow consumer although it reads (its writer had not run yet, or
//!    it reads a moment late). `is_filling` counts the answers still owed for input
//!    already handed over ([`Outbox::owed`]: two per send, one per other input, until
//!    the hub has queued them; a send waiting for its commit or for the shared log is
//!    owed until then) as if they were queued, and the outbox wakes its reader when
//!    they settle below half with nothing to write, so one check covers inputs still in
//!    the hub's inbox and sends still being stored. [`Inbound::ready`] waits for both
//!    rule 1's room in the inbox and this one, so a transport that awaits it before
//!    each [`Inbound::start`] keeps rule 3 without checking `is_filling` itself.
//! 4. **End cleanly.** After [`Outbound::Close`], write the close (for WebSocket,
//!    [`CloseReason::ws_code`] and [`CloseReason::as_str`]) and end the connection. When
//!    the peer goes away first, [`Inbound::disconnect`] (or drop it). An outbox that ends
//!    without a close ([`Outbox::recv_many`] returns 0 first) means this side disconnected
//!    or the hub's task is gone.
//!
//! # Example
//!
//! A transport for peers that exchange text messages over a pair of channels (a
//! WebSocket works the same way with its `Stream` and `Sink` halves), in one task:
//!
//! ```
//! use chat_core::runtime::transport::{BatchLimit, Outbound, PeerFrame};
//! use chat_core::runtime::{Hub, HubClosed};
//! use tokio::sync::mpsc;
//!
//! /// Serves one peer until either side ends the session.
//! async fn serve(
//!     hub: Hub,
//!     mut from_peer: mpsc::Receiver<String>,
//!     to_peer: mpsc::Sender<String>,
//! ) -> Result<(), HubClosed> {
//!     let (mut inbound, mut outbox) = hub.connect().await?.split();
//!     let mut batch = Vec::new();
//!     let mut waiting = false; // a message waits for room in the hub's inbox
//!     loop {
//!         tokio::select! {
//!             biased;
//!             // Writing first, and whatever the inbox does (rule 1).
//!             n = outbox.recv_many(&mut batch, BatchLimit::default()) => {
//!                 if n == 0 {
//!                     return Ok(()); // the hub is gone
//!                 }
//!                 for item in batch.drain(..) {
//!                     match item {
//!                         Outbound::Frame(frame) => {
//!                             let _ = to_peer.send(frame.text().to_owned()).await;
//!                         }
//!                         Outbound::Close(reason) => {
//!                             let _ = to_peer.send(format!("closed: {}", reason.as_str())).await;
//!                             return Ok(());
//!                         }
//!                     }
//!                 }
//!             }
//!             ready = inbound.ready(), if waiting => {
//!                 ready?;
//!                 waiting = false;
//!             }
//!             // The peer is read only while the hub has room for what it says.
//!             text = from_peer.recv(), if !waiting => match text {
//!                 Some(text) => {
//!                     inbound.start(PeerFrame::Text(text.as_bytes()))?;
//!                     waiting = true;
//!                 }
//!                 None => break,
//!             },
//!         }
//!     }
//!     inbound.disconnect().await; // the peer left
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let hub = Hub::spawn(Default::default()).await.expect("hub starts");
//! let (peer_tx, from_peer) = mpsc::channel(8);
//! let (to_peer, mut peer_rx) = mpsc::channel(8);
//! let task = tokio::spawn(serve(hub.clone(), from_peer, to_peer));
//! peer_tx.send(r#"{"type":"hello","version":1,"name":"alice"}"#.into()).await.unwrap();
//! assert!(peer_rx.recv().await.unwrap().starts_with(r#"{"type":"welcome""#));
//! hub.shutdown().await;
//! # while let Some(text) = peer_rx.recv().await {
//! #     if text.starts_with("closed") {
//! #         assert_eq!(text, "closed: server shutting down");
//! #     }
//! # }
//! # task.await.unwrap().unwrap();
//! # }
//! ```
//!
//! `chat-axum` is the full-size example: one task per WebSocket that reads, frames and
//! writes with these calls, plus keepalive and close handshakes.
//!
//! [`Hub`]: super::Hub
//! [`Hub::connect`]: super::Hub::connect
//! [`HubConfig::outbound_queue`]: super::HubConfig::outbound_queue

use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Context, Poll, ready};

use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

use super::{Cmd, HubClosed};
use crate::ids::SessionId;
use crate::protocol::{self, ClientFrame, DecodeError, Encoded, ServerFrame};
use crate::server::{CloseReason, Input};

pub use super::outbox::Outbox;
use super::outbox::Owed;

/// The frames an input is expected to make for its own session, as transport rule 3
/// counts them until the driver settles them: a send makes two (its ack and the
/// message itself), anything else is counted as one. Both the [`Inbound`] that adds them
/// and the driver that settles them weigh an input with this, so the count cannot drift.
pub(super) fn answers(frame: &Result<ClientFrame, DecodeError>) -> usize {
    match frame {
        Ok(ClientFrame::Send(_)) => 2,
        _ => 1,
    }
}

/// What a transport got from its peer, for [`Inbound::start`] and [`Inbound::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerFrame<'a> {
    /// The payload of one text message: one JSON command (docs/PROTOCOL.md). It is
    /// decoded in the caller's task; what does not decode gets a `bad_frame` error.
    Text(&'a [u8]),
    /// The payload of one binary message. The protocol has none: it gets a `bad_frame`
    /// error.
    Binary(&'a [u8]),
    /// Something the transport could not turn into a message (invalid UTF-8 where its
    /// framing requires text, a field it cannot parse, …), and why: the client gets a
    /// `bad_frame` error with this text. Count it toward the client's bad frames this
    /// way rather than dropping it silently; close the connection instead when the
    /// framing itself is lost.
    Malformed(&'a str),
}

impl PeerFrame<'_> {
    /// Decodes the command, or says what is wrong with it.
    fn decode(self) -> Result<ClientFrame, DecodeError> {
        match self {
            PeerFrame::Text(bytes) => protocol::decode(bytes),
            PeerFrame::Binary(_) => Err(DecodeError {
                message: "binary frames are not supported; send JSON text".into(),
                id: None,
            }),
            PeerFrame::Malformed(why) => Err(DecodeError {
                message: why.to_owned(),
                id: None,
            }),
        }
    }
}

/// What a connection's writer gets from its [`Outbox`]: frames to write, then at most
/// one close.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A frame to write.
    Frame(Encoded),
    /// Close the connection with this reason after the frames before it.
    Close(CloseReason),
}

/// How much one [`Outbox::recv_many`] takes at most.
///
/// A batch holds at most `frames` items, and no more frames once those taken hold
/// `bytes` bytes (at least one is always taken, however large), so what a writer
/// buffers for a slow peer stays bounded whatever the frame sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimit {
    /// Items per batch at most (0 counts as 1).
    pub frames: usize,
    /// Stop adding frames once the batch holds this many bytes.
    pub bytes: usize,
}

impl Default for BatchLimit {
    /// 64 frames, 64 KiB.
    fn default() -> Self {
        BatchLimit {
            frames: 64,
            bytes: 64 * 1024,
        }
    }
}

/// One client's session on a [`Hub`](super::Hub), from
/// [`Hub::connect`](super::Hub::connect). Send `hello` first.
///
/// Typed frames for hosts and tests ([`Connection::send`], [`Connection::recv`]); a
/// transport [`split`](Connection::split)s it. Dropping it ends the session.
#[derive(Debug)]
pub struct Connection {
    inbound: Inbound,
    outbox: Outbox,
}

impl Connection {
    pub(super) fn new(
        session: SessionId,
        tx: mpsc::Sender<Cmd>,
        control: mpsc::UnboundedSender<Cmd>,
        outbox: Outbox,
    ) -> Connection {
        Connection {
            inbound: Inbound {
                session,
                tx,
                control,
                held: VecDeque::new(),
                waiting: None,
                open: true,
                owed: outbox.owed_handle(),
            },
            outbox,
        }
    }

    /// The session id (as in [`crate::Event`]s).
    #[must_use]
    pub fn session(&self) -> SessionId {
        self.inbound.session
    }

    /// Sends a command, waiting while the hub's inbox is full.
    pub async fn send(&mut self, frame: ClientFrame) -> Result<(), HubClosed> {
        self.inbound.start_input(Input::Received {
            session: self.inbound.session,
            frame: Ok(frame),
        })?;
        // The inbox only: an in-process session reads when it likes.
        poll_fn(|cx| self.inbound.poll_inbox(cx)).await
    }

    /// The next frame from the server, decoded; `None` once the session has ended (see
    /// [`Connection::close_reason`]).
    pub async fn recv(&mut self) -> Option<ServerFrame> {
        match self.outbox.recv().await? {
            Outbound::Frame(f) => f.decode().ok(),
            Outbound::Close(_) => None,
        }
    }

    /// Why the engine closed the session, once it has (frames before the close may
    /// still be waiting); `None` while it is open, or when it ended otherwise.
    #[must_use]
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.outbox.close_reason()
    }

    /// The two halves a transport drives: what the peer sends goes into the
    /// [`Inbound`], what to write comes out of the [`Outbox`].
    #[must_use]
    pub fn split(self) -> (Inbound, Outbox) {
        (self.inbound, self.outbox)
    }
}

/// The half of a session that hands the hub what the peer sent. Dropping it ends the
/// session at once; [`Inbound::disconnect`] ends it after what was sent before.
///
/// Sending has backpressure, in two forms over the same mechanism:
///
/// - async: [`Inbound::send`] returns once the hub's inbox has taken the frame; in a
///   `select!` loop, [`Inbound::ready`] then [`Inbound::start`] reads the peer only when
///   there is room. Both futures are cancel-safe: a frame already started is handed over
///   by the next call.
/// - poll, as a `Sink`: [`Inbound::poll_ready`] until it is ready, then one
///   [`Inbound::start`], which never waits.
pub struct Inbound {
    session: SessionId,
    tx: mpsc::Sender<Cmd>,
    control: mpsc::UnboundedSender<Cmd>,
    /// Inputs the inbox had no room for, oldest first (one, used as documented).
    held: VecDeque<Cmd>,
    /// Waits for room for `held`: created the first time the inbox is full.
    waiting: Option<PollSender<Cmd>>,
    /// Whether dropping it still has to tell the hub.
    open: bool,
    /// Where the answers owed for what it hands over are counted (transport rule 3).
    owed: Owed,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("session", &self.session)
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

impl Inbound {
    /// The session id (as in [`crate::Event`]s).
    #[must_use]
    pub fn session(&self) -> SessionId {
        self.session
    }

    /// Ready when the hub has taken every frame started so far and the session's queue
    /// has room for what they will make, so the next [`Inbound::start`] may follow
    /// (rules 1 and 3): pending while the hub's inbox is full (the task is woken when
    /// there is room; waiters get room in turn), and while the outbox, with the answers
    /// still owed, is half full or more ([`Outbox::is_filling`]; woken when the queue
    /// is read or the answers settle). `Err` once the hub has shut down.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HubClosed>> {
        ready!(self.poll_inbox(cx))?;
        ready!(self.owed.poll_room(cx));
        Poll::Ready(Ok(()))
    }

    /// Ready when the hub has taken every frame started so far.
    fn poll_inbox(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HubClosed>> {
        while let Some(cmd) = self.held.pop_front() {
            let sender = self
                .waiting
                .get_or_insert_with(|| PollSender::new(self.tx.clone()));
            match sender.poll_reserve(cx) {
                Poll::Ready(Ok(())) => {
                    if sender.send_item(cmd).is_err() {
                        return Poll::Ready(Err(HubClosed));
                    }
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Err(HubClosed)),
                Poll::Pending => {
                    self.held.push_front(cmd);
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Waits until [`Inbound::poll_ready`] is ready.
    pub async fn ready(&mut self) -> Result<(), HubClosed> {
        poll_fn(|cx| self.poll_ready(cx)).await
    }

    /// Hands `frame` to the hub without waiting. When the inbox is full it is held here
    /// and handed over by [`Inbound::poll_ready`], which must be ready before the next
    /// `start` (a frame started anyway is held too, in order, but unbounded). `Err` once
    /// the hub has shut down.
    pub fn start(&mut self, frame: PeerFrame<'_>) -> Result<(), HubClosed> {
        let frame = frame.decode();
        self.start_input(Input::Received {
            session: self.session,
            frame,
        })
    }

    /// Hands `frame` to the hub and waits until its inbox has taken it.
    pub async fn send(&mut self, frame: PeerFrame<'_>) -> Result<(), HubClosed> {
        self.start(frame)?;
        poll_fn(|cx| self.poll_inbox(cx)).await
    }

    /// Ends the session after every frame started before.
    pub async fn disconnect(mut self) {
        // The hub's inbox only: nobody reads the outbox any more.
        if poll_fn(|cx| self.poll_inbox(cx)).await.is_err() {
            return;
        }
        self.open = false;
        let _ = self
            .tx
            .send(Cmd::Input(Input::Disconnected {
                session: self.session,
            }))
            .await;
    }

    fn start_input(&mut self, input: Input) -> Result<(), HubClosed> {
        if let Input::Received { frame, .. } = &input {
            // Settled by the driver once the answers are queued (or none will come).
            self.owed.add(answers(frame));
        }
        let cmd = Cmd::Input(input);
        if !self.held.is_empty() {
            self.held.push_back(cmd); // behind what is held: inputs stay in order
            return Ok(());
        }
        match self.tx.try_send(cmd) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(cmd)) => {
                self.held.push_back(cmd);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(HubClosed),
        }
    }
}

impl Drop for Inbound {
    fn drop(&mut self) {
        if self.open {
            // Through the unbounded control channel: a drop cannot wait for room.
            let _ = self.control.send(Cmd::Input(Input::Disconnected {
                session: self.session,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Event;
    use crate::ids::RequestId;
    use crate::protocol::{HelloRequest, SendRequest};
    use crate::runtime::{Hub, HubConfig};
    use std::sync::Arc;

    fn send(id: u64, body: &str) -> Vec<u8> {
        let frame = ClientFrame::Send(SendRequest {
            id: Some(RequestId(id)),
            room: Some("general".into()),
            to: None,
            body: body.into(),
            client_id: None,
            reply_to: None,
        });
        serde_json::to_vec(&frame).expect("serialize")
    }

    /// With room for one input in the hub's inbox, inputs that find it full are held in
    /// order, `poll_ready` is pending until the hub has taken them, and the disconnect
    /// comes after them.
    #[tokio::test]
    async fn inputs_the_inbox_has_no_room_for_are_held_in_order() {
        let hub = Hub::spawn(HubConfig {
            inbox: 1,
            ..HubConfig::default()
        })
        .await
        .expect("hub");
        let mut events = hub.events();
        let (mut alice, mut out) = hub.connect().await.expect("connect").split();
        let hello = ClientFrame::Hello(HelloRequest {
            id: Some(RequestId(1)),
            version: protocol::PROTOCOL_VERSION,
            name: "alice".into(),
            token: None,
            rooms: None,
        });
        // The driver does not run before this task waits (one thread), so the connect
        // still takes the inbox's one place: all three are held.
        let hello = serde_json::to_vec(&hello).unwrap();
        alice.start(PeerFrame::Text(&hello)).unwrap();
        alice.start(PeerFrame::Text(&send(2, "first"))).unwrap();
        alice.start(PeerFrame::Text(&send(3, "second"))).unwrap();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(alice.poll_ready(&mut cx).is_pending());
        assert_eq!(alice.held.len(), 3);

        alice.ready().await.expect("hub runs");
        alice.disconnect().await;
        let mut acks = Vec::new();
        while let Some(item) = out.recv().await {
            if let Outbound::Frame(f) = item
                && let Ok(ServerFrame::Ack { id, .. }) = f.decode()
            {
                acks.push(id);
            }
        }
        assert_eq!(acks, [Some(RequestId(2)), Some(RequestId(3))]);
        let mut bodies = Vec::new();
        loop {
            match events.recv().await.expect("events") {
                Event::MessagePosted(m) => bodies.push(m.body.to_string()),
                Event::SessionClosed { .. } => break,
                _ => {}
            }
        }
        assert_eq!(bodies, ["first", "second"], "posted, then disconnected");
        hub.shutdown().await;
    }

    /// Binary and malformed frames are `bad_frame` errors with the transport's reason.
    #[tokio::test]
    async fn binary_and_malformed_frames_are_bad_frames() {
        let hub = Hub::spawn(HubConfig::default()).await.expect("hub");
        let mut conn = hub.connect().await.expect("connect");
        conn.send(ClientFrame::Hello(HelloRequest {
            id: None,
            version: protocol::PROTOCOL_VERSION,
            name: "alice".into(),
            token: None,
            rooms: None,
        }))
        .await
        .expect("hub runs");
        let (mut inbound, mut out) = conn.split();
        inbound.send(PeerFrame::Binary(b"{}")).await.unwrap();
        inbound
            .send(PeerFrame::Malformed("not UTF-8 at byte 3"))
            .await
            .unwrap();
        let mut errors = Vec::new();
        while errors.len() < 2 {
            match out.recv().await.expect("open") {
                Outbound::Frame(f) => {
                    if let Ok(ServerFrame::Error { code, message, .. }) = f.decode() {
                        errors.push((code, message));
                    }
                }
                Outbound::Close(reason) => panic!("closed: {reason:?}"),
            }
        }
        let code = protocol::ErrorCode::BadFrame;
        assert_eq!(
            errors,
            [
                (
                    code,
                    "binary frames are not supported; send JSON text".into()
                ),
                (code, "not UTF-8 at byte 3".into())
            ]
        );
        hub.shutdown().await;
    }

    /// Rule 3's count of the answers a session is owed settles back to nothing once
    /// every input is handled, also for inputs that are never answered (typing, a
    /// malformed or binary frame, a refused send), and with a store only after the
    /// sends are committed: a count that drifted up would stop the peer being read.
    #[tokio::test]
    async fn the_answers_owed_settle_to_nothing_whatever_the_inputs() {
        for store in [None, Some(crate::runtime::MemoryStore::new("e1"))] {
            let durable = store.is_some();
            let hub = Hub::spawn(HubConfig {
                store: store.map(|s| Arc::new(s) as Arc<dyn crate::runtime::Store>),
                ..HubConfig::default()
            })
            .await
            .expect("hub");
            let mut conn = hub.connect().await.expect("connect");
            conn.send(ClientFrame::Hello(HelloRequest {
                id: Some(RequestId(1)),
                version: protocol::PROTOCOL_VERSION,
                name: "alice".into(),
                token: None,
                rooms: None,
            }))
            .await
            .expect("hub runs");
            while !matches!(conn.recv().await, Some(ServerFrame::Welcome { .. })) {}
            let (mut inbound, mut out) = conn.split();
            assert_eq!(out.owed(), 0, "the hello was answered");
            let typing = br#"{"type":"typing","room":"general","active":true}"#;
            let nowhere = br#"{"type":"send","id":9,"room":"nowhere","body":"x"}"#;
            // One thread: the driver runs only once this task waits, so all are owed.
            for i in 0..10 {
                inbound.start(PeerFrame::Text(&send(10 + i, "hi"))).unwrap();
            }
            inbound.start(PeerFrame::Text(typing)).unwrap();
            inbound.start(PeerFrame::Text(nowhere)).unwrap();
            inbound.start(PeerFrame::Text(b"{")).unwrap();
            inbound.start(PeerFrame::Binary(b"{}")).unwrap();
            inbound.start(PeerFrame::Malformed("bad")).unwrap();
            assert_eq!(out.owed(), 10 * 2 + 2 + 1 + 1 + 1 + 1, "durable: {durable}");
            let mut acks = 0;
            while acks < 10 {
                match out.recv().await.expect("open") {
                    Outbound::Frame(f) => {
                        if let Ok(ServerFrame::Ack { .. }) = f.decode() {
                            acks += 1;
                        }
                    }
                    Outbound::Close(reason) => panic!("closed: {reason:?}"),
                }
            }
            // One more input, handled after all the others: once the driver has taken
            // it, nothing is owed.
            inbound.send(PeerFrame::Text(typing)).await.unwrap();
            for _ in 0..100 {
                if out.owed() == 0 {
                    break;
                }
                tokio::task::yield_now().await;
            }
            assert_eq!(out.owed(), 0, "durable: {durable}");
            assert!(!out.is_filling());
            hub.shutdown().await;
        }
    }
}
