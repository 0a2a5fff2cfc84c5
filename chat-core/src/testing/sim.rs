//! [`Sim`]: a [`Server`] driven the way a real driver would, on a simulated clock, with
//! a store stand-in for durable mode.
//!
//! Every input is followed by draining `poll_output()` into per-session inboxes of decoded
//! [`ServerFrame`]s, a set of closed sessions, the host events and the store requests.
//! Time only moves through [`Sim::advance`], which fires every due timer in order. No
//! sleeps, no wall-clock reads except the one base instant of [`base_now`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::protocol::{self, DecodeError, Encoded, ErrorCode, Message, ServerFrame};
use crate::{
    ClientMsgId, CloseReason, Config, Event, Input, LoadedRoom, ModerationChange, Now, Output,
    RoomName, Seq, Server, SessionId, StoreError, UserName, protocol::ClientFrame,
};
use serde_json::{Value, json};

/// The one clock read of the test suite: a base for the simulated clocks. Only differences
/// from it matter, and every timestamp the tests compare is computed from it.
#[allow(clippy::disallowed_methods)] // tests need *some* base instant; the core never reads one
pub fn base_now() -> Now {
    Now::new(Instant::now(), chrono::Utc::now())
}

/// Something a test can say: a JSON value, a typed frame, raw text or raw bytes.
pub enum Say {
    /// Encoded with `serde_json` and decoded by `protocol::decode`, as on the wire.
    Bytes(Vec<u8>),
    /// Handed to the server already decoded (how a driver would pass a decode result).
    Decoded(Result<ClientFrame, DecodeError>),
}

impl From<Value> for Say {
    fn from(v: Value) -> Say {
        Say::Bytes(serde_json::to_vec(&v).expect("json values serialize"))
    }
}

impl From<ClientFrame> for Say {
    fn from(f: ClientFrame) -> Say {
        Say::Bytes(serde_json::to_vec(&f).expect("client frames serialize"))
    }
}

impl From<&str> for Say {
    fn from(s: &str) -> Say {
        Say::Bytes(s.as_bytes().to_vec())
    }
}

impl From<&[u8]> for Say {
    fn from(b: &[u8]) -> Say {
        Say::Bytes(b.to_vec())
    }
}

impl From<Vec<u8>> for Say {
    fn from(b: Vec<u8>) -> Say {
        Say::Bytes(b)
    }
}

/// An `Output::Append` as the Sim records it: (room, ticket, user, body, client id,
/// the entry's detail: a change's kind and target, a reply's target; `None` for a plain
/// message).
pub type AppendAsked = (
    RoomName,
    u64,
    UserName,
    Arc<str>,
    Option<ClientMsgId>,
    Option<Box<crate::EntryDetail>>,
);

/// A server, its simulated clock, and everything it has said so far.
///
/// The fields are public so a test can look at (and take from) everything the server
/// produced; the methods feed inputs the way a driver would.
pub struct Sim {
    /// The server under test.
    pub server: Server,
    /// The simulated current time.
    pub now: Now,
    /// The time the simulation started at.
    pub base: Now,
    /// Decoded frames per session, not yet taken by the test.
    pub inbox: BTreeMap<SessionId, Vec<ServerFrame>>,
    /// Raw JSON text of every frame ever sent, per session, in order.
    pub raw: BTreeMap<SessionId, Vec<String>>,
    /// Sessions that got `Output::Close`, with the reason.
    pub closed: BTreeMap<SessionId, CloseReason>,
    /// Sessions the test disconnected (`Input::Disconnected`), or that a restart cut off.
    pub disconnected: BTreeSet<SessionId>,
    /// Every session id ever connected.
    pub connected: BTreeSet<SessionId>,
    /// Host events, in order (not taken by `take`).
    pub events: Vec<Event>,
    /// Durable mode: messages waiting for `Input::Persisted`, in output order. A test may
    /// answer them itself, or let [`Sim::store_next`] answer them from the store stand-in.
    pub persists: Vec<Arc<Message>>,
    /// The store stand-in: every committed message per room, in seq order. Filled by
    /// [`Sim::store_next`]; read by [`Sim::answer_loads`] and [`Sim::restart`].
    pub store: BTreeMap<RoomName, Vec<Arc<Message>>>,
    /// Durable mode: `Output::LoadHistory` requests: (ticket, room, before, limit).
    pub loads: Vec<(u64, RoomName, Option<Seq>, usize)>,
    /// Durable mode: `Output::SaveModeration` requests not answered yet (only while
    /// [`Sim::hold_moderation`] is set; otherwise each is committed to
    /// [`Sim::moderation`] and answered `Ok` as soon as it is drained).
    pub moderation_saves: Vec<(u64, ModerationChange)>,
    /// Hold `Output::SaveModeration` requests in [`Sim::moderation_saves`] instead of
    /// answering them (answer with [`Sim::save_moderation`]).
    pub hold_moderation: bool,
    /// The store stand-in's moderation changes, committed, in order: given back to
    /// [`Server::restore_moderation`] by [`Sim::restart`].
    pub moderation: Vec<ModerationChange>,
    /// Cluster mode: `Output::Append` requests ([`AppendAsked`]).
    pub appends: Vec<AppendAsked>,
    /// `Output::LoadRoom` requests (cluster mode; durable mode: rooms unloaded idle).
    pub room_loads: Vec<RoomName>,
    /// Cluster mode: `Output::UnloadRoom`s.
    pub room_unloads: Vec<RoomName>,
    /// Cluster mode: `Output::Presence` requests: (room, user, entered).
    pub presence: Vec<(RoomName, UserName, bool)>,
    /// Cluster mode: `Output::FetchModeration` requests.
    pub moderation_fetches: Vec<RoomName>,
    /// Cluster mode: `Output::FetchPresence` requests.
    pub presence_fetches: Vec<RoomName>,
    /// Cluster mode: `Output::ClaimName` requests: (session, key, holder).
    pub name_claims: Vec<(SessionId, String, String)>,
    /// Cluster mode: `Output::ReleaseName`s (keys).
    pub name_releases: Vec<String>,
    /// Cluster mode: `Output::ShareRead`: (room, user, seq).
    pub shared_reads: Vec<(RoomName, UserName, Seq)>,
    /// Cluster mode: `Output::LoadReadMarkers` (users).
    pub read_marker_loads: Vec<UserName>,
    /// Cluster mode: `Output::Typing`: (room, user, active).
    pub typings: Vec<(RoomName, UserName, bool)>,
    /// Cluster mode: `Output::LogRegressed`: (room, seq handed out again).
    pub regressions: Vec<(RoomName, Seq)>,
    /// Cluster mode: `Output::FetchLog` requests: (room, after).
    pub fetches: Vec<(RoomName, Seq)>,
    /// `Output::Published` results: (ticket, result).
    pub published: Vec<(u64, Result<Arc<Message>, ErrorCode>)>,
    /// Host auth mode: (session, name, credentials).
    pub authenticate: Vec<(SessionId, String, Option<String>)>,
    /// How many `Output::Drained` were seen.
    pub drained: usize,
    /// Every output as a line of text, for byte-for-byte comparison of two runs.
    pub log: Vec<String>,
    /// Every `Output::Broadcast`: how many recipients, and the frame's text (one encode
    /// for them all).
    pub broadcasts: Vec<(usize, String)>,
    /// Set when a frame went to a session that was closed or disconnected.
    pub violations: Vec<String>,
}

impl Sim {
    /// A server with the default configuration.
    pub fn new() -> Sim {
        Sim::with(Config::default())
    }

    /// A server with this configuration.
    pub fn with(config: Config) -> Sim {
        Sim::with_base(config, base_now())
    }

    /// A server with this configuration and clock base (two runs with the same base and
    /// inputs must produce the same bytes).
    pub fn with_base(config: Config, base: Now) -> Sim {
        Sim {
            server: Server::new(config),
            now: base,
            base,
            inbox: BTreeMap::new(),
            raw: BTreeMap::new(),
            closed: BTreeMap::new(),
            disconnected: BTreeSet::new(),
            connected: BTreeSet::new(),
            events: Vec::new(),
            persists: Vec::new(),
            store: BTreeMap::new(),
            loads: Vec::new(),
            moderation_saves: Vec::new(),
            hold_moderation: false,
            moderation: Vec::new(),
            appends: Vec::new(),
            room_loads: Vec::new(),
            presence: Vec::new(),
            presence_fetches: Vec::new(),
            moderation_fetches: Vec::new(),
            room_unloads: Vec::new(),
            name_claims: Vec::new(),
            name_releases: Vec::new(),
            regressions: Vec::new(),
            typings: Vec::new(),
            shared_reads: Vec::new(),
            read_marker_loads: Vec::new(),
            fetches: Vec::new(),
            published: Vec::new(),
            authenticate: Vec::new(),
            drained: 0,
            log: Vec::new(),
            broadcasts: Vec::new(),
            violations: Vec::new(),
        }
    }

    // ---- inputs ----

    /// Feeds an input at the current time and drains the outputs. Panics on `ApiMisuse`.
    pub fn input(&mut self, input: Input) {
        let r = self.try_input(input);
        r.expect("the harness drives the API correctly");
    }

    /// Feeds an input and returns the server's verdict on the driver's conduct.
    ///
    /// # Errors
    ///
    /// The server's [`ApiMisuse`](crate::ApiMisuse) when the input breaks the driver contract.
    pub fn try_input(&mut self, input: Input) -> Result<(), crate::ApiMisuse> {
        let r = self.server.handle_input(self.now, input);
        self.drain();
        r
    }

    /// Opens a connection.
    pub fn connect(&mut self, s: u64) -> SessionId {
        let sid = SessionId(s);
        // A reused id is a new connection: it may be written to again.
        self.closed.remove(&sid);
        self.disconnected.remove(&sid);
        self.connected.insert(sid);
        self.input(Input::Connected { session: sid });
        sid
    }

    /// Opens a connection whose user the host already knows.
    pub fn connect_as(&mut self, s: u64, identity: crate::Identity) -> SessionId {
        let sid = SessionId(s);
        self.closed.remove(&sid);
        self.disconnected.remove(&sid);
        self.connected.insert(sid);
        self.input(Input::ConnectedAs {
            session: sid,
            identity,
        });
        sid
    }

    /// Sends a frame from a session, through `protocol::decode` like a real reader task.
    pub fn say(&mut self, s: u64, frame: impl Into<Say>) {
        let frame = match frame.into() {
            Say::Bytes(b) => protocol::decode(&b),
            Say::Decoded(f) => f,
        };
        self.input(Input::Received {
            session: SessionId(s),
            frame,
        });
    }

    /// Connects and says hello as `name` in protocol version 1 (deprecated; what every
    /// test written before version 2 speaks); returns the token from `welcome`.
    pub fn hello(&mut self, s: u64, name: &str) -> String {
        self.connect(s);
        self.say(
            s,
            json!({"type": "hello", "version": protocol::PROTOCOL_VERSION_1, "name": name}),
        );
        self.token_of(s)
    }

    /// Connects and says hello as `name` in protocol version 2 ([`protocol::PROTOCOL_VERSION`]):
    /// coalesced `presence` frames; returns the token from `welcome`.
    pub fn hello_v2(&mut self, s: u64, name: &str) -> String {
        self.connect(s);
        self.say(
            s,
            json!({"type": "hello", "version": protocol::PROTOCOL_VERSION, "name": name}),
        );
        self.token_of(s)
    }

    /// Connects and says hello as `name` with a token (another tab, a reconnect).
    pub fn hello_with_token(&mut self, s: u64, name: &str, token: &str) -> String {
        self.connect(s);
        self.say(
            s,
            json!({"type": "hello", "version": protocol::PROTOCOL_VERSION_1, "name": name, "token": token}),
        );
        self.token_of(s)
    }

    /// Connects and says hello as `name` (with `token`, if any) without waiting for the
    /// welcome: in cluster mode a name nobody on this server holds is first reserved in
    /// the log ([`Sim::name_claims`]); read the token with [`Sim::token_of`] after.
    pub fn hello_as(&mut self, s: u64, name: &str, token: Option<&str>) {
        self.connect(s);
        let mut hello =
            json!({"type": "hello", "version": protocol::PROTOCOL_VERSION_1, "name": name});
        if let Some(t) = token {
            hello["token"] = json!(t);
        }
        self.say(s, hello);
    }

    /// The token session `s` was welcomed with (panics if it was not welcomed).
    pub fn token_of(&self, s: u64) -> String {
        let frames = self.peek(s);
        frames
            .iter()
            .find_map(|f| match f {
                ServerFrame::Welcome { token, .. } => {
                    Some(token.clone().expect("anonymous mode gives a token"))
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("session {s} was not welcomed: {frames:?}"))
    }

    /// Sends a message to a room; `id` is the request id.
    pub fn send(&mut self, s: u64, id: u64, room: &str, body: &str) {
        self.say(
            s,
            json!({"type": "send", "id": id, "room": room, "body": body}),
        );
    }

    /// Joins a room.
    pub fn join(&mut self, s: u64, room: &str) {
        self.say(s, json!({"type": "join", "room": room}));
    }

    /// Closes a connection from the peer's side.
    pub fn disconnect(&mut self, s: u64) {
        let sid = SessionId(s);
        self.disconnected.insert(sid);
        self.input(Input::Disconnected { session: sid });
    }

    /// Moves the clock forward by `d`, firing every timer that falls due on the way at its
    /// own instant, and checking each time that the next deadline lies in the future.
    pub fn advance(&mut self, d: Duration) {
        let target = self.now.advance(d);
        while let Some(at) = self.server.poll_timeout() {
            if at > target.mono {
                break;
            }
            if at > self.now.mono {
                self.now = self.now.advance(at - self.now.mono);
            }
            self.server.handle_timeout(self.now);
            self.drain();
            if let Some(next) = self.server.poll_timeout() {
                assert!(
                    next > self.now.mono,
                    "poll_timeout did not move forward after handle_timeout"
                );
            }
        }
        self.now = target;
    }

    /// Drains every pending output into the inboxes, logs and queues (and answers the
    /// moderation changes to store, unless [`Sim::hold_moderation`]).
    pub fn drain(&mut self) {
        loop {
            while let Some(out) = self.server.poll_output() {
                self.record(out);
            }
            if self.hold_moderation || self.moderation_saves.is_empty() {
                break;
            }
            self.save_moderation(Ok(()));
        }
    }

    /// Answers every outstanding `Output::SaveModeration` with `result` (committing
    /// the changes to [`Sim::moderation`] when `Ok`).
    pub fn save_moderation(&mut self, result: Result<(), StoreError>) {
        for (ticket, change) in std::mem::take(&mut self.moderation_saves) {
            if result.is_ok() {
                self.moderation.push(change);
            }
            let input = Input::ModerationSaved {
                ticket,
                result: result.clone(),
            };
            self.server
                .handle_input(self.now, input)
                .expect("the harness drives the API correctly");
            while let Some(out) = self.server.poll_output() {
                self.record(out);
            }
        }
    }

    /// One frame to one session, as a network driver would queue it.
    fn record_send(&mut self, to: SessionId, frame: &Encoded) {
        self.log.push(format!("send {} {}", to.0, frame.text()));
        if self.closed.contains_key(&to) || self.disconnected.contains(&to) {
            self.violations
                .push(format!("frame to closed session {to}: {}", frame.text()));
        }
        let decoded = decode_server(frame);
        self.raw
            .entry(to)
            .or_default()
            .push(frame.text().to_owned());
        self.inbox.entry(to).or_default().push(decoded);
    }

    fn record(&mut self, out: Output) {
        match out {
            Output::Send { to, frame } => self.record_send(to, &frame),
            // Each recipient in turn, as the runtime's driver does.
            Output::Broadcast { to, frame } => {
                self.broadcasts.push((to.len(), frame.text().to_owned()));
                for sid in to.iter() {
                    self.record_send(sid, &frame);
                }
            }
            Output::Close { session, reason } => {
                self.log.push(format!("close {} {:?}", session.0, reason));
                assert!(
                    !self.closed.contains_key(&session),
                    "session {session} closed twice"
                );
                self.closed.insert(session, reason);
            }
            Output::Persist(msg) => {
                self.log.push(format!("persist {msg:?}"));
                self.persists.push(msg);
            }
            Output::SaveReadMarker { user, room, seq } => {
                self.log
                    .push(format!("save read marker {user} {room} {seq}"));
            }
            Output::SaveModeration { ticket, change } => {
                self.log
                    .push(format!("save moderation {ticket} {change:?}"));
                self.moderation_saves.push((ticket, change));
            }
            Output::LoadHistory {
                ticket,
                room,
                before,
                limit,
            } => {
                self.log
                    .push(format!("load {ticket} {room} {before:?} {limit}"));
                self.loads.push((ticket, room, before, limit));
            }
            Output::Append {
                room,
                ticket,
                user,
                body,
                client_id,
                detail,
            } => {
                self.log.push(format!(
                    "append {room} {ticket} {user} {body:?} {client_id:?} {detail:?}"
                ));
                self.appends
                    .push((room, ticket, user, body, client_id, detail));
            }
            Output::LoadRoom { room } => {
                self.log.push(format!("load-room {room}"));
                self.room_loads.push(room);
            }
            Output::UnloadRoom { room } => {
                self.log.push(format!("unload-room {room}"));
                self.room_unloads.push(room);
            }
            Output::Presence {
                room,
                user,
                entered,
            } => {
                self.log.push(format!("presence {room} {user} {entered}"));
                self.presence.push((room, user, entered));
            }
            Output::FetchModeration { room } => {
                self.log.push(format!("fetch-moderation {room}"));
                self.moderation_fetches.push(room);
            }
            Output::FetchPresence { room } => {
                self.log.push(format!("fetch-presence {room}"));
                self.presence_fetches.push(room);
            }
            Output::ClaimName {
                session,
                name,
                key,
                holder,
            } => {
                self.log
                    .push(format!("claim-name {} {name} {key} {holder}", session.0));
                self.name_claims.push((session, key, holder));
            }
            Output::ReleaseName { key } => {
                self.log.push(format!("release-name {key}"));
                self.name_releases.push(key);
            }
            Output::Typing { room, user, active } => {
                self.log.push(format!("typing {room} {user} {active}"));
                self.typings.push((room, user, active));
            }
            Output::ShareRead { room, user, seq } => {
                self.log.push(format!("share-read {room} {user} {seq:?}"));
                self.shared_reads.push((room, user, seq));
            }
            Output::LoadReadMarkers { user } => {
                self.log.push(format!("load-read-markers {user}"));
                self.read_marker_loads.push(user);
            }
            Output::LogRegressed { room, seq } => {
                self.log.push(format!("log-regressed {room} {seq:?}"));
                self.regressions.push((room, seq));
            }
            Output::FetchLog { room, after } => {
                self.log.push(format!("fetch {room} {after:?}"));
                self.fetches.push((room, after));
            }
            Output::Authenticate {
                session,
                name,
                credentials,
            } => {
                self.log
                    .push(format!("auth {} {name} {credentials:?}", session.0));
                self.authenticate.push((session, name, credentials));
            }
            Output::Published { ticket, result } => {
                self.log.push(format!("published {ticket} {result:?}"));
                self.published.push((ticket, result));
            }
            Output::Event(e) => {
                self.log.push(format!("event {e:?}"));
                self.events.push(e);
            }
            Output::Drained => {
                self.log.push("drained".to_owned());
                self.drained += 1;
            }
        }
    }

    // ---- the store stand-in (durable mode) ----

    /// Answers the oldest outstanding [`Output::Persist`]: commits it to [`Sim::store`]
    /// (`Ok`), or fails it with this error. Answers in output order, as a real store must
    /// (per room). Returns the message answered, if one was waiting.
    pub fn store_next(&mut self, result: Result<(), StoreError>) -> Option<Arc<Message>> {
        if self.persists.is_empty() {
            return None;
        }
        let msg = self.persists.remove(0);
        if result.is_ok() {
            let room = self.store.entry(msg.room.clone()).or_default();
            debug_assert!(room.last().is_none_or(|m| m.seq < msg.seq));
            // As a real store does: the message changed takes its new state in the same
            // commit as the change.
            if let Some(target) = msg.target
                && let Ok(i) = room.binary_search_by_key(&target, |m| m.seq)
            {
                Arc::make_mut(&mut room[i]).apply(&msg);
            }
            room.push(msg.clone());
        }
        self.input(Input::Persisted {
            room: msg.room.clone(),
            seq: msg.seq,
            result,
        });
        Some(msg)
    }

    /// Answers every outstanding [`Output::LoadHistory`] from [`Sim::store`]: the newest
    /// `limit` messages below `before`, oldest first, and whether older ones exist.
    pub fn answer_loads(&mut self) {
        while !self.loads.is_empty() {
            let (ticket, room, before, limit) = self.loads.remove(0);
            let stored = self.store.get(&room).map_or(&[][..], Vec::as_slice);
            let end = before.unwrap_or(Seq(u64::MAX));
            let below = stored.partition_point(|m| m.seq < end);
            let start = below.saturating_sub(limit);
            let page = stored[start..below].iter().map(|m| (**m).clone()).collect();
            self.input(Input::HistoryLoaded {
                ticket,
                result: Ok((page, start > 0)),
            });
        }
    }

    /// Durable mode: answers every outstanding [`Output::LoadRoom`] (a room that left
    /// memory idle is needed again) from [`Sim::store`]: its last seq and newest
    /// `history_window` messages, as the runtime reads them from its store.
    pub fn answer_room_loads(&mut self) {
        let window = self.server.config().history_window;
        while !self.room_loads.is_empty() {
            let room = self.room_loads.remove(0);
            let stored = self.store.get(&room).map_or(&[][..], Vec::as_slice);
            let start = stored.len().saturating_sub(window);
            let loaded = LoadedRoom {
                last_seq: stored.last().map_or(Seq(0), |m| m.seq),
                recent: stored[start..].iter().map(|m| (**m).clone()).collect(),
                complete: start == 0,
                present: Vec::new(),
                pv: 0,
            };
            self.input(Input::RoomLoaded {
                room,
                result: Ok(loaded),
            });
        }
    }

    /// The process restarts: a new [`Server`] with `config`, every room of the store
    /// restored with [`Server::restore_room`] (its newest `history_window` messages, its
    /// last seq, and whether that is all the store holds), and the stored moderation
    /// state with [`Server::restore_moderation`]. Every connection of the old
    /// server is gone (marked disconnected: nothing may be sent to it any more). Persist
    /// and moderation requests the old server never got an answer for are lost, or,
    /// with `flushed`, were written before the crash (stored, never acknowledged).
    pub fn restart(&mut self, config: Config, flushed: bool) {
        for msg in std::mem::take(&mut self.persists) {
            if flushed {
                self.store.entry(msg.room.clone()).or_default().push(msg);
            }
        }
        self.loads.clear();
        for (_, change) in std::mem::take(&mut self.moderation_saves) {
            if flushed {
                self.moderation.push(change);
            }
        }
        self.authenticate.clear();
        self.disconnected.extend(self.connected.iter().copied());
        let window = config.history_window;
        self.server = Server::new(config);
        for (room, messages) in &self.store {
            let Some(last) = messages.last() else {
                continue;
            };
            let start = messages.len().saturating_sub(window);
            let recent = messages[start..].iter().map(|m| (**m).clone()).collect();
            self.server
                .restore_room(room.clone(), last.seq, recent, start == 0);
        }
        self.server
            .restore_moderation(self.now, self.moderation.clone());
        self.log.push("restart".to_owned());
    }

    // ---- reading what happened ----

    /// The frames a session received since the last `take`, without removing them.
    pub fn peek(&self, s: u64) -> &[ServerFrame] {
        self.inbox.get(&SessionId(s)).map_or(&[][..], Vec::as_slice)
    }

    /// Takes the frames a session received since the last `take`.
    pub fn take(&mut self, s: u64) -> Vec<ServerFrame> {
        self.inbox.remove(&SessionId(s)).unwrap_or_default()
    }

    /// Takes exactly one frame; panics if there were none or several.
    pub fn take_one(&mut self, s: u64) -> ServerFrame {
        let mut frames = self.take(s);
        assert_eq!(
            frames.len(),
            1,
            "session {s} expected one frame: {frames:?}"
        );
        frames.pop().expect("one frame")
    }

    /// Forgets every inbox and the event list (after setting up a scenario).
    pub fn clear(&mut self) {
        self.inbox.clear();
        self.events.clear();
    }

    /// Takes the events recorded since the last `clear`/`take_events`.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Asserts a session received nothing since the last `take`.
    #[track_caller]
    pub fn expect_nothing(&mut self, s: u64) {
        let frames = self.take(s);
        assert!(
            frames.is_empty(),
            "session {s} expected nothing, got {frames:?}"
        );
    }

    /// Asserts the session received exactly one error frame, with this code and request id.
    #[track_caller]
    pub fn expect_error(&mut self, s: u64, code: ErrorCode, id: Option<u64>) -> String {
        let frame = self.take_one(s);
        match frame {
            ServerFrame::Error {
                id: got_id,
                code: got,
                message,
            } => {
                assert_eq!(got, code, "session {s}: {message}");
                assert_eq!(
                    got_id.map(|i| i.0),
                    id,
                    "session {s}: request id of the error"
                );
                assert!(!message.is_empty(), "error frames carry a human message");
                message
            }
            other => panic!("session {s} expected error {code}, got {other:?}"),
        }
    }

    /// Asserts the session got exactly these kinds of frames (see [`kind`]), and returns them.
    #[track_caller]
    pub fn expect_kinds(&mut self, s: u64, kinds: &[&str]) -> Vec<ServerFrame> {
        let frames = self.take(s);
        let got: Vec<&str> = frames.iter().map(kind).collect();
        assert_eq!(got, kinds, "session {s}: {frames:?}");
        frames
    }

    /// Takes the messages a session received (panics on any other frame).
    #[track_caller]
    pub fn take_messages(&mut self, s: u64) -> Vec<Arc<Message>> {
        self.take(s)
            .into_iter()
            .map(|f| match f {
                ServerFrame::Message(m) => m,
                other => panic!("session {s} expected only messages, got {other:?}"),
            })
            .collect()
    }

    /// Whether the server told the driver to close this session, and why.
    pub fn close_reason(&self, s: u64) -> Option<CloseReason> {
        self.closed.get(&SessionId(s)).copied()
    }

    /// Asserts that nothing has ever been sent to a closed or disconnected session.
    #[track_caller]
    pub fn assert_no_violations(&self) {
        assert!(self.violations.is_empty(), "{:#?}", self.violations);
    }

    /// The user-joined/user-left host events, as (kind, room, user) strings.
    pub fn presence_events(&self) -> Vec<(String, String, String)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::UserJoined { room, user } => {
                    Some(("joined".into(), room.to_string(), user.to_string()))
                }
                Event::UserLeft { room, user } => {
                    Some(("left".into(), room.to_string(), user.to_string()))
                }
                _ => None,
            })
            .collect()
    }
}

impl Default for Sim {
    fn default() -> Self {
        Sim::new()
    }
}

/// Decodes a frame the server sent, checking it is well-formed JSON text on the way.
pub fn decode_server(frame: &Encoded) -> ServerFrame {
    let text = frame.text();
    check_timestamps(text);
    frame
        .decode()
        .unwrap_or_else(|e| panic!("server sent a frame it cannot decode ({e}): {text}"))
}

/// Every `ts` in a server frame is UTC RFC 3339 with exactly millisecond precision and `Z`.
pub fn check_timestamps(text: &str) {
    fn walk(v: &Value) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    if k == "ts" {
                        let s = v
                            .as_str()
                            .unwrap_or_else(|| panic!("ts is not a string: {v}"));
                        assert!(is_rfc3339_millis(s), "ts {s:?} is not RFC 3339 with ms");
                    }
                    walk(v);
                }
            }
            Value::Array(items) => items.iter().for_each(walk),
            _ => {}
        }
    }
    let v: Value = serde_json::from_str(text).expect("server frames are JSON");
    walk(&v);
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, and it parses as RFC 3339.
pub fn is_rfc3339_millis(s: &str) -> bool {
    let shape = s.len() == 24
        && s.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            19 => b == b'.',
            23 => b == b'Z',
            _ => b.is_ascii_digit(),
        });
    shape && chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

/// The wire `type` of a server frame, for compact assertions.
pub fn kind(f: &ServerFrame) -> &'static str {
    match f {
        ServerFrame::Welcome { .. } => "welcome",
        ServerFrame::Joined { .. } => "joined",
        ServerFrame::Left { .. } => "left",
        ServerFrame::Message(_) => "message",
        ServerFrame::Change(_) => "change",
        ServerFrame::Read { .. } => "read",
        ServerFrame::Ack { .. } => "ack",
        ServerFrame::History { .. } => "history",
        ServerFrame::Rooms { .. } => "rooms",
        ServerFrame::Members { .. } => "members",
        ServerFrame::UserJoined { .. } => "user_joined",
        ServerFrame::UserLeft { .. } => "user_left",
        ServerFrame::Presence { .. } => "presence",
        ServerFrame::Typing { .. } => "typing",
        ServerFrame::Error { .. } => "error",
        ServerFrame::Goodbye { .. } => "goodbye",
        ServerFrame::Moderated { .. } => "moderated",
        ServerFrame::Done { .. } => "done",
        ServerFrame::Topic { .. } => "topic",
        ServerFrame::SlowMode { .. } => "slow_mode",
    }
}
