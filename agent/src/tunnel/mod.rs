//! The supervised SSH connection to the hub, carrying both forwards.
//!
//! One outbound connection; the remote forward (hub `remote_listen` to the office DB) and
//! the local forward (`local_listen` on the box to the hub DB) ride on it. The supervisor
//! notices a dead link in seconds (keepalives plus a receive watchdog), probes both
//! forwarded paths by reading the MySQL greeting through them, reconnects with a short
//! jittered backoff for network faults and a long one for faults a person must fix, and
//! reports every step as a [`TunnelEvent`]. Every wait is bounded and ends on shutdown.
//!
//! What to do when is decided by the pure [`machine::TunnelMachine`]; the loop here only
//! performs its actions (tasks, sockets, channels) and feeds it what happened.

mod channels;
mod forward;
mod machine;
mod meter;
mod pin;
mod probe;
mod session;

use std::borrow::Cow;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::PrivateKey;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use channels::{ChannelError, ChannelSlot, HubChannels};
pub use forward::{DOWNLOAD_CAP, Ended};
pub use pin::{HostKeyPin, fingerprint};
pub use probe::{Greeting, ProbeError, read_greeting};

use crate::backoff::BackoffPolicy;
use crate::events::{LinkFault, TunnelEvent};
use machine::{Action, AttemptId, Input, Line, Timings, TunnelMachine};
use session::{HubClient, MeterSlot, Session};

/// A host and port, as given in the config (hosts may be names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Endpoint {
            host: host.into(),
            port,
        }
    }
}

/// `host:port`, with an IPv6 address in brackets (as the config writes it), so the port
/// cannot be read as part of the address.
impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Everything the tunnel needs, already validated.
pub struct TunnelSettings {
    /// The hub's sshd.
    pub hub: Endpoint,
    pub user: String,
    pub device_key: Arc<PrivateKey>,
    /// `None` refuses every host key (nothing enrolled yet), which needs a person.
    pub host_key: Option<HostKeyPin>,
    /// Address the hub listens on for the remote forward.
    pub remote_listen: Endpoint,
    /// The office DB as seen from the box.
    pub remote_target: Endpoint,
    /// The hub DB as seen from the hub.
    pub local_target: Endpoint,
    pub connect_timeout: Duration,
    /// SSH handshake and login together.
    pub handshake_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_max: u32,
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    /// Backoff for network faults: short, so the link is used again within seconds.
    pub reconnect: BackoffPolicy,
    /// Backoff for faults a person must fix (login refused, host key changed): long,
    /// since sshd penalises sources that retry refused logins.
    pub login: BackoffPolicy,
    /// A session that lived this long resets the backoff.
    pub stable_after: Duration,
    /// What the SSH layer offers (compression, ciphers).
    pub ssh: SshOptions,
    /// Where the live session is published: the local forward and other tasks' own
    /// channels ([`HubChannels`], the update check's `sftp`) find it there.
    pub channels: ChannelSlot,
}

/// What the SSH layer should offer, beyond the timings.
#[derive(Debug, Clone)]
pub struct SshOptions {
    /// Offer `zlib@openssh.com`: on a slow link the stream compression pays for itself.
    pub compression: bool,
    /// Ciphers in order of preference; empty means the best for this CPU.
    pub ciphers: Vec<russh::cipher::Name>,
}

impl TunnelSettings {
    /// Settings with the product's default timings (see `tether.example.toml`).
    pub fn new(
        hub: Endpoint,
        user: String,
        device_key: Arc<PrivateKey>,
        host_key: Option<HostKeyPin>,
        remote_listen: Endpoint,
        remote_target: Endpoint,
        local_target: Endpoint,
    ) -> Self {
        TunnelSettings {
            hub,
            user,
            device_key,
            host_key,
            remote_listen,
            remote_target,
            local_target,
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(15),
            keepalive_interval: Duration::from_secs(2),
            keepalive_max: 3,
            probe_interval: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(5),
            reconnect: BackoffPolicy {
                min: Duration::from_millis(250),
                max: Duration::from_millis(500),
                jitter_pct: 30,
            },
            login: BackoffPolicy {
                min: Duration::from_secs(60),
                max: Duration::from_secs(30 * 60),
                jitter_pct: 30,
            },
            stable_after: Duration::from_secs(30),
            ssh: SshOptions {
                compression: true,
                ciphers: Vec::new(),
            },
            channels: ChannelSlot::default(),
        }
    }

    /// The russh client configuration for these settings.
    pub(crate) fn ssh_config(&self) -> Arc<russh::client::Config> {
        let mut cfg = russh::client::Config {
            keepalive_interval: Some(self.keepalive_interval),
            keepalive_max: self.keepalive_max as usize,
            nodelay: true,
            ..Default::default()
        };
        let ciphers = if self.ssh.ciphers.is_empty() {
            default_ciphers()
        } else {
            self.ssh.ciphers.clone()
        };
        // zlib@openssh.com first: russh compresses at level 1, on C zlib built in
        // statically (why, with figures: the workspace Cargo.toml).
        cfg.preferred = russh::Preferred {
            cipher: Cow::Owned(ciphers),
            compression: Cow::Owned(if self.ssh.compression {
                vec![
                    russh::compression::ZLIB_LEGACY,
                    russh::compression::ZLIB,
                    russh::compression::NONE,
                ]
            } else {
                vec![russh::compression::NONE]
            }),
            ..Default::default()
        };
        // Client-initiated rekeying with busy channels can drop the session ("Pending
        // buffer limit reached"); leave rekeying by volume to sshd, which does it safely.
        cfg.limits.rekey_read_limit = usize::MAX / 2;
        cfg.limits.rekey_write_limit = usize::MAX / 2;
        cfg.limits.rekey_time_limit = Duration::from_secs(24 * 3600);
        Arc::new(cfg)
    }
}

/// AES-GCM where the CPU has AES instructions, ChaCha20 otherwise (a Raspberry Pi 4).
pub fn default_ciphers() -> Vec<russh::cipher::Name> {
    use russh::cipher::{AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305};
    if cpu_has_aes() {
        vec![AES_128_GCM, CHACHA20_POLY1305, AES_256_GCM]
    } else {
        vec![CHACHA20_POLY1305, AES_128_GCM, AES_256_GCM]
    }
}

fn cpu_has_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// Requests from outside (the button's long press).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelCommand {
    /// Drop the current session (if any) and connect again now.
    Reconnect,
}

/// The live session's handle, or `None` while the link is down: the one place the
/// local forward and everything else that opens channels on the session finds it
/// (published through the settings' [`ChannelSlot`]).
type LiveHandle = Option<Arc<russh::client::Handle<HubClient>>>;

/// How long shutdown waits for the tunnel's own tasks (forwarded connections, probes,
/// attempts) after the session is closed; with the session's goodbye it stays well
/// inside the agent's 1.5 s.
const TASKS_GRACE: Duration = Duration::from_millis(500);

/// Runs the tunnel until `shutdown`: the local forward listens on `listener` for the
/// agent's whole life (so its port never changes); connections arriving while the link
/// is down are closed at once. Every task it starts has ended (or been given up on after
/// [`TASKS_GRACE`]) when it returns.
pub async fn run(
    settings: Arc<TunnelSettings>,
    listener: TcpListener,
    events: mpsc::Sender<TunnelEvent>,
    commands: mpsc::Receiver<TunnelCommand>,
    shutdown: CancellationToken,
) {
    let local_addr = listener.local_addr().ok();
    let live_handle = settings.channels.clone();
    let live_rx = live_handle.subscribe();
    let forwards = TaskTracker::new();
    let accept = tokio::spawn(forward::accept_local(
        listener,
        settings.clone(),
        live_rx,
        forwards.clone(),
        shutdown.clone(),
    ));
    let (probe_tx, probe_rx) = mpsc::channel(4);
    let mut sup = Supervisor {
        machine: TunnelMachine::new(Timings::of(&settings), Box::new(rand::random::<f64>)),
        settings,
        events,
        commands,
        commands_open: true,
        shutdown: shutdown.clone(),
        live_handle,
        local_addr,
        forwards: forwards.clone(),
        attempts: JoinSet::new(),
        racers: Vec::new(),
        logged_in: Vec::new(),
        live: None,
        forward_request: None,
        probes: JoinSet::new(),
        probe_tx,
        probe_rx,
    };
    sup.run().await;
    shutdown.cancel();
    forwards.close();
    // An attempt that logged in just now must not leave its connection behind.
    for (_, session) in sup.logged_in.drain(..) {
        session.killer.kill();
    }
    sup.attempts.abort_all();
    sup.probes.abort_all();
    let stopped = tokio::time::timeout(TASKS_GRACE, async {
        let _ = accept.await;
        while let Some(done) = sup.attempts.join_next().await {
            if let Ok((_, Ok(session))) = done {
                session.killer.kill();
            }
        }
        while sup.probes.join_next().await.is_some() {}
        forwards.wait().await;
    })
    .await;
    if stopped.is_err() {
        tracing::warn!(
            forwarded_connections = forwards.len(),
            "tunnel tasks still running at shutdown were left behind"
        );
    }
}

/// The I/O around [`TunnelMachine`]: owns the attempts, the live session and its tasks.
struct Supervisor {
    machine: TunnelMachine,
    settings: Arc<TunnelSettings>,
    events: mpsc::Sender<TunnelEvent>,
    commands: mpsc::Receiver<TunnelCommand>,
    commands_open: bool,
    shutdown: CancellationToken,
    live_handle: ChannelSlot,
    local_addr: Option<SocketAddr>,
    /// Every forwarded connection, local and remote.
    forwards: TaskTracker,
    attempts: JoinSet<AttemptOutcome>,
    /// The attempts still running.
    racers: Vec<Racer>,
    /// Sessions whose attempt logged in, until the machine uses or cuts them.
    logged_in: Vec<(AttemptId, Session)>,
    live: Option<Live>,
    forward_request: Option<std::pin::Pin<Box<ForwardRequest>>>,
    probes: JoinSet<AttemptId>,
    probe_tx: mpsc::Sender<(AttemptId, TunnelEvent)>,
    probe_rx: mpsc::Receiver<(AttemptId, TunnelEvent)>,
}

/// How one attempt ended, under its id.
type AttemptOutcome = (AttemptId, Result<Session, LinkFault>);

type ForwardRequest = dyn std::future::Future<Output = Result<(), LinkFault>> + Send;

struct Racer {
    id: AttemptId,
    task: AbortHandle,
    meter: MeterSlot,
}

struct Live {
    id: AttemptId,
    session: Session,
    /// `session.ended` has fired (it fires once).
    ended_seen: bool,
}

impl Supervisor {
    async fn run(&mut self) {
        if self.shutdown.is_cancelled() {
            return;
        }
        let mut todo: VecDeque<Action> = self.machine.start(Instant::now()).into();
        loop {
            while let Some(action) = todo.pop_front() {
                if action == Action::Stop {
                    return;
                }
                self.perform(action, &mut todo).await;
            }
            let input = self.next_input().await;
            todo.extend(self.machine.handle(input, Instant::now()));
        }
    }

    /// Waits for the next thing that happened.
    async fn next_input(&mut self) -> Input {
        loop {
            let wake = self.machine.wake_at();
            let live = &mut self.live;
            let forward_request = &mut self.forward_request;
            let ended = async {
                match live {
                    Some(live) if !live.ended_seen => {
                        let fault = (&mut live.session.ended).await;
                        live.ended_seen = true;
                        let fault = fault
                            .unwrap_or_else(|_| LinkFault::Reset("the SSH session ended".into()));
                        let silent_for = live.session.meter.last_rx().elapsed();
                        session::with_silence(fault, silent_for)
                    }
                    _ => std::future::pending().await,
                }
            };
            let answered = async {
                match forward_request {
                    Some(request) => {
                        let res = request.as_mut().await;
                        *forward_request = None;
                        res
                    }
                    None => std::future::pending().await,
                }
            };
            let input = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => Some(Input::Shutdown),
                fault = ended => Some(Input::SessionEnded(fault)),
                Some(done) = self.attempts.join_next_with_id(), if !self.attempts.is_empty() => {
                    attempt_input(&mut self.racers, &mut self.logged_in, done)
                }
                res = answered => Some(Input::RemoteForward(res)),
                Some((session, event)) = self.probe_rx.recv() => Some(Input::Probe { session, event }),
                Some(done) = self.probes.join_next(), if !self.probes.is_empty() => match done {
                    Ok(session) => Some(Input::ProbesDone { session }),
                    Err(e) if e.is_cancelled() => None,
                    Err(e) => {
                        tracing::warn!(error = %e, "a probe task failed");
                        self.live.as_ref().map(|live| Input::ProbesDone { session: live.id })
                    }
                },
                cmd = self.commands.recv(), if self.commands_open => match cmd {
                    Some(cmd) => Some(Input::Command(cmd)),
                    // Nobody can ask any more: stop listening rather than spin.
                    None => {
                        self.commands_open = false;
                        None
                    }
                },
                () = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {
                    Some(Input::Timer {
                        heard: self
                            .racers
                            .iter()
                            .filter(|r| session::heard_from_hub(&r.meter))
                            .map(|r| r.id)
                            .collect(),
                        last_rx: self.live.as_ref().map(|live| live.session.meter.last_rx()),
                    })
                }
            };
            if let Some(input) = input {
                return input;
            }
        }
    }

    /// Does one action; what follows from it (a closed session) goes onto `todo`.
    async fn perform(&mut self, action: Action, todo: &mut VecDeque<Action>) {
        match action {
            Action::Emit(event) => {
                // The receiver only goes away at shutdown.
                let _ = self.events.send(event).await;
            }
            Action::Log(line) => self.log(line),
            Action::StartAttempt(id) => {
                let meter = MeterSlot::default();
                let (settings, slot, forwards) =
                    (self.settings.clone(), meter.clone(), self.forwards.clone());
                let task = self
                    .attempts
                    .spawn(async move { (id, session::connect(&settings, &slot, forwards).await) });
                self.racers.push(Racer { id, task, meter });
            }
            Action::CutAttempt(id) => {
                // Aborting drops the attempt, whose socket is cut on drop (`CutOnDrop`).
                if let Some(at) = self.racers.iter().position(|r| r.id == id) {
                    self.racers.swap_remove(at).task.abort();
                }
                if let Some(at) = self.logged_in.iter().position(|(won, _)| *won == id) {
                    self.logged_in.swap_remove(at).1.killer.kill();
                }
            }
            Action::UseSession(id) => {
                if let Some(at) = self.logged_in.iter().position(|(won, _)| *won == id) {
                    let (_, session) = self.logged_in.swap_remove(at);
                    self.live_handle.publish(Some(session.handle.clone()));
                    self.live = Some(Live {
                        id,
                        session,
                        ended_seen: false,
                    });
                }
            }
            Action::RequestRemoteForward => {
                if let Some(live) = &self.live {
                    let request = session::request_remote_forward(
                        live.session.handle.clone(),
                        self.settings.clone(),
                    );
                    let meter = live.session.meter.clone();
                    self.forward_request = Some(Box::pin(async move {
                        request.await.map_err(|fault| {
                            session::with_silence(fault, meter.last_rx().elapsed())
                        })
                    }));
                }
            }
            Action::StartProbes => {
                if let Some(live) = &self.live {
                    self.probes.spawn(probe::probe_both(
                        live.session.handle.clone(),
                        live.session.meter.clone(),
                        self.settings.clone(),
                        self.local_addr,
                        self.probe_tx.clone(),
                        live.id,
                    ));
                }
            }
            Action::CloseSession { grace } => {
                self.live_handle.publish(None);
                self.forward_request = None;
                // Their results would be about a session that is gone.
                self.probes.abort_all();
                if let Some(live) = self.live.take() {
                    tracing::debug!(
                        rx_bytes = live.session.meter.rx_bytes(),
                        tx_bytes = live.session.meter.tx_bytes(),
                        "SSH session ended"
                    );
                    live.session.close(grace).await;
                }
                todo.extend(self.machine.handle(Input::SessionClosed, Instant::now()));
            }
            Action::Stop => {}
        }
    }

    fn log(&self, line: Line) {
        match line {
            Line::Down {
                fault,
                retry_in,
                quiet_attempts,
            } => {
                tracing::warn!(fault = ?fault, retry_in = ?retry_in, quiet_attempts, "link to the hub is down")
            }
            Line::StillDown { fault, retry_in } => {
                tracing::debug!(fault = ?fault, retry_in = ?retry_in, "link to the hub is still down")
            }
            Line::SessionUp => {
                tracing::info!(hub = %self.settings.hub, "SSH session to the hub is up")
            }
            Line::RemoteForwardUp => {
                tracing::info!(listen = %self.settings.remote_listen, "remote forward is up")
            }
            Line::AlreadyConnecting => {
                tracing::debug!("reconnect requested while connecting: already under way")
            }
        }
    }
}

/// What an attempt's end means for the machine (`None`: an attempt that was cut).
fn attempt_input(
    racers: &mut Vec<Racer>,
    logged_in: &mut Vec<(AttemptId, Session)>,
    done: Result<(tokio::task::Id, AttemptOutcome), tokio::task::JoinError>,
) -> Option<Input> {
    match done {
        Ok((_, (id, res))) => {
            racers.retain(|r| r.id != id);
            match res {
                Ok(session) => {
                    logged_in.push((id, session));
                    Some(Input::LoggedIn { id })
                }
                Err(fault) => Some(Input::AttemptFailed { id, fault }),
            }
        }
        Err(e) if e.is_cancelled() => None,
        Err(e) => {
            let at = racers.iter().position(|r| r.task.id() == e.id())?;
            let id = racers.swap_remove(at).id;
            Some(Input::AttemptFailed {
                id,
                fault: LinkFault::Other(format!("connection attempt failed: {e}")),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_show_as_host_and_port_with_ipv6_in_brackets() {
        assert_eq!(
            Endpoint::new("hub.example.com", 22).to_string(),
            "hub.example.com:22"
        );
        assert_eq!(
            Endpoint::new("127.0.0.1", 3308).to_string(),
            "127.0.0.1:3308"
        );
        assert_eq!(Endpoint::new("::1", 3308).to_string(), "[::1]:3308");
        assert_eq!(
            Endpoint::new("2001:db8::7", 2222).to_string(),
            "[2001:db8::7]:2222"
        );
    }

    #[test]
    fn the_machine_takes_its_timings_from_the_settings() {
        let key = russh::keys::PrivateKey::random(
            &mut russh::keys::key::safe_rng(),
            russh::keys::Algorithm::Ed25519,
        )
        .unwrap();
        let ep = |port| Endpoint::new("127.0.0.1", port);
        let settings = TunnelSettings::new(
            ep(22),
            "office".into(),
            Arc::new(key),
            None,
            ep(1),
            ep(2),
            ep(3),
        );
        let t = Timings::of(&settings);
        assert_eq!(t.stagger, settings.reconnect.max);
        assert_eq!(t.race_for, settings.handshake_timeout);
        assert_eq!((t.network, t.person), (settings.reconnect, settings.login));
        assert_eq!(t.stable_after, Duration::from_secs(30));
        assert_eq!(t.probe_every, settings.probe_interval);
        // 2 s keepalives, 3 unanswered: silent after 10 s.
        assert_eq!(t.silence_limit, Duration::from_secs(10));
    }
}
