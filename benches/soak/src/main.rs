//! `soak`: runs the example server (a child process, its defaults: SQLite, flood limits)
//! under a realistic mix of clients for a set duration, injects seeded faults, checks as
//! it goes, and writes a report (Markdown table, JSON, PNG plot). Issue 18.
//!
//! ```text
//! soak --duration 60m --rate 20000 --seed 1 --out target/soak
//! soak --duration 2m --faults stop,kill,disk,starve
//! ```
//!
//! The mix, per room (`--rooms`, default 4, of `--members`, default 100, clients): bots
//! posting at a steady rate, humans typing then posting every few seconds (one post in
//! ten a direct message), humans whose connection drops without a close and who resume,
//! readers like the browser page, readers that only answer pings, readers that read in
//! bursts, and joiners/leavers. Deliveries/s = rooms × members × posts/s per room; the
//! bot rate is derived from `--rate` and stays under the server's send limit (5/s).
//!
//! Checks (exit 1 when one fails): every acked message reached every membership exactly
//! once in seq order or the client was told of a gap; no close the client did not cause;
//! every client back and caught up after each fault; sends succeed again after the disk
//! filled; fds and threads flat; the server survives and shuts down cleanly. Targets
//! (RSS within +10% of warm-up, p99 drift within 1.2×, caught up within 5 s) are
//! reported, and fail the run only with `--targets`.

mod check;
mod client;
mod plot;
mod rng;
mod server;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::watch;

use client::{Phase, Role, Shared, Status};
use rng::Rng;

#[derive(Debug, Parser)]
#[command(about = "Soak test of the example chat server, with faults")]
struct Cli {
    /// How long the mix runs: `90s`, `2m`, `60m`, `1h`.
    #[arg(long, default_value = "60m", value_parser = parse_duration)]
    duration: Duration,
    /// Faults to inject, comma-separated: `stop` (SIGSTOP 5 s), `kill` (kill -9 and a
    /// restart on the same file), `disk` (the database's tmpfs fills up), `starve` (the
    /// store's writer thread gets no CPU); `none` for none.
    #[arg(long, default_value = "kill,stop,disk,starve")]
    faults: String,
    /// Seed of every random choice (client timings, fault times).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Deliveries per second offered.
    #[arg(long, default_value_t = 20_000)]
    rate: u32,
    /// Rooms.
    #[arg(long, default_value_t = 4)]
    rooms: usize,
    /// Clients per room.
    #[arg(long, default_value_t = 100)]
    members: usize,
    /// How long each fault lasts, in seconds.
    #[arg(long, default_value_t = 5)]
    fault_secs: u64,
    /// Seconds per row of the report.
    #[arg(long, default_value_t = 10)]
    interval: u64,
    /// The example server binary.
    #[arg(long, default_value = "target/release/examples/server")]
    server: PathBuf,
    /// Where the report, the server log and the database go.
    #[arg(long, default_value = "target/soak")]
    out: PathBuf,
    /// Size of the database's tmpfs in MiB (the disk fault); 0: sized from the run.
    #[arg(long, default_value_t = 0)]
    tmpfs_mib: u64,
    /// Fail the run when a target (RSS, p99 drift, catch-up time) is missed, not only a
    /// check.
    #[arg(long)]
    targets: bool,
    /// Retention in the server under test: it keeps each room's newest N entries
    /// (`--retain-messages` of the example server), so the database's size should level
    /// off; the report's `db MiB` column shows it. Off by default (the file grows).
    #[arg(long)]
    retain_messages: Option<u64>,
    /// Retention in the server under test: messages older than N days are deleted
    /// (`--retain-days`).
    #[arg(long)]
    retain_days: Option<u32>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" | "min" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("bad duration unit in {s:?} (s, m, h)")),
    };
    Ok(Duration::from_secs(secs))
}

/// One row of the report: one interval.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// End of the interval, seconds since start.
    pub t: f64,
    /// Live deliveries per second.
    pub deliveries: f64,
    /// Messages per second delivered inside `joined` replays.
    pub replayed: f64,
    /// Acks per second.
    pub acks: f64,
    /// Delivery latency percentiles, ms.
    pub p50_ms: f64,
    /// p99, ms.
    pub p99_ms: f64,
    /// Max, ms.
    pub max_ms: f64,
    /// Server RSS, MiB.
    pub rss_mib: f64,
    /// jemalloc's live allocations (`jemalloc_allocated_bytes` on `/metrics`), MiB;
    /// `None` when the scrape failed (server stopped) or the server has no jemalloc.
    pub allocated_mib: Option<f64>,
    /// jemalloc's pages holding allocations (`jemalloc_active_bytes`), MiB.
    pub active_mib: Option<f64>,
    /// jemalloc's memory in RAM (`jemalloc_resident_bytes`), MiB.
    pub resident_mib: Option<f64>,
    /// jemalloc's address space kept for reuse (`jemalloc_retained_bytes`), MiB.
    pub retained_mib: Option<f64>,
    /// Rooms in memory (`chat_rooms`).
    pub rooms: Option<u64>,
    /// Server fds.
    pub fds: u64,
    /// Server threads.
    pub threads: u64,
    /// Clients with a session up.
    pub connected: u64,
    /// SQLite bytes (file + WAL + shm).
    pub db_bytes: u64,
    /// Distinct acked messages so far.
    pub messages: u64,
    /// The fault active during the interval, if any.
    pub fault: String,
}

/// One injected fault.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    /// `stop`, `kill`, `disk`, `starve`.
    pub kind: String,
    /// Start, s.
    pub start: f64,
    /// End (the server running normally again), s.
    pub end: f64,
    /// Seconds from the end until every client was back and caught up.
    pub caught_up: Option<f64>,
    /// Acks during the fault.
    pub acks_during: u64,
    /// Acks in the 10 s after it.
    pub acks_after: u64,
    /// `storage_unavailable` errors during and right after it.
    pub storage_errors: u64,
    /// What happened.
    pub note: String,
    /// Skipped, and why.
    pub skipped: Option<String>,
}

struct Run {
    cli: Cli,
    /// Mean members present per room, room posts/s, DM deliveries/s per room.
    present: f64,
    per_room: f64,
    dm_deliveries: f64,
    shared: Arc<Shared>,
    phase: watch::Sender<Phase>,
    spec: server::Spec,
    server: tokio::sync::Mutex<Option<server::Server>>,
    tmpfs: Option<server::Tmpfs>,
    tmpfs_skip: Option<String>,
    rows: Mutex<Vec<Row>>,
    faults: Mutex<Vec<Fault>>,
    /// Server (re)starts, s since start.
    starts: Mutex<Vec<f64>>,
    /// The server died without the harness killing it.
    died: Mutex<Option<String>>,
    /// (s, resources) every second.
    samples: Mutex<Vec<(f64, server::Resources, u64)>>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let code = soak(cli).await?;
    std::process::exit(code);
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn soak(cli: Cli) -> anyhow::Result<i32> {
    let kinds: Vec<String> = if cli.faults == "none" {
        Vec::new()
    } else {
        let mut k: Vec<String> = cli
            .faults
            .split(',')
            .map(|s| s.trim().to_string())
            .collect();
        for f in &k {
            if !["stop", "kill", "disk", "starve"].contains(&f.as_str()) {
                bail!("unknown fault {f:?} (stop, kill, disk, starve, none)");
            }
        }
        // A fixed order (the restart first, so resource trends after it cover most of
        // the run); the seed moves the times.
        k.sort_by_key(|f| {
            ["kill", "stop", "disk", "starve"]
                .iter()
                .position(|x| x == f)
        });
        k.dedup();
        k
    };
    std::fs::create_dir_all(&cli.out)?;
    let out = std::fs::canonicalize(&cli.out)?;
    let bin = std::fs::canonicalize(&cli.server)
        .with_context(|| format!("the server binary {}", cli.server.display()))?;

    // The mix.
    let m = cli.members;
    let bots = m / 5;
    let vanishers = m / 20;
    let humans = m / 5;
    let churn = m / 10;
    let readers = m - bots - vanishers - humans - churn;
    let page = readers / 3;
    let ping = readers / 3;
    let slow = readers - page - ping;
    let human_interval = Duration::from_secs(4);
    // Deliveries/s offered = rooms × (members present × room posts/s + 2 × DMs/s). Of a
    // room's members, joiners/leavers are away 12.5 s of every 52.5 s on average and
    // vanishers 1.75 s of every 51.75 s; a human's interval is exponential around 4 s
    // but at least 1.2 s (typing first), 4.16 s on average; one human post in ten is a
    // direct message (2 deliveries). Bots make up the rest.
    let present = m as f64 - churn as f64 * (12.5 / 52.5) - vanishers as f64 * (1.75 / 51.75);
    let human_mean = 1.2 + 4.0 * (-1.2f64 / 4.0).exp();
    let human_room = (humans as f64 * 0.9 + vanishers as f64) / human_mean;
    let dm_deliveries = 2.0 * humans as f64 * 0.1 / human_mean;
    let per_room_deliveries = f64::from(cli.rate) / cli.rooms as f64;
    let per_room = (per_room_deliveries - dm_deliveries) / present;
    let bot_rate = (per_room - human_room) / bots.max(1) as f64;
    if bots == 0 || bot_rate <= 0.05 || bot_rate > 4.0 {
        bail!(
            "--rate {} with {} rooms of {m} needs {bot_rate:.2} posts/s per bot; keep it within 0.05..4 (the server allows 5/s) by changing --rooms or --members",
            cli.rate,
            cli.rooms
        );
    }
    let bot_interval = Duration::from_secs_f64(1.0 / bot_rate);

    let mut roles = Vec::new();
    for r in 0..cli.rooms {
        let room = if r == 0 {
            "general".to_string()
        } else {
            format!("room-{r}")
        };
        for (role, n) in [
            (Role::Bot, bots),
            (Role::Human, humans),
            (Role::Vanisher, vanishers),
            (Role::Page, page),
            (Role::PingOnly, ping),
            (Role::Slow, slow),
            (Role::Churn, churn),
        ] {
            for _ in 0..n {
                roles.push((role, room.clone()));
            }
        }
    }
    let names: Vec<String> = roles
        .iter()
        .enumerate()
        .map(|(i, (role, _))| format!("{}{i}", &role.name()[..1]))
        .collect();
    let dm_peers = roles
        .iter()
        .zip(&names)
        .filter(|((role, _), _)| *role == Role::Human)
        .map(|(_, n)| n.clone())
        .collect();

    // The database: on a tmpfs when the disk fault runs.
    let mut tmpfs = None;
    let mut tmpfs_skip = None;
    let db_dir = if kinds.iter().any(|k| k == "disk") {
        let mib = if cli.tmpfs_mib > 0 {
            cli.tmpfs_mib
        } else {
            // ~300 bytes per stored message with room to spare, at least 128 MiB.
            let msgs = per_room * cli.rooms as f64 * cli.duration.as_secs_f64();
            ((msgs * 300.0 * 3.0) as u64 >> 20).max(128)
        };
        let dir = out.join("tmpfs");
        let _ = server::run("umount", &[dir.to_str().unwrap_or_default()]);
        match server::Tmpfs::mount(&dir, mib) {
            Ok(t) => {
                tmpfs = Some(t);
                dir
            }
            Err(e) => {
                let why = format!("mount -t tmpfs failed ({e:#}): the disk-full fault is SKIPPED");
                eprintln!("soak: {why}");
                tmpfs_skip = Some(why);
                out.clone()
            }
        }
    } else {
        out.clone()
    };
    let db = db_dir.join("soak.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let log = out.join("server.log");
    let _ = std::fs::remove_file(&log);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let spec = server::Spec {
        bin,
        addr: format!("127.0.0.1:{port}"),
        db: db.clone(),
        log,
        extra: {
            let mut extra = Vec::new();
            if let Some(n) = cli.retain_messages {
                extra.extend(["--retain-messages".to_owned(), n.to_string()]);
            }
            if let Some(n) = cli.retain_days {
                extra.extend(["--retain-days".to_owned(), n.to_string()]);
            }
            extra
        },
    };
    let load_start = loadavg();
    let t0 = Instant::now();
    let srv = server::Server::start(&spec).await?;
    println!(
        "soak: server pid {} on {} (db {}), {} clients, {} rooms, bot every {:?}, {:?}, faults {:?}, seed {}",
        srv.pid,
        spec.addr,
        db.display(),
        roles.len(),
        cli.rooms,
        bot_interval,
        cli.duration,
        kinds,
        cli.seed
    );

    let (phase_tx, phase_rx) = watch::channel(Phase::Run);
    let n = roles.len();
    let shared = Arc::new(Shared {
        url: format!("ws://{}/ws", spec.addr),
        t0,
        phase: phase_rx,
        acked: Mutex::new(HashMap::new()),
        latency: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
        counters: Default::default(),
        closes: Mutex::new(BTreeMap::new()),
        errors: Mutex::new(BTreeMap::new()),
        anomalies: Mutex::new((0, 0, Vec::new())),
        killed: Default::default(),
        kills: Default::default(),
        unexplained: Mutex::new(Vec::new()),
        records: Mutex::new(Vec::new()),
        status: (0..n).map(|_| Arc::new(Status::default())).collect(),
        roles,
        dm_peers,
        bot_interval,
        human_interval,
    });
    let run = Arc::new(Run {
        cli,
        present,
        per_room,
        dm_deliveries,
        shared: shared.clone(),
        phase: phase_tx,
        spec,
        server: tokio::sync::Mutex::new(Some(srv)),
        tmpfs,
        tmpfs_skip,
        rows: Mutex::new(Vec::new()),
        faults: Mutex::new(Vec::new()),
        starts: Mutex::new(vec![0.0]),
        died: Mutex::new(None),
        samples: Mutex::new(Vec::new()),
    });
    for (i, name) in names.into_iter().enumerate() {
        tokio::spawn(client::run(shared.clone(), i, name, run.cli.seed));
    }
    // Interrupted (Ctrl-C, SIGTERM, a CI timeout): take the server and the tmpfs down too.
    {
        let run = run.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            eprintln!("soak: interrupted; stopping the server");
            if let Some(srv) = run.server.lock().await.take() {
                let _ = srv.kill9().await;
            }
            if let Some(t) = &run.tmpfs {
                t.unmount();
            }
            std::process::exit(130);
        });
    }
    let monitor = tokio::spawn(monitor(run.clone()));
    let faults = tokio::spawn(inject(run.clone(), kinds));

    tokio::time::sleep_until((t0 + run.cli.duration).into()).await;
    let _ = faults.await;
    // Drain: no new posts; everyone back and caught up (at most 30 s).
    let _ = run.phase.send(Phase::Drain);
    let drained = wait_caught_up(&shared, Instant::now(), Duration::from_secs(30), false).await;
    println!("soak: drained: {drained:?}");
    let _ = run.phase.send(Phase::Close);
    let deadline = Instant::now() + Duration::from_secs(20);
    while shared.records.lock().unwrap().len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    monitor.abort();
    let exit = match run.server.lock().await.take() {
        Some(s) => s
            .terminate(Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| format!("{e:#}")),
        None => "not running".into(),
    };
    let load_end = loadavg();
    let code = report(&run, drained, &exit, &load_start, &load_end);
    // `main` ends with `process::exit`, which runs no destructors.
    if let Some(t) = &run.tmpfs {
        t.unmount();
    }
    code
}

/// Samples the server every second and closes a report row every `--interval`.
async fn monitor(run: Arc<Run>) {
    let s = &run.shared;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (0u64, 0u64, 0u64);
    let mut last_t = 0.0;
    let mut res = server::Resources::default();
    let mut k = 0u64;
    loop {
        tick.tick().await;
        k += 1;
        let t = s.secs();
        {
            let mut guard = run.server.lock().await;
            if let Some(srv) = guard.as_mut() {
                if let Some(status) = srv.exited() {
                    run.died.lock().unwrap().get_or_insert(format!(
                        "the server exited by itself at {t:.0} s: {status}"
                    ));
                }
                // A stopped process still answers /proc.
                if let Some(r) = server::resources(srv.pid) {
                    res = r;
                    let connected = s
                        .status
                        .iter()
                        .filter(|c| c.connected.load(Relaxed))
                        .count();
                    run.samples.lock().unwrap().push((t, r, connected as u64));
                }
            }
        }
        if !k.is_multiple_of(run.cli.interval) {
            continue;
        }
        let c = &s.counters;
        let now = (
            c.deliveries.load(Relaxed),
            c.replayed.load(Relaxed),
            c.acks.load(Relaxed),
        );
        let dt = t - last_t;
        let h = std::mem::replace(
            &mut *s.latency.lock().unwrap(),
            Histogram::new_with_bounds(1, 600_000_000, 3).expect("bounds"),
        );
        let ms = |q: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / 1000.0
            }
        };
        let fault = run
            .faults
            .lock()
            .unwrap()
            .iter()
            .filter(|f| f.skipped.is_none() && f.start < t && f.end.max(f.start + 0.1) > last_t)
            .map(|f| f.kind.clone())
            .collect::<Vec<_>>()
            .join(",");
        let messages = s
            .acked
            .lock()
            .unwrap()
            .values()
            .map(|a| a.len() as u64)
            .sum();
        let heap = server::heap(&run.spec.addr).await;
        let mib = |b: Option<u64>| b.map(|b| b as f64 / 1048576.0);
        let row = Row {
            t,
            deliveries: (now.0 - last.0) as f64 / dt,
            replayed: (now.1 - last.1) as f64 / dt,
            acks: (now.2 - last.2) as f64 / dt,
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            max_ms: if h.is_empty() {
                0.0
            } else {
                h.max() as f64 / 1000.0
            },
            rss_mib: res.rss_kib as f64 / 1024.0,
            allocated_mib: mib(heap.allocated),
            active_mib: mib(heap.active),
            resident_mib: mib(heap.resident),
            retained_mib: mib(heap.retained),
            rooms: heap.rooms,
            fds: res.fds,
            threads: res.threads,
            connected: s
                .status
                .iter()
                .filter(|c| c.connected.load(Relaxed))
                .count() as u64,
            db_bytes: server::db_bytes(&run.spec.db),
            messages,
            fault,
        };
        println!(
            "{:>6.0}s  {:>7.0} deliveries/s  {:>5.0} acks/s  p99 {:>7.1} ms  rss {:>6.1} MiB  heap {} / {} / {} MiB  rooms {}  fds {:>4}  threads {:>3}  connected {:>4}  db {:>6.1} MiB  {}",
            row.t,
            row.deliveries,
            row.acks,
            row.p99_ms,
            row.rss_mib,
            opt_mib(row.allocated_mib),
            opt_mib(row.active_mib),
            opt_mib(row.resident_mib),
            row.rooms.map_or("-".into(), |n| n.to_string()),
            row.fds,
            row.threads,
            row.connected,
            row.db_bytes as f64 / 1048576.0,
            row.fault
        );
        run.rows.lock().unwrap().push(row);
        last = now;
        last_t = t;
    }
}

/// A MiB figure with one decimal, or `-` when it was not sampled.
fn opt_mib(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

fn max_acked(s: &Shared) -> HashMap<String, u64> {
    s.acked
        .lock()
        .unwrap()
        .iter()
        .map(|(r, a)| (r.clone(), a.last().copied().unwrap_or(0)))
        .collect()
}

/// Waits until every client that is not deliberately away (with `skip_away`) has a
/// session, every send written before `from` has been answered, and every client has
/// been delivered, in its main room, everything acked by the time those answers were in
/// (readers that read in bursts, after a fault: everything acked 4 s earlier). Returns
/// the seconds it took from `from`, or None after `limit`.
async fn wait_caught_up(
    s: &Shared,
    from: Instant,
    limit: Duration,
    skip_away: bool,
) -> Option<f64> {
    let from_ns = from.duration_since(s.t0).as_nanos() as u64;
    let mut history: Vec<(Instant, HashMap<String, u64>)> = vec![(from, max_acked(s))];
    let mut answered: Option<HashMap<String, u64>> = None;
    loop {
        let now = Instant::now();
        history.push((now, max_acked(s)));
        let counts = |c: &Status| !(skip_away && c.away.load(Relaxed));
        if answered.is_none()
            && s.status.iter().filter(|c| counts(c)).all(|c| {
                let p = c.oldest_pending.load(Relaxed);
                p == 0 || p > from_ns
            })
        {
            answered = Some(max_acked(s));
        }
        let lagged = {
            let t = now
                .checked_sub(Duration::from_secs(4))
                .unwrap_or(from)
                .max(from);
            let i = history.partition_point(|(h, _)| *h <= t).max(1) - 1;
            &history[i].1
        };
        let all = answered.as_ref().is_some_and(|fast| {
            s.status.iter().zip(&s.roles).all(|(c, (role, room))| {
                if !counts(c) {
                    return true;
                }
                if !c.connected.load(Relaxed) || c.away.load(Relaxed) {
                    return false;
                }
                // Slow readers stop reading for 3 s at a time, except at the end.
                let target = if *role == Role::Slow && skip_away {
                    lagged
                } else {
                    fast
                };
                c.cursor.load(Relaxed) >= target.get(room).copied().unwrap_or(0)
            })
        });
        if all {
            return Some(now.duration_since(from).as_secs_f64());
        }
        if now >= from + limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn errors_now(s: &Shared, code: &str) -> u64 {
    s.errors.lock().unwrap().get(code).copied().unwrap_or(0)
}

/// Injects the faults at seeded times between warm-up and three quarters of the run.
async fn inject(run: Arc<Run>, kinds: Vec<String>) {
    if kinds.is_empty() {
        return;
    }
    let s = &run.shared;
    let d = run.cli.duration.as_secs_f64();
    let warm = warmup(d);
    let span = (d * 0.75 - warm).max(1.0);
    let step = span / kinds.len() as f64;
    let mut rng = Rng::new(run.cli.seed.wrapping_mul(31).wrapping_add(7));
    let hold = Duration::from_secs(run.cli.fault_secs);
    for (i, kind) in kinds.iter().enumerate() {
        let jitter = rng.unit() * (step * 0.2).min(60.0);
        let at = warm + i as f64 * step + jitter;
        tokio::time::sleep_until((s.t0 + Duration::from_secs_f64(at)).into()).await;
        let start = s.secs();
        let acks0 = s.counters.acks.load(Relaxed);
        let storage0 = errors_now(s, "storage_unavailable");
        let mut note = String::new();
        let mut skipped = None;
        println!("soak: fault {kind} at {start:.1} s");
        let result: anyhow::Result<()> = async {
            match kind.as_str() {
                "stop" => {
                    let guard = run.server.lock().await;
                    let srv = guard.as_ref().context("no server")?;
                    srv.signal("STOP")?;
                    tokio::time::sleep(hold).await;
                    srv.signal("CONT")?;
                    note = format!("SIGSTOP for {} s, then SIGCONT", hold.as_secs());
                }
                "kill" => {
                    s.killed.store(true, Relaxed);
                    s.kills.fetch_add(1, Relaxed);
                    let mut guard = run.server.lock().await;
                    let srv = guard.take().context("no server")?;
                    let t = Instant::now();
                    srv.kill9().await?;
                    let new = server::Server::start(&run.spec).await?;
                    note = format!(
                        "kill -9, restarted on the same SQLite file in {:.2} s (new pid {})",
                        t.elapsed().as_secs_f64(),
                        new.pid
                    );
                    *guard = Some(new);
                    run.starts.lock().unwrap().push(s.secs());
                }
                "disk" => {
                    let Some(t) = &run.tmpfs else {
                        skipped = run.tmpfs_skip.clone();
                        return Ok(());
                    };
                    let filler = t.dir.join("filler");
                    let bytes = t.fill(&filler)?;
                    tokio::time::sleep(hold).await;
                    std::fs::remove_file(&filler)?;
                    note = format!(
                        "the database's tmpfs filled ({} MiB of filler) for {} s, then the filler deleted",
                        bytes >> 20,
                        hold.as_secs()
                    );
                }
                "starve" => {
                    let pid = run.server.lock().await.as_ref().context("no server")?.pid;
                    let tid = server::starve_writer(pid, hold).await?;
                    note = format!(
                        "writer thread {tid} pinned to CPU 0 at SCHED_IDLE under two busy loops for {} s",
                        hold.as_secs()
                    );
                }
                _ => unreachable!(),
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            note = format!("the fault failed: {e:#}");
        }
        let end_i = Instant::now();
        let end = s.secs();
        let acks_during = s.counters.acks.load(Relaxed) - acks0;
        let mut fault = Fault {
            kind: kind.clone(),
            start,
            end,
            caught_up: None,
            acks_during,
            acks_after: 0,
            storage_errors: 0,
            note,
            skipped,
        };
        if fault.skipped.is_some() {
            println!(
                "soak: fault {kind} SKIPPED: {}",
                fault.skipped.as_deref().unwrap_or("")
            );
            run.faults.lock().unwrap().push(fault);
            continue;
        }
        run.faults.lock().unwrap().push(fault.clone());
        let caught = wait_caught_up(s, end_i, Duration::from_secs(60), true).await;
        s.killed.store(false, Relaxed);
        let acks1 = s.counters.acks.load(Relaxed);
        tokio::time::sleep_until((end_i + Duration::from_secs(10)).into()).await;
        fault.caught_up = caught;
        fault.acks_after = s.counters.acks.load(Relaxed) - acks1;
        fault.storage_errors = errors_now(s, "storage_unavailable") - storage0;
        println!(
            "soak: fault {kind} ended at {end:.1} s; caught up after {}",
            caught.map_or("never (60 s)".into(), |c| format!("{c:.2} s"))
        );
        if let Some(f) = run.faults.lock().unwrap().last_mut() {
            *f = fault;
        }
    }
}

/// Warm-up: the first twelfth of the run, between 20 s and 5 min.
fn warmup(d: f64) -> f64 {
    (d / 12.0).clamp(20.0, 300.0)
}

struct Check {
    name: String,
    value: String,
    ok: bool,
    target: bool,
}

fn report(
    run: &Run,
    drained: Option<f64>,
    exit: &str,
    load_start: &str,
    load_end: &str,
) -> anyhow::Result<i32> {
    let s = &run.shared;
    let c = &s.counters;
    let cli = &run.cli;
    let records = s.records.lock().unwrap().clone();
    let acked = s.acked.lock().unwrap().clone();
    let d = check::delivery(&records, &acked);
    let rows = run.rows.lock().unwrap().clone();
    let faults = run.faults.lock().unwrap().clone();
    let closes = s.closes.lock().unwrap().clone();
    let errors = s.errors.lock().unwrap().clone();
    let (dups, ooo, anomalies) = s.anomalies.lock().unwrap().clone();
    let samples = run.samples.lock().unwrap().clone();
    let dur = cli.duration.as_secs_f64();
    let warm = warmup(dur);
    let window = (dur / 6.0).min(600.0);
    let last_start = *run.starts.lock().unwrap().last().unwrap_or(&0.0);
    let in_fault = |t0: f64, t1: f64| {
        faults
            .iter()
            .any(|f| f.skipped.is_none() && t1 > f.start && t0 < f.end + 10.0)
    };

    let mut checks = Vec::new();
    let mut add = |name: &str, value: String, ok: bool, target: bool| {
        checks.push(Check {
            name: name.into(),
            value,
            ok,
            target,
        })
    };
    add(
        "acked messages lost",
        format!(
            "{} of {} owed deliveries ({} spans, {} excused by gap notices)",
            d.lost, d.owed, d.spans, d.gap_excused
        ),
        d.lost == 0,
        false,
    );
    add("duplicate deliveries", dups.to_string(), dups == 0, false);
    add("out-of-order deliveries", ooo.to_string(), ooo == 0, false);
    let unexplained: u64 = closes
        .iter()
        .filter(|(k, _)| !k.explained)
        .map(|(_, n)| n)
        .sum();
    add(
        "closes the client did not cause",
        unexplained.to_string(),
        unexplained == 0,
        false,
    );
    let bad_errors: Vec<String> = errors
        .iter()
        .filter(|(code, _)| {
            !["storage_unavailable", "user_not_found", "rate_limited"].contains(&code.as_str())
        })
        .map(|(code, n)| format!("{code} ×{n}"))
        .collect();
    add(
        "unexpected error frames",
        if bad_errors.is_empty() {
            "0".into()
        } else {
            bad_errors.join(", ")
        },
        bad_errors.is_empty(),
        false,
    );
    let holes = c.history_holes.load(Relaxed);
    add(
        "acked messages missing from history pages",
        format!("{holes} ({} pages read)", c.history_pages.load(Relaxed)),
        holes == 0,
        false,
    );
    let epochs = c.epoch_changes.load(Relaxed);
    add(
        "epoch changes seen by clients",
        epochs.to_string(),
        epochs == 0,
        false,
    );
    add(
        "every client back and caught up at the end",
        drained.map_or("no (30 s)".into(), |t| {
            format!("yes, {t:.2} s after the mix stopped")
        }),
        drained.is_some(),
        false,
    );
    let died = run.died.lock().unwrap().clone();
    add(
        "server alive until SIGTERM, then a clean exit",
        died.clone().unwrap_or_else(|| format!("exit: {exit}")),
        died.is_none() && exit.contains("exit status: 0"),
        false,
    );
    for f in &faults {
        if let Some(why) = &f.skipped {
            add(
                &format!("fault {}", f.kind),
                format!("SKIPPED: {why}"),
                true,
                false,
            );
            continue;
        }
        let back = f.caught_up;
        add(
            &format!(
                "fault {} at {:.0} s: every client back and caught up",
                f.kind, f.start
            ),
            back.map_or("not within 60 s".into(), |t| {
                format!("{t:.2} s after its end")
            }),
            back.is_some() && !f.note.starts_with("the fault failed"),
            false,
        );
        add(
            &format!("fault {}: caught up within 5 s (target)", f.kind),
            back.map_or("no".into(), |t| format!("{t:.2} s")),
            back.is_some_and(|t| t <= 5.0),
            true,
        );
        if f.kind == "disk" {
            add(
                "disk full: sends refused with storage_unavailable, then succeed again",
                format!(
                    "{} storage_unavailable, {} acks during, {} acks in the 10 s after",
                    f.storage_errors, f.acks_during, f.acks_after
                ),
                f.acks_after > 0,
                false,
            );
        }
    }
    // Resources: the last server process, from its warm-up on.
    let after: Vec<_> = samples
        .iter()
        .filter(|(t, _, _)| *t >= last_start + warm)
        .collect();
    let ref_sample = after.first().copied();
    let tail: Vec<_> = after
        .iter()
        .filter(|(t, _, _)| *t >= dur - window)
        .collect();
    if let (Some((rt, r, rc)), false) = (ref_sample, tail.is_empty()) {
        let rss_max = tail.iter().map(|(_, x, _)| x.rss_kib).max().unwrap_or(0);
        let growth = rss_max as f64 / r.rss_kib.max(1) as f64;
        add(
            "RSS within +10% of its value after warm-up (target)",
            format!(
                "{:.1} MiB at {rt:.0} s, at most {:.1} MiB in the last {:.0} s ({:+.1}%)",
                r.rss_kib as f64 / 1024.0,
                rss_max as f64 / 1024.0,
                window,
                (growth - 1.0) * 100.0
            ),
            growth <= 1.10,
            true,
        );
        // fds: one per connection plus a fixed overhead; the overhead must stay flat.
        let overhead = |x: &server::Resources, conns: u64| x.fds as i64 - conns as i64;
        let ref_over = overhead(r, *rc);
        let max_over = tail
            .iter()
            .map(|(_, x, n)| overhead(x, *n))
            .max()
            .unwrap_or(0);
        add(
            "fds flat (fds minus connected clients)",
            format!("{ref_over} after warm-up, at most {max_over} in the last {window:.0} s"),
            max_over <= ref_over + 16,
            false,
        );
        let max_threads = tail.iter().map(|(_, x, _)| x.threads).max().unwrap_or(0);
        add(
            "threads flat",
            format!(
                "{} after warm-up, at most {max_threads} at the end",
                r.threads
            ),
            max_threads <= r.threads + 8,
            false,
        );
    } else {
        add(
            "resources after warm-up",
            "too few samples after the last restart's warm-up".into(),
            false,
            true,
        );
    }
    // p99 drift: the first and last windows after warm-up, fault windows left out.
    let p99_of = |a: f64, b: f64| {
        let v: Vec<f64> = rows
            .iter()
            .filter(|r| r.t > a && r.t <= b && !in_fault(r.t - cli.interval as f64, r.t))
            .map(|r| r.p99_ms)
            .collect();
        if v.is_empty() {
            None
        } else {
            let mut v = v;
            v.sort_by(f64::total_cmp);
            Some(v[v.len() / 2])
        }
    };
    let first = p99_of(warm, warm + window);
    let last = p99_of(dur - window, dur + 1.0);
    match (first, last) {
        (Some(a), Some(b)) => add(
            "p99 of the last window within 1.2× of the first (target)",
            format!(
                "median of interval p99s: {a:.1} ms in [{warm:.0}, {:.0}] s, {b:.1} ms in the last {window:.0} s ({:.2}×)",
                warm + window,
                b / a.max(0.001)
            ),
            b <= a * 1.2,
            true,
        ),
        _ => add(
            "p99 drift (target)",
            "no fault-free interval in a window".into(),
            false,
            true,
        ),
    }

    let failed: Vec<&Check> = checks
        .iter()
        .filter(|c| !c.ok && (!c.target || cli.targets))
        .collect();
    let missed_targets = checks.iter().filter(|c| !c.ok && c.target).count();

    // Steady figures.
    let steady: Vec<&Row> = rows
        .iter()
        .filter(|r| r.t > warm && !in_fault(r.t - cli.interval as f64, r.t))
        .collect();
    let avg = |f: &dyn Fn(&Row) -> f64| {
        if steady.is_empty() {
            0.0
        } else {
            steady.iter().map(|r| f(r)).sum::<f64>() / steady.len() as f64
        }
    };
    let messages: u64 = acked.values().map(|a| a.len() as u64).sum();
    let db_bytes = server::db_bytes(&run.spec.db);

    let mut md = String::new();
    let cmd: Vec<String> = std::env::args().collect();
    writeln!(md, "Command: `{}`", cmd.join(" "))?;
    writeln!(md)?;
    writeln!(
        md,
        "Result: **{}**{}",
        if failed.is_empty() { "PASS" } else { "FAIL" },
        if missed_targets > 0 && !cli.targets {
            format!(" ({missed_targets} target(s) missed, reported only)")
        } else {
            String::new()
        }
    )?;
    writeln!(md)?;
    let roles = &s.roles;
    let count = |role: Role| roles.iter().filter(|(r, _)| *r == role).count();
    writeln!(
        md,
        "Mix: {} clients in {} rooms of {}: {} bots posting every {:.0} ms, {} humans (typing 1 s, then a post every ~{} s; one in ten a direct message), {} humans who vanish without a close every 20–80 s and resume 0.5–3 s later, {} page readers, {} ping-only readers, {} slow readers (1 s reading, 3 s not), {} joiners/leavers (stay 20–60 s, away 5–20 s). Offered: {} deliveries/s = {} rooms × ({:.1} members present on average × {:.1} room posts/s + {:.2} deliveries/s of direct messages). Duration {:.0} s, warm-up {warm:.0} s, seed {}, faults of {} s.",
        roles.len(),
        cli.rooms,
        cli.members,
        count(Role::Bot),
        s.bot_interval.as_secs_f64() * 1000.0,
        count(Role::Human),
        s.human_interval.as_secs(),
        count(Role::Vanisher),
        count(Role::Page),
        count(Role::PingOnly),
        count(Role::Slow),
        count(Role::Churn),
        cli.rate,
        cli.rooms,
        run.present,
        run.per_room,
        run.dm_deliveries,
        dur,
        cli.seed,
        cli.fault_secs
    )?;
    writeln!(md)?;
    writeln!(
        md,
        "Machine: {} CPUs; load average {load_start} at the start, {load_end} at the end.",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )?;
    writeln!(md)?;
    writeln!(
        md,
        "Steady state (after warm-up, fault windows + 10 s left out): {:.0} deliveries/s, {:.0} acks/s, p50 {:.1} ms, p99 {:.1} ms. Totals: {} deliveries live + {} in join/resume replays, {} sends, {} acks (+{} duplicate acks of resends), {} direct messages, {} typing frames, {} sessions, {} resumes, {} gap notices, {} vanishes, {} leaves, {} posts skipped (4 unacked). SQLite: {:.1} MiB for {} messages = {:.0} bytes per message.",
        avg(&|r| r.deliveries),
        avg(&|r| r.acks),
        avg(&|r| r.p50_ms),
        avg(&|r| r.p99_ms),
        c.deliveries.load(Relaxed),
        c.replayed.load(Relaxed),
        c.sends.load(Relaxed),
        c.acks.load(Relaxed),
        c.dup_acks.load(Relaxed),
        c.dms.load(Relaxed),
        c.typing.load(Relaxed),
        c.sessions.load(Relaxed),
        c.resumes.load(Relaxed),
        c.gaps.load(Relaxed),
        c.vanishes.load(Relaxed),
        c.leaves.load(Relaxed),
        c.skipped_posts.load(Relaxed),
        db_bytes as f64 / 1048576.0,
        messages,
        db_bytes as f64 / messages.max(1) as f64
    )?;
    writeln!(md)?;
    writeln!(md, "| check | measured | |")?;
    writeln!(md, "|---|---|---|")?;
    for ch in &checks {
        let mark = match (ch.ok, ch.target) {
            (true, _) => "ok",
            (false, true) if !cli.targets => "missed (target)",
            _ => "**FAIL**",
        };
        writeln!(md, "| {} | {} | {mark} |", ch.name, ch.value)?;
    }
    writeln!(md)?;
    writeln!(md, "Faults:")?;
    writeln!(md)?;
    writeln!(
        md,
        "| fault | start s | end s | caught up after | acks during | acks in 10 s after | storage_unavailable | what |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|")?;
    for f in &faults {
        writeln!(
            md,
            "| {} | {:.1} | {:.1} | {} | {} | {} | {} | {} |",
            f.kind,
            f.start,
            f.end,
            f.caught_up.map_or("—".into(), |t| format!("{t:.2} s")),
            f.acks_during,
            f.acks_after,
            f.storage_errors,
            f.skipped
                .as_deref()
                .map_or(f.note.clone(), |w| format!("SKIPPED: {w}"))
        )?;
    }
    if faults.is_empty() {
        writeln!(md, "| none | | | | | | | |")?;
    }
    writeln!(md)?;
    writeln!(md, "Closes by kind:")?;
    writeln!(md)?;
    writeln!(md, "| close | count | caused by |")?;
    writeln!(md, "|---|---|---|")?;
    for (k, n) in &closes {
        writeln!(
            md,
            "| {} | {n} | {} |",
            k.what,
            if k.explained {
                "the client or an injected fault"
            } else {
                "**not the client**"
            }
        )?;
    }
    writeln!(md)?;
    if !errors.is_empty() {
        writeln!(
            md,
            "Error frames by code: {}",
            errors
                .iter()
                .map(|(c, n)| format!("`{c}` ×{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        writeln!(md)?;
    }
    let unexplained = s.unexplained.lock().unwrap().clone();
    if !unexplained.is_empty() {
        writeln!(
            md,
            "Closes the client did not cause, by role (session age at the close; WebSocket pings the server sent in that session; frames the client sent):"
        )?;
        writeln!(md)?;
        let mut by: BTreeMap<(String, &'static str), Vec<&client::Unexplained>> = BTreeMap::new();
        for u in &unexplained {
            by.entry((u.what.clone(), u.role.name()))
                .or_default()
                .push(u);
        }
        for ((what, role), v) in by {
            let ages = v.iter().map(|u| u.age);
            let (lo, hi) = ages.fold((f64::MAX, 0.0f64), |(lo, hi), a| (lo.min(a), hi.max(a)));
            let pings: u64 = v.iter().map(|u| u.pings).sum();
            let sent_max = v.iter().map(|u| u.sent).max().unwrap_or(0);
            writeln!(
                md,
                "- {what}: {} × {role}, session age {lo:.1}–{hi:.1} s, {pings} pings received in all those sessions, at most {sent_max} frames sent by the client; first at {:.1} s",
                v.len(),
                v.iter().map(|u| u.at).fold(f64::MAX, f64::min)
            )?;
        }
        writeln!(md)?;
    }
    if !d.examples.is_empty() || !anomalies.is_empty() {
        writeln!(md, "First problems seen:")?;
        writeln!(md)?;
        for (client, room, seq) in &d.examples {
            writeln!(md, "- lost: {client} in {room}, seq {seq}")?;
        }
        for a in anomalies.iter().take(20) {
            writeln!(
                md,
                "- {} at {:.1} s: {} in {}, seq {} after {}",
                a.kind, a.at, a.client, a.room, a.seq, a.cursor
            )?;
        }
        writeln!(md)?;
    }
    // The table, at most ~30 rows.
    let every = rows.len().div_ceil(30).max(1);
    writeln!(
        md,
        "| t (s) | deliveries/s | acks/s | p50 ms | p99 ms | max ms | RSS MiB | allocated MiB | active MiB | resident MiB | retained MiB | rooms | fds | threads | connected | SQLite MiB | messages | fault |"
    )?;
    writeln!(
        md,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )?;
    for (i, r) in rows.iter().enumerate() {
        if i % every != every - 1 && i + 1 != rows.len() && r.fault.is_empty() {
            continue;
        }
        writeln!(
            md,
            "| {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.0} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {} | {} |",
            r.t,
            r.deliveries,
            r.acks,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.rss_mib,
            opt_mib(r.allocated_mib),
            opt_mib(r.active_mib),
            opt_mib(r.resident_mib),
            opt_mib(r.retained_mib),
            r.rooms.map_or("-".into(), |n| n.to_string()),
            r.fds,
            r.threads,
            r.connected,
            r.db_bytes as f64 / 1048576.0,
            r.messages,
            r.fault
        )?;
    }
    let md_path = run.cli.out.join("report.md");
    std::fs::write(&md_path, &md)?;
    std::fs::write(
        run.cli.out.join("rows.json"),
        serde_json::to_string_pretty(&serde_json::json!({"rows": rows, "faults": faults}))?,
    )?;
    let png = run.cli.out.join("soak.png");
    if let Err(e) = plot::draw(&png, &rows, &faults) {
        eprintln!("soak: the plot failed: {e:#}");
    }
    println!("\n{md}");
    println!(
        "soak: report in {} and {}",
        md_path.display(),
        png.display()
    );
    for f in &failed {
        eprintln!("soak: FAILED: {}: {}", f.name, f.value);
    }
    Ok(if failed.is_empty() { 0 } else { 1 })
}
