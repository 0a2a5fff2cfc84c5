//! Line formats of the script-friendly modes (`tail`, `history`, the plain stdin mode).

use chat_core::protocol::{Message, format_ts};
use chrono::{DateTime, Local, Utc};

use crate::sanitize::{escape, json_string};

/// `HH:MM:SS` in the local time zone.
#[must_use]
pub fn clock(ts: &DateTime<Utc>) -> String {
    ts.with_timezone(&Local).format("%H:%M:%S").to_string()
}

/// `HH:MM:SS <user> body`, escaped: one line whatever the body holds.
#[must_use]
pub fn plain(msg: &Message) -> String {
    format!(
        "{} <{}> {}",
        clock(&msg.ts),
        escape(msg.user.as_str()),
        escape(&msg.body)
    )
}

/// `HH:MM:SS [room] <user> body`, for output that mixes rooms.
#[must_use]
pub fn plain_in_room(msg: &Message) -> String {
    format!(
        "{} [{}] <{}> {}",
        clock(&msg.ts),
        escape(msg.room.as_str()),
        escape(msg.user.as_str()),
        escape(&msg.body)
    )
}

/// One JSON object on one line: `room`, `seq`, `ts` (RFC 3339), `user`, `body`, and
/// `client_id` when the author sent one. Valid JSON and terminal-safe for any input.
#[must_use]
pub fn json(msg: &Message) -> String {
    let mut line = format!(
        "{{\"room\":{},\"seq\":{},\"ts\":{},\"user\":{},\"body\":{}",
        json_string(msg.room.as_str()),
        msg.seq.0,
        json_string(&format_ts(&msg.ts)),
        json_string(msg.user.as_str()),
        json_string(&msg.body),
    );
    if let Some(id) = &msg.client_id {
        line.push_str(",\"client_id\":");
        line.push_str(&json_string(id));
    }
    line.push('}');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::{RoomName, Seq, UserName};
    use chrono::TimeZone;

    fn message(body: &str) -> Message {
        Message {
            room: RoomName::parse("general", 64, 32).unwrap(),
            seq: Seq(7),
            ts: Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
            user: UserName::parse("bob", 32).unwrap(),
            body: body.into(),
            client_id: Some("c-1".into()),
        }
    }

    #[test]
    fn json_lines_parse_back_to_the_message() {
        let msg = message("hi \"there\"\n\x1b[2J\u{202e}");
        let line = json(&msg);
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["room"], "general");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["ts"], "2026-01-02T03:04:05.000Z");
        assert_eq!(v["user"], "bob");
        assert_eq!(v["body"], "hi \"there\"\n\x1b[2J\u{202e}");
        assert_eq!(v["client_id"], "c-1");
    }

    #[test]
    fn plain_lines_are_one_line() {
        let line = plain(&message("a\nfake <admin> line"));
        assert!(line.ends_with(" <bob> a\\nfake <admin> line"), "{line}");
        assert_eq!(line.len(), "HH:MM:SS".len() + line[8..].len());
        assert!(line[..8].chars().all(|c| c.is_ascii_digit() || c == ':'));
    }
}
