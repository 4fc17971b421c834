//! Dialling an upstream: resolve, a timed TCP connect per address, socket options
//! (nodelay, keepalive, `TCP_USER_TIMEOUT`), TLS for wss:// with one shared rustls
//! config, the WebSocket handshake with the pool's headers and `on_connect` messages,
//! all under deadlines; then the socket is made non-blocking for the worker's poll loop.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use socket2::{SockRef, TcpKeepalive};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::http::{HeaderName, HeaderValue};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use crate::config::{CaBundle, Endpoint, PoolConfig};
use crate::event::Cause;

/// Frames written in one turn of a worker's loop (a client's message and the ping
/// that asks for its acknowledgement, say) wait in tungstenite's buffer up to this
/// size and go out in one write when the turn flushes.
pub const WRITE_BATCH: usize = 16 * 1024;

/// The read buffer tungstenite allocates per connection: small, so that thousands of
/// idle connections stay cheap; large messages still arrive, in more reads.
const READ_BUFFER: usize = 4 * 1024;

/// The TLS client configuration of a pool, built once and shared by all its
/// connections: building the root store per connection would burn CPU in a reconnect
/// storm. With a `ca_file`, its certificates are the only roots; otherwise the
/// built-in Mozilla roots.
pub fn tls_config(ca: Option<&CaBundle>) -> Arc<rustls::ClientConfig> {
    let roots = match ca {
        Some(bundle) => {
            let mut store = rustls::RootCertStore::empty();
            // The configuration refused bundles with unusable certificates.
            store.add_parsable_certificates(bundle.certs.iter().cloned());
            store
        }
        None => rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// An upstream byte stream. While a deadline is set the socket is blocking and every
/// read and write is bounded by what is left of it; the worker clears the deadline and
/// switches to non-blocking once the handshake is done.
pub struct Stream {
    inner: Inner,
    deadline: Option<Instant>,
}

enum Inner {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match &self.inner {
            Inner::Plain(tcp) => tcp,
            Inner::Tls(tls) => &tls.sock,
        }
    }

    /// Bound every blocking operation by `deadline`.
    fn arm(&self, write: bool) -> io::Result<()> {
        let Some(deadline) = self.deadline else {
            return Ok(());
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
        }
        if write {
            self.tcp().set_write_timeout(Some(left))
        } else {
            self.tcp().set_read_timeout(Some(left))
        }
    }

    /// Leave handshake mode: non-blocking, no deadline.
    pub fn make_nonblocking(&mut self) -> io::Result<()> {
        self.deadline = None;
        self.tcp().set_read_timeout(None)?;
        self.tcp().set_write_timeout(None)?;
        self.tcp().set_nonblocking(true)
    }

    /// Enter a deadline-bounded blocking phase (the closing handshake at shutdown).
    pub fn set_deadline(&mut self, deadline: Instant) -> io::Result<()> {
        self.tcp().set_nonblocking(false)?;
        self.deadline = Some(deadline);
        Ok(())
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().peer_addr()
    }

    /// Reset the connection instead of closing it gracefully.
    pub fn abort(&self) {
        let _ = SockRef::from(self.tcp()).set_linger(Some(Duration::ZERO));
        let _ = self.tcp().shutdown(std::net::Shutdown::Both);
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.tcp().as_raw_fd()
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm(false)?;
        match &mut self.inner {
            Inner::Plain(tcp) => tcp.read(buf),
            Inner::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm(true)?;
        match &mut self.inner {
            Inner::Plain(tcp) => tcp.write(buf),
            Inner::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.arm(true)?;
        match &mut self.inner {
            Inner::Plain(tcp) => tcp.flush(),
            Inner::Tls(tls) => tls.flush(),
        }
    }
}

/// The tungstenite settings of a pooled connection.
pub fn ws_config(pool: &PoolConfig) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BATCH)
        .max_write_buffer_size(pool.max_message_size.saturating_mul(2).max(64 * 1024))
        .max_message_size(Some(pool.max_message_size))
        .max_frame_size(Some(pool.max_message_size))
}

/// A connected, handshaken upstream.
pub struct Connection {
    pub ws: WebSocket<Stream>,
    pub peer: SocketAddr,
}

/// Dial `endpoint` for `pool`. `progress` is called between phases so the monitor can
/// tell a slow dial from a stuck worker.
pub fn connect(
    endpoint: &Endpoint,
    pool: &PoolConfig,
    tls: &Arc<rustls::ClientConfig>,
    progress: &dyn Fn(),
) -> Result<Connection, Cause> {
    let addrs: Vec<SocketAddr> = (endpoint.host.as_str(), endpoint.port)
        .to_socket_addrs()
        .map_err(|e| Cause::Dns(format!("{}: {e}", endpoint.host)))?
        .collect();
    if addrs.is_empty() {
        return Err(Cause::Dns(format!("{}: no addresses", endpoint.host)));
    }
    progress();
    let tcp = dial(&addrs, pool.connect_timeout, progress)?;
    configure(&tcp, pool).map_err(|e| Cause::Io(format!("setting socket options: {e}")))?;
    let peer = tcp.peer_addr().map_err(io_cause)?;
    let deadline = Instant::now() + pool.connect_timeout;
    let inner = if endpoint.tls {
        Inner::Tls(Box::new(tls_handshake(tcp, tls, &endpoint.host, deadline)?))
    } else {
        Inner::Plain(tcp)
    };
    progress();
    let stream = Stream {
        inner,
        deadline: Some(deadline),
    };
    let mut ws = ws_handshake(stream, endpoint, pool)?;
    for text in &pool.on_connect {
        ws.write(Message::text(text.as_str()))
            .map_err(|e| handshake_io(e, "sending on_connect"))?;
    }
    ws.flush()
        .map_err(|e| handshake_io(e, "sending on_connect"))?;
    ws.get_mut().make_nonblocking().map_err(io_cause)?;
    Ok(Connection { ws, peer })
}

/// Try each address in turn, each with its own timeout.
fn dial(addrs: &[SocketAddr], timeout: Duration, progress: &dyn Fn()) -> Result<TcpStream, Cause> {
    let mut last = Cause::Refused;
    for addr in addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(tcp) => return Ok(tcp),
            Err(e) => {
                last = match e.kind() {
                    io::ErrorKind::ConnectionRefused => Cause::Refused,
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Cause::ConnectTimeout,
                    _ => Cause::Io(format!("connecting to {addr}: {e}")),
                }
            }
        }
        progress();
    }
    Err(last)
}

/// Socket options: no Nagle delay; keepalive and `TCP_USER_TIMEOUT` as a second line of
/// defence under the heartbeat, so the kernel gives up on unacknowledged data too.
fn configure(tcp: &TcpStream, pool: &PoolConfig) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    let sock = SockRef::from(tcp);
    let idle = pool.heartbeat_interval.max(Duration::from_secs(1));
    let keepalive = TcpKeepalive::new()
        .with_time(idle)
        .with_interval(idle)
        .with_retries(3);
    sock.set_tcp_keepalive(&keepalive)?;
    sock.set_tcp_user_timeout(Some(
        pool.heartbeat_interval + pool.heartbeat_timeout + pool.write_timeout,
    ))
}

fn tls_handshake(
    mut tcp: TcpStream,
    tls: &Arc<rustls::ClientConfig>,
    host: &str,
    deadline: Instant,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, Cause> {
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| Cause::Tls(format!("invalid server name {host:?}: {e}")))?;
    let mut conn =
        rustls::ClientConnection::new(tls.clone(), name).map_err(|e| Cause::Tls(e.to_string()))?;
    while conn.is_handshaking() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Cause::HandshakeTimeout);
        }
        tcp.set_read_timeout(Some(left)).map_err(io_cause)?;
        tcp.set_write_timeout(Some(left)).map_err(io_cause)?;
        match conn.complete_io(&mut tcp) {
            Ok((0, 0)) if conn.is_handshaking() => {
                return Err(Cause::Tls("connection closed during tls handshake".into()));
            }
            Ok(_) => {}
            Err(e) if is_timeout(&e) => return Err(Cause::HandshakeTimeout),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(Cause::Tls("connection closed during tls handshake".into()));
            }
            // A peer that resets or speaks something else during the TLS handshake is
            // a TLS failure, whatever the socket said.
            Err(e) => return Err(Cause::Tls(e.to_string())),
        }
    }
    Ok(rustls::StreamOwned::new(conn, tcp))
}

fn ws_handshake(
    stream: Stream,
    endpoint: &Endpoint,
    pool: &PoolConfig,
) -> Result<WebSocket<Stream>, Cause> {
    let mut request = endpoint
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| Cause::Handshake(format!("building request: {e}")))?;
    for (name, value) in &pool.headers {
        let name = HeaderName::try_from(name.as_str())
            .map_err(|e| Cause::Handshake(format!("header {name}: {e}")))?;
        let value = HeaderValue::try_from(value.as_str())
            .map_err(|e| Cause::Handshake(format!("header {name}: {e}")))?;
        request.headers_mut().insert(name, value);
    }
    let mut attempt =
        tungstenite::client::client_with_config(request, stream, Some(ws_config(pool)));
    loop {
        match attempt {
            Ok((ws, _response)) => return Ok(ws),
            // A socket timeout that fired before our deadline: go on waiting.
            Err(HandshakeError::Interrupted(mid)) => attempt = mid.handshake(),
            Err(HandshakeError::Failure(e)) => return Err(handshake_error(e)),
        }
    }
}

fn handshake_error(e: tungstenite::Error) -> Cause {
    match e {
        tungstenite::Error::Http(response) => {
            let status = response.status();
            Cause::Handshake(format!(
                "http {} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            ))
        }
        other => handshake_io(other, "handshake"),
    }
}

fn handshake_io(e: tungstenite::Error, phase: &str) -> Cause {
    match e {
        tungstenite::Error::Io(io) if is_timeout(&io) => Cause::HandshakeTimeout,
        tungstenite::Error::Io(io) if io.kind() == io::ErrorKind::ConnectionReset => Cause::Reset,
        tungstenite::Error::Io(io) => Cause::Handshake(format!("{phase}: {io}")),
        other => Cause::Handshake(format!("{phase}: {other}")),
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

pub(crate) fn io_cause(e: io::Error) -> Cause {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => Cause::Reset,
        _ => Cause::Io(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::net::TcpListener;
    use std::thread::JoinHandle;

    const SERVER_CERT: &[u8] = include_bytes!("../tests/data/tls/server.pem");
    const SERVER_KEY: &[u8] = include_bytes!("../tests/data/tls/server.key");

    fn ca_path() -> String {
        format!("{}/tests/data/tls/ca.pem", env!("CARGO_MANIFEST_DIR"))
    }

    fn pool(url: &str, extra: &str) -> PoolConfig {
        let text = format!(
            "[pools.t]\nendpoints = [\"{url}\"]\nconnect_timeout = \"2s\"\non_connect = [\"hello\"]\n{extra}\n"
        );
        Config::parse(&text, "test").unwrap().pools.remove(0)
    }

    /// A wss:// server for one connection: returns the first text message it got, or
    /// the error that ended it.
    fn tls_server() -> (u16, JoinHandle<Result<String, String>>) {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(SERVER_CERT)
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(SERVER_KEY).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let thread = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().map_err(|e| e.to_string())?;
            tcp.set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            let conn =
                rustls::ServerConnection::new(Arc::new(config)).map_err(|e| e.to_string())?;
            let stream = rustls::StreamOwned::new(conn, tcp);
            let mut ws = tungstenite::accept(stream).map_err(|e| e.to_string())?;
            loop {
                match ws.read().map_err(|e| e.to_string())? {
                    Message::Text(text) => return Ok(text.to_string()),
                    _ => continue,
                }
            }
        });
        (port, thread)
    }

    #[test]
    fn wss_with_the_pools_ca_file_connects_and_sends_on_connect() {
        let (port, server) = tls_server();
        let cfg = pool(
            &format!("wss://localhost:{port}/feed"),
            &format!("ca_file = \"{}\"", ca_path()),
        );
        let tls = tls_config(cfg.ca.as_ref());
        let conn = connect(&cfg.endpoints[0], &cfg, &tls, &|| {});
        assert!(conn.is_ok(), "{:?}", conn.err());
        assert_eq!(server.join().unwrap(), Ok("hello".to_string()));
    }

    #[test]
    fn wss_to_a_certificate_no_root_vouches_for_is_a_tls_failure() {
        let (port, server) = tls_server();
        let cfg = pool(&format!("wss://localhost:{port}/feed"), "");
        let tls = tls_config(cfg.ca.as_ref());
        match connect(&cfg.endpoints[0], &cfg, &tls, &|| {}) {
            Err(Cause::Tls(why)) => assert!(why.contains("UnknownIssuer"), "{why}"),
            other => panic!("expected a tls failure, got {:?}", other.map(|c| c.peer)),
        }
        assert!(server.join().unwrap().is_err());
    }

    #[test]
    fn wss_to_a_plain_http_server_is_a_tls_failure_not_a_hang() {
        let upstream = crate::faults::Upstream::start().unwrap();
        let port = upstream.addr().port();
        let cfg = pool(&format!("wss://127.0.0.1:{port}/"), "");
        let tls = tls_config(None);
        let started = Instant::now();
        match connect(&cfg.endpoints[0], &cfg, &tls, &|| {}) {
            Err(Cause::Tls(_)) => {}
            other => panic!("expected a tls failure, got {:?}", other.map(|c| c.peer)),
        }
        assert!(started.elapsed() < cfg.connect_timeout * 2);
    }

    #[test]
    fn a_ca_file_that_is_missing_or_holds_no_certificate_is_a_config_error_with_its_line() {
        let missing = "[pools.t]\nendpoints = [\"wss://a/\"]\nca_file = \"/nonexistent/ca.pem\"\n";
        let e = Config::parse(missing, "x.toml").unwrap_err().to_string();
        assert!(e.starts_with("x.toml:3:"), "{e}");
        assert!(e.contains("cannot read CA file"), "{e}");
        let not_pem = format!(
            "[pools.t]\nendpoints = [\"wss://a/\"]\nca_file = \"{}\"\n",
            concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")
        );
        let e = Config::parse(&not_pem, "x.toml").unwrap_err().to_string();
        assert!(e.contains("no certificate in CA file"), "{e}");
    }
}
