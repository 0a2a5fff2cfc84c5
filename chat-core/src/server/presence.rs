//! Presence as users see it: a user is in a room while any of their sessions is, and
//! for a grace period after the last one disconnects (so a page refresh does not
//! announce a leave and a join); a user's name is held for the same grace period.

use std::time::Instant;

use super::outputs::{CloseReason, Event, Output};
use super::sessions::Phase;
use super::timers::Timer;
use super::{Now, Server, State};
use crate::ids::{RoomName, SessionId, UserKey, UserName};
use crate::protocol::{Encoded, ServerFrame};

impl Server {
    /// Forgets a session: leaves its rooms (with the presence grace period), releases its
    /// user. With a reason, the driver is told to close it.
    pub(super) fn drop_session(&mut self, now: Now, sid: SessionId, reason: Option<CloseReason>) {
        let Some(session) = self.sessions.remove(&sid) else {
            return;
        };
        let st = &mut self.st;
        st.out.close(sid);
        if let Some(reason) = reason {
            st.out.push(Output::Close {
                session: sid,
                reason,
            });
        }
        let Phase::Ready(key) = session.phase else {
            st.out.event(Event::SessionClosed {
                session: sid,
                user: None,
                reason,
            });
            return;
        };
        let grace = st.config.presence_grace;
        for room_name in &session.rooms {
            let Some(room) = st.rooms.get_mut(room_name) else {
                continue;
            };
            room.remove_session(sid);
            let Some(member) = room.member_mut(&key) else {
                continue;
            };
            member.sessions.remove(&sid);
            if member.sessions.is_empty() {
                if st.shutting_down {
                    room.remove_member(&key);
                } else {
                    let until = now.mono + grace;
                    member.linger_until = Some(until);
                    st.timers
                        .arm(until, Timer::Linger(room_name.clone(), key.clone()));
                }
                if room.typing.contains_key(&key) {
                    st.stop_typing(room_name, &key);
                }
            }
        }
        if let Some(user) = st.users.get_mut(&key) {
            user.sessions.remove(&sid);
            if user.sessions.is_empty() {
                let until = now.mono + grace;
                user.grace_until = Some(until);
                st.timers.arm(until, Timer::Grace(key.clone()));
                // Typing in rooms without membership (direct rooms) ends with the user's
                // last session.
                let direct: Vec<RoomName> = st
                    .rooms
                    .values()
                    .filter(|r| !r.kind.has_membership() && r.typing.contains_key(&key))
                    .map(|r| r.name.clone())
                    .collect();
                for room in direct {
                    st.stop_typing(&room, &key);
                }
            }
        }
        let name = st.users.display_name(&key);
        st.out.event(Event::SessionClosed {
            session: sid,
            user: Some(name),
            reason,
        });
    }
}

impl State {
    /// A lingering member's time is up: unless a session came back, the user left.
    pub(super) fn on_linger_expired(
        &mut self,
        now: Now,
        at: Instant,
        room_name: &RoomName,
        key: &UserKey,
    ) {
        let Some(room) = self.rooms.get_mut(room_name) else {
            return;
        };
        let expired = room
            .member(key)
            .is_some_and(|m| m.sessions.is_empty() && m.linger_until == Some(at));
        if !expired {
            return;
        }
        room.remove_member(key);
        let user = self.users.display_name(key);
        self.announce_left(now, room_name, user);
    }

    /// A user's grace period is up: unless a session came back, the name is free.
    pub(super) fn on_grace_expired(&mut self, at: Instant, key: &UserKey) {
        let expired = self
            .users
            .get(key)
            .is_some_and(|u| u.sessions.is_empty() && u.grace_until == Some(at));
        if expired {
            let name = self.users.display_name(key);
            let anonymous = self.users.get(key).is_some_and(|u| u.token.is_some());
            self.users.remove(key);
            if anonymous {
                // An anonymous user's read markers live as long as the user: the name
                // may go to someone else now. A host identity's stay (`commands/read.rs`).
                self.markers.remove(key);
            }
            self.release_name(&name);
        }
    }

    /// Version 2: `user` now shows as present in the room (or not); the change waits
    /// for the room's presence tick, armed if none is. Nothing is kept for a room
    /// without version-2 sessions: one that joins later is handed the list as it is.
    pub(super) fn note_presence(
        &mut self,
        now: Now,
        room_name: &RoomName,
        user: &UserName,
        present: bool,
    ) {
        let Some(room) = self.rooms.get_mut(room_name) else {
            return;
        };
        let tick = self.config.presence_tick_for(room.presence_count());
        if let Some(at) = room.note_presence(user, present, now.mono, tick) {
            self.timers.arm(at, Timer::Presence(room_name.clone()));
        }
    }

    /// Version 2: a room's presence tick. Its version-2 sessions that may see presence
    /// get one `presence` frame, encoded once: who came and went (at or below the
    /// threshold), the count only (above it), or the whole list (back at or below it
    /// after being above).
    pub(super) fn on_presence_tick(&mut self, at: Instant, room_name: &RoomName) {
        let threshold = self.config.presence_threshold;
        let Some(room) = self.rooms.get_mut(room_name) else {
            return;
        };
        if room.presence.due != Some(at) {
            return;
        }
        room.presence.due = None;
        let (joins, leaves) = room.presence.take();
        if joins.is_empty() && leaves.is_empty() {
            return;
        }
        let count = room.presence_count();
        let (joins, leaves, members) = if count > threshold {
            room.presence.partial = true;
            (None, None, None)
        } else if room.presence.partial {
            room.presence.partial = false;
            (None, None, Some(room.member_list(&self.users)))
        } else {
            (Some(joins), Some(leaves), None)
        };
        let frame = Encoded::new(&ServerFrame::Presence {
            room: room_name.clone(),
            joins,
            leaves,
            members,
            count,
        });
        let except: Vec<SessionId> = room.blind.iter().copied().collect();
        self.out.fan_out(room.v2_sessions().clone(), &frame, except);
    }

    /// `user_joined` to the room's other sessions.
    pub(super) fn announce_joined(
        &mut self,
        now: Now,
        room_name: &RoomName,
        key: &UserKey,
        joiner: SessionId,
    ) {
        let user = self.users.display_name(key);
        let notice = Encoded::new(&ServerFrame::UserJoined {
            room: room_name.clone(),
            user: user.clone(),
            ts: now.utc,
        });
        // Cluster mode: the log counts the user over servers; this server's sessions
        // are told now unless the user was already shown as present elsewhere.
        let shown = self.config.cluster
            && self
                .rooms
                .get(room_name)
                .is_some_and(|r| r.cluster.present.contains_key(key));
        if self.config.cluster {
            self.cluster_presence(room_name, user.clone(), true);
        }
        if !shown {
            self.fan_out_presence(room_name, &notice, Some(joiner));
            self.note_presence(now, room_name, &user, true);
        }
        self.out.event(Event::UserJoined {
            room: room_name.clone(),
            user,
        });
    }

    /// `user_left` to the room; a room left with nothing worth keeping goes.
    pub(super) fn announce_left(&mut self, now: Now, room_name: &RoomName, user: UserName) {
        let notice = Encoded::new(&ServerFrame::UserLeft {
            room: room_name.clone(),
            user: user.clone(),
            ts: now.utc,
        });
        // Cluster mode: a user the log showed as present leaves when the log says so
        // (their sessions on other servers may keep them in).
        let shown = self.config.cluster
            && self
                .rooms
                .get(room_name)
                .is_some_and(|r| r.cluster.present.contains_key(&user.key()));
        if self.config.cluster {
            self.cluster_presence(room_name, user.clone(), false);
        }
        if !shown {
            self.fan_out_presence(room_name, &notice, None);
            self.note_presence(now, room_name, &user, false);
        }
        self.out.event(Event::UserLeft {
            room: room_name.clone(),
            user,
        });
        if self.rooms.get(room_name).is_some_and(|r| r.is_disposable()) {
            self.rooms.remove(room_name);
            if self.config.cluster {
                self.out.push(Output::UnloadRoom {
                    room: room_name.clone(),
                });
            }
        } else if self.rooms.get(room_name).is_some_and(|r| r.is_idle()) {
            // Durable mode: the room leaves memory if nobody comes back for a while.
            self.touch(room_name);
        }
    }
}
