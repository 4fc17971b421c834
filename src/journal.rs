//! The incident journal: every incident transition as one JSON line appended to
//! `state_dir/incidents.jsonl` and synced before the next, so a crash loses nothing
//! already said. On start it tells the daemon where incident ids continue and which
//! incidents were left open. The same record is the `json` webhook payload and what
//! `wspoold incidents` reads back.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::event::Severity;
use crate::incident::{Counts, Kind, Status, Transition};

/// The journal's file name inside `state_dir`.
pub const FILE: &str = "incidents.jsonl";

/// One transition of one incident, as journaled and as sent by `format = "json"`.
/// Times are RFC 3339 UTC; a key without a value is `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub incident: u64,
    pub status: Status,
    pub severity: Severity,
    pub pool: String,
    /// The first endpoint involved; `null` for the pool as a whole.
    pub endpoint: Option<String>,
    pub kind: Kind,
    pub summary: String,
    /// The first sign of trouble.
    pub started_at: String,
    pub resolved_at: Option<String>,
    /// From `started_at` to `resolved_at`; `null` while open.
    pub duration_seconds: Option<f64>,
    pub host: String,
    /// The timeline: what wspoold saw and did.
    pub actions: Vec<Action>,
    /// When this transition happened.
    #[serde(default)]
    pub at: String,
    /// Every endpoint involved.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// When wspoold noticed (first death or condition).
    #[serde(default)]
    pub detected_at: Option<String>,
    /// When it became an incident.
    #[serde(default)]
    pub opened_at: Option<String>,
    /// When every condition last cleared.
    #[serde(default)]
    pub recovered_at: Option<String>,
    /// From the first sign to detection.
    #[serde(default)]
    pub detect_seconds: Option<f64>,
    /// From the first sign to recovery.
    #[serde(default)]
    pub recover_seconds: Option<f64>,
    #[serde(default)]
    pub escalated: bool,
    /// The severity before a rise or an escalation.
    #[serde(default)]
    pub previous_severity: Option<Severity>,
    /// Timeline steps beyond those listed.
    #[serde(default)]
    pub more_actions: u64,
    #[serde(default)]
    pub counts: Counts,
    /// The log line of this transition.
    #[serde(default)]
    pub text: String,
}

/// One step of the timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    pub at: String,
    pub what: String,
}

impl Record {
    /// The record of a transition, at wall time `at`.
    pub fn new(t: &Transition, host: &str, at: SystemTime) -> Record {
        let i = &t.incident;
        let since = |end: SystemTime| seconds(end.duration_since(i.began).unwrap_or_default());
        Record {
            incident: i.id,
            status: t.status,
            severity: i.severity,
            pool: i.pool.clone(),
            endpoint: i.endpoints.first().cloned(),
            kind: i.kind,
            summary: i.summary.clone(),
            started_at: format_time(i.began),
            resolved_at: i.resolved.map(format_time),
            duration_seconds: i.resolved.map(since),
            host: host.to_string(),
            actions: i
                .actions
                .iter()
                .map(|s| Action {
                    at: format_time(s.at),
                    what: s.what.clone(),
                })
                .collect(),
            at: format_time(at),
            endpoints: i.endpoints.clone(),
            detected_at: Some(format_time(i.detected)),
            opened_at: Some(format_time(i.opened)),
            recovered_at: i.recovered.map(format_time),
            detect_seconds: Some(since(i.detected)),
            recover_seconds: i.recovered.map(since),
            escalated: i.escalated,
            previous_severity: t.previous,
            more_actions: i.more_actions,
            counts: i.counts.clone(),
            text: t.text.clone(),
        }
    }

    /// Close an incident the daemon left open when it stopped.
    pub fn closed_at_start(mut self, now: SystemTime) -> Record {
        let at = format_time(now);
        self.status = Status::Resolved;
        self.text = format!(
            "resolved at start: wspoold stopped while the incident was open (last: {})",
            self.summary
        );
        self.actions.push(Action {
            at: at.clone(),
            what: "closed at start: wspoold had stopped while it was open".into(),
        });
        self.duration_seconds = parse_time(&self.started_at)
            .and_then(|start| now.duration_since(start).ok())
            .map(seconds);
        self.resolved_at = Some(at.clone());
        self.previous_severity = None;
        self.at = at;
        self
    }
}

fn seconds(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// What the journal held when it was opened.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The id for the next incident.
    pub next_id: u64,
    /// The last record of each incident that was never resolved.
    pub open: Vec<Record>,
    /// Lines that could not be read (a write torn by a crash), as warnings.
    pub skipped: Vec<String>,
}

/// The open journal file.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
}

impl Journal {
    /// Open (creating `dir` and the file if needed) and read what is there. Errors
    /// name the directory or file.
    pub fn open(dir: &Path) -> io::Result<(Journal, Recovered)> {
        let named = |path: &Path| {
            let path = path.display().to_string();
            move |e: io::Error| io::Error::new(e.kind(), format!("{path}: {e}"))
        };
        std::fs::create_dir_all(dir).map_err(named(dir))?;
        let path = dir.join(FILE);
        Journal::open_file(path.clone()).map_err(named(&path))
    }

    fn open_file(path: PathBuf) -> io::Result<(Journal, Recovered)> {
        let (records, skipped) = match File::open(&path) {
            Ok(file) => read_lines(file, &path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => (Vec::new(), Vec::new()),
            Err(e) => return Err(e),
        };
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        // A torn last line must not swallow the next record.
        let len = file.metadata()?.len();
        if len > 0 && !ends_with_newline(&path)? {
            file.write_all(b"\n")?;
        }
        let next_id = records
            .iter()
            .map(|r| r.incident)
            .max()
            .map_or(1, |m| m + 1);
        let mut last: std::collections::BTreeMap<u64, Record> = Default::default();
        for record in records {
            last.insert(record.incident, record);
        }
        let open = last
            .into_values()
            .filter(|r| r.status != Status::Resolved)
            .collect();
        let recovered = Recovered {
            next_id,
            open,
            skipped,
        };
        Ok((Journal { path, file }, recovered))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one record and sync it to disk.
    pub fn append(&mut self, record: &Record) -> io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()
    }
}

fn ends_with_newline(path: &Path) -> io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = File::open(path)?;
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

/// Every record in a journal file, and a warning for each line that is not one.
pub fn read(path: &Path) -> io::Result<(Vec<Record>, Vec<String>)> {
    read_lines(File::open(path)?, path)
}

fn read_lines(file: File, path: &Path) -> io::Result<(Vec<Record>, Vec<String>)> {
    let mut records = Vec::new();
    let mut skipped = Vec::new();
    for (n, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Record>(&line) {
            Ok(record) => records.push(record),
            Err(e) => skipped.push(format!(
                "{}:{}: skipped a line that is not an incident record ({e})",
                path.display(),
                n + 1
            )),
        }
    }
    Ok((records, skipped))
}

/// `2026-11-23T16:22:45.123Z`.
pub fn format_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Reads what [`format_time`] writes (the fraction optional, `Z` or `+00:00`).
pub fn parse_time(s: &str) -> Option<SystemTime> {
    let s = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00"))?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<u64>().ok());
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 || sec > 60 {
        return None;
    }
    let nanos = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
        digits.parse::<u32>().ok()?
    };
    let days = u64::try_from(days_from_civil(y, m, day)).ok()?;
    let secs = days * 86_400 + h * 3600 + min * 60 + sec;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (the era
/// arithmetic of Howard Hinnant's "chrono-Compatible Low-Level Date Algorithms").
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
#[path = "journal_tests.rs"]
mod tests;
