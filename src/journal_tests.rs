//! The journal on a real file: ids continue, open incidents are found, a torn line
//! is skipped and does not swallow the next record; times format and read back.

use std::time::{Duration, Instant, UNIX_EPOCH};

use super::*;
use crate::incident::{Active, Settings, Tracker};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wspoold-journal-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Firing, then resolved, records of one incident, from a real tracker.
fn records(id: u64) -> Vec<Record> {
    let t0 = Instant::now();
    let epoch = (t0, UNIX_EPOCH + Duration::from_secs(1_795_000_000));
    let settings = Settings {
        resolve_after: Duration::from_secs(30),
        escalate_after: Duration::ZERO,
        escalate_failures: 0,
    };
    let mut tracker = Tracker::new("market", settings, epoch);
    let mut next = id;
    let down = Active {
        kind: Kind::EndpointDown,
        severity: Severity::Warning,
        endpoints: vec!["ws://a/".into()],
        text: "endpoint ws://a/ down".into(),
    };
    let mut out = tracker.update(vec![down], t0, &mut next);
    out.extend(tracker.update(vec![], t0 + Duration::from_secs(5), &mut next));
    out.extend(tracker.update(vec![], t0 + Duration::from_secs(35), &mut next));
    out.iter()
        .map(|t| Record::new(t, "host-1", epoch.1))
        .collect()
}

#[test]
fn times_format_as_rfc3339_utc_and_read_back() {
    let cases = [
        (0, "1970-01-01T00:00:00.000Z"),
        (951_782_400, "2000-02-29T00:00:00.000Z"),
        (1_795_449_765, "2026-11-23T16:02:45.000Z"),
        (4_102_444_799, "2099-12-31T23:59:59.000Z"),
    ];
    for (secs, text) in cases {
        let t = UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(format_time(t), text);
        assert_eq!(parse_time(text), Some(t));
    }
    let t = UNIX_EPOCH + Duration::from_millis(1_795_449_765_123);
    assert_eq!(parse_time(&format_time(t)), Some(t));
    assert_eq!(
        parse_time("2026-11-23T16:02:45+00:00"),
        Some(UNIX_EPOCH + Duration::from_secs(1_795_449_765))
    );
    for bad in [
        "",
        "2026-11-23",
        "2026-13-01T00:00:00Z",
        "2026-11-23T16:02:45",
    ] {
        assert_eq!(parse_time(bad), None, "{bad}");
    }
}

#[test]
fn records_carry_the_json_contract_with_nulls_not_missing_keys() {
    let firing = &records(7)[0];
    let value: serde_json::Value = serde_json::to_value(firing).unwrap();
    for key in [
        "incident",
        "status",
        "severity",
        "pool",
        "endpoint",
        "kind",
        "summary",
        "started_at",
        "resolved_at",
        "duration_seconds",
        "host",
        "actions",
    ] {
        assert!(value.get(key).is_some(), "{key} missing: {value}");
    }
    assert_eq!(value["incident"], 7);
    assert_eq!(value["status"], "firing");
    assert_eq!(value["severity"], "warning");
    assert_eq!(value["kind"], "endpoint_down");
    assert_eq!(value["endpoint"], "ws://a/");
    assert!(value["resolved_at"].is_null());
    assert!(value["duration_seconds"].is_null());
    assert_eq!(value["started_at"], "2026-11-18T11:06:40.000Z");
}

#[test]
fn ids_continue_and_open_incidents_are_found_after_a_restart() {
    let dir = temp_dir("restart");
    let (mut journal, recovered) = Journal::open(&dir).unwrap();
    assert_eq!(recovered.next_id, 1);
    assert!(recovered.open.is_empty());
    for record in records(1) {
        journal.append(&record).unwrap();
    }
    // Incident 2 fires and the daemon dies.
    let open = records(2).remove(0);
    journal.append(&open).unwrap();
    drop(journal);

    let (_, recovered) = Journal::open(&dir).unwrap();
    assert_eq!(recovered.next_id, 3);
    assert_eq!(recovered.open.len(), 1);
    assert_eq!(recovered.open[0].incident, 2);
    assert!(recovered.skipped.is_empty());
    let now = parse_time(&open.started_at).unwrap() + Duration::from_secs(90);
    let closed = recovered.open[0].clone().closed_at_start(now);
    assert_eq!(closed.status, Status::Resolved);
    assert_eq!(closed.duration_seconds, Some(90.0));
    assert!(
        closed
            .text
            .contains("wspoold stopped while the incident was open")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_line_torn_by_a_crash_is_skipped_and_the_next_record_starts_clean() {
    let dir = temp_dir("torn");
    let (mut journal, _) = Journal::open(&dir).unwrap();
    let all = records(4);
    journal.append(&all[0]).unwrap();
    drop(journal);
    let path = dir.join(FILE);
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(br#"{"incident":4,"status":"resol"#).unwrap();
    drop(file);

    let (mut journal, recovered) = Journal::open(&dir).unwrap();
    assert_eq!(recovered.skipped.len(), 1, "{:?}", recovered.skipped);
    assert!(
        recovered.skipped[0].contains("incidents.jsonl:2:"),
        "{}",
        recovered.skipped[0]
    );
    assert_eq!(recovered.open.len(), 1, "4 is still open");
    journal.append(&all[2]).unwrap();
    let (records, skipped) = read(&path).unwrap();
    assert_eq!(skipped.len(), 1);
    assert_eq!(records.len(), 2);
    assert_eq!(records[1].status, Status::Resolved);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unwritable_state_dir_is_an_error_naming_it() {
    let err = Journal::open(Path::new("/proc/wspoold-cannot-be-here")).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("/proc/wspoold-cannot-be-here: "), "{text}");
}
