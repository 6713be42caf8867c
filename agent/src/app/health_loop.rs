//! The health loop: the one owner of the health state machine. It takes the edge tasks'
//! events and a tick (time alone changes verdicts), records link outages, keeps the
//! journal (written whenever what it remembers changes; a failed write is shown beside
//! the verdict and tried again every 30 s, never fatal), renders the state document (with
//! the update task's status as its `update` block),
//! hands the health to the LEDs and the status page, and talks to systemd (READY,
//! STATUS=<verdict>, WATCHDOG from this loop itself, so a hung loop gets the agent
//! restarted).
//!
//! The outside world comes in through three seams, so the loop is tested under tokio's
//! paused time with no sockets: a [`Clock`], a [`JournalStore`] and a [`Notifier`].

use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::events::{Event, Stamp};
use crate::health::{Health, HealthMachine, Verdict};
use crate::journal::{Journal, JournalError, Outage, State};
use crate::outages::{OutageTracker, unix_ms};
use crate::updates::UpdateStatus;

/// How often time alone is fed to the state machine.
pub const TICK: Duration = Duration::from_millis(250);
/// How often the loop pings systemd's watchdog (the unit allows 10 s).
pub const WATCHDOG_PING: Duration = Duration::from_secs(1);
/// How often a journal that could not be written is tried again.
pub const JOURNAL_RETRY: Duration = Duration::from_secs(30);

/// What the loop tells the service manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Ready,
    /// The verdict, as `STATUS=<verdict>`.
    Status(&'static str),
    Watchdog,
    Stopping,
}

/// Where notices go: systemd in the product, a recorder in tests.
pub trait Notifier: Send {
    fn notify(&mut self, notice: Notice);
}

/// `sd_notify` (a no-op outside systemd).
#[derive(Debug, Default)]
pub struct Systemd;

impl Notifier for Systemd {
    fn notify(&mut self, notice: Notice) {
        use sd_notify::NotifyState;
        let status;
        let state = match notice {
            Notice::Ready => NotifyState::Ready,
            Notice::Watchdog => NotifyState::Watchdog,
            Notice::Stopping => NotifyState::Stopping,
            Notice::Status(verdict) => {
                status = format!("STATUS={verdict}");
                NotifyState::Custom(&status)
            }
        };
        let _ = sd_notify::notify(&[state]);
    }
}

/// Where the remembered state is written: the journal file in the product.
pub trait JournalStore: Send {
    fn save(&mut self, state: &State) -> Result<(), JournalError>;
}

impl JournalStore for Journal {
    fn save(&mut self, state: &State) -> Result<(), JournalError> {
        Journal::save(self, state)
    }
}

/// The time as the state machine sees it.
pub trait Clock: Send {
    fn now(&self) -> Stamp;
}

/// Tokio's monotonic clock (so paused time drives it in tests) and the system's wall
/// clock, read only here.
#[derive(Debug)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Stamp {
        Stamp {
            mono: self.origin.elapsed(),
            wall: SystemTime::now(),
        }
    }
}

/// What the loop feeds to the rest of the agent.
#[derive(Debug)]
pub struct Outputs {
    /// The state document (MQTT, the status socket, `/status.json`).
    pub doc: watch::Sender<String>,
    /// The health (the LEDs, the status page); `None` until the first one.
    pub health: watch::Sender<Option<Health>>,
    /// The longest outage recorded (the doctor judges binary log retention by it).
    pub longest_outage: watch::Sender<Duration>,
}

/// The loop and everything it owns.
pub struct HealthLoop<C, J, N> {
    machine: HealthMachine,
    outages: OutageTracker,
    clock: C,
    journal: J,
    notifier: N,
    /// The update task's status (the document's `update` block).
    update: watch::Receiver<UpdateStatus>,
    outputs: Outputs,
    /// When the agent started (the document's uptime).
    started: Instant,
    /// What the journal should hold now.
    state: State,
    /// What was last handed to the journal, written or not.
    attempted: State,
    /// Why the last write failed, and when.
    journal_problem: Option<(String, Instant)>,
    last_verdict: Option<Verdict>,
    last_ping: Option<Instant>,
    /// The last error text logged per source (see [`HealthLoop::log_detail`]).
    logged_details: std::collections::BTreeMap<String, String>,
}

impl<C: Clock, J: JournalStore, N: Notifier> HealthLoop<C, J, N> {
    /// A loop starting from the journal's `loaded` state.
    pub fn new(
        machine: HealthMachine,
        loaded: State,
        clock: C,
        journal: J,
        notifier: N,
        update: watch::Receiver<UpdateStatus>,
        outputs: Outputs,
    ) -> Self {
        let mut machine = machine;
        machine.restore_reconnects(loaded.reconnects);
        let outages = OutageTracker::new(clock.now(), loaded.outage_open_since_unix_ms);
        outputs
            .longest_outage
            .send_replace(longest(loaded.longest_outage));
        HealthLoop {
            machine,
            outages,
            clock,
            journal,
            notifier,
            update,
            outputs,
            started: Instant::now(),
            attempted: loaded.clone(),
            state: loaded,
            journal_problem: None,
            last_verdict: None,
            last_ping: None,
            logged_details: Default::default(),
        }
    }

    /// Runs until `shutdown` or until every event sender is gone.
    pub async fn run(mut self, mut events: mpsc::Receiver<Event>, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.notifier.notify(Notice::Ready);
        loop {
            let health = tokio::select! {
                () = shutdown.cancelled() => break,
                event = events.recv() => match event {
                    Some(event) => {
                        self.log_detail(&event);
                        self.machine.handle(event, self.clock.now()).clone()
                    }
                    None => break,
                },
                _ = ticker.tick() => self.machine.tick(self.clock.now()).clone(),
            };
            self.step(health);
        }
        self.notifier.notify(Notice::Stopping);
    }

    /// Logs the full text of errors that the state document names only by their cause
    /// (it would carry addresses and accounts onto the LAN), once per change of text: the
    /// log says more, the document stays clean. The tunnel logs its own faults.
    fn log_detail(&mut self, event: &Event) {
        let (source, detail, what) = match event {
            Event::ReplicationUnreachable { direction, error } => (
                format!("{} database", direction.replica_side()),
                error,
                "cannot read replication status",
            ),
            Event::Tunnel(crate::events::TunnelEvent::ProbeFailed { path, error }) => (
                format!("probe {path:?}"),
                error,
                "a probe through the tunnel failed",
            ),
            // Working again: the same error later is news again.
            Event::Replication { direction, .. } => {
                self.logged_details
                    .remove(&format!("{} database", direction.replica_side()));
                return;
            }
            Event::Tunnel(crate::events::TunnelEvent::ProbeOk { path, .. }) => {
                self.logged_details.remove(&format!("probe {path:?}"));
                return;
            }
            _ => return,
        };
        if self.logged_details.get(&source) != Some(detail) {
            tracing::warn!(%source, error = %detail, "{what}");
            self.logged_details.insert(source, detail.clone());
        }
    }

    /// Everything that follows a new health.
    fn step(&mut self, health: Health) {
        let now = self.clock.now();
        // The watchdog is fed from this loop itself: if it hangs, systemd restarts us.
        if self
            .last_ping
            .is_none_or(|at| at.elapsed() >= WATCHDOG_PING)
        {
            self.last_ping = Some(Instant::now());
            self.notifier.notify(Notice::Watchdog);
        }
        if let Some(outage) = self.outages.observe(health.tunnel.up, now) {
            tracing::info!(
                seconds = outage.length_ms / 1000,
                "the link to the hub is back after an outage"
            );
            self.state.record_outage(outage);
            self.outputs
                .longest_outage
                .send_replace(longest(self.state.longest_outage));
        }
        self.state.outage_open_since_unix_ms = self.outages.open_since_unix_ms(now);
        remember(&mut self.state, &health, self.machine.reconnects());
        self.keep_journal();
        let doc = self.document(&health);
        self.outputs.doc.send_if_modified(|current| {
            let changed = *current != doc;
            if changed {
                *current = doc;
            }
            changed
        });
        if self.last_verdict != Some(health.verdict) {
            self.last_verdict = Some(health.verdict);
            tracing::info!(verdict = health.verdict.as_str(), reasons = ?health.reasons, "health");
            self.notifier
                .notify(Notice::Status(health.verdict.as_str()));
        }
        self.outputs.health.send_replace(Some(health));
    }

    /// Writes the journal when what it should hold changed since the last attempt, or
    /// when the last attempt failed [`JOURNAL_RETRY`] ago. A journal that cannot be
    /// written (data dir full or read-only) never stops the agent: replication does not
    /// depend on it.
    fn keep_journal(&mut self) {
        let retry = self
            .journal_problem
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() >= JOURNAL_RETRY);
        if self.state == self.attempted && !retry {
            return;
        }
        self.attempted = self.state.clone();
        self.journal_problem = match self.journal.save(&self.state) {
            Ok(()) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot save the state journal");
                Some((journal_problem_words(&e), Instant::now()))
            }
        };
    }

    /// The state document: the health, the agent block, the longest outage, the update
    /// block.
    fn document(&self, health: &Health) -> String {
        let mut doc = state_document(health, self.started.elapsed(), self.machine.mqtt_problem());
        doc["update"] = serde_json::to_value(&*self.update.borrow()).unwrap_or_default();
        doc["agent"]["journal_problem"] = self
            .journal_problem
            .as_ref()
            .map(|(why, _)| serde_json::Value::from(why.as_str()))
            .unwrap_or_default();
        doc["tunnel"]["longest_outage"] = outage_json(self.state.longest_outage.as_ref());
        doc.to_string()
    }
}

fn longest(outage: Option<Outage>) -> Duration {
    outage.map_or(Duration::ZERO, |o| Duration::from_millis(o.length_ms))
}

/// Why the journal cannot be written, for people: the operating system's words and the
/// config key to look at, not the path (the state document carries no config values).
fn journal_problem_words(e: &JournalError) -> String {
    let cause = match e {
        JournalError::Io { source, .. } => source.to_string(),
        other => other.to_string(),
    };
    format!(
        "cannot write the state journal in data.dir ({cause}); the state is not being saved across restarts"
    )
}

/// The journal's view of a new health.
fn remember(state: &mut State, health: &Health, reconnects: u64) {
    state.verdict = health.verdict.as_str().to_owned();
    state.since_unix_ms = unix_ms(health.since);
    state.reconnects = reconnects;
    if health.verdict == Verdict::InSync {
        state.last_in_sync_unix_ms = Some(unix_ms(health.since));
    }
}

/// An outage in the state document: `{"start", "end", "length_s"}`, or null.
pub fn outage_json(outage: Option<&Outage>) -> serde_json::Value {
    let rfc3339 = |ms: u64| {
        humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
            .to_string()
    };
    match outage {
        Some(o) => serde_json::json!({
            "start": rfc3339(o.start_unix_ms),
            "end": rfc3339(o.end_unix_ms),
            "length_s": o.length_ms / 1000,
        }),
        None => serde_json::Value::Null,
    }
}

/// The MQTT state document: health plus the `agent` block, which also carries the last
/// problem with the broker (never part of the verdict).
pub fn state_document(
    health: &Health,
    uptime: Duration,
    mqtt_problem: Option<&str>,
) -> serde_json::Value {
    let mut doc = serde_json::to_value(health).unwrap_or_default();
    doc["agent"] = serde_json::json!({
        "version": crate::version::current(),
        "uptime_s": uptime.as_secs(),
        "mqtt_problem": mqtt_problem,
    });
    doc
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::events::{LinkFault, TunnelEvent};
    use crate::health::HealthSettings;

    const EPOCH_S: u64 = 1_800_000_000;

    /// Wall clock = a fixed epoch + tokio's (paused) monotonic time.
    struct PausedClock(Instant);

    impl Clock for PausedClock {
        fn now(&self) -> Stamp {
            let mono = self.0.elapsed();
            Stamp {
                mono,
                wall: SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH_S) + mono,
            }
        }
    }

    /// Records every write; fails while `failing` is set.
    #[derive(Clone, Default)]
    struct FakeJournal {
        written: Arc<Mutex<Vec<State>>>,
        attempts: Arc<Mutex<u32>>,
        failing: Arc<Mutex<bool>>,
    }

    impl JournalStore for FakeJournal {
        fn save(&mut self, state: &State) -> Result<(), JournalError> {
            *self.attempts.lock().unwrap() += 1;
            if *self.failing.lock().unwrap() {
                return Err(JournalError::Io {
                    path: "/var/lib/secret-place/state.bin".into(),
                    source: std::io::Error::from_raw_os_error(28),
                });
            }
            self.written.lock().unwrap().push(state.clone());
            Ok(())
        }
    }

    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<(Duration, Notice)>>>, Option<Instant>);

    impl Notifier for Recorder {
        fn notify(&mut self, notice: Notice) {
            let at = self.1.map_or(Duration::ZERO, |t| t.elapsed());
            self.0.lock().unwrap().push((at, notice));
        }
    }

    struct Running {
        events: mpsc::Sender<Event>,
        doc: watch::Receiver<String>,
        health: watch::Receiver<Option<Health>>,
        longest: watch::Receiver<Duration>,
        update: watch::Sender<UpdateStatus>,
        journal: FakeJournal,
        notices: Recorder,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    impl Running {
        fn doc(&self) -> serde_json::Value {
            serde_json::from_str(&self.doc.borrow()).unwrap()
        }

        fn notices(&self) -> Vec<(Duration, Notice)> {
            self.notices.0.lock().unwrap().clone()
        }

        async fn send(&self, event: Event) {
            self.events.send(event).await.unwrap();
            // Let the loop take it.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn start(loaded: State, journal: FakeJournal) -> Running {
        let origin = Instant::now();
        let clock = PausedClock(origin);
        let machine = HealthMachine::new(
            HealthSettings {
                settle: Duration::from_secs(5),
                alert_after: Duration::from_secs(3600),
                lag_ok: Duration::from_secs(10),
            },
            clock.now(),
        );
        let (doc_tx, doc) = watch::channel(String::new());
        let (health_tx, health) = watch::channel(None);
        let (longest_tx, longest) = watch::channel(Duration::ZERO);
        let (update, update_rx) = watch::channel(UpdateStatus::new("idle"));
        let notices = Recorder(Arc::default(), Some(origin));
        let (events, events_rx) = mpsc::channel(8);
        let shutdown = CancellationToken::new();
        let health_loop = HealthLoop::new(
            machine,
            loaded,
            clock,
            journal.clone(),
            notices.clone(),
            update_rx,
            Outputs {
                doc: doc_tx,
                health: health_tx,
                longest_outage: longest_tx,
            },
        );
        let task = tokio::spawn(health_loop.run(events_rx, shutdown.clone()));
        Running {
            events,
            doc,
            health,
            longest,
            update,
            journal,
            notices,
            shutdown,
            task,
        }
    }

    fn down() -> Event {
        Event::Tunnel(TunnelEvent::Down {
            fault: LinkFault::Reset("reset by peer".into()),
            retry_in: Duration::from_secs(1),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn ready_first_then_the_verdict_and_a_watchdog_ping_a_second() {
        let run = start(State::default(), FakeJournal::default());
        tokio::time::sleep(Duration::from_millis(5_100)).await;
        let notices = run.notices();
        assert_eq!(notices[0].1, Notice::Ready, "{notices:?}");
        assert!(
            notices.contains(&(Duration::ZERO, Notice::Status("link_down"))),
            "{notices:?}"
        );
        let pings: Vec<Duration> = notices
            .iter()
            .filter(|(_, n)| *n == Notice::Watchdog)
            .map(|(at, _)| *at)
            .collect();
        assert_eq!(pings.len(), 6, "one at once and one a second: {pings:?}");
        assert!(
            pings.windows(2).all(|w| w[1] - w[0] >= WATCHDOG_PING),
            "{pings:?}"
        );
        run.shutdown.cancel();
        let notices = run.notices.clone();
        run.task.await.unwrap();
        assert_eq!(
            notices.0.lock().unwrap().last().unwrap().1,
            Notice::Stopping
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_document_and_the_health_follow_the_events() {
        let run = start(State::default(), FakeJournal::default());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(run.doc()["verdict"], "link_down");
        assert_eq!(
            run.doc()["agent"]["journal_problem"],
            serde_json::Value::Null
        );
        assert_eq!(
            run.doc()["tunnel"]["longest_outage"],
            serde_json::Value::Null
        );
        run.send(Event::Tunnel(TunnelEvent::Up)).await;
        assert_eq!(run.doc()["tunnel"]["up"], true);
        assert_eq!(
            run.health.borrow().as_ref().map(|h| h.tunnel.up),
            Some(true)
        );
        // The health is re-sent on every tick, so the LEDs know the loop is alive.
        let mut health = run.health.clone();
        health.borrow_and_update();
        tokio::time::sleep(TICK * 2).await;
        assert!(health.has_changed().unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn the_update_block_follows_the_update_task_by_the_next_tick() {
        let run = start(State::default(), FakeJournal::default());
        tokio::time::sleep(TICK).await;
        assert_eq!(run.doc()["update"]["state"], "idle");
        assert_eq!(run.doc()["agent"]["version"], crate::version::current());
        let mut status = UpdateStatus::new("downloading");
        status.target = Some("9.9.9".into());
        run.update.send_replace(status);
        tokio::time::sleep(TICK).await;
        assert_eq!(run.doc()["update"]["state"], "downloading");
        assert_eq!(run.doc()["update"]["target"], "9.9.9");
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_is_recorded_in_the_journal_and_the_document() {
        let run = start(State::default(), FakeJournal::default());
        run.send(Event::Tunnel(TunnelEvent::Up)).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        run.send(down()).await;
        let written = run.journal.written.lock().unwrap().clone();
        assert_eq!(
            written.last().unwrap().outage_open_since_unix_ms,
            Some((EPOCH_S + 60) * 1000 + 1),
            "an open outage is written at once, so a restart continues it"
        );
        tokio::time::sleep(Duration::from_secs(90)).await;
        run.send(Event::Tunnel(TunnelEvent::Up)).await;
        let state = run.journal.written.lock().unwrap().last().unwrap().clone();
        let outage = state.longest_outage.expect("recorded");
        assert_eq!(outage.length_ms, 90_001);
        assert_eq!(state.downtime_ms, 90_001);
        assert_eq!(state.recent_outages, vec![outage]);
        assert_eq!(state.outage_open_since_unix_ms, None);
        assert_eq!(state.reconnects, 1);
        assert_eq!(*run.longest.borrow(), Duration::from_millis(90_001));
        let doc = run.doc();
        assert_eq!(doc["tunnel"]["longest_outage"]["length_s"], 90);
        assert_eq!(
            doc["tunnel"]["longest_outage"]["start"],
            "2027-01-15T08:01:00Z"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_agent_does_not_write_its_journal_over_and_over() {
        let run = start(State::default(), FakeJournal::default());
        run.send(Event::Tunnel(TunnelEvent::Up)).await;
        tokio::time::sleep(Duration::from_secs(120)).await;
        let attempts = *run.journal.attempts.lock().unwrap();
        assert!(attempts <= 3, "{attempts} writes for two changes");
    }

    #[tokio::test(start_paused = true)]
    async fn a_journal_that_cannot_be_written_is_shown_and_retried_every_30_s() {
        let journal = FakeJournal::default();
        *journal.failing.lock().unwrap() = true;
        let run = start(State::default(), journal);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let problem = run.doc()["agent"]["journal_problem"].to_string();
        assert!(problem.contains("No space left on device"), "{problem}");
        assert!(
            problem.contains("data.dir"),
            "names the config key: {problem}"
        );
        assert!(
            !problem.contains("secret-place"),
            "no path from the config: {problem}"
        );
        assert_eq!(
            run.doc()["verdict"],
            "link_down",
            "never part of the verdict"
        );
        let first = *run.journal.attempts.lock().unwrap();
        tokio::time::sleep(JOURNAL_RETRY - Duration::from_secs(1)).await;
        assert_eq!(
            *run.journal.attempts.lock().unwrap(),
            first,
            "not before 30 s"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(*run.journal.attempts.lock().unwrap(), first + 1);
        *run.journal.failing.lock().unwrap() = false;
        tokio::time::sleep(JOURNAL_RETRY).await;
        assert_eq!(
            run.doc()["agent"]["journal_problem"],
            serde_json::Value::Null
        );
        assert_eq!(run.journal.written.lock().unwrap().len(), 1);
        // A change while it fails is tried at once, not only at the next retry.
        *run.journal.failing.lock().unwrap() = true;
        let before = *run.journal.attempts.lock().unwrap();
        run.send(Event::Tunnel(TunnelEvent::Up)).await;
        assert_eq!(*run.journal.attempts.lock().unwrap(), before + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_in_an_outage_continues_it_and_keeps_the_counters() {
        let began = (EPOCH_S - 600) * 1000;
        let loaded = State {
            reconnects: 4,
            outage_open_since_unix_ms: Some(began),
            ..State::default()
        };
        let run = start(loaded, FakeJournal::default());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(run.doc()["tunnel"]["reconnects"], 4);
        run.send(Event::Tunnel(TunnelEvent::Up)).await;
        let state = run.journal.written.lock().unwrap().last().unwrap().clone();
        let outage = state.longest_outage.unwrap();
        assert_eq!(outage.start_unix_ms, began);
        assert!(outage.length_ms >= 602_000, "{outage:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_ends_when_every_sender_is_gone() {
        let Running {
            events,
            task,
            notices,
            ..
        } = start(State::default(), FakeJournal::default());
        drop(events);
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("ends")
            .unwrap();
        assert_eq!(
            notices.0.lock().unwrap().last().unwrap().1,
            Notice::Stopping
        );
    }
}
