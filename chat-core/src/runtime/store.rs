//! The durable store behind the runtime: a trait and an in-memory implementation.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::ids::{RoomName, Seq};
use crate::protocol::Message;
use crate::server::{ModerationChange, StoreError};

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
/// ran) and the read methods from blocking tasks, so reads never wait behind writes.
pub trait Store: Send + Sync + 'static {
    /// Loads every room's last seq, its newest `window` messages and the epoch. The
    /// runtime asks with `window` 0 (names and last seqs only) and reads a room's
    /// window with [`Store::page`] when the room is needed.
    fn load(&self, window: usize) -> Result<Restored, StoreError>;

    /// Commits a group of messages atomically, in order. Only after `Ok` are they acked.
    fn append(&self, batch: &[Arc<Message>]) -> Result<(), StoreError>;

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

    /// Flushes and releases resources at shutdown (e.g. checkpoints a WAL).
    fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A [`Store`] in memory: durable for the life of the process only. Useful for tests and
/// for measuring the runtime's store path without a disk.
#[derive(Debug, Default)]
pub struct MemoryStore {
    rooms: Mutex<BTreeMap<RoomName, Vec<Message>>>,
    moderation: Mutex<Vec<ModerationChange>>,
    epoch: String,
}

impl MemoryStore {
    /// An empty store with this epoch.
    #[must_use]
    pub fn new(epoch: impl Into<String>) -> MemoryStore {
        MemoryStore {
            rooms: Mutex::default(),
            moderation: Mutex::default(),
            epoch: epoch.into(),
        }
    }
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
            rooms
                .entry(m.room.clone())
                .or_default()
                .push(Message::clone(m));
        }
        Ok(())
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
