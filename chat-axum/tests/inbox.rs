//! A full hub inbox is backpressure on the sender's socket, not on its writer: a
//! connection waiting for room in the inbox still writes out what its session is sent,
//! so a busy sender that reads normally is never closed as a slow consumer for the
//! engine's own queue.

mod common;

use chat_axum::RouterOptions;
use chat_core::protocol::SendRequest;
use chat_core::runtime::HubConfig;
use chat_core::{
    Config, Rate,
    protocol::{ClientFrame, ServerFrame},
};
use common::{TestServer, WAIT};
use futures::{SinkExt, StreamExt};
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
