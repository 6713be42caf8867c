//! The fleet view's file (`tether fleet --config`, default `/etc/tether/fleet.toml`): the
//! broker every site publishes to and how the view reads the sites. Parsed like the
//! agent's file: located errors, unknown keys refused, the password a [`Secret`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check::{Broker, DAY, H, MIN, Problem, S, broker_problems, duration_in};
use super::{Addr, ConfigError, dur, port, secs};
use crate::secret::Secret;

/// The whole file; every section and key may be left out.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    #[serde(default)]
    pub mqtt: FleetMqtt,
    #[serde(default)]
    pub fleet: FleetView,
}

/// The broker, as the sites' own `[mqtt]` sections name it (the same keys, without the
/// ones only a publishing site has).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetMqtt {
    pub host: String,
    #[serde(deserialize_with = "port")]
    pub port: u16,
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// The sites' `mqtt.prefix`.
    pub prefix: String,
    #[serde(with = "dur")]
    pub keepalive: Duration,
    /// Defaults to `tether-fleet-<host name>-<process id>`: several views may watch at once.
    pub client_id: Option<String>,
}

impl Default for FleetMqtt {
    fn default() -> Self {
        FleetMqtt {
            host: "127.0.0.1".into(),
            port: 1883,
            tls: false,
            ca_file: None,
            client_cert: None,
            client_key: None,
            username: None,
            password: None,
            prefix: "tether".into(),
            keepalive: secs(30),
            client_id: None,
        }
    }
}

/// How the view judges what it reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetView {
    /// The sites' `mqtt.republish`: a site with no state for twice this is shown silent.
    #[serde(with = "dur")]
    pub republish: Duration,
    /// How long a one-shot view waits for the broker's retained states (it stops
    /// sooner once the broker has sent them all).
    #[serde(with = "dur")]
    pub wait: Duration,
    /// Serve Prometheus `/metrics`, labelled by site, here (`tether fleet --listen`).
    pub listen: Option<Addr>,
}

impl Default for FleetView {
    fn default() -> Self {
        FleetView {
            republish: secs(300),
            wait: secs(5),
            listen: None,
        }
    }
}

impl FleetConfig {
    /// Reads and parses a file.
    pub fn load(path: impl AsRef<Path>) -> Result<FleetConfig, ConfigError> {
        let path = path.as_ref();
        FleetConfig::parse(&super::read_text(path)?, path)
    }

    /// Parses text; `path` only names the file in errors.
    pub fn parse(text: &str, path: impl AsRef<Path>) -> Result<FleetConfig, ConfigError> {
        super::parse_located(text, path.as_ref(), FleetConfig::problems)
    }

    fn problems(&self) -> Vec<Problem> {
        let m = &self.mqtt;
        let mut bad = broker_problems(&Broker {
            host: Some(&m.host),
            tls: m.tls,
            ca_file: m.ca_file.is_some(),
            client_cert: m.client_cert.is_some(),
            client_key: m.client_key.is_some(),
            username: m.username.is_some(),
            password_set: m.password.is_some(),
            prefix: &m.prefix,
        });
        for (key, d, lo, hi) in [
            ("mqtt.keepalive", m.keepalive, 5 * S, H),
            ("fleet.republish", self.fleet.republish, 10 * S, DAY),
            ("fleet.wait", self.fleet.wait, S, MIN),
        ] {
            bad.extend(duration_in(key, d, lo, hi));
        }
        bad
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_local_broker_with_the_sites_defaults() {
        let c = FleetConfig::parse("", "fleet.toml").unwrap();
        assert_eq!(c, FleetConfig::default());
        assert_eq!((c.mqtt.host.as_str(), c.mqtt.port), ("127.0.0.1", 1883));
        assert_eq!(c.fleet.republish, Duration::from_secs(300));
    }

    #[test]
    fn mistakes_are_located_and_unknown_keys_refused() {
        let e =
            FleetConfig::parse("[mqtt]\nhost = \"hub\"\nretain = true\n", "f.toml").unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (3, Some("mqtt.retain")), "{e}");
        let e = FleetConfig::parse("[fleet]\nrepublish = \"1s\"\n", "f.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "f.toml:2:13: fleet.republish: 1s is out of range (10s..=1day)"
        );
        let e = FleetConfig::parse("[mqtt]\ntls = true\n", "f.toml").unwrap_err();
        assert!(e.to_string().contains("mqtt.ca_file must be set"), "{e}");
        let e = FleetConfig::parse("[fleet]\nlisten = \"9100\"\n", "f.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("fleet.listen"), "{e}");
    }

    #[test]
    fn the_password_is_a_secret_never_shown() {
        let text = "[mqtt]\nusername = \"hub\"\npassword = \"fleet-pass-9\"\n";
        let c = FleetConfig::parse(text, "f.toml").unwrap();
        assert_eq!(
            c.mqtt.password.as_ref().map(Secret::expose),
            Some("fleet-pass-9")
        );
        assert!(!format!("{c:?}").contains("fleet-pass-9"));
        let e = FleetConfig::parse("[mqtt]\npassword = \"fleet-pass-9\"\n", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mqtt.password needs mqtt.username"), "{e}");
        assert!(!e.contains("fleet-pass-9"), "{e}");
    }
}
