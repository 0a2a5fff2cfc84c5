//! The WebSocket layer's own edges, over real sockets: requests to `/ws` that are not a
//! valid upgrade get a clear HTTP answer and create nothing, and the chat endpoint reads a
//! fragmented message and answers a client's ping like any other frame.

mod common;

use chat_core::protocol::ServerFrame;
use common::{TestServer, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends a raw HTTP/1.1 request for `/ws` with `headers`; returns the response head.
async fn raw_request(server: &TestServer, method: &str, headers: &[&str]) -> String {
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut request = format!("{method} /ws HTTP/1.1\r\nHost: {}\r\n", server.addr);
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("Connection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    // Until the server hangs up, or (a 101: the socket stays open) the head is complete.
    let mut out = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("HTTP answer in time")
            .unwrap();
        out.extend_from_slice(&chunk[..n]);
        let switching =
            out.starts_with(b"HTTP/1.1 101") && out.windows(4).any(|w| w == b"\r\n\r\n");
        if n == 0 || switching {
            return String::from_utf8_lossy(&out).into_owned();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_are_not_an_upgrade_get_a_clear_answer_and_create_nothing() {
    let server = TestServer::start().await;
    let upgrade = ["Upgrade: websocket", "Connection: upgrade"];
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";

    // A plain page load of /ws: 426, naming the protocol to upgrade to (RFC 9110 §15.5.22).
    let plain = raw_request(&server, "GET", &[]).await;
    assert!(plain.starts_with("HTTP/1.1 426"), "{plain}");
    assert!(
        plain.to_ascii_lowercase().contains("upgrade: websocket"),
        "{plain}"
    );

    // A WebSocket version we do not speak.
    let old = raw_request(
        &server,
        "GET",
        &[
            upgrade[0],
            "Connection: Upgrade",
            key,
            "Sec-WebSocket-Version: 8",
        ],
    )
    .await;
    assert!(old.starts_with("HTTP/1.1 400"), "{old}");
    assert!(old.contains("Sec-WebSocket-Version must be 13"), "{old}");

    // No key.
    let keyless = raw_request(
        &server,
        "GET",
        &[upgrade[0], upgrade[1], "Sec-WebSocket-Version: 13"],
    )
    .await;
    assert!(keyless.starts_with("HTTP/1.1 400"), "{keyless}");
    assert!(
        keyless.contains("Sec-WebSocket-Key is missing"),
        "{keyless}"
    );

    assert_eq!(server.hub.stats().connections, 0);
    assert_eq!(server.tracker.len(), 0, "no connection task was started");

    // A valid upgrade (tokens in any case, among others) still works.
    let ok = raw_request(
        &server,
        "GET",
        &[
            "Upgrade: WebSocket",
            "Connection: keep-alive, Upgrade",
            key,
            "Sec-WebSocket-Version: 13",
        ],
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 101"), "{ok}");
    // The accept key of RFC 6455 §1.3's example.
    assert!(ok.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{ok}");
    server.stop().await.expect("clean stop");
}

/// A masked client frame, built by hand (`fin`, `opcode`, payload).
fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut out = vec![
        if fin { 0x80 } else { 0 } | opcode,
        0x80 | payload.len() as u8,
    ];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Reads one unmasked server frame: (opcode, payload).
async fn server_frame(s: &mut tokio::net::TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    tokio::time::timeout(WAIT, s.read_exact(&mut head))
        .await
        .expect("a frame in time")
        .unwrap();
    assert_eq!(head[0] & 0x80, 0x80, "server frames are whole");
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
    let len = match head[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).await.unwrap();
            usize::from(u16::from_be_bytes(l))
        }
        127 => panic!("no frame here is that large"),
        n => usize::from(n),
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.unwrap();
    (head[0] & 0x0f, payload)
}

/// A WebSocket upgrade over a raw socket; returns the socket after the `101`.
async fn raw_upgrade(server: &TestServer) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(WAIT, s.read_exact(&mut byte))
            .await
            .expect("the 101 in time")
            .unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// Hand-built frames over a raw socket (a WebSocket client library would not send a
/// ping between the fragments of a message): the chat endpoint reassembles a fragmented
/// `hello`, answers a ping sent between its fragments with the same payload, and
/// welcomes the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragmented_hello_is_read_whole_and_a_ping_is_answered_with_its_payload() {
    let server = TestServer::start().await;
    let mut s = raw_upgrade(&server).await;

    let hello = r#"{"type":"hello","version":1,"name":"alice","rooms":[]}"#.as_bytes();
    let (a, b) = hello.split_at(20);
    let mut bytes = client_frame(false, 0x1, a);
    bytes.extend(client_frame(true, 0x9, b"between"));
    bytes.extend(client_frame(true, 0x0, b));
    s.write_all(&bytes).await.unwrap();

    assert_eq!(
        server_frame(&mut s).await,
        (0xa, b"between".to_vec()),
        "pong, same payload"
    );
    let (opcode, welcome) = server_frame(&mut s).await;
    assert_eq!(opcode, 0x1);
    match serde_json::from_slice::<ServerFrame>(&welcome).unwrap() {
        ServerFrame::Welcome { user, .. } => assert_eq!(user.as_str(), "alice"),
        other => panic!("expected welcome, got {other:?}"),
    }
    // Our close; the server answers with its own and ends the connection.
    s.write_all(&client_frame(true, 0x8, &1000u16.to_be_bytes()))
        .await
        .unwrap();
    let (opcode, body) = server_frame(&mut s).await;
    assert_eq!((opcode, &body[..2]), (0x8, &1000u16.to_be_bytes()[..]));
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
        .await
        .expect("the server hangs up after the close handshake")
        .unwrap();
    assert!(rest.is_empty());
    server.stop().await.expect("clean stop");
}

/// A peer that sends pings but reads nothing cannot make the server buffer a pong for
/// each: pings pass no flood control, so with a backlog only those that find room are
/// answered. 200,000 pings (26 MB of pongs, more than the kernel's socket buffers hold)
/// get far fewer pongs, and the connection still works afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_from_a_peer_that_does_not_read_gets_bounded_pongs() {
    const PINGS: usize = 200_000;
    let server = TestServer::start().await;
    let mut s = raw_upgrade(&server).await;
    let ping = client_frame(true, 0x9, &[b'p'; 125]);
    let burst: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 1000)
        .collect();
    for _ in 0..PINGS / 1000 {
        tokio::time::timeout(WAIT, s.write_all(&burst))
            .await
            .expect("the server keeps reading")
            .unwrap();
    }
    let hello = r#"{"type":"hello","version":1,"name":"pinger","rooms":[]}"#.as_bytes();
    s.write_all(&client_frame(true, 0x1, hello)).await.unwrap();
    let mut pongs = 0;
    let welcome = loop {
        match server_frame(&mut s).await {
            (0xa, payload) => {
                assert_eq!(payload.len(), 125);
                pongs += 1;
            }
            (0x1, text) => break text,
            (opcode, _) => panic!("unexpected opcode {opcode:#x}"),
        }
    };
    assert!(
        serde_json::from_slice::<ServerFrame>(&welcome)
            .is_ok_and(|f| matches!(f, ServerFrame::Welcome { .. })),
        "{}",
        String::from_utf8_lossy(&welcome)
    );
    assert!(pongs > 0, "pings are answered");
    assert!(
        pongs < PINGS / 2,
        "{pongs} pongs for {PINGS} unread pings: not bounded"
    );
    server.stop().await.expect("clean stop");
}
