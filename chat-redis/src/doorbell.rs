//! What arrives on a room's channel: the doorbells our scripts publish, checked field by
//! field. Anything else (another program's payload, garbage, a huge blob) is [`Foreign`]:
//! to be counted and skipped, never delivered.

use crate::{Entry, Epoch};

/// The largest doorbell accepted: a message of the largest body (64 KiB frames) with
/// room to spare. Larger payloads are not ours.
const MAX_DOORBELL_BYTES: usize = 256 * 1024;

/// A doorbell published by `commit` or by a presence change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Doorbell {
    /// An entry was committed: a message (`m|...`), or a change or a reply (`e|...`).
    Message {
        /// The epoch it was committed under.
        epoch: Epoch,
        /// The message.
        entry: Entry,
    },
    /// A presence announcement.
    Presence {
        /// The room's presence version this announcement made.
        pv: u64,
        /// `true`: `user_joined`; `false`: `user_left`.
        joined: bool,
        /// When, milliseconds since 1970.
        ts_ms: i64,
        /// Who.
        user: String,
    },
    /// A user's read marker in the room moved forward on a node (stored first).
    Read {
        /// The node that published it.
        node: String,
        /// The last seq the user read.
        seq: u64,
        /// Whose marker.
        user: String,
    },
    /// Retention trimmed the room's log: it keeps nothing below `first` (`retain.lua`).
    Trimmed {
        /// The epoch of the room's log.
        epoch: Epoch,
        /// The oldest seq the log keeps.
        first: u64,
    },
    /// A typing indicator of another node's user (at most once, never stored).
    Typing {
        /// The node that published it.
        node: String,
        /// Typing, or stopped.
        active: bool,
        /// Who.
        user: String,
    },
}

/// Why a payload on our channel is not one of our doorbells.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Foreign {
    /// Larger than any doorbell we publish.
    #[error("payload of {0} bytes is larger than any doorbell")]
    TooLarge(usize),
    /// Not of our format.
    #[error("not a doorbell: {0}")]
    Malformed(&'static str),
}

impl Doorbell {
    /// Parses a payload from a room's channel.
    ///
    /// # Errors
    /// [`Foreign`] for anything our scripts do not publish.
    pub fn parse(payload: &[u8]) -> Result<Doorbell, Foreign> {
        if payload.len() > MAX_DOORBELL_BYTES {
            return Err(Foreign::TooLarge(payload.len()));
        }
        let s = std::str::from_utf8(payload).map_err(|_| Foreign::Malformed("not UTF-8"))?;
        match s.as_bytes().first() {
            Some(b'm') => message(s),
            Some(b'e') => change(s),
            Some(b'p') => presence(s),
            Some(b't') => typing(s),
            Some(b'r') => read(s),
            Some(b'x') => trimmed(s),
            _ => Err(Foreign::Malformed("unknown kind")),
        }
    }
}

/// `m|<epoch>|<seq>|<ts>|<user len>|<client id len>|<user><client id><body>`
fn message(s: &str) -> Result<Doorbell, Foreign> {
    let mut parts = s.splitn(7, '|');
    let kind = parts.next();
    let (Some("m"), Some(epoch), Some(seq), Some(ts), Some(ulen), Some(clen), Some(rest)) = (
        kind,
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(Foreign::Malformed("message fields"));
    };
    let epoch = Epoch::parse(epoch.to_owned()).map_err(|_| Foreign::Malformed("epoch"))?;
    let seq: u64 = number(seq)?;
    let ts_ms: i64 = number(ts)?;
    let ulen: usize = number(ulen)?;
    let clen: usize = number(clen)?;
    let user = rest.get(..ulen).ok_or(Foreign::Malformed("user"))?;
    let cid = rest
        .get(ulen..ulen.saturating_add(clen))
        .ok_or(Foreign::Malformed("client id"))?;
    let body = &rest[ulen + clen..];
    if user.is_empty() || seq == 0 {
        return Err(Foreign::Malformed("empty user or seq 0"));
    }
    Ok(Doorbell::Message {
        epoch,
        entry: Entry {
            seq,
            ts_ms,
            user: user.to_owned(),
            body: body.to_owned(),
            client_id: (!cid.is_empty()).then(|| cid.to_owned()),
            ..Entry::default()
        },
    })
}

/// `e|<epoch>|<seq>|<the entry's stream fields as a JSON object>`: a change, or a reply.
fn change(s: &str) -> Result<Doorbell, Foreign> {
    let mut parts = s.splitn(4, '|');
    let (Some("e"), Some(epoch), Some(seq), Some(json)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Foreign::Malformed("entry fields"));
    };
    let epoch = Epoch::parse(epoch.to_owned()).map_err(|_| Foreign::Malformed("epoch"))?;
    let seq: u64 = number(seq)?;
    let fields: std::collections::HashMap<String, String> =
        serde_json::from_str(json).map_err(|_| Foreign::Malformed("entry JSON"))?;
    let entry = crate::fields_entry(seq, &fields).ok_or(Foreign::Malformed("entry"))?;
    if entry.user.is_empty() || seq == 0 {
        return Err(Foreign::Malformed("empty user or seq 0"));
    }
    Ok(Doorbell::Message { epoch, entry })
}

/// `p|<pv>|<+ or ->|<ts>|<user>`
fn presence(s: &str) -> Result<Doorbell, Foreign> {
    let mut parts = s.splitn(5, '|');
    let (Some("p"), Some(pv), Some(sign), Some(ts), Some(user)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(Foreign::Malformed("presence fields"));
    };
    let joined = match sign {
        "+" => true,
        "-" => false,
        _ => return Err(Foreign::Malformed("presence sign")),
    };
    if user.is_empty() {
        return Err(Foreign::Malformed("empty user"));
    }
    Ok(Doorbell::Presence {
        pv: number(pv)?,
        joined,
        ts_ms: number(ts)?,
        user: user.to_owned(),
    })
}

/// `x|<epoch>|<first kept seq>`
fn trimmed(s: &str) -> Result<Doorbell, Foreign> {
    let mut parts = s.splitn(3, '|');
    let (Some("x"), Some(epoch), Some(first)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Foreign::Malformed("trim fields"));
    };
    let epoch = Epoch::parse(epoch.to_owned()).map_err(|_| Foreign::Malformed("epoch"))?;
    let first: u64 = number(first)?;
    if first < 2 {
        return Err(Foreign::Malformed("trim below seq 2"));
    }
    Ok(Doorbell::Trimmed { epoch, first })
}

/// `r|<node>|<seq>|<user>`
fn read(s: &str) -> Result<Doorbell, Foreign> {
    let mut parts = s.splitn(4, '|');
    let (Some("r"), Some(node), Some(seq), Some(user)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Foreign::Malformed("read fields"));
    };
    if node.is_empty() || user.is_empty() {
        return Err(Foreign::Malformed("empty node or user"));
    }
    Ok(Doorbell::Read {
        node: node.to_owned(),
        seq: number(seq)?,
        user: user.to_owned(),
    })
}

/// `t|<node>|<1 or 0>|<user>`
fn typing(s: &str) -> Result<Doorbell, Foreign> {
    let mut parts = s.splitn(4, '|');
    let (Some("t"), Some(node), Some(active), Some(user)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Foreign::Malformed("typing fields"));
    };
    let active = match active {
        "1" => true,
        "0" => false,
        _ => return Err(Foreign::Malformed("typing flag")),
    };
    if node.is_empty() || user.is_empty() {
        return Err(Foreign::Malformed("empty node or user"));
    }
    Ok(Doorbell::Typing {
        node: node.to_owned(),
        active,
        user: user.to_owned(),
    })
}

/// Parses a payload of the control channel, `c|<node>|<action as JSON>` (see
/// [`RedisLog::publish_control`](crate::RedisLog::publish_control)): the publishing
/// node and its action.
///
/// # Errors
/// [`Foreign`] for anything our nodes do not publish there.
pub fn parse_control(
    payload: &[u8],
) -> Result<(String, chat_core::runtime::ClusterControl), Foreign> {
    if payload.len() > MAX_DOORBELL_BYTES {
        return Err(Foreign::TooLarge(payload.len()));
    }
    let s = std::str::from_utf8(payload).map_err(|_| Foreign::Malformed("not UTF-8"))?;
    let mut parts = s.splitn(3, '|');
    let (Some("c"), Some(node), Some(json)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Foreign::Malformed("control fields"));
    };
    if node.is_empty() {
        return Err(Foreign::Malformed("empty node"));
    }
    let control = chat_core::runtime::ClusterControl::decode(json)
        .map_err(|_| Foreign::Malformed("control action"))?;
    Ok((node.to_owned(), control))
}

fn number<T: std::str::FromStr>(s: &str) -> Result<T, Foreign> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Foreign::Malformed("number"));
    }
    s.parse().map_err(|_| Foreign::Malformed("number"))
}
