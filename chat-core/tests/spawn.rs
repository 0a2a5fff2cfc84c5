//! `Hub::spawn` takes the configuration as given or refuses it: it never silently
//! overwrites a field the caller set.
#![cfg(feature = "runtime")]

use chat_core::protocol::{ClientFrame, HelloRequest, ServerFrame};
use chat_core::runtime::{Hub, HubConfig, MemoryStore, SpawnError};
use std::sync::Arc;

#[tokio::test]
async fn durable_without_a_store_is_refused() {
    let mut config = HubConfig::default();
    config.core.durable = true;
    let err = Hub::spawn(config).await.unwrap_err();
    assert!(
        matches!(
            err,
            SpawnError::RuntimeOwned {
                field: "durable",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn an_epoch_set_by_the_caller_is_refused() {
    let mut config = HubConfig::default();
    config.core.epoch = "mine".into();
    let err = Hub::spawn(config).await.unwrap_err();
    assert!(
        matches!(err, SpawnError::RuntimeOwned { field: "epoch", .. }),
        "{err}"
    );
}

/// Two hubs given the same secret hand the same name the same token: processes of one
/// deployment agree. Without a secret each hub draws its own.
#[tokio::test]
async fn a_secret_set_by_the_caller_is_used() {
    async fn token(secret: [u8; 32]) -> Option<String> {
        let mut config = HubConfig::default();
        config.core.secret = secret;
        config.store = Some(Arc::new(MemoryStore::default()));
        let hub = Hub::spawn(config).await.unwrap();
        let mut alice = hub.connect().await.unwrap();
        alice
            .send(ClientFrame::Hello(HelloRequest {
                id: None,
                version: 1,
                name: "alice".into(),
                token: None,
                rooms: Some(vec![]),
            }))
            .await
            .unwrap();
        let Some(ServerFrame::Welcome { token, .. }) = alice.recv().await else {
            panic!("welcome first");
        };
        hub.shutdown().await;
        token
    }
    let shared = [7; 32];
    assert_eq!(token(shared).await, token(shared).await);
    assert_ne!(token([0; 32]).await, token([0; 32]).await);
}
