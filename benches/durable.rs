//! Acknowledged messages per second through the real [`Hub`] with 100 concurrent senders:
//! no store (in-memory window only), the in-memory store, and SQLite with `FULL` and
//! `NORMAL` durability, with the ack latency (p50, p99, max).
//!
//! ```text
//! cargo bench --bench durable
//! BENCH_MESSAGES=500 BENCH_ROOMS=100 cargo bench --bench durable
//! BENCH_STORES=memory,full cargo bench --bench durable
//! BENCH_MIX=1 BENCH_STORES=full cargo bench --bench durable
//! ```
//!
//! `BENCH_MIX=1`: mixed traffic instead of messages only. Each sender's posts go in
//! turn: a message, an edit of its newest acknowledged message, its reaction to that
//! message (added, then taken back, in turn); so a third of the entries are messages, a
//! third edits, a third reactions, and a change (with a store) is written with its
//! target's new state in the same transaction. Before its first message is acked a
//! sender only sends messages.
//!
//! Every sender is an in-process session (`hub.connect()`): it says hello, joins its room
//! (`BENCH_ROOMS` rooms, senders spread evenly, so each message is also delivered to the
//! room's other members), then sends `BENCH_MESSAGES` messages with client ids, keeping
//! `BENCH_IN_FLIGHT` unacknowledged at a time, and reads everything it is sent. A message
//! counts when its sender has the ack, i.e. (with a store) after its group was committed.
//! Each kind runs `BENCH_RUNS` times (default 3, interleaved); the table shows the run
//! with the best throughput (the least disturbed by other load on the machine) and the
//! median throughput. Not a timed test: it prints a markdown table.

use chat_core::protocol::{EditRequest, HelloRequest, ReactRequest, SendRequest};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_core::protocol::JoinSpec;
use chat_core::runtime::transport::{BatchLimit, Outbound, PeerFrame};
use chat_core::runtime::{Durability, Hub, HubConfig, MemoryStore, SqliteStore, Store};
use chat_core::{
    Config, Rate,
    protocol::{ClientFrame, ServerFrame},
};
use hdrhistogram::Histogram;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Opens a fresh store for one run (`None`: no store).
type MakeStore<'a> = Box<dyn Fn() -> Option<Arc<dyn Store>> + 'a>;

struct Params {
    senders: usize,
    rooms: usize,
    messages: usize,
    in_flight: usize,
    /// Mixed traffic: messages, edits and reactions in turn.
    mix: bool,
}

struct Outcome {
    acked: u64,
    elapsed: Duration,
    /// CPU time the whole process used meanwhile (every thread: hub, senders, store).
    cpu: Duration,
    /// CPU time of the store's writer thread.
    writer_cpu: Duration,
    latency: Histogram<u64>,
}

/// One sender: hello, then `messages` sends with at most `in_flight` unacknowledged.
async fn sender(
    hub: Hub,
    i: usize,
    p: Arc<Params>,
    start: Arc<tokio::sync::Barrier>,
) -> Histogram<u64> {
    let conn = hub.connect().await.expect("hub runs");
    let (mut inbound, mut outbound) = conn.split();
    let room = format!("room{}", i % p.rooms);
    // As a transport would: JSON text in, decoded in this task.
    let json = |frame: ClientFrame| serde_json::to_vec(&frame).expect("serialize");
    inbound
        .send(PeerFrame::Text(&json(ClientFrame::Hello(HelloRequest {
            id: None,
            version: 1,
            name: format!("sender{i}"),
            token: None,
            rooms: Some(vec![JoinSpec {
                room: room.clone(),
                since: None,
            }]),
        }))))
        .await
        .expect("hub runs");
    // Wait for our own `joined`.
    let mut batch = Vec::new();
    let mut joined = false;
    while !joined {
        let n = outbound.recv_many(&mut batch, BatchLimit::default()).await;
        assert!(n > 0, "session open");
        for item in batch.drain(..) {
            match item {
                Outbound::Frame(f) => joined |= f.bytes().starts_with(br#"{"type":"joined""#),
                Outbound::Close(r) => panic!("closed: {r:?}"),
            }
        }
    }
    start.wait().await;
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let mut sent_at = vec![Instant::now(); p.messages];
    let (mut sent, mut acked) = (0usize, 0usize);
    // Mixed traffic: the seq of this sender's newest acknowledged message, and the
    // request ids that were messages.
    let mut newest: Option<u64> = None;
    let mut was_message = vec![false; p.messages];
    while acked < p.messages {
        while sent < p.messages && sent - acked < p.in_flight {
            sent_at[sent] = Instant::now();
            let id = Some(chat_core::RequestId(sent as u64));
            let client_id = Some(format!("{i}-{sent}").into());
            let frame = match (p.mix, newest, sent % 3) {
                (true, Some(seq), 1) => ClientFrame::Edit(EditRequest {
                    id,
                    room: room.clone(),
                    seq: chat_core::Seq(seq),
                    body: format!("message {sent} from sender {i}, edited"),
                    client_id,
                }),
                (true, Some(seq), 2) => ClientFrame::React(ReactRequest {
                    id,
                    room: room.clone(),
                    seq: chat_core::Seq(seq),
                    emoji: "👍".into(),
                    on: sent % 6 == 2,
                    client_id,
                }),
                _ => {
                    was_message[sent] = true;
                    ClientFrame::Send(SendRequest {
                        id,
                        room: Some(room.clone()),
                        to: None,
                        body: format!("message {sent} from sender {i}"),
                        client_id,
                        reply_to: None,
                    })
                }
            };
            inbound
                .send(PeerFrame::Text(&json(frame)))
                .await
                .expect("hub runs");
            sent += 1;
        }
        let n = outbound.recv_many(&mut batch, BatchLimit::default()).await;
        assert!(n > 0, "session open");
        for item in batch.drain(..) {
            match item {
                Outbound::Frame(f) => {
                    let bytes = f.bytes();
                    if bytes.starts_with(br#"{"type":"ack""#) {
                        // The request id, without decoding the whole frame: the harness
                        // should cost little next to the hub it measures.
                        let id = ack_id(bytes).unwrap_or_else(|| match f.decode() {
                            Ok(ServerFrame::Ack { id: Some(id), .. }) => id.0,
                            other => panic!("unexpected {other:?}"),
                        });
                        assert!(!bytes.windows(16).any(|w| w == br#""duplicate":true"#));
                        if p.mix && was_message[id as usize] {
                            newest = newest.max(ack_seq(bytes));
                        }
                        let us = sent_at[id as usize].elapsed().as_micros() as u64;
                        latency.saturating_record(us.max(1));
                        acked += 1;
                    } else if bytes.starts_with(br#"{"type":"error""#) {
                        panic!("sender {i}: {}", f.text());
                    }
                }
                Outbound::Close(r) => panic!("sender {i} closed: {r:?}"),
            }
        }
    }
    latency
}

/// The `id` of an encoded ack: `{"type":"ack","id":N,…`.
fn ack_id(bytes: &[u8]) -> Option<u64> {
    let rest = bytes.strip_prefix(br#"{"type":"ack","id":"#)?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// The `seq` of an encoded ack (`…,"seq":N,…`).
fn ack_seq(bytes: &[u8]) -> Option<u64> {
    let at = bytes.windows(6).position(|w| w == br#""seq":"#)?;
    let rest = &bytes[at + 6..];
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

async fn run(store: Option<Arc<dyn Store>>, p: &Arc<Params>) -> Outcome {
    let core = Config {
        send_rate: Rate {
            burst: 1_000_000,
            per_second: 1_000_000,
        },
        frame_rate: Rate {
            burst: 1_000_000,
            per_second: 1_000_000,
        },
        max_rooms: 100_000,
        ..Config::default()
    };
    let hub = Hub::spawn(HubConfig {
        core,
        store,
        outbound_queue: 16 * 1024,
        ..HubConfig::default()
    })
    .await
    .expect("hub starts");
    let start = Arc::new(tokio::sync::Barrier::new(p.senders + 1));
    let tasks: Vec<_> = (0..p.senders)
        .map(|i| tokio::spawn(sender(hub.clone(), i, p.clone(), start.clone())))
        .collect();
    start.wait().await;
    let t0 = Instant::now();
    let cpu0 = cpu_time();
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    for t in tasks {
        latency
            .add(t.await.expect("sender ok"))
            .expect("same bounds");
    }
    let elapsed = t0.elapsed();
    // Read before the shutdown ends the writer thread.
    let cpu1 = cpu_time();
    let (cpu, writer_cpu) = (cpu1.0.saturating_sub(cpu0.0), cpu1.1.saturating_sub(cpu0.1));
    hub.shutdown().await;
    Outcome {
        acked: latency.len(),
        elapsed,
        cpu,
        writer_cpu,
        latency,
    }
}

/// User + system CPU time so far of this process, and of its store writer thread
/// (Linux; zero elsewhere).
fn cpu_time() -> (Duration, Duration) {
    fn ticks(stat: &str) -> u64 {
        // The fields after the command name (which ends with ')'): utime, stime are 14, 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields
            .get(11)
            .and_then(|u| u.parse::<u64>().ok())
            .unwrap_or(0)
            + fields
                .get(12)
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0)
    }
    // USER_HZ is 100 on Linux.
    let at = |t: u64| Duration::from_millis(t * 10);
    let all = std::fs::read_to_string("/proc/self/stat").map_or(0, |s| ticks(&s));
    let mut writer = 0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            if stat.contains("(chat-store-writ") {
                writer += ticks(&stat);
            }
        }
    }
    (at(all), at(writer))
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too: keep that short.
    let quick = !std::env::args().any(|a| a == "--bench");
    let p = Arc::new(Params {
        senders: env("BENCH_SENDERS", 100),
        rooms: env("BENCH_ROOMS", 10).max(1),
        messages: env("BENCH_MESSAGES", if quick { 20 } else { 2000 }),
        in_flight: env("BENCH_IN_FLIGHT", 8).max(1),
        mix: env("BENCH_MIX", 0) == 1,
    });
    let runs = env("BENCH_RUNS", if quick { 1 } else { 3 }).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let kinds: Vec<(&str, MakeStore)> = vec![
        ("none (window only, not durable)", Box::new(|| None)),
        (
            "memory store",
            Box::new(|| Some(Arc::new(MemoryStore::new("bench")) as Arc<dyn Store>)),
        ),
        (
            "SQLite FULL",
            Box::new(|| {
                let path = dir.path().join("full.db");
                let _ = std::fs::remove_file(&path);
                Some(
                    Arc::new(SqliteStore::open(&path, Durability::Full).expect("open"))
                        as Arc<dyn Store>,
                )
            }),
        ),
        (
            "SQLite NORMAL",
            Box::new(|| {
                let path = dir.path().join("normal.db");
                let _ = std::fs::remove_file(&path);
                Some(
                    Arc::new(SqliteStore::open(&path, Durability::Normal).expect("open"))
                        as Arc<dyn Store>,
                )
            }),
        ),
    ];
    println!(
        "\n{} senders in {} rooms, {} {} each, {} in flight per sender, {} cores, load average {}\n",
        p.senders,
        p.rooms,
        p.messages,
        if p.mix {
            "posts (messages, edits and reactions in turn)"
        } else {
            "messages"
        },
        p.in_flight,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().map(str::to_owned))
            .unwrap_or_else(|| "?".into()),
    );
    println!(
        "| store | acked | seconds | acked msgs/s (best of {runs}) | median msgs/s | memory ÷ this | ack p50 | ack p99 | ack max | CPU µs/msg | writer thread CPU µs/msg |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    // BENCH_STORES=memory,full runs only the kinds whose names contain one of these words.
    let only = std::env::var("BENCH_STORES")
        .unwrap_or_default()
        .to_lowercase();
    let wanted = |name: &str| {
        only.is_empty()
            || only
                .split(',')
                .any(|w| name.to_lowercase().contains(w.trim()))
    };
    let kinds: Vec<_> = kinds.iter().filter(|(n, _)| wanted(n)).collect();
    // Rounds interleave the kinds, so a burst of load elsewhere on the machine hits all.
    let mut results: Vec<Vec<Outcome>> = kinds.iter().map(|_| Vec::new()).collect();
    for _ in 0..runs {
        for (k, (_, make)) in kinds.iter().enumerate() {
            let o = rt.block_on(run(make(), &p));
            assert_eq!(
                o.acked as usize,
                p.senders * p.messages,
                "every message acked"
            );
            results[k].push(o);
        }
    }
    let rate = |o: &Outcome| o.acked as f64 / o.elapsed.as_secs_f64();
    let mut memory_rate = None;
    for ((name, _), outcomes) in kinds.iter().zip(&mut results) {
        outcomes.sort_by(|a, b| rate(b).total_cmp(&rate(a)));
        let (o, median) = (&outcomes[0], rate(&outcomes[outcomes.len() / 2]));
        if *name == "memory store" {
            memory_rate = Some(rate(o));
        }
        let ratio = memory_rate.map_or("".to_owned(), |m| format!("{:.2}×", m / rate(o)));
        let ms = |us: u64| format!("{:.2} ms", us as f64 / 1000.0);
        let per_msg = |d: Duration| d.as_secs_f64() * 1e6 / o.acked as f64;
        println!(
            "| {name} | {} | {:.2} | {:.0} | {median:.0} | {ratio} | {} | {} | {} | {:.1} | {:.1} |",
            o.acked,
            o.elapsed.as_secs_f64(),
            rate(o),
            ms(o.latency.value_at_quantile(0.5)),
            ms(o.latency.value_at_quantile(0.99)),
            ms(o.latency.max()),
            per_msg(o.cpu),
            per_msg(o.writer_cpu),
        );
    }
}
