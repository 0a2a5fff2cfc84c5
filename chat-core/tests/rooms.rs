//! Rooms: the default room, join and leave, auto-creation, listing rooms and members,
//! per-session and server-wide room limits, and room name validation.

mod common;

use chat_core::RequestId;
use chat_core::protocol::{ErrorCode, ServerFrame};
use chat_core::{Config, Event, SessionId};
use common::{Sim, names, room};
use serde_json::json;

#[test]
fn hello_lands_in_general_with_the_members_and_recent_messages() {
    let mut sim = Sim::new();
    sim.hello(1, "alice");
    let frames = sim.expect_kinds(1, &["welcome", "joined"]);
    match &frames[0] {
        ServerFrame::Welcome {
            session, user, id, ..
        } => {
            assert_eq!(*session, SessionId(1));
            assert_eq!(user.as_str(), "alice");
            assert_eq!(*id, None);
        }
        other => panic!("{other:?}"),
    }
    match &frames[1] {
        ServerFrame::Joined {
            room: r,
            members,
            messages,
            gap,
            last_seq,
            ..
        } => {
            assert_eq!(*r, room("general"));
            assert_eq!(names(members), ["alice"]);
            assert!(messages.is_empty());
            assert!(!gap);
            assert_eq!(last_seq.0, 0);
        }
        other => panic!("{other:?}"),
    }

    sim.send(1, 1, "general", "hello there");
    sim.take(1);
    sim.hello(2, "bob");
    let frames = sim.expect_kinds(2, &["welcome", "joined"]);
    let ServerFrame::Joined {
        members, messages, ..
    } = &frames[1]
    else {
        panic!()
    };
    assert_eq!(names(members), ["alice", "bob"]);
    assert_eq!(messages.len(), 1);
    assert_eq!(&*messages[0].body, "hello there");
    // alice sees bob arrive.
    match sim.take_one(1) {
        ServerFrame::UserJoined { room: r, user, .. } => {
            assert_eq!(r, room("general"));
            assert_eq!(user.as_str(), "bob");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn hello_with_an_explicit_room_list_joins_exactly_those() {
    let mut sim = Sim::new();
    sim.connect(1);
    sim.say(
        1,
        json!({"type":"hello","id":9,"version":1,"name":"alice","rooms":[{"room":"Lobby"},{"room":"dev"}]}),
    );
    let frames = sim.expect_kinds(1, &["welcome", "joined", "joined"]);
    let joined: Vec<String> = frames[1..]
        .iter()
        .map(|f| match f {
            ServerFrame::Joined { room, .. } => room.to_string(),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(joined, ["lobby", "dev"]);
    assert!(matches!(
        frames[0],
        ServerFrame::Welcome {
            id: Some(RequestId(9)),
            ..
        }
    ));
    assert_eq!(
        sim.server.session_rooms(SessionId(1)).unwrap(),
        [room("dev"), room("lobby")]
    );
    assert_eq!(sim.server.members(&room("general")), None);

    sim.connect(2);
    sim.say(
        2,
        json!({"type":"hello","version":1,"name":"bob","rooms":[]}),
    );
    sim.expect_kinds(2, &["welcome"]);
    assert_eq!(sim.server.session_rooms(SessionId(2)).unwrap(), []);
}

#[test]
fn join_creates_the_room_and_announces_the_newcomer_to_members() {
    let mut sim = Sim::new();
    sim.hello(1, "alice");
    sim.hello(2, "bob");
    sim.clear();

    sim.say(1, json!({"type":"join","id":4,"room":"  Rust-Lang "}));
    let frame = sim.take_one(1);
    let ServerFrame::Joined {
        id,
        room: r,
        members,
        last_seq,
        ..
    } = frame
    else {
        panic!("{frame:?}")
    };
    assert_eq!(id, Some(RequestId(4)));
    assert_eq!(r, room("rust-lang"));
    assert_eq!(names(&members), ["alice"]);
    assert_eq!(last_seq.0, 0);
    assert!(
        sim.take_events()
            .contains(&Event::RoomCreated(room("rust-lang")))
    );
    // bob is not in the room: he hears nothing of it.
    sim.expect_nothing(2);

    sim.say(2, json!({"type":"join","id":5,"room":"RUST-LANG"}));
    let frame = sim.take_one(2);
    let ServerFrame::Joined { members, .. } = frame else {
        panic!("{frame:?}")
    };
    assert_eq!(names(&members), ["alice", "bob"]);
    match sim.take_one(1) {
        ServerFrame::UserJoined { room: r, user, ts } => {
            assert_eq!(r, room("rust-lang"));
            assert_eq!(user.as_str(), "bob");
            assert_eq!(ts.timestamp_millis(), sim.now.utc.timestamp_millis());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        names(&sim.server.members(&room("rust-lang")).unwrap()),
        ["alice", "bob"]
    );
}

#[test]
fn joining_a_room_twice_is_not_announced_twice() {
    let mut sim = Sim::new();
    sim.hello(1, "alice");
    sim.hello(2, "bob");
    sim.clear();
    sim.join(2, "general");
    sim.expect_kinds(2, &["joined"]);
    sim.expect_nothing(1);
    assert_eq!(
        sim.server.session_rooms(SessionId(2)).unwrap(),
        [room("general")]
    );
}

#[test]
fn leave_answers_left_and_tells_the_others() {
    let mut sim = Sim::new();
    sim.hello(1, "alice");
    sim.hello(2, "bob");
    sim.clear();

    sim.say(2, json!({"type":"leave","id":11,"room":"General"}));
    match sim.take_one(2) {
        ServerFrame::Left { id, room: r } => {
            assert_eq!(id, Some(RequestId(11)));
            assert_eq!(r, room("general"));
        }
        other => panic!("{other:?}"),
    }
    match sim.take_one(1) {
        ServerFrame::UserLeft { room: r, user, .. } => {
            assert_eq!(r, room("general"));
            assert_eq!(user.as_str(), "bob");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        names(&sim.server.members(&room("general")).unwrap()),
        ["alice"]
    );
    assert_eq!(sim.server.session_rooms(SessionId(2)).unwrap(), []);

    // After leaving, nothing from the room reaches bob.
    sim.send(1, 1, "general", "are you there?");
    sim.expect_nothing(2);

    // Leaving again, or sending there, is refused with the request id.
    sim.say(2, json!({"type":"leave","id":12,"room":"general"}));
    sim.expect_error(2, ErrorCode::NotMember, Some(12));
    sim.send(2, 13, "general", "hi");
    sim.expect_error(2, ErrorCode::NotMember, Some(13));
    sim.expect_kinds(1, &["message", "ack"]);
}

#[test]
fn an_empty_room_without_history_disappears_but_one_with_messages_stays() {
    let mut sim = Sim::new();
    sim.hello(1, "alice");
    sim.join(1, "scratch");
    sim.join(1, "keep");
    sim.send(1, 1, "keep", "remember me");
    sim.clear();

    sim.say(1, json!({"type":"leave","room":"scratch"}));
    sim.say(1, json!({"type":"leave","room":"keep"}));
    assert_eq!(sim.server.members(&room("scratch")), None);
    assert_eq!(sim.server.members(&room("keep")), Some(vec![]));

    sim.take(1);
    sim.say(1, json!({"type":"rooms","id":3}));
    let ServerFrame::Rooms { id, rooms } = sim.take_one(1) else {
        panic!()
    };
    assert_eq!(id, Some(RequestId(3)));
    let listed: Vec<(String, usize, u64)> = rooms
        .iter()
        .map(|r| (r.name.to_string(), r.members, r.last_seq.0))
        .collect();
    assert_eq!(
        listed,
        [("general".to_owned(), 1, 0), ("keep".to_owned(), 0, 1)]
    );

    // Rejoining the kept room brings its history back.
    sim.join(1, "keep");
    let ServerFrame::Joined { messages, .. } = sim.take_one(1) else {
        panic!()
    };
    assert_eq!(&*messages[0].body, "remember me");
}

#[test]
fn rooms_lists_public_rooms_with_counts_and_only_your_own_direct_rooms() {
    let mut sim = Sim::new();
    sim.hello(1, "alice");
    sim.hello(2, "bob");
    sim.hello(3, "carol");
    sim.join(3, "books");
    sim.say(1, json!({"type":"send","to":"bob","body":"psst"}));
    sim.clear();

    sim.say(2, json!({"type":"rooms"}));
    let ServerFrame::Rooms { rooms, .. } = sim.take_one(2) else {
        panic!()
    };
    let listed: Vec<(String, usize, bool)> = rooms
        .iter()
        .map(|r| (r.name.to_string(), r.members, r.direct))
        .collect();
    assert_eq!(
        listed,
        [
            ("@alice,bob".to_owned(), 2, true),
            ("books".to_owned(), 1, false),
            ("general".to_owned(), 3, false)
        ]
    );

    sim.say(3, json!({"type":"rooms"}));
    let ServerFrame::Rooms { rooms, .. } = sim.take_one(3) else {
        panic!()
    };
    assert!(rooms.iter().all(|r| !r.direct), "carol sees no one's DMs");
}

#[test]
fn members_lists_users_once_however_many_tabs_they_have() {
    let mut sim = Sim::new();
    let token = sim.hello(1, "alice");
    sim.hello_with_token(2, "alice", &token);
    sim.hello(3, "bob");
    sim.clear();

    sim.say(3, json!({"type":"members","id":8,"room":"general"}));
    match sim.take_one(3) {
        ServerFrame::Members {
            id,
            room: r,
            members,
        } => {
            assert_eq!(id, Some(RequestId(8)));
            assert_eq!(r, room("general"));
            assert_eq!(names(&members), ["alice", "bob"]);
        }
        other => panic!("{other:?}"),
    }
    sim.say(3, json!({"type":"members","id":9,"room":"nowhere"}));
    sim.expect_error(3, ErrorCode::RoomNotFound, Some(9));
}

#[test]
fn a_session_can_be_in_at_most_max_rooms_per_session() {
    let mut sim = Sim::with(Config {
        max_rooms_per_session: 3,
        ..Config::default()
    });
    sim.hello(1, "alice");
    sim.join(1, "a");
    sim.join(1, "b");
    sim.clear();

    sim.say(1, json!({"type":"join","id":21,"room":"c"}));
    sim.expect_error(1, ErrorCode::TooManyRooms, Some(21));
    assert_eq!(sim.server.members(&room("c")), None, "not created either");
    // Rejoining (resuming) a room it is already in is still fine.
    sim.join(1, "a");
    sim.expect_kinds(1, &["joined"]);
    // Leaving one makes space.
    sim.say(1, json!({"type":"leave","room":"b"}));
    sim.join(1, "c");
    sim.expect_kinds(1, &["left", "joined"]);
    // Direct-message rooms do not count.
    sim.hello(2, "bob");
    sim.clear();
    sim.say(1, json!({"type":"join","id":22,"room":"@bob,alice"}));
    assert!(matches!(
        sim.take_one(1),
        ServerFrame::Joined {
            id: Some(RequestId(22)),
            ..
        }
    ));
}

#[test]
fn the_server_refuses_to_create_more_than_max_rooms() {
    let mut sim = Sim::with(Config {
        max_rooms: 2,
        ..Config::default()
    });
    sim.hello(1, "alice");
    sim.join(1, "second");
    sim.clear();
    sim.say(1, json!({"type":"join","id":5,"room":"third"}));
    let msg = sim.expect_error(1, ErrorCode::LimitReached, Some(5));
    // The message names the server's limit; it must not claim the room does not exist.
    assert!(
        msg.contains("as many rooms as it allows") && !msg.contains("third"),
        "{msg}"
    );
    assert_eq!(sim.server.room_count(), 2);
    // Existing rooms can still be joined.
    sim.hello(2, "bob");
    sim.join(2, "second");
    sim.expect_kinds(2, &["welcome", "joined", "joined"]);
}

#[test]
fn rooms_are_not_created_on_join_when_configured_so() {
    let mut sim = Sim::with(Config {
        create_rooms_on_join: false,
        ..Config::default()
    });
    sim.hello(1, "alice");
    sim.clear();
    sim.say(1, json!({"type":"join","id":2,"room":"elsewhere"}));
    sim.expect_error(1, ErrorCode::RoomNotFound, Some(2));
    assert_eq!(sim.server.members(&room("elsewhere")), None);
}

#[test]
fn invalid_room_names_are_refused_with_the_request_id() {
    let mut sim = Sim::new();
    sim.hello(1, "alice");
    sim.hello(2, "bob");
    sim.clear();
    let long = "x".repeat(65);
    let bad = [
        "",
        "   ",
        "two words",
        "tab\there",
        "bell\u{7}",
        "rtl\u{202E}kcah",
        "zero\u{200B}width",
        long.as_str(),
        "a,b",
        "@",
        "@bob",
        "@bob,carol", // someone else's direct room
        "@bob,",
    ];
    for (i, name) in bad.iter().enumerate() {
        let id = 100 + i as u64;
        sim.say(1, json!({"type":"join","id":id,"room":name}));
        sim.expect_error(1, ErrorCode::InvalidRoom, Some(id));
    }
    sim.say(1, json!({"type":"send","id":1,"room":"a b","body":"x"}));
    sim.expect_error(1, ErrorCode::InvalidRoom, Some(1));
    assert_eq!(sim.server.room_count(), 1, "only general exists");
    assert_eq!(
        sim.server.session_rooms(SessionId(1)).unwrap(),
        [room("general")]
    );
    // Exactly at the limit is fine.
    sim.join(1, &"y".repeat(64));
    sim.expect_kinds(1, &["joined"]);
    sim.expect_nothing(2);
}

#[test]
fn room_names_are_unicode_normalized_and_case_insensitive() {
    let mut sim = Sim::new();
    sim.hello(1, "alice");
    sim.hello(2, "bob");
    sim.clear();
    // "Café" precomposed vs "cafe" + combining acute, upper vs lower case.
    sim.join(1, "Caf\u{e9}");
    sim.join(2, "CAFE\u{301}");
    let ServerFrame::Joined {
        room: r, members, ..
    } = sim.take_one(2)
    else {
        panic!()
    };
    assert_eq!(r.as_str(), "caf\u{e9}");
    assert_eq!(names(&members), ["alice", "bob"]);
}

#[test]
fn leaving_a_direct_room_is_answered_without_changing_anything() {
    let mut sim = Sim::new();
    sim.hello(1, "alice");
    sim.hello(2, "bob");
    sim.clear();
    sim.say(1, json!({"type":"leave","id":3,"room":"@bob,alice"}));
    match sim.take_one(1) {
        ServerFrame::Left { id, room: r } => {
            assert_eq!(id, Some(RequestId(3)));
            assert_eq!(r.as_str(), "@alice,bob");
        }
        other => panic!("{other:?}"),
    }
    sim.expect_nothing(2);
}

#[test]
fn one_client_cannot_use_up_the_server_room_limit_with_direct_rooms() {
    let mut sim = Sim::with(Config {
        max_rooms: 5,
        ..common::unlimited()
    });
    sim.hello(1, "mallory");
    // Direct rooms with made-up names, by join and by send.
    for i in 0..20 {
        sim.join(1, &format!("@mallory,ghost{i}"));
        sim.say(
            1,
            json!({"type":"send","room":format!("@mallory,phantom{i}"),"body":"boo"}),
        );
    }
    sim.take(1);
    assert!(sim.server.room_count() <= 5);
    // Someone else can still open a new room.
    sim.hello(2, "bob");
    sim.say(2, json!({"type":"join","id":1,"room":"books"}));
    let frames = sim.take(2);
    assert!(
        matches!(
            frames.last(),
            Some(ServerFrame::Joined {
                id: Some(RequestId(1)),
                ..
            })
        ),
        "{frames:?}"
    );
}

#[test]
fn joining_a_direct_room_nobody_wrote_to_yet_shows_it_empty() {
    let mut sim = Sim::new();
    sim.hello(1, "alice");
    sim.hello(2, "bob");
    sim.clear();
    sim.say(1, json!({"type":"join","id":4,"room":"@bob,alice"}));
    match sim.take_one(1) {
        ServerFrame::Joined {
            id,
            room: r,
            members,
            messages,
            gap,
            last_seq,
            // A direct room has no topic, slow mode or roles.
            topic: None,
            slow_mode: None,
            role: None,
        } => {
            assert_eq!(id, Some(RequestId(4)));
            assert_eq!(r.as_str(), "@alice,bob");
            assert_eq!(names(&members), ["alice", "bob"]);
            assert!(messages.is_empty() && !gap);
            assert_eq!(last_seq.0, 0);
        }
        other => panic!("{other:?}"),
    }
    // Writing to it works as usual afterwards.
    sim.say(1, json!({"type":"send","room":"@alice,bob","body":"hi"}));
    assert_eq!(sim.take_messages(2).len(), 1);
}

#[test]
fn a_note_to_self_lists_its_one_user_once_before_and_after_the_first_message() {
    let mut sim = Sim::new();
    sim.hello(1, "alice");
    sim.clear();
    let members_of = |sim: &mut Sim| {
        sim.say(1, json!({"type":"members","id":7,"room":"@alice,alice"}));
        match sim.take_one(1) {
            ServerFrame::Members { members, .. } => names(&members),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(members_of(&mut sim), ["alice"]);
    sim.say(
        1,
        json!({"type":"send","to":"alice","body":"remember the milk"}),
    );
    let delivered = sim
        .take(1)
        .into_iter()
        .filter(|f| matches!(f, ServerFrame::Message(_)))
        .count();
    assert_eq!(delivered, 1, "delivered once, not once per side");
    sim.clear();
    assert_eq!(members_of(&mut sim), ["alice"]);
}

/// `joined` is assembled from the room's member list and its messages' frames, already in
/// JSON; it must be exactly what serializing the whole frame gives, whatever the names
/// (escapes, non-ASCII, display case against key order) and however the list changed.
#[test]
fn joined_frames_are_byte_identical_to_the_serialized_frame_as_members_come_and_go() {
    let mut sim = Sim::new();
    // Key order: alice, back\slash, bob, carol, q"uote, zoë, émile, ünï.
    let people = [
        "Zoë",
        r#"q"uote"#,
        r"back\slash",
        "alice",
        "Émile",
        "bob",
        "Carol",
        "ünï",
    ];
    let mut zoe_token = String::new();
    for (i, name) in (1..).zip(people) {
        let token = sim.hello(i, name);
        if i == 1 {
            zoe_token = token;
        }
        sim.send(i, 1, "general", &format!("hi \"{name}\" \\ \u{1F600}\n"));
    }
    // A second tab of Zoë (not a new member), resuming after seq 3.
    sim.hello_with_token(20, "ZOË", &zoe_token);
    sim.say(20, json!({"type":"join","room":"general","since":3}));
    sim.say(3, json!({"type":"leave","id":7,"room":"general"})); // a middle name
    sim.say(4, json!({"type":"leave","room":"general"})); // the first name
    sim.say(4, json!({"type":"join","id":8,"room":"general","since":0}));
    sim.say(8, json!({"type":"leave","room":"general"})); // the last name
    sim.say(5, json!({"type":"leave","room":"general"}));
    sim.say(5, json!({"type":"join","room":"general","since":99})); // a gap
    sim.disconnect(6); // bob lingers: still listed
    sim.hello(9, "dave");
    // A room that empties and fills again.
    for s in [7, 2, 7] {
        sim.join(s, "tiny");
        sim.say(s, json!({"type":"leave","room":"tiny"}));
    }
    sim.join(2, "tiny");
    sim.join(7, "tiny");

    let mut joined = 0;
    for (sid, frames) in &sim.raw {
        for text in frames
            .iter()
            .filter(|t| t.starts_with(r#"{"type":"joined""#))
        {
            let frame: ServerFrame = serde_json::from_str(text).expect("valid frame");
            let again = serde_json::to_string(&frame).expect("serializes");
            assert_eq!(*text, again, "to {sid}");
            joined += 1;
        }
    }
    assert_eq!(joined, 8 + 2 + 1 + 1 + 1 + 3 + 2);
    assert_eq!(
        names(&sim.server.members(&room("general")).unwrap()),
        ["alice", "bob", "Carol", "dave", r#"q"uote"#, "Zoë", "Émile"]
    );
    assert_eq!(
        names(&sim.server.members(&room("tiny")).unwrap()),
        ["Carol", r#"q"uote"#]
    );
}
