//! Anonymous mode: a name freed and taken again is a new user, who reads none of the
//! direct messages the name's earlier holder sent or received.

mod common;

use std::time::Duration;

use chat_core::Config;
use chat_core::protocol::ServerFrame;
use common::{Sim, bodies};
use serde_json::json;

fn dm_history(sim: &mut Sim, s: u64, id: u64, before: Option<u64>) -> (Vec<String>, bool) {
    sim.say(
        s,
        json!({"type":"history","id":id,"room":"@alice,bob","before":before}),
    );
    // Durable mode: the conversation may have left memory while idle; it is read back
    // from the store first, then the page.
    sim.answer_room_loads();
    sim.answer_loads();
    match sim.take_one(s) {
        ServerFrame::History {
            messages, has_more, ..
        } => (bodies(&messages), has_more),
        other => panic!("{other:?}"),
    }
}

fn dm_join(sim: &mut Sim, s: u64) -> Vec<String> {
    sim.say(s, json!({"type":"join","id":9,"room":"@alice,bob"}));
    match sim.take_one(s) {
        ServerFrame::Joined { messages, .. } => bodies(&messages),
        other => panic!("{other:?}"),
    }
}

/// alice and bob exchange direct messages, bob goes, his name is freed, and someone else
/// takes it.
fn bob_replaced(config: Config) -> Sim {
    let mut sim = Sim::with(config);
    sim.hello(1, "alice");
    sim.hello(2, "bob");
    for (s, body) in [
        (1, "my password is hunter2"),
        (2, "noted"),
        (1, "burn this"),
    ] {
        sim.say(
            s,
            json!({"type":"send","id":1,"to":if s == 1 {"bob"} else {"alice"},"body":body}),
        );
        while sim.store_next(Ok(())).is_some() {}
    }
    sim.disconnect(2);
    sim.advance(Duration::from_secs(60));
    sim.hello(3, "bob");
    sim.clear();
    sim
}

#[test]
fn a_new_holder_of_a_freed_name_reads_none_of_the_old_direct_messages() {
    let mut sim = bob_replaced(Config::default());
    assert_eq!(dm_join(&mut sim, 3), Vec::<String>::new());
    assert_eq!(dm_history(&mut sim, 3, 2, None), (vec![], false));
    // alice still has her conversation, and the new bob what is said from now on.
    assert_eq!(dm_history(&mut sim, 1, 3, None).0.len(), 3);
    sim.say(
        1,
        json!({"type":"send","id":4,"to":"bob","body":"who are you?"}),
    );
    sim.clear();
    assert_eq!(dm_join(&mut sim, 3), ["who are you?"]);
    assert_eq!(
        dm_history(&mut sim, 3, 5, None),
        (vec!["who are you?".into()], false)
    );
}

#[test]
fn nor_from_the_store_in_durable_mode() {
    let mut sim = bob_replaced(Config {
        durable: true,
        history_window: 1,
        ..Config::default()
    });
    assert_eq!(dm_history(&mut sim, 3, 2, Some(3)), (vec![], false));
    let (old, _) = dm_history(&mut sim, 1, 3, Some(3));
    assert_eq!(
        old,
        ["my password is hunter2", "noted"],
        "alice reads the store"
    );
}
