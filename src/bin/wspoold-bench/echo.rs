//! The benchmarks' upstream: a WebSocket echo server, one blocking thread per
//! connection, that can record what arrives (for counting losses and duplicates) and
//! end a chosen connection the way a crashed process (FIN), a reset (RST) or a silent
//! path would.
//!
//! Without a tick its threads block in `read` and cost nothing while idle, which is
//! what the scale runs need; with one they look at their fault flag every tick, which
//! silences need.

use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tungstenite::Message;

/// How a connection is ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The upstream's process died: the kernel closes the socket (FIN).
    Kill = 1,
    /// The connection is reset (RST), as by a middlebox or a crash with data unread.
    Reset = 2,
    /// The path goes silent: nothing is read or written again, no FIN, no RST.
    Silence = 3,
}

/// A data message that arrived.
pub struct Arrival {
    pub data: Vec<u8>,
}

pub struct Echo {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    tick: Option<Duration>,
    record: bool,
    stop: AtomicBool,
    conns: Mutex<HashMap<u64, Conn>>,
    arrivals: Mutex<Vec<Arrival>>,
    /// When each WebSocket handshake completed, in order.
    handshakes: Mutex<Vec<Instant>>,
    /// The connection that last carried a data message.
    last: AtomicU64,
}

struct Conn {
    stream: TcpStream,
    fault: Arc<AtomicU8>,
}

impl Echo {
    /// Listens on `port` of 127.0.0.1 (0: the kernel's choice). With `tick`, faults
    /// can be injected and open connections counted; with `record`, arrivals are kept.
    pub fn start(port: u16, tick: Option<Duration>, record: bool) -> Echo {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("a socket for the echo server");
        // A restarted upstream takes its port back at once.
        socket.set_reuse_address(true).expect("SO_REUSEADDR");
        let want = SocketAddr::from(([127, 0, 0, 1], port));
        socket
            .bind(&want.into())
            .unwrap_or_else(|e| panic!("echo server: cannot bind {want}: {e}"));
        socket.listen(4096).expect("listen");
        let listener = TcpListener::from(socket);
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            tick,
            record,
            stop: AtomicBool::new(false),
            conns: Mutex::default(),
            arrivals: Mutex::default(),
            handshakes: Mutex::default(),
            last: AtomicU64::new(0),
        });
        let accepting = shared.clone();
        std::thread::Builder::new()
            .name("echo-accept".into())
            .spawn(move || accept(&accepting, &listener))
            .expect("spawn the echo server");
        Echo { addr, shared }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// Connections open now (counted only with a tick).
    pub fn open(&self) -> usize {
        self.shared.conns.lock().len()
    }

    /// The connection that last carried a data message (0: none yet).
    pub fn last(&self) -> u64 {
        self.shared.last.load(Ordering::Relaxed)
    }

    /// Handshakes completed at or after `since`.
    pub fn handshakes_since(&self, since: Instant) -> Vec<Instant> {
        let all = self.shared.handshakes.lock();
        all.iter().copied().filter(|at| *at >= since).collect()
    }

    /// Ends connection `id` with `fault`; when it was done. Needs a tick.
    pub fn fault(&self, id: u64, fault: Fault) -> Instant {
        let mut conns = self.shared.conns.lock();
        let conn = conns
            .get(&id)
            .unwrap_or_else(|| panic!("echo server: no connection {id}"));
        let at = Instant::now();
        match fault {
            Fault::Kill => {
                let _ = conn.stream.shutdown(Shutdown::Both);
            }
            Fault::Reset => {
                conn.fault.store(fault as u8, Ordering::Release);
                abort(&conn.stream);
                conns.remove(&id);
            }
            Fault::Silence => {
                // Parked until the server stops; no longer counted as open.
                conn.fault.store(fault as u8, Ordering::Release);
                conns.remove(&id);
            }
        }
        at
    }

    /// The data messages that arrived, in order.
    pub fn arrivals(&self) -> parking_lot::MutexGuard<'_, Vec<Arrival>> {
        self.shared.arrivals.lock()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for conn in self.shared.conns.lock().values() {
            let _ = conn.stream.shutdown(Shutdown::Both);
        }
        // Wake the accept loop so that it sees the stop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(100));
    }
}

/// Resets a connection now, though its thread still holds it: a connect(2) to
/// AF_UNSPEC disconnects an established Linux TCP socket with a RST.
fn abort(stream: &TcpStream) {
    let unspec = libc::sockaddr {
        sa_family: libc::AF_UNSPEC as libc::sa_family_t,
        sa_data: [0; 14],
    };
    // SAFETY: a valid descriptor and a sockaddr of the size given.
    unsafe {
        libc::connect(
            stream.as_raw_fd(),
            &unspec,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
}

fn accept(shared: &Arc<Shared>, listener: &TcpListener) {
    for (id, stream) in (1u64..).zip(listener.incoming()) {
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let Ok(stream) = stream else {
            // Out of descriptors, say: pace the retries.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(shared.tick);
        let fault = Arc::new(AtomicU8::new(0));
        // Faults need a handle on the socket; without them a clone would only double
        // the descriptors of a scale run.
        if shared.tick.is_some() {
            let Ok(clone) = stream.try_clone() else {
                continue;
            };
            shared.conns.lock().insert(
                id,
                Conn {
                    stream: clone,
                    fault: fault.clone(),
                },
            );
        }
        let serving = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("echo-conn".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                serve(&serving, id, stream, &fault);
                serving.conns.lock().remove(&id);
            });
        if spawned.is_err() {
            shared.conns.lock().remove(&id);
        }
    }
}

fn serve(shared: &Shared, id: u64, stream: TcpStream, fault: &AtomicU8) {
    let Ok(mut ws) = tungstenite::accept(stream) else {
        return;
    };
    shared.handshakes.lock().push(Instant::now());
    loop {
        match fault.load(Ordering::Acquire) {
            0 => {}
            f if f == Fault::Silence as u8 => {
                if shared.stop.load(Ordering::Acquire) {
                    return;
                }
                std::thread::park_timeout(shared.tick.unwrap_or(Duration::from_millis(10)));
                continue;
            }
            _ => return,
        }
        match ws.read() {
            // Read just as the path went silent: a blackhole swallows it.
            Ok(Message::Text(_) | Message::Binary(_)) if fault.load(Ordering::Acquire) != 0 => {}
            Ok(Message::Text(data)) => {
                shared.last.store(id, Ordering::Relaxed);
                if shared.record {
                    shared.arrivals.lock().push(Arrival {
                        data: data.as_bytes().to_vec(),
                    });
                }
                if ws.send(Message::Text(data)).is_err() {
                    return;
                }
            }
            Ok(Message::Binary(data)) => {
                shared.last.store(id, Ordering::Relaxed);
                if shared.record {
                    shared.arrivals.lock().push(Arrival {
                        data: data.to_vec(),
                    });
                }
                if ws.send(Message::Binary(data)).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}
