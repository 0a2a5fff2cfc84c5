//! Edits, deletes, reactions and replies (docs/PROTOCOL.md, "Messages live on"): the
//! frames for them, and how a message in its current state reads on one line.
//!
//! [`chat_core::client::Client`] has no commands for these frames, so the CLI writes
//! them itself ([`crate::session::Session::transmit`]) with request ids from
//! [`RawIds`], a range the client's own numbering never reaches. The server's answer
//! still comes through the client: an [`Acked`](chat_core::client::ClientEvent::Acked)
//! with the frame's `client_id`, or a [`Rejected`](chat_core::client::ClientEvent::Rejected)
//! with its request id.

use chat_core::protocol::{
    ClientFrame, DeleteRequest, EditRequest, EntryKind, Message, ReactRequest, SendRequest,
};
use chat_core::{ClientMsgId, RequestId, Seq};

use crate::sanitize::escape;

/// The first request id of [`RawIds`]: far above any id a `Client` hands out.
const RAW_ID_BASE: u64 = 1 << 48;

/// Request ids for frames the CLI writes itself.
#[derive(Debug, Clone)]
pub struct RawIds {
    next: u64,
    prefix: String,
}

impl Default for RawIds {
    fn default() -> Self {
        RawIds::new()
    }
}

impl RawIds {
    /// Ids from 2^48 on, and client ids with a random prefix.
    #[must_use]
    pub fn new() -> RawIds {
        RawIds {
            next: RAW_ID_BASE,
            prefix: format!(
                "cli-{:016x}",
                getrandom::u64().unwrap_or_else(|_| u64::from(std::process::id()))
            ),
        }
    }

    /// A fresh request id and client id.
    pub fn fresh(&mut self) -> (RequestId, ClientMsgId) {
        let n = self.next;
        self.next += 1;
        (
            RequestId(n),
            ClientMsgId::from(format!("{}-{n}", self.prefix)),
        )
    }
}

/// Something done to a message of a room, or a reply to one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new text for one of the user's own messages.
    Edit {
        /// The message.
        seq: Seq,
        /// The new text.
        body: String,
    },
    /// Delete a message (one's own; any as the room's moderator or owner).
    Delete {
        /// The message.
        seq: Seq,
    },
    /// Add (`on`) or take back the user's reaction with `emoji`.
    React {
        /// The message.
        seq: Seq,
        /// One emoji.
        emoji: String,
        /// Add or take back.
        on: bool,
    },
    /// A new message answering `reply_to`.
    Reply {
        /// The message answered.
        reply_to: Seq,
        /// The text.
        body: String,
    },
}

impl Change {
    /// The frame for `room`, with this request id and client id (which makes it
    /// idempotent: sent again after a reconnect, it is done once).
    #[must_use]
    pub fn frame(&self, room: &str, id: RequestId, client_id: ClientMsgId) -> ClientFrame {
        let room = room.to_owned();
        let (id, client_id) = (Some(id), Some(client_id));
        match self {
            Change::Edit { seq, body } => ClientFrame::Edit(EditRequest {
                id,
                room,
                seq: *seq,
                body: body.clone(),
                client_id,
            }),
            Change::Delete { seq } => ClientFrame::Delete(DeleteRequest {
                id,
                room,
                seq: *seq,
                client_id,
            }),
            Change::React { seq, emoji, on } => ClientFrame::React(ReactRequest {
                id,
                room,
                seq: *seq,
                emoji: emoji.clone(),
                on: *on,
                client_id,
            }),
            Change::Reply { reply_to, body } => ClientFrame::Send(SendRequest {
                id,
                room: Some(room),
                to: None,
                body: body.clone(),
                client_id,
                reply_to: Some(*reply_to),
            }),
        }
    }

    /// What it is, for an error message: "edit of #4", "reply to #4".
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Change::Edit { seq, .. } => format!("edit of #{seq}"),
            Change::Delete { seq } => format!("delete of #{seq}"),
            Change::React { seq, on: true, .. } => format!("reaction to #{seq}"),
            Change::React { seq, on: false, .. } => format!("taking back a reaction to #{seq}"),
            Change::Reply { reply_to, .. } => format!("reply to #{reply_to}"),
        }
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
    fn raw_ids_never_meet_the_clients_and_client_ids_differ() {
        let mut ids = RawIds::new();
        let (a, ca) = ids.fresh();
        let (b, cb) = ids.fresh();
        assert!(a.0 >= RAW_ID_BASE && b.0 == a.0 + 1);
        assert_ne!(ca, cb);
    }

    #[test]
    fn frames_name_the_room_and_message() {
        let (id, cid) = (RequestId(9), ClientMsgId::from("c"));
        let frame = Change::React {
            seq: Seq(4),
            emoji: "👍".into(),
            on: false,
        }
        .frame("general", id, cid.clone());
        let json = serde_json::to_value(&frame).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type":"react","id":9,"room":"general","seq":4,"emoji":"👍","on":false,"client_id":"c"})
        );
        let reply = Change::Reply {
            reply_to: Seq(2),
            body: "yes".into(),
        }
        .frame("general", id, cid);
        let json = serde_json::to_value(&reply).unwrap();
        assert_eq!(json["type"], "send");
        assert_eq!(json["reply_to"], 2);
    }
}
