//! The WebSocket frame reader: any bytes, in any chunking, never panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| chat_axum::fuzzing::ws_reader(data));
