//! `history`: a page of older messages, from the window or from the store.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{Caller, Reject};
use crate::ids::UserKey;
use crate::protocol::{ErrorCode, HistoryRequest, Message, ServerFrame};
use crate::server::authz::forbidden;
use crate::server::outputs::Output;
use crate::server::rooms::Page;
use crate::server::{ApiMisuse, HistoryTicket, State, StoreError};

impl State {
    pub(super) fn history(
        &mut self,
        caller: &mut Caller<'_>,
        user: &UserKey,
        req: HistoryRequest,
    ) -> Result<(), Reject> {
        let HistoryRequest {
            id,
            room,
            before,
            limit,
        } = req;
        let (room_name, kind) = self.room_for(user, &room)?;
        let max = self.config.history_page_max;
        let limit = limit.map_or(self.config.history_page_default, |l| l as usize);
        if limit == 0 || limit > max {
            let msg = format!("limit must be 1..={max}");
            return Err(Reject::new(ErrorCode::InvalidRequest, msg));
        }
        if !kind.reachable(&caller.session.rooms, &room_name) {
            return Err(Reject::not_member(&room_name));
        }
        if !self
            .session_permissions(caller.session, &room_name, &kind, caller.now.mono)
            .read
        {
            return Err(forbidden(format!("you may not read {room_name}")));
        }
        let durable = self.config.durable || self.config.cluster;
        let gone_below = self
            .rooms
            .get(&room_name)
            .and_then(|r| r.gone_below(durable));
        let page = match self.rooms.get(&room_name) {
            Some(room) => room.page(before, limit, durable),
            // A direct room nobody has written to yet.
            None => Page::Memory {
                messages: vec![],
                has_more: false,
            },
        };
        let floor = if kind.has_membership() {
            None
        } else {
            self.users.direct_floor(user)
        };
        match page {
            Page::Memory { messages, has_more } => {
                let (messages, has_more, cut) = above_floor(messages, has_more, floor);
                let first_seq = gap(has_more, cut, gone_below);
                let messages = messages.iter().map(|m| m.seen_by(user)).collect();
                let frame = ServerFrame::History {
                    id,
                    room: room_name,
                    messages,
                    has_more,
                    gap: first_seq.is_some(),
                    first_seq,
                };
                self.out.send_to(caller.sid, &frame);
            }
            Page::Store => {
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                self.history_tickets.insert(
                    ticket,
                    HistoryTicket {
                        session: caller.sid,
                        id,
                        room: room_name.clone(),
                        reader: user.clone(),
                        floor,
                    },
                );
                self.out.push(Output::LoadHistory {
                    ticket,
                    room: room_name,
                    before,
                    limit,
                });
            }
        }
        Ok(())
    }

    /// The store's answer to a history page.
    pub(crate) fn on_history_loaded(
        &mut self,
        ticket: u64,
        result: Result<(Vec<Message>, bool), StoreError>,
    ) -> Result<(), ApiMisuse> {
        let t = self
            .history_tickets
            .remove(&ticket)
            .ok_or(ApiMisuse::UnknownTicket(ticket))?;
        match result {
            Ok((messages, has_more)) => {
                if !self.out.is_open(t.session) {
                    return Ok(());
                }
                let (messages, has_more, cut) = above_floor(messages, has_more, t.floor);
                let durable = self.config.durable || self.config.cluster;
                let gone_below = self.rooms.get(&t.room).and_then(|r| r.gone_below(durable));
                let first_seq = gap(has_more, cut, gone_below);
                let messages = messages
                    .into_iter()
                    .map(|mut m| {
                        if m.user.key() != t.reader {
                            m.client_id = None; // as `Message::seen_by` shows it
                        }
                        Arc::new(m)
                    })
                    .collect();
                let frame = ServerFrame::History {
                    id: t.id,
                    room: t.room,
                    messages,
                    has_more,
                    gap: first_seq.is_some(),
                    first_seq,
                };
                self.out.send_to(t.session, &frame);
            }
            Err(e) => {
                let message = format!("history unavailable ({})", e.detail());
                self.out
                    .error(t.session, t.id, ErrorCode::StorageUnavailable, message);
            }
        }
        Ok(())
    }
}

/// A page without the messages from before `floor` (a direct room's messages from before
/// an anonymous reader took its name): then nothing older is left to page to either.
/// The third value says whether the floor cut the page.
fn above_floor<M: std::borrow::Borrow<Message>>(
    mut messages: Vec<M>,
    has_more: bool,
    floor: Option<DateTime<Utc>>,
) -> (Vec<M>, bool, bool) {
    let Some(floor) = floor else {
        return (messages, has_more, false);
    };
    let before = messages.len();
    messages.retain(|m| m.borrow().ts >= floor);
    let cut = messages.len() < before;
    (messages, has_more && !cut, cut)
}

/// The explicit gap of a page that reached the oldest entry the server keeps: nothing
/// older is left (`has_more` false) and entries below `gone_below` are known to be gone
/// (pruned by retention, or out of the in-memory window without a store). Then the
/// oldest seq kept. Not for a page a direct room's floor cut (those messages are hidden
/// from this reader, not gone), nor for seqs that never held a message (a post the store
/// refused keeps its seq unused).
fn gap(has_more: bool, cut: bool, gone_below: Option<crate::ids::Seq>) -> Option<crate::ids::Seq> {
    if has_more || cut {
        return None;
    }
    gone_below
}
