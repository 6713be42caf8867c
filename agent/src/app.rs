//! The running agent: wires the edge tasks to the health loop and renders its output.
//!
//! One owner (the health loop) holds the state machine; the tunnel and the other edge
//! tasks send it events; it publishes the state document to the status socket and saves
//! the journal. SIGTERM or SIGINT end everything within about a second.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{BoardBackend, Cipher, Config};
use crate::events::{Event, Stamp, TunnelEvent};
use crate::health::{Health, HealthMachine, HealthSettings, Verdict};
use crate::journal::{Journal, State};
use crate::tunnel::{Endpoint, HostKeyPin, TunnelCommand, TunnelSettings};

/// How often time alone is fed to the state machine.
const TICK: Duration = Duration::from_millis(250);

/// How often the health loop pings systemd's watchdog (the unit allows 10 s).
const WATCHDOG_PING: Duration = Duration::from_secs(1);
/// How often a journal that could not be written is tried again.
const JOURNAL_RETRY: Duration = Duration::from_secs(30);

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

/// Bound on one CHECKSUM TABLE (it reads the whole table).
const CHECKSUM_TIMEOUT: Duration = Duration::from_secs(600);

/// The divergence check now (what the agent runs daily at `checksum_hour`): each
/// configured table compared on both sides, a difference checked `tries` times, `settle`
/// apart.
pub async fn divergence(
    config: &Config,
    tries: u32,
    settle: Duration,
) -> Vec<crate::events::Finding> {
    let (office, hub) = db_targets(config);
    crate::doctor::compare_tables(
        &office,
        &hub,
        &config.replication.checksum_tables,
        CHECKSUM_TIMEOUT,
        tries,
        settle,
    )
    .await
}

/// How often the running agent repeats the doctor's checks.
const DOCTOR_EVERY: Duration = Duration::from_secs(6 * 3600);

/// The two databases as the agent reaches them: the office's directly, the hub's through
/// the tunnel's local forward.
pub fn db_targets(config: &Config) -> (crate::replication::DbTarget, crate::replication::DbTarget) {
    let office = crate::replication::DbTarget {
        host: config.office_db.host.clone(),
        port: config.office_db.port,
        user: config.office_db.user.clone(),
        password: config.office_db.password.clone(),
        database: config.office_db.database.clone(),
    };
    let hub = crate::replication::DbTarget {
        host: config.forwards.local_listen.host.clone(),
        port: config.forwards.local_listen.port,
        user: config.hub_db.user.clone(),
        password: config.hub_db.password.clone(),
        database: config.hub_db.database.clone(),
    };
    (office, hub)
}

/// `tether doctor`: examines both databases (the hub's through the running agent's local
/// forward) and, with `timestamps`, samples that column for the minute-equals-month
/// mistake. Returns the findings.
pub async fn doctor(
    config: &Config,
    timestamps: Option<&str>,
) -> Result<Vec<crate::events::Finding>> {
    let (office, hub) = db_targets(config);
    let timeout = config.replication.query_timeout.max(Duration::from_secs(5));
    let mut findings = crate::doctor::examine(&office, &hub, timeout, &Default::default()).await;
    if let Some(column) = timestamps {
        let samples = crate::doctor::sample_column(&office, timeout, column)
            .await
            .map_err(anyhow::Error::msg)?;
        match crate::doctor::minute_equals_month(column, &samples) {
            Some(f) => findings.push(f),
            None => println!(
                "{column}: {} values sampled; minutes and months look independent.",
                samples.len()
            ),
        }
    }
    if findings
        .iter()
        .any(|f| crate::doctor::SETUP_CODES.contains(&f.code.as_str()))
    {
        println!("The recommended replication setup, with reasons:\n");
        println!("{}\n", replication_setup(config));
    }
    Ok(findings)
}

/// The replication setup for both databases, explained, as this box's forwards see them.
fn replication_setup(config: &Config) -> String {
    let f = &config.forwards;
    crate::hubkit::replication_setup_explained(
        (
            match f.local_listen.host.as_str() {
                // Listening on every address: the office DB uses the box's LAN address.
                "0.0.0.0" | "::" => "{{BOX_LAN_ADDRESS}}",
                host => host,
            },
            f.local_listen.port,
        ),
        f.remote_listen.port,
    )
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

/// Runs the agent with its listeners already bound (the status page's only when given)
/// until `shutdown`.
pub async fn run_with(
    config: Config,
    listener: tokio::net::TcpListener,
    web: Option<tokio::net::TcpListener>,
    shutdown: CancellationToken,
) -> Result<()> {
    let started = Instant::now();
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
    let settings = Arc::new(tunnel_settings(
        &config,
        loaded.state.hub_key_fingerprint.as_deref(),
    )?);
    let status_listener = crate::status::bind(&config.status.socket).with_context(|| {
        format!(
            "cannot open the status socket {}",
            config.status.socket.display()
        )
    })?;

    let (event_tx, mut event_rx) = mpsc::channel::<Event>(64);
    let (tunnel_tx, mut tunnel_rx) = mpsc::channel::<TunnelEvent>(64);
    let (command_tx, command_rx) = mpsc::channel::<TunnelCommand>(4);
    let (doc_tx, doc_rx) = watch::channel(String::new());
    let (health_tx, health_rx) = watch::channel::<Option<Health>>(None);

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(crate::tunnel::run(
        settings,
        listener,
        tunnel_tx,
        command_rx,
        shutdown.clone(),
    ));
    // Every tunnel (re)connection is also news for replication: restart IO threads now.
    let (ups_tx, ups_rx) = watch::channel(crate::replication::LinkState::default());
    {
        let event_tx = event_tx.clone();
        tasks.spawn(async move {
            while let Some(ev) = tunnel_rx.recv().await {
                match ev {
                    TunnelEvent::Up => ups_tx.send_modify(|l| {
                        l.ups += 1;
                        l.up = true;
                    }),
                    TunnelEvent::Down { .. } => {
                        ups_tx.send_if_modified(|l| {
                            let was_up = std::mem::replace(&mut l.up, false);
                            l.downs += u64::from(was_up);
                            was_up
                        });
                    }
                    _ => {}
                }
                if event_tx.send(Event::Tunnel(ev)).await.is_err() {
                    break;
                }
            }
        });
    }
    // The seed job (the office's first copy of the hub's data), before the replication
    // pollers, so its first report reaches health ahead of theirs.
    crate::seed::spawn(
        &config,
        &mut tasks,
        &event_tx,
        ups_rx.clone(),
        shutdown.clone(),
    );
    let offsets = crate::replication::Offsets::default();
    let (office_db, hub_db) = db_targets(&config);
    // The doctor, once the tunnel is first up and then every few hours; its findings
    // feed health.
    {
        let (office_db, hub_db) = (office_db.clone(), hub_db.clone());
        let (mut ups, events, stop) = (ups_rx.clone(), event_tx.clone(), shutdown.clone());
        let timeout = config.replication.query_timeout;
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    r = ups.wait_for(|l| l.ups > 0) => if r.is_err() { return },
                }
                let expect = crate::doctor::Expectations::default();
                let findings = tokio::select! {
                    () = stop.cancelled() => return,
                    f = crate::doctor::examine(&office_db, &hub_db, timeout, &expect) => f,
                };
                for f in &findings {
                    tracing::info!(code = %f.code, message = %f.message, fix = %f.fix, "doctor");
                }
                if events.send(Event::Doctor(findings)).await.is_err() {
                    return;
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(DOCTOR_EVERY) => {}
                }
            }
        });
    }
    // The divergence check: once a day at the configured hour, if tables are configured.
    if let (Some(hour), false) = (
        config.replication.checksum_hour,
        config.replication.checksum_tables.is_empty(),
    ) {
        let (office_db, hub_db) = (office_db.clone(), hub_db.clone());
        let tables = config.replication.checksum_tables.clone();
        let (events, stop) = (event_tx.clone(), shutdown.clone());
        tasks.spawn(async move {
            loop {
                let wait = crate::doctor::until_hour(crate::doctor::local_seconds_of_day(), hour);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                let findings = tokio::select! {
                    () = stop.cancelled() => return,
                    f = crate::doctor::compare_tables(
                        &office_db, &hub_db, &tables, CHECKSUM_TIMEOUT, 3, Duration::from_secs(30),
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
        });
    }
    for (direction, db) in [
        (crate::events::Direction::HubToOffice, office_db),
        (crate::events::Direction::OfficeToHub, hub_db),
    ] {
        tasks.spawn(crate::replication::run_side(
            crate::replication::SideSettings {
                direction,
                db,
                poll_interval: config.replication.poll_interval,
                heartbeat_interval: config.replication.heartbeat_interval,
                query_timeout: config.replication.query_timeout,
                restart_on_reconnect: config.replication.restart_on_reconnect,
            },
            offsets.clone(),
            ups_rx.clone(),
            event_tx.clone(),
            shutdown.clone(),
        ));
    }
    drop(ups_rx);
    if config.mqtt.enabled {
        let (mqtt_tx, mut mqtt_rx) = mpsc::channel::<crate::events::MqttEvent>(16);
        tasks.spawn(crate::mqtt::run(
            mqtt_settings(&config),
            doc_rx.clone(),
            mqtt_tx,
            shutdown.clone(),
        ));
        let event_tx = event_tx.clone();
        tasks.spawn(async move {
            while let Some(ev) = mqtt_rx.recv().await {
                if event_tx.send(Event::Mqtt(ev)).await.is_err() {
                    break;
                }
            }
        });
    }
    #[cfg(feature = "web")]
    if let Some(web) = web {
        let file = crate::history::HistoryFile::new(&config.data.dir);
        let (history, problem) = file.load();
        if let Some(problem) = problem {
            tracing::warn!(%problem, "status page history set aside; starting it fresh");
        }
        let (history_tx, history_rx) = watch::channel(Arc::new(history));
        tasks.spawn(crate::web::keep_history(
            file,
            health_rx.clone(),
            history_tx,
            shutdown.clone(),
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
                started,
            },
            crate::web::Sources {
                health: health_rx.clone(),
                doc: doc_rx.clone(),
                history: history_rx,
            },
            shutdown.clone(),
        ));
    }
    #[cfg(not(feature = "web"))]
    drop(web);
    tasks.spawn(crate::status::serve(
        status_listener,
        config.status.socket.clone(),
        doc_rx,
        shutdown.clone(),
    ));
    drop(event_tx);
    match config.board.backend {
        BoardBackend::Sim => {
            let path = config
                .board
                .sim_socket
                .clone()
                .context("board.sim_socket is required with board.backend = \"sim\"")?;
            let (health, commands, stop) =
                (health_rx.clone(), command_tx.clone(), shutdown.clone());
            tasks.spawn(async move {
                if let Err(e) = crate::leds::run_sim(path, health, commands, stop).await {
                    tracing::warn!(error = %e, "simulated board failed");
                }
            });
        }
        #[cfg(feature = "gpio")]
        BoardBackend::Gpio => {
            let (board, health, commands, stop) = (
                config.board.clone(),
                health_rx.clone(),
                command_tx.clone(),
                shutdown.clone(),
            );
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
    drop((command_tx, health_rx));

    let clock = Clock::new();
    let mut machine = HealthMachine::new(
        HealthSettings {
            settle: config.timings.settle,
            alert_after: config.timings.alert_after,
            lag_ok: config.replication.lag_ok,
        },
        clock.now(),
    );
    machine.restore_reconnects(loaded.state.reconnects);
    let mut saved = loaded.state.clone();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let mut last_verdict = None;
    let mut last_ping: Option<Instant> = None;
    // A journal that cannot be written (data dir full or read-only) is shown beside the
    // verdict and retried now and then; replication does not depend on it.
    let mut journal_problem: Option<(String, Instant)> = None;
    loop {
        let health = tokio::select! {
            () = shutdown.cancelled() => break,
            ev = event_rx.recv() => match ev {
                Some(ev) => machine.handle(ev, clock.now()).clone(),
                None => break,
            },
            _ = ticker.tick() => machine.tick(clock.now()).clone(),
        };
        // The watchdog is fed from this loop itself: if it hangs, systemd restarts us.
        if last_ping.is_none_or(|at| at.elapsed() >= WATCHDOG_PING) {
            last_ping = Some(Instant::now());
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        }
        let retry_save = journal_problem
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() >= JOURNAL_RETRY);
        if last_verdict != Some(health.verdict) || retry_save {
            if last_verdict != Some(health.verdict) {
                saved = remember(saved, &health, machine.reconnects());
            }
            journal_problem = match journal.save(&saved) {
                Ok(()) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot save the state journal");
                    Some((e.to_string(), Instant::now()))
                }
            };
        }
        doc_tx.send_if_modified(|doc| {
            let mut new = state_document(&health, started.elapsed(), machine.mqtt_problem());
            new["agent"]["journal_problem"] = journal_problem
                .as_ref()
                .map(|(why, _)| {
                    serde_json::Value::from(format!(
                        "{why}; the state is not being saved across restarts"
                    ))
                })
                .unwrap_or_default();
            let new = new.to_string();
            let changed = *doc != new;
            *doc = new;
            changed
        });
        if last_verdict != Some(health.verdict) {
            last_verdict = Some(health.verdict);
            tracing::info!(verdict = health.verdict.as_str(), reasons = ?health.reasons, "health");
            let status = format!("STATUS={}", health.verdict.as_str());
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Custom(&status)]);
        }
        health_tx.send_replace(Some(health));
    }
    shutdown.cancel();
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    // Every task watches the token; give them a bounded moment to finish.
    let _ = tokio::time::timeout(Duration::from_millis(1500), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    Ok(())
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
    s.password = m.password.as_ref().map(|p| p.expose().to_owned());
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

/// Monotonic plus wall clock, read only here at the edge.
struct Clock {
    origin: Instant,
}

impl Clock {
    fn new() -> Self {
        Clock {
            origin: Instant::now(),
        }
    }

    fn now(&self) -> Stamp {
        Stamp {
            mono: self.origin.elapsed(),
            wall: SystemTime::now(),
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The journal's view of a new health.
fn remember(mut state: State, health: &Health, reconnects: u64) -> State {
    state.verdict = health.verdict.as_str().to_owned();
    state.since_unix_ms = unix_ms(health.since);
    state.reconnects = reconnects;
    if health.verdict == Verdict::InSync {
        state.last_in_sync_unix_ms = Some(unix_ms(health.since));
    }
    state
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
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": uptime.as_secs(),
        "mqtt_problem": mqtt_problem,
    });
    doc
}

/// What `tether status` shows when the agent is not running: the journal's last state.
pub fn stale_document(state: &State) -> serde_json::Value {
    let since = SystemTime::UNIX_EPOCH + Duration::from_millis(state.since_unix_ms);
    serde_json::json!({
        "verdict": if state.verdict.is_empty() { "unknown" } else { state.verdict.as_str() },
        "since": humantime::format_rfc3339_seconds(since).to_string(),
        "reasons": ["The agent is not running; this is the last state it saved."],
        "stale": true,
        "tunnel": {"up": false, "since": null, "reconnects": state.reconnects, "last_error": null},
    })
}

/// The state document in words for people.
pub fn describe(doc: &serde_json::Value, stale: bool) -> String {
    let verdict = doc["verdict"].as_str().unwrap_or("unknown");
    let words = match verdict {
        "in_sync" => "In sync: everything replicates.",
        "catching_up" => "Catching up: the link is up and data is flowing.",
        "link_down" => {
            "Link down: no link to the hub. Work here is kept and syncs when the link returns."
        }
        "needs_attention" => "Needs attention: a person must act.",
        _ => "Unknown.",
    };
    let mut out = format!(
        "{words}{}\nSince: {}\n",
        if stale {
            " (stale: the agent is not running)"
        } else {
            ""
        },
        doc["since"].as_str().unwrap_or("?")
    );
    if let Some(reasons) = doc["reasons"].as_array() {
        for r in reasons.iter().filter_map(|r| r.as_str()) {
            out.push_str(&format!("  - {r}\n"));
        }
    }
    if let Some(problem) = doc["agent"]["mqtt_problem"].as_str() {
        out.push_str(&format!("Remote monitoring (MQTT): {problem}\n"));
    }
    if let Some(problem) = doc["agent"]["journal_problem"].as_str() {
        out.push_str(&format!("State journal: {problem}\n"));
    }
    let t = &doc["tunnel"];
    out.push_str(&format!(
        "Tunnel: {} (reconnects: {})\n",
        if t["up"].as_bool() == Some(true) {
            "up"
        } else {
            "down"
        },
        t["reconnects"].as_u64().unwrap_or(0)
    ));
    for dir in ["hub_to_office", "office_to_hub"] {
        let d = &doc["replication"][dir];
        if d.is_object() {
            out.push_str(&format!(
                "Replication {}: io {}, sql {}, lag {}\n",
                dir.replace('_', " "),
                d["io_running"],
                d["sql_running"],
                d["lag_s"]
                    .as_u64()
                    .map(|l| format!("{l} s"))
                    .unwrap_or_else(|| "unknown".into())
            ));
        }
    }
    out
}

/// `tether enroll`: the device key and what the hub admin must install.
pub async fn enroll(config: Config, pin: bool) -> Result<()> {
    let key_path = config.key_path();
    let (key, created) = crate::enroll::ensure_device_key(&key_path)?;
    if created {
        println!("Created the device key {}.", key_path.display());
    }
    let line = crate::enroll::public_line(&key, &config.site.id);
    let f = &config.forwards;
    println!(
        "\n# 1. On the hub, append this line to ~{}/.ssh/authorized_keys:\n",
        config.hub.user
    );
    println!(
        "{}",
        crate::hubkit::authorized_keys_line(
            &line,
            &f.remote_listen.to_string(),
            &f.local_target.to_string()
        )
    );
    println!("\n# 2. On the hub, add this to /etc/ssh/sshd_config and reload sshd:\n");
    println!(
        "{}",
        crate::hubkit::sshd_match_block(
            &config.hub.user,
            &f.remote_listen.to_string(),
            &f.local_target.to_string()
        )
    );
    println!(
        "# 3. Pin the hub's host key: set hub.host_key in the config, or run `tether enroll --pin`."
    );
    println!("\n# 4. Replication, both ways through the tunnel (replace {{{{REPL_PASSWORD}}}}):\n");
    println!("{}", replication_setup(&config));
    if pin {
        let hub = Endpoint::new(config.hub.host.clone(), config.hub.port);
        let key = crate::enroll::fetch_host_key(&hub, config.timings.handshake_timeout).await?;
        let fp = crate::tunnel::fingerprint(&key);
        println!("\nThe hub {hub} presents host key {fp}.");
        println!("Compare it with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the hub.");
        std::fs::create_dir_all(&config.data.dir)?;
        let journal = Journal::new(&config.data.dir);
        let mut state = journal.load().state;
        state.hub_key_fingerprint = Some(fp);
        journal.save(&state)?;
        println!("Pinned in {}.", journal.path().display());
    }
    Ok(())
}

/// True when `path` looks like the data dir of a running agent (used by tests).
pub fn has_journal(dir: &Path) -> bool {
    dir.join(crate::journal::FILE_NAME).exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Stamp;

    #[test]
    fn status_words_show_a_broker_problem_without_changing_the_verdict() {
        let m = HealthMachine::new(
            HealthSettings {
                settle: Duration::from_secs(5),
                alert_after: Duration::from_secs(3600),
                lag_ok: Duration::from_secs(10),
            },
            Stamp {
                mono: Duration::ZERO,
                wall: SystemTime::UNIX_EPOCH,
            },
        );
        let doc = state_document(
            m.health(),
            Duration::from_secs(7),
            Some("the broker refused the username or password"),
        );
        assert_eq!(doc["agent"]["uptime_s"], 7);
        assert_eq!(doc["verdict"], "link_down");
        let words = describe(&doc, false);
        assert!(
            words.contains("Remote monitoring (MQTT): the broker refused"),
            "{words}"
        );
        assert!(words.starts_with("Link down"), "{words}");
        let quiet = describe(&state_document(m.health(), Duration::ZERO, None), false);
        assert!(!quiet.contains("MQTT"), "{quiet}");
    }
}
