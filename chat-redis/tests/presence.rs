//! Presence over several nodes, node liveness and reaping, names, the shared secret, and
//! foreign payloads on our channels, against a real `redis-server`.

mod common;

use std::time::Duration;

use chat_redis::{Announcement, Doorbell, Foreign, Presence};
use common::RedisServer;
use futures::StreamExt;
use proptest::prelude::*;

fn joined(u: &str) -> Announcement {
    Announcement::Joined(u.into())
}

fn left(u: &str) -> Announcement {
    Announcement::Left(u.into())
}

#[tokio::test]
async fn a_user_on_two_nodes_is_announced_once_each_way() {
    let redis = RedisServer::start();
    let mut log = redis.log().await;
    let room = "general";
    let a = log
        .presence(room, "node-a", "alice", Presence::Enter)
        .await
        .unwrap();
    assert_eq!((a.announced, a.pv), (vec![joined("alice")], 1));
    // A second tab on another node: not announced.
    let b = log
        .presence(room, "node-b", "alice", Presence::Enter)
        .await
        .unwrap();
    assert_eq!((b.announced, b.pv), (vec![], 1));
    // And a third on the first node.
    let a2 = log
        .presence(room, "node-a", "alice", Presence::Enter)
        .await
        .unwrap();
    assert!(a2.announced.is_empty());
    // Leaving two of three: still present.
    for node in ["node-a", "node-b"] {
        let l = log
            .presence(room, node, "alice", Presence::Leave)
            .await
            .unwrap();
        assert!(l.announced.is_empty(), "{l:?}");
    }
    let last = log
        .presence(room, "node-a", "alice", Presence::Leave)
        .await
        .unwrap();
    assert_eq!((last.announced, last.pv), (vec![left("alice")], 2));
    // A leave with nothing to undo changes nothing (a reaper was faster).
    let stray = log
        .presence(room, "node-a", "alice", Presence::Leave)
        .await
        .unwrap();
    assert_eq!((stray.announced, stray.pv), (vec![], 2));
    let read = log.read_latest(room, 1).await.unwrap();
    assert!(read.users.is_empty(), "{:?}", read.users);
}

#[tokio::test]
async fn a_stray_leave_never_takes_another_nodes_session() {
    let redis = RedisServer::start();
    let mut log = redis.log().await;
    log.presence("general", "node-b", "bob", Presence::Enter)
        .await
        .unwrap();
    // node-a never had bob: its leave must not end bob's presence.
    let l = log
        .presence("general", "node-a", "bob", Presence::Leave)
        .await
        .unwrap();
    assert!(l.announced.is_empty());
    let read = log.read_latest("general", 1).await.unwrap();
    assert_eq!(read.users, [("bob".to_string(), 1)]);
}

#[tokio::test]
async fn a_dead_nodes_users_are_reaped_once_and_movers_are_not_announced() {
    let redis = RedisServer::start();
    let mut log = redis.log().await;
    let mut bells = redis.client().get_async_pubsub().await.unwrap();
    bells
        .subscribe(log.keys().channel("general"))
        .await
        .unwrap();
    bells.subscribe(log.keys().channel("random")).await.unwrap();

    log.heartbeat("node-a", Duration::from_millis(200))
        .await
        .unwrap();
    log.heartbeat("node-b", Duration::from_secs(60))
        .await
        .unwrap();
    for (room, user) in [
        ("general", "alice"),
        ("general", "bob"),
        ("random", "carol"),
    ] {
        log.presence(room, "node-a", user, Presence::Enter)
            .await
            .unwrap();
    }
    // bob already reconnected to node-b before node-a's death was noticed.
    log.presence("general", "node-b", "bob", Presence::Enter)
        .await
        .unwrap();
    assert!(log.dead_nodes().await.unwrap().is_empty());

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(log.dead_nodes().await.unwrap(), ["node-a"]);
    let mut reaped = log.reap("node-a").await.unwrap();
    reaped.sort_by(|x, y| x.0.cmp(&y.0));
    let summary: Vec<(String, Vec<Announcement>)> = reaped
        .into_iter()
        .map(|(room, c)| (room, c.announced))
        .collect();
    assert_eq!(
        summary,
        [
            ("general".to_string(), vec![left("alice")]),
            ("random".to_string(), vec![left("carol")]),
        ]
    );
    // Reaping again (a second reaper) announces nothing; the node is forgotten.
    assert!(log.reap("node-a").await.unwrap().is_empty());
    assert!(log.dead_nodes().await.unwrap().is_empty());
    let read = log.read_latest("general", 1).await.unwrap();
    assert_eq!(read.users, [("bob".to_string(), 1)]);

    // Every announcement rang the room's doorbell, in pv order.
    let mut seen = Vec::new();
    let mut stream = bells.on_message();
    while seen.len() < 5 {
        let m = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("doorbells")
            .unwrap();
        match Doorbell::parse(m.get_payload_bytes()).unwrap() {
            Doorbell::Presence {
                pv, joined, user, ..
            } => seen.push((m.get_channel_name().to_string(), pv, joined, user)),
            other => panic!("unexpected {other:?}"),
        }
    }
    let general: Vec<_> = seen
        .iter()
        .filter(|s| s.0.contains("general"))
        .map(|s| (s.1, s.2, s.3.as_str()))
        .collect();
    assert_eq!(
        general,
        [(1, true, "alice"), (2, true, "bob"), (3, false, "alice")]
    );
    let random: Vec<_> = seen
        .iter()
        .filter(|s| s.0.contains("random"))
        .map(|s| (s.1, s.2, s.3.as_str()))
        .collect();
    assert_eq!(random, [(1, true, "carol"), (2, false, "carol")]);
}

#[tokio::test]
async fn a_name_is_held_by_one_holder_at_a_time() {
    let redis = RedisServer::start();
    let mut log = redis.log().await;
    let life = Duration::from_millis(300);
    assert!(log.claim_name("alice", "token-1", life).await.unwrap());
    assert!(!log.claim_name("alice", "token-2", life).await.unwrap());
    // The holder extends it.
    assert!(log.claim_name("alice", "token-1", life).await.unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Expired: free for someone else.
    assert!(log.claim_name("alice", "token-2", life).await.unwrap());
}

#[tokio::test]
async fn every_node_gets_the_same_secret() {
    let redis = RedisServer::start();
    let mut a = redis.log().await;
    let mut b = redis.log().await;
    let sa = a.shared_secret().await.unwrap();
    let sb = b.shared_secret().await.unwrap();
    assert_eq!(sa, sb);
    assert_ne!(sa, [0; 32]);
}

#[test]
fn foreign_payloads_are_refused() {
    for bad in [
        &b""[..],
        b"hello",
        b"m|",
        b"m|1765000000000-0011223344556677|1|2|5|0|al",
        b"m|not-an-epoch|1|2|5|0|alicebody",
        b"m|1765000000000-0011223344556677|0|2|5|0|alicebody",
        b"m|1765000000000-0011223344556677|-1|2|5|0|alicebody",
        b"m|1765000000000-0011223344556677|1|2|99999999999999999999999|0|alice",
        b"p|1|*|2|bob",
        b"p|1|+|2|",
        b"\xff\xfe",
    ] {
        assert!(
            Doorbell::parse(bad).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let huge = vec![b'm'; 1024 * 1024];
    assert_eq!(Doorbell::parse(&huge), Err(Foreign::TooLarge(huge.len())));
}

proptest! {
    #[test]
    fn any_payload_parses_or_is_foreign_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Doorbell::parse(&bytes);
    }

    #[test]
    fn near_miss_message_doorbells_never_panic(
        ulen in 0usize..40, clen in 0usize..40, rest in ".{0,60}", seq in 0u64..5,
    ) {
        let s = format!("m|1765000000000-0011223344556677|{seq}|5|{ulen}|{clen}|{rest}");
        if let Ok(Doorbell::Message { entry, .. }) = Doorbell::parse(s.as_bytes()) {
            prop_assert_eq!(entry.user.len(), ulen);
            prop_assert!(entry.seq > 0);
        }
    }
}
