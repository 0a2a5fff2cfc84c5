//! Host auth mode: every hello becomes `Output::Authenticate`, answered by
//! `Input::Authenticated`.

mod common;

use chat_core::RequestId;
use std::time::Duration;

use chat_core::protocol::{ErrorCode, ServerFrame};
use chat_core::{ApiMisuse, AuthMode, CloseReason, Config, Input, SessionId};
use common::{Sim, names, room};
use serde_json::json;

fn host() -> Sim {
    Sim::with(Config {
        auth: AuthMode::Host,
        ..Config::default()
    })
}

fn login(sim: &mut Sim, s: u64, name: &str, creds: &str) {
    sim.connect(s);
    sim.say(
        s,
        json!({"type":"hello","id":1,"version":1,"name":name,"token":creds}),
    );
    let (session, asked, credentials) = sim.authenticate.pop().expect("an auth request");
    assert_eq!(session, SessionId(s));
    assert_eq!(asked, name);
    assert_eq!(credentials.as_deref(), Some(creds));
    sim.expect_nothing(s);
    sim.input(Input::Authenticated {
        session: SessionId(s),
        result: Ok(name.to_owned()),
    });
}

#[test]
fn the_host_decides_who_a_session_is() {
    let mut sim = host();
    login(&mut sim, 1, "alice", "secret-1");
    let frames = sim.expect_kinds(1, &["welcome", "joined"]);
    match &frames[0] {
        ServerFrame::Welcome {
            id, user, token, ..
        } => {
            assert_eq!(*id, Some(RequestId(1)));
            assert_eq!(user.as_str(), "alice");
            assert_eq!(*token, None, "no anonymous token in host mode");
        }
        other => panic!("{other:?}"),
    }
    // The same identity on a second device is the same user, no token needed.
    login(&mut sim, 2, "alice", "secret-2");
    sim.expect_kinds(2, &["welcome", "joined"]);
    sim.expect_nothing(1);
    assert_eq!(
        names(&sim.server.members(&room("general")).unwrap()),
        ["alice"]
    );
}

#[test]
fn a_refusal_is_an_auth_failed_error_and_a_close() {
    let mut sim = host();
    sim.connect(1);
    sim.say(1, json!({"type":"hello","id":4,"version":1,"name":"eve"}));
    sim.input(Input::Authenticated {
        session: SessionId(1),
        result: Err(chat_core::AuthRefused::new("bad password")),
    });
    let msg = sim.expect_error(1, ErrorCode::AuthFailed, Some(4));
    assert!(msg.contains("bad password"));
    assert_eq!(sim.close_reason(1), Some(CloseReason::AuthFailed));
}

#[test]
fn commands_while_authenticating_are_refused() {
    let mut sim = host();
    sim.connect(1);
    sim.say(1, json!({"type":"hello","version":1,"name":"alice"}));
    sim.say(1, json!({"type":"join","id":2,"room":"general"}));
    sim.expect_error(1, ErrorCode::HelloRequired, Some(2));
    sim.say(1, json!({"type":"hello","id":3,"version":1,"name":"alice"}));
    sim.expect_error(1, ErrorCode::AlreadyWelcomed, Some(3));
}

#[test]
fn an_unexpected_answer_is_api_misuse_and_leaves_the_session_intact() {
    let mut sim = host();
    login(&mut sim, 1, "alice", "pw");
    login(&mut sim, 2, "bob", "pw");
    sim.clear();
    let r = sim.try_input(Input::Authenticated {
        session: SessionId(1),
        result: Ok("mallory".into()),
    });
    assert_eq!(r, Err(ApiMisuse::NotAuthenticating(SessionId(1))));
    // alice is still alice, still in the room, and can still talk.
    sim.send(1, 5, "general", "still me");
    sim.expect_kinds(1, &["message", "ack"]);
    // And when she goes, she leaves properly; nothing is sent to her afterwards.
    sim.disconnect(1);
    sim.advance(Duration::from_secs(5));
    let frames = sim.take(2);
    assert_eq!(common::kind(frames.last().unwrap()), "user_left");
    sim.send(2, 6, "general", "bye alice");
    sim.assert_no_violations();
    assert_eq!(
        names(&sim.server.members(&room("general")).unwrap()),
        ["bob"]
    );
}
