//! Heartbeat and idle timeout, with short real intervals (the waits are for frames and
//! events, never sleeps, and nothing asserts how fast anything happened).

mod common;

use std::time::Duration;

use chat_axum::RouterOptions;
use chat_core::runtime::HubConfig;
use chat_core::{
    Event,
    protocol::{ClientFrame, ServerFrame},
};
use common::{End, TestServer, WAIT, wait_event};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Error, Message};

fn short_heartbeat() -> RouterOptions {
    RouterOptions {
        ping_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(600),
        close_timeout: Duration::from_millis(300),
        ..RouterOptions::default()
    }
}

/// A client that reads answers pings (tungstenite pongs by itself), and that keeps an
/// otherwise silent connection open well past the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_answers_pings_stays_connected() {
    let server = TestServer::with(HubConfig::default(), short_heartbeat()).await;
    let mut alice = server.user("alice").await;
    // Pings come at most every 100 ms, so 20 of them span more than three idle timeouts
    // during which alice sent nothing but pongs.
    let mut pings = 0;
    while pings < 20 {
        match alice.next_message().await {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("expected only pings on a quiet connection, got {other:?}"),
        }
    }
    alice
        .send(&ClientFrame::Rooms {
            id: Some(chat_core::RequestId(9)),
        })
        .await;
    assert!(matches!(
        alice.recv().await,
        ServerFrame::Rooms {
            id: Some(chat_core::RequestId(9)),
            ..
        }
    ));
    server.stop_with(vec![alice]).await;
}

/// A raw TCP client completes the upgrade and then never writes: no hello, no pong, no
/// close reply. The server sends pings, then close 1001 "idle timeout", and after the
/// close timeout drops the TCP connection; the session is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_after_the_idle_timeout() {
    let server = TestServer::with(HubConfig::default(), short_heartbeat()).await;
    let mut events = server.hub.events();
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut bytes = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut bytes))
        .await
        .expect("the server ends the connection")
        .expect("read");
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP response");
    let head = String::from_utf8_lossy(&bytes[..end]);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");

    // Server frames are unmasked; control frames have short payloads.
    let mut frames = Vec::new();
    let mut rest = &bytes[end + 4..];
    while !rest.is_empty() {
        assert!(rest.len() >= 2, "truncated frame");
        let (op, len) = (rest[0] & 0x0f, usize::from(rest[1] & 0x7f));
        assert_eq!(rest[1] & 0x80, 0, "server frames are not masked");
        assert!(len < 126 && rest.len() >= 2 + len, "short control frame");
        frames.push((op, rest[2..2 + len].to_vec()));
        rest = &rest[2 + len..];
    }
    let (close, pings) = frames.split_last().expect("some frames");
    assert!(!pings.is_empty(), "the server pinged first");
    assert!(pings.iter().all(|(op, _)| *op == 0x9), "{pings:?}");
    assert_eq!(close.0, 0x8, "the last frame is a close");
    assert_eq!(u16::from_be_bytes([close.1[0], close.1[1]]), 1001);
    assert_eq!(&close.1[2..], b"idle timeout");

    wait_event(&mut events, "the silent session closed", |e| {
        matches!(e, Event::SessionClosed { user: None, .. }).then_some(())
    })
    .await;
    server.stop().await.expect("clean stop");
}

/// A WebSocket client that said hello and then stops reading (so it never pongs) is
/// closed the same way, and its connection task ends without its cooperation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_after_the_idle_timeout() {
    let server = TestServer::with(HubConfig::default(), short_heartbeat()).await;
    let mut events = server.hub.events();
    let mut alice = server.user("alice").await;
    let session = alice.session();
    let reason = common::wait_session_closed(&mut events, session).await;
    assert_eq!(reason, None, "closed by the adapter, not by a core policy");
    // The only connection's task finishes although alice still holds her socket.
    server.tracker.close();
    tokio::time::timeout(WAIT, server.tracker.wait())
        .await
        .expect("the idle connection's task ends");
    // Reading now: pings, then the close frame; or, because tungstenite answers the
    // buffered pings first and the server has already dropped the socket, a write error.
    match alice.read_to_end().await {
        (frames, End::Close(Some(c))) => {
            assert!(frames.is_empty(), "{frames:?}");
            assert_eq!((c.code, c.reason.as_str()), (1001, "idle timeout"));
        }
        (frames, End::Gone(Some(Error::Io(e)))) => {
            assert!(frames.is_empty(), "{frames:?}");
            assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ),
                "{e}"
            );
        }
        other => panic!("expected close 1001 or a dropped socket, got {other:?}"),
    }
    server.stop().await.expect("clean stop");
}
