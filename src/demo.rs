//! `wspoold demo`: a newcomer's first look. Starts three upstream WebSocket servers on
//! loopback inside the process, runs a pool over them with the real daemon, injects
//! faults on a schedule — an upstream killed, one frozen so only heartbeats can notice,
//! one rejecting handshakes — prints what happened as it happens, and ends with a table
//! of detection and recovery times (or earlier on Ctrl-C).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::config::{Config, format_duration};
use crate::daemon::{Daemon, Options};
use crate::event::{Cause, human};
use crate::event::{Observation, Severity};
use crate::faults::{Cut, Mode, Upstream};

/// What the demo does to an upstream, and when (as a fraction of the run).
#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill,
    Restart,
    Freeze,
    Thaw,
    Reject,
    Accept,
}

const SCRIPT: &[(f64, usize, Fault)] = &[
    (0.12, 0, Fault::Kill),
    (0.30, 0, Fault::Restart),
    (0.42, 1, Fault::Freeze),
    (0.60, 1, Fault::Thaw),
    (0.66, 2, Fault::Reject),
    (0.84, 2, Fault::Accept),
];

/// One injected fault and what the daemon made of it.
struct Record {
    what: String,
    at: Instant,
    detected: Option<(Instant, String)>,
    recovered: Option<Instant>,
    replaced: usize,
}

const NAMES: [&str; 3] = ["alpha", "bravo", "charlie"];

pub fn run(seconds: u64) -> io::Result<()> {
    let seconds = seconds.max(10);
    let interrupted = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, interrupted.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, interrupted.clone())?;

    let upstreams = [Upstream::start()?, Upstream::start()?, Upstream::start()?];
    let config = demo_config(&upstreams).map_err(|e| io::Error::other(e.to_string()))?;
    let pool = &config.pools[0];
    println!("wspoold demo: {seconds} s on loopback, Ctrl-C ends it early\n");
    for (name, upstream) in NAMES.iter().zip(&upstreams) {
        println!("  upstream {name:<8} {}", upstream.url());
    }
    println!(
        "  pool \"demo\": min {} connections, heartbeat every {}, timeout {} (a silent peer is found within {})\n",
        pool.min,
        format_duration(pool.heartbeat_interval),
        format_duration(pool.heartbeat_timeout),
        format_duration(pool.heartbeat_interval + pool.heartbeat_timeout),
    );

    let (tx, observations) = crossbeam_channel::unbounded();
    let start = Instant::now();
    let daemon = Daemon::start(
        &config,
        Options {
            stderr: crate::alert::Stderr::Never,
            observer: Some(tx),
            notifier: None,
        },
    )?;
    let mut show = Show {
        start,
        urls: upstreams.iter().map(|u| u.url()).collect(),
        records: Vec::new(),
        healthy: 0,
        min: pool.min,
    };
    let end = start + Duration::from_secs(seconds);
    for &(fraction, target, fault) in SCRIPT {
        let at = start + Duration::from_secs(seconds).mul_f64(fraction);
        if !show.pump(&observations, at, &interrupted) {
            break;
        }
        show.inject(&upstreams[target], NAMES[target], fault);
    }
    show.pump(&observations, end, &interrupted);
    println!("\n[{}] shutting down", show.stamp(Instant::now()));
    daemon.shutdown();
    while let Ok(observation) = observations.try_recv() {
        show.observe(observation);
    }
    show.summary();
    Ok(())
}

fn demo_config(upstreams: &[Upstream; 3]) -> Result<Config, crate::config::ConfigError> {
    let state_dir = std::env::temp_dir().join(format!("wspoold-demo-{}", std::process::id()));
    let text = format!(
        r#"
[daemon]
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
state_dir = "{}"

[alerts]
syslog = false
grace = "1s"

[pools.demo]
endpoints = ["{}", "{}", "{}"]
min = 6
heartbeat_interval = "1s"
heartbeat_timeout = "1s"
connect_timeout = "2s"
backoff_base = "200ms"
backoff_max = "2s"
backoff_reset = "5s"
on_connect = ['{{"op":"subscribe","channel":"demo"}}']
"#,
        state_dir.display(),
        upstreams[0].url(),
        upstreams[1].url(),
        upstreams[2].url(),
    );
    Config::parse(&text, "<demo>")
}

struct Show {
    start: Instant,
    urls: Vec<String>,
    records: Vec<Record>,
    healthy: usize,
    min: usize,
}

impl Show {
    fn stamp(&self, at: Instant) -> String {
        format!(
            "{:6.2}s",
            at.saturating_duration_since(self.start).as_secs_f64()
        )
    }

    fn name(&self, url: &str) -> &'static str {
        self.urls
            .iter()
            .position(|u| u == url)
            .map(|i| NAMES[i])
            .unwrap_or("?")
    }

    /// Print observations until `until`; false when interrupted.
    fn pump(&mut self, rx: &Receiver<Observation>, until: Instant, stop: &AtomicBool) -> bool {
        loop {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            let now = Instant::now();
            if now >= until {
                return true;
            }
            let wait = (until - now).min(Duration::from_millis(100));
            if let Ok(observation) = rx.recv_timeout(wait) {
                self.observe(observation);
            }
        }
    }

    fn inject(&mut self, upstream: &Upstream, name: &str, fault: Fault) {
        // Taken first: the daemon may notice before the fault call returns.
        let at = Instant::now();
        let what = match fault {
            Fault::Kill => {
                upstream.kill();
                format!("{name} killed: resets, then refuses")
            }
            Fault::Restart => {
                if let Err(e) = upstream.restart() {
                    println!("could not restart {name}: {e}");
                }
                format!("{name} restarted")
            }
            Fault::Freeze => {
                upstream.set_mode(Mode::Freeze);
                format!("{name} frozen: silent, sockets open")
            }
            Fault::Thaw => {
                upstream.set_mode(Mode::Echo);
                format!("{name} thawed")
            }
            Fault::Reject => {
                upstream.set_mode(Mode::Reject(503));
                upstream.cut(Cut::Close(1012));
                format!("{name} restarting: close 1012, then http 503")
            }
            Fault::Accept => {
                upstream.set_mode(Mode::Echo);
                format!("{name} accepts handshakes again")
            }
        };
        println!("\n[{}] FAULT: {what}", self.stamp(at));
        if matches!(fault, Fault::Kill | Fault::Freeze | Fault::Reject) {
            self.records.push(Record {
                what,
                at,
                detected: None,
                recovered: None,
                replaced: 0,
            });
        }
    }

    fn observe(&mut self, observation: Observation) {
        match observation {
            Observation::Connected {
                endpoint, id, at, ..
            } => {
                println!(
                    "[{}]   connection {} up on {}",
                    self.stamp(at),
                    id & 0xffff,
                    self.name(&endpoint)
                );
            }
            Observation::Died {
                endpoint,
                id,
                cause,
                at,
                last_life,
                ..
            } => {
                let silent = last_life
                    .filter(|_| cause != Cause::Retired)
                    .map(|l| format!(", {} after its last frame", human(at - l)))
                    .unwrap_or_default();
                println!(
                    "[{}]   connection {} on {} ended: {cause}{silent}",
                    self.stamp(at),
                    id & 0xffff,
                    self.name(&endpoint)
                );
                if let Some(record) = self.records.last_mut()
                    && at >= record.at
                    && cause != Cause::Retired
                    && last_life.is_some()
                {
                    record.replaced += 1;
                    record
                        .detected
                        .get_or_insert((at, cause.label().to_string()));
                }
            }
            Observation::Health {
                healthy, min, at, ..
            } => {
                if healthy < min || self.healthy < min {
                    println!("[{}]   pool: {healthy}/{min} healthy", self.stamp(at));
                }
                self.healthy = healthy;
                if healthy >= self.min
                    && let Some(record) = self.records.last_mut()
                    && record.detected.is_some()
                    && record.recovered.is_none()
                {
                    record.recovered = Some(at);
                }
            }
            Observation::Notice(notice) => {
                let mark = match notice.severity {
                    Severity::Info => "info",
                    Severity::Warning => "WARNING",
                    Severity::Critical => "CRITICAL",
                };
                println!(
                    "[{}] wspoold {mark}: {}",
                    self.stamp(Instant::now()),
                    notice.text
                );
            }
            Observation::Incident(record) => {
                println!(
                    "[{}] wspoold incident {} {} ({}, {}): {}",
                    self.stamp(Instant::now()),
                    record.incident,
                    record.status.label(),
                    record.severity.label(),
                    record.kind.label(),
                    record.text
                );
            }
        }
    }

    fn summary(&self) {
        println!("\nsummary (times from the fault):\n");
        let width = self.records.iter().map(|r| r.what.len()).max().unwrap_or(5);
        println!(
            "  {:<width$}  {:<18} {:>9} {:>9} {:>9} {:>8}",
            "fault", "detected by", "detect", "replace", "recover", "replaced"
        );
        for r in &self.records {
            let detect = r
                .detected
                .as_ref()
                .map(|(t, _)| ms(*t - r.at))
                .unwrap_or_else(|| "-".into());
            let by = r
                .detected
                .as_ref()
                .map(|(_, c)| c.as_str())
                .unwrap_or("not detected");
            let recover = r
                .recovered
                .map(|t| ms(t.saturating_duration_since(r.at)))
                .unwrap_or_else(|| "-".into());
            let replace = match (&r.detected, r.recovered) {
                (Some((died, _)), Some(whole)) => ms(whole.saturating_duration_since(*died)),
                _ => "-".into(),
            };
            println!(
                "  {:<width$}  {:<18} {:>9} {:>9} {:>9} {:>8}",
                r.what, by, detect, replace, recover, r.replaced
            );
        }
        println!(
            "\n  detect: from the fault to the first connection declared dead (the test servers\n  take up to {} ms to act); replace: from that death until the pool is back at min;\n  recover: from the fault until the pool is back at min.",
            crate::faults::TICK.as_millis()
        );
    }
}

fn ms(d: Duration) -> String {
    if d < Duration::from_millis(10) {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.0} ms", d.as_secs_f64() * 1000.0)
    }
}
