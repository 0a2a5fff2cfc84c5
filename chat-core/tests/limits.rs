//! Limits and abuse: body size and emptiness, send rate limiting, frame floods, repeated
//! bad frames, slow consumers. The offender alone is refused or closed; nobody else notices.

mod common;

use std::time::Duration;

use chat_core::protocol::{ErrorCode, ServerFrame};
use chat_core::{CloseReason, Config, Event, Input, SessionId};
use common::{Sim, names, room};
use serde_json::json;

/// alice (1) and bob (2) in general.
fn pair(config: Config) -> Sim {
    let mut sim = Sim::with(config);
    sim.hello(1, "alice");
    sim.hello(2, "bob");
    sim.clear();
    sim
}

/// bob is unaffected: he can still send, and alice (if open) still receives.
#[track_caller]
fn bob_still_works(sim: &mut Sim) {
    sim.take(2);
    sim.send(2, 999, "general", "bob is fine");
    sim.expect_kinds(2, &["message", "ack"]);
}

#[test]
fn welcome_announces_the_limits() {
    let mut sim = Sim::new();
    sim.hello(1, "alice");
    let ServerFrame::Welcome { limits, epoch, .. } = sim.take(1).remove(0) else {
        panic!()
    };
    assert_eq!(limits, Config::default().limits());
    assert_eq!(limits.max_body_bytes, 4096);
    assert_eq!(limits.send_burst, 10);
    assert_eq!(limits.typing_expiry_ms, 6000);
    assert_eq!(epoch, "0");
}

/// A host reads back what its server runs with: the configuration it was built with,
/// whose limits and epoch are the ones `welcome` announces.
#[test]
fn the_server_runs_with_the_configuration_it_was_given() {
    let config = Config {
        max_body_bytes: 100,
        epoch: "e7".to_owned(),
        ..Config::default()
    };
    let mut sim = Sim::with(config);
    assert_eq!(sim.server.config().max_body_bytes, 100);
    assert_eq!(sim.server.config().epoch, "e7");
    sim.hello(1, "alice");
    let ServerFrame::Welcome { limits, epoch, .. } = sim.take(1).remove(0) else {
        panic!()
    };
    assert_eq!(limits, sim.server.config().limits());
    assert_eq!(limits.max_body_bytes, 100);
    assert_eq!(epoch, "e7");
}

#[test]
fn bodies_over_the_limit_are_refused_and_the_limit_itself_is_fine() {
    let mut sim = pair(Config::default());
    sim.send(1, 1, "general", &"x".repeat(4097));
    let msg = sim.expect_error(1, ErrorCode::BodyTooLarge, Some(1));
    assert!(msg.contains("4096"), "{msg}");
    // Counted in bytes of UTF-8: 2049 × "é" is 4098 bytes.
    sim.send(1, 2, "general", &"é".repeat(2049));
    sim.expect_error(1, ErrorCode::BodyTooLarge, Some(2));
    sim.expect_nothing(2);

    sim.send(1, 3, "general", &"x".repeat(4096));
    sim.expect_kinds(1, &["message", "ack"]);
    assert_eq!(sim.take_messages(2)[0].body.len(), 4096);
}

#[test]
fn empty_and_whitespace_only_bodies_are_refused() {
    let mut sim = pair(Config::default());
    for (i, body) in ["", " ", "\n\t  \r\n", "\u{3000}"].iter().enumerate() {
        let id = i as u64;
        sim.send(1, id, "general", body);
        sim.expect_error(1, ErrorCode::InvalidBody, Some(id));
    }
    sim.expect_nothing(2);
    assert_eq!(sim.server.last_seq(&room("general")).unwrap().0, 0);
}

#[test]
fn sends_beyond_the_burst_are_rate_limited_until_tokens_refill() {
    let mut sim = pair(Config::default());
    for i in 0..10 {
        sim.send(1, i, "general", "burst");
    }
    assert_eq!(sim.take_messages(2).len(), 10);
    sim.take(1);
    sim.send(1, 10, "general", "one too many");
    let msg = sim.expect_error(1, ErrorCode::RateLimited, Some(10));
    assert!(
        msg.contains("200 ms"),
        "the error says when to retry: {msg}"
    );
    sim.expect_nothing(2);

    // bob has his own bucket.
    bob_still_works(&mut sim);
    sim.take(1);

    // 5 per second: one token after 200 ms, not before.
    sim.advance(Duration::from_millis(199));
    sim.send(1, 11, "general", "too soon");
    let msg = sim.expect_error(1, ErrorCode::RateLimited, Some(11));
    // 199 ms of refill leave 1 ms to wait, not a whole token's 200 ms or more.
    assert!(msg.contains("retry in 1 ms"), "{msg}");
    sim.advance(Duration::from_millis(1));
    sim.send(1, 12, "general", "on time");
    sim.expect_kinds(1, &["message", "ack"]);
    sim.send(1, 13, "general", "again too soon");
    sim.expect_error(1, ErrorCode::RateLimited, Some(13));
    assert_eq!(
        sim.close_reason(1),
        None,
        "rate limiting alone does not close"
    );
}

#[test]
fn hammering_past_the_rate_limit_closes_only_that_connection() {
    let mut sim = pair(Config::default());
    for i in 0..10 {
        sim.send(1, i, "general", "burst");
    }
    sim.take(1);
    // Each rejection is a strike; 20 strikes close the connection.
    for i in 10..29 {
        sim.send(1, i, "general", "spam");
        sim.expect_error(1, ErrorCode::RateLimited, Some(i));
    }
    assert_eq!(sim.close_reason(1), None);
    sim.send(1, 29, "general", "spam");
    sim.expect_error(1, ErrorCode::RateLimited, Some(29));
    assert_eq!(sim.close_reason(1), Some(CloseReason::Flood));
    assert_eq!(sim.server.session_rooms(SessionId(1)), None);

    // Whatever it sends afterwards goes nowhere, and nothing is sent to it.
    sim.send(1, 30, "general", "hello?");
    sim.expect_nothing(1);
    bob_still_works(&mut sim);
    sim.assert_no_violations();
}

#[test]
fn a_frame_flood_closes_the_connection() {
    let mut sim = pair(Config::default());
    // 200 frames at once is the burst (hello was the first); all are answered.
    for i in 0..199 {
        sim.say(1, json!({"type":"rooms","id":i}));
    }
    assert_eq!(sim.take(1).len(), 199);
    assert_eq!(sim.close_reason(1), None);
    sim.say(1, json!({"type":"rooms","id":200}));
    sim.expect_nothing(1);
    assert_eq!(sim.close_reason(1), Some(CloseReason::Flood));
    assert!(sim.events.iter().any(|e| matches!(
        e,
        Event::SessionClosed {
            session: SessionId(1),
            reason: Some(CloseReason::Flood),
            ..
        }
    )));
    // bob learns that alice left once her grace period is over.
    sim.advance(Duration::from_secs(5));
    let frames = sim.take(2);
    assert!(
        matches!(&frames[..], [ServerFrame::UserLeft { user, .. }] if user.as_str() == "alice"),
        "{frames:?}"
    );
    bob_still_works(&mut sim);
    sim.assert_no_violations();
}

#[test]
fn frames_refill_at_the_sustained_rate() {
    let mut sim = pair(Config::default());
    // 50 frames per second forever is fine.
    for i in 0..500 {
        sim.say(1, json!({"type":"rooms","id":i}));
        sim.advance(Duration::from_millis(20));
    }
    assert_eq!(sim.close_reason(1), None);
    assert_eq!(sim.take(1).len(), 500);
}

#[test]
fn bad_frames_get_bad_frame_errors_then_close_the_connection() {
    let mut sim = pair(Config::default());
    // The request id is echoed when it can be read.
    sim.say(1, r#"{"type":"send","id":5,"room":"general"}"#);
    let msg = sim.expect_error(1, ErrorCode::BadFrame, Some(5));
    assert!(msg.contains("body"), "says what is wrong: {msg}");
    sim.say(1, "not json at all");
    sim.expect_error(1, ErrorCode::BadFrame, None);
    // Each bad frame is two strikes: the tenth closes.
    for i in 2..9 {
        sim.say(1, json!({"type":"dance","id":i}));
        sim.expect_error(1, ErrorCode::BadFrame, Some(i));
    }
    assert_eq!(sim.close_reason(1), None);
    sim.say(1, json!({"type":"dance","id":9}));
    sim.expect_error(1, ErrorCode::BadFrame, Some(9));
    assert_eq!(sim.close_reason(1), Some(CloseReason::Flood));
    sim.say(1, json!({"type":"dance","id":10}));
    sim.expect_nothing(1);
    bob_still_works(&mut sim);
    sim.assert_no_violations();
}

#[test]
fn good_commands_pay_strikes_back() {
    let mut sim = pair(Config::default());
    for i in 0..9 {
        sim.say(1, json!({"type":"dance","id":i}));
    }
    sim.take(1); // 18 strikes
    sim.say(1, json!({"type":"rooms"}));
    sim.say(1, json!({"type":"rooms"})); // 16
    sim.say(1, json!({"type":"dance"})); // 18
    assert_eq!(sim.close_reason(1), None);
    sim.say(1, json!({"type":"dance"})); // 20
    assert_eq!(sim.close_reason(1), Some(CloseReason::Flood));
}

#[test]
fn an_unsupported_protocol_version_is_refused_and_closed() {
    let mut sim = pair(Config::default());
    sim.connect(3);
    sim.say(3, json!({"type":"hello","id":1,"version":3,"name":"carol"}));
    let msg = sim.expect_error(3, ErrorCode::UnsupportedVersion, Some(1));
    assert!(msg.contains('2'), "names the version it speaks: {msg}");
    assert_eq!(sim.close_reason(3), Some(CloseReason::UnsupportedVersion));
    assert_eq!(CloseReason::UnsupportedVersion.ws_code(), 1002);
    sim.expect_nothing(1);
}

#[test]
fn a_full_queue_for_typing_pauses_typing_but_not_messages() {
    let mut sim = pair(Config::default());
    sim.input(Input::QueueFull {
        session: SessionId(2),
        ephemeral: true,
    });
    assert_eq!(sim.close_reason(2), None);
    sim.say(1, json!({"type":"typing","room":"general","active":true}));
    sim.expect_nothing(2);
    sim.send(1, 1, "general", "messages still flow");
    sim.expect_kinds(2, &["message"]);

    // After the back-off (10 s), typing is shown again.
    sim.advance(Duration::from_secs(10));
    sim.take(2); // the expiry of the earlier typing is not shown either way
    sim.say(1, json!({"type":"typing","room":"general","active":true}));
    let frames = sim.take(2);
    assert!(
        matches!(&frames[..], [ServerFrame::Typing { active: true, .. }]),
        "{frames:?}"
    );
}

#[test]
fn a_full_queue_for_a_message_closes_only_the_slow_consumer() {
    let mut sim = Sim::new();
    sim.hello(1, "alice");
    sim.hello(2, "bob");
    sim.hello(3, "carol");
    sim.clear();
    sim.send(1, 1, "general", "you will miss this");
    sim.input(Input::QueueFull {
        session: SessionId(2),
        ephemeral: false,
    });
    assert_eq!(sim.close_reason(2), Some(CloseReason::SlowConsumer));
    assert_eq!(CloseReason::SlowConsumer.ws_code(), 1013);
    assert_eq!(CloseReason::SlowConsumer.as_str(), "slow consumer");
    sim.clear();

    sim.send(1, 2, "general", "after the close");
    sim.expect_nothing(2);
    assert_eq!(sim.take_messages(3).len(), 1);
    sim.expect_kinds(1, &["message", "ack"]);
    // The closed session is not in the room any more; bob is listed until his grace ends,
    // so a quick reconnect does not flap.
    assert_eq!(sim.server.session_rooms(SessionId(2)), None);
    assert_eq!(
        names(&sim.server.members(&room("general")).unwrap()),
        ["alice", "bob", "carol"]
    );
    // The driver reporting the disconnect afterwards changes nothing.
    sim.disconnect(2);
    sim.expect_nothing(1);
    sim.assert_no_violations();
}
