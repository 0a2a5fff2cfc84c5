//! The server side of RFC 6455, as much as the chat needs and no more: the HTTP/1.1
//! upgrade, a frame reader (client frames: masked, fragmented or not, interleaved
//! control frames, UTF-8 checked per fragment) and frame writers (server frames:
//! unmasked, each message in one frame). No extensions, no subprotocols.
//!
//! Why our own and not tungstenite behind axum's `WebSocket`: a chat server writes the
//! same small frame to many sockets. Here a connection is one task that frames what
//! the hub queued straight into its write buffer and writes it with one syscall, reads
//! into a stack buffer and keeps no read buffer while idle. Through `Sink<Message>` each
//! frame was revalidated as UTF-8, wrapped, and handed between two tasks per
//! connection; see docs/ARCHITECTURE.md for the figures.

use std::ops::Range;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};

/// A validated WebSocket upgrade request (HTTP/1.1 `GET` with the four headers).
pub(crate) struct Upgrade {
    key: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

/// Why a request to the WebSocket endpoint is not an upgrade.
#[derive(Debug)]
pub(crate) struct NotUpgrade(&'static str, StatusCode);

impl IntoResponse for NotUpgrade {
    fn into_response(self) -> Response {
        let mut response = (self.1, format!("{}\n", self.0)).into_response();
        if self.1 == StatusCode::UPGRADE_REQUIRED {
            // A 426 names the protocol to upgrade to (RFC 9110 §15.5.22).
            let headers = response.headers_mut();
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        response
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = NotUpgrade;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, NotUpgrade> {
        let bad = |what| Err(NotUpgrade(what, StatusCode::BAD_REQUEST));
        if parts.version > Version::HTTP_11 || parts.method != Method::GET {
            return bad("a WebSocket upgrade is an HTTP/1.1 GET");
        }
        if !has_token(&parts.headers, header::CONNECTION, "upgrade")
            || !has_token(&parts.headers, header::UPGRADE, "websocket")
        {
            return Err(NotUpgrade(
                "this endpoint speaks WebSocket only",
                StatusCode::UPGRADE_REQUIRED,
            ));
        }
        if parts.headers.get(header::SEC_WEBSOCKET_VERSION) != Some(&HeaderValue::from_static("13"))
        {
            return bad("Sec-WebSocket-Version must be 13");
        }
        let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return bad("Sec-WebSocket-Key is missing");
        };
        let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            return bad("this connection cannot be upgraded");
        };
        Ok(Upgrade { key, on_upgrade })
    }
}

impl Upgrade {
    /// The `101 Switching Protocols` answer, and the connection once hyper has sent it.
    pub(crate) fn accept(self) -> (Response, hyper::upgrade::OnUpgrade) {
        let accept = accept_key(self.key.as_bytes());
        let mut response = Response::new(axum::body::Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
        );
        (response, self.on_upgrade)
    }
}

/// `Sec-WebSocket-Accept` for a client's key: base64 of the SHA-1 of the key and the
/// protocol's GUID (RFC 6455 §4.2.2).
pub(crate) fn accept_key(key: &[u8]) -> String {
    use sha1::Digest;
    let mut sha1 = sha1::Sha1::new();
    sha1.update(key);
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    data_encoding::BASE64.encode(&sha1.finalize())
}

/// Whether a comma-separated header holds `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Why the reader gives up on a connection: the close code and reason to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fail {
    pub code: u16,
    pub reason: &'static str,
}

pub(crate) const TOO_BIG: Fail = Fail {
    code: 1009,
    reason: "message too big",
};
pub(crate) const BAD_UTF8: Fail = Fail {
    code: 1007,
    reason: "invalid UTF-8",
};
pub(crate) const PROTOCOL: Fail = Fail {
    code: 1002,
    reason: "protocol error",
};

/// One complete thing the peer said. Payload ranges index [`Reader::payload`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// A text message (valid UTF-8).
    Text(Payload),
    /// A binary message.
    Binary(Payload),
    /// A ping, to be answered with a pong carrying the same payload.
    Ping(Payload),
    /// A pong (nothing to do: any frame counts as a sign of life).
    Pong,
    /// The peer's close frame: its code (if any) and reason.
    Close(Option<u16>, Payload),
}

/// Where a payload is: in the read buffer, or the reassembled fragmented message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Payload {
    Buf(Range<usize>),
    Assembled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Binary,
}

/// Parses client frames out of the bytes read so far.
///
/// The buffers hold only what is unparsed (and a fragmented message in progress), and
/// [`Reader::compact`] gives their memory back once they are empty, so an idle
/// connection keeps next to nothing here.
#[derive(Debug, Default)]
pub(crate) struct Reader {
    buf: Vec<u8>,
    pos: usize,
    message: Vec<u8>,
    kind: Option<Kind>,
    /// Prefix of `message` known to be valid UTF-8 (text messages).
    utf8_checked: usize,
    max: usize,
}

impl Reader {
    pub(crate) fn new(max_message: usize) -> Reader {
        Reader {
            max: max_message,
            ..Reader::default()
        }
    }

    /// Adds bytes read from the socket.
    pub(crate) fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The bytes of a payload returned by [`Reader::next`], valid until the next call.
    pub(crate) fn payload(&self, payload: &Payload) -> &[u8] {
        match payload {
            Payload::Buf(range) => &self.buf[range.clone()],
            Payload::Assembled => &self.message,
        }
    }

    /// The next complete message or control frame, `Ok(None)` when more bytes are needed.
    pub(crate) fn next(&mut self) -> Result<Option<Incoming>, Fail> {
        loop {
            let Some(frame) = self.frame()? else {
                return Ok(None);
            };
            if let Some(incoming) = frame {
                return Ok(Some(incoming));
            }
        }
    }

    /// Bytes the reader's buffers hold (their capacity), for `chat_ws_buffer_bytes`.
    pub(crate) fn capacity(&self) -> usize {
        self.buf.capacity() + self.message.capacity()
    }

    /// Drops what was parsed; frees the buffers when nothing is pending.
    pub(crate) fn compact(&mut self) {
        if self.pos == self.buf.len() {
            // Nothing pending (the usual case): an idle connection holds no buffer; the
            // next read allocates what it needs, which costs less than the syscall.
            self.buf = Vec::new();
        } else if self.pos > 0 {
            self.buf.drain(..self.pos);
        }
        self.pos = 0;
        if self.kind.is_none() && self.message.capacity() > 0 {
            self.message = Vec::new();
        }
    }

    /// One frame: `Ok(None)` if incomplete, `Ok(Some(None))` for a fragment that does not
    /// complete a message yet.
    #[allow(clippy::option_option)]
    fn frame(&mut self) -> Result<Option<Option<Incoming>>, Fail> {
        let b = &self.buf[self.pos..];
        if b.len() < 2 {
            return Ok(None);
        }
        let (fin, rsv, opcode) = (b[0] & 0x80 != 0, b[0] & 0x70, b[0] & 0x0f);
        let (masked, len7) = (b[1] & 0x80 != 0, b[1] & 0x7f);
        if rsv != 0 || !masked {
            return Err(PROTOCOL); // no extensions; client frames are always masked
        }
        let control = opcode & 0x08 != 0;
        if !matches!(opcode, 0 | 1 | 2 | 8 | 9 | 10) || (control && (!fin || len7 > 125)) {
            return Err(PROTOCOL);
        }
        let (len, ext) = match len7 {
            126 => match b.get(2..4) {
                Some(l) => (u64::from(u16::from_be_bytes([l[0], l[1]])), 2),
                None => return Ok(None),
            },
            127 => match b.get(2..10) {
                Some(l) => {
                    let len = u64::from_be_bytes(l.try_into().expect("8 bytes"));
                    if len >> 63 != 0 {
                        return Err(PROTOCOL);
                    }
                    (len, 8)
                }
                None => return Ok(None),
            },
            n => (u64::from(n), 0),
        };
        // Judge the size from the header, before buffering any of the payload.
        let pending = if opcode == 0 { self.message.len() } else { 0 };
        let len = usize::try_from(len).map_err(|_| TOO_BIG)?;
        if !control && len.saturating_add(pending) > self.max {
            return Err(TOO_BIG);
        }
        let header = 2 + ext + 4;
        if b.len() < header + len {
            return Ok(None);
        }
        let mask: [u8; 4] = b[2 + ext..header].try_into().expect("4 bytes");
        let start = self.pos + header;
        let range = start..start + len;
        self.pos = range.end;
        unmask(&mut self.buf[range.clone()], mask);

        let kind = match opcode {
            1 => Kind::Text,
            2 => Kind::Binary,
            0 => {
                let Some(kind) = self.kind else {
                    return Err(PROTOCOL); // a continuation of nothing
                };
                self.message.extend_from_slice(&self.buf[range]);
                self.check_utf8(kind, fin)?;
                if !fin {
                    return Ok(Some(None));
                }
                self.kind = None;
                return Ok(Some(Some(match kind {
                    Kind::Text => Incoming::Text(Payload::Assembled),
                    Kind::Binary => Incoming::Binary(Payload::Assembled),
                })));
            }
            8 => return self.close(range).map(|c| Some(Some(c))),
            9 => return Ok(Some(Some(Incoming::Ping(Payload::Buf(range))))),
            _ => return Ok(Some(Some(Incoming::Pong))),
        };
        if self.kind.is_some() {
            return Err(PROTOCOL); // a new message inside a fragmented one
        }
        if fin {
            if kind == Kind::Text && std::str::from_utf8(&self.buf[range.clone()]).is_err() {
                return Err(BAD_UTF8);
            }
            return Ok(Some(Some(match kind {
                Kind::Text => Incoming::Text(Payload::Buf(range)),
                Kind::Binary => Incoming::Binary(Payload::Buf(range)),
            })));
        }
        self.kind = Some(kind);
        self.message.clear();
        self.utf8_checked = 0;
        self.message.extend_from_slice(&self.buf[range]);
        self.check_utf8(kind, false)?;
        Ok(Some(None))
    }

    /// Fails a text message as soon as its bytes cannot become UTF-8, not only at the end.
    fn check_utf8(&mut self, kind: Kind, complete: bool) -> Result<(), Fail> {
        if kind != Kind::Text {
            return Ok(());
        }
        match std::str::from_utf8(&self.message[self.utf8_checked..]) {
            Ok(_) => self.utf8_checked = self.message.len(),
            Err(e) if e.error_len().is_none() && !complete => self.utf8_checked += e.valid_up_to(),
            Err(_) => return Err(BAD_UTF8),
        }
        Ok(())
    }

    fn close(&self, range: Range<usize>) -> Result<Incoming, Fail> {
        let body = &self.buf[range.clone()];
        match body.len() {
            0 => Ok(Incoming::Close(
                None,
                Payload::Buf(range.start..range.start),
            )),
            1 => Err(PROTOCOL),
            _ => {
                let code = u16::from_be_bytes([body[0], body[1]]);
                if !close_code_allowed(code) {
                    return Err(PROTOCOL);
                }
                if std::str::from_utf8(&body[2..]).is_err() {
                    return Err(BAD_UTF8);
                }
                Ok(Incoming::Close(
                    Some(code),
                    Payload::Buf(range.start + 2..range.end),
                ))
            }
        }
    }
}

/// Close codes a peer may send (RFC 6455 §7.4 and the IANA registry).
fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999)
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let v = u64::from_ne_bytes((&*chunk).try_into().expect("8 bytes")) ^ wide;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// Appends one unmasked server frame (FIN set) to `out`.
pub(crate) fn write_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    let len = payload.len();
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

pub(crate) const TEXT: u8 = 0x1;
pub(crate) const BINARY: u8 = 0x2;
pub(crate) const PING: u8 = 0x9;
pub(crate) const PONG: u8 = 0xa;

/// Appends a close frame with `code` and `reason` (at most 123 bytes, as the RFC says).
pub(crate) fn write_close(out: &mut Vec<u8>, code: Option<u16>, reason: &str) {
    let mut body = Vec::with_capacity(2 + reason.len());
    if let Some(code) = code {
        body.extend_from_slice(&code.to_be_bytes());
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        body.extend_from_slice(&reason.as_bytes()[..end]);
    }
    write_frame(out, 0x8, &body);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked with a fixed key.
    fn client(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn read_all(reader: &mut Reader) -> Result<Vec<(String, Vec<u8>)>, Fail> {
        let mut got = Vec::new();
        while let Some(m) = reader.next()? {
            let (what, p) = match &m {
                Incoming::Text(p) => ("text", Some(p)),
                Incoming::Binary(p) => ("binary", Some(p)),
                Incoming::Ping(p) => ("ping", Some(p)),
                Incoming::Pong => ("pong", None),
                Incoming::Close(code, p) => {
                    got.push((format!("close {code:?}"), reader.payload(p).to_vec()));
                    continue;
                }
            };
            got.push((
                what.to_owned(),
                p.map(|p| reader.payload(p).to_vec()).unwrap_or_default(),
            ));
        }
        Ok(got)
    }

    #[test]
    fn frames_arriving_a_byte_at_a_time_are_read_whole() {
        let long = "é".repeat(40_000); // 80,000 bytes: the 64-bit length form
        let mut bytes = client(true, TEXT, b"hello");
        bytes.extend(client(true, TEXT, "x".repeat(300).as_bytes())); // 16-bit length
        bytes.extend(client(false, TEXT, &long.as_bytes()[..1])); // splits a character
        bytes.extend(client(true, PING, b"p")); // control frames may interleave
        bytes.extend(client(true, 0, &long.as_bytes()[1..]));
        bytes.extend(client(true, BINARY, &[0, 255]));
        let mut reader = Reader::new(100_000);
        let mut got = Vec::new();
        for b in &bytes {
            reader.extend(&[*b]);
            got.extend(read_all(&mut reader).unwrap());
            reader.compact();
        }
        let expected: Vec<(String, Vec<u8>)> = vec![
            ("text".into(), b"hello".to_vec()),
            ("text".into(), "x".repeat(300).into_bytes()),
            ("ping".into(), b"p".to_vec()),
            ("text".into(), long.into_bytes()),
            ("binary".into(), vec![0, 255]),
        ];
        assert_eq!(got, expected);
        assert_eq!((reader.buf.capacity(), reader.message.capacity()), (0, 0));
    }

    #[test]
    fn protocol_violations_fail_with_the_right_close() {
        let cases: Vec<(Vec<u8>, Fail)> = vec![
            (client(true, 3, b""), PROTOCOL),          // reserved opcode
            (client(false, PING, b""), PROTOCOL),      // fragmented control frame
            (client(true, PING, &[0; 126]), PROTOCOL), // control frame too long
            (client(true, 0, b"x"), PROTOCOL),         // continuation of nothing
            (vec![0x81, 0x01, b'x'], PROTOCOL),        // unmasked client frame
            (vec![0xc1, 0x80, 0, 0, 0, 0], PROTOCOL),  // RSV1 without an extension
            (client(true, 0x8, &[3]), PROTOCOL),       // one-byte close body
            (client(true, 0x8, &1005u16.to_be_bytes()), PROTOCOL), // a code never sent
            (client(true, TEXT, &[0xff]), BAD_UTF8),
            (client(true, 0x8, &[0x03, 0xe8, 0xff]), BAD_UTF8), // close reason
            (client(true, TEXT, &[b'a'; 11]), TOO_BIG),
            (
                [client(false, TEXT, b"abc"), client(true, TEXT, b"d")].concat(),
                PROTOCOL, // a new message inside a fragmented one
            ),
            (
                [client(false, TEXT, &[b'a'; 6]), client(true, 0, &[b'a'; 5])].concat(),
                TOO_BIG, // the reassembled message is over the limit
            ),
        ];
        for (bytes, fail) in cases {
            let mut reader = Reader::new(10);
            reader.extend(&bytes);
            assert_eq!(read_all(&mut reader), Err(fail), "{bytes:x?}");
        }
    }

    #[test]
    fn invalid_utf8_fails_at_the_fragment_that_breaks_it() {
        let mut reader = Reader::new(100);
        reader.extend(&client(false, TEXT, "ok ".as_bytes()));
        reader.extend(&client(false, 0, &[0xce])); // incomplete: fine for now
        assert_eq!(reader.next(), Ok(None));
        reader.extend(&client(false, 0, &[0xff])); // can never be UTF-8
        assert_eq!(reader.next(), Err(BAD_UTF8));
        // A message may not end inside a character.
        let mut reader = Reader::new(100);
        reader.extend(&client(false, TEXT, b"ok"));
        reader.extend(&client(true, 0, &[0xce]));
        assert_eq!(reader.next(), Err(BAD_UTF8));
    }

    #[test]
    fn an_oversize_frame_is_refused_from_its_header_alone() {
        let mut reader = Reader::new(1000);
        let header = &client(true, TEXT, &[b'a'; 70_000])[..14];
        reader.extend(header);
        assert_eq!(reader.next(), Err(TOO_BIG));
    }

    #[test]
    fn server_frames_use_the_shortest_length() {
        for (len, header) in [
            (5usize, 2usize),
            (125, 2),
            (126, 4),
            (65_535, 4),
            (65_536, 10),
        ] {
            let mut out = Vec::new();
            write_frame(&mut out, TEXT, &vec![b'a'; len]);
            assert_eq!(out.len(), header + len, "{len}");
            assert_eq!(out[0], 0x81);
        }
        let mut out = Vec::new();
        write_close(&mut out, Some(1000), &"é".repeat(100));
        assert_eq!(out[1] as usize, out.len() - 2);
        assert!(out.len() - 2 <= 125);
        assert!(
            std::str::from_utf8(&out[4..]).is_ok(),
            "cut on a character boundary"
        );
    }
}
