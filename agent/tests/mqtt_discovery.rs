//! Home Assistant discovery configs checked against what Home Assistant requires, with
//! their value templates rendered (minijinja) against state documents the real health
//! machine produces.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tether::app::state_document;
use tether::events::{Direction, Event, ProbePath, ReplicationStatus, Stamp, TunnelEvent};
use tether::health::{HealthMachine, HealthSettings};
use tether::mqtt::{MqttTopics, OFFLINE, ONLINE, discovery_messages};

fn topics(site: &str) -> MqttTopics {
    MqttTopics::new("tether", site, "homeassistant")
}

fn configs(site: &str) -> Vec<(String, Value)> {
    discovery_messages(site, "Main office", &topics(site), "0.1.0")
        .into_iter()
        .map(|(t, p)| {
            let v = serde_json::from_str(&p).unwrap_or_else(|e| panic!("{t}: not JSON: {e}"));
            (t, v)
        })
        .collect()
}

fn id_chars_ok(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Home Assistant's `valid_entity_id`: `domain.object`, lowercase `[a-z0-9_]`, no leading,
/// trailing or doubled underscore in either part.
fn valid_entity_id(s: &str) -> bool {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !p.starts_with('_')
            && !p.ends_with('_')
            && !p.contains("__")
    };
    matches!(s.split_once('.'), Some((d, o)) if part_ok(d) && part_ok(o))
}

/// Keys Home Assistant's MQTT sensor / binary_sensor discovery schema knows; a typo
/// would be silently dropped by Home Assistant, so it fails here.
const KNOWN_KEYS: &[&str] = &[
    "name",
    "unique_id",
    "default_entity_id",
    "object_id",
    "state_topic",
    "availability_topic",
    "payload_available",
    "payload_not_available",
    "qos",
    "device",
    "origin",
    "device_class",
    "value_template",
    "unit_of_measurement",
    "state_class",
    "icon",
    "json_attributes_topic",
    "json_attributes_template",
    "entity_category",
    "expire_after",
    "force_update",
    "payload_on",
    "payload_off",
    "enabled_by_default",
];

#[test]
fn every_config_meets_home_assistant_requirements() {
    for site in ["office", "my-office_2"] {
        let t = topics(site);
        let all = configs(site);
        assert_eq!(all.len(), 8, "{site}: entity count");
        let mut unique_ids = BTreeSet::new();
        let mut entity_ids = BTreeSet::new();
        let mut topics_seen = BTreeSet::new();
        for (topic, c) in &all {
            // <discovery_prefix>/<component>/[<node_id>/]<object_id>/config
            let parts: Vec<&str> = topic.split('/').collect();
            assert_eq!(parts.len(), 5, "{topic}");
            assert_eq!(parts[0], "homeassistant", "{topic}");
            let component = parts[1];
            assert!(
                ["sensor", "binary_sensor"].contains(&component),
                "{topic}: component"
            );
            assert!(id_chars_ok(parts[2]), "{topic}: node_id characters");
            assert!(id_chars_ok(parts[3]), "{topic}: object_id characters");
            assert_eq!(parts[4], "config", "{topic}");
            assert!(
                topics_seen.insert(topic.clone()),
                "{topic}: duplicate topic"
            );

            let obj = c.as_object().expect("a JSON object");
            for key in obj.keys() {
                assert!(
                    KNOWN_KEYS.contains(&key.as_str()),
                    "{topic}: unknown key {key}"
                );
            }
            // state_topic is required for both sensor and binary_sensor.
            assert_eq!(c["state_topic"], t.state(), "{topic}: state_topic");
            // Device-based entities need a unique_id, unique across the site.
            let uid = c["unique_id"].as_str().expect("unique_id");
            assert!(
                unique_ids.insert(uid.to_owned()),
                "{topic}: duplicate unique_id"
            );
            assert!(c["name"].as_str().is_some_and(|n| !n.is_empty()));
            // An entity name starting with the device name is stripped with a warning.
            assert!(
                !c["name"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("Main office")
            );
            let entity = c["default_entity_id"].as_str().expect("default_entity_id");
            assert!(valid_entity_id(entity), "{topic}: bad entity id {entity}");
            assert!(
                entity.starts_with(&format!("{component}.")),
                "{topic}: {entity}"
            );
            assert!(entity_ids.insert(entity.to_owned()), "{entity}: duplicate");
            // Device: identifiers (or connections) and a name are required; all the same.
            let dev = &c["device"];
            assert_eq!(
                dev["identifiers"],
                serde_json::json!([format!("tether_{site}")])
            );
            assert_eq!(dev["name"], "Main office");
            assert_eq!(dev["manufacturer"], "tether");
            assert!(dev["model"].is_string() && dev["sw_version"] == "0.1.0");
            assert_eq!(c["origin"]["name"], "tether");
            // Availability: one topic form only, payloads matching birth and last will.
            assert!(
                c.get("availability").is_none(),
                "{topic}: both availability forms"
            );
            assert_eq!(c["availability_topic"], t.status());
            assert_eq!(c["payload_available"], ONLINE);
            assert_eq!(c["payload_not_available"], OFFLINE);
            assert!(c["value_template"].is_string(), "{topic}: value_template");

            match component {
                "binary_sensor" => {
                    let dc = c["device_class"].as_str().unwrap_or_default();
                    assert!(
                        ["problem", "connectivity", "running"].contains(&dc),
                        "{topic}: {dc}"
                    );
                    assert!(c.get("unit_of_measurement").is_none());
                }
                _ => {
                    if c.get("state_class").is_some() {
                        // measurement needs a numeric sensor; duration needs a time unit.
                        assert_eq!(c["state_class"], "measurement");
                        assert_eq!(c["device_class"], "duration");
                        assert!(
                            ["d", "h", "min", "s", "ms"]
                                .contains(&c["unit_of_measurement"].as_str().unwrap_or("")),
                            "{topic}: unit"
                        );
                    }
                }
            }
        }
        let object_ids: BTreeSet<&str> = all
            .iter()
            .filter_map(|(t, _)| t.split('/').nth(3))
            .collect();
        let expected: BTreeSet<&str> = [
            "problem",
            "tunnel",
            "hub_to_office_running",
            "office_to_hub_running",
            "hub_to_office_lag",
            "office_to_hub_lag",
            "last_error",
            "verdict",
        ]
        .into();
        assert_eq!(object_ids, expected);
    }
}

fn render(template: &str, doc: &Value) -> String {
    let env = minijinja::Environment::new();
    env.render_str(template, minijinja::context! { value_json => doc })
        .unwrap_or_else(|e| panic!("template {template}: {e}"))
}

/// Every entity's state for one document, by object id.
fn states(doc: &Value) -> std::collections::BTreeMap<String, String> {
    configs("office")
        .into_iter()
        .map(|(topic, c)| {
            let object = topic.split('/').nth(3).unwrap_or_default().to_owned();
            let tpl = c["value_template"].as_str().unwrap_or_default().to_owned();
            (object, render(&tpl, doc))
        })
        .collect()
}

fn stamp(start: SystemTime, secs: u64) -> Stamp {
    Stamp {
        mono: Duration::from_secs(secs),
        wall: start + Duration::from_secs(secs),
    }
}

fn running(lag: u64) -> ReplicationStatus {
    ReplicationStatus {
        io_running: Some(true),
        sql_running: Some(true),
        lag_s: Some(lag),
        ..Default::default()
    }
}

/// A healthy site as the real state machine documents it.
fn in_sync_machine() -> (HealthMachine, SystemTime) {
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut m = HealthMachine::new(
        HealthSettings {
            settle: Duration::from_secs(5),
            alert_after: Duration::from_secs(3600),
            lag_ok: Duration::from_secs(30),
        },
        stamp(start, 0),
    );
    m.handle(Event::Tunnel(TunnelEvent::Up), stamp(start, 1));
    for path in [
        ProbePath::HubDbThroughLocalForward,
        ProbePath::OfficeDbThroughRemoteForward,
    ] {
        m.handle(
            Event::Tunnel(TunnelEvent::ProbeOk {
                path,
                rtt: Duration::from_millis(5),
            }),
            stamp(start, 1),
        );
    }
    for direction in Direction::BOTH {
        m.handle(
            Event::Replication {
                direction,
                status: running(2),
            },
            stamp(start, 2),
        );
    }
    m.tick(stamp(start, 3));
    (m, start)
}

#[test]
fn templates_read_the_real_state_document() {
    let (mut m, start) = in_sync_machine();
    let doc = state_document(m.health(), Duration::from_secs(3), None);
    assert_eq!(doc["verdict"], "in_sync", "{doc}");
    let s = states(&doc);
    assert_eq!(s["problem"], "OFF");
    assert_eq!(s["tunnel"], "ON");
    assert_eq!(s["hub_to_office_running"], "ON");
    assert_eq!(s["office_to_hub_running"], "ON");
    assert_eq!(s["hub_to_office_lag"], "2");
    assert_eq!(s["office_to_hub_lag"], "2");
    assert_eq!(s["last_error"], "");
    assert_eq!(s["verdict"], "in_sync");

    // A duplicate key stops the hub's SQL thread: a person must act, at once.
    let broken = ReplicationStatus {
        io_running: Some(true),
        sql_running: Some(false),
        lag_s: None,
        last_sql_errno: 1062,
        last_sql_error: "Duplicate entry '7' for key 'PRIMARY'".into(),
        ..Default::default()
    };
    m.handle(
        Event::Replication {
            direction: Direction::OfficeToHub,
            status: broken,
        },
        stamp(start, 4),
    );
    let doc = state_document(m.health(), Duration::from_secs(4), None);
    assert_eq!(doc["verdict"], "needs_attention", "{doc}");
    let s = states(&doc);
    assert_eq!(s["problem"], "ON");
    assert_eq!(s["office_to_hub_running"], "OFF");
    assert_eq!(s["hub_to_office_running"], "ON");
    // Unknown lag is "None": Home Assistant shows "unknown", not zero.
    assert_eq!(s["office_to_hub_lag"], "None");
    assert!(!s["last_error"].is_empty());
    assert_eq!(s["verdict"], "needs_attention");
}

#[test]
fn templates_cope_with_nulls_and_long_reasons() {
    let long = "x".repeat(1000);
    let doc = serde_json::json!({
        "verdict": "link_down",
        "reasons": [long, "second"],
        "tunnel": {"up": false, "since": null, "reconnects": 3, "last_error": "cut"},
        "replication": {
            "hub_to_office": {"io_running": null, "sql_running": null, "lag_s": null,
                              "last_errno": 0, "last_error": ""},
            "office_to_hub": {"io_running": true, "sql_running": null, "lag_s": 0,
                              "last_errno": 0, "last_error": ""}
        },
        "agent": {"version": "0.1.0", "uptime_s": 9}
    });
    let s = states(&doc);
    assert_eq!(s["tunnel"], "OFF");
    assert_eq!(s["hub_to_office_running"], "OFF");
    assert_eq!(s["office_to_hub_running"], "OFF");
    assert_eq!(s["hub_to_office_lag"], "None");
    assert_eq!(s["office_to_hub_lag"], "0");
    // Home Assistant refuses states over 255 characters.
    assert_eq!(s["last_error"].len(), 255);
}

#[test]
fn verdict_attributes_carry_every_reason() {
    let (m, _) = in_sync_machine();
    let mut doc = state_document(m.health(), Duration::from_secs(3), None);
    doc["reasons"] = serde_json::json!(["one", "two"]);
    let verdict = configs("office")
        .into_iter()
        .find(|(t, _)| t.ends_with("/verdict/config"))
        .map(|(_, c)| c)
        .expect("verdict config");
    assert_eq!(verdict["json_attributes_topic"], "tether/office/state");
    let attrs = render(
        verdict["json_attributes_template"]
            .as_str()
            .unwrap_or_default(),
        &doc,
    );
    let attrs: Value = serde_json::from_str(&attrs).expect("attributes are JSON");
    assert_eq!(attrs["reasons"], serde_json::json!(["one", "two"]));
    assert_eq!(attrs["since"], doc["since"]);
}
