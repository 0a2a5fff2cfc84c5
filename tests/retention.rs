//! Retention and erasure in the real example server on an SQLite file:
//! `--retain-messages` keeps the file to the newest entries of each room (history says
//! the gap), and the admin port's `POST /erase` leaves tombstones and none of the user's
//! text in the file.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use chat_core::protocol::{EntryKind, ServerFrame};
use common::ServerProcess;
use futures::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Ws;

use common::Socket;

/// Upper bound for any one wait (not a speed assertion).
const WAIT: Duration = Duration::from_secs(30);
const ADMIN_TOKEN: &str = "retention-test-admin-token";

fn start_server(db: &Path, admin: &str) -> ServerProcess {
    let mut args: Vec<std::ffi::OsString> = ["--durability", "full", "--db"]
        .into_iter()
        .map(Into::into)
        .collect();
    args.push(db.into());
    args.extend(
        [
            "--send-burst",
            "100000",
            "--send-rate",
            "100000",
            "--retain-messages",
            "10",
            "--admin-addr",
            admin,
            "--admin-token",
            ADMIN_TOKEN,
        ]
        .map(Into::into),
    );
    ServerProcess::start(args)
}

async fn until<T>(ws: &mut Socket, pick: impl FnMut(ServerFrame) -> Option<T>) -> T {
    common::until_frame(ws, WAIT, pick).await
}

async fn connect(addr: &str, name: &str) -> Socket {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .expect("connect");
    let hello = json!({"type":"hello","version":2,"name":name,"rooms":[{"room":"general"}]});
    ws.send(Ws::text(hello.to_string())).await.unwrap();
    until(&mut ws, |f| {
        matches!(f, ServerFrame::Joined { .. }).then_some(())
    })
    .await;
    ws
}

async fn say(ws: &mut Socket, frame: Value) {
    ws.send(Ws::text(frame.to_string())).await.unwrap();
}

fn file_holds(db: &Path, text: &str) -> bool {
    let wal = db.with_extension("db-wal");
    [db, wal.as_path()].iter().any(|p| {
        std::fs::read(p).is_ok_and(|b| b.windows(text.len()).any(|w| w == text.as_bytes()))
    })
}

#[tokio::test]
async fn retain_messages_bounds_the_file_and_post_erase_leaves_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let admin = {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        format!("127.0.0.1:{port}")
    };
    let server = start_server(&db, &admin);
    let mut alice = connect(&server.addr, "alice").await;
    let mut bob = connect(&server.addr, "bob").await;
    for i in 1..=30 {
        common::send_acked(
            &mut alice,
            WAIT,
            json!({"type":"send","id":i,"room":"general","body":format!("alice secret {i}")}),
        )
        .await;
    }
    say(
        &mut bob,
        json!({"type":"send","id":1,"room":"general","body":"bob stays"}),
    )
    .await;
    until(&mut bob, |f| {
        matches!(f, ServerFrame::Ack { .. }).then_some(())
    })
    .await;

    // The store prunes in the background: the newest page comes to say the gap.
    let deadline = tokio::time::Instant::now() + WAIT;
    let (seqs, first_seq) = loop {
        say(
            &mut bob,
            json!({"type":"history","id":7,"room":"general","limit":100}),
        )
        .await;
        let page = until(&mut bob, |f| match f {
            ServerFrame::History {
                messages,
                gap,
                first_seq,
                has_more,
                ..
            } => Some((messages, gap, first_seq, has_more)),
            _ => None,
        })
        .await;
        // Wait for the step that pruned all it will (an earlier one may have run
        // while the messages were coming).
        if page.1 && page.2.map(|s| s.0) == Some(22) {
            assert!(!page.3, "nothing more to page");
            break (page.0.iter().map(|m| m.seq.0).collect::<Vec<_>>(), page.2);
        }
        assert!(tokio::time::Instant::now() < deadline, "never pruned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(seqs, (22..=31).collect::<Vec<_>>());
    assert_eq!(first_seq.map(|s| s.0), Some(22));

    let answer = common::admin_post(&admin, ADMIN_TOKEN, "/erase", "user=alice").await;
    assert!(answer.contains("erased in 1 rooms"), "{answer}");
    let erase = until(&mut bob, |f| match f {
        ServerFrame::Change(m) if m.kind == EntryKind::Erase => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(erase.user.as_str(), "alice");
    let refused = common::admin_post(&admin, ADMIN_TOKEN, "/erase", "user=").await;
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    drop((alice, bob));

    server.signal("-TERM");
    assert!(server.wait().success());
    for i in 1..=30 {
        let secret = format!("alice secret {i}");
        assert!(!file_holds(&db, &secret), "{secret:?} is still in the file");
    }
    let conn = rusqlite::Connection::open(&db).unwrap();
    let rows: Vec<(i64, String, String, bool)> = conn
        .prepare("SELECT seq, user, body, deleted FROM messages ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(rows.len() <= 11, "bounded: {} rows", rows.len());
    for (seq, user, body, deleted) in &rows {
        if user == "alice" && *seq <= 30 {
            assert!(*deleted && body.is_empty(), "#{seq} is a tombstone");
        }
    }
    assert!(rows.iter().any(|r| r.2 == "bob stays"));
}
