//! Reliable host events ([`Hub::event_stream`](super::Hub::event_stream)): every event
//! the engine reports gets an id, one more than the one before, and each stream keeps
//! them in its own bounded buffer until the host reads them.
//!
//! The engine never waits for a host: when a stream's buffer is full (its host stopped
//! reading, or reads slower than chat goes for longer than the buffer lasts), the events
//! that do not fit are counted, not kept, and the host reads
//! [`HostEvent::Lagged`] with their exact ids where they would have been, then the
//! events after them. Nothing is dropped without the host being told, and the number
//! of missed events is in [`Stats::events_missed`](super::Stats::events_missed) and
//! in `/metrics` as `chat_host_events_missed_total`.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::{Notify, watch};

use crate::server::Event;

/// One item of an [`EventStream`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum HostEvent {
    /// An event, with its id: ids start at 1 when the hub starts and go up by one per
    /// event, so consecutive items of a stream have consecutive ids unless a
    /// [`HostEvent::Lagged`] comes between them.
    Event {
        /// The event's id.
        id: u64,
        /// The event.
        event: Event,
    },
    /// The stream's buffer was full: the events with these ids happened here and were
    /// not kept for this stream. Messages among them are still in the room's history
    /// (by seq); sessions, joins and rejections are not kept anywhere.
    Lagged {
        /// The ids of the missed events.
        missed: Range<u64>,
    },
}

/// A stream's buffer, shared by the hub's driver (which pushes) and the host (which reads).
#[derive(Debug)]
pub(super) struct Shared {
    buffer: Mutex<Buffer>,
    notify: Notify,
}

#[derive(Debug)]
struct Buffer {
    /// Items in order; gaps are kept in place as `Lagged` items.
    items: VecDeque<HostEvent>,
    /// How many of `items` are events (gaps do not count against the capacity).
    events: usize,
    capacity: usize,
    /// The gap being counted now: events that did not fit since the buffer filled.
    missing: Option<Range<u64>>,
    /// The last event counted as missed (0: none), so that [`Shared::push`] skips it
    /// even when a reader has taken the gap in between.
    last_missed: u64,
}

impl Shared {
    /// Counts event `id` as missed when the buffer is full; true when it was.
    fn miss(&self, id: u64) -> bool {
        let mut b = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        if b.events < b.capacity {
            return false;
        }
        let start = b.missing.as_ref().map_or(id, |gap| gap.start);
        b.missing = Some(start..id + 1);
        b.last_missed = id;
        true
    }

    /// Buffers `event` for the stream, unless [`Shared::miss`] counted it as missed.
    /// Only the driver adds, so a buffer that had room then still has.
    fn push(&self, id: u64, event: &Event) {
        let mut b = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        if b.last_missed == id {
            return;
        }
        if let Some(missed) = b.missing.take() {
            b.items.push_back(HostEvent::Lagged { missed });
        }
        b.items.push_back(HostEvent::Event {
            id,
            event: event.clone(),
        });
        b.events += 1;
        drop(b);
        self.notify.notify_one();
    }

    fn pop(&self) -> Option<HostEvent> {
        let mut b = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        match b.items.pop_front() {
            Some(item) => {
                if matches!(item, HostEvent::Event { .. }) {
                    b.events -= 1;
                }
                Some(item)
            }
            // Told now, not only when the next event arrives.
            None => b.missing.take().map(|missed| HostEvent::Lagged { missed }),
        }
    }

    fn len(&self) -> usize {
        self.buffer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .events
    }
}

/// The hub's registered streams: the driver pushes every event to each live one.
#[derive(Debug, Default)]
pub(super) struct Registry {
    streams: Mutex<Vec<Weak<Shared>>>,
}

impl Registry {
    fn add(&self, shared: &Arc<Shared>) {
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::downgrade(shared));
    }

    /// Gives event `id` to every live stream (forgetting dropped ones). The streams
    /// whose buffer is full miss it, and `missed` is told how many before any stream
    /// can read the event: a host that has seen it finds the misses counted.
    pub(super) fn publish(&self, id: u64, event: &Event, missed: impl FnOnce(u64)) {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        let mut n = 0;
        streams.retain(|weak| match weak.upgrade() {
            Some(shared) => {
                n += u64::from(shared.miss(id));
                true
            }
            None => false,
        });
        if n > 0 {
            missed(n);
        }
        for shared in streams.iter().filter_map(Weak::upgrade) {
            shared.push(id, event);
        }
    }
}

/// A reliable stream of the hub's events ([`Hub::event_stream`](super::Hub::event_stream)):
/// every event from its creation on, in order, each with its id, until the hub stops.
///
/// Reading an item acknowledges it and frees its place in the buffer. The engine never
/// waits for the stream: when `capacity` events are waiting unread, later ones are
/// counted as missed and the stream yields [`HostEvent::Lagged`] with their ids in
/// their place, then the events after them; nothing is dropped without the host being
/// told. The missed events are counted in
/// [`Stats::events_missed`](super::Stats::events_missed) and in `/metrics` as
/// `chat_host_events_missed_total`. Dropping the stream unsubscribes it.
#[derive(Debug)]
pub struct EventStream {
    shared: Arc<Shared>,
    done: watch::Receiver<bool>,
    stopped: bool,
}

impl EventStream {
    pub(super) fn new(registry: &Registry, capacity: usize, done: watch::Receiver<bool>) -> Self {
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Buffer {
                items: VecDeque::new(),
                events: 0,
                capacity: capacity.max(1),
                missing: None,
                last_missed: 0,
            }),
            notify: Notify::new(),
        });
        registry.add(&shared);
        EventStream {
            shared,
            done,
            stopped: false,
        }
    }

    /// The next item, waiting for one; `None` once the hub has stopped and every
    /// buffered item was read.
    pub async fn next(&mut self) -> Option<HostEvent> {
        loop {
            if let Some(item) = self.shared.pop() {
                return Some(item);
            }
            if self.stopped || *self.done.borrow() {
                // The driver pushes its last event before it says it is done.
                self.stopped = true;
                return self.shared.pop();
            }
            tokio::select! {
                () = self.shared.notify.notified() => {}
                changed = self.done.changed() => {
                    if changed.is_err() {
                        self.stopped = true;
                    }
                }
            }
        }
    }

    /// The next item if one is buffered, without waiting.
    pub fn try_next(&mut self) -> Option<HostEvent> {
        self.shared.pop()
    }

    /// How many events are buffered, unread (for a health check: near the capacity,
    /// the host is about to miss events).
    #[must_use]
    pub fn len(&self) -> usize {
        self.shared.len()
    }

    /// Whether no event is buffered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::RoomName;

    fn room(i: u64) -> Event {
        Event::RoomCreated(RoomName::parse(&format!("r{i}"), 64, 32).expect("room name"))
    }

    /// Publishes event `id`; how many streams missed it.
    fn publish(registry: &Registry, id: u64) -> u64 {
        let mut n = 0;
        registry.publish(id, &room(id), |missed| n = missed);
        n
    }

    /// The misses are told before any stream holds the event: a host that has seen it
    /// (and reads `Stats::events_missed`) finds them counted.
    #[test]
    fn misses_are_counted_before_the_event_can_be_read() {
        let registry = Registry::default();
        let (_tx, done) = watch::channel(false);
        let mut full = EventStream::new(&registry, 1, done.clone());
        let mut reader = EventStream::new(&registry, 10, done);
        assert_eq!(publish(&registry, 1), 0);
        assert!(matches!(
            reader.try_next(),
            Some(HostEvent::Event { id: 1, .. })
        ));
        let mut told = None;
        registry.publish(2, &room(2), |missed| {
            told = Some((missed, reader.try_next().is_none()));
        });
        assert_eq!(
            told,
            Some((1, true)),
            "told of 1 miss while event 2 was unreadable"
        );
        assert!(matches!(
            reader.try_next(),
            Some(HostEvent::Event { id: 2, .. })
        ));
        assert!(matches!(
            full.try_next(),
            Some(HostEvent::Event { id: 1, .. })
        ));
        assert!(matches!(full.try_next(), Some(HostEvent::Lagged { missed }) if missed == (2..3)));
        assert!(full.try_next().is_none());
    }

    /// A reader that empties its full buffer while an event is being given out (between
    /// the count and the pushes) is told of the gap, and not given the event as well.
    #[test]
    fn an_event_counted_as_missed_is_not_delivered_too() {
        let registry = Registry::default();
        let (_tx, done) = watch::channel(false);
        let mut full = EventStream::new(&registry, 1, done);
        publish(&registry, 1);
        let mut taken = Vec::new();
        registry.publish(2, &room(2), |_| {
            taken.extend(std::iter::from_fn(|| full.try_next()));
        });
        taken.extend(std::iter::from_fn(|| full.try_next()));
        let ids: Vec<String> = taken
            .iter()
            .map(|item| match item {
                HostEvent::Event { id, .. } => format!("{id}"),
                HostEvent::Lagged { missed } => format!("{missed:?}"),
            })
            .collect();
        assert_eq!(ids, ["1", "2..3"]);
    }

    /// A full buffer keeps what it has, counts the rest as one gap in place, and a
    /// reader that drains it learns of the gap before any later event.
    #[test]
    fn a_full_buffer_yields_its_events_then_the_gap_then_what_came_after() {
        let registry = Registry::default();
        let (_tx, done) = watch::channel(false);
        let mut stream = EventStream::new(&registry, 2, done);
        let missed: u64 = (1..=5).map(|id| publish(&registry, id)).sum();
        assert_eq!(missed, 3);
        let ids = |s: &mut EventStream| {
            std::iter::from_fn(|| s.try_next())
                .map(|item| match item {
                    HostEvent::Event { id, .. } => format!("{id}"),
                    HostEvent::Lagged { missed } => format!("{missed:?}"),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&mut stream), ["1", "2", "3..6"]);
        for id in 6..=9 {
            publish(&registry, id);
        }
        assert_eq!(ids(&mut stream), ["6", "7", "8..10"]);
        // One read frees one place: the next event is kept, after the gap before it.
        for id in 10..=12 {
            publish(&registry, id);
        }
        assert!(matches!(
            stream.try_next(),
            Some(HostEvent::Event { id: 10, .. })
        ));
        publish(&registry, 13);
        assert_eq!(ids(&mut stream), ["11", "12..13", "13"]);
        drop(stream);
        assert_eq!(publish(&registry, 14), 0, "a dropped stream misses nothing");
        assert!(registry.streams.lock().expect("lock").is_empty());
    }
}
