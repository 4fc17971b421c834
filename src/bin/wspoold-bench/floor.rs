//! What a heartbeat costs on this machine with wspoold taken out, measured beside the
//! idle run: the same upstream, the same number of connections, a ping a second on
//! each, the same timer slack, and nothing else (no pool, no monitor, no health).
//!
//! - `threads`: a thread per connection that sleeps until its next ping, reads the
//!   last pong and sends the next ping: wspoold's design, and its floor.
//! - `one-thread`: one thread for every connection, pinging each as it falls due: the
//!   floor of an event loop, a design this daemon does not use.

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use serde_json::json;
use tungstenite::Message;
use tungstenite::protocol::WebSocketConfig;

use crate::client::{Ws, dial};
use crate::scale::{Upstream, process_cpu};

const INTERVAL: Duration = Duration::from_secs(1);
/// The timer slack wspoold gives its workers.
const SLACK_NS: u64 = 10_000_000;
/// From the last connection up to the start of the measured window.
const SETTLE: Duration = Duration::from_secs(2);

/// `floor threads|one-thread N SECONDS`: printed as a JSON line.
pub fn floor(design: &str, n: usize, seconds: u64) {
    let upstream = Upstream::start(0);
    // SAFETY: prctl with an integer argument changes only this thread's slack (and
    // that of the threads it starts).
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, SLACK_NS) };
    let start = Instant::now() + Duration::from_secs(1);
    let stop = start + SETTLE + Duration::from_secs(seconds);
    let window = start + SETTLE;
    // Each connection's pings are spread over the second, as wspoold's fall.
    let phase = move |i: usize| INTERVAL.mul_f64(i as f64 / n as f64);
    let measure = || {
        wait_until(window);
        let cpu0 = process_cpu();
        wait_until(stop);
        (process_cpu() - cpu0) / stop.saturating_duration_since(window).as_secs_f64()
    };
    let cpu = match design {
        "threads" => {
            let threads: Vec<_> = (0..n)
                .map(|i| {
                    let url = upstream.url.clone();
                    let first = start + phase(i);
                    std::thread::Builder::new()
                        .stack_size(64 * 1024)
                        .spawn(move || one_connection(&url, first, stop))
                        .expect("spawn a heartbeat thread")
                })
                .collect();
            let cpu = measure();
            for t in threads {
                t.join().expect("a heartbeat thread");
            }
            cpu
        }
        "one-thread" => {
            let mut conns: Vec<Ws> = (0..n).map(|_| open(&upstream.url)).collect();
            let mut beat = 0u32;
            let looping = std::thread::spawn(move || {
                while Instant::now() < stop {
                    for (i, ws) in conns.iter_mut().enumerate() {
                        wait_until(start + INTERVAL * beat + phase(i));
                        heartbeat(ws);
                    }
                    beat += 1;
                }
            });
            let cpu = measure();
            looping.join().expect("the heartbeat loop");
            cpu
        }
        other => crate::usage(&format!("no floor design {other:?}")),
    };
    drop(upstream);
    println!(
        "{}",
        json!({"design": design, "connections": n, "cpu_core": cpu})
    );
}

fn one_connection(url: &str, first: Instant, stop: Instant) {
    let mut ws = open(url);
    let mut next = first;
    while next < stop {
        // Asleep until the next ping, woken only by a hangup, as an idle worker is.
        let mut fd = libc::pollfd {
            fd: ws.get_ref().as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        let left = next.saturating_duration_since(Instant::now());
        let timeout = libc::timespec {
            tv_sec: left.as_secs() as libc::time_t,
            tv_nsec: left.subsec_nanos() as libc::c_long,
        };
        // SAFETY: one live pollfd and a live timespec, no signal mask.
        unsafe { libc::ppoll(&mut fd, 1, &timeout, std::ptr::null()) };
        if Instant::now() < next {
            // A hangup: nothing more to measure on this connection.
            return;
        }
        heartbeat(&mut ws);
        next += INTERVAL;
    }
}

/// Read what came (the last pong), send the next ping.
fn heartbeat(ws: &mut Ws) {
    while ws.read().is_ok() {}
    match ws.send(Message::Ping(Vec::from(*b"wspoold!").into())) {
        Ok(()) => {}
        Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => panic!("heartbeat floor: ping failed: {e}"),
    }
}

/// A non-blocking connection with the buffers wspoold's workers use (tungstenite's
/// default read buffer is 128 KiB, zeroed on every read).
fn open(url: &str) -> Ws {
    let ws = dial(url, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{url}: {e}"));
    let mut ws = Ws::from_raw_socket(
        ws.into_inner(),
        tungstenite::protocol::Role::Client,
        Some(
            WebSocketConfig::default()
                .read_buffer_size(4 * 1024)
                .write_buffer_size(0),
        ),
    );
    ws.get_mut()
        .set_nonblocking(true)
        .expect("a non-blocking socket");
    ws
}

fn wait_until(at: Instant) {
    while let Some(left) = at.checked_duration_since(Instant::now()) {
        std::thread::sleep(left);
    }
}
