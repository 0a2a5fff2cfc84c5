//! Workspace-level package: the example server, embedding demos and benchmarks live in
//! `examples/` and `benches/`. The library crates are `chat-core`, `chat-axum` and
//! `chat-cli`. The README's code is compiled as doctests here, so it stays true.
#![doc = include_str!("../README.md")]
