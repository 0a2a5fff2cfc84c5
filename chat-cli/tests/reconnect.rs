//! The server restarts under a running `tail`: it reconnects and resumes from the last
//! seq it printed, with no gap and no duplicate, including the messages posted while it
//! was away.

mod common;

use std::sync::Arc;

use chat_core::Event;
use chat_core::runtime::{MemoryStore, Store};
use common::{Running, TestServer, cli, hub_with_store, wait_event};
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_resumes_across_a_server_restart_without_gap_or_duplicate() {
    // One durable store for both server incarnations: seqs and history survive.
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new("e1"));
    let hub = hub_with_store(store.clone()).await;
    let mut events = hub.events();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = TestServer::serve(listener, hub.clone());
    let (addr, url) = (server.addr, server.url());

    let mut tail = cli(&url, "tailer");
    tail.args(["tail", "--room", "news", "--count", "66", "--json"]);
    let mut tail = Running::spawn(tail);
    let joined = |e: &Event| matches!(e, Event::UserJoined { room, user } if room.as_str() == "news" && user.as_str() == "tailer");
    wait_event(&mut events, "tail joins", joined).await;

    for i in 1..=3 {
        hub.publish("news", "bot", &format!("m{i}")).await.unwrap();
    }
    let mut seen = tail.lines(3).await;

    // Restart: graceful shutdown (tail is told to come back), then a new hub on the
    // same store and the same address.
    server.stop().await;
    let hub = hub_with_store(store.clone()).await;
    let mut events = hub.events();
    // Posted while tail is away: more than a plain join returns (50), so only a resume
    // from the last seq brings them all.
    for i in 4..=63 {
        hub.publish("news", "bot", &format!("m{i}")).await.unwrap();
    }
    let listener = TcpListener::bind(addr)
        .await
        .expect("rebind the same address");
    let _server = TestServer::serve(listener, hub.clone());
    wait_event(&mut events, "tail is back", joined).await;
    for i in 64..=66 {
        hub.publish("news", "bot", &format!("m{i}")).await.unwrap();
    }
    seen.extend(tail.lines(63).await);
    let (code, rest) = tail.finish().await;
    assert_eq!(code, Some(0));
    assert!(rest.is_empty(), "{rest:?}");

    let got: Vec<(u64, String)> = seen
        .iter()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("JSON");
            (
                v["seq"].as_u64().unwrap(),
                v["body"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: Vec<(u64, String)> = (1..=66).map(|i| (i, format!("m{i}"))).collect();
    assert_eq!(got, want, "every message once, in order");
}
