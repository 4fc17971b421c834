//! The local bridge's front door: accepts local WebSocket clients on `[daemon]
//! listen`, runs each handshake on a short-lived thread under a deadline (a slow or
//! silent client cannot stall other accepts), picks the pool by path (404 if none),
//! checks the pool's client token (401), and hands the client to the monitor.

use std::cell::{Cell, RefCell};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use parking_lot::RwLock;
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::http::StatusCode;
use tungstenite::protocol::WebSocketConfig;

use crate::alert::Alerts;
use crate::config::{Config, PoolConfig};
use crate::event::{Client, Notice, SessionId, Severity};

/// How long a local client may take over its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes under way at once; past this, new clients get HTTP 503 at once.
const MAX_HANDSHAKES: usize = 256;

/// One pool as the listener routes to it.
#[derive(Debug, Clone)]
pub struct Route {
    /// The monitor's index of the pool.
    pub pool: usize,
    pub name: String,
    pub path: String,
    pub token: Option<String>,
    pub max_message_size: usize,
}

impl Route {
    pub fn new(pool: usize, config: &PoolConfig) -> Route {
        Route {
            pool,
            name: config.name.clone(),
            path: config.path.clone(),
            token: config.client_token.clone(),
            max_message_size: config.max_message_size,
        }
    }
}

/// The pools the listener routes to; a reload replaces them.
pub type Routes = RwLock<Vec<Route>>;

/// What the listener shares with its handshake threads.
struct Shared {
    routes: Arc<Routes>,
    clients: Sender<Client>,
    notices: Alerts,
    next_session: AtomicU64,
    handshakes: AtomicUsize,
    stop: AtomicBool,
}

pub struct Listener {
    socket: TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
}

/// Stops the accept loop and joins it.
pub struct ListenerHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    /// Bind `[daemon] listen`. Clients go to `clients`; refusals are logged.
    pub fn bind(config: &Config, clients: Sender<Client>, notices: Alerts) -> io::Result<Listener> {
        let listen = config.daemon.listen;
        let socket = TcpListener::bind(listen)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")))?;
        let addr = socket.local_addr()?;
        let routes = config
            .pools
            .iter()
            .enumerate()
            .map(|(index, p)| Route::new(index, p))
            .collect();
        Ok(Listener {
            socket,
            addr,
            shared: Arc::new(Shared {
                routes: Arc::new(RwLock::new(routes)),
                clients,
                notices,
                next_session: AtomicU64::new(1),
                handshakes: AtomicUsize::new(0),
                stop: AtomicBool::new(false),
            }),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The routing table, for the monitor to replace on reload.
    pub fn routes(&self) -> Arc<Routes> {
        self.shared.routes.clone()
    }

    pub fn spawn(self) -> io::Result<ListenerHandle> {
        let handle_shared = self.shared.clone();
        let addr = self.addr;
        let thread = std::thread::Builder::new()
            .name("listener".into())
            .spawn(move || self.run())?;
        Ok(ListenerHandle {
            addr,
            shared: handle_shared,
            thread: Some(thread),
        })
    }

    /// Accept until stopped.
    pub fn run(self) {
        for stream in self.socket.incoming() {
            if self.shared.stop.load(Ordering::Relaxed) {
                return;
            }
            match stream {
                Ok(stream) => self.admit(stream),
                // EMFILE and friends: say so, back off a little, keep going.
                Err(e) => {
                    self.shared.notices.send(Notice::new(
                        Severity::Warning,
                        format!("listener {}: accept failed: {e}", self.addr),
                    ));
                    std::thread::park_timeout(Duration::from_millis(50));
                }
            }
        }
    }

    fn admit(&self, mut stream: TcpStream) {
        let busy = self.shared.handshakes.fetch_add(1, Ordering::Relaxed);
        if busy >= MAX_HANDSHAKES {
            self.shared.handshakes.fetch_sub(1, Ordering::Relaxed);
            let _ = stream.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            return;
        }
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("handshake".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                handshake(&shared, stream);
                shared.handshakes.fetch_sub(1, Ordering::Relaxed);
            });
        if spawned.is_err() {
            self.shared.handshakes.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl ListenerHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting and join the accept thread (handshakes in flight finish on
    /// their own, bounded by their deadline).
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ListenerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Why a client was turned away at the handshake.
enum Refusal {
    NotFound(String),
    Unauthorized(String),
}

// tungstenite's callback signature returns its large ErrorResponse by value.
#[allow(clippy::result_large_err)]
fn handshake(shared: &Shared, stream: TcpStream) {
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    if shared.stop.load(Ordering::Relaxed) {
        return;
    }
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT));
    // The handshake's error keeps the callback, so it reports through cells.
    let chosen = Cell::new(None);
    let refusal = RefCell::new(None);
    let callback = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        let path = request.uri().path();
        let Some(route) = shared
            .routes
            .read()
            .iter()
            .find(|r| r.path == path)
            .cloned()
        else {
            *refusal.borrow_mut() = Some(Refusal::NotFound(path.to_string()));
            return Err(status(StatusCode::NOT_FOUND, "no pool at this path"));
        };
        if let Some(token) = &route.token {
            let given = request
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if given != Some(token.as_str()) {
                *refusal.borrow_mut() = Some(Refusal::Unauthorized(route.name.clone()));
                return Err(status(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong client token",
                ));
            }
        }
        chosen.set(Some((route.pool, route.max_message_size)));
        Ok(response)
    };
    let result = tungstenite::accept_hdr_with_config(stream, callback, None);
    let refused = refusal.borrow_mut().take();
    let ws = match result {
        Ok(ws) => ws,
        Err(e) => {
            let text = match refused {
                Some(Refusal::NotFound(path)) => {
                    format!("client {peer} refused: no pool at path {path:?} (404)")
                }
                Some(Refusal::Unauthorized(pool)) => {
                    format!(
                        "pool={pool}: client {peer} refused: missing or wrong client token (401)"
                    )
                }
                None if Instant::now() >= deadline => {
                    format!("client {peer} dropped: no handshake within {HANDSHAKE_TIMEOUT:?}")
                }
                None => format!("client {peer} dropped: handshake failed: {e}"),
            };
            shared.notices.send(Notice::new(Severity::Info, text));
            return;
        }
    };
    let Some((pool, max)) = chosen.get() else {
        return;
    };
    let mut ws = ws;
    ws.set_config(|c| {
        *c = WebSocketConfig::default()
            .read_buffer_size(4 * 1024)
            .write_buffer_size(crate::upstream::WRITE_BATCH)
            .max_write_buffer_size(max.saturating_mul(2).max(64 * 1024))
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
    });
    let tcp = ws.get_mut();
    if tcp.set_read_timeout(None).is_err() || tcp.set_nonblocking(true).is_err() {
        return;
    }
    let session: SessionId = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let _ = shared.clients.send(Client {
        session,
        pool,
        ws,
        peer,
        arrived: Instant::now(),
        carry: Default::default(),
    });
}

fn status(code: StatusCode, text: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(text.to_string()));
    *response.status_mut() = code;
    response
}
