//! The waiting room: a session whose connection died, with no idle connection to move
//! to yet, waits here on a thread of its own. The room keeps the client served — its
//! pings answered, what it sends buffered in order within `heal_buffer`, what it is
//! still owed flushed — until the monitor has a connection for it (`Release`) or gives
//! up (`Close`, 1011 after `heal_timeout`). The client sees no disconnect.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::config::PoolConfig;
use crate::event::{Client, SessionId};
use crate::monitor::close_client;
use crate::session::{ClientRead, read_client};
use crate::worker::Wake;

/// What the monitor tells a room (followed by a wake).
#[derive(Debug)]
pub enum RoomCommand {
    /// A connection is ready: give the client back.
    Release,
    /// Healing failed: close the client with this code and reason.
    Close(u16, String),
}

/// What a room reports to the monitor; it exits after either.
#[derive(Debug)]
pub enum RoomEvent {
    /// The client, with what it sent meanwhile in its backlog.
    Released(Box<Client>),
    /// The session ended in the room: the client left, broke the protocol, overflowed
    /// `heal_buffer`, stopped reading, or was closed on command.
    Ended {
        session: SessionId,
        code: u16,
        why: String,
    },
}

/// A room for one session, built before its thread starts.
pub struct Room {
    pub client: Box<Client>,
    pub pool: Arc<PoolConfig>,
    pub commands: Receiver<RoomCommand>,
    pub events: Sender<RoomEvent>,
    pub wake: Arc<Wake>,
}

impl Room {
    pub fn spawn(self) -> io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("room-{}", self.client.session))
            .stack_size(128 * 1024)
            .spawn(move || self.run())
    }

    fn run(mut self) {
        let session = self.client.session;
        let wake = self.wake.clone();
        let waiter = wake.bind();
        let mut pending_since: Option<Instant> = None;
        // A backstop only: the monitor closes the room at `heal_timeout`.
        let give_up = Instant::now() + self.pool.heal_timeout + Duration::from_secs(1);
        let ended = loop {
            let now = Instant::now();
            match self.commands.try_recv() {
                Ok(RoomCommand::Release) => {
                    let _ = self.events.send(RoomEvent::Released(self.client));
                    return;
                }
                Ok(RoomCommand::Close(code, why)) => break (code, why),
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    break (1001, "wspoold shutting down".to_string());
                }
                Err(crossbeam_channel::TryRecvError::Empty) => {}
            }
            if let Some(end) = self.read() {
                break end;
            }
            match self.client.ws.flush() {
                Ok(()) => pending_since = None,
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    pending_since.get_or_insert(now);
                }
                Err(_) => break (1006, "the client went away while it healed".into()),
            }
            let stall = pending_since.map(|since| since + self.pool.write_timeout);
            if stall.is_some_and(|at| now >= at) {
                break (1008, "the client stopped reading".into());
            }
            if now >= give_up {
                let why = format!(
                    "session not healed within heal_timeout ({})",
                    crate::event::human(self.pool.heal_timeout)
                );
                break (1011, why);
            }
            let deadline = stall.map_or(give_up, |at| at.min(give_up));
            let mut events = libc::POLLIN;
            if pending_since.is_some() {
                events |= libc::POLLOUT;
            }
            let mut fds = [libc::pollfd {
                fd: self.client.ws.get_ref().as_raw_fd(),
                events,
                revents: 0,
            }];
            if waiter
                .poll(&mut fds, deadline.saturating_duration_since(now))
                .is_err()
            {
                break (1011, "wspoold could not wait on the client socket".into());
            }
        };
        let (code, why) = ended;
        if !matches!(code, 1005 | 1006) {
            close_client(*self.client, code, &why);
        }
        let _ = self.events.send(RoomEvent::Ended { session, code, why });
    }

    /// Buffer what the client sent; `Some` when the session must end.
    fn read(&mut self) -> Option<(u16, String)> {
        loop {
            match read_client(&mut self.client.ws) {
                ClientRead::Data(message) => {
                    let pool = &self.pool;
                    let carry = &mut self.client.carry;
                    carry.remember(&pool.replay, &message, pool.heal_buffer);
                    if !carry.buffer(message, pool.heal_buffer) {
                        let why = format!(
                            "heal_buffer ({} bytes) overflowed while the session healed",
                            pool.heal_buffer
                        );
                        return Some((1011, why));
                    }
                    if let Some(healing) = &mut carry.healing {
                        healing.buffered += 1;
                    }
                }
                ClientRead::Control => {}
                ClientRead::Idle => return None,
                ClientRead::Ended(code, why) => {
                    return Some((code, format!("{why} while it healed")));
                }
            }
        }
    }
}
