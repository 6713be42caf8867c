//! The running agent: binds, spawns the edge tasks, and runs the health loop.
//!
//! [`run_with`] reads as the list of the agent's tasks, one small function each; they
//! talk to the health loop ([`health_loop`], the one owner of the state machine) only
//! through the channels in [`Wires`]. SIGTERM or SIGINT end everything within about a
//! second and a half.

pub mod health_loop;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{BoardBackend, Cipher, Config};
use crate::events::{Direction, Event, MqttEvent, TunnelEvent};
use crate::health::{Health, HealthMachine, HealthSettings};
use crate::journal::{Journal, State};
use crate::replication::{DbTarget, LinkState};
use crate::tunnel::{Endpoint, HostKeyPin, TunnelCommand, TunnelSettings};

use health_loop::Clock as _;
pub use health_loop::{outage_json, state_document};

/// How often the running agent repeats the doctor's checks.
const DOCTOR_EVERY: Duration = Duration::from_secs(6 * 3600);
/// How soon the doctor tries again when its checks could not run (a database that did
/// not answer the first time the link came up).
const DOCTOR_RETRY: Duration = Duration::from_secs(60);
/// How long the agent's tasks get to finish after shutdown before they are aborted.
const STOP_GRACE: Duration = Duration::from_millis(1500);

/// Runs until SIGTERM or SIGINT.
pub async fn run_until_signal(config: Config) -> Result<()> {
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
    let listener = tokio::net::TcpListener::bind((
        config.forwards.local_listen.host.as_str(),
        config.forwards.local_listen.port,
    ))
    .await
    .with_context(|| {
        format!(
            "cannot listen on forwards.local_listen {} (is another tether or a database using it?)",
            config.forwards.local_listen
        )
    })?;
    run(config, listener, shutdown).await
}

/// Binds the status page's listener when `[web]` asks for one.
pub async fn bind_web(config: &Config) -> Result<Option<tokio::net::TcpListener>> {
    let Some(addr) = &config.web.listen else {
        return Ok(None);
    };
    if !cfg!(feature = "web") {
        tracing::warn!("web.listen is set but this build has no status page (feature `web`)");
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind((addr.host.as_str(), addr.port))
        .await
        .with_context(|| format!("cannot listen on web.listen {addr} for the status page"))?;
    Ok(Some(listener))
}

/// Runs the agent with an already-bound local-forward listener until `shutdown`; binds
/// the status page's listener itself when `[web]` has one.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    let web = bind_web(&config).await?;
    run_with(config, listener, web, shutdown).await
}

/// The channels between the tasks and the health loop, and the shutdown token every task
/// watches. Each task takes clones of what it needs.
struct Wires {
    /// Observations for the health loop.
    events: mpsc::Sender<Event>,
    /// The tunnel's state as replication needs it.
    link: watch::Receiver<LinkState>,
    /// The health, from the health loop.
    health: watch::Receiver<Option<Health>>,
    /// The state document, from the health loop.
    doc: watch::Receiver<String>,
    /// The longest outage recorded, from the health loop.
    longest_outage: watch::Receiver<Duration>,
    /// Requests for the tunnel (the button's reconnect).
    commands: mpsc::Sender<TunnelCommand>,
    /// What both replication pollers share: the servers' clock offsets (each measures its
    /// own side; lag needs both) and their families (a mixed pair is refused).
    replication_shared: crate::replication::Shared,
    shutdown: CancellationToken,
}

/// Runs the agent with its listeners already bound (the status page's only when given)
/// until `shutdown`.
pub async fn run_with(
    config: Config,
    listener: tokio::net::TcpListener,
    web: Option<tokio::net::TcpListener>,
    shutdown: CancellationToken,
) -> Result<()> {
    let (journal, loaded) = open_journal(&config)?;
    let tunnel = Arc::new(tunnel_settings(
        &config,
        loaded.hub_key_fingerprint.as_deref(),
    )?);
    let status_listener = crate::status::bind(&config.status.socket).with_context(|| {
        format!(
            "cannot open the status socket {}",
            config.status.socket.display()
        )
    })?;

    let (events_tx, events_rx) = mpsc::channel::<Event>(64);
    let (tunnel_tx, tunnel_rx) = mpsc::channel::<TunnelEvent>(64);
    let (commands_tx, commands_rx) = mpsc::channel::<TunnelCommand>(4);
    let (link_tx, link_rx) = watch::channel(LinkState::default());
    let (doc_tx, doc_rx) = watch::channel(String::new());
    let (health_tx, health_rx) = watch::channel::<Option<Health>>(None);
    let (longest_tx, longest_rx) = watch::channel(Duration::ZERO);
    let wires = Wires {
        events: events_tx,
        link: link_rx,
        health: health_rx,
        doc: doc_rx,
        longest_outage: longest_rx,
        commands: commands_tx,
        replication_shared: Default::default(),
        shutdown: shutdown.clone(),
    };

    let mut tasks = JoinSet::new();
    let update = spawn_updates(&mut tasks, &config, &tunnel, &wires);
    tasks.spawn(crate::tunnel::run(
        tunnel,
        listener,
        tunnel_tx,
        commands_rx,
        shutdown.clone(),
    ));
    tasks.spawn(watch_the_link(tunnel_rx, link_tx, wires.events.clone()));
    tasks.spawn(doctor(&config, &wires));
    // The seed job (the office's first copy of the hub's data), before the replication
    // pollers, so its first report reaches health ahead of theirs.
    crate::seed::spawn(
        &config,
        &mut tasks,
        &wires.events,
        wires.link.clone(),
        shutdown.clone(),
    );
    if let Some(check) = divergence_check(&config, &wires) {
        tasks.spawn(check);
    }
    for direction in Direction::BOTH {
        tasks.spawn(replication(&config, direction, &wires));
    }
    if config.mqtt.enabled {
        spawn_mqtt(&mut tasks, &config, &wires);
    }
    spawn_status_page(&mut tasks, &config, web, &wires);
    tasks.spawn(crate::status::serve(
        status_listener,
        config.status.socket.clone(),
        wires.doc.clone(),
        shutdown.clone(),
    ));
    spawn_board(&mut tasks, &config, &wires)?;

    // Every task holds what it needs; the loop ends at shutdown, or once every task that
    // sends it events is gone.
    drop(wires);
    let clock = health_loop::SystemClock::new();
    let machine = HealthMachine::new(health_settings(&config), clock.now())
        .with_hub_connection(config.replication.hub_connection.clone());
    health_loop::HealthLoop::new(
        machine,
        loaded,
        clock,
        journal,
        health_loop::Systemd,
        update,
        health_loop::Outputs {
            doc: doc_tx,
            health: health_tx,
            longest_outage: longest_tx,
        },
    )
    .run(events_rx, shutdown.clone())
    .await;

    shutdown.cancel();
    // Every task watches the token; give them a bounded moment to finish.
    let _ = tokio::time::timeout(STOP_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    Ok(())
}

/// Creates the data dir and loads the journal; an unusable journal is set aside and
/// reported, never fatal.
fn open_journal(config: &Config) -> Result<(Journal, State)> {
    std::fs::create_dir_all(&config.data.dir)
        .with_context(|| format!("cannot create data.dir {}", config.data.dir.display()))?;
    let journal = Journal::new(&config.data.dir);
    let loaded = journal.load();
    if let Some((problem, aside)) = &loaded.problem {
        match aside {
            Some(p) => {
                tracing::warn!(%problem, moved_to = %p.display(), "state journal set aside; starting fresh")
            }
            None => tracing::warn!(%problem, "state journal unreadable; starting fresh"),
        }
    }
    Ok((journal, loaded.state))
}

fn health_settings(config: &Config) -> HealthSettings {
    HealthSettings {
        settle: config.timings.settle,
        alert_after: config.timings.alert_after,
        lag_ok: config.replication.lag_ok,
    }
}

/// Passes the tunnel's events on to the health loop, and keeps the link state that
/// replication watches: every (re)connection is news for replication (restart the IO
/// threads now), every loss drops the connections made through the old session.
async fn watch_the_link(
    mut tunnel: mpsc::Receiver<TunnelEvent>,
    link: watch::Sender<LinkState>,
    events: mpsc::Sender<Event>,
) {
    while let Some(event) = tunnel.recv().await {
        match event {
            TunnelEvent::Up => link.send_modify(|l| {
                l.ups += 1;
                l.up = true;
            }),
            TunnelEvent::Down { .. } => {
                link.send_if_modified(|l| {
                    let was_up = std::mem::replace(&mut l.up, false);
                    l.downs += u64::from(was_up);
                    was_up
                });
            }
            _ => {}
        }
        if events.send(Event::Tunnel(event)).await.is_err() {
            break;
        }
    }
}

/// The doctor, once the tunnel is first up and then every few hours, judging binary log
/// retention by the longest outage recorded so far; its findings feed health. When its
/// checks could not run (a database did not answer), that is logged and it tries again
/// soon: the replication pollers already show that trouble.
fn doctor(config: &Config, wires: &Wires) -> impl std::future::Future<Output = ()> + use<> {
    let (office, hub) = db_targets(config);
    let timeout = config.replication.query_timeout;
    let expectations = crate::doctor::expectations_of(config);
    let (mut link, longest, events, stop) = (
        wires.link.clone(),
        wires.longest_outage.clone(),
        wires.events.clone(),
        wires.shutdown.clone(),
    );
    async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                r = link.wait_for(|l| l.ups > 0) => if r.is_err() { return },
            }
            let expect = crate::doctor::Expectations {
                longest_outage: *longest.borrow(),
                ..expectations.clone()
            };
            let findings = tokio::select! {
                () = stop.cancelled() => return,
                f = crate::doctor::examine(&office, &hub, timeout, &expect) => f,
            };
            for f in &findings {
                tracing::info!(code = %f.code, message = %f.message, fix = %f.fix, "doctor");
            }
            let ran = !findings.iter().any(crate::doctor::could_not_run);
            if ran && events.send(Event::Doctor(findings)).await.is_err() {
                return;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(if ran { DOCTOR_EVERY } else { DOCTOR_RETRY }) => {}
            }
        }
    }
}

/// The divergence check: once a day at the configured hour, if tables are configured.
fn divergence_check(
    config: &Config,
    wires: &Wires,
) -> Option<impl std::future::Future<Output = ()> + use<>> {
    let hour = config.replication.checksum_hour?;
    if config.replication.checksum_tables.is_empty() {
        return None;
    }
    let (office, hub) = db_targets(config);
    let tables = config.replication.checksum_tables.clone();
    let (events, stop) = (wires.events.clone(), wires.shutdown.clone());
    Some(async move {
        loop {
            let wait = crate::doctor::until_hour(crate::doctor::local_seconds_of_day(), hour);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            let findings = tokio::select! {
                () = stop.cancelled() => return,
                f = crate::doctor::compare_tables(
                    &office, &hub, &tables, crate::doctor::command::CHECKSUM_TIMEOUT, 3, Duration::from_secs(30),
                ) => f,
            };
            for f in &findings {
                tracing::warn!(code = %f.code, message = %f.message, "divergence check");
            }
            if events.send(Event::Divergence(findings)).await.is_err() {
                return;
            }
            // Never twice in the same hour, whatever the clock does.
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(3600)) => {}
            }
        }
    })
}

/// One replication direction's poller: the office database directly for hub to office,
/// the hub's through the local forward for office to hub.
fn replication(
    config: &Config,
    direction: Direction,
    wires: &Wires,
) -> impl std::future::Future<Output = ()> + use<> {
    let (office, hub) = db_targets(config);
    let db = match direction {
        Direction::HubToOffice => office,
        Direction::OfficeToHub => hub,
    };
    crate::replication::run_side(
        crate::replication::SideSettings {
            direction,
            db,
            poll_interval: config.replication.poll_interval,
            heartbeat_interval: config.replication.heartbeat_interval,
            query_timeout: config.replication.query_timeout,
            restart_on_reconnect: config.replication.restart_on_reconnect,
            // The hub may replicate from several offices, each on its own connection;
            // the office's replica has the one from the hub.
            channel: match direction {
                Direction::HubToOffice => None,
                Direction::OfficeToHub => config.replication.hub_connection.clone(),
            },
        },
        wires.replication_shared.clone(),
        wires.link.clone(),
        wires.events.clone(),
        wires.shutdown.clone(),
    )
}

/// The update task (checks the hub for releases through the tunnel's own channels,
/// proves this version to the launcher, and ends the agent once a switch is requested);
/// its status is the state document's `update` block.
fn spawn_updates(
    tasks: &mut JoinSet<()>,
    config: &Config,
    tunnel: &TunnelSettings,
    wires: &Wires,
) -> watch::Receiver<crate::updates::UpdateStatus> {
    let (tx, rx) = watch::channel(crate::updates::UpdateStatus::new("idle"));
    tasks.spawn(crate::updates::run_updates(
        crate::updates::UpdateSettings::from_config(config),
        tunnel.channels.handle(),
        wires.health.clone(),
        tx,
        wires.shutdown.clone(),
    ));
    rx
}

/// The MQTT publisher, and the intake of its connection news for the health loop.
fn spawn_mqtt(tasks: &mut JoinSet<()>, config: &Config, wires: &Wires) {
    let (mqtt_tx, mut mqtt_rx) = mpsc::channel::<MqttEvent>(16);
    tasks.spawn(crate::mqtt::run(
        mqtt_settings(config),
        wires.doc.clone(),
        mqtt_tx,
        wires.shutdown.clone(),
    ));
    let events = wires.events.clone();
    let broker = config.mqtt.clone();
    tasks.spawn(async move {
        while let Some(event) = mqtt_rx.recv().await {
            let event = match event {
                MqttEvent::Disconnected { reason } => MqttEvent::Disconnected {
                    reason: name_the_broker(&reason, &broker.host, broker.port),
                },
                other => other,
            };
            if events.send(Event::Mqtt(event)).await.is_err() {
                break;
            }
        }
    });
}

/// The broker's address in an MQTT problem replaced by the config keys that hold it:
/// the state document carries no config values (it is on the LAN's status page too).
/// The host alone is replaced only as a whole name, so a broker called `mqtt` leaves
/// `mqtt.username` alone.
pub fn name_the_broker(reason: &str, host: &str, port: u16) -> String {
    let reason = reason.replace(&format!("{host}:{port}"), "mqtt.host:mqtt.port");
    if host.is_empty() {
        return reason;
    }
    let in_name = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    let mut out = String::with_capacity(reason.len());
    let mut rest = reason.as_str();
    while let Some(at) = rest.find(host) {
        let before = rest[..at].chars().next_back();
        // A name goes on after the host unless what follows ends the sentence (`host.`).
        let mut after = rest[at + host.len()..].chars();
        let continues = match after.next() {
            Some('.') => after.next().is_some_and(|c| c.is_ascii_alphanumeric()),
            Some(c) => in_name(c),
            None => false,
        };
        out.push_str(&rest[..at]);
        if before.is_some_and(in_name) || continues {
            out.push_str(host);
        } else {
            out.push_str("mqtt.host");
        }
        rest = &rest[at + host.len()..];
    }
    out.push_str(rest);
    out
}

/// The status page and its history, when `[web]` has a listener.
#[cfg(feature = "web")]
fn spawn_status_page(
    tasks: &mut JoinSet<()>,
    config: &Config,
    web: Option<tokio::net::TcpListener>,
    wires: &Wires,
) {
    let Some(web) = web else { return };
    let file = crate::history::HistoryFile::new(&config.data.dir);
    let (history, problem) = file.load();
    if let Some(problem) = problem {
        tracing::warn!(%problem, "status page history set aside; starting it fresh");
    }
    let (history_tx, history_rx) = watch::channel(Arc::new(history));
    tasks.spawn(crate::web::keep_history(
        file,
        wires.health.clone(),
        history_tx,
        wires.shutdown.clone(),
    ));
    let auth = match (&config.web.user, config.web.password_hash()) {
        (Some(user), Some(hash)) => Some(crate::web::Auth {
            user: user.clone(),
            hash,
        }),
        _ => None,
    };
    if let Ok(addr) = web.local_addr() {
        tracing::info!(%addr, auth = auth.is_some(), "status page");
    }
    tasks.spawn(crate::web::serve(
        web,
        crate::web::WebSettings {
            site_name: config.site.display_name().to_owned(),
            auth,
            started: std::time::Instant::now(),
        },
        crate::web::Sources {
            health: wires.health.clone(),
            doc: wires.doc.clone(),
            history: history_rx,
        },
        wires.shutdown.clone(),
    ));
}

#[cfg(not(feature = "web"))]
fn spawn_status_page(
    _tasks: &mut JoinSet<()>,
    _config: &Config,
    _web: Option<tokio::net::TcpListener>,
    _wires: &Wires,
) {
}

/// The LEDs and the button: the simulated board, GPIO, or none.
fn spawn_board(tasks: &mut JoinSet<()>, config: &Config, wires: &Wires) -> Result<()> {
    let (health, commands, stop) = (
        wires.health.clone(),
        wires.commands.clone(),
        wires.shutdown.clone(),
    );
    match config.board.backend {
        BoardBackend::Sim => {
            let path = config
                .board
                .sim_socket
                .clone()
                .context("board.sim_socket is required with board.backend = \"sim\"")?;
            tasks.spawn(async move {
                if let Err(e) = crate::leds::run_sim(path, health, commands, stop).await {
                    tracing::warn!(error = %e, "simulated board failed");
                }
            });
        }
        #[cfg(feature = "gpio")]
        BoardBackend::Gpio => {
            let board = config.board.clone();
            tasks.spawn(async move {
                if let Err(e) = crate::leds::run_gpio(board, health, commands, stop).await {
                    tracing::error!(error = %e, "the LEDs and button cannot be used");
                }
            });
        }
        #[cfg(not(feature = "gpio"))]
        BoardBackend::Gpio => {
            tracing::warn!(
                "board.backend = \"gpio\" needs a build with the `gpio` feature; LEDs stay dark"
            );
        }
        BoardBackend::None => {}
    }
    Ok(())
}

/// The two databases as the agent reaches them: the office's directly, the hub's through
/// the tunnel's local forward.
pub fn db_targets(config: &Config) -> (DbTarget, DbTarget) {
    let office = DbTarget {
        host: config.office_db.host.clone(),
        port: config.office_db.port,
        user: config.office_db.user.clone(),
        password: config.office_db.password.clone(),
        database: config.office_db.database.clone(),
    };
    let hub = DbTarget {
        host: config.forwards.local_listen.host.clone(),
        port: config.forwards.local_listen.port,
        user: config.hub_db.user.clone(),
        password: config.hub_db.password.clone(),
        database: config.hub_db.database.clone(),
    };
    (office, hub)
}

/// Builds the tunnel's settings from the config and the journal's pinned key.
pub fn tunnel_settings(config: &Config, pinned: Option<&str>) -> Result<TunnelSettings> {
    let key_path = config.key_path();
    let key = russh::keys::load_secret_key(&key_path, None).with_context(|| {
        format!(
            "cannot load the device key {} (run `tether enroll` to create it)",
            key_path.display()
        )
    })?;
    let pin = match (&config.hub.host_key, pinned) {
        (Some(text), _) => Some(HostKeyPin::parse(text).map_err(anyhow::Error::msg)?),
        (None, Some(fp)) => Some(HostKeyPin::parse(fp).map_err(anyhow::Error::msg)?),
        (None, None) => None,
    };
    let ep = |a: &crate::config::Addr| Endpoint::new(a.host.clone(), a.port);
    let mut s = TunnelSettings::new(
        Endpoint::new(config.hub.host.clone(), config.hub.port),
        config.hub.user.clone(),
        Arc::new(key),
        pin,
        ep(&config.forwards.remote_listen),
        ep(&config.forwards.remote_target),
        ep(&config.forwards.local_target),
    );
    let t = &config.timings;
    s.connect_timeout = t.connect_timeout;
    s.handshake_timeout = t.handshake_timeout;
    s.keepalive_interval = t.keepalive_interval;
    s.keepalive_max = t.keepalive_max;
    s.probe_interval = t.probe_interval;
    s.probe_timeout = t.probe_timeout;
    s.reconnect.min = t.reconnect_min;
    s.reconnect.max = t.reconnect_max;
    s.login.min = t.login_backoff_min;
    s.login.max = t.login_backoff_max;
    s.ssh.compression = config.hub.compression;
    s.ssh.ciphers = match config.hub.cipher {
        Cipher::Auto => Vec::new(),
        Cipher::Aes128Gcm => vec![russh::cipher::AES_128_GCM],
        Cipher::Aes256Gcm => vec![russh::cipher::AES_256_GCM],
        Cipher::Chacha20Poly1305 => vec![russh::cipher::CHACHA20_POLY1305],
    };
    Ok(s)
}

/// The MQTT publisher's settings from the `[mqtt]` section.
pub fn mqtt_settings(config: &Config) -> crate::mqtt::MqttSettings {
    let m = &config.mqtt;
    let mut s = crate::mqtt::MqttSettings::new(
        m.host.clone(),
        m.port,
        &config.site.id,
        config.site.display_name(),
    );
    s.client_id = config.mqtt_client_id();
    s.username = m.username.clone();
    s.password = m.password.clone();
    s.keepalive = m.keepalive;
    s.republish = m.republish;
    s.topics = crate::mqtt::MqttTopics::new(&m.prefix, &config.site.id, &m.discovery_prefix);
    if m.tls {
        s.tls = m.ca_file.clone().map(|ca_file| crate::mqtt::TlsFiles {
            ca_file,
            client_cert: m.client_cert.clone(),
            client_key: m.client_key.clone(),
        });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_mqtt_problem_names_the_broker_by_its_keys() {
        let reason = name_the_broker(
            "the broker mqtt.example.org:8883 refused the username or password (check mqtt.username and mqtt.password)",
            "mqtt.example.org",
            8883,
        );
        assert_eq!(
            reason,
            "the broker mqtt.host:mqtt.port refused the username or password (check mqtt.username and mqtt.password)"
        );
        let reason = name_the_broker(
            "TLS with the broker mqtt.example.org:8883 failed: certificate not valid for mqtt.example.org.",
            "mqtt.example.org",
            8883,
        );
        assert!(!reason.contains("example"), "{reason}");
        // A broker named like a word of the sentence.
        let reason = name_the_broker(
            "the broker mqtt:1883 refused the username or password (check mqtt.username and mqtt.password); certificate for mqtt",
            "mqtt",
            1883,
        );
        assert_eq!(
            reason,
            "the broker mqtt.host:mqtt.port refused the username or password (check mqtt.username and mqtt.password); certificate for mqtt.host"
        );
    }
}
