//! The snapshot the monitor publishes for the admin endpoint, and the one-line
//! summary systemd shows (`STATUS=`).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use super::Monitor;
use crate::journal::format_time;
use crate::metrics::Counts;
use crate::status::{EndpointStatus, IncidentStatus, PoolStatus, SinkStatus, Status};

/// Round-trip percentiles cover this much of the recent past.
const RTT_WINDOW: Duration = Duration::from_secs(60);

impl Monitor {
    /// Build the snapshot, hand it to the admin endpoint, and tell systemd the gist.
    pub(super) fn publish(&mut self, now: Instant) {
        self.last_publish = Some(now);
        let mut pools = Vec::new();
        let mut incidents = Vec::new();
        for entry in self.pools.iter_mut().filter(|e| !e.gone) {
            let current: Vec<Counts> = entry.stats.iter().map(|s| s.rtt.read()).collect();
            while entry
                .rtt_window
                .front()
                .is_some_and(|(at, _)| now.saturating_duration_since(*at) > RTT_WINDOW)
            {
                entry.rtt_window.pop_front();
            }
            let oldest = entry.rtt_window.front().map(|(_, c)| c.clone());
            entry.rtt_window.push_back((now, current.clone()));
            let views = entry.state.endpoint_views();
            let endpoints = views
                .into_iter()
                .enumerate()
                .map(|(slot, view)| {
                    let total = current.get(slot).cloned().unwrap_or_default();
                    let recent = match oldest.as_ref().and_then(|o| o.get(slot)) {
                        Some(earlier) => total.since(earlier),
                        None => total.clone(),
                    };
                    let stats = &entry.stats[slot];
                    let ms = |s: f64| s * 1000.0;
                    EndpointStatus {
                        connections: [
                            ("connecting", view.connecting),
                            ("idle", view.idle),
                            ("leased", view.leased),
                            ("retiring", view.retiring),
                        ]
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                        rtt_p50_ms: recent.quantile(0.5).map(ms),
                        rtt_p99_ms: recent.quantile(0.99).map(ms),
                        srtt_ms: view.srtt.map(|d| ms(d.as_secs_f64())),
                        heartbeat_timeout_ms: ms(view.timeout.as_secs_f64()),
                        connects: entry.connects.get(&view.url).cloned().unwrap_or_default(),
                        deaths: entry.deaths.get(&view.url).cloned().unwrap_or_default(),
                        messages_to_upstream: stats.to_upstream.load(Ordering::Relaxed),
                        messages_to_client: stats.to_client.load(Ordering::Relaxed),
                        rtt: total,
                        url: view.url,
                        backup: view.backup,
                        state: view.state.label().to_string(),
                        out_for_s: view
                            .out_since
                            .map(|t| now.saturating_duration_since(t).as_secs_f64()),
                        damped: view.damped,
                    }
                })
                .collect();
            let pool = &entry.state;
            pools.push(PoolStatus {
                name: entry.config.name.clone(),
                path: entry.config.path.clone(),
                min: pool.min(),
                max: pool.max(),
                healthy: pool.healthy(),
                sessions: pool.sessions(),
                waiting: pool.waiting(),
                draining: entry.drain_until.is_some(),
                healed: entry.sessions.healed,
                heal_failed: entry.sessions.heal_failed,
                refused: entry.sessions.refused,
                endpoints,
                heal_seconds: entry.heal_seconds.clone(),
            });
            if let Some(open) = entry.incidents.open() {
                incidents.push(IncidentStatus {
                    id: open.id,
                    pool: open.pool.clone(),
                    kind: open.kind.label().to_string(),
                    severity: open.severity.label().to_string(),
                    state: if open.recovered.is_some() {
                        "recovered"
                    } else {
                        "open"
                    }
                    .to_string(),
                    opened_at: format_time(open.opened),
                    open_for_s: SystemTime::now()
                        .duration_since(open.opened)
                        .unwrap_or_default()
                        .as_secs_f64(),
                    escalated: open.escalated,
                    endpoints: open.endpoints.clone(),
                    summary: open.summary.clone(),
                });
            }
        }
        // A pool removed and added again while the old one drains: one set of series.
        let live: Vec<String> = pools
            .iter()
            .filter(|p| !p.draining)
            .map(|p| p.name.clone())
            .collect();
        pools.retain(|p| !p.draining || !live.contains(&p.name));
        let summary = self.summary(&pools, &incidents);
        let status = Status {
            host: self.host.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: format_time(self.started),
            at: format_time(SystemTime::now()),
            live: true,
            config: self.config.origin.clone(),
            config_loaded_at: format_time(self.config_loaded),
            pools,
            incidents,
            alerts: self.sinks(),
        };
        self.published.publish(status);
        if let Some(notifier) = &mut self.notifier {
            notifier.status(&summary);
        }
    }

    fn sinks(&self) -> Vec<SinkStatus> {
        let syslog = self.alerts.syslog();
        let mut sinks = vec![SinkStatus {
            name: "syslog".to_string(),
            sent: syslog.sent.load(Ordering::Relaxed),
            failed: syslog.failed.load(Ordering::Relaxed),
            retried: 0,
            dropped: syslog.dropped.load(Ordering::Relaxed) + self.alerts.dropped(),
        }];
        for (name, stats) in self.alerts.webhooks() {
            sinks.push(SinkStatus {
                name: name.clone(),
                sent: stats.sent.load(Ordering::Relaxed),
                failed: stats.failed.load(Ordering::Relaxed),
                retried: stats.retried.load(Ordering::Relaxed),
                dropped: stats.dropped.load(Ordering::Relaxed),
            });
        }
        sinks
    }

    /// "2 pools: market 4/4, orders 1/2 (b.example down); 1 incident open".
    fn summary(&self, pools: &[PoolStatus], incidents: &[IncidentStatus]) -> String {
        let each: Vec<String> = pools
            .iter()
            .filter(|p| !p.draining)
            .map(|p| {
                let out: Vec<&str> = p
                    .endpoints
                    .iter()
                    .filter(|e| e.state != "up")
                    .map(|e| e.url.as_str())
                    .collect();
                let out = if out.is_empty() {
                    String::new()
                } else {
                    format!(" ({} not up)", out.join(", "))
                };
                format!(
                    "{} {}/{} up, {} session(s){out}",
                    p.name, p.healthy, p.min, p.sessions
                )
            })
            .collect();
        let open = match incidents.len() {
            0 => "no incident open".to_string(),
            n => format!("{n} incident(s) open"),
        };
        format!("{}; {open}", each.join("; "))
    }
}
