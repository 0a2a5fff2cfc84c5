//! The cluster's Redis layer against a real `redis-server`: the commit script (seqs
//! without holes or duplicates under concurrent nodes, idempotent retries, epochs, a lost
//! meta hash), reads for gap repair and room loading, and the doorbell.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use chat_redis::{Doorbell, Epoch, Error, Options, Post};
use common::RedisServer;
use futures::StreamExt;

fn post<'a>(user: &'a str, body: &'a str, client_id: Option<&'a str>) -> Post<'a> {
    Post {
        user,
        body,
        client_id,
        detail: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_nodes_get_every_seq_once_with_no_hole() {
    let redis = RedisServer::start();
    let mut first = redis.log().await;
    let epoch = first.cluster_epoch().await.unwrap();
    // Four "nodes", each its own connection, 150 sends each into one room at once.
    let mut tasks = Vec::new();
    for node in 0..4 {
        let mut log = redis.log().await;
        let epoch = epoch.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..150 {
                let body = format!("n{node} m{i}");
                let c = log
                    .commit("general", &epoch, post("alice", &body, None))
                    .await
                    .unwrap();
                assert!(!c.duplicate);
                seqs.push((c.seq, body));
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let seqs: BTreeSet<u64> = all.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs.len(), 600, "a seq was handed out twice");
    assert_eq!(seqs.first(), Some(&1));
    assert_eq!(seqs.last(), Some(&600), "seqs have a hole");

    // The log holds each message under the seq its sender was told, in order, with
    // times that never go backwards.
    let read = first.read_after("general", 0, 1000).await.unwrap();
    assert_eq!(read.top, 600);
    assert_eq!(read.entries.len(), 600);
    all.sort();
    for (e, (seq, body)) in read.entries.iter().zip(&all) {
        assert_eq!((e.seq, &e.body), (*seq, body));
    }
    assert!(read.entries.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms));
}

#[tokio::test]
async fn a_retried_commit_is_not_posted_twice() {
    let redis = RedisServer::start();
    let mut log = redis.log().await;
    let epoch = log.cluster_epoch().await.unwrap();
    let first = log
        .commit("general", &epoch, post("alice", "only once", Some("m-77")))
        .await
        .unwrap();
    // The reply was lost after the script ran; the node (or the client, through another
    // node) tries again with the same client id.
    let again = log
        .commit("general", &epoch, post("alice", "only once", Some("m-77")))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!((again.seq, again.ts_ms), (first.seq, first.ts_ms));
    // The same id from another user, or in another room, is another message.
    let bob = log
        .commit("general", &epoch, post("bob", "mine", Some("m-77")))
        .await
        .unwrap();
    assert_eq!((bob.seq, bob.duplicate), (2, false));
    let other = log
        .commit("random", &epoch, post("alice", "elsewhere", Some("m-77")))
        .await
        .unwrap();
    assert_eq!((other.seq, other.duplicate), (1, false));
    let read = log.read_after("general", 0, 10).await.unwrap();
    assert_eq!(read.entries.len(), 2, "{read:?}");
    assert_eq!(read.entries[0].client_id.as_deref(), Some("m-77"));
}

#[tokio::test]
async fn a_node_at_an_old_epoch_is_refused_and_a_new_epoch_is_adopted() {
    let redis = RedisServer::start();
    let mut log = redis.log().await;
    let old = log.cluster_epoch().await.unwrap();
    log.commit("general", &old, post("alice", "one", None))
        .await
        .unwrap();
    let new = log.replace_epoch(&old).await.unwrap();
    assert!(new > old);
    // A second node that saw the same loss gets the same new epoch, not a third one.
    assert_eq!(log.replace_epoch(&old).await.unwrap(), new);
    assert_eq!(log.cluster_epoch().await.unwrap(), new);

    // The first post under the new epoch adopts the room's log; seqs go on.
    let c = log
        .commit("general", &new, post("alice", "two", None))
        .await
        .unwrap();
    assert_eq!((c.seq, &c.epoch), (2, &new));
    // A node still at the old epoch is told, and posts nothing.
    match log.commit("general", &old, post("bob", "late", None)).await {
        Err(Error::StaleEpoch(e)) => assert_eq!(e, new),
        other => panic!("expected StaleEpoch, got {other:?}"),
    }
    assert_eq!(log.read_after("general", 0, 10).await.unwrap().top, 2);
}

#[tokio::test]
async fn a_flushed_redis_makes_a_new_epoch() {
    let redis = RedisServer::start();
    let mut log = redis.log().await;
    let before = log.cluster_epoch().await.unwrap();
    let mut c = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("FLUSHALL").exec_async(&mut c).await.unwrap();
    let after = log.cluster_epoch().await.unwrap();
    assert_ne!(after, before);
    assert_eq!(
        log.cluster_epoch().await.unwrap(),
        after,
        "stable once made"
    );
}

#[tokio::test]
async fn a_lost_meta_hash_never_reuses_a_seq_the_log_has() {
    let redis = RedisServer::start();
    let mut log = redis.log().await;
    let epoch = log.cluster_epoch().await.unwrap();
    for body in ["one", "two", "three"] {
        log.commit("general", &epoch, post("alice", body, None))
            .await
            .unwrap();
    }
    let mut c = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let meta = log.keys().meta("general");
    redis::cmd("DEL")
        .arg(&meta)
        .exec_async(&mut c)
        .await
        .unwrap();
    let c4 = log
        .commit("general", &epoch, post("alice", "four", None))
        .await
        .unwrap();
    assert_eq!(c4.seq, 4);
    let read = log.read_after("general", 0, 10).await.unwrap();
    let seqs: Vec<u64> = read.entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
}

#[tokio::test]
async fn reads_give_the_exact_suffix_or_show_the_trimmed_gap() {
    let redis = RedisServer::start();
    let mut log = redis
        .log_with(Options {
            window: 10,
            ..Options::default()
        })
        .await;
    let epoch = log.cluster_epoch().await.unwrap();
    for i in 1..=250 {
        log.commit("general", &epoch, post("alice", &format!("m{i}"), None))
            .await
            .unwrap();
    }
    // The exact suffix after 25.
    let read = log.read_after("general", 245, 100).await.unwrap();
    let seqs: Vec<u64> = read.entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [246, 247, 248, 249, 250]);
    assert_eq!(read.epoch.as_ref(), Some(&epoch));
    // Bounded by `max`.
    let seqs: Vec<u64> = (log.read_after("general", 245, 2).await.unwrap().entries)
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, [246, 247]);
    // From the start: the stream was trimmed (`MAXLEN ~`: whole stream nodes of 100
    // entries, keeping at least the window), so the first entry is above 1: the caller
    // sees the gap, it is never hidden.
    let read = log.read_after("general", 0, 1000).await.unwrap();
    let first = read.entries.first().unwrap().seq;
    assert!(first > 1 && first <= 241, "first kept entry {first}");
    assert_eq!(read.entries.last().unwrap().seq, 250);
    assert_eq!(
        read.entries.len() as u64,
        251 - first,
        "no hole after the gap"
    );
    // The latest few, oldest first.
    let read = log.read_latest("general", 3).await.unwrap();
    let seqs: Vec<u64> = read.entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [248, 249, 250]);
    assert_eq!(read.top, 250);
    // A room nobody posted in.
    let empty = log.read_latest("nobody-here", 50).await.unwrap();
    assert_eq!((empty.epoch, empty.top, empty.entries.len()), (None, 0, 0));
}

#[tokio::test]
async fn a_commit_rings_the_rooms_doorbell_with_the_entry() {
    let redis = RedisServer::start();
    let mut log = redis.log().await;
    let epoch = log.cluster_epoch().await.unwrap();
    let mut sub = redis.client().get_async_pubsub().await.unwrap();
    sub.subscribe(log.keys().channel("général")).await.unwrap();
    let c = log
        .commit(
            "général",
            &epoch,
            post("zoë", "a|b|c with pipes, ünïcode", Some("id|1")),
        )
        .await
        .unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), sub.on_message().next())
        .await
        .expect("the doorbell rings")
        .unwrap();
    let bell = Doorbell::parse(msg.get_payload_bytes()).unwrap();
    let Doorbell::Message { epoch: e, entry } = bell else {
        panic!("expected a message doorbell, got {bell:?}");
    };
    assert_eq!(e, epoch);
    assert_eq!((entry.seq, entry.ts_ms), (c.seq, c.ts_ms));
    assert_eq!(entry.user, "zoë");
    assert_eq!(entry.body, "a|b|c with pipes, ünïcode");
    assert_eq!(entry.client_id.as_deref(), Some("id|1"));
    // The stream has the same entry.
    let read = log.read_after("général", 0, 10).await.unwrap();
    assert_eq!(read.entries, [entry]);
}

#[tokio::test]
async fn rooms_with_braces_in_their_names_do_not_share_keys() {
    let redis = RedisServer::start();
    let mut log = redis.log().await;
    let epoch = log.cluster_epoch().await.unwrap();
    for room in ["a}b", "a", "{a}", "a%7Db"] {
        let c = log
            .commit(room, &epoch, post("alice", room, None))
            .await
            .unwrap();
        assert_eq!(c.seq, 1, "room {room:?} shared a log");
    }
}

#[tokio::test]
async fn an_unreachable_redis_is_a_clear_error_within_the_deadline() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let started = std::time::Instant::now();
    let err = chat_redis::RedisLog::connect(
        &format!("redis://127.0.0.1:{port}/"),
        Options {
            connect_timeout: Duration::from_millis(300),
            ..Options::default()
        },
    )
    .await
    .expect_err("nothing listens there");
    assert!(err.is_retryable(), "{err}");
    // Bounded, not hung (generous: retries with backoff are part of it).
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn a_redis_that_restarts_is_used_again_without_a_new_connection() {
    let redis = RedisServer::start();
    let mut log = redis.log().await;
    let epoch: Epoch = log.cluster_epoch().await.unwrap();
    log.commit("general", &epoch, post("alice", "one", None))
        .await
        .unwrap();
    let mut c = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // Kill every client connection, as a Redis restart or a network blip does.
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .exec_async(&mut c)
        .await
        .ok();
    // The first call after may fail (the connection dropped): a retryable error, never a
    // wrong answer; within a few tries the same handle works again.
    let mut ok = None;
    for _ in 0..20 {
        match log
            .commit("general", &epoch, post("alice", "two", Some("c-2")))
            .await
        {
            Ok(c) => {
                ok = Some(c);
                break;
            }
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let c = ok.expect("the connection came back");
    assert_eq!(c.seq, 2);
}
