//! The SQLite [`Store`]: see [`SqliteStore`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::store::{Pruned, Restored, RestoredRoom, Store};
use crate::ids::{ClientMsgId, RoomName, Seq, UserName};
use crate::protocol::{EntryKind, Message, Role};
use crate::server::{ModerationChange, Retention, StoreError};

/// How hard a commit works to survive a crash. See [`SqliteStore`](SqliteStore#durability).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=FULL`: every commit is `fsync`ed before the ack. Survives power loss.
    #[default]
    Full,
    /// `synchronous=NORMAL`: commits are written to the OS but `fsync`ed only at WAL
    /// checkpoints. Survives a crash of the process, not of the machine.
    Normal,
}

impl Durability {
    fn pragma(self) -> &'static str {
        match self {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        }
    }
}

impl std::str::FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "full" => Ok(Durability::Full),
            "normal" => Ok(Durability::Normal),
            other => Err(format!("unknown durability {other:?} (full or normal)")),
        }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Durability::Full => "full",
            Durability::Normal => "normal",
        })
    }
}

/// The schema version this code writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How long a statement waits for a lock held by another connection or process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle read connections kept open.
const MAX_IDLE_READERS: usize = 4;
/// Page cache of each read connection, in KiB.
const READER_CACHE_KIB: u32 = 256;

/// The migrations, in order: `MIGRATIONS[i]` takes `user_version` from `i` to `i + 1`.
/// The epoch row is written by the code, since it needs randomness.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY NOT NULL,
        value TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE messages (
        id        INTEGER PRIMARY KEY,
        room      TEXT    NOT NULL,
        seq       INTEGER NOT NULL,
        ts        INTEGER NOT NULL,
        user      TEXT    NOT NULL,
        body      TEXT    NOT NULL,
        client_id TEXT
    );
    CREATE UNIQUE INDEX messages_by_room ON messages (room, seq);
",
    "
    CREATE TABLE room_roles (
        room     TEXT NOT NULL,
        user_key TEXT NOT NULL,
        user     TEXT NOT NULL,
        role     TEXT NOT NULL CHECK (role IN ('owner', 'moderator')),
        PRIMARY KEY (room, user_key)
    ) WITHOUT ROWID;
    CREATE TABLE room_sanctions (
        room     TEXT NOT NULL,
        user_key TEXT NOT NULL,
        kind     TEXT NOT NULL CHECK (kind IN ('ban', 'mute')),
        user     TEXT NOT NULL,
        until    INTEGER,
        PRIMARY KEY (room, user_key, kind)
    ) WITHOUT ROWID;
    CREATE TABLE room_settings (
        room      TEXT PRIMARY KEY NOT NULL,
        topic     TEXT NOT NULL DEFAULT '',
        slow_mode INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
",
    "
    ALTER TABLE messages ADD COLUMN kind TEXT;
    ALTER TABLE messages ADD COLUMN target INTEGER;
    ALTER TABLE messages ADD COLUMN extra TEXT;
    ALTER TABLE messages ADD COLUMN reply_to INTEGER;
    ALTER TABLE messages ADD COLUMN edited_at INTEGER;
    ALTER TABLE messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE messages ADD COLUMN reactions TEXT;
    ALTER TABLE messages ADD COLUMN rev INTEGER;
    CREATE TABLE read_markers (
        user TEXT    NOT NULL,
        room TEXT    NOT NULL,
        seq  INTEGER NOT NULL,
        PRIMARY KEY (user, room)
    ) WITHOUT ROWID;
",
    "
    CREATE TABLE retention (
        room       TEXT PRIMARY KEY NOT NULL,
        max_age_ms INTEGER,
        max_count  INTEGER
    ) WITHOUT ROWID;
    CREATE TABLE pruned (
        room       TEXT PRIMARY KEY NOT NULL,
        first_kept INTEGER NOT NULL
    ) WITHOUT ROWID;
",
];

const INSERT: &str = "INSERT INTO messages \
     (room, seq, ts, user, body, client_id, kind, target, extra, reply_to) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";
/// Every column of an entry, as [`row_to_message`] reads them.
const COLUMNS: &str = "seq, ts, user, body, client_id, kind, target, extra, reply_to, edited_at, deleted, reactions, rev";
const PAGE: &str = "SELECT seq, ts, user, body, client_id, kind, target, extra, reply_to, \
     edited_at, deleted, reactions, rev FROM messages \
     WHERE room = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3";
/// The current state of a message, written in the transaction of the change to it.
const UPDATE_STATE: &str = "UPDATE messages SET body = ?3, edited_at = ?4, deleted = ?5, \
     reactions = ?6, rev = ?7 WHERE room = ?1 AND seq = ?2";
/// A deleted message's text leaves the store with it: the bodies of its edits too.
const BLANK_EDITS: &str = "UPDATE messages SET body = '' \
     WHERE room = ?1 AND seq > ?2 AND target = ?2 AND kind = 'edit'";
const NEXT_ROOM: &str = "SELECT room FROM messages WHERE room > ?1 ORDER BY room LIMIT 1";

/// A room's first and last seq. Two subqueries, not `min(seq), max(seq)` in one: SQLite
/// reads a lone `min()` or `max()` off one end of the index, but with both it walks every
/// row of the room, so each retention step cost the room's size (a busy room under
/// `--retain-messages` kept the store writer's core busy with it).
const ROOM_BOUNDS: &str = "SELECT (SELECT min(seq) FROM messages WHERE room = ?1), \
                                  (SELECT max(seq) FROM messages WHERE room = ?1)";

/// A durable [`Store`] on an SQLite file (feature `sqlite`): the embedded default of the
/// example server.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use chat_core::runtime::{Durability, Hub, HubConfig, SqliteStore};
/// let store = SqliteStore::open("chat.db", Durability::Full)?;
/// let hub = Hub::spawn(HubConfig { store: Some(Arc::new(store)), ..HubConfig::default() }).await?;
/// # let _ = hub; Ok(()) }
/// ```
///
/// # Shape
///
/// * **One writer.** The runtime calls [`Store::append`] from one dedicated thread with
///   every message that arrived while the previous commit ran (group commit). Each call is
///   one `BEGIN IMMEDIATE … COMMIT` transaction with cached prepared statements, so the
///   cost of the commit (an `fsync` with [`Durability::Full`]) is shared by the group.
/// * **Readers apart.** History pages, rooms loaded on demand and the startup load (room
///   names and last seqs) use their own connections (a small pool). The database is in WAL mode, so readers see the last commit and never
///   block the writer, and the writer never blocks them.
/// * **`:memory:`** opens one private in-memory database (an ephemeral server): there the
///   reads share the writer's connection, since every connection to `:memory:` would be
///   a different database.
///
/// # Durability
///
/// The store is in WAL mode; an `append` returns `Ok` only after `COMMIT` returned, and
/// only then does the runtime ack and deliver the messages. What survives depends on
/// [`Durability`]:
///
/// | setting | `PRAGMA synchronous` | an acknowledged message survives |
/// |---|---|---|
/// | [`Durability::Full`] (default) | `FULL`: the WAL is `fsync`ed at every commit | a process crash, `kill -9`, an OS crash, a power loss |
/// | [`Durability::Normal`] | `NORMAL`: the WAL is `fsync`ed only at checkpoints | a process crash or `kill -9`; **not** an OS crash or power loss, which may lose the last commits (the database stays consistent) |
///
/// # Schema
///
/// Versioned by `PRAGMA user_version`; [`SqliteStore::open`] migrates an older file in a
/// transaction and refuses a newer one. Version 1 (the messages):
///
/// * `meta(key, value)`: `epoch` is a random id made when the database is created. It is
///   the history epoch announced to clients: a new file (history reset) has a new epoch.
/// * `messages(id, room, seq, ts, user, body, client_id)`, unique on `(room, seq)` (the
///   index every history page reads); `ts` is milliseconds since the Unix epoch (UTC),
///   the precision the protocol carries. Rows are appended in commit order (`id`), so a
///   group of messages across many rooms fills a few new pages instead of splitting one
///   page per room, as a table clustered by `(room, seq)` did: about twice the
///   throughput with 10–100 active rooms.
///
/// Version 2 adds the rooms' moderation state ([`Store::save_moderation`]), one row per
/// fact, written in the writer's transactions like the messages:
///
/// * `room_roles(room, user_key, user, role)`: roles above member (`owner`,
///   `moderator`), by the user's case-folded key (`user` is the name as shown).
/// * `room_sanctions(room, user_key, kind, user, until)`: bans and mutes (`kind` is `ban`
///   or `mute`); `until` is when it ends, milliseconds since the Unix epoch (UTC), or
///   `NULL` for good. An ended one is deleted when the engine lifts it (at its timer, or
///   at the first timer after a restart).
/// * `room_settings(room, topic, slow_mode)`: a room's topic (`''`: none) and slow
///   mode in seconds (0: off); a room with neither has no row.
///
/// Client ids are not unique in the table on purpose: the protocol makes a resend
/// idempotent while the original is in the room's window (read with [`Store::page`] when
/// the room is loaded); an id resent after that is a new message, as without a store.
///
/// # Failures
///
/// Any failure (disk full, read-only file, the database locked by another process for
/// longer than the busy timeout, an I/O error) rolls the group back and returns
/// [`StoreError`]: the runtime then answers each sender with `storage_unavailable` and
/// acks nothing of the group. The next group tries again, so the store recovers by itself
/// when the disk does. (One case stays ambiguous, as in any database: an I/O error while
/// the commit record itself is being synced. SQLite may then find the group committed
/// when the file is next opened, so a message refused with `storage_unavailable` can
/// appear in the history after a restart, and twice if its sender resent it.)
pub struct SqliteStore {
    /// The writer's connection: used by [`Store::append`] (one thread) and `close`.
    writer: Mutex<Connection>,
    reads: Reads,
    epoch: String,
    durability: Durability,
    busy_timeout: Duration,
    /// Retention: the last room a pruning step looked at (the next step goes on after
    /// it, so every room gets its turn).
    prune_after: Mutex<String>,
}

/// Rooms one pruning step looks at, at most.
const PRUNE_ROOMS_PER_STEP: usize = 256;

enum Reads {
    /// A file: read connections of their own, opened on demand, a few kept idle.
    Pool {
        path: PathBuf,
        idle: Mutex<Vec<Connection>>,
    },
    /// `:memory:`: the only connection is the writer's.
    Shared,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = match &self.reads {
            Reads::Pool { path, .. } => path.display().to_string(),
            Reads::Shared => ":memory:".to_owned(),
        };
        f.debug_struct("SqliteStore")
            .field("path", &path)
            .field("epoch", &self.epoch)
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

fn err(context: &str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |e| classify(&e, format!("{context}: {e}"))
}

/// The kind of a SQLite failure: full and busy are worth telling apart from the rest.
fn classify(e: &rusqlite::Error, detail: String) -> StoreError {
    use rusqlite::ErrorCode as Code;
    match e.sqlite_error_code() {
        Some(Code::DiskFull) => StoreError::Full(detail),
        Some(Code::DatabaseBusy | Code::DatabaseLocked) => StoreError::Busy(detail),
        Some(Code::DatabaseCorrupt | Code::NotADatabase) => StoreError::Corrupt(detail),
        _ => StoreError::Unavailable(detail),
    }
}

fn poisoned<T>(_: T) -> StoreError {
    StoreError::Unavailable("store lock poisoned".into())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, or a private in-memory one for
    /// `":memory:"`, and migrates it to [`SCHEMA_VERSION`].
    pub fn open(path: impl AsRef<Path>, durability: Durability) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref();
        let memory = path.as_os_str() == ":memory:";
        let conn = if memory {
            Connection::open_in_memory().map_err(err("opening :memory:"))?
        } else {
            Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_WRITE
                    | OpenFlags::SQLITE_OPEN_CREATE
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|e| classify(&e, e.to_string()))?
        };
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(err("setting busy_timeout"))?;
        if !memory {
            let mode: String = conn
                .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
                .map_err(err("enabling WAL"))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(StoreError::Unavailable(format!(
                    "{} cannot use WAL (journal_mode is {mode})",
                    path.display()
                )));
            }
        }
        // secure_delete: what is deleted or overwritten (a deleted or erased message's
        // text, what retention prunes) is zeroed in the file, not left in free space.
        conn.execute_batch(&format!(
            "PRAGMA synchronous = {};
             PRAGMA journal_size_limit = {};
             PRAGMA temp_store = MEMORY;
             PRAGMA secure_delete = ON;",
            durability.pragma(),
            64 * 1024 * 1024,
        ))
        .map_err(err("setting pragmas"))?;
        let epoch = migrate(&conn)?;
        let reads = if memory {
            Reads::Shared
        } else {
            Reads::Pool {
                path: path.to_owned(),
                idle: Mutex::new(Vec::new()),
            }
        };
        Ok(SqliteStore {
            writer: Mutex::new(conn),
            reads,
            epoch,
            durability,
            busy_timeout: BUSY_TIMEOUT,
            prune_after: Mutex::new(String::new()),
        })
    }

    /// How long a commit or a read waits for a lock held by another process before it
    /// fails (5 s by default). A group that fails this way is refused with
    /// `storage_unavailable`.
    pub fn with_busy_timeout(mut self, timeout: Duration) -> Result<SqliteStore, StoreError> {
        self.writer()?
            .busy_timeout(timeout)
            .map_err(err("setting busy_timeout"))?;
        if let Reads::Pool { idle, .. } = &self.reads {
            idle.lock().map_err(poisoned)?.clear();
        }
        self.busy_timeout = timeout;
        Ok(self)
    }

    /// The history epoch: a random id made when the database file was created.
    #[must_use]
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The durability this store was opened with.
    #[must_use]
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Runs `f` on a read connection: a pooled one of its own for a file, the only one
    /// for `:memory:`.
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match &self.reads {
            Reads::Shared => f(&*self.writer()?),
            Reads::Pool { path, idle } => {
                let taken = idle.lock().map_err(poisoned)?.pop();
                let conn = match taken {
                    Some(conn) => conn,
                    None => open_reader(path, self.busy_timeout)?,
                };
                let result = f(&conn);
                let mut idle = idle.lock().map_err(poisoned)?;
                if idle.len() < MAX_IDLE_READERS {
                    idle.push(conn);
                }
                result
            }
        }
    }

    fn writer(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        self.writer.lock().map_err(poisoned)
    }

    /// Runs `f` on the writer's connection in one `BEGIN IMMEDIATE … COMMIT`
    /// transaction, rolled back if it fails.
    fn write<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.writer()?;
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(err("starting a write"))?;
        let result = f(&conn).and_then(|t| {
            conn.execute_batch("COMMIT")
                .map_err(err("committing"))
                .map(|()| t)
        });
        if result.is_err() && !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        result
    }
}

fn open_reader(path: &Path, busy_timeout: Duration) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| classify(&e, format!("opening {} to read: {e}", path.display())))?;
    conn.busy_timeout(busy_timeout)
        .map_err(err("setting busy_timeout"))?;
    // A small page cache: a read is one room's window or page (a few dozen pages), and
    // SQLite's default of 2 MiB per connection filled up, pool connection by pool
    // connection, with the scattered pages of every room loaded on demand (RSS +6 MiB
    // under the soak); the operating system caches the file anyway.
    conn.execute_batch(&format!(
        "PRAGMA query_only = ON; PRAGMA cache_size = -{READER_CACHE_KIB};"
    ))
    .map_err(err("setting up a reader"))?;
    Ok(conn)
}

/// Brings the schema to [`SCHEMA_VERSION`] and returns the epoch.
fn migrate(conn: &Connection) -> Result<String, StoreError> {
    // IMMEDIATE: two processes opening a new file at once migrate one after the other.
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(err("starting the migration"))?;
    let result = (|| {
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err("reading user_version"))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Corrupt(format!(
                "the database has schema version {version}; this build knows up to {SCHEMA_VERSION}"
            )));
        }
        for (from, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            conn.execute_batch(sql)
                .map_err(|e| classify(&e, format!("migrating from version {from}: {e}")))?;
            if from == 0 {
                let mut random = [0u8; 8];
                getrandom::fill(&mut random).map_err(|e| {
                    StoreError::Unavailable(format!("no randomness for the epoch: {e}"))
                })?;
                let epoch: String = random.iter().map(|b| format!("{b:02x}")).collect();
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('epoch', ?1)",
                    params![epoch],
                )
                .map_err(err("writing the epoch"))?;
            }
        }
        if version < SCHEMA_VERSION {
            conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
                .map_err(err("writing user_version"))?;
        }
        conn.query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
            r.get::<_, String>(0)
        })
        .optional()
        .map_err(err("reading the epoch"))?
        .ok_or_else(|| StoreError::Corrupt("the database has no epoch".into()))
    })();
    match result {
        Ok(epoch) => {
            conn.execute_batch("COMMIT")
                .map_err(err("committing the migration"))?;
            Ok(epoch)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Owner => "owner",
        Role::Moderator => "moderator",
        _ => "member",
    }
}

/// One moderation change, in the writer's open transaction.
fn save_change(conn: &Connection, change: &ModerationChange) -> Result<(), StoreError> {
    let fail =
        |e: rusqlite::Error| classify(&e, format!("storing moderation of {}: {e}", change.room()));
    let room = change.room().as_str();
    let sanction = |user: &UserName, kind: &str, until: Option<DateTime<Utc>>| {
        conn.prepare_cached(
            "INSERT OR REPLACE INTO room_sanctions (room, user_key, kind, user, until) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            room,
            user.key().as_str(),
            kind,
            user.as_str(),
            until.map(|u| u.timestamp_millis())
        ])
    };
    let lift = |user: &UserName, kind: &str| {
        conn.prepare_cached(
            "DELETE FROM room_sanctions WHERE room = ?1 AND user_key = ?2 AND kind = ?3",
        )?
        .execute(params![room, user.key().as_str(), kind])
    };
    let setting = |column: &str, value: &dyn rusqlite::ToSql| {
        conn.prepare_cached(&format!(
            "INSERT INTO room_settings (room, {column}) VALUES (?1, ?2) \
             ON CONFLICT (room) DO UPDATE SET {column} = excluded.{column}"
        ))?
        .execute(params![room, value])?;
        conn.prepare_cached(
            "DELETE FROM room_settings WHERE room = ?1 AND topic = '' AND slow_mode = 0",
        )?
        .execute(params![room])
    };
    match change {
        ModerationChange::Role { user, role, .. } if *role == Role::Member => conn
            .prepare_cached("DELETE FROM room_roles WHERE room = ?1 AND user_key = ?2")
            .and_then(|mut s| s.execute(params![room, user.key().as_str()])),
        ModerationChange::Role { user, role, .. } => conn
            .prepare_cached(
                "INSERT OR REPLACE INTO room_roles (room, user_key, user, role) \
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    room,
                    user.key().as_str(),
                    user.as_str(),
                    role_name(*role)
                ])
            }),
        // Bound to an anonymous token, which does not outlive the process: not kept
        // (the engine does not hand such a change to a single server's store).
        ModerationChange::Ban {
            holder: Some(_), ..
        }
        | ModerationChange::Mute {
            holder: Some(_), ..
        } => Ok(0),
        ModerationChange::Ban { user, until, .. } => sanction(user, "ban", *until),
        ModerationChange::Unban { user, .. } => lift(user, "ban"),
        ModerationChange::Mute { user, until, .. } => sanction(user, "mute", *until),
        ModerationChange::Unmute { user, .. } => lift(user, "mute"),
        ModerationChange::Topic { topic, .. } => setting("topic", topic),
        ModerationChange::SlowMode { seconds, .. } => setting("slow_mode", seconds),
    }
    .map(|_| ())
    .map_err(fail)
}

/// The stored moderation state, one change per row.
fn load_moderation(conn: &Connection) -> Result<Vec<ModerationChange>, StoreError> {
    let get = err("reading moderation state");
    let room = |name: String| {
        RoomName::parse(&name, usize::MAX, usize::MAX)
            .map_err(|e| StoreError::Corrupt(format!("corrupt room name {name:?}: {e}")))
    };
    let user = |name: String| {
        UserName::parse(&name, usize::MAX)
            .map_err(|e| StoreError::Corrupt(format!("corrupt user name {name:?}: {e}")))
    };
    let mut changes = Vec::new();
    let mut stmt = conn
        .prepare("SELECT room, user, role FROM room_roles ORDER BY room, user_key")
        .map_err(&get)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, String>(2)?)))
        .map_err(&get)?;
    for row in rows {
        let (r, u, role) = row.map_err(&get)?;
        let role = match role.as_str() {
            "owner" => Role::Owner,
            "moderator" => Role::Moderator,
            other => return Err(StoreError::Corrupt(format!("corrupt role {other:?}"))),
        };
        changes.push(ModerationChange::Role {
            room: room(r)?,
            user: user(u)?,
            role,
        });
    }
    let mut stmt = conn
        .prepare("SELECT room, user, kind, until FROM room_sanctions ORDER BY room, user_key, kind")
        .map_err(&get)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<i64>>(3)?,
            ))
        })
        .map_err(&get)?;
    for row in rows {
        let (r, u, kind, until) = row.map_err(&get)?;
        let until = match until {
            None => None,
            Some(ms) => Some(
                DateTime::<Utc>::from_timestamp_millis(ms)
                    .ok_or_else(|| StoreError::Corrupt(format!("corrupt sanction end {ms}")))?,
            ),
        };
        let (room, user) = (room(r)?, user(u)?);
        changes.push(match kind.as_str() {
            "ban" => ModerationChange::Ban {
                room,
                user,
                until,
                holder: None,
            },
            "mute" => ModerationChange::Mute {
                room,
                user,
                until,
                holder: None,
            },
            other => return Err(StoreError::Corrupt(format!("corrupt sanction {other:?}"))),
        });
    }
    let mut stmt = conn
        .prepare("SELECT room, topic, slow_mode FROM room_settings ORDER BY room")
        .map_err(&get)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((r.get(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
        })
        .map_err(&get)?;
    for row in rows {
        let (r, topic, seconds) = row.map_err(&get)?;
        let room = room(r)?;
        let seconds = u32::try_from(seconds)
            .map_err(|_| StoreError::Corrupt(format!("corrupt slow mode {seconds}")))?;
        if !topic.is_empty() {
            changes.push(ModerationChange::Topic {
                room: room.clone(),
                topic,
            });
        }
        if seconds > 0 {
            changes.push(ModerationChange::SlowMode { room, seconds });
        }
    }
    Ok(changes)
}

fn to_sql_seq(seq: Seq) -> i64 {
    i64::try_from(seq.0).unwrap_or(i64::MAX)
}

fn from_sql_seq(seq: i64) -> Result<Seq, StoreError> {
    u64::try_from(seq)
        .map(Seq)
        .map_err(|_| StoreError::Corrupt(format!("corrupt seq {seq}")))
}

/// Reads the newest `limit` messages of `room` below `before`, oldest first, and whether
/// older ones exist.
fn page(
    conn: &Connection,
    room: &RoomName,
    before: Option<Seq>,
    limit: usize,
) -> Result<(Vec<Message>, bool), StoreError> {
    if limit == 0 {
        // Only whether anything is there.
        let any = page(conn, room, before, 1)?;
        return Ok((vec![], !any.0.is_empty()));
    }
    let mut stmt = conn.prepare_cached(PAGE).map_err(err("preparing a page"))?;
    let before = before.map_or(i64::MAX, to_sql_seq);
    let fetch = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
    let mut rows = stmt
        .query(params![room.as_str(), before, fetch])
        .map_err(err("reading a page"))?;
    let mut messages = Vec::with_capacity(limit.min(1024));
    let mut has_more = false;
    while let Some(row) = rows.next().map_err(err("reading a page"))? {
        if messages.len() == limit {
            has_more = true;
            break;
        }
        messages.push(row_to_message(room, row)?);
    }
    messages.reverse();
    Ok((messages, has_more))
}

fn row_to_message(room: &RoomName, row: &rusqlite::Row<'_>) -> Result<Message, StoreError> {
    let get = err("decoding a row");
    let seq = from_sql_seq(row.get(0).map_err(&get)?)?;
    let ms: i64 = row.get(1).map_err(&get)?;
    let ts = DateTime::<Utc>::from_timestamp_millis(ms)
        .ok_or_else(|| StoreError::Corrupt(format!("corrupt timestamp {ms} in {room}#{seq}")))?;
    let user = row
        .get_ref(2)
        .map_err(&get)?
        .as_str()
        .map_err(|e| StoreError::Corrupt(format!("corrupt user in {room}#{seq}: {e}")))?;
    let user = UserName::parse(user, usize::MAX)
        .map_err(|e| StoreError::Corrupt(format!("corrupt user {user:?} in {room}#{seq}: {e}")))?;
    let body = row
        .get_ref(3)
        .map_err(&get)?
        .as_str()
        .map_err(|e| StoreError::Corrupt(format!("corrupt body in {room}#{seq}: {e}")))?;
    let client_id = row
        .get_ref(4)
        .map_err(&get)?
        .as_str_or_null()
        .map_err(|e| StoreError::Corrupt(format!("corrupt client id in {room}#{seq}: {e}")))?
        .map(ClientMsgId::from);
    let mut m = Message::new(room.clone(), seq, ts, user, Arc::from(body), client_id);
    let corrupt = |what: &str| StoreError::Corrupt(format!("corrupt {what} in {room}#{seq}"));
    let text = |i: usize| -> Result<Option<String>, StoreError> {
        row.get::<_, Option<String>>(i).map_err(&get)
    };
    let int = |i: usize| -> Result<Option<i64>, StoreError> {
        row.get::<_, Option<i64>>(i).map_err(&get)
    };
    if let Some(kind) = text(5)? {
        m.kind = EntryKind::parse(&kind).ok_or_else(|| corrupt("kind"))?;
    }
    m.target = int(6)?.map(from_sql_seq).transpose()?;
    if let Some(extra) = text(7)? {
        let extra: Extra = serde_json::from_str(&extra).map_err(|_| corrupt("extra"))?;
        m.emoji = Some(extra.emoji);
        m.on = Some(extra.on);
    }
    m.reply_to = int(8)?.map(from_sql_seq).transpose()?;
    m.edited_at = match int(9)? {
        Some(ms) => {
            Some(DateTime::<Utc>::from_timestamp_millis(ms).ok_or_else(|| corrupt("edited_at"))?)
        }
        None => None,
    };
    m.deleted = int(10)?.unwrap_or(0) != 0;
    if let Some(r) = text(11)? {
        m.reactions = serde_json::from_str(&r).map_err(|_| corrupt("reactions"))?;
    }
    m.rev = int(12)?.map(from_sql_seq).transpose()?;
    Ok(m)
}

/// A reaction's emoji and whether it was added, as the `extra` column keeps them.
#[derive(serde::Serialize, serde::Deserialize)]
struct Extra {
    emoji: String,
    on: bool,
}

/// Writes the change `m` into the current state of its target (read, changed by
/// [`Message::apply`] as the engine changes it, written back): in the transaction that
/// stores `m`.
fn apply_change(conn: &Connection, m: &Message) -> Result<(), StoreError> {
    if m.kind == EntryKind::Erase {
        return apply_erase(conn, m);
    }
    let Some(target) = m.target else {
        return Ok(());
    };
    let e = |e: rusqlite::Error| classify(&e, format!("changing {}#{target}: {e}", m.room));
    let mut read = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM messages WHERE room = ?1 AND seq = ?2"
        ))
        .map_err(e)?;
    let mut rows = read
        .query(params![m.room.as_str(), to_sql_seq(target)])
        .map_err(e)?;
    let Some(row) = rows.next().map_err(e)? else {
        return Ok(()); // not stored (a target out of reach changes nothing)
    };
    let mut msg = row_to_message(&m.room, row)?;
    drop(rows);
    if !msg.apply(m) {
        return Ok(());
    }
    let reactions = if msg.reactions.is_empty() {
        None
    } else {
        Some(
            serde_json::to_string(&msg.reactions)
                .map_err(|e| StoreError::Unavailable(e.to_string()))?,
        )
    };
    conn.prepare_cached(UPDATE_STATE)
        .map_err(e)?
        .execute(params![
            m.room.as_str(),
            to_sql_seq(target),
            &*msg.body,
            msg.edited_at.map(|t| t.timestamp_millis()),
            msg.deleted,
            reactions,
            msg.rev.map(to_sql_seq),
        ])
        .map_err(e)?;
    if m.kind == EntryKind::Delete {
        conn.prepare_cached(BLANK_EDITS)
            .map_err(e)?
            .execute(params![m.room.as_str(), to_sql_seq(target)])
            .map_err(e)?;
    }
    Ok(())
}

/// Read markers, in the writer's open transaction: by the user's key, forward only.
fn upsert_markers(
    conn: &Connection,
    markers: &[(UserName, RoomName, Seq)],
) -> Result<(), StoreError> {
    if markers.is_empty() {
        return Ok(());
    }
    let mut upsert = conn
        .prepare_cached(
            "INSERT INTO read_markers (user, room, seq) VALUES (?1, ?2, ?3) \
             ON CONFLICT (user, room) DO UPDATE SET seq = max(seq, excluded.seq)",
        )
        .map_err(err("preparing a read marker"))?;
    for (user, room, seq) in markers {
        upsert
            .execute(params![
                user.key().as_str(),
                room.as_str(),
                to_sql_seq(*seq)
            ])
            .map_err(err("storing a read marker"))?;
    }
    Ok(())
}

/// Writes a message's current state (after [`Message::apply`]) back to its row.
fn write_state(conn: &Connection, msg: &Message) -> Result<(), StoreError> {
    let e = |e: rusqlite::Error| classify(&e, format!("changing {}#{}: {e}", msg.room, msg.seq));
    let reactions = if msg.reactions.is_empty() {
        None
    } else {
        Some(
            serde_json::to_string(&msg.reactions)
                .map_err(|e| StoreError::Unavailable(e.to_string()))?,
        )
    };
    conn.prepare_cached(UPDATE_STATE)
        .map_err(e)?
        .execute(params![
            msg.room.as_str(),
            to_sql_seq(msg.seq),
            &*msg.body,
            msg.edited_at.map(|t| t.timestamp_millis()),
            msg.deleted,
            reactions,
            msg.rev.map(to_sql_seq),
        ])
        .map_err(e)?;
    Ok(())
}

/// An `erase` entry, in the transaction that stores it: every message of its user in the
/// room before it becomes a tombstone (the engine's [`Message::apply`]), the user's
/// reactions leave the others, and the user's edits lose their text. One pass over the
/// room's rows: erasure is rare, and this keeps no index on users.
fn apply_erase(conn: &Connection, erase: &Message) -> Result<(), StoreError> {
    let room = &erase.room;
    let e = |e: rusqlite::Error| classify(&e, format!("erasing in {room}: {e}"));
    let who = erase.user.key();
    let mut read = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM messages WHERE room = ?1 AND seq < ?2 \
             AND (kind IS NULL OR kind = 'edit') ORDER BY seq"
        ))
        .map_err(e)?;
    let mut rows = read
        .query(params![room.as_str(), to_sql_seq(erase.seq)])
        .map_err(e)?;
    let mut changed = Vec::new();
    while let Some(row) = rows.next().map_err(e)? {
        let mut msg = row_to_message(room, row)?;
        if msg.kind == EntryKind::Edit {
            if msg.user.key() == who && !msg.body.is_empty() {
                msg.body = Arc::from("");
                changed.push(msg);
            }
        } else if msg.apply(erase) {
            changed.push(msg);
        }
    }
    drop(rows);
    for msg in &changed {
        if msg.kind == EntryKind::Edit {
            conn.prepare_cached("UPDATE messages SET body = '' WHERE room = ?1 AND seq = ?2")
                .map_err(e)?
                .execute(params![room.as_str(), to_sql_seq(msg.seq)])
                .map_err(e)?;
        } else {
            write_state(conn, msg)?;
        }
    }
    Ok(())
}

/// One step of retention on the writer's connection, in its own transaction: see
/// [`Store::prune`].
fn prune_step(
    conn: &Connection,
    after: &mut String,
    policy: &dyn Fn(&RoomName) -> Option<Retention>,
    now: DateTime<Utc>,
    budget: usize,
) -> Result<Pruned, StoreError> {
    let e = err("pruning");
    let mut done = Pruned::default();
    let mut left = budget;
    let mut next = conn.prepare_cached(NEXT_ROOM).map_err(&e)?;
    let mut bounds = conn.prepare_cached(ROOM_BOUNDS).map_err(&e)?;
    let mut newer = conn
        .prepare_cached(
            "SELECT seq FROM messages WHERE room = ?1 AND ts >= ?2 ORDER BY seq LIMIT 1",
        )
        .map_err(&e)?;
    let mut delete = conn
        .prepare_cached("DELETE FROM messages WHERE room = ?1 AND seq < ?2")
        .map_err(&e)?;
    for _ in 0..PRUNE_ROOMS_PER_STEP {
        let Some(name) = next
            .query_row(params![after.as_str()], |r| r.get::<_, String>(0))
            .optional()
            .map_err(&e)?
        else {
            // Every room had its turn: the next sweep starts from the first.
            after.clear();
            return Ok(done);
        };
        let prev = std::mem::replace(after, name.clone());
        let Ok(room) = RoomName::parse(&name, usize::MAX, usize::MAX) else {
            continue; // not a room this build knows how to name: left alone
        };
        let Some(p) = policy(&room).filter(|p| !p.keeps_all()) else {
            continue;
        };
        let (first, last): (i64, i64) = bounds
            .query_row(params![name], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(&e)?;
        let (first, last) = (from_sql_seq(first)?, from_sql_seq(last)?);
        // The first seq the policy keeps, from the two ends of the room's index.
        let mut keep = Seq(1);
        if let Some(n) = p.max_count {
            keep = keep.max(Seq(last.0.saturating_sub(n.max(1)) + 1));
        }
        if let Some(age) = p.max_age {
            let cutoff = now - chrono::Duration::from_std(age).unwrap_or(chrono::TimeDelta::MAX);
            let young: Option<i64> = newer
                .query_row(params![name, cutoff.timestamp_millis()], |r| r.get(0))
                .optional()
                .map_err(&e)?;
            keep = keep.max(young.map_or(Ok(last), from_sql_seq)?);
        }
        let keep = keep.min(last);
        if first >= keep {
            continue;
        }
        if left == 0 {
            done.more = true;
            *after = prev;
            return Ok(done);
        }
        let upto = Seq(keep.0.min(first.0.saturating_add(left as u64)));
        let n = delete
            .execute(params![name, to_sql_seq(upto)])
            .map_err(&e)?;
        conn.prepare_cached(
            "INSERT INTO pruned (room, first_kept) VALUES (?1, ?2) \
             ON CONFLICT (room) DO UPDATE SET first_kept = max(first_kept, excluded.first_kept)",
        )
        .and_then(|mut s| s.execute(params![name, to_sql_seq(upto)]))
        .map_err(&e)?;
        left = left.saturating_sub(n.max(1));
        done.rooms.push((room, upto));
        if upto < keep {
            done.more = true;
            *after = prev; // this room again, first, next time
            return Ok(done);
        }
    }
    done.more = true;
    Ok(done)
}

impl Store for SqliteStore {
    /// An in-memory database, or a file with `synchronous=NORMAL` (no fsync per commit;
    /// a commit still survives the process being killed). Every write takes the writer
    /// connection's lock, so `append` from the driver and the writer thread's other
    /// writes take turns.
    fn cheap_commits(&self) -> bool {
        matches!(self.reads, Reads::Shared) || self.durability == Durability::Normal
    }

    fn load(&self, window: usize) -> Result<Restored, StoreError> {
        self.read(|conn| {
            // One read transaction: a consistent snapshot of every room.
            conn.execute_batch("BEGIN")
                .map_err(err("starting the load"))?;
            let result = (|| {
                let mut rooms = Vec::new();
                let mut next = conn
                    .prepare_cached(NEXT_ROOM)
                    .map_err(err("preparing the load"))?;
                let mut after = String::new();
                // Skip-scan the primary key: one seek per room, not a scan of every row.
                while let Some(name) = next
                    .query_row(params![after], |r| r.get::<_, String>(0))
                    .optional()
                    .map_err(err("listing rooms"))?
                {
                    let room = RoomName::parse(&name, usize::MAX, usize::MAX).map_err(|e| {
                        StoreError::Corrupt(format!("corrupt room name {name:?}: {e}"))
                    })?;
                    let (recent, has_more) = match window {
                        0 => (Vec::new(), true),
                        _ => page(conn, &room, None, window)?,
                    };
                    let last_seq = match recent.last() {
                        Some(m) => m.seq,
                        None => conn
                            .query_row(
                                "SELECT max(seq) FROM messages WHERE room = ?1",
                                params![name],
                                |r| r.get::<_, i64>(0),
                            )
                            .map_err(err("reading a room's last seq"))
                            .and_then(from_sql_seq)?,
                    };
                    rooms.push(RestoredRoom {
                        room,
                        last_seq,
                        recent,
                        complete: !has_more,
                    });
                    after = name;
                }
                Ok(rooms)
            })();
            let _ = conn.execute_batch("COMMIT");
            Ok(Restored {
                epoch: self.epoch.clone(),
                rooms: result?,
            })
        })
    }

    fn append(&self, batch: &[Arc<Message>]) -> Result<(), StoreError> {
        self.append_with_markers(batch, &[])
    }

    fn append_with_markers(
        &self,
        batch: &[Arc<Message>],
        markers: &[(UserName, RoomName, Seq)],
    ) -> Result<(), StoreError> {
        if batch.is_empty() {
            return self.save_read_markers(markers);
        }
        let conn = self.writer()?;
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(err("starting a commit"))?;
        let result = (|| {
            let mut insert = conn
                .prepare_cached(INSERT)
                .map_err(err("preparing the insert"))?;
            for m in batch {
                let extra = match (&m.emoji, m.on) {
                    (Some(emoji), Some(on)) => Some(
                        serde_json::to_string(&Extra {
                            emoji: emoji.clone(),
                            on,
                        })
                        .map_err(|e| StoreError::Unavailable(e.to_string()))?,
                    ),
                    _ => None,
                };
                let kind = (!m.kind.is_message()).then(|| m.kind.as_str());
                insert
                    .execute(params![
                        m.room.as_str(),
                        to_sql_seq(m.seq),
                        m.ts.timestamp_millis(),
                        m.user.as_str(),
                        &*m.body,
                        m.client_id.as_deref(),
                        kind,
                        m.target.map(to_sql_seq),
                        extra,
                        m.reply_to.map(to_sql_seq),
                    ])
                    .map_err(|e| classify(&e, format!("storing {}#{}: {e}", m.room, m.seq)))?;
                if !m.kind.is_message() {
                    apply_change(&conn, m)?;
                }
            }
            drop(insert);
            upsert_markers(&conn, markers)?;
            conn.execute_batch("COMMIT").map_err(err("committing"))
        })();
        if result.is_err() && !conn.is_autocommit() {
            // Leaves the connection ready for the next group (SQLite may have rolled back
            // already, e.g. after an I/O error).
            let _ = conn.execute_batch("ROLLBACK");
        }
        if result.is_ok()
            && matches!(self.reads, Reads::Pool { .. })
            && batch.iter().any(|m| m.kind == EntryKind::Erase)
        {
            // The erased text is zeroed in the new pages (secure_delete); the old pages
            // in the main file go now rather than at the next automatic checkpoint.
            let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        }
        result
    }

    fn page(
        &self,
        room: &RoomName,
        before: Option<Seq>,
        limit: usize,
    ) -> Result<(Vec<Message>, bool), StoreError> {
        self.read(|conn| page(conn, room, before, limit))
    }

    fn save_moderation(&self, changes: &[ModerationChange]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let conn = self.writer()?;
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(err("starting a moderation commit"))?;
        let result = (|| {
            for change in changes {
                save_change(&conn, change)?;
            }
            conn.execute_batch("COMMIT").map_err(err("committing"))
        })();
        if result.is_err() && !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        result
    }

    fn load_moderation(&self) -> Result<Vec<ModerationChange>, StoreError> {
        self.read(|conn| {
            conn.execute_batch("BEGIN")
                .map_err(err("starting the moderation load"))?;
            let result = load_moderation(conn);
            let _ = conn.execute_batch("COMMIT");
            result
        })
    }

    fn save_read_markers(&self, markers: &[(UserName, RoomName, Seq)]) -> Result<(), StoreError> {
        if markers.is_empty() {
            return Ok(());
        }
        self.write(|conn| upsert_markers(conn, markers))
    }

    fn load_read_markers(&self) -> Result<Vec<(UserName, RoomName, Seq)>, StoreError> {
        self.read(|conn| {
            let get = err("reading read markers");
            let mut stmt = conn
                .prepare("SELECT user, room, seq FROM read_markers ORDER BY user, room")
                .map_err(&get)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(&get)?;
            let mut markers = Vec::new();
            for row in rows {
                let (user, room, seq) = row.map_err(&get)?;
                let user = UserName::parse(&user, usize::MAX).map_err(|e| {
                    StoreError::Corrupt(format!("corrupt user {user:?} in read_markers: {e}"))
                })?;
                let room = RoomName::parse(&room, usize::MAX, usize::MAX).map_err(|e| {
                    StoreError::Corrupt(format!("corrupt room {room:?} in read_markers: {e}"))
                })?;
                markers.push((user, room, from_sql_seq(seq)?));
            }
            Ok(markers)
        })
    }

    fn save_retention(&self, room: &RoomName, policy: Option<Retention>) -> Result<(), StoreError> {
        self.write(|conn| {
            let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            match policy {
                Some(p) => conn.execute(
                    "INSERT OR REPLACE INTO retention (room, max_age_ms, max_count) \
                     VALUES (?1, ?2, ?3)",
                    params![
                        room.as_str(),
                        p.max_age.map(ms),
                        p.max_count.map(|n| i64::try_from(n).unwrap_or(i64::MAX))
                    ],
                ),
                None => conn.execute(
                    "DELETE FROM retention WHERE room = ?1",
                    params![room.as_str()],
                ),
            }
            .map(|_| ())
            .map_err(err("storing a retention policy"))
        })
    }

    fn load_retention(&self) -> Result<Vec<(RoomName, Retention)>, StoreError> {
        self.read(|conn| {
            let get = err("reading retention policies");
            let mut stmt = conn
                .prepare("SELECT room, max_age_ms, max_count FROM retention ORDER BY room")
                .map_err(&get)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Option<i64>>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                    ))
                })
                .map_err(&get)?;
            let mut policies = Vec::new();
            for row in rows {
                let (room, age, count) = row.map_err(&get)?;
                let room = RoomName::parse(&room, usize::MAX, usize::MAX).map_err(|e| {
                    StoreError::Corrupt(format!("corrupt room {room:?} in retention: {e}"))
                })?;
                let corrupt = || StoreError::Corrupt(format!("corrupt retention of {room}"));
                let max_age = age
                    .map(|ms| u64::try_from(ms).map(Duration::from_millis))
                    .transpose()
                    .map_err(|_| corrupt())?;
                let max_count = count
                    .map(u64::try_from)
                    .transpose()
                    .map_err(|_| corrupt())?;
                policies.push((room, Retention { max_age, max_count }));
            }
            Ok(policies)
        })
    }

    fn prune(
        &self,
        policy: &dyn Fn(&RoomName) -> Option<Retention>,
        now: DateTime<Utc>,
        budget: usize,
    ) -> Result<Pruned, StoreError> {
        let mut after = self.prune_after.lock().map_err(poisoned)?;
        let mut cursor = after.clone();
        let done = self.write(|conn| prune_step(conn, &mut cursor, policy, now, budget))?;
        *after = cursor;
        Ok(done)
    }

    fn first_kept(&self, room: &RoomName) -> Result<Option<Seq>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached("SELECT first_kept FROM pruned WHERE room = ?1")
                .and_then(|mut s| {
                    s.query_row(params![room.as_str()], |r| r.get::<_, i64>(0))
                        .optional()
                })
                .map_err(err("reading what was pruned"))?
                .map(from_sql_seq)
                .transpose()
        })
    }

    fn rooms_of(&self, user: &UserName) -> Result<Vec<RoomName>, StoreError> {
        let key = user.key();
        self.read(|conn| {
            let get = err("finding a user's rooms");
            let mut stmt = conn
                .prepare("SELECT room, user FROM messages GROUP BY room, user")
                .map_err(&get)?;
            let mut rows = stmt.query([]).map_err(&get)?;
            let mut rooms: Vec<RoomName> = Vec::new();
            while let Some(row) = rows.next().map_err(&get)? {
                let (room, name): (String, String) =
                    (row.get(0).map_err(&get)?, row.get(1).map_err(&get)?);
                if UserName::parse(&name, usize::MAX).is_ok_and(|n| n.key() == key)
                    && rooms.last().is_none_or(|r| r.as_str() != room)
                    && let Ok(room) = RoomName::parse(&room, usize::MAX, usize::MAX)
                {
                    rooms.push(room);
                }
            }
            Ok(rooms)
        })
    }

    fn close(&self) -> Result<(), StoreError> {
        if let Reads::Pool { idle, .. } = &self.reads {
            // Readers would keep the checkpoint from truncating the WAL.
            idle.lock().map_err(poisoned)?.clear();
        }
        let conn = self.writer()?;
        // Statistics for the query planner first: it may write, and the WAL is emptied last.
        let _ = conn.execute_batch("PRAGMA optimize");
        if let Reads::Pool { .. } = &self.reads {
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                let busy: i64 = r.get(0)?;
                Ok(busy)
            })
            .map_err(err("checkpointing the WAL"))
            .and_then(|busy| {
                if busy == 0 {
                    Ok(())
                } else {
                    Err(StoreError::Busy(
                        "the WAL checkpoint was blocked by a reader".into(),
                    ))
                }
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(room: &str, seq: u64, user: &str, body: &str, client_id: Option<&str>) -> Arc<Message> {
        Arc::new(Message::new(
            RoomName::parse(room, 64, 32).unwrap(),
            Seq(seq),
            DateTime::<Utc>::from_timestamp_millis(1_700_000_000_000 + seq as i64).unwrap(),
            UserName::parse(user, 32).unwrap(),
            body.into(),
            client_id.map(ClientMsgId::from),
        ))
    }

    fn room(name: &str) -> RoomName {
        RoomName::parse(name, 64, 32).unwrap()
    }

    fn seqs(page: &(Vec<Message>, bool)) -> (Vec<u64>, bool) {
        (page.0.iter().map(|m| m.seq.0).collect(), page.1)
    }

    fn filled(dir: &Path) -> SqliteStore {
        let store = SqliteStore::open(dir.join("chat.db"), Durability::Full).unwrap();
        let batch: Vec<_> = (1..=10)
            .map(|s| {
                msg(
                    "general",
                    s,
                    "alice",
                    &format!("m{s}"),
                    Some(&format!("c{s}")),
                )
            })
            .collect();
        store.append(&batch[..4]).unwrap();
        store.append(&batch[4..]).unwrap();
        store
            .append(&[msg("@alice,bob", 1, "Bob", "psst", None)])
            .unwrap();
        store
    }

    #[test]
    fn a_room_s_bounds_are_read_off_the_index_ends_whatever_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("chat.db"), Durability::Normal).unwrap();
        let steps = |rows: u64| {
            store
                .write(|conn| {
                    let mut bounds = conn.prepare(ROOM_BOUNDS).unwrap();
                    let got: (i64, i64) = bounds
                        .query_row(params!["general"], |r| Ok((r.get(0)?, r.get(1)?)))
                        .unwrap();
                    assert_eq!(got, (1, rows as i64));
                    Ok(bounds.get_status(rusqlite::StatementStatus::VmStep))
                })
                .unwrap()
        };
        let mut next = 1;
        let mut fill = |upto: u64| {
            let batch: Vec<_> = (next..=upto)
                .map(|s| msg("general", s, "alice", "hi", None))
                .collect();
            store.append(&batch).unwrap();
            next = upto + 1;
        };
        fill(10);
        let small = steps(10);
        fill(5_000);
        let big = steps(5_000);
        // The same few steps for 10 rows and for 5,000 (walking the room: ~5 per row).
        assert_eq!(big, small, "VM steps: {small} for 10 rows, {big} for 5,000");
        assert!(big < 100, "{big}");
    }

    #[test]
    fn pages_are_the_newest_before_the_cursor_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = filled(dir.path());
        let general = room("general");
        assert_eq!(
            seqs(&store.page(&general, None, 3).unwrap()),
            (vec![8, 9, 10], true)
        );
        assert_eq!(
            seqs(&store.page(&general, Some(Seq(8)), 3).unwrap()),
            (vec![5, 6, 7], true)
        );
        assert_eq!(
            seqs(&store.page(&general, Some(Seq(4)), 3).unwrap()),
            (vec![1, 2, 3], false)
        );
        assert_eq!(
            seqs(&store.page(&general, Some(Seq(3)), 5).unwrap()),
            (vec![1, 2], false)
        );
        assert_eq!(
            seqs(&store.page(&general, Some(Seq(1)), 5).unwrap()),
            (vec![], false)
        );
        assert_eq!(
            seqs(&store.page(&general, None, 10).unwrap()),
            ((1..=10).collect(), false)
        );
        assert_eq!(
            seqs(&store.page(&room("nowhere"), None, 10).unwrap()),
            (vec![], false)
        );
        // Every field comes back as it went in.
        let (page, _) = store.page(&general, Some(Seq(6)), 1).unwrap();
        assert_eq!(
            page,
            vec![Message::clone(&msg(
                "general",
                5,
                "alice",
                "m5",
                Some("c5")
            ))]
        );
        let (direct, more) = store.page(&room("@bob,alice"), None, 50).unwrap();
        assert!(!more);
        assert_eq!(
            direct,
            vec![Message::clone(&msg("@alice,bob", 1, "Bob", "psst", None))]
        );
    }

    #[test]
    fn load_gives_each_room_its_window_and_last_seq() {
        let dir = tempfile::tempdir().unwrap();
        let store = filled(dir.path());
        let restored = store.load(4).unwrap();
        assert_eq!(restored.epoch, store.epoch());
        let rooms: Vec<_> = restored
            .rooms
            .iter()
            .map(|r| {
                (
                    r.room.as_str().to_owned(),
                    r.last_seq.0,
                    r.recent.iter().map(|m| m.seq.0).collect::<Vec<_>>(),
                    r.complete,
                )
            })
            .collect();
        assert_eq!(
            rooms,
            vec![
                ("@alice,bob".to_owned(), 1, vec![1], true),
                ("general".to_owned(), 10, vec![7, 8, 9, 10], false),
            ]
        );
        let all = store.load(10).unwrap();
        assert!(all.rooms.iter().all(|r| r.complete));
        let none = store.load(0).unwrap();
        assert_eq!(none.rooms[1].last_seq, Seq(10));
        assert!(none.rooms[1].recent.is_empty());
        assert!(!none.rooms[1].complete);
    }

    #[test]
    fn readers_keep_a_small_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let store = filled(dir.path());
        let kib: i64 = store
            .read(|conn| {
                conn.query_row("PRAGMA cache_size", [], |r| r.get(0))
                    .map_err(err("reading cache_size"))
            })
            .unwrap();
        assert_eq!(kib, -i64::from(READER_CACHE_KIB));
    }

    #[test]
    fn reopening_keeps_messages_and_epoch_and_migrates_once() {
        let dir = tempfile::tempdir().unwrap();
        let epoch = {
            let store = filled(dir.path());
            store.close().unwrap();
            store.epoch().to_owned()
        };
        assert_eq!(epoch.len(), 16);
        for _ in 0..2 {
            let store = SqliteStore::open(dir.path().join("chat.db"), Durability::Normal).unwrap();
            assert_eq!(store.epoch(), epoch);
            assert_eq!(store.page(&room("general"), None, 100).unwrap().0.len(), 10);
            let conn = store.writer().unwrap();
            let version: i64 = conn
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap();
            assert_eq!(version, SCHEMA_VERSION);
            let epochs: i64 = conn
                .query_row("SELECT count(*) FROM meta WHERE key = 'epoch'", [], |r| {
                    r.get(0)
                })
                .unwrap();
            assert_eq!(epochs, 1);
            let mode: String = conn
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
            let sync: i64 = conn
                .query_row("PRAGMA synchronous", [], |r| r.get(0))
                .unwrap();
            assert_eq!(sync, 1, "NORMAL is 1");
        }
        let other = SqliteStore::open(dir.path().join("other.db"), Durability::Full).unwrap();
        assert_ne!(other.epoch(), epoch, "a new file is a new epoch");
        let sync: i64 = other
            .writer()
            .unwrap()
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "FULL is 2");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        drop(SqliteStore::open(&path, Durability::Full).unwrap());
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA user_version = 99")
            .unwrap();
        let e = SqliteStore::open(&path, Durability::Full).unwrap_err();
        assert!(
            matches!(&e, StoreError::Corrupt(d) if d.contains("schema version 99")),
            "{e}"
        );
    }

    #[test]
    fn a_failed_group_is_rolled_back_whole_and_the_next_one_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = filled(dir.path());
        // Seq 10 exists: the group fails on its second message, and its first is not kept.
        let e = store
            .append(&[
                msg("general", 11, "alice", "new", None),
                msg("general", 10, "alice", "again", None),
            ])
            .unwrap_err();
        assert!(e.detail().contains("general#10"), "{e}");
        assert_eq!(
            store.page(&room("general"), None, 1).unwrap().0[0].seq,
            Seq(10)
        );
        store
            .append(&[msg("general", 11, "alice", "new", None)])
            .unwrap();
        assert_eq!(
            store.page(&room("general"), None, 1).unwrap().0[0].seq,
            Seq(11)
        );
    }

    #[test]
    fn a_locked_database_fails_the_group_then_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        let store = SqliteStore::open(&path, Durability::Full).unwrap();
        let other = Connection::open(&path).unwrap();
        other.busy_timeout(Duration::ZERO).unwrap();
        other.execute_batch("BEGIN EXCLUSIVE").unwrap();
        // Shorten the wait so the test is quick.
        store
            .writer()
            .unwrap()
            .busy_timeout(Duration::from_millis(50))
            .unwrap();
        let e = store
            .append(&[msg("general", 1, "alice", "hi", None)])
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::Busy(d) if d.contains("locked")),
            "{e}"
        );
        other.execute_batch("ROLLBACK").unwrap();
        store
            .append(&[msg("general", 1, "alice", "hi", None)])
            .unwrap();
        assert_eq!(store.page(&room("general"), None, 5).unwrap().0.len(), 1);
    }

    #[test]
    fn reads_do_not_wait_for_an_open_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = filled(dir.path());
        let writer = store.writer().unwrap();
        writer.execute_batch("BEGIN IMMEDIATE").unwrap();
        writer
            .execute(
                "INSERT INTO messages (room, seq, ts, user, body) \
                 VALUES ('general', 11, 0, 'alice', 'x')",
                [],
            )
            .unwrap();
        // The writer holds the write lock and has uncommitted rows: a reader sees the
        // last commit, without waiting.
        let (page, _) = store.page(&room("general"), None, 100).unwrap();
        assert_eq!(page.len(), 10);
        writer.execute_batch("COMMIT").unwrap();
        drop(writer);
        assert_eq!(store.page(&room("general"), None, 100).unwrap().0.len(), 11);
    }

    #[test]
    fn reads_use_the_room_index() {
        let store = SqliteStore::open(":memory:", Durability::Full).unwrap();
        let conn = store.writer().unwrap();
        for (sql, args) in [(PAGE, 3), (NEXT_ROOM, 1)] {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let params: Vec<i64> = vec![0; args];
            let plan: Vec<String> = stmt
                .query_map(rusqlite::params_from_iter(params), |r| r.get(3))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let plan = plan.join("; ");
            assert!(plan.contains("messages_by_room"), "{sql}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{sql} sorts: {plan}");
        }
    }

    #[test]
    fn memory_store_reads_its_own_writes() {
        let store = SqliteStore::open(":memory:", Durability::Full).unwrap();
        store
            .append(&[
                msg("general", 1, "alice", "hi", Some("x")),
                msg("rust", 1, "bob", "yo", None),
            ])
            .unwrap();
        let restored = store.load(10).unwrap();
        assert_eq!(restored.rooms.len(), 2);
        assert_eq!(store.page(&room("general"), None, 5).unwrap().0.len(), 1);
        store.close().unwrap();
        let again = SqliteStore::open(":memory:", Durability::Full).unwrap();
        assert!(
            again.load(10).unwrap().rooms.is_empty(),
            "each :memory: is new"
        );
        assert_ne!(again.epoch(), store.epoch());
    }

    #[test]
    fn close_checkpoints_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let store = filled(dir.path());
        store.page(&room("general"), None, 5).unwrap();
        let wal = dir.path().join("chat.db-wal");
        assert!(std::fs::metadata(&wal).unwrap().len() > 0);
        store.close().unwrap();
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
        // The data is in the main file now.
        drop(store);
        let conn = Connection::open(dir.path().join("chat.db")).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 11);
    }

    fn change(room: &str, seq: u64, user: &str, kind: EntryKind, target: u64) -> Message {
        let mut m = Message::clone(&msg(room, seq, user, "", None));
        m.kind = kind;
        m.target = Some(Seq(target));
        m
    }

    #[test]
    fn a_change_updates_its_message_in_the_same_commit_and_reads_back_in_current_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("chat.db"), Durability::Full).unwrap();
        let mut reply = Message::clone(&msg("general", 2, "bob", "what?", None));
        reply.reply_to = Some(Seq(1));
        let mut edit = change("general", 3, "alice", EntryKind::Edit, 1);
        edit.body = "hello".into();
        let mut react = change("general", 4, "bob", EntryKind::React, 1);
        react.emoji = Some("👍".into());
        react.on = Some(true);
        let mut engine = [msg("general", 1, "alice", "helo", Some("c1"))];
        store
            .append(&[engine[0].clone(), Arc::new(reply.clone())])
            .unwrap();
        store
            .append(&[Arc::new(edit.clone()), Arc::new(react.clone())])
            .unwrap();
        // The engine's own rule, applied to its copy: the store must agree.
        Arc::make_mut(&mut engine[0]).apply(&edit);
        Arc::make_mut(&mut engine[0]).apply(&react);
        let (page, _) = store.page(&room("general"), None, 10).unwrap();
        assert_eq!(page[0], *engine[0]);
        assert_eq!((&*page[0].body, page[0].reactions.len()), ("hello", 1));
        assert_eq!(page[1], reply);
        assert_eq!(page[2], edit);
        assert_eq!(page[3], react);
        // A delete blanks the message and its edits' text, and survives a reopen.
        store
            .append(&[Arc::new(change(
                "general",
                5,
                "alice",
                EntryKind::Delete,
                1,
            ))])
            .unwrap();
        store.close().unwrap();
        drop(store);
        let store = SqliteStore::open(dir.path().join("chat.db"), Durability::Full).unwrap();
        let restored = store.load(10).unwrap();
        let recent = &restored.rooms[0].recent;
        assert!(recent[0].deleted && recent[0].body.is_empty() && recent[0].reactions.is_empty());
        assert_eq!(recent[0].rev, Some(Seq(5)));
        assert_eq!(recent[2].kind, EntryKind::Edit);
        assert!(recent[2].body.is_empty(), "the edit's text is gone too");
        assert_eq!(
            recent[1].reply_to,
            Some(Seq(1)),
            "a reply keeps its reference"
        );
    }

    /// A copy of the committed file `tests/data/{name}` opened (and so migrated), with
    /// its epoch checked and the schema at the current version.
    fn migrated(name: &str, epoch: &str) -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        std::fs::copy(data.join(name), &path).unwrap();
        let store = SqliteStore::open(&path, Durability::Full).unwrap();
        assert_eq!(store.epoch(), epoch);
        let version: i64 = store
            .writer()
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        (dir, store)
    }

    /// A file written by the release before these changes (schema 1, kept in
    /// tests/data) opens, migrates to the current schema in place, keeps every message
    /// and its epoch, and takes changes afterwards.
    #[test]
    fn a_file_of_the_previous_release_is_migrated() {
        let (_dir, store) = migrated("schema1.db", "5eed0f5eed0f5eed");
        let (page, more) = store.page(&room("general"), None, 10).unwrap();
        assert!(!more);
        assert_eq!(
            page.iter()
                .map(|m| (m.seq.0, &*m.body, m.client_id.as_deref()))
                .collect::<Vec<_>>(),
            [(1, "hello from 0.x", Some("c-1")), (2, "hi alice", None)]
        );
        assert!(page.iter().all(|m| m.is_plain()));
        let mut edit = change("general", 3, "alice", EntryKind::Edit, 1);
        edit.body = "hello from 1.x".into();
        store.append(&[Arc::new(edit)]).unwrap();
        let (page, _) = store.page(&room("general"), None, 10).unwrap();
        assert_eq!(&*page[0].body, "hello from 1.x");
        assert_eq!(
            store.page(&room("@alice,bob"), None, 10).unwrap().0.len(),
            1
        );
    }

    fn plain_at(room: &str, seq: u64, user: &str, body: &str, ts_ms: i64) -> Arc<Message> {
        Arc::new(Message::new(
            RoomName::parse(room, 64, 32).unwrap(),
            Seq(seq),
            DateTime::<Utc>::from_timestamp_millis(ts_ms).unwrap(),
            UserName::parse(user, 32).unwrap(),
            body.into(),
            None,
        ))
    }

    /// Retention by count and by age: small steps within the budget, never the newest
    /// entry, and a room with no policy untouched.
    #[test]
    fn pruning_deletes_what_the_policy_no_longer_keeps_in_small_steps() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("chat.db"), Durability::Normal).unwrap();
        let t0 = 1_700_000_000_000;
        let batch: Vec<_> = (1..=100)
            .flat_map(|s| {
                [
                    plain_at("count", s, "alice", "x", t0 + s as i64),
                    plain_at("age", s, "alice", "x", t0 + s as i64 * 1000),
                    plain_at("keep", s, "alice", "x", t0),
                ]
            })
            .collect();
        store.append(&batch).unwrap();
        let policy = |room: &RoomName| match room.as_str() {
            "count" => Some(Retention {
                max_age: None,
                max_count: Some(10),
            }),
            "age" => Some(Retention {
                max_age: Some(Duration::from_secs(30)),
                max_count: None,
            }),
            _ => None,
        };
        // "now" is 100 s after the first: the age room keeps seqs 70..=100.
        let now = DateTime::<Utc>::from_timestamp_millis(t0 + 100_000).unwrap();
        let mut steps = 0;
        let mut firsts = std::collections::BTreeMap::new();
        loop {
            let done = store.prune(&policy, now, 25).unwrap();
            for (room, first) in done.rooms {
                firsts.insert(room.as_str().to_owned(), first);
            }
            steps += 1;
            if !done.more {
                break;
            }
            assert!(steps < 20, "pruning ends");
        }
        assert!(
            steps >= 7,
            "at most 25 per step: {steps} steps for 159 entries"
        );
        let count = |room: &str| {
            store
                .page(&RoomName::parse(room, 64, 32).unwrap(), None, 1000)
                .unwrap()
                .0
        };
        assert_eq!(count("count").first().unwrap().seq, Seq(91));
        assert_eq!(count("count").len(), 10);
        assert_eq!(count("age").first().unwrap().seq, Seq(70));
        assert_eq!(count("keep").len(), 100);
        assert_eq!(firsts["count"], Seq(91));
        assert_eq!(firsts["age"], Seq(70));
        assert_eq!(store.first_kept(&room("count")).unwrap(), Some(Seq(91)));
        assert_eq!(store.first_kept(&room("keep")).unwrap(), None);
        // Everything old: the newest entry stays, so the room's seq carries on.
        let later = now + chrono::Duration::days(1);
        while store.prune(&policy, later, 1000).unwrap().more {}
        let age = count("age");
        assert_eq!(age.iter().map(|m| m.seq).collect::<Vec<_>>(), [Seq(100)]);
        let restored = store.load(0).unwrap();
        assert_eq!(
            restored
                .rooms
                .iter()
                .find(|r| r.room.as_str() == "age")
                .unwrap()
                .last_seq,
            Seq(100)
        );
    }

    #[test]
    fn read_markers_and_retention_policies_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        let store = SqliteStore::open(&path, Durability::Full).unwrap();
        let (alice, general) = (UserName::parse("Alice", 32).unwrap(), room("general"));
        store
            .save_read_markers(&[
                (alice.clone(), general.clone(), Seq(5)),
                (alice.clone(), general.clone(), Seq(3)), // never back
                (alice.clone(), room("rust"), Seq(2)),
            ])
            .unwrap();
        let policy = Retention {
            max_age: Some(Duration::from_secs(86_400)),
            max_count: Some(500),
        };
        store.save_retention(&general, Some(policy)).unwrap();
        store
            .save_retention(&room("rust"), Some(Retention::default()))
            .unwrap();
        store.save_retention(&room("rust"), None).unwrap();
        store.close().unwrap();
        drop(store);
        let store = SqliteStore::open(&path, Durability::Full).unwrap();
        let markers = store.load_read_markers().unwrap();
        let shown: Vec<_> = markers
            .iter()
            .map(|(u, r, s)| (u.as_str().to_owned(), r.as_str().to_owned(), s.0))
            .collect();
        assert_eq!(
            shown,
            [
                ("alice".to_owned(), "general".to_owned(), 5),
                ("alice".to_owned(), "rust".to_owned(), 2)
            ],
            "by the user's key, forward only"
        );
        assert_eq!(store.load_retention().unwrap(), [(general, policy)]);
    }

    /// An erase entry makes the user's messages tombstones in the file, takes the
    /// user's reactions off others' messages and blanks the user's edits.
    #[test]
    fn an_erase_entry_tombstones_the_users_messages_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        let store = SqliteStore::open(&path, Durability::Full).unwrap();
        let mut edit = change("general", 3, "alice", EntryKind::Edit, 1);
        edit.body = "secret edited".into();
        let mut react = change("general", 4, "alice", EntryKind::React, 2);
        react.emoji = Some("👍".into());
        react.on = Some(true);
        store
            .append(&[
                msg("general", 1, "alice", "secret one", None),
                msg("general", 2, "bob", "bob stays", None),
                Arc::new(edit),
                Arc::new(react),
                msg("general", 5, "ALICE", "secret two", None),
            ])
            .unwrap();
        let mut erase = change("general", 6, "alice", EntryKind::Erase, 0);
        erase.target = None;
        store.append(&[Arc::new(erase)]).unwrap();
        let (page, _) = store.page(&room("general"), None, 10).unwrap();
        assert!(page[0].deleted && page[0].body.is_empty());
        assert_eq!(
            (page[0].rev, page[0].user.as_str()),
            (Some(Seq(6)), "alice")
        );
        assert_eq!(
            page[0].ts,
            msg("general", 1, "alice", "", None).ts,
            "the tombstone keeps its time"
        );
        assert!(
            !page[1].deleted && page[1].reactions.is_empty(),
            "alice's reaction is gone"
        );
        assert_eq!(&*page[1].body, "bob stays");
        assert!(page[2].body.is_empty(), "the edit's text is gone");
        assert!(page[4].deleted, "a name differing in case is the same user");
        assert_eq!(page[5].kind, EntryKind::Erase);
        store.close().unwrap();
        drop(store);
        let bytes = std::fs::read(&path).unwrap();
        for secret in ["secret one", "secret edited", "secret two"] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret:?} is still in the file"
            );
        }
    }

    /// A file of schema version 3 (kept in tests/data, written with version 3's
    /// migrations) opens, migrates to the current version and keeps its messages in
    /// their current state, its read markers and its moderation.
    #[test]
    fn a_file_of_schema_version_3_is_migrated() {
        let (_dir, store) = migrated("schema3.db", "3333feed3333feed");
        let (page, _) = store.page(&room("general"), None, 10).unwrap();
        assert_eq!(page.len(), 5);
        assert_eq!(&*page[0].body, "hello from schema 3 (edited)");
        assert_eq!(page[0].reactions[0].users[0].as_str(), "bob");
        assert_eq!(page[1].reply_to, Some(Seq(1)));
        let markers = store.load_read_markers().unwrap();
        assert_eq!(markers.len(), 1);
        assert_eq!(markers[0].2, Seq(2));
        assert!(store.load_retention().unwrap().is_empty());
        assert_eq!(store.load_moderation().unwrap().len(), 1);
        let policy = Retention {
            max_age: None,
            max_count: Some(2),
        };
        store
            .save_retention(&room("general"), Some(policy))
            .unwrap();
        let now = Utc::now();
        while store
            .prune(&|_: &RoomName| Some(policy), now, 10)
            .unwrap()
            .more
        {}
        let (page, _) = store.page(&room("general"), None, 10).unwrap();
        assert_eq!(page.iter().map(|m| m.seq.0).collect::<Vec<_>>(), [4, 5]);
    }

    #[test]
    fn rooms_of_finds_every_room_a_user_wrote_in() {
        let dir = tempfile::tempdir().unwrap();
        let store = filled(dir.path());
        let rooms = |name: &str| -> Vec<String> {
            store
                .rooms_of(&UserName::parse(name, 32).unwrap())
                .unwrap()
                .iter()
                .map(|r| r.as_str().to_owned())
                .collect()
        };
        assert_eq!(rooms("ALICE"), ["general"]);
        assert_eq!(rooms("bob"), ["@alice,bob"]);
        assert!(rooms("carol").is_empty());
    }
}
