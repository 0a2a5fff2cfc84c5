//! # chat-cli
//!
//! The terminal client of the chat workspace, as a library so its parts can be tested
//! (and reused): a full-screen chat ([`ui`], [`tui`]), a line mode for pipes
//! ([`plain`]), and script-friendly one-shots ([`oneshot`]). All of them drive the
//! protocol through [`chat_core::client::Client`], the sans-IO client state machine,
//! over one reconnecting WebSocket ([`net`], [`session`]). This crate does I/O and
//! rendering only; the chat rules live in `chat-core`.
//!
//! ```text
//!  keys / stdin lines ──► ui::App / plain / oneshot ──► Client (chat-core, sans-IO)
//!                                  ▲                        │ frames
//!  screen / stdout ◄── sanitize ◄──┴── events ◄── session ◄─┴─► net (tokio-tungstenite)
//! ```
//!
//! Everything received is shown through [`sanitize`]: other people's text can never
//! control the terminal.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod changes;
pub mod commands;
pub mod input;
pub mod net;
pub mod oneshot;
pub mod output;
pub mod plain;
pub mod requests;
pub mod sanitize;
pub mod session;
pub mod tokens;
pub mod tui;
pub mod ui;

/// Exit codes of `chat-cli`, stable for scripts.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// The server rejected the request (the error code and message are on stderr), or
    /// it refused the name.
    pub const REJECTED: i32 = 1;
    /// Wrong usage: unknown option, missing argument, invalid URL.
    pub const USAGE: i32 = 2;
    /// The server could not be reached (connection refused, handshake failed, lost).
    pub const CONNECTION: i32 = 3;
    /// The server did not answer in time (`--timeout`).
    pub const TIMEOUT: i32 = 4;
    /// Interrupted by Ctrl-C (SIGINT) in a one-shot mode.
    pub const INTERRUPTED: i32 = 130;
}

/// The default server: the example server's WebSocket endpoint.
pub const DEFAULT_URL: &str = "ws://127.0.0.1:5000/ws";
