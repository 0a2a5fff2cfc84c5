//! The tokio runtime (feature `runtime`): one task owns the [`Server`]; connections and
//! the host app talk to it over bounded channels. Transports connect their clients with
//! [`Hub::connect`] and the API in [`transport`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use chat_core::runtime::{Hub, HubConfig};
//! let hub = Hub::spawn(HubConfig::default()).await.expect("store loads");
//! let mut alice = hub.connect().await?;
//! alice.send(chat_core::protocol::ClientFrame::Hello(chat_core::protocol::HelloRequest {
//!     id: None, version: 1, name: "alice".into(), token: None, rooms: None,
//! })).await?;
//! while let Some(frame) = alice.recv().await {
//!     println!("{frame:?}");
//! }
//! hub.publish("general", "bot", "hello from the host").await?;
//! hub.shutdown().await;
//! # Ok(()) }
//! ```

#![allow(clippy::disallowed_methods)] // the driver is where the clock is read

mod cluster;
mod events;
mod fanout;
mod outbox;
#[cfg(feature = "sqlite")]
mod sqlite;
mod store;
pub mod transport;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::ids::{ClientMsgId, RoomName, SessionId};
use crate::protocol::{ErrorCode, Message, ModAction};
use crate::server::{
    AuthRefused, CloseReason, Config, Event, Input, ModerationChange, Now, Output, Retention,
    Server, StoreError,
};
pub use cluster::{Broker, BrokerFuture, BrokerInbox, ClusterControl, ClusterRequest, RoomsFuture};
pub use events::{EventStream, HostEvent};
#[cfg(feature = "sqlite")]
pub use sqlite::{Durability, SCHEMA_VERSION, SqliteStore};
pub use store::{MemoryStore, Pruned, Restored, RestoredRoom, Store};
use transport::Connection;

/// A host identity hook: given the hello's name and credentials, the user name or a refusal.
pub type Authenticator = Arc<
    dyn Fn(
            String,
            Option<String>,
        ) -> Pin<Box<dyn Future<Output = Result<String, AuthRefused>> + Send>>
        + Send
        + Sync,
>;

/// Runtime configuration.
#[derive(Clone)]
pub struct HubConfig {
    /// The state machine's configuration. The runtime owns two of its fields and
    /// refuses to start ([`SpawnError::RuntimeOwned`]) when they were set: `durable`
    /// (true exactly when `store` is given) and `epoch` (the store's, or a new random
    /// one without a store). `secret` is used as given, and drawn at random when it is
    /// all zeros (the default); give every process of one deployment the same secret
    /// for their tokens to agree.
    pub core: Config,
    /// Durable store. `None` keeps history in the in-memory window only (fastest).
    /// With a store, a message is delivered and acked only after it is committed; the
    /// embedded choice is `SqliteStore` (feature `sqlite`).
    pub store: Option<Arc<dyn Store>>,
    /// Frames queued per connection before the core's slow-consumer policy applies.
    pub outbound_queue: usize,
    /// Bytes of frames queued per connection before the same policy applies (a single
    /// frame larger than this still goes into an empty queue). With
    /// [`HubConfig::outbound_queue`] it bounds what one connection that stops reading
    /// can make the server hold: at most this many bytes of frames, or the frame count,
    /// whichever comes first. Default 4 MiB.
    pub outbound_bytes: usize,
    /// Inputs queued for the driver task before connections wait.
    pub inbox: usize,
    /// The identity hook for [`crate::AuthMode::Host`].
    pub authenticator: Option<Authenticator>,
    /// Cluster mode (docs/CLUSTER.md): the log this hub shares with other processes.
    /// `None` (the default) runs single-node. With a broker, `core.cluster` is set by the
    /// runtime, the epoch is the broker's, and `store` must be `None` (the shared log
    /// holds the history).
    pub cluster: Option<Arc<dyn Broker>>,
    /// Threads that put the driver's frames into the connections' queues (0: the
    /// driver does it itself). One driver task owns every room; on a box with many
    /// cores the per-recipient work of a fan-out (a queue push and a wake-up per
    /// recipient) is what stops it first, and K threads share it, each for the sessions
    /// whose id falls to it, every session's frames still in the engine's order
    /// (docs/ARCHITECTURE.md, "Fan-out threads"; docs/BENCHMARKS.md, "Many cores").
    /// Default: `CHAT_FANOUT_THREADS` from the environment if set (as tokio reads
    /// `TOKIO_WORKER_THREADS`), else 0. On a machine with 2 cores, 0 is fastest. The
    /// threads run outside the tokio runtime: tests on tokio's paused clock
    /// (`start_paused`) want 0, as the clock jumps ahead whenever the runtime's own
    /// tasks are idle, even while a thread queues the frame one of them waits for.
    pub fanout_threads: usize,
    /// Commit messages on the driver task, at the end of the wake-up that made them (up
    /// to 64 inputs' messages in one transaction), instead of handing them to the
    /// store's writer thread. `None`: inline exactly when the store's commits are cheap
    /// ([`Store::cheap_commits`]: no fsync per commit) and this process may run on one
    /// CPU only, where the hop to the writer thread and back is two context switches on
    /// the same core per group (docs/ARCHITECTURE.md, "Messages, seq and durability").
    /// Moderation changes, read markers and retention stay on the writer thread either
    /// way. Default: `CHAT_COMMIT_INLINE` (`0` or `1`) from the environment if set, else
    /// `None`. Without a store it changes nothing.
    pub commit_inline: Option<bool>,
}

/// [`HubConfig::commit_inline`]'s default: `CHAT_COMMIT_INLINE`, else `None`.
fn default_commit_inline() -> Option<bool> {
    match std::env::var("CHAT_COMMIT_INLINE").ok()?.trim() {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// [`HubConfig::fanout_threads`]'s default: `CHAT_FANOUT_THREADS`, else 0.
fn default_fanout_threads() -> usize {
    std::env::var("CHAT_FANOUT_THREADS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            core: Config::default(),
            store: None,
            outbound_queue: 1024,
            outbound_bytes: 4 << 20,
            inbox: 4096,
            authenticator: None,
            cluster: None,
            fanout_threads: default_fanout_threads(),
            commit_inline: default_commit_inline(),
        }
    }
}

impl std::fmt::Debug for HubConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubConfig")
            .field("core", &self.core)
            .field("store", &self.store.is_some())
            .field("outbound_queue", &self.outbound_queue)
            .field("outbound_bytes", &self.outbound_bytes)
            .field("inbox", &self.inbox)
            .field("cluster", &self.cluster.is_some())
            .field("fanout_threads", &self.fanout_threads)
            .field("commit_inline", &self.commit_inline)
            .finish_non_exhaustive()
    }
}

/// Why [`Hub::spawn`] could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The store could not be loaded.
    #[error("loading the store: {0}")]
    Store(#[from] StoreError),
    /// `HubConfig.core` sets a field the runtime owns.
    #[error("HubConfig.core.{field} is set by the runtime: {why}")]
    RuntimeOwned {
        /// The field.
        field: &'static str,
        /// Where its value comes from.
        why: &'static str,
    },
    /// `HubConfig.core.rooms` names a room that is not a valid public room name.
    #[error("HubConfig.core.rooms: {0:?} is not a valid public room name")]
    InvalidRoom(String),
    /// The operating system gave no randomness for the token secret or the epoch.
    #[error("no randomness: {0}")]
    NoRandomness(String),
    /// A fan-out thread ([`HubConfig::fanout_threads`]) could not be started.
    #[error("starting a fan-out thread: {0}")]
    Thread(String),
}

/// The hub has shut down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the chat hub has shut down")]
pub struct HubClosed;

/// A rejected [`Hub::publish`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The core refused it.
    #[error("publish rejected: {0}")]
    Rejected(ErrorCode),
    /// The hub has shut down.
    #[error(transparent)]
    Closed(#[from] HubClosed),
}

/// The runtime's counters at one moment ([`Hub::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Open connections.
    pub connections: u64,
    /// Rooms in memory (in durable mode an idle room leaves memory; it stays in the store).
    pub rooms: u64,
    /// Frames received from clients.
    pub frames_in: u64,
    /// Frames queued to clients (one per recipient).
    pub frames_out: u64,
    /// Messages posted.
    pub messages: u64,
    /// Connections closed as slow consumers.
    pub slow_consumers: u64,
    /// Inputs waiting for the driver.
    pub inbox_depth: u64,
    /// Events that [`Hub::event_stream`] streams missed because their buffer was full
    /// (one per stream and event; each stream was told with [`HostEvent::Lagged`]).
    pub events_missed: u64,
}

/// The live counters behind [`Stats`], updated by the driver.
#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    rooms: AtomicU64,
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    messages: AtomicU64,
    slow_consumers: AtomicU64,
    inbox_depth: AtomicU64,
    events_missed: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> Stats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            connections: load(&self.connections),
            rooms: load(&self.rooms),
            frames_in: load(&self.frames_in),
            frames_out: load(&self.frames_out),
            messages: load(&self.messages),
            slow_consumers: load(&self.slow_consumers),
            inbox_depth: load(&self.inbox_depth),
            events_missed: load(&self.events_missed),
        }
    }
}

/// Something the host does on the engine's task ([`Hub::revoke_user`], ...).
type HostFn = Box<dyn FnOnce(&mut Server, Now) + Send>;

enum Cmd {
    Connect {
        session: SessionId,
        tx: outbox::OutboxTx,
        /// The host's identity for the session, known before its first frame.
        identity: Option<crate::Identity>,
    },
    /// The host changes the engine's state (room access, invitations, moderation).
    Host(HostFn),
    /// [`Hub::revoke_user`]: here, and relayed to the other servers in cluster mode.
    Revoke {
        user: String,
        reply: oneshot::Sender<usize>,
    },
    /// An action another server relayed (cluster mode): carried out here, relayed no
    /// further.
    Relayed(ClusterControl),
    Input(Input),
    /// The writer's answer for a whole group: one command, not one per message.
    Persisted {
        messages: Vec<(RoomName, crate::ids::Seq)>,
        result: Result<(), StoreError>,
    },
    /// The writer's answer for a group of moderation changes.
    ModerationSaved {
        tickets: Vec<u64>,
        result: Result<(), StoreError>,
    },
    /// Answers once every moderation change handed to the writer before it is
    /// committed (or failed): how a `Hub` moderation call waits for its change.
    Barrier(oneshot::Sender<Result<(), StoreError>>),
    Publish {
        room: String,
        user: String,
        body: String,
        client_id: Option<ClientMsgId>,
        reply: oneshot::Sender<Result<Arc<Message>, ErrorCode>>,
    },
    /// [`Hub::erase_user`] in one room: answered with the `erase` entry.
    Erase {
        room: RoomName,
        user: crate::ids::UserName,
        reply: oneshot::Sender<Result<Arc<Message>, ErrorCode>>,
    },
    /// [`Hub::set_retention`]: handed to the writer, which stores and enforces it.
    Retention {
        room: RoomName,
        policy: Retention,
    },
    /// The writer's retention pruned these rooms below these seqs.
    Pruned(Vec<(RoomName, crate::ids::Seq)>),
    Shutdown,
}

/// A cloneable, `Send + Sync` handle to the chat engine running on a tokio task.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    tx: mpsc::Sender<Cmd>,
    control: mpsc::UnboundedSender<Cmd>,
    next_session: AtomicU64,
    outbound: outbox::Limit,
    events: broadcast::Sender<Event>,
    streams: Arc<events::Registry>,
    stats: Arc<Counters>,
    done: watch::Receiver<bool>,
    limits: crate::protocol::Limits,
    /// Read by [`Hub::erase_user`] to find the rooms a user wrote in.
    store: Option<Arc<dyn Store>>,
    /// Cluster mode: asked by [`Hub::erase_user`] for the rooms a user wrote in.
    broker: Option<Arc<dyn Broker>>,
}

impl Hub {
    /// Loads the store (if any) and starts the driver task on the current tokio runtime.
    pub async fn spawn(config: HubConfig) -> Result<Hub, SpawnError> {
        let HubConfig {
            mut core,
            store,
            outbound_queue,
            outbound_bytes,
            inbox,
            authenticator,
            cluster,
            fanout_threads,
            commit_inline,
        } = config;
        if core.durable && store.is_none() {
            return Err(SpawnError::RuntimeOwned {
                field: "durable",
                why: "it is true exactly when HubConfig.store is given",
            });
        }
        if core.cluster {
            return Err(SpawnError::RuntimeOwned {
                field: "cluster",
                why: "it is true exactly when HubConfig.cluster is given",
            });
        }
        if cluster.is_some() && store.is_some() {
            return Err(SpawnError::RuntimeOwned {
                field: "durable",
                why: "in cluster mode the shared log holds the history: HubConfig.store must be None",
            });
        }
        if let Some((room, _)) = core.rooms.iter().find(|(room, _)| {
            crate::RoomName::parse(room, core.max_room_chars, core.max_name_chars)
                .map_or(true, |r| r.direct_users().is_some())
        }) {
            return Err(SpawnError::InvalidRoom(room.clone()));
        }
        if core.epoch != Config::default().epoch {
            return Err(SpawnError::RuntimeOwned {
                field: "epoch",
                why: "it comes from the store, or is drawn at random without one",
            });
        }
        let mut random = [0u8; 32];
        getrandom::fill(&mut random).map_err(|e| SpawnError::NoRandomness(e.to_string()))?;
        if core.secret == [0; 32] {
            core.secret = cluster.as_ref().map_or(random, |b| b.secret());
        }
        core.cluster = cluster.is_some();
        if core.cluster && core.node == 0 {
            // Salts anonymous tokens: two servers never mint the same one.
            let mut node = [0u8; 8];
            getrandom::fill(&mut node).map_err(|e| SpawnError::NoRandomness(e.to_string()))?;
            core.node = u64::from_le_bytes(node).max(1);
        }
        core.durable = store.is_some();
        let restored = match &store {
            Some(store) => {
                let store = store.clone();
                // Names and last seqs only: a room's window is read when it is needed.
                tokio::task::spawn_blocking(move || store.load(0))
                    .await
                    .map_err(|e| StoreError::Unavailable(e.to_string()))??
            }
            None => Restored {
                epoch: if let Some(broker) = &cluster {
                    broker.epoch()
                } else {
                    // Drawn apart from the secret: the epoch is told to every client.
                    let mut epoch = [0u8; 8];
                    getrandom::fill(&mut epoch)
                        .map_err(|e| SpawnError::NoRandomness(e.to_string()))?;
                    hex(&epoch)
                },
                rooms: vec![],
            },
        };
        core.epoch = restored.epoch.clone();
        let limits = core.limits();
        let mut server = Server::new(core);
        for r in restored.rooms {
            if r.recent.is_empty() {
                server.add_stored_room(r.room, r.last_seq);
            } else {
                server.restore_room(r.room, r.last_seq, r.recent, r.complete);
            }
        }
        if let Some(store) = &store {
            let store = store.clone();
            let changes = tokio::task::spawn_blocking(move || store.load_moderation())
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))??;
            server.restore_moderation(now(), changes);
        }
        let mut policies = Vec::new();
        if let Some(store) = &store {
            let store2 = store.clone();
            let markers = tokio::task::spawn_blocking(move || store2.load_read_markers())
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))??;
            server.restore_read_markers(markers);
            let store = store.clone();
            policies = tokio::task::spawn_blocking(move || store.load_retention())
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))??;
        }
        let default_retention = server.config().retention;
        let hub_store = store.clone();
        let hub_broker = cluster.clone();
        let (tx, rx) = mpsc::channel(inbox.max(1));
        let (control, control_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Counters::default());
        let fanout = if fanout_threads == 0 {
            fanout::Fanout::inline(stats.clone())
        } else {
            fanout::Fanout::threads(fanout_threads, stats.clone(), control.clone())
                .map_err(|e| SpawnError::Thread(e.to_string()))?
        };
        if let Some(broker) = &cluster {
            broker.default_retention(default_retention);
            broker.start(BrokerInbox::new(control.clone(), tx.clone()));
        }
        let (events, _) = broadcast::channel(1024);
        let streams = Arc::new(events::Registry::default());
        let (done_tx, done) = watch::channel(false);
        let writer = store
            .as_ref()
            .map(|s| Writer::start(s.clone(), control.clone(), default_retention, policies));
        // Messages committed by the driver itself (see `HubConfig::commit_inline`).
        let inline = store.clone().filter(|s| {
            commit_inline.unwrap_or_else(|| {
                s.cheap_commits()
                    && std::thread::available_parallelism().is_ok_and(|n| n.get() == 1)
            })
        });
        let driver = Driver {
            server,
            inline,
            inline_batch: Vec::new(),
            rx,
            control_rx,
            control: control.clone(),
            fanout,
            publishes: HashMap::new(),
            next_ticket: 0,
            store,
            writer,
            authenticator,
            events: events.clone(),
            streams: streams.clone(),
            last_event: 0,
            stats: stats.clone(),
            deferred: Vec::new(),
            answering: None,
            parked: HashMap::new(),
            settling: Vec::new(),
            shutting_down: false,
            cluster,
            relaying: false,
            held_relays: std::collections::VecDeque::new(),
            cluster_saves: std::collections::BTreeSet::new(),
            cluster_barriers: Vec::new(),
            time_frames: Sampler::default(),
            time_drains: Sampler::default(),
            untold_frames_out: 0,
            untold_messages: 0,
        };
        tokio::spawn(async move {
            driver.run().await;
            // After the last event: a stream that sees this has every event.
            let _ = done_tx.send(true);
        });
        Ok(Hub {
            inner: Arc::new(HubInner {
                tx,
                control,
                next_session: AtomicU64::new(1),
                outbound: outbox::Limit {
                    frames: outbound_queue.max(1),
                    bytes: outbound_bytes.max(1),
                },
                events,
                streams,
                stats,
                done,
                limits,
                store: hub_store,
                broker: hub_broker,
            }),
        })
    }

    /// Opens a session for one client, as a transport does for each connection (see
    /// [`transport`]). Send `hello` first.
    pub async fn connect(&self) -> Result<Connection, HubClosed> {
        self.open_session(None).await
    }

    /// Opens a session whose user the host already knows (from the request that opened
    /// the connection): its `hello` is welcomed as `identity`'s user, whatever name it
    /// gives, and at `identity.expires` it is told (`auth_expired`) and closed.
    pub async fn connect_as(&self, identity: crate::Identity) -> Result<Connection, HubClosed> {
        self.open_session(Some(identity)).await
    }

    async fn open_session(
        &self,
        identity: Option<crate::Identity>,
    ) -> Result<Connection, HubClosed> {
        let session = SessionId(self.inner.next_session.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = outbox::outbox(self.inner.outbound);
        self.inner
            .tx
            .send(Cmd::Connect {
                session,
                tx,
                identity,
            })
            .await
            .map_err(|_| HubClosed)?;
        Ok(Connection::new(
            session,
            self.inner.tx.clone(),
            self.inner.control.clone(),
            rx,
        ))
    }

    /// Posts a message as `user` (a bot or a system notice) without a connection, and
    /// returns it once delivered (and stored, with a store).
    pub async fn publish(
        &self,
        room: &str,
        user: &str,
        body: &str,
    ) -> Result<Arc<Message>, PublishError> {
        self.publish_with_id(room, user, body, None).await
    }

    /// As [`Hub::publish`], idempotent by `client_id`.
    pub async fn publish_with_id(
        &self,
        room: &str,
        user: &str,
        body: &str,
        client_id: Option<ClientMsgId>,
    ) -> Result<Arc<Message>, PublishError> {
        let (reply, rx) = oneshot::channel();
        let cmd = Cmd::Publish {
            room: room.into(),
            user: user.into(),
            body: body.into(),
            client_id,
            reply,
        };
        self.inner.tx.send(cmd).await.map_err(|_| HubClosed)?;
        rx.await
            .map_err(|_| HubClosed)?
            .map_err(PublishError::Rejected)
    }

    /// Closes every session of `user` at once (each gets an `auth_revoked` error and
    /// close code 4003); returns how many there were on this hub. In cluster mode the
    /// revocation is also relayed to every other server, which closes the user's
    /// sessions there (docs/CLUSTER.md, "Host and moderator actions"). Keeping the user
    /// out afterwards is the identity hook's part.
    pub async fn revoke_user(&self, user: &str) -> Result<usize, HubClosed> {
        let (reply, rx) = oneshot::channel();
        let cmd = Cmd::Revoke {
            user: user.to_owned(),
            reply,
        };
        self.inner.control.send(cmd).map_err(|_| HubClosed)?;
        rx.await.map_err(|_| HubClosed)
    }

    /// Sets a public room's access rules (see [`crate::RoomAccess`]); they apply from
    /// the next join, send or read on.
    pub async fn set_room_access(
        &self,
        room: &str,
        rules: crate::RoomAccess,
    ) -> Result<Result<(), String>, HubClosed> {
        let room = room.to_owned();
        self.host(move |server, _| server.set_room_access(&room, rules))
            .await
    }

    /// Invites `user` to a private room.
    pub async fn invite(&self, room: &str, user: &str) -> Result<Result<(), String>, HubClosed> {
        let (room, user) = (room.to_owned(), user.to_owned());
        self.host(move |server, _| server.invite(&room, &user))
            .await
    }

    /// Kicks `user` out of a public room with a reason ([`Server::kick`]); returns how
    /// many of their sessions left.
    ///
    /// With a store, this and the other moderation calls (`ban`, `unban`, `mute`,
    /// `mute_for`, `set_role`, `set_topic`, `set_slow_mode`) return `Ok` once the change
    /// is committed: it survives a crash from then on. A change the store failed to
    /// keep is `Err` ("not stored: ..."), though it holds in memory until a restart.
    pub async fn kick(
        &self,
        room: &str,
        user: &str,
        reason: &str,
    ) -> Result<Result<usize, String>, HubClosed> {
        let (room, user, reason) = (room.to_owned(), user.to_owned(), reason.to_owned());
        self.moderation(move |s, now| s.kick(now, &room, &user, &reason))
            .await
    }

    /// Bans `user` from a public room for `length` (`None`: for good) ([`Server::ban`]).
    pub async fn ban(
        &self,
        room: &str,
        user: &str,
        reason: &str,
        length: Option<Duration>,
    ) -> Result<Result<usize, String>, HubClosed> {
        let (room, user, reason) = (room.to_owned(), user.to_owned(), reason.to_owned());
        self.moderation(move |s, now| s.ban(now, &room, &user, &reason, length))
            .await
    }

    /// Lifts a ban ([`Server::unban`]).
    pub async fn unban(&self, room: &str, user: &str) -> Result<Result<(), String>, HubClosed> {
        let (room, user) = (room.to_owned(), user.to_owned());
        self.moderation(move |s, _| s.unban(&room, &user)).await
    }

    /// Mutes or unmutes `user` in a public room ([`Server::mute`]).
    pub async fn mute(
        &self,
        room: &str,
        user: &str,
        muted: bool,
    ) -> Result<Result<(), String>, HubClosed> {
        let (room, user) = (room.to_owned(), user.to_owned());
        self.moderation(move |s, _| s.mute(&room, &user, muted))
            .await
    }

    /// Mutes `user` in a public room for `length` (`None`: until unmuted), with a reason
    /// ([`Server::mute_for`]).
    pub async fn mute_for(
        &self,
        room: &str,
        user: &str,
        reason: &str,
        length: Option<Duration>,
    ) -> Result<Result<(), String>, HubClosed> {
        let (room, user, reason) = (room.to_owned(), user.to_owned(), reason.to_owned());
        self.moderation(move |s, now| s.mute_for(now, &room, &user, &reason, length))
            .await
    }

    /// Gives `user` a role in a public room ([`Server::set_role`]).
    pub async fn set_role(
        &self,
        room: &str,
        user: &str,
        role: crate::protocol::Role,
    ) -> Result<Result<(), String>, HubClosed> {
        let (room, user) = (room.to_owned(), user.to_owned());
        self.moderation(move |s, _| s.set_role(&room, &user, role))
            .await
    }

    /// Sets a public room's topic, empty for none ([`Server::set_topic`]).
    pub async fn set_topic(
        &self,
        room: &str,
        topic: &str,
    ) -> Result<Result<(), String>, HubClosed> {
        let (room, topic) = (room.to_owned(), topic.to_owned());
        self.moderation(move |s, _| s.set_topic(&room, &topic))
            .await
    }

    /// Sets a public room's slow mode, 0 for off ([`Server::set_slow_mode`]).
    pub async fn set_slow_mode(
        &self,
        room: &str,
        seconds: u32,
    ) -> Result<Result<(), String>, HubClosed> {
        let room = room.to_owned();
        self.moderation(move |s, _| s.set_slow_mode(&room, seconds))
            .await
    }

    /// Sets a room's own retention policy, in place of [`Config::retention`] for that
    /// room; `Retention::default()` keeps everything. Returns once the policy is stored.
    ///
    /// Durable mode: stored in the store; its writer then deletes, in the background
    /// and in small batches between its commits, what the policy no longer keeps, and
    /// the room's window follows. Cluster mode: stored in the shared log (Redis) for
    /// every server of the cluster; each server's broker sweeps the rooms in the
    /// background (one server per period, a bounded step per call) and every server's
    /// window follows the trim (docs/CLUSTER.md, "Retention"). Either way a resume or
    /// history page below what was deleted gets the protocol's explicit gap
    /// (docs/PROTOCOL.md, "Retention").
    /// Without a store or a cluster: `Err` (the window, 1000 messages by default,
    /// bounds memory).
    pub async fn set_retention(
        &self,
        room: &str,
        policy: Retention,
    ) -> Result<Result<(), String>, HubClosed> {
        if self.inner.store.is_none() && self.inner.broker.is_none() {
            return Ok(Err("retention needs a store".into()));
        }
        let raw = room.to_owned();
        let parsed = self
            .host(move |server, _| {
                let c = server.config();
                RoomName::parse(&raw, c.max_room_chars, c.max_name_chars).map_err(|e| e.to_string())
            })
            .await?;
        let room = match parsed {
            Ok(room) => room,
            Err(e) => return Ok(Err(e)),
        };
        if let Some(broker) = &self.inner.broker {
            return Ok(broker
                .set_retention(room, policy)
                .await
                .map_err(|e| format!("not stored: {e}")));
        }
        self.inner
            .control
            .send(Cmd::Retention { room, policy })
            .map_err(|_| HubClosed)?;
        let (reply, rx) = oneshot::channel();
        self.inner
            .control
            .send(Cmd::Barrier(reply))
            .map_err(|_| HubClosed)?;
        Ok(rx
            .await
            .map_err(|_| HubClosed)?
            .map_err(|e| format!("not stored: {e}")))
    }

    /// Erases `user` (the right to be forgotten): in every room where the user wrote
    /// (in the store and in every window; in cluster mode, every room the shared log
    /// recorded the user writing in, on any server), an `erase` entry is posted, which
    /// makes each of the user's messages a tombstone (seq, time and author stay; text,
    /// edits and reactions go) and takes the user's reactions off other messages.
    /// Connected clients get it as a `change` of kind `erase` (in cluster mode on every
    /// server). Returns the number of rooms, once every entry is stored (committed to
    /// the shared log) and delivered. In cluster mode the log also takes the user's
    /// texts out of its stream (docs/CLUSTER.md, "Erasure"). Keeping the user out is the
    /// identity hook's part (see [`Hub::revoke_user`]).
    pub async fn erase_user(&self, user: &str) -> Result<Result<usize, String>, HubClosed> {
        let raw = user.to_owned();
        let found = self
            .host(move |server, _| {
                crate::ids::UserName::parse(&raw, server.config().max_name_chars)
                    .map(|name| {
                        let rooms = server.rooms_with_user(&name);
                        (name, rooms)
                    })
                    .map_err(|e| e.to_string())
            })
            .await?;
        let (name, mut rooms) = match found {
            Ok(found) => found,
            Err(e) => return Ok(Err(e)),
        };
        if let Some(store) = self.inner.store.clone() {
            let who = name.clone();
            let stored = tokio::task::spawn_blocking(move || store.rooms_of(&who)).await;
            match stored {
                Ok(Ok(more)) => rooms.extend(more),
                Ok(Err(e)) => return Ok(Err(format!("reading the store: {e}"))),
                Err(e) => return Ok(Err(format!("reading the store: {e}"))),
            }
        }
        let cluster = self.inner.broker.is_some();
        if let Some(broker) = &self.inner.broker {
            match broker.rooms_of(&name).await {
                Ok(more) => rooms.extend(more),
                Err(e) => return Ok(Err(format!("reading the shared log: {e}"))),
            }
        }
        rooms.sort();
        rooms.dedup();
        let mut waiting = Vec::with_capacity(rooms.len());
        for room in rooms {
            let (reply, rx) = oneshot::channel();
            let cmd = Cmd::Erase {
                room: room.clone(),
                user: name.clone(),
                reply,
            };
            self.inner.tx.send(cmd).await.map_err(|_| HubClosed)?;
            waiting.push((room, rx));
        }
        let mut n = 0;
        for (room, rx) in waiting {
            match rx.await.map_err(|_| HubClosed)? {
                Ok(_) => n += 1,
                // The log recorded the room for a post it then refused: nothing there.
                Err(ErrorCode::RoomNotFound) if cluster => {}
                Err(code) => return Ok(Err(format!("erasing in {room}: {}", code.as_str()))),
            }
        }
        Ok(Ok(n))
    }

    /// Runs a moderation call `f` on the engine's task, then, with a store, waits until
    /// the change it made is committed.
    async fn moderation<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Server, Now) -> Result<T, String> + Send + 'static,
    ) -> Result<Result<T, String>, HubClosed> {
        let answer = self.host(f).await?;
        let (reply, rx) = oneshot::channel();
        self.inner
            .control
            .send(Cmd::Barrier(reply))
            .map_err(|_| HubClosed)?;
        let stored = rx.await.map_err(|_| HubClosed)?;
        Ok(match (answer, stored) {
            (Ok(_), Err(e)) => Err(format!("done, but not stored: {e}")),
            (answer, _) => answer,
        })
    }

    /// Runs `f` on the engine's task and returns its answer.
    async fn host<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Server, Now) -> T + Send + 'static,
    ) -> Result<T, HubClosed> {
        let (reply, rx) = oneshot::channel();
        let cmd = Cmd::Host(Box::new(move |server, now| {
            let _ = reply.send(f(server, now));
        }));
        self.inner.control.send(cmd).map_err(|_| HubClosed)?;
        rx.await.map_err(|_| HubClosed)
    }

    /// Host-app events, lossy: messages posted, users joining and leaving, sessions,
    /// moderation, rejections. A receiver more than 1024 events behind loses the oldest
    /// (`recv` says how many, not which). For a live view, a dashboard or a test that
    /// waits for one event; a host that needs every event (an audit log, webhooks) uses
    /// [`Hub::event_stream`].
    #[must_use]
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// A reliable stream of host events from now on: each with its id (ids go up by
    /// one per event from 1 at [`Hub::spawn`]), in order, buffered for this stream
    /// until read, at most `capacity` unread at once (at least 1).
    ///
    /// The engine never waits for the host. A host that stops reading, or reads slower
    /// than events come for longer than `capacity` lasts, misses the events that do not
    /// fit, and is told so: where they would have been, the stream yields
    /// [`HostEvent::Lagged`] with their ids, then the events after them;
    /// [`Stats::events_missed`] and the `/metrics` counter
    /// `chat_host_events_missed_total` count them. Messages among the missed events
    /// are still in the rooms' history (by seq). Size `capacity` for the longest pause
    /// the host must ride out at the peak event rate (an event is a few hundred bytes,
    /// messages shared with the rooms' windows).
    ///
    /// ```no_run
    /// # async fn demo(hub: chat_core::runtime::Hub) {
    /// use chat_core::runtime::HostEvent;
    /// let mut audit = hub.event_stream(65_536);
    /// while let Some(item) = audit.next().await {
    ///     match item {
    ///         HostEvent::Event { id, event } => println!("{id} {event:?}"),
    ///         HostEvent::Lagged { missed } => eprintln!("audit gap: events {missed:?}"),
    ///         _ => {}
    ///     }
    /// }
    /// # }
    /// ```
    #[must_use]
    pub fn event_stream(&self, capacity: usize) -> EventStream {
        EventStream::new(&self.inner.streams, capacity, self.inner.done.clone())
    }

    /// The counters as they are now.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.inner.stats.snapshot()
    }

    /// The limits clients are told about.
    #[must_use]
    pub fn limits(&self) -> &crate::protocol::Limits {
        &self.inner.limits
    }

    /// Whether the hub still runs.
    #[must_use]
    pub fn is_running(&self) -> bool {
        !*self.inner.done.borrow()
    }

    /// Shuts down gracefully: settles pending stores, tells every session `goodbye` and
    /// closes it, flushes the store, and returns when the driver has stopped.
    pub async fn shutdown(&self) {
        let _ = self.inner.control.send(Cmd::Shutdown);
        self.closed().await;
    }

    /// Waits until the hub has stopped.
    pub async fn closed(&self) {
        let mut done = self.inner.done.clone();
        let _ = done.wait_for(|d| *d).await;
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

struct Driver {
    server: Server,
    rx: mpsc::Receiver<Cmd>,
    control_rx: mpsc::UnboundedReceiver<Cmd>,
    control: mpsc::UnboundedSender<Cmd>,
    /// Who queues the frames: the driver itself, or the fan-out threads.
    fanout: fanout::Fanout,
    publishes: HashMap<u64, oneshot::Sender<Result<Arc<Message>, ErrorCode>>>,
    next_ticket: u64,
    store: Option<Arc<dyn Store>>,
    writer: Option<Writer>,
    authenticator: Option<Authenticator>,
    events: broadcast::Sender<Event>,
    /// The reliable host streams, and the id of the last event reported.
    streams: Arc<events::Registry>,
    last_event: u64,
    stats: Arc<Counters>,
    /// Inputs produced while draining outputs (queue-full reports), fed after the drain.
    deferred: Vec<Input>,
    shutting_down: bool,
    /// Cluster mode's broker.
    cluster: Option<Arc<dyn Broker>>,
    /// Carrying out an action another server relayed: its events are not relayed again.
    relaying: bool,
    /// Cluster mode: actions to relay, held until the drain reaches the change they
    /// make (published once the change is in the shared log), or its end.
    held_relays: std::collections::VecDeque<ClusterControl>,
    /// Cluster mode: moderation changes handed to the broker, not answered yet.
    cluster_saves: std::collections::BTreeSet<u64>,
    /// Cluster mode: `Hub` moderation calls waiting for the changes handed to the
    /// broker before them (the tickets left, the first error).
    cluster_barriers: Vec<ClusterBarrier>,
    /// Transport rule 3's count: the peer input being handled, its session and the
    /// answers it owes ([`transport::answers`]), until the drain after it parks it or
    /// the driver settles it.
    answering: Option<(SessionId, usize)>,
    /// Sends waiting for their commit (durable mode, by room and seq) or for the shared
    /// log (cluster mode, by room and ticket): whose answers they owe, settled once the
    /// store's or the log's answer has been handled. One entry per message the core
    /// itself holds as pending.
    parked: HashMap<(RoomName, u64), (SessionId, usize)>,
    /// Answers to settle after the current drain.
    settling: Vec<(SessionId, usize)>,
    /// The store, when the driver commits messages itself (`HubConfig::commit_inline`),
    /// and the messages of the wake-up under way.
    inline: Option<Arc<dyn Store>>,
    inline_batch: Vec<Arc<Message>>,
    /// Which frames, and which drains that queued frames, are timed.
    time_frames: Sampler,
    time_drains: Sampler,
    /// Frames queued and messages posted since the metrics were last told (once per
    /// wake-up, not per message: each `metrics::counter!` is a registry lookup).
    untold_frames_out: u64,
    untold_messages: u64,
}

/// One in this many frames handled (and of the batches of frames queued) is timed for
/// `chat_frame_seconds` (`chat_fanout_seconds`), the first one included: two clock reads
/// and a histogram sample per frame were a measurable part of the driver's time, and an
/// exporter that keeps every sample until it is scraped (Prometheus's) held ~8 bytes
/// per frame.
pub(crate) const TIME_EVERY: u32 = 16;

/// Picks the events to time: the first, then one in [`TIME_EVERY`].
#[derive(Debug, Default)]
pub(crate) struct Sampler(u32);

impl Sampler {
    /// The start time if the next event is one to time.
    pub(crate) fn start(&self) -> Option<Instant> {
        (self.0 == 0).then(Instant::now)
    }

    /// One more event happened (an event that turned out not to count, a drain that
    /// queued nothing, leaves the next one due).
    pub(crate) fn count(&mut self) {
        self.0 = (self.0 + 1) % TIME_EVERY;
    }
}

/// A `Hub` moderation call waiting for its changes to reach the shared log.
struct ClusterBarrier {
    tickets: std::collections::BTreeSet<u64>,
    error: Option<StoreError>,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// Inputs handled per wake-up before outputs are drained: bounds latency under load
/// while amortizing the clock read.
const BATCH: usize = 64;

impl Driver {
    async fn run(mut self) {
        loop {
            let deadline = self.server.poll_timeout();
            let cmd = tokio::select! {
                biased;
                Some(cmd) = self.control_rx.recv() => Some(cmd),
                Some(cmd) = self.rx.recv() => Some(cmd),
                () = sleep_until(deadline) => None,
                else => break,
            };
            let now = now();
            match cmd {
                Some(cmd) => {
                    if self.handle(now, cmd) {
                        break;
                    }
                    // Take more of what is already waiting, without sleeping.
                    for _ in 1..BATCH {
                        let next = match self.control_rx.try_recv() {
                            Ok(cmd) => cmd,
                            Err(_) => match self.rx.try_recv() {
                                Ok(cmd) => cmd,
                                Err(_) => break,
                            },
                        };
                        if self.handle(now, next) {
                            return self.finish().await;
                        }
                    }
                }
                None => {
                    self.server.handle_timeout(now);
                    if self.drain(now) {
                        break;
                    }
                }
            }
            // Inline commits: this wake-up's messages as one group, answered as the
            // writer thread's group is (their release may make no new message, but loop
            // in case).
            let mut stop = false;
            while let Some(persisted) = self.commit_inline() {
                stop |= self.handle(now, persisted);
            }
            if stop {
                break;
            }
            // The fan-out threads (if any) take this batch's frames now; while they are
            // far behind, no more input is taken.
            self.fanout.flush();
            self.tell_metrics();
            self.fanout.room().await;
            self.stats.inbox_depth.store(
                (self.rx.len() + self.control_rx.len()) as u64,
                Ordering::Relaxed,
            );
        }
        self.finish().await;
    }

    /// Handles one command and drains outputs. True when the driver should stop.
    fn handle(&mut self, now: Now, cmd: Cmd) -> bool {
        match cmd {
            Cmd::Connect {
                session,
                tx,
                identity,
            } => {
                if self.shutting_down {
                    tx.close(CloseReason::Shutdown);
                    return false;
                }
                self.fanout.open(session, tx);
                self.stats.connections.fetch_add(1, Ordering::Relaxed);
                let input = match identity {
                    Some(identity) => Input::ConnectedAs { session, identity },
                    None => Input::Connected { session },
                };
                self.feed(now, input);
            }
            Cmd::Host(f) => f(&mut self.server, now),
            Cmd::Revoke { user, reply } => {
                let _ = reply.send(self.server.revoke_user(now, &user));
                if let (Some(broker), Ok(user)) = (
                    &self.cluster,
                    crate::ids::UserName::parse(&user, usize::MAX),
                ) {
                    broker.submit(ClusterRequest::Relay(ClusterControl::Revoke { user }));
                }
            }
            Cmd::Relayed(control) => {
                // What this causes (events, frames) is not relayed back.
                self.relaying = true;
                self.apply_relayed(now, control);
                let stop = self.drain(now);
                self.relaying = false;
                return stop;
            }
            Cmd::Input(input) => {
                let mut frame = false;
                match &input {
                    Input::Received { session, frame: f } => {
                        self.stats.frames_in.fetch_add(1, Ordering::Relaxed);
                        frame = true;
                        self.answering = Some((*session, transport::answers(f)));
                    }
                    Input::Appended { room, ticket, .. } => {
                        if let Some(owed) = self.parked.remove(&(room.clone(), *ticket)) {
                            self.settling.push(owed);
                        }
                    }
                    Input::ModerationSaved { ticket, result }
                        if self.cluster_saves.remove(ticket) =>
                    {
                        self.cluster_saved(*ticket, result);
                    }
                    Input::Disconnected { session } => self.fanout.disconnected(*session),
                    _ => {}
                }
                let started = if frame {
                    let started = self.time_frames.start();
                    self.time_frames.count();
                    started
                } else {
                    None
                };
                self.feed(now, input);
                if let Some(started) = started {
                    metrics::histogram!("chat_frame_seconds").record(started.elapsed());
                }
            }
            Cmd::Persisted { messages, result } => {
                for (room, seq) in messages {
                    if let Some(owed) = self.parked.remove(&(room.clone(), seq.0)) {
                        self.settling.push(owed);
                    }
                    let result = result.clone();
                    self.feed(now, Input::Persisted { room, seq, result });
                }
            }
            Cmd::ModerationSaved { tickets, result } => {
                for ticket in tickets {
                    let result = result.clone();
                    self.feed(now, Input::ModerationSaved { ticket, result });
                }
            }
            Cmd::Barrier(reply) => match &self.writer {
                Some(w) => w.submit(Item::Barrier(reply)),
                None if !self.cluster_saves.is_empty() => {
                    self.cluster_barriers.push(ClusterBarrier {
                        tickets: self.cluster_saves.clone(),
                        error: None,
                        reply,
                    });
                }
                None => {
                    let _ = reply.send(Ok(()));
                }
            },
            Cmd::Publish {
                room,
                user,
                body,
                client_id,
                reply,
            } => {
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                self.publishes.insert(ticket, reply);
                self.feed(
                    now,
                    Input::Publish {
                        ticket,
                        room,
                        user,
                        body,
                        client_id,
                    },
                );
            }
            Cmd::Erase { room, user, reply } => {
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                self.publishes.insert(ticket, reply);
                self.feed(now, Input::Erase { ticket, room, user });
            }
            Cmd::Retention { room, policy } => {
                if let Some(w) = &self.writer {
                    w.submit(Item::Retention(room, policy));
                }
            }
            Cmd::Pruned(rooms) => {
                for (room, first_kept) in rooms {
                    self.feed(now, Input::Pruned { room, first_kept });
                }
            }
            Cmd::Shutdown => {
                if !self.shutting_down {
                    self.shutting_down = true;
                    self.server.shutdown(now);
                }
            }
        }
        let drained = self.drain(now);
        // The answers are queued now (or were never made): rule 3 stops counting them.
        if let Some(owed) = self.answering.take() {
            self.settling.push(owed);
        }
        for (session, n) in self.settling.drain(..) {
            self.fanout.settle(session, n);
        }
        drained
    }

    /// A send of the input being handled waits for its commit or its append: its
    /// answers are owed until then.
    fn park(&mut self, room: RoomName, key: u64) {
        if let Some(owed) = self.answering.take() {
            self.parked.insert((room, key), owed);
        }
    }

    /// Commits the messages this wake-up's inputs made, on the driver itself, as one
    /// group: the answer the writer thread would send (`Cmd::Persisted`), without the two
    /// hand-offs. `None` when there is nothing to commit.
    fn commit_inline(&mut self) -> Option<Cmd> {
        let store = self.inline.as_ref()?;
        if self.inline_batch.is_empty() {
            return None;
        }
        let started = std::time::Instant::now();
        let result = guarded(|| store.append(&self.inline_batch));
        metrics::histogram!("chat_commit_seconds").record(started.elapsed());
        if let Err(e) = &result {
            let n = self.inline_batch.len();
            tracing::warn!(error = %e, messages = n, "store append failed");
            metrics::counter!("chat_store_errors_total").increment(1);
        }
        let messages = self
            .inline_batch
            .drain(..)
            .map(|m| (m.room.clone(), m.seq))
            .collect();
        Some(Cmd::Persisted { messages, result })
    }

    /// Adds what the counters gathered since the last wake-up to the metrics.
    fn tell_metrics(&mut self) {
        if self.untold_frames_out > 0 {
            metrics::counter!("chat_frames_out_total")
                .increment(std::mem::take(&mut self.untold_frames_out));
        }
        if self.untold_messages > 0 {
            metrics::counter!("chat_messages_total")
                .increment(std::mem::take(&mut self.untold_messages));
        }
    }

    fn feed(&mut self, now: Now, input: Input) {
        if let Err(e) = self.server.handle_input(now, input) {
            tracing::error!(error = %e, "chat driver misused the core");
        }
    }

    /// Carries out every output. True once the core has drained after shutdown.
    fn drain(&mut self, now: Now) -> bool {
        let mut drained = false;
        let started = self.time_drains.start();
        let mut fanned_out = 0u64;
        loop {
            let mut out = 0u64;
            while let Some(output) = self.server.poll_output() {
                match output {
                    Output::Send { to, frame } => {
                        out += self.fanout.send(to, frame, &mut self.deferred);
                    }
                    Output::Broadcast { to, frame } => {
                        out += self.fanout.broadcast(to, &frame, &mut self.deferred);
                    }
                    Output::Close { session, reason } => self.fanout.close(session, reason),
                    Output::SaveModeration { ticket, change } if self.cluster.is_some() => {
                        self.save_in_cluster(ticket, change);
                    }
                    Output::SaveModeration { ticket, change } => match &self.writer {
                        Some(w) => w.submit(Item::Moderation(ticket, change)),
                        None => self.deferred.push(Input::ModerationSaved {
                            ticket,
                            result: Err(StoreError::Unavailable("no store".into())),
                        }),
                    },
                    Output::SaveReadMarker { user, room, seq } => {
                        if let Some(w) = &self.writer {
                            w.submit(Item::ReadMarker(user, room, seq));
                        }
                    }
                    Output::Persist(msg) if self.inline.is_some() => {
                        if self.answering.is_some() {
                            let (room, seq) = (msg.room.clone(), msg.seq.0);
                            self.park(room, seq);
                        }
                        self.inline_batch.push(msg);
                    }
                    Output::Persist(msg) => match &self.writer {
                        Some(w) => {
                            if self.answering.is_some() {
                                let (room, seq) = (msg.room.clone(), msg.seq.0);
                                w.submit(Item::Message(msg));
                                self.park(room, seq);
                            } else {
                                w.submit(Item::Message(msg));
                            }
                        }
                        None => self.deferred.push(Input::Persisted {
                            room: msg.room.clone(),
                            seq: msg.seq,
                            result: Err(StoreError::Unavailable("no store".into())),
                        }),
                    },
                    Output::LoadHistory {
                        ticket,
                        room,
                        before,
                        limit,
                    } => self.load_history(ticket, room, before, limit),
                    Output::Authenticate {
                        session,
                        name,
                        credentials,
                    } => self.authenticate(session, name, credentials),
                    Output::Published { ticket, result } => {
                        if let Some(reply) = self.publishes.remove(&ticket) {
                            let _ = reply.send(result);
                        }
                    }
                    // Single-node durable mode: a room unloaded while idle, read again
                    // from the store. In cluster mode the broker loads rooms.
                    Output::LoadRoom { room } if self.cluster.is_none() => self.load_room(room),
                    // The core asks these in cluster mode only, which has a broker.
                    o @ (Output::Append { .. }
                    | Output::LoadRoom { .. }
                    | Output::FetchLog { .. }
                    | Output::FetchModeration { .. }
                    | Output::UnloadRoom { .. }
                    | Output::Presence { .. }
                    | Output::FetchPresence { .. }
                    | Output::ClaimName { .. }
                    | Output::ReleaseName { .. }
                    | Output::LogRegressed { .. }
                    | Output::ShareRead { .. }
                    | Output::LoadReadMarkers { .. }
                    | Output::Typing { .. }) => {
                        if let (Some(_), Output::Append { room, ticket, .. }) = (&self.cluster, &o)
                            && self.answering.is_some()
                        {
                            let (room, ticket) = (room.clone(), *ticket);
                            self.park(room, ticket);
                        }
                        match (&self.cluster, ClusterRequest::from_output(o)) {
                            (Some(broker), Ok(request)) => broker.submit(request),
                            _ => tracing::error!("cluster output without a cluster broker"),
                        }
                    }
                    Output::Event(event) => self.on_event(event),
                    Output::Drained => drained = true,
                }
            }
            // Actions that changed no stored state (a kick, a revocation): published now.
            if let Some(broker) = &self.cluster {
                for control in self.held_relays.drain(..) {
                    broker.submit(ClusterRequest::Relay(control));
                }
            }
            self.stats.frames_out.fetch_add(out, Ordering::Relaxed);
            self.untold_frames_out += out;
            fanned_out += out;
            if self.deferred.is_empty() {
                break;
            }
            for input in std::mem::take(&mut self.deferred) {
                self.feed(now, input);
            }
        }
        if fanned_out > 0 {
            self.time_drains.count();
            if let Some(started) = started {
                // Carrying out one batch of outputs: every frame into its session's queue.
                metrics::histogram!("chat_fanout_seconds").record(started.elapsed());
            }
        }
        self.stats
            .rooms
            .store(self.server.room_count() as u64, Ordering::Relaxed);
        drained
    }

    /// Carries out an action another server relayed, as that server did (the same
    /// moderator named in the frames).
    fn apply_relayed(&mut self, now: Now, control: ClusterControl) {
        use crate::server::ModOp;
        let server = &mut self.server;
        match control {
            ClusterControl::Revoke { user } => {
                server.revoke_user(now, user.as_str());
            }
            ClusterControl::Moderated {
                room,
                user,
                action,
                reason,
                minutes,
                role,
                by,
            } => {
                let reason = reason.unwrap_or_default();
                let length = minutes.map(|m| Duration::from_secs(m.saturating_mul(60)));
                let op = match action {
                    ModAction::Kick => ModOp::Kick { reason },
                    ModAction::Ban => ModOp::Ban { reason, length },
                    ModAction::Unban => ModOp::Unban,
                    ModAction::Mute => ModOp::Mute { reason, length },
                    ModAction::Unmute => ModOp::Unmute,
                    ModAction::SetRole => ModOp::SetRole(role.unwrap_or_default()),
                    _ => return,
                };
                server.moderate(Some(now), by, &room, Some(&user), op, None);
            }
            ClusterControl::Topic { room, topic, by } => {
                server.moderate(Some(now), by, &room, None, ModOp::Topic(topic), None);
            }
            ClusterControl::SlowMode { room, seconds, by } => {
                server.moderate(Some(now), by, &room, None, ModOp::SlowMode(seconds), None);
            }
        }
    }

    /// Cluster mode: a moderation change goes into the shared log, with the action
    /// that made it to publish once it is there (so that a server that hears the
    /// action and then reads the log finds the change). A change a relayed action
    /// made here is not written again: the server that acted wrote it.
    fn save_in_cluster(&mut self, ticket: u64, change: crate::ModerationChange) {
        let relay = self.held_relays.pop_front();
        match &self.cluster {
            Some(broker) if !self.relaying => {
                self.cluster_saves.insert(ticket);
                broker.submit(ClusterRequest::SaveModeration {
                    ticket,
                    change,
                    relay,
                });
            }
            _ => self.deferred.push(Input::ModerationSaved {
                ticket,
                result: Ok(()),
            }),
        }
    }

    /// Cluster mode: the broker's answer for a moderation change; the `Hub` calls that
    /// waited for it are answered once every change before them is.
    fn cluster_saved(&mut self, ticket: u64, result: &Result<(), StoreError>) {
        for barrier in &mut self.cluster_barriers {
            if barrier.tickets.remove(&ticket)
                && let Err(e) = result
            {
                barrier.error.get_or_insert_with(|| e.clone());
            }
        }
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.cluster_barriers)
            .into_iter()
            .partition(|b| b.tickets.is_empty());
        self.cluster_barriers = waiting;
        for b in done {
            let _ = b.reply.send(b.error.map_or(Ok(()), Err));
        }
    }

    /// A moderation event of this server, for the other servers to carry out too.
    /// The end of a timed ban or mute is not relayed: every server ends it by itself.
    fn relay(&mut self, event: &Event) {
        if self.cluster.is_none() || self.relaying {
            return;
        }
        if let Event::Moderated {
            action: ModAction::Unban | ModAction::Unmute,
            reason: Some(reason),
            by: None,
            ..
        } = event
            && reason == crate::EXPIRED_REASON
        {
            return;
        }
        let control = match event {
            Event::Moderated {
                room,
                user,
                action,
                reason,
                minutes,
                role,
                by,
            } => ClusterControl::Moderated {
                room: room.clone(),
                user: user.clone(),
                action: *action,
                reason: reason.clone(),
                minutes: *minutes,
                role: *role,
                by: by.clone(),
            },
            Event::TopicChanged { room, topic, by } => ClusterControl::Topic {
                room: room.clone(),
                topic: topic.clone(),
                by: by.clone(),
            },
            Event::SlowModeChanged { room, seconds, by } => ClusterControl::SlowMode {
                room: room.clone(),
                seconds: *seconds,
                by: by.clone(),
            },
            _ => return,
        };
        // Published with the change it makes (`save_in_cluster`), or at the drain's end.
        self.held_relays.push_back(control);
    }

    fn on_event(&mut self, event: Event) {
        self.relay(&event);
        match &event {
            Event::MessagePosted(m) if m.kind.is_message() => {
                self.stats.messages.fetch_add(1, Ordering::Relaxed);
                self.untold_messages += 1;
            }
            Event::MessagePosted(m) => {
                metrics::counter!("chat_changes_total", "kind" => m.kind.as_str()).increment(1);
            }
            Event::Rejected { code, .. } => {
                metrics::counter!("chat_errors_total", "code" => code.as_str()).increment(1);
            }
            Event::SessionClosed {
                reason: Some(reason),
                ..
            } => {
                metrics::counter!("chat_server_closes_total", "reason" => reason.as_str())
                    .increment(1);
            }
            _ => {}
        }
        self.last_event += 1;
        let stats = &self.stats;
        self.streams.publish(self.last_event, &event, |missed| {
            stats.events_missed.fetch_add(missed, Ordering::Relaxed);
            metrics::counter!("chat_host_events_missed_total").increment(missed);
        });
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(event);
        }
    }

    fn load_history(
        &mut self,
        ticket: u64,
        room: RoomName,
        before: Option<crate::ids::Seq>,
        limit: usize,
    ) {
        if let Some(broker) = &self.cluster {
            // Cluster mode: the shared log holds the history.
            broker.submit(ClusterRequest::LoadHistory {
                ticket,
                room,
                before,
                limit,
            });
            return;
        }
        let control = self.control.clone();
        let Some(store) = self.store.clone() else {
            let result = Err(StoreError::Unavailable("no store".into()));
            self.deferred.push(Input::HistoryLoaded { ticket, result });
            return;
        };
        tokio::task::spawn_blocking(move || {
            let result = store.page(&room, before, limit);
            let _ = control.send(Cmd::Input(Input::HistoryLoaded { ticket, result }));
        });
    }

    /// A room that left memory idle is needed again: its last seq and window from the
    /// store, read off the driver's task.
    fn load_room(&mut self, room: RoomName) {
        let control = self.control.clone();
        let Some(store) = self.store.clone() else {
            let result = Err(StoreError::Unavailable("no store".into()));
            self.deferred.push(Input::RoomLoaded { room, result });
            return;
        };
        let window = self.server.config().history_window;
        tokio::task::spawn_blocking(move || {
            let result = store.page(&room, None, window).map(|(recent, has_more)| {
                crate::server::LoadedRoom {
                    last_seq: recent.last().map_or(crate::ids::Seq(0), |m| m.seq),
                    recent,
                    complete: !has_more,
                    ..Default::default()
                }
            });
            // What retention pruned, read after the page (a step in between only makes
            // it newer than the page's oldest entries, which the engine then drops), and
            // told first: the room's gap is known before what waits for the room runs.
            if result.is_ok()
                && let Ok(Some(first_kept)) = store.first_kept(&room)
            {
                let _ = control.send(Cmd::Pruned(vec![(room.clone(), first_kept)]));
            }
            let _ = control.send(Cmd::Input(Input::RoomLoaded { room, result }));
        });
    }

    fn authenticate(&mut self, session: SessionId, name: String, credentials: Option<String>) {
        let control = self.control.clone();
        let Some(auth) = self.authenticator.clone() else {
            let result = Err(AuthRefused::new("no identity hook configured"));
            self.deferred.push(Input::Authenticated { session, result });
            return;
        };
        tokio::spawn(async move {
            let result = auth(name, credentials).await;
            let _ = control.send(Cmd::Input(Input::Authenticated { session, result }));
        });
    }

    async fn finish(mut self) {
        // (The core says it has drained only once no message waits for its commit, so
        // this finds nothing; were it to, the messages are answered, not dropped.)
        while let Some(persisted) = self.commit_inline() {
            self.handle(now(), persisted);
        }
        self.tell_metrics();
        // Close whatever the core did not (it closes every session on shutdown).
        let fanout =
            std::mem::replace(&mut self.fanout, fanout::Fanout::inline(self.stats.clone()));
        fanout.finish().await;
        if let Some(writer) = self.writer.take() {
            writer.stop().await;
        }
        if let Some(broker) = self.cluster.take() {
            broker.stop().await;
        }
        if let Some(store) = self.store.take() {
            match tokio::task::spawn_blocking(move || store.close()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "closing the store failed"),
                Err(e) => tracing::warn!(error = %e, "closing the store panicked"),
            }
        }
        for (_, reply) in self.publishes.drain() {
            let _ = reply.send(Err(ErrorCode::ShuttingDown));
        }
    }
}

fn now() -> Now {
    Now {
        mono: Instant::now(),
        utc: Utc::now(),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the writer thread is handed.
enum Item {
    Message(Arc<Message>),
    Moderation(u64, ModerationChange),
    ReadMarker(crate::ids::UserName, RoomName, crate::ids::Seq),
    Retention(RoomName, Retention),
    Barrier(oneshot::Sender<Result<(), StoreError>>),
}

/// Retention: how often the writer starts a pass over the rooms, and how many entries
/// one step deletes at most (a step runs between two group commits: a send waits for
/// one step at most, never for a big delete).
const PRUNE_EVERY: Duration = Duration::from_secs(2);
const PRUNE_BUDGET: usize = 500;

/// The store's writer thread: takes every message and moderation change submitted while
/// the previous commit ran and commits them as one group (messages, then changes, then
/// read markers), then reports each to the driver, and answers the barriers of the
/// group. Between groups it enforces retention, one small step at a time.
struct Writer {
    tx: Mutex<Option<std::sync::mpsc::Sender<Item>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Runs a store call, turning a panic into a failure instead of killing the thread,
/// which would leave every later item pending forever (and a graceful shutdown
/// waiting for them).
fn guarded<T>(f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(StoreError::Unavailable("the store panicked".into())))
}

/// The rooms' retention policies as the writer holds them.
struct Policies {
    default: Option<Retention>,
    rooms: HashMap<RoomName, Retention>,
}

impl Policies {
    fn of(&self, room: &RoomName) -> Option<Retention> {
        self.rooms
            .get(room)
            .copied()
            .or(self.default)
            .filter(|p| !p.keeps_all())
    }

    fn any(&self) -> bool {
        self.default.is_some_and(|p| !p.keeps_all()) || self.rooms.values().any(|p| !p.keeps_all())
    }
}

impl Writer {
    fn start(
        store: Arc<dyn Store>,
        control: mpsc::UnboundedSender<Cmd>,
        default: Option<Retention>,
        rooms: Vec<(RoomName, Retention)>,
    ) -> Writer {
        let (tx, rx) = std::sync::mpsc::channel::<Item>();
        let mut policies = Policies {
            default,
            rooms: rooms.into_iter().collect(),
        };
        let thread = std::thread::Builder::new()
            .name("chat-store-writer".into())
            .spawn(move || {
                // The moderation commits' outcome since the last barrier answered.
                let mut since_barrier: Result<(), StoreError> = Ok(());
                // Retention: when the next pass is due, and whether the last step
                // stopped for its budget (then the next one runs after the next group).
                let mut prune_at = Instant::now();
                let mut more = false;
                loop {
                    let first = if policies.any() {
                        let wait = if more {
                            Duration::ZERO
                        } else {
                            prune_at.saturating_duration_since(Instant::now())
                        };
                        match rx.recv_timeout(wait) {
                            Ok(item) => Some(item),
                            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                        }
                    } else {
                        match rx.recv() {
                            Ok(item) => Some(item),
                            Err(_) => break,
                        }
                    };
                    if let Some(first) = first {
                        let mut items = vec![first];
                        while let Ok(more) = rx.try_recv() {
                            items.push(more);
                            if items.len() >= 4096 {
                                break;
                            }
                        }
                        commit_group(&*store, &control, items, &mut policies, &mut since_barrier);
                    }
                    if policies.any() && (more || Instant::now() >= prune_at) {
                        let started = std::time::Instant::now();
                        let result = guarded(|| {
                            store.prune(&|room| policies.of(room), Utc::now(), PRUNE_BUDGET)
                        });
                        metrics::histogram!("chat_prune_seconds").record(started.elapsed());
                        match result {
                            Ok(done) => {
                                more = done.more;
                                if !done.rooms.is_empty() {
                                    let _ = control.send(Cmd::Pruned(done.rooms));
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "retention failed");
                                metrics::counter!("chat_store_errors_total").increment(1);
                                more = false;
                            }
                        }
                        if !more {
                            prune_at = Instant::now() + PRUNE_EVERY;
                        }
                    }
                }
            })
            .expect("spawn the store writer thread");
        Writer {
            tx: Mutex::new(Some(tx)),
            thread: Some(thread),
        }
    }

    fn submit(&self, item: Item) {
        if let Some(tx) = self.tx.lock().expect("not poisoned").as_ref() {
            let _ = tx.send(item);
        }
    }

    /// Commits what is queued and stops the thread.
    async fn stop(mut self) {
        self.tx.lock().expect("not poisoned").take();
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// One group of the writer: messages in one commit, then moderation changes, retention
/// policies and read markers; the driver told, the barriers answered.
fn commit_group(
    store: &dyn Store,
    control: &mpsc::UnboundedSender<Cmd>,
    items: Vec<Item>,
    policies: &mut Policies,
    since_barrier: &mut Result<(), StoreError>,
) {
    let mut batch = Vec::new();
    let mut changes = Vec::new();
    let mut tickets = Vec::new();
    let mut markers = Vec::new();
    let mut retention = Vec::new();
    let mut barriers = Vec::new();
    for item in items {
        match item {
            Item::Message(m) => batch.push(m),
            Item::Moderation(ticket, change) => {
                tickets.push(ticket);
                changes.push(change);
            }
            Item::ReadMarker(user, room, seq) => markers.push((user, room, seq)),
            Item::Retention(room, policy) => retention.push((room, policy)),
            Item::Barrier(reply) => barriers.push(reply),
        }
    }
    if !batch.is_empty() {
        let started = std::time::Instant::now();
        // The read markers ride in the messages' transaction: no commit of their own.
        let result = guarded(|| store.append_with_markers(&batch, &markers));
        metrics::histogram!("chat_commit_seconds").record(started.elapsed());
        if let Err(e) = &result {
            tracing::warn!(error = %e, messages = batch.len(), "store append failed");
            metrics::counter!("chat_store_errors_total").increment(1);
        }
        let messages = batch.iter().map(|m| (m.room.clone(), m.seq)).collect();
        let _ = control.send(Cmd::Persisted { messages, result });
    }
    if !changes.is_empty() {
        let result = guarded(|| store.save_moderation(&changes));
        if let Err(e) = &result {
            tracing::warn!(error = %e, changes = changes.len(), "storing moderation failed");
            metrics::counter!("chat_store_errors_total").increment(1);
            *since_barrier = result.clone();
        }
        let _ = control.send(Cmd::ModerationSaved { tickets, result });
    }
    for (room, policy) in retention {
        match guarded(|| store.save_retention(&room, Some(policy))) {
            Ok(()) => {
                policies.rooms.insert(room, policy);
            }
            Err(e) => {
                tracing::warn!(error = %e, room = %room, "storing a retention policy failed");
                metrics::counter!("chat_store_errors_total").increment(1);
                *since_barrier = Err(e);
            }
        }
    }
    if batch.is_empty()
        && !markers.is_empty()
        && let Err(e) = guarded(|| store.save_read_markers(&markers))
    {
        // Not refused to anyone: a lost marker shows a few messages as unread again.
        tracing::warn!(error = %e, markers = markers.len(), "storing read markers failed");
        metrics::counter!("chat_store_errors_total").increment(1);
    }
    for reply in barriers {
        let _ = reply.send(std::mem::replace(since_barrier, Ok(())));
    }
}

/// Waits a bounded time for the hub to stop.
pub async fn shutdown_within(hub: &Hub, limit: Duration) -> bool {
    tokio::time::timeout(limit, hub.shutdown()).await.is_ok()
}
