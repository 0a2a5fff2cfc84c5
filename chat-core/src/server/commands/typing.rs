//! `typing`: ephemeral, rate-limited, expiring by itself, never stored.

use std::time::Instant;

use super::{Caller, Reject};
use crate::ids::{RoomName, UserKey, UserName};
use crate::protocol::{Encoded, ServerFrame};
use crate::server::outputs::Output;
use crate::server::rooms::Room;
use crate::server::timers::Timer;
use crate::server::{Env, Now, State};

impl State {
    pub(super) fn typing(
        &mut self,
        caller: &mut Caller<'_>,
        user: &UserKey,
        raw_room: &str,
        active: bool,
    ) -> Result<(), Reject> {
        let (room_name, kind) = self.room_for(user, raw_room)?;
        if !kind.reachable(&caller.session.rooms, &room_name) {
            return Err(Reject::not_member(&room_name));
        }
        if !self
            .session_permissions(caller.session, &room_name, &kind, caller.now.mono)
            .send
        {
            return Ok(()); // who may not send has nothing to be typing
        }
        let rate = self.config.typing_rate;
        if caller.session.typing.take(rate, caller.now.mono).is_err() {
            return Ok(()); // coalesced: typing is best effort
        }
        if self.config.cluster && self.rooms.contains_key(&room_name) {
            self.out.push(Output::Typing {
                room: room_name.clone(),
                user: self.users.display_name(user),
                active,
            });
        }
        self.show_typing(caller.now, room_name, user, active);
        Ok(())
    }

    /// A user (here, or on another server in cluster mode) typing or stopped: the
    /// room's other sessions here are told when that changes; typing expires by itself.
    fn show_typing(&mut self, now: Now, room_name: RoomName, user: &UserKey, active: bool) {
        let until = now.mono + self.config.typing_expiry;
        let Some((room, mut env)) = self.room_env(&room_name) else {
            return;
        };
        if !active {
            room.stop_typing(&mut env, user);
            return;
        }
        let was_typing = room.typing.insert(user.clone(), until).is_some();
        if !was_typing {
            let frame = Encoded::new(&ServerFrame::Typing {
                room: room_name.clone(),
                user: env.users.display_name(user),
                active: true,
            });
            env.fan_out(room, &frame, None, Some(user));
        }
        self.timers
            .arm(until, Timer::Typing(room_name, user.clone()));
    }

    /// Cluster mode: another server's user typing or stopped, in a room held here.
    pub(crate) fn on_remote_typing(
        &mut self,
        now: Now,
        room: &RoomName,
        user: &UserName,
        active: bool,
    ) {
        if self.rooms.contains_key(room) {
            self.show_typing(now, room.clone(), &user.key(), active);
        }
    }

    /// A typing indicator's time is up, unless it was renewed since.
    pub(crate) fn on_typing_expired(&mut self, at: Instant, room_name: &RoomName, key: &UserKey) {
        if let Some((room, mut env)) = self.room_env(room_name)
            && room.typing.get(key) == Some(&at)
        {
            room.stop_typing(&mut env, key);
        }
    }

    /// Ends a user's typing in a room, telling the others.
    pub(crate) fn stop_typing(&mut self, room_name: &RoomName, key: &UserKey) {
        if let Some((room, mut env)) = self.room_env(room_name) {
            room.stop_typing(&mut env, key);
        }
    }
}

impl Room {
    /// Ends a user's typing here, telling the others, if the user was typing.
    pub(crate) fn stop_typing(&mut self, env: &mut Env<'_>, key: &UserKey) {
        if self.typing.remove(key).is_none() {
            return;
        }
        let frame = Encoded::new(&ServerFrame::Typing {
            room: self.name.clone(),
            user: env.users.display_name(key),
            active: false,
        });
        env.fan_out(self, &frame, None, Some(key));
    }
}
