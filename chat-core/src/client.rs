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
//! use chat_core::protocol::ClientFrame;
//!
//! let mut client = Client::new(ClientConfig::new("alice", "c1"));
//! client.connected();
//! let Some(ClientOutput::Transmit(ClientFrame::Hello { name, .. })) = client.poll_output() else {
//!     panic!("a hello first");
//! };
//! assert_eq!(name, "alice");
//! // Sends made before the welcome wait for it.
//! let id = client.send_to_room("general", "hi");
//! assert!(client.poll_output().is_none());
//! assert_eq!(client.pending_sends(), 1);
//! # let _ = id;
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::ids::{ClientMsgId, RequestId, RoomName, Seq, UserName};
use crate::protocol::{
    ClientFrame, ErrorCode, JoinSpec, Limits, Message, PROTOCOL_VERSION, RoomInfo, ServerFrame,
};

/// How a [`Client`] starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// The user name to ask for in `hello`.
    pub name: String,
    /// A token from an earlier `welcome` (to be another session of that user), or host
    /// credentials.
    pub token: Option<String>,
    /// Rooms for the first `hello`; `None` lets the server join its default rooms.
    pub rooms: Option<Vec<String>>,
    /// Prefix of the client ids of this client's sends. Make it unique per process (for
    /// example from a random number): client ids must not repeat for the same user.
    pub client_id_prefix: String,
}

impl ClientConfig {
    /// A config with a name and a client-id prefix; the server's default rooms.
    #[must_use]
    pub fn new(name: impl Into<String>, client_id_prefix: impl Into<String>) -> ClientConfig {
        ClientConfig {
            name: name.into(),
            token: None,
            rooms: None,
            client_id_prefix: client_id_prefix.into(),
        }
    }
}

/// Where the client is in the connection's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// No connection.
    Offline,
    /// Connected, `hello` sent, no `welcome` yet.
    Greeting,
    /// Welcomed: commands go out as they are made.
    Ready,
}

/// Something for the driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientOutput {
    /// Write this frame to the current connection.
    Transmit(ClientFrame),
    /// Tell the user (or the script) about this.
    Event(ClientEvent),
}

/// How a message reached the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Delivery {
    /// Posted while this client was in the room.
    Live,
    /// Missed while disconnected, delivered by a resume (`join` with `since`).
    CatchUp,
    /// Recent history sent with a first join: posted before this client came.
    Backlog,
}

/// The command an error frame refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// The `hello`.
    Hello,
    /// A `join` of this room (as the user typed it).
    Join {
        /// The room name as given.
        room: String,
    },
    /// A `leave`.
    Leave {
        /// The room.
        room: String,
    },
    /// A `send`; it is no longer pending.
    Send {
        /// Its client id.
        client_id: ClientMsgId,
        /// Where it went.
        target: Target,
        /// Its text.
        body: String,
    },
    /// A `history` request.
    History {
        /// The room.
        room: String,
    },
    /// A `rooms` request.
    Rooms,
    /// A `members` request.
    Members {
        /// The room.
        room: String,
    },
}

/// Where a send goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A room (as given; the server normalizes it).
    Room(String),
    /// A user: a direct message.
    User(String),
}

/// What happened, in the order the server said it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The server accepted the `hello`.
    Welcome {
        /// This client's user name, as the server normalized it.
        user: UserName,
        /// True when this is not the first welcome (a reconnect).
        resumed: bool,
        /// True when the server's history epoch changed since the last welcome: seqs
        /// restarted, cursors were dropped and earlier messages may be missing.
        epoch_changed: bool,
        /// The server's limits.
        limits: Limits,
    },
    /// This client is in a room (a reply to `join`, or to `hello`). The room's new
    /// messages follow as [`ClientEvent::Message`].
    Joined {
        /// The join's request id (`None` for rooms joined by `hello`).
        id: Option<RequestId>,
        /// The room.
        room: RoomName,
        /// Who is in it.
        members: Vec<UserName>,
        /// True when the server could not send everything after this client's cursor:
        /// some messages are missing before the ones that follow.
        gap: bool,
        /// The room's latest seq when it was joined: later messages are live; a
        /// `history` page `before` the next seq holds the earlier ones.
        last_seq: Seq,
    },
    /// This client left a room.
    Left {
        /// The leave's request id.
        id: Option<RequestId>,
        /// The room.
        room: RoomName,
    },
    /// A room message this client has not seen before.
    Message {
        /// The message.
        message: Arc<Message>,
        /// How it arrived.
        delivery: Delivery,
        /// Whether this client's user wrote it.
        own: bool,
    },
    /// The server stored a send of this client.
    Acked {
        /// The send's request id.
        id: Option<RequestId>,
        /// The room (for a direct message, `@a,b`).
        room: RoomName,
        /// The message's seq.
        seq: Seq,
        /// The send's client id.
        client_id: Option<ClientMsgId>,
        /// True when it had been posted already (a resend).
        duplicate: bool,
    },
    /// A page of history (not deduplicated: the caller asked for it).
    History {
        /// The request id.
        id: Option<RequestId>,
        /// The room.
        room: RoomName,
        /// Messages, oldest first.
        messages: Vec<Arc<Message>>,
        /// Whether older messages exist.
        has_more: bool,
    },
    /// The room list.
    Rooms {
        /// The request id.
        id: Option<RequestId>,
        /// The rooms.
        rooms: Vec<RoomInfo>,
    },
    /// A room's member list.
    Members {
        /// The request id.
        id: Option<RequestId>,
        /// The room.
        room: RoomName,
        /// Its users.
        members: Vec<UserName>,
    },
    /// Someone came into a room.
    UserJoined {
        /// The room.
        room: RoomName,
        /// Who.
        user: UserName,
        /// When.
        ts: DateTime<Utc>,
    },
    /// Someone left a room.
    UserLeft {
        /// The room.
        room: RoomName,
        /// Who.
        user: UserName,
        /// When.
        ts: DateTime<Utc>,
    },
    /// Someone started or stopped typing.
    Typing {
        /// The room.
        room: RoomName,
        /// Who.
        user: UserName,
        /// Whether they type.
        active: bool,
    },
    /// The server refused a command.
    Rejected {
        /// The command's request id, when it had one.
        id: Option<RequestId>,
        /// The command, when the client knows which.
        command: Option<Command>,
        /// The stable error code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The server is going away; reconnect after about `retry_after`.
    Goodbye {
        /// Why.
        reason: String,
        /// Suggested delay.
        retry_after: Duration,
    },
}

/// What the client knows about one room.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomState {
    members: Vec<UserName>,
    cursor: Option<Seq>,
    typing: BTreeSet<UserName>,
    member: bool,
}

impl RoomState {
    /// Who is in the room (as of the last join and presence events).
    #[must_use]
    pub fn members(&self) -> &[UserName] {
        &self.members
    }

    /// The last seq this client has seen (or skipped past on a first join).
    #[must_use]
    pub fn cursor(&self) -> Option<Seq> {
        self.cursor
    }

    /// Who is typing right now.
    pub fn typing(&self) -> impl Iterator<Item = &UserName> {
        self.typing.iter()
    }

    /// Whether this client is in the room (false for direct-message rooms, which have no
    /// membership).
    #[must_use]
    pub fn is_member(&self) -> bool {
        self.member
    }
}

#[derive(Debug, Clone)]
struct PendingSend {
    client_id: ClientMsgId,
    target: Target,
    body: String,
    request: Option<RequestId>,
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
    /// Sends not yet acknowledged, in the order they were made.
    pending: BTreeMap<u64, PendingSend>,
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
            requests: BTreeMap::new(),
            hello_id: None,
            next_request: 1,
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

    /// Sends not acknowledged yet.
    #[must_use]
    pub fn pending_sends(&self) -> usize {
        self.pending.len()
    }

    /// Whether a send with this client id is still waiting for its ack.
    #[must_use]
    pub fn is_pending(&self, client_id: &str) -> bool {
        self.pending.values().any(|p| &*p.client_id == client_id)
    }

    // --- connection inputs ---

    /// A connection opened: queues the `hello` that (re)starts the session, resuming
    /// every room from its cursor after the first welcome.
    pub fn connected(&mut self) {
        self.phase = Phase::Greeting;
        self.transmit_hello();
    }

    /// The connection ended. Typing indicators are cleared; unanswered requests other
    /// than sends are forgotten (sends are sent again after the next welcome).
    pub fn disconnected(&mut self) {
        self.phase = Phase::Offline;
        self.hello_id = None;
        for room in self.rooms.values_mut() {
            room.typing.clear();
        }
        for p in self.pending.values_mut() {
            p.request = None;
        }
        // Joins in flight are resumed by the next hello; leaves in flight are complete
        // from this client's side (the room is no longer resumed).
        self.requests.clear();
        self.leaving.clear();
    }

    /// Changes the name to ask for (after `name_taken`, say) and, when connected and not
    /// yet welcomed, asks again with it.
    pub fn retry_hello_as(&mut self, name: impl Into<String>) {
        self.config.name = name.into();
        if self.phase == Phase::Greeting {
            self.transmit_hello();
        }
    }

    /// A frame from the server.
    pub fn handle_frame(&mut self, frame: ServerFrame) {
        match frame {
            ServerFrame::Welcome {
                id: _,
                version: _,
                session: _,
                user,
                token,
                epoch,
                limits,
            } => self.on_welcome(user, token, epoch, limits),
            ServerFrame::Joined {
                id,
                room,
                members,
                messages,
                gap,
                last_seq,
            } => self.on_joined(id, room, members, messages, gap, last_seq),
            ServerFrame::Left { id, room } => {
                if let Some(id) = id {
                    self.requests.remove(&id);
                }
                self.leaving.remove(&room);
                self.rooms.remove(&room);
                self.event(ClientEvent::Left { id, room });
            }
            ServerFrame::Message(message) => self.on_message(message, Delivery::Live),
            ServerFrame::Ack {
                id,
                room,
                seq,
                ts: _,
                client_id,
                duplicate,
            } => {
                if let Some(id) = id {
                    self.requests.remove(&id);
                }
                let key = self
                    .pending
                    .iter()
                    .find(|(_, p)| {
                        client_id.as_ref().is_some_and(|c| *c == p.client_id)
                            || (id.is_some() && p.request == id)
                    })
                    .map(|(k, _)| *k);
                if let Some(key) = key {
                    self.pending.remove(&key);
                }
                self.event(ClientEvent::Acked {
                    id,
                    room,
                    seq,
                    client_id,
                    duplicate,
                });
            }
            ServerFrame::History {
                id,
                room,
                messages,
                has_more,
            } => {
                if let Some(id) = id {
                    self.requests.remove(&id);
                }
                self.event(ClientEvent::History {
                    id,
                    room,
                    messages,
                    has_more,
                });
            }
            ServerFrame::Rooms { id, rooms } => {
                if let Some(id) = id {
                    self.requests.remove(&id);
                }
                self.event(ClientEvent::Rooms { id, rooms });
            }
            ServerFrame::Members { id, room, members } => {
                if let Some(id) = id {
                    self.requests.remove(&id);
                }
                if let Some(state) = self.rooms.get_mut(&room).filter(|s| s.member) {
                    state.members.clone_from(&members);
                }
                self.event(ClientEvent::Members { id, room, members });
            }
            ServerFrame::UserJoined { room, user, ts } => {
                if let Some(state) = self.rooms.get_mut(&room) {
                    let key = user.key();
                    if !state.members.iter().any(|m| m.key() == key) {
                        let at = state.members.partition_point(|m| {
                            (m.key(), m.as_str()) < (key.clone(), user.as_str())
                        });
                        state.members.insert(at, user.clone());
                    }
                }
                self.event(ClientEvent::UserJoined { room, user, ts });
            }
            ServerFrame::UserLeft { room, user, ts } => {
                if let Some(state) = self.rooms.get_mut(&room) {
                    let key = user.key();
                    state.members.retain(|m| m.key() != key);
                    state.typing.retain(|t| t.key() != key);
                }
                self.event(ClientEvent::UserLeft { room, user, ts });
            }
            ServerFrame::Typing { room, user, active } => {
                if let Some(state) = self.rooms.get_mut(&room) {
                    if active {
                        state.typing.insert(user.clone());
                    } else {
                        state.typing.remove(&user);
                    }
                }
                self.event(ClientEvent::Typing { room, user, active });
            }
            ServerFrame::Error { id, code, message } => self.on_error(id, code, message),
            ServerFrame::Goodbye {
                reason,
                retry_after_ms,
            } => self.event(ClientEvent::Goodbye {
                reason,
                retry_after: Duration::from_millis(retry_after_ms),
            }),
        }
    }

    // --- commands ---

    /// Joins a room (created on first join), resuming from its cursor when this client
    /// has one. Returns the request id echoed in [`ClientEvent::Joined`].
    pub fn join(&mut self, room: &str) -> RequestId {
        let id = self.request_id();
        self.joining.insert(id, room.to_owned());
        self.requests.insert(
            id,
            Command::Join {
                room: room.to_owned(),
            },
        );
        let since = self.cursor_of(room);
        if self.phase == Phase::Ready {
            self.transmit(ClientFrame::Join {
                id: Some(id),
                room: room.to_owned(),
                since,
            });
        }
        id
    }

    /// Leaves a room. It is no longer resumed, and its late messages are dropped.
    pub fn leave(&mut self, room: &str) -> RequestId {
        let id = self.request_id();
        self.requests.insert(
            id,
            Command::Leave {
                room: room.to_owned(),
            },
        );
        let key = RoomName::key_of(room);
        self.joining
            .retain(|_, r| r != room && (key.is_none() || RoomName::key_of(r) != key));
        if let Some(name) = self.known_room(room) {
            self.rooms.remove(&name);
            self.leaving.insert(name);
        }
        if self.phase == Phase::Ready {
            self.transmit(ClientFrame::Leave {
                id: Some(id),
                room: room.to_owned(),
            });
        }
        id
    }

    /// Posts to a room. Returns the send's client id (echoed in [`ClientEvent::Acked`]).
    pub fn send_to_room(&mut self, room: &str, body: &str) -> ClientMsgId {
        self.send(Target::Room(room.to_owned()), body)
    }

    /// Sends a direct message to a user.
    pub fn send_to_user(&mut self, user: &str, body: &str) -> ClientMsgId {
        self.send(Target::User(user.to_owned()), body)
    }

    /// Posts a message. It is sent now when welcomed, otherwise after the next welcome,
    /// and again after every reconnect until it is acknowledged or rejected.
    pub fn send(&mut self, target: Target, body: &str) -> ClientMsgId {
        let n = self.next_send;
        self.next_send += 1;
        let client_id: ClientMsgId = format!("{}-{n}", self.config.client_id_prefix).into();
        self.pending.insert(
            n,
            PendingSend {
                client_id: client_id.clone(),
                target,
                body: body.to_owned(),
                request: None,
            },
        );
        if self.phase == Phase::Ready {
            self.transmit_pending(n);
        }
        client_id
    }

    /// Asks for a page of history: the newest `limit` messages before `before`.
    pub fn history(&mut self, room: &str, before: Option<Seq>, limit: Option<u32>) -> RequestId {
        let id = self.request_id();
        self.requests.insert(
            id,
            Command::History {
                room: room.to_owned(),
            },
        );
        if self.phase == Phase::Ready {
            self.transmit(ClientFrame::History {
                id: Some(id),
                room: room.to_owned(),
                before,
                limit,
            });
        }
        id
    }

    /// Asks for the room list.
    pub fn list_rooms(&mut self) -> RequestId {
        let id = self.request_id();
        self.requests.insert(id, Command::Rooms);
        if self.phase == Phase::Ready {
            self.transmit(ClientFrame::Rooms { id: Some(id) });
        }
        id
    }

    /// Asks who is in a room.
    pub fn members(&mut self, room: &str) -> RequestId {
        let id = self.request_id();
        self.requests.insert(
            id,
            Command::Members {
                room: room.to_owned(),
            },
        );
        if self.phase == Phase::Ready {
            self.transmit(ClientFrame::Members {
                id: Some(id),
                room: room.to_owned(),
            });
        }
        id
    }

    /// Says this user is (or stopped) typing in a room. Dropped when not connected:
    /// typing is ephemeral.
    pub fn typing(&mut self, room: &str, active: bool) {
        if self.phase == Phase::Ready {
            self.transmit(ClientFrame::Typing {
                room: room.to_owned(),
                active,
            });
        }
    }

    /// The next thing for the driver to do, in order.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<ClientOutput> {
        self.outputs.pop_front()
    }

    // --- helpers ---

    fn request_id(&mut self) -> RequestId {
        let id = self.next_request;
        self.next_request += 1;
        id
    }

    fn transmit(&mut self, frame: ClientFrame) {
        self.outputs.push_back(ClientOutput::Transmit(frame));
    }

    fn event(&mut self, event: ClientEvent) {
        self.outputs.push_back(ClientOutput::Event(event));
    }

    fn transmit_hello(&mut self) {
        let id = self.request_id();
        self.hello_id = Some(id);
        let rooms = if self.welcomed_once {
            let mut specs: Vec<JoinSpec> = self
                .rooms
                .iter()
                .filter(|(name, state)| state.member || name.direct_users().is_some())
                .map(|(name, state)| JoinSpec {
                    room: name.as_str().to_owned(),
                    since: state.cursor,
                })
                .collect();
            // Joins that were in flight: asked for again (their replies carry no id now).
            for raw in std::mem::take(&mut self.joining).into_values() {
                let key = RoomName::key_of(&raw);
                if !specs
                    .iter()
                    .any(|s| s.room == raw || (key.is_some() && RoomName::key_of(&s.room) == key))
                {
                    specs.push(JoinSpec {
                        room: raw,
                        since: None,
                    });
                }
            }
            Some(specs)
        } else {
            self.config.rooms.as_ref().map(|rooms| {
                rooms
                    .iter()
                    .map(|room| JoinSpec {
                        room: room.clone(),
                        since: None,
                    })
                    .collect()
            })
        };
        self.transmit(ClientFrame::Hello {
            id: Some(id),
            version: PROTOCOL_VERSION,
            name: self.config.name.clone(),
            token: self.token.clone(),
            rooms,
        });
    }

    fn transmit_pending(&mut self, key: u64) {
        let id = self.request_id();
        let Some(p) = self.pending.get_mut(&key) else {
            return;
        };
        p.request = Some(id);
        let (room, to) = match &p.target {
            Target::Room(room) => (Some(room.clone()), None),
            Target::User(user) => (None, Some(user.clone())),
        };
        let frame = ClientFrame::Send {
            id: Some(id),
            room,
            to,
            body: p.body.clone(),
            client_id: Some(p.client_id.clone()),
        };
        self.requests.insert(
            id,
            Command::Send {
                client_id: p.client_id.clone(),
                target: p.target.clone(),
                body: p.body.clone(),
            },
        );
        self.transmit(frame);
    }

    /// The room this raw name refers to (by the server's rule), if the client knows it.
    fn known_room(&self, raw: &str) -> Option<RoomName> {
        RoomName::key_of(raw).filter(|name| self.rooms.contains_key(name))
    }

    fn cursor_of(&self, raw: &str) -> Option<Seq> {
        self.known_room(raw)
            .and_then(|name| self.rooms.get(&name))
            .and_then(|s| s.cursor)
    }

    fn on_welcome(&mut self, user: UserName, token: Option<String>, epoch: String, limits: Limits) {
        let resumed = self.welcomed_once;
        let epoch_changed = self.epoch.as_ref().is_some_and(|e| *e != epoch);
        if epoch_changed {
            // Seqs restarted: the old cursors mean nothing on this server. The joins of
            // this hello then count as first joins.
            for room in self.rooms.values_mut() {
                room.cursor = None;
            }
        }
        self.phase = Phase::Ready;
        self.welcomed_once = true;
        self.hello_id = None;
        self.user = Some(user.clone());
        if token.is_some() {
            self.token = token;
        }
        self.epoch = Some(epoch);
        self.limits = Some(limits.clone());
        self.event(ClientEvent::Welcome {
            user,
            resumed,
            epoch_changed,
            limits,
        });
        // Joins made before the welcome (not part of the hello).
        let joins: Vec<(RequestId, String)> = self
            .joining
            .iter()
            .map(|(id, room)| (*id, room.clone()))
            .collect();
        for (id, room) in joins {
            self.requests
                .insert(id, Command::Join { room: room.clone() });
            let since = self.cursor_of(&room);
            self.transmit(ClientFrame::Join {
                id: Some(id),
                room,
                since,
            });
        }
        // Sends not acknowledged (made while offline, or lost with the last connection).
        let keys: Vec<u64> = self.pending.keys().copied().collect();
        for key in keys {
            self.transmit_pending(key);
        }
    }

    fn on_joined(
        &mut self,
        id: Option<RequestId>,
        room: RoomName,
        members: Vec<UserName>,
        messages: Vec<Arc<Message>>,
        gap: bool,
        last_seq: Seq,
    ) {
        if let Some(id) = id {
            self.requests.remove(&id);
            self.joining.remove(&id);
        }
        self.leaving.remove(&room);
        let direct = room.direct_users().is_some();
        let state = self.rooms.entry(room.clone()).or_default();
        state.member = !direct;
        state.members = members.clone();
        let delivery = if state.cursor.is_some() {
            Delivery::CatchUp
        } else {
            Delivery::Backlog
        };
        self.event(ClientEvent::Joined {
            id,
            room: room.clone(),
            members,
            gap,
            last_seq,
        });
        for message in messages {
            self.on_message(message, delivery);
        }
        // Everything up to the room's latest seq has now been delivered or deliberately
        // skipped (the history before a first join).
        let state = self.rooms.get_mut(&room).expect("inserted above");
        state.cursor = Some(state.cursor.map_or(last_seq, |c| c.max(last_seq)));
    }

    fn on_message(&mut self, message: Arc<Message>, delivery: Delivery) {
        if self.leaving.contains(&message.room) {
            return;
        }
        let state = self.rooms.entry(message.room.clone()).or_default();
        if state.cursor.is_some_and(|c| message.seq <= c) {
            return;
        }
        state.cursor = Some(message.seq);
        // A message ends its author's typing indicator (the server sends no stop).
        state.typing.remove(&message.user);
        let own = self
            .user
            .as_ref()
            .is_some_and(|me| me.key() == message.user.key());
        self.event(ClientEvent::Message {
            message,
            delivery,
            own,
        });
    }

    fn on_error(&mut self, id: Option<RequestId>, code: ErrorCode, message: String) {
        let mut command = id.and_then(|id| self.requests.remove(&id));
        if id.is_some() && id == self.hello_id {
            command = Some(Command::Hello);
        }
        match &command {
            Some(Command::Send { client_id, .. }) => {
                if code == ErrorCode::ShuttingDown {
                    // Not posted; the server is restarting. Sent again after reconnecting.
                    return;
                }
                self.pending.retain(|_, p| p.client_id != *client_id);
            }
            Some(Command::Join { .. }) => {
                if let Some(id) = id {
                    self.joining.remove(&id);
                }
            }
            _ => {}
        }
        self.event(ClientEvent::Rejected {
            id,
            command,
            code,
            message,
        });
    }
}

/// Reconnect delays: exponential from `initial` up to `max`, with jitter supplied by the
/// caller (the core draws no random numbers), reset after a successful connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `initial`, doubling up to `max`.
    #[must_use]
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The delay before the next attempt: the current step scaled into its upper half
    /// by `jitter` (any `u32`, e.g. random), so clients that lost the same server do not
    /// all come back at once.
    pub fn next_delay(&mut self, jitter: u32) -> Duration {
        let step = self
            .initial
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        let extra = half.mul_f64(f64::from(jitter) / f64::from(u32::MAX));
        half + extra
    }

    /// Starts over after a successful connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Attempts since the last reset.
    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn ts() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
    }

    fn limits() -> Limits {
        crate::Config::default().limits()
    }

    fn name(s: &str) -> UserName {
        UserName::parse(s, 32).unwrap()
    }

    fn room(s: &str) -> RoomName {
        RoomName::parse(s, 64, 32).unwrap()
    }

    fn msg(r: &str, seq: u64, user: &str, body: &str) -> Arc<Message> {
        Arc::new(Message {
            room: room(r),
            seq: Seq(seq),
            ts: ts(),
            user: name(user),
            body: body.into(),
            client_id: None,
        })
    }

    fn welcome(epoch: &str) -> ServerFrame {
        ServerFrame::Welcome {
            id: None,
            version: 1,
            session: crate::SessionId(1),
            user: name("alice"),
            token: Some("tok".into()),
            epoch: epoch.into(),
            limits: limits(),
        }
    }

    fn joined(r: &str, messages: Vec<Arc<Message>>, last_seq: u64) -> ServerFrame {
        ServerFrame::Joined {
            id: None,
            room: room(r),
            members: vec![name("alice")],
            messages,
            gap: false,
            last_seq: Seq(last_seq),
        }
    }

    fn drain(c: &mut Client) -> (Vec<ClientFrame>, Vec<ClientEvent>) {
        let (mut frames, mut events) = (vec![], vec![]);
        while let Some(o) = c.poll_output() {
            match o {
                ClientOutput::Transmit(f) => frames.push(f),
                ClientOutput::Event(e) => events.push(e),
            }
        }
        (frames, events)
    }

    fn bodies(events: &[ClientEvent]) -> Vec<(u64, String, Delivery)> {
        events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Message {
                    message, delivery, ..
                } => Some((message.seq.0, message.body.to_string(), *delivery)),
                _ => None,
            })
            .collect()
    }

    /// A client welcomed into `general` whose cursor is at `last_seq`.
    fn ready(last_seq: u64) -> Client {
        let mut c = Client::new(ClientConfig::new("alice", "p"));
        c.connected();
        c.handle_frame(welcome("e1"));
        c.handle_frame(joined("general", vec![], last_seq));
        drain(&mut c);
        c
    }

    #[test]
    fn first_hello_uses_the_configured_rooms_or_the_server_default() {
        let mut c = Client::new(ClientConfig::new("alice", "p"));
        c.connected();
        let (frames, _) = drain(&mut c);
        assert!(
            matches!(&frames[..], [ClientFrame::Hello { rooms: None, token: None, name, .. }] if name == "alice")
        );

        let mut config = ClientConfig::new("bob", "p");
        config.rooms = Some(vec!["Rust".into()]);
        config.token = Some("t0".into());
        let mut c = Client::new(config);
        c.connected();
        let (frames, _) = drain(&mut c);
        let ClientFrame::Hello { rooms, token, .. } = &frames[0] else {
            panic!("{frames:?}")
        };
        assert_eq!(token.as_deref(), Some("t0"));
        assert_eq!(
            rooms.as_deref(),
            Some(
                &[JoinSpec {
                    room: "Rust".into(),
                    since: None
                }][..]
            )
        );
    }

    #[test]
    fn reconnect_hello_resumes_every_room_from_its_cursor_with_the_token() {
        let mut c = ready(3);
        c.handle_frame(ServerFrame::Message(msg("general", 4, "bob", "x")));
        c.join("rust");
        c.handle_frame(ServerFrame::Joined {
            id: Some(2),
            room: room("rust"),
            members: vec![],
            messages: vec![],
            gap: false,
            last_seq: Seq(0),
        });
        // A direct message room is resumed too.
        c.handle_frame(ServerFrame::Message(msg("@alice,bob", 1, "bob", "psst")));
        drain(&mut c);
        c.disconnected();
        assert_eq!(c.phase(), Phase::Offline);
        c.connected();
        let (frames, _) = drain(&mut c);
        let ClientFrame::Hello { token, rooms, .. } = &frames[0] else {
            panic!("{frames:?}")
        };
        assert_eq!(token.as_deref(), Some("tok"));
        let rooms: Vec<(String, Option<u64>)> = rooms
            .as_ref()
            .unwrap()
            .iter()
            .map(|s| (s.room.clone(), s.since.map(|s| s.0)))
            .collect();
        assert_eq!(
            rooms,
            [
                ("@alice,bob".to_owned(), Some(1)),
                ("general".to_owned(), Some(4)),
                ("rust".to_owned(), Some(0)),
            ]
        );
    }

    #[test]
    fn messages_are_delivered_once_in_order_across_a_resume() {
        let mut c = ready(2);
        c.handle_frame(ServerFrame::Message(msg("general", 3, "bob", "three")));
        c.disconnected();
        c.connected();
        c.handle_frame(welcome("e1"));
        // The server answers the resume with exactly what came after 3 …
        c.handle_frame(joined(
            "general",
            vec![
                msg("general", 4, "bob", "four"),
                msg("general", 5, "bob", "five"),
            ],
            5,
        ));
        // … and a duplicate (say a re-sync join) is dropped.
        c.handle_frame(ServerFrame::Message(msg("general", 5, "bob", "five")));
        c.handle_frame(ServerFrame::Message(msg("general", 6, "bob", "six")));
        let (_, events) = drain(&mut c);
        assert_eq!(
            bodies(&events),
            [
                (3, "three".into(), Delivery::Live),
                (4, "four".into(), Delivery::CatchUp),
                (5, "five".into(), Delivery::CatchUp),
                (6, "six".into(), Delivery::Live),
            ]
        );
        assert!(events.iter().any(|e| matches!(
            e,
            ClientEvent::Welcome {
                resumed: true,
                epoch_changed: false,
                ..
            }
        )));
    }

    #[test]
    fn a_first_join_gives_backlog_and_moves_the_cursor_to_the_last_seq() {
        let mut c = Client::new(ClientConfig::new("alice", "p"));
        c.connected();
        c.handle_frame(welcome("e1"));
        c.handle_frame(joined(
            "general",
            vec![msg("general", 9, "bob", "nine")],
            10,
        ));
        let (_, events) = drain(&mut c);
        assert_eq!(bodies(&events), [(9, "nine".into(), Delivery::Backlog)]);
        assert_eq!(c.room(&room("general")).unwrap().cursor(), Some(Seq(10)));
    }

    #[test]
    fn a_new_epoch_drops_the_cursors() {
        let mut c = ready(40);
        c.disconnected();
        c.connected();
        c.handle_frame(welcome("e2"));
        // Seqs restarted: 1 and 2 are new messages, not duplicates of old 1 and 2.
        c.handle_frame(joined(
            "general",
            vec![msg("general", 1, "bob", "a"), msg("general", 2, "bob", "b")],
            2,
        ));
        let (_, events) = drain(&mut c);
        assert!(matches!(
            events[0],
            ClientEvent::Welcome {
                epoch_changed: true,
                ..
            }
        ));
        assert_eq!(
            bodies(&events),
            [
                (1, "a".into(), Delivery::Backlog),
                (2, "b".into(), Delivery::Backlog)
            ]
        );
        assert_eq!(c.room(&room("general")).unwrap().cursor(), Some(Seq(2)));
    }

    #[test]
    fn unacknowledged_sends_are_resent_with_the_same_client_id_until_acked() {
        let mut c = ready(0);
        let cid = c.send_to_room("general", "hello");
        let (frames, _) = drain(&mut c);
        let ClientFrame::Send {
            client_id, body, ..
        } = &frames[0]
        else {
            panic!("{frames:?}")
        };
        assert_eq!(client_id.as_ref(), Some(&cid));
        assert_eq!(body, "hello");
        // The connection drops before the ack.
        c.disconnected();
        assert_eq!(c.pending_sends(), 1);
        c.connected();
        c.handle_frame(welcome("e1"));
        let (frames, _) = drain(&mut c);
        let resent: Vec<_> = frames
            .iter()
            .filter_map(|f| match f {
                ClientFrame::Send { id, client_id, .. } => Some((*id, client_id.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(resent.len(), 1);
        assert_eq!(resent[0].1.as_ref(), Some(&cid));
        c.handle_frame(ServerFrame::Ack {
            id: resent[0].0,
            room: room("general"),
            seq: Seq(1),
            ts: ts(),
            client_id: Some(cid.clone()),
            duplicate: true,
        });
        assert_eq!(c.pending_sends(), 0);
        let (_, events) = drain(&mut c);
        assert!(matches!(
            &events[..],
            [ClientEvent::Acked {
                seq: Seq(1),
                duplicate: true,
                ..
            }]
        ));
        // Nothing is resent after the next reconnect.
        c.disconnected();
        c.connected();
        c.handle_frame(welcome("e1"));
        let (frames, _) = drain(&mut c);
        assert!(!frames.iter().any(|f| matches!(f, ClientFrame::Send { .. })));
    }

    #[test]
    fn sends_made_offline_wait_for_the_welcome_and_client_ids_are_unique() {
        let mut c = Client::new(ClientConfig::new("alice", "run7"));
        let a = c.send_to_room("general", "one");
        let b = c.send_to_user("bob", "two");
        assert_ne!(a, b);
        assert!(a.starts_with("run7-"));
        assert!(c.poll_output().is_none());
        c.connected();
        c.handle_frame(welcome("e1"));
        let (frames, _) = drain(&mut c);
        let sends: Vec<_> = frames
            .iter()
            .filter_map(|f| match f {
                ClientFrame::Send { room, to, body, .. } => {
                    Some((room.clone(), to.clone(), body.clone()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            sends,
            [
                (Some("general".into()), None, "one".into()),
                (None, Some("bob".into()), "two".into())
            ]
        );
    }

    #[test]
    fn a_rejected_send_is_reported_with_its_command_and_not_resent() {
        let mut c = ready(0);
        let cid = c.send_to_room("general", "   ");
        let (frames, _) = drain(&mut c);
        let ClientFrame::Send { id, .. } = frames[0] else {
            panic!()
        };
        c.handle_frame(ServerFrame::Error {
            id,
            code: ErrorCode::InvalidBody,
            message: "empty".into(),
        });
        let (_, events) = drain(&mut c);
        match &events[..] {
            [
                ClientEvent::Rejected {
                    command: Some(Command::Send { client_id, .. }),
                    code: ErrorCode::InvalidBody,
                    ..
                },
            ] => assert_eq!(*client_id, cid),
            other => panic!("{other:?}"),
        }
        assert_eq!(c.pending_sends(), 0);
    }

    #[test]
    fn a_send_refused_for_shutdown_stays_pending() {
        let mut c = ready(0);
        c.send_to_room("general", "hi");
        let (frames, _) = drain(&mut c);
        let ClientFrame::Send { id, .. } = frames[0] else {
            panic!()
        };
        c.handle_frame(ServerFrame::Error {
            id,
            code: ErrorCode::ShuttingDown,
            message: "bye".into(),
        });
        assert_eq!(c.pending_sends(), 1);
        assert!(drain(&mut c).1.is_empty());
    }

    #[test]
    fn errors_name_their_command() {
        let mut c = Client::new(ClientConfig::new("two words", "p"));
        c.connected();
        let (frames, _) = drain(&mut c);
        let ClientFrame::Hello { id, .. } = frames[0] else {
            panic!()
        };
        c.handle_frame(ServerFrame::Error {
            id,
            code: ErrorCode::InvalidName,
            message: "bad".into(),
        });
        let (_, events) = drain(&mut c);
        assert!(matches!(
            events[0],
            ClientEvent::Rejected {
                command: Some(Command::Hello),
                ..
            }
        ));
        c.retry_hello_as("alice");
        let (frames, _) = drain(&mut c);
        assert!(matches!(&frames[0], ClientFrame::Hello { name, .. } if name == "alice"));

        let mut c = ready(0);
        let id = c.join("two words");
        drain(&mut c);
        c.handle_frame(ServerFrame::Error {
            id: Some(id),
            code: ErrorCode::InvalidRoom,
            message: "bad".into(),
        });
        let (_, events) = drain(&mut c);
        assert!(matches!(
            &events[0],
            ClientEvent::Rejected { command: Some(Command::Join { room }), code: ErrorCode::InvalidRoom, .. } if room == "two words"
        ));
        // A failed join is not retried on reconnect.
        c.disconnected();
        c.connected();
        let (frames, _) = drain(&mut c);
        let ClientFrame::Hello { rooms, .. } = &frames[0] else {
            panic!()
        };
        assert_eq!(rooms.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn a_left_room_is_not_resumed_and_its_late_messages_are_dropped() {
        let mut c = ready(0);
        c.leave("General");
        let (frames, _) = drain(&mut c);
        assert!(matches!(&frames[0], ClientFrame::Leave { room, .. } if room == "General"));
        c.handle_frame(ServerFrame::Message(msg("general", 1, "bob", "late")));
        let (_, events) = drain(&mut c);
        assert!(bodies(&events).is_empty());
        c.disconnected();
        c.connected();
        let (frames, _) = drain(&mut c);
        let ClientFrame::Hello { rooms, .. } = &frames[0] else {
            panic!()
        };
        assert_eq!(rooms.as_deref(), Some(&[][..]));
    }

    #[test]
    fn joins_made_while_offline_or_in_flight_are_made_on_the_next_connection() {
        let mut c = Client::new(ClientConfig::new("alice", "p"));
        let early = c.join("rust");
        assert!(c.poll_output().is_none());
        c.connected();
        c.handle_frame(welcome("e1"));
        let (frames, _) = drain(&mut c);
        assert!(frames.iter().any(
            |f| matches!(f, ClientFrame::Join { id: Some(i), room, since: None } if *i == early && room == "rust")
        ));
        // In flight when the connection drops: asked for again in the next hello.
        c.disconnected();
        c.connected();
        let (frames, _) = drain(&mut c);
        let ClientFrame::Hello { rooms, .. } = &frames[0] else {
            panic!()
        };
        assert_eq!(rooms.as_ref().unwrap()[0].room, "rust");
    }

    #[test]
    fn a_room_is_known_by_any_spelling_the_server_takes_for_it() {
        let mut c = ready(0);
        c.handle_frame(joined("caf\u{e9}", vec![], 7));
        drain(&mut c);
        // NFD and capitals: the same room to the server, so it is resumed from its cursor.
        c.join("CAFE\u{301}");
        let (frames, _) = drain(&mut c);
        assert!(
            matches!(
                &frames[..],
                [ClientFrame::Join {
                    since: Some(Seq(7)),
                    ..
                }]
            ),
            "{frames:?}"
        );
        // Leaving by another spelling forgets the room and drops its late messages.
        c.leave(" Caf\u{e9} ");
        drain(&mut c);
        assert!(c.room(&room("caf\u{e9}")).is_none());
        c.handle_frame(ServerFrame::Message(msg("caf\u{e9}", 8, "bob", "late")));
        assert!(bodies(&drain(&mut c).1).is_empty());
    }

    #[test]
    fn members_and_typing_follow_presence_events() {
        let mut c = ready(0);
        let general = room("general");
        c.handle_frame(ServerFrame::UserJoined {
            room: general.clone(),
            user: name("Bob"),
            ts: ts(),
        });
        c.handle_frame(ServerFrame::UserJoined {
            room: general.clone(),
            user: name("carol"),
            ts: ts(),
        });
        let names = |c: &Client| -> Vec<String> {
            c.room(&general)
                .unwrap()
                .members()
                .iter()
                .map(|m| m.to_string())
                .collect()
        };
        assert_eq!(names(&c), ["alice", "Bob", "carol"]);
        c.handle_frame(ServerFrame::Typing {
            room: general.clone(),
            user: name("Bob"),
            active: true,
        });
        assert_eq!(c.room(&general).unwrap().typing().count(), 1);
        // Bob's message ends his typing indicator.
        c.handle_frame(ServerFrame::Message(msg("general", 1, "Bob", "hi")));
        assert_eq!(c.room(&general).unwrap().typing().count(), 0);
        c.handle_frame(ServerFrame::Typing {
            room: general.clone(),
            user: name("carol"),
            active: true,
        });
        c.handle_frame(ServerFrame::UserLeft {
            room: general.clone(),
            user: name("CAROL"),
            ts: ts(),
        });
        assert_eq!(names(&c), ["alice", "Bob"]);
        assert_eq!(c.room(&general).unwrap().typing().count(), 0);
        let (_, events) = drain(&mut c);
        assert!(matches!(events.last(), Some(ClientEvent::UserLeft { .. })));
    }

    #[test]
    fn own_messages_are_marked() {
        let mut c = ready(0);
        c.handle_frame(ServerFrame::Message(msg("general", 1, "ALICE", "me")));
        c.handle_frame(ServerFrame::Message(msg("general", 2, "bob", "you")));
        let (_, events) = drain(&mut c);
        let own: Vec<bool> = events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Message { own, .. } => Some(*own),
                _ => None,
            })
            .collect();
        assert_eq!(own, [true, false]);
    }

    #[test]
    fn commands_wait_for_the_welcome_except_typing() {
        let mut c = Client::new(ClientConfig::new("alice", "p"));
        c.typing("general", true);
        c.history("general", None, Some(5));
        assert!(c.poll_output().is_none());
        let mut c = ready(0);
        c.typing("general", true);
        let h = c.history("general", Some(Seq(7)), Some(5));
        let r = c.list_rooms();
        let m = c.members("general");
        let (frames, _) = drain(&mut c);
        assert_eq!(
            frames,
            [
                ClientFrame::Typing {
                    room: "general".into(),
                    active: true
                },
                ClientFrame::History {
                    id: Some(h),
                    room: "general".into(),
                    before: Some(Seq(7)),
                    limit: Some(5)
                },
                ClientFrame::Rooms { id: Some(r) },
                ClientFrame::Members {
                    id: Some(m),
                    room: "general".into()
                },
            ]
        );
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let lows: Vec<Duration> = (0..6).map(|_| b.next_delay(0)).collect();
        assert_eq!(
            lows,
            [50, 100, 200, 400, 500, 500].map(Duration::from_millis)
        );
        assert_eq!(b.attempts(), 6);
        b.reset();
        let high = b.next_delay(u32::MAX);
        assert_eq!(high, Duration::from_millis(100));
        let mid = b.next_delay(u32::MAX / 2);
        assert!(mid > Duration::from_millis(100) && mid < Duration::from_millis(200));
    }
}
