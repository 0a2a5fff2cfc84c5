//! What a client knows about one room.

use std::collections::BTreeSet;

use crate::ids::{Seq, UserName};

/// What the client knows about one room.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomState {
    pub(super) members: Vec<UserName>,
    pub(super) cursor: Option<Seq>,
    pub(super) typing: BTreeSet<UserName>,
    pub(super) member: bool,
    /// Version 2: the room's user count as the server last said it.
    pub(super) count: Option<usize>,
    /// Version 2: `members` holds only part of the room (it is above the server's
    /// presence threshold); [`Client::more_members`](super::Client::more_members) pages on.
    pub(super) partial: bool,
    /// This user's read marker here, as far as this client knows (its own
    /// [`Client::mark_read`](super::Client::mark_read) and the `read` echoes of the
    /// user's other sessions).
    pub(super) read: Option<Seq>,
}

impl RoomState {
    /// Who is in the room (as of the last join and presence events), in key order.
    #[must_use]
    pub fn members(&self) -> &[UserName] {
        &self.members
    }

    /// How many users are in the room: the server's count (version 2), or the list's
    /// length.
    #[must_use]
    pub fn count(&self) -> usize {
        self.count.unwrap_or(self.members.len())
    }

    /// Whether [`members`](Self::members) is only part of the room: the room is above
    /// the server's presence threshold, so the server sends counts instead of who came
    /// and went, and the list is paged on request.
    #[must_use]
    pub fn is_partial(&self) -> bool {
        self.partial
    }

    /// The last seq this client has seen (or skipped past on a first join).
    #[must_use]
    pub fn cursor(&self) -> Option<Seq> {
        self.cursor
    }

    /// The last seq this user has read here, as far as this client knows: what it
    /// marked itself and what the user's other sessions marked (forward only).
    #[must_use]
    pub fn read(&self) -> Option<Seq> {
        self.read
    }

    /// Who is typing right now.
    pub fn typing(&self) -> impl Iterator<Item = &UserName> {
        self.typing.iter()
    }

    /// Whether this client is in the room (false for direct-message rooms, which have no
    /// membership).
    #[must_use]
    pub fn is_member(&self) -> bool {
        self.member
    }
}
