//! The chaos soak: three upstreams, each behind a fault relay, four client sessions
//! under steady traffic, and for a time budget one random fault after another (a
//! kill, a reset, a blackhole, a stall, rejected handshakes, now and then every
//! endpoint at once). After every fault the promises are checked: the pool is whole
//! again, no session ended, and the upstreams' own record holds every message each
//! client sent before its last confirmed one (at-least-once: no gap). At the end every
//! incident that fired has resolved, and the daemon holds no more threads, descriptors
//! or memory than after warm-up.
//!
//! Ignored by default: `WSPOOLD_SOAK_SECONDS=90 cargo test --test daemon soak --
//! --ignored --nocapture`. It prints its seed first; `WSPOOLD_SOAK_SEED` replays the
//! faults of a run (their timing against the traffic varies).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tungstenite::{Message, WebSocket};
use wspoold::event::{ConnId, Observation};
use wspoold::faults::{Cut, Fault, Mode, Relay, Upstream};
use wspoold::incident::Status;
use wspoold::journal;

use crate::bridge::dial;
use crate::util::{Running, config_with, start, wait_until, watchdog};

const CLIENTS: usize = 4;
const MIN: usize = 6;
/// Between two numbered messages of one client: about 330 a second from all four.
const PACE: Duration = Duration::from_millis(12);
/// How soon after a fault is cleared the pool must be back to `MIN` healthy.
const WHOLE: Duration = Duration::from_secs(5);
/// How long a blackhole may wait for the daemon to give up on what it caught, and
/// every client's marker may take to come back once the pool is whole.
const SOON: Duration = Duration::from_secs(10);
/// How long the incidents may take to resolve at the end: flap penalties decaying
/// (a few `flap_half_life`s), then `resolve_after`.
const RESOLVE: Duration = Duration::from_secs(30);
/// Above the baseline at the end: a replacement connecting, a room closing.
const THREAD_SLACK: usize = 4;
/// About six descriptors per pooled connection (the daemon's socket, the
/// relay's two sockets and their clones, the upstream's), and a few connections in
/// flux.
const FD_SLACK: usize = 48;
/// The daemon's thread names (`.name(` in src/); a trailing `-` marks a prefix.
const DAEMON_THREADS: &str =
    "signals listener handshake log alerter webhook- monitor worker- room- admin";

#[test]
#[ignore = "chaos soak: run with --ignored; WSPOOLD_SOAK_SECONDS sets its budget"]
fn chaos_soak_keeps_every_promise() {
    let seed = match std::env::var("WSPOOLD_SOAK_SEED") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("WSPOOLD_SOAK_SEED={v:?} is not a u64")),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    };
    eprintln!("soak: seed {seed} (WSPOOLD_SOAK_SEED={seed} replays it)");
    let budget: u64 = match std::env::var("WSPOOLD_SOAK_SECONDS") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("WSPOOLD_SOAK_SECONDS={v:?} is not a number of seconds")),
        Err(_) => 60,
    };
    watchdog(budget + 90, move || soak(Duration::from_secs(budget), seed));
}

fn soak(budget: Duration, seed: u64) {
    let mut rng = Rng(seed.max(1));
    let mut rig = Rig::start();
    let clients = Clients::start(rig.d.daemon.as_ref().expect("running").listen_addr());
    let mut ledger = Ledger::default();
    let mut rounds: BTreeMap<&str, u32> = BTreeMap::new();
    let mut baseline = None;
    let started = Instant::now();
    let mut round = 0;
    while started.elapsed() < budget {
        round += 1;
        let mark = rig.d.log.len();
        let chaos = Chaos::pick(&mut rng);
        let when = format!("round {round} ({})", rig.inject(chaos, &mut rng));
        let whole = rig.wait_whole(&when);
        let confirmed = clients.confirm(round, &when);
        rig.check_delivery(&mut ledger, &confirmed, &when, mark);
        let now = Resources::now();
        eprintln!("soak: {when}: whole after {whole:.1?}, confirmed {confirmed:?}, {now:?}");
        *rounds.entry(chaos.label()).or_default() += 1;
        baseline.get_or_insert(now);
    }
    let baseline = baseline.expect("at least one round ran");
    let mark = rig.d.log.len();
    rig.wait_whole("the end");
    let confirmed = clients.confirm(round + 1, "the end");
    rig.check_delivery(&mut ledger, &confirmed, "the end", mark);
    let (fired, resolved) = rig.wait_incidents_resolved();
    rig.wait_whole("the end, incidents resolved");
    let end = Resources::settled(&baseline);

    let sent: u64 = clients.each(|t| t.sent).iter().sum();
    let heals = rig
        .d
        .log
        .iter()
        .filter(|o| matches!(o, Observation::Notice(n) if n.text.contains("healed onto")));
    let grown = end.grown(&baseline);
    eprintln!(
        "soak: seed {seed}, {round} rounds in {:.1?}: {rounds:?}\n\
         soak: {sent} messages sent, {} duplicate(s) at the upstreams, {} heal(s)\n\
         soak: incidents {} opened, {} resolved\n\
         soak: baseline {baseline:?}\nsoak: end      {end:?}",
        started.elapsed(),
        ledger.duplicates(),
        heals.count(),
        fired.len(),
        resolved.len(),
    );
    assert!(grown.is_empty(), "grown across the soak: {grown:?}");
}

/// The faults on the menu.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chaos {
    UpstreamKill,
    RelayReset,
    RelayBlackhole,
    RelayStall,
    HandshakeReject,
    AllDown,
}

impl Chaos {
    /// One round in six takes every endpoint down; the others pick a single fault.
    fn pick(rng: &mut Rng) -> Chaos {
        use Chaos::*;
        const ONE: [Chaos; 5] = [
            UpstreamKill,
            RelayReset,
            RelayBlackhole,
            RelayStall,
            HandshakeReject,
        ];
        if rng.below(6) == 0 {
            AllDown
        } else {
            ONE[rng.below(ONE.len() as u64) as usize]
        }
    }

    fn label(self) -> &'static str {
        match self {
            Chaos::UpstreamKill => "upstream kill",
            Chaos::RelayReset => "relay reset",
            Chaos::RelayBlackhole => "relay blackhole",
            Chaos::RelayStall => "relay stall",
            Chaos::HandshakeReject => "handshake rejection",
            Chaos::AllDown => "all endpoints down",
        }
    }
}

/// The daemon, three upstreams and a relay in front of each; fields drop in order, so
/// the daemon stops before its upstreams go.
struct Rig {
    d: Running,
    relays: Vec<Relay>,
    ups: Vec<Upstream>,
}

impl Rig {
    fn start() -> Rig {
        let ups: Vec<Upstream> = (0..3)
            .map(|i| Upstream::start().unwrap_or_else(|e| panic!("upstream {i} starts: {e}")))
            .collect();
        let relays: Vec<Relay> = ups
            .iter()
            .map(|up| {
                Relay::start(up.addr()).unwrap_or_else(|e| panic!("relay to {}: {e}", up.addr()))
            })
            .collect();
        let urls: Vec<String> = relays.iter().map(|r| r.url("/")).collect();
        // A heal_timeout well past the longest outage (every endpoint down for 2 s), so
        // sessions heal rather than close; a short flap_half_life keeps damping in play
        // while letting a damped endpoint (and its incident) recover within the tail.
        let pool = format!(
            "min = {MIN}\nspare = 2\ndelivery = \"at-least-once\"\nheal_timeout = \"20s\"\ndown_after = 2\nflap_half_life = \"2s\""
        );
        let alerts = "syslog = false\ngrace = \"300ms\"\nresolve_after = \"300ms\"";
        let mut d = start(&config_with(&urls, &pool, alerts));
        d.wait_healthy(MIN, SOON);
        Rig { d, relays, ups }
    }

    /// Applies one fault, holds it for its duration, clears it; says what it did.
    fn inject(&mut self, chaos: Chaos, rng: &mut Rng) -> String {
        let i = rng.below(self.ups.len() as u64) as usize;
        let hold = rng.millis(100, 1500);
        let (up, relay) = (&self.ups[i], &self.relays[i]);
        let restart = |up: &Upstream| {
            up.restart()
                .unwrap_or_else(|e| panic!("upstream {} restarts: {e}", up.addr()))
        };
        match chaos {
            Chaos::UpstreamKill => {
                up.kill();
                keep_for(hold);
                restart(up);
            }
            Chaos::RelayReset => {
                relay.set(Fault::Reset);
                return format!("relay reset on endpoint {i}");
            }
            Chaos::RelayBlackhole => {
                let caught = self.live_on(i).len();
                self.relays[i].set(Fault::Blackhole);
                keep_for(hold);
                let waited = self.wait_dead(i);
                self.relays[i].set(Fault::Pass);
                return format!(
                    "relay blackhole on endpoint {i} for {hold:?}, then {waited:.0?} until its {} connection(s) died",
                    caught
                );
            }
            Chaos::RelayStall => {
                relay.set(Fault::Stall);
                keep_for(hold);
                relay.set(Fault::Pass);
            }
            Chaos::HandshakeReject => {
                up.set_mode(Mode::Reject(503));
                up.cut(Cut::Close(1012));
                keep_for(hold);
                up.set_mode(Mode::Echo);
            }
            Chaos::AllDown => {
                let hold = rng.millis(100, 2000);
                self.ups.iter().for_each(Upstream::kill);
                keep_for(hold);
                self.ups.iter().for_each(restart);
                return format!("{} for {hold:?}", chaos.label());
            }
        }
        format!("{} on endpoint {i} for {hold:?}", chaos.label())
    }

    /// The connections up on endpoint `i` as last observed.
    fn live_on(&mut self, i: usize) -> BTreeSet<ConnId> {
        self.d.take_ready();
        let url = self.relays[i].url("/");
        let mut live = BTreeSet::new();
        for o in &self.d.log {
            match o {
                Observation::Connected { endpoint, id, .. } if *endpoint == url => {
                    live.insert(*id);
                }
                Observation::Died { id, .. } => {
                    live.remove(id);
                }
                _ => {}
            }
        }
        live
    }

    /// A blackhole deletes bytes from the middle of a stream, which no TCP path does:
    /// lifted while a connection through it is still up, the stream carries on
    /// without them and a later pong confirms them as read. So it stays until the
    /// daemon has given up on every connection through it; how long that took.
    fn wait_dead(&mut self, i: usize) -> Duration {
        let started = Instant::now();
        loop {
            let live = self.live_on(i);
            if live.is_empty() {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < SOON,
                "blackhole on endpoint {i}: connections {live:?} still up after {SOON:?}"
            );
            std::thread::park_timeout(Duration::from_millis(5));
        }
    }

    /// Waits until the pool has `MIN` healthy connections; how long that took.
    fn wait_whole(&mut self, when: &str) -> Duration {
        let started = Instant::now();
        loop {
            self.d.take_ready();
            if self.d.healthy() >= MIN {
                return started.elapsed();
            }
            if started.elapsed() > WHOLE {
                let tail = self.d.log.len().saturating_sub(40);
                panic!(
                    "{when}: {} healthy of {MIN} {WHOLE:?} after the fault was cleared; last observations:\n{}",
                    self.d.healthy(),
                    self.events_since(tail)
                );
            }
            std::thread::park_timeout(Duration::from_millis(5));
        }
    }

    /// Folds in what the upstreams received and asserts the guarantee; on a gap, says
    /// where its neighbours arrived and what the daemon did since `mark`.
    fn check_delivery(&mut self, ledger: &mut Ledger, confirmed: &[u64], when: &str, mark: usize) {
        ledger.fold(&self.ups, when);
        let gaps = ledger.gaps(confirmed);
        if !gaps.is_empty() {
            self.d.take_ready();
            let lines: Vec<String> = gaps
                .iter()
                .map(|&g| ledger.describe(g, &self.ups))
                .collect();
            panic!(
                "{when}: at-least-once broken, no upstream received:\n{}\nthe daemon meanwhile:\n{}",
                lines.join("\n"),
                self.events_since(mark)
            );
        }
    }

    /// Deaths, notices and incident transitions observed since `mark`, one a line.
    fn events_since(&self, mark: usize) -> String {
        let lines = self.d.log[mark..].iter().filter_map(|o| match o {
            Observation::Died {
                endpoint,
                id,
                cause,
                ..
            } => Some(format!("  died: {endpoint} #{id} {cause}")),
            Observation::Notice(n) => Some(format!("  {}", n.text)),
            Observation::Incident(r) => {
                Some(format!("  incident {} {}", r.incident, r.status.label()))
            }
            Observation::Health { healthy, .. } => Some(format!("  healthy: {healthy}")),
            Observation::Connected { .. } => None,
        });
        lines.collect::<Vec<_>>().join("\n")
    }

    /// Waits until every incident with a firing record has a resolved one; both sets.
    fn wait_incidents_resolved(&self) -> (BTreeSet<u64>, BTreeSet<u64>) {
        let dir = &self.d.state_dir;
        wait_until(
            RESOLVE,
            || {
                let (fired, resolved) = incidents(dir);
                let open: Vec<&u64> = fired.difference(&resolved).collect();
                format!(
                    "incidents {open:?} to resolve (journal in {})",
                    dir.display()
                )
            },
            || {
                let (fired, resolved) = incidents(dir);
                fired.is_subset(&resolved)
            },
        );
        incidents(dir)
    }
}

/// The incident ids with a firing record and those with a resolved one.
fn incidents(state_dir: &Path) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let path = state_dir.join(journal::FILE);
    let records = match journal::read(&path) {
        Ok((records, skipped)) => {
            assert!(skipped.is_empty(), "{}: {skipped:?}", path.display());
            records
        }
        // No incident yet: the journal is created with the first.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("reading the journal {}: {e}", path.display()),
    };
    let with = |status: Status| -> BTreeSet<u64> {
        let matching = records.iter().filter(|r| r.status == status);
        matching.map(|r| r.incident).collect()
    };
    (with(Status::Firing), with(Status::Resolved))
}

/// What one client thread shares with the soak.
#[derive(Default)]
struct Tally {
    /// Numbered messages sent: the next number.
    sent: u64,
    /// The marker asked for, and the last one whose echo came back.
    marker_asked: u64,
    marker_back: u64,
    /// Numbered messages sent before the marker that came back: each of them must
    /// have reached an upstream.
    confirmed: u64,
    /// How the session ended under the client, if it did.
    ended: Option<String>,
}

/// Four client sessions, each on its own thread; stopped and joined when dropped.
struct Clients {
    stop: Arc<AtomicBool>,
    tallies: Vec<Arc<Mutex<Tally>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Clients {
    fn start(addr: SocketAddr) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let tallies: Vec<Arc<Mutex<Tally>>> = (0..CLIENTS).map(|_| Arc::default()).collect();
        let mut threads = Vec::new();
        for (id, tally) in tallies.iter().enumerate() {
            let ws = dial(addr, "/p", None).unwrap_or_else(|e| panic!("client {id} refused: {e}"));
            let (tally, stop) = (tally.clone(), stop.clone());
            let thread = std::thread::Builder::new()
                .name(format!("soak-client-{id}"))
                .spawn(move || {
                    if let Err(why) = converse(id, ws, &tally, &stop) {
                        tally.lock().ended = Some(why);
                    }
                })
                .expect("spawn a client thread");
            threads.push(thread);
        }
        Clients {
            stop,
            tallies,
            threads,
        }
    }

    /// `look` at every client's tally.
    fn each<T>(&self, look: impl Fn(&Tally) -> T) -> Vec<T> {
        self.tallies.iter().map(|t| look(&t.lock())).collect()
    }

    /// Has every client send marker `round` and waits for all the echoes; what each
    /// client had sent before it.
    fn confirm(&self, round: u64, when: &str) -> Vec<u64> {
        for tally in &self.tallies {
            tally.lock().marker_asked = round;
        }
        let ended = || -> Vec<String> {
            let ended = self.each(|t| t.ended.clone()).into_iter().enumerate();
            ended
                .filter_map(|(id, why)| Some(format!("client {id}: {}", why?)))
                .collect()
        };
        wait_until(
            SOON,
            || {
                format!(
                    "{when}: marker {round} back from every client (have {:?}, ended {:?})",
                    self.each(|t| t.marker_back),
                    ended()
                )
            },
            || {
                self.each(|t| t.marker_back == round || t.ended.is_some())
                    .iter()
                    .all(|&done| done)
            },
        );
        let ended = ended();
        assert!(
            ended.is_empty(),
            "{when}: a session was not healed: {ended:?}"
        );
        self.each(|t| t.confirmed)
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// One client's life: a numbered message every `PACE`, a marker when asked, and the
/// echoes read; an error says how the session ended under it.
fn converse(
    id: usize,
    mut ws: WebSocket<TcpStream>,
    tally: &Mutex<Tally>,
    stop: &AtomicBool,
) -> Result<(), String> {
    let stream = ws.get_mut();
    stream
        .set_read_timeout(Some(Duration::from_millis(1)))
        .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(5))))
        .map_err(|e| format!("socket options: {e}"))?;
    let (mut seq, mut marker, mut before_marker) = (0, 0, 0);
    let mut next_send = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let asked = tally.lock().marker_asked;
        if asked > marker {
            ws.send(Message::text(format!("m{id}-{asked}")))
                .map_err(|e| format!("sending marker {asked}: {e}"))?;
            (marker, before_marker) = (asked, seq);
        }
        let now = Instant::now();
        if now >= next_send {
            ws.send(Message::text(format!("c{id}-{seq}")))
                .map_err(|e| format!("sending {seq}: {e}"))?;
            seq += 1;
            tally.lock().sent = seq;
            next_send = (next_send + PACE).max(now);
        }
        match ws.read() {
            Ok(Message::Text(text)) if text.as_str() == format!("m{id}-{marker}") => {
                let mut tally = tally.lock();
                (tally.marker_back, tally.confirmed) = (marker, before_marker);
            }
            // Its numbers and earlier markers may come back more than once (resent).
            Ok(Message::Text(text))
                if !text.starts_with(&format!("m{id}-"))
                    && parse(&text).is_none_or(|(c, _)| c != id) =>
            {
                return Err(format!(
                    "an echo of what it never sent: {:?}",
                    text.as_str()
                ));
            }
            Ok(Message::Close(frame)) => return Err(format!("closed after {seq} sent: {frame:?}")),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(format!("read failed after {seq} sent: {e}")),
        }
    }
    let _ = ws.close(None);
    let _ = ws.flush();
    Ok(())
}

/// What the upstreams received, folded per client: how often each number arrived.
#[derive(Default)]
struct Ledger {
    /// How many of each upstream's records are folded in.
    read: [usize; 3],
    counts: [Vec<u32>; CLIENTS],
}

impl Ledger {
    fn fold(&mut self, ups: &[Upstream], when: &str) {
        for (u, up) in ups.iter().enumerate() {
            let got = up.received();
            for r in &got[self.read[u]..] {
                let text = String::from_utf8_lossy(&r.data);
                if text.starts_with('m') {
                    continue;
                }
                let Some((client, n)) = parse(&text) else {
                    panic!("{when}: upstream {u} received {text:?}, which no client sent");
                };
                let counts = &mut self.counts[client];
                if counts.len() <= n {
                    counts.resize(n + 1, 0);
                }
                counts[n] += 1;
            }
            self.read[u] = got.len();
        }
    }

    /// The runs below each client's confirmed count that never arrived, as (client,
    /// first, last).
    fn gaps(&self, confirmed: &[u64]) -> Vec<(usize, usize, usize)> {
        let mut gaps = Vec::new();
        for (client, &upto) in confirmed.iter().enumerate() {
            let missing = |n: usize| self.counts[client].get(n).is_none_or(|&c| c == 0);
            let mut n = 0;
            while n < upto as usize {
                if missing(n) {
                    let first = n;
                    while n + 1 < upto as usize && missing(n + 1) {
                        n += 1;
                    }
                    gaps.push((client, first, n));
                }
                n += 1;
            }
        }
        gaps
    }

    /// A gap, and which upstream connections received the numbers around it.
    fn describe(&self, (client, first, last): (usize, usize, usize), ups: &[Upstream]) -> String {
        let on = |n: usize| -> Vec<String> {
            let mut on = Vec::new();
            for (u, up) in ups.iter().enumerate() {
                let got = up.received();
                let here = got
                    .iter()
                    .filter(|r| parse(&String::from_utf8_lossy(&r.data)) == Some((client, n)));
                on.extend(here.map(|r| format!("upstream {u} connection {}", r.conn)));
            }
            on
        };
        let before = first.checked_sub(1).map(on);
        format!(
            "  client {client}: {first}..={last} (before it: {before:?}; after it: {:?})",
            on(last + 1)
        )
    }

    /// Arrivals beyond the first of each message.
    fn duplicates(&self) -> u64 {
        let extra = self
            .counts
            .iter()
            .flatten()
            .map(|&c| u64::from(c.saturating_sub(1)));
        extra.sum()
    }
}

/// "c{client}-{n}" as (client, n).
fn parse(text: &str) -> Option<(usize, usize)> {
    let (client, n) = text.strip_prefix('c')?.split_once('-')?;
    let client = client.parse().ok().filter(|&c| c < CLIENTS)?;
    Some((client, n.parse().ok()?))
}

/// What the process holds: the daemon's threads, open descriptors, resident memory.
#[derive(Clone, Copy, Debug)]
struct Resources {
    threads: usize,
    fds: usize,
    rss_kib: u64,
}

impl Resources {
    fn now() -> Resources {
        let daemon = |comm: &str| {
            let comm = comm.trim_end();
            DAEMON_THREADS.split(' ').any(|name| {
                if name.ends_with('-') {
                    comm.starts_with(name)
                } else {
                    comm == name
                }
            })
        };
        let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task");
        // A thread may end between the listing and the read: it is not counted.
        let threads = tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|comm| daemon(comm))
            .count();
        let fds = std::fs::read_dir("/proc/self/fd")
            .expect("/proc/self/fd")
            .count();
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/self/status:\n{status}"));
        Resources {
            threads,
            fds,
            rss_kib,
        }
    }

    /// What grew past its allowance since `baseline`.
    fn grown(&self, baseline: &Resources) -> Vec<String> {
        let mut grown = Vec::new();
        if self.threads > baseline.threads + THREAD_SLACK {
            grown.push(format!(
                "daemon threads {} → {} (slack {THREAD_SLACK})",
                baseline.threads, self.threads
            ));
        }
        if self.fds > baseline.fds + FD_SLACK {
            grown.push(format!(
                "descriptors {} → {} (slack {FD_SLACK})",
                baseline.fds, self.fds
            ));
        }
        if self.rss_kib > baseline.rss_kib * 3 / 2 + 16 * 1024 {
            grown.push(format!(
                "RSS {} → {} KiB (allowed 1.5× + 16 MiB)",
                baseline.rss_kib, self.rss_kib
            ));
        }
        grown
    }

    /// The figures once nothing has grown past its allowance since `baseline`, or as
    /// they are after a few seconds (threads and descriptors of dead connections take
    /// a moment to go).
    fn settled(baseline: &Resources) -> Resources {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = Resources::now();
            if now.grown(baseline).is_empty() || Instant::now() >= deadline {
                return now;
            }
            std::thread::park_timeout(Duration::from_millis(50));
        }
    }
}

/// xorshift64*: small, seeded, replayable (the seed must not be zero).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }

    /// A duration from `lo` to `hi` milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// Lets a fault stand for `hold`: the length of the outage is what the round tests,
/// not a wait for something to happen (those poll with a deadline).
fn keep_for(hold: Duration) {
    let until = Instant::now() + hold;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        std::thread::park_timeout(left);
    }
}
