//! The one place that decides health: a pure, synchronous state machine.
//!
//! Edge tasks send [`Event`]s; [`HealthMachine::handle`] and [`HealthMachine::tick`]
//! return the [`Health`] that the LEDs, MQTT, the journal and `tether status` render. No
//! I/O, no clock reads: the output depends only on the events and their timestamps.
//!
//! Rules: a worse verdict must hold for `settle` before it shows (a single lost probe
//! must not flicker the LEDs), except `needs_attention`, which shows at once; a better
//! verdict shows at once; `link_down` becomes `needs_attention` after `alert_after`.
//!
//! What the LAN may see: the health is the state document (MQTT, the status page,
//! `/status.json`), so it carries no value from the config (addresses, ports, users,
//! schemas, paths, the pinned key) and no account names. Text the agent's own connections
//! produce (tunnel faults, probe and database connection errors) embeds those, so it is
//! never quoted: a reason names its cause in fixed words ([`cause_words`]) and the config
//! key to check; the full text is in the agent's log. Text the servers report
//! (replication errors, doctor findings) is quoted with any account masked
//! ([`mask_accounts`]).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Serialize, Serializer};

use crate::events::{
    Direction, Event, Finding, LinkFault, MqttEvent, ProbePath, ReplicationStatus, SeedReport,
    Seeding, Severity, Stamp, TunnelEvent,
};

/// The verdicts, from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    InSync,
    CatchingUp,
    LinkDown,
    NeedsAttention,
}

impl Verdict {
    pub const ALL: [Verdict; 4] = [
        Verdict::InSync,
        Verdict::CatchingUp,
        Verdict::LinkDown,
        Verdict::NeedsAttention,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::InSync => "in_sync",
            Verdict::CatchingUp => "catching_up",
            Verdict::LinkDown => "link_down",
            Verdict::NeedsAttention => "needs_attention",
        }
    }

    pub fn parse(s: &str) -> Option<Verdict> {
        Verdict::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The verdict in large words: the status page's heading, the first words of
    /// `tether status`.
    pub fn headline(self) -> &'static str {
        match self {
            Verdict::InSync => "In sync",
            Verdict::CatchingUp => "Catching up",
            Verdict::LinkDown => "Link down",
            Verdict::NeedsAttention => "Needs attention",
        }
    }

    /// One sentence under the headline: what it means for the office.
    pub fn meaning(self) -> &'static str {
        match self {
            Verdict::InSync => "Everything replicates: both sites hold the same data.",
            Verdict::CatchingUp => "The link is up and the data that waited is flowing.",
            Verdict::LinkDown => {
                "No link to the hub. Work here is kept and syncs when the link returns."
            }
            Verdict::NeedsAttention => "A person must act: this will not fix itself.",
        }
    }

    /// The next step for office staff, in plain words (the reasons follow it).
    pub fn next_step(self) -> &'static str {
        match self {
            Verdict::InSync => "Nothing to do.",
            Verdict::CatchingUp => "Nothing to do; wait a few minutes.",
            Verdict::LinkDown => {
                "Check the office Internet connection (the router's lights and cables). If it lasts, call IT and tell them:"
            }
            Verdict::NeedsAttention => "Call IT and tell them:",
        }
    }
}

/// The state machine's knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthSettings {
    pub settle: Duration,
    pub alert_after: Duration,
    pub lag_ok: Duration,
}

/// The tunnel as people see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TunnelHealth {
    pub up: bool,
    #[serde(serialize_with = "rfc3339_opt")]
    pub since: Option<SystemTime>,
    pub reconnects: u64,
    pub last_error: Option<String>,
}

/// One replication direction as people see it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DirectionHealth {
    pub io_running: Option<bool>,
    pub sql_running: Option<bool>,
    pub lag_s: Option<u64>,
    pub last_errno: u32,
    pub last_error: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplicationHealth {
    pub hub_to_office: DirectionHealth,
    pub office_to_hub: DirectionHealth,
}

/// What every renderer shows. Serialises to the MQTT state document (without `agent`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    pub verdict: Verdict,
    #[serde(serialize_with = "rfc3339")]
    pub since: SystemTime,
    pub reasons: Vec<String>,
    pub tunnel: TunnelHealth,
    pub replication: ReplicationHealth,
}

fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_seconds(*t))
}

fn rfc3339_opt<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}

#[derive(Debug, Clone, Default)]
struct DirState {
    status: Option<ReplicationStatus>,
    unreachable: Option<String>,
    /// Since when (monotonic) the readings in a row show the applier stopped without
    /// any error, and how long the latest of them says it has been so.
    stopped_since: Option<Duration>,
    stopped_for: Duration,
}

/// An applier stopped without any error: a person stopped it, or something paused it
/// for a moment (`tether setup` adding another office to the hub).
fn stopped_cleanly(s: &ReplicationStatus) -> bool {
    s.sql_running == Some(false) && s.last_error().0 == 0
}

/// The state machine.
#[derive(Debug, Clone)]
pub struct HealthMachine {
    settings: HealthSettings,
    tunnel_up: bool,
    tunnel_since: Option<SystemTime>,
    ever_up: bool,
    reconnects: u64,
    fault: Option<LinkFault>,
    /// Monotonic time the link went down (or the agent started without it).
    down_since: Option<Duration>,
    probe_failures: BTreeMap<ProbePath, String>,
    dirs: BTreeMap<Direction, DirState>,
    findings: Vec<Finding>,
    divergence: Vec<Finding>,
    mqtt_problem: Option<String>,
    seed: Option<Seeding>,
    shown: Health,
    /// A worse verdict waiting out the settle time: (verdict, since when).
    pending: Option<(Verdict, Duration)>,
    /// This office's connection (channel) on a hub with several offices
    /// (`replication.hub_connection`): reasons about the hub's replica name it.
    hub_connection: Option<String>,
}

impl HealthMachine {
    /// Starts as `link_down` ("connecting to the hub"): nothing is known yet, and a box
    /// that cannot reach its hub must never look green.
    pub fn new(settings: HealthSettings, now: Stamp) -> Self {
        let mut m = HealthMachine {
            settings,
            tunnel_up: false,
            tunnel_since: None,
            ever_up: false,
            reconnects: 0,
            fault: None,
            down_since: Some(now.mono),
            probe_failures: BTreeMap::new(),
            dirs: Direction::BOTH
                .iter()
                .map(|d| (*d, DirState::default()))
                .collect(),
            findings: Vec::new(),
            divergence: Vec::new(),
            mqtt_problem: None,
            seed: None,
            shown: Health {
                verdict: Verdict::LinkDown,
                since: now.wall,
                reasons: Vec::new(),
                tunnel: TunnelHealth {
                    up: false,
                    since: None,
                    reconnects: 0,
                    last_error: None,
                },
                replication: ReplicationHealth::default(),
            },
            pending: None,
            hub_connection: None,
        };
        m.refresh(now);
        m
    }

    /// Names this office's connection (channel) on the hub in the reasons about the hub's
    /// replica (`replication.hub_connection`; `None`: the hub's default one).
    pub fn with_hub_connection(mut self, name: Option<String>) -> Self {
        self.hub_connection = name;
        self
    }

    pub fn health(&self) -> &Health {
        &self.shown
    }

    /// Total reconnects seen (sessions established after the first).
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// Restores counters kept in the journal.
    pub fn restore_reconnects(&mut self, reconnects: u64) {
        self.reconnects = reconnects;
        self.shown.tunnel.reconnects = reconnects;
    }

    /// A problem with the MQTT broker, for `tether status` only (never the DB verdict).
    pub fn mqtt_problem(&self) -> Option<&str> {
        self.mqtt_problem.as_deref()
    }

    pub fn handle(&mut self, event: Event, now: Stamp) -> &Health {
        match event {
            Event::Tunnel(ev) => self.on_tunnel(ev, now),
            Event::Replication { direction, status } => {
                let d = self.dirs.entry(direction).or_default();
                if stopped_cleanly(&status) {
                    let since = *d.stopped_since.get_or_insert(now.mono);
                    d.stopped_for = now.mono.saturating_sub(since);
                } else {
                    d.stopped_since = None;
                    d.stopped_for = Duration::ZERO;
                }
                d.status = Some(status);
                d.unreachable = None;
            }
            Event::ReplicationUnreachable { direction, error } => {
                self.dirs.entry(direction).or_default().unreachable = Some(error);
            }
            Event::Doctor(findings) => self.findings = findings,
            Event::Divergence(findings) => self.divergence = findings,
            Event::Mqtt(MqttEvent::Connected) => self.mqtt_problem = None,
            Event::Mqtt(MqttEvent::Disconnected { reason }) => self.mqtt_problem = Some(reason),
            Event::Seed(report) => self.seed = report,
        }
        self.refresh(now);
        &self.shown
    }

    /// Time passing alone can change the verdict (settle, alert_after).
    pub fn tick(&mut self, now: Stamp) -> &Health {
        self.refresh(now);
        &self.shown
    }

    fn on_tunnel(&mut self, ev: TunnelEvent, now: Stamp) {
        match ev {
            TunnelEvent::Connecting { .. } => {}
            TunnelEvent::Up => {
                if self.ever_up {
                    self.reconnects += 1;
                }
                self.ever_up = true;
                self.tunnel_up = true;
                self.tunnel_since = Some(now.wall);
                self.fault = None;
                self.down_since = None;
                self.probe_failures.clear();
            }
            TunnelEvent::Down { fault, .. } => {
                if self.tunnel_up || self.down_since.is_none() {
                    self.down_since = Some(now.mono);
                }
                self.tunnel_up = false;
                self.tunnel_since = None;
                self.fault = Some(fault);
                self.probe_failures.clear();
            }
            TunnelEvent::ProbeOk { path, .. } => {
                self.probe_failures.remove(&path);
            }
            TunnelEvent::ProbeFailed { path, error } => {
                self.probe_failures.insert(path, error);
            }
            TunnelEvent::ProbeBusy { .. } => {}
        }
    }

    /// What the components say right now, before settling. An applier stopped without
    /// an error needs a person only once readings at least `settle` apart both show it
    /// stopped: a moment's stop (`tether setup` adding another office to the hub) caught
    /// by one reading must not turn this box red, however late the next reading comes.
    fn assess(&self, now: Stamp) -> (Verdict, Vec<String>) {
        let mut attention = Vec::new();
        let mut down = Vec::new();
        let mut behind = Vec::new();

        if !self.tunnel_up {
            match &self.fault {
                Some(f) if f.needs_person() => attention.push(explain_fault(f)),
                Some(f) => down.push(explain_fault(f)),
                None => down.push("Connecting to the hub.".to_owned()),
            }
            if let Some(since) = self.down_since {
                let out = now.mono.saturating_sub(since);
                if out >= self.settings.alert_after {
                    attention.push(format!(
                        "The link to the hub has been down for {}. Work here is kept, but check the office Internet connection and the hub.",
                        humantime::format_duration(Duration::from_secs(out.as_secs()))
                    ));
                }
            }
        } else {
            for (path, error) in &self.probe_failures {
                let cause = in_brackets(cause_words(error));
                down.push(match path {
                    ProbePath::HubDbThroughLocalForward => format!(
                        "The hub database does not answer through the tunnel{cause}. Check that the hub's database is running (`forwards.local_target` in tether.toml is where the hub reaches it)."
                    ),
                    ProbePath::OfficeDbThroughRemoteForward => format!(
                        "The hub cannot reach the office database through the tunnel{cause}. Check that the office database is running (`forwards.remote_target` in tether.toml is where this box reaches it)."
                    ),
                });
            }
        }

        // While one side is being seeded, its replication from the other is stopped on
        // purpose (it starts at the copy's position): the seed speaks for that direction.
        if let Some(Seeding { direction, report }) = &self.seed {
            let (to, from) = (direction.replica_side(), direction.source_side());
            match report {
                SeedReport::Failed(why) => attention.push(format!(
                    "Seeding the {to} from the {from} stopped: {why} Replication from the {from} waits until the seed is done."
                )),
                SeedReport::Copying { percent, eta } => behind.push(format!(
                    "Seeding the {to} from the {from}: {}, {}; replication from the {from} starts when it is done.",
                    percent.map_or_else(|| "counting rows".to_owned(), |p| format!("{p} %")),
                    eta.map_or_else(
                        || "estimating time left".to_owned(),
                        crate::seed::progress::eta_words
                    )
                )),
                SeedReport::Verifying => behind.push(format!(
                    "Seeding the {to} from the {from}: copy complete, checking it against the {from}; replication from the {from} starts when it is done."
                )),
            }
        }
        for dir in Direction::BOTH {
            if self.seed.as_ref().is_some_and(|s| s.direction == dir) {
                continue;
            }
            let state = &self.dirs[&dir];
            let name = match dir {
                Direction::HubToOffice => "hub to office",
                Direction::OfficeToHub => "office to hub",
            };
            if let Some(err) = &state.unreachable {
                let side = dir.replica_side();
                let section = config_section(dir);
                let cause = in_brackets(cause_words(err));
                if crate::replication::is_refusal(err) {
                    attention.push(format!(
                        "The agent's account on the {side} database is refused or lacks privileges{cause}. Check `{section}.user` and `{section}.password` in tether.toml, and re-run the agent-user SQL from the hub kit there."
                    ));
                } else if self.tunnel_up {
                    behind.push(format!(
                        "Cannot read replication status ({name}) from the {side} database{cause}. {}",
                        match dir {
                            Direction::HubToOffice => "Check `office_db.host` and `office_db.port` in tether.toml and that the office database runs.",
                            Direction::OfficeToHub => "It is reached through the tunnel (`forwards.local_listen` in tether.toml); check that the hub database runs.",
                        }
                    ));
                }
                continue;
            }
            let Some(s) = &state.status else {
                if self.tunnel_up {
                    behind.push(format!(
                        "Waiting for the first replication status ({name})."
                    ));
                }
                continue;
            };
            let (errno, error) = s.last_error();
            let stopped = s.sql_running == Some(false) || s.io_running == Some(false);
            // An explanation (from `replication`, in the server family's words) always
            // means a person must act, with or without an error number.
            if let Some(why) = s
                .explanation
                .as_ref()
                .filter(|_| errno == 0 || is_link_errno(errno))
            {
                let said = format!(
                    "On the {} database (replication {name}): {why}",
                    dir.replica_side()
                );
                if !stopped_cleanly(s) || state.stopped_for >= self.settings.settle {
                    attention.push(said);
                }
            } else if s.io_running.is_none() && s.sql_running.is_none() {
                let connection = match (&self.hub_connection, dir) {
                    (Some(c), Direction::OfficeToHub) => {
                        format!(" (this office's connection '{c}' there)")
                    }
                    _ => String::new(),
                };
                attention.push(format!(
                    "Replication {name} is not set up on the {} database{connection}. `tether setup`, or the statements `tether enroll` prints, set it up, in that database's words.",
                    dir.replica_side()
                ));
            } else if errno != 0 && !is_link_errno(errno) {
                attention.push(match &s.explanation {
                    Some(why) => format!(
                        "On the {} database (replication {name}, error {errno}): {}",
                        dir.replica_side(),
                        mask_accounts(why)
                    ),
                    // Health does not know the server's family: without an explanation
                    // (replication sends one in the family's words) no statement is named.
                    None => format!(
                        "Replication {name} stopped on the {} database with error {errno}: {}. A database administrator must look at it (the replica status there shows the event), correct the data, then start replication again; tether never skips events.",
                        dir.replica_side(),
                        mask_accounts(error)
                    ),
                });
            } else if stopped && s.sql_running == Some(false) {
                if stopped_cleanly(s) && state.stopped_for < self.settings.settle {
                    continue;
                }
                attention.push(format!(
                    "Replication {name} is stopped on the {} database (its applier is not running). Start replication there once the cause is known.",
                    dir.replica_side()
                ));
            } else if self.tunnel_up && s.io_running != Some(true) {
                behind.push(format!("Replication {name} is reconnecting."));
            } else if self.tunnel_up {
                match s.lag_s {
                    Some(lag) if Duration::from_secs(lag) > self.settings.lag_ok => behind.push(
                        format!("Replication {name} is {lag} s behind and catching up."),
                    ),
                    None => behind.push(format!("Measuring replication lag ({name}).")),
                    _ => {}
                }
            }
        }
        for f in self.findings.iter().chain(&self.divergence) {
            if f.severity == Severity::NeedsAttention {
                attention.push(mask_accounts(&format!("{} {}", f.message, f.fix)));
            }
        }

        if !attention.is_empty() {
            attention.extend(down);
            (Verdict::NeedsAttention, attention)
        } else if !down.is_empty() {
            (Verdict::LinkDown, down)
        } else if !behind.is_empty() {
            (Verdict::CatchingUp, behind)
        } else {
            (Verdict::InSync, Vec::new())
        }
    }

    fn refresh(&mut self, now: Stamp) {
        let (candidate, reasons) = self.assess(now);
        let shown = self.shown.verdict;
        let show = if candidate == shown {
            self.pending = None;
            Some(shown)
        } else if candidate == Verdict::NeedsAttention || candidate < shown {
            self.pending = None;
            Some(candidate)
        } else {
            match self.pending {
                Some((v, since)) if v == candidate => {
                    (now.mono.saturating_sub(since) >= self.settings.settle).then_some(candidate)
                }
                _ => {
                    self.pending = Some((candidate, now.mono));
                    self.settings.settle.is_zero().then_some(candidate)
                }
            }
        };
        if let Some(v) = show {
            if v != self.shown.verdict {
                self.shown.since = now.wall;
                self.pending = None;
            }
            self.shown.verdict = v;
            self.shown.reasons = reasons;
        }
        self.shown.tunnel = TunnelHealth {
            up: self.tunnel_up,
            since: self.tunnel_since,
            reconnects: self.reconnects,
            last_error: self.fault.as_ref().map(explain_fault),
        };
        // A status that can no longer be read is unknown, not its last reading: the
        // side reached through the tunnel must not look running while the link is down.
        let dir_health = |d: &DirState| match (&d.unreachable, &d.status) {
            (Some(err), _) => DirectionHealth {
                last_error: format!(
                    "status unknown: {}",
                    cause_words(err).unwrap_or("the database cannot be read")
                ),
                ..DirectionHealth::default()
            },
            (None, Some(s)) => {
                let (errno, error) = s.last_error();
                DirectionHealth {
                    io_running: s.io_running,
                    sql_running: s.sql_running,
                    lag_s: s.lag_s,
                    last_errno: errno,
                    last_error: mask_accounts(error),
                }
            }
            (None, None) => DirectionHealth::default(),
        };
        self.shown.replication = ReplicationHealth {
            hub_to_office: dir_health(&self.dirs[&Direction::HubToOffice]),
            office_to_hub: dir_health(&self.dirs[&Direction::OfficeToHub]),
        };
    }
}

/// Client errors that mean "cannot reach the primary": the link's business, not a person's.
fn is_link_errno(errno: u32) -> bool {
    crate::replication::is_link_errno(errno)
}

/// One sentence for people, with the fix where there is one. Built from the kind of
/// fault and [`cause_words`], never from the fault's own text, which names the hub's
/// address and account.
pub fn explain_fault(fault: &LinkFault) -> String {
    match fault {
        LinkFault::Unreachable(e) => format!(
            "No link to the hub{}. Work here is kept and syncs when the link returns; if it lasts, check the office Internet connection, and `hub.host` and `hub.port` in tether.toml.",
            in_brackets(cause_words(e))
        ),
        LinkFault::Reset(e) => format!(
            "The link to the hub dropped{}; reconnecting.",
            in_brackets(cause_words(e))
        ),
        LinkFault::Silent { after } => format!(
            "The link to the hub went silent (nothing received for {} s); reconnecting.",
            after.as_secs()
        ),
        LinkFault::HostKeyChanged { seen, .. } => format!(
            "The hub presented a different host key ({seen}) from the one pinned (`hub.host_key` in tether.toml, or pinned by `tether enroll --pin`). If the hub was reinstalled, confirm the new key with its administrator and run `tether enroll --pin`; otherwise someone may be intercepting the connection."
        ),
        LinkFault::LoginRefused(_) => "The hub refused this box's login (the account is `hub.user` in tether.toml). Install the key line printed by `tether enroll` in that account's authorized_keys on the hub.".to_owned(),
        LinkFault::RemoteForwardRefused { .. } => "The hub refused to listen on `forwards.remote_listen`: an old session from before a link drop probably still holds it. Tether keeps retrying; on the hub, set `ClientAliveInterval 15` and `ClientAliveCountMax 3` in the Match block so stale sessions end within a minute.".to_owned(),
        LinkFault::Other(e) => format!(
            "SSH problem ({}); reconnecting.",
            cause_words(e).unwrap_or("the agent's log has the details")
        ),
    }
}

/// The cause of a connection error in fixed words, or `None` when it is none of the
/// known ones. A whitelist: whatever else the error says (addresses, accounts) stays out.
pub fn cause_words(error: &str) -> Option<&'static str> {
    let e = error.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| e.contains(w));
    Some(if has(&["1045", "1044", "1227", "access denied"]) {
        "login refused"
    } else if has(&["1049", "unknown database"]) {
        "the schema does not exist"
    } else if has(&["reconnect requested"]) {
        "a reconnect was asked for"
    } else if has(&[
        "lookup",
        "name or service not known",
        "name resolution",
        "no address associated",
        "nodename nor servname",
    ]) {
        "the name does not resolve"
    } else if has(&[
        "no route to host",
        "network is unreachable",
        "host is unreachable",
    ]) {
        "no route"
    } else if has(&["refused"]) {
        "connection refused"
    } else if has(&[
        "timed out",
        "no answer",
        "within",
        "did not accept",
        "did not open",
    ]) {
        "no answer in time"
    } else if has(&["reset", "broken pipe", "aborted"]) {
        "the connection was reset"
    } else if has(&["closed", "session ended", "eof", "end of file"]) {
        "the connection was closed"
    } else {
        return None;
    })
}

/// ` (cause)`, or nothing.
fn in_brackets(cause: Option<&str>) -> String {
    cause.map(|c| format!(" ({c})")).unwrap_or_default()
}

/// The config section that says how the agent reaches the replica of `dir`.
fn config_section(dir: Direction) -> &'static str {
    match dir {
        Direction::HubToOffice => "office_db",
        Direction::OfficeToHub => "hub_db",
    }
}

/// Server text with every account masked: `'repl'@'localhost'`, `` `repl`@`%` `` and
/// `'repl@127.0.0.1:3307'` (as replication errors and grants spell them) become
/// `'…'@'…'`, `` `…`@`…` `` and `'…'`.
pub fn mask_accounts(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let core_start = word.find(['\'', '`', '"']);
        match core_start {
            Some(start) if word.contains('@') && word[start..].contains('@') => {
                out.push_str(&word[..start]);
                out.push_str(&mask_quoted(&word[start..]));
            }
            _ => out.push_str(word),
        }
    }
    out
}

/// `'a'@'b'),` -> `'…'@'…'),`: the inside of every quoted part replaced.
fn mask_quoted(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    let mut open: Option<char> = None;
    for c in word.chars() {
        match open {
            None if matches!(c, '\'' | '`' | '"') => {
                open = Some(c);
                out.push(c);
                out.push('…');
            }
            None => out.push(c),
            Some(q) if c == q => {
                open = None;
                out.push(c);
            }
            Some(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn settings() -> HealthSettings {
        HealthSettings {
            settle: Duration::from_secs(5),
            alert_after: Duration::from_secs(3600),
            lag_ok: Duration::from_secs(10),
        }
    }

    fn at(s: f64) -> Stamp {
        Stamp {
            mono: Duration::from_secs_f64(s),
            wall: SystemTime::UNIX_EPOCH
                + Duration::from_secs(1_800_000_000)
                + Duration::from_secs_f64(s),
        }
    }

    fn healthy(status_lag: u64) -> ReplicationStatus {
        ReplicationStatus {
            io_running: Some(true),
            sql_running: Some(true),
            lag_s: Some(status_lag),
            ..ReplicationStatus::default()
        }
    }

    /// A machine that has reached in_sync at t = 1 s.
    fn in_sync() -> HealthMachine {
        let mut m = HealthMachine::new(settings(), at(0.0));
        m.handle(Event::Tunnel(TunnelEvent::Up), at(0.5));
        for d in Direction::BOTH {
            m.handle(
                Event::Replication {
                    direction: d,
                    status: healthy(0),
                },
                at(1.0),
            );
        }
        assert_eq!(m.health().verdict, Verdict::InSync);
        m
    }

    #[test]
    fn a_status_that_cannot_be_read_is_shown_unknown_not_stale() {
        let mut m = in_sync();
        m.handle(
            down(LinkFault::Silent {
                after: Duration::from_secs(6),
            }),
            at(5.0),
        );
        m.handle(
            Event::ReplicationUnreachable {
                direction: Direction::OfficeToHub,
                error: "connection refused".into(),
            },
            at(6.0),
        );
        let d = &m.health().replication.office_to_hub;
        assert_eq!((d.io_running, d.sql_running, d.lag_s), (None, None, None));
        assert!(
            d.last_error.contains("status unknown: connection refused"),
            "{d:?}"
        );
        // The office side, read directly, still shows what it reads.
        assert_eq!(m.health().replication.hub_to_office.io_running, Some(true));
        // A reading brings the values back.
        m.handle(
            Event::Replication {
                direction: Direction::OfficeToHub,
                status: healthy(0),
            },
            at(7.0),
        );
        assert_eq!(m.health().replication.office_to_hub.io_running, Some(true));
    }

    #[test]
    fn an_applier_stopped_without_an_error_turns_red_only_once_it_stays_stopped() {
        let stopped = || Event::Replication {
            direction: Direction::OfficeToHub,
            status: ReplicationStatus {
                io_running: Some(false),
                sql_running: Some(false),
                explanation: Some("Replication is stopped (the SQL thread is not running).".into()),
                ..ReplicationStatus::default()
            },
        };
        let running = Event::Replication {
            direction: Direction::OfficeToHub,
            status: healthy(0),
        };
        // A moment's stop (another office added to the hub) caught by one reading: never
        // red, however late the next reading comes.
        let mut m = in_sync();
        m.handle(stopped(), at(2.0));
        assert_eq!(m.health().verdict, Verdict::InSync);
        m.tick(at(20.0));
        assert_eq!(m.health().verdict, Verdict::InSync);
        m.handle(running, at(21.0));
        m.tick(at(30.0));
        assert_eq!(m.health().verdict, Verdict::InSync);
        // A stop that lasts: red once readings `settle` apart both show it, with its reason.
        m.handle(stopped(), at(31.0));
        m.handle(stopped(), at(34.0));
        m.tick(at(40.0));
        assert_eq!(m.health().verdict, Verdict::InSync);
        m.handle(stopped(), at(37.0));
        assert_eq!(m.health().verdict, Verdict::NeedsAttention);
        assert!(m.health().reasons[0].contains("SQL thread is not running"));
        // Stopped on an error: red at once.
        let mut m = in_sync();
        m.handle(
            Event::Replication {
                direction: Direction::OfficeToHub,
                status: ReplicationStatus {
                    io_running: Some(true),
                    sql_running: Some(false),
                    last_sql_errno: 1062,
                    last_sql_error: "Duplicate entry".into(),
                    explanation: Some("A duplicate key.".into()),
                    ..ReplicationStatus::default()
                },
            },
            at(2.0),
        );
        assert_eq!(m.health().verdict, Verdict::NeedsAttention);
    }

    #[test]
    fn a_hub_replica_not_set_up_names_this_offices_connection() {
        let mut m = in_sync().with_hub_connection(Some("office-2".into()));
        m.handle(
            Event::Replication {
                direction: Direction::OfficeToHub,
                status: ReplicationStatus::default(),
            },
            at(2.0),
        );
        let h = m.health();
        assert_eq!(h.verdict, Verdict::NeedsAttention);
        assert!(
            h.reasons.iter().any(|r| r.contains(
                "not set up on the hub database (this office's connection 'office-2' there)"
            )),
            "{:?}",
            h.reasons
        );
    }

    fn down(fault: LinkFault) -> Event {
        Event::Tunnel(TunnelEvent::Down {
            fault,
            retry_in: Duration::from_secs(1),
        })
    }

    #[test]
    fn starts_link_down_and_goes_green_at_once_when_better() {
        let m = HealthMachine::new(settings(), at(0.0));
        assert_eq!(m.health().verdict, Verdict::LinkDown);
        assert!(!m.health().reasons.is_empty());
        let m = in_sync();
        assert_eq!(m.health().since, at(1.0).wall);
    }

    #[test]
    fn a_cut_shows_only_after_settle() {
        let mut m = in_sync();
        m.handle(down(LinkFault::Reset("x".into())), at(10.0));
        assert_eq!(m.health().verdict, Verdict::InSync);
        m.tick(at(14.9));
        assert_eq!(m.health().verdict, Verdict::InSync);
        m.tick(at(15.0));
        assert_eq!(m.health().verdict, Verdict::LinkDown);
        assert_eq!(m.health().since, at(15.0).wall);
        assert!(!m.health().tunnel.up);
    }

    #[test]
    fn a_changed_host_key_needs_attention_at_once() {
        let mut m = in_sync();
        m.handle(
            down(LinkFault::HostKeyChanged {
                seen: "SHA256:new".into(),
                expected: "SHA256:old".into(),
            }),
            at(10.0),
        );
        assert_eq!(m.health().verdict, Verdict::NeedsAttention);
        assert!(m.health().reasons[0].contains("SHA256:new"));
        assert!(
            !m.health().reasons[0].contains("SHA256:old"),
            "the pinned key may come from the config"
        );
        assert!(m.health().reasons[0].contains("tether enroll --pin"));
    }

    /// The wall clock jumps (NTP after a long power cut, a person setting the date):
    /// settle and alert_after run on the monotonic clock, so neither fires early nor late;
    /// only the `since` shown to people follows the wall clock.
    #[test]
    fn wall_clock_jumps_change_no_verdict_timing() {
        for jump in [-86_400.0f64 * 365.0, -3600.0, 3600.0, 86_400.0 * 365.0] {
            let jumped = |s: f64| Stamp {
                mono: Duration::from_secs_f64(s),
                wall: if jump < 0.0 {
                    at(s).wall - Duration::from_secs_f64(-jump)
                } else {
                    at(s).wall + Duration::from_secs_f64(jump)
                },
            };
            let mut m = in_sync();
            m.handle(down(LinkFault::Reset("x".into())), jumped(10.0));
            m.tick(jumped(14.9));
            assert_eq!(m.health().verdict, Verdict::InSync, "jump {jump}");
            m.tick(jumped(15.0));
            assert_eq!(m.health().verdict, Verdict::LinkDown, "jump {jump}");
            assert_eq!(m.health().since, jumped(15.0).wall);
            m.tick(jumped(10.0 + 3599.0));
            assert_eq!(m.health().verdict, Verdict::LinkDown, "jump {jump}");
            m.tick(jumped(10.0 + 3600.0));
            assert_eq!(m.health().verdict, Verdict::NeedsAttention, "jump {jump}");
        }
        // A wall clock before 1970 (a board without RTC): still no panic, no change.
        let mut m = in_sync();
        let early = Stamp {
            mono: Duration::from_secs(20),
            wall: SystemTime::UNIX_EPOCH,
        };
        m.tick(early);
        assert_eq!(m.health().verdict, Verdict::InSync);
        serde_json::to_string(m.health()).unwrap();
    }

    #[test]
    fn link_down_becomes_needs_attention_after_alert_after() {
        let mut m = in_sync();
        m.handle(down(LinkFault::Unreachable("x".into())), at(10.0));
        m.tick(at(20.0));
        assert_eq!(m.health().verdict, Verdict::LinkDown);
        m.tick(at(10.0 + 3600.0));
        assert_eq!(m.health().verdict, Verdict::NeedsAttention);
    }

    #[test]
    fn a_duplicate_key_needs_attention_with_the_explanation() {
        let mut m = in_sync();
        let status = ReplicationStatus {
            sql_running: Some(false),
            last_sql_errno: 1062,
            last_sql_error: "Duplicate entry".into(),
            explanation: Some("Replication stopped on a duplicate key in table `app.t`.".into()),
            ..healthy(0)
        };
        m.handle(
            Event::Replication {
                direction: Direction::OfficeToHub,
                status,
            },
            at(5.0),
        );
        assert_eq!(m.health().verdict, Verdict::NeedsAttention);
        assert!(m.health().reasons.iter().any(|r| r.contains("app.t")));
        assert!(
            m.health()
                .reasons
                .iter()
                .any(|r| r
                    .starts_with("On the hub database (replication office to hub, error 1062)")),
            "names the side: {:?}",
            m.health().reasons
        );
        assert_eq!(m.health().replication.office_to_hub.last_errno, 1062);
    }

    #[test]
    fn an_explanation_without_an_error_needs_attention_too() {
        // A pair of different families: replication reports nothing wrong (or only a
        // link error), but it cannot work, and the agent says why.
        let mut m = in_sync();
        let why = "The office database is MariaDB 10.11.6 and the hub's is MySQL 9.7.4: their GTIDs do not mix.";
        m.handle(
            Event::Replication {
                direction: Direction::OfficeToHub,
                status: ReplicationStatus {
                    explanation: Some(why.into()),
                    last_io_errno: 2003,
                    ..healthy(0)
                },
            },
            at(100.0),
        );
        assert_eq!(m.health().verdict, Verdict::NeedsAttention);
        assert!(
            m.health()
                .reasons
                .iter()
                .any(|r| r.contains("On the hub database") && r.contains("GTIDs do not mix")),
            "{:?}",
            m.health().reasons
        );
    }

    #[test]
    fn lag_above_lag_ok_is_catching_up() {
        let mut m = in_sync();
        m.handle(
            Event::Replication {
                direction: Direction::HubToOffice,
                status: healthy(60),
            },
            at(5.0),
        );
        m.tick(at(11.0));
        assert_eq!(m.health().verdict, Verdict::CatchingUp);
        m.handle(
            Event::Replication {
                direction: Direction::HubToOffice,
                status: healthy(1),
            },
            at(12.0),
        );
        assert_eq!(m.health().verdict, Verdict::InSync);
    }

    #[test]
    fn the_state_document_has_the_contract_fields() {
        let v = serde_json::to_value(in_sync().health()).unwrap();
        assert_eq!(v["verdict"], "in_sync");
        assert!(v["since"].as_str().unwrap().ends_with('Z'));
        for k in ["up", "since", "reconnects", "last_error"] {
            assert!(v["tunnel"].get(k).is_some(), "tunnel.{k}");
        }
        for d in ["hub_to_office", "office_to_hub"] {
            for k in [
                "io_running",
                "sql_running",
                "lag_s",
                "last_errno",
                "last_error",
            ] {
                assert!(v["replication"][d].get(k).is_some(), "{d}.{k}");
            }
        }
    }

    proptest! {
        /// Single lost probes, each followed by a success within the settle time, never
        /// change what the LEDs show.
        #[test]
        fn alternating_single_probe_losses_never_flicker(gaps in proptest::collection::vec(0.1f64..4.9, 1..60)) {
            let mut m = in_sync();
            let mut t = 2.0;
            for gap in gaps {
                let path = if gap > 2.5 { ProbePath::HubDbThroughLocalForward } else { ProbePath::OfficeDbThroughRemoteForward };
                m.handle(Event::Tunnel(TunnelEvent::ProbeFailed { path, error: "lost".into() }), at(t));
                prop_assert_eq!(m.health().verdict, Verdict::InSync);
                m.tick(at(t + gap / 2.0));
                prop_assert_eq!(m.health().verdict, Verdict::InSync);
                t += gap;
                m.handle(Event::Tunnel(TunnelEvent::ProbeOk { path, rtt: Duration::from_millis(5) }), at(t));
                prop_assert_eq!(m.health().verdict, Verdict::InSync);
                t += 0.5;
            }
        }

        /// The output depends only on the events and their stamps.
        #[test]
        fn deterministic(seq in proptest::collection::vec((0u8..6, 0.0f64..10.0), 0..40)) {
            let run = || {
                let mut m = HealthMachine::new(settings(), at(0.0));
                let mut t = 0.0;
                let mut out = Vec::new();
                for (kind, dt) in &seq {
                    t += dt;
                    let ev = match kind {
                        0 => Event::Tunnel(TunnelEvent::Up),
                        1 => down(LinkFault::Reset("r".into())),
                        2 => Event::Tunnel(TunnelEvent::ProbeFailed { path: ProbePath::HubDbThroughLocalForward, error: "e".into() }),
                        3 => Event::Replication { direction: Direction::HubToOffice, status: healthy(*dt as u64 * 3) },
                        4 => Event::Replication { direction: Direction::OfficeToHub, status: healthy(0) },
                        _ => down(LinkFault::LoginRefused("no".into())),
                    };
                    out.push(m.handle(ev, at(t)).clone());
                    out.push(m.tick(at(t + 0.1)).clone());
                }
                out
            };
            prop_assert_eq!(run(), run());
        }

        /// needs_attention shows on the very event that causes it.
        #[test]
        fn needs_attention_is_immediate(t in 2.0f64..1000.0) {
            let mut m = in_sync();
            m.handle(down(LinkFault::LoginRefused("refused".into())), at(t));
            prop_assert_eq!(m.health().verdict, Verdict::NeedsAttention);
        }
    }

    /// While the office is seeded, its stopped replication from the hub is expected: the
    /// box blinks green (catching up) with the progress, never red and never in sync,
    /// until the seed is done; a failed seed needs a person.
    #[test]
    fn a_seed_shows_catching_up_with_its_progress_until_done() {
        let mut m = in_sync();
        m.handle(
            Event::Seed(Some(Seeding {
                direction: Direction::HubToOffice,
                report: SeedReport::Copying {
                    percent: Some(43),
                    eta: Some(Duration::from_secs(7200)),
                },
            })),
            at(2.0),
        );
        let stopped = ReplicationStatus {
            io_running: Some(false),
            sql_running: Some(false),
            ..healthy(0)
        };
        m.handle(
            Event::Replication {
                direction: Direction::HubToOffice,
                status: stopped.clone(),
            },
            at(3.0),
        );
        m.tick(at(10.0));
        assert_eq!(m.health().verdict, Verdict::CatchingUp);
        assert_eq!(
            m.health().reasons,
            vec![
                "Seeding the office from the hub: 43 %, about 2 h left; replication from the hub starts when it is done."
            ]
        );
        m.handle(
            Event::Seed(Some(Seeding {
                direction: Direction::HubToOffice,
                report: SeedReport::Verifying,
            })),
            at(11.0),
        );
        assert_eq!(m.health().verdict, Verdict::CatchingUp);
        assert!(m.health().reasons[0].contains("checking it against the hub"));
        m.handle(
            Event::Seed(Some(Seeding {
                direction: Direction::HubToOffice,
                report: SeedReport::Failed(
                    "the definition of app.t changed on the hub during the seed.".into(),
                ),
            })),
            at(12.0),
        );
        assert_eq!(m.health().verdict, Verdict::NeedsAttention);
        assert_eq!(m.health().reasons.len(), 1, "{:?}", m.health().reasons);
        // Done: the stopped direction counts again (stopped without an error since the
        // reading at 3 s, which the next reading confirms).
        m.handle(Event::Seed(None), at(13.0));
        m.handle(
            Event::Replication {
                direction: Direction::HubToOffice,
                status: stopped.clone(),
            },
            at(13.0),
        );
        assert_eq!(m.health().verdict, Verdict::NeedsAttention);
        assert!(
            m.health().reasons[0].contains("hub to office"),
            "{:?}",
            m.health().reasons
        );
        m.handle(
            Event::Replication {
                direction: Direction::HubToOffice,
                status: healthy(0),
            },
            at(14.0),
        );
        assert_eq!(m.health().verdict, Verdict::InSync);
    }

    /// A new hub filled from the office: the hub's stopped replication from the office is
    /// what the seed speaks for, in words that say which way the copy goes.
    #[test]
    fn a_seed_of_a_new_hub_speaks_for_the_hubs_replication() {
        let mut m = in_sync();
        m.handle(
            Event::Seed(Some(Seeding {
                direction: Direction::OfficeToHub,
                report: SeedReport::Copying {
                    percent: Some(7),
                    eta: None,
                },
            })),
            at(2.0),
        );
        let not_set_up = ReplicationStatus {
            io_running: None,
            sql_running: None,
            ..healthy(0)
        };
        m.handle(
            Event::Replication {
                direction: Direction::OfficeToHub,
                status: not_set_up,
            },
            at(3.0),
        );
        m.tick(at(10.0));
        assert_eq!(m.health().verdict, Verdict::CatchingUp);
        assert_eq!(
            m.health().reasons,
            vec![
                "Seeding the hub from the office: 7 %, estimating time left; replication from the office starts when it is done."
            ]
        );
    }

    #[test]
    fn causes_are_named_in_fixed_words_and_nothing_else() {
        for (error, words) in [
            (
                "cannot connect to hub.example:22: Connection refused (os error 111)",
                Some("connection refused"),
            ),
            (
                "no answer from hub.example:22 within 10s",
                Some("no answer in time"),
            ),
            (
                "cannot connect to hub.example:22: failed to lookup address information: Name or service not known",
                Some("the name does not resolve"),
            ),
            (
                "cannot connect to 10.1.2.3:22: No route to host (os error 113)",
                Some("no route"),
            ),
            (
                "Connection reset by peer (os error 104)",
                Some("the connection was reset"),
            ),
            (
                "the hub closed the connection",
                Some("the connection was closed"),
            ),
            (
                "connect: ERROR 1045 (28000): Access denied for user 'agent'@'10.0.0.5' (using password: YES)",
                Some("login refused"),
            ),
            ("reconnect requested", Some("a reconnect was asked for")),
            ("Kex failure with hub.example", None),
        ] {
            assert_eq!(cause_words(error), words, "{error}");
        }
        let reason = explain_fault(&LinkFault::Unreachable(
            "cannot connect to hub.example:2222: Connection refused (os error 111)".into(),
        ));
        assert!(
            reason.starts_with("No link to the hub (connection refused)."),
            "{reason}"
        );
        assert!(reason.contains("`hub.host` and `hub.port`"), "{reason}");
        assert!(
            !reason.contains("hub.example") && !reason.contains("2222"),
            "{reason}"
        );
    }

    #[test]
    fn accounts_in_server_text_are_masked() {
        assert_eq!(
            mask_accounts(
                "error connecting to master 'repl@127.0.0.1:3307' - retry-time: 5 message: Access denied for user 'repl'@'localhost' (using password: YES)"
            ),
            "error connecting to master '…' - retry-time: 5 message: Access denied for user '…'@'…' (using password: YES)"
        );
        assert_eq!(
            mask_accounts("lacks REPLICATION SLAVE: GRANT USAGE ON *.* TO `repl`@`%`; x"),
            "lacks REPLICATION SLAVE: GRANT USAGE ON *.* TO `…`@`…`; x"
        );
        let plain = "Replication stopped on a duplicate key in table `app.orders` (key 'A-7').";
        assert_eq!(mask_accounts(plain), plain);
    }

    #[test]
    fn every_verdict_is_reachable() {
        let mut seen = std::collections::HashSet::new();
        let mut m = HealthMachine::new(settings(), at(0.0));
        seen.insert(m.health().verdict);
        m.handle(Event::Tunnel(TunnelEvent::Up), at(1.0));
        seen.insert(m.health().verdict);
        for d in Direction::BOTH {
            m.handle(
                Event::Replication {
                    direction: d,
                    status: healthy(0),
                },
                at(2.0),
            );
        }
        seen.insert(m.health().verdict);
        m.handle(down(LinkFault::LoginRefused("x".into())), at(3.0));
        seen.insert(m.health().verdict);
        assert_eq!(seen.len(), 4, "{seen:?}");
    }
}
