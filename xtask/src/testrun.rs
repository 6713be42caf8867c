//! The test step of `cargo xtask test`: every test binary of the workspace, built once,
//! then run a few binaries at a time, longest first.
//!
//! `cargo test` runs its binaries one after another. Most of our time is spent in tests
//! that wait on real servers and on the link simulator's cuts (a full run used a quarter
//! of two cores), so running binaries side by side shortens the wall time without
//! running more tests at once inside any binary. Each binary's output is printed whole
//! when it ends, under cargo's own `Running` header, so a failure reads as it would
//! under `cargo test`.

use std::collections::HashMap;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::tally::Tally;
use crate::{cargo, root};

/// Test binaries running at the same time (`TETHER_TEST_JOBS` overrides).
const JOBS: usize = 2;
/// Tests at the same time inside one binary. Each real-server test starts its own
/// database pair, sshd and broker; with two binaries side by side this keeps at most six
/// such tests on two cores, so the timing figures stay honest.
const THREADS_PER_BINARY: &str = "3";
/// A binary still running after this is stopped and counted as failed: every test has
/// its own deadlines, so this only catches a hang the tests themselves did not bound.
const BINARY_LIMIT: Duration = Duration::from_secs(20 * 60);
/// Last run's seconds per binary, to start the longest first.
const TIMES_FILE: &str = "target/test-times.tsv";

/// One thing to run: a test binary, or the doc tests.
#[derive(Debug, Clone)]
struct Job {
    /// What cargo's `Running` line shows: `tests/seed.rs (target/debug/deps/seed-…)`.
    title: String,
    /// Key for the timings file (stable across builds).
    key: String,
    cmd: Vec<String>,
    cwd: PathBuf,
    /// `CARGO_MANIFEST_DIR` for a test binary (cargo sets it when it runs one itself).
    /// Never for cargo: set in cargo's environment it reaches the fingerprints of build
    /// scripts that watch it (ring's), and the next build without it rebuilt ring,
    /// rustls and everything above them, about a minute a run.
    manifest_dir: Option<PathBuf>,
}

/// Builds every test target, then runs them; `extra` goes to each binary after its own
/// arguments (a name filter, for example). Returns whether every binary succeeded.
pub fn run_all(extra: &[String], skip_log: &Path, tally: &mut Tally) -> Result<bool> {
    let mut jobs = test_binaries()?;
    jobs.push(doc_tests(extra));
    let times = read_times(&root().join(TIMES_FILE));
    // Longest first; a binary never timed (new) counts as long.
    jobs.sort_by(|a, b| {
        let t = |j: &Job| times.get(&j.key).copied().unwrap_or(f64::MAX);
        t(b).total_cmp(&t(a)).then_with(|| a.key.cmp(&b.key))
    });
    let workers = std::env::var("TETHER_TEST_JOBS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(JOBS);
    eprintln!(
        "xtask: running {} test binaries, {workers} at a time",
        jobs.len()
    );

    let queue = std::sync::Arc::new(std::sync::Mutex::new(jobs.into_iter()));
    let (done_tx, done_rx) = mpsc::channel::<Finished>();
    let mut handles = Vec::new();
    for _ in 0..workers {
        let queue = queue.clone();
        let done_tx = done_tx.clone();
        let extra = extra.to_vec();
        let skip_log = skip_log.to_path_buf();
        handles.push(std::thread::spawn(move || {
            loop {
                let next = queue.lock().expect("job queue").next();
                let Some(job) = next else { break };
                let finished = run_one(&job, &extra, &skip_log);
                if done_tx.send(finished).is_err() {
                    break;
                }
            }
        }));
    }
    drop(done_tx);

    let mut all_ok = true;
    let mut new_times = times;
    for f in done_rx {
        println!("     Running {}", f.job.title);
        for line in f.output.lines() {
            println!("{line}");
            tally.add_line(line);
        }
        let verdict = match &f.outcome {
            Ok(true) => "ok".to_string(),
            Ok(false) => {
                all_ok = false;
                "FAILED".to_string()
            }
            Err(why) => {
                all_ok = false;
                // A binary that never reported its counts is one failure, not none.
                if !f.output.contains("test result: ") {
                    tally.failed += 1;
                }
                format!("FAILED: {why}")
            }
        };
        eprintln!(
            "xtask: {} {verdict} in {:.1} s",
            f.job.key,
            f.elapsed.as_secs_f64()
        );
        new_times.insert(f.job.key.clone(), f.elapsed.as_secs_f64());
    }
    for h in handles {
        let _ = h.join();
    }
    write_times(&root().join(TIMES_FILE), &new_times);
    Ok(all_ok)
}

struct Finished {
    job: Job,
    output: String,
    elapsed: Duration,
    /// Ok(success) when it ran to the end; Err when it could not start or was stopped.
    outcome: std::result::Result<bool, String>,
}

fn run_one(job: &Job, extra: &[String], skip_log: &Path) -> Finished {
    let started = Instant::now();
    let (outcome, output) = match spawn_and_wait(job, extra, skip_log) {
        Ok((success, output)) => (Ok(success), output),
        Err((why, output)) => (Err(why), output),
    };
    Finished {
        job: job.clone(),
        output,
        elapsed: started.elapsed(),
        outcome,
    }
}

type Outcome = std::result::Result<(bool, String), (String, String)>;

fn spawn_and_wait(job: &Job, extra: &[String], skip_log: &Path) -> Outcome {
    // stdout and stderr into one file, in the order they were written.
    let log = tempfile::tempfile().map_err(|e| (format!("no temp file: {e}"), String::new()))?;
    let err_log = log
        .try_clone()
        .map_err(|e| (format!("no temp file: {e}"), String::new()))?;
    let mut cmd = Command::new(&job.cmd[0]);
    cmd.args(&job.cmd[1..])
        .args(extra)
        .current_dir(&job.cwd)
        .env(tether_harness::skip::SKIP_LOG, skip_log)
        .stdin(Stdio::null())
        .stdout(Stdio::from(
            log.try_clone()
                .map_err(|e| (e.to_string(), String::new()))?,
        ))
        .stderr(Stdio::from(err_log));
    if let Some(dir) = &job.manifest_dir {
        cmd.env("CARGO_MANIFEST_DIR", dir);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| (format!("cannot start {}: {e}", job.cmd[0]), String::new()))?;
    let deadline = Instant::now() + BINARY_LIMIT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!(
                    "still running after {} min, stopped",
                    BINARY_LIMIT.as_secs() / 60
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => break Err(format!("cannot wait for it: {e}")),
        }
    };
    let output = read_back(log);
    match status {
        Ok(status) => Ok((status.success(), output)),
        Err(why) => Err((why, output)),
    }
}

fn read_back(mut file: std::fs::File) -> String {
    use std::io::Seek;
    let mut bytes = Vec::new();
    let _ = file.seek(std::io::SeekFrom::Start(0));
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `cargo test --no-run` over the workspace; one job per test executable it reports.
fn test_binaries() -> Result<Vec<Job>> {
    let mut build = cargo();
    build
        .args([
            "test",
            "--workspace",
            "--no-run",
            "--message-format",
            "json-render-diagnostics",
        ])
        .current_dir(root())
        .stdout(Stdio::piped());
    eprintln!("xtask: running {build:?}");
    let mut child = build.spawn().context("cannot start cargo test --no-run")?;
    let out = std::io::BufReader::new(child.stdout.take().context("cargo's stdout")?);
    let mut jobs = Vec::new();
    for line in out.lines() {
        let line = line?;
        if let Some(job) = job_of_artifact(&line, &root()) {
            jobs.push(job);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("building the tests failed ({status})");
    }
    Ok(jobs)
}

/// The job for one line of cargo's JSON messages, if it is a test executable.
fn job_of_artifact(line: &str, root: &Path) -> Option<Job> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["reason"] != "compiler-artifact" || v["profile"]["test"] != true {
        return None;
    }
    let exe = PathBuf::from(v["executable"].as_str()?);
    let manifest_dir = Path::new(v["manifest_path"].as_str()?)
        .parent()?
        .to_path_buf();
    let src = Path::new(v["target"]["src_path"].as_str()?);
    let src_shown = src.strip_prefix(&manifest_dir).unwrap_or(src).display();
    let kinds: Vec<&str> = v["target"]["kind"]
        .as_array()?
        .iter()
        .filter_map(|k| k.as_str())
        .collect();
    let shown = if kinds.contains(&"test") {
        format!("{src_shown}")
    } else {
        format!("unittests {src_shown}")
    };
    let package = manifest_dir
        .strip_prefix(root)
        .unwrap_or(&manifest_dir)
        .display()
        .to_string();
    Some(Job {
        title: format!(
            "{shown} ({})",
            exe.strip_prefix(root).unwrap_or(&exe).display()
        ),
        key: format!(
            "{}:{shown}",
            if package.is_empty() { "." } else { &package }
        ),
        cmd: vec![
            exe.display().to_string(),
            "--test-threads".into(),
            THREADS_PER_BINARY.into(),
        ],
        cwd: manifest_dir.clone(),
        manifest_dir: Some(manifest_dir),
    })
}

/// The workspace's doc tests, as one job through cargo (they are compiled when run).
fn doc_tests(extra: &[String]) -> Job {
    let cargo_bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = vec![
        cargo_bin,
        "test".into(),
        "--workspace".into(),
        "--doc".into(),
        "--".into(),
    ];
    // The filter goes after cargo's `--` here, not after ours.
    cmd.extend(extra.iter().cloned());
    Job {
        title: "Doc-tests (cargo test --workspace --doc)".into(),
        key: "doc-tests".into(),
        cmd,
        cwd: root(),
        manifest_dir: None,
    }
}

fn read_times(path: &Path) -> HashMap<String, f64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('\t')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

fn write_times(path: &Path, times: &HashMap<String, f64>) {
    let mut rows: Vec<_> = times.iter().collect();
    rows.sort_by(|a, b| a.0.cmp(b.0));
    let text: String = rows.iter().map(|(k, v)| format!("{k}\t{v:.1}\n")).collect();
    // Only an ordering hint: a run is not failed for not saving it.
    let _ = std::fs::write(path, text);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_executable_becomes_a_job_and_other_artifacts_do_not() {
        let root = Path::new("/r");
        let line = r#"{"reason":"compiler-artifact","package_id":"p","manifest_path":"/r/tests/Cargo.toml","target":{"kind":["test"],"crate_types":["bin"],"name":"seed","src_path":"/r/tests/tests/seed.rs"},"profile":{"test":true},"executable":"/r/target/debug/deps/seed-0123","fresh":true}"#;
        let job = job_of_artifact(line, root).expect("a test binary");
        assert_eq!(job.title, "tests/seed.rs (target/debug/deps/seed-0123)");
        assert_eq!(job.key, "tests:tests/seed.rs");
        assert_eq!(job.cwd, Path::new("/r/tests"));
        assert_eq!(job.cmd[0], "/r/target/debug/deps/seed-0123");

        let unit = r#"{"reason":"compiler-artifact","manifest_path":"/r/agent/Cargo.toml","target":{"kind":["lib"],"src_path":"/r/agent/src/lib.rs"},"profile":{"test":true},"executable":"/r/target/debug/deps/tether-9"}"#;
        assert_eq!(
            job_of_artifact(unit, root).unwrap().title,
            "unittests src/lib.rs (target/debug/deps/tether-9)"
        );

        let library = r#"{"reason":"compiler-artifact","manifest_path":"/r/agent/Cargo.toml","target":{"kind":["lib"],"src_path":"/r/agent/src/lib.rs"},"profile":{"test":false},"executable":null}"#;
        assert!(job_of_artifact(library, root).is_none());
        assert!(job_of_artifact(r#"{"reason":"build-finished","success":true}"#, root).is_none());
        assert!(job_of_artifact("not json", root).is_none());
    }

    #[test]
    fn timings_survive_a_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.tsv");
        let times = HashMap::from([("tests:tests/seed.rs".to_string(), 159.6)]);
        write_times(&path, &times);
        assert_eq!(read_times(&path), times);
        assert!(read_times(&dir.path().join("missing")).is_empty());
    }
}
