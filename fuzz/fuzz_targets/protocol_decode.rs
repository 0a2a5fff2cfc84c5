//! `chat_core::protocol::decode`: any bytes are a client frame or a decode error, never a
//! panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = chat_core::protocol::decode(data);
});
