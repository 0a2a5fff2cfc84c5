//! The machine's floor for the fixed-rate fan-out: the same socket work with no server.
//!
//! One thread pinned to the server's core does nothing but what any server must do for a
//! room message on loopback: a blocking `read(2)` of the sender's message, then one
//! `write(2)` of it to each recipient's TCP socket. No WebSocket framing, no runtime, no
//! chat core, no JSON. This thread (on the load tool's core) sends at the fixed rate and
//! records every copy's latency with epoll (`mio`), as the load tool does for a server.
//!
//! Whatever latency this reaches is the lowest any server can reach for the workload on
//! this machine: a server's figure is this floor plus what the server itself adds.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};

use crate::{Outcome, procfs};

/// Bytes per message: about one of our `message` frames with a 64-byte body.
const FRAME: usize = 160;

/// The floor run's parameters.
#[derive(Debug, Clone)]
pub struct Floor {
    /// Recipient sockets.
    pub clients: usize,
    /// Messages per second (each one is `clients` copies).
    pub rate: u64,
    /// Seconds of sending.
    pub secs: f64,
    /// Core of the writing thread (the server's core in `scripts/bench.sh`).
    pub server_cpu: usize,
    /// Core of the receiving thread (the load tool's core).
    pub load_cpu: usize,
}

fn pin(cpu: usize) {
    // Best effort: without the core (a smaller machine) the run still measures something.
    let _ = core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
}

/// Runs the floor measurement and reports it like a fanout run of a server named `label`.
pub fn run(label: &str, f: &Floor) -> anyhow::Result<Outcome> {
    let clients = f.clients.max(1);
    let rate = f.rate.max(1);
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let pair = || -> anyhow::Result<(TcpStream, TcpStream)> {
        let near = TcpStream::connect(addr)?;
        let (far, _) = listener.accept()?;
        near.set_nodelay(true)?;
        far.set_nodelay(true)?;
        Ok((near, far))
    };
    let (trigger, mut trigger_far) = pair()?;
    let mut recipients = Vec::with_capacity(clients);
    let mut writers = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (near, far) = pair()?;
        near.set_nonblocking(true)?;
        recipients.push(mio::net::TcpStream::from_std(near));
        writers.push(far);
    }

    // The "server": read one message, write it to every recipient, until end of input
    // (or until the receiving side hangs up after its deadline).
    let server_cpu = f.server_cpu;
    let writer = std::thread::spawn(move || -> anyhow::Result<Duration> {
        pin(server_cpu);
        let mut msg = [0u8; FRAME];
        'messages: while trigger_far.read_exact(&mut msg).is_ok() {
            for w in &mut writers {
                if w.write_all(&msg).is_err() {
                    break 'messages;
                }
            }
        }
        procfs::cpu_time("thread-self").context("reading the writer's CPU time")
    });

    pin(f.load_cpu);
    let mut poll = Poll::new()?;
    for (i, r) in recipients.iter_mut().enumerate() {
        poll.registry().register(r, Token(i), Interest::READABLE)?;
    }
    // Never block on sending: a writer that falls behind must not stop this thread from
    // reading, or both would wait for each other. Messages wait in `outgoing` instead
    // (stamped when queued, so the wait there counts in their latency).
    trigger.set_nonblocking(true)?;
    let mut trigger = mio::net::TcpStream::from_std(trigger);
    let trigger_token = Token(clients);
    poll.registry()
        .register(&mut trigger, trigger_token, Interest::WRITABLE)?;
    let mut outgoing: Vec<u8> = Vec::new();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000_000, 3)?;
    let mut pending: Vec<Vec<u8>> = vec![Vec::new(); clients];
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let total = (rate as f64 * f.secs).round().max(1.0) as u64;
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let tool_cpu0 = procfs::cpu_time("thread-self").unwrap_or_default();
    let epoch = Instant::now();
    let deadline = epoch + Duration::from_secs_f64(f.secs + 10.0);
    let (mut sent, mut received) = (0u64, 0u64);
    let mut next_due = epoch;
    let mut last_rx = epoch;
    let expected = total * clients as u64;
    while received < expected {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        // Open loop, like the load tool's senders: a late schedule catches up.
        while sent < total && now >= next_due {
            let mut msg = [b' '; FRAME];
            let ns = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
            msg[..8].copy_from_slice(&ns.to_le_bytes());
            outgoing.extend_from_slice(&msg);
            sent += 1;
            next_due += period;
        }
        flush(&mut trigger, &mut outgoing)?;
        let wait = if sent < total {
            next_due.saturating_duration_since(Instant::now())
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        poll.poll(&mut events, Some(wait))?;
        for event in &events {
            if event.token() == trigger_token {
                flush(&mut trigger, &mut outgoing)?;
                continue;
            }
            let i = event.token().0;
            loop {
                match recipients[i].read(&mut buf) {
                    Ok(0) => anyhow::bail!("a recipient socket closed"),
                    Ok(n) => {
                        let ns = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
                        let p = &mut pending[i];
                        p.extend_from_slice(&buf[..n]);
                        let whole = p.len() / FRAME * FRAME;
                        for m in p[..whole].chunks_exact(FRAME) {
                            let ts = u64::from_le_bytes(m[..8].try_into().expect("8 bytes"));
                            hist.saturating_record(ns.saturating_sub(ts).max(1));
                            received += 1;
                        }
                        p.drain(..whole);
                        last_rx = Instant::now();
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    let tool_cpu = procfs::cpu_time("thread-self")
        .unwrap_or_default()
        .saturating_sub(tool_cpu0);
    // Hang up on both ends the writer uses: it stops even if it was blocked on a full socket.
    drop(trigger);
    drop(recipients);
    let writer_cpu = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))??;

    let wall = last_rx
        .saturating_duration_since(epoch)
        .as_secs_f64()
        .max(1e-9);
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let cpu = writer_cpu.as_secs_f64();
    Ok(Outcome {
        server: label.to_owned(),
        workload: "fanout".to_owned(),
        params: format!(
            "{clients} clients, 1 sender, {rate} msg/s; bare write(2) loop, no WebSocket"
        ),
        clients,
        rate,
        ready: clients,
        sent,
        expected: sent * clients as u64,
        received,
        lost: (sent * clients as u64) as i64 - received as i64,
        secs: wall,
        deliveries_per_s: received as f64 / wall,
        p50_us: (received > 0).then(|| us(0.5)),
        p99_us: (received > 0).then(|| us(0.99)),
        p999_us: (received > 0).then(|| us(0.999)),
        max_us: (received > 0).then(|| hist.max() as f64 / 1000.0),
        server_cpu_s: cpu,
        server_cpu_us_per_unit: (received > 0).then(|| cpu * 1e6 / received as f64),
        server_util: cpu / wall,
        tool_util: tool_cpu.as_secs_f64() / wall,
        note: "machine floor: one thread writes each message to every socket".to_owned(),
        ..Outcome::default()
    })
}

/// Writes what `outgoing` holds until the socket would block; keeps the rest.
fn flush(socket: &mut mio::net::TcpStream, outgoing: &mut Vec<u8>) -> std::io::Result<()> {
    while !outgoing.is_empty() {
        match socket.write(outgoing) {
            Ok(n) => {
                outgoing.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
