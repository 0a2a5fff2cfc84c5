//! The host's identity hook over real sockets: who a connection is comes from its upgrade
//! request (a cookie, a query ticket); a refusal is HTTP 401/403 before any upgrade; the
//! identity's user, roles, expiry and revocation reach the chat. And the chat mounted
//! under a path prefix (`/chat`) works with and without the trailing slash.

mod common;

use chat_axum::{ConnectRefused, ConnectRequest, RouterOptions, identity_hook};
use chat_core::protocol::{ErrorCode, ServerFrame};
use chat_core::runtime::HubConfig;
use chat_core::{Identity, RoomAccess};
use common::{Client, TestServer, upgrade};
use tokio_tungstenite::tungstenite::http::StatusCode;

/// The test app's "sessions": a cookie `sid` names the user; `sid=banned` is a known
/// user who may not chat; `sid=brief` expires a second after it is checked.
async fn identify(req: ConnectRequest) -> Result<Identity, ConnectRefused> {
    let sid = req
        .cookie("sid")
        .or_else(|| req.query("ticket"))
        .ok_or_else(|| ConnectRefused::Unauthorized("log in first".into()))?;
    match sid {
        "banned" => Err(ConnectRefused::Forbidden("you are banned".into())),
        "brief" => {
            Ok(Identity::new("brief").expiring(chrono::Utc::now() + chrono::Duration::seconds(1)))
        }
        "admin" => Ok(Identity::new("root").with_role("admin")),
        user => Ok(Identity::new(user)),
    }
}

fn hub_config() -> HubConfig {
    let mut config = HubConfig::default();
    config.core.rooms = vec![("news".into(), RoomAccess::read_only(["admin"]))];
    config
}

fn options() -> RouterOptions {
    RouterOptions {
        identity: Some(identity_hook(identify)),
        ..RouterOptions::default()
    }
}

/// Says hello with any name and returns the user `welcome` names.
async fn hello(c: &mut Client, name: &str) -> String {
    c.send(&chat_core::protocol::ClientFrame::Hello(
        chat_core::protocol::HelloRequest {
            id: None,
            version: chat_core::protocol::PROTOCOL_VERSION,
            name: name.into(),
            token: Some("forged".into()),
            rooms: Some(vec![]),
        },
    ))
    .await;
    match c.recv().await {
        ServerFrame::Welcome { user, token, .. } => {
            assert_eq!(token, None, "no anonymous token for a host identity");
            user.to_string()
        }
        other => panic!("expected welcome, got {other:?}"),
    }
}

async fn server() -> TestServer {
    TestServer::with(hub_config(), options()).await
}

async fn as_cookie(server: &TestServer, sid: &str) -> Client {
    let cookie = format!("theme=dark; sid={sid}");
    let (status, ws) = upgrade(&server.url(), &[("cookie", &cookie)]).await;
    assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS);
    Client::from_ws(ws.expect("upgraded"))
}

#[tokio::test]
async fn no_credentials_is_401_and_a_refused_user_403_before_any_upgrade() {
    let server = server().await;
    let mut events = server.hub.events();
    let (status, ws) = upgrade(&server.url(), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(ws.is_none());
    let (status, ws) = upgrade(&server.url(), &[("cookie", "sid=banned")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(ws.is_none());
    // The refused requests opened no session: the first session the hub hears of is the
    // next accepted one's.
    let mut bob = as_cookie(&server, "bob").await;
    hello(&mut bob, "bob").await;
    let first = common::wait_event(&mut events, "a session event", |e| match e {
        chat_core::Event::SessionOpened { user, .. } => Some(Some(user.to_string())),
        chat_core::Event::SessionClosed { .. } => Some(None),
        _ => None,
    })
    .await;
    assert_eq!(first.as_deref(), Some("bob"));
    assert_eq!(server.hub.stats().connections, 1);
    server.stop().await.expect("stops");
}

#[tokio::test]
async fn the_session_is_the_hook_s_user_whatever_hello_says_and_roles_apply() {
    let server = server().await;
    let mut bob = as_cookie(&server, "bob").await;
    assert_eq!(hello(&mut bob, "mallory").await, "bob");
    bob.send(&join("news")).await;
    bob.expect_joined("news").await;
    bob.say(2, "news", "may I?", None).await;
    match bob.recv().await {
        ServerFrame::Error { code, id, .. } => {
            assert_eq!((code, id.map(|i| i.0)), (ErrorCode::Forbidden, Some(2)));
        }
        other => panic!("{other:?}"),
    }
    // A query-string ticket works as well as the cookie; this user may send.
    let (status, ws) = upgrade(&format!("{}?ticket=admin", server.url()), &[]).await;
    assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS);
    let mut root = Client::from_ws(ws.unwrap());
    assert_eq!(hello(&mut root, "whoever").await, "root");
    root.send(&join("news")).await;
    root.expect_joined("news").await;
    root.say(3, "news", "edition 1", None).await;
    let (got, _) = bob
        .recv_until("root's message", |f| match f {
            ServerFrame::Message(m) => Some(m.clone()),
            _ => None,
        })
        .await;
    assert_eq!((got.user.as_str(), &*got.body), ("root", "edition 1"));
    server.stop().await.expect("stops");
}

fn join(room: &str) -> chat_core::protocol::ClientFrame {
    chat_core::protocol::ClientFrame::Join(chat_core::protocol::JoinRequest {
        id: None,
        room: room.into(),
        since: None,
    })
}

#[tokio::test]
async fn an_expiring_identity_is_told_and_closed_with_4001() {
    let server = server().await;
    let mut brief = as_cookie(&server, "brief").await;
    hello(&mut brief, "brief").await;
    let (closed, frames) = brief.expect_close().await;
    assert_eq!(closed.code, 4001, "{closed:?}");
    assert!(
        matches!(
            frames.last(),
            Some(ServerFrame::Error {
                code: ErrorCode::AuthExpired,
                ..
            })
        ),
        "{frames:?}"
    );
    server.stop().await.expect("stops");
}

#[tokio::test]
async fn revoking_a_user_closes_every_socket_of_theirs_with_4003() {
    let server = server().await;
    let mut tabs = Vec::new();
    for _ in 0..2 {
        let mut c = as_cookie(&server, "eve").await;
        hello(&mut c, "eve").await;
        tabs.push(c);
    }
    let mut bob = as_cookie(&server, "bob").await;
    hello(&mut bob, "bob").await;
    assert_eq!(server.hub.revoke_user("eve").await, Ok(2));
    for mut tab in tabs {
        let (closed, frames) = tab.expect_close().await;
        assert_eq!(
            (closed.code, closed.reason.as_str()),
            (4003, "access revoked")
        );
        assert!(
            matches!(
                frames.last(),
                Some(ServerFrame::Error {
                    code: ErrorCode::AuthRevoked,
                    ..
                })
            ),
            "{frames:?}"
        );
    }
    bob.send(&join("general")).await;
    bob.expect_joined("general").await;
    server.stop().await.expect("stops");
}

/// The chat under `/chat` in a host app served by plain `axum::serve`: with
/// [`chat_axum::mount`], or with axum's own `nest`.
async fn mounted(with_mount: bool) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let hub = chat_core::runtime::Hub::spawn(hub_config()).await.unwrap();
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "the host app" }));
    let chat = chat_axum::router(hub, options());
    let app = if with_mount {
        app.merge(chat_axum::mount("/chat", chat))
    } else {
        app.nest("/chat", chat)
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await
    });
    (addr, tx)
}

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(common::WAIT, s.read_to_string(&mut out))
        .await
        .expect("answer in time")
        .unwrap();
    out
}

#[tokio::test]
async fn mounted_under_a_prefix_the_page_works_with_and_without_the_slash() {
    let (addr, stop) = mounted(true).await;
    let bare = get(addr, "/chat?room=x").await;
    assert!(bare.starts_with("HTTP/1.1 308"), "{bare}");
    assert!(
        bare.to_ascii_lowercase()
            .contains("\r\nlocation: /chat/?room=x\r\n"),
        "{bare}"
    );
    let page = get(addr, "/chat/").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains(r#"src="/chat/chat.js""#), "{page}");
    assert!(page.contains(r#"href="/chat/style.css""#), "{page}");
    // What the page then loads, relative to /chat/: its script and its WebSocket.
    assert!(get(addr, "/chat/chat.js").await.starts_with("HTTP/1.1 200"));
    assert!(get(addr, "/").await.ends_with("the host app"));
    let (status, _) = upgrade(&format!("ws://{addr}/chat/ws"), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, ws) = upgrade(&format!("ws://{addr}/chat/ws"), &[("cookie", "sid=amy")]).await;
    assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS);
    let mut amy = Client::from_ws(ws.unwrap());
    assert_eq!(hello(&mut amy, "x").await, "amy");
    let _ = stop.send(());
}

#[tokio::test]
async fn nested_with_axum_alone_the_page_at_the_bare_prefix_loads_its_assets_under_it() {
    let (addr, stop) = mounted(false).await;
    let page = get(addr, "/chat").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains(r#"src="/chat/chat.js""#), "{page}");
    assert!(get(addr, "/chat/chat.js").await.starts_with("HTTP/1.1 200"));
    let (status, _) = upgrade(&format!("ws://{addr}/chat/ws"), &[("cookie", "sid=amy")]).await;
    assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS);
    let _ = stop.send(());
}

#[tokio::test]
async fn a_ban_by_the_host_reaches_the_banned_user_s_socket_and_keeps_them_out() {
    let server = server().await;
    let mut bob = as_cookie(&server, "bob").await;
    hello(&mut bob, "bob").await;
    bob.send(&join("general")).await;
    bob.expect_joined("general").await;
    let left = server
        .hub
        .ban(
            "general",
            "bob",
            "spam",
            Some(std::time::Duration::from_secs(600)),
        )
        .await
        .expect("hub runs");
    assert_eq!(left, Ok(1));
    match bob.recv().await {
        ServerFrame::Moderated {
            action,
            reason,
            minutes,
            ..
        } => assert_eq!(
            (action, reason.as_deref(), minutes),
            (chat_core::protocol::ModAction::Ban, Some("spam"), Some(10))
        ),
        other => panic!("{other:?}"),
    }
    assert!(matches!(bob.recv().await, ServerFrame::Left { .. }));
    bob.send(&chat_core::protocol::ClientFrame::Join(
        chat_core::protocol::JoinRequest {
            id: Some(chat_core::RequestId(7)),
            room: "general".into(),
            since: None,
        },
    ))
    .await;
    match bob.recv().await {
        ServerFrame::Error { code, .. } => assert_eq!(code, ErrorCode::Forbidden),
        other => panic!("{other:?}"),
    }
    server.stop().await.expect("stops");
}
