//! Pool decisions driven with a fake clock: no sockets, no threads.

use super::*;
use crate::config::Config;

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
    let text = format!(
        r#"
[alerts]
syslog = false
grace = "1s"

[pools.p]
endpoints = ["ws://a.test/", "ws://b.test/"]
backup = ["ws://z.test/"]
min = 4
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
    Rig {
        pool,
        now,
        actions,
    }
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
    assert_eq!((on_a, on_b), (2, 2), "least loaded primary first, never the backup");
}

#[test]
fn warm_up_is_not_an_alert_and_warm_pool_says_so_once() {
    let mut r = rig("");
    let spawned = Rig::spawns(&r.take());
    for (id, _) in &spawned[..3] {
        r.connect(*id);
    }
    r.advance(ms(500));
    assert!(Rig::notices(&r.take()).is_empty(), "3/4 during warm-up is quiet");
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
    let (sibling, _) = *spawned.iter().find(|(id, e)| *e == 0 && *id != dead).unwrap();
    r.die(dead, Cause::HeartbeatTimeout);
    let actions = r.take();
    assert_eq!(r.pool.endpoint_state(0), State::Suspect);
    assert!(actions.contains(&Action::Command(sibling, Command::PingNow)));
    let replacement = Rig::spawns(&actions);
    assert_eq!(replacement.len(), 1);
    assert_eq!(replacement[0].1, 1, "replacement goes to the other primary at once");
    let notices = Rig::notices(&actions);
    assert_eq!(notices.len(), 1);
    assert!(notices[0].text.contains("endpoint suspect"), "{:?}", notices[0]);
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

#[test]
fn consecutive_failures_take_an_endpoint_down_with_one_warning_then_probe_one_at_a_time() {
    let mut r = rig("down_after = 3");
    let spawned = r.connect_all();
    r.take();
    // Every connection on a dies, and each replacement attempt on it is refused.
    for (id, e) in &spawned {
        if *e == 0 {
            r.die(*id, Cause::Reset);
        }
    }
    let mut warnings = 0;
    for _ in 0..20 {
        r.advance(ms(1_000));
        let actions = r.take();
        warnings += Rig::notices(&actions)
            .iter()
            .filter(|n| n.severity == Severity::Warning && n.endpoint.is_some())
            .count();
        let attempts: Vec<_> = Rig::spawns(&actions)
            .into_iter()
            .filter(|(_, e)| *e == 0)
            .collect();
        assert!(attempts.len() <= 1, "one attempt in flight to a sick endpoint");
        for (id, _) in attempts {
            r.die(id, Cause::Refused);
        }
        for (id, e) in Rig::spawns(&r.take()) {
            if e == 0 {
                r.die(id, Cause::Refused);
            } else {
                r.connect(id);
            }
        }
    }
    assert_eq!(r.pool.endpoint_state(0), State::Down);
    assert_eq!(warnings, 1, "one alert per state change, not per failure");
    assert_eq!(r.pool.healthy(), 4, "the other primary carries the pool");
}

#[test]
fn a_probe_that_passes_a_heartbeat_returns_the_endpoint_and_surplus_is_trimmed() {
    let mut r = rig("down_after = 1");
    let spawned = r.connect_all();
    r.take();
    for (id, e) in &spawned {
        if *e == 0 {
            r.die(*id, Cause::Refused);
        }
    }
    for (id, _) in Rig::spawns(&r.take()) {
        r.connect(id);
    }
    assert_eq!(r.pool.endpoint_state(0), State::Down);
    // Wait for the probe.
    let mut probe = None;
    for _ in 0..40 {
        r.advance(ms(100));
        if let Some(p) = Rig::spawns(&r.take()).into_iter().find(|(_, e)| *e == 0) {
            probe = Some(p.0);
            break;
        }
    }
    let probe = probe.expect("a probe within the backoff ceiling");
    assert_eq!(r.pool.endpoint_state(0), State::Probing);
    r.connect(probe);
    let actions = r.take();
    assert_eq!(r.pool.endpoint_state(0), State::Up);
    let notices = Rig::notices(&actions);
    assert!(notices.iter().any(|n| n.text.contains("endpoint back up")));
    let retired = actions
        .iter()
        .filter(|a| matches!(a, Action::Command(_, Command::Close(1000, _))))
        .count();
    assert_eq!(retired, 1, "the pool is back to min: one surplus connection retired");
}

#[test]
fn backups_serve_only_while_no_primary_is_up_and_failback_keeps_min() {
    let mut r = rig("down_after = 1");
    let spawned = r.connect_all();
    r.take();
    for (id, _) in &spawned {
        r.die(*id, Cause::Refused);
    }
    // Both primaries are down now; replacements go to the backup.
    let actions = r.take();
    let to_backup: Vec<_> = Rig::spawns(&actions)
        .into_iter()
        .filter(|(_, e)| *e == 2)
        .collect();
    assert_eq!(to_backup.len(), 4, "{actions:?}");
    for (id, _) in &to_backup {
        r.connect(*id);
    }
    for (id, e) in Rig::spawns(&actions) {
        if e != 2 {
            r.die(id, Cause::Refused);
        }
    }
    r.take();
    assert_eq!(r.pool.healthy(), 4);
    // A probe of primary a passes: failback, one connection at a time, never below min.
    let mut probe = None;
    for _ in 0..40 {
        r.advance(ms(100));
        let actions = r.take();
        for (id, e) in Rig::spawns(&actions) {
            if e == 0 && probe.is_none() {
                probe = Some(id);
            } else {
                r.die(id, Cause::Refused);
            }
        }
        if probe.is_some() {
            break;
        }
    }
    r.connect(probe.expect("primary probed"));
    for _ in 0..20 {
        let actions = r.take();
        for action in &actions {
            match action {
                Action::Spawn { id, endpoint } => {
                    assert_ne!(*endpoint, 2, "no new backup connections once a primary is up");
                    r.connect(*id);
                }
                Action::Command(id, Command::Close(..)) => {
                    assert_eq!(r.pool.endpoint_of(*id), Some(2), "only backups retired");
                    r.die(*id, Cause::Retired);
                }
                _ => {}
            }
        }
        assert!(r.pool.healthy() >= 4, "failback never dips below min");
        r.advance(ms(10));
    }
    let on_backup = r
        .pool
        .conn_ids()
        .filter(|id| r.pool.endpoint_of(*id) == Some(2))
        .count();
    assert_eq!(on_backup, 0, "every backup connection handed back");
}

#[test]
fn a_pool_with_no_healthy_connection_is_critical_after_grace_and_recovers_with_info() {
    let mut r = rig("down_after = 1");
    let spawned = r.connect_all();
    r.take();
    for (id, _) in &spawned {
        r.die(*id, Cause::Reset);
    }
    // Everything refuses, backup included.
    let mut severities = Vec::new();
    for _ in 0..30 {
        r.advance(ms(100));
        let actions = r.take();
        severities.extend(
            Rig::notices(&actions)
                .iter()
                .filter(|n| n.endpoint.is_none())
                .map(|n| n.severity),
        );
        for (id, _) in Rig::spawns(&actions) {
            r.die(id, Cause::Refused);
        }
    }
    assert_eq!(severities, vec![Severity::Critical], "one critical alert");
    // The backup comes back: recovery is an info line.
    let mut recovered = false;
    for _ in 0..50 {
        r.advance(ms(100));
        let actions = r.take();
        for (id, _) in Rig::spawns(&actions) {
            r.connect(id);
        }
        recovered |= Rig::notices(&r.take())
            .iter()
            .chain(Rig::notices(&actions).iter())
            .any(|n| n.text.starts_with("pool recovered"));
        if recovered {
            break;
        }
    }
    assert!(recovered);
}

#[test]
fn five_hundred_deaths_at_once_are_a_handful_of_lines() {
    let mut r = rig("");
    r.pool.min = 500;
    r.advance(ms(1));
    let spawned = r.connect_all();
    assert_eq!(spawned.len(), 500);
    r.take();
    for (id, e) in &spawned {
        if *e == 0 {
            r.die(*id, Cause::HeartbeatTimeout);
        }
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
