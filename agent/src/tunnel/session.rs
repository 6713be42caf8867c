//! One SSH session to the hub: TCP connect, handshake with the pinned host key, device-key
//! login, each step under its own timeout; and the russh handler that serves the remote
//! forward's incoming connections.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, DisconnectReason, Handle, Msg};
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{Channel, ChannelOpenFailure};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::meter::{Killer, Meter, MeteredStream};
use super::pin::fingerprint;
use super::{Endpoint, TunnelSettings, forward};
use crate::events::LinkFault;

/// A session that completed login. Dropping it does not end the connection: call
/// [`Session::close`].
pub(crate) struct Session {
    pub handle: Arc<Handle<HubClient>>,
    pub meter: Arc<Meter>,
    pub killer: Killer,
    /// Fires once with the reason the session ended.
    pub ended: oneshot::Receiver<LinkFault>,
    /// Cancels every forwarded connection of this session.
    pub forwards: CancellationToken,
}

impl Session {
    /// Says goodbye if the link still carries it, then cuts the socket either way.
    pub async fn close(self, grace: Duration) {
        self.forwards.cancel();
        let _ = tokio::time::timeout(
            grace,
            self.handle
                .disconnect(russh::Disconnect::ByApplication, "agent stopping", "en"),
        )
        .await;
        self.killer.kill();
    }
}

/// Attempts that may be under way at once while the hub stays silent.
const RACING: usize = 3;

/// Connects and logs in, but never waits on one silent attempt: while
/// no attempt has heard a byte from the hub, a fresh one starts every `stagger`, up to
/// [`RACING`] at once (then the oldest silent one gives way). After a blackout, a SYN or
/// a banner lost on the dead line therefore costs at most `stagger`, not a whole timeout.
/// The first attempt to log in wins and the others are cut. A fault a person must fix
/// ends the race at once; otherwise it ends with the last fault when no attempt is left
/// or `handshake_timeout` has passed.
pub(crate) async fn connect_racing(
    settings: &Arc<TunnelSettings>,
    stagger: Duration,
) -> Result<Session, LinkFault> {
    use std::collections::VecDeque;
    use tokio::task::JoinSet;

    type Heard = Arc<std::sync::OnceLock<Arc<Meter>>>;
    let silent = |heard: &Heard| heard.get().is_none_or(|m| m.rx_bytes() == 0);
    let mut attempts: JoinSet<Result<Session, LinkFault>> = JoinSet::new();
    let mut running: VecDeque<(tokio::task::AbortHandle, Heard)> = VecDeque::new();
    let start = |attempts: &mut JoinSet<_>, running: &mut VecDeque<_>| {
        let heard: Heard = Arc::default();
        let (settings, slot) = (settings.clone(), heard.clone());
        let handle = attempts.spawn(async move { connect(&settings, &slot).await });
        running.push_back((handle, heard));
    };
    start(&mut attempts, &mut running);
    let deadline = tokio::time::Instant::now() + settings.handshake_timeout;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + stagger, stagger);
    let mut last = LinkFault::Silent {
        after: settings.handshake_timeout,
    };
    loop {
        tokio::select! {
            done = attempts.join_next_with_id() => {
                let Some(done) = done else { return Err(last) };
                let id = match &done {
                    Ok((id, _)) => *id,
                    Err(e) => e.id(),
                };
                running.retain(|(h, _)| h.id() != id);
                match done {
                    Ok((_, Ok(session))) => {
                        // A second winner at the same moment must not linger.
                        attempts.abort_all();
                        while let Some(other) = attempts.join_next().await {
                            if let Ok(Ok(other)) = other {
                                other.killer.kill();
                            }
                        }
                        return Ok(session);
                    }
                    Ok((_, Err(fault))) if fault.needs_person() => return Err(fault),
                    Ok((_, Err(fault))) => last = fault,
                    Err(e) => last = LinkFault::Other(format!("connection attempt failed: {e}")),
                }
                if running.is_empty() {
                    return Err(last);
                }
            }
            _ = tick.tick() => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(last);
                }
                if running.iter().all(|(_, heard)| silent(heard)) {
                    if running.len() >= RACING
                        && let Some((oldest, _)) = running.pop_front()
                    {
                        oldest.abort();
                    }
                    start(&mut attempts, &mut running);
                }
            }
        }
    }
}

/// Cuts the socket when dropped, unless defused: an attempt abandoned half-way leaves
/// nothing behind (russh's session task owns the stream once the handshake starts).
struct CutOnDrop(Option<Killer>);

impl CutOnDrop {
    fn defuse(mut self) -> Killer {
        self.0.take().expect("defused once")
    }
}

impl Drop for CutOnDrop {
    fn drop(&mut self) {
        if let Some(k) = self.0.take() {
            k.kill();
        }
    }
}

/// Connects and logs in, every step bounded by the settings' timeouts; publishes the
/// socket's meter in `heard` once TCP is up.
async fn connect(
    settings: &Arc<TunnelSettings>,
    heard: &std::sync::OnceLock<Arc<Meter>>,
) -> Result<Session, LinkFault> {
    let hub = &settings.hub;
    let tcp = tokio::time::timeout(
        settings.connect_timeout,
        TcpStream::connect((hub.host.as_str(), hub.port)),
    )
    .await
    .map_err(|_| {
        LinkFault::Unreachable(format!(
            "no answer from {hub} within {:?}",
            settings.connect_timeout
        ))
    })?
    .map_err(|e| LinkFault::Unreachable(format!("cannot connect to {hub}: {e}")))?;
    let (stream, meter, killer) =
        MeteredStream::new(tcp).map_err(|e| LinkFault::Other(format!("socket setup: {e}")))?;
    let killer = CutOnDrop(Some(killer));
    let _ = heard.set(meter.clone());

    let seen_key = Arc::new(Mutex::new(None));
    let (ended_tx, ended) = oneshot::channel();
    let forwards = CancellationToken::new();
    let handler = HubClient {
        settings: settings.clone(),
        seen_key: seen_key.clone(),
        ended: Some(ended_tx),
        forwards: forwards.clone(),
    };

    let login = async {
        let mut handle = client::connect_stream(settings.ssh_config(), stream, handler)
            .await
            .map_err(|e| {
                if let Some(seen) = seen_key.lock().ok().and_then(|s| s.clone()) {
                    LinkFault::HostKeyChanged {
                        seen,
                        expected: settings
                            .host_key
                            .as_ref()
                            .map(|p| p.fingerprint())
                            .unwrap_or_else(|| "no key pinned yet".into()),
                    }
                } else {
                    classify(&e)
                }
            })?;
        let key = PrivateKeyWithHashAlg::new(settings.device_key.clone(), None);
        let auth = handle
            .authenticate_publickey(settings.user.clone(), key)
            .await
            .map_err(|e| classify(&e))?;
        if !auth.success() {
            return Err(LinkFault::LoginRefused(format!(
                "the hub refused the device key for user `{}`",
                settings.user
            )));
        }
        Ok(handle)
    };
    // On any error below, dropping `killer` cuts the socket.
    let handle = match tokio::time::timeout(settings.handshake_timeout, login).await {
        Ok(Ok(handle)) => handle,
        Ok(Err(fault)) => return Err(fault),
        Err(_) => {
            return Err(LinkFault::Silent {
                after: settings.handshake_timeout,
            });
        }
    };
    Ok(Session {
        handle: Arc::new(handle),
        meter,
        killer: killer.defuse(),
        ended,
        forwards,
    })
}

/// Maps a russh error to what it means for the link.
pub(crate) fn classify(e: &russh::Error) -> LinkFault {
    match e {
        russh::Error::KeepaliveTimeout => LinkFault::Silent {
            after: Duration::ZERO,
        },
        russh::Error::IO(io) => LinkFault::Reset(io.to_string()),
        russh::Error::Disconnect | russh::Error::HUP | russh::Error::SendError => {
            LinkFault::Reset("the hub closed the connection".into())
        }
        other => LinkFault::Other(other.to_string()),
    }
}

/// The russh handler: checks the host key and serves the remote forward.
pub(crate) struct HubClient {
    settings: Arc<TunnelSettings>,
    seen_key: Arc<Mutex<Option<String>>>,
    ended: Option<oneshot::Sender<LinkFault>>,
    forwards: CancellationToken,
}

impl HubClient {
    fn report_end(&mut self, fault: LinkFault) {
        if let Some(tx) = self.ended.take() {
            let _ = tx.send(fault);
        }
    }
}

impl Drop for HubClient {
    fn drop(&mut self) {
        // The session task is gone; whoever waits must not wait forever.
        self.report_end(LinkFault::Reset("the SSH session ended".into()));
        self.forwards.cancel();
    }
}

impl client::Handler for HubClient {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = server_key else {
            if let Ok(mut seen) = self.seen_key.lock() {
                *seen = Some("a certificate (plain host keys are pinned)".into());
            }
            return Ok(false);
        };
        let trusted = self
            .settings
            .host_key
            .as_ref()
            .is_some_and(|pin| pin.matches(key));
        if !trusted && let Ok(mut seen) = self.seen_key.lock() {
            *seen = Some(fingerprint(key));
        }
        Ok(trusted)
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: Channel<Msg>,
        connected_address: &str,
        connected_port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: russh::client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let listen = &self.settings.remote_listen;
        if connected_port != u32::from(listen.port) {
            tracing::warn!(
                connected_address,
                connected_port,
                "the hub offered a forwarded connection for a port tether did not ask for; refused"
            );
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let target = self.settings.remote_target.clone();
        let timeout = self.settings.connect_timeout;
        let cancel = self.forwards.child_token();
        let origin = format!("{originator_address}:{originator_port}");
        // Connecting may take a while; the session loop must not wait for it.
        tokio::spawn(async move {
            let tcp = match tokio::time::timeout(
                timeout,
                TcpStream::connect((target.host.as_str(), target.port)),
            )
            .await
            {
                Ok(Ok(tcp)) => tcp,
                Ok(Err(e)) => {
                    tracing::warn!(%target, error = %e, "remote forward: cannot reach the office database");
                    reply.reject(ChannelOpenFailure::ConnectFailed).await;
                    return;
                }
                Err(_) => {
                    tracing::warn!(%target, "remote forward: office database did not answer in time");
                    reply.reject(ChannelOpenFailure::ConnectFailed).await;
                    return;
                }
            };
            reply.accept().await;
            let ended = forward::pump(tcp, channel, cancel).await;
            if ended == forward::Ended::LocalStalled {
                tracing::warn!(%origin, "remote forward: the office database stopped reading; its connection was closed so the others keep flowing");
            } else {
                tracing::debug!(%origin, ?ended, "remote forward connection ended");
            }
        });
        Ok(())
    }

    async fn disconnected(
        &mut self,
        reason: DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        let fault = match &reason {
            DisconnectReason::ReceivedDisconnect(info) => LinkFault::Reset(format!(
                "the hub ended the session: {}",
                if info.message.is_empty() {
                    "no reason given"
                } else {
                    &info.message
                }
            )),
            DisconnectReason::Error(e) => classify(e),
        };
        self.report_end(fault);
        match reason {
            DisconnectReason::ReceivedDisconnect(_) => Ok(()),
            DisconnectReason::Error(e) => Err(e),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}
