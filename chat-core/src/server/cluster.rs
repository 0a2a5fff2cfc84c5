//! Cluster mode (`Config::cluster`, docs/CLUSTER.md): a room's seqs come from a log that
//! several servers share. A post becomes [`Output::Append`]; the log's answer
//! ([`Input::Appended`]) and the entries other servers appended ([`Input::RoomLog`])
//! arrive in any order, possibly twice; each room delivers them to its local members
//! strictly in seq order, once, asking for what it lacks ([`Output::FetchLog`]), and acks
//! a post only after delivering it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};

use super::kind::RoomKind;
use super::outputs::Output;
use super::rooms::{Acker, Appending, Pending, Posted, Room};
use super::{ApiMisuse, Env, Now, Server, State, StoreError};
use crate::ids::{ClientMsgId, RoomName, Seq, SessionId, UserKey, UserName};
use crate::protocol::{ClientFrame, Encoded, EntryKind, ErrorCode, Message, ServerFrame};

/// What the shared log answered to an [`Output::Append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The message's seq in its room.
    pub seq: Seq,
    /// Its time, as the log stamped it.
    pub ts: DateTime<Utc>,
    /// The log already had this client id from this author: nothing new was appended,
    /// and `seq` and `ts` are the original's.
    pub duplicate: bool,
}

/// What an [`Output::Append`] carries besides a message's author, text and client id:
/// for a change, its kind, target and what it carries, with the rules the log checks it
/// by; for a message, the seq it replies to. A plain message has the default.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EntryDetail {
    /// What the entry is.
    pub kind: EntryKind,
    /// A change: the seq of the message it changes.
    pub target: Option<Seq>,
    /// A `react`: the emoji.
    pub emoji: Option<String>,
    /// A `react`: added (true) or taken back.
    pub on: Option<bool>,
    /// A message: the seq it answers.
    pub reply_to: Option<Seq>,
    /// A change: the rules the log checks against the target's current state.
    pub rules: ChangeRules,
}

/// The rules a change is checked by in the shared log, atomically with its append (so
/// two servers cannot both accept conflicting changes): the target is a message of the
/// room, not deleted; an edit or delete is its author's (unless `any_author`); an edit
/// comes within `edit_window` of the message; a reaction does not take the message
/// over `max_reactions` distinct emoji.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChangeRules {
    /// `Config::edit_window`.
    pub edit_window: std::time::Duration,
    /// `Config::max_reactions_per_message`.
    pub max_reactions: usize,
    /// A delete by the room's moderator or owner: anyone's message.
    pub any_author: bool,
}

impl EntryDetail {
    /// The detail of `entry` (a message or a change, as the commands build it); `None`
    /// for a plain message.
    pub(crate) fn of(entry: &Message, rules: ChangeRules) -> Option<EntryDetail> {
        if entry.kind.is_message() && entry.reply_to.is_none() {
            return None;
        }
        Some(EntryDetail {
            kind: entry.kind,
            target: entry.target,
            emoji: entry.emoji.clone(),
            on: entry.on,
            reply_to: entry.reply_to,
            rules,
        })
    }
}

/// A room as the shared log holds it, for [`Input::RoomLoaded`](super::Input::RoomLoaded).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadedRoom {
    /// The room's last seq in the log (0: nothing was ever posted).
    pub last_seq: Seq,
    /// The newest messages, oldest first (up to the history window).
    pub recent: Vec<Message>,
    /// The log holds nothing older than `recent`.
    pub complete: bool,
    /// Who is present in the room over all servers.
    pub present: Vec<UserName>,
    /// The room's presence version (how many announcements so far).
    pub pv: u64,
}

/// A presence announcement of the shared log: a user's first session on any server
/// entered the room, or the last one left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announced {
    /// The room's presence version this announcement made.
    pub pv: u64,
    /// Who.
    pub user: UserName,
    /// Entered (`user_joined`) or left (`user_left`).
    pub joined: bool,
    /// When.
    pub ts: DateTime<Utc>,
}

/// Rooms being loaded from the log, and what waits for them.
#[derive(Debug, Default)]
pub(crate) struct Loading {
    /// Room → what waits for it, in arrival order.
    waiting: BTreeMap<RoomName, Vec<Parked>>,
    /// Rooms the log holds nothing of, while the frames that waited for them run: they
    /// are created (or not) by those frames as single-node rooms are.
    empty: std::collections::BTreeSet<RoomName>,
}

impl Loading {
    /// Whether `room` is being loaded from the log.
    pub(crate) fn is_loading(&self, room: &RoomName) -> bool {
        self.waiting.contains_key(room)
    }
}

/// Something that needs a room this server does not hold yet.
#[derive(Debug)]
pub(crate) enum Parked {
    /// A client's frame, run again once the room is there.
    Frame(SessionId, ClientFrame),
    /// A host's publish.
    Publish {
        ticket: u64,
        room: String,
        user: String,
        body: String,
        client_id: Option<ClientMsgId>,
    },
    /// A host's erasure of a user in the room.
    Erase {
        ticket: u64,
        room: RoomName,
        user: UserName,
    },
}

impl Room {
    /// Cluster mode's post of an entry (a message or a change, without its seq and
    /// time): the log hands out the seq. A resend of a client id still waiting for the
    /// log waits with it.
    pub(super) fn append(
        &mut self,
        env: &mut Env<'_>,
        entry: Message,
        any_author: bool,
        acker: Acker,
    ) {
        let author = entry.user.key();
        if let Some(cid) = &entry.client_id
            && let Some(waiting) =
                self.cluster.appending.values_mut().find(|a| {
                    a.entry.client_id.as_ref() == Some(cid) && a.entry.user.key() == author
                })
        {
            waiting.ackers.push(acker);
            return;
        }
        let ticket = self.cluster.next_ticket;
        self.cluster.next_ticket += 1;
        let rules = ChangeRules {
            edit_window: env.config.edit_window,
            max_reactions: env.config.max_reactions_per_message,
            any_author,
        };
        env.out.push(Output::Append {
            room: self.name.clone(),
            ticket,
            user: entry.user.clone(),
            body: entry.body.clone(),
            client_id: entry.client_id.clone(),
            detail: EntryDetail::of(&entry, rules).map(Box::new),
        });
        self.cluster.appending.insert(
            ticket,
            Appending {
                entry,
                ackers: vec![acker],
            },
        );
    }

    /// Whether a change waiting for the shared log deletes the message `target`.
    pub(super) fn delete_appending(&self, target: Seq) -> bool {
        self.cluster
            .appending
            .values()
            .any(|a| a.entry.kind == EntryKind::Delete && a.entry.target == Some(target))
    }

    /// Takes entries of the log in any order and delivers, in seq order, every one that
    /// follows the last delivered; asks for the log after it when an entry is missing
    /// (once: the answer to a fetch asks again if something is still missing).
    fn accept(&mut self, env: &mut Env<'_>, entries: impl IntoIterator<Item = Arc<Message>>) {
        for msg in entries {
            if msg.seq > self.last_delivered {
                self.cluster.held.entry(msg.seq).or_insert(msg);
            }
        }
        while let Some(entry) = self.cluster.held.first_entry() {
            if *entry.key() != self.last_delivered.next() {
                break;
            }
            let msg = entry.remove();
            self.deliver_entry(env, msg);
        }
        if !self.cluster.held.is_empty() && !self.cluster.fetching {
            self.cluster.fetching = true;
            env.out.push(Output::FetchLog {
                room: self.name.clone(),
                after: self.last_delivered,
            });
        }
    }

    /// Delivers one entry (the next in seq order, or the next this server has after a
    /// cut) and its acks.
    fn deliver_entry(&mut self, env: &mut Env<'_>, msg: Arc<Message>) {
        let key = msg.user.key();
        self.last_seq = self.last_seq.max(msg.seq);
        if msg.kind.is_message() && !self.cluster.acks.contains_key(&msg.seq) {
            // Another server's post ends its author's typing, as a local post does (the
            // clients clear it on the message), so the next `typing` is shown again.
            self.typing.remove(&key);
        }
        let ackers: Vec<Acker> = self
            .cluster
            .acks
            .remove(&msg.seq)
            .into_iter()
            .flatten()
            .map(|(acker, _)| acker)
            .collect();
        let frame = Encoded::message(&msg);
        self.pending.push_back(Pending {
            posted: Posted::new(msg, frame, &key),
            author: key,
            committed: true,
            ackers,
        });
        self.release(env);
    }

    /// The log holds nothing below `seq` any more (trimmed while this server was
    /// behind). What this server holds below it is delivered; the rest is lost, and its
    /// local members are told with a `joined` marked `gap` (no messages: they keep what
    /// they have) whose `last_seq` is the last lost seq. Delivery goes on after it.
    fn skip_to(&mut self, env: &mut Env<'_>, seq: Seq) {
        let lost = Seq(seq.0.saturating_sub(1));
        if lost <= self.last_delivered {
            return;
        }
        while let Some(entry) = self.cluster.held.first_entry() {
            if *entry.key() > lost {
                break;
            }
            let msg = entry.remove();
            self.deliver_entry(env, msg);
        }
        self.cut(lost);
        let gap = |members| {
            Encoded::new(&ServerFrame::Joined {
                id: None,
                room: self.name.clone(),
                members,
                count: None,
                messages: Vec::new(),
                gap: true,
                last_seq: lost,
                topic: None,
                slow_mode: None,
                role: None,
            })
        };
        // Sessions that may not see the room's presence get the gap without its members.
        let blind: Vec<SessionId> = self.blind.iter().copied().collect();
        let recipients = self.recipients(env.users);
        if !blind.is_empty() {
            let sighted: Vec<SessionId> = recipients
                .iter()
                .copied()
                .filter(|s| !self.blind.contains(s))
                .collect();
            env.out
                .fan_out(recipients.clone(), &gap(Vec::new()), sighted);
        }
        env.out
            .fan_out(recipients, &gap(self.member_list(env.users)), blind);
        self.presence.listed();
    }
}

impl State {
    /// The log's answer to one [`Output::Append`].
    pub(super) fn on_appended(
        &mut self,
        room_name: &RoomName,
        ticket: u64,
        result: Result<Appended, StoreError>,
    ) -> Result<(), ApiMisuse> {
        let (room, mut env) = self
            .room_env(room_name)
            .ok_or(ApiMisuse::UnknownTicket(ticket))?;
        let waiting = room
            .cluster
            .appending
            .remove(&ticket)
            .ok_or(ApiMisuse::UnknownTicket(ticket))?;
        let appended = match result {
            Ok(a) => a,
            Err(e) => {
                env.refuse(waiting.ackers, &e);
                return Ok(());
            }
        };
        let mut entry = waiting.entry;
        entry.seq = appended.seq;
        entry.ts = appended.ts;
        let msg = Arc::new(entry);
        if appended.seq <= room.last_delivered {
            // Delivered already (its doorbell came first, or it is an old duplicate)...
            let known = room.find(appended.seq).cloned();
            if !appended.duplicate && known.as_ref().is_some_and(|k| !same_post(k, &msg)) {
                // ... or not: the log handed out a seq again, so it lost entries. Nothing
                // is acked at a seq its readers know as another message: the senders
                // retry (their client id finds the entry) after the epoch changes.
                env.out.push(Output::LogRegressed {
                    room: room_name.clone(),
                    seq: appended.seq,
                });
                let lost = StoreError::Unavailable("the shared log lost messages".into());
                env.refuse(waiting.ackers, &lost);
                return Ok(());
            }
            for acker in waiting.ackers {
                match &known {
                    Some(m) => env.ack(&acker, m, appended.duplicate),
                    None => env.ack(&acker, &msg, appended.duplicate),
                }
            }
            return Ok(());
        }
        let acks = room.cluster.acks.entry(appended.seq).or_default();
        acks.extend(waiting.ackers.into_iter().map(|a| (a, appended.duplicate)));
        room.accept(&mut env, [msg]);
        Ok(())
    }

    /// Doorbells may have been missed: read the log after what each room delivered.
    pub(super) fn on_catch_up(&mut self, only: Option<&RoomName>) {
        if only.is_none() && self.config.cluster {
            // A catch-up of every room (a new subscription, or the periodic check):
            // the moderation state may have changed unheard too.
            for room in self.rooms.keys() {
                if RoomKind::of(room).has_membership() {
                    self.mod_asked.insert(room.clone(), self.mod_changes);
                    self.out
                        .push(Output::FetchModeration { room: room.clone() });
                }
            }
        }
        for room in self.rooms.values_mut() {
            if only.is_some_and(|r| *r != room.name) || room.cluster.fetching {
                continue;
            }
            room.cluster.fetching = true;
            self.out.push(Output::FetchLog {
                room: room.name.clone(),
                after: room.last_delivered,
            });
        }
    }

    /// Entries of a room's log from the log itself: doorbells, or (`fetched`) the answer
    /// to [`Output::FetchLog`]. `gap_before`: the log holds nothing below this seq any
    /// more (trimmed), so what this server lacks below it is lost.
    pub(super) fn on_room_log(
        &mut self,
        room_name: &RoomName,
        messages: Vec<Message>,
        gap_before: Option<Seq>,
        fetched: bool,
    ) {
        // A room nobody here is in: nothing to deliver to (it is loaded on first join).
        let Some((room, mut env)) = self.room_env(room_name) else {
            return;
        };
        if fetched {
            room.cluster.fetching = false;
        }
        if let Some(seq) = gap_before {
            room.skip_to(&mut env, seq);
            // Nothing below `seq` is in the log any more: a history page that reaches
            // it says the gap, with `seq` as the first kept.
            room.prune(seq);
        }
        room.accept(&mut env, messages.into_iter().map(Arc::new));
    }
}

impl Server {
    /// The cluster's history epoch changed: seqs this server delivered may no longer be
    /// in the log. Every session is closed (1012) to reconnect under the new epoch and
    /// join without `since`; every room is read from the log again when next used.
    pub(super) fn on_epoch_changed(&mut self, now: Now, epoch: String) {
        if epoch == self.st.config.epoch {
            return;
        }
        self.st.config.epoch = epoch;
        let sessions: Vec<SessionId> = self.sessions.keys().copied().collect();
        for sid in sessions {
            self.drop_session(now, sid, Some(super::CloseReason::EpochChanged));
        }
        let rooms = std::mem::take(&mut self.st.rooms);
        for name in rooms.into_keys() {
            self.st.out.push(Output::UnloadRoom { room: name });
        }
        self.st.loading.empty.clear();
        // What the old epoch's log had trimmed says nothing about the new one's seqs.
        self.st.pruned.clear();
    }
}

impl State {
    /// Cluster mode: the room a frame needs that this server does not hold yet (it must
    /// be loaded from the log first), if any. Frames whose room does not parse go on to
    /// their command, which refuses them.
    pub(super) fn unloaded_room(&self, user: &UserKey, frame: &ClientFrame) -> Option<RoomName> {
        if !self.config.cluster && self.stored.is_empty() {
            return None;
        }
        let room = match frame {
            ClientFrame::Join(req) => self.room_for(user, &req.room).ok()?.0,
            ClientFrame::History(req) => self.room_for(user, &req.room).ok()?.0,
            ClientFrame::Members { room, .. } | ClientFrame::Typing { room, .. } => {
                self.room_for(user, room).ok()?.0
            }
            ClientFrame::Edit(req) => self.room_for(user, &req.room).ok()?.0,
            ClientFrame::Delete(req) => self.room_for(user, &req.room).ok()?.0,
            ClientFrame::React(req) => self.room_for(user, &req.room).ok()?.0,
            ClientFrame::Read { room, .. } => self.room_for(user, room).ok()?.0,
            ClientFrame::Send(req) => match (&req.room, &req.to) {
                (Some(room), None) => self.room_for(user, room).ok()?.0,
                (None, Some(to)) => self.direct_room_to(user, to).ok()?.0,
                _ => return None,
            },
            // Moderation needs no room in memory: it changes the room's access entry.
            _ => return None,
        };
        self.needs_load(&room).then_some(room)
    }

    /// Whether `room` must be loaded before it is used here: from the log (cluster
    /// mode), or from the store (durable mode, a room that left memory idle).
    pub(super) fn needs_load(&self, room: &RoomName) -> bool {
        let cluster = self.config.cluster
            && !self.rooms.contains_key(room)
            && !self.loading.empty.contains(room);
        cluster || self.is_stored(room)
    }

    /// Waits for `room` to be loaded (asking the log for it, once).
    pub(super) fn park(&mut self, room: RoomName, parked: Parked) {
        let waiting = self.loading.waiting.entry(room.clone()).or_default();
        if waiting.is_empty() {
            if self.config.cluster {
                // The load answers with the room's moderation state first.
                self.mod_asked.insert(room.clone(), self.mod_changes);
            }
            self.out.push(Output::LoadRoom { room });
        }
        waiting.push(parked);
    }
}

impl Server {
    /// The log's answer to [`Output::LoadRoom`]: the room is set up from it and what
    /// waited for it runs, in order; or, if the log could not be read, each waiting
    /// frame gets `storage_unavailable`.
    pub(super) fn on_room_loaded(
        &mut self,
        now: Now,
        room: RoomName,
        result: Result<LoadedRoom, StoreError>,
    ) -> Result<(), ApiMisuse> {
        let waiting = self
            .st
            .loading
            .waiting
            .remove(&room)
            .ok_or_else(|| ApiMisuse::NotLoading(room.clone()))?;
        // Durable mode: the room leaves the rooms known to be only in the store.
        let known = self.st.stored.remove(&room);
        match result {
            Ok(mut loaded) => {
                loaded.last_seq = loaded.last_seq.max(known.unwrap_or(Seq(0)));
                let empty = loaded.last_seq == Seq(0)
                    && loaded.recent.is_empty()
                    && loaded.present.is_empty();
                if empty {
                    self.st.loading.empty.insert(room.clone());
                } else if !self.st.rooms.contains_key(&room) {
                    let LoadedRoom {
                        last_seq,
                        recent,
                        complete,
                        present,
                        pv,
                    } = loaded;
                    self.restore_room(room.clone(), last_seq, recent, complete);
                    if let Some(r) = self.st.rooms.get_mut(&room) {
                        r.cluster.present = present.into_iter().map(|u| (u.key(), u)).collect();
                        r.cluster.pv = pv;
                    }
                    self.st.unarmed.retain(|r| *r != room);
                    self.st.touch(&room);
                }
                for parked in waiting {
                    match parked {
                        Parked::Frame(sid, frame) => self.run_frame(now, sid, frame),
                        Parked::Publish {
                            ticket,
                            room,
                            user,
                            body,
                            client_id,
                        } => self
                            .st
                            .on_publish(now, ticket, &room, &user, body, client_id),
                        Parked::Erase { ticket, room, user } => {
                            self.st.on_erase(now, ticket, room, user);
                        }
                    }
                }
                self.st.loading.empty.remove(&room);
            }
            Err(e) => {
                if let Some(seq) = known {
                    self.st.stored.insert(room.clone(), seq);
                }
                for parked in waiting {
                    match parked {
                        Parked::Frame(sid, frame) => {
                            let msg = format!("room not available, retry later ({})", e.detail());
                            let id = frame.request_id();
                            self.st
                                .out
                                .error(sid, id, ErrorCode::StorageUnavailable, msg);
                        }
                        Parked::Publish { ticket, .. } | Parked::Erase { ticket, .. } => {
                            self.st.out.push(Output::Published {
                                ticket,
                                result: Err(ErrorCode::StorageUnavailable),
                            })
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl State {
    /// Cluster mode: a user's first session here entered a room, or the last one here
    /// left it (after the grace period for a disconnect). The log counts it with the
    /// other servers' and announces the user when the count leaves or reaches zero; the
    /// announcement comes back as [`Input::Presence`](super::Input::Presence).
    pub(super) fn cluster_presence(&mut self, room: &RoomName, user: UserName, entered: bool) {
        self.out.push(Output::Presence {
            room: room.clone(),
            user,
            entered,
        });
    }

    /// An announcement of the log: applied in presence-version order (a skipped version
    /// asks for a snapshot), and told to the room's sessions here.
    pub(super) fn on_presence(&mut self, now: Now, room_name: &RoomName, a: Announced) {
        let Some((room, mut env)) = self.room_env(room_name) else {
            return;
        };
        let f = &mut room.cluster;
        if a.pv <= f.pv || f.presence_fetching {
            return;
        }
        if a.pv > f.pv + 1 {
            f.presence_fetching = true;
            env.out.push(Output::FetchPresence {
                room: room_name.clone(),
            });
            return;
        }
        f.pv = a.pv;
        let tick = room.apply_presence(&mut env, &a.user, a.joined, a.ts, now.mono);
        self.arm_presence(room_name, tick);
    }

    /// Arms a room's presence tick at `at`, if there is one to arm.
    fn arm_presence(&mut self, room_name: &RoomName, at: Option<Instant>) {
        if let Some(at) = at {
            self.timers
                .arm(at, super::timers::Timer::Presence(room_name.clone()));
        }
    }

    /// The log's whole presence of a room (after a skipped version, or a reconnect):
    /// the difference from what this server showed is told as joins and leaves.
    pub(super) fn on_presence_snapshot(
        &mut self,
        now: Now,
        room_name: &RoomName,
        pv: u64,
        users: Vec<UserName>,
    ) {
        let Some((room, mut env)) = self.room_env(room_name) else {
            return;
        };
        room.cluster.presence_fetching = false;
        if pv < room.cluster.pv {
            return;
        }
        room.cluster.pv = pv;
        let now_present: BTreeMap<UserKey, UserName> =
            users.into_iter().map(|u| (u.key(), u)).collect();
        let gone: Vec<UserName> = room
            .cluster
            .present
            .iter()
            .filter(|(k, _)| !now_present.contains_key(*k))
            .map(|(_, u)| u.clone())
            .collect();
        let came: Vec<UserName> = now_present
            .iter()
            .filter(|(k, _)| !room.cluster.present.contains_key(*k))
            .map(|(_, u)| u.clone())
            .collect();
        let mut tick = None;
        for user in gone {
            tick = tick.or(room.apply_presence(&mut env, &user, false, now.utc, now.mono));
        }
        for user in came {
            tick = tick.or(room.apply_presence(&mut env, &user, true, now.utc, now.mono));
        }
        self.arm_presence(room_name, tick);
    }
}

impl Room {
    /// One user entered or left the room's cluster-wide presence: `user_joined` /
    /// `user_left` to this server's version-1 sessions in the room but the user's own
    /// (as a single server does), and the change noted for the version-2 sessions'
    /// presence tick, unless the member list they were shown already says so. Returns
    /// the instant to arm the room's tick at, if it must be armed.
    fn apply_presence(
        &mut self,
        env: &mut Env<'_>,
        user: &UserName,
        joined: bool,
        ts: DateTime<Utc>,
        mono: Instant,
    ) -> Option<Instant> {
        let key = user.key();
        let before = self.member_list(env.users).iter().any(|u| u.key() == key);
        if joined {
            self.cluster.present.insert(key.clone(), user.clone());
        } else {
            self.cluster.present.remove(&key);
        }
        let after = self.member_list(env.users).iter().any(|u| u.key() == key);
        if before == after {
            return None;
        }
        let frame = if joined {
            ServerFrame::UserJoined {
                room: self.name.clone(),
                user: user.clone(),
                ts,
            }
        } else {
            ServerFrame::UserLeft {
                room: self.name.clone(),
                user: user.clone(),
                ts,
            }
        };
        env.fan_out_presence(self, &Encoded::new(&frame), None, Some(&key));
        let tick = env.config.presence_tick_for(self.presence_count());
        self.note_presence(user, joined, mono, tick)
    }
}

/// Whether two log entries are the same post (one author, one text, one client id, one
/// kind and target): what a seq handed out twice tells apart. The window's copy of a
/// message may have changed since (edited, deleted), so a message's text is compared
/// only while it is unchanged.
fn same_post(a: &Message, b: &Message) -> bool {
    let text = a.rev.is_some() || b.rev.is_some() || a.body == b.body;
    a.user.key() == b.user.key()
        && text
        && a.client_id == b.client_id
        && a.kind == b.kind
        && a.target == b.target
}
