//! Property tests: random interleavings of hello, join, leave, send, resend, direct
//! messages, typing, history, resume, disconnect, reconnect, time jumps and moderation
//! (kick, ban, unban, mute, unmute, set_role, topic, slow mode from any session, allowed or
//! not, and roles given by the host) over 4 users,
//! 8 connection slots and 3 public rooms (plus direct rooms), checked step by step
//! against a small reference model of the room semantics (`chat_core::testing`).
//!
//! After every step:
//! - every session received exactly the frames the model predicts, in order: so every
//!   member session gets every room message exactly once and in seq order, non-members
//!   get none, resume gives exactly the missed suffix or an explicit gap, resends are
//!   acked with the original seq and never posted twice, user_joined/user_left come once
//!   per user transition however many tabs;
//! - nothing was ever sent to a closed session;
//! - `members`, `session_rooms`, `last_seq`, `session_count` and every user's `role` in
//!   every room (online or not) equal the model;
//! - moderation: each command's `done` or error, the room's `moderated`, `topic` and
//!   `slow_mode` frames, the `joined` topic, slow mode and role, bans refusing joins,
//!   mutes refusing sends, slow mode refusing early posts, and timed sanctions ending
//!   (told, with the reason `expired`) at their instant, across restarts in durable mode;
//! - the host's UserJoined/UserLeft events equal the model's transitions;
//! - `poll_timeout` after `handle_timeout(now)` is later than `now` (checked in `Sim`).
//!
//! Across the whole run, independently of the model: per session and room, live message
//! seqs strictly increase (no duplicate, no reordering). Finally the same operations run
//! again on a fresh server give byte-identical outputs.
//!
//! The harness and the model live in `chat_core::testing` (feature `testing`), so a host
//! app can run the same test with its own config and host-auth hook. Three configs here:
//! the first sets flood control out of reach (limits.rs tests it by hand); the second is
//! durable with tight flood limits (store failures, restarts, rate limits, strikes); the
//! third uses host auth. The history window is small (8) so that eviction, gaps and
//! forgotten client ids happen often.
//!
//! Cases: 64, 32 and 24 by default; `PROPTEST_CASES=10000 cargo test -p chat-core --test properties`
//! for a longer run. Failing seeds are kept in `chat-core/proptest-regressions/`.

use std::time::Duration;

use chat_core::protocol::Role;
use chat_core::testing::{Harness, ModOp, Op, Pick, RoomsChoice, Since, TokenChoice};
use chat_core::{AuthMode, Config, Rate};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

const WINDOW: usize = 8;
const ON_JOIN: usize = 5;
const GRACE_MS: u64 = 5_000;
const TYPING_MS: u64 = 6_000;

fn config() -> Config {
    let lots = Rate {
        burst: 1_000_000,
        per_second: 1_000_000,
    };
    Config {
        send_rate: lots,
        frame_rate: lots,
        typing_rate: lots,
        max_strikes: u32::MAX,
        history_window: WINDOW,
        history_on_join: ON_JOIN,
        presence_grace: Duration::from_millis(GRACE_MS),
        typing_expiry: Duration::from_millis(TYPING_MS),
        ..Config::default()
    }
}

/// Durable, with flood limits the ops reach: a burst of sends is refused, a burst of
/// frames or a few bad frames close the connection.
fn durable_and_tight() -> Config {
    Config {
        durable: true,
        send_rate: Rate {
            burst: 3,
            per_second: 2,
        },
        frame_rate: Rate {
            burst: 20,
            per_second: 10,
        },
        typing_rate: Rate {
            burst: 2,
            per_second: 1,
        },
        max_strikes: 10,
        congestion_backoff: Duration::from_millis(3_000),
        epoch: "e1".to_owned(),
        // Smaller still: pages beyond the window are read from the store.
        history_window: 4,
        history_on_join: 3,
        // Rooms nobody is in leave memory within a run and are loaded again on demand.
        room_idle_unload: Duration::from_millis(6_000),
        ..config()
    }
}

fn host_auth() -> Config {
    Config {
        auth: AuthMode::Host,
        max_strikes: 8,
        ..config()
    }
}

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn proptest_config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        max_shrink_iters: 4096,
        // Relative to the package root, where cargo runs integration tests.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/properties.txt",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(proptest_config(cases(64)))]

    #[test]
    fn the_server_agrees_with_the_reference_model(ops in Harness::new(config()).ops()) {
        Harness::new(config()).check(&ops)?;
    }
}

proptest! {
    #![proptest_config(proptest_config(cases(32)))]

    #[test]
    fn durable_restarts_and_flood_control_agree_with_the_model(
        ops in Harness::new(durable_and_tight()).ops()
    ) {
        Harness::new(durable_and_tight()).check(&ops)?;
    }
}

proptest! {
    #![proptest_config(proptest_config(cases(24)))]

    #[test]
    fn host_auth_agrees_with_the_model(ops in Harness::new(host_auth()).ops()) {
        // bob may come in as "Bob"; dee is never let in; the wrong credentials neither.
        let harness = Harness::new(host_auth()).with_auth(|name, credentials| {
            match (name.to_lowercase().as_str(), credentials) {
                (_, Some(chat_core::testing::WRONG_TOKEN)) => Err(chat_core::AuthRefused::new("wrong password")),
                ("dee", _) => Err(chat_core::AuthRefused::new("banned")),
                ("bob", _) => Ok("Bob".into()),
                _ => Ok(name.to_owned()),
            }
        });
        harness.check(&ops)?;
    }
}

/// A hand-written sequence through the trickiest paths, so the model itself is known to
/// see the transitions the properties are about.
#[test]
fn the_model_sees_grace_resume_and_resend() {
    use Op::*;
    let ops = vec![
        Hello {
            slot: 0,
            user: 0,
            upper: false,
            token: TokenChoice::None,
            rooms: RoomsChoice::Default,
        },
        Hello {
            slot: 1,
            user: 0,
            upper: true,
            token: TokenChoice::Right,
            rooms: RoomsChoice::Default,
        },
        Hello {
            slot: 2,
            user: 1,
            upper: false,
            token: TokenChoice::None,
            rooms: RoomsChoice::Default,
        },
        Send {
            slot: 0,
            room: Pick::Mine(0),
            client_id: Some(1),
        },
        Resend { slot: 0 },
        Typing {
            slot: 2,
            room: Pick::Mine(0),
            active: true,
        },
        Disconnect { slot: 0 },
        Disconnect { slot: 1 },
        Advance { ms: 2_500 },
        Hello {
            slot: 1,
            user: 0,
            upper: false,
            token: TokenChoice::Right,
            rooms: RoomsChoice::Nothing,
        },
        Join {
            slot: 1,
            room: 0,
            since: Some(Since::Back(1)),
        },
        Dm {
            slot: 2,
            peer: 0,
            client_id: None,
        },
        Disconnect { slot: 1 },
        Advance { ms: 5_000 },
        Hello {
            slot: 3,
            user: 0,
            upper: false,
            token: TokenChoice::None,
            rooms: RoomsChoice::Default,
        },
        JoinDm {
            slot: 3,
            peer: 1,
            since: Some(Since::Ahead),
        },
        History {
            slot: 2,
            room: Pick::Any(0),
            before: None,
            limit: 3,
        },
        // bob refreshes his page: no presence flap, and the resume is empty.
        Refresh { slot: 2 },
        Stale { slot: 0 },
    ];
    let log = Harness::new(config())
        .run(&ops)
        .unwrap_or_else(|e| panic!("{e}"));
    let count = |pat: &str| log.iter().filter(|l| l.contains(pat)).count();
    // ann and bob join; ann's two tabs drop and one comes back within the grace (no
    // flap), then drops again and stays away: one leave; a fresh "ann" joins anew.
    assert_eq!(count("event UserJoined"), 3, "{log:#?}");
    assert_eq!(count("event UserLeft"), 1, "{log:#?}");
    assert_eq!(count(r#""duplicate":true"#), 1, "{log:#?}");
    assert_eq!(count(r#""gap":true"#), 1, "{log:#?}");
    // The resume from one message back got exactly that message.
    assert!(
        log.iter()
            .any(|l| l.contains(r#""type":"joined","id":11"#) && l.contains(r#""seq":1"#)),
        "{log:#?}"
    );
}

/// A hand-written durable sequence through moderation: refusals of members and of
/// acting on oneself, a timed mute and ban, slow mode, a restart that keeps them, and
/// their ends told, so the model is known to see what the properties check of it.
#[test]
fn the_model_sees_moderation_last_and_end() {
    use Op::*;
    let hello = |slot, user| Hello {
        slot,
        user,
        upper: false,
        token: TokenChoice::None,
        rooms: RoomsChoice::Default,
    };
    let send = |slot| Send {
        slot,
        room: Pick::Any(0),
        client_id: None,
    };
    let moderate = |slot, user, action| Moderate {
        slot,
        room: 0,
        user,
        action,
    };
    let ops = vec![
        hello(0, 0),
        hello(1, 1),
        hello(2, 2),
        GiveRole {
            room: 0,
            user: 0,
            role: Role::Moderator,
        },
        // bob is a member; ann may not act on herself.
        moderate(1, 2, ModOp::Kick),
        moderate(0, 0, ModOp::Mute(None)),
        moderate(0, 1, ModOp::Mute(Some(1))),
        send(1),
        moderate(0, 2, ModOp::SlowMode(5)),
        send(2),
        Store { n: 1, fail: 0 },
        send(2),
        Advance { ms: 5_000 },
        send(2),
        Store { n: 1, fail: 0 },
        moderate(0, 2, ModOp::Ban(Some(1))),
        Join {
            slot: 2,
            room: 0,
            since: None,
        },
        Restart {
            flushed: false,
            wipe: false,
        },
        // Still muted and banned after the restart, until their minute is up.
        send(1),
        Join {
            slot: 2,
            room: 0,
            since: None,
        },
        Advance { ms: 60_000 },
        Join {
            slot: 2,
            room: 0,
            since: None,
        },
        moderate(0, 2, ModOp::Topic(Some(1))),
    ];
    // Host identities: a sanction binds the user id, so it is stored and outlives a
    // restart. (An anonymous user's binds their token, which does not outlive the
    // process: docs/PROTOCOL.md, "Who a sanction binds".)
    let config = Config {
        auth: AuthMode::Host,
        ..durable_and_tight()
    };
    let log = Harness::new(config)
        .run(&ops)
        .unwrap_or_else(|e| panic!("{e}"));
    let count = |pat: &str| log.iter().filter(|l| l.contains(pat)).count();
    assert_eq!(count(r#""code":"forbidden""#), 6, "{log:#?}");
    assert_eq!(count(r#""code":"slow_mode""#), 1, "{log:#?}");
    assert_eq!(count(r#""type":"done""#), 4, "{log:#?}");
    // The mute's end to the two in the room (cy is banned from it); the ban's to them
    // and to cy outside it.
    assert_eq!(
        count(r#""action":"unmute","reason":"expired""#),
        2,
        "{log:#?}"
    );
    assert_eq!(
        count(r#""action":"unban","reason":"expired""#),
        3,
        "{log:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains(r#""type":"joined","id":22"#) && l.contains(r#""slow_mode":5"#)),
        "{log:#?}"
    );
}

/// A hand-written durable sequence through store failures, a restart with seqs
/// continuing, flood refusals and closes, a full queue and a shutdown, so the model is
/// known to see what the second property is about.
#[test]
fn the_model_sees_store_failures_restarts_floods_and_shutdown() {
    use Op::*;
    let hello = |slot, user| Hello {
        slot,
        user,
        upper: false,
        token: TokenChoice::None,
        rooms: RoomsChoice::Default,
    };
    let send = |slot, client_id| Send {
        slot,
        room: Pick::Mine(0),
        client_id,
    };
    let ops = vec![
        hello(0, 0),
        hello(1, 1),
        send(0, Some(1)),
        send(1, None),
        // The first is stored, the second fails: storage_unavailable, never an ack.
        Store { n: 2, fail: 0b10 },
        // Four at once with a burst of three.
        Burst {
            slot: 1,
            room: Pick::Mine(0),
            n: 4,
        },
        Store { n: 3, fail: 0 },
        // Unanswered when the process dies, but written: stored, never acked.
        send(0, Some(2)),
        Restart {
            flushed: true,
            wipe: false,
        },
        // The retry after the lost ack is acked as a duplicate, with the stored seq.
        Resend { slot: 0 },
        send(1, None),
        Store { n: 1, fail: 0 },
        QueueFull {
            slot: 1,
            ephemeral: false,
        },
        History {
            slot: 0,
            room: Pick::Mine(0),
            before: Some(5),
            limit: 2,
        },
        Garbage { slot: 1 },
        Garbage { slot: 1 },
        Garbage { slot: 1 },
        Garbage { slot: 1 },
        Garbage { slot: 1 },
        send(0, None),
        Shutdown,
        Store { n: 1, fail: 0 },
        Hello {
            slot: 2,
            user: 2,
            upper: false,
            token: TokenChoice::None,
            rooms: RoomsChoice::Default,
        },
        Advance { ms: 1_000 },
        Join {
            slot: 2,
            room: 0,
            since: Some(Since::Back(0)),
        },
    ];
    let log = Harness::new(durable_and_tight())
        .run(&ops)
        .unwrap_or_else(|e| panic!("{e}"));
    let count = |pat: &str| log.iter().filter(|l| l.contains(pat)).count();
    assert_eq!(count("storage_unavailable"), 1, "{log:#?}");
    // bob's failed send took a token too: two of the four are refused.
    assert_eq!(count("rate_limited"), 2, "{log:#?}");
    assert_eq!(count("restart"), 1, "{log:#?}");
    assert_eq!(count(r#""duplicate":true"#), 1, "{log:#?}");
    assert_eq!(count("close 4 SlowConsumer"), 1, "{log:#?}");
    assert_eq!(count("close 5 Flood"), 1, "{log:#?}");
    // After the restart seqs continue from the store (5 was written, never acked).
    assert!(count(r#""seq":6,"ts""#) >= 2, "{log:#?}");
    assert_eq!(count("drained"), 1, "{log:#?}");
    assert!(count("goodbye") >= 1, "{log:#?}");
    assert!(count("load ") >= 1, "{log:#?}");
    assert_eq!(count("shutting_down"), 1, "{log:#?}");
}

// ---- version 2: coalesced presence converges ----

/// One step of the version-2 presence property.
#[derive(Debug, Clone)]
enum PresenceOp {
    /// A new session of user `user` (0..4) in protocol version 2 (or 1), joining `rooms`.
    Open {
        user: usize,
        v2: bool,
        rooms: u8,
    },
    /// The `n`-th open session joins or leaves room `room` (0..2).
    Join {
        n: usize,
        room: usize,
    },
    Leave {
        n: usize,
        room: usize,
    },
    /// The `n`-th open session disconnects.
    Disconnect {
        n: usize,
    },
    /// Time passes (ms).
    Advance {
        ms: u64,
    },
}

fn presence_op() -> impl Strategy<Value = PresenceOp> {
    prop_oneof![
        3 => (0..4usize, any::<bool>(), 0..4u8)
            .prop_map(|(user, v2, rooms)| PresenceOp::Open { user, v2, rooms }),
        2 => (0..8usize, 0..2usize).prop_map(|(n, room)| PresenceOp::Join { n, room }),
        2 => (0..8usize, 0..2usize).prop_map(|(n, room)| PresenceOp::Leave { n, room }),
        1 => (0..8usize).prop_map(|n| PresenceOp::Disconnect { n }),
        2 => prop_oneof![Just(10u64), Just(49), Just(50), Just(999), Just(6_000)]
            .prop_map(|ms| PresenceOp::Advance { ms }),
    ]
}

/// What one version-2 session holds about one room: the names (keys) from `joined` with
/// every `presence` applied, the last count, and whether the list is only part.
#[derive(Debug, Default, Clone)]
struct View {
    members: std::collections::BTreeSet<String>,
    count: Option<usize>,
    partial: bool,
}

const PRESENCE_ROOMS: [&str; 2] = ["a", "b"];
const PRESENCE_USERS: [&str; 4] = ["ann", "Bob", "cy", "dee"];
const THRESHOLD: usize = 2;

/// `dee` may not see who is in room `b`.
fn blind(user: &str, room: &str) -> bool {
    user == "dee" && room == "b"
}

/// Runs `ops` with `count_tick` as [`Config::presence_count_tick`]; views are checked
/// after every advance of at least the longest tick.
fn run_presence(ops: &[PresenceOp], count_tick: Duration) -> Result<(), TestCaseError> {
    use chat_core::protocol::ServerFrame;
    use chat_core::testing::Sim;
    use chat_core::{Identity, Permissions, RoomName, SessionId, SharedPolicy};
    use std::collections::BTreeMap;

    let policy =
        SharedPolicy::new(
            |who: &Identity, room: &RoomName, rules: Permissions| Permissions {
                presence: !blind(&who.user, room.as_str()),
                ..rules
            },
        );
    let mut sim = Sim::with(Config {
        default_rooms: vec![],
        presence_threshold: THRESHOLD,
        presence_count_tick: count_tick,
        room_policy: Some(policy),
        frame_rate: Rate {
            burst: 1_000_000,
            per_second: 1_000_000,
        },
        ..Config::default()
    });
    let mut next = 1u64;
    // Open sessions: (session, user, version 2).
    let mut open: Vec<(u64, usize, bool)> = Vec::new();
    let mut views: BTreeMap<(u64, String), View> = BTreeMap::new();
    let fold = |n: &chat_core::UserName| n.key().as_str().to_owned();
    for op in ops {
        match op {
            PresenceOp::Open { user, v2, rooms } => {
                let s = next;
                next += 1;
                let name = PRESENCE_USERS[*user];
                let rooms: Vec<_> = PRESENCE_ROOMS
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| rooms & (1 << i) != 0)
                    .map(|(_, r)| serde_json::json!({ "room": r }))
                    .collect();
                sim.connect_as(s, Identity::new(name));
                let version = if *v2 { 2 } else { 1 };
                sim.say(
                    s,
                    serde_json::json!({"type":"hello","version":version,"name":name,"rooms":rooms}),
                );
                open.push((s, *user, *v2));
            }
            PresenceOp::Join { n, room } | PresenceOp::Leave { n, room } if !open.is_empty() => {
                let (s, _, _) = open[n % open.len()];
                let kind = if matches!(op, PresenceOp::Join { .. }) {
                    "join"
                } else {
                    "leave"
                };
                sim.say(
                    s,
                    serde_json::json!({"type":kind,"room":PRESENCE_ROOMS[*room]}),
                );
            }
            PresenceOp::Disconnect { n } if !open.is_empty() => {
                let (s, _, _) = open.remove(n % open.len());
                sim.disconnect(s);
                views.retain(|(v, _), _| *v != s);
            }
            PresenceOp::Advance { ms } => sim.advance(Duration::from_millis(*ms)),
            _ => {}
        }
        // Apply what each open session received.
        for &(s, user, _) in &open {
            for frame in sim.take(s) {
                match frame {
                    ServerFrame::Joined {
                        room,
                        members,
                        count,
                        ..
                    } => {
                        let view = View {
                            partial: count.is_some_and(|c| c > members.len()),
                            members: members.iter().map(fold).collect(),
                            count,
                        };
                        views.insert((s, room.to_string()), view);
                    }
                    ServerFrame::Left { room, .. } => {
                        views.remove(&(s, room.to_string()));
                    }
                    ServerFrame::Presence {
                        room,
                        joins,
                        leaves,
                        members,
                        count,
                    } => {
                        prop_assert!(
                            !blind(PRESENCE_USERS[user], room.as_str()),
                            "a blind session got presence"
                        );
                        let view = views.entry((s, room.to_string())).or_default();
                        let diff = joins.is_some() || leaves.is_some();
                        if let Some(all) = members {
                            view.members = all.iter().map(fold).collect();
                            view.partial = false;
                        } else if !diff {
                            view.partial = true;
                        }
                        for u in joins.iter().flatten() {
                            view.members.insert(fold(u));
                        }
                        for u in leaves.iter().flatten() {
                            view.members.remove(&fold(u));
                        }
                        view.count = Some(count);
                    }
                    _ => {}
                }
            }
        }
        // A whole tick after the last change: every version-2 view is the truth.
        let longest = count_tick.max(Duration::from_millis(50));
        if matches!(op, PresenceOp::Advance { ms } if Duration::from_millis(*ms) >= longest) {
            for &(s, user, v2) in &open {
                if !v2 {
                    continue;
                }
                let Some(rooms) = sim.server.session_rooms(SessionId(s)) else {
                    continue;
                };
                for room in rooms {
                    let truth: std::collections::BTreeSet<String> = sim
                        .server
                        .members(&room)
                        .unwrap_or_default()
                        .iter()
                        .map(fold)
                        .collect();
                    let view = views
                        .get(&(s, room.to_string()))
                        .cloned()
                        .unwrap_or_default();
                    if blind(PRESENCE_USERS[user], room.as_str()) {
                        prop_assert!(view.members.is_empty() && view.count.is_none());
                        continue;
                    }
                    prop_assert_eq!(
                        view.count,
                        Some(truth.len()),
                        "count of session {} in {}",
                        s,
                        room
                    );
                    if truth.len() <= THRESHOLD && !view.partial {
                        prop_assert_eq!(&view.members, &truth, "view of session {} in {}", s, room);
                    }
                    if truth.len() <= THRESHOLD {
                        prop_assert!(!view.partial, "session {} still partial in {}", s, room);
                    }
                }
            }
        }
    }
    sim.assert_no_violations();
    Ok(())
}

proptest! {
    #![proptest_config(proptest_config(cases(128)))]

    /// Coalescing converges: a tick after any change, every version-2 member's view (its
    /// `joined` list with every `presence` applied) is the true set of present users,
    /// and its count the true count (above the threshold too); blind sessions get no
    /// presence at all.
    #[test]
    fn coalesced_presence_converges_to_the_truth(ops in proptest::collection::vec(presence_op(), 1..60)) {
        run_presence(&ops, Duration::from_millis(50))?;
    }

    /// The same with the default count cadence (a room above the threshold hears its
    /// count at most once a second): views converge once a second has passed.
    #[test]
    fn presence_with_a_slower_count_converges_to_the_truth(ops in proptest::collection::vec(presence_op(), 1..60)) {
        run_presence(&ops, Config::default().presence_count_tick)?;
    }
}

// ---- changes to messages: edits, deletes, reactions, replies, resends, reconnects ----

/// The users of the change runs, each with one connection at a time.
const CHANGE_USERS: [&str; 3] = ["alice", "bob", "carol"];
const EMOJI: [&str; 3] = ["👍", "🎉", "🚀"];
/// Few, so that the limit is reached.
const MAX_REACTIONS: usize = 2;

/// One step of a change run. Targets are picks, taken modulo the room's last seq plus
/// one (so unknown seqs and change entries are named too).
#[derive(Debug, Clone)]
enum Change {
    Send {
        u: usize,
        reply: Option<u64>,
    },
    Edit {
        u: usize,
        target: u64,
    },
    Delete {
        u: usize,
        target: u64,
    },
    React {
        u: usize,
        target: u64,
        emoji: usize,
        on: bool,
    },
    /// The user's last post again, with its client id (a lost ack).
    Resend {
        u: usize,
    },
    /// The user's connection drops.
    Drop {
        u: usize,
    },
    /// The user comes back: resuming after the last seq it saw, or joining afresh.
    Back {
        u: usize,
        resume: bool,
    },
}

fn change_op() -> impl Strategy<Value = Change> {
    let u = 0..CHANGE_USERS.len();
    prop_oneof![
        4 => (u.clone(), proptest::option::weighted(0.3, 0..64u64))
            .prop_map(|(u, reply)| Change::Send { u, reply }),
        3 => (u.clone(), 0..64u64).prop_map(|(u, target)| Change::Edit { u, target }),
        2 => (u.clone(), 0..64u64).prop_map(|(u, target)| Change::Delete { u, target }),
        4 => (u.clone(), 0..64u64, 0..EMOJI.len(), proptest::bool::weighted(0.7))
            .prop_map(|(u, target, emoji, on)| Change::React { u, target, emoji, on }),
        2 => u.clone().prop_map(|u| Change::Resend { u }),
        1 => u.clone().prop_map(|u| Change::Drop { u }),
        2 => (u, any::<bool>()).prop_map(|(u, resume)| Change::Back { u, resume }),
    ]
}

/// A client of the change runs: its connection, and the room as it shows it (every
/// message it was given, with the change entries that came after it applied).
struct ChangeClient {
    session: Option<u64>,
    token: Option<String>,
    view: std::collections::BTreeMap<u64, chat_core::protocol::Message>,
    /// The highest seq it was given.
    last: u64,
    /// Its last post: the frame (with its client id) and what the model takes.
    last_post: Option<(serde_json::Value, String, chat_core::testing::Post)>,
}

impl ChangeClient {
    fn take(&mut self, m: &chat_core::protocol::Message) {
        self.last = self.last.max(m.seq.0);
        if m.kind.is_message() {
            self.view.insert(m.seq.0, m.clone());
        } else if let Some(t) = m.target.and_then(|t| self.view.get_mut(&t.0)) {
            t.apply(m);
        }
    }
}

fn change_config() -> Config {
    Config {
        history_window: 1000,
        history_on_join: 1000,
        max_reactions_per_message: MAX_REACTIONS,
        default_rooms: vec!["general".into()],
        ..config()
    }
}

/// Runs `ops` on one server and the model; after each post the author got the ack (seq,
/// duplicate) or the error the model says; at the end every user, back and resumed,
/// shows every message exactly as the model does.
fn run_changes(ops: &[Change]) -> Result<(), TestCaseError> {
    use chat_core::protocol::ServerFrame;
    use chat_core::testing::{ChangeModel, MessageView, Post, Sim};
    use serde_json::json;

    let mut sim = Sim::with(change_config());
    let mut model = ChangeModel::new(MAX_REACTIONS);
    let mut next_session = 1u64;
    let mut clients: Vec<ChangeClient> = CHANGE_USERS
        .iter()
        .map(|_| ChangeClient {
            session: None,
            token: None,
            view: Default::default(),
            last: 0,
            last_post: None,
        })
        .collect();
    // What a (re)connection does: hello with the room, resuming or not.
    let connect = |sim: &mut Sim, c: &mut ChangeClient, u: usize, s: u64, resume: bool| {
        sim.connect(s);
        let mut spec = json!({"room": "general"});
        if resume {
            spec["since"] = json!(c.last);
        } else {
            c.view.clear();
        }
        let mut hello =
            json!({"type": "hello", "version": 1, "name": CHANGE_USERS[u], "rooms": [spec]});
        if let Some(t) = &c.token {
            hello["token"] = json!(t);
        }
        sim.say(s, hello);
        c.session = Some(s);
    };
    // Every connected client takes what it was sent; the frames answering request `id`
    // of user `actor` are returned.
    let drain = |sim: &mut Sim, clients: &mut [ChangeClient], actor: Option<(usize, u64)>| {
        let mut answer = Vec::new();
        for (u, c) in clients.iter_mut().enumerate() {
            let Some(s) = c.session else { continue };
            for f in sim.take(s) {
                match &f {
                    ServerFrame::Welcome { token: Some(t), .. } => c.token = Some(t.clone()),
                    ServerFrame::Message(m) | ServerFrame::Change(m) => c.take(m),
                    ServerFrame::Joined { messages, .. } => messages.iter().for_each(|m| c.take(m)),
                    ServerFrame::Ack { id: Some(i), .. }
                    | ServerFrame::Error { id: Some(i), .. }
                        if actor == Some((u, i.0)) =>
                    {
                        answer.push(f.clone());
                    }
                    _ => {}
                }
            }
        }
        answer
    };
    for u in 0..CHANGE_USERS.len() {
        let s = next_session;
        next_session += 1;
        connect(&mut sim, &mut clients[u], u, s, false);
        drain(&mut sim, &mut clients, None);
    }
    for (i, op) in ops.iter().enumerate() {
        let id = 1000 + i as u64;
        let last = model.last_seq();
        let pick = |t: u64| 1 + t % (last + 1);
        let (u, post) = match op {
            Change::Send { u, reply } => (
                *u,
                Some(Post::Send {
                    body: format!("m{i}"),
                    reply_to: reply.map(pick),
                }),
            ),
            Change::Edit { u, target } => (
                *u,
                Some(Post::Edit {
                    target: pick(*target),
                    body: format!("e{i}"),
                }),
            ),
            Change::Delete { u, target } => (
                *u,
                Some(Post::Delete {
                    target: pick(*target),
                }),
            ),
            Change::React {
                u,
                target,
                emoji,
                on,
            } => (
                *u,
                Some(Post::React {
                    target: pick(*target),
                    emoji: EMOJI[*emoji].into(),
                    on: *on,
                }),
            ),
            Change::Resend { u } => (*u, None),
            Change::Drop { u } => {
                if let Some(s) = clients[*u].session.take() {
                    sim.disconnect(s);
                }
                drain(&mut sim, &mut clients, None);
                continue;
            }
            Change::Back { u, resume } => {
                if clients[*u].session.is_none() {
                    let s = next_session;
                    next_session += 1;
                    connect(&mut sim, &mut clients[*u], *u, s, *resume);
                }
                drain(&mut sim, &mut clients, None);
                continue;
            }
        };
        let c = &mut clients[u];
        let Some(s) = c.session else { continue };
        let (mut frame, cid, post) = match post {
            Some(post) => {
                let cid = format!("c{i}");
                let frame = match &post {
                    Post::Send { body, reply_to } => {
                        let mut f = json!({"type": "send", "body": body});
                        if let Some(r) = reply_to {
                            f["reply_to"] = json!(r);
                        }
                        f
                    }
                    Post::Edit { target, body } => {
                        json!({"type": "edit", "seq": target, "body": body})
                    }
                    Post::Delete { target } => json!({"type": "delete", "seq": target}),
                    Post::React { target, emoji, on } => {
                        json!({"type": "react", "seq": target, "emoji": emoji, "on": on})
                    }
                };
                (frame, cid, post)
            }
            None => match c.last_post.clone() {
                Some(p) => p,
                None => continue,
            },
        };
        frame["room"] = json!("general");
        frame["client_id"] = json!(cid);
        c.last_post = Some((frame.clone(), cid.clone(), post.clone()));
        frame["id"] = json!(id);
        sim.say(s, frame);
        let answer = drain(&mut sim, &mut clients, Some((u, id)));
        let want = model.post(CHANGE_USERS[u], &cid, &post);
        let got = match answer.as_slice() {
            [ServerFrame::Ack { seq, duplicate, .. }] => Ok((seq.0, *duplicate)),
            [ServerFrame::Error { code, .. }] => Err(*code),
            other => {
                return Err(TestCaseError::fail(format!(
                    "step {i} {op:?}: answered {other:?}"
                )));
            }
        };
        prop_assert_eq!(got, want, "step {} {:?}", i, op);
    }
    // Everyone comes back (resuming) and shows the room as the model does.
    for (u, c) in clients.iter_mut().enumerate() {
        if c.session.is_none() {
            let s = next_session;
            next_session += 1;
            connect(&mut sim, c, u, s, true);
        }
    }
    drain(&mut sim, &mut clients, None);
    let truth = model.view();
    for (u, c) in clients.iter().enumerate() {
        let shown: Vec<MessageView> = c.view.values().map(MessageView::of).collect();
        prop_assert_eq!(&shown, &truth, "{}'s view", CHANGE_USERS[u]);
    }
    // A newcomer's joined gives the same.
    let s = next_session;
    sim.connect(s);
    sim.say(
        s,
        json!({"type": "hello", "version": 1, "name": "dave", "rooms": [{"room": "general"}]}),
    );
    let mut dave = ChangeClient {
        session: Some(s),
        token: None,
        view: Default::default(),
        last: 0,
        last_post: None,
    };
    for f in sim.take(s) {
        if let ServerFrame::Joined { messages, .. } = &f {
            messages.iter().for_each(|m| dave.take(m));
        }
    }
    let shown: Vec<MessageView> = dave.view.values().map(MessageView::of).collect();
    prop_assert_eq!(&shown, &truth, "a newcomer's view");
    sim.assert_no_violations();
    Ok(())
}

proptest! {
    #![proptest_config(proptest_config(cases(128)))]

    /// Random interleavings of sends, replies, edits, deletes, reactions (added and
    /// taken back), resends and reconnections (resumed or fresh): every post is acked
    /// or refused as the model says, and at the end every client's view of every
    /// message (text, edited, deleted, reactions, reply) equals the model's.
    #[test]
    fn every_view_of_changed_messages_converges_to_the_model(
        ops in proptest::collection::vec(change_op(), 1..60)
    ) {
        run_changes(&ops)?;
    }
}
