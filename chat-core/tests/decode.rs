//! Hostile input: whatever bytes arrive, `protocol::decode` returns `Err` rather than
//! panicking, the server answers `bad_frame` to that session only, and everyone else
//! carries on.

mod common;

use chat_core::RequestId;
use chat_core::protocol::{self, ErrorCode, ServerFrame};
use chat_core::{Config, SessionId};
use common::{Sim, names, room};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{Value, json};

/// bob (1) in general, ready to show that he is unaffected.
fn with_bob(config: Config) -> Sim {
    let mut sim = Sim::with(config);
    sim.hello(1, "bob");
    sim.clear();
    sim
}

#[track_caller]
fn bob_unaffected(sim: &mut Sim) {
    sim.expect_nothing(1);
    sim.send(1, 77, "general", "still here");
    let frames = sim.take(1);
    assert!(
        matches!(
            &frames[..],
            [
                ServerFrame::Message(_),
                ServerFrame::Ack {
                    id: Some(RequestId(77)),
                    ..
                }
            ]
        ),
        "{frames:?}"
    );
    assert_eq!(sim.close_reason(1), None);
    sim.assert_no_violations();
}

/// Feeds `bytes` from a fresh welcomed session and checks it gets exactly one `bad_frame`.
#[track_caller]
fn assert_bad_frame(sim: &mut Sim, s: u64, bytes: &[u8]) -> String {
    assert!(
        protocol::decode(bytes).is_err(),
        "decoded: {:?}",
        String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
    );
    sim.hello(s, &format!("user{s}"));
    sim.take(s);
    sim.take(1);
    sim.say(s, bytes);
    let frames = sim.take(s);
    match &frames[..] {
        [ServerFrame::Error { code, message, .. }] => {
            assert_eq!(*code, ErrorCode::BadFrame);
            message.clone()
        }
        other => panic!("expected one bad_frame error, got {other:?}"),
    }
}

fn nested(depth: usize, open: &str, close: &str, inner: &str) -> String {
    format!("{}{}{}", open.repeat(depth), inner, close.repeat(depth))
}

#[test]
fn hostile_frames_are_bad_frames_and_never_panic() {
    let mut sim = with_bob(Config::default());
    let big = "A".repeat(1 << 20);
    let hostile: Vec<Vec<u8>> = vec![
        // Not JSON, or not one object.
        b"".to_vec(),
        b" ".to_vec(),
        b"garbage".to_vec(),
        b"{".to_vec(),
        b"null".to_vec(),
        b"42".to_vec(),
        b"\"hello\"".to_vec(),
        b"[]".to_vec(),
        br#"[{"type":"rooms"}]"#.to_vec(),
        br#"{"type":"rooms"}{"type":"rooms"}"#.to_vec(),
        br#"{"type":"rooms"} trailing"#.to_vec(),
        // Deep nesting, 10 000 levels, bare and inside an otherwise valid frame.
        nested(10_000, "[", "]", "1").into_bytes(),
        nested(10_000, r#"{"a":"#, "}", "1").into_bytes(),
        format!(
            r#"{{"type":"send","room":"general","body":{}}}"#,
            nested(10_000, "[", "]", "")
        )
        .into_bytes(),
        format!(
            r#"{{"type":"join","room":"general","extra":{}}}"#,
            nested(10_000, r#"{"a":"#, "}", "null")
        )
        .into_bytes(),
        // Huge strings where they do not belong.
        format!(r#"{{"type":"{big}"}}"#).into_bytes(),
        format!(r#"{{"type":"rooms","{big}":1}}"#).into_bytes(),
        format!(r#"{{"type":"rooms","id":"{big}"}}"#).into_bytes(),
        // Wrong types.
        br#"{"type":"hello","version":"1","name":"x"}"#.to_vec(),
        br#"{"type":"hello","version":1,"name":42}"#.to_vec(),
        br#"{"type":"send","room":"general","body":["a"]}"#.to_vec(),
        br#"{"type":"send","room":"general","body":null}"#.to_vec(),
        br#"{"type":"join","room":"general","since":-1}"#.to_vec(),
        br#"{"type":"join","room":"general","since":"5"}"#.to_vec(),
        br#"{"type":"rooms","id":1.5}"#.to_vec(),
        br#"{"type":"rooms","id":-1}"#.to_vec(),
        br#"{"type":"rooms","id":18446744073709551616}"#.to_vec(),
        br#"{"type":"rooms","id":1e400}"#.to_vec(),
        br#"{"type":"typing","room":"general","active":"yes"}"#.to_vec(),
        br#"{"type":7}"#.to_vec(),
        br#"{"type":null}"#.to_vec(),
        // Invalid UTF-8 and broken escapes.
        b"{\"type\":\"send\",\"room\":\"general\",\"body\":\"\xff\xfe\"}".to_vec(),
        b"\xef\xbb\xbf{\"type\":\"rooms\"}".to_vec(),
        br#"{"type":"send","room":"general","body":"\ud800"}"#.to_vec(),
        br#"{"type":"send","room":"general","body":"\x41"}"#.to_vec(),
        b"{\"type\":\"send\",\"room\":\"general\",\"body\":\"a\x00b\"}".to_vec(),
        // Unknown fields, unknown or missing type, duplicate fields.
        br#"{"type":"rooms","admin":true}"#.to_vec(),
        br#"{"type":"send","room":"general","body":"x","seq":5}"#.to_vec(),
        br#"{"type":"typing","room":"general","active":true,"id":3}"#.to_vec(),
        br#"{"type":"hello","version":1,"name":"x","rooms":[{"room":"a","extra":1}]}"#.to_vec(),
        br#"{"type":"kick","user":"bob"}"#.to_vec(),
        br#"{"type":"Send","room":"general","body":"x"}"#.to_vec(),
        br#"{"room":"general","body":"x"}"#.to_vec(),
        br#"{"type":"join","room":"a","room":"b"}"#.to_vec(),
        br#"{"type":"rooms","type":"rooms"}"#.to_vec(),
        // Missing required fields.
        br#"{"type":"send","room":"general"}"#.to_vec(),
        br#"{"type":"join"}"#.to_vec(),
        br#"{"type":"hello","name":"x"}"#.to_vec(),
    ];
    for (i, bytes) in hostile.iter().enumerate() {
        let s = 100 + i as u64;
        let message = assert_bad_frame(&mut sim, s, bytes);
        // The human message explains, but never echoes a megabyte back.
        assert!(
            message.len() <= 512,
            "frame {i}: {} byte message",
            message.len()
        );
        assert_eq!(sim.close_reason(s), None, "one bad frame does not close");
    }
    bob_unaffected(&mut sim);
    // No state was touched: general holds bob and the well-behaved greeters only.
    assert_eq!(sim.server.last_seq(&room("general")).unwrap().0, 1);
    assert_eq!(sim.server.room_count(), 1);
}

#[test]
fn the_request_id_is_echoed_when_it_can_be_read() {
    let mut sim = with_bob(Config::default());
    sim.hello(2, "alice");
    sim.take(2);
    sim.say(2, r#"{"type":"frobnicate","id":31}"#);
    sim.expect_error(2, ErrorCode::BadFrame, Some(31));
    sim.say(2, r#"{"type":"send","id":32,"room":"general","body":5}"#);
    sim.expect_error(2, ErrorCode::BadFrame, Some(32));
    sim.say(2, r#"{"type":"rooms","id":"33"}"#);
    sim.expect_error(2, ErrorCode::BadFrame, None);
}

#[test]
fn well_formed_but_oversized_fields_are_refused_by_the_rules_not_the_decoder() {
    let mut sim = with_bob(Config::default());
    sim.hello(2, "alice");
    sim.take(2);
    sim.take(1);
    let big = "b".repeat(1 << 20);
    sim.say(2, json!({"type":"send","id":1,"room":"general","body":big}));
    sim.expect_error(2, ErrorCode::BodyTooLarge, Some(1));
    sim.say(2, json!({"type":"join","id":2,"room":big}));
    sim.expect_error(2, ErrorCode::InvalidRoom, Some(2));
    sim.say(2, json!({"type":"send","id":3,"to":big,"body":"x"}));
    sim.expect_error(2, ErrorCode::InvalidName, Some(3));
    sim.connect(3);
    sim.say(3, json!({"type":"hello","id":4,"version":1,"name":big}));
    sim.expect_error(3, ErrorCode::InvalidName, Some(4));
    bob_unaffected(&mut sim);
}

#[test]
fn bad_frames_before_hello_are_bad_frames_too() {
    let mut sim = with_bob(Config::default());
    sim.connect(2);
    sim.say(2, "\u{0}\u{1}binary");
    sim.expect_error(2, ErrorCode::BadFrame, None);
    // It can still say hello afterwards.
    sim.say(2, json!({"type":"hello","version":1,"name":"alice"}));
    assert!(matches!(sim.take(2)[0], ServerFrame::Welcome { .. }));
}

// ---- generated input ----

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let keys = prop::sample::select(vec![
        "type",
        "id",
        "room",
        "body",
        "to",
        "name",
        "version",
        "token",
        "since",
        "before",
        "limit",
        "active",
        "rooms",
        "client_id",
        "x",
    ]);
    let types = prop::sample::select(vec![
        "hello", "join", "leave", "send", "history", "rooms", "members", "typing", "welcome",
        "bogus", "",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        (0u64..4).prop_map(|n| json!(n)),
        types.prop_map(|t| json!(t)),
        "\\PC{0,12}".prop_map(Value::String),
        Just(json!("general")),
    ];
    let value = leaf.prop_recursive(4, 32, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(keys.clone(), inner, 0..6).prop_map(|m| Value::Object(
                m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
            )),
        ]
    });
    // Mostly objects with a plausible type, sometimes anything at all.
    let keys = prop::sample::select(vec![
        "id",
        "room",
        "body",
        "to",
        "name",
        "version",
        "token",
        "since",
        "before",
        "limit",
        "active",
        "rooms",
        "client_id",
        "x",
    ]);
    let types = prop::sample::select(vec![
        "hello", "join", "leave", "send", "history", "rooms", "members", "typing", "bogus",
    ]);
    prop_oneof![
        3 => (types, prop::collection::btree_map(keys, value.clone(), 0..5)).prop_map(|(t, m)| {
            let mut obj: serde_json::Map<String, Value> =
                m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            obj.insert("type".into(), json!(t));
            Value::Object(obj)
        }),
        1 => value,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/decode.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic_and_only_concern_the_sender(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let decoded = protocol::decode(&bytes);
        let mut sim = with_bob(Config::default());
        sim.hello(2, "alice");
        sim.take(2);
        sim.take(1);
        sim.say(2, bytes.as_slice());
        if decoded.is_err() {
            let frames = sim.take(2);
            prop_assert!(
                matches!(&frames[..], [ServerFrame::Error { code: ErrorCode::BadFrame, .. }]),
                "{:?}", frames
            );
            prop_assert!(sim.take(1).is_empty());
        }
        bob_unaffected(&mut sim);
    }

    #[test]
    fn arbitrary_json_never_panics_and_never_disturbs_others(
        frames in prop::collection::vec(arbitrary_json(), 1..8),
    ) {
        let mut sim = with_bob(Config::default());
        sim.hello(2, "alice");
        sim.take(2);
        sim.take(1);
        for v in &frames {
            let bytes = serde_json::to_vec(v).unwrap();
            let decoded = protocol::decode(&bytes);
            let before = sim.peek(2).len();
            sim.say(2, bytes.as_slice());
            if decoded.is_err() {
                let got = &sim.peek(2)[before..];
                prop_assert!(
                    matches!(got, [ServerFrame::Error { code: ErrorCode::BadFrame, .. }]),
                    "{} -> {:?}", v, got
                );
            }
            // Never a frame to the closed, never a close of anybody but alice.
            prop_assert!(sim.violations.is_empty(), "{:?}", sim.violations);
            prop_assert!(sim.close_reason(1).is_none());
        }
        // Whatever alice did, bob can still talk, and the room still lists him.
        sim.take(1);
        sim.send(1, 77, "general", "still here");
        let got = sim.take(1);
        prop_assert!(
            got.iter().any(|f| matches!(f, ServerFrame::Ack { id: Some(RequestId(77)), .. })),
            "{:?}", got
        );
        let members = sim.server.members(&room("general")).unwrap();
        prop_assert!(names(&members).contains(&"bob".to_owned()));
        prop_assert_eq!(sim.server.session_rooms(SessionId(1)).unwrap(), vec![room("general")]);
    }
}

/// Every input kept under `fuzz/regressions/protocol_decode/` (crashes the fuzzer once
/// found, and seeds) decodes to a frame or an error, on stable, as a normal test.
#[test]
fn fuzz_regressions_decode_without_panicking() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions/protocol_decode");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        let bytes = std::fs::read(&path).expect("readable");
        eprintln!("{}", path.display());
        let _ = protocol::decode(&bytes);
        n += 1;
    }
    assert!(n > 0, "no inputs in {}", dir.display());
}
