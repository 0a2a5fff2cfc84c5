//! # chat-axum
//!
//! A thin adapter that serves the [`chat_core`] engine over axum WebSockets, plus the
//! browser chat page. It holds no chat rules: it upgrades connections (after an Origin
//! check), moves frames between sockets and the [`Hub`], applies transport limits,
//! heartbeats, and shuts down cleanly.
//!
//! ```no_run
//! use chat_axum::{mount, router, RouterOptions};
//! use chat_core::runtime::{Hub, HubConfig};
//!
//! # async fn run() -> std::io::Result<()> {
//! let hub = Hub::spawn(HubConfig::default()).await.expect("hub starts");
//! let app = axum::Router::new()
//!     .route("/", axum::routing::get(|| async { "my app" }))
//!     .merge(mount("/chat", router(hub, RouterOptions::default())));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await?;
//! axum::serve(listener, app).await
//! # }
//! ```
//!
//! For a complete server with graceful shutdown use [`serve`].

#![cfg_attr(docsrs, feature(doc_cfg))]

mod caps;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod identity;
mod origin;
mod page;
mod socket;
mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, OriginalUri, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use chat_core::runtime::{Hub, HubConfig};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

pub use caps::ConnectionLimits;
pub use identity::{ConnectRefused, ConnectRequest, IdentityFuture, IdentityHook, identity_hook};
pub use origin::OriginPolicy;
pub use page::mount;

/// Renders the `/metrics` body (Prometheus text format). The library only records
/// through the `metrics` facade; a binary installs the exporter and passes its renderer.
pub type MetricsRenderer = Arc<dyn Fn() -> String + Send + Sync>;

/// Options of the HTTP and WebSocket layer.
#[derive(Clone)]
pub struct RouterOptions {
    /// Which page origins may open a WebSocket. Default: same origin only.
    pub origins: OriginPolicy,
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
    /// Caps on WebSocket connections (in all, per client address, per second), checked
    /// before the upgrade.
    pub limits: ConnectionLimits,
    /// An upgraded connection that sends no message at all for this long (a client
    /// sends `hello` first) is closed with 1008 "no hello". Default 10 s.
    pub hello_timeout: Duration,
    /// [`serve`] only: a connection must have sent a complete request head this long
    /// after it opened (or after its previous request): otherwise it is dropped, the
    /// slow-header (slowloris) defence. Default 5 s. An app that mounts [`router`] in
    /// its own server sets its own.
    pub header_read_timeout: Duration,
    /// The host's identity hook: each upgrade request is answered by it before the
    /// upgrade (a refusal is HTTP 401/403, no socket opens), and the connection's user is
    /// the identity it gives, whatever the client's `hello` says. `None`: users are
    /// identified by `hello` (the core's [`AuthMode`](chat_core::AuthMode)).
    pub identity: Option<IdentityHook>,
}

impl Default for RouterOptions {
    fn default() -> Self {
        RouterOptions {
            origins: OriginPolicy::SameOrigin,
            read_buffer_bytes: 4 * 1024,
            write_buffer_bytes: 16 * 1024,
            ping_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            close_timeout: Duration::from_secs(5),
            write_batch: 256,
            tracker: TaskTracker::new(),
            metrics: None,
            page: true,
            limits: ConnectionLimits::default(),
            hello_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(5),
            identity: None,
        }
    }
}

impl std::fmt::Debug for RouterOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterOptions")
            .field("origins", &self.origins)
            .field("read_buffer_bytes", &self.read_buffer_bytes)
            .field("ping_interval", &self.ping_interval)
            .field("idle_timeout", &self.idle_timeout)
            .field("limits", &self.limits)
            .field("hello_timeout", &self.hello_timeout)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("identity", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct AppState {
    hub: Hub,
    options: Arc<RouterOptions>,
    caps: Arc<caps::Caps>,
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
    let page = options
        .page
        .then(|| page::routes(hub.limits(), options.identity.is_some()));
    let state = AppState {
        hub,
        caps: caps::Caps::new(options.limits.clone()),
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
    if let Some(page) = page {
        router = router.merge(page);
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
    OriginalUri(uri): OriginalUri,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    upgrade: ws::Upgrade,
) -> Response {
    if let Err(refused) = state.options.origins.check(&headers) {
        tracing::info!(origin = %refused, "refused WebSocket from another origin");
        refusal("origin");
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    if !state.hub.is_running() {
        refusal("shutting_down");
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let peer = connect.map(|Extension(ConnectInfo(addr))| addr);
    let client = peer.map(|p| state.caps.client_ip(p.ip(), &headers));
    let admitted = match state.caps.admit(client) {
        Ok(admitted) => admitted,
        Err(refused) => {
            tracing::debug!(?client, why = refused.why.as_str(), "refused WebSocket");
            refusal(refused.why.as_str());
            return refused.into_response();
        }
    };
    let identity = match &state.options.identity {
        Some(hook) => {
            let request = ConnectRequest { headers, uri, peer };
            match hook(request).await {
                Ok(identity) if identity.expires.is_some_and(|at| at <= chrono_now()) => {
                    refusal("unauthorized");
                    return ConnectRefused::Unauthorized("credentials expired".into())
                        .into_response();
                }
                Ok(identity) => Some(identity),
                Err(refused) => {
                    tracing::debug!(?peer, ?refused, "identity hook refused a WebSocket");
                    refusal(refused.metric());
                    return refused.into_response();
                }
            }
        }
        None => None,
    };
    let mode = socket::Mode::Chat(identity);
    spawn_connection(upgrade, state, peer, mode, admitted)
}

#[allow(clippy::disallowed_methods)] // the adapter reads the clock, the core never does
fn chrono_now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

/// Counts a refused upgrade by reason (`chat_refusals_total`).
fn refusal(reason: &'static str) {
    ::metrics::counter!("chat_refusals_total", "reason" => reason).increment(1);
}

#[cfg(feature = "autobahn")]
async fn echo_handler(State(state): State<AppState>, upgrade: ws::Upgrade) -> Response {
    let Ok(admitted) = state.caps.admit(None) else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections\n").into_response();
    };
    spawn_connection(upgrade, state, None, socket::Mode::Echo, admitted)
}

/// Answers `101 Switching Protocols`; the connection's task starts once hyper has
/// handed over the socket.
fn spawn_connection(
    upgrade: ws::Upgrade,
    state: AppState,
    peer: Option<SocketAddr>,
    mode: socket::Mode,
    admitted: caps::Admitted,
) -> Response {
    let (response, on_upgrade) = upgrade.accept();
    let token = state.options.tracker.token();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = hyper_util::rt::TokioIo::new(upgraded);
                socket::run(io, state.hub, state.options, state.caps, peer, mode).await;
            }
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
        // Its place under the caps is free before the tracker counts the task as done.
        drop(admitted);
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
    metrics::gauge_set("chat_connections", stats.connections as f64);
    metrics::gauge_set("chat_rooms", stats.rooms as f64);
    metrics::gauge_set("chat_inbox_depth", stats.inbox_depth as f64);
    metrics::gauge_set("chat_websockets_open", state.caps.open() as f64);
    metrics::gauge_set("chat_ws_buffer_bytes", state.caps.buffered() as f64);
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
    let header_read_timeout = options.header_read_timeout;
    let app = router(hub.clone(), options);
    // Returns once the listener is closed and plain HTTP requests are done; upgraded
    // WebSockets are not waited for there, hence the tracker.
    // The accept loop runs as a task of its own: awaited in place it would run on the
    // caller's thread (the main thread under `#[tokio::main]`), and every accepted
    // connection would be handed from that thread to a worker.
    let result = match tokio::spawn(accept_loop(listener, app, header_read_timeout, shutdown)).await
    {
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

/// Accepts connections until `shutdown`, serves each with hyper's HTTP/1 (upgrades on,
/// the header-read timeout armed: axum::serve sets no timer, so a client trickling its
/// request head would hold its socket for ever), then lets in-flight requests finish.
async fn accept_loop(
    listener: TcpListener,
    app: Router,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut stop = stop_rx.clone();
    let connections = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        // No Nagle: the writer already batches frames per flush, and a flush must leave
        // now, not after the peer's delayed ACK (tens of ms of added latency under load).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let service = ConnService {
            app: app.clone(),
            peer,
        };
        let conn = http
            .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
            .with_upgrades();
        let mut stop = stop_rx.clone();
        connections.spawn(async move {
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                if e.is_timeout() {
                    refusal("header_timeout");
                }
                tracing::trace!(error = %e, ?peer, "HTTP connection ended");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Resolves once the shutdown was signalled (or its sender is gone).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// A failed `accept`: a connection that was reset before we took it is nothing, but
/// running out of file descriptors would spin, so wait a moment.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The app for one connection, with its peer address (as `ConnectInfo`, which
/// `into_make_service_with_connect_info` would give).
#[derive(Clone)]
struct ConnService {
    app: Router,
    peer: SocketAddr,
}

impl hyper::service::Service<axum::http::Request<hyper::body::Incoming>> for ConnService {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = <Router as tower_service::Service<axum::extract::Request>>::Future;

    fn call(&self, mut req: axum::http::Request<hyper::body::Incoming>) -> Self::Future {
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let mut app = self.app.clone();
        tower_service::Service::call(&mut app, req.map(axum::body::Body::new))
    }
}

/// The crate README's examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
