//! Moderation of a public room, by the host ([`Server::kick`] and the rest) or by the
//! room's owners and moderators (the `kick`, `ban`, `unban`, `mute`, `unmute`,
//! `set_role`, `topic` and `slow_mode` frames): one path, [`Server::moderate`], for both.
//!
//! - kick: out now, with a reason; ban: out, and kept out of the room, its history and
//!   its member list, for a while or for good; mute: reads on, cannot post (for a while
//!   or for good). Each is told to the room (`moderated`) before it takes effect, so the
//!   user concerned learns why.
//! - roles (`owner`, `moderator`, `member`): a user holds the higher of the room's own
//!   (given by the host, by an owner, or to the room's creator when identities come from
//!   the host) and the host policy's ([`RoomPolicy::role`](super::RoomPolicy::role)).
//!   Moderators act on members; owners on moderators and members, and give roles.
//! - topic and slow mode: room settings, told with `topic` and `slow_mode` frames.
//!
//! Bans, mutes, roles and settings are kept in the room's access entry (`authz`), where
//! `State::permissions` applies the sanctions and `send` the slow mode.
//!
//! Durable mode: each change is also handed to the driver as a [`ModerationChange`]
//! ([`Output::SaveModeration`]); a moderator's `done` waits for the store's answer
//! ([`Input::ModerationSaved`](super::Input::ModerationSaved)), and
//! [`Server::restore_moderation`] puts the stored state back at startup. A ban or mute
//! with a length arms a timer (`Timer::Sanction`); when it fires the sanction is lifted
//! and told like an `unban`/`unmute` by the host, with the reason `expired`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::config::AuthMode;
use super::inputs::{ApiMisuse, StoreError};
use super::outputs::{Event, Output};
use super::reject::Reject;
use super::sessions::{Phase, Session};
use super::timers::Timer;
use super::{Identity, Now, Server, State};
use crate::ids::{RoomName, SessionId, UserKey, UserName};
use crate::protocol::{
    ClientFrame, Encoded, ErrorCode, MAX_SLOW_MODE_SECONDS, MAX_TOPIC_CHARS, ModAction, Role,
    ServerFrame,
};

/// The longest ban or mute a moderator may give, in minutes (ten years); longer is
/// `invalid_request` (leave `minutes` out for good).
pub const MAX_SANCTION_MINUTES: u64 = 10 * 365 * 24 * 60;

/// Whom a ban or mute binds (docs/PROTOCOL.md, "Who a sanction binds"). Ordered by
/// user first, so that sanctions ending at one instant end in user order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Subject {
    /// The user's key.
    pub key: UserKey,
    /// `None`: whoever holds the name (a host identity, the host's user for good; or
    /// an anonymous name nobody held on this server when the sanction was given).
    /// `Some`: one anonymous holding of the name, the user whose token hashes to this
    /// (the hash that reserves the name in cluster mode): a later holder of the freed
    /// name is another user, not bound by it.
    pub holder: Option<String>,
}

impl Subject {
    /// The anonymous holder, if the sanction binds one.
    pub fn holder(&self) -> Option<&str> {
        self.holder.as_deref()
    }
}

/// Bans and mutes of one room, each until when (`None`: for good).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Sanctions {
    /// Banned users.
    pub banned: BTreeMap<Subject, Option<Instant>>,
    /// Muted users.
    pub muted: BTreeMap<Subject, Option<Instant>>,
}

impl Sanctions {
    /// The bans or the mutes.
    pub fn of(&self, kind: SanctionKind) -> &BTreeMap<Subject, Option<Instant>> {
        match kind {
            SanctionKind::Ban => &self.banned,
            SanctionKind::Mute => &self.muted,
        }
    }

    /// The bans or the mutes, to change.
    pub fn of_mut(&mut self, kind: SanctionKind) -> &mut BTreeMap<Subject, Option<Instant>> {
        match kind {
            SanctionKind::Ban => &mut self.banned,
            SanctionKind::Mute => &mut self.muted,
        }
    }

    /// Whether the user `key` (holding the name as `holder`, in anonymous mode) is
    /// under a sanction of `kind` at `now`.
    pub fn holds(
        &self,
        kind: SanctionKind,
        key: &UserKey,
        holder: Option<&str>,
        now: Instant,
    ) -> bool {
        let held = self.of(kind);
        if held.is_empty() {
            return false;
        }
        let subject = |holder: Option<&str>| Subject {
            key: key.clone(),
            holder: holder.map(str::to_owned),
        };
        in_force(held.get(&subject(None)), now)
            || holder.is_some_and(|h| in_force(held.get(&subject(Some(h))), now))
    }

    /// Whether there is nothing at all.
    pub fn is_empty(&self) -> bool {
        self.banned.is_empty() && self.muted.is_empty()
    }
}

fn in_force(entry: Option<&Option<Instant>>, now: Instant) -> bool {
    entry.is_some_and(|until| until.is_none_or(|u| now < u))
}

/// The reason a timed ban or mute's lifting is told with (`moderated`, action `unban`
/// or `unmute`, no `by`): its time ran out.
pub const EXPIRED_REASON: &str = "expired";

/// Which sanction a timer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum SanctionKind {
    Ban,
    Mute,
}

impl SanctionKind {
    /// The change that gives (`until: Some(end)`) or lifts (`None`) this sanction.
    fn change(
        self,
        room: RoomName,
        user: UserName,
        given: Option<Option<DateTime<Utc>>>,
        holder: Option<String>,
    ) -> ModerationChange {
        match (self, given) {
            (SanctionKind::Ban, Some(until)) => ModerationChange::Ban {
                room,
                user,
                until,
                holder,
            },
            (SanctionKind::Mute, Some(until)) => ModerationChange::Mute {
                room,
                user,
                until,
                holder,
            },
            (SanctionKind::Ban, None) => ModerationChange::Unban { room, user },
            (SanctionKind::Mute, None) => ModerationChange::Unmute { room, user },
        }
    }

    /// The action that lifts it.
    fn lifted(self) -> ModAction {
        match self {
            SanctionKind::Ban => ModAction::Unban,
            SanctionKind::Mute => ModAction::Unmute,
        }
    }
}

impl ModerationChange {
    /// A ban or mute given (`Some(until)`) or lifted (`None`), as its kind, user,
    /// `until` and holder.
    #[allow(clippy::type_complexity)]
    fn sanction(
        &self,
    ) -> Option<(
        SanctionKind,
        &UserName,
        Option<Option<DateTime<Utc>>>,
        Option<&str>,
    )> {
        match self {
            ModerationChange::Ban {
                user,
                until,
                holder,
                ..
            } => Some((SanctionKind::Ban, user, Some(*until), holder.as_deref())),
            ModerationChange::Mute {
                user,
                until,
                holder,
                ..
            } => Some((SanctionKind::Mute, user, Some(*until), holder.as_deref())),
            ModerationChange::Unban { user, .. } => Some((SanctionKind::Ban, user, None, None)),
            ModerationChange::Unmute { user, .. } => Some((SanctionKind::Mute, user, None, None)),
            _ => None,
        }
    }
}

/// One change to a public room's moderation state, as the store keeps it (durable
/// mode, [`Output::SaveModeration`]) and gives it back at startup
/// ([`Server::restore_moderation`]): the state is the result of applying the changes in
/// order. A store may keep the state rather than the changes (one row per role, ban,
/// mute and room setting) and give back one change per row.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModerationChange {
    /// `user`'s own role in `room` (`Member`: none above member).
    Role {
        /// The room.
        room: RoomName,
        /// The user.
        user: UserName,
        /// The role.
        role: Role,
    },
    /// `user` is banned from `room` until `until` (`None`: for good).
    Ban {
        /// The room.
        room: RoomName,
        /// The user.
        user: UserName,
        /// When the ban ends (UTC), if it does.
        until: Option<DateTime<Utc>>,
        /// Anonymous mode: the one holding of the name it binds (a hash of the user's
        /// token, as the cluster's name reservations keep it); `None`: whoever holds
        /// the name (a host identity, or a name nobody held when it was given).
        /// A single server keeps no change with a holder: tokens do not outlive it.
        holder: Option<String>,
    },
    /// `user`'s ban from `room` is lifted.
    Unban {
        /// The room.
        room: RoomName,
        /// The user.
        user: UserName,
    },
    /// `user` is muted in `room` until `until` (`None`: for good).
    Mute {
        /// The room.
        room: RoomName,
        /// The user.
        user: UserName,
        /// When the mute ends (UTC), if it does.
        until: Option<DateTime<Utc>>,
        /// Anonymous mode: the one holding of the name it binds (a hash of the user's
        /// token, as the cluster's name reservations keep it); `None`: whoever holds
        /// the name (a host identity, or a name nobody held when it was given).
        /// A single server keeps no change with a holder: tokens do not outlive it.
        holder: Option<String>,
    },
    /// `user`'s mute in `room` is lifted.
    Unmute {
        /// The room.
        room: RoomName,
        /// The user.
        user: UserName,
    },
    /// `room`'s topic (empty: none).
    Topic {
        /// The room.
        room: RoomName,
        /// The topic.
        topic: String,
    },
    /// `room`'s slow mode in seconds (0: off).
    SlowMode {
        /// The room.
        room: RoomName,
        /// Seconds between a member's posts.
        seconds: u32,
    },
}

impl ModerationChange {
    /// The room changed.
    #[must_use]
    pub fn room(&self) -> &RoomName {
        match self {
            ModerationChange::Role { room, .. }
            | ModerationChange::Ban { room, .. }
            | ModerationChange::Unban { room, .. }
            | ModerationChange::Mute { room, .. }
            | ModerationChange::Unmute { room, .. }
            | ModerationChange::Topic { room, .. }
            | ModerationChange::SlowMode { room, .. } => room,
        }
    }
}

/// Who waits for a [`ModerationChange`] to be stored: the moderator's session, with
/// the `done` it gets then.
#[derive(Debug)]
pub(crate) struct PendingSave {
    session: SessionId,
    done: ServerFrame,
}

/// One moderation operation, as the host or a moderator asks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    Kick {
        reason: String,
    },
    Ban {
        reason: String,
        length: Option<Duration>,
    },
    Unban,
    Mute {
        reason: String,
        length: Option<Duration>,
    },
    Unmute,
    SetRole(Role),
    Topic(String),
    SlowMode(u32),
}

impl Op {
    fn action(&self) -> ModAction {
        match self {
            Op::Kick { .. } => ModAction::Kick,
            Op::Ban { .. } => ModAction::Ban,
            Op::Unban => ModAction::Unban,
            Op::Mute { .. } => ModAction::Mute,
            Op::Unmute => ModAction::Unmute,
            Op::SetRole(_) => ModAction::SetRole,
            Op::Topic(_) => ModAction::Topic,
            Op::SlowMode(_) => ModAction::SlowMode,
        }
    }

    /// A ban or mute given (`true`) or lifted (`false`).
    fn sanction(&self) -> Option<(SanctionKind, bool)> {
        match self {
            Op::Ban { .. } => Some((SanctionKind::Ban, true)),
            Op::Mute { .. } => Some((SanctionKind::Mute, true)),
            Op::Unban => Some((SanctionKind::Ban, false)),
            Op::Unmute => Some((SanctionKind::Mute, false)),
            _ => None,
        }
    }

    /// The least role that may do it from the protocol.
    fn needs(&self) -> Role {
        match self {
            Op::SetRole(_) => Role::Owner,
            _ => Role::Moderator,
        }
    }
}

/// Who moderates: the host (no name) or a user of the room.
type By = Option<UserName>;

impl Server {
    /// Removes `user` from a public room now: every session of theirs in it gets
    /// `moderated` (action `kick`, with the reason) and `left`; the others see
    /// `moderated` and `user_left`. They may join again. Returns how many sessions left.
    ///
    /// # Errors
    /// The room or user name is not valid, or the room is a direct room.
    pub fn kick(
        &mut self,
        now: Now,
        room: &str,
        user: &str,
        reason: &str,
    ) -> Result<usize, String> {
        let (room, user) = self.st.target(room, user)?;
        let reason = reason.to_owned();
        Ok(self.moderate(
            Some(now),
            None,
            &room,
            Some(&user),
            Op::Kick { reason },
            None,
        ))
    }

    /// Bans `user` from a public room for `length` (`None`: until [`Server::unban`]):
    /// as [`Server::kick`], and until then the user may not join, read or list it
    /// (`forbidden`). Returns how many sessions left.
    ///
    /// # Errors
    /// As [`Server::kick`].
    pub fn ban(
        &mut self,
        now: Now,
        room: &str,
        user: &str,
        reason: &str,
        length: Option<Duration>,
    ) -> Result<usize, String> {
        let (room, user) = self.st.target(room, user)?;
        let reason = reason.to_owned();
        Ok(self.moderate(
            Some(now),
            None,
            &room,
            Some(&user),
            Op::Ban { reason, length },
            None,
        ))
    }

    /// Lifts a ban; the room is told (`moderated`, action `unban`).
    ///
    /// # Errors
    /// As [`Server::kick`].
    pub fn unban(&mut self, room: &str, user: &str) -> Result<(), String> {
        let (room, user) = self.st.target(room, user)?;
        self.moderate(None, None, &room, Some(&user), Op::Unban, None);
        Ok(())
    }

    /// Mutes (or unmutes) `user` in a public room until unmuted: muted, they read but
    /// their `send` is refused with `forbidden` and their typing is dropped. The room
    /// is told (`moderated`, action `mute` or `unmute`). See [`Server::mute_for`].
    ///
    /// # Errors
    /// As [`Server::kick`].
    pub fn mute(&mut self, room: &str, user: &str, muted: bool) -> Result<(), String> {
        let (room, user) = self.st.target(room, user)?;
        let op = if muted {
            Op::Mute {
                reason: String::new(),
                length: None,
            }
        } else {
            Op::Unmute
        };
        self.moderate(None, None, &room, Some(&user), op, None);
        Ok(())
    }

    /// Mutes `user` in a public room for `length` (`None`: until unmuted), with a
    /// reason the room is told. The mute ends by itself when its length has passed,
    /// told as an `unmute` with the reason [`EXPIRED_REASON`](crate::EXPIRED_REASON).
    ///
    /// # Errors
    /// As [`Server::kick`].
    pub fn mute_for(
        &mut self,
        now: Now,
        room: &str,
        user: &str,
        reason: &str,
        length: Option<Duration>,
    ) -> Result<(), String> {
        let (room, user) = self.st.target(room, user)?;
        let reason = reason.to_owned();
        self.moderate(
            Some(now),
            None,
            &room,
            Some(&user),
            Op::Mute { reason, length },
            None,
        );
        Ok(())
    }

    /// Gives `user` a role in a public room (`member` takes a role away); the room is
    /// told (`moderated`, action `set_role`, with `role`). The host policy's role, if
    /// higher, still holds ([`RoomPolicy::role`](super::RoomPolicy::role)).
    ///
    /// # Errors
    /// As [`Server::kick`].
    pub fn set_role(&mut self, room: &str, user: &str, role: Role) -> Result<(), String> {
        let (room, user) = self.st.target(room, user)?;
        self.moderate(None, None, &room, Some(&user), Op::SetRole(role), None);
        Ok(())
    }

    /// Sets a public room's topic (empty: none), carried in `joined` and `rooms`; the
    /// room is told with a `topic` frame.
    ///
    /// # Errors
    /// The room name is not valid, names a direct room, or the topic is longer than
    /// [`MAX_TOPIC_CHARS`](crate::protocol::MAX_TOPIC_CHARS).
    pub fn set_topic(&mut self, room: &str, topic: &str) -> Result<(), String> {
        let room = self.st.public_room(room)?;
        let topic = check_topic(topic)?;
        self.moderate(None, None, &room, None, Op::Topic(topic), None);
        Ok(())
    }

    /// Sets a public room's slow mode: each member may post once per `seconds` (0:
    /// off); owners and moderators are exempt. The room is told with a `slow_mode`
    /// frame.
    ///
    /// # Errors
    /// The room name is not valid, names a direct room, or `seconds` is above
    /// [`MAX_SLOW_MODE_SECONDS`](crate::protocol::MAX_SLOW_MODE_SECONDS).
    pub fn set_slow_mode(&mut self, room: &str, seconds: u32) -> Result<(), String> {
        let room = self.st.public_room(room)?;
        check_slow_mode(seconds)?;
        self.moderate(None, None, &room, None, Op::SlowMode(seconds), None);
        Ok(())
    }

    /// A user's role in a public room, as the engine sees it: the room's own, or the
    /// host policy's if higher (asked with the identity of the user's session when
    /// online, else with an identity carrying only the user's id).
    ///
    /// # Errors
    /// As [`Server::kick`].
    pub fn role(&self, room: &str, user: &str) -> Result<Role, String> {
        let (room, user) = self.st.target(room, user)?;
        let who = self.identity_of(&user);
        Ok(self.st.role(Some(&who), &user.key(), &room))
    }

    /// A room's topic, if it has one.
    #[must_use]
    pub fn topic(&self, room: &RoomName) -> Option<String> {
        self.st.access.get(room).and_then(|a| a.topic.clone())
    }

    /// Carries out one operation (checked already): tells the room, changes the
    /// room's access entry, reports the event, hands the change to the store (durable
    /// mode) and then sends `ack` (a moderator's `done`: once the change is stored, in
    /// durable mode). Returns how many sessions left the room.
    ///
    /// `now` is needed for a kick, a ban, and a mute with a length.
    pub(crate) fn moderate(
        &mut self,
        now: Option<Now>,
        by: By,
        room: &RoomName,
        user: Option<&UserName>,
        op: Op,
        ack: Option<PendingSave>,
    ) -> usize {
        let action = op.action();
        let st = &mut self.st;
        st.mod_changes += 1;
        st.access.entry(room.clone()).or_default().changed = st.mod_changes;
        match (&op, user) {
            (Op::Topic(topic), _) => {
                let topic = topic.clone();
                let frame = ServerFrame::Topic {
                    room: room.clone(),
                    topic: topic.clone(),
                    by: by.clone(),
                };
                st.fan_out(room, &Encoded::new(&frame), None, None);
                st.access.entry(room.clone()).or_default().topic =
                    (!topic.is_empty()).then(|| topic.clone());
                st.out.event(Event::TopicChanged {
                    room: room.clone(),
                    topic: topic.clone(),
                    by,
                });
                let room = room.clone();
                st.save(Some(ModerationChange::Topic { room, topic }), ack);
                return 0;
            }
            (Op::SlowMode(seconds), _) => {
                let seconds = *seconds;
                let frame = ServerFrame::SlowMode {
                    room: room.clone(),
                    seconds,
                    by: by.clone(),
                };
                st.fan_out(room, &Encoded::new(&frame), None, None);
                let access = st.access.entry(room.clone()).or_default();
                access.slow_mode = seconds;
                access.last_post.clear();
                st.out.event(Event::SlowModeChanged {
                    room: room.clone(),
                    seconds,
                    by,
                });
                let room = room.clone();
                st.save(Some(ModerationChange::SlowMode { room, seconds }), ack);
                return 0;
            }
            (_, None) => return 0,
            (_, Some(_)) => {}
        }
        let Some(user) = user else { return 0 };
        let key = user.key();
        let (reason, length) = match &op {
            Op::Kick { reason } => (reason.as_str(), None),
            Op::Ban { reason, length } | Op::Mute { reason, length } => (reason.as_str(), *length),
            _ => ("", None),
        };
        let role = match op {
            Op::SetRole(role) => Some(role),
            _ => None,
        };
        let minutes = length.map(|d| d.as_secs().div_ceil(60));
        let tell = Tell {
            action,
            reason,
            minutes,
            role,
            by,
        };
        let frame = st.tell(room, user, tell);
        let until = length.and_then(|d| now.and_then(|now| now.mono.checked_add(d)));
        let until_utc = length.and_then(|d| {
            let d = chrono::Duration::from_std(d).ok()?;
            now.and_then(|now| now.utc.checked_add_signed(d))
        });
        let (r, u) = (room.clone(), st.users.display_name(&key));
        let change = if let Some((kind, given)) = op.sanction() {
            let subject = st.subject_of(&key);
            let holder = subject.holder().map(str::to_owned);
            let held = st
                .access
                .entry(r.clone())
                .or_default()
                .sanctions
                .of_mut(kind);
            if given {
                held.insert(subject.clone(), until);
                if let Some(at) = until {
                    st.timers.arm(at, Timer::Sanction(r.clone(), subject, kind));
                }
            } else {
                // Every ban (mute) of the name is lifted, whichever holding it binds.
                held.retain(|s, _| s.key != key);
                // The user learns it even when not in the room (a ban took them out).
                self.tell_outside(room, &key, None, &frame);
            }
            Some(kind.change(r, u, given.then_some(until_utc), holder))
        } else if let Op::SetRole(role) = op {
            let access = self.st.access.entry(r.clone()).or_default();
            if role == Role::Member {
                access.roles.remove(&key);
            } else {
                access.roles.insert(key.clone(), role);
            }
            Some(ModerationChange::Role {
                room: r,
                user: u,
                role,
            })
        } else {
            None // a kick changes no state
        };
        let left = match (action, now) {
            (ModAction::Kick | ModAction::Ban, Some(now)) => self.remove_user(now, room, &key),
            _ => 0,
        };
        self.st.save(change, ack);
        left
    }

    /// Sends `frame` (a `moderated` the room was told) to `key`'s sessions outside the
    /// room too, when the user is the one `holder` names (any holder: `None`).
    fn tell_outside(
        &mut self,
        room: &RoomName,
        key: &UserKey,
        holder: Option<&str>,
        frame: &Encoded,
    ) {
        if holder.is_some() && self.st.subject_of(key).holder() != holder {
            return; // another user holds the name now
        }
        let outside: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| matches!(&s.phase, Phase::Ready(k) if k == key))
            .filter(|(_, s)| !s.rooms.contains(room))
            .map(|(sid, _)| *sid)
            .collect();
        for sid in outside {
            self.st.out.send_encoded(sid, frame.clone());
        }
    }

    /// A timed ban or mute ran out (its timer, armed at `at`, fired): lifted, and told
    /// like the host's `unban`/`unmute` with the reason [`EXPIRED_REASON`], to the
    /// room and to the user's sessions outside it; the host gets its event, and the
    /// store the change. Stale when the sanction was lifted or given again since.
    pub(super) fn on_sanction_expired(
        &mut self,
        at: Instant,
        room: &RoomName,
        subject: &Subject,
        kind: SanctionKind,
    ) {
        let Some(access) = self.st.access.get_mut(room) else {
            return;
        };
        let held = access.sanctions.of_mut(kind);
        if held.get(subject) != Some(&Some(at)) {
            return;
        }
        held.remove(subject);
        let key = &subject.key;
        let user = self.st.users.display_name(key);
        let tell = Tell {
            action: kind.lifted(),
            reason: EXPIRED_REASON,
            minutes: None,
            role: None,
            by: None,
        };
        let frame = self.st.tell(room, &user, tell);
        // The user learns it even when not in the room (a ban took them out of it).
        self.tell_outside(room, key, subject.holder(), &frame);
        // Cluster mode: the shared state keeps the end with the sanction, and every
        // server ends it by itself; nothing to write. A single server never stored a
        // sanction bound to an anonymous holder (`State::save`).
        if !self.st.config.cluster && subject.holder.is_none() {
            let change = kind.change(room.clone(), user, None, None);
            self.st.save(Some(change), None);
        }
    }

    /// Puts stored moderation state back (durable mode, at startup, before any input):
    /// `changes` applied in order, nothing told. A ban or mute whose end passed while
    /// the server was down ends at the first [`Server::handle_timeout`], told as any
    /// other expiry (to the host's events and the store; nobody is online yet).
    pub fn restore_moderation(
        &mut self,
        now: Now,
        changes: impl IntoIterator<Item = ModerationChange>,
    ) {
        for change in changes {
            self.st.apply_change(now, change);
        }
    }

    /// Cluster mode: a room's moderation state as the shared log holds it (see
    /// [`Input::ModerationLoaded`](super::Input::ModerationLoaded)). Replaces this
    /// server's copy unless it changed the room's state since it asked, or a change of
    /// its own is still being written. A ban or mute whose end moved by less than a
    /// second keeps its timer; local sessions of a user it newly bans leave the room.
    pub(super) fn on_moderation_loaded(
        &mut self,
        now: Now,
        room: RoomName,
        result: Result<Vec<ModerationChange>, StoreError>,
    ) {
        let Some(asked) = self.st.mod_asked.remove(&room) else {
            return;
        };
        let Ok(mut changes) = result else {
            return; // keep what this server has; the next catch-up asks again
        };
        let st = &mut self.st;
        let changed = st.access.get(&room).map_or(0, |a| a.changed);
        let writing = st.saving.values().any(|(r, _)| *r == room);
        if changed > asked || writing {
            return;
        }
        let access = st.access.entry(room.clone()).or_default();
        let old = std::mem::take(&mut access.sanctions);
        // A sanction that has ended is lifted (and told) by the servers that held it,
        // each once; one this server never held is no news here.
        changes.retain(|c| match c.sanction() {
            Some((kind, user, Some(Some(until)), holder)) if until <= now.utc => {
                let subject = Subject {
                    key: user.key(),
                    holder: holder.map(str::to_owned),
                };
                old.of(kind).contains_key(&subject)
            }
            _ => true,
        });
        access.roles.clear();
        access.topic = None;
        access.slow_mode = 0;
        let last_post = std::mem::take(&mut access.last_post);
        // Applied without timers, then the timers armed where the end moved.
        let mut timers = std::mem::take(&mut st.timers);
        for change in changes {
            st.apply_change(now, change);
        }
        std::mem::swap(&mut st.timers, &mut timers);
        let access = st.access.entry(room.clone()).or_default();
        access.last_post = last_post;
        for kind in [SanctionKind::Ban, SanctionKind::Mute] {
            let fresh = access.sanctions.of_mut(kind);
            for (subject, at) in fresh.iter_mut() {
                match (old.of(kind).get(subject), *at) {
                    (Some(&before), now_at) if close(before, now_at) => *at = before,
                    (_, Some(at)) => {
                        let timer = Timer::Sanction(room.clone(), subject.clone(), kind);
                        st.timers.arm(at, timer);
                    }
                    _ => {}
                }
            }
        }
        // Users the state bans who are here in the room, and were not banned before.
        let here: Vec<UserKey> = self
            .sessions
            .values()
            .filter(|s| s.rooms.contains(&room))
            .filter_map(|s| match &s.phase {
                Phase::Ready(k) => Some(k.clone()),
                _ => None,
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for key in here {
            let holder = self.st.holder_of(&key);
            let holder = holder.as_deref();
            let Some(access) = self.st.access.get(&room) else {
                break;
            };
            let banned = access
                .sanctions
                .holds(SanctionKind::Ban, &key, holder, now.mono);
            if banned && !old.holds(SanctionKind::Ban, &key, holder, now.mono) {
                self.remove_user(now, &room, &key);
            }
        }
    }

    /// The store's answer for a [`ModerationChange`]: the moderator who waits for it
    /// gets `done`, or `storage_unavailable` (the change holds in memory until a
    /// restart, and the moderator may repeat the command).
    pub(super) fn on_moderation_saved(
        &mut self,
        ticket: u64,
        result: Result<(), StoreError>,
    ) -> Result<(), ApiMisuse> {
        let (_, waiting) = self
            .st
            .saving
            .remove(&ticket)
            .ok_or(ApiMisuse::UnknownTicket(ticket))?;
        let Some(PendingSave { session, done }) = waiting else {
            return Ok(());
        };
        if !self.st.out.is_open(session) {
            return Ok(());
        }
        match result {
            Ok(()) => self.st.out.send_to(session, &done),
            Err(e) => {
                let id = match &done {
                    ServerFrame::Done { id, .. } => *id,
                    _ => None,
                };
                let msg = format!(
                    "done here but not stored: it may not last a restart; repeat it later ({})",
                    e.detail()
                );
                self.st
                    .out
                    .error(session, id, ErrorCode::StorageUnavailable, msg);
            }
        }
        Ok(())
    }

    /// A moderation frame from a client: checks the sender's role against the
    /// operation and its target's role, carries it out, and acks it with `done`.
    pub(super) fn moderation_frame(
        &mut self,
        now: Now,
        sid: SessionId,
        frame: ClientFrame,
    ) -> Result<(), Reject> {
        let session = self.sessions.get(&sid);
        let (key, who) = match session.map(|s| (&s.phase, s)) {
            Some((Phase::Ready(key), s)) => (key.clone(), s.identity.as_deref().cloned()),
            _ => return Err(Reject::new(ErrorCode::HelloRequired, "say hello first")),
        };
        let id = frame.request_id();
        let (raw_room, raw_user, op) = parse_op(frame)?;
        let room = self.st.public_room(&raw_room).map_err(|e| {
            let code = if e.ends_with("is a direct room") {
                ErrorCode::InvalidRequest
            } else {
                ErrorCode::InvalidRoom
            };
            Reject::new(code, e)
        })?;
        let user = match raw_user {
            Some(raw) => Some(
                UserName::parse(&raw, self.st.config.max_name_chars).map_err(|_| {
                    Reject::new(
                        ErrorCode::InvalidName,
                        format!("no valid user name {raw:?}"),
                    )
                })?,
            ),
            None => None,
        };
        let mine = self.st.role(who.as_ref(), &key, &room);
        if mine < op.needs() {
            let msg = match op.needs() {
                Role::Owner => format!("only an owner of {room} may give roles"),
                _ => format!("you are not a moderator of {room}"),
            };
            return Err(crate::server::authz::forbidden(msg));
        }
        if let Some(user) = &user {
            let target = user.key();
            let theirs = self.st.role(Some(&self.identity_of(user)), &target, &room);
            if theirs >= mine {
                let msg = if target == key {
                    format!("you cannot {} yourself", op.action().as_str())
                } else {
                    format!("{user} is a{} {theirs} of {room}", an(theirs))
                };
                return Err(crate::server::authz::forbidden(msg));
            }
        }
        let by = Some(self.st.users.display_name(&key));
        let action = op.action();
        let user = user.map(|u| self.st.users.display_name(&u.key()));
        let done = ServerFrame::Done {
            id,
            room: room.clone(),
            action,
            user: user.clone(),
        };
        let ack = PendingSave { session: sid, done };
        self.moderate(Some(now), by, &room, user.as_ref(), op, Some(ack));
        Ok(())
    }

    /// Who `user` is, for the host policy's role: the identity of one of their
    /// sessions if they are online, else an identity with their id only (no roles), so
    /// that a policy that knows users by id answers for offline users too.
    fn identity_of(&self, user: &UserName) -> Identity {
        let key = user.key();
        let online = self.st.users.get(&key).and_then(|u| {
            u.sessions
                .iter()
                .filter_map(|sid| self.sessions.get(sid))
                .find_map(|s: &Session| s.identity.as_deref().cloned())
        });
        online.unwrap_or_else(|| {
            // The name the engine knows the user by, else the one given here.
            let name = self.st.users.get(&key).map_or(user, |u| &u.name);
            Identity::new(name.as_str())
        })
    }

    /// Takes every session of `key` out of the room, as if each had left, and the user
    /// with them (lingering or not), announced.
    fn remove_user(&mut self, now: Now, room_name: &RoomName, key: &UserKey) -> usize {
        let sessions: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| matches!(&s.phase, Phase::Ready(k) if k == key))
            .filter(|(_, s)| s.rooms.contains(room_name))
            .map(|(sid, _)| *sid)
            .collect();
        let st = &mut self.st;
        let left = |room: &RoomName| {
            Encoded::new(&ServerFrame::Left {
                id: None,
                room: room.clone(),
            })
        };
        for sid in &sessions {
            if let Some(s) = self.sessions.get_mut(sid) {
                s.rooms.remove(room_name);
            }
            if let Some(room) = st.rooms.get_mut(room_name) {
                room.remove_session(*sid);
            }
            st.out.send_encoded(*sid, left(room_name));
        }
        let was_member = st
            .rooms
            .get_mut(room_name)
            .and_then(|room| room.remove_member(key))
            .is_some();
        if was_member {
            st.stop_typing(room_name, key);
            let name = st.users.display_name(key);
            st.announce_left(now, room_name, name);
        }
        sessions.len()
    }
}

/// Whether two ends of a sanction are the same end, read twice (each read of the
/// shared state turns its UTC end into an instant anew).
fn close(a: Option<Instant>, b: Option<Instant>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.max(b) - a.min(b) < Duration::from_secs(1),
        _ => false,
    }
}

/// "a" or "an" before a role.
fn an(role: Role) -> &'static str {
    match role {
        Role::Owner => "n",
        _ => "",
    }
}

/// A moderation frame's room, user (for an operation about a user) and operation,
/// with its values checked.
fn parse_op(frame: ClientFrame) -> Result<(String, Option<String>, Op), Reject> {
    let reason = |r: Option<String>| r.unwrap_or_default();
    let invalid = |e: String| Reject::new(ErrorCode::InvalidRequest, e);
    Ok(match frame {
        ClientFrame::Kick {
            room,
            user,
            reason: r,
            ..
        } => (room, Some(user), Op::Kick { reason: reason(r) }),
        ClientFrame::Ban {
            room,
            user,
            reason: r,
            minutes,
            ..
        } => {
            let length = length(minutes).map_err(invalid)?;
            let reason = reason(r);
            (room, Some(user), Op::Ban { reason, length })
        }
        ClientFrame::Unban { room, user, .. } => (room, Some(user), Op::Unban),
        ClientFrame::Mute {
            room,
            user,
            reason: r,
            minutes,
            ..
        } => {
            let length = length(minutes).map_err(invalid)?;
            let reason = reason(r);
            (room, Some(user), Op::Mute { reason, length })
        }
        ClientFrame::Unmute { room, user, .. } => (room, Some(user), Op::Unmute),
        ClientFrame::SetRole {
            room, user, role, ..
        } => (room, Some(user), Op::SetRole(role)),
        ClientFrame::Topic { room, topic, .. } => {
            let topic = check_topic(&topic).map_err(invalid)?;
            (room, None, Op::Topic(topic))
        }
        ClientFrame::SlowMode { room, seconds, .. } => {
            check_slow_mode(seconds).map_err(invalid)?;
            (room, None, Op::SlowMode(seconds))
        }
        _ => return Err(invalid("not a moderation command".into())),
    })
}

/// Whether a client frame is a moderator's command.
pub(crate) fn is_moderation(frame: &ClientFrame) -> bool {
    matches!(
        frame,
        ClientFrame::Kick { .. }
            | ClientFrame::Ban { .. }
            | ClientFrame::Unban { .. }
            | ClientFrame::Mute { .. }
            | ClientFrame::Unmute { .. }
            | ClientFrame::SetRole { .. }
            | ClientFrame::Topic { .. }
            | ClientFrame::SlowMode { .. }
    )
}

/// A sanction's `minutes` as a length.
fn length(minutes: Option<u64>) -> Result<Option<Duration>, String> {
    match minutes {
        None => Ok(None),
        Some(m) if (1..=MAX_SANCTION_MINUTES).contains(&m) => Ok(Some(Duration::from_secs(m * 60))),
        Some(_) => Err(format!(
            "minutes must be 1 to {MAX_SANCTION_MINUTES} (leave it out for good)"
        )),
    }
}

/// A topic as kept: trimmed, at most [`MAX_TOPIC_CHARS`] characters, no control
/// characters.
fn check_topic(topic: &str) -> Result<String, String> {
    let topic = topic.trim();
    if topic.chars().count() > MAX_TOPIC_CHARS {
        return Err(format!("a topic has at most {MAX_TOPIC_CHARS} characters"));
    }
    if topic.chars().any(char::is_control) {
        return Err("a topic has no control characters".into());
    }
    Ok(topic.to_owned())
}

fn check_slow_mode(seconds: u32) -> Result<(), String> {
    if seconds > MAX_SLOW_MODE_SECONDS {
        return Err(format!(
            "slow mode is at most {MAX_SLOW_MODE_SECONDS} seconds (0: off)"
        ));
    }
    Ok(())
}

/// What `moderated` says.
struct Tell<'a> {
    action: ModAction,
    reason: &'a str,
    minutes: Option<u64>,
    role: Option<Role>,
    by: By,
}

impl State {
    /// Whom a sanction on `key` binds now: in anonymous mode the user holding the name
    /// here (by a hash of their token), else the name.
    pub(crate) fn subject_of(&self, key: &UserKey) -> Subject {
        Subject {
            key: key.clone(),
            holder: self.holder_of(key),
        }
    }

    /// The anonymous holder of `key` here, if any: the hash of its token that the
    /// cluster's name reservations keep too (the same on every server).
    pub(crate) fn holder_of(&self, key: &UserKey) -> Option<String> {
        let token = self.users.get(key)?.token.as_deref()?;
        Some(super::names::holder(&self.config.secret, token, key))
    }

    /// Applies one stored change, telling nothing (a restart, or the shared state in
    /// cluster mode). A ban or mute with an end arms its timer.
    fn apply_change(&mut self, now: Now, change: ModerationChange) {
        let instant = |until: Option<DateTime<Utc>>| {
            until.map(|u| now.mono + (u - now.utc).to_std().unwrap_or_default())
        };
        let room = change.room().clone();
        if let Some((kind, user, given, holder)) = change.sanction() {
            let key = user.key();
            let held = self
                .access
                .entry(room.clone())
                .or_default()
                .sanctions
                .of_mut(kind);
            match given {
                Some(until) => {
                    let subject = Subject {
                        key,
                        holder: holder.map(str::to_owned),
                    };
                    let at = instant(until);
                    held.insert(subject.clone(), at);
                    if let Some(at) = at {
                        self.timers.arm(at, Timer::Sanction(room, subject, kind));
                    }
                }
                None => held.retain(|s, _| s.key != key),
            }
            return;
        }
        let access = self.access.entry(room).or_default();
        match change {
            ModerationChange::Role { user, role, .. } => {
                if role == Role::Member {
                    access.roles.remove(&user.key());
                } else {
                    access.roles.insert(user.key(), role);
                }
            }
            ModerationChange::Topic { topic, .. } => {
                access.topic = (!topic.is_empty()).then_some(topic);
            }
            ModerationChange::SlowMode { seconds, .. } => access.slow_mode = seconds,
            _ => {}
        }
    }
}

impl State {
    /// A public room and a user, both valid.
    fn target(&self, room: &str, user: &str) -> Result<(RoomName, UserName), String> {
        let room = self.public_room(room)?;
        let user = UserName::parse(user, self.config.max_name_chars)
            .map_err(|e| format!("user name {e}"))?;
        Ok((room, user))
    }

    /// `moderated` to the room's sessions, and the host's event; returns the frame.
    fn tell(&mut self, room: &RoomName, user: &UserName, tell: Tell<'_>) -> Encoded {
        let user = self.users.display_name(&user.key());
        let reason = (!tell.reason.is_empty()).then(|| tell.reason.to_owned());
        let frame = Encoded::new(&ServerFrame::Moderated {
            room: room.clone(),
            user: user.clone(),
            action: tell.action,
            reason: reason.clone(),
            minutes: tell.minutes,
            role: tell.role,
            by: tell.by.clone(),
        });
        self.fan_out(room, &frame, None, None);
        self.out.event(Event::Moderated {
            room: room.clone(),
            user,
            action: tell.action,
            reason,
            minutes: tell.minutes,
            role: tell.role,
            by: tell.by,
        });
        frame
    }

    /// Durable mode: hands `change` to the store, and keeps `ack` until its answer.
    /// Otherwise (or with no change: a kick) `ack` is sent now.
    fn save(&mut self, change: Option<ModerationChange>, ack: Option<PendingSave>) {
        // A sanction bound to an anonymous holding lasts as long as the token it binds:
        // a single server's tokens do not outlive the process, so it is not stored (a
        // stored one would bind the name after a restart). Cluster mode shares tokens.
        let bound = change
            .as_ref()
            .and_then(ModerationChange::sanction)
            .is_some_and(|(_, _, _, holder)| holder.is_some());
        match change {
            Some(change) if self.config.cluster || (self.config.durable && !bound) => {
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                self.saving.insert(ticket, (change.room().clone(), ack));
                self.out.push(Output::SaveModeration { ticket, change });
            }
            _ => {
                if let Some(PendingSave { session, done }) = ack {
                    self.out.send_to(session, &done);
                }
            }
        }
    }

    /// Slow mode: how long `key` must still wait before posting to `room` (a public
    /// room), or `None` if it may post now. Owners and moderators never wait.
    pub(crate) fn slow_mode_wait(
        &self,
        who: Option<&Identity>,
        key: &UserKey,
        room: &RoomName,
        now: Instant,
    ) -> Option<Duration> {
        let access = self.access.get(room)?;
        if access.slow_mode == 0 {
            return None;
        }
        let last = *access.last_post.get(key)?;
        let next = last + Duration::from_secs(u64::from(access.slow_mode));
        if now >= next || self.role(who, key, room) >= Role::Moderator {
            return None;
        }
        Some(next - now)
    }

    /// Slow mode: `key` posted to `room` at `now`.
    pub(crate) fn note_post(&mut self, key: &UserKey, room: &RoomName, now: Instant) {
        if let Some(access) = self.access.get_mut(room)
            && access.slow_mode > 0
        {
            access.last_post.insert(key.clone(), now);
        }
    }

    /// Makes `key` the owner of `room`, which its `join` just created, when nobody
    /// configured the room: identities come from the host (in anonymous mode a freed
    /// name can be taken again, so nobody owns a room there), the room is not a default
    /// room nor one with rules in the config, nobody holds a role in it yet, and this is
    /// not cluster mode.
    pub(crate) fn creator_owns(&mut self, session: &Session, key: &UserKey, room: &RoomName) {
        let hosted = self.config.auth == AuthMode::Host || session.host_identity;
        // Cluster mode: the room may live on other servers already (roles are per
        // server there, docs/CLUSTER.md).
        if !hosted || self.config.cluster {
            return;
        }
        let c = &self.config;
        let configured = c
            .default_rooms
            .iter()
            .chain(c.rooms.iter().map(|(r, _)| r))
            .filter_map(|r| RoomName::parse(r, c.max_room_chars, c.max_name_chars).ok())
            .any(|r| r == *room);
        if configured {
            return;
        }
        let access = self.access.entry(room.clone()).or_default();
        if access.roles.is_empty() {
            access.roles.insert(key.clone(), Role::Owner);
            let change = ModerationChange::Role {
                room: room.clone(),
                user: self.users.display_name(key),
                role: Role::Owner,
            };
            self.save(Some(change), None);
        }
    }

    /// The slow-mode refusal.
    pub(crate) fn slow_mode_refusal(&self, room: &RoomName, wait: Duration) -> Reject {
        let every = self.access.get(room).map_or(0, |a| a.slow_mode);
        let secs = wait.as_millis().div_ceil(1000).max(1);
        Reject {
            // Refused sends in slow mode are not a flood: the frame rate bounds them.
            strikes: 0,
            ..Reject::new(
                ErrorCode::SlowMode,
                format!(
                    "slow mode: one message every {every} s in {room}; you may send again in {secs} s"
                ),
            )
        }
    }
}

impl ModAction {
    /// The action as it appears on the wire.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ModAction::Kick => "kick",
            ModAction::Ban => "ban",
            ModAction::Mute => "mute",
            ModAction::Unmute => "unmute",
            ModAction::Unban => "unban",
            ModAction::SetRole => "set_role",
            ModAction::Topic => "topic",
            ModAction::SlowMode => "slow_mode",
        }
    }
}
