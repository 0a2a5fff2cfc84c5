//! Several users chatting over real WebSockets: hello, join, fan-out, presence,
//! history, typing, direct messages, acks and idempotent resends, and resume after a
//! dropped connection.

mod common;

use chat_core::protocol::SendRequest;
use std::time::Duration;

use chat_axum::RouterOptions;
use chat_core::protocol::JoinSpec;
use chat_core::runtime::HubConfig;
use chat_core::{
    Seq,
    protocol::{ClientFrame, ErrorCode, ServerFrame},
};
use chrono::{SecondsFormat, Utc};
use common::{TestServer, as_message, wait_session_closed};

fn names(list: &[chat_core::UserName]) -> Vec<&str> {
    list.iter().map(|n| n.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_hello_join_fan_out_ack_and_resend() {
    let server = TestServer::start().await;
    let mut alice = server.client().await;
    alice.hello("alice").await;
    let joined = alice.expect_joined("general").await;
    assert_eq!(joined.members, ["alice"]);
    assert!(joined.messages.is_empty());
    assert_eq!(joined.last_seq, Seq(0));
    assert!(!joined.gap);

    let mut bob = server.client().await;
    bob.hello("bob").await;
    assert_ne!(alice.session(), bob.session());
    let joined = bob.expect_joined("general").await;
    assert_eq!(joined.members, ["alice", "bob"]);
    match alice.recv().await {
        ServerFrame::UserJoined { room, user, .. } => {
            assert_eq!((room.as_str(), user.as_str()), ("general", "bob"));
        }
        other => panic!("alice expected bob's join notice, got {other:?}"),
    }

    // A message: the author gets it and an ack, the other member gets it, once each.
    let before = Utc::now();
    alice.say(10, "general", "hello bob", Some("c-1")).await;
    let raw = bob.recv_text().await;
    let after = Utc::now();
    let ServerFrame::Message(m) = serde_json::from_str(&raw).expect("decodes") else {
        panic!("bob expected a message, got {raw}");
    };
    assert_eq!(m.room.as_str(), "general");
    assert_eq!(m.user.as_str(), "alice");
    assert_eq!(&*m.body, "hello bob");
    assert_eq!(m.seq, Seq(1));
    // The client id is for the author's own sessions: bob's copy comes without it.
    assert_eq!(m.client_id, None);
    assert!(!raw.contains("client_id"), "{raw}");
    // The server stamps UTC with milliseconds, on the wire as RFC 3339 with `Z`.
    let wire_ts = m.ts.to_rfc3339_opts(SecondsFormat::Millis, true);
    assert!(
        raw.contains(&format!("\"ts\":\"{wire_ts}\"")),
        "timestamp on the wire is RFC 3339 UTC with milliseconds: {raw}"
    );
    // The server's clock, not the client's: never later than the delivery, and not
    // before the send by more than the driver's batching (it reads the clock once per
    // batch of inputs, so a stamp may precede the send by that batch's duration).
    let ms = chrono::Duration::milliseconds(1);
    assert!(
        m.ts <= after + ms,
        "server time {} after delivery at {after}",
        m.ts
    );
    assert!(
        m.ts >= before - chrono::Duration::seconds(5),
        "server time {} long before the send at {before}",
        m.ts
    );
    let mine = alice.recv().await;
    let mine = as_message(&mine);
    assert_eq!(
        mine.client_id.as_deref(),
        Some("c-1"),
        "the author's copy has it"
    );
    let without = chat_core::protocol::Message {
        client_id: None,
        ..mine.clone()
    };
    assert_eq!(without, *m);
    match alice.recv().await {
        ServerFrame::Ack {
            id,
            room,
            seq,
            ts,
            client_id,
            duplicate,
        } => {
            assert_eq!(id, Some(chat_core::RequestId(10)));
            assert_eq!(room.as_str(), "general");
            assert_eq!(seq, Seq(1));
            assert_eq!(ts, m.ts);
            assert_eq!(client_id.as_deref(), Some("c-1"));
            assert!(!duplicate);
        }
        other => panic!("alice expected an ack, got {other:?}"),
    }

    // The same client id again: acked as a duplicate with the original seq, not posted.
    alice.say(11, "general", "hello bob", Some("c-1")).await;
    match alice.recv().await {
        ServerFrame::Ack {
            id,
            seq,
            duplicate,
            ts,
            ..
        } => {
            assert_eq!(id, Some(chat_core::RequestId(11)));
            assert_eq!(seq, Seq(1));
            assert_eq!(ts, m.ts);
            assert!(duplicate, "a resend is marked duplicate");
        }
        other => panic!("alice expected a duplicate ack, got {other:?}"),
    }
    // Bob's next frame is the next real message: the resend was not posted.
    bob.say(1, "general", "hi alice", None).await;
    let m2 = as_message(&bob.recv().await).clone();
    assert_eq!((m2.seq, m2.user.as_str()), (Seq(2), "bob"));
    assert!(m2.ts >= m.ts, "timestamps do not go backwards");
    assert!(matches!(
        bob.recv().await,
        ServerFrame::Ack {
            seq: Seq(2),
            duplicate: false,
            ..
        }
    ));
    assert_eq!(*as_message(&alice.recv().await), m2);

    server.stop_with(vec![alice, bob]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_users_presence_history_typing_direct_messages_and_leave() {
    let mut config = HubConfig::default();
    // A disconnect is announced after the grace period; keep it short here (the wait
    // below is for the notice itself, not a sleep).
    config.core.presence_grace = Duration::from_millis(200);
    let server = TestServer::with(config, RouterOptions::default()).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    alice
        .recv_until("bob joined", |f| {
            matches!(f, ServerFrame::UserJoined { user, .. } if user.as_str() == "bob")
                .then_some(())
        })
        .await;
    for i in 1..=3 {
        alice.say(i, "general", &format!("m{i}"), None).await;
    }
    for i in 1..=3u64 {
        assert_eq!(as_message(&bob.recv().await).seq, Seq(i));
    }

    // Carol arrives late: the members and the recent history come with `joined`.
    let mut carol = server.client().await;
    carol.hello("carol").await;
    let joined = carol.expect_joined("general").await;
    assert_eq!(joined.members, ["alice", "bob", "carol"]);
    let bodies: Vec<&str> = joined.messages.iter().map(|m| &*m.body).collect();
    assert_eq!(bodies, ["m1", "m2", "m3"]);
    let seqs: Vec<u64> = joined.messages.iter().map(|m| m.seq.0).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(joined.last_seq, Seq(3));
    for c in [&mut alice, &mut bob] {
        c.recv_until("carol joined", |f| {
            matches!(f, ServerFrame::UserJoined { user, .. } if user.as_str() == "carol")
                .then_some(())
        })
        .await;
    }

    // The presence list on request.
    carol
        .send(&ClientFrame::Members {
            id: Some(chat_core::RequestId(5)),
            room: "general".into(),
            after: None,
            limit: None,
        })
        .await;
    match carol.recv().await {
        ServerFrame::Members {
            id,
            room,
            members,
            count: None,
            more: None,
        } => {
            assert_eq!(id, Some(chat_core::RequestId(5)));
            assert_eq!(room.as_str(), "general");
            assert_eq!(names(&members), ["alice", "bob", "carol"]);
        }
        other => panic!("expected members, got {other:?}"),
    }

    // Typing reaches the others, not the typist; stopping is announced too.
    bob.send(&ClientFrame::Typing {
        room: "general".into(),
        active: true,
    })
    .await;
    for c in [&mut alice, &mut carol] {
        match c.recv().await {
            ServerFrame::Typing { room, user, active } => {
                assert_eq!(
                    (room.as_str(), user.as_str(), active),
                    ("general", "bob", true)
                );
            }
            other => panic!("expected bob typing, got {other:?}"),
        }
    }
    bob.send(&ClientFrame::Typing {
        room: "general".into(),
        active: false,
    })
    .await;
    for c in [&mut alice, &mut carol] {
        assert!(matches!(
            c.recv().await,
            ServerFrame::Typing { active: false, ref user, .. } if user.as_str() == "bob"
        ));
    }

    // A direct message: both sides get it in the `@alice,bob` room, carol does not.
    alice
        .send(&ClientFrame::Send(SendRequest {
            id: Some(chat_core::RequestId(20)),
            room: None,
            to: Some("bob".into()),
            body: "psst".into(),
            client_id: None,
            reply_to: None,
        }))
        .await;
    let dm = as_message(&bob.recv().await).clone();
    assert_eq!(dm.room.as_str(), "@alice,bob");
    assert_eq!(
        (dm.user.as_str(), &*dm.body, dm.seq),
        ("alice", "psst", Seq(1))
    );
    assert_eq!(*as_message(&alice.recv().await), dm);
    match alice.recv().await {
        ServerFrame::Ack { id, room, seq, .. } => {
            assert_eq!(
                (id, room.as_str(), seq),
                (Some(chat_core::RequestId(20)), "@alice,bob", Seq(1))
            );
        }
        other => panic!("expected the DM ack, got {other:?}"),
    }
    // A direct message to nobody online is an error with the request id.
    alice
        .send(&ClientFrame::Send(SendRequest {
            id: Some(chat_core::RequestId(21)),
            room: None,
            to: Some("nobody".into()),
            body: "hello?".into(),
            client_id: None,
            reply_to: None,
        }))
        .await;
    assert!(matches!(
        alice.recv().await,
        ServerFrame::Error {
            id: Some(chat_core::RequestId(21)),
            code: ErrorCode::UserNotFound,
            ..
        }
    ));

    // Carol leaves: she gets `left`, the others a notice. Her next room frame would be a
    // message in general; she gets none (checked through the DM fence below).
    carol
        .send(&ClientFrame::Leave {
            id: Some(chat_core::RequestId(6)),
            room: "general".into(),
        })
        .await;
    match carol.recv().await {
        ServerFrame::Left { id, room } => assert_eq!(
            (id, room.as_str()),
            (Some(chat_core::RequestId(6)), "general")
        ),
        other => panic!("expected left, got {other:?}"),
    }
    for c in [&mut alice, &mut bob] {
        match c.recv().await {
            ServerFrame::UserLeft { room, user, .. } => {
                assert_eq!((room.as_str(), user.as_str()), ("general", "carol"));
            }
            other => panic!("expected carol's leave notice, got {other:?}"),
        }
    }
    bob.say(7, "general", "after carol left", None).await;
    assert_eq!(&*as_message(&alice.recv().await).body, "after carol left");
    // Fence: the next thing carol receives is a DM sent after that room message, so
    // neither the earlier DM between alice and bob nor the room message reached her.
    bob.send(&ClientFrame::Send(SendRequest {
        id: Some(chat_core::RequestId(8)),
        room: None,
        to: Some("carol".into()),
        body: "fence".into(),
        client_id: None,
        reply_to: None,
    }))
    .await;
    let fence = as_message(&carol.recv().await).clone();
    assert_eq!((fence.room.as_str(), &*fence.body), ("@bob,carol", "fence"));

    // Bob's connection goes away: after the grace period alice is told he left.
    let mut events = server.hub.events();
    let bob_session = bob.session();
    drop(bob);
    wait_session_closed(&mut events, bob_session).await;
    let (_, skipped) = alice
        .recv_until("bob left", |f| match f {
            ServerFrame::UserLeft { room, user, .. } if user.as_str() == "bob" => {
                assert_eq!(room.as_str(), "general");
                Some(())
            }
            _ => None,
        })
        .await;
    assert!(
        skipped
            .iter()
            .all(|f| matches!(f, ServerFrame::Message(_) | ServerFrame::Ack { .. })),
        "alice got only bob's room message and her ack before the notice: {skipped:?}"
    );
    server.stop_with(vec![alice, carol]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_a_dropped_connection_delivers_the_missed_messages_exactly_once() {
    let mut config = HubConfig::default();
    // Long enough that bob's name and presence are certainly held while he is away.
    config.core.presence_grace = Duration::from_secs(300);
    let server = TestServer::with(config, RouterOptions::default()).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    alice
        .recv_until("bob joined", |f| {
            matches!(f, ServerFrame::UserJoined { .. }).then_some(())
        })
        .await;

    for i in 1..=3u64 {
        alice.say(i, "general", &format!("before {i}"), None).await;
        assert_eq!(as_message(&bob.recv().await).seq, Seq(i));
    }
    let last_seen = Seq(3);

    // The connection drops (no close handshake); the server notices.
    let mut events = server.hub.events();
    let old_session = bob.session();
    let token = bob.token.clone();
    drop(bob);
    wait_session_closed(&mut events, old_session).await;

    // Sent while bob is away.
    for i in 4..=6u64 {
        alice.say(i, "general", &format!("away {i}"), None).await;
    }

    let mut bob = server.client().await;
    bob.token = token;
    bob.hello_with(
        "bob",
        Some(vec![JoinSpec {
            room: "general".into(),
            since: Some(last_seen),
        }]),
    )
    .await;
    assert_ne!(bob.session(), old_session);
    let joined = bob.expect_joined("general").await;
    assert!(!joined.gap);
    let got: Vec<(u64, String)> = joined
        .messages
        .iter()
        .map(|m| (m.seq.0, m.body.to_string()))
        .collect();
    assert_eq!(
        got,
        [
            (4, "away 4".to_owned()),
            (5, "away 5".to_owned()),
            (6, "away 6".to_owned())
        ]
    );
    assert_eq!(joined.last_seq, Seq(6));
    assert_eq!(joined.members, ["alice", "bob"]);

    // Live again: the next message arrives once, and nothing before it is repeated.
    alice.say(7, "general", "welcome back", None).await;
    let m = as_message(&bob.recv().await).clone();
    assert_eq!((m.seq, &*m.body), (Seq(7), "welcome back"));

    // Within the grace period the drop was not announced to alice as leave + join.
    let (_, skipped) = alice
        .recv_until("ack of 7", |f| {
            matches!(
                f,
                ServerFrame::Ack {
                    id: Some(chat_core::RequestId(7)),
                    ..
                }
            )
            .then_some(())
        })
        .await;
    assert!(
        skipped
            .iter()
            .all(|f| matches!(f, ServerFrame::Message(_) | ServerFrame::Ack { .. })),
        "no presence flapping for a reconnect within the grace period: {skipped:?}"
    );
    server.stop_with(vec![alice, bob]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_beyond_the_window_reports_a_gap() {
    let mut config = HubConfig::default();
    config.core.presence_grace = Duration::from_secs(300);
    config.core.history_window = 4;
    config.core.history_on_join = 4;
    let server = TestServer::with(config, RouterOptions::default()).await;
    let mut alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let mut events = server.hub.events();
    let old = bob.session();
    let token = bob.token.clone();
    drop(bob);
    wait_session_closed(&mut events, old).await;
    for i in 1..=8u64 {
        alice.say(i, "general", &format!("m{i}"), None).await;
        alice
            .recv_until("ack", |f| {
                matches!(f, ServerFrame::Ack { .. }).then_some(())
            })
            .await;
    }
    let mut bob = server.client().await;
    bob.token = token;
    bob.hello_with(
        "bob",
        Some(vec![JoinSpec {
            room: "general".into(),
            since: Some(Seq(0)),
        }]),
    )
    .await;
    let joined = bob.expect_joined("general").await;
    assert!(
        joined.gap,
        "messages 1..=4 are no longer held: an explicit gap"
    );
    let seqs: Vec<u64> = joined.messages.iter().map(|m| m.seq.0).collect();
    assert_eq!(seqs, [5, 6, 7, 8], "the latest messages, oldest first");
    assert_eq!(joined.last_seq, Seq(8));
    server.stop_with(vec![alice, bob]).await;
}
