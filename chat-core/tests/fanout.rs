//! `HubConfig::fanout_threads`: the frames are queued by several threads instead of the
//! driver, and a client cannot tell. Every session (spread over the threads by id) gets
//! every message of its room once, in seq order, and each sender its acks in order; a
//! reader that stops is closed as a slow consumer with no message missing before its
//! close; the counters add up; a shutdown still ends every session with its goodbye and
//! close. (The whole runtime suite also runs with `CHAT_FANOUT_THREADS=2`, scripts/test.)
#![cfg(feature = "runtime")]
#![allow(clippy::disallowed_methods)] // the test spawns its clients

mod common;

use std::time::Duration;

use chat_core::protocol::{ClientFrame, SendRequest, ServerFrame};
use chat_core::runtime::transport::Connection;
use chat_core::runtime::{Hub, HubConfig};
use chat_core::{CloseReason, RequestId};
use common::member;

/// Bounds every wait: a hang becomes a failure. Not a speed assertion.
const WAIT: Duration = Duration::from_secs(20);

fn config(threads: usize, queue: usize) -> HubConfig {
    HubConfig {
        core: common::unlimited(),
        outbound_queue: queue,
        fanout_threads: threads,
        ..HubConfig::default()
    }
}

async fn recv(c: &mut Connection) -> Option<ServerFrame> {
    tokio::time::timeout(WAIT, c.recv())
        .await
        .expect("a frame or the end in time")
}

fn say(id: u64, body: String) -> ClientFrame {
    ClientFrame::Send(SendRequest {
        id: Some(RequestId(id)),
        room: Some("general".into()),
        to: None,
        body,
        client_id: None,
        reply_to: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_session_gets_every_message_once_in_order_over_three_threads() {
    const MEMBERS: usize = 8;
    const SENDERS: usize = 3;
    const EACH: u64 = 60;
    let hub = Hub::spawn(config(3, 4096)).await.expect("hub starts");
    let mut members = Vec::new();
    for i in 0..MEMBERS {
        members.push(member(&hub, &format!("m{i}")).await);
    }
    let total = SENDERS as u64 * EACH;
    let mut readers = Vec::new();
    for (i, mut c) in members.into_iter().enumerate() {
        readers.push(tokio::spawn(async move {
            if i < SENDERS {
                // Sends interleaved with reading, as a client does.
                for n in 1..=EACH {
                    c.send(say(n, format!("s{i}-{n}"))).await.expect("send");
                }
            }
            let (mut seqs, mut acks) = (Vec::new(), Vec::new());
            while seqs.len() < total as usize || (i < SENDERS && acks.len() < EACH as usize) {
                match recv(&mut c).await.expect("open") {
                    ServerFrame::Message(m) => {
                        if i < SENDERS && m.user.as_str() == format!("m{i}") {
                            // The author's own message comes after its ack or before it,
                            // but never before the ack of an earlier send is owed.
                            assert!(
                                m.body.ends_with(&format!("-{}", acks.len() + 1))
                                    || m.body.ends_with(&format!("-{}", acks.len())),
                                "m{i}: own message {} after {} acks",
                                m.body,
                                acks.len()
                            );
                        }
                        seqs.push(m.seq.0);
                    }
                    ServerFrame::Ack { id, .. } => acks.push(id.expect("an id").0),
                    ServerFrame::UserJoined { .. } => {}
                    other => panic!("m{i}: unexpected {other:?}"),
                }
            }
            (i, seqs, acks, c)
        }));
    }
    let mut open = Vec::new();
    for r in readers {
        let (i, seqs, acks, c) = r.await.expect("no reader panic");
        let want: Vec<u64> = (1..=total).collect();
        assert_eq!(seqs, want, "m{i}: every message once, in seq order");
        if i < SENDERS {
            assert_eq!(acks, (1..=EACH).collect::<Vec<_>>(), "m{i}: acks in order");
        }
        open.push(c);
    }
    let stats = hub.stats();
    assert_eq!(stats.connections, MEMBERS as u64);
    assert!(
        stats.frames_out >= MEMBERS as u64 * total,
        "frames counted by the threads: {stats:?}"
    );
    hub.shutdown().await;
    for (i, mut c) in open.into_iter().enumerate() {
        let mut last = None;
        while let Some(f) = recv(&mut c).await {
            last = Some(f);
        }
        assert!(
            matches!(last, Some(ServerFrame::Goodbye { .. })),
            "m{i}: the goodbye last, got {last:?}"
        );
        assert_eq!(c.close_reason(), Some(CloseReason::Shutdown), "m{i}");
    }
    assert_eq!(hub.stats().connections, 0);
}

/// A member that stops reading fills its queue of 16 and is closed as a slow consumer;
/// what it was sent before is every message from the first on, with no hole, so it can
/// resume from the last seq it saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_is_closed_with_no_hole_before_its_close() {
    let hub = Hub::spawn(config(2, 16)).await.expect("hub starts");
    let mut sender = member(&hub, "sender").await;
    let mut idle = member(&hub, "idle").await;
    let mut other = member(&hub, "other").await;
    // `other` (on the thread `idle` is not on) reads all along.
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while n < 200 {
            if let ServerFrame::Message(_) = recv(&mut other).await.expect("open") {
                n += 1;
            }
        }
        other
    });
    for n in 1..=200 {
        sender.send(say(n, format!("m{n}"))).await.expect("send");
        // Keep the sender's own queue read.
        while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, sender.recv()).await {}
    }
    let _other = reader.await.expect("the reader got every message");
    let mut seqs = Vec::new();
    while let Some(f) = recv(&mut idle).await {
        match f {
            ServerFrame::Message(m) => seqs.push(m.seq.0),
            ServerFrame::UserJoined { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(idle.close_reason(), Some(CloseReason::SlowConsumer));
    assert!(!seqs.is_empty() && seqs.len() < 200, "{seqs:?}");
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "no hole before the close"
    );
    assert_eq!(hub.stats().slow_consumers, 1);
    hub.shutdown().await;
}
