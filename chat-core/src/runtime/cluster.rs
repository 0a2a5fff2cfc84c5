//! Cluster mode in the runtime (docs/CLUSTER.md): a [`Broker`] carries the engine's
//! cluster outputs to the log several processes share, and hands the log's answers and
//! news back as inputs through a [`BrokerInbox`]. The driver never waits for it: a
//! request is handed over with [`Broker::submit`] and answered later.
//!
//! The runtime holds no broker of its own (chat-core stays free of any database client):
//! `chat_redis::RedisBroker` is the one on Redis. A broker for another log implements
//! this trait and is given to [`HubConfig::cluster`](super::HubConfig::cluster).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::{Cmd, HubClosed};
use crate::ids::{ClientMsgId, RoomName, Seq, SessionId, UserName};
use crate::server::{Input, Output};

/// What the engine asks of the shared log; each is answered (where it has an answer)
/// through the [`BrokerInbox`], never by blocking [`Broker::submit`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterRequest {
    /// Commit a message; answer [`Input::Appended`] with the room and ticket. Appends of
    /// one room must be committed in the order submitted.
    Append {
        /// The room.
        room: RoomName,
        /// Echo in the answer.
        ticket: u64,
        /// The author.
        user: UserName,
        /// The text.
        body: Arc<str>,
        /// The author's message id (the log's idempotency key).
        client_id: Option<ClientMsgId>,
    },
    /// Read the room's log after `after`; answer [`Input::RoomLog`] with `fetched: true`.
    FetchLog {
        /// The room.
        room: RoomName,
        /// The last seq delivered here.
        after: Seq,
    },
    /// Listen to the room's news, then read it; answer [`Input::RoomLoaded`].
    LoadRoom {
        /// The room.
        room: RoomName,
    },
    /// Stop listening to the room.
    UnloadRoom {
        /// The room.
        room: RoomName,
    },
    /// A user's first session here entered the room, or the last one here left it;
    /// announcements come back as [`Input::Presence`]. Changes of one room must be
    /// counted in the order submitted.
    Presence {
        /// The room.
        room: RoomName,
        /// The user.
        user: UserName,
        /// Entered or left.
        entered: bool,
    },
    /// Read the room's whole presence; answer [`Input::PresenceSnapshot`].
    FetchPresence {
        /// The room.
        room: RoomName,
    },
    /// Read a history page the window does not hold; answer [`Input::HistoryLoaded`].
    LoadHistory {
        /// Echo in the answer.
        ticket: u64,
        /// The room.
        room: RoomName,
        /// Only seqs below this (none: the latest).
        before: Option<Seq>,
        /// Page size.
        limit: usize,
    },
    /// Reserve an anonymous name over all servers for `holder` and keep it reserved
    /// until [`ClusterRequest::ReleaseName`]; answer [`Input::NameClaimed`].
    ClaimName {
        /// The session that said hello (echo in the answer).
        session: SessionId,
        /// The reservation's key (the name's look-alike skeleton).
        key: String,
        /// Who holds it (a hash of the user's token and name).
        holder: String,
    },
    /// Stop keeping the name reserved (let it expire: another server may hold it for
    /// the same holder).
    ReleaseName {
        /// The reservation's key.
        key: String,
    },
    /// The log handed out a seq already delivered as another message: it lost entries.
    /// Replace the cluster epoch; every hub then gets [`Input::EpochChanged`].
    LogRegressed {
        /// The room where it was seen.
        room: RoomName,
        /// The seq handed out again.
        seq: Seq,
    },
    /// A user here typing or stopped: tell the other servers (at most once); theirs
    /// come back as [`Input::Typing`].
    Typing {
        /// The room.
        room: RoomName,
        /// Who.
        user: UserName,
        /// Typing, or stopped.
        active: bool,
    },
}

impl ClusterRequest {
    /// The request an output makes, or the output back if it is not a cluster output.
    pub(super) fn from_output(output: Output) -> Result<ClusterRequest, Output> {
        Ok(match output {
            Output::Append {
                room,
                ticket,
                user,
                body,
                client_id,
            } => ClusterRequest::Append {
                room,
                ticket,
                user,
                body,
                client_id,
            },
            Output::FetchLog { room, after } => ClusterRequest::FetchLog { room, after },
            Output::LoadRoom { room } => ClusterRequest::LoadRoom { room },
            Output::UnloadRoom { room } => ClusterRequest::UnloadRoom { room },
            Output::Presence {
                room,
                user,
                entered,
            } => ClusterRequest::Presence {
                room,
                user,
                entered,
            },
            Output::FetchPresence { room } => ClusterRequest::FetchPresence { room },
            Output::ClaimName {
                session,
                key,
                holder,
                ..
            } => ClusterRequest::ClaimName {
                session,
                key,
                holder,
            },
            Output::ReleaseName { key } => ClusterRequest::ReleaseName { key },
            Output::LogRegressed { room, seq } => ClusterRequest::LogRegressed { room, seq },
            Output::Typing { room, user, active } => ClusterRequest::Typing { room, user, active },
            other => return Err(other),
        })
    }
}

/// Where a broker hands inputs back to the hub's engine.
#[derive(Debug, Clone)]
pub struct BrokerInbox {
    /// Answers to requests: taken before clients' frames, never refused (they are
    /// bounded by the requests outstanding).
    answers: mpsc::UnboundedSender<Cmd>,
    /// News from the log: through the hub's bounded inbox, so a busy engine slows the
    /// broker down instead of piling news up.
    news: mpsc::Sender<Cmd>,
}

impl BrokerInbox {
    pub(super) fn new(answers: mpsc::UnboundedSender<Cmd>, news: mpsc::Sender<Cmd>) -> Self {
        BrokerInbox { answers, news }
    }

    /// Hands over the answer to a request (`Appended`, `RoomLoaded`, a fetched
    /// `RoomLog`, `PresenceSnapshot`).
    ///
    /// # Errors
    /// The hub has stopped.
    pub fn answer(&self, input: Input) -> Result<(), HubClosed> {
        self.answers.send(Cmd::Input(input)).map_err(|_| HubClosed)
    }

    /// Hands over news from the log (doorbells, presence announcements, catch-ups);
    /// waits while the hub's inbox is full.
    ///
    /// # Errors
    /// The hub has stopped.
    pub async fn notify(&self, input: Input) -> Result<(), HubClosed> {
        self.news
            .send(Cmd::Input(input))
            .await
            .map_err(|_| HubClosed)
    }
}

/// A future a broker returns.
pub type BrokerFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// The link between one hub and the log it shares with other processes (cluster mode).
/// Given to [`HubConfig::cluster`](super::HubConfig::cluster), the hub runs in cluster
/// mode: its epoch is the broker's, every post is committed through it, and rooms and
/// presence come from it.
pub trait Broker: Send + Sync + 'static {
    /// The cluster epoch, told to clients in `welcome` (seqs are comparable only within
    /// one epoch).
    fn epoch(&self) -> String;
    /// The token secret every process of the cluster shares (used when
    /// `HubConfig.core.secret` is left all zeros).
    fn secret(&self) -> [u8; 32];
    /// Called once by [`Hub::spawn`](super::Hub::spawn) before any request: where to
    /// hand inputs back.
    fn start(&self, inbox: BrokerInbox);
    /// Takes one request. Must not block: the answer comes later through the inbox.
    fn submit(&self, request: ClusterRequest);
    /// Called once when the hub stops, after its last request: release what this
    /// process holds in the log (its presence), stop background work.
    fn stop(&self) -> BrokerFuture<'_>;
}
