//! Crash safety of the whole agent in the lab: SIGKILL at 100 random moments (while it
//! starts, connects and pins the hub, sets up the forwards, writes its journal on a
//! verdict change, and carries replication traffic from writers on both sites). Every
//! restart is clean, the journal always decodes, the hub never holds a second listener
//! or a leftover session, and replication loses nothing. Agents log at trace level; the
//! log, journal and MQTT payloads are scanned for secrets at the end.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tether_harness::lab::{AgentMode, Lab, LabOptions};
use tether_harness::process::{tail, tether_bin};
use tether_harness::secrets::{MqttTap, Secrets};
use tether_harness::workload::{self, Workload};

const KILLS: usize = 100;

/// TCP sockets in `state` on loopback whose local port is `port` (ss filter syntax).
fn sockets(state: &str, filter: &str) -> usize {
    let out = std::process::Command::new("ss")
        .args(["-Htn", "state", state, filter])
        .output()
        .expect("ss (iproute2)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// The journal in `data` decodes (or does not exist yet), and none was ever set aside.
fn journal_is_valid(data: &std::path::Path) -> Result<(), String> {
    let path = data.join(tether::journal::FILE_NAME);
    if let Ok(bytes) = std::fs::read(&path) {
        tether::journal::decode(&bytes, &path).map_err(|e| e.to_string())?;
    }
    if let Ok(entries) = std::fs::read_dir(data) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.contains(".corrupt-") || name.contains(".newer-") {
                return Err(format!("a journal was set aside: {name}"));
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_100_random_moments_restarts_clean_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts =
        LabOptions::office_link(dir.path().to_path_buf(), AgentMode::Binary(tether_bin()));
    // A faster line than the office's, so 100 restarts fit in about a minute; the
    // office line's own behaviour is what the other lab tests measure.
    opts.rate = Some(256_000);
    opts.delay = Duration::from_millis(50);
    opts.agent_env = vec![("RUST_LOG".into(), "trace".into())];
    let mut lab = Lab::start(opts).await.unwrap();
    let broker = lab.fixture.broker();
    let tap = MqttTap::start(&broker.host, broker.port, &dir.path().join("mqtt.txt")).unwrap();
    {
        let (hub, office) = (lab.fixture.hub_db(), lab.fixture.office_db());
        workload::create_table(hub, office, Duration::from_secs(30))
            .await
            .unwrap();
    }
    let mut writers = Workload::start(lab.fixture.hub_db(), lab.fixture.office_db(), 20);

    let seed: u64 = std::env::var("TETHER_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {seed} (TETHER_CRASH_SEED to repeat)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let data = lab.config.data.dir.clone();
    let remote_port = lab.fixture.remote_listen_port;
    let sshd_port = lab.fixture.sshd().port;
    let started = Instant::now();
    let mut recoveries = Vec::new();
    for i in 1..=KILLS {
        // Mostly early (connecting, pinning, forwards, first verdicts and journal
        // writes), sometimes later (steady forwarding of replication traffic).
        let at = if rng.random_ratio(3, 4) {
            rng.random_range(0..600)
        } else {
            rng.random_range(600..2500)
        };
        tokio::time::sleep(Duration::from_millis(at)).await;
        lab.check_agent_alive()
            .unwrap_or_else(|e| panic!("kill {i}: the agent had exited by itself: {e:#}"));
        lab.kill_agent_hard();
        journal_is_valid(&data).unwrap_or_else(|e| panic!("kill {i} after {at} ms: {e}"));
        lab.start_agent().await.unwrap();
        if i % 25 == 0 {
            let t = Instant::now();
            lab.wait_verdict("in_sync", Duration::from_secs(60))
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "after kill {i}: {e:#}\nthe agent's log ends:\n{}",
                        tail(&dir.path().join("agent.log"), 60)
                    )
                });
            recoveries.push(t.elapsed());
            // One session and one remote listener at the hub, whatever came before.
            let listeners = sockets("listening", &format!("sport = :{remote_port}"));
            assert_eq!(
                listeners, 1,
                "after kill {i}: {listeners} listeners on the hub"
            );
            let sessions = sockets("established", &format!("sport = :{sshd_port}"));
            assert_eq!(
                sessions, 1,
                "after kill {i}: {sessions} SSH sessions at the hub"
            );
        }
    }
    eprintln!(
        "{KILLS} SIGKILLs in {:.0?}; in_sync again after a restart in {recoveries:.1?}",
        started.elapsed()
    );
    writers.stop().await;
    let counts = writers.inserted();
    let (hub, office) = (lab.fixture.hub_db(), lab.fixture.office_db());
    let took = workload::wait_converged(hub, office, counts, Duration::from_secs(60))
        .await
        .unwrap();
    eprintln!(
        "rows acknowledged (hub, office) {counts:?}, updates (hub, office) {:?}, all on both sides {took:.1?} after the writers stopped",
        writers.updated()
    );
    assert!(
        counts.0 > 100 && counts.1 > 100,
        "too few writes: {counts:?}"
    );
    journal_is_valid(&data).unwrap();

    lab.stop_agent().await;
    drop(tap);
    let mut secrets = Secrets::of_fixture(&lab.fixture).unwrap();
    secrets.add("hub agent password", lab.config.hub_db.password.expose());
    let log = std::fs::read(dir.path().join("agent.log")).unwrap();
    assert!(
        !String::from_utf8_lossy(&log).contains("panicked"),
        "the agent panicked"
    );
    let mut leaks = secrets.scan("agent log", &log);
    leaks.extend(secrets.scan_file("journal", &data.join(tether::journal::FILE_NAME)));
    leaks.extend(secrets.scan_file("MQTT payloads", &dir.path().join("mqtt.txt")));
    assert!(leaks.is_empty(), "secrets leaked: {leaks:#?}");
}
