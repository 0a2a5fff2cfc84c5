//! A chat session: the [`chat_core::client::Client`] state machine driven over the
//! reconnecting WebSocket of [`crate::net`]. Every mode of the CLI is built on it.

use std::collections::VecDeque;
use std::time::Duration;

use chat_core::client::{Client, ClientConfig, ClientEvent, ClientOutput};

use crate::net::{Net, NetEvent, NetOptions};
use crate::tokens::TokenCache;

/// What a mode reacts to.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// Connecting (attempt 1, 2, … since the last connection).
    Connecting {
        /// Attempt number.
        attempt: u32,
    },
    /// A connection opened; the `hello` is on its way.
    Connected,
    /// The connection ended or an attempt failed; the next attempt is after `retry_in`.
    Disconnected {
        /// Why.
        reason: String,
        /// When the next attempt starts.
        retry_in: Duration,
    },
    /// No more attempts: the first one failed and the session was told not to retry.
    Failed {
        /// Why.
        error: String,
    },
    /// The state machine's report.
    Client(ClientEvent),
}

/// A client and its connection.
#[derive(Debug)]
pub struct Session {
    client: Client,
    net: Net,
    generation: Option<u64>,
    events: VecDeque<SessionEvent>,
    tokens: Option<(TokenCache, String)>,
}

impl Session {
    /// Starts connecting (in a task on the current tokio runtime).
    #[must_use]
    pub fn start(options: NetOptions, config: ClientConfig) -> Session {
        Session::start_with_tokens(options, config, None)
    }

    /// As [`Session::start`], remembering tokens in (and taking them from) a cache: the
    /// config's token, when it has none, comes from the cache, and every welcome's token
    /// is stored there.
    #[must_use]
    pub fn start_with_tokens(
        options: NetOptions,
        mut config: ClientConfig,
        tokens: Option<TokenCache>,
    ) -> Session {
        let url = options.url.clone();
        if config.token.is_none()
            && let Some(cache) = &tokens
        {
            config.token = cache.get(&url, &config.name);
        }
        Session {
            client: Client::new(config),
            net: Net::start(options),
            generation: None,
            events: VecDeque::new(),
            tokens: tokens.map(|cache| (cache, url)),
        }
    }

    /// The state machine, to read.
    #[must_use]
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs commands on the state machine and sends what they produce.
    pub fn with<R>(&mut self, f: impl FnOnce(&mut Client) -> R) -> R {
        let r = f(&mut self.client);
        self.flush();
        r
    }

    /// Whether a connection is open.
    #[must_use]
    pub fn is_connected(&self) -> bool {
        self.generation.is_some()
    }

    /// The next event; `None` once the connection task has ended for good.
    pub async fn next(&mut self) -> Option<SessionEvent> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Some(event);
            }
            match self.net.next().await? {
                NetEvent::Connecting { attempt } => {
                    return Some(SessionEvent::Connecting { attempt });
                }
                NetEvent::Connected { generation } => {
                    self.generation = Some(generation);
                    self.client.connected();
                    self.flush();
                    self.events.push_front(SessionEvent::Connected);
                }
                NetEvent::Frame { generation, frame } => {
                    if self.generation == Some(generation) {
                        self.client.handle_frame(frame);
                        self.flush();
                    }
                }
                NetEvent::Disconnected {
                    generation,
                    reason,
                    retry_in,
                } => {
                    if self.generation == Some(generation) {
                        self.generation = None;
                        self.client.disconnected();
                    }
                    return Some(SessionEvent::Disconnected { reason, retry_in });
                }
                NetEvent::AttemptFailed { error, retry_in } => {
                    return Some(SessionEvent::Disconnected {
                        reason: error,
                        retry_in,
                    });
                }
                NetEvent::Failed { error } => return Some(SessionEvent::Failed { error }),
            }
        }
    }

    fn flush(&mut self) {
        while let Some(output) = self.client.poll_output() {
            match output {
                ClientOutput::Transmit(frame) => {
                    if let Some(generation) = self.generation {
                        self.net.send(generation, frame);
                    }
                }
                ClientOutput::Event(event) => {
                    if let (ClientEvent::Welcome { user, .. }, Some((cache, url))) =
                        (&event, &self.tokens)
                        && let Some(token) = self.client.token()
                    {
                        cache.put(url, user.as_str(), token);
                    }
                    self.events.push_back(SessionEvent::Client(event));
                }
            }
        }
    }
}
