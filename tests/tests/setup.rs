//! `tether setup` in the lab, from an unconfigured pair (`Lab::start_bare`: no replication
//! or agent account, MariaDB's own defaults for server_id, auto_increment, GTID domain
//! and binlog format; MySQL's for its server_id) to in_sync on each family, through the office link (its rate raised, its 300 ms
//! delay kept) while the hub keeps writing; then rows written at each site cross. The
//! same for a new, empty hub and an office that holds the data (the hub is filled from
//! the office while the office keeps writing), on each family. And
//! its refusals, each with its reason and nothing changed: a wrong administrator
//! password, data at the office, a hub table without a primary key, binary logs kept less
//! long than the estimated copy, no terminal to confirm on, and two servers of different
//! families. A setup whose process went during the copy goes on when run again.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use tether::events::Direction;
use tether_harness::db::{DbServer, Family};
use tether_harness::fixture::FixtureOptions;
use tether_harness::lab::{AgentMode, Lab, LabOptions};
use tether_harness::process::tether_bin;
use tether_harness::secrets::Secrets;
use tether_harness::seeding::{self, DataSize, HubWriter};

/// `tether setup` on the lab's config, the administrators' passwords in its environment.
fn setup_command(
    lab: &Lab,
    passwords: (&str, &str),
    args: &[&str],
    output: &Path,
) -> tokio::process::Command {
    tether_harness::process::setup_command(&lab.config_path, passwords, args, output).unwrap()
}

/// Runs `tether setup` to its end (bounded at 3 minutes); returns (success, what it
/// printed).
async fn run_setup(
    lab: &Lab,
    passwords: (&str, &str),
    args: &[&str],
    output: &Path,
) -> (bool, String) {
    run_setup_within(Duration::from_secs(180), lab, passwords, args, output).await
}

/// [`run_setup`] with its own bound.
async fn run_setup_within(
    bound: Duration,
    lab: &Lab,
    passwords: (&str, &str),
    args: &[&str],
    output: &Path,
) -> (bool, String) {
    let mut child = setup_command(lab, passwords, args, output).spawn().unwrap();
    let status = tokio::time::timeout(bound, child.wait())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "tether setup did not end within {bound:?}: {}",
                std::fs::read_to_string(output).unwrap_or_default()
            )
        })
        .unwrap();
    (status.success(), std::fs::read_to_string(output).unwrap())
}

/// A row written at each site reaches the other within 60 s.
async fn rows_cross(hub: &DbServer, office: &DbServer) {
    hub.sql("INSERT INTO app.settings (name, value) VALUES ('from-hub', 'h')")
        .unwrap();
    office
        .sql("INSERT INTO app.settings (name, value) VALUES ('from-office', 'o')")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (at_office, at_hub) = (
            office.count("SELECT COUNT(*) FROM app.settings WHERE name = 'from-hub'"),
            hub.count("SELECT COUNT(*) FROM app.settings WHERE name = 'from-office'"),
        );
        if at_office == 1 && at_hub == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rows did not cross within 60 s (hub's at the office: {at_office}, office's at the hub: {at_hub})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfigured_pair_is_set_up_to_in_sync_with_one_command() {
    set_up_to_in_sync(Family::MariaDb, Direction::HubToOffice).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfigured_pair_is_set_up_to_in_sync_with_one_command_on_mysql() {
    set_up_to_in_sync(Family::MySql, Direction::HubToOffice).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_hub_is_filled_from_the_office_by_the_same_command() {
    set_up_to_in_sync(Family::MariaDb, Direction::OfficeToHub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_hub_is_filled_from_the_office_by_the_same_command_on_mysql() {
    set_up_to_in_sync(Family::MySql, Direction::OfficeToHub).await;
}

/// From a bare pair whose data is on the hub (`HubToOffice`: the office is filled) or on
/// the office (`OfficeToHub`: a new hub is filled), that side's applications writing
/// throughout.
async fn set_up_to_in_sync(family: Family, direction: Direction) {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut opts =
        LabOptions::office_link(dir.path().to_path_buf(), AgentMode::Binary(tether_bin()));
    opts.family = family;
    // Eight times the office line; the 300 ms delay stays.
    opts.rate = Some(128_000);
    let mut lab = Lab::start_bare(opts).await.unwrap();
    let size = DataSize::FULL.scaled(0.05);
    let source = match direction {
        Direction::HubToOffice => lab.fixture.hub_db(),
        Direction::OfficeToHub => lab.fixture.office_db(),
    };
    seeding::create_data(source, size, true).unwrap();
    let (hub_pw, office_pw) = (
        lab.fixture.hub_db().root_password.clone(),
        lab.fixture.office_db().root_password.clone(),
    );
    // The config as a person keeps it: a comment of theirs, readable by its group only.
    let text = std::fs::read_to_string(&lab.config_path).unwrap();
    std::fs::write(
        &lab.config_path,
        format!("# Box of the lab office; ask Sam before changing.\n{text}"),
    )
    .unwrap();
    std::fs::set_permissions(&lab.config_path, std::fs::Permissions::from_mode(0o640)).unwrap();
    eprintln!(
        "bare lab up with {} rows on the {} after {:.1?}",
        size.rows(),
        direction.source_side(),
        started.elapsed()
    );
    let source = match direction {
        Direction::HubToOffice => lab.fixture.hub_db(),
        Direction::OfficeToHub => lab.fixture.office_db(),
    };
    let mut writer = HubWriter::start(source, 10, size);

    let output = dir.path().join("setup.out");
    let mut child = setup_command(&lab, (&hub_pw, &office_pw), &["--yes"], &output)
        .spawn()
        .unwrap();
    let mut written = None;
    let status = lab
        .restarting_on_config_change(
            tokio::time::timeout(Duration::from_secs(600), child.wait()),
            |path| {
                let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
                written = Some((mode, std::fs::read_to_string(path).unwrap()));
            },
        )
        .await
        .unwrap();
    let printed = std::fs::read_to_string(&output).unwrap();
    let status = status
        .unwrap_or_else(|_| panic!("tether setup did not end within 10 minutes: {printed}"))
        .unwrap();
    assert!(status.success(), "tether setup failed: {printed}");
    eprintln!("tether setup took {:.1?}:\n{printed}", started.elapsed());
    let words: &[&str] = match family {
        Family::MariaDb => &[
            "office: SET GLOBAL server_id = 2",
            "office: SET GLOBAL gtid_domain_id = 1",
            "SET GLOBAL auto_increment_increment = 10",
            "SET GLOBAL binlog_format = 'ROW'",
            "hub: SET GLOBAL server_id = 11",
            "Connections open now keep their old auto_increment",
        ],
        // The bare MySQL keeps the harness's GTIDs and auto_increment; only its ids are
        // the default.
        Family::MySql => &[
            "office: SET PERSIST server_id = 2",
            "hub: SET PERSIST server_id = 11",
        ],
    };
    let copy = format!(
        "Step 4 of 5: the {}'s first copy of the {}'s data.",
        direction.replica_side(),
        direction.source_side()
    );
    let new_hub = "The hub holds no data and the office does: the hub is new, so it is filled from the office's data";
    for words in words.iter().chain(&[
        "Seed done: copied",
        copy.as_str(),
        "The site is set up and in sync.",
    ]) {
        assert!(printed.contains(words), "`{words}` missing from: {printed}");
    }
    assert_eq!(
        printed.contains(new_hub),
        direction == Direction::OfficeToHub,
        "{printed}"
    );
    // The seed's summary does not send the person to configure replication by hand:
    // setup does that next.
    for words in ["so configure it with MASTER_USE_GTID", "To start the "] {
        assert!(!printed.contains(words), "`{words}` in: {printed}");
    }

    // The agent's passwords went into the config, its comment and mode kept.
    let (mode, text) = written.expect("tether setup never wrote the config");
    assert_eq!(mode, 0o640, "the config's mode changed");
    assert!(
        text.starts_with("# Box of the lab office; ask Sam before changing.\n"),
        "the config lost its comment"
    );
    let config = tether::config::Config::parse(&text, &lab.config_path).unwrap();
    let agent_passwords = [
        config.office_db.password.expose().to_owned(),
        config.hub_db.password.expose().to_owned(),
    ];
    assert_ne!(agent_passwords[0], agent_passwords[1]);
    // The replication passwords only in the servers' replica settings.
    let (hub, office) = (lab.fixture.hub_db(), lab.fixture.office_db());
    for db in [hub, office] {
        // MySQL has no PASSWORD() to compare with.
        for p in agent_passwords.iter().filter(|_| family == Family::MariaDb) {
            assert_eq!(
                db.count(&format!(
                    "SELECT COUNT(*) FROM mysql.user WHERE User = 'repl' AND authentication_string = PASSWORD('{p}')"
                )),
                0,
                "the replication account has a password from the config"
            );
        }
        assert!(
            db.count("SELECT COUNT(*) FROM mysql.user WHERE User = 'repl'") > 0,
            "no replication account on {}",
            db.name
        );
    }
    for db in [hub, office] {
        assert_eq!(
            db.count("SELECT COUNT(*) FROM mysql.user WHERE User = 'tether_seed'"),
            0,
            "the seeding account is left on {}",
            db.name
        );
    }

    // Both directions run: what the source wrote during the copy and since is on the
    // other side, and rows written at each site cross.
    writer.stop().await;
    seeding::wait_equal(hub, office, Duration::from_secs(120))
        .await
        .unwrap();
    rows_cross(hub, office).await;
    lab.wait_verdict("in_sync", Duration::from_secs(60))
        .await
        .unwrap();

    // No password in what it printed or in the agent's log.
    let mut secrets = Secrets::default();
    secrets.add("hub admin password", &hub_pw);
    secrets.add("office admin password", &office_pw);
    for p in &agent_passwords {
        secrets.add("agent account password", p);
    }
    let mut found = secrets.scan("tether setup output", printed.as_bytes());
    found.extend(secrets.scan_file("agent log", &lab.dir().join("agent.log")));
    assert!(found.is_empty(), "secrets found: {found:?}");

    // Set up, the site is not set up again, whichever way its first copy went (a hub
    // filled from the office has been in use since: it is never filled again).
    let rows = hub.sql("CHECKSUM TABLE app.customers").unwrap();
    let (ok, again) = run_setup(
        &lab,
        (&hub_pw, &office_pw),
        &["--yes"],
        &dir.path().join("setup-again.out"),
    )
    .await;
    assert!(!ok, "tether setup set a set-up site up again: {again}");
    assert!(
        again.contains("The office database already holds data"),
        "{again}"
    );
    assert_eq!(hub.sql("CHECKSUM TABLE app.customers").unwrap(), rows);
}

/// The person's terminal (or their connection to the box) goes while the copy runs: the
/// copy goes on in the agent, and `tether setup` run again goes on from there (no refusal
/// of the office's partly copied rows, no new copy, the agent's passwords kept) to
/// in_sync. A second setup while the first still runs is refused; run once more on the
/// set-up site, it refuses and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setup_stopped_during_the_copy_goes_on_when_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts =
        LabOptions::office_link(dir.path().to_path_buf(), AgentMode::Binary(tether_bin()));
    opts.rate = Some(128_000);
    let mut lab = Lab::start_bare(opts).await.unwrap();
    let size = DataSize::FULL.scaled(0.05);
    seeding::create_data(lab.fixture.hub_db(), size, true).unwrap();
    let (hub_pw, office_pw) = (
        lab.fixture.hub_db().root_password.clone(),
        lab.fixture.office_db().root_password.clone(),
    );
    let mut writer = HubWriter::start(lab.fixture.hub_db(), 10, size);

    let first = dir.path().join("setup-1.out");
    let mut child = setup_command(&lab, (&hub_pw, &office_pw), &["--yes"], &first)
        .spawn()
        .unwrap();
    let handed = async {
        loop {
            let printed = std::fs::read_to_string(&first).unwrap_or_default();
            if printed.contains("handed to the agent") {
                return printed;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("tether setup ended ({status}) before the copy began: {printed}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let printed = lab
        .restarting_on_config_change(
            tokio::time::timeout(Duration::from_secs(300), handed),
            |_| {},
        )
        .await
        .unwrap()
        .expect("the copy did not begin within 5 minutes");
    // Meanwhile, from another terminal: refused while the first still runs.
    let (ok, printed_meanwhile) = run_setup(
        &lab,
        (&hub_pw, &office_pw),
        &["--yes"],
        &dir.path().join("setup-meanwhile.out"),
    )
    .await;
    assert!(
        !ok,
        "a second setup ran beside the first: {printed_meanwhile}"
    );
    assert!(
        printed_meanwhile.contains("Another `tether setup` is running on this box"),
        "{printed_meanwhile}"
    );
    // The session goes: the process is gone without a word.
    child.kill().await.unwrap();
    eprintln!("first setup killed once the copy was handed over:\n{printed}");
    let config_after_first = std::fs::read_to_string(&lab.config_path).unwrap();
    let config = tether::config::Config::parse(&config_after_first, &lab.config_path).unwrap();
    let record = config.data.dir.join("setup.json");
    assert!(record.exists(), "no setup record in the data dir");

    let (ok, printed) = run_setup_within(
        Duration::from_secs(300),
        &lab,
        (&hub_pw, &office_pw),
        &["--yes"],
        &dir.path().join("setup-2.out"),
    )
    .await;
    assert!(ok, "tether setup run again failed: {printed}");
    eprintln!("tether setup run again:\n{printed}");
    for words in [
        "An earlier `tether setup` stopped",
        "The replication accounts have new passwords",
        "The site is set up and in sync.",
    ] {
        assert!(printed.contains(words), "`{words}` missing from: {printed}");
    }
    for words in [
        "already holds data",
        "handed to the agent",
        "restarts to use",
    ] {
        assert!(!printed.contains(words), "`{words}` in: {printed}");
    }
    assert_eq!(
        std::fs::read_to_string(&lab.config_path).unwrap(),
        config_after_first,
        "the config changed when the setup went on"
    );
    assert!(!record.exists(), "the setup record is left after the setup");

    let (hub, office) = (lab.fixture.hub_db(), lab.fixture.office_db());
    writer.stop().await;
    seeding::wait_equal(hub, office, Duration::from_secs(120))
        .await
        .unwrap();
    rows_cross(hub, office).await;
    lab.wait_verdict("in_sync", Duration::from_secs(60))
        .await
        .unwrap();

    // Set up, the site is not set up again: the office's rows are its own now. (Its
    // accounts and config stay; replication, running, moves on.)
    let accounts_and_config = || {
        let mut out = String::new();
        for db in [hub, office] {
            out.push_str(
                &db.sql("SELECT CONCAT(User, '@', Host, authentication_string) FROM mysql.user ORDER BY 1")
                    .unwrap(),
            );
        }
        out + &std::fs::read_to_string(&lab.config_path).unwrap()
    };
    let before = accounts_and_config();
    let (ok, printed) = run_setup(
        &lab,
        (&hub_pw, &office_pw),
        &["--yes"],
        &dir.path().join("setup-3.out"),
    )
    .await;
    assert!(!ok, "a third setup went ahead: {printed}");
    assert!(printed.contains("already holds data"), "{printed}");
    assert_eq!(accounts_and_config(), before);
    lab.wait_verdict("in_sync", Duration::from_secs(60))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_without_tables_is_set_up_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts =
        LabOptions::office_link(dir.path().to_path_buf(), AgentMode::Binary(tether_bin()));
    opts.rate = Some(128_000);
    let mut lab = Lab::start_bare(opts).await.unwrap();
    let (hub_pw, office_pw) = (
        lab.fixture.hub_db().root_password.clone(),
        lab.fixture.office_db().root_password.clone(),
    );
    let output = dir.path().join("setup.out");
    let mut child = setup_command(&lab, (&hub_pw, &office_pw), &["--yes"], &output)
        .spawn()
        .unwrap();
    let status = lab
        .restarting_on_config_change(
            tokio::time::timeout(Duration::from_secs(300), child.wait()),
            |_| {},
        )
        .await
        .unwrap();
    let printed = std::fs::read_to_string(&output).unwrap();
    let status = status
        .unwrap_or_else(|_| panic!("tether setup did not end within 5 minutes: {printed}"))
        .unwrap();
    assert!(status.success(), "tether setup failed: {printed}");
    assert!(
        printed.contains("The hub holds 0 B in 0 tables"),
        "{printed}"
    );
    assert!(
        printed.contains("The site is set up and in sync."),
        "{printed}"
    );
}

/// Everything a refused setup must leave as it was.
fn fingerprint(hub: &DbServer, office: &DbServer, config: &Path) -> String {
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
            &db.sql("SELECT @@GLOBAL.server_id, @@GLOBAL.auto_increment_increment, @@GLOBAL.auto_increment_offset, @@GLOBAL.binlog_format, @@GLOBAL.binlog_expire_logs_seconds")
                .unwrap(),
        );
        out.push_str(&format!("{:?}", db.replica_status().ok()));
    }
    out.push_str(&std::fs::read_to_string(config).unwrap());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refusal_of_setup_says_why_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = LabOptions::office_link(dir.path().to_path_buf(), AgentMode::InProcess);
    opts.rate = Some(1_000_000);
    let lab = Lab::start_bare(opts).await.unwrap();
    let (hub, office) = (lab.fixture.hub_db(), lab.fixture.office_db());
    seeding::create_data(hub, DataSize::FULL.scaled(0.05), true).unwrap();
    let before = fingerprint(hub, office, &lab.config_path);
    let (hub_pw, office_pw) = (hub.root_password.as_str(), office.root_password.as_str());
    let out = dir.path().join("setup.out");
    let refused = |(ok, printed): (bool, String), words: &[&str], before: &str| {
        assert!(!ok, "not refused: {printed}");
        for w in words {
            assert!(printed.contains(w), "`{w}` missing from: {printed}");
        }
        assert_eq!(
            fingerprint(hub, office, &lab.config_path),
            before,
            "something changed after: {printed}"
        );
    };

    refused(
        run_setup(&lab, ("wrong-password", office_pw), &["--yes"], &out).await,
        &[
            "The hub database refused the administrator login `root`",
            "Nothing was changed.",
        ],
        &before,
    );
    refused(
        run_setup(&lab, (hub_pw, "wrong-password"), &["--yes"], &out).await,
        &["The office database refused the administrator login `root`"],
        &before,
    );
    // No terminal and no --yes: shown, not done.
    refused(
        run_setup(&lab, (hub_pw, office_pw), &[], &out).await,
        &["office: SET GLOBAL server_id = 2", "add --yes"],
        &before,
    );

    office
        .sql("SET SESSION sql_log_bin = 0; CREATE TABLE app.local (id INT PRIMARY KEY, v VARCHAR(10)); INSERT INTO app.local VALUES (1, 'office')")
        .unwrap();
    let with_local = fingerprint(hub, office, &lab.config_path);
    refused(
        run_setup(&lab, (hub_pw, office_pw), &["--yes"], &out).await,
        &[
            "The office database already holds data (app.local)",
            "--replace",
            "Nothing was changed.",
        ],
        &with_local,
    );
    office
        .sql("SET SESSION sql_log_bin = 0; DROP TABLE app.local")
        .unwrap();

    hub.sql("SET SESSION sql_log_bin = 0; CREATE TABLE app.nokey (a INT, b INT); INSERT INTO app.nokey VALUES (1, 2)")
        .unwrap();
    let no_key = fingerprint(hub, office, &lab.config_path);
    refused(
        run_setup(&lab, (hub_pw, office_pw), &["--yes"], &out).await,
        &[
            "Table app.nokey has no primary key",
            "ADD COLUMN id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY",
        ],
        &no_key,
    );
    hub.sql("SET SESSION sql_log_bin = 0; DROP TABLE app.nokey")
        .unwrap();

    hub.sql("SET GLOBAL binlog_expire_logs_seconds = 1")
        .unwrap();
    let short = fingerprint(hub, office, &lab.config_path);
    refused(
        run_setup(&lab, (hub_pw, office_pw), &["--yes"], &out).await,
        &[
            "The hub keeps its binary logs for 1.0 s",
            "less than the estimated copy time of",
        ],
        &short,
    );
    hub.sql("SET GLOBAL binlog_expire_logs_seconds = 0")
        .unwrap();
    assert_eq!(fingerprint(hub, office, &lab.config_path), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_refuses_servers_of_different_families_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LabOptions::office_link(dir.path().to_path_buf(), AgentMode::InProcess);
    let fixture = FixtureOptions {
        families: [Family::MariaDb, Family::MySql],
        bare: true,
        ..FixtureOptions::default()
    };
    let lab = Lab::start_unreplicated(opts, fixture).await.unwrap();
    let (hub, office) = (lab.fixture.hub_db(), lab.fixture.office_db());
    let users = |db: &DbServer| {
        db.sql("SELECT CONCAT(User, '@', Host) FROM mysql.user ORDER BY 1")
            .unwrap()
    };
    let before = (
        users(hub),
        users(office),
        std::fs::read_to_string(&lab.config_path).unwrap(),
    );
    let out = dir.path().join("setup.out");
    let (ok, printed) = run_setup(
        &lab,
        (&hub.root_password, &office.root_password),
        &["--yes"],
        &out,
    )
    .await;
    assert!(!ok, "not refused: {printed}");
    assert!(
        printed.contains("The office database is MariaDB")
            && printed.contains("the hub's is MySQL"),
        "{printed}"
    );
    assert!(
        printed.contains("The setup stopped before changing anything"),
        "{printed}"
    );
    assert_eq!(
        (
            users(hub),
            users(office),
            std::fs::read_to_string(&lab.config_path).unwrap()
        ),
        before
    );
}
