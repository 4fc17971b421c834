//! The benchmarks' client side: dialling a path, reading data messages, and the
//! statistics every table uses.

use std::io;
use std::net::TcpStream;
use std::time::Duration;

use tungstenite::{Message, WebSocket};

pub type Ws = WebSocket<TcpStream>;

/// A WebSocket client to `url` (`ws://HOST:PORT/PATH`) with Nagle off and a read
/// timeout of `read_timeout`.
pub fn dial(url: &str, read_timeout: Duration) -> io::Result<Ws> {
    let addr = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let stream = TcpStream::connect(&addr)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(read_timeout))?;
    let (ws, _) = tungstenite::client(url, stream)
        .map_err(|e| io::Error::other(format!("handshake with {url}: {e}")))?;
    Ok(ws)
}

/// The next data message; pings and pongs are skipped, a close is an error.
pub fn next_data(ws: &mut Ws) -> io::Result<Message> {
    loop {
        match ws.read() {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => return Ok(m),
            Ok(Message::Close(frame)) => {
                return Err(io::Error::other(format!("closed: {frame:?}")));
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) => return Err(e),
            Err(e) => return Err(io::Error::other(e)),
        }
    }
}

/// True for the error a read timeout gives.
pub fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The `p` quantile (0..=1) of sorted durations; zero for none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

pub fn micros(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

pub fn millis(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.0} ms")
    }
}
