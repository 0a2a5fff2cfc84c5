//! Test support (feature `testing`): property-test your own [`Config`](crate::Config) and
//! host-auth hook against the same reference model the engine's own tests use.
//!
//! - [`Sim`] drives a [`Server`](crate::Server) the way a real driver would, on a simulated
//!   clock: inputs in, every output drained into per-session inboxes of decoded frames,
//!   closes, host events; [`Sim::advance`] fires due timers at their own instants. In
//!   durable mode it carries a store stand-in ([`Sim::store_next`], [`Sim::answer_loads`],
//!   [`Sim::restart`]).
//! - [`Harness`] runs a sequence of [`Op`]s (hello, join, leave, send, resend, direct
//!   messages, typing, history, bursts, bad frames, disconnects, refreshes, full queues,
//!   the store's answers, shutdown, restarts, time jumps) on a fresh server and on a small
//!   reference model, and after every step checks that every session received exactly
//!   the frames the model predicts, in order (so exactly-once in-order delivery to
//!   members, resume without loss or with an explicit gap, acks, flood refusals and
//!   closes), that nothing was sent to a closed session, that the getters agree with the
//!   model, and, independently of the model: no seq carries two messages, nothing
//!   acknowledged is missing from the store or lost across a restart, goodbye comes only
//!   after every pending message is settled, no typing reaches a congested session, and
//!   no session gets more acks than its send rate allows. [`Harness::check`] also runs
//!   the sequence twice and compares the outputs byte for byte.
//!
//! The ops use four users ([`USERS`]), eight connection slots ([`SLOTS`]) and three public
//! rooms ([`ROOMS`]) plus direct rooms. In host auth mode every `hello` is answered at once
//! by the harness's hook, with the name and the credentials the op presents
//! ([`TokenChoice::Right`] gives `secret-<name>`, [`TokenChoice::Wrong`] gives
//! [`WRONG_TOKEN`]).
//!
//! An embedder's property test, with its own flood limits and identity hook:
//!
//! ```
//! use std::time::Duration;
//! use chat_core::testing::Harness;
//! use chat_core::{AuthMode, Config, Rate};
//! use proptest::prelude::*;
//! use proptest::test_runner::{Config as Cases, TestRunner};
//!
//! let config = Config {
//!     auth: AuthMode::Host,
//!     send_rate: Rate { burst: 3, per_second: 1 },
//!     max_strikes: 5,
//!     history_window: 16,
//!     presence_grace: Duration::from_secs(2),
//!     ..Config::default()
//! };
//! // Our app lets everyone in under their own name, except "dee".
//! let harness = Harness::new(config)
//!     .with_auth(|name, _credentials| {
//!         if name.eq_ignore_ascii_case("dee") {
//!             Err(chat_core::AuthRefused::new("banned"))
//!         } else {
//!             Ok(name.to_owned())
//!         }
//!     })
//!     .with_len(40);
//! let mut runner = TestRunner::new(Cases { cases: 4, ..Cases::default() });
//! runner
//!     .run(&harness.ops(), |ops| harness.check(&ops))
//!     .unwrap();
//! ```
//!
//! In a test file, the same with the `proptest!` macro:
//! `proptest! { #[test] fn agrees(ops in harness().ops()) { harness().check(&ops)?; } }`.

mod model;
mod ops;
mod run;
mod sim;

pub use model::{ChangeModel, MessageView, Post};
pub use ops::{ModOp, Op, Pick, ROOMS, RoomsChoice, SLOTS, Since, TokenChoice, USERS, WRONG_TOKEN};
pub use ops::{hello, mod_op, op, ops};
pub use run::{AuthHook, Harness};
pub use sim::{
    AppendAsked, Say, Sim, base_now, check_timestamps, decode_server, is_rfc3339_millis, kind,
};
