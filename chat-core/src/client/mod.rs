//! The client side of the protocol as a sans-IO state machine: which rooms this client is
//! in, the last seq it has seen in each, the sends still waiting for an `ack`, and the
//! `hello` that resumes all of it after a reconnect.
//!
//! It does no I/O and reads no clock, like the [`Server`](crate::Server). A driver (the
//! terminal client `chat-cli`, a bot, a test) owns a [`Client`] and loops:
//!
//! 1. when a connection opens, call [`Client::connected`]; feed every frame the server
//!    sends to [`Client::handle_frame`]; when the connection ends, call
//!    [`Client::disconnected`];
//! 2. call the command methods ([`Client::join`], [`Client::send`], …) as the user acts;
//! 3. after each of these, drain [`Client::poll_output`]: write each
//!    [`ClientOutput::Transmit`] frame to the current connection, and act on each
//!    [`ClientOutput::Event`].
//!
//! What it guarantees to the driver:
//!
//! - **Exactly once, in order.** A room's messages come out as [`ClientEvent::Message`]
//!   in seq order, each at most once per client, across reconnects (a message whose seq
//!   is not above the room's cursor is dropped).
//! - **Resume.** The `hello` built on reconnect carries the token from the last `welcome`
//!   and every room with its cursor (`since`), so the server answers exactly the missed
//!   messages. When the new `welcome` brings another epoch, the cursors are dropped
//!   (seqs restarted) and the driver is told.
//! - **Idempotent sends.** Every send gets a client id. Sends not yet acknowledged when
//!   the connection drops are sent again, with the same client id, after the next
//!   `welcome`: the server then acknowledges them without posting them twice.
//!
//! ```
//! use chat_core::client::{Client, ClientConfig, ClientEvent, ClientOutput};
//! use chat_core::protocol::{ClientFrame, HelloRequest};
//!
//! let mut client = Client::new(ClientConfig::new("alice", "c1"));
//! client.connected();
//! let Some(ClientOutput::Transmit(ClientFrame::Hello(HelloRequest { name, .. }))) = client.poll_output() else {
//!     panic!("a hello first");
//! };
//! assert_eq!(name, "alice");
//! // Sends made before the welcome wait for it.
//! let id = client.send_to_room("general", "hi");
//! assert!(client.poll_output().is_none());
//! assert_eq!(client.pending_sends(), 1);
//! # let _ = id;
//! ```

mod backoff;
mod commands;
mod config;
mod connection;
mod events;
mod inbound;
mod pacer;
mod room;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::ids::{ClientMsgId, RequestId, RoomName, Seq, UserName};
use crate::protocol::Limits;

pub use backoff::Backoff;
pub use config::{ClientConfig, Phase};
pub use events::{ClientEvent, ClientOutput, Command, Delivery, MessageChange, Moderation, Target};
pub use pacer::Pacer;
pub use room::RoomState;

/// A post waiting for its `ack`: sent again, with the same client id, after every
/// reconnect until then.
#[derive(Debug, Clone)]
struct PendingSend {
    client_id: ClientMsgId,
    post: Post,
    request: Option<RequestId>,
}

/// What a pending post is.
#[derive(Debug, Clone)]
enum Post {
    /// A message, perhaps answering another.
    Message {
        target: Target,
        body: String,
        reply_to: Option<Seq>,
    },
    /// A change to a message of a room.
    Change { room: String, change: MessageChange },
}

impl Post {
    /// Whether it names a seq (a change, a reply), which means nothing under another
    /// history epoch.
    fn names_a_seq(&self) -> bool {
        matches!(
            self,
            Post::Change { .. }
                | Post::Message {
                    reply_to: Some(_),
                    ..
                }
        )
    }
}

/// The client state machine. See the [module docs](self).
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    phase: Phase,
    welcomed_once: bool,
    user: Option<UserName>,
    token: Option<String>,
    epoch: Option<String>,
    limits: Option<Limits>,
    rooms: BTreeMap<RoomName, RoomState>,
    /// Joins asked for but not yet answered, by request id (raw names).
    joining: BTreeMap<RequestId, String>,
    /// Rooms left but not yet confirmed: their late messages are dropped.
    leaving: BTreeSet<RoomName>,
    /// Sends and changes not yet acknowledged, in the order they were made.
    pending: BTreeMap<u64, PendingSend>,
    /// Rooms whose read marker moved while not connected: sent after the welcome.
    unsent_reads: BTreeSet<RoomName>,
    requests: BTreeMap<RequestId, Command>,
    hello_id: Option<RequestId>,
    next_request: RequestId,
    next_send: u64,
    outputs: VecDeque<ClientOutput>,
}

impl Client {
    /// A client that is not connected yet.
    #[must_use]
    pub fn new(config: ClientConfig) -> Client {
        let token = config.token.clone();
        Client {
            config,
            phase: Phase::Offline,
            welcomed_once: false,
            user: None,
            token,
            epoch: None,
            limits: None,
            rooms: BTreeMap::new(),
            joining: BTreeMap::new(),
            leaving: BTreeSet::new(),
            pending: BTreeMap::new(),
            unsent_reads: BTreeSet::new(),
            requests: BTreeMap::new(),
            hello_id: None,
            next_request: RequestId(1),
            next_send: 1,
            outputs: VecDeque::new(),
        }
    }

    // --- getters ---

    /// Where the connection is.
    #[must_use]
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// This client's user name, once welcomed.
    #[must_use]
    pub fn user(&self) -> Option<&UserName> {
        self.user.as_ref()
    }

    /// The token from the last welcome (to open another session as the same user).
    #[must_use]
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The server's history epoch, once welcomed.
    #[must_use]
    pub fn epoch(&self) -> Option<&str> {
        self.epoch.as_deref()
    }

    /// The server's limits, once welcomed.
    #[must_use]
    pub fn limits(&self) -> Option<&Limits> {
        self.limits.as_ref()
    }

    /// Every room this client is in or has direct messages in, by name.
    pub fn rooms(&self) -> impl Iterator<Item = (&RoomName, &RoomState)> {
        self.rooms.iter()
    }

    /// One room's state.
    #[must_use]
    pub fn room(&self, room: &RoomName) -> Option<&RoomState> {
        self.rooms.get(room)
    }

    /// Sends (and changes: edits, deletes, reactions) not acknowledged yet.
    #[must_use]
    pub fn pending_sends(&self) -> usize {
        self.pending.len()
    }

    /// Whether a send or change with this client id is still waiting for its ack.
    #[must_use]
    pub fn is_pending(&self, client_id: &str) -> bool {
        self.pending.values().any(|p| &*p.client_id == client_id)
    }
}
