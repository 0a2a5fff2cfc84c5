//! Messages live on (docs/LIFECYCLE.md): edits, deletes, reactions and replies are
//! entries of the room's log with their own seq, acked, idempotent, counted by flood
//! control; the window keeps each message's current state; every refusal is one error
//! frame and changes nothing. Read markers move forward only and follow the user.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chat_core::protocol::{EntryKind, ErrorCode, Message, Role, RoomInfo, ServerFrame};
use chat_core::{Config, Seq};
use common::{Sim, room};
use serde_json::{Value, json};

/// alice (1, 2: two tabs) and bob (3) in general, with alice's message 1 "helo".
fn room_with_a_message() -> Sim {
    room_with_a_message_in(Config::default())
}

fn room_with_a_message_in(config: Config) -> Sim {
    let mut sim = Sim::with(config);
    let token = sim.hello(1, "alice");
    sim.hello_with_token(2, "alice", &token);
    sim.hello(3, "bob");
    sim.send(1, 1, "general", "helo");
    while sim.store_next(Ok(())).is_some() {}
    sim.clear();
    sim
}

/// The change entries a session received (panics on any other frame but acks).
fn changes(sim: &mut Sim, s: u64) -> Vec<Arc<Message>> {
    sim.take(s)
        .into_iter()
        .filter_map(|f| match f {
            ServerFrame::Change(m) => Some(m),
            ServerFrame::Ack { .. } => None,
            other => panic!("session {s}: expected changes, got {other:?}"),
        })
        .collect()
}

/// The room's history as a session asks for it: every entry, oldest first.
fn history(sim: &mut Sim, s: u64, room_name: &str) -> Vec<Arc<Message>> {
    sim.say(s, json!({"type":"history","id":900,"room":room_name}));
    sim.answer_loads();
    match sim.take(s).pop() {
        Some(ServerFrame::History { messages, .. }) => messages,
        other => panic!("expected history, got {other:?}"),
    }
}

/// The history as JSON values (what a client reads).
fn history_json(sim: &mut Sim, s: u64, room_name: &str) -> Vec<Value> {
    history(sim, s, room_name)
        .iter()
        .map(|m| serde_json::to_value(&**m).unwrap())
        .collect()
}

/// A refusal changes nothing: no frame to anyone else, the same history.
#[track_caller]
fn refused(sim: &mut Sim, frame: Value, code: ErrorCode) -> String {
    let before = history(sim, 3, "general");
    sim.say(1, frame);
    while sim.store_next(Ok(())).is_some() {}
    let msg = sim.expect_error(1, code, Some(7));
    sim.expect_nothing(2);
    sim.expect_nothing(3);
    assert_eq!(
        history(sim, 3, "general"),
        before,
        "{code:?} changed the room"
    );
    msg
}

#[test]
fn an_edit_is_an_entry_with_its_own_seq_and_the_message_shows_its_new_body() {
    let mut sim = room_with_a_message();
    sim.advance(Duration::from_secs(3));
    sim.say(
        1,
        json!({"type":"edit","id":7,"room":"general","seq":1,"body":"hello","client_id":"e1"}),
    );
    let frames = sim.expect_kinds(1, &["change", "ack"]);
    let ServerFrame::Change(edit) = &frames[0] else {
        unreachable!()
    };
    assert_eq!(
        (edit.kind, edit.seq, edit.target, &*edit.body),
        (EntryKind::Edit, Seq(2), Some(Seq(1)), "hello")
    );
    assert!(
        matches!(&frames[1], ServerFrame::Ack { id: Some(id), seq: Seq(2), duplicate: false, .. } if id.0 == 7)
    );
    // Everyone in the room gets the same entry, the client id only alice's tabs.
    for (s, cid) in [(2, Some("e1".into())), (3, None)] {
        let got = changes(&mut sim, s);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].body, edit.body);
        assert_eq!(got[0].client_id, cid);
    }
    // History: the message in its current state, then the edit, in seq order.
    let h = history_json(&mut sim, 3, "general");
    assert_eq!(h.len(), 2);
    assert_eq!(h[0]["body"], "hello");
    assert_eq!(h[0]["edited_at"], h[1]["ts"]);
    assert_eq!(h[0]["rev"], 2);
    assert_eq!(h[1]["kind"], "edit");
    assert_eq!(h[1]["target"], 1);
    // A message a client just joining gets is in its current state too.
    sim.hello(4, "carol");
    let frames = sim.take(4);
    let joined = frames
        .iter()
        .find_map(|f| match f {
            ServerFrame::Joined { messages, .. } => Some(messages.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(&*joined[0].body, "hello");
    assert_eq!(joined[1].kind, EntryKind::Edit);
}

#[test]
fn a_resent_change_is_acked_again_and_not_posted_twice() {
    let mut sim = room_with_a_message();
    let edit =
        json!({"type":"edit","id":7,"room":"general","seq":1,"body":"hello","client_id":"e1"});
    sim.say(1, edit.clone());
    sim.clear();
    sim.say(1, edit);
    let frames = sim.expect_kinds(1, &["ack"]);
    assert!(matches!(
        &frames[0],
        ServerFrame::Ack {
            seq: Seq(2),
            duplicate: true,
            ..
        }
    ));
    sim.expect_nothing(3);
    // A resend of a delete that went through is acked, not refused as `gone`.
    let delete = json!({"type":"delete","id":8,"room":"general","seq":1,"client_id":"d1"});
    sim.say(1, delete.clone());
    sim.clear();
    sim.say(1, delete);
    let frames = sim.expect_kinds(1, &["ack"]);
    assert!(matches!(
        &frames[0],
        ServerFrame::Ack {
            seq: Seq(3),
            duplicate: true,
            ..
        }
    ));
    assert_eq!(history(&mut sim, 3, "general").len(), 3);
}

#[test]
fn editing_someone_elses_message_is_refused() {
    let mut sim = room_with_a_message();
    sim.send(3, 1, "general", "bob's");
    sim.clear();
    let msg = refused(
        &mut sim,
        json!({"type":"edit","id":7,"room":"general","seq":2,"body":"mine now"}),
        ErrorCode::NotAuthor,
    );
    assert!(msg.contains("bob"), "{msg}");
    refused(
        &mut sim,
        json!({"type":"delete","id":7,"room":"general","seq":2}),
        ErrorCode::NotAuthor,
    );
}

#[test]
fn a_deleted_message_is_a_tombstone_and_cannot_be_changed() {
    let mut sim = room_with_a_message();
    sim.say(
        3,
        json!({"type":"react","id":1,"room":"general","seq":1,"emoji":"👍","on":true}),
    );
    sim.say(1, json!({"type":"delete","id":2,"room":"general","seq":1}));
    sim.clear();
    let h = history_json(&mut sim, 3, "general");
    assert_eq!(
        h[0],
        json!({"room":"general","seq":1,"ts":h[0]["ts"],"user":"alice","deleted":true,"rev":3}),
        "a tombstone: no body, no reactions"
    );
    assert_eq!(h[2]["kind"], "delete");
    refused(
        &mut sim,
        json!({"type":"edit","id":7,"room":"general","seq":1,"body":"back"}),
        ErrorCode::Gone,
    );
    refused(
        &mut sim,
        json!({"type":"react","id":7,"room":"general","seq":1,"emoji":"👍","on":true}),
        ErrorCode::Gone,
    );
    refused(
        &mut sim,
        json!({"type":"delete","id":7,"room":"general","seq":1}),
        ErrorCode::Gone,
    );
}

#[test]
fn an_unknown_seq_or_a_change_entry_is_no_such_message() {
    let mut sim = room_with_a_message();
    sim.say(
        1,
        json!({"type":"edit","id":1,"room":"general","seq":1,"body":"hello"}),
    );
    sim.clear();
    for seq in [0, 3, 99] {
        refused(
            &mut sim,
            json!({"type":"edit","id":7,"room":"general","seq":seq,"body":"x"}),
            ErrorCode::NoSuchMessage,
        );
    }
    let msg = refused(
        &mut sim,
        json!({"type":"edit","id":7,"room":"general","seq":2,"body":"x"}),
        ErrorCode::NoSuchMessage,
    );
    assert!(msg.contains("change"), "{msg}");
    refused(
        &mut sim,
        json!({"type":"react","id":7,"room":"general","seq":2,"emoji":"👍","on":true}),
        ErrorCode::NoSuchMessage,
    );
    refused(
        &mut sim,
        json!({"type":"send","id":7,"room":"general","body":"re","reply_to":2}),
        ErrorCode::NoSuchMessage,
    );
    refused(
        &mut sim,
        json!({"type":"send","id":7,"room":"general","body":"re","reply_to":50}),
        ErrorCode::NoSuchMessage,
    );
}

#[test]
fn an_edit_after_the_edit_window_is_refused() {
    let config = Config {
        edit_window: Duration::from_secs(60),
        ..Config::default()
    };
    let mut sim = room_with_a_message_in(config);
    sim.advance(Duration::from_secs(60));
    sim.say(
        1,
        json!({"type":"edit","id":1,"room":"general","seq":1,"body":"just in time"}),
    );
    sim.expect_kinds(1, &["change", "ack"]);
    sim.clear();
    sim.advance(Duration::from_millis(1));
    let msg = refused(
        &mut sim,
        json!({"type":"edit","id":7,"room":"general","seq":1,"body":"too late"}),
        ErrorCode::EditWindowPassed,
    );
    assert!(msg.contains("60 s"), "{msg}");
    // Deleting and reacting have no window.
    sim.say(1, json!({"type":"delete","id":2,"room":"general","seq":1}));
    sim.expect_kinds(1, &["change", "ack"]);
}

#[test]
fn an_over_long_or_empty_edit_is_refused() {
    let mut sim = room_with_a_message();
    let long = "x".repeat(Config::default().max_body_bytes + 1);
    refused(
        &mut sim,
        json!({"type":"edit","id":7,"room":"general","seq":1,"body":long}),
        ErrorCode::BodyTooLarge,
    );
    refused(
        &mut sim,
        json!({"type":"edit","id":7,"room":"general","seq":1,"body":"  "}),
        ErrorCode::InvalidBody,
    );
}

#[test]
fn reactions_are_one_per_user_per_emoji_in_first_reaction_order() {
    let mut sim = room_with_a_message();
    let react = |emoji: &str, on: bool| json!({"type":"react","id":1,"room":"general","seq":1,"emoji":emoji,"on":on});
    sim.say(3, react("👍", true));
    sim.say(1, react("🎉", true));
    sim.say(1, react("👍", true));
    sim.say(3, react("👍", true)); // again: nothing more
    sim.say(3, react("🎉", false)); // bob never had it: nothing
    sim.say(1, react("👍🏽", true)); // a skin tone is one emoji
    sim.say(1, react("👨‍👩‍👧", true)); // a ZWJ sequence too
    let got = changes(&mut sim, 2);
    assert_eq!(got.len(), 7, "every reaction is an entry");
    assert!(got.iter().all(|m| m.kind == EntryKind::React));
    let h = history_json(&mut sim, 3, "general");
    assert_eq!(
        h[0]["reactions"],
        json!([
            {"emoji":"👍","users":["bob","alice"]},
            {"emoji":"🎉","users":["alice"]},
            {"emoji":"👍🏽","users":["alice"]},
            {"emoji":"👨‍👩‍👧","users":["alice"]},
        ])
    );
    sim.say(3, react("👍", false));
    sim.say(1, react("🎉", false));
    let h = history_json(&mut sim, 3, "general");
    assert_eq!(
        h[0]["reactions"][0],
        json!({"emoji":"👍","users":["alice"]})
    );
    assert_eq!(
        h[0]["reactions"][1]["emoji"], "👍🏽",
        "an emoji nobody has is gone"
    );
}

#[test]
fn too_many_emoji_or_not_an_emoji_is_refused() {
    let config = Config {
        max_reactions_per_message: 2,
        ..Config::default()
    };
    let mut sim = room_with_a_message_in(config);
    let react = |emoji: &str| json!({"type":"react","id":7,"room":"general","seq":1,"emoji":emoji,"on":true});
    sim.say(1, react("👍"));
    sim.say(3, react("🎉"));
    sim.clear();
    refused(&mut sim, react("🔥"), ErrorCode::LimitReached);
    refused(&mut sim, react("👍🎉"), ErrorCode::LimitReached);
    for bad in ["a", "", ":+1:", "👍 ", &"👍".repeat(9)] {
        refused(&mut sim, react(bad), ErrorCode::InvalidEmoji);
    }
    // An emoji already there is one more user, not one more emoji.
    sim.say(3, react("👍"));
    sim.expect_kinds(2, &["change"]);
}

#[test]
fn a_moderator_may_delete_anyones_message_a_member_only_their_own() {
    let mut sim = room_with_a_message();
    sim.server
        .set_role("general", "bob", Role::Moderator)
        .unwrap();
    sim.drain();
    sim.clear();
    sim.say(3, json!({"type":"delete","id":1,"room":"general","seq":1}));
    let frames = sim.expect_kinds(3, &["change", "ack"]);
    let ServerFrame::Change(d) = &frames[0] else {
        unreachable!()
    };
    assert_eq!((d.kind, d.user.as_str()), (EntryKind::Delete, "bob"));
    assert!(history(&mut sim, 1, "general")[0].deleted);
}

#[test]
fn changes_count_against_the_send_rate() {
    let config = Config {
        send_rate: chat_core::Rate {
            burst: 3,
            per_second: 1,
        },
        ..Config::default()
    };
    let mut sim = room_with_a_message_in(config);
    for i in 0..2 {
        sim.say(
            1,
            json!({"type":"edit","id":i,"room":"general","seq":1,"body":format!("v{i}")}),
        );
    }
    sim.clear();
    refused(
        &mut sim,
        json!({"type":"react","id":7,"room":"general","seq":1,"emoji":"👍","on":true}),
        ErrorCode::RateLimited,
    );
}

#[test]
fn a_reply_names_its_message_and_survives_its_delete() {
    let mut sim = room_with_a_message();
    sim.say(
        3,
        json!({"type":"send","id":1,"room":"general","body":"what?","reply_to":1}),
    );
    let got = sim.take_messages(2);
    assert_eq!(got[0].reply_to, Some(Seq(1)));
    sim.say(1, json!({"type":"delete","id":2,"room":"general","seq":1}));
    sim.clear();
    let h = history(&mut sim, 3, "general");
    assert!(h[0].deleted);
    assert_eq!((h[1].reply_to, &*h[1].body), (Some(Seq(1)), "what?"));
    // A reply to a deleted message is refused.
    refused(
        &mut sim,
        json!({"type":"send","id":7,"room":"general","body":"re","reply_to":1}),
        ErrorCode::Gone,
    );
}

#[test]
fn a_client_that_missed_changes_resumes_to_the_same_state() {
    let mut sim = room_with_a_message();
    sim.send(3, 1, "general", "second");
    sim.disconnect(3);
    sim.say(
        1,
        json!({"type":"edit","id":1,"room":"general","seq":1,"body":"hello"}),
    );
    sim.say(
        1,
        json!({"type":"react","id":2,"room":"general","seq":2,"emoji":"👀","on":true}),
    );
    sim.say(1, json!({"type":"delete","id":3,"room":"general","seq":1}));
    sim.clear();
    let current = history(&mut sim, 1, "general");

    // Resuming from seq 2 (it had both messages): the three changes, in order.
    sim.connect(5);
    sim.say(
        5,
        json!({"type":"hello","version":2,"name":"dave","rooms":[{"room":"general","since":2}]}),
    );
    let frames = sim.take(5);
    let messages = frames
        .iter()
        .find_map(|f| match f {
            ServerFrame::Joined { messages, gap, .. } => {
                assert!(!gap);
                Some(messages.clone())
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(
        messages.iter().map(|m| m.kind).collect::<Vec<_>>(),
        [EntryKind::Edit, EntryKind::React, EntryKind::Delete]
    );
    // Its view: the two messages as it had them, each change applied.
    let mut view: Vec<Message> = current[..2]
        .iter()
        .map(|m| {
            Message::new(
                m.room.clone(),
                m.seq,
                m.ts,
                m.user.clone(),
                m.body.clone(),
                None,
            )
        })
        .collect();
    view[0].body = "helo".into();
    view[1].body = "second".into();
    for change in &messages {
        for m in &mut view {
            m.apply(change);
        }
    }
    let want: Vec<Message> = current[..2].iter().map(|m| (**m).clone()).collect();
    let view: Vec<Message> = view
        .into_iter()
        .zip(&want)
        .map(|(mut v, w)| {
            v.client_id = w.client_id.clone();
            v
        })
        .collect();
    assert_eq!(view, want);
    // Applying them again (a history page after the resume) changes nothing.
    let mut again = want.clone();
    for change in &messages {
        for m in &mut again {
            assert!(!m.apply(change));
        }
    }
}

#[test]
fn direct_rooms_take_changes_as_public_ones() {
    let mut sim = room_with_a_message();
    sim.say(1, json!({"type":"send","id":1,"to":"bob","body":"psst"}));
    sim.clear();
    let direct = "@alice,bob";
    sim.say(
        3,
        json!({"type":"react","id":1,"room":direct,"seq":1,"emoji":"🤫","on":true}),
    );
    sim.say(
        1,
        json!({"type":"edit","id":2,"room":direct,"seq":1,"body":"psst!"}),
    );
    sim.clear();
    sim.say(
        3,
        json!({"type":"edit","id":3,"room":direct,"seq":1,"body":"mine"}),
    );
    sim.expect_error(3, ErrorCode::NotAuthor, Some(3));
    let h = history(&mut sim, 1, direct);
    assert_eq!(&*h[0].body, "psst!");
    assert_eq!(h[0].reactions[0].users[0].as_str(), "bob");
    assert_eq!(h.len(), 3);
}

#[test]
fn durable_changes_are_acked_after_the_store_and_survive_a_restart() {
    let config = Config {
        durable: true,
        ..Config::default()
    };
    let mut sim = room_with_a_message_in(config.clone());
    sim.say(
        1,
        json!({"type":"edit","id":1,"room":"general","seq":1,"body":"hello"}),
    );
    sim.say(
        3,
        json!({"type":"react","id":2,"room":"general","seq":1,"emoji":"👍","on":true}),
    );
    sim.expect_nothing(1);
    sim.expect_nothing(3);
    assert_eq!(sim.store_next(Ok(())).unwrap().kind, EntryKind::Edit);
    sim.expect_kinds(1, &["change", "ack"]);
    sim.expect_kinds(3, &["change"]);
    sim.say(1, json!({"type":"delete","id":3,"room":"general","seq":1}));
    assert!(
        sim.store_next(Err(chat_core::StoreError::Full("disk".into())))
            .is_some()
    );
    sim.store_next(Err(chat_core::StoreError::Full("disk".into())));
    sim.expect_error(3, ErrorCode::StorageUnavailable, Some(2));
    sim.expect_error(1, ErrorCode::StorageUnavailable, Some(3));
    let h = history(&mut sim, 3, "general");
    assert_eq!((&*h[0].body, h[0].reactions.len()), ("hello", 0));

    sim.restart(config, false);
    sim.hello(4, "carol");
    sim.clear();
    let h = history_json(&mut sim, 4, "general");
    assert_eq!(h.len(), 2);
    assert_eq!(h[0]["body"], "hello");
    assert_eq!(h[0]["edited_at"], h[1]["ts"]);
    assert_eq!(h[1]["kind"], "edit");
}

#[test]
fn read_markers_move_forward_only_and_follow_the_user() {
    let mut sim = room_with_a_message();
    sim.send(3, 1, "general", "two");
    sim.send(3, 2, "general", "three");
    sim.send(1, 3, "general", "mine");
    sim.say(
        3,
        json!({"type":"react","id":4,"room":"general","seq":2,"emoji":"👍","on":true}),
    );
    sim.clear();
    let unread = |sim: &mut Sim, s: u64| -> Option<u64> {
        sim.say(s, json!({"type":"rooms","id":5}));
        match sim.take(s).pop() {
            Some(ServerFrame::Rooms { rooms, .. }) => rooms
                .iter()
                .find(|r: &&RoomInfo| r.name == room("general"))
                .and_then(|r| r.unread),
            other => panic!("{other:?}"),
        }
    };
    // bob's two, not alice's own nor the reaction.
    assert_eq!(unread(&mut sim, 1), Some(2));
    sim.say(1, json!({"type":"read","room":"general","seq":2}));
    sim.expect_nothing(1);
    assert_eq!(
        sim.take(2),
        vec![ServerFrame::Read {
            room: room("general"),
            seq: Seq(2)
        }]
    );
    sim.expect_nothing(3);
    assert_eq!(unread(&mut sim, 1), Some(1));
    assert_eq!(
        unread(&mut sim, 2),
        Some(1),
        "the same user's other session"
    );
    // Back is no move: nothing echoed, the count stays.
    sim.say(2, json!({"type":"read","room":"general","seq":1}));
    sim.expect_nothing(1);
    assert_eq!(unread(&mut sim, 1), Some(1));
    sim.say(1, json!({"type":"read","id":9,"room":"general","seq":99}));
    sim.expect_error(1, ErrorCode::NoSuchMessage, Some(9));
    sim.say(1, json!({"type":"read","room":"general","seq":5}));
    assert_eq!(unread(&mut sim, 1), None, "none: absent");
    assert_eq!(unread(&mut sim, 3), Some(2), "bob's marker is his own");
}
