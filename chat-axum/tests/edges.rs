//! The hard edges, over real sockets: a client trickling its request head (slowloris) or
//! sending nothing is dropped after the header-read timeout while others connect; an
//! upgraded connection that never says anything is closed; the connection caps refuse
//! with 503/429 and `Retry-After` before the upgrade, and count the client a trusted
//! proxy names.

mod common;

use std::time::Duration;

use chat_axum::{ConnectionLimits, RouterOptions};
use chat_core::runtime::HubConfig;
use common::{Client, TestServer, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::{self, Message};

/// Posts to `general` and waits for the message to come back: the client is served.
async fn talks(c: &mut Client, body: &str) {
    c.say(1, "general", body, None).await;
    c.recv_until("its own message", |f| match f {
        chat_core::protocol::ServerFrame::Message(m) if &*m.body == body => Some(()),
        _ => None,
    })
    .await;
}

/// Reads until the server ends the connection; returns what it sent.
async fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Paused time: the header-read timer is tokio's, so its 5 s default passes in
/// simulated time while the sockets are real.
#[tokio::test(start_paused = true)]
async fn a_slow_header_trickler_is_dropped_while_others_connect() {
    let server = TestServer::paused().await;
    let default = RouterOptions::default().header_read_timeout;
    assert_eq!(default, Duration::from_secs(5));
    let start = Instant::now();

    // One byte of header a second, for ever (until the server hangs up).
    let mut trickler = TcpStream::connect(server.addr).await.unwrap();
    let addr = server.addr;
    let trickle = tokio::spawn(async move {
        let head = format!("GET /ws HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ");
        trickler.write_all(head.as_bytes()).await.unwrap();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if trickler.write_all(b"a").await.is_err() {
                break;
            }
            let mut buf = [0u8; 64];
            // A closed socket reads EOF at once; an open one has nothing to read.
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(1), trickler.read(&mut buf)).await
            {
                break;
            }
        }
        Instant::now()
    });
    // And one that connects and sends nothing at all.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let silent_end = tokio::spawn(async move {
        read_until_closed(&mut silent).await;
        Instant::now()
    });

    // Meanwhile a legitimate client connects and talks.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut alice = server.user("alice").await;
    talks(&mut alice, "still here").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    talks(&mut alice, "after the timeout").await;

    let trickled = tokio::time::timeout(WAIT, trickle).await.unwrap().unwrap() - start;
    let silent = tokio::time::timeout(WAIT, silent_end)
        .await
        .unwrap()
        .unwrap()
        - start;
    for (what, after) in [("trickler", trickled), ("silent", silent)] {
        assert!(
            after >= default && after < default + Duration::from_secs(2),
            "the {what} was dropped after {after:?} (simulated), not right after {default:?}"
        );
    }
    server.stop_with(vec![alice]).await;
}

#[tokio::test(start_paused = true)]
async fn an_upgraded_connection_that_says_nothing_is_closed() {
    let server = TestServer::paused().await;
    let hello_timeout = RouterOptions::default().hello_timeout;
    let start = Instant::now();
    let mut mute = Client::connect(&server.url()).await;
    let mut alice = server.user("alice").await;
    // The mute client answers pings (tungstenite does while reading) but never speaks.
    let (closed, _) = mute.expect_close().await;
    let after = Instant::now() - start;
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (1008, "no hello"),
        "{closed:?}"
    );
    assert!(
        after >= hello_timeout && after < hello_timeout + Duration::from_secs(2),
        "{after:?}"
    );
    // The client that said hello is not affected.
    talks(&mut alice, "still here").await;
    server.stop_with(vec![alice]).await;
}

/// An upgrade's status and `Retry-After`, and the socket if it upgraded.
async fn try_upgrade(
    server: &TestServer,
    forwarded_for: Option<&str>,
) -> (StatusCode, Option<u64>, Option<common::Ws>) {
    let mut request = server.url().into_client_request().unwrap();
    if let Some(ip) = forwarded_for {
        request
            .headers_mut()
            .insert("x-forwarded-for", HeaderValue::from_str(ip).unwrap());
    }
    let retry_after = |h: &tungstenite::http::HeaderMap| {
        h.get("retry-after")
            .map(|v| v.to_str().unwrap().parse::<u64>().unwrap())
    };
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("answered in time")
    {
        Ok((ws, response)) => (response.status(), None, Some(ws)),
        Err(tungstenite::Error::Http(response)) => {
            (response.status(), retry_after(response.headers()), None)
        }
        Err(e) => panic!("no HTTP answer: {e}"),
    }
}

fn capped(limits: ConnectionLimits) -> RouterOptions {
    RouterOptions {
        limits,
        ..RouterOptions::default()
    }
}

/// Waits until the server runs exactly `n` WebSocket tasks.
async fn wait_tasks(server: &TestServer, n: usize) {
    tokio::time::timeout(WAIT, async {
        while server.tracker.len() != n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} tasks, expected {n}", server.tracker.len()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_total_cap_refuses_with_503_until_a_place_is_free() {
    let server = TestServer::with(
        HubConfig::default(),
        capped(ConnectionLimits {
            max_connections: 2,
            ..ConnectionLimits::default()
        }),
    )
    .await;
    let mut a = server.user("a").await;
    let b = server.user("b").await;
    let (status, retry, ws) = try_upgrade(&server, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry, Some(5));
    assert!(ws.is_none());
    assert_eq!(
        server.hub.stats().connections,
        2,
        "a refusal makes no session"
    );
    a.send_raw(Message::Close(None)).await;
    a.finish_close().await;
    wait_tasks(&server, 1).await;
    let c = server.user("c").await;
    server.stop_with(vec![b, c]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_caps_refuse_with_429_and_count_what_a_trusted_proxy_says() {
    let server = TestServer::with(
        HubConfig::default(),
        capped(ConnectionLimits {
            max_connections_per_ip: 2,
            connect_burst_per_ip: 3,
            connects_per_second_per_ip: 1,
            trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
            ..ConnectionLimits::default()
        }),
    )
    .await;
    let one = Some("203.0.113.1");
    let (s1, _, a1) = try_upgrade(&server, one).await;
    let (s2, _, a2) = try_upgrade(&server, one).await;
    assert_eq!(
        (s1, s2),
        (
            StatusCode::SWITCHING_PROTOCOLS,
            StatusCode::SWITCHING_PROTOCOLS
        )
    );
    // A third at once from the same client: too many open.
    let (status, retry, _) = try_upgrade(&server, one).await;
    assert_eq!((status, retry), (StatusCode::TOO_MANY_REQUESTS, Some(5)));
    // Another client behind the same proxy is counted on its own.
    let (other, _, b1) = try_upgrade(&server, Some("203.0.113.2")).await;
    assert_eq!(other, StatusCode::SWITCHING_PROTOCOLS);
    // Closing one frees a place, but the burst of three is spent: too often.
    let mut a1 = Client::from_ws(a1.unwrap());
    a1.send_raw(Message::Close(None)).await;
    a1.finish_close().await;
    wait_tasks(&server, 2).await;
    let (s3, _, a3) = try_upgrade(&server, one).await;
    assert_eq!(
        s3,
        StatusCode::SWITCHING_PROTOCOLS,
        "the third of the burst"
    );
    drop(a3);
    let mut a2 = Client::from_ws(a2.unwrap());
    a2.send_raw(Message::Close(None)).await;
    a2.finish_close().await;
    wait_tasks(&server, 1).await;
    let (status, retry, _) = try_upgrade(&server, one).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry, Some(1), "one connection a second: try again in 1 s");
    drop(b1);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_from_an_untrusted_peer_changes_nothing() {
    let server = TestServer::with(
        HubConfig::default(),
        capped(ConnectionLimits {
            max_connections_per_ip: 1,
            limit_loopback: true,
            ..ConnectionLimits::default()
        }),
    )
    .await;
    let (s1, _, a) = try_upgrade(&server, Some("198.51.100.1")).await;
    assert_eq!(s1, StatusCode::SWITCHING_PROTOCOLS);
    // A made-up X-Forwarded-For does not make it another client: it is 127.0.0.1 again.
    let (s2, _, _) = try_upgrade(&server, Some("198.51.100.2")).await;
    assert_eq!(s2, StatusCode::TOO_MANY_REQUESTS);
    drop(a);
    server.stop().await.unwrap();
}
