//! `join`: enter a room (created on first join) or resume it from a seq.

use super::{Caller, Reject, room_unavailable};
use chrono::{DateTime, Utc};

use crate::ids::{RequestId, RoomName, Seq, UserKey};
use crate::protocol::{
    Encoded, ErrorCode, JoinRequest, JoinedExtras, MEMBERS_PAGE, Role, ServerFrame,
};
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
            let count = (caller.session.version >= 2).then_some(members.len());
            let frame = ServerFrame::Joined {
                id,
                room: room_name,
                members,
                count,
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
            room.add_session(caller.sid, caller.session.version);
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
        let listing = match caller.session.version {
            _ if !perms.presence => Listing::None,
            1 => Listing::Whole,
            _ if room.presence_count() > env.config.presence_threshold => Listing::FirstPage,
            _ => Listing::Counted,
        };
        let first_page = env.config.presence_threshold.min(MEMBERS_PAGE);
        let frame = joined_frame(
            room, env.users, on_join, id, since, user, perms, floor, listing, first_page, &extras,
        );
        if listing == Listing::Counted || listing == Listing::FirstPage {
            // This session now holds the list as it is (see `Coalescer`); its own user's
            // join, noted next, is news to the others only.
            room.presence.listed();
            room.presence.partial |= listing == Listing::FirstPage;
        }
        if announce {
            self.announce_joined(caller.now, &room_name, user, caller.sid);
        }
        self.out.send_encoded(caller.sid, frame);
        Ok(())
    }
}

/// What a `joined` lists of a room's members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listing {
    /// Nobody: the session may not see presence.
    None,
    /// Version 1: everyone, no count.
    Whole,
    /// Version 2 at or below the threshold: everyone, and the count.
    Counted,
    /// Version 2 above the threshold: the first page, and the count.
    FirstPage,
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
    listing: Listing,
    first_page: usize,
    extras: &JoinedExtras,
) -> Encoded {
    // A direct room's two users are listed by their current names, as `members` does.
    let direct_members = room
        .kind
        .direct_members(users)
        .map(|names| serde_json::to_vec(&names).expect("names always serialize"));
    let members_json = match direct_members {
        _ if listing == Listing::None => std::borrow::Cow::Borrowed(&b"[]"[..]),
        Some(json) => std::borrow::Cow::Owned(json),
        None if listing == Listing::FirstPage => {
            let (page, _) = room.member_page(None, first_page);
            std::borrow::Cow::Owned(serde_json::to_vec(&page).expect("names always serialize"))
        }
        None => room.members_json(),
    };
    let count = match listing {
        Listing::None | Listing::Whole => None,
        Listing::Counted | Listing::FirstPage => Some(room.user_count()),
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
        .map(|p| (&p.msg, p.frame()));
    let last_seq = room.last_delivered;
    let room_name: &RoomName = &room.name;
    let frame = Encoded::joined(
        id,
        room_name,
        &members_json,
        count,
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
            members: match listing {
                Listing::None => vec![],
                Listing::FirstPage => room.member_page(None, first_page).0,
                Listing::Whole | Listing::Counted => room.member_list(users),
            },
            count,
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
