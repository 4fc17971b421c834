//! What is wrong with a pool right now, as the conditions its incident follows: the
//! pool below `min` past the grace period, endpoints out of rotation, damped or slow.
//! Severity comes from the kind and from how much of the pool is affected.

use std::time::Instant;

use super::{Condition, EndpointSlot, Pool};
use crate::event::{Severity, human};
use crate::health::State;
use crate::incident::{Active, Kind};

impl Pool {
    /// The conditions that hold at `now`; empty while warming up and when all is well.
    pub fn conditions(&self, now: Instant) -> Vec<Active> {
        let mut active = Vec::new();
        if !self.warm {
            return active;
        }
        let primaries = self
            .endpoints
            .iter()
            .filter(|s| !s.backup && !s.removed)
            .count();
        let primaries_out = self
            .endpoints
            .iter()
            .filter(|s| !s.backup && !s.removed && !s.in_rotation())
            .count();
        let down_out =
            |slot: &EndpointSlot| matches!(slot.health.state(), State::Down | State::Probing);
        // A backup is dialled only while no primary serves: while one does, its last
        // known state is stale, and not a condition.
        let backups_matter = !self.primary_up();
        for (index, slot) in self.endpoints.iter().enumerate() {
            if slot.removed {
                continue;
            }
            if down_out(slot) && (!slot.backup || backups_matter) {
                // Half the primaries or more gone is a warning; a backup is info.
                let severity = if !slot.backup && primaries_out * 2 >= primaries {
                    Severity::Warning
                } else {
                    Severity::Info
                };
                let text = format!(
                    "endpoint {} down for {} ({primaries_out} of {primaries} primaries out of rotation); new connections go to {}",
                    slot.url,
                    human(now.saturating_duration_since(slot.health.since())),
                    self.elsewhere(index)
                );
                active.push(endpoint(Kind::EndpointDown, severity, slot, text));
            }
            if slot.flap.damped() {
                let text = format!(
                    "endpoint {} flapping: it left rotation {} times (penalty {:.1}, flap_suppress {}); damped until the penalty decays below {}",
                    slot.url,
                    slot.flap.flaps(),
                    slot.flap.value(&self.damping, now),
                    self.damping.suppress,
                    self.damping.reuse
                );
                active.push(endpoint(Kind::Flapping, Severity::Warning, slot, text));
            }
            if slot.slow
                && let Some(srtt) = slot.srtt
            {
                let every = self
                    .endpoints
                    .iter()
                    .filter(|s| !s.backup && s.in_rotation())
                    .all(|s| s.slow);
                let severity = if every {
                    Severity::Warning
                } else {
                    Severity::Info
                };
                let text = format!(
                    "heartbeat round trip to {} is {} (smoothed), above rtt_alert {}",
                    slot.url,
                    human(srtt),
                    human(self.rtt_alert)
                );
                active.push(endpoint(Kind::Latency, severity, slot, text));
            }
        }
        if self.reported != Condition::Ok {
            active.push(self.pool_condition(now));
        }
        active
    }

    fn pool_condition(&self, now: Instant) -> Active {
        let healthy = self.healthy();
        let below = self
            .below_since
            .map(|since| human(now.saturating_duration_since(since)))
            .unwrap_or_default();
        let up: Vec<&str> = self
            .endpoints
            .iter()
            .filter(|s| s.in_rotation())
            .map(|s| s.url.as_str())
            .collect();
        let doing = if up.is_empty() {
            "no endpoint is up; probing each on its backoff".to_string()
        } else {
            format!("connecting to {}", up.join(", "))
        };
        let out: Vec<String> = self
            .endpoints
            .iter()
            .filter(|s| !s.in_rotation())
            .map(|s| s.url.clone())
            .collect();
        let (kind, severity, text) = match self.reported {
            Condition::Down => (
                Kind::PoolDown,
                Severity::Critical,
                format!(
                    "pool down: no healthy connection for {below} (min {}); {doing}",
                    self.min
                ),
            ),
            _ => (
                Kind::PoolDegraded,
                // Less than half of min left is as bad as none.
                if healthy * 2 < self.min {
                    Severity::Critical
                } else {
                    Severity::Warning
                },
                format!(
                    "pool degraded: {healthy}/{} healthy connections for {below}; {doing}",
                    self.min
                ),
            ),
        };
        Active {
            kind,
            severity,
            endpoints: out,
            text,
        }
    }
}

fn endpoint(kind: Kind, severity: Severity, slot: &EndpointSlot, text: String) -> Active {
    Active {
        kind,
        severity,
        endpoints: vec![slot.url.clone()],
        text,
    }
}
