//! An echo server for the Autobahn|Testsuite fuzzing client: `/echo` runs the real
//! connection reader and writer with the chat dispatch swapped for an echo.
//!
//! Run with (scripts/autobahn.sh does this, then points `wstest` at it):
//!
//! ```text
//! cargo run -p chat-axum --features autobahn --example autobahn_echo -- 127.0.0.1:9001
//! ```
//!
//! Prints `listening on ws://ADDR/echo` once it accepts connections; stops on Ctrl-C
//! or SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use chat_axum::{OriginPolicy, RouterOptions};
use chat_core::runtime::{Hub, HubConfig};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".to_owned())
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut config = HubConfig::default();
    // Section 9 sends messages of up to 16 MiB.
    config.core.max_frame_bytes = 16 * 1024 * 1024;
    let hub = Hub::spawn(config).await.map_err(std::io::Error::other)?;
    let options = RouterOptions {
        origins: OriginPolicy::Any,
        page: false,
        ..RouterOptions::default()
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on ws://{}/echo", listener.local_addr()?);
    chat_axum::serve_hub(listener, hub, options, Duration::from_secs(5), shutdown()).await
}

async fn shutdown() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
