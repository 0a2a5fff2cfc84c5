//! Peer of the load benchmark: the original tutorial app's chat on socketioxide
//! (Socket.IO v4 for axum). Login with a name, land in a room (`general` unless one is
//! given), `send_message` → `message` to everyone in the room, the sender included.
//!
//! ```text
//! socketioxide-chat --addr 127.0.0.1:5005
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::json;
use socketioxide::SocketIo;
use socketioxide::extract::{Data, SocketRef};
use socketioxide::socket::Sid;

#[derive(Debug, Deserialize)]
struct Login {
    name: String,
    room: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Send {
    body: String,
}

#[derive(Default)]
struct Chat {
    rooms: HashMap<String, HashSet<String>>,
    users: HashMap<Sid, (String, String)>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .skip_while(|a| a != "--addr")
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:5005".to_owned());
    let chat = Arc::new(Mutex::new(Chat::default()));
    let (layer, io) = SocketIo::new_layer();
    io.ns("/", move |s: SocketRef| {
        let chat = chat.clone();
        on_connect(s, chat)
    });
    let app = axum::Router::new().layer(layer);
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

async fn on_connect(s: SocketRef, chat: Arc<Mutex<Chat>>) {
    let c = chat.clone();
    s.on("login", move |s: SocketRef, Data::<Login>(login)| {
        let chat = c.clone();
        async move {
            let room = login.room.unwrap_or_else(|| "general".to_owned());
            let members: Vec<String> = {
                let mut chat = chat.lock().expect("not poisoned");
                chat.users.insert(s.id, (login.name.clone(), room.clone()));
                let m = chat.rooms.entry(room.clone()).or_default();
                m.insert(login.name.clone());
                m.iter().cloned().collect()
            };
            s.join(room.clone());
            let _ = s.emit("joined", &json!({"room": room, "members": members}));
            let notice = json!({"room": room, "user": login.name, "ts": now_ms()});
            let _ = s.to(room).emit("user_joined", &notice).await;
        }
    });
    let c = chat.clone();
    s.on("send_message", move |s: SocketRef, Data::<Send>(msg)| {
        let chat = c.clone();
        async move {
            let who = chat.lock().expect("not poisoned").users.get(&s.id).cloned();
            let Some((name, room)) = who else { return };
            let out = json!({"room": room, "user": name, "body": msg.body, "ts": now_ms()});
            let _ = s.within(room).emit("message", &out).await;
        }
    });
    s.on_disconnect(move |s: SocketRef| async move {
        let mut chat = chat.lock().expect("not poisoned");
        if let Some((name, room)) = chat.users.remove(&s.id)
            && let Some(m) = chat.rooms.get_mut(&room)
        {
            m.remove(&name);
        }
    });
}
