//! The fleet view against a real mosquitto: sites publish through the agent's own MQTT
//! publisher (one green, one red on a duplicate key, one whose newest state is old, one
//! killed so the broker sends its last will); `tether fleet` reads them once (the
//! library and the binary's table), and `tether fleet --listen` serves them as
//! Prometheus metrics that follow live changes.

use std::io::{Read, Write};
use std::time::{Duration, Instant, SystemTime};

use tether::config::FleetConfig;
use tether::fleet::{Silence, SiteView, read_once};
use tether::mqtt::{MqttSettings, run};
use tether_harness::mosquitto::Mosquitto;
use tether_harness::process::{Proc, RunAs, free_port, tether_bin};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// A site publishing through the agent's publisher; `doc` changes its state.
struct Publisher {
    doc: watch::Sender<String>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    fn start(broker: &Mosquitto, site: &str, doc: String) -> Publisher {
        let (tx, rx) = watch::channel(doc);
        let (events, mut drain) = mpsc::channel(16);
        tokio::spawn(async move { while drain.recv().await.is_some() {} });
        let stop = CancellationToken::new();
        let settings = MqttSettings::new(broker.host.clone(), broker.port, site, site);
        let task = tokio::spawn(run(settings, rx, events, stop.clone()));
        Publisher {
            doc: tx,
            stop,
            task,
        }
    }

    /// Ends the connection without a goodbye, as a dead box would: the broker sends the
    /// last will.
    fn kill(self) {
        self.task.abort();
        drop(self.stop);
    }
}

fn stamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A state document as the agent renders it.
fn state(verdict: &str, since: SystemTime, at: SystemTime) -> String {
    let red = verdict == "needs_attention";
    serde_json::json!({
        "verdict": verdict,
        "since": stamp(since),
        "reasons": if red { vec!["On the hub database (replication office to hub, error 1062): Replication stopped on a duplicate key in table `app.orders` (key 'A-7')."] } else { vec![] },
        "tunnel": {"up": verdict != "link_down", "since": stamp(since), "reconnects": 0, "last_error": null},
        "replication": {
            "hub_to_office": {"io_running": true, "sql_running": true, "lag_s": 1, "last_errno": 0, "last_error": ""},
            "office_to_hub": {"io_running": true, "sql_running": !red, "lag_s": if red { serde_json::Value::Null } else { 3.into() },
                              "last_errno": if red { 1062 } else { 0 },
                              "last_error": if red { "Could not execute Write_rows_v1 event on table app.orders; Duplicate entry 'A-7' for key 'code'" } else { "" }},
        },
        "agent": {"version": "0.1.0", "uptime_s": 60, "mqtt_problem": null},
        "at": stamp(at),
    })
    .to_string()
}

fn config(broker: &Mosquitto) -> FleetConfig {
    let mut c = FleetConfig::default();
    c.mqtt.host = broker.host.clone();
    c.mqtt.port = broker.port;
    c
}

/// Reads until `done` holds for the view, within `timeout`.
async fn read_until(
    c: &FleetConfig,
    what: &str,
    timeout: Duration,
    done: impl Fn(&[SiteView]) -> bool,
) -> Vec<SiteView> {
    let deadline = Instant::now() + timeout;
    loop {
        let reading = read_once(c).await.unwrap();
        let view = reading.fleet.view(SystemTime::now());
        if reading.complete && done(&view) {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not seen within {timeout:?}; last view: {view:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn site<'a>(view: &'a [SiteView], id: &str) -> &'a SiteView {
    view.iter()
        .find(|s| s.site == id)
        .unwrap_or_else(|| panic!("{id} missing from {view:#?}"))
}

/// One GET on the exporter; the body, or `None` while it does not answer.
fn get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: fleet\r\n\r\n").ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// Polls the exporter's `/metrics` until every line in `want` is there.
async fn wait_metrics(port: u16, want: &[String], timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let body = tokio::task::spawn_blocking(move || get(port, "/metrics"))
            .await
            .unwrap()
            .unwrap_or_default();
        if want.iter().all(|w| body.lines().any(|l| l == w)) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "metrics {want:?} not served within {timeout:?}; last:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_view_shows_every_site_and_the_silent_ones_with_since_when() {
    let broker = tokio::task::spawn_blocking(|| Mosquitto::start(&[]))
        .await
        .unwrap()
        .unwrap();
    let now = SystemTime::now();
    let min = |m: u64| Duration::from_secs(60 * m);
    let green = Publisher::start(&broker, "office-1", state("in_sync", now - min(90), now));
    let _red = Publisher::start(
        &broker,
        "office-2",
        state("needs_attention", now - min(7), now),
    );
    // Its newest state says it was rendered 20 minutes ago: twice the 5-minute republish
    // has passed without a word.
    let _stale = Publisher::start(
        &broker,
        "office-4",
        state("in_sync", now - min(60), now - min(20)),
    );
    let dead = Publisher::start(&broker, "office-3", state("in_sync", now - min(30), now));
    let c = config(&broker);
    // Online and their states read: the online status is published before the state,
    // and a box killed in between never sends its state at all.
    read_until(
        &c,
        "four sites online with their states",
        Duration::from_secs(20),
        |v| {
            v.len() == 4
                && v.iter()
                    .all(|s| s.status.as_deref() == Some("online") && s.verdict.is_some())
        },
    )
    .await;
    dead.kill();
    let view = read_until(&c, "office-3 offline", Duration::from_secs(20), |v| {
        v.iter()
            .any(|s| s.site == "office-3" && s.silent == Some(Silence::Offline))
    })
    .await;

    let shown: Vec<(&str, &str)> = view
        .iter()
        .map(|s| (s.site.as_str(), s.shown.as_str()))
        .collect();
    assert_eq!(
        shown,
        [
            ("office-3", "silent"),
            ("office-4", "silent"),
            ("office-2", "needs_attention"),
            ("office-1", "in_sync"),
        ]
    );
    let secs = |t: Option<SystemTime>| {
        t.unwrap()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let whole = |t: SystemTime| secs(Some(t));
    // The dead box: offline by its last will, silent since it was last heard.
    let dead = site(&view, "office-3");
    assert_eq!(dead.verdict.as_deref(), Some("in_sync"));
    assert_eq!(secs(dead.since), whole(now));
    // The quiet one: online as far as the broker knows, but silent for 20 minutes.
    let quiet = site(&view, "office-4");
    assert_eq!(quiet.silent, Some(Silence::NoState));
    assert_eq!(secs(quiet.since), whole(now - min(20)));
    // The red one names its error; the green one its lag per direction and since when.
    let red = site(&view, "office-2");
    assert_eq!(secs(red.since), whole(now - min(7)));
    assert!(
        red.last_error
            .as_deref()
            .is_some_and(|e| e.contains("1062") && e.contains("'A-7'")),
        "{red:#?}"
    );
    let ok = site(&view, "office-1");
    assert_eq!(
        (ok.hub_to_office.lag_s, ok.office_to_hub.lag_s),
        (Some(1), Some(3))
    );
    assert_eq!(secs(ok.since), whole(now - min(90)));

    // The command people run: the same, as a table.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.toml");
    std::fs::write(
        &file,
        format!("[mqtt]\nhost = \"127.0.0.1\"\nport = {}\n", broker.port),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking({
        let file = file.clone();
        move || {
            std::process::Command::new(tether_bin())
                .args(["fleet", "--config"])
                .arg(&file)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    eprintln!("{table}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.starts_with("4 sites: 2 silent, 1 needs attention, 1 in sync"),
        "{table}"
    );
    let line = |id: &str| {
        table
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} not in {table}"))
            .to_owned()
    };
    assert!(line("office-3").contains("SILENT (offline)"), "{table}");
    assert!(line("office-3").contains("last said in_sync"), "{table}");
    assert!(line("office-4").contains("SILENT (no state)"), "{table}");
    assert!(line("office-4").contains("(20 min ago)"), "{table}");
    assert!(line("office-2").contains("1062"), "{table}");
    assert!(
        line("office-1").contains("1 s") && line("office-1").contains("3 s"),
        "{table}"
    );
    let out = std::process::Command::new(tether_bin())
        .args(["fleet", "--json", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["complete"], true);
    assert_eq!(doc["sites"][0]["silent"], "offline");

    // The exporter: Prometheus text labelled by site, following live changes.
    let port = free_port().unwrap();
    let me = RunAs {
        name: String::new(),
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        switch: false,
    };
    let mut cmd = std::process::Command::new(tether_bin());
    cmd.args(["fleet", "--config"])
        .arg(&file)
        .args(["--listen", &format!("127.0.0.1:{port}")]);
    let _exporter = Proc::spawn(
        "fleet exporter",
        &me,
        &mut cmd,
        &dir.path().join("fleet.log"),
    )
    .unwrap();
    wait_metrics(
        port,
        &[
            "tether_fleet_broker_connected 1".into(),
            "tether_fleet_sites 4".into(),
            "tether_silent{site=\"office-3\"} 1".into(),
            "tether_silent{site=\"office-4\"} 1".into(),
            "tether_verdict{site=\"office-2\",verdict=\"needs_attention\"} 1".into(),
            "tether_replication_lag_seconds{site=\"office-1\",direction=\"office_to_hub\"} 3"
                .into(),
        ],
        Duration::from_secs(20),
    )
    .await;
    // office-1 loses its link: the change arrives live.
    let later = SystemTime::now();
    green.doc.send_replace(state("link_down", later, later));
    wait_metrics(
        port,
        &[
            "tether_verdict{site=\"office-1\",verdict=\"link_down\"} 1".into(),
            "tether_tunnel_up{site=\"office-1\"} 0".into(),
            format!(
                "tether_verdict_since_timestamp_seconds{{site=\"office-1\"}} {}",
                whole(later)
            ),
        ],
        Duration::from_secs(20),
    )
    .await;
    // Then its box dies: silent, since the last will arrived.
    let killed = SystemTime::now();
    green.kill();
    let body = wait_metrics(
        port,
        &["tether_silent{site=\"office-1\"} 1".into()],
        Duration::from_secs(20),
    )
    .await;
    let since: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("tether_verdict_since_timestamp_seconds{site=\"office-1\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        (whole(killed)..=whole(killed) + 10).contains(&since),
        "silent since {since}, killed at {}",
        whole(killed)
    );
    let page = get(port, "/").unwrap();
    assert!(page.contains("office-1  SILENT (offline)"), "{page}");
}
