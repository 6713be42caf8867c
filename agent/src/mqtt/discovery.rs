//! MQTT topic names and the Home Assistant discovery configs: pure functions, no I/O.
//!
//! Every entity reads the one retained state document (DESIGN §4) through a
//! `value_template`, so a site costs one state message however many entities it shows.

use serde_json::{Value, json};

/// Where the agent publishes: `<prefix>/<site>/status`, `<prefix>/<site>/state` and the
/// discovery configs under `<discovery_prefix>/...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttTopics {
    pub prefix: String,
    pub site: String,
    pub discovery_prefix: String,
}

impl MqttTopics {
    pub fn new(
        prefix: impl Into<String>,
        site: impl Into<String>,
        discovery_prefix: impl Into<String>,
    ) -> Self {
        MqttTopics {
            prefix: prefix.into(),
            site: site.into(),
            discovery_prefix: discovery_prefix.into(),
        }
    }

    /// Retained `online` / `offline`; `offline` is also the last will.
    pub fn status(&self) -> String {
        format!("{}/{}/status", self.prefix, self.site)
    }

    /// Retained JSON state document.
    pub fn state(&self) -> String {
        format!("{}/{}/state", self.prefix, self.site)
    }

    /// Home Assistant's birth / last-will topic: `online` means it wants discovery again.
    pub fn ha_status(&self) -> String {
        format!("{}/status", self.discovery_prefix)
    }

    /// The node id grouping this site's configs; also the device identifier.
    pub fn node_id(&self) -> String {
        format!("tether_{}", self.site)
    }

    /// `<discovery_prefix>/<component>/tether_<site>/<object_id>/config`.
    pub fn discovery(&self, component: &str, object_id: &str) -> String {
        format!(
            "{}/{}/{}/{}/config",
            self.discovery_prefix,
            component,
            self.node_id(),
            object_id
        )
    }
}

/// Payload of the status topic while connected.
pub const ONLINE: &str = "online";
/// Payload of the status topic after a clean stop, and the last will.
pub const OFFLINE: &str = "offline";

/// Home Assistant keeps a sensor's state to 255 characters and refuses longer ones.
const HA_STATE_MAX: usize = 255;

/// The two replication directions as the state document names them.
const DIRECTIONS: [(&str, &str); 2] = [
    ("hub_to_office", "hub to office"),
    ("office_to_hub", "office to hub"),
];

/// One discovery config per entity, as `(topic, JSON payload)`, all meant to be retained.
pub fn discovery_messages(
    site_id: &str,
    site_name: &str,
    topics: &MqttTopics,
    version: &str,
) -> Vec<(String, String)> {
    // Identity comes from the site id, topic paths from `topics`.
    let node = format!("tether_{site_id}");
    let entity_base = entity_slug(&node);
    let device = json!({
        "identifiers": [node],
        "name": site_name,
        "manufacturer": "tether",
        "model": "tether agent",
        "sw_version": version,
    });
    let origin = json!({ "name": "tether", "sw_version": version });
    let common = |component: &str, object_id: &str, name: &str| -> Value {
        json!({
            "name": name,
            "unique_id": format!("{node}_{object_id}"),
            "default_entity_id": format!("{component}.{entity_base}_{object_id}"),
            "state_topic": topics.state(),
            "availability_topic": topics.status(),
            "payload_available": ONLINE,
            "payload_not_available": OFFLINE,
            "qos": 1,
            "device": device,
            "origin": origin,
        })
    };
    let mut entities: Vec<(&str, String, Value)> = Vec::new();
    let mut problem = common("binary_sensor", "problem", "Problem");
    extend(
        &mut problem,
        json!({
            "device_class": "problem",
            "value_template": "{{ 'OFF' if value_json.verdict == 'in_sync' else 'ON' }}",
        }),
    );
    entities.push(("binary_sensor", "problem".into(), problem));

    let mut tunnel = common("binary_sensor", "tunnel", "Tunnel");
    extend(
        &mut tunnel,
        json!({
            "device_class": "connectivity",
            "value_template": "{{ 'ON' if value_json.tunnel.up else 'OFF' }}",
        }),
    );
    entities.push(("binary_sensor", "tunnel".into(), tunnel));

    for (dir, words) in DIRECTIONS {
        let object_id = format!("{dir}_running");
        let mut running = common("binary_sensor", &object_id, &format!("Replication {words}"));
        let d = format!("value_json.replication.{dir}");
        extend(
            &mut running,
            json!({
                "device_class": "running",
                "value_template":
                    format!("{{{{ 'ON' if {d}.io_running and {d}.sql_running else 'OFF' }}}}"),
            }),
        );
        entities.push(("binary_sensor", object_id, running));
    }

    for (dir, words) in DIRECTIONS {
        let object_id = format!("{dir}_lag");
        let mut lag = common("sensor", &object_id, &format!("Lag {words}"));
        let d = format!("value_json.replication.{dir}");
        // Home Assistant turns the text `None` into "unknown" for numeric sensors; a
        // null lag (replica not reachable) must not read as zero.
        extend(
            &mut lag,
            json!({
                "device_class": "duration",
                "unit_of_measurement": "s",
                "state_class": "measurement",
                "value_template":
                    format!("{{{{ {d}.lag_s if {d}.lag_s is number else 'None' }}}}"),
            }),
        );
        entities.push(("sensor", object_id, lag));
    }

    let mut last_error = common("sensor", "last_error", "Last error");
    extend(
        &mut last_error,
        json!({
            "icon": "mdi:alert-circle-outline",
            "value_template": format!(
                "{{{{ value_json.reasons[0][:{HA_STATE_MAX}] if value_json.reasons else '' }}}}"
            ),
        }),
    );
    entities.push(("sensor", "last_error".into(), last_error));

    let mut verdict = common("sensor", "verdict", "Verdict");
    extend(
        &mut verdict,
        json!({
            "icon": "mdi:database-sync",
            "value_template": "{{ value_json.verdict }}",
            // Every reason, and since when, as attributes: the state itself is one word.
            "json_attributes_topic": topics.state(),
            "json_attributes_template":
                "{{ {'reasons': value_json.reasons, 'since': value_json.since} | tojson }}",
        }),
    );
    entities.push(("sensor", "verdict".into(), verdict));

    entities
        .into_iter()
        .map(|(component, object_id, payload)| {
            (topics.discovery(component, &object_id), payload.to_string())
        })
        .collect()
}

fn extend(base: &mut Value, more: Value) {
    if let (Some(base), Value::Object(more)) = (base.as_object_mut(), more) {
        base.extend(more);
    }
}

/// An entity id part: Home Assistant allows only `[a-z0-9_]`, no leading, trailing or
/// doubled underscore; site ids may hold `-`.
fn entity_slug(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = if c.is_ascii_alphanumeric() {
            c.to_ascii_lowercase()
        } else {
            '_'
        };
        if c == '_' && (out.is_empty() || out.ends_with('_')) {
            continue;
        }
        out.push(c);
    }
    while out.ends_with('_') {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> MqttTopics {
        MqttTopics::new("tether", "office", "homeassistant")
    }

    #[test]
    fn topic_names_follow_the_contract() {
        let t = topics();
        assert_eq!(t.status(), "tether/office/status");
        assert_eq!(t.state(), "tether/office/state");
        assert_eq!(t.ha_status(), "homeassistant/status");
        assert_eq!(
            t.discovery("sensor", "verdict"),
            "homeassistant/sensor/tether_office/verdict/config"
        );
    }

    #[test]
    fn entity_ids_are_slugged() {
        assert_eq!(entity_slug("tether_my-office"), "tether_my_office");
        assert_eq!(entity_slug("tether__a--b_"), "tether_a_b");
    }

    #[test]
    fn one_config_per_entity_with_distinct_unique_ids() {
        let msgs = discovery_messages("office", "Main office", &topics(), "1.2.3");
        assert_eq!(msgs.len(), 8);
        let mut ids: Vec<String> = msgs
            .iter()
            .map(|(_, p)| {
                let v: Value = serde_json::from_str(p).unwrap_or_default();
                v["unique_id"].as_str().unwrap_or_default().to_owned()
            })
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 8);
    }
}
