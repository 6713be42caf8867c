//! What only MySQL has, against real MySQL servers: the agent's account created from the
//! printed SQL can do everything the agent does and nothing broader; error 2061 (a
//! caching_sha2_password login over plain TCP without the server's public key) is
//! explained with its fix; and a MariaDB office paired with a MySQL hub is refused with a
//! plain reason, by the agent and by `tether doctor`, replication left alone.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use tether::dialect::{Dialect, Threads};
use tether_harness::db::{DbServer, Family};
use tether_harness::fixture::{Fixture, FixtureOptions};
use tether_harness::lab::{AgentMode, Lab, LabOptions, change_master};
use tether_harness::process::tether_cli;

async fn login(db: &DbServer, user: &str, password: &str) -> mysql_async::Conn {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(db.port)
        .user(Some(user))
        .pass(Some(password))
        .db_name(Some("tether"))
        .prefer_socket(false);
    tokio::time::timeout(Duration::from_secs(10), mysql_async::Conn::new(opts))
        .await
        .expect("login within 10 s")
        .unwrap_or_else(|e| panic!("{user} cannot log in to {}: {e}", db.name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_account_does_what_the_agent_does_and_nothing_broader() {
    let f = tokio::task::spawn_blocking(|| {
        Fixture::start(FixtureOptions {
            sshd: false,
            broker: false,
            ..FixtureOptions::of(Family::MySql)
        })
    })
    .await
    .unwrap()
    .unwrap();
    let (office, hub) = (f.office_db(), f.hub_db());
    // The office replicates from the hub (directly: no tunnel is needed for grants).
    office
        .sql(&change_master(Family::MySql, hub.port, &hub.repl_password))
        .unwrap();
    office
        .sql("CREATE TABLE app.orders (id INT PRIMARY KEY)")
        .unwrap();
    let mut c = login(office, "tether", &office.agent_password).await;
    let t = Duration::from_secs(5);

    // Everything the agent sends, as it sends it.
    let d = Dialect::query(&mut c, t).await.unwrap();
    assert_eq!(d.family, Family::MySql);
    let row = tether::replication::read_status_row_with(&mut c, t, &d, None)
        .await
        .unwrap()
        .expect("a replica status row");
    assert!(row.contains_key("Replica_IO_Running"), "{row:?}");
    for sql in [
        d.restart_io_thread(None),
        d.start_replica(Threads::Io, None),
        d.worker_error_query(None).unwrap(),
        "SELECT HEARTBEAT_INTERVAL, CONNECTION_RETRY_COUNT FROM performance_schema.replication_connection_configuration".into(),
        "CREATE TABLE IF NOT EXISTS heartbeat (server_id INT UNSIGNED PRIMARY KEY, beat_us BIGINT NOT NULL) ENGINE=InnoDB".into(),
        d.heartbeat_upsert().into(),
        "SELECT beat_us, CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED) FROM heartbeat WHERE server_id = @@server_id".into(),
        "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('server_id', 'gtid_mode', 'server_uuid', 'replica_net_timeout')".into(),
    ] {
        c.query_drop(&sql)
            .await
            .unwrap_or_else(|e| panic!("the agent's account cannot run `{sql}`: {e}"));
    }

    // Nothing broader: no application data, no accounts, no server settings, no
    // replication stream, no other schema.
    for sql in [
        "SELECT * FROM app.orders",
        "INSERT INTO app.orders VALUES (1)",
        "CREATE DATABASE other",
        "DROP DATABASE app",
        "CREATE USER 'x'@'%' IDENTIFIED BY 'x'",
        "SET GLOBAL replica_net_timeout = 99",
        "SELECT * FROM mysql.user",
        "SHOW GRANTS FOR 'repl'@'%'",
        "SELECT * FROM performance_schema.threads",
        "PURGE BINARY LOGS BEFORE NOW()",
    ] {
        let res = c.query_drop(sql).await;
        assert!(
            matches!(&res, Err(mysql_async::Error::Server(e)) if [1044, 1045, 1142, 1227, 1410].contains(&e.code)),
            "the agent's account may run `{sql}`: {res:?}"
        );
    }
    let grants: Vec<String> = c.query("SHOW GRANTS").await.unwrap();
    eprintln!("{}", grants.join("\n"));
    assert_eq!(grants.len(), 5, "{grants:#?}");
    let _ = c.disconnect().await;
}

/// With GET_SOURCE_PUBLIC_KEY=0 (not what `tether enroll` prints), a restart of the hub
/// empties its password cache and the office's replica can no longer log in over the
/// tunnel's plain TCP: error 2061, explained with the statements that fix it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_2061_after_a_restart_is_explained_with_its_fix() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = LabOptions::office_link(dir.path().to_path_buf(), AgentMode::InProcess);
    opts.family = Family::MySql;
    let mut lab = Lab::start(opts).await.unwrap();
    lab.fixture
        .office_db()
        .sql("STOP REPLICA; CHANGE REPLICATION SOURCE TO GET_SOURCE_PUBLIC_KEY=0; START REPLICA;")
        .unwrap();
    lab.wait_verdict("in_sync", Duration::from_secs(60))
        .await
        .unwrap();
    let hub = lab.fixture.hub_db.as_mut().unwrap();
    tokio::task::block_in_place(|| hub.restart()).unwrap();
    let doc = lab
        .wait_state("error 2061 explained", Duration::from_secs(90), |d| {
            d["replication"]["hub_to_office"]["last_errno"] == 2061
                && d["verdict"] == "needs_attention"
        })
        .await
        .unwrap();
    let reasons = doc["reasons"].to_string();
    assert!(reasons.contains("On the office database"), "{reasons}");
    assert!(
        reasons.contains("CHANGE REPLICATION SOURCE TO GET_SOURCE_PUBLIC_KEY=1"),
        "{reasons}"
    );
    // The fix as told brings it back.
    lab.fixture
        .office_db()
        .sql("STOP REPLICA; CHANGE REPLICATION SOURCE TO GET_SOURCE_PUBLIC_KEY=1; START REPLICA;")
        .unwrap();
    lab.wait_verdict("in_sync", Duration::from_secs(60))
        .await
        .unwrap();
}

/// A MariaDB office and a MySQL hub: their GTIDs do not mix. The agent says so on both
/// directions, needs a person, and sets nothing in motion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mariadb_office_with_a_mysql_hub_is_refused_with_a_plain_reason() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LabOptions::office_link(dir.path().to_path_buf(), AgentMode::InProcess);
    let lab = Lab::start_unreplicated(
        opts,
        FixtureOptions {
            families: [Family::MariaDb, Family::MySql],
            ..FixtureOptions::default()
        },
    )
    .await
    .unwrap();
    // The hub is told to replicate from the office but not started: the agent must leave
    // it that way.
    let office_port = lab.fixture.remote_listen_port;
    let office_password = lab.fixture.office_db().repl_password.clone();
    lab.fixture
        .hub_db()
        .sql(&format!(
            "CHANGE REPLICATION SOURCE TO SOURCE_HOST='127.0.0.1', SOURCE_PORT={office_port}, SOURCE_USER='repl', SOURCE_PASSWORD='{office_password}', SOURCE_AUTO_POSITION=1"
        ))
        .unwrap();
    let doc = lab
        .wait_state("the mixed pair refused", Duration::from_secs(60), |d| {
            d["verdict"] == "needs_attention"
                && d["reasons"].to_string().contains("GTIDs do not mix")
        })
        .await
        .unwrap();
    let reasons = doc["reasons"].to_string();
    assert!(
        reasons.contains("MariaDB") && reasons.contains("MySQL 9."),
        "{reasons}"
    );
    assert!(reasons.contains("same family"), "{reasons}");
    // `tether doctor` refuses the pair with the same reason and what to do instead, judges
    // nothing else about it (no half-true advice for a pair that cannot work), and exits 1.
    let (code, out) = tether_cli(&["doctor"], &lab.config_path).await;
    eprintln!("tether doctor on a MariaDB office with a MySQL hub:\n{out}");
    assert_eq!(
        code, 1,
        "a pair that cannot replicate needs a person:\n{out}"
    );
    assert!(
        out.contains("PROBLEM: The office database is MariaDB 10.")
            && out.contains("the hub's is MySQL 9.")
            && out.contains("GTIDs do not mix"),
        "{out}"
    );
    assert!(
        out.contains("fix: Run the same family at both sites"),
        "{out}"
    );
    let findings = ["PROBLEM:", "warning:", "note:"]
        .iter()
        .map(|tag| out.matches(tag).count())
        .sum::<usize>();
    assert_eq!(findings, 1, "that one finding and nothing else:\n{out}");
    // Several polls later the hub's replica is still as it was set: stopped.
    let uptime = doc["agent"]["uptime_s"].as_u64().unwrap_or(0);
    lab.wait_state("time to pass", Duration::from_secs(15), |d| {
        d["agent"]["uptime_s"].as_u64().unwrap_or(0) >= uptime + 7
    })
    .await
    .unwrap();
    let status = lab.fixture.hub_db().replica_status().unwrap();
    assert_eq!(
        status.get("Replica_IO_Running").map(String::as_str),
        Some("No"),
        "{status:?}"
    );
}
