//! The client state machine, driven frame by frame.

use crate::protocol::{HelloRequest, HistoryRequest, JoinRequest, SendRequest};
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};

use super::*;
use crate::ids::Seq;
use crate::protocol::{ClientFrame, ErrorCode, JoinSpec, Message, ServerFrame};

fn ts() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
}

fn limits() -> Limits {
    crate::Config::default().limits()
}

fn name(s: &str) -> UserName {
    UserName::parse(s, 32).unwrap()
}

fn room(s: &str) -> RoomName {
    RoomName::parse(s, 64, 32).unwrap()
}

fn msg(r: &str, seq: u64, user: &str, body: &str) -> Arc<Message> {
    Arc::new(Message::new(
        room(r),
        Seq(seq),
        ts(),
        name(user),
        body.into(),
        None,
    ))
}

fn welcome(epoch: &str) -> ServerFrame {
    ServerFrame::Welcome {
        id: None,
        version: 1,
        session: crate::SessionId(1),
        user: name("alice"),
        token: Some("tok".into()),
        epoch: epoch.into(),
        limits: limits(),
    }
}

fn joined(r: &str, messages: Vec<Arc<Message>>, last_seq: u64) -> ServerFrame {
    ServerFrame::Joined {
        id: None,
        room: room(r),
        members: vec![name("alice")],
        count: None,
        messages,
        gap: false,
        last_seq: Seq(last_seq),
        topic: None,
        slow_mode: None,
        role: None,
    }
}

fn drain(c: &mut Client) -> (Vec<ClientFrame>, Vec<ClientEvent>) {
    let (mut frames, mut events) = (vec![], vec![]);
    while let Some(o) = c.poll_output() {
        match o {
            ClientOutput::Transmit(f) => frames.push(f),
            ClientOutput::Event(e) => events.push(e),
        }
    }
    (frames, events)
}

fn bodies(events: &[ClientEvent]) -> Vec<(u64, String, Delivery)> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Message {
                message, delivery, ..
            } => Some((message.seq.0, message.body.to_string(), *delivery)),
            _ => None,
        })
        .collect()
}

/// A client welcomed into `general` whose cursor is at `last_seq`.
fn ready(last_seq: u64) -> Client {
    let mut c = Client::new(ClientConfig::new("alice", "p"));
    c.connected();
    c.handle_frame(welcome("e1"));
    c.handle_frame(joined("general", vec![], last_seq));
    drain(&mut c);
    c
}

#[test]
fn first_hello_uses_the_configured_rooms_or_the_server_default() {
    let mut c = Client::new(ClientConfig::new("alice", "p"));
    c.connected();
    let (frames, _) = drain(&mut c);
    assert!(
        matches!(&frames[..], [ClientFrame::Hello(HelloRequest { rooms: None, token: None, name, .. })] if name == "alice")
    );

    let mut config = ClientConfig::new("bob", "p");
    config.rooms = Some(vec!["Rust".into()]);
    config.token = Some("t0".into());
    let mut c = Client::new(config);
    c.connected();
    let (frames, _) = drain(&mut c);
    let ClientFrame::Hello(HelloRequest { rooms, token, .. }) = &frames[0] else {
        panic!("{frames:?}")
    };
    assert_eq!(token.as_deref(), Some("t0"));
    assert_eq!(
        rooms.as_deref(),
        Some(
            &[JoinSpec {
                room: "Rust".into(),
                since: None
            }][..]
        )
    );
}

#[test]
fn reconnect_hello_resumes_every_room_from_its_cursor_with_the_token() {
    let mut c = ready(3);
    c.handle_frame(ServerFrame::Message(msg("general", 4, "bob", "x")));
    c.join("rust");
    c.handle_frame(ServerFrame::Joined {
        id: Some(RequestId(2)),
        room: room("rust"),
        members: vec![],
        count: None,
        messages: vec![],
        gap: false,
        last_seq: Seq(0),
        topic: None,
        slow_mode: None,
        role: None,
    });
    // A direct message room is resumed too.
    c.handle_frame(ServerFrame::Message(msg("@alice,bob", 1, "bob", "psst")));
    drain(&mut c);
    c.disconnected();
    assert_eq!(c.phase(), Phase::Offline);
    c.connected();
    let (frames, _) = drain(&mut c);
    let ClientFrame::Hello(HelloRequest { token, rooms, .. }) = &frames[0] else {
        panic!("{frames:?}")
    };
    assert_eq!(token.as_deref(), Some("tok"));
    let rooms: Vec<(String, Option<u64>)> = rooms
        .as_ref()
        .unwrap()
        .iter()
        .map(|s| (s.room.clone(), s.since.map(|s| s.0)))
        .collect();
    assert_eq!(
        rooms,
        [
            ("@alice,bob".to_owned(), Some(1)),
            ("general".to_owned(), Some(4)),
            ("rust".to_owned(), Some(0)),
        ]
    );
}

#[test]
fn messages_are_delivered_once_in_order_across_a_resume() {
    let mut c = ready(2);
    c.handle_frame(ServerFrame::Message(msg("general", 3, "bob", "three")));
    c.disconnected();
    c.connected();
    c.handle_frame(welcome("e1"));
    // The server answers the resume with exactly what came after 3 …
    c.handle_frame(joined(
        "general",
        vec![
            msg("general", 4, "bob", "four"),
            msg("general", 5, "bob", "five"),
        ],
        5,
    ));
    // … and a duplicate (say a re-sync join) is dropped.
    c.handle_frame(ServerFrame::Message(msg("general", 5, "bob", "five")));
    c.handle_frame(ServerFrame::Message(msg("general", 6, "bob", "six")));
    let (_, events) = drain(&mut c);
    assert_eq!(
        bodies(&events),
        [
            (3, "three".into(), Delivery::Live),
            (4, "four".into(), Delivery::CatchUp),
            (5, "five".into(), Delivery::CatchUp),
            (6, "six".into(), Delivery::Live),
        ]
    );
    assert!(events.iter().any(|e| matches!(
        e,
        ClientEvent::Welcome {
            resumed: true,
            epoch_changed: false,
            ..
        }
    )));
}

#[test]
fn a_first_join_gives_backlog_and_moves_the_cursor_to_the_last_seq() {
    let mut c = Client::new(ClientConfig::new("alice", "p"));
    c.connected();
    c.handle_frame(welcome("e1"));
    c.handle_frame(joined(
        "general",
        vec![msg("general", 9, "bob", "nine")],
        10,
    ));
    let (_, events) = drain(&mut c);
    assert_eq!(bodies(&events), [(9, "nine".into(), Delivery::Backlog)]);
    assert_eq!(c.room(&room("general")).unwrap().cursor(), Some(Seq(10)));
}

#[test]
fn a_new_epoch_drops_the_cursors() {
    let mut c = ready(40);
    c.disconnected();
    c.connected();
    c.handle_frame(welcome("e2"));
    // Seqs restarted: 1 and 2 are new messages, not duplicates of old 1 and 2.
    c.handle_frame(joined(
        "general",
        vec![msg("general", 1, "bob", "a"), msg("general", 2, "bob", "b")],
        2,
    ));
    let (_, events) = drain(&mut c);
    assert!(matches!(
        events[0],
        ClientEvent::Welcome {
            epoch_changed: true,
            ..
        }
    ));
    assert_eq!(
        bodies(&events),
        [
            (1, "a".into(), Delivery::Backlog),
            (2, "b".into(), Delivery::Backlog)
        ]
    );
    assert_eq!(c.room(&room("general")).unwrap().cursor(), Some(Seq(2)));
}

#[test]
fn unacknowledged_sends_are_resent_with_the_same_client_id_until_acked() {
    let mut c = ready(0);
    let cid = c.send_to_room("general", "hello");
    let (frames, _) = drain(&mut c);
    let ClientFrame::Send(SendRequest {
        client_id, body, ..
    }) = &frames[0]
    else {
        panic!("{frames:?}")
    };
    assert_eq!(client_id.as_ref(), Some(&cid));
    assert_eq!(body, "hello");
    // The connection drops before the ack.
    c.disconnected();
    assert_eq!(c.pending_sends(), 1);
    c.connected();
    c.handle_frame(welcome("e1"));
    let (frames, _) = drain(&mut c);
    let resent: Vec<_> = frames
        .iter()
        .filter_map(|f| match f {
            ClientFrame::Send(SendRequest { id, client_id, .. }) => Some((*id, client_id.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(resent.len(), 1);
    assert_eq!(resent[0].1.as_ref(), Some(&cid));
    c.handle_frame(ServerFrame::Ack {
        id: resent[0].0,
        room: room("general"),
        seq: Seq(1),
        ts: ts(),
        client_id: Some(cid.clone()),
        duplicate: true,
    });
    assert_eq!(c.pending_sends(), 0);
    let (_, events) = drain(&mut c);
    assert!(matches!(
        &events[..],
        [ClientEvent::Acked {
            seq: Seq(1),
            duplicate: true,
            ..
        }]
    ));
    // Nothing is resent after the next reconnect.
    c.disconnected();
    c.connected();
    c.handle_frame(welcome("e1"));
    let (frames, _) = drain(&mut c);
    assert!(
        !frames
            .iter()
            .any(|f| matches!(f, ClientFrame::Send(SendRequest { .. })))
    );
}

#[test]
fn sends_made_offline_wait_for_the_welcome_and_client_ids_are_unique() {
    let mut c = Client::new(ClientConfig::new("alice", "run7"));
    let a = c.send_to_room("general", "one");
    let b = c.send_to_user("bob", "two");
    assert_ne!(a, b);
    assert!(a.starts_with("run7-"));
    assert!(c.poll_output().is_none());
    c.connected();
    c.handle_frame(welcome("e1"));
    let (frames, _) = drain(&mut c);
    let sends: Vec<_> = frames
        .iter()
        .filter_map(|f| match f {
            ClientFrame::Send(SendRequest { room, to, body, .. }) => {
                Some((room.clone(), to.clone(), body.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        sends,
        [
            (Some("general".into()), None, "one".into()),
            (None, Some("bob".into()), "two".into())
        ]
    );
}

#[test]
fn a_rejected_send_is_reported_with_its_command_and_not_resent() {
    let mut c = ready(0);
    let cid = c.send_to_room("general", "   ");
    let (frames, _) = drain(&mut c);
    let ClientFrame::Send(SendRequest { id, .. }) = frames[0] else {
        panic!()
    };
    c.handle_frame(ServerFrame::Error {
        id,
        code: ErrorCode::InvalidBody,
        message: "empty".into(),
    });
    let (_, events) = drain(&mut c);
    match &events[..] {
        [
            ClientEvent::Rejected {
                command: Some(Command::Send { client_id, .. }),
                code: ErrorCode::InvalidBody,
                ..
            },
        ] => assert_eq!(*client_id, cid),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.pending_sends(), 0);
}

#[test]
fn a_send_refused_for_shutdown_stays_pending() {
    let mut c = ready(0);
    c.send_to_room("general", "hi");
    let (frames, _) = drain(&mut c);
    let ClientFrame::Send(SendRequest { id, .. }) = frames[0] else {
        panic!()
    };
    c.handle_frame(ServerFrame::Error {
        id,
        code: ErrorCode::ShuttingDown,
        message: "bye".into(),
    });
    assert_eq!(c.pending_sends(), 1);
    assert!(drain(&mut c).1.is_empty());
}

#[test]
fn errors_name_their_command() {
    let mut c = Client::new(ClientConfig::new("two words", "p"));
    c.connected();
    let (frames, _) = drain(&mut c);
    let ClientFrame::Hello(HelloRequest { id, .. }) = frames[0] else {
        panic!()
    };
    c.handle_frame(ServerFrame::Error {
        id,
        code: ErrorCode::InvalidName,
        message: "bad".into(),
    });
    let (_, events) = drain(&mut c);
    assert!(matches!(
        events[0],
        ClientEvent::Rejected {
            command: Some(Command::Hello),
            ..
        }
    ));
    c.retry_hello_as("alice");
    let (frames, _) = drain(&mut c);
    assert!(matches!(&frames[0], ClientFrame::Hello(HelloRequest { name, .. }) if name == "alice"));

    let mut c = ready(0);
    let id = c.join("two words");
    drain(&mut c);
    c.handle_frame(ServerFrame::Error {
        id: Some(id),
        code: ErrorCode::InvalidRoom,
        message: "bad".into(),
    });
    let (_, events) = drain(&mut c);
    assert!(matches!(
        &events[0],
        ClientEvent::Rejected { command: Some(Command::Join { room }), code: ErrorCode::InvalidRoom, .. } if room == "two words"
    ));
    // A failed join is not retried on reconnect.
    c.disconnected();
    c.connected();
    let (frames, _) = drain(&mut c);
    let ClientFrame::Hello(HelloRequest { rooms, .. }) = &frames[0] else {
        panic!()
    };
    assert_eq!(rooms.as_ref().unwrap().len(), 1);
}

#[test]
fn a_left_room_is_not_resumed_and_its_late_messages_are_dropped() {
    let mut c = ready(0);
    c.leave("General");
    let (frames, _) = drain(&mut c);
    assert!(matches!(&frames[0], ClientFrame::Leave { room, .. } if room == "General"));
    c.handle_frame(ServerFrame::Message(msg("general", 1, "bob", "late")));
    let (_, events) = drain(&mut c);
    assert!(bodies(&events).is_empty());
    c.disconnected();
    c.connected();
    let (frames, _) = drain(&mut c);
    let ClientFrame::Hello(HelloRequest { rooms, .. }) = &frames[0] else {
        panic!()
    };
    assert_eq!(rooms.as_deref(), Some(&[][..]));
}

#[test]
fn joins_made_while_offline_or_in_flight_are_made_on_the_next_connection() {
    let mut c = Client::new(ClientConfig::new("alice", "p"));
    let early = c.join("rust");
    assert!(c.poll_output().is_none());
    c.connected();
    c.handle_frame(welcome("e1"));
    let (frames, _) = drain(&mut c);
    assert!(frames.iter().any(
        |f| matches!(f, ClientFrame::Join(JoinRequest { id: Some(i), room, since: None }) if *i == early && room == "rust")
    ));
    // In flight when the connection drops: asked for again in the next hello.
    c.disconnected();
    c.connected();
    let (frames, _) = drain(&mut c);
    let ClientFrame::Hello(HelloRequest { rooms, .. }) = &frames[0] else {
        panic!()
    };
    assert_eq!(rooms.as_ref().unwrap()[0].room, "rust");
}

#[test]
fn a_room_is_known_by_any_spelling_the_server_takes_for_it() {
    let mut c = ready(0);
    c.handle_frame(joined("caf\u{e9}", vec![], 7));
    drain(&mut c);
    // NFD and capitals: the same room to the server, so it is resumed from its cursor.
    c.join("CAFE\u{301}");
    let (frames, _) = drain(&mut c);
    assert!(
        matches!(
            &frames[..],
            [ClientFrame::Join(JoinRequest {
                since: Some(Seq(7)),
                ..
            })]
        ),
        "{frames:?}"
    );
    // Leaving by another spelling forgets the room and drops its late messages.
    c.leave(" Caf\u{e9} ");
    drain(&mut c);
    assert!(c.room(&room("caf\u{e9}")).is_none());
    c.handle_frame(ServerFrame::Message(msg("caf\u{e9}", 8, "bob", "late")));
    assert!(bodies(&drain(&mut c).1).is_empty());
}

#[test]
fn members_and_typing_follow_presence_events() {
    let mut c = ready(0);
    let general = room("general");
    c.handle_frame(ServerFrame::UserJoined {
        room: general.clone(),
        user: name("Bob"),
        ts: ts(),
    });
    c.handle_frame(ServerFrame::UserJoined {
        room: general.clone(),
        user: name("carol"),
        ts: ts(),
    });
    let names = |c: &Client| -> Vec<String> {
        c.room(&general)
            .unwrap()
            .members()
            .iter()
            .map(|m| m.to_string())
            .collect()
    };
    assert_eq!(names(&c), ["alice", "Bob", "carol"]);
    c.handle_frame(ServerFrame::Typing {
        room: general.clone(),
        user: name("Bob"),
        active: true,
    });
    assert_eq!(c.room(&general).unwrap().typing().count(), 1);
    // Bob's message ends his typing indicator.
    c.handle_frame(ServerFrame::Message(msg("general", 1, "Bob", "hi")));
    assert_eq!(c.room(&general).unwrap().typing().count(), 0);
    c.handle_frame(ServerFrame::Typing {
        room: general.clone(),
        user: name("carol"),
        active: true,
    });
    c.handle_frame(ServerFrame::UserLeft {
        room: general.clone(),
        user: name("CAROL"),
        ts: ts(),
    });
    assert_eq!(names(&c), ["alice", "Bob"]);
    assert_eq!(c.room(&general).unwrap().typing().count(), 0);
    let (_, events) = drain(&mut c);
    assert!(matches!(events.last(), Some(ClientEvent::UserLeft { .. })));
}

#[test]
fn own_messages_are_marked() {
    let mut c = ready(0);
    c.handle_frame(ServerFrame::Message(msg("general", 1, "ALICE", "me")));
    c.handle_frame(ServerFrame::Message(msg("general", 2, "bob", "you")));
    let (_, events) = drain(&mut c);
    let own: Vec<bool> = events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Message { own, .. } => Some(*own),
            _ => None,
        })
        .collect();
    assert_eq!(own, [true, false]);
}

#[test]
fn commands_wait_for_the_welcome_except_typing() {
    let mut c = Client::new(ClientConfig::new("alice", "p"));
    c.typing("general", true);
    c.history("general", None, Some(5));
    assert!(c.poll_output().is_none());
    let mut c = ready(0);
    c.typing("general", true);
    let h = c.history("general", Some(Seq(7)), Some(5));
    let r = c.list_rooms();
    let m = c.members("general");
    let (frames, _) = drain(&mut c);
    assert_eq!(
        frames,
        [
            ClientFrame::Typing {
                room: "general".into(),
                active: true
            },
            ClientFrame::History(HistoryRequest {
                id: Some(h),
                room: "general".into(),
                before: Some(Seq(7)),
                limit: Some(5)
            }),
            ClientFrame::Rooms { id: Some(r) },
            ClientFrame::Members {
                id: Some(m),
                room: "general".into(),
                after: None,
                limit: None,
            },
        ]
    );
}

#[test]
fn changes_and_replies_are_resent_with_their_client_id_until_acked() {
    use crate::protocol::{EditRequest, ReactRequest};
    let mut c = ready(3);
    let edit = c.edit("general", Seq(2), "fixed");
    let react = c.react("general", Seq(1), "👍", true);
    let reply = c.reply(Target::Room("general".into()), Seq(1), "same here");
    let (frames, _) = drain(&mut c);
    assert!(
        matches!(&frames[..], [
            ClientFrame::Edit(EditRequest { seq: Seq(2), body, client_id: Some(e), .. }),
            ClientFrame::React(ReactRequest { seq: Seq(1), emoji, on: true, client_id: Some(r), .. }),
            ClientFrame::Send(SendRequest { reply_to: Some(Seq(1)), client_id: Some(p), .. }),
        ] if body == "fixed" && emoji == "👍" && *e == edit && *r == react && *p == reply),
        "{frames:?}"
    );
    assert_eq!(c.pending_sends(), 3);
    // The connection drops before any ack: all three go again, same client ids.
    c.disconnected();
    c.connected();
    c.handle_frame(welcome("e1"));
    let (frames, _) = drain(&mut c);
    let again: Vec<_> = frames
        .iter()
        .filter_map(|f| match f {
            ClientFrame::Edit(EditRequest { client_id, .. })
            | ClientFrame::React(ReactRequest { client_id, .. })
            | ClientFrame::Send(SendRequest { client_id, .. }) => client_id.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(again, [edit.clone(), react.clone(), reply.clone()]);
    // The edit's ack (a duplicate: the first copy had been applied) ends it.
    c.handle_frame(ServerFrame::Ack {
        id: None,
        room: room("general"),
        seq: Seq(4),
        ts: ts(),
        client_id: Some(edit),
        duplicate: true,
    });
    assert_eq!(c.pending_sends(), 2);
}

#[test]
fn a_refused_change_is_reported_with_its_command_and_not_resent() {
    use crate::protocol::DeleteRequest;
    let mut c = ready(3);
    let cid = c.delete("general", Seq(2));
    let (frames, _) = drain(&mut c);
    let ClientFrame::Delete(DeleteRequest { id, .. }) = frames[0] else {
        panic!("{frames:?}")
    };
    c.handle_frame(ServerFrame::Error {
        id,
        code: ErrorCode::NotAuthor,
        message: "not yours".into(),
    });
    let (_, events) = drain(&mut c);
    match &events[..] {
        [
            ClientEvent::Rejected {
                command:
                    Some(Command::Change {
                        client_id,
                        change: MessageChange::Delete { seq: Seq(2) },
                        ..
                    }),
                code: ErrorCode::NotAuthor,
                ..
            },
        ] => assert_eq!(*client_id, cid),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.pending_sends(), 0);
    c.disconnected();
    c.connected();
    c.handle_frame(welcome("e1"));
    let (frames, _) = drain(&mut c);
    assert!(!frames.iter().any(|f| matches!(f, ClientFrame::Delete(_))));
}

#[test]
fn a_new_epoch_gives_up_changes_and_replies_but_resends_plain_sends() {
    let mut c = ready(3);
    c.disconnected();
    let plain = c.send_to_room("general", "still wanted");
    let edit = c.edit("general", Seq(2), "fixed");
    let reply = c.reply(Target::Room("general".into()), Seq(2), "re");
    c.connected();
    c.handle_frame(welcome("e2"));
    let (frames, events) = drain(&mut c);
    let sent: Vec<_> = frames
        .iter()
        .filter_map(|f| match f {
            ClientFrame::Send(SendRequest { client_id, .. }) => client_id.clone(),
            ClientFrame::Edit(_) => panic!("an edit of an old epoch's seq went out"),
            _ => None,
        })
        .collect();
    assert_eq!(sent, [plain]);
    let given_up: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Rejected {
                command: Some(Command::Change { client_id, .. } | Command::Send { client_id, .. }),
                code: ErrorCode::NoSuchMessage,
                ..
            } => Some(client_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(given_up, [edit, reply]);
    assert_eq!(c.pending_sends(), 1);
}

#[test]
fn the_read_marker_goes_forward_only_and_follows_the_other_sessions() {
    let mut c = ready(9);
    let general = room("general");
    c.mark_read("general", Seq(5));
    c.mark_read("general", Seq(4));
    c.mark_read("nowhere", Seq(4));
    let (frames, _) = drain(&mut c);
    assert!(
        matches!(&frames[..], [ClientFrame::Read { room, seq: Seq(5), .. }] if room == "general"),
        "{frames:?}"
    );
    assert_eq!(c.room(&general).and_then(RoomState::read), Some(Seq(5)));
    // Another session of the user read further: told once, kept.
    c.handle_frame(ServerFrame::Read {
        room: general.clone(),
        seq: Seq(8),
    });
    c.handle_frame(ServerFrame::Read {
        room: general.clone(),
        seq: Seq(7),
    });
    let (_, events) = drain(&mut c);
    assert!(
        matches!(&events[..], [ClientEvent::Read { seq: Seq(8), .. }]),
        "{events:?}"
    );
    assert_eq!(c.room(&general).and_then(RoomState::read), Some(Seq(8)));
    // Marked while offline: sent after the welcome.
    c.disconnected();
    c.mark_read("general", Seq(9));
    assert!(c.poll_output().is_none());
    c.connected();
    c.handle_frame(welcome("e1"));
    let (frames, _) = drain(&mut c);
    assert!(
        frames
            .iter()
            .any(|f| matches!(f, ClientFrame::Read { seq: Seq(9), .. })),
        "{frames:?}"
    );
}
