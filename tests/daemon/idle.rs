//! The daemon stays near idle while every endpoint is down: backoff paces the probes
//! and the monitor does not spin. Measured on the real binary's CPU time.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Clock ticks of user plus system time a process has used (from /proc/PID/stat).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Kills the daemon if the test fails before it stops it: a panic ends the test
/// binary, and with it the watchdog thread, but not the child.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) on a pid we started; harmless if it has exited.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

#[test]
fn every_endpoint_down_keeps_the_daemon_near_idle_not_spinning() {
    let dir = std::env::temp_dir().join(format!("wspoold-idle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("wspoold.toml");
    let refused = wspoold::faults::unused_port();
    let refused2 = wspoold::faults::unused_port();
    std::fs::write(
        &config,
        format!(
            r#"[daemon]
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
state_dir = "{dir}"
[alerts]
syslog = false
grace = "200ms"
[pools.down]
endpoints = ["ws://127.0.0.1:{refused}/"]
backup = ["ws://127.0.0.1:{refused2}/"]
min = 4
connect_timeout = "300ms"
backoff_base = "50ms"
backoff_max = "500ms"
"#,
            dir = dir.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wspoold"))
        .args(["run", "--config"])
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wspoold");
    let pid = child.id();
    let _guard = KillOnDrop(pid);
    // Watchdog: whatever happens below, the daemon is gone within 30 s.
    let watchdog = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::fs::metadata(format!("/proc/{pid}")).is_err() {
                return;
            }
            std::thread::park_timeout(Duration::from_millis(100));
        }
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    // Wait (by reading its log) until the pool is reported down: from then on the
    // monitor has a grace deadline behind it and probes on backoff.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.contains("pool down") {
            break;
        }
    }
    assert!(
        seen.iter().any(|l| l.contains("pool down")),
        "no 'pool down' line: {seen:#?}"
    );
    assert!(
        seen.iter()
            .any(|l| l.starts_with("wspoold: critical: incident=1 pool=down ")),
        "{seen:#?}"
    );
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let before = cpu_ticks(pid);
    let started = Instant::now();
    // Keep draining its stderr so it never blocks on a full pipe.
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).count());
    let window = Duration::from_secs(2);
    let deadline = started + window;
    while Instant::now() < deadline {
        std::thread::park_timeout(deadline - Instant::now());
    }
    let used = (cpu_ticks(pid) - before) as f64 / ticks_per_second;
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    drain.join().unwrap();
    watchdog.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    // A spinning monitor burns the whole window (2 s); probing on a 500 ms backoff
    // ceiling costs a few milliseconds.
    let share = used / window.as_secs_f64();
    assert!(
        share < 0.2,
        "daemon used {:.0}% of a core while every endpoint was down",
        share * 100.0
    );
    assert!(status.success(), "exit status {status}");
}
