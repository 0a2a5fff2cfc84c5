//! Durable history on SQLite through the real runtime (`Hub`): a restart continues
//! history, seqs and idempotent sends; a failing store gives `storage_unavailable`, never
//! an ack, while the server stays up, and sends succeed again once the store recovers.

use chat_core::RequestId;
use chat_core::protocol::{HelloRequest, HistoryRequest, SendRequest};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chat_core::protocol::{ErrorCode, Message, ServerFrame};
use chat_core::runtime::transport::Connection;
use chat_core::runtime::{Durability, Hub, HubConfig, Restored, SqliteStore, Store};
use chat_core::{Config, Rate, RoomName, Seq, StoreError, protocol::ClientFrame};

const WAIT: Duration = Duration::from_secs(10);

fn config() -> Config {
    Config {
        send_rate: Rate {
            burst: 10_000,
            per_second: 10_000,
        },
        frame_rate: Rate {
            burst: 20_000,
            per_second: 20_000,
        },
        // Small, so that history pages and resends reach past the window into the store.
        history_window: 20,
        history_on_join: 5,
        ..Config::default()
    }
}

async fn hub(store: Arc<dyn Store>) -> Hub {
    Hub::spawn(HubConfig {
        core: config(),
        store: Some(store),
        ..HubConfig::default()
    })
    .await
    .expect("the hub starts")
}

fn open(path: &Path) -> Arc<SqliteStore> {
    Arc::new(SqliteStore::open(path, Durability::Full).expect("the store opens"))
}

/// A session on the hub, keeping every frame it received.
struct Client {
    conn: Connection,
    log: Vec<ServerFrame>,
    next_id: u64,
}

impl Client {
    /// Connects and says hello, joining `rooms`; returns the client and the epoch.
    async fn join(hub: &Hub, name: &str, rooms: &[&str]) -> (Client, String) {
        let conn = hub.connect().await.expect("hub runs");
        let mut c = Client {
            conn,
            log: vec![],
            next_id: 100,
        };
        let rooms = rooms
            .iter()
            .map(|r| chat_core::protocol::JoinSpec {
                room: (*r).to_owned(),
                since: None,
            })
            .collect::<Vec<_>>();
        let n = rooms.len();
        c.send(ClientFrame::Hello(HelloRequest {
            id: Some(RequestId(1)),
            version: 1,
            name: name.into(),
            token: None,
            rooms: Some(rooms),
        }))
        .await;
        let epoch = c
            .until(|f| match f {
                ServerFrame::Welcome { epoch, .. } => Some(epoch.clone()),
                _ => None,
            })
            .await;
        for _ in 0..n {
            c.until(|f| matches!(f, ServerFrame::Joined { .. }).then_some(()))
                .await;
        }
        (c, epoch)
    }

    async fn send(&mut self, frame: ClientFrame) {
        self.conn.send(frame).await.expect("hub runs");
    }

    /// Sends a message; returns its request id.
    async fn post(&mut self, room: &str, body: &str, client_id: Option<&str>) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.send(ClientFrame::Send(SendRequest {
            id: Some(chat_core::RequestId(id)),
            room: Some(room.into()),
            to: None,
            body: body.into(),
            client_id: client_id.map(chat_core::ClientMsgId::from),
            reply_to: None,
        }))
        .await;
        id
    }

    /// The next frame, within [`WAIT`].
    async fn next(&mut self) -> ServerFrame {
        let frame = tokio::time::timeout(WAIT, self.conn.recv())
            .await
            .expect("a frame in time")
            .expect("the session is open");
        self.log.push(frame.clone());
        frame
    }

    /// Reads frames until `f` picks one.
    async fn until<T>(&mut self, mut f: impl FnMut(&ServerFrame) -> Option<T>) -> T {
        loop {
            let frame = self.next().await;
            if let Some(t) = f(&frame) {
                return t;
            }
        }
    }

    /// The ack or error answering request `id`.
    async fn answer(&mut self, id: u64) -> ServerFrame {
        self.until(|f| match f {
            ServerFrame::Ack { id: Some(i), .. } | ServerFrame::Error { id: Some(i), .. }
                if *i == chat_core::RequestId(id) =>
            {
                Some(f.clone())
            }
            _ => None,
        })
        .await
    }

    /// Posts and waits for the ack: (seq, duplicate).
    async fn post_acked(&mut self, room: &str, body: &str, client_id: Option<&str>) -> (Seq, bool) {
        let id = self.post(room, body, client_id).await;
        match self.answer(id).await {
            ServerFrame::Ack { seq, duplicate, .. } => (seq, duplicate),
            other => panic!("expected an ack for {body:?}, got {other:?}"),
        }
    }

    /// Every message of `room`, paging backwards with `history` from the latest.
    async fn full_history(&mut self, room: &str) -> Vec<Arc<Message>> {
        let mut all = Vec::new();
        let mut before = None;
        loop {
            self.next_id += 1;
            let id = self.next_id;
            self.send(ClientFrame::History(HistoryRequest {
                id: Some(chat_core::RequestId(id)),
                room: room.into(),
                before,
                limit: Some(7),
            }))
            .await;
            let (messages, has_more) = self
                .until(|f| match f {
                    ServerFrame::History {
                        id: Some(i),
                        messages,
                        has_more,
                        ..
                    } if *i == chat_core::RequestId(id) => Some((messages.clone(), *has_more)),
                    ServerFrame::Error { id: Some(i), .. } if *i == chat_core::RequestId(id) => {
                        panic!("history failed: {f:?}")
                    }
                    _ => None,
                })
                .await;
            assert!(messages.len() <= 7);
            let done = !has_more || messages.is_empty();
            before = messages.first().map(|m| m.seq);
            let mut page = messages;
            page.append(&mut all);
            all = page;
            if done {
                return all;
            }
        }
    }

    /// Messages of `room` delivered to this session so far.
    fn delivered(&self, room: &str) -> Vec<Arc<Message>> {
        self.log
            .iter()
            .filter_map(|f| match f {
                ServerFrame::Message(m) if m.room.as_str() == room => Some(m.clone()),
                _ => None,
            })
            .collect()
    }
}

fn strictly_increasing(msgs: &[Arc<Message>]) -> bool {
    msgs.windows(2).all(|w| w[0].seq < w[1].seq)
}

#[tokio::test]
async fn a_restart_continues_history_seqs_and_idempotent_sends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let rooms = ["general", "rust", "random"];

    // First life: 3 rooms, 30 messages each (more than the window of 20).
    let hub1 = hub(open(&path)).await;
    let (mut alice, epoch) = Client::join(&hub1, "alice", &rooms).await;
    let mut acked = Vec::new();
    for n in 0..30 {
        for room in rooms {
            let cid = format!("{room}-{n}");
            let (seq, dup) = alice
                .post_acked(room, &format!("{room} {n}"), Some(&cid))
                .await;
            assert!(!dup);
            acked.push((room, seq, cid));
        }
    }
    hub1.shutdown().await;
    assert!(
        std::fs::metadata(dir.path().join("chat.db-wal")).map_or(true, |m| m.len() == 0),
        "a graceful shutdown checkpoints the WAL"
    );

    // Second life on the same file.
    let hub2 = hub(open(&path)).await;
    let (mut alice, epoch2) = Client::join(&hub2, "alice", &rooms).await;
    assert_eq!(epoch2, epoch, "the same file keeps its epoch");
    for room in rooms {
        let joined = alice
            .log
            .iter()
            .find_map(|f| match f {
                ServerFrame::Joined {
                    room: r,
                    last_seq,
                    messages,
                    ..
                } if r.as_str() == room => Some((*last_seq, messages.clone())),
                _ => None,
            })
            .expect("joined");
        assert_eq!(joined.0, Seq(30), "{room} continues at its last seq");
        assert_eq!(
            joined.1.iter().map(|m| m.seq.0).collect::<Vec<_>>(),
            (26..=30).collect::<Vec<_>>()
        );
        // Every acked message is there once, in order, with its body and client id.
        let history = alice.full_history(room).await;
        assert!(strictly_increasing(&history));
        let expected: Vec<(u64, String, String)> = acked
            .iter()
            .filter(|(r, _, _)| *r == room)
            .map(|(_, seq, cid)| {
                (
                    seq.0,
                    cid.clone(),
                    format!("{room} {}", &cid[room.len() + 1..]),
                )
            })
            .collect();
        let got: Vec<(u64, String, String)> = history
            .iter()
            .map(|m| {
                (
                    m.seq.0,
                    m.client_id.as_deref().unwrap_or_default().to_owned(),
                    m.body.to_string(),
                )
            })
            .collect();
        assert_eq!(got, expected);
    }

    // A resend of an acked client id (still in the restored window) is a duplicate with
    // the original seq, and nothing new is posted.
    let (seq, dup) = alice.post_acked("rust", "rust 29", Some("rust-29")).await;
    assert_eq!((seq, dup), (Seq(30), true));
    let (seq, dup) = alice
        .post_acked("general", "general 25", Some("general-25"))
        .await;
    assert_eq!((seq, dup), (Seq(26), true));
    // New messages continue the seq.
    let (seq, dup) = alice
        .post_acked("rust", "after restart", Some("rust-30"))
        .await;
    assert_eq!((seq, dup), (Seq(31), false));
    assert!(alice.delivered("rust").iter().all(|m| m.seq == Seq(31)));
    let rust = alice.full_history("rust").await;
    assert_eq!(rust.len(), 31);
    assert_eq!(
        rust.iter()
            .filter(|m| m.client_id.as_deref() == Some("rust-29"))
            .count(),
        1
    );
    hub2.shutdown().await;

    // Third life: still one copy of everything.
    let store = open(&path);
    let restored = store.load(1000).unwrap();
    assert_eq!(restored.epoch, epoch);
    let mut counts: Vec<(String, usize, u64)> = restored
        .rooms
        .iter()
        .map(|r| (r.room.to_string(), r.recent.len(), r.last_seq.0))
        .collect();
    counts.sort();
    assert_eq!(
        counts,
        vec![
            ("general".into(), 30, 30),
            ("random".into(), 30, 30),
            ("rust".into(), 31, 31)
        ]
    );

    // A fresh file is a new epoch: clients learn that history was reset.
    let other = hub(open(&dir.path().join("other.db"))).await;
    let (_, fresh) = Client::join(&other, "alice", &["general"]).await;
    assert_ne!(fresh, epoch);
    other.shutdown().await;
}

#[tokio::test]
async fn an_ephemeral_memory_database_serves_history() {
    let store = Arc::new(SqliteStore::open(":memory:", Durability::Full).unwrap());
    let hub = hub(store).await;
    let (mut alice, _) = Client::join(&hub, "alice", &["general"]).await;
    for n in 0..25 {
        alice
            .post_acked("general", &format!("m{n}"), Some(&format!("m{n}")))
            .await;
    }
    // 25 messages, a window of 20: the oldest come from the database.
    let history = alice.full_history("general").await;
    assert_eq!(
        history.iter().map(|m| m.seq.0).collect::<Vec<_>>(),
        (1..=25).collect::<Vec<_>>()
    );
    hub.shutdown().await;
}

/// The real SQLite store with a switch that makes appends fail, as a full disk does.
struct Flaky {
    inner: SqliteStore,
    failing: AtomicBool,
}

impl Store for Flaky {
    fn load(&self, window: usize) -> Result<Restored, StoreError> {
        self.inner.load(window)
    }

    fn append(&self, batch: &[Arc<Message>]) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Full(
                "database or disk is full (injected)".into(),
            ));
        }
        self.inner.append(batch)
    }

    fn page(
        &self,
        room: &RoomName,
        before: Option<Seq>,
        limit: usize,
    ) -> Result<(Vec<Message>, bool), StoreError> {
        self.inner.page(room, before, limit)
    }

    fn close(&self) -> Result<(), StoreError> {
        self.inner.close()
    }
}

fn storage_error(frame: &ServerFrame) -> bool {
    matches!(
        frame,
        ServerFrame::Error {
            code: ErrorCode::StorageUnavailable,
            ..
        }
    )
}

#[tokio::test]
async fn a_failing_store_refuses_sends_keeps_the_server_up_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let store = Arc::new(Flaky {
        inner: SqliteStore::open(&path, Durability::Full).unwrap(),
        failing: AtomicBool::new(false),
    });
    let hub = hub(store.clone()).await;
    let (mut alice, _) = Client::join(&hub, "alice", &["general"]).await;
    let (mut bob, _) = Client::join(&hub, "bob", &["general"]).await;
    let (s1, _) = alice.post_acked("general", "before", Some("a-1")).await;

    store.failing.store(true, Ordering::SeqCst);
    // Several sends while the store fails: each gets storage_unavailable, none an ack.
    let mut refused = Vec::new();
    for n in 2..=4 {
        let id = alice
            .post("general", &format!("lost {n}"), Some(&format!("a-{n}")))
            .await;
        refused.push(id);
    }
    for id in &refused {
        let answer = alice.answer(*id).await;
        assert!(storage_error(&answer), "{answer:?}");
    }
    // The server is up: typing still flows, a newcomer can join and is announced,
    // history still reads from the store.
    bob.send(ClientFrame::Typing {
        room: "general".into(),
        active: true,
    })
    .await;
    alice
        .until(|f| {
            matches!(f, ServerFrame::Typing { user, active: true, .. } if user.as_str() == "bob")
                .then_some(())
        })
        .await;
    let (mut carol, _) = Client::join(&hub, "carol", &["general"]).await;
    bob.until(|f| {
        matches!(f, ServerFrame::UserJoined { user, .. } if user.as_str() == "carol").then_some(())
    })
    .await;
    assert_eq!(carol.full_history("general").await.len(), 1);
    // A resend while failing fails again (the client id was not taken).
    let id = alice.post("general", "lost 2", Some("a-2")).await;
    assert!(storage_error(&alice.answer(id).await));

    store.failing.store(false, Ordering::SeqCst);
    // The resends now go through, once each.
    let (s2, dup2) = alice.post_acked("general", "lost 2", Some("a-2")).await;
    let (s3, dup3) = alice.post_acked("general", "lost 3", Some("a-3")).await;
    assert!(!dup2 && !dup3);
    assert!(s1 < s2 && s2 < s3);
    let (again, dup) = alice.post_acked("general", "lost 2", Some("a-2")).await;
    assert_eq!((again, dup), (s2, true));
    // bob saw exactly the committed messages.
    bob.until(|f| matches!(f, ServerFrame::Message(m) if m.seq == s3).then_some(()))
        .await;
    let seen: Vec<_> = bob
        .delivered("general")
        .iter()
        .map(|m| m.body.to_string())
        .collect();
    assert_eq!(seen, ["before", "lost 2", "lost 3"]);
    // Nobody got an ack for a refused request.
    assert!(
        !alice
            .log
            .iter()
            .any(|f| matches!(f, ServerFrame::Ack { id: Some(i), .. } if refused.contains(&i.0)))
    );
    let history = carol.full_history("general").await;
    assert_eq!(
        history
            .iter()
            .map(|m| m.body.to_string())
            .collect::<Vec<_>>(),
        ["before", "lost 2", "lost 3"]
    );
    hub.shutdown().await;
    // And so does the file.
    let stored = open(&path)
        .page(&RoomName::parse("general", 64, 32).unwrap(), None, 100)
        .unwrap();
    assert_eq!(stored.0.len(), 3);
}

#[tokio::test]
async fn a_database_locked_by_another_process_fails_sends_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let store = SqliteStore::open(&path, Durability::Full)
        .unwrap()
        .with_busy_timeout(Duration::from_millis(100))
        .unwrap();
    let hub = hub(Arc::new(store)).await;
    let (mut alice, _) = Client::join(&hub, "alice", &["general"]).await;
    alice.post_acked("general", "one", Some("1")).await;

    // Another process takes the write lock (a real SQLite failure, no injection).
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let id = alice.post("general", "two", Some("2")).await;
    let answer = alice.answer(id).await;
    match &answer {
        ServerFrame::Error {
            code: ErrorCode::StorageUnavailable,
            message,
            ..
        } => assert!(message.contains("locked"), "{message}"),
        other => panic!("expected storage_unavailable, got {other:?}"),
    }
    // History pages still read (WAL readers do not wait for the writer).
    assert_eq!(alice.full_history("general").await.len(), 1);
    other.execute_batch("ROLLBACK").unwrap();
    drop(other);

    let (seq, dup) = alice.post_acked("general", "two", Some("2")).await;
    assert!(!dup);
    let history = alice.full_history("general").await;
    assert_eq!(
        history
            .iter()
            .map(|m| (m.body.to_string(), m.seq))
            .collect::<Vec<_>>(),
        [("one".to_owned(), Seq(1)), ("two".to_owned(), seq)]
    );
    hub.shutdown().await;
}

/// Unmounts a test filesystem when dropped.
struct Mount(std::path::PathBuf);

impl Mount {
    /// A tmpfs of `size` at `at`, or `None` where this process may not mount (not root).
    fn tmpfs(at: &Path, size: &str) -> Option<Mount> {
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| Mount(at.to_owned()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_refuses_sends_until_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    // A real full disk: a 1 MiB filesystem. Needs root (CI runs as root); elsewhere the
    // failure paths are covered by the injected and the locked-database tests above.
    let Some(_mount) = Mount::tmpfs(dir.path(), "1m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let path = dir.path().join("chat.db");
    let hub = hub(open(&path)).await;
    let (mut alice, _) = Client::join(&hub, "alice", &["general"]).await;
    alice.post_acked("general", "first", Some("m-0")).await;

    // Fill what is left of the disk.
    let filler = dir.path().join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 16 * 1024];
        while f.write_all(&chunk).and_then(|()| f.sync_all()).is_ok() {}
    }
    // Send until the store refuses (the WAL may still have room for a few commits).
    let body = "x".repeat(4000);
    let mut acked = vec!["m-0".to_owned()];
    let mut refused = None;
    for n in 1..=500 {
        let cid = format!("m-{n}");
        let id = alice.post("general", &body, Some(&cid)).await;
        match alice.answer(id).await {
            ServerFrame::Ack { duplicate, .. } => {
                assert!(!duplicate);
                acked.push(cid);
            }
            ServerFrame::Error {
                code: ErrorCode::StorageUnavailable,
                message,
                ..
            } => {
                assert!(message.contains("full"), "{message}");
                eprintln!("{} acked, then refused: {message}", acked.len());
                refused = Some(cid);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let refused = refused.expect("a full disk refuses a send");
    // The server is up and still reads history while the disk is full.
    let (mut bob, _) = Client::join(&hub, "bob", &["general"]).await;
    assert_eq!(bob.full_history("general").await.len(), acked.len());

    // Space again: the refused message goes through when resent.
    std::fs::remove_file(&filler).unwrap();
    let (_, dup) = alice.post_acked("general", &body, Some(&refused)).await;
    assert!(!dup);
    acked.push(refused);
    // Read as the author: client ids go only to their author's sessions (lean frames).
    let history = alice.full_history("general").await;
    assert!(strictly_increasing(&history));
    let ids: Vec<String> = history
        .iter()
        .map(|m| m.client_id.as_deref().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(ids, acked);
    hub.shutdown().await;
    // And the file holds exactly that.
    let store = open(&path);
    let (stored, _) = store
        .page(&RoomName::parse("general", 64, 32).unwrap(), None, 1000)
        .unwrap();
    assert_eq!(stored.len(), acked.len());
    drop(store);
}
