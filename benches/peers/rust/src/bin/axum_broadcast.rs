//! Peer of the load benchmark: a bare axum WebSocket chat on tokio broadcast channels,
//! one per room, with axum's default WebSocket settings. It speaks the subset of our
//! protocol the load tool uses: `hello {name, rooms?}` → `welcome`, `joined {members}`
//! and `user_joined` to the others; `send {room, body}` → `message` to the whole room.
//! A receiver that lags behind its channel loses messages (`Lagged`), as such chats do.
//!
//! ```text
//! axum-broadcast --addr 127.0.0.1:5004
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

#[derive(Clone)]
struct Frame {
    /// A connection that must not get this frame (the joiner of a `user_joined`).
    skip: u64,
    text: Utf8Bytes,
}

struct Room {
    tx: broadcast::Sender<Frame>,
    members: Vec<String>,
}

#[derive(Clone, Default)]
struct AppState {
    rooms: Arc<Mutex<HashMap<String, Room>>>,
    next: Arc<AtomicU64>,
}

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .skip_while(|a| a != "--addr")
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:5004".to_owned());
    let state = AppState::default();
    let app = axum::Router::new()
        .route("/ws", get(upgrade))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    println!(
        "listening on http://{}",
        listener.local_addr().expect("addr")
    );
    // TCP_NODELAY, as every server in the comparison has (Node sets it by default).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .expect("serve");
}

async fn upgrade(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(move |socket| connection(socket, state))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Frames to clients, `type` first as in our protocol.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Out<'a> {
    Welcome {
        user: &'a str,
    },
    Joined {
        room: &'a str,
        members: &'a [String],
    },
    UserJoined {
        room: &'a str,
        user: &'a str,
        ts: u64,
    },
    Message {
        room: &'a str,
        user: &'a str,
        body: &'a str,
        ts: u64,
    },
}

/// Encoded once per event: every subscriber gets the same bytes.
fn encode(frame: &Out<'_>) -> String {
    serde_json::to_string(frame).expect("serializable")
}

async fn connection(mut ws: WebSocket, state: AppState) {
    let id = state.next.fetch_add(1, Ordering::Relaxed) + 1;
    let mut rx: Option<broadcast::Receiver<Frame>> = None;
    let mut me: Option<(String, Option<String>)> = None;
    loop {
        tokio::select! {
            incoming = ws.recv() => {
                let text = match incoming {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                };
                let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
                match v["type"].as_str() {
                    Some("hello") if me.is_none() => {
                        let name = v["name"].as_str().unwrap_or("anon").to_owned();
                        let room = match v.get("rooms").and_then(Value::as_array) {
                            Some(list) => list.first().and_then(|r| r["room"].as_str()).map(str::to_owned),
                            None => Some("general".to_owned()),
                        };
                        let welcome = encode(&Out::Welcome { user: &name });
                        if ws.send(Message::text(welcome)).await.is_err() {
                            break;
                        }
                        if let Some(room) = &room {
                            let (joined, sub) = {
                                let mut rooms = state.rooms.lock().expect("not poisoned");
                                let r = rooms.entry(room.clone()).or_insert_with(|| Room {
                                    tx: broadcast::channel(1024).0,
                                    members: Vec::new(),
                                });
                                r.members.push(name.clone());
                                let joined = encode(&Out::Joined { room, members: &r.members });
                                let notice = encode(&Out::UserJoined { room, user: &name, ts: now_ms() });
                                let sub = r.tx.subscribe();
                                let _ = r.tx.send(Frame { skip: id, text: notice.into() });
                                (joined, sub)
                            };
                            rx = Some(sub);
                            if ws.send(Message::text(joined)).await.is_err() {
                                break;
                            }
                        }
                        me = Some((name, room));
                    }
                    Some("send") => {
                        let Some((name, Some(room))) = &me else { continue };
                        let body = v["body"].as_str().unwrap_or("");
                        let msg = encode(&Out::Message { room, user: name, body, ts: now_ms() });
                        let rooms = state.rooms.lock().expect("not poisoned");
                        if let Some(r) = rooms.get(room) {
                            let _ = r.tx.send(Frame { skip: 0, text: msg.into() });
                        }
                    }
                    _ => {}
                }
            }
            frame = async {
                match rx.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => match frame {
                Ok(f) if f.skip == id => {}
                Ok(f) => {
                    if ws.send(Message::Text(f.text)).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    if let Some((name, Some(room))) = me {
        let mut rooms = state.rooms.lock().expect("not poisoned");
        if let Some(r) = rooms.get_mut(&room)
            && let Some(i) = r.members.iter().position(|m| *m == name)
        {
            r.members.swap_remove(i);
        }
    }
}
