//! # chat-core
//!
//! A real-time chat engine you embed: users, rooms, sessions, presence, history and flood
//! control as a deterministic, transport-agnostic state machine, plus the wire protocol
//! types and (feature `runtime`) a tokio driver with an async handle.
//!
//! ```text
//!  browser / chat-cli / your app
//!         │  JSON frames (protocol module, docs/PROTOCOL.md)
//!  transport adapter (chat-axum, or your own)
//!         │  Input::{Connected, Received, Disconnected, QueueFull, …}
//!  runtime (feature "runtime"): one task owns the Server; store; timers
//!         │  handle_input(now, input) / poll_output() / poll_timeout()
//!  Server: rooms, sessions, users, presence, history window, limits
//! ```
//!
//! ## The run loop
//!
//! The [`Server`] does no I/O and reads no clock. Its driver owns it and loops:
//!
//! 1. feed one [`Input`] with [`Server::handle_input`] (or, when the timer fires,
//!    call [`Server::handle_timeout`]);
//! 2. drain [`Server::poll_output`] until it returns `None`, doing what each [`Output`]
//!    says: queue a frame on a connection, close one, persist a message, …;
//! 3. re-arm the timer from [`Server::poll_timeout`].
//!
//! ```
//! use std::time::Instant;
//! use chat_core::{protocol, Config, Input, Now, Output, Server, SessionId};
//!
//! let mut server = Server::new(Config::default());
//! let now = Now::new(Instant::now(), chrono::Utc::now());
//! let alice = SessionId(1);
//! server.handle_input(now, Input::Connected { session: alice }).unwrap();
//! let hello = br#"{"type":"hello","version":1,"name":"alice"}"#;
//! server.handle_input(now, Input::Received { session: alice, frame: protocol::decode(hello) }).unwrap();
//! let mut frames = Vec::new();
//! while let Some(output) = server.poll_output() {
//!     for (to, frame) in output.sends() {
//!         assert_eq!(to, alice);
//!         frames.push(frame.decode().unwrap());
//!     }
//! }
//! // A welcome, then the default room `general` with alice in it.
//! assert!(matches!(frames[0], protocol::ServerFrame::Welcome { .. }));
//! assert!(matches!(&frames[1], protocol::ServerFrame::Joined { room, .. } if room.as_str() == "general"));
//! ```
//!
//! ## Kinds of methods
//!
//! Getters (`members`, `session_count`, …) read state; `handle_*` feed inputs;
//! [`Server::restore_room`] and [`Server::shutdown`] change state from the host's side;
//! `poll_*` give outputs and the next deadline.
//!
//! ## Errors
//!
//! Anything a client does wrong becomes an `error` frame with a stable
//! [`protocol::ErrorCode`], a message and the command's request id, sent to that session
//! only. Floods and repeated bad frames close only that connection ([`CloseReason`]).
//! `Err` from `handle_input` is [`ApiMisuse`]: the driver broke the contract.
//!
//! ## Time
//!
//! Time is an argument: [`Now`] carries a monotonic instant (timers, rate limits) and a
//! UTC time (message timestamps). The same inputs at the same times give the same
//! outputs, byte for byte.
//!
//! ## Backpressure
//!
//! The driver keeps a bounded outbound queue per connection. When a frame does not fit
//! it tells the core with [`Input::QueueFull`]: a dropped ephemeral frame (typing) makes
//! the core stop sending that session typing for a while; a dropped message closes the
//! session as a slow consumer, so it reconnects and resumes without a hole. Nobody else
//! slows down.
//!
//! ## Testing your hooks
//!
//! With the feature `testing`, [`testing`] holds the harness the engine's own tests use: a
//! [`Server`] on a simulated clock with a store stand-in, and a reference model with
//! proptest strategies, so a host app can property-test its own [`Config`] (flood limits,
//! durable mode) and host-auth decisions against the same semantics.
//!
//! ## Fan-out cost
//!
//! A room event is serialized once into an [`protocol::Encoded`] (reference-counted
//! bytes) and leaves the core as one [`Output::Broadcast`], whose [`Recipients`] is the
//! room's recipient list, shared rather than copied: the core's work per event does not
//! grow with the room. [`Output::sends`] walks the (recipient, frame) pairs of an output.
//!
//! ## Features
//!
//! None is on by default: the state machine and the protocol types need no runtime.
//!
//! - `runtime`: the `runtime` module, a tokio driver task with the async `Hub` handle,
//!   the `Store` trait and an in-memory store.
//! - `sqlite`: `SqliteStore`, a durable store on SQLite (bundled, WAL, group commit);
//!   implies `runtime`.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod client;
mod ids;
pub mod protocol;
#[cfg(feature = "runtime")]
pub mod runtime;
mod server;
#[cfg(feature = "testing")]
pub mod testing;

pub use ids::{
    ClientMsgId, NameError, RequestId, RoomName, Seq, SessionId, UserKey, UserName, fold,
    is_invisible,
};
pub use server::{
    Announced, ApiMisuse, Appended, AuthMode, AuthRefused, ChangeRules, CloseReason, Config,
    EXPIRED_REASON, EntryDetail, Event, Identity, Input, LoadedRoom, ModerationChange, Now, Output,
    Permissions, Rate, Recipients, Retention, RoomAccess, RoomPolicy, Server, SharedPolicy,
    StoreError,
};

/// The crate README's examples, compiled as doctests so they stay true.
#[cfg(all(doctest, feature = "runtime"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
