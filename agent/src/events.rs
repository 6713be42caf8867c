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
        matches!(self, LinkFault::HostKeyChanged { .. } | LinkFault::LoginRefused(_))
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
    Down { fault: LinkFault, retry_in: Duration },
    /// A probe read the MySQL greeting through this path.
    ProbeOk { path: ProbePath, rtt: Duration },
    /// A probe could not read the MySQL greeting through this path.
    ProbeFailed { path: ProbePath, error: String },
}
