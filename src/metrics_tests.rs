use super::*;
use crate::status::{EndpointStatus, PoolStatus, SinkStatus};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn quantiles_interpolate_within_their_bucket() {
    let mut counts = Counts::default();
    assert_eq!(counts.quantile(0.5), None, "nothing observed");
    for _ in 0..98 {
        counts.observe(Duration::from_micros(700)); // (0.5ms, 1ms]
    }
    counts.observe(ms(20)); // (10ms, 25ms]
    counts.observe(ms(20));
    let p50 = counts.quantile(0.5).unwrap();
    assert!((0.0005..=0.001).contains(&p50), "{p50}");
    let p99 = counts.quantile(0.99).unwrap();
    assert!((0.01..=0.025).contains(&p99), "{p99}");
    // Beyond the last bound: the last bound.
    let mut slow = Counts::default();
    slow.observe(Duration::from_secs(60));
    assert_eq!(slow.quantile(0.5), Some(10.0));
}

#[test]
fn a_window_is_the_difference_of_two_readings() {
    let histogram = Histogram::default();
    histogram.observe(ms(1));
    let earlier = histogram.read();
    histogram.observe(ms(200));
    histogram.observe(ms(200));
    let now = histogram.read();
    assert_eq!(now.count(), 3);
    let recent = now.since(&earlier);
    assert_eq!(recent.count(), 2);
    let p50 = recent.quantile(0.5).unwrap();
    assert!((0.1..=0.25).contains(&p50), "{p50}");
    assert!((recent.sum - 0.4).abs() < 1e-6, "{}", recent.sum);
}

fn sample_status() -> Status {
    let mut rtt = Counts::default();
    rtt.observe(ms(3));
    Status {
        live: true,
        pools: vec![PoolStatus {
            name: "market".into(),
            endpoints: vec![EndpointStatus {
                url: "wss://a.example/ws?x=\"1\"".into(),
                state: "up".into(),
                connections: [("idle".to_string(), 2), ("leased".to_string(), 1)]
                    .into_iter()
                    .collect(),
                connects: [("ok".to_string(), 3)].into_iter().collect(),
                rtt,
                messages_to_upstream: 5,
                ..Default::default()
            }],
            ..Default::default()
        }],
        alerts: vec![SinkStatus {
            name: "syslog".into(),
            sent: 7,
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn the_text_format_has_every_family_and_escapes_labels() {
    let text = render(&sample_status());
    for family in FAMILIES {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing:\n{text}"
        );
    }
    assert!(
        text.contains(
            r#"wspoold_connections{pool="market",endpoint="wss://a.example/ws?x=\"1\"",state="leased"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"wspoold_heartbeat_rtt_seconds_bucket{pool="market",endpoint="wss://a.example/ws?x=\"1\"",le="0.005"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"le="0.0025"} 0"#),
        "cumulative buckets start at zero below the sample:\n{text}"
    );
    assert!(
        text.contains(r#"wspoold_messages_total{pool="market",direction="to_upstream"} 5"#),
        "{text}"
    );
    assert!(
        text.contains(r#"wspoold_incidents_open{severity="critical"} 0"#),
        "{text}"
    );
    assert!(
        text.contains(r#"wspoold_alerts_total{sink="syslog",result="sent"} 7"#),
        "{text}"
    );
    // Every sample line is name{labels} value, the value a number.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
}
