//! Pure pool decisions: which connections to open and where, what a death means for
//! its endpoint, failover to other primaries and backups, failback, and when the pool's
//! condition is worth an alert. A function of (state, event, now): no sockets, no
//! threads, no clock reads. The monitor applies the actions it returns.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::backoff::{Backoff, Rng};
use crate::config::PoolConfig;
use crate::event::{
    Cause, Command, ConnId, Event, Notice, Observation, SessionId, Severity, human,
};
use crate::flap::{Damping, Penalty};
use crate::health::{Health, State, Transition};

/// What the monitor must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start a worker for a new connection to `endpoint` (an index into the pool's list).
    Spawn { id: ConnId, endpoint: usize },
    /// Send a command to a worker.
    Command(ConnId, Command),
    /// A line for syslog (and stderr when in the foreground).
    Notice(Notice),
    /// Hand a waiting client to an idle connection.
    Attach { conn: ConnId, session: SessionId },
    /// Turn a waiting client away with this close code.
    Reject {
        session: SessionId,
        code: u16,
        reason: String,
    },
}

/// A client waiting for a connection.
#[derive(Debug, Clone, Copy)]
struct Waiter {
    session: SessionId,
    /// When it is turned away.
    deadline: Instant,
    /// A session whose connection died, rather than a new client.
    heal: bool,
}

/// How healthy the pool is, as last reported to the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Ok,
    Degraded,
    Down,
}

#[derive(Debug, Clone)]
struct EndpointSlot {
    url: String,
    backup: bool,
    /// Relative share of new connections.
    weight: u32,
    /// When it came back from down: its share ramps up over `slow_start` from then.
    returned: Option<Instant>,
    health: Health,
    connecting: u32,
    connected: u32,
    /// Flap damping: grows each time it leaves rotation.
    flap: Penalty,
    /// Smoothed heartbeat round trip (7/8 old, 1/8 new) and its variation (3/4 old,
    /// 1/4 new), as TCP keeps them (RFC 6298).
    srtt: Option<Duration>,
    rttvar: Duration,
    /// Its heartbeat timeout: adapted to the round trips within the pool's bounds.
    timeout: Duration,
    /// The timeout last logged, and last handed to its connections.
    timeout_told: Duration,
    timeout_sent: Duration,
    /// Above `rtt_alert` (until it falls below four fifths of it).
    slow: bool,
    /// Taken out of the configuration by a reload: no new connections, no conditions.
    removed: bool,
}

/// A pool's endpoints as configured: (url, backup, weight), primaries first.
fn wanted_endpoints(cfg: &PoolConfig) -> Vec<(String, bool, u32)> {
    cfg.endpoints
        .iter()
        .zip(cfg.weights.iter().chain(std::iter::repeat(&1)))
        .map(|(e, w)| (e.url.clone(), false, *w))
        .chain(cfg.backup.iter().map(|e| (e.url.clone(), true, 1)))
        .collect()
}

impl EndpointSlot {
    fn new(cfg: &PoolConfig, url: String, backup: bool, weight: u32, now: Instant) -> EndpointSlot {
        EndpointSlot {
            url,
            backup,
            weight,
            returned: None,
            health: Health::new(
                cfg.down_after,
                Backoff::new(cfg.backoff_base, cfg.backoff_max),
                cfg.backoff_reset,
                now,
            ),
            connecting: 0,
            connected: 0,
            flap: Penalty::new(now),
            srtt: None,
            rttvar: Duration::ZERO,
            timeout: cfg.heartbeat_timeout,
            timeout_told: cfg.heartbeat_timeout,
            timeout_sent: cfg.heartbeat_timeout,
            slow: false,
            removed: false,
        }
    }

    /// Up and not damped: new connections may go here.
    fn in_rotation(&self) -> bool {
        self.health.state() == State::Up && !self.flap.damped() && !self.removed
    }
}

#[derive(Debug, Clone)]
struct Conn {
    endpoint: usize,
    started: Instant,
    connected: bool,
    /// Passed at least one heartbeat.
    proven: bool,
    /// Opened to an endpoint out of rotation to see whether it is back; it counts
    /// toward `min`, and may be retired as surplus, only once it has passed a
    /// heartbeat (and with it brought the endpoint back).
    probe: bool,
    retiring: bool,
    /// The client it serves, if any.
    leased: Option<SessionId>,
}

impl Conn {
    /// A probe that has not yet passed a heartbeat: the endpoint's way back, so it is
    /// neither counted toward `min` nor retired as surplus.
    fn on_trial(&self) -> bool {
        self.probe && !self.proven
    }
}

/// An endpoint as the status page shows it.
#[derive(Debug, Clone)]
pub struct EndpointView {
    pub url: String,
    pub backup: bool,
    pub state: State,
    /// When it left rotation; `None` while up.
    pub out_since: Option<Instant>,
    pub damped: bool,
    pub srtt: Option<Duration>,
    pub timeout: Duration,
    pub connecting: u64,
    pub idle: u64,
    pub leased: u64,
    pub retiring: u64,
}

/// One pool's state, owned by the monitor.
#[derive(Debug)]
pub struct Pool {
    name: String,
    min: usize,
    max: usize,
    spare: usize,
    lease_timeout: Duration,
    heal_timeout: Duration,
    idle_timeout: Duration,
    slow_start: Duration,
    rtt_alert: Duration,
    /// Bounds of the adaptive heartbeat timeout (equal: no adaptation).
    timeout_bounds: (Duration, Duration),
    damping: Damping,
    /// The highest recent demand (leased + waiting + spare) and until when it holds:
    /// the pool shrinks only after demand stayed below it for `idle_timeout`.
    peak: usize,
    peak_until: Instant,
    /// Clients waiting for a connection: sessions healing first, then new clients,
    /// each oldest first.
    waiting: VecDeque<Waiter>,
    max_connecting: u32,
    grace: Duration,
    warmup: Duration,
    endpoints: Vec<EndpointSlot>,
    conns: BTreeMap<ConnId, Conn>,
    next_id: ConnId,
    started: Instant,
    warm: bool,
    below_since: Option<Instant>,
    reported: Condition,
    last_healthy: usize,
    rng: Rng,
    /// Structured records for the demo and tests, drained by the monitor.
    observations: Vec<Observation>,
}

impl Pool {
    /// `index` keeps connection ids unique across pools.
    pub fn new(cfg: &PoolConfig, grace: Duration, index: usize, now: Instant, rng: Rng) -> Pool {
        let endpoints = wanted_endpoints(cfg)
            .into_iter()
            .map(|(url, backup, weight)| EndpointSlot::new(cfg, url, backup, weight, now))
            .collect();
        Pool {
            name: cfg.name.clone(),
            min: cfg.min,
            max: cfg.max,
            spare: cfg.spare,
            lease_timeout: cfg.lease_timeout,
            heal_timeout: cfg.heal_timeout,
            idle_timeout: cfg.idle_timeout,
            slow_start: cfg.slow_start,
            rtt_alert: cfg.rtt_alert,
            timeout_bounds: (cfg.heartbeat_timeout_min, cfg.heartbeat_timeout),
            damping: Damping {
                half_life: cfg.flap_half_life,
                suppress: f64::from(cfg.flap_suppress),
                reuse: f64::from(cfg.flap_reuse),
            },
            peak: 0,
            peak_until: now,
            waiting: VecDeque::new(),
            max_connecting: cfg.max_connecting.min(u32::MAX as usize) as u32,
            grace,
            warmup: cfg.connect_timeout + grace,
            endpoints,
            conns: BTreeMap::new(),
            next_id: ((index as u64) << 40) + 1,
            started: now,
            warm: false,
            below_since: None,
            reported: Condition::Ok,
            last_healthy: 0,
            rng,
            observations: Vec::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Connections that finished their handshake and have not died.
    pub fn healthy(&self) -> usize {
        self.conns
            .values()
            .filter(|c| c.connected && !c.retiring && !c.on_trial())
            .count()
    }

    pub fn connecting(&self) -> usize {
        self.conns.values().filter(|c| !c.connected).count()
    }

    pub fn min(&self) -> usize {
        self.min
    }

    pub fn condition(&self) -> Condition {
        self.reported
    }

    /// Endpoint slots, removed ones included.
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }

    pub fn endpoint_url(&self, endpoint: usize) -> &str {
        &self.endpoints[endpoint].url
    }

    /// The heartbeat timeout of an endpoint's connections now.
    pub fn heartbeat_timeout(&self, endpoint: usize) -> Duration {
        self.endpoints[endpoint].timeout
    }

    /// Whether heartbeat timeouts adapt (`heartbeat_timeout_min` below
    /// `heartbeat_timeout`).
    pub fn adaptive_timeouts(&self) -> bool {
        self.timeout_bounds.0 < self.timeout_bounds.1
    }

    pub fn endpoint_state(&self, endpoint: usize) -> State {
        self.endpoints[endpoint].health.state()
    }

    /// Which endpoint a live connection belongs to.
    pub fn endpoint_of(&self, id: ConnId) -> Option<usize> {
        self.conns.get(&id).map(|c| c.endpoint)
    }

    pub fn conn_ids(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.conns.keys().copied()
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Sessions on a connection of the pool or waiting to heal onto one.
    pub fn sessions(&self) -> usize {
        self.leased() + self.waiting.iter().filter(|w| w.heal).count()
    }

    /// Each endpoint as the status page shows it, in the pool's order.
    pub fn endpoint_views(&self) -> Vec<EndpointView> {
        let mut views: Vec<EndpointView> = self
            .endpoints
            .iter()
            .map(|slot| EndpointView {
                url: slot.url.clone(),
                backup: slot.backup,
                state: slot.health.state(),
                out_since: slot.health.out_since(),
                damped: slot.flap.damped(),
                srtt: slot.srtt,
                timeout: slot.timeout,
                connecting: 0,
                idle: 0,
                leased: 0,
                retiring: 0,
            })
            .collect();
        for conn in self.conns.values() {
            let view = &mut views[conn.endpoint];
            let count = if conn.retiring {
                &mut view.retiring
            } else if !conn.connected {
                &mut view.connecting
            } else if conn.leased.is_some() {
                &mut view.leased
            } else {
                &mut view.idle
            };
            *count += 1;
        }
        views
    }

    pub fn take_observations(&mut self) -> Vec<Observation> {
        std::mem::take(&mut self.observations)
    }

    /// Open the first connections.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        self.fill(now, &mut actions);
        actions
    }

    /// Apply a worker's report.
    pub fn on_event(&mut self, event: &Event, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        match event {
            Event::Connected { id, .. } => self.connected(*id, now),
            Event::Heartbeat {
                id,
                sent,
                rtt: Some(rtt),
            } => {
                if !self.heartbeat(*id, *sent, *rtt, now, &mut actions) {
                    // Nothing changed: spare the pass over every connection.
                    return actions;
                }
            }
            Event::Heartbeat { rtt: None, .. } => return actions,
            Event::SessionEnded {
                id,
                session,
                code,
                why,
                kept,
            } => {
                if let Some(conn) = self.conns.get_mut(id) {
                    conn.leased = None;
                    if conn.retiring && *kept {
                        // Kept for reuse, but a reload retired it meanwhile.
                        actions.push(Action::Command(
                            *id,
                            Command::Close(1000, "retired by a configuration reload".into()),
                        ));
                    }
                    conn.retiring |= !kept;
                }
                let then = if *kept {
                    "; its connection is kept for the next client"
                } else {
                    ""
                };
                actions.push(Action::Notice(
                    Notice::new(
                        Severity::Info,
                        format!("session {session} ended ({code}): {why}{then}"),
                    )
                    .pool(&self.name),
                ));
            }
            Event::Died {
                id,
                cause,
                at,
                last_life,
                client,
            } => {
                self.died(*id, cause, *at, *last_life, now, &mut actions);
                if let Some(client) = client {
                    self.wait_for_heal(client.session, now);
                }
            }
        }
        self.after_change(now, &mut actions);
        actions
    }

    /// Timers: backoff expiry, grace periods, warm-up, failback.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        for slot in &mut self.endpoints {
            slot.health.tick(now);
            if slot.flap.release(&self.damping, now) {
                let text = format!(
                    "endpoint no longer damped: its flap penalty fell below flap_reuse {}; back in rotation",
                    self.damping.reuse
                );
                actions.push(Action::Notice(
                    Notice::new(Severity::Info, text)
                        .pool(&self.name)
                        .endpoint(&slot.url),
                ));
            }
        }
        self.after_change(now, &mut actions);
        actions
    }

    /// A client asks for a connection: attached to an idle one now, or queued (and the
    /// pool grown, up to `max`) until one is idle or `lease_timeout` passes.
    pub fn lease(&mut self, session: SessionId, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        self.waiting.push_back(Waiter {
            session,
            deadline: now + self.lease_timeout,
            heal: false,
        });
        self.after_change(now, &mut actions);
        actions
    }

    /// A session lost its connection (or never reached the one it was given): it
    /// moves to an idle connection now, or waits ahead of new clients, with the pool
    /// grown for it, until `heal_timeout`.
    pub fn heal(&mut self, session: SessionId, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        self.wait_for_heal(session, now);
        self.after_change(now, &mut actions);
        actions
    }

    fn wait_for_heal(&mut self, session: SessionId, now: Instant) {
        let at = self.waiting.iter().take_while(|w| w.heal).count();
        self.waiting.insert(
            at,
            Waiter {
                session,
                deadline: now + self.heal_timeout,
                heal: true,
            },
        );
    }

    /// A session ended while it was not on a connection (it left while healing): stop
    /// waiting for it, and free a connection promised to it.
    pub fn forget(&mut self, session: SessionId, now: Instant) -> Vec<Action> {
        self.waiting.retain(|w| w.session != session);
        for conn in self.conns.values_mut() {
            if conn.leased == Some(session) {
                conn.leased = None;
            }
        }
        let mut actions = Vec::new();
        self.after_change(now, &mut actions);
        actions
    }

    /// Connections serving a client.
    pub fn leased(&self) -> usize {
        self.conns.values().filter(|c| c.leased.is_some()).count()
    }

    /// Clients waiting for a connection.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// How many connections the pool wants now: `min`, or every leased and waiting
    /// client plus `spare` idle ones, at most `max`.
    fn target(&self) -> usize {
        let demand = self.demand().max(self.peak);
        self.min.max(demand.min(self.max))
    }

    fn demand(&self) -> usize {
        self.leased() + self.waiting.len() + self.spare
    }

    /// Hold the peak of demand for `idle_timeout` after it was last reached.
    fn track_peak(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let demand = self.demand();
        if demand >= self.peak || now >= self.peak_until {
            if demand < self.peak {
                let text = format!(
                    "load fell from {} to {demand} connection(s) {} ago: closing idle connections above {}",
                    self.peak.min(self.max),
                    human(self.idle_timeout),
                    self.min.max(demand.min(self.max))
                );
                actions.push(Action::Notice(
                    Notice::new(Severity::Info, text).pool(&self.name),
                ));
            }
            self.peak = demand;
            self.peak_until = now + self.idle_timeout;
        }
    }

    /// An idle connection for a client: proven by its first heartbeat (so whatever
    /// the upstream answered to `on_connect` came before the pong, and went to no
    /// client), free, on an endpoint in rotation if there is one.
    fn idle_conn(&self) -> Option<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| c.proven && !c.retiring && c.leased.is_none())
            .max_by_key(|(id, c)| {
                let up = self.endpoints[c.endpoint].health.state() == State::Up;
                (up, std::cmp::Reverse(**id))
            })
            .map(|(id, _)| *id)
    }

    /// Turn away clients whose wait is over; attach the others to idle connections.
    fn serve_waiting(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let mut expired = Vec::new();
        self.waiting.retain(|w| {
            let over = now >= w.deadline;
            if over {
                expired.push(*w);
            }
            !over
        });
        for Waiter { session, heal, .. } in expired {
            let (code, reason, text) = if heal {
                let reason = format!(
                    "session could not be healed within heal_timeout ({}): no healthy connection",
                    human(self.heal_timeout)
                );
                let text = format!("session {session} closed with 1011: {reason}");
                (1011, reason, text)
            } else {
                let reason = format!(
                    "no connection available within {}",
                    human(self.lease_timeout)
                );
                let text = format!(
                    "session {session} refused with 1013: {reason} (pool at max {})",
                    self.max
                );
                (1013, reason, text)
            };
            actions.push(Action::Notice(
                Notice::new(Severity::Warning, text).pool(&self.name),
            ));
            actions.push(Action::Reject {
                session,
                code,
                reason,
            });
        }
        while !self.waiting.is_empty() {
            let Some(conn) = self.idle_conn() else {
                break;
            };
            let Waiter { session, .. } = self.waiting.pop_front().expect("not empty");
            if let Some(c) = self.conns.get_mut(&conn) {
                c.leased = Some(session);
            }
            actions.push(Action::Attach { conn, session });
        }
    }

    /// The monitor could not start the worker for `id` (a daemon-wide bound was hit).
    pub fn spawn_refused(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.remove(&id) {
            self.endpoints[conn.endpoint].connecting -= 1;
        }
    }

    /// A reload's `[alerts] grace`; the warm-up window moves with it.
    pub fn set_grace(&mut self, grace: Duration) {
        self.warmup = self.warmup.saturating_sub(self.grace) + grace;
        self.grace = grace;
    }

    /// Take a reloaded configuration. Settings the pool alone uses apply at once.
    /// Endpoints are matched by URL: new ones join, removed ones take no new
    /// connections. Connections whose worker would now be built differently
    /// (`replace_all`, or their endpoint removed) are replaced: idle ones are closed
    /// now, leased ones when their session ends; their replacements are opened first.
    pub fn reconfigure(
        &mut self,
        cfg: &PoolConfig,
        replace_all: bool,
        now: Instant,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        self.min = cfg.min;
        self.max = cfg.max;
        self.spare = cfg.spare;
        self.lease_timeout = cfg.lease_timeout;
        self.heal_timeout = cfg.heal_timeout;
        self.idle_timeout = cfg.idle_timeout;
        self.slow_start = cfg.slow_start;
        self.rtt_alert = cfg.rtt_alert;
        self.timeout_bounds = (cfg.heartbeat_timeout_min, cfg.heartbeat_timeout);
        self.damping = Damping {
            half_life: cfg.flap_half_life,
            suppress: f64::from(cfg.flap_suppress),
            reuse: f64::from(cfg.flap_reuse),
        };
        self.max_connecting = cfg.max_connecting.min(u32::MAX as usize) as u32;
        self.warmup = cfg.connect_timeout + self.grace;
        let wanted = wanted_endpoints(cfg);
        for slot in &mut self.endpoints {
            slot.removed = !wanted.iter().any(|(url, ..)| *url == slot.url);
        }
        for (url, backup, weight) in wanted {
            let slot = match self.endpoints.iter_mut().find(|s| s.url == url) {
                Some(slot) => slot,
                None => {
                    self.endpoints
                        .push(EndpointSlot::new(cfg, url.clone(), backup, weight, now));
                    self.endpoints.last_mut().expect("just pushed")
                }
            };
            slot.backup = backup;
            slot.weight = weight;
            slot.health.retune(
                cfg.down_after,
                Backoff::new(cfg.backoff_base, cfg.backoff_max),
                cfg.backoff_reset,
            );
        }
        // Timeouts within the new bounds, handed to the connections at once.
        let (low, high) = self.timeout_bounds;
        for index in 0..self.endpoints.len() {
            let slot = &mut self.endpoints[index];
            let timeout = slot.timeout.clamp(low, high);
            let timeout = if low == high { high } else { timeout };
            slot.timeout = timeout;
            if timeout != slot.timeout_sent {
                slot.timeout_sent = timeout;
                for (id, conn) in &self.conns {
                    if conn.endpoint == index && !conn.retiring {
                        actions.push(Action::Command(*id, Command::HeartbeatTimeout(timeout)));
                    }
                }
            }
        }
        let mut replaced = 0;
        for (id, conn) in &mut self.conns {
            if conn.retiring || !(replace_all || self.endpoints[conn.endpoint].removed) {
                continue;
            }
            conn.retiring = true;
            replaced += 1;
            if conn.leased.is_none() {
                actions.push(Action::Command(
                    *id,
                    Command::Close(1000, "retired by a configuration reload".into()),
                ));
            }
        }
        if replaced > 0 {
            let why = if replace_all {
                "the settings its connections are built with changed"
            } else {
                "endpoints were removed"
            };
            let text = format!(
                "reload: replacing {replaced} connection(s), {why}; sessions on them keep their connection until they end"
            );
            actions.push(Action::Notice(
                Notice::new(Severity::Info, text).pool(&self.name),
            ));
        }
        self.after_change(now, &mut actions);
        actions
    }

    /// The pool was removed by a reload: open nothing more, close idle connections
    /// now, turn away clients still waiting for a first connection (1001). Sessions
    /// keep their connections until they end or the monitor closes them.
    pub fn drain(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        self.min = 0;
        self.spare = 0;
        self.max = 0;
        for slot in &mut self.endpoints {
            slot.removed = true;
        }
        for (id, conn) in &mut self.conns {
            if conn.leased.is_none() && !conn.retiring {
                conn.retiring = true;
                actions.push(Action::Command(
                    *id,
                    Command::Close(1001, "pool removed from the configuration".into()),
                ));
            }
        }
        let reason = "pool removed from the configuration".to_string();
        self.waiting.retain(|w| {
            if w.heal {
                return true;
            }
            actions.push(Action::Reject {
                session: w.session,
                code: 1001,
                reason: reason.clone(),
            });
            false
        });
        self.after_change(now, &mut actions);
        actions
    }

    /// Nothing left: no connection, no client waiting.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty() && self.waiting.is_empty()
    }

    /// Close every connection (shutdown or pool removal).
    pub fn close_all(&mut self, code: u16, reason: &str) -> Vec<Action> {
        self.conns
            .iter_mut()
            .map(|(id, conn)| {
                conn.retiring = true;
                Action::Command(*id, Command::Close(code, reason.to_string()))
            })
            .collect()
    }

    /// The earliest moment `tick` may have something to do. Deadlines already acted on
    /// are left out; the monitor also ignores any at or before its last tick.
    pub fn next_wake(&self) -> Option<Instant> {
        let attempts = self
            .endpoints
            .iter()
            .filter(|slot| slot.connecting == 0)
            .filter_map(|slot| slot.health.next_attempt());
        let grace = self
            .below_since
            .filter(|_| self.warm && self.reported == Condition::Ok)
            .map(|since| since + self.grace);
        let warmup = (!self.warm).then_some(self.started + self.warmup);
        let lease = self.waiting.iter().map(|w| w.deadline).min();
        let shrink = (self.peak > self.demand()).then_some(self.peak_until);
        let release = self
            .endpoints
            .iter()
            .filter_map(|slot| slot.flap.release_at(&self.damping));
        attempts
            .chain(release)
            .chain(grace)
            .chain(warmup)
            .chain(lease)
            .chain(shrink)
            .min()
    }

    fn connected(&mut self, id: ConnId, now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.connected {
            return;
        }
        conn.connected = true;
        let slot = &mut self.endpoints[conn.endpoint];
        slot.connecting -= 1;
        slot.connected += 1;
        self.observations.push(Observation::Connected {
            pool: self.name.clone(),
            endpoint: slot.url.clone(),
            id,
            at: now,
        });
    }

    /// Returns whether anything changed: the connection proved itself for the first
    /// time (it can now take a client), or its endpoint changed state.
    fn heartbeat(
        &mut self,
        id: ConnId,
        sent: Instant,
        rtt: Duration,
        now: Instant,
        actions: &mut Vec<Action>,
    ) -> bool {
        let Some(conn) = self.conns.get_mut(&id) else {
            return false;
        };
        let first = !std::mem::replace(&mut conn.proven, true);
        let endpoint = conn.endpoint;
        self.round_trip(endpoint, rtt, actions);
        let slot = &mut self.endpoints[endpoint];
        if let Some(Transition::Up { from, since }) = slot.health.passed_heartbeat(sent, now) {
            let text = match from {
                State::Suspect => format!(
                    "endpoint trusted again: a connection answered a heartbeat in {} after it was suspect for {}",
                    human(rtt),
                    human(now.saturating_duration_since(since))
                ),
                _ => {
                    let ramp = if self.slow_start.is_zero() {
                        String::new()
                    } else {
                        slot.returned = Some(now);
                        format!(
                            ", its share of new connections ramping up over {}",
                            human(self.slow_start)
                        )
                    };
                    format!(
                        "endpoint back up: probe passed a heartbeat in {} after {} down; back in rotation{ramp}",
                        human(rtt),
                        human(now.saturating_duration_since(since))
                    )
                }
            };
            let severity = Severity::Info;
            actions.push(Action::Notice(
                Notice::new(severity, text)
                    .pool(&self.name)
                    .endpoint(&slot.url),
            ));
            return true;
        }
        first
    }

    /// Fold a heartbeat's round trip into its endpoint's smoothed figures (as TCP keeps
    /// them, RFC 6298), mark it slow above `rtt_alert`, and adapt its heartbeat
    /// timeout: four round trips, or the round trip plus four variations, whichever is
    /// longer (a pong late by that much is not just jitter), within the bounds. The
    /// endpoint's connections are told when it moves by a tenth (before the log line,
    /// which follows when it halves or doubles).
    fn round_trip(&mut self, endpoint: usize, rtt: Duration, actions: &mut Vec<Action>) {
        let slot = &mut self.endpoints[endpoint];
        let srtt = match slot.srtt {
            None => {
                slot.rttvar = rtt / 2;
                rtt
            }
            Some(old) => {
                slot.rttvar = (slot.rttvar * 3 + old.abs_diff(rtt)) / 4;
                (old * 7 + rtt) / 8
            }
        };
        slot.srtt = Some(srtt);
        if !self.rtt_alert.is_zero() {
            if srtt > self.rtt_alert {
                slot.slow = true;
            } else if srtt < self.rtt_alert * 4 / 5 {
                slot.slow = false;
            }
        }
        let (low, high) = self.timeout_bounds;
        if low >= high {
            return;
        }
        let timeout = (srtt * 4).max(srtt + slot.rttvar * 4).clamp(low, high);
        slot.timeout = timeout;
        let ratio = |of: Duration| timeout.as_secs_f64() / of.as_secs_f64().max(1e-9);
        if !(0.9..1.1).contains(&ratio(slot.timeout_sent)) {
            slot.timeout_sent = timeout;
            for (id, c) in &self.conns {
                if c.endpoint == endpoint && !c.retiring {
                    actions.push(Action::Command(*id, Command::HeartbeatTimeout(timeout)));
                }
            }
        }
        if !(0.5..2.0).contains(&ratio(slot.timeout_told)) {
            slot.timeout_told = timeout;
            let text = format!(
                "heartbeat timeout adapted to {} (round trip {} smoothed, variation {}; bounds {} to {})",
                human(timeout),
                human(srtt),
                human(slot.rttvar),
                human(low),
                human(high)
            );
            actions.push(Action::Notice(
                Notice::new(Severity::Info, text)
                    .pool(&self.name)
                    .endpoint(&slot.url),
            ));
        }
    }

    fn died(
        &mut self,
        id: ConnId,
        cause: &Cause,
        at: Instant,
        last_life: Option<Instant>,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        let index = conn.endpoint;
        {
            let slot = &mut self.endpoints[index];
            if conn.connected {
                slot.connected -= 1;
            } else {
                slot.connecting -= 1;
            }
        }
        self.observations.push(Observation::Died {
            pool: self.name.clone(),
            endpoint: self.endpoints[index].url.clone(),
            id,
            cause: cause.clone(),
            at,
            last_life,
        });
        if conn.retiring || *cause == Cause::Retired {
            if conn.on_trial() {
                // Closed by us before it could prove anything: the endpoint is not
                // judged by it, but it must not stay waiting for this probe.
                self.endpoints[index].health.abandoned(now);
            }
            return;
        }
        // A connection that never proved itself, or that died of a sick path, counts
        // against its endpoint; an upstream that closes a healthy connection does not.
        let counts = cause.is_connect_failure()
            || cause.suspects_endpoint()
            || matches!(cause, Cause::Protocol(_))
            || !conn.proven;
        let before = self.endpoints[index].health.state();
        let health = &mut self.endpoints[index].health;
        let transition = if !counts {
            None
        } else if conn.connected && !conn.on_trial() {
            health.lost(cause, now, &mut self.rng)
        } else {
            health.failed(cause, now, &mut self.rng)
        };
        let what = if conn.connected {
            format!(
                "connection {id} died after {}: {cause}",
                human(now.saturating_duration_since(conn.started))
            )
        } else {
            format!("connect attempt {id} failed: {cause}")
        };
        let url = self.endpoints[index].url.clone();
        if before == State::Up && matches!(transition, Some(Transition::Suspect | Transition::Down))
        {
            self.flapped(index, now, actions);
        }
        match transition {
            Some(Transition::Suspect) => {
                let pinged = match self.ping_endpoint(index, actions) {
                    0 => String::new(),
                    n => format!("pinging its {n} other connection(s) now; "),
                };
                let text = format!(
                    "endpoint suspect: {what}; {pinged}replacements go to {}",
                    self.elsewhere(index)
                );
                actions.push(Action::Notice(
                    Notice::new(Severity::Info, text)
                        .pool(&self.name)
                        .endpoint(&url),
                ));
            }
            Some(Transition::Down) => {
                let health = &self.endpoints[index].health;
                let retry = health
                    .next_attempt()
                    .map(|t| human(t.saturating_duration_since(now)))
                    .unwrap_or_default();
                let text = format!(
                    "endpoint down after {} consecutive failures (last: {what}); new connections go to {}; next probe in {retry}",
                    health.failures(),
                    self.elsewhere(index)
                );
                // The incident this opens carries the severity.
                actions.push(Action::Notice(
                    Notice::new(Severity::Info, text)
                        .pool(&self.name)
                        .endpoint(&url),
                ));
            }
            Some(Transition::Up { .. }) => {}
            // Deaths on an endpoint already out of rotation are folded into its state
            // change; they are counted, not logged one by one.
            None if before == State::Up => {
                let text = format!("{what}; replacing it");
                actions.push(Action::Notice(
                    Notice::new(Severity::Info, text)
                        .pool(&self.name)
                        .endpoint(&url),
                ));
            }
            None => {}
        }
    }

    /// The endpoint left rotation: its flap penalty grows, and past `flap_suppress` it
    /// is damped.
    fn flapped(&mut self, index: usize, now: Instant, actions: &mut Vec<Action>) {
        let slot = &mut self.endpoints[index];
        if !slot.flap.flap(&self.damping, now) {
            return;
        }
        let release = slot
            .flap
            .release_at(&self.damping)
            .map(|t| human(t.saturating_duration_since(now)))
            .unwrap_or_default();
        let text = format!(
            "endpoint damped: it left rotation {} times (penalty {:.1}, flap_suppress {}); new connections avoid it while another endpoint can serve, for about {release}",
            slot.flap.flaps(),
            slot.flap.value(&self.damping, now),
            self.damping.suppress
        );
        let url = slot.url.clone();
        actions.push(Action::Notice(
            Notice::new(Severity::Info, text)
                .pool(&self.name)
                .endpoint(&url),
        ));
    }

    /// Ask every connected worker of an endpoint to prove itself now.
    fn ping_endpoint(&self, index: usize, actions: &mut Vec<Action>) -> usize {
        let mut n = 0;
        for (id, conn) in &self.conns {
            if conn.endpoint == index && conn.connected && !conn.retiring {
                actions.push(Action::Command(*id, Command::PingNow));
                n += 1;
            }
        }
        n
    }

    /// Where replacements go while `index` is out of rotation, for log lines.
    fn elsewhere(&self, index: usize) -> String {
        let up: Vec<&str> = self
            .endpoints
            .iter()
            .enumerate()
            .filter(|(i, s)| *i != index && s.in_rotation())
            .filter(|(_, s)| !s.backup || !self.primary_up())
            .map(|(_, s)| s.url.as_str())
            .collect();
        if up.is_empty() {
            "no endpoint: none is up".to_string()
        } else {
            up.join(", ")
        }
    }

    /// A primary is in rotation.
    fn primary_up(&self) -> bool {
        self.endpoints.iter().any(|s| !s.backup && s.in_rotation())
    }

    /// The endpoint for the next connection: the least loaded primary in rotation, else
    /// the least loaded backup in rotation, else a damped endpoint that is up, else an
    /// endpoint whose backoff allows an attempt (primaries first). At most
    /// `max_connecting` dials per endpoint.
    fn choose(&self, now: Instant) -> Option<usize> {
        let least_loaded = |usable: &dyn Fn(&EndpointSlot) -> bool| {
            self.endpoints
                .iter()
                .enumerate()
                .filter(|(_, s)| usable(s) && s.connecting < self.max_connecting)
                .map(|(i, s)| (i, self.load(s, now)))
                .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
                .map(|(i, _)| i)
        };
        // An endpoint in rotation whose dials are all in flight means waiting for
        // them, not spilling onto backups or endpoints out of rotation.
        if self.primary_up() {
            return least_loaded(&|s| !s.backup && s.in_rotation());
        }
        if self.endpoints.iter().any(EndpointSlot::in_rotation) {
            return least_loaded(&|s| s.backup && s.in_rotation());
        }
        // Only damped endpoints are up: a flapping connection beats none.
        let up_damped = |s: &EndpointSlot| s.health.state() == State::Up && !s.removed;
        if self.endpoints.iter().any(up_damped) {
            return least_loaded(&up_damped);
        }
        self.endpoints
            .iter()
            .position(|s| !s.removed && s.health.may_attempt(now, s.connecting))
    }

    /// An endpoint's load if it took one more connection, against its share: its
    /// weight, scaled down while it ramps up after coming back (never below a tenth),
    /// and by its recent record (its flap penalty).
    fn load(&self, slot: &EndpointSlot, now: Instant) -> f64 {
        let mut weight = f64::from(slot.weight) / (1.0 + slot.flap.value(&self.damping, now));
        if let Some(back) = slot.returned {
            let ramp = now.saturating_duration_since(back).as_secs_f64()
                / self.slow_start.as_secs_f64().max(1e-9);
            weight *= ramp.clamp(0.1, 1.0);
        }
        f64::from(slot.connected + slot.connecting + 1) / weight
    }

    fn spawn(&mut self, endpoint: usize, now: Instant, actions: &mut Vec<Action>) {
        let id = self.next_id;
        self.next_id += 1;
        let slot = &mut self.endpoints[endpoint];
        let probe = slot.health.state() != State::Up;
        slot.health.attempting(now);
        slot.connecting += 1;
        self.conns.insert(
            id,
            Conn {
                endpoint,
                started: now,
                connected: false,
                proven: false,
                probe,
                retiring: false,
                leased: None,
            },
        );
        actions.push(Action::Spawn { id, endpoint });
    }

    /// Connections that count toward `min`: not retiring, and not probes still on
    /// trial.
    fn live(&self) -> usize {
        self.conns
            .values()
            .filter(|c| !c.retiring && !c.on_trial())
            .count()
    }

    /// Keep `min` connections; while connections sit on backups and a primary is up, run
    /// one over `min` so a backup connection can be retired once the primary one is up
    /// (failback without dipping below `min`).
    fn fill(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let on_backup = self
            .conns
            .values()
            .any(|c| !c.retiring && self.endpoints[c.endpoint].backup);
        let target = self.target() + usize::from(on_backup && self.primary_up());
        while self.live() < target {
            let Some(endpoint) = self.choose(now) else {
                break;
            };
            self.spawn(endpoint, now, actions);
        }
        // Probe primaries that are out of rotation even while the pool is full, so they
        // can come back; the surplus is trimmed once they do.
        for index in 0..self.endpoints.len() {
            let slot = &self.endpoints[index];
            if !slot.backup
                && !slot.removed
                && slot.health.state() != State::Up
                && slot.health.may_attempt(now, slot.connecting)
            {
                self.spawn(index, now, actions);
            }
        }
    }

    /// Retire one surplus connection at a time, once nothing is connecting: backups
    /// first while a primary is up, then the busiest endpoint.
    fn trim(&mut self, actions: &mut Vec<Action>) {
        if self.connecting() > 0 || self.live() <= self.target() {
            return;
        }
        let primary_up = self.primary_up();
        let victim = self
            .conns
            .iter()
            .filter(|(_, c)| c.connected && !c.retiring && c.leased.is_none() && !c.on_trial())
            .max_by_key(|(id, c)| {
                let slot = &self.endpoints[c.endpoint];
                (
                    slot.backup && primary_up,
                    !slot.in_rotation(),
                    slot.connected,
                    **id,
                )
            })
            .map(|(id, _)| *id);
        if let Some(id) = victim
            && let Some(conn) = self.conns.get_mut(&id)
        {
            conn.retiring = true;
            actions.push(Action::Command(
                id,
                Command::Close(1000, "surplus connection".to_string()),
            ));
        }
    }

    fn after_change(&mut self, now: Instant, actions: &mut Vec<Action>) {
        self.serve_waiting(now, actions);
        self.track_peak(now, actions);
        self.fill(now, actions);
        self.trim(actions);
        self.assess(now, actions);
    }

    /// Follow the pool's health: warm-up (never an alert), then how long it has been
    /// below `min`; past the grace period that is a condition of the pool's incident
    /// (see `conditions`).
    fn assess(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let healthy = self.healthy();
        if healthy != self.last_healthy {
            self.last_healthy = healthy;
            self.observations.push(Observation::Health {
                pool: self.name.clone(),
                healthy,
                min: self.min,
                at: now,
            });
        }
        if !self.warm {
            if healthy >= self.min {
                self.warm = true;
                let text = format!(
                    "pool warm: {healthy}/{} connections up in {}",
                    self.min,
                    human(now.saturating_duration_since(self.started))
                );
                actions.push(Action::Notice(
                    Notice::new(Severity::Info, text).pool(&self.name),
                ));
            } else if now >= self.started + self.warmup {
                self.warm = true;
                self.below_since = Some(self.started);
            } else {
                return;
            }
        }
        if healthy >= self.min {
            self.below_since = None;
            self.reported = Condition::Ok;
            return;
        }
        let since = *self.below_since.get_or_insert(now);
        if now.saturating_duration_since(since) < self.grace {
            return;
        }
        // The incident this feeds (conditions()) tells the operator.
        self.reported = if healthy == 0 {
            Condition::Down
        } else {
            Condition::Degraded
        };
    }
}

#[path = "pool_conditions.rs"]
mod conditions;

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
