//! The connection task's dead-connection rule, over simulated minutes (paused tokio
//! time, real loopback sockets, one thread): a healthy connection in a quiet room is
//! never taken for dead, and a server that stops sending is noticed after
//! `idle_timeout`, also while the client's own sends are stuck.

mod common;

use chat_core::RequestId;
use chat_core::protocol::{HelloRequest, SendRequest};
use std::time::Duration;

use chat_cli::net::{Net, NetEvent, NetOptions, Reconnect};
use chat_core::protocol::PROTOCOL_VERSION;
use chat_core::protocol::{ClientFrame, ServerFrame};
use common::TestServer;
use futures::SinkExt;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// The next event, within simulated `limit`.
async fn next(net: &mut Net, limit: Duration) -> Option<NetEvent> {
    timeout(limit, net.next()).await.ok().flatten()
}

/// Ten quiet minutes with the reference server: its pings (every 25 s of the client's
/// silence), answered as the client reads, keep the connection; nothing is reported.
#[tokio::test(start_paused = true)]
async fn a_healthy_connection_in_a_quiet_room_is_never_taken_for_dead() {
    let server = TestServer::paused().await;
    let options = NetOptions::new(server.url(), Reconnect::AfterFirst);
    assert!(options.idle_timeout < Duration::from_secs(600));
    let mut net = Net::start(options);
    let generation = loop {
        match next(&mut net, Duration::from_secs(10)).await {
            Some(NetEvent::Connecting { .. }) => {}
            Some(NetEvent::Connected { generation }) => break generation,
            other => panic!("expected a connection, got {other:?}"),
        }
    };
    net.send(
        generation,
        ClientFrame::Hello(HelloRequest {
            id: Some(RequestId(1)),
            version: PROTOCOL_VERSION,
            name: "quiet".into(),
            token: None,
            rooms: None,
        }),
    );
    for _ in 0..2 {
        match next(&mut net, Duration::from_secs(10)).await {
            Some(NetEvent::Frame {
                frame: ServerFrame::Welcome { .. } | ServerFrame::Joined { .. },
                ..
            }) => {}
            other => panic!("expected welcome and joined, got {other:?}"),
        }
    }
    let start = Instant::now();
    if let Some(event) = next(&mut net, Duration::from_secs(600)).await {
        panic!("{event:?} after {:?} of quiet", start.elapsed());
    }
    // Still connected: a request is answered.
    net.send(
        generation,
        ClientFrame::Rooms {
            id: Some(RequestId(2)),
        },
    );
    match next(&mut net, Duration::from_secs(10)).await {
        Some(NetEvent::Frame {
            frame:
                ServerFrame::Rooms {
                    id: Some(RequestId(2)),
                    ..
                },
            ..
        }) => {}
        other => panic!("expected the rooms answer, got {other:?}"),
    }
    drop(net);
    server.stop().await;
}

/// A server that never reads, sends a frame every 10 s for two minutes, then nothing
/// (its socket stays open). The client has 12 MiB to send, far more than the socket
/// buffers take, so its writes are stuck from the start: it still reports every
/// frame, and reports the server dead `idle_timeout` after the last one.
#[tokio::test(start_paused = true)]
async fn a_stuck_send_does_not_stop_reading_or_the_dead_server_check() {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
    let addr = socket.local_addr().expect("addr");
    let listener = socket.listen(16).expect("listen");
    const FRAMES: usize = 12;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        // Nagle would hold each small frame until the client's kernel acknowledged the
        // last one, after up to 40 real ms, while simulated time runs on.
        tcp.set_nodelay(true).expect("TCP_NODELAY");
        let mut ws = tokio_tungstenite::accept_async(tcp).await.expect("upgrade");
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        for i in 0..FRAMES {
            tick.tick().await;
            let frame = ServerFrame::Rooms {
                id: Some(chat_core::RequestId(i as u64)),
                rooms: vec![],
            };
            let text = serde_json::to_string(&frame).unwrap();
            ws.send(WsMessage::text(text)).await.expect("server send");
        }
        ws // kept open, never read
    });

    let options = NetOptions::new(format!("ws://{addr}/ws"), Reconnect::AfterFirst);
    let idle = options.idle_timeout;
    let mut net = Net::start(options);
    let generation = loop {
        match next(&mut net, Duration::from_secs(10)).await {
            Some(NetEvent::Connecting { .. }) => {}
            Some(NetEvent::Connected { generation }) => break generation,
            other => panic!("expected a connection, got {other:?}"),
        }
    };
    let body = "x".repeat(60 * 1024);
    for i in 0..200 {
        net.send(
            generation,
            ClientFrame::Send(SendRequest {
                id: Some(RequestId(i)),
                room: Some("general".into()),
                to: None,
                body: body.clone(),
                client_id: None,
                reply_to: None,
            }),
        );
    }
    let mut last = Instant::now();
    for i in 0..FRAMES {
        match next(&mut net, Duration::from_secs(30)).await {
            Some(NetEvent::Frame {
                frame: ServerFrame::Rooms { id, .. },
                ..
            }) => assert_eq!(id, Some(chat_core::RequestId(i as u64))),
            other => panic!("expected frame {i} while the sends are stuck, got {other:?}"),
        }
        last = Instant::now();
    }
    match next(&mut net, 2 * idle).await {
        Some(NetEvent::Disconnected { reason, .. }) => {
            assert_eq!(reason, "no sign of life from the server");
            let after = last.elapsed();
            assert!(
                after >= idle && after < idle + Duration::from_secs(1),
                "reported {after:?} after the last frame; idle_timeout is {idle:?}"
            );
        }
        other => panic!("expected the dead server to be noticed, got {other:?}"),
    }
    drop(net);
    drop(server.await.expect("server task"));
}
