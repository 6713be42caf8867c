//! The fleet view's pure core: what the broker's retained and live messages say about
//! each site, judged at a given moment (verdict and since when, lag per direction, last
//! error, and whether the box went silent, with since when), and the three renderings:
//! a table for people, JSON for scripts, Prometheus text labelled by site.
//!
//! No I/O and no clock reads: every moment is an argument. A box is silent when its
//! status is `offline` (the broker's last will, or its own goodbye) or when its newest
//! state is older than twice the sites' republish period. How old a retained state is
//! comes from the `at` the agent writes into every state; a message that arrives live
//! is as old as its arrival.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

use crate::health::Verdict;

/// What one state document says, as far as the view shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteState {
    pub verdict: String,
    pub since: Option<SystemTime>,
    pub reasons: Vec<String>,
    pub tunnel_up: Option<bool>,
    pub tunnel_error: Option<String>,
    pub hub_to_office: DirectionState,
    pub office_to_hub: DirectionState,
    /// When the agent rendered it (absent from agents before the fleet view).
    pub at: Option<SystemTime>,
}

/// One replication direction in a state document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DirectionState {
    /// Both threads running; `None` while unknown.
    pub running: Option<bool>,
    pub lag_s: Option<u64>,
    pub last_errno: u32,
    pub last_error: String,
}

impl SiteState {
    /// Reads a state document. Only `verdict` is required; anything else missing or of
    /// another type is taken as unknown.
    pub fn parse(payload: &[u8]) -> Result<SiteState, String> {
        let doc: serde_json::Value =
            serde_json::from_slice(payload).map_err(|e| format!("the state is not JSON ({e})"))?;
        let verdict = doc["verdict"]
            .as_str()
            .ok_or("the state has no verdict")?
            .to_owned();
        let time = |v: &serde_json::Value| {
            v.as_str()
                .and_then(|s| humantime::parse_rfc3339_weak(s).ok())
        };
        let direction = |d: &serde_json::Value| DirectionState {
            running: match (d["io_running"].as_bool(), d["sql_running"].as_bool()) {
                (Some(io), Some(sql)) => Some(io && sql),
                (Some(false), None) | (None, Some(false)) => Some(false),
                _ => None,
            },
            lag_s: d["lag_s"].as_u64(),
            last_errno: d["last_errno"]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
            last_error: d["last_error"].as_str().unwrap_or_default().to_owned(),
        };
        Ok(SiteState {
            verdict,
            since: time(&doc["since"]),
            reasons: doc["reasons"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            tunnel_up: doc["tunnel"]["up"].as_bool(),
            tunnel_error: doc["tunnel"]["last_error"].as_str().map(str::to_owned),
            hub_to_office: direction(&doc["replication"]["hub_to_office"]),
            office_to_hub: direction(&doc["replication"]["office_to_hub"]),
            at: time(&doc["at"]),
        })
    }

    /// The errors worth a column: each stopped direction's, then the link's while down.
    fn last_error(&self) -> Option<String> {
        let mut parts = Vec::new();
        for (name, d) in [
            ("office to hub", &self.office_to_hub),
            ("hub to office", &self.hub_to_office),
        ] {
            if d.last_errno != 0 || !d.last_error.is_empty() {
                parts.push(format!("{name}: {} {}", d.last_errno, d.last_error.trim()));
            }
        }
        if self.tunnel_up == Some(false)
            && let Some(e) = &self.tunnel_error
        {
            parts.push(format!("link: {e}"));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// Which of a site's messages a topic carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    Status(String),
    State(String),
}

/// `<prefix>/<site>/status` or `<prefix>/<site>/state`; anything else is `None`.
pub fn topic(prefix: &str, topic: &str) -> Option<Topic> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?;
    let (site, kind) = rest.split_once('/')?;
    if site.is_empty() || site.contains(['+', '#']) {
        return None;
    }
    match kind {
        "status" => Some(Topic::Status(site.to_owned())),
        "state" => Some(Topic::State(site.to_owned())),
        _ => None,
    }
}

/// Why a box counts as silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Silence {
    /// Its status is `offline`: the broker's last will (the box died, hung or lost its
    /// link) or its own goodbye.
    Offline,
    /// Online as far as the broker knows, but no state for longer than twice the
    /// republish period.
    NoState,
}

/// One site as the view shows it at a moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SiteView {
    pub site: String,
    /// The verdict, `silent`, or `unknown` (no state read yet).
    pub shown: String,
    /// The last verdict the site reported.
    pub verdict: Option<String>,
    /// Since when `shown` holds: the verdict's own `since`, or when the box went silent
    /// (for a silence found in retained messages: when it was last heard from).
    #[serde(serialize_with = "rfc3339_opt")]
    pub since: Option<SystemTime>,
    pub silent: Option<Silence>,
    /// `online`, `offline`, or absent.
    pub status: Option<String>,
    /// The newest moment the site is known to have been alive.
    #[serde(serialize_with = "rfc3339_opt")]
    pub last_heard: Option<SystemTime>,
    pub tunnel_up: Option<bool>,
    pub hub_to_office: DirectionState,
    pub office_to_hub: DirectionState,
    pub last_error: Option<String>,
    pub reasons: Vec<String>,
    /// The state could not be read (not JSON, no verdict).
    pub problem: Option<String>,
}

fn rfc3339_opt<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.collect_str(&humantime::format_rfc3339_seconds(*t)),
        None => s.serialize_none(),
    }
}

#[derive(Debug, Clone, Default)]
struct Record {
    online: Option<bool>,
    /// When the status became what it is, if that was seen live.
    status_since: Option<SystemTime>,
    state: Option<Result<SiteState, String>>,
    heard: Option<SystemTime>,
}

/// Every site seen on the broker, fed message by message.
#[derive(Debug, Clone)]
pub struct Fleet {
    prefix: String,
    republish: Duration,
    sites: BTreeMap<String, Record>,
}

impl Fleet {
    /// `prefix` is the sites' `mqtt.prefix`, `republish` their `mqtt.republish`.
    pub fn new(prefix: &str, republish: Duration) -> Self {
        Fleet {
            prefix: prefix.to_owned(),
            republish,
            sites: BTreeMap::new(),
        }
    }

    /// How long without a state makes a box silent.
    pub fn silent_after(&self) -> Duration {
        self.republish * 2
    }

    /// Takes one message: `retained` for what the broker kept (its age is unknown but
    /// for the state's own `at`), not for one that arrived live at `now`. Returns
    /// whether the topic was a site's status or state.
    pub fn observe(
        &mut self,
        topic_name: &str,
        payload: &[u8],
        retained: bool,
        now: SystemTime,
    ) -> bool {
        let Some(t) = topic(&self.prefix, topic_name) else {
            return false;
        };
        match t {
            Topic::Status(site) => {
                let r = self.sites.entry(site).or_default();
                // An empty retained message clears a topic (a retired site).
                let online = match payload {
                    b"online" => Some(true),
                    b"offline" => Some(false),
                    _ => None,
                };
                if r.online != online {
                    r.status_since = (!retained).then_some(now);
                }
                r.online = online;
                if !retained && online == Some(true) {
                    r.heard = later(r.heard, Some(now));
                }
            }
            Topic::State(site) => {
                if payload.is_empty() {
                    if let Some(r) = self.sites.get_mut(&site) {
                        r.state = None;
                    }
                    return true;
                }
                let r = self.sites.entry(site).or_default();
                let state = SiteState::parse(payload);
                let heard = if retained {
                    // A clock ahead of ours says no more than "now".
                    state.as_ref().ok().and_then(|s| s.at).map(|at| at.min(now))
                } else {
                    Some(now)
                };
                r.heard = later(r.heard, heard);
                r.state = Some(state);
            }
        }
        true
    }

    /// Forgets sites whose status and state were both cleared.
    fn live_sites(&self) -> impl Iterator<Item = (&String, &Record)> {
        self.sites
            .iter()
            .filter(|(_, r)| r.online.is_some() || r.state.is_some())
    }

    /// Every site at `now`, the ones needing a look first (silent, then by verdict from
    /// worst), then by site id.
    pub fn view(&self, now: SystemTime) -> Vec<SiteView> {
        let mut out: Vec<SiteView> = self
            .live_sites()
            .map(|(site, r)| self.site_view(site, r, now))
            .collect();
        out.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.site.cmp(&b.site)));
        out
    }

    fn site_view(&self, site: &str, r: &Record, now: SystemTime) -> SiteView {
        let state = r.state.as_ref().and_then(|s| s.as_ref().ok());
        let silent = if r.online == Some(false) {
            Some(Silence::Offline)
        } else if r
            .heard
            .is_some_and(|h| now.duration_since(h).unwrap_or_default() > self.silent_after())
        {
            Some(Silence::NoState)
        } else {
            None
        };
        let (shown, since) = match (silent, state) {
            (Some(Silence::Offline), _) => ("silent".to_owned(), r.status_since.or(r.heard)),
            (Some(Silence::NoState), _) => ("silent".to_owned(), r.heard),
            (None, Some(s)) => (s.verdict.clone(), s.since),
            (None, None) => ("unknown".to_owned(), None),
        };
        SiteView {
            site: site.to_owned(),
            shown,
            verdict: state.map(|s| s.verdict.clone()),
            since,
            silent,
            status: r
                .online
                .map(|o| if o { "online" } else { "offline" }.to_owned()),
            last_heard: r.heard,
            tunnel_up: state.and_then(|s| s.tunnel_up),
            hub_to_office: state.map(|s| s.hub_to_office.clone()).unwrap_or_default(),
            office_to_hub: state.map(|s| s.office_to_hub.clone()).unwrap_or_default(),
            last_error: state.and_then(SiteState::last_error),
            reasons: state.map(|s| s.reasons.clone()).unwrap_or_default(),
            problem: r.state.as_ref().and_then(|s| s.as_ref().err().cloned()),
        }
    }
}

fn later(a: Option<SystemTime>, b: Option<SystemTime>) -> Option<SystemTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Silent first, then the verdicts from worst to best, unknown among the amber ones.
fn rank(v: &SiteView) -> u8 {
    match v.shown.as_str() {
        "silent" => 0,
        s => match Verdict::parse(s) {
            Some(Verdict::NeedsAttention) => 1,
            Some(Verdict::LinkDown) => 2,
            None => 3,
            Some(Verdict::CatchingUp) => 4,
            Some(Verdict::InSync) => 5,
        },
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// "just now", "12 min", "3 h 5 min", "2 days 4 h".
pub fn age(d: Duration) -> String {
    match d.as_secs() {
        s if s < 60 => "just now".into(),
        s if s < 3600 => format!("{} min ago", s / 60),
        s if s < 86_400 => format!("{} h {} min ago", s / 3600, s % 3600 / 60),
        s => format!("{} days {} h ago", s / 86_400, s % 86_400 / 3600),
    }
}

/// A moment for the table: UTC to the minute, and how long ago.
fn moment(t: Option<SystemTime>, now: SystemTime) -> String {
    match t {
        Some(t) => {
            let stamp = humantime::format_rfc3339_seconds(t).to_string();
            // "2026-12-06T22:10:05Z" -> "2026-12-06 22:10Z"
            let short = format!("{} {}Z", &stamp[..10], &stamp[11..16]);
            format!(
                "{short} ({})",
                age(now.duration_since(t).unwrap_or_default())
            )
        }
        None => "-".into(),
    }
}

/// The longest a cell of the last-error column gets in the table (the JSON has it all).
const ERROR_CELL: usize = 72;

/// The table for people: a summary line, then one line per site.
pub fn table(sites: &[SiteView], now: SystemTime, silent_after: Duration) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for s in sites {
        *counts.entry(s.shown.as_str()).or_default() += 1;
    }
    let mut out = format!(
        "{} site{}",
        sites.len(),
        if sites.len() == 1 { "" } else { "s" }
    );
    if !sites.is_empty() {
        let parts: Vec<String> = [
            "silent",
            "needs_attention",
            "link_down",
            "unknown",
            "catching_up",
            "in_sync",
        ]
        .iter()
        .filter_map(|k| {
            counts
                .get(k)
                .map(|n| format!("{n} {}", k.replace('_', " ")))
        })
        .collect();
        out.push_str(": ");
        out.push_str(&parts.join(", "));
    }
    let _ = writeln!(
        out,
        " (silent: offline, or no state for {})",
        humantime::format_duration(silent_after)
    );
    if sites.is_empty() {
        return out;
    }
    // A silent box's last lag is history, not lag: the JSON keeps it, the table does not.
    let lag = |s: &SiteView, d: &DirectionState| match (s.silent, d.lag_s) {
        (None, Some(l)) => format!("{l} s"),
        _ => "-".to_owned(),
    };
    let rows: Vec<[String; 6]> = sites
        .iter()
        .map(|s| {
            let state = match (s.silent, &s.verdict) {
                (Some(Silence::Offline), _) => "SILENT (offline)".to_owned(),
                (Some(Silence::NoState), _) => "SILENT (no state)".to_owned(),
                (None, _) => s.shown.clone(),
            };
            let since = match s.silent {
                Some(_) if s.since.is_none() => "unknown".to_owned(),
                _ => moment(s.since, now),
            };
            let mut error = match (&s.problem, s.silent, &s.verdict) {
                (Some(p), _, _) => p.clone(),
                (None, Some(_), Some(v)) => format!(
                    "last said {v}{}",
                    s.last_error
                        .as_ref()
                        .map(|e| format!("; {e}"))
                        .unwrap_or_default()
                ),
                _ => s
                    .last_error
                    .clone()
                    .or_else(|| {
                        (s.shown != "in_sync")
                            .then(|| s.reasons.first().cloned())
                            .flatten()
                    })
                    .unwrap_or_else(|| "-".into()),
            };
            if error.chars().count() > ERROR_CELL {
                error = error.chars().take(ERROR_CELL - 3).collect::<String>() + "...";
            }
            [
                s.site.clone(),
                state,
                since,
                lag(s, &s.hub_to_office),
                lag(s, &s.office_to_hub),
                error,
            ]
        })
        .collect();
    let head = [
        "SITE",
        "STATE",
        "SINCE",
        "LAG TO OFFICE",
        "LAG TO HUB",
        "LAST ERROR",
    ];
    let mut width = head.map(|h| h.chars().count());
    for r in &rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: &[String]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(width).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&head.map(str::to_owned));
    for r in &rows {
        line(r);
    }
    out
}

/// The JSON for scripts: when it was read, the silence rule, and every site.
pub fn json(
    sites: &[SiteView],
    now: SystemTime,
    silent_after: Duration,
    complete: bool,
) -> serde_json::Value {
    serde_json::json!({
        "at": humantime::format_rfc3339_seconds(now).to_string(),
        "silent_after_s": silent_after.as_secs(),
        "complete": complete,
        "sites": sites,
    })
}

/// Prometheus text exposition (0.0.4): the agent's own metric names, labelled by site,
/// plus the fleet's (`tether_silent`, `tether_last_heard_timestamp_seconds`).
/// `broker_connected` says whether the view is current.
pub fn metrics(sites: &[SiteView], broker_connected: bool) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<String>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in samples {
            let _ = writeln!(out, "{name}{s}");
        }
    };
    let label = |s: &SiteView| format!("site=\"{}\"", escape(&s.site));
    family(
        "tether_fleet_broker_connected",
        "gauge",
        "1 while the fleet view is connected to the broker (else the figures are its last).",
        vec![format!(" {}", u8::from(broker_connected))],
    );
    family(
        "tether_fleet_sites",
        "gauge",
        "Sites seen on the broker.",
        vec![format!(" {}", sites.len())],
    );
    family(
        "tether_verdict",
        "gauge",
        "1 for the site's current verdict, 0 for the others (all 0 while it is silent).",
        sites
            .iter()
            .flat_map(|s| {
                Verdict::ALL.into_iter().map(move |v| {
                    let on = s.silent.is_none() && s.verdict.as_deref() == Some(v.as_str());
                    format!(
                        "{{{},verdict=\"{}\"}} {}",
                        label(s),
                        v.as_str(),
                        u8::from(on)
                    )
                })
            })
            .collect(),
    );
    family(
        "tether_silent",
        "gauge",
        "1 while the site's box is silent: offline, or no state for twice the republish period.",
        sites
            .iter()
            .map(|s| format!("{{{}}} {}", label(s), u8::from(s.silent.is_some())))
            .collect(),
    );
    family(
        "tether_verdict_since_timestamp_seconds",
        "gauge",
        "Since when the shown verdict or silence holds (Unix time).",
        sites
            .iter()
            .filter_map(|s| Some(format!("{{{}}} {}", label(s), unix(s.since?))))
            .collect(),
    );
    family(
        "tether_last_heard_timestamp_seconds",
        "gauge",
        "The newest moment the site is known to have been alive (Unix time).",
        sites
            .iter()
            .filter_map(|s| Some(format!("{{{}}} {}", label(s), unix(s.last_heard?))))
            .collect(),
    );
    family(
        "tether_tunnel_up",
        "gauge",
        "1 while the site's SSH link to the hub is up, as last reported.",
        sites
            .iter()
            .filter_map(|s| Some(format!("{{{}}} {}", label(s), u8::from(s.tunnel_up?))))
            .collect(),
    );
    let directions = |s: &SiteView| {
        [
            ("hub_to_office", s.hub_to_office.clone()),
            ("office_to_hub", s.office_to_hub.clone()),
        ]
    };
    family(
        "tether_replication_lag_seconds",
        "gauge",
        "True replication lag per site and direction, as last reported (absent while unknown).",
        sites
            .iter()
            .flat_map(|s| {
                directions(s).into_iter().filter_map(move |(d, st)| {
                    Some(format!("{{{},direction=\"{d}\"}} {}", label(s), st.lag_s?))
                })
            })
            .collect(),
    );
    family(
        "tether_replication_running",
        "gauge",
        "1 while both replication threads of a site's direction run, as last reported.",
        sites
            .iter()
            .flat_map(|s| {
                directions(s).into_iter().filter_map(move |(d, st)| {
                    Some(format!(
                        "{{{},direction=\"{d}\"}} {}",
                        label(s),
                        u8::from(st.running?)
                    ))
                })
            })
            .collect(),
    );
    out
}

/// A label value in the exposition format.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    fn stamp(s: u64) -> String {
        humantime::format_rfc3339_seconds(at(s)).to_string()
    }

    fn state(verdict: &str, since: u64, rendered: Option<u64>) -> Vec<u8> {
        let mut doc = serde_json::json!({
            "verdict": verdict,
            "since": stamp(since),
            "reasons": if verdict == "in_sync" { vec![] } else { vec![format!("why {verdict}")] },
            "tunnel": {"up": verdict != "link_down", "since": null, "reconnects": 0,
                       "last_error": if verdict == "link_down" { serde_json::json!("the hub refused the connection") } else { serde_json::Value::Null }},
            "replication": {
                "hub_to_office": {"io_running": true, "sql_running": true, "lag_s": 0, "last_errno": 0, "last_error": ""},
                "office_to_hub": {"io_running": true, "sql_running": verdict != "needs_attention", "lag_s": 2,
                                  "last_errno": if verdict == "needs_attention" { 1062 } else { 0 },
                                  "last_error": if verdict == "needs_attention" { "Duplicate entry 'A-7' for key 'code'" } else { "" }},
            },
            "agent": {"version": "0.1.0", "uptime_s": 100},
        });
        if let Some(r) = rendered {
            doc["at"] = stamp(r).into();
        }
        doc.to_string().into_bytes()
    }

    fn fleet() -> Fleet {
        Fleet::new("tether", Duration::from_secs(300))
    }

    #[test]
    fn topics_name_the_site_and_the_kind() {
        assert_eq!(
            topic("tether", "tether/office-1/state"),
            Some(Topic::State("office-1".into()))
        );
        assert_eq!(
            topic("tether", "tether/office-1/status"),
            Some(Topic::Status("office-1".into()))
        );
        for other in [
            "tether/office-1/cmd",
            "other/office-1/state",
            "tether/state",
            "tetherx/a/state",
            "tether//state",
        ] {
            assert_eq!(topic("tether", other), None, "{other}");
        }
        assert_eq!(
            topic("a/b", "a/b/hub-2/state"),
            Some(Topic::State("hub-2".into()))
        );
    }

    #[test]
    fn a_retained_view_shows_verdicts_lag_errors_and_who_is_silent() {
        let now = at(T0 + 1000);
        let mut f = fleet();
        // Green, rendered 100 s ago.
        f.observe("tether/office-1/status", b"online", true, now);
        f.observe(
            "tether/office-1/state",
            &state("in_sync", T0, Some(T0 + 900)),
            true,
            now,
        );
        // Red on a duplicate key.
        f.observe("tether/office-2/status", b"online", true, now);
        f.observe(
            "tether/office-2/state",
            &state("needs_attention", T0 + 500, Some(T0 + 990)),
            true,
            now,
        );
        // Offline by its last will; its last state said in_sync 700 s ago.
        f.observe("tether/office-3/status", b"offline", true, now);
        f.observe(
            "tether/office-3/state",
            &state("in_sync", T0, Some(T0 + 300)),
            true,
            now,
        );
        // Online as far as the broker knows, but its newest state is 11 min old.
        f.observe("tether/office-4/status", b"online", true, now);
        f.observe(
            "tether/office-4/state",
            &state("in_sync", T0, Some(T0 + 340)),
            true,
            now,
        );
        // Not a site's topic.
        assert!(!f.observe("tether/office-1/other", b"x", true, now));

        let v = f.view(now);
        let order: Vec<(&str, &str)> = v
            .iter()
            .map(|s| (s.site.as_str(), s.shown.as_str()))
            .collect();
        assert_eq!(
            order,
            [
                ("office-3", "silent"),
                ("office-4", "silent"),
                ("office-2", "needs_attention"),
                ("office-1", "in_sync")
            ]
        );
        let by = |site: &str| v.iter().find(|s| s.site == site).unwrap();
        assert_eq!(by("office-3").silent, Some(Silence::Offline));
        assert_eq!(
            by("office-3").since,
            Some(at(T0 + 300)),
            "retained: since it was last heard"
        );
        assert_eq!(by("office-3").verdict.as_deref(), Some("in_sync"));
        assert_eq!(by("office-4").silent, Some(Silence::NoState));
        assert_eq!(by("office-4").since, Some(at(T0 + 340)));
        assert_eq!(by("office-2").since, Some(at(T0 + 500)));
        assert_eq!(by("office-2").office_to_hub.lag_s, Some(2));
        assert_eq!(by("office-2").office_to_hub.running, Some(false));
        assert_eq!(
            by("office-2").last_error.as_deref(),
            Some("office to hub: 1062 Duplicate entry 'A-7' for key 'code'")
        );
        assert_eq!(by("office-1").silent, None);
        assert_eq!(by("office-1").last_heard, Some(at(T0 + 900)));

        let t = table(&v, now, f.silent_after());
        assert!(t.starts_with("4 sites: 2 silent, 1 needs attention, 1 in sync (silent: offline, or no state for 10m)\n"), "{t}");
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].starts_with("SITE      STATE"), "{t}");
        assert!(lines[2].starts_with("office-3  SILENT (offline)"), "{t}");
        assert!(
            lines[2].contains("(11 min ago)") && lines[2].contains("last said in_sync"),
            "{t}"
        );
        assert!(lines[3].contains("SILENT (no state)"), "{t}");
        assert!(lines[4].contains("1062 Duplicate entry 'A-7'"), "{t}");
        assert!(lines[5].contains("0 s") && lines[5].contains("2 s"), "{t}");
    }

    #[test]
    fn live_messages_date_themselves_and_a_state_without_at_is_never_called_stale() {
        let mut f = fleet();
        // An older agent: no `at`, so a retained state's age is unknown.
        f.observe(
            "tether/old/state",
            &state("in_sync", T0, None),
            true,
            at(T0 + 5000),
        );
        let v = f.view(at(T0 + 5000));
        assert_eq!((v[0].shown.as_str(), v[0].last_heard), ("in_sync", None));
        // The same arriving live is as old as its arrival, and goes stale from there.
        f.observe(
            "tether/old/state",
            &state("in_sync", T0, None),
            false,
            at(T0 + 5000),
        );
        assert_eq!(f.view(at(T0 + 5600))[0].silent, None);
        assert_eq!(f.view(at(T0 + 5601))[0].silent, Some(Silence::NoState));
        assert_eq!(f.view(at(T0 + 5601))[0].since, Some(at(T0 + 5000)));
        // The last will arriving live dates the silence itself.
        f.observe("tether/old/status", b"offline", false, at(T0 + 5100));
        let v = f.view(at(T0 + 5200));
        assert_eq!(
            (v[0].silent, v[0].since),
            (Some(Silence::Offline), Some(at(T0 + 5100)))
        );
        // Back online: the verdict shows again.
        f.observe("tether/old/status", b"online", false, at(T0 + 5300));
        f.observe(
            "tether/old/state",
            &state("catching_up", T0 + 5300, Some(T0 + 5300)),
            false,
            at(T0 + 5301),
        );
        let v = f.view(at(T0 + 5302));
        assert_eq!(
            (v[0].shown.as_str(), v[0].since),
            ("catching_up", Some(at(T0 + 5300)))
        );
        // A retained copy after a reconnect does not make it look older.
        f.observe(
            "tether/old/state",
            &state("catching_up", T0 + 5300, Some(T0 + 5300)),
            true,
            at(T0 + 5400),
        );
        assert_eq!(f.view(at(T0 + 5400))[0].last_heard, Some(at(T0 + 5301)));
    }

    #[test]
    fn a_clock_ahead_unreadable_states_and_cleared_sites() {
        let mut f = fleet();
        let now = at(T0);
        f.observe(
            "tether/ahead/state",
            &state("in_sync", T0, Some(T0 + 3600)),
            true,
            now,
        );
        assert_eq!(f.view(now)[0].last_heard, Some(now));
        f.observe("tether/broken/state", b"not json", true, now);
        f.observe("tether/empty/status", b"online", true, now);
        let v = f.view(now);
        let broken = v.iter().find(|s| s.site == "broken").unwrap();
        assert_eq!(broken.shown, "unknown");
        assert!(broken.problem.as_deref().unwrap().contains("not JSON"));
        assert_eq!(
            v.iter().find(|s| s.site == "empty").unwrap().shown,
            "unknown"
        );
        // A retired site's topics cleared (empty retained messages): gone from the view.
        f.observe("tether/ahead/state", b"", true, now);
        f.observe("tether/empty/status", b"", true, now);
        let sites: Vec<String> = f.view(now).into_iter().map(|s| s.site).collect();
        assert_eq!(sites, ["broken"]);
    }

    #[test]
    fn metrics_are_labelled_by_site_and_silent_sites_have_no_verdict() {
        let now = at(T0 + 1000);
        let mut f = fleet();
        f.observe(
            "tether/office-1/state",
            &state("in_sync", T0, Some(T0 + 990)),
            true,
            now,
        );
        f.observe("tether/office-3/status", b"offline", true, now);
        f.observe(
            "tether/office-3/state",
            &state("link_down", T0, Some(T0 + 300)),
            true,
            now,
        );
        let m = metrics(&f.view(now), true);
        for want in [
            "tether_fleet_broker_connected 1",
            "tether_fleet_sites 2",
            "tether_verdict{site=\"office-1\",verdict=\"in_sync\"} 1",
            "tether_verdict{site=\"office-3\",verdict=\"link_down\"} 0",
            "tether_silent{site=\"office-3\"} 1",
            "tether_silent{site=\"office-1\"} 0",
            &format!(
                "tether_last_heard_timestamp_seconds{{site=\"office-3\"}} {}",
                T0 + 300
            ),
            &format!("tether_verdict_since_timestamp_seconds{{site=\"office-1\"}} {T0}"),
            "tether_replication_lag_seconds{site=\"office-1\",direction=\"office_to_hub\"} 2",
            "tether_replication_running{site=\"office-1\",direction=\"hub_to_office\"} 1",
            "tether_tunnel_up{site=\"office-3\"} 0",
        ] {
            assert!(m.lines().any(|l| l == want), "missing {want}:\n{m}");
        }
        // Every sample belongs to a family announced just before it.
        let mut family = String::new();
        for l in m.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap().to_owned();
            } else if !l.starts_with('#') {
                assert!(l.starts_with(&family), "{l} outside {family}");
            }
        }
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn json_carries_every_site_with_rfc3339_times() {
        let now = at(T0 + 10);
        let mut f = fleet();
        f.observe(
            "tether/office-1/state",
            &state("link_down", T0, Some(T0 + 5)),
            true,
            now,
        );
        let j = json(&f.view(now), now, f.silent_after(), true);
        assert_eq!(j["silent_after_s"], 600);
        let s = &j["sites"][0];
        assert_eq!(s["site"], "office-1");
        assert_eq!(s["shown"], "link_down");
        assert_eq!(s["since"], stamp(T0));
        assert_eq!(s["last_heard"], stamp(T0 + 5));
        assert_eq!(s["silent"], serde_json::Value::Null);
        assert_eq!(s["last_error"], "link: the hub refused the connection");
        assert_eq!(s["office_to_hub"]["lag_s"], 2);
    }
}
