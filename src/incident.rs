//! Incidents: one pool's conditions turned into at most one open incident at a time,
//! deduplicated while any condition lasts, raised when it worsens, escalated when it
//! lasts or recovery keeps failing, and resolved after `resolve_after` of health. Pure:
//! the pool says what is wrong ([`Active`]), the monitor says what happened and what
//! was done, and every input carries `now`; what comes out are [`Transition`]s for the
//! journal, syslog and webhooks.

use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::event::{Severity, human};

/// What is wrong, from the mildest. An incident's kind is the worst seen while open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An endpoint's smoothed heartbeat round trip is above the pool's `rtt_alert`.
    Latency,
    /// An endpoint is out of rotation after `down_after` failures.
    EndpointDown,
    /// An endpoint keeps leaving rotation and is damped.
    Flapping,
    /// A session could not be healed.
    HealFailed,
    /// Healthy connections below `min` past the grace period.
    PoolDegraded,
    /// No healthy connection past the grace period.
    PoolDown,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Latency => "latency",
            Kind::EndpointDown => "endpoint_down",
            Kind::Flapping => "flapping",
            Kind::HealFailed => "heal_failed",
            Kind::PoolDegraded => "pool_degraded",
            Kind::PoolDown => "pool_down",
        }
    }
}

/// One condition that holds now.
#[derive(Debug, Clone, PartialEq)]
pub struct Active {
    pub kind: Kind,
    pub severity: Severity,
    /// The endpoints it involves (none for the pool as a whole).
    pub endpoints: Vec<String>,
    /// What an operator reads: "endpoint ws://a/ down: ...".
    pub text: String,
}

/// What changed, as journaled and sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Opened, or its severity rose.
    Firing,
    /// Its kind or endpoints changed, or a condition came back while it was recovering:
    /// journaled and logged, not sent.
    Updated,
    /// Every condition cleared; it resolves after `resolve_after` of health.
    Recovered,
    Escalated,
    Resolved,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Firing => "firing",
            Status::Updated => "updated",
            Status::Recovered => "recovered",
            Status::Escalated => "escalated",
            Status::Resolved => "resolved",
        }
    }

    /// Whether webhook receivers hear of it.
    pub fn notifies(self) -> bool {
        matches!(self, Status::Firing | Status::Escalated | Status::Resolved)
    }
}

/// What the incident's pool went through while it was open.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Connections that died.
    pub deaths: u64,
    /// New connections that failed before they came up (respawns that never got healthy).
    pub failed_attempts: u64,
    /// Connections that came up.
    pub reconnects: u64,
    /// Sessions moved to another connection.
    pub heals: u64,
    /// Of those, onto another endpoint.
    pub failovers: u64,
    /// Sessions that could not be healed.
    pub heal_failures: u64,
}

/// One thing wspoold saw or did, for the timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub at: SystemTime,
    pub what: String,
}

/// An incident as it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    pub id: u64,
    pub pool: String,
    pub kind: Kind,
    pub severity: Severity,
    /// Every endpoint involved, in the order they were.
    pub endpoints: Vec<String>,
    pub summary: String,
    /// The first sign: the last frame from the first connection that died, or when the
    /// first condition held.
    pub began: SystemTime,
    /// When wspoold first noticed (the first death, or the first condition).
    pub detected: SystemTime,
    /// When it became an incident.
    pub opened: SystemTime,
    /// When every condition last cleared.
    pub recovered: Option<SystemTime>,
    pub resolved: Option<SystemTime>,
    pub escalated: bool,
    pub actions: Vec<Step>,
    /// Steps beyond [`MAX_STEPS`], counted only.
    pub more_actions: u64,
    pub counts: Counts,
}

/// A change to an incident.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub status: Status,
    pub incident: Incident,
    /// The severity before a rise or an escalation.
    pub previous: Option<Severity>,
    /// The log line: what changed and why.
    pub text: String,
}

impl Transition {
    /// The syslog level: firing and escalated at the incident's severity, the rest info.
    pub fn severity(&self) -> Severity {
        match self.status {
            Status::Firing | Status::Escalated => self.incident.severity,
            _ => Severity::Info,
        }
    }
}

/// The timeline keeps this many steps; the rest are counted.
pub const MAX_STEPS: usize = 40;

/// From `[alerts]`.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub resolve_after: Duration,
    /// Zero: never.
    pub escalate_after: Duration,
    /// Zero: never.
    pub escalate_failures: u32,
}

impl Settings {
    pub fn from_alerts(alerts: &crate::config::AlertsConfig) -> Settings {
        Settings {
            resolve_after: alerts.resolve_after,
            escalate_after: alerts.escalate_after,
            escalate_failures: alerts.escalate_failures,
        }
    }
}

/// Signs seen before any incident opened: they date the incident if one follows.
#[derive(Debug)]
struct Lead {
    began: Instant,
    detected: Instant,
    last: Instant,
    counts: Counts,
    steps: Vec<(Instant, String)>,
}

#[derive(Debug)]
struct Open {
    incident: Incident,
    /// The worst condition holding at the last update (the incident's kind is the
    /// worst ever seen).
    current: Kind,
    opened: Instant,
    /// Since when no condition holds.
    healthy_since: Option<Instant>,
    /// Failed attempts in a row.
    failing: u32,
}

/// One pool's incident state.
#[derive(Debug)]
pub struct Tracker {
    pool: String,
    settings: Settings,
    /// An instant and the wall time it was, to date what happens.
    epoch: (Instant, SystemTime),
    open: Option<Open>,
    lead: Option<Lead>,
    /// Sessions that failed to heal since the last update, and the last reason.
    heal_failed: Option<(u64, String)>,
}

impl Tracker {
    pub fn new(pool: &str, settings: Settings, epoch: (Instant, SystemTime)) -> Tracker {
        Tracker {
            pool: pool.to_string(),
            settings,
            epoch,
            open: None,
            lead: None,
            heal_failed: None,
        }
    }

    /// A reload's timers: they apply to the open incident too, from its next update.
    pub fn set_settings(&mut self, settings: Settings) {
        self.settings = settings;
    }

    /// The open incident, if any.
    pub fn open(&self) -> Option<&Incident> {
        self.open.as_ref().map(|o| &o.incident)
    }

    fn counts(&mut self, now: Instant) -> &mut Counts {
        if let Some(open) = &mut self.open {
            return &mut open.incident.counts;
        }
        let lead = self.lead.get_or_insert(Lead {
            began: now,
            detected: now,
            last: now,
            counts: Counts::default(),
            steps: Vec::new(),
        });
        lead.last = now;
        &mut lead.counts
    }

    /// A connection died (`attempt`: it never came up). `last_life`: its last frame.
    pub fn died(&mut self, at: Instant, last_life: Option<Instant>, attempt: bool, now: Instant) {
        let counts = self.counts(now);
        if attempt {
            counts.failed_attempts += 1;
        } else {
            counts.deaths += 1;
        }
        match (&mut self.open, &mut self.lead) {
            (Some(open), _) => open.failing += u32::from(attempt),
            (None, Some(lead)) => {
                lead.detected = lead.detected.min(at);
                lead.began = lead.began.min(last_life.unwrap_or(at)).min(at);
            }
            (None, None) => {}
        }
    }

    /// A connection came up: recovery is working.
    pub fn connected(&mut self) {
        if let Some(open) = &mut self.open {
            open.incident.counts.reconnects += 1;
            open.failing = 0;
        } else if let Some(lead) = &mut self.lead {
            lead.counts.reconnects += 1;
        }
    }

    /// A session was healed; `failover`: onto another endpoint.
    pub fn healed(&mut self, failover: bool) {
        let counts = match (&mut self.open, &mut self.lead) {
            (Some(open), _) => &mut open.incident.counts,
            (None, Some(lead)) => &mut lead.counts,
            (None, None) => return,
        };
        counts.heals += 1;
        counts.failovers += u64::from(failover);
    }

    /// A session could not be healed: a condition of its own at the next update.
    pub fn heal_failed(&mut self, why: &str, now: Instant) {
        self.counts(now).heal_failures += 1;
        let (n, last) = self.heal_failed.get_or_insert((0, String::new()));
        *n += 1;
        *last = why.to_string();
    }

    /// Something wspoold saw or did, for the timeline of the open incident (or of the
    /// one that may follow).
    pub fn note(&mut self, what: &str, now: Instant) {
        let at = wall(self.epoch, now);
        if let Some(open) = &mut self.open {
            push_step(
                &mut open.incident,
                Step {
                    at,
                    what: what.to_string(),
                },
            );
        } else if let Some(lead) = &mut self.lead
            && lead.steps.len() < MAX_STEPS
        {
            lead.steps.push((now, what.to_string()));
        }
    }

    /// Compare what holds now with the open incident. `next_id` numbers new incidents
    /// (shared by the pools, and continued across restarts).
    pub fn update(
        &mut self,
        mut active: Vec<Active>,
        now: Instant,
        next_id: &mut u64,
    ) -> Vec<Transition> {
        if let Some((n, why)) = self.heal_failed.take() {
            active.push(Active {
                kind: Kind::HealFailed,
                severity: Severity::Warning,
                endpoints: Vec::new(),
                text: format!("{n} session(s) could not be healed (last: {why})"),
            });
        }
        let mut out = Vec::new();
        if active.is_empty() {
            self.quiet(now, &mut out);
        } else if self.open.is_none() {
            self.fire(&active, now, next_id, &mut out);
        } else {
            self.merge(&active, &mut out);
        }
        self.escalate(!active.is_empty(), now, &mut out);
        out
    }

    fn fire(
        &mut self,
        active: &[Active],
        now: Instant,
        next_id: &mut u64,
        out: &mut Vec<Transition>,
    ) {
        let id = *next_id;
        *next_id += 1;
        let lead = self
            .lead
            .take()
            .filter(|l| now.saturating_duration_since(l.last) <= self.settings.resolve_after);
        let (began, detected, counts, steps) = match lead {
            Some(l) => (l.began, l.detected, l.counts, l.steps),
            None => (now, now, Counts::default(), Vec::new()),
        };
        let worst = worst(active);
        let mut incident = Incident {
            id,
            pool: self.pool.clone(),
            kind: worst.kind,
            severity: max_severity(active),
            endpoints: Vec::new(),
            summary: summary(active),
            began: wall(self.epoch, began),
            detected: wall(self.epoch, detected),
            opened: wall(self.epoch, now),
            recovered: None,
            resolved: None,
            escalated: false,
            actions: Vec::new(),
            more_actions: 0,
            counts,
        };
        add_endpoints(&mut incident.endpoints, active);
        for (at, what) in steps {
            let at = wall(self.epoch, at);
            push_step(&mut incident, Step { at, what });
        }
        let text = format!(
            "firing ({}, {}): {}",
            incident.severity.label(),
            incident.kind.label(),
            incident.summary
        );
        self.open = Some(Open {
            incident,
            current: worst.kind,
            opened: now,
            healthy_since: None,
            failing: 0,
        });
        self.emit(Status::Firing, None, text, out);
    }

    fn merge(&mut self, active: &[Active], out: &mut Vec<Transition>) {
        let Some(open) = &mut self.open else { return };
        let incident = &mut open.incident;
        let before = (incident.kind, incident.severity, incident.endpoints.len());
        let relapse = open.healthy_since.take().is_some();
        let current = worst(active).kind;
        let shifted = std::mem::replace(&mut open.current, current) != current;
        incident.kind = incident.kind.max(current);
        incident.severity = incident.severity.max(max_severity(active));
        add_endpoints(&mut incident.endpoints, active);
        incident.summary = summary(active);
        if incident.severity > before.1 {
            let text = format!(
                "severity raised from {} to {} ({}): {}",
                before.1.label(),
                incident.severity.label(),
                incident.kind.label(),
                incident.summary
            );
            return self.emit(Status::Firing, Some(before.1), text, out);
        }
        if relapse || shifted || incident.endpoints.len() != before.2 {
            incident.recovered = None;
            let head = if relapse {
                format!(
                    "a condition is back before {} of health",
                    human(self.settings.resolve_after)
                )
            } else if current < before.0 {
                format!("better, now {}", current.label())
            } else {
                "updated".to_string()
            };
            let text = format!("{head} ({}): {}", incident.kind.label(), incident.summary);
            self.emit(Status::Updated, None, text, out);
        }
    }

    fn quiet(&mut self, now: Instant, out: &mut Vec<Transition>) {
        let Some(open) = &mut self.open else {
            if let Some(lead) = &self.lead
                && now.saturating_duration_since(lead.last) > self.settings.resolve_after
            {
                self.lead = None;
            }
            return;
        };
        let Some(since) = open.healthy_since else {
            open.healthy_since = Some(now);
            let at = wall(self.epoch, now);
            let incident = &mut open.incident;
            incident.recovered = Some(at);
            let took = at.duration_since(incident.began).unwrap_or_default();
            let text = format!(
                "pool recovered: every condition cleared {} after the first sign; resolving after {} of health",
                human(took),
                human(self.settings.resolve_after)
            );
            push_step(
                incident,
                Step {
                    at,
                    what: text.clone(),
                },
            );
            return self.emit(Status::Recovered, None, text, out);
        };
        if now.saturating_duration_since(since) < self.settings.resolve_after {
            return;
        }
        let Some(mut open) = self.open.take() else {
            return;
        };
        let at = wall(self.epoch, now);
        let incident = &mut open.incident;
        incident.resolved = Some(at);
        let c = &incident.counts;
        let text = format!(
            "resolved after {} healthy; open {} ({}, {}): {} death(s), {} failed attempt(s), {} reconnect(s), {} heal(s) ({} failover(s)), {} session(s) not healed",
            human(self.settings.resolve_after),
            human(at.duration_since(incident.opened).unwrap_or_default()),
            incident.severity.label(),
            incident.kind.label(),
            c.deaths,
            c.failed_attempts,
            c.reconnects,
            c.heals,
            c.failovers,
            c.heal_failures
        );
        push_step(
            incident,
            Step {
                at,
                what: "resolved".to_string(),
            },
        );
        out.push(Transition {
            status: Status::Resolved,
            incident: open.incident,
            previous: None,
            text,
        });
    }

    /// Escalate an incident whose conditions still hold after `escalate_after`, or at
    /// once when `escalate_failures` recovery attempts in a row failed.
    fn escalate(&mut self, holding: bool, now: Instant, out: &mut Vec<Transition>) {
        let s = self.settings;
        let Some(open) = &mut self.open else { return };
        if open.incident.escalated || !holding {
            return;
        }
        let open_for = now.saturating_duration_since(open.opened);
        let why = if !s.escalate_after.is_zero() && open_for >= s.escalate_after {
            format!("still open after {}", human(open_for))
        } else if s.escalate_failures > 0 && open.failing >= s.escalate_failures {
            format!(
                "recovery keeps failing: {} new connections in a row never came up",
                open.failing
            )
        } else {
            return;
        };
        let incident = &mut open.incident;
        let previous = incident.severity;
        incident.escalated = true;
        incident.severity = raise(previous);
        let text = format!(
            "escalated to {} ({}): {why}; {}",
            incident.severity.label(),
            incident.kind.label(),
            incident.summary
        );
        let at = wall(self.epoch, now);
        push_step(
            incident,
            Step {
                at,
                what: format!("escalated: {why}"),
            },
        );
        self.emit(Status::Escalated, Some(previous), text, out);
    }

    fn emit(
        &self,
        status: Status,
        previous: Option<Severity>,
        text: String,
        out: &mut Vec<Transition>,
    ) {
        if let Some(open) = &self.open {
            out.push(Transition {
                status,
                incident: open.incident.clone(),
                previous,
                text,
            });
        }
    }
}

/// The wall time of `at`, from an instant whose wall time is known.
fn wall(epoch: (Instant, SystemTime), at: Instant) -> SystemTime {
    match at.checked_duration_since(epoch.0) {
        Some(after) => epoch.1 + after,
        None => epoch.1 - epoch.0.duration_since(at),
    }
}

fn push_step(incident: &mut Incident, step: Step) {
    if incident.actions.len() < MAX_STEPS {
        incident.actions.push(step);
    } else {
        incident.more_actions += 1;
    }
}

/// The worst condition: by kind, then severity.
fn worst(active: &[Active]) -> &Active {
    active
        .iter()
        .max_by_key(|a| (a.kind, a.severity))
        .expect("at least one condition")
}

fn max_severity(active: &[Active]) -> Severity {
    active
        .iter()
        .map(|a| a.severity)
        .max()
        .unwrap_or(Severity::Info)
}

/// The worst condition's text, and how many others hold.
fn summary(active: &[Active]) -> String {
    let worst = worst(active);
    match active.len() {
        1 => worst.text.clone(),
        n => format!("{}; and {} other condition(s)", worst.text, n - 1),
    }
}

fn add_endpoints(endpoints: &mut Vec<String>, active: &[Active]) {
    for url in active.iter().flat_map(|a| &a.endpoints) {
        if !endpoints.contains(url) {
            endpoints.push(url.clone());
        }
    }
}

/// One step up; critical stays critical.
pub fn raise(severity: Severity) -> Severity {
    match severity {
        Severity::Info => Severity::Warning,
        _ => Severity::Critical,
    }
}

#[cfg(test)]
#[path = "incident_tests.rs"]
mod tests;
