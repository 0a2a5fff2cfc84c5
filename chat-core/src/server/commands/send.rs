//! `send`: post a message to a room, or to a user (a direct message).

use super::change::Lookup;
use super::{Caller, Reject, room_unavailable};
use crate::ids::{RoomName, Seq, UserKey, UserName};
use crate::protocol::{ErrorCode, Message, SendRequest};
use crate::server::State;
use crate::server::authz::forbidden;
use crate::server::config::AuthMode;
use crate::server::kind::RoomKind;
use crate::server::messages::check_body;
use crate::server::rooms::Acker;

impl State {
    pub(super) fn send(
        &mut self,
        caller: &mut Caller<'_>,
        user: &UserKey,
        req: SendRequest,
    ) -> Result<(), Reject> {
        let SendRequest {
            id,
            room,
            to,
            body,
            client_id,
            reply_to,
        } = req;
        if self.shutting_down {
            return Err(Reject::blameless(
                ErrorCode::ShuttingDown,
                "the server is shutting down",
            ));
        }
        let (room_name, kind) = match (room, to) {
            (Some(room), None) => self.room_for(user, &room)?,
            (None, Some(to)) => self.direct_room_to(user, &to)?,
            _ => {
                return Err(Reject::new(
                    ErrorCode::InvalidRequest,
                    "give exactly one of room and to",
                ));
            }
        };
        check_body(&body, self.config.max_body_bytes)
            .map_err(|(code, msg)| Reject::new(code, msg))?;
        if !kind.reachable(&caller.session.rooms, &room_name) {
            return Err(Reject::not_member(&room_name));
        }
        if !self
            .session_permissions(caller.session, &room_name, &kind, caller.now.mono)
            .send
        {
            return Err(forbidden(format!("you may not send to {room_name}")));
        }
        if let Some(answered) = reply_to
            && !self.is_resend(&room_name, user, client_id.as_ref())
        {
            // (A resend is acked again as a duplicate, whatever became of the message it
            // answers since.)
            self.check_reply_to(&room_name, answered)?;
        }
        let slow = kind.has_membership();
        if slow {
            let who = caller.session.identity.as_deref();
            if let Some(wait) = self.slow_mode_wait(who, user, &room_name, caller.now.mono) {
                return Err(self.slow_mode_refusal(&room_name, wait));
            }
        }
        if let Err(wait) = caller
            .session
            .sends
            .take(self.config.send_rate, caller.now.mono)
        {
            let msg = format!("too many messages; retry in {} ms", wait.as_millis().max(1));
            return Err(Reject::new(ErrorCode::RateLimited, msg));
        }
        if slow {
            self.note_post(user, &room_name, caller.now.mono);
        }
        if !self.rooms.contains_key(&room_name) {
            // A direct room comes into being with its first message: only with a user
            // who exists (in anonymous mode, as for `to`).
            if let Some(peer) = kind.peer(user) {
                self.require_known(peer, &peer.as_name())?;
            }
        }
        let (room, mut env) = self
            .open_room(&room_name, |kind, _| !kind.created_by_join())
            .map_err(|code| room_unavailable(code, &room_name))?;
        let author = env.users.display_name(user);
        let acker = Acker::Session(caller.sid, id);
        let mut msg = Message::new(
            room_name,
            Seq(0),
            caller.now.utc,
            author,
            body.into(),
            client_id,
        );
        msg.reply_to = reply_to;
        room.post_entry(&mut env, caller.now, user.clone(), msg, false, acker);
        Ok(())
    }

    /// A reply names a message of its room: a seq the room handed out, not a change
    /// entry, not a deleted message (as far as the window shows; older seqs are taken
    /// as they are).
    fn check_reply_to(&self, room: &RoomName, answered: Seq) -> Result<(), Reject> {
        let last = self.rooms.get(room).map_or(Seq(0), |r| r.last_delivered);
        if answered == Seq(0) || answered > last {
            let msg = format!("no message {room}#{answered} to reply to");
            return Err(Reject::new(ErrorCode::NoSuchMessage, msg));
        }
        match self.lookup(room, answered) {
            Lookup::Message(_) | Lookup::Older => Ok(()),
            _ => self.change_target(room, answered).map(|_| ()),
        }
    }

    /// Resolves `to` into the direct room of the sender and that user.
    pub(in crate::server) fn direct_room_to(
        &self,
        user: &UserKey,
        to: &str,
    ) -> Result<(RoomName, RoomKind), Reject> {
        let name = UserName::parse(to, self.config.max_name_chars).map_err(|_| {
            Reject::new(ErrorCode::InvalidName, format!("no valid user name {to:?}"))
        })?;
        let other = name.key();
        self.require_known(&other, &name)?;
        let room = RoomName::direct(user, &other);
        let kind = RoomKind::of(&room);
        Ok((room, kind))
    }

    /// In anonymous mode a name means nothing once its holder is gone, so only known
    /// users can be written to; with host identities a name is stable.
    fn require_known(&self, key: &UserKey, name: &UserName) -> Result<(), Reject> {
        if self.config.auth == AuthMode::Anonymous && !self.users.contains(key) {
            let msg = format!("{name} is not online");
            return Err(Reject::new(ErrorCode::UserNotFound, msg));
        }
        Ok(())
    }
}
