//! Key and channel names. Every key of one room carries the room's hash tag `{R}`, so a
//! script over a room's keys touches one slot (Redis Cluster, Valkey).

/// The names of everything this crate keeps in Redis, under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Names under `prefix` (`chat` by default).
    #[must_use]
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// The room's hash tag: `{R}` with `{`, `}`, `%`, and every byte outside printable
    /// ASCII percent-escaped, so that no room name can end the tag early or make two
    /// rooms share keys.
    #[must_use]
    pub fn tag(room: &str) -> String {
        let mut out = String::with_capacity(room.len() + 2);
        out.push('{');
        for &b in room.as_bytes() {
            if (0x21..=0x7e).contains(&b) && !matches!(b, b'{' | b'}' | b'%') {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out.push('}');
        out
    }

    /// The room's meta hash: `epoch`, `top`, `ts`, `pv`.
    #[must_use]
    pub fn meta(&self, room: &str) -> String {
        format!("{}:{}:meta", self.prefix, Self::tag(room))
    }

    /// The room's message stream.
    #[must_use]
    pub fn log(&self, room: &str) -> String {
        format!("{}:{}:log", self.prefix, Self::tag(room))
    }

    /// The room's state hash: message seq → the current state of a message that was
    /// changed (edited, deleted, reacted to), updated by the change's commit.
    #[must_use]
    pub fn state(&self, room: &str) -> String {
        format!("{}:{}:state", self.prefix, Self::tag(room))
    }

    /// The room's own retention policy: a hash with `age` (ms, or empty: no age limit)
    /// and `count` (or empty); missing: the servers' default (`Config::retention`).
    #[must_use]
    pub fn retention(&self, room: &str) -> String {
        format!("{}:{}:retain", self.prefix, Self::tag(room))
    }

    /// The sweeper's lease: the node that sweeps the rooms this period.
    #[must_use]
    pub fn sweep(&self) -> String {
        format!("{}:sweep", self.prefix)
    }

    /// The pattern every room's stream matches (`SCAN MATCH`); [`Keys::room_of_log`]
    /// tells a room's stream from other keys it matches.
    #[must_use]
    pub fn log_pattern(&self) -> String {
        let mut p = String::with_capacity(self.prefix.len() + 8);
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                p.push('\\');
            }
            p.push(c);
        }
        p.push_str(":{*}:log");
        p
    }

    /// The room whose stream `key` is ([`Keys::log`] backwards), if it is one.
    #[must_use]
    pub fn room_of_log(&self, key: &str) -> Option<String> {
        let tag = key
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":{")?
            .strip_suffix("}:log")?;
        if tag.contains(['{', '}']) {
            return None;
        }
        let mut out = Vec::with_capacity(tag.len());
        let mut bytes = tag.bytes();
        while let Some(b) = bytes.next() {
            if b == b'%' {
                let hex = [bytes.next()?, bytes.next()?];
                let hex = std::str::from_utf8(&hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
            } else {
                out.push(b);
            }
        }
        let room = String::from_utf8(out).ok()?;
        (Self::tag(&room) == format!("{{{tag}}}")).then_some(room)
    }

    /// The idempotency key of one client message id of one user in the room. The user
    /// and id are length-prefixed, so no pair of them can name another pair's key.
    #[must_use]
    pub fn idempotency(&self, room: &str, user: &str, client_id: &str) -> String {
        format!(
            "{}:{}:idem:{}:{user}:{client_id}",
            self.prefix,
            Self::tag(room),
            user.len()
        )
    }

    /// The room's users hash: user → sessions over all nodes.
    #[must_use]
    pub fn users(&self, room: &str) -> String {
        format!("{}:{}:users", self.prefix, Self::tag(room))
    }

    /// One node's share of the room's presence: user → its sessions there.
    #[must_use]
    pub fn on_node(&self, room: &str, node: &str) -> String {
        format!("{}:{}:on:{node}", self.prefix, Self::tag(room))
    }

    /// The room's moderation state: roles, bans and mutes with their ends, topic and
    /// slow mode (docs/CLUSTER.md, "Moderation state").
    #[must_use]
    pub fn moderation(&self, room: &str) -> String {
        format!("{}:{}:mod", self.prefix, Self::tag(room))
    }

    /// The room's doorbell channel.
    #[must_use]
    pub fn channel(&self, room: &str) -> String {
        format!("{}:{}", self.prefix, Self::tag(room))
    }

    /// A node's own probe channel (its subscription's liveness check).
    #[must_use]
    pub fn probe(&self, node: &str) -> String {
        format!("{}:probe:{node}", self.prefix)
    }

    /// The channel every node listens to for the host's and moderators' actions that
    /// cross servers (revocations, moderation; docs/CLUSTER.md).
    #[must_use]
    pub fn control(&self) -> String {
        format!("{}:control", self.prefix)
    }

    /// The rooms where a node has presence.
    #[must_use]
    pub fn node_rooms(&self, node: &str) -> String {
        format!("{}:node:{node}:rooms", self.prefix)
    }

    /// Node → the deadline of its heartbeat (ms since 1970).
    #[must_use]
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// The cluster epoch.
    #[must_use]
    pub fn epoch(&self) -> String {
        format!("{}:epoch", self.prefix)
    }

    /// A user's read markers: room → the last seq the user read there, under the
    /// user's key (folded name) as its own hash tag.
    #[must_use]
    pub fn reads(&self, user_key: &str) -> String {
        format!("{}:reads:{}", self.prefix, Self::tag(user_key))
    }

    /// The rooms a user wrote in (posted or changed anything: messages, edits, deletes,
    /// reactions), under the user's key (folded name) as its own hash tag: what
    /// erasure (`Hub::erase_user`) reads to find every room of the user.
    #[must_use]
    pub fn wrote(&self, user_key: &str) -> String {
        format!("{}:wrote:{}", self.prefix, Self::tag(user_key))
    }

    /// An anonymous name's holder.
    #[must_use]
    pub fn name(&self, name: &str) -> String {
        format!("{}:name:{}", self.prefix, Self::tag(name))
    }

    /// The token secret every node shares.
    #[must_use]
    pub fn secret(&self) -> String {
        format!("{}:secret", self.prefix)
    }
}
