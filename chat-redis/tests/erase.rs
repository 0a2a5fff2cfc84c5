//! Erasure and deletes in the shared log, against a real `redis-server`: an `erase`
//! entry tombstones the user's messages in the state hash, takes the user's reactions
//! off other messages and takes the user's texts out of the stream (its tail rewritten
//! with the same ids); a delete takes its message's text and its edits' texts out the
//! same way. Everything else in the stream stays byte for byte.

mod common;

use chat_core::protocol::EntryKind;
use chat_core::{EntryDetail, Seq};
use common::{RedisServer, commit, detail, react, rules, show};

fn erase() -> EntryDetail {
    EntryDetail {
        kind: EntryKind::Erase,
        rules: rules(),
        ..EntryDetail::default()
    }
}

/// One stream entry exactly as Redis holds it: its id and its fields, in order, as bytes.
type RawEntry = (String, Vec<(Vec<u8>, Vec<u8>)>);

/// The whole stream, raw.
fn stream(redis: &RedisServer, key: &str) -> Vec<RawEntry> {
    let mut c = redis.client().get_connection().unwrap();
    redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(&mut c)
        .unwrap()
}

fn field<'a>(e: &'a RawEntry, name: &str) -> Option<&'a [u8]> {
    e.1.iter()
        .find(|(k, _)| k == name.as_bytes())
        .map(|(_, v)| v.as_slice())
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The state hash, raw.
fn states(redis: &RedisServer, key: &str) -> Vec<(String, String)> {
    let mut c = redis.client().get_connection().unwrap();
    let mut all: Vec<(String, String)> = redis::cmd("HGETALL").arg(key).query(&mut c).unwrap();
    all.sort_by_key(|(k, _)| k.parse::<u64>().unwrap_or(0));
    all
}

const ALICE_TEXTS: [&str; 4] = [
    "alpha-secret",
    "beta-secret",
    "gamma-secret",
    "delta-secret",
];

#[tokio::test]
async fn an_erase_tombstones_the_user_and_leaves_no_text_of_theirs_in_the_stream() {
    let redis = RedisServer::start();
    let mut log = redis.log().await;
    let epoch = log.cluster_epoch().await.unwrap();
    let keys = log.keys().clone();
    let (a, b, c) = ("Alice", "bob", "carol");
    commit(&mut log, &epoch, a, ALICE_TEXTS[0], None)
        .await
        .unwrap(); // 1
    commit(&mut log, &epoch, b, "bob one", None).await.unwrap(); // 2
    let reply = EntryDetail {
        reply_to: Some(Seq(2)),
        ..EntryDetail::default()
    };
    commit(&mut log, &epoch, a, ALICE_TEXTS[1], Some(&reply))
        .await
        .unwrap(); // 3
    commit(&mut log, &epoch, b, "", Some(&react(2, "👍", true)))
        .await
        .unwrap(); // 4
    commit(&mut log, &epoch, a, "", Some(&react(2, "🎉", true)))
        .await
        .unwrap(); // 5
    commit(&mut log, &epoch, a, "", Some(&react(2, "👍", true)))
        .await
        .unwrap(); // 6
    let edit = detail(EntryKind::Edit, 1);
    commit(&mut log, &epoch, a, ALICE_TEXTS[2], Some(&edit))
        .await
        .unwrap(); // 7
    commit(&mut log, &epoch, b, "bob two", None).await.unwrap(); // 8
    commit(&mut log, &epoch, c, "", Some(&react(8, "👀", true)))
        .await
        .unwrap(); // 9
    commit(&mut log, &epoch, a, ALICE_TEXTS[3], None)
        .await
        .unwrap(); // 10
    commit(&mut log, &epoch, a, "", Some(&react(1, "🎉", true)))
        .await
        .unwrap(); // 11

    // Every node's commits recorded where each user wrote (reactions too).
    assert_eq!(log.rooms_of("alice").await.unwrap(), ["general"]);
    assert_eq!(log.rooms_of("CAROL").await.unwrap(), ["general"]);
    assert!(log.rooms_of("dave").await.unwrap().is_empty());

    let before = stream(&redis, &keys.log("general"));
    assert_eq!(before.len(), 11);
    let is_alices = |e: &RawEntry| field(e, "u") == Some(b"Alice".as_slice());

    assert_eq!(
        commit(&mut log, &epoch, a, "", Some(&erase()))
            .await
            .unwrap(),
        12
    );

    // No text of alice anywhere in the stream, in any field.
    let after = stream(&redis, &keys.log("general"));
    for e in &after {
        for (k, v) in &e.1 {
            for t in ALICE_TEXTS {
                assert!(!contains(k, t) && !contains(v, t), "{t} still in {e:?}");
            }
        }
    }
    // Alice's entries keep their ids and every field but the text, which is empty.
    let (erased, others): (Vec<&RawEntry>, Vec<&RawEntry>) =
        before.iter().partition(|e| is_alices(e));
    for old in erased {
        let new = after.iter().find(|e| e.0 == old.0).expect("same id");
        assert_eq!(field(new, "b"), Some(b"".as_slice()));
        let keep = |e: &RawEntry| {
            e.1.iter()
                .filter(|(k, _)| k != b"b")
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(keep(new), keep(old), "only the text changed in {}", old.0);
    }
    // Everyone else's entries are byte-identical, under the same ids.
    for old in others {
        assert!(after.contains(old), "{old:?} changed");
    }
    // The erase entry is last, under the next seq, without text or target.
    let last = after.last().unwrap();
    assert_eq!(last.0, "12-0");
    assert_eq!(field(last, "k"), Some(b"erase".as_slice()));
    assert_eq!(field(last, "g"), None);
    assert_eq!(after.len(), 12);

    // The state hash: alice's messages are tombstones; her reactions left bob's
    // message (bob's own 👍 stays), and nothing in it holds her text.
    let st = states(&redis, &keys.state("general"));
    let get = |seq: &str| st.iter().find(|(k, _)| k == seq).map(|(_, v)| v.clone());
    for seq in ["1", "3", "10"] {
        let s: serde_json::Value = serde_json::from_str(&get(seq).unwrap()).unwrap();
        assert_eq!(s["d"], 1, "#{seq} is a tombstone: {s}");
        assert_eq!(s["v"], 12);
        assert!(s.get("b").is_none() && s.get("r").is_none());
    }
    let bobs: serde_json::Value = serde_json::from_str(&get("2").unwrap()).unwrap();
    assert_eq!(bobs["v"], 12);
    assert_eq!(bobs["r"], serde_json::json!([["👍", [["bob", "bob"]]]]));
    for (_, v) in &st {
        for t in ALICE_TEXTS {
            assert!(!v.contains(t), "{t} in the state hash: {v}");
        }
    }

    // Reads (a load, a catch-up, a history page) give the tombstones.
    let read = log.read_latest("general", 100).await.unwrap();
    let shown: Vec<String> = read.entries.iter().map(show).collect();
    assert_eq!(
        shown,
        [
            "1: deleted",
            "2:bob one 👍=bob",
            "3: deleted",
            "4:react>2 👍+",
            "5:react>2 🎉+",
            "6:react>2 👍+",
            // The edit's entry stays, without its text.
            "7:edit>1",
            "8:bob two 👀=carol",
            "9:react>8 👀+",
            "10: deleted",
            "11:react>1 🎉+",
            "12:erase>0",
        ]
    );
    let caught_up = log.read_after("general", 0, 100).await.unwrap();
    assert_eq!(caught_up.entries, read.entries);
    assert!(caught_up.entries[6].body.is_empty(), "the edit has no text");
    let (page, _) = log.read_before("general", Some(4), 10).await.unwrap();
    assert_eq!(
        page.iter().map(show).collect::<Vec<_>>(),
        ["1: deleted", "2:bob one 👍=bob", "3: deleted"]
    );

    // The seq counter and the stream go on: the next post is 13.
    assert_eq!(
        commit(&mut log, &epoch, b, "bob three", None)
            .await
            .unwrap(),
        13
    );
    let more = log.read_after("general", 12, 10).await.unwrap();
    assert_eq!(
        more.entries.iter().map(show).collect::<Vec<_>>(),
        ["13:bob three"]
    );

    // A second erase is harmless: one more entry, nothing else changes.
    let stream_then = stream(&redis, &keys.log("general"));
    let states_then = states(&redis, &keys.state("general"));
    assert_eq!(
        commit(&mut log, &epoch, a, "", Some(&erase()))
            .await
            .unwrap(),
        14
    );
    let stream_now = stream(&redis, &keys.log("general"));
    assert_eq!(&stream_now[..13], stream_then.as_slice());
    assert_eq!(states(&redis, &keys.state("general")), states_then);
    assert_eq!(
        commit(&mut log, &epoch, a, "alice again", None)
            .await
            .unwrap(),
        15
    );
}

#[tokio::test]
async fn a_delete_takes_its_message_and_its_edits_text_out_of_the_stream() {
    let redis = RedisServer::start();
    let mut log = redis.log().await;
    let epoch = log.cluster_epoch().await.unwrap();
    let keys = log.keys().clone();
    let (a, b) = ("alice", "bob");
    commit(&mut log, &epoch, a, "first-secret", None)
        .await
        .unwrap(); // 1
    commit(&mut log, &epoch, b, "keep me", None).await.unwrap(); // 2
    commit(&mut log, &epoch, a, "oops-secret", None)
        .await
        .unwrap(); // 3
    let edit = detail(EntryKind::Edit, 3);
    commit(&mut log, &epoch, a, "oops-secret-edited", Some(&edit))
        .await
        .unwrap(); // 4
    commit(&mut log, &epoch, b, "after", None).await.unwrap(); // 5
    commit(&mut log, &epoch, a, "still here", None)
        .await
        .unwrap(); // 6
    let before = stream(&redis, &keys.log("general"));

    let del = detail(EntryKind::Delete, 3);
    assert_eq!(
        commit(&mut log, &epoch, a, "", Some(&del)).await.unwrap(),
        7
    );
    let after = stream(&redis, &keys.log("general"));
    assert_eq!(after.len(), 7);
    for e in &after {
        for (_, v) in &e.1 {
            assert!(!contains(v, "oops"), "the deleted text is still in {e:?}");
        }
    }
    for (old, new) in before.iter().zip(&after) {
        assert_eq!(old.0, new.0);
        if old.0 == "3-0" || old.0 == "4-0" {
            assert_eq!(field(new, "b"), Some(b"".as_slice()));
        } else {
            assert_eq!(old, new, "{} is byte-identical", old.0);
        }
    }
    let st = states(&redis, &keys.state("general"));
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].0, "3");
    let tomb: serde_json::Value = serde_json::from_str(&st[0].1).unwrap();
    assert_eq!(tomb, serde_json::json!({"d": 1, "v": 7}));

    // The first message, deleted: the whole stream is rewritten from seq 1.
    let mid = after;
    let del = detail(EntryKind::Delete, 1);
    assert_eq!(
        commit(&mut log, &epoch, a, "", Some(&del)).await.unwrap(),
        8
    );
    let after = stream(&redis, &keys.log("general"));
    assert_eq!(after.len(), 8);
    assert_eq!(after[0].0, "1-0");
    assert_eq!(field(&after[0], "b"), Some(b"".as_slice()));
    assert_eq!(&after[1..7], &mid[1..7]);
    let read = log.read_after("general", 0, 100).await.unwrap();
    assert_eq!(
        read.entries.iter().map(show).collect::<Vec<_>>(),
        [
            "1: deleted",
            "2:keep me",
            "3: deleted",
            "4:edit>3",
            "5:after",
            "6:still here",
            "7:delete>3",
            "8:delete>1",
        ]
    );
    // The stream goes on.
    assert_eq!(commit(&mut log, &epoch, b, "next", None).await.unwrap(), 9);
    assert_eq!(stream(&redis, &keys.log("general")).len(), 9);
}

#[tokio::test]
async fn an_erase_in_a_trimmed_stream_drops_the_states_the_stream_no_longer_has() {
    let redis = RedisServer::start();
    let options = chat_redis::Options {
        window: 5,
        ..chat_redis::Options::default()
    };
    let mut log = redis.log_with(options).await;
    let epoch = log.cluster_epoch().await.unwrap();
    let keys = log.keys().clone();
    commit(&mut log, &epoch, "alice", "old-secret", None)
        .await
        .unwrap(); // 1
    let edit = detail(EntryKind::Edit, 1);
    commit(&mut log, &epoch, "alice", "old-secret-edited", Some(&edit))
        .await
        .unwrap(); // 2
    for i in 0..300 {
        commit(&mut log, &epoch, "bob", &format!("filler {i}"), None)
            .await
            .unwrap();
    }
    commit(&mut log, &epoch, "alice", "new-secret", None)
        .await
        .unwrap(); // 303
    let first = stream(&redis, &keys.log("general"));
    assert!(first[0].0 != "1-0", "the stream was trimmed");
    commit(&mut log, &epoch, "alice", "", Some(&erase()))
        .await
        .unwrap();
    for (_, v) in states(&redis, &keys.state("general")) {
        assert!(!v.contains("secret"), "{v}");
    }
    for e in stream(&redis, &keys.log("general")) {
        for (_, v) in &e.1 {
            assert!(!contains(v, "secret"), "{e:?}");
        }
    }
}
