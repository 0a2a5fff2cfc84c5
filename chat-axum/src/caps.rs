//! Connection caps, checked before a WebSocket upgrade: all connections together, and
//! per client address (at once and per second). A refused request gets an HTTP error
//! with `Retry-After`, and no socket is upgraded.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

/// Limits on WebSocket connections, checked before the upgrade.
///
/// Per-address limits count the client's address: the TCP peer, or, when the peer is one
/// of [`ConnectionLimits::trusted_proxies`], the address that proxy put in
/// `X-Forwarded-For`. IPv6 clients are counted per /64 (one host usually holds a whole
/// /64). Loopback clients are exempt from the per-address limits unless
/// [`ConnectionLimits::limit_loopback`] is set: they are local tools, or a reverse proxy
/// on the same host whose clients all look alike until it is trusted.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionLimits {
    /// WebSocket connections open at once, all clients together; past it an upgrade is
    /// refused with `503 Service Unavailable`. Default 10,000. `0`: no limit.
    pub max_connections: usize,
    /// WebSocket connections open at once from one client address; past it `429 Too
    /// Many Requests`. Default 100 (an office or a carrier-grade NAT shares one address).
    /// `0`: no limit.
    pub max_connections_per_ip: usize,
    /// New WebSocket connections one client address may open in a burst; past it (and
    /// until the bucket refills at [`ConnectionLimits::connects_per_second_per_ip`]) `429`.
    /// Default 50. `0`: no limit.
    pub connect_burst_per_ip: u32,
    /// The sustained rate of new connections per client address. Default 10 per second.
    pub connects_per_second_per_ip: u32,
    /// Peers whose `X-Forwarded-For` is believed (your reverse proxies). Default none: the
    /// header is ignored, since any client can send it.
    pub trusted_proxies: Vec<IpAddr>,
    /// Apply the per-address limits to loopback clients too. Default false.
    pub limit_loopback: bool,
    /// The `Retry-After` of a refusal for too many open connections. Default 5 s.
    pub retry_after: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 10_000,
            max_connections_per_ip: 100,
            connect_burst_per_ip: 50,
            connects_per_second_per_ip: 10,
            trusted_proxies: Vec::new(),
            limit_loopback: false,
            retry_after: Duration::from_secs(5),
        }
    }
}

/// Why an upgrade was refused by a cap (the `reason` label of `chat_refusals_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Total,
    PerIp,
    Rate,
}

impl Refusal {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::Total => "total_cap",
            Refusal::PerIp => "ip_cap",
            Refusal::Rate => "ip_rate",
        }
    }
}

/// A refused upgrade: the status, the reason, and when to try again.
#[derive(Debug)]
pub(crate) struct Refused {
    pub why: Refusal,
    retry_after: Duration,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let (status, text) = match self.why {
            Refusal::Total => (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many connections to this server\n",
            ),
            Refusal::PerIp => (
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections from your address\n",
            ),
            Refusal::Rate => (
                StatusCode::TOO_MANY_REQUESTS,
                "connecting too often from your address\n",
            ),
        };
        let secs = self.retry_after.as_secs_f64().ceil().max(1.0) as u64;
        let mut response = (status, text).into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        response
    }
}

/// The live counts behind the caps, shared by every request of a router.
#[derive(Debug)]
pub(crate) struct Caps {
    limits: ConnectionLimits,
    total: AtomicUsize,
    /// Bytes the open connections' own read and write buffers hold (their capacity).
    buffered: AtomicUsize,
    per_ip: Mutex<PerIp>,
}

#[derive(Debug, Default)]
struct PerIp {
    clients: HashMap<IpAddr, Client>,
    /// Insertions since the last sweep of idle entries.
    inserted: usize,
}

#[derive(Debug)]
struct Client {
    live: usize,
    tokens: f64,
    at: Instant,
}

/// One admitted connection; dropping it gives its place back.
#[derive(Debug)]
pub(crate) struct Admitted {
    caps: Arc<Caps>,
    ip: Option<IpAddr>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.caps.total.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.ip {
            let mut per_ip = self.caps.per_ip.lock().expect("not poisoned");
            if let Some(client) = per_ip.clients.get_mut(&ip) {
                client.live = client.live.saturating_sub(1);
            }
        }
    }
}

impl Caps {
    pub(crate) fn new(limits: ConnectionLimits) -> Arc<Caps> {
        Arc::new(Caps {
            limits,
            total: AtomicUsize::new(0),
            buffered: AtomicUsize::new(0),
            per_ip: Mutex::new(PerIp::default()),
        })
    }

    /// Bytes held by the open connections' own read and write buffers, all together.
    pub(crate) fn buffered(&self) -> usize {
        self.buffered.load(Ordering::Relaxed)
    }

    /// A connection's buffers went from `was` to `now` bytes.
    pub(crate) fn rebuffer(&self, was: usize, now: usize) {
        if now > was {
            self.buffered.fetch_add(now - was, Ordering::Relaxed);
        } else if was > now {
            self.buffered.fetch_sub(was - now, Ordering::Relaxed);
        }
    }

    /// WebSocket connections admitted and still open.
    pub(crate) fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// The client address to count: the peer, or what a trusted proxy says it is.
    pub(crate) fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let trusted = |ip: &IpAddr| self.limits.trusted_proxies.contains(ip);
        if !trusted(&peer) {
            return peer;
        }
        // Right to left: each proxy appends the address it heard from, so the first
        // address no trusted proxy wrote is the client's. Anything unparsable stops the
        // walk at the last address a trusted proxy vouched for.
        let mut client = peer;
        let values: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        for entry in values.iter().rev().flat_map(|v| v.rsplit(',')) {
            let Some(ip) = parse_forwarded(entry.trim()) else {
                break;
            };
            client = ip;
            if !trusted(&ip) {
                break;
            }
        }
        client
    }

    /// Admits one more connection from `ip` (`None`: address unknown, only the total
    /// counts), or says why not.
    pub(crate) fn admit(self: &Arc<Caps>, ip: Option<IpAddr>) -> Result<Admitted, Refused> {
        let limits = &self.limits;
        let total = self.total.fetch_add(1, Ordering::Relaxed);
        // Counted from here on: the guard gives it back on every refusal below too.
        let mut admitted = Admitted {
            caps: Arc::clone(self),
            ip: None,
        };
        if limits.max_connections > 0 && total >= limits.max_connections {
            return Err(Refused {
                why: Refusal::Total,
                retry_after: limits.retry_after,
            });
        }
        let Some(ip) = ip.map(bucket_key) else {
            return Ok(admitted);
        };
        if ip.is_loopback() && !limits.limit_loopback {
            return Ok(admitted);
        }
        let now = Instant::now();
        let mut per_ip = self.per_ip.lock().expect("not poisoned");
        let burst = f64::from(limits.connect_burst_per_ip);
        let rate = f64::from(limits.connects_per_second_per_ip.max(1));
        if !per_ip.clients.contains_key(&ip) {
            per_ip.sweep(now, burst, rate);
        }
        let client = per_ip.clients.entry(ip).or_insert(Client {
            live: 0,
            tokens: burst,
            at: now,
        });
        if limits.max_connections_per_ip > 0 && client.live >= limits.max_connections_per_ip {
            return Err(Refused {
                why: Refusal::PerIp,
                retry_after: limits.retry_after,
            });
        }
        if limits.connect_burst_per_ip > 0 {
            let elapsed = now.saturating_duration_since(client.at).as_secs_f64();
            client.tokens = (client.tokens + elapsed * rate).min(burst);
            client.at = now;
            if client.tokens < 1.0 {
                let wait = (1.0 - client.tokens) / rate;
                return Err(Refused {
                    why: Refusal::Rate,
                    retry_after: Duration::from_secs_f64(wait),
                });
            }
            client.tokens -= 1.0;
        }
        client.live += 1;
        admitted.ip = Some(ip);
        Ok(admitted)
    }
}

impl PerIp {
    /// Forgets, every so many new addresses, those with nothing open and a full bucket:
    /// the map holds the addresses with open connections and the recently active ones.
    fn sweep(&mut self, now: Instant, burst: f64, rate: f64) {
        self.inserted += 1;
        if self.inserted < 1024.max(self.clients.len() / 2) {
            return;
        }
        self.inserted = 0;
        self.clients.retain(|_, c| {
            let refilled = c.tokens + now.saturating_duration_since(c.at).as_secs_f64() * rate;
            c.live > 0 || refilled < burst
        });
    }
}

/// IPv6 clients are counted per /64, and IPv4-mapped ones as IPv4.
fn bucket_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// One `X-Forwarded-For` entry: an address, with or without a port (`[v6]:port` too).
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            max_connections: 4,
            max_connections_per_ip: 2,
            connect_burst_per_ip: 3,
            connects_per_second_per_ip: 1,
            limit_loopback: true,
            ..ConnectionLimits::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn caps_count_open_connections_and_refill_per_second() {
        let caps = Caps::new(limits());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = caps.admit(Some(a)).unwrap();
        let a2 = caps.admit(Some(a)).unwrap();
        assert_eq!(caps.admit(Some(a)).unwrap_err().why, Refusal::PerIp);
        drop(a1);
        let _a3 = caps.admit(Some(a)).unwrap(); // the third of a burst of three
        drop(a2);
        assert_eq!(caps.admit(Some(a)).unwrap_err().why, Refusal::Rate);
        tokio::time::advance(Duration::from_secs(1)).await;
        let _a4 = caps.admit(Some(a)).unwrap();
        let _b1 = caps.admit(Some(b)).unwrap();
        let _c = caps.admit(None).unwrap();
        assert_eq!(caps.open(), 4);
        assert_eq!(caps.admit(None).unwrap_err().why, Refusal::Total);
        assert_eq!(caps.open(), 4, "a refusal holds no place");
    }

    #[test]
    fn forwarded_for_is_believed_from_trusted_proxies_only() {
        let caps = Caps::new(ConnectionLimits {
            trusted_proxies: vec!["10.0.0.9".parse().unwrap(), "10.0.0.8".parse().unwrap()],
            ..ConnectionLimits::default()
        });
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "6.6.6.6, 1.2.3.4".parse().unwrap());
        h.append("x-forwarded-for", "10.0.0.8".parse().unwrap());
        let untrusted: IpAddr = "5.5.5.5".parse().unwrap();
        assert_eq!(caps.client_ip(untrusted, &h), untrusted);
        let proxy: IpAddr = "10.0.0.9".parse().unwrap();
        // 6.6.6.6 is what the client claimed; 1.2.3.4 is what the first proxy saw.
        assert_eq!(
            caps.client_ip(proxy, &h),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "[2001:db8::1]:443".parse().unwrap());
        assert_eq!(
            caps.client_ip(proxy, &h),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        h.insert("x-forwarded-for", "junk".parse().unwrap());
        assert_eq!(caps.client_ip(proxy, &h), proxy);
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let a = bucket_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = bucket_key("2001:db8:1:2:bbbb::2".parse().unwrap());
        assert_eq!(a, b);
        assert_eq!(
            bucket_key("::ffff:1.2.3.4".parse().unwrap()),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
    }
}
