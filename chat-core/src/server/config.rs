//! Server configuration: who may connect, and every limit (the defaults of docs/ARCHITECTURE.md).

use std::time::Duration;

use super::authz::{RoomAccess, SharedPolicy};
use super::limits::Rate;
use crate::protocol::Limits;

/// How users prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AuthMode {
    /// Anyone may take a free name, as in the original app. A name belongs to whoever took
    /// it while one of its sessions is online or in its grace period; further sessions of
    /// that user prove it with the token from `welcome`.
    #[default]
    Anonymous,
    /// The host app decides: every `hello` becomes [`Output::Authenticate`](super::Output::Authenticate) and waits for
    /// [`Input::Authenticated`](super::Input::Authenticated).
    Host,
}

/// Server configuration. [`Config::default`] has the defaults listed in docs/PROTOCOL.md (limits).
#[derive(Debug, Clone)]
pub struct Config {
    /// How users are identified.
    pub auth: AuthMode,
    /// Rooms joined on `hello` when the client names none.
    pub default_rooms: Vec<String>,
    /// Whether `join` creates a room that does not exist.
    pub create_rooms_on_join: bool,
    /// Most rooms held in memory at once. In durable mode a room that has gone idle
    /// leaves memory (see [`room_idle_unload`](Self::room_idle_unload)) and does not
    /// count; when the limit is reached, an idle room is unloaded at once to make space.
    pub max_rooms: usize,
    /// Durable mode: a room with no member present (none joined, none in the presence
    /// grace period) and nothing waiting for the store leaves memory after this long
    /// without a post or a join. Its history is in the store; it is loaded again when
    /// something needs it. Without a store a room's window is its history, and a room
    /// with messages stays in memory.
    pub room_idle_unload: Duration,
    /// Longest user name, in characters.
    pub max_name_chars: usize,
    /// Longest room name, in characters.
    pub max_room_chars: usize,
    /// Largest body, in bytes.
    pub max_body_bytes: usize,
    /// Largest WebSocket frame (enforced by the adapter; announced in `welcome`).
    pub max_frame_bytes: usize,
    /// Most rooms per session.
    pub max_rooms_per_session: usize,
    /// Messages kept in memory per room.
    pub history_window: usize,
    /// How long after posting a message its author may edit it (15 minutes).
    pub edit_window: Duration,
    /// Most distinct emoji in the reactions to one message (20).
    pub max_reactions_per_message: usize,
    /// Messages sent with `joined`.
    pub history_on_join: usize,
    /// Default history page.
    pub history_page_default: usize,
    /// Largest history page.
    pub history_page_max: usize,
    /// How long a disconnected user stays present (and keeps the name) before "left".
    pub presence_grace: Duration,
    /// Version 2: joins and leaves in a room are gathered for this long and sent as one
    /// `presence` frame (per room, per tick).
    pub presence_tick: Duration,
    /// Version 2: above this many users in a room, members get counts instead of who
    /// came and went, and `joined` lists only the first page of members (`members`
    /// pages the rest).
    pub presence_threshold: usize,
    /// Version 2: above [`Config::presence_threshold`], the count goes out at most this
    /// often (a busy room's members need its size, not twenty updates a second of it):
    /// joins and leaves are gathered for this long instead of
    /// [`Config::presence_tick`]. Default 1 s.
    pub presence_count_tick: Duration,
    /// How long a typing indicator lasts unless renewed.
    pub typing_expiry: Duration,
    /// Typing frames accepted per session (excess is dropped silently).
    pub typing_rate: Rate,
    /// Message sends per session.
    pub send_rate: Rate,
    /// All frames per session; beyond it the connection is closed as a flood.
    pub frame_rate: Rate,
    /// Rejections (rate limited ×1, bad frame ×2, each accepted command −1) before the
    /// connection is closed.
    pub max_strikes: u32,
    /// How long a congested session gets no ephemeral events.
    pub congestion_backoff: Duration,
    /// When true every message goes through [`Output::Persist`](super::Output::Persist) and is delivered and
    /// acked only after [`Input::Persisted`](super::Input::Persisted).
    pub durable: bool,
    /// Cluster mode (docs/CLUSTER.md): a room's seqs come from a log several servers
    /// share. A post becomes [`Output::Append`](super::Output::Append) and is delivered
    /// and acked once the log's entries arrive in seq order
    /// ([`Input::Appended`](super::Input::Appended), [`Input::RoomLog`](super::Input::RoomLog)).
    /// History older than the window is read from the log
    /// ([`Output::LoadHistory`](super::Output::LoadHistory)). Not with `durable`.
    pub cluster: bool,
    /// Cluster mode: this server's id among the servers (the runtime draws it at
    /// random), mixed into anonymous-mode tokens so that two servers never hand out the
    /// same token for the same name.
    pub node: u64,
    /// History epoch announced in `welcome`; a new epoch tells clients seqs restarted.
    pub epoch: String,
    /// Secret for anonymous-mode tokens. The runtime fills it with random bytes.
    pub secret: [u8; 32],
    /// Reconnect delay suggested in `goodbye` on shutdown.
    pub shutdown_retry_after: Duration,
    /// Public rooms' access rules by room name (private, read-only; see
    /// [`RoomAccess`]); a room not named is open. Changed at run time with
    /// [`Server::set_room_access`](super::Server::set_room_access).
    pub rooms: Vec<(String, RoomAccess)>,
    /// The host's rule for public rooms' permissions, asked after the rooms' own rules
    /// (see [`RoomPolicy`](super::RoomPolicy)).
    pub room_policy: Option<SharedPolicy>,
    /// Durable and cluster mode: how long messages are kept in rooms that have no
    /// policy of their own (`Hub::set_retention`). `None` (the default) keeps
    /// everything (in cluster mode the stream's window cap still holds). The store's
    /// writer enforces it in the background, or in cluster mode the broker's sweeper;
    /// see [`Retention`]. In a cluster it is each server's default: give every server
    /// the same one (whichever server sweeps a period applies its own).
    pub retention: Option<Retention>,
}

/// How much of a room's history is kept (durable mode: the store; cluster mode: the
/// shared log): messages older than `max_age`, and all but the newest `max_count`
/// entries, are deleted in the background (by the store's writer, in small batches
/// between its commits; in cluster mode by one server's sweeper per period, a bounded
/// step per room at a time). A `None` limit does not apply; a policy with neither keeps
/// everything.
///
/// What was pruned is gone for good: a resume or a history page that reaches below the
/// oldest kept seq gets the protocol's explicit gap (docs/PROTOCOL.md, "Retention"),
/// never a silent hole. A room's newest entry is always kept, so its seq carries on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Delete entries older than this.
    pub max_age: Option<Duration>,
    /// Keep at most this many of the newest entries (messages and changes alike).
    pub max_count: Option<u64>,
}

impl Retention {
    /// Whether the policy keeps everything.
    #[must_use]
    pub fn keeps_all(&self) -> bool {
        self.max_age.is_none() && self.max_count.is_none()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            auth: AuthMode::Anonymous,
            default_rooms: vec!["general".to_owned()],
            create_rooms_on_join: true,
            max_rooms: 10_000,
            room_idle_unload: Duration::from_secs(60),
            max_name_chars: 32,
            max_room_chars: 64,
            max_body_bytes: 4096,
            max_frame_bytes: 64 * 1024,
            max_rooms_per_session: 100,
            history_window: 1000,
            edit_window: Duration::from_secs(15 * 60),
            max_reactions_per_message: 20,
            history_on_join: 50,
            history_page_default: 50,
            history_page_max: 1000,
            presence_grace: Duration::from_secs(5),
            presence_tick: Duration::from_millis(50),
            presence_threshold: 200,
            presence_count_tick: Duration::from_secs(1),
            typing_expiry: Duration::from_secs(6),
            typing_rate: Rate {
                burst: 4,
                per_second: 1,
            },
            send_rate: Rate {
                burst: 10,
                per_second: 5,
            },
            frame_rate: Rate {
                burst: 200,
                per_second: 50,
            },
            max_strikes: 20,
            congestion_backoff: Duration::from_secs(10),
            durable: false,
            cluster: false,
            node: 0,
            epoch: "0".to_owned(),
            secret: [0; 32],
            shutdown_retry_after: Duration::from_secs(2),
            rooms: Vec::new(),
            room_policy: None,
            retention: None,
        }
    }
}

impl Config {
    /// How long a room of `count` users gathers presence changes before its tick.
    #[must_use]
    pub(crate) fn presence_tick_for(&self, count: usize) -> Duration {
        if count > self.presence_threshold {
            self.presence_tick.max(self.presence_count_tick)
        } else {
            self.presence_tick
        }
    }

    /// The limits as announced to clients.
    #[must_use]
    pub fn limits(&self) -> Limits {
        Limits {
            max_name_chars: self.max_name_chars,
            max_room_chars: self.max_room_chars,
            max_body_bytes: self.max_body_bytes,
            max_frame_bytes: self.max_frame_bytes,
            max_rooms_per_session: self.max_rooms_per_session,
            history_page_max: self.history_page_max,
            send_burst: self.send_rate.burst,
            sends_per_second: self.send_rate.per_second,
            typing_expiry_ms: u64::try_from(self.typing_expiry.as_millis()).unwrap_or(u64::MAX),
        }
    }
}
