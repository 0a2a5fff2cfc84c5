//! The doorbell listener: one pub/sub connection per node that re-subscribes after every
//! reconnect and proves, with a probe through its own channel, that its subscriptions
//! still deliver (a connection can stay up while its subscriptions are gone: after a
//! failover, or a proxy that blackholes it). Nothing between Redis and the caller drops
//! silently: when the caller's queue is full, the room is marked behind and the caller
//! is told to read it from the stream once there is room.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use futures::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, interval, timeout};

use crate::{Doorbell, Foreign, Keys, RedisLog};

/// How the listener watches its connection.
#[derive(Debug, Clone)]
pub struct SubscriberOptions {
    /// A probe goes through the node's own channel this often.
    pub probe_interval: Duration,
    /// The subscription is taken for dead when no probe came back for this long: the
    /// connection is dropped and made again, and the caller told to catch up.
    pub probe_timeout: Duration,
    /// Connecting and each subscribe call give up after this long.
    pub connect_timeout: Duration,
    /// Doorbells the caller's queue holds before rooms are marked behind.
    pub queue: usize,
}

impl Default for SubscriberOptions {
    fn default() -> Self {
        SubscriberOptions {
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(2),
            queue: 4096,
        }
    }
}

/// What the listener tells its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bell {
    /// A doorbell of a room the caller subscribed to.
    Room {
        /// The room.
        room: String,
        /// What rang.
        doorbell: Doorbell,
    },
    /// The subscriptions were (re)made: doorbells may have been missed before this, so
    /// the caller reads every room it holds from the stream (after its top) and refreshes
    /// presence. Also the first bell after start.
    Subscribed,
    /// Doorbells of this room were dropped because the caller's queue was full: read it
    /// from the stream after its top.
    Behind {
        /// The room.
        room: String,
    },
    /// A host's or moderator's action another node (or this one) published on the
    /// control channel.
    Control {
        /// The node that published it.
        node: String,
        /// The action.
        control: chat_core::runtime::ClusterControl,
    },
    /// A payload on one of our channels that our scripts never publish: counted and
    /// skipped.
    Foreign {
        /// The room whose channel carried it (the control channel's name for that one).
        room: String,
        /// Why it is not ours.
        why: Foreign,
    },
}

/// Controls a running listener. Dropping it stops the listener.
#[derive(Debug, Clone)]
pub struct Subscriber {
    commands: mpsc::UnboundedSender<Command>,
}

#[derive(Debug)]
enum Command {
    Subscribe(String),
    Unsubscribe(String),
}

impl Subscriber {
    /// Starts the listener for node `node` on the Redis at `url`; it probes through
    /// `probe` (a command connection, normally the node's [`RedisLog`]). Bells arrive on
    /// the returned receiver, the first one [`Bell::Subscribed`] once connected. The
    /// listener retries connecting for as long as the handle lives.
    ///
    /// # Errors
    /// A URL the redis client cannot parse.
    pub fn start(
        url: &str,
        node: &str,
        probe: RedisLog,
        options: SubscriberOptions,
    ) -> Result<(Subscriber, mpsc::Receiver<Bell>), crate::Error> {
        let client = redis::Client::open(url)?;
        let (commands, rx) = mpsc::unbounded_channel();
        let (bells, out) = mpsc::channel(options.queue.max(1));
        let keys = probe.keys().clone();
        let listener = Listener {
            client,
            probe_channel: keys.probe(node),
            control_channel: keys.control(),
            keys,
            probe,
            options,
            rooms: HashMap::new(),
            behind: BTreeSet::new(),
            bells,
            commands: rx,
        };
        tokio::spawn(listener.run());
        Ok((Subscriber { commands }, out))
    }

    /// Listens to `room`'s doorbells (from now on, and after every reconnect).
    pub fn subscribe(&self, room: &str) {
        let _ = self.commands.send(Command::Subscribe(room.to_owned()));
    }

    /// Stops listening to `room`.
    pub fn unsubscribe(&self, room: &str) {
        let _ = self.commands.send(Command::Unsubscribe(room.to_owned()));
    }
}

struct Listener {
    client: redis::Client,
    keys: Keys,
    probe_channel: String,
    /// The cluster's control channel (revocations, moderation), always subscribed.
    control_channel: String,
    probe: RedisLog,
    options: SubscriberOptions,
    /// Channel → room, for every room subscribed to.
    rooms: HashMap<String, String>,
    /// Rooms whose doorbells were dropped on a full queue, to announce as behind.
    behind: BTreeSet<String>,
    bells: mpsc::Sender<Bell>,
    commands: mpsc::UnboundedReceiver<Command>,
}

/// Why a connection's life ended.
enum End {
    /// The handle was dropped, or the caller stopped receiving: stop for good.
    Stop,
    /// Reconnect.
    Reconnect,
}

impl Listener {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.connect().await {
                Some((sink, stream)) => {
                    backoff = Duration::from_millis(50);
                    if let End::Stop = self.serve(sink, stream).await {
                        return;
                    }
                }
                None => {
                    if self.bells.is_closed() {
                        return;
                    }
                    // Take commands meanwhile, so rooms are subscribed on the next try.
                    let deadline = Instant::now() + backoff;
                    while let Ok(Some(c)) =
                        tokio::time::timeout_at(deadline, self.commands.recv()).await
                    {
                        self.note(c);
                    }
                    if self.commands.is_closed() {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    fn note(&mut self, c: Command) {
        match c {
            Command::Subscribe(room) => {
                self.rooms.insert(self.keys.channel(&room), room);
            }
            Command::Unsubscribe(room) => {
                self.rooms.remove(&self.keys.channel(&room));
            }
        }
    }

    /// A new connection with every subscription made, or `None` (try again later).
    async fn connect(&mut self) -> Option<(PubSubSink, PubSubStream)> {
        let limit = self.options.connect_timeout;
        let pubsub = timeout(limit, self.client.get_async_pubsub())
            .await
            .ok()?
            .ok()?;
        let (mut sink, stream) = pubsub.split();
        let mut channels: Vec<String> = self.rooms.keys().cloned().collect();
        channels.push(self.probe_channel.clone());
        channels.push(self.control_channel.clone());
        for chunk in channels.chunks(512) {
            timeout(limit, sink.subscribe(chunk)).await.ok()?.ok()?;
        }
        Some((sink, stream))
    }

    async fn serve(&mut self, mut sink: PubSubSink, mut stream: PubSubStream) -> End {
        // Every reconnect (and the start) may have missed doorbells.
        if self.bells.send(Bell::Subscribed).await.is_err() {
            return End::Stop;
        }
        let mut tick = interval(self.options.probe_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut heard = Instant::now();
        let mut nonce: u64 = 0;
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { return End::Reconnect };
                    let channel = msg.get_channel_name();
                    if channel == self.probe_channel {
                        heard = Instant::now();
                        continue;
                    }
                    if channel == self.control_channel {
                        let bell = match crate::parse_control(msg.get_payload_bytes()) {
                            Ok((node, control)) => Bell::Control { node, control },
                            Err(why) => Bell::Foreign { room: self.control_channel.clone(), why },
                        };
                        // An action is not a doorbell that a stream read can replace:
                        // wait for room in the queue rather than drop it.
                        if self.bells.send(bell).await.is_err() {
                            return End::Stop;
                        }
                        continue;
                    }
                    let Some(room) = self.rooms.get(channel).cloned() else { continue };
                    let bell = match Doorbell::parse(msg.get_payload_bytes()) {
                        Ok(doorbell) => Bell::Room { room, doorbell },
                        Err(why) => Bell::Foreign { room, why },
                    };
                    if !self.offer(bell) {
                        return End::Stop;
                    }
                }
                c = self.commands.recv() => {
                    let Some(c) = c else { return End::Stop };
                    let (room, subscribe) = match &c {
                        Command::Subscribe(r) => (r.clone(), true),
                        Command::Unsubscribe(r) => (r.clone(), false),
                    };
                    self.note(c);
                    let channel = self.keys.channel(&room);
                    let limit = self.options.connect_timeout;
                    let done = if subscribe {
                        timeout(limit, sink.subscribe(&channel)).await
                    } else {
                        timeout(limit, sink.unsubscribe(&channel)).await
                    };
                    if !matches!(done, Ok(Ok(()))) {
                        return End::Reconnect;
                    }
                    if subscribe {
                        // Doorbells before the subscription took effect were not heard.
                        self.behind.insert(room);
                    }
                }
                _ = tick.tick() => {
                    if heard.elapsed() > self.options.probe_timeout {
                        tracing::warn!(
                            silent_ms = heard.elapsed().as_millis() as u64,
                            "redis subscription silent: reconnecting"
                        );
                        return End::Reconnect;
                    }
                    nonce += 1;
                    // A failed probe is not fatal by itself; its absence is.
                    let _ = self.probe.publish_probe(&self.probe_channel, nonce).await;
                }
            }
            if !self.flush_behind() {
                return End::Stop;
            }
        }
    }

    /// Queues a bell; a room bell that does not fit marks its room behind. False when
    /// the caller is gone.
    fn offer(&mut self, bell: Bell) -> bool {
        match self.bells.try_send(bell) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(bell)) => {
                if let Bell::Room { room, .. } | Bell::Foreign { room, .. } = bell {
                    self.behind.insert(room);
                }
                true
            }
        }
    }

    /// Announces behind rooms while the queue has room. False when the caller is gone.
    fn flush_behind(&mut self) -> bool {
        while let Some(room) = self.behind.first().cloned() {
            match self.bells.try_send(Bell::Behind { room: room.clone() }) {
                Ok(()) => {
                    self.behind.remove(&room);
                }
                Err(mpsc::error::TrySendError::Full(_)) => return true,
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
        true
    }
}
