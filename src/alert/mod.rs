//! The alerter thread: takes notices and incident transitions from the monitor and
//! delivers them. Incident transitions are journaled first (synced), then queued to
//! each webhook receiver that wants them, then logged. Lines go to a log thread of
//! their own that writes syslog and, in the foreground, stderr: a syslog daemon that
//! stops reading blocks only that thread. Nothing blocks the monitor: notices come
//! over a bounded queue that drops and counts when full, incident transitions (a
//! handful per incident) over an unbounded one, so none is lost.
//!
//! A reload hands the alerter a new `[alerts]`: receivers whose settings did not change
//! keep running with their queues; removed or changed ones deliver what they had queued
//! and end; new ones start; a syslog change reaches the log thread with its next line.

pub mod payload;
pub mod syslog;
pub mod webhook;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, select};
use parking_lot::RwLock;

use crate::config::{AlertsConfig, WebhookConfig};
use crate::event::{Notice, Severity};
use crate::incident::Status;
use crate::journal::{Journal, Record};

/// Notices waiting for the alerter before new ones are dropped.
const QUEUE: usize = 4096;
/// How long shutdown waits for webhook receivers to take what is queued.
const FLUSH: Duration = Duration::from_secs(5);

/// Each webhook receiver's name and counters, as the monitor reads them for metrics.
type Receivers = Vec<(String, Arc<webhook::Stats>)>;

/// The monitor's side of the alerter.
#[derive(Clone)]
pub struct Alerts {
    tx: Sender<Notice>,
    incidents: Sender<Box<Record>>,
    dropped: Arc<AtomicU64>,
    webhooks: Arc<RwLock<Receivers>>,
    syslog: Arc<webhook::Stats>,
    reconfigure: Sender<AlertsConfig>,
}

impl Alerts {
    /// Queue a notice without blocking.
    pub fn send(&self, notice: Notice) {
        match self.tx.try_send(notice) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Queue an incident transition: journaled, sent to webhooks, logged.
    pub fn incident(&self, record: Record) {
        let _ = self.incidents.send(Box::new(record));
    }

    /// Notices dropped because the alerter fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Lines written to syslog, failed (written to stderr instead), dropped.
    pub fn syslog(&self) -> &webhook::Stats {
        &self.syslog
    }

    /// Each webhook receiver's name and counters.
    pub fn webhooks(&self) -> Receivers {
        self.webhooks.read().clone()
    }

    /// A reload's `[alerts]`: applied by the alerter thread, which says what changed.
    pub fn reconfigure(&self, config: AlertsConfig) {
        let _ = self.reconfigure.send(config);
    }
}

/// Whether log lines are copied to stderr as well as syslog. Lines go to stderr
/// whenever syslog fails, whatever this says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Stderr {
    /// Embedded (demo, tests, benchmarks): only where syslog fails.
    #[default]
    Never,
    /// In the foreground: every line.
    Always,
    /// Under systemd, stderr is the journal and syslog reaches it too: only while
    /// syslog is off (`syslog = false`).
    UnlessSyslog,
}

/// What the log thread is handed.
enum LogItem {
    Line(Notice),
    /// Write syslog here from now on (`None`: syslog turned off).
    Syslog(Option<syslog::Sink>),
}

/// Where notices and incidents go.
pub struct Alerter {
    rx: Receiver<Notice>,
    incidents: Receiver<Box<Record>>,
    /// Delivery threads' log lines.
    reports: Receiver<Notice>,
    /// Given to each new delivery thread. Held also so that `reports` never
    /// disconnects (with no webhook it would, and a disconnected channel in `select!`
    /// is always ready: a busy loop).
    reports_tx: Sender<Notice>,
    /// A reload's `[alerts]`.
    reconfigure: Receiver<AlertsConfig>,
    /// The `[alerts]` in force.
    config: AlertsConfig,
    dropped: Arc<AtomicU64>,
    reported_dropped: u64,
    /// To the log thread; lines it has no room for are counted in `log_dropped`.
    log: Sender<LogItem>,
    /// A syslog change the log thread had no room for yet; sent before the next line.
    syslog_change: Option<Option<syslog::Sink>>,
    log_dropped: u64,
    /// The log's counters (lines dropped here are counted there too).
    log_stats: Arc<webhook::Stats>,
    log_thread: Option<JoinHandle<()>>,
    journal: Option<Journal>,
    /// The journal failed and the operator was told; said again once it works.
    journal_failing: bool,
    /// The receivers in force, in file order, each with its settings.
    webhooks: Vec<(WebhookConfig, webhook::Handle)>,
    /// Their names and counters, as the monitor reads them for metrics.
    webhook_stats: Arc<RwLock<Receivers>>,
    /// Receivers a reload removed or changed, delivering what they had queued.
    retired: Vec<webhook::Handle>,
    /// The latest firing or escalated record of each open incident, for receivers a
    /// reload starts: they hear of what is open at once.
    open: BTreeMap<u64, Arc<Record>>,
}

impl Alerter {
    /// Build the alerter and its handle, and start a delivery thread per webhook.
    /// `stderr` says when lines are copied to stderr; `journal` is where incidents
    /// are recorded (none if it could not be opened).
    pub fn new(
        config: &AlertsConfig,
        journal: Option<Journal>,
        stderr: Stderr,
    ) -> std::io::Result<(Alerter, Alerts)> {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let (incidents_tx, incidents) = crossbeam_channel::unbounded();
        let (reports_tx, reports) = crossbeam_channel::bounded(QUEUE);
        let (reconfigure_tx, reconfigure) = crossbeam_channel::unbounded();
        let dropped = Arc::new(AtomicU64::new(0));
        let webhooks = config
            .webhooks
            .iter()
            .map(|w| {
                let handle = webhook::Handle::start(w, reports_tx.clone(), Arc::default())?;
                Ok((w.clone(), handle))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let webhook_stats = Arc::new(RwLock::new(stats_of(&webhooks, &[])));
        let (log, lines) = crossbeam_channel::bounded(QUEUE);
        let syslog_stats = Arc::new(webhook::Stats::default());
        let writer = LogWriter {
            lines,
            syslog: config.syslog.then(|| syslog::Sink::new(config)),
            stderr,
            stats: syslog_stats.clone(),
        };
        let log_thread = std::thread::Builder::new()
            .name("log".into())
            .spawn(move || writer.run())?;
        let alerter = Alerter {
            rx,
            incidents,
            reports,
            reports_tx,
            reconfigure,
            config: config.clone(),
            dropped: dropped.clone(),
            reported_dropped: 0,
            log,
            syslog_change: None,
            log_dropped: 0,
            log_stats: syslog_stats.clone(),
            log_thread: Some(log_thread),
            journal,
            journal_failing: false,
            webhooks,
            webhook_stats: webhook_stats.clone(),
            retired: Vec::new(),
            open: BTreeMap::new(),
        };
        let alerts = Alerts {
            tx,
            incidents: incidents_tx,
            dropped,
            webhooks: webhook_stats,
            syslog: syslog_stats.clone(),
            reconfigure: reconfigure_tx,
        };
        Ok((alerter, alerts))
    }

    pub fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("alerter".into())
            .spawn(move || self.run())
    }

    /// Deliver until every sender is gone, then give webhook receivers a bounded time
    /// to take what is queued.
    pub fn run(mut self) {
        loop {
            select! {
                // A reload's [alerts] comes before what the monitor sent after it:
                // nothing it sent later goes to a receiver the reload removed.
                recv(self.incidents) -> record => match record {
                    Ok(record) => {
                        self.take_reconfigure();
                        self.on_incident(*record);
                    }
                    Err(_) => break,
                },
                recv(self.rx) -> notice => match notice {
                    Ok(notice) => {
                        self.take_reconfigure();
                        self.report_drops();
                        self.deliver(&notice);
                    }
                    Err(_) => break,
                },
                recv(self.reports) -> notice => {
                    if let Ok(notice) = notice {
                        self.deliver(&notice);
                    }
                },
                recv(self.reconfigure) -> config => match config {
                    Ok(config) => self.apply(config),
                    Err(_) => break,
                },
            }
        }
        // Every Alerts is gone: both queues are closed; take what is left in them.
        while let Ok(record) = self.incidents.try_recv() {
            self.on_incident(*record);
        }
        while let Ok(notice) = self.rx.try_recv() {
            self.deliver(&notice);
        }
        self.report_drops();
        self.flush_webhooks();
        // The log thread ends once its queue is closed and empty; a syslog that
        // stalls costs it a second a line at most, and shutdown waits for it only so
        // long.
        let (closed, _) = crossbeam_channel::bounded(0);
        drop(std::mem::replace(&mut self.log, closed));
        if let Some(thread) = self.log_thread.take() {
            let deadline = Instant::now() + FLUSH;
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::park_timeout(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }

    fn take_reconfigure(&mut self) {
        while let Ok(config) = self.reconfigure.try_recv() {
            self.apply(config);
        }
    }

    /// A reload's `[alerts]`: keep the receivers whose settings are the same, retire
    /// the rest, start the new ones, and hand syslog changes to the log thread.
    fn apply(&mut self, config: AlertsConfig) {
        self.join_retired();
        let mut said = Vec::new();
        let old = &self.config;
        if (old.syslog, &old.syslog_socket, old.syslog_facility as i32)
            != (
                config.syslog,
                &config.syslog_socket,
                config.syslog_facility as i32,
            )
        {
            self.syslog_change = Some(config.syslog.then(|| syslog::Sink::new(&config)));
            said.push(if config.syslog {
                format!(
                    "syslog to {} ({:?})",
                    config.syslog_socket.display(),
                    config.syslog_facility
                )
            } else {
                "syslog off".to_string()
            });
        }
        let mut running = std::mem::take(&mut self.webhooks);
        let (mut added, mut changed) = (Vec::new(), Vec::new());
        for wanted in &config.webhooks {
            if let Some(i) = running.iter().position(|(c, _)| c == wanted) {
                self.webhooks.push(running.remove(i));
                continue;
            }
            let renewed = running.iter().find(|(c, _)| c.name == wanted.name);
            let stats = renewed.map_or_else(Arc::default, |(_, h)| h.stats.clone());
            let renewed = renewed.is_some();
            match webhook::Handle::start(wanted, self.reports_tx.clone(), stats) {
                Ok(handle) => {
                    for record in self.open.values().filter(|r| handle.wants(r)) {
                        handle.push(record.clone());
                    }
                    self.webhooks.push((wanted.clone(), handle));
                    if renewed { &mut changed } else { &mut added }.push(wanted.name.clone());
                }
                Err(e) => said.push(format!(
                    "webhook {} not started: cannot start its thread: {e}",
                    wanted.name
                )),
            }
        }
        let mut removed = Vec::new();
        for (old, handle) in running {
            if !changed.contains(&old.name) {
                removed.push(old.name.clone());
            }
            handle.close();
            self.retired.push(handle);
        }
        for (what, names) in [("added", added), ("changed", changed), ("removed", removed)] {
            if !names.is_empty() {
                said.push(format!("webhook(s) {what}: {}", names.join(", ")));
            }
        }
        *self.webhook_stats.write() = stats_of(&self.webhooks, &self.retired);
        let timers = (old.grace, old.resolve_after, old.escalate_after)
            != (config.grace, config.resolve_after, config.escalate_after)
            || old.escalate_failures != config.escalate_failures;
        if timers {
            said.push("incident timers applied to open and future incidents".to_string());
        }
        self.config = config;
        if !said.is_empty() {
            let text = format!("reload: [alerts] applied: {}", said.join("; "));
            self.deliver(&Notice::new(Severity::Info, text));
        }
    }

    /// Join retired receivers that have delivered what they had.
    fn join_retired(&mut self) {
        let (done, busy) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|w: &webhook::Handle| w.is_finished());
        self.retired = busy;
        for webhook in done {
            webhook.join();
        }
        *self.webhook_stats.write() = stats_of(&self.webhooks, &self.retired);
    }

    fn flush_webhooks(&mut self) {
        let mut all: Vec<webhook::Handle> = std::mem::take(&mut self.retired);
        all.extend(self.webhooks.drain(..).map(|(_, handle)| handle));
        for webhook in &all {
            webhook.close();
        }
        let deadline = Instant::now() + FLUSH;
        while all.iter().any(|w| !w.is_finished()) && Instant::now() < deadline {
            if let Ok(notice) = self.reports.recv_timeout(Duration::from_millis(50)) {
                self.deliver(&notice);
            }
        }
        let mut late = Vec::new();
        for webhook in all {
            if webhook.is_finished() {
                webhook.join();
            } else if !late.contains(&webhook.name) {
                late.push(webhook.name.clone());
            }
        }
        while let Ok(notice) = self.reports.try_recv() {
            self.deliver(&notice);
        }
        if !late.is_empty() {
            let text = format!(
                "webhook receiver(s) {} still busy after {}s at shutdown: what they had queued is lost",
                late.join(", "),
                FLUSH.as_secs()
            );
            self.deliver(&Notice::new(Severity::Warning, text));
        }
    }

    /// Journal, then webhooks, then syslog: a slow syslog delays neither.
    fn on_incident(&mut self, record: Record) {
        self.journal(&record);
        let record = Arc::new(record);
        match record.status {
            Status::Firing | Status::Escalated => {
                self.open.insert(record.incident, record.clone());
            }
            Status::Resolved => {
                self.open.remove(&record.incident);
            }
            Status::Updated | Status::Recovered => {}
        }
        let mut dropped = Vec::new();
        for (_, webhook) in &self.webhooks {
            if webhook.wants(&record)
                && let Some(old) = webhook.push(record.clone())
            {
                dropped.push((webhook.name.clone(), old));
            }
        }
        self.deliver(&incident_notice(&record));
        for (name, old) in dropped {
            let text = format!(
                "webhook {name}: queue full, dropped incident {} {} ({}) to make room; the receiver is down or slow",
                old.incident,
                old.status.label(),
                old.severity.label()
            );
            self.deliver(&Notice::new(Severity::Warning, text).pool(&old.pool));
        }
    }

    fn journal(&mut self, record: &Record) {
        let Some(journal) = &mut self.journal else {
            return;
        };
        match journal.append(record) {
            Ok(()) if self.journal_failing => {
                self.journal_failing = false;
                let text = format!(
                    "incident journal {} writable again",
                    journal.path().display()
                );
                self.deliver(&Notice::new(Severity::Info, text));
            }
            Ok(()) => {}
            Err(e) if !self.journal_failing => {
                self.journal_failing = true;
                let text = format!(
                    "cannot write the incident journal {}: {e}; incidents still go to syslog and webhooks",
                    journal.path().display()
                );
                self.deliver(&Notice::new(Severity::Critical, text));
            }
            Err(_) => {}
        }
    }

    fn report_drops(&mut self) {
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > self.reported_dropped {
            let lost = dropped - self.reported_dropped;
            self.reported_dropped = dropped;
            self.deliver(&Notice::new(
                Severity::Warning,
                format!("{lost} notice(s) dropped: the alert queue was full ({QUEUE})"),
            ));
        }
    }

    /// Hand a line to the log thread; if it is behind, count the line and say so
    /// once it has room again.
    fn deliver(&mut self, notice: &Notice) {
        if let Some(change) = self.syslog_change.take()
            && let Err(TrySendError::Full(LogItem::Syslog(change))) =
                self.log.try_send(LogItem::Syslog(change))
        {
            self.syslog_change = Some(change);
        }
        if self.log_dropped > 0 {
            let text = format!(
                "{} log line(s) dropped: syslog or stderr was not taking them",
                self.log_dropped
            );
            if self
                .log
                .try_send(LogItem::Line(Notice::new(Severity::Warning, text)))
                .is_ok()
            {
                self.log_dropped = 0;
            }
        }
        if self.log.try_send(LogItem::Line(notice.clone())).is_err() {
            self.log_dropped += 1;
            self.log_stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The receivers in force, then retired ones still delivering (a changed one counts
/// on under its name, so it is listed once).
fn stats_of(
    webhooks: &[(WebhookConfig, webhook::Handle)],
    retired: &[webhook::Handle],
) -> Receivers {
    let mut stats: Receivers = webhooks
        .iter()
        .map(|(_, w)| (w.name.clone(), w.stats.clone()))
        .collect();
    for w in retired {
        if !stats.iter().any(|(name, _)| *name == w.name) {
            stats.push((w.name.clone(), w.stats.clone()));
        }
    }
    stats
}

/// The log thread: syslog first, stderr in the foreground or when syslog fails.
struct LogWriter {
    lines: Receiver<LogItem>,
    syslog: Option<syslog::Sink>,
    stderr: Stderr,
    stats: Arc<webhook::Stats>,
}

impl LogWriter {
    fn run(mut self) {
        while let Ok(item) = self.lines.recv() {
            let notice = match item {
                LogItem::Line(notice) => notice,
                LogItem::Syslog(sink) => {
                    self.syslog = sink;
                    continue;
                }
            };
            let mut fell_back = None;
            if let Some(sink) = &mut self.syslog {
                fell_back = sink.send(&notice);
                let counter = if fell_back.is_some() {
                    &self.stats.failed
                } else {
                    &self.stats.sent
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            let copy = match self.stderr {
                Stderr::Never => false,
                Stderr::Always => true,
                Stderr::UnlessSyslog => self.syslog.is_none(),
            };
            if copy || fell_back.is_some() {
                let mut err = std::io::stderr().lock();
                if let Some(why) = fell_back.flatten() {
                    let _ = writeln!(err, "wspoold: warning: {why}");
                }
                let _ = writeln!(err, "wspoold: {}: {notice}", notice.severity.label());
            }
        }
    }
}

/// The log line of an incident transition: firing and escalated at the incident's
/// severity, the rest as information.
pub fn incident_notice(record: &Record) -> Notice {
    let severity = match record.status {
        Status::Firing | Status::Escalated => record.severity,
        _ => Severity::Info,
    };
    let mut notice = Notice::new(severity, record.text.clone())
        .incident(record.incident)
        .pool(&record.pool);
    if let Some(endpoint) = &record.endpoint {
        notice = notice.endpoint(endpoint);
    }
    notice
}
