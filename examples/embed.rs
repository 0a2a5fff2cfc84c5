//! Embedding the chat engine in-process: two users, alice and bob, chat through a
//! `chat_core::Server` with no network and no async runtime. This is the whole contract a
//! transport adapter implements: feed an `Input`, drain every `Output`, re-arm the timer
//! from `poll_timeout`. Each frame a client receives is printed as a line of the
//! conversation.
//!
//! Run with:
//!
//! ```text
//! cargo run --example embed
//! ```

use chat_core::protocol::{HelloRequest, SendRequest};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chat_core::protocol::{ClientFrame, ServerFrame, format_ts};
use chat_core::{Config, Input, Now, Output, RoomName, Server, SessionId};

fn main() {
    let mut chat = InProcess::new(Config::default());
    let alice = chat.connect("alice");
    let bob = chat.connect("bob");

    // Each client introduces itself; both land in the default room, `general`.
    chat.say(alice, hello("alice"));
    chat.say(bob, hello("bob"));

    chat.pass(Duration::from_millis(1200));
    chat.say(alice, typing("general", true));
    chat.pass(Duration::from_millis(800));
    chat.say(
        alice,
        send(1, Some("general"), None, "hi bob, welcome to general"),
    );
    chat.pass(Duration::from_millis(1500));
    chat.say(
        bob,
        send(
            1,
            Some("general"),
            None,
            "thanks! is this really in-process?",
        ),
    );
    chat.pass(Duration::from_millis(700));
    chat.say(
        alice,
        send(2, Some("general"), None, "yes: no sockets, no threads"),
    );

    // A direct message goes to the room `@alice,bob`, seen by both users only.
    chat.pass(Duration::from_millis(400));
    chat.say(bob, send(2, None, Some("alice"), "psst, a direct message"));

    // Bob leaves: alice is told at once.
    chat.pass(Duration::from_secs(1));
    chat.say(
        bob,
        ClientFrame::Leave {
            id: Some(chat_core::RequestId(3)),
            room: "general".into(),
        },
    );

    // Alice closes her tab: nobody is left to see it, but her name stays held for the
    // presence grace period (5 s), then the server forgets her.
    chat.disconnect(alice);
    chat.pass(Duration::from_secs(6));

    chat.shutdown();
}

/// A toy driver: one server, several "connections" that just print what they receive,
/// and a simulated clock (a real driver reads the clock and sleeps until `poll_timeout`).
struct InProcess {
    server: Server,
    now: Now,
    names: BTreeMap<SessionId, &'static str>,
    next_session: u64,
}

impl InProcess {
    fn new(config: Config) -> Self {
        InProcess {
            server: Server::new(config),
            now: Now::new(Instant::now(), chrono::Utc::now()),
            names: BTreeMap::new(),
            next_session: 1,
        }
    }

    fn connect(&mut self, name: &'static str) -> SessionId {
        let session = SessionId(self.next_session);
        self.next_session += 1;
        self.names.insert(session, name);
        self.input(Input::Connected { session });
        session
    }

    fn disconnect(&mut self, session: SessionId) {
        println!("{:>5} ~ closes the connection", self.names[&session]);
        self.input(Input::Disconnected { session });
    }

    /// A client sends a frame. A network adapter would `protocol::decode` the text first.
    fn say(&mut self, session: SessionId, frame: ClientFrame) {
        self.input(Input::Received {
            session,
            frame: Ok(frame),
        });
    }

    /// Lets time pass, firing the server's timers (presence grace, typing expiry) when due.
    fn pass(&mut self, d: Duration) {
        let until = self.now.advance(d);
        while let Some(at) = self.server.poll_timeout().filter(|at| *at <= until.mono) {
            self.now = self
                .now
                .advance(at.saturating_duration_since(self.now.mono));
            self.server.handle_timeout(self.now);
            self.drain();
        }
        self.now = until;
    }

    fn shutdown(&mut self) {
        println!("   -- the host shuts the server down --");
        self.server.shutdown(self.now);
        self.drain();
    }

    fn input(&mut self, input: Input) {
        self.server
            .handle_input(self.now, input)
            .expect("this driver follows the API contract");
        self.drain();
    }

    /// Does what the server asks: here, "deliver" frames by printing them.
    fn drain(&mut self) {
        while let Some(output) = self.server.poll_output() {
            match output {
                Output::Send { .. } | Output::Broadcast { .. } => {
                    // A room event is one output: `frame` is encoded once and shared by
                    // every recipient; a network driver writes `frame.bytes()` to each
                    // socket as a text frame.
                    for (to, frame) in output.sends() {
                        let frame = frame.decode().expect("the server sends valid frames");
                        println!("{:>5} < {}", self.names[&to], render(&frame));
                    }
                }
                Output::Close { session, reason } => {
                    println!(
                        "{:>5} < connection closed: {} {}",
                        self.names[&session],
                        reason.ws_code(),
                        reason.as_str()
                    );
                }
                Output::Drained => println!("   -- drained: every session was told to go --"),
                // Persistence, host authentication and events are off or unused here.
                _ => {}
            }
        }
    }
}

fn hello(name: &str) -> ClientFrame {
    ClientFrame::Hello(HelloRequest {
        id: None,
        version: chat_core::protocol::PROTOCOL_VERSION,
        name: name.into(),
        token: None,
        rooms: None,
    })
}

fn send(id: u64, room: Option<&str>, to: Option<&str>, body: &str) -> ClientFrame {
    ClientFrame::Send(SendRequest {
        id: Some(chat_core::RequestId(id)),
        room: room.map(Into::into),
        to: to.map(Into::into),
        body: body.into(),
        client_id: None,
        reply_to: None,
    })
}

fn typing(room: &str, active: bool) -> ClientFrame {
    ClientFrame::Typing {
        room: room.into(),
        active,
    }
}

/// `#general` for a public room, `@alice,bob` for a direct-message room.
fn at(room: &RoomName) -> String {
    if room.direct_users().is_some() {
        room.to_string()
    } else {
        format!("#{room}")
    }
}

/// One line per frame, the way a chat window would show it.
fn render(frame: &ServerFrame) -> String {
    match frame {
        ServerFrame::Welcome { user, session, .. } => {
            format!("welcome, {user} (session {session})")
        }
        ServerFrame::Joined {
            room,
            members,
            messages,
            ..
        } => {
            let members: Vec<&str> = members.iter().map(|m| m.as_str()).collect();
            format!(
                "you are in {} with {} ({} earlier messages)",
                at(room),
                members.join(", "),
                messages.len()
            )
        }
        ServerFrame::Left { room, .. } => format!("you left {}", at(room)),
        ServerFrame::Message(m) => format!(
            "[{}] {} <{}> {}",
            &format_ts(&m.ts)[11..23],
            at(&m.room),
            m.user,
            m.body
        ),
        ServerFrame::Ack { seq, room, .. } => format!("(sent: {} seq {seq})", at(room)),
        ServerFrame::UserJoined { room, user, .. } => format!("* {user} joined {}", at(room)),
        ServerFrame::UserLeft { room, user, .. } => format!("* {user} left {}", at(room)),
        ServerFrame::Typing {
            room,
            user,
            active: true,
        } => format!("* {user} is typing in {}…", at(room)),
        ServerFrame::Typing { .. } => String::from("* (typing stopped)"),
        ServerFrame::Error { code, message, .. } => format!("error {code}: {message}"),
        ServerFrame::Goodbye {
            reason,
            retry_after_ms,
        } => format!("goodbye: {reason} (reconnect in {retry_after_ms} ms)"),
        other => format!("{other:?}"),
    }
}
