//! Test harness: a real chat server on `127.0.0.1:0` (through [`chat_axum::serve_hub`],
//! stopped by a oneshot) and a small tokio-tungstenite client that speaks
//! [`ClientFrame`]/[`ServerFrame`] JSON. Every wait has a deadline and fails the test
//! with context instead of hanging; nothing synchronizes by sleeping.

#![allow(dead_code)] // each test file uses its own subset

use chat_core::RequestId;
use chat_core::protocol::{HelloRequest, SendRequest};
use std::net::SocketAddr;
use std::time::Duration;

use chat_axum::RouterOptions;
use chat_core::protocol::{JoinSpec, PROTOCOL_VERSION_1 as PROTOCOL_VERSION};
use chat_core::runtime::{Hub, HubConfig};
use chat_core::{
    CloseReason, Event, RoomName, Seq, SessionId,
    protocol::{ClientFrame, ServerFrame},
};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::task::TaskTracker;

/// How long any single wait may take before the test fails. Generous: it only turns a
/// hang into a failure, it is not a speed assertion.
pub const WAIT: Duration = Duration::from_secs(20);

/// Upper bound for the server's graceful shutdown in tests.
pub const DRAIN: Duration = Duration::from_secs(10);

/// A running server. Dropping it without [`TestServer::stop`] shuts it down too.
pub struct TestServer {
    pub addr: SocketAddr,
    pub hub: Hub,
    pub tracker: TaskTracker,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Library defaults, except that any Origin is irrelevant (test clients send none).
    pub async fn start() -> TestServer {
        TestServer::with(HubConfig::default(), RouterOptions::default()).await
    }

    /// For tests on tokio's paused clock: the driver queues the frames itself, whatever
    /// `CHAT_FANOUT_THREADS` says. Fan-out threads run outside the runtime, and a paused
    /// clock jumps ahead whenever the runtime's own tasks are idle, even while a thread
    /// is queueing the frame a task waits for.
    pub async fn paused() -> TestServer {
        let config = HubConfig {
            fanout_threads: 0,
            ..HubConfig::default()
        };
        TestServer::with(config, RouterOptions::default()).await
    }

    pub async fn with(hub_config: HubConfig, options: RouterOptions) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let hub = Hub::spawn(hub_config).await.expect("hub starts");
        let tracker = options.tracker.clone();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(chat_axum::serve_hub(
            listener,
            hub.clone(),
            options,
            DRAIN,
            async move {
                let _ = rx.await;
            },
        ));
        TestServer {
            addr,
            hub,
            tracker,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// A connected client that has not said hello.
    pub async fn client(&self) -> Client {
        Client::connect(&self.url()).await
    }

    /// A client that said hello as `name` and joined the default room (`general`).
    pub async fn user(&self, name: &str) -> Client {
        let mut c = self.client().await;
        c.hello(name).await;
        c.expect_joined("general").await;
        c
    }

    /// Triggers the shutdown future without waiting.
    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Triggers shutdown and waits for `serve_hub` to return (bounded by [`WAIT`]).
    pub async fn stop(mut self) -> std::io::Result<()> {
        self.trigger_shutdown();
        let task = self.task.take().expect("not stopped yet");
        tokio::time::timeout(WAIT + DRAIN, task)
            .await
            .expect("serve_hub returns after the shutdown future resolves")
            .expect("serve_hub does not panic")
    }
}

impl TestServer {
    /// Stops the server while `clients` keep reading, and checks each was told goodbye
    /// and closed with 1012 (service restart).
    pub async fn stop_with(self, clients: Vec<Client>) {
        let readers: Vec<_> = clients
            .into_iter()
            .map(|mut c| tokio::spawn(async move { (c.label(), c.read_to_end().await) }))
            .collect();
        self.stop().await.expect("serve_hub returns Ok");
        for reader in readers {
            let (label, (frames, end)) = reader.await.expect("reader task");
            assert!(
                matches!(frames.last(), Some(ServerFrame::Goodbye { .. })),
                "{label}: the last frame before the close is goodbye: {frames:?}"
            );
            match end {
                End::Close(Some(c)) => assert_eq!(c.code, 1012, "{label}: close code"),
                other => panic!("{label}: expected close 1012, got {other:?}"),
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.trigger_shutdown();
    }
}

/// Waits for the first event that `pick` maps to `Some`.
pub async fn wait_event<T>(
    events: &mut broadcast::Receiver<Event>,
    what: &str,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(e) => {
                    if let Some(t) = pick(&e) {
                        return t;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    panic!("hub event receiver lagged by {n} while waiting for {what}")
                }
                Err(broadcast::error::RecvError::Closed) => {
                    panic!("hub stopped while waiting for {what}")
                }
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for hub event: {what}"))
}

/// Waits until the hub reports that `session` was closed; returns the server's reason.
pub async fn wait_session_closed(
    events: &mut broadcast::Receiver<Event>,
    session: SessionId,
) -> Option<CloseReason> {
    wait_event(events, &format!("session {session} closed"), |e| match e {
        Event::SessionClosed {
            session: s, reason, ..
        } if *s == session => Some(*reason),
        _ => None,
    })
    .await
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A close frame as the client received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

/// How a client's stream ended.
#[derive(Debug)]
pub enum End {
    /// The server sent a close frame.
    Close(Option<Closed>),
    /// The stream ended or broke without a close frame.
    Gone(Option<tungstenite::Error>),
}

/// A WebSocket test client.
pub struct Client {
    pub ws: Ws,
    /// Set by [`Client::hello`].
    pub session: Option<SessionId>,
    pub user: String,
    pub token: Option<String>,
}

impl Client {
    /// Connects without Nagle, as the server does: a small frame (a pong) then leaves at
    /// once instead of after the server's delayed ACK (up to 40 real ms, during which
    /// paused tokio time can run on by minutes).
    pub async fn connect(url: &str) -> Client {
        let connect = tokio_tungstenite::connect_async_with_config(url, None, true);
        let (ws, _) = tokio::time::timeout(WAIT, connect)
            .await
            .expect("connect in time")
            .expect("WebSocket upgrade succeeds");
        Client::from_ws(ws)
    }

    pub fn from_ws(ws: Ws) -> Client {
        Client {
            ws,
            session: None,
            user: String::new(),
            token: None,
        }
    }

    pub async fn send(&mut self, frame: &ClientFrame) {
        let text = serde_json::to_string(frame).expect("client frames serialize");
        self.send_raw(Message::text(text)).await;
    }

    pub async fn send_raw(&mut self, message: Message) {
        tokio::time::timeout(WAIT, self.ws.send(message))
            .await
            .expect("send in time")
            .expect("send succeeds");
    }

    /// The next WebSocket message of any kind; `None` when the stream ended.
    pub async fn next_message(&mut self) -> Option<Result<Message, tungstenite::Error>> {
        tokio::time::timeout(WAIT, self.ws.next())
            .await
            .unwrap_or_else(|_| panic!("{}: timed out waiting for a message", self.label()))
    }

    /// The next server frame (text, decoded); control frames are skipped. Panics on a
    /// close, a binary frame, an undecodable frame or a timeout.
    pub async fn recv(&mut self) -> ServerFrame {
        let text = self.recv_text().await;
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: undecodable server frame {text}: {e}", self.label()))
    }

    /// The next text frame, raw.
    pub async fn recv_text(&mut self) -> String {
        loop {
            match self.next_message().await {
                Some(Ok(Message::Text(t))) => return t.to_string(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("{}: expected a text frame, got {other:?}", self.label()),
            }
        }
    }

    /// Skips frames until `pick` maps one to `Some`; returns it and the skipped frames.
    pub async fn recv_until<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&ServerFrame) -> Option<T>,
    ) -> (T, Vec<ServerFrame>) {
        let mut skipped = Vec::new();
        loop {
            let f = self.recv().await;
            if let Some(t) = pick(&f) {
                return (t, skipped);
            }
            assert!(
                skipped.len() < 100_000,
                "{}: never got {what}",
                self.label()
            );
            skipped.push(f);
        }
    }

    /// Reads until the stream ends; returns the text frames before the end and how it ended.
    pub async fn read_to_end(&mut self) -> (Vec<ServerFrame>, End) {
        let mut frames = Vec::new();
        loop {
            match self.next_message().await {
                Some(Ok(Message::Text(t))) => frames.push(
                    serde_json::from_str(&t)
                        .unwrap_or_else(|e| panic!("undecodable server frame {t}: {e}")),
                ),
                Some(Ok(Message::Close(c))) => {
                    let closed = c.map(|c| Closed {
                        code: u16::from(c.code),
                        reason: c.reason.to_string(),
                    });
                    return (frames, End::Close(closed));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(other)) => panic!("{}: unexpected message {other:?}", self.label()),
                Some(Err(e)) => return (frames, End::Gone(Some(e))),
                None => return (frames, End::Gone(None)),
            }
        }
    }

    /// Reads to the server's close frame and returns it, with the frames before it.
    pub async fn expect_close(&mut self) -> (Closed, Vec<ServerFrame>) {
        let label = self.label();
        match self.read_to_end().await {
            (frames, End::Close(Some(c))) => {
                self.finish_close().await;
                (c, frames)
            }
            (frames, end) => panic!(
                "{label}: expected a close frame with a code, got {end:?} after {} frames: {frames:?}",
                frames.len()
            ),
        }
    }

    /// After a close frame: keeps reading so tungstenite sends its half of the close
    /// handshake, until the stream ends (or breaks: the server may have closed the socket).
    pub async fn finish_close(&mut self) {
        while let Some(Ok(_)) = self.next_message().await {}
    }

    /// After the server's close frame, the stream ends (tungstenite answered the close).
    pub async fn expect_end(&mut self) {
        loop {
            match self.next_message().await {
                None | Some(Err(tungstenite::Error::ConnectionClosed)) => return,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("{}: expected the end, got {other:?}", self.label()),
            }
        }
    }

    /// Says hello as `name` (with the token from an earlier welcome, if any) and waits for
    /// `welcome`.
    pub async fn hello(&mut self, name: &str) {
        self.hello_with(name, None).await;
    }

    pub async fn hello_with(&mut self, name: &str, rooms: Option<Vec<JoinSpec>>) {
        let token = self.token.clone();
        self.send(&ClientFrame::Hello(HelloRequest {
            id: Some(RequestId(1)),
            version: PROTOCOL_VERSION,
            name: name.into(),
            token,
            rooms,
        }))
        .await;
        match self.recv().await {
            ServerFrame::Welcome {
                id,
                version,
                session,
                user,
                token,
                ..
            } => {
                assert_eq!(id, Some(RequestId(1)));
                assert_eq!(version, PROTOCOL_VERSION);
                assert_eq!(user.as_str(), name);
                assert!(token.is_some(), "anonymous mode hands out a token");
                self.session = Some(session);
                self.user = user.as_str().to_owned();
                self.token = token;
            }
            other => panic!("{name}: expected welcome, got {other:?}"),
        }
    }

    /// Waits for `joined` of `room` (the next frame must be it).
    pub async fn expect_joined(&mut self, room: &str) -> Joined {
        match self.recv().await {
            ServerFrame::Joined {
                room: r,
                members,
                messages,
                gap,
                last_seq,
                ..
            } => {
                assert_eq!(r.as_str(), room, "{}: joined the wrong room", self.label());
                Joined {
                    members: members.iter().map(|m| m.as_str().to_owned()).collect(),
                    messages: messages.iter().map(|m| (**m).clone()).collect(),
                    gap,
                    last_seq,
                }
            }
            other => panic!("{}: expected joined {room}, got {other:?}", self.label()),
        }
    }

    /// Sends a message to a room.
    pub async fn say(&mut self, id: u64, room: &str, body: &str, client_id: Option<&str>) {
        self.send(&ClientFrame::Send(SendRequest {
            id: Some(chat_core::RequestId(id)),
            room: Some(room.into()),
            to: None,
            body: body.into(),
            client_id: client_id.map(Into::into),
            reply_to: None,
        }))
        .await;
    }

    pub fn session(&self) -> SessionId {
        self.session.expect("said hello")
    }

    fn label(&self) -> String {
        if self.user.is_empty() {
            "client".to_owned()
        } else {
            self.user.clone()
        }
    }
}

/// The interesting parts of a `joined` frame.
#[derive(Debug, Clone)]
pub struct Joined {
    pub members: Vec<String>,
    pub messages: Vec<chat_core::protocol::Message>,
    pub gap: bool,
    pub last_seq: Seq,
}

/// A `message` frame's fields, or a panic naming what came instead.
pub fn as_message(frame: &ServerFrame) -> &chat_core::protocol::Message {
    match frame {
        ServerFrame::Message(m) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Tries a WebSocket upgrade with these headers; returns the HTTP status of the answer
/// (101 on success) and the socket when it upgraded. A header named here replaces the
/// client's own; one named twice is sent twice.
pub async fn upgrade(url: &str, headers: &[(&str, &str)]) -> (StatusCode, Option<Ws>) {
    let mut request = url.into_client_request().expect("valid URL");
    let mut named = Vec::new();
    for (name, value) in headers {
        let name = tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("header name");
        let value = HeaderValue::from_str(value).expect("header value");
        if named.contains(&name) {
            request.headers_mut().append(name, value);
        } else {
            request.headers_mut().insert(name.clone(), value);
            named.push(name);
        }
    }
    let result = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("upgrade answered in time");
    match result {
        Ok((ws, response)) => (response.status(), Some(ws)),
        Err(tungstenite::Error::Http(response)) => (response.status(), None),
        Err(e) => panic!("upgrade failed without an HTTP answer: {e}"),
    }
}

/// A room name as the server spells it.
pub fn room(name: &str) -> RoomName {
    RoomName::parse(name, 64, 32).expect("valid room name")
}

/// A plain HTTP/1.1 GET over a TCP socket (no HTTP client dependency): the whole answer,
/// head and body, as text.
pub async fn http_get(server: &TestServer, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            server.addr
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut out))
        .await
        .expect("HTTP answer in time")
        .unwrap();
    out
}
