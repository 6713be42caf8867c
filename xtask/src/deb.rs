//! `cargo xtask deb [--target T]`: a stripped release binary (LTO) and a .deb packed by
//! cargo-deb with the systemd unit, the sysusers/tmpfiles entries, the example config as
//! a conffile and maintainer scripts; then the package's contents are checked and, for a
//! foreign target, the binary's smoke checks run under qemu-user.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{cargo, root, run};

/// The cargo-deb release the project is packed with (installed by `cargo install`).
pub const CARGO_DEB: &str = "3.8.0";

/// The arm64 target the box runs.
pub const ARM64: &str = "aarch64-unknown-linux-gnu";

/// Budget for the arm64 binary (stripped, as packaged): `cargo xtask test` fails over it.
pub const ARM64_GOAL_BYTES: u64 = 8 * 1024 * 1024;

/// An error when the arm64 binary is over its budget.
pub fn within_budget(bytes: u64) -> Result<()> {
    if bytes > ARM64_GOAL_BYTES {
        bail!(
            "the arm64 binary is {bytes} bytes, {} over its budget of {ARM64_GOAL_BYTES} (8 MiB)",
            bytes - ARM64_GOAL_BYTES
        );
    }
    Ok(())
}

/// What a build produced.
pub struct Built {
    pub binary: PathBuf,
    pub deb: PathBuf,
    pub target: String,
}

pub fn host() -> Result<String> {
    let out = Command::new("rustc").arg("-vV").output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .context("rustc -vV names no host")
}

/// Makes sure the target's standard library is there; says plainly when it cannot be.
pub fn ensure_target(target: &str) -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    if let Ok(out) = &out
        && String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l == target)
    {
        return Ok(());
    }
    eprintln!("xtask: adding the Rust standard library for {target}");
    let added = Command::new("rustup")
        .args(["target", "add", target])
        .status();
    match added {
        Ok(s) if s.success() => Ok(()),
        _ => bail!(
            "the Rust standard library for {target} cannot be installed (`rustup target add \
             {target}` failed): the {target} build and its checks are skipped"
        ),
    }
}

/// The cargo command that builds the agent's release binary for `target`.
pub fn release_build(target: &str) -> std::process::Command {
    let mut build = cargo();
    build.args([
        "build",
        "--release",
        "--locked",
        "-p",
        "tether",
        "--bin",
        "tether",
        "--target",
    ]);
    build.arg(target);
    build
}

/// Where the package's `/usr/share/tether/release-key.pub` is taken from (written by
/// [`stage_release_key`] before every pack).
pub const STAGED_RELEASE_KEY: &str = "target/release-key.pub";

/// The release public key(s) the package ships: `key` (an OpenSSH `ssh-ed25519` line per
/// key), else `TETHER_RELEASE_KEY_PUB`, else none: the box then refuses every update and
/// says so. Checked here, so a package never ships a key the box cannot read.
pub fn stage_release_key(key: Option<&Path>) -> Result<()> {
    let from_env = std::env::var_os("TETHER_RELEASE_KEY_PUB").map(PathBuf::from);
    let key = key.map(Path::to_path_buf).or(from_env);
    let staged = root().join(STAGED_RELEASE_KEY);
    std::fs::create_dir_all(staged.parent().context("staged key path")?)?;
    let text = match &key {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the release key {}", path.display()))?;
            let keys = tether::release::parse_release_keys(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            eprintln!(
                "xtask: the package trusts {} release key(s) from {}",
                keys.len(),
                path.display()
            );
            text
        }
        None => {
            eprintln!(
                "xtask: no release key given (--release-key or TETHER_RELEASE_KEY_PUB): \
                 boxes with this package refuse every update"
            );
            tether::release::NO_RELEASE_KEY.to_owned()
        }
    };
    std::fs::write(&staged, text)?;
    Ok(())
}

/// Builds the release binary for `target` (the host when `None`) and packs the .deb with
/// `release_key` (see [`stage_release_key`]).
pub fn build(target: Option<&str>, release_key: Option<&Path>) -> Result<Built> {
    let host = host()?;
    let target = target.unwrap_or(&host).to_owned();
    ensure_target(&target)?;
    crate::install::cargo_tool("cargo-deb", CARGO_DEB)?;
    stage_release_key(release_key)?;
    let mut build = release_build(&target);
    // The box has LEDs: the GPIO backend is in every packaged build.
    build.args(["--features", "gpio"]);
    run(&mut build)?;
    let binary = root().join("target").join(&target).join("release/tether");
    run(cargo().args([
        "deb",
        "-p",
        "tether",
        "--no-build",
        "--no-strip",
        "--target",
        &target,
    ]))?;
    let debs = root().join("target").join(&target).join("debian");
    let deb = std::fs::read_dir(&debs)
        .with_context(|| format!("cargo-deb wrote no {}", debs.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .context("cargo-deb wrote no .deb")?;
    Ok(Built {
        binary,
        deb,
        target,
    })
}

fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Checks the package: the files where Debian and systemd look for them, the config as
/// a conffile, maintainer scripts that create the user and enable the unit, and nothing
/// that removes config or state.
pub fn check_package(deb: &Path) -> Result<()> {
    let files = output(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
    for want in [
        "./usr/bin/tether",
        "tether.service",
        "./usr/lib/sysusers.d/tether.conf",
        "./usr/lib/tmpfiles.d/tether.conf",
        "./etc/tether/tether.toml",
        "./usr/share/doc/tether/README.md",
        "./usr/share/tether/hub/sshd_match.conf",
        "./usr/share/tether/hub/agent_user_mysql.sql",
        "./usr/share/tether/release-key.pub",
    ] {
        if !files.lines().any(|l| l.ends_with(want)) {
            bail!("{} lacks {want}; it holds:\n{files}", deb.display());
        }
    }
    let dir = tempfile::tempdir()?;
    run(Command::new("dpkg-deb")
        .arg("--control")
        .arg(deb)
        .arg(dir.path()))?;
    let conffiles = std::fs::read_to_string(dir.path().join("conffiles")).unwrap_or_default();
    if !conffiles.lines().any(|l| l == "/etc/tether/tether.toml") {
        bail!("/etc/tether/tether.toml is not a conffile: {conffiles:?}");
    }
    let postinst = std::fs::read_to_string(dir.path().join("postinst"))
        .context("the package has no postinst")?;
    for want in [
        "systemd-sysusers",
        "deb-systemd-helper enable tether.service",
        "chgrp tether /etc/tether/tether.toml",
    ] {
        if !postinst.contains(want) {
            bail!("postinst does not mention {want}:\n{postinst}");
        }
    }
    for script in ["preinst", "postinst", "prerm", "postrm"] {
        let path = dir.path().join(script);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        run(Command::new("sh").arg("-n").arg(&path))
            .with_context(|| format!("{script} is not valid sh"))?;
        for forbidden in ["rm -rf /var/lib/tether", "rm -rf /etc/tether", "userdel"] {
            if text.contains(forbidden) {
                bail!("{script} must leave config, state and the user alone: `{forbidden}`");
            }
        }
    }
    eprintln!(
        "xtask: {} holds the binary, the unit, sysusers/tmpfiles and the conffile",
        deb.display()
    );
    Ok(())
}

/// Runs the binary's smoke checks (`version`, `check-config` on the shipped example),
/// under qemu-user when it is for another architecture.
pub fn smoke(built: &Built) -> Result<()> {
    let example = root().join("agent/tether.example.toml");
    let cmd = |args: &[&str]| -> Command {
        let mut c = if built.target == ARM64 && !cfg!(target_arch = "aarch64") {
            let mut c = Command::new("qemu-aarch64-static");
            c.args(["-L", "/usr/aarch64-linux-gnu"]).arg(&built.binary);
            c
        } else {
            Command::new(&built.binary)
        };
        c.args(args);
        c
    };
    let version = output(&mut cmd(&["version"]))?;
    if !version.starts_with("tether ") {
        bail!("`tether version` printed {version:?}");
    }
    output(&mut cmd(&[
        "check-config",
        example.to_str().context("UTF-8 path")?,
    ]))?;
    eprintln!(
        "xtask: {} smoke checks passed: {}",
        built.target,
        version.trim()
    );
    Ok(())
}

/// `cargo xtask deb`: build, check, smoke-test, and print the figures.
pub fn deb(target: Option<&str>, release_key: Option<&Path>) -> Result<()> {
    crate::install::ensure()?;
    let built = build(target, release_key)?;
    check_package(&built.deb)?;
    smoke(&built)?;
    let bytes = std::fs::metadata(&built.binary)?.len();
    let arch = if built.target == ARM64 {
        "arm64"
    } else {
        "host"
    };
    println!("{arch}_binary_bytes {bytes} (goal {ARM64_GOAL_BYTES} or less)");
    println!("deb {}", built.deb.display());
    if built.target == ARM64 {
        within_budget(bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_budget_is_8_mib_and_enforced() {
        assert!(super::within_budget(8 * 1024 * 1024).is_ok());
        let e = super::within_budget(8 * 1024 * 1024 + 1).unwrap_err();
        assert!(e.to_string().contains("1 over its budget"), "{e}");
    }
}
