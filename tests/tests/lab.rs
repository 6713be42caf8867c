//! End to end: the two-site lab over the office link (128 kbit/s, 300 ms): a row written
//! at each site arrives at the other through the agent's SSH tunnel and the link
//! simulator, and the agent reports `in_sync` with measured lag.

use std::time::{Duration, Instant};

use tether_harness::lab::{AgentMode, Lab, LabOptions};

fn count(db: &tether_harness::mariadb::MariaDb, sql: &str) -> u64 {
    db.sql(sql)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

async fn wait_rows(db: &tether_harness::mariadb::MariaDb, sql: &str, want: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if count(db, sql) >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: `{sql}` did not reach {want} within {timeout:?}",
            db.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_written_at_each_site_arrive_at_the_other_through_the_tunnel() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let lab = Lab::start(LabOptions::office_link(
        dir.path().to_path_buf(),
        AgentMode::InProcess,
    ))
    .await
    .unwrap();
    eprintln!("lab in sync after {:.1?}", started.elapsed());
    let (hub, office) = (lab.fixture.hub_db(), lab.fixture.office_db());

    hub.sql(
        "CREATE TABLE app.items (id INT AUTO_INCREMENT PRIMARY KEY, site VARCHAR(16) NOT NULL)",
    )
    .unwrap();
    wait_rows(
        office,
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema='app' AND table_name='items'",
        1,
        Duration::from_secs(30),
    )
    .await;
    hub.sql("INSERT INTO app.items (site) VALUES ('hub')")
        .unwrap();
    office
        .sql("INSERT INTO app.items (site) VALUES ('office')")
        .unwrap();
    let t0 = Instant::now();
    wait_rows(
        office,
        "SELECT COUNT(*) FROM app.items WHERE site='hub'",
        1,
        Duration::from_secs(30),
    )
    .await;
    wait_rows(
        hub,
        "SELECT COUNT(*) FROM app.items WHERE site='office'",
        1,
        Duration::from_secs(30),
    )
    .await;
    eprintln!("rows crossed both ways in {:.1?}", t0.elapsed());
    // Distinct auto-increment offsets: the ids never collide.
    let ids = hub
        .sql("SELECT GROUP_CONCAT(id ORDER BY id) FROM app.items")
        .unwrap();
    assert_eq!(
        ids.trim(),
        office
            .sql("SELECT GROUP_CONCAT(id ORDER BY id) FROM app.items")
            .unwrap()
            .trim()
    );

    let doc = lab
        .wait_verdict("in_sync", Duration::from_secs(30))
        .await
        .unwrap();
    for dir in ["hub_to_office", "office_to_hub"] {
        let d = &doc["replication"][dir];
        assert_eq!(d["io_running"], true, "{dir}: {doc:#}");
        assert_eq!(d["sql_running"], true, "{dir}: {doc:#}");
        assert!(
            d["lag_s"].as_u64().is_some_and(|l| l <= 10),
            "{dir}: {doc:#}"
        );
    }
    // The same state reaches the broker, retained, for remote monitoring.
    let broker = lab.fixture.broker();
    let deadline = Instant::now() + Duration::from_secs(20);
    let state = loop {
        let out = std::process::Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &broker.port.to_string(),
                "-t",
                "tether/office/state",
                "-C",
                "1",
                "-W",
                "3",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(text.trim())
            && v["verdict"] == "in_sync"
        {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "no retained in_sync state at the broker: {text}"
        );
    };
    assert_eq!(state["tunnel"]["up"], true);
    let json = lab.lab_json();
    assert_eq!(json["ready"], true);
    assert!(
        json["link"]["control"]
            .as_str()
            .unwrap()
            .ends_with("link.sock")
    );
}
