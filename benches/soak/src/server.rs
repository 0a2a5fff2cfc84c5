//! The server under test as a child process (so it can be stopped, killed and restarted
//! on the same SQLite file), what `/proc` says about it, and the host-level tools the
//! faults need (a tmpfs for the database, CPU starvation of the store's writer thread).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How the server is started, every time.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The example server binary.
    pub bin: PathBuf,
    /// `127.0.0.1:PORT`, the same across restarts.
    pub addr: String,
    /// The SQLite file.
    pub db: PathBuf,
    /// Where the server's stderr goes (appended across restarts).
    pub log: PathBuf,
    /// Extra arguments (e.g. flood-limit flags).
    pub extra: Vec<String>,
}

/// A running server process.
pub struct Server {
    child: Child,
    /// Its pid.
    pub pid: u32,
}

impl Server {
    /// Starts the server and waits (at most 30 s) until it listens.
    pub async fn start(spec: &Spec) -> anyhow::Result<Server> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .with_context(|| format!("opening {}", spec.log.display()))?;
        let mut child = Command::new(&spec.bin)
            .arg("--addr")
            .arg(&spec.addr)
            .arg("--db")
            .arg(&spec.db)
            .arg("--log")
            .arg("warn")
            .args(&spec.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", spec.bin.display()))?;
        let pid = child.id().context("server pid")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let wait = async {
            while let Some(line) = lines.next_line().await? {
                if line.starts_with("listening on") {
                    return Ok(());
                }
            }
            bail!(
                "the server exited before listening (see {})",
                spec.log.display()
            )
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .context("the server did not listen within 30 s")??;
        // Keep reading stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Server { child, pid })
    }

    /// Sends a signal by number (`kill -SIG PID`).
    pub fn signal(&self, sig: &str) -> anyhow::Result<()> {
        run("kill", &[&format!("-{sig}"), &self.pid.to_string()])
    }

    /// `kill -9`, then reaps the process.
    pub async fn kill9(mut self) -> anyhow::Result<()> {
        self.signal("KILL")?;
        self.child.wait().await?;
        Ok(())
    }

    /// SIGTERM (the graceful shutdown) and waits up to `limit` for the exit status.
    pub async fn terminate(mut self, limit: Duration) -> anyhow::Result<String> {
        self.signal("TERM")?;
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => Ok(status?.to_string()),
            Err(_) => {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
                bail!("the server did not exit within {limit:?} of SIGTERM")
            }
        }
    }

    /// Whether the process has exited (it should not, unless killed by the harness).
    pub fn exited(&mut self) -> Option<String> {
        self.child.try_wait().ok().flatten().map(|s| s.to_string())
    }
}

/// Runs a host command, failing with its stderr.
pub fn run(cmd: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// One sample of the server's resources.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resources {
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// Threads.
    pub threads: u64,
}

/// Reads `/proc/PID/status` (VmRSS, Threads) and counts `/proc/PID/fd`.
pub fn resources(pid: u32) -> Option<Resources> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(Resources {
        rss_kib: field("VmRSS:")?,
        fds,
        threads: field("Threads:")?,
    })
}

/// Bytes of the SQLite database: the file, its WAL and shared-memory index.
pub fn db_bytes(db: &Path) -> u64 {
    ["", "-wal", "-shm"]
        .iter()
        .filter_map(|suffix| {
            let mut p = db.as_os_str().to_owned();
            p.push(suffix);
            std::fs::metadata(PathBuf::from(p)).ok()
        })
        .map(|m| m.len())
        .sum()
}

/// The thread id of the store's writer thread (named `chat-store-writer`, which the
/// kernel truncates to 15 bytes).
pub fn writer_tid(pid: u32) -> Option<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .filter_map(Result::ok)
        .find(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim_end().starts_with("chat-store-w"))
        })
        .and_then(|t| t.file_name().to_str()?.parse().ok())
}

/// A tmpfs mounted for the database (the disk-full fault); unmounted on drop.
pub struct Tmpfs {
    /// The mount point.
    pub dir: PathBuf,
    mounted: std::sync::atomic::AtomicBool,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB at `dir` (created if missing).
    pub fn mount(dir: &Path, mib: u64) -> anyhow::Result<Tmpfs> {
        std::fs::create_dir_all(dir)?;
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m"),
                "tmpfs",
                dir.to_str().context("tmpfs path")?,
            ],
        )?;
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
            mounted: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// Fills the file system with `filler` until it is full; returns the bytes written.
    pub fn fill(&self, filler: &Path) -> anyhow::Result<u64> {
        use std::io::Write;
        let mut f = std::fs::File::create(filler)?;
        let mut written = 0u64;
        for chunk in [1 << 20, 4096, 512] {
            let buf = vec![0x5a_u8; chunk];
            loop {
                match f.write(&buf) {
                    Ok(0) => break,
                    Ok(n) => written += n as u64,
                    Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let _ = f.flush();
        Ok(written)
    }
}

impl Tmpfs {
    /// Unmounts it (once; the server must have stopped).
    pub fn unmount(&self) {
        if !self
            .mounted
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        if let Some(dir) = self.dir.to_str()
            && let Err(e) = run("umount", &[dir])
        {
            eprintln!("soak: could not unmount the tmpfs at {dir}: {e:#}");
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// Starves the store's writer thread of CPU: pins it to CPU 0 with `SCHED_IDLE` while
/// busy loops at normal priority hold CPU 0; the server's other threads keep every CPU.
/// Returns the starved thread id.
pub async fn starve_writer(pid: u32, hold: Duration) -> anyhow::Result<u32> {
    let tid = writer_tid(pid).context("no chat-store-writer thread under /proc/PID/task")?;
    let tid_s = tid.to_string();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    run("taskset", &["-p", "-c", "0", &tid_s])?;
    run("chrt", &["-i", "-p", "0", &tid_s])?;
    // Two busy loops on CPU 0, each ending by itself after `hold` (bounded even if the
    // harness dies).
    let secs = hold.as_secs().max(1);
    let secs = secs.to_string();
    let mut loops = Vec::new();
    for _ in 0..2 {
        loops.push(
            Command::new("taskset")
                .args([
                    "-c",
                    "0",
                    "timeout",
                    &secs,
                    "sh",
                    "-c",
                    "while :; do :; done",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("starting a busy loop")?,
        );
    }
    for mut l in loops {
        let _ = tokio::time::timeout(hold + Duration::from_secs(5), l.wait()).await;
    }
    run("chrt", &["-o", "-p", "0", &tid_s])?;
    run("taskset", &["-p", "-c", &format!("0-{}", cpus - 1), &tid_s])?;
    Ok(tid)
}

/// What the server's `/metrics` says about its memory and rooms (the example server
/// exports jemalloc's statistics); a value is `None` when the scrape failed (the server
/// stopped or restarting) or the server does not export it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Heap {
    /// jemalloc `stats.allocated`: bytes of live allocations.
    pub allocated: Option<u64>,
    /// jemalloc `stats.active`: bytes in pages holding allocations.
    pub active: Option<u64>,
    /// jemalloc `stats.resident`: bytes of allocator memory in RAM.
    pub resident: Option<u64>,
    /// jemalloc `stats.retained`: address space kept for reuse (not in RAM).
    pub retained: Option<u64>,
    /// `chat_rooms`: rooms in memory.
    pub rooms: Option<u64>,
}

/// Scrapes `http://ADDR/metrics` (plain HTTP/1.0, at most 2 s) for [`Heap`].
pub async fn heap(addr: &str) -> Heap {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let scrape = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        anyhow::Ok(body)
    };
    let Ok(Ok(text)) = tokio::time::timeout(Duration::from_secs(2), scrape).await else {
        return Heap::default();
    };
    let value = |name: &str| {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(' ')?;
            rest.trim().parse::<f64>().ok().map(|v| v as u64)
        })
    };
    Heap {
        allocated: value("jemalloc_allocated_bytes"),
        active: value("jemalloc_active_bytes"),
        resident: value("jemalloc_resident_bytes"),
        retained: value("jemalloc_retained_bytes"),
        rooms: value("chat_rooms"),
    }
}
