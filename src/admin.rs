//! The admin endpoint (`[daemon] admin`): a small synchronous HTTP server on its own
//! thread. It reads the snapshot the monitor publishes, never the monitor's state:
//! `GET /metrics` (Prometheus text), `GET /status` (JSON), `GET /healthz` (200 or
//! 503 with the reasons).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tiny_http::{Header, Method, Request, Response, Server};

use crate::status::Status;
use crate::worker::millis;

/// A monitor that has not turned its loop for this long is wedged. It wakes at least
/// four times a second, so this is generous.
pub const LIVE_WITHIN: Duration = Duration::from_secs(5);

/// What the monitor publishes for the admin server.
#[derive(Debug, Default)]
pub struct Published {
    snapshot: Mutex<Arc<Status>>,
    /// `millis()` of the monitor's last turn of its loop.
    turn: AtomicU64,
}

impl Published {
    pub fn new() -> Arc<Published> {
        let published = Published::default();
        published.turned(Instant::now());
        Arc::new(published)
    }

    /// The monitor turned its loop.
    pub fn turned(&self, now: Instant) {
        self.turn.store(millis(now), Ordering::Relaxed);
    }

    pub fn publish(&self, status: Status) {
        *self.snapshot.lock() = Arc::new(status);
    }

    /// The latest snapshot, with `live` judged now.
    pub fn read(&self, now: Instant) -> Status {
        let mut status = Status::clone(&self.snapshot.lock());
        let silent = millis(now).saturating_sub(self.turn.load(Ordering::Relaxed));
        status.live = silent <= LIVE_WITHIN.as_millis() as u64;
        status
    }
}

/// The running admin server.
pub struct Admin {
    server: Arc<Server>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl Admin {
    /// Bind `addr` and serve until dropped. Fails with a message naming the address.
    pub fn start(
        addr: SocketAddr,
        token: Option<String>,
        published: Arc<Published>,
    ) -> io::Result<Admin> {
        let server = Server::http(addr).map_err(|e| {
            io::Error::other(format!("cannot bind the admin endpoint on {addr}: {e}"))
        })?;
        let bound = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| io::Error::other("the admin endpoint is not on an IP address"))?;
        let server = Arc::new(server);
        let serving = server.clone();
        let thread = std::thread::Builder::new()
            .name("admin".into())
            .spawn(move || {
                while let Ok(request) = serving.recv() {
                    handle(request, token.as_deref(), &published);
                }
            })?;
        Ok(Admin {
            server,
            addr: bound,
            thread: Some(thread),
        })
    }

    /// Where it listens (its port resolved).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("a valid header")
}

fn text(code: u16, body: String, content_type: &str) -> Response<io::Cursor<Vec<u8>>> {
    Response::from_string(body)
        .with_status_code(code)
        .with_header(header("Content-Type", content_type))
        .with_header(header("Cache-Control", "no-store"))
}

/// Constant-time enough for a token compare: no early exit on the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn handle(request: Request, token: Option<&str>, published: &Published) {
    if let Some(token) = token {
        let presented = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("Authorization"))
            .map(|h| h.value.as_str().to_string());
        let expected = format!("Bearer {token}");
        if !presented.is_some_and(|p| same(p.as_bytes(), expected.as_bytes())) {
            let response = text(401, "admin_token required\n".into(), "text/plain")
                .with_header(header("WWW-Authenticate", "Bearer"));
            let _ = request.respond(response);
            return;
        }
    }
    if *request.method() != Method::Get && *request.method() != Method::Head {
        let response =
            text(405, "only GET\n".into(), "text/plain").with_header(header("Allow", "GET, HEAD"));
        let _ = request.respond(response);
        return;
    }
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let status = published.read(Instant::now());
    let response = match path.as_str() {
        "/metrics" => text(
            200,
            crate::metrics::render(&status),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        "/status" => match serde_json::to_string_pretty(&status) {
            Ok(body) => text(200, body + "\n", "application/json"),
            Err(e) => text(
                500,
                format!("cannot encode the status: {e}\n"),
                "text/plain",
            ),
        },
        "/healthz" => {
            let why = status.unhealthy();
            if why.is_empty() {
                text(200, "ok\n".into(), "text/plain")
            } else {
                text(503, why.join("\n") + "\n", "text/plain")
            }
        }
        _ => text(
            404,
            "not found: try /metrics, /status or /healthz\n".into(),
            "text/plain",
        ),
    };
    let _ = request.respond(response);
}
