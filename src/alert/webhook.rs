//! One webhook receiver: a bounded queue and a delivery thread with a blocking HTTP
//! client (ureq). Each request has a timeout; network errors, 5xx and 429 are retried
//! with capped, jittered backoff, other answers are not. A full queue drops the oldest
//! notification of the lowest severity and counts it. A receiver that is down or slow
//! delays nobody but itself.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use parking_lot::{Condvar, Mutex};
use serde_json::Value;

use super::payload;
use crate::backoff::{Backoff, Rng};
use crate::config::{WebhookConfig, WebhookFormat};
use crate::event::{Notice, Severity};
use crate::incident::Status;
use crate::journal::Record;

/// Retry delays stop doubling here.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Alertmanager forgets an alert not sent again within its resolve_timeout (5m by
/// default): open incidents are sent again this often.
const REPEAT: Duration = Duration::from_secs(60);
/// At most this much of an error answer is quoted in a log line.
const QUOTE: usize = 200;

/// What happened to the notifications of one receiver, for metrics and tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
    pub dropped: AtomicU64,
}

#[derive(Default)]
struct Items {
    queue: VecDeque<Arc<Record>>,
    closed: bool,
}

/// The bounded queue between the alerter and a delivery thread.
struct Queue {
    items: Mutex<Items>,
    ready: Condvar,
    capacity: usize,
}

impl Queue {
    /// Add a record; if full, drop the oldest of the lowest severity and return it.
    fn push(&self, record: Arc<Record>) -> Option<Arc<Record>> {
        let mut items = self.items.lock();
        items.queue.push_back(record);
        let dropped = if items.queue.len() > self.capacity {
            let lowest = items.queue.iter().map(|r| r.severity).min()?;
            let index = items.queue.iter().position(|r| r.severity == lowest)?;
            items.queue.remove(index)
        } else {
            None
        };
        self.ready.notify_one();
        dropped
    }

    /// The next record, waiting until `until`; `Err(())` once closed and empty.
    fn pop(&self, until: Option<Instant>) -> Result<Option<Arc<Record>>, ()> {
        let mut items = self.items.lock();
        loop {
            if let Some(record) = items.queue.pop_front() {
                return Ok(Some(record));
            }
            if items.closed {
                return Err(());
            }
            match until {
                Some(until) => {
                    if self.ready.wait_until(&mut items, until).timed_out() {
                        return Ok(items.queue.pop_front());
                    }
                }
                None => self.ready.wait(&mut items),
            }
        }
    }

    /// Sleep for `d` unless closed meanwhile; returns whether it was closed.
    fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut items = self.items.lock();
        while !items.closed {
            if self.ready.wait_until(&mut items, deadline).timed_out() {
                break;
            }
        }
        items.closed
    }

    fn close(&self) {
        self.items.lock().closed = true;
        self.ready.notify_all();
    }

    fn closed(&self) -> bool {
        self.items.lock().closed
    }
}

/// The alerter's side of one receiver.
pub struct Handle {
    pub name: String,
    min_severity: Severity,
    escalation_only: bool,
    queue: Arc<Queue>,
    pub stats: Arc<Stats>,
    thread: JoinHandle<()>,
}

impl Handle {
    /// Start the delivery thread. `reports` takes its log lines; `stats` is where it
    /// counts (a receiver a reload changed goes on counting where it left off).
    pub fn start(
        config: &WebhookConfig,
        reports: Sender<Notice>,
        stats: Arc<Stats>,
    ) -> std::io::Result<Handle> {
        let queue = Arc::new(Queue {
            items: Mutex::new(Items::default()),
            ready: Condvar::new(),
            capacity: config.queue,
        });
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout))
            .http_status_as_error(false)
            .user_agent(concat!("wspoold/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let delivery = Delivery {
            config: config.clone(),
            queue: queue.clone(),
            stats: stats.clone(),
            reports,
            agent,
            rng: Rng::from_entropy(),
            firing: HashMap::new(),
            repeat_at: None,
        };
        let thread = std::thread::Builder::new()
            .name(format!("webhook-{}", config.name))
            .spawn(move || delivery.run())?;
        Ok(Handle {
            name: config.name.clone(),
            min_severity: config.min_severity,
            escalation_only: config.escalation_only,
            queue,
            stats,
            thread,
        })
    }

    /// Whether this receiver hears of `record`: firing if not escalation-only,
    /// escalations, and the resolution of what it would have heard; all at or above
    /// `min_severity` (an incident's severity only rises).
    pub fn wants(&self, record: &Record) -> bool {
        let status = match record.status {
            Status::Firing => !self.escalation_only,
            Status::Escalated => true,
            Status::Resolved => !self.escalation_only || record.escalated,
            Status::Updated | Status::Recovered => false,
        };
        status && record.severity >= self.min_severity
    }

    /// Queue a record; returns the one dropped to make room, if any.
    pub fn push(&self, record: Arc<Record>) -> Option<Arc<Record>> {
        let dropped = self.queue.push(record);
        if dropped.is_some() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        dropped
    }

    /// Stop taking records; the thread delivers what is queued, once each, and ends.
    pub fn close(&self) {
        self.queue.close();
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    pub fn join(self) {
        let _ = self.thread.join();
    }
}

/// Why a POST did not succeed.
enum Failure {
    /// Worth another attempt: a network error, 5xx, 429.
    Retry(String),
    /// Not: any other answer.
    Final(String),
}

struct Delivery {
    config: WebhookConfig,
    queue: Arc<Queue>,
    stats: Arc<Stats>,
    reports: Sender<Notice>,
    agent: ureq::Agent,
    rng: Rng,
    /// Alertmanager: the open incidents, their labels as last sent, and their record.
    firing: HashMap<u64, (Value, Arc<Record>)>,
    repeat_at: Option<Instant>,
}

impl Delivery {
    fn run(mut self) {
        loop {
            let record = match self.queue.pop(self.repeat_at) {
                Ok(Some(record)) => record,
                Ok(None) => {
                    self.repeat();
                    continue;
                }
                Err(()) => return,
            };
            self.deliver(&record);
        }
    }

    fn deliver(&mut self, record: &Arc<Record>) {
        let stale = self.track(record);
        let body = payload::body(
            self.config.format,
            record,
            self.config.routing_key.as_deref(),
            stale.as_ref(),
        );
        let what = format!("incident {} {}", record.incident, record.status.label());
        let mut backoff = Backoff::new(self.config.retry_backoff, MAX_BACKOFF);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failure = match self.post(&body) {
                Ok(()) => {
                    self.stats.sent.fetch_add(1, Ordering::Relaxed);
                    let tries = if attempt == 1 {
                        String::new()
                    } else {
                        format!(" on attempt {attempt}")
                    };
                    let text = format!("webhook {}: delivered {what}{tries}", self.config.name);
                    return self.report(Severity::Info, text, record);
                }
                Err(failure) => failure,
            };
            let (why, retry) = match failure {
                Failure::Retry(why) => (why, true),
                Failure::Final(why) => (why, false),
            };
            let closing = self.queue.closed();
            if retry && attempt <= self.config.retries && !closing {
                self.stats.retried.fetch_add(1, Ordering::Relaxed);
                let delay = backoff
                    .next_delay(&mut self.rng)
                    .max(self.config.retry_backoff / 2);
                if !self.queue.sleep(delay) {
                    continue;
                }
            }
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
            let text = format!(
                "webhook {}: {what} not delivered after {attempt} attempt(s): {why}",
                self.config.name
            );
            return self.report(Severity::Warning, text, record);
        }
    }

    /// One POST with the configured headers.
    fn post(&self, body: &Value) -> Result<(), Failure> {
        let bytes = serde_json::to_vec(body).map_err(|e| Failure::Final(e.to_string()))?;
        let mut request = self
            .agent
            .post(&self.config.url)
            .header("Content-Type", "application/json");
        for (name, value) in &self.config.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let mut response = match request.send(&bytes[..]) {
            Ok(response) => response,
            Err(ureq::Error::Timeout(phase)) => {
                return Err(Failure::Retry(format!(
                    "no answer within timeout {} ({phase})",
                    crate::config::format_duration(self.config.timeout)
                )));
            }
            Err(e) => return Err(Failure::Retry(e.to_string())),
        };
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let text = response
            .body_mut()
            .with_config()
            .limit(4096)
            .read_to_string()
            .unwrap_or_default();
        let quoted: String = text.trim().chars().take(QUOTE).collect();
        let why = format!("HTTP {status} {quoted:?}");
        if status >= 500 || status == 429 {
            Err(Failure::Retry(why))
        } else {
            Err(Failure::Final(why))
        }
    }

    /// Alertmanager: remember what is open (to send it again) and return the labels of
    /// an alert this record replaces.
    fn track(&mut self, record: &Arc<Record>) -> Option<Value> {
        if self.config.format != WebhookFormat::Alertmanager {
            return None;
        }
        let labels = payload::labels(record);
        let before = if record.status == Status::Resolved {
            self.firing.remove(&record.incident).map(|(l, _)| l)
        } else {
            self.firing
                .insert(record.incident, (labels.clone(), record.clone()))
                .map(|(l, _)| l)
        };
        self.repeat_at = (!self.firing.is_empty()).then(|| Instant::now() + REPEAT);
        before.filter(|old| *old != labels)
    }

    /// Alertmanager: send every open incident again, once, without retries.
    fn repeat(&mut self) {
        self.repeat_at = (!self.firing.is_empty()).then(|| Instant::now() + REPEAT);
        let alerts: Vec<Value> = self
            .firing
            .values()
            .filter_map(
                |(_, r)| match payload::body(WebhookFormat::Alertmanager, r, None, None) {
                    Value::Array(mut a) => a.pop(),
                    _ => None,
                },
            )
            .collect();
        if !alerts.is_empty() && self.post(&Value::Array(alerts)).is_err() {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn report(&self, severity: Severity, text: String, record: &Record) {
        let notice = Notice::new(severity, text)
            .incident(record.incident)
            .pool(&record.pool);
        let _ = self.reports.try_send(notice);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, severity: Severity) -> Arc<Record> {
        let text = format!(
            r#"{{"incident":{id},"status":"firing","severity":"{}","pool":"p","endpoint":null,"kind":"pool_down","summary":"s","started_at":"2026-11-23T00:00:00.000Z","resolved_at":null,"duration_seconds":null,"host":"h","actions":[]}}"#,
            severity.label()
        );
        Arc::new(serde_json::from_str(&text).unwrap())
    }

    #[test]
    fn a_full_queue_drops_the_oldest_of_the_lowest_severity() {
        let queue = Queue {
            items: Mutex::new(Items::default()),
            ready: Condvar::new(),
            capacity: 3,
        };
        assert!(queue.push(record(1, Severity::Warning)).is_none());
        assert!(queue.push(record(2, Severity::Info)).is_none());
        assert!(queue.push(record(3, Severity::Critical)).is_none());
        assert_eq!(queue.push(record(4, Severity::Info)).unwrap().incident, 2);
        assert_eq!(
            queue.push(record(5, Severity::Critical)).unwrap().incident,
            4
        );
        assert_eq!(
            queue.push(record(6, Severity::Critical)).unwrap().incident,
            1
        );
        let order: Vec<u64> = std::iter::from_fn(|| queue.pop(Some(Instant::now())).ok().flatten())
            .map(|r| r.incident)
            .collect();
        assert_eq!(order, [3, 5, 6]);
        queue.close();
        assert!(queue.pop(None).is_err(), "closed and empty ends the thread");
        assert!(
            queue.sleep(Duration::from_secs(60)),
            "a closed queue cuts sleeps short"
        );
    }
}
