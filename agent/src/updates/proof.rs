//! How a running agent proves itself to its launcher: the tunnel up and a verdict no
//! worse than the one before the update, both held for [`PROOF_HOLD`]. While it waits it
//! reports what it sees (`seen tunnel=<up|down> verdict=<v>`), so a rollback can say what
//! was missing; then `proven <version>` once.

use std::io::Write;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::PROOF_HOLD;
use crate::health::{Health, Verdict};

/// Lower is better.
fn rank(v: Verdict) -> u8 {
    match v {
        Verdict::InSync => 0,
        Verdict::CatchingUp => 1,
        Verdict::LinkDown => 2,
        Verdict::NeedsAttention => 3,
    }
}

/// What the tracker has to say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Seen { tunnel_up: bool, verdict: Verdict },
    Proven,
}

impl Report {
    /// The line for the launcher's pipe.
    pub fn line(&self, version: &str) -> String {
        match self {
            Report::Seen { tunnel_up, verdict } => format!(
                "seen tunnel={} verdict={}\n",
                if *tunnel_up { "up" } else { "down" },
                verdict.as_str()
            ),
            Report::Proven => format!("proven {version}\n"),
        }
    }
}

/// Decides when the proof holds. Pure: time comes in as the monotonic offset.
#[derive(Debug, Clone)]
pub struct ProofTracker {
    baseline: Verdict,
    hold: Duration,
    good_since: Option<Duration>,
    last: Option<(bool, Verdict)>,
    proven: bool,
}

impl ProofTracker {
    /// A trial against `baseline`; without one (a proven version's run), any verdict
    /// with the tunnel up counts.
    pub fn new(baseline: Option<Verdict>, hold: Duration) -> Self {
        ProofTracker {
            baseline: baseline.unwrap_or(Verdict::NeedsAttention),
            hold,
            good_since: None,
            last: None,
            proven: false,
        }
    }

    pub fn proven(&self) -> bool {
        self.proven
    }

    /// Takes the latest tunnel state and verdict at `now`.
    pub fn observe(&mut self, tunnel_up: bool, verdict: Verdict, now: Duration) -> Vec<Report> {
        let mut out = Vec::new();
        if self.proven {
            return out;
        }
        if self.last != Some((tunnel_up, verdict)) {
            self.last = Some((tunnel_up, verdict));
            out.push(Report::Seen { tunnel_up, verdict });
        }
        let good = tunnel_up && rank(verdict) <= rank(self.baseline);
        match (good, self.good_since) {
            (false, _) => self.good_since = None,
            (true, None) => self.good_since = Some(now),
            (true, Some(since)) if now.saturating_sub(since) >= self.hold => {
                self.proven = true;
                out.push(Report::Proven);
            }
            (true, Some(_)) => {}
        }
        out
    }
}

/// Reports to the launcher until proven (or shutdown); `proven` turns true then.
pub async fn report(
    mut pipe: std::fs::File,
    baseline: Option<Verdict>,
    mut health: watch::Receiver<Option<Health>>,
    proven: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let started = tokio::time::Instant::now();
    let mut tracker = ProofTracker::new(baseline, PROOF_HOLD);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let version = crate::version::current();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            r = health.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
        }
        let Some((up, verdict)) = health.borrow().as_ref().map(|h| (h.tunnel.up, h.verdict)) else {
            continue;
        };
        for r in tracker.observe(up, verdict, started.elapsed()) {
            // A launcher that is gone cannot be told; the agent carries on.
            let _ = pipe.write_all(r.line(version).as_bytes());
            if r == Report::Proven {
                tracing::info!("this version proved itself to the launcher");
                proven.send_replace(true);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn proof_needs_the_tunnel_and_the_baseline_verdict_held() {
        let mut t = ProofTracker::new(Some(Verdict::InSync), 10 * S);
        assert_eq!(
            t.observe(false, Verdict::LinkDown, Duration::ZERO),
            vec![Report::Seen {
                tunnel_up: false,
                verdict: Verdict::LinkDown
            }]
        );
        assert_eq!(t.observe(true, Verdict::CatchingUp, 2 * S).len(), 1);
        assert!(t.observe(true, Verdict::CatchingUp, 30 * S).is_empty());
        assert!(!t.proven());
        t.observe(true, Verdict::InSync, 31 * S);
        assert!(t.observe(true, Verdict::InSync, 40 * S).is_empty());
        // A flicker restarts the hold.
        t.observe(true, Verdict::CatchingUp, 40 * S);
        t.observe(true, Verdict::InSync, 41 * S);
        assert!(t.observe(true, Verdict::InSync, 50 * S).is_empty());
        assert_eq!(
            t.observe(true, Verdict::InSync, 51 * S),
            vec![Report::Proven]
        );
        assert!(t.proven());
        assert!(t.observe(false, Verdict::LinkDown, 52 * S).is_empty());
    }

    #[test]
    fn a_worse_baseline_asks_for_less_and_no_trial_asks_for_the_tunnel_only() {
        let mut t = ProofTracker::new(Some(Verdict::CatchingUp), 10 * S);
        t.observe(true, Verdict::CatchingUp, Duration::ZERO);
        assert_eq!(
            t.observe(true, Verdict::InSync, 10 * S),
            vec![
                Report::Seen {
                    tunnel_up: true,
                    verdict: Verdict::InSync
                },
                Report::Proven
            ]
        );
        let mut t = ProofTracker::new(None, 10 * S);
        t.observe(true, Verdict::NeedsAttention, Duration::ZERO);
        assert_eq!(
            t.observe(true, Verdict::NeedsAttention, 10 * S),
            vec![Report::Proven]
        );
        let mut t = ProofTracker::new(None, 10 * S);
        t.observe(false, Verdict::NeedsAttention, Duration::ZERO);
        assert!(t.observe(false, Verdict::NeedsAttention, 60 * S).is_empty());
    }

    #[test]
    fn lines_are_what_the_launcher_reads() {
        let seen = Report::Seen {
            tunnel_up: true,
            verdict: Verdict::CatchingUp,
        }
        .line("1.0.0");
        assert_eq!(
            crate::updates::launcher::Seen::parse(seen.trim()),
            Some(crate::updates::launcher::Seen {
                tunnel_up: true,
                verdict: "catching_up".into()
            })
        );
        assert_eq!(Report::Proven.line("1.0.0"), "proven 1.0.0\n");
    }
}
