//! Crash test: the real example server process on an SQLite file, `kill -9` at random
//! points while several WebSocket clients send thousands of messages with client ids.
//! After each crash the server is restarted on the same file; the clients reconnect,
//! check that an already acknowledged client id is acknowledged again as a duplicate with
//! its seq, and resend whatever was not acknowledged (same client id). In the end:
//! no acknowledged message is missing, no client id is stored twice, per-room seqs
//! strictly increase, and `PRAGMA integrity_check` is `ok`, after every crash too.
//!
//! Repeated over several seeds (a seeded xorshift picks the kill points).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chat_core::protocol::ErrorCode;
use chat_core::protocol::ServerFrame;
use common::ServerProcess;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message as Ws;

const SEEDS: [u64; 3] = [0x5eed_0001, 0xdead_beef_cafe, 42];
const CLIENTS: usize = 4;
const ROOMS: [&str; 3] = ["alpha", "beta", "gamma"];
/// Messages per client per seed: 4 × 1000 over 3 rooms is more than the in-memory window
/// (1000 per room), so the final history check pages from the database too.
const PER_CLIENT: usize = 1000;
/// Unacknowledged sends per client at once.
const IN_FLIGHT: usize = 32;
/// Crashes per seed.
const KILLS: usize = 2;
/// Acknowledged client ids each client resends after a restart, expecting duplicates.
const DUP_CHECKS: usize = 3;
/// Upper bound for any one wait; the whole test takes a few seconds per seed.
const WAIT: Duration = Duration::from_secs(60);

/// A small deterministic RNG (xorshift64*).
struct Xorshift(u64);

impl Xorshift {
    fn new(seed: u64) -> Xorshift {
        Xorshift(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The example server on a database file, with flood control lifted.
fn start_server(db: &Path) -> ServerProcess {
    let mut args: Vec<std::ffi::OsString> = ["--durability", "full", "--db"]
        .into_iter()
        .map(Into::into)
        .collect();
    args.push(db.into());
    args.extend(["--send-burst", "100000", "--send-rate", "100000"].map(Into::into));
    ServerProcess::start(args)
}

/// SIGTERM, then a clean exit.
fn stop_server(server: ServerProcess) {
    server.signal("-TERM");
    let status = server.wait();
    assert!(status.success(), "graceful exit, got {status}");
}

/// Copies a crashed database (the file and its WAL) aside.
fn copy_db(db: &Path, scratch: &Path) -> PathBuf {
    std::fs::create_dir_all(scratch).unwrap();
    let copy = scratch.join("copy.db");
    std::fs::copy(db, &copy).unwrap();
    let wal = db.with_extension("db-wal");
    if wal.exists() {
        std::fs::copy(&wal, scratch.join("copy.db-wal")).unwrap();
    }
    copy
}

/// Checks the database file itself: every client id at most once, and every message the
/// clients had acknowledged there with its room, seq and body. Returns the row count.
fn check_db(db: &Path, seed: u64, states: &[ClientState]) -> usize {
    let conn = rusqlite::Connection::open(db).expect("open the database");
    let mut stmt = conn
        .prepare("SELECT room, seq, client_id, body FROM messages ORDER BY room, seq")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })
        .unwrap();
    let mut stored: HashMap<String, (String, u64, String)> = HashMap::new();
    let mut last: Option<(String, i64)> = None;
    for row in rows {
        let (room, seq, cid, text) = row.unwrap();
        if let Some((r, s)) = &last {
            assert!(r != &room || *s < seq, "seqs of {room} strictly increase");
        }
        last = Some((room.clone(), seq));
        let prior = stored.insert(cid.clone(), (room, seq as u64, text));
        assert!(prior.is_none(), "{cid} stored twice (seed {seed:x})");
    }
    for s in states {
        for (cid, (room, seq)) in &s.acked {
            let n: usize = cid.rsplit('-').next().unwrap().parse().unwrap();
            let got = stored
                .get(cid)
                .unwrap_or_else(|| panic!("acknowledged {cid} not on disk (seed {seed:x})"));
            assert_eq!(got, &(room.clone(), *seq, body(seed, s.idx, n)), "{cid}");
        }
    }
    stored.len()
}

fn integrity(db: &Path) -> String {
    let conn = rusqlite::Connection::open(db).expect("open the database");
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check")
}

fn client_id(client: usize, n: usize) -> String {
    format!("c{client}-{n}")
}

/// The client id of the message with this body (see [`body`] and [`client_id`]).
fn cid_of_body(body: &str) -> String {
    let mut words = body.split(' ').skip(2);
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some("client"), Some(client), Some("message"), Some(n)) => format!("c{client}-{n}"),
        _ => panic!("a body the test never sent: {body:?}"),
    }
}

fn body(seed: u64, client: usize, n: usize) -> String {
    format!("seed {seed:x} client {client} message {n}")
}

fn room_of(client: usize, n: usize) -> &'static str {
    ROOMS[(client + n) % ROOMS.len()]
}

/// What a client remembers across server lives.
#[derive(Debug)]
struct ClientState {
    idx: usize,
    seed: u64,
    /// The next message never sent yet.
    next: usize,
    /// Sent, not acknowledged: resent after a reconnect.
    unacked: BTreeSet<usize>,
    /// Acknowledged: client id → (room, seq).
    acked: HashMap<String, (String, u64)>,
    /// Client ids in the order they were acknowledged.
    ack_order: Vec<String>,
    /// Duplicate acks received for resends of acknowledged ids (checked).
    duplicates_checked: usize,
    /// The token from the last `welcome`, to reclaim the name on a reconnect to the same
    /// server (ignored by a new server, where the name is free).
    token: Option<String>,
    /// Reconnects while the server was up (e.g. after a slow-consumer close).
    reconnects: usize,
}

impl ClientState {
    fn done(&self) -> bool {
        self.next == PER_CLIENT && self.unacked.is_empty()
    }
}

enum Outcome {
    Finished,
    Disconnected,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send_msg(ws: &mut Socket, id: u64, room: &str, body: &str, cid: &str) -> bool {
    let frame = json!({"type": "send", "id": id, "room": room, "body": body, "client_id": cid});
    ws.send(Ws::text(frame.to_string())).await.is_ok()
}

/// Reads the next server frame; `None` when the connection is gone.
async fn read(ws: &mut Socket) -> Option<ServerFrame> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Err(_) => panic!("no frame from the server for {WAIT:?}"),
            Ok(Some(Ok(Ws::Text(t)))) => {
                return Some(serde_json::from_str(&t).expect("a valid server frame"));
            }
            Ok(Some(Ok(Ws::Close(_)) | Err(_)) | None) => return None,
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// One connection's life: hello, duplicate checks, resends, new sends, until everything
/// is acknowledged or the server goes away.
async fn session(state: &mut ClientState, addr: &str, acks: &watch::Sender<usize>) -> Outcome {
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await else {
        return Outcome::Disconnected;
    };
    let rooms: Vec<_> = ROOMS.iter().map(|r| json!({ "room": r })).collect();
    let mut hello = json!({"type": "hello", "id": 0, "version": 1, "name": format!("c{}", state.idx), "rooms": rooms});
    if let Some(token) = &state.token {
        hello["token"] = json!(token);
    }
    if ws.send(Ws::text(hello.to_string())).await.is_err() {
        return Outcome::Disconnected;
    }
    let mut joined = 0;
    while joined < ROOMS.len() {
        match read(&mut ws).await {
            None => return Outcome::Disconnected,
            Some(ServerFrame::Joined { .. }) => joined += 1,
            Some(ServerFrame::Welcome { token, .. }) => state.token = token,
            Some(ServerFrame::Error { code, message, .. }) => panic!("hello: {code:?} {message}"),
            Some(_) => {}
        }
    }
    // Acknowledged ids resent: each must come back as a duplicate with its seq.
    let mut dup_checks: HashMap<String, u64> = HashMap::new();
    let recent: Vec<String> = state
        .ack_order
        .iter()
        .rev()
        .take(DUP_CHECKS)
        .cloned()
        .collect();
    for cid in recent {
        let n: usize = cid.rsplit('-').next().unwrap().parse().unwrap();
        let (room, seq) = state.acked[&cid].clone();
        dup_checks.insert(cid.clone(), seq);
        let id = 1_000_000 + n as u64;
        if !send_msg(&mut ws, id, &room, &body(state.seed, state.idx, n), &cid).await {
            return Outcome::Disconnected;
        }
    }
    let mut resend: Vec<usize> = state.unacked.iter().copied().collect();
    resend.reverse(); // popped oldest first
    let mut in_flight = 0usize;
    loop {
        // Fill the window: resends first, then new messages.
        while in_flight < IN_FLIGHT {
            let n = if let Some(n) = resend.pop() {
                n
            } else if state.next < PER_CLIENT {
                state.next += 1;
                state.unacked.insert(state.next - 1);
                state.next - 1
            } else {
                break;
            };
            in_flight += 1;
            let cid = client_id(state.idx, n);
            let (room, text) = (room_of(state.idx, n), body(state.seed, state.idx, n));
            if !send_msg(&mut ws, n as u64, room, &text, &cid).await {
                return Outcome::Disconnected;
            }
        }
        if state.done() && dup_checks.is_empty() {
            let _ = ws.close(None).await;
            return Outcome::Finished;
        }
        let Some(frame) = read(&mut ws).await else {
            return Outcome::Disconnected;
        };
        match frame {
            ServerFrame::Ack {
                room,
                seq,
                client_id: Some(cid),
                duplicate,
                ..
            } => {
                if let Some(expected) = dup_checks.remove(cid.as_str()) {
                    assert!(duplicate, "resent acked {cid} was posted again");
                    assert_eq!(seq.0, expected, "resent acked {cid} got another seq");
                    state.duplicates_checked += 1;
                    continue;
                }
                let n: usize = cid.rsplit('-').next().unwrap().parse().unwrap();
                assert_eq!(room.as_str(), room_of(state.idx, n));
                assert!(state.unacked.remove(&n), "ack for {cid}, not outstanding");
                in_flight -= 1;
                let prior = state
                    .acked
                    .insert(cid.to_string(), (room.to_string(), seq.0));
                assert!(prior.is_none(), "{cid} acknowledged twice");
                state.ack_order.push(cid.to_string());
                acks.send_modify(|a| *a += 1);
            }
            ServerFrame::Error { code, message, .. } => {
                assert_ne!(code, ErrorCode::StorageUnavailable, "{message}");
                panic!("unexpected error {code:?}: {message}");
            }
            ServerFrame::Goodbye { .. } => return Outcome::Disconnected,
            _ => {}
        }
    }
}

/// Every message of every room, paging backwards with `history` through the server.
async fn full_history(addr: &str) -> HashMap<String, Vec<(u64, String, String)>> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .expect("verifier connects");
    let rooms: Vec<_> = ROOMS.iter().map(|r| json!({ "room": r })).collect();
    let hello = json!({"type": "hello", "version": 1, "name": "verifier", "rooms": rooms});
    ws.send(Ws::text(hello.to_string())).await.unwrap();
    let mut out = HashMap::new();
    let mut id = 0u64;
    for room in ROOMS {
        let mut all: Vec<(u64, String, String)> = Vec::new();
        let mut before: Option<u64> = None;
        loop {
            id += 1;
            let mut req = json!({"type": "history", "id": id, "room": room, "limit": 1000});
            if let Some(b) = before {
                req["before"] = json!(b);
            }
            ws.send(Ws::text(req.to_string())).await.unwrap();
            let (messages, has_more) = loop {
                match read(&mut ws).await.expect("verifier connection open") {
                    ServerFrame::History {
                        id: Some(i),
                        messages,
                        has_more,
                        ..
                    } if i == chat_core::RequestId(id) => break (messages, has_more),
                    ServerFrame::Error {
                        id: Some(i),
                        code,
                        message,
                    } if i == chat_core::RequestId(id) => panic!("history: {code:?} {message}"),
                    _ => {}
                }
            };
            let mut page: Vec<_> = messages
                .iter()
                .map(|m| {
                    (
                        m.seq.0,
                        // Another user's history holds no client ids (lean frames:
                        // only the author's sessions get them); each body names its
                        // client and number, which is what the client id is made of.
                        cid_of_body(&m.body),
                        m.body.to_string(),
                    )
                })
                .collect();
            before = page.first().map(|p| p.0);
            page.append(&mut all);
            all = page;
            if !has_more || messages.is_empty() {
                break;
            }
        }
        out.insert(room.to_owned(), all);
    }
    let _ = ws.close(None).await;
    out
}

async fn run_seed(seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let mut rng = Xorshift::new(seed);
    let total = CLIENTS * PER_CLIENT;
    // Kill points: after this many acknowledged messages, somewhere in the middle 80 %.
    let mut kills: Vec<usize> = (0..KILLS)
        .map(|_| total / 10 + rng.below((total * 8 / 10) as u64) as usize)
        .collect();
    kills.sort_unstable();
    let mut states: Vec<ClientState> = (0..CLIENTS)
        .map(|idx| ClientState {
            idx,
            seed,
            next: 0,
            unacked: BTreeSet::new(),
            acked: HashMap::new(),
            ack_order: Vec::new(),
            duplicates_checked: 0,
            token: None,
            reconnects: 0,
        })
        .collect();
    let mut crashes = 0;
    loop {
        let mut server = start_server(&db);
        let addr: Arc<str> = server.addr.clone().into();
        let already: usize = states.iter().map(|s| s.acked.len()).sum();
        let (acks, mut acks_rx) = watch::channel(already);
        let acks = Arc::new(acks);
        // Set before the server is frozen or killed: a client that loses its connection
        // then stops instead of reconnecting.
        let killed = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = std::mem::take(&mut states)
            .into_iter()
            .map(|mut state| {
                let (addr, acks) = (addr.clone(), acks.clone());
                let killed = killed.clone();
                tokio::spawn(async move {
                    loop {
                        let outcome = session(&mut state, &addr, &acks).await;
                        if matches!(outcome, Outcome::Finished) || killed.load(Ordering::SeqCst) {
                            return (state, outcome);
                        }
                        // Closed while the server runs (a slow-consumer close when this
                        // machine is busy): reconnect and resend, as a client does.
                        state.reconnects += 1;
                        assert!(
                            state.reconnects < 100,
                            "client {} keeps being closed",
                            state.idx
                        );
                    }
                })
            })
            .collect();
        let crash_at = kills.get(crashes).copied();
        let frozen = crash_at.is_some() && rng.below(2) == 0;
        if let Some(at) = crash_at {
            tokio::time::timeout(WAIT, acks_rx.wait_for(|a| *a >= at))
                .await
                .expect("progress before the kill point")
                .expect("counter alive");
            killed.store(true, Ordering::SeqCst);
            if frozen {
                // Freeze the process where it is, let the clients read every ack it had
                // already written, then kill it at that same point: every ack a client
                // saw is then checked against the disk, not lost with the connection.
                server.signal("-STOP");
                let quiet = Duration::from_millis(300);
                let deadline = tokio::time::Instant::now() + WAIT;
                while tokio::time::timeout(quiet, acks_rx.changed()).await.is_ok() {
                    assert!(tokio::time::Instant::now() < deadline, "acks never stop");
                }
            }
            server.crash();
            crashes += 1;
        }
        // The files as the crash left them, before the next start recovers them.
        let copy = crash_at.map(|_| copy_db(&db, &dir.path().join(format!("crash{crashes}"))));
        let mut finished = 0;
        for task in tasks {
            let (state, outcome) = tokio::time::timeout(WAIT, task)
                .await
                .expect("client ends")
                .expect("client task did not panic");
            if matches!(outcome, Outcome::Finished) {
                finished += 1;
            }
            states.push(state);
        }
        if let Some(copy) = copy {
            // No more acks can come: everything acknowledged so far must be on disk.
            assert_eq!(
                integrity(&copy),
                "ok",
                "after crash {crashes} of seed {seed:x}"
            );
            let stored = check_db(&copy, seed, &states);
            eprintln!(
                "seed {seed:x}: crash {crashes}{} after {} acks; {} messages on disk; \
                 {} reconnects while up",
                if frozen { " (frozen first)" } else { "" },
                states.iter().map(|s| s.acked.len()).sum::<usize>(),
                stored,
                states.iter().map(|s| s.reconnects).sum::<usize>(),
            );
            continue;
        }
        assert_eq!(finished, CLIENTS, "every client finished without a crash");
        verify(seed, &states, &server.addr).await;
        stop_server(server);
        break;
    }
    assert_eq!(crashes, KILLS);
    // Graceful shutdown checkpointed the WAL into the file.
    let wal = db.with_extension("db-wal");
    assert!(
        std::fs::metadata(&wal).map_or(true, |m| m.len() == 0),
        "WAL left after a graceful shutdown"
    );
    assert_eq!(integrity(&db), "ok");
    assert_eq!(check_db(&db, seed, &states), total);
    let checked: usize = states.iter().map(|s| s.duplicates_checked).sum();
    assert!(
        checked >= DUP_CHECKS * CLIENTS * KILLS / 2,
        "{checked} duplicate checks"
    );
}

async fn verify(seed: u64, states: &[ClientState], addr: &str) {
    let history = full_history(addr).await;
    let mut stored: HashMap<String, (String, u64, String)> = HashMap::new();
    for (room, msgs) in &history {
        assert!(
            msgs.windows(2).all(|w| w[0].0 < w[1].0),
            "seqs of {room} strictly increase"
        );
        for (seq, cid, text) in msgs {
            let prior = stored.insert(cid.clone(), (room.clone(), *seq, text.clone()));
            assert!(prior.is_none(), "{cid} stored twice (seed {seed:x})");
        }
    }
    let mut acked = 0;
    for s in states {
        assert!(s.done());
        for (cid, (room, seq)) in &s.acked {
            let n: usize = cid.rsplit('-').next().unwrap().parse().unwrap();
            let got = stored
                .get(cid)
                .unwrap_or_else(|| panic!("acknowledged {cid} missing (seed {seed:x})"));
            assert_eq!(got, &(room.clone(), *seq, body(seed, s.idx, n)), "{cid}");
            acked += 1;
        }
    }
    assert_eq!(acked, CLIENTS * PER_CLIENT);
    assert_eq!(stored.len(), acked, "nothing stored that was never sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_message_and_duplicates_none() {
    for seed in SEEDS {
        run_seed(seed).await;
    }
}
