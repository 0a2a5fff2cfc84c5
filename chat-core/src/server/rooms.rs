//! A room: members, the recipients of its messages, its history window and its seq.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};

use super::kind::RoomKind;
use super::users::Users;
use crate::ids::{ClientMsgId, RequestId, RoomName, Seq, SessionId, UserKey, UserName};
use crate::protocol::{Encoded, Message};

/// A user's presence in a public room.
#[derive(Debug)]
pub(crate) struct Member {
    /// This user's sessions that are in the room.
    pub sessions: BTreeSet<SessionId>,
    /// Set when the last session disconnected: the user stays listed until then, so a
    /// page refresh does not announce a leave and a join.
    pub linger_until: Option<Instant>,
    /// The user's display name, taken when the member was added. It cannot change while
    /// the member exists: a member lingers no longer than its user's grace period (the
    /// linger timer fires first at the same instant), and a user keeps its name.
    pub name: UserName,
    /// The length of the name as JSON in the room's member list.
    json_len: usize,
}

/// A message as kept in the window: the shared message and its frame, encoded once (as
/// everyone but its author's sessions gets it: without `client_id`). A change to the
/// message drops the frame; it is encoded again when a `joined` next needs it, not per
/// change (a message edited and reacted to many times is encoded once per join).
#[derive(Debug, Clone)]
pub(crate) struct Posted {
    pub msg: Arc<Message>,
    frame: std::cell::OnceCell<Encoded>,
    /// [`resend_key`] of its author and client id: a resend is looked for by comparing
    /// these in place, without following each message's pointers.
    resend_key: u32,
}

impl Posted {
    /// A message by `author` and its frame.
    pub fn new(msg: Arc<Message>, frame: Encoded, author: &UserKey) -> Posted {
        let resend_key = msg
            .client_id
            .as_ref()
            .map_or(0, |id| resend_key(author, id));
        Posted {
            msg,
            frame: std::cell::OnceCell::from(frame),
            resend_key,
        }
    }

    /// The message's frame (as everyone but its author's sessions gets it).
    pub fn frame(&self) -> &Encoded {
        self.frame.get_or_init(|| Encoded::message(&self.msg))
    }

    /// The message as changed by `f`; its frame is encoded again when next needed.
    /// Returns what `f` returns.
    fn change<T>(&mut self, f: impl FnOnce(&mut Message) -> T) -> T {
        self.frame = std::cell::OnceCell::new();
        f(Arc::make_mut(&mut self.msg))
    }
}

/// A short hash of an author and a client id, never 0 (0 marks a message without one).
fn resend_key(author: &UserKey, id: &ClientMsgId) -> u32 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (author.as_str(), id.as_str()).hash(&mut h);
    let h = h.finish();
    (h ^ (h >> 32)) as u32 | 1
}

/// Who is waiting for a message's ack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Acker {
    Session(SessionId, Option<RequestId>),
    Host(u64),
}

/// A message with a seq, waiting for the store to confirm it (durable mode).
#[derive(Debug)]
pub(crate) struct Pending {
    pub posted: Posted,
    pub author: UserKey,
    pub committed: bool,
    pub ackers: Vec<Acker>,
}

/// A page of history out of the window, or the answer that the store must be asked.
pub(crate) enum Page {
    Memory {
        messages: Vec<Arc<Message>>,
        has_more: bool,
    },
    Store,
}

/// A room's cluster-mode state (its rules are in `cluster.rs`): posts waiting for the
/// log, entries that arrived ahead of a gap, acks waiting for their message's delivery,
/// and the log's presence.
#[derive(Debug, Default)]
pub(crate) struct Follower {
    pub next_ticket: u64,
    pub appending: BTreeMap<u64, Appending>,
    pub held: BTreeMap<Seq, Arc<Message>>,
    pub acks: BTreeMap<Seq, Vec<(Acker, bool)>>,
    pub fetching: bool,
    /// Who the log says is present (over all servers), as of presence version `pv`.
    pub present: BTreeMap<UserKey, UserName>,
    pub pv: u64,
    /// A presence snapshot was asked for (a version was skipped).
    pub presence_fetching: bool,
}

/// A post waiting for the shared log's answer: the entry without its seq and time.
#[derive(Debug)]
pub(crate) struct Appending {
    pub entry: Message,
    pub ackers: Vec<Acker>,
}

impl Follower {
    /// Whether anything waits for the log (shutdown waits for it).
    pub fn is_settled(&self) -> bool {
        self.appending.is_empty() && self.acks.is_empty()
    }
}

#[derive(Debug)]
pub(crate) struct Room {
    pub name: RoomName,
    pub kind: RoomKind,
    /// Users in a public room.
    members: BTreeMap<UserKey, Member>,
    /// The members' names as a JSON array in key order, as serde writes them in `joined`,
    /// kept current as members come and go: a join copies it instead of serializing
    /// every name again.
    members_json: Vec<u8>,
    /// Every session in a public room, in order: the recipients of its events. A sorted
    /// vector rather than a set: every event's [`Output::Broadcast`](super::Output::Broadcast)
    /// shares it, and it changes far less often (copied then only if an output still
    /// holds it).
    sessions: Arc<Vec<SessionId>>,
    /// Who is typing, until when.
    pub typing: BTreeMap<UserKey, Instant>,
    history: VecDeque<Posted>,
    /// Messages with seq ≤ floor are not in the window (evicted, or only in the store).
    floor: Seq,
    /// Durable mode: nothing below this seq is kept anywhere (retention pruned it);
    /// 0 when not known. When `floor` is below it, the window holds all there is.
    first_kept: Seq,
    /// The last seq handed out (including messages still pending in the store).
    pub last_seq: Seq,
    /// The last seq delivered to members.
    pub last_delivered: Seq,
    last_ts: DateTime<Utc>,
    pub pending: VecDeque<Pending>,
    /// Cluster mode: posts waiting for the shared log, entries ahead of a gap.
    pub cluster: Follower,
    /// Durable mode: the last post or join (the room leaves memory once idle long enough).
    pub touched: Option<Instant>,
    /// Durable mode: the instant of the room's armed unload timer, if one is armed.
    pub unload_at: Option<Instant>,
    /// Joined sessions whose user may not see presence here (`authz`): no
    /// `user_joined`/`user_left` or `presence` for them.
    pub blind: BTreeSet<SessionId>,
    /// The sessions of `sessions` that speak protocol version 1 (`user_joined` /
    /// `user_left`), and those that speak version 2 (`presence`), each in order.
    v1: Arc<Vec<SessionId>>,
    v2: Arc<Vec<SessionId>>,
    /// Version 2: the joins and leaves waiting for the room's presence tick.
    pub presence: Coalescer,
}

/// Version 2's presence: the changes of a room's member list since its last tick,
/// sent at the next one as one `presence` frame.
///
/// A user who came and went within a tick is in neither list, unless a version-2
/// session was handed the member list (a `joined`, a `members` page) between the two:
/// that session saw the user, so the tick says where the user ended up (to the others
/// that is a join or leave of what they already hold, which changes nothing).
#[derive(Debug, Default)]
pub(crate) struct Coalescer {
    changed: BTreeMap<UserKey, Change>,
    /// Numbers the changes, and the member lists handed out.
    clock: u64,
    /// The clock when a version-2 session was last handed a member list.
    listed: u64,
    /// The instant of the armed tick, if one is armed.
    pub due: Option<Instant>,
    /// Some version-2 session holds only part of the list (the room was above the
    /// threshold): when the room is back at or below it, the tick sends the whole list.
    pub partial: bool,
}

/// One user's presence change within a tick.
#[derive(Debug)]
struct Change {
    name: UserName,
    /// Present at the last tick.
    was: bool,
    /// Present now.
    now: bool,
    /// The clock at its latest change.
    at: u64,
    /// A member list showed a state between the last tick and now.
    seen: bool,
}

impl Coalescer {
    /// Notes that `name` is now present (or not); says whether a tick must be armed.
    pub fn note(&mut self, name: &UserName, present: bool) -> bool {
        self.clock += 1;
        let key = name.key();
        match self.changed.get_mut(&key) {
            Some(c) => {
                c.seen |= c.at <= self.listed;
                c.now = present;
                c.at = self.clock;
                c.name = name.clone();
                if !c.seen && c.was == c.now {
                    self.changed.remove(&key);
                }
            }
            None => {
                let change = Change {
                    name: name.clone(),
                    was: !present,
                    now: present,
                    at: self.clock,
                    seen: false,
                };
                self.changed.insert(key, change);
            }
        }
        self.due.is_none()
    }

    /// Whether a change of this user waits for the tick.
    pub fn has(&self, key: &UserKey) -> bool {
        self.changed.contains_key(key)
    }

    /// A version-2 session was handed the member list as it is now.
    pub fn listed(&mut self) {
        self.listed = self.clock;
    }

    /// The tick: who joined and who left since the last one, each in the order the
    /// changes happened (as version 1 announces them), forgotten.
    pub fn take(&mut self) -> (Vec<UserName>, Vec<UserName>) {
        let (mut joins, mut leaves) = (Vec::new(), Vec::new());
        let mut changed: Vec<Change> = std::mem::take(&mut self.changed).into_values().collect();
        changed.sort_unstable_by_key(|c| c.at);
        for c in changed {
            if c.now != c.was || c.seen {
                if c.now { &mut joins } else { &mut leaves }.push(c.name);
            }
        }
        (joins, leaves)
    }
}

/// Where the name of the member after `before` starts in the member list's JSON: after
/// `[` and each earlier name with its comma.
fn json_offset<'a>(before: impl Iterator<Item = &'a Member>) -> usize {
    1 + before.map(|m| m.json_len + 1).sum::<usize>()
}

impl Room {
    pub fn new(name: RoomName) -> Room {
        Room {
            kind: RoomKind::of(&name),
            name,
            members: BTreeMap::new(),
            members_json: b"[]".to_vec(),
            sessions: Arc::default(),
            typing: BTreeMap::new(),
            history: VecDeque::new(),
            floor: Seq(0),
            first_kept: Seq(0),
            last_seq: Seq(0),
            last_delivered: Seq(0),
            last_ts: DateTime::<Utc>::MIN_UTC,
            pending: VecDeque::new(),
            cluster: Follower::default(),
            touched: None,
            unload_at: None,
            blind: BTreeSet::new(),
            v1: Arc::default(),
            v2: Arc::default(),
            presence: Coalescer::default(),
        }
    }

    /// Number of users in the room (both users for a direct room).
    pub fn user_count(&self) -> usize {
        self.kind.direct_user_count().unwrap_or(self.members.len())
    }

    /// The room's members by display name: the public room's list, or a direct room's
    /// two users by their current names.
    pub fn member_list(&self, users: &Users) -> Vec<UserName> {
        debug_assert!(
            self.member_names()
                .all(|n| users.display_name(&n.key()) == *n),
            "a member's name is its user's display name"
        );
        self.kind.direct_members(users).unwrap_or_else(|| {
            if self.cluster.present.is_empty() {
                self.member_names().cloned().collect()
            } else {
                self.cluster_members().into_values().collect()
            }
        })
    }

    /// Cluster mode: who the log says is present, with this server's members (a joiner
    /// is listed before the log's announcement of it comes back), in key order.
    fn cluster_members(&self) -> BTreeMap<UserKey, UserName> {
        let mut all = self.cluster.present.clone();
        for (key, m) in &self.members {
            all.entry(key.clone()).or_insert_with(|| m.name.clone());
        }
        all
    }

    /// The sessions that receive the room's events.
    pub fn recipients(&self, users: &Users) -> Arc<Vec<SessionId>> {
        self.kind.recipients(&self.sessions, users)
    }

    /// The sessions of one user among the room's recipients.
    pub fn sessions_of<'a>(
        &'a self,
        key: &UserKey,
        users: &'a Users,
    ) -> Option<&'a BTreeSet<SessionId>> {
        self.kind
            .user_sessions(key, self.member(key).map(|m| &m.sessions), users)
    }

    /// A user's membership of this public room.
    pub fn member(&self, key: &UserKey) -> Option<&Member> {
        self.members.get(key)
    }

    /// A user's membership, to change its sessions or linger time (not its name).
    pub fn member_mut(&mut self, key: &UserKey) -> Option<&mut Member> {
        self.members.get_mut(key)
    }

    /// Adds a session of a user to the members (and the user, with the display name
    /// from `name`, if not a member yet); says whether the user was added. The user no
    /// longer lingers.
    pub fn add_member_session(
        &mut self,
        key: &UserKey,
        sid: SessionId,
        name: impl FnOnce() -> UserName,
    ) -> bool {
        let added = !self.members.contains_key(key);
        if added {
            let name = name();
            let mut json = Vec::with_capacity(name.as_str().len() + 3);
            serde_json::to_writer(&mut json, name.as_str()).expect("a string always serializes");
            let json_len = json.len();
            let at = if self.members.range(key..).next().is_some() {
                json.push(b','); // before the next name
                json_offset(self.members.range(..key).map(|(_, m)| m))
            } else {
                if !self.members.is_empty() {
                    json.insert(0, b','); // after the last name
                }
                self.members_json.len() - 1 // before `]`
            };
            self.members_json.splice(at..at, json);
            let member = Member {
                sessions: BTreeSet::new(),
                linger_until: None,
                name,
                json_len,
            };
            self.members.insert(key.clone(), member);
        }
        self.members.entry(key.clone()).and_modify(|m| {
            m.sessions.insert(sid);
            m.linger_until = None;
        });
        added
    }

    /// Removes a user from the member list.
    pub fn remove_member(&mut self, key: &UserKey) -> Option<Member> {
        let member = self.members.remove(key)?;
        let at = json_offset(self.members.range(..key).map(|(_, m)| m));
        let len = member.json_len;
        let range = if self.members.is_empty() {
            at..at + len
        } else if self.members.range(key..).next().is_some() {
            at..at + len + 1 // with the comma after it
        } else {
            at - 1..at + len // with the comma before it
        };
        self.members_json.drain(range);
        Some(member)
    }

    /// The display names of a public room's members, in key order.
    pub fn member_names(&self) -> impl Iterator<Item = &UserName> {
        self.members.values().map(|m| &m.name)
    }

    /// The names of a public room's members as a JSON array, byte for byte as serde
    /// writes the `Vec<UserName>` of [`member_names`](Self::member_names).
    pub fn members_json(&self) -> Cow<'_, [u8]> {
        if !self.cluster.present.is_empty() {
            let names: Vec<UserName> = self.cluster_members().into_values().collect();
            return Cow::Owned(serde_json::to_vec(&names).expect("names always serialize"));
        }
        debug_assert_eq!(
            self.members_json,
            serde_json::to_vec(&self.member_names().collect::<Vec<_>>()).expect("serializes"),
        );
        Cow::Borrowed(&self.members_json)
    }

    /// Adds a session that speaks protocol `version` to the room's recipients.
    pub fn add_session(&mut self, sid: SessionId, version: u32) {
        if let Err(i) = self.sessions.binary_search(&sid) {
            Arc::make_mut(&mut self.sessions).insert(i, sid);
        }
        let list = if version >= 2 {
            &mut self.v2
        } else {
            &mut self.v1
        };
        if let Err(i) = list.binary_search(&sid) {
            Arc::make_mut(list).insert(i, sid);
        }
    }

    /// Removes a session from the room's recipients.
    pub fn remove_session(&mut self, sid: SessionId) {
        for list in [&mut self.sessions, &mut self.v1, &mut self.v2] {
            if let Ok(i) = list.binary_search(&sid) {
                Arc::make_mut(list).remove(i);
            }
        }
        self.blind.remove(&sid);
    }

    /// The room's version-1 sessions (they get `user_joined` and `user_left`).
    pub fn v1_sessions(&self) -> &Arc<Vec<SessionId>> {
        &self.v1
    }

    /// The room's version-2 sessions (they get `presence`).
    pub fn v2_sessions(&self) -> &Arc<Vec<SessionId>> {
        &self.v2
    }

    /// Version 2: notes a change of `user`'s presence for the room's next tick (if it
    /// has version-2 sessions); the instant to arm the tick at, when none is armed.
    pub fn note_presence(
        &mut self,
        user: &UserName,
        present: bool,
        now: Instant,
        tick: std::time::Duration,
    ) -> Option<Instant> {
        let own = self.members.get(&user.key()).map(|m| &m.sessions);
        if self.v2.iter().all(|s| own.is_some_and(|o| o.contains(s)))
            && !self.presence.has(&user.key())
        {
            // Nobody to tell: no version-2 session, or only the user's own (whose
            // `joined` listed them), and no earlier change of theirs waits for the tick
            // (it must end where the user is now).
            return None;
        }
        if !self.presence.note(user, present) {
            return None;
        }
        let at = now + tick;
        self.presence.due = Some(at);
        Some(at)
    }

    /// How many users the room's member list shows (cluster mode: over all servers).
    pub fn presence_count(&self) -> usize {
        if self.cluster.present.is_empty() {
            self.members.len()
        } else {
            self.cluster_members().len()
        }
    }

    /// At most `limit` of the member list's names whose keys come after `after`, in
    /// key order, and whether more follow.
    pub fn member_page(&self, after: Option<&UserKey>, limit: usize) -> (Vec<UserName>, bool) {
        use std::ops::Bound::{Excluded, Unbounded};
        let from = after.map_or(Unbounded, Excluded);
        let mut page: Vec<UserName> = if self.cluster.present.is_empty() {
            self.members
                .range::<UserKey, _>((from, Unbounded))
                .map(|(_, m)| m.name.clone())
                .take(limit + 1)
                .collect()
        } else {
            self.cluster_members()
                .range::<UserKey, _>((from, Unbounded))
                .map(|(_, n)| n.clone())
                .take(limit + 1)
                .collect()
        };
        let more = page.len() > limit;
        page.truncate(limit);
        (page, more)
    }

    /// Whether the room holds nothing worth keeping: no members, no history, nothing pending.
    pub fn is_disposable(&self) -> bool {
        self.members.is_empty()
            && self.history.is_empty()
            && self.pending.is_empty()
            && self.cluster.is_settled()
            && self.last_seq == Seq(0)
    }

    /// Whether the room may leave memory now: nobody is in it (no joined session, no
    /// member lingering in the grace period), nothing waits for the store or the log,
    /// nobody is typing in it.
    pub fn is_idle(&self) -> bool {
        self.members.is_empty()
            && self.sessions.is_empty()
            && self.pending.is_empty()
            && self.typing.is_empty()
            && self.cluster.is_settled()
    }

    /// The next seq and a timestamp that never goes backwards within the room.
    pub fn stamp(&mut self, now: DateTime<Utc>) -> (Seq, DateTime<Utc>) {
        self.last_seq = self.last_seq.next();
        // Millisecond precision, as on the wire, so a stored and a live copy compare equal.
        let ms = now.timestamp_millis();
        let now = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or(now);
        self.last_ts = self.last_ts.max(now);
        (self.last_seq, self.last_ts)
    }

    /// The seq of the message `author` sent with client id `id`, if it is still pending
    /// or in the window. A scan of each message's 4-byte key, newest first, rather than a
    /// map beside the window: the map cost every room (most are quiet direct rooms)
    /// hundreds of bytes, the keys 4 bytes per message.
    pub fn lookup_client_id(&self, author: &UserKey, id: &ClientMsgId) -> Option<Seq> {
        let key = resend_key(author, id);
        let same = |p: &Posted| {
            p.resend_key == key
                && p.msg.client_id.as_ref() == Some(id)
                && p.msg.user.key() == *author
        };
        let pending = self.pending.iter().rev().map(|p| &p.posted);
        let delivered = self.history.iter().rev();
        pending
            .chain(delivered)
            .find(|p| same(p))
            .map(|p| p.msg.seq)
    }

    /// Appends a delivered message to the window, evicting the oldest beyond `window`.
    pub fn push_history(&mut self, posted: Posted, window: usize) {
        self.last_delivered = posted.msg.seq;
        self.history.push_back(posted);
        self.evict(window);
    }

    /// Loads the window after a restart: `recent` are the newest stored messages, oldest
    /// first; `complete` says the store holds nothing older.
    pub fn restore(&mut self, last_seq: Seq, recent: Vec<Message>, complete: bool, window: usize) {
        self.last_seq = self.last_seq.max(last_seq);
        self.last_delivered = self.last_delivered.max(last_seq);
        // Complete: nothing older is stored. (What retention pruned below it is told
        // apart by `prune`; a first seq above 1 alone may be a seq that never committed.)
        self.floor = match recent.first() {
            _ if complete => Seq(0),
            Some(first) => Seq(first.seq.0.saturating_sub(1)),
            None => last_seq,
        };
        for msg in recent {
            self.last_ts = self.last_ts.max(msg.ts);
            if !msg.kind.is_message() {
                // A store keeps messages in their current state (which has this change,
                // so applying it changes nothing); this holds the window right with one
                // that keeps only the entries.
                self.apply_change(&msg);
            }
            let msg = Arc::new(msg);
            let frame = Encoded::message(&msg);
            let author = msg.user.key();
            self.history.push_back(Posted::new(msg, frame, &author));
        }
        self.evict(window);
    }

    /// Cluster mode: the messages up to `lost` that are not delivered are gone from the
    /// log. The window is emptied (a resume from before `lost` must get `gap`, and pages
    /// come from the log) and delivery goes on after `lost`.
    pub fn cut(&mut self, lost: Seq) {
        self.history.clear();
        self.floor = lost;
        self.last_delivered = self.last_delivered.max(lost);
        self.last_seq = self.last_seq.max(lost);
    }

    /// Drops the oldest messages beyond `window` from memory.
    fn evict(&mut self, window: usize) {
        while self.history.len() > window {
            let Some(old) = self.history.pop_front() else {
                break;
            };
            self.floor = old.msg.seq;
        }
    }

    /// Applies a change entry to the message it targets, if the window holds it (see
    /// [`Message::apply`]), and encodes the message's frame again.
    pub fn apply_change(&mut self, change: &Message) {
        if change.kind == crate::protocol::EntryKind::Erase {
            self.apply_erase(change);
            return;
        }
        let Some(target) = change.target else {
            return;
        };
        let i = self.history.partition_point(|p| p.msg.seq < target);
        if let Some(p) = self.history.get_mut(i).filter(|p| p.msg.seq == target) {
            p.change(|m| m.apply(change));
        }
        if change.kind == crate::protocol::EntryKind::Delete {
            // A deleted message's text goes with it: its edits' bodies too.
            for p in self.history.range_mut(i..) {
                if p.msg.kind == crate::protocol::EntryKind::Edit
                    && p.msg.target == Some(target)
                    && !p.msg.body.is_empty()
                {
                    p.change(|m| m.body = Arc::from(""));
                }
            }
        }
    }

    /// An `erase` entry: every message of its user in the window before it becomes a
    /// tombstone, the user's reactions go, and the bodies of the user's edits too.
    fn apply_erase(&mut self, erase: &Message) {
        let who = erase.user.key();
        for p in self.history.iter_mut() {
            if p.msg.seq >= erase.seq {
                break;
            }
            let edit_text = p.msg.kind == crate::protocol::EntryKind::Edit
                && p.msg.user.key() == who
                && !p.msg.body.is_empty();
            if edit_text {
                p.change(|m| m.body = Arc::from(""));
            } else if p.msg.kind.is_message() {
                let touched = p.msg.user.key() == who
                    || p.msg
                        .reactions
                        .iter()
                        .any(|r| r.users.iter().any(|u| u.key() == who));
                if touched {
                    p.change(|m| m.apply(erase));
                }
            }
        }
    }

    /// The store's retention deleted every entry below `first_kept`: the window lets go
    /// of them, and a resume from before them is a gap (`after`), a page below them
    /// comes from the store (which says the gap).
    pub fn prune(&mut self, first_kept: Seq) {
        while self.history.front().is_some_and(|p| p.msg.seq < first_kept) {
            self.history.pop_front();
        }
        self.floor = self.floor.max(Seq(first_kept.0.saturating_sub(1)));
        self.first_kept = self.first_kept.max(first_kept);
    }

    /// The oldest seq kept anywhere, when entries below it are known to be gone: pruned
    /// by the store's retention, or (without a store) out of the window. `None`: nothing
    /// known to be gone.
    pub fn gone_below(&self, durable: bool) -> Option<Seq> {
        if self.first_kept > Seq(1) {
            Some(self.first_kept)
        } else if !durable && self.floor > Seq(0) {
            Some(self.floor.next())
        } else {
            None
        }
    }

    /// Whether a change waiting for the store deletes the message `target`.
    pub fn delete_pending(&self, target: Seq) -> bool {
        self.pending.iter().any(|p| {
            p.posted.msg.kind == crate::protocol::EntryKind::Delete
                && p.posted.msg.target == Some(target)
        })
    }

    /// The message (or entry) `seq`, if the window holds it.
    pub fn find(&self, seq: Seq) -> Option<&Arc<Message>> {
        let i = self.history.partition_point(|p| p.msg.seq < seq);
        self.history
            .get(i)
            .filter(|p| p.msg.seq == seq)
            .map(|p| &p.msg)
    }

    /// The latest `n` messages, oldest first.
    pub fn latest(&self, n: usize) -> std::collections::vec_deque::Iter<'_, Posted> {
        let start = self.history.len().saturating_sub(n);
        self.history.range(start..)
    }

    /// Exactly the messages after `since`, or `None` when the window no longer holds them all.
    pub fn after(&self, since: Seq) -> Option<std::collections::vec_deque::Iter<'_, Posted>> {
        if since > self.last_delivered || since < self.floor {
            return None;
        }
        let i = self.history.partition_point(|p| p.msg.seq <= since);
        Some(self.history.range(i..))
    }

    /// The newest `limit` messages before `before`, oldest first, from memory if it can.
    pub fn page(&self, before: Option<Seq>, limit: usize, durable: bool) -> Page {
        let end = before.unwrap_or(Seq(u64::MAX));
        let idx = self.history.partition_point(|p| p.msg.seq < end);
        let start = idx.saturating_sub(limit);
        // Older messages in the store: some left the window, and not because they were
        // pruned (then the window holds all that is kept).
        let older_elsewhere = self.floor > Seq(0) && end.0 > 1 && self.floor >= self.first_kept;
        if idx - start < limit && older_elsewhere && durable {
            return Page::Store;
        }
        let messages = self
            .history
            .range(start..idx)
            .map(|p| p.msg.clone())
            .collect();
        let has_more = start > 0 || (durable && older_elsewhere);
        Page::Memory { messages, has_more }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A resend is the same author's same client id. The 4-byte key the window keeps
    /// only narrows the search: two ids whose keys collide are two messages, or the
    /// second would be acked as a duplicate of the first and never posted.
    #[test]
    fn a_client_id_whose_short_key_collides_with_another_is_not_its_resend() {
        let alice = UserName::parse("alice", 32).unwrap();
        let author = alice.key();
        // Two ids of alice's with the same key (a birthday search: ~60,000 ids).
        let mut seen: HashMap<u32, String> = HashMap::new();
        let (first, second) = (0u32..)
            .map(|i| format!("c-{i}"))
            .find_map(|id| {
                let key = resend_key(&author, &ClientMsgId::from(id.as_str()));
                seen.insert(key, id.clone()).map(|earlier| (earlier, id))
            })
            .unwrap();
        let mut room = Room::new(RoomName::parse("general", 64, 32).unwrap());
        let msg = Arc::new(Message::new(
            room.name.clone(),
            Seq(1),
            DateTime::<Utc>::from_timestamp_millis(0).unwrap(),
            alice,
            "first".into(),
            Some(first.as_str().into()),
        ));
        let frame = Encoded::message(&msg);
        room.push_history(Posted::new(msg, frame, &author), 10);
        assert_eq!(
            room.lookup_client_id(&author, &first.as_str().into()),
            Some(Seq(1))
        );
        assert_eq!(
            room.lookup_client_id(&author, &second.as_str().into()),
            None
        );
    }
}
