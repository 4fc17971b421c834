//! systemd's notification protocol (sd_notify(3)): one datagram per state change to
//! the unix socket named by `NOTIFY_SOCKET`. It is a few lines over a datagram socket,
//! so no crate: READY=1, RELOADING=1, STOPPING=1, STATUS=..., WATCHDOG=1.
//!
//! The watchdog is kept from the monitor's loop, never from a thread of its own: a
//! wedged monitor stops the pings and systemd restarts the daemon.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where notifications go, and how often the watchdog wants a sign of life.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    target: Target,
    /// Half of `WATCHDOG_USEC`, if systemd asked for a watchdog.
    watchdog_every: Option<Duration>,
    last_watchdog: Option<Instant>,
    last_status: String,
}

#[derive(Debug)]
enum Target {
    Path(PathBuf),
    /// A Linux abstract socket (`NOTIFY_SOCKET=@name`).
    Abstract(Vec<u8>),
}

impl Notifier {
    /// From systemd's environment: `None` when not started by systemd with
    /// `Type=notify`. A watchdog meant for another process (`WATCHDOG_PID`) is ignored.
    pub fn from_env() -> Option<Notifier> {
        let socket = std::env::var_os("NOTIFY_SOCKET")?;
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.parse::<u64>().ok())
            .filter(|_| {
                std::env::var("WATCHDOG_PID")
                    .ok()
                    .and_then(|pid| pid.parse::<u32>().ok())
                    .is_none_or(|pid| pid == std::process::id())
            })
            .map(Duration::from_micros);
        Notifier::new(PathBuf::from(socket), watchdog).ok()
    }

    /// Notify `socket` (a path, or `@name` for an abstract socket); `watchdog` is the
    /// whole watchdog interval, pinged every half of it.
    pub fn new(socket: PathBuf, watchdog: Option<Duration>) -> io::Result<Notifier> {
        use std::os::unix::ffi::OsStrExt;
        let bytes = socket.as_os_str().as_bytes();
        let target = match bytes.strip_prefix(b"@") {
            Some(name) => Target::Abstract(name.to_vec()),
            None => Target::Path(socket),
        };
        Ok(Notifier {
            socket: UnixDatagram::unbound()?,
            target,
            watchdog_every: watchdog.filter(|d| !d.is_zero()).map(|d| d / 2),
            last_watchdog: None,
            last_status: String::new(),
        })
    }

    /// Send one notification, best effort: systemd not listening is no reason to stop.
    pub fn send(&self, state: &str) {
        let _ = match &self.target {
            Target::Path(path) => self.socket.send_to(state.as_bytes(), path),
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)
                    .and_then(|addr| self.socket.send_to_addr(state.as_bytes(), &addr))
            }
        };
    }

    /// `STATUS=` for `systemctl status`, sent only when it changed.
    pub fn status(&mut self, status: &str) {
        if status != self.last_status {
            self.last_status = status.to_string();
            self.send(&format!("STATUS={status}"));
        }
    }

    /// Ping the watchdog if half its interval has passed since the last ping. Called
    /// from the monitor's loop, after it has done a turn of work.
    pub fn watchdog(&mut self, now: Instant) {
        let Some(every) = self.watchdog_every else {
            return;
        };
        if self.last_watchdog.is_none_or(|last| now >= last + every) {
            self.last_watchdog = Some(now);
            self.send("WATCHDOG=1");
        }
    }

    /// The longest the monitor may sleep and still ping in time.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog_every
    }

    /// `RELOADING=1` with the monotonic time systemd asks of `Type=notify-reload`.
    pub fn reloading(&self) {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec into a live local.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let usec = ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000;
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
    }
}

/// Whether stderr is a stream systemd connected to the journal. systemd names that
/// stream's device and inode in `JOURNAL_STREAM` (systemd.exec(5)); what goes to syslog
/// lands in the journal too, so copying it to stderr would show every line twice. The
/// variable is inherited by children whose stderr is something else, hence the check.
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var("JOURNAL_STREAM").ok() else {
        return false;
    };
    // SAFETY: all zeroes is a valid value of this plain C struct.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes one stat into a live local; on failure it is not read.
    if unsafe { libc::fstat(libc::STDERR_FILENO, &mut stat) } != 0 {
        return false;
    }
    names_stream(&value, stat.st_dev, stat.st_ino)
}

/// `JOURNAL_STREAM` is `device:inode`, both in decimal.
fn names_stream(value: &str, dev: u64, ino: u64) -> bool {
    value
        .split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((dev, ino))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_names_a_device_and_an_inode() {
        assert!(names_stream("8:12345", 8, 12345));
        assert!(!names_stream("8:12345", 8, 12346));
        assert!(!names_stream("9:12345", 8, 12345));
        for bad in ["", "8", "8:", ":12345", "8:12345:1", "x:y"] {
            assert!(!names_stream(bad, 8, 12345), "{bad:?}");
        }
    }

    fn socket() -> (UnixDatagram, PathBuf, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "wspoold-notify-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (rx, path, dir)
    }

    fn recv(rx: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = rx.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn the_watchdog_is_pinged_every_half_interval_and_status_only_on_change() {
        let (rx, path, dir) = socket();
        let mut notifier = Notifier::new(path, Some(Duration::from_secs(2))).unwrap();
        assert_eq!(notifier.watchdog_every(), Some(Duration::from_secs(1)));
        let t0 = Instant::now();
        notifier.watchdog(t0);
        assert_eq!(recv(&rx), "WATCHDOG=1");
        notifier.watchdog(t0 + Duration::from_millis(999));
        notifier.status("2/2 up");
        // The early watchdog call sent nothing: the next datagram is the status.
        assert_eq!(recv(&rx), "STATUS=2/2 up");
        notifier.status("2/2 up");
        notifier.watchdog(t0 + Duration::from_secs(1));
        assert_eq!(recv(&rx), "WATCHDOG=1");
        notifier.reloading();
        let reloading = recv(&rx);
        assert!(
            reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
            "{reloading}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn no_watchdog_without_an_interval() {
        let (rx, path, dir) = socket();
        let mut notifier = Notifier::new(path, None).unwrap();
        notifier.watchdog(Instant::now());
        notifier.send("READY=1");
        assert_eq!(recv(&rx), "READY=1");
        let _ = std::fs::remove_dir_all(dir);
    }
}
