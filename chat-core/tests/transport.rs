//! The transport API is enough to write a transport, and is not tied to chat-axum: a
//! second WebSocket adapter, over tokio-tungstenite and built only on
//! `chat_core::runtime::transport`, serves real clients on real sockets. Two clients
//! chat, bad frames get `bad_frame`, a full hub inbox stops the reading and not the
//! writing, and the engine's close reason reaches the client.
#![cfg(feature = "runtime")]
#![allow(clippy::disallowed_methods)] // an adapter spawns tasks and does I/O

mod common;

use std::time::Duration;

use chat_core::protocol::{ClientFrame, ErrorCode, HelloRequest, ServerFrame};
use chat_core::runtime::transport::{BatchLimit, Connection, Outbound, PeerFrame};
use chat_core::runtime::{Hub, HubConfig};
use chat_core::{Config, Rate, RequestId};
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

// ---- The adapter: everything a WebSocket transport needs, on the public API. ----

/// Accepts WebSocket connections and connects each to the hub, until the hub stops.
async fn serve(listener: TcpListener, hub: Hub) {
    while hub.is_running() {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let hub = hub.clone();
        tokio::spawn(async move {
            let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                return;
            };
            if let Ok(conn) = hub.connect().await {
                connection(ws, conn).await;
            }
        });
    }
}

/// One connection, one task. Writing comes first: whenever the session's queue holds
/// something it is written before anything more is read, and the peer is read only while
/// the hub's inbox has room (`waiting` is false), so a full inbox stops the reading but
/// never the writing.
async fn connection(ws: WebSocketStream<TcpStream>, conn: Connection) {
    let (mut sink, mut stream) = ws.split();
    let (mut inbound, mut outbox) = conn.split();
    let mut batch = Vec::new();
    let (mut waiting, mut closed) = (false, false);
    loop {
        tokio::select! {
            biased;
            n = outbox.recv_many(&mut batch, BatchLimit::default()), if !closed => {
                if n == 0 {
                    break; // the hub is gone
                }
                for item in batch.drain(..) {
                    let msg = match item {
                        Outbound::Frame(frame) => Message::text(frame.text()),
                        Outbound::Close(reason) => {
                            closed = true;
                            Message::Close(Some(CloseFrame {
                                code: reason.ws_code().into(),
                                reason: reason.as_str().into(),
                            }))
                        }
                    };
                    if sink.feed(msg).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
            ready = inbound.ready(), if waiting => {
                if ready.is_err() {
                    break; // the hub has stopped
                }
                waiting = false;
            }
            msg = stream.next(), if !waiting => {
                // After our close, read on only until the peer's close (or its end).
                let frame = match &msg {
                    Some(Ok(Message::Text(text))) => PeerFrame::Text(text.as_bytes()),
                    Some(Ok(Message::Binary(bytes))) => PeerFrame::Binary(bytes),
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                    Some(Ok(_)) => continue, // tungstenite answers pings itself
                };
                if !closed {
                    if inbound.start(frame).is_err() {
                        break;
                    }
                    waiting = true;
                }
            }
        }
    }
    inbound.disconnect().await;
}

// ---- The tests. ----

/// Bounds every wait: a hang becomes a failure with context. Not a speed assertion.
const WAIT: Duration = Duration::from_secs(20);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn start(config: HubConfig) -> (Hub, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}", listener.local_addr().expect("addr"));
    let hub = Hub::spawn(config).await.expect("hub starts");
    tokio::spawn(serve(listener, hub.clone()));
    (hub, url)
}

async fn client(url: &str) -> Ws {
    let connect = tokio_tungstenite::connect_async(url);
    let (ws, _) = tokio::time::timeout(WAIT, connect)
        .await
        .expect("connect in time")
        .expect("connect");
    ws
}

async fn send(ws: &mut Ws, frame: &ClientFrame) {
    let text = serde_json::to_string(frame).expect("serialize");
    ws.send(Message::text(text)).await.expect("send");
}

/// The next message: a server frame, or the close frame's code and reason.
async fn next(ws: &mut Ws) -> Result<ServerFrame, (u16, String)> {
    let msg = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("a frame in time")
        .expect("the stream is open")
        .expect("a message");
    match msg {
        Message::Text(text) => Ok(serde_json::from_str(&text).expect("a server frame")),
        Message::Close(Some(close)) => Err((close.code.into(), close.reason.to_string())),
        other => panic!("unexpected {other:?}"),
    }
}

async fn recv(ws: &mut Ws) -> ServerFrame {
    next(ws).await.expect("a frame, not a close")
}

/// Says hello as `name` and reads the welcome and the join of `general`.
async fn user(url: &str, name: &str) -> Ws {
    let mut ws = client(url).await;
    send(
        &mut ws,
        &ClientFrame::Hello(HelloRequest {
            id: None,
            version: chat_core::protocol::PROTOCOL_VERSION_1,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_chat_through_a_second_adapter() {
    let (hub, url) = start(HubConfig::default()).await;
    let mut alice = user(&url, "alice").await;
    let mut bob = user(&url, "bob").await;
    assert!(
        matches!(recv(&mut alice).await, ServerFrame::UserJoined { user, .. } if user.as_str() == "bob")
    );

    send(&mut alice, &common::say(7, "hello bob")).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(recv(&mut alice).await);
    }
    assert!(
        got.iter().any(|f| matches!(
            f,
            ServerFrame::Ack {
                id: Some(RequestId(7)),
                ..
            }
        )),
        "{got:?}"
    );
    match recv(&mut bob).await {
        ServerFrame::Message(m) => {
            assert_eq!((m.user.as_str(), &*m.body), ("alice", "hello bob"));
        }
        other => panic!("bob expected the message, got {other:?}"),
    }
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_binary_frames_get_bad_frame_errors() {
    let (hub, url) = start(HubConfig::default()).await;
    let mut mallory = user(&url, "mallory").await;
    mallory
        .send(Message::text(r#"{"type":"send","id":5,"body":42}"#))
        .await
        .unwrap();
    match recv(&mut mallory).await {
        ServerFrame::Error { code, id, .. } => {
            assert_eq!((code, id), (ErrorCode::BadFrame, Some(RequestId(5))));
        }
        other => panic!("expected bad_frame, got {other:?}"),
    }
    mallory
        .send(Message::binary(br#"{"type":"rooms"}"#.to_vec()))
        .await
        .unwrap();
    match recv(&mut mallory).await {
        ServerFrame::Error { code, message, .. } => {
            assert_eq!(code, ErrorCode::BadFrame);
            assert!(message.contains("binary"), "{message}");
        }
        other => panic!("expected bad_frame, got {other:?}"),
    }
    // Still a normal session.
    send(&mut mallory, &common::say(9, "still here")).await;
    assert!(matches!(
        recv(&mut mallory).await,
        ServerFrame::Ack {
            id: Some(RequestId(9)),
            ..
        } | ServerFrame::Message(_)
    ));
    hub.shutdown().await;
}

/// One place in the hub's inbox and eight in the session's queue: the connection waits
/// for room nearly on every frame, and each send is answered with two frames. A
/// connection whose reading ran ahead of its writing (reading on whenever the inbox has
/// room, as a reader and a writer joined in one task do) overflows the queue, and the
/// sender, which reads everything, is closed as a slow consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_inbox_stops_reading_but_not_writing() {
    const SENDS: u64 = 1000;
    const BURST: u64 = 100;
    let loose = Rate {
        burst: 100_000,
        per_second: 100_000,
    };
    let (hub, url) = start(HubConfig {
        core: Config {
            send_rate: loose,
            frame_rate: loose,
            ..Config::default()
        },
        outbound_queue: 8,
        inbox: 1,
        ..HubConfig::default()
    })
    .await;
    let (mut sink, mut stream) = user(&url, "flood").await.split();
    let reader = tokio::spawn(async move {
        let (mut acks, mut messages) = (0, 0);
        while acks < SENDS || messages < SENDS {
            let next = tokio::time::timeout(WAIT, stream.next()).await;
            let Ok(Some(Ok(Message::Text(text)))) = next else {
                panic!("after {acks} acks and {messages} messages: {next:?}");
            };
            match serde_json::from_str(&text).expect("a server frame") {
                ServerFrame::Ack { id, .. } => {
                    acks += 1;
                    assert_eq!(id, Some(RequestId(acks)), "acks in order");
                }
                ServerFrame::Message(m) => {
                    messages += 1;
                    assert_eq!(&*m.body, format!("m{messages}"), "messages in order");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    for burst in 0..SENDS / BURST {
        for i in burst * BURST + 1..=(burst + 1) * BURST {
            let text = serde_json::to_string(&common::say(i, &format!("m{i}"))).unwrap();
            sink.feed(Message::text(text)).await.expect("queue a send");
        }
        tokio::time::timeout(WAIT, sink.flush())
            .await
            .expect("the adapter reads on")
            .expect("send a burst");
    }
    tokio::time::timeout(WAIT * 2, reader)
        .await
        .expect("every answer in time")
        .expect("no reader panic");
    assert_eq!(hub.stats().slow_consumers, 0);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_close_reason_reaches_the_client() {
    let (hub, url) = start(HubConfig::default()).await;
    let mut alice = user(&url, "alice").await;
    hub.shutdown().await;
    assert!(matches!(
        recv(&mut alice).await,
        ServerFrame::Goodbye { .. }
    ));
    assert_eq!(
        next(&mut alice).await.unwrap_err(),
        (1012, "server shutting down".to_owned())
    );
}

/// A client that stops reading fills its queue and is closed as a slow consumer. The
/// queue is full then, yet when it reads at last it gets what was queued and then the
/// reason: the close needs no room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_learns_why_it_was_closed() {
    let (hub, url) = start(HubConfig {
        outbound_queue: 16,
        ..HubConfig::default()
    })
    .await;
    let addr = url.trim_start_matches("ws://").parse().expect("addr");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let tcp = socket.connect(addr).await.expect("connect");
    let (mut slow, _) = tokio_tungstenite::client_async(url.as_str(), MaybeTlsStream::Plain(tcp))
        .await
        .expect("upgrade");
    send(
        &mut slow,
        &ClientFrame::Hello(HelloRequest {
            id: None,
            version: chat_core::protocol::PROTOCOL_VERSION_1,
            name: "slow".into(),
            token: None,
            rooms: None,
        }),
    )
    .await;
    assert!(matches!(recv(&mut slow).await, ServerFrame::Welcome { .. }));
    assert!(matches!(recv(&mut slow).await, ServerFrame::Joined { .. }));

    // It reads nothing from now on.
    let body = "x".repeat(4000);
    let mut published = 0;
    while hub.stats().slow_consumers == 0 {
        assert!(published < 20_000, "the slow consumer was never closed");
        hub.publish("general", "bot", &body).await.expect("publish");
        published += 1;
    }
    let mut messages = 0;
    let close = loop {
        match next(&mut slow).await {
            Ok(ServerFrame::Message(m)) => {
                messages += 1;
                assert_eq!(m.seq.0, messages, "in order, no gap");
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(close) => break close,
        }
    };
    assert!(messages < published, "it did not get everything");
    assert_eq!(close, (1013, "slow consumer".to_owned()));
    hub.shutdown().await;
}

/// A session's queue is bounded in bytes as well as in frames: with room for 1,024
/// frames but only 64 KiB, a session that stops reading is closed as a slow consumer
/// after about sixteen 4,000-byte messages, and when it reads at last it gets what was
/// queued, in order, then the reason.
#[tokio::test]
async fn a_queue_is_bounded_in_bytes_as_well_as_in_frames() {
    let hub = Hub::spawn(HubConfig {
        outbound_queue: 1024,
        outbound_bytes: 64 << 10,
        ..HubConfig::default()
    })
    .await
    .expect("hub");
    let mut slow = hub.connect().await.expect("connect");
    slow.send(ClientFrame::Hello(HelloRequest {
        id: None,
        version: chat_core::protocol::PROTOCOL_VERSION_1,
        name: "slow".into(),
        token: None,
        rooms: None,
    }))
    .await
    .expect("hub runs");
    // It reads nothing from now on.
    let body = "x".repeat(4000);
    let mut published = 0;
    while hub.stats().slow_consumers == 0 {
        assert!(
            published < 200,
            "not closed after {published} messages: bounded in frames only"
        );
        let queued = hub.stats().frames_out;
        hub.publish("general", "bot", &body).await.expect("publish");
        published += 1;
        // A publish is answered before its frame is queued; with fan-out threads
        // (`CHAT_FANOUT_THREADS`) a thread queues it later, on its own time. Wait until
        // the frame is queued or the session closed, so that every publish finds the
        // previous one's outcome counted, with threads or without.
        let waited = tokio::time::timeout(WAIT, async {
            while hub.stats().frames_out == queued && hub.stats().slow_consumers == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        waited.await.expect("the frame is queued or refused");
    }
    // In lockstep the close is counted at the publish the queue refused (16 here, with
    // threads or without; before the wait above, threads let up to 29 publishes be
    // answered first). The margin is for the frame sizes; what the session got (below)
    // is the exact bound.
    assert!(published <= 16 + 4, "closed after {published} messages");
    let mut messages = 0;
    while let Some(frame) = slow.recv().await {
        match frame {
            ServerFrame::Message(m) => {
                messages += 1;
                assert_eq!(m.seq.0, messages, "in order, no gap");
            }
            ServerFrame::Welcome { .. } | ServerFrame::Joined { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!((10..=16).contains(&messages), "{messages} messages queued");
    assert_eq!(
        slow.close_reason(),
        Some(chat_core::CloseReason::SlowConsumer)
    );
    hub.shutdown().await;
}
