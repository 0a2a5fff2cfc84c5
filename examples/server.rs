//! The example chat server: the browser page at <http://127.0.0.1:5000>, the WebSocket at
//! `/ws`, like the original Flask-SocketIO tutorial app, but with rooms, presence,
//! history, resume and a clean shutdown.
//!
//! Run with:
//!
//! ```text
//! cargo run --release --example server
//! cargo run --release --example server -- --addr 127.0.0.1:8080 --origin https://app.example.com
//! cargo run --release --example server -- --db /var/lib/chat/chat.db --durability normal
//! cargo run --release --example server -- --redis redis://127.0.0.1:6379/ --addr 127.0.0.1:5001
//! ```
//!
//! History is durable by default: every message is committed to the SQLite file `--db`
//! (`chat.db` in the working directory) before it is delivered and acknowledged, and a
//! restart continues where the server stopped. `--db :memory:` runs an ephemeral server.
//! `--durability full` (default) survives power loss; `normal` survives a crash of the
//! process only, and commits faster.
//!
//! Cluster mode (`--redis URL`, env `CHAT_REDIS`): several servers share one Redis,
//! which holds the history instead of SQLite (`--db` is not used); clients may connect to
//! any of them and see one chat (docs/CLUSTER.md). Redis unreachable at start: an error,
//! exit code 1.
//!
//! The host's controls (`--admin-addr`, a loopback address, with `--admin-token` or
//! better `CHAT_ADMIN_TOKEN`):
//! a second listener for the operator, apart from the chat's, where `POST /revoke`
//! (form field `user`) closes every session of a user (`Hub::revoke_user`, on every
//! server in cluster mode) and `POST /role` (`room`, `user`, `role`: `owner`,
//! `moderator` or `member`) gives a room role (`Hub::set_role`) and `POST /erase`
//! (`user`) erases every message of a user, leaving tombstones (`Hub::erase_user`), each
//! with `Authorization: Bearer <token>`. It prints `admin on http://ADDR` once listening.
//!
//! Retention: `--retain-days N` deletes messages older than N days and
//! `--retain-messages N` keeps each room's newest N entries, in the background; without
//! either the file keeps everything and grows with the history. In cluster mode they
//! apply to the rooms' streams in Redis (give every server the same values; one server
//! per `--retain-sweep-secs` sweeps). `POST /retention` on the admin port (`room`, and
//! `messages` and/or `days`, neither: keep everything) sets one room's own policy
//! (`Hub::set_retention`; in cluster mode for every server).
//!
//! Ctrl-C or SIGTERM: stops accepting, tells every client to reconnect (close 1012),
//! waits for every connection to finish (at most `--drain-secs`), commits what is
//! pending, checkpoints the database's WAL, exits 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chat_axum::{ConnectionLimits, OriginPolicy, RouterOptions};
use chat_core::Rate;
use chat_core::runtime::{Broker, Durability, Hub, HubConfig, SqliteStore, Store};
use chat_redis::BrokerOptions;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "The example chat server")]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "CHAT_ADDR", default_value = "127.0.0.1:5000")]
    addr: SocketAddr,
    /// Threads that queue the engine's frames to the connections (0: the engine's own
    /// task does it, fastest on a few cores; from about 6 cores, a quarter of them:
    /// docs/BENCHMARKS.md, "Many cores").
    #[arg(long, env = "CHAT_FANOUT_THREADS", default_value_t = 0)]
    fanout_threads: usize,
    /// Web origins (besides this server's own) whose pages may connect; `*` for any.
    /// Repeat or separate with commas.
    #[arg(long = "origin", env = "CHAT_ORIGIN", value_delimiter = ',')]
    origins: Vec<String>,
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `chat_axum=debug`.
    #[arg(long, env = "CHAT_LOG", default_value = "info")]
    log: String,
    /// Upper bound for the graceful shutdown, in seconds.
    #[arg(long, env = "CHAT_DRAIN_SECS", default_value_t = 10)]
    drain_secs: u64,
    /// The SQLite database holding the history (created if missing); `:memory:` keeps
    /// history only while the server runs.
    #[arg(long, env = "CHAT_DB", default_value = "chat.db")]
    db: PathBuf,
    /// `full`: every commit is fsynced, acknowledged messages survive power loss.
    /// `normal`: they survive a crash of the server process only.
    #[arg(long, env = "CHAT_DURABILITY", default_value = "full")]
    durability: Durability,
    /// Flood control: messages a session may send at once.
    #[arg(long, env = "CHAT_SEND_BURST", default_value_t = 10)]
    send_burst: u32,
    /// Flood control: messages per second a session may send, sustained. Raising the
    /// send limits raises the limit on all frames to twice as much.
    #[arg(long, env = "CHAT_SEND_RATE", default_value_t = 5)]
    send_rate: u32,
    /// WebSocket connections open at once, all clients together (503 past it); 0: no limit.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// WebSocket connections open at once per client address (429 past it); 0: no limit.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS_PER_IP", default_value_t = 100)]
    max_connections_per_ip: usize,
    /// New WebSocket connections per client address in a burst (429 past it); 0: no limit.
    #[arg(long, env = "CHAT_CONNECT_BURST_PER_IP", default_value_t = 50)]
    connect_burst_per_ip: u32,
    /// New WebSocket connections per client address per second, sustained.
    #[arg(long, env = "CHAT_CONNECTS_PER_SECOND_PER_IP", default_value_t = 10)]
    connects_per_second_per_ip: u32,
    /// Apply the per-address limits to loopback clients too (by default they are exempt:
    /// local tools, or a proxy on this host that is not trusted).
    #[arg(long, env = "CHAT_LIMIT_LOOPBACK")]
    limit_loopback: bool,
    /// Reverse proxies whose `X-Forwarded-For` names the client (repeat or separate with
    /// commas). None by default: the header is ignored.
    #[arg(
        long = "trusted-proxy",
        env = "CHAT_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    trusted_proxies: Vec<std::net::IpAddr>,
    /// Seconds a connection may take to send its request head (slow-header defence).
    #[arg(long, env = "CHAT_HEADER_TIMEOUT_SECS", default_value_t = 5)]
    header_timeout_secs: u64,
    /// Cluster mode: the Redis every server of the cluster shares
    /// (`redis://host:port/db`). History lives there; `--db` is not used.
    #[arg(long, env = "CHAT_REDIS")]
    redis: Option<String>,
    /// The host's controls (`POST /revoke`, `POST /role`, `POST /erase`) on this loopback address
    /// (port 0: any free port); needs the token in `CHAT_ADMIN_TOKEN`. Off by default.
    #[arg(long, env = "CHAT_ADMIN_ADDR")]
    admin_addr: Option<SocketAddr>,
    /// The bearer token the host's controls ask for (16 characters or more); prefer the
    /// environment to the command line, which other local users can read.
    #[arg(long, env = "CHAT_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Retention: delete messages older than this many days, in every room (in cluster
    /// mode, from the rooms' streams in Redis). Off by default: everything is kept.
    #[arg(long, env = "CHAT_RETAIN_DAYS")]
    retain_days: Option<u32>,
    /// Retention: keep at most this many of each room's newest entries (messages and
    /// changes). Off by default.
    #[arg(long, env = "CHAT_RETAIN_MESSAGES")]
    retain_messages: Option<u64>,
    /// Cluster mode: how often (seconds) one server sweeps every room for retention.
    #[arg(long, env = "CHAT_RETAIN_SWEEP_SECS", default_value_t = 60.0)]
    retain_sweep_secs: f64,
}

/// Cluster mode's link to the shared Redis.
type Cluster = Arc<dyn Broker>;

/// jemalloc rather than the system's malloc: glibc keeps freed memory in its heaps, so
/// the server's RSS would stay at the peak of every burst (a stalled store, a restart's
/// reconnections) for the rest of its life; jemalloc returns unused pages within seconds.
///
/// Its options are built in (`JEMALLOC_SYS_WITH_MALLOC_CONF` in `.cargo/config.toml`;
/// `_RJEM_MALLOC_CONF` in the environment overrides them at start; `/metrics` shows them
/// as `jemalloc_arenas` and `jemalloc_background_thread`):
/// - `narenas:1`: one arena for all threads (each keeps its thread cache). The default of
///   four per core gives each tokio worker and the store's threads an arena of their own,
///   each with its own half-used pages: in an hour's soak that was a third more resident
///   memory for the same live data, still climbing after ten minutes.
/// - `background_thread:true`: a jemalloc thread returns freed pages on its decay timer
///   even while the server is idle; without it pages are purged only on later
///   allocations, and an idle server kept the peak of its last burst.
#[cfg(all(unix, not(target_env = "musl")))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).context("--log")?)
        .with_target(false)
        .init();
    // Latencies as Prometheus histograms (not summaries): from 10 µs to 10 s.
    let buckets = [
        1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25,
        0.5, 1.0, 2.5, 10.0,
    ];
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            &buckets,
        )
        .context("histogram buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    // The recorder keeps every histogram sample until it is folded into the buckets: by
    // a scrape, or by this upkeep. Without it an unscraped server under load grows by
    // the samples (8 bytes each) for as long as nobody reads `/metrics`.
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });

    let (store, cluster): (Option<Arc<dyn Store>>, Option<Cluster>) = match &args.redis {
        Some(url) => {
            anyhow::ensure!(
                args.retain_sweep_secs.is_finite() && args.retain_sweep_secs > 0.0,
                "--retain-sweep-secs must be a positive number"
            );
            let options = BrokerOptions {
                sweep_every: Duration::from_secs_f64(args.retain_sweep_secs),
                ..BrokerOptions::default()
            };
            let broker = chat_redis::RedisBroker::connect(url, options)
                .await
                .with_context(|| format!("connecting to redis at {url}"))?;
            tracing::info!(
                node = broker.node(),
                epoch = %broker.cluster_epoch(),
                "cluster mode: history in redis"
            );
            (None, Some(Arc::new(broker)))
        }
        None => {
            let store = SqliteStore::open(&args.db, args.durability)
                .with_context(|| format!("opening the database {}", args.db.display()))?;
            tracing::info!(
                db = %args.db.display(),
                durability = %args.durability,
                epoch = store.epoch(),
                "history store open"
            );
            (Some(Arc::new(store)), None)
        }
    };
    let mut core = chat_core::Config {
        send_rate: Rate {
            burst: args.send_burst,
            per_second: args.send_rate,
        },
        ..chat_core::Config::default()
    };
    if args.retain_days.is_some() || args.retain_messages.is_some() {
        core.retention = Some(chat_core::Retention {
            max_age: args
                .retain_days
                .map(|d| Duration::from_secs(u64::from(d) * 86_400)),
            max_count: args.retain_messages,
        });
    }
    // Sends are frames too: keep the frame limit above the send limit.
    core.frame_rate = Rate {
        burst: core.frame_rate.burst.max(args.send_burst.saturating_mul(2)),
        per_second: core
            .frame_rate
            .per_second
            .max(args.send_rate.saturating_mul(2)),
    };
    let hub = Hub::spawn(HubConfig {
        core,
        store,
        cluster,
        fanout_threads: args.fanout_threads,
        ..HubConfig::default()
    })
    .await
    .context("starting the chat hub")?;
    if let Some(addr) = args.admin_addr {
        let token = args.admin_token.clone().unwrap_or_default();
        serve_admin(addr, token, hub.clone()).await?;
    }
    let options = RouterOptions {
        origins: OriginPolicy::from_list(&args.origins),
        metrics: Some(Arc::new(move || {
            let mut text = prometheus.render();
            allocator_metrics(&mut text);
            text
        })),
        limits: ConnectionLimits {
            max_connections: args.max_connections,
            max_connections_per_ip: args.max_connections_per_ip,
            connect_burst_per_ip: args.connect_burst_per_ip,
            connects_per_second_per_ip: args.connects_per_second_per_ip,
            trusted_proxies: args.trusted_proxies,
            limit_loopback: args.limit_loopback,
            ..ConnectionLimits::default()
        },
        header_read_timeout: Duration::from_secs(args.header_timeout_secs),
        ..RouterOptions::default()
    };
    // A deep accept queue: after a restart every client reconnects at once.
    let listener = chat_axum::bind(args.addr).with_context(|| format!("binding {}", args.addr))?;
    let local = listener.local_addr()?;
    tracing::info!("chat server listening on http://{local}");
    // Tests start the server on port 0 and read the port from this line.
    println!("listening on http://{local}");
    chat_axum::serve_hub(
        listener,
        hub,
        options,
        Duration::from_secs(args.drain_secs),
        shutdown_signal(),
    )
    .await
    .context("serving")?;
    tracing::info!("chat server stopped");
    Ok(())
}

/// Appends jemalloc's own statistics to the `/metrics` text, in the Prometheus text
/// format: `allocated` is what the program holds (live data), `active` the pages those
/// allocations occupy, `resident` what the allocator has in RAM (≈ the heap's share of
/// RSS), `retained` address space kept for reuse but returned to the kernel. Growing
/// `allocated` means live data grows; `resident` far above `active` means the allocator
/// keeps freed pages.
#[cfg(all(unix, not(target_env = "musl")))]
fn allocator_metrics(text: &mut String) {
    use std::fmt::Write as _;
    use tikv_jemalloc_ctl::{epoch, stats};
    // The statistics are cached until the epoch advances.
    if epoch::advance().is_err() {
        return;
    }
    let gauges: [(&str, &str, tikv_jemalloc_ctl::Result<usize>); 4] = [
        (
            "allocated",
            "Bytes allocated by the server and not yet freed (jemalloc stats.allocated).",
            stats::allocated::read(),
        ),
        (
            "active",
            "Bytes in pages holding allocations (jemalloc stats.active).",
            stats::active::read(),
        ),
        (
            "resident",
            "Bytes of the allocator's memory resident in RAM (jemalloc stats.resident).",
            stats::resident::read(),
        ),
        (
            "retained",
            "Bytes of address space kept for reuse, returned to the kernel (jemalloc stats.retained).",
            stats::retained::read(),
        ),
    ];
    for (name, help, value) in gauges {
        if let Ok(v) = value {
            let _ = write!(
                text,
                "# HELP jemalloc_{name}_bytes {help}\n# TYPE jemalloc_{name}_bytes gauge\njemalloc_{name}_bytes {v}\n"
            );
        }
    }
    // The options of `MALLOC_CONF` as jemalloc took them.
    if let Ok(n) = tikv_jemalloc_ctl::opt::narenas::read() {
        let _ = write!(
            text,
            "# HELP jemalloc_arenas Arenas for the threads (jemalloc opt.narenas; one more serves huge allocations).\n# TYPE jemalloc_arenas gauge\njemalloc_arenas {n}\n"
        );
    }
    if let Ok(on) = tikv_jemalloc_ctl::background_thread::read() {
        let _ = write!(
            text,
            "# HELP jemalloc_background_thread 1 when a jemalloc thread returns freed pages on its timer (MALLOC_CONF background_thread).\n# TYPE jemalloc_background_thread gauge\njemalloc_background_thread {}\n",
            u8::from(on)
        );
    }
}

/// Without jemalloc there are no allocator statistics to add.
#[cfg(not(all(unix, not(target_env = "musl"))))]
fn allocator_metrics(_text: &mut String) {}

/// Starts the host's controls on `addr` (loopback only), for requests that carry
/// `token`.
async fn serve_admin(addr: SocketAddr, token: String, hub: Hub) -> anyhow::Result<()> {
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    use std::collections::HashMap;
    use subtle::ConstantTimeEq as _;

    anyhow::ensure!(
        addr.ip().is_loopback(),
        "--admin-addr must be a loopback address"
    );
    anyhow::ensure!(
        token.len() >= 16,
        "--admin-addr needs CHAT_ADMIN_TOKEN (16 characters or more)"
    );
    type Form = axum::Form<HashMap<String, String>>;
    type Reply = (StatusCode, String);
    #[derive(Clone)]
    struct Admin {
        hub: Hub,
        token: Arc<str>,
    }
    fn allowed(admin: &Admin, headers: &HeaderMap) -> Result<(), Reply> {
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // In constant time (subtle): a byte-by-byte `==` stops at the first difference,
        // so its timing would tell an attacker how much of a guess is right.
        match given {
            Some(t) if bool::from(t.as_bytes().ct_eq(admin.token.as_bytes())) => Ok(()),
            _ => Err((
                StatusCode::UNAUTHORIZED,
                "a bearer token is needed\n".into(),
            )),
        }
    }
    fn field<'a>(form: &'a HashMap<String, String>, k: &str) -> Result<&'a str, Reply> {
        form.get(k)
            .map(String::as_str)
            .ok_or_else(|| (StatusCode::BAD_REQUEST, format!("missing field {k}\n")))
    }
    async fn revoke(State(admin): State<Admin>, headers: HeaderMap, form: Form) -> Reply {
        let run = async {
            allowed(&admin, &headers)?;
            let user = field(&form, "user")?;
            let n = admin
                .hub
                .revoke_user(user)
                .await
                .map_err(|_| (StatusCode::SERVICE_UNAVAILABLE, "stopping\n".to_owned()))?;
            Ok((StatusCode::OK, format!("{n} sessions closed here\n")))
        };
        run.await.unwrap_or_else(|e| e)
    }
    async fn role(State(admin): State<Admin>, headers: HeaderMap, form: Form) -> Reply {
        let run = async {
            allowed(&admin, &headers)?;
            let (room, user) = (field(&form, "room")?, field(&form, "user")?);
            let role = match field(&form, "role")? {
                "owner" => chat_core::protocol::Role::Owner,
                "moderator" => chat_core::protocol::Role::Moderator,
                "member" => chat_core::protocol::Role::Member,
                other => {
                    return Err((StatusCode::BAD_REQUEST, format!("no role {other:?}\n")));
                }
            };
            match admin.hub.set_role(room, user, role).await {
                Ok(Ok(())) => Ok((StatusCode::OK, "done\n".to_owned())),
                Ok(Err(e)) => Err((StatusCode::BAD_REQUEST, format!("{e}\n"))),
                Err(_) => Err((StatusCode::SERVICE_UNAVAILABLE, "stopping\n".to_owned())),
            }
        };
        run.await.unwrap_or_else(|e| e)
    }
    async fn erase(State(admin): State<Admin>, headers: HeaderMap, form: Form) -> Reply {
        let run = async {
            allowed(&admin, &headers)?;
            let user = field(&form, "user")?;
            match admin.hub.erase_user(user).await {
                Ok(Ok(n)) => Ok((StatusCode::OK, format!("erased in {n} rooms\n"))),
                Ok(Err(e)) => Err((StatusCode::BAD_REQUEST, format!("{e}\n"))),
                Err(_) => Err((StatusCode::SERVICE_UNAVAILABLE, "stopping\n".to_owned())),
            }
        };
        run.await.unwrap_or_else(|e| e)
    }
    async fn retention(State(admin): State<Admin>, headers: HeaderMap, form: Form) -> Reply {
        let run = async {
            allowed(&admin, &headers)?;
            let room = field(&form, "room")?;
            let number = |k: &str| -> Result<Option<u64>, Reply> {
                form.get(k)
                    .filter(|v| !v.is_empty())
                    .map(|v| v.parse::<u64>())
                    .transpose()
                    .map_err(|_| (StatusCode::BAD_REQUEST, format!("{k} must be a number\n")))
            };
            let policy = chat_core::Retention {
                max_age: number("days")?.map(|d| Duration::from_secs(d.saturating_mul(86_400))),
                max_count: number("messages")?,
            };
            match admin.hub.set_retention(room, policy).await {
                Ok(Ok(())) => Ok((StatusCode::OK, "stored\n".to_owned())),
                Ok(Err(e)) => Err((StatusCode::BAD_REQUEST, format!("{e}\n"))),
                Err(_) => Err((StatusCode::SERVICE_UNAVAILABLE, "stopping\n".to_owned())),
            }
        };
        run.await.unwrap_or_else(|e| e)
    }
    let app = axum::Router::new()
        .route("/revoke", post(revoke))
        .route("/role", post(role))
        .route("/erase", post(erase))
        .route("/retention", post(retention))
        .with_state(Admin {
            hub,
            token: token.into(),
        });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    println!("admin on http://{local}");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the admin listener stopped");
        }
    });
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
