//! History: the latest messages on join, paging with `before`/`limit`, the in-memory
//! window, and resume with `since` (exact suffix, or an explicit gap).

mod common;

use chat_core::RequestId;
use std::sync::Arc;

use chat_core::protocol::{ErrorCode, Message, ServerFrame};
use chat_core::{Config, SessionId};
use common::{Sim, bodies, seqs, unlimited};
use serde_json::json;

/// alice posts `n` messages "m1".."mn" into general; bob (2) is there too.
fn posted(config: Config, n: u64) -> Sim {
    let mut sim = Sim::with(config);
    sim.hello(1, "alice");
    sim.hello(2, "bob");
    for i in 1..=n {
        sim.send(1, i, "general", &format!("m{i}"));
    }
    sim.clear();
    sim
}

fn joined(frame: ServerFrame) -> (Vec<Arc<Message>>, bool, u64) {
    match frame {
        ServerFrame::Joined {
            messages,
            gap,
            last_seq,
            ..
        } => (messages, gap, last_seq.0),
        other => panic!("expected joined, got {other:?}"),
    }
}

fn page(frame: ServerFrame) -> (Option<u64>, Vec<u64>, bool) {
    match frame {
        ServerFrame::History {
            id,
            messages,
            has_more,
            ..
        } => (id.map(|i| i.0), seqs(&messages), has_more),
        other => panic!("expected history, got {other:?}"),
    }
}

#[test]
fn joining_gives_the_latest_fifty_messages_oldest_first() {
    let mut sim = posted(unlimited(), 60);
    sim.hello(3, "carol");
    let frames = sim.expect_kinds(3, &["welcome", "joined"]);
    let (messages, gap, last_seq) = joined(frames[1].clone());
    assert_eq!(seqs(&messages), (11..=60).collect::<Vec<_>>());
    assert_eq!(bodies(&messages)[0], "m11");
    assert!(!gap);
    assert_eq!(last_seq, 60);
}

#[test]
fn history_pages_backwards_with_before_and_limit() {
    let mut sim = posted(unlimited(), 60);
    sim.say(
        2,
        json!({"type":"history","id":1,"room":"general","before":11,"limit":5}),
    );
    assert_eq!(page(sim.take_one(2)), (Some(1), vec![6, 7, 8, 9, 10], true));
    sim.say(
        2,
        json!({"type":"history","id":2,"room":"general","before":6,"limit":5}),
    );
    assert_eq!(page(sim.take_one(2)), (Some(2), vec![1, 2, 3, 4, 5], false));
    sim.say(
        2,
        json!({"type":"history","id":3,"room":"general","before":3,"limit":5}),
    );
    assert_eq!(page(sim.take_one(2)), (Some(3), vec![1, 2], false));
    sim.say(
        2,
        json!({"type":"history","id":4,"room":"general","before":1}),
    );
    assert_eq!(page(sim.take_one(2)), (Some(4), vec![], false));
    // No `before`: the newest page; default size 50.
    sim.say(2, json!({"type":"history","id":5,"room":"General"}));
    assert_eq!(page(sim.take_one(2)), (Some(5), (11..=60).collect(), true));
    // A `before` past the end is the newest page too.
    sim.say(
        2,
        json!({"type":"history","id":6,"room":"general","before":1000,"limit":2}),
    );
    assert_eq!(page(sim.take_one(2)), (Some(6), vec![59, 60], true));
    sim.expect_nothing(1);
}

#[test]
fn history_rejects_bad_limits_and_non_members() {
    let mut sim = posted(unlimited(), 3);
    sim.say(
        2,
        json!({"type":"history","id":1,"room":"general","limit":0}),
    );
    sim.expect_error(2, ErrorCode::InvalidRequest, Some(1));
    sim.say(
        2,
        json!({"type":"history","id":2,"room":"general","limit":1001}),
    );
    sim.expect_error(2, ErrorCode::InvalidRequest, Some(2));
    sim.say(
        2,
        json!({"type":"history","id":3,"room":"general","limit":1000}),
    );
    assert_eq!(page(sim.take_one(2)).1, vec![1, 2, 3]);
    sim.say(2, json!({"type":"leave","room":"general"}));
    sim.take(2);
    sim.say(2, json!({"type":"history","id":4,"room":"general"}));
    sim.expect_error(2, ErrorCode::NotMember, Some(4));
}

#[test]
fn the_window_keeps_the_latest_thousand_messages() {
    let mut sim = posted(unlimited(), 1005);
    // The oldest five are gone from memory: a page below them is empty and final.
    sim.say(
        2,
        json!({"type":"history","id":1,"room":"general","before":10,"limit":50}),
    );
    assert_eq!(page(sim.take_one(2)), (Some(1), vec![6, 7, 8, 9], false));
    sim.say(
        2,
        json!({"type":"history","id":2,"room":"general","limit":1000}),
    );
    let (_, got, has_more) = page(sim.take_one(2));
    assert_eq!(got, (6..=1005).collect::<Vec<_>>());
    assert!(!has_more);

    // Resume from exactly the window's edge works; from before it is a gap.
    sim.say(2, json!({"type":"join","room":"general","since":5}));
    let (messages, gap, last) = joined(sim.take_one(2));
    assert!(!gap);
    assert_eq!(seqs(&messages), (6..=1005).collect::<Vec<_>>());
    assert_eq!(last, 1005);
    sim.say(2, json!({"type":"join","room":"general","since":4}));
    let (messages, gap, _) = joined(sim.take_one(2));
    assert!(gap, "messages 5.. are no longer all available");
    assert_eq!(seqs(&messages), (956..=1005).collect::<Vec<_>>());
}

#[test]
fn resume_with_since_gives_exactly_the_missed_messages() {
    let mut sim = posted(unlimited(), 20);
    // bob drops, misses some messages, and resumes from the last seq he saw.
    let welcome: serde_json::Value = serde_json::from_str(&sim.raw[&SessionId(2)][0]).unwrap();
    let token = welcome["token"].as_str().unwrap().to_owned();
    sim.disconnect(2);
    for i in 21..=25 {
        sim.send(1, i, "general", &format!("m{i}"));
    }
    sim.clear();
    sim.connect(4);
    sim.say(
        4,
        json!({"type":"hello","version":1,"name":"bob","token":token,"rooms":[{"room":"general","since":18}]}),
    );
    let frames = sim.expect_kinds(4, &["welcome", "joined"]);
    let (messages, gap, last) = joined(frames[1].clone());
    assert!(!gap);
    assert_eq!(seqs(&messages), (19..=25).collect::<Vec<_>>());
    assert_eq!(bodies(&messages)[0], "m19");
    assert_eq!(last, 25);
    sim.expect_nothing(1); // no left/joined flap for alice either

    // Up to date: nothing, and no gap.
    sim.say(4, json!({"type":"join","id":7,"room":"general","since":25}));
    let frame = sim.take_one(4);
    assert!(matches!(
        &frame,
        ServerFrame::Joined {
            id: Some(RequestId(7)),
            ..
        }
    ));
    let (messages, gap, _) = joined(frame);
    assert!(messages.is_empty() && !gap);

    // Resuming an already-joined room does not duplicate membership or announce anything.
    sim.clear();
    sim.say(4, json!({"type":"join","room":"general","since":24}));
    let (messages, _, _) = joined(sim.take_one(4));
    assert_eq!(seqs(&messages), [25]);
    sim.expect_nothing(1);
    sim.send(1, 99, "general", "after resume");
    assert_eq!(sim.take_messages(4).len(), 1, "still exactly once");
    assert_eq!(
        sim.server.session_rooms(SessionId(4)).unwrap(),
        [common::room("general")]
    );
}

#[test]
fn resume_from_a_seq_the_server_never_issued_is_a_gap() {
    // E.g. a client that saw another epoch before a restart.
    let mut sim = posted(unlimited(), 3);
    sim.say(2, json!({"type":"join","room":"general","since":40}));
    let (messages, gap, last) = joined(sim.take_one(2));
    assert!(gap);
    assert_eq!(seqs(&messages), [1, 2, 3]);
    assert_eq!(last, 3);
}

#[test]
fn a_small_window_evicts_and_resume_reports_the_gap() {
    let mut sim = posted(
        Config {
            history_window: 10,
            history_on_join: 4,
            ..unlimited()
        },
        25,
    );
    sim.say(2, json!({"type":"join","room":"general","since":14}));
    let (messages, gap, _) = joined(sim.take_one(2));
    assert!(gap);
    assert_eq!(seqs(&messages), [22, 23, 24, 25]);
    sim.say(2, json!({"type":"join","room":"general","since":15}));
    let (messages, gap, _) = joined(sim.take_one(2));
    assert!(!gap);
    assert_eq!(seqs(&messages), (16..=25).collect::<Vec<_>>());
}
