//! One WebSocket connection: a reader (this task) and a writer (a tracked task), generic
//! over `Stream`/`Sink` so the same code serves chat and the Autobahn echo endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use chat_core::runtime::{Hub, Inbound, Outbound};
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use crate::RouterOptions;

/// What the connection does with incoming frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Speak the chat protocol through the hub.
    Chat,
    /// Echo every data frame back (protocol-compliance testing only).
    #[cfg_attr(not(feature = "autobahn"), allow(dead_code))]
    Echo,
}

/// A close the connection itself decides on (as opposed to the core's).
#[derive(Debug, Clone, Copy)]
struct LocalClose {
    code: u16,
    reason: &'static str,
}

const TOO_BIG: LocalClose = LocalClose {
    code: 1009,
    reason: "message too big",
};
const IDLE: LocalClose = LocalClose {
    code: 1001,
    reason: "idle timeout",
};
const BAD_UTF8: LocalClose = LocalClose {
    code: 1007,
    reason: "invalid UTF-8",
};
const PROTOCOL: LocalClose = LocalClose {
    code: 1002,
    reason: "protocol error",
};

pub(crate) async fn run(
    socket: WebSocket,
    hub: Hub,
    opts: Arc<RouterOptions>,
    peer: Option<SocketAddr>,
    mode: Mode,
) {
    let (sink, stream) = socket.split();
    match mode {
        Mode::Chat => {
            let Ok(conn) = hub.connect().await else {
                return;
            };
            let span = tracing::info_span!("ws", session = %conn.session, peer = ?peer);
            let (inbound, outbound) = conn.split();
            connection(stream, sink, Some(inbound), outbound, opts)
                .instrument(span)
                .await;
        }
        Mode::Echo => {
            let (tx, outbound) = mpsc::channel(opts.write_batch.max(1) * 4);
            echo(stream, sink, tx, outbound, opts).await;
        }
    }
}

/// Runs a chat connection: the writer drains the session's queue; this task reads.
async fn connection<R, W>(
    stream: R,
    sink: W,
    inbound: Option<Inbound>,
    outbound: mpsc::Receiver<Outbound>,
    opts: Arc<RouterOptions>,
) where
    R: Stream<Item = Result<Message, axum::Error>> + Unpin + Send,
    W: Sink<Message, Error = axum::Error> + Unpin + Send + 'static,
{
    let (local_tx, local_rx) = mpsc::channel::<LocalClose>(1);
    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    let writer =
        tokio::spawn(writer(sink, outbound, local_rx, closing_tx, opts.clone()).in_current_span());
    reader(stream, inbound.as_ref(), &local_tx, closing_rx, &opts, None).await;
    if let Some(inbound) = inbound {
        inbound.disconnect().await;
    }
    drop(local_tx);
    let _ = writer.await;
    tracing::debug!("connection closed");
}

async fn echo<R, W>(
    stream: R,
    sink: W,
    tx: mpsc::Sender<Outbound>,
    outbound: mpsc::Receiver<Outbound>,
    opts: Arc<RouterOptions>,
) where
    R: Stream<Item = Result<Message, axum::Error>> + Unpin + Send,
    W: Sink<Message, Error = axum::Error> + Unpin + Send + 'static,
{
    let (local_tx, local_rx) = mpsc::channel::<LocalClose>(1);
    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    let (raw_tx, raw_rx) = mpsc::channel::<Message>(64);
    let writer = tokio::spawn(echo_writer(
        sink,
        raw_rx,
        local_rx,
        closing_tx,
        opts.clone(),
    ));
    drop(tx);
    drop(outbound);
    reader(stream, None, &local_tx, closing_rx, &opts, Some(&raw_tx)).await;
    drop(local_tx);
    drop(raw_tx);
    let _ = writer.await;
}

/// Reads frames until the peer's close completes, the connection breaks, or it idles out.
async fn reader<R>(
    mut stream: R,
    inbound: Option<&Inbound>,
    local: &mpsc::Sender<LocalClose>,
    mut closing: tokio::sync::watch::Receiver<bool>,
    opts: &RouterOptions,
    echo: Option<&mpsc::Sender<Message>>,
) where
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let mut deadline = Instant::now() + opts.idle_timeout;
    let mut close_sent = false;
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            () = tokio::time::sleep_until(deadline) => {
                if close_sent {
                    return; // the peer never answered our close
                }
                let _ = local.try_send(IDLE);
                close_sent = true;
                deadline = Instant::now() + opts.close_timeout;
                continue;
            }
            changed = closing.changed(), if !close_sent => {
                // The writer sent a close frame: wait a bounded time for the peer's.
                if changed.is_ok() {
                    close_sent = true;
                    deadline = Instant::now() + opts.close_timeout;
                }
                continue;
            }
        };
        let message = match next {
            None => return,
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                let close = classify(&e);
                tracing::debug!(error = %e, "read error");
                if let Some(close) = close {
                    if !close_sent && local.try_send(close).is_ok() {
                        close_sent = true;
                        deadline = Instant::now() + opts.close_timeout;
                        continue;
                    }
                }
                return;
            }
        };
        if !close_sent {
            deadline = Instant::now() + opts.idle_timeout;
        }
        let delivered = match (message, inbound, echo) {
            (Message::Text(text), Some(inbound), _) => inbound.frame(text.as_bytes()).await.is_ok(),
            (Message::Binary(_), Some(inbound), _) => inbound
                .bad_frame("binary frames are not supported; send JSON text")
                .await
                .is_ok(),
            (m @ (Message::Text(_) | Message::Binary(_)), None, Some(echo)) => {
                echo.send(m).await.is_ok()
            }
            // tungstenite answers pings and close frames itself; keep reading until the
            // stream ends so the close handshake completes.
            _ => true,
        };
        if !delivered {
            return;
        }
    }
}

/// Maps a read error to the close we should send, if the socket can still take one.
fn classify(e: &axum::Error) -> Option<LocalClose> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let inner = std::error::Error::source(e)?;
    match inner.downcast_ref::<WsError>()? {
        WsError::Capacity(_) => Some(TOO_BIG),
        WsError::Utf8(_) => Some(BAD_UTF8),
        WsError::Protocol(_) => Some(PROTOCOL),
        _ => None,
    }
}

/// Drains the session's queue into the socket, several frames per flush; pings when quiet.
async fn writer<W>(
    mut sink: W,
    mut outbound: mpsc::Receiver<Outbound>,
    mut local: mpsc::Receiver<LocalClose>,
    closing: tokio::sync::watch::Sender<bool>,
    opts: Arc<RouterOptions>,
) where
    W: Sink<Message, Error = axum::Error> + Unpin,
{
    let mut ping =
        tokio::time::interval_at(Instant::now() + opts.ping_interval, opts.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let close = loop {
        tokio::select! {
            biased;
            local_close = local.recv() => match local_close {
                Some(c) => break Some((c.code, c.reason)),
                None => break None, // the reader is done: the peer closed or vanished
            },
            item = outbound.recv() => {
                if outbound.is_empty() {
                    // Let the hub, and whatever else is ready, run first: under load it
                    // queues more frames meanwhile, and this write carries them all (one
                    // syscall for many frames). Idle, it costs one scheduler round.
                    tokio::task::yield_now().await;
                }
                let mut item = item;
                let mut fed = 0;
                let close = loop {
                    match item {
                        Some(Outbound::Frame(frame)) => {
                            let text = Utf8Bytes::try_from(frame.bytes().clone()).expect("frames are UTF-8 JSON");
                            if !write(sink.feed(Message::Text(text)), &outbound, &opts).await {
                                let _ = closing.send(true);
                                return;
                            }
                            fed += 1;
                        }
                        Some(Outbound::Close(reason)) => break Some((reason.ws_code(), reason.as_str())),
                        // The queue was dropped: by the core for a slow consumer, or
                        // because the reader ended the session (a local close it asked
                        // for, or the peer left) while this batch was being written.
                        None => break match local.try_recv() {
                            Ok(c) => Some((c.code, c.reason)),
                            Err(mpsc::error::TryRecvError::Disconnected) => None,
                            Err(mpsc::error::TryRecvError::Empty) => Some((1013, "slow consumer")),
                        },
                    }
                    if fed >= opts.write_batch {
                        break None;
                    }
                    item = match outbound.try_recv() {
                        Ok(next) => Some(next),
                        Err(mpsc::error::TryRecvError::Empty) => break None,
                        Err(mpsc::error::TryRecvError::Disconnected) => None,
                    };
                };
                if !write(sink.flush(), &outbound, &opts).await {
                    let _ = closing.send(true);
                    return;
                }
                ping.reset();
                if close.is_some() {
                    break close;
                }
            }
            _ = ping.tick() => {
                if !write(sink.send(Message::Ping(Default::default())), &outbound, &opts).await {
                    let _ = closing.send(true);
                    return;
                }
            }
        }
    };
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ = closing.send(true);
        // A peer that reads nothing cannot take the close frame either.
        let close = sink.send(Message::Close(Some(frame)));
        let _ = tokio::time::timeout(opts.close_timeout, close).await;
    }
    // Let the reader finish the handshake; it owns the other half of the socket.
}

/// Waits for a socket write; false when it failed or was given up.
///
/// A write to a peer that does not read blocks for as long as the peer wants. That is
/// backpressure while the session lives (its queue fills and the core decides), but once
/// the core has closed the session (the queue's sender is gone: a slow consumer, or the
/// hub stopped) the writer gives the peer `close_timeout` more and then lets go, so a
/// stuck peer holds no task. The reader is then told to finish too.
async fn write<F>(write: F, outbound: &mpsc::Receiver<Outbound>, opts: &RouterOptions) -> bool
where
    F: std::future::Future<Output = Result<(), axum::Error>>,
{
    tokio::pin!(write);
    // Most writes complete at once (into the write buffer): only one that blocks needs a
    // timer, and so a clock read.
    if let std::task::Poll::Ready(result) = futures::poll!(&mut write) {
        return result.is_ok();
    }
    let mut session_closed = false;
    loop {
        match tokio::time::timeout(opts.close_timeout, &mut write).await {
            Ok(result) => return result.is_ok(),
            Err(_) if session_closed => {
                tracing::debug!("gave up writing to a peer that does not read");
                return false;
            }
            Err(_) => session_closed = outbound.is_closed(),
        }
    }
}

async fn echo_writer<W>(
    mut sink: W,
    mut frames: mpsc::Receiver<Message>,
    mut local: mpsc::Receiver<LocalClose>,
    closing: tokio::sync::watch::Sender<bool>,
    _opts: Arc<RouterOptions>,
) where
    W: Sink<Message, Error = axum::Error> + Unpin,
{
    loop {
        tokio::select! {
            biased;
            c = local.recv() => {
                if let Some(c) = c {
                    // Echo what was read before the bad frame, then close.
                    while let Ok(m) = frames.try_recv() {
                        if sink.send(m).await.is_err() {
                            return;
                        }
                    }
                    let _ = closing.send(true);
                    let frame = CloseFrame { code: c.code, reason: Utf8Bytes::from_static(c.reason) };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                }
                return;
            }
            m = frames.recv() => match m {
                Some(m) => {
                    if sink.send(m).await.is_err() {
                        return;
                    }
                }
                None => return,
            },
        }
    }
}
