//! What the MQTT publisher sends and when, as pure decisions: the event loop in `mod.rs`
//! feeds it connects, incoming messages, state changes and timer wake-ups.

use std::time::Duration;

use tokio::time::Instant;

use super::discovery::{MqttTopics, ONLINE};

/// One thing to hand to the MQTT client. Everything goes out QoS 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    Publish {
        topic: String,
        payload: String,
        retain: bool,
    },
    Subscribe {
        topic: String,
    },
}

/// Decides the publishes; owns no socket.
#[derive(Debug)]
pub(crate) struct Outbox {
    topics: MqttTopics,
    discovery: Vec<(String, String)>,
    /// Shortest time between two state publishes caused by changes: a burst of changes
    /// goes out as its newest document.
    min_gap: Duration,
    /// The last published document with the parts that change all the time removed.
    last_key: Option<String>,
    last_state_at: Option<Instant>,
    /// A change is waiting for `min_gap` to pass.
    wake_at: Option<Instant>,
}

impl Outbox {
    pub(crate) fn new(
        topics: MqttTopics,
        discovery: Vec<(String, String)>,
        min_gap: Duration,
    ) -> Self {
        Outbox {
            topics,
            discovery,
            min_gap,
            last_key: None,
            last_state_at: None,
            wake_at: None,
        }
    }

    /// After every ConnAck: the broker may have lost everything (a clean session, a
    /// restarted broker), so status, subscription, discovery and state all go again.
    pub(crate) fn on_connected(&mut self, doc: &str, now: Instant) -> Vec<Request> {
        let mut out = vec![
            self.retained(self.topics.status(), ONLINE.to_owned()),
            Request::Subscribe {
                topic: self.topics.ha_status(),
            },
        ];
        out.extend(self.discovery_requests());
        self.last_key = None;
        out.extend(self.state(doc, now));
        out
    }

    /// The connection is gone: whatever waits is superseded by the next connect.
    pub(crate) fn on_disconnected(&mut self) {
        self.wake_at = None;
    }

    /// A message on a subscribed topic. Home Assistant announcing itself `online` (live,
    /// not the retained copy every subscribe brings) gets discovery and state again.
    pub(crate) fn on_message(
        &mut self,
        topic: &str,
        payload: &[u8],
        retained: bool,
        doc: &str,
        now: Instant,
    ) -> Vec<Request> {
        if retained || topic != self.topics.ha_status() || payload.trim_ascii() != b"online" {
            return Vec::new();
        }
        let mut out = self.discovery_requests();
        out.extend(self.state(doc, now));
        out
    }

    /// The state document changed. Publishes at once, later (when the last publish was
    /// under `min_gap` ago: see [`Outbox::wake_at`]) or not at all (nothing but uptime moved).
    pub(crate) fn on_state_changed(&mut self, doc: &str, now: Instant) -> Option<Request> {
        if self.last_key.as_deref() == Some(comparable(doc).as_str()) {
            self.wake_at = None;
            return None;
        }
        match self.last_state_at {
            Some(at) if now < at + self.min_gap => {
                self.wake_at = Some(at + self.min_gap);
                None
            }
            _ => self.state(doc, now),
        }
    }

    /// When a change held back by `min_gap` may go.
    pub(crate) fn wake_at(&self) -> Option<Instant> {
        self.wake_at
    }

    /// The `min_gap` wait is over: publish the newest document if it still differs.
    pub(crate) fn on_wake(&mut self, doc: &str, now: Instant) -> Option<Request> {
        self.wake_at = None;
        if self.last_key.as_deref() == Some(comparable(doc).as_str()) {
            return None;
        }
        self.state(doc, now)
    }

    /// The periodic republish: the document goes whether or not it changed.
    pub(crate) fn on_republish(&mut self, doc: &str, now: Instant) -> Option<Request> {
        self.state(doc, now)
    }

    /// The client could not take a state publish: try again after `min_gap`.
    pub(crate) fn retry_state(&mut self, now: Instant) {
        self.last_key = None;
        self.wake_at = Some(now + self.min_gap);
    }

    /// The state publish. Never an empty document: an empty retained payload would
    /// delete the broker's copy (the agent has not rendered its first state yet).
    fn state(&mut self, doc: &str, now: Instant) -> Option<Request> {
        self.wake_at = None;
        if doc.trim().is_empty() {
            return None;
        }
        self.last_key = Some(comparable(doc));
        self.last_state_at = Some(now);
        Some(self.retained(self.topics.state(), doc.to_owned()))
    }

    fn discovery_requests(&self) -> Vec<Request> {
        self.discovery
            .iter()
            .map(|(topic, payload)| self.retained(topic.clone(), payload.clone()))
            .collect()
    }

    fn retained(&self, topic: String, payload: String) -> Request {
        Request::Publish {
            topic,
            payload,
            retain: true,
        }
    }
}

/// The document as compared for "changed". Counters that move all the time are not news
/// on their own: `agent.uptime_s` ticks every second and a replication `lag_s` jitters
/// by a second or two with every heartbeat; published on every move they would cost
/// megabytes a day. They ride along with the next real change and the periodic republish;
/// a lag that matters changes the verdict, which is news. Text that is not JSON compares
/// as is.
fn comparable(doc: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(doc) {
        Ok(mut v) => {
            if let Some(agent) = v.get_mut("agent").and_then(|a| a.as_object_mut()) {
                agent.remove("uptime_s");
            }
            // The moment of rendering ticks like the uptime.
            if let Some(doc) = v.as_object_mut() {
                doc.remove("at");
            }
            if let Some(dirs) = v.get_mut("replication").and_then(|r| r.as_object_mut()) {
                for dir in dirs.values_mut().filter_map(|d| d.as_object_mut()) {
                    // Known versus unknown lag is news; its value is not.
                    if let Some(lag) = dir.get_mut("lag_s") {
                        *lag = serde_json::Value::Bool(!lag.is_null());
                    }
                }
            }
            v.to_string()
        }
        Err(_) => doc.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GAP: Duration = Duration::from_secs(1);

    fn outbox() -> Outbox {
        Outbox::new(
            MqttTopics::new("tether", "office", "homeassistant"),
            vec![(
                "homeassistant/sensor/tether_office/verdict/config".into(),
                "{}".into(),
            )],
            GAP,
        )
    }

    fn doc(verdict: &str, uptime: u64) -> String {
        format!(r#"{{"verdict":"{verdict}","agent":{{"version":"1","uptime_s":{uptime}}}}}"#)
    }

    fn topics_of(reqs: &[Request]) -> Vec<&str> {
        reqs.iter()
            .map(|r| match r {
                Request::Publish { topic, .. } | Request::Subscribe { topic } => topic.as_str(),
            })
            .collect()
    }

    #[test]
    fn connect_sends_status_subscription_discovery_then_state() {
        let mut o = outbox();
        let reqs = o.on_connected(&doc("in_sync", 1), Instant::now());
        assert_eq!(
            topics_of(&reqs),
            vec![
                "tether/office/status",
                "homeassistant/status",
                "homeassistant/sensor/tether_office/verdict/config",
                "tether/office/state",
            ]
        );
        assert!(reqs.iter().all(|r| match r {
            Request::Publish { retain, .. } => *retain,
            Request::Subscribe { .. } => true,
        }));
        assert_eq!(
            reqs[0],
            Request::Publish {
                topic: "tether/office/status".into(),
                payload: "online".into(),
                retain: true
            }
        );
    }

    #[test]
    fn uptime_alone_is_not_a_change() {
        let mut o = outbox();
        let t0 = Instant::now();
        o.on_connected(&doc("in_sync", 1), t0);
        assert_eq!(o.on_state_changed(&doc("in_sync", 9), t0 + GAP * 5), None);
        assert_eq!(o.wake_at(), None);
        assert!(
            o.on_state_changed(&doc("link_down", 9), t0 + GAP * 5)
                .is_some()
        );
    }

    #[test]
    fn the_moment_of_rendering_alone_is_not_a_change() {
        let at = |verdict: &str, t: &str| format!(r#"{{"verdict":"{verdict}","at":"{t}"}}"#);
        let mut o = outbox();
        let t0 = Instant::now();
        o.on_connected(&at("in_sync", "2026-12-06T22:00:00Z"), t0);
        assert_eq!(
            o.on_state_changed(&at("in_sync", "2026-12-06T22:00:09Z"), t0 + GAP * 9),
            None
        );
        assert!(
            o.on_state_changed(&at("link_down", "2026-12-06T22:00:10Z"), t0 + GAP * 10)
                .is_some()
        );
    }

    #[test]
    fn lag_jitter_is_not_a_change_but_lag_appearing_is() {
        let with_lag = |lag: &str| {
            format!(
                r#"{{"verdict":"in_sync","replication":{{"hub_to_office":{{"io_running":true,"lag_s":{lag}}}}}}}"#
            )
        };
        let mut o = outbox();
        let t0 = Instant::now();
        o.on_connected(&with_lag("null"), t0);
        let later = t0 + GAP * 5;
        assert!(o.on_state_changed(&with_lag("3"), later).is_some());
        assert_eq!(o.on_state_changed(&with_lag("1"), later + GAP * 5), None);
        assert_eq!(o.on_state_changed(&with_lag("0"), later + GAP * 6), None);
        // The periodic republish carries the current value.
        match o.on_republish(&with_lag("0"), later + GAP * 300) {
            Some(Request::Publish { payload, .. }) => assert!(payload.contains(r#""lag_s":0"#)),
            other => panic!("expected a publish, got {other:?}"),
        }
    }

    #[test]
    fn a_burst_goes_out_as_its_newest_document_after_the_gap() {
        let mut o = outbox();
        let t0 = Instant::now();
        o.on_connected(&doc("in_sync", 1), t0);
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(o.on_state_changed(&doc("link_down", 1), t1), None);
        assert_eq!(o.on_state_changed(&doc("catching_up", 1), t1), None);
        assert_eq!(o.wake_at(), Some(t0 + GAP));
        match o.on_wake(&doc("catching_up", 1), t0 + GAP) {
            Some(Request::Publish { payload, .. }) => assert!(payload.contains("catching_up")),
            other => panic!("expected a publish, got {other:?}"),
        }
        assert_eq!(o.wake_at(), None);
    }

    #[test]
    fn a_change_back_within_the_gap_sends_nothing() {
        let mut o = outbox();
        let t0 = Instant::now();
        o.on_connected(&doc("in_sync", 1), t0);
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(o.on_state_changed(&doc("link_down", 1), t1), None);
        assert_eq!(o.on_state_changed(&doc("in_sync", 2), t1), None);
        assert_eq!(o.wake_at(), None);
        assert_eq!(o.on_wake(&doc("in_sync", 2), t0 + GAP), None);
    }

    #[test]
    fn home_assistant_online_resends_discovery_but_not_its_retained_copy() {
        let mut o = outbox();
        let t0 = Instant::now();
        let d = doc("in_sync", 1);
        assert!(
            o.on_message("homeassistant/status", b"online", true, &d, t0)
                .is_empty()
        );
        assert!(
            o.on_message("homeassistant/status", b"offline", false, &d, t0)
                .is_empty()
        );
        let reqs = o.on_message("homeassistant/status", b"online\n", false, &d, t0);
        assert_eq!(
            topics_of(&reqs),
            vec![
                "homeassistant/sensor/tether_office/verdict/config",
                "tether/office/state"
            ]
        );
    }

    #[test]
    fn republish_sends_even_when_nothing_changed() {
        let mut o = outbox();
        let t0 = Instant::now();
        let d = doc("in_sync", 1);
        o.on_connected(&d, t0);
        assert!(matches!(
            o.on_republish(&d, t0 + GAP * 300),
            Some(Request::Publish { .. })
        ));
    }

    #[test]
    fn an_empty_document_is_never_published() {
        let mut o = outbox();
        let t0 = Instant::now();
        let reqs = o.on_connected("", t0);
        assert!(!topics_of(&reqs).contains(&"tether/office/state"));
        assert_eq!(o.on_republish("", t0 + GAP), None);
        // The first real document goes out at once.
        assert!(o.on_state_changed(&doc("in_sync", 1), t0 + GAP).is_some());
        assert_eq!(o.on_state_changed("", t0 + GAP * 3), None);
    }

    #[test]
    fn a_refused_publish_is_retried_after_the_gap() {
        let mut o = outbox();
        let t0 = Instant::now();
        let d = doc("in_sync", 1);
        o.on_connected(&d, t0);
        o.retry_state(t0);
        assert_eq!(o.wake_at(), Some(t0 + GAP));
        assert!(o.on_wake(&d, t0 + GAP).is_some());
    }
}
