//! The interactive screen: what it shows ([`App`]), how keys and session events change
//! it, and how it is drawn with ratatui ([`draw`]). No terminal I/O here, so a test can
//! drive an [`App`] and render it into ratatui's `TestBackend`.
//!
//! ```text
//! ┌rooms───────┐┌#general─────────────────────────────┐┌members──┐
//! │general     ││12:00:01 <alice> hi                  ││alice    │
//! │rust (3)    ││12:00:02 * bob joined                ││bob …    │
//! └────────────┘└─────────────────────────────────────┘└─────────┘
//!  online · #general · you are carol · bob is typing…
//! > hello_
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_core::client::{Client, ClientEvent, Command, Delivery, MessageChange, Phase};
use chat_core::protocol::{Message, ModAction};
use chat_core::{ClientMsgId, RoomName, Seq, UserName, protocol::ErrorCode};
use chrono::{DateTime, Utc};
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Position, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};
use unicode_width::UnicodeWidthChar;

use crate::changes::{self, Change};
use crate::commands::{self, HELP};
use crate::input::LineEditor;
use crate::output::clock;
use crate::requests::Asked;
use crate::sanitize::{escape, escape_lines};
use crate::session::SessionEvent;

/// Lines kept per room; older ones are dropped from the screen (`/history` pages back).
const SCROLLBACK: usize = 5000;
/// Below this width the room and member panes are hidden.
const NARROW: u16 = 60;

/// One line of a room's scrollback.
#[derive(Debug, Clone)]
enum Entry {
    Message {
        msg: Arc<Message>,
        own: bool,
    },
    Notice {
        ts: Option<DateTime<Utc>>,
        text: String,
    },
    Gap,
}

#[derive(Debug)]
struct RoomView {
    name: RoomName,
    entries: Vec<Entry>,
    unread: usize,
    /// Visual lines scrolled up from the bottom.
    scroll: usize,
}

impl RoomView {
    fn new(name: RoomName) -> RoomView {
        RoomView {
            name,
            entries: Vec::new(),
            unread: 0,
            scroll: 0,
        }
    }

    fn push(&mut self, entry: Entry) {
        self.entries.push(entry);
        if self.entries.len() > SCROLLBACK {
            let extra = self.entries.len() - SCROLLBACK;
            self.entries.drain(..extra);
        }
    }

    /// The message `seq` in the scrollback.
    fn message_mut(&mut self, seq: Option<Seq>) -> Option<&mut Arc<Message>> {
        let seq = seq?;
        self.entries.iter_mut().rev().find_map(|e| match e {
            Entry::Message { msg, .. } if msg.seq == seq => Some(msg),
            _ => None,
        })
    }

    fn newest_seq(&self) -> Option<Seq> {
        self.entries.iter().rev().find_map(|e| match e {
            Entry::Message { msg, .. } => Some(msg.seq),
            _ => None,
        })
    }

    /// Messages of others after `seq` in the scrollback, not deleted.
    fn unread_after(&self, seq: Seq) -> usize {
        self.entries
            .iter()
            .filter(|e| {
                matches!(e, Entry::Message { msg, own: false }
                    if msg.seq > seq && msg.kind.is_message() && !msg.deleted)
            })
            .count()
    }

    fn oldest_seq(&self) -> Option<Seq> {
        self.entries.iter().find_map(|e| match e {
            Entry::Message { msg, .. } => Some(msg.seq),
            _ => None,
        })
    }
}

/// The connection as the status line shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Conn {
    Connecting(u32),
    Greeting,
    Online,
    Offline { reason: String, retry_at: Instant },
    Failed(String),
}

/// What was asked, to place the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    History,
    Rooms,
    Who,
    /// A join the user asked for: switch to the room when joined.
    Join,
}

/// The state of the interactive screen.
#[derive(Debug)]
pub struct App {
    rooms: Vec<RoomView>,
    current: usize,
    /// Notices while no room is open.
    status: Vec<Entry>,
    input: LineEditor,
    conn: Conn,
    note: Option<String>,
    quit: bool,
    asked: Asked<Request>,
    /// A direct message the user sent: switch to its room when acked.
    switch_on_ack: Option<ClientMsgId>,
    /// The name to fall back on when the server says it is taken (`None` when the user
    /// chose the name explicitly: then it is reported, not changed).
    fallback_name: Option<String>,
    typing: Option<(RoomName, Instant)>,
}

/// A key the screen did not consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOutcome {
    /// Handled.
    Handled,
    /// Not a key the screen uses.
    Ignored,
}

impl App {
    /// A screen for a session. `fallback_name` is the base for another name when the
    /// server says the (not explicitly chosen) name is taken.
    #[must_use]
    pub fn new(fallback_name: Option<String>) -> App {
        App {
            rooms: Vec::new(),
            current: 0,
            status: Vec::new(),
            input: LineEditor::new(),
            conn: Conn::Connecting(1),
            note: None,
            quit: false,
            asked: Asked::default(),
            switch_on_ack: None,
            fallback_name,
            typing: None,
        }
    }

    /// Whether the user asked to quit.
    #[must_use]
    pub fn should_quit(&self) -> bool {
        self.quit
    }

    /// The room shown.
    #[must_use]
    pub fn current_room(&self) -> Option<&RoomName> {
        self.rooms.get(self.current).map(|r| &r.name)
    }

    /// The text in the input line.
    #[must_use]
    pub fn input_text(&self) -> String {
        self.input.text()
    }

    /// Unread messages per room, in the order of the room list.
    #[must_use]
    pub fn unread(&self) -> Vec<(RoomName, usize)> {
        self.rooms
            .iter()
            .map(|r| (r.name.clone(), r.unread))
            .collect()
    }

    /// Asks to quit (a signal, Ctrl-C).
    pub fn quit(&mut self) {
        self.quit = true;
    }

    // --- session events ---

    /// Updates the screen for a session event (and answers what needs answering, like
    /// a taken name).
    pub fn on_event(&mut self, event: &SessionEvent, client: &mut Client) {
        match event {
            SessionEvent::Connecting { attempt } => self.conn = Conn::Connecting(*attempt),
            SessionEvent::Connected => self.conn = Conn::Greeting,
            SessionEvent::Disconnected { reason, retry_in } => {
                if matches!(self.conn, Conn::Online | Conn::Greeting) {
                    self.notice(None, format!("disconnected: {}", escape(reason)));
                }
                self.conn = Conn::Offline {
                    reason: reason.clone(),
                    retry_at: Instant::now() + *retry_in,
                };
                self.typing = None;
            }
            SessionEvent::Failed { error } => self.conn = Conn::Failed(error.clone()),
            SessionEvent::Client(event) => {
                self.on_client_event(event, client);
                self.mark_seen(client);
            }
        }
    }

    /// The room on screen is read up to its newest message: its read marker moves
    /// there (the server tells the user's other sessions; nothing is sent when the
    /// marker is there already).
    fn mark_seen(&self, client: &mut Client) {
        if let Some(view) = self.rooms.get(self.current)
            && view.scroll == 0
            && let Some(seq) = view.newest_seq()
        {
            client.mark_read(view.name.as_str(), seq);
        }
    }

    fn on_client_event(&mut self, event: &ClientEvent, client: &mut Client) {
        let answers = self.asked.answer(event);
        match event {
            ClientEvent::Welcome {
                user,
                resumed,
                epoch_changed,
                ..
            } => {
                self.conn = Conn::Online;
                if *resumed {
                    self.notice_everywhere(format!("reconnected as {}", escape(user.as_str())));
                } else {
                    self.notice(None, format!("connected as {}", escape(user.as_str())));
                }
                if *epoch_changed {
                    self.notice_everywhere(
                        "the server's history was reset: earlier messages may be missing".into(),
                    );
                }
            }
            ClientEvent::Joined { room, gap, .. } => {
                let index = self.room_index_or_insert(room);
                if answers == Some(Request::Join) {
                    self.switch_to(index);
                }
                if *gap {
                    self.rooms[index].push(Entry::Gap);
                }
            }
            ClientEvent::Left { room, .. } => {
                if let Some(i) = self.rooms.iter().position(|r| &r.name == room) {
                    self.rooms.remove(i);
                    if self.current >= i && self.current > 0 {
                        self.current -= 1;
                    }
                    self.note = Some(format!("left {}", escape(room.as_str())));
                }
            }
            // An edit, delete or reaction: applied to the message it names, when shown
            // (the rule of `Message::apply` makes applying it twice harmless).
            ClientEvent::Message { message, .. } if !message.kind.is_message() => {
                if let Some(view) = self.rooms.iter_mut().find(|r| r.name == message.room)
                    && let Some(msg) = view.message_mut(message.target)
                {
                    Arc::make_mut(msg).apply(message);
                }
            }
            // Another session of this user read the room up to `seq`.
            ClientEvent::Read { room, seq } => {
                if let Some(view) = self.rooms.iter_mut().find(|r| r.name == *room) {
                    view.unread = view.unread.min(view.unread_after(*seq));
                }
            }
            ClientEvent::Message {
                message,
                delivery,
                own,
            } => {
                let index = self.room_index_or_insert(&message.room);
                let room = &mut self.rooms[index];
                if *delivery != Delivery::Backlog && !own && index != self.current {
                    room.unread += 1;
                }
                if room.scroll > 0 {
                    // Keep the view where the user scrolled it.
                    room.scroll += 1;
                }
                room.push(Entry::Message {
                    msg: message.clone(),
                    own: *own,
                });
            }
            ClientEvent::Acked {
                room, client_id, ..
            } if client_id.is_some() && *client_id == self.switch_on_ack => {
                self.switch_on_ack = None;
                let index = self.room_index_or_insert(room);
                self.switch_to(index);
            }
            ClientEvent::History {
                room,
                messages,
                has_more,
                ..
            } => {
                if answers != Some(Request::History) {
                    return;
                }
                let Some(view) = self.rooms.iter_mut().find(|r| &r.name == room) else {
                    return;
                };
                let oldest = view.oldest_seq();
                // Messages come in their current state; the page's change entries are
                // part of it already.
                let older: Vec<Entry> = messages
                    .iter()
                    .filter(|m| m.kind.is_message() && oldest.is_none_or(|o| m.seq < o))
                    .map(|m| Entry::Message {
                        own: client.user().is_some_and(|me| me.key() == m.user.key()),
                        msg: m.clone(),
                    })
                    .collect();
                let count = older.len();
                let mut entries = Vec::with_capacity(view.entries.len() + count + 1);
                if !*has_more {
                    entries.push(Entry::Notice {
                        ts: None,
                        text: "(the beginning of this room)".into(),
                    });
                }
                entries.extend(older);
                entries.append(&mut view.entries);
                view.entries = entries;
                self.note = Some(format!("{count} earlier messages"));
            }
            ClientEvent::Rooms { rooms, .. } => {
                if answers != Some(Request::Rooms) {
                    return;
                }
                let list: Vec<String> = rooms
                    .iter()
                    .map(|r| format!("{} ({})", escape(r.name.as_str()), r.members))
                    .collect();
                self.notice(None, format!("rooms: {}", list.join(", ")));
            }
            ClientEvent::Members {
                room,
                members,
                count,
                more,
                ..
            } => {
                if answers != Some(Request::Who) {
                    return;
                }
                let names: Vec<String> = members
                    .iter()
                    .map(|m| escape(m.as_str()).into_owned())
                    .collect();
                let tally = match count {
                    Some(count) if *more => format!("{} of {count}; /more for more", members.len()),
                    Some(count) if *count != members.len() => {
                        format!("{} of {count}", members.len())
                    }
                    _ => members.len().to_string(),
                };
                self.notice(
                    Some(room),
                    format!(
                        "in {}: {} ({tally})",
                        escape(room.as_str()),
                        names.join(", ")
                    ),
                );
            }
            ClientEvent::Presence {
                room,
                joins,
                leaves,
                ..
            } => {
                // Version 2 says when the tick was sent, not when each came or went.
                let now = Utc::now();
                for user in joins {
                    self.notice_at(room, now, format!("{} joined", escape(user.as_str())));
                }
                for user in leaves {
                    self.notice_at(room, now, format!("{} left", escape(user.as_str())));
                }
            }
            ClientEvent::UserJoined { room, user, ts } => {
                self.notice_at(room, *ts, format!("{} joined", escape(user.as_str())));
            }
            ClientEvent::UserLeft { room, user, ts } => {
                self.notice_at(room, *ts, format!("{} left", escape(user.as_str())));
            }
            ClientEvent::Typing { .. } => {}
            ClientEvent::Moderated { .. }
            | ClientEvent::Topic { .. }
            | ClientEvent::SlowMode { .. }
            | ClientEvent::Done { .. } => {
                if let Some((room, text)) = crate::output::moderation_notice(event) {
                    // Out of the room: the room's view goes with `left`, so the user
                    // sees why on the status line.
                    let me_out = matches!(
                        event,
                        ClientEvent::Moderated { user, action: ModAction::Kick | ModAction::Ban, .. }
                            if Some(user.key()) == client.user().map(UserName::key)
                    );
                    if me_out {
                        self.note = Some(format!("[{}] {text}", escape(room.as_str())));
                    }
                    self.notice(Some(&room), text);
                }
            }
            ClientEvent::Rejected {
                command,
                code,
                message,
                ..
            } => {
                if *code == ErrorCode::NameTaken
                    && matches!(command, Some(Command::Hello))
                    && let Some(base) = &self.fallback_name
                {
                    let name = format!("{base}-{}", getrandom::u32().unwrap_or(7) % 1000);
                    self.notice(
                        None,
                        format!(
                            "the name {} is taken; trying {}",
                            escape(base),
                            escape(&name)
                        ),
                    );
                    client.retry_hello_as(name);
                    return;
                }
                let what = match command {
                    Some(Command::Send { body, .. }) => {
                        let short: String = body.chars().take(40).collect();
                        format!(" (not sent: {})", escape(&short))
                    }
                    Some(Command::Join { room }) => format!(" (joining {})", escape(room)),
                    Some(Command::Change { change, .. }) => {
                        format!(" ({})", changes::describe(change))
                    }
                    _ => String::new(),
                };
                let text = format!("error {code}: {}{what}", escape(message));
                self.note = Some(text.clone());
                self.notice(None, text);
            }
            ClientEvent::Goodbye { reason, .. } => {
                self.notice_everywhere(format!("server: {}", escape(reason)));
            }
            _ => {}
        }
    }

    // --- keys ---

    /// Handles a key press.
    pub fn on_key(&mut self, key: KeyEvent, client: &mut Client) -> KeyOutcome {
        if key.kind == KeyEventKind::Release {
            return KeyOutcome::Ignored;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let alt = key.modifiers.contains(KeyModifiers::ALT);
        let before = self.input.text();
        match key.code {
            KeyCode::Char('c') if ctrl => self.quit = true,
            KeyCode::Char('d') if ctrl => {
                if self.input.is_empty() {
                    self.quit = true;
                } else {
                    self.input.delete();
                }
            }
            KeyCode::Char('a') if ctrl => self.input.home(),
            KeyCode::Char('e') if ctrl => self.input.end(),
            KeyCode::Char('b') if ctrl => self.input.left(),
            KeyCode::Char('f') if ctrl => self.input.right(),
            KeyCode::Char('b') if alt => self.input.word_left(),
            KeyCode::Char('f') if alt => self.input.word_right(),
            KeyCode::Char('w') if ctrl => self.input.delete_word(),
            KeyCode::Char('h') if ctrl => self.input.backspace(),
            KeyCode::Char('u') if ctrl => self.input.kill_to_start(),
            KeyCode::Char('k') if ctrl => self.input.kill_to_end(),
            KeyCode::Char('n') if ctrl => self.cycle(1),
            KeyCode::Char('p') if ctrl => self.cycle(-1),
            KeyCode::Char('l') if ctrl => {}
            KeyCode::Char(c @ '1'..='9') if alt => {
                let index = c as usize - '1' as usize;
                if index < self.rooms.len() {
                    self.switch_to(index);
                }
            }
            KeyCode::Char(_) if ctrl || alt => return KeyOutcome::Ignored,
            KeyCode::Char(c) => self.input.insert(c),
            KeyCode::Enter => self.submit(client),
            KeyCode::Backspace => self.input.backspace(),
            KeyCode::Delete => self.input.delete(),
            KeyCode::Left if ctrl => self.input.word_left(),
            KeyCode::Right if ctrl => self.input.word_right(),
            KeyCode::Left => self.input.left(),
            KeyCode::Right => self.input.right(),
            KeyCode::Home => self.input.home(),
            KeyCode::End => self.input.end(),
            KeyCode::Up => self.input.history_up(),
            KeyCode::Down => self.input.history_down(),
            KeyCode::Tab => self.cycle(1),
            KeyCode::BackTab => self.cycle(-1),
            KeyCode::PageUp => self.scroll(10),
            KeyCode::PageDown => self.scroll(-10),
            KeyCode::Esc => {
                if let Some(room) = self.rooms.get_mut(self.current) {
                    room.scroll = 0;
                }
            }
            _ => return KeyOutcome::Ignored,
        }
        if self.input.text() != before {
            self.update_typing(client);
        }
        self.mark_seen(client);
        KeyOutcome::Handled
    }

    /// Inserts pasted text into the input line.
    pub fn on_paste(&mut self, text: &str, client: &mut Client) {
        self.input.insert_str(text);
        self.update_typing(client);
    }

    /// Renews the typing indicator while the user keeps a draft (call about once a
    /// second).
    pub fn on_tick(&mut self, client: &mut Client) {
        if let Some((room, since)) = &self.typing
            && since.elapsed() >= typing_renew(client)
        {
            let room = room.clone();
            self.typing = Some((room.clone(), Instant::now()));
            client.typing(room.as_str(), true);
        }
    }

    /// Types a line and presses Enter (for tests and scripted input).
    pub fn submit_line(&mut self, line: &str, client: &mut Client) {
        self.input.take();
        self.input.insert_str(line);
        self.submit(client);
    }

    fn submit(&mut self, client: &mut Client) {
        let line = self.input.take();
        self.stop_typing(client);
        self.note = None;
        let parsed = match commands::parse(&line) {
            Ok(parsed) => parsed,
            Err(usage) => {
                self.note = Some(usage);
                return;
            }
        };
        let current = self.current_room().cloned();
        match parsed {
            commands::Line::Nothing => {}
            commands::Line::Say(text) => match current {
                Some(room) if room.direct_users().is_some() => {
                    let other = self.direct_peer(&room, client);
                    client.send_to_user(&other, &text);
                }
                Some(room) => {
                    client.send_to_room(room.as_str(), &text);
                }
                None => self.note = Some("join a room first: /join ROOM".into()),
            },
            commands::Line::Join(room) => {
                let key = RoomName::key_of(&room);
                let known = self
                    .rooms
                    .iter()
                    .position(|r| Some(&r.name) == key.as_ref());
                match known {
                    Some(index) => self.switch_to(index),
                    None => {
                        let id = client.join(&room);
                        self.asked.insert(id, Request::Join);
                    }
                }
            }
            commands::Line::Leave(room) => {
                let room = room.or_else(|| current.map(|r| r.as_str().to_owned()));
                match room {
                    Some(room) => {
                        client.leave(&room);
                    }
                    None => self.note = Some("not in any room".into()),
                }
            }
            commands::Line::Rooms => {
                let id = client.list_rooms();
                self.asked.insert(id, Request::Rooms);
            }
            commands::Line::Who => match current {
                Some(room) => {
                    let id = client.members(room.as_str());
                    self.asked.insert(id, Request::Who);
                }
                None => self.note = Some("not in any room".into()),
            },
            commands::Line::More => match current {
                Some(room) => {
                    let id = client.more_members(room.as_str());
                    self.asked.insert(id, Request::Who);
                }
                None => self.note = Some("not in any room".into()),
            },
            commands::Line::Msg { user, text } => {
                let id = client.send_to_user(&user, &text);
                self.switch_on_ack = Some(id);
            }
            commands::Line::History(n) => match current {
                Some(room) => {
                    let before = self.rooms[self.current].oldest_seq();
                    let id = client.history(room.as_str(), before, n);
                    self.asked.insert(id, Request::History);
                }
                None => self.note = Some("not in any room".into()),
            },
            commands::Line::Moderate(action) => match current {
                Some(room) => {
                    client.moderate(room.as_str(), action);
                }
                None => self.note = Some("not in any room".into()),
            },
            commands::Line::Edit { seq, text } => {
                self.change(
                    client,
                    Change::Message(MessageChange::Edit { seq, body: text }),
                );
            }
            commands::Line::Delete(seq) => {
                self.change(client, Change::Message(MessageChange::Delete { seq }))
            }
            commands::Line::React { seq, emoji } => {
                // The same emoji again takes the reaction back.
                let me = client.user().map(UserName::key);
                let mine = self.rooms.get_mut(self.current).is_some_and(|view| {
                    view.message_mut(Some(seq)).is_some_and(|m| {
                        m.reactions.iter().any(|r| {
                            r.emoji == emoji && r.users.iter().any(|u| Some(u.key()) == me)
                        })
                    })
                });
                self.change(
                    client,
                    Change::Message(MessageChange::React {
                        seq,
                        emoji,
                        on: !mine,
                    }),
                );
            }
            commands::Line::Reply { seq, text } => self.change(
                client,
                Change::Reply {
                    reply_to: seq,
                    body: text,
                },
            ),
            commands::Line::Help => {
                for line in HELP {
                    self.notice(None, (*line).to_owned());
                }
            }
            commands::Line::Quit => self.quit = true,
        }
    }

    /// Hands a change to a message of the current room to the client, which sends it
    /// (after the next welcome when not connected) until it is acknowledged.
    fn change(&mut self, client: &mut Client, change: Change) {
        let Some(room) = self.current_room().cloned() else {
            self.note = Some("not in any room".into());
            return;
        };
        let peer = room
            .direct_users()
            .is_some()
            .then(|| self.direct_peer(&room, client));
        change.post(client, room.as_str(), peer.as_deref());
    }

    fn update_typing(&mut self, client: &mut Client) {
        let text = self.input.text();
        let drafting = !text.trim().is_empty() && !text.starts_with('/');
        let Some(room) = self.current_room().cloned() else {
            return;
        };
        if !drafting {
            self.stop_typing(client);
            return;
        }
        let fresh = match &self.typing {
            Some((r, since)) => *r != room || since.elapsed() >= typing_renew(client),
            None => true,
        };
        if fresh {
            self.stop_typing(client);
            client.typing(room.as_str(), true);
            self.typing = Some((room, Instant::now()));
        }
    }

    fn stop_typing(&mut self, client: &mut Client) {
        if let Some((room, _)) = self.typing.take() {
            client.typing(room.as_str(), false);
        }
    }

    fn direct_peer(&self, room: &RoomName, client: &Client) -> String {
        let me = client.user().map(UserName::key);
        match room.direct_users() {
            Some((a, b)) if Some(&a) == me.as_ref() => b.as_str().to_owned(),
            Some((a, _)) => a.as_str().to_owned(),
            None => String::new(),
        }
    }

    fn cycle(&mut self, step: isize) {
        if self.rooms.is_empty() {
            return;
        }
        let n = self.rooms.len() as isize;
        let next = (self.current as isize + step).rem_euclid(n) as usize;
        self.switch_to(next);
    }

    fn switch_to(&mut self, index: usize) {
        if index < self.rooms.len() {
            self.current = index;
            self.rooms[index].unread = 0;
        }
    }

    fn scroll(&mut self, lines: isize) {
        if let Some(room) = self.rooms.get_mut(self.current) {
            room.scroll = room.scroll.saturating_add_signed(lines);
        }
    }

    fn room_index_or_insert(&mut self, name: &RoomName) -> usize {
        if let Some(i) = self.rooms.iter().position(|r| &r.name == name) {
            return i;
        }
        self.rooms.push(RoomView::new(name.clone()));
        let index = self.rooms.len() - 1;
        if self.rooms.len() == 1 {
            // The first room: it takes over the notices shown so far.
            self.rooms[0].entries = std::mem::take(&mut self.status);
            self.current = 0;
        }
        index
    }

    /// A notice in a room (the current one when `None`).
    fn notice(&mut self, room: Option<&RoomName>, text: String) {
        let entry = Entry::Notice { ts: None, text };
        let index = match room {
            Some(room) => self.rooms.iter().position(|r| &r.name == room),
            None => (self.current < self.rooms.len()).then_some(self.current),
        };
        match index {
            Some(i) => self.rooms[i].push(entry),
            None => self.status.push(entry),
        }
    }

    fn notice_at(&mut self, room: &RoomName, ts: DateTime<Utc>, text: String) {
        if let Some(view) = self.rooms.iter_mut().find(|r| &r.name == room) {
            view.push(Entry::Notice { ts: Some(ts), text });
        }
    }

    fn notice_everywhere(&mut self, text: String) {
        if self.rooms.is_empty() {
            self.status.push(Entry::Notice { ts: None, text });
            return;
        }
        for room in &mut self.rooms {
            room.push(Entry::Notice {
                ts: None,
                text: text.clone(),
            });
        }
    }
}

/// How often a `typing` indicator is renewed while the user keeps typing: at half the
/// expiry the server announced, so it never lapses mid-draft. (Before a welcome nothing
/// is sent.)
fn typing_renew(client: &Client) -> Duration {
    client.limits().map_or(Duration::MAX, |l| {
        Duration::from_millis(l.typing_expiry_ms / 2)
    })
}

// --- drawing ---

const PALETTE: [Color; 6] = [
    Color::Cyan,
    Color::Green,
    Color::Magenta,
    Color::Yellow,
    Color::Blue,
    Color::LightRed,
];

fn user_color(user: &UserName) -> Color {
    let hash = user
        .key()
        .as_str()
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    PALETTE[hash as usize % PALETTE.len()]
}

/// The name a room is listed under: a direct room by the other user's name.
fn room_label(room: &RoomName, me: Option<&UserName>) -> String {
    match room.direct_users() {
        Some((a, b)) => {
            let me = me.map(UserName::key);
            let other = if Some(&a) == me.as_ref() { b } else { a };
            format!("@{}", escape(other.as_str()))
        }
        None => format!("#{}", escape(room.as_str())),
    }
}

/// Draws the whole screen.
pub fn draw(frame: &mut Frame, app: &App, client: &Client) {
    let [main, status, input] = Layout::vertical([
        Constraint::Min(3),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    if main.width >= NARROW {
        let [rooms, chat, members] = Layout::horizontal([
            Constraint::Length(18),
            Constraint::Min(20),
            Constraint::Length(18),
        ])
        .areas(main);
        draw_rooms(frame, rooms, app, client);
        draw_chat(frame, chat, app, client);
        draw_members(frame, members, app, client);
    } else {
        draw_chat(frame, main, app, client);
    }
    draw_status(frame, status, app, client);
    draw_input(frame, input, app);
}

fn draw_rooms(frame: &mut Frame, area: Rect, app: &App, client: &Client) {
    let me = client.user();
    let lines: Vec<Line> = app
        .rooms
        .iter()
        .enumerate()
        .map(|(i, room)| {
            let mut label = room_label(&room.name, me);
            if room.unread > 0 {
                label.push_str(&format!(" ({})", room.unread));
            }
            let mut style = Style::new();
            if i == app.current {
                style = style.add_modifier(Modifier::REVERSED);
            } else if room.unread > 0 {
                style = style.add_modifier(Modifier::BOLD);
            }
            Line::styled(label, style)
        })
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title("rooms")),
        area,
    );
}

fn draw_members(frame: &mut Frame, area: Rect, app: &App, client: &Client) {
    let mut lines = Vec::new();
    let current = app.current_room();
    if let Some(state) = current.and_then(|r| client.room(r)) {
        let me = client.user().map(UserName::key);
        let typing: Vec<_> = state.typing().map(UserName::key).collect();
        // A direct room has no membership; its two users are in its name.
        let direct: Vec<UserName> = match current.and_then(RoomName::direct_users) {
            Some((a, b)) if state.members().is_empty() => [a, b]
                .iter()
                .filter_map(|k| UserName::parse(k.as_str(), usize::MAX).ok())
                .collect(),
            _ => Vec::new(),
        };
        let members = if direct.is_empty() {
            state.members()
        } else {
            &direct
        };
        for member in members {
            let key = member.key();
            let mut text = escape(member.as_str()).into_owned();
            if typing.contains(&key) {
                text.push_str(" …");
            }
            let mut style = Style::new().fg(user_color(member));
            if Some(&key) == me.as_ref() {
                style = style.add_modifier(Modifier::BOLD);
            }
            lines.push(Line::styled(text, style));
        }
    }
    let count = match current.and_then(|r| client.room(r)) {
        Some(state) if state.is_partial() => {
            let more = state.count().saturating_sub(lines.len());
            lines.push(Line::styled(
                format!("… {more} more (/more)"),
                Style::new().add_modifier(Modifier::DIM),
            ));
            state.count()
        }
        Some(state) if state.members().is_empty() => lines.len(),
        Some(state) => state.count(),
        None => lines.len(),
    };
    let title = format!("members ({count})");
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(title)),
        area,
    );
}

fn draw_chat(frame: &mut Frame, area: Rect, app: &App, client: &Client) {
    let room = app.rooms.get(app.current);
    let mut title = match room {
        Some(room) => room_label(&room.name, client.user()),
        None => "chat".to_owned(),
    };
    let entries: &[Entry] = room.map_or(&app.status, |r| &r.entries);
    let scroll = room.map_or(0, |r| r.scroll);
    if scroll > 0 {
        title.push_str(" (scrolled up: Esc for latest)");
    }
    let block = Block::bordered().title(title);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let (width, height) = (inner.width as usize, inner.height as usize);
    if width == 0 || height == 0 {
        return;
    }
    // Wrap from the newest entry backwards until the screen (plus the scroll) is full.
    let mut lines: Vec<Line<'static>> = Vec::new();
    for entry in entries.iter().rev() {
        let mut wrapped = render_entry(entry, entries, width);
        wrapped.append(&mut lines);
        lines = wrapped;
        if lines.len() >= height + scroll {
            break;
        }
    }
    let max_scroll = lines.len().saturating_sub(height);
    let scroll = scroll.min(max_scroll);
    let end = lines.len() - scroll;
    let start = end.saturating_sub(height);
    let mut visible: Vec<Line> = vec![Line::default(); height.saturating_sub(end - start)];
    visible.extend(lines.drain(start..end));
    frame.render_widget(Paragraph::new(visible), inner);
}

/// The lines of one scrollback entry, wrapped to `width` columns. A message shows its
/// seq (what `/edit`, `/delete`, `/react` and `/reply` name), the message it replies to
/// (looked up in `entries`), "(edited)", "(deleted)" and its reactions.
fn render_entry(entry: &Entry, entries: &[Entry], width: usize) -> Vec<Line<'static>> {
    let dim = Style::new().fg(Color::DarkGray);
    match entry {
        Entry::Message { msg, own } => {
            let mut name_style = Style::new().fg(user_color(&msg.user));
            if *own {
                name_style = name_style.add_modifier(Modifier::BOLD);
            }
            let mut out = Vec::new();
            if let Some(target) = msg.reply_to {
                let quoted = entries.iter().rev().find_map(|e| match e {
                    Entry::Message { msg: m, .. } if m.seq == target => Some(m),
                    _ => None,
                });
                let text = match quoted {
                    Some(m) if m.deleted => {
                        format!("↪ #{target} <{}> (deleted)", escape(m.user.as_str()))
                    }
                    Some(m) => {
                        let first = escape_lines(&m.body).into_iter().next().unwrap_or_default();
                        let mut snippet: String = first.chars().take(40).collect();
                        if first.chars().count() > 40 {
                            snippet.push('…');
                        }
                        format!("↪ #{target} <{}> {snippet}", escape(m.user.as_str()))
                    }
                    None => format!("↪ #{target}"),
                };
                out.extend(wrap(&[(format!("         {text}"), dim)], width, 11));
            }
            // A tombstone has one line: "(deleted)".
            let body_lines: Vec<Option<String>> = if msg.deleted {
                vec![None]
            } else {
                escape_lines(&msg.body)
                    .into_iter()
                    .map(|l| Some(l.into_owned()))
                    .collect()
            };
            let last = body_lines.len().saturating_sub(1);
            for (i, body_line) in body_lines.into_iter().enumerate() {
                let mut segments = Vec::new();
                if i == 0 {
                    segments.push((format!("{} ", clock(&msg.ts)), dim));
                    segments.push((format!("#{} ", msg.seq), dim));
                    segments.push((format!("<{}>", escape(msg.user.as_str())), name_style));
                    segments.push((" ".to_owned(), Style::new()));
                } else {
                    segments.push(("         ".to_owned(), Style::new()));
                }
                match body_line {
                    None => {
                        segments.push(("(deleted)".to_owned(), dim.add_modifier(Modifier::ITALIC)))
                    }
                    Some(line) => {
                        segments.push((line, Style::new()));
                        if i == last && msg.edited_at.is_some() {
                            segments.push((" (edited)".to_owned(), dim));
                        }
                    }
                }
                out.extend(wrap(&segments, width, 9));
            }
            let reactions = changes::reactions_text(msg);
            if !reactions.is_empty() {
                out.extend(wrap(
                    &[(
                        format!("         {reactions}"),
                        Style::new().fg(Color::Yellow),
                    )],
                    width,
                    9,
                ));
            }
            out
        }
        Entry::Notice { ts, text } => {
            let stamp = ts.as_ref().map_or_else(|| "        ".to_owned(), clock);
            let segments = [
                (format!("{stamp} "), dim),
                (format!("* {text}"), Style::new().fg(Color::Yellow)),
            ];
            wrap(&segments, width, 11)
        }
        Entry::Gap => wrap(
            &[(
                "--- some messages are missing here (/history pages back) ---".to_owned(),
                Style::new().fg(Color::Red),
            )],
            width,
            0,
        ),
    }
}

/// Wraps styled text (already escaped) into lines of at most `width` columns, breaking
/// after a space when a line has one; lines after the first start with `indent` spaces.
fn wrap(segments: &[(String, Style)], width: usize, indent: usize) -> Vec<Line<'static>> {
    let indent = if indent * 2 >= width { 0 } else { indent };
    let cells: Vec<(char, Style, usize)> = segments
        .iter()
        .flat_map(|(text, style)| {
            text.chars()
                .map(move |c| (c, *style, c.width().unwrap_or(0)))
        })
        .collect();
    let mut lines = Vec::new();
    let mut start = 0;
    let mut first = true;
    while start < cells.len() || first {
        let budget = if first { width } else { width - indent };
        // The longest run of cells that fits.
        let mut end = start;
        let mut used = 0;
        while end < cells.len() && (used + cells[end].2 <= budget || end == start) {
            used += cells[end].2;
            end += 1;
        }
        if end < cells.len()
            && let Some(space) = (start + 1..end).rev().find(|&i| cells[i - 1].0 == ' ')
        {
            // Break after the last space, unless that leaves the line mostly empty.
            if (space - start) * 3 >= (end - start) {
                end = space;
            }
        }
        let mut spans: Vec<Span<'static>> = Vec::new();
        if !first && indent > 0 {
            spans.push(Span::raw(" ".repeat(indent)));
        }
        let mut i = start;
        while i < end {
            let style = cells[i].1;
            let mut text = String::new();
            while i < end && cells[i].1 == style {
                text.push(cells[i].0);
                i += 1;
            }
            spans.push(Span::styled(text, style));
        }
        lines.push(Line::from(spans));
        start = end;
        first = false;
    }
    lines
}

fn draw_status(frame: &mut Frame, area: Rect, app: &App, client: &Client) {
    let (label, color) = match &app.conn {
        Conn::Connecting(1) => ("connecting".to_owned(), Color::Yellow),
        Conn::Connecting(n) => (format!("connecting (attempt {n})"), Color::Yellow),
        Conn::Greeting => ("saying hello".to_owned(), Color::Yellow),
        Conn::Online => ("online".to_owned(), Color::Green),
        Conn::Offline { retry_at, .. } => {
            // The reason is in the scrollback ("disconnected: …"); keep this line short.
            let secs = retry_at.saturating_duration_since(Instant::now()).as_secs();
            (format!("offline, retrying in {secs}s"), Color::Red)
        }
        Conn::Failed(error) => (format!("failed: {}", escape(error)), Color::Red),
    };
    let mut spans = vec![Span::styled(format!(" {label}"), Style::new().fg(color))];
    if let Some(room) = app.current_room() {
        spans.push(Span::raw(format!(" · {}", room_label(room, client.user()))));
    }
    if client.pending_sends() > 0 && client.phase() != Phase::Ready {
        spans.push(Span::styled(
            format!(" · {} unsent", client.pending_sends()),
            Style::new().fg(Color::Red),
        ));
    }
    if let Some(state) = app.current_room().and_then(|r| client.room(r)) {
        let me = client.user().map(UserName::key);
        let typing: Vec<String> = state
            .typing()
            .filter(|u| Some(u.key()) != me)
            .map(|u| escape(u.as_str()).into_owned())
            .collect();
        match typing.len() {
            0 => {}
            1 => spans.push(Span::raw(format!(" · {} is typing…", typing[0]))),
            2 | 3 => spans.push(Span::raw(format!(" · {} are typing…", typing.join(", ")))),
            n => spans.push(Span::raw(format!(" · {n} people are typing…"))),
        }
    }
    if let Some(me) = client.user() {
        spans.push(Span::raw(format!(" · you are {}", escape(me.as_str()))));
    }
    if let Some(note) = &app.note {
        spans.push(Span::styled(
            format!(" · {note}"),
            Style::new().fg(Color::Yellow),
        ));
    }
    frame.render_widget(
        Paragraph::new(Line::from(spans)).style(Style::new().bg(Color::Black)),
        area,
    );
}

fn draw_input(frame: &mut Frame, area: Rect, app: &App) {
    let prompt = "> ";
    let text = app.input.text();
    // Each character as displayed: pasted control characters show escaped here too.
    let shown: Vec<String> = text
        .chars()
        .map(|c| escape(&c.to_string()).into_owned())
        .collect();
    let widths: Vec<usize> = shown
        .iter()
        .map(|s| s.chars().map(|c| c.width().unwrap_or(0)).sum())
        .collect();
    let room = (area.width as usize)
        .saturating_sub(prompt.len() + 1)
        .max(1);
    let cursor = app.input.cursor();
    let before: usize = widths[..cursor].iter().sum();
    // Scroll horizontally so the cursor stays visible.
    let mut start = 0;
    let mut skipped = 0;
    while before - skipped > room && start < cursor {
        skipped += widths[start];
        start += 1;
    }
    let visible: String = shown[start..].concat();
    frame.render_widget(Paragraph::new(format!("{prompt}{visible}")), area);
    let x = area.x + (prompt.len() + before - skipped) as u16;
    frame.set_cursor_position(Position::new(x.min(area.right().saturating_sub(1)), area.y));
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::client::{ClientConfig, ClientOutput};
    use chat_core::protocol::ServerFrame;

    /// A screen and a welcomed client in these rooms, the first one shown.
    fn in_rooms(rooms: &[&str]) -> (App, Client) {
        let mut client = Client::new(ClientConfig::new("alice", "t"));
        let mut app = App::new(None);
        client.connected();
        client.handle_frame(ServerFrame::Welcome {
            id: None,
            version: 1,
            session: chat_core::SessionId(1),
            user: UserName::parse("alice", 32).unwrap(),
            token: None,
            epoch: "e".into(),
            limits: chat_core::Config::default().limits(),
        });
        for room in rooms {
            client.handle_frame(ServerFrame::Joined {
                id: None,
                room: RoomName::parse(room, 64, 32).unwrap(),
                members: vec![],
                count: None,
                messages: vec![],
                gap: false,
                last_seq: Seq(0),
                topic: None,
                slow_mode: None,
                role: None,
            });
        }
        while let Some(output) = client.poll_output() {
            if let ClientOutput::Event(event) = output {
                app.on_event(&SessionEvent::Client(event), &mut client);
            }
        }
        (app, client)
    }

    #[test]
    fn join_switches_to_a_room_it_is_in_however_the_name_is_typed() {
        let (mut app, mut client) = in_rooms(&["general", "caf\u{e9}"]);
        assert_eq!(app.current_room().unwrap().as_str(), "general");
        app.submit_line("/join CAFE\u{301}", &mut client);
        assert_eq!(app.current_room().unwrap().as_str(), "caf\u{e9}");
        assert!(
            client.poll_output().is_none(),
            "no join for a room it is in"
        );
    }

    #[test]
    fn wrapping_keeps_width_and_indents() {
        let lines = |segments: &[(String, Style)], width, indent| -> Vec<String> {
            wrap(segments, width, indent)
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        let segments = [
            ("12345678 ".to_owned(), Style::new()),
            ("abcdefghijklmnopqrstuvwxyz".to_owned(), Style::new()),
        ];
        // A word longer than a line is cut; continuation lines are indented.
        let expected = [
            "12345678 ",
            "         abcdefghijk",
            "         lmnopqrstuv",
            "         wxyz",
        ];
        assert_eq!(lines(&segments, 20, 9), expected);
        // Too narrow for the indent: none.
        assert_eq!(lines(&segments, 12, 9)[1], "abcdefghijkl");
        // Words are not split when a line has a space to break at.
        let words = [("hello wonderful world of chat".to_owned(), Style::new())];
        let expected = ["hello ", "  wonderful ", "  world of ", "  chat"];
        assert_eq!(lines(&words, 12, 2), expected);
        // Wide characters never split a column budget.
        assert_eq!(
            lines(&[("你好世界".to_owned(), Style::new())], 5, 0),
            ["你好", "世界"]
        );
    }
}
