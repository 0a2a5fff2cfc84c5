//! The real example server as a child process, for the root package's tests.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

pub mod redis;

/// Upper bound for starting and stopping the server (not a speed assertion).
const WAIT: Duration = Duration::from_secs(60);

/// `target/<profile>/examples/server`, which `cargo test` builds for this package.
#[allow(dead_code)] // used directly by the tests that run it without ServerProcess
pub fn server_binary() -> PathBuf {
    // target/debug/deps/<test>-… → target/debug/examples/server
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir
        .join("examples")
        .join(format!("server{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} missing: `cargo test -p chat` builds the examples (a `--test` filter alone does not)",
        bin.display()
    );
    bin
}

/// The example server on `127.0.0.1:0`; killed if dropped.
pub struct ServerProcess {
    child: Option<Child>,
    /// `host:port` it listens on, read from its `listening on` line.
    pub addr: String,
}

impl ServerProcess {
    /// Starts the server with `--addr 127.0.0.1:0 --log warn` and these arguments.
    pub fn start<I, S>(args: I) -> ServerProcess
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = Command::new(server_binary())
            .args(["--addr", "127.0.0.1:0", "--log", "warn"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the example server");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Reads the port, then keeps draining the pipe so the server never blocks on it.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(WAIT)
            .expect("the server prints its address");
        ServerProcess {
            child: Some(child),
            addr,
        }
    }

    /// Sends a signal with `kill` (e.g. `-TERM`, `-STOP`).
    #[allow(dead_code)] // not every test signals the server
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// `kill -9` (also of a stopped process).
    #[allow(dead_code)] // not every test crashes the server
    pub fn crash(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
    }

    /// Waits (bounded) for the process to exit; returns its status.
    #[allow(dead_code)] // not every test waits for the exit
    pub fn wait(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        rx.recv_timeout(WAIT)
            .expect("the server exits")
            .expect("wait")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// GET over a plain socket; the whole answer as text.
#[allow(dead_code)] // the tests that read /metrics
pub async fn get(addr: &str, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    http(addr, &request).await
}

/// Writes one HTTP request over a plain socket and reads the whole answer as text.
#[allow(dead_code)]
async fn http(addr: &str, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut out = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut out))
        .await
        .expect("answer in time")
        .expect("read");
    out
}

/// The value of one Prometheus sample line (`name{labels} value`), 0 when absent.
#[allow(dead_code)] // the tests that read /metrics
pub fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

/// `POST path` with a form body to the example server's host controls (`--admin-addr`),
/// with `token` as the bearer; the whole answer as text.
#[allow(dead_code)] // the tests that use the host's controls
pub async fn admin_post(addr: &str, token: &str, path: &str, form: &str) -> String {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{form}",
        form.len()
    );
    http(addr, &request).await
}

/// A client's WebSocket to the example server.
#[allow(dead_code)]
pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next server frame on `ws`; `None` once it is closed.
#[allow(dead_code)]
pub async fn read_frame(ws: &mut Socket) -> Option<chat_core::protocol::ServerFrame> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message as Ws;
    loop {
        match ws.next().await? {
            Ok(Ws::Text(t)) => return serde_json::from_str(&t).ok(),
            Ok(Ws::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Reads frames until `pick` takes one (within `wait`).
#[allow(dead_code)]
pub async fn until_frame<T>(
    ws: &mut Socket,
    wait: Duration,
    mut pick: impl FnMut(chat_core::protocol::ServerFrame) -> Option<T>,
) -> T {
    tokio::time::timeout(wait, async {
        loop {
            let frame = read_frame(ws).await.expect("connection open");
            if let Some(t) = pick(frame) {
                return t;
            }
        }
    })
    .await
    .expect("the frame comes")
}

/// Sends `frame` (a `send` or a change, with an id) and waits for its `ack`; an `error`
/// instead fails the test.
#[allow(dead_code)]
pub async fn send_acked(ws: &mut Socket, wait: Duration, frame: serde_json::Value) {
    use chat_core::protocol::ServerFrame;
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message as Ws;
    ws.send(Ws::text(frame.to_string())).await.expect("send");
    until_frame(ws, wait, |f| match f {
        ServerFrame::Ack { .. } => Some(()),
        ServerFrame::Error { message, .. } => panic!("refused: {message}"),
        _ => None,
    })
    .await;
}
