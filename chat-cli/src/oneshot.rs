//! The script-friendly subcommands: `send`, `tail`, `history`, and the changes `edit`,
//! `delete`, `react` (and `send --reply-to`). Each opens its own
//! session, joins the room (creating it if new), does one thing, and exits with a code
//! from [`crate::exit`].

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use chat_core::client::{Client, ClientEvent, Command, Delivery};
use chat_core::protocol::Message;
use chat_core::{ClientMsgId, RequestId, RoomName, Seq, protocol::ErrorCode};
use tokio::time::{Instant, sleep_until};

use crate::changes::Change;
use crate::exit;
use crate::output;
use crate::sanitize::escape;
use crate::session::{Session, SessionEvent};

/// What every one-shot needs besides its own arguments.
#[derive(Debug, Clone)]
pub struct Common {
    /// When the name was not chosen explicitly: the base for another name if it is taken.
    pub fallback_name: Option<String>,
}

/// Handles what every one-shot handles alike: connection failures, a taken name, and
/// rejections of the hello or the join. Returns the client event, if the mode should see it.
fn common_event(
    session: &mut Session,
    event: SessionEvent,
    common: &Common,
    joins: &[RequestId],
) -> Result<Option<ClientEvent>, i32> {
    match event {
        SessionEvent::Failed { error } => {
            eprintln!("chat-cli: cannot connect: {}", escape(&error));
            Err(exit::CONNECTION)
        }
        SessionEvent::Disconnected { reason, retry_in } => {
            eprintln!(
                "chat-cli: disconnected ({}); reconnecting in {:.1}s",
                escape(&reason),
                retry_in.as_secs_f32()
            );
            Ok(None)
        }
        SessionEvent::Client(ClientEvent::Rejected {
            id,
            command,
            code,
            message,
        }) => {
            let hello = matches!(command, Some(Command::Hello));
            if hello
                && code == ErrorCode::NameTaken
                && let Some(base) = &common.fallback_name
            {
                let name = format!("{base}-{}", getrandom::u32().unwrap_or(7) % 1000);
                session.with(|c| c.retry_hello_as(name));
                return Ok(None);
            }
            let join = id.is_some_and(|id| joins.contains(&id));
            if hello || join || matches!(command, Some(Command::Join { .. })) {
                reject(code, &message);
                return Err(exit::REJECTED);
            }
            Ok(Some(ClientEvent::Rejected {
                id,
                command,
                code,
                message,
            }))
        }
        SessionEvent::Client(event) => Ok(Some(event)),
        _ => Ok(None),
    }
}

fn reject(code: ErrorCode, message: &str) {
    eprintln!("chat-cli: {code}: {}", escape(message));
}

/// Waits for the next session event or the deadline.
async fn next_or_timeout(
    session: &mut Session,
    deadline: Option<Instant>,
) -> Result<SessionEvent, i32> {
    tokio::select! {
        event = session.next() => event.ok_or(exit::CONNECTION),
        () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
            eprintln!("chat-cli: no answer from the server in time");
            Err(exit::TIMEOUT)
        }
    }
}

/// `send`: posts one message and prints `ROOM#SEQ` once the server has acknowledged it.
/// If the connection drops first, it reconnects and sends again with the same client id,
/// so the message is posted once.
pub async fn send(
    session: Session,
    common: Common,
    room: String,
    body: String,
    timeout: Duration,
) -> i32 {
    let post = |c: &mut Client, room: &str| c.send_to_room(room, &body);
    post_once(session, common, room, timeout, post, None).await
}

/// `edit`, `delete`, `react`, `send --reply-to`: does one [`Change`] to a message of
/// `room` and prints `ROOM#SEQ` (the change's seq; a reply's) once the server has
/// stored it. If the connection drops first, it reconnects and sends it again with the
/// same client id, so it is done once. A refusal (`not_author`, `gone`,
/// `no_such_message`, `edit_window_passed`, …) is printed as `chat-cli: CODE: message
/// (what in ROOM)` on stderr and exits with [`exit::REJECTED`].
pub async fn change(
    session: Session,
    common: Common,
    room: String,
    change: Change,
    timeout: Duration,
) -> i32 {
    let post = |c: &mut Client, room: &str| change.post(c, room, None);
    let what = Some(change.describe());
    post_once(session, common, room, timeout, post, what).await
}

/// Joins `room`, hands one post (`post`: a message or a change) to the client once
/// welcomed, and waits for its ack (prints `ROOM#SEQ`) or its refusal (printed, with
/// `what` it was when given). The client sends it again after a reconnect, with the same
/// client id, until then.
async fn post_once(
    mut session: Session,
    common: Common,
    room: String,
    timeout: Duration,
    post: impl Fn(&mut Client, &str) -> ClientMsgId,
    what: Option<String>,
) -> i32 {
    let deadline = Some(Instant::now() + timeout);
    let mut joins = Vec::new();
    let mut sent: Option<ClientMsgId> = None;
    loop {
        let event = match next_or_timeout(&mut session, deadline).await {
            Ok(event) => event,
            Err(code) => return code,
        };
        let event = match common_event(&mut session, event, &common, &joins) {
            Ok(Some(event)) => event,
            Ok(None) => continue,
            Err(code) => return code,
        };
        match event {
            ClientEvent::Welcome { resumed: false, .. } => {
                // The join goes first; the server handles frames in order. After a
                // reconnect the client rejoins and sends the post again by itself.
                joins.push(session.with(|c| c.join(&room)));
                sent = Some(session.with(|c| post(c, &room)));
            }
            ClientEvent::Acked {
                room,
                seq,
                client_id: Some(acked),
                ..
            } if Some(&acked) == sent.as_ref() => {
                println!("{}#{}", escape(room.as_str()), seq);
                return exit::OK;
            }
            ClientEvent::Rejected {
                command: Some(Command::Change { client_id, .. } | Command::Send { client_id, .. }),
                code,
                message,
                ..
            } if Some(&client_id) == sent.as_ref() => {
                match &what {
                    Some(what) => eprintln!(
                        "chat-cli: {code}: {} ({what} in {})",
                        escape(&message),
                        escape(&room)
                    ),
                    None => reject(code, &message),
                }
                return exit::REJECTED;
            }
            _ => {}
        }
    }
}

/// Options of `history`.
#[derive(Debug, Clone)]
pub struct HistoryArgs {
    /// The room.
    pub room: String,
    /// Page size.
    pub limit: Option<u32>,
    /// Only messages before this seq.
    pub before: Option<Seq>,
    /// JSON lines instead of plain lines.
    pub json: bool,
    /// How long to wait for the server.
    pub timeout: Duration,
}

/// `history`: prints one page of history, oldest first, each message in its current
/// state (edited, deleted, reactions, what it replies to; the page's change entries are
/// already part of it and not printed). When older messages exist, says on stderr which
/// `--before` gets the next page.
pub async fn history(mut session: Session, common: Common, args: HistoryArgs) -> i32 {
    let deadline = Some(Instant::now() + args.timeout);
    let mut joins = Vec::new();
    let mut request = None;
    loop {
        let event = match next_or_timeout(&mut session, deadline).await {
            Ok(event) => event,
            Err(code) => return code,
        };
        let event = match common_event(&mut session, event, &common, &joins) {
            Ok(Some(event)) => event,
            Ok(None) => continue,
            Err(code) => return code,
        };
        match event {
            ClientEvent::Welcome { resumed, .. } => {
                if !resumed {
                    joins.push(session.with(|c| c.join(&args.room)));
                }
                // (Again after a reconnect: the reply to the first request was lost.)
                request = Some(session.with(|c| c.history(&args.room, args.before, args.limit)));
            }
            ClientEvent::History {
                id,
                messages,
                has_more,
                ..
            } if id.is_some() && id == request => {
                let mut out = std::io::stdout().lock();
                for m in messages.iter().filter(|m| m.kind.is_message()) {
                    let _ = writeln!(out, "{}", line(m, args.json));
                }
                let _ = out.flush();
                if has_more && let Some(first) = messages.first() {
                    eprintln!("chat-cli: older messages: --before {}", first.seq);
                }
                return exit::OK;
            }
            ClientEvent::Rejected {
                id, code, message, ..
            } if id.is_some() && id == request => {
                reject(code, &message);
                return exit::REJECTED;
            }
            _ => {}
        }
    }
}

/// Options of `tail`.
#[derive(Debug, Clone)]
pub struct TailArgs {
    /// The room.
    pub room: String,
    /// Messages of history to print first.
    pub history: u32,
    /// Exit after this many messages (history included).
    pub count: Option<u64>,
    /// JSON lines instead of plain lines.
    pub json: bool,
}

/// `tail`: prints the last `history` messages, then every new message as it arrives,
/// across reconnects (resumed from the last seq: nothing missed, nothing twice).
pub async fn tail(mut session: Session, common: Common, args: TailArgs) -> i32 {
    let mut joins = Vec::new();
    let mut room: Option<RoomName> = None;
    let mut printed = 0u64;
    let mut welcomes = 0u32;
    // History pages being fetched (newest first), and live messages held back meanwhile.
    let mut fetching: Option<Fetch> = None;
    let mut held: Vec<Arc<Message>> = Vec::new();
    // The server's largest page, from `welcome.limits` (which comes before any request).
    let mut page_max = u32::MAX;
    if args.count == Some(0) {
        return exit::OK;
    }
    loop {
        let event = match next_or_timeout(&mut session, None).await {
            Ok(event) => event,
            Err(code) => return code,
        };
        let event = match common_event(&mut session, event, &common, &joins) {
            Ok(Some(event)) => event,
            Ok(None) => continue,
            Err(code) => return code,
        };
        let mut to_print: Vec<Arc<Message>> = Vec::new();
        match event {
            ClientEvent::Welcome {
                resumed,
                epoch_changed,
                limits,
                ..
            } => {
                welcomes += 1;
                page_max = u32::try_from(limits.history_page_max)
                    .unwrap_or(u32::MAX)
                    .max(1);
                if !resumed {
                    joins.push(session.with(|c| c.join(&args.room)));
                }
                if epoch_changed {
                    eprintln!("chat-cli: the server's history was reset; messages may be missing");
                }
                if let Some(fetch) = &mut fetching {
                    // The page asked for on the lost connection: ask again.
                    fetch.request = Some(session.with(|c| {
                        c.history(
                            fetch.room.as_str(),
                            Some(fetch.before),
                            Some(fetch.limit(page_max)),
                        )
                    }));
                }
            }
            ClientEvent::Joined {
                id,
                room: name,
                gap,
                last_seq,
                ..
            } => {
                let ours = id.is_some_and(|id| joins.contains(&id)) || room.as_ref() == Some(&name);
                if !ours {
                    continue;
                }
                if gap && room.is_some() {
                    eprintln!(
                        "chat-cli: some messages of {} are no longer available",
                        escape(name.as_str())
                    );
                }
                if room.is_none() && args.history > 0 && last_seq > Seq(0) {
                    let mut fetch = Fetch {
                        room: name.clone(),
                        before: last_seq.next(),
                        wanted: args.history,
                        pages: Vec::new(),
                        request: None,
                    };
                    fetch.request = Some(session.with(|c| {
                        c.history(
                            name.as_str(),
                            Some(fetch.before),
                            Some(fetch.limit(page_max)),
                        )
                    }));
                    fetching = Some(fetch);
                }
                room = Some(name);
            }
            ClientEvent::History {
                id,
                messages,
                has_more,
                ..
            } => {
                let Some(fetch) = fetching
                    .as_mut()
                    .filter(|f| f.request.is_some() && f.request == id)
                else {
                    continue;
                };
                let got = messages.iter().filter(|m| m.kind.is_message()).count();
                fetch.wanted = fetch
                    .wanted
                    .saturating_sub(u32::try_from(got).unwrap_or(u32::MAX));
                let oldest = messages.first().map(|m| m.seq);
                fetch.pages.push(messages);
                match oldest {
                    Some(oldest) if has_more && fetch.wanted > 0 => {
                        fetch.before = oldest;
                        fetch.request = Some(session.with(|c| {
                            c.history(
                                fetch.room.as_str(),
                                Some(fetch.before),
                                Some(fetch.limit(page_max)),
                            )
                        }));
                    }
                    _ => {
                        // Pages hold messages in their current state: their change
                        // entries are not news.
                        let fetch = fetching.take().expect("fetching");
                        to_print.extend(
                            fetch
                                .pages
                                .into_iter()
                                .rev()
                                .flatten()
                                .filter(|m| m.kind.is_message()),
                        );
                        to_print.append(&mut held);
                    }
                }
            }
            ClientEvent::Rejected {
                id, code, message, ..
            } if fetching
                .as_ref()
                .is_some_and(|f| f.request.is_some() && f.request == id) =>
            {
                reject(code, &message);
                return exit::REJECTED;
            }
            ClientEvent::Message {
                message, delivery, ..
            } => {
                // The backlog of the first join is replaced by --history; after a
                // reconnect everything the resume brings is news.
                let news = delivery != Delivery::Backlog || welcomes > 1;
                if news && room.as_ref() == Some(&message.room) {
                    if fetching.is_some() {
                        held.push(message);
                    } else {
                        to_print.push(message);
                    }
                }
            }
            _ => {}
        }
        if !to_print.is_empty() {
            let mut out = std::io::stdout().lock();
            for m in to_print {
                if writeln!(out, "{}", line(&m, args.json)).is_err() {
                    // Whoever read the output is gone (`tail | head -1`): done.
                    return exit::OK;
                }
                // Changes (edits, deletes, reactions) are printed, but `--count`
                // counts messages.
                if !m.kind.is_message() {
                    continue;
                }
                printed += 1;
                if args.count.is_some_and(|n| printed >= n) {
                    let _ = out.flush();
                    return exit::OK;
                }
            }
            if out.flush().is_err() {
                return exit::OK;
            }
        }
    }
}

#[derive(Debug)]
struct Fetch {
    room: RoomName,
    before: Seq,
    wanted: u32,
    pages: Vec<Vec<Arc<Message>>>,
    request: Option<RequestId>,
}

impl Fetch {
    fn limit(&self, page_max: u32) -> u32 {
        self.wanted.clamp(1, page_max)
    }
}

fn line(message: &Message, json: bool) -> String {
    if json {
        output::json(message)
    } else {
        output::plain(message)
    }
}
