//! Fault-injection fixtures: a scriptable upstream WebSocket server ([`Upstream`]) and a
//! TCP fault relay ([`Relay`]), both listening on 127.0.0.1 port 0, shared by the `demo`
//! subcommand and the integration tests.
//!
//! Every fixture thread blocks in a read, write or accept of at most [`TICK`] (or waits
//! on a condition variable) before it looks at its controls again, so a control call
//! takes effect within about one tick and an idle fixture uses next to no CPU.

pub mod relay;
pub mod upstream;

pub use relay::{Fault, Relay};
pub use upstream::{Cut, Mode, Received, Upstream};

use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// How long a fixture thread blocks in one socket call before it looks at its controls
/// again: the latency of a mode change, cut, kill or drop.
pub const TICK: Duration = Duration::from_millis(20);

/// How long a control call (cut, kill, reset, drop) waits for the fixture threads to
/// carry it out before it gives up on them.
pub(crate) const SETTLE: Duration = Duration::from_secs(3);

/// A port on 127.0.0.1 where nothing listens, so connecting to it is refused.
///
/// It binds port 0, notes the port the kernel chose and closes the socket. Another
/// socket may take the port later, so use it soon.
pub fn unused_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind 127.0.0.1:0 to find an unused port")
}

/// Listens on `addr` with SO_REUSEADDR (so a restart gets the same port even with
/// connections in TIME_WAIT) and SO_REUSEPORT (so that [`Acceptor::stop`] can hold the
/// port); the listener is non-blocking, for [`Acceptor`].
pub(crate) fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket_for(addr)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A TCP socket for a fixture's port, with SO_REUSEADDR and SO_REUSEPORT.
fn socket_for(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    Ok(socket)
}

/// Sets SO_LINGER to zero so that closing the last descriptor of `stream` sends a TCP
/// reset instead of a FIN.
pub(crate) fn arm_reset(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Closes `stream` with a TCP reset (the peer sees ECONNRESET), provided no other
/// descriptor of the socket stays open.
pub(crate) fn reset(stream: TcpStream) {
    arm_reset(&stream);
    drop(stream);
}

/// Sends a FIN and closes.
pub(crate) fn close(stream: TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    drop(stream);
}

/// True for the errors a socket timeout produces (the call should be retried).
pub(crate) fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Gives a blocking stream the fixtures' read and write timeouts.
pub(crate) fn tick_stream(stream: &TcpStream) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(TICK))?;
    stream.set_write_timeout(Some(TICK))?;
    stream.set_nodelay(true)
}

/// Spawns a named fixture thread.
pub(crate) fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    thread::Builder::new().name(name.to_string()).spawn(f)
}

/// Joins the finished threads among `threads` and keeps the others.
pub(crate) fn reap(threads: &mut Vec<JoinHandle<()>>) {
    let (done, running): (Vec<_>, Vec<_>) = threads.drain(..).partition(|h| h.is_finished());
    *threads = running;
    for handle in done {
        // A fixture thread that panicked has already reported it on stderr.
        let _ = handle.join();
    }
}

/// A thread that accepts connections on a listener and hands each one to a callback,
/// until it is stopped (explicitly or by drop), which closes the listener.
pub(crate) struct Acceptor {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Acceptor {
    /// Starts accepting on `listener` in a thread called `name`.
    pub(crate) fn start(
        name: &str,
        listener: TcpListener,
        mut on_accept: impl FnMut(TcpStream) + Send + 'static,
    ) -> io::Result<Acceptor> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = spawn(name, move || {
            while !flag.load(Ordering::Acquire) {
                match accept_within(&listener, TICK) {
                    Ok(Some(stream)) => on_accept(stream),
                    Ok(None) => {}
                    // Out of descriptors and the like: the listener stays readable, so
                    // pace the retries instead of spinning.
                    Err(_) => thread::park_timeout(TICK),
                }
            }
        })?;
        Ok(Acceptor {
            addr,
            stop,
            handle: Some(handle),
        })
    }

    /// Stops accepting and closes the listener, holding its port: connects are
    /// refused once this returns, and the kernel gives the port to no outgoing
    /// connection and no bind to port 0 until the returned socket listens again (see
    /// [`listen_held`]) or is dropped. Without the hold, a stopped fixture's port is
    /// free for any of them to take, and the restart on it fails (seen on a busy test
    /// run). None if the port could not be held; the restart binds afresh then.
    pub(crate) fn stop(mut self) -> Option<Socket> {
        // Bound beside the listener (both have SO_REUSEPORT) before it closes, and
        // never listening until the restart.
        let held = socket_for(self.addr)
            .and_then(|socket| socket.bind(&self.addr.into()).map(|()| socket))
            .ok();
        self.halt();
        held
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(handle) = self.handle.take() {
            handle.thread().unpark();
            let _ = handle.join();
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Listens on `addr` again: on the socket held since the fixture stopped, if there is
/// one, else on a new one.
pub(crate) fn listen_held(held: Option<Socket>, addr: SocketAddr) -> io::Result<TcpListener> {
    match held {
        Some(socket) => {
            socket.listen(128)?;
            socket.set_nonblocking(true)?;
            Ok(socket.into())
        }
        None => listen(addr),
    }
}

/// Waits up to `timeout` for a connection on the non-blocking `listener`.
fn accept_within(listener: &TcpListener, timeout: Duration) -> io::Result<Option<TcpStream>> {
    if !readable(listener, timeout)? {
        return Ok(None);
    }
    match listener.accept() {
        Ok((stream, _)) => Ok(Some(stream)),
        Err(e) if timed_out(&e) || e.kind() == io::ErrorKind::ConnectionAborted => Ok(None),
        Err(e) => Err(e),
    }
}

/// Waits up to `timeout` for `fd` to become readable.
fn readable(fd: &impl AsRawFd, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(n > 0)
}

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers for the fixtures' own tests: a watchdog, deadline polling and a
    //! tungstenite client with read timeouts.

    use std::net::{SocketAddr, TcpStream};
    use std::panic;
    use std::time::{Duration, Instant};

    use tungstenite::client::IntoClientRequest;
    use tungstenite::handshake::HandshakeError;
    use tungstenite::{Message, WebSocket};

    /// A client WebSocket over a plain TCP stream.
    pub type Client = WebSocket<TcpStream>;

    /// Whether a socket without SO_REUSEADDR fails to bind `addr` because the port is
    /// in use.
    pub fn port_taken(addr: SocketAddr) -> bool {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )
        .expect("a TCP socket");
        socket
            .bind(&addr.into())
            .is_err_and(|e| e.kind() == std::io::ErrorKind::AddrInUse)
    }

    /// Runs `body` on its own thread and fails the test if it does not finish in 20 s.
    pub fn watchdog(body: impl FnOnce() + Send + 'static) {
        let (tx, rx) = crossbeam_channel::bounded::<()>(1);
        let handle = std::thread::Builder::new()
            .name("test-body".into())
            .spawn(move || {
                body();
                let _ = tx.send(());
            })
            .expect("spawn test body");
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(()) => handle.join().expect("test body"),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => match handle.join() {
                Err(panic) => panic::resume_unwind(panic),
                Ok(()) => unreachable!("test body ended without reporting"),
            },
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                panic!("watchdog: test did not finish within 20 s")
            }
        }
    }

    /// Polls `cond` until it holds, failing after 5 s with `what`.
    pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            // Condition polling in tests only; the fixtures themselves never sleep.
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A TCP stream to `addr` with a short read timeout.
    pub fn tcp(addr: SocketAddr) -> TcpStream {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        stream
    }

    /// How a client handshake ended.
    #[derive(Debug)]
    pub enum Shake {
        /// The server accepted.
        Done(Box<Client>),
        /// No answer within the limit.
        NoAnswer,
        /// The handshake failed.
        Failed(tungstenite::Error),
    }

    /// Runs a client handshake for `request` over a stream to `addr`, giving up after
    /// `limit`.
    pub fn handshake(addr: SocketAddr, request: impl IntoClientRequest, limit: Duration) -> Shake {
        let deadline = Instant::now() + limit;
        let mut result = tungstenite::client(request, tcp(addr));
        loop {
            match result {
                Ok((ws, _)) => return Shake::Done(Box::new(ws)),
                Err(HandshakeError::Failure(e)) => return Shake::Failed(e),
                Err(HandshakeError::Interrupted(_)) if Instant::now() >= deadline => {
                    return Shake::NoAnswer;
                }
                Err(HandshakeError::Interrupted(mid)) => result = mid.handshake(),
            }
        }
    }

    /// A client connected to `request` at `addr`.
    pub fn client(addr: SocketAddr, request: impl IntoClientRequest) -> Client {
        match handshake(addr, request, Duration::from_secs(5)) {
            Shake::Done(ws) => *ws,
            other => panic!("client handshake failed: {other:?}"),
        }
    }

    /// The next message or error within `limit`; `None` if nothing came.
    pub fn recv(ws: &mut Client, limit: Duration) -> Option<tungstenite::Result<Message>> {
        let deadline = Instant::now() + limit;
        loop {
            match ws.read() {
                Err(tungstenite::Error::Io(e)) if super::timed_out(&e) => {
                    if Instant::now() >= deadline {
                        return None;
                    }
                }
                other => return Some(other),
            }
        }
    }

    /// The next data message within 5 s, skipping control frames.
    pub fn recv_data(ws: &mut Client) -> Message {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match recv(ws, left) {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => return m,
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("client read failed: {e}"),
                None => panic!("no message within 5 s"),
            }
        }
    }

    /// Writes and flushes `msg`.
    pub fn send(ws: &mut Client, msg: Message) {
        ws.send(msg).expect("client send");
    }
}

#[cfg(test)]
mod tests {
    use super::testing::watchdog;
    use super::*;

    #[test]
    fn unused_port_refuses() {
        watchdog(|| {
            let port = unused_port();
            let err = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        });
    }
}
