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
}

impl RoomState {
    /// Who is in the room (as of the last join and presence events).
    #[must_use]
    pub fn members(&self) -> &[UserName] {
        &self.members
    }

    /// The last seq this client has seen (or skipped past on a first join).
    #[must_use]
    pub fn cursor(&self) -> Option<Seq> {
        self.cursor
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
