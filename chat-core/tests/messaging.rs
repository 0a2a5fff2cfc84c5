//! Messages: fan-out to every member session exactly once, seq and server timestamps,
//! acks, idempotent resends, and direct messages.

mod common;

use chat_core::RequestId;
use std::time::Duration;

use chat_core::protocol::{ErrorCode, ServerFrame};
use chat_core::{Event, SessionId};
use common::{Sim, bodies, is_rfc3339_millis, room, seqs};
use serde_json::json;

/// alice with two tabs (1, 2), bob (3) in general; carol (4) only in "other".
fn four_sessions() -> Sim {
    let mut sim = Sim::new();
    let token = sim.hello(1, "alice");
    sim.hello_with_token(2, "alice", &token);
    sim.hello(3, "bob");
    sim.connect(4);
    sim.say(
        4,
        json!({"type":"hello","version":1,"name":"carol","rooms":[{"room":"other"}]}),
    );
    sim.clear();
    sim
}

#[test]
fn a_message_reaches_every_member_session_exactly_once_and_the_sender_gets_an_ack() {
    let mut sim = four_sessions();
    sim.say(
        1,
        json!({"type":"send","id":42,"room":"general","body":"hi all"}),
    );

    let frames = sim.expect_kinds(1, &["message", "ack"]);
    let ServerFrame::Message(msg) = &frames[0] else {
        unreachable!()
    };
    assert_eq!(msg.room, room("general"));
    assert_eq!(msg.user.as_str(), "alice");
    assert_eq!(&*msg.body, "hi all");
    assert_eq!(msg.seq.0, 1);
    assert_eq!(msg.ts.timestamp_millis(), sim.now.utc.timestamp_millis());
    match &frames[1] {
        ServerFrame::Ack {
            id,
            room: r,
            seq,
            ts,
            client_id,
            duplicate,
        } => {
            assert_eq!(*id, Some(RequestId(42)));
            assert_eq!(*r, room("general"));
            assert_eq!(*seq, msg.seq);
            assert_eq!(*ts, msg.ts);
            assert_eq!(*client_id, None);
            assert!(!duplicate);
        }
        _ => unreachable!(),
    }
    // alice's other tab and bob get the very same message, once, and no ack.
    for s in [2, 3] {
        let got = sim.take_messages(s);
        assert_eq!(got.len(), 1, "session {s}");
        assert_eq!(got[0], *msg);
    }
    // carol is not in general.
    sim.expect_nothing(4);
    assert!(
        sim.events
            .iter()
            .any(|e| matches!(e, Event::MessagePosted(m) if *m == *msg))
    );
}

#[test]
fn a_message_is_encoded_once_and_every_recipient_shares_the_bytes() {
    let mut sim = four_sessions();
    // Drive the server by hand to look at the outputs themselves.
    let now = sim.now;
    let frame = chat_core::protocol::decode(
        br#"{"type":"send","id":1,"room":"general","body":"one encoding"}"#,
    );
    sim.server
        .handle_input(
            now,
            chat_core::Input::Received {
                session: SessionId(3),
                frame,
            },
        )
        .unwrap();
    let mut shared = Vec::new();
    while let Some(out) = sim.server.poll_output() {
        for (to, frame) in out.sends() {
            if frame.text().contains(r#""type":"message""#) {
                shared.push((to, frame.clone()));
            }
        }
    }
    let to: Vec<u64> = shared.iter().map(|(to, _)| to.0).collect();
    assert_eq!(to, [1, 2, 3]);
    let ptr = shared[0].1.bytes().as_ptr();
    for (to, frame) in &shared {
        assert_eq!(frame.bytes().as_ptr(), ptr, "session {to} got its own copy");
        assert!(!frame.is_ephemeral(), "messages are never dropped silently");
    }
}

#[test]
fn a_room_message_is_one_output_whatever_the_room_size() {
    let mut sim = four_sessions();
    let now = sim.now;
    let frame = chat_core::protocol::decode(
        br#"{"type":"send","id":1,"room":"general","body":"one output"}"#,
    );
    let input = chat_core::Input::Received {
        session: SessionId(3),
        frame,
    };
    sim.server.handle_input(now, input).unwrap();
    let mut carrying = 0;
    while let Some(out) = sim.server.poll_output() {
        if out
            .sends()
            .any(|(_, f)| f.text().contains(r#""type":"message""#))
        {
            carrying += 1;
            let chat_core::Output::Broadcast { to, .. } = &out else {
                panic!("a room message goes out as one broadcast: {out:?}");
            };
            assert_eq!(to.iter().map(|s| s.0).collect::<Vec<_>>(), [1, 2, 3]);
        }
    }
    assert_eq!(carrying, 1, "one output for the three recipients");
}

/// The author's `client_id` goes to the author's own sessions only, live, in `joined`
/// and in `history`; everyone else gets the same message without it.
#[test]
fn only_the_authors_sessions_get_its_client_id() {
    let mut sim = four_sessions();
    sim.say(
        1,
        json!({"type":"send","id":1,"room":"general","body":"mine","client_id":"c-9"}),
    );
    let with_id = |sim: &mut Sim, s: u64| -> Vec<Option<String>> {
        sim.take_messages(s)
            .iter()
            .map(|m| m.client_id.as_deref().map(str::to_owned))
            .collect()
    };
    let frames = sim.expect_kinds(1, &["message", "ack"]);
    let ServerFrame::Message(sent) = &frames[0] else {
        unreachable!()
    };
    assert_eq!(sent.client_id.as_deref(), Some("c-9"), "the sending tab");
    assert_eq!(
        with_id(&mut sim, 2),
        [Some("c-9".to_owned())],
        "the author's other tab"
    );
    assert_eq!(with_id(&mut sim, 3), [None], "bob");
    // The bytes too: no recipient but the author's sessions sees the field at all.
    let raw = |sim: &Sim, s: u64| sim.raw.get(&SessionId(s)).cloned().unwrap_or_default();
    assert!(raw(&sim, 3).iter().any(|t| t.contains(r#""body":"mine""#)));
    assert!(raw(&sim, 3).iter().all(|t| !t.contains("client_id")));
    sim.clear();

    for s in [1, 3] {
        sim.say(s, json!({"type":"history","id":5,"room":"general"}));
        let ServerFrame::History { messages, .. } = sim.take_one(s) else {
            panic!("a history page");
        };
        let want = (s == 1).then(|| "c-9".to_owned());
        assert_eq!(messages[0].client_id.as_deref().map(str::to_owned), want);
        sim.say(s, json!({"type":"join","id":6,"room":"general","since":0}));
        let ServerFrame::Joined { messages, .. } = sim.take_one(s) else {
            panic!("joined");
        };
        assert_eq!(messages[0].client_id.as_deref().map(str::to_owned), want);
    }
}

#[test]
fn seq_strictly_increases_across_senders_and_timestamps_never_go_back() {
    let mut sim = four_sessions();
    for i in 0..6u64 {
        let sender = [1, 3, 2][(i % 3) as usize];
        sim.send(sender, i, "general", &format!("m{i}"));
        sim.advance(Duration::from_millis(7));
    }
    let got = sim
        .take(3)
        .into_iter()
        .filter_map(|f| match f {
            ServerFrame::Message(m) => Some(m),
            _ => None,
        })
        .collect::<Vec<_>>();
    assert_eq!(seqs(&got), [1, 2, 3, 4, 5, 6]);
    assert_eq!(bodies(&got), ["m0", "m1", "m2", "m3", "m4", "m5"]);
    for pair in got.windows(2) {
        assert!(pair[0].ts < pair[1].ts);
    }
    assert_eq!(sim.server.last_seq(&room("general")).unwrap().0, 6);
}

#[test]
fn timestamps_are_utc_rfc3339_with_milliseconds_on_the_wire() {
    let mut sim = four_sessions();
    // A time with sub-millisecond digits: the wire keeps exactly three.
    sim.advance(Duration::from_micros(1_234_567));
    sim.send(1, 1, "general", "when?");
    let text = sim.raw[&SessionId(3)].last().unwrap().clone();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ts = v["ts"].as_str().unwrap();
    assert!(is_rfc3339_millis(ts), "{ts}");
    let expected = chat_core::protocol::format_ts(&sim.now.utc);
    assert_eq!(ts, expected);
}

#[test]
fn the_client_cannot_choose_seq_or_time() {
    let mut sim = four_sessions();
    sim.say(
        1,
        json!({"type":"send","id":5,"room":"general","body":"x","seq":999}),
    );
    sim.expect_error(1, ErrorCode::BadFrame, Some(5));
    sim.say(
        1,
        json!({"type":"send","id":6,"room":"general","body":"x","ts":"2000-01-01T00:00:00.000Z"}),
    );
    sim.expect_error(1, ErrorCode::BadFrame, Some(6));
    sim.expect_nothing(3);
}

#[test]
fn a_resent_client_id_is_acked_again_with_the_original_seq_and_not_posted_twice() {
    let mut sim = four_sessions();
    let send = json!({"type":"send","id":1,"room":"general","body":"once","client_id":"c-1"});
    sim.say(1, send.clone());
    let frames = sim.expect_kinds(1, &["message", "ack"]);
    let ServerFrame::Message(original) = &frames[0] else {
        unreachable!()
    };
    assert_eq!(original.client_id.as_deref(), Some("c-1"));
    sim.take(2);
    sim.take(3);

    // Same client id again (a retry after a lost ack): only a duplicate ack.
    sim.advance(Duration::from_secs(3));
    let mut resend = send.clone();
    resend["id"] = json!(2);
    sim.say(1, resend);
    match sim.take_one(1) {
        ServerFrame::Ack {
            id,
            seq,
            ts,
            client_id,
            duplicate,
            ..
        } => {
            assert_eq!(id, Some(RequestId(2)));
            assert_eq!(seq, original.seq);
            assert_eq!(ts, original.ts);
            assert_eq!(client_id.as_deref(), Some("c-1"));
            assert!(duplicate);
        }
        other => panic!("{other:?}"),
    }
    sim.expect_nothing(2);
    sim.expect_nothing(3);

    // From alice's other tab too: the client id belongs to the user.
    sim.say(2, send);
    assert!(matches!(
        sim.take_one(2),
        ServerFrame::Ack { duplicate: true, seq, .. } if seq == original.seq
    ));
    sim.expect_nothing(3);

    // Another user may use the same client id for their own message.
    sim.say(
        3,
        json!({"type":"send","room":"general","body":"mine","client_id":"c-1"}),
    );
    let frames = sim.expect_kinds(3, &["message", "ack"]);
    assert!(matches!(&frames[1], ServerFrame::Ack { duplicate: false, seq, .. } if seq.0 == 2));
    assert_eq!(sim.server.last_seq(&room("general")).unwrap().0, 2);
}

#[test]
fn client_ids_are_per_room() {
    let mut sim = four_sessions();
    sim.join(1, "other");
    sim.clear();
    sim.say(
        1,
        json!({"type":"send","room":"general","body":"a","client_id":"k"}),
    );
    sim.say(
        1,
        json!({"type":"send","room":"other","body":"b","client_id":"k"}),
    );
    let got = sim.take_messages(4);
    assert_eq!(bodies(&got), ["b"]);
}

#[test]
fn a_direct_message_reaches_only_the_two_users_sessions() {
    let mut sim = four_sessions();
    sim.say(
        3,
        json!({"type":"send","id":7,"to":"ALICE","body":"just for you"}),
    );
    let frames = sim.expect_kinds(3, &["message", "ack"]);
    let ServerFrame::Message(msg) = &frames[0] else {
        unreachable!()
    };
    assert_eq!(msg.room.as_str(), "@alice,bob");
    assert_eq!(msg.seq.0, 1);
    assert!(matches!(
        &frames[1],
        ServerFrame::Ack { id: Some(RequestId(7)), room: r, .. } if r.as_str() == "@alice,bob"
    ));
    // Both of alice's tabs, not carol.
    assert_eq!(sim.take_messages(1), vec![msg.clone()]);
    assert_eq!(sim.take_messages(2), vec![msg.clone()]);
    sim.expect_nothing(4);

    // The reply, by room name this time, lands in the same room.
    sim.say(
        2,
        json!({"type":"send","room":"@bob,alice","body":"thanks"}),
    );
    let got = sim.take_messages(3);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].room.as_str(), "@alice,bob");
    assert_eq!(got[0].seq.0, 2);
    assert_eq!(
        sim.take_messages(1),
        got,
        "alice's other tab sees her reply"
    );
    sim.expect_kinds(2, &["message", "ack"]);
    sim.expect_nothing(4);

    // Carol cannot read or write into it.
    sim.say(4, json!({"type":"join","id":1,"room":"@alice,bob"}));
    sim.expect_error(4, ErrorCode::InvalidRoom, Some(1));
    sim.say(4, json!({"type":"history","id":2,"room":"@alice,bob"}));
    sim.expect_error(4, ErrorCode::InvalidRoom, Some(2));
    sim.say(
        4,
        json!({"type":"send","id":3,"room":"@alice,bob","body":"hi"}),
    );
    sim.expect_error(4, ErrorCode::InvalidRoom, Some(3));
    sim.expect_nothing(1);
    sim.expect_nothing(3);
}

#[test]
fn direct_message_history_is_there_for_both_users() {
    let mut sim = four_sessions();
    sim.say(3, json!({"type":"send","to":"alice","body":"one"}));
    sim.say(1, json!({"type":"send","to":"bob","body":"two"}));
    sim.clear();

    sim.say(1, json!({"type":"join","id":1,"room":"@bob,alice"}));
    let ServerFrame::Joined {
        messages,
        members,
        last_seq,
        ..
    } = sim.take_one(1)
    else {
        panic!()
    };
    assert_eq!(bodies(&messages), ["one", "two"]);
    assert_eq!(common::names(&members), ["alice", "bob"]);
    assert_eq!(last_seq.0, 2);

    sim.say(
        3,
        json!({"type":"history","id":2,"room":"@alice,bob","limit":1}),
    );
    let ServerFrame::History {
        messages, has_more, ..
    } = sim.take_one(3)
    else {
        panic!()
    };
    assert_eq!(bodies(&messages), ["two"]);
    assert!(has_more);
}

#[test]
fn a_direct_message_to_someone_not_online_is_refused() {
    let mut sim = four_sessions();
    sim.say(
        1,
        json!({"type":"send","id":3,"to":"nobody","body":"hello?"}),
    );
    sim.expect_error(1, ErrorCode::UserNotFound, Some(3));
    sim.say(
        1,
        json!({"type":"send","id":4,"to":"not valid","body":"hello?"}),
    );
    sim.expect_error(1, ErrorCode::InvalidName, Some(4));
}

#[test]
fn a_send_needs_exactly_one_of_room_and_to() {
    let mut sim = four_sessions();
    sim.say(
        1,
        json!({"type":"send","id":1,"room":"general","to":"bob","body":"x"}),
    );
    sim.expect_error(1, ErrorCode::InvalidRequest, Some(1));
    sim.say(1, json!({"type":"send","id":2,"body":"x"}));
    sim.expect_error(1, ErrorCode::InvalidRequest, Some(2));
    sim.expect_nothing(3);
}

#[test]
fn commands_before_hello_are_refused() {
    let mut sim = Sim::new();
    sim.hello(1, "alice");
    sim.connect(2);
    sim.clear();
    sim.say(
        2,
        json!({"type":"send","id":1,"room":"general","body":"sneaky"}),
    );
    sim.expect_error(2, ErrorCode::HelloRequired, Some(1));
    sim.say(2, json!({"type":"join","id":2,"room":"general"}));
    sim.expect_error(2, ErrorCode::HelloRequired, Some(2));
    sim.expect_nothing(1);
    assert_eq!(sim.server.members(&room("general")).unwrap().len(), 1);
}

#[test]
fn a_message_posted_by_the_host_reaches_members() {
    let mut sim = four_sessions();
    sim.input(chat_core::Input::Publish {
        ticket: 77,
        room: "general".into(),
        user: "bot".into(),
        body: "scheduled maintenance".into(),
        client_id: Some("notice-1".into()),
    });
    let (ticket, result) = sim.published.pop().unwrap();
    assert_eq!(ticket, 77);
    let msg = result.unwrap();
    assert_eq!(msg.user.as_str(), "bot");
    assert_eq!(msg.client_id.as_deref(), Some("notice-1"));
    // The client id is the host's, for idempotency: no member is the author, so no
    // member's copy carries it.
    let seen = std::sync::Arc::new(chat_core::protocol::Message {
        client_id: None,
        ..(*msg).clone()
    });
    for s in [1, 2, 3] {
        assert_eq!(sim.take_messages(s), vec![seen.clone()]);
    }
    // Idempotent too: the same notice is not posted twice.
    sim.input(chat_core::Input::Publish {
        ticket: 78,
        room: "general".into(),
        user: "bot".into(),
        body: "scheduled maintenance".into(),
        client_id: Some("notice-1".into()),
    });
    let (_, again) = sim.published.pop().unwrap();
    assert_eq!(again.unwrap().seq, msg.seq);
    sim.expect_nothing(1);
}

#[test]
fn direct_rooms_are_listed_to_their_users_with_their_user_counts() {
    let mut sim = four_sessions();
    sim.say(3, json!({"type":"send","id":1,"to":"alice","body":"hi"}));
    sim.say(
        1,
        json!({"type":"send","id":2,"to":"alice","body":"a note"}),
    );
    sim.clear();

    sim.say(1, json!({"type":"rooms","id":3}));
    let ServerFrame::Rooms { id, rooms } = sim.take_one(1) else {
        panic!("a rooms reply");
    };
    assert_eq!(id, Some(chat_core::RequestId(3)));
    let listed: Vec<(String, usize, bool)> = rooms
        .iter()
        .map(|r| (r.name.to_string(), r.members, r.direct))
        .collect();
    assert_eq!(
        listed,
        [
            ("@alice,alice".to_owned(), 1, true),
            ("@alice,bob".to_owned(), 2, true),
            ("general".to_owned(), 2, false),
            ("other".to_owned(), 1, false),
        ]
    );

    // Carol sees the public rooms only.
    sim.say(4, json!({"type":"rooms","id":4}));
    let ServerFrame::Rooms { rooms, .. } = sim.take_one(4) else {
        panic!("a rooms reply");
    };
    let names: Vec<String> = rooms.iter().map(|r| r.name.to_string()).collect();
    assert_eq!(names, ["general", "other"]);

    // The members of a direct room are its users; of a note to self, the one user.
    sim.say(1, json!({"type":"members","id":5,"room":"@bob,alice"}));
    let ServerFrame::Members { members, .. } = sim.take_one(1) else {
        panic!("a members reply");
    };
    assert_eq!(common::names(&members), ["alice", "bob"]);
    sim.say(1, json!({"type":"members","id":6,"room":"@alice,alice"}));
    let ServerFrame::Members { members, .. } = sim.take_one(1) else {
        panic!("a members reply");
    };
    assert_eq!(common::names(&members), ["alice"]);
}

#[test]
fn a_note_to_self_reaches_each_of_the_users_sessions_once() {
    let mut sim = four_sessions();
    sim.say(
        1,
        json!({"type":"send","id":1,"room":"@alice,alice","body":"todo"}),
    );
    sim.expect_kinds(1, &["message", "ack"]);
    assert_eq!(bodies(&sim.take_messages(2)), ["todo"]);
    sim.expect_nothing(3);
    sim.expect_nothing(4);
}

#[test]
fn a_direct_room_named_with_someone_not_online_is_not_created() {
    let mut sim = four_sessions();
    sim.say(
        1,
        json!({"type":"send","id":3,"room":"@alice,nobody","body":"hello?"}),
    );
    sim.expect_error(1, ErrorCode::UserNotFound, Some(3));
    sim.expect_nothing(2);
    sim.say(1, json!({"type":"rooms","id":4}));
    let ServerFrame::Rooms { rooms, .. } = sim.take_one(1) else {
        panic!("a rooms reply");
    };
    assert!(rooms.iter().all(|r| !r.direct), "{rooms:?}");
}

fn publish(sim: &mut Sim, ticket: u64, room: &str, body: &str) -> Result<u64, ErrorCode> {
    sim.input(chat_core::Input::Publish {
        ticket,
        room: room.into(),
        user: "bot".into(),
        body: body.into(),
        client_id: None,
    });
    let (got, result) = sim.published.pop().expect("a publish result");
    assert_eq!(got, ticket);
    result.map(|m| m.seq.0)
}

#[test]
fn the_host_publish_creates_rooms_only_as_joins_would_except_direct_rooms() {
    // By default a publish creates a public room, as a join would.
    let mut sim = four_sessions();
    let rooms = sim.server.room_count();
    assert_eq!(publish(&mut sim, 1, "news", "first"), Ok(1));
    assert_eq!(sim.server.room_count(), rooms + 1);

    // When joins create no rooms, neither does a publish; but the host may start a
    // direct room, which its users then receive.
    let mut sim = Sim::with(chat_core::Config {
        create_rooms_on_join: false,
        ..chat_core::Config::default()
    });
    sim.hello(1, "alice");
    sim.hello(2, "bob");
    sim.clear();
    let rooms = sim.server.room_count();
    assert_eq!(
        publish(&mut sim, 2, "news", "first"),
        Err(ErrorCode::RoomNotFound)
    );
    assert_eq!(sim.server.room_count(), rooms);
    assert_eq!(publish(&mut sim, 3, "@alice,bob", "hello you two"), Ok(1));
    assert_eq!(bodies(&sim.take_messages(1)), ["hello you two"]);
    assert_eq!(bodies(&sim.take_messages(2)), ["hello you two"]);
}
