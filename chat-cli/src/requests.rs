//! Which of the user's requests a client event answers: one matcher for the full-screen
//! client and the line mode, by [`ClientEvent::request_id`].

use std::collections::BTreeMap;

use chat_core::RequestId;
use chat_core::client::ClientEvent;

/// Requests asked and not yet answered, each with what it was for (`T`).
#[derive(Debug)]
pub struct Asked<T> {
    waiting: BTreeMap<RequestId, T>,
}

impl<T> Default for Asked<T> {
    fn default() -> Self {
        Asked {
            waiting: BTreeMap::new(),
        }
    }
}

impl<T> Asked<T> {
    /// Remembers a request (the id a `Client` command returned) and what it was for.
    pub fn insert(&mut self, id: RequestId, what: T) {
        self.waiting.insert(id, what);
    }

    /// What `event` answers, if it is the reply (or the refusal) of a request asked here;
    /// the request is then forgotten.
    pub fn answer(&mut self, event: &ClientEvent) -> Option<T> {
        event.request_id().and_then(|id| self.waiting.remove(&id))
    }

    /// Whether every request was answered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::client::{Client, ClientConfig, ClientOutput};
    use chat_core::protocol::{ErrorCode, ServerFrame};

    #[test]
    fn replies_and_refusals_answer_their_request_once() {
        let mut client = Client::new(ClientConfig::new("alice", "t"));
        let mut asked = Asked::default();
        let rooms = client.list_rooms();
        let who = client.members("general");
        asked.insert(rooms, "rooms");
        asked.insert(who, "who");
        let mut answers = Vec::new();
        for frame in [
            ServerFrame::Rooms {
                id: Some(rooms),
                rooms: vec![],
            },
            ServerFrame::Rooms {
                id: Some(rooms),
                rooms: vec![],
            },
            ServerFrame::Error {
                id: Some(who),
                code: ErrorCode::NotMember,
                message: "no".into(),
            },
        ] {
            client.handle_frame(frame);
            while let Some(output) = client.poll_output() {
                if let ClientOutput::Event(event) = output {
                    answers.push(asked.answer(&event));
                }
            }
        }
        assert_eq!(answers, [Some("rooms"), None, Some("who")]);
        assert!(asked.is_empty());
    }
}
