//! The dispatcher: one `match` hands each client frame to its command, and one place
//! turns a command's [`Reject`] into the error frame, the strikes and the close.
//!
//! Each command lives in its own module, as a method of the server's state that takes
//! the calling session and returns `Result<(), Reject>`.

mod change;
mod delete;
mod edit;
mod hello;
mod history;
mod join;
mod leave;
mod listing;
mod react;
mod read;
mod send;
mod typing;

use super::cluster::Parked;
use super::delivery::Delivery;
use super::kind::RoomKind;
use super::outputs::CloseReason;
use super::reject::Reject;
use super::sessions::{Phase, Session};
use super::{Now, Server, State};
use crate::ids::{NameError, RequestId, RoomName, SessionId, UserKey};
use crate::protocol::{ClientFrame, DecodeError, ErrorCode};

/// The session a command came from, held for the length of the command.
pub(super) struct Caller<'a> {
    pub now: Now,
    pub sid: SessionId,
    pub session: &'a mut Session,
    /// The frame waits for its room to be loaded: its outcome comes when it runs again.
    pub parked: bool,
}

impl Caller<'_> {
    /// Applies a command's outcome to the session: an accepted command (`counts`) pays
    /// back a strike; a refused one gets its error frame and costs its strikes. Returns
    /// the reason to close the session, if the refusal asks for it or the strikes ran out.
    pub fn settle(
        &mut self,
        out: &mut Delivery,
        max_strikes: u32,
        id: Option<RequestId>,
        counts: bool,
        result: Result<(), Reject>,
    ) -> Option<CloseReason> {
        let close = match result {
            Ok(()) => {
                if counts {
                    self.session.accepted();
                }
                None
            }
            Err(reject) => {
                out.error(self.sid, id, reject.code, reject.message);
                self.session.strikes += reject.strikes;
                reject.close
            }
        };
        close.or((self.session.strikes >= max_strikes).then_some(CloseReason::Flood))
    }
}

impl Server {
    /// A frame from a client: flood control, then its command, then its outcome.
    pub(super) fn on_received(
        &mut self,
        now: Now,
        sid: SessionId,
        frame: Result<ClientFrame, DecodeError>,
    ) {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        if session
            .frames
            .take(self.st.config.frame_rate, now.mono)
            .is_err()
        {
            self.drop_session(now, sid, Some(CloseReason::Flood));
            return;
        }
        match frame {
            Ok(frame) => self.run_frame(now, sid, frame),
            // The decoder's message may quote the offending input (an unknown field
            // name, a string value): never echo a whole hostile frame back.
            Err(e) => {
                let result = Err(Reject::bad_frame(clip(e.message, 200)));
                self.settle(now, sid, e.id, false, result);
            }
        }
    }

    /// Runs a decoded frame's command (now, or again once its room is loaded) and
    /// applies its outcome.
    pub(super) fn run_frame(&mut self, now: Now, sid: SessionId, frame: ClientFrame) {
        if super::moderation::is_moderation(&frame) {
            let id = frame.request_id();
            let result = self.moderation_frame(now, sid, frame);
            self.settle(now, sid, id, true, result);
            return;
        }
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let st = &mut self.st;
        let mut caller = Caller {
            now,
            sid,
            session,
            parked: false,
        };
        // Hello is answered by its joins; typing is never answered.
        let counts = !matches!(frame, ClientFrame::Hello(_) | ClientFrame::Typing { .. });
        let id = frame.request_id();
        let result = st.dispatch(&mut caller, frame);
        // A parked frame is paid back (or charged) when it runs again.
        let counts = counts && !caller.parked;
        let close = caller.settle(&mut st.out, st.config.max_strikes, id, counts, result);
        if let Some(reason) = close {
            self.drop_session(now, sid, Some(reason));
        }
    }

    /// Applies a refusal that no command produced (a frame that did not decode).
    fn settle(
        &mut self,
        now: Now,
        sid: SessionId,
        id: Option<RequestId>,
        counts: bool,
        result: Result<(), Reject>,
    ) {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let st = &mut self.st;
        let mut caller = Caller {
            now,
            sid,
            session,
            parked: false,
        };
        let close = caller.settle(&mut st.out, st.config.max_strikes, id, counts, result);
        if let Some(reason) = close {
            self.drop_session(now, sid, Some(reason));
        }
    }
}

impl State {
    /// Hands a frame to its command.
    fn dispatch(&mut self, caller: &mut Caller<'_>, frame: ClientFrame) -> Result<(), Reject> {
        let user = match &caller.session.phase {
            Phase::Ready(user) => Some(user.clone()),
            Phase::New | Phase::Authenticating { .. } | Phase::Claiming { .. } => None,
        };
        let new = matches!(caller.session.phase, Phase::New);
        match (frame, user) {
            (frame, Some(user)) => self.command(caller, &user, frame),
            (ClientFrame::Hello(req), None) if new => self.hello(caller, req),
            (ClientFrame::Hello(_), None) => Err(already_welcomed()),
            (_, None) => Err(Reject::new(ErrorCode::HelloRequired, "say hello first")),
        }
    }

    /// A command of a welcomed session.
    fn command(
        &mut self,
        caller: &mut Caller<'_>,
        user: &UserKey,
        frame: ClientFrame,
    ) -> Result<(), Reject> {
        if let Some(room) = self.unloaded_room(user, &frame) {
            // Runs again, with its outcome, once the log has given the room.
            self.park(room, Parked::Frame(caller.sid, frame));
            caller.parked = true;
            return Ok(());
        }
        match frame {
            ClientFrame::Join(req) => self.join(caller, user, req),
            ClientFrame::Leave { id, room } => self.leave(caller, user, id, &room),
            ClientFrame::Send(req) => self.send(caller, user, req),
            ClientFrame::Edit(req) => self.edit(caller, user, req),
            ClientFrame::Delete(req) => self.delete(caller, user, req),
            ClientFrame::React(req) => self.react(caller, user, req),
            ClientFrame::Read { room, seq, .. } => self.read(caller, user, &room, seq),
            ClientFrame::History(req) => self.history(caller, user, req),
            ClientFrame::Rooms { id } => self.list_rooms(caller, user, id),
            ClientFrame::Members {
                id,
                room,
                after,
                limit,
            } => self.list_members(caller, user, id, &room, after.as_deref(), limit),
            ClientFrame::Typing { room, active } => self.typing(caller, user, &room, active),
            ClientFrame::Hello(_) => Err(already_welcomed()),
            // Handled by `Server::moderation_frame` before the dispatcher.
            _ => Err(Reject::new(ErrorCode::InvalidRequest, "not a command here")),
        }
    }

    /// Parses a room name from a command, with its kind, checking that the user may use
    /// it (a direct room must be the user's own).
    pub(in crate::server) fn room_for(
        &self,
        user: &UserKey,
        raw: &str,
    ) -> Result<(RoomName, RoomKind), Reject> {
        let c = &self.config;
        let room = RoomName::parse(raw, c.max_room_chars, c.max_name_chars)
            .map_err(|e| Reject::new(ErrorCode::InvalidRoom, format!("room name {e}")))?;
        let kind = RoomKind::of(&room);
        if !kind.admits(user) {
            return Err(Reject::new(
                ErrorCode::InvalidRoom,
                NameError::BadDirect.to_string(),
            ));
        }
        Ok((room, kind))
    }
}

fn already_welcomed() -> Reject {
    Reject::new(ErrorCode::AlreadyWelcomed, "hello was already accepted")
}

/// The refusal for a room that could not be opened (see `State::open_room`).
fn room_unavailable(code: ErrorCode, room: &RoomName) -> Reject {
    match code {
        ErrorCode::LimitReached => Reject::new(code, "the server has as many rooms as it allows"),
        _ => Reject::new(code, format!("no room {room}")),
    }
}

/// At most `max` characters of `s`, with an ellipsis when cut.
fn clip(mut s: String, max: usize) -> String {
    if let Some((cut, _)) = s.char_indices().nth(max) {
        s.truncate(cut);
        s.push('…');
    }
    s
}
