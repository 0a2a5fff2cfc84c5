//! Workspace-level package: the example server, embedding demos and benchmarks live in
//! `examples/` and `benches/`. The library crates are `chat-core`, `chat-axum` and `chat-cli`.
