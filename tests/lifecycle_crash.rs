//! Messages live on through a crash: the real example server on an SQLite file is
//! killed (`kill -9`) in the middle of a stream of edits and reactions; after a restart on
//! the same file the history shows the message in a state that has every acknowledged
//! change (the body of the last acknowledged edit or of a later one that was in flight,
//! every acknowledged reaction), and every acknowledged change entry at its seq.

mod common;

use std::path::Path;

use chat_core::protocol::{EntryKind, ServerFrame};
use common::ServerProcess;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Ws;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn start_server(db: &Path) -> ServerProcess {
    let mut args: Vec<std::ffi::OsString> = ["--durability", "full", "--db"]
        .into_iter()
        .map(Into::into)
        .collect();
    args.push(db.into());
    args.extend(["--send-burst", "100000", "--send-rate", "100000"].map(Into::into));
    ServerProcess::start(args)
}

async fn read(ws: &mut Socket) -> Option<ServerFrame> {
    loop {
        match ws.next().await? {
            Ok(Ws::Text(t)) => return serde_json::from_str(&t).ok(),
            Ok(Ws::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

async fn connect(addr: &str, name: &str) -> Socket {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .expect("connect");
    let hello = json!({"type":"hello","version":2,"name":name,"rooms":[{"room":"general"}]});
    ws.send(Ws::text(hello.to_string())).await.unwrap();
    while !matches!(read(&mut ws).await, Some(ServerFrame::Joined { .. })) {}
    ws
}

/// Sends a frame and waits for its ack; the seq, or `None` if the server went away.
async fn acked(ws: &mut Socket, frame: Value) -> Option<u64> {
    let id = frame["id"].as_u64();
    ws.send(Ws::text(frame.to_string())).await.ok()?;
    loop {
        match read(ws).await? {
            ServerFrame::Ack { id: got, seq, .. } if got.map(|i| i.0) == id => return Some(seq.0),
            ServerFrame::Error { code, message, .. } => panic!("{code:?}: {message}"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_a_stream_of_edits_loses_no_acknowledged_change() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let mut server = start_server(&db);
    let mut ws = connect(&server.addr, "alice").await;
    let target = acked(
        &mut ws,
        json!({"type":"send","id":1,"room":"general","body":"v0"}),
    )
    .await
    .unwrap();
    // Edits and reactions, each waiting for its ack; at the kill point one more is sent
    // and the server killed before its ack can be read.
    let mut acked_edits: Vec<(u64, usize)> = Vec::new();
    let mut acked_reactions: Vec<u64> = Vec::new();
    const KILL_AT: usize = 40;
    for i in 1..=KILL_AT {
        let edit =
            json!({"type":"edit","id":10 + i,"room":"general","seq":target,"body":format!("v{i}")});
        if i == KILL_AT {
            ws.send(Ws::text(edit.to_string())).await.unwrap();
            server.crash();
            break;
        }
        let seq = acked(&mut ws, edit).await.expect("server up");
        acked_edits.push((seq, i));
        if i % 10 == 0 {
            let react = json!({"type":"react","id":1000 + i,"room":"general","seq":target,"emoji":"👍","on":i % 20 == 0});
            acked_reactions.push(acked(&mut ws, react).await.expect("server up"));
        }
    }
    drop(ws);

    let server = start_server(&db);
    let mut ws = connect(&server.addr, "bob").await;
    ws.send(Ws::text(
        json!({"type":"history","id":2,"room":"general","limit":1000}).to_string(),
    ))
    .await
    .unwrap();
    let messages = loop {
        if let Some(ServerFrame::History { messages, .. }) = read(&mut ws).await {
            break messages;
        }
    };
    let message = messages.iter().find(|m| m.seq.0 == target).unwrap();
    let (_, last) = acked_edits.last().copied().unwrap();
    let version: usize = message.body.trim_start_matches('v').parse().unwrap();
    assert!(
        version >= last,
        "the message shows v{version}; v{last} was acknowledged"
    );
    assert!(message.edited_at.is_some());
    // Reactions at edits 10 (off: a no-op), 20 (on) and 30 (off): none is left.
    assert!(message.reactions.is_empty(), "{message:?}");
    for (seq, i) in &acked_edits {
        let entry = messages.iter().find(|m| m.seq.0 == *seq).unwrap();
        assert_eq!(
            (entry.kind, &*entry.body),
            (EntryKind::Edit, format!("v{i}").as_str())
        );
    }
    for seq in &acked_reactions {
        let entry = messages.iter().find(|m| m.seq.0 == *seq).unwrap();
        assert_eq!(entry.kind, EntryKind::React);
    }
}
