//! The runner: each op on the server (through a [`Sim`]) and on the model, then the check.

use crate::AuthRefused;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::json;

use super::model::{LastSend, Model, Obs, dm_room, observe};
use super::ops::{
    ModOp, Op, Pick, ROOMS, RoomsChoice, SLOTS, TokenChoice, USERS, WRONG_TOKEN, ops,
};
use super::sim::{Sim, base_now};
use crate::protocol::ServerFrame;
use crate::{Config, Event, Input, Now, RoomName, SessionId, StoreError};

/// The host's identity check in host auth mode: the `hello`'s name and credentials in,
/// the user's name (or why not) out, as the host would answer
/// [`Output::Authenticate`](crate::Output::Authenticate).
pub type AuthHook = Arc<dyn Fn(&str, Option<&str>) -> Result<String, AuthRefused> + Send + Sync>;

/// A property test of the server with one [`Config`] (and, in host auth mode, one
/// identity hook) against the reference model.
///
/// The model follows the config's history window and join page, presence grace, typing
/// expiry, flood control (send, frame and typing rates, strikes), congestion backoff,
/// durable mode, auth mode, epoch, default rooms and shutdown delay. The other limits
/// must not bind for the ops' names and sizes; [`Harness::new`] checks that.
#[derive(Clone)]
pub struct Harness {
    config: Config,
    auth: AuthHook,
    len: usize,
}

impl fmt::Debug for Harness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Harness")
            .field("config", &self.config)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Harness {
    /// A harness for this configuration. In host auth mode ([`AuthMode::Host`](crate::AuthMode::Host)) the default hook accepts
    /// every name as given, except for the credentials [`WRONG_TOKEN`].
    ///
    /// # Panics
    ///
    /// If a limit the model does not follow would bind (rooms not created on join, fewer
    /// than 64 rooms, names or bodies too short for the ops, history pages under 16, a
    /// default room that is not a valid public room name).
    #[must_use]
    pub fn new(config: Config) -> Harness {
        assert!(
            config.create_rooms_on_join,
            "the model creates rooms on join"
        );
        assert!(config.max_rooms >= 64, "the model needs max_rooms >= 64");
        assert!(
            config.max_rooms_per_session >= ROOMS.len() + config.default_rooms.len(),
            "the model needs room for every room of the ops in one session"
        );
        assert!(config.max_name_chars >= 3 && config.max_room_chars >= 12);
        assert!(config.max_body_bytes >= 16, "bodies are up to 16 bytes");
        assert!(config.history_page_max >= 16, "history pages are up to 10");
        for room in &config.default_rooms {
            assert!(
                !room.starts_with('@')
                    && RoomName::parse(room, config.max_room_chars, config.max_name_chars)
                        .is_ok_and(|r| r.as_str() == room),
                "default room {room:?} must be a normalized public room name"
            );
        }
        Harness {
            config,
            auth: Arc::new(|name, credentials| {
                if credentials == Some(WRONG_TOKEN) {
                    Err(AuthRefused::new("wrong credentials"))
                } else {
                    Ok(name.to_owned())
                }
            }),
            len: 150,
        }
    }

    /// Replaces the host-auth hook (used when the config's auth mode is
    /// [`AuthMode::Host`](crate::AuthMode::Host)).
    #[must_use]
    pub fn with_auth(
        mut self,
        hook: impl Fn(&str, Option<&str>) -> Result<String, AuthRefused> + Send + Sync + 'static,
    ) -> Harness {
        self.auth = Arc::new(hook);
        self
    }

    /// Sets the longest op sequence [`Harness::ops`] generates (150 by default).
    #[must_use]
    pub fn with_len(mut self, len: usize) -> Harness {
        self.len = len;
        self
    }

    /// The configuration under test.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A strategy for op sequences fit for this configuration: a few `hello`s, then any
    /// ops (with the store's answers in durable mode). Shrinks to short sequences.
    pub fn ops(&self) -> BoxedStrategy<Vec<Op>> {
        ops(self.config.durable, self.len)
    }

    /// Runs `ops` on a fresh server and the model, checking after every step. Returns the
    /// server's outputs, one line each.
    ///
    /// # Errors
    ///
    /// The first disagreement, naming the step and op.
    pub fn run(&self, ops: &[Op]) -> Result<Vec<String>, TestCaseError> {
        self.run_at(ops, base_now())
    }

    fn run_at(&self, ops: &[Op], base: Now) -> Result<Vec<String>, TestCaseError> {
        let mut run = Run::new(self, base);
        for (i, op) in ops.iter().enumerate() {
            run.step(i, op)?;
        }
        // Let every grace period and typing indicator run out: the model agrees to the end.
        run.step(ops.len(), &Op::Advance { ms: 60_000 })?;
        Ok(run.sim.log)
    }

    /// [`Harness::run`] twice from the same base time: the server must also give the
    /// same outputs, byte for byte.
    ///
    /// # Errors
    ///
    /// The first disagreement with the model, or the two runs differing.
    pub fn check(&self, ops: &[Op]) -> Result<(), TestCaseError> {
        let base = base_now();
        let first = self.run_at(ops, base)?;
        let second = self.run_at(ops, base)?;
        prop_assert!(first == second, "two runs of the same operations differ");
        Ok(())
    }
}

/// A tab to resume: user key, token, rooms with cursors.
type Tab = (String, Option<String>, Vec<(String, Option<u64>)>);

/// The runner: the same op on the server and the model.
struct Run<'h> {
    harness: &'h Harness,
    sim: Sim,
    model: Model,
    /// The current session of each slot, and whether it is open.
    slots: [Option<(u64, bool)>; SLOTS],
    next_sid: u64,
    next_body: u64,
    restarts: u64,
    last_send: [Option<LastSend>; SLOTS],
    /// Per (session, room): the last live message seq received.
    seen: BTreeMap<(u64, String), u64>,
    /// Per (session, room): the last seq the session knows of (joined or live), its
    /// resume cursor for a refresh.
    cursor: BTreeMap<(u64, String), u64>,
    /// Public and direct rooms that may exist, to compare getters.
    known_rooms: BTreeSet<String>,
    /// Closes already compared.
    known_closed: BTreeSet<SessionId>,
    /// Since the last wipe: every acknowledged (room, seq), and every delivered seq's body.
    acked: BTreeSet<(String, u64)>,
    bodies: BTreeMap<(String, u64), String>,
    /// Acks per session, for the sends-per-time bound.
    acks: BTreeMap<u64, u64>,
    /// Sessions told to back off ephemeral frames, until (ms).
    congested: BTreeMap<u64, u64>,
}

impl<'h> Run<'h> {
    fn new(harness: &'h Harness, base: Now) -> Run<'h> {
        let mut known_rooms: BTreeSet<String> = ROOMS.iter().map(|r| (*r).to_owned()).collect();
        known_rooms.extend(harness.config.default_rooms.iter().cloned());
        for a in USERS {
            for b in USERS {
                known_rooms.insert(dm_room(a, b));
            }
        }
        Run {
            harness,
            sim: Sim::with_base(harness.config.clone(), base),
            model: Model::new(harness.config.clone()),
            slots: [None; SLOTS],
            next_sid: 1,
            next_body: 0,
            restarts: 0,
            last_send: Default::default(),
            seen: BTreeMap::new(),
            cursor: BTreeMap::new(),
            known_rooms,
            known_closed: BTreeSet::new(),
            acked: BTreeSet::new(),
            bodies: BTreeMap::new(),
            acks: BTreeMap::new(),
            congested: BTreeMap::new(),
        }
    }

    fn step(&mut self, i: usize, op: &Op) -> Result<(), TestCaseError> {
        let id = i as u64 + 1;
        self.model.begin_step();
        self.sim.events.clear();
        let mut welcomed: Vec<(u64, String, bool)> = Vec::new();
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
                    TokenChoice::Right if self.model.host_auth() => Some(format!("secret-{key}")),
                    // The user's current token, or (after it expired) the last one issued.
                    TokenChoice::Right => self
                        .model
                        .users
                        .get(key)
                        .and_then(|u| u.token.clone())
                        .or_else(|| self.model.tokens.get(key).and_then(|t| t.last().cloned())),
                    TokenChoice::Wrong => Some(WRONG_TOKEN.to_owned()),
                };
                welcomed.extend(self.hello(*slot, id, &name, token, rooms));
            }
            Op::Refresh { slot } => {
                if let Some((slot, sid)) = self.active(*slot) {
                    let tab = self.tab(sid);
                    self.sim.disconnect(sid);
                    self.model.drop_session(sid, None);
                    welcomed.extend(self.resume(slot, sid, id, tab));
                }
            }
            Op::QueueFull { slot, ephemeral } => {
                if let Some((slot, sid)) = self.active(*slot) {
                    self.sim.input(Input::QueueFull {
                        session: SessionId(sid),
                        ephemeral: *ephemeral,
                    });
                    if *ephemeral {
                        let until = self.model.t + ms(self.harness.config.congestion_backoff);
                        self.congested.insert(sid, until);
                        self.model.queue_full(sid, true);
                    } else {
                        // Closed as a slow consumer; the tab reconnects and resumes.
                        let tab = self.tab(sid);
                        self.model.queue_full(sid, false);
                        self.sim.disconnect(sid);
                        welcomed.extend(self.resume(slot, sid, id, tab));
                    }
                }
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
                    if self.model.frame_in(sid) {
                        if let Some(key) = self.model.ready(sid, Some(id)) {
                            self.model.join(sid, &key, Some(id), room, since);
                        }
                        self.model.settle(sid);
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
                    if self.model.frame_in(sid) {
                        if let Some(key) = self.model.ready(sid, Some(id)) {
                            self.model.join(sid, &key, Some(id), &room, since);
                        }
                        self.model.settle(sid);
                    }
                }
            }
            Op::Leave { slot, room } => {
                if let Some((_, sid)) = self.active(*slot) {
                    let room = self.room_for(sid, *room);
                    self.sim
                        .say(sid, json!({"type":"leave","id":id,"room":room}));
                    if self.model.frame_in(sid) {
                        if let Some(key) = self.model.ready(sid, Some(id)) {
                            self.model.leave(sid, &key, id, &room);
                        }
                        self.model.settle(sid);
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
            Op::Burst { slot, room, n } => {
                if let Some((slot, sid)) = self.active(*slot) {
                    let room = self.room_for(sid, *room);
                    for _ in 0..*n {
                        let send = LastSend {
                            target: Ok(room.clone()),
                            body: self.body(),
                            client_id: None,
                        };
                        self.send(slot, sid, id, send);
                    }
                }
            }
            Op::Garbage { slot } => {
                if let Some((_, sid)) = self.active(*slot) {
                    self.sim.say(sid, "garbage");
                    if self.model.frame_in(sid) {
                        self.model.reject(sid, None, super::model::Rej::bad_frame());
                        self.model.settle(sid);
                    }
                }
            }
            Op::Typing { slot, room, active } => {
                if let Some((_, sid)) = self.active(*slot) {
                    let room = self.room_for(sid, *room);
                    self.sim
                        .say(sid, json!({"type":"typing","room":room,"active":active}));
                    if self.model.frame_in(sid) {
                        if let Some(key) = self.model.ready(sid, None) {
                            self.model.typing(sid, &key, &room, *active);
                        }
                        self.model.settle(sid);
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
                    let last = self.model.rooms.get(&room).map_or(0, |r| r.delivered);
                    let before = before.map(|k| last.saturating_sub(k) + 1);
                    let mut frame = json!({"type":"history","id":id,"room":room,"limit":limit});
                    if let Some(b) = before {
                        frame["before"] = json!(b);
                    }
                    self.sim.say(sid, frame);
                    self.sim.answer_loads();
                    self.sim.answer_room_loads();
                    if self.model.frame_in(sid) {
                        if self.model.ready(sid, Some(id)).is_some() {
                            self.model.history(sid, id, &room, before, *limit);
                        }
                        self.model.settle(sid);
                    }
                }
            }
            Op::Disconnect { slot } => {
                if let Some((sid, open)) = self.slots[*slot] {
                    // Reported twice for a closed slot: the second must change nothing.
                    self.sim.disconnect(sid);
                    if open {
                        self.model.drop_session(sid, None);
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
            Op::Store { n, fail } => {
                for k in 0..*n {
                    let Some(&(ref room, seq)) = self.model.persists.front() else {
                        break;
                    };
                    let waiting = self
                        .sim
                        .persists
                        .first()
                        .map(|m| (m.room.to_string(), m.seq.0));
                    prop_assert_eq!(
                        waiting,
                        Some((room.clone(), seq)),
                        "step {}: the persist requests, in order",
                        i
                    );
                    let ok = fail & (1 << k) == 0;
                    let result = if ok {
                        Ok(())
                    } else {
                        Err(StoreError::Full("disk full".to_owned()))
                    };
                    self.sim.store_next(result);
                    self.model.persisted(ok);
                }
            }
            Op::Shutdown => {
                self.sim.server.shutdown(self.sim.now);
                self.sim.drain();
                self.model.shutdown();
            }
            Op::Restart { flushed, wipe } => {
                welcomed = self.restart(id, *flushed, *wipe)?;
            }
            Op::Advance { ms } => {
                self.sim.advance(Duration::from_millis(*ms));
                self.model.advance(*ms);
            }
            Op::Moderate {
                slot,
                room,
                user,
                action,
            } => {
                if let Some((_, sid)) = self.active(*slot) {
                    let (room, user) = (ROOMS[*room], USERS[*user]);
                    self.sim.say(sid, moderation_frame(id, room, user, *action));
                    if self.model.frame_in(sid) {
                        if let Some(key) = self.model.ready(sid, Some(id)) {
                            self.model.moderate(sid, &key, id, room, user, *action);
                        }
                        self.model.settle(sid);
                    }
                }
            }
            Op::GiveRole { room, user, role } => {
                let (room, user) = (ROOMS[*room], USERS[*user]);
                let given = self.sim.server.set_role(room, user, *role);
                prop_assert!(given.is_ok(), "step {}: set_role: {:?}", i, given);
                self.sim.drain();
                self.model.give_role(room, user, *role);
            }
        }
        self.sim.answer_loads();
        self.sim.answer_room_loads();
        for (sid, key, existed) in welcomed {
            self.learn_token(sid, &key, existed)?;
        }
        // Slots whose session the server closed.
        for slot in self.slots.iter_mut().flatten() {
            if slot.1 && !self.model.is_open(slot.0) {
                slot.1 = false;
            }
        }
        self.check(i, op)
    }

    /// Says hello from the slot (opening a new connection if it has none open), answering
    /// the host's identity check at once in host mode. Returns the session, user key and
    /// whether the user existed, when the model welcomes it.
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
                self.model.connect(sid);
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
        self.sim.authenticate.clear();
        self.sim.say(sid, frame);
        if !self.model.frame_in(sid) {
            return None;
        }
        let welcomed_before = self.model.user_of(sid).is_some();
        let existed_for = |m: &Model, key: &str| m.users.contains_key(key);
        let mut existed = existed_for(&self.model, &name.to_lowercase());
        self.model.hello(sid, id, name, token.as_deref(), rooms);
        self.model.settle(sid);
        let asked = std::mem::take(&mut self.sim.authenticate);
        let mut key = name.to_lowercase();
        if self.model.host_auth() && self.model.is_open(sid) && !welcomed_before {
            // The host answers the identity check with its hook's decision.
            let (credentials, asked_name) = match asked.as_slice() {
                [(s, n, c)] if s.0 == sid => (c.clone(), n.clone()),
                _ => panic!("hello in host mode must ask the host once: {asked:?}"),
            };
            let result = (self.harness.auth)(&asked_name, credentials.as_deref());
            if let Ok(n) = &result {
                key = n.to_lowercase();
                existed = existed_for(&self.model, &key);
            }
            self.sim.input(Input::Authenticated {
                session: SessionId(sid),
                result: result.clone(),
            });
            self.model.authenticated(sid, id, rooms, &result);
            self.model.settle(sid);
        }
        let now_welcomed = self.model.user_of(sid).is_some();
        (now_welcomed && !welcomed_before).then_some((sid, key, existed))
    }

    /// What a tab knows to resume: its user, that user's token, and every room it is in
    /// with the last seq it saw there.
    fn tab(&self, sid: u64) -> Option<Tab> {
        let key = self.model.user_of(sid)?;
        let token = self.model.users[&key].token.clone();
        let rooms = self.model.sessions[&sid]
            .rooms
            .iter()
            .map(|r| (r.clone(), self.cursor.get(&(sid, r.clone())).copied()))
            .collect();
        Some((key, token, rooms))
    }

    /// The tab of `sid` (gone) reconnects in `slot` and resumes.
    fn resume(
        &mut self,
        slot: usize,
        sid: u64,
        id: u64,
        tab: Option<Tab>,
    ) -> Option<(u64, String, bool)> {
        self.slots[slot] = Some((sid, false));
        let (key, token, rooms) = tab?;
        self.hello(slot, id, &key, token, &RoomsChoice::Resume(rooms))
    }

    /// The process restarts; every tab that was open reconnects and resumes.
    fn restart(
        &mut self,
        id: u64,
        flushed: bool,
        wipe: bool,
    ) -> Result<Vec<(u64, String, bool)>, TestCaseError> {
        let durable = self.harness.config.durable;
        let wipe = wipe || !durable;
        self.restarts += 1;
        let mut config = self.harness.config.clone();
        // A new process: a new token secret; a new epoch only when history was lost.
        config.secret[0] ^= u8::try_from(self.restarts % 251).unwrap_or(0) + 1;
        if wipe {
            config.epoch = format!("{}.{}", self.harness.config.epoch, self.restarts);
            self.sim.persists.clear();
            self.sim.store.clear();
            self.sim.moderation.clear();
            self.acked.clear();
            self.bodies.clear();
        } else {
            config.epoch = self.sim.server.config().epoch.clone();
        }
        // Who was where, before the old server's state goes.
        let tabs: Vec<(usize, u64, Option<Tab>)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, s)| {
                let (sid, open) = (*s)?;
                open.then(|| (slot, sid, self.tab(sid)))
            })
            .collect();
        for s in self.slots.iter_mut().flatten() {
            s.1 = false;
        }
        self.sim.restart(config.clone(), flushed);
        self.model.restart(config, flushed, wipe);
        if !wipe {
            // Seqs continue: nothing acknowledged is lost, and no seq goes backwards.
            for (room, seq) in &self.acked {
                let name = RoomName::parse(room, 64, 32).expect("valid");
                let last = self.sim.server.last_seq(&name).map_or(0, |s| s.0);
                prop_assert!(
                    last >= *seq,
                    "after a restart, {} is at seq {} but seq {} was acknowledged",
                    room,
                    last,
                    seq
                );
            }
        }
        let mut welcomed = Vec::new();
        for (slot, sid, tab) in tabs {
            welcomed.extend(self.resume(slot, sid, id, tab));
        }
        Ok(welcomed)
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
        if self.model.frame_in(sid) {
            if let Some(key) = self.model.ready(sid, Some(id)) {
                self.model.send(sid, &key, id, &send);
            }
            self.model.settle(sid);
        }
    }

    /// Tokens are the server's secret: learn them from the welcome, and check that the
    /// same user keeps its token and a fresh claim of a name never reuses an old one.
    fn learn_token(&mut self, sid: u64, key: &str, existed: bool) -> Result<(), TestCaseError> {
        let token = self.sim.peek(sid).iter().find_map(|f| match f {
            ServerFrame::Welcome { token, .. } => Some(token.clone()),
            _ => None,
        });
        let Some(token) = token else {
            return Err(TestCaseError::fail(format!(
                "session {sid} was not welcomed"
            )));
        };
        if self.model.host_auth() {
            prop_assert!(token.is_none(), "host mode gives no token");
            return Ok(());
        }
        let token = token.ok_or_else(|| TestCaseError::fail("welcomed without a token"))?;
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

    #[allow(clippy::too_many_lines)]
    fn check(&mut self, i: usize, op: &Op) -> Result<(), TestCaseError> {
        let ctx = || format!("step {i}: {op:?}");
        let t = self.model.t;
        // Exactly the predicted frames, per session.
        let mut actual: BTreeMap<u64, Vec<Obs>> = BTreeMap::new();
        let mut goodbyes = BTreeSet::new();
        for (sid, frames) in std::mem::take(&mut self.sim.inbox) {
            for f in &frames {
                match f {
                    ServerFrame::Message(m) => {
                        let room = m.room.to_string();
                        let last = self.seen.entry((sid.0, room.clone())).or_insert(0);
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
                        self.cursor.insert((sid.0, room.clone()), m.seq.0);
                        // One seq, one message: seqs are never reused (restarts included).
                        let body = self
                            .bodies
                            .entry((room, m.seq.0))
                            .or_insert_with(|| m.body.to_string());
                        prop_assert_eq!(
                            body.as_str(),
                            &*m.body,
                            "{}: seq {} of {} carried two bodies",
                            ctx(),
                            m.seq.0,
                            m.room
                        );
                    }
                    ServerFrame::Joined { room, last_seq, .. } => {
                        self.cursor.insert((sid.0, room.to_string()), last_seq.0);
                    }
                    ServerFrame::Ack {
                        room,
                        seq,
                        duplicate,
                        ..
                    } => {
                        if !duplicate {
                            self.acked.insert((room.to_string(), seq.0));
                        }
                        *self.acks.entry(sid.0).or_default() += 1;
                    }
                    ServerFrame::Typing { .. } => {
                        let backoff = self.congested.get(&sid.0).copied();
                        prop_assert!(
                            backoff.is_none_or(|until| until <= t),
                            "{}: typing to session {} during its backoff",
                            ctx(),
                            sid.0
                        );
                    }
                    ServerFrame::Goodbye { .. } => {
                        goodbyes.insert(sid.0);
                    }
                    _ => {}
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

        // Exactly the predicted closes.
        let closes: BTreeMap<u64, crate::CloseReason> = self
            .sim
            .closed
            .iter()
            .filter(|(s, _)| !self.known_closed.contains(s))
            .map(|(s, r)| (s.0, *r))
            .collect();
        self.known_closed.extend(self.sim.closed.keys().copied());
        prop_assert_eq!(&closes, &self.model.closes, "{}: closes", ctx());

        // Shutdown: goodbye only once every pending message is settled; everyone told
        // goes with 1012; drained once, with no session left.
        if !goodbyes.is_empty() {
            prop_assert!(
                self.sim.persists.is_empty(),
                "{}: goodbye before settling",
                ctx()
            );
            for sid in &goodbyes {
                prop_assert_eq!(
                    closes.get(sid),
                    Some(&crate::CloseReason::Shutdown),
                    "{}: goodbye without a shutdown close",
                    ctx()
                );
            }
        }
        prop_assert_eq!(self.sim.drained, self.model.drained, "{}: drained", ctx());

        // Flood control: a session never gets more acks than its send bucket allows.
        let rate = self.harness.config.send_rate;
        for (sid, s) in &self.model.sessions {
            let acks = self.acks.get(sid).copied().unwrap_or(0);
            let elapsed = t - s.since;
            let bound = u64::from(rate.burst) + u64::from(rate.per_second) * elapsed / 1000;
            prop_assert!(
                acks <= bound,
                "{}: session {} got {} acks in {} ms",
                ctx(),
                sid,
                acks,
                elapsed
            );
        }

        // Durable: everything acknowledged is in the store.
        if self.harness.config.durable {
            for (room, seq) in &self.acked {
                let stored = self
                    .sim
                    .store
                    .iter()
                    .find(|(r, _)| r.as_str() == room)
                    .is_some_and(|(_, msgs)| msgs.iter().any(|m| m.seq.0 == *seq));
                prop_assert!(stored, "{}: {}#{} acked but not stored", ctx(), room, seq);
            }
        }

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
            let want = self.model.rooms.get(name).map(|r| r.delivered);
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
        // Every user's role in every room, online or not.
        for room in ROOMS {
            for user in USERS {
                prop_assert_eq!(
                    server.role(room, user),
                    Ok(self.model.role(room, user)),
                    "{}: role of {} in {}",
                    ctx(),
                    user,
                    room
                );
            }
        }
        Ok(())
    }
}

/// The frame of a moderator's command.
fn moderation_frame(id: u64, room: &str, user: &str, action: ModOp) -> serde_json::Value {
    let about = |kind: &str| json!({"type": kind, "id": id, "room": room, "user": user});
    let mut frame = match action {
        ModOp::Kick => about("kick"),
        ModOp::Ban(_) => about("ban"),
        ModOp::Unban => about("unban"),
        ModOp::Mute(_) => about("mute"),
        ModOp::Unmute => about("unmute"),
        ModOp::SetRole(role) => {
            let mut f = about("set_role");
            f["role"] = json!(role);
            f
        }
        ModOp::Topic(t) => {
            let topic = t.map(|n| format!("t{n}")).unwrap_or_default();
            json!({"type": "topic", "id": id, "room": room, "topic": topic})
        }
        ModOp::SlowMode(seconds) => {
            json!({"type": "slow_mode", "id": id, "room": room, "seconds": seconds})
        }
    };
    if let ModOp::Ban(Some(m)) | ModOp::Mute(Some(m)) = action {
        frame["minutes"] = json!(m);
    }
    frame
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
