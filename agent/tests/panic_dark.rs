//! Dark means a problem: a panic anywhere in the agent turns the LEDs off and ends the
//! process (systemd restarts it), instead of leaving a half-dead agent showing green.
//!
//! The panicking agent is this test binary run again as a child, so the hook's abort
//! ends the child, not the test run.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

const CHILD: &str = "TETHER_PANIC_CHILD";

/// Runs only in the child: registers an "LEDs off" action that writes a file, installs
/// the agent's panic hook, then panics inside a tokio task (which tokio alone would
/// swallow, leaving the rest of the agent running).
#[test]
fn child_panics_in_a_task() {
    let Some(marker) = std::env::var_os(CHILD) else {
        return;
    };
    tether::leds::darken_on_panic(move || {
        std::fs::write(&marker, "G0 A0 R0").unwrap();
    });
    tether::leds::install_panic_hook();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let task = tokio::spawn(async { panic!("a bug in some task") });
        let _ = task.await;
    });
    unreachable!("the panic hook ends the process");
}

#[test]
fn a_panic_turns_the_leds_off_and_ends_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("leds");
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_panics_in_a_task",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD, &marker)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "the agent ends on a panic: {:?}\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("a bug in some task"),
        "the panic is reported: {stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "G0 A0 R0",
        "the LEDs were turned off"
    );
}

#[test]
fn under_systemd_the_panic_is_logged_as_an_error() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("leds");
    let log = dir.path().join("stderr.log");
    let stderr = std::fs::File::create(&log).unwrap();
    let meta = std::fs::metadata(&log).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_panics_in_a_task",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD, &marker)
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stderr(stderr)
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(libc::SIGABRT));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.starts_with("<3>tether: panicked at "), "{text}");
    assert!(text.contains("<3>a bug in some task"), "{text}");
    assert!(text.lines().all(|l| l.starts_with("<3>")), "{text}");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "G0 A0 R0");
}
