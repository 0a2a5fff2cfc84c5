//! What the core asks of its driver, and the events it reports to the host.

use std::sync::Arc;

use crate::ids::{ClientMsgId, RoomName, Seq, SessionId, UserName};
use crate::protocol::{Encoded, ErrorCode, Message};

/// Something for the driver to do.
#[derive(Debug)]
#[non_exhaustive]
pub enum Output {
    /// Queue this frame on this session's connection.
    Send {
        /// Recipient.
        to: SessionId,
        /// The frame.
        frame: Encoded,
    },
    /// Queue this frame on the connection of every session in `to`, in its order: one
    /// output per room event, whatever the room's size. The frame is encoded once and the
    /// recipient list is the room's own, shared, so neither is copied per event.
    Broadcast {
        /// The recipients.
        to: Recipients,
        /// The frame, the same bytes for every recipient.
        frame: Encoded,
    },
    /// Close this session's connection after the frames already queued for it.
    /// The core has already forgotten the session.
    Close {
        /// Which.
        session: SessionId,
        /// Why (a WebSocket close code and reason).
        reason: CloseReason,
    },
    /// Durable mode: store this message, then answer with [`Input::Persisted`](super::Input::Persisted).
    /// Messages come in seq order per room; answer in the same order.
    Persist(Arc<Message>),
    /// Durable mode, and cluster mode (into the shared log, which other servers read
    /// it from: [`Output::FetchModeration`]): store this change to a room's moderation
    /// state (roles, bans, mutes, topic, slow mode), then answer with
    /// [`Input::ModerationSaved`](super::Input::ModerationSaved). The moderator's
    /// `done` waits for the answer. Changes come in the order they were made; store
    /// them in that order.
    SaveModeration {
        /// Echo in the answer.
        ticket: u64,
        /// The change.
        change: super::ModerationChange,
    },
    /// Durable mode: store a host identity's read marker (the last seq it read in the
    /// room; see [`Server::restore_read_markers`](super::Server::restore_read_markers)).
    /// Not answered: nothing waits for it, and a marker lost in a crash only shows a
    /// few messages as unread again. Markers come in the order they moved; a later one
    /// of the same user and room replaces an earlier one.
    SaveReadMarker {
        /// The user (a host identity).
        user: UserName,
        /// The room.
        room: RoomName,
        /// The last seq read.
        seq: Seq,
    },
    /// Durable mode: read a history page the window does not hold, then answer with
    /// [`Input::HistoryLoaded`](super::Input::HistoryLoaded).
    LoadHistory {
        /// Echo in the answer.
        ticket: u64,
        /// Room.
        room: RoomName,
        /// Only seqs below this (none: the latest).
        before: Option<Seq>,
        /// Page size.
        limit: usize,
    },
    /// Host auth mode: check these credentials, then answer with [`Input::Authenticated`](super::Input::Authenticated).
    Authenticate {
        /// The session saying hello.
        session: SessionId,
        /// The name it asked for.
        name: String,
        /// The `token` field of its hello.
        credentials: Option<String>,
    },
    /// The outcome of [`Input::Publish`](super::Input::Publish).
    Published {
        /// The publish's ticket.
        ticket: u64,
        /// The posted message (or the earlier one, for a repeated client id), or why not.
        result: Result<Arc<Message>, ErrorCode>,
    },
    /// Cluster mode: append this entry (a message, or a change to one) to the room's
    /// shared log, then answer with [`Input::Appended`](super::Input::Appended) (the room
    /// and the ticket). A change is checked by the log against the target's current
    /// state ([`EntryDetail::rules`](super::EntryDetail::rules)) in the same atomic step that appends it; a refusal
    /// is answered with [`StoreError::Refused`](super::StoreError::Refused).
    Append {
        /// The room.
        room: RoomName,
        /// Echo in the answer (unique per room).
        ticket: u64,
        /// The author (of a change: who makes it).
        user: UserName,
        /// The text (of an edit: the new text; empty for a delete or a reaction).
        body: Arc<str>,
        /// The author's message id, for the log's idempotency check.
        client_id: Option<ClientMsgId>,
        /// What the entry is beyond a message's text: a change's kind and target, a
        /// reply's target (`None`: a plain message; boxed, so that every other output
        /// stays small).
        detail: Option<Box<super::cluster::EntryDetail>>,
    },
    /// Cluster mode: a user's read marker in a room moved forward here. Keep it in the
    /// shared log (forward only, durable) and tell the other servers holding the room,
    /// whose sessions of the user get it through
    /// [`Input::ReadMarkers`](super::Input::ReadMarkers).
    ShareRead {
        /// The room.
        room: RoomName,
        /// Whose marker.
        user: UserName,
        /// The last seq read.
        seq: Seq,
    },
    /// Cluster mode: a user's first session on this server said hello: read the user's
    /// read markers from the shared log and answer with
    /// [`Input::ReadMarkers`](super::Input::ReadMarkers).
    LoadReadMarkers {
        /// Whose markers.
        user: UserName,
    },
    /// Cluster mode: this server needs a room it does not hold (a join, a send, a
    /// history page): listen to its doorbells, then read it from the log and answer with
    /// [`Input::RoomLoaded`](super::Input::RoomLoaded). What needs the room waits.
    LoadRoom {
        /// The room.
        room: RoomName,
    },
    /// Cluster mode: read the room's moderation state from the shared log and answer
    /// with [`Input::ModerationLoaded`](super::Input::ModerationLoaded) (asked for every
    /// room in memory at each catch-up of all rooms: after the broker re-subscribes, and
    /// periodically). A [`Output::LoadRoom`] answers it too, before `RoomLoaded`.
    FetchModeration {
        /// The room.
        room: RoomName,
    },
    /// Cluster mode: this server dropped the room (nobody here is in it any more): stop
    /// listening to its doorbells.
    UnloadRoom {
        /// The room.
        room: RoomName,
    },
    /// Cluster mode: a user's first session on this server entered the room
    /// (`entered`), or the last one left it. Count it in the log, which announces the
    /// user to every server when the count over servers leaves or reaches zero
    /// ([`Input::Presence`](super::Input::Presence)).
    Presence {
        /// The room.
        room: RoomName,
        /// The user.
        user: UserName,
        /// Entered or left.
        entered: bool,
    },
    /// Cluster mode: a presence announcement was skipped; read the room's whole
    /// presence and answer with [`Input::PresenceSnapshot`](super::Input::PresenceSnapshot).
    FetchPresence {
        /// The room.
        room: RoomName,
    },
    /// Cluster mode: an entry of the room's log is missing here; read the log after
    /// `after` and answer with [`Input::RoomLog`](super::Input::RoomLog) with `fetched`.
    FetchLog {
        /// The room.
        room: RoomName,
        /// The last seq delivered here.
        after: Seq,
    },
    /// Cluster mode: an anonymous user's first session on this server asks for a name no
    /// session here holds. Reserve it over all servers for `holder` (the same holder may
    /// take it again: the user's other sessions, or its return within the grace
    /// period), keep it reserved while this server holds the user, and answer with
    /// [`Input::NameClaimed`](super::Input::NameClaimed).
    ClaimName {
        /// The session that said hello.
        session: SessionId,
        /// The name asked for.
        name: UserName,
        /// What the reservation is made under: the name's look-alike skeleton (UTS #39),
        /// so that names that only look alike (`bob`, `b0b`, Cyrillic `bоb`) are one
        /// reservation, as they are one name on a single server.
        key: String,
        /// Who asks: a hash of the user's token and the name's key, the same on every
        /// server for the same user (not the token itself, which is a secret).
        holder: String,
    },
    /// Cluster mode: this server no longer holds the user (its grace period ended):
    /// stop keeping the name reserved. Another server may still hold it for the same
    /// holder, so the reservation is left to expire, not deleted.
    ReleaseName {
        /// The reservation's key, as in [`Output::ClaimName`].
        key: String,
    },
    /// Cluster mode: the log handed out a seq this server had already delivered as
    /// another message: the log lost entries (an async failover, a restore from an older
    /// copy). Replace the cluster epoch; every server then gets
    /// [`Input::EpochChanged`](super::Input::EpochChanged).
    LogRegressed {
        /// The room where it was seen.
        room: RoomName,
        /// The seq handed out again.
        seq: Seq,
    },
    /// Cluster mode: a user here is typing in the room (`active`, sent again while the
    /// user keeps typing, at most at the typing rate) or stopped: tell the other
    /// servers ([`Input::Typing`](super::Input::Typing)). At most once, never stored:
    /// a lost one only costs an indicator until it expires.
    Typing {
        /// The room.
        room: RoomName,
        /// Who.
        user: UserName,
        /// Typing, or stopped.
        active: bool,
    },
    /// Something the host app may want to observe.
    Event(Event),
    /// After [`Server::shutdown`](super::Server::shutdown): every pending message is settled and every session
    /// has been told to go. The driver can stop once the closes are flushed.
    Drained,
}

impl Output {
    /// Every (recipient, frame) pair of a [`Output::Send`] or [`Output::Broadcast`], in
    /// order; nothing for the other outputs. For drivers and tests that handle each
    /// recipient alike (a network driver walks [`Recipients`] itself).
    pub fn sends(&self) -> impl Iterator<Item = (SessionId, &Encoded)> {
        let (one, many) = match self {
            Output::Send { to, frame } => (Some((*to, frame)), None),
            Output::Broadcast { to, frame } => (None, Some(to.iter().map(move |s| (s, frame)))),
            _ => (None, None),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

/// The sessions a [`Output::Broadcast`] goes to: a room's recipient list (shared with the
/// room, ascending) less a few sessions (the author's own, say, or congested ones for a
/// typing notice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipients {
    all: Arc<Vec<SessionId>>,
    /// Ascending, each also in `all`; usually empty (then nothing is allocated).
    except: Box<[SessionId]>,
}

impl Recipients {
    /// `all` (ascending) less `except` (any order; sessions not in `all` are ignored).
    pub(crate) fn new(all: Arc<Vec<SessionId>>, mut except: Vec<SessionId>) -> Recipients {
        debug_assert!(all.is_sorted(), "recipients are kept in order");
        except.sort_unstable();
        except.dedup();
        except.retain(|s| all.binary_search(s).is_ok());
        Recipients {
            all,
            except: except.into_boxed_slice(),
        }
    }

    /// The recipients, ascending.
    pub fn iter(&self) -> impl Iterator<Item = SessionId> + '_ {
        let except = &*self.except;
        self.all
            .iter()
            .copied()
            .filter(move |s| except.is_empty() || except.binary_search(s).is_err())
    }

    /// How many there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.all.len() - self.except.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `session` is one of them.
    #[must_use]
    pub fn contains(&self, session: SessionId) -> bool {
        self.all.binary_search(&session).is_ok() && self.except.binary_search(&session).is_err()
    }
}

/// Observable events for the host app (metrics, logs, integrations).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A session completed `hello`.
    SessionOpened {
        /// Session.
        session: SessionId,
        /// Its user.
        user: UserName,
    },
    /// A session ended.
    SessionClosed {
        /// Session.
        session: SessionId,
        /// Its user, if it had said hello.
        user: Option<UserName>,
        /// Set when the server closed it.
        reason: Option<CloseReason>,
    },
    /// A user appeared in a room.
    UserJoined {
        /// Room.
        room: RoomName,
        /// User.
        user: UserName,
    },
    /// A user left a room.
    UserLeft {
        /// Room.
        room: RoomName,
        /// User.
        user: UserName,
    },
    /// A room was created.
    RoomCreated(RoomName),
    /// A log entry was posted (delivered to the room's members): a message, or a
    /// change to one (an edit, delete or reaction: see [`Message::kind`]).
    MessagePosted(Arc<Message>),
    /// The host or a room's moderator moderated a user in a room (kick, ban, unban,
    /// mute, unmute, set_role).
    Moderated {
        /// Room.
        room: RoomName,
        /// The user concerned.
        user: UserName,
        /// What was done.
        action: crate::protocol::ModAction,
        /// Why, if said.
        reason: Option<String>,
        /// A ban's or mute's length in minutes (rounded up); `None`: for good.
        minutes: Option<u64>,
        /// `set_role`: the new role.
        role: Option<crate::protocol::Role>,
        /// The moderator; `None`: the host.
        by: Option<UserName>,
    },
    /// A room's topic was set (empty: cleared).
    TopicChanged {
        /// Room.
        room: RoomName,
        /// The topic.
        topic: String,
        /// The moderator; `None`: the host.
        by: Option<UserName>,
    },
    /// A room's slow mode was set (0: off).
    SlowModeChanged {
        /// Room.
        room: RoomName,
        /// Seconds between a member's messages.
        seconds: u32,
        /// The moderator; `None`: the host.
        by: Option<UserName>,
    },
    /// A command was rejected with an error frame.
    Rejected {
        /// Session.
        session: SessionId,
        /// The error code sent.
        code: ErrorCode,
    },
}

/// Why the server closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// Its outbound queue was full of messages it did not read.
    SlowConsumer,
    /// It sent frames faster than allowed, or kept sending rejected commands.
    Flood,
    /// Its hello named a protocol version the server does not speak.
    UnsupportedVersion,
    /// The identity hook refused it.
    AuthFailed,
    /// The server is shutting down; reconnect later.
    Shutdown,
    /// Cluster mode: the history epoch changed (the shared log may have lost messages);
    /// reconnect, and join without `since`.
    EpochChanged,
    /// The host identity's credentials expired: log in again.
    AuthExpired,
    /// The host revoked the user's access.
    Revoked,
}

impl CloseReason {
    /// The WebSocket close code for this reason.
    #[must_use]
    pub fn ws_code(self) -> u16 {
        match self {
            CloseReason::SlowConsumer => 1013,
            CloseReason::Flood | CloseReason::AuthFailed => 1008,
            CloseReason::UnsupportedVersion => 1002,
            CloseReason::Shutdown | CloseReason::EpochChanged => 1012,
            CloseReason::AuthExpired => 4001,
            CloseReason::Revoked => 4003,
        }
    }

    /// The close reason text.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::Flood => "flood",
            CloseReason::UnsupportedVersion => "unsupported protocol version",
            CloseReason::AuthFailed => "authentication failed",
            CloseReason::Shutdown => "server shutting down",
            CloseReason::EpochChanged => "history epoch changed",
            CloseReason::AuthExpired => "credentials expired",
            CloseReason::Revoked => "access revoked",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// A driver may walk a broadcast's recipients, count them or ask about one session:
    /// the three answers agree with the set `all` less `except`, whatever `except` holds.
    #[test]
    fn recipients_are_all_less_the_exceptions_by_every_accessor() {
        let all: Vec<SessionId> = [2, 3, 5, 8].map(SessionId).into();
        let cases: [&[u64]; 6] = [&[], &[5], &[8, 2], &[3, 3, 9], &[9, 1], &[2, 3, 5, 8]];
        for except in cases {
            let except: Vec<SessionId> = except.iter().copied().map(SessionId).collect();
            let to = Recipients::new(Arc::new(all.clone()), except.clone());
            let want: BTreeSet<SessionId> = all
                .iter()
                .copied()
                .filter(|s| !except.contains(s))
                .collect();
            let case = format!("except {except:?}");
            assert_eq!(
                to.iter().collect::<Vec<_>>(),
                Vec::from_iter(want.iter().copied()),
                "{case}"
            );
            assert_eq!(to.len(), want.len(), "{case}");
            assert_eq!(to.is_empty(), want.is_empty(), "{case}");
            for s in (0..10).map(SessionId) {
                assert_eq!(to.contains(s), want.contains(&s), "{case}: {s}");
            }
        }
    }
}
