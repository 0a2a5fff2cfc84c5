//! `HubConfig::commit_inline`: the driver commits the messages itself, at the end of the
//! drain that made them, on a real SQLite file. Every message is still committed before
//! anyone sees it or its ack, in order, and a failed commit is refused to its sender and
//! delivered to nobody, as on the writer thread; both settings are run.
#![cfg(all(feature = "runtime", feature = "sqlite"))]
#![allow(clippy::disallowed_methods)] // the tests wait on the wall clock, bounded

mod common;

use std::sync::Arc;
use std::time::Duration;

use chat_core::protocol::{ErrorCode, Message, ServerFrame};
use chat_core::runtime::transport::Connection;
use chat_core::runtime::{Durability, Hub, HubConfig, Restored, SqliteStore, Store};
use chat_core::{RequestId, RoomName, Seq, StoreError};

/// Upper bound for any one wait (not a speed assertion).
const WAIT: Duration = Duration::from_secs(30);

/// The SQLite store, except that a batch holding a message with this body fails.
const REFUSED: &str = "the disk says no";

struct Refusing(SqliteStore);

impl Store for Refusing {
    fn load(&self, window: usize) -> Result<Restored, StoreError> {
        self.0.load(window)
    }
    fn append(&self, batch: &[Arc<Message>]) -> Result<(), StoreError> {
        if batch.iter().any(|m| &*m.body == REFUSED) {
            return Err(StoreError::Unavailable("refused by the test".into()));
        }
        self.0.append(batch)
    }
    fn cheap_commits(&self) -> bool {
        self.0.cheap_commits()
    }
    fn page(
        &self,
        room: &RoomName,
        before: Option<Seq>,
        limit: usize,
    ) -> Result<(Vec<Message>, bool), StoreError> {
        self.0.page(room, before, limit)
    }
}

async fn hub(store: Arc<dyn Store>, inline: bool) -> Hub {
    Hub::spawn(HubConfig {
        core: common::unlimited(),
        store: Some(store),
        commit_inline: Some(inline),
        fanout_threads: 0,
        ..HubConfig::default()
    })
    .await
    .expect("hub starts")
}

async fn send(c: &mut Connection, id: u64, body: &str) {
    c.send(common::say(id, body)).await.expect("hub runs");
}

async fn next(c: &mut Connection) -> ServerFrame {
    tokio::time::timeout(WAIT, c.recv())
        .await
        .expect("a frame in time")
        .expect("connection open")
}

/// Bodies of the messages `c` receives until `n` of them came, with the acks and
/// errors to its own requests (`id`, seq or error code) on the way.
async fn take(c: &mut Connection, n: usize) -> (Vec<String>, Vec<(u64, Result<u64, ErrorCode>)>) {
    let (mut bodies, mut answers) = (Vec::new(), Vec::new());
    while bodies.len() < n {
        match next(c).await {
            ServerFrame::Message(m) => bodies.push(m.body.to_string()),
            ServerFrame::Ack {
                id: Some(id), seq, ..
            } => answers.push((id.0, Ok(seq.0))),
            ServerFrame::Error {
                id: Some(id), code, ..
            } => answers.push((id.0, Err(code))),
            _ => {}
        }
    }
    (bodies, answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_committed_before_it_is_seen_in_order_either_way() {
    for inline in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("chat.db");
        let store = Arc::new(SqliteStore::open(&db, Durability::Normal).unwrap());
        assert!(
            store.cheap_commits(),
            "synchronous=NORMAL commits are cheap"
        );
        let hub = hub(store, inline).await;
        let mut ann = common::member(&hub, "ann").await;
        let mut bob = common::member(&hub, "bob").await;
        let sent: Vec<String> = (1..=200).map(|i| format!("m{i}")).collect();
        for (i, body) in sent.iter().enumerate() {
            send(&mut ann, i as u64 + 1, body).await;
        }
        let (seen, _) = take(&mut bob, sent.len()).await;
        assert_eq!(
            seen, sent,
            "inline {inline}: bob sees every message in order"
        );
        let (own, mut acks) = take(&mut ann, sent.len()).await;
        assert_eq!(own, sent, "inline {inline}");
        while acks.len() < sent.len() {
            if let ServerFrame::Ack {
                id: Some(id), seq, ..
            } = next(&mut ann).await
            {
                acks.push((id.0, Ok(seq.0)));
            }
        }
        acks.sort_unstable_by_key(|(id, _)| *id);
        let want: Vec<_> = (1..=200).map(|i| (i, Ok(i))).collect();
        assert_eq!(
            acks, want,
            "inline {inline}: one ack per send, seqs 1..=200"
        );
        hub.shutdown().await;
        // What was seen is in the file.
        let reopened = SqliteStore::open(&db, Durability::Normal).unwrap();
        let (page, more) = reopened
            .page(&common::room("general"), None, 500)
            .expect("read back");
        assert!(!more);
        let stored: Vec<String> = page.iter().map(|m| m.body.to_string()).collect();
        assert_eq!(
            stored, sent,
            "inline {inline}: the file holds every message"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_is_refused_to_its_sender_and_seen_by_nobody_either_way() {
    for inline in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("chat.db"), Durability::Normal).unwrap();
        let hub = hub(Arc::new(Refusing(store)), inline).await;
        let mut ann = common::member(&hub, "ann").await;
        let mut bob = common::member(&hub, "bob").await;
        send(&mut ann, 1, "before").await;
        let (seen, _) = take(&mut bob, 1).await;
        assert_eq!(seen, ["before"]);
        send(&mut ann, 2, REFUSED).await;
        // Its own commit: the next message is not in the refused one's batch.
        let refused = loop {
            if let ServerFrame::Error {
                id: Some(RequestId(2)),
                code,
                ..
            } = next(&mut ann).await
            {
                break code;
            }
        };
        assert_eq!(refused, ErrorCode::StorageUnavailable, "inline {inline}");
        send(&mut ann, 3, "after").await;
        let (seen, _) = take(&mut bob, 1).await;
        assert_eq!(
            seen,
            ["after"],
            "inline {inline}: the refused one never came"
        );
        hub.shutdown().await;
    }
}
