//! `leave`: a session leaves a public room; the user leaves with their last session.

use super::{Caller, Reject};
use crate::ids::{RequestId, UserKey};
use crate::protocol::{ErrorCode, ServerFrame};
use crate::server::State;

impl State {
    pub(super) fn leave(
        &mut self,
        caller: &mut Caller<'_>,
        user: &UserKey,
        id: Option<RequestId>,
        raw_room: &str,
    ) -> Result<(), Reject> {
        let (room_name, kind) = self.room_for(user, raw_room)?;
        let left = ServerFrame::Left {
            id,
            room: room_name.clone(),
        };
        if !kind.has_membership() {
            // Nothing to leave: answer so clients can close the view.
            self.out.send_to(caller.sid, &left);
            return Ok(());
        }
        let not_in = || Reject::new(ErrorCode::NotMember, format!("not in {room_name}"));
        if !caller.session.rooms.remove(&room_name) {
            return Err(not_in());
        }
        let Some((room, mut env)) = self.room_env(&room_name) else {
            return Err(not_in());
        };
        room.remove_session(caller.sid);
        let last = room.member_mut(user).is_some_and(|member| {
            member.sessions.remove(&caller.sid);
            member.sessions.is_empty() && member.linger_until.is_none()
        });
        env.out.send_to(caller.sid, &left);
        if last {
            room.remove_member(user);
            room.stop_typing(&mut env, user);
            let name = env.users.display_name(user);
            self.announce_left(caller.now, &room_name, name);
        }
        Ok(())
    }
}
