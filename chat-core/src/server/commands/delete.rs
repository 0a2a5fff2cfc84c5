//! `delete`: a message becomes a tombstone (its author's, or any as the room's
//! moderator or owner).

use super::{Caller, Reject};
use crate::ids::{Seq, UserKey};
use crate::protocol::{DeleteRequest, EntryKind, ErrorCode, Message, Role};
use crate::server::State;

impl State {
    pub(super) fn delete(
        &mut self,
        caller: &mut Caller<'_>,
        user: &UserKey,
        req: DeleteRequest,
    ) -> Result<(), Reject> {
        let DeleteRequest {
            id,
            room,
            seq,
            client_id,
        } = req;
        let room = self.change_room(caller, user, &room)?;
        let moderator = {
            let who = caller.session.identity.as_deref();
            self.role(who, user, &room) >= Role::Moderator
        };
        if !self.is_resend(&room, user, client_id.as_ref()) {
            let target = self.change_target(&room, seq)?;
            if target.user.key() != *user && !moderator {
                let msg = format!("{room}#{seq} is {}'s message", target.user);
                return Err(Reject::new(ErrorCode::NotAuthor, msg));
            }
        }
        let author = self.users.display_name(user);
        let mut entry = Message::new(room, Seq(0), caller.now.utc, author, "".into(), client_id);
        entry.kind = EntryKind::Delete;
        entry.target = Some(seq);
        self.post_change(caller, user, id, entry, moderator)
    }
}
