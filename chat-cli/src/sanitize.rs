//! Text from the network never reaches the terminal raw.
//!
//! Names, room names, bodies and error messages all come from other people (or from a
//! server that may not be ours). Written to a terminal as they are, an `ESC [ 2J` would
//! clear the screen, an OSC 52 sequence would write the clipboard, a `\r` would let a
//! message overwrite its own author, and a bidi override would make text read backwards.
//! So every character that a terminal acts on instead of printing, and every invisible
//! formatting character, is shown in a visible escaped form instead: `\x1b`, `\r`,
//! `\u{9b}`, `\u{202e}`.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether a character must not be written to a terminal as it is: C0 and C1 control
/// characters and DEL, bidi controls, zero-width and other invisible format characters,
/// and the Unicode line and paragraph separators.
#[must_use]
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || chat_core::is_invisible(c)
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{FFF9}'..='\u{FFFB}')
}

/// The text with every unsafe character escaped (`\n`, `\r`, `\t`, `\x1b`, `\u{202e}`).
/// Safe to print on one line.
#[must_use]
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

/// The text split at its line breaks, each line escaped: for displays that show a
/// multi-line message as several lines. `\r\n` counts as one break; a lone `\r` is
/// escaped, never obeyed.
#[must_use]
pub fn escape_lines(text: &str) -> Vec<Cow<'_, str>> {
    text.split('\n')
        .map(|line| escape(line.strip_suffix('\r').unwrap_or(line)))
        .collect()
}

fn push_escaped(out: &mut String, c: char) {
    if !is_unsafe(c) {
        out.push(c);
        return;
    }
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x80 => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

/// A JSON string literal for `text` that is also safe on a terminal: besides what JSON
/// requires, every unsafe character (C1 controls, bidi and invisible characters, …) is
/// written as a `\uXXXX` escape. Any JSON parser reads back exactly `text`.
#[must_use]
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe(c) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_untouched() {
        let text = "héllo, wörld — 你好 🎉 \\x1b is just text";
        assert!(matches!(escape(text), Cow::Borrowed(_)));
    }

    #[test]
    fn controls_and_invisible_characters_are_escaped_visibly() {
        assert_eq!(escape("a\x1b[2Jb"), "a\\x1b[2Jb");
        assert_eq!(escape("bell\x07\x08\x7f"), "bell\\x07\\x08\\x7f");
        assert_eq!(escape("over\rwrite\nnext\tt"), "over\\rwrite\\nnext\\tt");
        assert_eq!(escape("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(escape("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(
            escape("zero\u{200b}width\u{feff}"),
            "zero\\u{200b}width\\u{feff}"
        );
        assert_eq!(escape("tag\u{e0041}"), "tag\\u{e0041}");
        assert_eq!(escape("sep\u{2028}"), "sep\\u{2028}");
    }

    #[test]
    fn lines_are_split_and_each_escaped() {
        assert_eq!(
            escape_lines("one\r\ntwo\x1b\nthree\rx"),
            ["one", "two\\x1b", "three\\rx"]
        );
    }

    #[test]
    fn json_strings_round_trip_and_hold_no_raw_controls() {
        let nasty = "q\"b\\s\n\r\t\x00\x1b]52;c;aGk=\x07\u{9b}\u{85}\u{202e}\u{200b}\u{e0041}é🎉";
        let json = json_string(nasty);
        assert!(
            !json.chars().any(|c| c.is_control() || is_unsafe(c)),
            "{json}"
        );
        let back: String = serde_json::from_str(&json).unwrap();
        assert_eq!(back, nasty);
    }
}
