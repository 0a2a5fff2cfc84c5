//! The runtime's side of cluster mode, with a scripted broker standing in for Redis: the
//! hub takes the broker's epoch, hands cluster outputs to it without waiting, and acts
//! on the answers it gets back; `Hub::spawn` refuses what cluster mode cannot be.

#![cfg(feature = "runtime")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_core::protocol::{ClientFrame, ServerFrame};
use chat_core::runtime::transport::PeerFrame;
use chat_core::runtime::{
    Broker, BrokerFuture, BrokerInbox, ClusterRequest, Hub, HubConfig, MemoryStore, SpawnError,
};
use chat_core::{Appended, Config, Input, LoadedRoom, Seq, StoreError};
use tokio::sync::mpsc;

const EPOCH: &str = "1767000000000-00000000000000aa";
const WAIT: Duration = Duration::from_secs(10);

/// Hands every request to the test, which answers through the inbox.
struct Scripted {
    inbox: Mutex<Option<BrokerInbox>>,
    requests: mpsc::UnboundedSender<ClusterRequest>,
}

impl Broker for Scripted {
    fn epoch(&self) -> String {
        EPOCH.into()
    }
    fn secret(&self) -> [u8; 32] {
        [7; 32]
    }
    fn start(&self, inbox: BrokerInbox) {
        *self.inbox.lock().unwrap() = Some(inbox);
    }
    fn submit(&self, request: ClusterRequest) {
        self.requests.send(request).unwrap();
    }
    fn stop(&self) -> BrokerFuture<'_> {
        Box::pin(async {})
    }
}

fn frame(json: &str) -> ClientFrame {
    serde_json::from_str(json).unwrap()
}

async fn next(c: &mut chat_core::runtime::transport::Connection) -> ServerFrame {
    tokio::time::timeout(WAIT, c.recv())
        .await
        .expect("a frame in time")
        .expect("open")
}

async fn request(rx: &mut mpsc::UnboundedReceiver<ClusterRequest>) -> ClusterRequest {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a request in time")
        .expect("open")
}

#[tokio::test]
async fn a_hub_with_a_broker_posts_through_it() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let broker = Arc::new(Scripted {
        inbox: Mutex::new(None),
        requests: tx,
    });
    let hub = Hub::spawn(HubConfig {
        cluster: Some(broker.clone()),
        ..HubConfig::default()
    })
    .await
    .expect("cluster mode starts");
    let inbox = broker.inbox.lock().unwrap().clone().expect("started");
    let mut alice = hub.connect().await.unwrap();
    alice
        .send(frame(
            r#"{"type":"hello","version":1,"name":"alice","rooms":[]}"#,
        ))
        .await
        .unwrap();
    // The name is reserved over the cluster through the broker before the welcome.
    let ClusterRequest::ClaimName { session, .. } = request(&mut rx).await else {
        panic!("ClaimName first")
    };
    inbox
        .answer(Input::NameClaimed {
            session,
            result: Ok(true),
        })
        .unwrap();
    match next(&mut alice).await {
        ServerFrame::Welcome { epoch, .. } => assert_eq!(epoch, EPOCH),
        other => panic!("{other:?}"),
    }
    // Her first session here asks for her read markers (kept by the log).
    let ClusterRequest::LoadReadMarkers { user } = request(&mut rx).await else {
        panic!("LoadReadMarkers after the welcome")
    };
    assert_eq!(user.as_str(), "alice");
    // The room is loaded through the broker before the join is answered.
    alice
        .send(frame(r#"{"type":"join","id":1,"room":"lobby"}"#))
        .await
        .unwrap();
    let ClusterRequest::LoadRoom { room } = request(&mut rx).await else {
        panic!("LoadRoom first")
    };
    inbox
        .answer(Input::RoomLoaded {
            room: room.clone(),
            result: Ok(LoadedRoom::default()),
        })
        .unwrap();
    assert!(matches!(next(&mut alice).await, ServerFrame::Joined { .. }));
    // A post is the broker's to commit; the ack waits for its answer.
    alice
        .send(frame(
            r#"{"type":"send","id":2,"room":"lobby","body":"hi","client_id":"c1"}"#,
        ))
        .await
        .unwrap();
    let ticket = loop {
        match request(&mut rx).await {
            ClusterRequest::Append {
                ticket, body, room, ..
            } => {
                assert_eq!((&*body, room.as_str()), ("hi", "lobby"));
                break ticket;
            }
            ClusterRequest::Presence { entered, .. } => assert!(entered),
            other => panic!("{other:?}"),
        }
    };
    inbox
        .answer(Input::Appended {
            room: room.clone(),
            ticket,
            result: Ok(Appended {
                seq: Seq(1),
                ts: chrono::DateTime::from_timestamp_millis(1_767_000_000_000).unwrap(),
                duplicate: false,
            }),
        })
        .unwrap();
    match next(&mut alice).await {
        ServerFrame::Message(m) => assert_eq!((m.seq, &*m.body), (Seq(1), "hi")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        next(&mut alice).await,
        ServerFrame::Ack { seq: Seq(1), .. }
    ));
    // A post the broker could not commit is refused, retryably, and shown to nobody.
    alice
        .send(frame(
            r#"{"type":"send","id":3,"room":"lobby","body":"lost?","client_id":"c2"}"#,
        ))
        .await
        .unwrap();
    let ClusterRequest::Append { ticket, .. } = request(&mut rx).await else {
        panic!("Append")
    };
    inbox
        .answer(Input::Appended {
            room,
            ticket,
            result: Err(StoreError::Unavailable("redis: timed out".into())),
        })
        .unwrap();
    match next(&mut alice).await {
        ServerFrame::Error { code, .. } => {
            assert_eq!(code, chat_core::protocol::ErrorCode::StorageUnavailable);
        }
        other => panic!("{other:?}"),
    }
    hub.shutdown().await;
}

/// Transport rule 3 in cluster mode: a send waiting for the shared log is owed to its
/// session (its ack and the message itself) until the log has answered, committed or
/// refused, so a transport does not hand over more while the answers are on their way.
#[tokio::test]
async fn a_send_waiting_for_the_log_is_owed_until_the_log_answers() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let broker = Arc::new(Scripted {
        inbox: Mutex::new(None),
        requests: tx,
    });
    let hub = Hub::spawn(HubConfig {
        cluster: Some(broker.clone()),
        ..HubConfig::default()
    })
    .await
    .expect("cluster mode starts");
    let inbox = broker.inbox.lock().unwrap().clone().expect("started");
    let mut alice = hub.connect().await.unwrap();
    alice
        .send(frame(
            r#"{"type":"hello","version":1,"name":"alice","rooms":[]}"#,
        ))
        .await
        .unwrap();
    let ClusterRequest::ClaimName { session, .. } = request(&mut rx).await else {
        panic!("ClaimName first")
    };
    inbox
        .answer(Input::NameClaimed {
            session,
            result: Ok(true),
        })
        .unwrap();
    assert!(matches!(
        next(&mut alice).await,
        ServerFrame::Welcome { .. }
    ));
    assert!(matches!(
        request(&mut rx).await,
        ClusterRequest::LoadReadMarkers { .. }
    ));
    alice
        .send(frame(r#"{"type":"join","id":1,"room":"lobby"}"#))
        .await
        .unwrap();
    let ClusterRequest::LoadRoom { room } = request(&mut rx).await else {
        panic!("LoadRoom first")
    };
    inbox
        .answer(Input::RoomLoaded {
            room: room.clone(),
            result: Ok(LoadedRoom::default()),
        })
        .unwrap();
    assert!(matches!(next(&mut alice).await, ServerFrame::Joined { .. }));
    let (mut inbound, mut out) = alice.split();
    for id in 2..5 {
        let send = format!(r#"{{"type":"send","id":{id},"room":"lobby","body":"m{id}"}}"#);
        inbound
            .send(PeerFrame::Text(send.as_bytes()))
            .await
            .unwrap();
    }
    let mut tickets = Vec::new();
    while tickets.len() < 3 {
        match request(&mut rx).await {
            ClusterRequest::Append { ticket, .. } => tickets.push(ticket),
            ClusterRequest::Presence { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(out.queued(), 0, "nothing answered yet");
    assert_eq!(out.owed(), 6, "an ack and a message per send");
    let committed = |seq| {
        Ok(Appended {
            seq: Seq(seq),
            ts: chrono::DateTime::from_timestamp_millis(1_767_000_000_000).unwrap(),
            duplicate: false,
        })
    };
    let answers = [
        committed(1),
        committed(2),
        Err(StoreError::Unavailable("redis: timed out".into())),
    ];
    for (ticket, result) in tickets.into_iter().zip(answers) {
        let room = room.clone();
        inbox
            .answer(Input::Appended {
                room,
                ticket,
                result,
            })
            .unwrap();
    }
    // Two messages, two acks and the refusal.
    let mut batch = Vec::new();
    while batch.len() < 5 {
        let took = tokio::time::timeout(WAIT, out.recv_many(&mut batch, Default::default()));
        assert!(matches!(took.await, Ok(1..)), "after {batch:?}");
    }
    for _ in 0..100 {
        if out.owed() == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(out.owed(), 0, "settled by the log's answers");
    hub.shutdown().await;
}

#[tokio::test]
async fn spawn_refuses_what_cluster_mode_cannot_be() {
    let by_hand = Hub::spawn(HubConfig {
        core: Config {
            cluster: true,
            ..Config::default()
        },
        ..HubConfig::default()
    })
    .await;
    assert!(
        matches!(
            by_hand,
            Err(SpawnError::RuntimeOwned {
                field: "cluster",
                ..
            })
        ),
        "{by_hand:?}"
    );
    let (tx, _rx) = mpsc::unbounded_channel();
    let with_store = Hub::spawn(HubConfig {
        cluster: Some(Arc::new(Scripted {
            inbox: Mutex::new(None),
            requests: tx,
        })),
        store: Some(Arc::new(MemoryStore::new("e"))),
        ..HubConfig::default()
    })
    .await;
    assert!(
        matches!(with_store, Err(SpawnError::RuntimeOwned { .. })),
        "{with_store:?}"
    );
}

/// Cluster mode: a moderation change goes to the broker to be written into the shared
/// state, with the action to relay after it; the host's call returns once the broker
/// has answered. A timed ban's end is neither relayed nor written (every server ends
/// it by itself), and an action another server relayed is carried out without being
/// written again.
#[tokio::test]
async fn moderation_is_written_through_the_broker_before_the_host_is_answered() {
    use chat_core::ModerationChange;
    use chat_core::protocol::ModAction;
    use chat_core::runtime::ClusterControl;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let broker = Arc::new(Scripted {
        inbox: Mutex::new(None),
        requests: tx,
    });
    let hub = Hub::spawn(HubConfig {
        cluster: Some(broker.clone()),
        ..HubConfig::default()
    })
    .await
    .expect("cluster mode starts");
    let inbox = broker.inbox.lock().unwrap().clone().expect("started");
    let ban = hub.ban("lobby", "bob", "spam", Some(Duration::from_millis(300)));
    tokio::pin!(ban);
    // The host waits for the write.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut ban)
            .await
            .is_err(),
        "answered before the write"
    );
    let ClusterRequest::SaveModeration {
        ticket,
        change,
        relay,
    } = request(&mut rx).await
    else {
        panic!("SaveModeration first")
    };
    assert!(
        matches!(&change, ModerationChange::Ban { user, until: Some(_), .. } if user.as_str() == "bob"),
        "{change:?}"
    );
    assert!(
        matches!(
            &relay,
            Some(ClusterControl::Moderated {
                action: ModAction::Ban,
                ..
            })
        ),
        "the action is published after the write: {relay:?}"
    );
    inbox
        .answer(Input::ModerationSaved {
            ticket,
            result: Ok(()),
        })
        .unwrap();
    let answer = tokio::time::timeout(WAIT, ban).await.unwrap();
    assert_eq!(answer, Ok(Ok(0)));
    // The ban ends here by itself: nothing goes to the broker for it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        rx.try_recv().is_err(),
        "the end is neither relayed nor written"
    );
    // Another server's action is carried out here (reported to this host) without a
    // write.
    let mut events = hub.events();
    inbox
        .relayed(ClusterControl::Topic {
            room: chat_core::RoomName::parse("lobby", 64, 32).unwrap(),
            topic: "from elsewhere".into(),
            by: None,
        })
        .await
        .unwrap();
    let topic = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(chat_core::Event::TopicChanged { topic, .. }) = events.recv().await {
                return topic;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(topic, "from elsewhere");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        rx.try_recv().is_err(),
        "a relayed action is not written again"
    );
}
