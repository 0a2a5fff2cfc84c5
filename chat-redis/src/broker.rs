//! The runtime broker on Redis: [`RedisBroker`] implements chat-core's
//! [`Broker`](chat_core::runtime::Broker) over [`RedisLog`] and [`Subscriber`], so that a
//! `Hub` runs in cluster mode (docs/CLUSTER.md).
//!
//! - Appends: one lane per room, in order, each lane committing what queued up while its
//!   previous batch ran as one pipeline (one round trip for many posts); rooms commit in
//!   parallel. A failed batch is refused (retryable `storage_unavailable`), never acked.
//! - Loading a room subscribes first and reads second, then asks the engine to catch up,
//!   so a doorbell rung between the two is read from the stream, not lost.
//! - Doorbells reach the engine through its bounded inbox: a busy engine fills the
//!   subscriber's queue, which marks the room behind and has it read from the stream.
//! - Presence: the engine's first/last session of a user here is written as the node's
//!   desired state (idempotent, retried until Redis takes it, so an outage loses none);
//!   if the node was reaped while cut off, all its presence is written again.
//! - Heartbeats every second; every node reaps the nodes whose lease ran out; every
//!   `check_every` the engine reads each room's log after its top (a doorbell lost
//!   between a reconnect and its re-subscription).
//! - Retention: every `sweep_every` the node holding the period's lease sweeps every
//!   room (`retain.lua`, bounded steps, its own connection); trims reach every node's
//!   engine as `Input::Pruned` (the trim doorbell, catch-ups, room loads).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_core::Retention;
use chat_core::protocol::Message;
use chat_core::runtime::{Broker, BrokerFuture, BrokerInbox, ClusterRequest};
use chat_core::{
    Announced, Appended, ClientMsgId, Input, LoadedRoom, RoomName, Seq, StoreError, UserKey,
    UserName,
};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::{Bell, Doorbell, Entry, Epoch, Error, Options, Post, RedisLog, Subscriber};
use crate::{PresenceChange, SubscriberOptions};

/// The metric counting payloads on our channels that are not ours.
const FOREIGN: &str = "chat_cluster_foreign_payloads_total";

/// How a [`RedisBroker`] works.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// The log's options (key prefix, stream window, idempotency, deadlines).
    pub log: Options,
    /// The doorbell listener's options (probe, queue).
    pub subscriber: SubscriberOptions,
    /// A heartbeat (and a look for dead nodes) this often.
    pub heartbeat: Duration,
    /// A node whose last heartbeat is older than this is dead: its presence is reaped.
    pub lease: Duration,
    /// Every room's log is read after its top this often, whatever the doorbells said.
    pub check_every: Duration,
    /// Posts of one room committed in one pipeline, at most.
    pub max_batch: usize,
    /// Entries read from a room's log per call.
    pub fetch_max: usize,
    /// An anonymous name this node holds is reserved for this long and renewed every
    /// third of it; after the node dies (or lets it go) it is free again within it.
    pub name_lease: Duration,
    /// Retention: one node per period (a lease in Redis) sweeps every room of the
    /// prefix, enforcing each room's policy (or `Config::retention`).
    pub sweep_every: Duration,
    /// Retention: entries one call of `retain.lua` trims at most (one call never holds
    /// Redis long; a room with more to trim gets further calls).
    pub retain_budget: usize,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            log: Options::default(),
            subscriber: SubscriberOptions::default(),
            heartbeat: Duration::from_secs(1),
            lease: Duration::from_secs(5),
            check_every: Duration::from_secs(10),
            max_batch: 256,
            fetch_max: 1000,
            name_lease: Duration::from_secs(30),
            sweep_every: Duration::from_secs(60),
            retain_budget: 500,
        }
    }
}

/// A `Hub`'s link to the Redis its cluster shares. Make one with
/// [`RedisBroker::connect`] and give it to `HubConfig::cluster`.
pub struct RedisBroker {
    node: String,
    epoch: Epoch,
    secret: [u8; 32],
    url: String,
    log: RedisLog,
    options: BrokerOptions,
    requests: mpsc::UnboundedSender<ClusterRequest>,
    parked: Mutex<Option<mpsc::UnboundedReceiver<ClusterRequest>>>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// `Config::retention`: the policy of rooms without their own.
    retention: Arc<Mutex<Option<Retention>>>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("node", &self.node)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// Connects to the Redis at `url`, reads (or makes) the cluster epoch and the
    /// shared token secret, and registers this process as a new node.
    ///
    /// # Errors
    /// A bad URL, Redis not reachable within the connect timeout, or a stored epoch or
    /// secret that is not ours.
    pub async fn connect(url: &str, options: BrokerOptions) -> Result<RedisBroker, Error> {
        let mut log = RedisLog::connect(url, options.log.clone()).await?;
        let epoch = log.cluster_epoch().await?;
        let secret = log.shared_secret().await?;
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(|e| Error::Malformed(e.to_string()))?;
        let node: String = id.iter().map(|b| format!("{b:02x}")).collect();
        log.heartbeat(&node, options.lease).await?;
        let (requests, parked) = mpsc::unbounded_channel();
        let (stop, _) = watch::channel(false);
        Ok(RedisBroker {
            node,
            epoch,
            secret,
            url: url.to_owned(),
            log,
            options,
            requests,
            parked: Mutex::new(Some(parked)),
            stop,
            tasks: Mutex::new(Vec::new()),
            retention: Arc::default(),
        })
    }

    /// This node's id (random per process).
    #[must_use]
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The cluster epoch this node runs under.
    #[must_use]
    pub fn cluster_epoch(&self) -> &Epoch {
        &self.epoch
    }
}

impl Broker for RedisBroker {
    fn epoch(&self) -> String {
        self.epoch.as_str().to_owned()
    }

    fn secret(&self) -> [u8; 32] {
        self.secret
    }

    fn start(&self, inbox: BrokerInbox) {
        let Some(requests) = self.parked.lock().expect("not poisoned").take() else {
            tracing::error!("RedisBroker started twice: one broker serves one hub");
            return;
        };
        metrics::counter!(FOREIGN).increment(0);
        let (subscriber, bells) = match Subscriber::start(
            &self.url,
            &self.node,
            self.log.clone(),
            self.options.subscriber.clone(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "redis subscriber did not start");
                return;
            }
        };
        let rooms = Rooms::default();
        let (rejoin_tx, rejoin) = mpsc::unbounded_channel();
        let (typing_tx, typing) = mpsc::unbounded_channel();
        let (moderation_tx, moderation) = mpsc::unbounded_channel();
        let shared = Shared {
            node: self.node.clone(),
            epoch: Arc::new(Mutex::new(self.epoch.clone())),
            names: Arc::default(),
            log: self.log.clone(),
            inbox,
            rooms: rooms.clone(),
            options: self.options.clone(),
            stop: self.stop.subscribe(),
            retention: self.retention.clone(),
        };
        let worker = Worker {
            shared: shared.clone(),
            subscriber,
            appends: HashMap::new(),
            committing: BTreeSet::new(),
            batches: FuturesUnordered::new(),
            presence: BTreeMap::new(),
            dirty: BTreeSet::new(),
            presence_busy: false,
            typing: typing_tx,
            moderation: moderation_tx,
        };
        let mut tasks = self.tasks.lock().expect("not poisoned");
        tasks.push(tokio::spawn(worker.run(requests, rejoin)));
        tasks.push(tokio::spawn(bells_task(shared.clone(), bells)));
        tasks.push(tokio::spawn(typing_task(shared.clone(), typing)));
        tasks.push(tokio::spawn(moderation_lane(shared.clone(), moderation)));
        tasks.push(tokio::spawn(sweep_task(shared.clone(), self.url.clone())));
        tasks.push(tokio::spawn(heartbeat_task(shared, rejoin_tx)));
    }

    fn default_retention(&self, policy: Option<Retention>) {
        *self.retention.lock().expect("not poisoned") = policy;
    }

    fn set_retention(
        &self,
        room: RoomName,
        policy: Retention,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            let mut log = self.log.clone();
            log.set_retention(room.as_str(), policy)
                .await
                .map_err(|e| format!("redis: {e}"))?;
            // Enforced now (not only at the next sweep) by this node, in the background.
            let default = *self.retention.lock().expect("not poisoned");
            let budget = self.options.retain_budget;
            let stop = self.stop.subscribe();
            tokio::spawn(async move {
                if let Err(e) = retain_room(&mut log, room.as_str(), default, budget, &stop).await {
                    tracing::warn!(room = %room, error = %e, "retention of a room failed: the next sweep tries again");
                }
            });
            Ok(())
        })
    }

    fn submit(&self, request: ClusterRequest) {
        if self.requests.send(request).is_err() {
            tracing::error!("cluster request after the broker stopped");
        }
    }

    fn stop(&self) -> BrokerFuture<'_> {
        Box::pin(async move {
            let _ = self.stop.send(true);
            let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock().expect("not poisoned"));
            for mut task in tasks {
                // The worker answers what is in flight first; none waits longer than a
                // Redis deadline, but a stop is bounded whatever happens.
                if tokio::time::timeout(Duration::from_secs(5), &mut task)
                    .await
                    .is_err()
                {
                    task.abort();
                }
            }
            // The node's presence stays until the other nodes reap it (within the
            // lease): its clients reconnecting elsewhere meanwhile are not seen to leave.
        })
    }

    /// The user's `wrote` set ([`crate::Keys::wrote`]), which every node's commits
    /// keep; a member that is not a room name (someone else's write) is skipped.
    fn rooms_of(&self, user: &UserName) -> chat_core::runtime::RoomsFuture<'_> {
        let mut log = self.log.clone();
        let user = user.clone();
        Box::pin(async move {
            let rooms = log
                .rooms_of(user.as_str())
                .await
                .map_err(|e| StoreError::Unavailable(format!("redis: {e}")))?;
            Ok(rooms
                .iter()
                .filter_map(|r| RoomName::parse(r, usize::MAX, usize::MAX).ok())
                .collect())
        })
    }
}

/// The rooms this node holds: their key in Redis → their name.
#[derive(Debug, Clone, Default)]
struct Rooms(Arc<Mutex<HashMap<String, RoomName>>>);

impl Rooms {
    fn get(&self, key: &str) -> Option<RoomName> {
        self.0.lock().expect("not poisoned").get(key).cloned()
    }

    fn insert(&self, room: &RoomName) {
        self.0
            .lock()
            .expect("not poisoned")
            .insert(room.as_str().to_owned(), room.clone());
    }

    fn remove(&self, room: &RoomName) {
        self.0.lock().expect("not poisoned").remove(room.as_str());
    }

    fn all(&self) -> Vec<RoomName> {
        self.0
            .lock()
            .expect("not poisoned")
            .values()
            .cloned()
            .collect()
    }
}

/// What every task of one broker shares.
#[derive(Clone)]
struct Shared {
    node: String,
    /// The cluster epoch this node runs under (it follows Redis' when that changes).
    epoch: Arc<Mutex<Epoch>>,
    /// Anonymous names this node holds: key → holder, renewed by the heartbeat task.
    names: Arc<Mutex<HashMap<String, String>>>,
    log: RedisLog,
    inbox: BrokerInbox,
    rooms: Rooms,
    options: BrokerOptions,
    stop: watch::Receiver<bool>,
    /// `Config::retention`: the policy of rooms without their own.
    retention: Arc<Mutex<Option<Retention>>>,
}

impl Shared {
    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    fn epoch(&self) -> Epoch {
        self.epoch.lock().expect("not poisoned").clone()
    }

    /// Follows the cluster to `epoch` if this node runs under another: the engine then
    /// closes every session (1012) and reads its rooms from the log again.
    async fn follow(&self, epoch: Epoch) {
        {
            let mut ours = self.epoch.lock().expect("not poisoned");
            if *ours == epoch {
                return;
            }
            tracing::warn!(old = %ours, new = %epoch, "the cluster epoch changed: this node's clients reconnect under the new one");
            *ours = epoch.clone();
        }
        let _ = self
            .inbox
            .notify(Input::EpochChanged {
                epoch: epoch.as_str().to_owned(),
            })
            .await;
    }

    /// The log lost entries this node had seen: one new epoch for the cluster (another
    /// node may have made it already), followed here.
    async fn regressed(&self) {
        let mut log = self.log.clone();
        match log.replace_epoch(&self.epoch()).await {
            Ok(epoch) => self.follow(epoch).await,
            Err(e) => tracing::warn!(error = %e, "replacing the cluster epoch failed"),
        }
    }

    /// Waits `d`, or less if the broker stops meanwhile.
    async fn pause(&self, d: Duration) {
        let mut stop = self.stop.clone();
        let _ = tokio::time::timeout(d, stop.wait_for(|s| *s)).await;
    }
}

/// One post waiting for its room's lane.
struct PendingAppend {
    ticket: u64,
    user: UserName,
    body: Arc<str>,
    client_id: Option<ClientMsgId>,
    detail: Option<Box<chat_core::EntryDetail>>,
}

/// A lane's batch, done.
type BatchDone = (RoomName, Vec<(u64, Result<Appended, StoreError>)>);

/// A presence write, done: the room, the user, the state written, and how it went.
type PresenceDone = Vec<(RoomName, UserName, bool, Result<PresenceChange, Error>)>;

struct Worker {
    shared: Shared,
    subscriber: Subscriber,
    /// Posts waiting per room.
    appends: HashMap<RoomName, VecDeque<PendingAppend>>,
    /// Rooms with a batch in flight.
    committing: BTreeSet<RoomName>,
    batches: FuturesUnordered<BoxFuture<'static, BatchDone>>,
    /// The users this node has in each room (what Redis must say; `false`: to remove).
    presence: BTreeMap<(RoomName, UserKey), (UserName, bool)>,
    /// Entries of `presence` Redis does not have yet.
    dirty: BTreeSet<(RoomName, UserKey)>,
    presence_busy: bool,
    /// Typing indicators to publish, in order.
    typing: mpsc::UnboundedSender<(RoomName, UserName, bool)>,
    /// Moderation changes to write, in order, with the actions to publish after.
    moderation: mpsc::UnboundedSender<ModerationLane>,
}

/// A moderation change to write, its ticket, and the action to publish once written.
type ModerationLane = (
    u64,
    chat_core::ModerationChange,
    Option<chat_core::runtime::ClusterControl>,
);

impl Worker {
    async fn run(
        mut self,
        mut requests: mpsc::UnboundedReceiver<ClusterRequest>,
        mut rejoin: mpsc::UnboundedReceiver<()>,
    ) {
        let mut writes: FuturesUnordered<BoxFuture<'static, PresenceDone>> =
            FuturesUnordered::new();
        let mut stop = self.shared.stop.clone();
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            if !self.presence_busy
                && !self.dirty.is_empty()
                && retry_at.is_none_or(|at| at <= tokio::time::Instant::now())
            {
                retry_at = None;
                self.presence_busy = true;
                writes.push(self.write_presence());
            }
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = requests.recv() => match r {
                    Some(r) => self.request(r),
                    None => break,
                },
                Some(done) = self.batches.next(), if !self.batches.is_empty() => {
                    self.batch_done(done);
                }
                Some(done) = writes.next(), if !writes.is_empty() => {
                    self.presence_busy = false;
                    if !self.presence_done(done) {
                        retry_at = Some(tokio::time::Instant::now() + Duration::from_millis(500));
                    }
                }
                Some(()) = rejoin.recv() => {
                    tracing::warn!(node = %self.shared.node, "this node was reaped while cut off from redis: writing its presence again");
                    self.dirty.extend(
                        self.presence.iter().filter(|(_, (_, here))| *here).map(|(k, _)| k.clone()),
                    );
                }
                () = retry => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        // Answer the posts in flight (the hub waits for them to shut down).
        while let Some(done) = self.batches.next().await {
            self.batch_done(done);
        }
        for (room, queue) in self.appends.drain() {
            for p in queue {
                let _ = self.shared.inbox.answer(Input::Appended {
                    room: room.clone(),
                    ticket: p.ticket,
                    result: Err(StoreError::Unavailable("the cluster broker stopped".into())),
                });
            }
        }
    }

    fn request(&mut self, request: ClusterRequest) {
        match request {
            ClusterRequest::Append {
                room,
                ticket,
                user,
                body,
                client_id,
                detail,
            } => {
                self.appends
                    .entry(room.clone())
                    .or_default()
                    .push_back(PendingAppend {
                        ticket,
                        user,
                        body,
                        client_id,
                        detail,
                    });
                if !self.committing.contains(&room) {
                    self.start_batch(room);
                }
            }
            ClusterRequest::FetchLog { room, after } => {
                tokio::spawn(fetch_log(self.shared.clone(), room, after));
            }
            ClusterRequest::LoadRoom { room } => {
                // Subscribe first, read second: a doorbell rung between the two is in
                // the read, or heard, or (the subscription not yet made when the read
                // ran) announced as behind once it is made, which reads the stream.
                self.shared.rooms.insert(&room);
                self.subscriber.subscribe(room.as_str());
                tokio::spawn(load_room(self.shared.clone(), room));
            }
            ClusterRequest::UnloadRoom { room } => {
                self.shared.rooms.remove(&room);
                self.subscriber.unsubscribe(room.as_str());
            }
            ClusterRequest::Presence {
                room,
                user,
                entered,
            } => {
                let key = (room, user.key());
                self.presence.insert(key.clone(), (user, entered));
                self.dirty.insert(key);
            }
            ClusterRequest::FetchPresence { room } => {
                tokio::spawn(fetch_presence(self.shared.clone(), room));
            }
            ClusterRequest::LoadHistory {
                ticket,
                room,
                before,
                limit,
            } => {
                tokio::spawn(load_history(
                    self.shared.clone(),
                    ticket,
                    room,
                    before,
                    limit,
                ));
            }
            ClusterRequest::ClaimName {
                session,
                key,
                holder,
            } => {
                // Held from now (a release that comes before the answer takes it back).
                self.shared
                    .names
                    .lock()
                    .expect("not poisoned")
                    .insert(key.clone(), holder.clone());
                tokio::spawn(claim_name(self.shared.clone(), session, key, holder));
            }
            ClusterRequest::ReleaseName { key } => {
                self.shared.names.lock().expect("not poisoned").remove(&key);
            }
            ClusterRequest::LogRegressed { room, seq } => {
                tracing::error!(room = %room, seq = seq.0, "the log handed out a delivered seq again: it lost entries");
                let shared = self.shared.clone();
                tokio::spawn(async move { shared.regressed().await });
            }
            ClusterRequest::Typing { room, user, active } => {
                let _ = self.typing.send((room, user, active));
            }
            ClusterRequest::ShareRead { room, user, seq } => {
                tokio::spawn(share_read(self.shared.clone(), room, user, seq));
            }
            ClusterRequest::LoadReadMarkers { user } => {
                tokio::spawn(load_read_markers(self.shared.clone(), user));
            }
            ClusterRequest::Relay(control) => {
                tokio::spawn(publish_control(self.shared.clone(), control));
            }
            ClusterRequest::SaveModeration {
                ticket,
                change,
                relay,
            } => {
                // One lane: changes are written in the order made, each before the
                // action that made it is published.
                let _ = self.moderation.send((ticket, change, relay));
            }
            ClusterRequest::FetchModeration { room } => {
                tokio::spawn(fetch_moderation(self.shared.clone(), room));
            }
            other => tracing::error!(request = ?other, "cluster request this broker does not know"),
        }
    }

    /// Commits what waits in `room`'s lane, as one pipeline.
    fn start_batch(&mut self, room: RoomName) {
        let Some(queue) = self.appends.get_mut(&room) else {
            return;
        };
        let n = queue.len().min(self.shared.options.max_batch.max(1));
        if n == 0 {
            self.appends.remove(&room);
            return;
        }
        let batch: Vec<PendingAppend> = queue.drain(..n).collect();
        self.committing.insert(room.clone());
        let mut log = self.shared.log.clone();
        let epoch = self.shared.epoch();
        let shared = self.shared.clone();
        self.batches.push(Box::pin(async move {
            let posts: Vec<Post<'_>> = batch
                .iter()
                .map(|p| Post {
                    user: p.user.as_str(),
                    body: &p.body,
                    client_id: p.client_id.as_ref().map(ClientMsgId::as_str),
                    detail: p.detail.as_deref(),
                })
                .collect();
            let results: Vec<Result<crate::Committed, StoreError>> =
                match log.commit_batch(room.as_str(), &epoch, &posts).await {
                    Ok(results) => results
                        .into_iter()
                        .map(|r| {
                            r.map_err(|e| {
                                if let Error::Refused { code, why } = &e {
                                    return refused(code, why);
                                }
                                if let Error::StaleEpoch(newer) = &e {
                                    tracing::error!(room = %room, newer = %newer, "the cluster epoch changed under this node");
                                    let (shared, newer) = (shared.clone(), newer.clone());
                                    tokio::spawn(async move { shared.follow(newer).await });
                                }
                                StoreError::Unavailable(format!("redis: {e}"))
                            })
                        })
                        .collect(),
                    Err(e) => {
                        // Refused, never acked: a resend with the same client id is
                        // safe whether or not the pipeline ran.
                        tracing::warn!(error = %e, room = %room, posts = batch.len(), "redis commit failed: posts refused");
                        let e = StoreError::Unavailable(format!("redis: {e}"));
                        batch.iter().map(|_| Err(e.clone())).collect()
                    }
                };
            let answers = batch
                .iter()
                .zip(results)
                .map(|(p, r)| {
                    let r = r.map(|c| Appended {
                        seq: Seq(c.seq),
                        ts: ts(c.ts_ms),
                        duplicate: c.duplicate,
                    });
                    (p.ticket, r)
                })
                .collect();
            (room, answers)
        }));
    }

    fn batch_done(&mut self, (room, answers): BatchDone) {
        for (ticket, result) in answers {
            let _ = self.shared.inbox.answer(Input::Appended {
                room: room.clone(),
                ticket,
                result,
            });
        }
        self.committing.remove(&room);
        self.start_batch(room);
    }

    /// Writes up to 64 presence changes Redis does not have yet, one after the other.
    fn write_presence(&mut self) -> BoxFuture<'static, PresenceDone> {
        let todo: Vec<(RoomName, UserName, bool)> = self
            .dirty
            .iter()
            .take(64)
            .filter_map(|k| {
                self.presence
                    .get(k)
                    .map(|(u, here)| (k.0.clone(), u.clone(), *here))
            })
            .collect();
        let mut log = self.shared.log.clone();
        let node = self.shared.node.clone();
        Box::pin(async move {
            let mut out = Vec::with_capacity(todo.len());
            for (room, user, here) in todo {
                let r = log
                    .presence_set(room.as_str(), &node, user.as_str(), here)
                    .await;
                out.push((room, user, here, r));
            }
            out
        })
    }

    /// Takes the outcome of presence writes; false when one failed (retry later).
    fn presence_done(&mut self, done: PresenceDone) -> bool {
        let mut ok = true;
        for (room, user, here, result) in done {
            let key = (room.clone(), user.key());
            match result {
                Ok(change) => {
                    if self.presence.get(&key).is_some_and(|(_, h)| *h == here) {
                        self.dirty.remove(&key);
                        if !here {
                            self.presence.remove(&key);
                        }
                    }
                    // The announcement is published too; this copy is just sooner (the
                    // engine takes each presence version once).
                    if let [a] = change.announced.as_slice() {
                        let joined = matches!(a, crate::Announcement::Joined(_));
                        let _ = self.shared.inbox.answer(Input::Presence {
                            room,
                            announced: Announced {
                                pv: change.pv,
                                user,
                                joined,
                                ts: Utc::now(),
                            },
                        });
                    }
                }
                Err(e) => {
                    if ok {
                        tracing::warn!(error = %e, "redis presence write failed: retrying");
                    }
                    ok = false;
                }
            }
        }
        // Entries written meanwhile stay dirty; they go out on the next turn.
        self.dirty.retain(|k| self.presence.contains_key(k));
        ok
    }
}

/// Doorbells to the engine, through its bounded inbox.
async fn bells_task(shared: Shared, mut bells: mpsc::Receiver<Bell>) {
    let mut stop = shared.stop.clone();
    loop {
        let bell = tokio::select! {
            b = bells.recv() => match b { Some(b) => b, None => return },
            _ = stop.wait_for(|s| *s) => return,
        };
        let input = match bell {
            Bell::Room { room, doorbell } => {
                let Some(name) = shared.rooms.get(&room) else {
                    continue;
                };
                match doorbell {
                    Doorbell::Message { epoch, entry } => {
                        let ours = shared.epoch();
                        if epoch != ours {
                            // Seqs of another epoch do not compare with ours (the
                            // heartbeat's check follows a newer one).
                            tracing::warn!(room = %room, epoch = %epoch, ours = %ours, "doorbell of another cluster epoch skipped");
                            continue;
                        }
                        Input::RoomLog {
                            messages: vec![message(&name, entry)],
                            room: name,
                            gap_before: None,
                            fetched: false,
                        }
                    }
                    Doorbell::Trimmed { epoch, first } => {
                        if epoch != shared.epoch() {
                            continue;
                        }
                        Input::Pruned {
                            room: name,
                            first_kept: Seq(first),
                        }
                    }
                    Doorbell::Read { node, seq, user } => {
                        if node == shared.node {
                            continue;
                        }
                        let Some(user) = user_name(&user) else {
                            continue;
                        };
                        Input::ReadMarkers {
                            user,
                            markers: vec![(name, Seq(seq))],
                        }
                    }
                    Doorbell::Typing { node, active, user } => {
                        if node == shared.node {
                            continue;
                        }
                        let Some(user) = user_name(&user) else {
                            continue;
                        };
                        Input::Typing {
                            room: name,
                            user,
                            active,
                        }
                    }
                    Doorbell::Presence {
                        pv,
                        joined,
                        ts_ms,
                        user,
                    } => {
                        let Some(user) = user_name(&user) else {
                            continue;
                        };
                        Input::Presence {
                            room: name,
                            announced: Announced {
                                pv,
                                user,
                                joined,
                                ts: ts(ts_ms),
                            },
                        }
                    }
                }
            }
            Bell::Subscribed => {
                // Doorbells may have been missed while the subscription was being made:
                // read every room's log and presence again.
                if shared
                    .inbox
                    .notify(Input::CatchUp { room: None })
                    .await
                    .is_err()
                {
                    return;
                }
                for room in shared.rooms.all() {
                    tokio::spawn(fetch_presence(shared.clone(), room));
                }
                continue;
            }
            Bell::Behind { room } => match shared.rooms.get(&room) {
                Some(name) => Input::CatchUp { room: Some(name) },
                None => continue,
            },
            Bell::Control { node, control } => {
                if node == shared.node {
                    continue;
                }
                if shared.inbox.relayed(control).await.is_err() {
                    return;
                }
                continue;
            }
            Bell::Foreign { room, why } => {
                metrics::counter!(FOREIGN).increment(1);
                tracing::debug!(room = %room, why = %why, "foreign payload on a room channel skipped");
                continue;
            }
        };
        if shared.inbox.notify(input).await.is_err() {
            return;
        }
    }
}

/// Heartbeats, the reaper, the periodic check.
async fn heartbeat_task(shared: Shared, rejoin: mpsc::UnboundedSender<()>) {
    let mut log = shared.log.clone();
    let opts = shared.options.clone();
    let mut tick = tokio::time::interval(opts.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_check = tokio::time::Instant::now();
    let mut last_names = tokio::time::Instant::now();
    let mut failing = false;
    // When this node last failed to reach Redis: after an outage every node's lease may
    // have run out, so it reaps nobody until the others have had two beats to renew.
    let mut last_failure: Option<tokio::time::Instant> = None;
    let mut stop = shared.stop.clone();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        match log.heartbeat(&shared.node, opts.lease).await {
            Ok(new) => {
                if failing {
                    tracing::info!("redis reachable again");
                    failing = false;
                }
                if new {
                    let _ = rejoin.send(());
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "redis heartbeat failed");
                    failing = true;
                }
                last_failure = Some(tokio::time::Instant::now());
                continue;
            }
        }
        let settled = last_failure.is_none_or(|at| at.elapsed() >= opts.heartbeat * 2);
        if settled && let Ok(dead) = log.dead_nodes().await {
            for node in dead.into_iter().filter(|n| *n != shared.node) {
                match log.reap(&node).await {
                    Ok(rooms) => {
                        tracing::info!(node = %node, rooms = rooms.len(), "dead node reaped")
                    }
                    Err(e) => {
                        tracing::warn!(node = %node, error = %e, "reaping a dead node failed")
                    }
                }
            }
        }
        // Every beat: a flushed or replaced epoch is followed within a second (reading
        // it makes a new one if Redis lost it).
        if let Ok(epoch) = log.cluster_epoch().await {
            shared.follow(epoch).await;
        }
        if last_names.elapsed() >= opts.name_lease / 3 {
            last_names = tokio::time::Instant::now();
            renew_names(&shared, &mut log).await;
        }
        if last_check.elapsed() >= opts.check_every {
            last_check = tokio::time::Instant::now();
            if shared
                .inbox
                .notify(Input::CatchUp { room: None })
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// Retries a read until it succeeds or the broker stops (the engine waits for the
/// answer before it asks again, so giving up would leave the room stuck).
macro_rules! retrying {
    ($shared:expr, $what:expr, $call:expr) => {{
        let mut wait = Duration::from_millis(100);
        loop {
            match $call {
                Ok(v) => break Some(v),
                Err(e) => {
                    if $shared.stopping() {
                        break None;
                    }
                    tracing::warn!(error = %e, what = $what, "redis read failed: retrying");
                    $shared.pause(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
    }};
}

/// Answers [`ClusterRequest::FetchLog`]: the log after `after`, in chunks.
async fn fetch_log(shared: Shared, room: RoomName, mut after: Seq) {
    let mut log = shared.log.clone();
    let max = shared.options.fetch_max.max(1);
    let mut first = true;
    loop {
        let Some(read) = retrying!(
            shared,
            "log",
            log.read_after(room.as_str(), after.0, max).await
        ) else {
            return;
        };
        let mut gap_before = None;
        if first {
            if let Some(e) = read.entries.first()
                && e.seq > after.0 + 1
            {
                gap_before = Some(Seq(e.seq));
            } else if read.entries.is_empty() && read.top > after.0 {
                // Everything after `after` was trimmed away.
                gap_before = Some(Seq(read.top + 1));
            }
            if read.top < after.0 {
                tracing::error!(room = %room, top = read.top, seen = after.0, "the room's log is below a seq this node delivered (lost by redis)");
                shared.regressed().await;
            }
        }
        first = false;
        let last = read.entries.last().map_or(after.0, |e| e.seq);
        let more = read.entries.len() >= max && last < read.top;
        let messages = read
            .entries
            .into_iter()
            .map(|e| message(&room, e))
            .collect();
        let input = Input::RoomLog {
            room: room.clone(),
            messages,
            gap_before,
            fetched: !more,
        };
        if shared.inbox.answer(input).is_err() {
            return;
        }
        // What the log no longer keeps (retention, the window cap): the window lets go
        // of it too, so a resume or page below it says the gap (a trim doorbell this
        // node missed is made good here, at the latest at the next periodic check).
        if read.first > 1
            && shared
                .inbox
                .answer(Input::Pruned {
                    room: room.clone(),
                    first_kept: Seq(read.first),
                })
                .is_err()
        {
            return;
        }
        if !more {
            return;
        }
        after = Seq(last);
    }
}

/// Answers [`ClusterRequest::ClaimName`]; a name not had is no longer held here.
async fn claim_name(shared: Shared, session: chat_core::SessionId, key: String, holder: String) {
    let mut log = shared.log.clone();
    let result = log
        .claim_name(&key, &holder, shared.options.name_lease)
        .await
        .map_err(|e| StoreError::Unavailable(format!("redis: {e}")));
    if !matches!(result, Ok(true)) {
        let mut names = shared.names.lock().expect("not poisoned");
        if names.get(&key) == Some(&holder) {
            names.remove(&key);
        }
    }
    let _ = shared.inbox.answer(Input::NameClaimed { session, result });
}

/// Renews every name this node holds (one call each).
async fn renew_names(shared: &Shared, log: &mut RedisLog) {
    let held: Vec<(String, String)> = shared
        .names
        .lock()
        .expect("not poisoned")
        .iter()
        .map(|(k, h)| (k.clone(), h.clone()))
        .collect();
    for (key, holder) in held {
        match log
            .claim_name(&key, &holder, shared.options.name_lease)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(key = %key, "a name this node holds was taken by another holder (its reservation lapsed)");
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing names failed");
                return;
            }
        }
    }
}

/// Publishes this node's typing indicators, in order (at most once: a failure drops it).
async fn typing_task(
    shared: Shared,
    mut typing: mpsc::UnboundedReceiver<(RoomName, UserName, bool)>,
) {
    let mut log = shared.log.clone();
    let mut stop = shared.stop.clone();
    loop {
        let (room, user, active) = tokio::select! {
            t = typing.recv() => match t { Some(t) => t, None => return },
            _ = stop.wait_for(|s| *s) => return,
        };
        if let Err(e) = log
            .publish_typing(room.as_str(), &shared.node, user.as_str(), active)
            .await
        {
            tracing::debug!(error = %e, "a typing indicator was not published");
        }
    }
}

/// Publishes a host's or moderator's action for the other nodes
/// ([`ClusterRequest::Relay`]), trying again every 500 ms for 10 s while Redis does not
/// take it (a revocation must not be lost to a short outage; carrying one out twice
/// does no harm).
async fn publish_control(shared: Shared, control: chat_core::runtime::ClusterControl) {
    let mut log = shared.log.clone();
    for attempt in 0..20 {
        match log.publish_control(&shared.node, &control).await {
            Ok(()) => return,
            Err(e) if attempt == 19 => {
                tracing::error!(error = %e, action = ?control, "an action was not relayed to the other nodes");
            }
            Err(_) => shared.pause(Duration::from_millis(500)).await,
        }
    }
}

/// Writes moderation changes in the order made ([`ClusterRequest::SaveModeration`]),
/// each tried every 500 ms for 2 s, answers each, then publishes the action that made
/// it (even when the write failed: the servers that hear it carry it out).
async fn moderation_lane(shared: Shared, mut changes: mpsc::UnboundedReceiver<ModerationLane>) {
    let mut log = shared.log.clone();
    while let Some((ticket, change, relay)) = changes.recv().await {
        let mut result = Ok(());
        for attempt in 0..5 {
            match log.save_moderation(&change).await {
                Ok(()) => {
                    result = Ok(());
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "writing a moderation change to redis failed");
                    result = Err(StoreError::Unavailable(format!("redis: {e}")));
                    if attempt < 4 {
                        shared.pause(Duration::from_millis(500)).await;
                    }
                }
            }
        }
        if shared
            .inbox
            .answer(Input::ModerationSaved { ticket, result })
            .is_err()
        {
            return;
        }
        if let Some(control) = relay {
            tokio::spawn(publish_control(shared.clone(), control));
        }
    }
}

/// Keeps a user's read marker ([`ClusterRequest::ShareRead`]), trying again every
/// 500 ms for 10 s while Redis does not take it (the script is idempotent).
async fn share_read(shared: Shared, room: RoomName, user: UserName, seq: Seq) {
    let mut log = shared.log.clone();
    for attempt in 0..20 {
        match log
            .share_read(room.as_str(), &shared.node, user.as_str(), seq.0)
            .await
        {
            Ok(_) => return,
            Err(e) if attempt == 19 => {
                tracing::warn!(error = %e, room = %room, "a read marker was not kept in redis");
            }
            Err(_) => shared.pause(Duration::from_millis(500)).await,
        }
    }
}

/// Answers [`ClusterRequest::FetchModeration`] (and a [`ClusterRequest::LoadRoom`]'s
/// first part): nothing is answered when Redis does not (the engine keeps what it has
/// and asks again at the next catch-up).
async fn fetch_moderation(shared: Shared, room: RoomName) {
    let mut log = shared.log.clone();
    let result = log
        .read_moderation(&room)
        .await
        .map_err(|e| StoreError::Unavailable(format!("redis: {e}")));
    let _ = shared
        .inbox
        .answer(Input::ModerationLoaded { room, result });
}

/// Answers [`ClusterRequest::LoadReadMarkers`] (retried until Redis answers: a user's
/// unread counts on this server wait for it).
async fn load_read_markers(shared: Shared, user: UserName) {
    let mut log = shared.log.clone();
    let Some(markers) = retrying!(
        shared,
        "read markers",
        log.read_markers(user.as_str()).await
    ) else {
        return;
    };
    let markers = markers
        .into_iter()
        .filter_map(|(room, seq)| Some((RoomName::key_of(&room)?, Seq(seq))))
        .collect();
    let _ = shared.inbox.answer(Input::ReadMarkers { user, markers });
}

/// Answers [`ClusterRequest::LoadRoom`]: the room's moderation state first (so that
/// what waited for the room is checked against it), then the room.
async fn load_room(shared: Shared, room: RoomName) {
    fetch_moderation(shared.clone(), room.clone()).await;
    let mut log = shared.log.clone();
    let result = log
        .read_latest(room.as_str(), shared.options.log.window)
        .await;
    let result = match result {
        Ok(read) => {
            let complete = read.entries.first().is_none_or(|e| e.seq <= 1);
            // Told first: the room's gap is known before what waits for the room runs.
            if read.first > 1 {
                let _ = shared.inbox.answer(Input::Pruned {
                    room: room.clone(),
                    first_kept: Seq(read.first),
                });
            }
            Ok(LoadedRoom {
                last_seq: Seq(read.top),
                recent: read
                    .entries
                    .into_iter()
                    .map(|e| message(&room, e))
                    .collect(),
                complete,
                present: present(read.users),
                pv: read.pv,
            })
        }
        Err(e) => {
            tracing::warn!(room = %room, error = %e, "loading a room from redis failed");
            Err(StoreError::Unavailable(format!("redis: {e}")))
        }
    };
    let loaded = result.is_ok();
    if shared
        .inbox
        .answer(Input::RoomLoaded {
            room: room.clone(),
            result,
        })
        .is_err()
    {
        return;
    }
    if loaded {
        // Entries committed after the read whose doorbells came before the room was
        // there: read them now.
        let _ = shared.inbox.answer(Input::CatchUp { room: Some(room) });
    }
}

/// Answers [`ClusterRequest::LoadHistory`] from the stream.
async fn load_history(
    shared: Shared,
    ticket: u64,
    room: RoomName,
    before: Option<Seq>,
    limit: usize,
) {
    let mut log = shared.log.clone();
    let result = match log
        .read_before(room.as_str(), before.map(|s| s.0), limit)
        .await
    {
        Ok((entries, more)) => Ok((
            entries.into_iter().map(|e| message(&room, e)).collect(),
            more,
        )),
        Err(e) => Err(StoreError::Unavailable(format!("redis: {e}"))),
    };
    let _ = shared.inbox.answer(Input::HistoryLoaded { ticket, result });
}

/// Answers [`ClusterRequest::FetchPresence`] (and refreshes after a re-subscription).
async fn fetch_presence(shared: Shared, room: RoomName) {
    let mut log = shared.log.clone();
    let Some((pv, users)) = retrying!(shared, "presence", log.present(room.as_str()).await) else {
        return;
    };
    let _ = shared.inbox.answer(Input::PresenceSnapshot {
        room,
        pv,
        users: present(users),
    });
}

fn present(users: Vec<(String, u64)>) -> Vec<UserName> {
    users
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .filter_map(|(u, _)| user_name(&u))
        .collect()
}

fn user_name(raw: &str) -> Option<UserName> {
    let name = UserName::parse(raw, usize::MAX).ok();
    if name.is_none() {
        metrics::counter!(FOREIGN).increment(1);
    }
    name
}

fn ts(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// A refusal of `commit.lua` as the engine's: the protocol's code, which the author
/// gets as its error (a code the engine does not know is `storage_unavailable`).
fn refused(code: &str, why: &str) -> StoreError {
    match serde_json::from_value::<chat_core::protocol::ErrorCode>(serde_json::Value::String(
        code.to_owned(),
    )) {
        Ok(code) => StoreError::Refused(code, why.to_owned()),
        Err(_) => StoreError::Unavailable(format!("redis refused ({code}): {why}")),
    }
}

/// An entry of the log as the engine's message: a message in its current state when
/// the read carried one, a change as committed (an edit of a deleted message without
/// its text). An author that is not a valid name (someone else's write on our stream) is
/// counted as foreign and shown as `unknown`: the entry keeps its seq, so no hole opens.
fn message(room: &RoomName, e: Entry) -> Message {
    let unknown = || UserName::parse("unknown", 16).expect("a valid name");
    let user = user_name(&e.user).unwrap_or_else(unknown);
    let mut m = Message::new(
        room.clone(),
        Seq(e.seq),
        ts(e.ts_ms),
        user,
        e.body.into(),
        e.client_id.map(ClientMsgId::from),
    );
    m.kind = e.kind;
    m.target = e.target.map(Seq);
    m.emoji = e.emoji;
    m.on = e.on;
    m.reply_to = e.reply_to.map(Seq);
    if let Some(st) = e.state.map(|st| *st) {
        if m.kind.is_message() {
            m.rev = st.rev.map(Seq);
            if st.deleted {
                m.deleted = true;
                m.body = Arc::from("");
            } else {
                if let Some(body) = st.body {
                    m.body = body.into();
                }
                m.edited_at = st.edited_ms.map(ts);
                m.reactions = st
                    .reactions
                    .into_iter()
                    .map(|(emoji, users)| chat_core::protocol::Reaction {
                        emoji,
                        users: users.iter().filter_map(|u| user_name(u)).collect(),
                    })
                    .filter(|r| !r.users.is_empty())
                    .collect();
            }
        } else if m.kind == chat_core::protocol::EntryKind::Edit && st.deleted {
            // The edited message is deleted: its text goes, the edits' too.
            m.body = Arc::from("");
        }
    }
    m
}

/// Retention: every `sweep_every`, the node that takes the lease enforces every room's
/// policy (its own in Redis, or `Config::retention`), a room at a time, one bounded
/// `retain.lua` step per call. Its own connection, so that sweeping never queues behind
/// (or ahead of) the node's commits; Redis away: logged once, tried again next period.
async fn sweep_task(shared: Shared, url: String) {
    let opts = shared.options.clone();
    let period = opts.sweep_every.max(Duration::from_millis(10));
    let mut stop = shared.stop.clone();
    let mut log: Option<RedisLog> = None;
    let mut failing = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if log.is_none() {
            match RedisLog::connect(&url, opts.log.clone()).await {
                Ok(l) => log = Some(l),
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "retention sweep: redis unreachable, trying again next period");
                        failing = true;
                    }
                    continue;
                }
            }
        }
        let Some(conn) = log.as_mut() else { continue };
        match sweep(&shared, conn, period).await {
            Ok(rooms) => {
                if failing {
                    tracing::info!("retention sweep: redis reachable again");
                    failing = false;
                }
                if rooms > 0 {
                    tracing::debug!(rooms, "retention sweep trimmed rooms");
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "retention sweep failed, trying again next period");
                    failing = true;
                }
            }
        }
    }
}

/// One sweep, if this node takes the period's lease: how many rooms it trimmed.
async fn sweep(shared: &Shared, log: &mut RedisLog, period: Duration) -> Result<usize, Error> {
    if !log.take_sweep(&shared.node, period).await? {
        return Ok(0);
    }
    let default = *shared.retention.lock().expect("not poisoned");
    let budget = shared.options.retain_budget;
    let mut cursor = 0;
    let mut trimmed = 0;
    loop {
        let (next, rooms) = log.scan_rooms(cursor, 64).await?;
        for room in rooms {
            if shared.stopping() {
                return Ok(trimmed);
            }
            if retain_room(log, &room, default, budget, &shared.stop).await? > 0 {
                trimmed += 1;
            }
        }
        if next == 0 {
            return Ok(trimmed);
        }
        cursor = next;
    }
}

/// Enforces `room`'s policy fully, in bounded steps (yielding between them); how many
/// entries went.
async fn retain_room(
    log: &mut RedisLog,
    room: &str,
    default: Option<Retention>,
    budget: usize,
    stop: &watch::Receiver<bool>,
) -> Result<u64, Error> {
    let mut total = 0;
    loop {
        let step = log.retain(room, default, budget, None).await?;
        total += step.trimmed;
        if !step.more || *stop.borrow() {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}
