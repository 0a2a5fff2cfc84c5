//! The operations of the property test and their proptest strategies.

use proptest::prelude::*;

use crate::protocol::Role;

/// The user names the operations use (`Op::Hello { user, .. }` indexes this).
pub const USERS: [&str; 4] = ["ann", "bob", "cy", "dee"];
/// The public rooms the operations use (`Op::Join { room, .. }` indexes this).
pub const ROOMS: [&str; 3] = ["general", "alpha", "beta"];
/// How many connection slots the operations address.
pub const SLOTS: usize = 8;
/// The credentials [`TokenChoice::Wrong`] presents; the default host-auth hook of
/// [`Harness`](super::Harness) refuses them.
pub const WRONG_TOKEN: &str = "0000000000000000ffffffffffffffff";

/// Which token (anonymous mode) or credentials (host mode) a `hello` presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenChoice {
    /// None.
    None,
    /// Anonymous mode: the user's current token, or the last one issued. Host mode: the
    /// credentials `secret-<name>`.
    Right,
    /// [`WRONG_TOKEN`].
    Wrong,
}

/// The rooms a `hello` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomsChoice {
    /// No `rooms` field: the configured default rooms.
    Default,
    /// `rooms: []`.
    Nothing,
    /// One of [`ROOMS`].
    One(usize),
    /// A reconnecting tab resumes these rooms from these seqs (built by the runner for a
    /// refresh or a restart; rarely useful in a hand-written sequence).
    Resume(Vec<(String, Option<u64>)>),
}

/// A resume cursor relative to the room's current last seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// `last - k` (saturating).
    Back(u64),
    /// A seq the server never issued (`last + 3`).
    Ahead,
}

/// A moderator's command ([`Op::Moderate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModOp {
    /// `kick`.
    Kick,
    /// `ban`, for `minutes` (`None`: for good).
    Ban(Option<u64>),
    /// `unban`.
    Unban,
    /// `mute`, for `minutes` (`None`: for good).
    Mute(Option<u64>),
    /// `unmute`.
    Unmute,
    /// `set_role` (owners only).
    SetRole(Role),
    /// `topic`: `t<n>`, or empty for `None` (clears it).
    Topic(Option<u8>),
    /// `slow_mode` with these seconds (0: off).
    SlowMode(u32),
}

/// Which room an op is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// The i-th (modulo) room the session is in, or `ROOMS[i]` if it is in none.
    Mine(usize),
    /// `ROOMS[i]`, whether the session is in it or not (to exercise the refusals).
    Any(usize),
}

/// One step of a property test. Ops name a slot; all but `Hello`, `Disconnect` and
/// `Stale` act on the first open session at or after it (cyclically), so that most ops
/// do something. An op that finds nothing to act on is a no-op.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// `hello` from the slot (opening a connection if it has none open). In host auth
    /// mode the harness answers the `Authenticate` at once with its hook's decision.
    Hello {
        /// Connection slot.
        slot: usize,
        /// Index into [`USERS`].
        user: usize,
        /// Say the name in upper case (names are case-insensitive).
        upper: bool,
        /// Token or credentials.
        token: TokenChoice,
        /// Rooms to join.
        rooms: RoomsChoice,
    },
    /// `join` a public room, maybe resuming from a seq.
    Join {
        /// Slot.
        slot: usize,
        /// Index into [`ROOMS`].
        room: usize,
        /// Resume cursor.
        since: Option<Since>,
    },
    /// `join` the direct room with a user (named from the caller's side, in upper case).
    JoinDm {
        /// Slot.
        slot: usize,
        /// Index into [`USERS`].
        peer: usize,
        /// Resume cursor.
        since: Option<Since>,
    },
    /// `leave` a room.
    Leave {
        /// Slot.
        slot: usize,
        /// Which room.
        room: Pick,
    },
    /// `send` to a room.
    Send {
        /// Slot.
        slot: usize,
        /// Which room.
        room: Pick,
        /// Client id `c<n>`, if any.
        client_id: Option<u8>,
    },
    /// `send` with `to`: a direct message.
    Dm {
        /// Slot.
        slot: usize,
        /// Index into [`USERS`].
        peer: usize,
        /// Client id `c<n>`, if any.
        client_id: Option<u8>,
    },
    /// The slot's previous send, byte for byte (a retry after a lost ack).
    Resend {
        /// Slot.
        slot: usize,
    },
    /// `n` sends to one room at the same instant, without client ids: beyond the send
    /// rate they are refused with `rate_limited`; beyond the frame rate the connection is
    /// closed as a flood.
    Burst {
        /// Slot.
        slot: usize,
        /// Which room.
        room: Pick,
        /// How many.
        n: u8,
    },
    /// A frame that is not JSON: `bad_frame`, two strikes.
    Garbage {
        /// Slot.
        slot: usize,
    },
    /// `typing`.
    Typing {
        /// Slot.
        slot: usize,
        /// Which room.
        room: Pick,
        /// Started or stopped.
        active: bool,
    },
    /// `history`.
    History {
        /// Slot.
        slot: usize,
        /// Which room.
        room: Pick,
        /// `before` as `last - k + 1`, if any.
        before: Option<u64>,
        /// Page size.
        limit: u32,
    },
    /// The connection drops (reported twice for a closed slot: the second must change
    /// nothing).
    Disconnect {
        /// Slot.
        slot: usize,
    },
    /// A page refresh: the connection drops and the same user reconnects at once with
    /// its token, resuming every room it was in from the last seq this tab saw.
    Refresh {
        /// Slot.
        slot: usize,
    },
    /// A frame from a connection that is already closed: it must be ignored.
    Stale {
        /// Slot.
        slot: usize,
    },
    /// The driver could not queue a frame for the session. Ephemeral: no typing events
    /// for it during the congestion backoff. Otherwise it is closed as a slow consumer,
    /// and the tab reconnects and resumes at once.
    QueueFull {
        /// Slot.
        slot: usize,
        /// Whether the dropped frame was a typing event.
        ephemeral: bool,
    },
    /// Durable mode: the store answers the oldest outstanding persist requests, in order.
    Store {
        /// How many (fewer if fewer wait).
        n: u8,
        /// Bit `i` set: the `i`-th answer is a failure.
        fail: u8,
    },
    /// `Server::shutdown`: goodbye and close to everyone once pending messages settle.
    Shutdown,
    /// The process restarts: a new server restored from the store (durable mode) or
    /// empty, and every open tab reconnects and resumes.
    Restart {
        /// Durable mode: persist requests left unanswered were written before the crash.
        flushed: bool,
        /// The store was reset too (always so without a durable store): a new epoch,
        /// seqs start again.
        wipe: bool,
    },
    /// Time passes; due timers fire at their own instants.
    Advance {
        /// Milliseconds.
        ms: u64,
    },
    /// A moderator's command from the slot's session (whatever its role: most are
    /// refused with `forbidden`).
    Moderate {
        /// Slot.
        slot: usize,
        /// Index into [`ROOMS`].
        room: usize,
        /// Index into [`USERS`]: the user acted on (not used by topic and slow mode).
        user: usize,
        /// The command.
        action: ModOp,
    },
    /// The host gives a user a role in a room ([`Server::set_role`](crate::Server::set_role)).
    GiveRole {
        /// Index into [`ROOMS`].
        room: usize,
        /// Index into [`USERS`].
        user: usize,
        /// The role (`Member` takes it away).
        role: Role,
    },
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![
        1 => Just(Role::Owner),
        2 => Just(Role::Moderator),
        1 => Just(Role::Member)
    ]
}

/// A moderator's command, sanctions of a minute or two (so that they end within a run).
pub fn mod_op() -> impl Strategy<Value = ModOp> {
    let minutes = prop_oneof![Just(None), (1u64..=2).prop_map(Some)];
    prop_oneof![
        2 => Just(ModOp::Kick),
        3 => minutes.clone().prop_map(ModOp::Ban),
        1 => Just(ModOp::Unban),
        3 => minutes.prop_map(ModOp::Mute),
        1 => Just(ModOp::Unmute),
        1 => role().prop_map(ModOp::SetRole),
        1 => prop::option::of(0u8..3).prop_map(ModOp::Topic),
        2 => prop::sample::select(vec![0u32, 2, 5]).prop_map(ModOp::SlowMode),
    ]
}

fn since() -> impl Strategy<Value = Option<Since>> {
    prop_oneof![
        2 => Just(None),
        4 => (0u64..14).prop_map(|k| Some(Since::Back(k))),
        1 => Just(Some(Since::Ahead)),
    ]
}

fn pick() -> impl Strategy<Value = Pick> {
    prop_oneof![
        5 => (0..ROOMS.len()).prop_map(Pick::Mine),
        1 => (0..ROOMS.len()).prop_map(Pick::Any),
    ]
}

/// A `hello` from any slot as any user.
pub fn hello() -> impl Strategy<Value = Op> {
    let token = prop_oneof![
        1 => Just(TokenChoice::None),
        3 => Just(TokenChoice::Right),
        1 => Just(TokenChoice::Wrong)
    ];
    let rooms = prop_oneof![
        4 => Just(RoomsChoice::Default),
        1 => Just(RoomsChoice::Nothing),
        2 => (0..ROOMS.len()).prop_map(RoomsChoice::One),
    ];
    (0..SLOTS, 0..USERS.len(), any::<bool>(), token, rooms).prop_map(
        |(slot, user, upper, token, rooms)| Op::Hello {
            slot,
            user,
            upper,
            token,
            rooms,
        },
    )
}

/// Any single op. `durable` adds the store's answers ([`Op::Store`]).
pub fn op(durable: bool) -> BoxedStrategy<Op> {
    let slot = 0..SLOTS;
    let user = 0..USERS.len();
    let room = 0..ROOMS.len();
    let cid = prop_oneof![Just(None), (0u8..3).prop_map(Some)];
    let ms = prop::sample::select(vec![
        1u64, 100, 999, 2_500, 4_999, 5_000, 5_001, 6_000, 6_001, 12_000,
    ]);
    let common = prop_oneof![
        16 => hello(),
        12 => (slot.clone(), room, since()).prop_map(|(slot, room, since)| Op::Join { slot, room, since }),
        4 => (slot.clone(), user.clone(), since()).prop_map(|(slot, peer, since)| Op::JoinDm { slot, peer, since }),
        8 => (slot.clone(), pick()).prop_map(|(slot, room)| Op::Leave { slot, room }),
        40 => (slot.clone(), pick(), cid.clone()).prop_map(|(slot, room, client_id)| Op::Send { slot, room, client_id }),
        8 => (slot.clone(), user, cid).prop_map(|(slot, peer, client_id)| Op::Dm { slot, peer, client_id }),
        8 => slot.clone().prop_map(|slot| Op::Resend { slot }),
        3 => (slot.clone(), pick(), 2u8..14).prop_map(|(slot, room, n)| Op::Burst { slot, room, n }),
        2 => slot.clone().prop_map(|slot| Op::Garbage { slot }),
        12 => (slot.clone(), pick(), any::<bool>()).prop_map(|(slot, room, active)| Op::Typing { slot, room, active }),
        8 => (slot.clone(), pick(), prop::option::of(0u64..12), 1u32..10).prop_map(
            |(slot, room, before, limit)| Op::History { slot, room, before, limit }
        ),
        8 => slot.clone().prop_map(|slot| Op::Disconnect { slot }),
        8 => slot.clone().prop_map(|slot| Op::Refresh { slot }),
        4 => slot.clone().prop_map(|slot| Op::Stale { slot }),
        3 => (slot, any::<bool>()).prop_map(|(slot, ephemeral)| Op::QueueFull { slot, ephemeral }),
        1 => Just(Op::Shutdown),
        2 => (any::<bool>(), prop::bool::weighted(0.25)).prop_map(|(flushed, wipe)| Op::Restart { flushed, wipe }),
        16 => ms.prop_map(|ms| Op::Advance { ms }),
        8 => (0..SLOTS, 0..ROOMS.len(), 0..USERS.len(), mod_op()).prop_map(
            |(slot, room, user, action)| Op::Moderate { slot, room, user, action }
        ),
        3 => (0..ROOMS.len(), 0..USERS.len(), role()).prop_map(
            |(room, user, role)| Op::GiveRole { room, user, role }
        ),
    ];
    if durable {
        prop_oneof![
            8 => common,
            // About one answer in four fails; failures shrink away.
            3 => (1u8..5, any::<u8>()).prop_map(|(n, m)| Op::Store { n, fail: m & m.rotate_left(3) }),
            // Pages beyond the window come from the store.
            1 => (0..SLOTS, pick(), prop::option::of(0u64..12), 1u32..10).prop_map(
                |(slot, room, before, limit)| Op::History { slot, room, before, limit }
            ),
        ]
        .boxed()
    } else {
        common.boxed()
    }
}

/// A few sessions say hello first, then up to `len` ops of any kind.
pub fn ops(durable: bool, len: usize) -> BoxedStrategy<Vec<Op>> {
    (
        prop::collection::vec(hello(), 4..=SLOTS),
        prop::collection::vec(op(durable), 1..len.max(2)),
    )
        .prop_map(|(mut first, rest)| {
            first.extend(rest);
            first
        })
        .boxed()
}
