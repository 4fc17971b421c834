//! What a path costs: round-trip latency of one small message at a time, and
//! throughput of a pipelined stream of small and of 64 KiB messages, on one client
//! connection through each path to the same echo upstream.

use std::time::{Duration, Instant};

use tungstenite::Message;

use crate::client::{Ws, dial, next_data, percentile};
use crate::peers::Path;

/// Bytes in a small message.
pub const SMALL: usize = 64;
/// Bytes in a big message.
pub const BIG: usize = 64 * 1024;

/// One path's figures.
pub struct Overhead {
    pub name: String,
    /// Round trip p50, p99, p99.9.
    pub rtt: [Duration; 3],
    /// Small messages per second, pipelined.
    pub small_rate: f64,
    /// 64 KiB messages per second, pipelined.
    pub big_rate: f64,
}

impl Overhead {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "rtt_us": self.rtt.map(|d| d.as_secs_f64() * 1e6),
            "small_rate": self.small_rate,
            "big_rate": self.big_rate,
        })
    }

    pub fn from_json(v: &serde_json::Value) -> Overhead {
        let us = |i: usize| Duration::from_secs_f64(v["rtt_us"][i].as_f64().unwrap_or(0.0) / 1e6);
        Overhead {
            name: v["name"].as_str().unwrap_or("?").to_string(),
            rtt: [us(0), us(1), us(2)],
            small_rate: v["small_rate"].as_f64().unwrap_or(0.0),
            big_rate: v["big_rate"].as_f64().unwrap_or(0.0),
        }
    }

    pub fn small_mbs(&self) -> f64 {
        self.small_rate * SMALL as f64 / 1e6
    }

    pub fn big_mbs(&self) -> f64 {
        self.big_rate * BIG as f64 / 1e6
    }
}

/// Rounds each path is measured in, interleaved with the others, so that a change in
/// how the scheduler happens to place the threads falls on every path alike.
const ROUNDS: usize = 3;

/// Measures every path, `trips` round trips each in all; the pipelined runs scale
/// with it.
pub fn measure_all(paths: &[Path], trips: usize) -> Vec<Overhead> {
    let mut clients: Vec<Ws> = paths
        .iter()
        .map(|p| {
            dial(&p.url, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{}: {e}", p.name))
        })
        .collect();
    let mut rtts: Vec<Vec<Duration>> = vec![Vec::new(); paths.len()];
    let mut small = vec![0.0; paths.len()];
    let mut big = vec![0.0; paths.len()];
    for _ in 0..ROUNDS {
        for (i, (path, ws)) in paths.iter().zip(clients.iter_mut()).enumerate() {
            rtts[i].extend(round_trips(ws, trips / ROUNDS, path.name));
            small[i] += pipelined(
                ws,
                Message::text("y".repeat(SMALL)),
                trips * 5 / ROUNDS,
                64,
                path.name,
            );
            let message = Message::binary(vec![7u8; BIG]);
            big[i] += pipelined(ws, message, (trips / 10 / ROUNDS).max(100), 8, path.name);
        }
    }
    for ws in &mut clients {
        let _ = ws.close(None);
    }
    paths
        .iter()
        .zip(rtts)
        .enumerate()
        .map(|(i, (path, mut rtt))| {
            rtt.sort();
            Overhead {
                name: path.name.to_string(),
                rtt: [
                    percentile(&rtt, 0.5),
                    percentile(&rtt, 0.99),
                    percentile(&rtt, 0.999),
                ],
                small_rate: small[i] / ROUNDS as f64,
                big_rate: big[i] / ROUNDS as f64,
            }
        })
        .collect()
}

/// One message at a time: each round trip's duration, after a warm-up.
fn round_trips(ws: &mut Ws, n: usize, name: &str) -> Vec<Duration> {
    let payload = "x".repeat(SMALL);
    let mut one = || {
        let started = Instant::now();
        ws.send(Message::text(payload.clone()))
            .unwrap_or_else(|e| panic!("{name}: send: {e}"));
        next_data(ws).unwrap_or_else(|e| panic!("{name}: echo: {e}"));
        started.elapsed()
    };
    for _ in 0..100 {
        one();
    }
    (0..n).map(|_| one()).collect()
}

/// `n` copies of `message` with up to `window` in flight: messages per second.
fn pipelined(ws: &mut Ws, message: Message, n: usize, window: usize, name: &str) -> f64 {
    let started = Instant::now();
    let (mut sent, mut got) = (0, 0);
    while got < n {
        while sent < n && sent - got < window {
            ws.write(message.clone())
                .unwrap_or_else(|e| panic!("{name}: write: {e}"));
            sent += 1;
        }
        ws.flush().unwrap_or_else(|e| panic!("{name}: flush: {e}"));
        next_data(ws).unwrap_or_else(|e| panic!("{name}: echo: {e}"));
        got += 1;
    }
    n as f64 / started.elapsed().as_secs_f64()
}
