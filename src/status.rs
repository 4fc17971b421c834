//! The daemon's state as the admin endpoint shows it: a snapshot the monitor publishes
//! (never its own state), served as JSON at `/status`, as Prometheus text at
//! `/metrics`, judged at `/healthz`, and printed as a table by `wspoold status`.

use std::collections::BTreeMap;
use std::io::{self, Write};

use serde::{Deserialize, Serialize};

use crate::metrics::Counts;

/// The whole daemon.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub host: String,
    pub version: String,
    /// RFC 3339 UTC.
    pub started_at: String,
    /// When the monitor published this snapshot.
    pub at: String,
    /// The monitor turned its loop recently (set by the admin server when it serves).
    pub live: bool,
    /// The configuration file in force, and when it was loaded.
    pub config: String,
    pub config_loaded_at: String,
    pub pools: Vec<PoolStatus>,
    pub incidents: Vec<IncidentStatus>,
    pub alerts: Vec<SinkStatus>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PoolStatus {
    pub name: String,
    pub path: String,
    pub min: usize,
    pub max: usize,
    /// Connections up and not retiring.
    pub healthy: usize,
    /// Sessions on a connection or healing.
    pub sessions: usize,
    /// Clients waiting for a connection.
    pub waiting: usize,
    /// Removed by a reload; its sessions are closing.
    pub draining: bool,
    pub healed: u64,
    pub heal_failed: u64,
    /// Clients refused with 1013.
    pub refused: u64,
    pub endpoints: Vec<EndpointStatus>,
    #[serde(skip)]
    pub heal_seconds: Counts,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EndpointStatus {
    pub url: String,
    pub backup: bool,
    /// up, suspect, down or probing.
    pub state: String,
    /// Seconds since it left rotation (suspect, down and probing are one outage);
    /// absent while up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_for_s: Option<f64>,
    /// Kept out of rotation for flapping.
    pub damped: bool,
    /// By state: connecting, idle, leased, retiring (every state present).
    pub connections: BTreeMap<String, u64>,
    /// Heartbeat round trips over the last minute.
    pub rtt_p50_ms: Option<f64>,
    pub rtt_p99_ms: Option<f64>,
    /// The smoothed round trip and the heartbeat timeout now in force.
    pub srtt_ms: Option<f64>,
    pub heartbeat_timeout_ms: f64,
    /// Connection attempts by result (ok, or the failure's cause).
    pub connects: BTreeMap<String, u64>,
    /// Connections that ended after they were up, by cause.
    pub deaths: BTreeMap<String, u64>,
    pub messages_to_upstream: u64,
    pub messages_to_client: u64,
    #[serde(skip)]
    pub rtt: Counts,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IncidentStatus {
    pub id: u64,
    pub pool: String,
    pub kind: String,
    pub severity: String,
    /// open or recovered (waiting out `resolve_after`).
    pub state: String,
    pub opened_at: String,
    /// Seconds since it opened.
    #[serde(default)]
    pub open_for_s: f64,
    pub escalated: bool,
    pub endpoints: Vec<String>,
    pub summary: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SinkStatus {
    pub name: String,
    pub sent: u64,
    pub failed: u64,
    pub retried: u64,
    pub dropped: u64,
}

impl Status {
    /// Why the daemon is not healthy, one line per reason; empty when it is: the
    /// monitor is live and every pool (but those draining) has a healthy connection.
    pub fn unhealthy(&self) -> Vec<String> {
        let mut why = Vec::new();
        if !self.live {
            why.push(format!(
                "monitor: no progress since {}; the daemon is wedged",
                self.at
            ));
        }
        for pool in self.pools.iter().filter(|p| !p.draining) {
            if pool.healthy == 0 {
                let endpoints = pool
                    .endpoints
                    .iter()
                    .map(|e| format!("{} {}", e.url, e.state))
                    .collect::<Vec<_>>()
                    .join(", ");
                why.push(format!(
                    "pool {}: no healthy connection (endpoints: {endpoints})",
                    pool.name
                ));
            }
        }
        why
    }
}

fn ms(v: Option<f64>) -> String {
    match v {
        None => "-".to_string(),
        Some(v) if v < 10.0 => format!("{v:.2}ms"),
        Some(v) => format!("{v:.0}ms"),
    }
}

/// A duration in whole units for the table: 45s, 12m30s, 3h05m, 2d04h.
fn short(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// "down 12m30s", "up/damped (b)": the state, how long it has been out, a backup.
fn state_label(e: &EndpointStatus) -> String {
    let mut state = e.state.clone();
    if e.damped {
        state.push_str("/damped");
    }
    if let Some(out) = e.out_for_s {
        state.push_str(&format!(" {}", short(out)));
    }
    if e.backup {
        state.push_str(" (b)");
    }
    state
}

/// The table an operator reads at a glance.
pub fn print_table(status: &Status, out: &mut impl Write) -> io::Result<()> {
    writeln!(
        out,
        "wspoold {} on {}, up since {}, config {} (loaded {})",
        status.version, status.host, status.started_at, status.config, status.config_loaded_at
    )?;
    let why = status.unhealthy();
    if why.is_empty() {
        writeln!(out, "health: ok")?;
    } else {
        for line in &why {
            writeln!(out, "health: {line}")?;
        }
    }
    for pool in &status.pools {
        writeln!(out)?;
        let draining = if pool.draining { ", draining" } else { "" };
        writeln!(
            out,
            "pool {} ({}{draining}): {} healthy (min {}, max {}), {} session(s), {} waiting; heals {} ok, {} failed; {} refused",
            pool.name,
            pool.path,
            pool.healthy,
            pool.min,
            pool.max,
            pool.sessions,
            pool.waiting,
            pool.healed,
            pool.heal_failed,
            pool.refused
        )?;
        let width = pool
            .endpoints
            .iter()
            .map(|e| e.url.len())
            .max()
            .unwrap_or(8)
            .max(8);
        let states: Vec<String> = pool.endpoints.iter().map(state_label).collect();
        let state_width = states
            .iter()
            .map(|s| s.chars().count())
            .max()
            .unwrap_or(5)
            .max(5);
        writeln!(
            out,
            "  {:<width$}  {:<state_width$} {:>5} {:>5} {:>6} {:>5}  {:>8} {:>8}  {:>7}  FAILURES",
            "ENDPOINT", "STATE", "DIAL", "IDLE", "LEASED", "RETIR", "RTT p50", "RTT p99", "TIMEOUT"
        )?;
        for (e, state) in pool.endpoints.iter().zip(states) {
            let n = |k: &str| e.connections.get(k).copied().unwrap_or(0);
            // Deaths of live connections and failed attempts, by cause.
            let mut failures = e.deaths.clone();
            for (result, n) in e.connects.iter().filter(|(r, _)| *r != "ok") {
                *failures.entry(result.clone()).or_default() += n;
            }
            failures.remove("retired");
            let deaths = if failures.is_empty() {
                "-".to_string()
            } else {
                failures
                    .iter()
                    .map(|(cause, n)| format!("{cause}×{n}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            writeln!(
                out,
                "  {:<width$}  {:<state_width$} {:>5} {:>5} {:>6} {:>5}  {:>8} {:>8}  {:>7}  {deaths}",
                e.url,
                state,
                n("connecting"),
                n("idle"),
                n("leased"),
                n("retiring"),
                ms(e.rtt_p50_ms),
                ms(e.rtt_p99_ms),
                ms(Some(e.heartbeat_timeout_ms)),
            )?;
        }
    }
    writeln!(out)?;
    if status.incidents.is_empty() {
        writeln!(out, "incidents: none open")?;
    } else {
        writeln!(out, "incidents:")?;
        for i in &status.incidents {
            let escalated = if i.escalated { ", escalated" } else { "" };
            writeln!(
                out,
                "  #{} {} {} {} for {} in pool {} (since {}){escalated}: {}",
                i.id,
                i.severity,
                i.kind,
                i.state,
                short(i.open_for_s),
                i.pool,
                i.opened_at,
                i.summary
            )?;
        }
    }
    let failing: Vec<String> = status
        .alerts
        .iter()
        .filter(|s| s.failed + s.dropped > 0)
        .map(|s| format!("{} {} failed, {} dropped", s.name, s.failed, s.dropped))
        .collect();
    if !failing.is_empty() {
        writeln!(out, "alerts: {}", failing.join("; "))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_the_table_are_short_and_whole() {
        let cases = [
            (0.4, "0s"),
            (59.9, "59s"),
            (60.0, "1m00s"),
            (750.0, "12m30s"),
            (3600.0 * 3.0 + 300.0, "3h05m"),
            (86400.0 * 2.0 + 3600.0 * 4.0, "2d04h"),
            (-1.0, "0s"),
        ];
        for (secs, shown) in cases {
            assert_eq!(short(secs), shown, "{secs}");
        }
    }

    #[test]
    fn the_table_says_how_long_an_endpoint_and_an_incident_have_been_out() {
        let endpoint = |url: &str, state: &str, out_for_s| EndpointStatus {
            url: url.into(),
            state: state.into(),
            out_for_s,
            ..Default::default()
        };
        let status = Status {
            live: true,
            pools: vec![PoolStatus {
                name: "p".into(),
                path: "/p".into(),
                healthy: 1,
                endpoints: vec![
                    endpoint("ws://a/", "up", None),
                    endpoint("ws://b/", "down", Some(754.2)),
                    EndpointStatus {
                        damped: true,
                        backup: true,
                        ..endpoint("ws://c/", "probing", Some(3.0 * 86400.0))
                    },
                ],
                ..Default::default()
            }],
            incidents: vec![IncidentStatus {
                id: 7,
                pool: "p".into(),
                kind: "endpoint_down".into(),
                severity: "warning".into(),
                state: "open".into(),
                open_for_s: 750.0,
                summary: "endpoint ws://b/ down".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut out = Vec::new();
        print_table(&status, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let row = |url: &str| {
            let line = text.lines().find(|l| l.contains(url)).unwrap();
            line.split_whitespace().take(3).collect::<Vec<_>>()
        };
        assert_eq!(row("ws://a/")[1], "up", "{text}");
        assert_eq!(row("ws://b/")[1..], ["down", "12m34s"], "{text}");
        assert_eq!(row("ws://c/")[1..], ["probing/damped", "3d00h"], "{text}");
        // Columns line up however long a state is: every row's FAILURES ("-") sits
        // under the heading.
        let at = text.lines().find_map(|l| l.find("FAILURES")).unwrap();
        for line in text.lines().filter(|l| l.starts_with("  ws://")) {
            assert_eq!(line.rfind(" -").map(|i| i + 1), Some(at), "{text}");
        }
        assert!(
            text.contains("#7 warning endpoint_down open for 12m30s in pool p"),
            "{text}"
        );
    }
}
