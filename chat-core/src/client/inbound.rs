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
                count,
                messages,
                gap,
                last_seq,
                ..
            } => self.on_joined(id, room, members, count, messages, gap, last_seq),
            ServerFrame::Left { id, room } => {
                if let Some(id) = id {
                    self.requests.remove(&id);
                }
                self.leaving.remove(&room);
                self.rooms.remove(&room);
                self.event(ClientEvent::Left { id, room });
            }
            // A change has its seq in the room's order, as a message: it moves the cursor
            // and comes out as a `Message` event whose `kind` says what it changes.
            ServerFrame::Message(message) | ServerFrame::Change(message) => {
                self.on_message(message, Delivery::Live);
            }
            // Another session of this user read up to a seq.
            ServerFrame::Read { room, seq } => {
                if let Some(state) = self.rooms.get_mut(&room) {
                    if state.read.is_some_and(|r| r >= seq) {
                        return;
                    }
                    state.read = Some(seq);
                }
                self.event(ClientEvent::Read { room, seq });
            }
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
                ..
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
            ServerFrame::Members {
                id,
                room,
                members,
                count,
                more,
            } => {
                if let Some(id) = id {
                    self.requests.remove(&id);
                }
                if let Some(state) = self.rooms.get_mut(&room).filter(|s| s.member) {
                    if count.is_some() {
                        // A page: added to what the client holds.
                        for user in &members {
                            add_member(&mut state.members, user);
                        }
                        state.count = count;
                        state.partial = count.is_some_and(|c| state.members.len() < c);
                    } else {
                        state.members.clone_from(&members);
                    }
                }
                let more = more.unwrap_or(false);
                self.event(ClientEvent::Members {
                    id,
                    room,
                    members,
                    count,
                    more,
                });
            }
            ServerFrame::Presence {
                room,
                joins,
                leaves,
                members,
                count,
            } => {
                let (joins, leaves) = (joins.unwrap_or_default(), leaves.unwrap_or_default());
                if let Some(state) = self.rooms.get_mut(&room) {
                    state.count = Some(count);
                    if let Some(all) = members {
                        state.members = all;
                        state.partial = false;
                    } else if joins.is_empty() && leaves.is_empty() {
                        // Above the threshold: only the count.
                        state.partial = state.members.len() < count || state.partial;
                    }
                    for user in &joins {
                        add_member(&mut state.members, user);
                    }
                    for user in &leaves {
                        let key = user.key();
                        state.members.retain(|m| m.key() != key);
                        state.typing.retain(|t| t.key() != key);
                    }
                }
                self.event(ClientEvent::Presence {
                    room,
                    joins,
                    leaves,
                    count,
                });
            }
            ServerFrame::UserJoined { room, user, ts } => {
                if let Some(state) = self.rooms.get_mut(&room) {
                    add_member(&mut state.members, &user);
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
            ServerFrame::Moderated {
                room,
                user,
                action,
                reason,
                minutes,
                role,
                by,
            } => self.event(ClientEvent::Moderated {
                room,
                user,
                action,
                reason,
                minutes,
                role,
                by,
            }),
            ServerFrame::Done {
                id,
                room,
                action,
                user,
            } => {
                if let Some(id) = id {
                    self.requests.remove(&id);
                }
                self.event(ClientEvent::Done {
                    id,
                    room,
                    action,
                    user,
                });
            }
            ServerFrame::Topic { room, topic, by } => {
                self.event(ClientEvent::Topic { room, topic, by });
            }
            ServerFrame::SlowMode { room, seconds, by } => {
                self.event(ClientEvent::SlowMode { room, seconds, by });
            }
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

    #[allow(clippy::too_many_arguments)] // the frame's fields
    fn on_joined(
        &mut self,
        id: Option<RequestId>,
        room: RoomName,
        members: Vec<UserName>,
        count: Option<usize>,
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
        state.count = count;
        state.partial = count.is_some_and(|c| members.len() < c);
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
        if message.kind.is_message() {
            state.typing.remove(&message.user);
        }
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
            Some(Command::Send { client_id, .. } | Command::Change { client_id, .. }) => {
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

/// Adds `user` to a member list kept in key order, unless it is there.
fn add_member(members: &mut Vec<UserName>, user: &UserName) {
    let key = user.key();
    if !members.iter().any(|m| m.key() == key) {
        let at = members.partition_point(|m| (m.key(), m.as_str()) < (key.clone(), user.as_str()));
        members.insert(at, user.clone());
    }
}
