//! The chat server as a sans-IO state machine.
//!
//! Feed it [`Input`]s with [`Server::handle_input`], drain [`Output`]s with
//! [`Server::poll_output`] until `None`, and call [`Server::handle_timeout`] when the
//! instant from [`Server::poll_timeout`] is reached.
//!
//! The parts, each owning its data:
//!
//! | module | owns |
//! |---|---|
//! | `config` | [`Config`], [`AuthMode`] |
//! | `inputs`, `outputs` | the API's types: [`Now`], [`Input`], [`Output`], [`Event`], errors |
//! | `sessions` | one [`Session`](sessions::Session) per connection: phase, joined rooms, rate limits, strikes |
//! | `users` | users by key: name, sessions, token, grace period |
//! | `rooms`, `kind` | a room's members, recipients, window and seq; every public/direct rule |
//! | `presence` | joins and leaves as users see them: linger, grace, announcements |
//! | `timers` | the timers, in firing order |
//! | `delivery` | the output queue, open and congested sessions, fan-out |
//! | `messages` | the path of a message: seq, store, release in order, acks |
//! | `commands/` | the dispatcher and one module per client command |

mod authz;
mod cluster;
mod commands;
mod config;
mod delivery;
mod inputs;
mod kind;
mod limits;
mod messages;
mod moderation;
mod names;
mod outputs;
mod presence;
mod reject;
mod rooms;
mod sessions;
mod timers;
mod unload;
mod users;

use std::collections::BTreeMap;
use std::time::Instant;

use crate::ids::{RequestId, RoomName, Seq, SessionId, UserKey, UserName};
use crate::protocol::{Encoded, ErrorCode, Message, ServerFrame};

pub use authz::{Identity, Permissions, RoomAccess, RoomPolicy, SharedPolicy};
pub use cluster::{Announced, Appended, ChangeRules, EntryDetail, LoadedRoom};
pub use config::{AuthMode, Config, Retention};
pub use inputs::{ApiMisuse, AuthRefused, Input, Now, StoreError};
pub use limits::Rate;
pub(crate) use limits::TokenBucket;
/// A moderation operation, for the runtime to carry out one relayed from another server
/// (cluster mode).
#[cfg(feature = "runtime")]
pub(crate) use moderation::Op as ModOp;

pub use moderation::{EXPIRED_REASON, ModerationChange};
pub use outputs::{CloseReason, Event, Output, Recipients};

use delivery::Delivery;
use kind::RoomKind;
use rooms::Room;
use sessions::Session;
use timers::{Timer, Timers};
use users::Users;

/// The chat server state machine. See the [crate docs](crate) for the run loop.
#[derive(Debug)]
pub struct Server {
    /// Sessions apart from the rest, so a command can hold its own session and change
    /// the rest of the state at the same time.
    sessions: BTreeMap<SessionId, Session>,
    st: State,
}

/// Everything but the sessions.
#[derive(Debug)]
struct State {
    config: Config,
    users: Users,
    rooms: BTreeMap<RoomName, Room>,
    timers: Timers,
    out: Delivery,
    history_tickets: BTreeMap<u64, HistoryTicket>,
    next_ticket: u64,
    /// Rooms being loaded (from the log in cluster mode, from the store in durable
    /// mode), and what waits for them.
    loading: cluster::Loading,
    /// Durable mode: rooms the store holds that are not in memory, with their last seq.
    stored: BTreeMap<RoomName, Seq>,
    /// Rooms restored before the first input, whose unload timers are not armed yet.
    unarmed: Vec<RoomName>,
    /// Public rooms' access rules and invitations.
    access: authz::AccessTable,
    /// Durable mode: moderation changes handed to the store, by ticket, with the
    /// moderator waiting for each (if any).
    saving: BTreeMap<u64, (RoomName, Option<moderation::PendingSave>)>,
    /// Counts moderation changes made here (each room's access entry keeps the count
    /// at its last change).
    mod_changes: u64,
    /// Cluster mode: rooms whose moderation state was asked of the log, with
    /// `mod_changes` at the time (a change made since makes the answer stale).
    mod_asked: BTreeMap<RoomName, u64>,
    /// Read markers by user and room: the last seq read (`commands/read.rs`). An
    /// anonymous user's go with the user (its grace period); a host identity's are
    /// kept (in durable mode stored, and restored at startup).
    markers: BTreeMap<UserKey, BTreeMap<RoomName, Seq>>,
    /// Durable mode (cluster mode: rooms being loaded): rooms not in memory whose oldest
    /// entries retention pruned, with the oldest seq kept: applied when the room is
    /// loaded.
    pruned: BTreeMap<RoomName, Seq>,
    shutting_down: bool,
    drained: bool,
}

/// What a room's events need besides the room itself, borrowed apart from it.
struct Env<'a> {
    config: &'a Config,
    users: &'a Users,
    out: &'a mut Delivery,
}

/// A history page asked of the store, waiting for its answer.
#[derive(Debug)]
struct HistoryTicket {
    session: SessionId,
    id: Option<RequestId>,
    room: RoomName,
    /// The session's user: the page shows it the `client_id` of its own messages only.
    reader: UserKey,
    /// Anonymous mode, direct rooms: no message older than this (`Users::direct_floor`).
    floor: Option<chrono::DateTime<chrono::Utc>>,
}

impl Server {
    /// A server with no sessions and no rooms.
    #[must_use]
    pub fn new(config: Config) -> Server {
        let mut access = authz::AccessTable::new();
        for (room, rules) in &config.rooms {
            match RoomName::parse(room, config.max_room_chars, config.max_name_chars) {
                Ok(name) if RoomKind::of(&name).has_membership() => {
                    access.entry(name).or_default().rules = rules.clone();
                }
                // Hub::spawn refuses such a config; a bare Server ignores the entry.
                _ => {}
            }
        }
        Server {
            sessions: BTreeMap::new(),
            st: State {
                users: Users::new(config.node),
                config,
                rooms: BTreeMap::new(),
                timers: Timers::default(),
                out: Delivery::default(),
                history_tickets: BTreeMap::new(),
                next_ticket: 0,
                loading: cluster::Loading::default(),
                stored: BTreeMap::new(),
                unarmed: Vec::new(),
                access,
                saving: BTreeMap::new(),
                mod_changes: 0,
                mod_asked: BTreeMap::new(),
                markers: BTreeMap::new(),
                pruned: BTreeMap::new(),
                shutting_down: false,
                drained: false,
            },
        }
    }

    // ---- getters ----

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.st.config
    }

    /// Number of open sessions.
    #[must_use]
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Number of rooms in memory (see [`Server::stored_room_count`] for the others).
    #[must_use]
    pub fn room_count(&self) -> usize {
        self.st.rooms.len()
    }

    /// The users present in a public room (including those in their grace period),
    /// or the two users of a direct room. `None` if the room does not exist.
    #[must_use]
    pub fn members(&self, room: &RoomName) -> Option<Vec<UserName>> {
        if self.st.is_stored(room) {
            // Not in memory: nobody is in it.
            let kind = RoomKind::of(room);
            return Some(kind.direct_members(&self.st.users).unwrap_or_default());
        }
        self.st
            .rooms
            .get(room)
            .map(|r| r.member_list(&self.st.users))
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
        let stored = || self.st.stored.get(room).copied();
        self.st
            .rooms
            .get(room)
            .map(|r| r.last_delivered)
            .or_else(stored)
    }

    // ---- inputs ----

    /// Feeds one input. Afterwards drain [`Server::poll_output`] and re-arm the timer
    /// from [`Server::poll_timeout`]. Client misbehaviour never gives `Err`: it becomes
    /// error frames and closes. `Err` means the driver broke the contract.
    pub fn handle_input(&mut self, now: Now, input: Input) -> Result<(), ApiMisuse> {
        self.st.out.set_now(now.mono);
        if !self.st.unarmed.is_empty() {
            self.st.arm_restored();
        }
        match input {
            Input::Connected { session } => return self.on_connected(now, session, None),
            Input::ConnectedAs { session, identity } => {
                return self.on_connected(now, session, Some(identity));
            }
            Input::Received { session, frame } => self.on_received(now, session, frame),
            Input::Disconnected { session } => self.drop_session(now, session, None),
            Input::QueueFull { session, ephemeral } => self.on_queue_full(now, session, ephemeral),
            Input::Authenticated { session, result } => {
                return self.on_authenticated(now, session, result);
            }
            Input::Persisted { room, seq, result } => {
                self.st.on_persisted(&room, seq, result)?;
                self.maybe_finish_shutdown(now);
            }
            Input::Appended {
                room,
                ticket,
                result,
            } => {
                self.st.on_appended(&room, ticket, result)?;
                self.maybe_finish_shutdown(now);
            }
            Input::RoomLog {
                room,
                messages,
                gap_before,
                fetched,
            } => {
                self.st.on_room_log(&room, messages, gap_before, fetched);
                self.maybe_finish_shutdown(now);
            }
            Input::CatchUp { room } => self.st.on_catch_up(room.as_ref()),
            Input::NameClaimed { session, result } => {
                return self.on_name_claimed(now, session, result);
            }
            Input::EpochChanged { epoch } => self.on_epoch_changed(now, epoch),
            Input::ReadMarkers { user, markers } => self.st.on_read_markers(&user, markers),
            Input::Typing { room, user, active } => {
                self.st.on_remote_typing(now, &room, &user, active);
            }
            Input::ModerationLoaded { room, result } => {
                self.on_moderation_loaded(now, room, result);
            }
            Input::Presence { room, announced } => self.st.on_presence(now, &room, announced),
            Input::PresenceSnapshot { room, pv, users } => {
                self.st.on_presence_snapshot(now, &room, pv, users);
            }
            Input::RoomLoaded { room, result } => {
                self.on_room_loaded(now, room, result)?;
                self.maybe_finish_shutdown(now);
            }
            Input::HistoryLoaded { ticket, result } => {
                return self.st.on_history_loaded(ticket, result);
            }
            Input::ModerationSaved { ticket, result } => {
                self.on_moderation_saved(ticket, result)?;
                self.maybe_finish_shutdown(now);
            }
            Input::Publish {
                ticket,
                room,
                user,
                body,
                client_id,
            } => self
                .st
                .on_publish(now, ticket, &room, &user, body, client_id),
            Input::Erase { ticket, room, user } => self.st.on_erase(now, ticket, room, user),
            Input::Pruned { room, first_kept } => self.st.on_pruned(&room, first_kept),
        }
        Ok(())
    }

    /// Fires every timer due at `now`: presence grace periods, typing expiry, the end of
    /// timed bans and mutes.
    pub fn handle_timeout(&mut self, now: Now) {
        self.st.out.set_now(now.mono);
        if !self.st.unarmed.is_empty() {
            self.st.arm_restored();
        }
        while let Some((at, timer)) = self.st.timers.pop_due(now.mono) {
            match timer {
                Timer::Linger(room, user) => self.st.on_linger_expired(now, at, &room, &user),
                Timer::Grace(user) => self.st.on_grace_expired(at, &user),
                Timer::Typing(room, user) => self.st.on_typing_expired(at, &room, &user),
                Timer::Unload(room) => self.st.on_unload_due(at, &room),
                Timer::Expiry(session) => self.on_identity_expired(now, session),
                Timer::Presence(room) => self.st.on_presence_tick(at, &room),
                Timer::Sanction(room, subject, kind) => {
                    self.on_sanction_expired(at, &room, &subject, kind);
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
        let window = self.st.config.history_window;
        let last_seq = self
            .st
            .stored
            .remove(&room)
            .map_or(last_seq, |s| s.max(last_seq));
        self.st.unarmed.push(room.clone());
        let pruned = self.st.pruned.remove(&room);
        let r = self
            .st
            .rooms
            .entry(room.clone())
            .or_insert_with(|| Room::new(room));
        r.restore(last_seq, recent, complete, window);
        if let Some(first_kept) = pruned {
            r.prune(first_kept);
        }
    }

    /// Starts a graceful shutdown: new hellos are refused; once every pending message is
    /// settled, every session gets `goodbye` and a close, then [`Output::Drained`].
    pub fn shutdown(&mut self, now: Now) {
        self.st.shutting_down = true;
        self.maybe_finish_shutdown(now);
    }

    // ---- outputs ----

    /// The next thing to do, if any. Drain until `None` after every input.
    #[must_use]
    #[inline]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.st.out.pop()
    }

    /// When [`Server::handle_timeout`] should next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.st.timers.next()
    }

    // ---- connection lifecycle ----

    fn on_connected(
        &mut self,
        now: Now,
        session: SessionId,
        identity: Option<Identity>,
    ) -> Result<(), ApiMisuse> {
        if self.sessions.contains_key(&session) {
            return Err(ApiMisuse::DuplicateSession(session));
        }
        let mut s = Session::new(&self.st.config, now.mono);
        if let Some(identity) = identity {
            if let Some(expires) = identity.expires {
                let left = (expires - now.utc).to_std().unwrap_or_default();
                self.st.timers.arm(now.mono + left, Timer::Expiry(session));
            }
            s.identity = Some(std::sync::Arc::new(identity));
            s.host_identity = true;
        }
        self.sessions.insert(session, s);
        self.st.out.open(session);
        Ok(())
    }

    /// A session's host identity expired: tell it and close it.
    fn on_identity_expired(&mut self, now: Now, session: SessionId) {
        self.end_session(now, session, CloseReason::AuthExpired);
    }

    /// Ends a session for a reason of the host's (expired, revoked): an error frame
    /// that says why, then the close.
    fn end_session(&mut self, now: Now, session: SessionId, reason: CloseReason) {
        if !self.sessions.contains_key(&session) {
            return;
        }
        let (code, message) = match reason {
            CloseReason::Revoked => (ErrorCode::AuthRevoked, "your access was revoked"),
            _ => (ErrorCode::AuthExpired, "your login expired; log in again"),
        };
        self.st.out.error(session, None, code, message.into());
        self.drop_session(now, session, Some(reason));
    }

    fn on_queue_full(&mut self, now: Now, sid: SessionId, ephemeral: bool) {
        if ephemeral {
            let until = now.mono + self.st.config.congestion_backoff;
            self.st.out.congest(sid, until);
        } else {
            // A reliable frame was lost for this session: it must reconnect and resume.
            self.drop_session(now, sid, Some(CloseReason::SlowConsumer));
        }
    }

    /// Once shutting down and every pending message is settled: `goodbye` and a close
    /// to every session, then [`Output::Drained`].
    fn maybe_finish_shutdown(&mut self, now: Now) {
        let st = &self.st;
        let unsettled = |r: &Room| !r.pending.is_empty() || !r.cluster.is_settled();
        if !st.shutting_down
            || st.drained
            || !st.saving.is_empty()
            || st.rooms.values().any(unsettled)
        {
            return;
        }
        let retry = u64::try_from(st.config.shutdown_retry_after.as_millis()).unwrap_or(u64::MAX);
        let goodbye = Encoded::new(&ServerFrame::Goodbye {
            reason: "server shutting down".into(),
            retry_after_ms: retry,
        });
        let sessions: Vec<SessionId> = self.sessions.keys().copied().collect();
        for sid in sessions {
            self.st.out.send_encoded(sid, goodbye.clone());
            self.drop_session(now, sid, Some(CloseReason::Shutdown));
        }
        self.st.drained = true;
        self.st.out.push(Output::Drained);
    }
}

impl State {
    /// A room, and apart from it what its events need.
    fn room_env(&mut self, name: &RoomName) -> Option<(&mut Room, Env<'_>)> {
        let room = self.rooms.get_mut(name)?;
        let env = Env {
            config: &self.config,
            users: &self.users,
            out: &mut self.out,
        };
        Some((room, env))
    }

    /// A room, created if it does not exist yet and `may_create` allows it for its kind
    /// (given whether the server creates rooms on join), within the server's room limit.
    fn open_room(
        &mut self,
        name: &RoomName,
        may_create: impl FnOnce(&RoomKind, bool) -> bool,
    ) -> Result<(&mut Room, Env<'_>), ErrorCode> {
        use std::collections::btree_map::Entry;
        let at_limit = |st: &Self| st.rooms.len() >= st.config.max_rooms;
        if at_limit(self) && !self.rooms.contains_key(name) {
            self.unload_one();
        }
        let full = at_limit(self);
        let room = match self.rooms.entry(name.clone()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let room = Room::new(name.clone());
                if !may_create(&room.kind, self.config.create_rooms_on_join) {
                    return Err(ErrorCode::RoomNotFound);
                }
                if full {
                    return Err(ErrorCode::LimitReached);
                }
                self.out.event(Event::RoomCreated(name.clone()));
                e.insert(room)
            }
        };
        unload::touch(room, &mut self.timers, &self.config, self.out.now());
        let env = Env {
            config: &self.config,
            users: &self.users,
            out: &mut self.out,
        };
        Ok((room, env))
    }

    /// Sends one frame to every recipient of a room; see [`Env::fan_out`].
    fn fan_out(
        &mut self,
        room_name: &RoomName,
        frame: &Encoded,
        except_session: Option<SessionId>,
        except_user: Option<&UserKey>,
    ) {
        if let Some((room, mut env)) = self.room_env(room_name) {
            env.fan_out(room, frame, except_session, except_user);
        }
    }
}

impl Env<'_> {
    /// Sends one frame to every recipient of a room: the same bytes to each, in one
    /// [`Output::Broadcast`]. `except_session` is skipped; `except_user`'s sessions too,
    /// and congested sessions for ephemeral frames.
    fn fan_out(
        &mut self,
        room: &Room,
        frame: &Encoded,
        except_session: Option<SessionId>,
        except_user: Option<&UserKey>,
    ) {
        let recipients = room.recipients(self.users);
        let mut except: Vec<SessionId> = except_session.into_iter().collect();
        if let Some(sessions) = except_user.and_then(|k| room.sessions_of(k, self.users)) {
            except.extend(sessions.iter().copied());
        }
        self.out.fan_out(recipients, frame, except);
    }
}
