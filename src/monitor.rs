//! The monitor: the one thread that decides. It owns every pool's state, consumes
//! worker events, control messages and its own timers with `select!`, applies the pure
//! pools' decisions (spawn workers, command them, raise notices), replaces workers that
//! stopped making progress, and shuts everything down in order.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender, select};

use crate::admin::Published;
use crate::alert::Alerts;
use crate::backoff::Rng;
use crate::config::{Config, Endpoint, PoolConfig};
use crate::event::{
    Cause, Client, Command, ConnId, Control, Event, Notice, Observation, SessionId, Severity,
    ToWorker,
};
use crate::incident::{self, Tracker};
use crate::journal::Record;
use crate::listener::Routes;
use crate::metrics::{Counts, EndpointStats};
use crate::notify::Notifier;
use crate::pool::{Action, Pool};
use crate::room::{Room, RoomCommand, RoomEvent};
use crate::upstream;
use crate::worker::{self, Shared, Wake, Worker};

/// The longest the monitor sleeps without looking at its timers and workers.
const TICK: Duration = Duration::from_millis(250);
/// How long shutdown waits for workers to finish their closing handshakes.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(4);
/// How often the monitor publishes its snapshot for the admin endpoint.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// Worker events waiting for the monitor.
pub const EVENT_QUEUE: usize = 65_536;

struct Handle {
    pool: usize,
    commands: Sender<ToWorker>,
    /// The monitor's own end of the worker's queue: what the worker never read (a
    /// client sent just as it died) is taken back from here.
    inbox: Receiver<ToWorker>,
    shared: Arc<Shared>,
    thread: JoinHandle<()>,
}

/// A session waiting on its own thread for a connection to heal onto.
struct RoomHandle {
    pool: usize,
    commands: Sender<RoomCommand>,
    wake: Arc<Wake>,
    thread: JoinHandle<()>,
    /// The connection the pool gave it, once released.
    bound: Option<ConnId>,
}

/// What happened to a pool's sessions, counted for the shutdown summary (and for
/// metrics).
#[derive(Debug, Default)]
pub struct SessionCounts {
    pub attached: u64,
    pub healed: u64,
    pub slowest_heal: Duration,
    pub heal_failed: u64,
    pub refused: u64,
    /// Sessions ended, by the close code they ended with.
    pub closed: std::collections::BTreeMap<u16, u64>,
}

impl SessionCounts {
    fn summary(&self) -> String {
        let closes = if self.closed.is_empty() {
            "none".to_string()
        } else {
            self.closed
                .iter()
                .map(|(code, n)| format!("{code}×{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "sessions: {} attached, {} healed (slowest {}), {} could not heal, {} refused (1013); ended by close code: {closes}",
            self.attached,
            self.healed,
            crate::event::human(self.slowest_heal),
            self.heal_failed,
            self.refused
        )
    }
}

/// One configured pool: its settings and its decision state.
struct PoolEntry {
    config: Arc<PoolConfig>,
    /// Per endpoint slot of the pool (a reload appends, never removes).
    endpoints: Vec<Endpoint>,
    tls: Arc<rustls::ClientConfig>,
    state: Pool,
    sessions: SessionCounts,
    incidents: Tracker,
    /// A worker silent this long is stuck.
    stuck_after: Duration,
    /// Per endpoint slot: what its workers count.
    stats: Vec<Arc<EndpointStats>>,
    /// Per endpoint URL: connection attempts by result, deaths by cause.
    connects: BTreeMap<String, BTreeMap<String, u64>>,
    deaths: BTreeMap<String, BTreeMap<String, u64>>,
    heal_seconds: Counts,
    /// Round-trip histograms per slot, sampled once a second for the last minute.
    rtt_window: VecDeque<(Instant, Vec<Counts>)>,
    /// Removed by a reload: its sessions are closed with 1001 at this moment.
    drain_until: Option<Instant>,
    /// Its deadline passed and what was left was told to close.
    drain_closed: bool,
    /// Removed and empty: kept only so that indexes stay stable.
    gone: bool,
}

impl PoolEntry {
    fn new(
        cfg: &PoolConfig,
        index: usize,
        config: &Config,
        now: Instant,
        rng: &mut Rng,
    ) -> PoolEntry {
        let settings = incident::Settings::from_alerts(&config.alerts);
        let endpoints: Vec<Endpoint> = cfg.endpoints.iter().chain(&cfg.backup).cloned().collect();
        PoolEntry {
            config: Arc::new(cfg.clone()),
            stats: endpoints.iter().map(|_| Arc::default()).collect(),
            endpoints,
            tls: upstream::tls_config(cfg.ca.as_ref()),
            state: Pool::new(
                cfg,
                config.alerts.grace,
                index,
                now,
                Rng::new(rng.next_u64()),
            ),
            sessions: SessionCounts::default(),
            incidents: Tracker::new(&cfg.name, settings, (now, SystemTime::now())),
            stuck_after: stuck_after(cfg),
            connects: BTreeMap::new(),
            deaths: BTreeMap::new(),
            heal_seconds: Counts::default(),
            rtt_window: VecDeque::new(),
            drain_until: None,
            drain_closed: false,
            gone: false,
        }
    }
}

/// A worker silent this long is stuck: twice the longest it may legitimately block,
/// plus a second.
fn stuck_after(cfg: &PoolConfig) -> Duration {
    2 * cfg
        .connect_timeout
        .max(cfg.heartbeat_interval + cfg.heartbeat_timeout + cfg.write_timeout)
        + Duration::from_secs(1)
}

/// Where the monitor reports besides alerts: the admin snapshot, systemd, the
/// listener's routes, and an observer for the demo and tests.
pub struct Outputs {
    pub alerts: Alerts,
    pub observer: Option<Sender<Observation>>,
    pub published: Arc<Published>,
    pub notifier: Option<Notifier>,
    pub routes: Arc<Routes>,
}

pub struct Monitor {
    pools: Vec<PoolEntry>,
    workers: HashMap<ConnId, Handle>,
    /// Workers given up on as stuck; joined at shutdown if they ever finish.
    abandoned: Vec<JoinHandle<()>>,
    events_tx: Sender<Event>,
    events: Receiver<Event>,
    control: Receiver<Control>,
    /// Local clients from the listener, and those waiting for a connection.
    clients: Receiver<Client>,
    /// Clients in hand without a connection: new ones waiting for a lease, and healing
    /// sessions on their way to an idle connection or a room.
    waiting: HashMap<SessionId, Client>,
    rooms: HashMap<SessionId, RoomHandle>,
    room_events_tx: Sender<RoomEvent>,
    room_events: Receiver<RoomEvent>,
    /// Rooms that released their client, joined once finished.
    closed_rooms: Vec<JoinHandle<()>>,
    alerts: Alerts,
    observer: Option<Sender<Observation>>,
    max_connections: usize,
    at_limit: bool,
    /// This machine's name, in incident records.
    host: String,
    /// The id of the next incident, continued from the journal.
    next_incident: u64,
    /// The configuration in force, to compare a reload with.
    config: Config,
    config_loaded: SystemTime,
    started: SystemTime,
    published: Arc<Published>,
    last_publish: Option<Instant>,
    notifier: Option<Notifier>,
    routes: Arc<Routes>,
    rng: Rng,
}

impl Monitor {
    /// `next_incident`: where incident ids continue (from the journal).
    pub fn new(
        config: &Config,
        control: Receiver<Control>,
        clients: Receiver<Client>,
        outputs: Outputs,
        next_incident: u64,
    ) -> Monitor {
        let now = Instant::now();
        let mut rng = Rng::from_entropy();
        let pools = config
            .pools
            .iter()
            .enumerate()
            .map(|(index, cfg)| PoolEntry::new(cfg, index, config, now, &mut rng))
            .collect();
        let (events_tx, events) = crossbeam_channel::bounded(EVENT_QUEUE);
        let (room_events_tx, room_events) = crossbeam_channel::unbounded();
        Monitor {
            pools,
            workers: HashMap::new(),
            abandoned: Vec::new(),
            events_tx,
            events,
            control,
            clients,
            waiting: HashMap::new(),
            rooms: HashMap::new(),
            room_events_tx,
            room_events,
            closed_rooms: Vec::new(),
            alerts: outputs.alerts,
            observer: outputs.observer,
            max_connections: config.daemon.max_connections,
            at_limit: false,
            host: hostname(),
            next_incident,
            config: config.clone(),
            config_loaded: SystemTime::now(),
            started: SystemTime::now(),
            published: outputs.published,
            last_publish: None,
            notifier: outputs.notifier,
            routes: outputs.routes,
            rng,
        }
    }

    pub fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("monitor".into())
            .spawn(move || self.run())
    }

    /// Run until told to shut down (or every control sender is gone).
    pub fn run(mut self) {
        let now = Instant::now();
        for index in 0..self.pools.len() {
            let actions = self.pools[index].state.start(now);
            self.apply(index, actions);
        }
        self.publish(now);
        if let Some(notifier) = &mut self.notifier {
            // The listener was bound before the monitor started.
            notifier.send("READY=1");
            notifier.watchdog(now);
        }
        let mut last_tick = now;
        loop {
            let now = Instant::now();
            let wake = self.next_wake(last_tick);
            select! {
                recv(self.events) -> event => {
                    if let Ok(event) = event {
                        self.on_event(event, Instant::now());
                    }
                }
                recv(self.room_events) -> event => {
                    if let Ok(event) = event {
                        self.on_room_event(event, Instant::now());
                    }
                }
                recv(self.clients) -> client => {
                    if let Ok(client) = client {
                        self.on_client(client, Instant::now());
                    }
                }
                recv(self.control) -> control => match control {
                    Ok(Control::Reload) => self.reload_file(),
                    Ok(Control::Apply(config)) => self.reload(Ok(*config)),
                    Ok(Control::Stall(d)) => std::thread::sleep(d),
                    Ok(Control::Shutdown) | Err(_) => break,
                },
                default(wake.saturating_duration_since(now)) => {}
            }
            let now = Instant::now();
            if now >= wake {
                self.tick(now);
                last_tick = now;
            }
            // A turn of the loop done: proof of life for the admin endpoint and the
            // watchdog.
            self.published.turned(now);
            if self.last_publish.is_none_or(|at| now >= at + PUBLISH_EVERY) {
                self.publish(now);
            }
            if let Some(notifier) = &mut self.notifier {
                notifier.watchdog(now);
            }
        }
        self.shutdown();
    }

    /// When to tick next: the earliest pool deadline after the last tick, at most
    /// `TICK` after it. A deadline at or before the last tick was acted on (or cannot
    /// be yet, like a backoff with a probe in flight): waking for it again would spin.
    fn next_wake(&self, last_tick: Instant) -> Instant {
        let cap = last_tick + TICK;
        self.pools
            .iter()
            .filter_map(|p| p.state.next_wake())
            .filter(|at| *at > last_tick)
            .fold(cap, Instant::min)
    }

    /// A local client finished its handshake: lease it a connection of its pool.
    fn on_client(&mut self, client: Client, now: Instant) {
        let index = client.pool;
        if index >= self.pools.len() {
            return close_client(client, 1011, "no such pool");
        }
        if self.pools[index].drain_until.is_some() {
            return close_client(client, 1001, "pool removed from the configuration");
        }
        let session = client.session;
        self.waiting.insert(session, client);
        let actions = self.pools[index].state.lease(session, now);
        self.apply(index, actions);
    }

    fn on_event(&mut self, event: Event, now: Instant) {
        let id = event.id();
        let Some(handle) = self.workers.get(&id) else {
            // A stuck worker came back after it was replaced: ignore it.
            return;
        };
        let index = handle.pool;
        if let Event::SessionEnded { code, .. } = &event {
            *self.pools[index].sessions.closed.entry(*code).or_default() += 1;
        }
        let Event::Died {
            id,
            cause,
            at,
            last_life,
            client,
        } = event
        else {
            let actions = self.pools[index].state.on_event(&event, now);
            return self.apply(index, actions);
        };
        let mut orphans = Vec::new();
        if let Some(handle) = self.workers.remove(&id) {
            // Died is the worker's last act; the join is immediate.
            let _ = handle.thread.join();
            orphans.extend(handle.inbox.try_iter().filter_map(|m| match m {
                ToWorker::Attach(client) => Some(*client),
                ToWorker::Command(_) => None,
            }));
        }
        let healing = client.as_ref().map(|c| c.session);
        if let Some(client) = client {
            self.waiting.insert(client.session, *client);
        }
        let event = Event::Died {
            id,
            cause,
            at,
            last_life,
            client: None,
        };
        let mut actions = self.pools[index].state.on_event(&event, now);
        if let Some(session) = healing {
            actions.extend(self.pools[index].state.heal(session, now));
        }
        self.apply(index, actions);
        if let Some(session) = healing {
            self.park(index, session);
        }
        for client in orphans {
            self.requeue(index, client, now);
        }
    }

    /// A client that was on its way to a connection that died before taking it:
    /// a healing session heals again, a new client waits for another lease.
    fn requeue(&mut self, index: usize, client: Client, now: Instant) {
        let session = client.session;
        let heal = client.carry.healing.is_some();
        self.waiting.insert(session, client);
        let actions = if heal {
            self.pools[index].state.heal(session, now)
        } else {
            self.pools[index].state.lease(session, now)
        };
        self.apply(index, actions);
        if heal {
            self.park(index, session);
        }
    }

    /// A healing session still without a connection waits in a room of its own,
    /// served, until one is ready.
    fn park(&mut self, index: usize, session: SessionId) {
        let Some(client) = self.waiting.remove(&session) else {
            return;
        };
        let wake = Arc::new(Wake::new());
        let (commands, rx) = crossbeam_channel::unbounded();
        let room = Room {
            client: Box::new(client),
            pool: self.pools[index].config.clone(),
            commands: rx,
            events: self.room_events_tx.clone(),
            wake: wake.clone(),
        };
        match room.spawn() {
            Ok(thread) => {
                self.rooms.insert(
                    session,
                    RoomHandle {
                        pool: index,
                        commands,
                        wake,
                        thread,
                        bound: None,
                    },
                );
            }
            Err(e) => {
                // The room and its client were dropped with the failed spawn.
                let text = format!(
                    "session {session} lost: cannot start a thread to hold it while it heals: {e} (check TasksMax)"
                );
                self.notice(
                    Notice::new(Severity::Critical, text).pool(self.pools[index].state.name()),
                );
                let now = Instant::now();
                self.pools[index]
                    .incidents
                    .heal_failed("no thread to hold it while it healed", now);
                let actions = self.pools[index].state.forget(session, now);
                self.apply(index, actions);
            }
        }
    }

    fn on_room_event(&mut self, event: RoomEvent, now: Instant) {
        match event {
            RoomEvent::Released(client) => {
                let session = client.session;
                let Some(room) = self.rooms.remove(&session) else {
                    return close_client(*client, 1011, "session lost while healing");
                };
                self.closed_rooms.push(room.thread);
                match room.bound {
                    Some(conn) if self.workers.contains_key(&conn) => {
                        self.deliver(room.pool, conn, *client);
                    }
                    // The connection died between the promise and the release.
                    _ => self.requeue(room.pool, *client, now),
                }
            }
            RoomEvent::Ended { session, code, why } => {
                let Some(room) = self.rooms.remove(&session) else {
                    return;
                };
                self.closed_rooms.push(room.thread);
                let counts = &mut self.pools[room.pool].sessions;
                *counts.closed.entry(code).or_default() += 1;
                if code == 1011 {
                    counts.heal_failed += 1;
                    self.pools[room.pool].incidents.heal_failed(&why, now);
                }
                let text = format!("session {session} ended while healing ({code}): {why}");
                let severity = if code == 1011 || code == 1008 {
                    Severity::Warning
                } else {
                    Severity::Info
                };
                self.notice(Notice::new(severity, text).pool(self.pools[room.pool].state.name()));
                let actions = self.pools[room.pool].state.forget(session, now);
                self.apply(room.pool, actions);
            }
        }
    }

    fn tick(&mut self, now: Instant) {
        self.find_stuck(now);
        self.drain(now);
        for index in 0..self.pools.len() {
            let actions = self.pools[index].state.tick(now);
            self.apply(index, actions);
        }
        self.abandoned.retain(|t| !t.is_finished());
        self.closed_rooms.retain(|t| !t.is_finished());
    }

    /// A worker that stopped turning its loop cannot report itself: give up on it,
    /// tell its pool it died, and let the pool replace it.
    fn find_stuck(&mut self, now: Instant) {
        let now_ms = worker::millis(now);
        let stuck: Vec<ConnId> = self
            .workers
            .iter()
            .filter(|(_, h)| {
                let last = h.shared.progress.load(Ordering::Relaxed);
                let limit = self.pools[h.pool].stuck_after.as_millis() as u64;
                now_ms.saturating_sub(last) > limit && !h.thread.is_finished()
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stuck {
            let Some(handle) = self.workers.remove(&id) else {
                continue;
            };
            handle.shared.abandoned.store(true, Ordering::Relaxed);
            handle.shared.wake.signal();
            self.abandoned.push(handle.thread);
            let event = Event::Died {
                id,
                cause: Cause::Stuck,
                at: now,
                last_life: None,
                client: None,
            };
            let actions = self.pools[handle.pool].state.on_event(&event, now);
            self.apply(handle.pool, actions);
        }
    }

    fn apply(&mut self, index: usize, actions: Vec<Action>) {
        let now = Instant::now();
        // Deaths first: the first one starts the timeline its notice belongs to.
        let observations = self.pools[index].state.take_observations();
        let entry = &mut self.pools[index];
        for observation in &observations {
            match observation {
                Observation::Connected { endpoint, .. } => {
                    let counts = entry.connects.entry(endpoint.clone()).or_default();
                    *counts.entry("ok".into()).or_default() += 1;
                }
                Observation::Died {
                    endpoint, cause, ..
                } => {
                    let table = if cause.is_connect_failure() {
                        &mut entry.connects
                    } else {
                        &mut entry.deaths
                    };
                    let counts = table.entry(endpoint.clone()).or_default();
                    *counts.entry(cause.label().into()).or_default() += 1;
                }
                _ => {}
            }
        }
        let tracker = &mut entry.incidents;
        for observation in &observations {
            match observation {
                Observation::Died {
                    cause,
                    at,
                    last_life,
                    ..
                } if *cause != Cause::Retired => {
                    tracker.died(*at, *last_life, cause.is_connect_failure(), now);
                }
                Observation::Connected { .. } => tracker.connected(),
                _ => {}
            }
        }
        for action in actions {
            match action {
                Action::Spawn { id, endpoint } => self.start_worker(index, id, endpoint),
                Action::Command(id, command) => self.command(id, command),
                Action::Notice(notice) => {
                    if !notice.text.starts_with("session ") {
                        self.pools[index].incidents.note(&notice.to_string(), now);
                    }
                    self.notice(notice);
                }
                Action::Attach { conn, session } => self.attach(index, conn, session),
                Action::Reject {
                    session,
                    code,
                    reason,
                } => {
                    if let Some(client) = self.waiting.remove(&session) {
                        // A room counts its own ending when it closes.
                        let entry = &mut self.pools[index];
                        let counts = &mut entry.sessions;
                        if code == 1013 {
                            counts.refused += 1;
                        } else {
                            counts.heal_failed += u64::from(code == 1011);
                            *counts.closed.entry(code).or_default() += 1;
                        }
                        if code == 1011 {
                            entry.incidents.heal_failed(&reason, now);
                        }
                        close_client(client, code, &reason);
                    } else if let Some(room) = self.rooms.get(&session) {
                        let _ = room.commands.send(RoomCommand::Close(code, reason));
                        room.wake.signal();
                    }
                }
            }
        }
        if let Some(observer) = &self.observer {
            for observation in observations {
                let _ = observer.send(observation);
            }
        }
        self.assess(index, now);
    }

    /// Hold the pool's conditions against its incident; journal, send and log what
    /// changed.
    fn assess(&mut self, index: usize, now: Instant) {
        let entry = &mut self.pools[index];
        let active = entry.state.conditions(now);
        let transitions = entry.incidents.update(active, now, &mut self.next_incident);
        for transition in transitions {
            let record = Record::new(&transition, &self.host, SystemTime::now());
            if let Some(observer) = &self.observer {
                let _ = observer.send(Observation::Incident(Box::new(record.clone())));
            }
            self.alerts.incident(record);
        }
    }

    fn start_worker(&mut self, index: usize, id: ConnId, endpoint: usize) {
        let entry = &mut self.pools[index];
        if self.workers.len() >= self.max_connections {
            entry.state.spawn_refused(id);
            if !self.at_limit {
                self.at_limit = true;
                let text = format!(
                    "max_connections ({}) reached: not opening more connections; raise [daemon] max_connections",
                    self.max_connections
                );
                let notice = Notice::new(Severity::Warning, text).pool(entry.state.name());
                self.notice(notice);
            }
            return;
        }
        let shared = Arc::new(Shared::new(entry.state.heartbeat_timeout(endpoint)));
        let (commands, rx) = crossbeam_channel::unbounded();
        let worker = Worker {
            id,
            pool: entry.config.clone(),
            endpoint: entry.endpoints[endpoint].clone(),
            tls: entry.tls.clone(),
            events: self.events_tx.clone(),
            commands: rx.clone(),
            shared: shared.clone(),
            stats: entry.stats[endpoint].clone(),
        };
        match worker.spawn() {
            Ok(thread) => {
                // Said once while the limit holds, again after a worker starts.
                self.at_limit = false;
                self.workers.insert(
                    id,
                    Handle {
                        pool: index,
                        commands,
                        inbox: rx,
                        shared,
                        thread,
                    },
                );
            }
            Err(e) => self.spawn_failed(index, id, e),
        }
    }

    /// The system refused a thread or a descriptor: say which bound was hit.
    fn spawn_failed(&mut self, index: usize, id: ConnId, e: std::io::Error) {
        self.pools[index].state.spawn_refused(id);
        if !self.at_limit {
            self.at_limit = true;
            let text = format!(
                "cannot start a worker thread: {e} (check LimitNOFILE, TasksMax and [daemon] max_connections)"
            );
            let notice = Notice::new(Severity::Critical, text).pool(self.pools[index].state.name());
            self.notice(notice);
        }
    }

    fn command(&self, id: ConnId, command: Command) {
        if let Some(handle) = self.workers.get(&id) {
            let _ = handle.commands.send(ToWorker::Command(command));
            handle.shared.wake.signal();
        }
    }

    /// The pool gave `session` the idle connection `conn`.
    fn attach(&mut self, index: usize, conn: ConnId, session: SessionId) {
        if let Some(client) = self.waiting.remove(&session) {
            return self.deliver(index, conn, client);
        }
        if let Some(room) = self.rooms.get_mut(&session) {
            room.bound = Some(conn);
            let _ = room.commands.send(RoomCommand::Release);
            room.wake.signal();
            return;
        }
        // The session ended on the way: the connection stays idle.
        let actions = self.pools[index].state.forget(session, Instant::now());
        self.apply(index, actions);
    }

    /// Hand a client to the worker of `conn`, and log the attach or the heal.
    fn deliver(&mut self, index: usize, conn: ConnId, client: Client) {
        let Some(handle) = self.workers.get(&conn) else {
            return self.requeue(index, client, Instant::now());
        };
        let pool = &self.pools[index].state;
        let endpoint = pool
            .endpoint_of(conn)
            .map(|e| pool.endpoint_url(e).to_string())
            .unwrap_or_default();
        let session = client.session;
        let entry = &mut self.pools[index];
        let counts = &mut entry.sessions;
        match &client.carry.healing {
            None => counts.attached += 1,
            Some(healing) => {
                counts.healed += 1;
                counts.slowest_heal = counts.slowest_heal.max(healing.since.elapsed());
                entry.heal_seconds.observe(healing.since.elapsed());
                entry.incidents.healed(healing.from_endpoint != endpoint);
            }
        }
        let text = match &client.carry.healing {
            None => format!(
                "session {session} from {} attached to connection {conn} after {}",
                client.peer,
                crate::event::human(client.arrived.elapsed())
            ),
            Some(healing) => {
                let owed = if healing.unconfirmed == 0 {
                    "nothing unconfirmed".to_string()
                } else if healing.resent {
                    format!("{} unconfirmed message(s) resent", healing.unconfirmed)
                } else {
                    format!(
                        "{} unconfirmed message(s) not resent (at-most-once)",
                        healing.unconfirmed
                    )
                };
                let mut text = format!(
                    "session {session} healed onto connection {conn} in {} after connection {} died ({}); {owed}, {} buffered, {} replayed",
                    crate::event::human(healing.since.elapsed()),
                    healing.from,
                    healing.cause,
                    healing.buffered,
                    client.carry.replay.len(),
                );
                if client.carry.replay_dropped > 0 {
                    text.push_str(&format!(
                        "; {} replay message(s) dropped, the list outgrew heal_buffer",
                        client.carry.replay_dropped
                    ));
                }
                text
            }
        };
        let mut client = client;
        client.carry.replay_dropped = 0;
        // The monitor holds the worker's queue open (`inbox`), so this cannot fail; if
        // the worker dies before reading it, its Died hands the client back.
        let _ = handle.commands.send(ToWorker::Attach(Box::new(client)));
        handle.shared.wake.signal();
        let notice = Notice::new(Severity::Info, text)
            .pool(self.pools[index].state.name())
            .endpoint(&endpoint);
        self.notice(notice);
    }

    fn notice(&self, notice: Notice) {
        if let Some(observer) = &self.observer {
            let _ = observer.send(Observation::Notice(notice.clone()));
        }
        self.alerts.send(notice);
    }

    /// Close every connection with 1001, wait for the workers (bounded), join them.
    fn shutdown(mut self) {
        let started = Instant::now();
        if let Some(notifier) = &mut self.notifier {
            notifier.status("shutting down: closing connections with 1001");
            notifier.send("STOPPING=1");
        }
        while let Ok(event) = self.room_events.try_recv() {
            self.on_room_event(event, started);
        }
        for (_, client) in self.waiting.drain() {
            let counts = &mut self.pools[client.pool].sessions;
            *counts.closed.entry(1001).or_default() += 1;
            close_client(client, 1001, "wspoold shutting down");
        }
        let mut room_pools = HashMap::new();
        for (session, room) in self.rooms.drain() {
            room_pools.insert(session, room.pool);
            let _ = room
                .commands
                .send(RoomCommand::Close(1001, "wspoold shutting down".into()));
            room.wake.signal();
            self.closed_rooms.push(room.thread);
        }
        let total = self.workers.len();
        for index in 0..self.pools.len() {
            let actions = self.pools[index]
                .state
                .close_all(1001, "wspoold shutting down");
            for action in actions {
                if let Action::Command(id, command) = action {
                    self.command(id, command);
                }
            }
        }
        let deadline = started + SHUTDOWN_WAIT;
        while !self.workers.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.events.recv_timeout(left) {
                Ok(Event::Died { id, client, .. }) => {
                    if let Some(handle) = self.workers.remove(&id) {
                        // A client handed back to heal: there is nothing to heal onto.
                        if let Some(client) = client {
                            let counts = &mut self.pools[handle.pool].sessions;
                            *counts.closed.entry(1001).or_default() += 1;
                            close_client(*client, 1001, "wspoold shutting down");
                        }
                        let _ = handle.thread.join();
                    }
                }
                // Sessions on connections end with this shutdown's 1001.
                Ok(Event::SessionEnded { id, code, .. }) => {
                    if let Some(handle) = self.workers.get(&id) {
                        let counts = &mut self.pools[handle.pool].sessions;
                        *counts.closed.entry(code).or_default() += 1;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        for room in self.closed_rooms.drain(..) {
            // A room closes its client at once; only a client that stopped reading
            // keeps it, and its write is non-blocking.
            let _ = room.join();
        }
        // Count the sessions rooms ended (by healing failing, or this shutdown).
        for event in self.room_events.try_iter() {
            if let RoomEvent::Ended { session, code, .. } = event
                && let Some(index) = room_pools.get(&session)
            {
                let counts = &mut self.pools[*index].sessions;
                *counts.closed.entry(code).or_default() += 1;
                counts.heal_failed += u64::from(code == 1011);
            }
        }
        for entry in &self.pools {
            let counts = &entry.sessions;
            if counts.attached + counts.refused > 0 {
                let notice = Notice::new(Severity::Info, counts.summary()).pool(entry.state.name());
                self.notice(notice);
            }
        }
        let left_over = self.workers.len();
        let text = if left_over == 0 {
            format!(
                "shut down: closed {total} connection(s) in {}",
                crate::event::human(started.elapsed())
            )
        } else {
            format!("shut down: {left_over} of {total} connection(s) did not close in time")
        };
        self.notice(Notice::new(Severity::Info, text));
    }
}

/// This machine's name, for incident records; "localhost" if it has none.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into a live local buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if rc == 0 && !name.is_empty() => name.to_string(),
        _ => "localhost".to_string(),
    }
}

/// Close a client that never reached a connection, best effort and without blocking:
/// the close frame fits in a fresh socket buffer.
pub fn close_client(mut client: Client, code: u16, reason: &str) {
    use tungstenite::protocol::CloseFrame;
    let frame = CloseFrame {
        code: code.into(),
        reason: reason.into(),
    };
    let _ = client.ws.close(Some(frame));
    let _ = client.ws.flush();
}

#[path = "monitor_reload.rs"]
mod reload;
#[path = "monitor_status.rs"]
mod snapshot;
