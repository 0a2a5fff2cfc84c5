//! Edits, deletes, reactions and replies (docs/PROTOCOL.md, "Messages live on"): what
//! the user asked for, handed to [`chat_core::client::Client`]'s commands (which send it
//! with a client id, and again after a reconnect until it is acknowledged), and how a
//! message in its current state reads on one line.

use chat_core::client::{Client, MessageChange, Target};
use chat_core::protocol::{EntryKind, Message};
use chat_core::{ClientMsgId, Seq};

use crate::sanitize::escape;

/// Something done to a message of a room (an edit, a delete, a reaction), or a reply to
/// one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A change to a message (the client's [`MessageChange`]).
    Message(MessageChange),
    /// A new message answering `reply_to`.
    Reply {
        /// The message answered.
        reply_to: Seq,
        /// The text.
        body: String,
    },
}

impl Change {
    /// Hands it to the client for `room`; a reply in a direct room goes to
    /// `direct_peer`, the other user. Returns its client id, echoed in the `ack`.
    pub fn post(&self, client: &mut Client, room: &str, direct_peer: Option<&str>) -> ClientMsgId {
        match self {
            Change::Message(change) => client.change(room, change.clone()),
            Change::Reply { reply_to, body } => {
                let target = match direct_peer {
                    Some(user) => Target::User(user.to_owned()),
                    None => Target::Room(room.to_owned()),
                };
                client.reply(target, *reply_to, body)
            }
        }
    }

    /// What it is, for an error message: "edit of #4", "reply to #4".
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Change::Message(change) => describe(change),
            Change::Reply { reply_to, .. } => format!("reply to #{reply_to}"),
        }
    }
}

/// What a change the client gave up or the server refused was, for an error message:
/// "edit of #4".
#[must_use]
pub fn describe(change: &MessageChange) -> String {
    match change {
        MessageChange::Edit { seq, .. } => format!("edit of #{seq}"),
        MessageChange::Delete { seq } => format!("delete of #{seq}"),
        MessageChange::React { seq, on: true, .. } => format!("reaction to #{seq}"),
        MessageChange::React { seq, on: false, .. } => {
            format!("taking back a reaction to #{seq}")
        }
        other => format!("change of #{}", other.seq()),
    }
}

/// The body of a message as shown on one line, escaped: "(deleted)" for a tombstone, the
/// text with " (edited)" after an edit.
#[must_use]
pub fn body_text(msg: &Message) -> String {
    if msg.deleted {
        return "(deleted)".to_owned();
    }
    let mut text = escape(&msg.body).into_owned();
    if msg.edited_at.is_some() {
        text.push_str(" (edited)");
    }
    text
}

/// A message's reactions, escaped: `[👍 alice, bob] [🎉 carol]` (empty when none).
#[must_use]
pub fn reactions_text(msg: &Message) -> String {
    msg.reactions
        .iter()
        .map(|r| {
            let users: Vec<String> = r
                .users
                .iter()
                .map(|u| escape(u.as_str()).into_owned())
                .collect();
            format!("[{} {}]", escape(&r.emoji), users.join(", "))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A change entry as a line (without time and author): "edited #4: new text",
/// "deleted #4", "reacted 👍 to #4", "took back 👍 from #4". `None` for a message.
#[must_use]
pub fn change_text(entry: &Message) -> Option<String> {
    let target = entry
        .target
        .map_or_else(|| "?".to_owned(), |t| format!("#{t}"));
    Some(match entry.kind {
        EntryKind::Message => return None,
        EntryKind::Edit => format!("edited {target}: {}", escape(&entry.body)),
        EntryKind::Delete => format!("deleted {target}"),
        EntryKind::React => {
            let emoji = escape(entry.emoji.as_deref().unwrap_or("?")).into_owned();
            if entry.on == Some(false) {
                format!("took back {emoji} from {target}")
            } else {
                format!("reacted {emoji} to {target}")
            }
        }
        _ => format!("changed {target}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_becomes_the_clients_frame_naming_the_room_and_message() {
        use chat_core::client::{ClientConfig, ClientOutput};
        let mut client = Client::new(ClientConfig::new("alice", "c"));
        let cid = Change::Message(MessageChange::React {
            seq: Seq(4),
            emoji: "👍".into(),
            on: false,
        })
        .post(&mut client, "general", None);
        let reply = Change::Reply {
            reply_to: Seq(2),
            body: "yes".into(),
        }
        .post(&mut client, "@alice,bob", Some("bob"));
        assert_ne!(cid, reply);
        assert_eq!(client.pending_sends(), 2);
        // Offline: both wait for the welcome.
        assert!(client.poll_output().is_none());
        client.connected();
        let _hello = client.poll_output();
        client.handle_frame(
            serde_json::from_value(serde_json::json!({"type":"welcome","version":2,"session":1,
                "user":"alice","epoch":"e","limits":serde_json::to_value(
                    chat_core::Config::default().limits()).unwrap()}))
            .unwrap(),
        );
        let frames: Vec<serde_json::Value> = std::iter::from_fn(|| client.poll_output())
            .filter_map(|o| match o {
                ClientOutput::Transmit(f) => Some(serde_json::to_value(&f).unwrap()),
                ClientOutput::Event(_) => None,
            })
            .collect();
        assert_eq!(frames[0]["type"], "react");
        assert_eq!(frames[0]["room"], "general");
        assert_eq!(frames[0]["seq"], 4);
        assert_eq!(frames[0]["on"], false);
        assert_eq!(frames[0]["client_id"], cid.to_string());
        assert_eq!(frames[1]["type"], "send");
        assert_eq!(frames[1]["to"], "bob");
        assert_eq!(frames[1]["reply_to"], 2);
    }

    #[test]
    fn a_refused_change_says_what_it_was() {
        let change = MessageChange::React {
            seq: Seq(3),
            emoji: "🎉".into(),
            on: false,
        };
        assert_eq!(describe(&change), "taking back a reaction to #3");
    }
}
