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

/// How a moderation event reads, escaped, with the room it belongs to: "bob was kicked
/// by carol: spam", "topic: …", "slow mode: one message every 30 s", "done: kick bob".
#[must_use]
pub fn moderation_notice(
    event: &chat_core::client::ClientEvent,
) -> Option<(chat_core::RoomName, String)> {
    use chat_core::client::ClientEvent;
    use chat_core::protocol::ModAction;
    let by = |by: &Option<chat_core::UserName>| match by {
        Some(u) => format!(" by {}", escape(u.as_str())),
        None => String::new(),
    };
    Some(match event {
        ClientEvent::Moderated {
            room,
            user,
            action,
            reason,
            minutes,
            role,
            by: who,
        } => {
            let what = match action {
                ModAction::Kick => "was kicked".to_owned(),
                ModAction::Ban => "was banned".to_owned(),
                ModAction::Unban => "was unbanned".to_owned(),
                ModAction::Mute => "was muted".to_owned(),
                ModAction::Unmute => "was unmuted".to_owned(),
                ModAction::SetRole => format!(
                    "is now {}",
                    role.map_or("member", chat_core::protocol::Role::as_str)
                ),
                _ => "was moderated".to_owned(),
            };
            let length = minutes.map_or(String::new(), |m| format!(" for {m} min"));
            let why = reason
                .as_deref()
                .map_or(String::new(), |r| format!(": {}", escape(r)));
            let text = format!("{} {what}{length}{}{why}", escape(user.as_str()), by(who));
            (room.clone(), text)
        }
        ClientEvent::Topic {
            room,
            topic,
            by: who,
        } => {
            let text = if topic.is_empty() {
                format!("topic cleared{}", by(who))
            } else {
                format!("topic: {}{}", escape(topic), by(who))
            };
            (room.clone(), text)
        }
        ClientEvent::SlowMode {
            room,
            seconds,
            by: who,
        } => {
            let text = if *seconds == 0 {
                format!("slow mode off{}", by(who))
            } else {
                format!("slow mode: one message every {seconds} s{}", by(who))
            };
            (room.clone(), text)
        }
        ClientEvent::Done {
            room, action, user, ..
        } => {
            let user = user
                .as_ref()
                .map_or(String::new(), |u| format!(" {}", escape(u.as_str())));
            (room.clone(), format!("done: {}{user}", action.as_str()))
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::{RoomName, Seq, UserName};
    use chrono::TimeZone;

    fn message(body: &str) -> Message {
        Message::new(
            RoomName::parse("general", 64, 32).unwrap(),
            Seq(7),
            Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
            UserName::parse("bob", 32).unwrap(),
            body.into(),
            Some("c-1".into()),
        )
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
