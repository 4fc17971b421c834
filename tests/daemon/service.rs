//! Running as a service: the admin endpoint (/metrics, /status, /healthz), systemd
//! notifications (READY, WATCHDOG only while the monitor turns, RELOADING, STOPPING),
//! and reload on SIGHUP with sessions left standing.

use std::cell::RefCell;
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use tungstenite::Message;
use wspoold::config::Config;
use wspoold::event::Control;
use wspoold::faults::{Upstream, unused_port};
use wspoold::metrics::FAMILIES;
use wspoold::notify::Notifier;
use wspoold::status::Status;

use crate::bridge::{close_code, dial, next_data};
use crate::util::{TempDir, config, start, state_dir, wait_until, watchdog};

const SOON: Duration = Duration::from_secs(5);

/// GET `path` from the admin endpoint: (status code, body).
fn get(admin: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(SOON))
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = agent.get(format!("http://{admin}{path}"));
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let mut response = request.call().expect("the admin endpoint answers");
    let code = response.status().as_u16();
    (code, response.body_mut().read_to_string().unwrap())
}

/// Parse Prometheus text: every sample line is `name{labels} value`. Returns the
/// families declared by TYPE and the samples as (series, value).
fn parse_metrics(text: &str) -> (HashSet<String>, Vec<(String, f64)>) {
    let mut families = HashSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap();
            let kind = parts.next().unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            families.insert(name.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "{line}"
            );
        }
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        samples.push((series.to_string(), value));
    }
    (families, samples)
}

fn sample(samples: &[(String, f64)], series: &str) -> Option<f64> {
    samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v)
}

#[test]
fn metrics_status_and_healthz_follow_the_pool() {
    watchdog(60, || {
        let up = Upstream::start().unwrap();
        let url = up.url();
        let mut daemon = start(&config(std::slice::from_ref(&url), ""));
        daemon.wait_healthy(2, SOON);
        let admin = daemon.daemon.as_ref().unwrap().admin_addr();
        wait_until(
            SOON,
            || format!("/healthz 200, have {:?}", get(admin, "/healthz", None)),
            || get(admin, "/healthz", None).0 == 200,
        );
        // One message each way through a session.
        let mut ws = dial(daemon.daemon.as_ref().unwrap().listen_addr(), "/p", None).unwrap();
        ws.send(Message::text("ping me")).unwrap();
        assert_eq!(next_data(&mut ws), Message::text("ping me"));
        let up_series = format!("wspoold_endpoint_up{{pool=\"p\",endpoint=\"{url}\"}}");
        let rtt_count =
            format!("wspoold_heartbeat_rtt_seconds_count{{pool=\"p\",endpoint=\"{url}\"}}");
        let last = RefCell::new(String::new());
        wait_until(
            SOON,
            || {
                format!(
                    "metrics with a round trip and both messages:\n{}",
                    last.borrow()
                )
            },
            || {
                let (code, body) = get(admin, "/metrics", None);
                assert_eq!(code, 200);
                let (families, samples) = parse_metrics(&body);
                for family in FAMILIES {
                    assert!(families.contains(family), "{family} missing:\n{body}");
                }
                assert_eq!(sample(&samples, &up_series), Some(1.0), "{body}");
                let done = sample(&samples, &rtt_count).unwrap_or(0.0) > 0.0
                    && sample(
                        &samples,
                        "wspoold_messages_total{pool=\"p\",direction=\"to_upstream\"}",
                    ) == Some(1.0)
                    && sample(
                        &samples,
                        "wspoold_messages_total{pool=\"p\",direction=\"to_client\"}",
                    ) == Some(1.0)
                    && sample(&samples, "wspoold_sessions{pool=\"p\"}") == Some(1.0);
                *last.borrow_mut() = body;
                done
            },
        );
        let (code, body) = get(admin, "/status", None);
        assert_eq!(code, 200);
        let status: Status = serde_json::from_str(&body).unwrap();
        assert!(status.live);
        assert_eq!(status.pools.len(), 1);
        assert!(status.pools[0].healthy >= 2, "{body}");
        assert_eq!(status.pools[0].endpoints[0].state, "up");
        assert_eq!(get(admin, "/nothing", None).0, 404);

        // The upstream goes away: no healthy connection, and /healthz says which pool.
        drop(ws);
        up.kill();
        let why = RefCell::new(String::new());
        wait_until(
            Duration::from_secs(10),
            || format!("/healthz 503, last answer: {}", why.borrow()),
            || {
                let (code, body) = get(admin, "/healthz", None);
                *why.borrow_mut() = body;
                code == 503
            },
        );
        let why = why.into_inner();
        assert!(why.contains("pool p: no healthy connection"), "{why}");
        assert!(why.contains(&url), "{why}");
    });
}

#[test]
fn an_admin_token_is_required_when_set() {
    watchdog(30, || {
        let up = Upstream::start().unwrap();
        let text = format!(
            "[daemon]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nadmin_token = \"s3cret\"\nstate_dir = \"{}\"\n[alerts]\nsyslog = false\n[pools.p]\nendpoints = [\"{}\"]\n",
            state_dir().display(),
            up.url()
        );
        let daemon = start(&Config::parse(&text, "token.toml").unwrap());
        let admin = daemon.daemon.as_ref().unwrap().admin_addr();
        assert_eq!(get(admin, "/metrics", None).0, 401);
        assert_eq!(get(admin, "/metrics", Some("wrong")).0, 401);
        let (code, body) = get(admin, "/metrics", Some("s3cret"));
        assert_eq!(code, 200);
        assert!(body.contains("# TYPE wspoold_connections gauge"), "{body}");
    });
}

/// A bound notify socket and what arrives on it.
struct NotifySocket {
    socket: UnixDatagram,
    path: std::path::PathBuf,
    _dir: TempDir,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = TempDir::new();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        NotifySocket {
            socket,
            path,
            _dir: dir,
        }
    }

    /// The next datagram within `within`, if any.
    fn next(&self, within: Duration) -> Option<String> {
        self.socket
            .set_read_timeout(Some(within.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = self.socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Read until a datagram starting with `prefix`; everything read on the way.
    fn until(&self, prefix: &str, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {prefix:?} within {within:?}; saw {seen:?}"
            );
            if let Some(message) = self.next(left) {
                let done = message.starts_with(prefix);
                seen.push(message);
                if done {
                    return seen;
                }
            }
        }
    }
}

#[test]
fn systemd_hears_ready_watchdog_only_while_the_monitor_turns_reloading_and_stopping() {
    watchdog(60, || {
        let up = Upstream::start().unwrap();
        let notify = NotifySocket::new();
        let cfg = config(&[up.url()], "");
        let (tx, _rx) = crossbeam_channel::unbounded();
        let daemon = wspoold::daemon::Daemon::start(
            &cfg,
            wspoold::daemon::Options {
                stderr: wspoold::alert::Stderr::Never,
                observer: Some(tx),
                notifier: Some(
                    Notifier::new(notify.path.clone(), Some(Duration::from_millis(400))).unwrap(),
                ),
            },
        )
        .unwrap();
        let seen = notify.until("READY=1", SOON);
        assert!(!seen.iter().any(|m| m.starts_with("STOPPING")), "{seen:?}");
        // Pinged every half of the 400 ms interval while all is well.
        notify.until("WATCHDOG=1", SOON);
        notify.until("WATCHDOG=1", SOON);
        let status = notify.until("STATUS=", SOON);
        assert!(status.last().unwrap().contains("p "), "{status:?}");

        // The monitor wedges for 1.5 s: the pings stop. One sent just before it took
        // the command may still arrive; none after that.
        daemon
            .control()
            .send(Control::Stall(Duration::from_millis(1500)))
            .unwrap();
        let stalled = Instant::now();
        let mut during = Vec::new();
        while stalled.elapsed() < Duration::from_millis(1300) {
            let left = Duration::from_millis(1300).saturating_sub(stalled.elapsed());
            if let Some(message) = notify.next(left) {
                during.push((stalled.elapsed(), message));
            }
        }
        let late: Vec<_> = during
            .iter()
            .filter(|(at, m)| *at > Duration::from_millis(300) && m == "WATCHDOG=1")
            .collect();
        assert!(late.is_empty(), "watchdog pinged while stalled: {during:?}");
        // And they come back once it turns again.
        notify.until("WATCHDOG=1", SOON);

        // A reload is bracketed by RELOADING=1 and READY=1.
        let mut changed = cfg.clone();
        changed.pools[0].min = 3;
        daemon
            .control()
            .send(Control::Apply(Box::new(changed)))
            .unwrap();
        let seen = notify.until("RELOADING=1", SOON);
        assert!(seen.last().unwrap().contains("MONOTONIC_USEC="), "{seen:?}");
        notify.until("READY=1", SOON);

        daemon.shutdown();
        notify.until("STOPPING=1", SOON);
    });
}

/// The built binary, its stderr lines on a channel.
struct Binary {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Binary {
    fn start(config: &str, notify: &NotifySocket) -> Binary {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wspoold"))
            .args(["run", "--config", config])
            .env("NOTIFY_SOCKET", &notify.path)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Binary {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first stderr line from now on that contains `text`.
    fn line(&mut self, text: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with {text:?} within {within:?}:\n{:#?}", self.seen),
            }
        }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: sends a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sighup_applies_a_valid_config_keeps_an_invalid_one_out_and_sessions_stay_open() {
    watchdog(90, || {
        let up = Upstream::start().unwrap();
        let dir = TempDir::new();
        let notify = NotifySocket::new();
        let listen = unused_port();
        let admin = unused_port();
        let head = format!(
            "[daemon]\nlisten = \"127.0.0.1:{listen}\"\nadmin = \"127.0.0.1:{admin}\"\nstate_dir = \"{}\"\ndrain_timeout = \"300ms\"\n[alerts]\nsyslog = false\n",
            dir.path().display()
        );
        let pool = |name: &str, min: usize| {
            format!(
                "[pools.{name}]\nendpoints = [\"{}\"]\nmin = {min}\nheartbeat_interval = \"200ms\"\nheartbeat_timeout = \"200ms\"\n",
                up.url()
            )
        };
        let path = dir.path().join("wspoold.toml");
        std::fs::write(&path, format!("{head}{}", pool("p", 2))).unwrap();
        let mut daemon = Binary::start(path.to_str().unwrap(), &notify);
        notify.until("READY=1", SOON);
        daemon.line("pool warm", SOON);
        let bridge: SocketAddr = format!("127.0.0.1:{listen}").parse().unwrap();
        let mut session = dial(bridge, "/p", None).unwrap();
        session.send(Message::text("one")).unwrap();
        assert_eq!(next_data(&mut session), Message::text("one"));
        let handshakes = up.handshakes();

        // An invalid file: named, refused, the old configuration runs on.
        std::fs::write(&path, format!("{head}{}\nmin = \"many\"\n", pool("p", 2))).unwrap();
        daemon.signal(libc::SIGHUP);
        notify.until("RELOADING=1", SOON);
        notify.until("READY=1", SOON);
        let line = daemon.line("reload failed", SOON);
        assert!(line.contains(path.to_str().unwrap()), "{line}");
        assert!(line.contains("still running"), "{line}");
        session.send(Message::text("two")).unwrap();
        assert_eq!(next_data(&mut session), Message::text("two"));

        // A valid one: pool q added, p's min raised; p's session is not touched.
        std::fs::write(&path, format!("{head}{}{}", pool("p", 3), pool("q", 1))).unwrap();
        daemon.signal(libc::SIGHUP);
        notify.until("READY=1", SOON);
        let line = daemon.line("reloaded", SOON);
        assert!(line.contains("1 pool(s) added (q)"), "{line}");
        assert!(line.contains("p (applied in place)"), "{line}");
        let mut on_q = dial(bridge, "/q", None).unwrap();
        on_q.send(Message::text("to q")).unwrap();
        assert_eq!(next_data(&mut on_q), Message::text("to q"));
        session.send(Message::text("three")).unwrap();
        assert_eq!(next_data(&mut session), Message::text("three"));
        // p grew by one connection (min 3), q opened its own: nothing was replaced.
        wait_until(
            SOON,
            || format!("{} handshakes after {handshakes}", up.handshakes()),
            || up.handshakes() >= handshakes + 2,
        );

        // q removed: new clients get 404, its session 1001 after drain_timeout; p
        // untouched. A restart-only key is named, not applied.
        let moved = head.replace(&format!(":{admin}\""), ":1\"");
        std::fs::write(&path, format!("{moved}{}", pool("p", 3))).unwrap();
        daemon.signal(libc::SIGHUP);
        let line = daemon.line("reloaded", SOON);
        assert!(line.contains("1 removed (q)"), "{line}");
        let line = daemon.line("cannot change without a restart", SOON);
        assert!(line.contains("[daemon] admin"), "{line}");
        assert_eq!(close_code(&mut on_q), 1001);
        assert!(dial(bridge, "/q", None).is_err(), "/q is gone");
        session.send(Message::text("four")).unwrap();
        assert_eq!(next_data(&mut session), Message::text("four"));

        daemon.signal(libc::SIGTERM);
        notify.until("STOPPING=1", SOON);
        assert_eq!(close_code(&mut session), 1001);
        let mut exited = None;
        wait_until(
            SOON,
            || "the daemon to exit".into(),
            || {
                exited = daemon.child.try_wait().unwrap();
                exited.is_some()
            },
        );
        assert!(exited.unwrap().success());
        // The summary counts the session this shutdown closed.
        let line = daemon.line("pool=p: sessions:", SOON);
        assert!(line.contains("ended by close code: 1001×1"), "{line}");
    });
}

#[test]
fn wspoold_status_shows_a_failing_endpoint_at_a_glance() {
    watchdog(60, || {
        let up = Upstream::start().unwrap();
        let refused = format!("ws://127.0.0.1:{}/", unused_port());
        let mut daemon = start(&config(
            &[up.url(), refused.clone()],
            "min = 4\ndown_after = 2",
        ));
        let admin = daemon.daemon.as_ref().unwrap().admin_addr().to_string();
        daemon.wait_healthy(4, SOON);
        let mut ws = dial(daemon.daemon.as_ref().unwrap().listen_addr(), "/p", None).unwrap();
        ws.send(Message::text("hello")).unwrap();
        assert_eq!(next_data(&mut ws), Message::text("hello"));
        let status = || {
            Command::new(env!("CARGO_BIN_EXE_wspoold"))
                .args(["status", "--admin", &admin])
                .output()
                .unwrap()
        };
        let shown = RefCell::new(String::new());
        let good_url = up.url();
        wait_until(
            SOON,
            || {
                format!(
                    "the refused endpoint down, a round trip measured:\n{}",
                    shown.borrow()
                )
            },
            || {
                let out = status();
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                // The snapshot is up to a second old: it may still show the warm-up.
                let healthy = out.status.code() == Some(0);
                let row = |url: &str| {
                    text.lines()
                        .find(|l| l.trim_start().starts_with(url))
                        .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
                        .unwrap_or_default()
                };
                // Out of rotation: down, or down with a probe dialling.
                let down = row(&refused)
                    .get(1)
                    .is_some_and(|s| s == "down" || s == "probing");
                let p50 = row(&good_url).get(6).is_some_and(|s| s != "-");
                *shown.borrow_mut() = text;
                healthy && down && p50
            },
        );
        let shown = shown.into_inner();
        println!("{shown}");
        assert!(shown.contains("health: ok"), "{shown}");
        assert!(shown.contains("pool p (/p)"), "{shown}");
        assert!(shown.contains("1 session(s)"), "{shown}");
        let good = shown.lines().find(|l| l.contains(&up.url())).unwrap();
        assert!(good.contains(" up "), "{good}");
        // How long the refused one has been out of rotation, in whole seconds.
        let bad = shown.lines().find(|l| l.contains(&refused)).unwrap();
        let out_for = bad.split_whitespace().nth(2).unwrap_or_default();
        assert!(
            out_for
                .strip_suffix('s')
                .is_some_and(|n| n.parse::<u64>().is_ok()),
            "{bad}"
        );
        assert!(shown.contains("incidents:"), "{shown}");

        // Nothing left: the same command says so and exits 3.
        drop(ws);
        up.kill();
        wait_until(
            Duration::from_secs(10),
            || "wspoold status to exit 3".into(),
            || status().status.code() == Some(3),
        );
        let out = status();
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(
            shown.contains("health: pool p: no healthy connection"),
            "{shown}"
        );
        // And with no daemon to ask: exit 1, saying where it asked.
        let gone = format!("127.0.0.1:{}", unused_port());
        let out = Command::new(env!("CARGO_BIN_EXE_wspoold"))
            .args(["status", "--admin", &gone])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains(&gone));
    });
}

#[test]
fn a_reload_that_changes_headers_replaces_idle_connections_and_leaves_the_session_alone() {
    watchdog(60, || {
        let up = Upstream::start().unwrap();
        let cfg = config(&[up.url()], "headers = { X-Generation = \"1\" }");
        let mut daemon = start(&cfg);
        daemon.wait_healthy(2, SOON);
        let mut session = dial(daemon.daemon.as_ref().unwrap().listen_addr(), "/p", None).unwrap();
        session.send(Message::text("before")).unwrap();
        assert_eq!(next_data(&mut session), Message::text("before"));
        let handshakes = up.handshakes();

        let mut changed = cfg.clone();
        changed.pools[0].headers = vec![("X-Generation".into(), "2".into())];
        daemon
            .daemon
            .as_ref()
            .unwrap()
            .control()
            .send(Control::Apply(Box::new(changed)))
            .unwrap();
        let notice = daemon.wait_notice(SOON, "reloaded");
        assert!(
            notice.text.contains("p (connections replaced for headers)"),
            "{}",
            notice.text
        );
        // Fresh connections carry the new header; the session's own is untouched.
        wait_until(
            SOON,
            || format!("new handshakes, have {}", up.handshakes() - handshakes),
            || up.handshakes() >= handshakes + 2,
        );
        let generation = up
            .last_request_headers()
            .into_iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("x-generation"))
            .map(|(_, v)| v);
        assert_eq!(generation.as_deref(), Some("2"));
        session.send(Message::text("after")).unwrap();
        assert_eq!(next_data(&mut session), Message::text("after"));
        daemon.wait_healthy(2, SOON);
        // The session kept its connection: it was never moved.
        let moved = daemon.log.iter().any(|o| {
            matches!(o, wspoold::event::Observation::Notice(n) if n.text.contains("healed onto"))
        });
        assert!(!moved, "{:#?}", daemon.log);
    });
}
