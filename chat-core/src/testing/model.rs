//! The reference model: what every session should receive, step by step, written from
//! the room semantics in docs/ARCHITECTURE.md and docs/PROTOCOL.md, without looking at how
//! the server does it.

use crate::AuthRefused;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::ops::{ModOp, ROOMS, RoomsChoice, Since};
use crate::protocol::{ErrorCode, ModAction, Role, ServerFrame};
use crate::{AuthMode, CloseReason, Config, Rate, UserName};

// ---- what a session observes, in a comparable form ----

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Obs {
    Welcome {
        id: Option<u64>,
        user: String,
        epoch: String,
        token: bool,
    },
    Joined {
        id: Option<u64>,
        room: String,
        members: Vec<String>,
        messages: Vec<(u64, String, String)>,
        gap: bool,
        last_seq: u64,
        topic: Option<String>,
        slow_mode: Option<u32>,
        role: Option<Role>,
    },
    Left {
        id: Option<u64>,
        room: String,
    },
    Msg {
        room: String,
        seq: u64,
        user: String,
        body: String,
        client_id: Option<String>,
    },
    Ack {
        id: Option<u64>,
        room: String,
        seq: u64,
        client_id: Option<String>,
        duplicate: bool,
    },
    UserJoined {
        room: String,
        user: String,
    },
    UserLeft {
        room: String,
        user: String,
    },
    Typing {
        room: String,
        user: String,
        active: bool,
    },
    History {
        id: Option<u64>,
        room: String,
        seqs: Vec<u64>,
        has_more: bool,
    },
    Error {
        id: Option<u64>,
        code: ErrorCode,
    },
    Goodbye {
        retry_after_ms: u64,
    },
    Moderated {
        room: String,
        user: String,
        action: ModAction,
        reason: Option<String>,
        minutes: Option<u64>,
        role: Option<Role>,
        by: Option<String>,
    },
    Done {
        id: Option<u64>,
        room: String,
        action: ModAction,
        user: Option<String>,
    },
    Topic {
        room: String,
        topic: String,
        by: Option<String>,
    },
    SlowMode {
        room: String,
        seconds: u32,
        by: Option<String>,
    },
    Other(String),
}

pub(crate) fn observe(f: &ServerFrame) -> Obs {
    match f {
        ServerFrame::Welcome {
            id,
            user,
            epoch,
            token,
            ..
        } => Obs::Welcome {
            id: id.map(|i| i.0),
            user: user.to_string(),
            epoch: epoch.clone(),
            token: token.is_some(),
        },
        ServerFrame::Joined {
            id,
            room,
            members,
            messages,
            gap,
            last_seq,
            topic,
            slow_mode,
            role,
            ..
        } => Obs::Joined {
            id: id.map(|i| i.0),
            room: room.to_string(),
            members: members.iter().map(ToString::to_string).collect(),
            messages: messages
                .iter()
                .map(|m| (m.seq.0, m.user.to_string(), m.body.to_string()))
                .collect(),
            gap: *gap,
            last_seq: last_seq.0,
            topic: topic.clone(),
            slow_mode: *slow_mode,
            role: *role,
        },
        ServerFrame::Left { id, room } => Obs::Left {
            id: id.map(|i| i.0),
            room: room.to_string(),
        },
        ServerFrame::Message(m) => Obs::Msg {
            room: m.room.to_string(),
            seq: m.seq.0,
            user: m.user.to_string(),
            body: m.body.to_string(),
            client_id: m.client_id.as_deref().map(str::to_owned),
        },
        ServerFrame::Ack {
            id,
            room,
            seq,
            client_id,
            duplicate,
            ..
        } => Obs::Ack {
            id: id.map(|i| i.0),
            room: room.to_string(),
            seq: seq.0,
            client_id: client_id.as_deref().map(str::to_owned),
            duplicate: *duplicate,
        },
        ServerFrame::UserJoined { room, user, .. } => Obs::UserJoined {
            room: room.to_string(),
            user: user.to_string(),
        },
        ServerFrame::UserLeft { room, user, .. } => Obs::UserLeft {
            room: room.to_string(),
            user: user.to_string(),
        },
        ServerFrame::Typing { room, user, active } => Obs::Typing {
            room: room.to_string(),
            user: user.to_string(),
            active: *active,
        },
        ServerFrame::History {
            id,
            room,
            messages,
            has_more,
            ..
        } => Obs::History {
            id: id.map(|i| i.0),
            room: room.to_string(),
            seqs: messages.iter().map(|m| m.seq.0).collect(),
            has_more: *has_more,
        },
        ServerFrame::Error { id, code, .. } => Obs::Error {
            id: id.map(|i| i.0),
            code: *code,
        },
        ServerFrame::Goodbye { retry_after_ms, .. } => Obs::Goodbye {
            retry_after_ms: *retry_after_ms,
        },
        ServerFrame::Moderated {
            room,
            user,
            action,
            reason,
            minutes,
            role,
            by,
        } => Obs::Moderated {
            room: room.to_string(),
            user: user.to_string(),
            action: *action,
            reason: reason.clone(),
            minutes: *minutes,
            role: *role,
            by: by.as_ref().map(ToString::to_string),
        },
        ServerFrame::Done {
            id,
            room,
            action,
            user,
        } => Obs::Done {
            id: id.map(|i| i.0),
            room: room.to_string(),
            action: *action,
            user: user.as_ref().map(ToString::to_string),
        },
        ServerFrame::Topic { room, topic, by } => Obs::Topic {
            room: room.to_string(),
            topic: topic.clone(),
            by: by.as_ref().map(ToString::to_string),
        },
        ServerFrame::SlowMode { room, seconds, by } => Obs::SlowMode {
            room: room.to_string(),
            seconds: *seconds,
            by: by.as_ref().map(ToString::to_string),
        },
        other => Obs::Other(super::sim::kind(other).to_owned()),
    }
}

// ---- flood control, as documented: token buckets in millionths ----

const ONE: u128 = 1_000_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    micros: u128,
    /// Milliseconds since the start.
    at: u64,
}

impl Bucket {
    fn full(rate: Rate, t: u64) -> Bucket {
        Bucket {
            micros: u128::from(rate.burst) * ONE,
            at: t,
        }
    }

    fn take(&mut self, rate: Rate, t: u64) -> bool {
        let elapsed_us = u128::from(t.saturating_sub(self.at)) * 1000;
        let cap = u128::from(rate.burst) * ONE;
        self.micros = (self.micros + elapsed_us * u128::from(rate.per_second)).min(cap);
        self.at = self.at.max(t);
        if self.micros >= ONE {
            self.micros -= ONE;
            true
        } else {
            false
        }
    }
}

/// A refused command: its error code, the strikes it costs, and whether it closes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rej {
    code: ErrorCode,
    strikes: u32,
    close: Option<CloseReason>,
}

impl Rej {
    pub(crate) fn new(code: ErrorCode) -> Rej {
        Rej {
            code,
            strikes: 1,
            close: None,
        }
    }
    pub(crate) fn bad_frame() -> Rej {
        Rej {
            strikes: 2,
            ..Rej::new(ErrorCode::BadFrame)
        }
    }
    fn blameless(code: ErrorCode) -> Rej {
        Rej {
            strikes: 0,
            ..Rej::new(code)
        }
    }
    fn closing(code: ErrorCode, reason: CloseReason) -> Rej {
        Rej {
            close: Some(reason),
            ..Rej::blameless(code)
        }
    }
}

// ---- the state ----

#[derive(Debug, Clone)]
pub(crate) struct MMsg {
    pub seq: u64,
    pub user: String,
    pub body: String,
    pub client_id: Option<String>,
    /// Posted at (ms).
    pub at: u64,
}

#[derive(Debug, Default)]
struct MMember {
    sessions: BTreeSet<u64>,
    /// Set while the user's last session in the room is gone but the grace runs.
    linger_until: Option<u64>,
}

#[derive(Debug)]
struct MPending {
    msg: MMsg,
    author: String,
    committed: bool,
    /// (session, request id) of each send waiting for the ack; the first posted it.
    ackers: Vec<(u64, u64)>,
}

#[derive(Debug, Default)]
pub(crate) struct MRoom {
    /// The two user keys of a direct room.
    direct: Option<(String, String)>,
    members: BTreeMap<String, MMember>,
    sessions: BTreeSet<u64>,
    /// The window: the newest `history_window` delivered messages.
    window: Vec<MMsg>,
    /// The last seq given out (durable: maybe not delivered yet, maybe failed).
    stamped: u64,
    /// The last seq delivered.
    pub delivered: u64,
    /// Seqs up to here are no longer in the window.
    floor: u64,
    client_ids: BTreeMap<(String, String), u64>,
    typing: BTreeMap<String, u64>,
    pending: VecDeque<MPending>,
}

#[derive(Debug)]
pub(crate) struct MUser {
    pub name: String,
    pub sessions: BTreeSet<u64>,
    pub token: Option<String>,
    grace_until: Option<u64>,
    /// Took the name at (ms): anonymous users read no direct message from before.
    claimed_at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    New,
    Authenticating,
    Ready,
}

#[derive(Debug)]
pub(crate) struct MSession {
    pub user: Option<String>,
    pub rooms: BTreeSet<String>,
    phase: Phase,
    frames: Bucket,
    sends: Bucket,
    typing: Bucket,
    strikes: u32,
    closing: Option<CloseReason>,
    congested_until: Option<u64>,
    /// Connected at (ms), for the sends-per-time bound.
    pub since: u64,
}

/// A public room's moderation state: what lasts (in durable mode, across restarts).
#[derive(Debug, Default, Clone)]
pub(crate) struct MMod {
    /// Roles above member, by user key.
    roles: BTreeMap<String, Role>,
    /// Bans and mutes, by user key, until (ms; `None`: for good).
    banned: BTreeMap<String, Option<u64>>,
    muted: BTreeMap<String, Option<u64>>,
    topic: Option<String>,
    slow_mode: u32,
    /// When each user last posted (slow mode on); not kept across a restart.
    last_post: BTreeMap<String, u64>,
}

/// The user key of a sanction's subject (`key`, or `key` NUL token).
fn user_of(subject: &str) -> &str {
    subject.split('\0').next().unwrap_or(subject)
}

fn in_force(until: Option<&Option<u64>>, t: u64) -> bool {
    until.is_some_and(|u| u.is_none_or(|u| t < u))
}

/// The last send of a slot, for `Resend`.
#[derive(Debug, Clone)]
pub(crate) struct LastSend {
    pub target: Result<String, String>, // Ok(room) or Err(to)
    pub body: String,
    pub client_id: Option<String>,
}

#[derive(Debug)]
pub(crate) struct Model {
    pub config: Config,
    pub t: u64,
    pub sessions: BTreeMap<u64, MSession>,
    pub users: BTreeMap<String, MUser>,
    pub rooms: BTreeMap<String, MRoom>,
    /// Expected frames per session for the current step.
    pub out: BTreeMap<u64, Vec<Obs>>,
    /// Expected closes for the current step.
    pub closes: BTreeMap<u64, CloseReason>,
    /// Expected presence events for the current step: (joined?, room, user).
    pub events: Vec<(bool, String, String)>,
    /// Every token ever issued per user key.
    pub tokens: BTreeMap<String, Vec<String>>,
    /// Durable mode: persist requests not answered yet, in order: (room, seq).
    pub persists: VecDeque<(String, u64)>,
    /// Durable mode: the store's committed messages per room.
    pub store: BTreeMap<String, Vec<MMsg>>,
    /// Public rooms' moderation state, by room.
    pub moderation: BTreeMap<String, MMod>,
    pub shutting_down: bool,
    /// How many `Drained` so far.
    pub drained: usize,
    drained_now: bool,
}

pub(crate) fn dm_room(a: &str, b: &str) -> String {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    format!("@{x},{y}")
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Model {
    pub(crate) fn new(config: Config) -> Model {
        Model {
            config,
            t: 0,
            sessions: BTreeMap::new(),
            users: BTreeMap::new(),
            rooms: BTreeMap::new(),
            out: BTreeMap::new(),
            closes: BTreeMap::new(),
            events: Vec::new(),
            tokens: BTreeMap::new(),
            persists: VecDeque::new(),
            store: BTreeMap::new(),
            moderation: BTreeMap::new(),
            shutting_down: false,
            drained: 0,
            drained_now: false,
        }
    }

    fn window(&self) -> usize {
        self.config.history_window
    }

    fn grace(&self) -> u64 {
        ms(self.config.presence_grace)
    }

    pub(crate) fn durable(&self) -> bool {
        self.config.durable
    }

    pub(crate) fn host_auth(&self) -> bool {
        self.config.auth == AuthMode::Host
    }

    fn emit(&mut self, sid: u64, obs: Obs) {
        self.out.entry(sid).or_default().push(obs);
    }

    fn display(&self, key: &str) -> String {
        self.users
            .get(key)
            .map_or_else(|| key.to_owned(), |u| u.name.clone())
    }

    pub(crate) fn member_names(&self, room: &str) -> Vec<String> {
        let r = &self.rooms[room];
        match &r.direct {
            Some((a, b)) if a == b => vec![self.display(a)], // a note to self
            Some((a, b)) => vec![self.display(a), self.display(b)],
            None => r.members.keys().map(|k| self.display(k)).collect(),
        }
    }

    /// Recipients of a room event, less `except_session` and `except_user`'s sessions.
    fn recipients(
        &self,
        room: &str,
        except_session: Option<u64>,
        except_user: Option<&str>,
    ) -> Vec<u64> {
        let r = &self.rooms[room];
        let (all, skip): (BTreeSet<u64>, BTreeSet<u64>) = match &r.direct {
            None => (
                r.sessions.clone(),
                except_user
                    .and_then(|k| r.members.get(k))
                    .map(|m| m.sessions.clone())
                    .unwrap_or_default(),
            ),
            Some((a, b)) => {
                let mut all = BTreeSet::new();
                for k in [a, b] {
                    if let Some(u) = self.users.get(k) {
                        all.extend(u.sessions.iter().copied());
                    }
                }
                let skip = except_user
                    .and_then(|k| self.users.get(k))
                    .map(|u| u.sessions.clone())
                    .unwrap_or_default();
                (all, skip)
            }
        };
        all.into_iter()
            .filter(|s| Some(*s) != except_session && !skip.contains(s))
            .collect()
    }

    /// A room event to its recipients; typing (ephemeral) skips congested sessions.
    fn fan_out(
        &mut self,
        room: &str,
        obs: &Obs,
        except_session: Option<u64>,
        except_user: Option<&str>,
    ) {
        let ephemeral = matches!(obs, Obs::Typing { .. });
        for sid in self.recipients(room, except_session, except_user) {
            let congested = self.sessions[&sid]
                .congested_until
                .is_some_and(|u| u > self.t);
            if ephemeral && congested {
                continue;
            }
            self.emit(sid, obs.clone());
        }
    }

    pub(crate) fn user_of(&self, sid: u64) -> Option<String> {
        self.sessions.get(&sid).and_then(|s| s.user.clone())
    }

    pub(crate) fn is_open(&self, sid: u64) -> bool {
        self.sessions.contains_key(&sid)
    }

    // ---- sessions, frames, strikes ----

    pub(crate) fn connect(&mut self, sid: u64) {
        let c = &self.config;
        let t = self.t;
        self.sessions.insert(
            sid,
            MSession {
                user: None,
                rooms: BTreeSet::new(),
                phase: Phase::New,
                frames: Bucket::full(c.frame_rate, t),
                sends: Bucket::full(c.send_rate, t),
                typing: Bucket::full(c.typing_rate, t),
                strikes: 0,
                closing: None,
                congested_until: None,
                since: t,
            },
        );
    }

    /// A frame arrives: whether the server handles it (the session is open and within
    /// the frame rate; beyond it the session is closed as a flood, without a word).
    pub(crate) fn frame_in(&mut self, sid: u64) -> bool {
        let (rate, t) = (self.config.frame_rate, self.t);
        let Some(s) = self.sessions.get_mut(&sid) else {
            return false;
        };
        if s.frames.take(rate, t) {
            true
        } else {
            self.drop_session(sid, Some(CloseReason::Flood));
            false
        }
    }

    /// The frame of a session that has not been welcomed, or the phase check before a
    /// command: `Some(key)` when the session may run commands.
    pub(crate) fn ready(&mut self, sid: u64, id: Option<u64>) -> Option<String> {
        let key = self.user_of(sid);
        if key.is_none() {
            self.reject(sid, id, Rej::new(ErrorCode::HelloRequired));
        }
        key
    }

    pub(crate) fn reject(&mut self, sid: u64, id: Option<u64>, rej: Rej) {
        if !self.is_open(sid) {
            return;
        }
        self.emit(sid, Obs::Error { id, code: rej.code });
        let s = self.sessions.get_mut(&sid).expect("open");
        s.strikes += rej.strikes;
        if rej.close.is_some() {
            s.closing = rej.close;
        }
    }

    /// An accepted join, leave, send or history pays back a strike.
    fn accepted(&mut self, sid: u64) {
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.strikes = s.strikes.saturating_sub(1);
        }
    }

    /// After each frame: close the session if its command asked for it or its strikes
    /// ran out.
    pub(crate) fn settle(&mut self, sid: u64) {
        let max = self.config.max_strikes;
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let reason = s
            .closing
            .take()
            .or((s.strikes >= max).then_some(CloseReason::Flood));
        if reason.is_some() {
            self.drop_session(sid, reason);
        }
    }

    pub(crate) fn queue_full(&mut self, sid: u64, ephemeral: bool) {
        let until = self.t + ms(self.config.congestion_backoff);
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if ephemeral {
            s.congested_until = Some(until);
        } else {
            self.drop_session(sid, Some(CloseReason::SlowConsumer));
        }
    }

    // ---- rooms ----

    fn ensure_room(&mut self, name: &str) {
        if !self.rooms.contains_key(name) {
            let direct = name.strip_prefix('@').map(|pair| {
                let (a, b) = pair.split_once(',').expect("dm rooms are @a,b");
                (a.to_owned(), b.to_owned())
            });
            self.rooms.insert(
                name.to_owned(),
                MRoom {
                    direct,
                    ..MRoom::default()
                },
            );
        }
    }

    pub(crate) fn resolve_since(&self, room: &str, since: Option<Since>) -> Option<u64> {
        let last = self.rooms.get(room).map_or(0, |r| r.delivered);
        since.map(|s| match s {
            Since::Back(k) => last.saturating_sub(k),
            Since::Ahead => last + 3,
        })
    }

    // ---- hello ----

    /// `hello` from a session that has not said it yet (anonymous mode; in host mode it
    /// starts authenticating). `token` is the token or credentials.
    pub(crate) fn hello(
        &mut self,
        sid: u64,
        id: u64,
        name: &str,
        token: Option<&str>,
        rooms: &RoomsChoice,
    ) {
        let phase = self.sessions[&sid].phase;
        if phase != Phase::New {
            return self.reject(sid, Some(id), Rej::new(ErrorCode::AlreadyWelcomed));
        }
        if self.shutting_down {
            let rej = Rej::closing(ErrorCode::ShuttingDown, CloseReason::Shutdown);
            return self.reject(sid, Some(id), rej);
        }
        if self.host_auth() {
            self.sessions.get_mut(&sid).expect("open").phase = Phase::Authenticating;
            return;
        }
        let key = name.to_lowercase();
        if let Some(user) = self.users.get(&key) {
            let proven = token.is_some() && token == user.token.as_deref();
            if !proven {
                return self.reject(sid, Some(id), Rej::new(ErrorCode::NameTaken));
            }
        }
        self.welcome(sid, id, name, rooms);
    }

    /// The host's answer for an authenticating session.
    pub(crate) fn authenticated(
        &mut self,
        sid: u64,
        id: u64,
        rooms: &RoomsChoice,
        result: &Result<String, AuthRefused>,
    ) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        s.phase = Phase::New;
        let valid = result
            .as_ref()
            .ok()
            .filter(|n| UserName::parse(n, self.config.max_name_chars).is_ok());
        match valid {
            Some(name) => {
                let name = name.clone();
                self.welcome(sid, id, &name, rooms);
            }
            None => {
                let rej = Rej::closing(ErrorCode::AuthFailed, CloseReason::AuthFailed);
                self.reject(sid, Some(id), rej);
            }
        }
    }

    fn welcome(&mut self, sid: u64, id: u64, name: &str, rooms: &RoomsChoice) {
        let key = name.to_lowercase();
        let t = self.t;
        let user = self.users.entry(key.clone()).or_insert_with(|| MUser {
            name: name.to_owned(),
            sessions: BTreeSet::new(),
            token: None, // learned from the welcome: tokens are the server's secret
            grace_until: None,
            claimed_at: t,
        });
        user.sessions.insert(sid);
        user.grace_until = None;
        let display = user.name.clone();
        let s = self.sessions.get_mut(&sid).expect("open");
        s.user = Some(key.clone());
        s.phase = Phase::Ready;
        let token = !self.host_auth();
        let epoch = self.config.epoch.clone();
        self.emit(
            sid,
            Obs::Welcome {
                id: Some(id),
                user: display,
                epoch,
                token,
            },
        );
        let specs: Vec<(String, Option<u64>)> = match rooms {
            RoomsChoice::Default => self
                .config
                .default_rooms
                .iter()
                .map(|r| (r.clone(), None))
                .collect(),
            RoomsChoice::Nothing => vec![],
            RoomsChoice::One(r) => vec![(ROOMS[*r].to_owned(), None)],
            RoomsChoice::Resume(list) => list.clone(),
        };
        let max = self.config.max_strikes;
        for (room, since) in specs {
            self.join(sid, &key, None, &room, since);
            if self.sessions.get(&sid).is_none_or(|s| s.strikes >= max) {
                break;
            }
        }
    }

    // ---- commands ----

    pub(crate) fn join(
        &mut self,
        sid: u64,
        key: &str,
        id: Option<u64>,
        room: &str,
        since: Option<u64>,
    ) {
        if self.is_banned(room, key) {
            return self.reject(sid, id, Rej::new(ErrorCode::Forbidden));
        }
        self.accepted(sid);
        if room.starts_with('@') && !self.rooms.contains_key(room) {
            // Shown empty, not created: it comes into being with its first message.
            self.ensure_room(room);
            let members = self.member_names(room);
            self.rooms.remove(room);
            return self.emit(
                sid,
                Obs::Joined {
                    id,
                    room: room.to_owned(),
                    members,
                    messages: vec![],
                    gap: since.is_some_and(|s| s > 0),
                    last_seq: 0,
                    topic: None,
                    slow_mode: None,
                    role: None,
                },
            );
        }
        let created = !self.rooms.contains_key(room);
        self.ensure_room(room);
        let public = self.rooms[room].direct.is_none();
        if public && created {
            self.creator_owns(key, room);
        }
        let already = self.sessions[&sid].rooms.contains(room);
        let mut announce = false;
        if public && !already {
            let r = self.rooms.get_mut(room).expect("ensured");
            r.sessions.insert(sid);
            let member = r.members.entry(key.to_owned()).or_insert_with(|| {
                announce = true;
                MMember::default()
            });
            member.sessions.insert(sid);
            member.linger_until = None;
            self.sessions
                .get_mut(&sid)
                .expect("open")
                .rooms
                .insert(room.to_owned());
        }
        let on_join = self.config.history_on_join;
        let floor = self.dm_floor(key, room);
        let r = &self.rooms[room];
        let latest = |r: &MRoom| r.window[r.window.len().saturating_sub(on_join)..].to_vec();
        let (messages, gap) = match since {
            None => (latest(r), false),
            Some(s) if s > r.delivered || s < r.floor => (latest(r), true),
            Some(s) => (
                r.window.iter().filter(|m| m.seq > s).cloned().collect(),
                false,
            ),
        };
        let m = self.moderation.get(room).filter(|_| public);
        let role = public
            .then(|| self.role(room, key))
            .filter(|r| *r > Role::Member);
        let joined = Obs::Joined {
            topic: m.and_then(|m| m.topic.clone()),
            slow_mode: m.map(|m| m.slow_mode).filter(|s| *s > 0),
            role,
            id,
            room: room.to_owned(),
            members: self.member_names(room),
            messages: messages
                .into_iter()
                .filter(|m| floor.is_none_or(|f| m.at >= f))
                .map(|m| (m.seq, m.user, m.body))
                .collect(),
            gap,
            last_seq: r.delivered,
        };
        if announce {
            let user = self.display(key);
            let notice = Obs::UserJoined {
                room: room.to_owned(),
                user: user.clone(),
            };
            self.fan_out(room, &notice, Some(sid), None);
            self.events.push((true, room.to_owned(), user));
        }
        self.emit(sid, joined);
    }

    fn stop_typing(&mut self, room: &str, key: &str) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        if r.typing.remove(key).is_none() {
            return;
        }
        let obs = Obs::Typing {
            room: room.to_owned(),
            user: self.display(key),
            active: false,
        };
        self.fan_out(room, &obs, None, Some(key));
    }

    fn disposable(r: &MRoom) -> bool {
        r.members.is_empty() && r.window.is_empty() && r.pending.is_empty() && r.stamped == 0
    }

    fn announce_left(&mut self, room: &str, key: &str) {
        let user = self.display(key);
        let obs = Obs::UserLeft {
            room: room.to_owned(),
            user: user.clone(),
        };
        self.fan_out(room, &obs, None, None);
        self.events.push((false, room.to_owned(), user));
        if Self::disposable(&self.rooms[room]) {
            self.rooms.remove(room);
        }
    }

    pub(crate) fn leave(&mut self, sid: u64, key: &str, id: u64, room: &str) {
        if !self.sessions[&sid].rooms.contains(room) {
            return self.reject(sid, Some(id), Rej::new(ErrorCode::NotMember));
        }
        self.accepted(sid);
        self.sessions
            .get_mut(&sid)
            .expect("open")
            .rooms
            .remove(room);
        let r = self.rooms.get_mut(room).expect("member rooms exist");
        r.sessions.remove(&sid);
        let member = r.members.get_mut(key).expect("member");
        member.sessions.remove(&sid);
        let last = member.sessions.is_empty();
        self.emit(
            sid,
            Obs::Left {
                id: Some(id),
                room: room.to_owned(),
            },
        );
        if last {
            self.rooms
                .get_mut(room)
                .expect("exists")
                .members
                .remove(key);
            self.stop_typing(room, key);
            self.announce_left(room, key);
        }
    }

    fn evict(&mut self, room: &str) {
        let window = self.window();
        let r = self.rooms.get_mut(room).expect("exists");
        while r.window.len() > window {
            let old = r.window.remove(0);
            r.floor = old.seq;
            if let Some(cid) = old.client_id {
                let k = (old.user.to_lowercase(), cid);
                if r.client_ids.get(&k) == Some(&old.seq) {
                    r.client_ids.remove(&k);
                }
            }
        }
    }

    fn ack(&mut self, sid: u64, id: u64, room: &str, msg: &MMsg, duplicate: bool) {
        if self.is_open(sid) {
            self.emit(
                sid,
                Obs::Ack {
                    id: Some(id),
                    room: room.to_owned(),
                    seq: msg.seq,
                    client_id: msg.client_id.clone(),
                    duplicate,
                },
            );
        }
    }

    fn post(
        &mut self,
        sid: u64,
        key: &str,
        id: u64,
        room: &str,
        body: &str,
        client_id: Option<String>,
    ) {
        let author = self.display(key);
        let durable = self.durable();
        let r = self.rooms.get_mut(room).expect("ensured");
        if let Some(cid) = &client_id
            && let Some(seq) = r.client_ids.get(&(key.to_owned(), cid.clone())).copied()
        {
            if let Some(p) = r.pending.iter_mut().find(|p| p.msg.seq == seq) {
                p.ackers.push((sid, id));
                return;
            }
            let msg = r.window.iter().find(|m| m.seq == seq).cloned();
            let msg = msg.expect("model: remembered client ids are pending or in the window");
            return self.ack(sid, id, room, &msg, true);
        }
        r.stamped += 1;
        let seq = r.stamped;
        r.typing.remove(key);
        if let Some(cid) = &client_id {
            r.client_ids.insert((key.to_owned(), cid.clone()), seq);
        }
        r.pending.push_back(MPending {
            msg: MMsg {
                seq,
                user: author,
                body: body.to_owned(),
                client_id,
                at: self.t,
            },
            author: key.to_owned(),
            committed: !durable,
            ackers: vec![(sid, id)],
        });
        if durable {
            self.persists.push_back((room.to_owned(), seq));
        } else {
            self.release(room);
        }
    }

    /// Delivers the committed messages at the front of the room's pending queue.
    fn release(&mut self, room: &str) {
        loop {
            let r = self.rooms.get_mut(room).expect("exists");
            if !r.pending.front().is_some_and(|p| p.committed) {
                return;
            }
            let p = r.pending.pop_front().expect("front");
            r.delivered = p.msg.seq;
            r.window.push(p.msg.clone());
            self.evict(room);
            let typing_again = self.rooms[room].typing.contains_key(&p.author);
            // The client id goes to the author's own sessions only.
            let lean = Obs::Msg {
                room: room.to_owned(),
                seq: p.msg.seq,
                user: p.msg.user.clone(),
                body: p.msg.body.clone(),
                client_id: None,
            };
            let others: BTreeSet<u64> = self
                .recipients(room, None, Some(&p.author))
                .into_iter()
                .collect();
            for sid in self.recipients(room, None, None) {
                let mut obs = lean.clone();
                if !others.contains(&sid)
                    && let Obs::Msg { client_id, .. } = &mut obs
                {
                    client_id.clone_from(&p.msg.client_id);
                }
                self.emit(sid, obs);
            }
            if typing_again {
                let obs = Obs::Typing {
                    room: room.to_owned(),
                    user: p.msg.user.clone(),
                    active: true,
                };
                self.fan_out(room, &obs, None, Some(&p.author));
            }
            for (i, (sid, id)) in p.ackers.iter().enumerate() {
                self.ack(*sid, *id, room, &p.msg, i > 0);
            }
        }
    }

    /// The store's answer to the oldest persist request.
    pub(crate) fn persisted(&mut self, ok: bool) -> Option<(String, u64)> {
        let (room, seq) = self.persists.pop_front()?;
        let r = self.rooms.get_mut(&room).expect("pending rooms exist");
        let pos = r
            .pending
            .iter()
            .position(|p| p.msg.seq == seq)
            .expect("persist requests are pending");
        if ok {
            r.pending[pos].committed = true;
            let msg = r.pending[pos].msg.clone();
            self.store.entry(room.clone()).or_default().push(msg);
        } else {
            let p = r.pending.remove(pos).expect("pending");
            if let Some(cid) = &p.msg.client_id {
                let k = (p.author.clone(), cid.clone());
                if r.client_ids.get(&k) == Some(&seq) {
                    r.client_ids.remove(&k);
                }
            }
            for (sid, id) in p.ackers {
                if self.is_open(sid) {
                    self.emit(
                        sid,
                        Obs::Error {
                            id: Some(id),
                            code: ErrorCode::StorageUnavailable,
                        },
                    );
                }
            }
        }
        self.release(&room);
        self.maybe_finish_shutdown();
        Some((room, seq))
    }

    pub(crate) fn send(&mut self, sid: u64, key: &str, id: u64, send: &LastSend) {
        if self.shutting_down {
            return self.reject(sid, Some(id), Rej::blameless(ErrorCode::ShuttingDown));
        }
        let room = match &send.target {
            Ok(room) => {
                if !self.sessions[&sid].rooms.contains(room) {
                    return self.reject(sid, Some(id), Rej::new(ErrorCode::NotMember));
                }
                room.clone()
            }
            Err(to) => {
                let other = to.to_lowercase();
                if !self.host_auth() && !self.users.contains_key(&other) {
                    return self.reject(sid, Some(id), Rej::new(ErrorCode::UserNotFound));
                }
                dm_room(key, &other)
            }
        };
        let public = send.target.is_ok();
        if public && self.is_muted(&room, key) {
            return self.reject(sid, Some(id), Rej::new(ErrorCode::Forbidden));
        }
        let t = self.t;
        let slow = public
            .then(|| self.moderation.get(&room))
            .flatten()
            .filter(|m| m.slow_mode > 0);
        if let Some(m) = slow {
            let next = m
                .last_post
                .get(key)
                .map(|last| last + u64::from(m.slow_mode) * 1000);
            if next.is_some_and(|n| t < n) && self.role(&room, key) < Role::Moderator {
                return self.reject(sid, Some(id), Rej::blameless(ErrorCode::SlowMode));
            }
        }
        let rate = self.config.send_rate;
        let s = self.sessions.get_mut(&sid).expect("open");
        if !s.sends.take(rate, t) {
            return self.reject(sid, Some(id), Rej::new(ErrorCode::RateLimited));
        }
        if let Some(m) = self.moderation.get_mut(&room).filter(|m| m.slow_mode > 0) {
            m.last_post.insert(key.to_owned(), t);
        }
        self.accepted(sid);
        self.ensure_room(&room);
        self.post(sid, key, id, &room, &send.body, send.client_id.clone());
    }

    pub(crate) fn typing(&mut self, sid: u64, key: &str, room: &str, active: bool) {
        if !self.sessions[&sid].rooms.contains(room) {
            return self.reject(sid, None, Rej::new(ErrorCode::NotMember));
        }
        if !room.starts_with('@') && self.is_muted(room, key) {
            return; // who may not send has nothing to be typing
        }
        let (rate, t) = (self.config.typing_rate, self.t);
        let s = self.sessions.get_mut(&sid).expect("open");
        if !s.typing.take(rate, t) {
            return; // dropped silently
        }
        if !active {
            return self.stop_typing(room, key);
        }
        let until = self.t + ms(self.config.typing_expiry);
        let r = self.rooms.get_mut(room).expect("member rooms exist");
        let was = r.typing.insert(key.to_owned(), until).is_some();
        if !was {
            let obs = Obs::Typing {
                room: room.to_owned(),
                user: self.display(key),
                active: true,
            };
            self.fan_out(room, &obs, None, Some(key));
        }
    }

    pub(crate) fn history(
        &mut self,
        sid: u64,
        id: u64,
        room: &str,
        before: Option<u64>,
        limit: u32,
    ) {
        if !self.sessions[&sid].rooms.contains(room) {
            return self.reject(sid, Some(id), Rej::new(ErrorCode::NotMember));
        }
        self.accepted(sid);
        let durable = self.durable();
        let floor = self.sessions[&sid]
            .user
            .as_deref()
            .and_then(|key| self.dm_floor(key, room));
        let r = &self.rooms[room];
        let limit = limit as usize;
        let end = before.unwrap_or(u64::MAX);
        let idx = r.window.iter().filter(|m| m.seq < end).count();
        let start = idx.saturating_sub(limit);
        let older_elsewhere = r.floor > 0 && end > 1;
        let (seqs, has_more) = if idx - start < limit && older_elsewhere && durable {
            // Not all in memory: the store answers.
            let stored = self.store.get(room).map_or(&[][..], Vec::as_slice);
            let below = stored.iter().filter(|m| m.seq < end).count();
            let from = below.saturating_sub(limit);
            above(&stored[from..below], from > 0, floor)
        } else {
            above(
                &r.window[start..idx],
                start > 0 || (durable && older_elsewhere),
                floor,
            )
        };
        self.emit(
            sid,
            Obs::History {
                id: Some(id),
                room: room.to_owned(),
                seqs,
                has_more,
            },
        );
    }

    /// An anonymous user reads a direct room's messages from when it took its name on.
    fn dm_floor(&self, key: &str, room: &str) -> Option<u64> {
        if self.host_auth() || !room.starts_with('@') {
            return None;
        }
        self.users.get(key).map(|u| u.claimed_at)
    }

    /// The session ends: by the peer (`reason` none) or closed by the server.
    pub(crate) fn drop_session(&mut self, sid: u64, reason: Option<CloseReason>) {
        let Some(session) = self.sessions.remove(&sid) else {
            return;
        };
        if let Some(reason) = reason {
            self.closes.insert(sid, reason);
        }
        let Some(key) = session.user else {
            return;
        };
        let grace = self.grace();
        for room in &session.rooms {
            let r = self.rooms.get_mut(room).expect("member rooms exist");
            r.sessions.remove(&sid);
            let member = r.members.get_mut(&key).expect("member");
            member.sessions.remove(&sid);
            if member.sessions.is_empty() {
                if self.shutting_down {
                    r.members.remove(&key);
                } else {
                    member.linger_until = Some(self.t + grace);
                }
                self.stop_typing(room, &key);
            }
        }
        let user = self.users.get_mut(&key).expect("user");
        user.sessions.remove(&sid);
        if user.sessions.is_empty() {
            user.grace_until = Some(self.t + grace);
        }
    }

    // ---- moderation ----

    fn is_banned(&self, room: &str, key: &str) -> bool {
        self.moderation
            .get(room)
            .is_some_and(|m| self.held(&m.banned, key))
    }

    fn is_muted(&self, room: &str, key: &str) -> bool {
        self.moderation
            .get(room)
            .is_some_and(|m| self.held(&m.muted, key))
    }

    /// Whether a sanction in `held` binds `key` now: one on the name, or one on the
    /// anonymous holding of it the user has now (its token).
    fn held(&self, held: &BTreeMap<String, Option<u64>>, key: &str) -> bool {
        in_force(held.get(key), self.t)
            || self.subject(key) != key && in_force(held.get(&self.subject(key)), self.t)
    }

    /// Whom a sanction on `key` binds: `key` NUL the user's token in anonymous mode
    /// (the engine binds the token's hash: one holding of the name), else `key`. The
    /// NUL sorts before every name character, as the engine orders (user, holder).
    fn subject(&self, key: &str) -> String {
        match self.users.get(key).and_then(|u| u.token.as_deref()) {
            Some(token) => format!("{key}\0{token}"),
            None => key.to_owned(),
        }
    }

    /// A user's role in a public room (no host policy here).
    pub(crate) fn role(&self, room: &str, key: &str) -> Role {
        self.moderation
            .get(room)
            .and_then(|m| m.roles.get(key).copied())
            .unwrap_or_default()
    }

    /// A join created a public room: with host identities its creator owns it, unless
    /// it is a default room or someone already holds a role there.
    fn creator_owns(&mut self, key: &str, room: &str) {
        if !self.host_auth() || self.config.default_rooms.iter().any(|r| r == room) {
            return;
        }
        let m = self.moderation.entry(room.to_owned()).or_default();
        if m.roles.is_empty() {
            m.roles.insert(key.to_owned(), Role::Owner);
        }
    }

    /// A room event to the room's sessions, if the room exists.
    fn tell_room(&mut self, room: &str, obs: &Obs) {
        if self.rooms.contains_key(room) {
            self.fan_out(room, obs, None, None);
        }
    }

    /// The host gives a role.
    pub(crate) fn give_role(&mut self, room: &str, user: &str, role: Role) {
        let key = user.to_lowercase();
        self.tell_room(
            room,
            &Obs::Moderated {
                room: room.to_owned(),
                user: self.display(&key),
                action: ModAction::SetRole,
                reason: None,
                minutes: None,
                role: Some(role),
                by: None,
            },
        );
        let m = self.moderation.entry(room.to_owned()).or_default();
        if role == Role::Member {
            m.roles.remove(&key);
        } else {
            m.roles.insert(key, role);
        }
    }

    /// A moderator's command from `sid` (user `key`) about `user` in `room`.
    pub(crate) fn moderate(
        &mut self,
        sid: u64,
        key: &str,
        id: u64,
        room: &str,
        user: &str,
        action: ModOp,
    ) {
        let target = user.to_lowercase();
        let mine = self.role(room, key);
        let needs = match action {
            ModOp::SetRole(_) => Role::Owner,
            _ => Role::Moderator,
        };
        let about_user = !matches!(action, ModOp::Topic(_) | ModOp::SlowMode(_));
        if mine < needs || (about_user && self.role(room, &target) >= mine) {
            return self.reject(sid, Some(id), Rej::new(ErrorCode::Forbidden));
        }
        self.accepted(sid);
        let by = Some(self.display(key));
        let (kind, shown) = match action {
            ModOp::Kick => (ModAction::Kick, None),
            ModOp::Ban(m) => (ModAction::Ban, m),
            ModOp::Unban => (ModAction::Unban, None),
            ModOp::Mute(m) => (ModAction::Mute, m),
            ModOp::Unmute => (ModAction::Unmute, None),
            ModOp::SetRole(_) => (ModAction::SetRole, None),
            ModOp::Topic(_) => (ModAction::Topic, None),
            ModOp::SlowMode(_) => (ModAction::SlowMode, None),
        };
        let t = self.t;
        let subject = self.subject(&target);
        let m = self.moderation.entry(room.to_owned()).or_default();
        match action {
            ModOp::Topic(topic) => {
                let topic = topic.map(|n| format!("t{n}")).unwrap_or_default();
                m.topic = (!topic.is_empty()).then(|| topic.clone());
                let obs = Obs::Topic {
                    room: room.to_owned(),
                    topic,
                    by,
                };
                self.tell_room(room, &obs);
            }
            ModOp::SlowMode(seconds) => {
                m.slow_mode = seconds;
                m.last_post.clear();
                let obs = Obs::SlowMode {
                    room: room.to_owned(),
                    seconds,
                    by,
                };
                self.tell_room(room, &obs);
            }
            _ => {
                let until = |m: Option<u64>| m.map(|m| t + m * 60_000);
                match action {
                    ModOp::Ban(minutes) => {
                        m.banned.insert(subject.clone(), until(minutes));
                    }
                    ModOp::Unban => {
                        m.banned.retain(|s, _| user_of(s) != target);
                    }
                    ModOp::Mute(minutes) => {
                        m.muted.insert(subject.clone(), until(minutes));
                    }
                    ModOp::Unmute => {
                        m.muted.retain(|s, _| user_of(s) != target);
                    }
                    ModOp::SetRole(Role::Member) => {
                        m.roles.remove(&target);
                    }
                    ModOp::SetRole(role) => {
                        m.roles.insert(target.clone(), role);
                    }
                    _ => {}
                }
                let role = match action {
                    ModOp::SetRole(role) => Some(role),
                    _ => None,
                };
                let obs = Obs::Moderated {
                    room: room.to_owned(),
                    user: self.display(&target),
                    action: kind,
                    reason: None,
                    minutes: shown,
                    role,
                    by,
                };
                self.tell_room(room, &obs);
                if matches!(action, ModOp::Kick | ModOp::Ban(_)) {
                    self.remove_user(room, &target);
                }
                if matches!(action, ModOp::Unban | ModOp::Unmute) {
                    self.tell_outside(room, &target, &obs);
                }
            }
        }
        let done = Obs::Done {
            id: Some(id),
            room: room.to_owned(),
            action: kind,
            user: about_user.then(|| self.display(&target)),
        };
        self.emit(sid, done);
    }

    /// A kick or ban takes every session of `key` out of the room (`left`), and the user
    /// with them, lingering or not (announced).
    fn remove_user(&mut self, room: &str, key: &str) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let Some(member) = r.members.remove(key) else {
            return;
        };
        for sid in &member.sessions {
            r.sessions.remove(sid);
        }
        for sid in member.sessions {
            if let Some(s) = self.sessions.get_mut(&sid) {
                s.rooms.remove(room);
            }
            self.emit(
                sid,
                Obs::Left {
                    id: None,
                    room: room.to_owned(),
                },
            );
        }
        self.stop_typing(room, key);
        self.announce_left(room, key);
    }

    /// A timed ban (`ban`) or mute ran out: told to the room and the user's sessions
    /// outside it.
    fn sanction_ended(&mut self, room: &str, subject: &str, ban: bool) {
        let m = self.moderation.get_mut(room).expect("the sanction's room");
        if ban {
            m.banned.remove(subject);
        } else {
            m.muted.remove(subject);
        }
        let key = user_of(subject);
        let obs = Obs::Moderated {
            room: room.to_owned(),
            user: self.display(key),
            action: if ban {
                ModAction::Unban
            } else {
                ModAction::Unmute
            },
            reason: Some(crate::EXPIRED_REASON.to_owned()),
            minutes: None,
            role: None,
            by: None,
        };
        self.tell_room(room, &obs);
        // Only the holding the sanction bound: a later holder of the name is not told.
        if subject == key || self.subject(key) == subject {
            self.tell_outside(room, key, &obs);
        }
    }

    /// `obs` to the sessions of `key` outside `room` too.
    fn tell_outside(&mut self, room: &str, key: &str, obs: &Obs) {
        let outside: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.user.as_deref() == Some(key) && !s.rooms.contains(room))
            .map(|(sid, _)| *sid)
            .collect();
        for sid in outside {
            self.emit(sid, obs.clone());
        }
    }

    // ---- shutdown and restart ----

    pub(crate) fn shutdown(&mut self) {
        self.shutting_down = true;
        self.maybe_finish_shutdown();
    }

    fn maybe_finish_shutdown(&mut self) {
        let pending = self.rooms.values().any(|r| !r.pending.is_empty());
        if !self.shutting_down || self.drained_now || pending {
            return;
        }
        let retry_after_ms = ms(self.config.shutdown_retry_after);
        let sids: Vec<u64> = self.sessions.keys().copied().collect();
        for sid in sids {
            self.emit(sid, Obs::Goodbye { retry_after_ms });
            self.drop_session(sid, Some(CloseReason::Shutdown));
        }
        self.drained_now = true;
        self.drained += 1;
    }

    /// A new server with `config`, restored from the store (unless `wipe`). Unanswered
    /// persist requests were written first when `flushed`. Tokens issued stay known.
    pub(crate) fn restart(&mut self, config: Config, flushed: bool, wipe: bool) {
        for (room, seq) in std::mem::take(&mut self.persists) {
            let msg = self.rooms[&room]
                .pending
                .iter()
                .find(|p| p.msg.seq == seq)
                .map(|p| p.msg.clone())
                .expect("pending");
            if flushed {
                self.store.entry(room).or_default().push(msg);
            }
        }
        if wipe {
            self.store.clear();
            self.moderation.clear();
        }
        for m in self.moderation.values_mut() {
            m.last_post.clear();
            // Sanctions bound to an anonymous token are not stored: tokens do not
            // outlive the process.
            m.banned.retain(|s, _| !s.contains('\0'));
            m.muted.retain(|s, _| !s.contains('\0'));
        }
        self.config = config;
        self.sessions.clear();
        self.users.clear();
        self.rooms.clear();
        self.shutting_down = false;
        self.drained_now = false;
        let window = self.window();
        let stored: Vec<(String, Vec<MMsg>)> = self
            .store
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, msgs) in stored {
            let Some(last) = msgs.last().map(|m| m.seq) else {
                continue;
            };
            self.ensure_room(&name);
            let start = msgs.len().saturating_sub(window);
            let r = self.rooms.get_mut(&name).expect("ensured");
            r.stamped = last;
            r.delivered = last;
            r.floor = if start == 0 { 0 } else { msgs[start].seq - 1 };
            r.window = msgs[start..].to_vec();
            for m in &r.window {
                if let Some(cid) = &m.client_id {
                    r.client_ids
                        .insert((m.user.to_lowercase(), cid.clone()), m.seq);
                }
            }
        }
    }

    /// Called before each step.
    pub(crate) fn begin_step(&mut self) {
        self.out.clear();
        self.closes.clear();
        self.events.clear();
    }

    // ---- time ----

    /// The earliest pending deadline: a member's linger, a user's grace, a typing expiry.
    fn next_deadline(&self) -> Option<u64> {
        let lingers = self
            .rooms
            .values()
            .flat_map(|r| r.members.values().filter_map(|m| m.linger_until));
        let graces = self.users.values().filter_map(|u| u.grace_until);
        let typing = self.rooms.values().flat_map(|r| r.typing.values().copied());
        let sanctions = self
            .moderation
            .values()
            .flat_map(|m| m.banned.values().chain(m.muted.values()).flatten().copied());
        lingers.chain(graces).chain(typing).chain(sanctions).min()
    }

    /// Lets time pass: at each deadline, lingering members leave (announced), users in
    /// grace are forgotten (their name is free), typing expires — in that order.
    pub(crate) fn advance(&mut self, ms: u64) {
        let target = self.t + ms;
        while let Some(d) = self.next_deadline().filter(|d| *d <= target) {
            self.t = d;
            let lingering: Vec<(String, String)> = self
                .rooms
                .iter()
                .flat_map(|(name, r)| {
                    r.members
                        .iter()
                        .filter(|(_, m)| m.linger_until == Some(d))
                        .map(|(k, _)| (name.clone(), k.clone()))
                        .collect::<Vec<_>>()
                })
                .collect();
            for (room, key) in lingering {
                self.rooms
                    .get_mut(&room)
                    .expect("exists")
                    .members
                    .remove(&key);
                self.announce_left(&room, &key);
            }
            let expired: Vec<String> = self
                .users
                .iter()
                .filter(|(_, u)| u.grace_until == Some(d))
                .map(|(k, _)| k.clone())
                .collect();
            for key in expired {
                self.users.remove(&key);
            }
            let typing: Vec<(String, String)> = self
                .rooms
                .iter()
                .flat_map(|(name, r)| {
                    r.typing
                        .iter()
                        .filter(|(_, until)| **until == d)
                        .map(|(k, _)| (name.clone(), k.clone()))
                        .collect::<Vec<_>>()
                })
                .collect();
            for (room, key) in typing {
                self.stop_typing(&room, &key);
            }
            let ending: Vec<(String, String, bool)> = self
                .moderation
                .iter()
                .flat_map(|(room, m)| {
                    let bans = m.banned.iter().map(|(k, u)| (k, u, true));
                    let mutes = m.muted.iter().map(|(k, u)| (k, u, false));
                    bans.chain(mutes)
                        .filter(|(_, u, _)| **u == Some(d))
                        .map(|(k, _, ban)| (room.clone(), k.clone(), ban))
                        .collect::<Vec<_>>()
                })
                .collect();
            // In the server's order: by room, then user, a ban before a mute.
            let mut ending = ending;
            ending.sort_by(|a, b| (&a.0, &a.1, !a.2).cmp(&(&b.0, &b.1, !b.2)));
            for (room, key, ban) in ending {
                self.sanction_ended(&room, &key, ban);
            }
        }
        self.t = target;
    }
}

/// A history page's seqs without the messages from before `floor`: if any were cut,
/// nothing older is left to page to.
fn above(page: &[MMsg], has_more: bool, floor: Option<u64>) -> (Vec<u64>, bool) {
    let kept: Vec<u64> = page
        .iter()
        .filter(|m| floor.is_none_or(|f| m.at >= f))
        .map(|m| m.seq)
        .collect();
    let cut = kept.len() < page.len();
    (kept, has_more && !cut)
}

// ---- changes to messages: the final view every client should reach ----

/// One message as every client should end up showing it: its text after the last
/// edit, whether it was edited or deleted, its reactions (each emoji in first-reaction
/// order, with who reacted, in order), and the seq it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageView {
    /// The message's seq.
    pub seq: u64,
    /// Its author.
    pub user: String,
    /// Its text now (empty once deleted).
    pub body: String,
    /// Edited at least once (and not deleted since).
    pub edited: bool,
    /// Deleted: a tombstone.
    pub deleted: bool,
    /// Each emoji with who reacted with it.
    pub reactions: Vec<(String, Vec<String>)>,
    /// The seq it answers.
    pub reply_to: Option<u64>,
}

impl MessageView {
    /// A client's (or the server's) message as a view.
    #[must_use]
    pub fn of(m: &crate::protocol::Message) -> MessageView {
        MessageView {
            seq: m.seq.0,
            user: m.user.to_string(),
            body: m.body.to_string(),
            edited: m.edited_at.is_some(),
            deleted: m.deleted,
            reactions: m
                .reactions
                .iter()
                .map(|r| {
                    let users = r.users.iter().map(ToString::to_string).collect();
                    (r.emoji.clone(), users)
                })
                .collect(),
            reply_to: m.reply_to.map(|s| s.0),
        }
    }
}

/// The rules of docs/LIFECYCLE.md for one room's messages and the changes to them,
/// written from the text, not from the engine: which post is accepted (and with which
/// seq) or refused (and with which error code), and the view of every message after
/// each. A resend of a client id the room already took is acked as a duplicate of the
/// original and changes nothing.
#[derive(Debug, Clone, Default)]
pub struct ChangeModel {
    /// Every entry by seq: `Some` for a message, `None` for a change entry.
    entries: BTreeMap<u64, Option<MessageView>>,
    /// (user key, client id) → the seq it was posted as.
    client_ids: BTreeMap<(String, String), u64>,
    /// `Config::max_reactions_per_message`.
    max_reactions: usize,
}

/// A post to a room, as the model takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Post {
    /// `send`, maybe replying.
    Send {
        /// The text.
        body: String,
        /// The seq it answers.
        reply_to: Option<u64>,
    },
    /// `edit`.
    Edit {
        /// The message.
        target: u64,
        /// The new text.
        body: String,
    },
    /// `delete`.
    Delete {
        /// The message.
        target: u64,
    },
    /// `react`.
    React {
        /// The message.
        target: u64,
        /// The emoji.
        emoji: String,
        /// Added or taken back.
        on: bool,
    },
}

impl ChangeModel {
    /// An empty room whose messages take at most `max_reactions` distinct emoji.
    #[must_use]
    pub fn new(max_reactions: usize) -> ChangeModel {
        ChangeModel {
            max_reactions,
            ..ChangeModel::default()
        }
    }

    /// The room's last seq.
    #[must_use]
    pub fn last_seq(&self) -> u64 {
        self.entries.keys().next_back().copied().unwrap_or(0)
    }

    /// Every message of the room as it is now, by seq.
    #[must_use]
    pub fn view(&self) -> Vec<MessageView> {
        self.entries.values().flatten().cloned().collect()
    }

    /// The message `seq` names, or the error a change (or a reply) naming it gets.
    fn message_at(&self, seq: u64) -> Result<&MessageView, ErrorCode> {
        match self.entries.get(&seq) {
            Some(Some(m)) if m.deleted => Err(ErrorCode::Gone),
            Some(Some(m)) => Ok(m),
            _ => Err(ErrorCode::NoSuchMessage),
        }
    }

    /// `user` posts `post` with `client_id`: the seq it was given and whether it was a
    /// duplicate, or the error code it was refused with.
    ///
    /// # Errors
    /// The code of the rule the post breaks.
    pub fn post(
        &mut self,
        user: &str,
        client_id: &str,
        post: &Post,
    ) -> Result<(u64, bool), ErrorCode> {
        let key = user.to_lowercase();
        if let Some(seq) = self.client_ids.get(&(key.clone(), client_id.to_owned())) {
            return Ok((*seq, true));
        }
        match post {
            Post::Send { reply_to, .. } => {
                if let Some(r) = reply_to {
                    self.message_at(*r)?;
                }
            }
            Post::Edit { target, .. } | Post::Delete { target } => {
                let m = self.message_at(*target)?;
                if m.user.to_lowercase() != key {
                    return Err(ErrorCode::NotAuthor);
                }
            }
            Post::React { target, emoji, on } => {
                let m = self.message_at(*target)?;
                let known = m.reactions.iter().any(|(e, _)| e == emoji);
                if *on && !known && m.reactions.len() >= self.max_reactions {
                    return Err(ErrorCode::LimitReached);
                }
            }
        }
        let seq = self.last_seq() + 1;
        self.client_ids
            .insert((key.clone(), client_id.to_owned()), seq);
        let target = match post {
            Post::Send { body, reply_to } => {
                let m = MessageView {
                    seq,
                    user: user.to_owned(),
                    body: body.clone(),
                    edited: false,
                    deleted: false,
                    reactions: Vec::new(),
                    reply_to: *reply_to,
                };
                self.entries.insert(seq, Some(m));
                return Ok((seq, false));
            }
            Post::Edit { target, .. } | Post::Delete { target } | Post::React { target, .. } => {
                *target
            }
        };
        self.entries.insert(seq, None);
        let m = self
            .entries
            .get_mut(&target)
            .and_then(Option::as_mut)
            .expect("checked above");
        match post {
            Post::Edit { body, .. } => {
                m.body.clone_from(body);
                m.edited = true;
            }
            Post::Delete { .. } => {
                m.deleted = true;
                m.body.clear();
                m.edited = false;
                m.reactions.clear();
            }
            Post::React { emoji, on, .. } => {
                let at = m.reactions.iter().position(|(e, _)| e == emoji);
                match (on, at) {
                    (true, Some(i)) => {
                        let users = &mut m.reactions[i].1;
                        if !users.iter().any(|u| u.to_lowercase() == key) {
                            users.push(user.to_owned());
                        }
                    }
                    (true, None) => m.reactions.push((emoji.clone(), vec![user.to_owned()])),
                    (false, Some(i)) => {
                        m.reactions[i].1.retain(|u| u.to_lowercase() != key);
                        if m.reactions[i].1.is_empty() {
                            m.reactions.remove(i);
                        }
                    }
                    (false, None) => {}
                }
            }
            Post::Send { .. } => unreachable!("returned above"),
        }
        Ok((seq, false))
    }
}
