//! Line formats of the script-friendly modes (`tail`, `history`, the plain stdin mode).

use chat_core::protocol::{Message, format_ts};
use chrono::{DateTime, Local, Utc};

use crate::changes;
use crate::sanitize::{escape, json_string};

/// `HH:MM:SS` in the local time zone.
#[must_use]
pub fn clock(ts: &DateTime<Utc>) -> String {
    ts.with_timezone(&Local).format("%H:%M:%S").to_string()
}

/// `HH:MM:SS <user> body`, escaped: one line whatever the body holds. A reply starts
/// with `↪#SEQ`, an edited message ends with `(edited)`, a deleted one reads
/// `(deleted)`, reactions follow as `[👍 alice, bob]`; a change entry reads
/// `HH:MM:SS <user> edited #SEQ: text` (or `deleted #SEQ`, `reacted 👍 to #SEQ`, `took
/// back 👍 from #SEQ`).
#[must_use]
pub fn plain(msg: &Message) -> String {
    format!(
        "{} <{}> {}",
        clock(&msg.ts),
        escape(msg.user.as_str()),
        entry_text(msg)
    )
}

/// `HH:MM:SS [room] <user> body`, for output that mixes rooms (the rest as [`plain`]).
#[must_use]
pub fn plain_in_room(msg: &Message) -> String {
    format!(
        "{} [{}] <{}> {}",
        clock(&msg.ts),
        escape(msg.room.as_str()),
        escape(msg.user.as_str()),
        entry_text(msg)
    )
}

/// What [`plain`] shows after the author.
fn entry_text(msg: &Message) -> String {
    if let Some(change) = changes::change_text(msg) {
        return change;
    }
    let mut text = String::new();
    if let Some(seq) = msg.reply_to {
        text.push_str(&format!("↪#{seq} "));
    }
    text.push_str(&changes::body_text(msg));
    let reactions = changes::reactions_text(msg);
    if !reactions.is_empty() {
        text.push(' ');
        text.push_str(&reactions);
    }
    text
}

/// One JSON object on one line: `room`, `seq`, `ts` (RFC 3339), `user`, `body`, and
/// `client_id` when the author sent one; `reply_to`, `edited_at`, `deleted` and
/// `reactions` (`[{"emoji":…,"users":[…]}]`) when the message has them; a change entry
/// has `kind` (`edit`, `delete`, `react`), `target`, and `emoji` and `on` for a
/// reaction. Valid JSON and terminal-safe for any input.
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
    if !msg.kind.is_message() {
        line.push_str(&format!(",\"kind\":{}", json_string(msg.kind.as_str())));
    }
    if let Some(target) = msg.target {
        line.push_str(&format!(",\"target\":{}", target.0));
    }
    if let Some(emoji) = &msg.emoji {
        line.push_str(&format!(",\"emoji\":{}", json_string(emoji)));
    }
    if let Some(on) = msg.on {
        line.push_str(&format!(",\"on\":{on}"));
    }
    if let Some(seq) = msg.reply_to {
        line.push_str(&format!(",\"reply_to\":{}", seq.0));
    }
    if let Some(at) = &msg.edited_at {
        line.push_str(&format!(",\"edited_at\":{}", json_string(&format_ts(at))));
    }
    if msg.deleted {
        line.push_str(",\"deleted\":true");
    }
    if !msg.reactions.is_empty() {
        let list: Vec<String> = msg
            .reactions
            .iter()
            .map(|r| {
                let users: Vec<String> = r.users.iter().map(|u| json_string(u.as_str())).collect();
                format!(
                    "{{\"emoji\":{},\"users\":[{}]}}",
                    json_string(&r.emoji),
                    users.join(",")
                )
            })
            .collect();
        line.push_str(&format!(",\"reactions\":[{}]", list.join(",")));
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
    fn json_lines_carry_the_current_state() {
        let mut msg = message("hello");
        msg.reply_to = Some(Seq(3));
        msg.edited_at = Some(Utc.with_ymd_and_hms(2026, 1, 2, 3, 5, 0).unwrap());
        msg.reactions = vec![chat_core::protocol::Reaction {
            emoji: "👍".into(),
            users: vec![
                UserName::parse("ann", 32).unwrap(),
                UserName::parse("bob", 32).unwrap(),
            ],
        }];
        let v: serde_json::Value = serde_json::from_str(&json(&msg)).unwrap();
        assert_eq!(v["reply_to"], 3);
        assert_eq!(v["edited_at"], "2026-01-02T03:05:00.000Z");
        assert_eq!(
            v["reactions"],
            serde_json::json!([{"emoji":"👍","users":["ann","bob"]}])
        );
        assert!(v.get("deleted").is_none());
        let line = plain(&msg);
        assert!(
            line.ends_with(" <bob> ↪#3 hello (edited) [👍 ann, bob]"),
            "{line}"
        );
        msg.deleted = true;
        msg.body = "".into();
        msg.reactions.clear();
        msg.edited_at = None;
        let v: serde_json::Value = serde_json::from_str(&json(&msg)).unwrap();
        assert_eq!(v["deleted"], true);
        assert!(plain(&msg).ends_with(" <bob> ↪#3 (deleted)"));
    }

    #[test]
    fn plain_lines_are_one_line() {
        let line = plain(&message("a\nfake <admin> line"));
        assert!(line.ends_with(" <bob> a\\nfake <admin> line"), "{line}");
        assert_eq!(line.len(), "HH:MM:SS".len() + line[8..].len());
        assert!(line[..8].chars().all(|c| c.is_ascii_digit() || c == ':'));
    }
}
