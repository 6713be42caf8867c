//! Crash safety of the state journal: a writer killed with SIGKILL at random moments
//! always leaves a journal that decodes to a state it actually wrote.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tether::journal::{Journal, State};

const CHILD_ENV: &str = "TETHER_JOURNAL_WRITER_DIR";

fn state(n: u64) -> State {
    State {
        verdict: if n.is_multiple_of(2) {
            "in_sync"
        } else {
            "link_down"
        }
        .into(),
        since_unix_ms: 1_700_000_000_000 + n,
        reconnects: n,
        downtime_ms: n * 1000,
        last_in_sync_unix_ms: Some(n),
        hub_key_fingerprint: Some(format!("SHA256:{n:0>43}")),
        longest_outage: Some(tether::journal::Outage {
            start_unix_ms: 1_700_000_000_000,
            end_unix_ms: 1_700_000_000_000 + n,
            length_ms: n,
        }),
        recent_outages: Vec::new(),
        outage_open_since_unix_ms: n.is_multiple_of(3).then_some(n),
    }
}

/// In the child process: writes states 1, 2, 3, ... forever (until killed).
#[test]
fn journal_writer_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let journal = Journal::new(std::path::Path::new(&dir));
    println!("ready");
    for n in 1.. {
        journal.save(&state(n)).expect("save");
    }
}

#[test]
fn sigkill_at_random_points_never_leaves_a_torn_journal() {
    let exe = std::env::current_exe().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::new(dir.path());
    let mut seen_states = 0;
    let started = Instant::now();
    for round in 0..200u64 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "journal_writer_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Pseudo-random kill point between 0 and ~20 ms after start.
        let wait_us = (round * 7919) % 20_000;
        std::thread::sleep(Duration::from_micros(wait_us));
        child.kill().unwrap();
        child.wait().unwrap();
        let loaded = journal.load();
        assert!(
            loaded.problem.is_none(),
            "round {round}: journal unusable after SIGKILL: {:?}",
            loaded.problem
        );
        if loaded.state != State::default() {
            let n = loaded.state.reconnects;
            assert_eq!(
                loaded.state,
                state(n),
                "round {round}: decoded a state never written"
            );
            seen_states += 1;
        }
    }
    assert!(seen_states > 0, "the writer never got to write anything");
    eprintln!(
        "200 kills in {:.1?}, {seen_states} rounds found a written state",
        started.elapsed()
    );
}
