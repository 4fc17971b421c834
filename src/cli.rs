//! Subcommands and flags: `run`, `check`, `status`, `incidents`, `demo`; errors mapped
//! to exit codes (0 success, 78 configuration, 1 anything else; `status` 3 when the
//! daemon answers but is not healthy).

use std::path::PathBuf;

use crate::alert::Stderr;
use crate::config::{self, Config, ConfigError};
use crate::daemon::{self, Options};

/// Bad, missing or unreadable configuration (sysexits' EX_CONFIG).
pub const EXIT_CONFIG: i32 = 78;
pub const EXIT_FAILURE: i32 = 1;
/// `wspoold status`: the daemon answered, and it is not healthy (as `systemctl status`
/// answers 3 for a unit that is not running).
pub const EXIT_UNHEALTHY: i32 = 3;

const USAGE: &str = "\
usage: wspoold <command> [options]

commands:
  run   [--config FILE]   run the daemon in the foreground (logs to syslog and stderr)
  check [--config FILE]   validate the configuration and exit (0 valid, 78 invalid)
  status [--config FILE | --admin ADDR] [--json]
                          the running daemon's pools, endpoints and open incidents,
                          from its admin endpoint (0 healthy, 3 unhealthy, 1 no answer)
  incidents [--config FILE | --journal FILE] [--since 24h] [--pool NAME] [--json]
                          the post-incident review, read from the incident journal
  demo  [--seconds N]     run a self-contained demonstration on loopback (default 30 s)

options:
  -c, --config FILE       configuration file (default /etc/wspoold/wspoold.toml)
  -h, --help              show this help
  -V, --version           show the version
";

/// What the command line asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Run {
        config: PathBuf,
    },
    Check {
        config: PathBuf,
    },
    Status {
        config: PathBuf,
        /// Ask this admin address instead of the configured one.
        admin: Option<String>,
        json: bool,
    },
    Incidents {
        config: PathBuf,
        /// Read this journal instead of the configured one.
        journal: Option<PathBuf>,
        filter: crate::review::Filter,
        json: bool,
    },
    Demo {
        seconds: u64,
    },
    Help,
    Version,
}

/// Parse arguments (without the program name).
pub fn parse(args: &[String]) -> Result<Command, String> {
    let mut args = args.iter();
    let Some(command) = args.next() else {
        return Err("no command given".into());
    };
    let mut config = PathBuf::from(config::DEFAULT_PATH);
    let mut seconds = 30;
    let mut journal = None;
    let mut filter = crate::review::Filter::default();
    let mut json = false;
    let mut admin = None;
    match command.as_str() {
        "-h" | "--help" | "help" => return Ok(Command::Help),
        "-V" | "--version" => return Ok(Command::Version),
        "run" | "check" | "demo" | "incidents" | "status" => {}
        other => return Err(format!("unknown command {other:?}")),
    }
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| {
            args.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match arg.as_str() {
            "-c" | "--config" if command != "demo" => config = PathBuf::from(value(arg)?),
            "--seconds" if command == "demo" => {
                let text = value(arg)?;
                seconds = text
                    .parse()
                    .map_err(|_| format!("--seconds takes a whole number, not {text:?}"))?;
            }
            "--journal" if command == "incidents" => journal = Some(PathBuf::from(value(arg)?)),
            "--since" if command == "incidents" => {
                filter.since = Some(crate::review::parse_since(&value(arg)?)?);
            }
            "--pool" if command == "incidents" => filter.pool = Some(value(arg)?),
            "--json" if command == "incidents" || command == "status" => json = true,
            "--admin" if command == "status" => admin = Some(value(arg)?),
            "-h" | "--help" => return Ok(Command::Help),
            other => return Err(format!("unknown option {other:?} for {command}")),
        }
    }
    Ok(match command.as_str() {
        "run" => Command::Run { config },
        "check" => Command::Check { config },
        "status" => Command::Status {
            config,
            admin,
            json,
        },
        "incidents" => Command::Incidents {
            config,
            journal,
            filter,
            json,
        },
        _ => Command::Demo { seconds },
    })
}

/// Run the command line; returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let command = match parse(args) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("wspoold: {e}\n\n{USAGE}");
            return EXIT_FAILURE;
        }
    };
    match command {
        Command::Help => {
            print!("{USAGE}");
            0
        }
        Command::Version => {
            println!("wspoold {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Command::Check { config } => match Config::load(&config) {
            Ok(cfg) => {
                let connections: usize = cfg.pools.iter().map(|p| p.min).sum();
                println!(
                    "{}: ok ({} pool(s), {connections} connection(s) at minimum)",
                    config.display(),
                    cfg.pools.len()
                );
                0
            }
            Err(e) => config_failure(&e),
        },
        Command::Run { config } => {
            let cfg = match Config::load(&config) {
                Ok(cfg) => cfg,
                Err(e) => return config_failure(&e),
            };
            let options = Options {
                // Under systemd, syslog already reaches the journal.
                stderr: if crate::notify::stderr_is_journal() {
                    Stderr::UnlessSyslog
                } else {
                    Stderr::Always
                },
                observer: None,
                notifier: None,
            };
            match daemon::run(&cfg, options) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("wspoold: {e}");
                    EXIT_FAILURE
                }
            }
        }
        Command::Incidents {
            config,
            journal,
            filter,
            json,
        } => incidents(&config, journal, &filter, json),
        Command::Status {
            config,
            admin,
            json,
        } => status(&config, admin, json),
        Command::Demo { seconds } => match crate::demo::run(seconds) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("wspoold demo: {e}");
                EXIT_FAILURE
            }
        },
    }
}

/// `wspoold status`: ask the running daemon's admin endpoint for `/status`.
fn status(config: &std::path::Path, admin: Option<String>, json: bool) -> i32 {
    let (addr, token) = match admin {
        Some(addr) => (addr, None),
        None => match Config::load(config) {
            Ok(cfg) => (cfg.daemon.admin.to_string(), cfg.daemon.admin_token),
            Err(e) => return config_failure(&e),
        },
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("http://{addr}/status");
    let mut request = agent.get(&url);
    if let Some(token) = &token {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    let mut response = match request.call() {
        Ok(response) => response,
        Err(e) => {
            eprintln!(
                "wspoold: no answer from the admin endpoint {url}: {e} (is wspoold running? systemctl status wspoold)"
            );
            return EXIT_FAILURE;
        }
    };
    let code = response.status().as_u16();
    let body = match response.body_mut().read_to_string() {
        Ok(body) => body,
        Err(e) => {
            eprintln!("wspoold: reading the answer of {url}: {e}");
            return EXIT_FAILURE;
        }
    };
    if code != 200 {
        eprintln!("wspoold: {url} answered HTTP {code}: {}", body.trim());
        return EXIT_FAILURE;
    }
    let status: crate::status::Status = match serde_json::from_str(&body) {
        Ok(status) => status,
        Err(e) => {
            eprintln!("wspoold: {url} answered something that is not wspoold's status: {e}");
            return EXIT_FAILURE;
        }
    };
    if json {
        print!("{body}");
    } else if let Err(e) = crate::status::print_table(&status, &mut std::io::stdout().lock()) {
        eprintln!("wspoold: {e}");
        return EXIT_FAILURE;
    }
    if status.unhealthy().is_empty() {
        0
    } else {
        EXIT_UNHEALTHY
    }
}

/// `wspoold incidents`: read the journal (the configured one unless `--journal`), print
/// the review.
fn incidents(
    config: &std::path::Path,
    journal: Option<PathBuf>,
    filter: &crate::review::Filter,
    json: bool,
) -> i32 {
    let path = match journal {
        Some(path) => path,
        None => match Config::load(config) {
            Ok(cfg) => cfg.daemon.state_dir.join(crate::journal::FILE),
            Err(e) => return config_failure(&e),
        },
    };
    let records = match crate::journal::read(&path) {
        Ok((records, skipped)) => {
            for warning in skipped {
                eprintln!("wspoold: warning: {warning}");
            }
            records
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "wspoold: no incident journal at {} yet: no incident has been recorded",
                path.display()
            );
            Vec::new()
        }
        Err(e) => {
            eprintln!("wspoold: cannot read {}: {e}", path.display());
            return EXIT_FAILURE;
        }
    };
    let review = crate::review::review(&records, filter, std::time::SystemTime::now());
    let mut out = std::io::stdout().lock();
    let written = if json {
        serde_json::to_writer_pretty(&mut out, &review)
            .map_err(std::io::Error::other)
            .and_then(|()| std::io::Write::write_all(&mut out, b"\n"))
    } else {
        crate::review::print_table(&review, &mut out)
    };
    match written {
        Ok(()) => 0,
        // A closed pipe (`| head`) is not a failure worth a message.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("wspoold: {e}");
            EXIT_FAILURE
        }
    }
}

fn config_failure(e: &ConfigError) -> i32 {
    eprintln!("wspoold: {e}");
    EXIT_CONFIG
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_subcommands_and_flags() {
        assert_eq!(
            parse(&args("run --config /tmp/x.toml")),
            Ok(Command::Run {
                config: "/tmp/x.toml".into()
            })
        );
        assert_eq!(
            parse(&args("check")),
            Ok(Command::Check {
                config: config::DEFAULT_PATH.into()
            })
        );
        assert_eq!(
            parse(&args("demo --seconds 5")),
            Ok(Command::Demo { seconds: 5 })
        );
        assert_eq!(
            parse(&args(
                "incidents --journal /tmp/j --since 2h --pool market --json"
            )),
            Ok(Command::Incidents {
                config: config::DEFAULT_PATH.into(),
                journal: Some("/tmp/j".into()),
                filter: crate::review::Filter {
                    since: Some(std::time::Duration::from_secs(7200)),
                    pool: Some("market".into()),
                },
                json: true,
            })
        );
        assert_eq!(
            parse(&args("status --admin 127.0.0.1:9999 --json")),
            Ok(Command::Status {
                config: config::DEFAULT_PATH.into(),
                admin: Some("127.0.0.1:9999".into()),
                json: true,
            })
        );
    }

    #[test]
    fn rejects_what_it_does_not_know() {
        assert!(parse(&args("")).is_err());
        assert!(parse(&args("fly")).unwrap_err().contains("fly"));
        assert!(
            parse(&args("run --config"))
                .unwrap_err()
                .contains("needs a value")
        );
        assert!(parse(&args("demo --config x")).is_err());
        assert!(parse(&args("demo --seconds soon")).is_err());
        assert!(parse(&args("run --json")).is_err());
        assert!(
            parse(&args("incidents --since soon"))
                .unwrap_err()
                .contains("--since takes a duration")
        );
    }
}
