//! Installs what the lab and the tests need on a fresh Debian machine: the real servers
//! (MariaDB, OpenSSH, mosquitto, and MySQL in a root of its own), the reference tools the
//! benchmarks compare against, and the unprivileged user the servers run as.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

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
    // Builds the MySQL root.
    ("mmdebstrap", "mmdebstrap"),
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
    mysql_root()?;
    Ok(())
}

/// MySQL for the tests: Debian's `mysql-server-core` is only in its unstable suite, built
/// for a newer C library than this machine's, so it gets a small root of its own (about
/// a minute and 500 MB, once per machine), outside every checkout where the harness finds
/// it ([`tether_harness::mysql::root_dir`], keyed by the recipe). Built in a temporary
/// directory beside it and renamed into place, so a half-built root is never used and two
/// builds at once cannot collide.
pub fn mysql_root() -> Result<()> {
    use tether_harness::mysql;
    let dir = mysql::root_dir();
    if std::env::var_os(mysql::ROOT_ENV).is_some() || mysql::is_root(&dir) {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "MySQL for the tests is missing: run `cargo xtask install` as root once (it builds {} with mmdebstrap)",
            dir.display()
        );
    }
    let base = Path::new(mysql::ROOTS_DIR);
    std::fs::create_dir_all(base)?;
    tether_harness::process::set_mode(base, 0o755)?;
    let work = tempfile::Builder::new()
        .prefix(".mysql-root-build-")
        .tempdir_in(base)?;
    let tree = work.path().join("root");
    let mirror = debian_mirror();
    let started = std::time::Instant::now();
    eprintln!(
        "xtask: building the MySQL root {} from {mirror} ({}), once per machine",
        dir.display(),
        mysql::recipe()
    );
    crate::run(
        Command::new("mmdebstrap")
            .arg("--variant=minbase")
            .arg("--quiet")
            // The archive's Release file here can be older than its validity window.
            .arg("--aptopt=Acquire::Check-Valid-Until \"false\"")
            .arg(format!("--include={}", mysql::ROOT_PACKAGES.join(",")))
            .args([
                "--dpkgopt=path-exclude=/usr/share/man/*",
                "--dpkgopt=path-exclude=/usr/share/doc/*",
                "--dpkgopt=path-exclude=/usr/share/locale/*",
            ])
            .arg(mysql::ROOT_SUITE)
            .arg(&tree)
            .arg(&mirror),
    )
    .context("building the MySQL root")?;
    if !mysql::is_root(&tree) {
        bail!("mmdebstrap finished but {} has no mysqld", tree.display());
    }
    tether_harness::process::set_mode(&tree, 0o755)?;
    let version = Command::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            tree.join("var/lib/dpkg").display()
        ))
        .args(["-W", "-f=${Version}", "mysql-server-core"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    std::fs::write(
        tree.join("tether-root.txt"),
        format!(
            "{}\nmysql-server-core {version}\nfrom {mirror}\n",
            mysql::recipe()
        ),
    )?;
    // Another build may have finished first; either root is as good.
    if std::fs::rename(&tree, &dir).is_err() && !mysql::is_root(&dir) {
        bail!("cannot put the MySQL root in place at {}", dir.display());
    }
    eprintln!(
        "xtask: MySQL {version} ready in {} after {:.0?}",
        dir.display(),
        started.elapsed()
    );
    Ok(())
}

/// The Debian archive apt uses here (its sources' main `.../debian` URI), so the root
/// comes from the same place as every other package; Debian's own mirror otherwise.
fn debian_mirror() -> String {
    let mut texts: Vec<String> = std::fs::read_to_string("/etc/apt/sources.list")
        .into_iter()
        .collect();
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<_> = dir.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            let ext = p.extension().and_then(|e| e.to_str());
            if matches!(ext, Some("list" | "sources")) {
                texts.extend(std::fs::read_to_string(&p).ok());
            }
        }
    }
    mirror_in(&texts.join("\n")).unwrap_or_else(|| "http://deb.debian.org/debian".into())
}

/// The first main-archive URI (ending in `/debian`) in one-line (`deb URI suite ...`) or
/// deb822 (`URIs: ...`) sources.
fn mirror_in(sources: &str) -> Option<String> {
    sources
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| {
            let words: Vec<&str> = if let Some(rest) = l.strip_prefix("URIs:") {
                rest.split_whitespace().collect()
            } else if let Some(rest) = l.strip_prefix("deb ") {
                // Skip an options block: deb [arch=amd64 signed-by=...] URI suite ...
                let rest = match rest.trim_start().strip_prefix('[') {
                    Some(r) => r.split_once(']').map(|(_, r)| r).unwrap_or(""),
                    None => rest,
                };
                rest.split_whitespace().take(1).collect()
            } else {
                Vec::new()
            };
            words.into_iter().map(str::to_owned).collect::<Vec<_>>()
        })
        .find(|uri| uri.trim_end_matches('/').ends_with("/debian"))
        .map(|uri| uri.trim_end_matches('/').to_owned())
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_main_archive_is_found_in_either_sources_format() {
        let deb822 = "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\n";
        assert_eq!(
            super::mirror_in(deb822).as_deref(),
            Some("http://deb.debian.org/debian")
        );
        let list = "deb [arch=amd64] http://mirror.example/debian-security bookworm-security main\ndeb http://mirror.example/debian/ bookworm main\n";
        assert_eq!(
            super::mirror_in(list).as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(
            super::mirror_in("deb https://packages.cloud.google.com/apt cloud-sdk main"),
            None
        );
    }
}
