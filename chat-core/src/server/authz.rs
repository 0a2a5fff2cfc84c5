//! Who a session is (the host's [`Identity`]) and what it may do in a room
//! ([`Permissions`]), decided in one place: [`State::permissions`].
//!
//! A public room's permissions come from its [`RoomAccess`] (open, private, read-only:
//! the engine's rules, set in [`Config::rooms`](super::Config::rooms) or by
//! [`Server::set_room_access`]), then from the host's [`RoomPolicy`], if any, which sees
//! the rules' answer and may narrow or widen it. The policy is a plain function called on
//! the engine's thread for each check: it must answer from memory (the host keeps what
//! it needs from its database in the policy's own state), so no room ever waits for
//! another. A direct room needs no policy: only its two users may use it at all.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};

use super::kind::RoomKind;
use super::reject::Reject;
use super::rooms::Room;
use super::sessions::{Phase, Session};
use super::{Env, Now, Server, State};
use crate::ids::{RoomName, SessionId, UserKey, UserName};
use crate::protocol::{Encoded, ErrorCode, Role};

/// Who a session is, as the host says: given with the connection
/// ([`Input::ConnectedAs`](super::Input::ConnectedAs)), before any frame is read.
/// The session's user is then this one, whatever its `hello` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user's id, which is also the name the chat shows (on messages, in member
    /// lists, as the address of direct messages): stable and unique per user, a valid
    /// user name (see docs/PROTOCOL.md).
    pub user: String,
    /// The host's roles for this user (`admin`, `staff`, ...), as room rules and the
    /// [`RoomPolicy`] see them.
    pub roles: BTreeSet<String>,
    /// When the credentials stop being valid: the session then gets an `auth_expired`
    /// error and is closed (close code 4001).
    pub expires: Option<DateTime<Utc>>,
}

impl Identity {
    /// A user with no roles and no expiry.
    pub fn new(user: impl Into<String>) -> Identity {
        Identity {
            user: user.into(),
            roles: BTreeSet::new(),
            expires: None,
        }
    }

    /// The same identity with one more role.
    #[must_use]
    pub fn with_role(mut self, role: impl Into<String>) -> Identity {
        self.roles.insert(role.into());
        self
    }

    /// The same identity expiring at `at`.
    #[must_use]
    pub fn expiring(mut self, at: DateTime<Utc>) -> Identity {
        self.expires = Some(at);
        self
    }

    /// Whether the user has any of `roles`.
    #[must_use]
    pub fn has_any_role(&self, roles: &BTreeSet<String>) -> bool {
        !self.roles.is_disjoint(roles)
    }
}

/// What a user may do in one room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)] // four independent permissions
pub struct Permissions {
    /// Join the room (and see it in `rooms`). Refused with `forbidden`.
    pub join: bool,
    /// Read its messages: those of `joined` and `history`. Without it `joined` carries
    /// no messages and `history` is refused with `forbidden`.
    pub read: bool,
    /// Post to it. Refused with `forbidden`; typing notices are dropped.
    pub send: bool,
    /// See who is there: `joined` lists no members without it, `members` is refused
    /// with `forbidden`, and no `user_joined`/`user_left` reach the session.
    pub presence: bool,
}

impl Permissions {
    /// Everything: an open room.
    pub const ALL: Permissions = Permissions {
        join: true,
        read: true,
        send: true,
        presence: true,
    };
    /// Nothing: a private room to an outsider.
    pub const NONE: Permissions = Permissions {
        join: false,
        read: false,
        send: false,
        presence: false,
    };
    /// Join, read and see presence, but not send: a read-only room to most users.
    pub const READ_ONLY: Permissions = Permissions {
        send: false,
        ..Permissions::ALL
    };
}

/// How a public room admits users: the engine's rules for it. Both parts may be set
/// (a private read-only room).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoomAccess {
    /// A private room: only users invited ([`Server::invite`]) or holding one of these
    /// roles may join it, read it, send to it, see who is there or see it in `rooms`.
    /// `None`: open to every user.
    pub members: Option<BTreeSet<String>>,
    /// A read-only room: only users holding one of these roles may send; the others
    /// join and read. `None`: every user who may join may send.
    pub senders: Option<BTreeSet<String>>,
}

impl RoomAccess {
    /// Open to everyone (the default).
    #[must_use]
    pub fn open() -> RoomAccess {
        RoomAccess::default()
    }

    /// Private: invited users and users with one of `roles` (none: invited users only).
    #[must_use]
    pub fn private<R: Into<String>>(roles: impl IntoIterator<Item = R>) -> RoomAccess {
        RoomAccess {
            members: Some(roles.into_iter().map(Into::into).collect()),
            senders: None,
        }
    }

    /// Read-only: users with one of `roles` send, everyone else reads.
    #[must_use]
    pub fn read_only<R: Into<String>>(senders: impl IntoIterator<Item = R>) -> RoomAccess {
        RoomAccess {
            members: None,
            senders: Some(senders.into_iter().map(Into::into).collect()),
        }
    }

    /// The rules' answer for `who`, `invited` to the room or not.
    #[must_use]
    pub fn permissions(&self, who: &Identity, invited: bool) -> Permissions {
        let member = match &self.members {
            None => true,
            Some(roles) => invited || who.has_any_role(roles),
        };
        if !member {
            return Permissions::NONE;
        }
        match &self.senders {
            Some(roles) if !who.has_any_role(roles) => Permissions::READ_ONLY,
            _ => Permissions::ALL,
        }
    }
}

/// The host's rule for public rooms: given who asks, which room, and what the room's
/// [`RoomAccess`] allows, what the user may do. Called on the engine's thread for every
/// join, send, history page, member list and room list: answer from memory, quickly.
pub trait RoomPolicy: Send + Sync + 'static {
    /// The user's permissions in `room`; `rules` is what the room's access allows.
    fn permissions(&self, who: &Identity, room: &RoomName, rules: Permissions) -> Permissions;

    /// The user's role in `room` from the host's own rules (e.g. an `admin` account
    /// owns every room), or `None` (the default) to leave it to the roles given by
    /// [`Server::set_role`], by owners (`set_role` frames) and to the room's creator.
    /// A user holds the higher of this and the room's own.
    ///
    /// Also asked for users who are not online (a moderator acting on an offline user,
    /// [`Server::role`]): `who` is then an identity with the user's id only (no roles,
    /// no expiry), so a policy that gives roles by user id (from the host's own
    /// records) answers for them too; one that reads only `who.roles` sees a member.
    fn role(&self, who: &Identity, room: &RoomName) -> Option<Role> {
        let _ = (who, room);
        None
    }
}

impl<F> RoomPolicy for F
where
    F: Fn(&Identity, &RoomName, Permissions) -> Permissions + Send + Sync + 'static,
{
    fn permissions(&self, who: &Identity, room: &RoomName, rules: Permissions) -> Permissions {
        self(who, room, rules)
    }
}

/// A [`RoomPolicy`] as [`Config`](super::Config) holds it (cloneable, printable).
#[derive(Clone)]
pub struct SharedPolicy(pub Arc<dyn RoomPolicy>);

impl SharedPolicy {
    /// Wraps a policy.
    pub fn new(policy: impl RoomPolicy) -> SharedPolicy {
        SharedPolicy(Arc::new(policy))
    }
}

impl fmt::Debug for SharedPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedPolicy(..)")
    }
}

/// A room's access rules and its invitations.
#[derive(Debug, Default)]
pub(crate) struct Access {
    pub rules: RoomAccess,
    pub invited: BTreeSet<UserKey>,
    /// Bans and mutes (`moderation`).
    pub sanctions: super::moderation::Sanctions,
    /// Roles above `member` given in this room (by the host, an owner, or to the
    /// room's creator).
    pub roles: BTreeMap<UserKey, Role>,
    /// The topic, if any.
    pub topic: Option<String>,
    /// Slow mode: seconds between a member's posts (0: off).
    pub slow_mode: u32,
    /// Slow mode: when each member last posted here.
    pub last_post: BTreeMap<UserKey, Instant>,
    /// `State::mod_changes` at this room's last moderation change here.
    pub changed: u64,
}

/// Every room's access, by name, kept apart from the rooms so that it holds before a
/// room exists and after it is dropped.
pub(crate) type AccessTable = BTreeMap<RoomName, Access>;

impl State {
    /// What `who` may do in `room` (of kind `kind`): the one place permissions are
    /// decided.
    pub(crate) fn permissions(
        &self,
        who: &Identity,
        key: &UserKey,
        room: &RoomName,
        kind: &RoomKind,
        now: Instant,
    ) -> Permissions {
        if !kind.has_membership() {
            // A direct room: `RoomKind::admits` already kept everyone else out.
            return Permissions::ALL;
        }
        let access = self.access.get(room);
        if access.is_none() && self.config.room_policy.is_none() {
            return Permissions::ALL; // the common case, on every send: nothing to ask
        }
        let rules = match access {
            Some(a) => a.rules.permissions(who, a.invited.contains(key)),
            None => Permissions::ALL,
        };
        let mut perms = match &self.config.room_policy {
            Some(policy) => policy.0.permissions(who, room, rules),
            None => rules,
        };
        // A moderator's sanction holds whatever the rules and the policy say.
        if let Some(s) = access.map(|a| &a.sanctions).filter(|s| !s.is_empty()) {
            use super::moderation::SanctionKind;
            let holder = self.holder_of(key);
            if s.holds(SanctionKind::Ban, key, holder.as_deref(), now) {
                perms = Permissions::NONE;
            }
            if s.holds(SanctionKind::Mute, key, holder.as_deref(), now) {
                perms.send = false;
            }
        }
        perms
    }

    /// `key`'s role in a public room: the higher of the room's own (given by the host,
    /// an owner, or to its creator) and the host policy's, if `who` is known.
    pub(crate) fn role(&self, who: Option<&Identity>, key: &UserKey, room: &RoomName) -> Role {
        let own = self
            .access
            .get(room)
            .and_then(|a| a.roles.get(key).copied())
            .unwrap_or_default();
        let policy = match (who, &self.config.room_policy) {
            (Some(who), Some(policy)) => policy.0.role(who, room).unwrap_or_default(),
            _ => Role::Member,
        };
        own.max(policy)
    }
}

impl Server {
    /// Sets a public room's access rules (whether the room exists yet or not). They
    /// apply from the next check on: sessions already in the room stay in it.
    ///
    /// # Errors
    /// The room name is not valid, or names a direct room.
    pub fn set_room_access(&mut self, room: &str, rules: RoomAccess) -> Result<(), String> {
        let room = self.st.public_room(room)?;
        self.st.access.entry(room).or_default().rules = rules;
        Ok(())
    }

    /// Invites `user` to a (private) room: the user may then join it, whatever the
    /// roles.
    ///
    /// # Errors
    /// The room or user name is not valid, or the room is a direct room.
    pub fn invite(&mut self, room: &str, user: &str) -> Result<(), String> {
        let room = self.st.public_room(room)?;
        let user = UserName::parse(user, self.st.config.max_name_chars)
            .map_err(|e| format!("user name {e}"))?;
        self.st
            .access
            .entry(room)
            .or_default()
            .invited
            .insert(user.key());
        Ok(())
    }

    /// Closes every session of `user` with an `auth_revoked` error and close code
    /// 4003, at once; returns how many there were. Whether the user may come back is
    /// the host's identity hook's answer at the next connect.
    pub fn revoke_user(&mut self, now: Now, user: &str) -> usize {
        let Ok(name) = UserName::parse(user, usize::MAX) else {
            return 0;
        };
        let sessions: Vec<_> = match self.st.users.get(&name.key()) {
            Some(u) => u.sessions.iter().copied().collect(),
            None => return 0,
        };
        for &sid in &sessions {
            self.end_session(now, sid, super::CloseReason::Revoked);
        }
        sessions.len()
    }
}

impl State {
    /// A valid public room name.
    pub(super) fn public_room(&self, raw: &str) -> Result<RoomName, String> {
        let c = &self.config;
        let room = RoomName::parse(raw, c.max_room_chars, c.max_name_chars)
            .map_err(|e| format!("room name {e}"))?;
        if !RoomKind::of(&room).has_membership() {
            return Err(format!("{room} is a direct room"));
        }
        Ok(room)
    }
}

impl State {
    /// A welcomed session's permissions in a room.
    pub(crate) fn session_permissions(
        &self,
        session: &Session,
        room: &RoomName,
        kind: &RoomKind,
        now: Instant,
    ) -> Permissions {
        match (&session.identity, &session.phase) {
            (Some(who), Phase::Ready(key)) => self.permissions(who, key, room, kind, now),
            _ => Permissions::ALL,
        }
    }

    /// A version-1 presence notice to the room's version-1 sessions that may see
    /// presence.
    pub(crate) fn fan_out_presence(
        &mut self,
        room_name: &RoomName,
        frame: &Encoded,
        except_session: Option<SessionId>,
    ) {
        if let Some((room, mut env)) = self.room_env(room_name) {
            env.fan_out_presence(room, frame, except_session, None);
        }
    }
}

impl Env<'_> {
    /// A version-1 presence notice (`user_joined`, `user_left`) as [`Env::fan_out`]
    /// sends a room event, to the room's version-1 sessions only, skipping the sessions
    /// that may not see the room's presence.
    pub(crate) fn fan_out_presence(
        &mut self,
        room: &Room,
        frame: &Encoded,
        except_session: Option<SessionId>,
        except_user: Option<&UserKey>,
    ) {
        let recipients = room.v1_sessions().clone();
        if recipients.is_empty() {
            return;
        }
        let mut except: Vec<SessionId> = room.blind.iter().copied().collect();
        except.extend(except_session);
        if let Some(sessions) = except_user.and_then(|k| room.sessions_of(k, self.users)) {
            except.extend(sessions.iter().copied());
        }
        self.out.fan_out(recipients, frame, except);
    }
}

/// `forbidden`: the host's rules do not let the user do this here.
pub(crate) fn forbidden(message: impl Into<String>) -> Reject {
    Reject::new(ErrorCode::Forbidden, message)
}
