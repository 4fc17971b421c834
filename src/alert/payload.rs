//! Webhook bodies, one per `format`, built from a journal [`Record`]: our own JSON,
//! Slack's `{"text": ...}`, PagerDuty's Events API v2, and Alertmanager's v2 alerts.
//! Pure functions, tested on their output.

use serde_json::{Value, json};

use crate::config::WebhookFormat;
use crate::incident::Status;
use crate::journal::Record;

/// The alert name every wspoold alert carries in Alertmanager.
pub const ALERTNAME: &str = "WspooldIncident";

/// The body to POST. `stale`: for Alertmanager, the labels sent last time for this
/// incident if they differ from now (a severity or kind change): that alert is ended.
pub fn body(
    format: WebhookFormat,
    record: &Record,
    routing_key: Option<&str>,
    stale: Option<&Value>,
) -> Value {
    match format {
        WebhookFormat::Json => serde_json::to_value(record).unwrap_or(Value::Null),
        WebhookFormat::Slack => json!({ "text": headline(record) }),
        WebhookFormat::PagerDuty => pagerduty(record, routing_key.unwrap_or_default()),
        WebhookFormat::Alertmanager => alertmanager(record, stale),
    }
}

/// One line for a chat channel:
/// `[WARNING] wspoold incident 7 firing on host-1, pool market (endpoint_down): ...`.
pub fn headline(r: &Record) -> String {
    let tail = match r.status {
        Status::Resolved => format!(
            " after {}",
            r.duration_seconds
                .map(|s| crate::event::human(std::time::Duration::from_secs_f64(s.max(0.0))))
                .unwrap_or_else(|| "?".into())
        ),
        _ => String::new(),
    };
    format!(
        "[{}] wspoold incident {} {}{tail} on {}, pool {} ({}): {}",
        r.severity.label().to_uppercase(),
        r.incident,
        r.status.label(),
        r.host,
        r.pool,
        r.kind.label(),
        r.summary
    )
}

/// The incident's key in PagerDuty: one alert per incident per host.
pub fn dedup_key(r: &Record) -> String {
    format!("wspoold/{}/{}", r.host, r.incident)
}

fn pagerduty(r: &Record, routing_key: &str) -> Value {
    if r.status == Status::Resolved {
        return json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": dedup_key(r),
        });
    }
    // PagerDuty truncates summaries at 1024 characters.
    let summary: String = headline(r).chars().take(1024).collect();
    json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key(r),
        "payload": {
            "summary": summary,
            "source": r.host,
            "severity": r.severity.label(),
            "timestamp": r.at,
            "component": r.pool,
            "group": r.endpoint,
            "class": r.kind.label(),
            "custom_details": serde_json::to_value(r).unwrap_or(Value::Null),
        },
    })
}

/// The label set that identifies this incident's alert in Alertmanager.
pub fn labels(r: &Record) -> Value {
    json!({
        "alertname": ALERTNAME,
        "host": r.host,
        "pool": r.pool,
        "endpoint": r.endpoint.clone().unwrap_or_default(),
        "kind": r.kind.label(),
        "severity": r.severity.label(),
    })
}

fn alertmanager(r: &Record, stale: Option<&Value>) -> Value {
    let actions: Vec<String> = r
        .actions
        .iter()
        .map(|a| format!("{} {}", a.at, a.what))
        .collect();
    let mut alert = json!({
        "labels": labels(r),
        "annotations": {
            "summary": r.summary,
            "description": headline(r),
            "incident": r.incident.to_string(),
            "status": r.status.label(),
            "actions": actions.join("\n"),
        },
        "startsAt": r.started_at,
    });
    if let Some(resolved) = &r.resolved_at {
        alert["endsAt"] = json!(resolved);
    }
    let mut alerts = vec![alert];
    if let Some(old) = stale {
        alerts.push(json!({
            "labels": old,
            "annotations": { "summary": "superseded by a change of severity or kind" },
            "startsAt": r.started_at,
            "endsAt": r.at,
        }));
    }
    Value::Array(alerts)
}
