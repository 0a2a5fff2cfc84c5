//! SIGTERM with connected clients: the real example server binary tells every client
//! `goodbye`, closes each with 1012 (service restart), waits for its connections and
//! exits with status 0.

mod common;

use chat_core::RequestId;
use chat_core::protocol::{HelloRequest, SendRequest};
use std::time::Duration;

use chat_core::protocol::PROTOCOL_VERSION;
use chat_core::protocol::{ClientFrame, ServerFrame};
use common::ServerProcess;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// Upper bound for any one wait (not a speed assertion).
const WAIT: Duration = Duration::from_secs(30);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next(ws: &mut Ws) -> Option<Message> {
    match tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("a frame in time")
    {
        Some(Ok(m)) => Some(m),
        Some(Err(e)) => panic!("read error: {e}"),
        None => None,
    }
}

async fn recv(ws: &mut Ws) -> ServerFrame {
    loop {
        match next(ws).await {
            Some(Message::Text(t)) => return serde_json::from_str(&t).expect("server frame"),
            Some(Message::Ping(_) | Message::Pong(_)) => {}
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

async fn send(ws: &mut Ws, frame: &ClientFrame) {
    let text = serde_json::to_string(frame).expect("serializes");
    ws.send(Message::text(text)).await.expect("send");
}

async fn user(url: &str, name: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");
    send(
        &mut ws,
        &ClientFrame::Hello(HelloRequest {
            id: None,
            version: PROTOCOL_VERSION,
            name: name.into(),
            token: None,
            rooms: None,
        }),
    )
    .await;
    assert!(matches!(recv(&mut ws).await, ServerFrame::Welcome { .. }));
    assert!(matches!(recv(&mut ws).await, ServerFrame::Joined { .. }));
    ws
}

/// Reads to the close frame: returns the text frames before it and the close's code
/// and reason, after reading on until the stream ends (the close handshake completes).
async fn read_to_close(mut ws: Ws) -> (Vec<ServerFrame>, u16, String) {
    let mut frames = Vec::new();
    loop {
        match next(&mut ws).await {
            Some(Message::Text(t)) => frames.push(serde_json::from_str(&t).expect("frame")),
            Some(Message::Ping(_) | Message::Pong(_)) => {}
            Some(Message::Close(Some(c))) => {
                while next(&mut ws).await.is_some() {}
                return (frames, u16::from(c.code), c.reason.to_string());
            }
            other => panic!("expected frames then a close, got {other:?} after {frames:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_client_with_1012_and_exits_0() {
    let server = ServerProcess::start(["--db", ":memory:", "--drain-secs", "10"]);
    let url = format!("ws://{}/ws", server.addr);
    let mut alice = user(&url, "alice").await;
    let bob = user(&url, "bob").await;
    // One connected that never said hello.
    let (silent, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("upgrade");
    send(
        &mut alice,
        &ClientFrame::Send(SendRequest {
            id: Some(RequestId(1)),
            room: Some("general".into()),
            to: None,
            body: "before the restart".into(),
            client_id: None,
            reply_to: None,
        }),
    )
    .await;
    // The message is acknowledged before the signal: nothing is in flight.
    loop {
        if let ServerFrame::Ack {
            id: Some(RequestId(1)),
            ..
        } = recv(&mut alice).await
        {
            break;
        }
    }

    let readers: Vec<_> = [alice, bob, silent]
        .into_iter()
        .map(|ws| tokio::spawn(read_to_close(ws)))
        .collect();
    server.signal("-TERM");
    for reader in readers {
        let (frames, code, reason) = reader.await.expect("reader task");
        assert!(
            matches!(frames.last(), Some(ServerFrame::Goodbye { .. })),
            "goodbye before the close: {frames:?}"
        );
        assert_eq!((code, reason.as_str()), (1012, "server shutting down"));
    }
    let status = server.wait();
    assert!(
        status.success(),
        "graceful exit with status 0, got {status}"
    );
}
