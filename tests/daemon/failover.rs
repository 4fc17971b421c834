//! Failover to another primary and to a backup, and failback to the primaries.

use std::collections::HashMap;
use std::time::Duration;

use wspoold::event::Observation;
use wspoold::faults::Upstream;

use crate::util::{Running, config, start, watchdog};

const SOON: Duration = Duration::from_secs(5);

/// Live connections per endpoint, replayed from the observations.
fn per_endpoint(d: &Running) -> HashMap<String, usize> {
    let mut live: HashMap<u64, String> = HashMap::new();
    for o in &d.log {
        match o {
            Observation::Connected { id, endpoint, .. } => {
                live.insert(*id, endpoint.clone());
            }
            Observation::Died { id, .. } => {
                live.remove(id);
            }
            _ => {}
        }
    }
    let mut counts = HashMap::new();
    for endpoint in live.into_values() {
        *counts.entry(endpoint).or_insert(0) += 1;
    }
    counts
}

/// Wait (polling the observations) until `check` holds for the per-endpoint counts.
fn wait_counts(d: &mut Running, what: &str, check: impl Fn(&HashMap<String, usize>) -> bool) {
    d.wait_state(SOON, what, |d| check(&per_endpoint(d)));
}

#[test]
fn a_dead_primary_is_replaced_on_the_other_primary() {
    watchdog(30, || {
        let (a, b) = (Upstream::start().unwrap(), Upstream::start().unwrap());
        let mut d = start(&config(&[a.url(), b.url()], "min = 4"));
        wait_counts(&mut d, "2 + 2", |c| {
            c.get(&a.url()) == Some(&2) && c.get(&b.url()) == Some(&2)
        });
        a.kill();
        wait_counts(&mut d, "all 4 on b", |c| {
            c.get(&b.url()) == Some(&4) && c.get(&a.url()).is_none_or(|n| *n == 0)
        });
    });
}

#[test]
fn backups_serve_only_while_no_primary_is_up_and_the_pool_fails_back() {
    watchdog(30, || {
        let (a, z) = (Upstream::start().unwrap(), Upstream::start().unwrap());
        let extra = format!("min = 3\ndown_after = 1\nbackup = [\"{}\"]", z.url());
        let mut d = start(&config(&[a.url()], &extra));
        wait_counts(&mut d, "3 on the primary", |c| c.get(&a.url()) == Some(&3));
        assert_eq!(
            z.handshakes(),
            0,
            "the backup is not used while a primary is up"
        );
        a.kill();
        wait_counts(&mut d, "3 on the backup", |c| c.get(&z.url()) == Some(&3));
        a.restart().unwrap();
        d.wait_notice(SOON, "endpoint back up");
        wait_counts(&mut d, "3 back on the primary", |c| {
            c.get(&a.url()) == Some(&3) && c.get(&z.url()).is_none_or(|n| *n == 0)
        });
        // Failback retires backup connections one at a time, after their
        // replacements are up: once recovered, the pool never reported fewer than min.
        let after_recovery = d
            .log
            .iter()
            .skip_while(
                |o| !matches!(o, Observation::Notice(n) if n.text.contains("endpoint back up")),
            )
            .filter_map(|o| match o {
                Observation::Health { healthy, .. } => Some(*healthy),
                _ => None,
            })
            .min();
        assert!(
            after_recovery.is_none_or(|h| h >= 3),
            "dipped to {after_recovery:?}"
        );
    });
}
