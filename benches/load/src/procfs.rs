//! CPU time and resident memory of a process, from `/proc`.

use std::time::Duration;

/// `/proc` reports CPU time in clock ticks of `USER_HZ`, which is 100 on Linux.
const USER_HZ: u64 = 100;

/// User + system CPU time of every thread of `pid` (`self` for this process), dead
/// threads included.
pub fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after its ')' are plain.
    let after = &stat[stat.rfind(')')? + 2..];
    let mut fields = after.split_ascii_whitespace();
    // `after` starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 1000 / USER_HZ))
}

/// Resident set size in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU times of the server and of this tool at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    /// When.
    pub at: std::time::Instant,
    /// The server's CPU time, summed over its processes (zero when no pid is known).
    pub server: Duration,
    /// This tool's CPU time.
    pub tool: Duration,
}

impl Snapshot {
    /// Takes a snapshot of the server processes `server_pids` (the nodes of a cluster,
    /// or one server) and this tool.
    pub fn take(server_pids: &[String]) -> Snapshot {
        Snapshot {
            at: std::time::Instant::now(),
            server: server_pids.iter().filter_map(|p| cpu_time(p)).sum(),
            tool: cpu_time("self").unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        assert!(cpu_time("self").is_some());
        assert!(rss_kib("self").unwrap() > 0);
    }
}
