//! Tether's project scripts, in Rust: `cargo xtask lab | test | bench | soak | fleet | fuzz | deb | image`.

mod deb;
mod fuzz;
mod image;
mod install;
mod lab;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

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
    },
    /// Install what is missing, then run fmt, clippy and every test.
    Test {
        /// Passed to `cargo test` after `--` (a test name filter, for example).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Build the release binary (stripped, LTO) and the .deb, check the package and run
    /// the binary's smoke checks (under qemu-user for a foreign target).
    Deb {
        /// The Rust target, for example aarch64-unknown-linux-gnu (default: this machine).
        #[arg(long)]
        target: Option<String>,
    },
    /// Build the bootable disk image (as root): Debian packages via mmdebstrap, read-only
    /// root, /data, first-boot config from the boot partition, the .deb installed.
    Image {
        /// arm64 (Raspberry Pi-class boards) or amd64 (the same recipe, for the boot test).
        #[arg(long, default_value = "arm64")]
        arch: String,
    },
    /// Boot the amd64 image of the same recipe under qemu against the lab's hub and
    /// broker and wait for `in_sync`.
    ImageTest {
        /// Boot the image already under target/image instead of building it again.
        #[arg(long)]
        reuse: bool,
    },
    /// Install the Debian packages the lab and the tests need (apt-get, as root).
    Install,
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
    Fleet {
        #[arg(long, default_value_t = 50)]
        sites: usize,
    },
    /// Fuzz one parser (config, journal, replication_status, link_control) for N seconds:
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
        /// Run only one measurement and merge its keys into results.json: `tunnel`
        /// (throughput and memory against OpenSSH, about three minutes), `status-page`
        /// (status_page_binary_bytes, status_page_rss_kib), `seed` (the office's first
        /// copy against a gzipped dump over ssh, about six minutes), `resume` or `wire`.
        #[arg(long)]
        only: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Lab { headless } => lab::run(headless),
        Cmd::Test { args } => test(&args),
        Cmd::Install => install::ensure(),
        Cmd::Deb { target } => deb::deb(target.as_deref()),
        Cmd::Image { arch } => image::Arch::parse(&arch).and_then(image::image),
        Cmd::ImageTest { reuse } => image::image_test(reuse),
        Cmd::Bench { seconds, only } => bench(seconds, only.as_deref()),
        Cmd::Soak { faults, seed } => soak(faults, seed),
        Cmd::Fleet { sites } => fleet(sites),
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

fn fleet(sites: usize) -> Result<()> {
    install::ensure()?;
    run(cargo().args(["build", "--quiet", "-p", "tether", "--bin", "tether"]))?;
    let dir = root().join("target/fleet");
    let _ = std::fs::remove_dir_all(&dir);
    let opts = tether_harness::fleet::FleetOptions {
        sites,
        dir: dir.clone(),
        tether: root().join("target/debug/tether"),
        green_within: std::time::Duration::from_secs(180),
        steady: std::time::Duration::from_secs(20),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(tether_harness::fleet::run(opts))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    eprintln!(
        "xtask: fleet report in {}",
        dir.join("report.json").display()
    );
    Ok(())
}

fn bench(seconds: u32, only: Option<&str>) -> Result<()> {
    if let Some(only) = only
        && !["status-page", "tunnel", "resume", "wire", "seed"].contains(&only)
    {
        bail!(
            "--only {only}: the selectable measurements are tunnel, resume, wire, seed and status-page"
        );
    }
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
        bench.args(["--only", only]);
    }
    run(&mut bench)?;
    if only.is_some_and(|o| o != "status-page") {
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

fn test(extra: &[String]) -> Result<()> {
    let started = std::time::Instant::now();
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
    let mut test = cargo();
    test.args(["test", "--workspace", "--no-fail-fast", "--"]);
    // Each real-server test starts its own MariaDB pair and sshd; on 2 cores a few at a
    // time keep the timing figures honest.
    test.args(["--test-threads", "4"]);
    test.args(extra);
    run(&mut test)?;
    appliance()?;
    eprintln!("xtask: all checks passed in {:.0?}", started.elapsed());
    Ok(())
}

/// The appliance checks of the test command: the arm64 .deb is built and inspected and
/// the arm64 binary's smoke checks run under qemu-user. Without the arm64 standard
/// library this says so and checks a package for this machine instead.
fn appliance() -> Result<()> {
    let built = match deb::ensure_target(deb::ARM64) {
        Ok(()) => deb::build(Some(deb::ARM64))?,
        Err(e) => {
            eprintln!("xtask: {e:#}; checking a package for this machine instead");
            deb::build(None)?
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
    Ok(())
}
