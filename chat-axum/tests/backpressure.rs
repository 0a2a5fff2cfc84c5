//! Backpressure: a consumer that never reads fills its bounded queue and is closed as a
//! slow consumer; fifty normal readers in the same room get every message; the slow
//! one resumes without a hole; a consumer that never reads again does not keep its
//! connection task alive.

mod common;

use std::time::Duration;

use chat_axum::RouterOptions;
use chat_core::protocol::JoinSpec;
use chat_core::runtime::{Hub, HubConfig};
use chat_core::{CloseReason, Seq, protocol::ServerFrame};
use common::{Client, End, TestServer, WAIT, wait_session_closed};
use tokio::sync::watch;
use tokio_tungstenite::MaybeTlsStream;

const READERS: usize = 50;
/// How far the publisher may run ahead of the slowest normal reader. Well below the
/// queue size, so a normal reader that keeps reading can never be taken for slow.
const WINDOW: u64 = 4;
const QUEUE: usize = 16;
const BODY: usize = 4000;

fn config() -> HubConfig {
    HubConfig {
        outbound_queue: QUEUE,
        ..HubConfig::default()
    }
}

/// A client whose socket has a tiny receive buffer, so that when it stops reading the
/// server's writes back up after little data.
async fn tiny_buffer_client(server: &TestServer) -> Client {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let tcp = socket.connect(server.addr).await.expect("connect");
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(server.url(), MaybeTlsStream::Plain(tcp)),
    )
    .await
    .expect("upgrade in time")
    .expect("upgrade");
    Client::from_ws(ws)
}

#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    joins: usize,
    seq: u64,
}

/// Reads until the message with `last` body; checks messages arrive as 1, 2, 3, …
async fn reader(mut c: Client, progress: watch::Sender<Progress>) -> (Client, Vec<u64>) {
    let mut seqs = Vec::new();
    loop {
        match c.recv().await {
            ServerFrame::Message(m) => {
                assert_eq!(
                    m.seq,
                    Seq(seqs.len() as u64 + 1),
                    "{}: every message once, in order",
                    c.user
                );
                seqs.push(m.seq.0);
                progress.send_modify(|p| p.seq = m.seq.0);
                if &*m.body == "last" {
                    return (c, seqs);
                }
            }
            ServerFrame::UserJoined { .. } => progress.send_modify(|p| p.joins += 1),
            ServerFrame::UserLeft { .. } => {}
            other => panic!("{}: unexpected frame {other:?}", c.user),
        }
    }
}

async fn wait_all(
    progress: &[watch::Receiver<Progress>],
    what: &str,
    ok: impl Fn(usize, Progress) -> bool,
) {
    for (i, p) in progress.iter().enumerate() {
        let mut p = p.clone();
        tokio::time::timeout(WAIT, p.wait_for(|x| ok(i, *x)))
            .await
            .unwrap_or_else(|_| panic!("reader {i} did not reach {what}"))
            .expect("reader alive");
    }
}

async fn publish(hub: &Hub, body: &str) -> Seq {
    hub.publish("general", "bot", body)
        .await
        .expect("publish")
        .seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_closed_and_fifty_readers_get_every_message() {
    // Once the core has closed the slow consumer, the writer lets go of a peer that
    // still reads nothing after `close_timeout`; this one starts reading right away and
    // must get its close frame, so give it ample time.
    let options = RouterOptions {
        close_timeout: WAIT,
        ..RouterOptions::default()
    };
    let server = TestServer::with(config(), options).await;

    // The slow consumer joins first and then never reads.
    let mut slow = tiny_buffer_client(&server).await;
    slow.hello("slow").await;
    slow.expect_joined("general").await;

    // Fifty readers, each reading from the moment it joined. Each waits until the earlier
    // ones have seen its predecessor's join notice, so no queue ever holds more than a
    // few frames for a reader that reads.
    let mut tasks = Vec::new();
    let mut progress = Vec::new();
    for i in 0..READERS {
        wait_all(&progress, "the previous join", |j, p| p.joins >= i - 1 - j).await;
        let c = server.user(&format!("reader{i}")).await;
        let (tx, rx) = watch::channel(Progress::default());
        progress.push(rx);
        tasks.push(tokio::spawn(reader(c, tx)));
    }
    wait_all(&progress, "all joins", |j, p| p.joins >= READERS - 1 - j).await;

    // Publish (a bot, so no send rate limit applies) until the slow consumer is closed,
    // never more than WINDOW ahead of any normal reader.
    let body = "x".repeat(BODY);
    let mut seq = 0;
    while server.hub.stats().slow_consumers == 0 {
        assert!(seq < 20_000, "the slow consumer was never closed");
        wait_all(&progress, "the window", |_, p| p.seq + WINDOW > seq).await;
        seq = publish(&server.hub, &body).await.0;
    }
    let closed_at = seq;
    let slow_reader = tokio::spawn(async move {
        let result = slow.read_to_end().await;
        (slow, result)
    });
    // Delivery to everyone else goes on.
    for _ in 0..10 {
        wait_all(&progress, "the window", |_, p| p.seq + WINDOW > seq).await;
        seq = publish(&server.hub, &body).await.0;
    }
    let last = publish(&server.hub, "last").await.0;

    let mut readers = Vec::new();
    for task in tasks {
        let (c, seqs) = task.await.expect("reader task");
        assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "{}", c.user);
        readers.push(c);
    }
    assert_eq!(
        server.hub.stats().slow_consumers,
        1,
        "only the one that never read was closed"
    );
    eprintln!("slow consumer closed after {closed_at} messages of {BODY} bytes");

    // The slow consumer read at last: what was queued before the close, in order with no
    // gap, then close 1013 "slow consumer".
    let (mut slow, (frames, end)) = slow_reader.await.expect("slow reader task");
    let got: Vec<u64> = frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Message(m) => Some(m.seq.0),
            _ => None,
        })
        .collect();
    assert_eq!(got, (1..=got.len() as u64).collect::<Vec<_>>());
    assert!((got.len() as u64) < closed_at, "it did not get everything");
    match end {
        End::Close(Some(c)) => {
            assert_eq!((c.code, c.reason.as_str()), (1013, "slow consumer"));
        }
        other => panic!("expected close 1013, got {other:?}"),
    }
    slow.finish_close().await;

    // It reconnects and resumes from its last seq: exactly the rest, no hole.
    let seen = got.last().copied().unwrap_or(0);
    let mut again = server.client().await;
    again.token = slow.token.clone();
    again
        .hello_with(
            "slow",
            Some(vec![JoinSpec {
                room: "general".into(),
                since: Some(Seq(seen)),
            }]),
        )
        .await;
    let joined = again.expect_joined("general").await;
    assert!(
        !joined.gap,
        "the history window still holds the missed messages"
    );
    let rest: Vec<u64> = joined.messages.iter().map(|m| m.seq.0).collect();
    assert_eq!(rest, (seen + 1..=last).collect::<Vec<_>>());

    readers.push(again);
    server.stop_with(readers).await;
}

/// A consumer that never reads again, with the server still running: after the core
/// closes it as slow, its connection task ends without the peer's help (it cannot even
/// take a close frame), so a stuck peer holds no task and no memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_never_reads_does_not_keep_its_task_alive() {
    // The idle timeout stays at its default (a minute), so only the slow-consumer close
    // can end this connection within the test's wait.
    let options = RouterOptions {
        close_timeout: Duration::from_millis(500),
        ..RouterOptions::default()
    };
    // Large frames fill the socket buffers (a few MiB on loopback) after some dozens of
    // messages; the queue then holds 15 MiB more, so when it overflows the writer has
    // long been stuck in a write that will never complete.
    let mut config = config();
    config.core.max_body_bytes = 60 * 1024;
    config.outbound_queue = 256;
    let server = TestServer::with(config, options).await;
    let mut events = server.hub.events();
    let mut slow = tiny_buffer_client(&server).await;
    slow.hello("slow").await;
    slow.expect_joined("general").await;
    let session = slow.session();

    let body = "x".repeat(60 * 1024);
    let mut n = 0;
    while server.hub.stats().slow_consumers == 0 {
        assert!(n < 20_000, "the slow consumer was never closed");
        n = publish(&server.hub, &body).await.0;
    }
    assert_eq!(
        wait_session_closed(&mut events, session).await,
        Some(CloseReason::SlowConsumer)
    );
    server.tracker.close();
    tokio::time::timeout(WAIT, server.tracker.wait())
        .await
        .expect("the stuck connection's task ends although its peer never reads");
    drop(slow);
    let tracker = server.tracker.clone();
    server.stop().await.expect("clean stop");
    assert!(tracker.is_empty());
}
