//! Wire protocol: JSON text frames, one object per frame, internally tagged by `type`.
//!
//! The same types are used by the server, `chat-cli`, the tests, and (as documented JSON)
//! the browser page. `docs/PROTOCOL.md` shows a transcript for every frame.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{ClientMsgId, RequestId, RoomName, Seq, SessionId, UserKey, UserName};

/// The protocol version this crate speaks. Sent in `hello` and `welcome`.
///
/// Version 2 coalesces presence into [`ServerFrame::Presence`] and pages member lists of
/// big rooms; a server still accepts [`PROTOCOL_VERSION_1`] (deprecated: `user_joined`
/// and `user_left` per change, whole member lists), so pages cached before an upgrade
/// keep working.
pub const PROTOCOL_VERSION: u32 = 2;

/// The first protocol version, still accepted in `hello` (deprecated).
pub const PROTOCOL_VERSION_1: u32 = 1;

/// Most members a `members` request (version 2) returns at once.
pub const MEMBERS_PAGE_MAX: usize = 500;

/// Members in a `members` page when the request names no `limit`, and at most in a
/// version-2 `joined` of a room above the presence threshold (which lists the first
/// `min(threshold, MEMBERS_PAGE)`).
pub const MEMBERS_PAGE: usize = 100;

/// A frame sent by a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum ClientFrame {
    /// First frame of every connection: protocol version and the name to use.
    Hello(HelloRequest),
    /// Join a room (created on first join), or resume it from `since`.
    Join(JoinRequest),
    /// Leave a room.
    Leave {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Room name.
        room: String,
    },
    /// Post a message to a room (`room`) or to a user (`to`, a direct message).
    Send(SendRequest),
    /// Change the body of one of the user's own messages (within the edit window).
    Edit(EditRequest),
    /// Delete a message: the author's own, or any as the room's moderator or owner. A
    /// tombstone stays in its place.
    Delete(DeleteRequest),
    /// Add (`on: true`) or remove this user's reaction to a message.
    React(ReactRequest),
    /// Move this user's read marker in a room forward to `seq` (never back). Not
    /// answered; the user's other sessions get `read`.
    Read {
        /// Request id, echoed in an `error`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Room name.
        room: String,
        /// The last seq read.
        seq: Seq,
    },
    /// Ask for a page of history, newest `limit` messages before `before`, oldest first.
    History(HistoryRequest),
    /// List rooms with member counts.
    Rooms {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
    },
    /// List the users in a room. Version 2 (or with `after` or `limit`): a page of
    /// at most `limit` users (default [`MEMBERS_PAGE`], at most [`MEMBERS_PAGE_MAX`])
    /// whose keys come after `after`'s, in the list's order.
    Members {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Room name.
        room: String,
        /// The last user of the previous page: this page starts after it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
        /// Page size.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// Typing indicator: `active` true while typing (repeat every few seconds), false to stop.
    /// Best effort: excess typing frames are coalesced, never answered.
    Typing {
        /// Room name.
        room: String,
        /// Whether the user is typing.
        active: bool,
    },
    /// Moderators: take a user out of a room now, with a reason; they may come back.
    Kick {
        /// Request id, echoed in the `done` or `error`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Room name.
        room: String,
        /// The user.
        user: String,
        /// Why, shown to the room.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Moderators: take a user out of a room and keep them out (of its messages and
    /// member list too) for `minutes`, or until `unban` when absent.
    Ban {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Room name.
        room: String,
        /// The user.
        user: String,
        /// Why, shown to the room.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// How long; absent: until lifted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        minutes: Option<u64>,
    },
    /// Moderators: lift a ban.
    Unban {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Room name.
        room: String,
        /// The user.
        user: String,
    },
    /// Moderators: the user stays and reads but may not post, for `minutes` or until
    /// `unmute` when absent.
    Mute {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Room name.
        room: String,
        /// The user.
        user: String,
        /// Why, shown to the room.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// How long; absent: until lifted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        minutes: Option<u64>,
    },
    /// Moderators: lift a mute.
    Unmute {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Room name.
        room: String,
        /// The user.
        user: String,
    },
    /// Owners: give a user a role in a room.
    SetRole {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Room name.
        room: String,
        /// The user.
        user: String,
        /// The new role.
        role: Role,
    },
    /// Moderators: set the room's topic (empty: none).
    Topic {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Room name.
        room: String,
        /// The topic, at most [`MAX_TOPIC_CHARS`] characters.
        topic: String,
    },
    /// Moderators: slow mode, one message per `seconds` per member (0: off); owners
    /// and moderators are exempt.
    SlowMode {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Room name.
        room: String,
        /// Seconds between a member's messages, at most [`MAX_SLOW_MODE_SECONDS`]; 0: off.
        seconds: u32,
    },
}

/// Longest room topic, in characters.
pub const MAX_TOPIC_CHARS: usize = 200;

/// Longest slow-mode interval, in seconds (a day).
pub const MAX_SLOW_MODE_SECONDS: u32 = 86_400;

/// A user's role in a room, lowest first.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everyone else.
    #[default]
    Member,
    /// Kicks, bans, mutes members; sets the topic and slow mode.
    Moderator,
    /// As a moderator, over moderators too, and gives roles.
    Owner,
}

impl Role {
    /// The role as it appears on the wire.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Moderator => "moderator",
            Role::Owner => "owner",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ClientFrame {
    /// The frame's request id, echoed in its answer or in the error rejecting it.
    #[must_use]
    pub fn request_id(&self) -> Option<RequestId> {
        match self {
            ClientFrame::Hello(HelloRequest { id, .. })
            | ClientFrame::Join(JoinRequest { id, .. })
            | ClientFrame::Send(SendRequest { id, .. })
            | ClientFrame::Edit(EditRequest { id, .. })
            | ClientFrame::Delete(DeleteRequest { id, .. })
            | ClientFrame::React(ReactRequest { id, .. })
            | ClientFrame::History(HistoryRequest { id, .. })
            | ClientFrame::Leave { id, .. }
            | ClientFrame::Rooms { id }
            | ClientFrame::Members { id, .. }
            | ClientFrame::Kick { id, .. }
            | ClientFrame::Ban { id, .. }
            | ClientFrame::Unban { id, .. }
            | ClientFrame::Mute { id, .. }
            | ClientFrame::Unmute { id, .. }
            | ClientFrame::SetRole { id, .. }
            | ClientFrame::Topic { id, .. }
            | ClientFrame::SlowMode { id, .. } => *id,
            ClientFrame::Read { id, .. } => *id,
            ClientFrame::Typing { .. } => None,
        }
    }
}

/// The `hello` frame: first frame of every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HelloRequest {
    /// Request id echoed in the `welcome` or `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<RequestId>,
    /// [`PROTOCOL_VERSION`] (2), or the deprecated [`PROTOCOL_VERSION_1`].
    pub version: u32,
    /// The user name (anonymous mode) or the name to authenticate as (host mode).
    pub name: String,
    /// Anonymous mode: the token from an earlier `welcome`, proving this is the same
    /// user (another tab, a reconnect). Host mode: the credentials for the identity hook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Rooms to join right away, with resume cursors. When absent, the server's default
    /// rooms are joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<JoinSpec>>,
}

/// The `join` frame: join a room (created on first join), or resume it from `since`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// Request id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<RequestId>,
    /// Room name, or `@a,b` for a direct-message room.
    pub room: String,
    /// Last seq this client has seen; the reply then holds exactly the later messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Seq>,
}

/// The `send` frame: post a message to a room (`room`) or to a user (`to`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// Request id, echoed in the `ack`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<RequestId>,
    /// Target room. Exactly one of `room` and `to` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// Target user for a direct message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Message text.
    pub body: String,
    /// Client-chosen id making the send idempotent: a resend is acked with the
    /// original seq and not posted twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<ClientMsgId>,
    /// The seq of the message (of the same room) this one answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<Seq>,
}

/// The `edit` frame: a new body for one of the user's own messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditRequest {
    /// Request id, echoed in the `ack`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<RequestId>,
    /// Room name (for a direct room, `@a,b`).
    pub room: String,
    /// The message's seq.
    pub seq: Seq,
    /// The new text.
    pub body: String,
    /// Makes the edit idempotent, as for `send`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<ClientMsgId>,
}

/// The `delete` frame: delete a message, leaving a tombstone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteRequest {
    /// Request id, echoed in the `ack`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<RequestId>,
    /// Room name.
    pub room: String,
    /// The message's seq.
    pub seq: Seq,
    /// Makes the delete idempotent, as for `send`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<ClientMsgId>,
}

/// The `react` frame: add or remove this user's reaction with one emoji.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReactRequest {
    /// Request id, echoed in the `ack`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<RequestId>,
    /// Room name.
    pub room: String,
    /// The message's seq.
    pub seq: Seq,
    /// One emoji (one grapheme, at most [`MAX_EMOJI_BYTES`] bytes).
    pub emoji: String,
    /// True to add the reaction, false to take it back.
    pub on: bool,
    /// Makes the reaction idempotent, as for `send`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<ClientMsgId>,
}

/// Longest emoji of a reaction, in bytes of UTF-8.
pub const MAX_EMOJI_BYTES: usize = 32;

/// The `history` frame: a page of history, newest `limit` messages before `before`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryRequest {
    /// Request id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<RequestId>,
    /// Room name.
    pub room: String,
    /// Only messages with a smaller seq; the latest when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Seq>,
    /// Page size (default 50, at most the server's `history_page_max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// A room to join in `hello`, optionally resuming from a seq.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinSpec {
    /// Room name.
    pub room: String,
    /// Last seen seq, as in `join`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Seq>,
}

/// A frame sent by the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ServerFrame {
    /// Reply to `hello`.
    Welcome {
        /// The hello's request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Protocol version in use.
        version: u32,
        /// This connection's session id.
        session: SessionId,
        /// The user name as the server normalized it.
        user: UserName,
        /// Anonymous mode: keep this and send it in later `hello`s to be the same user.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// History epoch: when it changes between connections, seqs were reset.
        epoch: String,
        /// The server's limits.
        limits: Limits,
    },
    /// Reply to `join` (and to rooms joined by `hello`): who is here and the recent
    /// messages (or, with `since`, exactly the messages after it).
    Joined {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Room name, normalized.
        room: RoomName,
        /// Users in the room (version 2, above the presence threshold: the first page
        /// of them; `members` pages the rest).
        members: Vec<UserName>,
        /// Version 2: how many users are in the room (absent for a session that may
        /// not see presence).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        count: Option<usize>,
        /// Messages, oldest first.
        messages: Vec<Arc<Message>>,
        /// True when `since` asked for messages the server no longer holds in memory
        /// (or from another epoch): `messages` are then the latest ones, and older ones
        /// can be paged with `history`.
        gap: bool,
        /// The room's latest seq.
        last_seq: Seq,
        /// The room's topic, if it has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
        /// Slow mode: seconds between a member's messages, when on.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        slow_mode: Option<u32>,
        /// This user's role in the room, when above `member`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<Role>,
    },
    /// Reply to `leave`.
    Left {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Room name.
        room: RoomName,
    },
    /// A message posted to a room this session is in.
    Message(Arc<Message>),
    /// A change to a message of a room this session is in (an entry whose
    /// [`Message::kind`] is `edit`, `delete`, `react` or `erase`, with its own seq): apply it
    /// with [`Message::apply`]. The same object appears, with its `kind`, among the
    /// messages of `joined` and `history`.
    Change(Arc<Message>),
    /// This user's read marker in a room moved (sent to the user's other sessions).
    Read {
        /// Room name.
        room: RoomName,
        /// The last seq read.
        seq: Seq,
    },
    /// The sender's confirmation of a `send`.
    Ack {
        /// Request id of the send.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The room (for a direct message, the canonical `@a,b` room).
        room: RoomName,
        /// The message's seq.
        seq: Seq,
        /// The message's server timestamp.
        #[serde(with = "ts_millis")]
        ts: DateTime<Utc>,
        /// The send's client id, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<ClientMsgId>,
        /// True when this client id was already posted: nothing new was posted.
        duplicate: bool,
    },
    /// Reply to `history`.
    History {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Room name.
        room: RoomName,
        /// Messages, oldest first.
        messages: Vec<Arc<Message>>,
        /// Whether older messages exist.
        has_more: bool,
        /// True when older messages existed but the server no longer keeps them (the
        /// room's retention pruned them, or, without a store, they left the in-memory
        /// window): `has_more` is then false, and `first_seq` is the oldest seq still
        /// kept. Absent (false) otherwise.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        gap: bool,
        /// With `gap`: nothing below this seq can be paged any more.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        first_seq: Option<Seq>,
    },
    /// Reply to `rooms`.
    Rooms {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Public rooms, and this user's direct-message rooms.
        rooms: Vec<RoomInfo>,
    },
    /// Reply to `members`.
    Members {
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Room name.
        room: RoomName,
        /// Users in the room (a page of them, when paged).
        members: Vec<UserName>,
        /// Paged (version 2, or `after` / `limit` given): how many users are in the room.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        count: Option<usize>,
        /// Paged: whether users come after this page.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        more: Option<bool>,
    },
    /// Version 2: who came and went in a room over the last presence tick, sent once per
    /// tick. At or below the room's presence threshold, `joins` and `leaves` (applied to
    /// the list of `joined`, in either order: no user is in both); above it, only
    /// `count`. When a room falls back to the threshold after being above it,
    /// `members` holds the whole list instead of a diff.
    Presence {
        /// Room name.
        room: RoomName,
        /// Users now present who were not at the last tick.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        joins: Option<Vec<UserName>>,
        /// Users present at the last tick who are gone.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        leaves: Option<Vec<UserName>>,
        /// The whole list, replacing the one the client holds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        members: Option<Vec<UserName>>,
        /// How many users are in the room.
        count: usize,
    },
    /// A user's first session joined a room (version 1).
    UserJoined {
        /// Room name.
        room: RoomName,
        /// Who joined.
        user: UserName,
        /// When.
        #[serde(with = "ts_millis")]
        ts: DateTime<Utc>,
    },
    /// A user's last session left a room (or disconnected and did not come back within
    /// the grace period) (version 1).
    UserLeft {
        /// Room name.
        room: RoomName,
        /// Who left.
        user: UserName,
        /// When.
        #[serde(with = "ts_millis")]
        ts: DateTime<Utc>,
    },
    /// Someone started or stopped typing. `active: true` expires by itself after
    /// `limits.typing_expiry_ms` unless renewed; the server also clears it.
    Typing {
        /// Room name.
        room: RoomName,
        /// Who.
        user: UserName,
        /// Whether they are typing.
        active: bool,
    },
    /// A command was rejected.
    Error {
        /// Request id of the rejected command, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Stable machine-readable code.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
    },
    /// The server is going away (shutdown or restart). Reconnect after `retry_after_ms`.
    Goodbye {
        /// Why.
        reason: String,
        /// Suggested delay before reconnecting.
        retry_after_ms: u64,
    },
    /// The host moderated a user in a room this session is in (the user's own sessions
    /// included, before a kick or ban takes them out with `left`).
    Moderated {
        /// The room.
        room: RoomName,
        /// The user concerned.
        user: UserName,
        /// What was done.
        action: ModAction,
        /// Why, when the host said.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// A ban's or mute's length in minutes (rounded up); absent: for good.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        minutes: Option<u64>,
        /// `set_role`: the user's new role.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<Role>,
        /// The moderator who did it; absent: the host.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<UserName>,
    },
    /// A moderator's command was carried out (sent to the moderator's session, after
    /// the room's `moderated`, `topic` or `slow_mode`).
    Done {
        /// The command's request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The room.
        room: RoomName,
        /// What was done.
        action: ModAction,
        /// The user concerned, for a command about a user.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<UserName>,
    },
    /// A room's topic changed (sent to the room's sessions).
    Topic {
        /// The room.
        room: RoomName,
        /// The new topic; empty: none.
        topic: String,
        /// The moderator who set it; absent: the host.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<UserName>,
    },
    /// A room's slow mode changed (sent to the room's sessions).
    SlowMode {
        /// The room.
        room: RoomName,
        /// Seconds between a member's messages; 0: off.
        seconds: u32,
        /// The moderator who set it; absent: the host.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<UserName>,
    },
}

/// What a moderator did ([`ServerFrame::Moderated`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ModAction {
    /// Out of the room now; may join again.
    Kick,
    /// Out of the room, and kept out (of its messages and member list too) for
    /// `minutes` or for good.
    Ban,
    /// Reads, cannot post.
    Mute,
    /// May post again.
    Unmute,
    /// May come back.
    Unban,
    /// Has a new role in the room.
    SetRole,
    /// The room's topic was set.
    Topic,
    /// The room's slow mode was set.
    SlowMode,
}

/// An entry of a room's log, as stored and delivered: a chat message (in its current
/// state: after its edits, a tombstone once deleted, with its reactions), or a change to
/// one (`kind` `edit`, `delete` or `react`, naming its `target`). Every entry has its own
/// seq in the room's one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Room (for direct messages, `@a,b`).
    pub room: RoomName,
    /// Sequence number within the room.
    pub seq: Seq,
    /// Server timestamp (UTC, RFC 3339 with milliseconds).
    #[serde(with = "ts_millis")]
    pub ts: DateTime<Utc>,
    /// Author (of a change: who made it).
    pub user: UserName,
    /// Text; of an `edit`, the new text. Empty, and absent on the wire, for a deleted
    /// message, a `delete` and a `react`.
    #[serde(default, skip_serializing_if = "is_empty")]
    pub body: Arc<str>,
    /// What the entry is; absent on the wire for a message.
    #[serde(default, skip_serializing_if = "EntryKind::is_message")]
    pub kind: EntryKind,
    /// A change: the seq of the message it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Seq>,
    /// A `react`: the emoji.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    /// A `react`: true when the reaction was added, false when taken back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<bool>,
    /// A message: the seq of the message it answers (which may since be deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<Seq>,
    /// A message: when it was last edited.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "ts_millis_opt"
    )]
    pub edited_at: Option<DateTime<Utc>>,
    /// A message: deleted. A tombstone keeps its seq, time and author, and loses its
    /// body and reactions.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// A message: its reactions, each emoji (in first-reaction order) with who reacted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<Reaction>,
    /// A message: the seq of the last change applied to it. A change whose seq is not
    /// above it is already part of this state (see [`Message::apply`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rev: Option<Seq>,
    /// The author's client id for this message, if it sent one. On the wire only to the
    /// author's own sessions (see [`Message::seen_by`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<ClientMsgId>,
}

fn is_empty(s: &Arc<str>) -> bool {
    s.is_empty()
}

/// What a log entry is ([`Message::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EntryKind {
    /// A chat message.
    #[default]
    Message,
    /// A new body for `target`.
    Edit,
    /// `target` is deleted.
    Delete,
    /// `user` added (`on`) or took back a reaction with `emoji` to `target`.
    React,
    /// The host erased `user` (the right to be forgotten): every message of the user
    /// in the room is a tombstone from here on, and the user's reactions are gone. It
    /// has no `target`: it applies to every message of the room ([`Message::apply`]).
    Erase,
}

impl EntryKind {
    /// Whether this is a chat message rather than a change to one.
    #[must_use]
    pub fn is_message(&self) -> bool {
        *self == EntryKind::Message
    }

    /// The kind as stored and on the wire.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Message => "message",
            EntryKind::Edit => "edit",
            EntryKind::Delete => "delete",
            EntryKind::React => "react",
            EntryKind::Erase => "erase",
        }
    }

    /// The kind named by [`as_str`](Self::as_str).
    #[must_use]
    pub fn parse(s: &str) -> Option<EntryKind> {
        Some(match s {
            "message" => EntryKind::Message,
            "edit" => EntryKind::Edit,
            "delete" => EntryKind::Delete,
            "react" => EntryKind::React,
            "erase" => EntryKind::Erase,
            _ => return None,
        })
    }
}

/// One emoji's reactions to a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reaction {
    /// The emoji.
    pub emoji: String,
    /// Who reacted with it, in the order they did.
    pub users: Vec<UserName>,
}

impl Message {
    /// A plain message: no reply, never edited, no reactions.
    #[must_use]
    pub fn new(
        room: RoomName,
        seq: Seq,
        ts: DateTime<Utc>,
        user: UserName,
        body: Arc<str>,
        client_id: Option<ClientMsgId>,
    ) -> Message {
        Message {
            room,
            seq,
            ts,
            user,
            body,
            kind: EntryKind::Message,
            target: None,
            emoji: None,
            on: None,
            reply_to: None,
            edited_at: None,
            deleted: false,
            reactions: Vec::new(),
            rev: None,
            client_id,
        }
    }

    /// Whether the entry is a message with nothing but room, seq, time, author, body
    /// and client id (most are).
    #[must_use]
    pub fn is_plain(&self) -> bool {
        self.kind.is_message()
            && self.target.is_none()
            && self.emoji.is_none()
            && self.on.is_none()
            && self.reply_to.is_none()
            && self.edited_at.is_none()
            && !self.deleted
            && self.reactions.is_empty()
            && self.rev.is_none()
            && !self.body.is_empty()
    }

    /// The message as the user `reader` is sent it: with its `client_id` only if
    /// `reader` is its author (every other user gets it without).
    #[must_use]
    pub fn seen_by(self: &Arc<Message>, reader: &UserKey) -> Arc<Message> {
        if self.client_id.is_none() || self.user.key() == *reader {
            return self.clone();
        }
        Arc::new(Message {
            client_id: None,
            ..(**self).clone()
        })
    }

    /// Applies the change entry `change` to this message (its `target`), as the server
    /// does and as a client holding the message should. Returns whether anything
    /// changed. A change already part of this state (its seq not above [`rev`](Self::rev))
    /// changes nothing, so applying the same entries again, or a message received in its
    /// current state followed by the changes it already has, ends in the same state.
    /// A deleted message stays deleted: an edit or reaction after the delete changes
    /// nothing but `rev`.
    ///
    /// An `erase` has no target: it applies to every message of its room before it. A
    /// message of the erased user becomes a tombstone, and the user's reactions leave
    /// every other message; a message it does not touch is not changed (not even its
    /// `rev`).
    pub fn apply(&mut self, change: &Message) -> bool {
        if change.kind == EntryKind::Erase {
            return self.erase(change);
        }
        if change.target != Some(self.seq)
            || !self.kind.is_message()
            || self.rev.is_some_and(|rev| change.seq <= rev)
        {
            return false;
        }
        self.rev = Some(change.seq);
        if self.deleted {
            return true;
        }
        match change.kind {
            EntryKind::Message | EntryKind::Erase => return false,
            EntryKind::Edit => {
                self.body = change.body.clone();
                self.edited_at = Some(change.ts);
            }
            EntryKind::Delete => {
                self.deleted = true;
                self.body = Arc::from("");
                self.edited_at = None;
                self.reactions = Vec::new();
            }
            EntryKind::React => {
                let Some(emoji) = change.emoji.as_deref() else {
                    return true;
                };
                let who = change.user.key();
                let at = self.reactions.iter().position(|r| r.emoji == emoji);
                match (change.on.unwrap_or(true), at) {
                    (true, Some(i)) => {
                        let users = &mut self.reactions[i].users;
                        if !users.iter().any(|u| u.key() == who) {
                            users.push(change.user.clone());
                        }
                    }
                    (true, None) => self.reactions.push(Reaction {
                        emoji: emoji.to_owned(),
                        users: vec![change.user.clone()],
                    }),
                    (false, Some(i)) => {
                        self.reactions[i].users.retain(|u| u.key() != who);
                        if self.reactions[i].users.is_empty() {
                            self.reactions.remove(i);
                        }
                    }
                    (false, None) => {}
                }
            }
        }
        true
    }
}

impl Message {
    /// [`Message::apply`] for an `erase` entry.
    fn erase(&mut self, change: &Message) -> bool {
        if !self.kind.is_message()
            || change.seq <= self.seq
            || self.rev.is_some_and(|rev| change.seq <= rev)
        {
            return false;
        }
        let who = change.user.key();
        let mine = self.user.key() == who;
        let reacted = self
            .reactions
            .iter()
            .any(|r| r.users.iter().any(|u| u.key() == who));
        let tombstone = mine && !self.deleted;
        if !tombstone && !reacted {
            return false;
        }
        self.rev = Some(change.seq);
        if mine {
            self.deleted = true;
            self.body = Arc::from("");
            self.edited_at = None;
            self.reactions = Vec::new();
        } else {
            for r in &mut self.reactions {
                r.users.retain(|u| u.key() != who);
            }
            self.reactions.retain(|r| !r.users.is_empty());
        }
        true
    }
}

/// A room in the `rooms` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInfo {
    /// Room name.
    pub name: RoomName,
    /// Number of users in it.
    pub members: usize,
    /// Whether it is a direct-message room.
    pub direct: bool,
    /// Its latest seq.
    pub last_seq: Seq,
    /// Its topic, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Messages after this user's read marker, not counting the user's own, deleted
    /// ones or change entries (of the messages the server holds in memory). Absent
    /// when none, or when the room is not in memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unread: Option<u64>,
}

/// The server limits announced in `welcome`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Longest user name, in characters.
    pub max_name_chars: usize,
    /// Longest room name, in characters.
    pub max_room_chars: usize,
    /// Largest message body, in bytes of UTF-8.
    pub max_body_bytes: usize,
    /// Largest WebSocket frame the server accepts, in bytes.
    pub max_frame_bytes: usize,
    /// Most rooms one session can be in.
    pub max_rooms_per_session: usize,
    /// Largest history page.
    pub history_page_max: usize,
    /// Sends allowed in a burst.
    pub send_burst: u32,
    /// Sustained sends per second.
    pub sends_per_second: u32,
    /// Typing indicators expire after this long unless renewed.
    pub typing_expiry_ms: u64,
}

/// Stable error codes in `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame is not valid JSON or not a known command with the right fields.
    BadFrame,
    /// The hello's protocol version is not supported.
    UnsupportedVersion,
    /// A command other than `hello` came before `hello`.
    HelloRequired,
    /// A second `hello` on the same connection.
    AlreadyWelcomed,
    /// The user name is not valid.
    InvalidName,
    /// The name is in use by someone else.
    NameTaken,
    /// The identity hook refused the credentials.
    AuthFailed,
    /// The room name is not valid.
    InvalidRoom,
    /// The room does not exist (and rooms are not created on join).
    RoomNotFound,
    /// This session is not in that room.
    NotMember,
    /// This session is in as many rooms as allowed.
    TooManyRooms,
    /// A server-wide limit was reached (e.g. the number of rooms).
    LimitReached,
    /// The body is empty or only whitespace.
    InvalidBody,
    /// The body is larger than `max_body_bytes`.
    BodyTooLarge,
    /// Too many sends: wait and retry.
    RateLimited,
    /// The direct-message recipient is not known.
    UserNotFound,
    /// The request's fields do not make sense together.
    InvalidRequest,
    /// The message could not be stored; it was not posted. Retry later.
    StorageUnavailable,
    /// The server is shutting down.
    ShuttingDown,
    /// The user may not do this in this room (the host's rules: a private room, a
    /// read-only room, a policy).
    Forbidden,
    /// The host identity's credentials expired; the connection closes (4001).
    AuthExpired,
    /// The host revoked the user's access; the connection closes (4003).
    AuthRevoked,
    /// The room is in slow mode and this user posted less than its interval ago: the
    /// message says when they may send again.
    SlowMode,
    /// The message is someone else's (an edit, or a delete by a member).
    NotAuthor,
    /// The message is deleted.
    Gone,
    /// No message has that seq in the room (or it is a change entry, or it is older
    /// than the room's recent window).
    NoSuchMessage,
    /// The message is older than the server's edit window.
    EditWindowPassed,
    /// The reaction is not one emoji.
    InvalidEmoji,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::HelloRequired => "hello_required",
            ErrorCode::AlreadyWelcomed => "already_welcomed",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::NameTaken => "name_taken",
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::RoomNotFound => "room_not_found",
            ErrorCode::NotMember => "not_member",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::LimitReached => "limit_reached",
            ErrorCode::InvalidBody => "invalid_body",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::UserNotFound => "user_not_found",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::StorageUnavailable => "storage_unavailable",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::AuthExpired => "auth_expired",
            ErrorCode::AuthRevoked => "auth_revoked",
            ErrorCode::SlowMode => "slow_mode",
            ErrorCode::NotAuthor => "not_author",
            ErrorCode::Gone => "gone",
            ErrorCode::NoSuchMessage => "no_such_message",
            ErrorCode::EditWindowPassed => "edit_window_passed",
            ErrorCode::InvalidEmoji => "invalid_emoji",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a client frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad frame: {message}")]
pub struct DecodeError {
    /// What was wrong, for the error frame.
    pub message: String,
    /// The request id, when it could be read despite the error.
    pub id: Option<RequestId>,
}

/// Decodes one client frame. Never panics; hostile input gives a [`DecodeError`].
pub fn decode(bytes: &[u8]) -> Result<ClientFrame, DecodeError> {
    serde_json::from_slice(bytes).map_err(|e| {
        #[derive(Deserialize)]
        struct IdOnly {
            id: Option<RequestId>,
        }
        let id = serde_json::from_slice::<IdOnly>(bytes)
            .ok()
            .and_then(|x| x.id);
        DecodeError {
            message: e.to_string(),
            id,
        }
    })
}

/// A server frame serialized once, shared by every recipient (a cheap clone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    bytes: Bytes,
    ephemeral: bool,
}

impl Encoded {
    /// Serializes a frame. Ephemeral frames (typing) may be dropped under backpressure.
    #[must_use]
    pub fn new(frame: &ServerFrame) -> Encoded {
        let ephemeral = matches!(frame, ServerFrame::Typing { .. });
        // Room for a typical message frame, so the buffer is not regrown several times.
        let mut bytes = Vec::with_capacity(256);
        // Serializing these types cannot fail: no maps with non-string keys, no I/O.
        serde_json::to_writer(&mut bytes, frame).expect("server frames always serialize");
        Encoded {
            bytes: Bytes::from(bytes),
            ephemeral,
        }
    }

    /// The `message` frame of `msg` as every recipient but its author's own sessions
    /// gets it: without `client_id`, which only the author's sessions use (to match the
    /// message with their own send). See [`Encoded::message_for_author`].
    #[must_use]
    pub fn message(msg: &Arc<Message>) -> Encoded {
        if !msg.is_plain() {
            // An edited, replying, reacted or deleted message, or a change: rarer, and
            // with optional fields serde writes in their order.
            let lean = match msg.client_id {
                Some(_) => Arc::new(Message {
                    client_id: None,
                    ..(**msg).clone()
                }),
                None => msg.clone(),
            };
            return Encoded::new(&if lean.kind.is_message() {
                ServerFrame::Message(lean)
            } else {
                ServerFrame::Change(lean)
            });
        }
        // Written field by field rather than through serde's tagged-enum machinery (this
        // is every message's one encode); byte for byte what serde writes, less the
        // `client_id` (checked below and by the tests).
        let (room, user, body) = (msg.room.as_str(), msg.user.as_str(), &*msg.body);
        let mut out = Vec::with_capacity(96 + room.len() + user.len() + body.len());
        out.extend_from_slice(br#"{"type":"message","room":"#);
        serde_json::to_writer(&mut out, room).expect("a string always serializes");
        out.extend_from_slice(br#","seq":"#);
        out.extend_from_slice(itoa(msg.seq.0, &mut [0; 20]));
        out.extend_from_slice(br#","ts":"#);
        match ts_millis::write_fast(&msg.ts, &mut [0; 24]) {
            Some(ts) => {
                out.push(b'"');
                out.extend_from_slice(ts.as_bytes());
                out.push(b'"');
            }
            None => serde_json::to_writer(&mut out, &format_ts(&msg.ts))
                .expect("a string always serializes"),
        }
        out.extend_from_slice(br#","user":"#);
        serde_json::to_writer(&mut out, user).expect("a string always serializes");
        out.extend_from_slice(br#","body":"#);
        serde_json::to_writer(&mut out, body).expect("a string always serializes");
        out.push(b'}');
        debug_assert_eq!(
            out,
            serde_json::to_vec(&ServerFrame::Message(Arc::new(Message {
                client_id: None,
                ..(**msg).clone()
            })))
            .expect("serializes")
        );
        Encoded {
            bytes: Bytes::from(out),
            ephemeral: false,
        }
    }

    /// The `ack` of a send, written field by field as [`Encoded::message`] is (every
    /// send has one); byte for byte what serde writes for [`ServerFrame::Ack`] (checked
    /// below and by the tests).
    #[must_use]
    pub fn ack(id: Option<RequestId>, msg: &Message, duplicate: bool) -> Encoded {
        let room = msg.room.as_str();
        let cid = msg.client_id.as_ref().map(ClientMsgId::as_str);
        let mut out = Vec::with_capacity(100 + room.len() + cid.map_or(0, str::len));
        out.extend_from_slice(br#"{"type":"ack""#);
        if let Some(id) = id {
            out.extend_from_slice(br#","id":"#);
            out.extend_from_slice(itoa(id.0, &mut [0; 20]));
        }
        out.extend_from_slice(br#","room":"#);
        serde_json::to_writer(&mut out, room).expect("a string always serializes");
        out.extend_from_slice(br#","seq":"#);
        out.extend_from_slice(itoa(msg.seq.0, &mut [0; 20]));
        out.extend_from_slice(br#","ts":"#);
        match ts_millis::write_fast(&msg.ts, &mut [0; 24]) {
            Some(ts) => {
                out.push(b'"');
                out.extend_from_slice(ts.as_bytes());
                out.push(b'"');
            }
            None => serde_json::to_writer(&mut out, &format_ts(&msg.ts))
                .expect("a string always serializes"),
        }
        if let Some(cid) = cid {
            out.extend_from_slice(br#","client_id":"#);
            serde_json::to_writer(&mut out, cid).expect("a string always serializes");
        }
        out.extend_from_slice(if duplicate {
            br#","duplicate":true}"#
        } else {
            br#","duplicate":false}"#
        });
        debug_assert_eq!(
            out,
            serde_json::to_vec(&ServerFrame::Ack {
                id,
                room: msg.room.clone(),
                seq: msg.seq,
                ts: msg.ts,
                client_id: msg.client_id.clone(),
                duplicate,
            })
            .expect("serializes")
        );
        Encoded {
            bytes: Bytes::from(out),
            ephemeral: false,
        }
    }

    /// The `message` frame for the author's own sessions, from the frame of
    /// [`Encoded::message`]: the same with the author's `client_id` as its last field.
    /// Byte for byte what [`Encoded::new`] writes for the message.
    #[must_use]
    pub fn message_for_author(lean: &Encoded, client_id: &ClientMsgId) -> Encoded {
        let mut out = Vec::with_capacity(lean.bytes.len() + 16 + client_id.as_str().len());
        push_with_client_id(&mut out, &lean.bytes, client_id);
        Encoded {
            bytes: Bytes::from(out),
            ephemeral: false,
        }
    }

    /// A `joined` frame assembled from parts already in JSON, byte for byte what
    /// [`Encoded::new`] writes for the same [`ServerFrame::Joined`] with each message as
    /// [`Message::seen_by`] the `reader`: `members_json` is the member list as a JSON
    /// array, and each message comes with its frame from [`Encoded::message`], whose
    /// fields are copied rather than serialized again. A join then costs a copy of the
    /// member list instead of serializing every name.
    #[allow(clippy::too_many_arguments)] // one frame's every field
    pub(crate) fn joined<'a>(
        id: Option<RequestId>,
        room: &RoomName,
        members_json: &[u8],
        count: Option<usize>,
        messages: impl Iterator<Item = (&'a Arc<Message>, &'a Encoded)> + Clone,
        gap: bool,
        last_seq: Seq,
        reader: &UserKey,
        extras: &JoinedExtras,
    ) -> Encoded {
        // A `message` frame is the message's object with the tag in front.
        const MESSAGE_TAG: &[u8] = br#"{"type":"message","#;
        let messages_len: usize = messages.clone().map(|(_, f)| f.bytes.len()).sum();
        let mut out =
            Vec::with_capacity(96 + 2 * room.as_str().len() + members_json.len() + messages_len);
        out.extend_from_slice(br#"{"type":"joined""#);
        if let Some(id) = id {
            out.extend_from_slice(br#","id":"#);
            out.extend_from_slice(itoa(id.0, &mut [0; 20]));
        }
        out.extend_from_slice(br#","room":"#);
        serde_json::to_writer(&mut out, room.as_str()).expect("a string always serializes");
        out.extend_from_slice(br#","members":"#);
        out.extend_from_slice(members_json);
        if let Some(count) = count {
            out.extend_from_slice(br#","count":"#);
            out.extend_from_slice(itoa(count as u64, &mut [0; 20]));
        }
        out.extend_from_slice(br#","messages":["#);
        for (i, (msg, frame)) in messages.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let author_id = msg.client_id.as_ref().filter(|_| msg.user.key() == *reader);
            match (frame.bytes.strip_prefix(MESSAGE_TAG), author_id) {
                (Some(fields), None) => {
                    out.push(b'{');
                    out.extend_from_slice(fields);
                }
                (Some(fields), Some(cid)) => {
                    out.push(b'{');
                    push_with_client_id(&mut out, fields, cid);
                }
                (None, _) => serde_json::to_writer(&mut out, &*msg.seen_by(reader))
                    .expect("server frames always serialize"),
            }
        }
        out.extend_from_slice(if gap {
            br#"],"gap":true,"last_seq":"#
        } else {
            br#"],"gap":false,"last_seq":"#
        });
        out.extend_from_slice(itoa(last_seq.0, &mut [0; 20]));
        if let Some(topic) = &extras.topic {
            out.extend_from_slice(br#","topic":"#);
            serde_json::to_writer(&mut out, topic).expect("a string always serializes");
        }
        if let Some(seconds) = extras.slow_mode {
            out.extend_from_slice(br#","slow_mode":"#);
            out.extend_from_slice(itoa(u64::from(seconds), &mut [0; 20]));
        }
        if let Some(role) = extras.role {
            out.extend_from_slice(br#","role":""#);
            out.extend_from_slice(role.as_str().as_bytes());
            out.push(b'"');
        }
        out.push(b'}');
        Encoded {
            bytes: Bytes::from(out),
            ephemeral: false,
        }
    }

    /// The JSON text, as bytes (always valid UTF-8).
    #[must_use]
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The JSON text.
    #[must_use]
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.bytes).expect("encoded frames are JSON text")
    }

    /// Whether dropping this frame under backpressure loses nothing durable (typing).
    #[must_use]
    pub fn is_ephemeral(&self) -> bool {
        self.ephemeral
    }

    /// Decodes the frame back (for clients and tests).
    pub fn decode(&self) -> Result<ServerFrame, serde_json::Error> {
        serde_json::from_slice(&self.bytes)
    }
}

/// The optional last fields of a `joined` frame: the room's settings and the reader's
/// role, as [`ServerFrame::Joined`] has them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct JoinedExtras {
    pub topic: Option<String>,
    pub slow_mode: Option<u32>,
    pub role: Option<Role>,
}

/// How `client_id` starts as a message's last field.
const CLIENT_ID_KEY: &[u8] = br#","client_id":"#;

/// Appends `object` (a JSON object's text) with `client_id` added as its last field.
fn push_with_client_id(out: &mut Vec<u8>, object: &[u8], client_id: &ClientMsgId) {
    let open = object.strip_suffix(b"}").expect("a JSON object");
    out.extend_from_slice(open);
    out.extend_from_slice(CLIENT_ID_KEY);
    serde_json::to_writer(&mut *out, client_id.as_str()).expect("a string always serializes");
    out.push(b'}');
}

/// The decimal digits of `n`, as serde_json writes an integer.
fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// Timestamps on the wire: RFC 3339, UTC, millisecond precision (`2026-01-02T03:04:05.678Z`).
pub mod ts_millis {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes as RFC 3339 with milliseconds and `Z`.
    pub fn serialize<S: Serializer>(ts: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0; 24];
        match write_fast(ts, &mut buf) {
            Some(text) => s.serialize_str(text),
            None => s.collect_str(&ts.to_rfc3339_opts(SecondsFormat::Millis, true)),
        }
    }

    /// The same text as `to_rfc3339_opts(Millis, true)` without the `fmt` machinery (every
    /// message and ack carries a timestamp), for years 0–9999 outside leap seconds;
    /// `None` otherwise.
    pub(crate) fn write_fast<'a>(ts: &DateTime<Utc>, buf: &'a mut [u8; 24]) -> Option<&'a str> {
        use chrono::{Datelike, Timelike};
        // One conversion to the naive UTC date and time: each accessor of a
        // `DateTime<Utc>` converts again.
        let naive = ts.naive_utc();
        let (date, time) = (naive.date(), naive.time());
        let year = u32::try_from(date.year()).ok().filter(|y| *y <= 9999)?;
        let nanos = time.nanosecond();
        if nanos >= 1_000_000_000 {
            return None; // a leap second: let chrono spell it
        }
        let two = |buf: &mut [u8; 24], at: usize, v: u32| {
            buf[at] = b'0' + (v / 10) as u8;
            buf[at + 1] = b'0' + (v % 10) as u8;
        };
        let secs = time.num_seconds_from_midnight();
        two(buf, 0, year / 100);
        two(buf, 2, year % 100);
        buf[4] = b'-';
        two(buf, 5, date.month());
        buf[7] = b'-';
        two(buf, 8, date.day());
        buf[10] = b'T';
        two(buf, 11, secs / 3600);
        buf[13] = b':';
        two(buf, 14, secs / 60 % 60);
        buf[16] = b':';
        two(buf, 17, secs % 60);
        buf[19] = b'.';
        let millis = nanos / 1_000_000;
        buf[20] = b'0' + (millis / 100) as u8;
        two(buf, 21, millis % 100);
        buf[23] = b'Z';
        std::str::from_utf8(buf).ok()
    }

    /// Parses any RFC 3339 timestamp.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

/// Optional timestamps on the wire, as [`ts_millis`].
mod ts_millis_opt {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ts: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match ts {
            Some(ts) => super::ts_millis::serialize(ts, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super::ts_millis")] DateTime<Utc>);
        Ok(Option::<Wrap>::deserialize(d)?.map(|Wrap(ts)| ts))
    }
}

/// Formats a timestamp the way the protocol does.
#[must_use]
pub fn format_ts(ts: &DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
    use std::sync::Arc;

    /// The hand-written `message` frames are exactly what serde writes: without the
    /// client id for everyone, with it for the author.
    #[test]
    fn message_frames_match_serde() {
        for (body, cid, ts) in [
            (
                "hello world",
                None,
                Utc.timestamp_opt(1_767_323_045, 42_000_000).unwrap(),
            ),
            (
                "quote \" and \\ and \u{1}",
                Some("c-1"),
                Utc.timestamp_opt(0, 0).unwrap(),
            ),
            (
                "☕ ünïcode",
                Some("ü\"x"),
                Utc.with_ymd_and_hms(12_345, 1, 1, 0, 0, 0).unwrap(),
            ),
        ] {
            let full = Arc::new(super::Message::new(
                crate::RoomName::parse("général", 64, 32).unwrap(),
                crate::Seq(1234),
                ts,
                crate::UserName::parse("Zoë", 32).unwrap(),
                body.into(),
                cid.map(Into::into),
            ));
            let lean = super::Encoded::message(&full);
            let without = super::Message {
                client_id: None,
                ..(*full).clone()
            };
            let serde =
                |m: super::Message| super::Encoded::new(&super::ServerFrame::Message(Arc::new(m)));
            assert_eq!(lean, serde(without));
            if let Some(cid) = &full.client_id {
                let mine = super::Encoded::message_for_author(&lean, cid);
                assert_eq!(mine, serde((*full).clone()));
            }
        }
    }

    /// The hand-written `ack` is exactly what serde writes, with and without a request
    /// id and a client id, for a duplicate or not, with any timestamp.
    #[test]
    fn ack_frames_match_serde() {
        for (id, cid, duplicate, ts) in [
            (
                Some(7),
                Some("c-1"),
                false,
                Utc.timestamp_opt(1_767_323_045, 42_000_000).unwrap(),
            ),
            (None, None, true, Utc.timestamp_opt(0, 0).unwrap()),
            (
                Some(u64::MAX),
                Some("ü\"x"),
                true,
                Utc.with_ymd_and_hms(12_345, 1, 1, 0, 0, 0).unwrap(),
            ),
        ] {
            let msg = super::Message::new(
                crate::RoomName::parse("général", 64, 32).unwrap(),
                crate::Seq(1234),
                ts,
                crate::UserName::parse("Zoë", 32).unwrap(),
                "hi".into(),
                cid.map(Into::into),
            );
            let id = id.map(crate::RequestId);
            let serde = super::Encoded::new(&super::ServerFrame::Ack {
                id,
                room: msg.room.clone(),
                seq: msg.seq,
                ts: msg.ts,
                client_id: msg.client_id.clone(),
                duplicate,
            });
            assert_eq!(super::Encoded::ack(id, &msg, duplicate), serde);
        }
    }

    #[test]
    fn fast_timestamps_match_chrono() {
        let mut cases: Vec<DateTime<Utc>> = vec![
            Utc.timestamp_opt(0, 0).unwrap(),
            Utc.timestamp_opt(1_767_323_045, 678_901_234).unwrap(),
            Utc.timestamp_opt(253_402_300_799, 999_999_999).unwrap(), // 9999-12-31T23:59:59.999
            Utc.with_ymd_and_hms(1, 2, 3, 4, 5, 6).unwrap(),
        ];
        // A spread of instants over a few centuries, with sub-millisecond parts.
        let mut t: i64 = -2_000_000_000;
        while t < 8_000_000_000 {
            let nanos = u32::try_from(t.rem_euclid(1_000_000_000)).unwrap();
            cases.push(Utc.timestamp_opt(t, nanos).unwrap());
            t += 7_777_777;
        }
        for ts in cases {
            let mut buf = [0; 24];
            let fast = super::ts_millis::write_fast(&ts, &mut buf).expect("in range");
            assert_eq!(fast, ts.to_rfc3339_opts(SecondsFormat::Millis, true));
        }
        let far = Utc.with_ymd_and_hms(12_345, 1, 1, 0, 0, 0).unwrap();
        assert!(super::ts_millis::write_fast(&far, &mut [0; 24]).is_none());
        let wire = serde_json::to_string(&super::ServerFrame::UserLeft {
            room: crate::RoomName::parse("r", 64, 32).unwrap(),
            user: crate::UserName::parse("u", 32).unwrap(),
            ts: far,
        })
        .unwrap();
        assert!(wire.contains(&far.to_rfc3339_opts(SecondsFormat::Millis, true)));
    }
}
