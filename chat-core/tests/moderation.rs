//! The host's moderation: kick, ban (with an expiry), mute; told to the room, applied to
//! every session of the user, reported as events.

mod common;

use std::time::Duration;

use chat_core::protocol::{ErrorCode, ModAction, Role, ServerFrame};
use chat_core::{Config, Event, Identity, Permissions, RoomName, SharedPolicy};
use common::{Sim, kind, names, room};
use serde_json::json;

fn lobby() -> Config {
    Config {
        default_rooms: vec!["lobby".into()],
        ..Config::default()
    }
}

fn moderated(frames: &[ServerFrame]) -> Vec<(String, ModAction, Option<String>)> {
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Moderated {
                user,
                action,
                reason,
                ..
            } => Some((user.to_string(), *action, reason.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_kick_takes_every_tab_of_the_user_out_and_tells_everyone_why() {
    let mut sim = Sim::with(lobby());
    sim.hello(1, "alice");
    let token = sim.hello(2, "bob");
    sim.hello_with_token(3, "bob", &token);
    sim.clear();
    let left = sim.server.kick(sim.now, "lobby", "BOB", "spam").unwrap();
    sim.drain();
    assert_eq!(left, 2);
    for s in [2, 3] {
        let frames = sim.take(s);
        let kinds: Vec<_> = frames.iter().map(kind).collect();
        assert_eq!(kinds, ["moderated", "left"], "session {s}");
        assert_eq!(
            moderated(&frames),
            [("bob".into(), ModAction::Kick, Some("spam".into()))]
        );
    }
    let frames = sim.take(1);
    assert_eq!(
        frames.iter().map(kind).collect::<Vec<_>>(),
        ["moderated", "user_left"]
    );
    assert_eq!(
        names(&sim.server.members(&room("lobby")).unwrap()),
        ["alice"]
    );
    assert!(sim.take_events().iter().any(|e| matches!(
        e,
        Event::Moderated { action: ModAction::Kick, reason: Some(r), .. } if r == "spam"
    )));
    // A kick is not a ban: bob comes back.
    sim.say(2, json!({"type":"join","id":1,"room":"lobby"}));
    sim.expect_kinds(2, &["joined"]);
}

#[test]
fn a_ban_keeps_the_user_out_of_the_room_its_history_and_its_listing_until_it_expires() {
    let mut sim = Sim::with(lobby());
    sim.hello(1, "alice");
    sim.hello(2, "bob");
    sim.send(1, 1, "lobby", "before the ban");
    sim.clear();
    sim.server
        .ban(sim.now, "lobby", "bob", "", Some(Duration::from_secs(90)))
        .unwrap();
    sim.drain();
    let frames = sim.take(2);
    match &frames[0] {
        ServerFrame::Moderated {
            action: ModAction::Ban,
            reason: None,
            minutes: Some(2),
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    sim.say(2, json!({"type":"join","id":2,"room":"lobby"}));
    sim.expect_error(2, ErrorCode::Forbidden, Some(2));
    sim.say(2, json!({"type":"members","id":3,"room":"lobby"}));
    sim.expect_error(2, ErrorCode::Forbidden, Some(3));
    sim.say(2, json!({"type":"rooms","id":4}));
    match sim.take_one(2) {
        ServerFrame::Rooms { rooms, .. } => assert!(rooms.is_empty(), "{rooms:?}"),
        other => panic!("{other:?}"),
    }
    sim.advance(Duration::from_secs(89));
    sim.say(2, json!({"type":"join","id":5,"room":"lobby"}));
    sim.expect_error(2, ErrorCode::Forbidden, Some(5));
    sim.take(1);
    sim.take_events();
    sim.advance(Duration::from_secs(1));
    // The ban's end is told: to the room, and to bob outside it.
    let expired = [(
        "bob".to_owned(),
        ModAction::Unban,
        Some("expired".to_owned()),
    )];
    for s in [1, 2] {
        let frames = sim.take(s);
        assert_eq!(moderated(&frames), expired, "session {s}");
        assert!(matches!(
            &frames[..],
            [ServerFrame::Moderated {
                by: None,
                minutes: None,
                ..
            }]
        ));
    }
    assert!(matches!(
        &sim.take_events()[..],
        [Event::Moderated { action: ModAction::Unban, by: None, reason: Some(r), .. }] if r == "expired"
    ));
    sim.say(2, json!({"type":"join","id":6,"room":"lobby"}));
    sim.expect_kinds(2, &["joined"]);
    // A ban for good lasts until lifted.
    sim.server
        .ban(sim.now, "lobby", "bob", "again", None)
        .unwrap();
    sim.drain();
    sim.advance(Duration::from_secs(86_400));
    sim.clear();
    sim.say(2, json!({"type":"join","id":7,"room":"lobby"}));
    sim.expect_error(2, ErrorCode::Forbidden, Some(7));
    sim.server.unban("lobby", "bob").unwrap();
    sim.drain();
    // Lifted by the host: bob, outside the room, is told too.
    assert_eq!(
        moderated(&sim.take(2)),
        [("bob".to_owned(), ModAction::Unban, None)]
    );
    sim.say(2, json!({"type":"join","id":8,"room":"lobby"}));
    sim.expect_kinds(2, &["joined"]);
}

#[test]
fn a_muted_user_reads_but_cannot_post_whatever_the_policy_says() {
    let allow_all =
        SharedPolicy::new(|_: &Identity, _: &RoomName, _: Permissions| Permissions::ALL);
    let mut sim = Sim::with(Config {
        room_policy: Some(allow_all),
        ..lobby()
    });
    sim.hello(1, "alice");
    sim.hello(2, "bob");
    sim.server.mute("lobby", "bob", true).unwrap();
    sim.drain();
    sim.clear();
    sim.send(2, 1, "lobby", "hello?");
    sim.expect_error(2, ErrorCode::Forbidden, Some(1));
    sim.say(2, json!({"type":"typing","room":"lobby","active":true}));
    sim.expect_nothing(1);
    sim.send(1, 2, "lobby", "you can read this");
    sim.expect_kinds(2, &["message"]);
    sim.server.mute("lobby", "bob", false).unwrap();
    sim.drain();
    sim.clear();
    sim.send(2, 3, "lobby", "thanks");
    sim.expect_kinds(2, &["message", "ack"]);
}

#[test]
fn moderation_refuses_direct_and_invalid_rooms() {
    let mut sim = Sim::new();
    assert!(sim.server.kick(sim.now, "@a,b", "a", "").is_err());
    assert!(sim.server.mute("lobby", "two words", true).is_err());
}

// ---- roles and moderator frames ----

fn as_user(sim: &mut Sim, s: u64, identity: Identity) {
    sim.connect_as(s, identity);
    sim.say(s, json!({"type":"hello","version":1,"name":"ignored"}));
}

/// alice (1), bob (2), carol (3) with host identities, all in the lobby.
fn three_in_the_lobby(config: Config) -> Sim {
    let mut sim = Sim::with(config);
    for (s, name) in [(1, "alice"), (2, "bob"), (3, "carol")] {
        as_user(&mut sim, s, Identity::new(name));
    }
    sim.drain();
    sim.clear();
    sim
}

fn done(frames: &[ServerFrame]) -> Vec<(u64, ModAction)> {
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Done { id, action, .. } => Some((id.map_or(0, |i| i.0), *action)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_member_may_not_moderate_and_nothing_changes() {
    let mut sim = three_in_the_lobby(lobby());
    for (id, frame) in [
        (
            1,
            json!({"type":"kick","id":1,"room":"lobby","user":"carol"}),
        ),
        (
            2,
            json!({"type":"ban","id":2,"room":"lobby","user":"carol"}),
        ),
        (
            3,
            json!({"type":"mute","id":3,"room":"lobby","user":"carol"}),
        ),
        (
            4,
            json!({"type":"unban","id":4,"room":"lobby","user":"carol"}),
        ),
        (
            5,
            json!({"type":"unmute","id":5,"room":"lobby","user":"carol"}),
        ),
        (
            6,
            json!({"type":"set_role","id":6,"room":"lobby","user":"bob","role":"owner"}),
        ),
        (
            7,
            json!({"type":"topic","id":7,"room":"lobby","topic":"mine"}),
        ),
        (
            8,
            json!({"type":"slow_mode","id":8,"room":"lobby","seconds":5}),
        ),
    ] {
        sim.say(2, frame);
        let msg = sim.expect_error(2, ErrorCode::Forbidden, Some(id));
        assert!(
            msg.contains("moderator") || msg.contains("owner"),
            "{id}: {msg}"
        );
    }
    sim.expect_nothing(1);
    sim.expect_nothing(3);
    assert_eq!(
        names(&sim.server.members(&room("lobby")).unwrap()),
        ["alice", "bob", "carol"]
    );
    assert_eq!(sim.server.role("lobby", "bob"), Ok(Role::Member));
    assert_eq!(sim.server.topic(&room("lobby")), None);
    sim.send(3, 9, "lobby", "still free to talk");
    sim.expect_kinds(3, &["message", "ack"]);
}

#[test]
fn a_moderator_acts_on_members_only_and_only_owners_give_roles() {
    let mut sim = three_in_the_lobby(lobby());
    sim.server.set_role("lobby", "alice", Role::Owner).unwrap();
    sim.drain();
    sim.clear();
    sim.say(
        1,
        json!({"type":"set_role","id":1,"room":"lobby","user":"Carol","role":"moderator"}),
    );
    let frames = sim.take(1);
    assert_eq!(done(&frames), [(1, ModAction::SetRole)]);
    assert_eq!(sim.server.role("lobby", "carol"), Ok(Role::Moderator));
    match &sim.take(3)[..] {
        [
            ServerFrame::Moderated {
                user,
                role: Some(Role::Moderator),
                by: Some(by),
                ..
            },
        ] => {
            assert_eq!((user.as_str(), by.as_str()), ("carol", "alice"));
        }
        other => panic!("{other:?}"),
    }
    sim.clear();
    // Not on an owner, not on themselves, and no roles.
    sim.say(
        3,
        json!({"type":"kick","id":2,"room":"lobby","user":"alice"}),
    );
    let msg = sim.expect_error(3, ErrorCode::Forbidden, Some(2));
    assert!(msg.contains("alice is an owner of lobby"), "{msg}");
    sim.say(
        3,
        json!({"type":"mute","id":3,"room":"lobby","user":"carol"}),
    );
    let msg = sim.expect_error(3, ErrorCode::Forbidden, Some(3));
    assert!(msg.contains("yourself"), "{msg}");
    sim.say(
        3,
        json!({"type":"set_role","id":4,"room":"lobby","user":"bob","role":"moderator"}),
    );
    sim.expect_error(3, ErrorCode::Forbidden, Some(4));
    sim.expect_nothing(1);
    // On a member: done, with the moderator named to the room and to the host.
    sim.say(
        3,
        json!({"type":"kick","id":5,"room":"lobby","user":"bob","reason":"spam"}),
    );
    let frames = sim.take(3);
    assert_eq!(
        frames.iter().map(kind).collect::<Vec<_>>(),
        ["moderated", "user_left", "done"]
    );
    assert_eq!(done(&frames), [(5, ModAction::Kick)]);
    sim.expect_kinds(2, &["moderated", "left"]);
    assert!(sim.take_events().iter().any(|e| matches!(
        e,
        Event::Moderated { action: ModAction::Kick, by: Some(by), reason: Some(r), .. }
            if by.as_str() == "carol" && r == "spam"
    )));
    // An owner acts on a moderator, and takes the role away.
    sim.say(
        1,
        json!({"type":"set_role","id":6,"room":"lobby","user":"carol","role":"member"}),
    );
    sim.drain();
    assert_eq!(sim.server.role("lobby", "carol"), Ok(Role::Member));
    sim.clear();
    sim.say(3, json!({"type":"topic","id":7,"room":"lobby","topic":"x"}));
    sim.expect_error(3, ErrorCode::Forbidden, Some(7));
}

#[test]
fn the_creator_owns_a_new_room_only_when_identities_come_from_the_host() {
    let mut sim = Sim::with(lobby());
    as_user(&mut sim, 1, Identity::new("alice"));
    sim.hello(2, "eve");
    sim.drain();
    sim.clear();
    sim.say(1, json!({"type":"join","id":1,"room":"Club"}));
    match sim.take_one(1) {
        ServerFrame::Joined { role, .. } => assert_eq!(role, Some(Role::Owner)),
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.server.role("club", "alice"), Ok(Role::Owner));
    // Not the default room, which the host configured.
    assert_eq!(sim.server.role("lobby", "alice"), Ok(Role::Member));
    // Who joins an existing room does not own it.
    sim.say(2, json!({"type":"join","id":2,"room":"club"}));
    match sim.take_one(2) {
        ServerFrame::Joined { role, .. } => assert_eq!(role, None),
        other => panic!("{other:?}"),
    }
    // An anonymous creator owns nothing: the name could be someone else's tomorrow.
    sim.say(2, json!({"type":"join","id":3,"room":"poetry"}));
    sim.drain();
    sim.clear();
    assert_eq!(sim.server.role("poetry", "eve"), Ok(Role::Member));
    sim.say(
        2,
        json!({"type":"topic","id":4,"room":"poetry","topic":"mine"}),
    );
    sim.expect_error(2, ErrorCode::Forbidden, Some(4));
}

/// Host policy: `admin` accounts own every room.
struct Admins;

impl chat_core::RoomPolicy for Admins {
    fn permissions(&self, _: &Identity, _: &RoomName, rules: Permissions) -> Permissions {
        rules
    }
    fn role(&self, who: &Identity, _: &RoomName) -> Option<Role> {
        who.roles.contains("admin").then_some(Role::Owner)
    }
}

#[test]
fn the_host_policy_gives_roles_from_the_identity() {
    let mut sim = Sim::with(Config {
        room_policy: Some(SharedPolicy::new(Admins)),
        ..lobby()
    });
    as_user(&mut sim, 1, Identity::new("root").with_role("admin"));
    as_user(&mut sim, 2, Identity::new("bob"));
    sim.drain();
    sim.clear();
    assert_eq!(sim.server.role("lobby", "root"), Ok(Role::Owner));
    // A room role below the policy's does not lower it.
    sim.server.set_role("lobby", "root", Role::Member).unwrap();
    assert_eq!(sim.server.role("lobby", "root"), Ok(Role::Owner));
    sim.drain();
    sim.clear();
    sim.say(
        1,
        json!({"type":"ban","id":1,"room":"lobby","user":"bob","minutes":5}),
    );
    let frames = sim.take(1);
    assert_eq!(done(&frames), [(1, ModAction::Ban)]);
    // And bob cannot act on the admin, whatever role he is given below owner.
    sim.server.unban("lobby", "bob").unwrap();
    sim.server
        .set_role("lobby", "bob", Role::Moderator)
        .unwrap();
    sim.drain();
    sim.clear();
    sim.say(2, json!({"type":"join","id":2,"room":"lobby"}));
    sim.drain();
    sim.clear();
    sim.say(
        2,
        json!({"type":"kick","id":3,"room":"lobby","user":"root"}),
    );
    sim.expect_error(2, ErrorCode::Forbidden, Some(3));
}

#[test]
fn slow_mode_refuses_a_members_early_post_with_when_and_exempts_moderators() {
    let mut sim = three_in_the_lobby(lobby());
    sim.server
        .set_role("lobby", "carol", Role::Moderator)
        .unwrap();
    sim.say(
        3,
        json!({"type":"slow_mode","id":1,"room":"lobby","seconds":60}),
    );
    sim.drain();
    assert!(done(&sim.take(3)).contains(&(1, ModAction::SlowMode)));
    match &sim.take(2)[..] {
        [
            _,
            ServerFrame::SlowMode {
                seconds: 60,
                by: Some(by),
                ..
            },
        ] => {
            assert_eq!(by.as_str(), "carol");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        sim.take_events()
            .iter()
            .any(|e| matches!(e, Event::SlowModeChanged { seconds: 60, .. }))
    );
    sim.clear();
    sim.send(2, 2, "lobby", "one");
    sim.expect_kinds(2, &["message", "ack"]);
    sim.clear();
    sim.advance(Duration::from_millis(15_500));
    // Many early sends: each refused with when, none closes the connection.
    for id in 3..30 {
        sim.send(2, id, "lobby", "two");
        let msg = sim.expect_error(2, ErrorCode::SlowMode, Some(id));
        assert!(msg.contains("in 45 s"), "{msg}");
    }
    assert_eq!(sim.close_reason(2), None);
    sim.expect_nothing(1);
    // Moderators are exempt; other members have their own interval.
    for id in 30..33 {
        sim.send(3, id, "lobby", "mod");
        sim.expect_kinds(3, &["message", "ack"]);
    }
    sim.send(1, 33, "lobby", "alice's first");
    sim.drain();
    assert!(done(&sim.take(1)).is_empty());
    sim.clear();
    sim.advance(Duration::from_millis(44_500));
    sim.send(2, 34, "lobby", "two");
    sim.expect_kinds(2, &["message", "ack"]);
    // Off again.
    sim.server.set_slow_mode("lobby", 0).unwrap();
    sim.drain();
    sim.clear();
    sim.send(2, 35, "lobby", "three");
    sim.expect_kinds(2, &["message", "ack"]);
}

#[test]
fn a_timed_mute_from_a_moderator_ends_by_itself_and_a_ban_keeps_the_user_out() {
    let mut sim = three_in_the_lobby(lobby());
    sim.server
        .set_role("lobby", "carol", Role::Moderator)
        .unwrap();
    sim.drain();
    sim.clear();
    sim.say(
        3,
        json!({"type":"mute","id":1,"room":"lobby","user":"bob","minutes":1,"reason":"calm"}),
    );
    sim.drain();
    match &sim.take(2)[..] {
        [
            ServerFrame::Moderated {
                action: ModAction::Mute,
                minutes: Some(1),
                ..
            },
        ] => {}
        other => panic!("{other:?}"),
    }
    sim.clear();
    sim.send(2, 2, "lobby", "hey");
    sim.expect_error(2, ErrorCode::Forbidden, Some(2));
    sim.advance(Duration::from_secs(59));
    for s in [1, 2, 3] {
        sim.expect_nothing(s);
    }
    sim.advance(Duration::from_secs(1));
    // Everyone in the room is told the mute is over.
    for s in [1, 2, 3] {
        assert_eq!(
            moderated(&sim.take(s)),
            [(
                "bob".to_owned(),
                ModAction::Unmute,
                Some("expired".to_owned())
            )],
            "session {s}"
        );
    }
    sim.send(2, 3, "lobby", "back");
    sim.expect_kinds(2, &["message", "ack"]);
    sim.clear();
    sim.say(3, json!({"type":"ban","id":4,"room":"lobby","user":"bob"}));
    sim.drain();
    sim.clear();
    sim.say(2, json!({"type":"join","id":6,"room":"lobby"}));
    sim.expect_error(2, ErrorCode::Forbidden, Some(6));
}

#[test]
fn bad_moderator_commands_get_one_clear_error_each() {
    let mut sim = three_in_the_lobby(lobby());
    sim.server.set_role("lobby", "alice", Role::Owner).unwrap();
    sim.drain();
    sim.clear();
    let long = "x".repeat(201);
    for (id, frame, code) in [
        (
            1,
            json!({"type":"topic","id":1,"room":"lobby","topic":long}),
            ErrorCode::InvalidRequest,
        ),
        (
            2,
            json!({"type":"topic","id":2,"room":"lobby","topic":"a\u{7}b"}),
            ErrorCode::InvalidRequest,
        ),
        (
            3,
            json!({"type":"slow_mode","id":3,"room":"lobby","seconds":86_401}),
            ErrorCode::InvalidRequest,
        ),
        (
            4,
            json!({"type":"ban","id":4,"room":"lobby","user":"bob","minutes":0}),
            ErrorCode::InvalidRequest,
        ),
        (
            5,
            json!({"type":"kick","id":5,"room":"@alice,bob","user":"bob"}),
            ErrorCode::InvalidRequest,
        ),
        (
            6,
            json!({"type":"kick","id":6,"room":"no such room!","user":"bob"}),
            ErrorCode::InvalidRoom,
        ),
        (
            7,
            json!({"type":"kick","id":7,"room":"lobby","user":"two words"}),
            ErrorCode::InvalidName,
        ),
        (
            8,
            json!({"type":"set_role","id":8,"room":"lobby","user":"bob","role":"god"}),
            ErrorCode::BadFrame,
        ),
    ] {
        sim.say(1, frame);
        sim.expect_error(1, code, Some(id));
    }
    sim.expect_nothing(2);
    assert_eq!(sim.server.topic(&room("lobby")), None);
    assert_eq!(
        names(&sim.server.members(&room("lobby")).unwrap()),
        ["alice", "bob", "carol"]
    );
    // Trimmed; empty clears.
    sim.say(
        1,
        json!({"type":"topic","id":9,"room":"lobby","topic":"  hi  "}),
    );
    sim.drain();
    assert_eq!(sim.server.topic(&room("lobby")).as_deref(), Some("hi"));
    sim.say(1, json!({"type":"topic","id":10,"room":"lobby","topic":""}));
    sim.drain();
    assert_eq!(sim.server.topic(&room("lobby")), None);
}

#[test]
fn moderation_before_hello_is_refused() {
    let mut sim = Sim::new();
    sim.connect(1);
    sim.say(1, json!({"type":"kick","id":1,"room":"lobby","user":"bob"}));
    sim.expect_error(1, ErrorCode::HelloRequired, Some(1));
}

// ---- durable mode: moderation that lasts ----

fn durable_lobby() -> Config {
    Config {
        durable: true,
        ..lobby()
    }
}

#[test]
fn a_durable_server_says_done_only_once_the_change_is_stored() {
    let mut sim = three_in_the_lobby(durable_lobby());
    sim.server
        .set_role("lobby", "carol", Role::Moderator)
        .unwrap();
    sim.drain();
    sim.clear();
    sim.hold_moderation = true;
    sim.say(
        3,
        json!({"type":"mute","id":1,"room":"lobby","user":"bob","minutes":5}),
    );
    // The room is told and the mute holds at once; carol's done waits for the store.
    sim.expect_kinds(3, &["moderated"]);
    assert!(matches!(
        &sim.moderation_saves[..],
        [(_, chat_core::ModerationChange::Mute { until: Some(_), .. })]
    ));
    sim.take(2);
    sim.send(2, 2, "lobby", "hey");
    sim.expect_error(2, ErrorCode::Forbidden, Some(2));
    sim.clear();
    sim.save_moderation(Ok(()));
    assert_eq!(done(&sim.take(3)), [(1, ModAction::Mute)]);
    // A store that fails: carol is told it was not stored, instead of done.
    sim.say(
        3,
        json!({"type":"unmute","id":3,"room":"lobby","user":"bob"}),
    );
    sim.expect_kinds(3, &["moderated"]);
    sim.save_moderation(Err(chat_core::StoreError::Full("disk full".into())));
    let message = sim.expect_error(3, ErrorCode::StorageUnavailable, Some(3));
    assert!(message.contains("not stored"), "{message}");
    // A kick changes nothing that lasts: done at once, nothing to store.
    sim.say(3, json!({"type":"kick","id":4,"room":"lobby","user":"bob"}));
    assert!(sim.moderation_saves.is_empty());
    assert_eq!(done(&sim.take(3)), [(4, ModAction::Kick)]);
}

#[test]
fn roles_bans_mutes_topic_and_slow_mode_survive_a_restart() {
    let mut sim = three_in_the_lobby(durable_lobby());
    sim.server
        .set_role("lobby", "carol", Role::Moderator)
        .unwrap();
    sim.drain();
    sim.say(
        3,
        json!({"type":"ban","id":1,"room":"lobby","user":"bob","reason":"spam"}),
    );
    sim.say(
        3,
        json!({"type":"mute","id":2,"room":"lobby","user":"alice","minutes":60}),
    );
    sim.say(
        3,
        json!({"type":"topic","id":3,"room":"lobby","topic":"be kind"}),
    );
    sim.say(
        3,
        json!({"type":"slow_mode","id":4,"room":"lobby","seconds":30}),
    );
    assert_eq!(
        done(&sim.take(3)),
        [
            (1, ModAction::Ban),
            (2, ModAction::Mute),
            (3, ModAction::Topic),
            (4, ModAction::SlowMode)
        ]
    );
    sim.restart(durable_lobby(), false);
    sim.clear();
    // Carol comes back: her role, the topic and the slow mode are in her joined.
    as_user(&mut sim, 13, Identity::new("carol"));
    match &sim.take(13)[..] {
        [
            ServerFrame::Welcome { .. },
            ServerFrame::Joined {
                topic,
                slow_mode,
                role,
                ..
            },
        ] => {
            assert_eq!(topic.as_deref(), Some("be kind"));
            assert_eq!(*slow_mode, Some(30));
            assert_eq!(*role, Some(Role::Moderator));
        }
        other => panic!("{other:?}"),
    }
    // Bob is still banned, alice still muted (for the rest of her hour).
    as_user(&mut sim, 12, Identity::new("bob"));
    sim.take(12);
    sim.say(12, json!({"type":"join","id":5,"room":"lobby"}));
    sim.expect_error(12, ErrorCode::Forbidden, Some(5));
    as_user(&mut sim, 11, Identity::new("alice"));
    sim.clear();
    sim.send(11, 6, "lobby", "am I heard?");
    sim.expect_error(11, ErrorCode::Forbidden, Some(6));
    // The mute's timer came back with it: it ends an hour after it was given.
    sim.advance(Duration::from_secs(3600));
    assert_eq!(
        moderated(&sim.take(11)),
        [(
            "alice".to_owned(),
            ModAction::Unmute,
            Some("expired".to_owned())
        )]
    );
    assert!(matches!(
        sim.moderation.last(),
        Some(chat_core::ModerationChange::Unmute { .. })
    ));
}

#[test]
fn a_ban_that_ended_while_the_server_was_down_is_lifted_at_startup() {
    let mut sim = three_in_the_lobby(durable_lobby());
    sim.server
        .ban(sim.now, "lobby", "bob", "", Some(Duration::from_secs(600)))
        .unwrap();
    sim.drain();
    // Down for twenty minutes.
    sim.now = sim.now.advance(Duration::from_secs(1200));
    sim.restart(durable_lobby(), false);
    sim.take_events();
    sim.advance(Duration::ZERO);
    assert!(matches!(
        &sim.take_events()[..],
        [Event::Moderated { action: ModAction::Unban, by: None, reason: Some(r), .. }] if r == "expired"
    ));
    assert!(matches!(
        sim.moderation.last(),
        Some(chat_core::ModerationChange::Unban { .. })
    ));
    as_user(&mut sim, 12, Identity::new("bob"));
    sim.clear();
    sim.say(12, json!({"type":"join","id":1,"room":"lobby"}));
    sim.expect_kinds(12, &["joined"]);
}

/// The host's own records: `mira` moderates every room, whether online or not.
struct ById;

impl chat_core::RoomPolicy for ById {
    fn permissions(&self, _: &Identity, _: &RoomName, rules: Permissions) -> Permissions {
        rules
    }

    fn role(&self, who: &Identity, _: &RoomName) -> Option<Role> {
        (who.user == "mira").then_some(Role::Moderator)
    }
}

#[test]
fn the_policys_role_holds_for_a_user_who_is_not_online() {
    let mut sim = three_in_the_lobby(Config {
        room_policy: Some(SharedPolicy::new(ById)),
        ..lobby()
    });
    sim.server
        .set_role("lobby", "carol", Role::Moderator)
        .unwrap();
    sim.drain();
    sim.clear();
    assert_eq!(sim.server.role("lobby", "mira"), Ok(Role::Moderator));
    // mira is offline: a moderator may not ban her, as if she were there.
    sim.say(3, json!({"type":"ban","id":1,"room":"lobby","user":"mira"}));
    sim.expect_error(3, ErrorCode::Forbidden, Some(1));
    // An offline member may be banned.
    sim.say(3, json!({"type":"ban","id":2,"room":"lobby","user":"dave"}));
    let frames = sim.take(3);
    assert_eq!(done(&frames), [(2, ModAction::Ban)]);
    as_user(&mut sim, 4, Identity::new("dave"));
    sim.clear();
    sim.say(4, json!({"type":"join","id":3,"room":"lobby"}));
    sim.expect_error(4, ErrorCode::Forbidden, Some(3));
}

/// Each range of PROTOCOL.md's moderator commands holds up to its last value: a ban or
/// mute of 5256000 minutes (ten years), a topic of 200 characters, slow mode of 86400
/// seconds; one more is `invalid_request` and changes nothing. The host's own calls
/// have the same bounds for the topic and slow mode.
#[test]
fn the_largest_values_in_range_are_accepted_and_one_more_is_refused() {
    const TEN_YEARS_IN_MINUTES: u64 = 10 * 365 * 24 * 60;
    let mut sim = three_in_the_lobby(lobby());
    sim.server.set_role("lobby", "alice", Role::Owner).unwrap();
    sim.drain();
    sim.clear();
    let topic = "t".repeat(200);
    for (id, frame) in [
        (
            1,
            json!({"type":"ban","id":1,"room":"lobby","user":"bob","minutes":TEN_YEARS_IN_MINUTES + 1}),
        ),
        (
            2,
            json!({"type":"mute","id":2,"room":"lobby","user":"carol","minutes":TEN_YEARS_IN_MINUTES + 1}),
        ),
        (
            3,
            json!({"type":"topic","id":3,"room":"lobby","topic":format!("{topic}t")}),
        ),
        (
            4,
            json!({"type":"slow_mode","id":4,"room":"lobby","seconds":86_401}),
        ),
    ] {
        sim.say(1, frame);
        let msg = sim.expect_error(1, ErrorCode::InvalidRequest, Some(id));
        if id <= 2 {
            assert!(msg.contains("1 to 5256000"), "{msg}");
        }
    }
    sim.expect_nothing(2);
    sim.expect_nothing(3);

    sim.say(
        1,
        json!({"type":"mute","id":5,"room":"lobby","user":"carol","minutes":TEN_YEARS_IN_MINUTES}),
    );
    assert_eq!(done(&sim.take(1)), [(5, ModAction::Mute)]);
    match &sim.take(3)[..] {
        [ServerFrame::Moderated { minutes, .. }] => {
            assert_eq!(*minutes, Some(TEN_YEARS_IN_MINUTES));
        }
        other => panic!("{other:?}"),
    }
    sim.send(3, 6, "lobby", "muted for a decade?");
    sim.expect_error(3, ErrorCode::Forbidden, Some(6));
    sim.clear();
    sim.say(
        1,
        json!({"type":"ban","id":7,"room":"lobby","user":"bob","minutes":TEN_YEARS_IN_MINUTES}),
    );
    assert_eq!(done(&sim.take(1)), [(7, ModAction::Ban)]);
    sim.expect_kinds(2, &["moderated", "left"]);
    sim.say(2, json!({"type":"join","id":8,"room":"lobby"}));
    sim.expect_error(2, ErrorCode::Forbidden, Some(8));

    sim.say(
        1,
        json!({"type":"topic","id":9,"room":"lobby","topic":topic}),
    );
    assert_eq!(done(&sim.take(1)), [(9, ModAction::Topic)]);
    assert_eq!(sim.server.topic(&room("lobby")), Some(topic.clone()));
    sim.say(
        1,
        json!({"type":"slow_mode","id":10,"room":"lobby","seconds":86_400}),
    );
    assert_eq!(done(&sim.take(1)), [(10, ModAction::SlowMode)]);

    assert!(sim.server.set_topic("lobby", &format!("{topic}u")).is_err());
    assert_eq!(sim.server.topic(&room("lobby")), Some(topic));
    sim.server.set_topic("lobby", &"u".repeat(200)).unwrap();
    assert_eq!(sim.server.topic(&room("lobby")), Some("u".repeat(200)));
    assert!(sim.server.set_slow_mode("lobby", 86_401).is_err());
    sim.server.set_slow_mode("lobby", 86_400).unwrap();
}

/// A refusal says what stood in the way: giving roles is for owners (a moderator is
/// told so, not that they are no moderator), and nobody acts on themselves (the action
/// is named).
#[test]
fn a_refused_moderator_is_told_exactly_why() {
    let mut sim = three_in_the_lobby(lobby());
    sim.server
        .set_role("lobby", "carol", Role::Moderator)
        .unwrap();
    sim.drain();
    sim.clear();
    sim.say(
        3,
        json!({"type":"set_role","id":1,"room":"lobby","user":"bob","role":"moderator"}),
    );
    let msg = sim.expect_error(3, ErrorCode::Forbidden, Some(1));
    assert_eq!(msg, "only an owner of lobby may give roles");
    sim.say(
        2,
        json!({"type":"kick","id":2,"room":"lobby","user":"alice"}),
    );
    let msg = sim.expect_error(2, ErrorCode::Forbidden, Some(2));
    assert_eq!(msg, "you are not a moderator of lobby");
    for (id, action) in [(3, "kick"), (4, "ban"), (5, "mute"), (6, "unban")] {
        sim.say(
            3,
            json!({"type":action,"id":id,"room":"lobby","user":"carol"}),
        );
        let msg = sim.expect_error(3, ErrorCode::Forbidden, Some(id));
        assert_eq!(msg, format!("you cannot {action} yourself"));
    }
    sim.expect_nothing(1);
    sim.expect_nothing(2);
}

/// The host's timed mute (`Server::mute_for`): the room is told with the reason and the
/// length, the user's sends are refused until it has passed, then the room is told it
/// ended (`unmute`, reason `expired`, nobody named) and sends are accepted. Bad names
/// are an error and change nothing.
#[test]
fn the_hosts_timed_mute_is_told_with_its_reason_and_ends_by_itself() {
    let mut sim = Sim::with(lobby());
    sim.hello(1, "alice");
    sim.hello(2, "bob");
    sim.clear();
    assert!(
        sim.server
            .mute_for(sim.now, "@alice,bob", "bob", "calm", None)
            .is_err()
    );
    sim.server
        .mute_for(
            sim.now,
            "lobby",
            "BOB",
            "calm down",
            Some(Duration::from_secs(120)),
        )
        .unwrap();
    sim.drain();
    for s in [1, 2] {
        match &sim.take(s)[..] {
            [
                ServerFrame::Moderated {
                    user,
                    action: ModAction::Mute,
                    reason: Some(reason),
                    minutes: Some(2),
                    by: None,
                    ..
                },
            ] => assert_eq!((user.as_str(), reason.as_str()), ("bob", "calm down")),
            other => panic!("session {s}: {other:?}"),
        }
    }
    sim.send(2, 1, "lobby", "but");
    sim.expect_error(2, ErrorCode::Forbidden, Some(1));
    sim.expect_nothing(1);
    sim.advance(Duration::from_secs(119));
    sim.send(2, 2, "lobby", "but");
    sim.expect_error(2, ErrorCode::Forbidden, Some(2));
    sim.advance(Duration::from_secs(1));
    for s in [1, 2] {
        assert_eq!(
            moderated(&sim.take(s)),
            [(
                "bob".to_string(),
                ModAction::Unmute,
                Some(chat_core::EXPIRED_REASON.to_string())
            )],
            "session {s}"
        );
    }
    sim.send(2, 3, "lobby", "thanks");
    sim.expect_kinds(2, &["message", "ack"]);
    sim.expect_kinds(1, &["message"]);
}

#[test]
fn an_anonymous_ban_binds_the_user_holding_the_name_not_the_next_holder() {
    let mut sim = Sim::with(lobby());
    sim.hello(1, "alice");
    let token = sim.hello(2, "bob");
    sim.server
        .ban(sim.now, "lobby", "bob", "spam", None)
        .unwrap();
    sim.drain();
    // Bob leaves and comes back within the grace period with his token: still bob,
    // still banned.
    sim.disconnect(2);
    sim.advance(Duration::from_secs(2));
    sim.hello_with_token(3, "bob", &token);
    sim.clear();
    sim.say(3, json!({"type":"join","id":1,"room":"lobby"}));
    sim.expect_error(3, ErrorCode::Forbidden, Some(1));
    // He leaves for good: once the grace period is over the name is free, and whoever
    // takes it next is another user, whom bob's ban does not bind.
    sim.disconnect(3);
    sim.advance(Duration::from_secs(10));
    let other = sim.hello(4, "bob");
    assert_ne!(other, token);
    let joined = sim.take(4);
    assert!(
        joined.iter().any(|f| kind(f) == "joined"),
        "the new bob joins the lobby: {joined:?}"
    );
    sim.send(4, 2, "lobby", "hi, I am new here");
    sim.expect_kinds(4, &["message", "ack"]);
    // The original bob, with his old token, is not the new holder: refused.
    sim.hello_as(5, "bob", Some(&token));
    sim.expect_error(5, ErrorCode::NameTaken, None);
}

#[test]
fn a_host_identity_stays_banned_by_its_id_whoever_connects() {
    // Host mode: the id is the host's user for good, so the ban binds it.
    let mut sim = Sim::with(lobby());
    sim.connect_as(1, Identity::new("bob"));
    sim.say(1, json!({"type":"hello","version":1,"name":"ignored"}));
    sim.server.ban(sim.now, "lobby", "bob", "", None).unwrap();
    sim.drain();
    sim.disconnect(1);
    sim.advance(Duration::from_secs(10));
    sim.connect_as(2, Identity::new("bob"));
    sim.say(2, json!({"type":"hello","version":1,"name":"ignored"}));
    sim.clear();
    sim.say(2, json!({"type":"join","id":1,"room":"lobby"}));
    sim.expect_error(2, ErrorCode::Forbidden, Some(1));
}

#[test]
fn a_ban_given_while_nobody_holds_the_name_binds_the_name() {
    let mut sim = Sim::with(lobby());
    sim.hello(1, "alice");
    sim.server.ban(sim.now, "lobby", "bob", "", None).unwrap();
    sim.drain();
    sim.hello(2, "bob");
    sim.clear();
    sim.say(2, json!({"type":"join","id":1,"room":"lobby"}));
    sim.expect_error(2, ErrorCode::Forbidden, Some(1));
    sim.server.unban("lobby", "bob").unwrap();
    sim.drain();
    sim.clear();
    sim.say(2, json!({"type":"join","id":2,"room":"lobby"}));
    sim.expect_kinds(2, &["joined"]);
}

#[test]
fn a_manual_unban_and_unmute_reach_the_users_sessions_outside_the_room() {
    let mut sim = Sim::with(Config {
        default_rooms: vec!["lobby".into(), "side".into()],
        ..Config::default()
    });
    sim.hello(1, "alice");
    sim.hello(2, "bob");
    sim.server.ban(sim.now, "lobby", "bob", "", None).unwrap();
    sim.drain();
    sim.clear();
    // Bob is out of the lobby (in "side" only); the host lifts the ban.
    sim.server.unban("lobby", "bob").unwrap();
    sim.drain();
    let told = [("bob".to_owned(), ModAction::Unban, None)];
    assert_eq!(moderated(&sim.take(2)), told, "bob learns he may come back");
    assert_eq!(moderated(&sim.take(1)), told, "the room is told");
    // A moderator's unmute of a user who left the room reaches them too.
    sim.server.mute("lobby", "bob", true).unwrap();
    sim.drain();
    sim.clear();
    sim.server
        .set_role("lobby", "alice", Role::Moderator)
        .unwrap();
    sim.drain();
    sim.clear();
    sim.say(2, json!({"type":"leave","room":"lobby"}));
    sim.clear();
    sim.say(
        1,
        json!({"type":"unmute","id":7,"room":"lobby","user":"bob"}),
    );
    let told = [("bob".to_owned(), ModAction::Unmute, None)];
    assert_eq!(moderated(&sim.take(2)), told);
    assert!(matches!(
        &sim.take(1)[..],
        [ServerFrame::Moderated { .. }, ServerFrame::Done { .. }]
    ));
}
