//! Graceful shutdown through `serve_hub`'s shutdown future: every client is told
//! `goodbye` and gets close 1012, `serve_hub` returns, and no connection task outlives it.

mod common;

use chat_axum::RouterOptions;
use chat_core::RequestId;
use chat_core::protocol::ServerFrame;
use chat_core::runtime::HubConfig;
use common::{End, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_says_goodbye_closes_with_1012_and_waits_for_every_task() {
    let server = TestServer::with(HubConfig::default(), RouterOptions::default()).await;
    let mut clients = Vec::new();
    for name in ["alice", "bob", "carol"] {
        clients.push(server.user(name).await);
    }
    // One in another room, one that never said hello.
    let mut dave = server.user("dave").await;
    dave.send(&chat_core::protocol::ClientFrame::Leave {
        id: Some(RequestId(2)),
        room: "general".into(),
    })
    .await;
    dave.recv_until("left", |f| {
        matches!(f, ServerFrame::Left { .. }).then_some(())
    })
    .await;
    dave.send(&chat_core::protocol::ClientFrame::Join(
        chat_core::protocol::JoinRequest {
            id: Some(RequestId(3)),
            room: "elsewhere".into(),
            since: None,
        },
    ))
    .await;
    dave.expect_joined("elsewhere").await;
    clients.push(dave);
    clients.push(server.client().await);
    assert_eq!(server.tracker.len(), clients.len());
    assert!(server.hub.is_running());

    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| tokio::spawn(async move { c.read_to_end().await }))
        .collect();
    let hub = server.hub.clone();
    let tracker = server.tracker.clone();
    server.stop().await.expect("serve_hub returns Ok");

    // serve_hub returned: every WebSocket task has finished and the hub has stopped.
    assert!(tracker.is_closed());
    assert!(
        tracker.is_empty(),
        "{} connection tasks outlived serve_hub",
        tracker.len()
    );
    assert!(!hub.is_running());
    assert_eq!(hub.stats().connections, 0);

    for reader in readers {
        let (frames, end) = reader.await.expect("reader task");
        match frames.last() {
            Some(ServerFrame::Goodbye {
                reason,
                retry_after_ms,
            }) => {
                assert!(!reason.is_empty());
                assert!(*retry_after_ms > 0, "clients are told when to come back");
            }
            other => panic!("expected goodbye last, got {other:?} in {frames:?}"),
        }
        match end {
            End::Close(Some(c)) => {
                assert_eq!(c.code, 1012, "service restart");
                assert_eq!(c.reason, "server shutting down");
            }
            other => panic!("expected close 1012, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_no_clients_returns() {
    let server = TestServer::start().await;
    let tracker = server.tracker.clone();
    server.stop().await.expect("serve_hub returns Ok");
    assert!(tracker.is_empty());
}
