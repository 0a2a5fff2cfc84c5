//! The doorbell listener against a real `redis-server`: it re-subscribes after a Redis
//! restart (socket.io#4845 never did), heals a subscription that went silently deaf
//! behind a blackholing proxy (centrifugo#1189 stayed dead), and never drops a doorbell
//! silently when its caller is slow.

mod common;

use std::time::Duration;

use chat_redis::{Bell, Doorbell, Epoch, Post, RedisLog, Subscriber, SubscriberOptions};
use common::{Proxy, RedisServer};
use tokio::sync::mpsc::Receiver;

fn fast() -> SubscriberOptions {
    SubscriberOptions {
        probe_interval: Duration::from_millis(100),
        probe_timeout: Duration::from_millis(600),
        connect_timeout: Duration::from_millis(500),
        ..SubscriberOptions::default()
    }
}

/// The next bell that is not `Behind` (a fresh subscription is announced as behind).
async fn next(bells: &mut Receiver<Bell>) -> Bell {
    loop {
        let bell = tokio::time::timeout(Duration::from_secs(15), bells.recv())
            .await
            .expect("a bell within 15 s")
            .expect("the listener is running");
        if !matches!(bell, Bell::Behind { .. }) {
            return bell;
        }
    }
}

async fn next_seq(bells: &mut Receiver<Bell>) -> u64 {
    match next(bells).await {
        Bell::Room {
            doorbell: Doorbell::Message { entry, .. },
            ..
        } => entry.seq,
        other => panic!("expected a message doorbell, got {other:?}"),
    }
}

async fn send(log: &mut RedisLog, epoch: &Epoch, body: &str) -> u64 {
    let post = Post {
        user: "alice",
        body,
        client_id: None,
        detail: None,
    };
    log.commit("general", epoch, post).await.unwrap().seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doorbells_arrive_after_the_subscription_is_made() {
    let redis = RedisServer::start();
    let mut log = redis.log().await;
    let epoch = log.cluster_epoch().await.unwrap();
    let (sub, mut bells) = Subscriber::start(&redis.url(), "node-a", log.clone(), fast()).unwrap();
    assert_eq!(next(&mut bells).await, Bell::Subscribed);
    sub.subscribe("general");
    // The subscription is asynchronous; once a probe round trip has passed it is in place.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seq = send(&mut log, &epoch, "hello").await;
    assert_eq!(next_seq(&mut bells).await, seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_subscription_is_noticed_and_made_again() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.port).await;
    let mut log = redis.log().await;
    let epoch = log.cluster_epoch().await.unwrap();
    // The listener goes through the proxy; commands (and probes) go direct.
    let (sub, mut bells) = Subscriber::start(&proxy.url(), "node-a", log.clone(), fast()).unwrap();
    assert_eq!(next(&mut bells).await, Bell::Subscribed);
    sub.subscribe("general");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = send(&mut log, &epoch, "one").await;
    assert_eq!(next_seq(&mut bells).await, sent);

    // The subscriber's connection goes deaf; the command connection still works.
    proxy.blackhole_existing();
    let missed = send(&mut log, &epoch, "two").await;
    // The listener notices (no probe comes back), reconnects and re-subscribes, and says
    // so: the caller then reads what it missed from the stream.
    assert_eq!(next(&mut bells).await, Bell::Subscribed);
    let read = log.read_after("general", missed - 1, 10).await.unwrap();
    assert_eq!(read.entries[0].seq, missed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = send(&mut log, &epoch, "three").await;
    assert_eq!(next_seq(&mut bells).await, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_is_followed_by_a_new_subscription() {
    let mut redis = RedisServer::start();
    let mut log = redis.log().await;
    let epoch = log.cluster_epoch().await.unwrap();
    let (sub, mut bells) = Subscriber::start(&redis.url(), "node-a", log.clone(), fast()).unwrap();
    assert_eq!(next(&mut bells).await, Bell::Subscribed);
    sub.subscribe("general");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = send(&mut log, &epoch, "one").await;
    assert_eq!(next_seq(&mut bells).await, sent);

    redis.restart(); // no persistence: an empty Redis on the same port
    assert_eq!(next(&mut bells).await, Bell::Subscribed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The command connection reconnects by itself too (the first call may fail).
    let epoch = loop {
        match log.cluster_epoch().await {
            Ok(e) => break e,
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let sent = send(&mut log, &epoch, "after").await;
    assert_eq!(next_seq(&mut bells).await, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_caller_is_told_which_rooms_fell_behind() {
    let redis = RedisServer::start();
    let mut log = redis.log().await;
    let epoch = log.cluster_epoch().await.unwrap();
    let options = SubscriberOptions { queue: 4, ..fast() };
    let (sub, mut bells) = Subscriber::start(&redis.url(), "node-a", log.clone(), options).unwrap();
    assert_eq!(next(&mut bells).await, Bell::Subscribed);
    sub.subscribe("general");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Drain what the subscription itself queued, then stop reading while 50 messages
    // are committed.
    while bells.try_recv().is_ok() {}
    for i in 0..50 {
        send(&mut log, &epoch, &format!("m{i}")).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Fewer than 50 doorbells fit; the rest are not silently gone: the room is reported
    // behind, and reading the stream after the last seq heard gives every one.
    let mut heard = Vec::new();
    let mut behind = false;
    while let Ok(Some(bell)) = tokio::time::timeout(Duration::from_secs(2), bells.recv()).await {
        match bell {
            Bell::Room {
                doorbell: Doorbell::Message { entry, .. },
                ..
            } => heard.push(entry.seq),
            Bell::Behind { room } => {
                assert_eq!(room, "general");
                behind = true;
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        heard.len() < 50,
        "the queue of 4 held {} doorbells",
        heard.len()
    );
    assert!(
        behind,
        "50 doorbells into a queue of 4 and no Behind (heard {heard:?})"
    );
    let after = heard.last().copied().unwrap_or(0);
    let read = log.read_after("general", after, 100).await.unwrap();
    let rest: Vec<u64> = read.entries.iter().map(|e| e.seq).collect();
    assert_eq!(rest, ((after + 1)..=50).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_payload_is_reported_and_delivery_goes_on() {
    let redis = RedisServer::start();
    let mut log = redis.log().await;
    let epoch = log.cluster_epoch().await.unwrap();
    let (sub, mut bells) = Subscriber::start(&redis.url(), "node-a", log.clone(), fast()).unwrap();
    assert_eq!(next(&mut bells).await, Bell::Subscribed);
    sub.subscribe("general");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("PUBLISH")
        .arg(log.keys().channel("general"))
        .arg("{\"not\":\"ours\"}")
        .exec_async(&mut c)
        .await
        .unwrap();
    assert!(matches!(next(&mut bells).await, Bell::Foreign { room, .. } if room == "general"));
    let sent = send(&mut log, &epoch, "still here").await;
    assert_eq!(next_seq(&mut bells).await, sent);
}
