//! Bad situations, one table: each gets its expected located error or `reasons` text within
//! a bound, and none makes the agent retry in a tight loop (attempts are counted at a link
//! simulator in front of the server). Every agent here runs with `RUST_LOG=trace`; at the
//! end its logs, every MQTT payload the broker passed on, `tether status` output and the
//! journal are scanned for the configured passwords and the device key.
//!
//! Clock jumps are tested where they can be injected: `health` (settle and alert timing
//! on the monotonic clock whatever the wall clock does) and `replication::lag_seconds`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tether::config::Config;
use tether::secret::Secret;
use tether_harness::db::Family;
use tether_harness::fixture::{Fixture, FixtureOptions};
use tether_harness::lab::{agent_config_for, change_master};
use tether_harness::linksim::{LinkOptions, LinkSim};
use tether_harness::process::{Proc, RunAs, free_port, tether_bin};
use tether_harness::secrets::{MqttTap, Secrets};

/// What is wrong in a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bad {
    WrongDbPassword,
    WrongDeviceKey,
    HubHostKeyChanged,
    DbUnreachableAtStart,
    DataDirFull,
    DataDirReadOnly,
}

/// Where the expected words appear.
#[derive(Debug, Clone, Copy)]
enum Field {
    Reasons,
    JournalProblem,
}

struct Case {
    bad: Bad,
    field: Field,
    expect: &'static str,
    /// At most this many connection attempts in the [`WINDOW`] after the words appear.
    max_attempts: Option<u64>,
}

const WINDOW: Duration = Duration::from_secs(15);
const SHOWN_WITHIN: Duration = Duration::from_secs(30);

const CASES: &[Case] = &[
    Case {
        bad: Bad::WrongDbPassword,
        field: Field::Reasons,
        expect: "The agent's account on the office database is refused",
        // A refusal backs off (2 s, 4 s, 8 s, ...); before, the agent retried every second.
        max_attempts: Some(5),
    },
    Case {
        bad: Bad::WrongDeviceKey,
        field: Field::Reasons,
        expect: "The hub refused this box's login",
        max_attempts: Some(2),
    },
    Case {
        bad: Bad::HubHostKeyChanged,
        field: Field::Reasons,
        expect: "The hub presented a different host key",
        max_attempts: Some(2),
    },
    Case {
        bad: Bad::DbUnreachableAtStart,
        field: Field::Reasons,
        expect: "Cannot read replication status (hub to office) from the office database",
        // The heartbeat's pace (1 s): the database may come back any moment.
        max_attempts: Some(20),
    },
    Case {
        bad: Bad::DataDirFull,
        field: Field::JournalProblem,
        expect: "No space left on device",
        max_attempts: None,
    },
    Case {
        bad: Bad::DataDirReadOnly,
        field: Field::JournalProblem,
        expect: "Read-only file system",
        max_attempts: None,
    },
];

const MQTT_PASSWORD: &str = "Mqtt-Secret-4d1f7a";
const WRONG_DB_PASSWORD: &str = "Wrong-Office-Pw-93be";

/// A small tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, read_only: bool) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs"])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
        let fs = Tmpfs(path.to_path_buf());
        if read_only {
            let ro = Command::new("mount")
                .args(["-o", "remount,ro"])
                .arg(path)
                .status()
                .is_ok_and(|s| s.success());
            ro.then_some(fs)
        } else {
            // Fill it to the last block.
            use std::io::Write;
            let mut f = std::fs::File::create(path.join("filler")).ok()?;
            let block = vec![0u8; 4096];
            while f.write_all(&block).is_ok() {}
            let _ = f.write_all(&[0]);
            Some(fs)
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// One case's agent and what it left behind.
struct Outcome {
    name: String,
    attempts: Option<u64>,
    shown_after: Duration,
    files: Vec<(String, PathBuf)>,
    status_outputs: Vec<(String, Vec<u8>)>,
}

fn random_key(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "other", "-f"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    path
}

async fn state(socket: &Path) -> Option<serde_json::Value> {
    let doc = tether::status::query(socket, Duration::from_secs(2))
        .await
        .ok()?;
    serde_json::from_str(doc.trim()).ok()
}

fn field_text(doc: &serde_json::Value, field: Field) -> String {
    match field {
        Field::Reasons => doc["reasons"].to_string(),
        Field::JournalProblem => doc["agent"]["journal_problem"].to_string(),
    }
}

async fn run_case(f: &Fixture, dir: &Path, case: &Case) -> Option<Outcome> {
    let name = format!("{:?}", case.bad);
    let dir = dir.join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let sshd_addr = format!("127.0.0.1:{}", f.sshd().port).parse().unwrap();
    // Only the case that needs the tunnel up gets the real hub (the remote forward port
    // is one per hub account); the others point at a port where nothing listens.
    let hub_for_case = match case.bad {
        Bad::DbUnreachableAtStart => sshd_addr,
        _ => format!("127.0.0.1:{}", free_port().unwrap())
            .parse()
            .unwrap(),
    };
    let mut c: Config = agent_config_for(f, hub_for_case, free_port().unwrap(), &dir).unwrap();
    c.site.id = name.to_lowercase();
    c.mqtt.username = Some("tether".into());
    c.mqtt.password = Some(Secret::new(MQTT_PASSWORD));
    let mut counter: Option<LinkSim> = None;
    let mut _mount: Option<Tmpfs> = None;
    let proxy = |to: std::net::SocketAddr| async move {
        LinkSim::start(
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            to,
            LinkOptions::default(),
        )
        .await
        .unwrap()
    };
    let office_addr = format!("127.0.0.1:{}", f.office_db().port).parse().unwrap();
    match case.bad {
        Bad::WrongDbPassword => {
            let l = proxy(office_addr).await;
            c.office_db.port = l.local_addr().port();
            c.office_db.password = Secret::new(WRONG_DB_PASSWORD);
            counter = Some(l);
        }
        Bad::WrongDeviceKey | Bad::HubHostKeyChanged => {
            let l = proxy(sshd_addr).await;
            c.hub.port = l.local_addr().port();
            if case.bad == Bad::WrongDeviceKey {
                c.hub.key_path = Some(random_key(&dir, "stranger_key"));
            } else {
                let other = random_key(&dir, "other_host_key");
                let public = std::fs::read_to_string(other.with_extension("pub")).unwrap();
                c.hub.host_key = Some(public.trim().to_owned());
            }
            counter = Some(l);
        }
        Bad::DbUnreachableAtStart => {
            let l = proxy(office_addr).await;
            l.cut();
            c.office_db.port = l.local_addr().port();
            counter = Some(l);
        }
        Bad::DataDirFull | Bad::DataDirReadOnly => {
            let data = dir.join("data");
            match Tmpfs::mount(&data, case.bad == Bad::DataDirReadOnly) {
                Some(m) => _mount = Some(m),
                // As root (CI) the case must run: a mount that fails there is a failure.
                None if nix::unistd::geteuid().is_root() => {
                    panic!("{name}: cannot mount a tmpfs on {} as root", data.display())
                }
                None => {
                    tether_harness::skip::skip(
                        &format!("bad_input::{name}"),
                        "mounting a tmpfs needs root",
                    );
                    return None;
                }
            }
        }
    }
    let config_path = dir.join("tether.toml");
    std::fs::write(&config_path, toml::to_string(&c).unwrap()).unwrap();
    let me = RunAs {
        name: String::new(),
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        switch: false,
    };
    let log = dir.join("agent.log");
    let mut cmd = Command::new(tether_bin());
    cmd.arg("run")
        .arg("--config")
        .arg(&config_path)
        .env("RUST_LOG", "trace");
    let started = Instant::now();
    let mut agent = Proc::spawn(&name, &me, &mut cmd, &log).unwrap();
    if case.bad == Bad::DbUnreachableAtStart {
        // Replication set up through this agent's tunnel, so that the only thing wrong
        // is the office database the agent cannot reach.
        while state(&c.status.socket)
            .await
            .is_none_or(|d| d["tunnel"]["up"] != true)
        {
            assert!(started.elapsed() < SHOWN_WITHIN, "{name}: no tunnel");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (o, h) = (f.office_db().sql_clone(), f.hub_db().sql_clone());
        let (opw, hpw) = (
            f.office_db().repl_password.clone(),
            f.hub_db().repl_password.clone(),
        );
        let (local, remote) = (c.forwards.local_listen.port, f.remote_listen_port);
        tokio::task::spawn_blocking(move || {
            o(&change_master(Family::MariaDb, local, &hpw)).unwrap();
            h(&change_master(Family::MariaDb, remote, &opw)).unwrap();
        })
        .await
        .unwrap();
    }

    let shown = loop {
        if let Some(doc) = state(&c.status.socket).await
            && field_text(&doc, case.field).contains(case.expect)
        {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < SHOWN_WITHIN,
            "{name}: `{}` not shown within {SHOWN_WITHIN:?}; last state: {:#}\n{}",
            case.expect,
            state(&c.status.socket).await.unwrap_or_default(),
            tether_harness::process::tail(&log, 15)
        );
        agent.check_alive().unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let attempts = match &counter {
        Some(l) if case.max_attempts.is_some() => {
            let before = l.stats().connections;
            tokio::time::sleep(WINDOW).await;
            Some(l.stats().connections - before)
        }
        _ => None,
    };
    let mut status_outputs = Vec::new();
    for json in [false, true] {
        let mut cmd = Command::new(tether_bin());
        cmd.arg("status").arg("--config").arg(&config_path);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        let text = [out.stdout, out.stderr].concat();
        if !json {
            let words = String::from_utf8_lossy(&text);
            assert!(
                words.contains(case.expect),
                "{name}: `tether status` does not say `{}`:\n{words}",
                case.expect
            );
        }
        status_outputs.push((format!("{name} tether status (json {json})"), text));
    }
    if case.bad == Bad::DbUnreachableAtStart {
        // The database comes back: the agent finds it without a restart.
        counter.as_ref().unwrap().heal();
        let back = Instant::now();
        loop {
            let doc = state(&c.status.socket).await.unwrap_or_default();
            if doc["replication"]["hub_to_office"]["io_running"].is_boolean()
                || !doc["reasons"].to_string().contains(case.expect)
            {
                break;
            }
            assert!(
                back.elapsed() < Duration::from_secs(20),
                "{name}: still unreachable after heal: {doc:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    agent.check_alive().unwrap();
    tokio::task::spawn_blocking(move || agent.stop())
        .await
        .unwrap();
    // Stopped: the words come from the journal now.
    let out = Command::new(tether_bin())
        .arg("status")
        .arg("--config")
        .arg(&config_path)
        .output()
        .unwrap();
    status_outputs.push((
        format!("{name} tether status (stale)"),
        [out.stdout, out.stderr].concat(),
    ));
    let journal = c.data.dir.join(tether::journal::FILE_NAME);
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        logged.contains("TRACE") || logged.contains("DEBUG"),
        "{name}: the agent did not log at trace level:\n{}",
        logged.lines().take(20).collect::<Vec<_>>().join("\n")
    );
    // The control: the scan finds the secrets where they are meant to be.
    let control = Secrets::of_fixture(f).unwrap();
    assert!(
        !control
            .scan("config", toml::to_string(&c).unwrap().as_bytes())
            .is_empty()
            || case.bad == Bad::WrongDbPassword,
        "{name}: the scan cannot see the passwords in the config itself"
    );
    Some(Outcome {
        name,
        attempts,
        shown_after: shown,
        files: vec![("agent log".into(), log), ("journal".into(), journal)],
        status_outputs,
    })
}

/// The malformed config row: a located error, exit status 2, before anything starts.
fn malformed_config(dir: &Path) -> (Vec<u8>, PathBuf) {
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        format!(
            "[site]\nid = \"office\"\n\n[hub]\nport = \"twenty-two\"\nhost = \"h\"\n\n[office_db]\npassword = \"{WRONG_DB_PASSWORD}\"\n"
        ),
    )
    .unwrap();
    let out = Command::new(tether_bin())
        .arg("run")
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{}:5:8: hub.port:", path.display())),
        "not located: {err}"
    );
    ([out.stdout, out.stderr].concat(), path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_situations_are_named_without_tight_retry_loops_and_nothing_leaks() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = tokio::task::spawn_blocking(|| Fixture::start(FixtureOptions::default()))
        .await
        .unwrap()
        .unwrap();
    let mut secrets = Secrets::of_fixture(&fixture).unwrap();
    secrets.add("the MQTT password", MQTT_PASSWORD);
    secrets.add("the wrong office DB password", WRONG_DB_PASSWORD);
    let broker = fixture.broker();
    let tap = MqttTap::start(&broker.host, broker.port, &dir.path().join("mqtt.txt")).unwrap();

    let (bad_config_output, _) = malformed_config(dir.path());
    let outcomes = run_all_cases(&fixture, dir.path()).await;
    let mut leaks = secrets.scan("malformed-config output", &bad_config_output);
    for o in outcomes.iter().flatten() {
        eprintln!(
            "{}: shown after {:.1?}, {} connection attempts in {WINDOW:?}",
            o.name,
            o.shown_after,
            o.attempts.map_or("-".to_owned(), |n| n.to_string())
        );
        for (what, path) in &o.files {
            leaks.extend(secrets.scan_file(&format!("{} {what}", o.name), path));
        }
        for (what, text) in &o.status_outputs {
            leaks.extend(secrets.scan(what, text));
        }
    }
    for (o, case) in outcomes.iter().zip(CASES) {
        if let (Some(o), Some(max)) = (o, case.max_attempts) {
            let n = o.attempts.unwrap();
            assert!(
                n <= max,
                "{}: {n} connection attempts in {WINDOW:?} (at most {max})",
                o.name
            );
        }
    }
    drop(tap);
    let mqtt = std::fs::read_to_string(dir.path().join("mqtt.txt")).unwrap_or_default();
    assert!(
        mqtt.contains("tether/wrongdbpassword/state"),
        "the MQTT tap saw no state: {mqtt}"
    );
    leaks.extend(secrets.scan("MQTT payloads", mqtt.as_bytes()));
    leaks.extend(secrets.scan_file("the broker's log", &broker.log));
    assert!(secrets.len() >= 8, "too few secrets to scan for");
    assert!(leaks.is_empty(), "secrets leaked: {leaks:#?}");
}

/// All cases at once (each its own agent, site id, ports and data dir): about one case's
/// time instead of six.
async fn run_all_cases(f: &Fixture, dir: &Path) -> Vec<Option<Outcome>> {
    let runs = CASES.iter().map(|case| run_case(f, dir, case));
    join_all(runs).await
}

/// Polls every future to completion together (a tiny join_all, no extra crate).
async fn join_all<F: std::future::Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futs: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if done[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => done[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    done.into_iter().map(|d| d.unwrap()).collect()
}
