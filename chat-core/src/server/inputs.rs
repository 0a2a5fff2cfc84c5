//! What the driver feeds in: the time, inputs, and the errors an input can carry or cause.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::ids::{ClientMsgId, RoomName, Seq, SessionId, UserName};
use crate::protocol::{ClientFrame, DecodeError, Message};

/// The current time, passed in: the core never reads a clock.
///
/// `mono` drives timers; `utc` stamps messages. A driver builds it from
/// `Instant::now()` and `Utc::now()`; tests build it once and [`Now::advance`] it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time, for timers and rate limits.
    pub mono: Instant,
    /// Wall-clock time, for message timestamps.
    pub utc: DateTime<Utc>,
}

impl Now {
    /// Builds a time from its two clocks.
    #[must_use]
    pub fn new(mono: Instant, utc: DateTime<Utc>) -> Now {
        Now { mono, utc }
    }

    /// The same time `d` later on both clocks.
    #[must_use]
    pub fn advance(self, d: Duration) -> Now {
        let utc = self.utc + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero());
        Now {
            mono: self.mono + d,
            utc,
        }
    }
}

/// Something that happened outside the state machine.
#[derive(Debug)]
#[non_exhaustive]
pub enum Input {
    /// A connection opened. The driver picks a fresh id.
    Connected {
        /// The new session.
        session: SessionId,
    },
    /// A connection opened whose user the host already knows (from the upgrade
    /// request: a session cookie, a header). The session's user is `identity`'s,
    /// whatever its `hello` says; at `identity.expires` it is told and closed.
    ConnectedAs {
        /// The new session.
        session: SessionId,
        /// Who it is.
        identity: super::Identity,
    },
    /// A text frame arrived, decoded with [`crate::protocol::decode`] (in the driver's
    /// reader task, so decoding runs in parallel with the core).
    Received {
        /// From whom.
        session: SessionId,
        /// The frame, or why it could not be decoded.
        frame: Result<ClientFrame, DecodeError>,
    },
    /// The connection closed (by the peer, by the network, or after [`Output::Close`](super::Output::Close)).
    Disconnected {
        /// Which.
        session: SessionId,
    },
    /// The driver could not queue a [`Output::Send`](super::Output::Send) for this session: its outbound
    /// queue is full. The frame was dropped.
    QueueFull {
        /// Which session.
        session: SessionId,
        /// Whether the dropped frame was ephemeral ([`Encoded::is_ephemeral`](crate::protocol::Encoded::is_ephemeral)).
        ephemeral: bool,
    },
    /// The host's answer to [`Output::Authenticate`](super::Output::Authenticate): the user name, or why not.
    Authenticated {
        /// The session that said hello.
        session: SessionId,
        /// The authenticated user's name, or the refusal.
        result: Result<String, AuthRefused>,
    },
    /// The store's answer to [`Output::Persist`](super::Output::Persist).
    Persisted {
        /// The message's room.
        room: RoomName,
        /// The message's seq.
        seq: Seq,
        /// Whether it was committed.
        result: Result<(), StoreError>,
    },
    /// The store's answer to [`Output::SaveModeration`](super::Output::SaveModeration).
    ModerationSaved {
        /// The change's ticket.
        ticket: u64,
        /// Whether it was committed.
        result: Result<(), StoreError>,
    },
    /// The store's answer to [`Output::LoadHistory`](super::Output::LoadHistory).
    HistoryLoaded {
        /// The request's ticket.
        ticket: u64,
        /// The page (oldest first) and whether older messages exist.
        result: Result<(Vec<Message>, bool), StoreError>,
    },
    /// Cluster mode: the log's answer to [`Output::Append`](super::Output::Append).
    Appended {
        /// The room.
        room: RoomName,
        /// The append's ticket.
        ticket: u64,
        /// The seq and time the log gave the message, or why it could not append it
        /// (the sender gets `storage_unavailable`, or the code of a
        /// [`StoreError::Refused`]; nothing was acked).
        result: Result<super::cluster::Appended, StoreError>,
    },
    /// Cluster mode: entries of a room's log, in any order, possibly already seen:
    /// doorbells of other servers' (and this server's) appends, or the answer to
    /// [`Output::FetchLog`](super::Output::FetchLog).
    RoomLog {
        /// The room.
        room: RoomName,
        /// The entries.
        messages: Vec<Message>,
        /// The log holds nothing below this seq any more (trimmed): what this server has
        /// not delivered below it is lost, and its members are told so.
        gap_before: Option<Seq>,
        /// This answers an [`Output::FetchLog`](super::Output::FetchLog).
        fetched: bool,
    },
    /// Cluster mode: the log's answer to [`Output::LoadRoom`](super::Output::LoadRoom).
    RoomLoaded {
        /// The room.
        room: RoomName,
        /// The room as the log holds it, or why it could not be read (what waited for
        /// the room gets `storage_unavailable`).
        result: Result<super::cluster::LoadedRoom, StoreError>,
    },
    /// Cluster mode: a room's moderation state (roles, bans and mutes with their
    /// ends, topic, slow mode) as the shared log holds it, answering
    /// [`Output::FetchModeration`](super::Output::FetchModeration) or, before its
    /// [`Input::RoomLoaded`], an [`Output::LoadRoom`](super::Output::LoadRoom). It
    /// replaces this server's copy of the room's state, unless this server changed the
    /// room's state since it asked (then the next read brings that change too). Local
    /// sessions of a user it newly bans leave the room.
    ModerationLoaded {
        /// The room.
        room: RoomName,
        /// The state as changes to apply to an empty one, or why it could not be read
        /// (the server keeps what it has).
        result: Result<Vec<super::ModerationChange>, StoreError>,
    },
    /// Cluster mode: a presence announcement of the log.
    Presence {
        /// The room.
        room: RoomName,
        /// The announcement.
        announced: super::cluster::Announced,
    },
    /// Cluster mode: the room's whole presence, as the log holds it (the answer to
    /// [`Output::FetchPresence`](super::Output::FetchPresence), or after a reconnect).
    PresenceSnapshot {
        /// The room.
        room: RoomName,
        /// The room's presence version.
        pv: u64,
        /// Everyone present.
        users: Vec<UserName>,
    },
    /// Cluster mode: doorbells may have been missed (the broker's subscription was
    /// remade, or a periodic check found the log ahead): every room named (all rooms for
    /// `None`) reads the log after its last delivered seq ([`Output::FetchLog`](super::Output::FetchLog)).
    CatchUp {
        /// One room, or every room.
        room: Option<RoomName>,
    },
    /// Cluster mode: the answer to [`Output::ClaimName`](super::Output::ClaimName):
    /// whether the holder has the name (`false`: another user holds it on some server),
    /// or why the reservation could not be asked (the hello gets a retryable
    /// `storage_unavailable`).
    NameClaimed {
        /// The session that said hello.
        session: SessionId,
        /// Held, taken by someone else, or unknown.
        result: Result<bool, StoreError>,
    },
    /// Cluster mode: a user's read markers from the shared log (the answer to
    /// [`Output::LoadReadMarkers`](super::Output::LoadReadMarkers), or another server's
    /// [`Output::ShareRead`](super::Output::ShareRead)): each moves the user's marker
    /// here forward (never back), and one that moved is told to the user's sessions
    /// here as a `read` frame. A user with no session here is skipped.
    ReadMarkers {
        /// Whose markers.
        user: UserName,
        /// Room and last seq read.
        markers: Vec<(RoomName, Seq)>,
    },
    /// Cluster mode: the cluster's history epoch is now `epoch` (the shared log may have
    /// lost messages). Every session is closed with 1012 so that clients reconnect,
    /// see the new epoch in `welcome` and join without `since`; every room is read from
    /// the log again. The same epoch again changes nothing.
    EpochChanged {
        /// The new epoch.
        epoch: String,
    },
    /// Cluster mode: another server's [`Output::Typing`](super::Output::Typing): shown to
    /// the room's sessions here as a `typing` frame, expiring by itself as a local one.
    Typing {
        /// The room.
        room: RoomName,
        /// Who.
        user: UserName,
        /// Typing, or stopped.
        active: bool,
    },
    /// The host posts a message (a bot, a system notice) without a connection.
    /// Answered by [`Output::Published`](super::Output::Published).
    Publish {
        /// Echoed in [`Output::Published`](super::Output::Published).
        ticket: u64,
        /// Target room (created if rooms are created on join).
        room: String,
        /// Author name shown to users.
        user: String,
        /// Text.
        body: String,
        /// Optional idempotency key, as in `send`.
        client_id: Option<ClientMsgId>,
    },
    /// The host erases `user` in `room` (the right to be forgotten): an `erase` entry
    /// is posted (loading the room first if it left memory), which makes every message
    /// of the user a tombstone and takes the user's reactions away, in the window and,
    /// in durable mode, in the store (in cluster mode, in the shared log, which every
    /// server holding the room applies to its window). Answered by
    /// [`Output::Published`](super::Output::Published) with the entry.
    Erase {
        /// Echoed in [`Output::Published`](super::Output::Published).
        ticket: u64,
        /// The room.
        room: RoomName,
        /// Whose messages.
        user: UserName,
    },
    /// Durable mode: the store's retention deleted every entry of `room` below
    /// `first_kept`; cluster mode: the shared log keeps nothing below it (its retention
    /// trimmed it). The window lets go of them too, and a resume or a history page that
    /// reaches below it is told the gap. In cluster mode a server that has not
    /// delivered up to the trim yet lets go only of what it delivered (its catch-up
    /// tells its members the rest of the gap).
    Pruned {
        /// The room.
        room: RoomName,
        /// The oldest seq still kept.
        first_kept: Seq,
    },
}

/// A storage failure reported by the driver. Clients see `storage_unavailable` either
/// way; the kind tells the host what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The disk (or the database's size limit) is full: nothing is lost, and writes
    /// succeed again once there is room.
    #[error("storage full: {0}")]
    Full(String),
    /// Another process holds the store's lock beyond the wait allowed.
    #[error("storage busy: {0}")]
    Busy(String),
    /// What the store holds cannot be read as chat data (a corrupt row, or a schema
    /// from a newer release).
    #[error("storage corrupt: {0}")]
    Corrupt(String),
    /// The store is not there or failed otherwise (I/O, a lost thread, no store).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Cluster mode: the shared log refused a change (or a reply) by the rules it
    /// checks against the target's current state, which another server changed
    /// meanwhile: the author gets this code (`gone`, `not_author`, ...), not a retry.
    #[error("refused ({0:?}): {1}")]
    Refused(crate::protocol::ErrorCode, String),
}

impl StoreError {
    /// What happened, without the kind.
    #[must_use]
    pub fn detail(&self) -> &str {
        match self {
            StoreError::Full(d)
            | StoreError::Busy(d)
            | StoreError::Corrupt(d)
            | StoreError::Unavailable(d)
            | StoreError::Refused(_, d) => d,
        }
    }
}

/// The host refused a session's credentials; the reason is shown to the client in its
/// `auth_failed` error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct AuthRefused {
    /// Why, in words for the user.
    pub reason: String,
}

impl AuthRefused {
    /// A refusal with this reason.
    pub fn new(reason: impl Into<String>) -> AuthRefused {
        AuthRefused {
            reason: reason.into(),
        }
    }
}

/// The driver used the API wrongly (a bug in the driver, not in a client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiMisuse {
    /// [`Input::Connected`] with an id that is still connected.
    #[error("session {0} is already connected")]
    DuplicateSession(SessionId),
    /// [`Input::Persisted`] for a message that is not pending.
    #[error("message {room}#{seq} is not waiting for the store")]
    NotPending {
        /// Room.
        room: RoomName,
        /// Seq.
        seq: Seq,
    },
    /// An answer with a ticket nobody asked for.
    #[error("unknown ticket {0}")]
    UnknownTicket(u64),
    /// [`Input::RoomLoaded`] for a room nobody asked to load.
    #[error("room {0} is not being loaded")]
    NotLoading(RoomName),
    /// [`Input::Authenticated`] for a session that is not waiting for it.
    #[error("session {0} is not authenticating")]
    NotAuthenticating(SessionId),
    /// [`Input::NameClaimed`] for a session that is not waiting for it.
    #[error("session {0} is not claiming a name")]
    NotClaiming(SessionId),
}
