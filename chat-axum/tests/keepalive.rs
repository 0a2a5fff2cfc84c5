//! The keepalive rule over many simulated minutes (paused tokio time, real loopback
//! sockets, one thread): the server pings a peer it has heard nothing from for
//! `ping_interval`, whatever it writes to it, and closes one it has heard nothing from
//! for `idle_timeout`. A quiet reader in a busy room stays; a peer that answers nothing
//! goes, on time.
//!
//! The engine's own clock is the real one, and these ten simulated minutes take well
//! under a real second, so the tests' flood control is loose enough for that.

mod common;

use chat_core::RequestId;
use std::time::Duration;

use chat_axum::RouterOptions;
use chat_core::runtime::HubConfig;
use chat_core::{
    Config, Event, Rate,
    protocol::{ClientFrame, ServerFrame},
};
use common::{Client, TestServer, as_message};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// Posts twice a second in `general`, for this long.
const BUSY_FOR: Duration = Duration::from_secs(10 * 60);
const POST_EVERY: Duration = Duration::from_millis(500);
const POSTS: u64 = BUSY_FOR.as_millis() as u64 / POST_EVERY.as_millis() as u64;

fn loose_flood_control() -> HubConfig {
    let loose = Rate {
        burst: 100_000,
        per_second: 100_000,
    };
    HubConfig {
        core: Config {
            send_rate: loose,
            frame_rate: loose,
            ..Config::default()
        },
        // These tests run on tokio's paused clock: see `TestServer::paused`.
        fanout_threads: 0,
        ..HubConfig::default()
    }
}

/// A user that posts `m1`..`m{POSTS}` every [`POST_EVERY`] and reads its acks.
fn poster(mut c: Client) -> JoinHandle<Client> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(POST_EVERY);
        for i in 1..=POSTS {
            tick.tick().await;
            c.say(i, "general", &format!("m{i}"), None).await;
            c.recv_until("ack", |f| {
                matches!(f, ServerFrame::Ack { id: Some(id), .. } if *id == chat_core::RequestId(i))
                    .then_some(())
            })
            .await;
        }
        c
    })
}

/// Reads until message `m{POSTS}`: every message once and in order, never a close.
/// Returns when each server ping arrived.
async fn read_everything(c: &mut Client, start: Instant) -> Vec<Duration> {
    let mut pings = Vec::new();
    let mut next = 1;
    while next <= POSTS {
        match c.next_message().await {
            Some(Ok(Message::Ping(_))) => pings.push(start.elapsed()),
            Some(Ok(Message::Text(t))) => {
                let frame: ServerFrame = serde_json::from_str(&t).expect("a server frame");
                if let ServerFrame::UserJoined { .. } = frame {
                    continue;
                }
                assert_eq!(&*as_message(&frame).body, format!("m{next}"));
                next += 1;
            }
            other => panic!(
                "the quiet reader lost its connection after {:?} (simulated), having read \
                 {} of {POSTS} messages and {} pings: {other:?}",
                start.elapsed(),
                next - 1,
                pings.len()
            ),
        }
    }
    pings
}

/// Asserts pings came at most `every` (plus a round trip) apart, from the first on.
fn assert_pinged_every(pings: &[Duration], every: Duration, over: Duration) {
    let slack = Duration::from_millis(100);
    let mut last = Duration::ZERO;
    for &at in pings {
        assert!(
            at - last <= every + slack,
            "a ping after {last:?}, the next at {at:?}"
        );
        last = at;
    }
    assert!(
        over - last <= every + slack,
        "the last ping at {last:?}: {pings:?}"
    );
}

/// The case: one user posts twice a second, another only reads (and answers
/// pings, as browsers and tungstenite do). The reader was dropped at 60 s: the server
/// pinged only after 25 s of its own silence, which a busy room never has.
#[tokio::test(start_paused = true)]
async fn a_quiet_reader_in_a_busy_room_stays_connected() {
    let options = RouterOptions::default();
    let (every, idle) = (options.ping_interval, options.idle_timeout);
    assert!(BUSY_FOR > 5 * idle, "the test spans several idle timeouts");
    let server = TestServer::with(loose_flood_control(), options).await;
    let mut reader = server.user("reader").await;
    let talker = server.user("talker").await;
    let start = Instant::now();
    let talker = poster(talker);

    let pings = read_everything(&mut reader, start).await;
    let over = start.elapsed();
    assert!(over >= BUSY_FOR - POST_EVERY, "{over:?}");
    assert_pinged_every(&pings, every, over);

    let talker = talker.await.expect("poster");
    server.stop_with(vec![reader, talker]).await;
}

/// A peer that answers nothing (no pong, no frame) in the same busy room is closed
/// with 1001 once it has been silent for the idle timeout: the frames the server
/// writes to it, pings included, are no sign of its life.
#[tokio::test(start_paused = true)]
async fn a_peer_that_answers_nothing_is_closed_after_the_idle_timeout() {
    let options = RouterOptions::default();
    let (every, idle) = (options.ping_interval, options.idle_timeout);
    let server = TestServer::with(loose_flood_control(), options).await;
    let mut events = server.hub.events();
    // Says hello (its last frame), then is never polled again, so tungstenite never
    // answers a ping for it.
    let mut mute = server.user("mute").await;
    let said_hello = Instant::now();
    let session = mute.session();
    let talker = server.user("talker").await;
    let talker = poster(talker);

    // The harness's waits are shorter than the idle timeout, in simulated time too.
    let closed = async {
        loop {
            match events.recv().await.expect("hub events") {
                Event::SessionClosed {
                    session: s, reason, ..
                } if s == session => return reason,
                _ => {}
            }
        }
    };
    let reason = tokio::time::timeout(2 * idle, closed)
        .await
        .expect("the mute session is closed");
    let after = said_hello.elapsed();
    assert_eq!(reason, None, "closed by the adapter, not by a core policy");
    let margin = Duration::from_secs(1);
    assert!(
        after + margin > idle && after < idle + margin,
        "closed {after:?} after its last frame; the idle timeout is {idle:?}"
    );

    // What it was sent meanwhile: the room's messages and the pings (at `every` and
    // 2 * `every` of silence), then the close.
    let mut pings = 0;
    let mut messages = 0;
    let close = loop {
        match mute.next_message().await {
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(Message::Text(t))) => {
                let frame: ServerFrame = serde_json::from_str(&t).expect("a server frame");
                if let ServerFrame::Message(_) = frame {
                    messages += 1;
                }
            }
            Some(Ok(Message::Close(Some(c)))) => break c,
            other => panic!("expected frames then a close, got {other:?}"),
        }
    };
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (1001, "idle timeout")
    );
    assert_eq!(pings, idle.as_nanos().div_ceil(every.as_nanos()) - 1);
    assert!(messages > 100, "the room was busy: {messages} messages");
    mute.finish_close().await;

    drop(talker); // the poster's task still runs; stopping the server ends it
    server.stop().await.expect("clean stop");
}

/// A peer that talks all the time (here: unsolicited pongs, RFC 6455's one-way
/// heartbeat) but is written nothing still gets a ping every `ping_interval`: the
/// server's write silence is bounded too, which is what a client's (and a reverse
/// proxy's) dead-connection timer counts on.
#[tokio::test(start_paused = true)]
async fn a_peer_that_is_written_nothing_is_pinged_anyway() {
    let options = RouterOptions::default();
    let every = options.ping_interval;
    let server = TestServer::with(loose_flood_control(), options).await;
    let mut alone = server.user("alone").await;
    let start = Instant::now();
    let over = Duration::from_secs(5 * 60);
    let mut beat =
        tokio::time::interval_at(start + Duration::from_secs(10), Duration::from_secs(10));
    let mut pings = Vec::new();
    while start.elapsed() < over {
        tokio::select! {
            _ = beat.tick() => alone.send_raw(Message::Pong(Default::default())).await,
            m = alone.next_message() => match m {
                Some(Ok(Message::Ping(_))) => pings.push(start.elapsed()),
                other => panic!("expected only pings, got {other:?}"),
            },
        }
    }
    assert_pinged_every(&pings, every, start.elapsed());
    server.stop_with(vec![alone]).await;
}

/// `idle_timeout` shorter than `ping_interval` would close every quiet peer before its
/// first ping: the interval is capped at half the idle timeout instead.
#[tokio::test(start_paused = true)]
async fn a_ping_interval_longer_than_the_idle_timeout_is_capped() {
    let options = RouterOptions {
        ping_interval: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(10),
        ..RouterOptions::default()
    };
    let server = TestServer::with(HubConfig::default(), options).await;
    let mut quiet = server.user("quiet").await;
    let start = Instant::now();
    let over = Duration::from_secs(5 * 60);
    let mut pings = Vec::new();
    while start.elapsed() < over {
        match quiet.next_message().await {
            Some(Ok(Message::Ping(_))) => pings.push(start.elapsed()),
            other => panic!(
                "expected only pings, got {other:?} after {:?}",
                start.elapsed()
            ),
        }
    }
    assert_pinged_every(&pings, Duration::from_secs(5), start.elapsed());
    // Still served.
    quiet
        .send(&ClientFrame::Rooms {
            id: Some(RequestId(7)),
        })
        .await;
    assert!(matches!(
        quiet.recv().await,
        ServerFrame::Rooms {
            id: Some(RequestId(7)),
            ..
        }
    ));
    server.stop_with(vec![quiet]).await;
}
