//! Cluster mode in the engine (`Config::cluster`, docs/CLUSTER.md), deterministically: several
//! `Server`s on simulated clocks share an in-memory log that does what the Redis script
//! does (one seq per append, no holes, idempotent client ids), and its doorbells reach each
//! server late, out of order, twice, or never. Every member session on every server must
//! get every message of the log exactly once, in seq order; every sender exactly one ack,
//! after its own message.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use chat_core::protocol::{EntryKind, ErrorCode, Message, ServerFrame};
use chat_core::testing::Sim;
use chat_core::{
    Announced, Appended, Config, EntryDetail, Identity, Input, LoadedRoom, Permissions, RoomName,
    Seq, SharedPolicy, StoreError, UserKey, UserName,
};
use chrono::{DateTime, Utc};
use proptest::prelude::*;
use serde_json::json;

/// The shared log: what `commit.lua` keeps in Redis.
#[derive(Default)]
struct Log {
    rooms: BTreeMap<RoomName, Vec<Message>>,
    ids: HashMap<(RoomName, String, String), Seq>,
    /// Entries below this seq are trimmed away, per room.
    trimmed_below: BTreeMap<RoomName, Seq>,
    /// Presence, as `presence.lua` keeps it: per room, the version and each user's
    /// sessions per server.
    presence: BTreeMap<RoomName, (u64, BTreeMap<UserKey, UserSessions>)>,
    /// Reserved names, as `claim.lua` keeps them: key → holder.
    names: BTreeMap<String, String>,
}

/// The log's clock: the time the test started (as the servers' simulated clocks do),
/// plus a millisecond per seq.
fn log_ms() -> i64 {
    static START: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *START.get_or_init(|| chat_core::testing::base_now().utc.timestamp_millis())
}

/// A user's name and sessions per server.
type UserSessions = (UserName, BTreeMap<usize, u64>);

impl Log {
    /// `commit.lua`: an entry (a message, or a change checked against its target's
    /// current state and applied to it in the same step), or the refusal.
    fn commit(
        &mut self,
        room: &RoomName,
        user: &UserName,
        body: &str,
        cid: Option<&str>,
        detail: &EntryDetail,
    ) -> Result<(Message, bool), (ErrorCode, String)> {
        if let Some(cid) = cid
            && self.ids.contains_key(&(
                room.clone(),
                user.key().as_str().to_owned(),
                cid.to_string(),
            ))
        {
            return Ok(self.append(room, user, body, Some(cid)));
        }
        let floor = self.trimmed_below.get(room).copied().unwrap_or(Seq(1));
        let entries = self.rooms.get(room).cloned().unwrap_or_default();
        let ts =
            DateTime::<Utc>::from_timestamp_millis(log_ms() + entries.len() as i64 + 1).unwrap();
        let target_of = |seq: Seq| -> Result<Option<Message>, (ErrorCode, String)> {
            let none = |why: &str| Err((ErrorCode::NoSuchMessage, why.to_owned()));
            if seq == Seq(0) || seq.0 > entries.len() as u64 {
                return none("unknown");
            }
            if seq < floor {
                return Ok(None);
            }
            let m = entries[usize::try_from(seq.0 - 1).unwrap()].clone();
            if !m.kind.is_message() {
                return none("a change");
            }
            if m.deleted {
                return Err((ErrorCode::Gone, "deleted".into()));
            }
            Ok(Some(m))
        };
        if detail.kind.is_message() {
            if let Some(r) = detail.reply_to {
                target_of(r)?;
            }
        } else if detail.kind != EntryKind::Erase {
            let t = target_of(detail.target.unwrap())?
                .ok_or((ErrorCode::NoSuchMessage, "older".to_owned()))?;
            let own = t.user.key() == user.key();
            let authored = match detail.kind {
                EntryKind::Edit => own,
                EntryKind::Delete => own || detail.rules.any_author,
                _ => true,
            };
            if !authored {
                return Err((ErrorCode::NotAuthor, "not yours".into()));
            }
            if detail.kind == EntryKind::Edit
                && (ts - t.ts).to_std().unwrap_or_default() > detail.rules.edit_window
            {
                return Err((ErrorCode::EditWindowPassed, "too late".into()));
            }
            let emoji = detail.emoji.as_deref();
            if detail.kind == EntryKind::React
                && detail.on == Some(true)
                && !t.reactions.iter().any(|r| Some(r.emoji.as_str()) == emoji)
                && t.reactions.len() >= detail.rules.max_reactions
            {
                return Err((ErrorCode::LimitReached, "too many".into()));
            }
        }
        let (mut m, dup) = self.append(room, user, body, cid);
        m.kind = detail.kind;
        m.target = detail.target;
        m.emoji = detail.emoji.clone();
        m.on = detail.on;
        m.reply_to = detail.reply_to;
        let entries = self.rooms.get_mut(room).unwrap();
        *entries.last_mut().unwrap() = m.clone();
        if let Some(t) = m.target {
            entries[usize::try_from(t.0 - 1).unwrap()].apply(&m);
        }
        if m.kind == EntryKind::Erase {
            // Every message of the user before it: a tombstone; their reactions go.
            for e in entries.iter_mut() {
                e.apply(&m);
            }
        }
        Ok((m, dup))
    }

    fn append(
        &mut self,
        room: &RoomName,
        user: &chat_core::UserName,
        body: &str,
        cid: Option<&str>,
    ) -> (Message, bool) {
        if let Some(cid) = cid
            && let Some(seq) = self.ids.get(&(
                room.clone(),
                user.key().as_str().to_owned(),
                cid.to_string(),
            ))
        {
            let m = self.rooms[room][usize::try_from(seq.0 - 1).unwrap()].clone();
            return (m, true);
        }
        let entries = self.rooms.entry(room.clone()).or_default();
        let seq = Seq(entries.len() as u64 + 1);
        let ts = DateTime::<Utc>::from_timestamp_millis(log_ms() + seq.0 as i64).unwrap();
        let m = Message::new(
            room.clone(),
            seq,
            ts,
            user.clone(),
            body.into(),
            cid.map(Into::into),
        );
        entries.push(m.clone());
        if let Some(cid) = cid {
            self.ids.insert(
                (
                    room.clone(),
                    user.key().as_str().to_owned(),
                    cid.to_string(),
                ),
                seq,
            );
        }
        (m, false)
    }

    /// One server's user entering or leaving; the announcement, if the count over all
    /// servers left or reached zero.
    fn presence(
        &mut self,
        room: &RoomName,
        node: usize,
        user: &UserName,
        entered: bool,
    ) -> Option<Announced> {
        let (pv, users) = self.presence.entry(room.clone()).or_default();
        let entry = users
            .entry(user.key())
            .or_insert_with(|| (user.clone(), BTreeMap::new()));
        let before: u64 = entry.1.values().sum();
        let mine = entry.1.entry(node).or_default();
        if entered {
            *mine += 1;
        } else if *mine > 0 {
            *mine -= 1;
        } else {
            return None;
        }
        let after: u64 = entry.1.values().sum();
        if after == 0 {
            users.remove(&user.key());
        }
        ((before == 0) != (after == 0)).then(|| {
            *pv += 1;
            Announced {
                pv: *pv,
                user: user.clone(),
                joined: after > 0,
                ts: DateTime::<Utc>::from_timestamp_millis(1_767_000_000_000).unwrap(),
            }
        })
    }

    /// `claim.lua`: the name is the holder's if it was free or already theirs.
    fn claim(&mut self, key: &str, holder: &str) -> bool {
        let held = self
            .names
            .entry(key.to_owned())
            .or_insert_with(|| holder.to_owned());
        held == holder
    }

    fn present(&self, room: &RoomName) -> (u64, Vec<UserName>) {
        self.presence.get(room).map_or((0, vec![]), |(pv, users)| {
            (*pv, users.values().map(|(u, _)| u.clone()).collect())
        })
    }

    /// What `read_latest` gives a server loading the room.
    fn load(&self, room: &RoomName) -> LoadedRoom {
        let floor = self.trimmed_below.get(room).copied().unwrap_or(Seq(1));
        let all = self.rooms.get(room).cloned().unwrap_or_default();
        let (pv, present) = self.present(room);
        LoadedRoom {
            last_seq: Seq(all.len() as u64),
            recent: all.into_iter().filter(|m| m.seq >= floor).collect(),
            complete: floor <= Seq(1),
            present,
            pv,
        }
    }

    fn after(&self, room: &RoomName, after: Seq) -> (Vec<Message>, Option<Seq>) {
        let floor = self.trimmed_below.get(room).copied().unwrap_or(Seq(1));
        let entries: Vec<Message> = self
            .rooms
            .get(room)
            .map(|e| {
                e.iter()
                    .filter(|m| m.seq > after && m.seq >= floor)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let gap = (after.next() < floor).then_some(floor);
        (entries, gap)
    }
}

/// Several servers, one log, and the doorbells on their way to each server.
struct Cluster {
    nodes: Vec<Sim>,
    log: Log,
    bells: Vec<VecDeque<Message>>,
    /// Presence announcements on their way to each server.
    pbells: Vec<VecDeque<(RoomName, Announced)>>,
    /// The token each user was first welcomed with, which its sessions on other
    /// servers present (as a client with the token from `welcome` does).
    tokens: BTreeMap<String, String>,
    /// Servers that lost a doorbell: in the real broker that only happens with a lost
    /// subscription, and a remade subscription is followed by a catch-up.
    lost: Vec<bool>,
}

fn config() -> Config {
    // Flood control out of the way: the scenarios send fast.
    let fast = chat_core::Rate {
        burst: 10_000,
        per_second: 10_000,
    };
    Config {
        cluster: true,
        send_rate: fast,
        frame_rate: fast,
        ..Config::default()
    }
}

impl Cluster {
    fn new(n: usize) -> Cluster {
        Cluster::with(n, config())
    }

    fn with(n: usize, config: Config) -> Cluster {
        Cluster {
            nodes: (0..n)
                .map(|i| {
                    Sim::with(Config {
                        node: i as u64 + 1,
                        ..config.clone()
                    })
                })
                .collect(),
            log: Log::default(),
            bells: vec![VecDeque::new(); n],
            pbells: vec![VecDeque::new(); n],
            tokens: BTreeMap::new(),
            lost: vec![false; n],
        }
    }

    /// Commits every append the servers asked for, in the order asked, answers each
    /// server, and queues the doorbell for every server (the author's too).
    fn commit_all(&mut self) {
        for n in 0..self.nodes.len() {
            let asked = std::mem::take(&mut self.nodes[n].appends);
            for (room, ticket, user, body, cid, detail) in asked {
                let (m, duplicate) = match self.log.commit(
                    &room,
                    &user,
                    &body,
                    cid.as_deref(),
                    &detail.map(|d| *d).unwrap_or_default(),
                ) {
                    Ok(done) => done,
                    Err((code, why)) => {
                        self.nodes[n].input(Input::Appended {
                            room,
                            ticket,
                            result: Err(StoreError::Refused(code, why)),
                        });
                        continue;
                    }
                };
                if !duplicate {
                    // The doorbell carries the entry as committed.
                    let mut bell = m.clone();
                    if bell.kind.is_message() {
                        bell.rev = None;
                    }
                    for b in &mut self.bells {
                        b.push_back(bell.clone());
                    }
                }
                self.nodes[n].input(Input::Appended {
                    room,
                    ticket,
                    result: Ok(Appended {
                        seq: m.seq,
                        ts: m.ts,
                        duplicate,
                    }),
                });
            }
        }
    }

    /// Counts every presence change the servers asked for and queues the announcements.
    fn presence_all(&mut self) {
        for n in 0..self.nodes.len() {
            let asked = std::mem::take(&mut self.nodes[n].presence);
            for (room, user, entered) in asked {
                if let Some(a) = self.log.presence(&room, n, &user, entered) {
                    for b in &mut self.pbells {
                        b.push_back((room.clone(), a.clone()));
                    }
                }
            }
        }
    }

    /// Rings every queued presence announcement at server `n`, but drops `lose` of them.
    fn ring_presence(&mut self, n: usize, lose: usize) {
        let mut lost = 0;
        while let Some((room, announced)) = self.pbells[n].pop_front() {
            if lost < lose {
                lost += 1;
                continue;
            }
            self.nodes[n].input(Input::Presence { room, announced });
        }
    }

    /// Answers presence snapshot requests.
    fn answer_presence_fetches(&mut self) {
        for n in 0..self.nodes.len() {
            while !self.nodes[n].presence_fetches.is_empty() {
                let room = self.nodes[n].presence_fetches.remove(0);
                let (pv, users) = self.log.present(&room);
                self.nodes[n].input(Input::PresenceSnapshot { room, pv, users });
            }
        }
    }

    /// The member list server `n` shows for a room.
    fn members(&self, n: usize, room: &str) -> Vec<String> {
        let room = RoomName::parse(room, 64, 32).unwrap();
        self.nodes[n]
            .server
            .members(&room)
            .unwrap_or_default()
            .iter()
            .map(|u| u.as_str().to_owned())
            .collect()
    }

    /// Rings up to `k` queued doorbells at server `n`.
    fn ring(&mut self, n: usize, k: usize) {
        for _ in 0..k {
            let Some(m) = self.bells[n].pop_front() else {
                return;
            };
            self.nodes[n].input(Input::RoomLog {
                room: m.room.clone(),
                messages: vec![m],
                gap_before: None,
                fetched: false,
            });
        }
    }

    /// Answers every room load from the log.
    fn answer_loads(&mut self) {
        for n in 0..self.nodes.len() {
            while !self.nodes[n].room_loads.is_empty() {
                let room = self.nodes[n].room_loads.remove(0);
                let loaded = self.log.load(&room);
                self.nodes[n].input(Input::RoomLoaded {
                    room,
                    result: Ok(loaded),
                });
            }
        }
    }

    /// Answers every name reservation from the log.
    fn answer_claims(&mut self) {
        for n in 0..self.nodes.len() {
            for (session, key, holder) in std::mem::take(&mut self.nodes[n].name_claims) {
                let held = self.log.claim(&key, &holder);
                self.nodes[n].input(Input::NameClaimed {
                    session,
                    result: Ok(held),
                });
            }
        }
    }

    /// Says hello on server `n` as `name`, with the user's token if it was welcomed
    /// before (the same user's session on another server), and has its name reserved.
    fn hello_at(&mut self, n: usize, s: u64, name: &str) {
        let token = self.tokens.get(name).cloned();
        self.nodes[n].hello_as(s, name, token.as_deref());
        self.answer_claims();
        let token = self.nodes[n].token_of(s);
        self.tokens.entry(name.to_owned()).or_insert(token);
    }

    /// Says hello on server `n` (its default room is loaded from the log) and lets
    /// the presence it causes settle.
    fn hello(&mut self, n: usize, s: u64, name: &str) {
        self.hello_at(n, s, name);
        self.answer_loads();
        self.presence_all();
        for m in 0..self.nodes.len() {
            self.ring_presence(m, 0);
        }
    }

    /// Answers every fetch from the log.
    fn answer_fetches(&mut self) {
        for n in 0..self.nodes.len() {
            while !self.nodes[n].fetches.is_empty() {
                let (room, after) = self.nodes[n].fetches.remove(0);
                let (messages, gap_before) = self.log.after(&room, after);
                self.nodes[n].input(Input::RoomLog {
                    room,
                    messages,
                    gap_before,
                    fetched: true,
                });
            }
        }
    }

    /// Loses the next doorbell on its way to server `n`.
    fn lose(&mut self, n: usize) {
        if self.bells[n].pop_front().is_some() {
            self.lost[n] = true;
        }
    }

    /// Everything settles: appends committed, doorbells rung, servers that lost one
    /// caught up (their subscription was remade), fetches answered.
    fn settle(&mut self) {
        for _ in 0..100 {
            self.commit_all();
            for n in 0..self.nodes.len() {
                self.ring(n, usize::MAX);
                if std::mem::take(&mut self.lost[n]) {
                    self.nodes[n].input(Input::CatchUp { room: None });
                }
            }
            self.answer_fetches();
            self.answer_loads();
            self.presence_all();
            for n in 0..self.nodes.len() {
                self.ring_presence(n, 0);
            }
            self.answer_presence_fetches();
            if self
                .nodes
                .iter()
                .all(|s| s.appends.is_empty() && s.fetches.is_empty() && s.room_loads.is_empty())
                && self.bells.iter().all(VecDeque::is_empty)
                && self.pbells.iter().all(VecDeque::is_empty)
                && self
                    .nodes
                    .iter()
                    .all(|s| s.presence.is_empty() && s.presence_fetches.is_empty())
            {
                return;
            }
        }
        panic!("the cluster did not settle");
    }
}

fn send(sim: &mut Sim, s: u64, id: u64, body: &str, cid: Option<&str>) {
    let mut f = json!({"type": "send", "id": id, "room": "general", "body": body});
    if let Some(cid) = cid {
        f["client_id"] = json!(cid);
    }
    sim.say(s, f);
}

/// A history page: its seqs, `has_more`, `gap` and `first_seq`.
type HistoryPage = (Vec<u64>, bool, bool, Option<Seq>);

/// Asks for a history page of `room` as session `s` of server `node` and returns it.
fn history_page(c: &mut Cluster, node: usize, s: u64, room: &str) -> HistoryPage {
    c.nodes[node].say(
        s,
        json!({"type": "history", "id": 900, "room": room, "limit": 50}),
    );
    c.settle();
    c.nodes[node]
        .take(s)
        .into_iter()
        .find_map(|f| match f {
            ServerFrame::History {
                messages,
                has_more,
                gap,
                first_seq,
                ..
            } => Some((
                messages.iter().map(|m| m.seq.0).collect::<Vec<_>>(),
                has_more,
                gap,
                first_seq,
            )),
            _ => None,
        })
        .expect("a history page")
}

/// Frames a session got after its welcome and joined, as compact strings.
fn seen(sim: &mut Sim, s: u64) -> Vec<String> {
    sim.take(s)
        .into_iter()
        .filter_map(|f| match f {
            ServerFrame::Message(m) => Some(format!("m{}:{}", m.seq.0, m.body)),
            ServerFrame::Ack {
                seq, duplicate, id, ..
            } => Some(format!(
                "ack{}#{}{}",
                seq.0,
                id.map_or(0, |i| i.0),
                if duplicate { " dup" } else { "" }
            )),
            ServerFrame::Joined {
                gap: true,
                last_seq,
                ..
            } => Some(format!("gap..{}", last_seq.0)),
            ServerFrame::Error { code, .. } => Some(format!("error {code:?}")),
            _ => None,
        })
        .collect()
}

/// Two servers, one user on each, sending in turn: both see one history.
#[test]
fn two_servers_deliver_one_history_in_seq_order_and_ack_after_the_message() {
    let mut c = Cluster::new(2);
    c.hello(0, 1, "alice");
    c.hello(1, 2, "bob");
    c.nodes[0].clear();
    c.nodes[1].clear();
    send(&mut c.nodes[0], 1, 1, "hi from a", None);
    send(&mut c.nodes[1], 2, 1, "hi from b", None);
    send(&mut c.nodes[0], 1, 2, "again a", None);
    // Nothing is delivered before the log answered.
    assert!(seen(&mut c.nodes[0], 1).is_empty());
    c.settle();
    assert_eq!(
        seen(&mut c.nodes[0], 1),
        [
            "m1:hi from a",
            "ack1#1",
            "m2:again a",
            "ack2#2",
            "m3:hi from b"
        ]
    );
    assert_eq!(
        seen(&mut c.nodes[1], 2),
        ["m1:hi from a", "m2:again a", "m3:hi from b", "ack3#1"]
    );
    for n in &c.nodes {
        n.assert_no_violations();
    }
}

/// A server whose doorbell for seq 2 never came fetches it when seq 3 arrives.
#[test]
fn a_missed_doorbell_is_fetched_from_the_log() {
    let mut c = Cluster::new(2);
    c.hello(0, 1, "alice");
    c.hello(1, 2, "bob");
    c.nodes[1].clear();
    for i in 1..=3 {
        send(&mut c.nodes[0], 1, i, &format!("m{i}"), None);
    }
    c.commit_all();
    c.ring(1, 1);
    c.lose(1);
    c.ring(1, 1);
    assert_eq!(
        seen(&mut c.nodes[1], 2),
        ["m1:m1"],
        "3 is held until 2 is there"
    );
    assert_eq!(
        c.nodes[1].fetches,
        [(RoomName::parse("general", 64, 32).unwrap(), Seq(1))]
    );
    c.answer_fetches();
    assert_eq!(seen(&mut c.nodes[1], 2), ["m2:m2", "m3:m3"]);
    // A late duplicate of a doorbell changes nothing.
    let dup = c.log.rooms.values().next().unwrap()[1].clone();
    c.nodes[1].input(Input::RoomLog {
        room: dup.room.clone(),
        messages: vec![dup],
        gap_before: None,
        fetched: false,
    });
    assert!(seen(&mut c.nodes[1], 2).is_empty());
}

/// The last doorbell lost with nothing after it: nothing in the stream shows the gap,
/// so the broker's remade subscription asks for a catch-up, which reads the log.
#[test]
fn a_lost_last_doorbell_is_caught_up_after_resubscribing() {
    let mut c = Cluster::new(2);
    c.hello(0, 1, "alice");
    c.hello(1, 2, "bob");
    c.nodes[1].clear();
    send(&mut c.nodes[0], 1, 1, "anyone?", None);
    c.commit_all();
    c.lose(1);
    c.ring(1, usize::MAX);
    assert!(seen(&mut c.nodes[1], 2).is_empty());
    c.nodes[1].input(Input::CatchUp { room: None });
    c.answer_fetches();
    assert_eq!(seen(&mut c.nodes[1], 2), ["m1:anyone?"]);
    // A catch-up with nothing missing delivers nothing.
    c.nodes[1].input(Input::CatchUp { room: None });
    c.answer_fetches();
    assert!(seen(&mut c.nodes[1], 2).is_empty());
}

/// The author's own doorbell can beat the log's reply: the message is delivered once,
/// and the ack still comes after it.
#[test]
fn the_authors_doorbell_before_the_reply_delivers_once() {
    let mut c = Cluster::new(1);
    c.hello(0, 1, "alice");
    c.nodes[0].clear();
    send(&mut c.nodes[0], 1, 7, "quick", None);
    let (room, ticket, user, body, ..) = c.nodes[0].appends.remove(0);
    let (m, _) = c.log.append(&room, &user, &body, None);
    c.nodes[0].input(Input::RoomLog {
        room: room.clone(),
        messages: vec![m.clone()],
        gap_before: None,
        fetched: false,
    });
    c.nodes[0].input(Input::Appended {
        room,
        ticket,
        result: Ok(Appended {
            seq: m.seq,
            ts: m.ts,
            duplicate: false,
        }),
    });
    assert_eq!(seen(&mut c.nodes[0], 1), ["m1:quick", "ack1#7"]);
}

/// A client whose server died after the append resends through another server: the log
/// knows the client id, the message is not posted twice, the ack says duplicate.
#[test]
fn a_resend_through_another_server_is_acked_as_a_duplicate() {
    let mut c = Cluster::new(2);
    c.hello(0, 1, "alice");
    c.hello(1, 2, "bob");
    send(&mut c.nodes[0], 1, 1, "only once", Some("m-77"));
    // The append reached the log; server 0 dies before alice saw anything. Server 1 got
    // the doorbell.
    let (room, _, user, body, cid, _) = c.nodes[0].appends.remove(0);
    let (m, _) = c.log.append(&room, &user, &body, cid.as_deref());
    c.bells[1].push_back(m);
    c.ring(1, usize::MAX);
    // alice reconnects to server 1 with her token and resends with the same client id.
    c.hello(1, 3, "alice");
    c.nodes[1].clear();
    send(&mut c.nodes[1], 3, 9, "only once", Some("m-77"));
    c.settle();
    assert_eq!(seen(&mut c.nodes[1], 3), ["ack1#9 dup"]);
    assert!(
        seen(&mut c.nodes[1], 2).is_empty(),
        "bob saw it once, before"
    );
    assert_eq!(c.log.rooms.values().next().unwrap().len(), 1);
}

/// The log refused (Redis down): the sender is told to retry, nothing is delivered.
#[test]
fn a_failed_append_is_an_error_and_never_an_ack() {
    let mut c = Cluster::new(1);
    c.hello(0, 1, "alice");
    c.nodes[0].clear();
    send(&mut c.nodes[0], 1, 4, "lost?", None);
    let (room, ticket, ..) = c.nodes[0].appends.remove(0);
    c.nodes[0].input(Input::Appended {
        room,
        ticket,
        result: Err(StoreError::Unavailable("redis: connection refused".into())),
    });
    assert_eq!(
        seen(&mut c.nodes[0], 1),
        [format!("error {:?}", ErrorCode::StorageUnavailable)]
    );
}

/// A server so far behind that the log trimmed what it lacks tells its members so,
/// then goes on.
#[test]
fn a_trimmed_log_is_an_explicit_gap() {
    let mut c = Cluster::new(2);
    c.hello(0, 1, "alice");
    c.hello(1, 2, "bob");
    c.nodes[1].clear();
    for i in 1..=5 {
        send(&mut c.nodes[0], 1, i, &format!("m{i}"), None);
    }
    c.commit_all();
    c.ring(1, 1); // server 1 gets seq 1 only
    c.bells[1].clear(); // then loses its subscription
    let room = RoomName::parse("general", 64, 32).unwrap();
    c.log.trimmed_below.insert(room, Seq(4));
    send(&mut c.nodes[0], 1, 6, "m6", None);
    c.settle();
    assert_eq!(
        seen(&mut c.nodes[1], 2),
        ["m1:m1", "gap..3", "m4:m4", "m5:m5", "m6:m6"]
    );
}

/// The gap a trimmed log causes is a `joined` frame: a session that may not see the
/// room's presence gets it without the members, the others with them.
#[test]
fn a_trimmed_log_s_gap_shows_members_only_to_who_may_see_them() {
    let mut c = Cluster::new(2);
    c.nodes[1] = Sim::with(Config {
        node: 2,
        room_policy: Some(SharedPolicy::new(
            |who: &Identity, _: &RoomName, rules: Permissions| Permissions {
                presence: who.user != "bob",
                ..rules
            },
        )),
        ..config()
    });
    c.hello(0, 1, "alice");
    c.hello(1, 2, "bob");
    c.hello(1, 3, "carol");
    c.nodes[1].clear();
    for i in 1..=5 {
        send(&mut c.nodes[0], 1, i, &format!("m{i}"), None);
    }
    c.commit_all();
    c.ring(1, 1);
    c.bells[1].clear();
    let room = RoomName::parse("general", 64, 32).unwrap();
    c.log.trimmed_below.insert(room, Seq(4));
    send(&mut c.nodes[0], 1, 6, "m6", None);
    c.settle();
    let gap_members = |sim: &mut Sim, s: u64| {
        sim.take(s)
            .into_iter()
            .find_map(|f| match f {
                ServerFrame::Joined {
                    gap: true, members, ..
                } => Some(
                    members
                        .iter()
                        .map(|m| m.as_str().to_owned())
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .expect("a gap")
    };
    assert_eq!(gap_members(&mut c.nodes[1], 2), Vec::<String>::new());
    assert_eq!(gap_members(&mut c.nodes[1], 3), ["alice", "bob", "carol"]);
}

/// Shutdown waits for appends the log has not answered.
#[test]
fn shutdown_waits_for_the_log() {
    let mut c = Cluster::new(1);
    c.hello(0, 1, "alice");
    send(&mut c.nodes[0], 1, 1, "last words", None);
    let now = c.nodes[0].now;
    c.nodes[0].server.shutdown(now);
    c.nodes[0].drain();
    assert_eq!(c.nodes[0].drained, 0, "drained with an append outstanding");
    c.settle();
    assert_eq!(c.nodes[0].drained, 1);
    c.nodes[0].advance(Duration::from_secs(1));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random sends on three servers, doorbells rung in random order, some lost, some
    /// twice: at the end every session has the log, once, in order, and every send one ack.
    #[test]
    fn three_servers_converge_on_the_log(
        steps in proptest::collection::vec((0usize..3, 0u8..4, 0u8..3), 1..60),
    ) {
        let mut c = Cluster::new(3);
        let names = ["ann", "ben", "cat"];
        for (n, name) in names.iter().enumerate() {
            c.hello(n, n as u64 + 1, name);
            c.nodes[n].clear();
        }
        let mut sent = [0u64; 3];
        for (n, action, k) in steps {
            match action {
                0 | 1 => {
                    sent[n] += 1;
                    let body = format!("{}-{}", names[n], sent[n]);
                    send(&mut c.nodes[n], n as u64 + 1, sent[n], &body, None);
                }
                2 => c.commit_all(),
                _ => {
                    // Ring some; lose one now and then; repeat one now and then.
                    if k == 0 {
                        c.lose(n);
                    } else if k == 1 && let Some(m) = c.bells[n].front().cloned() {
                        c.bells[n].push_back(m);
                    }
                    c.ring(n, 2);
                    c.answer_fetches();
                }
            }
        }
        c.settle();
        let log: Vec<String> = c.log.rooms.values().flatten()
            .map(|m| format!("m{}:{}", m.seq.0, m.body)).collect();
        prop_assert_eq!(log.len() as u64, sent.iter().sum::<u64>());
        for (n, &sent_here) in sent.iter().enumerate() {
            let frames = seen(&mut c.nodes[n], n as u64 + 1);
            let messages: Vec<&String> = frames.iter().filter(|f| f.starts_with('m')).collect();
            prop_assert_eq!(messages.len(), log.len(), "server {}: {:?}", n, frames);
            for (got, want) in messages.iter().zip(&log) {
                prop_assert_eq!(*got, want);
            }
            let acks = frames.iter().filter(|f| f.starts_with("ack")).count() as u64;
            prop_assert_eq!(acks, sent_here);
            // Each ack follows its message.
            for (i, f) in frames.iter().enumerate() {
                if let Some(rest) = f.strip_prefix("ack") {
                    let seq = rest.split('#').next().unwrap();
                    let pos = frames.iter().position(|g| g.starts_with(&format!("m{seq}:"))).unwrap();
                    prop_assert!(pos < i, "ack before its message: {:?}", frames);
                }
            }
            c.nodes[n].assert_no_violations();
        }
    }
}

/// A server that does not hold a room loads it from the log before the join is
/// answered: a client resuming there gets the exact suffix after its cursor.
#[test]
fn a_resume_on_another_server_gets_the_exact_suffix() {
    let mut c = Cluster::new(2);
    c.hello(0, 1, "alice");
    for i in 1..=5 {
        send(&mut c.nodes[0], 1, i, &format!("m{i}"), None);
    }
    c.settle();
    // bob's first server is gone; he resumes on server 1, which never had the room.
    c.nodes[1].connect(2);
    c.nodes[1].say(
        2,
        json!({"type": "hello", "version": 1, "name": "bob", "rooms": [{"room": "general", "since": 3}]}),
    );
    c.answer_claims();
    assert_eq!(
        c.nodes[1].room_loads.len(),
        1,
        "the join waits for the room"
    );
    assert!(
        !c.nodes[1]
            .peek(2)
            .iter()
            .any(|f| matches!(f, ServerFrame::Joined { .. })),
        "no joined before the room is loaded"
    );
    c.answer_loads();
    let joined = c.nodes[1]
        .take(2)
        .into_iter()
        .find_map(|f| match f {
            ServerFrame::Joined {
                messages,
                gap,
                last_seq,
                ..
            } => Some((
                messages.iter().map(|m| m.seq.0).collect::<Vec<_>>(),
                gap,
                last_seq,
            )),
            _ => None,
        })
        .expect("joined");
    assert_eq!(joined, (vec![4, 5], false, Seq(5)));
    // And from then on it follows the room live.
    send(&mut c.nodes[0], 1, 6, "m6", None);
    c.settle();
    assert_eq!(seen(&mut c.nodes[1], 2), ["m6:m6"]);
}

/// The log could not be read: the join is refused with a retryable error, nothing else.
#[test]
fn a_room_the_log_cannot_give_is_a_retryable_error() {
    let mut c = Cluster::new(1);
    c.nodes[0].connect(1);
    c.nodes[0].say(
        1,
        json!({"type": "hello", "version": 1, "name": "alice", "rooms": []}),
    );
    c.answer_claims();
    c.nodes[0].clear();
    c.nodes[0].say(1, json!({"type": "join", "id": 3, "room": "general"}));
    let room = c.nodes[0].room_loads.remove(0);
    c.nodes[0].input(Input::RoomLoaded {
        room,
        result: Err(StoreError::Unavailable("redis: timed out".into())),
    });
    c.nodes[0].expect_error(1, ErrorCode::StorageUnavailable, Some(3));
    c.nodes[0].expect_nothing(1);
    // Asked again, it loads and joins.
    c.nodes[0].say(1, json!({"type": "join", "id": 4, "room": "general"}));
    c.answer_loads();
    assert!(matches!(c.nodes[0].take_one(1), ServerFrame::Joined { .. }));
}

/// Frames for a room that is loading wait with it, in order.
#[test]
fn frames_for_a_loading_room_keep_their_order() {
    let mut c = Cluster::new(1);
    c.nodes[0].connect(1);
    c.nodes[0].say(
        1,
        json!({"type": "hello", "version": 1, "name": "alice", "rooms": []}),
    );
    c.answer_claims();
    c.nodes[0].clear();
    c.nodes[0].say(1, json!({"type": "join", "id": 1, "room": "slow"}));
    c.nodes[0].say(
        1,
        json!({"type": "send", "id": 2, "room": "slow", "body": "first"}),
    );
    assert_eq!(c.nodes[0].room_loads.len(), 1, "one load for both");
    c.answer_loads();
    c.settle();
    let kinds: Vec<&str> = c.nodes[0]
        .take(1)
        .iter()
        .map(chat_core::testing::kind)
        .collect();
    assert_eq!(kinds, ["joined", "message", "ack"]);
}

/// Presence over servers: a user on another server is listed and announced once; a user
/// with sessions on two servers stays present until the last one leaves.
#[test]
fn presence_is_one_list_over_servers() {
    let mut c = Cluster::new(2);
    c.hello(0, 1, "alice");
    c.hello(1, 2, "bob");
    assert_eq!(c.members(0, "general"), ["alice", "bob"]);
    assert_eq!(c.members(1, "general"), ["alice", "bob"]);
    let kinds = |c: &mut Cluster, n: usize, s: u64| -> Vec<String> {
        c.nodes[n]
            .take(s)
            .into_iter()
            .filter_map(|f| match f {
                ServerFrame::UserJoined { user, .. } => Some(format!("+{user}")),
                ServerFrame::UserLeft { user, .. } => Some(format!("-{user}")),
                _ => None,
            })
            .collect()
    };
    assert_eq!(kinds(&mut c, 0, 1), ["+bob"], "alice hears of bob once");
    assert!(kinds(&mut c, 1, 2).is_empty(), "bob's joined listed alice");
    // bob opens a second tab on server 0: nobody is told.
    c.hello_at(0, 3, "bob");
    c.settle();
    assert!(kinds(&mut c, 0, 1).is_empty());
    // bob's tab on server 1 leaves: he is still in through server 0.
    c.nodes[1].say(2, json!({"type": "leave", "room": "general"}));
    c.settle();
    assert!(kinds(&mut c, 0, 1).is_empty(), "bob is still present");
    assert_eq!(c.members(0, "general"), ["alice", "bob"]);
    // And the other one: now he has left, once.
    c.nodes[0].say(3, json!({"type": "leave", "room": "general"}));
    c.settle();
    assert_eq!(kinds(&mut c, 0, 1), ["-bob"]);
    assert_eq!(c.members(0, "general"), ["alice"]);
    // Server 1 has nobody in the room any more (and no messages): it drops it and
    // stops listening to it.
    assert_eq!(c.nodes[1].room_unloads.len(), 1);
    assert!(c.members(1, "general").is_empty());
}

/// A missed announcement (a version skipped) is healed from a snapshot of the log.
#[test]
fn a_missed_presence_announcement_is_healed_from_a_snapshot() {
    let mut c = Cluster::new(2);
    c.hello(0, 1, "alice");
    c.hello_at(1, 2, "bob");
    c.answer_loads();
    c.hello_at(1, 3, "carol");
    c.presence_all();
    c.ring_presence(0, 1); // server 0 misses bob's announcement, gets carol's
    c.ring_presence(1, 0);
    assert_eq!(
        c.nodes[0].presence_fetches.len(),
        1,
        "version 3 after 1 asks for a snapshot"
    );
    c.answer_presence_fetches();
    assert_eq!(c.members(0, "general"), ["alice", "bob", "carol"]);
    let told: Vec<String> = c.nodes[0]
        .take(1)
        .into_iter()
        .filter_map(|f| match f {
            ServerFrame::UserJoined { user, .. } => Some(user.as_str().to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(told, ["bob", "carol"]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Users coming and going on three servers, announcements lost now and then: every
    /// server that holds the room ends up listing exactly who is in it somewhere.
    #[test]
    fn presence_converges_over_servers(
        steps in proptest::collection::vec((0usize..3, 0usize..2, 0u8..4), 1..40),
    ) {
        let mut c = Cluster::new(3);
        let names = ["ann", "ben"];
        // (server, user) → (session, in the room)
        let mut at: BTreeMap<(usize, usize), (u64, bool)> = BTreeMap::new();
        let mut next_sid = 1;
        for (n, u, op) in steps {
            match op {
                0 => match at.get(&(n, u)).copied() {
                    None => {
                        c.hello_at(n, next_sid, names[u]);
                        c.answer_loads();
                        at.insert((n, u), (next_sid, true));
                        next_sid += 1;
                    }
                    Some((sid, false)) => {
                        c.nodes[n].join(sid, "general");
                        c.answer_loads();
                        at.insert((n, u), (sid, true));
                    }
                    Some((_, true)) => {}
                },
                1 => {
                    if let Some((sid, true)) = at.get(&(n, u)).copied() {
                        c.nodes[n].say(sid, json!({"type": "leave", "room": "general"}));
                        at.insert((n, u), (sid, false));
                    }
                }
                2 => {
                    c.presence_all();
                    c.ring_presence(n, 1);
                }
                _ => {
                    c.presence_all();
                    c.ring_presence(n, 0);
                    c.answer_presence_fetches();
                }
            }
        }
        c.settle();
        // A lost last announcement shows no gap by itself: the broker's catch-up after
        // a remade subscription reads a snapshot of every room it holds.
        for n in 0..3 {
            if let Some(room) = RoomName::parse("general", 64, 32).ok()
                && c.nodes[n].server.members(&room).is_some()
            {
                let (pv, users) = c.log.present(&room);
                c.nodes[n].input(Input::PresenceSnapshot { room, pv, users });
            }
        }
        let truth: Vec<String> = names
            .iter()
            .enumerate()
            .filter(|(u, _)| at.iter().any(|((_, uu), (_, inside))| uu == u && *inside))
            .map(|(_, name)| name.to_string())
            .collect();
        for n in 0..3 {
            let room = RoomName::parse("general", 64, 32).unwrap();
            if c.nodes[n].server.members(&room).is_some() {
                prop_assert_eq!(c.members(n, "general"), truth.clone(), "server {}", n);
            }
            c.nodes[n].assert_no_violations();
        }
    }
}

/// Lean frames hold in cluster mode too: a message's client id goes to its author's
/// sessions only, on every server.
#[test]
fn only_the_authors_sessions_get_the_client_id_on_every_server() {
    let mut c = Cluster::new(2);
    c.hello(0, 1, "alice");
    c.hello(1, 2, "bob");
    c.nodes[0].clear();
    c.nodes[1].clear();
    send(&mut c.nodes[0], 1, 1, "mine", Some("c-1"));
    c.settle();
    let raw = |c: &Cluster, n: usize, s: u64| -> String {
        c.nodes[n].raw[&chat_core::SessionId(s)]
            .iter()
            .find(|t| t.contains(r#""type":"message""#))
            .cloned()
            .expect("a message frame")
    };
    assert!(raw(&c, 0, 1).contains(r#""client_id":"c-1""#));
    assert!(!raw(&c, 1, 2).contains("client_id"), "{}", raw(&c, 1, 2));
}

/// A name is one user's on every server: a stranger on another server is refused it, and
/// the same user (its token) is welcomed there as itself.
#[test]
fn a_name_is_held_over_servers() {
    let mut c = Cluster::new(2);
    c.hello(0, 1, "alice");
    let token = c.nodes[0].token_of(1);
    // A stranger asks for alice on server 1, where nobody holds her.
    c.nodes[1].hello_as(2, "alice", None);
    assert_eq!(c.nodes[1].name_claims.len(), 1, "server 1 asks the log");
    assert!(c.nodes[1].peek(2).is_empty(), "no answer before the log's");
    c.answer_claims();
    c.nodes[1].expect_error(2, ErrorCode::NameTaken, None);
    // Nor may a look-alike of her name pass for her (Cyrillic а, and a zero for an o).
    c.nodes[1].say(
        2,
        json!({"type": "hello", "version": 1, "name": "\u{430}lice"}),
    );
    c.answer_claims();
    c.nodes[1].expect_error(2, ErrorCode::NameTaken, None);
    // The stranger stays connected and takes another name.
    c.nodes[1].say(2, json!({"type": "hello", "version": 1, "name": "mallory"}));
    c.answer_claims();
    assert_ne!(c.nodes[1].token_of(2), token);
    // alice's second tab, on server 1, proves her with the token: the same user.
    c.nodes[1].hello_as(3, "alice", Some(&token));
    c.answer_claims();
    assert_eq!(c.nodes[1].token_of(3), token);
}

/// Two servers never mint the same token: a token from one is no key to a name another
/// server gave someone else later.
#[test]
fn servers_mint_different_tokens() {
    let mut c = Cluster::new(2);
    c.hello_at(0, 1, "alice");
    let first = c.nodes[0].token_of(1);
    // The same name, the first claim on server 1 as well (the log forgot alice's).
    c.log.names.clear();
    c.nodes[1].hello_as(2, "alice", None);
    c.answer_claims();
    assert_ne!(c.nodes[1].token_of(2), first);
}

/// The log could not be asked: the hello gets a retryable error, and a retry works.
#[test]
fn a_claim_the_log_cannot_answer_is_a_retryable_error() {
    let mut c = Cluster::new(1);
    c.nodes[0].hello_as(1, "alice", None);
    let (session, _, _) = c.nodes[0].name_claims.remove(0);
    c.nodes[0].input(Input::NameClaimed {
        session,
        result: Err(StoreError::Unavailable("redis: timed out".into())),
    });
    c.nodes[0].expect_error(1, ErrorCode::StorageUnavailable, None);
    assert!(c.nodes[0].closed.is_empty(), "the session stays");
    c.nodes[0].say(1, json!({"type": "hello", "version": 1, "name": "alice"}));
    c.answer_claims();
    c.nodes[0].token_of(1);
}

/// A user gone from a server for good (grace period over) is released there, once.
#[test]
fn a_user_gone_for_good_releases_the_name() {
    let mut c = Cluster::new(1);
    c.hello(0, 1, "alice");
    c.nodes[0].disconnect(1);
    assert!(
        c.nodes[0].name_releases.is_empty(),
        "held in the grace period"
    );
    c.nodes[0].advance(Duration::from_secs(60));
    assert_eq!(c.nodes[0].name_releases, ["alice"]);
}

/// A single server (no cluster) holds names itself: nothing is reserved in or released
/// from a log when a user comes and goes for good.
#[test]
fn a_single_server_neither_reserves_nor_releases_names() {
    let mut sim = Sim::new();
    sim.hello(1, "alice");
    sim.disconnect(1);
    sim.advance(Duration::from_secs(60));
    sim.hello(2, "alice");
    assert!(sim.name_claims.is_empty(), "{:?}", sim.name_claims);
    assert!(sim.name_releases.is_empty(), "{:?}", sim.name_releases);
}

/// A new cluster epoch: every session is told to reconnect (1012), every room is
/// dropped to be read again, and a new hello sees the new epoch.
#[test]
fn an_epoch_change_closes_every_session_and_forgets_the_rooms() {
    let mut c = Cluster::new(1);
    c.hello(0, 1, "alice");
    c.hello(0, 2, "bob");
    send(&mut c.nodes[0], 1, 1, "before", None);
    c.settle();
    c.nodes[0].input(Input::EpochChanged { epoch: "e2".into() });
    let reasons: Vec<u16> = c.nodes[0].closed.values().map(|r| r.ws_code()).collect();
    assert_eq!(reasons, [1012, 1012]);
    assert_eq!(c.nodes[0].room_unloads.len(), 1);
    assert!(c.members(0, "general").is_empty());
    c.nodes[0].input(Input::EpochChanged { epoch: "e2".into() });
    assert_eq!(
        c.nodes[0].closed.len(),
        2,
        "the same epoch again changes nothing"
    );
    // alice comes back (with her token, within her grace period) under the new epoch,
    // and the room is read from the log again.
    c.hello(0, 3, "alice");
    let epoch = c.nodes[0]
        .peek(3)
        .iter()
        .find_map(|f| match f {
            ServerFrame::Welcome { epoch, .. } => Some(epoch.clone()),
            _ => None,
        })
        .expect("welcome");
    assert_eq!(epoch, "e2");
    assert!(!c.members(0, "general").is_empty());
}

/// The log handed out a seq this server already delivered as another message (it lost
/// entries): the server reports it, and the sender is refused, never acked at a seq its
/// readers know as something else.
#[test]
fn a_seq_handed_out_twice_is_reported_and_never_acked() {
    let mut c = Cluster::new(1);
    c.hello(0, 1, "alice");
    for i in 1..=3 {
        send(&mut c.nodes[0], 1, i, &format!("m{i}"), None);
    }
    c.settle();
    c.nodes[0].clear();
    // An async failover: the log lost seqs 2 and 3.
    let room = RoomName::parse("general", 64, 32).unwrap();
    c.log.rooms.get_mut(&room).unwrap().truncate(1);
    send(&mut c.nodes[0], 1, 4, "after the loss", None);
    c.commit_all();
    assert_eq!(c.nodes[0].regressions, [(room, Seq(2))]);
    c.nodes[0].expect_error(1, ErrorCode::StorageUnavailable, Some(4));
    assert!(seen(&mut c.nodes[0], 1).is_empty(), "no ack, no message");
}

/// Typing crosses servers (at most once, never stored): shown on the other server,
/// expiring there by itself, cleared by the typer's message so that typing again shows.
#[test]
fn typing_crosses_servers() {
    let mut c = Cluster::new(2);
    c.hello(0, 1, "alice");
    c.hello(1, 2, "bob");
    c.settle();
    c.nodes[1].clear();
    let typing = |c: &mut Cluster| -> Vec<String> {
        c.nodes[1]
            .take(2)
            .into_iter()
            .filter_map(|f| match f {
                ServerFrame::Typing { user, active, .. } => Some(format!("{user} {active}")),
                _ => None,
            })
            .collect()
    };
    let pass_on = |c: &mut Cluster| {
        for (room, user, active) in std::mem::take(&mut c.nodes[0].typings) {
            c.nodes[1].input(Input::Typing { room, user, active });
        }
    };
    c.nodes[0].say(
        1,
        json!({"type": "typing", "room": "general", "active": true}),
    );
    pass_on(&mut c);
    assert_eq!(typing(&mut c), ["alice true"]);
    // It expires on server 1 by itself, as a local one does.
    c.nodes[1].advance(Duration::from_secs(10));
    assert_eq!(typing(&mut c), ["alice false"]);
    c.nodes[0].advance(Duration::from_secs(10));
    c.nodes[0].say(
        1,
        json!({"type": "typing", "room": "general", "active": true}),
    );
    pass_on(&mut c);
    assert_eq!(typing(&mut c), ["alice true"]);
    // Her message ends it (bob's client clears it on the message); typing again shows.
    send(&mut c.nodes[0], 1, 1, "hi", None);
    c.settle();
    assert_eq!(seen(&mut c.nodes[1], 2), ["m1:hi"]);
    c.nodes[0].say(
        1,
        json!({"type": "typing", "room": "general", "active": true}),
    );
    pass_on(&mut c);
    assert_eq!(typing(&mut c), ["alice true"]);
    c.nodes[0].say(
        1,
        json!({"type": "typing", "room": "general", "active": false}),
    );
    pass_on(&mut c);
    assert_eq!(typing(&mut c), ["alice false"]);
}

/// A catch-up for one room (its subscription was remade, or a check found its log
/// ahead) reads that room's log only; the other rooms wait for their own.
#[test]
fn a_catch_up_for_one_room_reads_only_that_rooms_log() {
    let mut c = Cluster::new(2);
    c.hello(0, 1, "alice");
    c.hello(1, 2, "bob");
    c.nodes[0].join(1, "random");
    c.nodes[1].join(2, "random");
    c.settle();
    c.nodes[1].clear();
    send(&mut c.nodes[0], 1, 1, "in general", None);
    c.nodes[0].say(
        1,
        json!({"type": "send", "id": 2, "room": "random", "body": "in random"}),
    );
    c.commit_all();
    c.lose(1);
    c.lose(1);
    assert!(seen(&mut c.nodes[1], 2).is_empty());
    let room = |name: &str| RoomName::parse(name, 64, 32).unwrap();
    c.nodes[1].input(Input::CatchUp {
        room: Some(room("random")),
    });
    c.answer_fetches();
    assert_eq!(seen(&mut c.nodes[1], 2), ["m1:in random"]);
    c.nodes[1].input(Input::CatchUp {
        room: Some(room("general")),
    });
    c.answer_fetches();
    assert_eq!(seen(&mut c.nodes[1], 2), ["m1:in general"]);
}

/// A resend of a client id still waiting for the log waits with it (one append; the
/// resend's ack says duplicate), while another client id, or the same id from another
/// user, is a message of its own.
#[test]
fn a_resend_waiting_for_the_log_is_one_message_and_other_ids_are_not() {
    let mut c = Cluster::new(1);
    c.hello(0, 1, "alice");
    c.hello(0, 2, "bob");
    c.nodes[0].clear();
    send(&mut c.nodes[0], 1, 1, "one", Some("c-1"));
    send(&mut c.nodes[0], 1, 2, "one", Some("c-1"));
    send(&mut c.nodes[0], 1, 3, "two", Some("c-2"));
    send(&mut c.nodes[0], 2, 1, "bob's", Some("c-1"));
    assert_eq!(
        c.nodes[0].appends.len(),
        3,
        "the resend waits for the first append"
    );
    c.settle();
    assert_eq!(
        seen(&mut c.nodes[0], 1),
        [
            "m1:one",
            "ack1#1",
            "ack1#2 dup",
            "m2:two",
            "ack2#3",
            "m3:bob's"
        ]
    );
    assert_eq!(
        seen(&mut c.nodes[0], 2),
        ["m1:one", "m2:two", "m3:bob's", "ack3#1"]
    );
}

/// A direct message through a server that does not hold the conversation yet loads it
/// from the log first: what was said through another server before is history, not
/// delivered again as new messages.
#[test]
fn a_direct_room_is_loaded_before_its_first_message_on_a_server() {
    let mut c = Cluster::new(2);
    let dm = |c: &mut Cluster, n: usize, s: u64, id: u64, to: &str, body: &str| {
        c.nodes[n].say(s, json!({"type": "send", "id": id, "to": to, "body": body}));
        c.settle();
    };
    c.hello(0, 1, "alice");
    c.hello(0, 2, "bob");
    dm(&mut c, 0, 1, 1, "bob", "said on server 0");
    // Both open a tab on server 1 (anonymous names are known per server) and go on there.
    c.hello(1, 3, "alice");
    c.hello(1, 4, "bob");
    c.nodes[1].clear();
    dm(&mut c, 1, 3, 2, "bob", "said on server 1");
    assert_eq!(seen(&mut c.nodes[1], 3), ["m2:said on server 1", "ack2#2"]);
    assert_eq!(seen(&mut c.nodes[1], 4), ["m2:said on server 1"]);
}

/// What a server holds ahead of a hole when it learns the log was trimmed past the hole
/// is delivered, up to and including the last lost seq, before the gap.
#[test]
fn entries_held_up_to_a_trim_are_delivered_before_the_gap() {
    let mut c = Cluster::new(2);
    c.hello(0, 1, "alice");
    c.hello(1, 2, "bob");
    c.nodes[1].clear();
    for i in 1..=5 {
        send(&mut c.nodes[0], 1, i, &format!("m{i}"), None);
    }
    c.commit_all();
    c.ring(1, 1); // seq 1
    c.lose(1); // seq 2
    c.ring(1, 1); // seq 3: held, the log is asked for what follows 1
    c.bells[1].clear();
    let room = RoomName::parse("general", 64, 32).unwrap();
    c.log.trimmed_below.insert(room, Seq(4));
    // The answer: 4 and 5, and nothing below 4 any more.
    let (room, after) = c.nodes[1].fetches.remove(0);
    let (messages, gap_before) = c.log.after(&room, after);
    assert_eq!(gap_before, Some(Seq(4)));
    c.nodes[1].input(Input::RoomLog {
        room,
        messages,
        gap_before,
        fetched: true,
    });
    assert_eq!(
        seen(&mut c.nodes[1], 2),
        ["m1:m1", "m3:m3", "gap..3", "m4:m4", "m5:m5"]
    );
    c.settle();
    assert!(seen(&mut c.nodes[1], 2).is_empty());
    c.nodes[1].assert_no_violations();
}

/// A snapshot of presence older than what a server already shows (a late answer) changes
/// nothing: nobody is told that someone present left.
#[test]
fn a_stale_presence_snapshot_changes_nothing() {
    let mut c = Cluster::new(2);
    c.hello(0, 1, "alice");
    let room = RoomName::parse("general", 64, 32).unwrap();
    let (old_pv, old_users) = c.log.present(&room);
    c.hello(1, 2, "bob");
    c.settle();
    c.nodes[0].clear();
    assert_eq!(c.members(0, "general"), ["alice", "bob"]);
    c.nodes[0].input(Input::PresenceSnapshot {
        room,
        pv: old_pv,
        users: old_users,
    });
    assert_eq!(c.members(0, "general"), ["alice", "bob"]);
    c.nodes[0].expect_nothing(1);
}

/// A room the log holds nothing of is not made by loading it: where joins do not create
/// rooms, joining it is refused as on a single server.
#[test]
fn a_room_the_log_never_had_is_not_created_by_loading_it() {
    let mut c = Cluster::new(1);
    c.nodes[0] = Sim::with(Config {
        create_rooms_on_join: false,
        ..config()
    });
    c.nodes[0].connect(1);
    c.nodes[0].say(
        1,
        json!({"type": "hello", "version": 1, "name": "alice", "rooms": []}),
    );
    c.answer_claims();
    c.nodes[0].clear();
    c.nodes[0].say(1, json!({"type": "join", "id": 1, "room": "nowhere"}));
    assert_eq!(c.nodes[0].room_loads.len(), 1);
    c.settle();
    c.nodes[0].expect_error(1, ErrorCode::RoomNotFound, Some(1));
    assert_eq!(c.nodes[0].server.room_count(), 0);
}

/// A presence announcement older than what a server already applied (late, or rung
/// twice) changes nothing.
#[test]
fn an_old_presence_announcement_changes_nothing() {
    let mut c = Cluster::new(2);
    c.hello(0, 1, "alice");
    c.hello(1, 2, "bob");
    c.nodes[1].say(2, json!({"type": "leave", "room": "general"}));
    c.settle();
    c.nodes[0].clear();
    assert_eq!(c.members(0, "general"), ["alice"]);
    let room = RoomName::parse("general", 64, 32).unwrap();
    assert_eq!(c.log.present(&room).0, 3, "alice in, bob in, bob out");
    // bob's join again, version 2.
    c.nodes[0].input(Input::Presence {
        room,
        announced: Announced {
            pv: 2,
            user: UserName::parse("bob", 32).unwrap(),
            joined: true,
            ts: DateTime::<Utc>::from_timestamp_millis(1_767_000_000_000).unwrap(),
        },
    });
    assert_eq!(c.members(0, "general"), ["alice"]);
    c.nodes[0].expect_nothing(1);
}

/// One server in cluster mode, its log answered by hand: says hello as `name` (with
/// `token`), its name reserved; returns the reservation's holder (the token's hash).
fn claimed_hello(sim: &mut Sim, s: u64, name: &str, token: Option<&str>) -> String {
    sim.hello_as(s, name, token);
    let (session, _, holder) = sim.name_claims.pop().expect("a name claim");
    sim.input(Input::NameClaimed {
        session,
        result: Ok(true),
    });
    holder
}

/// Whether session `s` was refused request `id` with `forbidden`, among what it got.
fn forbidden(sim: &mut Sim, s: u64, id: u64) -> bool {
    sim.take(s).iter().any(|f| {
        matches!(f, ServerFrame::Error { id: Some(i), code: ErrorCode::Forbidden, .. } if i.0 == id)
    })
}

/// Answers the server's room loads: the room's moderation state first (as the broker
/// reads it before the room), then an empty room.
fn load_with(sim: &mut Sim, state: &[chat_core::ModerationChange]) {
    while !sim.room_loads.is_empty() {
        let room = sim.room_loads.remove(0);
        sim.input(Input::ModerationLoaded {
            room: room.clone(),
            result: Ok(state.to_vec()),
        });
        sim.input(Input::RoomLoaded {
            room,
            result: Ok(LoadedRoom {
                last_seq: Seq(0),
                recent: vec![],
                complete: true,
                present: vec![],
                pv: 0,
            }),
        });
    }
}

/// The shared moderation state is the truth in cluster mode: a read that brings a ban
/// the server never heard of takes the banned user's sessions here out of the room and
/// keeps them out; the ban binds the anonymous user who held the name (the holder the
/// log reserves the name with), so that user coming back with the token is refused
/// and the next holder of the freed name is not; a read answered after this server
/// changed the state itself is stale and changes nothing.
#[test]
fn the_logs_moderation_state_bans_here_and_binds_the_token_not_the_name() {
    let room = RoomName::parse("lobby", 64, 32).unwrap();
    let bob = UserName::parse("bob", 32).unwrap();
    let mut sim = Sim::with(config());
    let holder = claimed_hello(&mut sim, 1, "bob", None);
    let token = sim.token_of(1);
    sim.say(1, json!({"type": "join", "id": 1, "room": "lobby"}));
    load_with(&mut sim, &[]);
    sim.clear();
    // Every catch-up of all rooms asks for the state again; the answer bans bob.
    sim.input(Input::CatchUp { room: None });
    assert!(
        sim.moderation_fetches.contains(&room),
        "{:?}",
        sim.moderation_fetches
    );
    let ban = chat_core::ModerationChange::Ban {
        room: room.clone(),
        user: bob.clone(),
        until: None,
        holder: Some(holder.clone()),
    };
    sim.input(Input::ModerationLoaded {
        room: room.clone(),
        result: Ok(vec![ban.clone()]),
    });
    let frames = sim.take(1);
    assert!(
        frames
            .iter()
            .any(|f| matches!(f, ServerFrame::Left { room: r, .. } if *r == room)),
        "bob leaves the room: {frames:?}"
    );
    sim.say(1, json!({"type": "join", "id": 2, "room": "lobby"}));
    load_with(&mut sim, std::slice::from_ref(&ban));
    assert!(forbidden(&mut sim, 1, 2));
    // Bob goes; his name is freed here. He comes back with his token: still him,
    // still banned (the room is loaded again, with the state).
    sim.disconnect(1);
    sim.advance(Duration::from_secs(60));
    let again = claimed_hello(&mut sim, 2, "bob", Some(&token));
    assert_eq!(again, holder, "the same token, the same holder");
    sim.say(2, json!({"type": "join", "id": 3, "room": "lobby"}));
    load_with(&mut sim, std::slice::from_ref(&ban));
    assert!(
        forbidden(&mut sim, 2, 3),
        "bob with his token is still banned"
    );
    sim.disconnect(2);
    sim.advance(Duration::from_secs(60));
    // Someone else takes the freed name: another holder, not banned.
    let other = claimed_hello(&mut sim, 3, "bob", None);
    assert_ne!(other, holder);
    sim.say(3, json!({"type": "join", "id": 4, "room": "lobby"}));
    load_with(&mut sim, std::slice::from_ref(&ban));
    let frames = sim.take(3);
    assert!(
        frames
            .iter()
            .any(|f| matches!(f, ServerFrame::Joined { id: Some(i), .. } if i.0 == 4)),
        "the next holder of the name joins: {frames:?}"
    );
    // A read asked before this server's own change is stale: the host bans the new
    // bob here while the answer (without that ban) is on its way. (Alice keeps the
    // room in memory here, so nothing reloads it.)
    claimed_hello(&mut sim, 4, "alice", None);
    sim.say(4, json!({"type": "join", "id": 1, "room": "lobby"}));
    load_with(&mut sim, &[]);
    sim.input(Input::CatchUp { room: None });
    sim.server.ban(sim.now, "lobby", "bob", "", None).unwrap();
    sim.drain();
    sim.input(Input::ModerationLoaded {
        room: room.clone(),
        result: Ok(vec![]),
    });
    sim.clear();
    sim.say(3, json!({"type": "join", "id": 5, "room": "lobby"}));
    assert!(sim.room_loads.is_empty());
    assert!(
        forbidden(&mut sim, 3, 5),
        "the stale read did not lift the ban"
    );
}

/// What a client makes of the frames it got: each message by seq, with the change
/// entries applied to it (as the page and the CLI do), in the order they came.
fn view(frames: Vec<ServerFrame>, into: &mut BTreeMap<Seq, Message>) {
    let mut take = |m: Message| {
        if m.kind.is_message() {
            let mut m = m;
            m.client_id = None;
            match into.get(&m.seq) {
                // A message already held (a joined after live frames): its newer state wins.
                Some(old) if old.rev >= m.rev => {}
                _ => {
                    into.insert(m.seq, m);
                }
            }
        } else if m.kind == EntryKind::Erase {
            into.values_mut().for_each(|t| {
                t.apply(&m);
            });
        } else if let Some(t) = m.target.and_then(|t| into.get_mut(&t)) {
            t.apply(&m);
        }
    };
    for f in frames {
        match f {
            ServerFrame::Message(m) | ServerFrame::Change(m) => take((*m).clone()),
            ServerFrame::Joined { messages, .. } => {
                messages.into_iter().for_each(|m| take((*m).clone()))
            }
            _ => {}
        }
    }
}

/// A message's state as a short string: body, (edited), (deleted), reactions, reply.
fn state(m: &Message) -> String {
    let mut s = format!("{}:{}", m.seq.0, m.body);
    if m.edited_at.is_some() {
        s.push_str(" edited");
    }
    if m.deleted {
        s.push_str(" deleted");
    }
    for r in &m.reactions {
        let who: Vec<&str> = r.users.iter().map(|u| u.as_str()).collect();
        s.push_str(&format!(" {}={}", r.emoji, who.join("+")));
    }
    if let Some(r) = m.reply_to {
        s.push_str(&format!(" re{}", r.0));
    }
    s
}

fn states(view: &BTreeMap<Seq, Message>) -> Vec<String> {
    view.values().map(state).collect()
}

fn change(sim: &mut Sim, s: u64, id: u64, frame: serde_json::Value) {
    let mut f = frame;
    f["id"] = json!(id);
    f["room"] = json!("general");
    sim.say(s, f);
}

/// Edits, reactions, a reply and a delete made on one server reach the other live, in
/// the room's one seq order; a server that loads the room afterwards gives a joiner the
/// messages in their current state; a resume there gets the changes it missed.
#[test]
fn changes_cross_servers_and_a_later_joiner_sees_the_current_state() {
    let mut c = Cluster::new(3);
    c.hello(0, 1, "alice");
    c.hello(1, 2, "bob");
    let mut bob = BTreeMap::new();
    view(c.nodes[1].take(2), &mut bob);
    send(&mut c.nodes[0], 1, 1, "helo", None);
    send(&mut c.nodes[0], 1, 2, "second", None);
    c.settle();
    c.nodes[1].say(
        2,
        json!({"type": "send", "id": 3, "room": "general", "body": "re: helo", "reply_to": 1}),
    );
    c.settle();
    change(
        &mut c.nodes[0],
        1,
        4,
        json!({"type": "edit", "seq": 1, "body": "hello"}),
    );
    change(
        &mut c.nodes[0],
        1,
        5,
        json!({"type": "react", "seq": 2, "emoji": "👍", "on": true}),
    );
    c.settle();
    change(
        &mut c.nodes[1],
        2,
        6,
        json!({"type": "react", "seq": 1, "emoji": "🎉", "on": true}),
    );
    c.settle();
    // Bob's view after the edit and reactions, before alice deletes "second".
    let mut live = bob.clone();
    view(c.nodes[1].take(2), &mut live);
    assert_eq!(
        states(&live),
        [
            "1:hello edited 🎉=bob",
            "2:second 👍=alice",
            "3:re: helo re1"
        ]
    );
    // carol follows bob's view from here on, resuming on server 2 after seq 5.
    change(&mut c.nodes[0], 1, 7, json!({"type": "delete", "seq": 2}));
    c.settle();
    view(c.nodes[1].take(2), &mut live);
    assert_eq!(
        states(&live),
        ["1:hello edited 🎉=bob", "2: deleted", "3:re: helo re1"]
    );
    let errors: Vec<String> = seen(&mut c.nodes[0], 1)
        .into_iter()
        .filter(|s| s.starts_with("error"))
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    // dave joins on server 2, which never held the room: the current state.
    c.hello(2, 3, "dave");
    let mut dave = BTreeMap::new();
    view(c.nodes[2].take(3), &mut dave);
    assert_eq!(states(&dave), states(&live));
    // bob's second device resumes on server 2 after seq 4 (it had the three messages
    // as they were then): the changes it missed arrive and leave it where bob is.
    let mut device: BTreeMap<Seq, Message> = bob
        .iter()
        .filter(|(s, _)| s.0 <= 3)
        .map(|(s, m)| (*s, m.clone()))
        .collect();
    view(c.nodes[1].take(2), &mut BTreeMap::new());
    for m in c.log.rooms.values().next().unwrap().iter().take(3) {
        let mut m = m.clone();
        m.rev = None;
        m.body = ["helo", "second", "re: helo"][m.seq.0 as usize - 1].into();
        m.deleted = false;
        m.edited_at = None;
        m.reactions.clear();
        device.insert(m.seq, m);
    }
    c.nodes[2].connect(4);
    let token = c.tokens["bob"].clone();
    c.nodes[2].say(
        4,
        json!({"type": "hello", "version": 1, "name": "bob", "token": token, "rooms": [{"room": "general", "since": 3}]}),
    );
    c.answer_claims();
    c.settle();
    view(c.nodes[2].take(4), &mut device);
    assert_eq!(states(&device), states(&live));
}

/// The host erases alice on the server she is not on: the `erase` entry goes through
/// the log, both servers deliver it in seq order and apply it to their windows (her
/// messages tombstones, her reaction gone from bob's), the host's call is answered
/// with the entry, and a server that loads the room afterwards gives the tombstones.
#[test]
fn an_erase_goes_through_the_log_and_every_server_applies_it() {
    let mut c = Cluster::new(3);
    c.hello(0, 1, "alice");
    c.hello(1, 2, "bob");
    let mut alice = BTreeMap::new();
    view(c.nodes[0].take(1), &mut alice);
    send(&mut c.nodes[0], 1, 1, "mine", None);
    c.settle();
    send(&mut c.nodes[1], 2, 1, "bob's", None);
    c.settle();
    change(
        &mut c.nodes[0],
        1,
        2,
        json!({"type": "react", "seq": 2, "emoji": "👍", "on": true}),
    );
    change(
        &mut c.nodes[0],
        1,
        3,
        json!({"type": "edit", "seq": 1, "body": "mine, edited"}),
    );
    c.settle();
    view(c.nodes[0].take(1), &mut alice);
    assert_eq!(
        states(&alice),
        ["1:mine, edited edited", "2:bob's 👍=alice"]
    );
    let who = chat_core::UserName::parse("alice", 32).unwrap();
    let room = RoomName::parse("general", 64, 32).unwrap();
    c.nodes[1].input(Input::Erase {
        ticket: 77,
        room,
        user: who,
    });
    c.settle();
    let (ticket, result) = c.nodes[1].published.pop().expect("answered");
    assert_eq!(ticket, 77);
    let entry = result.expect("erased");
    assert_eq!((entry.seq, entry.kind), (Seq(5), EntryKind::Erase));
    let want = ["1: deleted", "2:bob's"];
    let mut bob = BTreeMap::new();
    view(c.nodes[1].take(2), &mut bob);
    view(c.nodes[0].take(1), &mut alice);
    assert_eq!(states(&alice), want);
    assert_eq!(states(&bob), want);
    // A server that loads the room afterwards: the tombstones.
    c.hello(2, 3, "carol");
    let mut carol = BTreeMap::new();
    view(c.nodes[2].take(3), &mut carol);
    assert_eq!(states(&carol), want);
    for n in &c.nodes {
        n.assert_no_violations();
    }
}

/// Two servers each accept a change to one message against their own window; the log
/// takes the first and refuses the second by the message's state at that moment: the
/// second author gets the rule's error (not a retry) and nothing changes.
#[test]
fn the_log_refuses_the_second_of_two_conflicting_changes() {
    let mut c = Cluster::new(2);
    c.hello(0, 1, "alice");
    c.hello_at(1, 2, "alice");
    c.answer_loads();
    c.hello(1, 3, "bob");
    send(&mut c.nodes[0], 1, 1, "oops", None);
    c.settle();
    c.nodes[0].clear();
    c.nodes[1].clear();
    // Both of alice's sessions act before either server hears of the other's change.
    change(&mut c.nodes[0], 1, 2, json!({"type": "delete", "seq": 1}));
    change(
        &mut c.nodes[1],
        2,
        3,
        json!({"type": "edit", "seq": 1, "body": "fixed"}),
    );
    assert_eq!(
        c.nodes[0].appends.len() + c.nodes[1].appends.len(),
        2,
        "{:?} {:?}",
        c.nodes[0].peek(1),
        c.nodes[1].peek(2)
    );
    c.settle();
    let second: Vec<String> = seen(&mut c.nodes[1], 2)
        .into_iter()
        .filter(|s| !s.starts_with('m'))
        .collect();
    assert_eq!(second, ["error Gone"]);
    let mut bob = BTreeMap::new();
    let room = RoomName::parse("general", 64, 32).unwrap();
    let log = &c.log.rooms[&room];
    assert_eq!(log.len(), 2, "the edit took no seq");
    view(c.nodes[1].take(3), &mut bob);
    c.hello(1, 4, "carol");
    view(c.nodes[1].take(4), &mut bob);
    assert_eq!(states(&bob), ["1: deleted"]);

    // The reaction limit is the log's too: with one emoji allowed, two servers' first
    // reactions with different emoji are one reaction and one `limit_reached`.
    let one = Config {
        max_reactions_per_message: 1,
        ..config()
    };
    let mut c = Cluster::with(2, one);
    c.hello(0, 1, "alice");
    c.hello(1, 2, "bob");
    send(&mut c.nodes[0], 1, 1, "vote", None);
    c.settle();
    c.nodes[0].clear();
    c.nodes[1].clear();
    change(
        &mut c.nodes[0],
        1,
        2,
        json!({"type": "react", "seq": 1, "emoji": "👍", "on": true}),
    );
    change(
        &mut c.nodes[1],
        2,
        3,
        json!({"type": "react", "seq": 1, "emoji": "👎", "on": true}),
    );
    c.settle();
    assert!(seen(&mut c.nodes[1], 2).contains(&"error LimitReached".to_owned()));
    assert_eq!(c.log.rooms[&room][0].reactions.len(), 1);
}

// ---- the change model over two servers ----

/// One step of a change run over two servers. Targets are picks, taken modulo the
/// room's last seq plus one (unknown seqs and change entries are named too).
#[derive(Debug, Clone)]
enum Step {
    Send {
        u: usize,
        reply: Option<u64>,
    },
    Edit {
        u: usize,
        target: u64,
    },
    Delete {
        u: usize,
        target: u64,
    },
    React {
        u: usize,
        target: u64,
        emoji: usize,
        on: bool,
    },
    /// Up to `k` doorbells reach server `n` (the others wait: it lags).
    Ring {
        n: usize,
        k: usize,
    },
    /// Server `n` loses its next doorbell (and reads the log when it resubscribes).
    Lose {
        n: usize,
    },
    /// The user's connection drops; it comes back on the other server, resuming
    /// after the last seq it saw (or joining afresh).
    Move {
        u: usize,
        resume: bool,
    },
}

const STEP_USERS: [&str; 3] = ["ann", "ben", "cat"];
const STEP_EMOJI: [&str; 3] = ["👍", "🎉", "🚀"];

fn step() -> impl Strategy<Value = Step> {
    let u = 0..STEP_USERS.len();
    prop_oneof![
        4 => (u.clone(), proptest::option::weighted(0.3, 0..64u64))
            .prop_map(|(u, reply)| Step::Send { u, reply }),
        3 => (u.clone(), 0..64u64).prop_map(|(u, target)| Step::Edit { u, target }),
        2 => (u.clone(), 0..64u64).prop_map(|(u, target)| Step::Delete { u, target }),
        4 => (u.clone(), 0..64u64, 0..STEP_EMOJI.len(), proptest::bool::weighted(0.7))
            .prop_map(|(u, target, emoji, on)| Step::React { u, target, emoji, on }),
        3 => (0..2usize, 0..4usize).prop_map(|(n, k)| Step::Ring { n, k }),
        1 => (0..2usize).prop_map(|n| Step::Lose { n }),
        1 => (u, any::<bool>()).prop_map(|(u, resume)| Step::Move { u, resume }),
    ]
}

/// A user of the change runs: where it is connected, and the room as it shows it.
struct Viewer {
    node: usize,
    session: u64,
    token: String,
    view: BTreeMap<Seq, Message>,
}

impl Cluster {
    /// Server `n` hears everything the log has (the other may still lag).
    fn catch_up(&mut self, n: usize) {
        for _ in 0..100 {
            self.ring(n, usize::MAX);
            if std::mem::take(&mut self.lost[n]) {
                self.nodes[n].input(Input::CatchUp { room: None });
            }
            self.answer_fetches();
            self.answer_loads();
            if self.nodes[n].fetches.is_empty() && self.bells[n].is_empty() {
                return;
            }
        }
        panic!("server {n} did not catch up");
    }

    /// Every viewer takes what it was sent; returns the frames answering request `id`.
    fn drain_views(&mut self, viewers: &mut [Viewer], id: u64) -> Vec<ServerFrame> {
        let mut answer = Vec::new();
        for v in viewers.iter_mut() {
            let mut frames = self.nodes[v.node].take(v.session);
            let (mine, rest): (Vec<_>, Vec<_>) = frames.drain(..).partition(|f| {
                matches!(f, ServerFrame::Ack { id: Some(i), .. } | ServerFrame::Error { id: Some(i), .. } if i.0 == id)
            });
            answer.extend(mine);
            view(rest, &mut v.view);
        }
        answer
    }
}

fn run_steps(steps: &[Step]) -> Result<(), TestCaseError> {
    use chat_core::testing::{ChangeModel, MessageView, Post};
    let cfg = Config {
        history_window: 1000,
        history_on_join: 1000,
        max_reactions_per_message: 2,
        ..config()
    };
    let mut c = Cluster::with(2, cfg);
    let mut model = ChangeModel::new(2);
    let mut viewers = Vec::new();
    let mut next_session = 1;
    for (u, name) in STEP_USERS.iter().enumerate() {
        let node = u % 2;
        c.hello(node, next_session, name);
        let token = c.nodes[node].token_of(next_session);
        viewers.push(Viewer {
            node,
            session: next_session,
            token,
            view: BTreeMap::new(),
        });
        next_session += 1;
        c.catch_up(0);
        c.catch_up(1);
    }
    c.drain_views(&mut viewers, 0);
    for (i, st) in steps.iter().enumerate() {
        let id = 1000 + i as u64;
        let last = model.last_seq();
        let pick = |t: u64| 1 + t % (last + 1);
        let (u, post) = match st {
            Step::Send { u, reply } => (
                *u,
                Post::Send {
                    body: format!("m{i}"),
                    reply_to: reply.map(pick),
                },
            ),
            Step::Edit { u, target } => (
                *u,
                Post::Edit {
                    target: pick(*target),
                    body: format!("e{i}"),
                },
            ),
            Step::Delete { u, target } => (
                *u,
                Post::Delete {
                    target: pick(*target),
                },
            ),
            Step::React {
                u,
                target,
                emoji,
                on,
            } => (
                *u,
                Post::React {
                    target: pick(*target),
                    emoji: STEP_EMOJI[*emoji].into(),
                    on: *on,
                },
            ),
            Step::Ring { n, k } => {
                c.ring(*n, *k);
                c.answer_fetches();
                c.drain_views(&mut viewers, 0);
                continue;
            }
            Step::Lose { n } => {
                c.lose(*n);
                continue;
            }
            Step::Move { u, resume } => {
                let v = &mut viewers[*u];
                c.nodes[v.node].disconnect(v.session);
                let to = 1 - v.node;
                let since = v.view.keys().next_back().map_or(0, |s| s.0);
                let mut spec = json!({"room": "general"});
                if *resume {
                    // The last seq it was given (a change entry's too).
                    spec["since"] = json!(since.max(v.last_seen()));
                } else {
                    v.view.clear();
                }
                c.nodes[to].connect(next_session);
                c.nodes[to].say(
                    next_session,
                    json!({"type": "hello", "version": 1, "name": STEP_USERS[*u], "token": v.token, "rooms": [spec]}),
                );
                v.node = to;
                v.session = next_session;
                next_session += 1;
                c.answer_claims();
                c.answer_loads();
                c.answer_fetches();
                c.drain_views(&mut viewers, 0);
                continue;
            }
        };
        // The author's server has heard the whole log (its check then agrees with the
        // log's); the other may lag behind.
        let n = viewers[u].node;
        c.catch_up(n);
        c.drain_views(&mut viewers, 0);
        let cid = format!("c{i}");
        let mut frame = match &post {
            Post::Send { body, reply_to } => {
                let mut f = json!({"type": "send", "body": body});
                if let Some(r) = reply_to {
                    f["reply_to"] = json!(r);
                }
                f
            }
            Post::Edit { target, body } => json!({"type": "edit", "seq": target, "body": body}),
            Post::Delete { target } => json!({"type": "delete", "seq": target}),
            Post::React { target, emoji, on } => {
                json!({"type": "react", "seq": target, "emoji": emoji, "on": on})
            }
        };
        frame["id"] = json!(id);
        frame["room"] = json!("general");
        frame["client_id"] = json!(cid);
        c.nodes[n].say(viewers[u].session, frame);
        c.commit_all();
        let want = model.post(STEP_USERS[u], &cid, &post);
        let answer = c.drain_views(&mut viewers, id);
        let got = match answer.as_slice() {
            [ServerFrame::Ack { seq, duplicate, .. }] => Ok((seq.0, *duplicate)),
            [ServerFrame::Error { code, .. }] => Err(*code),
            other => {
                return Err(TestCaseError::fail(format!(
                    "step {i} {st:?}: answered {other:?}"
                )));
            }
        };
        prop_assert_eq!(got, want, "step {} {:?}", i, st);
    }
    c.settle();
    c.drain_views(&mut viewers, 0);
    let truth = model.view();
    for (u, v) in viewers.iter().enumerate() {
        let shown: Vec<MessageView> = v.view.values().map(MessageView::of).collect();
        prop_assert_eq!(
            &shown,
            &truth,
            "{}'s view (on server {})",
            STEP_USERS[u],
            v.node
        );
    }
    Ok(())
}

impl Viewer {
    /// The last seq this viewer was given, as far as its view tells (messages only: a
    /// change entry after it is given again on resume, and applying it again changes
    /// nothing).
    fn last_seen(&self) -> u64 {
        self.view
            .values()
            .filter_map(|m| m.rev)
            .map(|s| s.0)
            .max()
            .unwrap_or(0)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// The change model over two servers: sends, replies, edits, deletes and reactions
    /// by users on either server, one server lagging behind the log (doorbells rung late,
    /// lost and read again), users moving to the other server (resuming or not). Every
    /// post is acked or refused as the model says; at the end every user's view of
    /// every message equals the model's.
    #[test]
    fn changes_over_two_servers_converge_to_the_model(
        steps in proptest::collection::vec(step(), 1..50)
    ) {
        run_steps(&steps)?;
    }
}

/// Read markers in cluster mode: a `read` is shared through the log (`ShareRead`), a
/// user's first session on a server asks for the user's markers (`LoadReadMarkers`),
/// and markers from the log move the user's marker here forward only, each told to the
/// user's sessions here as `read` and counted by `unread`.
#[test]
fn read_markers_are_shared_through_the_log() {
    let mut c = Cluster::new(2);
    c.hello(0, 1, "alice");
    assert_eq!(
        c.nodes[0]
            .read_marker_loads
            .iter()
            .map(|u| u.as_str())
            .collect::<Vec<_>>(),
        ["alice"],
        "the first session asks for the user's markers"
    );
    c.hello(1, 2, "bob");
    for i in 1..=3 {
        send(&mut c.nodes[1], 2, i, &format!("m{i}"), None);
    }
    c.settle();
    c.hello_at(1, 3, "alice");
    c.answer_loads();
    let loads: Vec<&str> = c.nodes[1]
        .read_marker_loads
        .iter()
        .map(|u| u.as_str())
        .collect();
    assert_eq!(loads, ["bob", "alice"], "each user's first session on 1");
    c.nodes[0].clear();
    c.nodes[1].clear();
    c.nodes[0].say(1, json!({"type": "read", "room": "general", "seq": 2}));
    let room = RoomName::parse("general", 64, 32).unwrap();
    let shared = std::mem::take(&mut c.nodes[0].shared_reads);
    assert_eq!(shared.len(), 1);
    assert_eq!(
        (&shared[0].0, shared[0].1.as_str(), shared[0].2),
        (&room, "alice", Seq(2))
    );
    // The log's announcement reaches server 1: alice's session there is told.
    let alice = UserName::parse("alice", 32).unwrap();
    c.nodes[1].input(Input::ReadMarkers {
        user: alice.clone(),
        markers: vec![(room.clone(), Seq(2))],
    });
    let reads = |sim: &mut Sim, s: u64| -> Vec<u64> {
        sim.take(s)
            .into_iter()
            .filter_map(|f| match f {
                ServerFrame::Read { seq, .. } => Some(seq.0),
                _ => None,
            })
            .collect()
    };
    assert_eq!(reads(&mut c.nodes[1], 3), [2]);
    let unread = |sim: &mut Sim, s: u64| -> Option<u64> {
        sim.say(s, json!({"type": "rooms", "id": 9}));
        sim.take(s).into_iter().find_map(|f| match f {
            ServerFrame::Rooms { rooms, .. } => Some(rooms[0].unread.unwrap_or(0)),
            _ => None,
        })
    };
    assert_eq!(unread(&mut c.nodes[1], 3), Some(1));
    // Forward only: an older marker (a late announcement, a stale load) changes nothing.
    c.nodes[1].input(Input::ReadMarkers {
        user: alice.clone(),
        markers: vec![(room.clone(), Seq(1))],
    });
    assert!(reads(&mut c.nodes[1], 3).is_empty());
    assert_eq!(unread(&mut c.nodes[1], 3), Some(1));
    // bob has no session of alice's: his marker is untouched, and nobody else is told.
    assert!(reads(&mut c.nodes[1], 2).is_empty());
    // A marker that does not move is not shared again.
    c.nodes[0].say(1, json!({"type": "read", "room": "general", "seq": 1}));
    assert!(c.nodes[0].shared_reads.is_empty());
}

/// Retention trimmed the log below seq 8 (`Input::Pruned`, from the trim's doorbell or a
/// catch-up): a server that held the room in its window lets go of what was trimmed, so
/// a history page that reaches it says the gap with the first kept seq, and a resume
/// from below it is a gap, not the trimmed messages from memory.
#[test]
fn a_server_holding_a_room_follows_a_retention_trim() {
    let mut c = Cluster::new(2);
    c.hello(0, 1, "alice");
    c.hello(1, 2, "bob");
    for i in 1..=10 {
        send(&mut c.nodes[0], 1, i, &format!("m{i}"), None);
    }
    c.settle();
    c.nodes[1].clear();
    let room = RoomName::parse("general", 64, 32).unwrap();
    c.log.trimmed_below.insert(room.clone(), Seq(8));
    c.nodes[1].input(Input::Pruned {
        room,
        first_kept: Seq(8),
    });
    let page = history_page(&mut c, 1, 2, "general");
    assert_eq!(page, (vec![8, 9, 10], false, true, Some(Seq(8))));
    // Bob leaves and resumes on server 1 from seq 2: the gap, and none of the trimmed
    // messages.
    c.nodes[1].say(2, json!({"type": "leave", "room": "general"}));
    c.nodes[1].say(
        2,
        json!({"type": "join", "id": 6, "room": "general", "since": 2}),
    );
    c.settle();
    let joined = c.nodes[1]
        .take(2)
        .into_iter()
        .find_map(|f| match f {
            ServerFrame::Joined { gap, messages, .. } => {
                Some((gap, messages.iter().map(|m| m.seq.0).collect::<Vec<_>>()))
            }
            _ => None,
        })
        .expect("joined");
    assert!(joined.0, "a resume below the trim is a gap: {joined:?}");
    assert!(joined.1.iter().all(|s| *s >= 8), "{joined:?}");
}

/// A server that has not delivered up to a trim yet lets go only of what it delivered;
/// its catch-up then reads the log and tells its members the gap (nothing is skipped
/// silently).
#[test]
fn a_trim_ahead_of_a_lagging_server_is_told_as_a_gap() {
    let mut c = Cluster::new(2);
    c.hello(0, 1, "alice");
    c.hello(1, 2, "bob");
    c.nodes[1].clear();
    for i in 1..=6 {
        send(&mut c.nodes[0], 1, i, &format!("m{i}"), None);
    }
    c.commit_all();
    c.ring(1, 1); // server 1 delivers seq 1 only
    c.bells[1].clear();
    let room = RoomName::parse("general", 64, 32).unwrap();
    c.log.trimmed_below.insert(room.clone(), Seq(5));
    c.nodes[1].input(Input::Pruned {
        room,
        first_kept: Seq(5),
    });
    c.nodes[1].input(Input::CatchUp { room: None });
    c.settle();
    assert_eq!(
        seen(&mut c.nodes[1], 2),
        ["m1:m1", "gap..4", "m5:m5", "m6:m6"]
    );
    // And its history says where the log starts now.
    let page = history_page(&mut c, 1, 2, "general");
    assert_eq!(page, (vec![5, 6], false, true, Some(Seq(5))));
}

/// Word of a trim about a room this server neither holds nor is loading (late, from
/// before the room left, perhaps from an older epoch) is not kept: the room's load says
/// where its log starts, and a log that starts at 1 has no gap.
#[test]
fn a_trim_word_for_a_room_not_held_here_is_not_applied_to_a_later_load() {
    let mut c = Cluster::new(2);
    c.hello(0, 1, "alice");
    c.hello(1, 2, "bob");
    c.nodes[0].say(1, json!({"type": "join", "id": 1, "room": "side"}));
    c.settle();
    for i in 1..=3 {
        c.nodes[0].say(
            1,
            json!({"type": "send", "id": 10 + i, "room": "side", "body": format!("s{i}")}),
        );
    }
    c.settle();
    let side = RoomName::parse("side", 64, 32).unwrap();
    c.nodes[1].input(Input::Pruned {
        room: side,
        first_kept: Seq(8),
    });
    c.nodes[1].say(2, json!({"type": "join", "id": 2, "room": "side"}));
    c.settle();
    c.nodes[1].clear();
    let page = history_page(&mut c, 1, 2, "side");
    assert_eq!(page, (vec![1, 2, 3], false, false, None));
}
