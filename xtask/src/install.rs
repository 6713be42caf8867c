//! Installs what the lab and the tests need on a fresh Debian machine: the real servers
//! (MariaDB, OpenSSH, mosquitto), the reference tools the benchmarks compare against,
//! and the unprivileged user the servers run as.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, bail};

/// A program (or an absolute path) the project needs and the Debian package that ships it.
const NEEDED: &[(&str, &str)] = &[
    ("mariadbd", "mariadb-server"),
    ("mariadb-install-db", "mariadb-server"),
    ("mariadb", "mariadb-client"),
    ("sshd", "openssh-server"),
    ("ssh", "openssh-client"),
    ("ssh-keygen", "openssh-client"),
    ("mosquitto", "mosquitto"),
    ("mosquitto_sub", "mosquitto-clients"),
    ("autossh", "autossh"),
    ("iperf3", "iperf3"),
    ("socat", "socat"),
    // The status page test loads the page in a real browser (headless).
    ("chromium", "chromium"),
    // The appliance: systemd's checkers, the arm64 cross linker and libc, qemu-user.
    ("systemd-analyze", "systemd"),
    ("dpkg-deb", "dpkg"),
    ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
    ("/usr/aarch64-linux-gnu/lib/crt1.o", "libc6-dev-arm64-cross"),
    ("qemu-aarch64-static", "qemu-user-static"),
];

/// Where Debian puts daemons that are not on a normal user's PATH.
const SBIN: &[&str] = &["/usr/sbin", "/sbin", "/usr/local/sbin"];

/// Whether a program is on the PATH (or in an sbin), or an absolute path exists.
fn have(program: &str) -> bool {
    if program.starts_with('/') {
        return std::path::Path::new(program).exists();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN.iter().map(Into::into))
        .any(|dir| dir.join(program).is_file())
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Installs missing packages (as root) or says exactly what to run (otherwise), then
/// makes sure the lab user exists.
pub fn ensure() -> Result<()> {
    ensure_programs(NEEDED.iter().copied())?;
    tether_harness::ensure_lab_user()?;
    Ok(())
}

/// Makes sure the cargo subcommand `name` (a crate of that name) is installed at
/// `version`: once per machine, `cargo install --locked` builds it from crates.io.
pub fn cargo_tool(name: &str, version: &str) -> Result<()> {
    let reports = |program: &Path| {
        Command::new(program)
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .is_some_and(|o| String::from_utf8_lossy(&o.stdout).contains(version))
    };
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
    if reports(Path::new(name)) || home.is_some_and(|h| reports(&h.join("bin").join(name))) {
        return Ok(());
    }
    let started = std::time::Instant::now();
    crate::run(crate::cargo().args(["install", name, "--version", version, "--locked"]))?;
    eprintln!(
        "xtask: installed {name} {version} in {:.0?}",
        started.elapsed()
    );
    Ok(())
}

/// Installs the packages of the programs that are missing (as root), or says exactly
/// what to run (otherwise).
pub fn ensure_programs<'a>(needed: impl Iterator<Item = (&'a str, &'a str)>) -> Result<()> {
    let mut missing: Vec<&str> = needed
        .filter(|(program, _)| !have(program))
        .map(|(_, package)| package)
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if !missing.is_empty() {
        let cmd = format!(
            "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {}",
            missing.join(" ")
        );
        if !is_root() {
            bail!(
                "missing Debian packages: {}. Run as root:\n  {cmd}",
                missing.join(", ")
            );
        }
        eprintln!("xtask: installing {}", missing.join(", "));
        crate::run(Command::new("sh").args(["-c", &cmd]))?;
        // The packages' own services are not wanted: the harness starts private copies.
        for service in ["mariadb", "ssh", "mosquitto"] {
            let _ = Command::new("sh")
                .args([
                    "-c",
                    &format!("service {service} stop >/dev/null 2>&1 || true"),
                ])
                .status();
        }
    }
    Ok(())
}
