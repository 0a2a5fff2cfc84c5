//! Read markers, retention and erasure on the real runtime and a real SQLite file: a
//! host identity's read markers survive a graceful restart and a `kill -9`; a room's
//! retention prunes the file in the background, and history and resume below what was
//! pruned say the gap; `Hub::erase_user` leaves tombstones, and none of the user's text
//! is left in the file.
#![cfg(all(feature = "runtime", feature = "sqlite"))]
#![allow(clippy::disallowed_methods)] // the tests wait on the wall clock, bounded

mod child;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chat_core::protocol::{EntryKind, Message, RoomInfo, ServerFrame};
use chat_core::runtime::transport::Connection;
use chat_core::runtime::{Durability, Hub, HubConfig, SqliteStore};
use chat_core::{Config, Identity, Retention, Seq};
use serde_json::{Value, json};

/// Upper bound for any one wait (not a speed assertion).
const WAIT: Duration = Duration::from_secs(30);

fn config() -> Config {
    Config {
        default_rooms: vec!["lobby".into()],
        ..Config::default()
    }
}

async fn hub_with(db: &Path, core: Config) -> Hub {
    let store = SqliteStore::open(db, Durability::Full).expect("open the database");
    Hub::spawn(HubConfig {
        core,
        store: Some(Arc::new(store)),
        ..HubConfig::default()
    })
    .await
    .expect("hub starts")
}

async fn hub_on(db: &Path) -> Hub {
    hub_with(db, config()).await
}

async fn say(c: &mut Connection, frame: Value) {
    let frame = chat_core::protocol::decode(frame.to_string().as_bytes()).expect("valid frame");
    c.send(frame).await.expect("hub runs");
}

/// The next frame that `pick` accepts (skipping the others).
async fn until<T>(c: &mut Connection, mut pick: impl FnMut(&ServerFrame) -> Option<T>) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            let frame = c.recv().await.expect("connection open");
            if let Some(t) = pick(&frame) {
                return t;
            }
        }
    })
    .await
    .expect("the frame comes")
}

/// `name` connected with the host's identity, in the default room (its `joined` read).
async fn user(hub: &Hub, name: &str) -> Connection {
    let mut c = hub.connect_as(Identity::new(name)).await.expect("connect");
    say(&mut c, json!({"type":"hello","version":1,"name":name})).await;
    until(&mut c, |f| {
        matches!(f, ServerFrame::Joined { .. }).then_some(())
    })
    .await;
    c
}

/// The `rooms` reply's entry for `room`.
async fn room_info(c: &mut Connection, room: &str) -> RoomInfo {
    say(c, json!({"type":"rooms","id":77})).await;
    let rooms = until(c, |f| match f {
        ServerFrame::Rooms { rooms, .. } => Some(rooms.clone()),
        _ => None,
    })
    .await;
    rooms
        .into_iter()
        .find(|r| r.name.as_str() == room)
        .expect("the room is listed")
}

async fn publish(hub: &Hub, room: &str, user: &str, body: &str) -> Arc<Message> {
    hub.publish(room, user, body).await.expect("published")
}

#[tokio::test]
async fn a_host_identitys_read_marker_survives_a_graceful_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let hub = hub_on(&db).await;
    for body in ["one", "two", "three"] {
        publish(&hub, "lobby", "bob", body).await;
    }
    let mut alice = user(&hub, "alice").await;
    say(&mut alice, json!({"type":"read","room":"lobby","seq":1})).await;
    assert_eq!(room_info(&mut alice, "lobby").await.unread, Some(2));
    hub.shutdown().await;

    let hub = hub_on(&db).await;
    let mut alice = user(&hub, "alice").await;
    assert_eq!(
        room_info(&mut alice, "lobby").await.unread,
        Some(2),
        "the marker came back from the file"
    );
    // And it is the engine's marker again: it moves forward from there.
    say(&mut alice, json!({"type":"read","room":"lobby","seq":3})).await;
    assert_eq!(room_info(&mut alice, "lobby").await.unread, None);
    hub.shutdown().await;
}

/// The child of [`a_read_marker_before_an_acked_send_survives_a_kill_9`]: on the database
/// named by `LCSTORE_CHILD_DB`, bob posts three messages, alice reads up to the second
/// and sends one herself; once that send is acked, prints `ACKED` and waits to be killed.
#[tokio::test]
#[ignore = "run by a_read_marker_before_an_acked_send_survives_a_kill_9 in a child process"]
async fn child_reads_then_waits() {
    let Ok(db) = std::env::var("LCSTORE_CHILD_DB") else {
        return;
    };
    let hub = hub_on(Path::new(&db)).await;
    for body in ["one", "two", "three"] {
        publish(&hub, "lobby", "bob", body).await;
    }
    let mut alice = user(&hub, "alice").await;
    say(&mut alice, json!({"type":"read","room":"lobby","seq":2})).await;
    say(
        &mut alice,
        json!({"type":"send","id":5,"room":"lobby","body":"mine"}),
    )
    .await;
    until(&mut alice, |f| match f {
        ServerFrame::Ack { .. } => Some(()),
        ServerFrame::Error { message, .. } => panic!("refused: {message}"),
        _ => None,
    })
    .await;
    println!("ACKED");
    tokio::time::sleep(WAIT).await;
}

/// The marker is committed with the group commit of the messages after it: a send acked
/// after the `read` means the marker is in the file, whatever happens next.
#[tokio::test]
async fn a_read_marker_before_an_acked_send_survives_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    child::run_until_acked_then_kill("child_reads_then_waits", "LCSTORE_CHILD_DB", &db, WAIT).await;

    let hub = hub_on(&db).await;
    let mut alice = user(&hub, "alice").await;
    // Seq 3 (bob's third) is unread; seq 4 is alice's own.
    assert_eq!(room_info(&mut alice, "lobby").await.unread, Some(1));
    hub.shutdown().await;
}

/// An anonymous user's marker lives as long as the user: it is not written to the file.
#[tokio::test]
async fn an_anonymous_users_marker_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let hub = hub_on(&db).await;
    publish(&hub, "lobby", "bob", "one").await;
    let mut anon = hub.connect().await.unwrap();
    say(
        &mut anon,
        json!({"type":"hello","version":1,"name":"carol"}),
    )
    .await;
    until(&mut anon, |f| {
        matches!(f, ServerFrame::Joined { .. }).then_some(())
    })
    .await;
    say(&mut anon, json!({"type":"read","room":"lobby","seq":1})).await;
    assert_eq!(room_info(&mut anon, "lobby").await.unread, None);
    let mut alice = user(&hub, "alice").await;
    say(&mut alice, json!({"type":"read","room":"lobby","seq":1})).await;
    // alice's marker is stored with this send's commit.
    say(
        &mut alice,
        json!({"type":"send","id":1,"room":"lobby","body":"x"}),
    )
    .await;
    until(&mut alice, |f| {
        matches!(f, ServerFrame::Ack { .. }).then_some(())
    })
    .await;
    hub.shutdown().await;
    let conn = rusqlite::Connection::open(&db).unwrap();
    let users: Vec<String> = conn
        .prepare("SELECT user FROM read_markers")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(users, ["alice"]);
}

/// Asks for the newest page until it says the gap at `first` (retention runs in the
/// background, and an earlier step may have pruned less while messages were coming).
async fn page_with_gap(
    c: &mut Connection,
    room: &str,
    first: u64,
) -> (Vec<u64>, bool, Option<Seq>) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        say(c, json!({"type":"history","id":9,"room":room,"limit":100})).await;
        let page = until(c, |f| match f {
            ServerFrame::History {
                messages,
                has_more,
                gap,
                first_seq,
                ..
            } => Some((
                messages.iter().map(|m| m.seq.0).collect::<Vec<_>>(),
                *has_more,
                *gap,
                *first_seq,
            )),
            _ => None,
        })
        .await;
        if page.2 && page.3 == Some(Seq(first)) {
            return (page.0, page.1, page.3);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never pruned: {page:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_rooms_retention_prunes_the_file_and_history_and_resume_say_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let hub = hub_on(&db).await;
    let five = Retention {
        max_age: None,
        max_count: Some(5),
    };
    hub.set_retention("lobby", five).await.unwrap().unwrap();
    for i in 1..=20 {
        publish(&hub, "lobby", "bob", &format!("m{i}")).await;
        publish(&hub, "other", "bob", &format!("m{i}")).await;
    }
    let mut alice = user(&hub, "alice").await;
    let (seqs, has_more, first) = page_with_gap(&mut alice, "lobby", 16).await;
    assert_eq!(seqs, (16..=20).collect::<Vec<_>>());
    assert!(!has_more);
    assert_eq!(first, Some(Seq(16)));
    // A resume from before what was pruned: the gap, with the latest messages.
    say(
        &mut alice,
        json!({"type":"join","id":3,"room":"lobby","since":3}),
    )
    .await;
    let (gap, seqs) = until(&mut alice, |f| match f {
        ServerFrame::Joined { gap, messages, .. } => {
            Some((*gap, messages.iter().map(|m| m.seq.0).collect::<Vec<_>>()))
        }
        _ => None,
    })
    .await;
    assert!(gap);
    assert_eq!(seqs, (16..=20).collect::<Vec<_>>());
    // A room without a policy keeps everything.
    say(&mut alice, json!({"type":"join","id":4,"room":"other"})).await;
    until(&mut alice, |f| {
        matches!(f, ServerFrame::Joined { .. }).then_some(())
    })
    .await;
    say(
        &mut alice,
        json!({"type":"history","id":5,"room":"other","limit":100}),
    )
    .await;
    let (n, gap) = until(&mut alice, |f| match f {
        ServerFrame::History { messages, gap, .. } => Some((messages.len(), *gap)),
        _ => None,
    })
    .await;
    assert_eq!((n, gap), (20, false));
    hub.shutdown().await;
    let rows: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM messages WHERE room = 'lobby'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows, 5, "the file holds the 5 newest only");

    // The policy is in the file too: it applies after a restart.
    let hub = hub_on(&db).await;
    for i in 21..=25 {
        publish(&hub, "lobby", "bob", &format!("m{i}")).await;
    }
    let mut alice = user(&hub, "alice").await;
    let (seqs, _, _) = page_with_gap(&mut alice, "lobby", 21).await;
    assert_eq!(seqs, (21..=25).collect::<Vec<_>>());
    hub.shutdown().await;
}

/// `Config::retention` applies to every room; it bounds `:memory:` as it bounds a file.
#[tokio::test]
async fn the_default_retention_applies_to_every_room_of_a_memory_database() {
    let store = SqliteStore::open(":memory:", Durability::Full).unwrap();
    let hub = Hub::spawn(HubConfig {
        core: Config {
            retention: Some(Retention {
                max_age: None,
                max_count: Some(3),
            }),
            ..config()
        },
        store: Some(Arc::new(store)),
        ..HubConfig::default()
    })
    .await
    .unwrap();
    for i in 1..=10 {
        publish(&hub, "lobby", "bob", &format!("m{i}")).await;
    }
    let mut alice = user(&hub, "alice").await;
    let (seqs, _, first) = page_with_gap(&mut alice, "lobby", 8).await;
    assert_eq!(seqs, [8, 9, 10]);
    assert_eq!(first, Some(Seq(8)));
    hub.shutdown().await;
    let no_store = Hub::spawn(HubConfig::default()).await.unwrap();
    assert!(
        no_store
            .set_retention("lobby", Retention::default())
            .await
            .unwrap()
            .is_err(),
        "retention needs a store"
    );
    no_store.shutdown().await;
}

fn file_holds(db: &Path, text: &str) -> bool {
    let mut found = false;
    for path in [db.to_owned(), db.with_extension("db-wal")] {
        if let Ok(bytes) = std::fs::read(&path) {
            found |= bytes.windows(text.len()).any(|w| w == text.as_bytes());
        }
    }
    found
}

#[tokio::test]
async fn erasing_a_user_leaves_tombstones_and_none_of_their_text_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let hub = hub_on(&db).await;
    publish(&hub, "lobby", "alice", "alice secret one").await;
    let bobs = publish(&hub, "lobby", "bob", "bob stays").await;
    publish(&hub, "rust", "Alice", "alice secret two").await;
    publish(&hub, "rust", "bob", "bob stays too").await;
    hub.shutdown().await;
    assert!(
        file_holds(&db, "alice secret two"),
        "the check can see text"
    );

    // After a restart no room is in memory: "lobby" is loaded by the joins, "rust" by
    // the erasure itself.
    let hub = hub_on(&db).await;
    let mut alice = user(&hub, "alice").await;
    say(
        &mut alice,
        json!({"type":"react","id":1,"room":"lobby","seq":bobs.seq.0,"emoji":"👍","on":true}),
    )
    .await;
    until(&mut alice, |f| {
        matches!(f, ServerFrame::Ack { .. }).then_some(())
    })
    .await;
    let mut bob = user(&hub, "bob").await;

    assert_eq!(hub.erase_user("alice").await.unwrap(), Ok(2));
    let erase = until(&mut bob, |f| match f {
        ServerFrame::Change(m) if m.kind == EntryKind::Erase => Some(m.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        (erase.room.as_str(), erase.user.as_str()),
        ("lobby", "alice")
    );
    assert_eq!(erase.target, None);
    let text = serde_json::to_value(ServerFrame::Change(erase.clone())).unwrap();
    assert_eq!(
        text,
        json!({"type":"change","kind":"erase","room":"lobby","seq":erase.seq.0,
               "user":"alice","ts":text["ts"]}),
        "the shape the page renders"
    );
    hub.shutdown().await;

    for secret in ["alice secret one", "alice secret two"] {
        assert!(!file_holds(&db, secret), "{secret:?} is still in the file");
    }
    let conn = rusqlite::Connection::open(&db).unwrap();
    let tombstones: Vec<(String, i64, i64, String, String, bool)> = conn
        .prepare(
            "SELECT room, seq, ts, user, body, deleted FROM messages \
             WHERE kind IS NULL AND lower(user) = 'alice' ORDER BY room, seq",
        )
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(tombstones.len(), 2);
    for (room, seq, ts, user, body, deleted) in &tombstones {
        assert!(deleted, "{room}#{seq} is a tombstone");
        assert!(body.is_empty());
        assert!(*ts > 0 && *seq == 1 && user.eq_ignore_ascii_case("alice"));
    }
    let reactions: Option<String> = conn
        .query_row(
            "SELECT reactions FROM messages WHERE room = 'lobby' AND seq = 2",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(reactions, None, "alice's reaction is gone");
    drop(conn);

    // After the restart the history shows the tombstones.
    let hub = hub_on(&db).await;
    let mut bob = user(&hub, "bob").await;
    say(&mut bob, json!({"type":"join","id":2,"room":"rust"})).await;
    let messages = until(&mut bob, |f| match f {
        ServerFrame::Joined { room, messages, .. } if room.as_str() == "rust" => {
            Some(messages.clone())
        }
        _ => None,
    })
    .await;
    assert!(messages[0].deleted && messages[0].body.is_empty());
    assert_eq!(
        messages[0].user.as_str(),
        "Alice",
        "the tombstone keeps its author"
    );
    assert_eq!(&*messages[1].body, "bob stays too");
    assert_eq!(messages[2].kind, EntryKind::Erase);
    hub.shutdown().await;
}
