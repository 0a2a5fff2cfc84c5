//! The path of a message: a seq and a time, the store (durable mode), delivery in seq
//! order, and the acks, for clients' `send` and the host's `publish` alike.

use std::collections::VecDeque;
use std::sync::Arc;

use super::inputs::StoreError;
use super::outputs::{Event, Output};
use super::rooms::{Acker, Pending, Posted, Room};
use super::{ApiMisuse, Env, Now, State};
use crate::ids::{ClientMsgId, RoomName, Seq, UserKey, UserName};
use crate::protocol::{Encoded, ErrorCode, Message, ServerFrame};

impl Room {
    /// Posts a message by `author` (with its key: the caller has it already): assigns
    /// seq and time, then delivers (or, durable, persists first). A repeated client id
    /// is acked with the original instead of posted again.
    pub(super) fn post(
        &mut self,
        env: &mut Env<'_>,
        now: Now,
        (author, key): (UserName, UserKey),
        body: Arc<str>,
        client_id: Option<ClientMsgId>,
        acker: Acker,
    ) {
        let entry = Message::new(self.name.clone(), Seq(0), now.utc, author, body, client_id);
        self.post_entry(env, now, key, entry, false, acker);
    }

    /// Posts a log entry by the user `key` (a message, or a change to one: the caller
    /// checked it): `entry` has everything but its seq and time, which it gets here.
    /// `any_author`: a delete by the room's moderator (cluster mode's log checks the
    /// author otherwise).
    pub(super) fn post_entry(
        &mut self,
        env: &mut Env<'_>,
        now: Now,
        key: UserKey,
        mut entry: Message,
        any_author: bool,
        acker: Acker,
    ) {
        let durable = env.config.durable;
        if let Some(cid) = &entry.client_id
            && let Some(seq) = self.lookup_client_id(&key, cid)
        {
            if let Some(p) = self.pending.iter_mut().find(|p| p.posted.msg.seq == seq) {
                p.ackers.push(acker);
                return;
            }
            if let Some(msg) = self.find(seq).cloned() {
                env.ack(&acker, &msg, true);
                return;
            }
            // No longer held in memory: post it anew rather than leave the sender
            // without any answer.
        }
        if env.config.cluster {
            if entry.kind.is_message() {
                self.typing.remove(&key);
            }
            self.append(env, entry, any_author, acker);
            return;
        }
        let (seq, ts) = self.stamp(now.utc);
        // Sending ends the author's typing (clients clear it when the message arrives).
        // Cleared now, at acceptance, so typing that starts again while a durable
        // message waits for the store is kept and re-announced after the message.
        if entry.kind.is_message() {
            self.typing.remove(&key);
        }
        entry.seq = seq;
        entry.ts = ts;
        let msg = Arc::new(entry);
        let frame = Encoded::message(&msg);
        self.pending.push_back(Pending {
            posted: Posted::new(msg.clone(), frame, &key),
            author: key,
            committed: !durable,
            ackers: vec![acker],
        });
        if durable {
            env.out.push(Output::Persist(msg));
        } else {
            self.release(env);
        }
    }

    /// Delivers the committed messages at the front of the pending queue, in seq order.
    pub(super) fn release(&mut self, env: &mut Env<'_>) {
        let window = env.config.history_window;
        while self.pending.front().is_some_and(|p| p.committed) {
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            if !p.posted.msg.kind.is_message() {
                // The message changed takes its new state before the change goes out.
                self.apply_change(&p.posted.msg);
            }
            self.push_history(p.posted.clone(), window);
            let typing_again =
                p.posted.msg.kind.is_message() && self.typing.contains_key(&p.author);
            self.deliver(env, &p.posted, &p.author);
            if typing_again {
                // Clients cleared the author's typing on the message; it started again
                // while the message waited for the store.
                let frame = Encoded::new(&ServerFrame::Typing {
                    room: self.name.clone(),
                    user: p.posted.msg.user.clone(),
                    active: true,
                });
                env.fan_out(self, &frame, None, Some(&p.author));
            }
            // The first acker posted it; any later one resent the same client id.
            for (i, acker) in p.ackers.iter().enumerate() {
                env.ack(acker, &p.posted.msg, i > 0);
            }
            env.out.event(Event::MessagePosted(p.posted.msg));
        }
        // Nothing waits: a direct room (most are quiet) holds no slots, and a public
        // room no more than a few after a backlog of the store.
        let keep = if self.kind.has_membership() { 64 } else { 0 };
        if self.pending.is_empty() && self.pending.capacity() > keep {
            self.pending = VecDeque::new();
        }
    }
}

impl Room {
    /// A message to every recipient: one shared frame without `client_id` for everyone
    /// but the author's own sessions, which get it with theirs (when it has one).
    fn deliver(&self, env: &mut Env<'_>, posted: &Posted, author: &UserKey) {
        let Some(cid) = &posted.msg.client_id else {
            env.fan_out(self, posted.frame(), None, None);
            return;
        };
        env.fan_out(self, posted.frame(), None, Some(author));
        let Some(mine) = self.sessions_of(author, env.users) else {
            return;
        };
        let recipients = self.recipients(env.users);
        let mut frame = None;
        for &sid in mine {
            if recipients.binary_search(&sid).is_ok() {
                let frame =
                    frame.get_or_insert_with(|| Encoded::message_for_author(posted.frame(), cid));
                env.out.send_encoded(sid, frame.clone());
            }
        }
    }
}

impl Env<'_> {
    /// Tells everyone waiting for a message's ack that it was not stored (retryable).
    pub(super) fn refuse(&mut self, ackers: Vec<Acker>, e: &StoreError) {
        for acker in ackers {
            let (code, msg) = match e {
                // The shared log's rules said no: a definite answer, not a retry.
                StoreError::Refused(code, why) => (*code, why.clone()),
                _ => (
                    ErrorCode::StorageUnavailable,
                    format!("message not stored, retry later ({})", e.detail()),
                ),
            };
            match acker {
                Acker::Session(sid, id) => self.out.error(sid, id, code, msg),
                Acker::Host(ticket) => self.out.push(Output::Published {
                    ticket,
                    result: Err(code),
                }),
            }
        }
    }

    /// Tells whoever sent a message that it is posted.
    pub(super) fn ack(&mut self, acker: &Acker, msg: &Arc<Message>, duplicate: bool) {
        match acker {
            Acker::Session(sid, id) => {
                if self.out.is_open(*sid) {
                    self.out
                        .send_encoded(*sid, Encoded::ack(*id, msg, duplicate));
                }
            }
            Acker::Host(ticket) => {
                self.out.push(Output::Published {
                    ticket: *ticket,
                    result: Ok(msg.clone()),
                });
            }
        }
    }
}

impl State {
    /// The store's answer for one message: deliver it (and any committed ones after it),
    /// or refuse it to everyone waiting for its ack.
    pub(super) fn on_persisted(
        &mut self,
        room_name: &RoomName,
        seq: Seq,
        result: Result<(), StoreError>,
    ) -> Result<(), ApiMisuse> {
        let not_pending = || ApiMisuse::NotPending {
            room: room_name.clone(),
            seq,
        };
        let (room, mut env) = self.room_env(room_name).ok_or_else(not_pending)?;
        let pos = room
            .pending
            .iter()
            .position(|p| p.posted.msg.seq == seq && !p.committed)
            .ok_or_else(not_pending)?;
        match result {
            Ok(()) => room.pending[pos].committed = true,
            Err(e) => {
                let Some(p) = room.pending.remove(pos) else {
                    return Err(not_pending());
                };
                env.refuse(p.ackers, &e);
            }
        }
        // Later messages may already be committed and now at the front.
        room.release(&mut env);
        Ok(())
    }

    /// The host posts a message without a connection.
    pub(super) fn on_publish(
        &mut self,
        now: Now,
        ticket: u64,
        room: &str,
        user: &str,
        body: String,
        client_id: Option<ClientMsgId>,
    ) {
        if let Ok((name, _)) = self.publish_checked(room, user, &body)
            && self.needs_load(&name)
        {
            let parked = super::cluster::Parked::Publish {
                ticket,
                room: room.to_owned(),
                user: user.to_owned(),
                body,
                client_id,
            };
            self.park(name, parked);
            return;
        }
        let posted = self
            .publish_checked(room, user, &body)
            .and_then(|(name, author)| {
                let (room, mut env) = self.open_room(&name, |kind, c| kind.publish_creates(c))?;
                let key = author.key();
                room.post(
                    &mut env,
                    now,
                    (author, key),
                    body.into(),
                    client_id,
                    Acker::Host(ticket),
                );
                Ok(())
            });
        if let Err(code) = posted {
            self.out.push(Output::Published {
                ticket,
                result: Err(code),
            });
        }
    }

    /// The host erases `user` in `room` ([`Input::Erase`](super::Input::Erase)): an
    /// `erase` entry, posted as the host's publish is (in cluster mode committed to the
    /// shared log, which tombstones the user's messages there, after loading the room
    /// if this server does not hold it).
    pub(super) fn on_erase(&mut self, now: Now, ticket: u64, room: RoomName, user: UserName) {
        if self.shutting_down {
            self.out.push(Output::Published {
                ticket,
                result: Err(ErrorCode::ShuttingDown),
            });
            return;
        }
        if self.needs_load(&room) {
            let parked = super::cluster::Parked::Erase {
                ticket,
                room: room.clone(),
                user,
            };
            self.park(room, parked);
            return;
        }
        match self.open_room(&room, |_, _| false) {
            Ok((room, mut env)) => {
                let mut entry = Message::new(
                    room.name.clone(),
                    Seq(0),
                    now.utc,
                    user.clone(),
                    Arc::from(""),
                    None,
                );
                entry.kind = crate::protocol::EntryKind::Erase;
                room.post_entry(&mut env, now, user.key(), entry, false, Acker::Host(ticket));
            }
            Err(code) => self.out.push(Output::Published {
                ticket,
                result: Err(code),
            }),
        }
    }

    /// The store pruned `room` below `first_kept` ([`Input::Pruned`](super::Input::Pruned)),
    /// or in cluster mode the shared log trimmed it: the window lets go of those entries
    /// too. In cluster mode a server behind the trim lets go only of what it delivered:
    /// its catch-up reads the rest and tells its members the gap.
    pub(super) fn on_pruned(&mut self, room: &RoomName, first_kept: Seq) {
        let cluster = self.config.cluster;
        match self.rooms.get_mut(room) {
            Some(r) if cluster => r.prune(first_kept.min(r.last_delivered.next())),
            Some(r) => r.prune(first_kept),
            // Cluster mode: a room not held here is told its first kept seq when it is
            // loaded (a late word about a room that left is not kept: it could outlive
            // an epoch change).
            None if cluster && !self.loading.is_loading(room) => {}
            // Told when the room is loaded (`Server::restore_room`).
            None => {
                let known = self.pruned.entry(room.clone()).or_insert(first_kept);
                *known = (*known).max(first_kept);
            }
        }
    }

    fn publish_checked(
        &self,
        room: &str,
        user: &str,
        body: &str,
    ) -> Result<(RoomName, UserName), ErrorCode> {
        let c = &self.config;
        if self.shutting_down {
            return Err(ErrorCode::ShuttingDown);
        }
        let room = RoomName::parse(room, c.max_room_chars, c.max_name_chars)
            .map_err(|_| ErrorCode::InvalidRoom)?;
        let author = UserName::parse(user, c.max_name_chars).map_err(|_| ErrorCode::InvalidName)?;
        check_body(body, c.max_body_bytes).map_err(|(code, _)| code)?;
        Ok((room, author))
    }
}

/// A body must be non-blank and within the size limit.
pub(super) fn check_body(body: &str, max: usize) -> Result<(), (ErrorCode, String)> {
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

impl super::Server {
    /// The rooms in memory whose window holds an entry by `user` or a reaction of the
    /// user's (erasure: the store is asked for the rest).
    #[must_use]
    pub fn rooms_with_user(&self, user: &UserName) -> Vec<RoomName> {
        let key = user.key();
        self.st
            .rooms
            .values()
            .filter(|r| {
                r.latest(usize::MAX).any(|p| {
                    p.msg.user.key() == key
                        || p.msg
                            .reactions
                            .iter()
                            .any(|x| x.users.iter().any(|u| u.key() == key))
                })
            })
            .map(|r| r.name.clone())
            .collect()
    }
}
