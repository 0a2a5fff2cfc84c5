//! The chat server as a sans-IO state machine.
//!
//! Feed it [`Input`]s with [`Server::handle_input`], drain [`Output`]s with
//! [`Server::poll_output`] until `None`, and call [`Server::handle_timeout`] when the
//! instant from [`Server::poll_timeout`] is reached.

mod limits;
mod rooms;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::ids::{ClientMsgId, NameError, RequestId, RoomName, Seq, SessionId, UserKey, UserName};
use crate::protocol::{
    ClientFrame, DecodeError, Encoded, ErrorCode, JoinSpec, Limits, Message, PROTOCOL_VERSION,
    RoomInfo, ServerFrame,
};
pub use limits::Rate;
use limits::TokenBucket;
use rooms::{Acker, Page, Pending, Posted, Room};

/// The current time, passed in: the core never reads a clock.
///
/// `mono` drives timers; `utc` stamps messages. A driver builds it from
/// `Instant::now()` and `Utc::now()`; tests build it once and [`Now::advance`] it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time, for timers and rate limits.
    pub mono: Instant,
    /// Wall-clock time, for message timestamps.
    pub utc: DateTime<Utc>,
}

impl Now {
    /// Builds a time from its two clocks.
    #[must_use]
    pub fn new(mono: Instant, utc: DateTime<Utc>) -> Now {
        Now { mono, utc }
    }

    /// The same time `d` later on both clocks.
    #[must_use]
    pub fn advance(self, d: Duration) -> Now {
        let utc = self.utc + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero());
        Now {
            mono: self.mono + d,
            utc,
        }
    }
}

/// How users prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AuthMode {
    /// Anyone may take a free name, as in the original app. A name belongs to whoever took
    /// it while one of its sessions is online or in its grace period; further sessions of
    /// that user prove it with the token from `welcome`.
    #[default]
    Anonymous,
    /// The host app decides: every `hello` becomes [`Output::Authenticate`] and waits for
    /// [`Input::Authenticated`].
    Host,
}

/// Server configuration. [`Config::default`] has the defaults of DESIGN.md §5.
#[derive(Debug, Clone)]
pub struct Config {
    /// How users are identified.
    pub auth: AuthMode,
    /// Rooms joined on `hello` when the client names none.
    pub default_rooms: Vec<String>,
    /// Whether `join` creates a room that does not exist.
    pub create_rooms_on_join: bool,
    /// Most rooms that may exist at once.
    pub max_rooms: usize,
    /// Longest user name, in characters.
    pub max_name_chars: usize,
    /// Longest room name, in characters.
    pub max_room_chars: usize,
    /// Largest body, in bytes.
    pub max_body_bytes: usize,
    /// Largest WebSocket frame (enforced by the adapter; announced in `welcome`).
    pub max_frame_bytes: usize,
    /// Most rooms per session.
    pub max_rooms_per_session: usize,
    /// Messages kept in memory per room.
    pub history_window: usize,
    /// Messages sent with `joined`.
    pub history_on_join: usize,
    /// Default history page.
    pub history_page_default: usize,
    /// Largest history page.
    pub history_page_max: usize,
    /// How long a disconnected user stays present (and keeps the name) before "left".
    pub presence_grace: Duration,
    /// How long a typing indicator lasts unless renewed.
    pub typing_expiry: Duration,
    /// Typing frames accepted per session (excess is dropped silently).
    pub typing_rate: Rate,
    /// Message sends per session.
    pub send_rate: Rate,
    /// All frames per session; beyond it the connection is closed as a flood.
    pub frame_rate: Rate,
    /// Rejections (rate limited ×1, bad frame ×2, each accepted command −1) before the
    /// connection is closed.
    pub max_strikes: u32,
    /// How long a congested session gets no ephemeral events.
    pub congestion_backoff: Duration,
    /// When true every message goes through [`Output::Persist`] and is delivered and
    /// acked only after [`Input::Persisted`].
    pub durable: bool,
    /// History epoch announced in `welcome`; a new epoch tells clients seqs restarted.
    pub epoch: String,
    /// Secret for anonymous-mode tokens. The runtime fills it with random bytes.
    pub secret: [u8; 32],
    /// Reconnect delay suggested in `goodbye` on shutdown.
    pub shutdown_retry_after: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            auth: AuthMode::Anonymous,
            default_rooms: vec!["general".to_owned()],
            create_rooms_on_join: true,
            max_rooms: 10_000,
            max_name_chars: 32,
            max_room_chars: 64,
            max_body_bytes: 4096,
            max_frame_bytes: 64 * 1024,
            max_rooms_per_session: 100,
            history_window: 1000,
            history_on_join: 50,
            history_page_default: 50,
            history_page_max: 1000,
            presence_grace: Duration::from_secs(5),
            typing_expiry: Duration::from_secs(6),
            typing_rate: Rate {
                burst: 4,
                per_second: 1,
            },
            send_rate: Rate {
                burst: 10,
                per_second: 5,
            },
            frame_rate: Rate {
                burst: 200,
                per_second: 50,
            },
            max_strikes: 20,
            congestion_backoff: Duration::from_secs(10),
            durable: false,
            epoch: "0".to_owned(),
            secret: [0; 32],
            shutdown_retry_after: Duration::from_secs(2),
        }
    }
}

impl Config {
    /// The limits as announced to clients.
    #[must_use]
    pub fn limits(&self) -> Limits {
        Limits {
            max_name_chars: self.max_name_chars,
            max_room_chars: self.max_room_chars,
            max_body_bytes: self.max_body_bytes,
            max_frame_bytes: self.max_frame_bytes,
            max_rooms_per_session: self.max_rooms_per_session,
            history_page_max: self.history_page_max,
            send_burst: self.send_rate.burst,
            sends_per_second: self.send_rate.per_second,
            typing_expiry_ms: u64::try_from(self.typing_expiry.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// Something that happened outside the state machine.
#[derive(Debug)]
#[non_exhaustive]
pub enum Input {
    /// A connection opened. The driver picks a fresh id.
    Connected {
        /// The new session.
        session: SessionId,
    },
    /// A text frame arrived, decoded with [`crate::protocol::decode`] (in the driver's
    /// reader task, so decoding runs in parallel with the core).
    Received {
        /// From whom.
        session: SessionId,
        /// The frame, or why it could not be decoded.
        frame: Result<ClientFrame, DecodeError>,
    },
    /// The connection closed (by the peer, by the network, or after [`Output::Close`]).
    Disconnected {
        /// Which.
        session: SessionId,
    },
    /// The driver could not queue a [`Output::Send`] for this session: its outbound
    /// queue is full. The frame was dropped.
    QueueFull {
        /// Which session.
        session: SessionId,
        /// Whether the dropped frame was ephemeral ([`Encoded::is_ephemeral`]).
        ephemeral: bool,
    },
    /// The host's answer to [`Output::Authenticate`]: the user name, or why not.
    Authenticated {
        /// The session that said hello.
        session: SessionId,
        /// The authenticated user's name, or a reason for the refusal.
        result: Result<String, String>,
    },
    /// The store's answer to [`Output::Persist`].
    Persisted {
        /// The message's room.
        room: RoomName,
        /// The message's seq.
        seq: Seq,
        /// Whether it was committed.
        result: Result<(), StoreError>,
    },
    /// The store's answer to [`Output::LoadHistory`].
    HistoryLoaded {
        /// The request's ticket.
        ticket: u64,
        /// The page (oldest first) and whether older messages exist.
        result: Result<(Vec<Message>, bool), StoreError>,
    },
    /// The host posts a message (a bot, a system notice) without a connection.
    /// Answered by [`Output::Published`].
    Publish {
        /// Echoed in [`Output::Published`].
        ticket: u64,
        /// Target room (created if rooms are created on join).
        room: String,
        /// Author name shown to users.
        user: String,
        /// Text.
        body: String,
        /// Optional idempotency key, as in `send`.
        client_id: Option<ClientMsgId>,
    },
}

/// Something for the driver to do.
#[derive(Debug)]
#[non_exhaustive]
pub enum Output {
    /// Queue this frame on this session's connection. The same [`Encoded`] (one
    /// allocation) goes to every recipient of a room event.
    Send {
        /// Recipient.
        to: SessionId,
        /// The frame.
        frame: Encoded,
    },
    /// Close this session's connection after the frames already queued for it.
    /// The core has already forgotten the session.
    Close {
        /// Which.
        session: SessionId,
        /// Why (a WebSocket close code and reason).
        reason: CloseReason,
    },
    /// Durable mode: store this message, then answer with [`Input::Persisted`].
    /// Messages come in seq order per room; answer in the same order.
    Persist(Arc<Message>),
    /// Durable mode: read a history page the window does not hold, then answer with
    /// [`Input::HistoryLoaded`].
    LoadHistory {
        /// Echo in the answer.
        ticket: u64,
        /// Room.
        room: RoomName,
        /// Only seqs below this (none: the latest).
        before: Option<Seq>,
        /// Page size.
        limit: usize,
    },
    /// Host auth mode: check these credentials, then answer with [`Input::Authenticated`].
    Authenticate {
        /// The session saying hello.
        session: SessionId,
        /// The name it asked for.
        name: String,
        /// The `token` field of its hello.
        credentials: Option<String>,
    },
    /// The outcome of [`Input::Publish`].
    Published {
        /// The publish's ticket.
        ticket: u64,
        /// The posted message (or the earlier one, for a repeated client id), or why not.
        result: Result<Arc<Message>, ErrorCode>,
    },
    /// Something the host app may want to observe.
    Event(Event),
    /// After [`Server::shutdown`]: every pending message is settled and every session
    /// has been told to go. The driver can stop once the closes are flushed.
    Drained,
}

/// Observable events for the host app (metrics, logs, integrations).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A session completed `hello`.
    SessionOpened {
        /// Session.
        session: SessionId,
        /// Its user.
        user: UserName,
    },
    /// A session ended.
    SessionClosed {
        /// Session.
        session: SessionId,
        /// Its user, if it had said hello.
        user: Option<UserName>,
        /// Set when the server closed it.
        reason: Option<CloseReason>,
    },
    /// A user appeared in a room.
    UserJoined {
        /// Room.
        room: RoomName,
        /// User.
        user: UserName,
    },
    /// A user left a room.
    UserLeft {
        /// Room.
        room: RoomName,
        /// User.
        user: UserName,
    },
    /// A room was created.
    RoomCreated(RoomName),
    /// A message was posted (delivered to the room's members).
    MessagePosted(Arc<Message>),
    /// A command was rejected with an error frame.
    Rejected {
        /// Session.
        session: SessionId,
        /// The error code sent.
        code: ErrorCode,
    },
}

/// Why the server closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// Its outbound queue was full of messages it did not read.
    SlowConsumer,
    /// It sent frames faster than allowed, or kept sending rejected commands.
    Flood,
    /// Its hello named a protocol version the server does not speak.
    UnsupportedVersion,
    /// The identity hook refused it.
    AuthFailed,
    /// The server is shutting down; reconnect later.
    Shutdown,
}

impl CloseReason {
    /// The WebSocket close code for this reason.
    #[must_use]
    pub fn ws_code(self) -> u16 {
        match self {
            CloseReason::SlowConsumer => 1013,
            CloseReason::Flood | CloseReason::AuthFailed => 1008,
            CloseReason::UnsupportedVersion => 1002,
            CloseReason::Shutdown => 1012,
        }
    }

    /// The close reason text.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::Flood => "flood",
            CloseReason::UnsupportedVersion => "unsupported protocol version",
            CloseReason::AuthFailed => "authentication failed",
            CloseReason::Shutdown => "server shutting down",
        }
    }
}

/// A storage failure reported by the driver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("storage unavailable: {0}")]
pub struct StoreError(pub String);

/// The driver used the API wrongly (a bug in the driver, not in a client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiMisuse {
    /// [`Input::Connected`] with an id that is still connected.
    #[error("session {0} is already connected")]
    DuplicateSession(SessionId),
    /// [`Input::Persisted`] for a message that is not pending.
    #[error("message {room}#{seq} is not waiting for the store")]
    NotPending {
        /// Room.
        room: RoomName,
        /// Seq.
        seq: Seq,
    },
    /// An answer with a ticket nobody asked for.
    #[error("unknown ticket {0}")]
    UnknownTicket(u64),
    /// [`Input::Authenticated`] for a session that is not waiting for it.
    #[error("session {0} is not authenticating")]
    NotAuthenticating(SessionId),
}

#[derive(Debug)]
enum Phase {
    /// Connected, no hello yet.
    New,
    /// Host mode: waiting for [`Input::Authenticated`].
    Authenticating {
        id: Option<RequestId>,
        rooms: Option<Vec<JoinSpec>>,
    },
    /// Welcomed as this user.
    Ready(UserKey),
}

#[derive(Debug)]
struct Session {
    phase: Phase,
    rooms: BTreeSet<RoomName>,
    frames: TokenBucket,
    sends: TokenBucket,
    typing: TokenBucket,
    strikes: u32,
    congested_until: Option<Instant>,
}

#[derive(Debug)]
struct User {
    name: UserName,
    sessions: BTreeSet<SessionId>,
    token: Option<String>,
    /// Set when the last session went away: the name stays held until then.
    grace_until: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Linger(RoomName, UserKey),
    Grace(UserKey),
    Typing(RoomName, UserKey),
}

#[derive(Debug)]
struct HistoryTicket {
    session: SessionId,
    id: Option<RequestId>,
    room: RoomName,
}

/// The chat server state machine. See the [crate docs](crate) for the run loop.
#[derive(Debug)]
pub struct Server {
    config: Config,
    sessions: BTreeMap<SessionId, Session>,
    users: BTreeMap<UserKey, User>,
    rooms: BTreeMap<RoomName, Room>,
    timers: BTreeSet<(Instant, Timer)>,
    outputs: VecDeque<Output>,
    history_tickets: BTreeMap<u64, HistoryTicket>,
    next_ticket: u64,
    claims: u64,
    shutting_down: bool,
    drained: bool,
    /// The time of the latest input, for checks in helpers that are not handed `now`.
    now: Option<Instant>,
}

impl Server {
    /// A server with no sessions and no rooms.
    #[must_use]
    pub fn new(config: Config) -> Server {
        Server {
            config,
            sessions: BTreeMap::new(),
            users: BTreeMap::new(),
            rooms: BTreeMap::new(),
            timers: BTreeSet::new(),
            outputs: VecDeque::new(),
            history_tickets: BTreeMap::new(),
            next_ticket: 0,
            claims: 0,
            shutting_down: false,
            drained: false,
            now: None,
        }
    }

    // ---- getters ----

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Number of open sessions.
    #[must_use]
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Number of rooms.
    #[must_use]
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// The users present in a public room (including those in their grace period),
    /// or the two users of a direct room. `None` if the room does not exist.
    #[must_use]
    pub fn members(&self, room: &RoomName) -> Option<Vec<UserName>> {
        self.rooms.get(room).map(|r| self.member_names(r))
    }

    /// The rooms a session is in.
    #[must_use]
    pub fn session_rooms(&self, session: SessionId) -> Option<Vec<RoomName>> {
        self.sessions
            .get(&session)
            .map(|s| s.rooms.iter().cloned().collect())
    }

    /// A room's last delivered seq.
    #[must_use]
    pub fn last_seq(&self, room: &RoomName) -> Option<Seq> {
        self.rooms.get(room).map(|r| r.last_delivered)
    }

    // ---- inputs ----

    /// Feeds one input. Afterwards drain [`Server::poll_output`] and re-arm the timer
    /// from [`Server::poll_timeout`]. Client misbehaviour never gives `Err`: it becomes
    /// error frames and closes. `Err` means the driver broke the contract.
    pub fn handle_input(&mut self, now: Now, input: Input) -> Result<(), ApiMisuse> {
        self.now = Some(now.mono);
        match input {
            Input::Connected { session } => self.on_connected(now, session),
            Input::Received { session, frame } => {
                self.on_received(now, session, frame);
                Ok(())
            }
            Input::Disconnected { session } => {
                self.drop_session(now, session, None);
                Ok(())
            }
            Input::QueueFull { session, ephemeral } => {
                self.on_queue_full(now, session, ephemeral);
                Ok(())
            }
            Input::Authenticated { session, result } => self.on_authenticated(now, session, result),
            Input::Persisted { room, seq, result } => self.on_persisted(now, room, seq, result),
            Input::HistoryLoaded { ticket, result } => self.on_history_loaded(ticket, result),
            Input::Publish {
                ticket,
                room,
                user,
                body,
                client_id,
            } => {
                self.on_publish(now, ticket, &room, &user, body, client_id);
                Ok(())
            }
        }
    }

    /// Fires every timer due at `now`: presence grace periods and typing expiry.
    pub fn handle_timeout(&mut self, now: Now) {
        self.now = Some(now.mono);
        while let Some((at, _)) = self.timers.first() {
            if *at > now.mono {
                break;
            }
            let (at, timer) = self.timers.pop_first().expect("first exists");
            match timer {
                Timer::Linger(room, user) => self.on_linger_expired(now, at, &room, &user),
                Timer::Grace(user) => {
                    let expired = self
                        .users
                        .get(&user)
                        .is_some_and(|u| u.sessions.is_empty() && u.grace_until == Some(at));
                    if expired {
                        self.users.remove(&user);
                    }
                }
                Timer::Typing(room, user) => {
                    let due = self
                        .rooms
                        .get(&room)
                        .is_some_and(|r| r.typing.get(&user) == Some(&at));
                    if due {
                        self.stop_typing(&room, &user);
                    }
                }
            }
        }
    }

    /// Restores a room from the store at startup: its newest messages (oldest first), its
    /// last seq, and whether the store holds anything older than `recent`.
    pub fn restore_room(
        &mut self,
        room: RoomName,
        last_seq: Seq,
        recent: Vec<Message>,
        complete: bool,
    ) {
        let window = self.config.history_window;
        self.rooms
            .entry(room.clone())
            .or_insert_with(|| Room::new(room))
            .restore(last_seq, recent, complete, window);
    }

    /// Starts a graceful shutdown: new hellos are refused; once every pending message is
    /// settled, every session gets `goodbye` and a close, then [`Output::Drained`].
    pub fn shutdown(&mut self, now: Now) {
        self.shutting_down = true;
        self.maybe_finish_shutdown(now);
    }

    // ---- outputs ----

    /// The next thing to do, if any. Drain until `None` after every input.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Server::handle_timeout`] should next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    // ---- connection lifecycle ----

    fn on_connected(&mut self, now: Now, session: SessionId) -> Result<(), ApiMisuse> {
        if self.sessions.contains_key(&session) {
            return Err(ApiMisuse::DuplicateSession(session));
        }
        let c = &self.config;
        self.sessions.insert(
            session,
            Session {
                phase: Phase::New,
                rooms: BTreeSet::new(),
                frames: TokenBucket::full(c.frame_rate, now.mono),
                sends: TokenBucket::full(c.send_rate, now.mono),
                typing: TokenBucket::full(c.typing_rate, now.mono),
                strikes: 0,
                congested_until: None,
            },
        );
        Ok(())
    }

    /// Forgets a session: leaves its rooms (with the presence grace period), releases its
    /// user. With a reason, the driver is told to close it.
    fn drop_session(&mut self, now: Now, sid: SessionId, reason: Option<CloseReason>) {
        let Some(session) = self.sessions.remove(&sid) else {
            return;
        };
        if let Some(reason) = reason {
            self.outputs.push_back(Output::Close {
                session: sid,
                reason,
            });
        }
        let Phase::Ready(key) = session.phase else {
            self.event(Event::SessionClosed {
                session: sid,
                user: None,
                reason,
            });
            return;
        };
        let grace = self.config.presence_grace;
        for room_name in &session.rooms {
            let Some(room) = self.rooms.get_mut(room_name) else {
                continue;
            };
            room.remove_session(sid);
            let Some(member) = room.member_mut(&key) else {
                continue;
            };
            member.sessions.remove(&sid);
            if member.sessions.is_empty() {
                if self.shutting_down {
                    room.remove_member(&key);
                } else {
                    let until = now.mono + grace;
                    member.linger_until = Some(until);
                    self.timers
                        .insert((until, Timer::Linger(room_name.clone(), key.clone())));
                }
                if room.typing.contains_key(&key) {
                    self.stop_typing(room_name, &key);
                }
            }
        }
        let user = self
            .users
            .get_mut(&key)
            .expect("ready sessions have a user");
        user.sessions.remove(&sid);
        let name = user.name.clone();
        if user.sessions.is_empty() {
            let until = now.mono + grace;
            user.grace_until = Some(until);
            self.timers.insert((until, Timer::Grace(key.clone())));
            // Typing in direct rooms ends with the user's last session.
            let direct: Vec<RoomName> = self
                .rooms
                .values()
                .filter(|r| r.direct.is_some() && r.typing.contains_key(&key))
                .map(|r| r.name.clone())
                .collect();
            for room in direct {
                self.stop_typing(&room, &key);
            }
        }
        self.event(Event::SessionClosed {
            session: sid,
            user: Some(name),
            reason,
        });
    }

    fn on_linger_expired(&mut self, now: Now, at: Instant, room_name: &RoomName, key: &UserKey) {
        let Some(room) = self.rooms.get_mut(room_name) else {
            return;
        };
        let expired = room
            .member(key)
            .is_some_and(|m| m.sessions.is_empty() && m.linger_until == Some(at));
        if !expired {
            return;
        }
        room.remove_member(key);
        let user = self.display_name(key);
        self.announce_left(now, room_name, user);
    }

    fn on_queue_full(&mut self, now: Now, sid: SessionId, ephemeral: bool) {
        if ephemeral {
            let backoff = self.config.congestion_backoff;
            if let Some(s) = self.sessions.get_mut(&sid) {
                s.congested_until = Some(now.mono + backoff);
            }
        } else {
            // A reliable frame was lost for this session: it must reconnect and resume.
            self.drop_session(now, sid, Some(CloseReason::SlowConsumer));
        }
    }

    // ---- commands ----

    fn on_received(&mut self, now: Now, sid: SessionId, frame: Result<ClientFrame, DecodeError>) {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        if session
            .frames
            .take(self.config.frame_rate, now.mono)
            .is_err()
        {
            self.drop_session(now, sid, Some(CloseReason::Flood));
            return;
        }
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                // The decoder's message may quote the offending input (an unknown field
                // name, a string value): never echo a whole hostile frame back.
                let message = clip(e.message, 200);
                self.reject(now, sid, e.id, ErrorCode::BadFrame, message, 2);
                return;
            }
        };
        let user = match (&session.phase, &frame) {
            (Phase::New, ClientFrame::Hello { .. }) => None,
            (_, ClientFrame::Hello { id, .. }) => {
                let id = *id;
                self.reject(
                    now,
                    sid,
                    id,
                    ErrorCode::AlreadyWelcomed,
                    "hello was already accepted",
                    1,
                );
                return;
            }
            (Phase::Ready(user), _) => Some(user.clone()),
            (_, other) => {
                let id = request_id(other);
                self.reject(now, sid, id, ErrorCode::HelloRequired, "say hello first", 1);
                return;
            }
        };
        match (frame, user) {
            (
                ClientFrame::Hello {
                    id,
                    version,
                    name,
                    token,
                    rooms,
                },
                _,
            ) => {
                self.hello(now, sid, id, version, name, token, rooms);
            }
            (ClientFrame::Join { id, room, since }, Some(user)) => {
                self.join(now, sid, &user, id, &room, since);
            }
            (ClientFrame::Leave { id, room }, Some(user)) => self.leave(now, sid, &user, id, &room),
            (
                ClientFrame::Send {
                    id,
                    room,
                    to,
                    body,
                    client_id,
                },
                Some(user),
            ) => {
                self.send(now, sid, &user, id, room, to, body, client_id);
            }
            (
                ClientFrame::History {
                    id,
                    room,
                    before,
                    limit,
                },
                Some(user),
            ) => {
                self.history(now, sid, &user, id, &room, before, limit);
            }
            (ClientFrame::Rooms { id }, Some(user)) => self.list_rooms(sid, &user, id),
            (ClientFrame::Members { id, room }, Some(user)) => {
                self.list_members(now, sid, &user, id, &room)
            }
            (ClientFrame::Typing { room, active }, Some(user)) => {
                self.typing(now, sid, &user, &room, active)
            }
            (_, None) => unreachable!("only hello gets here without a user"),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn hello(
        &mut self,
        now: Now,
        sid: SessionId,
        id: Option<RequestId>,
        version: u32,
        name: String,
        token: Option<String>,
        rooms: Option<Vec<JoinSpec>>,
    ) {
        if self.shutting_down {
            self.reject(
                now,
                sid,
                id,
                ErrorCode::ShuttingDown,
                "the server is shutting down",
                0,
            );
            self.drop_session(now, sid, Some(CloseReason::Shutdown));
            return;
        }
        if version != PROTOCOL_VERSION {
            let msg = format!("this server speaks protocol version {PROTOCOL_VERSION}");
            self.reject(now, sid, id, ErrorCode::UnsupportedVersion, msg, 0);
            self.drop_session(now, sid, Some(CloseReason::UnsupportedVersion));
            return;
        }
        if self.config.auth == AuthMode::Host {
            let s = self.sessions.get_mut(&sid).expect("checked by caller");
            s.phase = Phase::Authenticating { id, rooms };
            self.outputs.push_back(Output::Authenticate {
                session: sid,
                name,
                credentials: token,
            });
            return;
        }
        let name = match UserName::parse(&name, self.config.max_name_chars) {
            Ok(name) => name,
            Err(e) => {
                self.reject(now, sid, id, ErrorCode::InvalidName, format!("name {e}"), 1);
                return;
            }
        };
        let key = name.key();
        if let Some(user) = self.users.get(&key) {
            let proven = token.is_some() && token == user.token;
            if !proven {
                let msg = format!("the name {} is in use", user.name);
                self.reject(now, sid, id, ErrorCode::NameTaken, msg, 1);
                return;
            }
        }
        self.welcome(now, sid, id, name, rooms, true);
    }

    fn on_authenticated(
        &mut self,
        now: Now,
        sid: SessionId,
        result: Result<String, String>,
    ) -> Result<(), ApiMisuse> {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return Ok(());
        };
        // Check before taking the phase: a stray answer must not reset a welcomed session.
        if !matches!(session.phase, Phase::Authenticating { .. }) {
            return Err(ApiMisuse::NotAuthenticating(sid));
        }
        let Phase::Authenticating { id, rooms } = std::mem::replace(&mut session.phase, Phase::New)
        else {
            unreachable!("checked above");
        };
        let name = result.and_then(|n| {
            UserName::parse(&n, self.config.max_name_chars)
                .map_err(|e| format!("identity name {e}"))
        });
        match name {
            Ok(name) => self.welcome(now, sid, id, name, rooms, false),
            Err(reason) => {
                self.reject(now, sid, id, ErrorCode::AuthFailed, reason, 0);
                self.drop_session(now, sid, Some(CloseReason::AuthFailed));
            }
        }
        Ok(())
    }

    fn welcome(
        &mut self,
        now: Now,
        sid: SessionId,
        id: Option<RequestId>,
        name: UserName,
        rooms: Option<Vec<JoinSpec>>,
        anonymous: bool,
    ) {
        let key = name.key();
        let user = match self.users.get_mut(&key) {
            Some(user) => user,
            None => {
                self.claims += 1;
                let token = anonymous.then(|| self.token(&key));
                self.users.entry(key.clone()).or_insert(User {
                    name: name.clone(),
                    sessions: BTreeSet::new(),
                    token,
                    grace_until: None,
                })
            }
        };
        user.sessions.insert(sid);
        user.grace_until = None;
        let (user_name, token) = (user.name.clone(), user.token.clone());
        self.sessions.get_mut(&sid).expect("caller checked").phase = Phase::Ready(key.clone());
        let frame = ServerFrame::Welcome {
            id,
            version: PROTOCOL_VERSION,
            session: sid,
            user: user_name.clone(),
            token,
            epoch: self.config.epoch.clone(),
            limits: self.config.limits(),
        };
        self.send_to(sid, &frame);
        self.event(Event::SessionOpened {
            session: sid,
            user: user_name,
        });
        let specs = rooms.unwrap_or_else(|| {
            self.config
                .default_rooms
                .iter()
                .map(|r| JoinSpec {
                    room: r.clone(),
                    since: None,
                })
                .collect()
        });
        for spec in specs.into_iter().take(self.config.max_rooms_per_session) {
            if !self.sessions.contains_key(&sid) {
                break;
            }
            self.join(now, sid, &key, None, &spec.room, spec.since);
        }
    }

    fn token(&self, key: &UserKey) -> String {
        let mut input = Vec::with_capacity(key.as_str().len() + 8);
        input.extend_from_slice(&self.claims.to_le_bytes());
        input.extend_from_slice(key.as_str().as_bytes());
        let hash = blake3::keyed_hash(&self.config.secret, &input);
        hash.to_hex()[..32].to_owned()
    }

    fn join(
        &mut self,
        now: Now,
        sid: SessionId,
        key: &UserKey,
        id: Option<RequestId>,
        raw_room: &str,
        since: Option<Seq>,
    ) {
        let Some(room_name) = self.parse_room(now, sid, id, raw_room, key) else {
            return;
        };
        let session = self.sessions.get(&sid).expect("caller checked");
        let already = session.rooms.contains(&room_name);
        if !already
            && room_name.direct_users().is_none()
            && session.rooms.len() >= self.config.max_rooms_per_session
        {
            let msg = format!(
                "a session can be in at most {} rooms",
                self.config.max_rooms_per_session
            );
            self.reject(now, sid, id, ErrorCode::TooManyRooms, msg, 1);
            return;
        }
        if !self.rooms.contains_key(&room_name) {
            let direct = room_name.direct_users().is_some();
            if direct {
                // Nobody has written here yet: show it empty without creating it, so that
                // joining made-up direct rooms cannot use up the server's room limit.
                let empty = Room::new(room_name.clone());
                let frame = ServerFrame::Joined {
                    id,
                    room: room_name,
                    members: self.member_names(&empty),
                    messages: vec![],
                    gap: since.is_some_and(|s| s > Seq(0)),
                    last_seq: Seq(0),
                };
                self.send_to(sid, &frame);
                self.accepted(sid);
                return;
            }
            if !self.config.create_rooms_on_join {
                self.reject(
                    now,
                    sid,
                    id,
                    ErrorCode::RoomNotFound,
                    format!("no room {room_name}"),
                    1,
                );
                return;
            }
            if !self.create_room(now, sid, id, &room_name) {
                return;
            }
        }
        let room = self.rooms.get_mut(&room_name).expect("exists now");
        let mut announce = false;
        if room.direct.is_none() && !already {
            room.add_session(sid);
            let users = &self.users;
            let (member, added) = room.add_member(key, || display_name(users, key));
            announce = added;
            member.sessions.insert(sid);
            member.linger_until = None;
            self.sessions
                .get_mut(&sid)
                .expect("checked")
                .rooms
                .insert(room_name.clone());
        }
        let frame = self.joined_frame(id, &room_name, since);
        if announce {
            let user = self.display_name(key);
            let notice = Encoded::new(&ServerFrame::UserJoined {
                room: room_name.clone(),
                user: user.clone(),
                ts: now.utc,
            });
            self.fan_out(&room_name, &notice, Some(sid), None);
            self.event(Event::UserJoined {
                room: room_name.clone(),
                user,
            });
        }
        self.outputs.push_back(Output::Send { to: sid, frame });
        self.accepted(sid);
    }

    /// The `joined` frame for an existing room: its members and the messages for `since`.
    /// Built from the room's member list in JSON and its messages' encoded frames, so
    /// each join copies bytes instead of serializing every member's name again.
    fn joined_frame(
        &self,
        id: Option<RequestId>,
        room_name: &RoomName,
        since: Option<Seq>,
    ) -> Encoded {
        let room = &self.rooms[room_name];
        // A direct room's two users are listed by their current names, as `members` does.
        let direct_members = room
            .direct
            .is_some()
            .then(|| serde_json::to_vec(&self.member_names(room)).expect("names always serialize"));
        let members_json = match &direct_members {
            Some(json) => json,
            None => room.members_json(),
        };
        let on_join = self.config.history_on_join;
        let (messages, gap) = match since {
            None => (room.latest(on_join), false),
            Some(since) => match room.after(since) {
                Some(messages) => (messages, false),
                None => (room.latest(on_join), true),
            },
        };
        let messages = messages.map(|p| (&p.msg, &p.frame));
        let last_seq = room.last_delivered;
        let frame = Encoded::joined(id, room_name, members_json, messages.clone(), gap, last_seq);
        debug_assert_eq!(
            frame,
            Encoded::new(&ServerFrame::Joined {
                id,
                room: room_name.clone(),
                members: self.member_names(room),
                messages: messages.map(|(m, _)| m.clone()).collect(),
                gap,
                last_seq,
            })
        );
        frame
    }

    /// Creates a room, or rejects when the server holds as many as allowed.
    fn create_room(
        &mut self,
        now: Now,
        sid: SessionId,
        id: Option<RequestId>,
        name: &RoomName,
    ) -> bool {
        if self.rooms.len() >= self.config.max_rooms {
            self.reject(
                now,
                sid,
                id,
                ErrorCode::LimitReached,
                "the server has as many rooms as it allows",
                1,
            );
            return false;
        }
        self.rooms.insert(name.clone(), Room::new(name.clone()));
        self.event(Event::RoomCreated(name.clone()));
        true
    }

    fn leave(
        &mut self,
        now: Now,
        sid: SessionId,
        key: &UserKey,
        id: Option<RequestId>,
        raw_room: &str,
    ) {
        let Some(room_name) = self.parse_room(now, sid, id, raw_room, key) else {
            return;
        };
        if room_name.direct_users().is_some() {
            // Direct rooms have no membership to leave: answer so clients can close the view.
            self.send_to(
                sid,
                &ServerFrame::Left {
                    id,
                    room: room_name,
                },
            );
            return;
        }
        let session = self.sessions.get_mut(&sid).expect("caller checked");
        if !session.rooms.remove(&room_name) {
            self.reject(
                now,
                sid,
                id,
                ErrorCode::NotMember,
                format!("not in {room_name}"),
                1,
            );
            return;
        }
        let room = self.rooms.get_mut(&room_name).expect("session rooms exist");
        room.remove_session(sid);
        let member = room.member_mut(key).expect("session is a member");
        member.sessions.remove(&sid);
        let last = member.sessions.is_empty() && member.linger_until.is_none();
        self.send_to(
            sid,
            &ServerFrame::Left {
                id,
                room: room_name.clone(),
            },
        );
        if last {
            let room = self.rooms.get_mut(&room_name).expect("exists");
            room.remove_member(key);
            if room.typing.contains_key(key) {
                self.stop_typing(&room_name, key);
            }
            let user = self.display_name(key);
            self.announce_left(now, &room_name, user);
        }
        self.accepted(sid);
    }

    fn announce_left(&mut self, now: Now, room_name: &RoomName, user: UserName) {
        let notice = Encoded::new(&ServerFrame::UserLeft {
            room: room_name.clone(),
            user: user.clone(),
            ts: now.utc,
        });
        self.fan_out(room_name, &notice, None, None);
        self.event(Event::UserLeft {
            room: room_name.clone(),
            user,
        });
        if self.rooms.get(room_name).is_some_and(Room::is_disposable) {
            self.rooms.remove(room_name);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        now: Now,
        sid: SessionId,
        key: &UserKey,
        id: Option<RequestId>,
        room: Option<String>,
        to: Option<String>,
        body: String,
        client_id: Option<ClientMsgId>,
    ) {
        if self.shutting_down {
            self.reject(
                now,
                sid,
                id,
                ErrorCode::ShuttingDown,
                "the server is shutting down",
                0,
            );
            return;
        }
        let room_name = match (room, to) {
            (Some(room), None) => {
                let Some(room_name) = self.parse_room(now, sid, id, &room, key) else {
                    return;
                };
                room_name
            }
            (None, Some(to)) => {
                let Some(room_name) = self.direct_room_to(now, sid, id, key, &to) else {
                    return;
                };
                room_name
            }
            _ => {
                self.reject(
                    now,
                    sid,
                    id,
                    ErrorCode::InvalidRequest,
                    "give exactly one of room and to",
                    1,
                );
                return;
            }
        };
        if let Err((code, msg)) = check_body(&body, self.config.max_body_bytes) {
            self.reject(now, sid, id, code, msg, 1);
            return;
        }
        let is_member = match room_name.direct_users() {
            Some(_) => true, // parse_room checked the sender is one of the two
            None => self.sessions[&sid].rooms.contains(&room_name),
        };
        if !is_member {
            self.reject(
                now,
                sid,
                id,
                ErrorCode::NotMember,
                format!("join {room_name} first"),
                1,
            );
            return;
        }
        let session = self.sessions.get_mut(&sid).expect("caller checked");
        if let Err(wait) = session.sends.take(self.config.send_rate, now.mono) {
            let msg = format!("too many messages; retry in {} ms", wait.as_millis().max(1));
            self.reject(now, sid, id, ErrorCode::RateLimited, msg, 1);
            return;
        }
        if let Some((a, b)) = room_name
            .direct_users()
            .filter(|_| !self.rooms.contains_key(&room_name))
        {
            // A direct room comes into being with its first message: only with a user who
            // exists (in anonymous mode, as for `to`) and within the server's room limit.
            let other = if &a == key { b } else { a };
            if self.config.auth == AuthMode::Anonymous && !self.users.contains_key(&other) {
                let msg = format!("{} is not online", other.as_str());
                self.reject(now, sid, id, ErrorCode::UserNotFound, msg, 1);
                return;
            }
            if !self.create_room(now, sid, id, &room_name) {
                return;
            }
        }
        let author = self.display_name(key);
        self.post(
            now,
            &room_name,
            author,
            body.into(),
            client_id,
            Acker::Session(sid, id),
        );
        self.accepted(sid);
    }

    /// Resolves `to` into the direct room of the sender and that user.
    fn direct_room_to(
        &mut self,
        now: Now,
        sid: SessionId,
        id: Option<RequestId>,
        key: &UserKey,
        to: &str,
    ) -> Option<RoomName> {
        let Ok(name) = UserName::parse(to, self.config.max_name_chars) else {
            self.reject(
                now,
                sid,
                id,
                ErrorCode::InvalidName,
                format!("no valid user name {to:?}"),
                1,
            );
            return None;
        };
        let other = name.key();
        // In anonymous mode a name means nothing once its holder is gone, so only known
        // users can be written to; with host identities a name is stable.
        if self.config.auth == AuthMode::Anonymous && !self.users.contains_key(&other) {
            self.reject(
                now,
                sid,
                id,
                ErrorCode::UserNotFound,
                format!("{name} is not online"),
                1,
            );
            return None;
        }
        Some(RoomName::direct(key, &other))
    }

    /// Posts a message: assigns seq and time, then delivers (or, durable, persists first).
    fn post(
        &mut self,
        now: Now,
        room_name: &RoomName,
        author: UserName,
        body: Arc<str>,
        client_id: Option<ClientMsgId>,
        acker: Acker,
    ) {
        let durable = self.config.durable;
        let key = author.key();
        let room = self
            .rooms
            .get_mut(room_name)
            .expect("caller ensured the room exists");
        if let Some(cid) = &client_id
            && let Some(seq) = room.lookup_client_id(&key, cid)
        {
            if let Some(p) = room.pending.iter_mut().find(|p| p.posted.msg.seq == seq) {
                p.ackers.push(acker);
                return;
            }
            if let Some(msg) = room.find(seq).cloned() {
                self.ack(&acker, &msg, true);
                return;
            }
            // No longer held in memory: post it anew rather than leave the sender
            // without any answer.
        }
        let (seq, ts) = room.stamp(now.utc);
        // Sending ends the author's typing (clients clear it when the message arrives).
        // Cleared now, at acceptance, so typing that starts again while a durable
        // message waits for the store is kept and re-announced after the message.
        room.typing.remove(&key);
        let msg = Arc::new(Message {
            room: room_name.clone(),
            seq,
            ts,
            user: author,
            body,
            client_id: client_id.clone(),
        });
        if let Some(cid) = client_id {
            room.remember_client_id(key.clone(), cid, seq);
        }
        let frame = Encoded::new(&ServerFrame::Message(msg.clone()));
        let pending = Pending {
            posted: Posted {
                msg: msg.clone(),
                frame,
            },
            author: key,
            committed: !durable,
            ackers: vec![acker],
        };
        room.pending.push_back(pending);
        if durable {
            self.outputs.push_back(Output::Persist(msg));
        } else {
            self.release(room_name);
        }
    }

    /// Delivers the committed messages at the front of a room's pending queue, in seq order.
    fn release(&mut self, room_name: &RoomName) {
        let window = self.config.history_window;
        loop {
            let room = self.rooms.get_mut(room_name).expect("pending rooms exist");
            if !room.pending.front().is_some_and(|p| p.committed) {
                break;
            }
            let p = room.pending.pop_front().expect("front exists");
            room.push_history(p.posted.clone(), window);
            let typing_again = room.typing.contains_key(&p.author);
            self.fan_out(room_name, &p.posted.frame, None, None);
            if typing_again {
                // Clients cleared the author's typing on the message; it started again
                // while the message waited for the store.
                let frame = Encoded::new(&ServerFrame::Typing {
                    room: room_name.clone(),
                    user: p.posted.msg.user.clone(),
                    active: true,
                });
                self.fan_out(room_name, &frame, None, Some(&p.author));
            }
            // The first acker posted it; any later one resent the same client id.
            for (i, acker) in p.ackers.iter().enumerate() {
                self.ack(acker, &p.posted.msg, i > 0);
            }
            self.event(Event::MessagePosted(p.posted.msg));
        }
    }

    fn ack(&mut self, acker: &Acker, msg: &Arc<Message>, duplicate: bool) {
        match acker {
            Acker::Session(sid, id) => {
                if self.sessions.contains_key(sid) {
                    let frame = ServerFrame::Ack {
                        id: *id,
                        room: msg.room.clone(),
                        seq: msg.seq,
                        ts: msg.ts,
                        client_id: msg.client_id.clone(),
                        duplicate,
                    };
                    self.send_to(*sid, &frame);
                }
            }
            Acker::Host(ticket) => {
                self.outputs.push_back(Output::Published {
                    ticket: *ticket,
                    result: Ok(msg.clone()),
                });
            }
        }
    }

    fn on_persisted(
        &mut self,
        now: Now,
        room_name: RoomName,
        seq: Seq,
        result: Result<(), StoreError>,
    ) -> Result<(), ApiMisuse> {
        let not_pending = || ApiMisuse::NotPending {
            room: room_name.clone(),
            seq,
        };
        let room = self.rooms.get_mut(&room_name).ok_or_else(not_pending)?;
        let pos = room
            .pending
            .iter()
            .position(|p| p.posted.msg.seq == seq && !p.committed)
            .ok_or_else(not_pending)?;
        match result {
            Ok(()) => {
                room.pending[pos].committed = true;
                self.release(&room_name);
            }
            Err(e) => {
                let p = room.pending.remove(pos).expect("position is valid");
                if let Some(cid) = &p.posted.msg.client_id {
                    room.forget_client_id(&p.author, cid, seq);
                }
                for acker in p.ackers {
                    match acker {
                        Acker::Session(sid, id) => {
                            let msg = format!("message not stored, retry later ({})", e.0);
                            self.reject(now, sid, id, ErrorCode::StorageUnavailable, msg, 0);
                        }
                        Acker::Host(ticket) => self.outputs.push_back(Output::Published {
                            ticket,
                            result: Err(ErrorCode::StorageUnavailable),
                        }),
                    }
                }
                // Later messages may already be committed and now at the front.
                self.release(&room_name);
            }
        }
        self.maybe_finish_shutdown(now);
        Ok(())
    }

    fn on_publish(
        &mut self,
        now: Now,
        ticket: u64,
        room: &str,
        user: &str,
        body: String,
        client_id: Option<ClientMsgId>,
    ) {
        let c = &self.config;
        let fail = |s: &mut Server, code| {
            s.outputs.push_back(Output::Published {
                ticket,
                result: Err(code),
            })
        };
        if self.shutting_down {
            return fail(self, ErrorCode::ShuttingDown);
        }
        let Ok(room_name) = RoomName::parse(room, c.max_room_chars, c.max_name_chars) else {
            return fail(self, ErrorCode::InvalidRoom);
        };
        let Ok(author) = UserName::parse(user, c.max_name_chars) else {
            return fail(self, ErrorCode::InvalidName);
        };
        if let Err((code, _)) = check_body(&body, c.max_body_bytes) {
            return fail(self, code);
        }
        if !self.rooms.contains_key(&room_name) {
            if !c.create_rooms_on_join && room_name.direct_users().is_none() {
                return fail(self, ErrorCode::RoomNotFound);
            }
            if self.rooms.len() >= c.max_rooms {
                return fail(self, ErrorCode::LimitReached);
            }
            self.rooms
                .insert(room_name.clone(), Room::new(room_name.clone()));
            self.event(Event::RoomCreated(room_name.clone()));
        }
        self.post(
            now,
            &room_name,
            author,
            body.into(),
            client_id,
            Acker::Host(ticket),
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn history(
        &mut self,
        now: Now,
        sid: SessionId,
        key: &UserKey,
        id: Option<RequestId>,
        raw_room: &str,
        before: Option<Seq>,
        limit: Option<u32>,
    ) {
        let Some(room_name) = self.parse_room(now, sid, id, raw_room, key) else {
            return;
        };
        let limit = limit.map_or(self.config.history_page_default, |l| l as usize);
        if limit == 0 || limit > self.config.history_page_max {
            let msg = format!("limit must be 1..={}", self.config.history_page_max);
            self.reject(now, sid, id, ErrorCode::InvalidRequest, msg, 1);
            return;
        }
        let member =
            room_name.direct_users().is_some() || self.sessions[&sid].rooms.contains(&room_name);
        if !member {
            self.reject(
                now,
                sid,
                id,
                ErrorCode::NotMember,
                format!("join {room_name} first"),
                1,
            );
            return;
        }
        let Some(room) = self.rooms.get(&room_name) else {
            // A direct room nobody has written to yet.
            self.send_to(
                sid,
                &ServerFrame::History {
                    id,
                    room: room_name,
                    messages: vec![],
                    has_more: false,
                },
            );
            return;
        };
        match room.page(before, limit, self.config.durable) {
            Page::Memory { messages, has_more } => {
                self.send_to(
                    sid,
                    &ServerFrame::History {
                        id,
                        room: room_name,
                        messages,
                        has_more,
                    },
                );
            }
            Page::Store => {
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                self.history_tickets.insert(
                    ticket,
                    HistoryTicket {
                        session: sid,
                        id,
                        room: room_name.clone(),
                    },
                );
                self.outputs.push_back(Output::LoadHistory {
                    ticket,
                    room: room_name,
                    before,
                    limit,
                });
            }
        }
        self.accepted(sid);
    }

    fn on_history_loaded(
        &mut self,
        ticket: u64,
        result: Result<(Vec<Message>, bool), StoreError>,
    ) -> Result<(), ApiMisuse> {
        let t = self
            .history_tickets
            .remove(&ticket)
            .ok_or(ApiMisuse::UnknownTicket(ticket))?;
        if !self.sessions.contains_key(&t.session) {
            return Ok(());
        }
        match result {
            Ok((messages, has_more)) => {
                let messages = messages.into_iter().map(Arc::new).collect();
                self.send_to(
                    t.session,
                    &ServerFrame::History {
                        id: t.id,
                        room: t.room,
                        messages,
                        has_more,
                    },
                );
            }
            Err(e) => {
                let frame = ServerFrame::Error {
                    id: t.id,
                    code: ErrorCode::StorageUnavailable,
                    message: format!("history unavailable ({})", e.0),
                };
                self.send_to(t.session, &frame);
                self.event(Event::Rejected {
                    session: t.session,
                    code: ErrorCode::StorageUnavailable,
                });
            }
        }
        Ok(())
    }

    fn list_rooms(&mut self, sid: SessionId, key: &UserKey, id: Option<RequestId>) {
        let rooms = self
            .rooms
            .values()
            .filter(|r| r.direct.as_ref().is_none_or(|(a, b)| a == key || b == key))
            .map(|r| RoomInfo {
                name: r.name.clone(),
                members: r.user_count(),
                direct: r.direct.is_some(),
                last_seq: r.last_delivered,
            })
            .collect();
        self.send_to(sid, &ServerFrame::Rooms { id, rooms });
        self.accepted(sid);
    }

    fn list_members(
        &mut self,
        now: Now,
        sid: SessionId,
        key: &UserKey,
        id: Option<RequestId>,
        raw_room: &str,
    ) {
        let Some(room_name) = self.parse_room(now, sid, id, raw_room, key) else {
            return;
        };
        let members = match self.rooms.get(&room_name) {
            Some(room) => self.member_names(room),
            // A direct room nobody has written to yet: its users, as `join` lists them.
            None if room_name.direct_users().is_some() => {
                self.member_names(&Room::new(room_name.clone()))
            }
            None => {
                self.reject(
                    now,
                    sid,
                    id,
                    ErrorCode::RoomNotFound,
                    format!("no room {room_name}"),
                    1,
                );
                return;
            }
        };
        self.send_to(
            sid,
            &ServerFrame::Members {
                id,
                room: room_name,
                members,
            },
        );
        self.accepted(sid);
    }

    fn typing(&mut self, now: Now, sid: SessionId, key: &UserKey, raw_room: &str, active: bool) {
        let Some(room_name) = self.parse_room(now, sid, None, raw_room, key) else {
            return;
        };
        let member =
            room_name.direct_users().is_some() || self.sessions[&sid].rooms.contains(&room_name);
        if !member {
            self.reject(
                now,
                sid,
                None,
                ErrorCode::NotMember,
                format!("join {room_name} first"),
                1,
            );
            return;
        }
        let session = self.sessions.get_mut(&sid).expect("caller checked");
        if session
            .typing
            .take(self.config.typing_rate, now.mono)
            .is_err()
        {
            return; // coalesced: typing is best effort
        }
        let Some(room) = self.rooms.get_mut(&room_name) else {
            return;
        };
        if !active {
            if room.typing.contains_key(key) {
                self.stop_typing(&room_name, key);
            }
            return;
        }
        let until = now.mono + self.config.typing_expiry;
        let was_typing = room.typing.insert(key.clone(), until).is_some();
        self.timers
            .insert((until, Timer::Typing(room_name.clone(), key.clone())));
        if !was_typing {
            let user = self.display_name(key);
            let frame = Encoded::new(&ServerFrame::Typing {
                room: room_name.clone(),
                user,
                active: true,
            });
            self.fan_out(&room_name, &frame, None, Some(key));
        }
    }

    fn stop_typing(&mut self, room_name: &RoomName, key: &UserKey) {
        let Some(room) = self.rooms.get_mut(room_name) else {
            return;
        };
        if room.typing.remove(key).is_none() {
            return;
        }
        let user = self.display_name(key);
        let frame = Encoded::new(&ServerFrame::Typing {
            room: room_name.clone(),
            user,
            active: false,
        });
        self.fan_out(room_name, &frame, None, Some(key));
    }

    fn maybe_finish_shutdown(&mut self, now: Now) {
        if !self.shutting_down || self.drained || self.rooms.values().any(|r| !r.pending.is_empty())
        {
            return;
        }
        let retry = u64::try_from(self.config.shutdown_retry_after.as_millis()).unwrap_or(u64::MAX);
        let goodbye = Encoded::new(&ServerFrame::Goodbye {
            reason: "server shutting down".into(),
            retry_after_ms: retry,
        });
        let sessions: Vec<SessionId> = self.sessions.keys().copied().collect();
        for sid in sessions {
            self.outputs.push_back(Output::Send {
                to: sid,
                frame: goodbye.clone(),
            });
            self.drop_session(now, sid, Some(CloseReason::Shutdown));
        }
        self.drained = true;
        self.outputs.push_back(Output::Drained);
    }

    // ---- helpers ----

    /// Parses a room name from a command, checking a direct room is the caller's own.
    fn parse_room(
        &mut self,
        now: Now,
        sid: SessionId,
        id: Option<RequestId>,
        raw: &str,
        key: &UserKey,
    ) -> Option<RoomName> {
        let c = &self.config;
        match RoomName::parse(raw, c.max_room_chars, c.max_name_chars) {
            Ok(room) => match room.direct_users() {
                Some((a, b)) if &a != key && &b != key => {
                    self.reject(
                        now,
                        sid,
                        id,
                        ErrorCode::InvalidRoom,
                        format!("{}", NameError::BadDirect),
                        1,
                    );
                    None
                }
                _ => Some(room),
            },
            Err(e) => {
                self.reject(
                    now,
                    sid,
                    id,
                    ErrorCode::InvalidRoom,
                    format!("room name {e}"),
                    1,
                );
                None
            }
        }
    }

    fn member_names(&self, room: &Room) -> Vec<UserName> {
        match &room.direct {
            Some((a, b)) if a == b => vec![self.display_name(a)],
            Some((a, b)) => vec![self.display_name(a), self.display_name(b)],
            None => {
                let names: Vec<UserName> = room.member_names().cloned().collect();
                debug_assert!(
                    room.member_names()
                        .all(|n| self.display_name(&n.key()) == *n),
                    "a member's name is its user's display name"
                );
                names
            }
        }
    }

    /// A user's display name; for a user no longer known (a direct-room peer who left),
    /// the key itself.
    fn display_name(&self, key: &UserKey) -> UserName {
        display_name(&self.users, key)
    }

    /// Sends one frame to every session in a room: the same bytes to each. `except_session`
    /// is skipped; `except_user`'s sessions too, and congested sessions for ephemeral frames.
    fn fan_out(
        &mut self,
        room_name: &RoomName,
        frame: &Encoded,
        except_session: Option<SessionId>,
        except_user: Option<&UserKey>,
    ) {
        let Some(room) = self.rooms.get(room_name) else {
            return;
        };
        let direct_sessions: Vec<SessionId>;
        let recipients: &[SessionId] = match &room.direct {
            None => room.sessions(),
            Some((a, b)) => {
                // A note to self (`@a,a`) has one user: list their sessions once.
                direct_sessions = [Some(a), (a != b).then_some(b)]
                    .into_iter()
                    .flatten()
                    .filter_map(|k| self.users.get(k))
                    .flat_map(|u| u.sessions.iter().copied())
                    .collect();
                &direct_sessions
            }
        };
        let skip_user: Option<&BTreeSet<SessionId>> =
            except_user.and_then(|k| match &room.direct {
                None => room.member(k).map(|m| &m.sessions),
                Some(_) => self.users.get(k).map(|u| &u.sessions),
            });
        let ephemeral = frame.is_ephemeral();
        self.outputs.reserve(recipients.len());
        for &to in recipients {
            if Some(to) == except_session || skip_user.is_some_and(|s| s.contains(&to)) {
                continue;
            }
            if ephemeral
                && self
                    .sessions
                    .get(&to)
                    .and_then(|s| s.congested_until)
                    .is_some_and(|t| Some(t) > self.now)
            {
                continue;
            }
            self.outputs.push_back(Output::Send {
                to,
                frame: frame.clone(),
            });
        }
    }

    fn send_to(&mut self, to: SessionId, frame: &ServerFrame) {
        self.outputs.push_back(Output::Send {
            to,
            frame: Encoded::new(frame),
        });
    }

    fn event(&mut self, event: Event) {
        self.outputs.push_back(Output::Event(event));
    }

    fn accepted(&mut self, sid: SessionId) {
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.strikes = s.strikes.saturating_sub(1);
        }
    }

    /// Sends an error frame for a rejected command and counts `strikes` against the
    /// session; too many close it as a flood.
    fn reject(
        &mut self,
        now: Now,
        sid: SessionId,
        id: Option<RequestId>,
        code: ErrorCode,
        message: impl Into<String>,
        strikes: u32,
    ) {
        // The session may be gone by the time an answer arrives (durable mode): nothing
        // is ever sent to a closed session.
        if !self.sessions.contains_key(&sid) {
            return;
        }
        self.send_to(
            sid,
            &ServerFrame::Error {
                id,
                code,
                message: message.into(),
            },
        );
        self.event(Event::Rejected { session: sid, code });
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        s.strikes += strikes;
        if s.strikes >= self.config.max_strikes {
            self.drop_session(now, sid, Some(CloseReason::Flood));
        }
    }
}

/// A user's display name; for a user no longer known (a direct-room peer who left), the
/// key itself.
fn display_name(users: &BTreeMap<UserKey, User>, key: &UserKey) -> UserName {
    match users.get(key) {
        Some(u) => u.name.clone(),
        None => UserName::parse(key.as_str(), usize::MAX).expect("keys are valid names"),
    }
}

fn check_body(body: &str, max: usize) -> Result<(), (ErrorCode, String)> {
    if body.len() > max {
        return Err((
            ErrorCode::BodyTooLarge,
            format!("body is {} bytes; the limit is {max}", body.len()),
        ));
    }
    if body.trim().is_empty() {
        return Err((ErrorCode::InvalidBody, "body must not be empty".to_owned()));
    }
    Ok(())
}

/// At most `max` characters of `s`, with an ellipsis when cut.
fn clip(mut s: String, max: usize) -> String {
    if let Some((cut, _)) = s.char_indices().nth(max) {
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn request_id(frame: &ClientFrame) -> Option<RequestId> {
    match frame {
        ClientFrame::Hello { id, .. }
        | ClientFrame::Join { id, .. }
        | ClientFrame::Leave { id, .. }
        | ClientFrame::Send { id, .. }
        | ClientFrame::History { id, .. }
        | ClientFrame::Rooms { id }
        | ClientFrame::Members { id, .. } => *id,
        ClientFrame::Typing { .. } => None,
    }
}
