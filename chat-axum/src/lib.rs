//! Axum adapter for `chat-core` (work in progress: see issue 3).
