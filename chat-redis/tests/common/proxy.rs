//! A TCP proxy in front of Redis that injects faults into the connections it carries.
//! Shared by chat-redis' tests and the workspace's process tests (tests/cluster.rs
//! includes this file by `#[path]`).
//!
//! - [`Proxy::blackhole_existing`]: every connection open now goes silent both ways while
//!   its socket stays open (a dead NAT entry, a stuck load balancer).
//! - [`Proxy::blackhole_subscribers`]: the same for the pub/sub connections only (those
//!   that sent `SUBSCRIBE` or `PSUBSCRIBE`), while command connections keep working: a
//!   subscription gone silently dead (centrifugo#1189).
//! - [`Proxy::drop_reply_to`]: the next request carrying a marker is forwarded to Redis,
//!   which runs it; its reply is swallowed and the connection cut (a reply lost after the
//!   server ran the command).
//!
//! Connections made after a blackhole flow normally.

#![allow(dead_code)] // each test binary uses a part

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

/// The fault-injecting proxy; stops accepting when dropped.
pub struct Proxy {
    /// The loopback port it listens on.
    pub port: u16,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct State {
    /// Connections born before this generation are blackholed.
    all: AtomicU64,
    /// Subscriber connections born before this generation are blackholed.
    subscribers: AtomicU64,
    /// Connections that were seen to subscribe, ever.
    subscriber_connections: AtomicU64,
    /// The armed marker of [`Proxy::drop_reply_to`] (one shot).
    drop_on: Mutex<Option<Vec<u8>>>,
    /// Replies swallowed (each followed by a cut connection).
    replies_dropped: AtomicU64,
}

/// One carried connection's view of the faults.
struct Link {
    state: Arc<State>,
    born_all: u64,
    born_subscribers: u64,
    subscriber: AtomicBool,
    /// The reply to the marked request is to be swallowed.
    mute: AtomicBool,
    /// The cut after a swallowed reply is scheduled.
    cutting: AtomicBool,
    cut: watch::Sender<bool>,
}

impl Link {
    fn blackholed(&self) -> bool {
        self.state.all.load(Ordering::SeqCst) > self.born_all
            || (self.subscriber.load(Ordering::SeqCst)
                && self.state.subscribers.load(Ordering::SeqCst) > self.born_subscribers)
    }

    /// Client → Redis: classifies the connection and arms the reply drop.
    fn upstream(&self, chunk: &[u8]) {
        if !self.subscriber.load(Ordering::SeqCst)
            && (contains(chunk, b"\r\nSUBSCRIBE\r\n") || contains(chunk, b"\r\nPSUBSCRIBE\r\n"))
        {
            self.subscriber.store(true, Ordering::SeqCst);
            self.state
                .subscriber_connections
                .fetch_add(1, Ordering::SeqCst);
        }
        let mut armed = self.state.drop_on.lock().expect("not poisoned");
        if armed.as_deref().is_some_and(|m| contains(chunk, m)) {
            *armed = None;
            self.mute.store(true, Ordering::SeqCst);
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

type Reader = Box<dyn AsyncRead + Unpin + Send>;
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// Copies one direction until either side ends or the link is cut.
async fn pump(link: Arc<Link>, mut from: Reader, mut to: Writer, upstream: bool) {
    let mut cut = link.cut.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = cut.changed() => break,
        };
        if upstream {
            link.upstream(&buf[..n]);
        } else if link.mute.load(Ordering::SeqCst) {
            // Redis is answering the marked request: what it sends is lost, and a moment
            // later (the marked request has run by then, on loopback) the connection is
            // cut.
            if !link.cutting.swap(true, Ordering::SeqCst) {
                link.state.replies_dropped.fetch_add(1, Ordering::SeqCst);
                let link = link.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    let _ = link.cut.send(true);
                });
            }
            continue;
        }
        if link.blackholed() {
            continue; // swallow, keep the socket open
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    // One direction ended: end the other too, so both sockets close.
    let _ = link.cut.send(true);
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target` on loopback.
    pub async fn start(target: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let link = Arc::new(Link {
                    state: shared.clone(),
                    born_all: shared.all.load(Ordering::SeqCst),
                    born_subscribers: shared.subscribers.load(Ordering::SeqCst),
                    subscriber: AtomicBool::new(false),
                    mute: AtomicBool::new(false),
                    cutting: AtomicBool::new(false),
                    cut: watch::channel(false).0,
                });
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(link.clone(), Box::new(cr), Box::new(sw), true));
                tokio::spawn(pump(link, Box::new(sr), Box::new(cw), false));
            }
        });
        Proxy { port, state, task }
    }

    /// `redis://` URL of the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Blackholes every connection open now.
    pub fn blackhole_existing(&self) {
        self.state.all.fetch_add(1, Ordering::SeqCst);
    }

    /// Blackholes the pub/sub connections open now; command connections keep flowing.
    pub fn blackhole_subscribers(&self) {
        self.state.subscribers.fetch_add(1, Ordering::SeqCst);
    }

    /// How many connections subscribed so far (a re-subscription opens a new one).
    pub fn subscriber_connections(&self) -> u64 {
        self.state.subscriber_connections.load(Ordering::SeqCst)
    }

    /// The next request whose bytes contain `marker` reaches Redis; Redis' reply to it
    /// is swallowed and its connection cut.
    pub fn drop_reply_to(&self, marker: &[u8]) {
        *self.state.drop_on.lock().expect("not poisoned") = Some(marker.to_vec());
    }

    /// Replies swallowed by [`Proxy::drop_reply_to`] so far.
    pub fn replies_dropped(&self) -> u64 {
        self.state.replies_dropped.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
