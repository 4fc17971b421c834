//! The review folds a journal's records into rows and per-pool figures.

use std::time::{Duration, Instant, UNIX_EPOCH};

use super::*;
use crate::incident::{Active, Kind, Settings, Tracker};

const T0: u64 = 1_795_449_765;

/// Records of a scripted outage per incident: endpoint `url` down at `start` (after a
/// death whose last frame was 0.5 s before), healthy `recover` seconds after its first
/// sign, resolved 30 s later.
fn outage(
    tracker: &mut Tracker,
    next: &mut u64,
    t0: Instant,
    start: u64,
    recover: u64,
    url: &str,
) -> Vec<Record> {
    let at = |s: f64| t0 + Duration::from_secs_f64(s);
    let start = start as f64;
    tracker.died(at(start + 0.5), Some(at(start)), false, at(start + 0.5));
    tracker.healed(true);
    let down = Active {
        kind: Kind::EndpointDown,
        severity: Severity::Warning,
        endpoints: vec![url.to_string()],
        text: format!("endpoint {url} down"),
    };
    let mut out = tracker.update(vec![down], at(start + 1.0), next);
    let healthy = start + recover as f64;
    out.extend(tracker.update(vec![], at(healthy), next));
    out.extend(tracker.update(vec![], at(healthy + 30.0), next));
    out.iter()
        .map(|t| Record::new(t, "h", UNIX_EPOCH + Duration::from_secs(T0)))
        .collect()
}

fn journal() -> Vec<Record> {
    let t0 = Instant::now();
    let settings = Settings {
        resolve_after: Duration::from_secs(30),
        escalate_after: Duration::ZERO,
        escalate_failures: 0,
    };
    let epoch = (t0, UNIX_EPOCH + Duration::from_secs(T0));
    let mut market = Tracker::new("market", settings, epoch);
    let mut game = Tracker::new("game", settings, epoch);
    let mut next = 1;
    let mut records = outage(&mut market, &mut next, t0, 0, 10, "ws://a/");
    records.extend(outage(&mut game, &mut next, t0, 100, 4, "ws://g/"));
    records.extend(outage(&mut market, &mut next, t0, 200, 20, "ws://a/"));
    records.extend(outage(&mut market, &mut next, t0, 300, 2, "ws://b/"));
    records
}

#[test]
fn one_row_per_incident_with_detect_and_recover_times() {
    let records = journal();
    assert_eq!(
        records.len(),
        12,
        "firing, recovered, resolved per incident"
    );
    let review = review(
        &records,
        &Filter::default(),
        UNIX_EPOCH + Duration::from_secs(T0 + 1000),
    );
    let ids: Vec<u64> = review.incidents.iter().map(|r| r.incident).collect();
    assert_eq!(ids, [1, 2, 3, 4]);
    let first = &review.incidents[0];
    assert_eq!(first.pool, "market");
    assert_eq!(first.kind, "endpoint_down");
    assert_eq!(first.status, "resolved");
    assert_eq!(first.detect_seconds, Some(0.5));
    assert_eq!(first.recover_seconds, Some(10.0));
    assert_eq!(first.counts.heals, 1);
    assert!(!first.escalated);
}

#[test]
fn per_pool_figures_rank_the_worst_endpoints() {
    let review = review(
        &journal(),
        &Filter::default(),
        UNIX_EPOCH + Duration::from_secs(T0 + 1000),
    );
    let market = review.pools.iter().find(|p| p.pool == "market").unwrap();
    assert_eq!(market.incidents, 3);
    let mean = market.mean_recover_seconds.unwrap();
    assert!((mean - 32.0 / 3.0).abs() < 1e-9, "{mean}");
    assert_eq!(market.p95_recover_seconds, Some(20.0));
    assert_eq!((market.heals, market.failovers), (3, 3));
    assert_eq!(market.worst_endpoints[0].endpoint, "ws://a/");
    assert_eq!(market.worst_endpoints[0].incidents, 2);
    assert_eq!(market.worst_endpoints[1].endpoint, "ws://b/");

    let mut table = Vec::new();
    print_table(&review, &mut table).unwrap();
    let table = String::from_utf8(table).unwrap();
    assert!(table.starts_with("ID  SEVERITY  POOL"), "{table}");
    assert!(table.contains("ws://a/ (2), ws://b/ (1)"), "{table}");
    assert_eq!(table.lines().count(), 1 + 4 + 1 + 1 + 2, "{table}");
}

#[test]
fn pool_and_since_select_incidents() {
    let records = journal();
    let by_pool = Filter {
        pool: Some("game".into()),
        ..Filter::default()
    };
    let now = UNIX_EPOCH + Duration::from_secs(T0 + 1000);
    let ids: Vec<u64> = review(&records, &by_pool, now)
        .incidents
        .iter()
        .map(|r| r.incident)
        .collect();
    assert_eq!(ids, [2]);
    // Every record was written at T0 (the records' wall clock is fixed): a window
    // that ends before it selects nothing, one that covers it everything.
    let recent = Filter {
        since: Some(Duration::from_secs(60)),
        ..Filter::default()
    };
    assert!(review(&records, &recent, now).incidents.is_empty());
    assert_eq!(
        review(&records, &recent, UNIX_EPOCH + Duration::from_secs(T0 + 10))
            .incidents
            .len(),
        4
    );
    assert_eq!(parse_since("24h"), Ok(Duration::from_secs(86_400)));
    assert_eq!(parse_since("7d"), Ok(Duration::from_secs(7 * 86_400)));
    assert!(parse_since("soon").unwrap_err().contains("not \"soon\""));
}
