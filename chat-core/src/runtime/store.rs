//! The durable store behind the runtime: a trait and an in-memory implementation.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use crate::ids::{RoomName, Seq, UserName};
use crate::protocol::Message;
use crate::server::{ModerationChange, Retention, StoreError};

/// A room as loaded from the store at startup.
#[derive(Debug, Clone)]
pub struct RestoredRoom {
    /// The room.
    pub room: RoomName,
    /// Its last stored seq.
    pub last_seq: Seq,
    /// Its newest messages, oldest first (at most the history window).
    pub recent: Vec<Message>,
    /// True when `recent` is everything the store holds for the room.
    pub complete: bool,
}

/// What the store holds at startup.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    /// The history epoch: a new one whenever the store starts empty.
    pub epoch: String,
    /// Every room with stored messages.
    pub rooms: Vec<RestoredRoom>,
}

/// Durable message storage. Methods block; the runtime calls `append` from one dedicated
/// writer thread (in order, grouping the messages that arrived while the previous call
/// ran) and the read methods from blocking tasks, so reads never wait behind writes. A
/// store whose [`Store::cheap_commits`] says `true` may instead get `append` from the
/// driver task, still in order and one call at a time.
pub trait Store: Send + Sync + 'static {
    /// Loads every room's last seq, its newest `window` messages and the epoch. The
    /// runtime asks with `window` 0 (names and last seqs only) and reads a room's
    /// window with [`Store::page`] when the room is needed.
    fn load(&self, window: usize) -> Result<Restored, StoreError>;

    /// Commits a group of messages atomically, in order. Only after `Ok` are they acked.
    fn append(&self, batch: &[Arc<Message>]) -> Result<(), StoreError>;

    /// Whether a commit is cheap enough for the driver task to run it itself (no fsync
    /// per commit: an in-memory database, or SQLite with `Durability::Normal`); see
    /// [`HubConfig::commit_inline`](super::HubConfig::commit_inline). A store that says
    /// `true` must allow [`Store::append`] on the driver's thread while the writer thread
    /// runs its other writes (moderation, read markers, retention). The default: `false`
    /// (every write on the writer thread).
    fn cheap_commits(&self) -> bool {
        false
    }

    /// The newest `limit` messages of `room` with seq below `before` (all when `None`),
    /// oldest first, and whether older ones exist.
    fn page(
        &self,
        room: &RoomName,
        before: Option<Seq>,
        limit: usize,
    ) -> Result<(Vec<Message>, bool), StoreError>;

    /// Commits a group of moderation changes atomically, in order (roles, bans, mutes,
    /// topics, slow modes: see [`ModerationChange`]). Only after `Ok` is the moderator
    /// told `done` (and a `Hub` moderation call returns). Called from the same writer
    /// thread as [`Store::append`].
    ///
    /// The default keeps nothing and says so: moderators then get
    /// `storage_unavailable` and the state holds only until a restart.
    fn save_moderation(&self, changes: &[ModerationChange]) -> Result<(), StoreError> {
        let _ = changes;
        Err(StoreError::Unavailable(
            "this store does not keep moderation state".into(),
        ))
    }

    /// The stored moderation state, as changes to apply in order
    /// ([`Server::restore_moderation`](crate::Server::restore_moderation)); read once at
    /// startup. The default: none.
    fn load_moderation(&self) -> Result<Vec<ModerationChange>, StoreError> {
        Ok(Vec::new())
    }

    /// Stores read markers (a host identity's last seq read per room), in order: a later
    /// one of the same user and room replaces an earlier one. Called from the writer
    /// thread with each group. The default keeps none (markers then last as long as
    /// the process).
    fn save_read_markers(&self, markers: &[(UserName, RoomName, Seq)]) -> Result<(), StoreError> {
        let _ = markers;
        Ok(())
    }

    /// A group of messages and the read markers that came with it, committed together
    /// (the writer's group commit: one transaction, one sync, for both). The default
    /// appends, then saves the markers.
    fn append_with_markers(
        &self,
        batch: &[Arc<Message>],
        markers: &[(UserName, RoomName, Seq)],
    ) -> Result<(), StoreError> {
        self.append(batch)?;
        self.save_read_markers(markers)
    }

    /// Every stored read marker; read once at startup. The default: none.
    fn load_read_markers(&self) -> Result<Vec<(UserName, RoomName, Seq)>, StoreError> {
        Ok(Vec::new())
    }

    /// Stores a room's own retention policy (`None`: the room follows the default
    /// again). Called from the writer thread. The default keeps none.
    fn save_retention(&self, room: &RoomName, policy: Option<Retention>) -> Result<(), StoreError> {
        let _ = (room, policy);
        Ok(())
    }

    /// The rooms' own retention policies; read once at startup. The default: none.
    fn load_retention(&self) -> Result<Vec<(RoomName, Retention)>, StoreError> {
        Ok(Vec::new())
    }

    /// One small step of retention: deletes at most `budget` entries that `policy` (a
    /// room's policy, `None` for a room it keeps whole) no longer keeps at `now`, never
    /// a room's newest entry. Called from the writer thread between group commits.
    /// Returns the rooms it pruned with the oldest seq each still keeps, and whether it
    /// stopped for the budget (more to delete). The default prunes nothing.
    fn prune(
        &self,
        policy: &dyn Fn(&RoomName) -> Option<Retention>,
        now: DateTime<Utc>,
        budget: usize,
    ) -> Result<Pruned, StoreError> {
        let _ = (policy, now, budget);
        Ok(Pruned::default())
    }

    /// The oldest seq of `room` that retention kept, if it pruned the room (everything
    /// below it is gone). The default: `None`.
    fn first_kept(&self, room: &RoomName) -> Result<Option<Seq>, StoreError> {
        let _ = room;
        Ok(None)
    }

    /// The rooms holding entries by `user` (erasure: `Hub::erase_user`). The default
    /// finds them with [`Store::load`] and [`Store::page`].
    fn rooms_of(&self, user: &UserName) -> Result<Vec<RoomName>, StoreError> {
        let key = user.key();
        let mut rooms = Vec::new();
        for r in self.load(0)?.rooms {
            let (all, _) = self.page(&r.room, None, usize::MAX)?;
            if all.iter().any(|m| m.user.key() == key) {
                rooms.push(r.room);
            }
        }
        Ok(rooms)
    }

    /// Flushes and releases resources at shutdown (e.g. checkpoints a WAL).
    fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// What one step of [`Store::prune`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Each room pruned, with the oldest seq it still keeps.
    pub rooms: Vec<(RoomName, Seq)>,
    /// The step stopped for its budget: there is more to delete.
    pub more: bool,
}

/// The first seq `policy` keeps of a room whose entries are `(seq, ts)`, oldest first:
/// above every entry older than `max_age` and all but the newest `max_count`; never
/// above the newest entry.
pub(crate) fn first_kept(
    entries: impl DoubleEndedIterator<Item = (Seq, DateTime<Utc>)> + Clone,
    policy: Retention,
    now: DateTime<Utc>,
) -> Option<Seq> {
    let last = entries.clone().next_back()?.0;
    let mut keep = Seq(1);
    if let Some(n) = policy.max_count {
        keep = keep.max(Seq(last.0.saturating_sub(n.max(1)) + 1));
    }
    if let Some(age) = policy.max_age {
        let cutoff = now - chrono::Duration::from_std(age).unwrap_or(chrono::TimeDelta::MAX);
        if let Some((seq, _)) = entries.clone().find(|(_, ts)| *ts >= cutoff) {
            keep = keep.max(seq);
        } else {
            keep = last;
        }
    }
    Some(keep.min(last))
}

/// A [`Store`] in memory: durable for the life of the process only. Useful for tests and
/// for measuring the runtime's store path without a disk.
#[derive(Debug, Default)]
pub struct MemoryStore {
    rooms: Mutex<BTreeMap<RoomName, Vec<Message>>>,
    moderation: Mutex<Vec<ModerationChange>>,
    markers: Mutex<BTreeMap<(UserName, RoomName), Seq>>,
    retention: Mutex<BTreeMap<RoomName, Retention>>,
    pruned: Mutex<BTreeMap<RoomName, Seq>>,
    epoch: String,
}

impl MemoryStore {
    /// An empty store with this epoch.
    #[must_use]
    pub fn new(epoch: impl Into<String>) -> MemoryStore {
        MemoryStore {
            rooms: Mutex::default(),
            moderation: Mutex::default(),
            markers: Mutex::default(),
            retention: Mutex::default(),
            pruned: Mutex::default(),
            epoch: epoch.into(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>, StoreError> {
    m.lock()
        .map_err(|_| StoreError::Unavailable("memory store lock poisoned".into()))
}

impl Store for MemoryStore {
    fn load(&self, window: usize) -> Result<Restored, StoreError> {
        let rooms = self
            .rooms
            .lock()
            .map_err(|_| StoreError::Unavailable("memory store lock poisoned".into()))?;
        let rooms = rooms
            .iter()
            .map(|(room, msgs)| {
                let start = msgs.len().saturating_sub(window);
                RestoredRoom {
                    room: room.clone(),
                    last_seq: msgs.last().map_or(Seq(0), |m| m.seq),
                    recent: msgs[start..].to_vec(),
                    complete: start == 0,
                }
            })
            .collect();
        Ok(Restored {
            epoch: self.epoch.clone(),
            rooms,
        })
    }

    fn append(&self, batch: &[Arc<Message>]) -> Result<(), StoreError> {
        let mut rooms = self
            .rooms
            .lock()
            .map_err(|_| StoreError::Unavailable("memory store lock poisoned".into()))?;
        for m in batch {
            let msgs = rooms.entry(m.room.clone()).or_default();
            msgs.push(Message::clone(m));
        }
        Ok(())
    }

    fn save_read_markers(&self, markers: &[(UserName, RoomName, Seq)]) -> Result<(), StoreError> {
        let mut kept = lock(&self.markers)?;
        for (user, room, seq) in markers {
            kept.insert((user.clone(), room.clone()), *seq);
        }
        Ok(())
    }

    fn load_read_markers(&self) -> Result<Vec<(UserName, RoomName, Seq)>, StoreError> {
        Ok(lock(&self.markers)?
            .iter()
            .map(|((u, r), s)| (u.clone(), r.clone(), *s))
            .collect())
    }

    fn save_retention(&self, room: &RoomName, policy: Option<Retention>) -> Result<(), StoreError> {
        let mut kept = lock(&self.retention)?;
        match policy {
            Some(p) => kept.insert(room.clone(), p),
            None => kept.remove(room),
        };
        Ok(())
    }

    fn load_retention(&self) -> Result<Vec<(RoomName, Retention)>, StoreError> {
        Ok(lock(&self.retention)?
            .iter()
            .map(|(r, p)| (r.clone(), *p))
            .collect())
    }

    fn first_kept(&self, room: &RoomName) -> Result<Option<Seq>, StoreError> {
        Ok(lock(&self.pruned)?.get(room).copied())
    }

    fn prune(
        &self,
        policy: &dyn Fn(&RoomName) -> Option<Retention>,
        now: DateTime<Utc>,
        budget: usize,
    ) -> Result<Pruned, StoreError> {
        let mut rooms = lock(&self.rooms)?;
        let mut done = Pruned::default();
        let mut left = budget;
        for (room, msgs) in rooms.iter_mut() {
            let Some(p) = policy(room) else { continue };
            let Some(keep) = first_kept(msgs.iter().map(|m| (m.seq, m.ts)), p, now) else {
                continue;
            };
            let below = msgs.partition_point(|m| m.seq < keep);
            if below == 0 {
                continue;
            }
            if left == 0 {
                done.more = true;
                break;
            }
            let n = below.min(left);
            msgs.drain(..n);
            left -= n;
            done.rooms.push((room.clone(), msgs[0].seq));
            lock(&self.pruned)?.insert(room.clone(), msgs[0].seq);
            if n < below {
                done.more = true;
                break;
            }
        }
        Ok(done)
    }

    fn save_moderation(&self, changes: &[ModerationChange]) -> Result<(), StoreError> {
        self.moderation
            .lock()
            .map_err(|_| StoreError::Unavailable("memory store lock poisoned".into()))?
            .extend_from_slice(changes);
        Ok(())
    }

    fn load_moderation(&self) -> Result<Vec<ModerationChange>, StoreError> {
        Ok(self
            .moderation
            .lock()
            .map_err(|_| StoreError::Unavailable("memory store lock poisoned".into()))?
            .clone())
    }

    fn page(
        &self,
        room: &RoomName,
        before: Option<Seq>,
        limit: usize,
    ) -> Result<(Vec<Message>, bool), StoreError> {
        let rooms = self
            .rooms
            .lock()
            .map_err(|_| StoreError::Unavailable("memory store lock poisoned".into()))?;
        let Some(msgs) = rooms.get(room) else {
            return Ok((vec![], false));
        };
        let end = before.map_or(msgs.len(), |b| msgs.partition_point(|m| m.seq < b));
        let start = end.saturating_sub(limit);
        Ok((msgs[start..end].to_vec(), start > 0))
    }
}
