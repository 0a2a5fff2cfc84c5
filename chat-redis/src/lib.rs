//! # chat-redis
//!
//! The Redis layer of the chat engine's cluster mode (`docs/CLUSTER.md`): what several
//! chat servers share through one Redis, each operation one atomic Lua script or one
//! command, every key of a room under the room's hash tag (so one script touches one
//! slot, and the layout works on Redis Cluster and Valkey unchanged).
//!
//! - [`RedisLog::commit`]: one entry into a room's log (a message, or an edit, delete or
//!   reaction checked against its target's current state, which the same script
//!   updates; a refusal is [`Error::Refused`]): idempotency check, epoch check,
//!   the next seq (no holes: a seq exists only with its entry), the entry appended to the
//!   room's stream under that seq, the doorbell published, all in one script.
//! - [`RedisLog::read_after`] / [`RedisLog::read_latest`]: the exact suffix after a seq
//!   (gap repair), or the latest window with the room's presence (loading a room).
//! - [`RedisLog::presence`] / [`RedisLog::reap`]: a user's sessions counted over nodes,
//!   announced once when the count leaves or reaches zero; a dead node's share undone.
//! - [`RedisLog::heartbeat`] / [`RedisLog::dead_nodes`]: node liveness.
//! - [`RedisLog::cluster_epoch`] / [`RedisLog::replace_epoch`]: the epoch that tells
//!   clients when seqs are no longer comparable.
//! - [`RedisLog::share_read`] / [`RedisLog::read_markers`]: a user's read markers, forward
//!   only, announced to the other nodes holding the room.
//! - [`RedisLog::claim_name`], [`RedisLog::shared_secret`]: anonymous names held
//!   cluster-wide, one token secret for every node.
//! - [`RedisLog::save_moderation`] / [`RedisLog::read_moderation`]: each room's
//!   moderation state (roles, bans and mutes with their ends, topic, slow mode), the
//!   truth every node reads when it loads the room and at each catch-up.
//! - [`RedisLog::set_retention`] / [`RedisLog::retain`]: each room's retention policy,
//!   and one bounded, atomic step of enforcing it (the stream trimmed by count and age,
//!   the trimmed messages' state dropped, the first kept seq recorded and rung);
//!   [`RedisLog::scan_rooms`] and [`RedisLog::take_sweep`] for the broker's sweeper.
//! - [`Subscriber`]: the node's doorbell listener, which re-subscribes after every
//!   reconnect and proves with a probe through its own channel that its subscriptions
//!   deliver; a full queue marks a room behind instead of dropping silently.
//! - [`RedisBroker`]: the runtime broker that runs a chat-core `Hub` in cluster mode
//!   over the above (`HubConfig::cluster`).
//! - [`Doorbell::parse`]: what arrives on a room's channel, checked; anything else is a
//!   [`Foreign`] payload to count and skip.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use chat_core::runtime::{Hub, HubConfig};
//! use chat_redis::{BrokerOptions, RedisBroker};
//!
//! let broker = RedisBroker::connect("redis://127.0.0.1:6379/", BrokerOptions::default()).await?;
//! let hub = Hub::spawn(HubConfig { cluster: Some(Arc::new(broker)), ..HubConfig::default() }).await?;
//! # let _ = hub; Ok(()) }
//! ```
//!
//! Every call has a deadline ([`Options::deadline`]); the connection reconnects by itself
//! (redis' `ConnectionManager`, replaced by a new one after a timeout: a connection
//! whose bytes stop flowing never heals otherwise). This crate holds no chat rules.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod broker;
mod conn;
mod doorbell;
mod keys;
mod moderation;
mod subscriber;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManagerConfig;
use redis::{Script, Value};

pub use broker::{BrokerOptions, RedisBroker};
pub use doorbell::{Doorbell, Foreign, parse_control};
pub use keys::Keys;
pub use subscriber::{Bell, Subscriber, SubscriberOptions};

/// How a [`RedisLog`] talks to Redis.
#[derive(Debug, Clone)]
pub struct Options {
    /// Prefix of every key and channel (`chat`): several apps can share one Redis.
    pub prefix: String,
    /// Entries a room's stream keeps at least (`XADD MAXLEN ~`); older ones are trimmed.
    pub window: usize,
    /// How long a client message id is remembered for idempotent resends.
    pub idempotency_ttl: Duration,
    /// Every call fails with a timeout after this long without an answer.
    pub deadline: Duration,
    /// Connecting (and reconnecting) gives up after this long.
    pub connect_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            prefix: "chat".into(),
            window: 1000,
            idempotency_ttl: Duration::from_secs(3600),
            deadline: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// What went wrong with a call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Redis did not answer in time, the connection is down, or it refused the call.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The room's log belongs to a newer epoch than the caller's: the caller missed an
    /// epoch change and must refresh before posting.
    #[error("the room's log is at a newer epoch ({0})")]
    StaleEpoch(Epoch),
    /// Redis answered something our scripts never return (another program on our keys).
    #[error("unexpected reply from redis: {0}")]
    Malformed(String),
    /// A change (or a reply) broke a rule checked against its target's current state:
    /// the protocol's error code (`gone`, `not_author`, `no_such_message`,
    /// `edit_window_passed`, `limit_reached`) and why. Nothing was written.
    #[error("refused ({code}): {why}")]
    Refused {
        /// The error code, as on the wire.
        code: String,
        /// Why, in words.
        why: String,
    },
}

impl Error {
    /// Whether trying again later may succeed (the connection, a deadline, a busy or
    /// loading Redis), as opposed to an answer that will not change.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Redis(e) => {
                e.is_timeout()
                    || e.is_io_error()
                    || e.is_connection_dropped()
                    || matches!(
                        e.kind(),
                        redis::ErrorKind::Server(
                            redis::ServerErrorKind::BusyLoading
                                | redis::ServerErrorKind::TryAgain
                                | redis::ServerErrorKind::ClusterDown
                                | redis::ServerErrorKind::MasterDown
                        )
                    )
            }
            Error::StaleEpoch(_) | Error::Malformed(_) | Error::Refused { .. } => false,
        }
    }
}

/// A cluster epoch: `<13-digit milliseconds since 1970>-<16 hex digits>`. Later epochs
/// compare greater (as strings too, which is how the scripts compare them).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(String);

impl Epoch {
    /// A new epoch, later than any made before it on a clock that does not go back.
    ///
    /// # Panics
    /// If the system has no randomness (getrandom fails), which no supported OS does.
    #[must_use]
    pub fn new() -> Epoch {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).expect("the OS provides randomness");
        Epoch(format!("{ms:013}-{:016x}", u64::from_le_bytes(r)))
    }

    /// The epoch's text, as clients see it in `welcome`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn parse(s: String) -> Result<Epoch, Error> {
        let ok = s.len() == 30
            && s.as_bytes()[13] == b'-'
            && s[..13].bytes().all(|b| b.is_ascii_digit())
            && s[14..].bytes().all(|b| b.is_ascii_hexdigit());
        if ok {
            Ok(Epoch(s))
        } else {
            Err(Error::Malformed(format!("not an epoch: {s:.40?}")))
        }
    }
}

impl Default for Epoch {
    fn default() -> Self {
        Epoch::new()
    }
}

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An entry to commit: a message, or a change to one.
#[derive(Debug, Clone, Copy)]
pub struct Post<'a> {
    /// Its author (of a change: who makes it).
    pub user: &'a str,
    /// Its text (of an edit: the new text; empty for a delete or a reaction).
    pub body: &'a str,
    /// The client's message id, for idempotent resends (`None`: every commit posts).
    pub client_id: Option<&'a str>,
    /// A change's kind, target and rules, or a reply's target (`None`: a plain
    /// message). The script checks a change against the target's current state and
    /// updates that state in the same step ([`Error::Refused`] when a rule says no).
    pub detail: Option<&'a chat_core::EntryDetail>,
}

impl<'a> Post<'a> {
    /// A plain message.
    #[must_use]
    pub fn message(user: &'a str, body: &'a str, client_id: Option<&'a str>) -> Post<'a> {
        Post {
            user,
            body,
            client_id,
            detail: None,
        }
    }
}

/// What [`RedisLog::commit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The message's seq in its room.
    pub seq: u64,
    /// Its time, milliseconds since 1970 (Redis' clock; never below the room's previous).
    pub ts_ms: i64,
    /// True when the client id was already committed: nothing new was posted and `seq`
    /// and `ts_ms` are the original's.
    pub duplicate: bool,
    /// The epoch of the room's log.
    pub epoch: Epoch,
}

/// One entry of a room's log: a message (as read, in its current state), or a change.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    /// Its seq.
    pub seq: u64,
    /// Its time, milliseconds since 1970.
    pub ts_ms: i64,
    /// Its author.
    pub user: String,
    /// Its text, as committed.
    pub body: String,
    /// The author's message id, if it sent one.
    pub client_id: Option<String>,
    /// What it is (a message unless a change's kind is given).
    pub kind: chat_core::protocol::EntryKind,
    /// A change: the seq of the message it changes.
    pub target: Option<u64>,
    /// A reaction: the emoji.
    pub emoji: Option<String>,
    /// A reaction: added or taken back.
    pub on: Option<bool>,
    /// A message: the seq it answers.
    pub reply_to: Option<u64>,
    /// As read from the log (not in doorbells): a message's current state when it was
    /// ever changed; an edit's target's (whose deletion takes the edit's text too).
    pub state: Option<Box<MessageState>>,
}

/// The current state of a changed message, as `commit.lua` keeps it beside the stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageState {
    /// The text after the last edit (`None`: never edited, the committed text).
    pub body: Option<String>,
    /// When it was last edited, milliseconds since 1970.
    pub edited_ms: Option<i64>,
    /// Deleted: a tombstone.
    pub deleted: bool,
    /// Its reactions: each emoji (in first-reaction order) with who reacted, in order.
    pub reactions: Vec<(String, Vec<String>)>,
    /// The seq of the last change applied.
    pub rev: Option<u64>,
}

impl MessageState {
    /// Parses the JSON `commit.lua` writes (`b`, `e`, `d`, `r`, `v`).
    ///
    /// # Errors
    /// [`Error::Malformed`] for anything else.
    pub fn parse(json: &str) -> Result<MessageState, Error> {
        use serde_json::Value;
        let bad = || Error::Malformed(format!("message state {json:.80?}"));
        let v: Value = serde_json::from_str(json).map_err(|_| bad())?;
        let obj = v.as_object().ok_or_else(bad)?;
        let int = |k: &str| obj.get(k).and_then(Value::as_f64).map(|f| f as i64);
        let mut reactions = Vec::new();
        // An empty Lua table is encoded as `{}`: no reactions either way.
        if let Some(Value::Array(list)) = obj.get("r") {
            for r in list {
                let [emoji, users] = r.as_array().map(Vec::as_slice).ok_or_else(bad)? else {
                    return Err(bad());
                };
                let emoji = emoji.as_str().ok_or_else(bad)?.to_owned();
                let users = match users {
                    Value::Array(us) => us
                        .iter()
                        .map(|u| u.get(1).and_then(Value::as_str).map(str::to_owned))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(bad)?,
                    _ => Vec::new(),
                };
                reactions.push((emoji, users));
            }
        }
        Ok(MessageState {
            body: obj.get("b").and_then(Value::as_str).map(str::to_owned),
            edited_ms: int("e"),
            deleted: int("d").is_some_and(|d| d != 0),
            reactions,
            rev: int("v").and_then(|v| u64::try_from(v).ok()),
        })
    }
}

/// A read of a room's log and meta, taken at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogRead {
    /// The epoch of the room's log (`None`: the room has no log).
    pub epoch: Option<Epoch>,
    /// The room's last seq.
    pub top: u64,
    /// The room's presence version (how many presence announcements so far).
    pub pv: u64,
    /// Entries, in seq order.
    pub entries: Vec<Entry>,
    /// Who is present and with how many sessions over all nodes (only when asked for).
    pub users: Vec<(String, u64)>,
    /// The oldest seq the log still keeps when older ones are gone (trimmed by
    /// retention or by the stream's window cap); 0 when nothing is gone.
    pub first: u64,
}

/// What one step of retention did ([`RedisLog::retain`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retained {
    /// Entries trimmed by this step.
    pub trimmed: u64,
    /// The oldest seq the room's log keeps (0: the room has no log).
    pub first: u64,
    /// The step stopped at its budget: more is due (call again).
    pub more: bool,
}

/// A presence announcement: a user's first session anywhere entered the room, or the
/// last one left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announcement {
    /// `user_joined`.
    Joined(String),
    /// `user_left`.
    Left(String),
}

/// What a presence change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceChange {
    /// Announcements made (each also published on the room's channel), in order.
    pub announced: Vec<Announcement>,
    /// The room's presence version afterwards.
    pub pv: u64,
}

/// A session entering or leaving a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// One more session of the user in the room on this node.
    Enter,
    /// One fewer.
    Leave,
}

/// The scripts, hashed once (EVALSHA, with a load on NOSCRIPT after a Redis restart).
#[derive(Debug)]
struct Scripts {
    commit: Script,
    read: Script,
    presence: Script,
    claim: Script,
    epoch: Script,
    moderation: Script,
    read_marker: Script,
    retain: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            commit: Script::new(include_str!("lua/commit.lua")),
            read: Script::new(include_str!("lua/read.lua")),
            presence: Script::new(include_str!("lua/presence.lua")),
            claim: Script::new(include_str!("lua/claim.lua")),
            epoch: Script::new(include_str!("lua/epoch.lua")),
            moderation: Script::new(include_str!("lua/moderation.lua")),
            read_marker: Script::new(include_str!("lua/read_marker.lua")),
            retain: Script::new(include_str!("lua/retain.lua")),
        }
    }
}

/// A connection to the Redis a cluster shares, with the operations of `docs/CLUSTER.md`.
/// Cheap to clone: clones share one multiplexed, reconnecting connection.
#[derive(Clone)]
pub struct RedisLog {
    conn: conn::Conn,
    scripts: std::sync::Arc<Scripts>,
    keys: Keys,
    options: Options,
    writers: std::sync::Arc<std::sync::Mutex<Writers>>,
}

/// The (user key, room) pairs this process already recorded in the users' `wrote` sets
/// under the current epoch (so a send in steady state costs no extra command).
#[derive(Debug, Default)]
struct Writers {
    epoch: String,
    seen: std::collections::HashSet<(String, String)>,
}

/// At most this many pairs are remembered; then the memory starts again (a pair
/// recorded twice costs one `SADD` that changes nothing).
const WRITERS_REMEMBERED: usize = 4096;

impl std::fmt::Debug for RedisLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLog")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl RedisLog {
    /// Connects (`redis://host:port/db`); an unreachable Redis is an error after
    /// [`Options::connect_timeout`].
    ///
    /// # Errors
    /// A bad URL, or Redis not reachable in time.
    pub async fn connect(url: &str, options: Options) -> Result<RedisLog, Error> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(options.deadline))
            .set_connection_timeout(Some(options.connect_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = conn::Conn::connect(client, config).await?;
        Ok(RedisLog {
            conn,
            scripts: std::sync::Arc::new(Scripts::new()),
            keys: Keys::new(&options.prefix),
            options,
            writers: std::sync::Arc::default(),
        })
    }

    /// The key and channel names in use.
    #[must_use]
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Commits one entry to `room`'s log under `epoch` (see the crate docs). A retry
    /// after an error is safe when the post has a client id: if the first attempt ran,
    /// the retry returns its seq with `duplicate: true`.
    ///
    /// # Errors
    /// [`Error::StaleEpoch`] when the log is at a newer epoch; Redis errors otherwise
    /// (then nothing was acked; with a client id a retry is safe).
    pub async fn commit(
        &mut self,
        room: &str,
        epoch: &Epoch,
        post: Post<'_>,
    ) -> Result<Committed, Error> {
        let mut out = self
            .commit_batch(room, epoch, std::slice::from_ref(&post))
            .await?;
        out.pop()
            .unwrap_or_else(|| Err(Error::Malformed("no reply to a commit".into())))
    }

    /// The keys and arguments of one `commit.lua` run (see the script's header).
    fn commit_args(
        &self,
        inv: &mut redis::ScriptInvocation<'_>,
        room: &str,
        epoch: &Epoch,
        post: &Post<'_>,
    ) {
        let cid = post.client_id.unwrap_or("");
        let seq = |s: Option<chat_core::Seq>| s.map_or(String::new(), |s| s.0.to_string());
        let d = post.detail.cloned().unwrap_or_default();
        let kind = if d.kind.is_message() {
            ""
        } else {
            d.kind.as_str()
        };
        inv.key(self.keys.meta(room))
            .key(self.keys.log(room))
            .key(self.keys.idempotency(room, post.user, cid))
            .key(self.keys.state(room))
            .arg(epoch.as_str())
            .arg(post.user)
            .arg(post.body)
            .arg(cid)
            .arg(self.options.window)
            .arg(self.options.idempotency_ttl.as_secs().max(1))
            .arg(self.keys.channel(room))
            .arg(kind)
            .arg(seq(d.target))
            .arg(d.emoji.as_deref().unwrap_or(""))
            .arg(if d.on.unwrap_or(true) { "1" } else { "0" })
            .arg(seq(d.reply_to))
            .arg(u64::try_from(d.rules.edit_window.as_millis()).unwrap_or(u64::MAX))
            .arg(d.rules.max_reactions)
            .arg(if d.rules.any_author { "1" } else { "0" })
            .arg(chat_core::fold(post.user));
    }

    /// Commits several messages to `room`'s log in one pipeline (one round trip), in
    /// order: each its own script run, as [`RedisLog::commit`], with its own outcome.
    ///
    /// Each author's `wrote` set ([`Keys::wrote`], read by [`RedisLog::rooms_of`]) gets
    /// the room in the same pipeline, before the scripts run, so no committed entry is
    /// ever missing from it (a refused one may be recorded: erasing there finds nothing).
    /// A pair already recorded by this process under the same epoch is not sent again.
    ///
    /// # Errors
    /// The pipeline as a whole failed (the connection, the deadline): then any of the
    /// posts may or may not have been committed, and none was acked.
    pub async fn commit_batch(
        &mut self,
        room: &str,
        epoch: &Epoch,
        posts: &[Post<'_>],
    ) -> Result<Vec<Result<Committed, Error>>, Error> {
        let invocation = |post: &Post<'_>| {
            let mut inv = self.scripts.commit.prepare_invoke();
            self.commit_args(&mut inv, room, epoch, post);
            inv
        };
        let invocations: Vec<_> = posts.iter().map(invocation).collect();
        let record = self.writers_to_record(room, epoch, posts);
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for (user_key, _) in &record {
            pipe.cmd("SADD").arg(self.keys.wrote(user_key)).arg(room);
        }
        for inv in &invocations {
            pipe.invoke_script(inv);
        }
        let mut conn = self.conn.clone();
        let mut replies: Vec<redis::RedisResult<Value>> = pipe.query_async(&mut conn).await?;
        if replies.len() < record.len() {
            return Err(Error::Malformed("a pipeline answered fewer replies".into()));
        }
        let recorded: Vec<redis::RedisResult<Value>> = replies.drain(..record.len()).collect();
        {
            let mut w = self
                .writers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (pair, r) in record.into_iter().zip(recorded) {
                match r {
                    Ok(_) if w.epoch == epoch.as_str() => {
                        w.seen.insert(pair);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, room, "recording a writer's room failed"),
                }
            }
        }
        if replies
            .iter()
            .any(|r| matches!(r, Err(e) if e.code() == Some("NOSCRIPT")))
        {
            // Redis restarted (or was flushed of scripts): those runs never started.
            // Load the script and run them again, in their order.
            self.scripts
                .commit
                .prepare_invoke()
                .load_async(&mut conn)
                .await?;
            let again: Vec<usize> = replies
                .iter()
                .enumerate()
                .filter(|(_, r)| matches!(r, Err(e) if e.code() == Some("NOSCRIPT")))
                .map(|(i, _)| i)
                .collect();
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for &i in &again {
                pipe.invoke_script(&invocations[i]);
            }
            let second: Vec<redis::RedisResult<Value>> = pipe.query_async(&mut conn).await?;
            for (i, r) in again.into_iter().zip(second) {
                replies[i] = r;
            }
        }
        Ok(replies.into_iter().map(committed).collect())
    }

    /// The (user key, room) pairs of `posts` this process has not recorded yet under
    /// `epoch` (an erase records nothing: it is the host's, not the user's, writing).
    fn writers_to_record(
        &self,
        room: &str,
        epoch: &Epoch,
        posts: &[Post<'_>],
    ) -> Vec<(String, String)> {
        let mut w = self
            .writers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if w.epoch != epoch.as_str() || w.seen.len() >= WRITERS_REMEMBERED {
            // A new epoch may be a flushed Redis: record every pair again.
            w.epoch = epoch.as_str().to_owned();
            w.seen.clear();
        }
        let mut out: Vec<(String, String)> = Vec::new();
        for post in posts {
            if post
                .detail
                .is_some_and(|d| d.kind == chat_core::protocol::EntryKind::Erase)
            {
                continue;
            }
            let pair = (chat_core::fold(post.user), room.to_owned());
            if !w.seen.contains(&pair) && !out.contains(&pair) {
                out.push(pair);
            }
        }
        out
    }

    /// The rooms where `user` wrote (posted or changed anything), as recorded by every
    /// node's commits ([`Keys::wrote`]), sorted. Rooms written before this record
    /// existed (an older version's commits) are not in it.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn rooms_of(&mut self, user: &str) -> Result<Vec<String>, Error> {
        let mut rooms: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.wrote(&chat_core::fold(user)))
            .query_async(&mut self.conn)
            .await?;
        rooms.sort();
        Ok(rooms)
    }

    /// At most `max` entries after seq `after`, in order, with the room's meta. Entries
    /// trimmed from the stream are missing at the front: the first entry's seq is then
    /// above `after + 1`, which the caller reports as a gap.
    ///
    /// # Errors
    /// Redis errors; [`Error::Malformed`] for a reply our script does not make.
    pub async fn read_after(
        &mut self,
        room: &str,
        after: u64,
        max: usize,
    ) -> Result<LogRead, Error> {
        self.read(room, "after", &after.to_string(), max, false)
            .await
    }

    /// The latest `max` entries (in seq order), the room's meta and who is present: what
    /// a node needs to load a room.
    ///
    /// # Errors
    /// As [`RedisLog::read_after`].
    pub async fn read_latest(&mut self, room: &str, max: usize) -> Result<LogRead, Error> {
        let mut read = self.read(room, "latest", "0", max, true).await?;
        read.entries.reverse();
        Ok(read)
    }

    /// A history page: at most `limit` entries below seq `before` (the latest without
    /// it), oldest first, and whether the log holds older ones.
    ///
    /// # Errors
    /// Redis errors; [`Error::Malformed`] for entries our script does not write.
    pub async fn read_before(
        &mut self,
        room: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<Entry>, bool), Error> {
        let end = match before {
            Some(0 | 1) => return Ok((Vec::new(), false)),
            Some(b) => format!("({b}-0"),
            None => "+".to_owned(),
        };
        let read = self
            .read(room, "before", &end, limit.saturating_add(1), false)
            .await?;
        let mut entries = read.entries;
        let more = entries.len() > limit;
        entries.truncate(limit);
        entries.reverse();
        Ok((entries, more))
    }

    async fn read(
        &mut self,
        room: &str,
        mode: &str,
        from: &str,
        max: usize,
        users: bool,
    ) -> Result<LogRead, Error> {
        let reply: Value = self
            .scripts
            .read
            .key(self.keys.meta(room))
            .key(self.keys.log(room))
            .key(self.keys.users(room))
            .key(self.keys.state(room))
            .arg(mode)
            .arg(from)
            .arg(max.max(1))
            .arg(if users { "1" } else { "0" })
            .invoke_async(&mut self.conn)
            .await?;
        let mut it = array(reply, 7)?.into_iter();
        let epoch = text(it.next())?;
        let epoch = if epoch.is_empty() {
            None
        } else {
            Some(Epoch::parse(epoch)?)
        };
        let top = uint(it.next())?;
        let pv = uint(it.next())?;
        let mut entries = match it.next() {
            Some(Value::Array(items)) => items
                .into_iter()
                .map(entry)
                .collect::<Result<Vec<_>, _>>()?,
            other => return Err(Error::Malformed(format!("entries: {other:?}"))),
        };
        let users = match it.next() {
            Some(Value::Array(flat)) => pairs(flat)?,
            other => return Err(Error::Malformed(format!("users: {other:?}"))),
        };
        let Some(Value::Array(states)) = it.next() else {
            return Err(Error::Malformed("states".into()));
        };
        for (e, st) in entries.iter_mut().zip(states) {
            let st = text(Some(st))?;
            if !st.is_empty() {
                e.state = Some(Box::new(MessageState::parse(&st)?));
            }
        }
        let first = uint(it.next())?;
        Ok(LogRead {
            epoch,
            top,
            pv,
            entries,
            users,
            first,
        })
    }

    /// Keeps `room`'s own retention policy ([`RedisLog::retain`] enforces it in place
    /// of the default); `Retention::default()` keeps everything.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn set_retention(
        &mut self,
        room: &str,
        policy: chat_core::Retention,
    ) -> Result<(), Error> {
        let age = policy
            .max_age
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).to_string())
            .unwrap_or_default();
        let count = policy.max_count.map(|c| c.to_string()).unwrap_or_default();
        redis::cmd("HSET")
            .arg(self.keys.retention(room))
            .arg("age")
            .arg(age)
            .arg("count")
            .arg(count)
            .exec_async(&mut self.conn)
            .await?;
        Ok(())
    }

    /// `room`'s own retention policy, if it has one.
    ///
    /// # Errors
    /// Redis errors; [`Error::Malformed`] for a policy we did not write.
    pub async fn retention(&mut self, room: &str) -> Result<Option<chat_core::Retention>, Error> {
        let (age, count): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(self.keys.retention(room))
            .arg("age")
            .arg("count")
            .query_async(&mut self.conn)
            .await?;
        if age.is_none() && count.is_none() {
            return Ok(None);
        }
        let num = |v: Option<String>| -> Result<Option<u64>, Error> {
            match v.as_deref() {
                None | Some("") => Ok(None),
                Some(n) => n
                    .parse()
                    .map(Some)
                    .map_err(|_| Error::Malformed(format!("retention {n:?}"))),
            }
        };
        Ok(Some(chat_core::Retention {
            max_age: num(age)?.map(Duration::from_millis),
            max_count: num(count)?,
        }))
    }

    /// One step of retention in `room` (`retain.lua`, atomic): its own policy, or
    /// `default` when it has none, trims at most `budget` of the oldest entries (never
    /// the newest), drops their current state, records the first seq kept and tells
    /// the room's channel. `now_ms`: the time ages are measured from (`None`: Redis'
    /// clock, as the commits' times are).
    ///
    /// # Errors
    /// Redis errors; [`Error::Malformed`] for a reply our script does not make.
    pub async fn retain(
        &mut self,
        room: &str,
        default: Option<chat_core::Retention>,
        budget: usize,
        now_ms: Option<i64>,
    ) -> Result<Retained, Error> {
        let default = default.unwrap_or_default();
        let age = default
            .max_age
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).to_string())
            .unwrap_or_default();
        let count = default.max_count.map(|c| c.to_string()).unwrap_or_default();
        let reply: Value = self
            .scripts
            .retain
            .key(self.keys.meta(room))
            .key(self.keys.log(room))
            .key(self.keys.state(room))
            .key(self.keys.retention(room))
            .arg(age)
            .arg(count)
            .arg(budget.max(1))
            .arg(now_ms.map(|n| n.to_string()).unwrap_or_default())
            .arg(self.keys.channel(room))
            .invoke_async(&mut self.conn)
            .await?;
        let mut it = array(reply, 3)?.into_iter();
        Ok(Retained {
            trimmed: uint(it.next())?,
            first: uint(it.next())?,
            more: uint(it.next())? == 1,
        })
    }

    /// One `SCAN` step over the rooms that have a log: the next cursor (0: the scan is
    /// complete) and the rooms found in this step.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn scan_rooms(
        &mut self,
        cursor: u64,
        count: usize,
    ) -> Result<(u64, Vec<String>), Error> {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(self.keys.log_pattern())
            .arg("COUNT")
            .arg(count.max(1))
            .arg("TYPE")
            .arg("stream")
            .query_async(&mut self.conn)
            .await?;
        let rooms = keys
            .iter()
            .filter_map(|k| self.keys.room_of_log(k))
            .collect();
        Ok((next, rooms))
    }

    /// Takes the sweeper's lease for `ttl` if nobody holds it (`SET NX PX`): true when
    /// `node` sweeps this period.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn take_sweep(&mut self, node: &str, ttl: Duration) -> Result<bool, Error> {
        let reply: Option<String> = redis::cmd("SET")
            .arg(self.keys.sweep())
            .arg(node)
            .arg("NX")
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
            .query_async(&mut self.conn)
            .await?;
        Ok(reply.is_some())
    }

    /// One session of `user` entering or leaving `room` on `node`; announces the user
    /// when their first session anywhere enters or their last one leaves. Also records
    /// the room in the node's room set, for [`RedisLog::reap`].
    ///
    /// # Errors
    /// Redis errors.
    pub async fn presence(
        &mut self,
        room: &str,
        node: &str,
        user: &str,
        change: Presence,
    ) -> Result<PresenceChange, Error> {
        if change == Presence::Enter {
            // Before the count, so that a reaper always finds a count it must undo.
            redis::cmd("SADD")
                .arg(self.keys.node_rooms(node))
                .arg(room)
                .exec_async(&mut self.conn)
                .await?;
        }
        let delta = if change == Presence::Enter { "1" } else { "-1" };
        self.presence_script(room, node, user, delta).await
    }

    /// Undoes a dead `node`'s presence in every room it had any, announcing the users it
    /// takes to zero; then forgets the node. Idempotent: two reapers racing, or a reaper
    /// that dies half-way and another that starts over, announce each departure once.
    ///
    /// # Errors
    /// Redis errors (then part of the node may be reaped; call again).
    pub async fn reap(&mut self, node: &str) -> Result<Vec<(String, PresenceChange)>, Error> {
        let rooms: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.node_rooms(node))
            .query_async(&mut self.conn)
            .await?;
        let mut out = Vec::new();
        for room in rooms {
            let change = self.presence_script(&room, node, "", "reap").await?;
            redis::cmd("SREM")
                .arg(self.keys.node_rooms(node))
                .arg(&room)
                .exec_async(&mut self.conn)
                .await?;
            if !change.announced.is_empty() {
                out.push((room, change));
            }
        }
        redis::cmd("ZREM")
            .arg(self.keys.nodes())
            .arg(node)
            .exec_async(&mut self.conn)
            .await?;
        Ok(out)
    }

    /// Says whether `node` has `user` in `room` now (any number of sessions, or none),
    /// announcing the user when that takes the count over nodes from or to zero.
    /// Idempotent, unlike [`RedisLog::presence`]: a retry after a lost reply counts
    /// nothing twice. A node uses one form or the other for a room, not both.
    ///
    /// # Errors
    /// Redis errors (then the change may or may not have been made: call again).
    pub async fn presence_set(
        &mut self,
        room: &str,
        node: &str,
        user: &str,
        here: bool,
    ) -> Result<PresenceChange, Error> {
        if here {
            redis::cmd("SADD")
                .arg(self.keys.node_rooms(node))
                .arg(room)
                .exec_async(&mut self.conn)
                .await?;
        }
        self.presence_script(room, node, user, if here { "here" } else { "gone" })
            .await
    }

    /// The room's presence version and who is present over all nodes.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn present(&mut self, room: &str) -> Result<(u64, Vec<(String, u64)>), Error> {
        let read = self
            .read(room, "after", &(u64::MAX / 2).to_string(), 1, true)
            .await?;
        Ok((read.pv, read.users))
    }

    async fn presence_script(
        &mut self,
        room: &str,
        node: &str,
        user: &str,
        delta: &str,
    ) -> Result<PresenceChange, Error> {
        let reply: Value = self
            .scripts
            .presence
            .key(self.keys.meta(room))
            .key(self.keys.users(room))
            .key(self.keys.on_node(room, node))
            .arg(user)
            .arg(delta)
            .arg(self.keys.channel(room))
            .invoke_async(&mut self.conn)
            .await?;
        let Value::Array(items) = reply else {
            return Err(Error::Malformed(format!("presence: {reply:?}")));
        };
        let mut items = items.into_iter();
        let pv = uint(items.next_back())?;
        let announced = items
            .map(|v| {
                let s = text(Some(v))?;
                match s.split_at_checked(1) {
                    Some(("+", u)) => Ok(Announcement::Joined(u.to_owned())),
                    Some(("-", u)) => Ok(Announcement::Left(u.to_owned())),
                    _ => Err(Error::Malformed(format!("announcement {s:?}"))),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(PresenceChange { announced, pv })
    }

    /// Says `node` is alive for `lease` more (from Redis' clock's point of view, the
    /// deadline is the caller's clock: nodes' clocks must agree within the lease).
    /// True when the node was not registered: its first heartbeat, or it was taken for
    /// dead and reaped meanwhile (then its presence must be counted again).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn heartbeat(&mut self, node: &str, lease: Duration) -> Result<bool, Error> {
        let deadline = now_ms() + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2);
        let added: i64 = redis::cmd("ZADD")
            .arg(self.keys.nodes())
            .arg(deadline)
            .arg(node)
            .query_async(&mut self.conn)
            .await?;
        Ok(added == 1)
    }

    /// Nodes whose lease ran out, to [`reap`](RedisLog::reap).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn dead_nodes(&mut self) -> Result<Vec<String>, Error> {
        Ok(redis::cmd("ZRANGEBYSCORE")
            .arg(self.keys.nodes())
            .arg("-inf")
            .arg(now_ms())
            .query_async(&mut self.conn)
            .await?)
    }

    /// The cluster epoch; the first caller after a flush (or ever) makes a new one.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn cluster_epoch(&mut self) -> Result<Epoch, Error> {
        let fresh = Epoch::new();
        let old: Option<String> = redis::cmd("SET")
            .arg(self.keys.epoch())
            .arg(fresh.as_str())
            .arg("NX")
            .arg("GET")
            .query_async(&mut self.conn)
            .await?;
        match old {
            Some(s) => Epoch::parse(s),
            None => Ok(fresh),
        }
    }

    /// Replaces the cluster epoch after a loss was seen under `seen`; when another node
    /// already replaced it, that one is returned (one loss makes one new epoch).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn replace_epoch(&mut self, seen: &Epoch) -> Result<Epoch, Error> {
        let mut fresh = Epoch::new();
        if fresh <= *seen {
            // A clock behind the one that made `seen`: still order after it.
            fresh = Epoch(format!("{}{}", &seen.0[..14], &fresh.0[14..]));
            if fresh <= *seen {
                let ms: u64 = seen.0[..13].parse().unwrap_or(0) + 1;
                fresh = Epoch(format!("{ms:013}{}", &fresh.0[13..]));
            }
        }
        let cur: String = self
            .scripts
            .epoch
            .key(self.keys.epoch())
            .arg(seen.as_str())
            .arg(fresh.as_str())
            .invoke_async(&mut self.conn)
            .await?;
        Epoch::parse(cur)
    }

    /// Holds `name` (an anonymous user's folded name) for `holder` for `lifetime`: true
    /// when the holder has it (it was free, or already theirs: extended), false when
    /// someone else holds it.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn claim_name(
        &mut self,
        name: &str,
        holder: &str,
        lifetime: Duration,
    ) -> Result<bool, Error> {
        let got: i64 = self
            .scripts
            .claim
            .key(self.keys.name(name))
            .arg(holder)
            .arg(
                u64::try_from(lifetime.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            )
            .invoke_async(&mut self.conn)
            .await?;
        Ok(got == 1)
    }

    /// The token secret every node of the cluster uses (made by the first node to ask).
    ///
    /// # Errors
    /// Redis errors, or a stored secret that is not 64 hex digits.
    pub async fn shared_secret(&mut self) -> Result<[u8; 32], Error> {
        let mut fresh = [0u8; 32];
        getrandom::fill(&mut fresh).map_err(|e| Error::Malformed(e.to_string()))?;
        let hex: String = fresh.iter().map(|b| format!("{b:02x}")).collect();
        let old: Option<String> = redis::cmd("SET")
            .arg(self.keys.secret())
            .arg(&hex)
            .arg("NX")
            .arg("GET")
            .query_async(&mut self.conn)
            .await?;
        let Some(old) = old else {
            return Ok(fresh);
        };
        let mut out = [0u8; 32];
        if old.len() != 64 {
            return Err(Error::Malformed(
                "the shared secret is not 64 hex digits".into(),
            ));
        }
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&old[2 * i..2 * i + 2], 16)
                .map_err(|_| Error::Malformed("the shared secret is not hex".into()))?;
        }
        Ok(out)
    }
}

impl RedisLog {
    /// Moves `user`'s read marker in `room` forward to `seq` (never back) and, when it
    /// moved, tells the other nodes holding the room on its channel (`node`: the
    /// publisher, which skips its own). True when it moved. Idempotent: a retry after a
    /// lost reply changes nothing.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn share_read(
        &mut self,
        room: &str,
        node: &str,
        user: &str,
        seq: u64,
    ) -> Result<bool, Error> {
        let moved: i64 = self
            .scripts
            .read_marker
            .key(self.keys.reads(&chat_core::fold(user)))
            .arg(room)
            .arg(seq)
            .arg(self.keys.channel(room))
            .arg(node)
            .arg(user)
            .invoke_async(&mut self.conn)
            .await?;
        Ok(moved == 1)
    }

    /// Every read marker of `user`: room → the last seq read.
    ///
    /// # Errors
    /// Redis errors; [`Error::Malformed`] for a marker that is not a number.
    pub async fn read_markers(&mut self, user: &str) -> Result<Vec<(String, u64)>, Error> {
        let flat: Value = redis::cmd("HGETALL")
            .arg(self.keys.reads(&chat_core::fold(user)))
            .query_async(&mut self.conn)
            .await?;
        match flat {
            Value::Array(flat) => pairs(flat),
            Value::Map(map) => map
                .into_iter()
                .map(|(k, v)| Ok((text(Some(k))?, uint(Some(v))?)))
                .collect(),
            other => Err(Error::Malformed(format!("read markers: {other:?}"))),
        }
    }

    /// Publishes a typing indicator of `user` on `room`'s channel for the other nodes
    /// (at most once, never stored); `node` is the publisher, which skips its own.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn publish_typing(
        &mut self,
        room: &str,
        node: &str,
        user: &str,
        active: bool,
    ) -> Result<(), Error> {
        let payload = format!("t|{node}|{}|{user}", u8::from(active));
        redis::cmd("PUBLISH")
            .arg(self.keys.channel(room))
            .arg(payload)
            .exec_async(&mut self.conn)
            .await?;
        Ok(())
    }

    /// Publishes a host's or moderator's action on the control channel every node
    /// listens to (at most once: pub/sub); `node` is the publisher, which skips its own.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn publish_control(
        &mut self,
        node: &str,
        control: &chat_core::runtime::ClusterControl,
    ) -> Result<(), Error> {
        let payload = format!("c|{node}|{}", control.encode());
        redis::cmd("PUBLISH")
            .arg(self.keys.control())
            .arg(payload)
            .exec_async(&mut self.conn)
            .await?;
        Ok(())
    }

    /// Publishes a liveness probe on a node's own channel (see [`Subscriber`]).
    pub(crate) async fn publish_probe(&mut self, channel: &str, nonce: u64) -> Result<(), Error> {
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(nonce)
            .exec_async(&mut self.conn)
            .await?;
        Ok(())
    }
}

/// One reply of `commit.lua`.
fn committed(reply: redis::RedisResult<Value>) -> Result<Committed, Error> {
    let reply = match reply {
        Ok(v) => v,
        Err(e) if e.code() == Some("REFUSED") => {
            let detail = e.detail().unwrap_or_default().trim();
            let (code, why) = detail.split_once(' ').unwrap_or((detail, ""));
            return Err(Error::Refused {
                code: code.to_owned(),
                why: why.to_owned(),
            });
        }
        Err(e) if e.code() == Some("STALE_EPOCH") => {
            let newer = e.detail().unwrap_or_default().trim().to_owned();
            return Err(Error::StaleEpoch(Epoch::parse(newer)?));
        }
        Err(e) => return Err(e.into()),
    };
    let items = array(reply, 4)?;
    let mut it = items.into_iter();
    let seq = uint(it.next())?;
    let ts_ms = int(it.next())?;
    let duplicate = int(it.next())? == 1;
    let epoch = Epoch::parse(text(it.next())?)?;
    Ok(Committed {
        seq,
        ts_ms,
        duplicate,
        epoch,
    })
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn array(v: Value, len: usize) -> Result<Vec<Value>, Error> {
    match v {
        Value::Array(items) if items.len() == len => Ok(items),
        other => Err(Error::Malformed(format!("expected {len} items: {other:?}"))),
    }
}

fn int(v: Option<Value>) -> Result<i64, Error> {
    match v {
        Some(Value::Int(n)) => Ok(n),
        Some(Value::BulkString(b)) => std::str::from_utf8(&b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::Malformed("not a number".into())),
        other => Err(Error::Malformed(format!("expected a number: {other:?}"))),
    }
}

fn uint(v: Option<Value>) -> Result<u64, Error> {
    u64::try_from(int(v)?).map_err(|_| Error::Malformed("negative".into()))
}

fn text(v: Option<Value>) -> Result<String, Error> {
    match v {
        Some(Value::BulkString(b)) => {
            String::from_utf8(b).map_err(|_| Error::Malformed("not UTF-8".into()))
        }
        Some(Value::SimpleString(s)) => Ok(s),
        Some(Value::Okay) => Ok("OK".into()),
        other => Err(Error::Malformed(format!("expected text: {other:?}"))),
    }
}

fn pairs(flat: Vec<Value>) -> Result<Vec<(String, u64)>, Error> {
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let Some(k) = it.next() {
        out.push((text(Some(k))?, uint(it.next())?));
    }
    Ok(out)
}

/// One stream entry as XRANGE returns it: `[id, [field, value, ...]]`.
fn entry(v: Value) -> Result<Entry, Error> {
    let mut it = array(v, 2)?.into_iter();
    let id = text(it.next())?;
    let seq = id
        .strip_suffix("-0")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Malformed(format!("entry id {id:?}")))?;
    let Some(Value::Array(fields)) = it.next() else {
        return Err(Error::Malformed("entry fields".into()));
    };
    let mut map = std::collections::HashMap::new();
    let mut f = fields.into_iter();
    while let Some(k) = f.next() {
        map.insert(text(Some(k))?, text(f.next())?);
    }
    fields_entry(seq, &map).ok_or_else(|| Error::Malformed(format!("entry {seq} lacks a field")))
}

/// An entry from its stream fields (`u`, `b`, `t`, `c`; a change's `k`, `g`, `j`, `o`; a
/// reply's `r`), as `commit.lua` writes them (also in a change's doorbell).
pub(crate) fn fields_entry(
    seq: u64,
    f: &std::collections::HashMap<String, String>,
) -> Option<Entry> {
    use chat_core::protocol::EntryKind;
    let kind = match f.get("k").map(String::as_str) {
        None | Some("") => EntryKind::Message,
        Some("edit") => EntryKind::Edit,
        Some("delete") => EntryKind::Delete,
        Some("react") => EntryKind::React,
        Some("erase") => EntryKind::Erase,
        Some(_) => return None,
    };
    let num = |k: &str| f.get(k).filter(|v| !v.is_empty()).map(|v| v.parse::<u64>());
    let target = num("g").transpose().ok()?;
    // An erase applies to the whole room before it: it has no target.
    if !kind.is_message() && kind != EntryKind::Erase && target.is_none() {
        return None;
    }
    Some(Entry {
        seq,
        ts_ms: f.get("t")?.parse().ok()?,
        user: f.get("u")?.clone(),
        body: f.get("b")?.clone(),
        client_id: f.get("c").filter(|c| !c.is_empty()).cloned(),
        kind,
        target,
        emoji: f.get("j").filter(|_| kind == EntryKind::React).cloned(),
        on: (kind == EntryKind::React).then(|| f.get("o").is_none_or(|o| o != "0")),
        reply_to: num("r").transpose().ok()?,
        state: None,
    })
}
