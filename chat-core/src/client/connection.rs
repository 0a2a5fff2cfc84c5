//! The connection's life: the `hello` that starts or resumes a session (every room from its
//! cursor, with the token), the `welcome` that answers it (a new epoch drops the cursors;
//! joins and sends made meanwhile go out), and what a lost connection forgets.

use crate::ids::{RequestId, UserName};
use crate::protocol::{ClientFrame, ErrorCode, JoinSpec, Limits, PROTOCOL_VERSION};
use crate::protocol::{HelloRequest, JoinRequest};

use super::{Client, ClientEvent, Command, Phase, Post, RoomName};

impl Client {
    /// A connection opened: queues the `hello` that (re)starts the session, resuming
    /// every room from its cursor after the first welcome.
    pub fn connected(&mut self) {
        self.phase = Phase::Greeting;
        self.transmit_hello();
    }

    /// The connection ended. Typing indicators are cleared; unanswered requests other
    /// than sends are forgotten (sends are sent again after the next welcome).
    pub fn disconnected(&mut self) {
        self.phase = Phase::Offline;
        self.hello_id = None;
        for room in self.rooms.values_mut() {
            room.typing.clear();
        }
        for p in self.pending.values_mut() {
            p.request = None;
        }
        // Joins in flight are resumed by the next hello; leaves in flight are complete
        // from this client's side (the room is no longer resumed).
        self.requests.clear();
        self.leaving.clear();
    }

    /// Changes the name to ask for (after `name_taken`, say) and, when connected and not
    /// yet welcomed, asks again with it.
    pub fn retry_hello_as(&mut self, name: impl Into<String>) {
        self.config.name = name.into();
        if self.phase == Phase::Greeting {
            self.transmit_hello();
        }
    }

    pub(super) fn transmit_hello(&mut self) {
        let id = self.request_id();
        self.hello_id = Some(id);
        let rooms = if self.welcomed_once {
            let mut specs: Vec<JoinSpec> = self
                .rooms
                .iter()
                .filter(|(name, state)| state.member || name.direct_users().is_some())
                .map(|(name, state)| JoinSpec {
                    room: name.as_str().to_owned(),
                    since: state.cursor,
                })
                .collect();
            // Joins that were in flight: asked for again (their replies carry no id now).
            for raw in std::mem::take(&mut self.joining).into_values() {
                let key = RoomName::key_of(&raw);
                if !specs
                    .iter()
                    .any(|s| s.room == raw || (key.is_some() && RoomName::key_of(&s.room) == key))
                {
                    specs.push(JoinSpec {
                        room: raw,
                        since: None,
                    });
                }
            }
            Some(specs)
        } else {
            self.config.rooms.as_ref().map(|rooms| {
                rooms
                    .iter()
                    .map(|room| JoinSpec {
                        room: room.clone(),
                        since: None,
                    })
                    .collect()
            })
        };
        self.transmit(ClientFrame::Hello(HelloRequest {
            id: Some(id),
            version: PROTOCOL_VERSION,
            name: self.config.name.clone(),
            token: self.token.clone(),
            rooms,
        }));
    }

    pub(super) fn on_welcome(
        &mut self,
        user: UserName,
        token: Option<String>,
        epoch: String,
        limits: Limits,
    ) {
        let resumed = self.welcomed_once;
        let epoch_changed = self.epoch.as_ref().is_some_and(|e| *e != epoch);
        if epoch_changed {
            // Seqs restarted: the old cursors mean nothing on this server. The joins of
            // this hello then count as first joins.
            for room in self.rooms.values_mut() {
                room.cursor = None;
                room.read = None;
            }
            self.unsent_reads.clear();
        }
        self.phase = Phase::Ready;
        self.welcomed_once = true;
        self.hello_id = None;
        self.user = Some(user.clone());
        if token.is_some() {
            self.token = token;
        }
        self.epoch = Some(epoch);
        self.limits = Some(limits.clone());
        self.event(ClientEvent::Welcome {
            user,
            resumed,
            epoch_changed,
            limits,
        });
        // Joins made before the welcome (not part of the hello).
        let joins: Vec<(RequestId, String)> = self
            .joining
            .iter()
            .map(|(id, room)| (*id, room.clone()))
            .collect();
        for (id, room) in joins {
            self.requests
                .insert(id, Command::Join { room: room.clone() });
            let since = self.cursor_of(&room);
            self.transmit(ClientFrame::Join(JoinRequest {
                id: Some(id),
                room,
                since,
            }));
        }
        // Changes and replies name seqs of the old epoch: given up, not resent.
        if epoch_changed {
            self.give_up_seq_posts();
        }
        // Read markers moved while offline.
        for room in std::mem::take(&mut self.unsent_reads) {
            if let Some(seq) = self.rooms.get(&room).and_then(|s| s.read) {
                self.transmit_read(&room, seq);
            }
        }
        // Sends not acknowledged (made while offline, or lost with the last connection).
        let keys: Vec<u64> = self.pending.keys().copied().collect();
        for key in keys {
            self.transmit_pending(key);
        }
    }

    /// Drops the pending posts that name a seq (changes, replies), each told as
    /// rejected with `no_such_message`: under a new epoch that seq is another message.
    fn give_up_seq_posts(&mut self) {
        let keys: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.post.names_a_seq())
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            let Some(p) = self.pending.remove(&key) else {
                continue;
            };
            let command = match p.post {
                Post::Message { target, body, .. } => Command::Send {
                    client_id: p.client_id,
                    target,
                    body,
                },
                Post::Change { room, change } => Command::Change {
                    client_id: p.client_id,
                    room,
                    change,
                },
            };
            self.event(ClientEvent::Rejected {
                id: None,
                command: Some(command),
                code: ErrorCode::NoSuchMessage,
                message: "the server's history was reset (a new epoch): the seq it named \
                          is gone"
                    .into(),
            });
        }
    }
}
