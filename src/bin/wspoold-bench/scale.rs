//! Scale and storm: each measurement runs in a child process of its own (so that
//! resident memory and CPU are the daemon's, not left over from an earlier run), with
//! the upstream in a second child, and prints one JSON line for the report.
//!
//! - idle: N pooled connections, heartbeats every second: warm-up time, resident
//!   memory, threads and descriptors per connection, the daemon's CPU.
//! - live: N client sessions each sending a small message ten times a second.
//! - storm: N connections killed at once (the upstream process dies and is back a
//!   second later): time until the pool is whole again, the reconnect rate, alerts.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::Message;
use wspoold::config::Config;
use wspoold::daemon::{Daemon, Options};
use wspoold::event::Observation;

use crate::client::{dial, next_data, percentile};
use crate::echo::Echo;

/// Each pooled connection takes a descriptor in the daemon and one in the upstream,
/// both in this process or its children: raise this process's limit to 65536 where the system lets
/// us, as `LimitNOFILE=` in the unit does for the daemon.
pub fn raise_nofile() {
    let want = libc::rlimit {
        rlim_cur: 65536,
        rlim_max: 65536,
    };
    // SAFETY: setrlimit reads one rlimit from a live local. Where it is refused, the
    // report sizes its largest run to the limit there is.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) };
}

/// The child that serves as upstream: an echo server on `port` (0: any) that prints
/// its URL and runs until its stdin closes.
pub fn serve(port: u16) {
    let echo = Echo::start(port, None, false);
    println!("{}", echo.url());
    let _ = std::io::stdout().flush();
    let _ = std::io::stdin().lines().count();
}

/// An upstream child process.
pub struct Upstream {
    child: Child,
    stdin: Option<ChildStdin>,
    pub url: String,
}

impl Upstream {
    pub fn start(port: u16) -> Upstream {
        let mut child = Command::new(std::env::current_exe().expect("this program's path"))
            .args(["serve", &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the upstream process");
        let mut url = String::new();
        BufReader::new(child.stdout.take().expect("its stdout"))
            .read_line(&mut url)
            .expect("the upstream's URL");
        let stdin = child.stdin.take();
        Upstream {
            child,
            stdin,
            url: url.trim().to_string(),
        }
    }

    fn port(&self) -> u16 {
        self.url
            .trim_end_matches('/')
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port in the upstream's URL")
    }

    /// SIGKILL: the kernel closes every connection it held.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stdin = None;
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.wait();
    }
}

/// Runs `wspoold-bench ARGS` in a child process and parses the JSON line it prints.
pub fn in_child(args: &[&str]) -> Value {
    let out = Command::new(std::env::current_exe().expect("this program's path"))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run a measurement in a child process");
    assert!(
        out.status.success(),
        "wspoold-bench {args:?} failed: {:?}",
        out.status
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("wspoold-bench {args:?} printed {text:?}: {e}"))
}

/// A daemon with one pool over `upstream`; `max_connections` must cover the pool's
/// `min`.
fn daemon(
    upstream: &str,
    pool: &str,
    alerts: &str,
    max_connections: usize,
    observer: crossbeam_channel::Sender<Observation>,
) -> Daemon {
    let text = format!(
        "[daemon]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nstate_dir = \"{}\"\nmax_connections = {}\n[alerts]\nsyslog = false\n{alerts}\n[pools.bench]\nendpoints = [\"{upstream}\"]\nheartbeat_interval = \"1s\"\nheartbeat_timeout = \"2s\"\nconnect_timeout = \"10s\"\n{pool}\n",
        crate::peers::state_dir().display(),
        max_connections
    );
    let config = Config::parse(&text, "<bench>").expect("bench config");
    Daemon::start(
        &config,
        Options {
            stderr: crate::peers::daemon_log(),
            observer: Some(observer),
            notifier: None,
        },
    )
    .expect("start the daemon")
}

/// Waits for the pool to report `n` healthy connections; when it did.
fn wait_healthy(
    rx: &crossbeam_channel::Receiver<Observation>,
    n: usize,
    within: Duration,
) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Observation::Health { healthy, at, .. }) if healthy >= n => return at,
            Ok(_) => {}
            Err(_) => panic!("the pool did not reach {n} healthy connections in {within:?}"),
        }
    }
}

/// This process's resident memory, KiB.
fn rss_kib() -> u64 {
    status_field("VmRSS:")
}

fn status_field(name: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path).map_or(0, |d| d.count())
}

/// CPU seconds this process has used (user and system, every thread).
pub fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz.max(1.0)
}

/// CPU seconds used by this process's live threads whose name starts with `prefix`.
fn threads_cpu(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|n| n.starts_with(prefix))
        })
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e9
}

/// `idle N SECONDS`: N pooled connections held idle.
pub fn idle(n: usize, seconds: u64) {
    let upstream = Upstream::start(0);
    let (tx, rx) = crossbeam_channel::unbounded();
    let (rss0, threads0, fds0) = (
        rss_kib(),
        count_dir("/proc/self/task"),
        count_dir("/proc/self/fd"),
    );
    let started = Instant::now();
    let d = daemon(
        &upstream.url,
        &format!("min = {n}\nmax = {n}\nspare = 0"),
        "",
        n + 64,
        tx,
    );
    let warm = wait_healthy(&rx, n, Duration::from_secs(120)).saturating_duration_since(started);
    // Let the first heartbeats pass before measuring.
    std::thread::sleep(Duration::from_secs(2));
    let (rss, threads, fds) = (
        rss_kib(),
        count_dir("/proc/self/task"),
        count_dir("/proc/self/fd"),
    );
    let cpu0 = process_cpu();
    let window = Instant::now();
    let mut deaths = 0u64;
    let deadline = window + Duration::from_secs(seconds);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if let Ok(Observation::Died { .. }) = rx.recv_timeout(left) {
            deaths += 1;
        }
    }
    let cpu = (process_cpu() - cpu0) / window.elapsed().as_secs_f64();
    d.shutdown();
    drop(upstream);
    println!(
        "{}",
        json!({
            "connections": n,
            "warm_seconds": warm.as_secs_f64(),
            "rss_kib_per_conn": rss.saturating_sub(rss0) as f64 / n as f64,
            "rss_kib": rss,
            "threads": threads - threads0,
            "fds": fds - fds0,
            "cpu_core": cpu,
            "deaths": deaths,
        })
    );
}

/// `live N SECONDS`: N client sessions, each sending a 64-byte message ten times a
/// second and waiting for its echo.
pub fn live(n: usize, seconds: u64) {
    let upstream = Upstream::start(0);
    let (tx, rx) = crossbeam_channel::unbounded();
    let d = daemon(
        &upstream.url,
        &format!("min = {n}\nmax = {}\nspare = 16", n + 64),
        "",
        n + 128,
        tx,
    );
    wait_healthy(&rx, n, Duration::from_secs(120));
    let url = format!("ws://{}/bench", d.listen_addr());
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(seconds + 2);
    let measure_from = Instant::now() + Duration::from_secs(2);
    // The clients wait for this to close before they end, so that their CPU time is
    // still theirs when it is taken.
    let (release, hold) = crossbeam_channel::bounded::<()>(0);
    let clients: Vec<_> = (0..n)
        .map(|i| {
            let (url, sent, hold) = (url.clone(), sent.clone(), hold.clone());
            std::thread::Builder::new()
                .name("client".into())
                .stack_size(256 * 1024)
                .spawn(move || {
                    let rtts = session(&url, i, stop, measure_from, &sent);
                    let _ = hold.recv();
                    rtts
                })
                .expect("spawn a client")
        })
        .collect();
    std::thread::sleep(measure_from.saturating_duration_since(Instant::now()));
    let (cpu0, clients0) = (process_cpu(), threads_cpu("client"));
    let window = Instant::now();
    std::thread::sleep(stop.saturating_duration_since(Instant::now()));
    let elapsed = window.elapsed().as_secs_f64();
    let daemon_cpu = ((process_cpu() - cpu0) - (threads_cpu("client") - clients0)) / elapsed;
    drop(release);
    let mut rtts: Vec<Duration> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap_or_default())
        .collect();
    rtts.sort();
    d.shutdown();
    drop(upstream);
    println!(
        "{}",
        json!({
            "sessions": n,
            "messages_per_second": rtts.len() as f64 / elapsed,
            "rtt_p50_us": percentile(&rtts, 0.5).as_secs_f64() * 1e6,
            "rtt_p99_us": percentile(&rtts, 0.99).as_secs_f64() * 1e6,
            "daemon_cpu_core": daemon_cpu,
            "sent": sent.load(Ordering::Relaxed),
        })
    );
}

/// One client session: round trips at ten a second until `stop`; the round trips
/// after `from`.
fn session(url: &str, i: usize, stop: Instant, from: Instant, sent: &AtomicU64) -> Vec<Duration> {
    let mut ws = match dial(url, Duration::from_secs(5)) {
        Ok(ws) => ws,
        Err(e) => panic!("client {i}: {e}"),
    };
    // Spread the sessions over the tenth of a second.
    let period = Duration::from_millis(100);
    let mut next = Instant::now() + period.mul_f64(i as f64 / 1000.0 % 1.0);
    let payload = "z".repeat(64);
    let mut rtts = Vec::new();
    while next < stop {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let at = Instant::now();
        if ws.send(Message::text(payload.clone())).is_err() || next_data(&mut ws).is_err() {
            panic!("client {i}: the session ended");
        }
        sent.fetch_add(1, Ordering::Relaxed);
        if at >= from {
            rtts.push(at.elapsed());
        }
        next += period;
    }
    let _ = ws.close(None);
    rtts
}

/// `storm N`: N connections killed at once; the upstream is back a second later.
pub fn storm(n: usize) {
    let hooks = crate::report::Receiver::start();
    let upstream = Upstream::start(0);
    let port = upstream.port();
    let (tx, rx) = crossbeam_channel::unbounded();
    let alerts = format!(
        "resolve_after = \"2s\"\n[[alerts.webhook]]\nurl = \"{}\"\n",
        hooks.url()
    );
    let d = daemon(
        &upstream.url,
        &format!("min = {n}\nmax = {n}\nspare = 0"),
        &alerts,
        n + 64,
        tx,
    );
    wait_healthy(&rx, n, Duration::from_secs(120));
    while rx.try_recv().is_ok() {}
    let killed = Instant::now();
    upstream.kill();
    std::thread::sleep(Duration::from_secs(1));
    let upstream = Upstream::start(port);
    // Every connection (re)made after the kill, by tenth of a second.
    let mut connects: Vec<Instant> = Vec::new();
    let (mut failed, mut incidents) = (0u64, std::collections::BTreeSet::new());
    let deadline = killed + Duration::from_secs(60);
    let whole = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Observation::Connected { at, .. }) => connects.push(at),
            Ok(Observation::Died {
                last_life: None, ..
            }) => failed += 1,
            Ok(Observation::Incident(r)) => {
                incidents.insert(r.incident);
            }
            Ok(Observation::Health { healthy, at, .. }) if healthy >= n && !connects.is_empty() => {
                break at;
            }
            Ok(_) => {}
            Err(_) => panic!("the pool was not whole again within 60 s of the storm"),
        }
    };
    // The incident resolves after two seconds of health; wait for its last alert.
    let settle = Instant::now() + Duration::from_secs(6);
    while let Some(left) = settle.checked_duration_since(Instant::now()) {
        if let Ok(Observation::Incident(r)) = rx.recv_timeout(left) {
            incidents.insert(r.incident);
        }
    }
    let peak = peak_per_second(&connects, Duration::from_millis(100));
    d.shutdown();
    drop(upstream);
    println!(
        "{}",
        json!({
            "connections": n,
            "whole_seconds": whole.saturating_duration_since(killed).as_secs_f64(),
            "down_seconds": 1.0,
            "reconnects": connects.len(),
            "failed_attempts": failed,
            "peak_reconnects_per_second": peak,
            "incidents": incidents.len(),
            "alerts_posted": hooks.count(),
        })
    );
}

/// The most connections made within any `bucket`-long slot, per second.
fn peak_per_second(times: &[Instant], bucket: Duration) -> f64 {
    let Some(first) = times.iter().min() else {
        return 0.0;
    };
    let mut slots: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    for t in times {
        let slot =
            (t.saturating_duration_since(*first).as_secs_f64() / bucket.as_secs_f64()) as u64;
        *slots.entry(slot).or_default() += 1;
    }
    slots.values().copied().max().unwrap_or(0) as f64 / bucket.as_secs_f64()
}
