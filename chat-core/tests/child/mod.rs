//! Kill -9 tests: the test binary runs one of its own ignored tests as a child process on
//! a database file, waits until the child prints `ACKED` (everything it was answered is
//! committed), and kills it without warning.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs the ignored test `test` of this binary as a child with `env` naming `db`, waits
/// (at most `wait`) for its `ACKED` line, then kills it with SIGKILL.
pub async fn run_until_acked_then_kill(test: &str, env: &str, db: &Path, wait: Duration) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            test,
            "--include-ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(env, db)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run the child");
    let stdout = child.stdout.take().unwrap();
    let acked = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains("ACKED"))
    });
    let acked = tokio::time::timeout(wait, acked)
        .await
        .expect("the child acks");
    assert!(acked.unwrap(), "the child printed ACKED");
    child.kill().expect("kill -9");
    child.wait().unwrap();
}
