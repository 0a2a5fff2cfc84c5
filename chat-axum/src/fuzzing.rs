//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; not a public API):
//! the WebSocket frame reader and the checks made on an upgrade request's headers.
//! Each must return, whatever the bytes, without panicking.

use axum::extract::FromRequestParts;
use axum::http::{HeaderName, HeaderValue, Request};

use crate::caps::{Caps, ConnectionLimits};
use crate::origin::OriginPolicy;
use crate::ws::{Incoming, Reader};

/// Feeds `data` to a frame reader in chunks whose sizes the first bytes choose, reads
/// every frame out (touching each payload) and compacts after each chunk, as the
/// connection does. The message limit is small so the size checks are reached.
pub fn ws_reader(data: &[u8]) {
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let mut reader = Reader::new(1 << 12);
    let step = usize::from(cut).max(1);
    for chunk in data.chunks(step) {
        reader.extend(chunk);
        loop {
            match reader.next() {
                Ok(Some(incoming)) => {
                    let payload = match &incoming {
                        Incoming::Text(p) | Incoming::Binary(p) | Incoming::Ping(p) => Some(p),
                        Incoming::Close(_, p) => Some(p),
                        Incoming::Pong => None,
                    };
                    if let (Incoming::Text(p), Some(_)) = (&incoming, payload) {
                        assert!(std::str::from_utf8(reader.payload(p)).is_ok());
                    } else if let Some(p) = payload {
                        let _ = reader.payload(p).len();
                    }
                }
                Ok(None) => break,
                Err(_) => return, // the connection would close here
            }
        }
        reader.compact();
    }
}

/// Takes `data` as header lines (`name: value`, one per line), builds an upgrade
/// request from them and runs what the server runs on one before the upgrade: the
/// upgrade checks and accept key, the Origin check under each policy, and the client
/// address a trusted proxy's `X-Forwarded-For` names.
pub fn upgrade_request(data: &[u8]) {
    let mut request = Request::get("/ws");
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        request = request.header(name, value);
    }
    let Ok(request) = request.body(()) else {
        return;
    };
    let (mut parts, ()) = request.into_parts();
    for policy in [
        OriginPolicy::SameOrigin,
        OriginPolicy::from_list(&["https://app.example".into()]),
        OriginPolicy::Any,
    ] {
        let _ = policy.check(&parts.headers);
    }
    let caps = Caps::new(ConnectionLimits {
        trusted_proxies: vec!["10.0.0.1".parse().expect("an address")],
        ..ConnectionLimits::default()
    });
    let _ = caps.client_ip("10.0.0.1".parse().expect("an address"), &parts.headers);
    // Without hyper's upgrade handle the extractor stops after the header checks, just
    // before it would take the connection; the accept key is computed from any key.
    // The extractor awaits nothing: one poll finishes it.
    {
        let extract = std::pin::pin!(crate::ws::Upgrade::from_request_parts(&mut parts, &()));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(std::future::Future::poll(extract, &mut cx).is_ready());
    }
    if let Some(key) = parts.headers.get(axum::http::header::SEC_WEBSOCKET_KEY) {
        let _ = crate::ws::accept_key(key.as_bytes());
    }
}

/// Replays every input kept under `fuzz/regressions/` (crashes once found, and seeds) on
/// stable, as a normal test: what the fuzzer once broke stays fixed.
#[cfg(test)]
mod replay {
    use std::path::PathBuf;

    fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/regressions")
            .join(target);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| {
                let path = entry.expect("a directory entry").path();
                let bytes = std::fs::read(&path).expect("readable");
                (path, bytes)
            })
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "no inputs in {}", dir.display());
        inputs
    }

    #[test]
    fn ws_reader_regressions() {
        for (path, bytes) in inputs("ws_reader") {
            eprintln!("{}", path.display());
            super::ws_reader(&bytes);
        }
    }

    #[test]
    fn upgrade_request_regressions() {
        for (path, bytes) in inputs("upgrade_request") {
            eprintln!("{}", path.display());
            super::upgrade_request(&bytes);
        }
    }
}
