//! Reliable host events (`Hub::event_stream`) on the real runtime, with real sessions and
//! a real SQLite file: a slow host gets every event in order; a host that stops reading
//! does not hold chat up and is told exactly which events it missed, in their place, and
//! `/metrics` counts them.
#![cfg(all(feature = "runtime", feature = "sqlite"))]
#![allow(clippy::disallowed_methods)] // a host task reads the stream beside the chat

mod common;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chat_core::Event;
use chat_core::RequestId;
use chat_core::protocol::{ClientFrame, SendRequest, ServerFrame};
use chat_core::runtime::transport::Connection;
use chat_core::runtime::{Durability, EventStream, HostEvent, Hub, HubConfig, SqliteStore};
use common::member;

/// The Prometheus recorder `/metrics` renders (one per process, as in a server).
fn prometheus() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("the only recorder of this test process")
    })
}

/// A hub storing its history in a real SQLite file, without flood limits.
async fn hub(dir: &tempfile::TempDir) -> Hub {
    let store = SqliteStore::open(dir.path().join("chat.db"), Durability::Normal).expect("db");
    Hub::spawn(HubConfig {
        core: common::unlimited(),
        store: Some(Arc::new(store)),
        ..HubConfig::default()
    })
    .await
    .expect("hub starts")
}

/// Sends `count` messages as `from` (all at once, then waits for every ack) and waits
/// until `to` has received each of them: chat went on, whatever the host streams did.
async fn chat(from: &mut Connection, to: &mut Connection, prefix: &str, count: u64) {
    for i in 0..count {
        from.send(ClientFrame::Send(SendRequest {
            id: Some(RequestId(i)),
            room: Some("general".into()),
            to: None,
            body: format!("{prefix}{i}"),
            client_id: None,
            reply_to: None,
        }))
        .await
        .expect("send");
    }
    let mut acked = 0;
    while acked < count {
        match from.recv().await.expect("acks") {
            ServerFrame::Ack { .. } => acked += 1,
            ServerFrame::Error { .. } => panic!("a send was refused"),
            _ => {}
        }
    }
    let mut got = 0;
    while got < count {
        if let ServerFrame::Message(m) = to.recv().await.expect("messages")
            && m.body.starts_with(prefix)
        {
            got += 1;
        }
    }
}

fn posted(event: &Event) -> Option<&str> {
    match event {
        Event::MessagePosted(m) => Some(&m.body),
        _ => None,
    }
}

/// Reads `stream` until the message `last` was posted; returns every item.
async fn read_until(stream: &mut EventStream, last: &str, pause: Duration) -> Vec<HostEvent> {
    let mut items = Vec::new();
    loop {
        let item = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("the stream goes on")
            .expect("the hub runs");
        let done = matches!(&item, HostEvent::Event { event, .. } if posted(event) == Some(last));
        items.push(item);
        if done {
            return items;
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

fn ids(items: &[HostEvent]) -> Vec<u64> {
    items
        .iter()
        .map(|item| match item {
            HostEvent::Event { id, .. } => *id,
            other => panic!("an event, not {other:?}"),
        })
        .collect()
}

/// A host that takes its time over each event (a webhook, an audit write) still gets
/// every event, once, in order, with consecutive ids: the messages in the order they
/// were sent, after the sessions and joins that came before them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_host_gets_every_event_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = hub(&dir).await;
    let mut audit = hub.event_stream(4096);
    let reader =
        tokio::spawn(async move { read_until(&mut audit, "end", Duration::from_millis(2)).await });
    let mut alice = member(&hub, "alice").await;
    let mut bob = member(&hub, "bob").await;
    chat(&mut alice, &mut bob, "a", 150).await;
    chat(&mut bob, &mut alice, "b", 150).await;
    hub.publish("general", "bot", "end").await.expect("publish");
    let items = reader.await.expect("reader");

    let ids = ids(&items);
    let first = ids[0];
    assert_eq!(ids, (first..first + ids.len() as u64).collect::<Vec<_>>());
    let bodies: Vec<&str> = items
        .iter()
        .filter_map(|item| match item {
            HostEvent::Event { event, .. } => posted(event),
            _ => None,
        })
        .collect();
    let sent: Vec<String> = (0..150)
        .map(|i| format!("a{i}"))
        .chain((0..150).map(|i| format!("b{i}")))
        .chain(["end".to_owned()])
        .collect();
    assert_eq!(bodies, sent);
    let opened = items
        .iter()
        .filter(|item| {
            matches!(
                item,
                HostEvent::Event {
                    event: Event::SessionOpened { .. },
                    ..
                }
            )
        })
        .count();
    assert_eq!(opened, 2, "both sessions, before their messages");
    assert_eq!(hub.stats().events_missed, 0);
    hub.shutdown().await;
}

/// A host that stops reading holds nobody up: two users chat on, every send acked and
/// delivered. When it reads again it gets the events its buffer held, then one
/// `Lagged` naming exactly the ids it missed (those a stream that kept reading got),
/// then the events after; the stats and `/metrics` count the missed ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_stops_reading_is_told_exactly_what_it_missed_and_chat_goes_on() {
    let metrics = prometheus();
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = hub(&dir).await;
    let mut stalled = hub.event_stream(8);
    let mut reference = hub.event_stream(100_000);
    let mut alice = member(&hub, "alice").await;
    let mut bob = member(&hub, "bob").await;
    // The engine does not wait for `stalled`: were it to, this would never finish.
    let chatting = async {
        chat(&mut alice, &mut bob, "a", 200).await;
        chat(&mut bob, &mut alice, "b", 200).await;
    };
    tokio::time::timeout(Duration::from_secs(60), chatting)
        .await
        .expect("chat goes on while a host stream is full");
    hub.publish("general", "bot", "mark")
        .await
        .expect("publish");
    let all = ids(&read_until(&mut reference, "mark", Duration::ZERO).await);
    assert!(all.len() > 400, "{} events", all.len());

    let mut kept = Vec::new();
    while let Some(item) = stalled.try_next() {
        kept.push(item);
    }
    assert_eq!(kept.len(), 9, "{kept:?}");
    assert_eq!(ids(&kept[..8]), all[..8]);
    let missed = all[8]..all[all.len() - 1] + 1;
    assert_eq!(
        kept[8],
        HostEvent::Lagged {
            missed: missed.clone()
        }
    );
    let count = missed.end - missed.start;
    assert_eq!(hub.stats().events_missed, count);
    let rendered = metrics.render();
    assert!(
        rendered
            .lines()
            .any(|l| l == format!("chat_host_events_missed_total {count}")),
        "{rendered}"
    );

    // Read again: what comes next is kept, with the next id.
    hub.publish("general", "bot", "after")
        .await
        .expect("publish");
    match stalled.next().await {
        Some(HostEvent::Event { id, event }) => {
            assert_eq!(id, missed.end);
            assert_eq!(posted(&event), Some("after"));
        }
        other => panic!("the next event, not {other:?}"),
    }
    hub.shutdown().await;
}

/// At shutdown a stream yields what it holds (every session's close among it), then
/// ends; a stream dropped early misses nothing it could be blamed for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_after_the_hubs_last_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = hub(&dir).await;
    let mut audit = hub.event_stream(1024);
    drop(hub.event_stream(1));
    let _alice = member(&hub, "alice").await;
    hub.shutdown().await;
    let mut items = Vec::new();
    while let Some(item) = audit.next().await {
        items.push(item);
    }
    assert!(
        matches!(
            items.last(),
            Some(HostEvent::Event {
                event: Event::SessionClosed {
                    reason: Some(chat_core::CloseReason::Shutdown),
                    ..
                },
                ..
            })
        ),
        "{items:?}"
    );
    assert_eq!(
        hub.stats().events_missed,
        0,
        "the dropped stream is not counted"
    );
    assert!(
        hub.event_stream(4).next().await.is_none(),
        "a stopped hub has no events"
    );
}
