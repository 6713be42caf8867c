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

/// Runs a short command as the caller and returns its standard output; fails with the
/// command line and everything it printed if it cannot start or exits non-zero.
pub fn stdout_of(cmd: &mut Command) -> Result<String> {
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

    /// SIGKILL without a goodbye (for crash tests), to the whole process group; returns
    /// once none of the group runs any more (at most 10 s), as systemd waits for a
    /// service's whole cgroup: reaping the process itself says nothing of its children
    /// (the agent under its launcher), which may still hold their ports for a moment.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let group = child.id();
            unregister(group);
            let pgid = nix::unistd::Pid::from_raw(-(group as i32));
            let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            let deadline = Instant::now() + Duration::from_secs(10);
            while group_runs(group) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Whether any process of process group `pgid` still runs (zombies do not count: they
/// hold nothing but their exit status).
fn group_runs(pgid: u32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            return false;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // After the command's name in brackets: state, parent, process group.
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid)
            && !matches!(fields.first(), Some(&"Z") | Some(&"X"))
    })
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

/// `tether setup` as a process on `config`, the administrators' passwords (hub, office) in
/// its environment, its output (both streams) into `output`, no terminal to ask on.
pub fn setup_command(
    config: &Path,
    passwords: (&str, &str),
    args: &[&str],
    output: &Path,
) -> Result<tokio::process::Command> {
    let out =
        File::create(output).with_context(|| format!("cannot create {}", output.display()))?;
    let err = out.try_clone()?;
    let mut c = tokio::process::Command::new(tether_bin());
    c.arg("setup")
        .arg("--config")
        .arg(config)
        .args(args)
        .env("TETHER_HUB_ADMIN_PASSWORD", passwords.0)
        .env("TETHER_OFFICE_ADMIN_PASSWORD", passwords.1)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
    Ok(c)
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

/// `tether <args> --config <config>` as a person runs it, bounded by a minute: its exit
/// code and what it printed (stdout, then stderr).
pub async fn tether_cli(args: &[&str], config: &Path) -> (i32, String) {
    let mut cmd = tokio::process::Command::new(tether_bin());
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("`tether {args:?}` did not finish within 60 s"))
        .unwrap_or_else(|e| panic!("`tether {args:?}` did not run: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
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

/// What `ss` shows of the TCP sockets on a local port, with their processes (for an
/// error about a port that was taken).
pub fn sockets_on(port: u16) -> String {
    std::process::Command::new("ss")
        .args(["-tanpe", &format!("( sport = :{port} )")])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|e| format!("(ss: {e})"))
}

/// A free loopback port for a server to listen on later, chosen at random below the
/// kernel's ephemeral range and checked by binding it: a port from that range could be
/// handed to an outgoing connection or a `bind(0)` between this check and its use (the
/// hub's remote-forward listener was once refused that way). Callers that start a server
/// still retry on the rare collision.
pub fn free_port() -> Result<u16> {
    Ok(reserve_port()?.local_addr()?.port())
}

/// A loopback port as [`free_port`] chooses it, held by the listener returned until the
/// caller drops it just before the server that needs it binds it: no other test can take
/// it in between.
pub fn reserve_port() -> Result<std::net::TcpListener> {
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
            if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                return Ok(l);
            }
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?)
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

/// One file per running server group. Not the `owners` directory earlier harnesses used:
/// they read a file there as the owner's pid alone and would kill a group whose entry
/// they cannot parse.
fn registry() -> PathBuf {
    std::env::temp_dir()
        .join("tether-harness")
        .join("server-groups")
}

/// A process as the registry knows it: its pid and when it started (field 22 of
/// `/proc/PID/stat`, clock ticks since boot), so a later process that got the same pid
/// is never taken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId {
    pub pid: u32,
    pub start: u64,
}

/// One registry entry: a server's process group (led by `leader`) and the harness that
/// started it (`owner`), in the boot `boot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub owner: ProcessId,
    pub leader: ProcessId,
    pub boot: String,
}

impl Registration {
    fn to_line(&self) -> String {
        format!(
            "owner {} {} leader {} {} boot {}\n",
            self.owner.pid, self.owner.start, self.leader.pid, self.leader.start, self.boot
        )
    }

    /// `None` for anything else, including the older format (the owner's pid alone).
    fn parse(text: &str) -> Option<Registration> {
        let w: Vec<&str> = text.split_whitespace().collect();
        let ["owner", op, os, "leader", lp, ls, "boot", boot] = w.as_slice() else {
            return None;
        };
        Some(Registration {
            owner: ProcessId {
                pid: op.parse().ok()?,
                start: os.parse().ok()?,
            },
            leader: ProcessId {
                pid: lp.parse().ok()?,
                start: ls.parse().ok()?,
            },
            boot: (*boot).to_owned(),
        })
    }
}

/// What the sweep does with one registry entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sweep {
    /// Its owner still runs: not ours to touch.
    Keep,
    /// The owner is gone and the group's leader is the very process that was started:
    /// SIGKILL the group, then drop the entry.
    KillGroup,
    /// Nothing of it is left to stop (or it cannot be told apart from a newer process
    /// that reuses a pid): drop the entry, signal nothing.
    Forget,
}

/// The sweep's decision, from the entry and what `/proc` says now: `start_of(pid)` is the
/// start time of the process with that pid, if there is one. Pure.
pub fn sweep_decision(
    entry: Option<&Registration>,
    boot_now: &str,
    start_of: impl Fn(u32) -> Option<u64>,
) -> Sweep {
    let Some(entry) = entry else {
        return Sweep::Forget;
    };
    if entry.boot != boot_now {
        // Every process of another boot is gone; its pids mean nothing now.
        return Sweep::Forget;
    }
    if start_of(entry.owner.pid) == Some(entry.owner.start) {
        return Sweep::Keep;
    }
    if start_of(entry.leader.pid) == Some(entry.leader.start) {
        Sweep::KillGroup
    } else {
        Sweep::Forget
    }
}

/// Start time (clock ticks since boot) of the process `pid`, if it exists.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after its end.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Records that this process owns the server process group `pid` (just started).
fn register(pid: u32) {
    let dir = registry();
    let me = std::process::id();
    let (Some(owner_start), Some(leader_start)) = (start_time(me), start_time(pid)) else {
        return;
    };
    let entry = Registration {
        owner: ProcessId {
            pid: me,
            start: owner_start,
        },
        leader: ProcessId {
            pid,
            start: leader_start,
        },
        boot: boot_id(),
    };
    if std::fs::create_dir_all(&dir).is_ok() {
        // Whole or not at all: a sweep in another thread must never read the entry half
        // written and drop it (seen with 60 servers starting at once).
        let tmp = dir.join(format!(".{pid}.tmp"));
        if std::fs::write(&tmp, entry.to_line()).is_ok() {
            let _ = std::fs::rename(&tmp, dir.join(pid.to_string()));
        }
    }
}

fn unregister(pid: u32) {
    let _ = std::fs::remove_file(registry().join(pid.to_string()));
}

/// Stops server groups whose owning harness process no longer exists, and only those:
/// see [`sweep_decision`].
fn sweep_orphans() {
    let Ok(entries) = std::fs::read_dir(registry()) else {
        return;
    };
    let boot = boot_id();
    for e in entries.flatten() {
        // An entry another harness is writing (renamed into place when whole).
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let entry = std::fs::read_to_string(e.path())
            .ok()
            .and_then(|t| Registration::parse(&t));
        match sweep_decision(entry.as_ref(), &boot, start_time) {
            Sweep::Keep => continue,
            Sweep::KillGroup => {
                if let Some(entry) = &entry {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(-(entry.leader.pid as i32)),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            Sweep::Forget => {}
        }
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

/// A process's proportional set size (shared pages split between their users), KiB.
pub fn pss_kib(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    rollup
        .lines()
        .find(|l| l.starts_with("Pss:"))?
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

#[cfg(test)]
mod tests {
    use super::*;

    const BOOT: &str = "5d1c2c8e-0000-4000-8000-000000000001";

    fn entry() -> Registration {
        Registration {
            owner: ProcessId {
                pid: 100,
                start: 5_000,
            },
            leader: ProcessId {
                pid: 200,
                start: 5_100,
            },
            boot: BOOT.into(),
        }
    }

    /// `/proc` as a list of (pid, start time).
    fn procs(list: &'static [(u32, u64)]) -> impl Fn(u32) -> Option<u64> {
        move |pid| list.iter().find(|(p, _)| *p == pid).map(|(_, s)| *s)
    }

    #[test]
    fn kills_only_the_very_group_it_started_once_its_owner_is_gone() {
        let e = entry();
        let decide = |list| sweep_decision(Some(&e), BOOT, procs(list));
        // Owner running: never touched, whatever the group does.
        assert_eq!(decide(&[(100, 5_000), (200, 5_100)]), Sweep::Keep);
        assert_eq!(decide(&[(100, 5_000)]), Sweep::Keep);
        // Owner gone, the leader is the process that was started: kill its group.
        assert_eq!(decide(&[(200, 5_100)]), Sweep::KillGroup);
        // The owner's pid now belongs to another process: the owner is gone all the same.
        assert_eq!(decide(&[(100, 9_999), (200, 5_100)]), Sweep::KillGroup);
        // The leader's pid now belongs to another process: nothing of ours to kill.
        assert_eq!(decide(&[(200, 7_000)]), Sweep::Forget);
        assert_eq!(decide(&[(100, 9_999), (200, 7_000)]), Sweep::Forget);
        // Both gone.
        assert_eq!(decide(&[]), Sweep::Forget);
    }

    #[test]
    fn an_entry_from_another_boot_or_unreadable_is_only_dropped() {
        let e = entry();
        // Same pids and start times after a reboot are other processes.
        assert_eq!(
            sweep_decision(Some(&e), "another-boot", procs(&[(200, 5_100)])),
            Sweep::Forget
        );
        assert_eq!(
            sweep_decision(Some(&e), "another-boot", procs(&[(100, 5_000)])),
            Sweep::Forget
        );
        assert_eq!(
            sweep_decision(None, BOOT, procs(&[(200, 5_100)])),
            Sweep::Forget
        );
    }

    #[test]
    fn entries_round_trip_and_the_old_format_is_not_read() {
        let e = entry();
        assert_eq!(Registration::parse(&e.to_line()), Some(e));
        assert_eq!(Registration::parse("12345"), None);
        assert_eq!(Registration::parse("owner 1 x leader 2 3 boot b"), None);
    }

    #[test]
    fn start_times_come_from_proc() {
        let me = std::process::id();
        let start = start_time(me).expect("this process has a start time");
        assert_eq!(start_time(me), Some(start));
        let mut child = Command::new("true").spawn().unwrap();
        let child_start = start_time(child.id());
        let _ = child.wait();
        // Started after this process (ticks are coarse: equal is possible).
        assert!(child_start.is_none_or(|c| c >= start));
        assert!(!boot_id().is_empty());
    }
}
