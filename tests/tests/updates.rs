//! Signed updates on the .deb path: the agent binary as the factory launcher, a temp data
//! dir, the hub's real sshd serving releases over sftp, the link simulator in between.
//! N to N+1 (seen on MQTT), a release that exits at start and one that cannot reach the
//! hub rolled back within the trial bound, every kind of bad release refused with nothing
//! changed, a download cut in the middle resumed (bytes re-sent counted at the hub), and
//! SIGKILLs during the update each leaving a box that comes back in sync.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tether_harness::lab::{AgentMode, Lab, LabOptions};
use tether_harness::process::tether_bin;
use tether_harness::releases::{self, ReleaseKey, bump, everyone};
use tether_harness::secrets::MqttTap;

/// The trial bound these tests configure.
const TRIAL: Duration = Duration::from_secs(30);

struct UpdateLab {
    lab: Lab,
    key: ReleaseKey,
    /// The factory binary (a stripped copy of the debug build: 18 MB, not 100).
    factory: PathBuf,
    /// The factory's version (N).
    n: String,
    dir: PathBuf,
    tap: MqttTap,
}

impl UpdateLab {
    /// The lab on a fast link, its agent the factory launcher, updates on with a
    /// throwaway release key, checking every second.
    async fn start(dir: &Path) -> UpdateLab {
        let bins = dir.join("bins");
        std::fs::create_dir_all(&bins).unwrap();
        let factory = bins.join("tether");
        std::fs::copy(tether_bin(), &factory).unwrap();
        let strip = std::process::Command::new("strip")
            .arg(&factory)
            .status()
            .unwrap();
        assert!(strip.success());
        let n = tether::version::read(&std::fs::read(&factory).unwrap()).unwrap();
        let key = ReleaseKey::generate(&dir.join("keys"), "release").unwrap();
        let mut opts = LabOptions::office_link(dir.join("lab"), AgentMode::Binary(factory.clone()));
        opts.rate = None;
        opts.delay = Duration::ZERO;
        opts.agent_env = vec![("RUST_LOG".into(), "info".into())];
        let mut lab = Lab::start(opts).await.unwrap();
        let broker = lab.fixture.broker();
        let tap = MqttTap::start(&broker.host, broker.port, &dir.join("mqtt.log")).unwrap();
        lab.config.updates.release_key = key.public.clone();
        lab.config.updates.check_every = Duration::from_secs(1);
        lab.config.updates.trial = TRIAL;
        lab.start_agent().await.unwrap();
        lab.wait_verdict("in_sync", Duration::from_secs(60))
            .await
            .unwrap();
        UpdateLab {
            lab,
            key,
            factory,
            n,
            dir: dir.to_path_buf(),
            tap,
        }
    }

    fn releases(&self) -> PathBuf {
        self.lab.fixture.sshd().releases.clone()
    }

    fn data(&self) -> PathBuf {
        self.lab.config.data.dir.clone()
    }

    fn updates_dir(&self) -> PathBuf {
        self.data().join("updates")
    }

    /// Publishes the factory binary as `version` (signed) and gives it to every site.
    fn publish(&self, version: &str) -> PathBuf {
        let bin = releases::versioned_copy(
            &self.factory,
            version,
            &self.dir.join(format!("bins/tether-{version}")),
        )
        .unwrap();
        let dir = releases::publish(
            &self.releases(),
            &bin,
            tether::release::THIS_ARCH,
            &self.key,
        )
        .unwrap();
        releases::write_rollout(&self.releases(), &everyone(version)).unwrap();
        dir
    }

    async fn wait_update(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        self.lab.wait_state(what, timeout, pred).await.unwrap()
    }

    /// Waits for `version` to run and be in sync.
    async fn wait_running(&self, version: &str, timeout: Duration) -> serde_json::Value {
        self.wait_update(&format!("{version} running in sync"), timeout, |d| {
            d["agent"]["version"] == version && d["verdict"] == "in_sync"
        })
        .await
    }

    fn installed(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.updates_dir().join("versions"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn mqtt_saw(&self, needle: &str) -> bool {
        std::fs::read_to_string(&self.tap.file).is_ok_and(|t| {
            t.lines()
                .any(|l| l.starts_with("tether/office/state ") && l.contains(needle))
        })
    }
}

impl Drop for UpdateLab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.lab.dir().join("agent.log");
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(80).collect();
            eprintln!(
                "--- the agent's log, last lines:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

fn digest(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// Records the simulated board's lines, one list per connection (each agent process
/// serves its own), until dropped.
struct BoardLog {
    lines: std::sync::Arc<std::sync::Mutex<Vec<Vec<String>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl BoardLog {
    fn start(socket: PathBuf) -> BoardLog {
        use tokio::io::AsyncBufReadExt;
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Vec<String>>::new()));
        let store = lines.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok(stream) = tokio::net::UnixStream::connect(&socket).await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let mut reader = tokio::io::BufReader::new(stream).lines();
                let mut first = true;
                while let Ok(Some(line)) = reader.next_line().await {
                    let mut store = store.lock().unwrap();
                    if std::mem::take(&mut first) {
                        store.push(Vec::new());
                    }
                    store.last_mut().unwrap().push(line.trim().to_owned());
                }
            }
        });
        BoardLog { lines, task }
    }
}

impl Drop for BoardLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_installs_and_broken_ones_roll_back_within_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let u = UpdateLab::start(dir.path()).await;
    let key_before = digest(&u.lab.config.key_path());
    let journal = u.data().join(tether::journal::FILE_NAME);
    assert!(journal.exists());
    let (n1, n2, n3) = (bump(&u.n, 1), bump(&u.n, 2), bump(&u.n, 3));
    let board = BoardLog::start(u.lab.config.board.sim_socket.clone().unwrap());
    u.wait_update("the factory version idle", Duration::from_secs(20), |d| {
        d["update"]["state"] == "idle" && d["agent"]["version"] == u.n.as_str()
    })
    .await;

    // N -> N+1.
    let started = Instant::now();
    u.publish(&n1);
    u.wait_running(&n1, Duration::from_secs(120)).await;
    println!(
        "{} -> {n1}: running and in sync after {:.1?}",
        u.n,
        started.elapsed()
    );
    let doc = u
        .wait_update("the trial passed", Duration::from_secs(60), |d| {
            d["update"]["state"] == "idle" && d["update"]["last_result"] == "installed"
        })
        .await;
    assert_eq!(doc["update"]["last_version"], n1.as_str(), "{doc:#}");
    println!("{n1} proved itself after {:.1?}", started.elapsed());
    tether_harness::wait_for("the new version on MQTT", Duration::from_secs(20), || {
        u.mqtt_saw(&format!("\"version\":\"{n1}\""))
    })
    .unwrap();
    // Never green while restarting: the old agent went dark as it stopped, the new one
    // started from not green.
    {
        let lines = board.lines.lock().unwrap().clone();
        let n = lines.len();
        assert!(n >= 2, "the board was served by two agents: {lines:?}");
        let old = &lines[n - 2];
        assert_eq!(
            old.last().map(String::as_str),
            Some("G0 A0 R0"),
            "the old agent's last LEDs: {old:?}"
        );
        let new = &lines[n - 1];
        assert!(
            !new.first().is_some_and(|l| l.starts_with("G1")),
            "the new agent's first LEDs: {new:?}"
        );
    }

    // N+1 -> a broken N+2 that exits at start: back to N+1 at once.
    let broken = releases::broken_binary(&n2, &u.dir.join("bins/broken")).unwrap();
    releases::publish(&u.releases(), &broken, tether::release::THIS_ARCH, &u.key).unwrap();
    releases::write_rollout(&u.releases(), &everyone(&n2)).unwrap();
    let started = Instant::now();
    let doc = u
        .wait_update(
            "the broken release rolled back",
            Duration::from_secs(120),
            |d| {
                d["update"]["last_result"] == "rolled_back"
                    && d["update"]["last_version"] == n2.as_str()
            },
        )
        .await;
    let took = started.elapsed();
    assert_eq!(doc["agent"]["version"], n1.as_str(), "{doc:#}");
    let why = doc["update"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        why.contains("exited with status 1 before it proved itself"),
        "{why}"
    );
    println!("{n2} (exits at start) rolled back within {took:.1?}: {why}");
    u.wait_running(&n1, Duration::from_secs(60)).await;
    let words = std::process::Command::new(tether_bin())
        .args(["status", "--config"])
        .arg(&u.lab.config_path)
        .output()
        .unwrap();
    let words = String::from_utf8_lossy(&words.stdout);
    assert!(words.contains(&format!("Software: tether {n1}")), "{words}");
    assert!(
        words.contains(&format!("Last update: {n2} rolled back")),
        "{words}"
    );

    // N+1 -> N+3 that cannot reach the hub (the link is cut once it is installed): it
    // fails its trial and the box goes back; after the heal N+1 is in sync again.
    u.publish(&n3);
    let versions = u.updates_dir().join("versions").join(&n3);
    tether_harness::wait_for("N+3 installed", Duration::from_secs(120), || {
        versions.exists()
    })
    .unwrap();
    u.lab.link.cut();
    let started = Instant::now();
    let state = u.updates_dir().join("state.json");
    tether_harness::wait_for("N+3 rolled back", TRIAL + Duration::from_secs(60), || {
        std::fs::read_to_string(&state).is_ok_and(|t| {
            let s: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
            s["last"]["version"] == n3.as_str() && s["last"]["result"] == "rolled_back"
        })
    })
    .unwrap();
    let took = started.elapsed();
    assert!(
        took < TRIAL + Duration::from_secs(15),
        "rolled back after {took:?}"
    );
    u.lab.link.heal();
    let doc = u.wait_running(&n1, Duration::from_secs(90)).await;
    let why = doc["update"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(why.contains("did not prove itself within 30s"), "{why}");
    println!("{n3} (no hub) rolled back {took:.1?} after the cut: {why}");

    // Data survived every switch.
    assert_eq!(
        digest(&u.lab.config.key_path()),
        key_before,
        "the device key changed"
    );
    assert!(journal.exists());
    if u.lab.config.web.listen.is_some() {
        assert!(u.data().join("history.bin").exists());
    }
    assert_eq!(
        u.installed(),
        vec![n1.clone()],
        "only the running version is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_releases_are_refused_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let u = UpdateLab::start(dir.path()).await;
    let n = u.n.clone();
    let arch = tether::release::THIS_ARCH;

    let refused = |version: String, want: String| {
        let u = &u;
        let n = n.clone();
        async move {
            let doc = u
                .wait_update(
                    &format!("{version} refused ({want})"),
                    Duration::from_secs(90),
                    |d| {
                        d["update"]["target"] == version.as_str()
                            && d["update"]["error"]
                                .as_str()
                                .is_some_and(|e| e.contains(want.as_str()))
                    },
                )
                .await;
            assert_eq!(doc["agent"]["version"], n.as_str(), "{doc:#}");
            assert_eq!(doc["update"]["last_result"], "refused", "{doc:#}");
            assert!(u.installed().is_empty(), "installed: {:?}", u.installed());
            assert!(!u.updates_dir().join("request.json").exists());
            println!("{version}: {}", doc["update"]["error"]);
            doc
        }
    };

    // A signature by a key the box does not trust.
    let v = bump(&n, 1);
    let stranger = ReleaseKey::generate(&u.dir.join("keys"), "stranger").unwrap();
    let bin = releases::versioned_copy(&u.factory, &v, &u.dir.join("bins/a")).unwrap();
    releases::publish(&u.releases(), &bin, arch, &stranger).unwrap();
    releases::write_rollout(&u.releases(), &everyone(&v)).unwrap();
    refused(v, "a key this box does not trust".into()).await;

    // A manifest changed after it was signed.
    let v = bump(&n, 2);
    let rel = u.publish(&v);
    let m = std::fs::read_to_string(rel.join("manifest.toml")).unwrap();
    std::fs::write(rel.join("manifest.toml"), m.replace("size = ", "size = 1")).unwrap();
    refused(v, "changed after it was signed".into()).await;

    // A binary altered on the hub after signing (same size).
    let v = bump(&n, 3);
    let rel = u.publish(&v);
    let mut b = std::fs::read(rel.join("tether")).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x55;
    std::fs::write(rel.join("tether"), &b).unwrap();
    refused(v, "SHA-256 differs".into()).await;
    let leftovers: Vec<_> = std::fs::read_dir(u.updates_dir().join("downloads"))
        .unwrap()
        .flatten()
        .collect();
    assert!(
        leftovers.is_empty(),
        "a refused download is not kept: {leftovers:?}"
    );

    // A truncated binary.
    let v = bump(&n, 4);
    let rel = u.publish(&v);
    let b = std::fs::read(rel.join("tether")).unwrap();
    std::fs::write(rel.join("tether"), &b[..b.len() - 4096]).unwrap();
    refused(v, "truncated or altered".into()).await;

    // A release for another architecture, in this architecture's directory.
    let v = bump(&n, 5);
    let copy = releases::versioned_copy(&u.factory, &v, &u.dir.join("bins/b")).unwrap();
    let (other, other_arch) = releases::other_arch_copy(&copy, &u.dir.join("bins/c")).unwrap();
    let rel = releases::publish(&u.releases(), &other, other_arch, &u.key).unwrap();
    std::fs::rename(&rel, rel.with_file_name(arch)).unwrap();
    releases::write_rollout(&u.releases(), &everyone(&v)).unwrap();
    refused(v, format!("built for {other_arch}; this box is {arch}")).await;

    // A binary whose ELF header names another machine than its manifest.
    let v = bump(&n, 6);
    let copy = releases::versioned_copy(&u.factory, &v, &u.dir.join("bins/d")).unwrap();
    let (other, _) = releases::other_arch_copy(&copy, &u.dir.join("bins/e")).unwrap();
    releases::publish(&u.releases(), &other, arch, &u.key).unwrap();
    releases::write_rollout(&u.releases(), &everyone(&v)).unwrap();
    refused(v, "is a program for".into()).await;

    // An older version.
    let old = "0.0.1".to_owned();
    let bin = releases::versioned_copy(&u.factory, &old, &u.dir.join("bins/f")).unwrap();
    releases::publish(&u.releases(), &bin, arch, &u.key).unwrap();
    releases::write_rollout(&u.releases(), &everyone(&old)).unwrap();
    refused(old, "no downgrades".into()).await;

    // The same version as the one running is not news.
    releases::write_rollout(&u.releases(), &everyone(&n)).unwrap();
    u.wait_update("up to date", Duration::from_secs(30), |d| {
        d["update"]["target"] == n.as_str() && d["update"]["error"].is_null()
    })
    .await;
}

/// What the agent logged about its downloads: (resumed from, fetched) of each that
/// completed.
fn downloads_logged(agent_log: &Path) -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string(agent_log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("download complete"))
        .filter_map(|l| {
            let plain: String = strip_ansi(l);
            let field = |name: &str| -> Option<u64> {
                plain
                    .split(&format!("{name}="))
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            };
            Some((field("resumed_from")?, field("fetched")?))
        })
        .collect()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_in_the_middle_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let u = UpdateLab::start(dir.path()).await;
    let (n1, n2) = (bump(&u.n, 1), bump(&u.n, 2));
    let downloads = u.updates_dir().join("downloads");
    let partial_len = || {
        std::fs::read_dir(&downloads)
            .ok()
            .and_then(|d| d.flatten().next())
            .and_then(|e| e.metadata().ok())
            .map(|m| m.len())
            .unwrap_or(0)
    };
    // A clean download first: the bytes an uncut one puts on the link.
    let wire = || u.lab.link.stats().bytes_down;
    let before = wire();
    u.publish(&n1);
    u.wait_running(&n1, Duration::from_secs(120)).await;
    let clean = wire() - before;
    u.wait_update("the trial passed", Duration::from_secs(60), |d| {
        d["update"]["last_result"] == "installed"
    })
    .await;

    // Then one cut at a third: slow enough to cut in the middle (about 12 s for 18 MB).
    u.lab.link.set_rate(Some(1_500_000));
    let before = wire();
    let rel = u.publish(&n2);
    let size = std::fs::metadata(rel.join("tether")).unwrap().len();
    tether_harness::wait_for("a third of the download", Duration::from_secs(120), || {
        partial_len() > size / 3
    })
    .unwrap();
    u.lab.link.cut();
    let at_cut = partial_len();
    let doc = u
        .wait_update("the interruption reported", Duration::from_secs(30), |d| {
            d["update"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("it resumes from there"))
        })
        .await;
    println!(
        "cut at {at_cut} of {size} bytes: {}",
        doc["update"]["error"]
    );
    assert!(partial_len() >= at_cut, "the partial download was kept");
    assert_eq!(
        u.installed(),
        vec![n1.clone()],
        "nothing installed from a partial file"
    );
    u.lab.link.set_rate(None);
    u.lab.link.heal();
    u.wait_running(&n2, Duration::from_secs(120)).await;
    let cut = wire() - before;
    let logged = downloads_logged(&u.lab.dir().join("agent.log"));
    let &(resumed_from, fetched) = logged.last().expect("the agent logged the download");
    println!(
        "after the heal the box fetched {fetched} bytes from offset {resumed_from} (file {size}); \
         on the link: {clean} bytes for the clean download, {cut} for the cut one ({:+.1}%)",
        (cut as f64 - clean as f64) * 100.0 / clean as f64
    );
    assert_eq!(resumed_from + fetched, size);
    assert!(
        resumed_from >= at_cut,
        "resumed at {resumed_from}, below the {at_cut} kept at the cut"
    );
    // Only what was in flight at the cut crosses the link twice; a restart from zero would
    // have sent a third of the file again.
    assert!(
        cut < clean + clean / 10,
        "{cut} bytes on the link against {clean} for a clean download"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_an_update_leaves_a_box_that_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut u = UpdateLab::start(dir.path()).await;
    let n1 = bump(&u.n, 1);
    let updates = u.updates_dir();
    let state = updates.join("state.json");
    let trial_started =
        || std::fs::read_to_string(&state).is_ok_and(|t| t.contains("\"trial\": {"));
    u.lab.link.set_rate(Some(3_000_000));
    u.publish(&n1);
    // 1. Killed while downloading: the next run resumes and installs.
    let downloads = updates.join("downloads");
    tether_harness::wait_for("the download under way", Duration::from_secs(60), || {
        std::fs::read_dir(&downloads)
            .is_ok_and(|d| d.flatten().any(|e| e.metadata().is_ok_and(|m| m.len() > 0)))
    })
    .unwrap();
    u.lab.kill_agent_hard();
    println!("killed while downloading");
    u.lab.link.set_rate(None);
    u.lab.start_agent().await.unwrap();
    // 2. Killed during the trial (the new version started, not yet proven): it comes
    // back on trial (a second start) and proves itself.
    tether_harness::wait_for(
        "the trial under way",
        Duration::from_secs(120),
        trial_started,
    )
    .unwrap();
    u.lab.kill_agent_hard();
    println!("killed during the trial");
    u.lab.start_agent().await.unwrap();
    let doc = u.wait_running(&n1, Duration::from_secs(120)).await;
    println!("back in sync on {}", doc["agent"]["version"]);
    u.wait_update("the trial passed", Duration::from_secs(60), |d| {
        d["update"]["last_result"] == "installed"
    })
    .await;
    // 3. Killed just after the switch to N+1 was recorded and proven: still N+1.
    u.lab.kill_agent_hard();
    u.lab.start_agent().await.unwrap();
    u.wait_running(&n1, Duration::from_secs(60)).await;
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(s["current"], n1.as_str(), "{s:#}");
    assert!(s["trial"].is_null(), "{s:#}");
}

/// What the hub kit's Match block gives the box's account on the real sshd: sftp, read
/// only, in the release directory (its config `ForceCommand` wins over the key's
/// `command="/bin/false"`, and `restrict` does not stop a subsystem), and no command.
#[test]
fn the_hub_serves_releases_read_only_and_runs_nothing_else() {
    use tether_harness::fixture::{Fixture, FixtureOptions};
    let f = Fixture::start(FixtureOptions {
        databases: false,
        broker: false,
        ..FixtureOptions::default()
    })
    .unwrap();
    let sshd = f.sshd();
    let dir = tempfile::tempdir().unwrap();
    releases::write_rollout(&sshd.releases, &everyone("1.2.3")).unwrap();
    let ssh_opts = |cmd: &mut std::process::Command| {
        cmd.arg("-i")
            .arg(&sshd.device_key)
            .args(["-o", "StrictHostKeyChecking=no", "-o", "BatchMode=yes"])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                dir.path().join("known_hosts").display()
            ));
    };
    let batch = dir.path().join("batch");
    let got = dir.path().join("got.toml");
    std::fs::write(
        &batch,
        format!(
            "get rollout.toml {}\n-put {} uploaded\nls\n",
            got.display(),
            batch.display()
        ),
    )
    .unwrap();
    let mut sftp = std::process::Command::new("sftp");
    ssh_opts(&mut sftp);
    let out = sftp
        .arg("-P")
        .arg(sshd.port.to_string())
        .arg("-b")
        .arg(&batch)
        .arg(format!("{}@127.0.0.1", sshd.user))
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "sftp: {said}\n{}", sshd.log_tail());
    assert_eq!(std::fs::read_to_string(&got).unwrap(), everyone("1.2.3"));
    assert!(
        said.contains("Permission denied") || said.contains("Failure"),
        "writes are refused: {said}"
    );
    assert!(!sshd.releases.join("uploaded").exists());

    let mut ssh = std::process::Command::new("ssh");
    ssh_opts(&mut ssh);
    let out = ssh
        .arg("-p")
        .arg(sshd.port.to_string())
        .arg(format!("{}@127.0.0.1", sshd.user))
        .args(["id", ";", "cat", "/etc/passwd"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        !said.contains("uid=") && !said.contains("root:"),
        "a command ran: {said}"
    );
}
