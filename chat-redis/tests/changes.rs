//! Changes to messages in the shared log, against a real `redis-server`: `commit.lua`
//! checks an edit, delete, reaction or reply against the target's current state and
//! updates that state in the same atomic step; reads give messages in their current
//! state and the change entries in seq order; two nodes racing cannot both win.

mod common;

use std::time::Duration;

use chat_core::protocol::EntryKind;
use chat_core::{ChangeRules, EntryDetail, Seq};
use chat_redis::{Doorbell, Error, Post};
use common::{RedisServer, commit, detail, react, rules, show};
use futures::StreamExt;

fn refused(r: Result<u64, Error>) -> String {
    match r {
        Err(Error::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn changes_update_the_current_state_and_reads_give_it_with_the_entries() {
    let redis = RedisServer::start();
    let mut log = redis.log().await;
    let epoch = log.cluster_epoch().await.unwrap();
    let (a, b) = ("Alice", "bob");
    assert_eq!(commit(&mut log, &epoch, a, "helo", None).await.unwrap(), 1);
    assert_eq!(
        commit(&mut log, &epoch, a, "second", None).await.unwrap(),
        2
    );
    let reply = EntryDetail {
        reply_to: Some(Seq(1)),
        ..EntryDetail::default()
    };
    assert_eq!(
        commit(&mut log, &epoch, b, "re: helo", Some(&reply))
            .await
            .unwrap(),
        3
    );
    let edit = detail(EntryKind::Edit, 1);
    commit(&mut log, &epoch, a, "hello", Some(&edit))
        .await
        .unwrap();
    commit(&mut log, &epoch, b, "", Some(&react(1, "🎉", true)))
        .await
        .unwrap();
    commit(&mut log, &epoch, a, "", Some(&react(1, "🎉", true)))
        .await
        .unwrap();
    commit(&mut log, &epoch, b, "", Some(&react(1, "🎉", false)))
        .await
        .unwrap();
    commit(&mut log, &epoch, a, "", Some(&react(2, "👍", true)))
        .await
        .unwrap();
    let read = log.read_latest("general", 100).await.unwrap();
    let shown: Vec<String> = read.entries.iter().map(show).collect();
    assert_eq!(
        shown,
        [
            "1:hello edited 🎉=Alice",
            "2:second 👍=Alice",
            "3:re: helo re1",
            "4:edit>1 hello",
            "5:react>1 🎉+",
            "6:react>1 🎉+",
            "7:react>1 🎉-",
            "8:react>2 👍+",
        ]
    );
    assert_eq!(read.entries[0].state.as_ref().unwrap().rev, Some(7));

    // A delete leaves a tombstone; the edit's text goes with the message.
    let del = detail(EntryKind::Delete, 1);
    assert_eq!(
        commit(&mut log, &epoch, a, "", Some(&del)).await.unwrap(),
        9
    );
    let read = log.read_after("general", 0, 100).await.unwrap();
    assert_eq!(show(&read.entries[0]), "1: deleted");
    let edit_entry = &read.entries[3];
    assert!(
        edit_entry.state.as_ref().unwrap().deleted,
        "the edit knows its target is gone"
    );
    // A history page reads the same way.
    let (page, more) = log.read_before("general", Some(3), 10).await.unwrap();
    assert_eq!(
        page.iter().map(show).collect::<Vec<_>>(),
        ["1: deleted", "2:second 👍=Alice"]
    );
    assert!(!more);
}

#[tokio::test]
async fn a_change_that_breaks_a_rule_is_refused_and_writes_nothing() {
    let redis = RedisServer::start();
    let mut log = redis.log().await;
    let epoch = log.cluster_epoch().await.unwrap();
    commit(&mut log, &epoch, "alice", "mine", None)
        .await
        .unwrap();
    commit(&mut log, &epoch, "Zoë", "hers", None).await.unwrap();
    let edit = detail(EntryKind::Edit, 1);
    commit(&mut log, &epoch, "alice", "mine!", Some(&edit))
        .await
        .unwrap();
    let top = || async {
        let mut l = redis.log().await;
        l.read_after("general", 0, 100).await.unwrap().top
    };
    assert_eq!(top().await, 3);

    // Someone else's message: edit and delete are the author's (the name's case and
    // Unicode letters do not matter: the key decides).
    let r = commit(&mut log, &epoch, "bob", "x", Some(&edit)).await;
    assert_eq!(refused(r), "not_author");
    let r = commit(
        &mut log,
        &epoch,
        "bob",
        "",
        Some(&detail(EntryKind::Delete, 1)),
    )
    .await;
    assert_eq!(refused(r), "not_author");
    let theirs = detail(EntryKind::Edit, 2);
    commit(&mut log, &epoch, "ZOË", "hers!", Some(&theirs))
        .await
        .unwrap();
    // ...unless a moderator deletes it.
    let moderated = EntryDetail {
        rules: ChangeRules {
            any_author: true,
            ..rules()
        },
        ..detail(EntryKind::Delete, 2)
    };
    commit(&mut log, &epoch, "bob", "", Some(&moderated))
        .await
        .unwrap();
    assert_eq!(top().await, 5);
    // A deleted message: no edit, no reaction, no reply, no second delete.
    let r = commit(&mut log, &epoch, "Zoë", "again", Some(&theirs)).await;
    assert_eq!(refused(r), "gone");
    let r = commit(&mut log, &epoch, "bob", "", Some(&react(2, "👍", true))).await;
    assert_eq!(refused(r), "gone");
    let reply = EntryDetail {
        reply_to: Some(Seq(2)),
        ..EntryDetail::default()
    };
    let r = commit(&mut log, &epoch, "bob", "re", Some(&reply)).await;
    assert_eq!(refused(r), "gone");
    // A change entry, or a seq never handed out, is no message.
    let r = commit(&mut log, &epoch, "alice", "", Some(&react(3, "👍", true))).await;
    assert_eq!(refused(r), "no_such_message");
    let r = commit(&mut log, &epoch, "alice", "", Some(&react(99, "👍", true))).await;
    assert_eq!(refused(r), "no_such_message");
    let unknown_reply = EntryDetail {
        reply_to: Some(Seq(99)),
        ..EntryDetail::default()
    };
    let r = commit(&mut log, &epoch, "bob", "re", Some(&unknown_reply)).await;
    assert_eq!(refused(r), "no_such_message");
    // The edit window, measured by Redis' clock.
    let late = EntryDetail {
        rules: ChangeRules {
            edit_window: Duration::from_millis(1),
            ..rules()
        },
        ..edit.clone()
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let r = commit(&mut log, &epoch, "alice", "too late", Some(&late)).await;
    assert_eq!(refused(r), "edit_window_passed");
    // The reaction limit counts distinct emoji; another user's same emoji is fine.
    let limited = |emoji: &str| EntryDetail {
        rules: ChangeRules {
            max_reactions: 2,
            ..rules()
        },
        ..react(1, emoji, true)
    };
    commit(&mut log, &epoch, "alice", "", Some(&limited("👍")))
        .await
        .unwrap();
    commit(&mut log, &epoch, "bob", "", Some(&limited("🎉")))
        .await
        .unwrap();
    let r = commit(&mut log, &epoch, "bob", "", Some(&limited("🚀"))).await;
    assert_eq!(refused(r), "limit_reached");
    commit(&mut log, &epoch, "carol", "", Some(&limited("👍")))
        .await
        .unwrap();
    // Nothing refused took a seq: 5 + three reactions.
    assert_eq!(top().await, 8);
    let read = log.read_after("general", 0, 100).await.unwrap();
    assert_eq!(
        show(&read.entries[0]),
        "1:mine! edited 👍=alice+carol 🎉=bob"
    );
    assert_eq!(show(&read.entries[1]), "2: deleted");
}

/// Two nodes race: one deletes a message while the other edits and reacts to it as
/// fast as it can. Every change committed after the delete is refused with `gone`, and
/// the message ends deleted whatever the interleaving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_racing_cannot_both_change_a_deleted_message() {
    let redis = RedisServer::start();
    let mut log = redis.log().await;
    let epoch = log.cluster_epoch().await.unwrap();
    commit(&mut log, &epoch, "alice", "target", None)
        .await
        .unwrap();
    let editor = {
        let mut log = redis.log().await;
        let epoch = epoch.clone();
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            // Until the delete has been seen a few times (bounded).
            for i in 0..100_000 {
                if outcomes
                    .iter()
                    .filter(|r: &&Result<u64, String>| r.is_err())
                    .count()
                    >= 5
                {
                    break;
                }
                let d = if i % 2 == 0 {
                    detail(EntryKind::Edit, 1)
                } else {
                    react(1, "👍", i % 4 == 1)
                };
                let r = commit(&mut log, &epoch, "alice", &format!("v{i}"), Some(&d)).await;
                outcomes.push(r.map_err(|e| match e {
                    Error::Refused { code, .. } => code,
                    other => panic!("{other}"),
                }));
            }
            outcomes
        })
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    let deleted = commit(
        &mut log,
        &epoch,
        "alice",
        "",
        Some(&detail(EntryKind::Delete, 1)),
    )
    .await
    .unwrap();
    let outcomes = editor.await.unwrap();
    for r in &outcomes {
        match r {
            Ok(seq) => assert!(
                *seq < deleted,
                "a change committed after the delete ({seq})"
            ),
            Err(code) => assert_eq!(code, "gone"),
        }
    }
    assert!(
        outcomes.iter().any(Result::is_err),
        "the race was not a race"
    );
    let read = log.read_after("general", 0, 1000).await.unwrap();
    assert_eq!(show(&read.entries[0]), "1: deleted");
    assert_eq!(read.top, deleted, "no entry after the delete");

    // Ten nodes each add a different emoji at once with a limit of three: three win.
    let mut tasks = Vec::new();
    commit(&mut log, &epoch, "alice", "vote", None)
        .await
        .unwrap();
    let target = read.top + 1;
    for (i, emoji) in ["😀", "😃", "😄", "😁", "😆", "😅", "😂", "🤣", "😊", "😇"]
        .into_iter()
        .enumerate()
    {
        let mut log = redis.log().await;
        let epoch = epoch.clone();
        tasks.push(tokio::spawn(async move {
            let d = EntryDetail {
                rules: ChangeRules {
                    max_reactions: 3,
                    ..rules()
                },
                ..react(target, emoji, true)
            };
            commit(&mut log, &epoch, &format!("user{i}"), "", Some(&d)).await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => won += 1,
            Err(Error::Refused { code, .. }) => assert_eq!(code, "limit_reached"),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(won, 3);
}

#[tokio::test]
async fn a_change_rings_the_doorbell_with_its_kind_and_target_and_a_resend_is_a_duplicate() {
    let redis = RedisServer::start();
    let mut log = redis.log().await;
    let epoch = log.cluster_epoch().await.unwrap();
    commit(&mut log, &epoch, "alice", "hi", None).await.unwrap();
    let mut sub = redis.client().get_async_pubsub().await.unwrap();
    sub.subscribe(log.keys().channel("general")).await.unwrap();
    let d = react(1, "👍🏽", true);
    let post = Post {
        user: "bob",
        body: "",
        client_id: Some("r-1"),
        detail: Some(&d),
    };
    let first = log.commit("general", &epoch, post).await.unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), sub.on_message().next())
        .await
        .expect("the doorbell rings")
        .unwrap();
    let Doorbell::Message { entry, .. } = Doorbell::parse(msg.get_payload_bytes()).unwrap() else {
        panic!("an entry doorbell");
    };
    assert_eq!(show(&entry), "2:react>1 👍🏽+");
    assert_eq!(
        (entry.user.as_str(), entry.client_id.as_deref()),
        ("bob", Some("r-1"))
    );
    // The stream has the same entry.
    let read = log.read_after("general", 1, 10).await.unwrap();
    assert_eq!(read.entries, [entry]);
    // The resend (a lost reply) is the same seq, and nothing is applied twice.
    let again = log.commit("general", &epoch, post).await.unwrap();
    assert_eq!((again.seq, again.duplicate), (first.seq, true));
    let read = log.read_after("general", 0, 10).await.unwrap();
    assert_eq!(read.top, 2);
    assert_eq!(show(&read.entries[0]), "1:hi 👍🏽=bob");
    // A reply rings an entry doorbell too, with its target.
    let reply = EntryDetail {
        reply_to: Some(Seq(1)),
        ..EntryDetail::default()
    };
    commit(&mut log, &epoch, "bob", "re", Some(&reply))
        .await
        .unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), sub.on_message().next())
        .await
        .expect("the doorbell rings")
        .unwrap();
    let Doorbell::Message { entry, .. } = Doorbell::parse(msg.get_payload_bytes()).unwrap() else {
        panic!("an entry doorbell");
    };
    assert_eq!(show(&entry), "3:re re1");
}
