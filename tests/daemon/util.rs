//! Helpers for the end-to-end tests: a watchdog per test, a daemon started in-process
//! with an observer, deadline-polling waits on what it observes, temporary files, and a
//! unix datagram socket standing in for /dev/log.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use wspoold::config::Config;
use wspoold::daemon::{Daemon, Options};
use wspoold::event::{Cause, Observation};

/// Run `body` on its own thread; fail the test if it has not finished in `secs`.
pub fn watchdog<F: FnOnce() + Send + 'static>(secs: u64, body: F) {
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    let worker = std::thread::Builder::new()
        .name("test-body".into())
        .spawn(move || {
            body();
            let _ = done_tx.send(());
        })
        .unwrap();
    match done_rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) => worker.join().unwrap(),
        Err(RecvTimeoutError::Disconnected) => {
            // The body panicked: re-raise its panic here.
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(RecvTimeoutError::Timeout) => panic!("watchdog: test still running after {secs} s"),
    }
}

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("wspoold-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Fast settings for tests: a silent peer is found within 400 ms. Pools have `min = 2`
/// unless the test says otherwise.
pub const FAST: &str = r#"
heartbeat_interval = "200ms"
heartbeat_timeout = "200ms"
write_timeout = "400ms"
connect_timeout = "500ms"
backoff_base = "50ms"
backoff_max = "300ms"
backoff_reset = "1s"
"#;

/// The detection bound of `FAST`, plus room for a loaded CI machine's scheduling.
pub const BOUND: Duration = Duration::from_millis(400 + 300);

/// A config with syslog off, a short grace, and one pool `p` over `endpoints`.
pub fn config(endpoints: &[String], extra: &str) -> Config {
    config_with(endpoints, extra, "syslog = false\ngrace = \"300ms\"")
}

pub fn config_with(endpoints: &[String], pool: &str, alerts: &str) -> Config {
    let list = endpoints
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let min = if pool.contains("min =") {
        ""
    } else {
        "min = 2"
    };
    let state = state_dir();
    let text = format!(
        "[daemon]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n[alerts]\n{alerts}\n\n[pools.p]\nendpoints = [{list}]\n{FAST}\n{min}\n{pool}\n",
        state.display()
    );
    Config::parse(&text, "test.toml").unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// A fresh directory for a test daemon's journal; `Running` removes it when dropped.
pub fn state_dir() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("wspoold-test-state-{}-{n}", std::process::id()))
}

/// A daemon running in this process, and what it observes.
pub struct Running {
    pub daemon: Option<Daemon>,
    pub seen: Receiver<Observation>,
    /// Everything observed so far, for failure messages and later checks.
    pub log: Vec<Observation>,
    /// How much of `log` the waits for events have gone through: the next one starts
    /// its search there. Waits for a state (`wait_healthy`) read the log without
    /// moving it, so an event that arrived while waiting for a state is still found.
    cursor: usize,
    /// Its `state_dir`, removed with it if it is a test's.
    pub state_dir: PathBuf,
}

pub fn start(config: &Config) -> Running {
    let (tx, rx) = crossbeam_channel::unbounded();
    let daemon = Daemon::start(
        config,
        Options {
            stderr: wspoold::alert::Stderr::Never,
            observer: Some(tx),
            notifier: None,
        },
    )
    .expect("daemon starts");
    Running {
        daemon: Some(daemon),
        seen: rx,
        log: Vec::new(),
        cursor: 0,
        state_dir: config.daemon.state_dir.clone(),
    }
}

impl Running {
    /// The first observation that `matches`, within `within`, among those not yet
    /// gone through by an earlier wait for an event.
    pub fn wait_for(
        &mut self,
        within: Duration,
        what: &str,
        matches: impl Fn(&Observation) -> bool,
    ) -> Observation {
        let deadline = Instant::now() + within;
        loop {
            if let Some(offset) = self.log[self.cursor..].iter().position(&matches) {
                let found = self.cursor + offset;
                self.cursor = found + 1;
                return self.log[found].clone();
            }
            self.cursor = self.log.len();
            if !self.receive(deadline) {
                self.gave_up(within, what);
            }
        }
    }

    /// Fail the test: nothing came within `within`; shows everything observed.
    fn gave_up(&self, within: Duration, what: &str) -> ! {
        let log: Vec<String> = self.log.iter().map(|o| format!("  {o:?}")).collect();
        panic!(
            "waited {within:?} for {what}; observed:\n{}",
            log.join("\n")
        );
    }

    /// Receive one observation into the log, waiting until `deadline`; false if none
    /// came.
    fn receive(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.seen.recv_timeout(left) {
            Ok(o) => {
                self.log.push(o);
                true
            }
            Err(_) => false,
        }
    }

    /// Everything observed that no wait has gone through yet, without waiting; the
    /// next wait for an event starts after it.
    pub fn take_ready(&mut self) -> Vec<Observation> {
        while let Ok(o) = self.seen.try_recv() {
            self.log.push(o);
        }
        let ready = self.log[self.cursor..].to_vec();
        self.cursor = self.log.len();
        ready
    }

    /// Wait until the pool has `n` healthy connections.
    pub fn wait_healthy(&mut self, n: usize, within: Duration) {
        self.wait_state(within, &format!("{n} healthy"), |d| d.healthy() >= n);
    }

    /// Wait until `holds` says yes about what has been observed. A state, not an
    /// event: what arrives meanwhile stays for the next wait for an event.
    pub fn wait_state(&mut self, within: Duration, what: &str, holds: impl Fn(&Running) -> bool) {
        let deadline = Instant::now() + within;
        while !holds(self) {
            if !self.receive(deadline) {
                self.gave_up(within, what);
            }
        }
    }

    /// Healthy connections as last observed.
    pub fn healthy(&self) -> usize {
        self.log
            .iter()
            .rev()
            .find_map(|o| match o {
                Observation::Health { healthy, .. } => Some(*healthy),
                _ => None,
            })
            .unwrap_or(0)
    }

    /// Wait for a death whose cause satisfies `cause`; returns (cause, at, last_life).
    pub fn wait_death(
        &mut self,
        within: Duration,
        what: &str,
        cause: impl Fn(&Cause) -> bool,
    ) -> (Cause, Instant, Option<Instant>, String) {
        match self.wait_for(
            within,
            what,
            |o| matches!(o, Observation::Died { cause: c, .. } if cause(c)),
        ) {
            Observation::Died {
                cause,
                at,
                last_life,
                endpoint,
                ..
            } => (cause, at, last_life, endpoint),
            _ => unreachable!(),
        }
    }

    /// Wait for a connection to die of silence (heartbeat timeout or write stall) and
    /// assert the detection bound: no later than `BOUND` after its last frame.
    pub fn wait_silent_peer_death(&mut self, within: Duration) -> (Cause, Instant, Instant) {
        let (cause, at, last_life, _) = self.wait_death(within, "a silent peer", |c| {
            matches!(c, Cause::HeartbeatTimeout | Cause::WriteStall)
        });
        let last_life = last_life.expect("it was connected");
        assert!(
            at.duration_since(last_life) <= BOUND,
            "{cause} declared {:?} after the last frame",
            at.duration_since(last_life)
        );
        (cause, at, last_life)
    }

    /// Wait for a notice whose text contains `text`; an incident transition counts
    /// as the line it logs.
    pub fn wait_notice(&mut self, within: Duration, text: &str) -> wspoold::event::Notice {
        let found = self.wait_for(within, &format!("a notice with {text:?}"), |o| match o {
            Observation::Notice(n) => n.text.contains(text),
            Observation::Incident(r) => r.text.contains(text),
            _ => false,
        });
        match found {
            Observation::Notice(n) => n,
            Observation::Incident(r) => wspoold::alert::incident_notice(&r),
            _ => unreachable!(),
        }
    }

    /// Take everything observed within `window` (for counting), without waiting on a
    /// condition: the window is the measurement.
    pub fn collect_for(&mut self, window: Duration) -> Vec<Observation> {
        let deadline = Instant::now() + window;
        let mut got = self.take_ready();
        let from = self.log.len();
        while self.receive(deadline) {}
        got.extend_from_slice(&self.log[from..]);
        self.cursor = self.log.len();
        got
    }

    pub fn stop(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            daemon.shutdown();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
        let name = self.state_dir.file_name().unwrap_or_default();
        if name.to_string_lossy().starts_with("wspoold-test-state-") {
            let _ = std::fs::remove_dir_all(&self.state_dir);
        }
    }
}

/// A unix datagram socket standing in for /dev/log.
pub struct Syslog {
    pub path: PathBuf,
    socket: UnixDatagram,
    _dir: TempDir,
}

impl Syslog {
    pub fn new() -> Syslog {
        let dir = TempDir::new();
        let path = dir.path().join("log");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        Syslog {
            path,
            socket,
            _dir: dir,
        }
    }

    /// Lines received until one contains `text` (within `within`); all of them.
    pub fn read_until(&self, within: Duration, text: &str) -> Vec<String> {
        self.read_until_all(within, &[text])
    }

    /// Lines received until each of `texts` has been in one (within `within`).
    pub fn read_until_all(&self, within: Duration, texts: &[&str]) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut lines: Vec<String> = Vec::new();
        let mut buf = [0u8; 8192];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                lines.push(String::from_utf8_lossy(&buf[..n]).to_string());
                if texts.iter().all(|t| lines.iter().any(|l| l.contains(t))) {
                    return lines;
                }
            }
        }
        panic!("no syslog lines with all of {texts:?} within {within:?}; got {lines:#?}");
    }
}

/// Poll `condition` every few milliseconds until it holds; fail after `within`,
/// describing the state with `what`.
pub fn wait_until(
    within: Duration,
    what: impl Fn() -> String,
    mut condition: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "waited {within:?} for {}",
            what()
        );
        std::thread::park_timeout(Duration::from_millis(5));
    }
}
