//! `rooms` and `members`: what exists and who is there.

use super::{Caller, Reject};
use crate::ids::{RequestId, UserKey};
use crate::protocol::{ErrorCode, MEMBERS_PAGE, MEMBERS_PAGE_MAX, RoomInfo, ServerFrame};
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
                unread: Some(self.unread(user, r)).filter(|n| *n > 0),
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
                    unread: None,
                })
            }));
            rooms.sort_by(|a, b| a.name.cmp(&b.name));
        }
        self.out
            .send_to(caller.sid, &ServerFrame::Rooms { id, rooms });
        Ok(())
    }

    /// The users in a room: all of them (version 1), or a page (version 2, or a
    /// request with `after` or `limit`).
    pub(super) fn list_members(
        &mut self,
        caller: &mut Caller<'_>,
        user: &UserKey,
        id: Option<RequestId>,
        raw_room: &str,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<(), Reject> {
        let (room_name, kind) = self.room_for(user, raw_room)?;
        if !self
            .session_permissions(caller.session, &room_name, &kind, caller.now.mono)
            .presence
        {
            return Err(forbidden(format!("you may not see who is in {room_name}")));
        }
        let paged = caller.session.version >= 2 || after.is_some() || limit.is_some();
        if paged {
            let limit = match limit {
                None => MEMBERS_PAGE,
                Some(n @ 1..) if n as usize <= MEMBERS_PAGE_MAX => n as usize,
                Some(n) => {
                    let msg = format!("limit {n} is not within 1..={MEMBERS_PAGE_MAX}");
                    return Err(Reject::new(ErrorCode::InvalidRequest, msg));
                }
            };
            let (members, count, more) = match self.rooms.get_mut(&room_name) {
                Some(room) if room.kind.has_membership() => {
                    let after = after.map(UserKey::of);
                    let (page, more) = room.member_page(after.as_ref(), limit);
                    room.presence.listed();
                    (page, room.presence_count(), more)
                }
                // Direct rooms: their two users, as `join` lists them.
                room => {
                    let all = match room {
                        Some(room) => room.member_list(&self.users),
                        None => kind.direct_members(&self.users).ok_or_else(|| {
                            Reject::new(ErrorCode::RoomNotFound, format!("no room {room_name}"))
                        })?,
                    };
                    let count = all.len();
                    let after = after.map(UserKey::of);
                    let mut page: Vec<_> = all
                        .into_iter()
                        .filter(|n| after.as_ref().is_none_or(|a| n.key() > *a))
                        .collect();
                    let more = page.len() > limit;
                    page.truncate(limit);
                    (page, count, more)
                }
            };
            let frame = ServerFrame::Members {
                id,
                room: room_name,
                members,
                count: Some(count),
                more: Some(more),
            };
            self.out.send_to(caller.sid, &frame);
            return Ok(());
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
            count: None,
            more: None,
        };
        self.out.send_to(caller.sid, &frame);
        Ok(())
    }
}
