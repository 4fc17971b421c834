//! The built `wspoold` binary: `check` and its exit codes, `run` and SIGTERM, `demo`.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use wspoold::faults::Upstream;

use crate::util::{Syslog, TempDir, wait_until, watchdog};

fn wspoold(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wspoold"))
        .args(args)
        .output()
        .expect("run wspoold")
}

fn write(dir: &TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// SIGTERM, and the exit status, which must come within 5 s.
fn terminate(child: &mut Child) -> ExitStatus {
    // SAFETY: sends a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut exited = None;
    wait_until(
        Duration::from_secs(5),
        || "the daemon to exit after SIGTERM".into(),
        || {
            exited = child.try_wait().unwrap();
            exited.is_some()
        },
    );
    exited.unwrap()
}

#[test]
fn check_accepts_a_valid_config_with_exit_0() {
    let dir = TempDir::new();
    let path = write(
        &dir,
        "ok.toml",
        "[pools.p]\nendpoints = [\"ws://127.0.0.1:9/\"]\n",
    );
    let out = wspoold(&["check", "--config", &path]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

#[test]
fn check_rejects_bad_configs_with_exit_78_naming_file_line_and_column() {
    let dir = TempDir::new();
    let cases = [
        ("syntax.toml", "[pools.p\nendpoints = []\n", ":1:"),
        (
            "unknown.toml",
            "[pools.p]\nendpoints = [\"ws://a/\"]\nmni = 2\n",
            ":3:1",
        ),
        (
            "duration.toml",
            "[pools.p]\nendpoints = [\"ws://a/\"]\nheartbeat_interval = \"5x\"\n",
            ":3:22",
        ),
        (
            "unset.toml",
            "[pools.p]\nendpoints = [\"ws://${WSPOOLD_TEST_UNSET_VAR}/\"]\n",
            ":2:",
        ),
        (
            "scheme.toml",
            "[pools.p]\nendpoints = [\"http://a/\"]\n",
            ":2:",
        ),
    ];
    for (name, text, place) in cases {
        let path = write(&dir, name, text);
        let out = wspoold(&["check", "--config", &path]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{name}: {err}");
        assert!(err.contains(&format!("{path}{place}")), "{name}: {err}");
    }
    let out = wspoold(&["check", "--config", "/nonexistent/wspoold.toml"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/wspoold.toml"));
}

#[test]
fn unknown_command_exits_1_with_usage() {
    let out = wspoold(&["fly"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage:"));
}

#[test]
fn run_closes_every_connection_with_1001_and_exits_0_within_5s_of_sigterm() {
    watchdog(60, || {
        let up = Upstream::start().unwrap();
        let dir = TempDir::new();
        let config = format!(
            "[daemon]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n[alerts]\nsyslog = false\n[pools.p]\nendpoints = [\"{}\"]\nmin = 300\nmax = 300\n",
            dir.path().display(),
            up.url()
        );
        let path = write(&dir, "run.toml", &config);
        let mut child = Command::new(env!("CARGO_BIN_EXE_wspoold"))
            .args(["run", "--config", &path])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_until(
            Duration::from_secs(20),
            || format!("300 connections, have {}", up.connections()),
            || up.connections() >= 300,
        );
        let signalled = Instant::now();
        let status = terminate(&mut child);
        assert!(signalled.elapsed() < Duration::from_secs(5));
        assert!(status.success(), "{status}");
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(
            stderr.contains("shut down: closed 300 connection(s)"),
            "{stderr}"
        );
        wait_until(
            Duration::from_secs(5),
            || format!("{} still open", up.connections()),
            || up.connections() == 0,
        );
        assert_eq!(up.close_codes().iter().filter(|c| **c == 1001).count(), 300);
    });
}

#[test]
fn under_systemd_journal_lines_go_to_syslog_once_not_also_to_stderr() {
    use std::os::unix::fs::MetadataExt;
    watchdog(60, || {
        let up = Upstream::start().unwrap();
        let dir = TempDir::new();
        // (stderr is the journal, syslog on): stderr gets the lines unless it is the
        // journal and syslog (which reaches the journal) is on.
        for (journal, syslog_on) in [(false, true), (true, true), (true, false)] {
            let syslog = Syslog::new();
            let config = format!(
                "[daemon]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n[alerts]\nsyslog = {syslog_on}\nsyslog_socket = \"{}\"\n[pools.p]\nendpoints = [\"{}\"]\nmin = 2\n",
                dir.path().display(),
                syslog.path.display(),
                up.url()
            );
            let path = write(&dir, "journal.toml", &config);
            let err_path = dir.path().join(format!("stderr-{journal}-{syslog_on}"));
            let err = std::fs::File::create(&err_path).unwrap();
            let meta = err.metadata().unwrap();
            let mut command = Command::new(env!("CARGO_BIN_EXE_wspoold"));
            command
                .args(["run", "--config", &path])
                .stderr(Stdio::from(err));
            // What systemd sets when it connects stderr to the journal; otherwise
            // whatever this test inherited must not count.
            if journal {
                command.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
            } else {
                command.env("JOURNAL_STREAM", "0:0");
            }
            let mut child = command.spawn().unwrap();
            let stderr = || std::fs::read_to_string(&err_path).unwrap();
            if syslog_on {
                syslog.read_until(Duration::from_secs(10), "pool warm");
            } else {
                wait_until(
                    Duration::from_secs(10),
                    || format!("'pool warm' on stderr:\n{}", stderr()),
                    || stderr().contains("pool warm"),
                );
            }
            assert!(terminate(&mut child).success());
            let stderr = stderr();
            assert_eq!(
                stderr.contains("shut down: closed"),
                !(journal && syslog_on),
                "journal {journal}, syslog {syslog_on}:\n{stderr}"
            );
            if syslog_on {
                // Not lost: syslog has it, once.
                let lines = syslog.read_until(Duration::from_secs(5), "shut down: closed");
                let warm = lines.iter().filter(|l| l.contains("pool warm")).count();
                assert_eq!(warm, 0, "read before: {lines:#?}");
            }
        }
    });
}

#[test]
fn demo_runs_on_its_own_and_prints_the_summary() {
    watchdog(60, || {
        let out = wspoold(&["demo", "--seconds", "10"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert!(stdout.contains("summary"), "{stdout}");
        for cause in ["heartbeat_timeout", "FAULT: alpha killed", "http 503"] {
            assert!(stdout.contains(cause), "{cause} missing from:\n{stdout}");
        }
        // The demo prints its own account; the daemon's log lines stay out of it.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("wspoold: info:"), "{stderr}");
    });
}
