//! The resume and resend rules of a client, pinned by scenarios shared with the page.
//!
//! `tests/data/client_scenarios.json` lists scenarios: server frames in, user sends,
//! disconnects and reconnects, and what must come out: the rooms (with `since`) of the
//! `hello` that resumes after a reconnect, and which sends go out (again, with their
//! client id). This test runs them against [`chat_core::client::Client`];
//! `e2e/tests/12-client-scenarios.test.mjs` runs the same file against the browser page
//! (chat.js, with the test standing in for the server on the page's WebSocket). The page
//! cannot share the Rust code, so this is what keeps the two state machines the same.
//!
//! Steps: `connect`, `disconnect`, `welcome` (an epoch), `joined` (room, last_seq,
//! message seqs), `message` (room, seq; `own`: the n-th send, echoed), `left` (room),
//! `send` (a body, to `general`), `ack` (the n-th send, at seq), `expect_hello` (the
//! `[room, since]` pairs of the last hello, in any order), `expect_sent` (the sends
//! written since the previous `expect_sent`, by number; each resend must keep its client
//! id).

use chat_core::protocol::{HelloRequest, SendRequest};
use std::collections::BTreeMap;
use std::path::PathBuf;

use chat_core::client::{Client, ClientConfig, ClientOutput};
use chat_core::{
    ClientMsgId, Config, RequestId,
    protocol::{ClientFrame, ServerFrame},
};
use serde_json::{Value, json};

const TS: &str = "2026-01-02T03:04:05Z";

struct Run {
    client: Client,
    /// Send number (1-based) → (body, client id).
    sends: Vec<(String, ClientMsgId)>,
    /// The request id of each send's latest transmission, by client id.
    last_id: BTreeMap<ClientMsgId, RequestId>,
    /// Sends written since the last `expect_sent`, as client ids.
    sent: Vec<ClientMsgId>,
    /// The rooms of the latest hello.
    hello: Option<Vec<(String, Option<u64>)>>,
}

impl Run {
    fn pump(&mut self) {
        while let Some(output) = self.client.poll_output() {
            match output {
                ClientOutput::Transmit(ClientFrame::Hello(HelloRequest { rooms, .. })) => {
                    self.hello = Some(
                        rooms
                            .unwrap_or_default()
                            .into_iter()
                            .map(|s| (s.room, s.since.map(|s| s.0)))
                            .collect(),
                    );
                }
                ClientOutput::Transmit(ClientFrame::Send(SendRequest {
                    id, client_id, ..
                })) => {
                    let client_id = client_id.expect("every send has a client id");
                    if let Some(id) = id {
                        self.last_id.insert(client_id.clone(), id);
                    }
                    self.sent.push(client_id);
                }
                _ => {}
            }
        }
    }

    fn frame(&mut self, frame: Value) {
        let frame: ServerFrame = serde_json::from_value(frame.clone())
            .unwrap_or_else(|e| panic!("not a server frame: {frame}: {e}"));
        self.client.handle_frame(frame);
        self.pump();
    }

    fn send(&self, n: &Value) -> &(String, ClientMsgId) {
        let n = n.as_u64().expect("a send number") as usize;
        &self.sends[n - 1]
    }
}

fn message(room: &str, seq: u64) -> Value {
    json!({ "room": room, "seq": seq, "ts": TS, "user": "bob", "body": format!("m{seq}") })
}

fn run(name: &str, steps: &[Value]) {
    let mut run = Run {
        client: Client::new(ClientConfig::new("alice", "scenario")),
        sends: Vec::new(),
        last_id: BTreeMap::new(),
        sent: Vec::new(),
        hello: None,
    };
    for (i, step) in steps.iter().enumerate() {
        let at = format!("{name}, step {}: {step}", i + 1);
        let (kind, arg) = step
            .as_object()
            .and_then(|o| o.iter().next())
            .expect("a step is an object with one key");
        match kind.as_str() {
            "connect" => {
                run.hello = None;
                run.client.connected();
                run.pump();
            }
            "disconnect" => run.client.disconnected(),
            "welcome" => run.frame(json!({
                "type": "welcome", "version": 1, "session": 1, "user": "alice", "token": "t",
                "epoch": arg, "limits": Config::default().limits(),
            })),
            "joined" => {
                let room = arg["room"].as_str().expect("room");
                let messages: Vec<Value> = arg["messages"]
                    .as_array()
                    .expect("messages")
                    .iter()
                    .map(|s| message(room, s.as_u64().expect("seq")))
                    .collect();
                run.frame(json!({
                    "type": "joined", "room": room, "members": ["alice"], "messages": messages,
                    "gap": false, "last_seq": arg["last_seq"],
                }));
            }
            "message" => {
                let room = arg["room"].as_str().expect("room");
                let mut m = message(room, arg["seq"].as_u64().expect("seq"));
                if !arg["own"].is_null() {
                    let (body, client_id) = run.send(&arg["own"]).clone();
                    m["user"] = json!("alice");
                    m["body"] = json!(body);
                    m["client_id"] = json!(client_id);
                }
                m["type"] = json!("message");
                run.frame(m);
            }
            "left" => run.frame(json!({ "type": "left", "room": arg })),
            "send" => {
                let body = arg.as_str().expect("a body");
                let client_id = run.client.send_to_room("general", body);
                run.sends.push((body.to_owned(), client_id));
                run.pump();
            }
            "ack" => {
                let client_id = run.send(arg).1.clone();
                let id = run.last_id.get(&client_id).copied();
                run.frame(json!({
                    "type": "ack", "id": id, "room": "general", "seq": step["seq"], "ts": TS,
                    "client_id": client_id, "duplicate": false,
                }));
            }
            "expect_hello" => {
                let mut expected: Vec<(String, Option<u64>)> =
                    serde_json::from_value(arg.clone()).expect("[room, since] pairs");
                let mut actual = run
                    .hello
                    .clone()
                    .unwrap_or_else(|| panic!("{at}: no hello"));
                expected.sort();
                actual.sort();
                assert_eq!(actual, expected, "{at}");
            }
            "expect_sent" => {
                let expected: Vec<usize> =
                    serde_json::from_value(arg.clone()).expect("send numbers");
                let actual: Vec<usize> = std::mem::take(&mut run.sent)
                    .iter()
                    .map(|c| {
                        1 + run
                            .sends
                            .iter()
                            .position(|(_, id)| id == c)
                            .unwrap_or_else(|| panic!("{at}: a send with an unknown client id {c}"))
                    })
                    .collect();
                assert_eq!(actual, expected, "{at}");
            }
            other => panic!("{at}: unknown step {other}"),
        }
    }
}

#[test]
fn the_client_state_machine_passes_every_shared_scenario() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/client_scenarios.json");
    let scenarios: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(path).expect("scenarios")).expect("JSON");
    assert!(!scenarios.is_empty());
    for scenario in &scenarios {
        let name = scenario["name"].as_str().expect("name");
        run(name, scenario["steps"].as_array().expect("steps"));
    }
}
