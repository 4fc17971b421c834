//! The paths a client can take to the upstream: directly, through wspoold (in this
//! process), and through the peers an operator would put in the same place when they
//! are installed — websocat as a WebSocket-to-WebSocket bridge, nginx and HAProxy as
//! WebSocket reverse proxies. Each peer runs as a child process with a generated
//! configuration in a scratch directory, and is killed when its `Path` is dropped.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wspoold::config::Config;
use wspoold::daemon::{Daemon, Options};
use wspoold::event::Observation;

/// Where the client connects, and what keeps it there.
pub struct Path {
    pub name: &'static str,
    pub url: String,
    keep: Keep,
}

enum Keep {
    Nothing,
    Daemon(Option<Daemon>),
    Child(Child, PathBuf),
}

impl Drop for Path {
    fn drop(&mut self) {
        match &mut self.keep {
            Keep::Nothing => {}
            Keep::Daemon(daemon) => {
                if let Some(daemon) = daemon.take() {
                    daemon.shutdown();
                }
            }
            Keep::Child(child, dir) => {
                stop(child);
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// SIGTERM, so that nginx's master takes its workers with it; SIGKILL if the child
/// is still there two seconds later.
fn stop(child: &mut Child) {
    // SAFETY: a signal to our own child, not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A peer that could not be measured, and why.
pub struct Missing {
    pub name: &'static str,
    pub why: String,
}

pub fn direct(upstream: &str) -> Path {
    Path {
        name: "direct",
        url: upstream.to_string(),
        keep: Keep::Nothing,
    }
}

/// wspoold in this process, one pool over `upstream` with `pool` settings added; what
/// it observes goes to `observer` if given.
pub fn wspoold(
    upstream: &str,
    pool: &str,
    observer: Option<crossbeam_channel::Sender<Observation>>,
) -> Path {
    let text = format!(
        "[daemon]\nlisten = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n[alerts]\nsyslog = false\n[pools.bench]\nendpoints = [\"{upstream}\"]\nmax_message_size = \"1MiB\"\n{pool}\n",
        state_dir().display()
    );
    let config = Config::parse(&text, "<bench>").expect("bench config");
    let daemon = Daemon::start(
        &config,
        Options {
            stderr: daemon_log(),
            observer,
            notifier: None,
        },
    )
    .expect("start wspoold");
    Path {
        name: "wspoold",
        url: format!("ws://{}/bench", daemon.listen_addr()),
        keep: Keep::Daemon(Some(daemon)),
    }
}

/// websocat bridging a local WebSocket listener to the upstream, with `extra`
/// arguments before the addresses and `prefix` (an overlay such as
/// `autoreconnect:`) before the upstream's URL.
pub fn websocat(upstream: &str, extra: &[&str], prefix: &str) -> Result<Path, Missing> {
    let port = wspoold::faults::unused_port();
    let mut args: Vec<String> = vec!["-b".into(), "-B".into(), "1048576".into()];
    args.extend(extra.iter().map(|a| a.to_string()));
    args.push(format!("ws-l:127.0.0.1:{port}"));
    args.push(format!("{prefix}{upstream}"));
    spawn("websocat", "websocat", &args, port, None)
}

/// nginx as a WebSocket reverse proxy: one worker, no logs, no buffering.
pub fn nginx(upstream: SocketAddr) -> Result<Path, Missing> {
    let port = wspoold::faults::unused_port();
    let dir = scratch("nginx");
    let conf = format!(
        r#"daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream echo {{ server {upstream}; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_buffering off;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
            tcp_nodelay on;
        }}
    }}
}}
"#,
        dir = dir.display()
    );
    let file = dir.join("nginx.conf");
    std::fs::write(&file, conf).expect("write the nginx config");
    let args = vec![
        "-p".to_string(),
        dir.display().to_string(),
        "-c".to_string(),
        file.display().to_string(),
    ];
    spawn("nginx", "nginx", &args, port, Some(dir))
}

/// HAProxy as a WebSocket reverse proxy (HTTP mode, tunnel after the upgrade).
pub fn haproxy(upstream: SocketAddr) -> Result<Path, Missing> {
    let port = wspoold::faults::unused_port();
    let dir = scratch("haproxy");
    let conf = format!(
        "global\n    maxconn 8000\n\ndefaults\n    mode http\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n    timeout tunnel 1h\n\nfrontend fe\n    bind 127.0.0.1:{port}\n    default_backend be\n\nbackend be\n    server echo {upstream}\n"
    );
    let file = dir.join("haproxy.cfg");
    std::fs::write(&file, conf).expect("write the haproxy config");
    let args = vec![
        "-db".to_string(),
        "-f".to_string(),
        file.display().to_string(),
    ];
    spawn("haproxy", "haproxy", &args, port, Some(dir))
}

/// The version line a peer prints, or why it cannot be run.
pub fn version(program: &str) -> Result<String, String> {
    let flag = if program == "websocat" {
        "--version"
    } else {
        "-v"
    };
    let out = Command::new(program)
        .arg(flag)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    // nginx prints its version on stderr.
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    Ok(text.lines().next().unwrap_or_default().trim().to_string())
}

/// What the daemon under test logs goes to stderr with WSPOOLD_BENCH_LOG=1, to see
/// why a figure is what it is.
pub fn daemon_log() -> wspoold::alert::Stderr {
    if std::env::var_os("WSPOOLD_BENCH_LOG").is_some() {
        wspoold::alert::Stderr::Always
    } else {
        wspoold::alert::Stderr::Never
    }
}

/// Where the bench's daemons keep their incident journal: a scratch directory, not
/// the system's.
pub fn state_dir() -> PathBuf {
    scratch("state")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wspoold-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

/// Starts `program` and waits until it accepts connections on `port`.
fn spawn(
    name: &'static str,
    program: &str,
    args: &[String],
    port: u16,
    dir: Option<PathBuf>,
) -> Result<Path, Missing> {
    let missing = |why: String| Missing { name, why };
    version(program).map_err(missing)?;
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| missing(format!("cannot start {program}: {e}")))?;
    let dir = dir.unwrap_or_else(|| scratch(name));
    let path = Path {
        name,
        url: format!("ws://127.0.0.1:{port}/"),
        keep: Keep::Child(child, dir),
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        if Instant::now() > deadline {
            return Err(missing(format!(
                "{program} did not listen on {addr} within 10 s"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(path)
}
