//! Tether's project scripts, in Rust: `cargo xtask lab | test | bench | soak | fleet | fuzz | deb | image`.

mod deb;
mod fuzz;
mod image;
mod image_test;
mod install;
mod lab;
mod release;
mod tally;
mod testrun;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

use tally::Tally;

/// The cargo-deny release the supply-chain check runs (installed by `cargo install`).
const CARGO_DENY: &str = "0.20.2";
/// Longest wait for the RustSec advisory database (a shallow git clone).
const ADVISORY_FETCH_LIMIT: Duration = Duration::from_secs(180);

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Tether's project scripts")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Bring up a complete two-site setup on this machine and run the agent with the
    /// LEDs drawn in the terminal.
    Lab {
        /// No terminal UI: write target/lab/lab.json and run until SIGINT/SIGTERM.
        #[arg(long)]
        headless: bool,
        /// The database both sites run: mariadb or mysql.
        #[arg(long, default_value = "mariadb", value_parser = parse_family)]
        db: tether_harness::db::Family,
        /// An unconfigured pair (no accounts, no replication, the servers' own defaults):
        /// where `tether setup` starts.
        #[arg(long)]
        bare: bool,
    },
    /// Install what is missing, then run fmt, clippy, cargo deny, every test and the
    /// appliance checks; ends with "N passed, N failed, N skipped".
    Test {
        /// Passed to each test binary (a test name filter, for example).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Build the release binary (stripped, LTO) and the .deb, check the package and run
    /// the binary's smoke checks (under qemu-user for a foreign target).
    Deb {
        /// The Rust target, for example aarch64-unknown-linux-gnu (default: this machine).
        #[arg(long)]
        target: Option<String>,
        /// The release public key(s) the box trusts for updates (OpenSSH `ssh-ed25519`
        /// lines; default: TETHER_RELEASE_KEY_PUB, else none and updates are refused).
        #[arg(long, value_name = "PUBFILE")]
        release_key: Option<PathBuf>,
    },
    /// Build the bootable disk image (as root): Debian packages via mmdebstrap, read-only
    /// root, /data, first-boot config from the boot partition, the .deb installed.
    Image {
        /// arm64 (Raspberry Pi-class boards) or amd64 (the same recipe, for the boot test).
        #[arg(long, default_value = "arm64")]
        arch: String,
        /// The release public key(s) the box trusts (see `deb --release-key`).
        #[arg(long, value_name = "PUBFILE")]
        release_key: Option<PathBuf>,
    },
    /// Build (or find) only the cached base root of the image: Debian with its kernel and
    /// firmware, kept outside the checkout (TETHER_IMAGE_CACHE, default
    /// /var/cache/tether-image) and reused by every image build.
    ImageBase {
        #[arg(long, default_value = "arm64")]
        arch: String,
    },
    /// Boot the image under qemu (amd64, or arm64 with `--arch`) against the lab's hub
    /// and broker and wait for `in_sync`.
    ImageTest {
        /// Boot the image already under target/image instead of building it again.
        #[arg(long)]
        reuse: bool,
        /// amd64 (KVM when it works here) or arm64 (qemu-system-aarch64 -M virt, software
        /// emulation).
        #[arg(long, default_value = "amd64")]
        arch: String,
        /// Then take the amd64 box through signed updates (N to N+1, a stranger's
        /// signature, a release that exits at start, a cut download, the VM killed during
        /// an update).
        #[arg(long)]
        updates: bool,
    },
    /// Install the Debian packages the lab and the tests need (apt-get, as root).
    Install,
    /// Build the agent for the boxes (release, stripped), sign each build with the
    /// release key and lay the releases out as the hub serves them (default
    /// target/releases/<version>/<arch>/), checked the way a box checks them.
    Release {
        /// The private release key (OpenSSH ed25519, `KEY.pub` beside it), outside the
        /// checkout; default: TETHER_RELEASE_KEY.
        #[arg(long, value_name = "KEY")]
        key: Option<PathBuf>,
        /// arm64 and/or amd64 (repeat the option); default: arm64.
        #[arg(long, default_values_t = ["arm64".to_owned()])]
        arch: Vec<String>,
        /// Where to lay the releases out.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The flapping-link soak: the lab with writers on both sites and a seeded random
    /// schedule of cut, blackhole and throttle; checks nothing is lost, checksums agree,
    /// in_sync after every heal and stable agent memory; writes target/soak/report.json
    /// and report.svg.
    Soak {
        #[arg(long, default_value_t = 50)]
        faults: usize,
        /// The schedule's seed (random when not given; printed either way).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// N agents (own keys, site ids and hub ports) against one hub sshd and one broker,
    /// forwards ending at one shared MariaDB pair: time to all-green, sshd and broker
    /// CPU and memory per site, all-green again after a hub sshd restart; writes
    /// target/fleet/report.json.
    ///
    /// With --through-hub the sites really replicate through the hub instead: each
    /// office its own MariaDB, link (the office line) and agent, one named connection per
    /// office on the hub, every site writing; per-office catch-up after a hub sshd
    /// restart; target/fleet-hub/report.json.
    Fleet {
        #[arg(long, default_value_t = 50)]
        sites: usize,
        /// Each site its own database, replicating through the hub.
        #[arg(long)]
        through_hub: bool,
    },
    /// Fuzz one parser (config, journal, replication_status, release, link_control) for N seconds:
    /// cargo-fuzz (libFuzzer) with a nightly toolchain, else a stable driver that feeds
    /// mutated seeds to the same target function.
    Fuzz {
        target: String,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Use the stable driver even when cargo-fuzz could run.
        #[arg(long)]
        stable: bool,
    },
    /// Measure the targets against their references in one run (release build);
    /// writes target/bench/results.json.
    Bench {
        /// Seconds per throughput run.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// Run only one measurement and merge its keys into results.json.
        #[arg(long, value_enum)]
        only: Option<Only>,
    },
}

/// The measurements `cargo xtask bench --only` can run alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Only {
    /// Throughput and memory against OpenSSH's `ssh -L` (about three minutes).
    Tunnel,
    /// Five 10 s cuts on the lab link, each with what both servers heard after the heal.
    Resume,
    /// The wire-bytes workload with tether's settings: bytes and reads a direction.
    Wire,
    /// The status page's cost: status_page_binary_bytes and status_page_rss_kib.
    StatusPage,
    /// replication_resume_mysql_s beside MySQL's own defaults through the same link.
    ResumeMysql,
    /// The office's first copy against `mariadb-dump --single-transaction | gzip -6` over
    /// ssh: seed_wire_bytes_ratio, seed_resent_ratio, seed_rows_per_s; then a new hub
    /// filled from the office against the same dump: seed_to_hub_wire_bytes_ratio,
    /// seed_to_hub_rows_per_s (about nine minutes).
    Seed,
}

impl Only {
    /// The name tether-bench takes.
    fn name(self) -> &'static str {
        match self {
            Only::Tunnel => "tunnel",
            Only::Resume => "resume",
            Only::Wire => "wire",
            Only::StatusPage => "status-page",
            Only::ResumeMysql => "resume-mysql",
            Only::Seed => "seed",
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Lab { headless, db, bare } => lab::run(headless, db, bare),
        Cmd::Test { args } => test(&args),
        Cmd::Install => install::ensure(),
        Cmd::Release { key, arch, out } => arch
            .iter()
            .map(|a| image::Arch::parse(a))
            .collect::<Result<Vec<_>>>()
            .and_then(|arches| release::release(key.as_deref(), &arches, out.as_deref())),
        Cmd::Deb {
            target,
            release_key,
        } => deb::deb(target.as_deref(), release_key.as_deref()),
        Cmd::Image { arch, release_key } => {
            image::Arch::parse(&arch).and_then(|a| image::image(a, release_key.as_deref()))
        }
        Cmd::ImageBase { arch } => image::Arch::parse(&arch).and_then(image::image_base),
        Cmd::ImageTest {
            reuse,
            arch,
            updates,
        } => image::Arch::parse(&arch).and_then(|arch| {
            image_test::image_test(image_test::Options {
                arch,
                reuse,
                updates,
            })
        }),
        Cmd::Bench { seconds, only } => bench(seconds, only),
        Cmd::Soak { faults, seed } => soak(faults, seed),
        Cmd::Fleet { sites, through_hub } => fleet(sites, through_hub),
        Cmd::Fuzz {
            target,
            seconds,
            stable,
        } => fuzz::run_target(&target, seconds, stable),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--db`: a database family by its key.
fn parse_family(s: &str) -> Result<tether_harness::db::Family, String> {
    tether_harness::db::Family::parse(s).ok_or_else(|| format!("`{s}`: expected mariadb or mysql"))
}

/// The repository root (the parent of this crate).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the root")
        .to_path_buf()
}

/// Runs a command in the repository root, failing with its name if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("xtask: running {shown}");
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn soak(faults: usize, seed: Option<u64>) -> Result<()> {
    install::ensure()?;
    run(cargo().args(["build", "--quiet", "-p", "tether", "--bin", "tether"]))?;
    let seed = seed.unwrap_or_else(rand::random);
    let dir = root().join("target/soak");
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("xtask: soak with {faults} faults, seed {seed}");
    let opts = tether_harness::soak::SoakOptions::new(
        faults,
        seed,
        dir.clone(),
        root().join("target/debug/tether"),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(tether_harness::soak::run(opts))?;
    eprintln!("xtask: {}", tether_harness::soak::summary(&report, &dir));
    Ok(())
}

fn fleet(sites: usize, through_hub: bool) -> Result<()> {
    install::ensure()?;
    run(cargo().args(["build", "--quiet", "-p", "tether", "--bin", "tether"]))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if through_hub {
        let dir = root().join("target/fleet-hub");
        let _ = std::fs::remove_dir_all(&dir);
        let opts = tether_harness::fleet::HubFleetOptions {
            offices: sites,
            dir: dir.clone(),
            tether: root().join("target/debug/tether"),
            rows_per_s: 2,
            within: std::time::Duration::from_secs(300),
            steady: std::time::Duration::from_secs(20),
        };
        let report = rt.block_on(tether_harness::fleet::run_through_hub(opts))?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        eprintln!(
            "xtask: fleet report in {}",
            dir.join("report.json").display()
        );
        return Ok(());
    }
    let dir = root().join("target/fleet");
    let _ = std::fs::remove_dir_all(&dir);
    let opts = tether_harness::fleet::FleetOptions {
        sites,
        dir: dir.clone(),
        tether: root().join("target/debug/tether"),
        green_within: std::time::Duration::from_secs(180),
        steady: std::time::Duration::from_secs(20),
    };
    let report = rt.block_on(tether_harness::fleet::run(opts))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    eprintln!(
        "xtask: fleet report in {}",
        dir.join("report.json").display()
    );
    Ok(())
}

fn bench(seconds: u32, only: Option<Only>) -> Result<()> {
    install::ensure()?;
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "tether",
        "--bin",
        "tether",
        "-p",
        "tether-harness",
        "--bin",
        "tether-bench",
    ]))?;
    let target = root().join("target/release");
    let results = root().join("target/bench/results.json");
    let mut bench = Command::new(target.join("tether-bench"));
    bench
        .arg("--tether")
        .arg(target.join("tether"))
        .arg("--out")
        .arg(&results)
        .arg("--seconds")
        .arg(seconds.to_string());
    if let Some(only) = only {
        bench.args(["--only", only.name()]);
    }
    run(&mut bench)?;
    // Only the page's measurement needs the arm64 build.
    if only.is_some_and(|o| o != Only::StatusPage) {
        return Ok(());
    }
    status_page_binary_bytes(&results)
}

/// `status_page_binary_bytes`: the stripped arm64 release binary (with the GPIO backend,
/// as packaged) with the `web` feature minus without it, merged into the results.
fn status_page_binary_bytes(results: &Path) -> Result<()> {
    let target = match deb::ensure_target(deb::ARM64) {
        Ok(()) => deb::ARM64.to_owned(),
        Err(e) => {
            eprintln!("xtask: {e:#}; measuring the status page's size on this machine's target");
            deb::host()?
        }
    };
    let binary = root().join("target").join(&target).join("release/tether");
    let size = |features: &[&str]| -> Result<u64> {
        let mut build = deb::release_build(&target);
        build.args(features);
        run(&mut build)?;
        Ok(std::fs::metadata(&binary)?.len())
    };
    let without = size(&["--no-default-features", "--features", "gpio"])?;
    // Built last, so the binary left in place is the packaged one.
    let with = size(&["--features", "gpio"])?;
    let mut doc: serde_json::Map<String, serde_json::Value> = std::fs::read_to_string(results)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let key = if target == deb::ARM64 {
        "arm64"
    } else {
        "host"
    };
    doc.insert(format!("{key}_binary_bytes"), with.into());
    doc.insert(
        format!("{key}_binary_bytes_without_status_page"),
        without.into(),
    );
    doc.insert(
        "status_page_binary_bytes".into(),
        (with as i64 - without as i64).into(),
    );
    std::fs::write(results, serde_json::to_string_pretty(&doc)? + "\n")?;
    eprintln!(
        "xtask: {target} binary {with} bytes, {without} without the status page: status_page_binary_bytes {}",
        with as i64 - without as i64
    );
    Ok(())
}

/// `cargo xtask test`. Ends with the count (`N passed, N failed, N skipped`) as its last
/// line, after the list of what was skipped and why, whether it passed or not.
fn test(extra: &[String]) -> Result<()> {
    let started = Instant::now();
    install::ensure()?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The GPIO backend is behind a feature the default build leaves out.
    run(cargo().args([
        "clippy",
        "-p",
        "tether",
        "-p",
        "tether-board",
        "--features",
        "tether/gpio,tether-board/gpio",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    let mut tally = Tally::default();
    supply_chain(&mut tally)?;
    let outcome = cargo_test(extra, &mut tally).and_then(|all_ok| {
        if !all_ok || tally.failed > 0 {
            bail!("tests failed");
        }
        appliance()
    });
    match &outcome {
        Ok(()) => eprintln!("xtask: all checks passed in {:.0?}", started.elapsed()),
        Err(e) => eprintln!("xtask: {e:#}"),
    }
    print!("{}", tally.report());
    if outcome.is_err() {
        // The count stays the last line; main would print the error after it.
        std::process::exit(1);
    }
    Ok(())
}

/// Every test binary of the workspace (see `testrun`), counted; tests that could not run
/// here append to the skip log (`tether_harness::skip`), read afterwards.
fn cargo_test(extra: &[String], tally: &mut Tally) -> Result<bool> {
    let skip_log = root().join("target/test-skips.log");
    let _ = std::fs::remove_file(&skip_log);
    let all_ok = testrun::run_all(extra, &skip_log, tally)?;
    let log = std::fs::read_to_string(&skip_log).unwrap_or_default();
    for (name, why) in tether_harness::skip::read_log(&log) {
        tally.skip(name, why);
    }
    Ok(all_ok)
}

/// `cargo deny`: licences, bans (duplicate versions are warnings) and sources always;
/// advisories against the RustSec database, fetched now, or a listed skip when it cannot
/// be fetched (its Git repository is unreachable from some networks).
fn supply_chain(tally: &mut Tally) -> Result<()> {
    install::cargo_tool("cargo-deny", CARGO_DENY)?;
    let check = |which: &[&str], offline: bool| {
        let mut c = cargo();
        c.args(["deny", "--locked"]);
        if offline {
            c.arg("--offline");
        }
        c.args(["check", "--hide-inclusion-graph"]).args(which);
        run(&mut c)
    };
    check(&["bans", "licenses", "sources"], false)?;
    match fetch_advisory_db() {
        Ok(()) => check(&["advisories"], true)?,
        Err(why) => {
            eprintln!("xtask: NOT CHECKED: advisories: {why}");
            tally.skip("cargo deny check advisories", why);
        }
    }
    Ok(())
}

/// `cargo deny fetch db`, bounded; the reason in one line when it fails.
fn fetch_advisory_db() -> Result<(), String> {
    let mut child = cargo()
        .args(["deny", "fetch", "db"])
        .current_dir(root())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start cargo deny: {e}"))?;
    let deadline = Instant::now() + ADVISORY_FETCH_LIMIT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the RustSec advisory database was not fetched within {ADVISORY_FETCH_LIMIT:?}"
                ));
            }
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    let cause = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message")
        .trim();
    Err(format!(
        "the RustSec advisory database cannot be fetched here ({cause})"
    ))
}

/// The appliance checks of the test command: the arm64 .deb is built and inspected, the
/// arm64 binary's smoke checks run under qemu-user, and its size is held to the 8 MiB
/// budget. Without the arm64 standard library this says so and checks a package for
/// this machine instead (whose size is printed, not judged).
fn appliance() -> Result<()> {
    let built = match deb::ensure_target(deb::ARM64) {
        Ok(()) => deb::build(Some(deb::ARM64), None)?,
        Err(e) => {
            eprintln!("xtask: {e:#}; checking a package for this machine instead");
            deb::build(None, None)?
        }
    };
    deb::check_package(&built.deb)?;
    deb::smoke(&built)?;
    let bytes = std::fs::metadata(&built.binary)?.len();
    eprintln!(
        "xtask: {} binary {bytes} bytes (goal {} or less)",
        built.target,
        deb::ARM64_GOAL_BYTES
    );
    if built.target == deb::ARM64 {
        deb::within_budget(bytes)?;
    }
    Ok(())
}
