//! A real `redis-server` per test, on a free loopback port, with its data in a temporary
//! directory; stopped (by its PID) when dropped. The test command installs redis-server
//! (Debian's); without it these tests fail and say so.

#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chat_redis::{Options, RedisLog};

mod proxy;
#[allow(unused_imports)] // not every test binary uses it
pub use proxy::Proxy;

use chat_core::protocol::EntryKind;
use chat_core::{ChangeRules, EntryDetail, Seq};
use chat_redis::{Epoch, Error, Post};

/// The change rules the change tests commit with: a 15-minute edit window, 20 emoji.
pub fn rules() -> ChangeRules {
    ChangeRules {
        edit_window: Duration::from_secs(900),
        max_reactions: 20,
        any_author: false,
    }
}

/// A change of `kind` to the message `target`.
pub fn detail(kind: EntryKind, target: u64) -> EntryDetail {
    EntryDetail {
        kind,
        target: Some(Seq(target)),
        rules: rules(),
        ..EntryDetail::default()
    }
}

/// A reaction with `emoji` to `target`, added (`on`) or taken back.
pub fn react(target: u64, emoji: &str, on: bool) -> EntryDetail {
    EntryDetail {
        emoji: Some(emoji.to_owned()),
        on: Some(on),
        ..detail(EntryKind::React, target)
    }
}

/// Commits a message (`d` `None`) or a change by `user` into `general`; its seq.
pub async fn commit(
    log: &mut RedisLog,
    epoch: &Epoch,
    user: &str,
    body: &str,
    d: Option<&EntryDetail>,
) -> Result<u64, Error> {
    let post = Post {
        user,
        body,
        client_id: None,
        detail: d,
    };
    log.commit("general", epoch, post).await.map(|c| c.seq)
}

pub struct RedisServer {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one and waits until it answers PING.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let child = spawn(port, dir.path(), extra);
        let server = RedisServer { child, port, dir };
        server.wait_ready();
        server
    }

    /// Kills the server (SIGKILL) and starts a new one on the same port and directory,
    /// as a crash and a supervisor's restart do.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(self.port, self.dir.path(), &[]);
        self.wait_ready();
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub async fn log(&self) -> RedisLog {
        self.log_with(Options::default()).await
    }

    pub async fn log_with(&self, options: Options) -> RedisLog {
        RedisLog::connect(&self.url(), options)
            .await
            .expect("connects to the test redis")
    }

    /// A plain client, to look at keys or to publish foreign payloads.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("url")
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = self.client();
        loop {
            if let Ok(mut c) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(port: u16, dir: &std::path::Path, extra: &[&str]) -> Child {
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--dir"])
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server runs (the test command installs Debian's redis-server)")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One entry as a short string: a message's current state (`seq:body`, ` edited`,
/// reactions, ` reN` for a reply), or a change (`seq:kind>target` and its emoji or text).
pub fn show(e: &chat_redis::Entry) -> String {
    if e.kind.is_message() {
        let mut s = format!("{}:{}", e.seq, e.body);
        if let Some(st) = &e.state {
            if st.deleted {
                return format!("{}: deleted", e.seq);
            }
            if let Some(b) = &st.body {
                s = format!("{}:{b} edited", e.seq);
            }
            for (emoji, users) in &st.reactions {
                s.push_str(&format!(" {emoji}={}", users.join("+")));
            }
        }
        if let Some(r) = e.reply_to {
            s.push_str(&format!(" re{r}"));
        }
        s
    } else {
        let extra = match (&e.emoji, e.on) {
            (Some(emoji), Some(on)) => format!(" {emoji}{}", if on { "+" } else { "-" }),
            _ if !e.body.is_empty() => format!(" {}", e.body),
            _ => String::new(),
        };
        format!(
            "{}:{}>{}{extra}",
            e.seq,
            e.kind.as_str(),
            e.target.unwrap_or(0)
        )
    }
}
