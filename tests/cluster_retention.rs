//! Retention in cluster mode, as processes: two example servers on one real
//! `redis-server`, `--retain-messages 5` and a short sweep. After the sweep the room's
//! stream in Redis holds exactly the newest five entries, and on the other server —
//! which had the room in its window before the trim — a resume from seq 1 and a history
//! page below the first kept seq both say the protocol's explicit gap with that seq.
//! The admin port's `POST /retention` sets one room's own policy for the whole cluster.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use chat_core::protocol::ServerFrame;
use common::ServerProcess;
use common::redis::Redis;
use futures::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Ws;

/// Upper bound for any one wait (not a speed assertion).
const WAIT: Duration = Duration::from_secs(30);
const ADMIN_TOKEN: &str = "cluster-retention-admin-token";

use common::Socket;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The entries of `general`'s stream.
fn stream_len(redis: &Redis) -> u64 {
    redis
        .cli(&["XLEN", "chat:{general}:log"])
        .parse()
        .expect("a number")
}

/// Waits until the room's stream holds `n` entries.
fn wait_stream_len(redis: &Redis, n: u64) {
    let deadline = Instant::now() + WAIT;
    while stream_len(redis) != n {
        assert!(
            Instant::now() < deadline,
            "the stream holds {} entries, not {n}",
            stream_len(redis)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An example server in cluster mode: flood control lifted, newest 5 entries kept,
/// a sweep every 200 ms.
fn node(redis: &Redis, admin: Option<&str>) -> ServerProcess {
    node_with(redis, 5, "0.2", admin)
}

/// An example server in cluster mode: flood control lifted, the newest `keep` entries
/// kept, a sweep every `sweep_secs`; with an admin listener at `admin` if given.
fn node_with(redis: &Redis, keep: u64, sweep_secs: &str, admin: Option<&str>) -> ServerProcess {
    let keep = keep.to_string();
    let mut args: Vec<String> = [
        "--redis",
        &redis.url(),
        "--send-burst",
        "100000",
        "--send-rate",
        "100000",
        "--retain-messages",
        &keep,
        "--retain-sweep-secs",
        sweep_secs,
    ]
    .map(str::to_owned)
    .to_vec();
    if let Some(addr) = admin {
        args.extend(["--admin-addr", addr, "--admin-token", ADMIN_TOKEN].map(str::to_owned));
    }
    ServerProcess::start(args)
}

async fn until<T>(ws: &mut Socket, pick: impl FnMut(ServerFrame) -> Option<T>) -> T {
    common::until_frame(ws, WAIT, pick).await
}

async fn say(ws: &mut Socket, frame: Value) {
    ws.send(Ws::text(frame.to_string())).await.unwrap();
}

/// Connects as `name` joining `general` (from `since`, if given); the `joined` frame's
/// `gap` and seqs.
async fn connect(addr: &str, name: &str, since: Option<u64>) -> (Socket, bool, Vec<u64>) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .expect("connect");
    let mut room = json!({"room": "general"});
    if let Some(s) = since {
        room["since"] = json!(s);
    }
    let hello = json!({"type":"hello","version":2,"name":name,"rooms":[room]});
    say(&mut ws, hello).await;
    let (gap, seqs) = until(&mut ws, |f| match f {
        ServerFrame::Joined { gap, messages, .. } => {
            Some((gap, messages.iter().map(|m| m.seq.0).collect()))
        }
        _ => None,
    })
    .await;
    (ws, gap, seqs)
}

/// A history page: its seqs, `has_more`, `gap`, `first_seq`.
async fn history(
    ws: &mut Socket,
    id: u64,
    before: Option<u64>,
) -> (Vec<u64>, bool, bool, Option<u64>) {
    let mut frame = json!({"type":"history","id":id,"room":"general","limit":50});
    if let Some(b) = before {
        frame["before"] = json!(b);
    }
    say(ws, frame).await;
    until(ws, |f| match f {
        ServerFrame::History {
            messages,
            has_more,
            gap,
            first_seq,
            ..
        } => Some((
            messages.iter().map(|m| m.seq.0).collect(),
            has_more,
            gap,
            first_seq.map(|s| s.0),
        )),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_trims_the_stream_and_every_server_says_the_gap() {
    let redis = Redis::start();
    let admin = format!("127.0.0.1:{}", free_port());
    let a = node(&redis, Some(&admin));
    let b = node(&redis, None);

    // Bob is on B before anything is sent: B holds the room in its window.
    let (mut bob, _, _) = connect(&b.addr, "bob", None).await;
    let (mut alice, _, _) = connect(&a.addr, "alice", None).await;
    for i in 1..=20 {
        common::send_acked(
            &mut alice,
            WAIT,
            json!({"type":"send","id":i,"room":"general","body":format!("m{i}")}),
        )
        .await;
    }
    until(&mut bob, |f| match f {
        ServerFrame::Message(m) if m.seq.0 == 20 => Some(()),
        _ => None,
    })
    .await;

    // The sweep keeps exactly the newest five entries, and says where the log starts.
    wait_stream_len(&redis, 5);
    assert_eq!(redis.cli(&["HGET", "chat:{general}:meta", "first"]), "16");

    // On B, whose window held 1..20: a page that reaches the start says the gap (the
    // trim's doorbell reaches B shortly after the sweep: waited for, within a bound).
    let deadline = Instant::now() + WAIT;
    let mut id = 100;
    let page = loop {
        id += 1;
        let page = history(&mut bob, id, None).await;
        if page.2 || Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(page, (vec![16, 17, 18, 19, 20], false, true, Some(16)));
    // Below the first kept seq: nothing, and the gap.
    assert_eq!(
        history(&mut bob, 200, Some(16)).await,
        (vec![], false, true, Some(16))
    );
    // Carol resumes on B from seq 1: `gap`, and none of the trimmed messages.
    let (_carol, gap, seqs) = connect(&b.addr, "carol", Some(1)).await;
    assert!(gap, "a resume below the first kept seq is a gap: {seqs:?}");
    assert!(seqs.iter().all(|s| *s >= 16), "{seqs:?}");
    // A resume from just before the first kept seq is the exact suffix.
    let (_dave, gap, seqs) = connect(&a.addr, "dave", Some(15)).await;
    assert!(!gap);
    assert_eq!(seqs, [16, 17, 18, 19, 20]);

    // A server started after the trim loads the room from the log and says the same.
    let c = node(&redis, None);
    let (mut erin, gap, seqs) = connect(&c.addr, "erin", Some(1)).await;
    assert!(gap, "{seqs:?}");
    assert!(seqs.iter().all(|s| *s >= 16), "{seqs:?}");
    assert_eq!(
        history(&mut erin, 300, None).await,
        (vec![16, 17, 18, 19, 20], false, true, Some(16))
    );

    // The room's own policy, set on A, holds for the whole cluster.
    let answer =
        common::admin_post(&admin, ADMIN_TOKEN, "/retention", "room=general&messages=2").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(redis.cli(&["HGET", "chat:{general}:retain", "count"]), "2");
    wait_stream_len(&redis, 2);
    let deadline = Instant::now() + WAIT;
    let page = loop {
        id += 1;
        let page = history(&mut bob, id, None).await;
        if page.3 == Some(19) || Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(page, (vec![19, 20], false, true, Some(19)));
    // Bad input: a clear refusal, nothing stored.
    let answer = common::admin_post(
        &admin,
        ADMIN_TOKEN,
        "/retention",
        "room=general&messages=lots",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(redis.cli(&["HGET", "chat:{general}:retain", "count"]), "2");
}

/// A count policy keeps a room's stream, and so Redis' memory for it, bounded under a
/// steady send rate over many sweeps, where a room whose own policy keeps everything
/// grows to the stream's window cap (~1000 entries); once traffic stops, the next sweep
/// leaves exactly the policy's count. Prints `MEMORY USAGE` of both streams every 1000
/// messages: the figure in docs/CLUSTER.md ("Retention") is this test with
/// `RETENTION_MESSAGES=6000 cargo test --test cluster_retention stream_memory -- --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_memory_stays_bounded_under_a_steady_rate() {
    let redis = Redis::start();
    let admin = format!("127.0.0.1:{}", free_port());
    let server = node_with(&redis, 100, "1", Some(&admin));
    let answer = common::admin_post(&admin, ADMIN_TOKEN, "/retention", "room=kept").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (mut alice, _, _) = connect(&server.addr, "alice", None).await;
    say(&mut alice, json!({"type":"join","room":"kept"})).await;
    let total: u64 = std::env::var("RETENTION_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let body = "x".repeat(100);
    for i in 1..=total {
        for room in ["general", "kept"] {
            let send = json!({"type":"send","id":i,"room":room,"body":format!("{i:06} {body}")});
            common::send_acked(&mut alice, WAIT, send).await;
        }
        // A steady rate: about 200 messages a second per room.
        tokio::time::sleep(Duration::from_millis(5)).await;
        if i % 1000 == 0 {
            let usage = |room: &str| {
                let key = format!("chat:{{{room}}}:log");
                (
                    redis.cli(&["MEMORY", "USAGE", &key, "SAMPLES", "0"]),
                    redis.cli(&["XLEN", &key]),
                )
            };
            let (g, gl) = usage("general");
            let (k, kl) = usage("kept");
            println!(
                "after {i} messages per room: general {g} bytes ({gl} entries), kept {k} bytes ({kl} entries)"
            );
        }
    }
    // No traffic now: the next sweep leaves the newest 100, and the room that keeps
    // everything holds the window cap's worth.
    let entries = |room: &str| -> u64 {
        redis
            .cli(&["XLEN", &format!("chat:{{{room}}}:log")])
            .parse()
            .expect("a length")
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while entries("general") != 100 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "general still holds {} entries",
            entries("general")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(entries("kept") >= 1000, "kept holds {}", entries("kept"));
    let bytes = |room: &str| -> u64 {
        redis
            .cli(&[
                "MEMORY",
                "USAGE",
                &format!("chat:{{{room}}}:log"),
                "SAMPLES",
                "0",
            ])
            .parse()
            .expect("a size")
    };
    assert!(
        bytes("general") * 4 < bytes("kept"),
        "general {} bytes against kept {}",
        bytes("general"),
        bytes("kept")
    );
}
