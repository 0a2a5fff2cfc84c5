//! The core's timers: presence grace periods and ticks, typing expiry, the end of timed
//! bans and mutes, kept in firing order.

use std::collections::BTreeSet;
use std::time::Instant;

use crate::ids::{RoomName, SessionId, UserKey};

/// What a timer is for. A timer only acts if the state it was armed for still holds
/// at its instant (a later arm or a cancel makes it stale), so timers are never removed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// A user's last session in a public room went away: still listed until then.
    Linger(RoomName, UserKey),
    /// A user's last session went away: the name is held until then.
    Grace(UserKey),
    /// A typing indicator expires.
    Typing(RoomName, UserKey),
    /// Durable mode: a room may have been idle long enough to leave memory.
    Unload(RoomName),
    /// A session's host identity expires.
    Expiry(SessionId),
    /// Version 2: a room's coalesced joins and leaves are sent.
    Presence(RoomName),
    /// A timed ban or mute ends.
    Sanction(
        RoomName,
        super::moderation::Subject,
        super::moderation::SanctionKind,
    ),
}

/// Armed timers, earliest first (ties in [`Timer`] order, so firing is deterministic).
#[derive(Debug, Default)]
pub(crate) struct Timers {
    armed: BTreeSet<(Instant, Timer)>,
}

impl Timers {
    /// Arms `timer` at `at`.
    pub fn arm(&mut self, at: Instant, timer: Timer) {
        self.armed.insert((at, timer));
    }

    /// The earliest timer due at `now`, taken out.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, Timer)> {
        if self.armed.first()?.0 > now {
            return None;
        }
        self.armed.pop_first()
    }

    /// When the earliest timer fires.
    pub fn next(&self) -> Option<Instant> {
        self.armed.first().map(|(at, _)| *at)
    }
}
