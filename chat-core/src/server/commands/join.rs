//! `join`: enter a room (created on first join) or resume it from a seq.

use super::{Caller, Reject, room_unavailable};
use chrono::{DateTime, Utc};

use crate::ids::{RequestId, RoomName, Seq, UserKey};
use crate::protocol::{Encoded, ErrorCode, JoinRequest, JoinedExtras, Role, ServerFrame};
use crate::server::authz::forbidden;
use crate::server::rooms::Room;
use crate::server::users::Users;
use crate::server::{Permissions, State};

impl State {
    pub(super) fn join(
        &mut self,
        caller: &mut Caller<'_>,
        user: &UserKey,
        req: JoinRequest,
    ) -> Result<(), Reject> {
        let (room_name, kind) = self.room_for(user, &req.room)?;
        let perms = self.session_permissions(caller.session, &room_name, &kind, caller.now.mono);
        if !perms.join {
            return Err(forbidden(format!("you may not join {room_name}")));
        }
        if self.needs_load(&room_name) {
            // A join of hello's: it runs again once the log has given the room.
            let frame = crate::protocol::ClientFrame::Join(req);
            self.park(
                room_name,
                crate::server::cluster::Parked::Frame(caller.sid, frame),
            );
            return Ok(());
        }
        let JoinRequest { id, room: _, since } = req;
        let already = caller.session.rooms.contains(&room_name);
        let max_rooms = self.config.max_rooms_per_session;
        if !already && kind.has_membership() && caller.session.rooms.len() >= max_rooms {
            let msg = format!("a session can be in at most {max_rooms} rooms");
            return Err(Reject::new(ErrorCode::TooManyRooms, msg));
        }
        if !kind.created_by_join() && !self.rooms.contains_key(&room_name) {
            // Nobody has written here yet: show it empty without creating it.
            let members = kind.direct_members(&self.users).unwrap_or_default();
            let frame = ServerFrame::Joined {
                id,
                room: room_name,
                members,
                messages: vec![],
                gap: since.is_some_and(|s| s > Seq(0)),
                last_seq: Seq(0),
                topic: None,
                slow_mode: None,
                role: None,
            };
            self.out.send_to(caller.sid, &frame);
            return Ok(());
        }
        let created = kind.has_membership() && !self.rooms.contains_key(&room_name);
        self.open_room(&room_name, |_, create_on_join| create_on_join)
            .map_err(|code| room_unavailable(code, &room_name))?;
        if created {
            self.creator_owns(caller.session, user, &room_name);
        }
        let extras = if kind.has_membership() {
            self.joined_extras(caller.session, user, &room_name)
        } else {
            JoinedExtras::default()
        };
        let (room, env) = self
            .room_env(&room_name)
            .ok_or_else(|| room_unavailable(ErrorCode::RoomNotFound, &room_name))?;
        let mut announce = false;
        if kind.has_membership() && !already {
            room.add_session(caller.sid);
            if !perms.presence {
                room.blind.insert(caller.sid);
            }
            announce = room.add_member_session(user, caller.sid, || env.users.display_name(user));
            caller.session.rooms.insert(room_name.clone());
        }
        let on_join = env.config.history_on_join;
        let floor = if kind.has_membership() {
            None
        } else {
            env.users.direct_floor(user)
        };
        let frame = joined_frame(
            room, env.users, on_join, id, since, user, perms, floor, &extras,
        );
        if announce {
            self.announce_joined(caller.now, &room_name, user, caller.sid);
        }
        self.out.send_encoded(caller.sid, frame);
        Ok(())
    }
}

/// The `joined` frame for an existing room: its members and the messages for `since`.
/// Built from the room's member list in JSON and its messages' encoded frames, so
/// each join copies bytes instead of serializing every member's name again.
#[allow(clippy::too_many_arguments)] // one frame's every input
fn joined_frame(
    room: &Room,
    users: &Users,
    on_join: usize,
    id: Option<RequestId>,
    since: Option<Seq>,
    reader: &UserKey,
    perms: Permissions,
    floor: Option<DateTime<Utc>>,
    extras: &JoinedExtras,
) -> Encoded {
    // A direct room's two users are listed by their current names, as `members` does.
    let direct_members = room
        .kind
        .direct_members(users)
        .map(|names| serde_json::to_vec(&names).expect("names always serialize"));
    let members_json = match direct_members {
        _ if !perms.presence => std::borrow::Cow::Borrowed(&b"[]"[..]),
        Some(json) => std::borrow::Cow::Owned(json),
        None => room.members_json(),
    };
    let (messages, gap) = match since {
        _ if !perms.read => (room.latest(0), false),
        None => (room.latest(on_join), false),
        Some(since) => match room.after(since) {
            Some(messages) => (messages, false),
            None => (room.latest(on_join), true),
        },
    };
    let messages = messages
        .filter(|p| floor.is_none_or(|f| p.msg.ts >= f))
        .map(|p| (&p.msg, &p.frame));
    let last_seq = room.last_delivered;
    let room_name: &RoomName = &room.name;
    let frame = Encoded::joined(
        id,
        room_name,
        &members_json,
        messages.clone(),
        gap,
        last_seq,
        reader,
        extras,
    );
    debug_assert_eq!(
        frame,
        Encoded::new(&ServerFrame::Joined {
            id,
            room: room_name.clone(),
            members: if perms.presence {
                room.member_list(users)
            } else {
                vec![]
            },
            messages: messages.map(|(m, _)| m.seen_by(reader)).collect(),
            gap,
            last_seq,
            topic: extras.topic.clone(),
            slow_mode: extras.slow_mode,
            role: extras.role,
        })
    );
    frame
}

impl State {
    /// What a public room's `joined` carries besides members and messages: its topic,
    /// its slow mode, and the user's role.
    fn joined_extras(
        &self,
        session: &crate::server::sessions::Session,
        user: &UserKey,
        room: &RoomName,
    ) -> JoinedExtras {
        let access = self.access.get(room);
        let role = self.role(session.identity.as_deref(), user, room);
        JoinedExtras {
            topic: access.and_then(|a| a.topic.clone()),
            slow_mode: access.map(|a| a.slow_mode).filter(|s| *s > 0),
            role: (role > Role::Member).then_some(role),
        }
    }
}
