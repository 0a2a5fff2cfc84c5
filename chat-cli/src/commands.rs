//! What a line typed by the user means: a message, or a `/command`.

use chat_core::Seq;
use chat_core::client::Moderation;

/// A parsed input line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// Text for the current room.
    Say(String),
    /// `/join ROOM`
    Join(String),
    /// `/leave [ROOM]`: the current room when none is named.
    Leave(Option<String>),
    /// `/rooms`
    Rooms,
    /// `/who`
    Who,
    /// `/more`: the next page of the current room's members (a big room's list is paged)
    More,
    /// `/msg USER TEXT`
    Msg {
        /// Recipient.
        user: String,
        /// Text.
        text: String,
    },
    /// `/history [N]`: N earlier messages of the current room.
    History(Option<u32>),
    /// `/kick USER [REASON]`, `/ban USER [MINUTES] [REASON]`, `/unban USER`,
    /// `/mute USER [MINUTES] [REASON]`, `/unmute USER`, `/topic TEXT`: a moderator's
    /// command in the current room.
    Moderate(Moderation),
    /// `/edit SEQ TEXT`: a new text for one's own message in the current room.
    Edit {
        /// The message.
        seq: Seq,
        /// The new text.
        text: String,
    },
    /// `/delete SEQ`: delete a message of the current room.
    Delete(Seq),
    /// `/react SEQ EMOJI`: add the reaction, or take it back when it is there already.
    React {
        /// The message.
        seq: Seq,
        /// One emoji.
        emoji: String,
    },
    /// `/reply SEQ TEXT`: a message of the current room answering message SEQ.
    Reply {
        /// The message answered.
        seq: Seq,
        /// The text.
        text: String,
    },
    /// `/help`
    Help,
    /// `/quit`
    Quit,
    /// Nothing to do (an empty line).
    Nothing,
}

/// The `/help` text, one command per line.
pub const HELP: &[&str] = &[
    "/join ROOM        join a room (created if new) and switch to it",
    "/leave [ROOM]     leave the current room (or ROOM)",
    "/rooms            list the rooms on the server",
    "/who              list who is in the current room",
    "/more             list more of a big room's members",
    "/msg USER TEXT    send a direct message",
    "/reply SEQ TEXT   answer message #SEQ",
    "/edit SEQ TEXT    change your message #SEQ",
    "/delete SEQ       delete message #SEQ (yours; moderators: any)",
    "/react SEQ EMOJI  react to #SEQ (again: take it back)",
    "/history [N]      show N earlier messages of this room (default: the server's page)",
    "/kick USER [WHY]  moderators: take USER out of this room",
    "/ban USER [MIN] [WHY]  moderators: keep USER out of this room (MIN minutes, or for good)",
    "/unban USER       moderators: lift a ban",
    "/mute USER [MIN] [WHY] moderators: USER reads but cannot post (MIN minutes, or for good)",
    "/unmute USER      moderators: lift a mute",
    "/topic TEXT       moderators: set this room's topic",
    "/help             this help",
    "/quit             leave the chat (also Ctrl-C, or Ctrl-D on an empty line)",
    "Start a message with // to send text that begins with /.",
    "Keys: Enter sends; Up/Down recall earlier input; Left/Right, Home/End, Ctrl-A/E move;",
    "Ctrl-W/U/K delete a word / to the start / to the end; Tab, Shift-Tab, Ctrl-N/P or",
    "Alt-1..9 switch rooms; PageUp/PageDown scroll; Esc goes back to the latest messages.",
];

/// Parses one input line. `Err` holds a message for the user (unknown command, missing
/// argument).
pub fn parse(line: &str) -> Result<Line, String> {
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return Ok(Line::Nothing);
    }
    if let Some(rest) = line.strip_prefix("//") {
        return Ok(Line::Say(format!("/{rest}")));
    }
    let Some(command) = trimmed.strip_prefix('/') else {
        return Ok(Line::Say(line.to_owned()));
    };
    let (word, rest) = match command.split_once(char::is_whitespace) {
        Some((w, r)) => (w, r.trim()),
        None => (command, ""),
    };
    let arg = |what: &str| -> Result<String, String> {
        if rest.is_empty() {
            Err(format!("usage: /{word} {what}"))
        } else {
            Ok(rest.to_owned())
        }
    };
    match word.to_lowercase().as_str() {
        "join" | "j" => arg("ROOM").map(Line::Join),
        "leave" | "part" => Ok(Line::Leave((!rest.is_empty()).then(|| rest.to_owned()))),
        "rooms" | "list" => Ok(Line::Rooms),
        "who" | "names" => Ok(Line::Who),
        "more" => Ok(Line::More),
        "msg" | "query" => {
            let all = arg("USER TEXT")?;
            match all.split_once(char::is_whitespace) {
                Some((user, text)) if !text.trim().is_empty() => Ok(Line::Msg {
                    user: user.to_owned(),
                    text: text.trim_start().to_owned(),
                }),
                _ => Err("usage: /msg USER TEXT".to_owned()),
            }
        }
        "history" => {
            if rest.is_empty() {
                Ok(Line::History(None))
            } else {
                rest.parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .map(|n| Line::History(Some(n)))
                    .ok_or_else(|| "usage: /history [N] (N a positive number)".to_owned())
            }
        }
        "kick" => {
            let (user, reason) = user_and_rest(rest).ok_or("usage: /kick USER [REASON]")?;
            Ok(Line::Moderate(Moderation::Kick { user, reason }))
        }
        "ban" | "mute" => {
            let usage = format!("usage: /{word} USER [MINUTES] [REASON]");
            let (user, rest) = user_and_rest(rest).ok_or(usage)?;
            let (minutes, reason) = match rest.split_once(char::is_whitespace) {
                Some((n, why)) if n.parse::<u64>().is_ok() => (n.parse().ok(), why.trim()),
                _ if rest.parse::<u64>().is_ok() => (rest.parse().ok(), ""),
                _ => (None, rest.as_str()),
            };
            let reason = reason.to_owned();
            Ok(Line::Moderate(if word.eq_ignore_ascii_case("ban") {
                Moderation::Ban {
                    user,
                    reason,
                    minutes,
                }
            } else {
                Moderation::Mute {
                    user,
                    reason,
                    minutes,
                }
            }))
        }
        "unban" => arg("USER").map(|user| Line::Moderate(Moderation::Unban { user })),
        "unmute" => arg("USER").map(|user| Line::Moderate(Moderation::Unmute { user })),
        "topic" => arg("TEXT").map(|t| Line::Moderate(Moderation::Topic(t))),
        "edit" => {
            let (seq, text) = seq_and_rest(rest).ok_or("usage: /edit SEQ TEXT")?;
            if text.is_empty() {
                return Err("usage: /edit SEQ TEXT".to_owned());
            }
            Ok(Line::Edit { seq, text })
        }
        "delete" | "del" => match seq_and_rest(rest) {
            Some((seq, more)) if more.is_empty() => Ok(Line::Delete(seq)),
            _ => Err("usage: /delete SEQ".to_owned()),
        },
        "react" => match seq_and_rest(rest) {
            Some((seq, emoji)) if !emoji.is_empty() && !emoji.contains(char::is_whitespace) => {
                Ok(Line::React { seq, emoji })
            }
            _ => Err("usage: /react SEQ EMOJI".to_owned()),
        },
        "reply" | "re" => {
            let (seq, text) = seq_and_rest(rest).ok_or("usage: /reply SEQ TEXT")?;
            if text.is_empty() {
                return Err("usage: /reply SEQ TEXT".to_owned());
            }
            Ok(Line::Reply { seq, text })
        }
        "help" | "?" => Ok(Line::Help),
        "quit" | "exit" | "q" => Ok(Line::Quit),
        _ => Err(format!("unknown command /{word} (try /help)")),
    }
}

/// A message's seq (`12` or `#12`) and the rest, trimmed; `None` without a number.
fn seq_and_rest(rest: &str) -> Option<(Seq, String)> {
    let (first, more) = match rest.split_once(char::is_whitespace) {
        Some((first, more)) => (first, more.trim()),
        None => (rest, ""),
    };
    let seq = first
        .strip_prefix('#')
        .unwrap_or(first)
        .parse::<u64>()
        .ok()?;
    Some((Seq(seq), more.to_owned()))
}

/// The first word (a user name) and the rest, trimmed; `None` without a user.
fn user_and_rest(rest: &str) -> Option<(String, String)> {
    match rest.split_once(char::is_whitespace) {
        Some((user, more)) => Some((user.to_owned(), more.trim().to_owned())),
        None if !rest.is_empty() => Some((rest.to_owned(), String::new())),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_messages() {
        assert_eq!(parse("hello /there"), Ok(Line::Say("hello /there".into())));
        assert_eq!(
            parse("//not a command"),
            Ok(Line::Say("/not a command".into()))
        );
        assert_eq!(parse("   "), Ok(Line::Nothing));
        assert_eq!(parse("/join Rust"), Ok(Line::Join("Rust".into())));
        assert_eq!(parse("/JOIN  rust "), Ok(Line::Join("rust".into())));
        assert!(parse("/join").unwrap_err().contains("usage"));
        assert_eq!(parse("/leave"), Ok(Line::Leave(None)));
        assert_eq!(parse("/leave rust"), Ok(Line::Leave(Some("rust".into()))));
        assert_eq!(parse("/rooms"), Ok(Line::Rooms));
        assert_eq!(parse("/who"), Ok(Line::Who));
        assert_eq!(parse("/more"), Ok(Line::More));
        assert_eq!(
            parse("/msg bob  hi there"),
            Ok(Line::Msg {
                user: "bob".into(),
                text: "hi there".into()
            })
        );
        assert!(parse("/msg bob").is_err());
        assert_eq!(parse("/history"), Ok(Line::History(None)));
        assert_eq!(parse("/history 20"), Ok(Line::History(Some(20))));
        assert!(parse("/history -1").is_err());
        assert_eq!(
            parse("/kick bob  stop it"),
            Ok(Line::Moderate(Moderation::Kick {
                user: "bob".into(),
                reason: "stop it".into()
            }))
        );
        assert_eq!(
            parse("/ban bob 10 spam links"),
            Ok(Line::Moderate(Moderation::Ban {
                user: "bob".into(),
                reason: "spam links".into(),
                minutes: Some(10)
            }))
        );
        assert_eq!(
            parse("/ban bob"),
            Ok(Line::Moderate(Moderation::Ban {
                user: "bob".into(),
                reason: String::new(),
                minutes: None
            }))
        );
        assert_eq!(
            parse("/mute bob 5"),
            Ok(Line::Moderate(Moderation::Mute {
                user: "bob".into(),
                reason: String::new(),
                minutes: Some(5)
            }))
        );
        assert_eq!(
            parse("/mute bob calm down"),
            Ok(Line::Moderate(Moderation::Mute {
                user: "bob".into(),
                reason: "calm down".into(),
                minutes: None
            }))
        );
        assert_eq!(
            parse("/topic Release on friday"),
            Ok(Line::Moderate(Moderation::Topic(
                "Release on friday".into()
            )))
        );
        assert!(parse("/kick").unwrap_err().contains("usage"));
        assert!(parse("/topic").unwrap_err().contains("usage"));
        assert_eq!(
            parse("/edit 4 hello  world"),
            Ok(Line::Edit {
                seq: Seq(4),
                text: "hello  world".into()
            })
        );
        assert!(parse("/edit 4").unwrap_err().contains("usage"));
        assert!(parse("/edit x hi").unwrap_err().contains("usage"));
        assert_eq!(parse("/delete #7"), Ok(Line::Delete(Seq(7))));
        assert!(parse("/delete 7 8").is_err());
        assert_eq!(
            parse("/react 7 👍"),
            Ok(Line::React {
                seq: Seq(7),
                emoji: "👍".into()
            })
        );
        assert!(parse("/react 7").is_err());
        assert_eq!(
            parse("/reply 3 me too"),
            Ok(Line::Reply {
                seq: Seq(3),
                text: "me too".into()
            })
        );
        assert_eq!(parse("/help"), Ok(Line::Help));
        assert_eq!(parse("/quit"), Ok(Line::Quit));
        assert!(
            parse("/frobnicate")
                .unwrap_err()
                .contains("unknown command")
        );
    }
}
