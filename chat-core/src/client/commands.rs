//! What the user asks for: each command gets a request id and goes out now when welcomed,
//! or waits for the welcome (sends also wait for their ack, and are sent again after a
//! reconnect until then).

use crate::ids::{ClientMsgId, RequestId, RoomName, Seq};
use crate::protocol::ClientFrame;
use crate::protocol::{HistoryRequest, JoinRequest, SendRequest};

use super::{
    Client, ClientEvent, ClientOutput, Command, MessageChange, Moderation, PendingSend, Phase,
    Post, Target,
};

impl Client {
    /// Joins a room (created on first join), resuming from its cursor when this client
    /// has one. Returns the request id echoed in [`ClientEvent::Joined`].
    pub fn join(&mut self, room: &str) -> RequestId {
        let id = self.request_id();
        self.joining.insert(id, room.to_owned());
        self.requests.insert(
            id,
            Command::Join {
                room: room.to_owned(),
            },
        );
        let since = self.cursor_of(room);
        if self.phase == Phase::Ready {
            self.transmit(ClientFrame::Join(JoinRequest {
                id: Some(id),
                room: room.to_owned(),
                since,
            }));
        }
        id
    }

    /// Leaves a room. It is no longer resumed, and its late messages are dropped.
    pub fn leave(&mut self, room: &str) -> RequestId {
        let id = self.request_id();
        self.requests.insert(
            id,
            Command::Leave {
                room: room.to_owned(),
            },
        );
        let key = RoomName::key_of(room);
        self.joining
            .retain(|_, r| r != room && (key.is_none() || RoomName::key_of(r) != key));
        if let Some(name) = self.known_room(room) {
            self.rooms.remove(&name);
            self.leaving.insert(name);
        }
        if self.phase == Phase::Ready {
            self.transmit(ClientFrame::Leave {
                id: Some(id),
                room: room.to_owned(),
            });
        }
        id
    }

    /// Posts to a room. Returns the send's client id (echoed in [`ClientEvent::Acked`]).
    pub fn send_to_room(&mut self, room: &str, body: &str) -> ClientMsgId {
        self.send(Target::Room(room.to_owned()), body)
    }

    /// Sends a direct message to a user.
    pub fn send_to_user(&mut self, user: &str, body: &str) -> ClientMsgId {
        self.send(Target::User(user.to_owned()), body)
    }

    /// Posts a message. It is sent now when welcomed, otherwise after the next welcome,
    /// and again after every reconnect until it is acknowledged or rejected.
    pub fn send(&mut self, target: Target, body: &str) -> ClientMsgId {
        self.post(Post::Message {
            target,
            body: body.to_owned(),
            reply_to: None,
        })
    }

    /// Posts a message answering the message `reply_to` of the room (or, for a
    /// [`Target::User`], of the direct room with that user), which the server checks
    /// exists there. Pending and resent like [`send`](Self::send).
    pub fn reply(&mut self, target: Target, reply_to: Seq, body: &str) -> ClientMsgId {
        self.post(Post::Message {
            target,
            body: body.to_owned(),
            reply_to: Some(reply_to),
        })
    }

    /// Edits, deletes or reacts to a message of a room. Like a send it has a client id,
    /// is sent now or after the next welcome, and again after every reconnect until the
    /// server acknowledges it ([`ClientEvent::Acked`] with this client id: done once,
    /// however often it was sent) or refuses it ([`ClientEvent::Rejected`] with
    /// [`Command::Change`]). When the server's history epoch changes before that, it is
    /// given up (the seq it names no longer means that message) and rejected with
    /// `no_such_message`.
    pub fn change(&mut self, room: &str, change: MessageChange) -> ClientMsgId {
        self.post(Post::Change {
            room: room.to_owned(),
            change,
        })
    }

    /// Replaces the text of one of this user's messages ([`change`](Self::change)).
    pub fn edit(&mut self, room: &str, seq: Seq, body: &str) -> ClientMsgId {
        let body = body.to_owned();
        self.change(room, MessageChange::Edit { seq, body })
    }

    /// Deletes a message, leaving a tombstone ([`change`](Self::change)).
    pub fn delete(&mut self, room: &str, seq: Seq) -> ClientMsgId {
        self.change(room, MessageChange::Delete { seq })
    }

    /// Adds (`on`) or takes back this user's reaction to a message
    /// ([`change`](Self::change)).
    pub fn react(&mut self, room: &str, seq: Seq, emoji: &str, on: bool) -> ClientMsgId {
        let emoji = emoji.to_owned();
        self.change(room, MessageChange::React { seq, emoji, on })
    }

    /// Moves this user's read marker in a room forward to `seq` (never back): the
    /// server keeps it, tells the user's other sessions, and counts `unread` from it.
    /// Sent now when welcomed, otherwise after the next welcome. A room this client has
    /// not joined, or a seq not above the marker it knows, sends nothing.
    pub fn mark_read(&mut self, room: &str, seq: Seq) {
        let Some(name) = self.known_room(room) else {
            return;
        };
        let Some(state) = self.rooms.get_mut(&name) else {
            return;
        };
        if state.read.is_some_and(|r| r >= seq) {
            return;
        }
        state.read = Some(seq);
        if self.phase == Phase::Ready {
            self.transmit_read(&name, seq);
        } else {
            self.unsent_reads.insert(name);
        }
    }

    pub(super) fn transmit_read(&mut self, room: &RoomName, seq: Seq) {
        let id = self.request_id();
        self.requests.insert(
            id,
            Command::Read {
                room: room.as_str().to_owned(),
            },
        );
        self.transmit(ClientFrame::Read {
            id: Some(id),
            room: room.as_str().to_owned(),
            seq,
        });
    }

    fn post(&mut self, post: Post) -> ClientMsgId {
        let n = self.next_send;
        self.next_send += 1;
        let client_id: ClientMsgId = format!("{}-{n}", self.config.client_id_prefix).into();
        self.pending.insert(
            n,
            PendingSend {
                client_id: client_id.clone(),
                post,
                request: None,
            },
        );
        if self.phase == Phase::Ready {
            self.transmit_pending(n);
        }
        client_id
    }

    /// Asks for a page of history: the newest `limit` messages before `before`.
    pub fn history(&mut self, room: &str, before: Option<Seq>, limit: Option<u32>) -> RequestId {
        let id = self.request_id();
        self.requests.insert(
            id,
            Command::History {
                room: room.to_owned(),
            },
        );
        if self.phase == Phase::Ready {
            self.transmit(ClientFrame::History(HistoryRequest {
                id: Some(id),
                room: room.to_owned(),
                before,
                limit,
            }));
        }
        id
    }

    /// Asks for the room list.
    pub fn list_rooms(&mut self) -> RequestId {
        let id = self.request_id();
        self.requests.insert(id, Command::Rooms);
        if self.phase == Phase::Ready {
            self.transmit(ClientFrame::Rooms { id: Some(id) });
        }
        id
    }

    /// Asks who is in a room (version 2: the first page of them).
    pub fn members(&mut self, room: &str) -> RequestId {
        self.members_after(room, None)
    }

    /// Asks for the next page of a room's members: those after the last one this
    /// client holds (for a room whose list [`is_partial`](super::RoomState::is_partial)).
    pub fn more_members(&mut self, room: &str) -> RequestId {
        let after = RoomName::key_of(room)
            .and_then(|r| self.rooms.get(&r))
            .and_then(|s| s.members.last())
            .map(|u| u.as_str().to_owned());
        self.members_after(room, after)
    }

    fn members_after(&mut self, room: &str, after: Option<String>) -> RequestId {
        let id = self.request_id();
        self.requests.insert(
            id,
            Command::Members {
                room: room.to_owned(),
            },
        );
        if self.phase == Phase::Ready {
            self.transmit(ClientFrame::Members {
                id: Some(id),
                room: room.to_owned(),
                after,
                limit: None,
            });
        }
        id
    }

    /// A moderator's command in a room (see [`Moderation`]); answered by
    /// [`ClientEvent::Done`] or [`ClientEvent::Rejected`].
    pub fn moderate(&mut self, room: &str, action: Moderation) -> RequestId {
        let id = self.request_id();
        self.requests.insert(
            id,
            Command::Moderate {
                room: room.to_owned(),
            },
        );
        if self.phase == Phase::Ready {
            self.transmit(action.frame(room.to_owned(), id));
        }
        id
    }

    /// Says this user is (or stopped) typing in a room. Dropped when not connected:
    /// typing is ephemeral.
    pub fn typing(&mut self, room: &str, active: bool) {
        if self.phase == Phase::Ready {
            self.transmit(ClientFrame::Typing {
                room: room.to_owned(),
                active,
            });
        }
    }

    /// The next thing for the driver to do, in order.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<ClientOutput> {
        self.outputs.pop_front()
    }

    pub(super) fn request_id(&mut self) -> RequestId {
        let id = self.next_request;
        self.next_request = self.next_request.next();
        id
    }

    pub(super) fn transmit(&mut self, frame: ClientFrame) {
        self.outputs.push_back(ClientOutput::Transmit(frame));
    }

    pub(super) fn event(&mut self, event: ClientEvent) {
        self.outputs.push_back(ClientOutput::Event(event));
    }

    pub(super) fn transmit_pending(&mut self, key: u64) {
        let id = self.request_id();
        let Some(p) = self.pending.get_mut(&key) else {
            return;
        };
        p.request = Some(id);
        let client_id = p.client_id.clone();
        let (frame, command) = match &p.post {
            Post::Message {
                target,
                body,
                reply_to,
            } => {
                let (room, to) = match target {
                    Target::Room(room) => (Some(room.clone()), None),
                    Target::User(user) => (None, Some(user.clone())),
                };
                let frame = ClientFrame::Send(SendRequest {
                    id: Some(id),
                    room,
                    to,
                    body: body.clone(),
                    client_id: Some(client_id.clone()),
                    reply_to: *reply_to,
                });
                let command = Command::Send {
                    client_id,
                    target: target.clone(),
                    body: body.clone(),
                };
                (frame, command)
            }
            Post::Change { room, change } => {
                let frame = change.frame(room.clone(), id, client_id.clone());
                let command = Command::Change {
                    client_id,
                    room: room.clone(),
                    change: change.clone(),
                };
                (frame, command)
            }
        };
        self.requests.insert(id, command);
        self.transmit(frame);
    }

    /// The room this raw name refers to (by the server's rule), if the client knows it.
    pub(super) fn known_room(&self, raw: &str) -> Option<RoomName> {
        RoomName::key_of(raw).filter(|name| self.rooms.contains_key(name))
    }

    pub(super) fn cursor_of(&self, raw: &str) -> Option<Seq> {
        self.known_room(raw)
            .and_then(|name| self.rooms.get(&name))
            .and_then(|s| s.cursor)
    }
}
