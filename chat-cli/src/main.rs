//! `chat-cli`: the terminal chat client. See `chat-cli --help`.

use std::io::IsTerminal;
use std::time::Duration;

use chat_cli::changes::Change;
use chat_cli::net::{NetOptions, Reconnect};
use chat_cli::oneshot::{self, Common};
use chat_cli::session::Session;
use chat_cli::tokens::TokenCache;
use chat_cli::{DEFAULT_URL, exit, plain, tui, ui};
use chat_core::client::{ClientConfig, MessageChange};
use chat_core::{Seq, UserName};
use clap::{Args, Parser, Subcommand};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const EXIT_CODES: &str = "\
Exit codes:
  0    success
  1    rejected by the server (its error code and message are printed on stderr)
  2    usage error (bad option or argument, invalid URL)
  3    connection failed (nothing listening, handshake refused, connection lost)
  4    timed out waiting for the server (--timeout)
  130  interrupted (Ctrl-C)";

const MAIN_EXAMPLES: &str = "\
Examples:
  chat-cli --name alice                    full-screen chat in room general
  chat-cli --name alice --room rust        start in room rust
  CHAT_URL=ws://chat.example:5000/ws chat-cli
  echo 'build finished' | chat-cli --name ci --room builds
                                           not a terminal: each line is sent as a message
  chat-cli send --room general hello       one message, prints ROOM#SEQ
  chat-cli tail --room general --json      follow a room as JSON lines
  chat-cli history --room general --limit 20
  chat-cli edit --room general 42 'fixed text'   change your message #42
  chat-cli react --room general 42 👍           react to #42 (--off takes it back)

In the full-screen chat, type /help for commands and keys.";

const SEND_EXAMPLES: &str = "\
Examples:
  chat-cli --name deploybot send --room ops 'deploy 1.4.2 done'
  echo 'multi-word from a pipe' | chat-cli send --room ops
  seq=$(chat-cli send --room ops hi) && echo \"posted as $seq\"   # ops#42

  chat-cli send --room ops --reply-to 42 'on it'             answers message #42

Prints ROOM#SEQ (the room as the server normalized it and the message's sequence
number) once the server has stored the message. On rejection prints `CODE: message`
on stderr and exits 1.";

const CHANGE_EXAMPLES: &str = "\
Examples:
  chat-cli --name alice edit --room general 42 'hello world'
  chat-cli --name alice delete --room general 42
  chat-cli --name bob react --room general 42 👍
  chat-cli --name bob react --room general 42 👍 --off

SEQ is the message's sequence number (what `send` printed after the #, or `seq` in
`history --json`). Prints ROOM#SEQ of the change once the server has stored it. The
server refuses, with `CODE: message` on stderr and exit code 1: someone else's
message (not_author; a room's moderators and owners may delete any), a deleted one
(gone), an unknown or too old seq (no_such_message), an edit after the edit window
(edit_window_passed), more than one emoji (limit_reached, invalid_emoji).";

const TAIL_EXAMPLES: &str = "\
Examples:
  chat-cli tail --room general                     new messages as they arrive
  chat-cli tail --room general --history 20        the last 20 first
  chat-cli tail --room general --count 1 --json    wait for the next message, as JSON
  chat-cli tail --room ops --json | jq -r .body

Plain lines are `HH:MM:SS <user> body` (local time); --json lines are objects with
room, seq, ts (RFC 3339, UTC), user, body (and client_id when the author sent one,
reply_to for a reply). Edits, deletes and reactions come as their own lines:
`HH:MM:SS <user> edited #SEQ: text`, `deleted #SEQ`, `reacted 👍 to #SEQ`; in JSON
with kind, target (and emoji, on). --count counts messages only.
When the connection drops, tail reconnects and resumes after the last message it
printed: nothing is missed or printed twice.";

const HISTORY_EXAMPLES: &str = "\
Examples:
  chat-cli history --room general                  the latest 50 messages
  chat-cli history --room general --limit 10 --before 120
  chat-cli history --room general --json > general.jsonl

Messages are printed oldest first, each as it is now: `(edited)` after an edited
text, `(deleted)` for a deleted message, `↪#SEQ` before a reply, reactions after it as
`[👍 alice, bob]`. --json objects carry edited_at, deleted, reactions
([{emoji, users}]) and reply_to when the message has them. When older ones exist,
stderr says which --before fetches the previous page.";

/// A terminal chat client: full-screen chat for people, one-shot commands for scripts.
#[derive(Debug, Parser)]
#[command(
    name = "chat-cli",
    version,
    after_help = MAIN_EXAMPLES,
    after_long_help = format!("{MAIN_EXAMPLES}\n\n{EXIT_CODES}"),
)]
struct Cli {
    /// WebSocket URL of the chat server.
    #[arg(long, env = "CHAT_URL", default_value = DEFAULT_URL, global = true)]
    url: String,
    /// Your user name [default: $USER, or "guest"; another is picked if it is taken].
    #[arg(long, env = "CHAT_NAME", global = true)]
    name: Option<String>,
    /// A token from an earlier session, to be the same user in several places (or the
    /// credentials a host-authenticated server expects).
    #[arg(long, env = "CHAT_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Room to open (the server's default rooms when absent).
    #[arg(long, value_name = "ROOM")]
    room: Option<String>,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Send one message and print ROOM#SEQ once the server has acknowledged it.
    #[command(after_help = SEND_EXAMPLES, after_long_help = format!("{SEND_EXAMPLES}\n\n{EXIT_CODES}"))]
    Send(SendArgs),
    /// Print a room's messages as they arrive (after some history, if asked).
    #[command(after_help = TAIL_EXAMPLES, after_long_help = format!("{TAIL_EXAMPLES}\n\n{EXIT_CODES}"))]
    Tail(TailArgs),
    /// Print a page of a room's history, oldest first.
    #[command(after_help = HISTORY_EXAMPLES, after_long_help = format!("{HISTORY_EXAMPLES}\n\n{EXIT_CODES}"))]
    History(HistoryArgs),
    /// Change the text of one of your messages and print ROOM#SEQ of the edit.
    #[command(after_help = CHANGE_EXAMPLES, after_long_help = format!("{CHANGE_EXAMPLES}\n\n{EXIT_CODES}"))]
    Edit(EditArgs),
    /// Delete a message (yours; any as the room's moderator) and print ROOM#SEQ of the delete.
    #[command(after_help = CHANGE_EXAMPLES, after_long_help = format!("{CHANGE_EXAMPLES}\n\n{EXIT_CODES}"))]
    Delete(DeleteArgs),
    /// React to a message with an emoji (or take the reaction back with --off).
    #[command(after_help = CHANGE_EXAMPLES, after_long_help = format!("{CHANGE_EXAMPLES}\n\n{EXIT_CODES}"))]
    React(ReactArgs),
}

#[derive(Debug, Args)]
struct EditArgs {
    /// The room of the message.
    #[arg(long, value_name = "ROOM")]
    room: String,
    /// The message's sequence number.
    #[arg(value_name = "SEQ")]
    seq: u64,
    /// The new text; words are joined with spaces. Read from stdin when absent.
    #[arg(
        value_name = "TEXT",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    text: Vec<String>,
    /// Seconds to wait for the server's acknowledgement.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    timeout: f64,
}

#[derive(Debug, Args)]
struct DeleteArgs {
    /// The room of the message.
    #[arg(long, value_name = "ROOM")]
    room: String,
    /// The message's sequence number.
    #[arg(value_name = "SEQ")]
    seq: u64,
    /// Seconds to wait for the server's acknowledgement.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    timeout: f64,
}

#[derive(Debug, Args)]
struct ReactArgs {
    /// The room of the message.
    #[arg(long, value_name = "ROOM")]
    room: String,
    /// The message's sequence number.
    #[arg(value_name = "SEQ")]
    seq: u64,
    /// One emoji.
    #[arg(value_name = "EMOJI")]
    emoji: String,
    /// Take your reaction with EMOJI back instead of adding it.
    #[arg(long)]
    off: bool,
    /// Seconds to wait for the server's acknowledgement.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    timeout: f64,
}

#[derive(Debug, Args)]
struct SendArgs {
    /// The room (joined first; created if new).
    #[arg(long, value_name = "ROOM")]
    room: String,
    /// Seconds to wait for the server's acknowledgement.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    timeout: f64,
    /// Answer the message with this sequence number (of the same room).
    #[arg(long, value_name = "SEQ")]
    reply_to: Option<u64>,
    /// The message; words are joined with spaces. Read from stdin when absent.
    #[arg(
        value_name = "TEXT",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    text: Vec<String>,
}

#[derive(Debug, Args)]
struct TailArgs {
    /// The room (joined first; created if new).
    #[arg(long, value_name = "ROOM")]
    room: String,
    /// Print the last N messages first.
    #[arg(long, default_value_t = 0, value_name = "N")]
    history: u32,
    /// Exit after printing N messages (history included).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct HistoryArgs {
    /// The room (joined first; created if new).
    #[arg(long, value_name = "ROOM")]
    room: String,
    /// How many messages (at most the server's page size, 1000 by default).
    #[arg(long, default_value_t = 50, value_name = "N")]
    limit: u32,
    /// Only messages with a smaller seq (to page back).
    #[arg(long, value_name = "SEQ")]
    before: Option<u64>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for the server.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    timeout: f64,
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let code = runtime.block_on(run(cli));
    std::process::exit(code);
}

fn usage(message: &str) -> i32 {
    eprintln!("chat-cli: {message}\n\nFor more information, try '--help'.");
    exit::USAGE
}

fn timeout(secs: f64) -> Option<Duration> {
    (secs.is_finite() && secs > 0.0).then(|| Duration::from_secs_f64(secs))
}

async fn run(cli: Cli) -> i32 {
    if let Err(e) = cli.url.as_str().into_client_request() {
        return usage(&format!("invalid --url {:?}: {e}", cli.url));
    }
    if !cli.url.starts_with("ws://") {
        return usage(&format!(
            "invalid --url {:?}: expected ws://HOST:PORT/PATH (wss:// is not supported; put a TLS proxy in front)",
            cli.url
        ));
    }
    let (name, fallback_name) = match &cli.name {
        Some(name) => (name.clone(), None),
        None => {
            let name = default_name();
            (name.clone(), Some(name))
        }
    };
    let common = Common {
        fallback_name: fallback_name.clone(),
    };
    let prefix = format!(
        "{:016x}",
        getrandom::u64().unwrap_or_else(|_| u64::from(std::process::id()))
    );
    let config = |rooms: Option<Vec<String>>| ClientConfig {
        name: name.clone(),
        token: cli.token.clone(),
        rooms,
        client_id_prefix: prefix.clone(),
    };
    match cli.command {
        Some(Sub::Send(args)) => {
            let Some(limit) = timeout(args.timeout) else {
                return usage("--timeout must be a positive number of seconds");
            };
            let Some(body) = text_or_stdin(args.text) else {
                return usage("stdin is not text");
            };
            let session = Session::start_with_tokens(
                NetOptions::new(&cli.url, Reconnect::AfterFirst),
                config(Some(vec![])),
                TokenCache::default_location(),
            );
            match args.reply_to {
                Some(seq) => {
                    let reply = Change::Reply {
                        reply_to: Seq(seq),
                        body,
                    };
                    interruptible(oneshot::change(session, common, args.room, reply, limit)).await
                }
                None => interruptible(oneshot::send(session, common, args.room, body, limit)).await,
            }
        }
        Some(Sub::Edit(args)) => {
            let Some(body) = text_or_stdin(args.text) else {
                return usage("stdin is not text");
            };
            let edit = Change::Message(MessageChange::Edit {
                seq: Seq(args.seq),
                body,
            });
            one_change(
                &cli.url,
                config(Some(vec![])),
                common,
                args.room,
                edit,
                args.timeout,
            )
            .await
        }
        Some(Sub::Delete(args)) => {
            let delete = Change::Message(MessageChange::Delete { seq: Seq(args.seq) });
            one_change(
                &cli.url,
                config(Some(vec![])),
                common,
                args.room,
                delete,
                args.timeout,
            )
            .await
        }
        Some(Sub::React(args)) => {
            let react = Change::Message(MessageChange::React {
                seq: Seq(args.seq),
                emoji: args.emoji,
                on: !args.off,
            });
            one_change(
                &cli.url,
                config(Some(vec![])),
                common,
                args.room,
                react,
                args.timeout,
            )
            .await
        }
        Some(Sub::Tail(args)) => {
            let session = Session::start_with_tokens(
                NetOptions::new(&cli.url, Reconnect::AfterFirst),
                config(Some(vec![])),
                TokenCache::default_location(),
            );
            let args = oneshot::TailArgs {
                room: args.room,
                history: args.history,
                count: args.count,
                json: args.json,
            };
            interruptible(oneshot::tail(session, common, args)).await
        }
        Some(Sub::History(args)) => {
            let Some(limit) = timeout(args.timeout) else {
                return usage("--timeout must be a positive number of seconds");
            };
            let session = Session::start_with_tokens(
                NetOptions::new(&cli.url, Reconnect::AfterFirst),
                config(Some(vec![])),
                TokenCache::default_location(),
            );
            let args = oneshot::HistoryArgs {
                room: args.room,
                limit: Some(args.limit),
                before: args.before.map(Seq),
                json: args.json,
                timeout: limit,
            };
            interruptible(oneshot::history(session, common, args)).await
        }
        None => {
            let rooms = cli.room.map(|r| vec![r]);
            let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
            if interactive {
                let session = Session::start_with_tokens(
                    NetOptions::new(&cli.url, Reconnect::Always),
                    config(rooms),
                    TokenCache::default_location(),
                );
                match tui::run(session, ui::App::new(fallback_name)).await {
                    Ok(code) => code,
                    Err(e) => {
                        eprintln!("chat-cli: terminal error: {e}");
                        exit::CONNECTION
                    }
                }
            } else {
                let session = Session::start_with_tokens(
                    NetOptions::new(&cli.url, Reconnect::AfterFirst),
                    config(rooms),
                    TokenCache::default_location(),
                );
                interruptible(plain::run(session, fallback_name)).await
            }
        }
    }
}

/// The words of TEXT joined with spaces, or stdin (without its last line break) when
/// there are none; `None` when stdin is not text.
fn text_or_stdin(words: Vec<String>) -> Option<String> {
    if !words.is_empty() {
        return Some(words.join(" "));
    }
    let mut body = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut body).ok()?;
    Some(body.trim_end_matches(['\n', '\r']).to_owned())
}

/// `edit`, `delete`, `react`: one change in its own session.
async fn one_change(
    url: &str,
    config: ClientConfig,
    common: Common,
    room: String,
    change: Change,
    timeout_secs: f64,
) -> i32 {
    let Some(limit) = timeout(timeout_secs) else {
        return usage("--timeout must be a positive number of seconds");
    };
    let session = Session::start_with_tokens(
        NetOptions::new(url, Reconnect::AfterFirst),
        config,
        TokenCache::default_location(),
    );
    interruptible(oneshot::change(session, common, room, change, limit)).await
}

/// Runs a non-interactive mode; Ctrl-C ends it with [`exit::INTERRUPTED`].
async fn interruptible(mode: impl Future<Output = i32>) -> i32 {
    tokio::select! {
        code = mode => code,
        _ = tokio::signal::ctrl_c() => exit::INTERRUPTED,
    }
}

/// `$USER` (or `$USERNAME`) when it is a valid chat name, else `guest`.
fn default_name() -> String {
    ["USER", "USERNAME"]
        .iter()
        .filter_map(|var| std::env::var(var).ok())
        .find(|name| UserName::parse(name, 32).is_ok())
        .unwrap_or_else(|| "guest".to_owned())
}
