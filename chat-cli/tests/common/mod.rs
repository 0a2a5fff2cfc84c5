//! Test harness: a real chat server on `127.0.0.1:0` (chat-axum's `serve_hub`), the
//! real `chat-cli` binary with its output read line by line, and a small raw WebSocket
//! client standing in for "another user". Every wait has a deadline and fails the test
//! with what was seen; nothing synchronizes by sleeping.

#![allow(dead_code)] // each test file uses its own subset

use chat_core::protocol::{HelloRequest, SendRequest};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use chat_axum::RouterOptions;
use chat_core::protocol::PROTOCOL_VERSION_1 as PROTOCOL_VERSION;
use chat_core::runtime::{Hub, HubConfig, Store};
use chat_core::{
    Config, Event, Rate, Seq,
    protocol::{ClientFrame, ServerFrame},
};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Longest any single wait may take. Generous: it turns a hang into a failure; it is not
/// a speed assertion.
pub const WAIT: Duration = Duration::from_secs(30);

/// The path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_chat-cli");

/// A core config for tests: flood control loose enough for quick test traffic, a short
/// reconnect hint on shutdown.
pub fn test_config() -> HubConfig {
    HubConfig {
        core: Config {
            send_rate: Rate {
                burst: 1000,
                per_second: 1000,
            },
            shutdown_retry_after: Duration::from_millis(100),
            ..Config::default()
        },
        ..HubConfig::default()
    }
}

/// A running server.
pub struct TestServer {
    pub addr: SocketAddr,
    pub hub: Hub,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(test_config()).await
    }

    /// For tests on tokio's paused clock: the driver queues the frames itself, whatever
    /// `CHAT_FANOUT_THREADS` says. Fan-out threads run outside the runtime, and a paused
    /// clock jumps ahead whenever the runtime's own tasks are idle, even while a thread
    /// is queueing the frame a task waits for.
    pub async fn paused() -> TestServer {
        TestServer::start_with(HubConfig {
            fanout_threads: 0,
            ..test_config()
        })
        .await
    }

    pub async fn start_with(config: HubConfig) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let hub = Hub::spawn(config).await.expect("hub starts");
        TestServer::serve(listener, hub)
    }

    /// Serves an already started hub on a listener.
    pub fn serve(listener: TcpListener, hub: Hub) -> TestServer {
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let options = RouterOptions {
            page: false,
            ..RouterOptions::default()
        };
        let task = tokio::spawn(chat_axum::serve_hub(
            listener,
            hub.clone(),
            options,
            Duration::from_secs(10),
            async move {
                let _ = rx.await;
            },
        ));
        TestServer {
            addr,
            hub,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Graceful shutdown (clients get `goodbye`), waiting until the listener is closed.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("server stops in time")
                .expect("server task")
                .expect("server ran");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A hub with a durable store shared across "restarts".
pub async fn hub_with_store(store: Arc<dyn Store>) -> Hub {
    let mut config = test_config();
    config.store = Some(store);
    Hub::spawn(config).await.expect("hub starts")
}

/// Waits for a hub event.
pub async fn wait_event(
    events: &mut broadcast::Receiver<Event>,
    what: &str,
    mut matches: impl FnMut(&Event) -> bool,
) -> Event {
    let found = tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(event) if matches(&event) => return event,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("hub closed waiting for {what}"),
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// The CLI's state directory for these tests (token files are per server URL, so tests
/// with their own servers do not meet).
pub fn shared_state_dir() -> PathBuf {
    std::env::temp_dir().join(format!("chat-cli-test-{}", std::process::id()))
}

/// A fresh state directory: a CLI with no remembered tokens.
pub fn state_dir() -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("chat-cli-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// `chat-cli` with the URL, a name and an isolated state directory.
pub fn cli(url: &str, name: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env("CHAT_URL", url)
        .env("CHAT_NAME", name)
        .env("XDG_STATE_HOME", shared_state_dir())
        .env_remove("CHAT_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// The result of a finished run.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs to completion (within [`WAIT`]).
pub async fn run(mut cmd: Command) -> Output {
    let child = cmd.spawn().expect("spawn chat-cli");
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("chat-cli finishes in time")
        .expect("chat-cli runs");
    Output {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(out.stderr).expect("stderr is UTF-8"),
    }
}

/// A running `chat-cli`, its output read line by line.
pub struct Running {
    pub child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: mpsc::UnboundedReceiver<String>,
    pub seen: Vec<String>,
}

fn read_lines(from: impl AsyncRead + Unpin + Send + 'static) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(from).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Running {
    pub fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd.spawn().expect("spawn chat-cli");
        let lines = read_lines(child.stdout.take().expect("stdout piped"));
        let stderr = read_lines(child.stderr.take().expect("stderr piped"));
        Running {
            child,
            lines,
            stderr,
            seen: Vec::new(),
        }
    }

    /// The next stdout line; fails the test after [`WAIT`].
    pub async fn line(&mut self) -> String {
        match tokio::time::timeout(WAIT, self.lines.recv()).await {
            Ok(Some(line)) => {
                self.seen.push(line.clone());
                line
            }
            Ok(None) => {
                let stderr = self.stderr_now();
                panic!(
                    "chat-cli closed stdout; saw {:?}; stderr {stderr:?}",
                    self.seen
                )
            }
            Err(_) => {
                let stderr = self.stderr_now();
                panic!(
                    "no line from chat-cli in time; saw {:?}; stderr {stderr:?}",
                    self.seen
                )
            }
        }
    }

    /// The next `n` stdout lines.
    pub async fn lines(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.line().await);
        }
        out
    }

    /// What stderr said so far.
    pub fn stderr_now(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(line) = self.stderr.try_recv() {
            out.push(line);
        }
        out
    }

    /// Waits for the exit code, then returns the rest of stdout.
    pub async fn finish(mut self) -> (Option<i32>, Vec<String>) {
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("chat-cli exits in time")
            .expect("wait");
        let mut rest = Vec::new();
        while let Some(line) = tokio::time::timeout(WAIT, self.lines.recv())
            .await
            .expect("stdout closes")
        {
            rest.push(line);
        }
        (status.code(), rest)
    }
}

/// A raw protocol client: "another user" for the CLI under test.
pub struct Peer {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Peer {
    /// Connects, says hello as `name` and joins `rooms`.
    pub async fn join(url: &str, name: &str, rooms: &[&str]) -> Peer {
        Peer::join_with(url, name, None, rooms).await
    }

    /// [`Peer::join`] with a token: another session of the user who holds it.
    pub async fn join_with(url: &str, name: &str, token: Option<&str>, rooms: &[&str]) -> Peer {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("connect");
        let mut peer = Peer { ws, next_id: 1 };
        peer.send_frame(&ClientFrame::Hello(HelloRequest {
            id: None,
            version: PROTOCOL_VERSION,
            name: name.into(),
            token: token.map(str::to_owned),
            rooms: Some(
                rooms
                    .iter()
                    .map(|r| chat_core::protocol::JoinSpec {
                        room: (*r).into(),
                        since: None,
                    })
                    .collect(),
            ),
        }))
        .await;
        peer.expect(|f| matches!(f, ServerFrame::Welcome { .. }), "welcome")
            .await;
        for _ in rooms {
            peer.expect(|f| matches!(f, ServerFrame::Joined { .. }), "joined")
                .await;
        }
        peer
    }

    pub async fn send_frame(&mut self, frame: &ClientFrame) {
        let text = serde_json::to_string(frame).expect("serialize");
        self.ws.send(WsMessage::text(text)).await.expect("send");
    }

    /// Posts a message and waits for its ack; returns its seq.
    pub async fn say(&mut self, room: &str, body: &str) -> Seq {
        let id = self.next_id;
        self.next_id += 1;
        self.send_frame(&ClientFrame::Send(SendRequest {
            id: Some(chat_core::RequestId(id)),
            room: Some(room.into()),
            to: None,
            body: body.into(),
            client_id: None,
            reply_to: None,
        }))
        .await;
        match self
            .expect(
                |f| matches!(f, ServerFrame::Ack { id: Some(i), .. } | ServerFrame::Error { id: Some(i), .. } if *i == chat_core::RequestId(id)),
                "ack",
            )
            .await
        {
            ServerFrame::Ack { seq, .. } => seq,
            other => panic!("message refused: {other:?}"),
        }
    }

    /// Reads frames until one matches.
    pub async fn expect(
        &mut self,
        mut matches: impl FnMut(&ServerFrame) -> bool,
        what: &str,
    ) -> ServerFrame {
        let found = tokio::time::timeout(WAIT, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(WsMessage::Text(text))) => {
                        let frame: ServerFrame =
                            serde_json::from_str(text.as_str()).expect("server frame");
                        if matches(&frame) {
                            return frame;
                        }
                    }
                    Some(Ok(_)) => {}
                    other => panic!("connection ended waiting for {what}: {other:?}"),
                }
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }
}

/// The payloads another user could send to take over a terminal, with the visible form
/// each must be shown as.
pub const HOSTILE: &[(&str, &str)] = &[
    ("clear \x1b[2J\x1b[H screen", "clear \\x1b[2J\\x1b[H screen"),
    (
        "clip \x1b]52;c;cm0gLXJmIH4=\x07 board",
        "clip \\x1b]52;c;cm0gLXJmIH4=\\x07 board",
    ),
    (
        "link \x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\ here",
        "link \\x1b]8;;http://evil.example/\\x1b\\click\\x1b]8;;\\x1b\\ here",
    ),
    (
        "c1 \u{9b}31mred\u{9b}0m csi",
        "c1 \\u{9b}31mred\\u{9b}0m csi",
    ),
    ("bell \x07\x07 ring", "bell \\x07\\x07 ring"),
    (
        "back abc\x08\x08\x08xyz space",
        "back abc\\x08\\x08\\x08xyz space",
    ),
    (
        "innocent text\rEVIL OVERWRITE",
        "innocent text\\rEVIL OVERWRITE",
    ),
    (
        "bidi abc\u{202e}fed\u{202c} end",
        "bidi abc\\u{202e}fed\\u{202c} end",
    ),
    (
        "zero\u{200b}width\u{2060}join\u{feff}",
        "zero\\u{200b}width\\u{2060}join\\u{feff}",
    ),
    ("next\nline <admin> fake", "next\\nline <admin> fake"),
];

/// Whether text holds anything a terminal would act on: ESC, C1 controls, other C0
/// controls, or bidi/invisible format characters.
pub fn has_raw_controls(text: &str) -> bool {
    text.chars().any(|c| {
        c == '\x1b'
            || ('\u{80}'..='\u{9f}').contains(&c)
            || (c.is_control() && c != '\n')
            || chat_core::is_invisible(c)
    })
}
