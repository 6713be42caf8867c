//! The doctor against real servers, each check its own scenario: two databases of one
//! family started the way a site might have set them up wrong (MySQL with `gtid_mode` or
//! `enforce_gtid_consistency` off, a copied data directory, equal server ids), examined
//! with the agent's own account as `tether doctor` does, each finding's fix in the words of
//! that family, and, where the fix is a statement, the fix run as told and the finding
//! gone. The doctor on the whole lab (and a mixed pair) is in `lab.rs` and `mysql.rs`.

use std::time::Duration;

use tether::events::{Finding, Severity};
use tether::replication::DbTarget;
use tether_harness::db::{DbOptions, DbServer, Family};
use tether_harness::mariadb::Site;
use tether_harness::on_both_families;

/// The two sites' databases, started in parallel: (office, hub).
async fn pair(office: DbOptions, hub: DbOptions) -> (DbServer, DbServer) {
    let office = tokio::task::spawn_blocking(move || DbServer::start(office));
    let hub = tokio::task::spawn_blocking(move || DbServer::start(hub));
    let (office, hub) = (office.await.unwrap(), hub.await.unwrap());
    (office.unwrap(), hub.unwrap())
}

/// Both sites on `family`, with extra server options for the office.
async fn pair_with(family: Family, office_args: &[&str]) -> (DbServer, DbServer) {
    let mut office = DbOptions::new(family, Site::Office);
    office.extra_args = office_args.iter().map(|a| (*a).to_owned()).collect();
    pair(office, DbOptions::new(family, Site::Hub)).await
}

/// How the agent reaches `db`: its own account, as the hub kit's SQL creates it.
fn agent_target(db: &DbServer) -> DbTarget {
    DbTarget {
        host: db.host.clone(),
        port: db.port,
        user: "tether".into(),
        password: tether::secret::Secret::new(db.agent_password.clone()),
        database: "tether".into(),
    }
}

/// What the doctor finds on this pair (the checks `tether doctor` runs).
async fn examine(office: &DbServer, hub: &DbServer) -> Vec<Finding> {
    let findings = tether::doctor::examine(
        &agent_target(office),
        &agent_target(hub),
        Duration::from_secs(10),
        &tether::doctor::Expectations::default(),
    )
    .await;
    eprintln!("{}", tether::doctor::describe(&findings));
    assert!(
        !findings.iter().any(tether::doctor::could_not_run),
        "both sides examined: {findings:?}"
    );
    findings
}

/// The finding `code`, which must be there.
fn found<'a>(findings: &'a [Finding], code: &str) -> &'a Finding {
    findings
        .iter()
        .find(|f| f.code == code)
        .unwrap_or_else(|| panic!("no {code} finding: {findings:#?}"))
}

/// MariaDB's statements and variable names, never shown to a MySQL user.
const MARIADB_WORDS: &[&str] = &[
    "SLAVE;",
    "START SLAVE",
    "STOP SLAVE",
    "CHANGE MASTER",
    "MASTER_",
    "slave_net_timeout",
    "log_slave_updates",
    "gtid_domain_id",
    "expire_logs_days",
];

fn assert_mysql_words(f: &Finding) {
    for word in MARIADB_WORDS {
        assert!(
            !f.message.contains(word) && !f.fix.contains(word),
            "{}: MariaDB's `{word}` shown to a MySQL user: {} / {}",
            f.code,
            f.message,
            f.fix
        );
    }
}

/// MySQL with gtid_mode=OFF (enforce_gtid_consistency on): the replicas could not resume
/// by GTID. The doctor says how to raise it step by step in MySQL's statements, and
/// those statements, run as told, put it right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doctor_finds_gtid_mode_off_on_mysql_and_its_fix_works() {
    let (office, hub) = pair_with(Family::MySql, &["--gtid-mode=OFF"]).await;
    let findings = examine(&office, &hub).await;
    let f = found(&findings, "gtid_mode");
    assert_eq!(f.severity, Severity::NeedsAttention);
    assert!(
        f.message
            .contains("The office database has gtid_mode = OFF"),
        "{}",
        f.message
    );
    let steps = [
        "SET PERSIST gtid_mode = OFF_PERMISSIVE;",
        "SET PERSIST gtid_mode = ON_PERMISSIVE;",
        "SET PERSIST gtid_mode = ON;",
    ];
    for step in steps {
        assert!(f.fix.contains(step), "`{step}` not in: {}", f.fix);
    }
    assert!(
        !f.fix.contains("SET PERSIST enforce_gtid_consistency"),
        "already ON: {}",
        f.fix
    );
    assert_mysql_words(f);
    assert!(
        !findings
            .iter()
            .any(|f| f.code == "enforce_gtid_consistency"),
        "{findings:?}"
    );
    office.sql(&steps.concat()).unwrap();
    let findings = examine(&office, &hub).await;
    assert!(
        !findings.iter().any(|f| f.code == "gtid_mode"),
        "put right by its fix: {findings:?}"
    );
}

/// MySQL with enforce_gtid_consistency=OFF (so gtid_mode cannot be ON either): both are
/// found, and the fix, enforcement first, run as told, puts both right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doctor_finds_enforce_gtid_consistency_off_on_mysql_and_its_fix_works() {
    let (office, hub) = pair_with(
        Family::MySql,
        &["--gtid-mode=OFF", "--enforce-gtid-consistency=OFF"],
    )
    .await;
    let findings = examine(&office, &hub).await;
    let f = found(&findings, "enforce_gtid_consistency");
    assert_eq!(f.severity, Severity::NeedsAttention);
    assert!(
        f.message
            .contains("The office database has enforce_gtid_consistency = OFF"),
        "{}",
        f.message
    );
    assert!(
        f.fix.contains("SET PERSIST enforce_gtid_consistency = ON;"),
        "{}",
        f.fix
    );
    assert_mysql_words(f);
    let mode = found(&findings, "gtid_mode");
    assert!(
        mode.fix.contains(
            "SET PERSIST enforce_gtid_consistency = ON; SET PERSIST gtid_mode = OFF_PERMISSIVE;"
        ),
        "enforcement first: {}",
        mode.fix
    );
    office
        .sql(
            "SET PERSIST enforce_gtid_consistency = ON; SET PERSIST gtid_mode = OFF_PERMISSIVE; \
             SET PERSIST gtid_mode = ON_PERMISSIVE; SET PERSIST gtid_mode = ON;",
        )
        .unwrap();
    let findings = examine(&office, &hub).await;
    for code in ["enforce_gtid_consistency", "gtid_mode"] {
        assert!(
            !findings.iter().any(|f| f.code == code),
            "{code} put right by its fix: {findings:?}"
        );
    }
}

/// The office's MySQL data directory copied from the hub's, `auto.cnf` and all: both
/// have one server_uuid and MySQL would refuse to replicate. The doctor says which file
/// to delete; deleting it and restarting, as told, gives the office its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doctor_finds_a_copied_mysql_data_directory_by_its_server_uuid() {
    let (mut office, hub) = pair_with(Family::MySql, &[]).await;
    let hub_uuid = hub.sql("SELECT @@server_uuid").unwrap().trim().to_owned();
    let office_auto_cnf = office.dir().join("data/auto.cnf");
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        office.stop();
        std::fs::copy(hub.dir().join("data/auto.cnf"), &office_auto_cnf)?;
        tether_harness::process::RunAs::detect()?.own(&office_auto_cnf)?;
        office.restart()
    })
    .unwrap();
    assert_eq!(
        office.sql("SELECT @@server_uuid").unwrap().trim(),
        hub_uuid,
        "the copy took the hub's server_uuid"
    );
    let findings = examine(&office, &hub).await;
    let f = found(&findings, "server_uuid_equal");
    assert_eq!(f.severity, Severity::NeedsAttention);
    assert!(
        f.message.contains(&hub_uuid) && f.message.contains("copied"),
        "{}",
        f.message
    );
    assert!(
        f.fix.contains("delete `auto.cnf` in its data directory")
            && f.fix.contains("`START REPLICA` on both"),
        "{}",
        f.fix
    );
    assert_mysql_words(f);
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        office.stop();
        std::fs::remove_file(&office_auto_cnf)?;
        office.restart()
    })
    .unwrap();
    let findings = examine(&office, &hub).await;
    assert!(
        !findings.iter().any(|f| f.code == "server_uuid_equal"),
        "a server_uuid of its own after the fix: {findings:?}"
    );
}

on_both_families!(equal_server_ids:
    the_doctor_finds_equal_server_ids,
    the_doctor_finds_equal_server_ids_on_mysql);

/// Both sites with the same server_id: each would ignore the other's changes. The fix is
/// told with the family's own statement to start replication again.
async fn equal_server_ids(family: Family) {
    let mut office = DbOptions::new(family, Site::Office);
    office.server_id = Some(Site::Hub.server_id());
    let (office, hub) = pair(office, DbOptions::new(family, Site::Hub)).await;
    let findings = examine(&office, &hub).await;
    let f = found(&findings, "server_id_equal");
    assert_eq!(f.severity, Severity::NeedsAttention);
    let (errno, start) = match family {
        Family::MariaDb => ("error 1593", "`START SLAVE` on both"),
        Family::MySql => ("error 13117", "`START REPLICA` on both"),
    };
    assert!(f.message.contains(errno), "{}", f.message);
    assert!(f.fix.contains(start), "{}", f.fix);
    if family == Family::MySql {
        assert_mysql_words(f);
    }
}

/// MySQL keeps a replica's heartbeat period in performance_schema, not in its replica
/// status: the doctor reads it there (with the retry count, the public key and TLS), and
/// `replica_net_timeout`, not its deprecated alias. MySQL's defaults on the office's
/// replica are each found, in MySQL's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doctor_reads_a_mysql_replicas_settings_where_mysql_keeps_them() {
    let (office, hub) = pair_with(Family::MySql, &[]).await;
    // The office replicates from the hub directly, with MySQL's defaults but the GTID
    // position (what a DBA who did not follow `tether enroll` would set up).
    office
        .sql(&format!(
            "CHANGE REPLICATION SOURCE TO SOURCE_HOST='127.0.0.1', SOURCE_PORT={}, SOURCE_USER='repl', \
             SOURCE_PASSWORD='{}', SOURCE_AUTO_POSITION=1, SOURCE_SSL=0; START REPLICA; \
             SET GLOBAL replica_net_timeout = 60;",
            hub.port, hub.repl_password
        ))
        .unwrap();
    let findings = examine(&office, &hub).await;
    for (code, words) in [
        ("replica_connect_retry", "SOURCE_CONNECT_RETRY=1"),
        ("replica_heartbeat", "SOURCE_HEARTBEAT_PERIOD=5"),
        (
            "replica_retry_count",
            "SOURCE_RETRY_COUNT=18446744073709551615",
        ),
        ("replica_public_key", "GET_SOURCE_PUBLIC_KEY=1"),
        (
            "replica_net_timeout",
            "SET PERSIST replica_net_timeout = 15;",
        ),
    ] {
        let f = found(&findings, code);
        assert!(
            f.message.contains("The office replica"),
            "{code}: {}",
            f.message
        );
        assert!(f.fix.contains(words), "{code}: {}", f.fix);
        assert_mysql_words(f);
    }
    let heartbeat = found(&findings, "replica_heartbeat");
    assert!(
        heartbeat.message.contains("every 30 s"),
        "MySQL's default period, read from performance_schema: {}",
        heartbeat.message
    );
    assert!(
        !findings.iter().any(|f| f.code == "replica_settings_unread"),
        "the agent's account may read them: {findings:?}"
    );
    // The settings `tether enroll` prints leave nothing to say about the replica.
    office
        .sql(&tether_harness::lab::change_master(
            Family::MySql,
            hub.port,
            &hub.repl_password,
        ))
        .unwrap();
    let findings = examine(&office, &hub).await;
    assert!(
        !findings.iter().any(|f| f.code.starts_with("replica_")),
        "{findings:?}"
    );
}
