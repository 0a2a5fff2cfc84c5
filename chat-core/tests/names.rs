//! The name rules, pinned by a corpus shared with the browser page.
//!
//! `tests/data/names.json` lists inputs (ASCII, accents in NFC and NFD, Turkish ı and İ,
//! ß and ẞ, Greek sigma, fullwidth letters, zero-width and bidi controls, confusables,
//! whitespace, reserved characters, direct rooms, lengths). This test runs each through
//! [`UserName::parse`], [`UserName::key`], [`RoomName::parse`] and [`fold`] with the
//! default limits, and compares the results with `tests/data/names.expected.json`. The
//! browser test `e2e/tests/11-names.test.mjs` runs the same inputs through the page's
//! `names.js` and compares with the same file, so a change of either side's rule fails
//! one of them. After a deliberate rule change, regenerate the file with
//! `UPDATE_EXPECTED=1 cargo test -p chat-core --test names` and review its diff.

use std::path::PathBuf;

use chat_core::fold;
use chat_core::{Config, NameError, RoomName, UserName};
use serde_json::{Value, json};

fn data(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("data")
        .join(file)
}

fn error(e: &NameError) -> Value {
    match e {
        NameError::Empty => json!({ "error": "empty" }),
        NameError::TooLong { max } => json!({ "error": "too_long", "max": max }),
        NameError::BadChar(c) => json!({ "error": "bad_char", "char": c.to_string() }),
        NameError::BadDirect => json!({ "error": "bad_direct" }),
        other => {
            panic!("a new kind of name error: add it to the corpus and to names.js: {other:?}")
        }
    }
}

/// JSON with every non-ASCII character escaped, so invisible characters stay visible in
/// the file and in its diffs.
fn ascii_json(value: &Value) -> String {
    let text = value.to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() && !c.is_ascii_control() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[test]
fn the_corpus_gives_the_expected_names_keys_and_errors() {
    let limits = Config::default().limits();
    let corpus: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(data("names.json")).expect("corpus"))
            .expect("corpus is JSON");
    let cases: Vec<Value> = corpus
        .iter()
        .map(|case| {
            let input = case["input"].as_str().expect("input is a string");
            let user = match UserName::parse(input, limits.max_name_chars) {
                Ok(name) => json!({ "name": name.as_str(), "key": name.key().as_str() }),
                Err(e) => error(&e),
            };
            let room = match RoomName::parse(input, limits.max_room_chars, limits.max_name_chars) {
                Ok(room) => json!({ "room": room.as_str() }),
                Err(e) => error(&e),
            };
            json!({ "input": input, "fold": fold(input), "user": user, "room": room })
        })
        .collect();
    // One case a line: a rule change shows as the lines of the inputs it changes.
    let lines: Vec<String> = cases
        .iter()
        .map(|c| format!("    {}", ascii_json(c)))
        .collect();
    let actual = format!(
        "{{\n  \"limits\": {},\n  \"cases\": [\n{}\n  ]\n}}\n",
        ascii_json(&json!({
            "max_name_chars": limits.max_name_chars,
            "max_room_chars": limits.max_room_chars,
        })),
        lines.join(",\n"),
    );
    let path = data("names.expected.json");
    if std::env::var_os("UPDATE_EXPECTED").is_some() {
        std::fs::write(&path, &actual).expect("writes the expected file");
        return;
    }
    let expected = std::fs::read_to_string(&path).expect("names.expected.json exists");
    if expected != actual {
        let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
        let first = e
            .iter()
            .zip(&a)
            .position(|(x, y)| x != y)
            .unwrap_or(e.len().min(a.len()));
        panic!(
            "the name rules changed (first difference at line {}):\n  expected: {}\n  actual:   {}\n\
             If this is deliberate, regenerate with UPDATE_EXPECTED=1, review the diff, and \
             make chat-axum/assets/names.js agree (e2e/tests/11-names.test.mjs).",
            first + 1,
            e.get(first).unwrap_or(&"<end>"),
            a.get(first).unwrap_or(&"<end>"),
        );
    }
}

#[test]
fn the_key_and_room_lookup_agree_with_parse() {
    // Every valid name's key is `fold` of what was typed, and every valid room is found by
    // `RoomName::key_of` from what was typed: one rule for the server and its clients.
    let limits = Config::default().limits();
    let corpus: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(data("names.json")).expect("corpus"))
            .expect("corpus is JSON");
    for case in &corpus {
        let input = case["input"].as_str().expect("input");
        if let Ok(name) = UserName::parse(input, limits.max_name_chars) {
            assert_eq!(name.key().as_str(), fold(input), "{input:?}");
        }
        if let Ok(room) = RoomName::parse(input, limits.max_room_chars, limits.max_name_chars) {
            assert_eq!(RoomName::key_of(input), Some(room), "{input:?}");
        }
    }
}

/// Every code point (surrogates excepted) through the character rules: which ones a
/// name refuses on their own (controls, whitespace, invisible and bidi characters, `@`,
/// `,`), as ranges, and what `fold` makes of each one it changes. Written to
/// `tests/data/names.chars.expected.json`, which `e2e/tests/11-names.test.mjs` checks
/// the page against code point by code point: the whole invisible list and the whole
/// case mapping, not only the samples of the corpus.
#[test]
fn every_code_point_is_refused_and_folded_as_expected() {
    let hex = |c: char| format!("{:x}", u32::from(c));
    let mut refused: Vec<(char, char)> = Vec::new();
    let mut folded: Vec<String> = Vec::new();
    for c in (0..=0x10_FFFF).filter_map(char::from_u32) {
        let s = c.to_string();
        if UserName::parse(&s, 32).is_err() {
            match refused.last_mut() {
                Some((_, end)) if u32::from(*end) + 1 == u32::from(c) => *end = c,
                _ => refused.push((c, c)),
            }
        }
        let f = fold(&s);
        if f != s {
            let to: Vec<String> = f.chars().map(hex).collect();
            folded.push(format!("{}:{}", hex(c), to.join(" ")));
        }
    }
    let refused: Vec<String> = refused
        .iter()
        .map(|(a, b)| format!("{}-{}", hex(*a), hex(*b)))
        .collect();
    let actual = format!(
        "{{\n  \"refused\": {},\n  \"folded\": {}\n}}\n",
        serde_json::to_string(&refused).expect("JSON"),
        serde_json::to_string(&folded).expect("JSON"),
    );
    let path = data("names.chars.expected.json");
    if std::env::var_os("UPDATE_EXPECTED").is_some() {
        std::fs::write(&path, &actual).expect("writes the expected file");
        return;
    }
    let expected = std::fs::read_to_string(&path).expect("names.chars.expected.json exists");
    assert!(
        expected == actual,
        "the character rules changed: regenerate with UPDATE_EXPECTED=1, review the diff, \
         and make chat-axum/assets/names.js agree"
    );
}
