//! Client-side pacing of sends to the server's flood control.

use std::time::{Duration, Instant};

use crate::protocol::Limits;

// The server's own token bucket, so the client paces by exactly the rule the server
// enforces.
use crate::server::{Rate, TokenBucket};

/// Paces a client's sends to the flood control the server announced in `welcome`
/// ([`Limits::send_burst`] at once, refilled at [`Limits::sends_per_second`]), by the
/// server's own token-bucket rule: a client that sends only when [`Pacer::take`] says so
/// is never refused as `rate_limited`. Sans-IO like the [`Client`](super::Client): the
/// caller passes the time.
///
/// ```
/// use std::time::{Duration, Instant};
/// use chat_core::client::Pacer;
///
/// let mut limits = chat_core::Config::default().limits();
/// (limits.send_burst, limits.sends_per_second) = (2, 4);
/// let t0 = Instant::now();
/// let mut pacer = Pacer::new();
/// assert!(pacer.take(&limits, t0).is_ok());
/// assert!(pacer.take(&limits, t0).is_ok());
/// // The burst is spent: the next token comes a quarter second later.
/// assert_eq!(pacer.take(&limits, t0), Err(Duration::from_millis(250)));
/// assert!(pacer.take(&limits, t0 + Duration::from_millis(250)).is_ok());
/// ```
#[derive(Debug, Clone, Default)]
pub struct Pacer {
    bucket: Option<TokenBucket>,
}

impl Pacer {
    /// A pacer with a full burst (as the server gives a new session).
    #[must_use]
    pub fn new() -> Pacer {
        Pacer::default()
    }

    /// Takes the allowance for one send at `now` under the server's `limits`, or says how
    /// long until there is one (`Duration::MAX` when the server allows no sends).
    pub fn take(&mut self, limits: &Limits, now: Instant) -> Result<(), Duration> {
        let rate = Rate {
            burst: limits.send_burst,
            per_second: limits.sends_per_second,
        };
        self.bucket
            .get_or_insert_with(|| TokenBucket::full(rate, now))
            .take(rate, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{self, ErrorCode, ServerFrame};
    use crate::{Config, Input, Now, Server, SessionId};

    fn frames(server: &mut Server) -> Vec<ServerFrame> {
        let mut out = Vec::new();
        while let Some(output) = server.poll_output() {
            for (_, frame) in output.sends() {
                out.push(frame.decode().expect("server frames decode"));
            }
        }
        out
    }

    /// The pacer and a real server, fed the same sends at the same times: the server
    /// accepts exactly the sends the pacer allows, and refuses exactly the others.
    #[test]
    fn the_pacer_allows_exactly_what_the_server_accepts() {
        let config = Config {
            send_rate: crate::Rate {
                burst: 3,
                per_second: 4,
            },
            // Only the send rate matters here: no flood or strike limit in the way.
            frame_rate: crate::Rate {
                burst: 100_000,
                per_second: 100_000,
            },
            max_strikes: u32::MAX,
            ..Config::default()
        };
        let limits = config.limits();
        let mut server = Server::new(config);
        #[allow(clippy::disallowed_methods)] // a base instant: only differences matter
        let t0 = Instant::now();
        let wall = chrono::DateTime::UNIX_EPOCH;
        let at = |ms: u64| Now::new(t0 + Duration::from_millis(ms), wall);
        let alice = SessionId(1);
        let feed = |server: &mut Server, ms: u64, json: String| {
            server
                .handle_input(
                    at(ms),
                    Input::Received {
                        session: alice,
                        frame: protocol::decode(json.as_bytes()),
                    },
                )
                .expect("valid input");
            frames(server)
        };
        server
            .handle_input(at(0), Input::Connected { session: alice })
            .unwrap();
        feed(
            &mut server,
            0,
            r#"{"type":"hello","version":1,"name":"alice"}"#.into(),
        );
        let mut pacer = Pacer::new();
        let (mut allowed, mut refused) = (0, 0);
        // Every 70 ms for 3 s (not a divisor of the 250 ms refill): sometimes a token is
        // there, sometimes not.
        for (n, ms) in (0..3000).step_by(70).enumerate() {
            let paced = pacer.take(&limits, t0 + Duration::from_millis(ms));
            let reply = feed(
                &mut server,
                ms,
                format!(r#"{{"type":"send","id":{n},"room":"general","body":"m{n}"}}"#),
            );
            let accepted = reply.iter().any(|f| matches!(f, ServerFrame::Ack { .. }));
            let limited = reply.iter().any(|f| {
                matches!(
                    f,
                    ServerFrame::Error {
                        code: ErrorCode::RateLimited,
                        ..
                    }
                )
            });
            assert_eq!(
                (paced.is_ok(), accepted, limited),
                (paced.is_ok(), paced.is_ok(), paced.is_err()),
                "at {ms} ms: pacer {paced:?}, server {reply:?}"
            );
            if paced.is_ok() {
                allowed += 1;
            } else {
                refused += 1;
            }
        }
        // The burst, then four a second.
        assert_eq!(allowed, 3 + 11);
        assert!(refused > 20);
    }
}
