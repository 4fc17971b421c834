//! The alerter thread: takes notices from the monitor over a bounded queue and writes
//! them to syslog and, in the foreground, to stderr. The monitor never blocks on it: a
//! full queue drops the notice, counts it, and the count is logged when room returns.

pub mod syslog;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::config::AlertsConfig;
use crate::event::{Notice, Severity};

/// Notices waiting for the alerter before new ones are dropped.
const QUEUE: usize = 4096;

/// The monitor's side of the alerter.
#[derive(Clone)]
pub struct Alerts {
    tx: Sender<Notice>,
    dropped: Arc<AtomicU64>,
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

    /// Notices dropped because the alerter fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Where notices go.
pub struct Alerter {
    rx: Receiver<Notice>,
    dropped: Arc<AtomicU64>,
    reported_dropped: u64,
    syslog: Option<syslog::Sink>,
    stderr: bool,
}

impl Alerter {
    /// Build the alerter and its handle. `stderr` also copies every line to stderr.
    pub fn new(config: &AlertsConfig, stderr: bool) -> (Alerter, Alerts) {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let syslog = config.syslog.then(|| syslog::Sink::new(config));
        let alerter = Alerter {
            rx,
            dropped: dropped.clone(),
            reported_dropped: 0,
            syslog,
            stderr,
        };
        (alerter, Alerts { tx, dropped })
    }

    pub fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("alerter".into())
            .spawn(move || self.run())
    }

    /// Deliver until every sender is gone.
    pub fn run(mut self) {
        while let Ok(notice) = self.rx.recv() {
            self.report_drops();
            self.deliver(&notice);
        }
        self.report_drops();
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

    fn deliver(&mut self, notice: &Notice) {
        let mut fell_back = None;
        if let Some(sink) = &mut self.syslog {
            fell_back = sink.send(notice);
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
