//! Messages live on, with the real binary against a real server: `edit`, `delete`,
//! `react` (and `--off`), `send --reply-to`; `history` (plain and `--json`) shows each
//! message as it is now; `tail` prints changes as they happen; every refusal prints the
//! server's code and exits 1, changing nothing.

mod common;

use chat_core::protocol::ServerFrame;
use common::{Output, Peer, Running, TestServer, cli, run};

fn parse_json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

async fn cli_run(url: &str, name: &str, args: &[&str]) -> Output {
    let mut cmd = cli(url, name);
    cmd.args(args);
    run(cmd).await
}

/// `history --json` of a room, one object per message.
async fn history_json(url: &str, room: &str) -> Vec<serde_json::Value> {
    let out = cli_run(url, "reader", &["history", "--room", room, "--json"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    out.stdout.lines().map(parse_json).collect()
}

/// Asserts a refusal: exit 1, nothing on stdout, `chat-cli: CODE: message` on stderr.
fn assert_refused(out: &Output, code: &str) {
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let prefix = format!("chat-cli: {code}: ");
    assert!(
        out.stderr.starts_with(&prefix) && out.stderr.trim().len() > prefix.len(),
        "stderr names the code and says why: {:?}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_react_reply_delete_and_what_history_shows() {
    let server = TestServer::start().await;
    let url = server.url();

    let out = cli_run(&url, "alice", &["send", "--room", "talk", "helo"]).await;
    assert_eq!(out.stdout, "talk#1\n", "{out:?}");
    // Each change prints its own seq, as `send` does.
    let out = cli_run(
        &url,
        "alice",
        &["edit", "--room", "talk", "1", "hello", "there"],
    )
    .await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "talk#2\n"),
        "{out:?}"
    );
    let out = cli_run(&url, "bob", &["react", "--room", "talk", "1", "👍"]).await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "talk#3\n"),
        "{out:?}"
    );
    let out = cli_run(&url, "carol", &["react", "--room", "talk", "#1", "🎉"]).await;
    assert_eq!(out.code, Some(2), "a seq is a number: {out:?}");
    let out = cli_run(&url, "carol", &["react", "--room", "talk", "1", "🎉"]).await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "talk#4\n"),
        "{out:?}"
    );
    let out = cli_run(
        &url,
        "bob",
        &["send", "--room", "talk", "--reply-to", "1", "nice"],
    )
    .await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "talk#5\n"),
        "{out:?}"
    );

    // history --json: the messages in their current state, without the change entries.
    let page = history_json(&url, "talk").await;
    assert_eq!(page.len(), 2, "{page:?}");
    let first = &page[0];
    assert_eq!(
        (first["seq"].as_u64(), first["body"].as_str()),
        (Some(1), Some("hello there"))
    );
    let edited = first["edited_at"].as_str().expect("edited_at");
    assert!(
        chrono::DateTime::parse_from_rfc3339(edited).is_ok(),
        "{edited}"
    );
    assert_eq!(
        first["reactions"],
        serde_json::json!([{"emoji":"👍","users":["bob"]},{"emoji":"🎉","users":["carol"]}])
    );
    assert!(first.get("deleted").is_none() && first.get("reply_to").is_none());
    assert_eq!(
        (page[1]["seq"].as_u64(), page[1]["reply_to"].as_u64()),
        (Some(5), Some(1))
    );
    // ... and readably in plain lines.
    let out = cli_run(&url, "reader", &["history", "--room", "talk"]).await;
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{out:?}");
    assert!(
        lines[0].ends_with(" <alice> hello there (edited) [👍 bob] [🎉 carol]"),
        "{lines:?}"
    );
    assert!(lines[1].ends_with(" <bob> ↪#1 nice"), "{lines:?}");

    // --off takes a reaction back.
    let out = cli_run(
        &url,
        "bob",
        &["react", "--room", "talk", "1", "👍", "--off"],
    )
    .await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "talk#6\n"),
        "{out:?}"
    );
    let page = history_json(&url, "talk").await;
    assert_eq!(
        page[0]["reactions"],
        serde_json::json!([{"emoji":"🎉","users":["carol"]}])
    );

    // Refusals: the server's code on stderr, exit 1, nothing changed.
    assert_refused(
        &cli_run(&url, "bob", &["edit", "--room", "talk", "1", "mine now"]).await,
        "not_author",
    );
    assert_refused(
        &cli_run(&url, "bob", &["delete", "--room", "talk", "1"]).await,
        "not_author",
    );
    assert_refused(
        &cli_run(&url, "alice", &["edit", "--room", "talk", "2", "x"]).await,
        "no_such_message",
    );
    assert_refused(
        &cli_run(&url, "alice", &["edit", "--room", "talk", "99", "x"]).await,
        "no_such_message",
    );
    assert_refused(
        &cli_run(&url, "bob", &["react", "--room", "talk", "1", "thumbs"]).await,
        "invalid_emoji",
    );
    assert_refused(
        &cli_run(&url, "bob", &["react", "--room", "talk", "1", "👍🎉"]).await,
        "limit_reached",
    );
    assert_refused(
        &cli_run(
            &url,
            "bob",
            &["send", "--room", "talk", "--reply-to", "42", "hm"],
        )
        .await,
        "no_such_message",
    );
    assert_eq!(history_json(&url, "talk").await, page, "nothing changed");

    // Alice deletes hers: a tombstone; the reply still names it.
    let out = cli_run(&url, "alice", &["delete", "--room", "talk", "1"]).await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "talk#7\n"),
        "{out:?}"
    );
    let page = history_json(&url, "talk").await;
    assert_eq!(page[0]["deleted"], true);
    assert_eq!(page[0]["body"], "");
    assert!(page[0].get("reactions").is_none() && page[0].get("edited_at").is_none());
    assert_eq!(page[1]["reply_to"], 1);
    let out = cli_run(&url, "reader", &["history", "--room", "talk"]).await;
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].ends_with(" <alice> (deleted)"), "{lines:?}");
    assert_refused(
        &cli_run(&url, "alice", &["edit", "--room", "talk", "1", "back"]).await,
        "gone",
    );
    assert_refused(
        &cli_run(&url, "carol", &["react", "--room", "talk", "1", "👍"]).await,
        "gone",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_changes_as_they_happen() {
    let server = TestServer::start().await;
    let url = server.url();
    let out = cli_run(&url, "dan", &["send", "--room", "live", "frist"]).await;
    assert_eq!(out.stdout, "live#1\n", "{out:?}");
    let mut probe = Peer::join(&url, "probe", &["live"]).await;

    // --count counts messages: the changes before the second message are printed too.
    let mut plain = cli(&url, "erin");
    plain.args(["tail", "--room", "live", "--count", "2"]);
    let mut plain = Running::spawn(plain);
    let mut json = cli(&url, "fay");
    json.args(["tail", "--room", "live", "--json", "--count", "2"]);
    let mut json = Running::spawn(json);
    // Both are in the room once the probe has seen them come.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let frame = probe
            .expect(
                |f| {
                    matches!(
                        f,
                        ServerFrame::Presence { .. } | ServerFrame::UserJoined { .. }
                    )
                },
                "the tails join",
            )
            .await;
        match frame {
            ServerFrame::Presence { joins, .. } => seen.extend(joins.unwrap_or_default()),
            ServerFrame::UserJoined { user, .. } => seen.push(user),
            _ => {}
        }
        seen.retain(|u| u.as_str() == "erin" || u.as_str() == "fay");
    }

    let out = cli_run(&url, "dan", &["edit", "--room", "live", "1", "first"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = cli_run(&url, "gil", &["react", "--room", "live", "1", "👀"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    probe.say("live", "between").await;
    let out = cli_run(
        &url,
        "gil",
        &["react", "--room", "live", "1", "👀", "--off"],
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = cli_run(&url, "dan", &["delete", "--room", "live", "1"]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    probe.say("live", "last").await;

    let lines = plain.lines(6).await;
    let tails: Vec<&str> = lines.iter().map(|l| &l[8..]).collect();
    assert_eq!(
        tails,
        [
            " <dan> edited #1: first",
            " <gil> reacted 👀 to #1",
            " <probe> between",
            " <gil> took back 👀 from #1",
            " <dan> deleted #1",
            " <probe> last",
        ]
    );
    let (code, rest) = plain.finish().await;
    assert_eq!((code, rest.len()), (Some(0), 0), "{rest:?}");

    let lines: Vec<serde_json::Value> = json.lines(6).await.iter().map(|l| parse_json(l)).collect();
    let edit = &lines[0];
    assert_eq!(
        (
            edit["kind"].as_str(),
            edit["target"].as_u64(),
            edit["body"].as_str(),
            edit["user"].as_str()
        ),
        (Some("edit"), Some(1), Some("first"), Some("dan"))
    );
    let react = &lines[1];
    assert_eq!(
        (
            react["kind"].as_str(),
            react["emoji"].as_str(),
            react["on"].as_bool()
        ),
        (Some("react"), Some("👀"), Some(true))
    );
    assert_eq!(lines[2]["body"], "between");
    assert!(lines[2].get("kind").is_none(), "a message has no kind");
    assert_eq!(lines[3]["on"], false);
    assert_eq!(
        (lines[4]["kind"].as_str(), lines[4]["target"].as_u64()),
        (Some("delete"), Some(1))
    );
    assert_eq!(lines[5]["body"], "last");
    let (code, rest) = json.finish().await;
    assert_eq!((code, rest.len()), (Some(0), 0), "{rest:?}");
}
