//! Starts the threads, wires their channels, turns signals into control messages, and
//! waits for an orderly shutdown.

use std::io;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::admin::{Admin, Published};
use crate::alert::{Alerter, Stderr};
use crate::config::Config;
use crate::event::{Control, Notice, Observation, Severity};
use crate::journal::{Journal, Recovered};
use crate::listener::{Listener, ListenerHandle};
use crate::monitor::{Monitor, Outputs};
use crate::notify::Notifier;

/// Descriptors a full daemon can hold: per pooled connection its socket and a local
/// client's socket; plus handshakes in progress, the listeners, syslog and room to
/// breathe.
fn descriptors_needed(max_connections: usize) -> u64 {
    2 * max_connections as u64 + 512
}

/// Raise the soft limit on open files to what `max_connections` needs, as far as the
/// hard limit allows; a notice if even that is too low, so the bound is named before it
/// is hit instead of surfacing as EMFILE on some accept.
fn raise_descriptor_limit(max_connections: usize) -> Option<Notice> {
    let need = descriptors_needed(max_connections);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into a live local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur >= need {
        return None;
    }
    let raised = libc::rlimit {
        rlim_cur: need.min(limit.rlim_max),
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit reads one rlimit from a live local.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        limit.rlim_cur = raised.rlim_cur;
    }
    (limit.rlim_cur < need).then(|| {
        Notice::new(
            Severity::Warning,
            format!(
                "open-file limit {} is below the {need} that max_connections = {max_connections} can need: raise LimitNOFILE (hard limit {}) or lower max_connections",
                limit.rlim_cur, limit.rlim_max
            ),
        )
    })
}

/// How the daemon is embedded.
#[derive(Default)]
pub struct Options {
    /// When notices are copied to stderr.
    pub stderr: Stderr,
    /// Receives structured observations (the demo and tests measure with them).
    pub observer: Option<Sender<Observation>>,
    /// Where systemd notifications go (`Notifier::from_env()` under systemd).
    pub notifier: Option<Notifier>,
}

/// A running daemon: the listener, the monitor and the alerter threads.
pub struct Daemon {
    control: Sender<Control>,
    listener: ListenerHandle,
    monitor: JoinHandle<()>,
    alerter: JoinHandle<()>,
    admin: Admin,
}

impl Daemon {
    /// Bind the local bridge, then start the alerter, the monitor (which opens the
    /// pools) and the listener. Fails if `[daemon] listen` cannot be bound.
    pub fn start(config: &Config, options: Options) -> io::Result<Daemon> {
        let (journal, recovered, journal_error) = match Journal::open(&config.daemon.state_dir) {
            Ok((journal, recovered)) => (Some(journal), recovered, None),
            Err(e) => (None, Recovered::default(), Some(e)),
        };
        let (alerter, alerts) = Alerter::new(&config.alerts, journal, options.stderr)?;
        let (clients, clients_rx) = crossbeam_channel::bounded(1024);
        let listener = Listener::bind(config, clients, alerts.clone())?;
        let published = Published::new();
        let admin = Admin::start(
            config.daemon.admin,
            config.daemon.admin_token.clone(),
            published.clone(),
        )?;
        let alerter = alerter.spawn()?;
        let wanted: usize = config.pools.iter().map(|p| p.min).sum();
        alerts.send(Notice::new(
            Severity::Info,
            format!(
                "starting: {} pool(s), {wanted} connection(s) to keep, config {}",
                config.pools.len(),
                config.origin
            ),
        ));
        if let Some(notice) = raise_descriptor_limit(config.daemon.max_connections) {
            alerts.send(notice);
        }
        if let Some(e) = journal_error {
            alerts.send(Notice::new(
                Severity::Critical,
                format!(
                    "cannot open the incident journal: {e}; incidents go to syslog and webhooks but are not journaled, and their ids restart at 1 (check [daemon] state_dir and the unit's StateDirectory=)"
                ),
            ));
        }
        for warning in recovered.skipped {
            alerts.send(Notice::new(Severity::Warning, warning));
        }
        let now = std::time::SystemTime::now();
        for record in recovered.open {
            alerts.incident(record.closed_at_start(now));
        }
        let (control, control_rx) = crossbeam_channel::bounded(16);
        let outputs = Outputs {
            alerts,
            observer: options.observer,
            published,
            notifier: options.notifier,
            routes: listener.routes(),
        };
        let monitor = Monitor::new(
            config,
            control_rx,
            clients_rx,
            outputs,
            recovered.next_id.max(1),
        )
        .spawn()?;
        let listener = listener.spawn()?;
        Ok(Daemon {
            control,
            listener,
            monitor,
            alerter,
            admin,
        })
    }

    /// Where local clients connect (the bound `[daemon] listen`, its port resolved).
    pub fn listen_addr(&self) -> std::net::SocketAddr {
        self.listener.addr()
    }

    /// Where the admin endpoint listens (`[daemon] admin`, its port resolved).
    pub fn admin_addr(&self) -> std::net::SocketAddr {
        self.admin.addr()
    }

    /// A sender for shutdown and reload requests.
    pub fn control(&self) -> Sender<Control> {
        self.control.clone()
    }

    /// Ask for shutdown and wait for it.
    pub fn shutdown(self) {
        let _ = self.control.send(Control::Shutdown);
        self.wait();
    }

    /// Wait until the monitor has shut down and the alerter has written everything.
    pub fn wait(mut self) {
        let _ = self.monitor.join();
        self.listener.stop();
        drop(self.listener);
        // The monitor held the alerter's only sender: the alerter drains and ends.
        let _ = self.alerter.join();
        drop(self.admin);
    }
}

/// Run in the foreground until SIGINT or SIGTERM; SIGHUP asks for a reload. A second
/// SIGINT or SIGTERM during shutdown exits at once.
pub fn run(config: &Config, mut options: Options) -> io::Result<()> {
    if options.notifier.is_none() {
        options.notifier = Notifier::from_env();
    }
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let signal_handle = signals.handle();
    let daemon = Daemon::start(config, options)?;
    let control = daemon.control();
    let forwarder = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut stopping = false;
            for signal in signals.forever() {
                match signal {
                    SIGHUP => {
                        let _ = control.try_send(Control::Reload);
                    }
                    _ if stopping => {
                        eprintln!("wspoold: second signal during shutdown: exiting at once");
                        std::process::exit(1);
                    }
                    _ => {
                        stopping = true;
                        let _ = control.try_send(Control::Shutdown);
                    }
                }
            }
        })?;
    daemon.wait();
    signal_handle.close();
    let _ = forwarder.join();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_descriptor_limit_is_raised_to_what_max_connections_needs() {
        // Within any machine's hard limit: raised silently.
        assert_eq!(raise_descriptor_limit(100), None);
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert!(limit.rlim_cur >= descriptors_needed(100));
        // Beyond the hard limit: named in a warning.
        if limit.rlim_max < u64::MAX / 4 {
            let beyond = (limit.rlim_max / 2) as usize + 1;
            let notice = raise_descriptor_limit(beyond).expect("a warning");
            assert!(notice.text.contains("raise LimitNOFILE"), "{}", notice.text);
        }
    }
}
