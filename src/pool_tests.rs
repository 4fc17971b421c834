//! Pool decisions driven with a fake clock: no sockets, no threads.

use super::*;
use crate::config::Config;
use crate::event::SessionId;
use crate::incident::{Active, Kind};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A pool under test, the clock it sees, and every action it asked for.
struct Rig {
    pool: Pool,
    now: Instant,
    actions: Vec<Action>,
}

fn rig(extra: &str) -> Rig {
    let min = if extra.contains("min =") {
        ""
    } else {
        "min = 4"
    };
    let text = format!(
        r#"
[alerts]
syslog = false
grace = "1s"

[pools.p]
endpoints = ["ws://a.test/", "ws://b.test/"]
backup = ["ws://z.test/"]
{min}
connect_timeout = "1s"
backoff_base = "100ms"
backoff_max = "1s"
{extra}
"#
    );
    let config = Config::parse(&text, "test").expect("test config parses");
    let now = Instant::now();
    let mut pool = Pool::new(&config.pools[0], config.alerts.grace, 0, now, Rng::new(9));
    let actions = pool.start(now);
    Rig { pool, now, actions }
}

impl Rig {
    fn advance(&mut self, d: Duration) {
        self.now += d;
        let actions = self.pool.tick(self.now);
        self.actions.extend(actions);
    }

    fn event(&mut self, event: Event) {
        let actions = self.pool.on_event(&event, self.now);
        self.actions.extend(actions);
    }

    fn take(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// Spawned connections since the last take, as (id, endpoint index).
    fn spawns(actions: &[Action]) -> Vec<(ConnId, usize)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Spawn { id, endpoint } => Some((*id, *endpoint)),
                _ => None,
            })
            .collect()
    }

    fn notices(actions: &[Action]) -> Vec<Notice> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Notice(n) => Some(n.clone()),
                _ => None,
            })
            .collect()
    }

    fn connect(&mut self, id: ConnId) {
        self.event(Event::Connected {
            id,
            peer: "127.0.0.1:1".parse().unwrap(),
            took: ms(1),
        });
        self.event(Event::Heartbeat {
            id,
            sent: self.now,
            rtt: Some(ms(1)),
        });
    }

    fn die(&mut self, id: ConnId, cause: Cause) {
        self.event(Event::Died {
            id,
            cause,
            at: self.now,
            last_life: None,
            client: None,
        });
    }

    /// Bring every spawned connection up; returns them.
    fn connect_all(&mut self) -> Vec<(ConnId, usize)> {
        let actions = self.take();
        let spawned = Rig::spawns(&actions);
        for (id, _) in &spawned {
            self.connect(*id);
        }
        spawned
    }
}

#[test]
fn start_spreads_min_connections_over_the_primaries() {
    let mut r = rig("");
    let spawned = Rig::spawns(&r.take());
    assert_eq!(spawned.len(), 4);
    let on_a = spawned.iter().filter(|(_, e)| *e == 0).count();
    let on_b = spawned.iter().filter(|(_, e)| *e == 1).count();
    assert_eq!(
        (on_a, on_b),
        (2, 2),
        "least loaded primary first, never the backup"
    );
}

#[test]
fn warm_up_is_not_an_alert_and_warm_pool_says_so_once() {
    let mut r = rig("");
    let spawned = Rig::spawns(&r.take());
    for (id, _) in &spawned[..3] {
        r.connect(*id);
    }
    r.advance(ms(500));
    assert!(
        Rig::notices(&r.take()).is_empty(),
        "3/4 during warm-up is quiet"
    );
    r.connect(spawned[3].0);
    let notices = Rig::notices(&r.take());
    assert_eq!(notices.len(), 1);
    assert!(notices[0].text.starts_with("pool warm: 4/4"));
    assert_eq!(notices[0].severity, Severity::Info);
}

#[test]
fn heartbeat_timeout_suspects_the_endpoint_pings_its_peers_and_replaces_elsewhere() {
    let mut r = rig("");
    let spawned = r.connect_all();
    r.take();
    let (dead, _) = *spawned.iter().find(|(_, e)| *e == 0).unwrap();
    let (sibling, _) = *spawned
        .iter()
        .find(|(id, e)| *e == 0 && *id != dead)
        .unwrap();
    r.die(dead, Cause::HeartbeatTimeout);
    let actions = r.take();
    assert_eq!(r.pool.endpoint_state(0), State::Suspect);
    assert!(actions.contains(&Action::Command(sibling, Command::PingNow)));
    let replacement = Rig::spawns(&actions);
    assert_eq!(replacement.len(), 1);
    assert_eq!(
        replacement[0].1, 1,
        "replacement goes to the other primary at once"
    );
    let notices = Rig::notices(&actions);
    assert_eq!(notices.len(), 1);
    assert!(
        notices[0].text.contains("endpoint suspect"),
        "{:?}",
        notices[0]
    );
    assert_eq!(notices[0].endpoint.as_deref(), Some("ws://a.test/"));
}

#[test]
fn a_routine_death_on_a_healthy_endpoint_is_replaced_there_at_once_with_an_info_line() {
    let mut r = rig("");
    let spawned = r.connect_all();
    r.take();
    r.die(spawned[0].0, Cause::Closed(1001, "going away".into()));
    let actions = r.take();
    let replacement = Rig::spawns(&actions);
    assert_eq!(replacement.len(), 1);
    let notices = Rig::notices(&actions);
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0].severity, Severity::Info);
    assert!(notices[0].text.contains("replacing it"));
    assert_eq!(r.pool.endpoint_state(spawned[0].1), State::Up);
}

/// What happens to a connection the pool spawned on an endpoint.
enum Outcome {
    Up,
    Fails(Cause),
    /// Left dialling (a hung handshake).
    Pending,
}

impl Rig {
    /// Endpoint A (index 0) refuses until it is down (`down_after = 1`), then accepts
    /// again until a probe brings it back; returns every action seen meanwhile.
    fn take_a_down_and_back(&mut self) -> Vec<Action> {
        self.take_a_down();
        let seen = self.run_for(ms(3_000), &|_| Outcome::Up);
        assert_eq!(self.pool.endpoint_state(0), State::Up);
        seen
    }

    /// Endpoint A (index 0) refuses until it is down (`down_after = 1`).
    fn take_a_down(&mut self) {
        let on_a: Vec<_> = self
            .pool
            .conn_ids()
            .filter(|id| self.pool.endpoint_of(*id) == Some(0))
            .collect();
        for id in on_a {
            self.die(id, Cause::Refused);
        }
        let a_refuses = |e: usize| if e == 0 { refused() } else { Outcome::Up };
        self.settle(&a_refuses);
        assert_eq!(self.pool.endpoint_state(0), State::Down);
    }

    /// Play every spawn out with `outcome(endpoint)` until the pool asks for nothing new;
    /// retirements complete at once. Returns every action seen.
    fn settle(&mut self, outcome: &dyn Fn(usize) -> Outcome) -> Vec<Action> {
        let mut seen = Vec::new();
        loop {
            let actions = self.take();
            if actions.is_empty() {
                return seen;
            }
            for action in &actions {
                match action {
                    Action::Spawn { id, endpoint } => match outcome(*endpoint) {
                        Outcome::Up => self.connect(*id),
                        Outcome::Fails(cause) => self.die(*id, cause),
                        Outcome::Pending => {}
                    },
                    Action::Command(id, Command::Close(..)) => self.die(*id, Cause::Retired),
                    _ => {}
                }
            }
            seen.extend(actions);
        }
    }

    /// Advance the clock in steps, settling after each; returns every action seen.
    fn run_for(&mut self, total: Duration, outcome: &dyn Fn(usize) -> Outcome) -> Vec<Action> {
        let mut seen = self.settle(outcome);
        let step = ms(50);
        let mut elapsed = Duration::ZERO;
        while elapsed < total {
            self.advance(step);
            elapsed += step;
            seen.extend(self.settle(outcome));
        }
        seen
    }
}

fn refused() -> Outcome {
    Outcome::Fails(Cause::Refused)
}

#[test]
fn consecutive_failures_take_an_endpoint_down_with_one_line_then_probe_one_at_a_time() {
    let mut r = rig("down_after = 3");
    let spawned = r.connect_all();
    r.take();
    for (id, e) in &spawned {
        if *e == 0 {
            r.die(*id, Cause::Reset);
        }
    }
    let a_refuses = |e: usize| if e == 0 { refused() } else { Outcome::Up };
    let seen = r.run_for(ms(10_000), &a_refuses);
    assert_eq!(r.pool.endpoint_state(0), State::Down);
    let downs: Vec<_> = Rig::notices(&seen)
        .into_iter()
        .filter(|n| n.text.contains("endpoint down"))
        .collect();
    assert_eq!(downs.len(), 1, "one line per state change: {downs:?}");
    assert!(
        downs[0]
            .text
            .contains("endpoint down after 3 consecutive failures")
    );
    // The condition the incident follows: one of two primaries out is a warning.
    let active = r.pool.conditions(r.now);
    assert_eq!(active.len(), 1, "{active:?}");
    assert_eq!(active[0].kind, Kind::EndpointDown);
    assert_eq!(active[0].severity, Severity::Warning);
    assert!(
        active[0]
            .text
            .contains("(1 of 2 primaries out of rotation)"),
        "{}",
        active[0].text
    );
    assert_eq!(r.pool.healthy(), 4, "the other primary carries the pool");
    // Probes to a keep coming, paced: ten seconds at a 1 s backoff ceiling is a handful.
    let probes = Rig::spawns(&seen).iter().filter(|(_, e)| *e == 0).count();
    assert!(
        (3..=30).contains(&probes),
        "{probes} attempts on the down endpoint"
    );
}

#[test]
fn a_probe_is_one_attempt_at_a_time() {
    let mut r = rig("down_after = 1");
    r.connect_all();
    r.take();
    // Everything on a fails; then its probe hangs in the handshake.
    let ids: Vec<_> = r
        .pool
        .conn_ids()
        .filter(|id| r.pool.endpoint_of(*id) == Some(0))
        .collect();
    for id in ids {
        r.die(id, Cause::HeartbeatTimeout);
    }
    let hangs = |e: usize| {
        if e == 0 {
            Outcome::Pending
        } else {
            Outcome::Up
        }
    };
    let seen = r.run_for(ms(10_000), &hangs);
    let probes = Rig::spawns(&seen).iter().filter(|(_, e)| *e == 0).count();
    assert_eq!(probes, 1, "a hung probe blocks further attempts");
    assert_eq!(r.pool.endpoint_state(0), State::Probing);
    assert_eq!(
        r.pool.healthy(),
        4,
        "a hung probe does not count toward min"
    );
}

/// Endpoint a (index 0) down with every connection on b, and the probe to a dialled
/// and connected but not yet through a heartbeat; returns the probe's id.
fn a_probe_connected_on_trial(r: &mut Rig) -> ConnId {
    r.connect_all();
    r.take();
    r.take_a_down();
    let mut probe = None;
    for _ in 0..100 {
        r.advance(ms(50));
        let actions = r.take();
        if let Some((id, _)) = Rig::spawns(&actions).into_iter().find(|(_, e)| *e == 0) {
            probe = Some(id);
            break;
        }
    }
    let probe = probe.expect("a probe to the down endpoint within 5s");
    r.event(Event::Connected {
        id: probe,
        peer: "127.0.0.1:1".parse().unwrap(),
        took: ms(1),
    });
    probe
}

#[test]
fn a_connected_probe_is_not_surplus_until_its_heartbeat_brings_the_endpoint_back() {
    let mut r = rig("down_after = 1");
    let probe = a_probe_connected_on_trial(&mut r);
    let actions = r.take();
    assert!(
        closes(&actions).is_empty(),
        "nothing retired while the probe is on trial: {actions:?}"
    );
    assert_eq!(r.pool.endpoint_state(0), State::Probing);
    assert_eq!(r.pool.healthy(), 4);
    // Its heartbeat brings a back; only then is the pool over min, and the surplus
    // retired is not the probe.
    r.event(Event::Heartbeat {
        id: probe,
        sent: r.now,
        rtt: Some(ms(1)),
    });
    assert_eq!(r.pool.endpoint_state(0), State::Up);
    let retired = closes(&r.take());
    assert_eq!(retired.len(), 1, "one surplus once a is back");
    assert_ne!(retired[0], probe);
}

#[test]
fn a_probe_closed_by_us_before_its_heartbeat_leaves_the_endpoint_probed_again() {
    let mut r = rig("down_after = 1");
    let probe = a_probe_connected_on_trial(&mut r);
    r.take();
    r.die(probe, Cause::Retired);
    // Not left waiting for a probe that is gone: its backoff has run, so the next
    // probe goes out at once, and brings a back.
    let again = Rig::spawns(&r.take());
    let (next, _) = *again
        .iter()
        .find(|(_, e)| *e == 0)
        .unwrap_or_else(|| panic!("a new probe to a: {again:?}"));
    r.connect(next);
    assert_eq!(r.pool.endpoint_state(0), State::Up);
}

#[test]
fn a_probe_that_passes_a_heartbeat_returns_the_endpoint_and_surplus_is_trimmed() {
    let mut r = rig("down_after = 1");
    r.connect_all();
    r.take();
    let seen = r.take_a_down_and_back();
    assert!(
        Rig::notices(&seen)
            .iter()
            .any(|n| n.text.starts_with("endpoint back up"))
    );
    let retired = seen
        .iter()
        .filter(|a| matches!(a, Action::Command(_, Command::Close(1000, _))))
        .count();
    assert_eq!(
        retired, 1,
        "the probe made the pool min+1: one surplus retired"
    );
    assert_eq!(r.pool.healthy(), 4);
}

#[test]
fn backups_serve_only_while_no_primary_is_up_and_failback_keeps_min() {
    let mut r = rig("down_after = 1");
    let spawned = r.connect_all();
    r.take();
    for (id, _) in &spawned {
        r.die(*id, Cause::Refused);
    }
    let primaries_refuse = |e: usize| if e < 2 { refused() } else { Outcome::Up };
    r.settle(&primaries_refuse);
    let on = |r: &Rig, e: usize| {
        r.pool
            .conn_ids()
            .filter(|id| r.pool.endpoint_of(*id) == Some(e))
            .count()
    };
    assert_eq!(
        on(&r, 2),
        4,
        "the backup carries the pool while no primary is up"
    );
    assert_eq!(r.pool.healthy(), 4);
    // The primaries come back: failback, one connection at a time, never below min.
    let mut spawned_on_backup = 0;
    for _ in 0..100 {
        r.advance(ms(50));
        let seen = r.settle(&|_| Outcome::Up);
        spawned_on_backup += Rig::spawns(&seen).iter().filter(|(_, e)| *e == 2).count();
        assert!(r.pool.healthy() >= 4, "failback never dips below min");
    }
    assert_eq!(
        spawned_on_backup, 0,
        "no new backup connections once a primary is up"
    );
    assert_eq!(on(&r, 2), 0, "every backup connection handed back");
    assert_eq!(r.pool.healthy(), 4);
}

#[test]
fn a_pool_with_no_healthy_connection_is_a_critical_condition_after_grace_and_clears() {
    let mut r = rig("down_after = 1");
    let spawned = r.connect_all();
    r.take();
    assert!(r.pool.conditions(r.now).is_empty(), "a warm, full pool");
    for (id, _) in &spawned {
        r.die(*id, Cause::Reset);
    }
    r.settle(&|_| refused());
    let early: Vec<Kind> = r.pool.conditions(r.now).iter().map(|a| a.kind).collect();
    assert!(!early.contains(&Kind::PoolDown), "within grace: {early:?}");
    r.run_for(ms(3_000), &|_| refused());
    let active = r.pool.conditions(r.now);
    let pool = active
        .iter()
        .find(|a| a.kind == Kind::PoolDown)
        .expect("pool down");
    assert_eq!(pool.severity, Severity::Critical);
    assert!(
        pool.text
            .starts_with("pool down: no healthy connection for"),
        "{}",
        pool.text
    );
    assert_eq!(pool.endpoints.len(), 3, "every endpoint is out: {pool:?}");
    let down: Vec<&Active> = active
        .iter()
        .filter(|a| a.kind == Kind::EndpointDown)
        .collect();
    assert_eq!(down.len(), 3);
    // Primaries warn; the backup is information.
    let severities: Vec<Severity> = down.iter().map(|a| a.severity).collect();
    assert_eq!(
        severities,
        [Severity::Warning, Severity::Warning, Severity::Info]
    );
    r.run_for(ms(3_000), &|_| Outcome::Up);
    assert!(
        r.pool.conditions(r.now).is_empty(),
        "{:?}",
        r.pool.conditions(r.now)
    );
}

#[test]
fn five_hundred_deaths_at_once_are_a_handful_of_lines() {
    let mut r = rig("");
    r.pool.min = 500;
    r.advance(ms(1));
    r.settle(&|_| Outcome::Up);
    assert_eq!(r.pool.healthy(), 500);
    let on_a: Vec<ConnId> = r
        .pool
        .conn_ids()
        .filter(|id| r.pool.endpoint_of(*id) == Some(0))
        .collect();
    for id in on_a {
        r.die(id, Cause::HeartbeatTimeout);
    }
    let notices = Rig::notices(&r.take());
    let about_a = notices
        .iter()
        .filter(|n| n.endpoint.as_deref() == Some("ws://a.test/"))
        .count();
    assert!(about_a <= 2, "{about_a} lines about one endpoint");
}

#[test]
fn a_server_that_closes_every_new_connection_is_paced_not_hammered() {
    let mut r = rig("down_after = 3");
    r.take();
    // For ten simulated seconds, every connection to either primary closes before its
    // first heartbeat, and the backup refuses.
    let mut attempts = 0;
    for _ in 0..100 {
        r.advance(ms(100));
        loop {
            let actions = r.take();
            let spawned = Rig::spawns(&actions);
            if spawned.is_empty() {
                break;
            }
            for (id, _) in spawned {
                attempts += 1;
                r.die(id, Cause::Closed(1000, String::new()));
            }
        }
    }
    // Unpaced it would be unbounded; paced, each endpoint sees a few quick failures then
    // backoff (ceiling 1 s) with one attempt at a time.
    assert!(attempts < 80, "{attempts} attempts in 10 s");
}

#[test]
fn a_pool_that_is_down_with_probes_in_flight_asks_for_no_wake_in_the_past() {
    // The monitor once spun at full speed here: the backoff deadline of an endpoint
    // with a probe in flight, and the grace deadline of a pool already reported down,
    // stayed in the past and kept its select timeout at zero.
    let mut r = rig("down_after = 1");
    let spawned = r.connect_all();
    r.take();
    for (id, _) in &spawned {
        r.die(*id, Cause::Reset);
    }
    r.run_for(ms(3_000), &|_| Outcome::Pending);
    assert_eq!(r.pool.condition(), Condition::Down);
    if let Some(at) = r.pool.next_wake() {
        assert!(at > r.now, "next_wake is {:?} in the past", r.now - at);
    }
}

#[test]
fn warm_up_of_a_large_pool_ramps_in_waves_of_max_connecting_per_endpoint() {
    let mut r = rig("max_connecting = 8");
    r.pool.min = 100;
    r.take();
    r.advance(ms(1));
    let first = Rig::spawns(&r.take());
    // The rig's start already has 2 dials in flight on each primary.
    assert_eq!(
        first.len(),
        12,
        "8 in flight per primary, none to the backup"
    );
    assert!(first.iter().all(|(_, e)| *e < 2));
    // Each connect that completes lets one more dial start.
    r.connect(first[0].0);
    let next = Rig::spawns(&r.take());
    assert_eq!(next.len(), 1);
    let pending = first[1..].iter().chain(&next).map(|(id, _)| *id);
    let started: Vec<ConnId> = pending.chain(r.pool.conn_ids()).collect();
    for id in started {
        r.connect(id);
    }
    r.settle(&|_| Outcome::Up);
    assert_eq!(r.pool.healthy(), 100);
}

fn attaches(actions: &[Action]) -> Vec<(ConnId, SessionId)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Attach { conn, session } => Some((*conn, *session)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_client_gets_an_idle_connection_at_once_and_the_pool_refills_its_spare() {
    let mut r = rig("min = 1\nmax = 3\nspare = 1");
    r.settle(&|_| Outcome::Up);
    assert_eq!(r.pool.healthy(), 1);
    let actions = r.pool.lease(7, r.now);
    let attached = attaches(&actions);
    assert_eq!(attached.len(), 1, "attached to the warm connection");
    assert_eq!(Rig::spawns(&actions).len(), 1, "a new spare is dialled");
    r.actions.extend(actions);
    r.settle(&|_| Outcome::Up);
    assert_eq!((r.pool.leased(), r.pool.healthy()), (1, 2));
}

#[test]
fn clients_beyond_max_wait_then_are_refused_with_1013_after_lease_timeout() {
    let mut r = rig("min = 1\nmax = 1\nspare = 0\nlease_timeout = \"2s\"");
    r.settle(&|_| Outcome::Up);
    let first = r.pool.lease(1, r.now);
    assert_eq!(attaches(&first).len(), 1);
    let second = r.pool.lease(2, r.now);
    assert!(attaches(&second).is_empty());
    assert!(Rig::spawns(&second).is_empty(), "the pool is at max");
    assert_eq!(r.pool.waiting(), 1);
    r.advance(ms(1_900));
    assert!(!r.take().iter().any(|a| matches!(a, Action::Reject { .. })));
    assert!(r.pool.next_wake().is_some_and(|t| t <= r.now + ms(100)));
    r.advance(ms(100));
    let rejected: Vec<_> = r
        .take()
        .into_iter()
        .filter_map(|a| match a {
            Action::Reject { session, code, .. } => Some((session, code)),
            _ => None,
        })
        .collect();
    assert_eq!(rejected, vec![(2, 1013)]);
    assert_eq!(r.pool.waiting(), 0);
}

#[test]
fn a_waiting_client_takes_the_next_connection_that_comes_up() {
    let mut r = rig("min = 1\nmax = 4\nspare = 0");
    r.settle(&|_| Outcome::Up);
    r.pool.lease(1, r.now);
    let actions = r.pool.lease(2, r.now);
    let dials = Rig::spawns(&actions);
    assert_eq!(dials.len(), 1, "grows for the waiting client");
    assert!(attaches(&actions).is_empty());
    r.connect(dials[0].0);
    assert_eq!(attaches(&r.take()), vec![(dials[0].0, 2)]);
}

#[test]
fn a_healing_session_goes_ahead_of_new_clients_and_gets_1011_after_heal_timeout() {
    let mut r = rig("min = 1\nmax = 1\nspare = 0\nheal_timeout = \"3s\"\nlease_timeout = \"10s\"");
    r.settle(&|_| Outcome::Up);
    r.pool.lease(1, r.now);
    r.pool.lease(2, r.now);
    assert_eq!(r.pool.waiting(), 1, "client 2 waits: the pool is at max");
    // Client 1's connection dies and the session heals: it is served before client 2.
    let conn = r.pool.conn_ids().next().unwrap();
    r.die(conn, Cause::Reset);
    let heal = r.pool.heal(1, r.now);
    r.actions.extend(heal);
    let dials = Rig::spawns(&r.take());
    assert_eq!(dials.len(), 1, "one replacement (max 1)");
    assert_eq!(r.pool.waiting(), 2);
    r.connect(dials[0].0);
    assert_eq!(attaches(&r.take()), vec![(dials[0].0, 1)]);
    // The same again, but the endpoint is gone: 1011 once heal_timeout passes.
    r.die(dials[0].0, Cause::Reset);
    r.actions.extend(r.pool.heal(1, r.now));
    r.take();
    r.advance(ms(3_000));
    let rejected: Vec<_> = r
        .take()
        .into_iter()
        .filter_map(|a| match a {
            Action::Reject { session, code, .. } => Some((session, code)),
            _ => None,
        })
        .collect();
    assert_eq!(rejected, vec![(1, 1011)], "client 2 still has time");
    assert_eq!(r.pool.waiting(), 1);
}

#[test]
fn forgetting_a_session_frees_the_connection_promised_to_it() {
    let mut r = rig("min = 1\nmax = 1\nspare = 0");
    r.settle(&|_| Outcome::Up);
    let attached = attaches(&r.pool.heal(5, r.now));
    assert_eq!(attached.len(), 1);
    assert_eq!(r.pool.leased(), 1);
    r.pool.forget(5, r.now);
    assert_eq!(r.pool.leased(), 0);
    assert_eq!(attaches(&r.pool.lease(6, r.now)), vec![(attached[0].0, 6)]);
}

#[test]
fn the_pool_shrinks_to_min_only_after_load_stayed_low_for_idle_timeout() {
    let mut r = rig("min = 1\nmax = 8\nspare = 1\nidle_timeout = \"10s\"\nreuse = true");
    r.settle(&|_| Outcome::Up);
    for session in 1..=3 {
        let actions = r.pool.lease(session, r.now);
        r.actions.extend(actions);
        r.settle(&|_| Outcome::Up);
    }
    assert_eq!(r.pool.healthy(), 4, "three leased and a spare");
    // The clients leave; their connections are kept (reuse) and stay for a while.
    let leased: Vec<ConnId> = r.pool.conn_ids().collect();
    for (i, id) in leased.iter().enumerate().take(3) {
        r.event(Event::SessionEnded {
            id: *id,
            session: i as u64 + 1,
            code: 1000,
            why: "bye".into(),
            kept: true,
        });
    }
    r.advance(ms(9_000));
    assert!(
        !r.take()
            .iter()
            .any(|a| matches!(a, Action::Command(_, Command::Close(..)))),
        "nothing closed before idle_timeout"
    );
    assert!(r.pool.next_wake().is_some_and(|t| t <= r.now + ms(1_000)));
    r.advance(ms(1_000));
    // Trimmed one at a time as each closes, down to min plus the spare.
    let seen = r.settle(&|_| Outcome::Up);
    let text = Rig::notices(&seen)
        .into_iter()
        .map(|n| n.text)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.contains("load fell from 4 to 1"), "{text}");
    assert_eq!(r.pool.healthy(), 1);
}

fn per_endpoint(r: &Rig) -> Vec<usize> {
    let mut counts = vec![0; 3];
    for id in r.pool.conn_ids() {
        counts[r.pool.endpoint_of(id).unwrap()] += 1;
    }
    counts
}

#[test]
fn weights_share_new_connections_in_proportion() {
    let mut r = rig("min = 8\nweights = [3, 1]");
    r.settle(&|_| Outcome::Up);
    assert_eq!(per_endpoint(&r), vec![6, 2, 0]);
}

#[test]
fn an_endpoint_back_from_down_gets_its_share_gradually() {
    let mut r = rig("min = 2\nmax = 40\nspare = 0\ndown_after = 1\nslow_start = \"10s\"");
    r.settle(&|_| Outcome::Up);
    let seen = r.take_a_down_and_back();
    assert!(
        Rig::notices(&seen)
            .iter()
            .any(|n| n.text.contains("ramping up over 10.0s"))
    );
    // Twenty clients arrive at once, right after A came back: A, which has 0 or 1
    // connection against B's 2, must not take them all.
    for session in 0..20 {
        let actions = r.pool.lease(session, r.now);
        r.actions.extend(actions);
    }
    r.settle(&|_| Outcome::Up);
    let counts = per_endpoint(&r);
    assert!(
        counts[0] < counts[1] / 3,
        "the recovered endpoint took {counts:?}"
    );
    // Once the ramp is over, new connections go to A until the shares even out.
    r.advance(ms(10_000));
    for session in 20..40 {
        let actions = r.pool.lease(session, r.now);
        r.actions.extend(actions);
    }
    r.settle(&|_| Outcome::Up);
    let later = per_endpoint(&r);
    assert!(
        later[0] - counts[0] > later[1] - counts[1],
        "after the ramp A catches up: {counts:?} then {later:?}"
    );
}

#[test]
fn an_endpoint_that_keeps_flapping_is_damped_then_released_after_its_penalty_decays() {
    let mut r = rig(
        "down_after = 1\nweights = [10, 1]\nslow_start = \"0s\"\nflap_half_life = \"10s\"\nflap_suppress = 3\nflap_reuse = 1",
    );
    r.connect_all();
    r.take();
    let mut damped = Vec::new();
    // A leaves rotation and comes back, again and again, within seconds.
    for _ in 0..6 {
        let on = |r: &Rig, e: usize| -> Vec<ConnId> {
            r.pool
                .conn_ids()
                .filter(|id| r.pool.endpoint_of(*id) == Some(e))
                .collect()
        };
        // Move the load onto a (weight 10) by closing b's connections.
        for id in on(&r, 1) {
            r.die(id, Cause::Closed(1001, String::new()));
        }
        r.settle(&|_| Outcome::Up);
        for id in on(&r, 0) {
            r.die(id, Cause::Reset);
        }
        let mut seen = r.settle(&|e| if e == 0 { refused() } else { Outcome::Up });
        seen.extend(r.run_for(ms(2_000), &|_| Outcome::Up));
        damped.extend(
            Rig::notices(&seen)
                .into_iter()
                .filter(|n| n.text.starts_with("endpoint damped")),
        );
        if !damped.is_empty() {
            break;
        }
    }
    assert_eq!(damped.len(), 1, "{damped:?}");
    assert_eq!(damped[0].endpoint.as_deref(), Some(r.pool.endpoint_url(0)));
    // Up, but out of rotation: new connections go to b, and the pool has a
    // flapping condition.
    assert_eq!(r.pool.endpoint_state(0), State::Up);
    let active = r.pool.conditions(r.now);
    let flapping: Vec<&Active> = active.iter().filter(|a| a.kind == Kind::Flapping).collect();
    assert_eq!(flapping.len(), 1, "{active:?}");
    assert_eq!(flapping[0].severity, Severity::Warning);
    let spawns = Rig::spawns(&r.run_for(ms(1_000), &|_| Outcome::Up));
    let victims: Vec<_> = r
        .pool
        .conn_ids()
        .filter(|id| r.pool.endpoint_of(*id) == Some(1))
        .collect();
    for id in victims.iter().take(2) {
        r.die(*id, Cause::Closed(1001, String::new()));
    }
    let spawns: Vec<_> = spawns
        .into_iter()
        .chain(Rig::spawns(&r.run_for(ms(1_000), &|_| Outcome::Up)))
        .collect();
    assert!(
        spawns.iter().all(|(_, e)| *e == 1),
        "damped a gets nothing: {spawns:?}"
    );
    // The penalty decays (half-life 10 s) below flap_reuse within a minute.
    let seen = r.run_for(ms(60_000), &|_| Outcome::Up);
    let released = Rig::notices(&seen)
        .into_iter()
        .filter(|n| n.text.starts_with("endpoint no longer damped"))
        .count();
    assert_eq!(released, 1);
    assert!(r.pool.conditions(r.now).is_empty());
}

#[test]
fn heartbeat_timeouts_adapt_to_each_endpoints_round_trips_within_the_bounds() {
    let mut r = rig("heartbeat_timeout_min = \"100ms\"\nheartbeat_timeout = \"2s\"");
    assert!(r.pool.adaptive_timeouts());
    let spawned = r.connect_all();
    // connect_all answered one heartbeat each in 1 ms: both endpoints at the floor.
    assert_eq!(r.pool.heartbeat_timeout(0), ms(100));
    assert_eq!(r.pool.heartbeat_timeout(1), ms(100));
    let adapted = Rig::notices(&r.take())
        .into_iter()
        .filter(|n| n.text.starts_with("heartbeat timeout adapted to 100ms"))
        .count();
    assert_eq!(adapted, 2, "one line per endpoint");
    // b's round trips grow to 300 ms: its timeout follows, a's does not.
    let on_b: Vec<ConnId> = spawned
        .iter()
        .filter(|(_, e)| *e == 1)
        .map(|(id, _)| *id)
        .collect();
    for _ in 0..20 {
        for id in &on_b {
            r.event(Event::Heartbeat {
                id: *id,
                sent: r.now,
                rtt: Some(ms(300)),
            });
        }
    }
    let b = r.pool.heartbeat_timeout(1);
    assert!((ms(1_000)..=ms(2_000)).contains(&b), "{b:?}");
    assert_eq!(r.pool.heartbeat_timeout(0), ms(100));
    // Without heartbeat_timeout_min, nothing adapts.
    let mut plain = rig("");
    plain.connect_all();
    assert!(!plain.pool.adaptive_timeouts());
    assert_eq!(plain.pool.heartbeat_timeout(0), Duration::from_secs(2));
}

/// The rig's pool as a reload would bring it: `endpoints` and `extra` replaced.
fn reloaded(endpoints: &str, extra: &str) -> PoolConfig {
    let text = format!(
        "[pools.p]\nendpoints = [{endpoints}]\nbackup = [\"ws://z.test/\"]\nconnect_timeout = \"1s\"\nbackoff_base = \"100ms\"\nbackoff_max = \"1s\"\n{extra}\n"
    );
    Config::parse(&text, "reload")
        .expect("parses")
        .pools
        .remove(0)
}

fn closes(actions: &[Action]) -> Vec<ConnId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Command(id, Command::Close(..)) => Some(*id),
            _ => None,
        })
        .collect()
}

/// Four connections up (two per primary), one of them leased to session 7.
fn warm_with_a_session() -> (Rig, ConnId) {
    let mut r = rig("min = 4\nspare = 0");
    r.settle(&|_| Outcome::Up);
    let actions = r.pool.lease(7, r.now);
    let (leased, _) = attaches(&actions)[0];
    r.actions.extend(actions);
    r.settle(&|_| Outcome::Up);
    (r, leased)
}

#[test]
fn a_reload_of_pool_settings_alone_touches_no_connection() {
    let (mut r, leased) = warm_with_a_session();
    let before: Vec<ConnId> = r.pool.conn_ids().collect();
    let cfg = reloaded(
        "\"ws://a.test/\", \"ws://b.test/\"",
        "min = 6\nspare = 0\nlease_timeout = \"9s\"",
    );
    let actions = r.pool.reconfigure(&cfg, false, r.now);
    assert!(closes(&actions).is_empty(), "{actions:?}");
    assert_eq!(Rig::spawns(&actions).len(), 2, "grown to the new min");
    r.actions.extend(actions);
    r.settle(&|_| Outcome::Up);
    assert_eq!(r.pool.healthy(), 6);
    assert!(before.iter().all(|id| r.pool.endpoint_of(*id).is_some()));
    assert_eq!(r.pool.leased(), 1);
    assert!(r.pool.endpoint_of(leased).is_some());
}

#[test]
fn a_reload_that_removes_an_endpoint_replaces_only_its_connections() {
    let (mut r, leased) = warm_with_a_session();
    let gone = r.pool.endpoint_of(leased).unwrap();
    let kept_url = if gone == 0 {
        "ws://b.test/"
    } else {
        "ws://a.test/"
    };
    let on_gone: Vec<ConnId> = r
        .pool
        .conn_ids()
        .filter(|id| r.pool.endpoint_of(*id) == Some(gone))
        .collect();
    let elsewhere: Vec<ConnId> = r
        .pool
        .conn_ids()
        .filter(|id| r.pool.endpoint_of(*id) != Some(gone))
        .collect();
    assert_eq!((on_gone.len(), elsewhere.len()), (2, 2));
    let cfg = reloaded(&format!("\"{kept_url}\""), "min = 4\nspare = 0");
    let actions = r.pool.reconfigure(&cfg, false, r.now);
    let closed = closes(&actions);
    // The idle one on the removed endpoint closes; the leased one keeps its session.
    let idle_gone: Vec<ConnId> = on_gone.iter().copied().filter(|id| *id != leased).collect();
    assert_eq!(closed, idle_gone, "{actions:?}");
    let spawned = Rig::spawns(&actions);
    assert_eq!(spawned.len(), 2, "replacements for both, opened at once");
    let kept_index = 1 - gone;
    assert!(spawned.iter().all(|(_, e)| *e == kept_index), "{spawned:?}");
    let notices = Rig::notices(&actions);
    assert!(
        notices.iter().any(|n| n
            .text
            .contains("replacing 2 connection(s), endpoints were removed")),
        "{notices:?}"
    );
    r.actions.extend(actions);
    r.settle(&|_| Outcome::Up);
    assert_eq!(r.pool.leased(), 1, "the session is not disturbed");
    // When the session ends, its connection (kept for reuse) is closed too.
    r.event(Event::SessionEnded {
        id: leased,
        session: 7,
        code: 1000,
        why: "done".into(),
        kept: true,
    });
    assert_eq!(closes(&r.take()), vec![leased]);
    // The removed endpoint is never dialled again, even when the other goes down.
    let views = r.pool.endpoint_views();
    assert_eq!(views.len(), 3, "a removed slot stays (indexes are stable)");
    assert!(r.pool.conditions(r.now).is_empty());
}

#[test]
fn a_reload_that_changes_how_connections_are_built_replaces_all_idle_now_leased_later() {
    let (mut r, leased) = warm_with_a_session();
    let cfg = reloaded("\"ws://a.test/\", \"ws://b.test/\"", "min = 4\nspare = 0");
    let actions = r.pool.reconfigure(&cfg, true, r.now);
    let closed = closes(&actions);
    assert_eq!(closed.len(), 3, "the three idle ones: {actions:?}");
    assert!(!closed.contains(&leased));
    assert_eq!(
        Rig::spawns(&actions).len(),
        4,
        "min kept with fresh connections"
    );
    r.actions.extend(actions);
    r.settle(&|_| Outcome::Up);
    assert_eq!(
        r.pool.healthy(),
        4,
        "the retiring leased one does not count"
    );
    assert_eq!(r.pool.leased(), 1);
}

#[test]
fn a_reload_that_adds_an_endpoint_spreads_new_connections_onto_it() {
    let (mut r, _) = warm_with_a_session();
    let cfg = reloaded(
        "\"ws://a.test/\", \"ws://b.test/\", \"ws://c.test/\"",
        "min = 6\nspare = 0",
    );
    let actions = r.pool.reconfigure(&cfg, false, r.now);
    assert!(closes(&actions).is_empty());
    let spawned = Rig::spawns(&actions);
    assert_eq!(spawned.len(), 2);
    assert!(
        spawned.iter().all(|(_, e)| *e == 3),
        "the new, empty endpoint (slot 3, after the backup) is least loaded: {spawned:?}"
    );
    assert_eq!(r.pool.endpoint_url(3), "ws://c.test/");
}

#[test]
fn a_drained_pool_opens_nothing_and_turns_away_new_clients_with_1001() {
    let mut r = rig("min = 1\nmax = 1\nspare = 0");
    r.settle(&|_| Outcome::Up);
    let actions = r.pool.lease(1, r.now);
    r.actions.extend(actions);
    let actions = r.pool.lease(2, r.now);
    assert!(
        attaches(&actions).is_empty(),
        "client 2 waits: the pool is at max"
    );
    let actions = r.pool.drain(r.now);
    assert!(
        actions.iter().any(|a| matches!(
            a,
            Action::Reject {
                session: 2,
                code: 1001,
                ..
            }
        )),
        "{actions:?}"
    );
    assert!(Rig::spawns(&actions).is_empty());
    assert!(closes(&actions).is_empty(), "the leased connection stays");
    assert!(!r.pool.is_empty());
    let leased: Vec<ConnId> = r.pool.conn_ids().collect();
    r.event(Event::SessionEnded {
        id: leased[0],
        session: 1,
        code: 1000,
        why: "done".into(),
        kept: false,
    });
    r.die(leased[0], Cause::Retired);
    assert!(Rig::spawns(&r.take()).is_empty(), "nothing replaces it");
    assert!(r.pool.is_empty());
}
