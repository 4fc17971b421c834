//! The report: `docs/benchmarks.md` with every table, and `docs/benchmarks.svg`, a plot
//! of the round trips by path and of the heal times by fault. Also the webhook
//! receiver the storm counts alerts with.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::client::{micros, millis, percentile};
use crate::echo::Fault;
use crate::heal::{HealRow, System, WEBSOCAT_PING};
use crate::overhead::Overhead;

/// An HTTP server on 127.0.0.1 that answers 200 to everything and counts requests.
pub struct Receiver {
    url: String,
    count: Arc<AtomicU64>,
}

impl Receiver {
    pub fn start() -> Receiver {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("start the webhook receiver");
        let url = format!("http://{}/", server.server_addr());
        let count = Arc::new(AtomicU64::new(0));
        let counting = count.clone();
        std::thread::Builder::new()
            .name("receiver".into())
            .spawn(move || {
                for request in server.incoming_requests() {
                    counting.fetch_add(1, Ordering::Relaxed);
                    let _ = request.respond(tiny_http::Response::empty(200));
                }
            })
            .expect("spawn the webhook receiver");
        Receiver { url, count }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Everything one run measured.
pub struct Results {
    pub command: String,
    pub machine: Vec<(String, String)>,
    /// Scheduled freely, then with every thread on one CPU.
    pub overhead: Vec<Vec<Overhead>>,
    /// Peers not measured, and why.
    pub missing: Vec<(String, String)>,
    pub heal: Vec<HealRow>,
    pub idle: Vec<Value>,
    /// The largest idle size's heartbeats with wspoold taken out (`floor`).
    pub floors: Vec<Value>,
    pub live: Value,
    pub storm: Value,
    pub took: Duration,
}

pub fn markdown(r: &Results) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "# wspoold benchmarks\n");
    let _ = writeln!(
        w,
        "Every figure below comes from one run of the command below, on the machine below, with every ratio taken against a baseline measured in the same run. Regenerate this page (and `benchmarks.svg`) with:\n\n```\n{}\n```\n\nThe run took {:.0} s. Loopback only; the upstream is the bench's own WebSocket echo server (one blocking thread per connection).\n",
        r.command,
        r.took.as_secs_f64()
    );
    let _ = writeln!(w, "## Machine and peers\n\n| | |\n|---|---|");
    for (k, v) in &r.machine {
        let _ = writeln!(w, "| {k} | {v} |");
    }
    for (name, why) in &r.missing {
        let _ = writeln!(w, "| {name} | not measured: {why} |");
    }
    let _ = writeln!(
        w,
        "\n![round trips by path, and heal times by fault](benchmarks.svg)\n"
    );
    let pinned = r.overhead.get(1).map(Vec::as_slice).unwrap_or_default();
    overhead_tables(w, &r.overhead[0], pinned);
    heal_tables(w, &r.heal);
    scale_tables(w, r);
    out
}

fn overhead_tables(w: &mut String, free: &[Overhead], pinned: &[Overhead]) {
    let _ = writeln!(
        w,
        "## Overhead: one client, one connection, through each path\n\nRound trips are one {} B text message at a time; throughput is a pipelined stream (64 small or 8 big messages in flight). Each path is measured in three rounds interleaved with the others. Ratios are against direct.\n",
        crate::overhead::SMALL
    );
    let _ = writeln!(w, "### Scheduled freely over the cores\n");
    overhead_table(w, free);
    let _ = writeln!(
        w,
        "### Every thread and process on one CPU\n\nThe same run with the bench, wspoold and the peers all pinned to CPU 0. On this virtual machine a wake-up on the other, idle vCPU costs tens of microseconds, and a proxy adds more wake-ups than the direct path has; pinned, what remains is each path's own work.\n"
    );
    overhead_table(w, pinned);
}

fn overhead_table(w: &mut String, rows: &[Overhead]) {
    let Some(direct) = rows.iter().find(|o| o.name == "direct") else {
        let _ = writeln!(w, "(not measured)\n");
        return;
    };
    let _ = writeln!(
        w,
        "| path | round trip p50 | p99 | p99.9 | p50 vs direct | small msg/s | MB/s | vs direct | 64 KiB msg/s | MB/s | vs direct |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for o in rows {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {:.2}× | {:.0} | {:.1} | {:.2}× | {:.0} | {:.0} | {:.2}× |",
            o.name,
            micros(o.rtt[0]),
            micros(o.rtt[1]),
            micros(o.rtt[2]),
            o.rtt[0].as_secs_f64() / direct.rtt[0].as_secs_f64(),
            o.small_rate,
            o.small_mbs(),
            o.small_rate / direct.small_rate,
            o.big_rate,
            o.big_mbs(),
            o.big_rate / direct.big_rate,
        );
    }
    let _ = writeln!(w);
}

fn fault_label(f: Fault) -> &'static str {
    match f {
        Fault::Kill => "kill (FIN)",
        Fault::Reset => "reset (RST)",
        Fault::Silence => "blackhole (silence)",
    }
}

fn heal_tables(w: &mut String, rows: &[HealRow]) {
    let _ = writeln!(
        w,
        "## Healing: the session's upstream connection dies under traffic\n\nA client sends a numbered message every millisecond. The upstream connection carrying it is then killed (the upstream closes it, as the kernel does for a crashed process), reset, or silenced (nothing more is read or written: a blackhole). *Detect* is, for wspoold, the time until it declared the connection dead; websocat reports nothing, so for it this is the time until its new upstream connection's handshake (an upper bound). *Next round trip* runs until the echo of the first message sent after the fault. *Lost* and *duplicated* count, from the upstream's own record, the messages of each run that never arrived and the extra copies that did.\n\nwspoold: `spare = 1`, at-least-once (the default), heartbeats every 1 s, dead after 1 s more. websocat: `{}`, `autoreconnect:` in front of the upstream (its ping settings take whole seconds).\n",
        WEBSOCAT_PING.join(" ")
    );
    let _ = writeln!(
        w,
        "| system | fault | runs | detect p50 | max | next round trip p50 | p99 | max | lost | duplicated | client disconnected |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for row in rows {
        let mut detect: Vec<Duration> = row.reps.iter().filter_map(|r| r.detect).collect();
        let mut recover: Vec<Duration> = row.reps.iter().filter_map(|r| r.recover).collect();
        detect.sort();
        recover.sort();
        let never = row.reps.len() - recover.len();
        let show = |v: &[Duration], p: f64| {
            if v.is_empty() {
                "—".to_string()
            } else {
                millis(percentile(v, p))
            }
        };
        let lost: u64 = row.reps.iter().map(|r| r.lost).sum();
        let sent: u64 = row.reps.iter().map(|r| r.sent).sum();
        let duplicated: u64 = row.reps.iter().map(|r| r.duplicated).sum();
        let closed = row.reps.iter().filter(|r| r.client_closed).count();
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {}{} | {} | {} | {lost} of {sent} | {duplicated} | {closed} |",
            row.system.label(),
            fault_label(row.fault),
            row.reps.len(),
            show(&detect, 0.5),
            show(&detect, 1.0),
            show(&recover, 0.5),
            if never > 0 {
                format!(" ({never} never)")
            } else {
                String::new()
            },
            show(&recover, 0.99),
            show(&recover, 1.0),
        );
    }
    let _ = writeln!(w);
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

fn scale_tables(w: &mut String, r: &Results) {
    let _ = writeln!(
        w,
        "## Scale: idle pooled connections, heartbeats every second\n\nEach size runs in a fresh process; the upstream runs in another. Memory is the daemon process's resident set over what it was before the pool started; CPU is the whole daemon process over the measured window.\n\n| connections | warm-up (start to all up) | resident KiB per connection | threads | descriptors | daemon CPU, % of one core | died while idle |\n|---|---|---|---|---|---|---|"
    );
    for v in &r.idle {
        let _ = writeln!(
            w,
            "| {} | {:.2} s | {:.1} | {} | {} | {:.2} % | {} |",
            v["connections"],
            num(v, "warm_seconds"),
            num(v, "rss_kib_per_conn"),
            v["threads"],
            v["fds"],
            num(v, "cpu_core") * 100.0,
            v["deaths"],
        );
    }
    if let Some(wspoold) = r.idle.last() {
        let _ = writeln!(
            w,
            "\nWhat the same heartbeats cost with wspoold taken out, on the same upstream and the same timer slack (`wspoold-bench floor`): a ping a second on each connection, its pong read at the next ping, nothing else.\n\n| {} connections | CPU, % of one core | vs wspoold |\n|---|---|---|\n| wspoold | {:.2} % | 1.00× |",
            wspoold["connections"],
            num(wspoold, "cpu_core") * 100.0
        );
        for f in &r.floors {
            let label = match f["design"].as_str() {
                Some("threads") => "a bare thread per connection (wspoold's design, nothing else)",
                _ => "one thread for every connection (an event loop's floor)",
            };
            let _ = writeln!(
                w,
                "| {label} | {:.2} % | {:.2}× |",
                num(f, "cpu_core") * 100.0,
                num(f, "cpu_core") / num(wspoold, "cpu_core")
            );
        }
    }
    let l = &r.live;
    let _ = writeln!(
        w,
        "\n## Scale: live sessions\n\n{} client sessions through wspoold, each sending a 64-byte message ten times a second and waiting for its echo (clients in the daemon's process; their CPU is subtracted).\n\n| sessions | messages/s | round trip p50 | p99 | daemon CPU, % of one core |\n|---|---|---|---|---|\n| {} | {:.0} | {:.0} µs | {:.0} µs | {:.1} % |\n",
        l["sessions"],
        l["sessions"],
        num(l, "messages_per_second"),
        num(l, "rtt_p50_us"),
        num(l, "rtt_p99_us"),
        num(l, "daemon_cpu_core") * 100.0,
    );
    let s = &r.storm;
    let _ = writeln!(
        w,
        "## Storm: every connection killed at once\n\nThe upstream process holding all {} pooled connections is killed (SIGKILL) and started again on its port {} s later. One webhook receiver; `resolve_after = \"2s\"`, other alert settings at their defaults.\n\n| connections | pool whole again after | reconnects | failed attempts while down | peak reconnect rate | incidents | webhook POSTs |\n|---|---|---|---|---|---|---|\n| {} | {:.2} s | {} | {} | {:.0}/s | {} | {} |\n",
        s["connections"],
        num(s, "down_seconds"),
        s["connections"],
        num(s, "whole_seconds"),
        s["reconnects"],
        s["failed_attempts"],
        num(s, "peak_reconnects_per_second"),
        s["incidents"],
        s["alerts_posted"],
    );
}

/// The plot: round trip p50 and p99 by path (left), and the median time until the
/// next round trip after each fault, wspoold against websocat, on a log scale (right).
pub fn svg(r: &Results) -> String {
    let (width, height) = (960.0, 360.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    rtt_panel(&mut s, &r.overhead[0], 20.0, 440.0);
    heal_panel(&mut s, &r.heal, 500.0, 440.0);
    let _ = writeln!(s, "</svg>");
    s
}

fn rtt_panel(s: &mut String, rows: &[Overhead], x0: f64, width: f64) {
    let _ = writeln!(
        s,
        r#"<text x="{x0}" y="24" font-size="14" font-weight="bold">Round trip, 64 B message (µs): p50 dark, p99 light</text>"#
    );
    let max = rows
        .iter()
        .map(|o| o.rtt[1].as_secs_f64() * 1e6)
        .fold(1.0, f64::max);
    let (label_w, top, bar_h, gap) = (80.0, 44.0, 18.0, 22.0);
    let scale = (width - label_w - 70.0) / max;
    for (i, o) in rows.iter().enumerate() {
        let y = top + i as f64 * (2.0 * bar_h + gap);
        let (p50, p99) = (o.rtt[0].as_secs_f64() * 1e6, o.rtt[1].as_secs_f64() * 1e6);
        let color = if o.name == "wspoold" {
            "#1f6feb"
        } else {
            "#6e7781"
        };
        let _ = writeln!(
            s,
            r#"<text x="{x0}" y="{:.1}">{}</text>"#,
            y + bar_h + 4.0,
            o.name
        );
        let bx = x0 + label_w;
        let _ = writeln!(
            s,
            r#"<rect x="{bx}" y="{y:.1}" width="{:.1}" height="{bar_h}" fill="{color}"/><text x="{:.1}" y="{:.1}">{p50:.0}</text>"#,
            p50 * scale,
            bx + p50 * scale + 4.0,
            y + 13.0
        );
        let _ = writeln!(
            s,
            r#"<rect x="{bx}" y="{:.1}" width="{:.1}" height="{bar_h}" fill="{color}" fill-opacity="0.45"/><text x="{:.1}" y="{:.1}">{p99:.0}</text>"#,
            y + bar_h,
            p99 * scale,
            bx + p99 * scale + 4.0,
            y + bar_h + 13.0
        );
    }
}

fn heal_panel(s: &mut String, rows: &[HealRow], x0: f64, width: f64) {
    let _ = writeln!(
        s,
        r#"<text x="{x0}" y="24" font-size="14" font-weight="bold">Next round trip after the fault, median (ms, log scale)</text>"#
    );
    let (label_w, top, bar_h, gap) = (130.0, 44.0, 18.0, 26.0);
    let (lo, hi) = (0.1f64.log10(), 10_000f64.log10());
    let span = width - label_w - 70.0;
    let at = |ms: f64| (ms.max(0.1).log10() - lo) / (hi - lo) * span;
    let bx = x0 + label_w;
    for (tick, label) in [
        (0.1, "0.1"),
        (1.0, "1"),
        (10.0, "10"),
        (100.0, "100"),
        (1000.0, "1000"),
        (10_000.0, "10000"),
    ] {
        let x = bx + at(tick);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="36" x2="{x:.1}" y2="330" stroke="#d0d7de"/><text x="{x:.1}" y="348" text-anchor="middle">{label}</text>"##
        );
    }
    for (i, fault) in [Fault::Kill, Fault::Reset, Fault::Silence]
        .into_iter()
        .enumerate()
    {
        let y = top + i as f64 * (2.0 * bar_h + gap);
        let _ = writeln!(
            s,
            r#"<text x="{x0}" y="{:.1}">{}</text>"#,
            y + bar_h + 4.0,
            fault_label(fault)
        );
        for (j, system) in [System::Wspoold, System::Websocat].into_iter().enumerate() {
            let Some(row) = rows.iter().find(|r| r.fault == fault && r.system == system) else {
                continue;
            };
            let mut times: Vec<Duration> = row.reps.iter().filter_map(|r| r.recover).collect();
            times.sort();
            let yy = y + j as f64 * bar_h;
            let (color, name) = match system {
                System::Wspoold => ("#1f6feb", "wspoold"),
                System::Websocat => ("#6e7781", "websocat"),
            };
            if times.is_empty() {
                let _ = writeln!(
                    s,
                    r#"<text x="{bx}" y="{:.1}">{name}: never</text>"#,
                    yy + 13.0
                );
                continue;
            }
            let ms = percentile(&times, 0.5).as_secs_f64() * 1e3;
            let _ = writeln!(
                s,
                r#"<rect x="{bx}" y="{yy:.1}" width="{:.1}" height="{bar_h}" fill="{color}"/><text x="{:.1}" y="{:.1}">{name} {ms:.1}</text>"#,
                at(ms).max(1.0),
                bx + at(ms).max(1.0) + 4.0,
                yy + 13.0
            );
        }
    }
}
