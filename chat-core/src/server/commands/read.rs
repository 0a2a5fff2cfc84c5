//! `read`: the user's read marker in a room moves forward (never back), and the user's
//! other sessions are told. A host identity's marker is durable: in durable mode it goes
//! to the store ([`Output::SaveReadMarker`]), which gives it back at startup
//! ([`Server::restore_read_markers`]). An anonymous user's lives as long as the user.

use super::{Caller, Reject};
use crate::ids::{RoomName, Seq, UserKey, UserName};
use crate::protocol::{ErrorCode, ServerFrame};
use crate::server::outputs::Output;
use crate::server::{Server, State};

impl State {
    pub(super) fn read(
        &mut self,
        caller: &mut Caller<'_>,
        user: &UserKey,
        raw: &str,
        seq: Seq,
    ) -> Result<(), Reject> {
        let (room, kind) = self.room_for(user, raw)?;
        if !kind.reachable(&caller.session.rooms, &room) {
            return Err(Reject::not_member(&room));
        }
        let last = self
            .rooms
            .get(&room)
            .map(|r| r.last_delivered)
            .or_else(|| self.stored.get(&room).copied())
            .unwrap_or(Seq(0));
        if seq > last {
            let msg = format!("{room} has no seq {seq} yet (its last is {last})");
            return Err(Reject::new(ErrorCode::NoSuchMessage, msg));
        }
        let Some(u) = self.users.get(user) else {
            return Ok(());
        };
        let marker = self
            .markers
            .entry(user.clone())
            .or_default()
            .entry(room.clone())
            .or_insert(Seq(0));
        if seq <= *marker {
            return Ok(()); // forward only; an older marker changes nothing
        }
        *marker = seq;
        if self.config.durable && u.token.is_none() {
            // A host identity's marker outlives the process. Not waited for: nothing
            // the user sees depends on its commit.
            self.out.push(Output::SaveReadMarker {
                user: u.name.clone(),
                room: room.clone(),
                seq,
            });
        }
        if self.config.cluster {
            // Shared through the log: the user's sessions on other servers are told,
            // and a server the user comes to later loads it.
            self.out.push(Output::ShareRead {
                room: room.clone(),
                user: u.name.clone(),
                seq,
            });
        }
        let others: Vec<_> = u
            .sessions
            .iter()
            .copied()
            .filter(|s| *s != caller.sid)
            .collect();
        let frame = ServerFrame::Read { room, seq };
        for sid in others {
            self.out.send_to(sid, &frame);
        }
        Ok(())
    }
}

impl State {
    /// Cluster mode: read markers of `user` from the shared log, each taken if it is
    /// ahead of the marker here and told to the user's sessions here.
    pub(in crate::server) fn on_read_markers(
        &mut self,
        user: &crate::ids::UserName,
        markers: Vec<(crate::ids::RoomName, Seq)>,
    ) {
        let key = user.key();
        let Some(u) = self.users.get(&key) else {
            return;
        };
        let sessions: Vec<_> = u.sessions.iter().copied().collect();
        let held = self.markers.entry(key).or_default();
        for (room, seq) in markers {
            let marker = held.entry(room.clone()).or_insert(Seq(0));
            if seq <= *marker {
                continue;
            }
            *marker = seq;
            let frame = ServerFrame::Read { room, seq };
            for &sid in &sessions {
                self.out.send_to(sid, &frame);
            }
        }
    }

    /// The messages of `room` after `user`'s read marker that `user` has to read: not
    /// the user's own, not deleted, not change entries (of the room's window).
    pub(super) fn unread(&self, user: &UserKey, room: &crate::server::rooms::Room) -> u64 {
        let marker = self
            .markers
            .get(user)
            .and_then(|m| m.get(&room.name).copied())
            .unwrap_or(Seq(0));
        let after = room.latest(usize::MAX).filter(|p| p.msg.seq > marker);
        let count = after
            .filter(|p| p.msg.kind.is_message() && !p.msg.deleted && p.msg.user.key() != *user)
            .count();
        u64::try_from(count).unwrap_or(u64::MAX)
    }
}

impl Server {
    /// Puts stored read markers back (durable mode, at startup, before any input): each
    /// user's last seq read per room, as [`Output::SaveReadMarker`] gave them to the
    /// store. A marker only moves forward: an older one than the engine holds changes
    /// nothing.
    pub fn restore_read_markers(
        &mut self,
        markers: impl IntoIterator<Item = (UserName, RoomName, Seq)>,
    ) {
        for (user, room, seq) in markers {
            let marker = self
                .st
                .markers
                .entry(user.key())
                .or_default()
                .entry(room)
                .or_insert(Seq(0));
            *marker = (*marker).max(seq);
        }
    }

    /// `user`'s read marker in `room`, if the user has one.
    #[must_use]
    pub fn read_marker(&self, user: &str, room: &RoomName) -> Option<Seq> {
        self.st
            .markers
            .get(&crate::ids::UserKey::of(user))
            .and_then(|m| m.get(room).copied())
    }
}
