//! `typing`: ephemeral, rate-limited, expiring by itself, never stored.

use std::time::Instant;

use super::{Caller, Reject};
use crate::ids::{RoomName, UserKey};
use crate::protocol::{Encoded, ServerFrame};
use crate::server::rooms::Room;
use crate::server::timers::Timer;
use crate::server::{Env, State};

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
        let until = caller.now.mono + self.config.typing_expiry;
        let Some((room, mut env)) = self.room_env(&room_name) else {
            return Ok(());
        };
        if !active {
            room.stop_typing(&mut env, user);
            return Ok(());
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
        Ok(())
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
