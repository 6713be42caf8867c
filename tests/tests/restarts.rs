//! The lab survives a restart of each server it depends on, one after the other, while
//! both sites write: the hub's sshd, the office database, the hub database and the
//! broker, on MariaDB and on MySQL. Each recovery time is measured from the moment the
//! server is back; at the end nothing is lost. On MySQL, a restarted server has forgotten
//! the replication account's cached password: the replica must log in again without
//! error 2061 (GET_SOURCE_PUBLIC_KEY=1 from the printed setup). The agent logs at trace
//! level and is scanned for secrets.

use std::time::{Duration, Instant};

use tether_harness::db::Family;
use tether_harness::lab::{AgentMode, Lab, LabOptions};
use tether_harness::process::tether_bin;
use tether_harness::secrets::{MqttTap, Secrets};
use tether_harness::workload::{self, Workload};

/// Whether the broker holds a retained state from the agent right now.
fn retained_state(port: u16) -> bool {
    let out = std::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args([
            "-t",
            "tether/office/state",
            "-C",
            "1",
            "-W",
            "1",
            "--retained-only",
        ])
        .output();
    out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("\"verdict\""))
}

/// From the moment the server is back: the agent in_sync (on a new session when
/// `reconnects_after` is given) and every row acknowledged until then on both sides.
async fn recovered(
    lab: &Lab,
    writers: &Workload,
    what: &str,
    reconnects_after: Option<u64>,
) -> Duration {
    let t = Instant::now();
    let acknowledged = writers.inserted();
    // What the agent said on the way back, each change once.
    let mut said = String::new();
    loop {
        let d = lab.state().await.unwrap_or_default();
        for dir in ["hub_to_office", "office_to_hub"] {
            assert_ne!(
                d["replication"][dir]["last_errno"], 2061,
                "after the {what} restart, {dir} cannot log in: {d:#}"
            );
        }
        let now = format!("{} {}", d["verdict"], d["reasons"]);
        if now != said {
            eprintln!("  {what} +{:.1?}: {now}", t.elapsed());
            said = now;
        }
        let green = d["verdict"] == "in_sync"
            && d["tunnel"]["up"] == true
            && ["hub_to_office", "office_to_hub"]
                .iter()
                .all(|dir| d["replication"][dir]["io_running"] == true)
            && reconnects_after.is_none_or(|n| d["tunnel"]["reconnects"].as_u64().unwrap_or(0) > n);
        if green {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "not in_sync 90 s after the {what} restart: {d:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let in_sync = t.elapsed();
    workload::wait_arrived(
        lab.fixture.hub_db(),
        lab.fixture.office_db(),
        acknowledged,
        Duration::from_secs(90),
    )
    .await
    .unwrap_or_else(|e| panic!("after the {what} restart: {e:#}"));
    eprintln!(
        "  {what}: in_sync after {in_sync:.1?}, the rows acknowledged until the restart across after {:.1?}",
        t.elapsed()
    );
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sshd_office_db_hub_db_and_broker_restarts_are_survived() {
    restarts(Family::MariaDb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sshd_office_db_hub_db_and_broker_restarts_are_survived_on_mysql() {
    restarts(Family::MySql).await;
}

async fn restarts(family: Family) {
    let dir = tempfile::tempdir().unwrap();
    let mut opts =
        LabOptions::office_link(dir.path().to_path_buf(), AgentMode::Binary(tether_bin()));
    opts.agent_env = vec![("RUST_LOG".into(), "trace".into())];
    opts.family = family;
    let mut lab = Lab::start(opts).await.unwrap();
    let broker_port = lab.fixture.broker().port;
    let tap = MqttTap::start("127.0.0.1", broker_port, &dir.path().join("mqtt.txt")).unwrap();
    workload::create_table(
        lab.fixture.hub_db(),
        lab.fixture.office_db(),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let mut writers = Workload::start(lab.fixture.hub_db(), lab.fixture.office_db(), 5);
    let mut report = Vec::new();

    for what in [
        "hub sshd (sessions kept)",
        "hub sshd (sessions ended)",
        "office DB",
        "hub DB",
        "broker",
    ] {
        let reconnects = lab.state().await.unwrap()["tunnel"]["reconnects"]
            .as_u64()
            .unwrap_or(0);
        let t = Instant::now();
        let f = &mut lab.fixture;
        tokio::task::block_in_place(|| match what {
            "hub sshd (sessions kept)" => f.sshd.as_mut().unwrap().restart(),
            "hub sshd (sessions ended)" => f.sshd.as_mut().unwrap().restart_with_sessions(),
            "office DB" => f.office_db.as_mut().unwrap().restart(),
            "hub DB" => f.hub_db.as_mut().unwrap().restart(),
            _ => f.broker.as_mut().unwrap().restart(),
        })
        .unwrap();
        let down_for = t.elapsed();
        let recovered = if what == "broker" {
            // The broker forgot everything (no persistence): recovered once the agent
            // has connected again and re-published its retained state.
            let t = Instant::now();
            while !tokio::task::block_in_place(|| retained_state(broker_port)) {
                assert!(
                    t.elapsed() < Duration::from_secs(60),
                    "no state at the broker 60 s after its restart"
                );
            }
            let d = t.elapsed();
            // Replication never depended on it.
            recovered(&lab, &writers, what, None).await;
            d
        } else {
            let fresh = (what == "hub sshd (sessions ended)").then_some(reconnects);
            recovered(&lab, &writers, what, fresh).await
        };
        eprintln!(
            "{family} lab, {what}: restart took {down_for:.1?}; recovered {recovered:.1?} after it was back"
        );
        report.push((what, down_for, recovered));
        lab.check_agent_alive().unwrap();
    }
    writers.stop().await;
    let counts = writers.inserted();
    workload::wait_converged(
        lab.fixture.hub_db(),
        lab.fixture.office_db(),
        counts,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    eprintln!("rows acknowledged (hub, office) {counts:?}: all on both sides");
    for (what, _, recovered) in &report {
        assert!(
            *recovered < Duration::from_secs(60),
            "{what}: recovery {recovered:?}"
        );
    }

    lab.stop_agent().await;
    drop(tap);
    let secrets = Secrets::of_fixture(&lab.fixture).unwrap();
    let mut leaks = secrets.scan_file("agent log", &dir.path().join("agent.log"));
    leaks.extend(secrets.scan_file("MQTT payloads", &dir.path().join("mqtt.txt")));
    leaks.extend(secrets.scan_file(
        "journal",
        &lab.config.data.dir.join(tether::journal::FILE_NAME),
    ));
    assert!(leaks.is_empty(), "secrets leaked: {leaks:#?}");
}
