//! Idle rooms leave memory (durable mode). A room nobody is in, with nothing waiting for
//! the store, that has seen no post or join for [`Config::room_idle_unload`] is dropped
//! from memory: its history is in the store. Its name and last seq stay (a few bytes), so
//! the room list and seqs stay right; whatever needs the room again waits for it to be
//! loaded from the store ([`Output::LoadRoom`](super::Output::LoadRoom) →
//! [`Input::RoomLoaded`](super::Input::RoomLoaded), the path cluster mode loads rooms
//! from the log by), and runs in order once it is there.
//!
//! Without a store a room's window is its history, so nothing is unloaded (a room with
//! no messages and nobody in it goes as soon as the last member leaves, in every mode).

use std::time::Instant;

use super::config::Config;
use super::rooms::Room;
use super::timers::{Timer, Timers};
use super::{Server, State};
use crate::ids::{RoomName, Seq};

/// Notes a post or a join in `room` at `now`, and arms its unload timer if none is armed
/// (a timer that fires early, because the room was used since, arms the next one).
pub(super) fn touch(room: &mut Room, timers: &mut Timers, config: &Config, now: Option<Instant>) {
    if !unloads(config) {
        return;
    }
    let Some(now) = now else {
        return;
    };
    room.touched = Some(now);
    if room.unload_at.is_none() {
        let at = now + config.room_idle_unload;
        room.unload_at = Some(at);
        timers.arm(at, Timer::Unload(room.name.clone()));
    }
}

/// Whether idle rooms leave memory: only when the store holds every message.
fn unloads(config: &Config) -> bool {
    config.durable && !config.cluster
}

impl State {
    /// [`touch`] for a room by name, at the time of the input being handled.
    pub(super) fn touch(&mut self, name: &RoomName) {
        if let Some(room) = self.rooms.get_mut(name) {
            touch(room, &mut self.timers, &self.config, self.out.now());
        }
    }

    /// A room's unload timer fired: the room leaves memory if it is idle and was not
    /// used since. A room someone is in gets no new timer (the last member's leave
    /// arms one); one that waits for the store or has someone typing tries again later.
    pub(super) fn on_unload_due(&mut self, at: Instant, name: &RoomName) {
        let Some(room) = self.rooms.get_mut(name) else {
            return;
        };
        if room.unload_at != Some(at) {
            return;
        }
        room.unload_at = None;
        if room.member_names().next().is_some() || self.shutting_down {
            return;
        }
        let idle = self.config.room_idle_unload;
        let due = room.touched.map_or(at, |t| t + idle);
        // A seq handed out to a message the store refused stays in memory until the
        // next message is delivered: reloaded from the store, the room would hand it
        // out again.
        let whole = room.last_seq == room.last_delivered;
        if due <= at && room.is_idle() && whole {
            self.unload(name);
            return;
        }
        let next = if due > at { due } else { at + idle };
        room.unload_at = Some(next);
        self.timers.arm(next, Timer::Unload(name.clone()));
    }

    /// Drops a room from memory, keeping its name and last seq (if it has messages).
    fn unload(&mut self, name: &RoomName) {
        if let Some(room) = self.rooms.remove(name)
            && room.last_seq > Seq(0)
        {
            self.stored.insert(room.name, room.last_delivered);
        }
    }

    /// The room limit is reached: unloads the idle room used longest ago, if any, at
    /// once. Says whether one went.
    pub(super) fn unload_one(&mut self) -> bool {
        if !unloads(&self.config) || self.shutting_down {
            return false;
        }
        let oldest = self
            .rooms
            .values()
            .filter(|r| r.is_idle() && r.last_seq == r.last_delivered)
            .min_by_key(|r| r.touched)
            .map(|r| r.name.clone());
        match oldest {
            Some(name) => {
                self.unload(&name);
                true
            }
            None => false,
        }
    }

    /// Whether the store holds `room` and it is not in memory.
    pub(super) fn is_stored(&self, room: &RoomName) -> bool {
        self.stored.contains_key(room)
    }

    /// Arms the unload timers of rooms restored before the first input (which brings
    /// the time).
    pub(super) fn arm_restored(&mut self) {
        for name in std::mem::take(&mut self.unarmed) {
            self.touch(&name);
        }
    }
}

impl Server {
    /// Durable mode: a room the store holds, registered without loading it (as the
    /// runtime does at startup): it is listed, keeps its seq, and is loaded from the
    /// store ([`Output::LoadRoom`](super::Output::LoadRoom)) when something needs it.
    /// Ignored without `durable` (nothing could load it) and for a room already in
    /// memory.
    pub fn add_stored_room(&mut self, room: RoomName, last_seq: Seq) {
        if !unloads(&self.st.config) || self.st.rooms.contains_key(&room) {
            return;
        }
        let known = self.st.stored.entry(room).or_insert(last_seq);
        *known = (*known).max(last_seq);
    }

    /// Number of rooms the store holds that are not in memory (durable mode).
    #[must_use]
    pub fn stored_room_count(&self) -> usize {
        self.st.stored.len()
    }
}
