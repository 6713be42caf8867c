//! The `tether` binary's contract: exit codes (0 ok, 1 run-time failure, 2 usage or
//! configuration error), `check-config` output, `version`, and located config errors
//! from every subcommand that reads a config.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Longest any of these commands may take; none of them touches the network.
const LIMIT: Duration = Duration::from_secs(30);

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `tether ARGS` with a bounded wait; a hung process is killed and fails the test.
fn tether(args: &[&str]) -> Outcome {
    let child = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tether");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(LIMIT) {
        Ok(out) => out.expect("wait for tether"),
        Err(_) => {
            // SAFETY: kill(2) on the pid of a child we started and have not reaped.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("tether {args:?} did not exit within {LIMIT:?}");
        }
    };
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn fixture(kind: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(kind)
        .join(format!("{name}.toml"))
}

fn s(p: &Path) -> &str {
    p.to_str().expect("fixture paths are UTF-8")
}

#[test]
fn check_config_accepts_a_good_file() {
    for path in [
        fixture("good", "minimal"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tether.example.toml"),
    ] {
        let out = tether(&["check-config", s(&path)]);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        assert_eq!(out.stdout, format!("{}: ok\n", path.display()));
        assert_eq!(out.stderr, "");
    }
}

#[test]
fn check_config_locates_a_mistake_and_exits_2() {
    let path = fixture("bad", "keepalive_out_of_range");
    let out = tether(&["check-config", s(&path)]);
    assert_eq!(out.code, Some(2));
    assert_eq!(out.stdout, "");
    assert_eq!(
        out.stderr,
        format!(
            "{}:10:22: timings.keepalive_interval: 0s is out of range (1s..=1m)\n",
            path.display()
        )
    );
}

#[test]
fn check_config_never_prints_a_password() {
    for name in [
        "password_wrong_type",
        "unknown_nested_key",
        "port_wrong_type",
    ] {
        let path = fixture("bad", name);
        let out = tether(&["check-config", s(&path)]);
        assert_eq!(out.code, Some(2), "{name}");
        for secret in ["office-secret-1", "hub-secret-2", "8675309"] {
            assert!(!out.stderr.contains(secret), "{name}: {}", out.stderr);
        }
    }
}

#[test]
fn check_config_of_a_missing_file_names_it() {
    let out = tether(&["check-config", "/nonexistent/tether.toml"]);
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr
            .starts_with("/nonexistent/tether.toml: cannot read"),
        "{}",
        out.stderr
    );
}

#[test]
fn version_names_the_build() {
    let out = tether(&["version"]);
    assert_eq!(out.code, Some(0));
    let line = out.stdout.trim_end();
    let want = format!(
        "tether {} {}-",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH
    );
    assert!(line.starts_with(&want), "{line}");
    assert!(line.contains(std::env::consts::OS), "{line}");
    assert_eq!(out.stdout.lines().count(), 1);
}

#[test]
fn doctor_refuses_a_column_that_is_not_db_table_column() {
    let good = fixture("good", "minimal");
    for (arg, why) in [
        ("app.t", "expected DB.TABLE.COLUMN"),
        ("app.t.c`; DROP", "names may hold only"),
    ] {
        let out = tether(&["doctor", "--config", s(&good), "--timestamps", arg]);
        assert_eq!(out.code, Some(2), "{arg}: {}", out.stderr);
        assert!(out.stderr.contains(why), "{arg}: {}", out.stderr);
    }
}

#[test]
fn every_config_reading_subcommand_reports_a_bad_config() {
    let bad = fixture("bad", "bad_cipher");
    let want = format!("{}:5:10: hub.cipher:", bad.display());
    for cmd in ["run", "doctor", "status", "enroll", "seed"] {
        let out = tether(&[cmd, "--config", s(&bad)]);
        assert_eq!(out.code, Some(2), "{cmd}: {}", out.stderr);
        assert!(out.stderr.starts_with(&want), "{cmd}: {}", out.stderr);
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["frobnicate"],
        &["check-config"],
        &["run", "--nope"],
    ] {
        let out = tether(args);
        assert_eq!(out.code, Some(2), "{args:?}: {}", out.stderr);
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
}

#[test]
fn help_lists_every_subcommand() {
    let out = tether(&["--help"]);
    assert_eq!(out.code, Some(0));
    for cmd in [
        "run",
        "check-config",
        "doctor",
        "status",
        "enroll",
        "fleet",
        "seed",
        "setup",
        "version",
    ] {
        assert!(out.stdout.contains(cmd), "{}", out.stdout);
    }
}

/// `tether enroll` prints the accounts and the replication setup in the words of the
/// family both sites run: from `office_db.family`, or from the office server's greeting.
#[test]
fn enroll_prints_each_familys_sql_and_says_when_it_cannot_tell_which() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on this port: `auto` cannot ask the office server.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let config = |family: &str| {
        let path = dir.path().join(format!("{family}.toml"));
        std::fs::write(
            &path,
            format!(
                "[site]\nid = \"office\"\n[hub]\nhost = \"hub.example.com\"\n\
                 [office_db]\nport = {port}\npassword = \"x\"\nfamily = \"{family}\"\n\
                 [hub_db]\npassword = \"y\"\n[data]\ndir = \"{}\"\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        path
    };
    let mysql = tether(&["enroll", "--config", s(&config("mysql"))]);
    assert_eq!(mysql.code, Some(0), "{}", mysql.stderr);
    for said in [
        "CHANGE REPLICATION SOURCE TO",
        "GET_SOURCE_PUBLIC_KEY=1",
        "START REPLICA;",
        "REPLICATION_SLAVE_ADMIN",
        "{{AGENT_PASSWORD}}",
    ] {
        assert!(mysql.stdout.contains(said), "{said}: {}", mysql.stdout);
    }
    for never in ["CHANGE MASTER", "START SLAVE", "SLAVE MONITOR", "annotate"] {
        assert!(!mysql.stdout.contains(never), "{never}: {}", mysql.stdout);
    }
    let maria = tether(&["enroll", "--config", s(&config("mariadb"))]);
    assert_eq!(maria.code, Some(0), "{}", maria.stderr);
    assert!(
        maria.stdout.contains("MASTER_USE_GTID=slave_pos"),
        "{}",
        maria.stdout
    );
    let auto = tether(&["enroll", "--config", s(&config("auto"))]);
    assert_eq!(auto.code, Some(1), "{}", auto.stdout);
    assert!(
        auto.stderr.contains("office_db.family") && auto.stdout.contains("authorized_keys"),
        "{}\n{}",
        auto.stdout,
        auto.stderr
    );
}
