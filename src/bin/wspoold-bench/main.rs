//! `wspoold-bench`: what wspoold costs and how fast it heals, each figure against a
//! baseline measured in the same run.
//!
//! - `idle [CONNECTIONS] [SECONDS]`: what idle pooled connections cost, against the
//!   same process before its pool started. The upstream runs in a child process so
//!   that only the daemon is measured.
//! - `bridge [ROUND_TRIPS] [KILLS]`: round-trip latency and throughput of a client
//!   talking to an upstream directly and through wspoold, and the time a session takes
//!   to heal after its upstream connection is killed, with a warm spare and without.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wspoold::config::Config;
use wspoold::daemon::{Daemon, Options};
use wspoold::event::Observation;
use wspoold::faults::Upstream;

mod bridge;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve(),
        Some("idle") => {
            let n = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
            let seconds = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10);
            idle(n, seconds);
        }
        Some("bridge") => {
            let trips = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5000);
            let kills = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(30);
            bridge::run(trips, kills);
        }
        _ => {
            eprintln!(
                "usage: wspoold-bench idle [CONNECTIONS] [SECONDS]\n       wspoold-bench bridge [ROUND_TRIPS] [KILLS]"
            );
            std::process::exit(1);
        }
    }
}

/// The child: an upstream that prints its URL and runs until its stdin closes.
fn serve() {
    let upstream = Upstream::start().expect("start the upstream");
    println!("{}", upstream.url());
    let _ = std::io::stdin().lines().count();
}

/// Resident memory in KiB, from /proc/self/status.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds used so far by this process's threads whose name starts with `prefix`.
fn cpu_of(prefix: &str) -> f64 {
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

fn idle(n: usize, seconds: u64) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the upstream process");
    let mut url = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut url)
        .unwrap();
    let text = format!(
        "[daemon]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nmax_connections = {}\n[alerts]\nsyslog = false\n[pools.bench]\nendpoints = [\"{}\"]\nmin = {n}\nmax = {n}\nheartbeat_interval = \"1s\"\nheartbeat_timeout = \"2s\"\nconnect_timeout = \"10s\"\n",
        n + 16,
        url.trim()
    );
    let config = Config::parse(&text, "<bench>").expect("bench config");
    let (tx, rx) = crossbeam_channel::unbounded();
    let rss_before = rss_kib();
    let threads_before = std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count());
    let started = Instant::now();
    let daemon = Daemon::start(
        &config,
        Options {
            stderr: false,
            observer: Some(tx),
            notifier: None,
        },
    )
    .expect("start the daemon");
    let mut deaths = 0;
    loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Observation::Health { healthy, .. }) if healthy >= n => break,
            Ok(Observation::Died { .. }) => deaths += 1,
            Ok(_) => {}
            Err(_) => panic!("the pool did not reach {n} connections in 60 s"),
        }
    }
    let warm = started.elapsed();
    let rss = rss_kib();
    let threads = std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count());
    let (workers0, monitor0) = (cpu_of("worker-"), cpu_of("monitor"));
    let window = Instant::now();
    let deadline = window + Duration::from_secs(seconds);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if let Ok(Observation::Died { .. }) = rx.recv_timeout(left) {
            deaths += 1;
        }
    }
    let elapsed = window.elapsed().as_secs_f64();
    let workers = (cpu_of("worker-") - workers0) / elapsed;
    let monitor = (cpu_of("monitor") - monitor0) / elapsed;
    let stop = Instant::now();
    daemon.shutdown();
    let shutdown = stop.elapsed();
    drop(child.stdin.take());
    let _ = child.wait();

    println!("wspoold-bench idle: {n} connections, heartbeat 1s, {seconds} s measured\n");
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| warm-up to {n} connections | {:.2} s |",
        warm.as_secs_f64()
    );
    println!(
        "| resident memory per connection (over the process before start, {rss_before} KiB) | {:.1} KiB |",
        (rss.saturating_sub(rss_before)) as f64 / n as f64
    );
    println!(
        "| threads per connection | {:.3} |",
        (threads - threads_before) as f64 / n as f64
    );
    println!(
        "| worker CPU, idle | {:.2} % of one core |",
        workers * 100.0
    );
    println!(
        "| monitor CPU, idle | {:.2} % of one core |",
        monitor * 100.0
    );
    println!(
        "| worker CPU per connection-heartbeat | {:.1} µs |",
        workers * 1e6 / n as f64
    );
    println!("| connections that died while idle | {deaths} |");
    println!(
        "| shutdown (close 1001, join all) | {:.0} ms |",
        shutdown.as_secs_f64() * 1e3
    );
}
