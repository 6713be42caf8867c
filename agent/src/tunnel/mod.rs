//! The supervised SSH connection to the hub, carrying both forwards.
//!
//! One outbound connection; the remote forward (hub `remote_listen` to the office DB) and
//! the local forward (`local_listen` on the box to the hub DB) ride on it. The supervisor
//! notices a dead link in seconds (keepalives plus a receive watchdog), probes both
//! forwarded paths by reading the MySQL greeting through them, reconnects with a short
//! jittered backoff for network faults and a long one for faults a person must fix, and
//! reports every step as a [`TunnelEvent`]. Every wait is bounded and ends on shutdown.

mod channels;
mod forward;
mod meter;
mod pin;
mod probe;
mod session;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::PrivateKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use channels::{ChannelError, ChannelSlot, HubChannels};
pub use forward::{DOWNLOAD_CAP, Ended};
pub use pin::{HostKeyPin, fingerprint};
pub use probe::{Greeting, ProbeError, read_greeting};

use crate::backoff::{Backoff, BackoffPolicy};
use crate::events::{LinkFault, ProbePath, TunnelEvent};
use session::{HubClient, Session};

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
    /// Where the live session is published for other tasks' own channels.
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

/// What the local-forward listener and the probes need to know about the live session.
type Current = Option<Arc<russh::client::Handle<HubClient>>>;

/// Runs the tunnel until `shutdown`: the local forward listens on `listener` for the
/// agent's whole life (so its port never changes); connections arriving while the link
/// is down are closed at once.
pub async fn run(
    settings: Arc<TunnelSettings>,
    listener: TcpListener,
    events: mpsc::Sender<TunnelEvent>,
    commands: mpsc::Receiver<TunnelCommand>,
    shutdown: CancellationToken,
) {
    let local_addr = listener.local_addr().ok();
    let (current_tx, current_rx) = watch::channel::<Current>(None);
    let accept = tokio::spawn(accept_loop(
        listener,
        settings.clone(),
        current_rx,
        shutdown.clone(),
    ));
    let mut sup = Supervisor {
        network: Backoff::new(settings.reconnect),
        person: Backoff::new(settings.login),
        settings,
        events,
        commands,
        shutdown: shutdown.clone(),
        current: current_tx,
        local_addr,
        commands_open: true,
        down_logged: None,
        quiet_attempts: 0,
    };
    sup.run().await;
    shutdown.cancel();
    let _ = accept.await;
}

struct Supervisor {
    settings: Arc<TunnelSettings>,
    events: mpsc::Sender<TunnelEvent>,
    commands: mpsc::Receiver<TunnelCommand>,
    shutdown: CancellationToken,
    current: watch::Sender<Current>,
    local_addr: Option<SocketAddr>,
    network: Backoff,
    person: Backoff,
    commands_open: bool,
    /// The kind of fault last logged at warn level, and when.
    down_logged: Option<(std::mem::Discriminant<LinkFault>, Instant)>,
    /// Failed attempts since that line.
    quiet_attempts: u32,
}

/// During an outage, how often a failed attempt with an unchanged cause is logged.
const DOWN_LOG_EVERY: Duration = Duration::from_secs(60);

/// How a wait between attempts ended.
enum Woke {
    Timer,
    Reconnect,
    Shutdown,
}

impl Supervisor {
    async fn emit(&self, event: TunnelEvent) {
        // The receiver only goes away at shutdown.
        let _ = self.events.send(event).await;
    }

    async fn run(&mut self) {
        let mut attempt = 0u32;
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            attempt += 1;
            self.emit(TunnelEvent::Connecting { attempt }).await;
            let connected = tokio::select! {
                r = session::connect_racing(&self.settings, self.settings.reconnect.max) => r,
                () = self.shutdown.cancelled() => return,
            };
            let fault = match connected {
                Ok(session) => {
                    attempt = 0;
                    self.down_logged = None;
                    self.quiet_attempts = 0;
                    let started = Instant::now();
                    let fault = match self.serve(session).await {
                        Some(fault) => fault,
                        None => return,
                    };
                    if started.elapsed() >= self.settings.stable_after {
                        self.network.reset();
                        self.person.reset();
                    }
                    fault
                }
                Err(fault) => fault,
            };
            let retry_in = if fault.needs_person() {
                self.person.next_delay(rand::random())
            } else {
                self.person.reset();
                self.network.next_delay(rand::random())
            };
            // An outage of hours is a few log lines: the first failure, a changed cause,
            // a reminder a minute; the attempts between go to the debug level.
            let kind = std::mem::discriminant(&fault);
            let now = Instant::now();
            if self
                .down_logged
                .is_none_or(|(k, at)| k != kind || now.duration_since(at) >= DOWN_LOG_EVERY)
            {
                tracing::warn!(fault = ?fault, retry_in = ?retry_in, quiet_attempts = self.quiet_attempts, "link to the hub is down");
                self.down_logged = Some((kind, now));
                self.quiet_attempts = 0;
            } else {
                tracing::debug!(fault = ?fault, retry_in = ?retry_in, "link to the hub is still down");
                self.quiet_attempts += 1;
            }
            self.emit(TunnelEvent::Down { fault, retry_in }).await;
            match self.wait(retry_in).await {
                Woke::Shutdown => return,
                Woke::Timer | Woke::Reconnect => {}
            }
        }
    }

    /// Waits `delay`, cut short by a reconnect request or shutdown.
    async fn wait(&mut self, delay: Duration) -> Woke {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return Woke::Timer,
                cmd = self.commands.recv(), if self.commands_open => match cmd {
                    Some(TunnelCommand::Reconnect) => return Woke::Reconnect,
                    None => self.commands_open = false,
                },
                () = self.shutdown.cancelled() => return Woke::Shutdown,
            }
        }
    }

    /// Serves a logged-in session until it dies (returns why) or shutdown (returns None).
    async fn serve(&mut self, mut session: Session) -> Option<LinkFault> {
        let settings = self.settings.clone();
        let handle = session.handle.clone();
        self.current.send_replace(Some(handle.clone()));
        settings.channels.publish(Some(handle.clone()));
        tracing::info!(hub = %settings.hub, "SSH session to the hub is up");

        // Beyond russh's own keepalive limit, one more interval of silence means the
        // session task itself is stuck (blocked writing into a dead link).
        let silence_limit = settings.keepalive_interval * (settings.keepalive_max + 2);
        let mut watchdog = tokio::time::interval(Duration::from_millis(500));
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut probe_timer = tokio::time::interval(settings.probe_interval);
        probe_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (probe_tx, mut probe_rx) = mpsc::channel::<TunnelEvent>(4);
        let mut probing = false;

        let mut forward_backoff = Backoff::new(settings.reconnect);
        let remote_forward = request_remote_forward(handle.clone(), settings.clone());
        tokio::pin!(remote_forward);
        let mut forward_pending = true;
        let mut forward_retry: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;

        let fault = loop {
            tokio::select! {
                fault = &mut session.ended => {
                    break fault.unwrap_or_else(|_| LinkFault::Reset("the SSH session ended".into()));
                }
                () = self.shutdown.cancelled() => {
                    self.current.send_replace(None);
                    settings.channels.publish(None);
                    session.close(Duration::from_millis(500)).await;
                    return None;
                }
                cmd = self.commands.recv(), if self.commands_open => match cmd {
                    Some(TunnelCommand::Reconnect) => break LinkFault::Other("reconnect requested".into()),
                    // Nobody can ask any more: stop listening rather than spin.
                    None => self.commands_open = false,
                },
                res = &mut remote_forward, if forward_pending => {
                    forward_pending = false;
                    match res {
                        Ok(()) => {
                            tracing::info!(listen = %settings.remote_listen, "remote forward is up");
                            self.emit(TunnelEvent::Up).await;
                        }
                        Err(fault @ LinkFault::RemoteForwardRefused { .. }) => {
                            let retry_in = forward_backoff.next_delay(rand::random());
                            self.emit(TunnelEvent::Down { fault, retry_in }).await;
                            forward_retry = Some(Box::pin(tokio::time::sleep(retry_in)));
                        }
                        Err(fault) => break fault,
                    }
                }
                () = async { forward_retry.as_mut().expect("guarded").await }, if forward_retry.is_some() => {
                    forward_retry = None;
                    forward_pending = true;
                    remote_forward.set(request_remote_forward(handle.clone(), settings.clone()));
                }
                _ = watchdog.tick() => {
                    let silent = session.meter.last_rx().elapsed();
                    if silent > silence_limit {
                        break LinkFault::Silent { after: silent };
                    }
                }
                _ = probe_timer.tick(), if !forward_pending && forward_retry.is_none() && !probing => {
                    probing = true;
                    tokio::spawn(probe_both(handle.clone(), session.meter.clone(), settings.clone(), self.local_addr, probe_tx.clone()));
                }
                Some(ev) = probe_rx.recv() => {
                    if matches!(ev, TunnelEvent::ProbeOk { path: ProbePath::OfficeDbThroughRemoteForward, .. } | TunnelEvent::ProbeFailed { path: ProbePath::OfficeDbThroughRemoteForward, .. } | TunnelEvent::ProbeBusy { path: ProbePath::OfficeDbThroughRemoteForward }) {
                        probing = false;
                    }
                    self.emit(ev).await;
                }
            }
        };
        let fault = match fault {
            LinkFault::Silent { after } if after.is_zero() => LinkFault::Silent {
                after: session.meter.last_rx().elapsed(),
            },
            other => other,
        };
        self.current.send_replace(None);
        settings.channels.publish(None);
        tracing::debug!(
            rx_bytes = session.meter.rx_bytes(),
            tx_bytes = session.meter.tx_bytes(),
            "SSH session ended"
        );
        session.close(Duration::from_millis(200)).await;
        Some(fault)
    }
}

/// Asks the hub to listen for the remote forward, bounded by the handshake timeout.
async fn request_remote_forward(
    handle: Arc<russh::client::Handle<HubClient>>,
    settings: Arc<TunnelSettings>,
) -> Result<(), LinkFault> {
    let listen = &settings.remote_listen;
    let res = tokio::time::timeout(
        settings.handshake_timeout,
        handle.tcpip_forward(listen.host.clone(), u32::from(listen.port)),
    )
    .await;
    match res {
        Err(_) => Err(LinkFault::Silent {
            after: settings.handshake_timeout,
        }),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(russh::Error::RequestDenied)) => Err(LinkFault::RemoteForwardRefused {
            listen: listen.to_string(),
        }),
        Ok(Err(e)) => Err(session::classify(&e)),
    }
}

/// Probes both forwarded paths one after the other; the remote path's result comes last.
async fn probe_both(
    handle: Arc<russh::client::Handle<HubClient>>,
    meter: Arc<meter::Meter>,
    settings: Arc<TunnelSettings>,
    local_addr: Option<SocketAddr>,
    out: mpsc::Sender<TunnelEvent>,
) {
    let path = ProbePath::HubDbThroughLocalForward;
    let (started, mark) = (Instant::now(), Traffic::now(&meter));
    let local = match local_addr {
        Some(addr) => probe_local(addr, settings.probe_timeout).await,
        None => Err(Failed::Broken("the local forward has no address".into())),
    };
    let _ = out
        .send(probe_event(path, local, started, mark.busy_since(&meter)))
        .await;
    let path = ProbePath::OfficeDbThroughRemoteForward;
    let (started, mark) = (Instant::now(), Traffic::now(&meter));
    let remote = probe_remote(&handle, &settings).await;
    let _ = out
        .send(probe_event(path, remote, started, mark.busy_since(&meter)))
        .await;
}

/// Bytes through the SSH socket at one moment.
struct Traffic {
    rx: u64,
    tx: u64,
}

/// Sent bytes beyond this during a probe mean our own bulk data queued ahead of it.
const BUSY_TX_BYTES: u64 = 16 * 1024;

impl Traffic {
    fn now(meter: &meter::Meter) -> Self {
        Traffic {
            rx: meter.rx_bytes(),
            tx: meter.tx_bytes(),
        }
    }

    /// Whether the line carried other traffic since: data from the hub, or a queue of
    /// ours (keepalives and the probe itself are far below the threshold).
    fn busy_since(&self, meter: &meter::Meter) -> bool {
        meter.rx_bytes() > self.rx || meter.tx_bytes() > self.tx + BUSY_TX_BYTES
    }
}

/// Why a probe did not read a greeting.
enum Failed {
    /// No answer in time: a dead path, or one queued behind bulk data on a slow link.
    Slow(String),
    /// Refused, closed or garbled: the path is broken.
    Broken(String),
}

impl From<ProbeError> for Failed {
    fn from(e: ProbeError) -> Self {
        match e {
            ProbeError::Timeout(_) => Failed::Slow(e.to_string()),
            other => Failed::Broken(other.to_string()),
        }
    }
}

/// A slow probe while the line carried other traffic (replication catching up, in
/// either direction) only says the line is busy: that is not evidence of a broken path.
fn probe_event(
    path: ProbePath,
    res: Result<Greeting, Failed>,
    started: Instant,
    link_busy: bool,
) -> TunnelEvent {
    match res {
        Ok(_) => TunnelEvent::ProbeOk {
            path,
            rtt: started.elapsed(),
        },
        Err(Failed::Slow(_)) if link_busy => TunnelEvent::ProbeBusy { path },
        Err(Failed::Slow(error) | Failed::Broken(error)) => {
            TunnelEvent::ProbeFailed { path, error }
        }
    }
}

/// Through the agent's own local-forward listener to the hub DB.
async fn probe_local(addr: SocketAddr, timeout: Duration) -> Result<Greeting, Failed> {
    let deadline = Instant::now() + timeout;
    let mut tcp = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            Failed::Slow(format!(
                "local forward {addr} did not accept within {timeout:?}"
            ))
        })?
        .map_err(|e| Failed::Broken(format!("local forward {addr}: {e}")))?;
    read_greeting(&mut tcp, deadline.saturating_duration_since(Instant::now()))
        .await
        .map_err(|e| match Failed::from(e) {
            Failed::Slow(e) => Failed::Slow(format!("hub database through the local forward: {e}")),
            Failed::Broken(e) => {
                Failed::Broken(format!("hub database through the local forward: {e}"))
            }
        })
}

/// Asks the hub to connect to its own end of the remote forward, which comes back over
/// this session to the office DB: the exact path the hub's replication uses.
async fn probe_remote(
    handle: &russh::client::Handle<HubClient>,
    settings: &TunnelSettings,
) -> Result<Greeting, Failed> {
    let listen = &settings.remote_listen;
    let deadline = Instant::now() + settings.probe_timeout;
    let channel = tokio::time::timeout_at(
        deadline,
        handle.channel_open_direct_tcpip(
            listen.host.clone(),
            u32::from(listen.port),
            "127.0.0.1",
            0,
        ),
    )
    .await
    .map_err(|_| {
        Failed::Slow(format!(
            "the hub did not open {listen} within {:?}",
            settings.probe_timeout
        ))
    })?
    .map_err(|e| Failed::Broken(format!("the hub could not open {listen}: {e}")))?;
    let mut stream = channel.into_stream();
    let res = read_greeting(
        &mut stream,
        deadline.saturating_duration_since(Instant::now()),
    )
    .await
    .map_err(|e| match Failed::from(e) {
        Failed::Slow(e) => Failed::Slow(format!("office database through the remote forward: {e}")),
        Failed::Broken(e) => {
            Failed::Broken(format!("office database through the remote forward: {e}"))
        }
    });
    drop(stream);
    res
}

/// Accepts local-forward connections for the agent's whole life and sends each through
/// the live session, or closes it at once when there is none.
async fn accept_loop(
    listener: TcpListener,
    settings: Arc<TunnelSettings>,
    current: watch::Receiver<Current>,
    shutdown: CancellationToken,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "local forward: accept failed");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(200)) => continue,
                        () = shutdown.cancelled() => return,
                    }
                }
            },
            () = shutdown.cancelled() => return,
        };
        let Some(handle) = current.borrow().clone() else {
            tracing::debug!(%peer, "local forward: link is down, connection closed");
            drop(tcp);
            continue;
        };
        let target = settings.local_target.clone();
        let timeout = settings.connect_timeout;
        let cancel = shutdown.child_token();
        tokio::spawn(async move {
            let open = tokio::time::timeout(
                timeout,
                handle.channel_open_direct_tcpip(
                    target.host.clone(),
                    u32::from(target.port),
                    peer.ip().to_string(),
                    u32::from(peer.port()),
                ),
            )
            .await;
            let channel = match open {
                Ok(Ok(ch)) => ch,
                Ok(Err(e)) => {
                    tracing::warn!(%target, error = %e, "local forward: the hub refused to open the target");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%target, "local forward: the hub did not open the target in time");
                    return;
                }
            };
            let ended = forward::pump(tcp, channel, cancel).await;
            if ended == Ended::LocalStalled {
                tracing::warn!(%peer, "local forward: the local client stopped reading; its connection was closed so the others keep flowing");
            } else {
                tracing::debug!(%peer, ?ended, "local forward connection ended");
            }
        });
    }
}
