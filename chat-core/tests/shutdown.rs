//! Graceful shutdown: every session is told goodbye and closed, then `Drained`; in durable
//! mode only once every pending message is settled.

mod common;

use chat_core::RequestId;
use std::time::Duration;

use chat_core::protocol::{ErrorCode, ServerFrame};
use chat_core::{CloseReason, Config, Input};
use common::{Sim, kind};
use serde_json::json;

fn goodbye_ms(frame: &ServerFrame) -> u64 {
    match frame {
        ServerFrame::Goodbye {
            retry_after_ms,
            reason,
        } => {
            assert!(!reason.is_empty());
            *retry_after_ms
        }
        other => panic!("expected goodbye, got {other:?}"),
    }
}

#[test]
fn shutdown_says_goodbye_to_everyone_closes_them_then_drains() {
    let mut sim = Sim::new();
    sim.hello(1, "alice");
    sim.hello(2, "bob");
    sim.connect(3); // never said hello
    sim.clear();
    let log_start = sim.log.len();

    let now = sim.now;
    sim.server.shutdown(now);
    sim.drain();

    for s in [1, 2, 3] {
        let frames = sim.take(s);
        assert_eq!(
            frames.len(),
            1,
            "session {s}: only a goodbye, no user_left: {frames:?}"
        );
        assert_eq!(goodbye_ms(&frames[0]), 2000);
        assert_eq!(sim.close_reason(s), Some(CloseReason::Shutdown));
    }
    assert_eq!(CloseReason::Shutdown.ws_code(), 1012);
    assert_eq!(sim.drained, 1);
    assert_eq!(sim.log.last().map(String::as_str), Some("drained"));
    // Each session's goodbye comes before its close.
    let log = &sim.log[log_start..];
    for s in [1, 2, 3] {
        let bye = log
            .iter()
            .position(|l| l.starts_with(&format!("send {s} ")))
            .unwrap();
        let close = log
            .iter()
            .position(|l| l.starts_with(&format!("close {s} ")))
            .unwrap();
        assert!(bye < close);
    }
    assert_eq!(sim.server.session_count(), 0);

    // Nothing more happens afterwards: no second drain, no frames to closed sessions.
    let now = sim.now;
    sim.server.shutdown(now);
    sim.drain();
    sim.advance(Duration::from_secs(60));
    assert_eq!(sim.drained, 1);
    sim.assert_no_violations();
}

#[test]
fn after_shutdown_new_hellos_and_publishes_are_refused() {
    let mut sim = Sim::with(Config {
        shutdown_retry_after: Duration::from_millis(750),
        ..Config::default()
    });
    let now = sim.now;
    sim.server.shutdown(now);
    sim.drain();
    assert_eq!(sim.drained, 1);

    sim.connect(1);
    sim.say(1, json!({"type":"hello","id":1,"version":1,"name":"late"}));
    sim.expect_error(1, ErrorCode::ShuttingDown, Some(1));
    assert_eq!(sim.close_reason(1), Some(CloseReason::Shutdown));

    sim.input(Input::Publish {
        ticket: 5,
        room: "general".into(),
        user: "bot".into(),
        body: "x".into(),
        client_id: None,
    });
    assert_eq!(sim.published, [(5, Err(ErrorCode::ShuttingDown))]);
}

#[test]
fn the_goodbye_carries_the_configured_retry_delay() {
    let mut sim = Sim::with(Config {
        shutdown_retry_after: Duration::from_millis(750),
        ..Config::default()
    });
    sim.hello(1, "alice");
    sim.clear();
    let now = sim.now;
    sim.server.shutdown(now);
    sim.drain();
    assert_eq!(goodbye_ms(&sim.take_one(1)), 750);
}

#[test]
fn durable_shutdown_waits_for_pending_messages_before_goodbye_and_drained() {
    let mut sim = Sim::with(Config {
        durable: true,
        ..Config::default()
    });
    sim.hello(1, "alice");
    sim.hello(2, "bob");
    sim.clear();
    sim.send(1, 7, "general", "last words");
    let pending = sim.persists.pop().expect("a persist request");

    let now = sim.now;
    sim.server.shutdown(now);
    sim.drain();
    assert_eq!(sim.drained, 0, "a message is still waiting for the store");
    sim.expect_nothing(1);
    sim.expect_nothing(2);

    // New sends are refused meanwhile; the connections stay open.
    sim.send(2, 8, "general", "me too");
    sim.expect_error(2, ErrorCode::ShuttingDown, Some(8));
    assert!(sim.persists.is_empty());
    assert_eq!(sim.close_reason(2), None);

    sim.input(Input::Persisted {
        room: pending.room.clone(),
        seq: pending.seq,
        result: Ok(()),
    });
    let alice = sim.take(1);
    assert_eq!(
        alice.iter().map(kind).collect::<Vec<_>>(),
        ["message", "ack", "goodbye"]
    );
    let bob = sim.take(2);
    assert_eq!(
        bob.iter().map(kind).collect::<Vec<_>>(),
        ["message", "goodbye"]
    );
    assert_eq!(sim.close_reason(1), Some(CloseReason::Shutdown));
    assert_eq!(sim.close_reason(2), Some(CloseReason::Shutdown));
    assert_eq!(sim.drained, 1);
    assert_eq!(sim.log.last().map(String::as_str), Some("drained"));
}

#[test]
fn durable_shutdown_with_a_failed_store_still_drains_and_tells_the_sender() {
    let mut sim = Sim::with(Config {
        durable: true,
        ..Config::default()
    });
    sim.hello(1, "alice");
    sim.hello(2, "bob");
    sim.clear();
    sim.send(1, 7, "general", "will not make it");
    let pending = sim.persists.pop().unwrap();
    let now = sim.now;
    sim.server.shutdown(now);
    sim.drain();
    sim.input(Input::Persisted {
        room: pending.room.clone(),
        seq: pending.seq,
        result: Err(chat_core::StoreError::Full("disk full".into())),
    });
    let alice = sim.take(1);
    assert_eq!(
        alice.iter().map(kind).collect::<Vec<_>>(),
        ["error", "goodbye"]
    );
    assert!(matches!(
        alice[0],
        ServerFrame::Error {
            code: ErrorCode::StorageUnavailable,
            id: Some(RequestId(7)),
            ..
        }
    ));
    assert_eq!(
        sim.take(2).iter().map(kind).collect::<Vec<_>>(),
        ["goodbye"]
    );
    assert_eq!(sim.drained, 1);
}

#[test]
fn a_session_that_disconnects_during_the_drain_gets_nothing_more() {
    let mut sim = Sim::with(Config {
        durable: true,
        ..Config::default()
    });
    sim.hello(1, "alice");
    sim.hello(2, "bob");
    sim.clear();
    sim.send(1, 7, "general", "pending");
    let pending = sim.persists.pop().unwrap();
    let now = sim.now;
    sim.server.shutdown(now);
    sim.drain();
    sim.disconnect(1);
    sim.input(Input::Persisted {
        room: pending.room.clone(),
        seq: pending.seq,
        result: Ok(()),
    });
    sim.expect_nothing(1);
    assert_eq!(
        sim.take(2).iter().map(kind).collect::<Vec<_>>(),
        ["message", "goodbye"]
    );
    assert_eq!(sim.drained, 1);
    assert_eq!(sim.close_reason(1), None, "already gone: no close for it");
    sim.assert_no_violations();
    // Only bob was closed by the drain.
    assert!(sim.log.iter().all(|l| !l.starts_with("close 1 ")));
}

#[test]
fn sends_refused_during_the_drain_cost_no_strikes() {
    // Refusing a send because the server is going away is not the client's fault: a
    // client that keeps trying (more times than the strike limit) is not closed as a flood.
    let mut sim = Sim::with(Config {
        durable: true,
        max_strikes: 3,
        ..Config::default()
    });
    sim.hello(1, "alice");
    sim.hello(2, "bob");
    sim.clear();
    sim.send(1, 7, "general", "pending");
    let pending = sim.persists.pop().unwrap();
    let now = sim.now;
    sim.server.shutdown(now);
    sim.drain();
    for id in 10..15 {
        sim.send(2, id, "general", "still here?");
        sim.expect_error(2, ErrorCode::ShuttingDown, Some(id));
    }
    assert_eq!(sim.close_reason(2), None, "not closed as a flood");
    sim.input(Input::Persisted {
        room: pending.room.clone(),
        seq: pending.seq,
        result: Ok(()),
    });
    assert_eq!(
        sim.take(2).iter().map(kind).collect::<Vec<_>>(),
        ["message", "goodbye"]
    );
    assert_eq!(sim.close_reason(2), Some(CloseReason::Shutdown));
}
