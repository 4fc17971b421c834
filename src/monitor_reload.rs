//! Reload: re-read the configuration and apply only what changed. New pools start;
//! removed pools drain (no new clients, sessions closed with 1001 after
//! `drain_timeout`); a changed pool replaces only the connections the change concerns;
//! untouched pools are not disturbed. What needs a restart is named in the log.

use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::{Monitor, PoolEntry, close_client, stuck_after};
use crate::config::Config;
use crate::event::{Notice, Severity};
use crate::listener::Route;
use crate::room::RoomCommand;
use crate::upstream;

impl Monitor {
    /// SIGHUP: load the file the running configuration came from.
    pub(super) fn reload_file(&mut self) {
        let origin = self.config.origin.clone();
        let path = Path::new(&origin);
        let loaded = if path.is_file() {
            Config::load(path).map_err(|e| e.to_string())
        } else {
            Err(format!(
                "the running configuration did not come from a file ({origin})"
            ))
        };
        self.reload(loaded);
    }

    /// Apply `loaded`, or keep running the old configuration and say why.
    pub(super) fn reload(&mut self, loaded: Result<Config, String>) {
        if let Some(notifier) = &self.notifier {
            notifier.reloading();
        }
        match loaded {
            Err(why) => self.notice(Notice::new(
                Severity::Critical,
                format!("reload failed; still running the configuration loaded before: {why}"),
            )),
            Ok(config) => self.apply_config(config, Instant::now()),
        }
        let now = Instant::now();
        self.publish(now);
        if let Some(notifier) = &mut self.notifier {
            notifier.send("READY=1");
        }
    }

    fn apply_config(&mut self, new: Config, now: Instant) {
        let restart = self.config.restart_keys_changed(&new);
        if self.config.alerts != new.alerts {
            // The alerter says what it changed; the pools take the new timers.
            self.alerts.reconfigure(new.alerts.clone());
            let settings = crate::incident::Settings::from_alerts(&new.alerts);
            for entry in &mut self.pools {
                entry.incidents.set_settings(settings);
                entry.state.set_grace(new.alerts.grace);
            }
        }
        let mut added = Vec::new();
        let mut removed = Vec::new();
        let mut changed = Vec::new();
        for (index, entry) in self.pools.iter_mut().enumerate() {
            if entry.drain_until.is_some() {
                continue;
            }
            if !new.pools.iter().any(|p| p.name == entry.config.name) {
                entry.drain_until = Some(now + new.daemon.drain_timeout);
                removed.push(index);
            }
        }
        for cfg in &new.pools {
            let live = self
                .pools
                .iter()
                .position(|e| e.drain_until.is_none() && e.config.name == cfg.name);
            match live {
                None => {
                    let index = self.pools.len();
                    let entry = PoolEntry::new(cfg, index, &new, now, &mut self.rng);
                    self.pools.push(entry);
                    added.push(index);
                }
                Some(index) if *self.pools[index].config != *cfg => changed.push((index, cfg)),
                Some(_) => {}
            }
        }
        // Routes first: new clients reach only pools that are in the new file.
        *self.routes.write() = new
            .pools
            .iter()
            .filter_map(|cfg| {
                let index = self
                    .pools
                    .iter()
                    .position(|e| e.drain_until.is_none() && e.config.name == cfg.name)?;
                Some(Route::new(index, cfg))
            })
            .collect();
        for index in added.iter().copied() {
            let actions = self.pools[index].state.start(now);
            self.apply(index, actions);
        }
        for index in removed.iter().copied() {
            let actions = self.pools[index].state.drain(now);
            self.apply(index, actions);
        }
        let mut summary = Vec::new();
        for (index, cfg) in changed {
            let entry = &mut self.pools[index];
            let keys = entry.config.worker_keys_changed(cfg);
            if entry.config.ca != cfg.ca {
                entry.tls = upstream::tls_config(cfg.ca.as_ref());
            }
            entry.config = Arc::new(cfg.clone());
            entry.stuck_after = stuck_after(cfg);
            let actions = entry.state.reconfigure(cfg, !keys.is_empty(), now);
            // Slots are matched by URL; a new one is appended.
            let wanted: Vec<_> = cfg.endpoints.iter().chain(&cfg.backup).collect();
            for slot in 0..entry.state.endpoint_count() {
                let url = entry.state.endpoint_url(slot).to_string();
                let endpoint = wanted.iter().find(|e| e.url == url).map(|e| (*e).clone());
                match (slot < entry.endpoints.len(), endpoint) {
                    (true, Some(endpoint)) => entry.endpoints[slot] = endpoint,
                    (true, None) => {}
                    (false, endpoint) => {
                        entry
                            .endpoints
                            .push(endpoint.expect("a new slot comes from the new list"));
                        entry.stats.push(Arc::default());
                    }
                }
            }
            let name = entry.config.name.clone();
            summary.push(if keys.is_empty() {
                format!("{name} (applied in place)")
            } else {
                format!("{name} (connections replaced for {})", keys.join(", "))
            });
            self.apply(index, actions);
        }
        self.max_connections = new.daemon.max_connections;
        let names = |indexes: &[usize]| {
            indexes
                .iter()
                .map(|i| self.pools[*i].config.name.clone())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut text = format!(
            "reloaded {}: {} pool(s) added{}, {} removed{}, {} changed{}",
            new.origin,
            added.len(),
            list(&names(&added)),
            removed.len(),
            list(&names(&removed)),
            summary.len(),
            list(&summary.join("; "))
        );
        if !removed.is_empty() {
            text.push_str(&format!(
                "; removed pools' sessions are closed with 1001 within {}",
                crate::event::human(new.daemon.drain_timeout)
            ));
        }
        self.notice(Notice::new(Severity::Info, text));
        if !restart.is_empty() {
            self.notice(Notice::new(
                Severity::Warning,
                format!(
                    "reload: {} changed but cannot change without a restart; still running with the values loaded before (systemctl restart wspoold to apply)",
                    restart.join(", ")
                ),
            ));
        }
        // What needs a restart stays as it was, so the next reload says so again.
        let mut kept = new;
        kept.daemon.listen = self.config.daemon.listen;
        kept.daemon.admin = self.config.daemon.admin;
        kept.daemon.admin_token = self.config.daemon.admin_token.clone();
        kept.daemon.state_dir = self.config.daemon.state_dir.clone();
        self.config = kept;
        self.config_loaded = SystemTime::now();
    }

    /// Removed pools: at their deadline, close what is left with 1001; once empty,
    /// they are gone.
    pub(super) fn drain(&mut self, now: Instant) {
        for index in 0..self.pools.len() {
            let entry = &self.pools[index];
            let Some(until) = entry.drain_until else {
                continue;
            };
            if entry.gone {
                continue;
            }
            let rooms = self.rooms.values().filter(|r| r.pool == index).count();
            if entry.state.is_empty() && rooms == 0 {
                let text = "pool removed: its last session and connection are closed";
                let notice = Notice::new(Severity::Info, text).pool(&entry.config.name);
                self.pools[index].gone = true;
                self.notice(notice);
                continue;
            }
            if now < until || entry.drain_closed {
                continue;
            }
            let reason = "pool removed from the configuration";
            let actions = self.pools[index].state.close_all(1001, reason);
            self.apply(index, actions);
            for room in self.rooms.values().filter(|r| r.pool == index) {
                let _ = room.commands.send(RoomCommand::Close(1001, reason.into()));
                room.wake.signal();
            }
            let waiting: Vec<_> = self
                .waiting
                .iter()
                .filter(|(_, c)| c.pool == index)
                .map(|(s, _)| *s)
                .collect();
            for session in waiting {
                if let Some(client) = self.waiting.remove(&session) {
                    let actions = self.pools[index].state.forget(session, now);
                    self.apply(index, actions);
                    close_client(client, 1001, reason);
                }
            }
            // Closed once; what is left ends by itself.
            self.pools[index].drain_closed = true;
        }
    }
}

fn list(names: &str) -> String {
    if names.is_empty() {
        String::new()
    } else {
        format!(" ({names})")
    }
}
