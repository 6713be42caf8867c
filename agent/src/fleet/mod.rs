//! `tether fleet`: the whole fleet for the person who runs the hub, read from the states
//! every site keeps retained on the broker (`<prefix>/<site>/status` and `.../state`).
//!
//! Once (`tether fleet`: a table; `--json` for scripts), or as a small exporter
//! (`--listen ADDR`): Prometheus `/metrics` labelled by site, the same table at `/` and
//! the JSON at `/fleet.json`, kept current from live messages. It needs nothing but the
//! broker, so it runs on the hub or anywhere that reaches the broker; the judging is
//! [`view`]'s, pure. A one-shot read knows it has every retained state when a message it
//! sends itself after subscribing comes back (the broker queues the retained messages
//! first); without that (a broker that will not let it publish) it reads for
//! `fleet.wait` and says the list may be incomplete.

pub mod view;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rumqttc::{
    AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeFilter, SubscribeReasonCode,
    TlsConfiguration, Transport,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, BackoffPolicy};
use crate::config::{Addr, FleetConfig};
use crate::mqtt::{TlsFiles, TlsSetupError, client_config};
pub use view::{Fleet, Silence, SiteView};

/// Where `tether fleet` looks without `--config`; without that file, the broker on this
/// machine with the sites' defaults.
pub const DEFAULT_CONFIG: &str = "/etc/tether/fleet.toml";

/// TCP connect, TLS handshake and CONNECT/CONNACK together.
const CONNECT_TIMEOUT_S: u64 = 5;
/// Retained states can be long (many reasons); rumqttc's 10 KiB default would cut them.
const MAX_PACKET: usize = 256 * 1024;
/// Reconnect delays of the exporter.
const RECONNECT: BackoffPolicy = BackoffPolicy {
    min: Duration::from_secs(1),
    max: Duration::from_secs(60),
    jitter_pct: 30,
};
/// A connection that lived this long counts as good: the backoff starts over.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// Why the fleet could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The broker could not be reached, refused the login, or broke off.
    #[error("{0}")]
    Broker(String),
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
}

/// The outcome of one read.
pub struct Reading {
    pub fleet: Fleet,
    /// The broker confirmed it had sent every retained state.
    pub complete: bool,
}

fn broker(c: &FleetConfig) -> String {
    Addr::new(&c.mqtt.host, c.mqtt.port).to_string()
}

fn client_id(c: &FleetConfig) -> String {
    c.mqtt
        .client_id
        .clone()
        .unwrap_or_else(|| format!("tether-fleet-{:08x}", rand::random::<u32>()))
}

fn options(c: &FleetConfig, id: &str) -> Result<MqttOptions, TlsSetupError> {
    let m = &c.mqtt;
    let mut o = MqttOptions::new(id, &m.host, m.port);
    let keepalive = m.keepalive.clamp(
        Duration::from_secs(1),
        Duration::from_secs(u64::from(u16::MAX)),
    );
    o.set_keep_alive(keepalive)
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET);
    if m.tls
        && let Some(ca_file) = &m.ca_file
    {
        let files = TlsFiles {
            ca_file: ca_file.clone(),
            client_cert: m.client_cert.clone(),
            client_key: m.client_key.clone(),
        };
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(client_config(&files)?),
        )));
    }
    if let Some(user) = &m.username {
        // The password leaves its Secret only here, for the broker.
        o.set_credentials(
            user,
            m.password.as_ref().map(|p| p.expose()).unwrap_or_default(),
        );
    }
    Ok(o)
}

/// The sites' status and state topics.
fn filters(prefix: &str) -> Vec<SubscribeFilter> {
    ["status", "state"]
        .into_iter()
        .map(|kind| SubscribeFilter::new(format!("{prefix}/+/{kind}"), QoS::AtLeastOnce))
        .collect()
}

/// Words for a refused subscription (the account may not read the sites' topics).
fn refused(prefix: &str, broker: &str) -> FleetError {
    FleetError::Broker(format!(
        "the broker {broker} refused to let this account read {prefix}/+/status and {prefix}/+/state (check its ACL)"
    ))
}

/// Reads every retained status and state once, within `fleet.wait`.
pub async fn read_once(c: &FleetConfig) -> Result<Reading, FleetError> {
    let id = client_id(c);
    let (client, mut eventloop) = AsyncClient::new(options(c, &id)?, 16);
    eventloop
        .network_options
        .set_connection_timeout(CONNECT_TIMEOUT_S);
    let broker = broker(c);
    let prefix = c.mqtt.prefix.as_str();
    // A topic of this reader's own: its message comes back after the retained ones.
    let marker = format!("{prefix}/_fleet/{id}");
    let mut wanted = filters(prefix);
    wanted.push(SubscribeFilter::new(marker.clone(), QoS::AtLeastOnce));
    let _ = client.try_subscribe_many(wanted);
    let mut fleet = Fleet::new(prefix, c.fleet.republish);
    let deadline = Instant::now() + c.fleet.wait;
    let mut complete = false;
    let mut connected = false;
    loop {
        let Ok(polled) = tokio::time::timeout_at(deadline, eventloop.poll()).await else {
            if !connected {
                return Err(FleetError::Broker(format!(
                    "no answer from the broker {broker} within {}",
                    humantime::format_duration(c.fleet.wait)
                )));
            }
            break;
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(_))) => connected = true,
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let codes = &ack.return_codes;
                if codes
                    .iter()
                    .take(2)
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    return Err(refused(prefix, &broker));
                }
                if !matches!(codes.get(2), Some(SubscribeReasonCode::Failure)) {
                    let _ = client.try_publish(&marker, QoS::AtLeastOnce, false, "end");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if p.topic == marker {
                    complete = true;
                    break;
                }
                fleet.observe(&p.topic, &p.payload, p.retain, SystemTime::now());
            }
            Ok(_) => {}
            Err(e) => {
                return Err(FleetError::Broker(
                    crate::mqtt::describe(&e, &broker).reason,
                ));
            }
        }
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(300), async {
        while !matches!(
            eventloop.poll().await,
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_)
        ) {}
    })
    .await;
    Ok(Reading { fleet, complete })
}

/// What the exporter serves from: the view and whether it is current.
#[derive(Clone)]
struct Shared(Arc<Mutex<(Fleet, bool)>>);

impl Shared {
    fn update(&self, f: impl FnOnce(&mut Fleet, &mut bool)) {
        if let Ok(mut g) = self.0.lock() {
            let (fleet, connected) = &mut *g;
            f(fleet, connected);
        }
    }

    #[cfg(feature = "web")]
    fn snapshot(&self) -> Option<(Fleet, bool)> {
        self.0.lock().ok().map(|g| g.clone())
    }
}

/// Keeps the view current from the broker (reconnecting with backoff) and serves it on
/// `listener` until `shutdown`.
pub async fn serve(c: FleetConfig, listener: tokio::net::TcpListener, shutdown: CancellationToken) {
    let shared = Shared(Arc::new(Mutex::new((
        Fleet::new(&c.mqtt.prefix, c.fleet.republish),
        false,
    ))));
    tokio::join!(
        follow(&c, shared.clone(), shutdown.clone()),
        http::serve(listener, shared, shutdown),
    );
}

/// The subscription behind the exporter: every message goes into the view; the last
/// state of a site the broker no longer has stays until it says otherwise.
async fn follow(c: &FleetConfig, shared: Shared, shutdown: CancellationToken) {
    let broker = broker(c);
    let id = client_id(c);
    let mut backoff = Backoff::new(RECONNECT);
    let options = loop {
        match options(c, &id) {
            Ok(o) => break o,
            Err(e) => {
                tracing::warn!(error = %e, "MQTT TLS setup failed");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff.next_delay(rand::random())) => {}
                }
            }
        }
    };
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    eventloop
        .network_options
        .set_connection_timeout(CONNECT_TIMEOUT_S);
    let mut connected_at: Option<Instant> = None;
    let mut last_failure: Option<String> = None;
    loop {
        let polled = tokio::select! {
            () = shutdown.cancelled() => break,
            p = eventloop.poll() => p,
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                connected_at = Some(Instant::now());
                last_failure = None;
                tracing::info!(broker = %broker, "fleet view connected to the broker");
                // A clean session: subscribe again after every connect.
                let _ = client.try_subscribe_many(filters(&c.mqtt.prefix));
                shared.update(|_, connected| *connected = true);
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    tracing::warn!("{}", refused(&c.mqtt.prefix, &broker));
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let now = SystemTime::now();
                shared.update(|fleet, _| {
                    fleet.observe(&p.topic, &p.payload, p.retain, now);
                });
            }
            Ok(_) => {}
            Err(e) => {
                shared.update(|_, connected| *connected = false);
                if connected_at
                    .take()
                    .is_some_and(|t| t.elapsed() >= STABLE_AFTER)
                {
                    backoff.reset();
                }
                let reason = crate::mqtt::describe(&e, &broker).reason;
                let delay = backoff.next_delay(rand::random());
                if last_failure.as_deref() != Some(reason.as_str()) {
                    tracing::warn!(%reason, retry_in = ?delay, "fleet view lost the broker");
                    last_failure = Some(reason);
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    let _ = client.try_disconnect();
}

#[cfg(feature = "web")]
mod http {
    //! The exporter's HTTP side: the status page's request parser and answer type, its
    //! limits (connections, head size and time, a budget per connection), three routes.

    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::Semaphore;
    use tokio_util::sync::CancellationToken;

    use super::Shared;
    use super::view::{self, Fleet};
    use crate::web::{CONNECTION_BUDGET, MAX_CONNECTIONS, Parsed, Request, Response, read_head};

    /// The answer to one request. Pure.
    pub(super) fn route(
        req: &Request,
        fleet: &Fleet,
        connected: bool,
        now: SystemTime,
    ) -> Response {
        let answer = |status, content_type, body: String| Response {
            status,
            content_type,
            body,
            extra: Vec::new(),
        };
        if req.method != "GET" && req.method != "HEAD" {
            let mut r = answer(
                405,
                "text/plain; charset=utf-8",
                "Only GET and HEAD.\n".into(),
            );
            r.extra.push(("Allow", "GET, HEAD"));
            return r;
        }
        let sites = fleet.view(now);
        match req.path.as_str() {
            "/metrics" => answer(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                view::metrics(&sites, connected),
            ),
            "/" => {
                let mut body = view::table(&sites, now, fleet.silent_after());
                if !connected {
                    body.push_str(
                        "\nNot connected to the broker: these are the last states read.\n",
                    );
                }
                answer(200, "text/plain; charset=utf-8", body)
            }
            "/fleet.json" => answer(
                200,
                "application/json",
                view::json(&sites, now, fleet.silent_after(), connected).to_string(),
            ),
            _ => answer(
                404,
                "text/plain; charset=utf-8",
                "Not found: try /metrics, / or /fleet.json.\n".into(),
            ),
        }
    }

    pub(super) async fn serve(listener: TcpListener, shared: Shared, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            let conn = tokio::select! {
                r = listener.accept() => r,
                () = shutdown.cancelled() => break,
            };
            let Ok((stream, _)) = conn else {
                // Transient (EMFILE and the like): pause rather than spin.
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    () = shutdown.cancelled() => break,
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let shared = shared.clone();
            tasks.spawn(async move {
                let _ = tokio::time::timeout(CONNECTION_BUDGET, connection(stream, &shared)).await;
                drop(slot);
            });
            while tasks.try_join_next().is_some() {}
        }
        tasks.abort_all();
    }

    async fn connection(mut stream: TcpStream, shared: &Shared) {
        let (response, head_only) = match read_head(&mut stream).await {
            Err(_) | Ok(Parsed::Incomplete) => return,
            Ok(Parsed::Bad) => (
                Response {
                    status: 400,
                    content_type: "text/plain; charset=utf-8",
                    body: "Bad request.\n".into(),
                    extra: Vec::new(),
                },
                false,
            ),
            Ok(Parsed::Done(req)) => {
                let Some((fleet, connected)) = shared.snapshot() else {
                    return;
                };
                (
                    route(&req, &fleet, connected, SystemTime::now()),
                    req.method == "HEAD",
                )
            }
        };
        let _ = stream.write_all(&response.to_bytes(head_only)).await;
        let _ = stream.shutdown().await;
    }
}

#[cfg(not(feature = "web"))]
mod http {
    use super::Shared;
    use tokio_util::sync::CancellationToken;

    pub(super) async fn serve(
        _listener: tokio::net::TcpListener,
        _shared: Shared,
        _shutdown: CancellationToken,
    ) {
        tracing::error!("this build has no HTTP server (feature `web`): nothing is served");
    }
}

/// The fleet view's file: `--config` if given (it must exist), else the default path if
/// it exists, else every default (the broker on this machine).
pub fn load_config(explicit: Option<&Path>) -> Result<FleetConfig, crate::config::ConfigError> {
    match explicit {
        Some(path) => FleetConfig::load(path),
        None if Path::new(DEFAULT_CONFIG).exists() => FleetConfig::load(DEFAULT_CONFIG),
        None => Ok(FleetConfig::default()),
    }
}

/// `tether fleet`: exit 0 once shown, 1 when the broker cannot be read, 2 for a bad
/// config.
pub fn command(config: Option<PathBuf>, json: bool, listen: Option<Addr>) -> ExitCode {
    let mut c = match load_config(config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(crate::cli::EXIT_USAGE);
        }
    };
    if listen.is_some() {
        c.fleet.listen = listen;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tether fleet: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(addr) = c.fleet.listen.clone() {
        crate::logging::init("info");
        return match rt.block_on(exporter(c, &addr)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tether fleet: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match rt.block_on(read_once(&c)) {
        Ok(reading) => {
            let now = SystemTime::now();
            let sites = reading.fleet.view(now);
            let silent_after = reading.fleet.silent_after();
            if json {
                println!(
                    "{}",
                    view::json(&sites, now, silent_after, reading.complete)
                );
            } else {
                print!("{}", view::table(&sites, now, silent_after));
                if !reading.complete {
                    println!(
                        "(The broker {} did not confirm within {} that it had sent every retained state: sites may be missing.)",
                        broker(&c),
                        humantime::format_duration(c.fleet.wait)
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tether fleet: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The exporter until SIGTERM or SIGINT.
async fn exporter(c: FleetConfig, addr: &Addr) -> anyhow::Result<()> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind((addr.host.as_str(), addr.port))
        .await
        .with_context(|| format!("cannot listen on {addr} for the fleet's metrics"))?;
    tracing::info!(%addr, broker = %broker(&c), "fleet view: /metrics, / and /fleet.json");
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
        }
        signals.cancel();
    });
    serve(c, listener, shutdown).await;
    Ok(())
}

#[cfg(all(test, feature = "web"))]
mod tests {
    use super::*;
    use crate::web::Request;

    fn get(path: &str) -> Request {
        Request {
            method: "GET".into(),
            path: path.into(),
            authorization: None,
        }
    }

    #[test]
    fn routes_serve_metrics_table_and_json_and_nothing_else() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut fleet = Fleet::new("tether", Duration::from_secs(300));
        fleet.observe("tether/office-1/status", b"offline", true, now);
        let m = http::route(&get("/metrics"), &fleet, true, now);
        assert_eq!(
            (m.status, m.content_type),
            (200, "text/plain; version=0.0.4; charset=utf-8")
        );
        assert!(
            m.body.contains("tether_silent{site=\"office-1\"} 1"),
            "{}",
            m.body
        );
        let t = http::route(&get("/"), &fleet, false, now);
        assert!(t.body.contains("office-1  SILENT (offline)"), "{}", t.body);
        assert!(t.body.contains("Not connected to the broker"), "{}", t.body);
        let j = http::route(&get("/fleet.json"), &fleet, true, now);
        let doc: serde_json::Value = serde_json::from_str(&j.body).unwrap();
        assert_eq!(doc["sites"][0]["silent"], "offline");
        assert_eq!(
            http::route(&get("/status.json"), &fleet, true, now).status,
            404
        );
        let mut post = get("/metrics");
        post.method = "POST".into();
        assert_eq!(http::route(&post, &fleet, true, now).status, 405);
    }
}
