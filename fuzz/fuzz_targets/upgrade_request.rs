//! What the server checks on an upgrade request's headers: never panics.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| chat_axum::fuzzing::upgrade_request(data));
