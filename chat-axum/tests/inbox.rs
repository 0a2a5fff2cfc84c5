//! A full hub inbox is backpressure on the sender's socket, not on its writer: a
//! connection waiting for room in the inbox still writes out what its session is sent,
//! so a busy sender that reads normally is never closed as a slow consumer for the
//! engine's own queue.

mod common;

use chat_axum::RouterOptions;
use chat_core::protocol::SendRequest;
use chat_core::runtime::{Durability, HubConfig, SqliteStore, Store};
use chat_core::{
    Config, Rate,
    protocol::{ClientFrame, ServerFrame},
};
use common::{TestServer, WAIT};
use futures::{SinkExt, StreamExt};
use std::sync::Arc;
use tokio_tungstenite::tungstenite::Message;

const SENDS: u64 = 1000;
/// Frames written per flush: each burst arrives in a few reads, many frames per read.
const BURST: u64 = 100;
/// Each send is answered with two frames (its ack and the message itself), so a queue
/// this short overflows after a few sends unless the writer drains it as they come.
const QUEUE: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_sender_that_reads_is_not_a_slow_consumer() {
    let loose = Rate {
        burst: 100_000,
        per_second: 100_000,
    };
    let config = HubConfig {
        core: Config {
            send_rate: loose,
            frame_rate: loose,
            ..Config::default()
        },
        outbound_queue: QUEUE,
        // One input in the driver's inbox at a time: the sender waits for room nearly
        // on every frame.
        inbox: 1,
        ..HubConfig::default()
    };
    let server = TestServer::with(config, RouterOptions::default()).await;
    let client = server.user("flood").await;
    let (mut sink, mut stream) = client.ws.split();

    // Reads as fast as it can, concurrently with the sends.
    let reader = tokio::spawn(async move {
        let (mut acks, mut messages) = (0, 0);
        while acks < SENDS || messages < SENDS {
            let next = tokio::time::timeout(WAIT, stream.next()).await;
            let text = match next {
                Ok(Some(Ok(Message::Text(t)))) => t,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                other => panic!("after {acks} acks and {messages} messages of {SENDS}: {other:?}"),
            };
            match serde_json::from_str(&text).expect("a server frame") {
                ServerFrame::Ack { id, .. } => {
                    acks += 1;
                    assert_eq!(id, Some(chat_core::RequestId(acks)), "acks in order");
                }
                ServerFrame::Message(m) => {
                    messages += 1;
                    assert_eq!(&*m.body, format!("m{messages}"), "messages in order");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        stream
    });

    for burst in 0..SENDS / BURST {
        for i in burst * BURST + 1..=(burst + 1) * BURST {
            let frame = ClientFrame::Send(SendRequest {
                id: Some(chat_core::RequestId(i)),
                room: Some("general".into()),
                to: None,
                body: format!("m{i}"),
                client_id: None,
                reply_to: None,
            });
            let text = serde_json::to_string(&frame).expect("serialize");
            sink.feed(Message::text(text)).await.expect("queue a send");
        }
        tokio::time::timeout(WAIT, sink.flush())
            .await
            .expect("the server reads on")
            .expect("send a burst");
    }
    let stream = tokio::time::timeout(WAIT * 2, reader)
        .await
        .expect("every answer in time")
        .expect("no reader panic");

    assert_eq!(server.hub.stats().slow_consumers, 0);
    let client = common::Client::from_ws(sink.reunite(stream).expect("one socket"));
    server.stop_with(vec![client]).await;
}

/// A peer that sends a long burst and starts reading only a second later (a client busy
/// elsewhere, a phone waking up) fills its socket with its own answers: the server stops
/// reading its input until the answers are written, and the peer is slowed, not closed.
/// Counting only the queued frames was not enough: the inputs already in the hub's inbox
/// (and, with a store, the sends waiting for their commit) were answered together, and
/// the peer was closed as a slow consumer although it reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_sender_that_reads_late_is_slowed_not_closed() {
    burst_then_read_late(None).await;
}

/// The same with a store (the example server's default): each send waits for its group
/// commit before it is acked and delivered, so many more are handed over before any is
/// answered, unless the sends waiting for their commit count too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_sender_that_reads_late_is_slowed_not_closed_with_a_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path().join("chat.db"), Durability::Full).expect("store");
    burst_then_read_late(Some(Arc::new(store))).await;
}

async fn burst_then_read_late(store: Option<Arc<dyn Store>>) {
    const N: u64 = 20_000;
    let loose = Rate {
        burst: 1_000_000,
        per_second: 1_000_000,
    };
    let config = HubConfig {
        core: Config {
            send_rate: loose,
            frame_rate: loose,
            ..Config::default()
        },
        outbound_queue: 64,
        store,
        ..HubConfig::default()
    };
    let server = TestServer::with(config, RouterOptions::default()).await;
    // A small receive buffer, so that the server's writes back up while nobody reads.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let tcp = socket.connect(server.addr).await.expect("connect");
    let url = format!("ws://{}/ws", server.addr);
    let tcp = tokio_tungstenite::MaybeTlsStream::Plain(tcp);
    let (ws, _) = tokio_tungstenite::client_async(url, tcp)
        .await
        .expect("upgrade");
    let mut client = common::Client::from_ws(ws);
    client.hello("late").await;
    client.expect_joined("general").await;
    let (mut sink, mut stream) = client.ws.split();

    let writer = tokio::spawn(async move {
        for i in 1..=N {
            let frame = ClientFrame::Send(SendRequest {
                id: Some(chat_core::RequestId(i)),
                room: Some("general".into()),
                to: None,
                body: format!("m{i}"),
                client_id: None,
                reply_to: None,
            });
            let text = serde_json::to_string(&frame).expect("serialize");
            sink.feed(Message::text(text)).await.expect("queue a send");
        }
        sink.flush().await.expect("send the burst");
        sink
    });
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let (mut acks, mut messages) = (0, 0);
    while acks < N || messages < N {
        let next = tokio::time::timeout(WAIT, stream.next()).await;
        let text = match next {
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            other => panic!("after {acks} acks and {messages} messages of {N}: {other:?}"),
        };
        match serde_json::from_str(&text).expect("a server frame") {
            ServerFrame::Ack { .. } => acks += 1,
            ServerFrame::Message(_) => messages += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    let sink = tokio::time::timeout(WAIT, writer)
        .await
        .expect("the burst was taken")
        .expect("no writer panic");
    assert_eq!(server.hub.stats().slow_consumers, 0);
    let client = common::Client::from_ws(sink.reunite(stream).expect("one socket"));
    server.stop_with(vec![client]).await;
}
