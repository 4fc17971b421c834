//! A scriptable upstream WebSocket server on 127.0.0.1: it echoes by default, and on
//! command rejects, ignores or garbles handshakes, freezes, sends oversized messages,
//! cuts connections with a close code or a reset, and dies and comes back on its port.
//!
//! One accept thread and one thread per connection ("upstream-conn"); every connection
//! thread looks at the shared controls at least once per [`TICK`](super::TICK).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tungstenite::handshake::HandshakeError;
use tungstenite::handshake::server::{Callback, ErrorResponse, Request, Response};
use tungstenite::http::StatusCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

use socket2::Socket;

use super::{
    Acceptor, SETTLE, arm_reset, close, listen, listen_held, reap, spawn, tick_stream, timed_out,
};

/// What the upstream does with connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Echo text and binary messages back; pings are answered. The default.
    Echo,
    /// Answer the handshake with this HTTP status (e.g. 401, 503) and close.
    Reject(u16),
    /// Accept TCP, discard what arrives and never answer the handshake; the socket
    /// stays open until the client gives up.
    Silent,
    /// Accept TCP and answer the handshake request with bytes that are not HTTP; the
    /// socket stays open.
    Garbage,
    /// Existing and new connections stop reading and writing entirely (no pongs, no
    /// echoes, no handshakes); their sockets stay open, and they carry on when the mode
    /// changes again.
    Freeze,
    /// After a normal handshake, send one binary message of this many bytes, then echo.
    Oversize(usize),
}

/// How [`Upstream::cut`] ends connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Send a close frame with this code, then finish the closing handshake.
    Close(u16),
    /// Close the TCP connection with a reset (SO_LINGER 0): the peer sees ECONNRESET.
    Reset,
}

/// A data message the upstream received.
#[derive(Clone, Debug)]
pub struct Received {
    /// Which connection it came on (numbered from 1 in accept order).
    pub conn: u64,
    /// The payload.
    pub data: Vec<u8>,
    /// True for a text message, false for binary.
    pub text: bool,
    /// When it was read.
    pub at: Instant,
}

/// A scriptable WebSocket server on 127.0.0.1. Dropping it closes the listener, ends
/// every connection and joins the threads (waiting at most a few seconds for them).
pub struct Upstream {
    shared: Arc<Shared>,
    addr: SocketAddr,
    acceptor: Mutex<Option<Acceptor>>,
    /// The port, held closed while killed (see [`Acceptor::stop`]).
    held: Mutex<Option<Socket>>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled by the control calls (a change of the controls); the fixture threads
    /// wait on it.
    changed: Condvar,
    /// Signalled by the fixture threads when they have acted on the controls (parked,
    /// cut, ended); the control calls wait on it. Two condition variables, so that
    /// threads acknowledging do not wake each other.
    settled: Condvar,
    handshakes: AtomicU64,
    pings: AtomicU64,
    received: Mutex<Vec<Received>>,
    headers: Mutex<Vec<(String, String)>>,
    /// Close codes the clients sent (1005 for a close frame without one).
    close_codes: Mutex<Vec<u16>>,
}

struct State {
    mode: Mode,
    stop: bool,
    next_id: u64,
    conns: HashMap<u64, Slot>,
    threads: Vec<JoinHandle<()>>,
}

/// One connection as the controls see it.
struct Slot {
    /// The WebSocket handshake has completed.
    ws: bool,
    /// A cut waiting to be carried out; cleared when done (or the slot removed).
    cut: Option<Cut>,
    /// Parked by Freeze: it touches its socket no more until the controls change.
    frozen: bool,
    /// Finishing a closing handshake, which Freeze does not stop.
    closing: bool,
}

impl Upstream {
    /// Starts an echoing server on 127.0.0.1 with a port of the kernel's choosing.
    pub fn start() -> io::Result<Upstream> {
        let listener = listen(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                mode: Mode::Echo,
                stop: false,
                next_id: 1,
                conns: HashMap::new(),
                threads: Vec::new(),
            }),
            changed: Condvar::new(),
            settled: Condvar::new(),
            handshakes: AtomicU64::new(0),
            pings: AtomicU64::new(0),
            received: Mutex::new(Vec::new()),
            headers: Mutex::new(Vec::new()),
            close_codes: Mutex::new(Vec::new()),
        });
        let acceptor = accept(&shared, listener)?;
        Ok(Upstream {
            shared,
            addr,
            acceptor: Mutex::new(Some(acceptor)),
            held: Mutex::new(None),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// Changes the mode. Freeze (and leaving it) applies to open connections at once:
    /// setting it returns once every connection has stopped reading and writing (or
    /// after a few seconds). The other modes decide what happens to connections
    /// accepted from now on.
    pub fn set_mode(&self, mode: Mode) {
        let mut st = self.shared.state.lock();
        st.mode = mode;
        self.shared.changed.notify_all();
        if mode != Mode::Freeze {
            return;
        }
        let deadline = Instant::now() + SETTLE;
        while st.mode == Mode::Freeze
            && !st
                .conns
                .values()
                .all(|s| s.frozen || s.closing || s.cut.is_some())
        {
            if self
                .shared
                .settled
                .wait_until(&mut st, deadline)
                .timed_out()
            {
                break;
            }
        }
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.shared.state.lock().mode
    }

    /// Ends every open connection, frozen or not: WebSocket connections get a close
    /// frame with the code (or a reset), connections still before or without a
    /// handshake are closed (or reset). Returns once every connection has acted on it,
    /// or after a few seconds.
    pub fn cut(&self, how: Cut) {
        let mut st = self.shared.state.lock();
        let targets: Vec<u64> = st.conns.keys().copied().collect();
        for slot in st.conns.values_mut() {
            slot.cut = Some(how);
        }
        self.shared.changed.notify_all();
        let deadline = Instant::now() + SETTLE;
        while targets
            .iter()
            .any(|id| st.conns.get(id).is_some_and(|s| s.cut.is_some()))
        {
            if self
                .shared
                .settled
                .wait_until(&mut st, deadline)
                .timed_out()
            {
                break;
            }
        }
    }

    /// Stops listening (connects are refused once this returns, and the port stays
    /// reserved for the restart) and resets every open connection.
    pub fn kill(&self) {
        if let Some(acceptor) = self.acceptor.lock().take() {
            *self.held.lock() = acceptor.stop();
        }
        self.cut(Cut::Reset);
    }

    /// Listens again on the same port after [`kill`](Self::kill); does nothing if it is
    /// listening.
    pub fn restart(&self) -> io::Result<()> {
        let mut acceptor = self.acceptor.lock();
        if acceptor.is_none() {
            let listener = listen_held(self.held.lock().take(), self.addr)?;
            *acceptor = Some(accept(&self.shared, listener)?);
        }
        Ok(())
    }

    /// How many WebSocket connections are open now (handshake done, not yet ended).
    pub fn connections(&self) -> usize {
        self.shared
            .state
            .lock()
            .conns
            .values()
            .filter(|s| s.ws)
            .count()
    }

    /// How many WebSocket handshakes have completed so far.
    pub fn handshakes(&self) -> u64 {
        self.shared.handshakes.load(Ordering::Relaxed)
    }

    /// The data messages received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().clone()
    }

    /// The headers (lowercase names) of the latest handshake request that reached the
    /// WebSocket handshake (modes Echo, Oversize and Reject); empty before the first.
    pub fn last_request_headers(&self) -> Vec<(String, String)> {
        self.shared.headers.lock().clone()
    }

    /// How many pings it has received (and answered, unless frozen at the time).
    pub fn pings(&self) -> u64 {
        self.shared.pings.load(Ordering::Relaxed)
    }

    /// The close codes clients sent, in arrival order (1005: a close frame without one).
    pub fn close_codes(&self) -> Vec<u16> {
        self.shared.close_codes.lock().clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(acceptor) = self.acceptor.lock().take() {
            acceptor.stop();
        }
        let mut st = self.shared.state.lock();
        st.stop = true;
        self.shared.changed.notify_all();
        let deadline = Instant::now() + SETTLE;
        while !st.conns.is_empty() {
            if self
                .shared
                .settled
                .wait_until(&mut st, deadline)
                .timed_out()
            {
                break;
            }
        }
        let mut threads = std::mem::take(&mut st.threads);
        let all_ended = st.conns.is_empty();
        drop(st);
        if all_ended {
            // Each thread removes its slot as the very last thing it does.
            for handle in threads {
                let _ = handle.join();
            }
        } else {
            reap(&mut threads);
        }
    }
}

/// Starts the accept thread, which spawns a connection thread per accepted socket.
fn accept(shared: &Arc<Shared>, listener: std::net::TcpListener) -> io::Result<Acceptor> {
    let shared = shared.clone();
    Acceptor::start("upstream-accept", listener, move |stream| {
        shared.spawn_conn(stream)
    })
}

impl Shared {
    fn spawn_conn(self: &Arc<Self>, stream: TcpStream) {
        if tick_stream(&stream).is_err() {
            return;
        }
        let id = {
            let mut st = self.state.lock();
            let id = st.next_id;
            st.next_id += 1;
            let slot = Slot {
                ws: false,
                cut: None,
                frozen: false,
                closing: false,
            };
            st.conns.insert(id, slot);
            id
        };
        // Removes the slot even if the thread panics.
        let guard = SlotGuard {
            shared: self.clone(),
            id,
        };
        let conn = Conn {
            shared: self.clone(),
            id,
        };
        let spawned = spawn("upstream-conn", move || {
            let _guard = guard;
            conn.serve(stream);
        });
        // On failure the closure, and with it the guard and the stream, is dropped.
        if let Ok(handle) = spawned {
            let mut st = self.state.lock();
            reap(&mut st.threads);
            st.threads.push(handle);
        }
    }
}

struct SlotGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.shared.state.lock().conns.remove(&self.id);
        self.shared.settled.notify_all();
    }
}

/// What a connection thread should do next.
enum Control {
    Go(Mode),
    Frozen,
    Cut(Cut),
    Stop,
}

/// The bytes Garbage answers a handshake with: not an HTTP status line.
const GARBAGE: &[u8] = b"\x00\xff\x13\x37 this is not http \xde\xad\xbe\xef\r\n\r\n";

/// One connection's thread.
struct Conn {
    shared: Arc<Shared>,
    id: u64,
}

impl Conn {
    fn serve(self, stream: TcpStream) {
        let mode = loop {
            match self.control() {
                Control::Go(mode) => break mode,
                Control::Frozen => self.wait_change(),
                Control::Cut(how) => return end(stream, how),
                Control::Stop => return,
            }
        };
        match mode {
            Mode::Echo => self.websocket(stream, None),
            Mode::Oversize(n) => self.websocket(stream, Some(n)),
            Mode::Reject(status) => self.reject(stream, status),
            Mode::Silent => self.discard(stream),
            Mode::Garbage => self.garbage(stream),
            Mode::Freeze => unreachable!("control() reports freeze as Frozen"),
        }
    }

    fn control(&self) -> Control {
        let st = self.shared.state.lock();
        if st.stop {
            return Control::Stop;
        }
        if let Some(how) = st.conns.get(&self.id).and_then(|s| s.cut) {
            return Control::Cut(how);
        }
        if st.mode == Mode::Freeze {
            return Control::Frozen;
        }
        Control::Go(st.mode)
    }

    /// Parks while frozen, until the controls change (the timeout is only a safety
    /// net).
    fn wait_change(&self) {
        let mut st = self.shared.state.lock();
        let idle = st.mode == Mode::Freeze
            && !st.stop
            && st.conns.get(&self.id).is_some_and(|s| s.cut.is_none());
        if !idle {
            return;
        }
        self.set_flag(&mut st, |s| s.frozen = true);
        self.shared
            .changed
            .wait_for(&mut st, Duration::from_secs(1));
        self.set_flag(&mut st, |s| s.frozen = false);
    }

    /// Changes this connection's slot and tells whoever waits on the controls.
    fn set_flag(&self, st: &mut State, change: impl FnOnce(&mut Slot)) {
        if let Some(slot) = st.conns.get_mut(&self.id) {
            change(slot);
        }
        self.shared.settled.notify_all();
    }

    /// Marks this connection's pending cut as carried out.
    fn cut_done(&self) {
        self.set_flag(&mut self.shared.state.lock(), |s| s.cut = None);
    }

    /// Runs tungstenite's server handshake with `callback`, resuming it after each read
    /// timeout; `None` when the handshake failed or a control ended it.
    fn handshake<C: Callback>(
        &self,
        stream: TcpStream,
        callback: C,
    ) -> Option<WebSocket<TcpStream>> {
        let mut result = tungstenite::accept_hdr(stream, callback);
        loop {
            match result {
                Ok(ws) => return Some(ws),
                Err(HandshakeError::Failure(_)) => return None,
                Err(HandshakeError::Interrupted(mid)) => {
                    match self.control() {
                        Control::Go(_) => {}
                        Control::Frozen => self.wait_change(),
                        Control::Cut(Cut::Reset) => {
                            arm_reset(mid.get_ref().get_ref());
                            return None;
                        }
                        Control::Cut(Cut::Close(_)) | Control::Stop => return None,
                    }
                    result = mid.handshake();
                }
            }
        }
    }

    fn reject(&self, stream: TcpStream, status: u16) {
        let answer = Answer {
            shared: &self.shared,
            reject: Some(status),
        };
        // tungstenite returns a failure once the response is written, and dropping the
        // stream then closes it with a FIN: the request was read whole, so no reset.
        let accepted = self.handshake(stream, answer);
        debug_assert!(accepted.is_none(), "a rejecting handshake cannot succeed");
    }

    /// Reads and discards whatever arrives until the peer closes or a control ends it.
    fn discard(&self, mut stream: TcpStream) {
        let mut buf = [0u8; 4096];
        loop {
            match self.control() {
                Control::Go(_) => {}
                Control::Frozen => {
                    self.wait_change();
                    continue;
                }
                Control::Cut(how) => return end(stream, how),
                Control::Stop => return,
            }
            match stream.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if timed_out(&e) => {}
                Err(_) => return,
            }
        }
    }

    fn garbage(&self, mut stream: TcpStream) {
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 64 * 1024 {
            match self.control() {
                Control::Go(_) => {}
                Control::Frozen => {
                    self.wait_change();
                    continue;
                }
                Control::Cut(how) => return end(stream, how),
                Control::Stop => return,
            }
            match stream.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
                Err(e) if timed_out(&e) => {}
                Err(_) => return,
            }
        }
        if write_all(&mut stream, GARBAGE).is_err() {
            return;
        }
        self.discard(stream);
    }

    fn websocket(&self, stream: TcpStream, oversize: Option<usize>) {
        let answer = Answer {
            shared: &self.shared,
            reject: None,
        };
        let Some(mut ws) = self.handshake(stream, answer) else {
            return;
        };
        self.shared.handshakes.fetch_add(1, Ordering::Relaxed);
        self.set_flag(&mut self.shared.state.lock(), |s| s.ws = true);
        let mut pending = false;
        if let Some(n) = oversize {
            match ws.write(Message::binary(vec![b'x'; n])) {
                Ok(()) => pending = true,
                Err(tungstenite::Error::Io(e)) if timed_out(&e) => pending = true,
                Err(_) => return,
            }
        }
        self.echo(ws, pending);
    }

    /// Echoes data messages until the connection ends. While output is pending it only
    /// flushes, so a peer that does not read stops this side reading too.
    fn echo(&self, mut ws: WebSocket<TcpStream>, mut pending: bool) {
        let mut closing: Option<Instant> = None;
        loop {
            match self.control() {
                Control::Go(_) => {}
                Control::Stop => return,
                Control::Cut(Cut::Reset) => return end(ws.into_inner(), Cut::Reset),
                Control::Cut(Cut::Close(code)) => {
                    if closing.is_none() {
                        closing = Some(Instant::now() + SETTLE);
                        self.set_flag(&mut self.shared.state.lock(), |s| s.closing = true);
                        let frame = CloseFrame {
                            code: code.into(),
                            reason: "cut by fixture".into(),
                        };
                        match ws.close(Some(frame)) {
                            Ok(()) => pending = false,
                            Err(tungstenite::Error::Io(e)) if timed_out(&e) => pending = true,
                            Err(_) => return,
                        }
                    }
                    self.cut_done();
                }
                // A closing connection finishes its handshake even when frozen.
                Control::Frozen if closing.is_none() => {
                    self.wait_change();
                    continue;
                }
                Control::Frozen => {}
            }
            if closing.is_some_and(|deadline| Instant::now() >= deadline) {
                return;
            }
            if pending {
                match ws.flush() {
                    Ok(()) => pending = false,
                    Err(tungstenite::Error::Io(e)) if timed_out(&e) => continue,
                    Err(_) => return,
                }
            }
            let reply = match ws.read() {
                Ok(Message::Text(text)) => {
                    self.record(text.as_bytes().to_vec(), true);
                    Message::Text(text)
                }
                Ok(Message::Binary(data)) => {
                    self.record(data.to_vec(), false);
                    Message::Binary(data)
                }
                Ok(Message::Ping(_)) => {
                    self.shared.pings.fetch_add(1, Ordering::Relaxed);
                    // tungstenite has queued the pong.
                    pending = true;
                    continue;
                }
                Ok(Message::Close(frame)) => {
                    let code = frame.map_or(1005, |f| u16::from(f.code));
                    self.shared.close_codes.lock().push(code);
                    // tungstenite has queued the reply; the next read ends the connection.
                    pending = true;
                    continue;
                }
                Ok(Message::Pong(_) | Message::Frame(_)) => continue,
                Err(tungstenite::Error::Io(e)) if timed_out(&e) => continue,
                Err(_) => return,
            };
            if closing.is_some() {
                continue;
            }
            match ws.write(reply) {
                Ok(()) => pending = true,
                Err(tungstenite::Error::Io(e)) if timed_out(&e) => pending = true,
                Err(_) => return,
            }
        }
    }

    fn record(&self, data: Vec<u8>, text: bool) {
        self.shared.received.lock().push(Received {
            conn: self.id,
            data,
            text,
            at: Instant::now(),
        });
    }
}

/// The handshake callback: records the request headers, then accepts or rejects.
struct Answer<'a> {
    shared: &'a Shared,
    /// Reject with this HTTP status.
    reject: Option<u16>,
}

impl Callback for Answer<'_> {
    fn on_request(self, request: &Request, response: Response) -> Result<Response, ErrorResponse> {
        let headers = request
            .headers()
            .iter()
            .map(|(k, v)| {
                let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (k.as_str().to_string(), value)
            })
            .collect();
        *self.shared.headers.lock() = headers;
        let Some(status) = self.reject else {
            return Ok(response);
        };
        let mut refusal = ErrorResponse::new(Some(format!("rejected with {status}\n")));
        *refusal.status_mut() =
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Err(refusal)
    }
}

/// Ends a connection as a cut says: a reset, or (without a WebSocket to send a close
/// frame on) a plain close.
fn end(stream: TcpStream, how: Cut) {
    match how {
        Cut::Reset => super::reset(stream),
        Cut::Close(_) => close(stream),
    }
}

/// Writes all of `data` on a stream with a write timeout, retrying after timeouts.
fn write_all(stream: &mut TcpStream, mut data: &[u8]) -> io::Result<()> {
    let deadline = Instant::now() + SETTLE;
    while !data.is_empty() {
        match stream.write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if timed_out(&e) && Instant::now() < deadline => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "upstream_tests.rs"]
mod tests;
