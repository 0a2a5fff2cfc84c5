//! The real binary against a real server: `send`, `tail`, `history`, exit codes.

mod common;

use common::{Peer, Running, TestServer, cli, run};

fn parse_json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_then_tail_round_trip() {
    let server = TestServer::start().await;
    let url = server.url();

    let mut send = cli(&url, "alice");
    send.args(["send", "--room", "Lobby", "hello", "from", "alice"]);
    let out = run(send).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    // The room as the server normalized it, and the first seq.
    assert_eq!(out.stdout, "lobby#1\n");

    // tail picks up history and then a live message, and exits after --count.
    let mut tail = cli(&url, "bob");
    tail.args([
        "tail",
        "--room",
        "lobby",
        "--history",
        "1",
        "--count",
        "2",
        "--json",
    ]);
    let mut tail = Running::spawn(tail);
    let first = parse_json(&tail.line().await);
    assert_eq!(first["room"], "lobby");
    assert_eq!(first["seq"], 1);
    assert_eq!(first["user"], "alice");
    assert_eq!(first["body"], "hello from alice");
    let ts = first["ts"].as_str().expect("ts is a string");
    assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");

    let mut send = cli(&url, "alice");
    send.args(["send", "--room", "lobby", "second"]);
    let out = run(send).await;
    assert_eq!(out.stdout, "lobby#2\n", "{out:?}");

    let second = parse_json(&tail.line().await);
    assert_eq!(
        (second["seq"].as_u64(), second["body"].as_str()),
        (Some(2), Some("second"))
    );
    let (code, rest) = tail.finish().await;
    assert_eq!(code, Some(0));
    assert!(rest.is_empty(), "nothing after --count: {rest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_plain_lines_with_time_and_author() {
    let server = TestServer::start().await;
    let url = server.url();
    let mut peer = Peer::join(&url, "carol", &["plain"]).await;
    let mut tail = cli(&url, "dave");
    tail.args(["tail", "--room", "plain", "--count", "1"]);
    let mut tail = Running::spawn(tail);
    // Wait until tail is in the room before posting (its join is announced to carol).
    peer.expect(
        |f| matches!(f, chat_core::protocol::ServerFrame::UserJoined { user, .. } if user.as_str() == "dave"),
        "dave joins",
    )
    .await;
    peer.say("plain", "good morning").await;
    let line = tail.line().await;
    let (clock, rest) = line.split_at(8);
    assert!(
        clock.len() == 8
            && clock.chars().enumerate().all(|(i, c)| if i == 2 || i == 5 {
                c == ':'
            } else {
                c.is_ascii_digit()
            }),
        "HH:MM:SS first: {line}"
    );
    assert_eq!(rest, " <carol> good morning");
    assert_eq!(tail.finish().await.0, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_back_oldest_first() {
    let server = TestServer::start().await;
    let url = server.url();
    let mut peer = Peer::join(&url, "erin", &["log"]).await;
    for i in 1..=7 {
        peer.say("log", &format!("m{i}")).await;
    }
    let page = |args: &[&str]| {
        let mut cmd = cli(&url, "frank");
        cmd.args(["history", "--room", "log", "--json"]).args(args);
        cmd
    };
    let bodies = |stdout: &str| -> Vec<(u64, String)> {
        stdout
            .lines()
            .map(|l| {
                let v = parse_json(l);
                (
                    v["seq"].as_u64().unwrap(),
                    v["body"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };

    let out = run(page(&["--limit", "3"])).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        bodies(&out.stdout),
        [(5, "m5".into()), (6, "m6".into()), (7, "m7".into())]
    );
    assert!(
        out.stderr.contains("--before 5"),
        "says how to page back: {}",
        out.stderr
    );

    let out = run(page(&["--limit", "3", "--before", "5"])).await;
    assert_eq!(
        bodies(&out.stdout),
        [(2, "m2".into()), (3, "m3".into()), (4, "m4".into())]
    );

    let out = run(page(&["--limit", "3", "--before", "2"])).await;
    assert_eq!(bodies(&out.stdout), [(1, "m1".into())]);
    assert!(
        !out.stderr.contains("--before"),
        "no older page: {}",
        out.stderr
    );

    // Plain lines, oldest first.
    let mut plain = cli(&url, "frank");
    plain.args(["history", "--room", "log", "--limit", "2"]);
    let out = run(plain).await;
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{out:?}");
    assert!(
        lines[0].ends_with(" <erin> m6") && lines[1].ends_with(" <erin> m7"),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_messages_exit_1_with_the_servers_code() {
    let server = TestServer::start().await;
    let url = server.url();
    let cases: [(&str, String, &str); 3] = [
        ("two words", "hi".into(), "invalid_room: "),
        ("general", "   ".into(), "invalid_body: "),
        ("general", "x".repeat(5000), "body_too_large: "),
    ];
    for (room, body, expected) in cases {
        let mut send = cli(&url, "grace");
        send.args(["send", "--room", room, &body]);
        let out = run(send).await;
        assert_eq!(out.code, Some(1), "{room:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
        assert!(
            out.stderr.starts_with(&format!("chat-cli: {expected}")),
            "stderr names the code: {:?}",
            out.stderr
        );
        assert!(
            out.stderr.trim().len() > format!("chat-cli: {expected}").len(),
            "and a message"
        );
    }
    // A name the server refuses.
    let out = run({
        let mut c = cli(&url, "two words");
        c.args(["send", "--room", "general", "hi"]);
        c
    })
    .await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("invalid_name: "), "{out:?}");
    // Nothing was posted by any of these.
    let mut history = cli(&url, "grace");
    history.args(["history", "--room", "general"]);
    let out = run(history).await;
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), ""), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_room_is_created_on_first_use() {
    let server = TestServer::start().await;
    let mut send = cli(&server.url(), "heidi");
    send.args(["send", "--room", "brand-new-room", "first!"]);
    let out = run(send).await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "brand-new-room#1\n"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_exits_3() {
    // A port that was free a moment ago: bind, note it, close.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("ws://{addr}/ws");
    for args in [
        &["send", "--room", "general", "hi"][..],
        &["history", "--room", "general"][..],
        &["tail", "--room", "general"][..],
    ] {
        let mut cmd = cli(&url, "ivan");
        cmd.args(args);
        let out = run(cmd).await;
        assert_eq!(out.code, Some(3), "{args:?}: {out:?}");
        assert!(out.stderr.contains("cannot connect"), "{out:?}");
        assert!(out.stdout.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_2() {
    for args in [
        &["send", "hi"][..], // --room missing
        &["tail", "--room", "x", "--count", "many"][..],
        &[
            "--url",
            "http://127.0.0.1:1/ws",
            "send",
            "--room",
            "x",
            "hi",
        ][..],
        &["--url", "not a url", "history", "--room", "x"][..],
        &["frobnicate"][..],
    ] {
        let mut cmd = cli("ws://127.0.0.1:9/ws", "judy");
        cmd.args(args);
        let out = run(cmd).await;
        assert_eq!(out.code, Some(2), "{args:?}: {out:?}");
        assert!(!out.stderr.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_has_help_with_examples() {
    for args in [
        &["--help"][..],
        &["send", "--help"],
        &["tail", "--help"],
        &["history", "--help"],
    ] {
        let mut cmd = cli("ws://127.0.0.1:9/ws", "kim");
        cmd.args(args);
        let out = run(cmd).await;
        assert_eq!(out.code, Some(0), "{args:?}");
        assert!(out.stdout.contains("Examples:"), "{args:?}: {}", out.stdout);
        assert!(out.stdout.contains("chat-cli "), "{args:?}");
        assert!(out.stdout.contains("Exit codes:"), "{args:?}");
        assert!(
            out.stdout.contains("--url"),
            "global options shown: {args:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_name_can_send_twice_in_a_row() {
    // The server reserves a name for a few seconds after its connection closes; the
    // cached token lets the next run be the same user.
    let server = TestServer::start().await;
    let url = server.url();
    for expected in ["again#1\n", "again#2\n"] {
        let mut send = cli(&url, "liam");
        send.args(["send", "--room", "again", "hi"]);
        let out = run(send).await;
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (Some(0), expected),
            "{out:?}"
        );
    }
    // Without the cache, the name is still taken.
    let mut send = cli(&url, "liam");
    send.env("XDG_STATE_HOME", common::state_dir())
        .args(["send", "--room", "again", "hi"]);
    let out = run(send).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("name_taken"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piped_stdin_sends_each_line_and_prints_events() {
    let server = TestServer::start().await;
    let url = server.url();
    let mut peer = Peer::join(&url, "mona", &["pipes"]).await;
    let mut cmd = cli(&url, "nick");
    cmd.args(["--room", "pipes"])
        .stdin(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"first line\n\nsecond line\n")
            .await
            .unwrap();
        // stdin closes here: the CLI sends what it read and exits once acked.
    }
    for body in ["first line", "second line"] {
        let frame = peer
            .expect(
                |f| matches!(f, chat_core::protocol::ServerFrame::Message(_)),
                "a message",
            )
            .await;
        let chat_core::protocol::ServerFrame::Message(m) = frame else {
            unreachable!()
        };
        assert_eq!((m.user.as_str(), &*m.body), ("nick", body));
    }
    let out = tokio::time::timeout(common::WAIT, child.wait_with_output())
        .await
        .expect("exits")
        .expect("runs");
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("[pipes] <nick> first line"), "{stdout}");
    assert!(stdout.contains("[pipes] <nick> second line"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piped_lines_are_paced_to_the_flood_control_the_server_announced() {
    // A tight flood control (not the client's guess: it comes in `welcome`): 3 at once,
    // then 20 a second. Piped lines beyond the burst wait instead of being refused.
    let mut config = common::test_config();
    config.core.send_rate = chat_core::Rate {
        burst: 3,
        per_second: 20,
    };
    let server = TestServer::start_with(config).await;
    let url = server.url();
    let mut peer = Peer::join(&url, "olga", &["paced"]).await;
    let mut cmd = cli(&url, "pete");
    cmd.args(["--room", "paced"])
        .stdin(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let bodies: Vec<String> = (1..=12).map(|n| format!("line {n}")).collect();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(format!("{}\n", bodies.join("\n")).as_bytes())
            .await
            .unwrap();
    }
    for body in &bodies {
        let frame = peer
            .expect(
                |f| matches!(f, chat_core::protocol::ServerFrame::Message(_)),
                "a message",
            )
            .await;
        let chat_core::protocol::ServerFrame::Message(m) = frame else {
            unreachable!()
        };
        assert_eq!(&*m.body, body);
    }
    let out = tokio::time::timeout(common::WAIT, child.wait_with_output())
        .await
        .expect("exits")
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("rate_limited"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_stops_when_its_reader_goes_away() {
    let server = TestServer::start().await;
    let url = server.url();
    let mut peer = Peer::join(&url, "olga", &["pipe"]).await;
    let mut tail = cli(&url, "pete");
    tail.args(["tail", "--room", "pipe"]);
    let mut child = tail.spawn().expect("spawn");
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    peer.expect(
        |f| matches!(f, chat_core::protocol::ServerFrame::UserJoined { user, .. } if user.as_str() == "pete"),
        "pete joins",
    )
    .await;
    peer.say("pipe", "one").await;
    let mut first = String::new();
    use tokio::io::AsyncBufReadExt;
    tokio::time::timeout(common::WAIT, stdout.read_line(&mut first))
        .await
        .unwrap()
        .unwrap();
    assert!(first.ends_with("<olga> one\n"), "{first:?}");
    // Like `chat-cli tail | head -1`: the reader closes the pipe after one line.
    drop(stdout);
    peer.say("pipe", "two").await;
    let status = tokio::time::timeout(common::WAIT, child.wait())
        .await
        .expect("tail exits")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
