//! What `tether status` prints: the state document in words for people, and the document
//! it shows from the journal when the agent is not running. The verdict's own words are
//! the ones the status page uses ([`Verdict::headline`], [`Verdict::meaning`]).

use std::time::{Duration, SystemTime};

use crate::health::Verdict;
use crate::journal::State;

/// What `tether status` shows when the agent is not running: the journal's last state.
pub fn stale_document(state: &State) -> serde_json::Value {
    let since = SystemTime::UNIX_EPOCH + Duration::from_millis(state.since_unix_ms);
    serde_json::json!({
        "verdict": if state.verdict.is_empty() { "unknown" } else { state.verdict.as_str() },
        "since": humantime::format_rfc3339_seconds(since).to_string(),
        "reasons": ["The agent is not running; this is the last state it saved."],
        "stale": true,
        "tunnel": {
            "up": false,
            "since": null,
            "reconnects": state.reconnects,
            "last_error": null,
            "longest_outage": crate::app::outage_json(state.longest_outage.as_ref()),
        },
    })
}

/// The state document in words for people.
pub fn describe(doc: &serde_json::Value, stale: bool) -> String {
    let verdict = doc["verdict"].as_str().and_then(Verdict::parse);
    let mut out = match verdict {
        Some(v) => format!("{}. {}", v.headline(), v.meaning()),
        None => "Unknown.".to_owned(),
    };
    if stale {
        out.push_str(" (stale: the agent is not running)");
    }
    out.push_str(&format!(
        "\nSince: {}\n",
        doc["since"].as_str().unwrap_or("?")
    ));
    if let Some(reasons) = doc["reasons"].as_array() {
        for r in reasons.iter().filter_map(|r| r.as_str()) {
            out.push_str(&format!("  - {r}\n"));
        }
    }
    if let Some(problem) = doc["agent"]["mqtt_problem"].as_str() {
        out.push_str(&format!("Remote monitoring (MQTT): {problem}\n"));
    }
    if let Some(problem) = doc["agent"]["journal_problem"].as_str() {
        out.push_str(&format!("State journal: {problem}\n"));
    }
    let t = &doc["tunnel"];
    out.push_str(&format!(
        "Tunnel: {} (reconnects: {})\n",
        if t["up"].as_bool() == Some(true) {
            "up"
        } else {
            "down"
        },
        t["reconnects"].as_u64().unwrap_or(0)
    ));
    out.push_str(&format!(
        "Longest link outage: {}\n",
        outage_words(&t["longest_outage"])
    ));
    out.push_str(&describe_update(doc));
    for dir in ["hub_to_office", "office_to_hub"] {
        let d = &doc["replication"][dir];
        if d.is_object() {
            out.push_str(&format!(
                "Replication {}: io {}, sql {}, lag {}\n",
                dir.replace('_', " "),
                d["io_running"],
                d["sql_running"],
                d["lag_s"]
                    .as_u64()
                    .map(|l| format!("{l} s"))
                    .unwrap_or_else(|| "unknown".into())
            ));
        }
    }
    out
}

/// The software lines of `tether status`: the running version and the update's state.
pub fn describe_update(doc: &serde_json::Value) -> String {
    let u = &doc["update"];
    let mut out = String::new();
    if let Some(v) = doc["agent"]["version"].as_str() {
        out.push_str(&format!("Software: tether {v}"));
        match u["state"].as_str() {
            Some("on_trial") => out.push_str(" (new; proving itself before it is kept)"),
            Some("downloading") => out.push_str(&format!(
                " (downloading {})",
                u["target"].as_str().unwrap_or("an update")
            )),
            Some("installing") | Some("restarting") => out.push_str(&format!(
                " (restarting into {})",
                u["target"].as_str().unwrap_or("an update")
            )),
            Some("off") => out.push_str(" (updates off)"),
            _ => {}
        }
        out.push('\n');
    }
    if let (Some(result), Some(version)) = (u["last_result"].as_str(), u["last_version"].as_str()) {
        out.push_str(&format!(
            "Last update: {version} {}\n",
            crate::updates::result_words(result)
        ));
    }
    if let Some(e) = u["error"].as_str() {
        out.push_str(&format!("  Update: {e}\n"));
    }
    out
}

/// `2h 5m (from 2026-03-01T14:02:11Z to 2026-03-01T16:07:40Z)`, or that there was none.
fn outage_words(outage: &serde_json::Value) -> String {
    let Some(seconds) = outage["length_s"].as_u64() else {
        return "none recorded".to_owned();
    };
    format!(
        "{} (from {} to {})",
        humantime::format_duration(Duration::from_secs(seconds)),
        outage["start"].as_str().unwrap_or("?"),
        outage["end"].as_str().unwrap_or("?")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Stamp;
    use crate::health::{HealthMachine, HealthSettings};
    use crate::journal::Outage;

    fn machine() -> HealthMachine {
        HealthMachine::new(
            HealthSettings {
                settle: Duration::from_secs(5),
                alert_after: Duration::from_secs(3600),
                lag_ok: Duration::from_secs(10),
            },
            Stamp {
                mono: Duration::ZERO,
                wall: SystemTime::UNIX_EPOCH,
            },
        )
    }

    #[test]
    fn status_words_show_a_broker_problem_without_changing_the_verdict() {
        let m = machine();
        let doc = crate::app::state_document(
            m.health(),
            Duration::from_secs(7),
            Some("the broker refused the username or password"),
        );
        assert_eq!(doc["agent"]["uptime_s"], 7);
        assert_eq!(doc["verdict"], "link_down");
        let words = describe(&doc, false);
        assert!(
            words.contains("Remote monitoring (MQTT): the broker refused"),
            "{words}"
        );
        assert!(
            words.starts_with("Link down. No link to the hub."),
            "{words}"
        );
        let quiet = describe(
            &crate::app::state_document(m.health(), Duration::ZERO, None),
            false,
        );
        assert!(!quiet.contains("MQTT"), "{quiet}");
    }

    /// The words are the status page's: one place says what a verdict means.
    #[test]
    fn the_verdict_words_are_the_pages() {
        for verdict in Verdict::ALL {
            let doc = serde_json::json!({"verdict": verdict.as_str(), "since": "x"});
            let words = describe(&doc, false);
            assert!(
                words.starts_with(&format!("{}. {}", verdict.headline(), verdict.meaning())),
                "{words}"
            );
        }
    }

    #[test]
    fn the_longest_outage_is_shown_live_and_stale() {
        let state = State {
            verdict: "in_sync".into(),
            longest_outage: Some(Outage {
                start_unix_ms: 1_800_000_000_000,
                end_unix_ms: 1_800_007_500_000,
                length_ms: 7_500_000,
            }),
            ..State::default()
        };
        let doc = stale_document(&state);
        assert_eq!(doc["tunnel"]["longest_outage"]["length_s"], 7500);
        let words = describe(&doc, true);
        assert!(
            words.contains(
                "Longest link outage: 2h 5m (from 2027-01-15T08:00:00Z to 2027-01-15T10:05:00Z)"
            ),
            "{words}"
        );
        assert!(
            words.contains("(stale: the agent is not running)"),
            "{words}"
        );
        let fresh = describe(&stale_document(&State::default()), true);
        assert!(
            fresh.contains("Longest link outage: none recorded"),
            "{fresh}"
        );
        assert!(fresh.starts_with("Unknown."), "{fresh}");
    }
}
