//! Range and consistency checks that types alone cannot express.

use std::time::Duration;

use super::{BoardBackend, Config};

/// One mistake: the keys involved (the first one written in the file is shown and
/// pointed at) and what is wrong.
pub(super) struct Problem {
    pub keys: Vec<&'static str>,
    pub message: String,
}

fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const S: u64 = 1_000;
const MIN: u64 = 60 * S;
const H: u64 = 60 * MIN;
const DAY: u64 = 24 * H;

impl Config {
    /// Every problem found; the first is the one reported.
    pub(super) fn problems(&self) -> Vec<Problem> {
        let mut bad = Vec::new();
        let mut need = |ok: bool, keys: &[&'static str], message: String| {
            if !ok {
                bad.push(Problem {
                    keys: keys.to_vec(),
                    message,
                });
            }
        };

        let id = &self.site.id;
        need(
            !id.is_empty()
                && id.len() <= 32
                && id.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                }),
            &["site.id"],
            format!(
                "`{id}` must be 1 to 32 characters of a-z, 0-9, _ and - (it is used in MQTT topics)"
            ),
        );
        need(
            !self.hub.host.trim().is_empty(),
            &["hub.host"],
            "must not be empty".into(),
        );
        need(
            !self.hub.user.is_empty(),
            &["hub.user"],
            "must not be empty".into(),
        );
        if let Some(pin) = &self.hub.host_key
            && let Err(e) = crate::tunnel::HostKeyPin::parse(pin)
        {
            need(false, &["hub.host_key"], e);
        }

        let r = &self.replication;
        let t = &self.timings;
        for (key, d, lo, hi) in [
            ("replication.poll_interval", r.poll_interval, 500, 5 * MIN),
            (
                "replication.heartbeat_interval",
                r.heartbeat_interval,
                200,
                MIN,
            ),
            ("replication.lag_ok", r.lag_ok, S, DAY),
            ("replication.query_timeout", r.query_timeout, 500, MIN),
            ("mqtt.keepalive", self.mqtt.keepalive, 5 * S, H),
            ("mqtt.republish", self.mqtt.republish, 10 * S, DAY),
            ("timings.connect_timeout", t.connect_timeout, S, 2 * MIN),
            ("timings.handshake_timeout", t.handshake_timeout, S, 2 * MIN),
            ("timings.keepalive_interval", t.keepalive_interval, S, MIN),
            ("timings.probe_interval", t.probe_interval, S, 5 * MIN),
            ("timings.probe_timeout", t.probe_timeout, 500, MIN),
            ("timings.reconnect_min", t.reconnect_min, 100, MIN),
            ("timings.reconnect_max", t.reconnect_max, 100, MIN),
            (
                "timings.login_backoff_min",
                t.login_backoff_min,
                10 * S,
                DAY,
            ),
            (
                "timings.login_backoff_max",
                t.login_backoff_max,
                10 * S,
                DAY,
            ),
            ("timings.settle", t.settle, 0, MIN),
            ("timings.alert_after", t.alert_after, MIN, 7 * DAY),
            ("updates.check_every", self.updates.check_every, S, 7 * DAY),
            ("updates.trial", self.updates.trial, 10 * S, H),
        ] {
            need(
                (ms(lo)..=ms(hi)).contains(&d),
                &[key],
                format!(
                    "{} is out of range ({}..={})",
                    show(d),
                    show(ms(lo)),
                    show(ms(hi))
                ),
            );
        }
        if let Some(h) = r.checksum_hour {
            need(
                h <= 23,
                &["replication.checksum_hour"],
                format!("{h} is out of range (0..=23)"),
            );
        }
        for (i, table) in r.checksum_tables.iter().enumerate() {
            let parts: Vec<&str> = table.split('.').collect();
            need(
                parts.len() == 2 && parts.iter().all(|p| !p.is_empty()),
                &["replication.checksum_tables"],
                format!("entry {} `{table}` must be written `db.table`", i + 1),
            );
        }
        need(
            (1..=10).contains(&t.keepalive_max),
            &["timings.keepalive_max"],
            format!("{} is out of range (1..=10)", t.keepalive_max),
        );
        need(
            t.reconnect_min <= t.reconnect_max,
            &["timings.reconnect_min", "timings.reconnect_max"],
            format!(
                "timings.reconnect_min ({}) is longer than timings.reconnect_max ({})",
                show(t.reconnect_min),
                show(t.reconnect_max)
            ),
        );
        need(
            t.login_backoff_min <= t.login_backoff_max,
            &["timings.login_backoff_min", "timings.login_backoff_max"],
            format!(
                "timings.login_backoff_min ({}) is longer than timings.login_backoff_max ({})",
                show(t.login_backoff_min),
                show(t.login_backoff_max)
            ),
        );

        let m = &self.mqtt;
        if m.enabled {
            need(
                !m.host.trim().is_empty(),
                &["mqtt.host"],
                "must not be empty".into(),
            );
        }
        // The files are only required to be named here; reading them is the MQTT task's
        // job, where a missing file becomes a health reason rather than a refusal to start.
        need(
            !m.tls || m.ca_file.is_some(),
            &["mqtt.ca_file", "mqtt.tls"],
            "mqtt.ca_file must be set when mqtt.tls = true".into(),
        );
        need(
            m.client_cert.is_some() == m.client_key.is_some(),
            &["mqtt.client_cert", "mqtt.client_key"],
            "mqtt.client_cert and mqtt.client_key go together".into(),
        );
        need(
            m.tls || m.client_cert.is_none(),
            &["mqtt.client_cert", "mqtt.tls"],
            "mqtt.client_cert needs mqtt.tls = true".into(),
        );
        need(
            m.password.is_none() || m.username.is_some(),
            &["mqtt.username", "mqtt.password"],
            "mqtt.password needs mqtt.username".into(),
        );
        need(
            !m.prefix.is_empty() && !m.prefix.contains(['+', '#']),
            &["mqtt.prefix"],
            "must be a non-empty topic without + or #".into(),
        );
        need(
            !m.discovery_prefix.is_empty() && !m.discovery_prefix.contains(['+', '#']),
            &["mqtt.discovery_prefix"],
            "must be a non-empty topic without + or #".into(),
        );

        need(
            self.board.backend != BoardBackend::Sim || self.board.sim_socket.is_some(),
            &["board.sim_socket", "board.backend"],
            "board.sim_socket must be set when board.backend = \"sim\"".into(),
        );
        for (key, line) in [
            ("board.green", &self.board.green),
            ("board.amber", &self.board.amber),
            ("board.red", &self.board.red),
            ("board.button", &self.board.button),
        ] {
            need(
                !line.line.is_empty(),
                &[key],
                "the line name must not be empty".into(),
            );
        }

        let w = &self.web;
        need(
            w.user.is_some() == w.password_hash.is_some(),
            &["web.user", "web.password_hash"],
            "web.user and web.password_hash go together (make the hash with `tether web-passwd`)"
                .into(),
        );
        if let Some(user) = &w.user {
            need(
                !user.is_empty() && !user.contains(':') && !user.chars().any(char::is_control),
                &["web.user"],
                "must be non-empty, without `:` or control characters".into(),
            );
        }
        if let Some(Err(e)) = w
            .password_hash
            .as_ref()
            .map(|h| crate::passwd::PasswordHash::parse(h.expose()))
        {
            need(false, &["web.password_hash"], e);
        }
        need(
            w.listen.is_some() || w.user.is_none(),
            &["web.user", "web.listen"],
            "web.user needs web.listen (the page is off without it)".into(),
        );

        need(
            tracing_subscriber::EnvFilter::try_new(&self.log.level).is_ok(),
            &["log.level"],
            format!(
                "`{}` is not a log filter (try \"info\" or \"tether=debug\")",
                self.log.level
            ),
        );
        bad
    }
}
