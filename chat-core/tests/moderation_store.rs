//! Moderation that lasts, on the real runtime and a real SQLite file: roles, bans, mutes
//! (with their end), topic and slow mode survive a graceful restart and a `kill -9` of a
//! process that had acknowledged them; a timed ban that ended while the server was down is
//! lifted at startup; a file written by the previous schema migrates.
#![cfg(all(feature = "runtime", feature = "sqlite"))]
#![allow(clippy::disallowed_methods)] // the tests wait on the wall clock, bounded

mod child;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chat_core::protocol::{ErrorCode, ModAction, Role, ServerFrame};
use chat_core::runtime::transport::Connection;
use chat_core::runtime::{Durability, Hub, HubConfig, SCHEMA_VERSION, SqliteStore, Store};
use chat_core::{Config, Event, Identity, ModerationChange, RoomName, UserName};
use serde_json::{Value, json};

/// Upper bound for any one wait (not a speed assertion).
const WAIT: Duration = Duration::from_secs(30);

fn config() -> Config {
    Config {
        default_rooms: vec!["lobby".into()],
        ..Config::default()
    }
}

async fn hub_on(db: &Path) -> Hub {
    let store = SqliteStore::open(db, Durability::Full).expect("open the database");
    Hub::spawn(HubConfig {
        core: config(),
        store: Some(Arc::new(store)),
        ..HubConfig::default()
    })
    .await
    .expect("hub starts")
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

/// `user` connected with the host's identity, `rooms` joined at hello (`None`: the
/// default rooms); returns the connection after its welcome.
async fn user(hub: &Hub, name: &str, rooms: Option<Vec<&str>>) -> Connection {
    let mut c = hub.connect_as(Identity::new(name)).await.expect("connect");
    let mut hello = json!({"type":"hello","version":1,"name":name});
    if let Some(rooms) = rooms {
        hello["rooms"] = json!(rooms.iter().map(|r| json!({"room": r})).collect::<Vec<_>>());
    }
    say(&mut c, hello).await;
    until(&mut c, |f| {
        matches!(f, ServerFrame::Welcome { .. }).then_some(())
    })
    .await;
    c
}

/// After a restart: carol's `joined` shows her role, the topic and the slow mode; bob is
/// refused the room; alice is in it but refused a post.
async fn check_enforced(hub: &Hub) {
    let mut carol = user(hub, "carol", None).await;
    let (topic, slow_mode, role) = until(&mut carol, |f| match f {
        ServerFrame::Joined {
            topic,
            slow_mode,
            role,
            ..
        } => Some((topic.clone(), *slow_mode, *role)),
        _ => None,
    })
    .await;
    assert_eq!(topic.as_deref(), Some("be kind"));
    assert_eq!(slow_mode, Some(30));
    assert_eq!(role, Some(Role::Moderator));

    let mut bob = user(hub, "bob", Some(vec![])).await;
    say(&mut bob, json!({"type":"join","id":1,"room":"lobby"})).await;
    let code = until(&mut bob, |f| match f {
        ServerFrame::Error { code, .. } => Some(*code),
        ServerFrame::Joined { .. } => Some(ErrorCode::InvalidRequest),
        _ => None,
    })
    .await;
    assert_eq!(code, ErrorCode::Forbidden, "bob is still banned");

    let mut alice = user(hub, "alice", None).await;
    until(&mut alice, |f| {
        matches!(f, ServerFrame::Joined { .. }).then_some(())
    })
    .await;
    say(
        &mut alice,
        json!({"type":"send","id":2,"room":"lobby","body":"am I heard?"}),
    )
    .await;
    let code = until(&mut alice, |f| match f {
        ServerFrame::Error { code, .. } => Some(*code),
        ServerFrame::Ack { .. } => Some(ErrorCode::InvalidRequest),
        _ => None,
    })
    .await;
    assert_eq!(code, ErrorCode::Forbidden, "alice is still muted");
}

#[tokio::test]
async fn host_moderation_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let hub = hub_on(&db).await;
    let hour = Some(Duration::from_secs(3600));
    hub.set_role("lobby", "carol", Role::Moderator)
        .await
        .unwrap()
        .unwrap();
    hub.ban("lobby", "bob", "spam", None)
        .await
        .unwrap()
        .unwrap();
    hub.mute_for("lobby", "alice", "calm", hour)
        .await
        .unwrap()
        .unwrap();
    hub.set_topic("lobby", "be kind").await.unwrap().unwrap();
    hub.set_slow_mode("lobby", 30).await.unwrap().unwrap();
    hub.shutdown().await;

    let hub = hub_on(&db).await;
    check_enforced(&hub).await;
    hub.shutdown().await;
}

/// The child of [`moderation_acked_before_a_kill_9_survives_it`]: on the database named
/// by `MODCORE_CHILD_DB`, carol (given the moderator role by the host) bans, mutes, sets
/// the topic and the slow mode with frames; once every `done` is in, prints `ACKED` and
/// waits to be killed.
#[tokio::test]
#[ignore = "run by moderation_acked_before_a_kill_9_survives_it in a child process"]
async fn child_moderates_then_waits() {
    let Ok(db) = std::env::var("MODCORE_CHILD_DB") else {
        return;
    };
    let hub = hub_on(Path::new(&db)).await;
    hub.set_role("lobby", "carol", Role::Moderator)
        .await
        .unwrap()
        .unwrap();
    let mut carol = user(&hub, "carol", None).await;
    for frame in [
        json!({"type":"ban","id":1,"room":"lobby","user":"bob","reason":"spam"}),
        json!({"type":"mute","id":2,"room":"lobby","user":"alice","minutes":60}),
        json!({"type":"topic","id":3,"room":"lobby","topic":"be kind"}),
        json!({"type":"slow_mode","id":4,"room":"lobby","seconds":30}),
    ] {
        say(&mut carol, frame).await;
    }
    for id in 1..=4 {
        let got = until(&mut carol, |f| match f {
            ServerFrame::Done { id, .. } => id.map(|i| i.0),
            ServerFrame::Error { message, .. } => panic!("refused: {message}"),
            _ => None,
        })
        .await;
        assert_eq!(got, id);
    }
    println!("ACKED");
    tokio::time::sleep(WAIT).await;
}

#[tokio::test]
async fn moderation_acked_before_a_kill_9_survives_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    child::run_until_acked_then_kill("child_moderates_then_waits", "MODCORE_CHILD_DB", &db, WAIT)
        .await;

    let hub = hub_on(&db).await;
    check_enforced(&hub).await;
    hub.shutdown().await;
}

#[tokio::test]
async fn a_timed_ban_that_ended_while_the_server_was_down_is_lifted_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let room = RoomName::parse("lobby", 64, 32).unwrap();
    let bob = UserName::parse("bob", 32).unwrap();
    {
        // A ban that ended a minute ago, and one for good, as a previous run stored them.
        let store = SqliteStore::open(&db, Durability::Full).unwrap();
        let ago = chrono::Utc::now() - chrono::Duration::minutes(1);
        store
            .save_moderation(&[
                ModerationChange::Ban {
                    room: room.clone(),
                    user: bob.clone(),
                    until: Some(ago),
                    holder: None,
                },
                ModerationChange::Ban {
                    room: room.clone(),
                    user: UserName::parse("eve", 32).unwrap(),
                    until: None,
                    holder: None,
                },
            ])
            .unwrap();
        store.close().unwrap();
    }
    let hub = hub_on(&db).await;
    // The driver has not run yet (one thread): this receiver sees its first timer.
    let mut events = hub.events();
    let event = tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("an event")
        .unwrap();
    assert!(
        matches!(
            &event,
            Event::Moderated { action: ModAction::Unban, user, by: None, reason: Some(r), .. }
                if user.as_str() == "bob" && r == "expired"
        ),
        "{event:?}"
    );
    let mut bob_in = user(&hub, "bob", Some(vec![])).await;
    say(&mut bob_in, json!({"type":"join","id":1,"room":"lobby"})).await;
    until(&mut bob_in, |f| match f {
        ServerFrame::Joined { .. } => Some(()),
        ServerFrame::Error { message, .. } => panic!("bob refused: {message}"),
        _ => None,
    })
    .await;
    hub.shutdown().await;
    // The file no longer holds bob's ban; eve's stays.
    let store = SqliteStore::open(&db, Durability::Full).unwrap();
    assert_eq!(
        store.load_moderation().unwrap(),
        [ModerationChange::Ban {
            room,
            user: UserName::parse("eve", 32).unwrap(),
            until: None,
            holder: None,
        }]
    );
}

#[test]
fn a_file_from_schema_version_1_migrates_and_keeps_its_messages() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    // Written by the example server of the release before moderation was stored.
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/schema-v1.db"),
        &db,
    )
    .unwrap();
    let version = |db: &Path| -> i64 {
        rusqlite::Connection::open(db)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(version(&db), 1);
    let store = SqliteStore::open(&db, Durability::Full).unwrap();
    assert_eq!(store.epoch(), "2e9cbf22f40de985", "the epoch is kept");
    let room = RoomName::parse("general", 64, 32).unwrap();
    let (messages, more) = store.page(&room, None, 10).unwrap();
    assert!(!more);
    let bodies: Vec<_> = messages.iter().map(|m| &*m.body).collect();
    assert_eq!(bodies, ["hello from version 1", "second"]);
    assert!(store.load_moderation().unwrap().is_empty());
    let topic = ModerationChange::Topic {
        room: room.clone(),
        topic: "migrated".into(),
    };
    store.save_moderation(std::slice::from_ref(&topic)).unwrap();
    assert_eq!(store.load_moderation().unwrap(), [topic]);
    store.close().unwrap();
    drop(store);
    assert_eq!(version(&db), SCHEMA_VERSION);
}
