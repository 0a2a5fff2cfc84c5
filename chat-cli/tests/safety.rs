//! Text from other users can never control the terminal: every escape-sequence payload
//! reaches `tail`'s output (and `history`'s) in a visible escaped form, and `--json`
//! stays valid JSON that holds the exact text without raw controls.

mod common;

use common::{HOSTILE, Peer, Running, TestServer, cli, has_raw_controls, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_and_history_show_escape_sequences_escaped() {
    let server = TestServer::start().await;
    let url = server.url();
    let n = HOSTILE.len().to_string();

    let mut plain = cli(&url, "watcher");
    plain.args(["tail", "--room", "general", "--count", &n]);
    let mut plain = Running::spawn(plain);
    let mut json = cli(&url, "watcher2");
    json.args(["tail", "--room", "general", "--count", &n, "--json"]);
    let mut json = Running::spawn(json);

    let mut mallory = Peer::join(&url, "mallory", &["general"]).await;
    // Both tails are in the room once mallory has seen them arrive (or they were first).
    let members = |f: &chat_core::protocol::ServerFrame| match f {
        chat_core::protocol::ServerFrame::Members { members, .. } => members.len() == 3,
        _ => false,
    };
    loop {
        mallory
            .send_frame(&chat_core::protocol::ClientFrame::Members {
                id: None,
                room: "general".into(),
                after: None,
                limit: None,
            })
            .await;
        let frame = mallory
            .expect(
                |f| matches!(f, chat_core::protocol::ServerFrame::Members { .. }),
                "members",
            )
            .await;
        if members(&frame) {
            break;
        }
        mallory
            .expect(
                |f| matches!(f, chat_core::protocol::ServerFrame::UserJoined { .. }),
                "a tail joining",
            )
            .await;
    }
    for (payload, _) in HOSTILE {
        mallory.say("general", payload).await;
    }

    let plain_lines = plain.lines(HOSTILE.len()).await;
    let json_lines = json.lines(HOSTILE.len()).await;
    for (i, (payload, visible)) in HOSTILE.iter().enumerate() {
        let line = &plain_lines[i];
        assert!(!has_raw_controls(line), "raw control in {line:?}");
        assert!(
            !line.contains('\x1b') && !line.chars().any(|c| ('\u{80}'..='\u{9f}').contains(&c))
        );
        assert!(
            line.ends_with(&format!(" <mallory> {visible}")),
            "{line:?} should show {visible:?}"
        );

        let line = &json_lines[i];
        assert!(!has_raw_controls(line), "raw control in JSON {line:?}");
        let value: serde_json::Value = serde_json::from_str(line).expect("valid JSON");
        assert_eq!(
            value["body"].as_str(),
            Some(*payload),
            "JSON keeps the exact text"
        );
    }
    assert_eq!(plain.finish().await.0, Some(0));
    assert_eq!(json.finish().await.0, Some(0));

    // history prints them the same way.
    let mut history = cli(&url, "watcher3");
    history.args(["history", "--room", "general"]);
    let out = run(history).await;
    assert!(!has_raw_controls(&out.stdout), "{:?}", out.stdout);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        HOSTILE.len(),
        "one line per message: {lines:?}"
    );
    for (line, (_, visible)) in lines.iter().zip(HOSTILE) {
        assert!(line.ends_with(visible), "{line:?}");
    }
}
