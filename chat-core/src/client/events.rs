//! What a [`Client`](super::Client) gives its driver: frames to write and events to act on.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::ids::{ClientMsgId, RequestId, RoomName, Seq, UserName};
use crate::protocol::{
    ClientFrame, DeleteRequest, EditRequest, ErrorCode, Limits, Message, ModAction, ReactRequest,
    Role, RoomInfo,
};

/// Something for the driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientOutput {
    /// Write this frame to the current connection.
    Transmit(ClientFrame),
    /// Tell the user (or the script) about this.
    Event(ClientEvent),
}

/// How a message reached the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Delivery {
    /// Posted while this client was in the room.
    Live,
    /// Missed while disconnected, delivered by a resume (`join` with `since`).
    CatchUp,
    /// Recent history sent with a first join: posted before this client came.
    Backlog,
}

/// The command an error frame refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// The `hello`.
    Hello,
    /// A `join` of this room (as the user typed it).
    Join {
        /// The room name as given.
        room: String,
    },
    /// A `leave`.
    Leave {
        /// The room.
        room: String,
    },
    /// A `send`; it is no longer pending.
    Send {
        /// Its client id.
        client_id: ClientMsgId,
        /// Where it went.
        target: Target,
        /// Its text.
        body: String,
    },
    /// An edit, delete or reaction ([`Client::change`](super::Client::change)); it is no
    /// longer pending.
    Change {
        /// Its client id.
        client_id: ClientMsgId,
        /// The room.
        room: String,
        /// What it was.
        change: MessageChange,
    },
    /// A `read` (the read marker); see [`Client::mark_read`](super::Client::mark_read).
    Read {
        /// The room.
        room: String,
    },
    /// A `history` request.
    History {
        /// The room.
        room: String,
    },
    /// A `rooms` request.
    Rooms,
    /// A `members` request.
    Members {
        /// The room.
        room: String,
    },
    /// A moderator's command ([`Client::moderate`](super::Client::moderate)).
    Moderate {
        /// The room.
        room: String,
    },
}

/// A moderator's command for [`Client::moderate`](super::Client::moderate); the server
/// refuses it with `forbidden` unless this user is a moderator (or, for `SetRole`, an
/// owner) of the room. See docs/PROTOCOL.md, "Moderation".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Moderation {
    /// Take `user` out of the room, with a reason.
    Kick {
        /// The user.
        user: String,
        /// Why (may be empty).
        reason: String,
    },
    /// Take `user` out and keep them out for `minutes` (`None`: until unbanned).
    Ban {
        /// The user.
        user: String,
        /// Why (may be empty).
        reason: String,
        /// How long.
        minutes: Option<u64>,
    },
    /// Lift a ban.
    Unban {
        /// The user.
        user: String,
    },
    /// `user` reads but may not post, for `minutes` (`None`: until unmuted).
    Mute {
        /// The user.
        user: String,
        /// Why (may be empty).
        reason: String,
        /// How long.
        minutes: Option<u64>,
    },
    /// Lift a mute.
    Unmute {
        /// The user.
        user: String,
    },
    /// Give `user` a role (owners only).
    SetRole {
        /// The user.
        user: String,
        /// The role.
        role: crate::protocol::Role,
    },
    /// Set the room's topic (empty: none).
    Topic(String),
    /// Slow mode: seconds between a member's posts (0: off).
    SlowMode(u32),
}

impl Moderation {
    /// The frame for `room`, with request id `id`.
    pub(super) fn frame(self, room: String, id: RequestId) -> ClientFrame {
        let id = Some(id);
        let reason = |r: String| (!r.is_empty()).then_some(r);
        match self {
            Moderation::Kick { user, reason: r } => ClientFrame::Kick {
                id,
                room,
                user,
                reason: reason(r),
            },
            Moderation::Ban {
                user,
                reason: r,
                minutes,
            } => ClientFrame::Ban {
                id,
                room,
                user,
                reason: reason(r),
                minutes,
            },
            Moderation::Unban { user } => ClientFrame::Unban { id, room, user },
            Moderation::Mute {
                user,
                reason: r,
                minutes,
            } => ClientFrame::Mute {
                id,
                room,
                user,
                reason: reason(r),
                minutes,
            },
            Moderation::Unmute { user } => ClientFrame::Unmute { id, room, user },
            Moderation::SetRole { user, role } => ClientFrame::SetRole {
                id,
                room,
                user,
                role,
            },
            Moderation::Topic(topic) => ClientFrame::Topic { id, room, topic },
            Moderation::SlowMode(seconds) => ClientFrame::SlowMode { id, room, seconds },
        }
    }
}

/// A change to a message of a room, for [`Client::change`](super::Client::change)
/// (docs/PROTOCOL.md, "Messages live on"). The server answers an `ack` (the change's own
/// seq) or an error: `not_author`, `gone`, `no_such_message`, `edit_window_passed`,
/// `limit_reached`, `forbidden`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageChange {
    /// A new text for one of this user's messages (within the server's edit window).
    Edit {
        /// The message.
        seq: Seq,
        /// The new text.
        body: String,
    },
    /// Delete a message, leaving a tombstone: one's own, or any as the room's moderator
    /// or owner.
    Delete {
        /// The message.
        seq: Seq,
    },
    /// Add (`on`) or take back this user's reaction with `emoji`.
    React {
        /// The message.
        seq: Seq,
        /// One emoji.
        emoji: String,
        /// Add or take back.
        on: bool,
    },
}

impl MessageChange {
    /// The message it changes.
    #[must_use]
    pub fn seq(&self) -> Seq {
        match self {
            MessageChange::Edit { seq, .. }
            | MessageChange::Delete { seq }
            | MessageChange::React { seq, .. } => *seq,
        }
    }

    /// Its frame for `room`.
    pub(super) fn frame(&self, room: String, id: RequestId, client_id: ClientMsgId) -> ClientFrame {
        let (id, client_id) = (Some(id), Some(client_id));
        match self {
            MessageChange::Edit { seq, body } => ClientFrame::Edit(EditRequest {
                id,
                room,
                seq: *seq,
                body: body.clone(),
                client_id,
            }),
            MessageChange::Delete { seq } => ClientFrame::Delete(DeleteRequest {
                id,
                room,
                seq: *seq,
                client_id,
            }),
            MessageChange::React { seq, emoji, on } => ClientFrame::React(ReactRequest {
                id,
                room,
                seq: *seq,
                emoji: emoji.clone(),
                on: *on,
                client_id,
            }),
        }
    }
}

/// Where a send goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A room (as given; the server normalizes it).
    Room(String),
    /// A user: a direct message.
    User(String),
}

/// What happened, in the order the server said it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The server accepted the `hello`.
    Welcome {
        /// This client's user name, as the server normalized it.
        user: UserName,
        /// True when this is not the first welcome (a reconnect).
        resumed: bool,
        /// True when the server's history epoch changed since the last welcome: seqs
        /// restarted, cursors were dropped and earlier messages may be missing.
        epoch_changed: bool,
        /// The server's limits.
        limits: Limits,
    },
    /// This client is in a room (a reply to `join`, or to `hello`). The room's new
    /// messages follow as [`ClientEvent::Message`].
    Joined {
        /// The join's request id (`None` for rooms joined by `hello`).
        id: Option<RequestId>,
        /// The room.
        room: RoomName,
        /// Who is in it.
        members: Vec<UserName>,
        /// True when the server could not send everything after this client's cursor:
        /// some messages are missing before the ones that follow.
        gap: bool,
        /// The room's latest seq when it was joined: later messages are live; a
        /// `history` page `before` the next seq holds the earlier ones.
        last_seq: Seq,
    },
    /// This client left a room.
    Left {
        /// The leave's request id.
        id: Option<RequestId>,
        /// The room.
        room: RoomName,
    },
    /// A room message this client has not seen before, or a change to one (an entry
    /// whose [`Message::kind`] is not `message`: apply it with [`Message::apply`]).
    Message {
        /// The message.
        message: Arc<Message>,
        /// How it arrived.
        delivery: Delivery,
        /// Whether this client's user wrote it.
        own: bool,
    },
    /// This user's read marker in a room moved forward: another session (or device) of
    /// the user read up to `seq`. [`RoomState::read`](super::RoomState::read) holds it.
    Read {
        /// The room.
        room: RoomName,
        /// The last seq read.
        seq: Seq,
    },
    /// The server stored a send (or a change) of this client.
    Acked {
        /// The send's request id.
        id: Option<RequestId>,
        /// The room (for a direct message, `@a,b`).
        room: RoomName,
        /// The message's seq (a change's own seq).
        seq: Seq,
        /// The send's client id.
        client_id: Option<ClientMsgId>,
        /// True when it had been posted already (a resend).
        duplicate: bool,
    },
    /// A page of history (not deduplicated: the caller asked for it).
    History {
        /// The request id.
        id: Option<RequestId>,
        /// The room.
        room: RoomName,
        /// Messages, oldest first.
        messages: Vec<Arc<Message>>,
        /// Whether older messages exist.
        has_more: bool,
    },
    /// The room list.
    Rooms {
        /// The request id.
        id: Option<RequestId>,
        /// The rooms.
        rooms: Vec<RoomInfo>,
    },
    /// A room's member list.
    Members {
        /// The request id.
        id: Option<RequestId>,
        /// The room.
        room: RoomName,
        /// Its users (a page of them, when `count` is given).
        members: Vec<UserName>,
        /// Version 2: how many users are in the room.
        count: Option<usize>,
        /// Version 2: whether users come after this page.
        more: bool,
    },
    /// Version 2: who came into and left a room over the server's last presence tick
    /// (both empty when the room is above the presence threshold: only the count
    /// changed, or the whole list came again). The room's state is updated already.
    Presence {
        /// The room.
        room: RoomName,
        /// Who came.
        joins: Vec<UserName>,
        /// Who left.
        leaves: Vec<UserName>,
        /// How many users are in the room now.
        count: usize,
    },
    /// Someone came into a room (version 1).
    UserJoined {
        /// The room.
        room: RoomName,
        /// Who.
        user: UserName,
        /// When.
        ts: DateTime<Utc>,
    },
    /// Someone left a room (version 1).
    UserLeft {
        /// The room.
        room: RoomName,
        /// Who.
        user: UserName,
        /// When.
        ts: DateTime<Utc>,
    },
    /// Someone started or stopped typing.
    Typing {
        /// The room.
        room: RoomName,
        /// Who.
        user: UserName,
        /// Whether they type.
        active: bool,
    },
    /// The server refused a command.
    Rejected {
        /// The command's request id, when it had one.
        id: Option<RequestId>,
        /// The command, when the client knows which.
        command: Option<Command>,
        /// The stable error code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The server is going away; reconnect after about `retry_after`.
    Goodbye {
        /// Why.
        reason: String,
        /// Suggested delay.
        retry_after: Duration,
    },
    /// A user was moderated in a room this client is in (this user included: a kick or
    /// ban is followed by [`ClientEvent::Left`]).
    Moderated {
        /// The room.
        room: RoomName,
        /// The user concerned.
        user: UserName,
        /// What was done.
        action: ModAction,
        /// Why, if said.
        reason: Option<String>,
        /// A ban's or mute's length in minutes; `None`: for good.
        minutes: Option<u64>,
        /// `set_role`: the new role.
        role: Option<Role>,
        /// The moderator; `None`: the host.
        by: Option<UserName>,
    },
    /// A room's topic changed (empty: none).
    Topic {
        /// The room.
        room: RoomName,
        /// The topic.
        topic: String,
        /// The moderator; `None`: the host.
        by: Option<UserName>,
    },
    /// A room's slow mode changed (0: off).
    SlowMode {
        /// The room.
        room: RoomName,
        /// Seconds between a member's posts.
        seconds: u32,
        /// The moderator; `None`: the host.
        by: Option<UserName>,
    },
    /// The server carried out this client's moderator command.
    Done {
        /// The command's request id.
        id: Option<RequestId>,
        /// The room.
        room: RoomName,
        /// What was done.
        action: ModAction,
        /// The user concerned, if any.
        user: Option<UserName>,
    },
}

impl ClientEvent {
    /// The request this event answers: the id the command method returned (`join`,
    /// `leave`, a send, `history`, `list_rooms`, `members`, or the hello), when the event
    /// is a reply to one. Drivers match their requests with it.
    #[must_use]
    pub fn request_id(&self) -> Option<RequestId> {
        match self {
            ClientEvent::Joined { id, .. }
            | ClientEvent::Left { id, .. }
            | ClientEvent::Acked { id, .. }
            | ClientEvent::History { id, .. }
            | ClientEvent::Rooms { id, .. }
            | ClientEvent::Members { id, .. }
            | ClientEvent::Done { id, .. }
            | ClientEvent::Rejected { id, .. } => *id,
            ClientEvent::Welcome { .. }
            | ClientEvent::Message { .. }
            | ClientEvent::UserJoined { .. }
            | ClientEvent::UserLeft { .. }
            | ClientEvent::Presence { .. }
            | ClientEvent::Typing { .. }
            | ClientEvent::Moderated { .. }
            | ClientEvent::Topic { .. }
            | ClientEvent::SlowMode { .. }
            | ClientEvent::Read { .. }
            | ClientEvent::Goodbye { .. } => None,
        }
    }
}
