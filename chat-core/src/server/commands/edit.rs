//! `edit`: a new body for one of the user's own messages, within the edit window.

use super::{Caller, Reject};
use crate::ids::{Seq, UserKey};
use crate::protocol::{EditRequest, EntryKind, ErrorCode, Message};
use crate::server::State;
use crate::server::messages::check_body;

impl State {
    pub(super) fn edit(
        &mut self,
        caller: &mut Caller<'_>,
        user: &UserKey,
        req: EditRequest,
    ) -> Result<(), Reject> {
        let EditRequest {
            id,
            room,
            seq,
            body,
            client_id,
        } = req;
        let room = self.change_room(caller, user, &room)?;
        check_body(&body, self.config.max_body_bytes)
            .map_err(|(code, msg)| Reject::new(code, msg))?;
        if !self.is_resend(&room, user, client_id.as_ref()) {
            let target = self.change_target(&room, seq)?;
            if target.user.key() != *user {
                let msg = format!("{room}#{seq} is {}'s message", target.user);
                return Err(Reject::new(ErrorCode::NotAuthor, msg));
            }
            let window = self.config.edit_window;
            // At the millisecond, as messages are stamped.
            let age = caller.now.utc.timestamp_millis() - target.ts.timestamp_millis();
            if u128::try_from(age).is_ok_and(|age| age > window.as_millis()) {
                let msg = format!(
                    "{room}#{seq} can no longer be edited (messages can be edited for {} s)",
                    window.as_secs()
                );
                return Err(Reject::new(ErrorCode::EditWindowPassed, msg));
            }
        }
        let author = self.users.display_name(user);
        let mut entry = Message::new(room, Seq(0), caller.now.utc, author, body.into(), client_id);
        entry.kind = EntryKind::Edit;
        entry.target = Some(seq);
        self.post_change(caller, user, id, entry, false)
    }
}
