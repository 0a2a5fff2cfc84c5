//! A name held by a node stays held past its lease for as long as the user is there (the
//! broker renews it), and is free again within a lease after the user has gone for good.
//! A short lease and grace period keep the test to seconds, on a real `redis-server`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chat_core::Config;
use chat_core::protocol::{ClientFrame, ServerFrame, decode};
use chat_core::runtime::{Hub, HubConfig};
use chat_redis::{BrokerOptions, RedisBroker};
use common::RedisServer;

const LEASE: Duration = Duration::from_millis(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_name_outlives_its_lease_and_is_freed_after_the_user_goes() {
    let redis = RedisServer::start();
    let broker = RedisBroker::connect(
        &redis.url(),
        BrokerOptions {
            name_lease: LEASE,
            heartbeat: Duration::from_millis(100),
            ..BrokerOptions::default()
        },
    )
    .await
    .expect("broker connects");
    let hub = Hub::spawn(HubConfig {
        core: Config {
            presence_grace: Duration::from_millis(200),
            ..Config::default()
        },
        cluster: Some(Arc::new(broker)),
        ..HubConfig::default()
    })
    .await
    .expect("cluster hub");
    let mut alice = hub.connect().await.unwrap();
    let hello: ClientFrame =
        decode(br#"{"type":"hello","version":1,"name":"alice","rooms":[]}"#).unwrap();
    alice.send(hello).await.unwrap();
    let welcome = tokio::time::timeout(Duration::from_secs(10), alice.recv())
        .await
        .expect("welcomed in time")
        .expect("open");
    assert!(
        matches!(welcome, ServerFrame::Welcome { .. }),
        "{welcome:?}"
    );

    // Five leases later, with alice still connected, nobody else can take the name.
    let mut other = redis.log().await;
    tokio::time::sleep(LEASE * 5).await;
    assert!(
        !other
            .claim_name("alice", "someone-else", LEASE)
            .await
            .unwrap(),
        "the broker renews the name while alice is here"
    );

    // alice goes; after her grace period the node lets the name lapse within a lease.
    drop(alice);
    tokio::time::sleep(Duration::from_millis(200) + LEASE * 3).await;
    assert!(
        other
            .claim_name("alice", "someone-else", LEASE)
            .await
            .unwrap(),
        "a name let go is free again"
    );
}
