//! MQTT publisher: keeps the broker holding the site's retained status, state document and
//! Home Assistant discovery, whatever happens to the connection.
//!
//! rumqttc drops queued publishes when it reconnects and has no reconnect backoff, so this
//! task owns both: every ConnAck republishes everything (all retained), and every failed
//! poll waits out a [`Backoff`] before the next one. The producer of the state document
//! is never blocked: it writes a `watch`, newest wins.
//!
//! Bytes matter (the site may sit on a metered line): the state goes out on a change of
//! meaning (uptime ticking and lag jitter are not; see `outbox::comparable`), at most
//! once a second, and every `republish`; nothing else is periodic but MQTT keepalives.

mod discovery;
mod outbox;
mod tls;

use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, LastWill, MqttOptions, Outgoing,
    Packet, QoS, StateError, TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, BackoffPolicy};
pub use crate::events::MqttEvent;
use crate::secret::Secret;
pub use discovery::{MqttTopics, OFFLINE, ONLINE, discovery_messages};
use outbox::{Outbox, Request};
pub use tls::{TlsFiles, TlsSetupError, client_config};

/// Everything the publisher needs; the app maps the `[mqtt]` config section onto it.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: Option<String>,
    /// Exposed only where rumqttc takes it for the CONNECT packet.
    pub password: Option<Secret>,
    pub tls: Option<TlsFiles>,
    pub keepalive: Duration,
    pub republish: Duration,
    pub topics: MqttTopics,
    /// Shown as the device name in Home Assistant.
    pub site_name: String,
    /// First reconnect delay after a network failure.
    pub backoff_min: Duration,
    /// Longest reconnect delay after a network failure.
    pub backoff_max: Duration,
}

impl MqttSettings {
    /// Product defaults for a site: plain TCP, no login, keepalive 30 s, republish 300 s,
    /// topics under `tether/<site>` and `homeassistant`, reconnect backoff 1 s to 60 s.
    pub fn new(host: impl Into<String>, port: u16, site_id: &str, site_name: &str) -> Self {
        MqttSettings {
            host: host.into(),
            port,
            client_id: format!("tether-{site_id}"),
            username: None,
            password: None,
            tls: None,
            keepalive: Duration::from_secs(30),
            republish: Duration::from_secs(300),
            topics: MqttTopics::new("tether", site_id, "homeassistant"),
            site_name: site_name.to_owned(),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// Room for everything one ConnAck sends (status, subscription, 8 configs, state) with
/// slack, so a `try_publish` from the loop that also drives the client never fails.
const REQUEST_CAPACITY: usize = 64;
/// The state document and discovery configs are far below this; rumqttc's 10 KiB default
/// would cut a state with many long reasons.
const MAX_PACKET: usize = 256 * 1024;
/// TCP connect, TLS handshake and CONNECT/CONNACK together.
const CONNECT_TIMEOUT_S: u64 = 5;
/// A connection that lived this long counts as good: the backoff starts over.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Changes closer together than this go out as one (the newest).
const MIN_STATE_GAP: Duration = Duration::from_secs(1);
/// Explicit `offline` plus DISCONNECT on shutdown.
const CLOSE_BUDGET: Duration = Duration::from_millis(900);
/// A refused login or unusable TLS files will not fix themselves within seconds: retry
/// slowly (at least 30 s after jitter) so the broker is never hammered.
const REFUSED_POLICY: BackoffPolicy = BackoffPolicy {
    min: Duration::from_secs(40),
    max: Duration::from_secs(600),
    jitter_pct: 25,
};
const JITTER_PCT: u8 = 30;

/// Why a connection attempt or a connection failed, in words for the health view.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    reason: String,
    /// Retrying soon cannot help (login refused): use the slow backoff.
    refused: bool,
}

/// Runs until `shutdown`. Never returns early: every failure is reported on `events`
/// and retried after a backoff.
pub async fn run(
    settings: MqttSettings,
    mut state: watch::Receiver<String>,
    events: mpsc::Sender<MqttEvent>,
    shutdown: CancellationToken,
) {
    let mut reporter = Reporter::new(events.clone());
    let mut net_backoff = Backoff::new(BackoffPolicy {
        min: settings.backoff_min,
        max: settings.backoff_max.max(settings.backoff_min),
        jitter_pct: JITTER_PCT,
    });
    let mut refused_backoff = Backoff::new(REFUSED_POLICY);

    let transport = loop {
        match transport(&settings) {
            Ok(t) => break t,
            Err(e) => {
                let delay = refused_backoff.next_delay(rand::random());
                tracing::warn!(error = %e, retry_in = ?delay, "MQTT TLS setup failed");
                reporter.report(MqttEvent::Disconnected {
                    reason: e.to_string(),
                });
                reporter.try_flush();
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    };
    let (client, mut eventloop) = AsyncClient::new(options(&settings, transport), REQUEST_CAPACITY);
    eventloop
        .network_options
        .set_connection_timeout(CONNECT_TIMEOUT_S);

    let topics = settings.topics.clone();
    let discovery = discovery_messages(
        &topics.site,
        &settings.site_name,
        &topics,
        crate::version::current(),
    );
    let mut outbox = Outbox::new(topics.clone(), discovery, MIN_STATE_GAP);
    let republish_every = settings.republish.max(Duration::from_secs(1));
    let mut republish_at = Instant::now() + republish_every;
    let mut connected_at: Option<Instant> = None;
    let mut retry_at: Option<Instant> = None;
    let mut state_open = true;
    let mut last_logged: Option<String> = None;
    let broker = format!("{}:{}", settings.host, settings.port);

    loop {
        let connected = connected_at.is_some();
        let wake_at = outbox.wake_at();
        tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                if connected {
                    close(&client, &mut eventloop, &topics).await;
                }
                return;
            }
            polled = eventloop.poll(), if retry_at.is_none() => match polled {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let now = Instant::now();
                    connected_at = Some(now);
                    tracing::info!(broker = %broker, "connected to the MQTT broker");
                    last_logged = None;
                    reporter.report(MqttEvent::Connected);
                    let doc = state.borrow_and_update().clone();
                    let reqs = outbox.on_connected(&doc, now);
                    submit_all(&client, &mut outbox, reqs, now);
                    republish_at = now + republish_every;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let now = Instant::now();
                    let doc = state.borrow().clone();
                    let reqs = outbox.on_message(&p.topic, &p.payload, p.retain, &doc, now);
                    submit_all(&client, &mut outbox, reqs, now);
                }
                Ok(_) => {}
                Err(e) => {
                    if connected_at.take().is_some_and(|t| t.elapsed() >= STABLE_AFTER) {
                        net_backoff.reset();
                        refused_backoff.reset();
                    }
                    outbox.on_disconnected();
                    // rumqttc's text for incoming trouble, for whoever debugs; our own
                    // CONNECT (with the login) is never part of an error.
                    tracing::debug!(error = %e, "MQTT poll failed");
                    let failure = describe(&e, &broker);
                    let delay = if failure.refused {
                        refused_backoff.next_delay(rand::random())
                    } else {
                        net_backoff.next_delay(rand::random())
                    };
                    // The same failure again is news only at debug level.
                    if last_logged.as_deref() == Some(failure.reason.as_str()) {
                        tracing::debug!(reason = %failure.reason, retry_in = ?delay, "MQTT still unavailable");
                    } else {
                        tracing::warn!(reason = %failure.reason, retry_in = ?delay, "MQTT connection lost or refused");
                        last_logged = Some(failure.reason.clone());
                    }
                    reporter.report(MqttEvent::Disconnected { reason: failure.reason });
                    retry_at = Some(Instant::now() + delay);
                }
            },
            () = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                retry_at = None;
            }
            changed = state.changed(), if connected && state_open => {
                if changed.is_err() {
                    // The producer is gone (the agent is stopping); the last document stays.
                    state_open = false;
                    continue;
                }
                let now = Instant::now();
                let doc = state.borrow_and_update().clone();
                let reqs = outbox.on_state_changed(&doc, now);
                submit_all(&client, &mut outbox, reqs, now);
            }
            () = tokio::time::sleep_until(wake_at.unwrap_or_else(Instant::now)), if connected && wake_at.is_some() => {
                let now = Instant::now();
                let doc = state.borrow_and_update().clone();
                let reqs = outbox.on_wake(&doc, now);
                submit_all(&client, &mut outbox, reqs, now);
            }
            () = tokio::time::sleep_until(republish_at), if connected => {
                let now = Instant::now();
                republish_at = now + republish_every;
                let doc = state.borrow_and_update().clone();
                let reqs = outbox.on_republish(&doc, now);
                submit_all(&client, &mut outbox, reqs, now);
            }
            () = reporter.flush(), if reporter.has_unsent() => {}
        }
    }
}

/// Hands requests to the client without waiting. One it cannot take (its queue is
/// full) is dropped; the state goes again after a short gap, so newest still wins.
fn submit_all(
    client: &AsyncClient,
    outbox: &mut Outbox,
    reqs: impl IntoIterator<Item = Request>,
    now: Instant,
) {
    for req in reqs {
        if !submit(client, req) {
            outbox.retry_state(now);
        }
    }
}

/// Hands one request to the client without waiting; `false` if it could not take it.
fn submit(client: &AsyncClient, req: Request) -> bool {
    let result = match req {
        Request::Publish {
            topic,
            payload,
            retain,
        } => client.try_publish(topic, QoS::AtLeastOnce, retain, payload),
        Request::Subscribe { topic } => client.try_subscribe(topic, QoS::AtLeastOnce),
    };
    if let Err(e) = &result {
        tracing::debug!(error = %e, "MQTT client queue refused a request");
    }
    result.is_ok()
}

/// A clean stop: a DISCONNECT suppresses the last will, so `offline` is published
/// explicitly first. Bounded: a dead broker must not hold up the agent's exit.
async fn close(client: &AsyncClient, eventloop: &mut rumqttc::EventLoop, topics: &MqttTopics) {
    let _ = client.try_publish(topics.status(), QoS::AtLeastOnce, true, OFFLINE);
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(CLOSE_BUDGET, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

fn transport(settings: &MqttSettings) -> Result<Transport, TlsSetupError> {
    match &settings.tls {
        None => Ok(Transport::tcp()),
        Some(files) => Ok(Transport::tls_with_config(TlsConfiguration::Rustls(
            std::sync::Arc::new(client_config(files)?),
        ))),
    }
}

fn options(settings: &MqttSettings, transport: Transport) -> MqttOptions {
    let mut o = MqttOptions::new(&settings.client_id, &settings.host, settings.port);
    // rumqttc refuses keepalives under a second and sends whole seconds as u16.
    let keepalive = settings.keepalive.clamp(
        Duration::from_secs(1),
        Duration::from_secs(u64::from(u16::MAX)),
    );
    o.set_keep_alive(keepalive)
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_transport(transport)
        .set_last_will(LastWill::new(
            settings.topics.status(),
            OFFLINE,
            QoS::AtLeastOnce,
            true,
        ));
    if let Some(user) = &settings.username {
        o.set_credentials(user, settings.password.as_ref().map_or("", Secret::expose));
    }
    o
}

/// Words for a failure, built only from error kinds and addresses: rumqttc's own
/// messages can carry packets, and packets can carry the login.
fn describe(e: &ConnectionError, broker: &str) -> Failure {
    let plain = |reason: String| Failure {
        reason,
        refused: false,
    };
    match e {
        ConnectionError::ConnectionRefused(code) => match code {
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized => Failure {
                reason: format!(
                    "the broker {broker} refused the username or password (check mqtt.username and mqtt.password)"
                ),
                refused: true,
            },
            ConnectReturnCode::BadClientId => Failure {
                reason: format!("the broker {broker} refused the client id"),
                refused: true,
            },
            ConnectReturnCode::RefusedProtocolVersion => Failure {
                reason: format!("the broker {broker} does not accept MQTT 3.1.1"),
                refused: true,
            },
            ConnectReturnCode::ServiceUnavailable => {
                plain(format!("the broker {broker} says it is unavailable"))
            }
            ConnectReturnCode::Success => {
                plain(format!("the broker {broker} closed the connection"))
            }
        },
        ConnectionError::NetworkTimeout => plain(format!(
            "no answer from the broker {broker} within {CONNECT_TIMEOUT_S} s"
        )),
        ConnectionError::FlushTimeout => plain(format!("the broker {broker} stopped taking data")),
        ConnectionError::MqttState(StateError::AwaitPingResp) => plain(format!(
            "the broker {broker} stopped answering keepalive pings"
        )),
        ConnectionError::MqttState(StateError::Io(io))
        | ConnectionError::MqttState(StateError::Deserialization(rumqttc::Error::Io(io)))
        | ConnectionError::Io(io) => plain(io_words(io, broker)),
        ConnectionError::MqttState(StateError::ConnectionAborted) => {
            plain(format!("the broker {broker} closed the connection"))
        }
        ConnectionError::MqttState(_) | ConnectionError::NotConnAck(_) => plain(format!(
            "the broker {broker} broke the MQTT protocol; reconnecting"
        )),
        ConnectionError::Tls(t) => match rustls_cause(t) {
            Some(r) => plain(tls_words(r, broker)),
            None => match t {
                rumqttc::TlsError::Io(io) => plain(io_words(io, broker)),
                other => plain(format!("TLS with the broker {broker} failed: {other}")),
            },
        },
        ConnectionError::RequestsDone => plain("the MQTT client stopped".to_owned()),
    }
}

fn io_words(io: &std::io::Error, broker: &str) -> String {
    use std::io::ErrorKind as K;
    if let Some(r) = rustls_in_io(io) {
        return tls_words(r, broker);
    }
    match io.kind() {
        K::ConnectionRefused => format!("nothing accepts connections at {broker} (refused)"),
        K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
            format!("the broker {broker} closed the connection")
        }
        _ => format!("cannot reach the broker {broker}: {io}"),
    }
}

fn tls_words(r: &rustls::Error, broker: &str) -> String {
    match r {
        rustls::Error::InvalidCertificate(c) => format!(
            "the broker {broker} presented a certificate that is not trusted ({c:?}); check mqtt.ca_file and that the certificate names the host"
        ),
        rustls::Error::AlertReceived(a) => format!(
            "the broker {broker} ended the TLS handshake ({a:?}); a client certificate may be missing or not accepted"
        ),
        other => format!("TLS with the broker {broker} failed: {other}"),
    }
}

fn rustls_in_io(io: &std::io::Error) -> Option<&rustls::Error> {
    io.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

fn rustls_cause(t: &rumqttc::TlsError) -> Option<&rustls::Error> {
    match t {
        rumqttc::TlsError::TLS(r) => Some(r),
        rumqttc::TlsError::Io(io) => rustls_in_io(io),
        _ => None,
    }
}

/// Sends health-view events without ever blocking the MQTT loop; only changes are sent,
/// and when the channel is full the newest event waits for room.
struct Reporter {
    tx: mpsc::Sender<MqttEvent>,
    last: Option<MqttEvent>,
    unsent: Option<MqttEvent>,
}

impl Reporter {
    fn new(tx: mpsc::Sender<MqttEvent>) -> Self {
        Reporter {
            tx,
            last: None,
            unsent: None,
        }
    }

    fn report(&mut self, ev: MqttEvent) {
        if self.last.as_ref() == Some(&ev) {
            return;
        }
        self.last = Some(ev.clone());
        self.unsent = Some(ev);
        self.try_flush();
    }

    fn has_unsent(&self) -> bool {
        self.unsent.is_some()
    }

    fn try_flush(&mut self) {
        if let Some(ev) = self.unsent.take() {
            match self.tx.try_send(ev) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
                Err(mpsc::error::TrySendError::Full(ev)) => self.unsent = Some(ev),
            }
        }
    }

    /// Waits for room and sends the pending event; cancel-safe (the event stays).
    async fn flush(&mut self) {
        match self.tx.reserve().await {
            Ok(permit) => {
                if let Some(ev) = self.unsent.take() {
                    permit.send(ev);
                }
            }
            Err(_) => self.unsent = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_login_is_plain_words_and_slow() {
        let f = describe(
            &ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword),
            "127.0.0.1:1883",
        );
        assert!(f.refused);
        assert!(
            f.reason.contains("refused the username or password"),
            "{}",
            f.reason
        );
        let f = describe(
            &ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized),
            "b:1",
        );
        assert!(f.refused);
    }

    #[test]
    fn refused_policy_never_retries_within_30_s() {
        let mut b = Backoff::new(REFUSED_POLICY);
        for _ in 0..20 {
            assert!(b.next_delay(1.0) >= Duration::from_secs(30));
        }
    }

    #[test]
    fn network_errors_name_the_broker() {
        let e = ConnectionError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let f = describe(&e, "10.0.0.9:8883");
        assert!(!f.refused);
        assert!(f.reason.contains("10.0.0.9:8883"), "{}", f.reason);
    }

    #[test]
    fn debug_masks_the_password() {
        let mut s = MqttSettings::new("h", 1, "office", "Office");
        s.username = Some("u".into());
        s.password = Some(Secret::new("Mqtt-Pw-5e1c09"));
        for shown in [format!("{s:?}"), format!("{s:#?}")] {
            assert!(!shown.contains("Mqtt-Pw"), "{shown}");
        }
        let shown = format!("{s:?}");
        assert!(shown.contains("password: Some(***)"), "{shown}");
        assert!(shown.contains("username: Some(\"u\")"), "{shown}");
    }

    #[tokio::test]
    async fn reporter_sends_changes_only_and_never_blocks() {
        let (tx, mut rx) = mpsc::channel(1);
        let mut r = Reporter::new(tx);
        r.report(MqttEvent::Connected);
        r.report(MqttEvent::Connected);
        r.report(MqttEvent::Disconnected { reason: "a".into() });
        assert!(r.has_unsent());
        assert_eq!(rx.recv().await, Some(MqttEvent::Connected));
        r.flush().await;
        assert_eq!(
            rx.recv().await,
            Some(MqttEvent::Disconnected { reason: "a".into() })
        );
        assert!(!r.has_unsent());
    }
}
