//! Sessions: one per connection, with its phase, rooms, rate limits and strikes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use super::authz::Identity;

use super::config::Config;
use super::limits::TokenBucket;
use crate::ids::{RequestId, RoomName, UserKey, UserName};
use crate::protocol::JoinSpec;

/// Where a session is in its life.
#[derive(Debug)]
pub(crate) enum Phase {
    /// Connected, no hello yet.
    New,
    /// Host mode: waiting for the host's answer to its hello.
    Authenticating {
        /// The hello's request id.
        id: Option<RequestId>,
        /// The hello's rooms.
        rooms: Option<Vec<JoinSpec>>,
    },
    /// Cluster mode: waiting for the name to be reserved over all servers.
    Claiming {
        /// The hello's request id.
        id: Option<RequestId>,
        /// The hello's rooms.
        rooms: Option<Vec<JoinSpec>>,
        /// The name asked for.
        name: UserName,
        /// The token the user gets (the one it proved, or a new one).
        token: String,
    },
    /// Welcomed as this user.
    Ready(UserKey),
}

/// One connection's state.
#[derive(Debug)]
pub(crate) struct Session {
    pub phase: Phase,
    /// The public rooms this session is in (direct rooms need no membership).
    pub rooms: BTreeSet<RoomName>,
    /// Every frame (flood control).
    pub frames: TokenBucket,
    /// Message sends.
    pub sends: TokenBucket,
    /// Typing frames.
    pub typing: TokenBucket,
    /// Rejections not yet paid back by accepted commands.
    pub strikes: u32,
    /// Who the session is: the host's identity from the connection (then
    /// `host_identity`), or from `hello` once welcomed.
    pub identity: Option<Arc<Identity>>,
    /// The identity came with the connection: `hello`'s name and token are ignored.
    pub host_identity: bool,
    /// The protocol version its `hello` asked for (1 until then).
    pub version: u32,
}

impl Session {
    /// A new session with full buckets.
    pub fn new(config: &Config, now: Instant) -> Session {
        Session {
            phase: Phase::New,
            rooms: BTreeSet::new(),
            frames: TokenBucket::full(config.frame_rate, now),
            sends: TokenBucket::full(config.send_rate, now),
            typing: TokenBucket::full(config.typing_rate, now),
            strikes: 0,
            identity: None,
            host_identity: false,
            version: crate::protocol::PROTOCOL_VERSION_1,
        }
    }

    /// An accepted command pays back one strike.
    pub fn accepted(&mut self) {
        self.strikes = self.strikes.saturating_sub(1);
    }
}
