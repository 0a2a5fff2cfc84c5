//! Protocol conformance: replays every `transcript` block of `docs/PROTOCOL.md` through a
//! fresh [`Server`] on simulated time and checks that each connection receives exactly the
//! frames the transcript lists, in order. The transcript language and the placeholder rules
//! are defined in the document itself ("Transcripts").
//!
//! It also checks that the transcripts, taken together, show every client command, every
//! server frame and every error code, and that the error table lists every code, so a new
//! variant without documentation fails here.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use chat_core::protocol::{self, ClientFrame, ServerFrame};
use chat_core::{
    AuthMode, Config, Input, Now, Output, Rate, RoomName, Seq, Server, SessionId, StoreError,
    protocol::ErrorCode,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The simulated wall clock every transcript starts at.
const START_UTC: &str = "2026-01-02T03:04:05.000Z";

fn protocol_md() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

#[test]
fn every_transcript_replays() {
    let md = protocol_md();
    let blocks = parse_blocks(&md);
    assert!(!blocks.is_empty(), "PROTOCOL.md has no transcript blocks");
    let mut coverage = Coverage::default();
    let failures: Vec<String> = blocks
        .iter()
        .filter_map(|b| replay(b, &mut coverage).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} transcripts failed:\n\n{}",
        failures.len(),
        blocks.len(),
        failures.join("\n\n")
    );
}

#[test]
fn transcripts_show_every_frame_and_error_code() {
    let md = protocol_md();
    let mut coverage = Coverage::default();
    for block in parse_blocks(&md) {
        // Failures are reported by `every_transcript_replays`; count what did replay.
        let _ = replay(&block, &mut coverage);
    }
    let missing = |all: Vec<String>, seen: &BTreeSet<String>| -> Vec<String> {
        all.into_iter().filter(|v| !seen.contains(v)).collect()
    };
    let client = missing(variants::<ClientFrame>(true), &coverage.client);
    let server = missing(variants::<ServerFrame>(true), &coverage.server);
    let codes = missing(variants::<ErrorCode>(false), &coverage.codes);
    assert!(
        client.is_empty() && server.is_empty() && codes.is_empty(),
        "PROTOCOL.md needs a transcript that shows: client commands {client:?}, \
         server frames {server:?}, error codes {codes:?}"
    );
}

#[test]
fn error_table_lists_every_code() {
    let md = protocol_md();
    let missing: Vec<String> = variants::<ErrorCode>(false)
        .into_iter()
        .filter(|code| {
            let row = format!("| `{code}` |");
            !md.lines().any(|l| l.starts_with(&row))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "PROTOCOL.md's error table has no row for {missing:?}"
    );
}

/// Every wire name of an enum, read from serde's "unknown variant" error so that a variant
/// added to the enum is picked up without touching this test.
fn variants<T: DeserializeOwned + std::fmt::Debug>(tagged: bool) -> Vec<String> {
    let probe = if tagged {
        r#"{"type":"__no_such_variant__"}"#
    } else {
        r#""__no_such_variant__""#
    };
    let err = serde_json::from_str::<T>(probe).expect_err("probe is not a variant");
    let msg = err.to_string();
    let list = msg
        .split_once("expected one of ")
        .unwrap_or_else(|| panic!("unexpected serde message: {msg}"))
        .1;
    let names: Vec<String> = list
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    assert!(!names.is_empty(), "no variants in {msg}");
    names
}

// ---- transcript blocks ----

struct Block {
    /// The markdown heading above the block.
    heading: String,
    /// Line number (1-based) of the opening fence.
    line: usize,
    /// The block's lines with their line numbers.
    lines: Vec<(usize, String)>,
}

impl Block {
    fn name(&self) -> String {
        format!("\"{}\" (docs/PROTOCOL.md:{})", self.heading, self.line)
    }
}

fn parse_blocks(md: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut heading = String::from("(top)");
    let mut current: Option<Block> = None;
    for (i, line) in md.lines().enumerate() {
        let n = i + 1;
        if let Some(block) = current.as_mut() {
            if line.trim_start().starts_with("```") {
                blocks.push(current.take().expect("in a block"));
            } else {
                block.lines.push((n, line.to_owned()));
            }
        } else if line.trim() == "```transcript" {
            current = Some(Block {
                heading: heading.clone(),
                line: n,
                lines: Vec::new(),
            });
        } else if line.starts_with('#') {
            heading = line.trim_start_matches('#').trim().to_owned();
        }
    }
    assert!(current.is_none(), "unterminated transcript block");
    blocks
}

// ---- replay ----

#[derive(Default)]
struct Coverage {
    client: BTreeSet<String>,
    server: BTreeSet<String>,
    codes: BTreeSet<String>,
}

/// What a connection got from the server.
#[derive(Debug)]
enum Got {
    /// The frame as JSON, and its text as sent (for messages, in wire key order).
    Frame(Value, String),
    Close {
        code: u16,
        reason: &'static str,
    },
}

impl std::fmt::Display for Got {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Got::Frame(_, text) => f.write_str(text),
            Got::Close { code, reason } => write!(f, "close {code} {reason}"),
        }
    }
}

struct Replay<'a> {
    server: Server,
    now: Now,
    /// The open session of each connection label.
    open: BTreeMap<String, SessionId>,
    labels: BTreeMap<SessionId, String>,
    next_session: u64,
    inbox: BTreeMap<String, VecDeque<Got>>,
    vars: BTreeMap<String, Value>,
    authenticating: Vec<SessionId>,
    persisting: Vec<(RoomName, Seq)>,
    coverage: &'a mut Coverage,
}

fn replay(block: &Block, coverage: &mut Coverage) -> Result<(), String> {
    let mut config = test_config();
    let mut lines = block.lines.iter().peekable();
    while let Some((n, line)) = lines.peek() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            lines.next();
            continue;
        }
        let Some(settings) = line.strip_prefix("@config ") else {
            break;
        };
        for setting in settings.split_whitespace() {
            apply_setting(&mut config, setting)
                .map_err(|e| format!("transcript {}, line {n}: {e}", block.name()))?;
        }
        lines.next();
    }
    #[allow(clippy::disallowed_methods)] // a base instant: only differences matter
    let mono = Instant::now();
    let utc = chrono::DateTime::parse_from_rfc3339(START_UTC)
        .expect("valid start time")
        .to_utc();
    let mut r = Replay {
        server: Server::new(config),
        now: Now::new(mono, utc),
        open: BTreeMap::new(),
        labels: BTreeMap::new(),
        next_session: 1,
        inbox: BTreeMap::new(),
        vars: BTreeMap::new(),
        authenticating: Vec::new(),
        persisting: Vec::new(),
        coverage,
    };
    for (n, line) in lines {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        r.step(line)
            .map_err(|e| format!("transcript {}, line {n}: `{line}`\n{e}", block.name()))?;
    }
    r.all_read()
        .map_err(|e| format!("transcript {}, at its end:\n{e}", block.name()))
}

/// The fixed configuration of every transcript: the defaults, with a fixed secret and
/// epoch so tokens and welcomes are the same on every run.
fn test_config() -> Config {
    Config {
        secret: [7; 32],
        epoch: "e1".to_owned(),
        ..Config::default()
    }
}

fn apply_setting(c: &mut Config, setting: &str) -> Result<(), String> {
    let (key, value) = setting
        .split_once('=')
        .ok_or_else(|| format!("setting {setting:?} is not key=value"))?;
    let int = || {
        value
            .parse::<u64>()
            .map_err(|_| format!("{key}: {value:?} is not a number"))
    };
    let rate = || -> Result<Rate, String> {
        let (burst, per_second) = value
            .split_once('/')
            .ok_or_else(|| format!("{key}: expected burst/per_second"))?;
        let parse = |s: &str| s.parse::<u32>().map_err(|_| format!("{key}: bad {s:?}"));
        Ok(Rate {
            burst: parse(burst)?,
            per_second: parse(per_second)?,
        })
    };
    let size = |v: u64| usize::try_from(v).map_err(|_| format!("{key}: too large"));
    match key {
        "auth" => {
            c.auth = match value {
                "anonymous" => AuthMode::Anonymous,
                "host" => AuthMode::Host,
                _ => return Err(format!("auth: {value:?} is not anonymous or host")),
            }
        }
        "durable" => c.durable = value == "true",
        "cluster" => c.cluster = value == "true",
        "edit_window_ms" => c.edit_window = Duration::from_millis(int()?),
        "max_reactions_per_message" => c.max_reactions_per_message = size(int()?)?,
        "create_rooms_on_join" => c.create_rooms_on_join = value == "true",
        "default_rooms" => {
            c.default_rooms = value
                .split(',')
                .filter(|r| !r.is_empty())
                .map(str::to_owned)
                .collect();
        }
        "max_rooms" => c.max_rooms = size(int()?)?,
        "max_rooms_per_session" => c.max_rooms_per_session = size(int()?)?,
        "max_body_bytes" => c.max_body_bytes = size(int()?)?,
        "history_window" => c.history_window = size(int()?)?,
        "history_on_join" => c.history_on_join = size(int()?)?,
        "max_strikes" => c.max_strikes = u32::try_from(int()?).map_err(|e| e.to_string())?,
        "presence_grace_ms" => c.presence_grace = Duration::from_millis(int()?),
        "presence_tick_ms" => c.presence_tick = Duration::from_millis(int()?),
        "presence_threshold" => c.presence_threshold = size(int()?)?,
        "typing_expiry_ms" => c.typing_expiry = Duration::from_millis(int()?),
        "send_rate" => c.send_rate = rate()?,
        "typing_rate" => c.typing_rate = rate()?,
        "frame_rate" => c.frame_rate = rate()?,
        "private" | "read_only" => {
            // private=ROOM/role,role  read_only=ROOM/role,role
            let (room, roles) = value.split_once('/').unwrap_or((value, ""));
            let roles = roles.split(',').filter(|r| !r.is_empty());
            let access = if key == "private" {
                chat_core::RoomAccess::private(roles)
            } else {
                chat_core::RoomAccess::read_only(roles)
            };
            c.rooms.push((room.to_owned(), access));
        }
        _ => return Err(format!("unknown setting {key:?}")),
    }
    Ok(())
}

impl Replay<'_> {
    fn step(&mut self, line: &str) -> Result<(), String> {
        if let Some(directive) = line.strip_prefix('@') {
            self.all_read()?;
            return self.directive(directive);
        }
        let split = line
            .find([':', '>', '<'])
            .ok_or("expected `label: action`, `label> frame`, `label< frame` or `@directive`")?;
        let (label, rest) = line.split_at(split);
        let label = label.trim();
        if label.is_empty() || !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad connection label {label:?}"));
        }
        let (kind, rest) = rest.split_at(1);
        let rest = rest.trim();
        match kind {
            "<" => self.expect(label, rest),
            ">" => {
                self.all_read()?;
                self.client_sends(label, rest)
            }
            _ => {
                self.all_read()?;
                self.action(label, rest)
            }
        }
    }

    fn directive(&mut self, directive: &str) -> Result<(), String> {
        let mut words = directive.split_whitespace();
        match words.next() {
            Some("advance") => {
                let ms: u64 = words
                    .next()
                    .and_then(|w| w.parse().ok())
                    .ok_or("@advance needs milliseconds")?;
                self.advance(Duration::from_millis(ms));
                Ok(())
            }
            Some("shutdown") => {
                self.server.shutdown(self.now);
                self.drain()
            }
            Some("auth") => {
                let label = words.next().ok_or("@auth needs a label")?;
                let sid = self.session(label)?;
                let pos = self
                    .authenticating
                    .iter()
                    .position(|s| *s == sid)
                    .ok_or_else(|| format!("{label} is not waiting for authentication"))?;
                self.authenticating.remove(pos);
                let verdict = words.next();
                let rest = words.collect::<Vec<_>>().join(" ");
                let result = match verdict {
                    Some("ok") => Ok(rest),
                    Some("fail") => Err(chat_core::AuthRefused::new(rest)),
                    _ => return Err("@auth LABEL ok NAME | @auth LABEL fail REASON".into()),
                };
                self.input(Input::Authenticated {
                    session: sid,
                    result,
                })
            }
            Some("revoke") => {
                let user = words.next().ok_or("@revoke needs a user")?;
                self.server.revoke_user(self.now, user);
                self.drain()
            }
            Some("kick") | Some("ban") | Some("mute") | Some("unmute") | Some("unban") => {
                let what = directive.split_whitespace().next().unwrap_or_default();
                let (Some(room), Some(user)) = (words.next(), words.next()) else {
                    return Err(format!("@{what} ROOM USER ..."));
                };
                let now = self.now;
                match what {
                    "kick" => {
                        let reason = words.collect::<Vec<_>>().join(" ");
                        self.server.kick(now, room, user, &reason).map(drop)?;
                    }
                    "ban" => {
                        // @ban ROOM USER MINUTES|forever REASON...
                        let length = match words.next() {
                            Some("forever") => None,
                            Some(m) => Some(Duration::from_secs(
                                60 * m
                                    .parse::<u64>()
                                    .map_err(|_| "@ban ROOM USER MINUTES|forever")?,
                            )),
                            None => return Err("@ban ROOM USER MINUTES|forever REASON".into()),
                        };
                        let reason = words.collect::<Vec<_>>().join(" ");
                        self.server
                            .ban(now, room, user, &reason, length)
                            .map(drop)?;
                    }
                    "unban" => self.server.unban(room, user)?,
                    "mute" => self.server.mute(room, user, true)?,
                    _ => self.server.mute(room, user, false)?,
                }
                self.drain()
            }
            Some("set_role") => {
                let (Some(room), Some(user), Some(role)) =
                    (words.next(), words.next(), words.next())
                else {
                    return Err("@set_role ROOM USER ROLE".into());
                };
                let role: chat_core::protocol::Role =
                    serde_json::from_value(Value::String(role.into()))
                        .map_err(|e| e.to_string())?;
                self.server.set_role(room, user, role)?;
                self.drain()
            }
            Some("topic") => {
                let room = words.next().ok_or("@topic ROOM TEXT")?;
                let topic = words.collect::<Vec<_>>().join(" ");
                self.server.set_topic(room, &topic)?;
                self.drain()
            }
            Some("slow_mode") => {
                let (Some(room), Some(seconds)) = (words.next(), words.next()) else {
                    return Err("@slow_mode ROOM SECONDS".into());
                };
                let seconds = seconds.parse().map_err(|_| "@slow_mode ROOM SECONDS")?;
                self.server.set_slow_mode(room, seconds)?;
                self.drain()
            }
            Some("invite") => {
                let (Some(room), Some(user)) = (words.next(), words.next()) else {
                    return Err("@invite ROOM USER".into());
                };
                self.server.invite(room, user)?;
                self.drain()
            }
            Some("persist") => {
                let room = words.next().ok_or("@persist needs a room")?;
                let seq = Seq(words
                    .next()
                    .and_then(|w| w.parse().ok())
                    .ok_or("@persist needs a seq")?);
                let pos = self
                    .persisting
                    .iter()
                    .position(|(r, s)| r.as_str() == room && *s == seq)
                    .ok_or_else(|| format!("{room}#{seq} is not waiting for the store"))?;
                let (room, seq) = self.persisting.remove(pos);
                let result = match words.next() {
                    Some("ok") => Ok(()),
                    Some("fail") => {
                        Err(StoreError::Unavailable(words.collect::<Vec<_>>().join(" ")))
                    }
                    _ => return Err("@persist ROOM SEQ ok | @persist ROOM SEQ fail REASON".into()),
                };
                self.input(Input::Persisted { room, seq, result })
            }
            Some("erase") => {
                // @erase ROOM USER: the host's `Hub::erase_user` in one room.
                let (Some(room), Some(user)) = (words.next(), words.next()) else {
                    return Err("@erase ROOM USER".into());
                };
                let room = chat_core::RoomName::parse(room, 64, 32).map_err(|e| e.to_string())?;
                let user = chat_core::UserName::parse(user, 32).map_err(|e| e.to_string())?;
                self.input(Input::Erase {
                    ticket: 0,
                    room,
                    user,
                })
            }
            Some("prune") => {
                // @prune ROOM SEQ: the store's retention kept nothing below SEQ.
                let (Some(room), Some(seq)) = (words.next(), words.next()) else {
                    return Err("@prune ROOM SEQ".into());
                };
                let room = chat_core::RoomName::parse(room, 64, 32).map_err(|e| e.to_string())?;
                let first_kept = Seq(seq.parse().map_err(|_| "@prune ROOM SEQ")?);
                self.input(Input::Pruned { room, first_kept })
            }
            _ => Err(format!("unknown directive @{directive}")),
        }
    }

    fn action(&mut self, label: &str, action: &str) -> Result<(), String> {
        if let Some(spec) = action.strip_prefix("connect as ") {
            // connect as USER [roles=a,b] [expires_ms=N]
            if self.open.contains_key(label) {
                return Err(format!("{label} is already connected"));
            }
            let mut words = spec.split_whitespace();
            let mut identity = chat_core::Identity::new(words.next().ok_or("connect as USER")?);
            for word in words {
                match word.split_once('=') {
                    Some(("roles", roles)) => {
                        identity.roles = roles.split(',').map(str::to_owned).collect();
                    }
                    Some(("expires_ms", ms)) => {
                        let ms: i64 = ms.parse().map_err(|_| format!("bad {word:?}"))?;
                        identity.expires = Some(self.now.utc + chrono::Duration::milliseconds(ms));
                    }
                    _ => return Err(format!("unknown connect option {word:?}")),
                }
            }
            let sid = SessionId(self.next_session);
            self.next_session += 1;
            self.open.insert(label.to_owned(), sid);
            self.labels.insert(sid, label.to_owned());
            return self.input(Input::ConnectedAs {
                session: sid,
                identity,
            });
        }
        match action {
            "connect" => {
                if self.open.contains_key(label) {
                    return Err(format!("{label} is already connected"));
                }
                let sid = SessionId(self.next_session);
                self.next_session += 1;
                self.open.insert(label.to_owned(), sid);
                self.labels.insert(sid, label.to_owned());
                self.input(Input::Connected { session: sid })
            }
            "disconnect" => {
                let sid = self.session(label)?;
                self.forget(sid);
                self.input(Input::Disconnected { session: sid })
            }
            "queue-full" | "queue-full ephemeral" => {
                let sid = self.session(label)?;
                let ephemeral = action.ends_with("ephemeral");
                self.input(Input::QueueFull {
                    session: sid,
                    ephemeral,
                })
            }
            _ => Err(format!(
                "unknown action {action:?} (connect, disconnect, queue-full [ephemeral])"
            )),
        }
    }

    fn client_sends(&mut self, label: &str, text: &str) -> Result<(), String> {
        let sid = self.session(label)?;
        let text = self.substitute(text)?;
        let frame = protocol::decode(text.as_bytes());
        if let Ok(frame) = &frame {
            let value = serde_json::to_value(frame).expect("client frames serialize");
            if let Some(tag) = value.get("type").and_then(Value::as_str) {
                self.coverage.client.insert(tag.to_owned());
            }
        }
        self.input(Input::Received {
            session: sid,
            frame,
        })
    }

    /// Replaces every `"<$name>"` string with the value captured under that name.
    fn substitute(&self, text: &str) -> Result<String, String> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("\"<$") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 3..];
            let end = after
                .find(">\"")
                .ok_or("unterminated \"<$name>\" placeholder")?;
            let name = &after[..end];
            let value = self
                .vars
                .get(name)
                .ok_or_else(|| format!("<${name}> was not captured before this line"))?;
            out.push_str(&value.to_string());
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn expect(&mut self, label: &str, text: &str) -> Result<(), String> {
        let expected = if let Some(close) = text.strip_prefix("close ") {
            let (code, reason) = close.split_once(' ').unwrap_or((close, ""));
            Expected::Close(code.to_owned(), reason.to_owned())
        } else {
            let value: Value = serde_json::from_str(text)
                .map_err(|e| format!("the expected frame is not JSON: {e}"))?;
            Expected::Frame(value)
        };
        let inbox = self.inbox.entry(label.to_owned()).or_default();
        let Some(got) = inbox.pop_front() else {
            return Err(format!(
                "{label} expected\n    {text}\nbut received nothing (more)"
            ));
        };
        let mismatch = match (&expected, &got) {
            (Expected::Frame(want), Got::Frame(have, _)) => {
                let mut vars = self.vars.clone();
                let result = matches(want, have, &mut vars, "$");
                if result.is_ok() {
                    self.vars = vars;
                    self.cover(have);
                }
                result.err()
            }
            (Expected::Close(code, reason), Got::Close { code: c, reason: r })
                if code == &c.to_string() && reason == r =>
            {
                None
            }
            _ => Some("a different kind of output".to_owned()),
        };
        match mismatch {
            None => Ok(()),
            Some(why) => {
                let mut msg = format!(
                    "{label} received a different frame ({why}):\n  expected  {text}\n  received  {got}"
                );
                let inbox = &self.inbox[label];
                if !inbox.is_empty() {
                    msg.push_str("\n  then      ");
                    let rest: Vec<String> = inbox.iter().map(ToString::to_string).collect();
                    msg.push_str(&rest.join("\n            "));
                }
                Err(msg)
            }
        }
    }

    fn cover(&mut self, frame: &Value) {
        if let Some(tag) = frame.get("type").and_then(Value::as_str) {
            self.coverage.server.insert(tag.to_owned());
            if tag == "error"
                && let Some(code) = frame.get("code").and_then(Value::as_str)
            {
                self.coverage.codes.insert(code.to_owned());
            }
        }
    }

    /// Fails when some connection received something the transcript did not list yet.
    fn all_read(&self) -> Result<(), String> {
        let mut msg = String::new();
        for (label, inbox) in &self.inbox {
            for got in inbox {
                let _ = write!(msg, "\n  {label}< {got}");
            }
        }
        if msg.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "frames received but not listed in the transcript:{msg}"
            ))
        }
    }

    fn session(&self, label: &str) -> Result<SessionId, String> {
        self.open
            .get(label)
            .copied()
            .ok_or_else(|| format!("{label} is not connected"))
    }

    fn forget(&mut self, sid: SessionId) {
        if let Some(label) = self.labels.remove(&sid) {
            self.open.remove(&label);
        }
    }

    fn input(&mut self, input: Input) -> Result<(), String> {
        self.server
            .handle_input(self.now, input)
            .map_err(|e| format!("handle_input: {e}"))?;
        self.drain()
    }

    /// Moves simulated time forward, firing each timer at its own deadline as a driver would.
    fn advance(&mut self, by: Duration) {
        let target = self.now.advance(by);
        while let Some(at) = self.server.poll_timeout() {
            if at > target.mono {
                break;
            }
            self.now = self
                .now
                .advance(at.saturating_duration_since(self.now.mono));
            self.server.handle_timeout(self.now);
            let _ = self.drain();
        }
        self.now = target;
    }

    fn drain(&mut self) -> Result<(), String> {
        let mut problems = Vec::new();
        let mut saves = Vec::new();
        loop {
            // Durable mode: the store keeps each moderation change at once.
            for ticket in saves.drain(..) {
                let input = Input::ModerationSaved {
                    ticket,
                    result: Ok(()),
                };
                if let Err(e) = self.server.handle_input(self.now, input) {
                    problems.push(format!("ModerationSaved: {e}"));
                }
            }
            let Some(output) = self.server.poll_output() else {
                if saves.is_empty() {
                    break;
                }
                continue;
            };
            match output {
                Output::Send { .. } | Output::Broadcast { .. } => {
                    for (to, frame) in output.sends() {
                        let Some(label) = self.labels.get(&to) else {
                            problems
                                .push(format!("a frame to closed session {to}: {}", frame.text()));
                            continue;
                        };
                        if let Err(e) = frame.decode() {
                            problems
                                .push(format!("undecodable server frame {}: {e}", frame.text()));
                        }
                        let value: Value = serde_json::from_str(frame.text()).expect("JSON text");
                        self.inbox
                            .entry(label.clone())
                            .or_default()
                            .push_back(Got::Frame(value, frame.text().to_owned()));
                    }
                }
                Output::Close { session, reason } => {
                    let Some(label) = self.labels.get(&session).cloned() else {
                        problems.push(format!("a close of closed session {session}"));
                        continue;
                    };
                    self.inbox.entry(label).or_default().push_back(Got::Close {
                        code: reason.ws_code(),
                        reason: reason.as_str(),
                    });
                    self.forget(session);
                }
                Output::Authenticate { session, .. } => self.authenticating.push(session),
                Output::Persist(msg) => self.persisting.push((msg.room.clone(), msg.seq)),
                Output::SaveModeration { ticket, .. } => saves.push(ticket),
                Output::LoadHistory { .. } => {
                    problems.push("LoadHistory is not supported by the transcript runner".into());
                }
                _ => {}
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }
}

enum Expected {
    Frame(Value),
    Close(String, String),
}

/// Compares an expected frame (with placeholders) to a received one. Objects must have the
/// same keys; `"<any>"` matches any value, `"<ts>"` a protocol timestamp, and `"<$name>"`
/// captures the value the first time and must match it afterwards.
fn matches(
    want: &Value,
    have: &Value,
    vars: &mut BTreeMap<String, Value>,
    path: &str,
) -> Result<(), String> {
    if let Value::String(s) = want {
        if s == "<any>" {
            return Ok(());
        }
        if s == "<ts>" {
            let ok = have.as_str().is_some_and(is_protocol_ts);
            return if ok {
                Ok(())
            } else {
                Err(format!("{path} is not a timestamp"))
            };
        }
        if let Some(name) = s.strip_prefix("<$").and_then(|r| r.strip_suffix('>')) {
            return match vars.get(name) {
                Some(bound) if bound == have => Ok(()),
                Some(bound) => Err(format!("{path} is not <${name}> = {bound}")),
                None => {
                    vars.insert(name.to_owned(), have.clone());
                    Ok(())
                }
            };
        }
    }
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => {
            for key in w.keys().chain(h.keys()) {
                match (w.get(key), h.get(key)) {
                    (Some(wv), Some(hv)) => matches(wv, hv, vars, &format!("{path}.{key}"))?,
                    (Some(_), None) => return Err(format!("{path}.{key} is missing")),
                    (None, Some(_)) => return Err(format!("{path}.{key} is not expected")),
                    (None, None) => unreachable!(),
                }
            }
            Ok(())
        }
        (Value::Array(w), Value::Array(h)) => {
            if w.len() != h.len() {
                return Err(format!("{path} has {} items, not {}", h.len(), w.len()));
            }
            for (i, (wv, hv)) in w.iter().zip(h).enumerate() {
                matches(wv, hv, vars, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        _ if want == have => Ok(()),
        _ => Err(format!("{path} differs")),
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, as the protocol sends timestamps.
fn is_protocol_ts(s: &str) -> bool {
    s.len() == 24
        && s.ends_with('Z')
        && s.as_bytes()[19] == b'.'
        && chrono::DateTime::parse_from_rfc3339(s).is_ok()
}
