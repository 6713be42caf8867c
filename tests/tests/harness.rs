//! The harness itself: real servers start fast and in parallel, answer as configured,
//! and leave nothing behind, even when a test panics; failures name the server.

use std::process::Command;
use std::time::Duration;

use tether_harness::db::Family;
use tether_harness::fixture::{alive, descendants_of};
use tether_harness::mosquitto::{Mosquitto, connack};
use tether_harness::{Fixture, FixtureOptions, wait_for};

fn query(db: &tether_harness::db::DbServer, sql: &str) -> String {
    db.sql(sql).unwrap().trim().to_owned()
}

/// Logs in as `user` over TCP from 127.0.0.1 the way a replica or the agent does
/// (mysql_async speaks caching_sha2_password over plain TCP, as MySQL's replica does with
/// GET_SOURCE_PUBLIC_KEY=1) and returns CURRENT_USER().
fn tcp_login(port: u16, user: &str, password: &str) -> Result<String, String> {
    use mysql_async::prelude::Queryable;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let opts = mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(port)
            .user(Some(user))
            .pass(Some(password))
            .prefer_socket(false);
        let mut c = tokio::time::timeout(Duration::from_secs(10), mysql_async::Conn::new(opts))
            .await
            .map_err(|_| "no answer".to_string())?
            .map_err(|e| e.to_string())?;
        let who: Option<String> = c
            .query_first("SELECT CURRENT_USER()")
            .await
            .map_err(|e| e.to_string())?;
        let _ = c.disconnect().await;
        Ok(who.unwrap_or_default())
    })
}

fn fixture_answers_as_configured(family: Family) {
    let f = Fixture::start(FixtureOptions::of(family)).unwrap();
    eprintln!("{family} fixture ready in {:.1?}", f.started_in);
    assert!(
        f.started_in < Duration::from_secs(15),
        "took {:?}",
        f.started_in
    );

    // Distinct ids that are not the default (1), distinct offsets and GTID domains.
    let mut uuids = Vec::new();
    for (db, id, offset) in [(f.hub_db(), "11", "1"), (f.office_db(), "12", "2")] {
        assert_eq!(db.family, family);
        let row = query(
            db,
            "SELECT @@server_id, @@auto_increment_increment, @@auto_increment_offset, @@log_bin, @@binlog_format",
        );
        assert_eq!(row, format!("{id}\t10\t{offset}\t1\tROW"), "{}", db.name);
        match family {
            Family::MariaDb => assert_eq!(query(db, "SELECT @@gtid_domain_id"), offset),
            Family::MySql => {
                assert_eq!(
                    query(db, "SELECT @@gtid_mode, @@enforce_gtid_consistency"),
                    "ON\tON"
                );
                uuids.push(query(db, "SELECT @@server_uuid"));
            }
        }
        // The replication user logs in over TCP from 127.0.0.1 (on MariaDB no
        // anonymous-user shadow; on MySQL caching_sha2_password over plain TCP).
        let who = tcp_login(db.port, "repl", &db.repl_password).unwrap();
        let expected = match family {
            Family::MariaDb => "repl@127.0.0.1",
            Family::MySql => "repl@%",
        };
        assert_eq!(who, expected, "{}", db.name);
    }
    if family == Family::MySql {
        assert_ne!(
            uuids[0], uuids[1],
            "each copy of the template has its own server_uuid"
        );
    }

    // A real OpenSSH client may forward to the permitted hub DB port, and nowhere else.
    let sshd = f.sshd();
    let known = sshd.dir().join("known_hosts_client");
    std::fs::write(
        &known,
        format!("[127.0.0.1]:{} {}\n", sshd.port, sshd.host_key),
    )
    .unwrap();
    let local = tether_harness::process::free_port().unwrap();
    let denied_local = tether_harness::process::free_port().unwrap();
    let mut ssh = Command::new("ssh")
        .args([
            "-N",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ExitOnForwardFailure=no",
        ])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known.display()))
        .arg("-i")
        .arg(&sshd.device_key)
        .arg("-p")
        .arg(sshd.port.to_string())
        .arg("-L")
        .arg(format!("127.0.0.1:{local}:127.0.0.1:{}", f.hub_db().port))
        .arg("-L")
        .arg(format!(
            "127.0.0.1:{denied_local}:127.0.0.1:{}",
            f.office_db().port
        ))
        .arg(format!("{}@127.0.0.1", sshd.user))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let greeting = |port: u16| -> Option<Vec<u8>> {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).ok()?;
        Some(buf.to_vec())
    };
    wait_for(
        "a MySQL greeting through ssh -L",
        Duration::from_secs(10),
        || greeting(local).is_some_and(|g| g[4] == 0x0a),
    )
    .unwrap();
    assert!(
        greeting(denied_local).is_none(),
        "a forward outside permitopen worked"
    );
    let _ = ssh.kill();
    let _ = ssh.wait();

    assert!(connack(f.broker().port));
}

#[test]
fn full_fixture_starts_within_15_s_and_answers_as_configured() {
    fixture_answers_as_configured(Family::MariaDb);
}

#[test]
fn full_fixture_starts_within_15_s_and_answers_as_configured_on_mysql() {
    fixture_answers_as_configured(Family::MySql);
}

#[test]
fn nothing_is_left_behind_even_after_a_panic() {
    let pids = std::sync::Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let f = Fixture::start(FixtureOptions::default()).unwrap();
        // The servers and everything they forked (other tests run alongside: only ours).
        let mut mine = f.pids();
        for p in f.pids() {
            mine.extend(descendants_of(p));
        }
        *pids.lock().unwrap() = mine;
        assert!(f.pids().iter().all(|p| alive(*p)));
        panic!("a test failing while it owns the fixture");
    }));
    assert!(result.is_err());
    let pids = pids.into_inner().unwrap();
    assert!(pids.len() >= 4, "expected the four servers, saw {pids:?}");
    let left: Vec<u32> = pids.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

#[test]
fn a_server_that_fails_to_start_is_named_with_its_log() {
    let err = Mosquitto::start(&["this_is_not_an_option 1".to_owned()]).unwrap_err();
    let shown = format!("{err:#}");
    assert!(shown.contains("broker (mosquitto)"), "{shown}");
    assert!(shown.contains("last lines of"), "{shown}");
    assert!(
        shown.to_lowercase().contains("this_is_not_an_option"),
        "{shown}"
    );

    let err = tether_harness::db::DbServer::start(tether_harness::db::DbOptions {
        extra_args: vec![
            "--innodb-buffer-pool-size=bananas".into(),
            "--no-such-option".into(),
        ],
        ..tether_harness::db::DbOptions::new(
            tether_harness::db::Family::MariaDb,
            tether_harness::mariadb::Site::Office,
        )
    })
    .unwrap_err();
    let shown = format!("{err:#}");
    assert!(shown.contains("office MariaDB"), "{shown}");
    assert!(shown.contains("last lines of"), "{shown}");
}

#[test]
fn a_port_in_use_is_not_fatal() {
    // Hold many ports so a collision is likely, then start a broker: it must find one.
    let held: Vec<std::net::TcpListener> = (0..50)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let b = Mosquitto::start(&[]).unwrap();
    assert!(
        held.iter()
            .all(|l| l.local_addr().unwrap().port() != b.port)
    );
    assert!(connack(b.port));
}
