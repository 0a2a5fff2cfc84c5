//! Frames from the server: each updates the rooms, cursors and pending sends, and becomes
//! events for the driver. Messages come out once, in seq order, across reconnects.

use std::sync::Arc;
use std::time::Duration;

use crate::ids::{RequestId, RoomName, Seq, UserName};
use crate::protocol::{ErrorCode, Message, ServerFrame};

use super::{Client, ClientEvent, Command, Delivery};

impl Client {
    /// A frame from the server.
    pub fn handle_frame(&mut self, frame: ServerFrame) {
        match frame {
            ServerFrame::Welcome {
                id: _,
                version: _,
                session: _,
                user,
                token,
                epoch,
                limits,
            } => self.on_welcome(user, token, epoch, limits),
            ServerFrame::Joined {
                id,
                room,
                members,
                messages,
                gap,
                last_seq,
                ..
            } => self.on_joined(id, room, members, messages, gap, last_seq),
            ServerFrame::Left { id, room } => {
                if let Some(id) = id {
                    self.requests.remove(&id);
                }
                self.leaving.remove(&room);
                self.rooms.remove(&room);
                self.event(ClientEvent::Left { id, room });
            }
            ServerFrame::Message(message) => self.on_message(message, Delivery::Live),
            ServerFrame::Ack {
                id,
                room,
                seq,
                ts: _,
                client_id,
                duplicate,
            } => {
                if let Some(id) = id {
                    self.requests.remove(&id);
                }
                let key = self
                    .pending
                    .iter()
                    .find(|(_, p)| {
                        client_id.as_ref().is_some_and(|c| *c == p.client_id)
                            || (id.is_some() && p.request == id)
                    })
                    .map(|(k, _)| *k);
                if let Some(key) = key {
                    self.pending.remove(&key);
                }
                self.event(ClientEvent::Acked {
                    id,
                    room,
                    seq,
                    client_id,
                    duplicate,
                });
            }
            ServerFrame::History {
                id,
                room,
                messages,
                has_more,
            } => {
                if let Some(id) = id {
                    self.requests.remove(&id);
                }
                self.event(ClientEvent::History {
                    id,
                    room,
                    messages,
                    has_more,
                });
            }
            ServerFrame::Rooms { id, rooms } => {
                if let Some(id) = id {
                    self.requests.remove(&id);
                }
                self.event(ClientEvent::Rooms { id, rooms });
            }
            ServerFrame::Members { id, room, members } => {
                if let Some(id) = id {
                    self.requests.remove(&id);
                }
                if let Some(state) = self.rooms.get_mut(&room).filter(|s| s.member) {
                    state.members.clone_from(&members);
                }
                self.event(ClientEvent::Members { id, room, members });
            }
            ServerFrame::UserJoined { room, user, ts } => {
                if let Some(state) = self.rooms.get_mut(&room) {
                    let key = user.key();
                    if !state.members.iter().any(|m| m.key() == key) {
                        let at = state.members.partition_point(|m| {
                            (m.key(), m.as_str()) < (key.clone(), user.as_str())
                        });
                        state.members.insert(at, user.clone());
                    }
                }
                self.event(ClientEvent::UserJoined { room, user, ts });
            }
            ServerFrame::UserLeft { room, user, ts } => {
                if let Some(state) = self.rooms.get_mut(&room) {
                    let key = user.key();
                    state.members.retain(|m| m.key() != key);
                    state.typing.retain(|t| t.key() != key);
                }
                self.event(ClientEvent::UserLeft { room, user, ts });
            }
            ServerFrame::Typing { room, user, active } => {
                if let Some(state) = self.rooms.get_mut(&room) {
                    if active {
                        state.typing.insert(user.clone());
                    } else {
                        state.typing.remove(&user);
                    }
                }
                self.event(ClientEvent::Typing { room, user, active });
            }
            // A kick or ban of ours is followed by `left`, which updates the rooms.
            // Moderation notices and acks: shown by the apps that read frames.
            ServerFrame::Moderated { .. }
            | ServerFrame::Done { .. }
            | ServerFrame::Topic { .. }
            | ServerFrame::SlowMode { .. } => {}
            ServerFrame::Error { id, code, message } => self.on_error(id, code, message),
            ServerFrame::Goodbye {
                reason,
                retry_after_ms,
            } => self.event(ClientEvent::Goodbye {
                reason,
                retry_after: Duration::from_millis(retry_after_ms),
            }),
        }
    }

    fn on_joined(
        &mut self,
        id: Option<RequestId>,
        room: RoomName,
        members: Vec<UserName>,
        messages: Vec<Arc<Message>>,
        gap: bool,
        last_seq: Seq,
    ) {
        if let Some(id) = id {
            self.requests.remove(&id);
            self.joining.remove(&id);
        }
        self.leaving.remove(&room);
        let direct = room.direct_users().is_some();
        let state = self.rooms.entry(room.clone()).or_default();
        state.member = !direct;
        state.members = members.clone();
        let delivery = if state.cursor.is_some() {
            Delivery::CatchUp
        } else {
            Delivery::Backlog
        };
        self.event(ClientEvent::Joined {
            id,
            room: room.clone(),
            members,
            gap,
            last_seq,
        });
        for message in messages {
            self.on_message(message, delivery);
        }
        // Everything up to the room's latest seq has now been delivered or deliberately
        // skipped (the history before a first join).
        let state = self.rooms.get_mut(&room).expect("inserted above");
        state.cursor = Some(state.cursor.map_or(last_seq, |c| c.max(last_seq)));
    }

    fn on_message(&mut self, message: Arc<Message>, delivery: Delivery) {
        if self.leaving.contains(&message.room) {
            return;
        }
        let state = self.rooms.entry(message.room.clone()).or_default();
        if state.cursor.is_some_and(|c| message.seq <= c) {
            return;
        }
        state.cursor = Some(message.seq);
        // A message ends its author's typing indicator (the server sends no stop).
        state.typing.remove(&message.user);
        let own = self
            .user
            .as_ref()
            .is_some_and(|me| me.key() == message.user.key());
        self.event(ClientEvent::Message {
            message,
            delivery,
            own,
        });
    }

    fn on_error(&mut self, id: Option<RequestId>, code: ErrorCode, message: String) {
        let mut command = id.and_then(|id| self.requests.remove(&id));
        if id.is_some() && id == self.hello_id {
            command = Some(Command::Hello);
        }
        match &command {
            Some(Command::Send { client_id, .. }) => {
                if code == ErrorCode::ShuttingDown {
                    // Not posted; the server is restarting. Sent again after reconnecting.
                    return;
                }
                self.pending.retain(|_, p| p.client_id != *client_id);
            }
            Some(Command::Join { .. }) => {
                if let Some(id) = id {
                    self.joining.remove(&id);
                }
            }
            _ => {}
        }
        self.event(ClientEvent::Rejected {
            id,
            command,
            code,
            message,
        });
    }
}
