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
//! ```
//!
//! History is durable by default: every message is committed to the SQLite file `--db`
//! (`chat.db` in the working directory) before it is delivered and acknowledged, and a
//! restart continues where the server stopped. `--db :memory:` runs an ephemeral server.
//! `--durability full` (default) survives power loss; `normal` survives a crash of the
//! process only, and commits faster.
//!
//! Ctrl-C or SIGTERM: stops accepting, tells every client to reconnect (close 1012),
//! waits for every connection to finish (at most `--drain-secs`), commits what is
//! pending, checkpoints the database's WAL, exits 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chat_axum::{OriginPolicy, RouterOptions};
use chat_core::Rate;
use chat_core::runtime::{Durability, Hub, HubConfig, SqliteStore};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "The example chat server")]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "CHAT_ADDR", default_value = "127.0.0.1:5000")]
    addr: SocketAddr,
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
}

/// jemalloc rather than the system's malloc: glibc keeps freed memory in its heaps, so
/// the server's RSS would stay at the peak of every burst (a stalled store, a restart's
/// reconnections) for the rest of its life; jemalloc returns unused pages within seconds.
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
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;

    let store = SqliteStore::open(&args.db, args.durability)
        .with_context(|| format!("opening the database {}", args.db.display()))?;
    tracing::info!(
        db = %args.db.display(),
        durability = %args.durability,
        epoch = store.epoch(),
        "history store open"
    );
    let mut core = chat_core::Config {
        send_rate: Rate {
            burst: args.send_burst,
            per_second: args.send_rate,
        },
        ..chat_core::Config::default()
    };
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
        store: Some(Arc::new(store)),
        ..HubConfig::default()
    })
    .await
    .context("starting the chat hub")?;
    let options = RouterOptions {
        origins: OriginPolicy::from_list(&args.origins),
        metrics: Some(Arc::new(move || prometheus.render())),
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
