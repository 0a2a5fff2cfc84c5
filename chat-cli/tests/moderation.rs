//! The moderator commands of the real `chat-cli` binary (line mode, stdin piped) against
//! a real server: `/topic`, `/mute`, `/kick`, `/ban` reach the room, and a member without
//! the role is told why.

mod common;

use chat_core::protocol::{ModAction, Role, ServerFrame};
use common::{Peer, TestServer, cli};

/// Runs the CLI as `name` in `room` with `input` on stdin; returns its exit code,
/// stdout and stderr once it has exited.
async fn run_lines(
    url: &str,
    name: &str,
    room: &str,
    input: &str,
) -> (Option<i32>, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut cmd = cli(url, name);
    cmd.args(["--room", room])
        .stdin(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).await.unwrap();
    }
    let out = tokio::time::timeout(common::WAIT, child.wait_with_output())
        .await
        .expect("exits")
        .expect("runs");
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moderator_sets_the_topic_mutes_and_kicks_from_the_cli() {
    let server = TestServer::start().await;
    let url = server.url();
    let mut bob = Peer::join(&url, "bob", &["ops"]).await;
    server
        .hub
        .set_role("ops", "carol", Role::Moderator)
        .await
        .unwrap()
        .unwrap();
    let (code, stdout, stderr) = run_lines(
        &url,
        "carol",
        "ops",
        "/topic deploys only\n/mute bob 5 calm down\n/kick bob off topic\n",
    )
    .await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    // What bob sees, from carol.
    match bob
        .expect(|f| matches!(f, ServerFrame::Topic { .. }), "topic")
        .await
    {
        ServerFrame::Topic { topic, by, .. } => {
            assert_eq!(topic, "deploys only");
            assert_eq!(by.unwrap().as_str(), "carol");
        }
        _ => unreachable!(),
    }
    match bob
        .expect(|f| matches!(f, ServerFrame::Moderated { .. }), "mute")
        .await
    {
        ServerFrame::Moderated {
            action,
            minutes,
            reason,
            ..
        } => assert_eq!(
            (action, minutes, reason.as_deref()),
            (ModAction::Mute, Some(5), Some("calm down"))
        ),
        _ => unreachable!(),
    }
    match bob
        .expect(|f| matches!(f, ServerFrame::Moderated { .. }), "kick")
        .await
    {
        ServerFrame::Moderated { action, reason, .. } => {
            assert_eq!(
                (action, reason.as_deref()),
                (ModAction::Kick, Some("off topic"))
            );
        }
        _ => unreachable!(),
    }
    bob.expect(|f| matches!(f, ServerFrame::Left { .. }), "left")
        .await;
    // What carol's terminal showed.
    for line in [
        "[ops] * topic: deploys only by carol",
        "[ops] * bob was muted for 5 min by carol: calm down",
        "[ops] * bob was kicked by carol: off topic",
        "[ops] * done: kick bob",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_is_told_they_may_not_moderate() {
    let server = TestServer::start().await;
    let url = server.url();
    let mut bob = Peer::join(&url, "bob", &["ops"]).await;
    let (code, stdout, stderr) = run_lines(&url, "dave", "ops", "/ban bob\n").await;
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("forbidden: you are not a moderator of ops"),
        "{stderr}"
    );
    // Bob is still in the room: his post is accepted (a refusal would panic here).
    bob.say("ops", "still here").await;
}
