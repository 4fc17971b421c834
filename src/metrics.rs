//! Counters a worker bumps without asking anyone (heartbeat round trips, messages
//! forwarded), histograms, and the Prometheus text rendering of a status snapshot.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::status::Status;

/// The metric families of the external contract (DESIGN.md), every one present in
/// `/metrics` from the start.
pub const FAMILIES: [&str; 11] = [
    "wspoold_connections",
    "wspoold_endpoint_up",
    "wspoold_connects_total",
    "wspoold_deaths_total",
    "wspoold_heartbeat_rtt_seconds",
    "wspoold_sessions",
    "wspoold_heals_total",
    "wspoold_heal_seconds",
    "wspoold_messages_total",
    "wspoold_incidents_open",
    "wspoold_alerts_total",
];

/// Histogram bucket bounds, in seconds: from a loopback round trip to a slow heal.
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const SLOTS: usize = BUCKETS.len() + 1;

/// The bucket a duration falls in: the first bound at or above it, else the last slot.
fn slot(d: Duration) -> usize {
    let secs = d.as_secs_f64();
    BUCKETS
        .iter()
        .position(|b| secs <= *b)
        .unwrap_or(BUCKETS.len())
}

/// A histogram many threads observe into.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; SLOTS],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        self.counts[slot(d)].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn read(&self) -> Counts {
        let mut counts = Counts::default();
        for (to, from) in counts.buckets.iter_mut().zip(&self.counts) {
            *to = from.load(Ordering::Relaxed);
        }
        counts.sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        counts
    }
}

/// A histogram's counts at one moment: per bucket (not cumulative), the last one
/// above every bound; and the sum of what was observed, in seconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub buckets: [u64; SLOTS],
    pub sum: f64,
}

impl Counts {
    pub fn observe(&mut self, d: Duration) {
        self.buckets[slot(d)] += 1;
        self.sum += d.as_secs_f64();
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    pub fn add(&mut self, other: &Counts) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.sum += other.sum;
    }

    /// What was observed since `earlier`.
    pub fn since(&self, earlier: &Counts) -> Counts {
        let mut d = self.clone();
        for (a, b) in d.buckets.iter_mut().zip(&earlier.buckets) {
            *a = a.saturating_sub(*b);
        }
        d.sum = (d.sum - earlier.sum).max(0.0);
        d
    }

    /// The `q` quantile, interpolated within its bucket as Prometheus's
    /// `histogram_quantile` does; `None` with nothing observed. Above the last
    /// bound it answers the last bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut below = 0u64;
        for (i, n) in self.buckets.iter().enumerate() {
            if *n == 0 {
                continue;
            }
            if (below + n) as f64 >= rank {
                let Some(upper) = BUCKETS.get(i) else {
                    return Some(BUCKETS[BUCKETS.len() - 1]);
                };
                let lower = if i == 0 { 0.0 } else { BUCKETS[i - 1] };
                let within = (rank - below as f64) / *n as f64;
                return Some(lower + (upper - lower) * within.clamp(0.0, 1.0));
            }
            below += n;
        }
        Some(BUCKETS[BUCKETS.len() - 1])
    }
}

/// What the workers of one endpoint count as they go.
#[derive(Debug, Default)]
pub struct EndpointStats {
    /// Heartbeat round trips: ping written to pong read, for the heartbeats timed.
    pub rtt: Histogram,
    /// Messages from local clients written upstream.
    pub to_upstream: AtomicU64,
    /// Messages from the upstream written to local clients.
    pub to_client: AtomicU64,
}

/// Label values are quoted; backslash, quote and newline escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    /// Start a family: its HELP and TYPE lines.
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Family<'a> {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], counts: &Counts) {
        let mut cumulative = 0;
        for (i, n) in counts.buckets.iter().enumerate() {
            cumulative += n;
            let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&format!("{name}_bucket"), &with_le, cumulative as f64);
        }
        self.sample(&format!("{name}_sum"), labels, counts.sum);
        self.sample(&format!("{name}_count"), labels, cumulative as f64);
    }
}

/// The Prometheus text exposition (format 0.0.4) of a snapshot. Every family is
/// there from the start, with HELP and TYPE, even before it has samples.
pub fn render(status: &Status) -> String {
    let mut out = String::with_capacity(4096);
    let pools = || status.pools.iter();
    let endpoints = || {
        pools().flat_map(|p| {
            p.endpoints
                .iter()
                .map(move |e| (p.name.as_str(), e.url.as_str(), e))
        })
    };

    Family::new(
        &mut out,
        "wspoold_up",
        "gauge",
        "1 while the daemon's monitor is turning its loop.",
    )
    .sample("wspoold_up", &[], f64::from(u8::from(status.live)));

    let mut f = Family::new(
        &mut out,
        "wspoold_connections",
        "gauge",
        "Upstream connections by state: connecting, idle, leased, retiring.",
    );
    for (pool, endpoint, e) in endpoints() {
        for (state, n) in &e.connections {
            f.sample(
                "wspoold_connections",
                &[("pool", pool), ("endpoint", endpoint), ("state", state)],
                *n as f64,
            );
        }
    }

    let mut f = Family::new(
        &mut out,
        "wspoold_endpoint_up",
        "gauge",
        "1 while the endpoint is in rotation (up and not damped).",
    );
    for (pool, endpoint, e) in endpoints() {
        let up = e.state == "up" && !e.damped;
        f.sample(
            "wspoold_endpoint_up",
            &[("pool", pool), ("endpoint", endpoint)],
            f64::from(u8::from(up)),
        );
    }

    counters(
        &mut out,
        "wspoold_connects_total",
        "Connection attempts by result: ok, or why it failed.",
        "result",
        endpoints().map(|(p, u, e)| (p, u, &e.connects)),
    );
    counters(
        &mut out,
        "wspoold_deaths_total",
        "Connections that ended after they were up, by cause.",
        "cause",
        endpoints().map(|(p, u, e)| (p, u, &e.deaths)),
    );

    let mut f = Family::new(
        &mut out,
        "wspoold_heartbeat_rtt_seconds",
        "histogram",
        "Heartbeat round trips, ping written to pong read (one in eight of an idle connection).",
    );
    for (pool, endpoint, e) in endpoints() {
        f.histogram(
            "wspoold_heartbeat_rtt_seconds",
            &[("pool", pool), ("endpoint", endpoint)],
            &e.rtt,
        );
    }

    let mut f = Family::new(
        &mut out,
        "wspoold_sessions",
        "gauge",
        "Local client sessions on a connection or healing.",
    );
    for p in pools() {
        f.sample("wspoold_sessions", &[("pool", &p.name)], p.sessions as f64);
    }

    let mut f = Family::new(
        &mut out,
        "wspoold_heals_total",
        "counter",
        "Sessions whose connection died, by outcome: healed or failed (closed with 1011).",
    );
    for p in pools() {
        for (outcome, n) in [("healed", p.healed), ("failed", p.heal_failed)] {
            f.sample(
                "wspoold_heals_total",
                &[("pool", &p.name), ("outcome", outcome)],
                n as f64,
            );
        }
    }

    let mut f = Family::new(
        &mut out,
        "wspoold_heal_seconds",
        "histogram",
        "From a session's connection dying to the session running on another.",
    );
    for p in pools() {
        f.histogram(
            "wspoold_heal_seconds",
            &[("pool", &p.name)],
            &p.heal_seconds,
        );
    }

    let mut f = Family::new(
        &mut out,
        "wspoold_messages_total",
        "counter",
        "Messages forwarded, by direction: to_upstream or to_client.",
    );
    for p in pools() {
        let up: u64 = p.endpoints.iter().map(|e| e.messages_to_upstream).sum();
        let down: u64 = p.endpoints.iter().map(|e| e.messages_to_client).sum();
        for (direction, n) in [("to_upstream", up), ("to_client", down)] {
            f.sample(
                "wspoold_messages_total",
                &[("pool", &p.name), ("direction", direction)],
                n as f64,
            );
        }
    }

    let mut f = Family::new(
        &mut out,
        "wspoold_incidents_open",
        "gauge",
        "Open incidents by severity.",
    );
    for severity in ["info", "warning", "critical"] {
        let n = status
            .incidents
            .iter()
            .filter(|i| i.severity == severity)
            .count();
        f.sample(
            "wspoold_incidents_open",
            &[("severity", severity)],
            n as f64,
        );
    }

    let mut f = Family::new(
        &mut out,
        "wspoold_alerts_total",
        "counter",
        "Alert deliveries by sink (syslog, or a webhook's name) and result: sent, failed, retried, dropped.",
    );
    for sink in &status.alerts {
        for (result, n) in [
            ("sent", sink.sent),
            ("failed", sink.failed),
            ("retried", sink.retried),
            ("dropped", sink.dropped),
        ] {
            f.sample(
                "wspoold_alerts_total",
                &[("sink", &sink.name), ("result", result)],
                n as f64,
            );
        }
    }
    out
}

fn counters<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    key: &str,
    rows: impl Iterator<Item = (&'a str, &'a str, &'a BTreeMap<String, u64>)>,
) {
    let mut f = Family::new(out, name, "counter", help);
    for (pool, endpoint, counts) in rows {
        for (value, n) in counts {
            f.sample(
                name,
                &[("pool", pool), ("endpoint", endpoint), (key, value)],
                *n as f64,
            );
        }
    }
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
