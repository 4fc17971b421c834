//! A TCP relay on 127.0.0.1 between the daemon and an upstream that injects network
//! faults on command: pass, delay, blackhole, stall, reset and refuse.
//!
//! One accept thread, and per relayed connection two "relay-pipe" threads, one for each
//! direction, which look at the shared fault at least once per [`TICK`].

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use socket2::Socket;

use super::{
    Acceptor, SETTLE, TICK, arm_reset, listen, listen_held, reap, spawn, tick_stream, timed_out,
};

/// A fault the relay applies to its open and new connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward bytes both ways as they come. The default.
    Pass,
    /// Forward each chunk this long after it was read (chunks keep their order; the
    /// delays overlap rather than add up).
    Delay(Duration),
    /// Keep reading both ways and discard the bytes. A close or reset from either side
    /// still goes through, so a connection the daemon gives up on does end.
    Blackhole,
    /// Stop reading both ways: nothing is forwarded, the kernel buffers fill and then
    /// the peers' writes block.
    Stall,
    /// Reset every open relayed connection now (both sides see a TCP reset), then pass
    /// new ones (listening again if the relay was refusing).
    Reset,
    /// Stop listening, so connects are refused; open connections carry on as with
    /// [`Pass`](Fault::Pass). Any other fault listens again on the same port.
    Refuse,
}

/// A TCP relay from 127.0.0.1 (a port of the kernel's choosing) to a target. Dropping it
/// closes the listener and every relayed connection and joins the threads (waiting at
/// most a few seconds for them).
pub struct Relay {
    shared: Arc<Shared>,
    addr: SocketAddr,
    target: SocketAddr,
    acceptor: Mutex<Option<Acceptor>>,
    /// The port, held closed while refusing (see [`Acceptor::stop`]).
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
}

struct State {
    /// Never `Reset`: that acts once and leaves `Pass`.
    fault: Fault,
    stop: bool,
    next_id: u64,
    links: HashMap<u64, Link>,
    threads: Vec<JoinHandle<()>>,
}

/// One relayed connection as the controls see it.
struct Link {
    /// Reset both sides now.
    reset: bool,
    /// Threads still working on it; it is removed when the last one ends.
    pipes: usize,
    /// Threads parked by Stall.
    parked: usize,
}

/// At most this many bytes wait in one direction (for a delay or a slow reader) before
/// the relay stops reading that direction.
const MAX_QUEUED: usize = 1 << 20;

impl Relay {
    /// Starts relaying connections to `target`, passing bytes through.
    pub fn start(target: SocketAddr) -> io::Result<Relay> {
        let listener = listen(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                fault: Fault::Pass,
                stop: false,
                next_id: 1,
                links: HashMap::new(),
                threads: Vec::new(),
            }),
            changed: Condvar::new(),
            settled: Condvar::new(),
        });
        let acceptor = accept(&shared, listener, target)?;
        Ok(Relay {
            shared,
            addr,
            target,
            acceptor: Mutex::new(Some(acceptor)),
            held: Mutex::new(None),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address it relays to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// `ws://127.0.0.1:PORT` followed by `path` (which should start with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// The fault in force (never `Reset`, which acts once and leaves `Pass`).
    pub fn fault(&self) -> Fault {
        self.shared.state.lock().fault
    }

    /// Applies `fault` to open and new connections at once: bytes read after this
    /// returns get the new treatment. `Stall` returns once every open connection has
    /// stopped reading, `Reset` once every open connection has been reset, `Refuse`
    /// once connects are refused; all but `Refuse` listen again if it was refusing.
    ///
    /// # Panics
    ///
    /// If the relay cannot listen on its port again (something else took it).
    pub fn set(&self, fault: Fault) {
        match fault {
            Fault::Reset => {
                self.reset_all();
                self.listen_again();
            }
            Fault::Stall => self.stall(),
            Fault::Refuse => {
                self.shared.state.lock().fault = Fault::Refuse;
                self.shared.changed.notify_all();
                if let Some(acceptor) = self.acceptor.lock().take() {
                    *self.held.lock() = acceptor.stop();
                }
            }
            _ => {
                self.shared.state.lock().fault = fault;
                self.shared.changed.notify_all();
                self.listen_again();
            }
        }
    }

    /// How many relayed connections are open now (until both directions have ended).
    pub fn connections(&self) -> usize {
        self.shared.state.lock().links.len()
    }

    fn reset_all(&self) {
        let mut st = self.shared.state.lock();
        st.fault = Fault::Pass;
        let targets: Vec<u64> = st.links.keys().copied().collect();
        for link in st.links.values_mut() {
            link.reset = true;
        }
        self.shared.changed.notify_all();
        let deadline = Instant::now() + SETTLE;
        while targets.iter().any(|id| st.links.contains_key(id)) {
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

    fn stall(&self) {
        let mut st = self.shared.state.lock();
        st.fault = Fault::Stall;
        self.shared.changed.notify_all();
        let deadline = Instant::now() + SETTLE;
        while st.fault == Fault::Stall && !st.links.values().all(|l| l.reset || l.parked >= l.pipes)
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
        drop(st);
        self.listen_again();
    }

    fn listen_again(&self) {
        let mut acceptor = self.acceptor.lock();
        if acceptor.is_none() {
            let started = listen_held(self.held.lock().take(), self.addr)
                .and_then(|listener| accept(&self.shared, listener, self.target))
                .unwrap_or_else(|e| panic!("relay cannot listen again on {}: {e}", self.addr));
            *acceptor = Some(started);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(acceptor) = self.acceptor.lock().take() {
            acceptor.stop();
        }
        let mut st = self.shared.state.lock();
        st.stop = true;
        self.shared.changed.notify_all();
        let deadline = Instant::now() + SETTLE;
        while !st.links.is_empty() {
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
        let all_ended = st.links.is_empty();
        drop(st);
        if all_ended {
            // Each thread lets go of its link as the very last thing it does.
            for handle in threads {
                let _ = handle.join();
            }
        } else {
            reap(&mut threads);
        }
    }
}

/// Starts the accept thread, which starts a link per accepted socket.
fn accept(
    shared: &Arc<Shared>,
    listener: std::net::TcpListener,
    target: SocketAddr,
) -> io::Result<Acceptor> {
    let shared = shared.clone();
    Acceptor::start("relay-accept", listener, move |client| {
        shared.start_link(client, target)
    })
}

impl Shared {
    /// Registers a link and starts its first pipe, which connects to the target.
    fn start_link(self: &Arc<Self>, client: TcpStream, target: SocketAddr) {
        if tick_stream(&client).is_err() {
            return;
        }
        let id = {
            let mut st = self.state.lock();
            let id = st.next_id;
            st.next_id += 1;
            let link = Link {
                reset: false,
                pipes: 1,
                parked: 0,
            };
            st.links.insert(id, link);
            id
        };
        let guard = PipeGuard {
            shared: self.clone(),
            id,
        };
        let shared = self.clone();
        let spawned = spawn("relay-pipe", move || {
            let _guard = guard;
            shared.run_link(id, client, target);
        });
        self.keep(spawned);
    }

    fn keep(&self, spawned: io::Result<JoinHandle<()>>) {
        // On failure the closure, and with it the guard and the streams, is dropped.
        if let Ok(handle) = spawned {
            let mut st = self.state.lock();
            reap(&mut st.threads);
            st.threads.push(handle);
        }
    }

    /// Connects to the target, starts the upstream-to-client pipe and runs the
    /// client-to-upstream one. A refused or failed connect resets the client.
    fn run_link(self: &Arc<Self>, id: u64, client: TcpStream, target: SocketAddr) {
        let Ok(upstream) = TcpStream::connect_timeout(&target, SETTLE) else {
            return super::reset(client);
        };
        let clones =
            tick_stream(&upstream).and_then(|()| Ok((upstream.try_clone()?, client.try_clone()?)));
        let Ok((from_upstream, to_client)) = clones else {
            arm_reset(&client);
            arm_reset(&upstream);
            return;
        };
        if let Some(link) = self.state.lock().links.get_mut(&id) {
            link.pipes += 1;
        }
        let guard = PipeGuard {
            shared: self.clone(),
            id,
        };
        let back = Pipe::new(self.clone(), id, from_upstream, to_client);
        self.keep(spawn("relay-pipe", move || {
            let _guard = guard;
            back.run();
        }));
        Pipe::new(self.clone(), id, client, upstream).run();
    }
}

/// Lets go of a link when a pipe ends, even by panic.
struct PipeGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for PipeGuard {
    fn drop(&mut self) {
        let mut st = self.shared.state.lock();
        if let Some(link) = st.links.get_mut(&self.id) {
            link.pipes -= 1;
            if link.pipes == 0 {
                st.links.remove(&self.id);
            }
        }
        drop(st);
        self.shared.settled.notify_all();
    }
}

/// What a pipe should do next.
enum Control {
    Apply(Fault),
    Reset,
    Stop,
}

/// One direction of a relayed connection: reads `src`, writes `dst`.
struct Pipe {
    shared: Arc<Shared>,
    id: u64,
    src: TcpStream,
    dst: TcpStream,
    /// Chunks read and not yet written, each with the time it is due.
    queue: VecDeque<(Instant, Vec<u8>)>,
    queued: usize,
    /// How much of the front chunk has been written.
    written: usize,
    /// `src` has sent its FIN.
    eof: bool,
    read_timeout: Duration,
    buf: Vec<u8>,
}

impl Pipe {
    fn new(shared: Arc<Shared>, id: u64, src: TcpStream, dst: TcpStream) -> Pipe {
        Pipe {
            shared,
            id,
            src,
            dst,
            queue: VecDeque::new(),
            queued: 0,
            written: 0,
            eof: false,
            read_timeout: TICK,
            buf: vec![0; 64 * 1024],
        }
    }

    fn run(mut self) {
        loop {
            let go_on = match self.control() {
                Control::Stop => return,
                Control::Reset => return self.reset_both(),
                Control::Apply(Fault::Stall) => {
                    self.wait_change(Fault::Stall, None);
                    true
                }
                Control::Apply(Fault::Blackhole) => self.blackhole(),
                Control::Apply(fault) => self.forward(fault),
            };
            if !go_on {
                return;
            }
        }
    }

    fn control(&self) -> Control {
        let st = self.shared.state.lock();
        if st.stop {
            Control::Stop
        } else if st.links.get(&self.id).is_none_or(|l| l.reset) {
            Control::Reset
        } else {
            Control::Apply(st.fault)
        }
    }

    /// Waits until the controls differ from `fault` (or until `until`, or a second as a
    /// safety net). Under Stall the pipe counts as parked meanwhile.
    fn wait_change(&self, fault: Fault, until: Option<Instant>) {
        let mut st = self.shared.state.lock();
        let same =
            st.fault == fault && !st.stop && st.links.get(&self.id).is_some_and(|l| !l.reset);
        if !same {
            return;
        }
        let stall = fault == Fault::Stall;
        if stall {
            self.park(&mut st, true);
        }
        let limit = Instant::now() + Duration::from_secs(1);
        let deadline = until.map_or(limit, |u| u.min(limit));
        self.shared.changed.wait_until(&mut st, deadline);
        if stall {
            self.park(&mut st, false);
        }
    }

    fn park(&self, st: &mut State, parked: bool) {
        if let Some(link) = st.links.get_mut(&self.id) {
            if parked {
                link.parked += 1;
            } else {
                link.parked -= 1;
            }
        }
        self.shared.settled.notify_all();
    }

    /// Reads and discards; returns false when the pipe is done.
    fn blackhole(&mut self) -> bool {
        self.queue.clear();
        self.queued = 0;
        self.written = 0;
        if self.eof {
            return self.finish();
        }
        self.read(TICK)
    }

    /// Under `fault` (which forwards), writes the chunks that are due and reads more;
    /// returns false when the pipe is done.
    fn forward(&mut self, fault: Fault) -> bool {
        let now = Instant::now();
        while let Some((due, chunk)) = self.queue.front() {
            if *due > now {
                break;
            }
            match self.dst.write(&chunk[self.written..]) {
                Ok(0) => return self.fail(),
                Ok(n) => {
                    self.written += n;
                    if self.written == chunk.len() {
                        self.queued -= chunk.len();
                        self.written = 0;
                        self.queue.pop_front();
                    }
                }
                // The write waited a tick: look at the controls again before retrying,
                // and read no more while the destination is not reading.
                Err(e) if timed_out(&e) => return true,
                Err(_) => return self.fail(),
            }
        }
        let next_due = self.queue.front().map(|(due, _)| *due);
        if self.eof && self.queue.is_empty() {
            return self.finish();
        }
        if self.eof || self.queued >= MAX_QUEUED {
            self.wait_change(fault, next_due);
            return true;
        }
        let timeout = next_due.map_or(TICK, |due| {
            due.saturating_duration_since(now)
                .clamp(Duration::from_millis(1), TICK)
        });
        self.read(timeout)
    }

    /// Reads once (waiting at most `timeout`) and queues or discards what came as the
    /// fault in force *after* the read says, so that bytes sent after [`Relay::set`]
    /// returned never get the old treatment; returns false when the pipe is done.
    fn read(&mut self, timeout: Duration) -> bool {
        if timeout != self.read_timeout {
            if self.src.set_read_timeout(Some(timeout)).is_err() {
                return self.fail();
            }
            self.read_timeout = timeout;
        }
        match self.src.read(&mut self.buf) {
            Ok(0) => {
                self.eof = true;
                true
            }
            Ok(n) => {
                let delay = match self.control() {
                    Control::Apply(Fault::Blackhole) => None,
                    Control::Apply(Fault::Delay(delay)) => Some(delay),
                    _ => Some(Duration::ZERO),
                };
                if let Some(delay) = delay {
                    let chunk = self.buf[..n].to_vec();
                    self.queue.push_back((Instant::now() + delay, chunk));
                    self.queued += n;
                }
                true
            }
            Err(e) if timed_out(&e) => true,
            Err(_) => self.fail(),
        }
    }

    /// Passes the source's FIN on; the other direction carries on.
    fn finish(&mut self) -> bool {
        let _ = self.dst.shutdown(Shutdown::Write);
        false
    }

    /// A side failed (typically it was reset): reset the whole link.
    fn fail(&mut self) -> bool {
        if let Some(link) = self.shared.state.lock().links.get_mut(&self.id) {
            link.reset = true;
        }
        self.shared.changed.notify_all();
        self.reset_both();
        false
    }

    /// Arms both sockets for a reset; it is sent when both pipes have dropped them.
    fn reset_both(&self) {
        arm_reset(&self.src);
        arm_reset(&self.dst);
    }
}

#[cfg(test)]
#[path = "relay_tests.rs"]
mod tests;
