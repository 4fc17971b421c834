//! A worker thread against a real upstream on loopback: how often an idle connection
//! wakes, counted by the kernel.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::*;
use crate::config::Config;
use crate::event::{Command, Event, ToWorker};
use crate::faults::Upstream;
use crate::faults::testing::{wait_until, watchdog};

/// The voluntary context switches of this process's thread named `name`: each is a
/// sleep that ended, so one per wake-up.
fn wakeups(name: &str) -> Option<u64> {
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).ok()?;
        return status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok());
    }
    None
}

/// Waits for the first event that `pick` takes, failing after 5 s.
fn next<T>(events: &Receiver<Event>, mut pick: impl FnMut(Event) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(event) => {
                if let Some(found) = pick(event) {
                    return found;
                }
            }
            Err(e) => panic!("no such event from the worker: {e}"),
        }
    }
}

#[test]
fn an_idle_connection_wakes_once_a_heartbeat_and_times_one_in_eight() {
    watchdog(|| {
        let up = Upstream::start().unwrap();
        let text = format!(
            "[pools.p]\nendpoints = [\"{}\"]\nheartbeat_interval = \"20ms\"\nheartbeat_timeout = \"20ms\"\n",
            up.url()
        );
        let config = Config::parse(&text, "test").unwrap();
        let pool = Arc::new(config.pools[0].clone());
        let (events_tx, events) = crossbeam_channel::unbounded();
        let (commands_tx, commands) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared::new(pool.heartbeat_timeout));
        let stats = Arc::new(EndpointStats::default());
        let id: ConnId = 0xbead;
        let worker = Worker {
            id,
            endpoint: pool.endpoints[0].clone(),
            pool,
            tls: upstream::tls_config(None),
            events: events_tx,
            commands,
            shared: shared.clone(),
            stats: stats.clone(),
        };
        let thread = worker.spawn().unwrap();
        // The first heartbeat is timed and reported: the connection is proven.
        next(&events, |e| match e {
            Event::Heartbeat { rtt: Some(_), .. } => Some(()),
            _ => None,
        });
        let name = format!("worker-{id}");
        let (pings, woke) = (up.pings(), wakeups(&name).expect("the worker's thread"));
        let timed = stats.rtt.read().count();
        // 80 heartbeats at 20 ms: about 1.6 s.
        wait_until("80 more heartbeats", || up.pings() >= pings + 80);
        let (pings, woke, timed) = (
            up.pings() - pings,
            wakeups(&name).unwrap() - woke,
            stats.rtt.read().count() - timed,
        );
        // A pong read as it arrives would be a second wake-up per heartbeat.
        assert!(
            woke <= pings * 3 / 2,
            "{woke} wake-ups for {pings} heartbeats"
        );
        assert!(
            (pings / 8 - 2..=pings / 8 + 2).contains(&timed),
            "{timed} of {pings} heartbeats timed"
        );
        // Still alive: a deferred pong proves life within the detection bound.
        assert!(events.try_iter().all(|e| !matches!(e, Event::Died { .. })));
        commands_tx
            .send(ToWorker::Command(Command::Close(1000, "done".into())))
            .unwrap();
        shared.wake.signal();
        let cause = next(&events, |e| match e {
            Event::Died { cause, .. } => Some(cause),
            _ => None,
        });
        assert_eq!(cause, Cause::Retired);
        thread.join().unwrap();
    });
}

#[test]
fn a_wake_sent_while_the_thread_is_busy_ends_its_next_wait() {
    watchdog(|| {
        let wake = Arc::new(Wake::new());
        let (bound_tx, bound) = crossbeam_channel::bounded(0);
        let (go, go_rx) = crossbeam_channel::bounded::<()>(0);
        let waiting = wake.clone();
        let thread = std::thread::spawn(move || {
            let waiter = waiting.bind();
            bound_tx.send(()).unwrap();
            // Busy, not waiting, while the wake is sent.
            go_rx.recv().unwrap();
            let started = Instant::now();
            let mut none: [libc::pollfd; 0] = [];
            let first = waiter.poll(&mut none, Duration::from_secs(10)).unwrap();
            let woken = started.elapsed();
            // Taken once: the next wait runs to its timeout.
            let started = Instant::now();
            waiter.poll(&mut none, Duration::from_millis(50)).unwrap();
            (first, woken, started.elapsed())
        });
        bound.recv().unwrap();
        wake.signal();
        go.send(()).unwrap();
        let (first, woken, second) = thread.join().unwrap();
        assert_eq!(first, 0);
        assert!(woken < Duration::from_secs(5), "woken after {woken:?}");
        assert!(
            second >= Duration::from_millis(50),
            "second wait {second:?}"
        );
        // Unbound: a wake reaches nobody and does not fail.
        wake.signal();
    });
}
