//! Durable mode: every message is persisted before anyone sees it or its ack; store
//! failures are reported and retryable; history older than the window comes from the store.

mod common;

use chat_core::RequestId;
use std::sync::Arc;

use chat_core::protocol::{ErrorCode, Message, ServerFrame};
use chat_core::{ApiMisuse, Config, Input, Seq, StoreError};
use common::{Sim, bodies, room, seqs};
use serde_json::json;

fn durable() -> Config {
    Config {
        durable: true,
        ..common::unlimited()
    }
}

/// alice (1) and bob (2) in general, durable mode.
fn pair() -> Sim {
    let mut sim = Sim::with(durable());
    sim.hello(1, "alice");
    sim.hello(2, "bob");
    sim.clear();
    sim
}

fn commit(sim: &mut Sim, msg: &Arc<Message>) {
    sim.input(Input::Persisted {
        room: msg.room.clone(),
        seq: msg.seq,
        result: Ok(()),
    });
}

fn fail(sim: &mut Sim, msg: &Arc<Message>) {
    sim.input(Input::Persisted {
        room: msg.room.clone(),
        seq: msg.seq,
        result: Err(StoreError::Full("disk full".into())),
    });
}

#[test]
fn nothing_is_delivered_or_acked_until_the_store_confirms() {
    let mut sim = pair();
    sim.say(
        1,
        json!({"type":"send","id":3,"room":"general","body":"keep me","client_id":"k1"}),
    );
    assert_eq!(sim.persists.len(), 1);
    let msg = sim.persists.remove(0);
    assert_eq!(msg.room, room("general"));
    assert_eq!(msg.seq, Seq(1));
    assert_eq!(&*msg.body, "keep me");
    assert_eq!(msg.client_id.as_deref(), Some("k1"));
    sim.expect_nothing(1);
    sim.expect_nothing(2);
    assert_eq!(sim.server.last_seq(&room("general")), Some(Seq(0)));

    commit(&mut sim, &msg);
    let frames = sim.expect_kinds(1, &["message", "ack"]);
    assert!(matches!(&frames[0], ServerFrame::Message(m) if *m == msg));
    assert!(matches!(
        &frames[1],
        ServerFrame::Ack {
            id: Some(RequestId(3)),
            seq: Seq(1),
            duplicate: false,
            ..
        }
    ));
    // Bob is not the author: his copy comes without the client id.
    let lean = chat_core::protocol::Message {
        client_id: None,
        ..(*msg).clone()
    };
    assert_eq!(sim.take_messages(2), vec![std::sync::Arc::new(lean)]);
    assert_eq!(sim.server.last_seq(&room("general")), Some(Seq(1)));
}

#[test]
fn messages_are_released_in_seq_order_even_if_the_store_answers_out_of_order() {
    let mut sim = pair();
    sim.send(1, 1, "general", "first");
    sim.send(2, 2, "general", "second");
    let (first, second) = (sim.persists[0].clone(), sim.persists[1].clone());
    assert!(first.seq < second.seq);
    commit(&mut sim, &second);
    sim.expect_nothing(1);
    sim.expect_nothing(2);
    commit(&mut sim, &first);
    let got = sim.take(2);
    let kinds: Vec<&str> = got.iter().map(common::kind).collect();
    assert_eq!(kinds, ["message", "message", "ack"]);
    assert_eq!(
        sim.take(1).iter().map(common::kind).collect::<Vec<_>>(),
        ["message", "ack", "message"]
    );
}

#[test]
fn a_store_failure_is_reported_nothing_is_delivered_and_a_resend_works() {
    let mut sim = pair();
    let send = json!({"type":"send","id":4,"room":"general","body":"try me","client_id":"c"});
    sim.say(1, send.clone());
    let msg = sim.persists.remove(0);
    fail(&mut sim, &msg);
    let text = sim.expect_error(1, ErrorCode::StorageUnavailable, Some(4));
    assert!(text.contains("disk full"), "{text}");
    sim.expect_nothing(2);
    assert_eq!(sim.server.last_seq(&room("general")), Some(Seq(0)));

    // The same client id is not remembered as posted: the retry posts it.
    sim.say(1, send);
    let retry = sim.persists.remove(0);
    assert!(retry.seq > msg.seq, "seqs are never reused");
    commit(&mut sim, &retry);
    let frames = sim.expect_kinds(1, &["message", "ack"]);
    assert!(matches!(
        &frames[1],
        ServerFrame::Ack {
            duplicate: false,
            id: Some(RequestId(4)),
            ..
        }
    ));
    assert_eq!(bodies(&sim.take_messages(2)), ["try me"]);
}

#[test]
fn a_failure_does_not_hold_back_later_committed_messages() {
    let mut sim = pair();
    sim.send(1, 1, "general", "doomed");
    sim.send(2, 2, "general", "fine");
    let (doomed, fine) = (sim.persists[0].clone(), sim.persists[1].clone());
    commit(&mut sim, &fine);
    sim.expect_nothing(2);
    fail(&mut sim, &doomed);
    let alice = sim.expect_kinds(1, &["error", "message"]);
    assert!(matches!(
        &alice[0],
        ServerFrame::Error {
            code: ErrorCode::StorageUnavailable,
            id: Some(RequestId(1)),
            ..
        }
    ));
    let got = sim.take(2);
    assert_eq!(
        got.iter().map(common::kind).collect::<Vec<_>>(),
        ["message", "ack"]
    );
    assert!(matches!(&got[0], ServerFrame::Message(m) if *m == fine));
}

#[test]
fn a_resend_while_pending_is_acked_once_committed_and_posted_once() {
    let mut sim = pair();
    let send = json!({"type":"send","id":1,"room":"general","body":"x","client_id":"dup"});
    sim.say(1, send.clone());
    let mut again = send;
    again["id"] = json!(2);
    sim.say(1, again);
    assert_eq!(sim.persists.len(), 1, "stored once");
    let msg = sim.persists.remove(0);
    commit(&mut sim, &msg);
    let frames = sim.expect_kinds(1, &["message", "ack", "ack"]);
    assert!(matches!(
        &frames[1],
        ServerFrame::Ack {
            id: Some(RequestId(1)),
            duplicate: false,
            ..
        }
    ));
    assert!(
        matches!(&frames[2], ServerFrame::Ack { id: Some(RequestId(2)), duplicate: true, seq, .. } if *seq == msg.seq),
        "the resend learns nothing new was posted: {:?}",
        frames[2]
    );
    assert_eq!(sim.take_messages(2).len(), 1);
}

#[test]
fn a_sender_that_disconnected_before_the_store_answered_gets_nothing() {
    let mut sim = pair();
    sim.send(1, 1, "general", "ok one");
    sim.send(1, 2, "general", "failing one");
    let (ok, bad) = (sim.persists[0].clone(), sim.persists[1].clone());
    sim.disconnect(1);
    commit(&mut sim, &ok);
    fail(&mut sim, &bad);
    sim.expect_nothing(1);
    sim.assert_no_violations();
    // bob still sees the stored one.
    assert_eq!(bodies(&sim.take_messages(2)), ["ok one"]);
}

#[test]
fn a_session_that_joins_while_a_message_is_pending_receives_it_once() {
    let mut sim = pair();
    sim.send(1, 1, "general", "in flight");
    let msg = sim.persists.remove(0);
    sim.hello(3, "carol");
    let frames = sim.expect_kinds(3, &["welcome", "joined"]);
    let ServerFrame::Joined {
        messages, last_seq, ..
    } = &frames[1]
    else {
        unreachable!()
    };
    assert!(messages.is_empty());
    assert_eq!(*last_seq, Seq(0));
    commit(&mut sim, &msg);
    assert_eq!(sim.take_messages(3), vec![msg]);
}

#[test]
fn answers_nobody_asked_for_are_api_misuse() {
    let mut sim = pair();
    let r = sim.try_input(Input::Persisted {
        room: room("general"),
        seq: Seq(9),
        result: Ok(()),
    });
    assert!(matches!(r, Err(ApiMisuse::NotPending { .. })));
    let r = sim.try_input(Input::HistoryLoaded {
        ticket: 123,
        result: Ok((vec![], false)),
    });
    assert_eq!(r, Err(ApiMisuse::UnknownTicket(123)));
    // Committing the same message twice is misuse too.
    sim.send(1, 1, "general", "x");
    let msg = sim.persists.remove(0);
    commit(&mut sim, &msg);
    let r = sim.try_input(Input::Persisted {
        room: msg.room.clone(),
        seq: msg.seq,
        result: Ok(()),
    });
    assert!(r.is_err());
    assert_eq!(sim.take_messages(2).len(), 1);
}

// ---- restore and history from the store ----

fn stored(room_name: &str, seq: u64, body: &str, client_id: Option<&str>) -> Message {
    Message::new(
        room(room_name),
        Seq(seq),
        chrono::DateTime::from_timestamp_millis(1_700_000_000_000 + seq as i64 * 1000).unwrap(),
        chat_core::UserName::parse("alice", 32).unwrap(),
        format!("{body}{seq}").into(),
        client_id.map(Into::into),
    )
}

/// A server restarted with general holding seqs 1..=500 in the store, 451..=500 restored.
fn restored() -> Sim {
    let mut sim = Sim::with(durable());
    let recent = (451..=500)
        .map(|s| stored("general", s, "old", None))
        .collect();
    sim.server
        .restore_room(room("general"), Seq(500), recent, false);
    sim.hello(1, "bob");
    sim.clear();
    sim
}

#[test]
fn a_restored_room_serves_its_window_and_continues_the_seq() {
    let mut sim = restored();
    sim.hello(2, "carol");
    let frames = sim.expect_kinds(2, &["welcome", "joined"]);
    let ServerFrame::Joined {
        messages,
        last_seq,
        gap,
        ..
    } = &frames[1]
    else {
        unreachable!()
    };
    assert_eq!(seqs(messages), (451..=500).collect::<Vec<_>>());
    assert_eq!(*last_seq, Seq(500));
    assert!(!gap);

    sim.send(2, 1, "general", "new");
    let msg = sim.persists.remove(0);
    assert_eq!(msg.seq, Seq(501));
    assert!(msg.ts.timestamp_millis() >= messages.last().unwrap().ts.timestamp_millis());
}

#[test]
fn history_older_than_the_window_is_loaded_from_the_store() {
    let mut sim = restored();
    sim.say(
        1,
        json!({"type":"history","id":9,"room":"general","before":451,"limit":20}),
    );
    sim.expect_nothing(1);
    let (ticket, r, before, limit) = sim.loads.remove(0);
    assert_eq!(r, room("general"));
    assert_eq!(before, Some(Seq(451)));
    assert_eq!(limit, 20);

    let page: Vec<Message> = (431..=450)
        .map(|s| stored("general", s, "old", None))
        .collect();
    sim.input(Input::HistoryLoaded {
        ticket,
        result: Ok((page, true)),
    });
    match sim.take_one(1) {
        ServerFrame::History {
            id,
            room: r,
            messages,
            has_more,
            ..
        } => {
            assert_eq!(id, Some(RequestId(9)));
            assert_eq!(r, room("general"));
            assert_eq!(seqs(&messages), (431..=450).collect::<Vec<_>>());
            assert!(has_more);
        }
        other => panic!("{other:?}"),
    }

    // A page the window holds entirely comes from memory, and says older ones exist.
    sim.say(
        1,
        json!({"type":"history","id":10,"room":"general","before":481,"limit":30}),
    );
    match sim.take_one(1) {
        ServerFrame::History {
            messages, has_more, ..
        } => {
            assert_eq!(seqs(&messages), (451..=480).collect::<Vec<_>>());
            assert!(has_more);
        }
        other => panic!("{other:?}"),
    }
    assert!(sim.loads.is_empty());

    // A store failure is an error for that request.
    sim.say(
        1,
        json!({"type":"history","id":11,"room":"general","before":100}),
    );
    let (ticket, ..) = sim.loads.remove(0);
    sim.input(Input::HistoryLoaded {
        ticket,
        result: Err(StoreError::Unavailable("offline".into())),
    });
    sim.expect_error(1, ErrorCode::StorageUnavailable, Some(11));

    // An answer for a session that has gone is dropped.
    sim.say(
        1,
        json!({"type":"history","id":12,"room":"general","before":100}),
    );
    let (ticket, ..) = sim.loads.remove(0);
    sim.disconnect(1);
    sim.input(Input::HistoryLoaded {
        ticket,
        result: Ok((vec![], false)),
    });
    sim.expect_nothing(1);
    sim.assert_no_violations();
}

/// Two users page back into the store at once; the store answers the later request
/// first. Each answer reaches the request it was for.
#[test]
fn history_loads_in_flight_together_each_reach_their_own_request() {
    let mut sim = restored();
    sim.hello(2, "carol");
    sim.clear();
    sim.say(
        1,
        json!({"type":"history","id":21,"room":"general","before":451,"limit":5}),
    );
    sim.say(
        2,
        json!({"type":"history","id":22,"room":"general","before":101,"limit":3}),
    );
    assert_eq!(sim.loads.len(), 2);
    let (bob_ticket, ..) = sim.loads[0];
    let (carol_ticket, ..) = sim.loads[1];
    assert_ne!(bob_ticket, carol_ticket, "each load has its own ticket");

    let page = |from: u64, to: u64| -> Vec<Message> {
        (from..=to)
            .map(|s| stored("general", s, "old", None))
            .collect()
    };
    sim.input(Input::HistoryLoaded {
        ticket: carol_ticket,
        result: Ok((page(98, 100), true)),
    });
    sim.input(Input::HistoryLoaded {
        ticket: bob_ticket,
        result: Ok((page(446, 450), true)),
    });
    for (s, id, want) in [(1, 21, 446..=450), (2, 22, 98..=100)] {
        match sim.take_one(s) {
            ServerFrame::History {
                id: got, messages, ..
            } => {
                assert_eq!(got, Some(RequestId(id)), "session {s}");
                assert_eq!(seqs(&messages), want.collect::<Vec<_>>(), "session {s}");
            }
            other => panic!("session {s}: {other:?}"),
        }
    }
}

#[test]
fn resume_across_a_restart_is_exact_inside_the_window_and_a_gap_outside() {
    let mut sim = restored();
    sim.say(1, json!({"type":"join","room":"general","since":470}));
    let ServerFrame::Joined { messages, gap, .. } = sim.take_one(1) else {
        panic!()
    };
    assert!(!gap);
    assert_eq!(seqs(&messages), (471..=500).collect::<Vec<_>>());
    sim.say(1, json!({"type":"join","room":"general","since":450}));
    let ServerFrame::Joined { messages, gap, .. } = sim.take_one(1) else {
        panic!()
    };
    assert!(!gap);
    assert_eq!(messages.len(), 50);
    sim.say(1, json!({"type":"join","room":"general","since":449}));
    let ServerFrame::Joined { gap, .. } = sim.take_one(1) else {
        panic!()
    };
    assert!(gap, "seq 450 is only in the store");
}

#[test]
fn client_ids_survive_a_restart() {
    let mut sim = Sim::with(durable());
    let recent = vec![stored("general", 1, "hi", Some("c1"))];
    sim.server
        .restore_room(room("general"), Seq(1), recent, true);
    sim.hello(1, "alice");
    sim.clear();
    sim.say(
        1,
        json!({"type":"send","id":5,"room":"general","body":"hi1","client_id":"c1"}),
    );
    assert!(sim.persists.is_empty());
    assert!(matches!(
        sim.take_one(1),
        ServerFrame::Ack {
            id: Some(RequestId(5)),
            seq: Seq(1),
            duplicate: true,
            ..
        }
    ));
}

#[test]
fn a_resend_of_a_message_restored_beyond_the_window_is_still_answered() {
    // The store handed back more than the window holds; the oldest fall out of memory.
    let mut sim = Sim::with(Config {
        history_window: 3,
        ..durable()
    });
    let recent = (1..=5)
        .map(|s| stored("general", s, "m", Some(&format!("c{s}"))))
        .collect();
    sim.server
        .restore_room(room("general"), Seq(5), recent, true);
    sim.hello(1, "alice");
    sim.clear();
    // c1 is no longer in memory: the resend must get an answer (it is posted anew).
    sim.say(
        1,
        json!({"type":"send","id":6,"room":"general","body":"m1","client_id":"c1"}),
    );
    let msg = sim
        .persists
        .pop()
        .expect("posted again, since the window forgot it");
    assert_eq!(msg.seq, Seq(6));
    commit(&mut sim, &msg);
    sim.expect_kinds(1, &["message", "ack"]);
}

#[test]
fn without_durable_mode_nothing_waits_for_a_store() {
    let mut sim = Sim::new();
    sim.hello(1, "alice");
    sim.clear();
    sim.send(1, 1, "general", "instant");
    assert!(sim.persists.is_empty());
    sim.expect_kinds(1, &["message", "ack"]);
    // And history before the window is simply not there.
    sim.say(
        1,
        json!({"type":"history","id":2,"room":"general","before":1}),
    );
    assert!(matches!(
        sim.take_one(1),
        ServerFrame::History {
            has_more: false,
            ..
        }
    ));
    assert!(sim.loads.is_empty());
}

#[test]
fn typing_that_starts_again_while_a_message_is_stored_is_shown_after_it() {
    let mut sim = pair();
    sim.say(1, json!({"type":"typing","room":"general","active":true}));
    sim.expect_kinds(2, &["typing"]);
    sim.say(
        1,
        json!({"type":"send","id":1,"room":"general","body":"first"}),
    );
    let msg = sim.persists.remove(0);
    // alice types the next message before the store has confirmed the first.
    sim.say(1, json!({"type":"typing","room":"general","active":true}));
    let frames = sim.expect_kinds(2, &["typing"]);
    assert!(matches!(
        &frames[0],
        ServerFrame::Typing { active: true, .. }
    ));
    commit(&mut sim, &msg);
    // bob's page clears alice's typing on her message, then learns she is typing again.
    let frames = sim.expect_kinds(2, &["message", "typing"]);
    assert!(
        matches!(&frames[1], ServerFrame::Typing { active: true, user, .. } if user.as_str() == "alice")
    );
    // Without new typing, a stored message is not followed by a typing frame.
    sim.say(
        1,
        json!({"type":"send","id":2,"room":"general","body":"second"}),
    );
    let msg = sim.persists.remove(0);
    commit(&mut sim, &msg);
    sim.expect_kinds(2, &["message"]);
}

/// A room whose whole history the store gave back at the restart, but whose first seq was
/// never stored (its message failed to persist, and seqs are not reused): a client
/// resuming from before any message gets it all without a gap, and history is served
/// from memory with nothing more to load.
#[test]
fn a_complete_history_that_starts_after_seq_1_has_no_gap_and_no_more() {
    let mut sim = Sim::with(durable());
    let recent = (2..=3)
        .map(|s| stored("general", s, "kept", None))
        .collect();
    sim.server
        .restore_room(room("general"), Seq(3), recent, true);
    sim.hello(1, "bob");
    sim.clear();
    sim.say(1, json!({"type":"join","room":"general","since":0}));
    let ServerFrame::Joined { messages, gap, .. } = sim.take_one(1) else {
        panic!()
    };
    assert!(!gap);
    assert_eq!(seqs(&messages), [2, 3]);
    sim.say(
        1,
        json!({"type":"history","id":4,"room":"general","limit":20}),
    );
    assert!(sim.loads.is_empty(), "nothing older is in the store");
    let ServerFrame::History {
        messages, has_more, ..
    } = sim.take_one(1)
    else {
        panic!()
    };
    assert_eq!(seqs(&messages), [2, 3]);
    assert!(!has_more);
}

/// Nothing is older than seq 1: a page before it is empty and final, answered at once,
/// even where older messages than the window's are in the store.
#[test]
fn a_page_before_seq_1_is_empty_and_final_without_asking_the_store() {
    let mut sim = restored();
    sim.say(
        1,
        json!({"type":"history","id":3,"room":"general","before":1,"limit":20}),
    );
    assert!(sim.loads.is_empty(), "nothing is older than seq 1");
    let ServerFrame::History {
        id,
        messages,
        has_more,
        ..
    } = sim.take_one(1)
    else {
        panic!()
    };
    assert_eq!(id, Some(RequestId(3)));
    assert!(messages.is_empty());
    assert!(!has_more);
}

// ---- idle rooms leave memory (`Config::room_idle_unload`) ----

/// The rooms a `rooms` request lists, as (name, users, last seq).
fn listed(sim: &mut Sim, s: u64) -> Vec<(String, usize, u64)> {
    sim.say(s, json!({"type":"rooms"}));
    let ServerFrame::Rooms { rooms, .. } = sim.take_one(s) else {
        panic!()
    };
    rooms
        .into_iter()
        .map(|r| (r.name.to_string(), r.members, r.last_seq.0))
        .collect()
}

/// A room stays in memory while someone is in it; once its last user has left and it
/// has been idle for `room_idle_unload`, it leaves memory. It is still listed, and a
/// join loads it from the store with its history.
#[test]
fn a_room_leaves_memory_once_idle_after_its_last_user_left_and_comes_back_whole() {
    let idle = durable().room_idle_unload;
    let mut sim = Sim::with(durable());
    sim.hello(1, "alice");
    sim.join(1, "books");
    sim.send(1, 1, "books", "hello");
    sim.store_next(Ok(()));
    sim.clear();
    // alice stays longer than the idle time: the room stays.
    sim.advance(idle * 2);
    assert_eq!(sim.server.room_count(), 2);
    sim.say(1, json!({"type":"leave","room":"books"}));
    sim.clear();
    sim.advance(idle - std::time::Duration::from_secs(1));
    assert_eq!(sim.server.room_count(), 2, "not idle long enough yet");
    sim.advance(std::time::Duration::from_secs(2));
    assert_eq!(sim.server.room_count(), 1, "books left memory");
    assert_eq!(
        listed(&mut sim, 1),
        [("books".into(), 0, 1), ("general".into(), 1, 0)]
    );
    sim.join(1, "books");
    assert_eq!(sim.room_loads, [room("books")]);
    sim.answer_room_loads();
    let ServerFrame::Joined { messages, .. } = sim.take_one(1) else {
        panic!()
    };
    assert_eq!(bodies(&messages), ["hello"]);
}

/// At `max_rooms`, a new room takes the place of an idle one, never of a room someone
/// is in, nor of one whose last user is gone but may still come back (their grace
/// period): its member list would lose them.
#[test]
fn at_the_room_limit_only_a_room_nobody_is_in_leaves_memory_for_a_new_one() {
    let grace = durable().presence_grace;
    let mut sim = Sim::with(Config {
        max_rooms: 3,
        ..durable()
    });
    sim.hello(1, "alice");
    sim.join(1, "books");
    sim.hello(2, "bob");
    sim.join(2, "chess");
    sim.send(2, 1, "chess", "anyone?");
    sim.store_next(Ok(()));
    sim.disconnect(2);
    sim.clear();
    // general and books have alice in them, chess has bob in his grace period.
    sim.say(1, json!({"type":"join","id":7,"room":"dance"}));
    sim.expect_error(1, ErrorCode::LimitReached, Some(7));
    assert_eq!(sim.server.room_count(), 3);
    sim.say(1, json!({"type":"members","id":8,"room":"chess"}));
    let ServerFrame::Members { members, .. } = sim.take_one(1) else {
        panic!()
    };
    assert_eq!(common::names(&members), ["bob"]);

    // bob's grace period ends: nobody is in chess, and it makes way for dance.
    sim.advance(grace + std::time::Duration::from_secs(1));
    sim.clear();
    sim.say(1, json!({"type":"join","id":9,"room":"dance"}));
    assert!(matches!(
        sim.take_one(1),
        ServerFrame::Joined {
            id: Some(RequestId(9)),
            ..
        }
    ));
    assert_eq!(sim.server.room_count(), 3);
    assert_eq!(
        listed(&mut sim, 1),
        [
            ("books".into(), 1, 0),
            ("chess".into(), 0, 1),
            ("dance".into(), 1, 0),
            ("general".into(), 1, 0)
        ]
    );
}

/// `room` as `listed` shows it, if it is listed.
fn listed_room(sim: &mut Sim, s: u64, room: &str) -> Option<(String, usize, u64)> {
    listed(sim, s).into_iter().find(|(name, ..)| name == room)
}

/// The idle time counts from a room's last use: a join (or post) while its unload timer
/// runs puts the unload off to `room_idle_unload` after that use, not to the timer's
/// first expiry, and not a whole period later either.
#[test]
fn a_room_used_while_its_unload_timer_runs_leaves_memory_idle_after_its_last_use() {
    let idle = durable().room_idle_unload;
    let second = std::time::Duration::from_secs(1);
    let mut sim = Sim::with(durable());
    sim.hello(1, "alice");
    sim.join(1, "books");
    sim.send(1, 1, "books", "hello");
    sim.store_next(Ok(()));
    sim.say(1, json!({"type":"leave","room":"books"}));
    sim.advance(idle / 2);
    // Used again half way: in and out.
    sim.join(1, "books");
    sim.say(1, json!({"type":"leave","room":"books"}));
    sim.clear();
    sim.advance(idle / 2 + second);
    assert_eq!(sim.server.room_count(), 2, "used {:?} ago", idle / 2);
    sim.advance(idle / 2 - second * 2);
    assert_eq!(sim.server.room_count(), 2, "used {:?} ago", idle - second);
    sim.advance(second * 2);
    assert_eq!(sim.server.room_count(), 1, "idle for {:?}", idle + second);
    assert_eq!(
        listed_room(&mut sim, 1, "books"),
        Some(("books".into(), 0, 1))
    );
}

/// A room whose last message the store has not confirmed yet stays in memory, idle or
/// not (the message lives only there until then); it leaves once it is settled and has
/// been idle again.
#[test]
fn a_room_waiting_for_the_store_stays_in_memory_until_it_has_answered() {
    let idle = durable().room_idle_unload;
    let second = std::time::Duration::from_secs(1);
    let mut sim = Sim::with(durable());
    sim.hello(1, "alice");
    sim.join(1, "books");
    sim.send(1, 1, "books", "slow disk");
    sim.say(1, json!({"type":"leave","room":"books"}));
    sim.clear();
    sim.advance(idle + second);
    assert_eq!(sim.server.room_count(), 2, "the message is still pending");
    sim.store_next(Ok(()));
    sim.clear();
    assert_eq!(sim.server.room_count(), 2);
    sim.advance(idle);
    assert_eq!(sim.server.room_count(), 1, "settled and idle");
    sim.join(1, "books");
    assert_eq!(sim.room_loads, [room("books")]);
    sim.answer_room_loads();
    let ServerFrame::Joined { messages, .. } = sim.take_one(1) else {
        panic!()
    };
    assert_eq!(bodies(&messages), ["slow disk"]);
}

/// Rooms restored at startup that nobody uses leave memory once idle, as rooms that
/// were used do: the clock starts with the first input.
#[test]
fn a_restored_room_nobody_uses_leaves_memory_once_idle() {
    let idle = durable().room_idle_unload;
    let mut sim = Sim::with(durable());
    let recent = (1..=3).map(|s| stored("books", s, "old", None)).collect();
    sim.server.restore_room(room("books"), Seq(3), recent, true);
    sim.hello(1, "alice");
    sim.clear();
    assert_eq!(sim.server.room_count(), 2);
    sim.advance(idle + std::time::Duration::from_secs(1));
    assert_eq!(sim.server.room_count(), 1);
    assert_eq!(sim.server.stored_room_count(), 1);
    assert_eq!(
        listed_room(&mut sim, 1, "books"),
        Some(("books".into(), 0, 3))
    );
}

/// `Server::add_stored_room` (what the runtime does at startup for every room of the
/// store): the room is listed with its last seq without being loaded, counted by
/// `stored_room_count`, and loaded from the store when someone joins it, its seq going
/// on. A room already in memory is left alone, and a lower seq does not lower it.
#[test]
fn rooms_registered_from_the_store_are_listed_and_loaded_on_first_use() {
    let mut sim = Sim::with(durable());
    let books: Vec<_> = (1..=3)
        .map(|s| Arc::new(stored("books", s, "old", None)))
        .collect();
    sim.store.insert(room("books"), books);
    sim.server.add_stored_room(room("books"), Seq(3));
    sim.server.add_stored_room(room("books"), Seq(2));
    sim.server.add_stored_room(room("chess"), Seq(7));
    assert_eq!(sim.server.stored_room_count(), 2);
    assert_eq!(sim.server.room_count(), 0);
    sim.hello(1, "alice");
    sim.clear();
    // general is in memory now: registering it changes nothing.
    sim.server.add_stored_room(room("general"), Seq(9));
    assert_eq!(sim.server.stored_room_count(), 2);
    assert_eq!(
        listed(&mut sim, 1),
        [
            ("books".into(), 0, 3),
            ("chess".into(), 0, 7),
            ("general".into(), 1, 0)
        ]
    );
    sim.join(1, "books");
    assert_eq!(sim.room_loads, [room("books")]);
    sim.answer_room_loads();
    let ServerFrame::Joined {
        messages, last_seq, ..
    } = sim.take_one(1)
    else {
        panic!()
    };
    assert_eq!(bodies(&messages), ["old1", "old2", "old3"]);
    assert_eq!(last_seq, Seq(3));
    assert_eq!(sim.server.stored_room_count(), 1);
    assert_eq!(sim.server.room_count(), 2);
    sim.send(1, 1, "books", "new");
    assert_eq!(sim.persists[0].seq, Seq(4));
}

/// Without a store a room's messages live only in memory: an idle room keeps them, is
/// never unloaded (not after `room_idle_unload`, not to make way for a new room at
/// `max_rooms`), and `add_stored_room` has nothing to load from.
#[test]
fn without_durable_mode_idle_rooms_keep_their_history_in_memory() {
    let config = Config {
        max_rooms: 2,
        ..common::unlimited()
    };
    let idle = config.room_idle_unload;
    let mut sim = Sim::with(config);
    sim.server.add_stored_room(room("chess"), Seq(7));
    assert_eq!(sim.server.stored_room_count(), 0);
    sim.hello(1, "alice");
    sim.join(1, "books");
    sim.send(1, 1, "books", "kept");
    sim.say(1, json!({"type":"leave","room":"books"}));
    sim.clear();
    sim.advance(idle * 3);
    assert_eq!(sim.server.room_count(), 2);
    sim.say(1, json!({"type":"join","id":2,"room":"dance"}));
    sim.expect_error(1, ErrorCode::LimitReached, Some(2));
    sim.join(1, "books");
    assert!(sim.room_loads.is_empty(), "{:?}", sim.room_loads);
    let ServerFrame::Joined { messages, .. } = sim.take_one(1) else {
        panic!()
    };
    assert_eq!(bodies(&messages), ["kept"]);
    assert_eq!(listed(&mut sim, 1).len(), 2);
}

/// While a durable shutdown drains (a message still waits for the store), rooms stay in
/// memory: an idle room is not unloaded when its time comes, nor to make way for a new
/// room at `max_rooms`, and a join during the drain is answered from memory without
/// asking the store for anything.
#[test]
fn during_a_durable_shutdown_no_room_leaves_memory() {
    let idle = durable().room_idle_unload;
    let mut sim = Sim::with(Config {
        max_rooms: 3,
        ..durable()
    });
    sim.hello(1, "alice");
    sim.join(1, "books");
    sim.send(1, 1, "books", "kept");
    sim.store_next(Ok(()));
    sim.say(1, json!({"type":"leave","room":"books"}));
    sim.join(1, "slow");
    sim.send(1, 2, "slow", "pending");
    sim.clear();
    let now = sim.now;
    sim.server.shutdown(now);
    sim.drain();
    sim.advance(idle + std::time::Duration::from_secs(1));
    assert_eq!(sim.drained, 0, "a message still waits for the store");
    assert_eq!(sim.server.room_count(), 3, "books stays while draining");
    sim.say(1, json!({"type":"join","id":3,"room":"dance"}));
    sim.expect_error(1, ErrorCode::LimitReached, Some(3));
    assert_eq!(sim.server.room_count(), 3);
    sim.join(1, "books");
    assert!(sim.room_loads.is_empty(), "{:?}", sim.room_loads);
    let ServerFrame::Joined { messages, .. } = sim.take_one(1) else {
        panic!()
    };
    assert_eq!(bodies(&messages), ["kept"]);
}

/// The driver is asked to wake up when a room's idle time can end (`poll_timeout`), not
/// at once: a room's first use arms its unload check `room_idle_unload` ahead, later uses
/// do not move it, a room someone is in needs none, and the last one out arms it again.
#[test]
fn a_rooms_unload_check_is_scheduled_one_idle_period_after_its_use() {
    let idle = durable().room_idle_unload;
    let mut sim = Sim::with(durable());
    sim.hello(1, "alice");
    sim.join(1, "books");
    let joined_at = sim.now.mono;
    assert_eq!(sim.server.poll_timeout(), Some(joined_at + idle));
    sim.advance(idle / 4);
    sim.send(1, 1, "books", "hello");
    sim.store_next(Ok(()));
    assert_eq!(sim.server.poll_timeout(), Some(joined_at + idle));
    sim.advance(idle);
    assert_eq!(sim.server.poll_timeout(), None, "alice is in books");
    sim.say(1, json!({"type":"leave","room":"books"}));
    assert_eq!(sim.server.poll_timeout(), Some(sim.now.mono + idle));
}

/// Unloading keeps a room's name only if it has messages to load back: a room with none
/// (here restored empty) is forgotten once idle, not listed for ever.
#[test]
fn an_idle_room_without_messages_is_forgotten_not_kept_as_stored() {
    let idle = durable().room_idle_unload;
    let mut sim = Sim::with(durable());
    sim.server
        .restore_room(room("empty"), Seq(0), Vec::new(), true);
    sim.hello(1, "alice");
    sim.clear();
    assert!(listed_room(&mut sim, 1, "empty").is_some());
    sim.advance(idle + std::time::Duration::from_secs(1));
    assert_eq!(sim.server.room_count(), 1);
    assert_eq!(sim.server.stored_room_count(), 0);
    assert_eq!(listed_room(&mut sim, 1, "empty"), None);
}
