//! One SSH session to the hub: TCP connect, handshake with the pinned host key, device-key
//! login, each step under its own timeout; and the russh handler that serves the remote
//! forward's incoming connections.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use russh::client::{self, DisconnectReason, Handle, Msg};
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{Channel, ChannelOpenFailure};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::meter::{Killer, Meter, MeteredStream};
use super::pin::{HostKeyPin, fingerprint};
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
    pub cancel_forwards: CancellationToken,
}

impl Session {
    /// Says goodbye if the link still carries it, then cuts the socket either way.
    pub async fn close(self, grace: Duration) {
        self.cancel_forwards.cancel();
        let _ = tokio::time::timeout(
            grace,
            self.handle
                .disconnect(russh::Disconnect::ByApplication, "agent stopping", "en"),
        )
        .await;
        self.killer.kill();
    }
}

/// Where an attempt publishes its socket's meter once TCP is up, so the supervisor can
/// tell whether the hub has said anything to it yet.
pub(crate) type MeterSlot = Arc<OnceLock<Arc<Meter>>>;

/// Whether the attempt publishing in `slot` has received a byte from the hub.
pub(crate) fn heard_from_hub(slot: &MeterSlot) -> bool {
    slot.get().is_some_and(|meter| meter.rx_bytes() > 0)
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
        if let Some(killer) = self.0.take() {
            killer.kill();
        }
    }
}

/// Connects and logs in, every step bounded by the settings' timeouts; publishes the
/// socket's meter in `meter_slot` once TCP is up. The remote forward's connections will
/// be tasks on `forwards`.
pub(crate) async fn connect(
    settings: &Arc<TunnelSettings>,
    meter_slot: &MeterSlot,
    forwards: TaskTracker,
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
    let _ = meter_slot.set(meter.clone());

    let seen_key = Arc::new(Mutex::new(None));
    let (ended_tx, ended) = oneshot::channel();
    let cancel_forwards = CancellationToken::new();
    let handler = HubClient {
        settings: settings.clone(),
        seen_key: seen_key.clone(),
        ended: Some(ended_tx),
        forwards,
        cancel_forwards: cancel_forwards.clone(),
    };

    let login = async {
        let mut handle = client::connect_stream(settings.ssh_config(), stream, handler)
            .await
            .map_err(|e| {
                let seen = seen_key.lock().ok().and_then(|seen| seen.clone());
                handshake_fault(&e, seen, settings.host_key.as_ref())
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
        cancel_forwards,
    })
}

/// Why a handshake failed: a host key other than the pinned one (`seen`, when the handler
/// refused one) needs a person; anything else is what the error says.
fn handshake_fault(e: &russh::Error, seen: Option<String>, pin: Option<&HostKeyPin>) -> LinkFault {
    match seen {
        Some(seen) => LinkFault::HostKeyChanged {
            seen,
            expected: pin
                .map(HostKeyPin::fingerprint)
                .unwrap_or_else(|| "no key pinned yet".into()),
        },
        None => classify(e),
    }
}

/// Asks the hub to listen for the remote forward, bounded by the handshake timeout.
pub(crate) async fn request_remote_forward(
    handle: Arc<Handle<HubClient>>,
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
        Ok(Err(e)) => Err(forward_refusal(&e, listen)),
    }
}

/// What a failed request for the remote forward means: a refusal says the port is taken
/// (usually by our own stale session on the hub), the rest is the link's.
fn forward_refusal(e: &russh::Error, listen: &Endpoint) -> LinkFault {
    match e {
        russh::Error::RequestDenied => LinkFault::RemoteForwardRefused {
            listen: listen.to_string(),
        },
        other => classify(other),
    }
}

/// A fault russh reports as silence carries no duration; this gives it the time the
/// socket has in fact been silent.
pub(crate) fn with_silence(fault: LinkFault, silent_for: Duration) -> LinkFault {
    match fault {
        LinkFault::Silent { after } if after.is_zero() => LinkFault::Silent { after: silent_for },
        other => other,
    }
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
    /// Where the remote forward's connections run, so shutdown can wait for them.
    forwards: TaskTracker,
    cancel_forwards: CancellationToken,
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
        self.cancel_forwards.cancel();
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
        // Connecting may take a while; the session loop must not wait for it.
        self.forwards.spawn(forward::serve_remote(
            channel,
            reply,
            self.settings.remote_target.clone(),
            self.settings.connect_timeout,
            format!("{originator_address}:{originator_port}"),
            self.cancel_forwards.child_token(),
        ));
        Ok(())
    }

    async fn disconnected(
        &mut self,
        reason: DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        let fault = match &reason {
            DisconnectReason::ReceivedDisconnect(info) => hub_ended(&info.message),
            DisconnectReason::Error(e) => classify(e),
        };
        self.report_end(fault);
        match reason {
            DisconnectReason::ReceivedDisconnect(_) => Ok(()),
            DisconnectReason::Error(e) => Err(e),
        }
    }
}

/// The hub said goodbye, with `message` as its reason.
fn hub_ended(message: &str) -> LinkFault {
    let reason = if message.is_empty() {
        "no reason given"
    } else {
        message
    };
    LinkFault::Reset(format!("the hub ended the session: {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn russh_errors_map_to_what_they_mean_for_the_link() {
        assert_eq!(
            classify(&russh::Error::KeepaliveTimeout),
            LinkFault::Silent {
                after: Duration::ZERO
            }
        );
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(
            classify(&russh::Error::IO(io)),
            LinkFault::Reset("connection reset".into())
        );
        for closed in [
            russh::Error::Disconnect,
            russh::Error::HUP,
            russh::Error::SendError,
        ] {
            assert_eq!(
                classify(&closed),
                LinkFault::Reset("the hub closed the connection".into())
            );
        }
        assert!(matches!(
            classify(&russh::Error::Version),
            LinkFault::Other(_)
        ));
        for e in [
            russh::Error::KeepaliveTimeout,
            russh::Error::HUP,
            russh::Error::Version,
        ] {
            assert!(!classify(&e).needs_person(), "{e:?}");
        }
    }

    #[test]
    fn a_refused_host_key_names_both_keys_and_needs_a_person() {
        let pin = HostKeyPin::parse("SHA256:abc").unwrap();
        let fault = handshake_fault(
            &russh::Error::UnknownKey,
            Some("SHA256:xyz".into()),
            Some(&pin),
        );
        assert_eq!(
            fault,
            LinkFault::HostKeyChanged {
                seen: "SHA256:xyz".into(),
                expected: "SHA256:abc".into()
            }
        );
        assert!(fault.needs_person());
        assert_eq!(
            handshake_fault(&russh::Error::UnknownKey, Some("SHA256:xyz".into()), None),
            LinkFault::HostKeyChanged {
                seen: "SHA256:xyz".into(),
                expected: "no key pinned yet".into()
            }
        );
        // Without a refused key, the error itself.
        assert_eq!(
            handshake_fault(&russh::Error::HUP, None, Some(&pin)),
            LinkFault::Reset("the hub closed the connection".into())
        );
    }

    #[test]
    fn a_refused_forward_request_is_a_taken_port_and_other_errors_are_the_links() {
        let listen = Endpoint::new("127.0.0.1", 3308);
        assert_eq!(
            forward_refusal(&russh::Error::RequestDenied, &listen),
            LinkFault::RemoteForwardRefused {
                listen: "127.0.0.1:3308".into()
            }
        );
        assert_eq!(
            forward_refusal(&russh::Error::HUP, &listen),
            LinkFault::Reset("the hub closed the connection".into())
        );
    }

    #[test]
    fn silence_without_a_duration_gets_the_sockets() {
        let ten = Duration::from_secs(10);
        assert_eq!(
            with_silence(
                LinkFault::Silent {
                    after: Duration::ZERO
                },
                ten
            ),
            LinkFault::Silent { after: ten }
        );
        let known = LinkFault::Silent {
            after: Duration::from_secs(15),
        };
        assert_eq!(with_silence(known.clone(), ten), known);
        let reset = LinkFault::Reset("x".into());
        assert_eq!(with_silence(reset.clone(), ten), reset);
    }

    #[test]
    fn the_hubs_goodbye_is_quoted_or_said_to_have_no_reason() {
        assert_eq!(
            hub_ended("Too many authentication failures"),
            LinkFault::Reset("the hub ended the session: Too many authentication failures".into())
        );
        assert_eq!(
            hub_ended(""),
            LinkFault::Reset("the hub ended the session: no reason given".into())
        );
    }
}
