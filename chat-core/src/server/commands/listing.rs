//! `rooms` and `members`: what exists and who is there.

use super::{Caller, Reject};
use crate::ids::{RequestId, UserKey};
use crate::protocol::{ErrorCode, RoomInfo, ServerFrame};
use crate::server::State;
use crate::server::authz::forbidden;
use crate::server::kind::RoomKind;

impl State {
    /// Every public room, and the direct rooms of this user.
    pub(super) fn list_rooms(
        &mut self,
        caller: &mut Caller<'_>,
        user: &UserKey,
        id: Option<RequestId>,
    ) -> Result<(), Reject> {
        let mut rooms: Vec<RoomInfo> = self
            .rooms
            .values()
            .filter(|r| {
                r.kind.admits(user)
                    && self
                        .session_permissions(caller.session, &r.name, &r.kind, caller.now.mono)
                        .join
            })
            .map(|r| RoomInfo {
                name: r.name.clone(),
                members: r.user_count(),
                direct: !r.kind.has_membership(),
                last_seq: r.last_delivered,
                topic: self.access.get(&r.name).and_then(|a| a.topic.clone()),
            })
            .collect();
        if !self.stored.is_empty() {
            // Durable mode: the rooms that left memory idle are listed too (nobody is in
            // them), in the same name order.
            rooms.extend(self.stored.iter().filter_map(|(name, &last_seq)| {
                let kind = RoomKind::of(name);
                kind.admits(user).then(|| RoomInfo {
                    name: name.clone(),
                    members: kind.direct_user_count().unwrap_or(0),
                    direct: !kind.has_membership(),
                    last_seq,
                    topic: self.access.get(name).and_then(|a| a.topic.clone()),
                })
            }));
            rooms.sort_by(|a, b| a.name.cmp(&b.name));
        }
        self.out
            .send_to(caller.sid, &ServerFrame::Rooms { id, rooms });
        Ok(())
    }

    /// The users in a room.
    pub(super) fn list_members(
        &mut self,
        caller: &mut Caller<'_>,
        user: &UserKey,
        id: Option<RequestId>,
        raw_room: &str,
    ) -> Result<(), Reject> {
        let (room_name, kind) = self.room_for(user, raw_room)?;
        if !self
            .session_permissions(caller.session, &room_name, &kind, caller.now.mono)
            .presence
        {
            return Err(forbidden(format!("you may not see who is in {room_name}")));
        }
        let members = match self.rooms.get(&room_name) {
            Some(room) => room.member_list(&self.users),
            // A direct room nobody has written to yet: its users, as `join` lists them.
            None => kind.direct_members(&self.users).ok_or_else(|| {
                Reject::new(ErrorCode::RoomNotFound, format!("no room {room_name}"))
            })?,
        };
        let frame = ServerFrame::Members {
            id,
            room: room_name,
            members,
        };
        self.out.send_to(caller.sid, &frame);
        Ok(())
    }
}
