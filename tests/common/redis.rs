//! A real `redis-server` for the cluster tests (Debian's, which the test command installs).

#![allow(dead_code)] // not every test uses every call

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Upper bound for starting it (not a speed assertion).
const WAIT: Duration = Duration::from_secs(30);

/// A `redis-server` on a free loopback port, its data in a temporary directory; killed
/// (by its PID) when dropped.
pub struct Redis {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    aof: bool,
}

impl Redis {
    /// Without persistence.
    pub fn start() -> Redis {
        Self::start_with(false)
    }

    /// With `aof`: the durable profile (`appendonly yes`, `appendfsync always`).
    pub fn start_with(aof: bool) -> Redis {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let child = Self::spawn(port, &dir, aof);
        Redis {
            child,
            port,
            dir,
            aof,
        }
    }

    fn spawn(port: u16, dir: &tempfile::TempDir, aof: bool) -> Child {
        let appendonly = if aof { "yes" } else { "no" };
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args([
                "--appendonly",
                appendonly,
                "--appendfsync",
                "always",
                "--dir",
            ])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (the test command installs Debian's redis-server)");
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    /// SIGKILL, and a new redis-server on the same port and data (a crash and a
    /// supervisor's restart).
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(self.port, &self.dir, self.aof);
    }

    /// Sends `signal` (e.g. `-STOP`) to it.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal}");
    }

    /// `PUBLISH channel <payload>`, the payload through stdin (it may be large).
    pub fn publish(&self, channel: &str, payload: &str) {
        use std::io::Write;
        let mut child = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "-x", "PUBLISH", channel])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-cli runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(payload.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
    }

    /// Its `redis://` URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// One command through `redis-cli`; its answer, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        assert!(out.status.success(), "redis-cli {args:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
