//! How a session survives its upstream connection dying: a client sends a numbered
//! message every millisecond through wspoold (a warm spare, at-least-once) or through
//! websocat's `autoreconnect:` overlay, the upstream connection carrying it is killed,
//! reset or silenced, and the run measures the time to detect it, the time until a
//! message sent after the fault comes back, and — from the upstream's own record —
//! how many messages never arrived and how many arrived twice.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use tungstenite::Message;
use wspoold::event::Observation;

use crate::client::{Ws, dial, next_data, timed_out};
use crate::echo::{Echo, Fault};
use crate::peers::{self, Missing, Path};

/// How often the client sends.
const EVERY: Duration = Duration::from_millis(1);
/// How long a run waits for the session to carry traffic again.
const RECOVER_WITHIN: Duration = Duration::from_secs(15);

/// wspoold's pool: a warm spare, heartbeats every second, dead after one more second
/// of silence — as close as websocat's whole-second ping settings allow.
const POOL: &str = "min = 1\nspare = 1\nheartbeat_interval = \"1s\"\nheartbeat_timeout = \"1s\"\nbackoff_base = \"20ms\"\ndown_after = 1000\n";
/// websocat: a ping every second, the connection dropped after two without a pong.
pub const WEBSOCAT_PING: [&str; 4] = ["--ping-interval", "1", "--ping-timeout", "2"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    Wspoold,
    Websocat,
}

impl System {
    pub fn label(self) -> &'static str {
        match self {
            System::Wspoold => "wspoold (spare = 1, at-least-once)",
            System::Websocat => "websocat autoreconnect:",
        }
    }
}

/// One fault and what followed.
#[derive(Default)]
pub struct Rep {
    /// wspoold: until it declared the connection dead; websocat: until its new
    /// upstream connection's handshake (it must have noticed by then).
    pub detect: Option<Duration>,
    /// Until the first echo of a message sent after the fault; None if none came.
    pub recover: Option<Duration>,
    /// Messages sent in the run that the upstream never received.
    pub lost: u64,
    /// Extra copies the upstream received.
    pub duplicated: u64,
    /// Messages sent in the run.
    pub sent: u64,
    /// The client's own connection was closed (the session did not survive).
    pub client_closed: bool,
}

pub struct HealRow {
    pub system: System,
    pub fault: Fault,
    pub reps: Vec<Rep>,
}

/// `reps` faults of one kind against one system.
pub fn run(system: System, fault: Fault, reps: usize) -> Result<HealRow, Missing> {
    let echo = Echo::start(0, Some(Duration::from_millis(5)), true);
    let (tx, rx) = crossbeam_channel::unbounded();
    let path = match system {
        System::Wspoold => peers::wspoold(&echo.url(), POOL, Some(tx)),
        System::Websocat => peers::websocat(&echo.url(), &WEBSOCAT_PING, "autoreconnect:")?,
    };
    let mut client = Client::new(&path);
    let mut row = HealRow {
        system,
        fault,
        reps: Vec::new(),
    };
    for _ in 0..reps {
        let rep = one(&echo, &path, &mut client, fault, &rx);
        row.reps.push(rep);
    }
    Ok(row)
}

fn one(
    echo: &Echo,
    path: &Path,
    client: &mut Client,
    fault: Fault,
    rx: &Receiver<Observation>,
) -> Rep {
    let mut rep = Rep::default();
    let first = client.seq;
    // Traffic flowing, and the pool whole (the session's connection and its spare).
    let steady = Instant::now() + Duration::from_millis(200);
    let whole = |c: &Client| Instant::now() >= steady && c.echoed_since(first);
    if !client.pump(path, Duration::from_secs(10), whole) {
        rep.client_closed = true;
    }
    if path.name == "wspoold" {
        wait_whole(echo, 2);
    }
    while rx.try_recv().is_ok() {}
    let at = echo.fault(echo.last(), fault);
    let after = client.seq;
    let recovered = |c: &Client| c.first_echo_from(after).is_some();
    let ok = client.pump(path, RECOVER_WITHIN, recovered);
    rep.client_closed |= !ok;
    rep.recover = client
        .first_echo_from(after)
        .map(|echoed| echoed.saturating_duration_since(at));
    rep.detect = match path.name {
        "wspoold" => rx.try_iter().find_map(|o| match o {
            Observation::Died { at: died, .. } if died >= at => Some(died - at),
            _ => None,
        }),
        _ => echo
            .handshakes_since(at)
            .first()
            .map(|h| h.saturating_duration_since(at)),
    };
    // A last message through, so that everything sent before it has had its chance.
    let last = client.seq;
    client.pump(path, Duration::from_secs(5), |c| {
        c.first_echo_from(last).is_some()
    });
    // Up to the last message echoed: those after it may still be on their way.
    let end = client
        .echoes
        .keys()
        .max()
        .map_or(first, |s| s + 1)
        .max(first);
    let (lost, duplicated) = count(echo, first, end);
    rep.lost = lost;
    rep.duplicated = duplicated;
    rep.sent = end - first;
    rep
}

/// Waits until the echo server holds `n` connections that carry or answer traffic.
fn wait_whole(echo: &Echo, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while echo.open() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Of the messages numbered `first..end`, how many the upstream never received and how
/// many extra copies it received.
fn count(echo: &Echo, first: u64, end: u64) -> (u64, u64) {
    let mut seen: HashMap<u64, u64> = HashMap::new();
    for arrival in echo.arrivals().iter() {
        if let Some(seq) = std::str::from_utf8(&arrival.data)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            && (first..end).contains(&seq)
        {
            *seen.entry(seq).or_default() += 1;
        }
    }
    let lost = (first..end).filter(|s| !seen.contains_key(s)).count() as u64;
    let duplicated = seen.values().map(|n| n - 1).sum();
    (lost, duplicated)
}

/// A client sending a numbered message every millisecond and noting when each echo
/// came back.
struct Client {
    ws: Option<Ws>,
    seq: u64,
    next_send: Instant,
    /// When the echo of each number came back (the first time).
    echoes: HashMap<u64, Instant>,
}

impl Client {
    fn new(path: &Path) -> Client {
        Client {
            ws: Some(open(path)),
            seq: 0,
            next_send: Instant::now(),
            echoes: HashMap::new(),
        }
    }

    fn echoed_since(&self, seq: u64) -> bool {
        self.echoes.keys().any(|s| *s >= seq)
    }

    /// The earliest echo of a message numbered `seq` or later.
    fn first_echo_from(&self, seq: u64) -> Option<Instant> {
        self.echoes
            .iter()
            .filter(|(s, _)| **s >= seq)
            .map(|(_, at)| *at)
            .min()
    }

    /// Send and read until `done` or `within`; false if the client's connection was
    /// closed meanwhile (it is opened again). Between sends it waits in `ppoll` for an
    /// echo or the next send, to the microsecond: a socket read timeout would round up
    /// to the kernel's tick (4 ms here) and hold back the first message after a fault.
    fn pump(&mut self, path: &Path, within: Duration, done: impl Fn(&Client) -> bool) -> bool {
        let deadline = Instant::now() + within;
        let mut survived = true;
        while !done(self) && Instant::now() < deadline {
            let Some(ws) = &mut self.ws else {
                self.ws = Some(open(path));
                continue;
            };
            let now = Instant::now();
            let mut broken = false;
            if now >= self.next_send {
                match ws.send(Message::text(self.seq.to_string())) {
                    // Queued in the socket, or in tungstenite until the next flush.
                    Ok(()) => {}
                    Err(tungstenite::Error::Io(e)) if timed_out(&e) => {}
                    Err(_) => broken = true,
                }
                self.seq += 1;
                self.next_send = now + EVERY;
            } else if let Err(tungstenite::Error::Io(e)) = ws.flush()
                && !timed_out(&e)
            {
                broken = true;
            }
            while !broken {
                match next_data(ws) {
                    Ok(message) => {
                        if let Some(seq) = message.to_text().ok().and_then(|t| t.parse().ok()) {
                            self.echoes.entry(seq).or_insert_with(Instant::now);
                        }
                    }
                    Err(e) if timed_out(&e) => break,
                    Err(_) => broken = true,
                }
            }
            if broken {
                survived = false;
                self.ws = None;
                continue;
            }
            let until = self.next_send.min(deadline);
            wait_readable(ws, until.saturating_duration_since(Instant::now()));
        }
        survived
    }
}

/// Waits until `ws` has bytes to read or `timeout` passes.
fn wait_readable(ws: &Ws, timeout: Duration) {
    let mut fd = libc::pollfd {
        fd: ws.get_ref().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one live pollfd, a live timespec, no signal mask.
    unsafe { libc::ppoll(&mut fd, 1, &timeout, std::ptr::null()) };
}

/// A non-blocking client: `pump` waits in `ppoll` itself.
fn open(path: &Path) -> Ws {
    let ws =
        dial(&path.url, Duration::from_secs(1)).unwrap_or_else(|e| panic!("{}: {e}", path.name));
    ws.get_ref()
        .set_nonblocking(true)
        .expect("a non-blocking client socket");
    ws
}
