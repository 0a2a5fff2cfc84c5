//! `/metrics` of the real example server (its Prometheus exporter): the latency
//! histograms (frame handling, fan-out, commit), the refusal counters by reason (origin,
//! per-address cap, header timeout) and the close counters by reason move when a client
//! does the thing they count.

mod common;

use std::time::Duration;

use chat_core::RequestId;
use chat_core::protocol::{
    ClientFrame, EditRequest, HelloRequest, PROTOCOL_VERSION_1 as PROTOCOL_VERSION, SendRequest,
    ServerFrame,
};
use common::{ServerProcess, get, sample};
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

/// Upper bound for any one wait (not a speed assertion).
const WAIT: Duration = Duration::from_secs(30);

/// Reads `/metrics` until `series` is at least `at_least` (the server counts some things
/// just after the client sees them happen).
async fn wait_for(addr: &str, series: &str, at_least: f64) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let body = get(addr, "/metrics").await;
        if sample(&body, series) >= at_least {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never reached {at_least}:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn recv(ws: &mut common_ws::Ws) -> ServerFrame {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame")
        {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).expect("frame"),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

mod common_ws {
    pub type Ws = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_what_clients_do() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("chat.db");
    let server = ServerProcess::start([
        "--db".as_ref(),
        db.as_os_str(),
        "--durability".as_ref(),
        "normal".as_ref(),
        "--limit-loopback".as_ref(),
        "--max-connections-per-ip".as_ref(),
        "1".as_ref(),
        "--header-timeout-secs".as_ref(),
        "1".as_ref(),
    ]);
    let addr = server.addr.clone();
    let url = format!("ws://{addr}/ws");
    let before = get(&addr, "/metrics").await;
    assert!(before.starts_with("HTTP/1.1 200"), "{before}");
    for series in [
        "chat_frame_seconds_count",
        "chat_commit_seconds_count",
        "chat_fanout_seconds_count",
        r#"chat_refusals_total{reason="origin"}"#,
        r#"chat_refusals_total{reason="ip_cap"}"#,
        r#"chat_refusals_total{reason="header_timeout"}"#,
        r#"chat_ws_closes_total{reason="peer_closed"}"#,
    ] {
        assert_eq!(sample(&before, series), 0.0, "{series} before anything");
    }

    // A cross-site page: 403, counted by reason.
    let mut request = url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }

    // A client posts a message: a frame handled, committed, fanned out.
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("upgrade");
    let hello = ClientFrame::Hello(HelloRequest {
        id: None,
        version: PROTOCOL_VERSION,
        name: "alice".into(),
        token: None,
        rooms: None,
    });
    ws.send(Message::text(serde_json::to_string(&hello).unwrap()))
        .await
        .unwrap();
    let post = ClientFrame::Send(SendRequest {
        id: Some(RequestId(1)),
        room: Some("general".into()),
        to: None,
        body: "counted".into(),
        client_id: None,
        reply_to: None,
    });
    ws.send(Message::text(serde_json::to_string(&post).unwrap()))
        .await
        .unwrap();
    let seq = loop {
        if let ServerFrame::Ack { seq, .. } = recv(&mut ws).await {
            break seq;
        }
    };
    // An edit of it: a change, counted as one, not as a message.
    let edit = ClientFrame::Edit(EditRequest {
        id: Some(RequestId(2)),
        room: "general".into(),
        seq,
        body: "counted, edited".into(),
        client_id: None,
    });
    ws.send(Message::text(serde_json::to_string(&edit).unwrap()))
        .await
        .unwrap();
    while !matches!(
        recv(&mut ws).await,
        ServerFrame::Ack {
            id: Some(RequestId(2)),
            ..
        }
    ) {}
    let counted = wait_for(&addr, r#"chat_changes_total{kind="edit"}"#, 1.0).await;
    assert_eq!(sample(&counted, "chat_messages_total"), 1.0, "{counted}");
    // Three frames handled (hello, send, edit): one in 16 is timed, the first included.
    assert_eq!(
        sample(&counted, "chat_frame_seconds_count"),
        1.0,
        "{counted}"
    );
    assert_eq!(
        sample(&counted, r#"chat_changes_total{kind="edit"}"#),
        1.0,
        "{counted}"
    );

    // A second connection from the same address: over the per-address cap of 1.
    match tokio_tungstenite::connect_async(&url).await {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 429),
        other => panic!("expected 429, got {other:?}"),
    }

    // A socket that sends no request head is dropped after the 1 s header timeout.
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(WAIT, silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "dropped: {read:?}");

    // The client leaves with a close handshake.
    ws.send(Message::Close(None)).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}

    let after = wait_for(&addr, r#"chat_ws_closes_total{reason="peer_closed"}"#, 1.0).await;
    let after = if sample(&after, r#"chat_refusals_total{reason="header_timeout"}"#) < 1.0 {
        wait_for(
            &addr,
            r#"chat_refusals_total{reason="header_timeout"}"#,
            1.0,
        )
        .await
    } else {
        after
    };
    for series in [
        r#"chat_refusals_total{reason="origin"}"#,
        r#"chat_refusals_total{reason="ip_cap"}"#,
        r#"chat_refusals_total{reason="header_timeout"}"#,
    ] {
        assert_eq!(sample(&after, series), 1.0, "{series}:\n{after}");
    }
    for series in [
        "chat_frame_seconds_count",
        "chat_commit_seconds_count",
        "chat_fanout_seconds_count",
    ] {
        assert!(sample(&after, series) >= 1.0, "{series}:\n{after}");
    }
    // Histograms with buckets, not summaries: a frame's handling is under 10 s.
    assert!(
        sample(&after, r#"chat_frame_seconds_bucket{le="10"}"#) >= 1.0,
        "{after}"
    );
    drop(server);
}

/// The memory figures: jemalloc's statistics (the example server's allocator) are
/// exported and consistent, and `chat_ws_buffer_bytes` counts what a connection's own
/// buffers hold: a fragmented message in progress, given back once it is complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_figures_on_metrics() {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    let server = ServerProcess::start(["--db", ":memory:"]);
    let addr = server.addr.clone();
    let body = get(&addr, "/metrics").await;
    let allocated = sample(&body, "jemalloc_allocated_bytes");
    let active = sample(&body, "jemalloc_active_bytes");
    let resident = sample(&body, "jemalloc_resident_bytes");
    assert!(allocated > 0.0, "jemalloc_allocated_bytes:\n{body}");
    assert!(
        allocated <= active && active <= resident,
        "allocated {allocated} <= active {active} <= resident {resident}"
    );
    assert!(
        body.lines()
            .any(|l| l.starts_with("jemalloc_retained_bytes ")),
        "{body}"
    );
    assert!(
        body.lines().any(|l| l == "chat_ws_buffer_bytes 0"),
        "no connection, no buffer:\n{body}"
    );
    // The allocator runs as the example server configures it: one arena, and a thread
    // that returns freed pages while the server is idle.
    assert_eq!(sample(&body, "jemalloc_arenas"), 1.0, "{body}");
    assert_eq!(sample(&body, "jemalloc_background_thread"), 1.0, "{body}");

    // 40 KiB of a text message whose end has not come: the server must hold it.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .expect("upgrade");
    let head = format!(
        r#"{{"type":"hello","version":{PROTOCOL_VERSION},"name":"{}"#,
        "a".repeat(40 * 1024)
    );
    ws.send(Message::Frame(Frame::message(
        head.into_bytes(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .expect("first fragment");
    wait_for(&addr, "chat_ws_buffer_bytes", 40.0 * 1024.0).await;
    // The rest: the message is complete (and refused: the name is far too long), and
    // the buffers are given back.
    ws.send(Message::Frame(Frame::message(
        &br#""}"#[..],
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .expect("last fragment");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let body = get(&addr, "/metrics").await;
        let held = sample(&body, "chat_ws_buffer_bytes");
        if held < 4096.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the connection kept {held} bytes of buffers after its message"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
