//! `cargo xtask fuzz TARGET --seconds N`: the parsers' fuzz targets under cargo-fuzz
//! (libFuzzer, nightly) when this machine has a nightly toolchain, otherwise (or with
//! `--stable`) under a stable driver that feeds mutated seeds to the same functions.

use std::panic;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{cargo, root, run};

/// A target: its name (the cargo-fuzz binary), the function, seeds and tokens worth
/// splicing in.
struct Target {
    name: &'static str,
    check: fn(&[u8]),
    seeds: fn() -> Vec<Vec<u8>>,
    tokens: &'static [&'static str],
}

const TARGETS: &[Target] = &[
    Target {
        name: "config",
        check: tether::fuzz::config,
        seeds: config_seeds,
        tokens: &[
            "\"", "=", "[", "]", "{", "}", "\n", ",", "#", "password", "port", "\"5s\"", "70000",
            "true", "[hub]", "'''", "\\u0000", "site.id", "0x10", "-1",
        ],
    },
    Target {
        name: "journal",
        check: tether::fuzz::journal,
        seeds: journal_seeds,
        tokens: &["TTHJ", "\0\0\0\0", "\u{7f}", "\u{80}"],
    },
    Target {
        name: "replication_status",
        check: tether::fuzz::replication_status,
        seeds: status_seeds,
        tokens: &[
            "Yes",
            "No",
            "\0",
            "1062",
            "1236",
            "on table ",
            "Duplicate entry '",
            "skip_counter",
            "18446744073709551616",
        ],
    },
    Target {
        name: "release",
        check: tether::fuzz::release,
        seeds: release_seeds,
        tokens: &[
            "default = ",
            "[channels]",
            "[sites]",
            "channel",
            "version",
            "format = 1",
            "sha256",
            "\x7fELF",
            "-----BEGIN SSH SIGNATURE-----",
            "\n",
            "\"",
        ],
    },
    Target {
        name: "link_control",
        check: tether_harness::linksim::fuzz_control,
        seeds: link_seeds,
        tokens: &[
            "cut", "heal", "rate", "delay", " ", "\t", "\n", "0", "60000", "off", "-",
        ],
    },
];

fn config_seeds() -> Vec<Vec<u8>> {
    let mut seeds = vec![
        [&[0u8][..], tether::config::EXAMPLE.as_bytes()].concat(),
        [&[0u8][..], tether::fuzz::config_base().as_bytes()].concat(),
    ];
    for (mode, line) in [(3u8, "port = 0"), (9, "password = 5"), (40, "[huub]")] {
        seeds.push([&[mode][..], line.as_bytes()].concat());
    }
    seeds
}

fn release_seeds() -> Vec<Vec<u8>> {
    let manifest = tether::release::Manifest::describe(
        tether::release::parse_version("1.2.3").expect("a version"),
        "aarch64",
        "tether",
        b"\x7fELF",
    );
    let mut binary = b"\x7fELF\x02\x01".to_vec();
    binary.resize(64, 0);
    binary.extend_from_slice(&tether::version::slot_for("1.2.3").expect("a slot"));
    vec![
        [
            &[0u8][..],
            tether_harness::releases::everyone("1.2.3").as_bytes(),
        ]
        .concat(),
        [
            &[0u8][..],
            b"default = \"s\"\n[channels]\ns = \"1.0.0\"\n[sites]\na = { channel = \"s\" }\n",
        ]
        .concat(),
        [&[1u8][..], manifest.to_toml().as_bytes()].concat(),
        [
            &[2u8][..],
            b"-----BEGIN SSH SIGNATURE-----\nU1NIU0lH\n-----END SSH SIGNATURE-----\n",
        ]
        .concat(),
        [&[3u8][..], &binary[..]].concat(),
    ]
}

fn journal_seeds() -> Vec<Vec<u8>> {
    let golden = include_bytes!("../../agent/tests/fixtures/journal-v1.bin").to_vec();
    // The same state as a bare payload (`P` + the bytes between length and CRC).
    let payload = [&b"P"[..], &golden[8..golden.len() - 4]].concat();
    vec![
        golden,
        payload,
        tether::journal::encode(&tether::journal::State::default()),
    ]
}

fn status_seeds() -> Vec<Vec<u8>> {
    let row: &[(u8, &str)] = &[
        (0, "Yes"),
        (2, "No"),
        (4, "12"),
        (8, "1062"),
        (
            9,
            "Could not execute Write_rows_v1 event on table app.orders; Duplicate entry '42' for key 'PRIMARY'",
        ),
        (10, "2"),
    ];
    let mut bytes = Vec::new();
    for (c, v) in row {
        bytes.push(*c);
        bytes.extend_from_slice(v.as_bytes());
        bytes.push(0);
    }
    vec![bytes, vec![0x80, 0, 0x86, 0]]
}

fn link_seeds() -> Vec<Vec<u8>> {
    [
        "cut",
        "blackhole",
        "heal",
        "rate 16000",
        "rate off",
        "delay 300",
        "status",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

pub fn run_target(name: &str, seconds: u64, stable: bool) -> Result<()> {
    let Some(target) = TARGETS.iter().find(|t| t.name == name) else {
        let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
        bail!("unknown fuzz target `{name}` (one of {})", names.join(", "));
    };
    if !stable {
        match libfuzzer_ready() {
            Ok(()) => return libfuzzer(target, seconds),
            Err(why) => eprintln!("xtask: {why}; using the stable driver instead"),
        }
    }
    stable_driver(target, Duration::from_secs(seconds))
}

/// cargo-fuzz needs a nightly toolchain (sanitizer coverage flags); install cargo-fuzz
/// from crates.io when it is missing.
fn libfuzzer_ready() -> Result<()> {
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output();
    if !nightly.is_ok_and(|o| o.status.success()) {
        bail!("no nightly toolchain (cargo-fuzz needs one)");
    }
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have && run(cargo().args(["install", "cargo-fuzz", "--locked"])).is_err() {
        bail!("cargo-fuzz is missing and could not be installed");
    }
    Ok(())
}

fn libfuzzer(target: &Target, seconds: u64) -> Result<()> {
    let corpus = root().join("fuzz/corpus").join(target.name);
    std::fs::create_dir_all(&corpus)?;
    for (i, seed) in (target.seeds)().iter().enumerate() {
        std::fs::write(corpus.join(format!("seed-{i}")), seed)?;
    }
    // Safe Rust: the sanitizer finds nothing the panics don't; without it the build
    // is much faster.
    run(Command::new("cargo")
        .args([
            "+nightly",
            "fuzz",
            "run",
            "--sanitizer",
            "none",
            target.name,
        ])
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-max_len=4096"))
}

/// Random mutations of the seeds (and of inputs found along the way), each run through
/// the target under `catch_unwind`; the first failing input is saved and reported.
fn stable_driver(target: &Target, time: Duration) -> Result<()> {
    let seed: u64 = std::env::var("TETHER_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut corpus = (target.seeds)();
    eprintln!(
        "xtask: fuzzing `{}` with the stable driver for {time:?} (seed {seed}, TETHER_FUZZ_SEED to repeat)",
        target.name
    );
    let started = Instant::now();
    let mut execs: u64 = 0;
    let quiet = panic::take_hook();
    panic::set_hook(Box::new(|_| {}));
    let failure = loop {
        if started.elapsed() >= time {
            break None;
        }
        let input = if rng.random_ratio(1, 50) {
            let n = rng.random_range(0..512);
            (0..n).map(|_| rng.random()).collect()
        } else {
            let base = corpus[rng.random_range(0..corpus.len())].clone();
            let other = corpus[rng.random_range(0..corpus.len())].clone();
            mutate(&mut rng, base, &other, target.tokens)
        };
        execs += 1;
        let check = target.check;
        let data = input.clone();
        if let Err(e) = panic::catch_unwind(move || check(&data)) {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panic".into());
            break Some((input, why));
        }
        // Keep some inputs to mutate further, so the search wanders beyond the seeds.
        if corpus.len() < 4096 && rng.random_ratio(1, 20) {
            corpus.push(input);
        }
    };
    panic::set_hook(quiet);
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "xtask: {execs} inputs in {secs:.1} s ({:.0}/s), corpus {}",
        execs as f64 / secs,
        corpus.len()
    );
    if let Some((input, why)) = failure {
        let dir = root().join("target/fuzz-crashes");
        std::fs::create_dir_all(&dir)?;
        let file: PathBuf = dir.join(format!("{}-{seed}.bin", target.name));
        std::fs::write(&file, &input)?;
        bail!(
            "`{}` failed: {why}\ninput ({} bytes) saved to {}: {:?}",
            target.name,
            input.len(),
            file.display(),
            String::from_utf8_lossy(&input)
        );
    }
    Ok(())
}

fn mutate(rng: &mut StdRng, mut data: Vec<u8>, other: &[u8], tokens: &[&str]) -> Vec<u8> {
    for _ in 0..rng.random_range(1..=4) {
        let len = data.len();
        let at = if len == 0 {
            0
        } else {
            rng.random_range(0..len)
        };
        match rng.random_range(0..8) {
            0 if len > 0 => data[at] ^= 1 << rng.random_range(0..8),
            1 if len > 0 => data[at] = rng.random(),
            2 => data.insert(at.min(len), rng.random()),
            3 if len > 0 => {
                let end = (at + rng.random_range(1..=16)).min(len);
                data.drain(at..end);
            }
            4 if len > 0 => {
                let end = (at + rng.random_range(1..=32)).min(len);
                let piece = data[at..end].to_vec();
                let to = rng.random_range(0..=len);
                data.splice(to..to, piece);
            }
            5 if !other.is_empty() => {
                let from = rng.random_range(0..other.len());
                let end = (from + rng.random_range(1..=64)).min(other.len());
                data.splice(at.min(len)..at.min(len), other[from..end].iter().copied());
            }
            6 => {
                let t = tokens[rng.random_range(0..tokens.len())].as_bytes();
                data.splice(at.min(len)..at.min(len), t.iter().copied());
            }
            _ if len > 0 => {
                // Interesting numbers: boundaries of the small integer types.
                let v = [0u8, 1, 0x7f, 0x80, 0xff][rng.random_range(0..5)];
                data[at] = v;
            }
            _ => data.push(rng.random()),
        }
    }
    data.truncate(4096);
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_runs_briefly_on_the_stable_driver() {
        for t in TARGETS {
            stable_driver(t, Duration::from_millis(300)).unwrap();
        }
    }
}
