//! Host identities given with the connection, their expiry and revocation, and per-room
//! permissions (private, read-only, the host's policy), on the sans-IO core.

mod common;

use std::time::Duration;

use chat_core::protocol::{ErrorCode, ServerFrame};
use chat_core::{CloseReason, Config, Identity, Permissions, RoomAccess, RoomName, SharedPolicy};
use common::{Sim, kind, names, room};
use serde_json::json;

fn hello(sim: &mut Sim, s: u64, rooms: &[&str]) {
    let rooms: Vec<_> = rooms.iter().map(|r| json!({ "room": r })).collect();
    sim.say(
        s,
        json!({"type":"hello","version":1,"name":"ignored","rooms":rooms}),
    );
}

fn as_user(sim: &mut Sim, s: u64, identity: Identity, rooms: &[&str]) {
    sim.connect_as(s, identity);
    hello(sim, s, rooms);
}

#[test]
fn the_connection_identity_wins_over_the_hello_name() {
    let mut sim = Sim::new();
    sim.connect_as(1, Identity::new("alice"));
    sim.say(
        1,
        json!({"type":"hello","version":1,"name":"mallory","token":"forged"}),
    );
    let frames = sim.expect_kinds(1, &["welcome", "joined"]);
    let ServerFrame::Welcome { user, token, .. } = &frames[0] else {
        panic!("{frames:?}")
    };
    assert_eq!(user.as_str(), "alice");
    assert_eq!(*token, None, "a host identity has no anonymous token");
    assert_eq!(
        names(&sim.server.members(&room("general")).unwrap()),
        ["alice"]
    );
}

#[test]
fn an_anonymous_holder_of_the_name_is_not_handed_to_the_host_user() {
    let mut sim = Sim::new();
    sim.hello(1, "alice");
    sim.connect_as(2, Identity::new("alice"));
    hello(&mut sim, 2, &[]);
    sim.expect_error(2, ErrorCode::NameTaken, None);
}

#[test]
fn an_invalid_identity_name_fails_authentication() {
    let mut sim = Sim::new();
    sim.connect_as(1, Identity::new("two words"));
    hello(&mut sim, 1, &[]);
    sim.expect_error(1, ErrorCode::AuthFailed, None);
    assert_eq!(sim.close_reason(1), Some(CloseReason::AuthFailed));
}

#[test]
fn an_expired_identity_is_told_and_closed_at_its_expiry_not_before() {
    let mut sim = Sim::new();
    let at = sim.now.utc + chrono::Duration::seconds(30);
    as_user(&mut sim, 1, Identity::new("alice").expiring(at), &[]);
    sim.expect_kinds(1, &["welcome"]);
    sim.advance(Duration::from_secs(29));
    sim.expect_nothing(1);
    assert_eq!(sim.close_reason(1), None);
    sim.advance(Duration::from_secs(1));
    sim.expect_error(1, ErrorCode::AuthExpired, None);
    assert_eq!(sim.close_reason(1), Some(CloseReason::AuthExpired));
    assert_eq!(CloseReason::AuthExpired.ws_code(), 4001);
}

#[test]
fn revoking_a_user_closes_all_of_their_sessions_and_only_theirs() {
    let mut sim = Sim::new();
    as_user(&mut sim, 1, Identity::new("alice"), &["general"]);
    as_user(&mut sim, 2, Identity::new("alice"), &["general"]);
    as_user(&mut sim, 3, Identity::new("bob"), &["general"]);
    sim.clear();
    let closed = sim.server.revoke_user(sim.now, "Alice");
    sim.drain();
    assert_eq!(closed, 2);
    for s in [1, 2] {
        sim.expect_error(s, ErrorCode::AuthRevoked, None);
        assert_eq!(sim.close_reason(s), Some(CloseReason::Revoked));
    }
    assert_eq!(sim.close_reason(3), None);
    sim.send(3, 1, "general", "still here");
    sim.expect_kinds(3, &["message", "ack"]);
    assert_eq!(sim.server.revoke_user(sim.now, "nobody"), 0);
}

fn rooms_config() -> Config {
    Config {
        default_rooms: vec![],
        rooms: vec![
            ("news".into(), RoomAccess::read_only(["editor"])),
            ("staff".into(), RoomAccess::private(["staff"])),
        ],
        ..Config::default()
    }
}

#[test]
fn a_read_only_room_takes_messages_only_from_its_sending_roles() {
    let mut sim = Sim::with(rooms_config());
    as_user(
        &mut sim,
        1,
        Identity::new("ed").with_role("editor"),
        &["news"],
    );
    as_user(&mut sim, 2, Identity::new("rita"), &["news"]);
    sim.clear();
    sim.send(2, 1, "news", "can I?");
    sim.expect_error(2, ErrorCode::Forbidden, Some(1));
    sim.expect_nothing(1);
    // Reading is fine, typing is dropped without a word.
    sim.say(2, json!({"type":"typing","room":"news","active":true}));
    sim.expect_nothing(1);
    sim.expect_nothing(2);
    sim.send(1, 2, "news", "edition 1");
    sim.expect_kinds(1, &["message", "ack"]);
    sim.expect_kinds(2, &["message"]);
    sim.say(2, json!({"type":"history","id":3,"room":"news"}));
    sim.expect_kinds(2, &["history"]);
}

#[test]
fn a_private_room_is_invisible_and_closed_to_outsiders_until_invited() {
    let mut sim = Sim::with(rooms_config());
    as_user(
        &mut sim,
        1,
        Identity::new("sam").with_role("staff"),
        &["staff"],
    );
    as_user(&mut sim, 2, Identity::new("otto"), &[]);
    sim.clear();
    sim.say(2, json!({"type":"join","id":1,"room":"staff"}));
    sim.expect_error(2, ErrorCode::Forbidden, Some(1));
    sim.say(2, json!({"type":"members","id":2,"room":"staff"}));
    sim.expect_error(2, ErrorCode::Forbidden, Some(2));
    sim.say(2, json!({"type":"history","id":3,"room":"staff"}));
    sim.expect_error(2, ErrorCode::NotMember, Some(3));
    sim.say(2, json!({"type":"rooms","id":4}));
    match sim.take_one(2) {
        ServerFrame::Rooms { rooms, .. } => assert!(rooms.is_empty(), "{rooms:?}"),
        other => panic!("{other:?}"),
    }
    sim.expect_nothing(1);
    sim.server.invite("staff", "OTTO").unwrap();
    sim.say(2, json!({"type":"join","id":5,"room":"staff"}));
    sim.expect_kinds(2, &["joined"]);
    assert_eq!(kind(&sim.take_one(1)), "user_joined");
    // Anonymous users hold no roles: outsiders too.
    sim.hello(3, "anon");
    sim.clear();
    sim.say(3, json!({"type":"join","id":6,"room":"staff"}));
    sim.expect_error(3, ErrorCode::Forbidden, Some(6));
}

#[test]
fn set_room_access_refuses_direct_and_invalid_rooms() {
    let mut sim = Sim::new();
    assert!(
        sim.server
            .set_room_access("@a,b", RoomAccess::private(["x"]))
            .is_err()
    );
    assert!(sim.server.set_room_access("", RoomAccess::open()).is_err());
    assert!(sim.server.invite("lobby", "two words").is_err());
}

/// A policy: in `vault`, only `auditor`s read and nobody but `admin`s sees who is there.
fn vault_policy() -> SharedPolicy {
    SharedPolicy::new(|who: &Identity, room: &RoomName, rules: Permissions| {
        if room.as_str() != "vault" {
            return rules;
        }
        Permissions {
            read: who.roles.contains("auditor"),
            presence: who.roles.contains("admin"),
            ..rules
        }
    })
}

#[test]
fn the_host_policy_governs_reading_and_presence() {
    let mut sim = Sim::with(Config {
        default_rooms: vec![],
        room_policy: Some(vault_policy()),
        ..Config::default()
    });
    as_user(
        &mut sim,
        1,
        Identity::new("ada").with_role("admin").with_role("auditor"),
        &["vault"],
    );
    sim.clear();
    sim.send(1, 1, "vault", "secret");
    sim.clear();
    // A plain user joins blind: no messages, no members; history and members refused.
    as_user(&mut sim, 2, Identity::new("pat"), &["vault"]);
    let frames = sim.expect_kinds(2, &["welcome", "joined"]);
    let ServerFrame::Joined {
        members, messages, ..
    } = &frames[1]
    else {
        panic!("{frames:?}")
    };
    assert!(members.is_empty() && messages.is_empty(), "{frames:?}");
    assert_eq!(kind(&sim.take_one(1)), "user_joined", "ada sees pat arrive");
    sim.say(2, json!({"type":"history","id":2,"room":"vault"}));
    sim.expect_error(2, ErrorCode::Forbidden, Some(2));
    sim.say(2, json!({"type":"members","id":3,"room":"vault"}));
    sim.expect_error(2, ErrorCode::Forbidden, Some(3));
    // Presence of others never reaches pat; messages sent while pat is in do.
    as_user(&mut sim, 3, Identity::new("quinn"), &["vault"]);
    let _ = sim.take(3);
    assert_eq!(kind(&sim.take_one(1)), "user_joined");
    sim.expect_nothing(2);
    sim.disconnect(3);
    sim.advance(Duration::from_secs(10));
    assert_eq!(kind(&sim.take_one(1)), "user_left");
    sim.expect_nothing(2);
    sim.send(1, 4, "vault", "live");
    sim.expect_kinds(2, &["message"]);
    assert_eq!(sim.close_reason(2), None);
}

/// A policy that only decides permissions (a closure) gives nobody a role: its `role`
/// answers `None`, as documented, so users hold the roles the room gives them.
#[test]
fn a_policy_that_only_decides_permissions_gives_no_roles() {
    let policy = vault_policy();
    let admin = Identity::new("ada").with_role("admin");
    assert_eq!(policy.0.role(&admin, &room("vault")), None);
    let mut sim = Sim::with(Config {
        room_policy: Some(policy),
        ..Config::default()
    });
    as_user(&mut sim, 1, admin, &["general"]);
    assert_eq!(
        sim.server.role("general", "ada"),
        Ok(chat_core::protocol::Role::Member)
    );
}
