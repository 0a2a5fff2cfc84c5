//! The soak's clients: one task per simulated user, over a real WebSocket, through
//! reconnects. Each keeps, per room, what it was delivered (seq ranges), what it was told
//! it missed (gaps), and where each of its memberships began and ended, for the
//! exactly-once check at the end (`check.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::rng::Rng;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What a simulated user does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Posts at a fixed rate (a bot), never leaves.
    Bot,
    /// Types, then posts, at a human rate; now and then a direct message.
    Human,
    /// A human whose network drops now and then: the socket goes away without a close
    /// frame, and the client comes back a moment later and resumes.
    Vanisher,
    /// Reads like the browser page: answers pings, asks `rooms` after 20 s of silence,
    /// pages back through history now and then.
    Page,
    /// Reads and answers WebSocket pings, nothing else (most client libraries).
    PingOnly,
    /// Reads in bursts: 1 s reading, 3 s not reading the socket at all.
    Slow,
    /// Joins, stays a while, leaves (`leave`, then a normal close), comes back fresh.
    Churn,
}

impl Role {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Role::Bot => "bot",
            Role::Human => "human",
            Role::Vanisher => "vanisher",
            Role::Page => "page reader",
            Role::PingOnly => "ping-only reader",
            Role::Slow => "slow reader",
            Role::Churn => "joiner/leaver",
        }
    }
}

/// The run's phase, as clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The mix runs.
    Run,
    /// No new posts, vanishes or leaves; everyone comes back and catches up.
    Drain,
    /// Close normally and hand in the records.
    Close,
}

/// Live state of one client the monitor reads (catch-up after faults).
#[derive(Debug, Default)]
pub struct Status {
    /// A session is up (welcome received).
    pub connected: AtomicBool,
    /// Deliberately away (vanished, or left its room): not expected to be caught up.
    pub away: AtomicBool,
    /// The last seq delivered in its main room (0: none).
    pub cursor: AtomicU64,
    /// When its oldest unanswered send was written (ns since start; 0: none).
    pub oldest_pending: AtomicU64,
}

/// One membership of one client in one room: from `start` (exclusive) on, every acked
/// seq must be delivered exactly once, in order, unless inside a reported gap.
#[derive(Debug, Clone, Default)]
pub struct Span {
    /// Seqs after this one are owed to the client.
    pub start: u64,
    /// Delivered seqs, as inclusive ranges, ascending.
    pub ranges: Vec<(u64, u64)>,
    /// Ranges the server said were missing (`joined` with `gap: true`), inclusive.
    pub gaps: Vec<(u64, u64)>,
    /// The last seq delivered before the client left (None: still a member).
    pub end: Option<u64>,
}

impl Span {
    fn contains(&self, seq: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.1 < seq);
        self.ranges.get(i).is_some_and(|r| r.0 <= seq)
    }
}

/// A client's view of one room over the whole run.
#[derive(Debug, Clone, Default)]
pub struct Track {
    /// Last delivered seq of the open span.
    pub cursor: Option<u64>,
    /// Every membership, the last one open while `open`.
    pub spans: Vec<Span>,
    /// In the room now (resume on reconnect).
    pub open: bool,
}

/// What a client hands in at the end.
#[derive(Debug, Clone)]
pub struct Record {
    /// User name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Main room.
    pub room: String,
    /// Per room (main room and direct-message rooms).
    pub tracks: BTreeMap<String, Track>,
}

/// A seq problem seen as it happened.
#[derive(Debug, Clone)]
pub struct Anomaly {
    /// Seconds since start.
    pub at: f64,
    /// `duplicate` or `out of order`.
    pub kind: &'static str,
    /// Client name.
    pub client: String,
    /// Room.
    pub room: String,
    /// The seq delivered.
    pub seq: u64,
    /// The client's cursor then.
    pub cursor: u64,
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CloseKind {
    /// Who/what: `client close`, `client vanished`, `server close 1001 idle timeout`,
    /// `lost without close frame`, ...
    pub what: String,
    /// Whether the client (or a fault the harness injected) caused it.
    pub explained: bool,
}

/// A close the client did not cause, with what the client saw of that session.
#[derive(Debug, Clone)]
pub struct Unexplained {
    /// Seconds since start.
    pub at: f64,
    /// The close.
    pub what: String,
    /// Whose.
    pub role: Role,
    /// Seconds since the session's connect.
    pub age: f64,
    /// WebSocket pings the server sent in that session.
    pub pings: u64,
    /// Frames the client sent in that session (besides pongs).
    pub sent: u64,
}

/// Counters every client adds to.
#[derive(Debug, Default)]
pub struct Counters {
    /// Live `message` frames received (deliveries).
    pub deliveries: AtomicU64,
    /// Messages received inside `joined` replies (resume/join replays).
    pub replayed: AtomicU64,
    /// `send`s written.
    pub sends: AtomicU64,
    /// `ack`s with `duplicate: false`.
    pub acks: AtomicU64,
    /// `ack`s with `duplicate: true` (a resend after a reconnect: idempotency at work).
    pub dup_acks: AtomicU64,
    /// Direct messages acked.
    pub dms: AtomicU64,
    /// `typing` frames sent.
    pub typing: AtomicU64,
    /// History pages received.
    pub history_pages: AtomicU64,
    /// Acked seqs missing from a history page that spans them.
    pub history_holes: AtomicU64,
    /// Sessions started (welcomes).
    pub sessions: AtomicU64,
    /// Reconnects that resumed (hello with `since`).
    pub resumes: AtomicU64,
    /// `joined` frames with `gap: true`.
    pub gaps: AtomicU64,
    /// Welcomes whose epoch differed from the client's previous one.
    pub epoch_changes: AtomicU64,
    /// Deliberate vanishes.
    pub vanishes: AtomicU64,
    /// Deliberate leaves.
    pub leaves: AtomicU64,
    /// Connection attempts that failed.
    pub connect_failures: AtomicU64,
    /// Posts skipped because too many sends were still unacknowledged.
    pub skipped_posts: AtomicU64,
}

/// Everything the clients share with the harness.
pub struct Shared {
    /// `ws://127.0.0.1:PORT/ws`.
    pub url: String,
    /// The harness's time origin (message bodies carry ns since then).
    pub t0: Instant,
    /// Run / drain / close.
    pub phase: watch::Receiver<Phase>,
    /// Acked seqs per room.
    pub acked: Mutex<HashMap<String, BTreeSet<u64>>>,
    /// Delivery latency (µs) of live messages in the current interval.
    pub latency: Mutex<Histogram<u64>>,
    /// Counters.
    pub counters: Counters,
    /// Closes by kind.
    pub closes: Mutex<BTreeMap<CloseKind, u64>>,
    /// Error frames by code.
    pub errors: Mutex<BTreeMap<String, u64>>,
    /// Duplicates and out-of-order deliveries as seen (at most the first 50).
    pub anomalies: Mutex<(u64, u64, Vec<Anomaly>)>,
    /// While set, connections lost without a close are the harness's doing (kill -9).
    pub killed: AtomicBool,
    /// How many kill -9s have begun: a connection opened before one was cut by it, even
    /// when its client notices only later (a slow reader between its reads).
    pub kills: AtomicU64,
    /// Closes the client did not cause, in detail.
    pub unexplained: Mutex<Vec<Unexplained>>,
    /// Final records.
    pub records: Mutex<Vec<Record>>,
    /// Per client, in spawn order.
    pub status: Vec<Arc<Status>>,
    /// Per client: (role, main room).
    pub roles: Vec<(Role, String)>,
    /// Names of the humans that send direct messages (never vanish).
    pub dm_peers: Vec<String>,
    /// Bot post interval.
    pub bot_interval: Duration,
    /// Mean human post interval.
    pub human_interval: Duration,
}

impl Shared {
    fn close(&self, what: String, explained: bool) {
        *self
            .closes
            .lock()
            .unwrap()
            .entry(CloseKind { what, explained })
            .or_default() += 1;
    }

    fn error(&self, code: &str) {
        *self
            .errors
            .lock()
            .unwrap()
            .entry(code.to_string())
            .or_default() += 1;
    }

    /// Seconds since start.
    pub fn secs(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn phase(&self) -> Phase {
        *self.phase.borrow()
    }
}

#[derive(Debug, Deserialize)]
struct Msg {
    room: String,
    seq: u64,
    body: String,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum In {
    Welcome {
        token: Option<String>,
        epoch: String,
    },
    Joined {
        room: String,
        messages: Vec<Msg>,
        gap: bool,
        last_seq: u64,
    },
    Left {
        room: String,
    },
    Message(Msg),
    Ack {
        room: String,
        seq: u64,
        client_id: Option<String>,
        duplicate: bool,
    },
    History {
        room: String,
        messages: Vec<Msg>,
    },
    Error {
        id: Option<u64>,
        code: String,
    },
    #[serde(other)]
    Other,
}

/// A send not yet acknowledged, resent (same `client_id`) after a reconnect.
#[derive(Debug, Clone)]
struct Pending {
    frame: String,
    /// When first written, ns since start.
    at: u64,
}

struct Client {
    idx: usize,
    name: String,
    role: Role,
    room: String,
    rng: Rng,
    shared: Arc<Shared>,
    status: Arc<Status>,
    token: Option<String>,
    epoch: Option<String>,
    tracks: BTreeMap<String, Track>,
    /// client_id -> pending send; request id -> client_id.
    pending: BTreeMap<String, Pending>,
    ids: HashMap<u64, String>,
    next_id: u64,
    posted: u64,
    /// [`Shared::kills`] when the current connection was opened.
    kills_at_connect: u64,
    /// Frames written in the current session.
    sent: u64,
}

/// Why a session ended.
enum End {
    /// The client closed normally (left, or the run is over).
    Closed,
    /// The client dropped its socket on purpose.
    Vanished,
    /// The server or the network ended it.
    Lost,
}

/// Runs one client until the close phase; hands in its record.
pub async fn run(shared: Arc<Shared>, idx: usize, name: String, seed: u64) {
    let (role, room) = shared.roles[idx].clone();
    let status = shared.status[idx].clone();
    let mut c = Client {
        idx,
        name,
        role,
        room,
        rng: Rng::new(seed ^ (idx as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        shared,
        status,
        token: None,
        epoch: None,
        tracks: BTreeMap::new(),
        pending: BTreeMap::new(),
        ids: HashMap::new(),
        next_id: 1,
        posted: 0,
        sent: 0,
        kills_at_connect: 0,
    };
    // Spread the initial connects over two seconds.
    tokio::time::sleep(Duration::from_millis(c.rng.below(2000))).await;
    let mut failures = 0u32;
    let mut join_fresh = true;
    loop {
        if c.shared.phase() == Phase::Close {
            break;
        }
        let ws = match tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(c.shared.url.as_str()),
        )
        .await
        {
            Ok(Ok((ws, _))) => ws,
            _ => {
                c.shared.counters.connect_failures.fetch_add(1, Relaxed);
                failures += 1;
                // Backoff like a real client: 250 ms doubling to 2 s, with jitter.
                let base = (250u64 << failures.min(3)).min(2000);
                tokio::time::sleep(Duration::from_millis(base / 2 + c.rng.below(base))).await;
                continue;
            }
        };
        failures = 0;
        c.kills_at_connect = c.shared.kills.load(Relaxed);
        let end = c.session(ws, join_fresh).await;
        c.status.connected.store(false, Relaxed);
        join_fresh = false;
        match end {
            End::Closed if c.shared.phase() == Phase::Close => break,
            End::Closed => {
                // A joiner/leaver between visits.
                c.status.away.store(true, Relaxed);
                let away = 5_000 + c.rng.below(15_000);
                c.away(Duration::from_millis(away)).await;
                join_fresh = true;
            }
            End::Vanished => {
                c.status.away.store(true, Relaxed);
                let away = 500 + c.rng.below(2_500);
                c.away(Duration::from_millis(away)).await;
            }
            End::Lost => {
                // Reconnect after a short jittered delay, as the page does.
                tokio::time::sleep(Duration::from_millis(100 + c.rng.below(400))).await;
            }
        }
    }
    let record = Record {
        name: c.name,
        role: c.role,
        room: c.room,
        tracks: c.tracks,
    };
    c.shared.records.lock().unwrap().push(record);
}

impl Client {
    /// Stays away for `d`, or less when the run drains.
    async fn away(&mut self, d: Duration) {
        let mut phase = self.shared.phase.clone();
        let _ = tokio::time::timeout(d, phase.wait_for(|p| *p != Phase::Run)).await;
    }

    fn hello(&mut self, fresh: bool) -> String {
        let mut rooms = Vec::new();
        if fresh {
            // A new visit: forget the main room's old membership.
            if let Some(t) = self.tracks.get_mut(&self.room) {
                t.open = false;
                t.cursor = None;
            }
        }
        let main = self.tracks.get(&self.room).filter(|t| t.open);
        match main.and_then(|t| t.cursor) {
            Some(c) => rooms.push(serde_json::json!({"room": self.room, "since": c})),
            None => rooms.push(serde_json::json!({"room": self.room})),
        }
        // Direct-message rooms this client has seen: resume them too.
        for (room, t) in &self.tracks {
            if room.starts_with('@')
                && let Some(c) = t.cursor
            {
                rooms.push(serde_json::json!({"room": room, "since": c}));
            }
        }
        if rooms.iter().any(|r| r.get("since").is_some()) {
            self.shared.counters.resumes.fetch_add(1, Relaxed);
        }
        let mut hello = serde_json::json!({
            "type": "hello", "version": 1, "name": self.name, "rooms": rooms,
        });
        if let Some(t) = &self.token {
            hello["token"] = serde_json::Value::String(t.clone());
        }
        hello.to_string()
    }

    async fn session(&mut self, mut ws: Ws, fresh: bool) -> End {
        self.sent = 0;
        let hello = self.hello(fresh);
        if !self.send(&mut ws, hello).await {
            self.shared
                .close("lost before hello".into(), self.explained());
            return End::Lost;
        }
        // Resend what was not acknowledged, with the same client_id.
        let resend: Vec<String> = self.pending.values().map(|p| p.frame.clone()).collect();
        for frame in resend {
            if !self.send(&mut ws, frame).await {
                self.shared.close("lost".into(), self.explained());
                return End::Lost;
            }
        }
        self.status.away.store(false, Relaxed);
        let now = Instant::now();
        let mut next_post = now + self.post_interval();
        let mut typing_sent = false;
        let next_vanish = now + Duration::from_millis(20_000 + self.rng.below(60_000));
        let next_leave = now + Duration::from_millis(20_000 + self.rng.below(40_000));
        let mut next_history = now + Duration::from_millis(10_000 + self.rng.below(50_000));
        let mut paused_until: Option<Instant> = None;
        let mut next_pause = now + Duration::from_millis(1_000 + self.rng.below(1_000));
        let mut last_frame = now;
        let mut asked_rooms = false;
        let mut history_before: Option<u64> = None;
        let mut leaving = false;
        let session_start = Instant::now();
        let mut pings = 0u64;
        let mut phase = self.shared.phase.clone();
        loop {
            let p = *phase.borrow_and_update();
            if p == Phase::Close {
                return self.close_normally(ws).await;
            }
            let running = p == Phase::Run;
            // The next thing to do, besides reading.
            let mut wake = Instant::now() + Duration::from_secs(3600);
            let talks = matches!(self.role, Role::Bot | Role::Human | Role::Vanisher);
            if talks && running {
                if self.role == Role::Bot || typing_sent {
                    wake = wake.min(next_post);
                } else {
                    wake = wake.min(next_post - Duration::from_secs(1));
                }
            }
            if self.role == Role::Vanisher && running {
                wake = wake.min(next_vanish);
            }
            if self.role == Role::Churn && running && !leaving {
                wake = wake.min(next_leave);
            }
            if self.role == Role::Page {
                wake = wake.min(next_history);
                if !asked_rooms {
                    wake = wake.min(last_frame + Duration::from_secs(20));
                }
            }
            if self.role == Role::Slow {
                wake = wake.min(paused_until.unwrap_or(next_pause));
            }
            let reading = paused_until.is_none();
            tokio::select! {
                frame = ws.next(), if reading => {
                    let Some(frame) = frame else {
                        self.shared.close("lost without close frame (EOF)".into(), self.explained());
                        return End::Lost;
                    };
                    match frame {
                        Ok(Message::Text(text)) => {
                            last_frame = Instant::now();
                            asked_rooms = false;
                            if let Some(done) = self.on_frame(&text, &mut ws, &mut history_before).await {
                                return done;
                            }
                        }
                        Ok(Message::Close(frame)) => {
                            let (code, reason) = frame.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                            // Only a shutdown the harness started explains a server close.
                            let explained = code == 1012 && self.shared.phase() != Phase::Run;
                            let what = format!("server close {code} {reason}");
                            if !explained {
                                self.shared.unexplained.lock().unwrap().push(Unexplained {
                                    at: self.shared.secs(),
                                    what: what.clone(),
                                    role: self.role,
                                    age: session_start.elapsed().as_secs_f64(),
                                    pings,
                                    sent: self.sent,
                                });
                            }
                            self.shared.close(what, explained);
                            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                                while let Some(Ok(_)) = ws.next().await {}
                            }).await;
                            return End::Lost;
                        }
                        Ok(Message::Ping(_)) => {
                            pings += 1;
                            last_frame = Instant::now();
                        }
                        Ok(_) => last_frame = Instant::now(),
                        Err(e) => {
                            let what = match e {
                                tokio_tungstenite::tungstenite::Error::Protocol(p) => format!("lost: {p}"),
                                tokio_tungstenite::tungstenite::Error::Io(io) => format!("lost: {:?}", io.kind()),
                                other => format!("lost: {other}"),
                            };
                            self.shared.close(what, self.explained());
                            return End::Lost;
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = phase.changed() => {}
            }
            let now = Instant::now();
            let running = self.shared.phase() == Phase::Run;
            if talks && running {
                if self.role != Role::Bot
                    && !typing_sent
                    && now + Duration::from_secs(1) >= next_post
                {
                    typing_sent = true;
                    let f = serde_json::json!({"type":"typing","room":self.room,"active":true});
                    self.shared.counters.typing.fetch_add(1, Relaxed);
                    if !self.send(&mut ws, f.to_string()).await {
                        self.shared
                            .close("lost while writing".into(), self.explained());
                        return End::Lost;
                    }
                }
                if now >= next_post {
                    typing_sent = false;
                    next_post = now + self.post_interval();
                    if let Some(frame) = self.post()
                        && !self.send(&mut ws, frame).await
                    {
                        self.shared
                            .close("lost while writing".into(), self.explained());
                        return End::Lost;
                    }
                }
            }
            if self.role == Role::Vanisher && running && now >= next_vanish {
                // Gone without a close frame: the TCP connection just ends.
                self.shared.counters.vanishes.fetch_add(1, Relaxed);
                self.shared
                    .close("client vanished (no close frame)".into(), true);
                drop(ws);
                return End::Vanished;
            }
            if self.role == Role::Churn && running && !leaving && now >= next_leave {
                leaving = true;
                let f = serde_json::json!({"type":"leave","room":self.room});
                if !self.send(&mut ws, f.to_string()).await {
                    self.shared
                        .close("lost while writing".into(), self.explained());
                    return End::Lost;
                }
            }
            if self.role == Role::Page {
                if now >= next_history {
                    next_history = now + Duration::from_millis(30_000 + self.rng.below(60_000));
                    history_before = None;
                    let f = serde_json::json!({"type":"history","room":self.room,"limit":50});
                    if !self.send(&mut ws, f.to_string()).await {
                        self.shared
                            .close("lost while writing".into(), self.explained());
                        return End::Lost;
                    }
                }
                // The page's own keepalive: ask something cheap after 20 s of silence.
                if !asked_rooms && now >= last_frame + Duration::from_secs(20) {
                    asked_rooms = true;
                    if !self.send(&mut ws, r#"{"type":"rooms"}"#).await {
                        self.shared
                            .close("lost while writing".into(), self.explained());
                        return End::Lost;
                    }
                }
            }
            if self.role == Role::Slow {
                // Draining: read everything, like a reader who came back to the tab.
                if !running {
                    paused_until = None;
                }
                match paused_until {
                    Some(t) if now >= t => {
                        paused_until = None;
                        next_pause = now + Duration::from_secs(1);
                    }
                    None if running && now >= next_pause => {
                        paused_until = Some(now + Duration::from_secs(3));
                    }
                    _ => {}
                }
            }
        }
    }

    async fn close_normally(&mut self, mut ws: Ws) -> End {
        let _ = ws
            .close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
        self.shared.close("client close".into(), true);
        End::Closed
    }

    /// Writes one text frame, counting it.
    async fn send(&mut self, ws: &mut Ws, text: impl Into<String>) -> bool {
        self.sent += 1;
        ws.send(Message::text(text.into())).await.is_ok()
    }

    fn pending_changed(&self) {
        let oldest = self
            .pending
            .values()
            .map(|p| p.at.max(1))
            .min()
            .unwrap_or(0);
        self.status.oldest_pending.store(oldest, Relaxed);
    }

    fn explained(&self) -> bool {
        self.shared.killed.load(Relaxed) || self.kills_at_connect < self.shared.kills.load(Relaxed)
    }

    fn post_interval(&mut self) -> Duration {
        match self.role {
            Role::Bot => {
                let ms = self.shared.bot_interval.as_millis() as u64;
                Duration::from_millis(ms - ms / 10 + self.rng.below(ms / 5 + 1))
            }
            _ => {
                // Exponential around the mean, but never faster than 1.2 s (typing first).
                let mean = self.shared.human_interval.as_secs_f64();
                let x = -mean * (1.0 - self.rng.unit()).ln();
                Duration::from_secs_f64(x.clamp(1.2, mean * 6.0))
            }
        }
    }

    /// The next post as a frame, or None when too many are unacknowledged.
    fn post(&mut self) -> Option<String> {
        let cap = if self.role == Role::Bot { 4 } else { 2 };
        if self.pending.len() >= cap {
            self.shared.counters.skipped_posts.fetch_add(1, Relaxed);
            return None;
        }
        self.posted += 1;
        let cid = format!("{}-{}", self.idx, self.posted);
        let id = self.next_id;
        self.next_id += 1;
        let ns = self.shared.t0.elapsed().as_nanos() as u64;
        let body = format!("{ns} {} says {}", self.name, self.posted);
        // One human post in ten is a direct message to another human.
        let dm = self.role == Role::Human && self.rng.below(10) == 0 && {
            let peers = &self.shared.dm_peers;
            peers.len() > 1
        };
        let frame = if dm {
            let peers = &self.shared.dm_peers;
            let mut to = &peers[self.rng.below(peers.len() as u64) as usize];
            if to == &self.name {
                to = &peers[(peers.iter().position(|p| p == to).unwrap() + 1) % peers.len()];
            }
            serde_json::json!({"type":"send","id":id,"to":to,"body":body,"client_id":cid})
        } else {
            serde_json::json!({"type":"send","id":id,"room":self.room,"body":body,"client_id":cid})
        };
        let frame = frame.to_string();
        self.pending.insert(
            cid.clone(),
            Pending {
                frame: frame.clone(),
                at: ns,
            },
        );
        self.pending_changed();
        self.ids.insert(id, cid);
        self.shared.counters.sends.fetch_add(1, Relaxed);
        Some(frame)
    }

    /// Handles one frame; Some when the session ends.
    async fn on_frame(
        &mut self,
        text: &str,
        ws: &mut Ws,
        history_before: &mut Option<u64>,
    ) -> Option<End> {
        let frame: In = match serde_json::from_str(text) {
            Ok(f) => f,
            Err(_) => {
                self.shared.error("unparsed frame");
                return None;
            }
        };
        match frame {
            In::Welcome { token, epoch } => {
                self.shared.counters.sessions.fetch_add(1, Relaxed);
                if self.epoch.as_ref().is_some_and(|e| *e != epoch) {
                    self.shared.counters.epoch_changes.fetch_add(1, Relaxed);
                }
                self.epoch = Some(epoch);
                if token.is_some() {
                    self.token = token;
                }
                self.status.connected.store(true, Relaxed);
            }
            In::Joined {
                room,
                messages,
                gap,
                last_seq,
            } => self.on_joined(room, messages, gap, last_seq),
            In::Left { room } => {
                if let Some(t) = self.tracks.get_mut(&room) {
                    let end = t.cursor.unwrap_or(0);
                    if let Some(s) = t.spans.last_mut() {
                        s.end = Some(end);
                    }
                    t.open = false;
                    t.cursor = None;
                }
                if room == self.room {
                    self.shared.counters.leaves.fetch_add(1, Relaxed);
                    self.status.away.store(true, Relaxed);
                    return Some(self.close_normally_ref(ws).await);
                }
            }
            In::Message(m) => {
                self.shared.counters.deliveries.fetch_add(1, Relaxed);
                // A slow reader's latency is its own doing (it stops reading for 3 s).
                if self.role != Role::Slow
                    && let Some(ns) = body_ns(&m.body)
                {
                    let now = self.shared.t0.elapsed().as_nanos() as u64;
                    let us = now.saturating_sub(ns) / 1000;
                    let _ = self.shared.latency.lock().unwrap().record(us.max(1));
                }
                if !self.tracks.get(&m.room).is_some_and(|t| t.open) {
                    if m.room.starts_with('@') {
                        // The first direct message in this room: owed every one of them.
                        let t = self.tracks.entry(m.room.clone()).or_default();
                        t.open = true;
                        t.cursor = Some(0);
                        t.spans.push(Span::default());
                    } else {
                        self.shared.error("message for a room not joined");
                        return None;
                    }
                }
                self.observe(&m.room, m.seq);
            }
            In::Ack {
                room,
                seq,
                client_id,
                duplicate,
            } => {
                self.shared
                    .acked
                    .lock()
                    .unwrap()
                    .entry(room.clone())
                    .or_default()
                    .insert(seq);
                if duplicate {
                    self.shared.counters.dup_acks.fetch_add(1, Relaxed);
                } else {
                    self.shared.counters.acks.fetch_add(1, Relaxed);
                }
                if room.starts_with('@') {
                    self.shared.counters.dms.fetch_add(1, Relaxed);
                }
                if let Some(cid) = client_id {
                    self.pending.remove(&cid);
                    self.pending_changed();
                }
            }
            In::History { room, messages } => {
                self.shared.counters.history_pages.fetch_add(1, Relaxed);
                let seqs: Vec<u64> = messages.iter().map(|m| m.seq).collect();
                let ordered = seqs.windows(2).all(|w| w[0] < w[1]);
                if !ordered || history_before.is_some_and(|b| seqs.last().is_some_and(|l| *l >= b))
                {
                    self.shared.error("history page out of order");
                }
                if let (Some(first), Some(last)) = (seqs.first(), seqs.last()) {
                    let have: BTreeSet<u64> = seqs.iter().copied().collect();
                    let holes = self.shared.acked.lock().unwrap().get(&room).map_or(0, |a| {
                        a.range(first..=last).filter(|s| !have.contains(s)).count()
                    });
                    self.shared
                        .counters
                        .history_holes
                        .fetch_add(holes as u64, Relaxed);
                    // Page back once more, like a reader scrolling up.
                    if history_before.is_none() && *first > 1 {
                        *history_before = Some(*first);
                        let f = serde_json::json!({"type":"history","room":room,"before":first,"limit":50});
                        let _ = self.send(ws, f.to_string()).await;
                    }
                }
            }
            In::Error { id, code } => {
                self.shared.error(&code);
                if let Some(cid) = id.and_then(|id| self.ids.remove(&id)) {
                    // Refused: not posted (storage_unavailable, rate_limited,
                    // user_not_found). The user would see the error; drop it.
                    self.pending.remove(&cid);
                    self.pending_changed();
                }
            }
            In::Other => {}
        }
        None
    }

    async fn close_normally_ref(&mut self, ws: &mut Ws) -> End {
        let _ = ws
            .close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
        self.shared.close("client close".into(), true);
        End::Closed
    }

    fn on_joined(&mut self, room: String, messages: Vec<Msg>, gap: bool, last_seq: u64) {
        let t = self.tracks.entry(room.clone()).or_default();
        match (t.open, t.cursor) {
            (true, Some(cursor)) => {
                if gap {
                    self.shared.counters.gaps.fetch_add(1, Relaxed);
                    let first = messages.first().map_or(last_seq + 1, |m| m.seq);
                    if first > cursor + 1
                        && let Some(s) = t.spans.last_mut()
                    {
                        s.gaps.push((cursor + 1, first - 1));
                    }
                }
            }
            _ => {
                let start = messages.first().map_or(last_seq, |m| m.seq - 1);
                t.open = true;
                t.cursor = Some(start);
                t.spans.push(Span {
                    start,
                    ..Span::default()
                });
            }
        }
        // A gap reply holds the latest messages, some maybe seen already: shown again
        // by design under the gap marker, not duplicates.
        let seen = if gap {
            self.tracks[&room].cursor.unwrap_or(0)
        } else {
            0
        };
        for m in &messages {
            self.shared.counters.replayed.fetch_add(1, Relaxed);
            if m.seq <= seen {
                continue;
            }
            self.observe(&room, m.seq);
        }
        if room == self.room {
            self.status.away.store(false, Relaxed);
        }
    }

    fn observe(&mut self, room: &str, seq: u64) {
        let t = self.tracks.get_mut(room).expect("tracked room");
        let cursor = t.cursor.unwrap_or(0);
        let span = t.spans.last_mut().expect("open span");
        if seq <= cursor {
            let kind = if span.contains(seq) {
                "duplicate"
            } else {
                "out of order"
            };
            let mut a = self.shared.anomalies.lock().unwrap();
            if kind == "duplicate" {
                a.0 += 1;
            } else {
                a.1 += 1;
            }
            if a.2.len() < 50 {
                a.2.push(Anomaly {
                    at: self.shared.t0.elapsed().as_secs_f64(),
                    kind,
                    client: self.name.clone(),
                    room: room.to_string(),
                    seq,
                    cursor,
                });
            }
            return;
        }
        match span.ranges.last_mut() {
            Some(r) if r.1 + 1 == seq => r.1 = seq,
            _ => span.ranges.push((seq, seq)),
        }
        t.cursor = Some(seq);
        if room == self.room {
            self.status.cursor.store(seq, Relaxed);
        }
    }
}

/// The send time at the start of a body (ns since the harness's start).
fn body_ns(body: &str) -> Option<u64> {
    let digits = body.bytes().take_while(u8::is_ascii_digit).count();
    body[..digits].parse().ok()
}
