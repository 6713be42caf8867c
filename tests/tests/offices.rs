//! A hub and three offices, each with its own MariaDB, agent and link simulator, all four
//! writing: every row reaches every server through the hub; one office's cut or conflict
//! stays that office's.
//!
//! The hub's side is set up by the harness (one named connection per office) and each
//! agent's hub sessions see their own office's connection through the harness's bridge
//! (`HubView::OwnConnection`): the agent does not name its connection on the hub yet. The
//! last test records what an agent sees without that bridge.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tether_harness::offices::{self, HubView, Offices, OfficesOptions, Writers};

const OFFICES: usize = 3;

async fn hub_with_offices(dir: &tempfile::TempDir, hub_view: HubView) -> Offices {
    let mut opts = OfficesOptions::new(dir.path().to_path_buf(), OFFICES);
    opts.hub_view = hub_view;
    let started = Instant::now();
    let hub = Offices::start(opts).await.unwrap();
    eprintln!(
        "hub and {OFFICES} offices replicating in {:.1?}",
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_four_sites_writing_end_with_every_row_everywhere_and_equal_checksums() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_offices(&dir, HubView::OwnConnection).await;
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
        .unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_office_cut_for_60_s_while_the_others_keep_replicating_without_alarm() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_offices(&dir, HubView::OwnConnection).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_key_between_two_offices_or_a_stopped_connection_turns_only_that_office_red() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_offices(&dir, HubView::OwnConnection).await;
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
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stopped = hub.stopped_on(1062).await.unwrap();
        if stopped == expected {
            break;
        }
        assert!(
            stopped.iter().all(|s| expected.contains(s)) && Instant::now() < deadline,
            "replication stopped on 1062 at {stopped:?}; expected {expected:?} within 60 s"
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
        .sql(&format!("STOP SLAVE '{}'", third.site))
        .unwrap();
    let doc = third
        .wait_verdict("needs_attention", Duration::from_secs(30))
        .await
        .unwrap();
    let reasons = doc["reasons"].to_string();
    assert!(reasons.contains("stopped on the hub database"), "{reasons}");
    assert_eq!(
        second.state().await.unwrap()["verdict"],
        "in_sync",
        "{} after {}'s connection stopped",
        second.site,
        third.site
    );
    hub.hub_db
        .sql(&format!("START SLAVE '{}'", third.site))
        .unwrap();
    third
        .wait_verdict("in_sync", Duration::from_secs(30))
        .await
        .unwrap();
}

/// What an agent sees today on a hub with one named connection per office when it logs
/// in with the shared account `tether enroll` describes: the hub's default connection,
/// which does not exist, so "not set up" and red, although its office replicates both
/// ways. This is what the agent's own named-connection support must change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_own_connection_an_agent_reads_the_hubs_default_one_and_finds_none() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = OfficesOptions::new(dir.path().to_path_buf(), 1);
    opts.hub_view = HubView::DefaultConnection;
    let hub = Offices::start(opts).await.unwrap();
    let office = &hub.offices[0];
    // The data flows both ways all the same.
    hub.hub_db
        .sql("CREATE TABLE app.probe (id BIGINT AUTO_INCREMENT PRIMARY KEY, site VARCHAR(32) NOT NULL)")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while office.db.count("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema='app' AND table_name='probe'") < 1 {
        assert!(Instant::now() < deadline, "app.probe reached the office");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    office
        .db
        .sql("INSERT INTO app.probe (site) VALUES ('office-1')")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while hub.hub_db.count("SELECT COUNT(*) FROM app.probe") < 1 {
        assert!(
            Instant::now() < deadline,
            "the office's row reached the hub"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let doc = office
        .wait_verdict("needs_attention", Duration::from_secs(30))
        .await
        .unwrap();
    let reasons = doc["reasons"].to_string();
    eprintln!("the agent says: {reasons}");
    assert!(
        reasons.contains("Replication office to hub is not set up on the hub database"),
        "{reasons}"
    );
    assert_eq!(
        doc["replication"]["office_to_hub"]["io_running"],
        serde_json::Value::Null
    );
    assert_eq!(doc["replication"]["hub_to_office"]["io_running"], true);
}
