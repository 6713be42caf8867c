//! Link outages as they happen: a pure tracker fed with "is the link up" and the time,
//! which hands back each finished outage (start, end, length) for the journal.
//!
//! An outage runs from the moment the link to the hub went down until it is up again.
//! The start of a running agent is not one unless it lasts: the first connection after
//! start counts only past [`STARTUP_GRACE`] (as on the status page's timeline), unless the
//! journal says an outage was already open when the agent stopped, which then continues.
//! Lengths are measured on the monotonic clock within one run, so a wall clock that jumps
//! changes only the moments shown, never the length.

use std::time::{Duration, SystemTime};

use crate::events::Stamp;
use crate::journal::Outage;

/// A starting agent's first connection within this time is not an outage.
pub const STARTUP_GRACE: Duration = Duration::from_secs(30);

/// The outage in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Open {
    /// Monotonic time it began in this run; `None` when it began before this run.
    mono: Option<Duration>,
    /// Wall clock when it began, milliseconds since the Unix epoch.
    wall_ms: u64,
    /// The start of this run, when the outage is this run's first connection (it counts
    /// only past the grace).
    startup: bool,
}

/// The tracker. Owned by the health loop.
#[derive(Debug, Clone)]
pub struct OutageTracker {
    open: Option<Open>,
    /// Monotonic time of this run's start.
    started: Duration,
}

impl OutageTracker {
    /// A tracker for an agent starting at `now` (the link is not up yet); `carried` is the
    /// start of an outage the journal says was open when the agent stopped.
    pub fn new(now: Stamp, carried: Option<u64>) -> Self {
        let open = match carried {
            Some(wall_ms) => Open {
                mono: None,
                wall_ms,
                startup: false,
            },
            None => Open {
                mono: Some(now.mono),
                wall_ms: unix_ms(now.wall),
                startup: true,
            },
        };
        OutageTracker {
            open: Some(open),
            started: now.mono,
        }
    }

    /// The link's state at `now`; returns the outage that just ended, if one did and it
    /// counts.
    pub fn observe(&mut self, link_up: bool, now: Stamp) -> Option<Outage> {
        match (link_up, self.open) {
            (false, None) => {
                self.open = Some(Open {
                    mono: Some(now.mono),
                    wall_ms: unix_ms(now.wall),
                    startup: false,
                });
                None
            }
            (true, Some(open)) => {
                self.open = None;
                let counts = !open.startup || self.past_grace(now);
                counts.then(|| finished(open, now, self.started))
            }
            _ => None,
        }
    }

    /// When the outage in progress began (milliseconds since the Unix epoch), once it
    /// counts as one: what the journal keeps so that a restart continues it.
    pub fn open_since_unix_ms(&self, now: Stamp) -> Option<u64> {
        let open = self.open?;
        (!open.startup || self.past_grace(now)).then_some(open.wall_ms)
    }

    fn past_grace(&self, now: Stamp) -> bool {
        now.mono.saturating_sub(self.started) >= STARTUP_GRACE
    }
}

/// The finished outage: its length from the monotonic clock when it began in this run;
/// when it began before, from the wall clock (the only clock that spans a restart), but
/// never less than this run's part of it.
fn finished(open: Open, now: Stamp, started: Duration) -> Outage {
    let end_ms = unix_ms(now.wall);
    let length_ms = match open.mono {
        Some(mono) => millis(now.mono.saturating_sub(mono)),
        None => end_ms
            .saturating_sub(open.wall_ms)
            .max(millis(now.mono.saturating_sub(started))),
    };
    Outage {
        start_unix_ms: open.wall_ms,
        end_unix_ms: end_ms,
        length_ms,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since the Unix epoch (0 for a clock before it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPOCH_S: u64 = 1_800_000_000;

    fn at(s: u64) -> Stamp {
        Stamp {
            mono: Duration::from_secs(s),
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH_S + s),
        }
    }

    fn outage(from: u64, to: u64) -> Outage {
        Outage {
            start_unix_ms: (EPOCH_S + from) * 1000,
            end_unix_ms: (EPOCH_S + to) * 1000,
            length_ms: (to - from) * 1000,
        }
    }

    #[test]
    fn a_cut_and_a_heal_make_one_outage() {
        let mut t = OutageTracker::new(at(0), None);
        assert_eq!(t.observe(true, at(2)), None, "a quick first connection");
        assert_eq!(t.observe(true, at(10)), None);
        assert_eq!(t.open_since_unix_ms(at(10)), None);
        assert_eq!(t.observe(false, at(100)), None);
        assert_eq!(t.observe(false, at(101)), None, "still the same outage");
        assert_eq!(t.open_since_unix_ms(at(101)), Some((EPOCH_S + 100) * 1000));
        assert_eq!(t.observe(true, at(160)), Some(outage(100, 160)));
        assert_eq!(t.observe(true, at(161)), None);
    }

    #[test]
    fn a_slow_start_counts_only_past_the_grace() {
        let mut t = OutageTracker::new(at(0), None);
        assert_eq!(t.open_since_unix_ms(at(29)), None);
        assert_eq!(t.observe(true, at(29)), None);
        let mut t = OutageTracker::new(at(0), None);
        assert_eq!(t.open_since_unix_ms(at(30)), Some(EPOCH_S * 1000));
        assert_eq!(t.observe(true, at(45)), Some(outage(0, 45)));
    }

    #[test]
    fn an_outage_open_at_a_restart_continues() {
        // The agent stopped 10 minutes into an outage and came back 50 minutes later.
        let began = (EPOCH_S - 3600) * 1000;
        let mut t = OutageTracker::new(at(0), Some(began));
        assert_eq!(t.open_since_unix_ms(at(1)), Some(began), "kept at once");
        let o = t
            .observe(true, at(5))
            .expect("counts although short in this run");
        assert_eq!((o.start_unix_ms, o.length_ms), (began, 3605 * 1000));
    }

    #[test]
    fn the_length_ignores_a_wall_clock_jump() {
        let mut t = OutageTracker::new(at(0), None);
        t.observe(true, at(1));
        t.observe(false, at(100));
        let jumped = Stamp {
            mono: Duration::from_secs(160),
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH_S - 86_400),
        };
        let o = t.observe(true, jumped).unwrap();
        assert_eq!(o.length_ms, 60_000);
        // Carried over a restart with the clock set back: at least this run's part.
        let mut t = OutageTracker::new(at(0), Some((EPOCH_S + 7200) * 1000));
        assert_eq!(t.observe(true, at(40)).unwrap().length_ms, 40_000);
    }
}
