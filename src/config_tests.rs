//! Configuration parsing and validation: defaults, every error with its line and
//! column, durations, sizes, environment expansion, and the documented key set.

use super::*;

const ORIGIN: &str = "/etc/x.toml";

fn test_env(name: &str) -> Option<String> {
    match name {
        "TOKEN" => Some("s3cret".to_string()),
        "HOST" => Some("a.example.com".to_string()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse_with_env(text, ORIGIN, &test_env)
}

/// A configuration with one pool `p` and `extra` keys in it.
fn pool(extra: &str) -> Result<PoolConfig, ConfigError> {
    let text = format!("[pools.p]\nendpoints = [\"ws://a.test/\"]\n{extra}\n");
    parse(&text).map(|mut c| c.pools.remove(0))
}

/// (line, column, message) of the error `text` must produce.
fn error(text: &str) -> (usize, usize, String) {
    match parse(text) {
        Err(ConfigError::Invalid {
            origin,
            line: Some(line),
            column: Some(column),
            message,
        }) => {
            assert_eq!(origin, ORIGIN);
            (line, column, message)
        }
        other => panic!("expected an error with a location, got {other:?}"),
    }
}

/// The error of a pool `p` whose third line onwards is `extra`.
fn pool_error(extra: &str) -> (usize, usize, String) {
    error(&format!(
        "[pools.p]\nendpoints = [\"ws://a.test/\"]\n{extra}\n"
    ))
}

#[test]
fn empty_text_gives_every_default() {
    let config = parse("").unwrap();
    assert_eq!(config.origin, ORIGIN);
    assert_eq!(
        config.daemon,
        DaemonConfig {
            state_dir: PathBuf::from("/var/lib/wspoold"),
            max_connections: 4096,
            listen: "127.0.0.1:9400".parse().unwrap(),
            admin: "127.0.0.1:9401".parse().unwrap(),
            admin_token: None,
            drain_timeout: Duration::from_secs(30),
        }
    );
    assert_eq!(
        config.alerts,
        AlertsConfig {
            syslog: true,
            syslog_socket: PathBuf::from("/dev/log"),
            syslog_facility: Facility::LOG_DAEMON,
            grace: Duration::from_secs(5),
            resolve_after: Duration::from_secs(30),
            escalate_after: Duration::from_secs(300),
            escalate_failures: 10,
            webhooks: Vec::new(),
        }
    );
    assert!(config.pools.is_empty());
}

#[test]
fn pool_defaults() {
    let p = pool("").unwrap();
    assert_eq!(p.name, "p");
    assert_eq!(p.path, "/p");
    assert_eq!(p.endpoints, vec![Endpoint::parse("ws://a.test/").unwrap()]);
    assert!(p.backup.is_empty());
    assert_eq!((p.min, p.max), (2, 64));
    assert_eq!(p.connect_timeout, Duration::from_secs(5));
    assert_eq!(p.heartbeat_interval, Duration::from_secs(2));
    assert_eq!(p.heartbeat_timeout, Duration::from_secs(2));
    assert_eq!(p.write_timeout, Duration::from_secs(5));
    assert_eq!(p.backoff_base, Duration::from_millis(100));
    assert_eq!(p.backoff_max, Duration::from_secs(30));
    assert_eq!(p.backoff_reset, Duration::from_secs(30));
    assert_eq!(p.down_after, 3);
    assert!(p.headers.is_empty());
    assert!(p.on_connect.is_empty());
    assert_eq!(p.max_message_size, 16 * 1024 * 1024);
}

#[test]
fn every_key_is_read() {
    let text = r#"
[daemon]
state_dir = "/srv/state"
max_connections = 10
listen = "[::1]:7000"
admin = "127.0.0.1:0"

[alerts]
syslog = false
syslog_socket = "/run/log"
syslog_facility = "local3"
grace = "0s"

[pools.b]
endpoints = ["wss://b.test/"]

[pools.a]
path = "/alpha"
endpoints = ["ws://a1.test/x", "ws://a2.test/x"]
backup = ["ws://a3.test/x"]
min = 1
max = 1
connect_timeout = "1s"
heartbeat_interval = "1.5s"
heartbeat_timeout = "250ms"
write_timeout = "1m"
backoff_base = "1s"
backoff_max = "1s"
backoff_reset = "1h"
down_after = 1
headers = { Authorization = "Bearer ${TOKEN}", X-Two = "2" }
on_connect = ["one", "two"]
max_message_size = "1KiB"
"#;
    let c = parse(text).unwrap();
    assert_eq!(c.daemon.state_dir, PathBuf::from("/srv/state"));
    assert_eq!(c.daemon.max_connections, 10);
    assert_eq!(c.daemon.listen, "[::1]:7000".parse().unwrap());
    assert_eq!(c.daemon.admin, "127.0.0.1:0".parse().unwrap());
    assert!(!c.alerts.syslog);
    assert_eq!(c.alerts.syslog_socket, PathBuf::from("/run/log"));
    assert_eq!(facility_name(c.alerts.syslog_facility), "local3");
    assert_eq!(c.alerts.grace, Duration::ZERO);
    let names: Vec<&str> = c.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["a", "b"], "pools are sorted by name");
    let a = &c.pools[0];
    assert_eq!(a.path, "/alpha");
    assert_eq!(a.endpoints.len(), 2);
    assert_eq!(a.backup[0].host, "a3.test");
    assert_eq!((a.min, a.max, a.down_after), (1, 1, 1));
    assert_eq!(a.heartbeat_interval, Duration::from_millis(1500));
    assert_eq!(a.heartbeat_timeout, Duration::from_millis(250));
    assert_eq!(a.write_timeout, Duration::from_secs(60));
    assert_eq!(a.backoff_reset, Duration::from_secs(3600));
    assert_eq!(
        a.headers,
        vec![
            ("Authorization".to_string(), "Bearer s3cret".to_string()),
            ("X-Two".to_string(), "2".to_string())
        ]
    );
    assert_eq!(a.on_connect, ["one", "two"]);
    assert_eq!(a.max_message_size, 1024);
    assert_eq!(c.pools[1].path, "/b");
}

#[test]
fn display_of_errors() {
    let read = ConfigError::Read {
        path: PathBuf::from(ORIGIN),
        source: io::Error::from_raw_os_error(2),
    };
    assert_eq!(
        read.to_string(),
        "/etc/x.toml: cannot read: No such file or directory (os error 2)"
    );
    assert!(std::error::Error::source(&read).is_some());
    let err = pool_error("\n\n\n\n\n\n\n\nheartbeat_interval = \"5x\"").2;
    assert_eq!(
        err,
        "invalid duration \"5x\" for heartbeat_interval: expected a number and a unit (ms, s, m, h), e.g. \"500ms\""
    );
    let text = "[pools.p]\nendpoints = [\"ws://a.test/\"]\n\n\n\n\n\n\n\n\n\nheartbeat_interval = \"5x\"\n";
    let err = parse(text).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/etc/x.toml:12:22: invalid duration \"5x\" for heartbeat_interval: expected a number and a unit (ms, s, m, h), e.g. \"500ms\""
    );
    let bare = ConfigError::Invalid {
        origin: "<demo>".into(),
        line: None,
        column: None,
        message: "m".into(),
    };
    assert_eq!(bare.to_string(), "<demo>: m");
}

#[test]
fn load_reads_the_file_and_names_it() {
    let dir = std::env::temp_dir().join(format!("wspoold-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing.toml");
    match Config::load(&missing) {
        Err(ConfigError::Read { path, source }) => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), io::ErrorKind::NotFound);
        }
        other => panic!("expected a read error, got {other:?}"),
    }
    let good = dir.join("good.toml");
    std::fs::write(&good, "[alerts]\nsyslog = false\n").unwrap();
    let config = Config::load(&good).unwrap();
    assert_eq!(config.origin, good.display().to_string());
    let binary = dir.join("binary.toml");
    std::fs::write(&binary, b"[alerts]\nsyslog = \xff\n").unwrap();
    let err = Config::load(&binary).unwrap_err().to_string();
    assert_eq!(err, format!("{}:2:10: not valid UTF-8", binary.display()));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn syntax_error_has_its_place() {
    let (line, column, message) = error("[daemon]\nlisten = 127.0.0.1\n");
    assert_eq!((line, column), (2, 15));
    assert_eq!(message, "invalid TOML: invalid float, expected nothing");
    assert_eq!(
        error("[alerts]\nsyslog = true\nsyslog = false\n"),
        (3, 1, "invalid TOML: duplicate key `syslog`".to_string())
    );
    assert_eq!(
        error("[daemon]\nlisten = \"127.0.0.1:9400\n"),
        (
            2,
            25,
            "invalid TOML: invalid basic string, expected `\"`".to_string()
        )
    );
}

#[test]
fn unknown_keys_are_rejected_with_their_table() {
    let (line, column, message) = error("[demon]\n");
    assert_eq!((line, column), (1, 2));
    assert_eq!(
        message,
        "unknown key `demon`, expected one of `daemon`, `alerts`, `pools`"
    );
    let (line, column, message) = pool_error("mni = 3");
    assert_eq!((line, column), (3, 1));
    assert!(
        message.starts_with("unknown key `mni` in [pools.p], expected one of `path`"),
        "{message}"
    );
    let (line, column, message) = error("[daemon]\n  listen_addr = \"127.0.0.1:1\"\n");
    assert_eq!((line, column), (2, 3));
    assert!(
        message.starts_with("unknown key `listen_addr` in [daemon]"),
        "{message}"
    );
    assert_eq!(
        error("[pools]\np = { endpoints = [\"ws://a/\"], mni = 1 }\n").0,
        2
    );
}

#[test]
fn wrong_types_name_the_key() {
    assert_eq!(
        pool_error("min = \"x\""),
        (
            3,
            7,
            "invalid type for min: string \"x\", expected a whole number of at least 1".to_string()
        )
    );
    assert_eq!(
        error("[alerts]\nsyslog = \"yes\"\n"),
        (
            2,
            10,
            "invalid type for syslog: string \"yes\", expected a boolean".to_string()
        )
    );
    assert_eq!(
        pool_error("heartbeat_interval = 2"),
        (
            3,
            22,
            "invalid type for heartbeat_interval: integer `2`, expected a duration such as \"5s\""
                .to_string()
        )
    );
    let (line, column, message) = error("[pools.p]\nendpoints = [\"ws://a/\", 3]\n");
    assert_eq!((line, column), (2, 25));
    assert_eq!(
        message,
        "invalid type for endpoints: integer `3`, expected a ws:// or wss:// URL"
    );
    assert_eq!(
        error("pools = 3\n").2,
        "invalid type for pools: integer `3`, expected a map"
    );
}

#[test]
fn bad_values_name_the_key_and_place() {
    assert_eq!(
        pool_error("connect_timeout = \"-1s\""),
        (
            3,
            19,
            "invalid duration \"-1s\" for connect_timeout: must not be negative".to_string()
        )
    );
    assert_eq!(
        pool_error("heartbeat_timeout = \"0s\""),
        (
            3,
            21,
            "invalid duration \"0s\" for heartbeat_timeout: must be greater than zero".to_string()
        )
    );
    assert_eq!(pool_error("write_timeout = \"0ms\"").0, 3);
    assert_eq!(
        pool_error("max_message_size = \"512\""),
        (
            3,
            20,
            "invalid size \"512\" for max_message_size: must be at least 1KiB".to_string()
        )
    );
    assert_eq!(
        pool_error("max_message_size = 100"),
        (
            3,
            20,
            "invalid size 100 for max_message_size: must be at least 1KiB".to_string()
        )
    );
    assert_eq!(
        pool_error("max_message_size = \"1XB\"").2,
        format!("invalid size \"1XB\" for max_message_size: {SIZE_FORMAT}")
    );
    assert_eq!(
        pool_error("down_after = 0"),
        (
            3,
            14,
            "invalid number 0 for down_after: must be at least 1".to_string()
        )
    );
    assert_eq!(
        pool_error("min = -2").2,
        "invalid number -2 for min: must be at least 1"
    );
    assert_eq!(
        pool_error("max = 5000000000").2,
        "invalid number 5000000000 for max: must be at most 4294967295"
    );
    assert_eq!(error("[daemon]\nmax_connections = 0\n").0, 2);
    assert_eq!(
        error("[daemon]\nlisten = \"localhost:9400\"\n"),
        (
            2,
            10,
            "invalid address \"localhost:9400\" for listen: expected IP:PORT, e.g. \"127.0.0.1:9400\" or \"[::1]:9400\""
                .to_string()
        )
    );
    let (line, column, message) = error("[daemon]\nstate_dir = \"state\"\n");
    assert_eq!((line, column), (2, 13));
    assert!(
        message.starts_with("invalid path \"state\" for state_dir: must be absolute"),
        "{message}"
    );
    let (line, column, message) = error("[alerts]\nsyslog_facility = \"local8\"\n");
    assert_eq!((line, column), (2, 19));
    assert!(message.starts_with(
        "unknown syslog facility \"local8\" for syslog_facility: expected one of kern, user,"
    ));
    assert!(message.ends_with("local6, local7"), "{message}");
    assert_eq!(
        pool_error("path = \"market\""),
        (
            3,
            8,
            "invalid path \"market\" for path: must start with / and contain no ?, # or spaces"
                .to_string()
        )
    );
    assert_eq!(pool_error("path = \"/a b\"").0, 3);
    assert_eq!(
        error("[pools.\"a.b\"]\nendpoints = [\"ws://a/\"]\n"),
        (
            1,
            8,
            "invalid pool name \"a.b\" for pools: a pool name is letters, digits, - and _"
                .to_string()
        )
    );
}

#[test]
fn every_facility_name_is_accepted() {
    for name in [
        "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
        "authpriv", "ftp", "local0", "local1", "local2", "local3", "local4", "local5", "local6",
        "local7",
    ] {
        let c = parse(&format!("[alerts]\nsyslog_facility = \"{name}\"\n")).unwrap();
        assert_eq!(facility_name(c.alerts.syslog_facility), name);
    }
}

#[test]
fn bad_urls_name_the_key_and_place() {
    let (line, column, message) =
        error("[pools.p]\nendpoints = [\"ws://a.test/\", \"https://b.test/\"]\n");
    assert_eq!((line, column), (2, 30));
    assert_eq!(
        message,
        "invalid endpoint URL \"https://b.test/\" for endpoints: scheme https:// is not supported; expected ws:// or wss://"
    );
    let (line, column, message) =
        error("[pools.p]\nendpoints = [\"ws://a.test/\"]\nbackup = [\"a.test\"]\n");
    assert_eq!((line, column), (3, 11));
    assert!(
        message.starts_with("invalid endpoint URL \"a.test\" for backup: "),
        "{message}"
    );
    assert_eq!(error("[pools.p]\nendpoints = [\"ws:// bad\"]\n").0, 2);
    assert!(Endpoint::parse("ws:///path").is_err());
    assert!(
        Endpoint::parse("wss://user:pw@host/")
            .unwrap_err()
            .contains("credentials")
    );
    assert!(
        Endpoint::parse("ws://host:0/")
            .unwrap_err()
            .contains("port 0")
    );
    assert_eq!(
        Endpoint::parse("http://x/").unwrap_err(),
        "invalid endpoint URL \"http://x/\": scheme http:// is not supported; expected ws:// or wss://"
    );
}

#[test]
fn endpoints_parse_into_parts() {
    let e = Endpoint::parse("ws://[::1]:9/x").unwrap();
    assert_eq!(
        (e.tls, e.host.as_str(), e.port, e.resource.as_str()),
        (false, "::1", 9, "/x")
    );
    assert_eq!(e.to_string(), "ws://[::1]:9/x");
    let e = Endpoint::parse("wss://[2001:db8::1]/ws?v=2").unwrap();
    assert_eq!(
        (e.tls, e.host.as_str(), e.port, e.resource.as_str()),
        (true, "2001:db8::1", 443, "/ws?v=2")
    );
    let e = Endpoint::parse("ws://a.example.com").unwrap();
    assert_eq!(
        (e.host.as_str(), e.port, e.resource.as_str()),
        ("a.example.com", 80, "/")
    );
    let e = Endpoint::parse("WSS://a.example.com:8443?x=1").unwrap();
    assert_eq!((e.tls, e.port, e.resource.as_str()), (true, 8443, "/?x=1"));
    assert_eq!(e.url, "WSS://a.example.com:8443?x=1");
}

#[test]
fn cross_key_checks_point_at_a_key_or_the_pool() {
    assert_eq!(
        pool_error("min = 5\nmax = 4"),
        (4, 7, "max 4 is less than min 5 in pool p".to_string())
    );
    assert_eq!(
        pool_error("min = 100"),
        (3, 7, "max 64 is less than min 100 in pool p".to_string())
    );
    assert_eq!(
        pool_error("backoff_base = \"2s\"\nbackoff_max = \"1s\""),
        (
            4,
            15,
            "backoff_max 1s is less than backoff_base 2s in pool p".to_string()
        )
    );
    assert_eq!(
        pool_error("backoff_base = \"1m\""),
        (
            3,
            16,
            "backoff_max 30s is less than backoff_base 1m in pool p".to_string()
        )
    );
    assert_eq!(
        error("\n[pools.p]\nmin = 1\n"),
        (
            2,
            1,
            "pool p has no endpoints: endpoints = [\"wss://...\"] is required".to_string()
        )
    );
    assert_eq!(
        error("[pools.p]\nendpoints = []\n"),
        (
            2,
            13,
            "pool p has an empty endpoints list: at least one primary is required".to_string()
        )
    );
    assert_eq!(
        error("[pools.p]\nendpoints = [\"ws://a.test/\"]\nbackup = [\"ws://A.test:80/\"]\n"),
        (
            3,
            10,
            "endpoint ws://A.test:80/ is listed twice in pool p".to_string()
        )
    );
    let two = "[pools.a]\nendpoints = [\"ws://a/\"]\npath = \"/x\"\n[pools.b]\nendpoints = [\"ws://a/\"]\npath = \"/x\"\n";
    assert_eq!(
        error(two),
        (
            6,
            8,
            "pool b has path /x, already used by pool a".to_string()
        )
    );
    let implicit = "[pools.a]\nendpoints = [\"ws://a/\"]\npath = \"/b\"\n[pools.b]\nendpoints = [\"ws://a/\"]\n";
    assert_eq!(
        error(implicit),
        (
            4,
            1,
            "pool b has path /b, already used by pool a".to_string()
        )
    );
    let crowded = "[daemon]\nmax_connections = 3\n[pools.a]\nendpoints = [\"ws://a/\"]\n[pools.b]\nendpoints = [\"ws://a/\"]\n";
    assert_eq!(
        error(crowded),
        (
            2,
            19,
            "the pools' min add up to 4, more than max_connections 3".to_string()
        )
    );
    assert_eq!(
        error("[daemon]\nlisten = \"127.0.0.1:5\"\nadmin = \"127.0.0.1:5\"\n"),
        (3, 9, "admin and listen are both 127.0.0.1:5".to_string())
    );
    assert_eq!(
        error("[daemon]\nlisten = \"127.0.0.1:9401\"\n"),
        (
            2,
            10,
            "admin and listen are both 127.0.0.1:9401".to_string()
        )
    );
    let crowded = "[pools.a]\nendpoints = [\"ws://a/\"]\nmin = 4000\nmax = 4000\n\n[pools.b]\nendpoints = [\"ws://a/\"]\nmin = 97\nmax = 97\n";
    assert_eq!(
        error(crowded),
        (
            6,
            1,
            "the pools' min add up to 4097, more than max_connections 4096".to_string()
        )
    );
}

#[test]
fn headers_are_checked() {
    assert_eq!(
        pool_error("headers = { \"Bad Name\" = \"x\" }"),
        (3, 13, "invalid header name \"Bad Name\" for headers: a header name is letters, digits and !#$%&'*+-.^_`|~".to_string())
    );
    assert_eq!(
        pool_error("headers = { X-Token = \"a\\nb\" }"),
        (
            3,
            23,
            "invalid header value for X-Token: it holds a control character or newline (after ${VAR} expansion)"
                .to_string()
        )
    );
    assert_eq!(
        pool_error("[pools.p.headers]\nsec-websocket-key = \"x\""),
        (
            4,
            1,
            "header sec-websocket-key cannot be set for headers: the WebSocket handshake sets it"
                .to_string()
        )
    );
    let (line, column, message) = pool_error("headers = { X-A = \"1\", x-a = \"2\" }");
    assert_eq!((line, column), (3, 11));
    assert_eq!(
        message,
        "header x-a is set twice (names are case-insensitive)"
    );
    let p =
        pool("[pools.p.headers]\nSec-WebSocket-Protocol = \"v2\"\nX-Empty = \"${EMPTY}\"").unwrap();
    assert_eq!(
        p.headers[0],
        ("Sec-WebSocket-Protocol".to_string(), "v2".to_string())
    );
    assert_eq!(p.headers[1], ("X-Empty".to_string(), String::new()));
}

#[test]
fn env_expands_in_every_string_value() {
    let text = r#"
[daemon]
state_dir = "/srv/${HOST}"
listen = "127.0.0.1:${PORT}"
[pools.p]
path = "/${HOST}"
endpoints = ["wss://${HOST}/ws?token=${TOKEN}"]
heartbeat_interval = "${SECS}s"
max_message_size = "${SECS}KiB"
on_connect = ['{"token":"${TOKEN}","price":"$$5","bare":"$x"}']
headers = { Authorization = "Bearer ${TOKEN}" }
"#;
    let env = |name: &str| match name {
        "PORT" => Some("7777".to_string()),
        "SECS" => Some("3".to_string()),
        other => test_env(other),
    };
    let c = Config::parse_with_env(text, ORIGIN, &env).unwrap();
    assert_eq!(c.daemon.state_dir, PathBuf::from("/srv/a.example.com"));
    assert_eq!(c.daemon.listen.port(), 7777);
    let p = &c.pools[0];
    assert_eq!(p.path, "/a.example.com");
    assert_eq!(p.endpoints[0].url, "wss://a.example.com/ws?token=s3cret");
    assert_eq!(p.endpoints[0].host, "a.example.com");
    assert_eq!(p.heartbeat_interval, Duration::from_secs(3));
    assert_eq!(p.max_message_size, 3 * 1024);
    assert_eq!(
        p.on_connect,
        [r#"{"token":"s3cret","price":"$5","bare":"$x"}"#]
    );
    assert_eq!(p.headers[0].1, "Bearer s3cret");
}

#[test]
fn env_is_not_expanded_in_keys_or_escaped_text() {
    let p = pool("on_connect = [\"$${TOKEN}\", \"$$$$\", \"a $ b\"]").unwrap();
    assert_eq!(p.on_connect, ["${TOKEN}", "$$", "a $ b"]);
    // A key is taken as written: the header name is checked unexpanded.
    let message = pool_error("[pools.p.headers]\n\"X-${TOKEN}\" = \"1\"").2;
    assert!(
        message.starts_with("invalid header name \"X-${TOKEN}\""),
        "{message}"
    );
}

#[test]
fn unset_env_variable_is_an_error_with_its_place() {
    assert_eq!(
        pool_error("headers = { Authorization = \"Bearer ${MISSING}\" }"),
        (
            3,
            29,
            "unset environment variable MISSING for Authorization: set it in the daemon's environment, or write $$ for a literal $"
                .to_string()
        )
    );
    assert_eq!(
        error("[pools.p]\nendpoints = [\"wss://${NO_HOST}/\"]\n"),
        (
            2,
            14,
            "unset environment variable NO_HOST for endpoints: set it in the daemon's environment, or write $$ for a literal $"
                .to_string()
        )
    );
    assert_eq!(
        pool_error("on_connect = [\"${OPEN\"]"),
        (
            3,
            15,
            "unterminated ${ for on_connect: write ${NAME}, or $$ for a literal $".to_string()
        )
    );
    assert_eq!(
        pool_error("on_connect = [\"${1X}\"]")
            .2
            .split(':')
            .next()
            .unwrap(),
        "invalid variable name \"1X\" for on_connect"
    );
    assert_eq!(error("[alerts]\nsyslog_socket = \"${NOPE}/log\"\n").0, 2);
}

#[test]
fn env_comes_from_the_process_by_default() {
    // PATH is set in any test environment; an unset name must fail.
    assert!(Config::parse("[daemon]\nstate_dir = \"/x${PATH}\"\n", "t").is_ok());
    let err = Config::parse(
        "[daemon]\nstate_dir = \"/${WSPOOLD_TEST_SURELY_UNSET_VAR}\"\n",
        "t",
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("WSPOOLD_TEST_SURELY_UNSET_VAR"),
        "{err}"
    );
}

#[test]
fn durations() {
    let ms = Duration::from_millis;
    for (text, want) in [
        ("500ms", ms(500)),
        ("5s", ms(5000)),
        ("2m", ms(120_000)),
        ("1h", ms(3_600_000)),
        ("1.5s", ms(1500)),
        ("0.25ms", Duration::from_micros(250)),
        ("1m30s", ms(90_000)),
        ("1h2m3s4ms", ms(3_723_004)),
        ("0s", Duration::ZERO),
        ("007s", ms(7000)),
    ] {
        assert_eq!(parse_duration(text), Ok(want), "{text}");
    }
    for text in [
        "",
        "5",
        "5x",
        "s",
        "-1s",
        "1.s",
        ".5s",
        "1..5s",
        "5 s",
        " 5s",
        "5S",
        "1e3ms",
        "+1s",
        "99999999999999999999999h",
    ] {
        assert!(parse_duration(text).is_err(), "{text} should be rejected");
    }
    assert_eq!(
        parse_duration("-1s").unwrap_err(),
        "invalid duration \"-1s\": must not be negative"
    );
    assert_eq!(
        parse_duration("").unwrap_err(),
        "invalid duration \"\": expected a number and a unit (ms, s, m, h), e.g. \"500ms\""
    );
}

#[test]
fn durations_format_and_read_back() {
    for (d, text) in [
        (Duration::ZERO, "0s"),
        (Duration::from_millis(500), "500ms"),
        (Duration::from_micros(250), "0.25ms"),
        (Duration::from_secs(2), "2s"),
        (Duration::from_millis(1500), "1.5s"),
        (Duration::from_secs(90), "1m30s"),
        (Duration::from_secs(3600), "1h"),
        (Duration::from_millis(3_723_004), "1h2m3.004s"),
        (Duration::new(1, 1), "1.000000001s"),
    ] {
        assert_eq!(format_duration(d), text);
        assert_eq!(parse_duration(text), Ok(d), "{text}");
    }
}

#[test]
fn sizes() {
    for (text, want) in [
        ("512", 512),
        ("0", 0),
        ("512B", 512),
        ("64KiB", 64 << 10),
        ("1MiB", 1 << 20),
        ("16MiB", 16 << 20),
        ("1GiB", 1 << 30),
        ("1.5KiB", 1536),
        ("64KB", 64_000),
        ("2MB", 2_000_000),
        ("1GB", 1_000_000_000),
        ("64kib", 64 << 10),
    ] {
        assert_eq!(parse_size(text), Ok(want), "{text}");
    }
    for text in [
        "",
        "KiB",
        "-1",
        "1.5",
        "64 KiB",
        "64K",
        "1TiB",
        "1x",
        "99999999999999999999999GiB",
    ] {
        assert!(parse_size(text).is_err(), "{text} should be rejected");
    }
    assert_eq!(
        parse_size("-1").unwrap_err(),
        "invalid size \"-1\": must not be negative"
    );
    assert_eq!(format_size(16 << 20), "16MiB");
    assert_eq!(format_size(1024), "1KiB");
    assert_eq!(format_size(1500), "1500B");
    assert_eq!(
        pool("max_message_size = 2048").unwrap().max_message_size,
        2048
    );
    assert_eq!(
        pool("max_message_size = \"2MB\"").unwrap().max_message_size,
        2_000_000
    );
}

#[test]
fn key_names_come_from_the_raw_structs() {
    let keys = key_names();
    for key in [
        "daemon.state_dir",
        "daemon.max_connections",
        "daemon.listen",
        "daemon.admin",
        "alerts.syslog",
        "alerts.syslog_facility",
        "alerts.grace",
        "pools.*.path",
        "pools.*.endpoints",
        "pools.*.min",
        "pools.*.heartbeat_interval",
        "pools.*.headers",
        "pools.*.max_message_size",
    ] {
        assert!(
            keys.contains(&key.to_string()),
            "{key} missing from {keys:?}"
        );
    }
    // daemon 4; alerts 7, and 13 per webhook; pools 35.
    assert_eq!(keys.len(), 7 + 7 + 13 + 35, "{keys:?}");
    assert!(keys.contains(&"alerts.webhook.routing_key_file".to_string()));
    assert_eq!(
        keys.iter().collect::<HashSet<_>>().len(),
        keys.len(),
        "no duplicates"
    );
}

const EXAMPLE: &str = include_str!("../systemd/wspoold.toml");
const MAN_PAGE: &str = include_str!("../man/wspoold.toml.5");

fn example_env(name: &str) -> Option<String> {
    matches!(name, "MARKET_TOKEN" | "MARKET_CLIENT_TOKEN").then(|| "example-token".to_string())
}

#[test]
fn example_config_parses() {
    let c = Config::parse_with_env(EXAMPLE, "systemd/wspoold.toml", &example_env).unwrap();
    assert_eq!(c.pools.len(), 1);
    let market = &c.pools[0];
    assert_eq!(market.name, "market");
    assert_eq!(market.endpoints.len(), 2);
    assert_eq!(market.backup.len(), 1);
    for e in market.endpoints.iter().chain(&market.backup) {
        assert!(e.host.ends_with("example.com"), "{e}");
    }
    assert!(
        market
            .headers
            .iter()
            .any(|(_, v)| v.contains("example-token"))
    );
}

#[test]
fn example_config_shows_the_defaults() {
    let example = Config::parse_with_env(EXAMPLE, "example", &example_env).unwrap();
    let defaults = parse("[pools.market]\nendpoints = [\"wss://a.example.com/ws\"]\n").unwrap();
    assert_eq!(example.daemon, defaults.daemon);
    assert_eq!(example.alerts, defaults.alerts);
    let flap = |p: &PoolConfig| (p.rtt_alert, p.flap_half_life, p.flap_suppress, p.flap_reuse);
    assert_eq!(flap(&example.pools[0]), flap(&defaults.pools[0]));
    let (e, d) = (&example.pools[0], &defaults.pools[0]);
    let numbers = |p: &PoolConfig| {
        (
            (
                p.path.clone(),
                p.min,
                p.max,
                p.down_after,
                p.max_message_size,
            ),
            (
                p.connect_timeout,
                p.heartbeat_interval,
                p.heartbeat_timeout,
                p.write_timeout,
            ),
            (p.backoff_base, p.backoff_max, p.backoff_reset),
        )
    };
    assert_eq!(numbers(e), numbers(d));
}

#[test]
fn example_config_uses_every_key() {
    let document: toml::Table = toml::from_str(EXAMPLE).unwrap();
    // Keys naming a file that must exist are shown commented out, so that the
    // example still loads on a machine without that file.
    // Webhooks are shown commented out too: an installed example should not post to
    // example.com.
    // So are the admin token keys: a token in an example would be a known secret.
    const COMMENTED: &[&str] = &[
        "pools.*.ca_file",
        "daemon.admin_token",
        "daemon.admin_token_file",
    ];
    for key in key_names() {
        if COMMENTED.contains(&key.as_str()) || key.starts_with("alerts.webhook.") {
            let leaf = key.rsplit('.').next().unwrap();
            assert!(
                EXAMPLE.contains(&format!("# {leaf} = ")),
                "the example config does not show {key}"
            );
            continue;
        }
        let mut tables = vec![&document];
        let parts: Vec<&str> = key.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let mut next = Vec::new();
            for table in &tables {
                let children: Vec<&toml::Value> = match *part {
                    "*" => table.values().collect(),
                    _ => table.get(*part).into_iter().collect(),
                };
                next.extend(
                    children
                        .into_iter()
                        .filter_map(|v| if last { Some(*table) } else { v.as_table() }),
                );
            }
            tables = next;
        }
        assert!(!tables.is_empty(), "the example config does not use {key}");
    }
}

/// The keys the man page documents: `.TP` then `\fBkey\fR` under `.SH "[section]"`.
fn man_page_keys() -> HashSet<String> {
    let mut keys = HashSet::new();
    let mut section = String::new();
    let mut lines = MAN_PAGE.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(heading) = line.strip_prefix(".SH ") {
            let heading = heading.trim_matches('"');
            // "[alerts]", "[pools.NAME]", "[[alerts.webhook]]".
            section = if heading.starts_with('[') {
                heading
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .replace("NAME", "*")
            } else {
                String::new()
            };
        } else if line == ".TP" && !section.is_empty() {
            let tag = lines.peek().copied().unwrap_or_default();
            if let Some(key) = tag
                .strip_prefix("\\fB")
                .and_then(|t| t.split("\\fR").next())
            {
                keys.insert(format!("{section}.{key}"));
            }
        }
    }
    keys
}

#[test]
fn man_page_documents_every_key_and_no_other() {
    let documented = man_page_keys();
    let keys: HashSet<String> = key_names().into_iter().collect();
    let mut missing: Vec<_> = keys.difference(&documented).collect();
    let mut extra: Vec<_> = documented.difference(&keys).collect();
    missing.sort();
    extra.sort();
    assert!(missing.is_empty(), "not in man/wspoold.toml.5: {missing:?}");
    assert!(extra.is_empty(), "documented but not accepted: {extra:?}");
}

#[test]
fn session_and_balancing_keys_parse_and_weights_must_match_the_endpoints() {
    let p = pool(
        "replay = ['\"op\":\"sub\"', '']\nheal_timeout = \"3s\"\nheal_buffer = \"64KiB\"\nheal_notice = true\ndelivery = \"at-most-once\"\nreuse = true\nidle_timeout = \"2m\"\nweights = [5]\nslow_start = \"0s\"",
    )
    .unwrap();
    assert_eq!(
        p.replay,
        vec![r#""op":"sub""#.to_string()],
        "empty patterns dropped"
    );
    assert_eq!(p.heal_timeout, Duration::from_secs(3));
    assert_eq!(p.heal_buffer, 64 * 1024);
    assert!(p.heal_notice && p.reuse);
    assert_eq!(p.delivery, Delivery::AtMostOnce);
    assert_eq!(p.idle_timeout, Duration::from_secs(120));
    assert_eq!((p.weights, p.slow_start), (vec![5], Duration::ZERO));
    let d = pool("").unwrap();
    assert_eq!(d.delivery, Delivery::AtLeastOnce);
    assert_eq!(d.weights, vec![1]);
    let (line, column, message) = pool_error("weights = [1, 2]");
    assert_eq!((line, column), (3, 11));
    assert!(
        message.starts_with("weights has 2 entries but pool p has 1 endpoints"),
        "{message}"
    );
    let (line, _, message) = pool_error("delivery = \"exactly-once\"");
    assert_eq!(line, 3);
    assert!(
        message.contains("unknown delivery \"exactly-once\""),
        "{message}"
    );
    assert_eq!(pool_error("weights = [0]").0, 3);
}

#[test]
fn webhooks_parse_with_defaults_and_secrets_from_files() {
    let dir = std::env::temp_dir().join(format!("wspoold-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("routing-key");
    let token = dir.join("token");
    std::fs::write(&key, "R0UT1NG\n").unwrap();
    std::fs::write(&token, "  Bearer s3cret\n").unwrap();
    let text = format!(
        r#"
[alerts]
resolve_after = "10s"
escalate_after = "0s"
escalate_failures = 0

[[alerts.webhook]]
url = "https://hooks.example.com:8443/wspoold"

[[alerts.webhook]]
name = "pager"
url = "http://127.0.0.1:9/v2/enqueue"
format = "pagerduty"
min_severity = "critical"
escalation_only = true
timeout = "2s"
headers = {{ X-Team = "ops" }}
header_files = {{ Authorization = "{}" }}
routing_key_file = "{}"
retries = 0
retry_backoff = "250ms"
queue = 8
"#,
        token.display(),
        key.display()
    );
    let c = parse(&text).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(c.alerts.resolve_after, Duration::from_secs(10));
    assert_eq!(c.alerts.escalate_after, Duration::ZERO);
    assert_eq!(c.alerts.escalate_failures, 0);
    let [plain, pager] = &c.alerts.webhooks[..] else {
        panic!("{:?}", c.alerts.webhooks)
    };
    assert_eq!(plain.name, "hooks.example.com:8443");
    assert_eq!(plain.format, WebhookFormat::Json);
    assert_eq!(plain.min_severity, Severity::Warning);
    assert!(!plain.escalation_only);
    assert_eq!(plain.timeout, Duration::from_secs(5));
    assert_eq!((plain.retries, plain.queue), (6, 256));
    assert_eq!(pager.name, "pager");
    assert_eq!(pager.format, WebhookFormat::PagerDuty);
    assert_eq!(pager.min_severity, Severity::Critical);
    assert!(pager.escalation_only);
    assert_eq!(pager.routing_key.as_deref(), Some("R0UT1NG"));
    assert_eq!(
        pager.headers,
        vec![
            ("X-Team".to_string(), "ops".to_string()),
            ("Authorization".to_string(), "Bearer s3cret".to_string())
        ]
    );
    assert_eq!(
        (pager.retries, pager.retry_backoff, pager.queue),
        (0, Duration::from_millis(250), 8)
    );
    let shown = format!("{pager:?}");
    assert!(
        !shown.contains("s3cret") && !shown.contains("R0UT1NG"),
        "{shown}"
    );
}

#[test]
fn webhook_mistakes_are_named() {
    let cases = [
        (
            "[[alerts.webhook]]\nformat = \"json\"",
            "webhook 1 has no url",
        ),
        (
            "[[alerts.webhook]]\nurl = \"ftp://x/\"",
            "invalid webhook URL \"ftp://x/\"",
        ),
        (
            "[[alerts.webhook]]\nurl = \"http://x/\"\nformat = \"teams\"",
            "unknown webhook format \"teams\"",
        ),
        (
            "[[alerts.webhook]]\nurl = \"http://x/\"\nmin_severity = \"high\"",
            "unknown severity \"high\"",
        ),
        (
            "[[alerts.webhook]]\nurl = \"http://x/\"\nformat = \"pagerduty\"",
            "no routing_key or routing_key_file",
        ),
        (
            "[[alerts.webhook]]\nurl = \"http://x/\"\nrouting_key_file = \"/nonexistent/wspoold-key\"",
            "cannot read secret file \"/nonexistent/wspoold-key\"",
        ),
        (
            "[[alerts.webhook]]\nurl = \"http://x/\"\n[[alerts.webhook]]\nurl = \"http://x/\"",
            "two webhooks are named \"x\"",
        ),
        (
            "[[alerts.webhook]]\nurl = \"http://x/\"\nsecret = 1",
            "unknown",
        ),
    ];
    for (text, expected) in cases {
        let (line, _, message) = error(text);
        assert!(line >= 1);
        assert!(message.contains(expected), "{text}\n→ {message}");
    }
}

#[test]
fn flap_damping_and_rtt_alert_parse_and_reuse_must_be_below_suppress() {
    let p =
        pool("rtt_alert = \"250ms\"\nflap_half_life = \"30s\"\nflap_suppress = 5\nflap_reuse = 2")
            .unwrap();
    assert_eq!(p.rtt_alert, Duration::from_millis(250));
    assert_eq!(p.flap_half_life, Duration::from_secs(30));
    assert_eq!((p.flap_suppress, p.flap_reuse), (5, 2));
    let d = pool("").unwrap();
    assert_eq!(d.rtt_alert, Duration::ZERO);
    assert_eq!((d.flap_suppress, d.flap_reuse), (3, 1));
    let adaptive = pool("heartbeat_timeout_min = \"100ms\"").unwrap();
    assert_eq!(adaptive.heartbeat_timeout_min, Duration::from_millis(100));
    assert_eq!(
        d.heartbeat_timeout_min, d.heartbeat_timeout,
        "off by default"
    );
    let (_, _, message) = pool_error("heartbeat_timeout_min = \"3s\"");
    assert!(
        message.contains("heartbeat_timeout_min 3s is above heartbeat_timeout 2s"),
        "{message}"
    );
    let (_, _, message) = pool_error("flap_suppress = 2\nflap_reuse = 2");
    assert!(
        message.contains("flap_reuse 2 must be below flap_suppress 2"),
        "{message}"
    );
}
