//! The tunnel supervisor's decisions as a pure, synchronous state machine.
//!
//! [`TunnelMachine`] is fed what happened ([`Input`]: an attempt logged in or failed, the
//! session ended, a timer came due, a long press, shutdown) with the time, and answers
//! with what to do ([`Action`]: start or cut an attempt, use a session, emit a
//! [`TunnelEvent`], log a line, close the session, stop) and when to wake it next
//! ([`TunnelMachine::wake_at`]). The loop in `mod.rs` performs the actions and owns every
//! socket and task; nothing here waits, reads a clock or touches the network.
//!
//! Invariants: while no racing attempt has heard from the hub, a fresh one starts every
//! `stagger`, at most [`MAX_RACING`] at once (the oldest silent one is cut for it); the
//! first to log in wins and every other is cut; a fault a person must fix ends the race at
//! once and backs off on the long policy, any other fault on the short one (and forgets
//! the long one); a session that lived `stable_after` forgets both; an outage logs its
//! first failure, a changed cause and a reminder a minute at warn, the rest at debug; a
//! long press drops a live session or ends a wait, and leaves a race alone (the session it
//! brings is the one asked for); shutdown is honoured in every phase.

use std::collections::VecDeque;
use std::mem::Discriminant;
use std::time::Duration;

use tokio::time::Instant;

use super::{TunnelCommand, TunnelSettings, meter};
use crate::backoff::{Backoff, BackoffPolicy};
use crate::events::{LinkFault, TunnelEvent};

/// Names one connection attempt; the session that wins a race keeps its attempt's id.
pub(crate) type AttemptId = u64;

/// Attempts that may be under way at once while the hub stays silent.
pub(crate) const MAX_RACING: usize = 3;
/// During an outage, how often a failed attempt with an unchanged cause is logged.
pub(crate) const DOWN_LOG_EVERY: Duration = Duration::from_secs(60);
/// How often a live session's receive watchdog looks at the socket.
pub(crate) const WATCHDOG_EVERY: Duration = Duration::from_millis(500);
/// What a session that died (or was dropped) gets to say goodbye before its socket is cut.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_millis(200);
/// The same at shutdown, which must end the agent within about 1.5 s.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// The timings the machine decides with (from [`TunnelSettings`]).
#[derive(Debug, Clone)]
pub(crate) struct Timings {
    /// While no attempt has heard from the hub, a fresh one starts this often
    /// (`reconnect_max`): a SYN or banner lost on a dead line costs at most this.
    pub stagger: Duration,
    /// A race that has not logged in after this long ends with its last fault
    /// (`handshake_timeout`).
    pub race_for: Duration,
    /// Backoff for network faults.
    pub network: BackoffPolicy,
    /// Backoff for faults a person must fix.
    pub person: BackoffPolicy,
    /// A session that lived this long forgets both backoffs.
    pub stable_after: Duration,
    pub probe_every: Duration,
    /// A live session that received nothing for longer than this is dead.
    pub silence_limit: Duration,
}

impl Timings {
    pub(crate) fn of(settings: &TunnelSettings) -> Self {
        Timings {
            stagger: settings.reconnect.max,
            race_for: settings.handshake_timeout,
            network: settings.reconnect,
            person: settings.login,
            stable_after: settings.stable_after,
            probe_every: settings.probe_interval,
            silence_limit: meter::silence_limit(
                settings.keepalive_interval,
                settings.keepalive_max,
            ),
        }
    }
}

/// What happened, as the loop around the machine saw it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Input {
    /// The time [`TunnelMachine::wake_at`] asked for has come. `heard` lists the racing
    /// attempts whose socket has received a byte from the hub; `last_rx` is when the live
    /// session's socket last received one.
    Timer {
        heard: Vec<AttemptId>,
        last_rx: Option<Instant>,
    },
    /// An attempt gave up (a panicked attempt counts as [`LinkFault::Other`]).
    AttemptFailed {
        id: AttemptId,
        fault: LinkFault,
    },
    /// An attempt completed login; its session waits for [`Action::UseSession`] or
    /// [`Action::CutAttempt`].
    LoggedIn {
        id: AttemptId,
    },
    /// The hub answered the request for the remote forward.
    RemoteForward(Result<(), LinkFault>),
    /// The live session ended on its own, for this reason.
    SessionEnded(LinkFault),
    /// [`Action::CloseSession`] is done.
    SessionClosed,
    /// A probe of the session `session` has a result.
    Probe {
        session: AttemptId,
        event: TunnelEvent,
    },
    /// The probes of the session `session` are over.
    ProbesDone {
        session: AttemptId,
    },
    Command(TunnelCommand),
    Shutdown,
}

/// What the loop must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Report to health.
    Emit(TunnelEvent),
    Log(Line),
    /// Start connecting and logging in, under this id.
    StartAttempt(AttemptId),
    /// Abandon this attempt and cut its socket, whatever it got to (a session that
    /// logged in too is cut).
    CutAttempt(AttemptId),
    /// This attempt's session is the live one: publish it for the local forward.
    UseSession(AttemptId),
    /// Ask the hub to listen for the remote forward; answer with
    /// [`Input::RemoteForward`].
    RequestRemoteForward,
    /// Probe both forwarded paths of the live session; report with [`Input::Probe`] and
    /// [`Input::ProbesDone`].
    StartProbes,
    /// Unpublish the live session, say goodbye within `grace`, cut its socket, then
    /// answer with [`Input::SessionClosed`].
    CloseSession {
        grace: Duration,
    },
    /// The supervisor is done.
    Stop,
}

/// A log line the machine asks for (the loop adds the hub's address where it belongs).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Line {
    /// Warn: the first failure of an outage, a changed cause, or the minute's reminder;
    /// `quiet_attempts` failed at debug level since the last such line.
    Down {
        fault: LinkFault,
        retry_in: Duration,
        quiet_attempts: u32,
    },
    /// Debug: another failure like the one last logged.
    StillDown {
        fault: LinkFault,
        retry_in: Duration,
    },
    /// Info.
    SessionUp,
    /// Info.
    RemoteForwardUp,
    /// Debug: a long press while connecting is already what it asks for.
    AlreadyConnecting,
}

/// The supervisor's state; owns no socket.
pub(crate) struct TunnelMachine {
    timings: Timings,
    /// A number in `[0, 1)` for each backoff's jitter.
    jitter: Box<dyn FnMut() -> f64 + Send>,
    phase: Phase,
    network: Backoff,
    person: Backoff,
    next_id: AttemptId,
    /// Rounds of attempts since the last session: `TunnelEvent::Connecting`'s `attempt`.
    rounds: u32,
    outage_log: OutageLog,
}

enum Phase {
    /// Before [`TunnelMachine::start`].
    Idle,
    Connecting(Race),
    Serving(Live),
    /// The live session is being closed; then `fault` is reported.
    Closing {
        fault: LinkFault,
        since: Instant,
    },
    /// Backing off until `until`.
    Waiting {
        until: Instant,
    },
    Stopped,
}

/// One round of racing attempts.
struct Race {
    deadline: Instant,
    next_stagger: Instant,
    /// Oldest first.
    racers: VecDeque<Racer>,
    /// The fault the round ends with if nothing better comes.
    last: LinkFault,
}

struct Racer {
    id: AttemptId,
    heard: bool,
}

/// The logged-in session.
struct Live {
    id: AttemptId,
    since: Instant,
    forward: RemoteForward,
    /// Refusals of the remote forward (a stale listener on the hub) retry on this.
    forward_backoff: Backoff,
    probing: bool,
    next_probe: Instant,
    next_watchdog: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RemoteForward {
    Requested,
    RetryAt(Instant),
    Up,
}

/// An outage of hours is a few log lines: the first failure, a changed cause, a reminder a
/// minute; the attempts between go to the debug level.
#[derive(Default)]
struct OutageLog {
    /// The kind of fault last logged at warn level, and when.
    last_warned: Option<(Discriminant<LinkFault>, Instant)>,
    /// Failures logged at debug level since that line.
    quiet: u32,
}

impl OutageLog {
    fn line(&mut self, fault: LinkFault, retry_in: Duration, now: Instant) -> Line {
        let kind = std::mem::discriminant(&fault);
        let warn = self.last_warned.is_none_or(|(last, at)| {
            last != kind || now.saturating_duration_since(at) >= DOWN_LOG_EVERY
        });
        if warn {
            let quiet_attempts = std::mem::take(&mut self.quiet);
            self.last_warned = Some((kind, now));
            Line::Down {
                fault,
                retry_in,
                quiet_attempts,
            }
        } else {
            self.quiet += 1;
            Line::StillDown { fault, retry_in }
        }
    }
}

impl TunnelMachine {
    pub(crate) fn new(timings: Timings, jitter: Box<dyn FnMut() -> f64 + Send>) -> Self {
        TunnelMachine {
            network: Backoff::new(timings.network),
            person: Backoff::new(timings.person),
            timings,
            jitter,
            phase: Phase::Idle,
            next_id: 0,
            rounds: 0,
            outage_log: OutageLog::default(),
        }
    }

    /// The first round of attempts.
    pub(crate) fn start(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if matches!(self.phase, Phase::Idle) {
            self.start_round(now, &mut out);
        }
        out
    }

    /// When the loop must feed [`Input::Timer`], if anything is timed.
    pub(crate) fn wake_at(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Connecting(race) => Some(race.next_stagger.min(race.deadline)),
            Phase::Serving(live) => {
                let mut at = live.next_watchdog;
                match live.forward {
                    RemoteForward::RetryAt(retry) => at = at.min(retry),
                    RemoteForward::Up if !live.probing => at = at.min(live.next_probe),
                    RemoteForward::Up | RemoteForward::Requested => {}
                }
                Some(at)
            }
            Phase::Waiting { until } => Some(*until),
            Phase::Idle | Phase::Closing { .. } | Phase::Stopped => None,
        }
    }

    pub(crate) fn handle(&mut self, input: Input, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Timer { heard, last_rx } => self.on_timer(&heard, last_rx, now, &mut out),
            Input::AttemptFailed { id, fault } => self.on_attempt_failed(id, fault, now, &mut out),
            Input::LoggedIn { id } => self.on_logged_in(id, now, &mut out),
            Input::RemoteForward(res) => self.on_remote_forward(res, now, &mut out),
            Input::SessionEnded(fault) => self.end_session(fault, &mut out),
            Input::SessionClosed => {
                // After shutdown nothing follows the close.
                if let Phase::Closing { fault, since } = &self.phase {
                    let (fault, lived) = (fault.clone(), now.saturating_duration_since(*since));
                    if lived >= self.timings.stable_after {
                        self.network.reset();
                        self.person.reset();
                    }
                    self.down(fault, now, &mut out);
                }
            }
            Input::Probe { session, event } => {
                if self.live_id() == Some(session) {
                    out.push(Action::Emit(event));
                }
            }
            Input::ProbesDone { session } => {
                if let Phase::Serving(live) = &mut self.phase
                    && live.id == session
                {
                    live.probing = false;
                }
            }
            Input::Command(TunnelCommand::Reconnect) => self.on_reconnect(now, &mut out),
            Input::Shutdown => self.on_shutdown(&mut out),
        }
        out
    }

    fn live_id(&self) -> Option<AttemptId> {
        match &self.phase {
            Phase::Serving(live) => Some(live.id),
            _ => None,
        }
    }

    fn fresh_id(next_id: &mut AttemptId) -> AttemptId {
        *next_id += 1;
        *next_id
    }

    fn start_round(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.rounds += 1;
        out.push(Action::Emit(TunnelEvent::Connecting {
            attempt: self.rounds,
        }));
        let id = Self::fresh_id(&mut self.next_id);
        out.push(Action::StartAttempt(id));
        self.phase = Phase::Connecting(Race {
            deadline: now + self.timings.race_for,
            next_stagger: now + self.stagger(),
            racers: VecDeque::from([Racer { id, heard: false }]),
            last: LinkFault::Silent {
                after: self.timings.race_for,
            },
        });
    }

    /// Never zero, so the race's clock always moves.
    fn stagger(&self) -> Duration {
        self.timings.stagger.max(Duration::from_millis(1))
    }

    fn on_timer(
        &mut self,
        heard: &[AttemptId],
        last_rx: Option<Instant>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let stagger = self.stagger();
        match &mut self.phase {
            Phase::Connecting(race) => {
                for racer in &mut race.racers {
                    racer.heard |= heard.contains(&racer.id);
                }
                if now >= race.deadline {
                    let fault = race.last.clone();
                    self.end_race(fault, now, out);
                    return;
                }
                if now < race.next_stagger {
                    return;
                }
                while race.next_stagger <= now {
                    race.next_stagger += stagger;
                }
                if race.racers.iter().any(|r| r.heard) {
                    // The hub is talking to one of them: let it finish.
                    return;
                }
                if race.racers.len() >= MAX_RACING
                    && let Some(oldest) = race.racers.pop_front()
                {
                    out.push(Action::CutAttempt(oldest.id));
                }
                let id = Self::fresh_id(&mut self.next_id);
                race.racers.push_back(Racer { id, heard: false });
                out.push(Action::StartAttempt(id));
            }
            Phase::Serving(live) => {
                if now >= live.next_watchdog {
                    live.next_watchdog = now + WATCHDOG_EVERY;
                    // Beyond russh's own keepalive limit: the session task itself is stuck
                    // (blocked writing into a dead link).
                    if let Some(last_rx) = last_rx {
                        let silent = now.saturating_duration_since(last_rx);
                        if silent > self.timings.silence_limit {
                            self.end_session(LinkFault::Silent { after: silent }, out);
                            return;
                        }
                    }
                }
                if let RemoteForward::RetryAt(at) = live.forward
                    && now >= at
                {
                    live.forward = RemoteForward::Requested;
                    out.push(Action::RequestRemoteForward);
                }
                if live.forward == RemoteForward::Up && !live.probing && now >= live.next_probe {
                    live.probing = true;
                    live.next_probe = now + self.timings.probe_every;
                    out.push(Action::StartProbes);
                }
            }
            Phase::Waiting { until } => {
                if now >= *until {
                    self.start_round(now, out);
                }
            }
            Phase::Idle | Phase::Closing { .. } | Phase::Stopped => {}
        }
    }

    fn on_attempt_failed(
        &mut self,
        id: AttemptId,
        fault: LinkFault,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Phase::Connecting(race) = &mut self.phase else {
            return;
        };
        let Some(at) = race.racers.iter().position(|r| r.id == id) else {
            // An attempt already cut: its last word changes nothing.
            return;
        };
        race.racers.remove(at);
        if fault.needs_person() {
            self.end_race(fault, now, out);
            return;
        }
        race.last = fault;
        if race.racers.is_empty() {
            let fault = race.last.clone();
            self.end_race(fault, now, out);
        }
    }

    fn on_logged_in(&mut self, id: AttemptId, now: Instant, out: &mut Vec<Action>) {
        let won = match &mut self.phase {
            Phase::Connecting(race) if race.racers.iter().any(|r| r.id == id) => {
                // A second winner at the same moment must not linger.
                out.extend(
                    race.racers
                        .drain(..)
                        .filter(|r| r.id != id)
                        .map(|r| Action::CutAttempt(r.id)),
                );
                true
            }
            _ => false,
        };
        if !won {
            out.push(Action::CutAttempt(id));
            return;
        }
        self.rounds = 0;
        self.outage_log = OutageLog::default();
        self.phase = Phase::Serving(Live {
            id,
            since: now,
            forward: RemoteForward::Requested,
            forward_backoff: Backoff::new(self.timings.network),
            probing: false,
            // The first probe goes as soon as the remote forward is up.
            next_probe: now,
            next_watchdog: now + WATCHDOG_EVERY,
        });
        out.extend([
            Action::UseSession(id),
            Action::Log(Line::SessionUp),
            Action::RequestRemoteForward,
        ]);
    }

    fn on_remote_forward(
        &mut self,
        res: Result<(), LinkFault>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Phase::Serving(live) = &mut self.phase else {
            return;
        };
        if live.forward != RemoteForward::Requested {
            return;
        }
        match res {
            Ok(()) => {
                live.forward = RemoteForward::Up;
                out.push(Action::Log(Line::RemoteForwardUp));
                out.push(Action::Emit(TunnelEvent::Up));
            }
            // A stale session of ours may still hold the port on the hub: the session
            // stays, the request is retried.
            Err(fault @ LinkFault::RemoteForwardRefused { .. }) => {
                let retry_in = live.forward_backoff.next_delay((self.jitter)());
                live.forward = RemoteForward::RetryAt(now + retry_in);
                out.push(Action::Emit(TunnelEvent::Down { fault, retry_in }));
            }
            Err(fault) => self.end_session(fault, out),
        }
    }

    fn on_reconnect(&mut self, now: Instant, out: &mut Vec<Action>) {
        match self.phase {
            Phase::Serving(_) => {
                self.end_session(LinkFault::Other("reconnect requested".into()), out);
            }
            Phase::Waiting { .. } => self.start_round(now, out),
            // Connecting already is what the request asks for; a session about to come up
            // must not be dropped for it.
            Phase::Connecting(_) => out.push(Action::Log(Line::AlreadyConnecting)),
            // A new round follows the close on its own.
            Phase::Idle | Phase::Closing { .. } | Phase::Stopped => {}
        }
    }

    fn on_shutdown(&mut self, out: &mut Vec<Action>) {
        match std::mem::replace(&mut self.phase, Phase::Stopped) {
            Phase::Connecting(race) => {
                out.extend(race.racers.iter().map(|r| Action::CutAttempt(r.id)));
            }
            Phase::Serving(_) => out.push(Action::CloseSession {
                grace: SHUTDOWN_GRACE,
            }),
            Phase::Idle | Phase::Closing { .. } | Phase::Waiting { .. } | Phase::Stopped => {}
        }
        out.push(Action::Stop);
    }

    /// The round is over without a session: cut what still runs and back off.
    fn end_race(&mut self, fault: LinkFault, now: Instant, out: &mut Vec<Action>) {
        if let Phase::Connecting(race) = &mut self.phase {
            out.extend(race.racers.drain(..).map(|r| Action::CutAttempt(r.id)));
        }
        self.down(fault, now, out);
    }

    /// The live session is over: close it, then report `fault` (on [`Input::SessionClosed`]).
    fn end_session(&mut self, fault: LinkFault, out: &mut Vec<Action>) {
        let Phase::Serving(live) = &self.phase else {
            return;
        };
        let since = live.since;
        self.phase = Phase::Closing { fault, since };
        out.push(Action::CloseSession { grace: CLOSE_GRACE });
    }

    /// Reports the link down and backs off: long for a fault a person must fix, short
    /// (and forgetting the long one) for any other.
    fn down(&mut self, fault: LinkFault, now: Instant, out: &mut Vec<Action>) {
        let retry_in = if fault.needs_person() {
            self.person.next_delay((self.jitter)())
        } else {
            self.person.reset();
            self.network.next_delay((self.jitter)())
        };
        out.push(Action::Log(self.outage_log.line(
            fault.clone(),
            retry_in,
            now,
        )));
        out.push(Action::Emit(TunnelEvent::Down { fault, retry_in }));
        self.phase = Phase::Waiting {
            until: now + retry_in,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::ProbePath;

    const STAGGER: Duration = Duration::from_millis(500);
    const RACE_FOR: Duration = Duration::from_secs(15);

    fn timings() -> Timings {
        Timings {
            stagger: STAGGER,
            race_for: RACE_FOR,
            network: BackoffPolicy {
                min: Duration::from_millis(250),
                max: Duration::from_millis(500),
                jitter_pct: 30,
            },
            person: BackoffPolicy {
                min: Duration::from_secs(60),
                max: Duration::from_secs(30 * 60),
                jitter_pct: 30,
            },
            stable_after: Duration::from_secs(30),
            probe_every: Duration::from_secs(5),
            silence_limit: Duration::from_secs(10),
        }
    }

    /// A machine with no jitter, started at `t0`; the clock moves only when a test moves it.
    struct Rig {
        m: TunnelMachine,
        now: Instant,
        actions: Vec<Action>,
    }

    impl Rig {
        fn new() -> Self {
            let now = Instant::now();
            let mut m = TunnelMachine::new(timings(), Box::new(|| 0.0));
            let actions = m.start(now);
            Rig { m, now, actions }
        }

        fn feed(&mut self, input: Input) -> Vec<Action> {
            self.actions = self.m.handle(input, self.now);
            self.actions.clone()
        }

        /// Moves the clock to the next wake-up and feeds the timer.
        fn wake(&mut self, heard: &[AttemptId], last_rx: Option<Instant>) -> Vec<Action> {
            let at = self.m.wake_at().expect("something is timed");
            assert!(at >= self.now, "wake-up in the past");
            self.now = at;
            self.feed(Input::Timer {
                heard: heard.to_vec(),
                last_rx,
            })
        }

        fn advance(&mut self, by: Duration) {
            self.now += by;
        }

        /// From a fresh start to a live session with the remote forward up.
        fn up() -> (Self, AttemptId) {
            let mut rig = Rig::new();
            let id = started(&rig.actions)[0];
            rig.feed(Input::LoggedIn { id });
            rig.feed(Input::RemoteForward(Ok(())));
            (rig, id)
        }

        /// Ends the live session with `fault` and closes it; returns what followed.
        fn session_ends(&mut self, fault: LinkFault) -> Vec<Action> {
            assert_eq!(
                self.feed(Input::SessionEnded(fault)),
                vec![Action::CloseSession { grace: CLOSE_GRACE }]
            );
            self.feed(Input::SessionClosed)
        }
    }

    fn started(actions: &[Action]) -> Vec<AttemptId> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::StartAttempt(id) => Some(*id),
                _ => None,
            })
            .collect()
    }

    fn cut(actions: &[Action]) -> Vec<AttemptId> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::CutAttempt(id) => Some(*id),
                _ => None,
            })
            .collect()
    }

    fn down_of(actions: &[Action]) -> Option<(LinkFault, Duration)> {
        actions.iter().find_map(|a| match a {
            Action::Emit(TunnelEvent::Down { fault, retry_in }) => Some((fault.clone(), *retry_in)),
            _ => None,
        })
    }

    fn line_of(actions: &[Action]) -> Option<Line> {
        actions.iter().find_map(|a| match a {
            Action::Log(line) => Some(line.clone()),
            _ => None,
        })
    }

    fn unreachable() -> LinkFault {
        LinkFault::Unreachable("cannot connect to hub:22: refused".into())
    }

    fn refused() -> LinkFault {
        LinkFault::LoginRefused("the hub refused the device key".into())
    }

    #[test]
    fn the_first_round_reports_connecting_and_starts_one_attempt() {
        let rig = Rig::new();
        assert_eq!(
            rig.actions,
            vec![
                Action::Emit(TunnelEvent::Connecting { attempt: 1 }),
                Action::StartAttempt(1)
            ]
        );
        assert_eq!(rig.m.wake_at(), Some(rig.now + STAGGER));
    }

    #[test]
    fn while_the_hub_is_silent_a_fresh_attempt_starts_each_stagger_at_most_three_at_once() {
        let mut rig = Rig::new();
        let t0 = rig.now;
        let mut running = started(&rig.actions);
        for tick in 1..=6u32 {
            let actions = rig.wake(&[], None);
            assert_eq!(rig.now, t0 + STAGGER * tick);
            let new = started(&actions);
            assert_eq!(new.len(), 1, "tick {tick}: {actions:?}");
            for gone in cut(&actions) {
                assert_eq!(
                    gone,
                    running.remove(0),
                    "the oldest silent attempt gives way"
                );
            }
            running.extend(new);
            assert!(running.len() <= MAX_RACING, "tick {tick}: {running:?}");
        }
        assert_eq!(running, vec![5, 6, 7]);
    }

    #[test]
    fn an_attempt_the_hub_talks_to_is_left_to_finish() {
        let mut rig = Rig::new();
        let first = started(&rig.actions)[0];
        let actions = rig.wake(&[first], None);
        assert!(
            started(&actions).is_empty() && cut(&actions).is_empty(),
            "{actions:?}"
        );
        // Heard once is heard for good, even if a later reading does not list it.
        let actions = rig.wake(&[], None);
        assert!(started(&actions).is_empty(), "{actions:?}");
    }

    #[test]
    fn the_first_to_log_in_wins_and_the_others_are_cut() {
        let mut rig = Rig::new();
        rig.wake(&[], None);
        rig.wake(&[], None);
        let actions = rig.feed(Input::LoggedIn { id: 2 });
        assert_eq!(
            actions,
            vec![
                Action::CutAttempt(1),
                Action::CutAttempt(3),
                Action::UseSession(2),
                Action::Log(Line::SessionUp),
                Action::RequestRemoteForward,
            ]
        );
        // A loser that logged in at the same moment is cut, not used.
        assert_eq!(
            rig.feed(Input::LoggedIn { id: 3 }),
            vec![Action::CutAttempt(3)]
        );
        // A cut attempt's failure changes nothing.
        assert_eq!(
            rig.feed(Input::AttemptFailed {
                id: 1,
                fault: unreachable()
            }),
            vec![]
        );
    }

    #[test]
    fn a_race_ends_with_its_last_fault_when_no_attempt_is_left() {
        let mut rig = Rig::new();
        rig.wake(&[], None);
        let reset = LinkFault::Reset("connection reset".into());
        assert_eq!(
            rig.feed(Input::AttemptFailed {
                id: 1,
                fault: reset.clone()
            }),
            vec![]
        );
        let actions = rig.feed(Input::AttemptFailed {
            id: 2,
            fault: unreachable(),
        });
        assert_eq!(
            down_of(&actions),
            Some((unreachable(), Duration::from_millis(250)))
        );
        assert_eq!(rig.m.wake_at(), Some(rig.now + Duration::from_millis(250)));
    }

    #[test]
    fn a_race_that_never_hears_ends_silent_at_the_handshake_timeout_cutting_all() {
        let mut rig = Rig::new();
        let t0 = rig.now;
        let mut actions = Vec::new();
        while down_of(&actions).is_none() {
            actions = rig.wake(&[], None);
        }
        assert_eq!(rig.now, t0 + RACE_FOR);
        // The attempts cut on the way give no reason: the round ends silent.
        assert_eq!(
            down_of(&actions).unwrap().0,
            LinkFault::Silent { after: RACE_FOR }
        );
        assert_eq!(cut(&actions).len(), MAX_RACING, "{actions:?}");
    }

    #[test]
    fn a_fault_a_person_must_fix_ends_the_race_at_once_and_backs_off_long() {
        let mut rig = Rig::new();
        rig.wake(&[], None);
        let actions = rig.feed(Input::AttemptFailed {
            id: 2,
            fault: refused(),
        });
        assert_eq!(cut(&actions), vec![1]);
        assert_eq!(
            down_of(&actions),
            Some((refused(), Duration::from_secs(60)))
        );
        // It keeps growing while the person has not acted ...
        rig.wake(&[], None);
        let actions = rig.feed(Input::AttemptFailed {
            id: 3,
            fault: refused(),
        });
        assert_eq!(down_of(&actions).unwrap().1, Duration::from_secs(120));
        // ... and a network fault in between starts it over.
        rig.wake(&[], None);
        let actions = rig.feed(Input::AttemptFailed {
            id: 4,
            fault: unreachable(),
        });
        assert_eq!(down_of(&actions).unwrap().1, Duration::from_millis(250));
        rig.wake(&[], None);
        let actions = rig.feed(Input::AttemptFailed {
            id: 5,
            fault: refused(),
        });
        assert_eq!(down_of(&actions).unwrap().1, Duration::from_secs(60));
    }

    #[test]
    fn network_backoff_grows_and_resets_only_after_a_stable_session() {
        let mut rig = Rig::new();
        let first = rig.feed(Input::AttemptFailed {
            id: 1,
            fault: unreachable(),
        });
        assert_eq!(down_of(&first).unwrap().1, Duration::from_millis(250));
        rig.wake(&[], None);
        let second = rig.feed(Input::AttemptFailed {
            id: 2,
            fault: unreachable(),
        });
        assert_eq!(down_of(&second).unwrap().1, Duration::from_millis(500));
        // A short-lived session keeps the backoff where it was.
        rig.wake(&[], None);
        rig.feed(Input::LoggedIn { id: 3 });
        rig.advance(Duration::from_secs(29));
        let after_short = rig.session_ends(LinkFault::Reset("reset".into()));
        assert_eq!(down_of(&after_short).unwrap().1, Duration::from_millis(500));
        // One that lived `stable_after` starts it over.
        rig.wake(&[], None);
        rig.feed(Input::LoggedIn { id: 4 });
        rig.advance(Duration::from_secs(30));
        let after_stable = rig.session_ends(LinkFault::Reset("reset".into()));
        assert_eq!(
            down_of(&after_stable).unwrap().1,
            Duration::from_millis(250)
        );
    }

    #[test]
    fn connecting_counts_rounds_within_an_outage_and_restarts_after_a_session() {
        let mut rig = Rig::new();
        let mut attempts = Vec::new();
        for id in 1..=3 {
            rig.feed(Input::AttemptFailed {
                id,
                fault: unreachable(),
            });
            let actions = rig.wake(&[], None);
            attempts.extend(actions.iter().filter_map(|a| match a {
                Action::Emit(TunnelEvent::Connecting { attempt }) => Some(*attempt),
                _ => None,
            }));
        }
        assert_eq!(attempts, vec![2, 3, 4]);
        rig.feed(Input::LoggedIn { id: 4 });
        rig.session_ends(LinkFault::Reset("reset".into()));
        let actions = rig.wake(&[], None);
        assert_eq!(
            actions[0],
            Action::Emit(TunnelEvent::Connecting { attempt: 1 })
        );
    }

    #[test]
    fn an_outage_logs_its_first_failure_a_changed_cause_and_a_line_a_minute() {
        let mut rig = Rig::new();
        let mut warned = Vec::new();
        let mut id = 1;
        let mut fail = |rig: &mut Rig, fault: LinkFault| {
            let actions = rig.feed(Input::AttemptFailed { id, fault });
            id += 1;
            let line = line_of(&actions).unwrap();
            rig.wake(&[], None);
            line
        };
        let start = rig.now;
        // 65 s of the same fault: a line at the start and one a minute later.
        while rig.now < start + Duration::from_secs(65) {
            if let Line::Down { quiet_attempts, .. } = fail(&mut rig, unreachable()) {
                warned.push((rig.now - start, quiet_attempts));
            }
        }
        assert_eq!(warned.len(), 2, "{warned:?}");
        assert!(warned[1].0 >= DOWN_LOG_EVERY, "{warned:?}");
        assert!(
            warned[1].1 > 100,
            "the quiet attempts are counted: {warned:?}"
        );
        // A changed cause is a line at once, and so is the change back.
        assert!(matches!(
            fail(&mut rig, LinkFault::Silent { after: RACE_FOR }),
            Line::Down { .. }
        ));
        assert!(matches!(fail(&mut rig, unreachable()), Line::Down { .. }));
        assert!(matches!(
            fail(&mut rig, unreachable()),
            Line::StillDown { .. }
        ));
    }

    #[test]
    fn a_session_in_between_starts_the_outage_log_over() {
        let mut rig = Rig::new();
        rig.feed(Input::AttemptFailed {
            id: 1,
            fault: unreachable(),
        });
        rig.wake(&[], None);
        rig.feed(Input::LoggedIn { id: 2 });
        let actions = rig.session_ends(unreachable());
        assert!(
            matches!(line_of(&actions), Some(Line::Down { .. })),
            "{actions:?}"
        );
    }

    #[test]
    fn the_remote_forward_up_is_the_tunnel_up_and_starts_the_probes() {
        let mut rig = Rig::new();
        rig.feed(Input::LoggedIn { id: 1 });
        assert_eq!(
            rig.feed(Input::RemoteForward(Ok(()))),
            vec![
                Action::Log(Line::RemoteForwardUp),
                Action::Emit(TunnelEvent::Up)
            ]
        );
        assert_eq!(rig.wake(&[], Some(rig.now)), vec![Action::StartProbes]);
        // Results of this session go to health; no second probe while one runs.
        let ok = TunnelEvent::ProbeOk {
            path: ProbePath::HubDbThroughLocalForward,
            rtt: Duration::from_millis(3),
        };
        assert_eq!(
            rig.feed(Input::Probe {
                session: 1,
                event: ok.clone()
            }),
            vec![Action::Emit(ok.clone())]
        );
        rig.advance(Duration::from_secs(6));
        let actions = rig.feed(Input::Timer {
            heard: vec![],
            last_rx: Some(rig.now),
        });
        assert_eq!(actions, vec![], "a probe while one runs");
        rig.feed(Input::ProbesDone { session: 1 });
        let actions = rig.feed(Input::Timer {
            heard: vec![],
            last_rx: Some(rig.now),
        });
        assert_eq!(actions, vec![Action::StartProbes]);
        rig.feed(Input::ProbesDone { session: 1 });
        assert_eq!(rig.m.wake_at(), Some(rig.now + WATCHDOG_EVERY));
        // A late result of an earlier session is dropped.
        assert_eq!(
            rig.feed(Input::Probe {
                session: 7,
                event: ok
            }),
            vec![]
        );
    }

    #[test]
    fn a_refused_remote_forward_keeps_the_session_and_retries_on_the_short_backoff() {
        let mut rig = Rig::new();
        rig.feed(Input::LoggedIn { id: 1 });
        let stale = LinkFault::RemoteForwardRefused {
            listen: "127.0.0.1:3308".into(),
        };
        let actions = rig.feed(Input::RemoteForward(Err(stale.clone())));
        assert_eq!(
            actions,
            vec![Action::Emit(TunnelEvent::Down {
                fault: stale.clone(),
                retry_in: Duration::from_millis(250)
            })]
        );
        let t = rig.now;
        assert_eq!(rig.wake(&[], Some(t)), vec![Action::RequestRemoteForward]);
        assert_eq!(rig.now, t + Duration::from_millis(250));
        let actions = rig.feed(Input::RemoteForward(Err(stale)));
        assert_eq!(down_of(&actions).unwrap().1, Duration::from_millis(500));
        rig.wake(&[], Some(rig.now));
        rig.wake(&[], Some(rig.now));
        assert_eq!(
            rig.feed(Input::RemoteForward(Ok(()))),
            vec![
                Action::Log(Line::RemoteForwardUp),
                Action::Emit(TunnelEvent::Up)
            ]
        );
        // An answer nobody waits for changes nothing.
        let (mut rig, _) = Rig::up();
        rig.feed(Input::Timer {
            heard: vec![],
            last_rx: Some(rig.now),
        });
        assert_eq!(rig.feed(Input::RemoteForward(Ok(()))), vec![], "not asked");
    }

    #[test]
    fn another_remote_forward_failure_ends_the_session() {
        let mut rig = Rig::new();
        rig.feed(Input::LoggedIn { id: 1 });
        let actions = rig.feed(Input::RemoteForward(Err(LinkFault::Silent {
            after: RACE_FOR,
        })));
        assert_eq!(actions, vec![Action::CloseSession { grace: CLOSE_GRACE }]);
        let actions = rig.feed(Input::SessionClosed);
        assert_eq!(
            down_of(&actions).unwrap().0,
            LinkFault::Silent { after: RACE_FOR }
        );
    }

    #[test]
    fn a_session_that_hears_nothing_past_the_limit_is_ended_as_silent() {
        let (mut rig, _) = Rig::up();
        let last_rx = rig.now;
        rig.wake(&[], Some(last_rx)); // the first probe
        rig.feed(Input::ProbesDone { session: 1 });
        let mut actions = Vec::new();
        while !actions.contains(&Action::CloseSession { grace: CLOSE_GRACE }) {
            actions = rig.wake(&[], Some(last_rx));
            assert!(rig.now - last_rx <= Duration::from_secs(11), "never ended");
        }
        let silent = rig.now - last_rx;
        assert!(silent > Duration::from_secs(10) && silent <= Duration::from_millis(10_500));
        let actions = rig.feed(Input::SessionClosed);
        assert_eq!(
            down_of(&actions).unwrap().0,
            LinkFault::Silent { after: silent }
        );
    }

    #[test]
    fn the_watchdog_keeps_a_session_that_hears_from_the_hub() {
        let (mut rig, _) = Rig::up();
        for _ in 0..100 {
            let actions = rig.wake(&[], Some(rig.now));
            assert!(!actions.contains(&Action::CloseSession { grace: CLOSE_GRACE }));
            rig.feed(Input::ProbesDone { session: 1 });
        }
    }

    #[test]
    fn a_long_press_drops_the_session_and_skips_the_wait() {
        let (mut rig, _) = Rig::up();
        assert_eq!(
            rig.feed(Input::Command(TunnelCommand::Reconnect)),
            vec![Action::CloseSession { grace: CLOSE_GRACE }]
        );
        let actions = rig.feed(Input::SessionClosed);
        assert_eq!(
            down_of(&actions).unwrap().0,
            LinkFault::Other("reconnect requested".into())
        );
        // While backing off (here the long backoff of a refused login), a press
        // connects now.
        let mut rig = Rig::new();
        rig.feed(Input::AttemptFailed {
            id: 1,
            fault: refused(),
        });
        let actions = rig.feed(Input::Command(TunnelCommand::Reconnect));
        assert_eq!(
            actions,
            vec![
                Action::Emit(TunnelEvent::Connecting { attempt: 2 }),
                Action::StartAttempt(2)
            ]
        );
    }

    #[test]
    fn a_long_press_while_connecting_does_not_drop_the_session_that_follows() {
        let mut rig = Rig::new();
        assert_eq!(
            rig.feed(Input::Command(TunnelCommand::Reconnect)),
            vec![Action::Log(Line::AlreadyConnecting)]
        );
        let actions = rig.feed(Input::LoggedIn { id: 1 });
        assert!(actions.contains(&Action::UseSession(1)));
        assert_eq!(rig.feed(Input::RemoteForward(Ok(()))).len(), 2);
    }

    #[test]
    fn shutdown_at_any_point_stops_and_leaves_nothing_behind() {
        // Before anything happened.
        let mut rig = Rig::new();
        rig.wake(&[], None);
        rig.wake(&[], None);
        let actions = rig.feed(Input::Shutdown);
        assert_eq!(
            actions,
            vec![
                Action::CutAttempt(1),
                Action::CutAttempt(2),
                Action::CutAttempt(3),
                Action::Stop
            ]
        );
        assert_eq!(rig.m.wake_at(), None);
        // Late words from the cut attempts change nothing.
        assert_eq!(
            rig.feed(Input::LoggedIn { id: 2 }),
            vec![Action::CutAttempt(2)]
        );
        assert_eq!(rig.feed(Input::Command(TunnelCommand::Reconnect)), vec![]);

        // With a session: it is closed with the longer grace, and nothing follows.
        let (mut rig, _) = Rig::up();
        assert_eq!(
            rig.feed(Input::Shutdown),
            vec![
                Action::CloseSession {
                    grace: SHUTDOWN_GRACE
                },
                Action::Stop
            ]
        );
        assert_eq!(rig.feed(Input::SessionClosed), vec![]);

        // While backing off, and while a session closes.
        let mut rig = Rig::new();
        rig.feed(Input::AttemptFailed {
            id: 1,
            fault: unreachable(),
        });
        assert_eq!(rig.feed(Input::Shutdown), vec![Action::Stop]);
        let (mut rig, _) = Rig::up();
        rig.feed(Input::SessionEnded(unreachable()));
        assert_eq!(rig.feed(Input::Shutdown), vec![Action::Stop]);
        assert_eq!(rig.feed(Input::SessionClosed), vec![]);
        assert_eq!(rig.m.wake_at(), None);
    }
}
