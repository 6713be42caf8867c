//! `tether seed`'s refusals in the lab, each with its plain reason and nothing changed on
//! either server or in the data dir: a wrong administrator password, an office that
//! already holds data, a hub that holds data asked to be filled from the office
//! (`--to-hub`), a hub table without a primary key, binary logs kept less long than
//! the estimated copy, and no terminal to confirm on. Then `--replace` saves the office's
//! data to a backup file it names before replacing it with the hub's. (Two servers of
//! different families are refused by the same judgement, tested without servers in
//! `seed::preflight`: the harness has no MySQL server yet.)

use std::io::Read;
use std::time::Duration;

use tether_harness::db::DbServer;
use tether_harness::lab::{AgentMode, Lab, LabOptions};
use tether_harness::process::tether_bin;
use tether_harness::seeding::{self, DataSize};

/// Everything a refused seed must leave as it was.
fn fingerprint(hub: &DbServer, office: &DbServer, data_dir: &std::path::Path) -> String {
    let mut out = String::new();
    for db in [hub, office] {
        out.push_str(
            &db.sql("SELECT CONCAT(User, '@', Host) FROM mysql.user ORDER BY 1")
                .unwrap(),
        );
        out.push_str(
            &db.sql("SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys') ORDER BY 1, 2")
                .unwrap(),
        );
        out.push_str(
            &db.sql("SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'SLAVE_RUNNING'")
                .unwrap(),
        );
    }
    out.push_str(&office.sql("CHECKSUM TABLE app.local").unwrap());
    let mut files: Vec<String> = std::fs::read_dir(data_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("seed") || n.starts_with("office-before-seed"))
        .collect();
    files.sort();
    out.push_str(&files.join(","));
    out
}

/// `tether seed` with these arguments and passwords, to its end.
async fn seed(
    lab: &Lab,
    out: &std::path::Path,
    args: &[&str],
    passwords: (&str, &str),
) -> (bool, String) {
    seeding::run_seed(
        &tether_bin(),
        &lab.config_path,
        passwords,
        args,
        out,
        Duration::from_secs(120),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refusal_says_why_and_changes_nothing_and_replace_saves_the_office_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = LabOptions::office_link(dir.path().to_path_buf(), AgentMode::InProcess);
    opts.rate = Some(1_000_000);
    let lab = Lab::start(opts).await.unwrap();
    let (hub, office) = (lab.fixture.hub_db(), lab.fixture.office_db());
    // The hub's data without binary logging, so the office's replication from the hub
    // keeps running: a refused seed must not even stop it.
    seeding::create_data(hub, DataSize::FULL.scaled(0.05), false).unwrap();
    office
        .sql("SET SESSION sql_log_bin = 0; CREATE TABLE app.local (id INT PRIMARY KEY, v VARCHAR(10)); INSERT INTO app.local VALUES (1, 'office')")
        .unwrap();
    let data_dir = lab.config.data.dir.clone();
    let before = fingerprint(hub, office, &data_dir);
    let (hub_pw, office_pw) = (hub.root_password.as_str(), office.root_password.as_str());
    let out = dir.path().join("seed.out");
    let refused = |(ok, printed): (bool, String), words: &[&str]| {
        assert!(!ok, "not refused: {printed}");
        for w in words {
            assert!(printed.contains(w), "`{w}` missing from: {printed}");
        }
        assert!(
            printed.contains("othing was changed") || printed.contains("Nothing was changed"),
            "{printed}"
        );
        assert_eq!(
            fingerprint(hub, office, &data_dir),
            before,
            "something changed after: {printed}"
        );
    };

    refused(
        seed(&lab, &out, &["--yes"], ("wrong-password", office_pw)).await,
        &["The hub database refused the administrator login `root`"],
    );
    refused(
        seed(&lab, &out, &["--yes"], (hub_pw, "wrong-password")).await,
        &["The office database refused the administrator login `root`"],
    );
    refused(
        seed(&lab, &out, &["--yes"], (hub_pw, office_pw)).await,
        &[
            "The office database already holds data (app.local)",
            "--replace",
            "`tether seed --to-hub`",
        ],
    );
    // A hub with data of its own is never filled from the office.
    refused(
        seed(&lab, &out, &["--yes", "--to-hub"], (hub_pw, office_pw)).await,
        &[
            "The hub database already holds data (app.customers, app.documents, app.order_lines and 1 more tables)",
            "fills only an empty hub",
        ],
    );
    hub.sql("SET SESSION sql_log_bin = 0; CREATE TABLE app.nokey (a INT, b INT); INSERT INTO app.nokey VALUES (1, 2)")
        .unwrap();
    let no_key = fingerprint(hub, office, &data_dir);
    let (ok, printed) = seed(&lab, &out, &["--yes", "--replace"], (hub_pw, office_pw)).await;
    assert!(!ok, "{printed}");
    assert!(
        printed.contains("Table app.nokey has no primary key"),
        "{printed}"
    );
    assert!(
        printed.contains("ADD COLUMN id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY"),
        "{printed}"
    );
    assert_eq!(fingerprint(hub, office, &data_dir), no_key, "{printed}");
    hub.sql("SET SESSION sql_log_bin = 0; DROP TABLE app.nokey")
        .unwrap();
    assert_eq!(fingerprint(hub, office, &data_dir), before);

    hub.sql("SET GLOBAL binlog_expire_logs_seconds = 1")
        .unwrap();
    refused(
        seed(&lab, &out, &["--yes", "--replace"], (hub_pw, office_pw)).await,
        &[
            "The hub keeps its binary logs for 1.0 s",
            "less than the estimated copy time of",
            "/s the link carried in a sample",
        ],
    );
    hub.sql("SET GLOBAL binlog_expire_logs_seconds = 0")
        .unwrap();
    refused(
        seed(&lab, &out, &["--replace"], (hub_pw, office_pw)).await,
        &["add --yes"],
    );

    // Told to replace: the office's data is saved first, to a file the output names.
    let (ok, printed) = seeding::run_seed(
        &tether_bin(),
        &lab.config_path,
        (hub_pw, office_pw),
        &["--yes", "--replace"],
        &out,
        Duration::from_secs(300),
    )
    .await
    .unwrap();
    assert!(ok, "{printed}");
    let saved = printed
        .lines()
        .find_map(|l| l.strip_prefix("The office's data is saved in "))
        .and_then(|l| l.strip_suffix('.'))
        .unwrap_or_else(|| panic!("no backup named: {printed}"));
    let mut dump = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(saved).unwrap())
        .read_to_string(&mut dump)
        .unwrap();
    assert!(
        dump.contains("INSERT INTO `local` VALUES\n(1,'office')"),
        "the backup lacks the office's row"
    );
    assert!(printed.contains("Seed done: copied"), "{printed}");
    seeding::wait_equal(hub, office, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        office.count("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'app' AND TABLE_NAME = 'local'"),
        0,
        "the office's own table was replaced by the hub's tables"
    );
    lab.wait_verdict("in_sync", Duration::from_secs(60))
        .await
        .unwrap();
}
