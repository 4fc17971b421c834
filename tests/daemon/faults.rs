//! Bad upstreams: every fault yields the right cause, no panic, and the pool heals
//! once the endpoint is back.

use std::time::{Duration, Instant};

use wspoold::event::Cause;
use wspoold::faults::{Cut, Fault, Mode, Relay, Upstream, unused_port};

use crate::util::{BOUND, config, start, wait_until, watchdog};

const SOON: Duration = Duration::from_secs(5);

#[test]
fn unreachable_port_is_refused_then_the_pool_heals_when_it_listens() {
    watchdog(30, || {
        let up = Upstream::start().unwrap();
        up.kill();
        let mut d = start(&config(&[up.url()], ""));
        d.wait_death(SOON, "a refused connect", |c| *c == Cause::Refused);
        d.wait_notice(SOON, "endpoint down");
        up.restart().unwrap();
        d.wait_notice(SOON, "endpoint back up");
        d.wait_healthy(2, SOON);
    });
}

#[test]
fn unresolvable_host_is_a_dns_failure() {
    watchdog(30, || {
        let mut d = start(&config(&["ws://nonexistent.invalid:9/".into()], ""));
        let (cause, ..) = d.wait_death(SOON, "a dns failure", |c| matches!(c, Cause::Dns(_)));
        assert!(cause.to_string().contains("nonexistent.invalid"), "{cause}");
    });
}

#[test]
fn handshake_rejected_with_401_and_503_names_the_status() {
    for status in [401u16, 503] {
        watchdog(30, move || {
            let up = Upstream::start().unwrap();
            up.set_mode(Mode::Reject(status));
            let mut d = start(&config(&[up.url()], ""));
            let (cause, ..) = d.wait_death(SOON, "a rejected handshake", |c| {
                matches!(c, Cause::Handshake(_))
            });
            assert!(cause.to_string().contains(&status.to_string()), "{cause}");
            up.set_mode(Mode::Echo);
            d.wait_healthy(2, SOON);
        });
    }
}

#[test]
fn upstream_that_never_answers_the_handshake_is_a_handshake_timeout() {
    watchdog(30, || {
        let up = Upstream::start().unwrap();
        up.set_mode(Mode::Silent);
        let mut d = start(&config(&[up.url()], ""));
        let started = Instant::now();
        d.wait_death(SOON, "a handshake timeout", |c| {
            *c == Cause::HandshakeTimeout
        });
        // connect_timeout is 500 ms.
        assert!(started.elapsed() < Duration::from_millis(500) + BOUND);
    });
}

#[test]
fn garbage_instead_of_a_handshake_answer_is_a_handshake_failure_not_a_panic() {
    watchdog(30, || {
        let up = Upstream::start().unwrap();
        up.set_mode(Mode::Garbage);
        let mut d = start(&config(&[up.url()], ""));
        d.wait_death(SOON, "a handshake failure", |c| {
            matches!(c, Cause::Handshake(_))
        });
        up.set_mode(Mode::Echo);
        d.wait_healthy(2, SOON);
    });
}

#[test]
fn message_larger_than_max_message_size_is_a_protocol_error() {
    watchdog(30, || {
        let up = Upstream::start().unwrap();
        up.set_mode(Mode::Oversize(8 * 1024));
        let mut d = start(&config(&[up.url()], "max_message_size = \"4KiB\""));
        let (cause, ..) = d.wait_death(SOON, "a protocol error", |c| {
            matches!(c, Cause::Protocol(_))
        });
        assert!(cause.to_string().contains("too long"), "{cause}");
        up.set_mode(Mode::Echo);
        d.wait_healthy(2, SOON);
    });
}

#[test]
fn close_frame_from_the_upstream_is_reported_with_its_code_and_replaced_at_once() {
    watchdog(30, || {
        let up = Upstream::start().unwrap();
        let mut d = start(&config(&[up.url()], ""));
        d.wait_healthy(2, SOON);
        let cut = Instant::now();
        up.cut(Cut::Close(1001));
        let (cause, at, ..) = d.wait_death(SOON, "a close", |c| matches!(c, Cause::Closed(..)));
        assert!(matches!(cause, Cause::Closed(1001, _)), "{cause}");
        assert!(at.duration_since(cut) < BOUND);
        d.wait_healthy(2, SOON);
    });
}

#[test]
fn reset_mid_stream_is_detected_at_once() {
    watchdog(30, || {
        let up = Upstream::start().unwrap();
        let relay = Relay::start(up.addr()).unwrap();
        let mut d = start(&config(&[relay.url("/")], ""));
        d.wait_healthy(2, SOON);
        let cut = Instant::now();
        relay.set(Fault::Reset);
        let (_, at, ..) = d.wait_death(SOON, "a reset", |c| *c == Cause::Reset);
        assert!(
            at.duration_since(cut) < BOUND,
            "{:?}",
            at.duration_since(cut)
        );
        d.wait_healthy(2, SOON);
    });
}

#[test]
fn upstream_reset_by_the_server_itself_is_a_reset() {
    watchdog(30, || {
        let up = Upstream::start().unwrap();
        let mut d = start(&config(&[up.url()], ""));
        d.wait_healthy(2, SOON);
        up.cut(Cut::Reset);
        d.wait_death(SOON, "a reset", |c| *c == Cause::Reset);
        d.wait_healthy(2, SOON);
    });
}

/// Silence (a blackhole or a frozen server) is found by heartbeats alone, within
/// heartbeat_interval + heartbeat_timeout of the last frame.
fn silent_peer_is_found_within_the_detection_bound(silence: impl FnOnce(&Upstream, &Relay)) {
    let up = Upstream::start().unwrap();
    let relay = Relay::start(up.addr()).unwrap();
    let mut d = start(&config(&[relay.url("/")], ""));
    d.wait_healthy(2, SOON);
    silence(&up, &relay);
    d.wait_silent_peer_death(SOON);
    relay.set(Fault::Pass);
    up.set_mode(Mode::Echo);
    d.wait_healthy(2, SOON);
}

#[test]
fn blackholed_path_is_a_heartbeat_timeout_within_the_bound() {
    watchdog(30, || {
        silent_peer_is_found_within_the_detection_bound(|_, relay| relay.set(Fault::Blackhole))
    });
}

#[test]
fn frozen_upstream_is_a_heartbeat_timeout_within_the_bound() {
    watchdog(30, || {
        silent_peer_is_found_within_the_detection_bound(|up, _| up.set_mode(Mode::Freeze))
    });
}

#[test]
fn peer_that_stops_reading_is_found_within_the_bound() {
    watchdog(30, || {
        silent_peer_is_found_within_the_detection_bound(|_, relay| relay.set(Fault::Stall))
    });
}

#[test]
fn every_endpoint_down_is_critical_paced_and_recovers() {
    watchdog(30, || {
        let up = Upstream::start().unwrap();
        let dead = format!("ws://127.0.0.1:{}/", unused_port());
        let mut d = start(&config(&[up.url(), dead], "down_after = 2"));
        d.wait_healthy(2, SOON);
        up.kill();
        let notice = d.wait_notice(SOON, "pool down");
        assert_eq!(
            notice.severity,
            wspoold::event::Severity::Critical,
            "{notice:?}"
        );
        // Backoff paces the probes: with a 300 ms ceiling, two endpoints are tried a
        // handful of times a second, not thousands.
        let window = d.collect_for(Duration::from_secs(1));
        let attempts = window
            .iter()
            .filter(|o| matches!(o, wspoold::event::Observation::Died { .. }))
            .count();
        assert!(attempts <= 40, "{attempts} failed attempts in one second");
        up.restart().unwrap();
        d.wait_healthy(2, SOON);
        // The other endpoint stays dead: the incident stays open (endpoint_down), but
        // the pool is no longer down.
        let update = d.wait_for(SOON, "the incident no longer pool down", |o| {
            matches!(o, wspoold::event::Observation::Incident(r)
                if r.text.starts_with("better, now endpoint_down"))
        });
        let wspoold::event::Observation::Incident(record) = update else {
            unreachable!()
        };
        assert_ne!(record.status, wspoold::incident::Status::Resolved);
    });
}

#[test]
fn headers_and_on_connect_reach_the_upstream_and_heartbeats_are_answered() {
    watchdog(30, || {
        let up = Upstream::start().unwrap();
        let extra = "min = 1\nheaders = { Authorization = \"Bearer t0k\", X-Desk = \"fx\" }\non_connect = ['{\"op\":\"auth\"}', 'second']";
        let mut d = start(&config(&[up.url()], extra));
        d.wait_healthy(1, SOON);
        let headers = up.last_request_headers();
        assert!(
            headers.contains(&("authorization".into(), "Bearer t0k".into())),
            "{headers:?}"
        );
        assert!(
            headers.contains(&("x-desk".into(), "fx".into())),
            "{headers:?}"
        );
        wait_until(
            SOON,
            || {
                format!(
                    "2 messages and 3 pings: {} and {}",
                    up.received().len(),
                    up.pings()
                )
            },
            || up.received().len() >= 2 && up.pings() >= 3,
        );
        let texts: Vec<String> = up
            .received()
            .iter()
            .map(|r| String::from_utf8_lossy(&r.data).to_string())
            .collect();
        assert_eq!(
            texts[..2],
            ["{\"op\":\"auth\"}".to_string(), "second".to_string()]
        );
    });
}

#[test]
fn an_adaptive_heartbeat_timeout_finds_a_frozen_fast_upstream_well_inside_the_fixed_bound() {
    watchdog(30, || {
        let up = Upstream::start().unwrap();
        // A 2 s timeout that may adapt down to 50 ms: loopback answers in well under a
        // millisecond, so the timeout sits at the floor.
        let mut cfg = config(&[up.url()], "");
        cfg.pools[0].heartbeat_timeout = Duration::from_secs(2);
        cfg.pools[0].heartbeat_timeout_min = Duration::from_millis(50);
        let mut d = start(&cfg);
        d.wait_healthy(2, SOON);
        // At the floor on an idle machine; a few milliseconds above it on a busy one.
        let adapted = d.wait_notice(SOON, "heartbeat timeout adapted to ");
        assert_eq!(adapted.endpoint.as_deref(), Some(up.url().as_str()));
        // The workers were told before the line was logged.
        up.set_mode(Mode::Freeze);
        let (cause, at, last_life, _) = d.wait_death(SOON, "a heartbeat timeout", |c| {
            *c == Cause::HeartbeatTimeout
        });
        assert_eq!(cause, Cause::HeartbeatTimeout);
        // Fixed, the bound would be 200 ms + 2 s; adapted it is 200 ms + 50 ms.
        let silent = at.duration_since(last_life.expect("it was connected"));
        assert!(
            silent < Duration::from_millis(1200),
            "declared after {silent:?}"
        );
    });
}
