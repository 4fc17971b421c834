//! Starts the threads, wires their channels, turns signals into control messages, and
//! waits for an orderly shutdown.

use std::io;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::alert::Alerter;
use crate::config::Config;
use crate::event::{Control, Notice, Observation, Severity};
use crate::listener::{Listener, ListenerHandle};
use crate::monitor::Monitor;

/// How the daemon is embedded.
#[derive(Default)]
pub struct Options {
    /// Copy every notice to stderr (foreground runs).
    pub stderr: bool,
    /// Receives structured observations (the demo and tests measure with them).
    pub observer: Option<Sender<Observation>>,
}

/// A running daemon: the listener, the monitor and the alerter threads.
pub struct Daemon {
    control: Sender<Control>,
    listener: ListenerHandle,
    monitor: JoinHandle<()>,
    alerter: JoinHandle<()>,
}

impl Daemon {
    /// Bind the local bridge, then start the alerter, the monitor (which opens the
    /// pools) and the listener. Fails if `[daemon] listen` cannot be bound.
    pub fn start(config: &Config, options: Options) -> io::Result<Daemon> {
        let (alerter, alerts) = Alerter::new(&config.alerts, options.stderr);
        let (clients, clients_rx) = crossbeam_channel::bounded(1024);
        let listener = Listener::bind(config, clients, alerts.clone())?;
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
        let (control, control_rx) = crossbeam_channel::bounded(16);
        let monitor =
            Monitor::new(config, control_rx, clients_rx, alerts, options.observer).spawn()?;
        let listener = listener.spawn()?;
        Ok(Daemon {
            control,
            listener,
            monitor,
            alerter,
        })
    }

    /// Where local clients connect (the bound `[daemon] listen`, its port resolved).
    pub fn listen_addr(&self) -> std::net::SocketAddr {
        self.listener.addr()
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
    }
}

/// Run in the foreground until SIGINT or SIGTERM; SIGHUP asks for a reload. A second
/// SIGINT or SIGTERM during shutdown exits at once.
pub fn run(config: &Config, options: Options) -> io::Result<()> {
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
