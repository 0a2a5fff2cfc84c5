//! Micro benchmarks of the sans-IO core alone: no sockets, no runtime, no JSON decoding of
//! client frames (a driver decodes in its reader tasks). Each iteration feeds one `send`
//! into a `Server` and drains every output it produced (the fan-out to every member, the
//! ack, the event), walking every (recipient, frame) pair of each output as a driver
//! does, which is the work the driver's core task does per message apart from queueing.
//!
//! - `send/room_10`, `send/room_100`, `send/room_10000`: one send into a room of that
//!   many member sessions; throughput is sends per second.
//! - `edit/room_10`, `react/room_10`: one change into the same room of 10: an edit of
//!   the sender's newest message, or its reaction (added, then taken back, in turn). The
//!   entry takes a seq and fans out to every member as a message does; the window's copy
//!   of the target is changed and encoded again. Every 500 changes the sender posts a new
//!   message to change (so the target stays in the window and the edit window): 1 send in
//!   501 iterations is part of the figure.
//! - `fanout/per_extra_recipient`: the marginal cost of one more recipient, measured
//!   directly as (time of a send into 10,000 members − time of a send into 100) / 9,900,
//!   alternating the two rooms within each sample.
//! - `join/storm_1000`: 1,000 sessions that said `hello` without rooms all `join` one new
//!   room, one after the other; one sample is the whole join phase with every output
//!   drained: 1,000 `joined` frames (each listing everyone who joined before) and 499,500
//!   `user_joined` notices, in protocol version 1. Setting up the sessions is not timed.
//! - `join/storm_1000_v2`: the same in protocol version 2, then the room's presence tick:
//!   1,000 `joined` frames (above the presence threshold each carries a count and the
//!   first page of members) and one coalesced `presence` frame to all 1,000.
//!
//! Flood control is configured out of the way (huge send and frame rates).
//!
//! Run with:
//!
//! ```text
//! cargo bench --bench core
//! cargo bench --bench core -- --warm-up-time 1 --measurement-time 3
//! cargo bench --bench core -- join
//! ```
//!
//! On a shared, noisy machine criterion's means mostly measure the neighbours. With
//! `CORE_BENCH_MIN_OF=1` the same workloads are timed as the fastest of many short
//! batches instead (preemption only ever adds time, so the minimum is the least disturbed
//! figure), printed as a few rounds:
//!
//! ```text
//! CORE_BENCH_MIN_OF=1 cargo bench --bench core
//! CORE_BENCH_MIN_OF=changes cargo bench --bench core
//! ```

use chat_core::RequestId;
use chat_core::protocol::{EditRequest, HelloRequest, JoinRequest, ReactRequest, SendRequest};
use std::hint::black_box;
use std::time::{Duration, Instant};

use chat_core::protocol::{
    ClientFrame, JoinSpec, PROTOCOL_VERSION, PROTOCOL_VERSION_1, ServerFrame,
};
use chat_core::{Config, Input, Now, Output, Rate, RoomName, Seq, Server, SessionId};
use criterion::{Criterion, Throughput, criterion_group};

const BODY: &str = "hello everyone, this is a typical short chat message";

/// A server holding one room, `bench`, with `members` sessions. The sender is session 1.
///
/// Fan-out is per session, so big rooms are built from at most 100 users with several
/// sessions each (tabs, proven with the `welcome` token): the send path is the same as
/// with one user per session, and the setup avoids the O(users²) cost of every join
/// listing every member.
struct Fixture {
    server: Server,
    now: Now,
    sender: SessionId,
    send: ClientFrame,
    /// The change benches: changes posted so far, and the message they change.
    changes: u64,
    target: Seq,
}

/// What a change bench posts.
#[derive(Debug, Clone, Copy)]
enum Change {
    /// An edit of the sender's newest message.
    Edit,
    /// The sender's reaction to it, added and taken back in turn.
    React,
}

/// Connects `session` and hands the server its `hello` (outputs left to the caller).
fn connect(server: &mut Server, now: Now, session: SessionId, hello: ClientFrame) {
    server
        .handle_input(now, Input::Connected { session })
        .expect("fresh session");
    server
        .handle_input(
            now,
            Input::Received {
                session,
                frame: Ok(hello),
            },
        )
        .expect("valid input");
}

impl Fixture {
    fn new(members: u64) -> Fixture {
        let unlimited = Rate {
            burst: u32::MAX,
            per_second: u32::MAX,
        };
        let config = Config {
            send_rate: unlimited,
            frame_rate: unlimited,
            default_rooms: Vec::new(),
            ..Config::default()
        };
        let mut server = Server::new(config);
        let now = Now::new(Instant::now(), chrono::Utc::now());
        let users = members.min(100);
        let mut tokens: Vec<Option<String>> = vec![None; users as usize];
        for i in 0..members {
            let session = SessionId(i + 1);
            let user = (i % users) as usize;
            let hello = ClientFrame::Hello(HelloRequest {
                id: None,
                version: PROTOCOL_VERSION,
                name: format!("user{user}"),
                token: tokens[user].clone(),
                rooms: Some(vec![JoinSpec {
                    room: "bench".into(),
                    since: None,
                }]),
            });
            connect(&mut server, now, session, hello);
            while let Some(output) = server.poll_output() {
                if let Output::Send { to, frame } = output
                    && to == session
                    && let Ok(ServerFrame::Welcome { token, .. }) = frame.decode()
                {
                    tokens[user] = token;
                }
            }
        }
        assert_eq!(server.session_count() as u64, members);
        let send = ClientFrame::Send(SendRequest {
            id: Some(RequestId(1)),
            room: Some("bench".into()),
            to: None,
            body: BODY.into(),
            client_id: None,
            reply_to: None,
        });
        Fixture {
            server,
            now,
            sender: SessionId(1),
            send,
            changes: 0,
            target: Seq(0),
        }
    }

    /// One change to the sender's newest message and everything it causes, drained
    /// (every 500 changes, first a new message to change). Returns the frames queued.
    fn change_one(&mut self, kind: Change) -> usize {
        let mut frames = 0;
        if self.changes.is_multiple_of(500) {
            frames += self.send_one();
            let room = RoomName::parse("bench", 64, 32).expect("a room name");
            self.target = self.server.last_seq(&room).expect("the bench room");
        }
        self.changes += 1;
        let frame = match kind {
            Change::Edit => ClientFrame::Edit(EditRequest {
                id: Some(RequestId(2)),
                room: "bench".into(),
                seq: self.target,
                body: BODY.into(),
                client_id: None,
            }),
            Change::React => ClientFrame::React(ReactRequest {
                id: Some(RequestId(3)),
                room: "bench".into(),
                seq: self.target,
                emoji: "👍".into(),
                on: self.changes % 2 == 1,
                client_id: None,
            }),
        };
        self.server
            .handle_input(
                self.now,
                Input::Received {
                    session: self.sender,
                    frame: Ok(frame),
                },
            )
            .expect("valid input");
        frames + drain(&mut self.server)
    }

    /// One send and everything it causes, drained. Returns the number of frames queued.
    fn send_one(&mut self) -> usize {
        self.server
            .handle_input(
                self.now,
                Input::Received {
                    session: self.sender,
                    frame: Ok(self.send.clone()),
                },
            )
            .expect("valid input");
        drain(&mut self.server)
    }
}

/// Drains every output, walking each (recipient, frame) pair as a driver does (one
/// output per room event since `Output::Broadcast`: the walk is what is left per
/// recipient). Returns the number of frames queued.
#[inline]
fn drain(server: &mut Server) -> usize {
    let mut frames = 0;
    while let Some(output) = server.poll_output() {
        for pair in output.sends() {
            black_box(pair);
            frames += 1;
        }
        black_box(output);
    }
    frames
}

/// `clients` sessions that said `hello` (no rooms) in protocol `version`, about to all
/// join `general`.
struct Storm {
    server: Server,
    now: Now,
    version: u32,
    joins: Vec<(SessionId, ClientFrame)>,
}

impl Storm {
    fn new(clients: u64, version: u32) -> Storm {
        let config = Config {
            default_rooms: Vec::new(),
            ..Config::default()
        };
        let mut server = Server::new(config);
        let now = Now::new(Instant::now(), chrono::Utc::now());
        let mut joins = Vec::new();
        for i in 0..clients {
            let session = SessionId(i + 1);
            let hello = ClientFrame::Hello(HelloRequest {
                id: None,
                version,
                // Names as the load tool picks them (`u<pid>x<index>`).
                name: format!("u4242x{i}"),
                token: None,
                rooms: None,
            });
            connect(&mut server, now, session, hello);
            while server.poll_output().is_some() {}
            let join = ClientFrame::Join(JoinRequest {
                id: Some(RequestId(1)),
                room: "general".into(),
                since: None,
            });
            joins.push((session, join));
        }
        Storm {
            server,
            now,
            version,
            joins,
        }
    }

    /// Every session joins, each join's outputs drained before the next. Returns the
    /// number of frames queued. Not inlined, so that a profiler can count exactly this:
    /// `valgrind --tool=callgrind --toggle-collect='core::Storm::run' <bench binary>
    /// --bench join --profile-time 1`.
    #[inline(never)]
    fn run(&mut self) -> usize {
        let mut frames = 0;
        for (session, join) in self.joins.drain(..) {
            self.server
                .handle_input(
                    self.now,
                    Input::Received {
                        session,
                        frame: Ok(join),
                    },
                )
                .expect("valid input");
            frames += drain(&mut self.server);
        }
        if self.version != PROTOCOL_VERSION_1 {
            // Version 2 announces the joins at the room's next presence tick.
            let tick = Duration::from_millis(50);
            let later = Now::new(
                self.now.mono + tick,
                self.now.utc + chrono::Duration::milliseconds(50),
            );
            self.server.handle_timeout(later);
            frames += drain(&mut self.server);
        }
        frames
    }
}

/// The join phase of a storm of `clients` in protocol `version`, timed alone (setup and
/// teardown are not).
fn storm_once(clients: u64, version: u32) -> Duration {
    let mut storm = Storm::new(clients, version);
    let start = Instant::now();
    let frames = black_box(storm.run());
    let took = start.elapsed();
    let expected = if version == PROTOCOL_VERSION_1 {
        // A `joined` each, and every earlier member told of every later join.
        clients + clients * (clients - 1) / 2
    } else {
        // A `joined` each, and one coalesced `presence` frame to everyone at the tick.
        2 * clients
    };
    assert_eq!(frames as u64, expected);
    took
}

fn join_storm(c: &mut Criterion) {
    let clients = 1000;
    let mut group = c.benchmark_group("join");
    group.sample_size(10);
    group.throughput(Throughput::Elements(clients));
    group.bench_function(format!("storm_{clients}"), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| storm_once(clients, PROTOCOL_VERSION_1))
                .sum()
        });
    });
    group.bench_function(format!("storm_{clients}_v2"), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| storm_once(clients, PROTOCOL_VERSION))
                .sum()
        });
    });
    group.finish();
}

fn sends(c: &mut Criterion) {
    let mut group = c.benchmark_group("send");
    group.throughput(Throughput::Elements(1));
    for members in [10, 100, 10_000] {
        // Built on first use, so a filtered-out benchmark costs no setup.
        let mut fixture = None;
        group.bench_function(format!("room_{members}"), |b| {
            let f = fixture.get_or_insert_with(|| {
                let mut f = Fixture::new(members);
                // Every member gets the message, and the sender its ack.
                assert_eq!(f.send_one() as u64, members + 1);
                f
            });
            b.iter(|| black_box(f.send_one()));
        });
    }
    group.finish();
}

fn changes(c: &mut Criterion) {
    for (name, kind) in [("edit", Change::Edit), ("react", Change::React)] {
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Elements(1));
        let mut fixture = None;
        group.bench_function("room_10", |b| {
            let f = fixture.get_or_insert_with(|| {
                let mut f = Fixture::new(10);
                // Every member gets the change, and the sender its ack (after the first
                // message to change and its 11 frames).
                assert_eq!(f.change_one(kind), 22);
                assert_eq!(f.change_one(kind), 11, "{kind:?} refused");
                f
            });
            b.iter(|| black_box(f.change_one(kind)));
        });
        group.finish();
    }
}

/// The fastest of `batches` runs of `batch` changes, per change, in nanoseconds.
fn fastest_change(f: &mut Fixture, kind: Change, batch: u32, batches: u32) -> f64 {
    let mut best = Duration::MAX;
    for _ in 0..batches {
        let start = Instant::now();
        for _ in 0..batch {
            black_box(f.change_one(kind));
        }
        best = best.min(start.elapsed());
    }
    best.as_secs_f64() * 1e9 / f64::from(batch)
}

fn per_recipient(c: &mut Criterion) {
    let (small_n, big_n) = (100u32, 10_000u32);
    let mut fixtures = None;
    let mut group = c.benchmark_group("fanout");
    group.throughput(Throughput::Elements(1));
    group.bench_function("per_extra_recipient", |b| {
        let (small, big) = fixtures
            .get_or_insert_with(|| (Fixture::new(small_n.into()), Fixture::new(big_n.into())));
        b.iter_custom(|iters| {
            let (mut t_small, mut t_big) = (Duration::ZERO, Duration::ZERO);
            for _ in 0..iters {
                let start = Instant::now();
                black_box(small.send_one());
                t_small += start.elapsed();
                let start = Instant::now();
                black_box(big.send_one());
                t_big += start.elapsed();
            }
            t_big.saturating_sub(t_small) / (big_n - small_n)
        });
    });
    group.finish();
}

/// The fastest of `batches` runs of `batch` sends, per send, in nanoseconds.
fn fastest(f: &mut Fixture, batch: u32, batches: u32) -> f64 {
    let mut best = Duration::MAX;
    for _ in 0..batches {
        let start = Instant::now();
        for _ in 0..batch {
            black_box(f.send_one());
        }
        best = best.min(start.elapsed());
    }
    best.as_secs_f64() * 1e9 / f64::from(batch)
}

fn min_of_batches() {
    if std::env::var("CORE_BENCH_MIN_OF").is_ok_and(|v| v == "changes") {
        return min_of_changes();
    }
    let (mut f10, mut f100, mut f10k) = (Fixture::new(10), Fixture::new(100), Fixture::new(10_000));
    // Fill the history windows (1000 messages) so every send also evicts, as in steady state.
    for _ in 0..1100 {
        f10.send_one();
        f100.send_one();
        f10k.send_one();
    }
    for round in 1..=5 {
        let storm = (0..10)
            .map(|_| storm_once(1000, PROTOCOL_VERSION_1))
            .min()
            .expect("runs");
        let storm_v2 = (0..10)
            .map(|_| storm_once(1000, PROTOCOL_VERSION))
            .min()
            .expect("runs");
        let t10 = fastest(&mut f10, 200, 300);
        let t100 = fastest(&mut f100, 50, 300);
        let t10k = fastest(&mut f10k, 2, 150);
        println!(
            "round {round}: room_10 {t10:.0} ns/send = {:.0}k sends/s | room_100 {t100:.0} ns/send | \
             room_10000 {:.1} us/send | per extra recipient (room_10000 - room_100) / 9900 = {:.1} ns | \
             join storm of 1000 {:.1} ms (version 2: {:.1} ms)",
            1e6 / t10,
            t10k / 1e3,
            (t10k - t100) / 9900.0,
            storm.as_secs_f64() * 1e3,
            storm_v2.as_secs_f64() * 1e3
        );
    }
}

/// `CORE_BENCH_MIN_OF=changes`: a send, an edit and a reaction into a room of 10, each
/// the fastest of many short batches, in turn.
fn min_of_changes() {
    let (mut send, mut edit, mut react) = (Fixture::new(10), Fixture::new(10), Fixture::new(10));
    // Full windows (1000 entries), so every post also evicts, as in steady state.
    for _ in 0..1100 {
        send.send_one();
        edit.change_one(Change::Edit);
        react.change_one(Change::React);
    }
    for round in 1..=5 {
        let t_send = fastest(&mut send, 200, 300);
        let t_edit = fastest_change(&mut edit, Change::Edit, 200, 300);
        let t_react = fastest_change(&mut react, Change::React, 200, 300);
        println!(
            "round {round}: room_10 send {t_send:.0} ns ({:.0}k/s) | edit {t_edit:.0} ns ({:.0}k/s, {:.2}x a send) | \
             react {t_react:.0} ns ({:.0}k/s, {:.2}x a send)",
            1e6 / t_send,
            1e6 / t_edit,
            t_edit / t_send,
            1e6 / t_react,
            t_react / t_send,
        );
    }
}

criterion_group!(benches, sends, changes, per_recipient, join_storm);

fn main() {
    if std::env::var_os("CORE_BENCH_MIN_OF").is_some() {
        min_of_batches();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
