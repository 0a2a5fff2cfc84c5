//! What the runtime broker uses beyond the single calls: pipelined commits, idempotent
//! presence writes, heartbeats that tell a reaped node, against a real `redis-server`.

mod common;

use std::time::Duration;

use chat_redis::{Announcement, Epoch, Post};
use common::RedisServer;

#[tokio::test]
async fn a_batch_commits_in_order_once_per_client_id_and_survives_a_script_flush() {
    let redis = RedisServer::start();
    let mut log = redis.log().await;
    let epoch = log.cluster_epoch().await.unwrap();
    let bodies: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    let ids: Vec<String> = (0..50).map(|i| format!("c{i}")).collect();
    let mut posts: Vec<Post<'_>> = bodies
        .iter()
        .zip(&ids)
        .map(|(b, c)| Post {
            user: "alice",
            body: b,
            client_id: Some(c),
            detail: None,
        })
        .collect();
    // The same client id twice in one batch: posted once.
    posts.push(Post {
        user: "alice",
        body: "m0 again",
        client_id: Some("c0"),
        detail: None,
    });
    let out = log.commit_batch("general", &epoch, &posts).await.unwrap();
    let seqs: Vec<(u64, bool)> = out
        .iter()
        .map(|r| {
            let c = r.as_ref().unwrap();
            (c.seq, c.duplicate)
        })
        .collect();
    let mut want: Vec<(u64, bool)> = (1..=50).map(|s| (s, false)).collect();
    want.push((1, true));
    assert_eq!(seqs, want);
    let read = log.read_after("general", 0, 100).await.unwrap();
    let got: Vec<&str> = read.entries.iter().map(|e| e.body.as_str()).collect();
    assert_eq!(got, bodies.iter().map(String::as_str).collect::<Vec<_>>());

    // A Redis that forgot its scripts (a restart): the batch loads them and runs.
    let mut c = redis.client().get_connection().unwrap();
    redis::cmd("SCRIPT").arg("FLUSH").exec(&mut c).unwrap();
    let more = [Post {
        user: "bob",
        body: "after the flush",
        client_id: None,
        detail: None,
    }; 3];
    let out = log.commit_batch("general", &epoch, &more).await.unwrap();
    let seqs: Vec<u64> = out.into_iter().map(|r| r.unwrap().seq).collect();
    assert_eq!(seqs, vec![51, 52, 53]);
}

#[tokio::test]
async fn a_batch_under_an_old_epoch_is_refused_post_by_post() {
    let redis = RedisServer::start();
    let mut log = redis.log().await;
    let old = Epoch::new();
    tokio::time::sleep(Duration::from_millis(2)).await;
    let new = log.cluster_epoch().await.unwrap();
    assert!(new > old);
    let post = Post {
        user: "alice",
        body: "hi",
        client_id: None,
        detail: None,
    };
    log.commit_batch("general", &new, &[post]).await.unwrap()[0]
        .as_ref()
        .unwrap();
    let out = log
        .commit_batch("general", &old, &[post, post])
        .await
        .unwrap();
    assert!(
        out.iter()
            .all(|r| matches!(r, Err(chat_redis::Error::StaleEpoch(e)) if *e == new)),
        "{out:?}"
    );
}

#[tokio::test]
async fn presence_writes_are_idempotent() {
    let redis = RedisServer::start();
    let mut log = redis.log().await;
    let here = log
        .presence_set("general", "n1", "alice", true)
        .await
        .unwrap();
    assert_eq!(here.announced, vec![Announcement::Joined("alice".into())]);
    // A retry after a lost reply: nothing more.
    let again = log
        .presence_set("general", "n1", "alice", true)
        .await
        .unwrap();
    assert!(again.announced.is_empty());
    assert_eq!(again.pv, here.pv);
    // Alice on a second node, then gone from the first (twice): still present.
    log.presence_set("general", "n2", "alice", true)
        .await
        .unwrap();
    for _ in 0..2 {
        let gone = log
            .presence_set("general", "n1", "alice", false)
            .await
            .unwrap();
        assert!(gone.announced.is_empty(), "{gone:?}");
    }
    assert_eq!(
        log.present("general").await.unwrap().1,
        vec![("alice".to_owned(), 1)]
    );
    let last = log
        .presence_set("general", "n2", "alice", false)
        .await
        .unwrap();
    assert_eq!(last.announced, vec![Announcement::Left("alice".into())]);
    assert!(log.present("general").await.unwrap().1.is_empty());
}

#[tokio::test]
async fn a_heartbeat_tells_a_node_it_was_reaped() {
    let redis = RedisServer::start();
    let mut log = redis.log().await;
    assert!(log.heartbeat("n1", Duration::from_secs(60)).await.unwrap());
    assert!(!log.heartbeat("n1", Duration::from_secs(60)).await.unwrap());
    log.presence_set("general", "n1", "alice", true)
        .await
        .unwrap();
    log.reap("n1").await.unwrap();
    assert!(log.present("general").await.unwrap().1.is_empty());
    // Its next heartbeat says so: the node writes its presence again.
    assert!(log.heartbeat("n1", Duration::from_secs(60)).await.unwrap());
}

#[tokio::test]
async fn a_command_connection_gone_silent_is_replaced() {
    let redis = RedisServer::start();
    let proxy = common::Proxy::start(redis.port).await;
    let options = chat_redis::Options {
        deadline: Duration::from_millis(300),
        ..chat_redis::Options::default()
    };
    let mut log = chat_redis::RedisLog::connect(&proxy.url(), options)
        .await
        .unwrap();
    log.heartbeat("n1", Duration::from_secs(60)).await.unwrap();
    proxy.blackhole_existing();
    let err = log
        .heartbeat("n1", Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    // A new connection (through the proxy, which carries new connections) takes over.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if log.heartbeat("n1", Duration::from_secs(60)).await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the connection never healed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
