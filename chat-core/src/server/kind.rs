//! Room kinds, and every rule that differs between them in one place.
//!
//! A public room has members: sessions join and leave it, presence is announced, and it
//! counts towards a session's room limit. A direct room (`@a,b`, the two users' keys in
//! order; `@a,a` is a note to self) has no membership: both users' sessions receive its
//! messages wherever they are, only those two users may use it, and it comes into being
//! with its first message rather than on a join, so that looking at made-up direct rooms
//! cannot use up the server's room limit. Private rooms come next as a third kind.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::users::Users;
use crate::ids::{RoomName, SessionId, UserKey, UserName};

/// What kind of room a name denotes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RoomKind {
    /// Joined and left by sessions; presence is announced.
    Public,
    /// The conversation of two users (the same user twice for a note to self).
    Direct(UserKey, UserKey),
}

impl RoomKind {
    /// The kind of the room with this (validated) name.
    pub fn of(name: &RoomName) -> RoomKind {
        match name.direct_users() {
            Some((a, b)) => RoomKind::Direct(a, b),
            None => RoomKind::Public,
        }
    }

    /// Whether the room has members that join and leave (and count towards a session's
    /// room limit); a direct room has none.
    pub fn has_membership(&self) -> bool {
        matches!(self, RoomKind::Public)
    }

    /// Whether `user` may use the room at all: anyone for a public room, only its two
    /// users for a direct one.
    pub fn admits(&self, user: &UserKey) -> bool {
        match self {
            RoomKind::Public => true,
            RoomKind::Direct(a, b) => a == user || b == user,
        }
    }

    /// Whether a session whose public rooms are `joined` may read and write the room
    /// `name` (its user already admitted): public rooms need a join, direct rooms none.
    pub fn reachable(&self, joined: &BTreeSet<RoomName>, name: &RoomName) -> bool {
        match self {
            RoomKind::Public => joined.contains(name),
            RoomKind::Direct(..) => true,
        }
    }

    /// Whether a `join` creates the room when it does not exist yet (if the server
    /// creates rooms on join at all). A direct room is created by its first message.
    pub fn created_by_join(&self) -> bool {
        matches!(self, RoomKind::Public)
    }

    /// Whether the host's `publish` may create the room even when joins create none: a
    /// direct room is the host's to start.
    pub fn publish_creates(&self, create_rooms_on_join: bool) -> bool {
        create_rooms_on_join || matches!(self, RoomKind::Direct(..))
    }

    /// For a direct room, the user other than `me` (me again for a note to self).
    pub fn peer(&self, me: &UserKey) -> Option<&UserKey> {
        match self {
            RoomKind::Public => None,
            RoomKind::Direct(a, b) => Some(if a == me { b } else { a }),
        }
    }

    /// A direct room's users, each once; none for a public room.
    fn direct_users(&self) -> impl Iterator<Item = &UserKey> {
        let (a, b) = match self {
            RoomKind::Public => (None, None),
            RoomKind::Direct(a, b) => (Some(a), (a != b).then_some(b)),
        };
        a.into_iter().chain(b)
    }

    /// The member list of a direct room: its users by their current names. `None` for a
    /// public room, whose members are its own list.
    pub fn direct_members(&self, users: &Users) -> Option<Vec<UserName>> {
        match self {
            RoomKind::Public => None,
            RoomKind::Direct(..) => {
                Some(self.direct_users().map(|k| users.display_name(k)).collect())
            }
        }
    }

    /// Number of users in a direct room (1 for a note to self).
    pub fn direct_user_count(&self) -> Option<usize> {
        match self {
            RoomKind::Public => None,
            RoomKind::Direct(..) => Some(self.direct_users().count()),
        }
    }

    /// The recipients of a room's events, ascending: a public room's joined sessions as
    /// given (shared, not copied), or every session of a direct room's users.
    pub fn recipients(&self, joined: &Arc<Vec<SessionId>>, users: &Users) -> Arc<Vec<SessionId>> {
        match self {
            RoomKind::Public => joined.clone(),
            RoomKind::Direct(..) => {
                let mut all: Vec<SessionId> = self
                    .direct_users()
                    .filter_map(|k| users.get(k))
                    .flat_map(|u| u.sessions.iter().copied())
                    .collect();
                all.sort_unstable();
                Arc::new(all)
            }
        }
    }

    /// One user's sessions among the recipients: in a public room the ones that joined
    /// (`joined`), in a direct room all of the user's.
    pub fn user_sessions<'a>(
        &self,
        key: &UserKey,
        joined: Option<&'a BTreeSet<SessionId>>,
        users: &'a Users,
    ) -> Option<&'a BTreeSet<SessionId>> {
        match self {
            RoomKind::Public => joined,
            RoomKind::Direct(..) => users.get(key).map(|u| &u.sessions),
        }
    }
}
