//! The agent's log under systemd: run the `tether` binary as the service runs it, with
//! stderr going to a stream systemd names in `JOURNAL_STREAM` (here a file, whose device
//! and inode stand for the journal's socket), and read what it wrote: one plain line per
//! record with the sd-daemon priority prefix (`<3>` error, `<4>` warning, `<6>` info), no
//! colour, no timestamp of its own, and the fields kept as `key=value`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Longest wait for any line or exit here; nothing talks to the network.
const LIMIT: Duration = Duration::from_secs(30);

struct Site {
    dir: tempfile::TempDir,
    config: PathBuf,
}

/// A config whose agent logs a warning with fields at once: the hub and the office
/// database are a closed loopback port, and the board wants GPIO this build lacks.
fn site() -> Site {
    let dir = tempfile::tempdir().unwrap();
    let closed = free_port();
    let local_listen = free_port();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let text = format!(
        "[site]\nid = \"office\"\n\
         [hub]\nhost = \"127.0.0.1\"\nport = {closed}\n\
         [forwards]\nlocal_listen = \"127.0.0.1:{local_listen}\"\n\
         [office_db]\nport = {closed}\npassword = \"Office-Pw-1a7f\"\n\
         [hub_db]\npassword = \"Hub-Pw-2b8e\"\n\
         [mqtt]\nenabled = false\n\
         [board]\nbackend = \"gpio\"\n\
         [data]\ndir = \"{}\"\n\
         [status]\nsocket = \"{}\"\n\
         [log]\nlevel = \"info\"\n",
        data.display(),
        dir.path().join("tether.sock").display()
    );
    let config = dir.path().join("tether.toml");
    std::fs::write(&config, text).unwrap();
    Site { dir, config }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `tether run` with stderr into `log`, `JOURNAL_STREAM` naming `stream_of` (the log
/// itself for the service case).
fn run(site: &Site, log: &Path, stream_of: &Path, args: &[&str]) -> Child {
    let stderr = std::fs::File::create(log).unwrap();
    let meta = std::fs::metadata(stream_of).unwrap();
    Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(args)
        .arg("--config")
        .arg(&site.config)
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

fn wait_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tether did not exit within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the agent until its log holds a line containing `until`, then stops it as
/// systemd does (SIGTERM) and returns the log.
fn run_until(site: &Site, stream_of: Option<&Path>, until: &str) -> String {
    let log = site.dir.path().join("stderr.log");
    std::fs::write(&log, "").unwrap();
    let mut child = run(site, &log, stream_of.unwrap_or(&log), &["run"]);
    let deadline = Instant::now() + LIMIT;
    while !std::fs::read_to_string(&log).unwrap().contains(until) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "tether exited ({status}) before logging `{until}`:\n{}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "no `{until}` within {LIMIT:?}:\n{}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on the pid of a child we started and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(wait_exit(&mut child).success());
    std::fs::read_to_string(&log).unwrap()
}

/// Every line carries a priority prefix and nothing a journal line should not.
fn assert_journal_lines(text: &str) {
    assert!(!text.is_empty());
    for line in text.lines() {
        let body = ["<3>", "<4>", "<6>", "<7>"]
            .iter()
            .find_map(|p| line.strip_prefix(p))
            .unwrap_or_else(|| panic!("no priority prefix: {line:?}\n{text}"));
        assert!(!body.contains('\x1b'), "colour escape: {line:?}");
        assert!(
            !(body.starts_with("20") && body.get(10..11) == Some("T")),
            "a timestamp of its own: {line:?}"
        );
        for level in ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"] {
            assert!(!body.starts_with(level), "the level in words: {line:?}");
        }
    }
}

fn line_with<'a>(text: &'a str, words: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(words))
        .unwrap_or_else(|| panic!("no line with `{words}`:\n{text}"))
}

#[test]
fn as_a_service_every_line_has_its_priority_and_keeps_its_fields() {
    let site = site();
    tether::enroll::ensure_device_key(&site.dir.path().join("data/device_key")).unwrap();
    let text = run_until(&site, None, "link to the hub is down");
    assert_journal_lines(&text);
    let warn = line_with(&text, "link to the hub is down");
    assert!(warn.starts_with("<4>link to the hub is down "), "{warn}");
    for field in ["fault=Unreachable(", "retry_in=", "quiet_attempts=0"] {
        assert!(warn.contains(field), "{field} missing: {warn}");
    }
    assert!(
        line_with(&text, "needs a build with the `gpio` feature").starts_with("<4>"),
        "{text}"
    );
    let info = line_with(&text, "verdict=");
    assert!(
        info.starts_with("<6>health verdict=\"link_down\" reasons=["),
        "{info}"
    );
    assert!(line_with(&text, "SIGTERM").starts_with("<6>"), "{text}");
    for secret in ["Office-Pw", "Hub-Pw"] {
        assert!(!text.contains(secret), "{text}");
    }
}

#[test]
fn as_a_service_a_fatal_error_is_an_error() {
    let site = site();
    // No device key: `tether run` cannot start (exit 1).
    let log = site.dir.path().join("stderr.log");
    let mut child = run(&site, &log, &log, &["run"]);
    let status = wait_exit(&mut child);
    assert_eq!(status.code(), Some(1));
    let text = std::fs::read_to_string(&log).unwrap();
    assert_journal_lines(&text);
    assert!(
        line_with(&text, "cannot load the device key").starts_with("<3>tether: "),
        "{text}"
    );
    // A configuration error (exit 2) too, with its location.
    let text = std::fs::read_to_string(&site.config).unwrap();
    std::fs::write(&site.config, text.replace("[mqtt]", "[mqtt]\nbogus = 1")).unwrap();
    let mut child = run(&site, &log, &log, &["run"]);
    assert_eq!(wait_exit(&mut child).code(), Some(2));
    let text = std::fs::read_to_string(&log).unwrap();
    assert_journal_lines(&text);
    let error = line_with(&text, "mqtt.bogus");
    assert!(
        error.starts_with("<3>") && error.contains("tether.toml:"),
        "{error}"
    );
}

#[test]
fn with_stderr_elsewhere_the_usual_format_without_colour() {
    // systemd's variable inherited by a process whose stderr is not the journal's stream
    // (a shell started from the service, a test): tracing's own format.
    let site = site();
    tether::enroll::ensure_device_key(&site.dir.path().join("data/device_key")).unwrap();
    let elsewhere = site.dir.path().join("another-stream");
    std::fs::write(&elsewhere, "").unwrap();
    let text = run_until(&site, Some(&elsewhere), "link to the hub is down");
    let warn = line_with(&text, "link to the hub is down");
    assert!(warn.starts_with("20") && warn.contains(" WARN "), "{warn}");
    assert!(!text.contains('\x1b'), "no colour off a terminal: {text:?}");
    assert!(!text.lines().any(|l| l.starts_with('<')), "{text}");
}
