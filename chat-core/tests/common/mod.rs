//! The harness lives in `chat_core::testing` (feature `testing`); these are the few
//! helpers only this crate's tests use.
#![allow(dead_code)] // each test file uses a different part of the harness

use std::sync::Arc;

#[allow(unused_imports)] // each test file uses a different part
pub use chat_core::testing::{
    Say, Sim, base_now, check_timestamps, decode_server, is_rfc3339_millis, kind,
};

use chat_core::protocol::Message;
use chat_core::{Config, RoomName};

/// A room name as the server normalizes it.
pub fn room(name: &str) -> RoomName {
    RoomName::parse(name, 64, 32).expect("valid room name")
}

/// The seqs of some messages.
pub fn seqs(messages: &[Arc<Message>]) -> Vec<u64> {
    messages.iter().map(|m| m.seq.0).collect()
}

/// The bodies of some messages.
pub fn bodies(messages: &[Arc<Message>]) -> Vec<String> {
    messages.iter().map(|m| m.body.to_string()).collect()
}

/// User names as strings.
pub fn names(users: &[chat_core::UserName]) -> Vec<String> {
    users.iter().map(ToString::to_string).collect()
}

/// A config whose send limit does not get in the way of a scenario that posts a lot.
pub fn unlimited() -> Config {
    Config {
        send_rate: chat_core::Rate {
            burst: 100_000,
            per_second: 100_000,
        },
        frame_rate: chat_core::Rate {
            burst: 100_000,
            per_second: 100_000,
        },
        ..Config::default()
    }
}

/// A session of `hub` in `general` (the default room), past its `welcome` and `joined`.
#[cfg(feature = "runtime")]
pub async fn member(
    hub: &chat_core::runtime::Hub,
    name: &str,
) -> chat_core::runtime::transport::Connection {
    use chat_core::protocol::{ClientFrame, HelloRequest, ServerFrame};
    let mut c = hub.connect().await.expect("hub running");
    c.send(ClientFrame::Hello(HelloRequest {
        id: None,
        version: 1,
        name: name.into(),
        token: None,
        rooms: None,
    }))
    .await
    .expect("hello");
    let joined = async {
        loop {
            if let ServerFrame::Joined { .. } = c.recv().await.expect("welcome and join") {
                return;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), joined)
        .await
        .expect("joined in time");
    c
}

/// A `send` of `body` to `general` with request id `id`.
pub fn say(id: u64, body: &str) -> chat_core::protocol::ClientFrame {
    use chat_core::protocol::{ClientFrame, SendRequest};
    ClientFrame::Send(SendRequest {
        id: Some(chat_core::RequestId(id)),
        room: Some("general".into()),
        to: None,
        body: body.into(),
        client_id: None,
        reply_to: None,
    })
}
