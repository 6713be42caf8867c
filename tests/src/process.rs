//! Child processes the harness owns: each in its own process group, killed with its
//! children when the owner is dropped (also while a test panics), and with
//! PR_SET_PDEATHSIG so nothing outlives a harness that is itself killed.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The unprivileged account servers run as when the harness runs as root.
pub const LAB_USER: &str = "tether-lab";

/// Who the servers run as.
#[derive(Debug, Clone)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Whether the harness must switch to this account (it runs as root).
    pub switch: bool,
}

impl RunAs {
    /// The lab user when root, the current user otherwise.
    pub fn detect() -> Result<RunAs> {
        let me = nix::unistd::geteuid();
        if !me.is_root() {
            let user = nix::unistd::User::from_uid(me)?.context("the current user has no name")?;
            return Ok(RunAs {
                name: user.name,
                uid: me.as_raw(),
                gid: nix::unistd::getegid().as_raw(),
                switch: false,
            });
        }
        let user = nix::unistd::User::from_name(LAB_USER)?.with_context(|| {
            format!(
                "the servers must not run as root and the user `{LAB_USER}` does not exist: run `cargo xtask test` (which creates it) or `useradd --system --home-dir /nonexistent --shell /usr/sbin/nologin {LAB_USER}`"
            )
        })?;
        Ok(RunAs {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            switch: true,
        })
    }

    /// Makes `path` (a directory the harness created) belong to this account.
    pub fn own(&self, path: &Path) -> Result<()> {
        if self.switch {
            nix::unistd::chown(
                path,
                Some(nix::unistd::Uid::from_raw(self.uid)),
                Some(nix::unistd::Gid::from_raw(self.gid)),
            )
            .with_context(|| format!("cannot chown {}", path.display()))?;
        }
        Ok(())
    }

    /// Prepares a command to run as this account, in its own process group, dying with us.
    pub fn prepare(&self, cmd: &mut Command) {
        if self.switch {
            // std drops root's supplementary groups when it changes the uid.
            cmd.uid(self.uid).gid(self.gid);
        }
        // Its own group, so stopping it also stops whatever it forked.
        cmd.process_group(0);
    }

    /// Runs a short command as this account and fails with its output if it fails.
    pub fn run(&self, what: &str, cmd: &mut Command) -> Result<String> {
        self.prepare(cmd);
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("{what}: cannot start {cmd:?}"))?;
        if !out.status.success() {
            bail!(
                "{what} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Creates the lab user if the harness runs as root and it is missing.
pub fn ensure_lab_user() -> Result<()> {
    if !nix::unistd::geteuid().is_root() || nix::unistd::User::from_name(LAB_USER)?.is_some() {
        return Ok(());
    }
    let status = Command::new("useradd")
        .args([
            "--system",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            LAB_USER,
        ])
        .status()
        .context("cannot run useradd")?;
    if !status.success() {
        bail!("useradd {LAB_USER} failed ({status})");
    }
    Ok(())
}

/// A long-running server process.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, run_as: &RunAs, cmd: &mut Command, log: &Path) -> Result<Proc> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("{name}: cannot open its log {}", log.display()))?;
        let err = out.try_clone()?;
        run_as.prepare(cmd);
        sweep_orphans();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("{name}: cannot start {cmd:?}"))?;
        register(child.id());
        Ok(Proc {
            name: name.to_owned(),
            log: log.to_path_buf(),
            child: Some(child),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// An error if the process has exited, naming it, with its log tail.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            bail!("{} exited ({status}):\n{}", self.name, tail(&self.log, 20));
        }
        Ok(())
    }

    /// Polls `ready` every 50 ms until it succeeds, the process dies, or `timeout` passes.
    pub fn wait_ready(&mut self, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()
                .with_context(|| format!("{} failed to start", self.name))?;
            if ready() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} failed to start: not ready within {timeout:?}\n{}",
                    self.name,
                    tail(&self.log, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM to the process group, up to 3 s to exit, then SIGKILL; always reaped.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        unregister(child.id());
        let pgid = nix::unistd::Pid::from_raw(-(child.id() as i32));
        let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Also reaches children the server left behind in its group.
        let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGKILL without a goodbye (for crash tests).
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            unregister(child.id());
            let pgid = nix::unistd::Pid::from_raw(-(child.id() as i32));
            let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    let mut out = format!("--- last lines of {} ---\n", path.display());
    for l in &lines[start..] {
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// The `tether` binary the workspace build put next to the running test (target/debug):
/// `cargo xtask test` builds it; `cargo build -p tether` does for a single test.
pub fn tether_bin() -> PathBuf {
    let bin = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent()?.parent().map(|d| d.join("tether")))
        .unwrap_or_else(|| PathBuf::from("tether"));
    assert!(
        bin.exists(),
        "{} is missing: run the workspace tests (cargo xtask test builds it) or cargo build -p tether",
        bin.display()
    );
    bin
}

/// Finds a program on PATH or in the sbin directories, or says which package ships it.
pub fn program(name: &str, package: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!("`{name}` is not installed: install the Debian package `{package}` (cargo xtask install does)")
        })
}

/// Starts a server on a free port: `start` gets the port and returns the running process
/// once it is ready. Picking a port and binding it are not atomic, so when the server's
/// log says the address was taken meanwhile, another port is tried (three in all).
pub fn on_free_port(
    name: &str,
    log: &Path,
    mut start: impl FnMut(u16) -> Result<Proc>,
) -> Result<(u16, Proc)> {
    let mut last = None;
    for _ in 0..3 {
        let port = free_port()?;
        match start(port) {
            Ok(proc) => return Ok((port, proc)),
            Err(e) => {
                let clash = std::fs::read_to_string(log)
                    .is_ok_and(|l| l.contains("Address already in use"));
                if !clash {
                    return Err(e);
                }
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("{name}: no free port")))
}

/// A free loopback port for a server to listen on later, chosen at random below the
/// kernel's ephemeral range and checked by binding it: a port from that range could be
/// handed to an outgoing connection or a `bind(0)` between this check and its use (the
/// hub's remote-forward listener was once refused that way). Callers that start a server
/// still retry on the rare collision.
pub fn free_port() -> Result<u16> {
    use rand::Rng;
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if low > 2048 {
        let from = low.saturating_sub(12_288).max(1024);
        let mut rng = rand::rng();
        for _ in 0..64 {
            let port = rng.random_range(from..low);
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A directory the harness owns, removed on drop (kept with TETHER_KEEP_TMP=1).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str, run_as: &RunAs) -> Result<TempDir> {
        let base = std::env::temp_dir().join("tether-harness");
        std::fs::create_dir_all(&base)?;
        set_mode(&base, 0o755)?;
        let path = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&base)?
            .keep();
        set_mode(&path, 0o755)?;
        run_as.own(&path)?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("TETHER_KEEP_TMP").is_some() {
            eprintln!("harness: keeping {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

fn registry() -> PathBuf {
    std::env::temp_dir().join("tether-harness").join("owners")
}

/// Records that this process owns the server process group `pid`.
fn register(pid: u32) {
    let dir = registry();
    if std::fs::create_dir_all(&dir).is_ok() {
        // Whole or not at all: a sweep in another thread must never read the entry empty
        // (no owner) and kill a server that is just starting (seen with 60 at once).
        let tmp = dir.join(format!(".{pid}.tmp"));
        if std::fs::write(&tmp, std::process::id().to_string()).is_ok() {
            let _ = std::fs::rename(&tmp, dir.join(pid.to_string()));
        }
    }
}

fn unregister(pid: u32) {
    let _ = std::fs::remove_file(registry().join(pid.to_string()));
}

/// Stops server groups whose owning harness process no longer exists.
fn sweep_orphans() {
    let Ok(entries) = std::fs::read_dir(registry()) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(group) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let owner = std::fs::read_to_string(e.path())
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if owner.is_some_and(|o| std::path::Path::new(&format!("/proc/{o}")).exists()) {
            continue;
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(-group),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = std::fs::remove_file(e.path());
    }
}

/// A process's resident memory (VmRSS) in KiB, if it is still there.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU seconds (user and system) the processes have used so far.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks: u64 = pids
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|stat| {
            let rest = stat.rsplit(')').next()?.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum();
    // USER_HZ is 100 on Linux.
    ticks as f64 / 100.0
}
