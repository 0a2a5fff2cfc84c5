//! `read`: the user's read marker in a room moves forward (never back), and the user's
//! other sessions are told.

use super::{Caller, Reject};
use crate::ids::{Seq, UserKey};
use crate::protocol::{ErrorCode, ServerFrame};
use crate::server::State;

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
        let Some(u) = self.users.get_mut(user) else {
            return Ok(());
        };
        let marker = u.read.entry(room.clone()).or_insert(Seq(0));
        if seq <= *marker {
            return Ok(()); // forward only; an older marker changes nothing
        }
        *marker = seq;
        if self.config.cluster {
            self.out.push(crate::server::Output::ShareRead {
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
        let Some(u) = self.users.get_mut(&user.key()) else {
            return;
        };
        let sessions: Vec<_> = u.sessions.iter().copied().collect();
        for (room, seq) in markers {
            let marker = u.read.entry(room.clone()).or_insert(Seq(0));
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
            .users
            .get(user)
            .and_then(|u| u.read.get(&room.name).copied())
            .unwrap_or(Seq(0));
        let after = room.latest(usize::MAX).filter(|p| p.msg.seq > marker);
        let count = after
            .filter(|p| p.msg.kind.is_message() && !p.msg.deleted && p.msg.user.key() != *user)
            .count();
        u64::try_from(count).unwrap_or(u64::MAX)
    }
}
