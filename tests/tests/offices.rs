//! A hub and three offices, each with its own database, agent and link simulator, all four
//! writing: every row reaches every server through the hub; one office's cut or conflict
//! stays that office's. Each scenario runs on MariaDB and on MySQL.
//!
//! The hub has one named connection (MariaDB) or channel (MySQL) per office (the setup
//! `tether enroll` prints with `replication.hub_connection` set to the site id) and every agent logs in with the hub
//! kit's one agent account: each reads, restarts and explains only its own connection.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tether::dialect::{Dialect, Threads};
use tether_harness::db::Family;
use tether_harness::offices::{self, Offices, OfficesOptions, Writers};
use tether_harness::on_both_families;

/// How an agent's reasons tell a person to look at and to start replication on the
/// hub's connection (MariaDB) or channel (MySQL) `name`, in the family's words.
fn hub_words(family: Family, name: &str) -> (String, String) {
    let d = Dialect::current(family);
    match family {
        Family::MariaDb => (
            format!("SHOW SLAVE '{name}' STATUS"),
            format!("START SLAVE '{name}'"),
        ),
        Family::MySql => (
            d.show_replica_status(Some(name)),
            d.start_replica(Threads::Both, Some(name)),
        ),
    }
}

const OFFICES: usize = 3;

on_both_families!(all_four_sites_writing: all_four_sites_writing_end_with_every_row_everywhere_and_equal_checksums, all_four_sites_writing_end_with_every_row_everywhere_and_equal_checksums_on_mysql);
on_both_families!(one_office_cut_for_60_s: one_office_cut_for_60_s_while_the_others_keep_replicating_without_alarm, one_office_cut_for_60_s_while_the_others_keep_replicating_without_alarm_on_mysql);
on_both_families!(a_duplicate_key_or_a_stopped_connection: a_duplicate_key_between_two_offices_or_a_stopped_connection_turns_only_that_office_red, a_duplicate_key_between_two_offices_or_a_stopped_connection_turns_only_that_office_red_on_mysql);
on_both_families!(each_agent_on_its_own_connection: each_agent_reads_and_restarts_only_its_own_connection_on_the_hub, each_agent_reads_and_restarts_only_its_own_connection_on_the_hub_on_mysql);
on_both_families!(a_bare_office_joins: a_bare_office_joins_the_hub_with_tether_setup_while_the_first_keeps_writing, a_bare_office_joins_the_hub_with_tether_setup_while_the_first_keeps_writing_on_mysql);

async fn hub_with_offices(dir: &tempfile::TempDir, family: Family) -> Offices {
    let mut opts = OfficesOptions::new(dir.path().to_path_buf(), OFFICES);
    opts.family = family;
    let started = Instant::now();
    let hub = Offices::start(opts).await.unwrap();
    eprintln!(
        "{family}: hub and {OFFICES} offices replicating in {:.1?}",
        started.elapsed()
    );
    hub
}

/// What the hub operator's fleet view shows for each site right now (from the broker).
async fn fleet_view(hub: &Offices) -> BTreeMap<String, tether::fleet::SiteView> {
    let mut c = tether::config::FleetConfig::default();
    c.mqtt.host = hub.broker.host.clone();
    c.mqtt.port = hub.broker.port;
    let reading = tether::fleet::read_once(&c).await.unwrap();
    assert!(reading.complete, "the broker sent every retained state");
    reading
        .fleet
        .view(std::time::SystemTime::now())
        .into_iter()
        .map(|s| (s.site.clone(), s))
        .collect()
}

/// Polls the fleet view until every site shows `want(site)`.
async fn wait_fleet(hub: &Offices, want: impl Fn(&str) -> &'static str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let view = fleet_view(hub).await;
        let shown: BTreeMap<&str, &str> = view
            .iter()
            .map(|(site, s)| (site.as_str(), s.shown.as_str()))
            .collect();
        let expected: BTreeMap<&str, &str> = hub
            .offices
            .iter()
            .map(|o| (o.site.as_str(), want(&o.site)))
            .collect();
        if shown == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the fleet view shows {shown:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every office's verdict, by site.
async fn verdicts(hub: &Offices) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for o in &hub.offices {
        let v = match o.state().await {
            Ok(d) => d["verdict"].as_str().unwrap_or("?").to_owned(),
            Err(e) => format!("unreadable: {e}"),
        };
        out.insert(o.site.clone(), v);
    }
    out
}

async fn all_four_sites_writing(family: Family) {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_offices(&dir, family).await;
    offices::create_table(&hub, Duration::from_secs(30))
        .await
        .unwrap();

    let mut writers = Writers::start(&hub, 10);
    // While they write, each site's rows reach the three others.
    let all: Vec<&str> = hub.servers().iter().map(|(s, _)| *s).collect();
    // Fifteen seconds of writing.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let acked = writers.inserted();
    let took = offices::wait_arrived(&hub, &all, &acked, Duration::from_secs(60))
        .await
        .unwrap();
    eprintln!("rows acknowledged {acked:?} on all four within {took:.1?}");
    writers.stop().await;
    let acked = writers.inserted();
    let took = offices::wait_converged(&hub, &acked, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!(
        "converged {took:.1?} after the writers stopped: {acked:?} rows, {} updates, checksums equal on all four",
        writers.updated()
    );
    assert!(
        acked.values().all(|n| *n > 50),
        "every site wrote: {acked:?}"
    );

    // The ids came from four auto-increment sequences that never meet.
    for (site, db) in hub.servers() {
        let number = if site == "hub" {
            offices::HUB_NUMBER
        } else {
            hub.office(site).unwrap().number
        };
        let increment = hub.opts.planned_sites;
        let foreign = db.count(&format!(
            "SELECT COUNT(*) FROM {} WHERE site = '{site}' AND id % {increment} <> {}",
            offices::TABLE,
            number % increment
        ));
        assert_eq!(foreign, 0, "{site}'s ids all use its offset {number}");
    }
    for o in &hub.offices {
        o.wait_verdict("in_sync", Duration::from_secs(30))
            .await
            .unwrap();
    }
}

async fn one_office_cut_for_60_s(family: Family) {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_offices(&dir, family).await;
    offices::create_table(&hub, Duration::from_secs(30))
        .await
        .unwrap();
    let mut writers = Writers::start(&hub, 5);
    let cut = &hub.offices[0];
    let others: Vec<&str> = std::iter::once("hub")
        .chain(hub.offices[1..].iter().map(|o| o.site.as_str()))
        .collect();

    cut.link.cut();
    let cut_at = Instant::now();
    cut.wait_state("the cut noticed", Duration::from_secs(10), |d| {
        d["tunnel"]["up"] == false
    })
    .await
    .unwrap();
    // For 60 s: the cut office shows the link down (amber, not red); every other office
    // stays without alarm, and the other sites' rows keep crossing between them.
    let mut samples = 0;
    let mut in_sync = 0;
    let mut crossed = Vec::new();
    while cut_at.elapsed() < Duration::from_secs(60) {
        for (site, verdict) in verdicts(&hub).await {
            if site == cut.site {
                assert_ne!(verdict, "needs_attention", "{site} is red after a cut");
            } else {
                samples += 1;
                in_sync += usize::from(verdict == "in_sync");
                assert!(
                    verdict == "in_sync" || verdict == "catching_up",
                    "{site} shows {verdict} while only {} is cut",
                    cut.site
                );
            }
        }
        if crossed.len() < 3
            && cut_at.elapsed() > Duration::from_secs(15 * (1 + crossed.len() as u64))
        {
            let acked = writers.inserted();
            let took = offices::wait_arrived(&hub, &others, &acked, Duration::from_secs(20))
                .await
                .unwrap();
            crossed.push(took);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let during = cut.state().await.unwrap();
    assert_eq!(during["verdict"], "link_down", "{during:#}");
    // The hub's operator sees the same: that office amber, nobody else.
    wait_fleet(
        &hub,
        |site| {
            if site == cut.site {
                "link_down"
            } else {
                "in_sync"
            }
        },
        Duration::from_secs(10),
    )
    .await;
    eprintln!(
        "during the 60 s cut: the others in_sync in {in_sync} of {samples} samples, never worse than catching_up; their rows crossed within {crossed:.1?}"
    );

    cut.link.heal();
    let healed = Instant::now();
    cut.wait_verdict("in_sync", Duration::from_secs(60))
        .await
        .unwrap();
    eprintln!(
        "{} in_sync {:.1?} after the heal",
        cut.site,
        healed.elapsed()
    );
    writers.stop().await;
    let acked = writers.inserted();
    let took = offices::wait_converged(&hub, &acked, Duration::from_secs(90))
        .await
        .unwrap();
    eprintln!("converged {took:.1?} after the writers stopped: {acked:?}");
    for o in &hub.offices {
        o.wait_verdict("in_sync", Duration::from_secs(30))
            .await
            .unwrap();
    }
}

async fn a_duplicate_key_or_a_stopped_connection(family: Family) {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_offices(&dir, family).await;
    hub.hub_db
        .sql("CREATE TABLE app.orders (id BIGINT AUTO_INCREMENT PRIMARY KEY, code VARCHAR(16) NOT NULL UNIQUE, site VARCHAR(32) NOT NULL) ENGINE=InnoDB")
        .unwrap();
    let has = |db: &tether_harness::db::DbServer, sql: &str| db.count(sql) > 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !hub.offices.iter().all(|o| {
        has(
            &o.db,
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema='app' AND table_name='orders'",
        )
    }) {
        assert!(Instant::now() < deadline, "app.orders reached every office");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // While office-1's link is down, the same code is entered at office-1 and office-2.
    let (first, second) = (&hub.offices[0], &hub.offices[1]);
    first.link.cut();
    first
        .wait_state("the cut noticed", Duration::from_secs(10), |d| {
            d["tunnel"]["up"] == false
        })
        .await
        .unwrap();
    for o in [first, second] {
        o.db.sql(&format!(
            "INSERT INTO app.orders (code, site) VALUES ('A-7', '{}')",
            o.site
        ))
        .unwrap();
    }
    // office-2's row reaches the hub and office-3 first.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(has(
        &hub.hub_db,
        "SELECT COUNT(*) FROM app.orders WHERE code = 'A-7'",
    ) && has(
        &hub.offices[2].db,
        "SELECT COUNT(*) FROM app.orders WHERE code = 'A-7'",
    )) {
        assert!(
            Instant::now() < deadline,
            "office-2's A-7 reached the hub and office-3"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.link.heal();

    // office-1's row reaches the hub after office-2's: the hub's connection for office-1
    // stops on it, and office-1's replica stops on office-2's row relayed by the hub.
    // Nothing else stops.
    let expected = vec![(first.site.clone(), "hub"), (first.site.clone(), "office")];
    // The bound covers office-1's tunnel and both IO threads coming back on a loaded
    // machine (about 20 s when idle).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let stopped = hub.stopped_on(1062).await.unwrap();
        if stopped == expected {
            break;
        }
        assert!(
            stopped.iter().all(|s| expected.contains(s)),
            "replication stopped on 1062 at {stopped:?}: more than {expected:?}"
        );
        assert!(
            Instant::now() < deadline,
            "replication stopped on 1062 at {stopped:?} only; expected {expected:?} within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Exactly that office turns red, naming both sides, the table and the key.
    let doc = first
        .wait_state(
            "both stopped directions named",
            Duration::from_secs(30),
            |d| {
                let r = d["reasons"].to_string();
                d["verdict"] == "needs_attention"
                    && r.contains("On the office database")
                    && r.contains("On the hub database")
            },
        )
        .await
        .unwrap();
    let reasons = doc["reasons"].to_string();
    eprintln!("{}: {reasons}", first.site);
    assert!(reasons.contains("duplicate key"), "{reasons}");
    assert!(reasons.contains("app.orders"), "names the table: {reasons}");
    assert!(reasons.contains("A-7"), "names the key: {reasons}");
    // The hub's side is this office's own connection there, by name.
    assert!(
        reasons.contains(&hub_words(family, &first.site).0)
            && reasons.contains(&hub_words(family, &first.site).1),
        "names the hub's connection for {}: {reasons}",
        first.site
    );
    wait_fleet(
        &hub,
        |site| {
            if site == first.site {
                "needs_attention"
            } else {
                "in_sync"
            }
        },
        Duration::from_secs(10),
    )
    .await;
    let seen = &fleet_view(&hub).await[&first.site];
    assert!(
        seen.last_error
            .as_deref()
            .is_some_and(|e| e.contains("1062")),
        "the fleet view names the error: {seen:?}"
    );
    // The others stay green for a while (nothing they replicate is affected).
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(10) {
        for (site, verdict) in verdicts(&hub).await {
            if site != first.site {
                assert_eq!(verdict, "in_sync", "{site} after another office's conflict");
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Nothing was skipped: the hub holds office-2's row only.
    assert_eq!(
        hub.hub_db
            .sql("SELECT site FROM app.orders WHERE code = 'A-7'")
            .unwrap()
            .trim(),
        second.site
    );

    // A connection a person stops on the hub turns only its own office red, and green
    // again once started.
    let third = &hub.offices[2];
    hub.hub_db
        .sql(&Dialect::current(family).stop_replica(Threads::Both, Some(&third.site)))
        .unwrap();
    let doc = third
        .wait_verdict("needs_attention", Duration::from_secs(30))
        .await
        .unwrap();
    let reasons = doc["reasons"].to_string();
    assert!(
        reasons.contains("On the hub database")
            && reasons.contains(&hub_words(family, &third.site).1),
        "names the hub's connection for {}: {reasons}",
        third.site
    );
    assert_eq!(
        second.state().await.unwrap()["verdict"],
        "in_sync",
        "{} after {}'s connection stopped",
        second.site,
        third.site
    );
    hub.hub_db
        .sql(&Dialect::current(family).start_replica(Threads::Both, Some(&third.site)))
        .unwrap();
    third
        .wait_verdict("in_sync", Duration::from_secs(30))
        .await
        .unwrap();
}

/// Two offices, one agent account on the hub: each agent reads its own connection there
/// (both green, the hub's side of each running), and every replication statement the
/// agents send to the hub names the sender's connection, never the hub's default one;
/// a connection stopped on the hub is named in the words its office shows.
async fn each_agent_on_its_own_connection(family: Family) {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = OfficesOptions::new(dir.path().to_path_buf(), 2);
    opts.family = family;
    // Every statement the hub receives, in a table the test reads.
    opts.hub_general_log = true;
    let hub = Offices::start(opts).await.unwrap();
    for o in &hub.offices {
        assert_eq!(
            o.config.replication.hub_connection.as_deref(),
            Some(o.site.as_str())
        );
        let doc = o
            .wait_verdict("in_sync", Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(
            doc["replication"]["office_to_hub"]["io_running"], true,
            "{doc:#}"
        );
        assert_eq!(
            doc["replication"]["office_to_hub"]["sql_running"], true,
            "{doc:#}"
        );
    }

    // office-1's line goes down and comes back: its agent restarts its own connection's
    // IO thread if that one waits to retry, and nobody else's.
    let first = &hub.offices[0];
    first.link.cut();
    first
        .wait_state("the cut noticed", Duration::from_secs(10), |d| {
            d["tunnel"]["up"] == false
        })
        .await
        .unwrap();
    first.link.heal();
    first
        .wait_verdict("in_sync", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(hub.offices[1].state().await.unwrap()["verdict"], "in_sync");

    // The replication statements among them (a restart is two in one round trip).
    const REPLICATION: [&str; 7] = [
        "SHOW SLAVE",
        "SHOW REPLICA",
        "START SLAVE",
        "STOP SLAVE",
        "START REPLICA",
        "STOP REPLICA",
        "CHANGE MASTER",
    ];
    let agent_statements: Vec<String> = hub
        .hub_db
        .sql("SELECT REPLACE(CONVERT(argument USING utf8mb4), '\\n', ' ') FROM mysql.general_log WHERE command_type = 'Query' AND user_host LIKE 'tether%'")
        .unwrap()
        .lines()
        .flat_map(|l| l.split(';'))
        .map(|s| s.trim().to_owned())
        .filter(|s| REPLICATION.iter().any(|r| s.to_ascii_uppercase().starts_with(r)))
        .collect();
    let heard = hub
        .hub_db
        .sql("SELECT user_host, command_type, LEFT(CONVERT(argument USING utf8mb4), 60) FROM mysql.general_log ORDER BY event_time DESC LIMIT 30")
        .unwrap_or_default();
    hub.hub_db.sql("SET GLOBAL general_log = OFF").unwrap();
    assert!(
        !agent_statements.is_empty(),
        "the hub heard no replication statement from the agents; its latest: {heard}"
    );
    let d = Dialect::current(family);
    for o in &hub.offices {
        let own = d.show_replica_status(Some(&o.site));
        assert!(
            agent_statements.iter().any(|s| s.contains(&own)),
            "{} reads its connection: {agent_statements:#?}",
            o.site
        );
    }
    let unnamed: Vec<&String> = agent_statements
        .iter()
        .filter(|s| {
            !hub.offices
                .iter()
                .any(|o| s.contains(&format!(" '{}'", o.site)))
        })
        .collect();
    assert!(
        unnamed.is_empty(),
        "statements that name no office's connection: {unnamed:#?}"
    );
    let restarts: Vec<&String> = agent_statements
        .iter()
        .filter(|s| s.starts_with("STOP") || s.starts_with("START"))
        .collect();
    eprintln!(
        "{} replication statements from the agents on the hub; restarts: {restarts:?}",
        agent_statements.len()
    );
    assert!(
        restarts
            .iter()
            .all(|s| s.contains(&format!("'{}'", first.site))),
        "only {}'s connection was restarted: {restarts:#?}",
        first.site
    );

    // A connection stopped on the hub: its office names it, in the family's words.
    let second = &hub.offices[1];
    hub.hub_db
        .sql(&d.stop_replica(Threads::Both, Some(&second.site)))
        .unwrap();
    let doc = second
        .wait_verdict("needs_attention", Duration::from_secs(30))
        .await
        .unwrap();
    let reasons = doc["reasons"].to_string();
    eprintln!("{}: {reasons}", second.site);
    assert!(
        reasons.contains(&hub_words(family, &second.site).1),
        "names the connection: {reasons}"
    );
    // The other office is not touched by it (just healed, it may still be catching up).
    let doc = first
        .wait_verdict("in_sync", Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        !doc["reasons"].to_string().contains(&second.site),
        "{doc:#}"
    );
}

/// A hub with one office replicating and writing; a second office, bare (its server's
/// own defaults, no accounts, nothing for it on the hub) but with its box's tunnel up
/// and `replication.hub_connection = "office-2"`, is added with `tether setup --yes`:
/// it gets the next free number the hub shows, its own connection and replication
/// account on the hub, the hub's position set for it (MariaDB: merged for its domain,
/// every connection there paused for a moment; MySQL: its own channel alone, the
/// office's own transactions counted as done on the hub); office-1's agent never turns
/// red meanwhile; then rows written at each of the three servers reach the other two and
/// `CHECKSUM TABLE` agrees.
async fn a_bare_office_joins(family: Family) {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut opts = OfficesOptions::new(dir.path().to_path_buf(), 2);
    opts.family = family;
    opts.bare_offices = 1;
    opts.agent = tether_harness::lab::AgentMode::Binary(tether_harness::process::tether_bin());
    // A quick line: the copy and the handshakes are what this test waits for.
    opts.rate = None;
    opts.delay = Duration::from_millis(20);
    let mut hub = Offices::start(opts).await.unwrap();
    offices::create_table(&hub, Duration::from_secs(60))
        .await
        .unwrap();
    eprintln!(
        "{family}: hub, office-1 replicating and office-2 bare in {:.1?}",
        started.elapsed()
    );
    let mut first_writers = Writers::start_on(&hub, &["hub", "office-1"], 5);

    // office-1's verdict, every 100 ms, from before the setup until everything converged.
    let watching = tokio_util::sync::CancellationToken::new();
    let watcher = {
        let socket = hub.offices[0].config.status.socket.clone();
        let stop = watching.clone();
        tokio::spawn(async move {
            let mut seen: BTreeMap<String, u32> = BTreeMap::new();
            let mut red_reasons = Vec::new();
            while !stop.is_cancelled() {
                if let Ok(doc) = tether::status::query(&socket, Duration::from_secs(2)).await
                    && let Ok(doc) = serde_json::from_str::<serde_json::Value>(doc.trim())
                {
                    let verdict = doc["verdict"].as_str().unwrap_or("?").to_owned();
                    if verdict == "needs_attention" {
                        red_reasons.push(doc["reasons"].to_string());
                    }
                    *seen.entry(verdict).or_default() += 1;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (seen, red_reasons)
        })
    };

    // `tether enroll` proposes the next free number from what the hub shows, and checks
    // one given by hand.
    let enroll = |extra: &[&str]| {
        let out = std::process::Command::new(tether_harness::process::tether_bin())
            .arg("enroll")
            .arg("--config")
            .arg(&hub.offices[1].config_path)
            .args(extra)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let printed = enroll(&[]);
    let numbers = match family {
        Family::MariaDb => {
            "server_id = 3\ngtid_domain_id = 3\nauto_increment_offset = 3\nauto_increment_increment = 10"
        }
        Family::MySql => "server_id = 3\nauto_increment_offset = 3\nauto_increment_increment = 10",
    };
    assert!(
        family == Family::MariaDb || !printed.contains("gtid_domain_id"),
        "{printed}"
    );
    for words in [
        "The next free number at the hub (the hub is 1; other offices: 'office-1' server_id 2).",
        numbers,
    ] {
        assert!(printed.contains(words), "`{words}` missing from: {printed}");
    }
    let printed = enroll(&["--site-number", "2"]);
    assert!(
        printed.contains(
            "site number 2 is already used by the office on the hub's connection 'office-1'"
        ),
        "{printed}"
    );

    let output = dir.path().join("setup.out");
    let mut child = tether_harness::process::setup_command(
        &hub.offices[1].config_path,
        (&hub.hub_db.root_password, &hub.offices[1].db.root_password),
        &["--yes"],
        &output,
    )
    .unwrap()
    .spawn()
    .unwrap();
    let setup_started = Instant::now();
    let status = hub
        .restarting_on_config_change(
            1,
            tokio::time::timeout(Duration::from_secs(600), child.wait()),
        )
        .await
        .unwrap();
    let printed = std::fs::read_to_string(&output).unwrap();
    let status = status
        .unwrap_or_else(|_| panic!("tether setup did not end within 10 minutes: {printed}"))
        .unwrap();
    assert!(status.success(), "tether setup failed: {printed}");
    eprintln!(
        "tether setup took {:.1?}:\n{printed}",
        setup_started.elapsed()
    );
    let mut expected = vec![
        "it becomes site number 3".to_owned(),
        format!(
            "its own {} 'office-2' and replication account `repl_3` on the hub",
            match family {
                Family::MariaDb => "connection",
                Family::MySql => "channel",
            }
        ),
        "The hub's agent account `tether` is kept as it is".to_owned(),
        "The site is set up and in sync.".to_owned(),
    ];
    let set = match family {
        Family::MariaDb => "SET GLOBAL",
        Family::MySql => "SET PERSIST",
    };
    for (variable, value) in [("server_id", 3), ("auto_increment_offset", 3)] {
        expected.push(format!("office: {set} {variable} = {value}"));
    }
    // The bare MySQL keeps the harness's increment (10, every site's).
    if family == Family::MariaDb {
        expected.push("office: SET GLOBAL auto_increment_increment = 10".to_owned());
    }
    // MariaDB's replica position is server-wide: the other offices' connections pause.
    let pausing = [
        "the other offices' connections pause for a moment",
        "the other offices' 1 connection(s) were paused for",
    ];
    match family {
        Family::MariaDb => {
            expected.push("office: SET GLOBAL gtid_domain_id = 3".to_owned());
            expected.extend(pausing.map(str::to_owned));
        }
        Family::MySql => {
            for words in pausing.iter().chain(&["gtid_domain_id", "gtid_slave_pos"]) {
                assert!(!printed.contains(words), "`{words}` in: {printed}");
            }
        }
    }
    for words in &expected {
        assert!(printed.contains(words), "`{words}` missing from: {printed}");
    }
    let second = &hub.offices[1].db;
    assert_eq!(
        second
            .sql("SELECT @@GLOBAL.server_id, @@GLOBAL.auto_increment_offset, @@GLOBAL.auto_increment_increment")
            .unwrap()
            .trim(),
        "3\t3\t10"
    );
    if family == Family::MariaDb {
        assert_eq!(
            second.sql("SELECT @@GLOBAL.gtid_domain_id").unwrap().trim(),
            "3"
        );
    }
    let mut connections: Vec<String> = offices::replica_statuses(&hub.hub_db)
        .await
        .unwrap()
        .iter()
        .map(|r| offices::connection_name(r).to_owned())
        .collect();
    connections.sort();
    assert_eq!(connections, ["office-1", "office-2"]);

    // Rows written at each of the three servers reach the other two.
    let mut second_writers = Writers::start_on(&hub, &["office-2"], 5);
    let deadline = Instant::now() + Duration::from_secs(60);
    while second_writers.inserted().values().sum::<u64>() < 10 {
        assert!(Instant::now() < deadline, "office-2 cannot write");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first_writers.stop().await;
    second_writers.stop().await;
    let mut acked = first_writers.inserted();
    acked.extend(second_writers.inserted());
    let took = offices::wait_converged(&hub, &acked, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("all three converged {took:.1?} after the writers stopped: {acked:?}");
    watching.cancel();
    let (seen, red) = watcher.await.unwrap();
    eprintln!("office-1's verdicts while office-2 was added: {seen:?}");
    assert!(red.is_empty(), "office-1 turned red: {red:?}");
    assert!(seen.get("in_sync").copied().unwrap_or(0) > 0, "{seen:?}");
    for o in &hub.offices {
        o.wait_verdict("in_sync", Duration::from_secs(30))
            .await
            .unwrap();
    }

    // `tether doctor` at office-2 sees office-1's numbers through the hub: given
    // office-1's server id (for the moment of the check; only office-2's heartbeat writes
    // meanwhile), it refuses it naming office-1's connection (MySQL: channel).
    let second = &hub.offices[1];
    second.db.sql("SET GLOBAL server_id = 2").unwrap();
    let doctor = std::process::Command::new(tether_harness::process::tether_bin())
        .arg("doctor")
        .arg("--config")
        .arg(&second.config_path)
        .output()
        .unwrap();
    second.db.sql("SET GLOBAL server_id = 3").unwrap();
    let said = String::from_utf8_lossy(&doctor.stdout);
    assert!(!doctor.status.success(), "{said}");
    let noun = match family {
        Family::MariaDb => "connection",
        Family::MySql => "channel",
    };
    assert!(
        said.contains(&format!("PROBLEM: The office database has server_id = 2, the same as office 'office-1' (the hub's {noun} 'office-1'")),
        "{said}"
    );
    eprintln!("{family}: whole test {:.1?}", started.elapsed());
}
