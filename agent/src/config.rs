//! The agent's configuration: one TOML file parsed once, at start, into types.
//!
//! Every mistake is reported with the file, line, column and dotted key; unknown keys are
//! errors (a typo must not silently fall back to a default); passwords are [`Secret`]s.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use toml::de::{DeTable, DeValue};

use crate::secret::Secret;

/// The example shipped with the product: every key, its default, one line each.
pub const EXAMPLE: &str = include_str!("../tether.example.toml");

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub site: Site,
    pub hub: Hub,
    #[serde(default)]
    pub forwards: Forwards,
    pub office_db: OfficeDb,
    pub hub_db: HubDb,
    #[serde(default)]
    pub replication: Replication,
    #[serde(default)]
    pub mqtt: Mqtt,
    #[serde(default)]
    pub board: Board,
    #[serde(default)]
    pub data: Data,
    #[serde(default)]
    pub status: Status,
    #[serde(default)]
    pub log: Log,
    #[serde(default)]
    pub timings: Timings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    /// `[a-z0-9_-]{1,32}`: used in MQTT topics and the client id.
    pub id: String,
    /// Human name (Home Assistant device name); defaults to the id.
    #[serde(default)]
    pub name: Option<String>,
}

impl Site {
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Cipher {
    #[default]
    Auto,
    #[serde(rename = "aes128-gcm")]
    Aes128Gcm,
    #[serde(rename = "aes256-gcm")]
    Aes256Gcm,
    #[serde(rename = "chacha20-poly1305")]
    Chacha20Poly1305,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hub {
    pub host: String,
    #[serde(default = "d_ssh_port")]
    pub port: u16,
    #[serde(default = "d_user")]
    pub user: String,
    /// Defaults to `<data.dir>/device_key`.
    #[serde(default)]
    pub key_path: Option<PathBuf>,
    /// `SHA256:...` or `ssh-ed25519 AAAA...`; if absent, the fingerprint enrolled with
    /// `tether enroll --pin` is used.
    #[serde(default)]
    pub host_key: Option<String>,
    #[serde(default = "d_true")]
    pub compression: bool,
    #[serde(default)]
    pub cipher: Cipher,
}

/// A `host:port` address; hosts may be names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    pub host: String,
    pub port: u16,
}

impl Addr {
    pub fn new(host: &str, port: u16) -> Self {
        Addr {
            host: host.to_owned(),
            port,
        }
    }
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for Addr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}` is not host:port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("`{s}` has no host"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| format!("`{s}`: port must be a number 1..=65535"))?;
        if port == 0 {
            return Err(format!("`{s}`: port must be 1..=65535"));
        }
        Ok(Addr::new(host, port))
    }
}

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Addr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Forwards {
    /// The hub listens here; connections go to `remote_target`.
    pub remote_listen: Addr,
    /// The office DB as seen from the box.
    pub remote_target: Addr,
    /// The box listens here; connections go to `local_target` on the hub.
    pub local_listen: Addr,
    /// The hub DB as seen from the hub.
    pub local_target: Addr,
}

impl Default for Forwards {
    fn default() -> Self {
        Forwards {
            remote_listen: Addr::new("127.0.0.1", 3307),
            remote_target: Addr::new("127.0.0.1", 3306),
            local_listen: Addr::new("127.0.0.1", 3307),
            local_target: Addr::new("127.0.0.1", 3306),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfficeDb {
    #[serde(default = "d_localhost")]
    pub host: String,
    #[serde(default = "d_db_port")]
    pub port: u16,
    #[serde(default = "d_user")]
    pub user: String,
    pub password: Secret,
    #[serde(default = "d_user")]
    pub database: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubDb {
    #[serde(default = "d_user")]
    pub user: String,
    pub password: Secret,
    #[serde(default = "d_user")]
    pub database: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Replication {
    #[serde(with = "dur")]
    pub poll_interval: Duration,
    #[serde(with = "dur")]
    pub heartbeat_interval: Duration,
    #[serde(with = "dur")]
    pub lag_ok: Duration,
    #[serde(with = "dur")]
    pub query_timeout: Duration,
    /// `db.table` names compared with CHECKSUM TABLE once a day.
    pub checksum_tables: Vec<String>,
    pub checksum_hour: Option<u8>,
}

impl Default for Replication {
    fn default() -> Self {
        Replication {
            poll_interval: secs(3),
            heartbeat_interval: secs(1),
            lag_ok: secs(10),
            query_timeout: secs(5),
            checksum_tables: Vec::new(),
            checksum_hour: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mqtt {
    pub enabled: bool,
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub prefix: String,
    pub discovery_prefix: String,
    #[serde(with = "dur")]
    pub keepalive: Duration,
    #[serde(with = "dur")]
    pub republish: Duration,
    /// Defaults to `tether-<site.id>`.
    pub client_id: Option<String>,
}

impl Default for Mqtt {
    fn default() -> Self {
        Mqtt {
            enabled: true,
            host: "127.0.0.1".into(),
            port: 1883,
            tls: false,
            ca_file: None,
            client_cert: None,
            client_key: None,
            username: None,
            password: None,
            prefix: "tether".into(),
            discovery_prefix: "homeassistant".into(),
            keepalive: secs(30),
            republish: secs(300),
            client_id: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BoardBackend {
    /// No LEDs (a server install).
    #[default]
    None,
    /// LEDs drawn by a simulated board (the lab).
    Sim,
    /// Linux GPIO character devices.
    Gpio,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    pub line: String,
    #[serde(default)]
    pub active_low: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Board {
    pub backend: BoardBackend,
    pub chip: Option<String>,
    /// Where the simulated board publishes its LEDs and takes button presses.
    pub sim_socket: Option<PathBuf>,
    pub green: Line,
    pub amber: Line,
    pub red: Line,
    pub button: Line,
}

impl Default for Board {
    fn default() -> Self {
        let line = |name: &str, active_low| Line {
            line: name.into(),
            active_low,
        };
        Board {
            backend: BoardBackend::None,
            chip: None,
            sim_socket: None,
            green: line("GPIO17", false),
            amber: line("GPIO27", false),
            red: line("GPIO22", false),
            button: line("GPIO23", true),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Data {
    pub dir: PathBuf,
}

impl Default for Data {
    fn default() -> Self {
        Data {
            dir: "/var/lib/tether".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Status {
    pub socket: PathBuf,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            socket: "/run/tether/tether.sock".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timings {
    #[serde(with = "dur")]
    pub connect_timeout: Duration,
    #[serde(with = "dur")]
    pub handshake_timeout: Duration,
    #[serde(with = "dur")]
    pub keepalive_interval: Duration,
    pub keepalive_max: u32,
    #[serde(with = "dur")]
    pub probe_interval: Duration,
    #[serde(with = "dur")]
    pub probe_timeout: Duration,
    #[serde(with = "dur")]
    pub reconnect_min: Duration,
    #[serde(with = "dur")]
    pub reconnect_max: Duration,
    #[serde(with = "dur")]
    pub login_backoff_min: Duration,
    #[serde(with = "dur")]
    pub login_backoff_max: Duration,
    #[serde(with = "dur")]
    pub settle: Duration,
    #[serde(with = "dur")]
    pub alert_after: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            connect_timeout: secs(10),
            handshake_timeout: secs(15),
            keepalive_interval: secs(2),
            keepalive_max: 3,
            probe_interval: secs(5),
            probe_timeout: secs(5),
            reconnect_min: secs(1),
            reconnect_max: secs(5),
            login_backoff_min: secs(60),
            login_backoff_max: secs(30 * 60),
            settle: secs(5),
            alert_after: secs(3600),
        }
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
fn d_true() -> bool {
    true
}
fn d_ssh_port() -> u16 {
    22
}
fn d_db_port() -> u16 {
    3306
}
fn d_user() -> String {
    "tether".into()
}
fn d_localhost() -> String {
    "127.0.0.1".into()
}

/// Durations as humantime strings: "2s", "500ms", "1h 30m".
mod dur {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{s}` is not a duration ({e}); write it like \"2s\", \"500ms\" or \"1h\""
            ))
        })
    }
}

/// A configuration mistake, located.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {}{message}", key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default())]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// The dotted key, when the mistake is in one.
    pub key: Option<String>,
    pub message: String,
}

impl Config {
    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: 0,
            column: 0,
            key: None,
            message: format!("cannot read the file: {e}"),
        })?;
        Config::parse(&text, path)
    }

    /// Parses text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let at = |offset: usize, key: Option<String>, message: String| {
            let (line, column) = line_col(text, offset);
            ConfigError {
                file: file.clone(),
                line,
                column,
                key,
                message,
            }
        };
        let doc = DeTable::parse(text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            at(offset, None, first_line(e.message()))
        })?;
        let config: Config = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            let mut path = path_at(doc.get_ref(), offset);
            let message = first_line(e.message());
            // serde names a missing field but the span points at its table.
            if let Some(field) = message
                .strip_prefix("missing field `")
                .and_then(|r| r.split('`').next())
            {
                path.push(field.to_owned());
            }
            let key = (!path.is_empty()).then(|| path.join("."));
            at(offset, key, message)
        })?;
        if let Some((key, message)) = config.check().into_iter().next() {
            let offset = span_of(doc.get_ref(), &key).unwrap_or(0);
            return Err(at(offset, Some(key), message));
        }
        Ok(config)
    }

    /// The shipped example, parsed.
    pub fn example() -> Config {
        Config::parse(EXAMPLE, Path::new("tether.example.toml"))
            .expect("the shipped example parses (checked by a test)")
    }

    /// Range and consistency checks: (dotted key, what is wrong).
    fn check(&self) -> Vec<(String, String)> {
        let mut bad = Vec::new();
        let mut need = |ok: bool, key: &str, msg: String| {
            if !ok {
                bad.push((key.to_owned(), msg));
            }
        };
        let id = &self.site.id;
        need(
            !id.is_empty()
                && id.len() <= 32
                && id.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                }),
            "site.id",
            format!("`{id}` must be 1 to 32 characters of a-z, 0-9, _ and -"),
        );
        need(
            !self.hub.host.is_empty(),
            "hub.host",
            "must not be empty".into(),
        );
        need(self.hub.port != 0, "hub.port", "must be 1..=65535".into());
        need(
            self.office_db.port != 0,
            "office_db.port",
            "must be 1..=65535".into(),
        );
        need(self.mqtt.port != 0, "mqtt.port", "must be 1..=65535".into());
        if let Some(pin) = &self.hub.host_key {
            need(
                crate::tunnel::HostKeyPin::parse(pin).is_ok(),
                "hub.host_key",
                "expected `SHA256:...` or an OpenSSH public key line (`ssh-ed25519 AAAA...`)"
                    .into(),
            );
        }
        let t = &self.timings;
        let range = |d: Duration, lo: u64, hi: u64| {
            d >= Duration::from_millis(lo) && d <= Duration::from_millis(hi)
        };
        let show = |d: Duration| humantime::format_duration(d).to_string();
        for (key, d, lo, hi) in [
            ("timings.connect_timeout", t.connect_timeout, 1_000, 120_000),
            (
                "timings.handshake_timeout",
                t.handshake_timeout,
                1_000,
                120_000,
            ),
            (
                "timings.keepalive_interval",
                t.keepalive_interval,
                1_000,
                60_000,
            ),
            ("timings.probe_interval", t.probe_interval, 1_000, 300_000),
            ("timings.probe_timeout", t.probe_timeout, 500, 60_000),
            ("timings.reconnect_min", t.reconnect_min, 100, 60_000),
            ("timings.reconnect_max", t.reconnect_max, 100, 60_000),
            (
                "timings.login_backoff_min",
                t.login_backoff_min,
                10_000,
                86_400_000,
            ),
            (
                "timings.login_backoff_max",
                t.login_backoff_max,
                10_000,
                86_400_000,
            ),
            ("timings.settle", t.settle, 0, 60_000),
            ("timings.alert_after", t.alert_after, 60_000, 604_800_000),
            (
                "replication.poll_interval",
                self.replication.poll_interval,
                500,
                300_000,
            ),
            (
                "replication.heartbeat_interval",
                self.replication.heartbeat_interval,
                200,
                60_000,
            ),
            (
                "replication.lag_ok",
                self.replication.lag_ok,
                1_000,
                86_400_000,
            ),
            (
                "replication.query_timeout",
                self.replication.query_timeout,
                500,
                60_000,
            ),
            ("mqtt.keepalive", self.mqtt.keepalive, 5_000, 3_600_000),
            ("mqtt.republish", self.mqtt.republish, 10_000, 86_400_000),
        ] {
            need(
                range(d, lo, hi),
                key,
                format!(
                    "{} is out of range ({}..={})",
                    show(d),
                    show(Duration::from_millis(lo)),
                    show(Duration::from_millis(hi))
                ),
            );
        }
        need(
            (1..=10).contains(&t.keepalive_max),
            "timings.keepalive_max",
            format!("{} is out of range (1..=10)", t.keepalive_max),
        );
        need(
            t.reconnect_min <= t.reconnect_max,
            "timings.reconnect_min",
            format!(
                "{} is longer than timings.reconnect_max ({})",
                show(t.reconnect_min),
                show(t.reconnect_max)
            ),
        );
        need(
            t.login_backoff_min <= t.login_backoff_max,
            "timings.login_backoff_min",
            format!(
                "{} is longer than timings.login_backoff_max ({})",
                show(t.login_backoff_min),
                show(t.login_backoff_max)
            ),
        );
        if let Some(h) = self.replication.checksum_hour {
            need(
                h <= 23,
                "replication.checksum_hour",
                format!("{h} is out of range (0..=23)"),
            );
        }
        for (i, t) in self.replication.checksum_tables.iter().enumerate() {
            let ok = t.split('.').count() == 2 && t.split('.').all(|p| !p.is_empty());
            need(
                ok,
                "replication.checksum_tables",
                format!("entry {} `{t}` must be `db.table`", i + 1),
            );
        }
        if self.mqtt.tls {
            need(
                self.mqtt.ca_file.is_some(),
                "mqtt.ca_file",
                "must be set when mqtt.tls = true".into(),
            );
        }
        need(
            self.mqtt.client_cert.is_some() == self.mqtt.client_key.is_some(),
            "mqtt.client_cert",
            "client_cert and client_key go together".into(),
        );
        need(
            self.mqtt.password.is_none() || self.mqtt.username.is_some(),
            "mqtt.password",
            "a password needs mqtt.username".into(),
        );
        need(
            self.board.backend != BoardBackend::Sim || self.board.sim_socket.is_some(),
            "board.sim_socket",
            "must be set when board.backend = \"sim\"".into(),
        );
        need(
            tracing_subscriber::EnvFilter::try_new(&self.log.level).is_ok(),
            "log.level",
            format!(
                "`{}` is not a log filter (try \"info\" or \"tether=debug\")",
                self.log.level
            ),
        );
        bad
    }

    /// The device key's path.
    pub fn key_path(&self) -> PathBuf {
        self.hub
            .key_path
            .clone()
            .unwrap_or_else(|| self.data.dir.join("device_key"))
    }

    /// The MQTT client id.
    pub fn mqtt_client_id(&self) -> String {
        self.mqtt
            .client_id
            .clone()
            .unwrap_or_else(|| format!("tether-{}", self.site.id))
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).trim().to_owned()
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

/// The dotted path of the deepest key whose key or value covers `offset`.
fn path_at(table: &DeTable<'_>, offset: usize) -> Vec<String> {
    for (k, v) in table {
        let in_key = k.span().contains(&offset);
        let in_value = v.span().contains(&offset);
        if !(in_key || in_value) {
            continue;
        }
        let mut path = vec![k.get_ref().to_string()];
        if in_value && let DeValue::Table(inner) = v.get_ref() {
            path.extend(path_at(inner, offset));
        }
        return path;
    }
    // Tables from `[header]` lines may not cover their keys: look inside each.
    for (k, v) in table {
        if let DeValue::Table(inner) = v.get_ref() {
            let sub = path_at(inner, offset);
            if !sub.is_empty() {
                let mut path = vec![k.get_ref().to_string()];
                path.extend(sub);
                return path;
            }
        }
    }
    Vec::new()
}

/// Where a dotted key is written (its key if present, else its nearest written parent).
fn span_of(table: &DeTable<'_>, dotted: &str) -> Option<usize> {
    let mut table = table;
    let mut found = None;
    for part in dotted.split('.') {
        let Some((k, v)) = table.iter().find(|(k, _)| k.get_ref().as_ref() == part) else {
            return found;
        };
        found = Some(k.span().start);
        match v.get_ref() {
            DeValue::Table(inner) => table = inner,
            _ => return found,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_parses_and_matches_the_defaults() {
        let c = Config::example();
        assert_eq!(c.timings, Timings::default());
        assert_eq!(c.forwards, Forwards::default());
        assert_eq!(c.replication, Replication::default());
    }

    #[test]
    fn debug_output_masks_passwords() {
        let c = Config::example();
        let shown = format!("{c:?}");
        assert!(!shown.contains(c.office_db.password.expose()), "{shown}");
        assert!(!shown.contains(c.hub_db.password.expose()), "{shown}");
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("a\nbc\n", 3), (2, 2));
        assert_eq!(line_col("abc", 0), (1, 1));
    }
}
