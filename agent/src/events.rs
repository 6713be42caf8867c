//! The events the edge tasks send to the health state machine: plain data, no I/O.
//!
//! Every edge task (tunnel, replication pollers, doctor, MQTT, button) reports what it saw
//! as one of these; `health::HealthMachine` is the only place that turns them into a verdict.

use std::time::{Duration, SystemTime};

/// A point in time as the state machine sees it: a monotonic reading for durations
/// (settle times, `alert_after`) and the wall clock for the `since` shown to people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp {
    /// Monotonic time since the agent started.
    pub mono: Duration,
    /// Wall clock at the same moment.
    pub wall: SystemTime,
}

/// Why the SSH connection to the hub is not up. Each kind maps to one verdict and one fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkFault {
    /// TCP connect to the hub failed or timed out (no route, refused, link cut).
    Unreachable(String),
    /// The connection was reset or closed under us.
    Reset(String),
    /// Keepalives went unanswered: the link is silently dropping traffic.
    Silent { after: Duration },
    /// The hub presented a host key other than the pinned one. Needs a person.
    HostKeyChanged { seen: String, expected: String },
    /// The hub refused the device key. Needs a person.
    LoginRefused(String),
    /// The hub refused to listen on the remote forward port, usually because a stale
    /// session from before a silent drop still holds it.
    RemoteForwardRefused { listen: String },
    /// SSH handshake, protocol or local error.
    Other(String),
}

impl LinkFault {
    /// Faults a person must fix; the tunnel backs off for minutes on these.
    pub fn needs_person(&self) -> bool {
        matches!(
            self,
            LinkFault::HostKeyChanged { .. } | LinkFault::LoginRefused(_)
        )
    }
}

/// Which forwarded path a probe checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbePath {
    /// agent -> local forward -> hub DB (the path the office replicates from).
    HubDbThroughLocalForward,
    /// hub -> remote forward -> office DB (the path the hub replicates from).
    OfficeDbThroughRemoteForward,
}

/// What the tunnel supervisor reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelEvent {
    /// A connection attempt started (attempt counts from 1 within one outage).
    Connecting { attempt: u32 },
    /// The SSH session is up and both forwards are established.
    Up,
    /// The session is down, or an attempt failed, for this reason. `retry_in` is when the
    /// supervisor will try again.
    Down {
        fault: LinkFault,
        retry_in: Duration,
    },
    /// A probe read the MySQL greeting through this path.
    ProbeOk { path: ProbePath, rtt: Duration },
    /// A probe could not read the MySQL greeting through this path.
    ProbeFailed { path: ProbePath, error: String },
    /// A probe timed out while data kept arriving: the line is busy, the path not proven
    /// broken. Changes nothing.
    ProbeBusy { path: ProbePath },
}

/// One replication direction, named by where data flows (also the direction of a seed).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The office DB replicates from the hub (through the local forward).
    HubToOffice,
    /// The hub DB replicates from the office (through the remote forward).
    OfficeToHub,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::HubToOffice, Direction::OfficeToHub];

    /// The key used in the state document.
    pub fn key(self) -> &'static str {
        match self {
            Direction::HubToOffice => "hub_to_office",
            Direction::OfficeToHub => "office_to_hub",
        }
    }

    /// Where the replica (the side applying the changes) is.
    pub fn replica_side(self) -> &'static str {
        match self {
            Direction::HubToOffice => "office",
            Direction::OfficeToHub => "hub",
        }
    }

    /// Where the changes come from.
    pub fn source_side(self) -> &'static str {
        match self {
            Direction::HubToOffice => "hub",
            Direction::OfficeToHub => "office",
        }
    }
}

/// What a replication poller read for one direction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicationStatus {
    /// `None` when the replica has no replication configured.
    pub io_running: Option<bool>,
    pub sql_running: Option<bool>,
    /// True lag from the heartbeat table, whole seconds.
    pub lag_s: Option<u64>,
    /// What the server itself claims; shown, never trusted alone.
    pub seconds_behind_master: Option<u64>,
    pub last_io_errno: u32,
    pub last_io_error: String,
    pub last_sql_errno: u32,
    pub last_sql_error: String,
    /// A sentence for people when this needs one (which table, which key, what to do).
    pub explanation: Option<String>,
}

impl ReplicationStatus {
    /// The error that matters most: SQL errors stop data; IO errors may be the link.
    pub fn last_error(&self) -> (u32, &str) {
        if self.last_sql_errno != 0 {
            (self.last_sql_errno, &self.last_sql_error)
        } else {
            (self.last_io_errno, &self.last_io_error)
        }
    }
}

/// How bad a doctor finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Info,
    Warning,
    NeedsAttention,
}

/// One finding of the doctor: what is wrong and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub code: String,
    pub message: String,
    pub fix: String,
}

/// What the MQTT client reports; informational, it never changes the DB verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MqttEvent {
    Connected,
    Disconnected { reason: String },
}

/// What the seed job (one side's first copy of the other's data: the office's of the
/// hub's, or a new hub's of the office's) reports while it has one, and in which
/// direction it copies: replication in that direction is stopped on purpose until it is
/// done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seeding {
    pub direction: Direction,
    pub report: SeedReport,
}

/// How far a seed is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeedReport {
    /// Copying rows: whole percent once the rows are counted, time left once measured
    /// (already rounded to what people are shown).
    Copying {
        percent: Option<u8>,
        eta: Option<Duration>,
    },
    /// Comparing the copy with its source and repairing what changed during it.
    Verifying,
    /// Stopped; a person must act (the sentence says what).
    Failed(String),
}

/// Everything the health state machine consumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Tunnel(TunnelEvent),
    Replication {
        direction: Direction,
        status: ReplicationStatus,
    },
    /// The poller could not query the replica of this direction.
    ReplicationUnreachable {
        direction: Direction,
        error: String,
    },
    Doctor(Vec<Finding>),
    /// The latest divergence check (CHECKSUM TABLE on both sides): empty when equal.
    Divergence(Vec<Finding>),
    Mqtt(MqttEvent),
    /// The seed job's progress; `None` when there is no seed (or it is done).
    Seed(Option<Seeding>),
}
