//! Retention in the shared log, against a real `redis-server`: `retain.lua` trims a
//! room's stream to its policy (by count: exactly the newest `max_count` entries,
//! messages and changes alike; by age: by the entries' own times), never its newest
//! entry, at most its budget per call; the trimmed seqs' state goes, the first kept seq
//! is recorded in the meta hash and rung on the room's channel, and reads report it.
//! Policies are kept per room in Redis and read back.

mod common;

use std::time::Duration;

use chat_core::protocol::EntryKind;
use chat_core::{ChangeRules, EntryDetail, Retention, Seq};
use chat_redis::{Doorbell, Epoch, Post, RedisLog, Retained};
use common::RedisServer;
use futures::StreamExt;

fn count(n: u64) -> Option<Retention> {
    Some(Retention {
        max_age: None,
        max_count: Some(n),
    })
}

async fn send(log: &mut RedisLog, room: &str, epoch: &Epoch, body: &str) -> u64 {
    let post = Post {
        user: "alice",
        body,
        client_id: None,
        detail: None,
    };
    log.commit(room, epoch, post).await.unwrap().seq
}

async fn react(log: &mut RedisLog, room: &str, epoch: &Epoch, target: u64) -> u64 {
    let detail = EntryDetail {
        kind: EntryKind::React,
        target: Some(Seq(target)),
        emoji: Some("👍".into()),
        on: Some(true),
        rules: ChangeRules {
            edit_window: Duration::from_secs(900),
            max_reactions: 20,
            any_author: false,
        },
        ..EntryDetail::default()
    };
    let post = Post {
        user: "bob",
        body: "",
        client_id: None,
        detail: Some(&detail),
    };
    log.commit(room, epoch, post).await.unwrap().seq
}

async fn conn(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn xlen(c: &mut redis::aio::MultiplexedConnection, key: &str) -> u64 {
    redis::cmd("XLEN").arg(key).query_async(c).await.unwrap()
}

#[tokio::test]
async fn a_count_policy_keeps_exactly_the_newest_entries_and_says_the_first_kept() {
    let redis = RedisServer::start();
    let mut log = redis.log().await;
    let mut c = conn(&redis).await;
    let epoch = log.cluster_epoch().await.unwrap();
    for i in 1..=10 {
        send(&mut log, "general", &epoch, &format!("m{i}")).await;
    }
    // Changes are entries too (seqs 11 and 12); their targets get a state.
    assert_eq!(react(&mut log, "general", &epoch, 2).await, 11);
    assert_eq!(react(&mut log, "general", &epoch, 9).await, 12);
    let keys = log.keys().clone();
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(keys.state("general"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(fields.len(), 2);

    let mut sub = redis.client().get_async_pubsub().await.unwrap();
    sub.subscribe(keys.channel("general")).await.unwrap();
    let step = log.retain("general", count(5), 500, None).await.unwrap();
    assert_eq!(
        step,
        Retained {
            trimmed: 7,
            first: 8,
            more: false
        }
    );
    assert_eq!(xlen(&mut c, &keys.log("general")).await, 5);
    // The state of trimmed message 2 went; message 9's stays.
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(keys.state("general"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(fields, ["9"]);
    let first: String = redis::cmd("HGET")
        .arg(keys.meta("general"))
        .arg("first")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(first, "8");
    // Every node hears it on the room's channel.
    let msg = tokio::time::timeout(Duration::from_secs(5), sub.on_message().next())
        .await
        .expect("the trim rings")
        .unwrap();
    assert_eq!(
        Doorbell::parse(msg.get_payload_bytes()).unwrap(),
        Doorbell::Trimmed {
            epoch: epoch.clone(),
            first: 8
        }
    );
    // Reads say where the log starts: a catch-up from before it, a room load, a page.
    let after = log.read_after("general", 1, 100).await.unwrap();
    assert_eq!(after.first, 8);
    assert_eq!(after.entries.first().map(|e| e.seq), Some(8));
    let latest = log.read_latest("general", 100).await.unwrap();
    assert_eq!((latest.first, latest.top), (8, 12));
    let (page, more) = log.read_before("general", Some(9), 50).await.unwrap();
    assert_eq!(
        (page.iter().map(|e| e.seq).collect::<Vec<_>>(), more),
        (vec![8], false)
    );
    // Already within the policy: nothing more goes, and seqs carry on.
    assert_eq!(
        log.retain("general", count(5), 500, None).await.unwrap(),
        Retained {
            trimmed: 0,
            first: 8,
            more: false
        }
    );
    assert_eq!(send(&mut log, "general", &epoch, "m13").await, 13);
}

#[tokio::test]
async fn an_age_policy_trims_by_the_entries_times_and_never_the_newest() {
    let redis = RedisServer::start();
    let mut log = redis.log().await;
    let mut c = conn(&redis).await;
    let epoch = log.cluster_epoch().await.unwrap();
    let keys = log.keys().clone();
    // Entries a day apart: commit.lua never lets a room's time go backwards, so a
    // meta `ts` set ahead is the next entry's time.
    let day: i64 = 86_400_000;
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + day;
    for i in 0..6 {
        redis::cmd("HSET")
            .arg(keys.meta("general"))
            .arg("ts")
            .arg(base + i * day)
            .exec_async(&mut c)
            .await
            .unwrap();
        send(&mut log, "general", &epoch, &format!("day {i}")).await;
    }
    let read = log.read_after("general", 0, 10).await.unwrap();
    let times: Vec<i64> = read.entries.iter().map(|e| e.ts_ms - base).collect();
    assert_eq!(times, [0, day, 2 * day, 3 * day, 4 * day, 5 * day]);
    let week = Retention {
        max_age: Some(Duration::from_millis(3 * day as u64)),
        max_count: None,
    };
    // At base + 5.5 days, three days back is base + 2.5 days: days 0, 1 and 2 go.
    let now = base + 5 * day + day / 2;
    let step = log
        .retain("general", Some(week), 500, Some(now))
        .await
        .unwrap();
    assert_eq!((step.trimmed, step.first), (3, 4));
    assert_eq!(xlen(&mut c, &keys.log("general")).await, 3);
    // A year later everything is old, but the newest entry stays (its seq carries on).
    let step = log
        .retain("general", Some(week), 500, Some(base + 365 * day))
        .await
        .unwrap();
    assert_eq!((step.trimmed, step.first), (2, 6));
    let latest = log.read_latest("general", 10).await.unwrap();
    assert_eq!(
        latest.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [6]
    );
    assert_eq!((latest.first, latest.top), (6, 6));
}

#[tokio::test]
async fn one_call_trims_at_most_its_budget() {
    let redis = RedisServer::start();
    let mut log = redis.log().await;
    let epoch = log.cluster_epoch().await.unwrap();
    for i in 1..=30 {
        send(&mut log, "general", &epoch, &format!("m{i}")).await;
    }
    let mut steps = Vec::new();
    loop {
        let step = log.retain("general", count(5), 10, None).await.unwrap();
        steps.push((step.trimmed, step.first, step.more));
        if !step.more {
            break;
        }
    }
    assert_eq!(steps, [(10, 11, true), (10, 21, true), (5, 26, false)]);
    let read = log.read_after("general", 0, 100).await.unwrap();
    assert_eq!(read.entries.len(), 5);
    assert_eq!(read.first, 26);
}

#[tokio::test]
async fn a_rooms_own_policy_is_kept_read_back_and_beats_the_default() {
    let redis = RedisServer::start();
    let mut log = redis.log().await;
    let epoch = log.cluster_epoch().await.unwrap();
    for room in ["own", "kept", "default"] {
        for i in 1..=8 {
            send(&mut log, room, &epoch, &format!("m{i}")).await;
        }
    }
    assert_eq!(log.retention("own").await.unwrap(), None);
    let three = Retention {
        max_age: Some(Duration::from_secs(86_400)),
        max_count: Some(3),
    };
    log.set_retention("own", three).await.unwrap();
    log.set_retention("kept", Retention::default())
        .await
        .unwrap();
    assert_eq!(log.retention("own").await.unwrap(), Some(three));
    assert_eq!(
        log.retention("kept").await.unwrap(),
        Some(Retention::default())
    );
    // Read back by another connection (another node).
    let mut other = redis.log().await;
    assert_eq!(other.retention("own").await.unwrap(), Some(three));

    let default = count(6);
    let first = |r: Retained| r.first;
    assert_eq!(
        first(other.retain("own", default, 500, None).await.unwrap()),
        6
    );
    // A room whose own policy keeps everything keeps everything, whatever the default.
    assert_eq!(
        other
            .retain("kept", default, 500, None)
            .await
            .unwrap()
            .trimmed,
        0
    );
    assert_eq!(
        first(other.retain("default", default, 500, None).await.unwrap()),
        3
    );
    // Without a default, a room without a policy keeps everything.
    for i in 9..=12 {
        send(&mut log, "default", &epoch, &format!("m{i}")).await;
    }
    assert_eq!(
        other
            .retain("default", None, 500, None)
            .await
            .unwrap()
            .trimmed,
        0
    );
}

#[tokio::test]
async fn a_room_without_a_log_is_left_alone() {
    let redis = RedisServer::start();
    let mut log = redis.log().await;
    let mut c = conn(&redis).await;
    let step = log.retain("nobody", count(1), 500, None).await.unwrap();
    assert_eq!(step, Retained::default());
    let keys = log.keys().clone();
    let n: u64 = redis::cmd("EXISTS")
        .arg(keys.meta("nobody"))
        .arg(keys.log("nobody"))
        .arg(keys.state("nobody"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 0, "a retention step creates no keys");
}

#[tokio::test]
async fn the_sweeper_finds_every_room_and_nothing_else() {
    let redis = RedisServer::start();
    let mut log = redis.log().await;
    let epoch = log.cluster_epoch().await.unwrap();
    let rooms = ["général", "a}b", "x{y", "50%", "plain"];
    for room in rooms {
        send(&mut log, room, &epoch, "hello").await;
    }
    // An idempotency key that ends like a stream key is not a room.
    let post = Post {
        user: "alice",
        body: "id",
        client_id: Some("x}:log"),
        detail: None,
    };
    log.commit("plain", &epoch, post).await.unwrap();
    let mut found = Vec::new();
    let mut cursor = 0;
    loop {
        let (next, page) = log.scan_rooms(cursor, 2).await.unwrap();
        found.extend(page);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    found.sort();
    let mut want: Vec<String> = rooms.iter().map(|r| (*r).to_owned()).collect();
    want.sort();
    assert_eq!(found, want);
    // Only one node takes a period's lease.
    let mut other = redis.log().await;
    assert!(log.take_sweep("n1", Duration::from_secs(60)).await.unwrap());
    assert!(
        !other
            .take_sweep("n2", Duration::from_secs(60))
            .await
            .unwrap()
    );
}

/// Waits until `room`'s stream holds `n` entries (within a bound, not a speed claim).
async fn wait_len(c: &mut redis::aio::MultiplexedConnection, log: &RedisLog, room: &str, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let len = xlen(c, &log.keys().log(room)).await;
        if len == n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{room}'s stream holds {len} entries, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The broker's sweeper enforces `Config::retention` in rooms no server holds (written
/// straight to the log here), and goes on after Redis went away and came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_trims_idle_rooms_and_outlives_a_redis_restart() {
    use std::sync::Arc;

    use chat_core::runtime::{Hub, HubConfig};
    use chat_redis::{BrokerOptions, RedisBroker};

    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let broker = RedisBroker::connect(
        &redis.url(),
        BrokerOptions {
            sweep_every: Duration::from_millis(100),
            heartbeat: Duration::from_millis(100),
            ..BrokerOptions::default()
        },
    )
    .await
    .expect("broker connects");
    let hub = Hub::spawn(HubConfig {
        core: chat_core::Config {
            retention: count(3),
            ..chat_core::Config::default()
        },
        cluster: Some(Arc::new(broker)),
        ..HubConfig::default()
    })
    .await
    .expect("cluster hub");
    let mut log = redis.log().await;
    let mut c = conn(&redis).await;
    let epoch = log.cluster_epoch().await.unwrap();
    for i in 1..=10 {
        send(&mut log, "idle", &epoch, &format!("m{i}")).await;
    }
    wait_len(&mut c, &log, "idle", 3).await;

    redis.restart();
    let mut log = redis.log().await;
    let mut c = conn(&redis).await;
    for i in 1..=10 {
        send(&mut log, "later", &epoch, &format!("m{i}")).await;
    }
    wait_len(&mut c, &log, "later", 3).await;
    let read = log.read_latest("later", 10).await.unwrap();
    assert_eq!((read.first, read.top), (8, 10));
    hub.shutdown().await;
}
