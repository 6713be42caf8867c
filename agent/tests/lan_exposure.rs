//! What the LAN may see: the state document (MQTT, the status page, `/status.json`) and the
//! page carry no value from the config. A config with distinctive hosts, ports, users,
//! schemas and paths; the health loop driven through every kind of fault, each event
//! worded the way the edge task that sends it words it (with those values in it), and the
//! update block through the problems the update code words; after each, neither the
//! document nor the page holds any of them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use russh::keys::PublicKey;
use tether::app::health_loop::{Clock, HealthLoop, JournalStore, Notice, Notifier, Outputs};
use tether::config::Config;
use tether::doctor::{Side, could_not_examine};
use tether::events::{
    Direction, Event, Finding, LinkFault, MqttEvent, ProbePath, ReplicationStatus, Severity, Stamp,
    TunnelEvent,
};
use tether::health::{HealthMachine, HealthSettings};
use tether::journal::{JournalError, State};
use tether::release::parse_version;
use tether::updates::install::verify_installed;
use tether::updates::launcher::plan;
use tether::updates::state::LauncherState;
use tether::updates::{Layout, UpdateStatus, load_release_keys};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const CONFIG: &str = r#"
[site]
id = "office"

[hub]
host = "hubhost-q7x.example.net"
port = 47221
user = "hubuser-q7x"
host_key = "SHA256:pinnedQ7xPinnedQ7xPinnedQ7xPinnedQ7xPinnedQ7"
key_path = "/etc/keypath-q7x/device_key"

[forwards]
remote_listen = "127.0.0.1:47222"
remote_target = "officedb-q7x.lan:47223"
local_listen = "127.0.0.1:47224"
local_target = "127.0.0.1:47225"

[office_db]
host = "officedb-q7x.lan"
port = 47223
user = "officeuser-q7x"
password = "office-password-q7x"
database = "officeschema-q7x"

[hub_db]
user = "hubdbuser-q7x"
password = "hub-password-q7x"
database = "hubschema-q7x"

[mqtt]
host = "broker-q7x.lan"
port = 47226
username = "mqttuser-q7x"
password = "mqtt-password-q7x"

[data]
dir = "/var/lib/datadir-q7x"

[status]
socket = "/run/socket-q7x/tether.sock"

[updates]
release_key = "/etc/releasekey-q7x/keys.pub"
"#;

/// Every value of the config that could end up in a sentence.
fn needles(c: &Config) -> Vec<String> {
    let mut v = vec![
        c.hub.host.clone(),
        c.hub.port.to_string(),
        c.hub.user.clone(),
        c.hub.host_key.clone().unwrap(),
        c.key_path().display().to_string(),
        c.office_db.host.clone(),
        c.office_db.port.to_string(),
        c.office_db.user.clone(),
        c.office_db.password.expose().to_owned(),
        c.office_db.database.clone(),
        c.hub_db.user.clone(),
        c.hub_db.password.expose().to_owned(),
        c.hub_db.database.clone(),
        c.mqtt.host.clone(),
        c.mqtt.port.to_string(),
        c.mqtt.username.clone().unwrap(),
        c.mqtt.password.as_ref().unwrap().expose().to_owned(),
        c.data.dir.display().to_string(),
        c.status.socket.display().to_string(),
        c.updates.release_key.display().to_string(),
    ];
    for a in [
        &c.forwards.remote_listen,
        &c.forwards.remote_target,
        &c.forwards.local_listen,
        &c.forwards.local_target,
    ] {
        v.push(a.port.to_string());
        v.push(a.to_string());
    }
    // Each part of a dotted name on its own, too (`hubhost-q7x`).
    let parts: Vec<String> = v
        .iter()
        .flat_map(|n| {
            n.split(['.', '/', ':'])
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|p| p.contains("q7x") || p.contains("472"))
        .collect();
    v.extend(parts);
    v.retain(|n| n.len() >= 4 && n != "127.0.0.1");
    v
}

/// Each event worded as its edge task words it.
fn every_fault(c: &Config) -> Vec<(&'static str, Event)> {
    let hub = format!("{}:{}", c.hub.host, c.hub.port);
    let remote_listen = c.forwards.remote_listen.to_string();
    let local_listen = c.forwards.local_listen.to_string();
    let down = |fault| {
        Event::Tunnel(TunnelEvent::Down {
            fault,
            retry_in: Duration::from_secs(1),
        })
    };
    let repl_io_error = format!(
        "error connecting to master 'repl@127.0.0.1:{}' - retry-time: 5  maximum-retries: 86400  message: Access denied for user '{}'@'localhost' (using password: YES)",
        c.forwards.local_listen.port, c.hub_db.user
    );
    vec![
        (
            "refused",
            down(LinkFault::Unreachable(format!(
                "cannot connect to {hub}: Connection refused (os error 111)"
            ))),
        ),
        (
            "timeout",
            down(LinkFault::Unreachable(format!(
                "no answer from {hub} within 10s"
            ))),
        ),
        (
            "dns",
            down(LinkFault::Unreachable(format!(
                "cannot connect to {hub}: failed to lookup address information: Name or service not known"
            ))),
        ),
        (
            "reset",
            down(LinkFault::Reset(format!(
                "Connection reset by peer (os error 104) from {hub}"
            ))),
        ),
        (
            "silent",
            down(LinkFault::Silent {
                after: Duration::from_secs(9),
            }),
        ),
        (
            "host key",
            down(LinkFault::HostKeyChanged {
                seen: "SHA256:seenSeenSeenSeenSeenSeenSeenSeenSeenSeenSeen".into(),
                expected: c.hub.host_key.clone().unwrap(),
            }),
        ),
        (
            "login",
            down(LinkFault::LoginRefused(format!(
                "the hub refused the device key for user `{}`",
                c.hub.user
            ))),
        ),
        (
            "remote forward",
            down(LinkFault::RemoteForwardRefused {
                listen: remote_listen.clone(),
            }),
        ),
        (
            "ssh other",
            down(LinkFault::Other(format!(
                "connection attempt failed: kex with {hub} as {}",
                c.hub.user
            ))),
        ),
        ("up", Event::Tunnel(TunnelEvent::Up)),
        (
            "probe hub",
            Event::Tunnel(TunnelEvent::ProbeFailed {
                path: ProbePath::HubDbThroughLocalForward,
                error: format!("local forward {local_listen}: Connection refused (os error 111)"),
            }),
        ),
        (
            "probe office",
            Event::Tunnel(TunnelEvent::ProbeFailed {
                path: ProbePath::OfficeDbThroughRemoteForward,
                error: format!(
                    "the hub could not open {remote_listen}: office database through the remote forward {}: Connection refused",
                    c.forwards.remote_target
                ),
            }),
        ),
        (
            "office db refused",
            Event::ReplicationUnreachable {
                direction: Direction::HubToOffice,
                error: format!(
                    "connect: ERROR 1045 (28000): Access denied for user '{}'@'10.0.0.5' (using password: YES)",
                    c.office_db.user
                ),
            },
        ),
        (
            "hub db unreachable",
            Event::ReplicationUnreachable {
                direction: Direction::OfficeToHub,
                error: format!("connect: Input/output error: {local_listen}: Connection refused"),
            },
        ),
        (
            "hub db schema",
            Event::ReplicationUnreachable {
                direction: Direction::OfficeToHub,
                error: format!(
                    "connect: ERROR 1049 (42000): Unknown database '{}'",
                    c.hub_db.database
                ),
            },
        ),
        (
            "replica io error",
            Event::Replication {
                direction: Direction::OfficeToHub,
                status: ReplicationStatus {
                    io_running: Some(false),
                    sql_running: Some(true),
                    last_io_errno: 1045,
                    last_io_error: repl_io_error.clone(),
                    explanation: tether::replication::explain(
                        1045,
                        &repl_io_error,
                        &tether::dialect::Dialect::current(tether::dialect::Family::MariaDb),
                        None,
                    ),
                    ..ReplicationStatus::default()
                },
            },
        ),
        (
            "replica sql error",
            Event::Replication {
                direction: Direction::HubToOffice,
                status: ReplicationStatus {
                    io_running: Some(true),
                    sql_running: Some(false),
                    last_sql_errno: 1146,
                    last_sql_error: format!(
                        "Error executing row event: 'Table 'app.t' doesn't exist' for user '{}'@'{}'",
                        c.office_db.user, c.office_db.host
                    ),
                    ..ReplicationStatus::default()
                },
            },
        ),
        (
            "doctor",
            Event::Doctor(vec![
                Finding {
                    severity: Severity::NeedsAttention,
                    code: "replication_grants".into(),
                    message: format!(
                        "The replication account on the hub database lacks REPLICATION SLAVE: GRANT USAGE ON *.* TO `{}`@`%`",
                        c.hub_db.user
                    ),
                    fix: "Run the replication-user SQL from the hub kit.".into(),
                },
                could_not_examine(
                    Side::Office,
                    &c.office_db.user,
                    &format!(
                        "connect: ERROR 1045 (28000): Access denied for user '{}'@'127.0.0.1'",
                        c.office_db.user
                    ),
                ),
            ]),
        ),
        (
            "mqtt",
            Event::Mqtt(MqttEvent::Disconnected {
                reason: tether::app::name_the_broker(
                    &format!(
                        "the broker {}:{} refused the username or password (check mqtt.username and mqtt.password); TLS names {}",
                        c.mqtt.host, c.mqtt.port, c.mqtt.host
                    ),
                    &c.mqtt.host,
                    c.mqtt.port,
                ),
            }),
        ),
    ]
}

/// The update block's problems, each worded by the code that words it: the update task
/// (a release key it cannot read) and the launcher (an installed version that no longer
/// verifies, as the update task then reports it).
fn every_update_problem(c: &Config) -> Vec<(&'static str, UpdateStatus)> {
    let layout = Layout::new(&c.data.dir);
    let factory = parse_version(tether::version::current()).unwrap();
    let launcher_reports = |keys: Result<Vec<PublicKey>, String>| {
        let mut state = LauncherState {
            current: Some("99.0.0".into()),
            ..LauncherState::default()
        };
        let verify = |v: &str| match &keys {
            Ok(keys) => verify_installed(&layout, v, keys),
            Err(e) => Err(e.clone()),
        };
        plan(&mut state, &factory, None, &verify, 1_800_000_000);
        assert_eq!(state.last.as_ref().unwrap().result, "damaged");
        UpdateStatus::after(state.last.as_ref())
    };
    let unreadable = load_release_keys(&c.updates.release_key).unwrap_err();
    let mut off = UpdateStatus::new("off");
    off.error = Some(format!("no usable release key: {unreadable}"));
    vec![
        ("release key unreadable", off),
        (
            "installed version, release key unreadable",
            launcher_reports(Err(unreadable)),
        ),
        (
            "installed version's files missing",
            launcher_reports(Ok(Vec::new())),
        ),
    ]
}

/// One thing that happens to the agent.
enum Step {
    Event(Event),
    Update(UpdateStatus),
}

struct PausedClock(Instant);

impl Clock for PausedClock {
    fn now(&self) -> Stamp {
        let mono = self.0.elapsed();
        Stamp {
            mono,
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000) + mono,
        }
    }
}

/// A journal that cannot be written, as the data dir full would fail it.
struct FullDisk(std::path::PathBuf);

impl JournalStore for FullDisk {
    fn save(&mut self, _: &State) -> Result<(), JournalError> {
        Err(JournalError::Io {
            path: self.0.join("state.bin"),
            source: std::io::Error::from_raw_os_error(28),
        })
    }
}

#[derive(Default)]
struct Quiet(Arc<Mutex<Vec<Notice>>>);

impl Notifier for Quiet {
    fn notify(&mut self, notice: Notice) {
        self.0.lock().unwrap().push(notice);
    }
}

fn leaks(text: &str, needles: &[String]) -> Vec<String> {
    needles
        .iter()
        .filter(|n| text.contains(n.as_str()))
        .cloned()
        .collect()
}

#[tokio::test(start_paused = true)]
async fn no_config_value_reaches_the_state_document_or_the_page() {
    let config = Config::parse(CONFIG, "tether.toml").expect("the test's config parses");
    let needles = needles(&config);
    assert!(needles.len() > 20, "{needles:?}");
    let clock = PausedClock(Instant::now());
    let settings = HealthSettings {
        settle: Duration::ZERO,
        alert_after: Duration::from_secs(60),
        lag_ok: Duration::from_secs(10),
    };
    let machine = HealthMachine::new(settings, clock.now());
    let (doc_tx, doc) = watch::channel(String::new());
    let (health_tx, health) = watch::channel(None);
    let (longest_tx, _longest) = watch::channel(Duration::ZERO);
    let (update_tx, update_rx) = watch::channel(UpdateStatus::new("idle"));
    let (events, events_rx) = mpsc::channel(4);
    let shutdown = CancellationToken::new();
    let health_loop = HealthLoop::new(
        machine,
        State::default(),
        clock,
        FullDisk(config.data.dir.clone()),
        Quiet::default(),
        update_rx,
        Outputs {
            doc: doc_tx,
            health: health_tx,
            longest_outage: longest_tx,
        },
    );
    let task = tokio::spawn(health_loop.run(events_rx, shutdown.clone()));
    let mut shown_reasons = std::collections::BTreeSet::new();
    let mut shown_update_errors = std::collections::BTreeSet::new();
    let steps = every_fault(&config)
        .into_iter()
        .map(|(what, e)| (what, Step::Event(e)))
        .chain(
            every_update_problem(&config)
                .into_iter()
                .map(|(what, u)| (what, Step::Update(u))),
        );
    for (what, step) in steps {
        match step {
            Step::Event(event) => events.send(event).await.unwrap(),
            Step::Update(status) => {
                update_tx.send_replace(status);
            }
        }
        // Past settle and a tick; the last ones also pass alert_after.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let text = doc.borrow().clone();
        assert!(text.contains("\"verdict\""), "{what}: {text}");
        let found = leaks(&text, &needles);
        assert!(
            found.is_empty(),
            "{what}: the state document shows {found:?}: {text}"
        );
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        for r in value["reasons"].as_array().unwrap() {
            shown_reasons.insert(r.as_str().unwrap().to_owned());
        }
        if let Some(e) = value["update"]["error"].as_str() {
            shown_update_errors.insert(e.to_owned());
        }
        #[cfg(feature = "web")]
        {
            let health = health.borrow().clone();
            let update: Option<UpdateStatus> = serde_json::from_value(value["update"].clone()).ok();
            let history = tether::history::History::new();
            let page = tether::web::page::html(&tether::web::page::View {
                site_name: config.site.display_name(),
                health: health.as_ref(),
                history: &history,
                now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_100),
                utc_offset_s: 0,
                update: update.as_ref(),
            });
            let found = leaks(&page, &needles);
            assert!(found.is_empty(), "{what}: the page shows {found:?}");
        }
        #[cfg(not(feature = "web"))]
        let _ = &health;
    }
    // The sentences still say what to check, by the config's key names.
    let all = shown_reasons.into_iter().collect::<Vec<_>>().join("\n");
    for key in [
        "`hub.host`",
        "`hub.user`",
        "`office_db.password`",
        "`forwards.remote_listen`",
    ] {
        assert!(all.contains(key), "no reason names {key}:\n{all}");
    }
    let update_errors = shown_update_errors.into_iter().collect::<Vec<_>>();
    assert_eq!(update_errors.len(), 3, "{update_errors:#?}");
    assert!(
        update_errors
            .iter()
            .filter(|e| e.contains("updates.release_key"))
            .count()
            == 2,
        "the update block names the key: {update_errors:#?}"
    );
    let text = doc.borrow().clone();
    assert!(
        text.contains("data.dir"),
        "the journal problem names its key: {text}"
    );
    assert!(text.contains("mqtt.host:mqtt.port"), "{text}");
    shutdown.cancel();
    task.await.unwrap();
}
