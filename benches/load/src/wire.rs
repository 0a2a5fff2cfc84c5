//! The two wire protocols the load tool speaks: ours (JSON frames, `docs/PROTOCOL.md`) and
//! Socket.IO v4 (engine.io v4, websocket transport only) for the peers.
//!
//! Incoming frames are classified by prefix, without a full JSON parse: the tool must read
//! millions of frames per second on one core. Only `joined` (rare) is parsed; a version-2
//! `presence` frame is scanned for its `count`.

use clap::ValueEnum;

/// Which protocol a server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    /// Our protocol (`hello`, `send`, `message`), at `/ws`. The bare axum peer speaks the
    /// subset the tool uses.
    Chat,
    /// Socket.IO v4 over a websocket (`/socket.io/?EIO=4&transport=websocket`): events
    /// `login {name, room}` → `joined {room, members}` and `user_joined {user}`;
    /// `send_message {body, room}` → `message {user, body, ts}` to the whole room.
    Sio,
}

/// What an incoming text frame is, as far as the tool cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum In {
    /// A room message; the send time (ns since the tool's epoch) when the body carries one.
    Message(Option<u64>),
    /// The reply to a login: the room's member count (the client itself included): its
    /// `count` where the frame has one (our version 2, whose `members` is only the first
    /// page above the presence threshold), else the length of `members`.
    Joined(usize),
    /// Another user joined a room this client is in (version 1, Socket.IO).
    UserJoined,
    /// Our version-2 `presence` frame: the room's joins and leaves over one presence tick,
    /// with the room's member count after them (`None` when the frame has no `count`).
    Presence(Option<usize>),
    /// Our `welcome`, or Socket.IO's namespace connect `40{…}`.
    Welcome,
    /// Engine.io open packet `0{…}`.
    Open,
    /// Engine.io ping `2`: answer `3`.
    Ping,
    /// Our `ack`.
    Ack,
    /// An error frame.
    Error,
    /// Anything else (presence, typing, pong, …).
    Other,
}

impl Proto {
    /// The WebSocket path for this protocol.
    pub fn default_path(self) -> &'static str {
        match self {
            Proto::Chat => "/ws",
            Proto::Sio => "/socket.io/?EIO=4&transport=websocket",
        }
    }

    /// Login frame: join `room` (or no room at all) as `name`. `version` is our protocol
    /// version to ask for in `hello` (1: per-user `user_joined`; 2: coalesced `presence`);
    /// Socket.IO has none.
    pub fn login(self, version: u8, name: &str, room: Option<&str>) -> String {
        match (self, room) {
            (Proto::Chat, Some(room)) => format!(
                r#"{{"type":"hello","version":{version},"name":"{name}","rooms":[{{"room":"{room}"}}]}}"#
            ),
            (Proto::Chat, None) => {
                format!(r#"{{"type":"hello","version":{version},"name":"{name}","rooms":[]}}"#)
            }
            (Proto::Sio, Some(room)) => {
                format!(r#"42["login",{{"name":"{name}","room":"{room}"}}]"#)
            }
            (Proto::Sio, None) => format!(r#"42["login",{{"name":"{name}"}}]"#),
        }
    }

    /// A message send. `body` must need no JSON escaping (the tool's bodies are digits,
    /// spaces and letters).
    pub fn send(self, room: &str, body: &str) -> String {
        match self {
            Proto::Chat => format!(r#"{{"type":"send","room":"{room}","body":"{body}"}}"#),
            Proto::Sio => format!(r#"42["send_message",{{"room":"{room}","body":"{body}"}}]"#),
        }
    }

    /// Classifies an incoming text frame.
    pub fn classify(self, text: &str) -> In {
        match self {
            Proto::Chat => classify_chat(text),
            Proto::Sio => classify_sio(text),
        }
    }
}

fn classify_chat(text: &str) -> In {
    let Some(rest) = text.strip_prefix(r#"{"type":""#) else {
        return In::Other;
    };
    if rest.starts_with(r#"message""#) {
        In::Message(body_time(rest))
    } else if rest.starts_with(r#"ack""#) {
        In::Ack
    } else if rest.starts_with(r#"user_joined""#) {
        In::UserJoined
    } else if rest.starts_with(r#"presence""#) {
        In::Presence(count(text))
    } else if rest.starts_with(r#"joined""#) {
        In::Joined(members(text, |v| v))
    } else if rest.starts_with(r#"welcome""#) {
        In::Welcome
    } else if rest.starts_with(r#"error""#) {
        In::Error
    } else {
        In::Other
    }
}

fn classify_sio(text: &str) -> In {
    if let Some(rest) = text.strip_prefix(r#"42[""#) {
        if rest.starts_with(r#"message""#) {
            In::Message(body_time(rest))
        } else if rest.starts_with(r#"user_joined""#) {
            In::UserJoined
        } else if rest.starts_with(r#"joined""#) {
            // 42["joined",{…}]: the object is the second array element.
            In::Joined(members(&text[2..], |v| {
                v.get(1).cloned().unwrap_or_default()
            }))
        } else if rest.starts_with(r#"error""#) {
            In::Error
        } else {
            In::Other
        }
    } else if text == "2" {
        In::Ping
    } else if text.starts_with("40") {
        In::Welcome
    } else if text.starts_with("44") {
        In::Error
    } else if text.starts_with('0') {
        In::Open
    } else {
        In::Other
    }
}

/// The send time at the start of the body (`"body":"<ns> …"`).
fn body_time(text: &str) -> Option<u64> {
    // A prebuilt searcher: building one per frame (what `str::find` does) cost the tool a
    // fifth of its time at a million frames per second.
    static BODY: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(br#""body":""#));
    let at = BODY.find(text.as_bytes())? + 8;
    let digits = text[at..].bytes().take_while(u8::is_ascii_digit).count();
    text[at..at + digits].parse().ok()
}

/// The room's member count of a `joined` reply: `count` when present (version 2), else the
/// length of `members`.
fn members(json: &str, pick: impl Fn(serde_json::Value) -> serde_json::Value) -> usize {
    let Some(v) = serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .map(pick)
    else {
        return 0;
    };
    if let Some(n) = v.get("count").and_then(serde_json::Value::as_u64) {
        return usize::try_from(n).unwrap_or(usize::MAX);
    }
    v.get("members")
        .and_then(|m| m.as_array())
        .map_or(0, Vec::len)
}

/// The top-level `"count":N` of a `presence` frame, without a full parse: at 3,000 members
/// one arrives per client per tick. Inside a JSON string every `"` is escaped, so the
/// pattern can only match a key (a presence frame has no nested objects).
fn count(text: &str) -> Option<usize> {
    static COUNT: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(br#""count":"#));
    let at = COUNT.find(text.as_bytes())? + 8;
    let digits = text[at..].bytes().take_while(u8::is_ascii_digit).count();
    text[at..at + digits].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_our_frames() {
        let m = r#"{"type":"message","room":"general","seq":3,"ts":"2026-01-01T00:00:00.000Z","user":"u1","body":"12345 x"}"#;
        assert_eq!(Proto::Chat.classify(m), In::Message(Some(12345)));
        let j = r#"{"type":"joined","room":"general","members":["a","b"],"messages":[],"gap":false,"last_seq":0}"#;
        assert_eq!(Proto::Chat.classify(j), In::Joined(2));
        assert_eq!(
            Proto::Chat.classify(r#"{"type":"user_joined","room":"general","user":"a","ts":"x"}"#),
            In::UserJoined
        );
    }

    #[test]
    fn asks_for_the_protocol_version() {
        assert_eq!(
            Proto::Chat.login(2, "a", Some("general")),
            r#"{"type":"hello","version":2,"name":"a","rooms":[{"room":"general"}]}"#
        );
        assert_eq!(
            Proto::Chat.login(1, "a", None),
            r#"{"type":"hello","version":1,"name":"a","rooms":[]}"#
        );
        // Socket.IO has no version to ask for.
        assert_eq!(
            Proto::Sio.login(2, "a", Some("r")),
            r#"42["login",{"name":"a","room":"r"}]"#
        );
    }

    #[test]
    fn classifies_version_2_presence() {
        // At or below the threshold: joins and leaves, and the count after them.
        let p =
            r#"{"type":"presence","room":"general","joins":["bob","dave"],"leaves":[],"count":3}"#;
        assert_eq!(Proto::Chat.classify(p), In::Presence(Some(3)));
        // Above it: the count only.
        let p = r#"{"type":"presence","room":"general","count":2417}"#;
        assert_eq!(Proto::Chat.classify(p), In::Presence(Some(2417)));
        // Back at the threshold: the whole list and the count.
        let p = r#"{"type":"presence","room":"general","members":["alice","carol"],"count":2}"#;
        assert_eq!(Proto::Chat.classify(p), In::Presence(Some(2)));
        // A name that looks like the key is inside a string: its quotes are escaped.
        let p = r#"{"type":"presence","room":"r","joins":["\"count\":9"],"leaves":[],"count":1}"#;
        assert_eq!(Proto::Chat.classify(p), In::Presence(Some(1)));
        assert_eq!(
            Proto::Chat.classify(r#"{"type":"presence","room":"r"}"#),
            In::Presence(None)
        );
    }

    #[test]
    fn version_2_joined_counts_by_count_not_by_page() {
        // Above the threshold `members` is the first page; `count` is the room.
        let j = r#"{"type":"joined","room":"general","members":["a","b"],"count":3000,"messages":[],"gap":false,"last_seq":0}"#;
        assert_eq!(Proto::Chat.classify(j), In::Joined(3000));
        // A session that may not see presence: no count, no members.
        let j = r#"{"type":"joined","room":"general","messages":[],"gap":false,"last_seq":0}"#;
        assert_eq!(Proto::Chat.classify(j), In::Joined(0));
    }

    #[test]
    fn classifies_socket_io_frames() {
        assert_eq!(
            Proto::Sio.classify(r#"42["message",{"user":"u1","body":"99 xx","ts":1}]"#),
            In::Message(Some(99))
        );
        assert_eq!(
            Proto::Sio.classify(r#"42["joined",{"room":"general","members":["a","b","c"]}]"#),
            In::Joined(3)
        );
        assert_eq!(Proto::Sio.classify("2"), In::Ping);
        assert_eq!(Proto::Sio.classify(r#"40{"sid":"x"}"#), In::Welcome);
        assert_eq!(Proto::Sio.classify(r#"0{"sid":"x"}"#), In::Open);
    }
}
