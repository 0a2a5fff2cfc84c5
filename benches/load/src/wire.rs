//! The two wire protocols the load tool speaks: ours (JSON frames, `docs/PROTOCOL.md`) and
//! Socket.IO v4 (engine.io v4, websocket transport only) for the peers.
//!
//! Incoming frames are classified by prefix, without a full JSON parse: the tool must read
//! millions of frames per second on one core. Only `joined` (rare) is parsed.

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
    /// The reply to a login: the room's member count (the client itself included).
    Joined(usize),
    /// Another user joined a room this client is in.
    UserJoined,
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

    /// Login frame: join `room` (or no room at all) as `name`.
    pub fn login(self, name: &str, room: Option<&str>) -> String {
        match (self, room) {
            (Proto::Chat, Some(room)) => format!(
                r#"{{"type":"hello","version":1,"name":"{name}","rooms":[{{"room":"{room}"}}]}}"#
            ),
            (Proto::Chat, None) => {
                format!(r#"{{"type":"hello","version":1,"name":"{name}","rooms":[]}}"#)
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

fn members(json: &str, pick: impl Fn(serde_json::Value) -> serde_json::Value) -> usize {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .map(pick)
        .and_then(|v| v.get("members").and_then(|m| m.as_array()).map(Vec::len))
        .unwrap_or(0)
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
