//! Incident decisions with a fake clock: dedup, raise, hysteresis, escalation, dating.

use super::*;

const SECOND: Duration = Duration::from_secs(1);

struct Rig {
    t0: Instant,
    now: Instant,
    tracker: Tracker,
    next_id: u64,
}

fn rig() -> Rig {
    let t0 = Instant::now();
    let settings = Settings {
        resolve_after: 30 * SECOND,
        escalate_after: 300 * SECOND,
        escalate_failures: 5,
    };
    Rig {
        t0,
        now: t0,
        tracker: Tracker::new("market", settings, (t0, SystemTime::UNIX_EPOCH)),
        next_id: 7,
    }
}

fn down(url: &str, severity: Severity) -> Active {
    Active {
        kind: Kind::EndpointDown,
        severity,
        endpoints: vec![url.to_string()],
        text: format!("endpoint {url} down"),
    }
}

fn pool_down() -> Active {
    Active {
        kind: Kind::PoolDown,
        severity: Severity::Critical,
        endpoints: Vec::new(),
        text: "pool down".into(),
    }
}

impl Rig {
    fn at(&mut self, secs: f64) -> &mut Rig {
        self.now = self.t0 + Duration::from_secs_f64(secs);
        self
    }

    fn update(&mut self, active: Vec<Active>) -> Vec<Transition> {
        self.tracker.update(active, self.now, &mut self.next_id)
    }

    fn statuses(&mut self, active: Vec<Active>) -> Vec<Status> {
        self.update(active).into_iter().map(|t| t.status).collect()
    }

    fn wall(&self, secs: f64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs)
    }
}

#[test]
fn a_lasting_condition_is_one_incident_however_often_it_is_seen() {
    let mut r = rig();
    let fired = r.update(vec![down("ws://a/", Severity::Warning)]);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].status, Status::Firing);
    assert_eq!(fired[0].incident.id, 7);
    assert_eq!(fired[0].incident.kind, Kind::EndpointDown);
    assert_eq!(fired[0].incident.endpoints, ["ws://a/"]);
    assert!(
        fired[0].text.starts_with("firing (warning, endpoint_down)"),
        "{}",
        fired[0].text
    );
    for i in 1..500 {
        let t = f64::from(i) * 0.1;
        assert!(
            r.at(t)
                .update(vec![down("ws://a/", Severity::Warning)])
                .is_empty()
        );
    }
    assert_eq!(r.next_id, 8);
}

#[test]
fn a_worse_condition_raises_the_severity_and_a_milder_one_does_not() {
    let mut r = rig();
    r.update(vec![down("ws://a/", Severity::Info)]);
    let raised = r
        .at(1.0)
        .update(vec![down("ws://a/", Severity::Info), pool_down()]);
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0].status, Status::Firing);
    assert_eq!(raised[0].previous, Some(Severity::Info));
    assert_eq!(raised[0].incident.severity, Severity::Critical);
    assert_eq!(raised[0].incident.kind, Kind::PoolDown);
    assert!(
        raised[0]
            .incident
            .summary
            .starts_with("pool down; and 1 other")
    );
    // Back to the milder condition: kind and severity stay at the worst seen, and the
    // log says it is better.
    let better = r.at(2.0).update(vec![down("ws://a/", Severity::Info)]);
    assert_eq!(better.len(), 1);
    assert_eq!(better[0].status, Status::Updated);
    assert!(
        better[0]
            .text
            .starts_with("better, now endpoint_down (pool_down)"),
        "{}",
        better[0].text
    );
    assert!(
        r.at(2.5)
            .update(vec![down("ws://a/", Severity::Info)])
            .is_empty()
    );
    // Another endpoint involved: journaled, not sent.
    let more = r.at(3.0).update(vec![
        down("ws://a/", Severity::Info),
        down("ws://b/", Severity::Info),
    ]);
    assert_eq!(more.len(), 1);
    assert_eq!(more[0].status, Status::Updated);
    assert!(!more[0].status.notifies());
    assert_eq!(more[0].incident.endpoints, ["ws://a/", "ws://b/"]);
    assert_eq!(more[0].incident.severity, Severity::Critical);
}

#[test]
fn it_resolves_only_after_resolve_after_of_health_and_a_relapse_keeps_it_open() {
    let mut r = rig();
    r.update(vec![pool_down()]);
    assert_eq!(r.at(10.0).statuses(vec![]), [Status::Recovered]);
    assert!(
        r.at(39.0).update(vec![]).is_empty(),
        "29 s of health is not enough"
    );
    // The condition is back within the hysteresis: same incident, no new alert.
    assert_eq!(r.at(39.5).statuses(vec![pool_down()]), [Status::Updated]);
    assert_eq!(r.at(40.0).statuses(vec![]), [Status::Recovered]);
    assert!(r.at(69.9).update(vec![]).is_empty());
    let resolved = r.at(70.0).update(vec![]);
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].status, Status::Resolved);
    let incident = &resolved[0].incident;
    assert_eq!(incident.id, 7);
    assert_eq!(incident.recovered, Some(r.wall(40.0)));
    assert_eq!(incident.resolved, Some(r.wall(70.0)));
    assert!(r.tracker.open().is_none());
    // The next condition is a new incident.
    let next = r.at(80.0).update(vec![pool_down()]);
    assert_eq!(next[0].incident.id, 8);
}

#[test]
fn it_escalates_after_escalate_after_once_and_only_while_a_condition_holds() {
    let mut r = rig();
    r.update(vec![down("ws://a/", Severity::Warning)]);
    assert!(
        r.at(299.0)
            .update(vec![down("ws://a/", Severity::Warning)])
            .is_empty()
    );
    let escalated = r.at(300.0).update(vec![down("ws://a/", Severity::Warning)]);
    assert_eq!(escalated.len(), 1);
    assert_eq!(escalated[0].status, Status::Escalated);
    assert_eq!(escalated[0].previous, Some(Severity::Warning));
    assert_eq!(escalated[0].incident.severity, Severity::Critical);
    assert!(escalated[0].incident.escalated);
    assert!(
        escalated[0].text.contains("still open after 5m00s"),
        "{}",
        escalated[0].text
    );
    assert!(
        r.at(400.0)
            .update(vec![down("ws://a/", Severity::Warning)])
            .is_empty()
    );

    // Recovering when the time comes: no escalation.
    let mut r = rig();
    r.update(vec![down("ws://a/", Severity::Warning)]);
    r.at(290.0).update(vec![]);
    assert!(r.at(310.0).update(vec![]).is_empty());
}

#[test]
fn recovery_that_keeps_failing_escalates_sooner_and_a_success_resets_the_count() {
    let mut r = rig();
    r.update(vec![pool_down()]);
    for i in 0..4 {
        r.tracker.died(r.now, None, true, r.now);
        assert!(r.at(f64::from(i + 1)).update(vec![pool_down()]).is_empty());
    }
    r.tracker.connected();
    for _ in 0..4 {
        r.tracker.died(r.now, None, true, r.now);
    }
    assert!(
        r.at(6.0).update(vec![pool_down()]).is_empty(),
        "the count restarted"
    );
    r.tracker.died(r.now, None, true, r.now);
    let escalated = r.at(7.0).update(vec![pool_down()]);
    assert_eq!(escalated.len(), 1);
    assert_eq!(escalated[0].status, Status::Escalated);
    assert!(
        escalated[0]
            .text
            .contains("5 new connections in a row never came up")
    );
    assert_eq!(escalated[0].incident.counts.failed_attempts, 9);
    assert_eq!(escalated[0].incident.counts.reconnects, 1);
}

#[test]
fn the_incident_is_dated_from_the_first_sign_and_carries_what_came_before() {
    let mut r = rig();
    // A blackhole: the last frame at 1 s, detected at 1.4 s.
    let (last_life, at) = (r.t0 + SECOND, r.t0 + Duration::from_millis(1400));
    r.at(1.4).tracker.died(at, Some(last_life), false, at);
    r.tracker.note("endpoint ws://a/ suspect", at);
    r.tracker.healed(true);
    assert!(
        r.update(vec![]).is_empty(),
        "a death alone is not an incident"
    );
    let fired = r.at(3.0).update(vec![down("ws://a/", Severity::Warning)]);
    let incident = &fired[0].incident;
    assert_eq!(incident.began, r.wall(1.0));
    assert_eq!(incident.detected, r.wall(1.4));
    assert_eq!(incident.opened, r.wall(3.0));
    assert_eq!(incident.counts.deaths, 1);
    assert_eq!((incident.counts.heals, incident.counts.failovers), (1, 1));
    assert_eq!(incident.actions.len(), 1);
    assert_eq!(incident.actions[0].what, "endpoint ws://a/ suspect");

    // Signs older than resolve_after do not date a later incident.
    let mut r = rig();
    r.tracker.died(r.t0, Some(r.t0), false, r.t0);
    r.at(31.0).update(vec![]);
    let fired = r.at(40.0).update(vec![pool_down()]);
    assert_eq!(fired[0].incident.began, r.wall(40.0));
    assert_eq!(fired[0].incident.counts.deaths, 0);
}

#[test]
fn a_heal_failure_is_a_condition_of_its_own() {
    let mut r = rig();
    r.tracker
        .heal_failed("not healed within heal_timeout (10s)", r.now);
    r.tracker.heal_failed("heal_buffer overflowed", r.now);
    let fired = r.update(vec![]);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].incident.kind, Kind::HealFailed);
    assert_eq!(fired[0].incident.severity, Severity::Warning);
    assert_eq!(fired[0].incident.counts.heal_failures, 2);
    assert!(
        fired[0]
            .incident
            .summary
            .contains("2 session(s) could not be healed (last: heal_buffer overflowed)")
    );
    assert_eq!(r.at(1.0).statuses(vec![]), [Status::Recovered]);
}

#[test]
fn the_timeline_is_bounded_and_counts_the_rest() {
    let mut r = rig();
    r.update(vec![pool_down()]);
    for i in 0..100 {
        r.tracker.note(&format!("step {i}"), r.now);
    }
    let incident = r.tracker.open().unwrap();
    assert_eq!(incident.actions.len(), MAX_STEPS);
    assert_eq!(incident.more_actions, 100 - MAX_STEPS as u64);
}
