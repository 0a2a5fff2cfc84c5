//! Delivery: the output queue, and who can be sent what (open sessions, and sessions too
//! congested for ephemeral frames).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use super::outputs::{Event, Output, Recipients};
use crate::ids::{RequestId, SessionId};
use crate::protocol::{Encoded, ErrorCode, ServerFrame};

/// Output slots the drained queue keeps: well above one input's outputs (a message to
/// a full room), far below a backlog's.
const KEEP_OUTPUTS: usize = 4096;

/// The queue of outputs and the open sessions it may address.
#[derive(Debug, Default)]
pub(crate) struct Delivery {
    outputs: VecDeque<Output>,
    /// Every open session, with the time until which it gets no ephemeral frames (its
    /// queue overflowed with one recently).
    open: BTreeMap<SessionId, Option<Instant>>,
    /// The sessions with such a time, current or past (usually none): an ephemeral
    /// fan-out looks here instead of at each recipient.
    congested: BTreeMap<SessionId, Instant>,
    /// The time of the latest input.
    now: Option<Instant>,
}

impl Delivery {
    /// Notes the time of the input being handled.
    pub fn set_now(&mut self, now: Instant) {
        self.now = Some(now);
    }

    /// The instant of the input being handled.
    pub fn now(&self) -> Option<Instant> {
        self.now
    }

    pub fn open(&mut self, sid: SessionId) {
        self.open.insert(sid, None);
    }

    pub fn close(&mut self, sid: SessionId) {
        self.open.remove(&sid);
        self.congested.remove(&sid);
    }

    pub fn is_open(&self, sid: SessionId) -> bool {
        self.open.contains_key(&sid)
    }

    /// No ephemeral frames for this session until `until`.
    pub fn congest(&mut self, sid: SessionId, until: Instant) {
        if let Some(c) = self.open.get_mut(&sid) {
            *c = Some(until);
            self.congested.insert(sid, until);
        }
    }

    /// The sessions that get no ephemeral frames now; forgets the ones whose time is up.
    fn congested_now(&mut self) -> impl Iterator<Item = SessionId> + '_ {
        let now = self.now;
        self.congested.retain(|_, until| Some(*until) > now);
        self.congested.keys().copied()
    }

    #[inline]
    pub fn push(&mut self, output: Output) {
        self.outputs.push_back(output);
    }

    #[inline]
    pub fn pop(&mut self) -> Option<Output> {
        let output = self.outputs.pop_front();
        if output.is_none() && self.outputs.capacity() > KEEP_OUTPUTS {
            // A backlog (a stalled store, a stopped process) is drained: give its
            // memory back instead of keeping the largest burst ever seen.
            self.outputs = VecDeque::new();
        }
        output
    }

    /// Encodes `frame` for one session.
    pub fn send_to(&mut self, to: SessionId, frame: &ServerFrame) {
        self.send_encoded(to, Encoded::new(frame));
    }

    #[inline]
    pub fn send_encoded(&mut self, to: SessionId, frame: Encoded) {
        self.outputs.push_back(Output::Send { to, frame });
    }

    /// The same bytes to each of `recipients` (ascending) but those in `except`, in one
    /// output; ephemeral frames skip congested sessions too.
    #[inline]
    pub fn fan_out(
        &mut self,
        recipients: Arc<Vec<SessionId>>,
        frame: &Encoded,
        mut except: Vec<SessionId>,
    ) {
        if frame.is_ephemeral() {
            except.extend(self.congested_now());
        }
        let to = Recipients::new(recipients, except);
        if to.is_empty() {
            return;
        }
        self.outputs.push_back(Output::Broadcast {
            to,
            frame: frame.clone(),
        });
    }

    pub fn event(&mut self, event: Event) {
        self.outputs.push_back(Output::Event(event));
    }

    /// An error frame for a rejected command and its event, if the session is still
    /// open: nothing is ever sent to a closed session.
    pub fn error(
        &mut self,
        to: SessionId,
        id: Option<RequestId>,
        code: ErrorCode,
        message: String,
    ) {
        if !self.is_open(to) {
            return;
        }
        self.send_to(to, &ServerFrame::Error { id, code, message });
        self.event(Event::Rejected { session: to, code });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drained_backlog_gives_its_memory_back() {
        let mut out = Delivery::default();
        let frame = Encoded::new(&ServerFrame::Goodbye {
            reason: "test".into(),
            retry_after_ms: 0,
        });
        // A burst of single sends (a stalled store releasing its acks, a join storm's
        // replies): 100,000 outputs queued at once.
        for i in 0..100_000 {
            out.send_encoded(SessionId(i % 100), frame.clone());
        }
        assert!(out.outputs.capacity() >= 100_000);
        while out.pop().is_some() {}
        assert!(
            out.outputs.capacity() <= KEEP_OUTPUTS,
            "{}",
            out.outputs.capacity()
        );
        // An ordinary drain keeps its slots.
        for i in 0..100 {
            out.send_encoded(SessionId(i), frame.clone());
        }
        let slots = out.outputs.capacity();
        while out.pop().is_some() {}
        assert_eq!(out.outputs.capacity(), slots);
    }
}
