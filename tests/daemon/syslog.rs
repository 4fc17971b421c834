//! Syslog lines as an operator reads them: RFC 3164 to the configured socket, tag
//! wspoold, level from the event, pool= and endpoint=, one line per state change.

use std::time::Duration;

use wspoold::faults::Upstream;

use crate::util::{Syslog, config_with, start, watchdog};

const SOON: Duration = Duration::from_secs(5);

#[test]
fn syslog_lines_carry_level_tag_pool_and_endpoint_once_per_state_change() {
    watchdog(30, || {
        let log = Syslog::new();
        let up = Upstream::start().unwrap();
        let alerts = format!(
            "syslog = true\nsyslog_socket = \"{}\"\nsyslog_facility = \"daemon\"\ngrace = \"300ms\"",
            log.path.display()
        );
        let cfg = config_with(&[up.url()], "min = 4\ndown_after = 2", &alerts);
        let mut d = start(&cfg);
        d.wait_healthy(4, SOON);
        log.read_until(SOON, "pool warm");
        up.kill();
        let lines = log.read_until(SOON, "pool down");
        let pid = std::process::id();
        let tag = format!("wspoold[{pid}]:");
        // daemon facility (3): warning = 3*8+4 = 28, crit = 26, info = 30.
        let down: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains("endpoint down after"))
            .collect();
        assert_eq!(
            down.len(),
            1,
            "one line per state change, not per connection: {lines:#?}"
        );
        assert!(
            down[0].starts_with("<30>"),
            "what was done is info: {}",
            down[0]
        );
        assert!(down[0].contains(&tag), "{}", down[0]);
        assert!(
            down[0].contains(&format!("pool=p endpoint={}", up.url())),
            "{}",
            down[0]
        );
        // The incident carries the severity: opened as a warning (the only primary is
        // down), raised to critical when the pool has no connection past the grace.
        let firing: Vec<&String> = lines.iter().filter(|l| l.contains("incident=1 ")).collect();
        assert!(firing[0].starts_with("<28>"), "{}", firing[0]);
        assert!(
            firing[0].contains(&format!(
                "incident=1 pool=p endpoint={}: firing (warning, endpoint_down)",
                up.url()
            )),
            "{}",
            firing[0]
        );
        let critical = lines.iter().find(|l| l.contains("pool down")).unwrap();
        assert!(critical.starts_with("<26>"), "{critical}");
        assert!(critical.contains("incident=1 pool=p"), "{critical}");
        assert!(
            critical.contains("severity raised from warning to critical (pool_down)"),
            "{critical}"
        );
        up.restart().unwrap();
        let lines = log.read_until(SOON, "pool recovered");
        assert!(lines.last().unwrap().starts_with("<30>"));
        assert!(lines.last().unwrap().contains("incident=1 pool=p"));
        drop(d);
    });
}

#[test]
fn missing_syslog_socket_keeps_the_daemon_running() {
    watchdog(30, || {
        let up = Upstream::start().unwrap();
        let alerts = "syslog = true\nsyslog_socket = \"/nonexistent/wspoold/log\"";
        let mut d = start(&config_with(&[up.url()], "", alerts));
        d.wait_healthy(2, SOON);
        up.cut(wspoold::faults::Cut::Reset);
        d.wait_death(SOON, "a reset", |c| *c == wspoold::event::Cause::Reset);
        d.wait_healthy(2, SOON);
    });
}
