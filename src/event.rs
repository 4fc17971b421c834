//! The messages that cross threads: what workers report, what the monitor commands,
//! what control asks for, and the notices that become log lines and alerts.

use std::fmt;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tungstenite::WebSocket;

use crate::session::Carry;

/// Identifies one pooled connection (one worker thread) for the daemon's lifetime.
pub type ConnId = u64;

/// Why a connection ended or could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The name did not resolve.
    Dns(String),
    /// Every address refused the TCP connection.
    Refused,
    /// No address accepted the TCP connection within `connect_timeout`.
    ConnectTimeout,
    /// The TLS handshake failed.
    Tls(String),
    /// The WebSocket handshake failed: an HTTP status, or a malformed answer.
    Handshake(String),
    /// TLS or WebSocket handshake did not finish within `connect_timeout`.
    HandshakeTimeout,
    /// The upstream closed the connection, with the close code it sent (1005: none).
    Closed(u16, String),
    /// The upstream (or something on the path) reset the TCP connection.
    Reset,
    /// No frame of any kind arrived within `heartbeat_interval + heartbeat_timeout`.
    HeartbeatTimeout,
    /// Output stayed pending for `write_timeout`: the peer stopped reading.
    WriteStall,
    /// The upstream broke the WebSocket protocol (garbage, oversized message, ...).
    Protocol(String),
    /// Another socket error.
    Io(String),
    /// The worker stopped making progress and was abandoned by the monitor.
    Stuck,
    /// The monitor closed it on purpose (shutdown, surplus, failback).
    Retired,
}

impl Cause {
    /// A short stable label, used as the `cause` of metrics and in log lines.
    pub fn label(&self) -> &'static str {
        match self {
            Cause::Dns(_) => "dns",
            Cause::Refused => "refused",
            Cause::ConnectTimeout => "connect_timeout",
            Cause::Tls(_) => "tls",
            Cause::Handshake(_) => "handshake",
            Cause::HandshakeTimeout => "handshake_timeout",
            Cause::Closed(..) => "closed",
            Cause::Reset => "reset",
            Cause::HeartbeatTimeout => "heartbeat_timeout",
            Cause::WriteStall => "write_stall",
            Cause::Protocol(_) => "protocol",
            Cause::Io(_) => "io",
            Cause::Stuck => "stuck",
            Cause::Retired => "retired",
        }
    }

    /// A death that says the path or the peer is sick, not just that a connection ended:
    /// its endpoint becomes suspect at once.
    pub fn suspects_endpoint(&self) -> bool {
        matches!(
            self,
            Cause::HeartbeatTimeout | Cause::WriteStall | Cause::Reset | Cause::Stuck
        )
    }

    /// The connection was never established (counts as a failed connect attempt).
    pub fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            Cause::Dns(_)
                | Cause::Refused
                | Cause::ConnectTimeout
                | Cause::Tls(_)
                | Cause::Handshake(_)
                | Cause::HandshakeTimeout
        )
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Dns(e) => write!(f, "name resolution failed: {e}"),
            Cause::Refused => f.write_str("connection refused"),
            Cause::ConnectTimeout => f.write_str("tcp connect timed out"),
            Cause::Tls(e) => write!(f, "tls handshake failed: {e}"),
            Cause::Handshake(e) => write!(f, "websocket handshake failed: {e}"),
            Cause::HandshakeTimeout => f.write_str("handshake timed out"),
            Cause::Closed(code, reason) if reason.is_empty() => {
                write!(f, "closed by upstream with code {code}")
            }
            Cause::Closed(code, reason) => {
                write!(f, "closed by upstream with code {code} ({reason})")
            }
            Cause::Reset => f.write_str("connection reset"),
            Cause::HeartbeatTimeout => f.write_str("heartbeat timeout (peer silent)"),
            Cause::WriteStall => f.write_str("write stall (peer stopped reading)"),
            Cause::Protocol(e) => write!(f, "protocol error: {e}"),
            Cause::Io(e) => write!(f, "socket error: {e}"),
            Cause::Stuck => f.write_str("worker stopped making progress"),
            Cause::Retired => f.write_str("closed by wspoold"),
        }
    }
}

/// What a worker reports to the monitor.
#[derive(Debug)]
pub enum Event {
    /// Connected, handshake done, `on_connect` sent: the connection is idle and usable.
    Connected {
        id: ConnId,
        peer: SocketAddr,
        /// From the start of the attempt to the end of the handshake.
        took: Duration,
    },
    /// A heartbeat ping was answered (`rtt`), or its answer did not come in time (`None`).
    Heartbeat {
        id: ConnId,
        sent: Instant,
        rtt: Option<Duration>,
    },
    /// The client of this connection is gone: it left, or was closed with `code`.
    SessionEnded {
        id: ConnId,
        session: SessionId,
        code: u16,
        why: String,
        /// The connection stays open for the next client (`reuse`).
        kept: bool,
    },
    /// The connection is gone (or never came up); the worker exits after sending this.
    Died {
        id: ConnId,
        cause: Cause,
        /// When the worker decided.
        at: Instant,
        /// The last frame from the peer, if it was ever connected.
        last_life: Option<Instant>,
        /// The client it served, handed back to be healed onto another connection.
        client: Option<Box<Client>>,
    },
}

impl Event {
    pub fn id(&self) -> ConnId {
        match self {
            Event::Connected { id, .. }
            | Event::Heartbeat { id, .. }
            | Event::SessionEnded { id, .. }
            | Event::Died { id, .. } => *id,
        }
    }
}

/// What the monitor tells one worker (followed by a wake of its poll).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Send a heartbeat now instead of trusting the connection until the next one.
    PingNow,
    /// Close the connection with this code and reason, then exit.
    Close(u16, String),
    /// Use this heartbeat timeout from now on (it adapts to the endpoint's round trips).
    HeartbeatTimeout(Duration),
}

/// Identifies one local client's session for the daemon's lifetime.
pub type SessionId = u64;

/// A local client that finished its handshake, on its way to a pooled connection. Its
/// socket is non-blocking.
pub struct Client {
    pub session: SessionId,
    /// Index of its pool in the configuration.
    pub pool: usize,
    pub ws: WebSocket<TcpStream>,
    pub peer: SocketAddr,
    pub arrived: Instant,
    /// What the session carries from one connection to the next.
    pub carry: Carry,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("session", &self.session)
            .field("pool", &self.pool)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// What reaches a worker from the monitor.
#[derive(Debug)]
pub enum ToWorker {
    Command(Command),
    /// Serve this client on the connection from now on.
    Attach(Box<Client>),
}

/// What the signal thread (or an embedding program) asks of the monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    Shutdown,
    /// Re-read the configuration file and apply what changed (SIGHUP).
    Reload,
    /// Apply this configuration as a reload would.
    Apply(Box<crate::config::Config>),
    /// The monitor sleeps this long, as a wedged one would: for tests of the
    /// watchdog and of liveness.
    Stall(Duration),
}

/// How bad a notice is; maps onto syslog levels.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn label(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// One line for the operator: what happened, where, and what wspoold did about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub severity: Severity,
    /// The incident it belongs to.
    pub incident: Option<u64>,
    pub pool: Option<String>,
    pub endpoint: Option<String>,
    pub text: String,
}

impl Notice {
    pub fn new(severity: Severity, text: impl Into<String>) -> Notice {
        Notice {
            severity,
            incident: None,
            pool: None,
            endpoint: None,
            text: text.into(),
        }
    }

    pub fn incident(mut self, id: u64) -> Notice {
        self.incident = Some(id);
        self
    }

    pub fn pool(mut self, pool: &str) -> Notice {
        self.pool = Some(pool.to_string());
        self
    }

    pub fn endpoint(mut self, endpoint: &str) -> Notice {
        self.endpoint = Some(endpoint.to_string());
        self
    }
}

impl fmt::Display for Notice {
    /// `incident=7 pool=market endpoint=ws://a/ws: endpoint down after ...`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(id) = self.incident {
            write!(f, "incident={id}")?;
            sep = " ";
        }
        if let Some(pool) = &self.pool {
            write!(f, "{sep}pool={pool}")?;
            sep = " ";
        }
        if let Some(endpoint) = &self.endpoint {
            write!(f, "{sep}endpoint={endpoint}")?;
            sep = " ";
        }
        if sep.is_empty() {
            f.write_str(&self.text)
        } else {
            write!(f, ": {}", self.text)
        }
    }
}

/// A structured record of what the monitor saw and decided, for the demo and for tests
/// that measure detection and recovery times.
#[derive(Debug, Clone)]
pub enum Observation {
    Connected {
        pool: String,
        endpoint: String,
        id: ConnId,
        at: Instant,
    },
    Died {
        pool: String,
        endpoint: String,
        id: ConnId,
        cause: Cause,
        at: Instant,
        last_life: Option<Instant>,
    },
    /// Healthy connections of a pool changed.
    Health {
        pool: String,
        healthy: usize,
        min: usize,
        at: Instant,
    },
    Notice(Notice),
    /// An incident transition, as journaled.
    Incident(Box<crate::journal::Record>),
}

/// A duration for a log line: "0.4ms", "122ms", "1.25s", "17.0s", "2m05s".
pub fn human(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 0.01 {
        format!("{:.1}ms", secs * 1000.0)
    } else if secs < 1.0 {
        format!("{:.0}ms", secs * 1000.0)
    } else if secs < 10.0 {
        format!("{secs:.2}s")
    } else if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let whole = d.as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_read_at_a_glance() {
        let ms = Duration::from_millis;
        assert_eq!(human(Duration::from_micros(360)), "0.4ms");
        assert_eq!(human(ms(122)), "122ms");
        assert_eq!(human(ms(1254)), "1.25s");
        assert_eq!(human(ms(7007)), "7.01s");
        assert_eq!(human(ms(17_040)), "17.0s");
        assert_eq!(human(ms(125_000)), "2m05s");
    }

    #[test]
    fn notices_name_pool_and_endpoint_first() {
        let n = Notice::new(Severity::Warning, "endpoint down")
            .pool("market")
            .endpoint("ws://a/");
        assert_eq!(n.to_string(), "pool=market endpoint=ws://a/: endpoint down");
        let n = n.incident(7);
        assert_eq!(
            n.to_string(),
            "incident=7 pool=market endpoint=ws://a/: endpoint down"
        );
        assert_eq!(Notice::new(Severity::Info, "hello").to_string(), "hello");
    }
}
