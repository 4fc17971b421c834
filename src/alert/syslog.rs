//! The syslog sink: RFC 3164 lines to a local datagram socket (`/dev/log` by default),
//! tag `wspoold`, level from the notice's severity. RFC 5424 over the local socket is
//! mangled by Debian's rsyslog and by journald, so it is not used.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use syslog::{Facility, Formatter3164, Logger, LoggerBackend};

use crate::config::AlertsConfig;
use crate::event::{Notice, Severity};

/// How often a broken or missing socket is tried again.
const RETRY: Duration = Duration::from_secs(5);
/// A syslog daemon that takes no line for this long is treated as broken (lines go to
/// stderr until the next try), so a stalled one cannot hold the log thread.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

pub struct Sink {
    path: PathBuf,
    facility: Facility,
    logger: Option<Logger<LoggerBackend, Formatter3164>>,
    last_try: Option<Instant>,
    /// Whether the operator was told that syslog is unusable (said once per outage).
    told: bool,
}

impl Sink {
    pub fn new(config: &AlertsConfig) -> Sink {
        Sink {
            path: config.syslog_socket.clone(),
            facility: config.syslog_facility,
            logger: None,
            last_try: None,
            told: false,
        }
    }

    fn connect(&mut self) -> Result<(), String> {
        let formatter = Formatter3164 {
            facility: self.facility,
            hostname: None,
            process: "wspoold".into(),
            pid: std::process::id(),
        };
        self.last_try = Some(Instant::now());
        if !self.path.exists() {
            // The syslog crate says "connection refused" here, which misleads.
            return Err(format!(
                "syslog socket {} does not exist",
                self.path.display()
            ));
        }
        match syslog::unix_custom(formatter, &self.path) {
            Ok(logger) => {
                match &logger.backend {
                    LoggerBackend::Unix(socket) => {
                        let _ = socket.set_write_timeout(Some(SEND_TIMEOUT));
                    }
                    LoggerBackend::UnixStream(stream) => {
                        let _ = stream.get_ref().set_write_timeout(Some(SEND_TIMEOUT));
                    }
                    _ => {}
                }
                self.logger = Some(logger);
                Ok(())
            }
            Err(e) => Err(format!(
                "cannot connect to syslog socket {}: {e}",
                self.path.display()
            )),
        }
    }

    /// Send one notice. `None`: delivered. `Some(reason)`: not delivered, the caller
    /// should write it to stderr; `reason` is set the first time of an outage only.
    pub fn send(&mut self, notice: &Notice) -> Option<Option<String>> {
        if self.logger.is_none() {
            let due = self.last_try.is_none_or(|t| t.elapsed() >= RETRY);
            if !due {
                return Some(None);
            }
            if let Err(why) = self.connect() {
                return Some(self.tell(why));
            }
        }
        let logger = self.logger.as_mut()?;
        let line = notice.to_string();
        let result = match notice.severity {
            Severity::Info => logger.info(&line),
            Severity::Warning => logger.warning(&line),
            Severity::Critical => logger.crit(&line),
        };
        match result {
            Ok(()) => {
                if self.told {
                    self.told = false;
                }
                None
            }
            Err(e) => {
                self.logger = None;
                let why = format!(
                    "writing to syslog socket {} failed: {e}",
                    self.path.display()
                );
                Some(self.tell(why))
            }
        }
    }

    fn tell(&mut self, why: String) -> Option<String> {
        if self.told {
            return None;
        }
        self.told = true;
        Some(format!("{why}; logging to stderr until it is back"))
    }
}
