//! The alerter thread: takes notices and incident transitions from the monitor and
//! delivers them. Incident transitions are journaled first (synced), then queued to
//! each webhook receiver that wants them, then logged. Lines go to a log thread of
//! their own that writes syslog and, in the foreground, stderr: a syslog daemon that
//! stops reading blocks only that thread. Nothing blocks the monitor: notices come
//! over a bounded queue that drops and counts when full, incident transitions (a
//! handful per incident) over an unbounded one, so none is lost.

pub mod payload;
pub mod syslog;
pub mod webhook;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, select};

use crate::config::AlertsConfig;
use crate::event::{Notice, Severity};
use crate::journal::{Journal, Record};

/// Notices waiting for the alerter before new ones are dropped.
const QUEUE: usize = 4096;
/// How long shutdown waits for webhook receivers to take what is queued.
const FLUSH: Duration = Duration::from_secs(5);

/// The monitor's side of the alerter.
#[derive(Clone)]
pub struct Alerts {
    tx: Sender<Notice>,
    incidents: Sender<Box<Record>>,
    dropped: Arc<AtomicU64>,
    webhooks: Arc<Vec<(String, Arc<webhook::Stats>)>>,
    syslog: Arc<webhook::Stats>,
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
    pub fn webhooks(&self) -> &[(String, Arc<webhook::Stats>)] {
        &self.webhooks
    }
}

/// Where notices and incidents go.
pub struct Alerter {
    rx: Receiver<Notice>,
    incidents: Receiver<Box<Record>>,
    /// Delivery threads' log lines.
    reports: Receiver<Notice>,
    /// Held so that `reports` never disconnects (with no webhook it would, and a
    /// disconnected channel in `select!` is always ready: a busy loop).
    _reports_tx: Sender<Notice>,
    dropped: Arc<AtomicU64>,
    reported_dropped: u64,
    /// To the log thread; lines it has no room for are counted in `log_dropped`.
    log: Sender<Notice>,
    log_dropped: u64,
    /// The log's counters (lines dropped here are counted there too).
    log_stats: Arc<webhook::Stats>,
    log_thread: Option<JoinHandle<()>>,
    journal: Option<Journal>,
    /// The journal failed and the operator was told; said again once it works.
    journal_failing: bool,
    webhooks: Vec<webhook::Handle>,
}

impl Alerter {
    /// Build the alerter and its handle, and start a delivery thread per webhook.
    /// `stderr` also copies every line to stderr; `journal` is where incidents are
    /// recorded (none if it could not be opened).
    pub fn new(
        config: &AlertsConfig,
        journal: Option<Journal>,
        stderr: bool,
    ) -> std::io::Result<(Alerter, Alerts)> {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let (incidents_tx, incidents) = crossbeam_channel::unbounded();
        let (reports_tx, reports) = crossbeam_channel::bounded(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let webhooks = config
            .webhooks
            .iter()
            .map(|w| webhook::Handle::start(w, reports_tx.clone()))
            .collect::<std::io::Result<Vec<_>>>()?;
        let stats = webhooks
            .iter()
            .map(|w| (w.name.clone(), w.stats.clone()))
            .collect();
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
            _reports_tx: reports_tx,
            dropped: dropped.clone(),
            reported_dropped: 0,
            log,
            log_dropped: 0,
            log_stats: syslog_stats.clone(),
            log_thread: Some(log_thread),
            journal,
            journal_failing: false,
            webhooks,
        };
        let alerts = Alerts {
            tx,
            incidents: incidents_tx,
            dropped,
            webhooks: Arc::new(stats),
            syslog: syslog_stats.clone(),
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
                recv(self.incidents) -> record => match record {
                    Ok(record) => self.on_incident(*record),
                    Err(_) => break,
                },
                recv(self.rx) -> notice => match notice {
                    Ok(notice) => {
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

    fn flush_webhooks(&mut self) {
        for webhook in &self.webhooks {
            webhook.close();
        }
        let deadline = Instant::now() + FLUSH;
        while self.webhooks.iter().any(|w| !w.is_finished()) && Instant::now() < deadline {
            if let Ok(notice) = self.reports.recv_timeout(Duration::from_millis(50)) {
                self.deliver(&notice);
            }
        }
        let mut late = Vec::new();
        for webhook in self.webhooks.drain(..) {
            if webhook.is_finished() {
                webhook.join();
            } else {
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
        let mut dropped = Vec::new();
        for webhook in &self.webhooks {
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
        if self.log_dropped > 0 {
            let text = format!(
                "{} log line(s) dropped: syslog or stderr was not taking them",
                self.log_dropped
            );
            if self
                .log
                .try_send(Notice::new(Severity::Warning, text))
                .is_ok()
            {
                self.log_dropped = 0;
            }
        }
        if self.log.try_send(notice.clone()).is_err() {
            self.log_dropped += 1;
            self.log_stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The log thread: syslog first, stderr in the foreground or when syslog fails.
struct LogWriter {
    lines: Receiver<Notice>,
    syslog: Option<syslog::Sink>,
    stderr: bool,
    stats: Arc<webhook::Stats>,
}

impl LogWriter {
    fn run(mut self) {
        while let Ok(notice) = self.lines.recv() {
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
            if self.stderr || fell_back.is_some() {
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
    use crate::incident::Status;
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
