//! Hostile input over the wire: malformed JSON, binary frames, invalid UTF-8, oversize
//! frames, garbage and frame floods. Each gets an error frame or closes only that
//! connection with a close code and reason from our code; the server stays up and a
//! bystander in the same room loses nothing.

mod common;

use chat_axum::RouterOptions;
use chat_core::RequestId;
use chat_core::protocol::SendRequest;
use chat_core::runtime::HubConfig;
use chat_core::{
    Rate, Seq,
    protocol::{ClientFrame, ErrorCode, ServerFrame},
};
use common::{Client, Closed, TestServer};
use futures::SinkExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

const MAX_FRAME: usize = 64 * 1024;

fn bad_frame(frame: &ServerFrame) -> Option<Option<u64>> {
    match frame {
        ServerFrame::Error {
            id,
            code: ErrorCode::BadFrame,
            message,
        } => {
            assert!(!message.is_empty(), "errors explain themselves");
            Some(id.map(|i| i.0))
        }
        _ => None,
    }
}

/// The next reply to this client's own frames, skipping what others do in the room
/// (join and leave notices, their messages).
async fn reply(c: &mut Client) -> ServerFrame {
    loop {
        let f = c.recv().await;
        if !is_room_noise(&f) {
            return f;
        }
    }
}

fn is_room_noise(f: &ServerFrame) -> bool {
    matches!(
        f,
        ServerFrame::UserJoined { .. } | ServerFrame::UserLeft { .. } | ServerFrame::Message(_)
    )
}

/// Malformed JSON, unknown fields and binary frames get `bad_frame` errors (with the
/// request id when it can be read); the session goes on working.
async fn malformed_then_still_works(mallory: &mut Client) {
    mallory.send_raw(Message::text("{not json")).await;
    assert_eq!(bad_frame(&reply(mallory).await), Some(None));
    mallory
        .send_raw(Message::text(r#"{"type":"rooms","id":5,"surprise":true}"#))
        .await;
    assert_eq!(bad_frame(&reply(mallory).await), Some(Some(5)));
    mallory
        .send_raw(Message::text(r#"{"type":"launch_missiles","id":6}"#))
        .await;
    assert_eq!(bad_frame(&reply(mallory).await), Some(Some(6)));
    mallory.send_raw(Message::text("null")).await;
    assert_eq!(bad_frame(&reply(mallory).await), Some(None));
    mallory
        .send_raw(Message::binary(b"{\"type\":\"rooms\"}".to_vec()))
        .await;
    assert_eq!(bad_frame(&reply(mallory).await), Some(None));
    // Still a working session.
    mallory
        .send(&ClientFrame::Rooms {
            id: Some(RequestId(7)),
        })
        .await;
    assert!(matches!(
        reply(mallory).await,
        ServerFrame::Rooms {
            id: Some(RequestId(7)),
            ..
        }
    ));
}

/// Garbage frames over and over: each is answered, then the connection is closed as a
/// flood (1008) by the core's strike count.
async fn garbage_until_closed(mallory: &mut Client) -> Closed {
    for _ in 0..50 {
        mallory.ws.feed(Message::text("garbage")).await.ok();
    }
    mallory.ws.flush().await.ok();
    let (closed, frames) = mallory.expect_close().await;
    let answers: Vec<&ServerFrame> = frames.iter().filter(|f| !is_room_noise(f)).collect();
    assert!(
        !answers.is_empty(),
        "the first garbage frames were answered"
    );
    assert!(
        answers.iter().all(|f| bad_frame(f).is_some()),
        "only bad_frame errors: {answers:?}"
    );
    assert!(answers.len() < 50, "closed before all 50 were answered");
    closed
}

/// More frames than the flood limit allows, as fast as possible.
async fn flood_until_closed(mallory: &mut Client) -> Closed {
    for i in 0..1000u64 {
        if mallory
            .ws
            .feed(Message::text(
                serde_json::to_string(&ClientFrame::Rooms {
                    id: Some(chat_core::RequestId(i)),
                })
                .unwrap(),
            ))
            .await
            .is_err()
        {
            break;
        }
    }
    mallory.ws.flush().await.ok();
    let (closed, frames) = mallory.expect_close().await;
    assert!(
        frames.len() < 1000,
        "the flood was cut off ({} answers)",
        frames.len()
    );
    closed
}

/// A text frame of invalid UTF-8 (which the tungstenite client would never send).
async fn invalid_utf8_closed(mallory: &mut Client) -> Closed {
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    mallory.send_raw(Message::Frame(frame)).await;
    mallory.expect_close().await.0
}

/// One frame just over the limit.
async fn oversize_closed(mallory: &mut Client) -> Closed {
    mallory
        .send_raw(Message::text("x".repeat(MAX_FRAME + 1)))
        .await;
    mallory.expect_close().await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_and_binary_frames_get_error_frames() {
    let server = TestServer::start().await;
    let mut mallory = server.user("mallory").await;
    malformed_then_still_works(&mut mallory).await;
    // Before hello, too: an error, not a crash or a close.
    let mut early = server.client().await;
    early.send_raw(Message::text("][")).await;
    assert_eq!(bad_frame(&early.recv().await), Some(None));
    early.hello("early").await;
    server.stop_with(vec![mallory, early]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_at_the_limit_is_read_and_one_byte_more_is_closed_with_1009() {
    let server = TestServer::start().await;
    let mut mallory = server.user("mallory").await;
    // Exactly the limit: read and judged by the core (the body is over its own limit).
    let body_len = MAX_FRAME - r#"{"type":"send","id":3,"room":"general","body":""}"#.len();
    let send = ClientFrame::Send(SendRequest {
        id: Some(RequestId(3)),
        room: Some("general".into()),
        to: None,
        body: "b".repeat(body_len),
        client_id: None,
        reply_to: None,
    });
    let text = serde_json::to_string(&send).unwrap();
    assert_eq!(text.len(), MAX_FRAME);
    mallory.send_raw(Message::text(text)).await;
    assert!(matches!(
        mallory.recv().await,
        ServerFrame::Error {
            id: Some(RequestId(3)),
            code: ErrorCode::BodyTooLarge,
            ..
        }
    ));
    let closed = oversize_closed(&mut mallory).await;
    assert_eq!(
        closed,
        Closed {
            code: 1009,
            reason: "message too big".into()
        }
    );
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_is_closed_with_1007() {
    let server = TestServer::start().await;
    let mut mallory = server.user("mallory").await;
    let closed = invalid_utf8_closed(&mut mallory).await;
    assert_eq!(
        closed,
        Closed {
            code: 1007,
            reason: "invalid UTF-8".into()
        }
    );
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_garbage_is_closed_as_a_flood() {
    let server = TestServer::start().await;
    let mut mallory = server.user("mallory").await;
    let closed = garbage_until_closed(&mut mallory).await;
    assert_eq!(
        closed,
        Closed {
            code: 1008,
            reason: "flood".into()
        }
    );
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_flood_is_closed_with_reason_flood() {
    let server = TestServer::start().await;
    let mut mallory = server.user("mallory").await;
    let closed = flood_until_closed(&mut mallory).await;
    assert_eq!(
        closed,
        Closed {
            code: 1008,
            reason: "flood".into()
        }
    );
    server.stop().await.expect("clean stop");
}

/// Every kind of abuse at once, in the bystander's room, while a normal user keeps
/// posting: the bystander receives every message exactly once and in order, the
/// attackers are closed with their reasons, and the server accepts new users afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attackers_are_closed_while_a_bystander_loses_nothing() {
    const MESSAGES: u64 = 40;
    let mut config = HubConfig::default();
    // The honest sender posts faster than the default per-user limit.
    config.core.send_rate = Rate {
        burst: 1000,
        per_second: 1000,
    };
    let server = TestServer::with(config, RouterOptions::default()).await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;

    let mut attackers = Vec::new();
    for (name, kind) in [
        ("malformed", 0),
        ("garbage", 1),
        ("flooder", 2),
        ("oversize", 3),
        ("badutf8", 4),
    ] {
        let mut mallory = server.user(name).await;
        attackers.push(tokio::spawn(async move {
            match kind {
                0 => {
                    malformed_then_still_works(&mut mallory).await;
                    None
                }
                1 => Some(garbage_until_closed(&mut mallory).await),
                2 => Some(flood_until_closed(&mut mallory).await),
                3 => Some(oversize_closed(&mut mallory).await),
                _ => Some(invalid_utf8_closed(&mut mallory).await),
            }
            .map(|closed| (closed, None))
            .unwrap_or_else(|| {
                (
                    Closed {
                        code: 0,
                        reason: String::new(),
                    },
                    Some(mallory),
                )
            })
        }));
    }

    let sender = tokio::spawn(async move {
        for i in 1..=MESSAGES {
            bob.say(i, "general", &format!("m{i}"), Some(&format!("c{i}")))
                .await;
        }
        let mut acked = Vec::new();
        while acked.len() < MESSAGES as usize {
            if let ServerFrame::Ack { seq, duplicate, .. } = bob.recv().await {
                assert!(!duplicate);
                acked.push(seq.0);
            }
        }
        (bob, acked)
    });

    // Alice reads every message bob posts, in order, exactly once.
    let mut got = Vec::new();
    while got.len() < MESSAGES as usize {
        match alice.recv().await {
            ServerFrame::Message(m) => {
                assert_eq!(m.user.as_str(), "bob");
                got.push((m.seq, m.body.to_string()));
            }
            ServerFrame::UserJoined { .. } | ServerFrame::UserLeft { .. } => {}
            other => panic!("the bystander got an unexpected frame: {other:?}"),
        }
    }
    let expected: Vec<(Seq, String)> = (1..=MESSAGES).map(|i| (Seq(i), format!("m{i}"))).collect();
    assert_eq!(got, expected);
    let (bob, acked) = sender.await.expect("sender task");
    assert_eq!(acked, (1..=MESSAGES).collect::<Vec<_>>());

    let mut closes = Vec::new();
    let mut survivors = vec![alice, bob];
    for attacker in attackers {
        let (closed, survivor) = attacker.await.expect("attacker task");
        match survivor {
            Some(c) => survivors.push(c),
            None => closes.push((closed.code, closed.reason)),
        }
    }
    closes.sort();
    assert_eq!(
        closes,
        [
            (1007, "invalid UTF-8".to_owned()),
            (1008, "flood".to_owned()),
            (1008, "flood".to_owned()),
            (1009, "message too big".to_owned()),
        ]
    );

    // Still up: a newcomer joins and sees the conversation.
    let mut carol = server.client().await;
    carol.hello("carol").await;
    let joined = carol.expect_joined("general").await;
    assert_eq!(joined.last_seq, Seq(MESSAGES));
    let health = common::http_get(&server, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    survivors.push(carol);
    server.stop_with(survivors).await;
}
