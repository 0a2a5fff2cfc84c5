//! The host's moderation: kick, ban (with an expiry), mute; told to the room, applied to
//! every session of the user, reported as events.

mod common;

use std::time::Duration;

use chat_core::protocol::{ErrorCode, ModAction, ServerFrame};
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
    sim.advance(Duration::from_secs(1));
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
