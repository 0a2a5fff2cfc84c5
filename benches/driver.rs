//! Where one driver core saturates, measured directly: a real [`Hub`] (no store, the
//! per-session flood limits lifted as the bench server lifts them) alone on a tokio
//! runtime with one thread pinned to CPU 0, fed by in-process sessions
//! ([`Hub::connect`]) whose tasks run on a second one-thread runtime pinned to CPU 1.
//!
//! Senders keep `DRIVER_BENCH_IN_FLIGHT` messages each in flight (the next goes on an
//! ack), so the driver always has input; every other member only takes its frames in
//! large batches, counts them and drops them. Over a fixed window after a warm-up the
//! bench reads the hub thread's CPU time (`/proc/self/task/TID/schedstat`, nanoseconds,
//! read from the client thread) and the frames counted, and prints deliveries/s (message
//! frames received by every member, the author's own copy included, as the load tool
//! counts them), the driver's CPU-µs per delivery and per send, and how busy the hub
//! thread and the client thread were. When the hub thread is not ~100% busy, the client
//! side (the drainers and senders) was the limit instead, and the table says so.
//!
//! Two ways for the members that only read to take their frames (`DRIVER_BENCH_DRAIN`,
//! `wake` or `poll`; both by default):
//!
//! - woken: one task per member waits on its outbox, so the driver's push wakes it as it
//!   wakes a connection's writer: the wake-up is part of the driver's CPU time, and when
//!   the client thread sleeps in its runtime's poll it costs a write to that runtime's
//!   eventfd (a syscall), more than a wake-up to a busy worker thread costs.
//! - polled: one task sweeps every member's outbox with a no-op waker and yields between
//!   sweeps (the client thread spins): the driver's pushes wake nobody, so its CPU time
//!   is the engine and the queueing alone. The two bracket what a saturated server's
//!   driver pays per delivery.
//!
//! Shapes (each a fresh hub), `DRIVER_BENCH_SENDERS` (10) senders:
//!
//! - `room_10`, `room_100`, `room_1000`: one room of that many members; the senders are
//!   members of it.
//! - `rooms_100x10`: 100 rooms of 10 members; sender `s` is a member of the rooms
//!   `r` with `r % senders == s` and posts to them in turn, so every room has one
//!   sender, every message still has 10 recipients, and as many messages are in flight
//!   as in `room_10`: what differs is only the number of rooms the driver touches.
//!
//! ```text
//! cargo bench --bench driver
//! DRIVER_BENCH_SECS=2 DRIVER_BENCH_WARMUP=0.5 DRIVER_BENCH_ROUNDS=1 cargo bench --bench driver
//! DRIVER_BENCH_SHAPES=room_10,rooms_100x10 cargo bench --bench driver
//! ```
//!
//! `DRIVER_BENCH_FANOUT` (a comma list, default `0`) runs each shape with that many
//! fan-out threads ([`HubConfig::fanout_threads`]; 0: the driver queues every frame
//! itself). The threads run on the client's CPU, so the driver's CPU stays its own;
//! their CPU time is reported beside the driver's.
//!
//! `DRIVER_BENCH_SECS` (5) is the measured window, `DRIVER_BENCH_WARMUP` (1) the
//! warm-up before it, `DRIVER_BENCH_ROUNDS` (3) the rounds (interleaved over the shapes);
//! the table shows, per shape, the round with the least driver CPU per delivery (the
//! least disturbed by other load: preemption and cache pollution only ever add) and the
//! range of deliveries/s over the rounds. Linux only (CPU pinning, `/proc`); it needs 2
//! CPUs. Without `--bench` (`cargo test --benches`) it runs one short round.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use chat_core::protocol::{ClientFrame, HelloRequest, JoinSpec, PROTOCOL_VERSION};
use chat_core::runtime::transport::{BatchLimit, Outbound, PeerFrame};
use chat_core::runtime::{Hub, HubConfig};
use chat_core::{Config, Rate};

/// The CPU the hub's runtime thread is pinned to.
const HUB_CPU: usize = 0;
/// The CPU the sessions' runtime (senders and drainers) is pinned to.
const CLIENT_CPU: usize = 1;
/// The message body: 11 bytes, as in docs/BENCHMARKS.md's frame sizes.
const BODY: &str = "hello world";
/// What a drainer takes per batch: large, so a wake-up costs the client side little.
const DRAIN: BatchLimit = BatchLimit {
    frames: 4096,
    bytes: 16 << 20,
};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One workload.
#[derive(Debug, Clone)]
struct Shape {
    name: &'static str,
    rooms: usize,
    members: usize,
    senders: usize,
    in_flight: usize,
}

impl Shape {
    /// The rooms sender `s` is a member of and posts to (in turn).
    fn rooms_of(&self, s: usize) -> Vec<usize> {
        if self.rooms <= self.senders {
            vec![s % self.rooms]
        } else {
            (0..self.rooms).filter(|r| r % self.senders == s).collect()
        }
    }

    /// How many senders are members of room `r`.
    fn senders_in(&self, r: usize) -> usize {
        (0..self.senders)
            .filter(|&s| self.rooms_of(s).contains(&r))
            .count()
    }
}

/// What the sessions counted, summed over all of them.
#[derive(Default)]
struct Counts {
    /// `message` frames received (by every member, the author included).
    deliveries: AtomicU64,
    /// Acks the senders received: sends handled by the driver.
    acks: AtomicU64,
    /// `joined` frames received (setup).
    joined: AtomicU64,
    /// Any other frame (presence, errors, …).
    other: AtomicU64,
    /// Sessions the hub closed before the end (a slow consumer would be one).
    closed: AtomicU64,
    /// Set at the end: the hub's shutdown closes every session, which is not counted.
    ending: AtomicBool,
}

/// Sorts a batch of frames into `counts`; returns the acks in it and whether the
/// session ended.
fn count(batch: &mut Vec<Outbound>, counts: &Counts) -> (u64, bool) {
    let (mut messages, mut acks, mut joined, mut other) = (0, 0, 0, 0);
    let mut ended = false;
    for item in batch.drain(..) {
        match item {
            Outbound::Frame(f) => {
                let b = f.bytes();
                if b.starts_with(br#"{"type":"message","#) {
                    messages += 1;
                } else if b.starts_with(br#"{"type":"ack","#) {
                    acks += 1;
                } else if b.starts_with(br#"{"type":"joined""#) {
                    joined += 1;
                } else if b.starts_with(br#"{"type":"error""#) {
                    panic!("the hub refused something: {}", f.text());
                } else {
                    other += 1;
                }
            }
            Outbound::Close(reason) => {
                if !counts.ending.load(Relaxed) {
                    eprintln!("a session was closed during the run: {reason:?}");
                    counts.closed.fetch_add(1, Relaxed);
                }
                ended = true;
            }
        }
    }
    counts.deliveries.fetch_add(messages, Relaxed);
    counts.acks.fetch_add(acks, Relaxed);
    if joined > 0 {
        counts.joined.fetch_add(joined, Relaxed);
    }
    if other > 0 {
        counts.other.fetch_add(other, Relaxed);
    }
    (acks, ended)
}

fn hello(name: String, rooms: &[usize]) -> Vec<u8> {
    let frame = ClientFrame::Hello(HelloRequest {
        id: None,
        version: PROTOCOL_VERSION,
        name,
        token: None,
        rooms: Some(
            rooms
                .iter()
                .map(|r| JoinSpec {
                    room: format!("r{r}"),
                    since: None,
                })
                .collect(),
        ),
    });
    serde_json::to_vec(&frame).expect("serialize")
}

/// A member that only reads: takes its frames in batches, counts and drops them.
async fn drainer(hub: Hub, name: String, room: usize, counts: Arc<Counts>) {
    let (mut inbound, mut outbox) = hub.connect().await.expect("hub runs").split();
    inbound
        .send(PeerFrame::Text(&hello(name, &[room])))
        .await
        .expect("hub runs");
    let mut batch = Vec::with_capacity(DRAIN.frames);
    loop {
        if outbox.recv_many(&mut batch, DRAIN).await == 0 {
            break;
        }
        if count(&mut batch, &counts).1 {
            break;
        }
    }
    drop(inbound);
}

/// Every other member of the run in one task that polls their outboxes in turn with a
/// no-op waker (`DRIVER_BENCH_DRAIN=poll`): the driver's pushes then wake nobody, so its
/// CPU time is the engine and the queueing alone, without the wake-ups.
async fn poller(hub: Hub, members: Vec<(String, usize)>, counts: Arc<Counts>) {
    let mut outboxes = Vec::with_capacity(members.len());
    let mut inbounds = Vec::with_capacity(members.len());
    for (name, room) in members {
        let (mut inbound, outbox) = hub.connect().await.expect("hub runs").split();
        inbound
            .send(PeerFrame::Text(&hello(name, &[room])))
            .await
            .expect("hub runs");
        outboxes.push(outbox);
        inbounds.push(inbound);
    }
    let mut batch = Vec::with_capacity(DRAIN.frames);
    while !outboxes.is_empty() {
        {
            // Not held across the yield: a `Context` is not `Send`.
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            outboxes.retain_mut(|outbox| {
                loop {
                    match outbox.poll_recv_many(&mut cx, &mut batch, DRAIN) {
                        std::task::Poll::Ready(0) => return false,
                        std::task::Poll::Ready(_) => {
                            if count(&mut batch, &counts).1 {
                                return false;
                            }
                        }
                        std::task::Poll::Pending => return true,
                    }
                }
            });
        }
        // Lets the senders (and the timers) run between sweeps.
        tokio::task::yield_now().await;
    }
    drop(inbounds);
}

/// A sender: posts to its rooms in turn, keeping `in_flight` messages unacknowledged,
/// once `go` is set; reads and counts everything it is sent.
async fn sender(
    hub: Hub,
    s: usize,
    shape: Shape,
    counts: Arc<Counts>,
    go: Arc<tokio::sync::Notify>,
    stop: Arc<AtomicBool>,
) {
    let rooms = shape.rooms_of(s);
    let (mut inbound, mut outbox) = hub.connect().await.expect("hub runs").split();
    inbound
        .send(PeerFrame::Text(&hello(format!("sender{s}"), &rooms)))
        .await
        .expect("hub runs");
    // Encoded once: the same request id every time (the ack only frees a slot).
    let sends: Vec<Vec<u8>> = rooms
        .iter()
        .map(|r| format!(r#"{{"type":"send","id":1,"room":"r{r}","body":"{BODY}"}}"#).into_bytes())
        .collect();
    let mut batch = Vec::with_capacity(DRAIN.frames);
    let started = go.notified();
    tokio::pin!(started);
    // Until the start, read what setup brings (welcome, joined, presence).
    loop {
        tokio::select! {
            () = &mut started => break,
            n = outbox.recv_many(&mut batch, DRAIN) => {
                if n == 0 || count(&mut batch, &counts).1 {
                    return;
                }
            }
        }
    }
    let (mut outstanding, mut next) = (0usize, 0usize);
    loop {
        while outstanding < shape.in_flight && !stop.load(Relaxed) {
            let frame = &sends[next % sends.len()];
            next += 1;
            if inbound.send(PeerFrame::Text(frame)).await.is_err() {
                return;
            }
            outstanding += 1;
        }
        if outbox.recv_many(&mut batch, DRAIN).await == 0 {
            return;
        }
        let (acks, ended) = count(&mut batch, &counts);
        if ended {
            return;
        }
        outstanding -= acks as usize;
    }
}

/// The hub thread's id as `/proc/self/task/` names it, and what it consumed so far.
#[derive(Debug, Clone)]
struct Thread(String);

impl Thread {
    /// The calling thread.
    fn current() -> Thread {
        let link = std::fs::read_link("/proc/thread-self").expect("Linux /proc/thread-self");
        // "PID/task/TID"
        let tid = link
            .file_name()
            .and_then(|t| t.to_str())
            .expect("a thread id")
            .to_owned();
        Thread(tid)
    }

    /// The hub's fan-out threads (named `chat-fanout-N`) alive now.
    fn fanout() -> Vec<Thread> {
        let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
            return Vec::new();
        };
        dir.filter_map(|e| {
            let tid = e.ok()?.file_name().into_string().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).ok()?;
            comm.starts_with("chat-fanout-").then_some(Thread(tid))
        })
        .collect()
    }

    /// Time the thread has waited runnable for a CPU so far (`schedstat`'s second field;
    /// zero where it is not kept).
    fn waited(&self) -> Duration {
        let ns = std::fs::read_to_string(format!("/proc/self/task/{}/schedstat", self.0))
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0);
        Duration::from_nanos(ns)
    }

    /// CPU time the thread has run so far: `schedstat`'s first field (nanoseconds), or
    /// `stat`'s utime + stime (ticks of 10 ms) where schedstat reads 0.
    fn cpu(&self) -> Duration {
        let dir = format!("/proc/self/task/{}", self.0);
        let ns = std::fs::read_to_string(format!("{dir}/schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        if ns > 0 {
            return Duration::from_nanos(ns);
        }
        let stat = std::fs::read_to_string(format!("{dir}/stat")).unwrap_or_default();
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        Duration::from_millis((tick(11).unwrap_or(0) + tick(12).unwrap_or(0)) * 10)
    }
}

/// What one run measured over its window.
#[derive(Debug, Clone)]
struct Outcome {
    window: Duration,
    deliveries: u64,
    sends: u64,
    hub_cpu: Duration,
    client_cpu: Duration,
    /// The fan-out threads' CPU time, together.
    fanout_cpu: Duration,
    /// Time the hub thread waited runnable for its CPU (taken by other processes).
    hub_waited: Duration,
    other: u64,
}

/// How the members that only read take their frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// One task per member, woken by the driver's push (as a connection's writer is).
    Wake,
    /// One task polling every member's outbox in turn, never woken.
    Poll,
}

impl Outcome {
    fn per_delivery_us(&self) -> f64 {
        self.hub_cpu.as_secs_f64() * 1e6 / self.deliveries.max(1) as f64
    }
    fn fanout_per_delivery_us(&self) -> f64 {
        self.fanout_cpu.as_secs_f64() * 1e6 / self.deliveries.max(1) as f64
    }
    fn per_send_us(&self) -> f64 {
        self.hub_cpu.as_secs_f64() * 1e6 / self.sends.max(1) as f64
    }
    fn deliveries_per_s(&self) -> f64 {
        self.deliveries as f64 / self.window.as_secs_f64()
    }
    fn hub_busy(&self) -> f64 {
        self.hub_cpu.as_secs_f64() / self.window.as_secs_f64()
    }
    fn hub_waiting(&self) -> f64 {
        self.hub_waited.as_secs_f64() / self.window.as_secs_f64()
    }
    fn fanout_busy(&self) -> f64 {
        self.fanout_cpu.as_secs_f64() / self.window.as_secs_f64()
    }
    fn client_busy(&self) -> f64 {
        self.client_cpu.as_secs_f64() / self.window.as_secs_f64()
    }
}

/// Starts a hub on its own thread and one-thread runtime, pinned to `HUB_CPU`.
fn start_hub(fanout: usize) -> (Hub, Thread, std::thread::JoinHandle<()>) {
    let unlimited = Rate {
        burst: 1_000_000,
        per_second: 1_000_000,
    };
    let config = HubConfig {
        core: Config {
            send_rate: unlimited,
            frame_rate: unlimited,
            max_rooms: 1_000_000,
            default_rooms: Vec::new(),
            ..Config::default()
        },
        // Room for a backlog while the client thread catches up: a close here would
        // end the run (and is reported), not measure anything.
        outbound_queue: 1 << 16,
        outbound_bytes: 256 << 20,
        fanout_threads: fanout,
        ..HubConfig::default()
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("driver-hub".into())
        .spawn(move || {
            assert!(
                core_affinity::set_for_current(core_affinity::CoreId { id: HUB_CPU }),
                "pinning the hub thread to CPU {HUB_CPU}"
            );
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("hub runtime");
            rt.block_on(async move {
                // The fan-out threads inherit the CPU of the thread that starts them:
                // the client's, so the hub's CPU is the driver's alone.
                assert!(
                    core_affinity::set_for_current(core_affinity::CoreId { id: CLIENT_CPU }),
                    "pinning to CPU {CLIENT_CPU} while the fan-out threads start"
                );
                let hub = Hub::spawn(config).await.expect("hub starts");
                assert!(
                    core_affinity::set_for_current(core_affinity::CoreId { id: HUB_CPU }),
                    "pinning the hub thread to CPU {HUB_CPU}"
                );
                tx.send((hub.clone(), Thread::current()))
                    .expect("the client side waits");
                hub.closed().await;
            });
        })
        .expect("hub thread");
    let (hub, thread) = rx.recv().expect("hub starts");
    (hub, thread, handle)
}

/// One run of `shape` on a fresh hub; called on the client runtime.
async fn run(
    shape: &Shape,
    drain: Drain,
    fanout: usize,
    warmup: Duration,
    window: Duration,
) -> Outcome {
    let (hub, hub_thread, hub_handle) = start_hub(fanout);
    // The last hub's threads may take a moment to be gone.
    let mut fanout_threads = Thread::fanout();
    for _ in 0..100 {
        if fanout_threads.len() == fanout {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        fanout_threads = Thread::fanout();
    }
    assert_eq!(fanout_threads.len(), fanout, "the hub's fan-out threads");
    let me = Thread::current();
    let counts = Arc::new(Counts::default());
    let go = Arc::new(tokio::sync::Notify::new());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let mut joins = 0u64;
    for s in 0..shape.senders {
        joins += shape.rooms_of(s).len() as u64;
        tasks.push(tokio::spawn(sender(
            hub.clone(),
            s,
            shape.clone(),
            counts.clone(),
            go.clone(),
            stop.clone(),
        )));
    }
    let mut polled = Vec::new();
    for r in 0..shape.rooms {
        for m in 0..shape.members.saturating_sub(shape.senders_in(r)) {
            joins += 1;
            let name = format!("r{r}m{m}");
            match drain {
                Drain::Wake => {
                    tasks.push(tokio::spawn(drainer(hub.clone(), name, r, counts.clone())));
                }
                Drain::Poll => polled.push((name, r)),
            }
        }
    }
    if !polled.is_empty() {
        tasks.push(tokio::spawn(poller(hub.clone(), polled, counts.clone())));
    }
    // Every session in its rooms, and the presence ticks after the joins gone out.
    while counts.joined.load(Relaxed) < joins {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    go.notify_waiters();
    tokio::time::sleep(warmup).await;
    let snapshot = |counts: &Counts| {
        (
            Instant::now(),
            counts.deliveries.load(Relaxed),
            counts.acks.load(Relaxed),
            counts.other.load(Relaxed),
            hub_thread.cpu(),
            me.cpu(),
            hub_thread.waited(),
            fanout_threads.iter().map(Thread::cpu).sum::<Duration>(),
        )
    };
    let a = snapshot(&counts);
    tokio::time::sleep(window).await;
    let b = snapshot(&counts);
    stop.store(true, Relaxed);
    counts.ending.store(true, Relaxed);
    hub.shutdown().await;
    for t in tasks {
        t.await.expect("session task");
    }
    hub_handle.join().expect("hub thread");
    assert_eq!(
        counts.closed.load(Relaxed),
        0,
        "sessions closed during the run"
    );
    Outcome {
        window: b.0 - a.0,
        deliveries: b.1 - a.1,
        sends: b.2 - a.2,
        other: b.3 - a.3,
        hub_cpu: b.4.saturating_sub(a.4),
        client_cpu: b.5.saturating_sub(a.5),
        hub_waited: b.6.saturating_sub(a.6),
        fanout_cpu: b.7.saturating_sub(a.7),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too: keep it short.
    let quick = !std::env::args().any(|a| a == "--bench");
    let secs = |name, default: f64, quick_default: f64| {
        Duration::from_secs_f64(env_or(name, if quick { quick_default } else { default }))
    };
    let window = secs("DRIVER_BENCH_SECS", 5.0, 0.2);
    let warmup = secs("DRIVER_BENCH_WARMUP", 1.0, 0.1);
    let rounds = env_or("DRIVER_BENCH_ROUNDS", if quick { 1 } else { 3 }).max(1);
    let senders = env_or("DRIVER_BENCH_SENDERS", 10usize).max(1);
    let in_flight = env_or("DRIVER_BENCH_IN_FLIGHT", 8usize).max(1);
    let only = std::env::var("DRIVER_BENCH_SHAPES").unwrap_or_default();
    let drains: Vec<Drain> = match std::env::var("DRIVER_BENCH_DRAIN").as_deref() {
        Ok("wake") => vec![Drain::Wake],
        Ok("poll") => vec![Drain::Poll],
        _ => vec![Drain::Wake, Drain::Poll],
    };
    let shape = |name, rooms, members| Shape {
        name,
        rooms,
        members,
        senders,
        in_flight,
    };
    let shapes: Vec<Shape> = [
        shape("room_10", 1, 10),
        shape("room_100", 1, 100),
        shape("room_1000", 1, 1000),
        shape("rooms_100x10", 100, 10),
    ]
    .into_iter()
    .filter(|s| only.is_empty() || only.split(',').any(|w| w.trim() == s.name))
    .collect();
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("driver bench: needs 2 CPUs; skipped");
        return;
    }
    assert!(
        core_affinity::set_for_current(core_affinity::CoreId { id: CLIENT_CPU }),
        "pinning the client thread to CPU {CLIENT_CPU}"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let load = || {
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|| "?".into())
    };
    println!(
        "\ndriver bench: hub on CPU {HUB_CPU}, sessions on CPU {CLIENT_CPU}; {senders} senders, \
         {in_flight} in flight each; {:.1} s warm-up, {:.1} s window, {rounds} rounds; \
         load average {} at the start",
        warmup.as_secs_f64(),
        window.as_secs_f64(),
        load(),
    );
    // Rounds interleave the shapes, so a burst of load elsewhere hits all of them.
    let fanouts: Vec<usize> = std::env::var("DRIVER_BENCH_FANOUT")
        .unwrap_or_default()
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let fanouts = if fanouts.is_empty() { vec![0] } else { fanouts };
    let runs: Vec<(&Shape, Drain, usize)> = drains
        .iter()
        .flat_map(|&d| shapes.iter().map(move |s| (s, d)))
        // Every member of a room of 10 is a sender (woken for its acks): nothing to poll.
        .filter(|(s, d)| *d == Drain::Wake || s.members > s.senders_in(0).max(1))
        .flat_map(|(s, d)| fanouts.iter().map(move |&f| (s, d, f)))
        .collect();
    let mut results: Vec<Vec<Outcome>> = runs.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for (i, &(shape, drain, fanout)) in runs.iter().enumerate() {
            let o = rt.block_on(run(shape, drain, fanout, warmup, window));
            eprintln!(
                "round {round} {} {drain:?} fan-out {fanout}: {:.0} deliveries/s, {:.4} driver \
                 CPU-µs/delivery, {:.3} per send, fan-out threads {:.4} CPU-µs/delivery, \
                 hub {:.0}% (+{:.0}% waiting for its CPU), client {:.0}%{}",
                shape.name,
                o.deliveries_per_s(),
                o.per_delivery_us(),
                o.per_send_us(),
                o.fanout_per_delivery_us(),
                o.hub_busy() * 100.0,
                o.hub_waiting() * 100.0,
                o.client_busy() * 100.0,
                if o.other > 0 {
                    format!(", {} other frames", o.other)
                } else {
                    String::new()
                },
            );
            results[i].push(o);
        }
    }
    println!("load average {} at the end\n", load());
    println!(
        "| shape | drain | fan-out threads | members per message | deliveries/s (best round) | range over rounds | driver CPU-µs per delivery | driver CPU-µs per send | fan-out threads' CPU-µs per delivery | hub thread busy | hub thread waiting for its CPU | client CPU busy (sessions + fan-out) | limit |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for ((shape, drain, fanout), outcomes) in runs.iter().zip(&results) {
        let best = outcomes
            .iter()
            .min_by(|a, b| a.per_delivery_us().total_cmp(&b.per_delivery_us()))
            .expect("a round");
        let rates = outcomes.iter().map(Outcome::deliveries_per_s);
        let lo = rates.clone().fold(f64::INFINITY, f64::min);
        let hi = rates.fold(0.0, f64::max);
        // Busy or waiting runnable: the driver wanted its CPU the whole window.
        let limit = if best.hub_busy() + best.hub_waiting() >= 0.9 {
            "the driver"
        } else if best.client_busy() + best.fanout_busy() >= 0.9 {
            "the client CPU"
        } else {
            "neither (CPU shared)"
        };
        let m = |x: f64| format!("{:.2} M", x / 1e6);
        println!(
            "| {} | {} | {fanout} | {} | {} | {}-{} | {:.4} | {:.3} | {:.4} | {:.0}% | {:.0}% | {:.0}% | {limit} |",
            shape.name,
            match drain {
                Drain::Wake => "woken",
                Drain::Poll => "polled",
            },
            shape.members,
            m(best.deliveries_per_s()),
            m(lo),
            m(hi),
            best.per_delivery_us(),
            best.per_send_us(),
            best.fanout_per_delivery_us(),
            best.hub_busy() * 100.0,
            best.hub_waiting() * 100.0,
            (best.client_busy() + best.fanout_busy()) * 100.0,
        );
    }
}
