//! One pooled upstream connection's thread, and the only owner of its socket: dial,
//! then serve — heartbeats, answering the server's pings, any inbound frame as proof of
//! life — blocking in `ppoll(2)` on the socket with the next deadline as the timeout,
//! woken by a signal when the monitor sends it something. When the connection ends it
//! reports why and exits.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering, fence};
use std::sync::{Arc, Once, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

use crate::config::{Delivery, Endpoint, PoolConfig};
use crate::event::{Cause, Client, Command, ConnId, Event, ToWorker};
use crate::metrics::EndpointStats;
use crate::session::{ClientRead, Healing, read_client};
use crate::upstream::{self, Stream};

/// How long a closing handshake may take before the socket is simply dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// How late the kernel may fire a worker's timers (nanoseconds).
const TIMER_SLACK_NS: u64 = 10_000_000;

/// An idle connection times one heartbeat in this many; the others' pongs are read
/// at its next timer instead of waking the thread as they arrive.
const TIME_EVERY: u64 = 8;

/// Milliseconds since the first call, as a cheap timestamp an atomic can hold.
pub fn millis(at: Instant) -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    at.saturating_duration_since(base).as_millis() as u64
}

/// The signal that wakes a worker or room thread. Its default action is to ignore it,
/// nothing else in the process uses it, and, unlike a real-time signal, it does not
/// queue: a second one sent before the first is taken is merged with it.
const WAKE_SIGNAL: libc::c_int = libc::SIGURG;

/// Ends one thread's wait at once after the monitor sent it a command: `WAKE_SIGNAL`
/// sent to that thread alone. The thread keeps the signal blocked except inside its
/// `ppoll(2)`, so a wake sent while it is busy stays pending and ends its next wait;
/// none is lost, and no descriptor is spent on it (a pool of 10,000 connections needs
/// 10,000 descriptors, not 20,000).
#[derive(Debug)]
pub struct Wake {
    /// The kernel's id of the thread that waits; 0 before it binds and after.
    tid: AtomicI32,
}

impl Wake {
    pub fn new() -> Wake {
        static HANDLER: Once = Once::new();
        HANDLER.call_once(|| {
            // SAFETY: a zeroed sigaction with a handler that does nothing, an empty
            // mask and SA_RESTART (a stray wake restarts other threads' calls).
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = woken as extern "C" fn(libc::c_int) as usize;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(WAKE_SIGNAL, &action, std::ptr::null_mut());
            }
        });
        Wake {
            tid: AtomicI32::new(0),
        }
    }

    pub fn signal(&self) {
        // Pairs with the fence in `bind`: either this sees the thread's id, or the
        // thread's first look at its commands sees what was sent before this call.
        fence(Ordering::SeqCst);
        let tid = self.tid.load(Ordering::Relaxed);
        if tid != 0 {
            // SAFETY: tgkill takes no pointers. It reaches only a thread of this
            // process; an id reused by another of ours would get a harmless wake.
            unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, WAKE_SIGNAL) };
        }
    }

    /// Makes the calling thread the one this wakes, while the `Waiter` lives. Call it
    /// before the first look at the commands.
    pub(crate) fn bind(&self) -> Waiter<'_> {
        // SAFETY: sigset_t values are initialised by sigemptyset or pthread_sigmask
        // before use; the calls change only this thread's mask.
        let mask = unsafe {
            let mut block: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut block);
            libc::sigaddset(&mut block, WAKE_SIGNAL);
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, &block, &mut old);
            libc::sigdelset(&mut old, WAKE_SIGNAL);
            old
        };
        // SAFETY: gettid takes no arguments.
        self.tid.store(unsafe { libc::gettid() }, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        Waiter { wake: self, mask }
    }
}

impl Default for Wake {
    /// As `new`: the handler is installed either way, or a wake would be ignored.
    fn default() -> Wake {
        Wake::new()
    }
}

extern "C" fn woken(_: libc::c_int) {}

/// The thread bound to a `Wake`, and how it waits.
pub(crate) struct Waiter<'a> {
    wake: &'a Wake,
    /// The thread's signal mask with `WAKE_SIGNAL` let through.
    mask: libc::sigset_t,
}

impl Waiter<'_> {
    /// `ppoll(2)` until a descriptor is ready, `timeout` passes or the thread is woken
    /// (then `Ok(0)`, as for any signal).
    pub(crate) fn poll(&self, fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<usize> {
        let timeout = libc::timespec {
            tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: fds is a valid, exclusively borrowed slice of pollfd for the whole
        // call; the timeout and the mask are live locals.
        let n = unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                &timeout,
                &self.mask,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(e);
        }
        Ok(n as usize)
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.wake.tid.store(0, Ordering::Relaxed);
    }
}

/// What the monitor and a worker share besides channels.
#[derive(Debug)]
pub struct Shared {
    /// `millis()` of the worker's last turn of its loop; a stale value means stuck.
    pub progress: AtomicU64,
    /// Set by the monitor when it gave up on a stuck worker: exit quietly if you return.
    pub abandoned: AtomicBool,
    pub wake: Wake,
    /// The heartbeat timeout in milliseconds: its endpoint's at the start, then as
    /// the monitor adapts it to the round trips (`heartbeat_timeout_min`).
    pub heartbeat_timeout: AtomicU64,
}

impl Shared {
    pub fn new(heartbeat_timeout: Duration) -> Shared {
        Shared {
            progress: AtomicU64::new(millis(Instant::now())),
            abandoned: AtomicBool::new(false),
            wake: Wake::new(),
            heartbeat_timeout: AtomicU64::new(heartbeat_timeout.as_millis() as u64),
        }
    }

    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat_timeout.load(Ordering::Relaxed))
    }

    fn touch(&self, now: Instant) {
        self.progress.store(millis(now), Ordering::Relaxed);
    }
}

/// Everything a worker thread needs, built before it is spawned.
pub struct Worker {
    pub id: ConnId,
    pub pool: Arc<PoolConfig>,
    pub endpoint: Endpoint,
    /// The pool's shared TLS configuration.
    pub tls: Arc<rustls::ClientConfig>,
    pub events: Sender<Event>,
    pub commands: Receiver<ToWorker>,
    pub shared: Arc<Shared>,
    /// Its endpoint's counters: round trips and messages forwarded.
    pub stats: Arc<EndpointStats>,
}

impl Worker {
    pub fn spawn(self) -> io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("worker-{}", self.id & 0xff_ffff))
            .stack_size(256 * 1024)
            .spawn(move || self.run())
    }

    /// Dial, serve until the connection ends, report why.
    pub fn run(self) {
        // Let the kernel fire this thread's timers up to 10 ms late, so that it can
        // wake the heartbeats of thousands of idle connections in batches (a fifth
        // less CPU at 5,000 connections on the bench). Events still wake it at once.
        // SAFETY: prctl with an integer argument only changes this thread's slack.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, TIMER_SLACK_NS) };
        let started = Instant::now();
        self.shared.touch(started);
        let touch = || self.shared.touch(Instant::now());
        let (cause, last_life, client) =
            match upstream::connect(&self.endpoint, &self.pool, &self.tls, &touch) {
                Err(cause) => (cause, None, None),
                Ok(conn) => {
                    let _ = self.events.send(Event::Connected {
                        id: self.id,
                        peer: conn.peer,
                        took: started.elapsed(),
                    });
                    let mut serve = Serve::new(&self, conn.ws);
                    let (cause, client) = serve.run();
                    (cause, Some(serve.last_life), client)
                }
            };
        if self.shared.abandoned.load(Ordering::Relaxed) {
            if let Some(client) = client {
                crate::monitor::close_client(
                    *client,
                    1011,
                    "wspoold gave up on a stuck connection",
                );
            }
            return;
        }
        let _ = self.events.send(Event::Died {
            id: self.id,
            cause,
            at: Instant::now(),
            last_life,
            client,
        });
    }
}

/// The serving phase of one connection.
struct Serve<'a> {
    worker: &'a Worker,
    /// How this thread waits, woken by the monitor.
    waiter: Waiter<'a>,
    ws: WebSocket<Stream>,
    last_life: Instant,
    next_ping: Instant,
    /// The heartbeat awaiting its pong: payload and when it was sent.
    ping: Option<(u64, Instant)>,
    /// Whether the pong of the heartbeat in flight is read as it arrives, so that its
    /// round trip can be measured. An idle connection's other pongs wait in the socket
    /// until its next timer: one wake-up per heartbeat instead of two.
    timed: bool,
    /// Tell the monitor about the next pong: the first one proves a new connection (and
    /// a probe's endpoint), and the monitor asks again when it suspects the endpoint.
    /// Routine pongs stay here, so ten thousand idle connections do not wake it.
    report_pong: bool,
    /// The socket may have bytes: poll said so, or nothing has been read yet.
    readable: bool,
    /// When the thread last went to sleep without watching its socket: what it reads
    /// on waking arrived at some point since, so that is all it proves of life.
    unwatched_since: Option<Instant>,
    seq: u64,
    /// Since when output has been waiting for the socket to drain.
    pending_since: Option<Instant>,
    /// A closing handshake under way: its deadline and what to report when it ends.
    closing: Option<(Instant, Cause)>,
    /// The local client this connection serves, if any.
    client: Option<Bridge>,
}

/// A local client attached to this connection.
struct Bridge {
    client: Client,
    /// The client socket may have bytes (poll said so, or it was just attached).
    readable: bool,
    /// Since when output to the client has been waiting for its socket to drain.
    pending_since: Option<Instant>,
    /// Client messages written upstream and not yet acknowledged, oldest first, each
    /// with the heartbeat sequence number whose pong confirms it. Under at-most-once
    /// only the count is kept (`None`).
    unconfirmed: VecDeque<(u64, Option<Message>)>,
    unconfirmed_bytes: usize,
}

impl Bridge {
    fn new(client: Client) -> Bridge {
        Bridge {
            client,
            readable: true,
            pending_since: None,
            unconfirmed: VecDeque::new(),
            unconfirmed_bytes: 0,
        }
    }

    /// A client message went upstream; the pong to heartbeat `tag` confirms it. Only
    /// its count is kept unless `keep` (at-least-once).
    fn written(&mut self, tag: u64, message: &Message, keep: bool) {
        if keep {
            self.unconfirmed_bytes += message.len();
        }
        self.unconfirmed
            .push_back((tag, keep.then(|| message.clone())));
    }

    /// A pong for heartbeat `seq` arrived: everything written before that ping was read.
    fn confirm(&mut self, seq: u64) {
        while let Some((tag, _)) = self.unconfirmed.front() {
            if *tag > seq {
                break;
            }
            if let Some((_, Some(message))) = self.unconfirmed.pop_front() {
                self.unconfirmed_bytes -= message.len();
            }
        }
    }
}

impl<'a> Serve<'a> {
    fn new(worker: &'a Worker, ws: WebSocket<Stream>) -> Serve<'a> {
        let now = Instant::now();
        Serve {
            worker,
            waiter: worker.shared.wake.bind(),
            ws,
            last_life: now,
            // The first heartbeat goes out at once: it measures the round trip and is
            // what lets a probe bring its endpoint back.
            next_ping: now,
            ping: None,
            timed: false,
            report_pong: true,
            readable: true,
            unwatched_since: None,
            seq: 0,
            pending_since: None,
            closing: None,
            client: None,
        }
    }

    /// Serve until the connection ends; its cause, and the client to heal if one was
    /// attached.
    fn run(&mut self) -> (Cause, Option<Box<Client>>) {
        loop {
            let now = Instant::now();
            self.worker.shared.touch(now);
            if self.worker.shared.abandoned.load(Ordering::Relaxed) {
                return (Cause::Stuck, self.hand_back(&Cause::Stuck, now));
            }
            let cause = match self.step(now) {
                Ok(()) => match self.wait(now) {
                    Ok(()) => continue,
                    Err(e) => Cause::Io(format!("poll: {e}")),
                },
                Err(cause) => self.finish(cause),
            };
            let client = self.hand_back(&cause, now);
            return (cause, client);
        }
    }

    /// The connection died under a client: give the session back for healing, with
    /// what the upstream never acknowledged owed first (at-least-once) or given up.
    fn hand_back(&mut self, cause: &Cause, now: Instant) -> Option<Box<Client>> {
        let mut bridge = self.client.take()?;
        let pool = &self.worker.pool;
        let unconfirmed = bridge.unconfirmed.len();
        let resent = pool.delivery == Delivery::AtLeastOnce;
        if resent {
            let owed: Vec<Message> = bridge
                .unconfirmed
                .drain(..)
                .filter_map(|(_, m)| m)
                .collect();
            bridge.client.carry.owe_first(owed.into_iter());
        }
        bridge.client.carry.healing = Some(Healing {
            since: now,
            cause: cause.clone(),
            from: self.worker.id,
            from_endpoint: self.worker.endpoint.url.clone(),
            unconfirmed,
            resent,
            buffered: 0,
        });
        Some(Box::new(bridge.client))
    }

    /// A retirement we asked for ends as `Retired`, whatever the socket said on the way.
    fn finish(&mut self, cause: Cause) -> Cause {
        match &self.closing {
            Some((_, Cause::Retired)) => Cause::Retired,
            Some((_, closed @ Cause::Closed(..))) if cause != Cause::Reset => closed.clone(),
            _ => cause,
        }
    }

    /// One turn: commands, timers, reads, writes.
    fn step(&mut self, now: Instant) -> Result<(), Cause> {
        while let Ok(message) = self.worker.commands.try_recv() {
            match message {
                ToWorker::Command(Command::PingNow) => {
                    self.next_ping = now;
                    self.report_pong = true;
                }
                ToWorker::Command(Command::Close(code, reason)) => {
                    self.end_session(code, &reason, false);
                    self.close(code, &reason, Cause::Retired, now);
                }
                ToWorker::Command(Command::HeartbeatTimeout(timeout)) => {
                    let ms = timeout.as_millis() as u64;
                    self.worker
                        .shared
                        .heartbeat_timeout
                        .store(ms, Ordering::Relaxed);
                }
                ToWorker::Attach(client) => self.attach(*client, now)?,
            }
        }
        // Read before the timers: an idle connection's pong may be waiting unread.
        let since = self.unwatched_since.take().unwrap_or(now);
        if std::mem::take(&mut self.readable) {
            self.read(since, now)?;
        }
        self.timers(now)?;
        self.serve_client(now);
        self.ack(now)?;
        self.flush(now)
    }

    /// Take on a client. A healed session first gets what it is owed written upstream:
    /// its replay list, then what the dead connection did not confirm, then what it
    /// sent while healing.
    fn attach(&mut self, mut client: Client, now: Instant) -> Result<(), Cause> {
        let pool = &self.worker.pool;
        let resend = client.carry.take_resend();
        let healing = client.carry.healing.take();
        if let Some(healing) = &healing {
            client.carry.heals += 1;
            if pool.heal_notice {
                let notice = heal_notice(&client, healing, resend.len(), now);
                // Errors surface on the client's next flush.
                let _ = client.ws.write(Message::text(notice));
            }
        }
        let mut bridge = Bridge::new(client);
        let keep = pool.delivery == Delivery::AtLeastOnce;
        for message in &resend {
            bridge.written(self.seq + 1, message, keep);
        }
        self.client = Some(bridge);
        for message in resend {
            self.write(message, now)?;
        }
        Ok(())
    }

    /// Ask the upstream to acknowledge what the client sent: a ping as soon as there
    /// is unconfirmed traffic and no ping in flight, so what a death can leave in
    /// doubt stays around one round trip.
    fn ack(&mut self, now: Instant) -> Result<(), Cause> {
        let owed = self
            .client
            .as_ref()
            .and_then(|b| b.unconfirmed.back())
            .is_some_and(|(tag, _)| *tag > self.seq);
        if owed && self.ping.is_none() && self.closing.is_none() {
            self.send_ping(now)?;
        }
        Ok(())
    }

    fn send_ping(&mut self, now: Instant) -> Result<(), Cause> {
        self.seq += 1;
        let payload = self.seq.to_be_bytes().to_vec();
        self.ping = Some((self.seq, now));
        self.timed = self.report_pong || self.client.is_some() || self.seq % TIME_EVERY == 1;
        self.next_ping = now + self.worker.pool.heartbeat_interval;
        self.write(Message::Ping(payload.into()), now)
    }

    fn timers(&mut self, now: Instant) -> Result<(), Cause> {
        let pool = &self.worker.pool;
        if let Some((deadline, cause)) = &self.closing {
            if now >= *deadline {
                return Err(cause.clone());
            }
            return Ok(());
        }
        let timeout = self.worker.shared.heartbeat_timeout();
        if let Some((_, sent)) = self.ping
            && now >= sent + timeout
        {
            self.ping = None;
            let _ = self.worker.events.send(Event::Heartbeat {
                id: self.worker.id,
                sent,
                rtt: None,
            });
        }
        if now >= self.last_life + pool.heartbeat_interval + timeout {
            return Err(Cause::HeartbeatTimeout);
        }
        if let Some(since) = self.pending_since
            && now >= since + pool.write_timeout
        {
            return Err(Cause::WriteStall);
        }
        if now >= self.next_ping {
            self.send_ping(now)?;
        }
        Ok(())
    }

    fn close(&mut self, code: u16, reason: &str, then: Cause, now: Instant) {
        if self.closing.is_some() {
            return;
        }
        self.closing = Some((now + CLOSE_WAIT, then));
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        // Errors surface on the next read or flush.
        let _ = self.ws.close(Some(frame));
    }

    fn write(&mut self, message: Message, now: Instant) -> Result<(), Cause> {
        match self.ws.write(message) {
            Ok(()) => Ok(()),
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                self.pending_since.get_or_insert(now);
                Ok(())
            }
            Err(tungstenite::Error::WriteBufferFull(_)) => Err(Cause::WriteStall),
            Err(e) => Err(classify(e)),
        }
    }

    /// Read until the socket would block: rustls may hold decrypted bytes that the
    /// descriptor no longer shows as readable. What is read proves the upstream alive
    /// at `since`: now, unless the socket went unwatched.
    fn read(&mut self, since: Instant, now: Instant) -> Result<(), Cause> {
        loop {
            match self.ws.read() {
                Ok(message) => {
                    self.last_life = self.last_life.max(since);
                    self.on_message(message, now);
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(());
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Err(match self.closing.take() {
                        Some((_, cause)) => cause,
                        None => Cause::Closed(1006, "no close frame".into()),
                    });
                }
                Err(e) => return Err(classify(e)),
            }
        }
    }

    fn on_message(&mut self, message: Message, now: Instant) {
        match message {
            Message::Pong(payload) => {
                // Any of our pongs acknowledges what was written before its ping, even
                // one overtaken by a later heartbeat.
                if let Ok(bytes) = <[u8; 8]>::try_from(payload.as_ref())
                    && let Some(bridge) = &mut self.client
                {
                    let seq = u64::from_be_bytes(bytes);
                    if seq <= self.seq {
                        bridge.confirm(seq);
                    }
                }
                if let Some((seq, sent)) = self.ping
                    && payload.as_ref() == seq.to_be_bytes()
                {
                    self.ping = None;
                    if self.timed {
                        self.worker
                            .stats
                            .rtt
                            .observe(now.saturating_duration_since(sent));
                    }
                    if std::mem::take(&mut self.report_pong) {
                        let _ = self.worker.events.send(Event::Heartbeat {
                            id: self.worker.id,
                            sent,
                            rtt: Some(now.saturating_duration_since(sent)),
                        });
                    }
                }
            }
            Message::Close(frame) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                // tungstenite queued the reply; wait briefly for the server to hang up.
                if self.closing.is_none() {
                    self.closing = Some((now + CLOSE_WAIT, Cause::Closed(code, reason)));
                }
            }
            Message::Text(_) | Message::Binary(_) => self.forward_to_client(message, now),
            Message::Ping(_) | Message::Frame(_) => {}
        }
    }

    fn flush(&mut self, now: Instant) -> Result<(), Cause> {
        match self.ws.flush() {
            Ok(()) => {
                self.pending_since = None;
                Ok(())
            }
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                self.pending_since.get_or_insert(now);
                Ok(())
            }
            Err(tungstenite::Error::ConnectionClosed) => Err(self
                .closing
                .take()
                .map(|(_, cause)| cause)
                .unwrap_or(Cause::Closed(1006, "no close frame".into()))),
            Err(e) => Err(classify(e)),
        }
    }

    /// The earliest deadline of this connection.
    fn deadline(&self) -> Instant {
        let pool = &self.worker.pool;
        if let Some((deadline, _)) = &self.closing {
            return *deadline;
        }
        let timeout = self.worker.shared.heartbeat_timeout();
        let mut deadline = (self.last_life + pool.heartbeat_interval + timeout).min(self.next_ping);
        if let Some((_, sent)) = self.ping {
            deadline = deadline.min(sent + timeout);
        }
        if let Some(since) = self.pending_since {
            deadline = deadline.min(since + pool.write_timeout);
        }
        if let Some(since) = self.client.as_ref().and_then(|b| b.pending_since) {
            deadline = deadline.min(since + pool.write_timeout);
        }
        deadline
    }

    /// Forward what the client sent, flush what it is owed, and end the session if it
    /// left, broke the protocol or stopped reading.
    fn serve_client(&mut self, now: Instant) {
        let Some(bridge) = &mut self.client else {
            return;
        };
        let mut forward = Vec::new();
        let mut ended: Option<(u16, String)> = None;
        // Backpressure: while the upstream is not draining, or too much awaits its
        // acknowledgement, leave the client's bytes in its socket.
        let accepting =
            self.pending_since.is_none() && bridge.unconfirmed_bytes < self.worker.pool.heal_buffer;
        if accepting && std::mem::take(&mut bridge.readable) {
            loop {
                match read_client(&mut bridge.client.ws) {
                    ClientRead::Data(message) => forward.push(message),
                    ClientRead::Control => {}
                    ClientRead::Idle => break,
                    ClientRead::Ended(code, why) => {
                        ended = Some((code, why));
                        break;
                    }
                }
            }
        }
        match bridge.client.ws.flush() {
            Ok(()) => bridge.pending_since = None,
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                bridge.pending_since.get_or_insert(now);
            }
            Err(_) if ended.is_none() => ended = Some((1006, "the client went away".into())),
            Err(_) => {}
        }
        if ended.is_none()
            && bridge
                .pending_since
                .is_some_and(|since| now >= since + self.worker.pool.write_timeout)
        {
            ended = Some((1008, "the client stopped reading".into()));
        }
        let pool = &self.worker.pool;
        let keep = pool.delivery == Delivery::AtLeastOnce;
        for message in &forward {
            bridge
                .client
                .carry
                .remember(&pool.replay, message, pool.heal_buffer);
            bridge.written(self.seq + 1, message, keep);
        }
        if !forward.is_empty() {
            self.worker
                .stats
                .to_upstream
                .fetch_add(forward.len() as u64, Ordering::Relaxed);
        }
        for message in forward {
            // A stalled upstream surfaces as a write stall on the next turn.
            let _ = self.write(message, now);
        }
        if let Some((code, why)) = ended {
            self.leave(code, &why, now);
        }
    }

    /// Deliver an upstream message to the client, if one is attached.
    fn forward_to_client(&mut self, message: Message, now: Instant) {
        let Some(bridge) = &mut self.client else {
            return;
        };
        self.worker.stats.to_client.fetch_add(1, Ordering::Relaxed);
        match bridge.client.ws.write(message) {
            Ok(()) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                bridge.pending_since.get_or_insert(now);
            }
            Err(tungstenite::Error::WriteBufferFull(_)) => {
                self.leave(1008, "the client stopped reading", now);
            }
            Err(_) => self.leave(1006, "the client went away", now),
        }
    }

    /// The client's session is over: close the client, then close the upstream
    /// connection with it, or keep it for the next client with `reuse`.
    fn leave(&mut self, code: u16, why: &str, now: Instant) {
        let keep = self.worker.pool.reuse;
        self.end_session(code, why, keep);
        if !keep {
            self.close(1000, "client left", Cause::Retired, now);
        }
    }

    /// Close the client (if any) with `code` and tell the monitor the session ended.
    fn end_session(&mut self, code: u16, why: &str, kept: bool) {
        let Some(mut bridge) = self.client.take() else {
            return;
        };
        if !matches!(code, 1005 | 1006) {
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: why.into(),
            };
            let _ = bridge.client.ws.close(Some(frame));
        }
        let _ = bridge.client.ws.flush();
        let _ = self.worker.events.send(Event::SessionEnded {
            id: self.worker.id,
            session: bridge.client.session,
            code,
            why: why.to_string(),
            kept,
        });
    }

    /// Whether what arrives is read at once: always with a client, while closing and
    /// while a timed heartbeat is out. Otherwise the thread wakes only for its timers,
    /// its commands and a hangup (FIN or RST), and reads at its next timer.
    fn attentive(&self) -> bool {
        self.client.is_some() || self.closing.is_some() || (self.ping.is_some() && self.timed)
    }

    /// Block until the sockets are ready, the monitor wakes the thread, or the next
    /// deadline.
    fn wait(&mut self, now: Instant) -> io::Result<()> {
        let timeout = self.deadline().saturating_duration_since(now);
        let attentive = self.attentive();
        let mut events = if attentive {
            libc::POLLIN
        } else {
            libc::POLLRDHUP
        };
        if self.pending_since.is_some() {
            events |= libc::POLLOUT;
        }
        let accepting = self.pending_since.is_none();
        let (client_fd, client_events) = match &self.client {
            Some(bridge) => {
                let mut events = 0;
                if accepting && bridge.unconfirmed_bytes < self.worker.pool.heal_buffer {
                    events |= libc::POLLIN;
                }
                if bridge.pending_since.is_some() {
                    events |= libc::POLLOUT;
                }
                // Watching a descriptor for nothing would still report its hangup
                // and spin this loop; it is looked at again once reading resumes.
                if events == 0 {
                    (-1, 0)
                } else {
                    (bridge.client.ws.get_ref().as_raw_fd(), events)
                }
            }
            // A negative descriptor is ignored by poll(2).
            None => (-1, 0),
        };
        let mut fds = [
            libc::pollfd {
                fd: self.ws.get_ref().as_raw_fd(),
                events,
                revents: 0,
            },
            libc::pollfd {
                fd: client_fd,
                events: client_events,
                revents: 0,
            },
        ];
        if !attentive {
            self.unwatched_since = Some(now);
        }
        self.waiter.poll(&mut fds, timeout)?;
        // Every read drains the socket (and rustls) to WouldBlock, so a socket poll
        // does not report readable has nothing waiting. Errors and hangups read too,
        // and an inattentive connection reads whatever woke it.
        self.readable = fds[0].revents != 0 || !attentive;
        if let Some(bridge) = &mut self.client {
            bridge.readable |= fds[1].revents != 0;
        }
        Ok(())
    }
}

/// Map a tungstenite error on a live connection to a cause of death.
fn classify(e: tungstenite::Error) -> Cause {
    use tungstenite::error::ProtocolError;
    match e {
        tungstenite::Error::Io(io) => upstream::io_cause(io),
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Cause::Reset,
        tungstenite::Error::Protocol(p) => Cause::Protocol(p.to_string()),
        tungstenite::Error::Capacity(c) => Cause::Protocol(c.to_string()),
        tungstenite::Error::Utf8(_) => Cause::Protocol("invalid utf-8 in a text message".into()),
        tungstenite::Error::WriteBufferFull(_) => Cause::WriteStall,
        other => Cause::Protocol(other.to_string()),
    }
}

/// The text a client gets after its session healed (with `heal_notice`), so it can
/// resync what the upstream may have sent while the old connection was dying.
fn heal_notice(client: &Client, healing: &Healing, resent: usize, now: Instant) -> String {
    format!(
        r#"{{"wspoold":"healed","session":{},"heal":{},"cause":"{}","healed_ms":{:.3},"unconfirmed":{},"delivery":"{}","resent":{}}}"#,
        client.session,
        client.carry.heals,
        healing.cause.label(),
        now.saturating_duration_since(healing.since).as_secs_f64() * 1000.0,
        healing.unconfirmed,
        if healing.resent {
            "at-least-once"
        } else {
            "at-most-once"
        },
        resent,
    )
}

#[cfg(test)]
#[path = "worker_tests.rs"]
mod tests;
