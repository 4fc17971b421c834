//! Configuration: turns the text of `wspoold.toml` into validated settings.
//!
//! Two layers. The raw layer mirrors the TOML: serde structs whose every key is
//! optional and whose unknown keys are rejected. The validated layer ([`Config`]) holds
//! final values, with the defaults (module `default`) applied in one place, the
//! function `validate`. Single values are checked while they are deserialized, by
//! small newtypes (a duration, a size, a `${VAR}`-expanded string, an endpoint URL...),
//! so that toml's error carries the span of the offending text; checks across keys
//! (`max` below `min`, a path used twice...) keep a [`Spanned`] for the same reason.
//! Every error therefore names the file, line and column.
//!
//! `${VAR}` expands from the environment in every string value, never in keys. The
//! environment is a callback, so tests need not touch the process's own; a first,
//! untyped pass looks up the variables the text uses, because a `Deserialize` impl
//! takes no arguments.
//!
//! [`key_names`] reads the accepted keys off the raw structs, so the test that holds
//! the man page and the example configuration to them cannot drift.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{
    self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};
use syslog::Facility;

use crate::event::Severity;
use toml::Spanned;
use tungstenite::http::{HeaderName, HeaderValue, Uri};

/// Where the daemon looks for its configuration unless `--config` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/wspoold/wspoold.toml";

/// Every default, in one place. `man/wspoold.toml.5` and `systemd/wspoold.toml` repeat
/// them, and a test checks that the example file agrees.
mod default {
    use super::*;

    pub const STATE_DIR: &str = "/var/lib/wspoold";
    pub const MAX_CONNECTIONS: usize = 4096;
    pub const LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9400);
    pub const ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9401);
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

    pub const SYSLOG: bool = true;
    pub const SYSLOG_SOCKET: &str = "/dev/log";
    pub const SYSLOG_FACILITY: Facility = Facility::LOG_DAEMON;
    pub const GRACE: Duration = Duration::from_secs(5);
    pub const RESOLVE_AFTER: Duration = Duration::from_secs(30);
    pub const ESCALATE_AFTER: Duration = Duration::from_secs(300);
    pub const ESCALATE_FAILURES: u32 = 10;

    pub const WEBHOOK_FORMAT: WebhookFormat = WebhookFormat::Json;
    pub const WEBHOOK_MIN_SEVERITY: Severity = Severity::Warning;
    pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
    pub const WEBHOOK_RETRIES: u32 = 6;
    pub const WEBHOOK_RETRY_BACKOFF: Duration = Duration::from_secs(1);
    pub const WEBHOOK_QUEUE: usize = 256;

    pub const MIN: usize = 2;
    pub const MAX: usize = 64;
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
    pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);
    pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
    pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
    pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
    pub const BACKOFF_RESET: Duration = Duration::from_secs(30);
    pub const DOWN_AFTER: u32 = 3;
    pub const MAX_CONNECTING: usize = 32;
    pub const SPARE: usize = 1;
    pub const LEASE_TIMEOUT: Duration = Duration::from_secs(5);
    pub const MAX_MESSAGE_SIZE: usize = 16 << 20;
    pub const HEAL_TIMEOUT: Duration = Duration::from_secs(10);
    pub const HEAL_BUFFER: usize = 1 << 20;
    pub const DELIVERY: Delivery = Delivery::AtLeastOnce;
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const SLOW_START: Duration = Duration::from_secs(10);
    pub const RTT_ALERT: Duration = Duration::ZERO;
    pub const FLAP_HALF_LIFE: Duration = Duration::from_secs(60);
    pub const FLAP_SUPPRESS: u32 = 3;
    pub const FLAP_REUSE: u32 = 1;
}

// ----------------------------------------------------------------------------------
// The validated layer.

/// The validated configuration: every value final, every default applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where the text came from: a file path, or `"<demo>"`. Errors start with it.
    pub origin: String,
    /// `[daemon]`.
    pub daemon: DaemonConfig,
    /// `[alerts]`.
    pub alerts: AlertsConfig,
    /// `[pools.NAME]`, sorted by name.
    pub pools: Vec<PoolConfig>,
}

/// `[daemon]`: process-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Where the incident journal and other state live. Default `/var/lib/wspoold`.
    pub state_dir: PathBuf,
    /// Upper bound on upstream connections across all pools. Default 4096.
    pub max_connections: usize,
    /// The local bridge that clients connect to. Default `127.0.0.1:9400`.
    pub listen: SocketAddr,
    /// `/metrics`, `/status` and `/healthz`. Default `127.0.0.1:9401`.
    pub admin: SocketAddr,
    /// Admin requests must send `Authorization: Bearer <token>` (`admin_token` or
    /// `admin_token_file`). Required when `admin` is not a loopback address.
    pub admin_token: Option<String>,
    /// How long sessions of a pool removed by a reload may go on before they are
    /// closed with 1001. Default 30s.
    pub drain_timeout: Duration,
}

/// `[alerts]`: where alerts go.
#[derive(Debug, Clone)]
pub struct AlertsConfig {
    /// Send alerts to syslog. Default true.
    pub syslog: bool,
    /// The local syslog socket. Default `/dev/log`.
    pub syslog_socket: PathBuf,
    /// Syslog facility. Default `daemon`.
    pub syslog_facility: Facility,
    /// How long a pool may stay below `min` before it is a warning; start-up warm-up is
    /// never an alert. Default 5s.
    pub grace: Duration,
    /// An incident is resolved once its pool has been healthy this long. Default 30s.
    pub resolve_after: Duration,
    /// An incident still open this long is escalated. Default 5m; zero never.
    pub escalate_after: Duration,
    /// An incident escalates at once after this many recovery attempts in a row failed
    /// (connections that never came up). Default 10; zero never.
    pub escalate_failures: u32,
    /// `[[alerts.webhook]]`, in file order.
    pub webhooks: Vec<WebhookConfig>,
}

/// One `[[alerts.webhook]]` receiver.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// For log lines and metrics. Default: the URL's host and port.
    pub name: String,
    /// `http://` or `https://`.
    pub url: String,
    pub format: WebhookFormat,
    /// Notifications below this severity are not sent. Default warning.
    pub min_severity: Severity,
    /// Receives escalations (and their resolution) only.
    pub escalation_only: bool,
    /// Per request. Default 5s.
    pub timeout: Duration,
    /// Extra request headers: `headers`, then `header_files` with each value read
    /// from its file.
    pub headers: Vec<(String, String)>,
    /// PagerDuty's integration key (`routing_key` or `routing_key_file`).
    pub routing_key: Option<String>,
    /// Attempts after the first, on network errors and 5xx. Default 6.
    pub retries: u32,
    /// First retry delay, doubled per attempt up to a minute, jittered. Default 1s.
    pub retry_backoff: Duration,
    /// Notifications waiting for the receiver. Default 256.
    pub queue: usize,
}

// Headers and the routing key hold secrets: Debug does not show them.
impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("WebhookConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("format", &self.format)
            .field("min_severity", &self.min_severity)
            .field("escalation_only", &self.escalation_only)
            .field("timeout", &self.timeout)
            .field("headers", &headers)
            .field(
                "routing_key",
                &self.routing_key.as_ref().map(|_| "<secret>"),
            )
            .field("retries", &self.retries)
            .field("retry_backoff", &self.retry_backoff)
            .field("queue", &self.queue)
            .finish()
    }
}

/// What a webhook receiver speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    Json,
    Slack,
    PagerDuty,
    Alertmanager,
}

impl WebhookFormat {
    pub fn label(self) -> &'static str {
        match self {
            WebhookFormat::Json => "json",
            WebhookFormat::Slack => "slack",
            WebhookFormat::PagerDuty => "pagerduty",
            WebhookFormat::Alertmanager => "alertmanager",
        }
    }
}

// syslog::Facility implements neither PartialEq nor Eq.
impl PartialEq for AlertsConfig {
    fn eq(&self, other: &Self) -> bool {
        self.syslog == other.syslog
            && self.syslog_socket == other.syslog_socket
            && self.syslog_facility as i32 == other.syslog_facility as i32
            && self.grace == other.grace
            && self.resolve_after == other.resolve_after
            && self.escalate_after == other.escalate_after
            && self.escalate_failures == other.escalate_failures
            && self.webhooks == other.webhooks
    }
}

impl Eq for AlertsConfig {}

/// `[pools.NAME]`: one pool of upstream connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// The table key; `[A-Za-z0-9_-]+`.
    pub name: String,
    /// Local clients reach the pool at this path. Default `/` + name.
    pub path: String,
    /// Primaries; they share the load. At least one.
    pub endpoints: Vec<Endpoint>,
    /// Used only while no primary is up. Default none.
    pub backup: Vec<Endpoint>,
    /// Connections kept at all times. Default 2.
    pub min: usize,
    /// Connections at most. Default 64.
    pub max: usize,
    /// Per address for TCP, and again for TLS plus the WebSocket handshake. Default 5s.
    pub connect_timeout: Duration,
    /// Ping after this much silence. Default 2s.
    pub heartbeat_interval: Duration,
    /// A ping unanswered this long kills the connection. Default 2s.
    pub heartbeat_timeout: Duration,
    /// With a value below `heartbeat_timeout`, each endpoint's timeout adapts to its
    /// observed round trips between this and `heartbeat_timeout`. Default: equal to
    /// `heartbeat_timeout` (no adaptation).
    pub heartbeat_timeout_min: Duration,
    /// Pending output that has not drained for this long is a write stall. Default 5s.
    pub write_timeout: Duration,
    /// First reconnect delay of a failing endpoint. Default 100ms.
    pub backoff_base: Duration,
    /// Cap on the reconnect delay. Default 30s.
    pub backoff_max: Duration,
    /// Healthy this long before an endpoint's backoff starts over. Default 30s.
    pub backoff_reset: Duration,
    /// Consecutive failures that take an endpoint down. Default 3.
    pub down_after: u32,
    /// Dial attempts in flight to one endpoint at most, so warm-up and mass
    /// replacement ramp instead of flooding it. Default 32.
    pub max_connecting: usize,
    /// Extra handshake headers, in file order. Default none.
    pub headers: Vec<(String, String)>,
    /// Text messages sent after every connect. Default none.
    pub on_connect: Vec<String>,
    /// Largest message accepted either way. Default 16MiB.
    pub max_message_size: usize,
    /// CA certificates to trust for wss:// instead of the built-in Mozilla roots, read
    /// from `ca_file` when the configuration is loaded. Default none (built-in roots).
    pub ca: Option<CaBundle>,
    /// Local clients must send `Authorization: Bearer <token>`. Default none (no check;
    /// allowed only while `listen` is a loopback address).
    pub client_token: Option<String>,
    /// Idle connections kept warm beyond those leased, up to `max`. Default 1.
    pub spare: usize,
    /// How long a client waits for a connection when the pool is at `max`. Default 5s.
    pub lease_timeout: Duration,
    /// Client messages containing one of these (bytes, anywhere in the message) are
    /// remembered per session and resent first on every new connection. Default none.
    pub replay: Vec<String>,
    /// A session whose connection died is closed with 1011 if it has not moved to a new
    /// connection within this. Default 10s.
    pub heal_timeout: Duration,
    /// Bytes a session may hold for the upstream at once: what its client sent while it
    /// heals, plus what the upstream has not yet acknowledged. Default 1MiB.
    pub heal_buffer: usize,
    /// Tell the client with a text message after each heal. Default false.
    pub heal_notice: bool,
    /// What happens to messages written to a connection that died before the upstream
    /// acknowledged them. Default at-least-once.
    pub delivery: Delivery,
    /// When a client leaves, keep its upstream connection for the next client instead
    /// of closing it. Default false.
    pub reuse: bool,
    /// Connections above what the load needs are closed once the load has stayed below
    /// its peak this long. Default 60s.
    pub idle_timeout: Duration,
    /// Relative share of new connections per primary, in `endpoints` order. Default
    /// all 1.
    pub weights: Vec<u32>,
    /// An endpoint back from down gets its share of new connections gradually over
    /// this. Default 10s; zero turns it off.
    pub slow_start: Duration,
    /// A heartbeat round trip (smoothed, per endpoint) above this is a `latency`
    /// incident. Default 0: off.
    pub rtt_alert: Duration,
    /// Flap damping: each time an endpoint leaves rotation its penalty grows by one,
    /// and it halves every `flap_half_life`. Default 1m.
    pub flap_half_life: Duration,
    /// Above this penalty the endpoint is damped: kept out of rotation while another
    /// can serve. Default 3.
    pub flap_suppress: u32,
    /// Back in rotation once the penalty decays below this. Default 1.
    pub flap_reuse: u32,
}

impl PoolConfig {
    /// The keys, changed from `self` to `new`, that a pool's workers are built with or
    /// read as they run: for a change in any of them to apply, the pool's connections
    /// are replaced. (Endpoint lists are compared by the pool, URL by URL.)
    pub fn worker_keys_changed(&self, new: &PoolConfig) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut check = |name: &'static str, same: bool| {
            if !same {
                changed.push(name);
            }
        };
        check(
            "connect_timeout",
            self.connect_timeout == new.connect_timeout,
        );
        check(
            "heartbeat_interval",
            self.heartbeat_interval == new.heartbeat_interval,
        );
        check("write_timeout", self.write_timeout == new.write_timeout);
        check("headers", self.headers == new.headers);
        check("on_connect", self.on_connect == new.on_connect);
        check(
            "max_message_size",
            self.max_message_size == new.max_message_size,
        );
        check("ca_file", self.ca == new.ca);
        check("replay", self.replay == new.replay);
        check("heal_buffer", self.heal_buffer == new.heal_buffer);
        check("heal_notice", self.heal_notice == new.heal_notice);
        check("delivery", self.delivery == new.delivery);
        check("reuse", self.reuse == new.reuse);
        changed
    }
}

impl Config {
    /// The settings changed from `self` to `new` that a reload cannot apply: they
    /// need a restart.
    pub fn restart_keys_changed(&self, new: &Config) -> Vec<&'static str> {
        let (a, b) = (&self.daemon, &new.daemon);
        let mut changed = Vec::new();
        let mut check = |name: &'static str, same: bool| {
            if !same {
                changed.push(name);
            }
        };
        check("[daemon] listen", a.listen == b.listen);
        check("[daemon] admin", a.admin == b.admin);
        check("[daemon] admin_token", a.admin_token == b.admin_token);
        check("[daemon] state_dir", a.state_dir == b.state_dir);
        changed
    }
}

/// The delivery guarantee for messages a client sends across a heal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Resend what the dead connection did not confirm: duplicates possible, no gap.
    AtLeastOnce,
    /// Never resend: a gap possible, no duplicate.
    AtMostOnce,
}

impl Delivery {
    pub fn label(self) -> &'static str {
        match self {
            Delivery::AtLeastOnce => "at-least-once",
            Delivery::AtMostOnce => "at-most-once",
        }
    }
}

/// The certificates of a `ca_file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaBundle {
    pub path: PathBuf,
    pub certs: Vec<rustls::pki_types::CertificateDer<'static>>,
}

/// An upstream WebSocket endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// As written, after `${VAR}` expansion.
    pub url: String,
    /// `wss://`.
    pub tls: bool,
    /// Host name or IP address, without IPv6 brackets.
    pub host: String,
    /// Explicit, or 80 for `ws://` and 443 for `wss://`.
    pub port: u16,
    /// Path and query; `/` if the URL has none.
    pub resource: String,
}

impl Endpoint {
    /// Parses a `ws://` or `wss://` URL.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        parse_endpoint(url).map_err(|detail| format!("invalid endpoint URL {url:?}: {detail}"))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// Why a configuration could not be had.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Read { path: PathBuf, source: io::Error },
    /// The text is not a valid configuration; line and column are 1-based.
    Invalid {
        origin: String,
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(f, "{}: cannot read: {source}", path.display())
            }
            ConfigError::Invalid {
                origin,
                line,
                column,
                message,
            } => {
                write!(f, "{origin}:")?;
                if let Some(line) = line {
                    write!(f, "{line}:")?;
                    if let Some(column) = column {
                        write!(f, "{column}:")?;
                    }
                }
                write!(f, " {message}")
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            ConfigError::Invalid { .. } => None,
        }
    }
}

impl Config {
    /// Reads `path` and parses it, with `${VAR}` from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let origin = path.display().to_string();
        match String::from_utf8(bytes) {
            Ok(text) => Config::parse(&text, &origin),
            Err(err) => {
                let valid = &err.as_bytes()[..err.utf8_error().valid_up_to()];
                let text = std::str::from_utf8(valid).unwrap_or_default();
                let source = Source {
                    text,
                    origin: &origin,
                };
                Err(source.error(Some(text.len()..text.len()), "not valid UTF-8".to_string()))
            }
        }
    }

    /// Parses configuration text; `origin` names it in errors. `${VAR}` come from the
    /// process environment.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, origin, &|name| std::env::var(name).ok())
    }

    /// Parses configuration text, taking `${VAR}` from `env`.
    pub fn parse_with_env(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let source = Source { text, origin };
        // A first, untyped pass finds the variables that string values use, so that the
        // typed pass can expand them inside Deserialize impls, which take no arguments.
        let document: toml::Table = toml::from_str(text).map_err(|e| source.syntax_error(e))?;
        let vars = referenced_vars(&document, env);
        let raw: RawConfig =
            with_env(vars, || toml::from_str(text)).map_err(|e| source.toml_error(e))?;
        validate(raw, &source)
    }
}

/// The configuration text, to turn spans into line and column.
struct Source<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Source<'_> {
    fn error(&self, span: Option<Range<usize>>, message: String) -> ConfigError {
        let (line, column) = match span {
            Some(span) => {
                let (line, column) = line_column(self.text, span.start);
                (Some(line), Some(column))
            }
            None => (None, None),
        };
        ConfigError::Invalid {
            origin: self.origin.to_string(),
            line,
            column,
            message,
        }
    }

    fn syntax_error(&self, err: toml::de::Error) -> ConfigError {
        let mut message = format!("invalid TOML: {}", err.message());
        let quoted = err.span().and_then(|span| self.text.get(span));
        if let (Some(key), "duplicate key") = (quoted, err.message()) {
            message = format!("invalid TOML: duplicate key `{key}`");
        }
        self.error(err.span(), message)
    }

    fn toml_error(&self, err: toml::de::Error) -> ConfigError {
        let message = describe(err.message(), &error_keys(&err));
        self.error(err.span(), message)
    }
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    (line, before[line_start..].chars().count() + 1)
}

// ----------------------------------------------------------------------------------
// Validation: defaults and the checks that span several keys.

fn validate(raw: RawConfig, source: &Source) -> Result<Config, ConfigError> {
    let (daemon, max_connections_span) = validate_daemon(raw.daemon.unwrap_or_default(), source)?;
    let alerts = validate_alerts(raw.alerts.unwrap_or_default(), source)?;
    let mut pools = Vec::new();
    let mut paths: HashMap<String, String> = HashMap::new();
    let mut total_min = 0;
    for (name, table) in raw.pools.unwrap_or_default() {
        let (pool, spans) = validate_pool(name.0, table, source)?;
        if let Some(other) = paths.insert(pool.path.clone(), pool.name.clone()) {
            let message = format!(
                "pool {} has path {}, already used by pool {other}",
                pool.name, pool.path
            );
            return Err(source.error(Some(spans.path), message));
        }
        if !daemon.listen.ip().is_loopback() && pool.client_token.is_none() {
            let message = format!(
                "listen {} is not a loopback address, but pool {} has no client_token: anyone who reaches the port would ride the pool",
                daemon.listen, pool.name
            );
            return Err(source.error(Some(spans.table), message));
        }
        total_min += pool.min;
        if total_min > daemon.max_connections {
            let message = format!(
                "the pools' min add up to {total_min}, more than max_connections {}",
                daemon.max_connections
            );
            let span = max_connections_span.unwrap_or(spans.table);
            return Err(source.error(Some(span), message));
        }
        pools.push(pool);
    }
    Ok(Config {
        origin: source.origin.to_string(),
        daemon,
        alerts,
        pools,
    })
}

/// Returns the span of `max_connections` too, if it was set, for the check of the pools.
fn validate_daemon(
    raw: RawDaemon,
    source: &Source,
) -> Result<(DaemonConfig, Option<Range<usize>>), ConfigError> {
    let listen = raw
        .listen
        .as_ref()
        .map_or(default::LISTEN, |a| a.get_ref().0);
    let admin = raw.admin.as_ref().map_or(default::ADMIN, |a| a.get_ref().0);
    if admin == listen && listen.port() != 0 {
        let span = raw.admin.or(raw.listen).map(|s| s.span());
        let message = format!("admin and listen are both {listen}");
        return Err(source.error(span, message));
    }
    let admin_token = match (raw.admin_token, raw.admin_token_file) {
        (Some(_), Some(_)) => {
            let message = "[daemon] sets both admin_token and admin_token_file: keep one";
            return Err(source.error(None, message.to_string()));
        }
        (Some(Text(t)), None) | (None, Some(SecretFile(t))) => Some(t).filter(|t| !t.is_empty()),
        (None, None) => None,
    };
    if !admin.ip().is_loopback() && admin_token.is_none() {
        let message = format!(
            "admin {admin} is not a loopback address, but [daemon] has no admin_token: anyone who reaches the port could read the pools' state; set admin_token (or admin_token_file) or bind admin to 127.0.0.1"
        );
        return Err(source.error(raw.admin.map(|s| s.span()), message));
    }
    let daemon = DaemonConfig {
        state_dir: raw
            .state_dir
            .map_or_else(|| PathBuf::from(default::STATE_DIR), |p| p.0),
        max_connections: raw
            .max_connections
            .as_ref()
            .map_or(default::MAX_CONNECTIONS, |m| m.get_ref().get()),
        listen,
        admin,
        admin_token,
        drain_timeout: raw.drain_timeout.map_or(default::DRAIN_TIMEOUT, |d| d.0),
    };
    Ok((daemon, raw.max_connections.map(|m| m.span())))
}

fn validate_alerts(raw: RawAlerts, source: &Source) -> Result<AlertsConfig, ConfigError> {
    let mut webhooks = Vec::new();
    let mut names = HashSet::new();
    for (index, table) in raw.webhook.unwrap_or_default().into_iter().enumerate() {
        let span = table.span();
        let webhook = validate_webhook(index, table.into_inner())
            .map_err(|message| source.error(Some(span.clone()), message))?;
        if !names.insert(webhook.name.clone()) {
            let message = format!(
                "two webhooks are named {:?}: give each a distinct name",
                webhook.name
            );
            return Err(source.error(Some(span), message));
        }
        webhooks.push(webhook);
    }
    Ok(AlertsConfig {
        syslog: raw.syslog.unwrap_or(default::SYSLOG),
        syslog_socket: raw
            .syslog_socket
            .map_or_else(|| PathBuf::from(default::SYSLOG_SOCKET), |p| p.0),
        syslog_facility: raw
            .syslog_facility
            .map_or(default::SYSLOG_FACILITY, |f| f.0),
        grace: raw.grace.map_or(default::GRACE, |d| d.0),
        resolve_after: raw.resolve_after.map_or(default::RESOLVE_AFTER, |d| d.0),
        escalate_after: raw.escalate_after.map_or(default::ESCALATE_AFTER, |d| d.0),
        escalate_failures: raw
            .escalate_failures
            .map_or(default::ESCALATE_FAILURES, |n| n.0),
        webhooks,
    })
}

/// One `[[alerts.webhook]]` table; the error names it by its position.
fn validate_webhook(index: usize, raw: RawWebhook) -> Result<WebhookConfig, String> {
    let which = format!("webhook {}", index + 1);
    let Some(WebhookUrl { url, host }) = raw.url else {
        return Err(format!(
            "{which} has no url: url = \"https://...\" is required"
        ));
    };
    let format = raw.format.map_or(default::WEBHOOK_FORMAT, |f| f.0);
    let routing_key = match (raw.routing_key, raw.routing_key_file) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "{which} sets both routing_key and routing_key_file: keep one"
            ));
        }
        (Some(Text(key)), None) => Some(key),
        (None, Some(SecretFile(key))) => Some(key),
        (None, None) => None,
    };
    if format == WebhookFormat::PagerDuty && routing_key.as_deref().is_none_or(str::is_empty) {
        return Err(format!(
            "{which} has format \"pagerduty\" but no routing_key or routing_key_file: the Events API needs the integration key"
        ));
    }
    let mut headers = raw.headers.map_or_else(Vec::new, |h| h.0);
    for (name, SecretFile(value)) in raw.header_files.map_or_else(Vec::new, |h| h.0) {
        if headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(&name)) {
            return Err(format!(
                "{which} sets header {name} in both headers and header_files"
            ));
        }
        if HeaderValue::from_str(&value).is_err() {
            return Err(format!(
                "{which}: the file for header {name} holds a control character or newline"
            ));
        }
        headers.push((name, value));
    }
    Ok(WebhookConfig {
        name: raw.name.map_or(host, |n| n.0),
        url,
        format,
        min_severity: raw
            .min_severity
            .map_or(default::WEBHOOK_MIN_SEVERITY, |s| s.0),
        escalation_only: raw.escalation_only.unwrap_or(false),
        timeout: raw.timeout.map_or(default::WEBHOOK_TIMEOUT, |d| d.0),
        headers,
        routing_key,
        retries: raw.retries.map_or(default::WEBHOOK_RETRIES, |n| n.0),
        retry_backoff: raw
            .retry_backoff
            .map_or(default::WEBHOOK_RETRY_BACKOFF, |d| d.0),
        queue: raw.queue.map_or(default::WEBHOOK_QUEUE, |n| n.get()),
    })
}

/// Primaries (at least one) and backups, none listed twice.
fn validate_endpoints(
    name: &str,
    endpoints: Option<Spanned<Vec<EndpointUrl>>>,
    backup: Option<Spanned<Vec<EndpointUrl>>>,
    table_span: &Range<usize>,
    source: &Source,
) -> Result<(Vec<Endpoint>, Vec<Endpoint>), ConfigError> {
    let endpoints = match endpoints {
        None => {
            let message =
                format!("pool {name} has no endpoints: endpoints = [\"wss://...\"] is required");
            return Err(source.error(Some(table_span.clone()), message));
        }
        Some(list) if list.get_ref().is_empty() => {
            let message = format!(
                "pool {name} has an empty endpoints list: at least one primary is required"
            );
            return Err(source.error(Some(list.span()), message));
        }
        Some(list) => list,
    };
    let backup = backup.unwrap_or_else(|| Spanned::new(0..0, Vec::new()));
    // The same host, port and resource however the URL spells them.
    let mut seen = HashSet::new();
    for list in [&endpoints, &backup] {
        for EndpointUrl(e) in list.get_ref() {
            let host = e.host.to_ascii_lowercase();
            if !seen.insert((e.tls, host, e.port, e.resource.clone())) {
                let message = format!("endpoint {e} is listed twice in pool {name}");
                return Err(source.error(Some(list.span()), message));
            }
        }
    }
    let unwrap = |list: Spanned<Vec<EndpointUrl>>| list.into_inner().into_iter().map(|e| e.0);
    Ok((unwrap(endpoints).collect(), unwrap(backup).collect()))
}

/// Where a pool's table and its path are, for the checks across pools.
struct PoolSpans {
    table: Range<usize>,
    path: Range<usize>,
}

fn validate_pool(
    name: String,
    table: Spanned<RawPool>,
    source: &Source,
) -> Result<(PoolConfig, PoolSpans), ConfigError> {
    let table_span = table.span();
    let raw = table.into_inner();
    let fail = |span: Range<usize>, message: String| Err(source.error(Some(span), message));

    let (path, path_span) = match raw.path {
        Some(path) => (path.get_ref().0.clone(), path.span()),
        None => (format!("/{name}"), table_span.clone()),
    };

    let (endpoints, backup) =
        validate_endpoints(&name, raw.endpoints, raw.backup, &table_span, source)?;

    let min = raw.min.as_ref().map_or(default::MIN, |m| m.get_ref().get());
    let max = raw.max.as_ref().map_or(default::MAX, |m| m.get_ref().get());
    if max < min {
        let span = raw.max.or(raw.min).map_or(table_span.clone(), |s| s.span());
        return fail(
            span,
            format!("max {max} is less than min {min} in pool {name}"),
        );
    }

    let backoff_base = raw
        .backoff_base
        .as_ref()
        .map_or(default::BACKOFF_BASE, |d| d.get_ref().0);
    let backoff_max = raw
        .backoff_max
        .as_ref()
        .map_or(default::BACKOFF_MAX, |d| d.get_ref().0);
    if backoff_max < backoff_base {
        let span = raw
            .backoff_max
            .or(raw.backoff_base)
            .map_or(table_span, |s| s.span());
        let message = format!(
            "backoff_max {} is less than backoff_base {} in pool {name}",
            format_duration(backoff_max),
            format_duration(backoff_base)
        );
        return fail(span, message);
    }

    let weights = match raw.weights {
        None => vec![1; endpoints.len()],
        Some(list) if list.get_ref().len() != endpoints.len() => {
            let message = format!(
                "weights has {} entries but pool {name} has {} endpoints: one weight per primary, in order",
                list.get_ref().len(),
                endpoints.len()
            );
            return fail(list.span(), message);
        }
        Some(list) => list.into_inner().into_iter().map(|w| w.0).collect(),
    };

    let flap_suppress = raw
        .flap_suppress
        .as_ref()
        .map_or(default::FLAP_SUPPRESS, |n| n.get_ref().0);
    let flap_reuse = raw
        .flap_reuse
        .as_ref()
        .map_or(default::FLAP_REUSE, |n| n.get_ref().0);
    if flap_reuse >= flap_suppress {
        let span = raw
            .flap_reuse
            .map(|s| s.span())
            .or(raw.flap_suppress.map(|s| s.span()))
            .unwrap_or(table_span.clone());
        let message = format!(
            "flap_reuse {flap_reuse} must be below flap_suppress {flap_suppress} in pool {name}"
        );
        return fail(span, message);
    }

    let heartbeat_timeout = raw
        .heartbeat_timeout
        .map_or(default::HEARTBEAT_TIMEOUT, |d| d.0);
    let heartbeat_timeout_min = match raw.heartbeat_timeout_min {
        None => heartbeat_timeout,
        Some(min) if min.get_ref().0 > heartbeat_timeout => {
            let message = format!(
                "heartbeat_timeout_min {} is above heartbeat_timeout {} in pool {name}",
                format_duration(min.get_ref().0),
                format_duration(heartbeat_timeout)
            );
            return fail(min.span(), message);
        }
        Some(min) => min.into_inner().0,
    };

    let pool = PoolConfig {
        path,
        endpoints,
        backup,
        min,
        max,
        connect_timeout: raw
            .connect_timeout
            .map_or(default::CONNECT_TIMEOUT, |d| d.0),
        heartbeat_interval: raw
            .heartbeat_interval
            .map_or(default::HEARTBEAT_INTERVAL, |d| d.0),
        heartbeat_timeout,
        heartbeat_timeout_min,
        write_timeout: raw.write_timeout.map_or(default::WRITE_TIMEOUT, |d| d.0),
        backoff_base,
        backoff_max,
        backoff_reset: raw.backoff_reset.map_or(default::BACKOFF_RESET, |d| d.0),
        down_after: raw.down_after.map_or(default::DOWN_AFTER, |n| n.0),
        max_connecting: raw
            .max_connecting
            .map_or(default::MAX_CONNECTING, |n| n.get()),
        headers: raw.headers.map_or_else(Vec::new, |h| h.0),
        on_connect: raw
            .on_connect
            .unwrap_or_default()
            .into_iter()
            .map(|t| t.0)
            .collect(),
        max_message_size: raw
            .max_message_size
            .map_or(default::MAX_MESSAGE_SIZE, |s| s.0),
        ca: raw.ca_file.map(|c| c.0),
        client_token: raw.client_token.map(|t| t.0).filter(|t| !t.is_empty()),
        spare: raw.spare.map_or(default::SPARE, |n| n.get()),
        lease_timeout: raw.lease_timeout.map_or(default::LEASE_TIMEOUT, |d| d.0),
        replay: raw
            .replay
            .unwrap_or_default()
            .into_iter()
            .map(|t| t.0)
            .filter(|t| !t.is_empty())
            .collect(),
        heal_timeout: raw.heal_timeout.map_or(default::HEAL_TIMEOUT, |d| d.0),
        heal_buffer: raw.heal_buffer.map_or(default::HEAL_BUFFER, |s| s.0),
        heal_notice: raw.heal_notice.unwrap_or(false),
        delivery: raw.delivery.map_or(default::DELIVERY, |d| d.0),
        reuse: raw.reuse.unwrap_or(false),
        idle_timeout: raw.idle_timeout.map_or(default::IDLE_TIMEOUT, |d| d.0),
        weights,
        slow_start: raw.slow_start.map_or(default::SLOW_START, |d| d.0),
        rtt_alert: raw.rtt_alert.map_or(default::RTT_ALERT, |d| d.0),
        flap_half_life: raw.flap_half_life.map_or(default::FLAP_HALF_LIFE, |d| d.0),
        flap_suppress,
        flap_reuse,
        name,
    };
    let spans = PoolSpans {
        table: table_span,
        path: path_span,
    };
    Ok((pool, spans))
}

// ----------------------------------------------------------------------------------
// The raw layer: the TOML as written. key_names() is derived from these structs.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    daemon: Option<RawDaemon>,
    alerts: Option<RawAlerts>,
    pools: Option<BTreeMap<PoolName, Spanned<RawPool>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    state_dir: Option<AbsolutePath>,
    max_connections: Option<Spanned<Count<1>>>,
    listen: Option<Spanned<Address>>,
    admin: Option<Spanned<Address>>,
    admin_token: Option<Text>,
    admin_token_file: Option<SecretFile>,
    drain_timeout: Option<Interval<true>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    syslog: Option<bool>,
    syslog_socket: Option<AbsolutePath>,
    syslog_facility: Option<FacilityName>,
    grace: Option<Interval<true>>,
    resolve_after: Option<Interval<false>>,
    escalate_after: Option<Interval<true>>,
    escalate_failures: Option<Count<0>>,
    webhook: Option<Vec<Spanned<RawWebhook>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    name: Option<Text>,
    url: Option<WebhookUrl>,
    format: Option<FormatName>,
    min_severity: Option<SeverityName>,
    escalation_only: Option<bool>,
    timeout: Option<Interval<false>>,
    headers: Option<Headers>,
    header_files: Option<HeaderFiles>,
    routing_key: Option<Text>,
    routing_key_file: Option<SecretFile>,
    retries: Option<Count<0>>,
    retry_backoff: Option<Interval<false>>,
    queue: Option<Count<1>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    path: Option<Spanned<PoolPath>>,
    endpoints: Option<Spanned<Vec<EndpointUrl>>>,
    backup: Option<Spanned<Vec<EndpointUrl>>>,
    min: Option<Spanned<Count<1>>>,
    max: Option<Spanned<Count<1>>>,
    connect_timeout: Option<Interval<false>>,
    heartbeat_interval: Option<Interval<false>>,
    heartbeat_timeout: Option<Interval<false>>,
    heartbeat_timeout_min: Option<Spanned<Interval<false>>>,
    write_timeout: Option<Interval<false>>,
    backoff_base: Option<Spanned<Interval<false>>>,
    backoff_max: Option<Spanned<Interval<false>>>,
    backoff_reset: Option<Interval<true>>,
    down_after: Option<Count<1>>,
    max_connecting: Option<Count<1>>,
    headers: Option<Headers>,
    on_connect: Option<Vec<Text>>,
    max_message_size: Option<Size<1024>>,
    ca_file: Option<CaFile>,
    client_token: Option<Text>,
    spare: Option<Count<0>>,
    lease_timeout: Option<Interval<false>>,
    replay: Option<Vec<Text>>,
    heal_timeout: Option<Interval<false>>,
    heal_buffer: Option<Size<1024>>,
    heal_notice: Option<bool>,
    delivery: Option<DeliveryName>,
    reuse: Option<bool>,
    idle_timeout: Option<Interval<false>>,
    weights: Option<Spanned<Vec<Count<1>>>>,
    slow_start: Option<Interval<true>>,
    rtt_alert: Option<Interval<true>>,
    flap_half_life: Option<Interval<false>>,
    flap_suppress: Option<Spanned<Count<1>>>,
    flap_reuse: Option<Spanned<Count<0>>>,
}

// ----------------------------------------------------------------------------------
// Newtypes that validate while deserializing, so toml's error carries the span.

/// Separates an error's head from its detail; [`describe`] puts " for KEY" between.
const KEY_SLOT: char = '\u{0}';

fn keyed(head: impl fmt::Display, detail: impl fmt::Display) -> String {
    format!("{head}{KEY_SLOT}{detail}")
}

/// Deserializes a string, expands `${VAR}` and hands (as written, expanded) to `convert`.
fn string_value<'de, D, T, F>(d: D, expecting: &'static str, convert: F) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    F: FnOnce(&str, String) -> Result<T, String>,
{
    struct StringVisitor<F>(&'static str, F);
    impl<'de, T, F: FnOnce(&str, String) -> Result<T, String>> Visitor<'de> for StringVisitor<F> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_str<E: de::Error>(self, raw: &str) -> Result<T, E> {
            let expanded = expand_env(raw).map_err(E::custom)?;
            (self.1)(raw, expanded).map_err(E::custom)
        }
    }
    d.deserialize_str(StringVisitor(expecting, convert))
}

/// Any string value, `${VAR}` expanded.
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_value(d, "a string", |_, s| Ok(Text(s)))
    }
}

struct AbsolutePath(PathBuf);

impl<'de> Deserialize<'de> for AbsolutePath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_value(d, "an absolute path", |_, s| {
            let path = PathBuf::from(&s);
            if path.is_absolute() {
                Ok(AbsolutePath(path))
            } else {
                Err(keyed(
                    format!("invalid path {s:?}"),
                    "must be absolute: the daemon runs in /",
                ))
            }
        })
    }
}

/// A PEM bundle of CA certificates, read and checked while the configuration loads so
/// that `wspoold check` catches a missing or broken file.
struct CaFile(CaBundle);

impl<'de> Deserialize<'de> for CaFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        string_value(d, "an absolute path to a PEM file", |_, s| {
            let path = PathBuf::from(&s);
            if !path.is_absolute() {
                return Err(keyed(
                    format!("invalid path {s:?}"),
                    "must be absolute: the daemon runs in /",
                ));
            }
            let certs = CertificateDer::pem_file_iter(&path)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|e| keyed(format!("cannot read CA file {s:?}"), e))?;
            if certs.is_empty() {
                return Err(keyed(
                    format!("no certificate in CA file {s:?}"),
                    "expected PEM blocks \"-----BEGIN CERTIFICATE-----\"",
                ));
            }
            let mut store = rustls::RootCertStore::empty();
            let (_, unusable) = store.add_parsable_certificates(certs.iter().cloned());
            if unusable > 0 {
                return Err(keyed(
                    format!("invalid CA file {s:?}"),
                    format!(
                        "{unusable} of {} certificate(s) cannot be used as a trust anchor",
                        certs.len()
                    ),
                ));
            }
            Ok(CaFile(CaBundle { path, certs }))
        })
    }
}

struct Address(SocketAddr);

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_value(d, "an address such as \"127.0.0.1:9400\"", |_, s| {
            s.parse().map(Address).map_err(|_| {
                keyed(
                    format!("invalid address {s:?}"),
                    "expected IP:PORT, e.g. \"127.0.0.1:9400\" or \"[::1]:9400\"",
                )
            })
        })
    }
}

/// Facility names as syslog.conf(5) spells them.
const FACILITIES: [(&str, Facility); 20] = [
    ("kern", Facility::LOG_KERN),
    ("user", Facility::LOG_USER),
    ("mail", Facility::LOG_MAIL),
    ("daemon", Facility::LOG_DAEMON),
    ("auth", Facility::LOG_AUTH),
    ("syslog", Facility::LOG_SYSLOG),
    ("lpr", Facility::LOG_LPR),
    ("news", Facility::LOG_NEWS),
    ("uucp", Facility::LOG_UUCP),
    ("cron", Facility::LOG_CRON),
    ("authpriv", Facility::LOG_AUTHPRIV),
    ("ftp", Facility::LOG_FTP),
    ("local0", Facility::LOG_LOCAL0),
    ("local1", Facility::LOG_LOCAL1),
    ("local2", Facility::LOG_LOCAL2),
    ("local3", Facility::LOG_LOCAL3),
    ("local4", Facility::LOG_LOCAL4),
    ("local5", Facility::LOG_LOCAL5),
    ("local6", Facility::LOG_LOCAL6),
    ("local7", Facility::LOG_LOCAL7),
];

/// The configuration name of a facility, e.g. `"daemon"`, for log lines and status.
pub fn facility_name(facility: Facility) -> &'static str {
    FACILITIES
        .iter()
        .find(|(_, f)| *f as i32 == facility as i32)
        .map_or("unknown", |(name, _)| name)
}

struct FacilityName(Facility);

impl<'de> Deserialize<'de> for FacilityName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_value(
            d,
            "a syslog facility such as \"daemon\"",
            |_, s| match FACILITIES.iter().find(|(name, _)| *name == s) {
                Some((_, facility)) => Ok(FacilityName(*facility)),
                None => {
                    let names: Vec<&str> = FACILITIES.iter().map(|(name, _)| *name).collect();
                    let detail = format!("expected one of {}", names.join(", "));
                    Err(keyed(format!("unknown syslog facility {s:?}"), detail))
                }
            },
        )
    }
}

struct DeliveryName(Delivery);

impl<'de> Deserialize<'de> for DeliveryName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_value(d, "\"at-least-once\" or \"at-most-once\"", |_, s| {
            match s.as_str() {
                "at-least-once" => Ok(DeliveryName(Delivery::AtLeastOnce)),
                "at-most-once" => Ok(DeliveryName(Delivery::AtMostOnce)),
                _ => Err(keyed(
                    format!("unknown delivery {s:?}"),
                    "expected \"at-least-once\" or \"at-most-once\"",
                )),
            }
        })
    }
}

/// A webhook's `http://` or `https://` URL, and the host and port it names.
struct WebhookUrl {
    url: String,
    host: String,
}

impl<'de> Deserialize<'de> for WebhookUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Errors show the URL as written: a token in it may come from ${VAR}.
        string_value(d, "an http:// or https:// URL", |raw, url| {
            let head = format!("invalid webhook URL {raw:?}");
            let uri: Uri = url.parse().map_err(|e| keyed(&head, e))?;
            let scheme = uri.scheme_str().unwrap_or_default();
            if scheme != "http" && scheme != "https" {
                return Err(keyed(head, "expected http:// or https://"));
            }
            let Some(authority) = uri.authority() else {
                return Err(keyed(head, "no host"));
            };
            let host = authority.as_str().rsplit('@').next().unwrap_or_default();
            Ok(WebhookUrl {
                host: host.to_string(),
                url,
            })
        })
    }
}

struct FormatName(WebhookFormat);

impl<'de> Deserialize<'de> for FormatName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const EXPECTED: &str = "expected \"json\", \"slack\", \"pagerduty\" or \"alertmanager\"";
        string_value(d, "a webhook format", |_, s| {
            let format = match s.as_str() {
                "json" => WebhookFormat::Json,
                "slack" => WebhookFormat::Slack,
                "pagerduty" => WebhookFormat::PagerDuty,
                "alertmanager" => WebhookFormat::Alertmanager,
                _ => return Err(keyed(format!("unknown webhook format {s:?}"), EXPECTED)),
            };
            Ok(FormatName(format))
        })
    }
}

struct SeverityName(Severity);

impl<'de> Deserialize<'de> for SeverityName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_value(d, "a severity", |_, s| {
            let severity = match s.as_str() {
                "info" => Severity::Info,
                "warning" => Severity::Warning,
                "critical" => Severity::Critical,
                _ => {
                    return Err(keyed(
                        format!("unknown severity {s:?}"),
                        "expected \"info\", \"warning\" or \"critical\"",
                    ));
                }
            };
            Ok(SeverityName(severity))
        })
    }
}

/// A secret read from a file while the configuration loads (so `wspoold check` finds a
/// missing one); surrounding whitespace and the final newline are dropped. Errors name
/// the file, never its contents.
struct SecretFile(String);

impl<'de> Deserialize<'de> for SecretFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_value(d, "an absolute path to a file", |_, s| {
            let path = PathBuf::from(&s);
            if !path.is_absolute() {
                return Err(keyed(
                    format!("invalid path {s:?}"),
                    "must be absolute: the daemon runs in /",
                ));
            }
            let text = std::fs::read_to_string(&path)
                .map_err(|e| keyed(format!("cannot read secret file {s:?}"), e))?;
            let secret = text.trim();
            if secret.is_empty() {
                return Err(keyed(
                    format!("secret file {s:?} is empty"),
                    "expected the secret",
                ));
            }
            Ok(SecretFile(secret.to_string()))
        })
    }
}

/// `header_files`: header names and the files holding their values.
struct HeaderFiles(Vec<(String, SecretFile)>);

impl<'de> Deserialize<'de> for HeaderFiles {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FilesVisitor;
        impl<'de> Visitor<'de> for FilesVisitor {
            type Value = HeaderFiles;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table of header names and file paths")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HeaderFiles, A::Error> {
                let mut files = Vec::new();
                while let Some(HeaderKey(name)) = map.next_key()? {
                    files.push((name, map.next_value()?));
                }
                Ok(HeaderFiles(files))
            }
        }
        d.deserialize_map(FilesVisitor)
    }
}

/// A duration; `ZERO_OK` says whether `"0s"` is allowed.
struct Interval<const ZERO_OK: bool>(Duration);

impl<'de, const ZERO_OK: bool> Deserialize<'de> for Interval<ZERO_OK> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_value(
            d,
            "a duration such as \"5s\"",
            |_, s| match duration_value(&s) {
                Ok(d) if d.is_zero() && !ZERO_OK => Err(keyed(
                    format!("invalid duration {s:?}"),
                    "must be greater than zero",
                )),
                Ok(d) => Ok(Interval(d)),
                Err(detail) => Err(keyed(format!("invalid duration {s:?}"), detail)),
            },
        )
    }
}

/// A byte size, a TOML integer or a string such as `"64KiB"`; at least `MIN`.
struct Size<const MIN: usize>(usize);

impl<'de, const MIN: usize> Deserialize<'de> for Size<MIN> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SizeVisitor<const MIN: usize>;
        impl<const MIN: usize> SizeVisitor<MIN> {
            fn check(bytes: usize, shown: &str) -> Result<Size<MIN>, String> {
                if bytes < MIN {
                    let detail = format!("must be at least {}", format_size(MIN));
                    return Err(keyed(format!("invalid size {shown}"), detail));
                }
                Ok(Size(bytes))
            }
        }
        impl<'de, const MIN: usize> Visitor<'de> for SizeVisitor<MIN> {
            type Value = Size<MIN>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"64KiB\" or a number of bytes")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size<MIN>, E> {
                match usize::try_from(v) {
                    Ok(bytes) => Self::check(bytes, &v.to_string()).map_err(E::custom),
                    Err(_) => Err(E::custom(keyed(
                        format!("invalid size {v}"),
                        "must not be negative",
                    ))),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size<MIN>, E> {
                let bytes = usize::try_from(v)
                    .map_err(|_| E::custom(keyed(format!("invalid size {v}"), "too large")))?;
                Self::check(bytes, &v.to_string()).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, raw: &str) -> Result<Size<MIN>, E> {
                let s = expand_env(raw).map_err(E::custom)?;
                let bytes = size_value(&s)
                    .map_err(|detail| E::custom(keyed(format!("invalid size {s:?}"), detail)))?;
                Self::check(bytes, &format!("{s:?}")).map_err(E::custom)
            }
        }
        d.deserialize_any(SizeVisitor::<MIN>)
    }
}

/// A whole number from `MIN` to `u32::MAX`.
struct Count<const MIN: u32>(u32);

impl<const MIN: u32> Count<MIN> {
    fn get(&self) -> usize {
        self.0 as usize
    }
}

impl<'de, const MIN: u32> Deserialize<'de> for Count<MIN> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct CountVisitor<const MIN: u32>;
        impl<'de, const MIN: u32> Visitor<'de> for CountVisitor<MIN> {
            type Value = Count<MIN>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a whole number of at least {MIN}")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Count<MIN>, E> {
                let head = format!("invalid number {v}");
                if v < i64::from(MIN) {
                    return Err(E::custom(keyed(head, format!("must be at least {MIN}"))));
                }
                let too_large =
                    |_| E::custom(keyed(&head, format!("must be at most {}", u32::MAX)));
                u32::try_from(v).map(Count).map_err(too_large)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Count<MIN>, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
        }
        d.deserialize_u64(CountVisitor::<MIN>)
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct PoolName(String);

impl<'de> Deserialize<'de> for PoolName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if name.is_empty() || !name.chars().all(valid) {
            let detail = "a pool name is letters, digits, - and _";
            return Err(de::Error::custom(keyed(
                format!("invalid pool name {name:?}"),
                detail,
            )));
        }
        Ok(PoolName(name))
    }
}

struct PoolPath(String);

impl<'de> Deserialize<'de> for PoolPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_value(d, "a path such as \"/market\"", |_, s| {
            let bad = |c: char| c == '?' || c == '#' || c.is_whitespace() || c.is_control();
            if s.starts_with('/') && !s.contains(bad) {
                Ok(PoolPath(s))
            } else {
                Err(keyed(
                    format!("invalid path {s:?}"),
                    "must start with / and contain no ?, # or spaces",
                ))
            }
        })
    }
}

struct EndpointUrl(Endpoint);

impl<'de> Deserialize<'de> for EndpointUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Errors show the URL as written, not expanded: expansion may hold a secret.
        string_value(d, "a ws:// or wss:// URL", |raw, url| {
            parse_endpoint(&url)
                .map(EndpointUrl)
                .map_err(|detail| keyed(format!("invalid endpoint URL {raw:?}"), detail))
        })
    }
}

/// Headers the WebSocket handshake writes itself.
const HANDSHAKE_HEADERS: [&str; 5] = [
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
];

/// The `headers` table, in file order.
struct Headers(Vec<(String, String)>);

struct HeaderKey(String);

struct HeaderText(String);

impl<'de> Deserialize<'de> for HeaderKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            let detail = "a header name is letters, digits and !#$%&'*+-.^_`|~";
            return Err(de::Error::custom(keyed(
                format!("invalid header name {name:?}"),
                detail,
            )));
        }
        if HANDSHAKE_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            let detail = "the WebSocket handshake sets it";
            return Err(de::Error::custom(keyed(
                format!("header {name} cannot be set"),
                detail,
            )));
        }
        Ok(HeaderKey(name))
    }
}

impl<'de> Deserialize<'de> for HeaderText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The value may hold a secret: the error does not show it.
        string_value(d, "a string", |_, value| {
            match HeaderValue::from_str(&value) {
                Ok(_) => Ok(HeaderText(value)),
                Err(_) => Err(keyed(
                    "invalid header value",
                    "it holds a control character or newline (after ${VAR} expansion)",
                )),
            }
        })
    }
}

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct HeadersVisitor;
        impl<'de> Visitor<'de> for HeadersVisitor {
            type Value = Headers;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table of header names and values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Headers, A::Error> {
                let mut headers = Vec::new();
                let mut seen = HashSet::new();
                while let Some(HeaderKey(name)) = map.next_key()? {
                    let HeaderText(value) = map.next_value()?;
                    if !seen.insert(name.to_ascii_lowercase()) {
                        let message =
                            format!("header {name} is set twice (names are case-insensitive)");
                        return Err(de::Error::custom(message));
                    }
                    headers.push((name, value));
                }
                Ok(Headers(headers))
            }
        }
        d.deserialize_map(HeadersVisitor)
    }
}

// ----------------------------------------------------------------------------------
// Error messages: toml's, reworded to name the key.

/// The key path toml attached to an error. toml only shows it in `Display`, and only
/// when the error has no input to quote.
fn error_keys(err: &toml::de::Error) -> Vec<String> {
    let mut bare = err.clone();
    bare.set_input(None);
    let text = bare.to_string();
    let path = text
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("in `")?.strip_suffix('`'));
    path.map_or_else(Vec::new, |p| p.split('.').map(str::to_string).collect())
}

fn describe(message: &str, keys: &[String]) -> String {
    let key = keys.last();
    if let Some((head, detail)) = message.split_once(KEY_SLOT) {
        return match key {
            Some(key) => format!("{head} for {key}: {detail}"),
            None => format!("{head}: {detail}"),
        };
    }
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let table = if keys.is_empty() {
            String::new()
        } else {
            format!(" in [{}]", keys.join("."))
        };
        return match rest.split_once(", ") {
            Some((field, expected)) => format!("unknown key {field}{table}, {expected}"),
            None => format!("unknown key {rest}{table}"),
        };
    }
    for kind in ["invalid type", "invalid value", "invalid length"] {
        if let (Some(rest), Some(key)) = (message.strip_prefix(kind), key) {
            return format!("{kind} for {key}{rest}");
        }
    }
    message.to_string()
}

// ----------------------------------------------------------------------------------
// ${VAR} expansion.

thread_local! {
    /// The variables of the parse under way on this thread; see `with_env`.
    static ENV: RefCell<Option<HashMap<String, String>>> = const { RefCell::new(None) };
}

fn with_env<T>(vars: HashMap<String, String>, f: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            ENV.with(|env| env.borrow_mut().take());
        }
    }
    ENV.with(|env| *env.borrow_mut() = Some(vars));
    let _reset = Reset;
    f()
}

/// Looks up every variable that a string value of `document` refers to.
fn referenced_vars(
    document: &toml::Table,
    env: &dyn Fn(&str) -> Option<String>,
) -> HashMap<String, String> {
    fn walk(
        value: &toml::Value,
        found: &mut HashMap<String, String>,
        env: &dyn Fn(&str) -> Option<String>,
    ) {
        match value {
            toml::Value::String(s) => {
                let _ = expand_with(s, &mut |name| {
                    if let Some(value) = env(name) {
                        found.insert(name.to_string(), value);
                    }
                    Some(String::new())
                });
            }
            toml::Value::Array(items) => items.iter().for_each(|v| walk(v, found, env)),
            toml::Value::Table(table) => table.values().for_each(|v| walk(v, found, env)),
            _ => {}
        }
    }
    let mut found = HashMap::new();
    document.values().for_each(|v| walk(v, &mut found, env));
    found
}

/// Expands with the variables of the parse under way.
fn expand_env(s: &str) -> Result<String, String> {
    ENV.with(|env| {
        let env = env.borrow();
        expand_with(s, &mut |name| env.as_ref()?.get(name).cloned())
    })
}

/// Expands `${NAME}`; `$$` is a literal `$`, and so is a `$` before anything else.
fn expand_with(s: &str, lookup: &mut dyn FnMut(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                return Err(keyed(
                    "unterminated ${",
                    "write ${NAME}, or $$ for a literal $",
                ));
            };
            let name = &after[..end];
            let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                let detail = "names are letters, digits and _, not starting with a digit";
                return Err(keyed(format!("invalid variable name {name:?}"), detail));
            }
            match lookup(name) {
                Some(value) => out.push_str(&value),
                None => {
                    let detail = "set it in the daemon's environment, or write $$ for a literal $";
                    return Err(keyed(format!("unset environment variable {name}"), detail));
                }
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

// ----------------------------------------------------------------------------------
// Durations, sizes and URLs.

const DURATION_FORMAT: &str = "expected a number and a unit (ms, s, m, h), e.g. \"500ms\"";

/// Parses `"500ms"`, `"5s"`, `"2m"`, `"1h"`, `"1.5s"`, and sums like `"1m30s"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    duration_value(s).map_err(|detail| format!("invalid duration {s:?}: {detail}"))
}

fn duration_value(s: &str) -> Result<Duration, String> {
    if s.starts_with('-') {
        return Err("must not be negative".to_string());
    }
    if s.is_empty() {
        return Err(DURATION_FORMAT.to_string());
    }
    let mut nanos: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_end);
        let unit_end = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let scale: u128 = match unit {
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(DURATION_FORMAT.to_string()),
        };
        let part = scaled(number, scale).ok_or(DURATION_FORMAT)?;
        nanos = nanos.checked_add(part).ok_or("too large")?;
        rest = after;
    }
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| "too large")?;
    Ok(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// `number` (digits, optionally a fraction) times `scale`, rounded down.
fn scaled(number: &str, scale: u128) -> Option<u128> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || fraction.len() > 18 || (number.contains('.') && fraction.is_empty()) {
        return None;
    }
    let whole: u128 = whole.parse().ok()?;
    let mut value = whole.checked_mul(scale)?;
    if !fraction.is_empty() {
        let digits: u128 = fraction.parse().ok()?;
        value =
            value.checked_add(digits.checked_mul(scale)? / 10u128.pow(fraction.len() as u32))?;
    }
    Some(value)
}

/// Formats a duration for log lines, in a form [`parse_duration`] reads back:
/// `"2s"`, `"500ms"`, `"1m30s"`, `"1.5s"`.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_string();
    }
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    if secs == 0 {
        return format!(
            "{}ms",
            decimal(u64::from(nanos / 1_000_000), nanos % 1_000_000, 6)
        );
    }
    let mut out = String::new();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || nanos > 0 {
        out.push_str(&format!("{}s", decimal(s, nanos, 9)));
    }
    out
}

/// `whole.fraction`, the fraction `digits` wide with trailing zeros dropped.
fn decimal(whole: u64, fraction: u32, digits: usize) -> String {
    if fraction == 0 {
        return whole.to_string();
    }
    let fraction = format!("{fraction:0digits$}");
    format!("{whole}.{}", fraction.trim_end_matches('0'))
}

const SIZE_FORMAT: &str =
    "expected a number of bytes or a number and a unit (KiB, MiB, GiB, KB, MB, GB), e.g. \"64KiB\"";

/// Parses `"512"` (bytes), `"64KiB"`, `"1MiB"`, `"1GiB"`, and decimal `"KB"`, `"MB"`,
/// `"GB"`; units are case-insensitive.
pub fn parse_size(s: &str) -> Result<usize, String> {
    size_value(s).map_err(|detail| format!("invalid size {s:?}: {detail}"))
}

fn size_value(s: &str) -> Result<usize, String> {
    if s.starts_with('-') {
        return Err("must not be negative".to_string());
    }
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(number_end);
    let scale: u128 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" if !number.contains('.') => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(SIZE_FORMAT.to_string()),
    };
    let bytes = scaled(number, scale).ok_or(SIZE_FORMAT)?;
    usize::try_from(bytes).map_err(|_| "too large".to_string())
}

/// Formats a size in the largest binary unit that divides it: `"16MiB"`, `"1500B"`.
pub fn format_size(bytes: usize) -> String {
    for (unit, scale) in [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= scale && bytes.is_multiple_of(scale) {
            return format!("{}{unit}", bytes / scale);
        }
    }
    format!("{bytes}B")
}

fn parse_endpoint(url: &str) -> Result<Endpoint, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e: tungstenite::http::uri::InvalidUri| e.to_string())?;
    let tls = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("ws") => false,
        Some(s) if s.eq_ignore_ascii_case("wss") => true,
        Some(s) => {
            return Err(format!(
                "scheme {s}:// is not supported; expected ws:// or wss://"
            ));
        }
        None => return Err("expected ws:// or wss:// and a host".to_string()),
    };
    let authority = uri.authority().ok_or("missing host")?;
    if authority.as_str().contains('@') {
        return Err("credentials in the URL are not supported; send them in headers".to_string());
    }
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err("missing host".to_string());
    }
    let port = match authority.port_u16() {
        Some(0) => return Err("port 0 cannot be connected to".to_string()),
        Some(port) => port,
        None if tls => 443,
        None => 80,
    };
    let resource = match uri.path_and_query().map(|pq| pq.as_str()) {
        None | Some("") => "/".to_string(),
        Some(pq) if pq.starts_with('/') => pq.to_string(),
        Some(pq) => format!("/{pq}"),
    };
    Ok(Endpoint {
        url: url.to_string(),
        tls,
        host: host.to_string(),
        port,
        resource,
    })
}

// ----------------------------------------------------------------------------------
// key_names(): read off the raw structs by a deserializer that only watches.

/// Every accepted key as `section.key`, with `*` for a pool's name: `"daemon.listen"`,
/// `"pools.*.min"`. Derived from the raw structs, so it cannot drift from the parser.
pub fn key_names() -> Vec<String> {
    fn walk(path: &mut Vec<usize>, keys: &mut Vec<String>) {
        let found = RefCell::new(None);
        let probe = Probe {
            path,
            names: Vec::new(),
            found: &found,
        };
        let _ = RawConfig::deserialize(probe);
        match found.into_inner() {
            Some(Shape::Table(fields)) => {
                for i in 0..fields {
                    path.push(i);
                    walk(path, keys);
                    path.pop();
                }
            }
            Some(Shape::Key(name)) => keys.push(name),
            None => {}
        }
    }
    let mut keys = Vec::new();
    walk(&mut Vec::new(), &mut keys);
    keys
}

/// What a probe found at the end of its path.
enum Shape {
    /// A struct with this many fields.
    Table(usize),
    /// A value; its dotted name.
    Key(String),
}

/// A deserializer that walks into one field per struct, as `path` says, and records what
/// it finds there. It is thrown away by an error once it knows: serde's derived visitor
/// can be fed one key but not asked for its fields without being consumed.
struct Probe<'a> {
    path: &'a [usize],
    names: Vec<&'static str>,
    found: &'a RefCell<Option<Shape>>,
}

/// The struct name `toml::Spanned` asks for; a probe passes through it.
const SPANNED: &str = "$__serde_spanned_private_Spanned";

impl Probe<'_> {
    fn stop(&self, shape: Shape) -> de::value::Error {
        *self.found.borrow_mut() = Some(shape);
        de::Error::custom("probe done")
    }
}

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        let mut names = self.names.clone();
        // A table of free-form keys (headers) is one key.
        while names.last() == Some(&"*") {
            names.pop();
        }
        Err(self.stop(Shape::Key(names.join("."))))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_seq(ProbeSeq(Some(self)))
    }

    fn deserialize_map<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Self::Error> {
        self.names.push("*");
        // Any plausible key: the key type may validate it.
        visitor.visit_map(ProbeMap {
            keys: vec!["x"],
            values: vec![Feed::Probe(self)],
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        mut self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        if name == SPANNED {
            let values = vec![Feed::Zero, Feed::Zero, Feed::Probe(self)];
            return visitor.visit_map(ProbeMap {
                keys: fields.to_vec(),
                values,
            });
        }
        let Some((&i, rest)) = self.path.split_first() else {
            return Err(self.stop(Shape::Table(fields.len())));
        };
        self.path = rest;
        self.names.push(fields[i]);
        visitor.visit_map(ProbeMap {
            keys: vec![fields[i]],
            values: vec![Feed::Probe(self)],
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf unit unit_struct tuple tuple_struct enum identifier ignored_any
    }
}

enum Feed<'a> {
    Zero,
    Probe(Probe<'a>),
}

/// Feeds `keys[i]` with `values[i]`, in order.
struct ProbeMap<'a> {
    keys: Vec<&'static str>,
    values: Vec<Feed<'a>>,
}

impl<'de> MapAccess<'de> for ProbeMap<'_> {
    type Error = de::value::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        if self.keys.is_empty() {
            return Ok(None);
        }
        let key = self.keys.remove(0);
        seed.deserialize(de::value::BorrowedStrDeserializer::new(key))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        match self.values.remove(0) {
            Feed::Zero => seed.deserialize(0u64.into_deserializer()),
            Feed::Probe(probe) => seed.deserialize(probe),
        }
    }
}

/// A sequence of one element.
struct ProbeSeq<'a>(Option<Probe<'a>>);

impl<'de> SeqAccess<'de> for ProbeSeq<'_> {
    type Error = de::value::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        self.0
            .take()
            .map(|probe| seed.deserialize(probe))
            .transpose()
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
