//! Presence: one user with several sessions is one person; the disconnect grace period;
//! name ownership (tokens, impostors, case-insensitivity); typing indicators.

mod common;

use chat_core::RequestId;
use std::time::Duration;

use chat_core::protocol::{ErrorCode, ServerFrame};
use chat_core::{Config, SessionId};
use common::{Sim, kind, names, room};
use serde_json::json;

const GRACE: Duration = Duration::from_secs(5);

fn presence(frames: &[ServerFrame]) -> Vec<String> {
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::UserJoined { room, user, .. } => Some(format!("+{user}@{room}")),
            ServerFrame::UserLeft { room, user, .. } => Some(format!("-{user}@{room}")),
            _ => None,
        })
        .collect()
}

#[test]
fn user_joined_is_announced_once_per_user_however_many_tabs() {
    let mut sim = Sim::new();
    sim.hello(1, "bob");
    sim.clear();
    let token = sim.hello(2, "alice");
    sim.hello_with_token(3, "alice", &token);
    sim.hello_with_token(4, "Alice", &token);
    assert_eq!(presence(&sim.take(1)), ["+alice@general"]);
    assert_eq!(
        sim.presence_events(),
        [("joined".into(), "general".into(), "alice".into())]
    );
    // Each tab is its own session in the room, and the user appears once.
    assert_eq!(
        names(&sim.server.members(&room("general")).unwrap()),
        ["alice", "bob"]
    );
    for s in [2, 3, 4] {
        assert_eq!(
            sim.server.session_rooms(SessionId(s)).unwrap(),
            [room("general")]
        );
    }
}

#[test]
fn user_left_comes_only_when_the_last_session_leaves() {
    let mut sim = Sim::new();
    sim.hello(1, "bob");
    let token = sim.hello(2, "alice");
    sim.hello_with_token(3, "alice", &token);
    sim.clear();

    sim.say(2, json!({"type":"leave","room":"general"}));
    sim.expect_nothing(1);
    assert_eq!(
        names(&sim.server.members(&room("general")).unwrap()),
        ["alice", "bob"]
    );

    // The tab that left gets nothing more from the room; the other still does.
    sim.send(1, 1, "general", "still there?");
    sim.expect_kinds(2, &["left"]);
    sim.expect_kinds(3, &["message"]);

    sim.say(3, json!({"type":"leave","room":"general"}));
    assert_eq!(presence(&sim.take(1)), ["-alice@general"]);
    assert_eq!(
        names(&sim.server.members(&room("general")).unwrap()),
        ["bob"]
    );
    assert_eq!(
        sim.presence_events(),
        [("left".into(), "general".into(), "alice".into())]
    );
}

#[test]
fn closing_one_of_two_tabs_announces_nothing() {
    let mut sim = Sim::new();
    sim.hello(1, "bob");
    let token = sim.hello(2, "alice");
    sim.hello_with_token(3, "alice", &token);
    sim.clear();
    sim.disconnect(2);
    sim.advance(GRACE * 3);
    sim.expect_nothing(1);
    assert!(sim.presence_events().is_empty());
    assert_eq!(
        names(&sim.server.members(&room("general")).unwrap()),
        ["alice", "bob"]
    );
    assert_eq!(sim.server.session_rooms(SessionId(2)), None);
    sim.assert_no_violations();
}

#[test]
fn a_refresh_within_the_grace_period_does_not_flap() {
    let mut sim = Sim::new();
    sim.hello(1, "bob");
    let token = sim.hello(2, "alice");
    sim.clear();

    sim.disconnect(2);
    // Still listed during the grace period.
    assert_eq!(
        names(&sim.server.members(&room("general")).unwrap()),
        ["alice", "bob"]
    );
    sim.advance(GRACE - Duration::from_millis(1));
    sim.expect_nothing(1);

    let new_token = sim.hello_with_token(5, "alice", &token);
    assert_eq!(new_token, token, "the same user keeps the same token");
    let frames = sim.expect_kinds(5, &["welcome", "joined"]);
    let ServerFrame::Joined { members, .. } = &frames[1] else {
        unreachable!()
    };
    assert_eq!(names(members), ["alice", "bob"]);

    // Long after the old grace deadline: still no left/joined pair for bob.
    sim.advance(GRACE * 4);
    sim.expect_nothing(1);
    assert!(sim.presence_events().is_empty());

    // And the reconnected session receives the room's messages.
    sim.send(1, 1, "general", "welcome back");
    sim.expect_kinds(5, &["message"]);
    sim.assert_no_violations();
}

#[test]
fn after_the_grace_period_the_user_has_left_and_the_name_is_free() {
    let mut sim = Sim::new();
    sim.hello(1, "bob");
    let token = sim.hello(2, "alice");
    sim.clear();

    sim.disconnect(2);
    sim.advance(GRACE - Duration::from_millis(1));
    sim.expect_nothing(1);
    sim.advance(Duration::from_millis(1));
    let frames = sim.take(1);
    assert_eq!(presence(&frames), ["-alice@general"]);
    let ServerFrame::UserLeft { ts, .. } = &frames[0] else {
        unreachable!()
    };
    // Announced at the end of the grace period, stamped with that time.
    assert_eq!(ts.timestamp_millis(), sim.now.utc.timestamp_millis());
    assert_eq!(
        names(&sim.server.members(&room("general")).unwrap()),
        ["bob"]
    );

    // The old token proves nothing now, and anyone may take the name.
    let fresh = sim.hello_with_token(3, "alice", &token);
    assert_ne!(fresh, token);
    assert_eq!(presence(&sim.take(1)), ["+alice@general"]);
    sim.assert_no_violations();
}

/// alice leaves, comes back within the grace period, and leaves again: her name is held
/// for a whole grace period after the second leave, not released when the first one's
/// would have ended.
#[test]
fn a_name_is_held_for_a_full_grace_period_after_each_last_session() {
    let mut sim = Sim::new();
    let token = sim.hello(1, "alice");
    sim.disconnect(1);
    sim.advance(GRACE / 2);
    sim.hello_with_token(2, "alice", &token);
    sim.disconnect(2);
    // The first grace period is over; the second one is not.
    sim.advance(GRACE / 2 + Duration::from_millis(1));
    sim.connect(3);
    sim.say(3, json!({"type":"hello","id":1,"version":1,"name":"alice"}));
    sim.expect_error(3, ErrorCode::NameTaken, Some(1));
    // alice can still come back with her token.
    sim.hello_with_token(4, "alice", &token);
    sim.disconnect(4);
    sim.advance(GRACE);
    sim.say(3, json!({"type":"hello","id":2,"version":1,"name":"alice"}));
    assert_eq!(kind(&sim.take(3)[0]), "welcome");
}

#[test]
fn an_impostor_cannot_take_a_name_that_is_online_or_in_its_grace_period() {
    let mut sim = Sim::new();
    let token = sim.hello(1, "alice");
    sim.clear();

    sim.connect(2);
    sim.say(2, json!({"type":"hello","id":1,"version":1,"name":"alice"}));
    let msg = sim.expect_error(2, ErrorCode::NameTaken, Some(1));
    assert!(msg.contains("alice"), "{msg}");
    // Case and Unicode form do not help.
    sim.say(2, json!({"type":"hello","id":2,"version":1,"name":"ALICE"}));
    sim.expect_error(2, ErrorCode::NameTaken, Some(2));
    sim.say(2, json!({"type":"hello","id":3,"version":1,"name":"alice","token":"0123456789abcdef0123456789abcdef"}));
    sim.expect_error(2, ErrorCode::NameTaken, Some(3));

    sim.disconnect(1);
    sim.advance(GRACE / 2);
    sim.say(2, json!({"type":"hello","id":4,"version":1,"name":"Alice"}));
    sim.expect_error(2, ErrorCode::NameTaken, Some(4));
    sim.say(
        2,
        json!({"type":"hello","id":5,"version":1,"name":"alice","token":format!("{token}x")}),
    );
    sim.expect_error(2, ErrorCode::NameTaken, Some(5));
    // The impostor is still connected and can pick another name.
    sim.say(
        2,
        json!({"type":"hello","id":6,"version":1,"name":"mallory"}),
    );
    assert!(matches!(
        sim.take(2)[0],
        ServerFrame::Welcome {
            id: Some(RequestId(6)),
            ..
        }
    ));
    assert_eq!(
        names(&sim.server.members(&room("general")).unwrap()),
        ["alice", "mallory"]
    );
}

/// UTS #39 skeletons: a name that only looks like a known user's (another script's
/// letters, fullwidth forms, digits for letters, `rn` for `m`) is refused in every room
/// while that user is online or holds the name, and free again once the name is.
#[test]
fn a_lookalike_name_cannot_pass_for_a_known_user() {
    let mut sim = Sim::new();
    let alice = sim.hello(1, "alice");
    sim.hello(3, "Mary");
    sim.hello(4, "bob");
    sim.clear();
    sim.connect(2);
    let impostors = [
        "\u{430}lice",                              // Cyrillic а
        "alic\u{435}",                              // Cyrillic е
        "\u{ff41}\u{ff4c}\u{ff49}\u{ff43}\u{ff45}", // fullwidth ａｌｉｃｅ
        "\u{1d41a}lice",                            // mathematical bold 𝐚
        "rnary",                                    // rn for m
        "B0B",                                      // a zero for an o, and case
    ];
    for (i, impostor) in impostors.iter().enumerate() {
        let id = i as u64 + 1;
        sim.say(
            2,
            json!({"type":"hello","id":id,"version":1,"name":impostor}),
        );
        let msg = sim.expect_error(2, ErrorCode::NameTaken, Some(id));
        assert!(msg.contains("looks like"), "{impostor}: {msg}");
    }
    // Alice's own token does not make a look-alike hers either: it would be a second user.
    sim.say(
        2,
        json!({"type":"hello","id":20,"version":1,"name":"\u{430}lice","token":alice}),
    );
    sim.expect_error(2, ErrorCode::NameTaken, Some(20));
    // Names that merely share letters are fine, and so is a name once its holder is gone.
    sim.say(
        2,
        json!({"type":"hello","id":30,"version":1,"name":"alicia"}),
    );
    assert!(matches!(sim.take(2)[0], ServerFrame::Welcome { .. }));
    sim.disconnect(1);
    sim.advance(GRACE * 2);
    sim.connect(5);
    sim.say(
        5,
        json!({"type":"hello","id":40,"version":1,"name":"\u{430}lice"}),
    );
    assert!(matches!(sim.take(5)[0], ServerFrame::Welcome { .. }));
    // ... and now the Latin spelling is the look-alike.
    sim.connect(6);
    sim.say(
        6,
        json!({"type":"hello","id":41,"version":1,"name":"alice"}),
    );
    sim.expect_error(6, ErrorCode::NameTaken, Some(41));
    sim.assert_no_violations();
}

#[test]
fn names_are_case_insensitive_and_keep_the_first_spelling() {
    let mut sim = Sim::new();
    let token = sim.hello(1, "Alice");
    sim.hello_with_token(2, "aLiCe", &token);
    match &sim.take(2)[0] {
        ServerFrame::Welcome { user, .. } => assert_eq!(user.as_str(), "Alice"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        names(&sim.server.members(&room("general")).unwrap()),
        ["Alice"]
    );
}

#[test]
fn invalid_names_are_refused_and_the_session_may_try_again() {
    let mut sim = Sim::new();
    sim.connect(1);
    let long = "n".repeat(33);
    for (i, name) in ["", "  ", "a b", "a\u{200D}b", "a@b", "a,b", "\u{7}", &long]
        .iter()
        .enumerate()
    {
        let id = i as u64;
        sim.say(1, json!({"type":"hello","id":id,"version":1,"name":name}));
        sim.expect_error(1, ErrorCode::InvalidName, Some(id));
    }
    sim.say(1, json!({"type":"hello","version":1,"name":" Zoë "}));
    match &sim.take(1)[0] {
        ServerFrame::Welcome { user, .. } => assert_eq!(user.as_str(), "Zoë"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_second_hello_on_a_connection_is_refused() {
    let mut sim = Sim::new();
    sim.hello(1, "alice");
    sim.clear();
    sim.say(1, json!({"type":"hello","id":3,"version":1,"name":"bob"}));
    sim.expect_error(1, ErrorCode::AlreadyWelcomed, Some(3));
    assert_eq!(
        names(&sim.server.members(&room("general")).unwrap()),
        ["alice"]
    );
}

#[test]
fn a_lingering_user_who_returns_to_only_some_rooms_leaves_the_others_after_grace() {
    let mut sim = Sim::new();
    sim.hello(1, "bob");
    sim.join(1, "dev");
    let token = sim.hello(2, "alice");
    sim.join(2, "dev");
    sim.clear();

    sim.disconnect(2);
    sim.advance(Duration::from_secs(1));
    sim.connect(3);
    sim.say(
        3,
        json!({"type":"hello","version":1,"name":"alice","token":token,"rooms":[{"room":"general"}]}),
    );
    sim.advance(GRACE);
    assert_eq!(presence(&sim.take(1)), ["-alice@dev"]);
    assert_eq!(names(&sim.server.members(&room("dev")).unwrap()), ["bob"]);
    assert_eq!(
        names(&sim.server.members(&room("general")).unwrap()),
        ["alice", "bob"]
    );
}

#[test]
fn a_second_disconnect_gets_a_full_grace_period_of_its_own() {
    let mut sim = Sim::new();
    sim.hello(1, "bob");
    let token = sim.hello(2, "alice");
    sim.clear();
    sim.disconnect(2); // grace until t=5 s
    sim.advance(Duration::from_secs(1));
    sim.hello_with_token(3, "alice", &token);
    sim.advance(Duration::from_secs(2));
    sim.disconnect(3); // a new grace, until t=8 s
    sim.advance(Duration::from_secs(4)); // t=7 s: the first deadline is long past
    sim.expect_nothing(1);
    assert_eq!(
        names(&sim.server.members(&room("general")).unwrap()),
        ["alice", "bob"]
    );
    sim.advance(Duration::from_secs(1)); // t=8 s
    assert_eq!(presence(&sim.take(1)), ["-alice@general"]);
}

#[test]
fn leaving_after_coming_back_within_the_grace_period_is_announced() {
    let mut sim = Sim::new();
    sim.hello(1, "bob");
    let token = sim.hello(2, "alice");
    sim.clear();
    sim.disconnect(2);
    sim.advance(Duration::from_secs(1));
    sim.hello_with_token(3, "alice", &token);
    sim.say(3, json!({"type":"leave","room":"general"}));
    assert_eq!(presence(&sim.take(1)), ["-alice@general"]);
    sim.advance(GRACE * 2);
    sim.expect_nothing(1);
    assert_eq!(
        names(&sim.server.members(&room("general")).unwrap()),
        ["bob"]
    );
}

// ---- typing ----

fn typing(frames: &[ServerFrame]) -> Vec<String> {
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Typing { room, user, active } => Some(format!(
                "{user}@{room}:{}",
                if *active { "on" } else { "off" }
            )),
            _ => None,
        })
        .collect()
}

/// bob (1), alice with two tabs (2, 3), all in general.
fn typing_room() -> Sim {
    let mut sim = Sim::new();
    sim.hello(1, "bob");
    let token = sim.hello(2, "alice");
    sim.hello_with_token(3, "alice", &token);
    sim.clear();
    sim
}

#[test]
fn typing_is_shown_to_others_once_and_expires_by_itself() {
    let mut sim = typing_room();
    sim.say(2, json!({"type":"typing","room":"general","active":true}));
    assert_eq!(typing(&sim.take(1)), ["alice@general:on"]);
    // Not echoed to alice's own tabs.
    sim.expect_nothing(2);
    sim.expect_nothing(3);

    // Renewing (from either tab) sends nothing new but extends the expiry.
    sim.advance(Duration::from_secs(4));
    sim.say(3, json!({"type":"typing","room":"general","active":true}));
    sim.expect_nothing(1);
    sim.advance(Duration::from_secs(5));
    sim.expect_nothing(1);
    sim.advance(Duration::from_secs(1));
    assert_eq!(typing(&sim.take(1)), ["alice@general:off"]);
    sim.advance(Duration::from_secs(60));
    sim.expect_nothing(1);
}

#[test]
fn typing_stops_when_asked_when_leaving_and_is_ended_by_the_message() {
    let mut sim = typing_room();
    sim.say(2, json!({"type":"typing","room":"general","active":true}));
    sim.say(2, json!({"type":"typing","room":"general","active":false}));
    assert_eq!(
        typing(&sim.take(1)),
        ["alice@general:on", "alice@general:off"]
    );
    // Stopping when not typing says nothing.
    sim.say(2, json!({"type":"typing","room":"general","active":false}));
    sim.expect_nothing(1);

    // Posting ends typing: no stale "off" later.
    sim.advance(Duration::from_secs(2));
    sim.say(2, json!({"type":"typing","room":"general","active":true}));
    sim.send(2, 1, "general", "done typing");
    let frames = sim.take(1);
    assert_eq!(
        frames.iter().map(kind).collect::<Vec<_>>(),
        ["typing", "message"]
    );
    sim.advance(Duration::from_secs(10));
    sim.expect_nothing(1);

    // The last of alice's sessions leaving clears it.
    sim.say(2, json!({"type":"typing","room":"general","active":true}));
    sim.take(1);
    sim.say(2, json!({"type":"leave","room":"general"}));
    sim.expect_nothing(1);
    sim.say(3, json!({"type":"leave","room":"general"}));
    assert_eq!(
        sim.take(1).iter().map(kind).collect::<Vec<_>>(),
        ["typing", "user_left"]
    );
}

#[test]
fn typing_ends_when_the_typist_disconnects() {
    let mut sim = Sim::new();
    sim.hello(1, "bob");
    sim.hello(2, "alice");
    sim.say(2, json!({"type":"typing","room":"general","active":true}));
    sim.clear();
    sim.disconnect(2);
    assert_eq!(typing(&sim.take(1)), ["alice@general:off"]);
    sim.assert_no_violations();
}

#[test]
fn typing_in_a_room_you_are_not_in_is_refused_and_excess_typing_is_coalesced() {
    let mut sim = typing_room();
    sim.say(1, json!({"type":"typing","room":"elsewhere","active":true}));
    sim.expect_error(1, ErrorCode::NotMember, None);

    // Burst of 4 typing frames, then 1/s: excess is dropped silently, never an error.
    for _ in 0..10 {
        sim.say(1, json!({"type":"typing","room":"general","active":true}));
        sim.say(1, json!({"type":"typing","room":"general","active":false}));
    }
    sim.expect_nothing(1);
    let seen = typing(&sim.take(2));
    assert_eq!(seen.len(), 4, "{seen:?}");
}

#[test]
fn direct_message_typing_reaches_only_the_peer() {
    let mut sim = typing_room();
    sim.hello(4, "carol");
    sim.say(1, json!({"type":"send","to":"alice","body":"hey"}));
    sim.clear();
    sim.say(
        1,
        json!({"type":"typing","room":"@alice,bob","active":true}),
    );
    assert_eq!(typing(&sim.take(2)), ["bob@@alice,bob:on"]);
    assert_eq!(typing(&sim.take(3)), ["bob@@alice,bob:on"]);
    sim.expect_nothing(1);
    sim.expect_nothing(4);
}

#[test]
fn direct_message_typing_ends_with_the_typists_last_session() {
    let mut sim = typing_room();
    sim.say(2, json!({"type":"send","to":"bob","body":"hey"}));
    sim.say(
        2,
        json!({"type":"typing","room":"@alice,bob","active":true}),
    );
    assert_eq!(typing(&sim.take(1)), ["alice@@alice,bob:on"]);
    // One of alice's two tabs closing: she may still be typing in the other.
    sim.disconnect(2);
    assert_eq!(typing(&sim.take(1)), Vec::<String>::new());
    // Her last one: bob's indicator goes now, not when it would have expired.
    sim.disconnect(3);
    assert_eq!(typing(&sim.take(1)), ["alice@@alice,bob:off"]);
    sim.advance(Duration::from_secs(60));
    assert_eq!(typing(&sim.take(1)), Vec::<String>::new());
    sim.assert_no_violations();
}

#[test]
fn grace_period_is_configurable() {
    let mut sim = Sim::with(Config {
        presence_grace: Duration::ZERO,
        ..Config::default()
    });
    sim.hello(1, "bob");
    sim.hello(2, "alice");
    sim.clear();
    sim.disconnect(2);
    sim.advance(Duration::ZERO);
    assert_eq!(presence(&sim.take(1)), ["-alice@general"]);
}

// ---- version 2: coalesced presence, the threshold, paged member lists ----

const TICK: Duration = Duration::from_millis(50);

/// A `presence` frame as `(joins, leaves, members, count)`, names as strings.
type Diff = (Vec<String>, Vec<String>, Option<Vec<String>>, usize);

fn diffs(frames: &[ServerFrame]) -> Vec<Diff> {
    let strings = |v: &Option<Vec<chat_core::UserName>>| {
        v.as_ref()
            .map(|v| v.iter().map(ToString::to_string).collect::<Vec<_>>())
    };
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Presence {
                joins,
                leaves,
                members,
                count,
                ..
            } => Some((
                strings(joins).unwrap_or_default(),
                strings(leaves).unwrap_or_default(),
                strings(members),
                *count,
            )),
            _ => None,
        })
        .collect()
}

fn s(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// A join storm costs one frame per member per tick, not one per join: every join and
/// leave of the tick is in one `presence` frame, encoded once for every version-2
/// member; a user who came and went within the tick is in neither list; a version-1
/// session in the same room is told each change at once, as before.
#[test]
fn version_2_members_get_one_coalesced_presence_frame_per_tick() {
    let mut sim = Sim::new();
    sim.hello_v2(1, "alice");
    sim.hello(2, "old");
    sim.advance(TICK);
    sim.clear();
    sim.broadcasts.clear();
    for (s, name) in [(3, "bob"), (4, "carol"), (5, "dave")] {
        sim.hello_v2(s, name);
    }
    // dave leaves within the tick; a second tab of bob announces nothing.
    let bob = sim.token_of(3);
    sim.hello_with_token(6, "bob", &bob);
    sim.disconnect(6);
    sim.say(5, json!({"type":"leave","id":1,"room":"general"}));
    sim.advance(TICK - Duration::from_millis(1));
    assert!(diffs(&sim.take(1)).is_empty(), "nothing before the tick");
    assert_eq!(
        presence(&sim.take(2)),
        [
            "+bob@general",
            "+carol@general",
            "+dave@general",
            "-dave@general"
        ],
        "version 1 is told at once"
    );
    sim.broadcasts.clear();
    sim.advance(Duration::from_millis(1));
    let expected = (s(&["bob", "carol"]), vec![], None, 4);
    for member in [1, 3, 4] {
        assert_eq!(
            diffs(&sim.take(member)),
            std::slice::from_ref(&expected),
            "session {member}"
        );
    }
    assert!(diffs(&sim.take(5)).is_empty(), "dave left the room");
    assert!(sim.take(2).is_empty(), "version 1 gets no presence frame");
    let presence_frames: Vec<_> = sim
        .broadcasts
        .iter()
        .filter(|(_, text)| text.starts_with(r#"{"type":"presence""#))
        .collect();
    assert_eq!(
        presence_frames.len(),
        1,
        "encoded once: {presence_frames:?}"
    );
    assert_eq!(presence_frames[0].0, 3, "to alice, bob and carol");
    // A quiet room arms no tick.
    sim.advance(TICK * 10);
    sim.expect_nothing(1);
}

/// The joins and leaves of one tick are listed in the order they happened, as version 1
/// announces them one by one (a page shows "zoe joined", then "amy joined"), not sorted.
#[test]
fn a_tick_lists_its_changes_in_the_order_they_happened() {
    let mut sim = Sim::new();
    sim.hello_v2(1, "mia");
    for (s, name) in [(2, "zoe"), (3, "bob"), (4, "amy"), (5, "kim")] {
        sim.hello_v2(s, name);
    }
    sim.advance(TICK);
    sim.clear();
    for (s, name) in [(6, "yan"), (7, "cal"), (8, "ann")] {
        sim.hello_v2(s, name);
    }
    for s in [5, 2, 4] {
        sim.say(s, json!({"type":"leave","id":1,"room":"general"}));
    }
    sim.advance(TICK);
    assert_eq!(
        diffs(&sim.take(1)),
        [(
            s(&["yan", "cal", "ann"]),
            s(&["kim", "zoe", "amy"]),
            None,
            5
        )]
    );
}

/// A member who comes and goes while a version-2 session joins is told to that session
/// (its `joined` listed them), so every view converges; `welcome` names the version.
#[test]
fn a_user_seen_by_a_joiner_within_the_tick_is_told_as_a_leave() {
    let mut sim = Sim::new();
    sim.hello_v2(1, "alice");
    let frames = sim.take(1);
    let ServerFrame::Welcome { version, .. } = &frames[0] else {
        panic!("{frames:?}")
    };
    assert_eq!(*version, 2);
    let ServerFrame::Joined { members, count, .. } = &frames[1] else {
        panic!("{frames:?}")
    };
    assert_eq!(
        (names(members), *count),
        (vec!["alice".to_owned()], Some(1))
    );
    sim.advance(TICK);
    sim.clear();
    sim.hello_v2(2, "bob");
    sim.hello_v2(3, "carol");
    let ServerFrame::Joined { members, .. } = &sim.take(3)[1] else {
        panic!()
    };
    assert_eq!(names(members), ["alice", "bob", "carol"]);
    sim.say(2, json!({"type":"leave","id":1,"room":"general"}));
    sim.advance(TICK);
    let expected = (s(&["carol"]), s(&["bob"]), None, 2);
    assert_eq!(diffs(&sim.take(3)), std::slice::from_ref(&expected));
    assert_eq!(
        diffs(&sim.take(1)),
        [expected],
        "a leave of one alice never had"
    );
}

/// Above the threshold members get counts only, `joined` carries the first page and
/// the count, and `members` pages with `after` and a bounded `limit`; back at the
/// threshold the tick sends the whole list.
#[test]
fn above_the_threshold_counts_replace_names_and_the_list_is_paged() {
    let mut sim = Sim::with(Config {
        presence_threshold: 3,
        // The count's own cadence is the next test's.
        presence_count_tick: TICK,
        ..Config::default()
    });
    for (s, name) in [(1, "ann"), (2, "ben"), (3, "cy")] {
        sim.hello_v2(s, name);
    }
    sim.advance(TICK);
    sim.clear();
    sim.hello_v2(4, "dee");
    sim.hello_v2(5, "eve");
    let ServerFrame::Joined { members, count, .. } = &sim.take(5)[1] else {
        panic!()
    };
    assert_eq!(names(members), ["ann", "ben", "cy"], "the first page");
    assert_eq!(*count, Some(5));
    sim.advance(TICK);
    for member in 1..=5 {
        assert_eq!(diffs(&sim.take(member)), [(vec![], vec![], None, 5)]);
    }
    sim.say(
        5,
        json!({"type":"members","id":1,"room":"general","after":"BEN","limit":2}),
    );
    let ServerFrame::Members {
        members,
        count,
        more,
        ..
    } = sim.take_one(5)
    else {
        panic!()
    };
    assert_eq!(
        (names(&members), count, more),
        (s(&["cy", "dee"]), Some(5), Some(true))
    );
    sim.say(
        5,
        json!({"type":"members","id":2,"room":"general","after":"dee"}),
    );
    let ServerFrame::Members { members, more, .. } = sim.take_one(5) else {
        panic!()
    };
    assert_eq!((names(&members), more), (s(&["eve"]), Some(false)));
    sim.say(
        5,
        json!({"type":"members","id":3,"room":"general","limit":501}),
    );
    sim.expect_error(5, ErrorCode::InvalidRequest, Some(3));
    sim.say(
        5,
        json!({"type":"members","id":4,"room":"general","limit":0}),
    );
    sim.expect_error(5, ErrorCode::InvalidRequest, Some(4));
    // Two leave: at the threshold again, everyone gets the whole list.
    sim.say(4, json!({"type":"leave","room":"general"}));
    sim.say(5, json!({"type":"leave","room":"general"}));
    sim.advance(TICK);
    let all = (vec![], vec![], Some(s(&["ann", "ben", "cy"])), 3);
    assert_eq!(diffs(&sim.take(1)), [all]);
    // Then diffs again.
    sim.say(3, json!({"type":"leave","room":"general"}));
    sim.advance(TICK);
    assert_eq!(diffs(&sim.take(1)), [(vec![], s(&["cy"]), None, 2)]);
}

/// A session that may not see a room's presence gets no `presence` frames, no member
/// list and no count, in version 2 as in version 1.
#[test]
fn a_blind_version_2_session_gets_no_presence_and_no_list() {
    use chat_core::{Identity, Permissions, RoomName, SharedPolicy};
    let policy =
        SharedPolicy::new(
            |who: &Identity, _: &RoomName, rules: Permissions| Permissions {
                presence: who.user != "pat",
                ..rules
            },
        );
    let mut sim = Sim::with(Config {
        room_policy: Some(policy),
        ..Config::default()
    });
    sim.hello_v2(1, "ada");
    sim.connect_as(2, Identity::new("pat"));
    sim.say(2, json!({"type":"hello","version":2,"name":"pat"}));
    let frames = sim.expect_kinds(2, &["welcome", "joined"]);
    let ServerFrame::Joined { members, count, .. } = &frames[1] else {
        panic!()
    };
    assert!(members.is_empty() && count.is_none(), "{frames:?}");
    sim.hello_v2(3, "quinn");
    sim.advance(TICK);
    assert_eq!(
        diffs(&sim.take(1)),
        [(s(&["pat", "quinn"]), vec![], None, 3)]
    );
    sim.expect_kinds(3, &["welcome", "joined", "presence"]);
    sim.expect_nothing(2);
    sim.disconnect(3);
    sim.advance(GRACE + TICK);
    assert_eq!(diffs(&sim.take(1)), [(vec![], s(&["quinn"]), None, 2)]);
    sim.expect_nothing(2);
    sim.say(2, json!({"type":"members","id":1,"room":"general"}));
    sim.expect_error(2, ErrorCode::Forbidden, Some(1));
}

/// Above the threshold the count goes out at most once per `presence_count_tick` (1 s
/// by default): a stream of joins into a big room costs each member one frame a
/// second, not one per 50 ms tick, and the count is right once the second is over.
/// At or below the threshold the 50 ms tick is unchanged.
#[test]
fn above_the_threshold_the_count_goes_out_once_a_second() {
    let mut sim = Sim::with(Config {
        presence_threshold: 3,
        ..Config::default()
    });
    let count_tick = Config::default().presence_count_tick;
    assert_eq!(count_tick, Duration::from_secs(1));
    for (s, name) in [(1, "ann"), (2, "ben"), (3, "cy")] {
        sim.hello_v2(s, name);
    }
    sim.advance(TICK);
    sim.clear();
    // Twelve joins, one every 50 ms: the room is above the threshold from the first.
    for i in 0..12u64 {
        sim.hello_v2(10 + i, &format!("user{i}"));
        sim.advance(TICK);
    }
    sim.advance(count_tick);
    let frames = diffs(&sim.take(1));
    assert!(
        (1..=2).contains(&frames.len()),
        "one count frame per second, not one per tick: {frames:?}"
    );
    assert_eq!(frames.last(), Some(&(vec![], vec![], None, 15)));
    // Back at the threshold: the whole list, on the 50 ms tick of a small room.
    for i in 0..12u64 {
        sim.disconnect(10 + i);
    }
    sim.advance(Config::default().presence_grace + count_tick);
    sim.clear();
    sim.hello_v2(30, "dot");
    sim.advance(TICK);
    assert_eq!(diffs(&sim.take(1)), [], "above the threshold: not yet");
    sim.advance(count_tick);
    assert_eq!(
        diffs(&sim.take(1)),
        [(vec![], vec![], None, 4)],
        "above the threshold again: a count, within the second"
    );
    sim.say(30, json!({"type":"leave","room":"general"}));
    sim.advance(TICK);
    assert_eq!(
        diffs(&sim.take(1)),
        [(vec![], vec![], Some(s(&["ann", "ben", "cy"])), 3)]
    );
    sim.say(3, json!({"type":"leave","room":"general"}));
    sim.advance(TICK);
    assert_eq!(
        diffs(&sim.take(1)),
        [(vec![], s(&["cy"]), None, 2)],
        "a small room keeps the 50 ms tick"
    );
}
