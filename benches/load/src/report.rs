//! Markdown tables from the JSON-line results.

use std::fmt::Write;

use crate::Outcome;

/// One line for the terminal while the benchmark runs.
pub fn one_line(o: &Outcome) -> String {
    let mut s = format!("[{}] {} ({})", o.server, o.workload, o.params);
    match o.workload.as_str() {
        "idle" => {
            let _ = write!(
                s,
                ": {} connected, {} conn/s, {} KiB RSS per connection",
                o.ready,
                opt(o.connects_per_s, 0),
                opt(o.rss_per_conn_kib, 1)
            );
        }
        "join" => {
            let _ = write!(
                s,
                ": {} s, {} notices, server {} µs CPU per notice",
                opt(o.join_s, 3),
                o.notices,
                opt(o.server_cpu_us_per_unit, 2)
            );
        }
        "storm" => {
            let _ = write!(
                s,
                ": {} joined, {} conn/s (last joined at {} s), settled {} s after it, {} frames, server {} µs CPU per client (server {:.0}% / tool {:.0}% of a core)",
                o.ready,
                opt(o.connects_per_s, 0),
                opt(o.join_s, 3),
                opt(o.settle_s, 3),
                o.frames,
                opt(o.server_cpu_us_per_unit, 1),
                o.server_util * 100.0,
                o.tool_util * 100.0
            );
        }
        _ => {
            let _ = write!(
                s,
                ": {:.0} deliveries/s, p50 {} p99 {} p99.9 {} ms, lost {}, server {} / tool {} CPU-µs/delivery (server {:.0}% / tool {:.0}% of a core: {} saturated)",
                o.deliveries_per_s,
                opt(o.p50_us.map(|v| v / 1000.0), 2),
                opt(o.p99_us.map(|v| v / 1000.0), 2),
                opt(o.p999_us.map(|v| v / 1000.0), 2),
                o.lost,
                opt(o.server_cpu_us_per_unit, 3),
                opt(o.tool_cpu_us_per_unit, 3),
                o.server_util * 100.0,
                o.tool_util * 100.0,
                saturated(o)
            );
        }
    }
    if !o.note.is_empty() {
        let _ = write!(s, " — {}", o.note);
    }
    s
}

fn opt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) => format!("{v:.digits$}"),
        None => "—".to_owned(),
    }
}

fn short(note: &str) -> String {
    let mut n: String = note.chars().take(70).collect();
    if note.chars().count() > 70 {
        n.push('…');
    }
    n.replace('|', "/")
}

/// Which side ran out of CPU first, from the two utilizations.
pub fn saturated(o: &Outcome) -> &'static str {
    let (s, t) = (o.server_util, o.tool_util);
    if s >= 0.85 && s >= t {
        "server"
    } else if t >= 0.85 {
        "load tool"
    } else {
        "neither"
    }
}

/// The summary (one row per figure, one column per server) and the detail tables.
pub fn markdown(all: &[Outcome]) -> String {
    let mut servers: Vec<&str> = Vec::new();
    for o in all {
        if !servers.contains(&o.server.as_str()) {
            servers.push(&o.server);
        }
    }
    // Figures, in the order they first appear.
    type Cell = fn(&Outcome) -> String;
    type Matches = Box<dyn Fn(&Outcome) -> bool>;
    let mut rows: Vec<(String, Matches, Cell)> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for o in all {
        let key = format!("{}|{}|{}", o.workload, o.clients, o.rate);
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let (w, c, r) = (o.workload.clone(), o.clients, o.rate);
        let matches = move |x: &Outcome| x.workload == w && x.clients == c && x.rate == r;
        match o.workload.as_str() {
            "fanout" if o.rate == 0 => rows.push((
                format!(
                    "server CPU-µs per delivery at saturation, {} clients in one room",
                    o.clients
                ),
                Box::new(matches),
                cpu_cell,
            )),
            "fanout" => {
                let label = format!(
                    "p99 latency, {} clients at {} deliveries/s",
                    o.clients,
                    o.rate * o.clients as u64
                );
                rows.push((label, Box::new(matches), p99_cell));
            }
            "durable" => rows.push((
                format!(
                    "durable (SQLite): acknowledged sends/s, {} clients in one room",
                    o.clients
                ),
                Box::new(matches),
                acked_cell,
            )),
            "rooms" => {
                rows.push((
                    format!("rooms ({}): server CPU-µs per delivery", o.params),
                    Box::new(matches.clone()),
                    cpu_cell,
                ));
                rows.push((
                    format!("rooms ({}): p99 latency", o.params),
                    Box::new(matches),
                    p99_cell,
                ));
            }
            "idle" => {
                rows.push((
                    format!("RSS per idle connection ({} idle)", o.clients),
                    Box::new(matches.clone()),
                    rss_cell,
                ));
                rows.push((
                    format!("connections accepted per second ({} connecting)", o.clients),
                    Box::new(matches),
                    connect_cell,
                ));
            }
            "join" => rows.push((
                format!(
                    "{} clients join one room (all join notices delivered)",
                    o.clients
                ),
                Box::new(matches),
                join_cell,
            )),
            _ => {}
        }
    }
    let mut md = String::new();
    let _ = writeln!(md, "| figure | {} |", servers.join(" | "));
    let _ = writeln!(md, "|---|{}", "---|".repeat(servers.len()));
    for (label, matches, cell) in &rows {
        let cells: Vec<String> = servers
            .iter()
            .map(|s| {
                all.iter()
                    .rev()
                    .find(|o| o.server == *s && matches(o))
                    .map_or_else(|| "—".to_owned(), cell)
            })
            .collect();
        let _ = writeln!(md, "| {label} | {} |", cells.join(" | "));
    }
    md.push('\n');
    detail(&mut md, all);
    md
}

fn lost_suffix(o: &Outcome) -> String {
    let mut s = String::new();
    if o.lost != 0 {
        let pct = 100.0 * o.lost as f64 / o.expected.max(1) as f64;
        let _ = write!(s, " (lost {} = {pct:.1}%)", o.lost);
    }
    if o.dropped != 0 {
        let _ = write!(s, " ({} conns closed)", o.dropped);
    }
    s
}

fn failed(o: &Outcome) -> Option<String> {
    (o.ready < o.clients).then(|| format!("failed: {}", short(&o.note)))
}

fn cpu_cell(o: &Outcome) -> String {
    failed(o).unwrap_or_else(|| format!("{}{}", opt(o.server_cpu_us_per_unit, 2), lost_suffix(o)))
}

fn p99_cell(o: &Outcome) -> String {
    failed(o).unwrap_or_else(|| {
        let wanted = (o.rate * o.clients as u64) as f64;
        let short_of_rate = if o.workload == "fanout" && o.deliveries_per_s < 0.9 * wanted {
            format!(" (only {:.0} deliveries/s)", o.deliveries_per_s)
        } else {
            String::new()
        };
        format!(
            "{} ms{}{short_of_rate}",
            opt(o.p99_us.map(|v| v / 1000.0), 2),
            lost_suffix(o)
        )
    })
}

fn acked_cell(o: &Outcome) -> String {
    failed(o).unwrap_or_else(|| {
        format!(
            "{:.0} ({:.2} CPU-µs per delivery){}",
            o.acked_per_s,
            o.server_cpu_us_per_unit.unwrap_or(0.0),
            lost_suffix(o)
        )
    })
}

fn rss_cell(o: &Outcome) -> String {
    let mut s = format!("{} KiB", opt(o.rss_per_conn_kib, 1));
    if o.ready < o.clients {
        let _ = write!(s, " ({} of {} connected)", o.ready, o.clients);
    }
    s
}

fn connect_cell(o: &Outcome) -> String {
    let mut s = opt(o.connects_per_s, 0);
    if o.ready < o.clients {
        let _ = write!(s, " ({} of {} connected)", o.ready, o.clients);
    }
    s
}

fn join_cell(o: &Outcome) -> String {
    match o.join_s {
        Some(s) => format!("{s:.2} s"),
        None => format!("incomplete: {}", short(&o.note)),
    }
}

fn detail(md: &mut String, all: &[Outcome]) {
    let talk: Vec<&Outcome> = all
        .iter()
        .filter(|o| matches!(o.workload.as_str(), "fanout" | "rooms" | "durable"))
        .collect();
    if !talk.is_empty() {
        let _ = writeln!(md, "### Message runs\n");
        let _ = writeln!(
            md,
            "| server | workload | deliveries/s | p50 ms | p99 ms | p99.9 ms | sent | lost | server CPU-µs/delivery | load tool CPU-µs/delivery | server CPU | load tool CPU | saturated | note |"
        );
        let _ = writeln!(
            md,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for o in talk {
            let _ = writeln!(
                md,
                "| {} | {} {} | {:.0} | {} | {} | {} | {} | {}{} | {} | {} | {:.0}% | {:.0}% | {} | {} |",
                o.server,
                o.workload,
                o.params,
                o.deliveries_per_s,
                opt(o.p50_us.map(|v| v / 1000.0), 2),
                opt(o.p99_us.map(|v| v / 1000.0), 2),
                opt(o.p999_us.map(|v| v / 1000.0), 2),
                o.sent,
                o.lost,
                if o.dropped > 0 {
                    format!(" ({} closed)", o.dropped)
                } else {
                    String::new()
                },
                opt(o.server_cpu_us_per_unit, 3),
                opt(o.tool_cpu_us_per_unit, 3),
                o.server_util * 100.0,
                o.tool_util * 100.0,
                saturated(o),
                short(&o.note)
            );
        }
        md.push('\n');
    }
    let idle: Vec<&Outcome> = all.iter().filter(|o| o.workload == "idle").collect();
    if !idle.is_empty() {
        let _ = writeln!(md, "### Idle connections\n");
        let _ = writeln!(
            md,
            "| server | connections | connected | seconds to connect | conn/s | server CPU-µs per connection | RSS before → after (MiB) | KiB per connection | note |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
        for o in idle {
            let rss = o.rss_kib.map_or_else(
                || "—".to_owned(),
                |(a, b)| format!("{:.1} → {:.1}", a as f64 / 1024.0, b as f64 / 1024.0),
            );
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.2} | {} | {} | {} | {} | {} |",
                o.server,
                o.clients,
                o.ready,
                o.secs,
                opt(o.connects_per_s, 0),
                opt(o.server_cpu_us_per_unit, 1),
                rss,
                opt(o.rss_per_conn_kib, 1),
                short(&o.note)
            );
        }
        md.push('\n');
    }
    let join: Vec<&Outcome> = all.iter().filter(|o| o.workload == "join").collect();
    if !join.is_empty() {
        let _ = writeln!(md, "### Join storm\n");
        let _ = writeln!(
            md,
            "| server | clients | seconds until all heard of all | join notices | server CPU s | server CPU | load tool CPU | note |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        for o in join {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} of {} | {:.2} | {:.0}% | {:.0}% | {} |",
                o.server,
                o.clients,
                opt(o.join_s, 3),
                o.notices,
                o.expected,
                o.server_cpu_s,
                o.server_util * 100.0,
                o.tool_util * 100.0,
                short(&o.note)
            );
        }
        md.push('\n');
    }
    let storm: Vec<&Outcome> = all.iter().filter(|o| o.workload == "storm").collect();
    if !storm.is_empty() {
        let _ = writeln!(md, "### Connect storm\n");
        let _ = writeln!(
            md,
            "| server | run | connects/s (first connect to last `joined`) | settled after the last `joined` | frames received | server CPU-µs per client | server CPU | load tool CPU | note |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
        for o in storm {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {:.0}% | {:.0}% | {} |",
                o.server,
                o.params,
                connect_cell(o),
                o.settle_s.map_or("—".to_owned(), |s| format!("{s:.2} s")),
                o.frames,
                opt(o.server_cpu_us_per_unit, 1),
                o.server_util * 100.0,
                o.tool_util * 100.0,
                short(&o.note)
            );
        }
        md.push('\n');
    }
}
