//! `tether fleet`'s contract without a broker: a bad or missing file is a located usage
//! error (exit 2) that never echoes the password; an unreachable broker is a run-time
//! failure (exit 1) in words that name it.

use std::process::{Command, Stdio};
use std::time::Duration;

/// Longest any of these may take: the broker is refused at once or within `fleet.wait`.
const LIMIT: Duration = Duration::from_secs(30);

fn tether(args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tether");
    let deadline = std::time::Instant::now() + LIMIT;
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("tether {args:?} did not exit within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_file_is_a_located_usage_error_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.toml");
    std::fs::write(
        &file,
        "[mqtt]\npassword = \"fleet-secret-77\"\n[fleet]\nwait = \"2 minutes\"\n",
    )
    .unwrap();
    let (code, _, err) = tether(&["fleet", "--config", file.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("fleet.toml:2:"), "{err}");
    assert!(err.contains("mqtt.password needs mqtt.username"), "{err}");
    assert!(!err.contains("fleet-secret-77"), "{err}");
    let (code, _, err) = tether(&["fleet", "--config", "/nonexistent/fleet.toml"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("/nonexistent/fleet.toml: cannot read the file"),
        "{err}"
    );
}

#[test]
fn an_unreachable_broker_is_named() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.toml");
    std::fs::write(
        &file,
        format!("[mqtt]\nport = {port}\n[fleet]\nwait = \"2s\"\n"),
    )
    .unwrap();
    let (code, out, err) = tether(&["fleet", "--config", file.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{port}")),
        "names the broker: {err}"
    );
}
