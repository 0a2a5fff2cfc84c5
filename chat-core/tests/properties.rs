//! Property tests: random interleavings of hello, join, leave, send, resend, direct
//! messages, typing, history, resume, disconnect, reconnect and time jumps over 4 users,
//! 8 connection slots and 3 public rooms (plus direct rooms), checked step by step
//! against a small reference model of the room rules listed below (their reasons are in
//! docs/ARCHITECTURE.md, "Messages, seq and durability" and "Presence").
//!
//! After every step:
//! - every session received exactly the frames the model predicts, in order: so every
//!   member session gets every room message exactly once and in seq order, non-members
//!   get none, resume gives exactly the missed suffix or an explicit gap, resends are
//!   acked with the original seq and never posted twice, user_joined/user_left come once
//!   per user transition however many tabs;
//! - nothing was ever sent to a closed session;
//! - `members`, `session_rooms`, `last_seq` and `session_count` equal the model;
//! - the host's UserJoined/UserLeft events equal the model's transitions;
//! - `poll_timeout` after `handle_timeout(now)` is later than `now` (checked in `Sim`).
//!
//! Across the whole run, independently of the model: per session and room, live message
//! seqs strictly increase (no duplicate, no reordering). Finally the same operations run
//! again on a fresh server give byte-identical outputs.
//!
//! Flood control is not modelled: the config sets the send, frame and typing rates and
//! the strike limit out of reach (limits.rs tests them). The history window is small
//! (8) so that eviction, gaps and forgotten client ids happen often.
//!
//! Cases: 64 by default; `PROPTEST_CASES=10000 cargo test -p chat-core --test properties`
//! for a longer run. Failing seeds are kept in `chat-core/proptest-regressions/`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chat_core::protocol::{ErrorCode, ServerFrame};
use chat_core::{Config, Event, Rate, RoomName, SessionId};
use common::{Sim, base_now};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::json;

const USERS: [&str; 4] = ["ann", "bob", "cy", "dee"];
const ROOMS: [&str; 3] = ["general", "alpha", "beta"];
const SLOTS: usize = 8;
const WINDOW: usize = 8;
const ON_JOIN: usize = 5;
const GRACE_MS: u64 = 5_000;
const TYPING_MS: u64 = 6_000;

fn config() -> Config {
    let lots = Rate {
        burst: 1_000_000,
        per_second: 1_000_000,
    };
    Config {
        send_rate: lots,
        frame_rate: lots,
        typing_rate: lots,
        max_strikes: u32::MAX,
        history_window: WINDOW,
        history_on_join: ON_JOIN,
        presence_grace: Duration::from_millis(GRACE_MS),
        typing_expiry: Duration::from_millis(TYPING_MS),
        ..Config::default()
    }
}

// ---- operations ----

#[derive(Debug, Clone, Copy)]
enum TokenChoice {
    None,
    Right,
    Wrong,
}

#[derive(Debug, Clone)]
enum RoomsChoice {
    Default,
    Nothing,
    One(usize),
    /// A reconnecting tab resumes its rooms from the last seq it saw.
    Resume(Vec<(String, Option<u64>)>),
}

/// A resume cursor relative to the room's current last seq: `Back(k)` is `last - k`,
/// `Ahead` is a seq the server never issued.
#[derive(Debug, Clone, Copy)]
enum Since {
    Back(u64),
    Ahead,
}

/// Which room an op is about: mostly one the session is in (`Mine(i)`, the i-th modulo
/// its rooms), sometimes any public room (`Any(i)`), to exercise the refusals.
#[derive(Debug, Clone, Copy)]
enum Pick {
    Mine(usize),
    Any(usize),
}

/// Ops name a slot; all but `Hello`, `Disconnect` and `Stale` act on the first open
/// session at or after it (cyclically), so that most ops do something.
#[derive(Debug, Clone)]
enum Op {
    Hello {
        slot: usize,
        user: usize,
        upper: bool,
        token: TokenChoice,
        rooms: RoomsChoice,
    },
    Join {
        slot: usize,
        room: usize,
        since: Option<Since>,
    },
    JoinDm {
        slot: usize,
        peer: usize,
        since: Option<Since>,
    },
    Leave {
        slot: usize,
        room: Pick,
    },
    Send {
        slot: usize,
        room: Pick,
        client_id: Option<u8>,
    },
    Dm {
        slot: usize,
        peer: usize,
        client_id: Option<u8>,
    },
    /// The slot's previous send, byte for byte (a retry after a lost ack).
    Resend {
        slot: usize,
    },
    Typing {
        slot: usize,
        room: Pick,
        active: bool,
    },
    History {
        slot: usize,
        room: Pick,
        before: Option<u64>,
        limit: u32,
    },
    Disconnect {
        slot: usize,
    },
    /// A page refresh: the connection drops and the same user reconnects at once with
    /// its token, resuming every room it was in from the last seq this tab saw.
    Refresh {
        slot: usize,
    },
    /// A frame from a connection that is already closed: it must be ignored.
    Stale {
        slot: usize,
    },
    Advance {
        ms: u64,
    },
}

fn since() -> impl Strategy<Value = Option<Since>> {
    prop_oneof![
        2 => Just(None),
        4 => (0u64..14).prop_map(|k| Some(Since::Back(k))),
        1 => Just(Some(Since::Ahead)),
    ]
}

fn pick() -> impl Strategy<Value = Pick> {
    prop_oneof![
        5 => (0..ROOMS.len()).prop_map(Pick::Mine),
        1 => (0..ROOMS.len()).prop_map(Pick::Any),
    ]
}

fn hello() -> impl Strategy<Value = Op> {
    let token = prop_oneof![
        1 => Just(TokenChoice::None),
        3 => Just(TokenChoice::Right),
        1 => Just(TokenChoice::Wrong)
    ];
    let rooms = prop_oneof![
        4 => Just(RoomsChoice::Default),
        1 => Just(RoomsChoice::Nothing),
        2 => (0..ROOMS.len()).prop_map(RoomsChoice::One),
    ];
    (0..SLOTS, 0..USERS.len(), any::<bool>(), token, rooms).prop_map(
        |(slot, user, upper, token, rooms)| Op::Hello {
            slot,
            user,
            upper,
            token,
            rooms,
        },
    )
}

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..SLOTS;
    let user = 0..USERS.len();
    let room = 0..ROOMS.len();
    let cid = prop_oneof![Just(None), (0u8..3).prop_map(Some)];
    let ms = prop::sample::select(vec![
        1u64, 100, 999, 2_500, 4_999, 5_000, 5_001, 6_000, 6_001, 12_000,
    ]);
    prop_oneof![
        4 => hello(),
        3 => (slot.clone(), room, since()).prop_map(|(slot, room, since)| Op::Join { slot, room, since }),
        1 => (slot.clone(), user.clone(), since()).prop_map(|(slot, peer, since)| Op::JoinDm { slot, peer, since }),
        2 => (slot.clone(), pick()).prop_map(|(slot, room)| Op::Leave { slot, room }),
        10 => (slot.clone(), pick(), cid.clone()).prop_map(|(slot, room, client_id)| Op::Send { slot, room, client_id }),
        2 => (slot.clone(), user, cid).prop_map(|(slot, peer, client_id)| Op::Dm { slot, peer, client_id }),
        2 => slot.clone().prop_map(|slot| Op::Resend { slot }),
        3 => (slot.clone(), pick(), any::<bool>()).prop_map(|(slot, room, active)| Op::Typing { slot, room, active }),
        2 => (slot.clone(), pick(), prop::option::of(0u64..12), 1u32..10).prop_map(
            |(slot, room, before, limit)| Op::History { slot, room, before, limit }
        ),
        2 => slot.clone().prop_map(|slot| Op::Disconnect { slot }),
        2 => slot.clone().prop_map(|slot| Op::Refresh { slot }),
        1 => slot.prop_map(|slot| Op::Stale { slot }),
        4 => ms.prop_map(|ms| Op::Advance { ms }),
    ]
}

/// A few sessions say hello first, then anything goes.
fn ops() -> impl Strategy<Value = Vec<Op>> {
    (
        prop::collection::vec(hello(), 4..=SLOTS),
        prop::collection::vec(op(), 1..150),
    )
        .prop_map(|(mut first, rest)| {
            first.extend(rest);
            first
        })
}

// ---- what a session observes, in a comparable form ----

#[derive(Debug, Clone, PartialEq, Eq)]
enum Obs {
    Welcome {
        id: Option<u64>,
        user: String,
    },
    Joined {
        id: Option<u64>,
        room: String,
        members: Vec<String>,
        messages: Vec<(u64, String, String)>,
        gap: bool,
        last_seq: u64,
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
    Other(String),
}

fn observe(f: &ServerFrame) -> Obs {
    match f {
        ServerFrame::Welcome { id, user, .. } => Obs::Welcome {
            id: *id,
            user: user.to_string(),
        },
        ServerFrame::Joined {
            id,
            room,
            members,
            messages,
            gap,
            last_seq,
        } => Obs::Joined {
            id: *id,
            room: room.to_string(),
            members: members.iter().map(ToString::to_string).collect(),
            messages: messages
                .iter()
                .map(|m| (m.seq.0, m.user.to_string(), m.body.to_string()))
                .collect(),
            gap: *gap,
            last_seq: last_seq.0,
        },
        ServerFrame::Left { id, room } => Obs::Left {
            id: *id,
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
            id: *id,
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
        } => Obs::History {
            id: *id,
            room: room.to_string(),
            seqs: messages.iter().map(|m| m.seq.0).collect(),
            has_more: *has_more,
        },
        ServerFrame::Error { id, code, .. } => Obs::Error {
            id: *id,
            code: *code,
        },
        other => Obs::Other(common::kind(other).to_owned()),
    }
}

// ---- the reference model ----

#[derive(Debug, Clone)]
struct MMsg {
    seq: u64,
    user: String,
    body: String,
    client_id: Option<String>,
}

#[derive(Debug, Default)]
struct MMember {
    sessions: BTreeSet<u64>,
    /// Set while the user's last session in the room is gone but the grace runs.
    linger_until: Option<u64>,
}

#[derive(Debug, Default)]
struct MRoom {
    /// The two user keys of a direct room.
    direct: Option<(String, String)>,
    members: BTreeMap<String, MMember>,
    sessions: BTreeSet<u64>,
    /// The window: the newest `WINDOW` messages.
    window: Vec<MMsg>,
    last_seq: u64,
    /// Seqs up to here are no longer in the window.
    floor: u64,
    client_ids: BTreeMap<(String, String), u64>,
    typing: BTreeMap<String, u64>,
}

#[derive(Debug)]
struct MUser {
    name: String,
    sessions: BTreeSet<u64>,
    token: Option<String>,
    grace_until: Option<u64>,
}

#[derive(Debug, Default)]
struct MSession {
    user: Option<String>,
    rooms: BTreeSet<String>,
}

#[derive(Debug, Clone)]
struct LastSend {
    target: Result<String, String>, // Ok(room) or Err(to)
    body: String,
    client_id: Option<String>,
}

#[derive(Debug, Default)]
struct Model {
    t: u64,
    sessions: BTreeMap<u64, MSession>,
    users: BTreeMap<String, MUser>,
    rooms: BTreeMap<String, MRoom>,
    /// Expected frames per session for the current step.
    out: BTreeMap<u64, Vec<Obs>>,
    /// Expected presence events for the current step: (joined?, room, user).
    events: Vec<(bool, String, String)>,
    /// Every token ever issued per user key.
    tokens: BTreeMap<String, Vec<String>>,
}

fn dm_room(a: &str, b: &str) -> String {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    format!("@{x},{y}")
}

impl Model {
    fn emit(&mut self, sid: u64, obs: Obs) {
        self.out.entry(sid).or_default().push(obs);
    }

    fn display(&self, key: &str) -> String {
        self.users
            .get(key)
            .map_or_else(|| key.to_owned(), |u| u.name.clone())
    }

    fn member_names(&self, room: &str) -> Vec<String> {
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

    fn fan_out(
        &mut self,
        room: &str,
        obs: &Obs,
        except_session: Option<u64>,
        except_user: Option<&str>,
    ) {
        for sid in self.recipients(room, except_session, except_user) {
            self.emit(sid, obs.clone());
        }
    }

    fn user_of(&self, sid: u64) -> Option<String> {
        self.sessions.get(&sid).and_then(|s| s.user.clone())
    }

    fn error(&mut self, sid: u64, id: Option<u64>, code: ErrorCode) {
        self.emit(sid, Obs::Error { id, code });
    }

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

    fn resolve_since(&self, room: &str, since: Option<Since>) -> Option<u64> {
        let last = self.rooms.get(room).map_or(0, |r| r.last_seq);
        since.map(|s| match s {
            Since::Back(k) => last.saturating_sub(k),
            Since::Ahead => last + 3,
        })
    }

    fn hello(&mut self, sid: u64, id: u64, name: &str, token: Option<String>, rooms: &RoomsChoice) {
        let key = name.to_lowercase();
        if let Some(user) = self.users.get(&key) {
            let proven = token.is_some() && token == user.token;
            if !proven {
                return self.error(sid, Some(id), ErrorCode::NameTaken);
            }
        }
        let user = self.users.entry(key.clone()).or_insert_with(|| MUser {
            name: name.to_owned(),
            sessions: BTreeSet::new(),
            token: None, // learned from the welcome: tokens are the server's secret
            grace_until: None,
        });
        user.sessions.insert(sid);
        user.grace_until = None;
        let display = user.name.clone();
        self.sessions.get_mut(&sid).expect("open").user = Some(key.clone());
        self.emit(
            sid,
            Obs::Welcome {
                id: Some(id),
                user: display,
            },
        );
        let specs: Vec<(String, Option<u64>)> = match rooms {
            RoomsChoice::Default => vec![("general".to_owned(), None)],
            RoomsChoice::Nothing => vec![],
            RoomsChoice::One(r) => vec![(ROOMS[*r].to_owned(), None)],
            RoomsChoice::Resume(list) => list.clone(),
        };
        for (room, since) in specs {
            self.join(sid, &key, None, &room, since);
        }
    }

    fn join(&mut self, sid: u64, key: &str, id: Option<u64>, room: &str, since: Option<u64>) {
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
                },
            );
        }
        self.ensure_room(room);
        let public = self.rooms[room].direct.is_none();
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
        let r = &self.rooms[room];
        let latest = |r: &MRoom| r.window[r.window.len().saturating_sub(ON_JOIN)..].to_vec();
        let (messages, gap) = match since {
            None => (latest(r), false),
            Some(s) if s > r.last_seq || s < r.floor => (latest(r), true),
            Some(s) => (
                r.window.iter().filter(|m| m.seq > s).cloned().collect(),
                false,
            ),
        };
        let joined = Obs::Joined {
            id,
            room: room.to_owned(),
            members: self.member_names(room),
            messages: messages
                .into_iter()
                .map(|m| (m.seq, m.user, m.body))
                .collect(),
            gap,
            last_seq: r.last_seq,
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

    fn announce_left(&mut self, room: &str, key: &str) {
        let user = self.display(key);
        let obs = Obs::UserLeft {
            room: room.to_owned(),
            user: user.clone(),
        };
        self.fan_out(room, &obs, None, None);
        self.events.push((false, room.to_owned(), user));
        let r = &self.rooms[room];
        if r.members.is_empty() && r.window.is_empty() && r.last_seq == 0 {
            self.rooms.remove(room);
        }
    }

    fn leave(&mut self, sid: u64, key: &str, id: u64, room: &str) {
        if !self.sessions[&sid].rooms.contains(room) {
            return self.error(sid, Some(id), ErrorCode::NotMember);
        }
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

    #[allow(clippy::too_many_arguments)]
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
        let r = self.rooms.get_mut(room).expect("ensured");
        if let Some(cid) = &client_id
            && let Some(seq) = r.client_ids.get(&(key.to_owned(), cid.clone()))
        {
            let seq = *seq;
            assert!(
                r.window.iter().any(|m| m.seq == seq),
                "model: remembered client ids are in the window"
            );
            return self.emit(
                sid,
                Obs::Ack {
                    id: Some(id),
                    room: room.to_owned(),
                    seq,
                    client_id: client_id.clone(),
                    duplicate: true,
                },
            );
        }
        r.last_seq += 1;
        let seq = r.last_seq;
        if let Some(cid) = &client_id {
            r.client_ids.insert((key.to_owned(), cid.clone()), seq);
        }
        r.window.push(MMsg {
            seq,
            user: author.clone(),
            body: body.to_owned(),
            client_id: client_id.clone(),
        });
        while r.window.len() > WINDOW {
            let old = r.window.remove(0);
            r.floor = old.seq;
            if let Some(cid) = old.client_id {
                let k = (old.user.to_lowercase(), cid);
                if r.client_ids.get(&k) == Some(&old.seq) {
                    r.client_ids.remove(&k);
                }
            }
        }
        r.typing.remove(key);
        let msg = Obs::Msg {
            room: room.to_owned(),
            seq,
            user: author,
            body: body.to_owned(),
            client_id: client_id.clone(),
        };
        self.fan_out(room, &msg, None, None);
        self.emit(
            sid,
            Obs::Ack {
                id: Some(id),
                room: room.to_owned(),
                seq,
                client_id,
                duplicate: false,
            },
        );
    }

    fn send(&mut self, sid: u64, key: &str, id: u64, send: &LastSend) {
        let room = match &send.target {
            Ok(room) => {
                if !self.sessions[&sid].rooms.contains(room) {
                    return self.error(sid, Some(id), ErrorCode::NotMember);
                }
                room.clone()
            }
            Err(to) => {
                let other = to.to_lowercase();
                if !self.users.contains_key(&other) {
                    return self.error(sid, Some(id), ErrorCode::UserNotFound);
                }
                let room = dm_room(key, &other);
                self.ensure_room(&room);
                room
            }
        };
        self.post(sid, key, id, &room, &send.body, send.client_id.clone());
    }

    fn typing(&mut self, sid: u64, key: &str, room: &str, active: bool) {
        if !self.sessions[&sid].rooms.contains(room) {
            return self.error(sid, None, ErrorCode::NotMember);
        }
        if !active {
            return self.stop_typing(room, key);
        }
        let until = self.t + TYPING_MS;
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

    fn history(&mut self, sid: u64, id: u64, room: &str, before: Option<u64>, limit: u32) {
        if !self.sessions[&sid].rooms.contains(room) {
            return self.error(sid, Some(id), ErrorCode::NotMember);
        }
        let r = &self.rooms[room];
        let end = before.unwrap_or(u64::MAX);
        let idx = r.window.iter().filter(|m| m.seq < end).count();
        let start = idx.saturating_sub(limit as usize);
        let seqs = r.window[start..idx].iter().map(|m| m.seq).collect();
        self.emit(
            sid,
            Obs::History {
                id: Some(id),
                room: room.to_owned(),
                seqs,
                has_more: start > 0,
            },
        );
    }

    fn disconnect(&mut self, sid: u64) {
        let session = self.sessions.remove(&sid).expect("open");
        let Some(key) = session.user else {
            return;
        };
        for room in &session.rooms {
            let r = self.rooms.get_mut(room).expect("member rooms exist");
            r.sessions.remove(&sid);
            let member = r.members.get_mut(&key).expect("member");
            member.sessions.remove(&sid);
            if member.sessions.is_empty() {
                member.linger_until = Some(self.t + GRACE_MS);
                self.stop_typing(room, &key);
            }
        }
        let user = self.users.get_mut(&key).expect("user");
        user.sessions.remove(&sid);
        if user.sessions.is_empty() {
            user.grace_until = Some(self.t + GRACE_MS);
        }
    }

    /// The earliest pending deadline: a member's linger, a user's grace, a typing expiry.
    fn next_deadline(&self) -> Option<u64> {
        let lingers = self
            .rooms
            .values()
            .flat_map(|r| r.members.values().filter_map(|m| m.linger_until));
        let graces = self.users.values().filter_map(|u| u.grace_until);
        let typing = self.rooms.values().flat_map(|r| r.typing.values().copied());
        lingers.chain(graces).chain(typing).min()
    }

    /// Lets time pass: at each deadline, lingering members leave (announced), users in
    /// grace are forgotten (their name is free), typing expires — in that order.
    fn advance(&mut self, ms: u64) {
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
        }
        self.t = target;
    }
}

// ---- the runner: the same op on the server and the model ----

struct Run {
    sim: Sim,
    model: Model,
    /// The current session of each slot, and whether it is open.
    slots: [Option<(u64, bool)>; SLOTS],
    next_sid: u64,
    next_body: u64,
    last_send: [Option<LastSend>; SLOTS],
    /// Per (session, room): the last live message seq received.
    seen: BTreeMap<(u64, String), u64>,
    /// Per (session, room): the last seq the session knows of (joined or live), its
    /// resume cursor for a refresh.
    cursor: BTreeMap<(u64, String), u64>,
    /// Public and direct rooms that have ever existed, to compare getters.
    known_rooms: BTreeSet<String>,
}

impl Run {
    fn new(base: chat_core::Now) -> Run {
        let mut known_rooms: BTreeSet<String> = ROOMS.iter().map(|r| (*r).to_owned()).collect();
        for a in USERS {
            for b in USERS {
                known_rooms.insert(dm_room(a, b));
            }
        }
        Run {
            sim: Sim::with_base(config(), base),
            model: Model::default(),
            slots: [None; SLOTS],
            next_sid: 1,
            next_body: 0,
            last_send: Default::default(),
            seen: BTreeMap::new(),
            cursor: BTreeMap::new(),
            known_rooms,
        }
    }

    fn step(&mut self, i: usize, op: &Op) -> Result<(), TestCaseError> {
        let id = i as u64 + 1;
        self.model.out.clear();
        self.model.events.clear();
        self.sim.events.clear();
        let mut welcomed: Option<(u64, String, bool)> = None;
        match op {
            Op::Hello {
                slot,
                user,
                upper,
                token,
                rooms,
            } => {
                let name = if *upper {
                    USERS[*user].to_uppercase()
                } else {
                    USERS[*user].to_owned()
                };
                let key = USERS[*user];
                let token = match token {
                    TokenChoice::None => None,
                    // The user's current token, or (after it expired) the last one issued.
                    TokenChoice::Right => self
                        .model
                        .users
                        .get(key)
                        .and_then(|u| u.token.clone())
                        .or_else(|| self.model.tokens.get(key).and_then(|t| t.last().cloned())),
                    TokenChoice::Wrong => Some("0000000000000000ffffffffffffffff".to_owned()),
                };
                welcomed = self.hello(*slot, id, &name, token, rooms);
            }
            Op::Refresh { slot } => {
                let Some((slot, sid)) = self.active(*slot) else {
                    return self.check(i, op);
                };
                let Some(key) = self.model.user_of(sid) else {
                    return self.check(i, op);
                };
                let rooms = self.model.sessions[&sid]
                    .rooms
                    .iter()
                    .map(|r| (r.clone(), self.cursor.get(&(sid, r.clone())).copied()))
                    .collect();
                let token = self.model.users[&key].token.clone();
                self.sim.disconnect(sid);
                self.model.disconnect(sid);
                self.slots[slot] = Some((sid, false));
                welcomed = self.hello(slot, id, &key, token, &RoomsChoice::Resume(rooms));
                prop_assert!(
                    welcomed.is_some(),
                    "step {}: the refresh was not welcomed",
                    i
                );
            }
            Op::Join { slot, room, since } => {
                if let Some((_, sid)) = self.active(*slot) {
                    let room = ROOMS[*room];
                    let since = self.model.resolve_since(room, *since);
                    let mut frame = json!({"type":"join","id":id,"room":room});
                    if let Some(s) = since {
                        frame["since"] = json!(s);
                    }
                    self.sim.say(sid, frame);
                    match self.model.user_of(sid) {
                        None => self.model.error(sid, Some(id), ErrorCode::HelloRequired),
                        Some(key) => self.model.join(sid, &key, Some(id), room, since),
                    }
                }
            }
            Op::JoinDm { slot, peer, since } => {
                if let Some((_, sid)) = self.active(*slot) {
                    // Named from the caller's side, "@PEER,me": the server canonicalizes it.
                    let me = self.model.user_of(sid).unwrap_or_else(|| "ann".to_owned());
                    let room = dm_room(&me, USERS[*peer]);
                    let since = self.model.resolve_since(&room, *since);
                    let raw = format!("@{},{}", USERS[*peer].to_uppercase(), me);
                    let mut frame = json!({"type":"join","id":id,"room":raw});
                    if let Some(s) = since {
                        frame["since"] = json!(s);
                    }
                    self.sim.say(sid, frame);
                    match self.model.user_of(sid) {
                        None => self.model.error(sid, Some(id), ErrorCode::HelloRequired),
                        Some(key) => self.model.join(sid, &key, Some(id), &room, since),
                    }
                }
            }
            Op::Leave { slot, room } => {
                if let Some((_, sid)) = self.active(*slot) {
                    let room = self.room_for(sid, *room);
                    self.sim
                        .say(sid, json!({"type":"leave","id":id,"room":room}));
                    match self.model.user_of(sid) {
                        None => self.model.error(sid, Some(id), ErrorCode::HelloRequired),
                        Some(key) => self.model.leave(sid, &key, id, &room),
                    }
                }
            }
            Op::Send {
                slot,
                room,
                client_id,
            } => {
                if let Some((slot, sid)) = self.active(*slot) {
                    let send = LastSend {
                        target: Ok(self.room_for(sid, *room)),
                        body: self.body(),
                        client_id: client_id.map(|c| format!("c{c}")),
                    };
                    self.send(slot, sid, id, send);
                }
            }
            Op::Dm {
                slot,
                peer,
                client_id,
            } => {
                if let Some((slot, sid)) = self.active(*slot) {
                    let send = LastSend {
                        target: Err(USERS[*peer].to_owned()),
                        body: self.body(),
                        client_id: client_id.map(|c| format!("c{c}")),
                    };
                    self.send(slot, sid, id, send);
                }
            }
            Op::Resend { slot } => {
                if let Some((slot, sid)) = self.active(*slot)
                    && let Some(send) = self.last_send[slot].clone()
                {
                    self.send(slot, sid, id, send);
                }
            }
            Op::Typing { slot, room, active } => {
                if let Some((_, sid)) = self.active(*slot) {
                    let room = self.room_for(sid, *room);
                    self.sim
                        .say(sid, json!({"type":"typing","room":room,"active":active}));
                    match self.model.user_of(sid) {
                        None => self.model.error(sid, None, ErrorCode::HelloRequired),
                        Some(key) => self.model.typing(sid, &key, &room, *active),
                    }
                }
            }
            Op::History {
                slot,
                room,
                before,
                limit,
            } => {
                if let Some((_, sid)) = self.active(*slot) {
                    let room = self.room_for(sid, *room);
                    let last = self.model.rooms.get(&room).map_or(0, |r| r.last_seq);
                    let before = before.map(|k| last.saturating_sub(k) + 1);
                    let mut frame = json!({"type":"history","id":id,"room":room,"limit":limit});
                    if let Some(b) = before {
                        frame["before"] = json!(b);
                    }
                    self.sim.say(sid, frame);
                    match self.model.user_of(sid) {
                        None => self.model.error(sid, Some(id), ErrorCode::HelloRequired),
                        Some(_) => self.model.history(sid, id, &room, before, *limit),
                    }
                }
            }
            Op::Disconnect { slot } => {
                if let Some((sid, open)) = self.slots[*slot] {
                    // Reported twice for a closed slot: the second must change nothing.
                    self.sim.disconnect(sid);
                    if open {
                        self.model.disconnect(sid);
                        self.slots[*slot] = Some((sid, false));
                    }
                }
            }
            Op::Stale { slot } => {
                if let Some((sid, false)) = self.slots[*slot] {
                    self.sim.say(
                        sid,
                        json!({"type":"send","id":id,"room":"general","body":"from beyond"}),
                    );
                }
            }
            Op::Advance { ms } => {
                self.sim.advance(Duration::from_millis(*ms));
                self.model.advance(*ms);
            }
        }
        if let Some((sid, key, existed)) = welcomed {
            self.learn_token(sid, &key, existed)?;
        }
        self.check(i, op)
    }

    /// Says hello from the slot (opening a new connection if it has none open). Returns
    /// the session, user key and whether the user existed, when the model welcomes it.
    fn hello(
        &mut self,
        slot: usize,
        id: u64,
        name: &str,
        token: Option<String>,
        rooms: &RoomsChoice,
    ) -> Option<(u64, String, bool)> {
        let sid = match self.open(slot) {
            Some(sid) => sid,
            None => {
                let sid = self.next_sid;
                self.next_sid += 1;
                self.slots[slot] = Some((sid, true));
                self.sim.connect(sid);
                self.model.sessions.insert(sid, MSession::default());
                sid
            }
        };
        let mut frame = json!({"type":"hello","id":id,"version":1,"name":name});
        if let Some(t) = &token {
            frame["token"] = json!(t);
        }
        match rooms {
            RoomsChoice::Default => {}
            RoomsChoice::Nothing => frame["rooms"] = json!([]),
            RoomsChoice::One(r) => frame["rooms"] = json!([{"room": ROOMS[*r]}]),
            RoomsChoice::Resume(list) => {
                frame["rooms"] = list
                    .iter()
                    .map(|(room, since)| match since {
                        Some(s) => json!({"room": room, "since": s}),
                        None => json!({"room": room}),
                    })
                    .collect();
            }
        }
        self.sim.say(sid, frame);
        if self.model.user_of(sid).is_some() {
            self.model.error(sid, Some(id), ErrorCode::AlreadyWelcomed);
            return None;
        }
        let key = name.to_lowercase();
        let existed = self.model.users.contains_key(&key);
        self.model.hello(sid, id, name, token, rooms);
        self.model
            .user_of(sid)
            .is_some()
            .then_some((sid, key, existed))
    }

    fn body(&mut self) -> String {
        self.next_body += 1;
        format!("body {}", self.next_body)
    }

    /// The slot's session if it is open.
    fn open(&self, slot: usize) -> Option<u64> {
        self.slots[slot].and_then(|(sid, open)| open.then_some(sid))
    }

    /// The session an op acts on: the first open one at or after `slot`, cyclically.
    fn active(&self, slot: usize) -> Option<(usize, u64)> {
        (0..SLOTS)
            .map(|k| (slot + k) % SLOTS)
            .find_map(|s| self.open(s).map(|sid| (s, sid)))
    }

    fn room_for(&self, sid: u64, pick: Pick) -> String {
        match pick {
            Pick::Any(i) => ROOMS[i].to_owned(),
            Pick::Mine(i) => {
                let rooms: Vec<&String> = self.model.sessions[&sid].rooms.iter().collect();
                if rooms.is_empty() {
                    ROOMS[i].to_owned()
                } else {
                    rooms[i % rooms.len()].clone()
                }
            }
        }
    }

    fn send(&mut self, slot: usize, sid: u64, id: u64, send: LastSend) {
        let mut frame = json!({"type":"send","id":id,"body":send.body});
        match &send.target {
            Ok(room) => frame["room"] = json!(room),
            Err(to) => frame["to"] = json!(to),
        }
        if let Some(c) = &send.client_id {
            frame["client_id"] = json!(c);
        }
        self.last_send[slot] = Some(send.clone());
        self.sim.say(sid, frame);
        match self.model.user_of(sid) {
            None => self.model.error(sid, Some(id), ErrorCode::HelloRequired),
            Some(key) => self.model.send(sid, &key, id, &send),
        }
    }

    /// Tokens are the server's secret: learn them from the welcome, and check that the
    /// same user keeps its token and a fresh claim of a name never reuses an old one.
    fn learn_token(&mut self, sid: u64, key: &str, existed: bool) -> Result<(), TestCaseError> {
        let token = self
            .sim
            .peek(sid)
            .iter()
            .find_map(|f| match f {
                ServerFrame::Welcome { token, .. } => token.clone(),
                _ => None,
            })
            .ok_or_else(|| TestCaseError::fail("welcomed without a token"))?;
        let user = self.model.users.get_mut(key).expect("welcomed");
        if existed {
            prop_assert_eq!(
                user.token.as_deref(),
                Some(token.as_str()),
                "same user, same token"
            );
        } else {
            let old = self.model.tokens.entry(key.to_owned()).or_default();
            prop_assert!(!old.contains(&token), "a fresh claim got an old token");
            old.push(token.clone());
            user.token = Some(token);
        }
        Ok(())
    }

    fn check(&mut self, i: usize, op: &Op) -> Result<(), TestCaseError> {
        let ctx = || format!("step {i}: {op:?}");
        // Exactly the predicted frames, per session.
        let mut actual: BTreeMap<u64, Vec<Obs>> = BTreeMap::new();
        for (sid, frames) in std::mem::take(&mut self.sim.inbox) {
            for f in &frames {
                if let ServerFrame::Message(m) = f {
                    let last = self.seen.entry((sid.0, m.room.to_string())).or_insert(0);
                    prop_assert!(
                        m.seq.0 > *last,
                        "{}: session {} got seq {} after {} in {}",
                        ctx(),
                        sid.0,
                        m.seq.0,
                        last,
                        m.room
                    );
                    *last = m.seq.0;
                    self.cursor.insert((sid.0, m.room.to_string()), m.seq.0);
                }
                if let ServerFrame::Joined { room, last_seq, .. } = f {
                    self.cursor.insert((sid.0, room.to_string()), last_seq.0);
                }
            }
            actual.insert(sid.0, frames.iter().map(observe).collect());
        }
        let expected = std::mem::take(&mut self.model.out);
        let sids: BTreeSet<u64> = actual.keys().chain(expected.keys()).copied().collect();
        for sid in sids {
            let got = actual.get(&sid).map_or(&[][..], Vec::as_slice);
            let want = expected.get(&sid).map_or(&[][..], Vec::as_slice);
            prop_assert_eq!(got, want, "{}: frames of session {}", ctx(), sid);
        }
        prop_assert!(
            self.sim.violations.is_empty(),
            "{}: {:?}",
            ctx(),
            self.sim.violations
        );
        prop_assert!(
            self.sim.closed.is_empty(),
            "{}: unexpected close {:?}",
            ctx(),
            self.sim.closed
        );

        // Presence transitions, once each.
        let events: Vec<(bool, String, String)> = self
            .sim
            .events
            .iter()
            .filter_map(|e| match e {
                Event::UserJoined { room, user } => {
                    Some((true, room.to_string(), user.to_string()))
                }
                Event::UserLeft { room, user } => Some((false, room.to_string(), user.to_string())),
                _ => None,
            })
            .collect();
        prop_assert_eq!(&events, &self.model.events, "{}: presence events", ctx());

        // Getters.
        let server = &self.sim.server;
        for name in &self.known_rooms {
            let room = RoomName::parse(name, 64, 32).expect("valid");
            let want = self
                .model
                .rooms
                .contains_key(name)
                .then(|| self.model.member_names(name));
            let got = server
                .members(&room)
                .map(|m| m.iter().map(ToString::to_string).collect::<Vec<_>>());
            prop_assert_eq!(got, want, "{}: members of {}", ctx(), name);
            let want = self.model.rooms.get(name).map(|r| r.last_seq);
            prop_assert_eq!(
                server.last_seq(&room).map(|s| s.0),
                want,
                "{}: last_seq of {}",
                ctx(),
                name
            );
        }
        for slot in self.slots.iter().flatten() {
            let sid = slot.0;
            let got = server
                .session_rooms(SessionId(sid))
                .map(|rs| rs.iter().map(ToString::to_string).collect::<Vec<_>>());
            let want = self
                .model
                .sessions
                .get(&sid)
                .map(|s| s.rooms.iter().cloned().collect::<Vec<_>>());
            prop_assert_eq!(got, want, "{}: rooms of session {}", ctx(), sid);
        }
        prop_assert_eq!(
            server.session_count(),
            self.model.sessions.len(),
            "{}",
            ctx()
        );
        Ok(())
    }
}

fn run(ops: &[Op], base: chat_core::Now) -> Result<Vec<String>, TestCaseError> {
    let mut run = Run::new(base);
    for (i, op) in ops.iter().enumerate() {
        run.step(i, op)?;
    }
    // Let every grace period and typing indicator run out: the model agrees to the end.
    run.step(ops.len(), &Op::Advance { ms: 60_000 })?;
    Ok(run.sim.log)
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 4096,
        // Relative to the package root, where cargo runs integration tests.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/properties.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_server_agrees_with_the_reference_model(ops in ops()) {
        let base = base_now();
        let first = run(&ops, base)?;
        // Same inputs at the same times: the same outputs, byte for byte.
        let second = run(&ops, base)?;
        prop_assert!(first == second, "two runs of the same operations differ");
    }
}

/// A hand-written sequence through the trickiest paths, so the model itself is known to
/// see the transitions the properties are about.
#[test]
fn the_model_sees_grace_resume_and_resend() {
    use Op::*;
    let ops = vec![
        Hello {
            slot: 0,
            user: 0,
            upper: false,
            token: TokenChoice::None,
            rooms: RoomsChoice::Default,
        },
        Hello {
            slot: 1,
            user: 0,
            upper: true,
            token: TokenChoice::Right,
            rooms: RoomsChoice::Default,
        },
        Hello {
            slot: 2,
            user: 1,
            upper: false,
            token: TokenChoice::None,
            rooms: RoomsChoice::Default,
        },
        Send {
            slot: 0,
            room: Pick::Mine(0),
            client_id: Some(1),
        },
        Resend { slot: 0 },
        Typing {
            slot: 2,
            room: Pick::Mine(0),
            active: true,
        },
        Disconnect { slot: 0 },
        Disconnect { slot: 1 },
        Advance { ms: 2_500 },
        Hello {
            slot: 1,
            user: 0,
            upper: false,
            token: TokenChoice::Right,
            rooms: RoomsChoice::Nothing,
        },
        Join {
            slot: 1,
            room: 0,
            since: Some(Since::Back(1)),
        },
        Dm {
            slot: 2,
            peer: 0,
            client_id: None,
        },
        Disconnect { slot: 1 },
        Advance { ms: 5_000 },
        Hello {
            slot: 3,
            user: 0,
            upper: false,
            token: TokenChoice::None,
            rooms: RoomsChoice::Default,
        },
        JoinDm {
            slot: 3,
            peer: 1,
            since: Some(Since::Ahead),
        },
        History {
            slot: 2,
            room: Pick::Any(0),
            before: None,
            limit: 3,
        },
        // bob refreshes his page: no presence flap, and the resume is empty.
        Refresh { slot: 2 },
        Stale { slot: 0 },
    ];
    let log = run(&ops, base_now()).unwrap_or_else(|e| panic!("{e}"));
    let count = |pat: &str| log.iter().filter(|l| l.contains(pat)).count();
    // ann and bob join; ann's two tabs drop and one comes back within the grace (no
    // flap), then drops again and stays away: one leave; a fresh "ann" joins anew.
    assert_eq!(count("event UserJoined"), 3, "{log:#?}");
    assert_eq!(count("event UserLeft"), 1, "{log:#?}");
    assert_eq!(count(r#""duplicate":true"#), 1, "{log:#?}");
    assert_eq!(count(r#""gap":true"#), 1, "{log:#?}");
    // The resume from one message back got exactly that message.
    assert!(
        log.iter()
            .any(|l| l.contains(r#""type":"joined","id":11"#) && l.contains(r#""seq":1"#)),
        "{log:#?}"
    );
}
