//! What the commands that change a message (`edit`, `delete`, `react`) share: the
//! room and its target, checked; the resend of a change already posted; the post.

use std::sync::Arc;

use super::{Caller, Reject, room_unavailable};
use crate::ids::{ClientMsgId, RoomName, Seq, UserKey};
use crate::protocol::{ErrorCode, Message};
use crate::server::State;
use crate::server::authz::forbidden;
use crate::server::rooms::Acker;

impl State {
    /// The room of a change, checked as for a `send`: the server takes changes (it is
    /// not shutting down), the session is in the room and may post in it.
    pub(super) fn change_room(
        &self,
        caller: &Caller<'_>,
        user: &UserKey,
        raw: &str,
    ) -> Result<RoomName, Reject> {
        if self.shutting_down {
            return Err(Reject::blameless(
                ErrorCode::ShuttingDown,
                "the server is shutting down",
            ));
        }
        let (room, kind) = self.room_for(user, raw)?;
        if !kind.reachable(&caller.session.rooms, &room) {
            return Err(Reject::not_member(&room));
        }
        if !self
            .session_permissions(caller.session, &room, &kind, caller.now.mono)
            .send
        {
            return Err(forbidden(format!("you may not post in {room}")));
        }
        Ok(room)
    }

    /// Whether `client_id` is the user's resend of an entry the room still holds: it is
    /// then acked again, unchecked (the original was checked).
    pub(super) fn is_resend(
        &self,
        room: &RoomName,
        user: &UserKey,
        client_id: Option<&ClientMsgId>,
    ) -> bool {
        let Some(cid) = client_id else {
            return false;
        };
        self.rooms
            .get(room)
            .is_some_and(|r| r.lookup_client_id(user, cid).is_some())
    }

    /// The message `seq` of `room` as it is now: a message (not a change entry), not
    /// deleted (nor about to be), in the room's window.
    pub(super) fn change_target(&self, room: &RoomName, seq: Seq) -> Result<Arc<Message>, Reject> {
        let none = |why: String| Reject::new(ErrorCode::NoSuchMessage, why);
        match self.lookup(room, seq) {
            Lookup::Message(m) => Ok(m),
            Lookup::Change(kind) => Err(none(format!(
                "{room}#{seq} is a change ({}), not a message",
                kind.as_str()
            ))),
            Lookup::Deleted => Err(Reject::new(
                ErrorCode::Gone,
                format!("{room}#{seq} is deleted"),
            )),
            Lookup::Older => Err(none(format!(
                "{room}#{seq} is older than the messages the server keeps ready to change"
            ))),
            Lookup::Unknown => Err(none(format!("no message {room}#{seq}"))),
        }
    }

    /// What the seq `seq` of `room` is, as far as the room's window tells.
    pub(super) fn lookup(&self, room: &RoomName, seq: Seq) -> Lookup {
        let Some(r) = self.rooms.get(room) else {
            return Lookup::Unknown;
        };
        match r.find(seq) {
            Some(m) if !m.kind.is_message() => Lookup::Change(m.kind),
            Some(m) if m.deleted || r.delete_pending(seq) || r.delete_appending(seq) => {
                Lookup::Deleted
            }
            Some(m) => Lookup::Message(m.clone()),
            None if seq > Seq(0) && seq <= r.last_delivered => Lookup::Older,
            None => Lookup::Unknown,
        }
    }

    /// Takes one post from the session's send rate (every entry counts).
    pub(super) fn take_post(caller: &mut Caller<'_>, st: &State) -> Result<(), Reject> {
        caller
            .session
            .sends
            .take(st.config.send_rate, caller.now.mono)
            .map_err(|wait| {
                let msg = format!("too many messages; retry in {} ms", wait.as_millis().max(1));
                Reject::new(ErrorCode::RateLimited, msg)
            })
    }

    /// Posts a checked change entry (its room, user, kind, target and what it carries
    /// filled in) as the next entry of its room. `any_author`: a moderator's delete.
    pub(super) fn post_change(
        &mut self,
        caller: &mut Caller<'_>,
        user: &UserKey,
        id: Option<crate::ids::RequestId>,
        entry: Message,
        any_author: bool,
    ) -> Result<(), Reject> {
        State::take_post(caller, self)?;
        let room_name = entry.room.clone();
        let (room, mut env) = self
            .open_room(&room_name, |_, _| false)
            .map_err(|code| room_unavailable(code, &room_name))?;
        let acker = Acker::Session(caller.sid, id);
        room.post_entry(&mut env, caller.now, user.clone(), entry, any_author, acker);
        Ok(())
    }
}

/// What a seq of a room is, as far as its window tells ([`State::lookup`]).
pub(super) enum Lookup {
    /// A message, as it is now.
    Message(Arc<Message>),
    /// A change entry.
    Change(crate::protocol::EntryKind),
    /// A deleted message (or one a delete waiting for the store is about to delete).
    Deleted,
    /// A seq the room handed out before its window.
    Older,
    /// A seq the room has not handed out.
    Unknown,
}
