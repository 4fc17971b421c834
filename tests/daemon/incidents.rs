//! Incidents end to end: real upstreams killed and restored, a real HTTP server
//! receiving the webhooks, a datagram socket standing in for /dev/log, the journal on
//! disk and the review reading it back.

use std::time::Duration;

use serde_json::Value;
use tungstenite::Message;
use wspoold::faults::Upstream;
use wspoold::journal;
use wspoold::review;

use crate::bridge::{dial, next_data};
use crate::receiver::{Answer, Receiver};
use crate::util::{Running, Syslog, config_with, start, wait_until, watchdog};

const SOON: Duration = Duration::from_secs(5);

/// `[alerts]` with syslog to `log`, fast incident timers, and these webhooks.
fn alerts(log: &Syslog, timers: &str, webhooks: &[String]) -> String {
    format!(
        "syslog = true\nsyslog_socket = \"{}\"\ngrace = \"300ms\"\n{timers}\n{}",
        log.path.display(),
        webhooks.join("\n")
    )
}

/// Two upstreams, a and b, for one pool; syslog to a stand-in; the daemon started
/// with these pool settings, incident timers and webhooks, and warm.
struct Outage {
    a: Upstream,
    b: Upstream,
    log: Syslog,
    d: Running,
}

fn two_endpoints(pool: &str, timers: &str, hooks: &[String]) -> Outage {
    let (a, b) = (Upstream::start().unwrap(), Upstream::start().unwrap());
    let log = Syslog::new();
    let cfg = config_with(&[a.url(), b.url()], pool, &alerts(&log, timers, hooks));
    let mut d = start(&cfg);
    d.wait_healthy(2, SOON);
    Outage { a, b, log, d }
}

fn webhook(url: &str, extra: &str) -> String {
    format!("[[alerts.webhook]]\nurl = \"{url}\"\nretry_backoff = \"50ms\"\n{extra}\n")
}

#[test]
fn a_mass_failure_is_one_incident_and_one_alert_resolved_after_hysteresis() {
    watchdog(90, || {
        let (a, b) = (Upstream::start().unwrap(), Upstream::start().unwrap());
        let log = Syslog::new();
        let mut hook = Receiver::start(Answer::Ok);
        let hooks = [webhook(&hook.url, "min_severity = \"info\"")];
        let timers = "resolve_after = \"1s\"\nescalate_after = \"0s\"\nescalate_failures = 0\ngrace = \"5s\"";
        let cfg = config_with(
            &[a.url(), b.url()],
            "min = 400\nmax = 400\nspare = 0\ndown_after = 2",
            &alerts(&log, timers, &hooks).replace("grace = \"300ms\"\n", ""),
        );
        let mut d = start(&cfg);
        d.wait_healthy(400, Duration::from_secs(30));
        let on_a = a.connections();
        assert!(on_a >= 150, "{on_a} connections on a");
        a.kill();

        let firing = hook.next(SOON);
        let body = &firing.body;
        assert_eq!(body["status"], "firing");
        assert_eq!(body["incident"], 1);
        assert_eq!(body["kind"], "endpoint_down");
        assert_eq!(body["severity"], "warning", "{body:#}");
        assert_eq!(body["endpoint"], a.url());
        assert_eq!(body["pool"], "p");
        for key in ["resolved_at", "duration_seconds"] {
            assert!(body[key].is_null(), "{key}: {body:#}");
        }
        assert!(body["host"].as_str().is_some_and(|h| !h.is_empty()));
        assert!(
            journal::parse_time(body["started_at"].as_str().unwrap()).is_some(),
            "{body:#}"
        );
        // Every connection on a died; the pool refilled on b; still one incident.
        d.wait_healthy(400, Duration::from_secs(30));
        let more = hook.drain_for(Duration::from_secs(1));
        assert!(more.is_empty(), "one alert for {on_a} deaths: {more:#?}");

        a.restart().unwrap();
        let resolved = hook.until(Duration::from_secs(20), "status", "resolved");
        let body = &resolved.body;
        assert_eq!(body["incident"], 1);
        assert!(body["resolved_at"].is_string(), "{body:#}");
        assert!(body["duration_seconds"].as_f64().unwrap() > 1.0);
        assert!(
            body["counts"]["deaths"].as_u64().unwrap() >= on_a as u64,
            "{}",
            body["counts"]
        );
        let actions = body["actions"].as_array().unwrap();
        assert!(
            actions
                .iter()
                .any(|a| a["what"].as_str().unwrap().contains("endpoint back up")),
            "{actions:#?}"
        );
        assert_eq!(hook.seen.len(), 2, "firing and resolved: {:#?}", hook.seen);

        // The scripted outage as the journal and the review tell it.
        let path = d.state_dir.join(journal::FILE);
        let (records, skipped) = journal::read(&path).unwrap();
        assert!(skipped.is_empty(), "{skipped:?}");
        let statuses: Vec<&str> = records.iter().map(|r| r.status.label()).collect();
        assert_eq!(statuses.first(), Some(&"firing"));
        assert_eq!(statuses.last(), Some(&"resolved"));
        println!(
            "journal timeline of incident 1 ({} POSTs sent):",
            hook.seen.len()
        );
        for action in &records.last().unwrap().actions {
            println!("  {} {}", action.at, action.what);
        }
        let review = review::review(
            &records,
            &review::Filter::default(),
            std::time::SystemTime::now(),
        );
        let mut table = Vec::new();
        review::print_table(&review, &mut table).unwrap();
        println!("{}", String::from_utf8(table).unwrap());
        assert_eq!(review.incidents.len(), 1);
        assert!(review.incidents[0].recover_seconds.is_some());
        drop(d);
    });
}

#[test]
fn every_format_carries_the_incident_and_secrets_come_from_files() {
    watchdog(60, || {
        let up = Upstream::start().unwrap();
        let log = Syslog::new();
        let dir = crate::util::TempDir::new();
        let token = dir.path().join("token");
        std::fs::write(&token, "Bearer from-a-file\n").unwrap();
        let mut json = Receiver::start(Answer::Ok);
        let mut slack = Receiver::start(Answer::Ok);
        let mut pager = Receiver::start(Answer::Ok);
        let mut am = Receiver::start(Answer::Ok);
        let hooks = [
            webhook(
                &json.url,
                &format!(
                    "name = \"json\"\nheaders = {{ X-Team = \"ops\" }}\nheader_files = {{ Authorization = \"{}\" }}",
                    token.display()
                ),
            ),
            webhook(&slack.url, "name = \"slack\"\nformat = \"slack\""),
            webhook(
                &format!("{}/v2/enqueue", pager.url),
                "name = \"pager\"\nformat = \"pagerduty\"\nrouting_key = \"R0UT1NG\"",
            ),
            webhook(
                &format!("{}/api/v2/alerts", am.url),
                "name = \"am\"\nformat = \"alertmanager\"",
            ),
        ];
        let timers = "resolve_after = \"500ms\"\nescalate_after = \"0s\"\nescalate_failures = 0";
        // Nothing reads `log` in this test: a syslog that stops reading must hold up
        // neither the incident nor its webhooks (nor the shutdown).
        let cfg = config_with(&[up.url()], "down_after = 2", &alerts(&log, timers, &hooks));
        let mut d = start(&cfg);
        d.wait_healthy(2, SOON);
        up.kill();
        // The only primary down is a warning; the pool without a connection past the
        // grace raises it to critical: two notifications per receiver.
        let critical = json.until(SOON, "severity", "critical");
        assert_eq!(critical.body["kind"], "pool_down");
        assert_eq!(critical.body["previous_severity"], "warning");
        assert_eq!(critical.header("X-Team"), Some("ops"));
        assert_eq!(critical.header("Authorization"), Some("Bearer from-a-file"));
        assert_eq!(critical.header("Content-Type"), Some("application/json"));

        let first = slack.next(SOON);
        let text = first.body["text"].as_str().unwrap();
        assert!(
            text.starts_with("[WARNING] wspoold incident 1 firing on "),
            "{text}"
        );
        assert!(text.contains("pool p (endpoint_down)"), "{text}");
        let text = slack.next(SOON).body["text"].as_str().unwrap().to_string();
        assert!(
            text.starts_with("[CRITICAL] wspoold incident 1 firing"),
            "{text}"
        );

        let trigger = pager.next(SOON);
        assert_eq!(trigger.path, "/v2/enqueue");
        let host = trigger.body["payload"]["source"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(trigger.body["routing_key"], "R0UT1NG");
        assert_eq!(trigger.body["event_action"], "trigger");
        assert_eq!(trigger.body["dedup_key"], format!("wspoold/{host}/1"));
        assert_eq!(trigger.body["payload"]["severity"], "warning");
        assert_eq!(trigger.body["payload"]["component"], "p");
        assert_eq!(trigger.body["payload"]["class"], "endpoint_down");
        let raised = pager.next(SOON);
        assert_eq!(raised.body["payload"]["severity"], "critical");
        assert_eq!(raised.body["dedup_key"], trigger.body["dedup_key"]);

        let opened = am.next(SOON);
        assert_eq!(opened.path, "/api/v2/alerts");
        let alert = &opened.body[0];
        assert_eq!(alert["labels"]["alertname"], "WspooldIncident");
        assert_eq!(alert["labels"]["host"], host);
        assert_eq!(alert["labels"]["pool"], "p");
        assert_eq!(alert["labels"]["endpoint"], up.url());
        assert_eq!(alert["labels"]["kind"], "endpoint_down");
        assert_eq!(alert["labels"]["severity"], "warning");
        assert!(alert["startsAt"].is_string() && alert.get("endsAt").is_none());
        // The rise changes the labels: the alert under the old ones is ended.
        let raised = am.next(SOON);
        let alerts = raised.body.as_array().unwrap();
        assert_eq!(alerts.len(), 2, "{alerts:#?}");
        assert_eq!(alerts[0]["labels"]["severity"], "critical");
        assert_eq!(alerts[1]["labels"]["severity"], "warning");
        assert!(alerts[1]["endsAt"].is_string());

        up.restart().unwrap();
        let resolved = json.until(SOON, "status", "resolved");
        assert!(resolved.body["resolved_at"].is_string());
        let text = slack.next(SOON).body["text"].as_str().unwrap().to_string();
        assert!(text.contains("incident 1 resolved after"), "{text}");
        let resolve = pager.next(SOON);
        assert_eq!(resolve.body["event_action"], "resolve");
        assert_eq!(resolve.body["dedup_key"], trigger.body["dedup_key"]);
        let ended = am.next(SOON);
        assert_eq!(ended.body[0]["labels"]["severity"], "critical");
        assert_eq!(ended.body[0]["endsAt"], resolved.body["resolved_at"]);
        drop(d);
    });
}

#[test]
fn an_incident_that_lasts_is_escalated_to_escalation_only_receivers_too() {
    watchdog(60, || {
        let mut team = Receiver::start(Answer::Ok);
        let mut pager = Receiver::start(Answer::Ok);
        let hooks = [
            webhook(&team.url, "name = \"team\""),
            webhook(&pager.url, "name = \"pager\"\nescalation_only = true"),
        ];
        let timers = "resolve_after = \"500ms\"\nescalate_after = \"1s\"\nescalate_failures = 0";
        let Outage { a, b: _b, log, d } = two_endpoints("down_after = 2", timers, &hooks);
        a.kill();
        assert_eq!(team.next(SOON).body["status"], "firing");
        let escalated = team.next(SOON);
        assert_eq!(escalated.body["status"], "escalated");
        assert_eq!(escalated.body["severity"], "critical");
        assert_eq!(escalated.body["previous_severity"], "warning");
        assert_eq!(escalated.body["escalated"], true);
        let paged = pager.next(SOON);
        assert_eq!(
            paged.body["status"], "escalated",
            "escalation only: {paged:#?}"
        );
        let line = log.read_until(SOON, "escalated to critical");
        let line = line.last().unwrap();
        assert!(line.starts_with("<26>"), "critical: {line}");
        assert!(line.contains("incident=1 pool=p"), "{line}");
        a.restart().unwrap();
        assert_eq!(team.next(SOON).body["status"], "resolved");
        assert_eq!(pager.next(SOON).body["status"], "resolved");
        assert_eq!(pager.seen.len(), 2, "{:#?}", pager.seen);
        drop(d);
    });
}

#[test]
fn a_receiver_answering_500_is_retried_until_it_recovers_and_a_400_is_not() {
    watchdog(60, || {
        let mut flaky = Receiver::start(Answer::Status(500, 2));
        let mut wrong = Receiver::start(Answer::Status(400, 100));
        let hooks = [
            webhook(&flaky.url, "name = \"flaky\""),
            webhook(&wrong.url, "name = \"wrong\""),
        ];
        let timers = "resolve_after = \"60s\"\nescalate_after = \"0s\"\nescalate_failures = 0";
        let Outage { a, b: _b, log, d } = two_endpoints("down_after = 2", timers, &hooks);
        a.kill();
        let attempts: Vec<Value> = (0..3).map(|_| flaky.next(SOON).body).collect();
        assert!(
            attempts.iter().all(|b| *b == attempts[0]),
            "the same notification"
        );
        assert_eq!(attempts[0]["status"], "firing");
        let refused = wrong.next(SOON).body;
        assert_eq!(refused["status"], "firing");
        let lines = log.read_until_all(
            SOON,
            &[
                "webhook flaky: delivered incident 1 firing on attempt 3",
                "webhook wrong: incident 1 firing not delivered",
            ],
        );
        let line = lines.iter().find(|l| l.contains("webhook wrong:")).unwrap();
        assert!(line.contains("after 1 attempt(s): HTTP 400"), "{line}");
        assert!(line.starts_with("<28>"), "a warning: {line}");
        // Later notifications of the incident may come (on a loaded machine its
        // severity can rise); the refused one is not sent again.
        let later = wrong.drain_for(Duration::from_millis(500));
        assert!(
            later.iter().all(|p| p.body != refused),
            "a 400 is not retried: {later:#?}"
        );
        drop(d);
    });
}

#[test]
fn a_receiver_that_hangs_delays_neither_healing_nor_syslog_nor_other_receivers() {
    watchdog(60, || {
        let mut hung = Receiver::start(Answer::Hang);
        let mut fine = Receiver::start(Answer::Ok);
        let hooks = [
            webhook(&hung.url, "name = \"hung\"\ntimeout = \"30s\""),
            webhook(&fine.url, "name = \"fine\""),
        ];
        let timers = "resolve_after = \"60s\"\nescalate_after = \"0s\"\nescalate_failures = 0";
        let Outage { a, b, log, mut d } =
            two_endpoints("down_after = 1\nspare = 1", timers, &hooks);
        let addr = d.daemon.as_ref().unwrap().listen_addr();
        let mut client = dial(addr, "/p", None).unwrap();
        client.send(Message::text("before")).unwrap();
        assert_eq!(next_data(&mut client), Message::text("before"));
        // Take down the endpoint the session rides on.
        let attached = d.wait_notice(SOON, "attached to connection");
        let endpoint = attached.endpoint.unwrap();
        let (dead, alive) = if endpoint == a.url() {
            (&a, &b)
        } else {
            (&b, &a)
        };
        dead.kill();
        // The hung receiver holds its request; the rest goes on.
        assert_eq!(hung.next(SOON).body["status"], "firing");
        assert_eq!(fine.next(SOON).body["status"], "firing");
        log.read_until(SOON, "firing (warning, endpoint_down)");
        d.wait_notice(SOON, "healed onto");
        client.send(Message::text("after")).unwrap();
        assert_eq!(next_data(&mut client), Message::text("after"));
        assert!(alive.received().iter().any(|r| r.data == b"after"));
        drop(d);
    });
}

#[test]
fn a_full_queue_drops_the_oldest_lowest_severity_notification_and_says_so() {
    watchdog(60, || {
        let mut hung = Receiver::start(Answer::Hang);
        let hooks = [webhook(
            &hung.url,
            "name = \"hung\"\ntimeout = \"30s\"\nqueue = 1",
        )];
        let timers = "resolve_after = \"300ms\"\nescalate_after = \"500ms\"\nescalate_failures = 0";
        let Outage { a, b: _b, log, d } = two_endpoints("down_after = 2", timers, &hooks);
        a.kill();
        // firing is in flight (held); escalated waits in the queue of one ...
        assert_eq!(hung.next(SOON).body["status"], "firing");
        log.read_until(SOON, "escalated to critical");
        // ... until the resolution pushes it out.
        a.restart().unwrap();
        let lines = log.read_until(SOON, "queue full");
        let line = lines.last().unwrap();
        // Usually the escalation is the one pushed out; on a loaded machine a rise to
        // pool_degraded or pool_down may have queued first, and goes first.
        assert!(
            line.contains("webhook hung: queue full, dropped incident 1 "),
            "{line}"
        );
        assert!(line.contains("the receiver is down or slow"), "{line}");
        assert!(line.starts_with("<28>"), "{line}");
        drop(d);
    });
}

#[test]
fn the_journal_survives_kill_9_and_the_review_reads_it_back() {
    use std::process::{Command, Stdio};
    watchdog(60, || {
        let (a, b) = (Upstream::start().unwrap(), Upstream::start().unwrap());
        let dir = crate::util::TempDir::new();
        let config = dir.path().join("wspoold.toml");
        let state = dir.path().join("state");
        std::fs::write(
            &config,
            format!(
                "[daemon]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n[alerts]\nsyslog = false\ngrace = \"300ms\"\nresolve_after = \"300ms\"\n[pools.p]\nendpoints = [\"{}\", \"{}\"]\ndown_after = 2\n{}",
                state.display(),
                a.url(),
                b.url(),
                crate::util::FAST
            ),
        )
        .unwrap();
        let journal_path = state.join(journal::FILE);
        let records = || {
            journal::read(&journal_path)
                .map(|(r, _)| r)
                .unwrap_or_default()
        };
        let run = || {
            Command::new(env!("CARGO_BIN_EXE_wspoold"))
                .args(["run", "--config"])
                .arg(&config)
                .stderr(Stdio::null())
                .spawn()
                .expect("start wspoold")
        };
        let mut first = run();
        wait_until(
            SOON,
            || "two connections".into(),
            || a.connections() + b.connections() == 2,
        );
        a.kill();
        wait_until(
            SOON,
            || format!("a firing record: {:?}", records()),
            || records().iter().any(|r| r.incident == 1),
        );
        first.kill().unwrap(); // SIGKILL
        first.wait().unwrap();
        let before = records();
        assert_eq!(before.last().unwrap().status.label(), "firing");

        // Restarted with a still down: incident 1 is closed as left open, and a new
        // one (2) opens for the same condition.
        let mut second = run();
        wait_until(
            SOON,
            || format!("incident 2: {:?}", records()),
            || records().iter().any(|r| r.incident == 2),
        );
        let after = records();
        let closed = after
            .iter()
            .find(|r| r.incident == 1 && r.status.label() == "resolved")
            .expect("incident 1 closed at start");
        assert!(
            closed
                .text
                .contains("wspoold stopped while the incident was open")
        );
        a.restart().unwrap();
        wait_until(
            SOON,
            || format!("incident 2 resolved: {:?}", records()),
            || {
                records()
                    .iter()
                    .any(|r| r.incident == 2 && r.status.label() == "resolved")
            },
        );
        // SAFETY: SIGTERM to the child we started.
        unsafe { libc::kill(second.id() as i32, libc::SIGTERM) };
        assert!(second.wait().unwrap().success());

        let review = Command::new(env!("CARGO_BIN_EXE_wspoold"))
            .args(["incidents", "--json", "--since", "1h", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(review.status.success(), "{review:?}");
        let review: Value = serde_json::from_slice(&review.stdout).unwrap();
        let rows = review["incidents"].as_array().unwrap();
        let ids: Vec<u64> = rows
            .iter()
            .map(|r| r["incident"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, [1, 2], "{review:#}");
        assert!(rows.iter().all(|r| r["status"] == "resolved"));
        assert_eq!(rows[1]["kind"], "endpoint_down");
        assert!(rows[1]["recover_seconds"].as_f64().is_some());
        assert_eq!(review["pools"][0]["pool"], "p");
        assert_eq!(review["pools"][0]["incidents"], 2);
        assert_eq!(
            review["pools"][0]["worst_endpoints"][0]["endpoint"],
            a.url()
        );

        let table = Command::new(env!("CARGO_BIN_EXE_wspoold"))
            .args(["incidents", "--journal"])
            .arg(&journal_path)
            .output()
            .unwrap();
        let table = String::from_utf8(table.stdout).unwrap();
        assert!(table.starts_with("ID  SEVERITY  POOL"), "{table}");
        assert!(table.contains("endpoint_down"), "{table}");
        assert!(table.contains("POOL  INCIDENTS  MEAN RECOVER"), "{table}");
    });
}

#[test]
fn a_reload_applies_alerts_to_an_open_incident_without_a_restart() {
    watchdog(60, || {
        // kept: unchanged. ops: moved from `old` to `new`. extra: removed.
        let mut kept = Receiver::start(Answer::Ok);
        let mut old = Receiver::start(Answer::Ok);
        let mut new = Receiver::start(Answer::Ok);
        let (a, b) = (Upstream::start().unwrap(), Upstream::start().unwrap());
        let log = Syslog::new();
        let before = [
            webhook(&kept.url, "name = \"kept\""),
            webhook(&old.url, "name = \"ops\""),
            webhook(&old.url, "name = \"extra\""),
        ];
        // Until the reload, an incident would take an hour to resolve.
        let slow = "resolve_after = \"1h\"\nescalate_after = \"0s\"\nescalate_failures = 0";
        let cfg = config_with(
            &[a.url(), b.url()],
            "down_after = 2",
            &alerts(&log, slow, &before),
        );
        let mut d = start(&cfg);
        d.wait_healthy(2, SOON);
        a.kill();
        let firing = |receiver: &mut Receiver| {
            let post = receiver.next(SOON);
            assert_eq!(post.body["status"], "firing", "{post:#?}");
        };
        firing(&mut kept);
        firing(&mut old);
        firing(&mut old);

        let after = [
            webhook(&kept.url, "name = \"kept\""),
            webhook(&new.url, "name = \"ops\""),
        ];
        let fast = slow.replace("1h", "300ms");
        let mut changed = cfg.clone();
        changed.alerts = config_with(&[a.url()], "", &alerts(&log, &fast, &after)).alerts;
        let control = d.daemon.as_ref().unwrap().control();
        control
            .send(wspoold::event::Control::Apply(Box::new(changed)))
            .unwrap();
        d.wait_notice(SOON, "reloaded");
        // What the monitor says with it came in the same turn: no restart asked for.
        let restart = d.take_ready().into_iter().find(|o| {
            matches!(o, wspoold::event::Observation::Notice(n) if n.text.contains("without a restart"))
        });
        assert!(restart.is_none(), "{restart:?}");
        let lines = log.read_until(SOON, "[alerts] applied");
        let line = lines.last().unwrap();
        assert!(line.contains("webhook(s) changed: ops"), "{line}");
        assert!(line.contains("webhook(s) removed: extra"), "{line}");
        assert!(
            !line.contains("kept"),
            "an unchanged receiver is kept: {line}"
        );

        // The moved receiver hears of the open incident at once; the kept one is not
        // told twice.
        let primed = new.next(SOON);
        assert_eq!(primed.body["status"], "firing");
        assert_eq!(primed.body["incident"], 1);
        // The new resolve_after holds for the incident already open.
        a.restart().unwrap();
        assert_eq!(new.next(SOON).body["status"], "resolved");
        assert_eq!(kept.next(SOON).body["status"], "resolved");
        assert_eq!(kept.seen.len(), 2, "{:#?}", kept.seen);
        let stray = old.drain_for(Duration::from_millis(300));
        assert!(stray.is_empty(), "removed receivers got {stray:#?}");
        drop(d);
    });
}
