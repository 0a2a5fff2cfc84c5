//! The interactive screen, driven by a real session against a real server and rendered
//! into ratatui's `TestBackend`.

mod common;

use chat_cli::net::{NetOptions, Reconnect};
use chat_cli::session::Session;
use chat_cli::ui::{self, App};
use chat_core::RequestId;
use chat_core::client::ClientConfig;
use chat_core::protocol::{ClientFrame, ServerFrame};
use common::{HOSTILE, Peer, TestServer, WAIT, has_raw_controls, hub_with_store};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

struct Screen {
    session: Session,
    app: App,
    terminal: Terminal<TestBackend>,
}

impl Screen {
    fn open(url: &str, name: &str, rooms: Option<&[&str]>, width: u16, height: u16) -> Screen {
        let config = ClientConfig {
            rooms: rooms.map(|r| r.iter().map(|s| (*s).to_owned()).collect()),
            ..ClientConfig::new(name, "screen-test")
        };
        Screen {
            session: Session::start(NetOptions::new(url, Reconnect::Always), config),
            app: App::new(None),
            terminal: Terminal::new(TestBackend::new(width, height)).expect("test terminal"),
        }
    }

    /// Draws and returns the screen, one string per row.
    fn render(&mut self) -> Vec<String> {
        let (app, session) = (&self.app, &self.session);
        self.terminal
            .draw(|frame| ui::draw(frame, app, session.client()))
            .expect("draw");
        let buffer = self.terminal.backend().buffer();
        (0..buffer.area.height)
            .map(|y| {
                (0..buffer.area.width)
                    .map(|x| buffer[(x, y)].symbol())
                    .collect::<String>()
            })
            .collect()
    }

    /// Feeds session events to the screen until the rendered screen satisfies `done`.
    async fn until(&mut self, what: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let rows = self.render();
            if done(&rows) {
                return rows;
            }
            let event = tokio::time::timeout_at(deadline, self.session.next())
                .await
                .unwrap_or_else(|_| panic!("screen never showed {what}:\n{}", rows.join("\n")))
                .expect("session runs");
            let app = &mut self.app;
            self.session.with(|client| app.on_event(&event, client));
        }
    }

    async fn until_shows(&mut self, text: &str) -> Vec<String> {
        self.until(text, |rows| rows.iter().any(|r| r.contains(text)))
            .await
    }

    fn key(&mut self, code: KeyCode) {
        self.key_with(code, KeyModifiers::NONE);
    }

    fn key_with(&mut self, code: KeyCode, modifiers: KeyModifiers) {
        let app = &mut self.app;
        self.session
            .with(|client| app.on_key(KeyEvent::new(code, modifiers), client));
    }

    fn type_text(&mut self, text: &str) {
        for c in text.chars() {
            self.key(KeyCode::Char(c));
        }
    }
}

/// The screen with clock times replaced by `HH:MM:SS`.
fn masked(rows: &[String]) -> Vec<String> {
    rows.iter()
        .map(|row| {
            let chars: Vec<char> = row.chars().collect();
            let mut out = String::new();
            let mut i = 0;
            while i < chars.len() {
                let window: String = chars[i..(i + 8).min(chars.len())].iter().collect();
                let is_clock = window.len() == 8
                    && window.chars().enumerate().all(|(j, c)| {
                        if j == 2 || j == 5 {
                            c == ':'
                        } else {
                            c.is_ascii_digit()
                        }
                    });
                if is_clock {
                    out.push_str("HH:MM:SS");
                    i += 8;
                } else {
                    out.push(chars[i]);
                    i += 1;
                }
            }
            out.trim_end().to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_with_members_typing_and_the_input_line() {
    let server = TestServer::start().await;
    let url = server.url();
    let mut screen = Screen::open(&url, "carol", None, 80, 12);
    screen.until_shows("you are carol").await;

    let mut alice = Peer::join(&url, "alice", &["general"]).await;
    screen.until_shows("alice joined").await;
    alice.say("general", "hi carol, long time no see").await;
    screen.until_shows("<alice> hi carol").await;

    screen.type_text("hello alice");
    screen.key(KeyCode::Enter);
    screen.until_shows("<carol> hello alice").await;

    alice
        .send_frame(&ClientFrame::Typing {
            room: "general".into(),
            active: true,
        })
        .await;
    screen.until_shows("alice is typing…").await;

    // A draft with the cursor moved: the input line shows it all.
    screen.type_text("a draft");
    screen.key(KeyCode::Home);
    screen.type_text(">");
    let rows = screen.render();
    let expected = [
        "┌rooms───────────┐┌#general──────────────────────────────────┐┌members (2)─────┐",
        "│#general        ││                                          ││alice …         │",
        "│                ││                                          ││carol           │",
        "│                ││                                          ││                │",
        "│                ││         * connected as carol             ││                │",
        "│                ││HH:MM:SS * alice joined                   ││                │",
        "│                ││HH:MM:SS #1 <alice> hi carol, long time   ││                │",
        "│                ││         no see                           ││                │",
        "│                ││HH:MM:SS #2 <carol> hello alice           ││                │",
        "└────────────────┘└──────────────────────────────────────────┘└────────────────┘",
        " online · #general · alice is typing… · you are carol",
        "> >a draft",
    ];
    assert_eq!(masked(&rows), expected, "\n{}", rows.join("\n"));
    // The cursor is after the inserted '>'.
    let cursor = screen.terminal.get_cursor_position().expect("cursor");
    assert_eq!((cursor.x, cursor.y), (3, 11));

    // alice's message ends her typing; her leaving removes her from the members.
    alice.say("general", "bye").await;
    screen
        .until("typing cleared", |rows| {
            !rows.iter().any(|r| r.contains("typing"))
                && rows.iter().any(|r| r.contains("<alice> bye"))
        })
        .await;
    alice
        .send_frame(&ClientFrame::Leave {
            id: Some(RequestId(99)),
            room: "general".into(),
        })
        .await;
    let rows = screen.until_shows("alice left").await;
    assert!(rows[0].contains("members (1)"), "{}", rows.join("\n"));
    assert!(
        !rows.iter().any(|r| r.contains("│alice")),
        "{}",
        rows.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_counts_and_switching_rooms() {
    let server = TestServer::start().await;
    let url = server.url();
    let mut screen = Screen::open(&url, "dana", Some(&["general", "rust"]), 80, 12);
    screen.until_shows("#rust").await;
    let mut eve = Peer::join(&url, "eve", &["rust"]).await;
    eve.say("rust", "one").await;
    eve.say("rust", "two").await;
    let rows = screen.until_shows("#rust (2)").await;
    assert!(
        rows[1].starts_with("│#general"),
        "general is current: {}",
        rows.join("\n")
    );
    assert!(
        !rows.iter().any(|r| r.contains("<eve> one")),
        "not shown in general"
    );

    screen.key(KeyCode::Tab);
    let rows = screen.render();
    assert!(
        rows.iter().any(|r| r.contains("<eve> one")),
        "{}",
        rows.join("\n")
    );
    assert!(rows.iter().any(|r| r.contains("<eve> two")));
    assert!(
        rows.iter().any(|r| r.contains("│#rust          ")),
        "read: {}",
        rows.join("\n")
    );
    assert!(
        rows[10].contains("#rust"),
        "status shows the room: {}",
        rows[10]
    );

    // /join switches to the new room; /leave closes it.
    screen.type_text("/join Ops");
    screen.key(KeyCode::Enter);
    screen
        .until("#ops is current", |rows| rows[0].contains("┌#ops"))
        .await;
    screen.type_text("/leave");
    screen.key(KeyCode::Enter);
    let rows = screen
        .until("ops left", |rows| !rows.iter().any(|r| r.contains("#ops")))
        .await;
    assert!(rows[0].contains("┌#rust"), "{}", rows.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_marker_is_shared_with_the_users_other_sessions() {
    let server = TestServer::start().await;
    let url = server.url();
    let mut screen = Screen::open(&url, "dana", Some(&["general", "rust"]), 80, 12);
    screen.until_shows("#rust").await;
    let token = screen
        .session
        .client()
        .token()
        .expect("anonymous token")
        .to_owned();
    let mut phone = Peer::join_with(&url, "dana", Some(&token), &["rust"]).await;
    let mut eve = Peer::join(&url, "eve", &["rust"]).await;
    eve.say("rust", "one").await;
    let two = eve.say("rust", "two").await;
    screen.until_shows("#rust (2)").await;

    // Read on the other device: the screen's count goes.
    phone
        .send_frame(&ClientFrame::Read {
            id: None,
            room: "rust".into(),
            seq: two,
        })
        .await;
    let rows = screen
        .until("the count cleared by the other session", |rows| {
            rows.iter().any(|r| r.contains("│#rust          "))
        })
        .await;
    assert!(rows[1].starts_with("│#general"), "{}", rows.join("\n"));

    // Read on the screen: the other device is told.
    let three = eve.say("rust", "three").await;
    screen.until_shows("#rust (1)").await;
    screen.key(KeyCode::Tab);
    phone
        .expect(
            |f| matches!(f, ServerFrame::Read { room, seq } if room.as_str() == "rust" && *seq == three),
            "the screen's read of #rust",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_and_commands() {
    let server = TestServer::start().await;
    let url = server.url();
    let mut screen = Screen::open(&url, "finn", None, 100, 30);
    screen.until_shows("you are finn").await;
    let mut gus = Peer::join(&url, "gus", &["general"]).await;
    screen.until_shows("gus joined").await;

    screen.type_text("/msg gus psst");
    screen.key(KeyCode::Enter);
    // The direct room opens, named after the other user.
    let rows = screen
        .until("the direct room", |rows| rows[0].contains("┌@gus"))
        .await;
    assert!(
        rows.iter().any(|r| r.contains("<finn> psst")),
        "{}",
        rows.join("\n")
    );
    assert!(rows[0].contains("members (2)"), "{}", rows.join("\n"));
    let frame = gus
        .expect(
            |f| matches!(f, ServerFrame::Message(_)),
            "the direct message",
        )
        .await;
    let ServerFrame::Message(m) = frame else {
        unreachable!()
    };
    assert_eq!((m.room.as_str(), &*m.body), ("@finn,gus", "psst"));

    screen.type_text("/who");
    screen.key(KeyCode::Enter);
    screen.until_shows("in @finn,gus: finn, gus (2)").await;
    screen.type_text("/rooms");
    screen.key(KeyCode::Enter);
    screen
        .until_shows("rooms: @finn,gus (2), general (2)")
        .await;
    screen.type_text("/help");
    screen.key(KeyCode::Enter);
    screen.until_shows("/history [N]").await;
    screen.type_text("/bogus");
    screen.key(KeyCode::Enter);
    screen.until_shows("unknown command /bogus").await;
    // Errors from the server show with their code.
    screen.type_text("/join two words");
    screen.key(KeyCode::Enter);
    screen.until_shows("error invalid_room").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_back_into_the_scrollback() {
    let server = TestServer::start().await;
    let url = server.url();
    let mut hal = Peer::join(&url, "hal", &["archive"]).await;
    for i in 1..=55 {
        hal.say("archive", &format!("msg {i:02}")).await;
    }
    let mut screen = Screen::open(&url, "ida", Some(&["archive"]), 80, 12);
    // The join brings the latest 50: msg 06 .. msg 55.
    screen.until_shows("<hal> msg 55").await;
    screen.type_text("/history 10");
    screen.key(KeyCode::Enter);
    screen.until_shows("5 earlier messages").await;
    for _ in 0..10 {
        screen.key(KeyCode::PageUp);
    }
    let rows = screen.render();
    let text = rows.join("\n");
    assert!(text.contains("(the beginning of this room)"), "{text}");
    assert!(text.contains("<hal> msg 01"), "{text}");
    assert!(text.contains("scrolled up"), "{text}");
    screen.key(KeyCode::Esc);
    assert!(screen.render().join("\n").contains("<hal> msg 55"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_is_shown_escaped_never_raw() {
    let server = TestServer::start().await;
    let url = server.url();
    // Wide enough that each payload fits on its line after the time, seq and author.
    let mut screen = Screen::open(&url, "jay", Some(&["general"]), 140, 40);
    screen.until_shows("you are jay").await;
    let mut mallory = Peer::join(&url, "mallory", &["general"]).await;
    for (payload, _) in HOSTILE {
        mallory.say("general", payload).await;
    }
    let last = HOSTILE.last().expect("payloads").0;
    let tail = last.split('\n').next_back().expect("a line");
    let rows = screen.until_shows(tail).await;
    for (y, row) in rows.iter().enumerate() {
        assert!(
            !has_raw_controls(row),
            "row {y} holds a raw control: {row:?}"
        );
    }
    let text = rows.join("\n");
    for (payload, visible) in HOSTILE {
        if payload.contains('\n') {
            // Multi-line messages are shown as indented continuation lines.
            assert!(text.contains("<mallory> next"), "{text}");
            assert!(text.contains("         line <admin> fake"), "{text}");
        } else {
            assert!(text.contains(visible), "{visible:?} not shown:\n{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_screen_reconnects_and_resumes_every_room() {
    use chat_core::runtime::{MemoryStore, Store};
    let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(MemoryStore::new("e1"));
    let hub = hub_with_store(store.clone()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = TestServer::serve(listener, hub.clone());
    let (addr, url) = (server.addr, server.url());
    let mut screen = Screen::open(&url, "kai", Some(&["one", "two"]), 80, 12);
    screen.until_shows("#two").await;
    hub.publish("one", "bot", "before").await.unwrap();
    screen.until_shows("<bot> before").await;

    server.stop().await;
    screen
        .until("offline", |rows| rows[10].contains("offline"))
        .await;
    // Typed while offline: sent after the reconnect.
    screen.type_text("queued while away");
    screen.key(KeyCode::Enter);
    let rows = screen.render();
    assert!(rows[10].contains("1 unsent"), "{}", rows[10]);

    let hub = hub_with_store(store).await;
    hub.publish("one", "bot", "missed in one").await.unwrap();
    hub.publish("two", "bot", "missed in two").await.unwrap();
    let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind");
    let _server = TestServer::serve(listener, hub.clone());
    let rows = screen.until_shows("<kai> queued while away").await;
    let text = rows.join("\n");
    assert!(text.contains("reconnected as kai"), "{text}");
    assert!(text.contains("<bot> missed in one"), "{text}");
    assert!(
        rows[2].contains("#two (1)"),
        "the other room resumed too: {text}"
    );
    assert!(
        rows[10].contains("online") && !rows[10].contains("unsent"),
        "{}",
        rows[10]
    );
    // Exactly once: "before" is not repeated by the resume.
    assert_eq!(text.matches("<bot> before").count(), 1, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_deletes_reactions_and_replies_live() {
    let server = TestServer::start().await;
    let url = server.url();
    let mut screen = Screen::open(&url, "kim", Some(&["general"]), 100, 16);
    screen.until_shows("you are kim").await;
    let mut lee = Peer::join(&url, "lee", &["general"]).await;
    let seq = lee.say("general", "helo").await;
    // Each message shows its seq: what the commands name.
    screen.until_shows(&format!("#{seq} <lee> helo")).await;

    // Another user's edit, live.
    lee.send_frame(&ClientFrame::Edit(chat_core::protocol::EditRequest {
        id: Some(RequestId(50)),
        room: "general".into(),
        seq,
        body: "hello".into(),
        client_id: None,
    }))
    .await;
    screen
        .until_shows(&format!("#{seq} <lee> hello (edited)"))
        .await;

    // Our reaction, reply and a refused edit, from the input line.
    screen.type_text(&format!("/react {seq} 👍"));
    screen.key(KeyCode::Enter);
    // (A wide character takes two cells: the buffer holds it and a blank.)
    let has_reaction = |rows: &[String]| rows.iter().any(|r| r.contains("[👍  kim]"));
    screen.until("the reaction", has_reaction).await;
    screen.type_text(&format!("/reply {seq} welcome back"));
    screen.key(KeyCode::Enter);
    let rows = screen.until_shows("<kim> welcome back").await;
    let at = rows
        .iter()
        .position(|r| r.contains("<kim> welcome back"))
        .expect("shown");
    assert!(
        rows[at - 1].contains(&format!("↪ #{seq} <lee> hello")),
        "the quote above the reply:\n{}",
        rows.join("\n")
    );
    screen.type_text(&format!("/edit {seq} mine now"));
    screen.key(KeyCode::Enter);
    screen.until_shows("error not_author: ").await;
    screen.until_shows(&format!("(edit of #{seq})")).await;
    // The same reaction again takes it back.
    screen.type_text(&format!("/react {seq} 👍"));
    screen.key(KeyCode::Enter);
    screen
        .until("the reaction gone", |rows| !has_reaction(rows))
        .await;

    // lee deletes the message: a tombstone, and the quote says so.
    lee.send_frame(&ClientFrame::Delete(chat_core::protocol::DeleteRequest {
        id: Some(RequestId(51)),
        room: "general".into(),
        seq,
        client_id: None,
    }))
    .await;
    let rows = screen.until_shows(&format!("#{seq} <lee> (deleted)")).await;
    assert!(
        rows.iter()
            .any(|r| r.contains(&format!("↪ #{seq} <lee> (deleted)"))),
        "{}",
        rows.join("\n")
    );
    assert!(
        !rows.iter().any(|r| r.contains("hello")),
        "the text is gone:\n{}",
        rows.join("\n")
    );
}
