//! The line mode used when stdin or stdout is not a terminal: every line read from stdin
//! is sent as a message (lines starting with `/` are commands, as in the full-screen
//! client), and what happens in the rooms is printed as plain, escaped lines:
//!
//! ```text
//! 12:00:01 [general] <alice> hi
//! 12:00:02 [general] * bob joined
//! ```
//!
//! At the end of input it waits until every message is acknowledged, then exits.

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::time::Duration;

use chat_core::client::{ClientEvent, Command, Delivery, MessageChange, Pacer, Target};
use chat_core::{RoomName, protocol::ErrorCode};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::changes::Change;
use crate::commands::{self, HELP};
use crate::exit;
use crate::output::{clock, plain_in_room};
use crate::requests::Asked;
use crate::sanitize::escape;
use crate::session::{Session, SessionEvent};

/// How long to wait for the last acks after the end of input.
const DRAIN: Duration = Duration::from_secs(10);

/// Runs the line mode. Returns the exit code: 0, or [`exit::REJECTED`] when the server
/// refused a message, [`exit::CONNECTION`] when it could not be reached,
/// [`exit::TIMEOUT`] when messages were still unacknowledged long after the input ended.
pub async fn run(mut session: Session, fallback_name: Option<String>) -> i32 {
    let mut lines = stdin_lines();
    let mut out = std::io::stdout().lock();
    let mut room: Option<RoomName> = None;
    let mut queue: VecDeque<String> = VecDeque::new();
    // Paced to the flood control the server announced, so a piped file is not refused.
    let mut pacer = Pacer::new();
    let mut paced_until: Option<Instant> = None;
    // A send the server still refused as rate limited (its clock and ours never agree
    // to the millisecond): sent again before anything else, so lines keep their order.
    let mut retry: Option<(Target, String)> = None;
    let mut asked: Asked<&'static str> = Asked::default();
    let mut eof = false;
    let mut eof_deadline = None;
    let mut code = exit::OK;
    loop {
        // Send what is queued, as fast as the server's flood control allows, one line
        // at a time: the next goes once the last is acknowledged, so a refusal can be
        // retried in order.
        while room.is_some()
            && session.client().limits().is_some()
            && (retry.is_some() || !queue.is_empty())
            && session.client().pending_sends() == 0
            && paced_until.is_none()
        {
            let limits = session.client().limits().cloned().expect("checked");
            if let Err(wait) = pacer.take(&limits, Instant::now().into_std()) {
                // A server that allows no sends at all: check again now and then.
                paced_until = Some(Instant::now() + wait.min(Duration::from_secs(60)));
                break;
            }
            if let Some((target, body)) = retry.take() {
                session.with(|c| c.send(target, &body));
                continue;
            }
            let line = queue.pop_front().expect("not empty");
            let target = room.clone().expect("checked");
            if command(&mut session, &line, &target, &mut room, &mut asked) == Some(true) {
                queue.clear();
                eof = true;
            }
        }
        if eof
            && queue.is_empty()
            && retry.is_none()
            && session.client().pending_sends() == 0
            && asked.is_empty()
        {
            break;
        }
        if eof && eof_deadline.is_none() {
            eof_deadline = Some(Instant::now() + DRAIN);
        }
        tokio::select! {
            line = lines.recv(), if !eof => match line {
                Some(line) => queue.push_back(line),
                None => eof = true,
            },
            event = session.next() => {
                let Some(event) = event else { break };
                match event {
                    SessionEvent::Failed { error } => {
                        eprintln!("chat-cli: cannot connect: {}", escape(&error));
                        return exit::CONNECTION;
                    }
                    SessionEvent::Disconnected { reason, retry_in } => {
                        eprintln!(
                            "chat-cli: disconnected ({}); reconnecting in {:.1}s",
                            escape(&reason),
                            retry_in.as_secs_f32()
                        );
                    }
                    SessionEvent::Client(ClientEvent::Rejected {
                        code: ErrorCode::RateLimited,
                        command: Some(Command::Send { target, body, .. }),
                        ..
                    }) => {
                        // Not posted: send it again once the server's bucket has a token.
                        let per_second = session
                            .client()
                            .limits()
                            .map_or(1, |l| l.sends_per_second.max(1));
                        let wait = Duration::from_millis(1000 / u64::from(per_second) + 1);
                        paced_until = Some(Instant::now() + wait);
                        retry = Some((target, body));
                    }
                    SessionEvent::Client(event) => {
                        if let Some(c) = print_event(&mut out, &event, &mut room, &mut asked, &mut session, fallback_name.as_deref()) {
                            code = c;
                        }
                    }
                    _ => {}
                }
            }
            () = sleep_until(paced_until.unwrap_or_else(Instant::now)), if paced_until.is_some() => {
                paced_until = None;
            }
            () = sleep_until(eof_deadline.unwrap_or_else(Instant::now)), if eof_deadline.is_some() => {
                eprintln!(
                    "chat-cli: {} message(s) not acknowledged",
                    session.client().pending_sends()
                );
                return exit::TIMEOUT;
            }
        }
        if out.flush().is_err() {
            // Whoever read the output is gone: stop (what was sent is sent).
            break;
        }
    }
    let _ = out.flush();
    code
}

/// Acts on one input line. `Some(true)` means quit.
fn command(
    session: &mut Session,
    line: &str,
    target: &RoomName,
    room: &mut Option<RoomName>,
    asked: &mut Asked<&'static str>,
) -> Option<bool> {
    let parsed = match commands::parse(line) {
        Ok(parsed) => parsed,
        Err(usage) => {
            eprintln!("chat-cli: {usage}");
            return None;
        }
    };
    match parsed {
        commands::Line::Nothing => {}
        commands::Line::Say(text) => {
            session.with(|c| c.send_to_room(target.as_str(), &text));
        }
        commands::Line::Msg { user, text } => {
            session.with(|c| c.send_to_user(&user, &text));
        }
        commands::Line::Join(name) => {
            let id = session.with(|c| c.join(&name));
            asked.insert(id, "join");
        }
        commands::Line::Leave(name) => {
            let name = name.unwrap_or_else(|| target.as_str().to_owned());
            session.with(|c| c.leave(&name));
            if room.is_some() && *room == RoomName::key_of(&name) {
                // Later lines go to another room this client is in, if any.
                *room = session
                    .client()
                    .rooms()
                    .find(|(_, s)| s.is_member())
                    .map(|(n, _)| n.clone());
            }
        }
        commands::Line::Rooms => {
            let id = session.with(|c| c.list_rooms());
            asked.insert(id, "rooms");
        }
        commands::Line::Who => {
            let id = session.with(|c| c.members(target.as_str()));
            asked.insert(id, "who");
        }
        commands::Line::More => {
            let id = session.with(|c| c.more_members(target.as_str()));
            asked.insert(id, "who");
        }
        commands::Line::History(n) => {
            let id = session.with(|c| c.history(target.as_str(), None, n));
            asked.insert(id, "history");
        }
        commands::Line::Moderate(action) => {
            let id = session.with(|c| c.moderate(target.as_str(), action));
            asked.insert(id, "moderate");
        }
        commands::Line::Edit { seq, text } => {
            post(
                session,
                target,
                &Change::Message(MessageChange::Edit { seq, body: text }),
            );
        }
        commands::Line::Delete(seq) => post(
            session,
            target,
            &Change::Message(MessageChange::Delete { seq }),
        ),
        // This mode keeps no messages, so it cannot tell whether the reaction is there:
        // `/react` always adds.
        commands::Line::React { seq, emoji } => {
            post(
                session,
                target,
                &Change::Message(MessageChange::React {
                    seq,
                    emoji,
                    on: true,
                }),
            );
        }
        commands::Line::Reply { seq, text } => post(
            session,
            target,
            &Change::Reply {
                reply_to: seq,
                body: text,
            },
        ),
        commands::Line::Help => {
            for line in HELP {
                println!("{line}");
            }
        }
        commands::Line::Quit => return Some(true),
    }
    Some(false)
}

/// Prints an event. Returns an exit code to remember (a rejection).
fn print_event(
    out: &mut impl Write,
    event: &ClientEvent,
    room: &mut Option<RoomName>,
    asked: &mut Asked<&'static str>,
    session: &mut Session,
    fallback_name: Option<&str>,
) -> Option<i32> {
    let answers = asked.answer(event);
    match event {
        // Later lines go to the room joined first, then to each room the user joins.
        ClientEvent::Joined { room: name, .. } if room.is_none() || answers.is_some() => {
            *room = Some(name.clone());
        }
        // Messages, and changes to them (edits, deletes, reactions) as lines of their
        // own: "edited #4: text".
        ClientEvent::Message {
            message, delivery, ..
        } if *delivery != Delivery::Backlog => {
            let _ = writeln!(out, "{}", plain_in_room(message));
        }
        ClientEvent::Presence {
            room,
            joins,
            leaves,
            ..
        } => {
            // Version 2 says when the tick was sent, not when each came or went.
            let now = chrono::Utc::now();
            for (user, what) in joins
                .iter()
                .map(|u| (u, "joined"))
                .chain(leaves.iter().map(|u| (u, "left")))
            {
                let _ = writeln!(
                    out,
                    "{} [{}] * {} {what}",
                    clock(&now),
                    escape(room.as_str()),
                    escape(user.as_str())
                );
            }
        }
        ClientEvent::UserJoined { room, user, ts } => {
            let _ = writeln!(
                out,
                "{} [{}] * {} joined",
                clock(ts),
                escape(room.as_str()),
                escape(user.as_str())
            );
        }
        ClientEvent::UserLeft { room, user, ts } => {
            let _ = writeln!(
                out,
                "{} [{}] * {} left",
                clock(ts),
                escape(room.as_str()),
                escape(user.as_str())
            );
        }
        ClientEvent::History { messages, .. } => {
            // Messages in their current state: the page's change entries are part of it.
            for m in messages.iter().filter(|m| m.kind.is_message()) {
                let _ = writeln!(out, "{}", plain_in_room(m));
            }
        }
        ClientEvent::Rooms { rooms, .. } => {
            for r in rooms {
                let _ = writeln!(out, "* room {} ({})", escape(r.name.as_str()), r.members);
            }
        }
        ClientEvent::Members {
            room,
            members,
            count,
            more,
            ..
        } => {
            let names: Vec<String> = members
                .iter()
                .map(|m| escape(m.as_str()).into_owned())
                .collect();
            let more = match count {
                Some(count) if *more => format!(" ({} of {count}; /more for more)", members.len()),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "* in {}: {}{more}",
                escape(room.as_str()),
                names.join(", ")
            );
        }
        ClientEvent::Rejected {
            command,
            code,
            message,
            ..
        } => {
            if *code == ErrorCode::NameTaken
                && matches!(command, Some(Command::Hello))
                && let Some(base) = fallback_name
            {
                let name = format!("{base}-{}", getrandom::u32().unwrap_or(7) % 1000);
                session.with(|c| c.retry_hello_as(name));
                return None;
            }
            eprintln!("chat-cli: {code}: {}", escape(message));
            if matches!(command, Some(Command::Hello)) {
                // Without a welcome nothing can be sent.
                std::process::exit(exit::REJECTED);
            }
            return Some(exit::REJECTED);
        }
        ClientEvent::Goodbye { reason, .. } => {
            eprintln!("chat-cli: server: {}", escape(reason));
        }
        ClientEvent::Moderated { .. }
        | ClientEvent::Topic { .. }
        | ClientEvent::SlowMode { .. }
        | ClientEvent::Done { .. } => {
            if let Some((room, text)) = crate::output::moderation_notice(event) {
                let now = chrono::Utc::now();
                let _ = writeln!(out, "{} [{}] * {text}", clock(&now), escape(room.as_str()));
            }
        }
        _ => {}
    }
    None
}

/// Lines of stdin, read on a thread of their own (a blocking read must not hold up the
/// runtime's shutdown). The channel closes at the end of input.
fn stdin_lines() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Hands a change to a message of `room` to the client, which sends it (after the next
/// welcome when not connected) until it is acknowledged; a refusal comes back as an
/// error line.
fn post(session: &mut Session, room: &RoomName, change: &Change) {
    session.with(|c| change.post(c, room.as_str(), None));
}
