//! `wspoold incidents`: the post-incident review, read back from the journal. One row
//! per incident (id, severity, pool, kind, start, time to detect, time to recover,
//! escalated, what was done), then per pool the count, mean and p95 time to recover,
//! heals, failovers and the endpoints most often involved. A table for people, JSON
//! (`--json`) for scripts.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::event::{Severity, human};
use crate::incident::{Counts, Status};
use crate::journal::{Action, Record, parse_time};

/// What to review.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Incidents active within this long before now.
    pub since: Option<Duration>,
    pub pool: Option<String>,
}

/// One incident, folded from its records.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub incident: u64,
    pub severity: Severity,
    pub pool: String,
    pub kind: String,
    /// `open` or `resolved`.
    pub status: &'static str,
    pub started_at: String,
    pub resolved_at: Option<String>,
    pub detect_seconds: Option<f64>,
    pub recover_seconds: Option<f64>,
    pub duration_seconds: Option<f64>,
    pub escalated: bool,
    pub endpoints: Vec<String>,
    pub counts: Counts,
    pub summary: String,
    pub actions: Vec<Action>,
}

/// One pool's figures over the rows.
#[derive(Debug, Clone, Serialize)]
pub struct PoolFigures {
    pub pool: String,
    pub incidents: usize,
    pub mean_recover_seconds: Option<f64>,
    pub p95_recover_seconds: Option<f64>,
    pub heals: u64,
    pub failovers: u64,
    /// Endpoints by how many incidents involved them, worst first.
    pub worst_endpoints: Vec<EndpointFigures>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EndpointFigures {
    pub endpoint: String,
    pub incidents: usize,
    /// Summed time to recover of those incidents.
    pub recover_seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct Review {
    pub incidents: Vec<Row>,
    pub pools: Vec<PoolFigures>,
}

/// Fold journal records into one row per incident, keeping those `filter` selects.
pub fn review(records: &[Record], filter: &Filter, now: SystemTime) -> Review {
    let mut by_id: BTreeMap<u64, Vec<&Record>> = BTreeMap::new();
    for record in records {
        by_id.entry(record.incident).or_default().push(record);
    }
    let cutoff = filter.since.and_then(|s| now.checked_sub(s));
    let mut rows = Vec::new();
    for (id, records) in by_id {
        let last = records[records.len() - 1];
        if filter.pool.as_ref().is_some_and(|p| *p != last.pool) {
            continue;
        }
        // Active within the window: still open, or its last word came after the cutoff.
        let latest = records.iter().filter_map(|r| parse_time(&r.at)).max();
        let resolved = last.status == Status::Resolved;
        if let Some(cutoff) = cutoff
            && resolved
            && latest.is_some_and(|t| t < cutoff)
        {
            continue;
        }
        rows.push(Row {
            incident: id,
            severity: records
                .iter()
                .map(|r| r.severity)
                .max()
                .unwrap_or(last.severity),
            pool: last.pool.clone(),
            kind: last.kind.label().to_string(),
            status: if resolved { "resolved" } else { "open" },
            started_at: records[0].started_at.clone(),
            resolved_at: last.resolved_at.clone(),
            detect_seconds: last.detect_seconds,
            recover_seconds: records.iter().rev().find_map(|r| r.recover_seconds),
            duration_seconds: last.duration_seconds,
            escalated: records.iter().any(|r| r.escalated),
            endpoints: last.endpoints.clone(),
            counts: last.counts.clone(),
            summary: last.summary.clone(),
            actions: last.actions.clone(),
        });
    }
    let pools = figures(&rows);
    Review {
        incidents: rows,
        pools,
    }
}

fn figures(rows: &[Row]) -> Vec<PoolFigures> {
    let mut pools: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for row in rows {
        pools.entry(&row.pool).or_default().push(row);
    }
    pools
        .into_iter()
        .map(|(pool, rows)| {
            let mut recover: Vec<f64> = rows.iter().filter_map(|r| r.recover_seconds).collect();
            recover.sort_by(f64::total_cmp);
            let mean =
                (!recover.is_empty()).then(|| recover.iter().sum::<f64>() / recover.len() as f64);
            let p95 = (!recover.is_empty()).then(|| {
                let rank = (0.95 * recover.len() as f64).ceil() as usize;
                recover[rank.clamp(1, recover.len()) - 1]
            });
            let mut endpoints: BTreeMap<&str, (usize, f64)> = BTreeMap::new();
            for row in &rows {
                for endpoint in &row.endpoints {
                    let e = endpoints.entry(endpoint).or_default();
                    e.0 += 1;
                    e.1 += row.recover_seconds.unwrap_or(0.0);
                }
            }
            let mut worst: Vec<EndpointFigures> = endpoints
                .into_iter()
                .map(|(endpoint, (incidents, secs))| EndpointFigures {
                    endpoint: endpoint.to_string(),
                    incidents,
                    recover_seconds: secs,
                })
                .collect();
            worst.sort_by(|a, b| {
                b.incidents
                    .cmp(&a.incidents)
                    .then(b.recover_seconds.total_cmp(&a.recover_seconds))
            });
            worst.truncate(3);
            PoolFigures {
                pool: pool.to_string(),
                incidents: rows.len(),
                mean_recover_seconds: mean,
                p95_recover_seconds: p95,
                heals: rows.iter().map(|r| r.counts.heals).sum(),
                failovers: rows.iter().map(|r| r.counts.failovers).sum(),
                worst_endpoints: worst,
            }
        })
        .collect()
}

fn secs(s: Option<f64>) -> String {
    s.map_or_else(
        || "-".to_string(),
        |s| human(Duration::from_secs_f64(s.max(0.0))),
    )
}

/// What was done, in a few words.
fn actions(c: &Counts) -> String {
    let mut parts = vec![format!("{} died, {} reconnected", c.deaths, c.reconnects)];
    if c.failed_attempts > 0 {
        parts.push(format!("{} failed attempts", c.failed_attempts));
    }
    if c.heals > 0 {
        parts.push(format!("{} healed ({} failover)", c.heals, c.failovers));
    }
    if c.heal_failures > 0 {
        parts.push(format!("{} not healed", c.heal_failures));
    }
    parts.join(", ")
}

/// Print the review as two tables.
pub fn print_table(review: &Review, out: &mut dyn Write) -> io::Result<()> {
    if review.incidents.is_empty() {
        return writeln!(out, "no incidents");
    }
    let rows: Vec<[String; 9]> = review
        .incidents
        .iter()
        .map(|r| {
            [
                r.incident.to_string(),
                r.severity.label().to_string(),
                r.pool.clone(),
                r.kind.clone(),
                r.started_at.clone(),
                secs(r.detect_seconds),
                if r.status == "open" && r.recover_seconds.is_none() {
                    "open".to_string()
                } else {
                    secs(r.recover_seconds)
                },
                if r.escalated { "yes" } else { "no" }.to_string(),
                actions(&r.counts),
            ]
        })
        .collect();
    let head = [
        "ID",
        "SEVERITY",
        "POOL",
        "KIND",
        "STARTED",
        "DETECT",
        "RECOVER",
        "ESCALATED",
        "ACTIONS",
    ];
    table(out, &head, &rows)?;
    writeln!(out)?;
    let pools: Vec<[String; 7]> = review
        .pools
        .iter()
        .map(|p| {
            let worst = p
                .worst_endpoints
                .iter()
                .map(|e| format!("{} ({})", e.endpoint, e.incidents))
                .collect::<Vec<_>>()
                .join(", ");
            [
                p.pool.clone(),
                p.incidents.to_string(),
                secs(p.mean_recover_seconds),
                secs(p.p95_recover_seconds),
                p.heals.to_string(),
                p.failovers.to_string(),
                if worst.is_empty() { "-".into() } else { worst },
            ]
        })
        .collect();
    let head = [
        "POOL",
        "INCIDENTS",
        "MEAN RECOVER",
        "P95 RECOVER",
        "HEALS",
        "FAILOVERS",
        "WORST ENDPOINTS",
    ];
    table(out, &head, &pools)
}

/// Left-aligned columns, two spaces apart; the last column unpadded.
fn table<const N: usize>(
    out: &mut dyn Write,
    head: &[&str; N],
    rows: &[[String; N]],
) -> io::Result<()> {
    let mut widths = head.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == N {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        text
    };
    writeln!(out, "{}", line(head.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

/// `--since`: a duration such as "24h", "90m" or "7d".
pub fn parse_since(text: &str) -> Result<Duration, String> {
    let parsed = match text.strip_suffix('d') {
        Some(days) => days
            .parse::<u64>()
            .map(|d| Duration::from_secs(d * 86_400))
            .map_err(|_| String::new()),
        None => crate::config::parse_duration(text),
    };
    parsed.map_err(|_| format!("--since takes a duration such as 24h, 90m or 7d, not {text:?}"))
}

#[cfg(test)]
#[path = "review_tests.rs"]
mod tests;
