//! The bridge benchmark: a client talking to an echo upstream directly, then through
//! wspoold (round trips one at a time, and a pipelined stream), then the heal time of
//! a session whose upstream connection is killed under it.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tungstenite::{Message, WebSocket};
use wspoold::config::Config;
use wspoold::daemon::{Daemon, Options};

/// Messages in flight in the throughput run.
const WINDOW: usize = 64;
/// Bytes per message in the latency and throughput runs.
const SMALL: usize = 64;

/// A plain echo server: one blocking thread per connection, no polling tick, so both
/// paths see the same upstream. It can shut a connection down, as a killed process
/// would (the kernel sends FIN).
struct Echo {
    addr: SocketAddr,
    /// Open connections by number, and the one that last carried a data message.
    conns: Arc<Mutex<HashMap<u64, TcpStream>>>,
    last: Arc<AtomicU64>,
}

impl Echo {
    fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the echo server");
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<HashMap<u64, TcpStream>>> = Arc::default();
        let last = Arc::new(AtomicU64::new(0));
        let (c, l) = (conns.clone(), last.clone());
        std::thread::spawn(move || {
            for (id, stream) in (1u64..).zip(listener.incoming()) {
                let Ok(stream) = stream else { continue };
                let _ = stream.set_nodelay(true);
                if let Ok(clone) = stream.try_clone() {
                    c.lock().insert(id, clone);
                }
                let (c, l) = (c.clone(), l.clone());
                std::thread::spawn(move || {
                    if let Ok(mut ws) = tungstenite::accept(stream) {
                        loop {
                            match ws.read() {
                                Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                                    l.store(id, Ordering::Relaxed);
                                    if ws.send(m).is_err() {
                                        break;
                                    }
                                }
                                Ok(_) => {}
                                Err(_) => break,
                            }
                        }
                    }
                    c.lock().remove(&id);
                });
            }
        });
        Echo { addr, conns, last }
    }

    fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    fn open(&self) -> usize {
        self.conns.lock().len()
    }

    /// Shut down the connection that carried the last data message; when it happened.
    fn kill_last(&self) -> Instant {
        let id = self.last.load(Ordering::Relaxed);
        let conns = self.conns.lock();
        let stream = conns.get(&id).expect("the session's connection is open");
        let at = Instant::now();
        let _ = stream.shutdown(std::net::Shutdown::Both);
        at
    }
}

fn dial(url: &str) -> WebSocket<TcpStream> {
    let addr = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let stream = TcpStream::connect(&addr).expect("connect");
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (ws, _) = tungstenite::client(url, stream).expect("handshake");
    ws
}

/// The next data message.
fn next_data(ws: &mut WebSocket<TcpStream>) -> io::Result<Message> {
    loop {
        match ws.read() {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => return Ok(m),
            Ok(Message::Close(frame)) => {
                return Err(io::Error::other(format!("closed: {frame:?}")));
            }
            Ok(_) => {}
            Err(e) => return Err(io::Error::other(e)),
        }
    }
}

/// One message at a time: each round trip's duration.
fn round_trips(ws: &mut WebSocket<TcpStream>, n: usize) -> Vec<Duration> {
    let payload = "x".repeat(SMALL);
    // Warm up the path (and the daemon's first-ping bookkeeping).
    for _ in 0..100 {
        ws.send(Message::text(payload.clone())).unwrap();
        next_data(ws).unwrap();
    }
    (0..n)
        .map(|_| {
            let started = Instant::now();
            ws.send(Message::text(payload.clone())).unwrap();
            next_data(ws).unwrap();
            started.elapsed()
        })
        .collect()
}

/// A pipelined stream with `WINDOW` messages in flight: messages per second.
fn throughput(ws: &mut WebSocket<TcpStream>, n: usize) -> f64 {
    let payload = "y".repeat(SMALL);
    let started = Instant::now();
    let (mut sent, mut got) = (0, 0);
    while got < n {
        while sent < n && sent - got < WINDOW {
            ws.write(Message::text(payload.clone())).unwrap();
            sent += 1;
        }
        ws.flush().unwrap();
        next_data(ws).unwrap();
        got += 1;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn millis(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn daemon(upstream: &str, pool: &str) -> Daemon {
    let text = format!(
        "[daemon]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[alerts]\nsyslog = false\n[pools.bench]\nendpoints = [\"{upstream}\"]\nheartbeat_interval = \"1s\"\nheartbeat_timeout = \"1s\"\nbackoff_base = \"1ms\"\nbackoff_max = \"5ms\"\ndown_after = 1000\n{pool}\n"
    );
    let config = Config::parse(&text, "<bench>").expect("bench config");
    Daemon::start(
        &config,
        Options {
            stderr: false,
            observer: None,
            notifier: None,
        },
    )
    .expect("start the daemon")
}

/// Wait until the echo server holds `n` connections.
fn wait_open(echo: &Echo, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while echo.open() != n {
        assert!(
            Instant::now() < deadline,
            "the pool did not reach {n} connections (has {})",
            echo.open()
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Kill the session's upstream connection `kills` times; each heal time, from the
/// kill to the echo of a message sent right after it.
fn heals(spare: usize, kills: usize) -> Vec<Duration> {
    let echo = Echo::start();
    let d = daemon(&echo.url(), &format!("min = 1\nspare = {spare}"));
    // Idle, the pool holds `min`; with a client on it, the client's plus the spare.
    wait_open(&echo, 1);
    let want = 1 + spare;
    let mut ws = dial(&format!("ws://{}/bench", d.listen_addr()));
    let mut times = Vec::with_capacity(kills);
    for i in 0..kills {
        // The pool is whole again: the session's connection, and the spare if any.
        let text = format!("before {i}");
        ws.send(Message::text(text.clone())).unwrap();
        assert_eq!(next_data(&mut ws).unwrap(), Message::text(text));
        wait_open(&echo, want);
        let killed = echo.kill_last();
        let text = format!("after {i}");
        ws.send(Message::text(text.clone())).unwrap();
        // At-least-once may bring "before" back first, if its pong had not arrived.
        loop {
            let got = next_data(&mut ws).expect("the session survives");
            if got == Message::text(text.clone()) {
                break;
            }
        }
        times.push(killed.elapsed());
    }
    d.shutdown();
    times
}

pub fn run(trips: usize, kills: usize) {
    let echo = Echo::start();
    let mut direct = dial(&echo.url());
    let mut direct_rtt = round_trips(&mut direct, trips);
    let direct_rate = throughput(&mut direct, trips * 10);
    drop(direct);

    let d = daemon(&echo.url(), "min = 1\nspare = 1");
    wait_open(&echo, 1);
    let mut via = dial(&format!("ws://{}/bench", d.listen_addr()));
    let mut via_rtt = round_trips(&mut via, trips);
    let via_rate = throughput(&mut via, trips * 10);
    drop(via);
    d.shutdown();

    direct_rtt.sort();
    via_rtt.sort();
    let (d50, d99) = (percentile(&direct_rtt, 0.5), percentile(&direct_rtt, 0.99));
    let (v50, v99) = (percentile(&via_rtt, 0.5), percentile(&via_rtt, 0.99));
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();

    let mut warm = heals(1, kills);
    let mut cold = heals(0, kills);
    warm.sort();
    cold.sort();

    println!(
        "wspoold-bench bridge: {trips} round trips of {SMALL} B, {} pipelined ({WINDOW} in flight), {kills} kills per heal row\n",
        trips * 10
    );
    println!("| path | round trip p50 | p99 | messages/s |");
    println!("|---|---|---|---|");
    println!(
        "| direct | {} | {} | {:.0} |",
        micros(d50),
        micros(d99),
        direct_rate
    );
    println!(
        "| through wspoold | {} | {} | {:.0} |",
        micros(v50),
        micros(v99),
        via_rate
    );
    println!(
        "| ratio (wspoold / direct) | {:.2}× | {:.2}× | {:.2}× |",
        ratio(v50, d50),
        ratio(v99, d99),
        via_rate / direct_rate
    );
    println!();
    println!("| heal after a kill (death to the next echo) | p50 | p99 | max |");
    println!("|---|---|---|---|");
    for (name, times) in [
        ("warm spare (spare = 1)", &warm),
        ("no spare (spare = 0)", &cold),
    ] {
        println!(
            "| {name} | {} | {} | {} |",
            millis(percentile(times, 0.5)),
            millis(percentile(times, 0.99)),
            millis(*times.last().unwrap())
        );
    }
}
