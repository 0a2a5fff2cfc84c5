//! The host's moderation of a public room: kick (out now, with a reason), ban (out, and
//! kept out of the room, its history and its member list, for a while or for good), mute
//! (reads on, cannot post). Each is told to the room (`moderated`) before it takes
//! effect, so the user concerned learns why; bans and mutes are kept in the room's
//! access entry (`authz`), where `State::permissions` applies them.

use std::time::{Duration, Instant};

use super::outputs::Event;
use super::sessions::Phase;
use super::{Now, Server, State};
use crate::ids::{RoomName, SessionId, UserKey, UserName};
use crate::protocol::{Encoded, ModAction, ServerFrame};

/// Bans and mutes of one room.
#[derive(Debug, Default)]
pub(crate) struct Sanctions {
    /// Banned users, until when (`None`: for good).
    pub banned: std::collections::BTreeMap<UserKey, Option<Instant>>,
    pub muted: std::collections::BTreeSet<UserKey>,
}

impl Sanctions {
    /// Whether `user` is banned at `now`.
    pub fn is_banned(&self, user: &UserKey, now: Instant) -> bool {
        self.banned
            .get(user)
            .is_some_and(|until| until.is_none_or(|u| now < u))
    }
}

impl Server {
    /// Removes `user` from a public room now: every session of theirs in it gets
    /// `moderated` (action `kick`, with the reason) and `left`; the others see
    /// `moderated` and `user_left`. They may join again. Returns how many sessions left.
    ///
    /// # Errors
    /// The room or user name is not valid, or the room is a direct room.
    pub fn kick(
        &mut self,
        now: Now,
        room: &str,
        user: &str,
        reason: &str,
    ) -> Result<usize, String> {
        let (room, user) = self.st.target(room, user)?;
        self.st.tell(&room, &user, ModAction::Kick, reason, None);
        Ok(self.remove_user(now, &room, &user.key()))
    }

    /// Bans `user` from a public room for `length` (`None`: until [`Server::unban`]):
    /// as [`Server::kick`], and until then the user may not join, read or list it
    /// (`forbidden`). Returns how many sessions left.
    ///
    /// # Errors
    /// As [`Server::kick`].
    pub fn ban(
        &mut self,
        now: Now,
        room: &str,
        user: &str,
        reason: &str,
        length: Option<Duration>,
    ) -> Result<usize, String> {
        let (room, user) = self.st.target(room, user)?;
        let minutes = length.map(|d| d.as_secs().div_ceil(60));
        self.st.tell(&room, &user, ModAction::Ban, reason, minutes);
        let until = length.map(|d| now.mono + d);
        self.st
            .access
            .entry(room.clone())
            .or_default()
            .sanctions
            .banned
            .insert(user.key(), until);
        Ok(self.remove_user(now, &room, &user.key()))
    }

    /// Lifts a ban.
    ///
    /// # Errors
    /// As [`Server::kick`].
    pub fn unban(&mut self, room: &str, user: &str) -> Result<(), String> {
        let (room, user) = self.st.target(room, user)?;
        if let Some(a) = self.st.access.get_mut(&room) {
            a.sanctions.banned.remove(&user.key());
        }
        Ok(())
    }

    /// Mutes (or unmutes) `user` in a public room: muted, they read but their `send`
    /// is refused with `forbidden` and their typing is dropped. The room is told
    /// (`moderated`, action `mute` or `unmute`).
    ///
    /// # Errors
    /// As [`Server::kick`].
    pub fn mute(&mut self, room: &str, user: &str, muted: bool) -> Result<(), String> {
        let (room, user) = self.st.target(room, user)?;
        let action = if muted {
            ModAction::Mute
        } else {
            ModAction::Unmute
        };
        self.st.tell(&room, &user, action, "", None);
        let sanctions = &mut self.st.access.entry(room).or_default().sanctions;
        if muted {
            sanctions.muted.insert(user.key());
        } else {
            sanctions.muted.remove(&user.key());
        }
        Ok(())
    }

    /// Takes every session of `key` out of the room, as if each had left, and the user
    /// with them (lingering or not), announced.
    fn remove_user(&mut self, now: Now, room_name: &RoomName, key: &UserKey) -> usize {
        let sessions: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| matches!(&s.phase, Phase::Ready(k) if k == key))
            .filter(|(_, s)| s.rooms.contains(room_name))
            .map(|(sid, _)| *sid)
            .collect();
        let st = &mut self.st;
        let left = |room: &RoomName| {
            Encoded::new(&ServerFrame::Left {
                id: None,
                room: room.clone(),
            })
        };
        for sid in &sessions {
            if let Some(s) = self.sessions.get_mut(sid) {
                s.rooms.remove(room_name);
            }
            if let Some(room) = st.rooms.get_mut(room_name) {
                room.remove_session(*sid);
            }
            st.out.send_encoded(*sid, left(room_name));
        }
        let was_member = st
            .rooms
            .get_mut(room_name)
            .and_then(|room| room.remove_member(key))
            .is_some();
        if was_member {
            st.stop_typing(room_name, key);
            let name = st.users.display_name(key);
            st.announce_left(now, room_name, name);
        }
        sessions.len()
    }
}

impl State {
    /// A public room and a user, both valid.
    fn target(&self, room: &str, user: &str) -> Result<(RoomName, UserName), String> {
        let room = self.public_room(room)?;
        let user = UserName::parse(user, self.config.max_name_chars)
            .map_err(|e| format!("user name {e}"))?;
        Ok((room, user))
    }

    /// `moderated` to the room's sessions, and the host's event.
    fn tell(
        &mut self,
        room: &RoomName,
        user: &UserName,
        action: ModAction,
        reason: &str,
        minutes: Option<u64>,
    ) {
        let user = self.users.display_name(&user.key());
        let reason = (!reason.is_empty()).then(|| reason.to_owned());
        let frame = Encoded::new(&ServerFrame::Moderated {
            room: room.clone(),
            user: user.clone(),
            action,
            reason: reason.clone(),
            minutes,
        });
        self.fan_out(room, &frame, None, None);
        self.out.event(Event::Moderated {
            room: room.clone(),
            user,
            action,
            reason,
        });
    }
}
