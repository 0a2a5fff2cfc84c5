//! The chat server as the load benchmark runs it: the same `chat_axum::serve_hub` stack as
//! the example server, with the per-session flood limits lifted (a load generator sends
//! far faster than a person may), any Origin, no page, no metrics exporter, and no store
//! unless `--db` is given (then the SQLite store, as the example server has by default).
//!
//! ```text
//! bench-server --addr 127.0.0.1:0
//! ```
//!
//! Prints `listening on http://ADDR` once bound; SIGTERM or Ctrl-C shuts it down.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use chat_axum::{OriginPolicy, RouterOptions};
use chat_core::Rate;
use chat_core::runtime::{Durability, Hub, HubConfig, SqliteStore};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "The chat server with benchmark settings (flood limits lifted)")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:5000")]
    addr: SocketAddr,
    /// Log filter.
    #[arg(long, default_value = "warn")]
    log: String,
    /// Frames queued per connection before the slow-consumer policy applies.
    #[arg(long, default_value_t = 1024)]
    outbound_queue: usize,
    /// Threads that queue frames to the connections (0: the driver does it).
    #[arg(long, env = "CHAT_FANOUT_THREADS", default_value_t = 0)]
    fanout_threads: usize,
    /// Bytes read per syscall at most.
    #[arg(long, default_value_t = RouterOptions::default().read_buffer_bytes)]
    read_buffer: usize,
    /// Unwritten bytes a connection may hold before it stops taking frames.
    #[arg(long, default_value_t = RouterOptions::default().write_buffer_bytes)]
    write_buffer: usize,
    /// Frames taken from a session's queue per socket write at most.
    #[arg(long, default_value_t = RouterOptions::default().write_batch)]
    write_batch: usize,
    /// SQLite database for a durable store (`:memory:` for an in-memory one); none by
    /// default: history in the core's memory window only.
    #[arg(long)]
    db: Option<std::path::PathBuf>,
    /// `full` (fsync per commit group) or `normal` (fsync at checkpoints).
    #[arg(long, default_value = "full")]
    durability: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).context("--log")?)
        .with_target(false)
        .init();
    let unlimited = Rate {
        burst: 1_000_000,
        per_second: 1_000_000,
    };
    let mut config = HubConfig::default();
    config.core.send_rate = unlimited;
    config.core.frame_rate = unlimited;
    config.core.max_rooms = 1_000_000;
    config.outbound_queue = args.outbound_queue;
    config.fanout_threads = args.fanout_threads;
    if let Some(db) = &args.db {
        let durability = match args.durability.as_str() {
            "full" => Durability::Full,
            "normal" => Durability::Normal,
            other => anyhow::bail!("--durability {other}: expected full or normal"),
        };
        let store = SqliteStore::open(db, durability)
            .with_context(|| format!("opening {}", db.display()))?;
        config.store = Some(std::sync::Arc::new(store));
    }
    let hub = Hub::spawn(config).await.context("starting the chat hub")?;
    let options = RouterOptions {
        origins: OriginPolicy::Any,
        page: false,
        read_buffer_bytes: args.read_buffer,
        write_buffer_bytes: args.write_buffer,
        write_batch: args.write_batch,
        idle_timeout: Duration::from_secs(600),
        ..RouterOptions::default()
    };
    // A deep accept queue: a burst of connections must not overflow it (a dropped SYN
    // is retried after a second).
    let listener = chat_axum::bind(args.addr).with_context(|| format!("binding {}", args.addr))?;
    println!("listening on http://{}", listener.local_addr()?);
    chat_axum::serve_hub(listener, hub, options, Duration::from_secs(5), shutdown())
        .await
        .context("serving")
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
