//! `load`: the end-to-end load generator of the chat benchmark (issue 7).
//!
//! Drives one server (ours, or a peer under `benches/peers/`) over real WebSockets on
//! loopback from many client tasks on one thread (pin it with `taskset`), runs one
//! workload, and prints one result as a JSON line (appended to `--out` too). Every phase
//! is bounded in count and time, and the tool stops by itself.
//!
//! ```text
//! load fanout --label ours --addr 127.0.0.1:5000 --pid 1234 --clients 100 --senders 10
//! load fanout --label node --proto sio --addr 127.0.0.1:5001 --clients 100 --rate 200
//! load fanout --label ours --addr 127.0.0.1:5000 --pid 1234 --clients 100 --senders 10 --in-flight 8
//! load rooms  --label ours --addr 127.0.0.1:5000 --rooms 200 --members 5 --rate 2000
//! load idle   --label ours --addr 127.0.0.1:5000 --clients 5000
//! load join   --label ours --addr 127.0.0.1:5000 --clients 1000
//! load storm  --label ours --addr 127.0.0.1:5000 --clients 3000 --protocol-version 2
//! load durable --label ours --addr 127.0.0.1:5000 --clients 100   (a server with a store)
//! load floor  --clients 100 --rate 200   (the machine's floor: no server, see floor.rs)
//! load report results.jsonl > table.md
//! ```
//!
//! Every message body starts with its send time (ns since the tool started), so each
//! receiver records the end-to-end latency in an HDR histogram. The server's CPU time
//! (utime + stime of `/proc/PID/stat`) is read before and after the measured phase.

mod floor;
mod procfs;
mod report;
mod wire;

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use futures::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use procfs::Snapshot;
use wire::{In, Proto};

#[derive(Debug, Parser)]
#[command(about = "Load generator for the chat server and its peers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// C clients in one room; S of them send, at a fixed total rate or as fast as a
    /// window of in-flight deliveries allows.
    Fanout {
        #[command(flatten)]
        target: Target,
        /// Clients in the room.
        #[arg(long, default_value_t = 100)]
        clients: usize,
        /// How many of them send.
        #[arg(long, default_value_t = 10)]
        senders: usize,
        /// Total messages per second; 0 = as fast as possible (closed loop: at most
        /// `--window` messages' deliveries in flight).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Messages whose deliveries may be in flight in the closed loop (default: about
        /// 200,000 deliveries, at most 400 messages: a sender's own queue on the server,
        /// messages plus acks, stays below the default 1,024 frames).
        #[arg(long)]
        window: Option<u64>,
        /// The saturated workload: each sender keeps this many of its own messages in
        /// flight, sending the next when one is answered (our `ack`; for Socket.IO, its
        /// own copy of the message), instead of the shared `--window`. Needs `--rate 0`.
        #[arg(long)]
        in_flight: Option<usize>,
        /// Seconds of sending.
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Body size in bytes.
        #[arg(long, default_value_t = 64)]
        body: usize,
    },
    /// Many rooms of a few members each; everyone talks at a fixed total rate.
    Rooms {
        #[command(flatten)]
        target: Target,
        /// Number of rooms.
        #[arg(long, default_value_t = 200)]
        rooms: usize,
        /// Members per room.
        #[arg(long, default_value_t = 5)]
        members: usize,
        /// Total messages per second, spread over every client.
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        /// Seconds of sending.
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Body size in bytes.
        #[arg(long, default_value_t = 64)]
        body: usize,
    },
    /// Fanout against a server with a durable store: acknowledged sends per second
    /// (every message is committed before it is acked and delivered).
    Durable {
        #[command(flatten)]
        target: Target,
        /// Clients in the room.
        #[arg(long, default_value_t = 100)]
        clients: usize,
        /// How many of them send.
        #[arg(long, default_value_t = 10)]
        senders: usize,
        /// Messages in flight (closed loop).
        #[arg(long)]
        window: Option<u64>,
        /// Seconds of sending.
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Body size in bytes.
        #[arg(long, default_value_t = 64)]
        body: usize,
    },
    /// N idle connections: the server's RSS per connection and the connect rate.
    Idle {
        #[command(flatten)]
        target: Target,
        /// Connections.
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Seconds to hold them before reading the RSS.
        #[arg(long, default_value_t = 1.0)]
        hold: f64,
    },
    /// N connected clients log in to one room at once: time until every client has
    /// heard of every other (its member list plus the join notices).
    Join {
        #[command(flatten)]
        target: Target,
        /// Clients.
        #[arg(long, default_value_t = 1000)]
        clients: usize,
    },
    /// Connect storm: N clients connect and join one room as fast as they can (each logs
    /// in as soon as its socket is open): connections per second (first connect to last
    /// `joined`), then the settle time (from the last `joined` to the last frame any
    /// client received before 1.5 s without one).
    Storm {
        #[command(flatten)]
        target: Target,
        /// Clients.
        #[arg(long, default_value_t = 1000)]
        clients: usize,
    },
    /// The machine's floor for the fixed-rate fanout: one thread on the server's core
    /// writes each message to every recipient socket, no server involved.
    Floor {
        /// Name in the results.
        #[arg(long, default_value = "floor")]
        label: String,
        /// Recipient sockets.
        #[arg(long, default_value_t = 100)]
        clients: usize,
        /// Messages per second.
        #[arg(long, default_value_t = 200)]
        rate: u64,
        /// Seconds of sending.
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Core of the writing thread.
        #[arg(long, default_value_t = 0)]
        server_cpu: usize,
        /// Core of the receiving thread.
        #[arg(long, default_value_t = 1)]
        load_cpu: usize,
        /// Appends the result (a JSON line) to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Renders JSON-line results as the markdown tables of docs/BENCHMARKS.md.
    Report {
        /// Result files (JSON lines).
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Clone, Args)]
struct Target {
    /// Server name in the results.
    #[arg(long)]
    label: String,
    /// Protocol the server speaks.
    #[arg(long, value_enum, default_value = "chat")]
    proto: Proto,
    /// Server address (loopback); several, comma-separated, spread the clients over
    /// them in turn (client i on address i mod n: the nodes of a cluster).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:5000")]
    addr: Vec<String>,
    /// Our protocol version to ask for in `hello`: 1 (per-user `user_joined`, the N² join
    /// path; the default, so older figures stay comparable) or 2 (coalesced `presence`
    /// frames, `count` in `joined`). Ignored for Socket.IO.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    protocol_version: u8,
    /// WebSocket path (default: `/ws`, or the Socket.IO path).
    #[arg(long)]
    path: Option<String>,
    /// Server pid, for its CPU time and RSS; several, comma-separated, for the nodes of
    /// a cluster (CPU time summed, RSS of the first).
    #[arg(long, value_delimiter = ',')]
    pid: Vec<u32>,
    /// The pid of the Redis a cluster runs on: its CPU time per message sent.
    #[arg(long)]
    redis_pid: Option<u32>,
    /// Appends the result (a JSON line) to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Bound on connecting and joining, in seconds.
    #[arg(long, default_value_t = 60.0)]
    setup_secs: f64,
    /// Connection attempts in flight at once. Keep it below every server's listen
    /// backlog (128 is common): an overflowing accept queue drops the SYN and the client
    /// retries after 1 s, which measures the backlog, not the server.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
}

/// One run's result: one JSON line.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    /// Server label.
    pub server: String,
    /// fanout, rooms, idle, join.
    pub workload: String,
    /// Human summary of the parameters.
    pub params: String,
    /// Clients asked for.
    pub clients: usize,
    /// Total message rate asked for (0 = as fast as possible).
    pub rate: u64,
    /// Clients that connected (and joined, where the workload joins).
    pub ready: usize,
    /// Messages sent in the measured phase.
    pub sent: u64,
    /// Deliveries expected (each message times its room's members).
    pub expected: u64,
    /// Deliveries received.
    pub received: u64,
    /// Expected minus received.
    pub lost: i64,
    /// Connections the server closed or broke during the run.
    pub dropped: usize,
    /// Error frames received.
    pub errors: u64,
    /// Seconds from the first send to the last delivery.
    pub secs: f64,
    /// Deliveries per second.
    pub deliveries_per_s: f64,
    /// Acknowledged sends per second (our protocol only).
    #[serde(default)]
    pub acked_per_s: f64,
    /// End-to-end latency percentiles, microseconds.
    pub p50_us: Option<f64>,
    /// 99th percentile.
    pub p99_us: Option<f64>,
    /// 99.9th percentile.
    pub p999_us: Option<f64>,
    /// Maximum.
    pub max_us: Option<f64>,
    /// Server CPU seconds in the measured phase.
    pub server_cpu_s: f64,
    /// Server CPU microseconds per delivery (or per connection for idle, per notice for join,
    /// per client joined for storm).
    pub server_cpu_us_per_unit: Option<f64>,
    /// Server CPU time over wall time in the measured phase (1.0 = one core busy).
    pub server_util: f64,
    /// This tool's CPU time over wall time.
    pub tool_util: f64,
    /// This tool's CPU microseconds per delivery (message runs).
    #[serde(default)]
    pub tool_cpu_us_per_unit: Option<f64>,
    /// Server RSS growth per connection, KiB (idle).
    pub rss_per_conn_kib: Option<f64>,
    /// Server RSS before and after, KiB (idle).
    pub rss_kib: Option<(u64, u64)>,
    /// Connections per second (idle: all N connected and logged in, over the time taken).
    pub connects_per_s: Option<f64>,
    /// Seconds until every client heard of every other (join); from the first connect to
    /// the last `joined` (storm).
    pub join_s: Option<f64>,
    /// Storm: seconds from the last `joined` to the last frame any client received
    /// before 1.5 s of quiet.
    #[serde(default)]
    pub settle_s: Option<f64>,
    /// Storm: text frames the clients received in all.
    #[serde(default)]
    pub frames: u64,
    /// Join notices received (join).
    pub notices: u64,
    /// Server processes (the nodes of a cluster; 1 for a single server).
    #[serde(default)]
    pub nodes: usize,
    /// Redis CPU microseconds per message sent (cluster runs with `--redis-pid`).
    #[serde(default)]
    pub redis_cpu_us_per_msg: Option<f64>,
    /// Anything the reader should know.
    pub note: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Report { files } = &cli.command {
        let mut outcomes = Vec::new();
        for f in files {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                outcomes.push(serde_json::from_str(line).context("a result line")?);
            }
        }
        print!("{}", report::markdown(&outcomes));
        return Ok(());
    }
    if let Command::Floor {
        label,
        clients,
        rate,
        secs,
        server_cpu,
        load_cpu,
        out,
    } = &cli.command
    {
        let spec = floor::Floor {
            clients: *clients,
            rate: *rate,
            secs: *secs,
            server_cpu: *server_cpu,
            load_cpu: *load_cpu,
        };
        let outcome = floor::run(label, &spec)?;
        return emit(&outcome, out.as_deref());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, run(cli.command))
}

async fn run(command: Command) -> anyhow::Result<()> {
    let (target, outcome) = match command {
        Command::Fanout {
            target,
            clients,
            senders,
            rate,
            window,
            in_flight,
            secs,
            body,
        } => {
            anyhow::ensure!(
                in_flight.is_none() || rate == 0,
                "--in-flight is a closed loop: it needs --rate 0"
            );
            let spec = Talk {
                clients,
                room_size: clients,
                senders: senders.clamp(1, clients.max(1)),
                rate,
                window,
                in_flight: in_flight.map(|n| n.max(1)),
                secs,
                body,
            };
            let o = talk(&target, "fanout", spec).await;
            (target, o)
        }
        Command::Durable {
            target,
            clients,
            senders,
            window,
            secs,
            body,
        } => {
            let spec = Talk {
                clients,
                room_size: clients,
                senders: senders.clamp(1, clients.max(1)),
                rate: 0,
                window,
                in_flight: None,
                secs,
                body,
            };
            let o = talk(&target, "durable", spec).await;
            (target, o)
        }
        Command::Rooms {
            target,
            rooms,
            members,
            rate,
            secs,
            body,
        } => {
            let spec = Talk {
                clients: rooms * members,
                room_size: members.max(1),
                senders: rooms * members,
                rate: rate.max(1),
                window: None,
                in_flight: None,
                secs,
                body,
            };
            let o = talk(&target, "rooms", spec).await;
            (target, o)
        }
        Command::Idle {
            target,
            clients,
            hold,
        } => {
            let o = idle(&target, clients, hold).await;
            (target, o)
        }
        Command::Join { target, clients } => {
            let o = join(&target, clients).await;
            (target, o)
        }
        Command::Storm { target, clients } => {
            let o = storm(&target, clients).await;
            (target, o)
        }
        Command::Report { .. } | Command::Floor { .. } => unreachable!("handled in main"),
    };
    emit(&outcome, target.out.as_deref())
}

/// Prints the result (a JSON line on stdout, a summary on stderr) and appends it to `out`.
fn emit(outcome: &Outcome, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    let line = serde_json::to_string(outcome)?;
    println!("{line}");
    eprintln!("{}", report::one_line(outcome));
    if let Some(out) = out {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)
            .with_context(|| format!("opening {}", out.display()))?;
        writeln!(f, "{line}")?;
    }
    Ok(())
}

type Ws = WebSocketStream<TcpStream>;

/// How a client logs in.
#[derive(Debug, Clone)]
enum Login {
    /// Never (Socket.IO idle: the namespace connection is the session).
    Never,
    /// Without joining a room (our idle: `hello` with no rooms).
    NoRoom,
    /// Into this room.
    Room(Rc<str>),
}

/// How a sending client paces itself.
#[derive(Debug, Clone, Copy)]
enum Pace {
    /// One message per period (open loop; the schedule catches up when late).
    Every(Duration),
    /// As fast as the shared window of in-flight deliveries allows.
    Window,
    /// Each sender keeps this many of its own messages unanswered, no more.
    InFlight(usize),
}

#[derive(Debug, Clone)]
struct ClientSpec {
    idx: usize,
    login: Login,
    /// Members of its room, itself included (how many users it should hear of).
    room_size: usize,
    pace: Option<Pace>,
    /// Where in the sending period this sender starts (0..1), for fixed rates.
    slot: Option<f64>,
}

/// State shared by every client task (one thread: cells, no locks).
struct Shared {
    proto: Proto,
    /// Our protocol version (`hello`); 1 for Socket.IO.
    version: u8,
    epoch: Instant,
    /// One per server address; client i uses entry i mod n.
    urls: Vec<String>,
    addrs: Vec<String>,
    body: String,
    connected: Cell<usize>,
    failed: Cell<usize>,
    welcomed: Cell<usize>,
    joined: Cell<usize>,
    /// When the latest `joined` arrived.
    joined_at: Cell<Option<Instant>>,
    /// Text frames received, of any kind.
    frames: Cell<u64>,
    /// When the latest text frame of any kind arrived.
    last_frame: Cell<Instant>,
    /// Clients that heard of every other member of their room.
    complete: Cell<usize>,
    complete_at: Cell<Option<Instant>>,
    notices: Cell<u64>,
    received: Cell<u64>,
    last_rx: Cell<Instant>,
    sent: Cell<u64>,
    acks: Cell<u64>,
    errors: Cell<u64>,
    dropped: Cell<usize>,
    hist: RefCell<Histogram<u64>>,
    /// Deliveries per message (closed loop).
    fanout: Cell<u64>,
    /// Deliveries allowed in flight (closed loop).
    window: Cell<u64>,
    waiting: Cell<usize>,
    progress: Notify,
    stop: Cell<bool>,
    login: watch::Receiver<bool>,
    go: watch::Receiver<bool>,
    first_error: RefCell<Option<String>>,
    /// Bytes per socket read (tungstenite's read buffer, allocated per connection).
    read_buffer: Cell<usize>,
}

impl Shared {
    fn new(
        target: &Target,
        body: usize,
        login: watch::Receiver<bool>,
        go: watch::Receiver<bool>,
    ) -> Rc<Shared> {
        let path = target
            .path
            .clone()
            .unwrap_or_else(|| target.proto.default_path().to_owned());
        let now = Instant::now();
        Rc::new(Shared {
            proto: target.proto,
            version: match target.proto {
                Proto::Chat => target.protocol_version,
                Proto::Sio => 1,
            },
            epoch: now,
            urls: target
                .addr
                .iter()
                .map(|a| format!("ws://{a}{path}"))
                .collect(),
            addrs: target.addr.clone(),
            body: "x".repeat(body.saturating_sub(21).max(1)),
            connected: Cell::new(0),
            failed: Cell::new(0),
            welcomed: Cell::new(0),
            joined: Cell::new(0),
            joined_at: Cell::new(None),
            frames: Cell::new(0),
            last_frame: Cell::new(now),
            complete: Cell::new(0),
            complete_at: Cell::new(None),
            notices: Cell::new(0),
            received: Cell::new(0),
            last_rx: Cell::new(now),
            sent: Cell::new(0),
            acks: Cell::new(0),
            errors: Cell::new(0),
            dropped: Cell::new(0),
            hist: RefCell::new(
                Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("valid bounds"),
            ),
            fanout: Cell::new(1),
            window: Cell::new(u64::MAX),
            waiting: Cell::new(0),
            progress: Notify::new(),
            stop: Cell::new(false),
            login,
            go,
            first_error: RefCell::new(None),
            read_buffer: Cell::new(16 * 1024),
        })
    }

    fn nanos(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn may_send(&self) -> bool {
        let in_flight = (self.sent.get() + 1) * self.fanout.get();
        in_flight <= self.received.get().saturating_add(self.window.get())
    }

    fn note_error(&self, e: impl std::fmt::Display) {
        let mut first = self.first_error.borrow_mut();
        if first.is_none() {
            *first = Some(e.to_string());
        }
    }
}

fn inc(c: &Cell<usize>) {
    c.set(c.get() + 1);
}

async fn open(shared: &Shared, idx: usize) -> anyhow::Result<Ws> {
    let server = idx % shared.addrs.len().max(1);
    let tcp = TcpStream::connect(&shared.addrs[server]).await?;
    tcp.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .read_buffer_size(shared.read_buffer.get())
        .write_buffer_size(0)
        .max_message_size(Some(16 << 20));
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(
        shared.urls[server].as_str(),
        tcp,
        Some(config),
    )
    .await?;
    if shared.proto == Proto::Sio {
        // engine.io open packet, then connect to the default namespace.
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if shared.proto.classify(&t) == In::Open => break,
                Some(Ok(_)) => {}
                other => anyhow::bail!("no engine.io open packet: {other:?}"),
            }
        }
        ws.send(Message::text("40")).await?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => match shared.proto.classify(&t) {
                    In::Welcome => break,
                    In::Ping => ws.send(Message::text("3")).await?,
                    In::Error => anyhow::bail!("namespace connect refused: {t}"),
                    _ => {}
                },
                Some(Ok(_)) => {}
                other => anyhow::bail!("no namespace connect: {other:?}"),
            }
        }
    }
    Ok(ws)
}

async fn client(shared: Rc<Shared>, spec: ClientSpec, gate: Rc<Semaphore>) {
    let permit = gate.acquire().await;
    let ws = match open(&shared, spec.idx).await {
        Ok(ws) => ws,
        Err(e) => {
            shared.note_error(format!("connect: {e}"));
            inc(&shared.failed);
            return;
        }
    };
    drop(permit);
    inc(&shared.connected);
    if let Err(e) = session(&shared, ws, spec).await {
        shared.note_error(e);
    }
}

async fn session(shared: &Shared, mut ws: Ws, spec: ClientSpec) -> anyhow::Result<()> {
    // Unique per run: a name stays taken for the presence grace after a run ends.
    let name = format!("u{}x{}", std::process::id(), spec.idx);
    let room: Rc<str> = match &spec.login {
        Login::Room(r) => r.clone(),
        _ => "general".into(),
    };
    let mut login = shared.login.clone();
    let mut logged_in = matches!(spec.login, Login::Never);
    let mut go = shared.go.clone();
    let mut started = spec.pace.is_none();
    let mut sending = false;
    let mut next_due = tokio::time::Instant::now();
    let mut known = 0usize;
    // Send times of this client's messages not answered yet, oldest first.
    let mut mine: std::collections::VecDeque<u64> = std::collections::VecDeque::new();
    let mut complete = false;
    let mut has_joined = false;
    let wants = spec.room_size.saturating_sub(1);
    loop {
        if !logged_in && *login.borrow() {
            let frame = match &spec.login {
                Login::Room(r) => shared.proto.login(shared.version, &name, Some(r)),
                _ => shared.proto.login(shared.version, &name, None),
            };
            ws.send(Message::text(frame)).await?;
            logged_in = true;
        }
        if !started && *go.borrow() {
            started = true;
            sending = true;
            // Fixed rate: senders spread evenly over the period, not all at once.
            next_due = tokio::time::Instant::now();
            if let (Some(Pace::Every(period)), Some(slot)) = (spec.pace, spec.slot) {
                next_due += period.mul_f64(slot);
            }
        }
        let room_for_more = match spec.pace {
            Some(Pace::InFlight(n)) => mine.len() < n,
            _ => true,
        };
        let due = async {
            match spec.pace {
                // Woken by the answer that makes room: it arrives on this socket.
                Some(Pace::InFlight(_)) if !room_for_more => std::future::pending().await,
                Some(Pace::InFlight(_)) => {}
                Some(Pace::Every(period)) => {
                    tokio::time::sleep_until(next_due).await;
                    next_due += period;
                }
                Some(Pace::Window) | None => {
                    while !shared.may_send() {
                        shared.waiting.set(shared.waiting.get() + 1);
                        shared.progress.notified().await;
                        shared.waiting.set(shared.waiting.get() - 1);
                    }
                }
            }
        };
        // Unbiased: a sender whose socket always has frames to read must still send.
        tokio::select! {
            next = ws.next() => {
                // Take every frame already read (one clock read for them all: they
                // arrived together), not one select round per frame.
                let at = Instant::now();
                let now = u64::try_from((at - shared.epoch).as_nanos()).unwrap_or(u64::MAX);
                let mut next = next;
                let mut got = false;
                loop {
                    match next {
                        Some(Ok(Message::Text(text))) => {
                            shared.frames.set(shared.frames.get() + 1);
                            shared.last_frame.set(at);
                            got |= receive(shared, &mut ws, &text, now, &mut known, &mut has_joined, &mut mine).await?;
                        }
                        Some(Ok(Message::Close(_))) | None => {
                            inc(&shared.dropped);
                            return Ok(());
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            inc(&shared.dropped);
                            return Err(e.into());
                        }
                    }
                    match ws.next().now_or_never() {
                        Some(more) => next = more,
                        None => break,
                    }
                }
                if got {
                    shared.last_rx.set(at);
                    if shared.waiting.get() > 0 && shared.may_send() {
                        shared.progress.notify_waiters();
                    }
                }
                if !complete && has_joined && known >= wants {
                    complete = true;
                    inc(&shared.complete);
                    shared.complete_at.set(Some(Instant::now()));
                }
            }
            _ = login.changed(), if !logged_in => {}
            _ = go.changed(), if !started => {}
            () = due, if sending => {
                if shared.stop.get() {
                    sending = false;
                    continue;
                }
                let at = shared.nanos();
                let body = format!("{at:020} {}", shared.body);
                if matches!(spec.pace, Some(Pace::InFlight(_))) {
                    mine.push_back(at);
                }
                ws.send(Message::text(shared.proto.send(&room, &body))).await?;
                shared.sent.set(shared.sent.get() + 1);
            }
        }
    }
}

/// Counts one incoming text frame received at `now` (ns since the epoch). True for a
/// room message.
async fn receive(
    shared: &Shared,
    ws: &mut Ws,
    text: &str,
    now: u64,
    known: &mut usize,
    has_joined: &mut bool,
    mine: &mut std::collections::VecDeque<u64>,
) -> anyhow::Result<bool> {
    match shared.proto.classify(text) {
        In::Message(ts) => {
            shared.received.set(shared.received.get() + 1);
            // Socket.IO has no ack: a sender's own copy answers its message. Not
            // necessarily in the order it sent them: socketioxide runs each event's
            // handler as its own task, so two of one sender's messages can be emitted
            // out of order (matching only the oldest leaked a slot per swap, and the
            // saturated mode stalled after ~15 messages per sender).
            if shared.proto == Proto::Sio
                && let Some(ts) = ts
                && let Some(i) = mine.iter().position(|m| *m == ts)
            {
                mine.remove(i);
            }
            if let Some(ts) = ts {
                shared
                    .hist
                    .borrow_mut()
                    .saturating_record(now.saturating_sub(ts).max(1));
            }
            return Ok(true);
        }
        In::Joined(members) => {
            inc(&shared.joined);
            // The batch's arrival time, the clock `last_frame` uses too.
            shared
                .joined_at
                .set(Some(shared.epoch + Duration::from_nanos(now)));
            *has_joined = true;
            if shared.version >= 2 {
                // Version 2's `count` is the room's size, not a delta.
                *known = members.saturating_sub(1);
            } else {
                *known += members.saturating_sub(1);
            }
        }
        In::Presence(count) => {
            if let Some(count) = count {
                *known = count.saturating_sub(1);
            }
        }
        In::UserJoined => {
            shared.notices.set(shared.notices.get() + 1);
            *known += 1;
        }
        In::Welcome => inc(&shared.welcomed),
        In::Ping => ws.send(Message::text("3")).await?,
        In::Error => {
            shared.errors.set(shared.errors.get() + 1);
            shared.note_error(format!("error frame: {text}"));
        }
        In::Ack => {
            shared.acks.set(shared.acks.get() + 1);
            mine.pop_front();
        }
        In::Open | In::Other => {}
    }
    Ok(false)
}

/// Polls `done` every few ms until it holds or `limit` passes. True when it held.
async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The server pids as `/proc` names (every node of a cluster).
fn pids(target: &Target) -> Vec<String> {
    target.pid.iter().map(u32::to_string).collect()
}

fn base(target: &Target, workload: &str, clients: usize) -> Outcome {
    Outcome {
        server: target.label.clone(),
        workload: workload.to_owned(),
        nodes: target.addr.len(),
        clients,
        ..Outcome::default()
    }
}

fn utilization(a: &Snapshot, b: &Snapshot, wall: Duration) -> (f64, f64, f64) {
    let wall = wall.as_secs_f64().max(1e-9);
    let server = b.server.saturating_sub(a.server).as_secs_f64();
    let tool = b.tool.saturating_sub(a.tool).as_secs_f64();
    (server, server / wall, tool / wall)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn spawn_clients(shared: &Rc<Shared>, specs: Vec<ClientSpec>, concurrency: usize) {
    let gate = Rc::new(Semaphore::new(concurrency.max(1)));
    for spec in specs {
        tokio::task::spawn_local(client(shared.clone(), spec, gate.clone()));
    }
}

struct Talk {
    clients: usize,
    room_size: usize,
    senders: usize,
    rate: u64,
    window: Option<u64>,
    in_flight: Option<usize>,
    secs: f64,
    body: usize,
}

/// Fanout and rooms: clients join their rooms, some send, every member receives.
async fn talk(target: &Target, workload: &str, t: Talk) -> Outcome {
    let mut out = base(target, workload, t.clients);
    out.rate = t.rate;
    let pace = if let Some(n) = t.in_flight {
        Pace::InFlight(n)
    } else if t.rate == 0 {
        Pace::Window
    } else {
        Pace::Every(Duration::from_secs_f64(t.senders as f64 / t.rate as f64))
    };
    let window_msgs = t
        .window
        .unwrap_or_else(|| (200_000 / t.room_size.max(1) as u64).clamp(4, 400));
    out.params = match workload {
        "fanout" | "durable" => format!(
            "{} clients, {} senders, {}",
            t.clients,
            t.senders,
            if let Some(n) = t.in_flight {
                format!("saturated ({n} in flight per sender)")
            } else if t.rate == 0 {
                format!("max (window {window_msgs} msgs)")
            } else {
                format!("{} msg/s", t.rate)
            }
        ),
        _ => format!(
            "{} rooms × {} members, {} msg/s",
            t.clients / t.room_size,
            t.room_size,
            t.rate
        ),
    };
    let (_login_tx, login_rx) = watch::channel(true);
    let (go_tx, go_rx) = watch::channel(false);
    let shared = Shared::new(target, t.body, login_rx, go_rx);
    let specs = (0..t.clients)
        .map(|idx| {
            let room: Rc<str> = if workload != "rooms" {
                "general".into()
            } else {
                format!("r{}", idx / t.room_size).into()
            };
            ClientSpec {
                idx,
                login: Login::Room(room),
                room_size: t.room_size.min(t.clients - idx / t.room_size * t.room_size),
                pace: (idx < t.senders).then_some(pace),
                slot: Some(idx as f64 / t.senders.max(1) as f64),
            }
        })
        .collect();
    let setup = Instant::now();
    spawn_clients(&shared, specs, target.concurrency);
    let limit = Duration::from_secs_f64(target.setup_secs);
    // Everyone joined and heard of everyone; or everyone joined and the join notices
    // stopped for 2 s (a server that dropped some: noted, and the run goes on).
    let mut notices = (shared.notices.get(), Instant::now());
    let all_in = wait_until(limit, || {
        let n = shared.notices.get();
        if n != notices.0 {
            notices = (n, Instant::now());
        }
        let settled =
            shared.joined.get() == t.clients && notices.1.elapsed() > Duration::from_secs(2);
        shared.complete.get() == t.clients
            || settled
            || shared.failed.get() > 0
            || shared.errors.get() > 0
    })
    .await;
    out.ready = shared.joined.get();
    let missing_notices = shared.complete.get() < t.clients;
    if !all_in || shared.joined.get() < t.clients {
        out.note = format!(
            "setup incomplete after {:.1} s: {} connected, {} failed, {} joined, {} heard of everyone; {}",
            setup.elapsed().as_secs_f64(),
            shared.connected.get(),
            shared.failed.get(),
            shared.joined.get(),
            shared.complete.get(),
            shared.first_error.borrow().clone().unwrap_or_default()
        );
        out.dropped = shared.dropped.get();
        return out;
    }
    // Let the last join notices and history settle, then measure.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = pids(target);
    let redis_pid = target.redis_pid.map(|p| p.to_string());
    let redis0 = redis_pid.as_deref().and_then(procfs::cpu_time);
    let nodes0: Vec<_> = pid.iter().map(|p| procfs::cpu_time(p)).collect();
    shared.fanout.set(t.room_size as u64);
    shared.window.set(window_msgs * t.room_size as u64);
    shared.hist.borrow_mut().reset();
    let dropped0 = shared.dropped.get();
    let errors0 = shared.errors.get();
    let s0 = Snapshot::take(&pid);
    // Counting starts here (nothing was sent before; history comes inside `joined`).
    shared.received.set(0);
    let _ = go_tx.send(true);
    tokio::time::sleep(Duration::from_secs_f64(t.secs)).await;
    shared.stop.set(true);
    shared.progress.notify_waiters();
    let stopped = Instant::now();
    // Drain: until everything expected arrived, or no progress for 2 s (at most 15 s).
    let expected = |s: &Shared| s.sent.get() * t.room_size as u64;
    let mut last = (shared.received.get(), Instant::now());
    wait_until(Duration::from_secs(15), || {
        let r = shared.received.get();
        if r != last.0 {
            last = (r, Instant::now());
        }
        r >= expected(&shared) || last.1.elapsed() > Duration::from_secs(2)
    })
    .await;
    let s1 = Snapshot::take(&pid);
    let redis1 = redis_pid.as_deref().and_then(procfs::cpu_time);
    let nodes1: Vec<_> = pid.iter().map(|p| procfs::cpu_time(p)).collect();
    let end = shared.last_rx.get().max(stopped.min(s1.at));
    let wall = end.saturating_duration_since(s0.at);
    let (server_cpu, server_util, tool_util) = utilization(&s0, &s1, s1.at - s0.at);
    out.sent = shared.sent.get();
    out.expected = expected(&shared);
    out.received = shared.received.get();
    out.lost = out.expected as i64 - out.received as i64;
    out.dropped = shared.dropped.get() - dropped0;
    out.errors = shared.errors.get() - errors0;
    out.secs = wall.as_secs_f64();
    out.deliveries_per_s = out.received as f64 / out.secs.max(1e-9);
    out.acked_per_s = shared.acks.get() as f64 / out.secs.max(1e-9);
    out.server_cpu_s = server_cpu;
    out.server_util = server_util;
    out.tool_util = tool_util;
    if !target.pid.is_empty() && out.received > 0 {
        out.server_cpu_us_per_unit = Some(server_cpu * 1e6 / out.received as f64);
    }
    if let (Some(a), Some(b)) = (redis0, redis1)
        && out.sent > 0
    {
        out.redis_cpu_us_per_msg = Some(b.saturating_sub(a).as_secs_f64() * 1e6 / out.sent as f64);
    }
    let per_node: Vec<String> = nodes0
        .iter()
        .zip(&nodes1)
        .map(|(a, b)| match (a, b) {
            (Some(a), Some(b)) => format!("{:.2}", b.saturating_sub(*a).as_secs_f64()),
            _ => "?".to_owned(),
        })
        .collect();
    if out.received > 0 {
        let tool_cpu = s1.tool.saturating_sub(s0.tool).as_secs_f64();
        out.tool_cpu_us_per_unit = Some(tool_cpu * 1e6 / out.received as f64);
    }
    let h = shared.hist.borrow();
    if !h.is_empty() {
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        out.p50_us = Some(us(0.5));
        out.p99_us = Some(us(0.99));
        out.p999_us = Some(us(0.999));
        out.max_us = Some(h.max() as f64 / 1000.0);
    }
    if let Some(e) = shared.first_error.borrow().as_ref() {
        out.note = e.clone();
    }
    if per_node.len() > 1 {
        out.note = format!("node CPU s: {}. {}", per_node.join(" / "), out.note);
    }
    if missing_notices {
        out.note = format!(
            "join notices lost in setup: only {} of {} clients heard of everyone. {}",
            shared.complete.get(),
            t.clients,
            out.note
        );
    }
    out
}

/// N idle connections: RSS growth per connection and connections per second.
async fn idle(target: &Target, clients: usize, hold: f64) -> Outcome {
    let mut out = base(target, "idle", clients);
    out.params = format!("{clients} idle connections");
    let (_login_tx, login_rx) = watch::channel(true);
    let (_go_tx, go_rx) = watch::channel(false);
    let shared = Shared::new(target, 0, login_rx, go_rx);
    // An idle client reads one welcome. A 16 KiB buffer each (5,000 of them) made the
    // tool's page faults a tenth of its time while connecting, and the tool is the side
    // that saturates in this workload.
    shared.read_buffer.set(1024);
    let login = match target.proto {
        Proto::Chat => Login::NoRoom,
        Proto::Sio => Login::Never,
    };
    let specs = (0..clients)
        .map(|idx| ClientSpec {
            idx,
            login: login.clone(),
            room_size: 1,
            pace: None,
            slot: None,
        })
        .collect();
    let pid = pids(target);
    let rss0 = pid.first().and_then(|p| procfs::rss_kib(p));
    let s0 = Snapshot::take(&pid);
    spawn_clients(&shared, specs, target.concurrency);
    let ready = |s: &Shared| match target.proto {
        Proto::Chat => s.welcomed.get(),
        Proto::Sio => s.connected.get(),
    };
    let limit = Duration::from_secs_f64(target.setup_secs);
    wait_until(limit, || ready(&shared) + shared.failed.get() >= clients).await;
    let s1 = Snapshot::take(&pid);
    let took = s1.at - s0.at;
    out.ready = ready(&shared);
    out.secs = took.as_secs_f64();
    out.connects_per_s = Some(out.ready as f64 / out.secs.max(1e-9));
    let (server_cpu, server_util, tool_util) = utilization(&s0, &s1, took);
    out.server_cpu_s = server_cpu;
    out.server_util = server_util;
    out.tool_util = tool_util;
    if out.ready > 0 && !target.pid.is_empty() {
        out.server_cpu_us_per_unit = Some(server_cpu * 1e6 / out.ready as f64);
    }
    tokio::time::sleep(Duration::from_secs_f64(hold)).await;
    let rss1 = pid.first().and_then(|p| procfs::rss_kib(p));
    if let (Some(a), Some(b)) = (rss0, rss1) {
        out.rss_kib = Some((a, b));
        if out.ready > 0 {
            out.rss_per_conn_kib = Some(b.saturating_sub(a) as f64 / out.ready as f64);
        }
    }
    out.dropped = shared.dropped.get();
    out.errors = shared.errors.get();
    if out.ready < clients {
        out.note = format!(
            "only {} of {clients} connected in {:.1} s ({} failed); {}",
            out.ready,
            out.secs,
            shared.failed.get(),
            shared.first_error.borrow().clone().unwrap_or_default()
        );
    }
    out
}

/// Join storm: connect N, then all log in to one room at once.
async fn join(target: &Target, clients: usize) -> Outcome {
    let mut out = base(target, "join", clients);
    out.params = format!("{clients} clients join one room at once");
    let (login_tx, login_rx) = watch::channel(false);
    let (_go_tx, go_rx) = watch::channel(false);
    let shared = Shared::new(target, 0, login_rx, go_rx);
    let specs = (0..clients)
        .map(|idx| ClientSpec {
            idx,
            login: Login::Room("general".into()),
            room_size: clients,
            pace: None,
            slot: None,
        })
        .collect();
    spawn_clients(&shared, specs, target.concurrency);
    let limit = Duration::from_secs_f64(target.setup_secs);
    wait_until(limit, || {
        shared.connected.get() + shared.failed.get() >= clients
    })
    .await;
    if shared.connected.get() < clients {
        out.note = format!(
            "only {} of {clients} connected ({} failed); {}",
            shared.connected.get(),
            shared.failed.get(),
            shared.first_error.borrow().clone().unwrap_or_default()
        );
        return out;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = pids(target);
    let s0 = Snapshot::take(&pid);
    let _ = login_tx.send(true);
    let all = wait_until(limit, || {
        shared.complete.get() >= clients || shared.errors.get() > 0
    })
    .await;
    let s1 = Snapshot::take(&pid);
    out.ready = shared.joined.get();
    out.notices = shared.notices.get();
    let end = shared.complete_at.get().unwrap_or(s1.at);
    let took = end.saturating_duration_since(s0.at);
    if all {
        out.join_s = Some(took.as_secs_f64());
    } else {
        out.note = format!(
            "not complete after {:.1} s: {} joined, {} heard of everyone, {} notices; {}",
            ms(s1.at - s0.at) / 1000.0,
            shared.joined.get(),
            shared.complete.get(),
            out.notices,
            shared.first_error.borrow().clone().unwrap_or_default()
        );
    }
    out.secs = took.as_secs_f64();
    let (server_cpu, server_util, tool_util) = utilization(&s0, &s1, s1.at - s0.at);
    out.server_cpu_s = server_cpu;
    out.server_util = server_util;
    out.tool_util = tool_util;
    out.received = out.notices;
    out.expected = (clients * (clients - 1) / 2) as u64;
    if out.notices > 0 && !target.pid.is_empty() {
        out.server_cpu_us_per_unit = Some(server_cpu * 1e6 / out.notices as f64);
    }
    out.dropped = shared.dropped.get();
    out.errors = shared.errors.get();
    out
}

/// Connect storm: N clients connect and join one room at once, each logging in as soon as
/// its socket is open (at most `--concurrency` connection attempts in flight).
async fn storm(target: &Target, clients: usize) -> Outcome {
    let mut out = base(target, "storm", clients);
    let version = match target.proto {
        Proto::Chat => format!(", protocol version {}", target.protocol_version),
        Proto::Sio => String::new(),
    };
    out.params = format!("{clients} clients connect into one room{version}");
    let (_login_tx, login_rx) = watch::channel(true);
    let (_go_tx, go_rx) = watch::channel(false);
    let shared = Shared::new(target, 0, login_rx, go_rx);
    let specs = (0..clients)
        .map(|idx| ClientSpec {
            idx,
            login: Login::Room("general".into()),
            room_size: clients,
            pace: None,
            slot: None,
        })
        .collect();
    let pid = pids(target);
    let s0 = Snapshot::take(&pid);
    spawn_clients(&shared, specs, target.concurrency);
    let limit = Duration::from_secs_f64(target.setup_secs);
    let all = wait_until(limit, || {
        shared.joined.get() + shared.failed.get() >= clients || shared.errors.get() > 0
    })
    .await;
    let last_joined = shared.joined_at.get();
    // Settled: no frame at any client for 1.5 s (bounded by the same limit): longer
    // than the server's presence count tick (1 s by default), whose last frame a
    // shorter quiet would miss.
    let quiet = Duration::from_millis(1500);
    let settled = wait_until(limit, || shared.last_frame.get().elapsed() >= quiet).await;
    let s1 = Snapshot::take(&pid);
    out.ready = shared.joined.get();
    out.notices = shared.notices.get();
    out.frames = shared.frames.get();
    if let Some(last_joined) = last_joined {
        let took = last_joined.saturating_duration_since(s0.at);
        out.join_s = Some(took.as_secs_f64());
        out.secs = took.as_secs_f64();
        out.connects_per_s = Some(out.ready as f64 / took.as_secs_f64().max(1e-9));
        if settled {
            let settle = shared
                .last_frame
                .get()
                .saturating_duration_since(last_joined);
            out.settle_s = Some(settle.as_secs_f64());
        }
    }
    let (server_cpu, server_util, tool_util) = utilization(&s0, &s1, s1.at - s0.at);
    out.server_cpu_s = server_cpu;
    out.server_util = server_util;
    out.tool_util = tool_util;
    if out.ready > 0 && !target.pid.is_empty() {
        out.server_cpu_us_per_unit = Some(server_cpu * 1e6 / out.ready as f64);
    }
    out.dropped = shared.dropped.get();
    out.errors = shared.errors.get();
    let mut notes = Vec::new();
    if !all || out.ready < clients {
        notes.push(format!(
            "{} of {clients} joined in {:.1} s ({} failed)",
            out.ready,
            ms(s1.at - s0.at) / 1000.0,
            shared.failed.get()
        ));
    }
    if !settled {
        notes.push(format!(
            "frames still arriving after {:.0} s",
            limit.as_secs_f64()
        ));
    }
    // Whether every client's view converged on the whole room (member list plus notices,
    // or version 2's count).
    if shared.complete.get() < clients {
        notes.push(format!(
            "{} of {clients} clients heard of everyone",
            shared.complete.get()
        ));
    }
    if let Some(e) = shared.first_error.borrow().as_ref() {
        notes.push(e.clone());
    }
    out.note = notes.join("; ");
    out
}
