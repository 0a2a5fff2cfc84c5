//! # chat-axum
//!
//! A thin adapter that serves the [`chat_core`] engine over axum WebSockets, plus the
//! browser chat page. It holds no chat rules: it upgrades connections (after an Origin
//! check), moves frames between sockets and the [`Hub`], applies transport limits,
//! heartbeats, and shuts down cleanly.
//!
//! ```no_run
//! use chat_axum::{router, RouterOptions};
//! use chat_core::runtime::{Hub, HubConfig};
//!
//! # async fn run() -> std::io::Result<()> {
//! let hub = Hub::spawn(HubConfig::default()).await.expect("hub starts");
//! let app = axum::Router::new()
//!     .route("/", axum::routing::get(|| async { "my app" }))
//!     .nest("/chat", router(hub, RouterOptions::default()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await?;
//! axum::serve(listener, app).await
//! # }
//! ```
//!
//! For a complete server with graceful shutdown use [`serve`].

mod origin;
mod page;
mod socket;
mod ws;

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use chat_core::runtime::{Hub, HubConfig};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

pub use origin::OriginPolicy;

/// Renders the `/metrics` body (Prometheus text format). The library only records
/// through the `metrics` facade; a binary installs the exporter and passes its renderer.
pub type MetricsRenderer = Arc<dyn Fn() -> String + Send + Sync>;

/// Options of the HTTP and WebSocket layer.
#[derive(Clone)]
pub struct RouterOptions {
    /// Which page origins may open a WebSocket. Default: same origin only.
    pub origins: OriginPolicy,
    /// Largest incoming WebSocket message; a larger one is closed with 1009.
    pub max_frame_bytes: usize,
    /// Bytes read per syscall at most (into a stack buffer: an idle connection keeps no
    /// read buffer). Clamped to 256..=8192.
    pub read_buffer_bytes: usize,
    /// Unwritten bytes a connection may hold (its peer reads slower than frames come):
    /// past this it stops taking frames from its session's queue, the queue fills and
    /// the core's slow-consumer policy decides.
    pub write_buffer_bytes: usize,
    /// A peer we have heard nothing from for this long is pinged, and again each
    /// interval while it stays silent, whatever we write to it; so is one we have
    /// written nothing to for this long. Capped at half of `idle_timeout` (a zero
    /// interval is taken as that cap), so that a silent peer is always pinged, and has
    /// time to answer, before it is closed.
    pub ping_interval: Duration,
    /// A connection we hear nothing from (no frame at all: a pong counts) for this long
    /// is closed with 1001 "idle timeout".
    pub idle_timeout: Duration,
    /// How long to wait for the peer's half of a close handshake; also how long a peer
    /// that reads nothing still gets once its session was closed (a slow consumer)
    /// before its connection is dropped without a close frame.
    pub close_timeout: Duration,
    /// Frames taken from the session's queue per socket write at most (also at most
    /// 64 KiB of them). Larger batches mean fewer syscalls per delivered frame under
    /// load: 64 -> 256 took a 1,000-client fan-out from ~0.40 to ~0.30 CPU-µs per frame.
    pub write_batch: usize,
    /// Tracks every WebSocket task, so a shutdown can wait for them
    /// (axum's graceful shutdown does not wait for upgraded connections).
    pub tracker: TaskTracker,
    /// `/metrics` body, when metrics are exported.
    pub metrics: Option<MetricsRenderer>,
    /// Whether to serve the browser chat page at `/`.
    pub page: bool,
}

impl Default for RouterOptions {
    fn default() -> Self {
        RouterOptions {
            origins: OriginPolicy::SameOrigin,
            max_frame_bytes: 64 * 1024,
            read_buffer_bytes: 4 * 1024,
            write_buffer_bytes: 16 * 1024,
            ping_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            close_timeout: Duration::from_secs(5),
            write_batch: 256,
            tracker: TaskTracker::new(),
            metrics: None,
            page: true,
        }
    }
}

impl std::fmt::Debug for RouterOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterOptions")
            .field("origins", &self.origins)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("read_buffer_bytes", &self.read_buffer_bytes)
            .field("ping_interval", &self.ping_interval)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct AppState {
    hub: Hub,
    options: Arc<RouterOptions>,
}

/// The chat routes, mountable in any axum app under any path: `/` (the page, if enabled),
/// `/ws`, `/healthz`, `/readyz` and `/metrics`.
pub fn router(hub: Hub, mut options: RouterOptions) -> Router {
    cap_ping_interval(&mut options);
    if options.origins == OriginPolicy::Any {
        tracing::warn!(
            "chat WebSocket accepts every Origin: any web page can connect as its visitor"
        );
    }
    let page = options.page;
    let state = AppState {
        hub,
        options: Arc::new(options),
    };
    let mut router = Router::new()
        .route("/ws", get(ws_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    #[cfg(feature = "autobahn")]
    {
        router = router.route("/echo", get(echo_handler));
    }
    if page {
        router = router.merge(page::routes());
    }
    router.with_state(state)
}

/// A ping interval of at least the idle timeout would close every quiet peer before
/// (or just as) it is pinged: cap it at half, and say so.
fn cap_ping_interval(options: &mut RouterOptions) {
    let cap = options.idle_timeout / 2;
    if options.ping_interval > cap || options.ping_interval.is_zero() {
        tracing::warn!(
            ping_interval = ?options.ping_interval,
            idle_timeout = ?options.idle_timeout,
            "ping_interval capped at half the idle_timeout ({cap:?})"
        );
        options.ping_interval = cap;
    }
}

async fn ws_handler(
    State(state): State<AppState>,
    headers: HeaderMap,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    upgrade: ws::Upgrade,
) -> Response {
    if let Err(refused) = state.options.origins.check(&headers) {
        tracing::info!(origin = %refused, "refused WebSocket from another origin");
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    if !state.hub.is_running() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let peer = connect.map(|Extension(ConnectInfo(addr))| addr);
    spawn_connection(upgrade, state, peer, socket::Mode::Chat)
}

#[cfg(feature = "autobahn")]
async fn echo_handler(State(state): State<AppState>, upgrade: ws::Upgrade) -> Response {
    spawn_connection(upgrade, state, None, socket::Mode::Echo)
}

/// Answers `101 Switching Protocols`; the connection's task starts once hyper has
/// handed over the socket.
fn spawn_connection(
    upgrade: ws::Upgrade,
    state: AppState,
    peer: Option<SocketAddr>,
    mode: socket::Mode,
) -> Response {
    let (response, on_upgrade) = upgrade.accept();
    let token = state.options.tracker.token();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = hyper_util::rt::TokioIo::new(upgraded);
                socket::run(io, state.hub, state.options, peer, mode).await;
            }
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
        drop(token);
    });
    response
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.hub.is_running() {
        "ready".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let Some(render) = &state.options.metrics else {
        return (StatusCode::NOT_FOUND, "metrics are not exported\n").into_response();
    };
    let stats = state.hub.stats();
    let load =
        |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed) as f64;
    metrics::gauge_set("chat_connections", load(&stats.connections));
    metrics::gauge_set("chat_rooms", load(&stats.rooms));
    metrics::gauge_set("chat_inbox_depth", load(&stats.inbox_depth));
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(),
    )
        .into_response()
}

mod metrics {
    pub fn gauge_set(name: &'static str, value: f64) {
        ::metrics::gauge!(name).set(value);
    }
}

/// Binds a TCP listener with a deep accept queue (4096, capped by the kernel's
/// `net.core.somaxconn`): after a restart every client reconnects at once, and a SYN
/// dropped by a full queue is retried only a second later.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Serves the chat on `listener` until `shutdown` resolves, then shuts down gracefully:
/// stops accepting, tells every client to reconnect (`goodbye`, close 1012), waits up to
/// `drain` for every WebSocket task, and returns.
pub async fn serve(
    listener: TcpListener,
    hub_config: HubConfig,
    options: RouterOptions,
    drain: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let hub = Hub::spawn(hub_config)
        .await
        .map_err(std::io::Error::other)?;
    serve_hub(listener, hub, options, drain, shutdown).await
}

/// As [`serve`], with a hub the caller already started (to publish into it, say).
pub async fn serve_hub(
    listener: TcpListener,
    hub: Hub,
    options: RouterOptions,
    drain: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tracker = options.tracker.clone();
    let app = router(hub.clone(), options);
    // No Nagle: the writer already batches frames per flush, and a flush must leave now,
    // not after the peer's delayed ACK (tens of ms of added latency under load).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown);
    // Returns once the listener is closed and plain HTTP requests are done; upgraded
    // WebSockets are not waited for by axum (tokio-rs/axum#3003), hence the tracker.
    // The accept loop runs as a task of its own: awaited in place it would run on the
    // caller's thread (the main thread under `#[tokio::main]`), and every accepted
    // connection would be handed from that thread to a worker.
    let result = match tokio::spawn(server.into_future()).await {
        Ok(result) => result,
        Err(e) => Err(std::io::Error::other(e)),
    };
    tracing::info!("shutting down: closing chat sessions");
    // Tells every session goodbye and closes it (1012), after pending stores settle.
    hub.shutdown().await;
    tracker.close();
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!(
            left = tracker.len(),
            "WebSocket tasks still running after the drain limit"
        );
    }
    result
}
