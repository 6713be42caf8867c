//! The agent's configuration: one TOML file parsed once, at start, into types.
//!
//! Every mistake is reported with the file, line, column and dotted key; unknown keys are
//! errors (a typo must not silently fall back to a default); passwords are [`Secret`]s,
//! masked in Debug output and never echoed in errors. Every struct derives `Serialize` so
//! a program (the lab) can write a `tether.toml`; only then do secrets appear in clear.

mod check;
mod fleet;
mod locate;

pub use fleet::{FleetConfig, FleetMqtt, FleetView};

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use toml::de::DeTable;

use crate::secret::Secret;

/// The example shipped with the product: every key, its default, one line each.
pub const EXAMPLE: &str = include_str!("../../tether.example.toml");

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
    #[serde(default)]
    pub web: Web,
    #[serde(default)]
    pub updates: Updates,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    /// `[a-z0-9_-]{1,32}`: used in MQTT topics and the client id.
    pub id: String,
    /// Human name (Home Assistant device name); defaults to the id.
    #[serde(default)]
    pub name: Option<String>,
    /// The most sites (hub included) that will ever write to this data: every server's
    /// `auto_increment_increment` must be at least this, and changing it later means
    /// changing every server at once.
    #[serde(default = "d_planned_sites")]
    pub planned_sites: u32,
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
    #[serde(default = "d_ssh_port", deserialize_with = "port")]
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
            .ok_or_else(|| format!("`{s}` is not host:port (e.g. \"127.0.0.1:3307\")"))?;
        let host = match host.strip_prefix('[') {
            Some(inner) => inner
                .strip_suffix(']')
                .ok_or_else(|| format!("`{s}`: unbalanced [ ] around the host"))?,
            // An unbracketed IPv6 address would be split at the wrong colon.
            None if host.contains(':') => {
                return Err(format!("`{s}`: write IPv6 addresses as [address]:port"));
            }
            None => host,
        };
        if host.is_empty() {
            return Err(format!("`{s}` has no host"));
        }
        match port.parse::<u16>() {
            Ok(p) if p != 0 => Ok(Addr::new(host, p)),
            _ => Err(format!("`{s}`: the port must be a number 1..=65535")),
        }
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
    #[serde(default = "d_db_port", deserialize_with = "port")]
    pub port: u16,
    #[serde(default = "d_user")]
    pub user: String,
    pub password: Secret,
    #[serde(default = "d_user")]
    pub database: String,
    /// Which family the SQL printed by `tether enroll` and `tether doctor` is for. The
    /// running agent asks each server itself whatever this says.
    #[serde(default)]
    pub family: FamilySetting,
}

/// `office_db.family`: the database family both sites run, or `auto`: ask the office
/// server (its greeting says, before any account exists).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum FamilySetting {
    #[default]
    #[serde(rename = "auto")]
    Auto,
    #[serde(rename = "mariadb")]
    MariaDb,
    #[serde(rename = "mysql")]
    MySql,
}

impl FamilySetting {
    /// The family named, or `None` for `auto`.
    pub fn family(self) -> Option<crate::dialect::Family> {
        match self {
            FamilySetting::Auto => None,
            FamilySetting::MariaDb => Some(crate::dialect::Family::MariaDb),
            FamilySetting::MySql => Some(crate::dialect::Family::MySql),
        }
    }
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
    /// Restart each replica's IO thread the moment the tunnel is back (instead of
    /// waiting for the server's own retry). Off only to measure the server's default.
    pub restart_on_reconnect: bool,
    /// The hub's replication connection (MariaDB) or channel (MySQL) that applies this
    /// office's changes, where the hub replicates from several offices: every statement
    /// the agent sends to the hub about its replica names it. `None`: the hub's default.
    pub hub_connection: Option<String>,
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
            restart_on_reconnect: true,
            hub_connection: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mqtt {
    pub enabled: bool,
    pub host: String,
    #[serde(deserialize_with = "port")]
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

/// The read-only status page on the LAN; off unless `listen` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Web {
    /// Address and port the page is served on, e.g. `0.0.0.0:8080`.
    pub listen: Option<Addr>,
    /// Basic auth user; needs `password_hash`.
    pub user: Option<String>,
    /// PBKDF2 hash from `tether web-passwd` (never the password itself).
    pub password_hash: Option<Secret>,
}

impl Web {
    /// The parsed password hash (checked when the config was parsed).
    pub fn password_hash(&self) -> Option<crate::passwd::PasswordHash> {
        self.password_hash
            .as_ref()
            .and_then(|h| crate::passwd::PasswordHash::parse(h.expose()).ok())
    }
}

/// Signed updates from the hub, read through the tunnel (see the README).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Updates {
    /// Check the hub for releases.
    pub enabled: bool,
    /// How often (with up to a tenth of jitter); the first check comes after the tunnel
    /// has been up for this long or a minute, whichever is shorter.
    #[serde(with = "dur")]
    pub check_every: Duration,
    /// The trusted release public keys: `ssh-ed25519` lines, shipped by the package or
    /// image.
    pub release_key: PathBuf,
    /// How long a new version has to prove itself before the box goes back.
    #[serde(with = "dur")]
    pub trial: Duration,
    /// Bytes a second a download may take from the link; 0 leaves it to the link.
    pub max_rate: u64,
}

impl Default for Updates {
    fn default() -> Self {
        Updates {
            enabled: true,
            check_every: secs(3600),
            release_key: "/usr/share/tether/release-key.pub".into(),
            trial: secs(120),
            max_rate: 0,
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
            reconnect_min: Duration::from_millis(250),
            reconnect_max: Duration::from_millis(500),
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
fn d_planned_sites() -> u32 {
    2
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

/// Ports: 1..=65535, with a message that says so (serde's own would say "u16").
fn port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    struct Port;
    impl serde::de::Visitor<'_> for Port {
        type Value = u16;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a port number (1..=65535)")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u16, E> {
            match u16::try_from(v) {
                Ok(p) if p != 0 => Ok(p),
                _ => Err(E::custom(format!("{v} is out of range (1..=65535)"))),
            }
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u16, E> {
            match u16::try_from(v) {
                Ok(p) if p != 0 => Ok(p),
                _ => Err(E::custom(format!("{v} is out of range (1..=65535)"))),
            }
        }
    }
    d.deserialize_u16(Port)
}

/// A configuration mistake, located.
///
/// Shown as `FILE:LINE:COLUMN: KEY: WHAT`, e.g.
/// `tether.toml:14:22: timings.keepalive_interval: 0s is out of range (1s..=1m)`.
/// The message never contains a secret's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file as it was named.
    pub file: String,
    /// 1-based; 0 when the mistake is not at a place in the file (it cannot be read).
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// The dotted key, when the mistake is in one.
    pub key: Option<String>,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:", self.file)?;
        if self.line > 0 {
            write!(f, "{}:{}:", self.line, self.column)?;
        }
        if let Some(key) = &self.key {
            write!(f, " {key}:")?;
        }
        write!(f, " {}", self.message)
    }
}

/// A config file's text, or an error naming the file.
pub(crate) fn read_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.display().to_string(),
        line: 0,
        column: 0,
        key: None,
        message: format!("cannot read the file: {e}"),
    })
}

impl Config {
    /// Reads and parses a file.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        Config::parse(&read_text(path)?, path)
    }

    /// Parses text; `path` only names the file in errors.
    pub fn parse(text: &str, path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        parse_located(text, path.as_ref(), Config::problems)
    }

    /// The shipped example ([`EXAMPLE`]), parsed.
    pub fn example() -> Config {
        // A constant of the build, checked by a test: cannot fail at run time.
        Config::parse(EXAMPLE, "tether.example.toml")
            .expect("the shipped example parses (checked by a test)")
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

/// Parses a TOML file's text into `T`, then runs `problems` on it; the first mistake is
/// reported located (file, line, column, dotted key) with no secret's value in it.
/// `path` only names the file. Every tether file (the agent's, the fleet view's) goes
/// through here.
fn parse_located<T: serde::de::DeserializeOwned>(
    text: &str,
    path: &Path,
    problems: impl Fn(&T) -> Vec<check::Problem>,
) -> Result<T, ConfigError> {
    let file = path.display().to_string();
    let at = |offset: usize, key: Option<String>, message: String| {
        let (line, column) = locate::line_col(text, offset);
        ConfigError {
            file: file.clone(),
            line,
            column,
            key,
            message,
        }
    };
    // Syntax first: its messages are fixed phrases (never the text), first line only
    // (the rest is a snippet of the file, which could be a password line).
    let doc = DeTable::parse(text).map_err(|e| {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        at(offset, None, locate::first_line(e.message()))
    })?;
    let doc = doc.get_ref();
    let parsed: T = toml::from_str(text).map_err(|e| {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        let mut path = locate::path_at(doc, offset);
        let raw = locate::first_line(e.message());
        // serde names a missing field but the span points at its table.
        if let Some(field) = locate::between(&raw, "missing field `", "`") {
            path.push(field.to_owned());
        }
        let message = if path.last().is_some_and(|k| locate::is_secret_key(k)) {
            locate::secret_message(&raw)
        } else {
            locate::scrub(&locate::reword(&raw), &locate::secret_values(doc, text))
        };
        let key = (!path.is_empty()).then(|| path.join("."));
        at(offset, key, message)
    })?;
    if let Some(problem) = problems(&parsed).into_iter().next() {
        // Point at the first of the keys involved that is written in the file.
        let (key, offset) = problem
            .keys
            .iter()
            .find_map(|k| locate::written(doc, k).map(|o| (*k, o)))
            .unwrap_or_else(|| {
                let k = problem.keys[0];
                (k, locate::nearest(doc, k))
            });
        let message = locate::scrub(&problem.message, &locate::secret_values(doc, text));
        return Err(at(offset, Some(key.to_owned()), message));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[site]\nid = \"office\"\n[hub]\nhost = \"hub.example.com\"\n\
        [office_db]\npassword = \"change-me\"\n[hub_db]\npassword = \"change-me-too\"\n";

    #[test]
    fn the_example_holds_the_defaults() {
        let mut defaults = Config::parse(MINIMAL, "minimal.toml").unwrap();
        let example = Config::example();
        // The example names the site; the default name is the id.
        assert_eq!(defaults.site.name, None);
        assert_eq!(defaults.site.display_name(), "office");
        defaults.site.name = example.site.name.clone();
        assert_eq!(example, defaults);
    }

    #[test]
    fn debug_output_masks_passwords() {
        let mut c = Config::example();
        c.office_db.password = Secret::new("Office-Pw-1a7f");
        c.hub_db.password = Secret::new("Hub-Pw-2b8e");
        c.mqtt.username = Some("m".into());
        c.mqtt.password = Some(Secret::new("Mqtt-Pw-3c9d"));
        c.web.user = Some("office".into());
        let hash = crate::passwd::PasswordHash::create(&Secret::new("long enough"), 1000).to_phc();
        c.web.password_hash = Some(hash.clone());
        for shown in [format!("{c:?}"), format!("{c:#?}")] {
            for p in ["Office-Pw", "Hub-Pw", "Mqtt-Pw", "pbkdf2", hash.expose()] {
                assert!(!shown.contains(p), "{p} shown: {shown}");
            }
        }
        let shown = format!("{c:?}");
        assert_eq!(shown.matches("password: ***").count(), 2, "{shown}");
        assert!(shown.contains("password: Some(***)"), "{shown}");
        assert!(shown.contains("password_hash: Some(***)"), "{shown}");
    }

    #[test]
    fn written_configs_read_back_equal_with_their_secrets() {
        let mut c = Config::example();
        c.mqtt.username = Some("m".into());
        c.mqtt.password = Some(Secret::new("mqtt-pass-3"));
        c.replication.checksum_tables = vec!["app.orders".into()];
        c.replication.checksum_hour = Some(3);
        c.forwards.remote_listen = Addr::new("::1", 3307);
        let text = toml::to_string(&c).unwrap();
        assert_eq!(Config::parse(&text, "written.toml").unwrap(), c);
    }

    #[test]
    fn addresses() {
        assert_eq!("db.lan:3306".parse(), Ok(Addr::new("db.lan", 3306)));
        assert_eq!("[::1]:3307".parse(), Ok(Addr::new("::1", 3307)));
        assert_eq!(Addr::new("::1", 3307).to_string(), "[::1]:3307");
        for bad in [
            "db.lan",
            ":3306",
            "db:0",
            "db:65536",
            "db:x",
            "::1:3306",
            "[::1:3306",
        ] {
            assert!(bad.parse::<Addr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_point_at_the_value_of_a_checked_key() {
        let text = format!("{MINIMAL}[timings]\nsettle    =   \"61s\"\n");
        let e = Config::parse(&text, "t.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.toml:10:15: timings.settle: 1m 1s is out of range (0s..=1m)"
        );
    }

    #[test]
    fn the_sites_planned_are_two_unless_said() {
        let c = Config::parse(MINIMAL, "t.toml").unwrap();
        assert_eq!(c.site.planned_sites, 2);
        let text = MINIMAL.replacen("[site]\n", "[site]\nplanned_sites = 20\n", 1);
        assert_eq!(
            Config::parse(&text, "t.toml").unwrap().site.planned_sites,
            20
        );
        for bad in ["1", "65536"] {
            let text = MINIMAL.replacen("[site]\n", &format!("[site]\nplanned_sites = {bad}\n"), 1);
            let e = Config::parse(&text, "t.toml").unwrap_err();
            assert_eq!(e.key.as_deref(), Some("site.planned_sites"), "{e}");
            assert!(e.message.contains("out of range"), "{e}");
        }
    }

    #[test]
    fn the_hub_connection_is_a_name_both_families_take() {
        let c = Config::parse(MINIMAL, "t.toml").unwrap();
        assert_eq!(c.replication.hub_connection, None);
        let text = format!("{MINIMAL}[replication]\nhub_connection = \"office-2\"\n");
        let c = Config::parse(&text, "t.toml").unwrap();
        assert_eq!(c.replication.hub_connection.as_deref(), Some("office-2"));
        let text = format!("{MINIMAL}[replication]\nhub_connection = \"office 2\"\n");
        let e = Config::parse(&text, "t.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("replication.hub_connection"), "{e}");
        assert_eq!(e.line, 10, "{e}");
        assert!(e.message.contains("only letters"), "{e}");
    }

    #[test]
    fn a_consistency_error_points_at_the_key_that_is_written() {
        let text = format!("{MINIMAL}[timings]\nreconnect_max = \"200ms\"\n");
        let e = Config::parse(&text, "t.toml").unwrap_err();
        assert_eq!(e.line, 10, "{e}");
        assert_eq!(e.key.as_deref(), Some("timings.reconnect_max"), "{e}");
    }

    #[test]
    fn a_password_of_the_wrong_type_is_not_echoed() {
        for value in [
            "123456789",
            "true",
            "1979-05-27",
            "[\"hunter2\"]",
            "{ a = \"hunter2\" }",
        ] {
            let text = MINIMAL.replace("\"change-me\"", value);
            let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
            assert!(e.starts_with("t.toml:6:"), "{e}");
            assert!(e.contains("office_db.password"), "{e}");
            for secret in ["123456789", "hunter2", "1979"] {
                assert!(!e.contains(secret), "{e}");
            }
        }
    }

    #[test]
    fn the_status_page_section() {
        let hash = crate::passwd::PasswordHash::create(&Secret::new("long enough"), 1000).to_phc();
        let text = format!(
            "{MINIMAL}[web]\nlisten = \"0.0.0.0:8080\"\nuser = \"office\"\npassword_hash = \"{}\"\n",
            hash.expose()
        );
        let c = Config::parse(&text, "t.toml").unwrap();
        assert_eq!(c.web.listen, Some(Addr::new("0.0.0.0", 8080)));
        assert!(
            c.web
                .password_hash()
                .unwrap()
                .verify(&Secret::new("long enough"))
        );
        assert!(!format!("{c:?}").contains(hash.expose()));
        assert_eq!(
            Config::parse(MINIMAL, "t.toml").unwrap().web,
            Web::default()
        );

        let e =
            Config::parse(&format!("{MINIMAL}[web]\nuser = \"office\"\n"), "t.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("web.user"), "{e}");
        assert!(e.message.contains("go together"), "{e}");
        // A mistyped hash is refused without being echoed.
        let bad = text.replace("$pbkdf2-sha256$", "$pbkdf2-sha512$");
        let e = Config::parse(&bad, "t.toml").unwrap_err().to_string();
        assert!(e.contains("web.password_hash"), "{e}");
        assert!(!e.contains(&hash.expose()[20..]), "{e}");
        let e = Config::parse(&text.replace("0.0.0.0:8080", "8080"), "t.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("web.listen"), "{e}");
    }

    #[test]
    fn secrets_are_scrubbed_from_other_messages() {
        // A mistake elsewhere whose message quotes a value equal to a password.
        let text = MINIMAL.replace("\"change-me\"", "\"hub.example.com:x\"")
            + "[forwards]\nlocal_listen = \"hub.example.com:x\"\n";
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(e.contains("forwards.local_listen"), "{e}");
        assert!(!e.contains("hub.example.com:x"), "{e}");
    }
}
