//! The WebSocket connection: one task that connects, moves frames both ways, and
//! reconnects with backoff. It knows nothing about chat beyond decoding frames.
//!
//! Every connection gets a generation number. Frames are sent tagged with the
//! generation they were made for; a frame for an older connection is dropped rather than
//! sent first thing on a new one (before its `hello`). The client state machine resends
//! whatever mattered after the next `welcome`.

use std::time::Duration;

use chat_core::client::Backoff;
use chat_core::protocol::{ClientFrame, ServerFrame};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// When to connect again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconnect {
    /// Give up when the first attempt fails; after a successful connection, reconnect
    /// whenever it drops (scripts: a wrong URL fails fast).
    AfterFirst,
    /// Keep trying, from the first attempt on (the interactive client).
    Always,
}

/// What the connection task reports.
#[derive(Debug, Clone)]
pub enum NetEvent {
    /// An attempt to connect starts.
    Connecting {
        /// 1 for the first attempt since the last connection.
        attempt: u32,
    },
    /// A connection is open.
    Connected {
        /// Its generation.
        generation: u64,
    },
    /// A frame arrived.
    Frame {
        /// The connection it came on.
        generation: u64,
        /// The frame.
        frame: ServerFrame,
    },
    /// The connection ended.
    Disconnected {
        /// The connection that ended.
        generation: u64,
        /// Why, for people.
        reason: String,
        /// When the next attempt starts.
        retry_in: Duration,
    },
    /// An attempt failed; the next starts after `retry_in`.
    AttemptFailed {
        /// Why, for people.
        error: String,
        /// When the next attempt starts.
        retry_in: Duration,
    },
    /// The task gave up (the first connection failed under [`Reconnect::AfterFirst`]).
    Failed {
        /// Why, for people.
        error: String,
    },
}

/// Timing of connections.
#[derive(Debug, Clone)]
pub struct NetOptions {
    /// The WebSocket URL.
    pub url: String,
    /// When to reconnect.
    pub reconnect: Reconnect,
    /// Longest wait for one connection attempt (TCP + WebSocket handshake).
    pub connect_timeout: Duration,
    /// A connection that receives nothing (not even a ping) for this long is considered
    /// dead. A server that follows the protocol's keepalive rule sends something at
    /// least every ping interval (25 s for the reference server), so the default
    /// leaves room for two lost or late pings.
    pub idle_timeout: Duration,
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
}

impl NetOptions {
    /// Defaults for a URL.
    #[must_use]
    pub fn new(url: impl Into<String>, reconnect: Reconnect) -> NetOptions {
        NetOptions {
            url: url.into(),
            reconnect,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// The handle of the connection task. Dropping it ends the task and the connection.
#[derive(Debug)]
pub struct Net {
    tx: mpsc::UnboundedSender<(u64, ClientFrame)>,
    rx: mpsc::UnboundedReceiver<NetEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl Net {
    /// Starts connecting in a task on the current tokio runtime.
    #[must_use]
    pub fn start(options: NetOptions) -> Net {
        let (tx, out_rx) = mpsc::unbounded_channel();
        let (ev_tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(options, out_rx, ev_tx));
        Net { tx, rx, task }
    }

    /// Queues a frame for the connection of that generation.
    pub fn send(&self, generation: u64, frame: ClientFrame) {
        let _ = self.tx.send((generation, frame));
    }

    /// The next report; `None` once the task has ended.
    pub async fn next(&mut self) -> Option<NetEvent> {
        self.rx.recv().await
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn jitter() -> u32 {
    getrandom::u32().unwrap_or(u32::MAX / 2)
}

async fn run(
    options: NetOptions,
    mut outgoing: mpsc::UnboundedReceiver<(u64, ClientFrame)>,
    events: mpsc::UnboundedSender<NetEvent>,
) {
    let mut backoff = Backoff::new(options.backoff_initial, options.backoff_max);
    let mut generation = 0u64;
    let mut ever_connected = false;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        if events.send(NetEvent::Connecting { attempt }).is_err() {
            return;
        }
        // No Nagle: a message typed, or a pong, leaves at once rather than waiting for
        // the server to acknowledge the previous frame.
        let connect =
            tokio_tungstenite::connect_async_with_config(options.url.as_str(), None, true);
        let error = match timeout(options.connect_timeout, connect).await {
            Ok(Ok((ws, _response))) => Ok(ws),
            Ok(Err(e)) => Err(describe(&e)),
            Err(_) => Err(format!(
                "no answer within {} s",
                options.connect_timeout.as_secs()
            )),
        };
        let ws = match error {
            Ok(ws) => ws,
            Err(error) => {
                if options.reconnect == Reconnect::AfterFirst && !ever_connected {
                    let _ = events.send(NetEvent::Failed { error });
                    return;
                }
                let retry_in = backoff.next_delay(jitter());
                if events
                    .send(NetEvent::AttemptFailed { error, retry_in })
                    .is_err()
                {
                    return;
                }
                sleep(retry_in).await;
                continue;
            }
        };
        ever_connected = true;
        attempt = 0;
        backoff.reset();
        generation += 1;
        // Frames queued for an earlier connection are stale.
        while outgoing.try_recv().is_ok() {}
        if events.send(NetEvent::Connected { generation }).is_err() {
            return;
        }
        let (reason, hint) = pump(&options, ws, generation, &mut outgoing, &events).await;
        let Some(reason) = reason else {
            return;
        };
        let retry_in = hint.unwrap_or_default() + backoff.next_delay(jitter());
        let gone = NetEvent::Disconnected {
            generation,
            reason,
            retry_in,
        };
        if events.send(gone).is_err() {
            return;
        }
        sleep(retry_in).await;
    }
}

fn describe(e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Io(io) => io.to_string(),
        Error::Http(response) => format!("the server answered HTTP {}", response.status()),
        other => other.to_string(),
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Moves frames until the connection ends. Returns why it ended (`None` when the owner
/// is gone) and the server's suggested reconnect delay, if it said goodbye.
///
/// Reading never waits for writing: a send held up by a server that is not reading
/// just now (its inbox is full, or it hangs) must not stop this client from reading,
/// which is also when tungstenite answers the server's pings, nor from noticing, after
/// `idle_timeout` without a frame, that the server is gone.
async fn pump(
    options: &NetOptions,
    ws: Ws,
    generation: u64,
    outgoing: &mut mpsc::UnboundedReceiver<(u64, ClientFrame)>,
    events: &mpsc::UnboundedSender<NetEvent>,
) -> (Option<String>, Option<Duration>) {
    let (mut sink, mut stream) = ws.split();
    let mut hint = None;
    let write = async {
        while let Some((g, frame)) = outgoing.recv().await {
            if g != generation {
                continue;
            }
            let text = serde_json::to_string(&frame).expect("client frames serialize");
            sink.send(WsMessage::text(text))
                .await
                .map_err(|e| describe(&e))?;
        }
        let _ = sink.close().await;
        Ok::<(), String>(())
    };
    let read = async {
        loop {
            let Ok(incoming) = timeout(options.idle_timeout, stream.next()).await else {
                return Some("no sign of life from the server".to_owned());
            };
            match incoming {
                Some(Ok(WsMessage::Text(text))) => {
                    // Frames this client does not understand (a newer server) are skipped.
                    let Ok(frame) = serde_json::from_str::<ServerFrame>(text.as_str()) else {
                        continue;
                    };
                    if let ServerFrame::Goodbye { retry_after_ms, .. } = &frame {
                        hint = Some(Duration::from_millis(*retry_after_ms));
                    }
                    if events.send(NetEvent::Frame { generation, frame }).is_err() {
                        return None;
                    }
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    return Some(match frame {
                        Some(f) if !f.reason.is_empty() => {
                            format!("closed by the server ({}: {})", u16::from(f.code), f.reason)
                        }
                        Some(f) => format!("closed by the server ({})", u16::from(f.code)),
                        None => "closed by the server".to_owned(),
                    });
                }
                // Pings (answered by tungstenite as it reads) and pongs: signs of life.
                Some(Ok(_)) => {}
                Some(Err(e)) => return Some(describe(&e)),
                None => return Some("connection closed".to_owned()),
            }
        }
    };
    let reason = tokio::select! {
        written = write => match written {
            Ok(()) => None, // the owner is gone
            Err(e) => Some(e),
        },
        reason = read => reason,
    };
    (reason, hint)
}
