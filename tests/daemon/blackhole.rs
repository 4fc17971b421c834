//! A true network blackhole: in a private network namespace, iptables drops every
//! packet of the upstream's port, so the kernel no longer acknowledges anything — not
//! a cooperative fault of our relay. The detection bound must still hold.
//!
//! The outer test re-runs this test binary under `unshare -n` (root, `unshare` and
//! `iptables` needed; skipped with a message where they are missing). Inside, the
//! `#[ignore]`d inner test does the work.

use std::process::Command;
use std::time::{Duration, Instant};

use wspoold::faults::Upstream;

use crate::util::{config, start, watchdog};

const INNER: &str = "WSPOOLD_NETNS_INNER";
const INNER_TEST: &str = "blackhole::kernel_blackhole_inside_the_namespace";

/// Why the namespace test cannot run here, if it cannot.
fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for tool in ["unshare", "iptables", "ip"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    let probe = Command::new("unshare")
        .args([
            "-n",
            "sh",
            "-c",
            "ip link set lo up && iptables -L INPUT -n",
        ])
        .output();
    match probe {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "unshare -n with iptables failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run unshare: {e}")),
    }
}

#[test]
fn kernel_blackhole_is_a_heartbeat_timeout_within_the_bound() {
    if std::env::var_os(INNER).is_some() {
        return; // the inner run executes only the inner test
    }
    if let Some(why) = unavailable() {
        eprintln!("skipped: kernel blackhole test: {why}");
        return;
    }
    watchdog(60, || {
        let out = Command::new("unshare")
            .arg("-n")
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", INNER_TEST, "--include-ignored", "--nocapture"])
            .env(INNER, "1")
            .output()
            .expect("run the inner test in a network namespace");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "inner test failed:\n{stdout}\n{stderr}"
        );
        assert!(
            stdout.contains("1 passed"),
            "inner test did not run:\n{stdout}"
        );
        for line in stdout
            .lines()
            .filter(|l| l.starts_with("kernel blackhole:"))
        {
            println!("{line}");
        }
    });
}

#[test]
#[ignore = "runs inside a private network namespace, started by the test above"]
fn kernel_blackhole_inside_the_namespace() {
    if std::env::var_os(INNER).is_none() {
        return;
    }
    let sh = |script: &str| {
        let out = Command::new("sh").args(["-c", script]).output().unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh("ip link set lo up");
    let up = Upstream::start().unwrap();
    let port = up.addr().port();
    let mut d = start(&config(&[up.url()], "min = 2"));
    d.wait_healthy(2, Duration::from_secs(5));
    let dropped = Instant::now();
    sh(&format!(
        "iptables -I INPUT -p tcp --dport {port} -j DROP && iptables -I INPUT -p tcp --sport {port} -j DROP"
    ));
    let (cause, at, last_life) = d.wait_silent_peer_death(Duration::from_secs(5));
    println!(
        "kernel blackhole: {cause} {:?} after the drop, {:?} after the last frame",
        at.duration_since(dropped),
        at.duration_since(last_life)
    );
}
