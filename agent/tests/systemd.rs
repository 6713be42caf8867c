//! The systemd unit and its companions, as shipped in the .deb: hardened (exposure 2.0 or
//! lower by `systemd-analyze security --offline=true`), clean under `systemd-analyze
//! verify`, the sysusers/tmpfiles entries creating the user, the `gpio` group and the
//! directories; and the agent speaking the notify protocol the unit relies on (READY
//! after config and journal load, `STATUS=` with the verdict, watchdog pings).

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn systemd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd")
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn the_unit_is_hardened_to_2_or_lower() {
    let unit = systemd_dir().join("tether.service");
    let (_, text) = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit));
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for tether.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{text}"));
    eprintln!("systemd-analyze security: exposure {score}");
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{text}");
}

/// A root with the unit and the binary where the .deb puts them, the host's own units
/// (targets) beside them.
fn unit_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for d in [
        "usr/bin",
        "usr/lib/systemd/system",
        "usr/lib/sysusers.d",
        "usr/lib/tmpfiles.d",
        "usr/share/doc/tether",
        "etc",
    ] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::fs::copy(env!("CARGO_BIN_EXE_tether"), r.join("usr/bin/tether")).unwrap();
    std::fs::write(r.join("usr/share/doc/tether/README.md"), "").unwrap();
    let units = r.join("usr/lib/systemd/system");
    // The host's units, copied: symlinks would be resolved inside the root.
    let (ok, text) = run(Command::new("cp")
        .arg("-a")
        .arg("/usr/lib/systemd/system/.")
        .arg(&units));
    assert!(ok, "copying the host's units: {text}");
    std::fs::copy(
        systemd_dir().join("tether.service"),
        units.join("tether.service"),
    )
    .unwrap();
    std::fs::copy(
        systemd_dir().join("sysusers.d/tether.conf"),
        r.join("usr/lib/sysusers.d/tether.conf"),
    )
    .unwrap();
    std::fs::copy(
        systemd_dir().join("tmpfiles.d/tether.conf"),
        r.join("usr/lib/tmpfiles.d/tether.conf"),
    )
    .unwrap();
    root
}

#[test]
fn the_unit_verifies_clean() {
    let root = unit_root();
    let (ok, text) = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .arg("tether.service"));
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );
}

#[test]
fn sysusers_and_tmpfiles_make_the_user_the_gpio_group_and_the_directories() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let root = unit_root();
    let r = root.path();
    let at = format!("--root={}", r.display());
    let (ok, text) = run(Command::new("systemd-sysusers").arg(&at));
    assert!(ok, "systemd-sysusers:\n{text}");
    let passwd = std::fs::read_to_string(r.join("etc/passwd")).unwrap();
    let group = std::fs::read_to_string(r.join("etc/group")).unwrap();
    let user = passwd
        .lines()
        .find(|l| l.starts_with("tether:"))
        .unwrap_or_else(|| panic!("no tether user:\n{passwd}"));
    assert!(
        user.ends_with(":/var/lib/tether:/usr/sbin/nologin"),
        "{user}"
    );
    assert!(
        group
            .lines()
            .any(|l| l.starts_with("gpio:") && l.ends_with(":tether")),
        "tether is in the gpio group:\n{group}"
    );
    let uid: u32 = user.split(':').nth(2).unwrap().parse().unwrap();
    let (ok, text) = run(Command::new("systemd-tmpfiles").arg(&at).arg("--create"));
    assert!(ok, "systemd-tmpfiles:\n{text}");
    let state = std::fs::metadata(r.join("var/lib/tether")).unwrap();
    assert_eq!(state.uid(), uid);
    assert_eq!(state.permissions().mode() & 0o777, 0o700, "keys live here");
    let config = std::fs::metadata(r.join("etc/tether")).unwrap();
    assert_eq!(
        (config.uid(), config.permissions().mode() & 0o777),
        (0, 0o750)
    );
}

/// The unit's contract with the agent: Type=notify with a watchdog.
#[test]
fn the_unit_waits_for_ready_and_watches_the_health_loop() {
    let unit = std::fs::read_to_string(systemd_dir().join("tether.service")).unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=10s",
        "Restart=always",
        "User=tether",
        "SupplementaryGroups=gpio",
        "StateDirectory=tether",
        "ConfigurationDirectory=tether",
        "DeviceAllow=char-gpiochip rw",
        "ExecStart=/usr/bin/tether run --config /etc/tether/tether.toml",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks `{line}`");
    }
}

/// Receives notify datagrams until `pred` has seen what it wants, bounded.
fn until(sock: &UnixDatagram, within: Duration, mut pred: impl FnMut(&str) -> bool) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .unwrap();
        let Ok(n) = sock.recv(&mut buf) else { break };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = pred(&msg);
        seen.push(msg);
        if done {
            return seen;
        }
    }
    panic!("not seen within {within:?}; received: {seen:?}");
}

#[test]
fn the_agent_notifies_ready_status_and_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = d.join("device_key");
    let (ok, text) = run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key));
    assert!(ok, "ssh-keygen: {text}");
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    // A hub that refuses: the agent runs and reports link_down.
    let mut c = tether::config::Config::example();
    c.hub.host = "127.0.0.1".into();
    c.hub.port = free();
    c.hub.key_path = Some(key);
    c.forwards.local_listen = tether::config::Addr::new("127.0.0.1", free());
    c.office_db.host = "127.0.0.1".into();
    c.office_db.port = free();
    c.mqtt.enabled = false;
    c.board.backend = tether::config::BoardBackend::None;
    c.data.dir = d.join("data");
    c.status.socket = d.join("tether.sock");
    let config = d.join("tether.toml");
    std::fs::write(&config, toml::to_string(&c).unwrap()).unwrap();

    let notify = d.join("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify)
        .env("WATCHDOG_USEC", "10000000")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = agent.id();
    let stop = scopeguard(pid);
    let mut ready = false;
    let mut status = None;
    let mut pings = 0;
    let seen = until(&sock, Duration::from_secs(20), |m| {
        ready |= m.lines().any(|l| l == "READY=1");
        if let Some(s) = m.lines().find_map(|l| l.strip_prefix("STATUS=")) {
            status = Some(s.to_owned());
        }
        if m.lines().any(|l| l == "WATCHDOG=1") {
            pings += 1;
        }
        ready && status.is_some() && pings >= 2
    });
    assert_eq!(status.as_deref(), Some("link_down"), "{seen:?}");
    // Journal loaded before READY: the data dir exists by then.
    assert!(d.join("data").is_dir());
    drop(stop);
    let out = agent.wait().unwrap();
    assert!(out.success(), "SIGTERM ends the agent cleanly: {out:?}");
    let stopping = until(&sock, Duration::from_secs(5), |m| m.contains("STOPPING=1"));
    assert!(!stopping.is_empty());
    let mut err = String::new();
    std::io::Read::read_to_string(agent.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!err.contains("panicked"), "{err}");
}

/// Sends SIGTERM to the agent when dropped (also when an assertion fails).
struct Term(i32);

fn scopeguard(pid: u32) -> Term {
    Term(pid as i32)
}

impl Drop for Term {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
        unsafe { libc::kill(self.0, libc::SIGTERM) };
    }
}
