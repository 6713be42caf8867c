//! OpenSSH's sshd acting as the hub: its own host key and config, the appliance account
//! restricted with exactly the hub kit's `authorized_keys` line and `Match` block.

use std::io::Read;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::process::{Proc, RunAs, TempDir, on_free_port, program};

/// What the hub's sshd allows the appliance.
#[derive(Debug, Clone)]
pub struct SshdOptions {
    /// The remote forward's listen address on the hub (`127.0.0.1:PORT`).
    pub permit_listen: String,
    /// The hub DB the local forward may open (`127.0.0.1:PORT`).
    pub permit_open: String,
    /// Overrides ClientAliveInterval (the Match block says 15 s) for tests of stale
    /// listeners.
    pub client_alive_interval: Option<u32>,
}

/// A running sshd.
#[derive(Debug)]
pub struct Sshd {
    pub host: String,
    pub port: u16,
    /// The appliance's account on this hub.
    pub user: String,
    /// The device key the agent logs in with (OpenSSH format, mode 0600).
    pub device_key: PathBuf,
    /// The device's public key line.
    pub device_public: String,
    /// The hub's host key as an OpenSSH public key line.
    pub host_key: String,
    /// Its `SHA256:` fingerprint.
    pub host_fingerprint: String,
    pub log: PathBuf,
    pub config: PathBuf,
    /// The releases the boxes read over sftp (world-readable; the hub kit's
    /// `ChrootDirectory`, which an unprivileged sshd cannot use, made the start directory).
    pub releases: PathBuf,
    proc: Proc,
    run_as: RunAs,
    dir: TempDir,
}

const START_TIMEOUT: Duration = Duration::from_secs(15);

impl Sshd {
    pub fn start(opts: SshdOptions) -> Result<Sshd> {
        let run_as = RunAs::detect()?;
        let dir = TempDir::new("sshd-", &run_as)?;
        let keygen = program("ssh-keygen", "openssh-client")?;
        let host_key = dir.path().join("ssh_host_ed25519_key");
        run_as.run(
            "ssh-keygen (host key)",
            Command::new(&keygen)
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "hub", "-f"])
                .arg(&host_key),
        )?;
        // The device key belongs to the agent (the test process), not to sshd.
        let device_key = dir.path().join("device_key");
        let out = Command::new(&keygen)
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "tether@office", "-f"])
            .arg(&device_key)
            .output()?;
        if !out.status.success() {
            bail!(
                "ssh-keygen (device key): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let device_public = std::fs::read_to_string(device_key.with_extension("pub"))?
            .trim()
            .to_owned();
        let host_public = std::fs::read_to_string(host_key.with_extension("pub"))?
            .trim()
            .to_owned();
        let fp = Command::new(&keygen)
            .arg("-lf")
            .arg(host_key.with_extension("pub"))
            .output()?;
        let host_fingerprint = String::from_utf8_lossy(&fp.stdout)
            .split_whitespace()
            .nth(1)
            .context("ssh-keygen -lf printed no fingerprint")?
            .to_owned();
        let authorized = dir.path().join("authorized_keys");
        std::fs::write(
            &authorized,
            tether::hubkit::authorized_keys_line(
                &device_public,
                &opts.permit_listen,
                &opts.permit_open,
            ) + "\n",
        )?;
        let mut match_block =
            tether::hubkit::sshd_match_block(&run_as.name, &opts.permit_listen, &opts.permit_open);
        if let Some(secs) = opts.client_alive_interval {
            match_block = match_block.replace(
                "ClientAliveInterval 15",
                &format!("ClientAliveInterval {secs}"),
            );
        }
        let releases = dir.path().join("releases");
        std::fs::create_dir_all(&releases)?;
        std::fs::set_permissions(
            &releases,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let match_block = sftp_without_chroot(&match_block, &releases)?;
        let log = dir.path().join("sshd.log");
        let config = dir.path().join("sshd_config");
        let sshd = program("sshd", "openssh-server")?;
        let (port, proc) = on_free_port("hub sshd", &log, |port| {
            std::fs::write(
                &config,
                format!(
                    "ListenAddress 127.0.0.1:{port}\nHostKey {hk}\nPidFile {dir}/sshd.pid\nAuthorizedKeysFile {ak}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nLogLevel VERBOSE\nMaxStartups 100:30:200\nSubsystem sftp internal-sftp\n{match_block}\n",
                    hk = host_key.display(),
                    dir = dir.path().display(),
                    ak = authorized.display(),
                ),
            )?;
            let mut cmd = Command::new(&sshd);
            cmd.arg("-D").arg("-f").arg(&config).arg("-E").arg(&log);
            let mut proc = Proc::spawn(
                "hub sshd",
                &run_as,
                &mut cmd,
                &dir.path().join("stdout.log"),
            )?;
            proc.log = log.clone();
            proc.wait_ready(START_TIMEOUT, || banner(port))?;
            Ok(proc)
        })?;
        Ok(Sshd {
            host: "127.0.0.1".into(),
            port,
            user: run_as.name.clone(),
            device_key,
            device_public,
            host_key: host_public,
            host_fingerprint,
            log,
            config,
            releases,
            proc,
            run_as,
            dir,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    pub fn log_tail(&self) -> String {
        crate::process::tail(&self.log, 20)
    }

    /// Stops sshd and every session it serves, then starts it again on the same port.
    pub fn restart(&mut self) -> Result<()> {
        self.proc.stop();
        let mut cmd = Command::new(program("sshd", "openssh-server")?);
        cmd.arg("-D")
            .arg("-f")
            .arg(&self.config)
            .arg("-E")
            .arg(&self.log);
        let mut proc = Proc::spawn(
            "hub sshd",
            &self.run_as,
            &mut cmd,
            &self.dir.path().join("stdout.log"),
        )?;
        proc.log = self.log.clone();
        let port = self.port;
        proc.wait_ready(START_TIMEOUT, || banner(port))?;
        self.proc = proc;
        Ok(())
    }

    /// The processes holding connections to this sshd (its sessions; after a restart they
    /// may have outlived the listener that accepted them, as with OpenSSH's systemd unit).
    pub fn session_pids(&self) -> Vec<i32> {
        let out = Command::new("ss")
            .args(["-Htnp", "state", "established"])
            .arg(format!("sport = :{}", self.port))
            .output();
        let text = out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let mut pids: Vec<i32> = text
            .split("pid=")
            .skip(1)
            .filter_map(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Restarts sshd and ends every session it had (SIGKILL to each), as a reboot of
    /// the hub or a restart that takes the sessions along would.
    pub fn restart_with_sessions(&mut self) -> Result<()> {
        let sessions = self.session_pids();
        self.restart()?;
        for pid in sessions {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        Ok(())
    }

    /// Replaces the authorized key (to test a refused login).
    pub fn authorize_only(&self, public_line: &str, listen: &str, open: &str) -> Result<()> {
        std::fs::write(
            self.dir.path().join("authorized_keys"),
            tether::hubkit::authorized_keys_line(public_line, listen, open) + "\n",
        )?;
        Ok(())
    }

    /// Installs one key line per site (a fleet on one hub account): each key may listen
    /// only on its own port.
    pub fn authorize_sites(&self, sites: &[(String, String)], open: &str) -> Result<()> {
        let lines: String = sites
            .iter()
            .map(|(public, listen)| {
                tether::hubkit::authorized_keys_line(public, listen, open) + "\n"
            })
            .collect();
        std::fs::write(self.dir.path().join("authorized_keys"), lines)?;
        Ok(())
    }

    /// The sshd master and every process below it (sessions), by walking /proc.
    pub fn process_tree(&self) -> Vec<u32> {
        let Some(root) = self.pid() else {
            return Vec::new();
        };
        let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
                let ppid = stat
                    .rsplit(')')
                    .next()?
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()?;
                Some((pid, ppid))
            })
            .collect();
        let mut tree = vec![root];
        let mut i = 0;
        while i < tree.len() {
            let parent = tree[i];
            tree.extend(
                parents
                    .iter()
                    .filter(|(_, pp)| *pp == parent)
                    .map(|(p, _)| *p),
            );
            i += 1;
        }
        tree
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// The hub kit's Match block for an sshd that is not root: it cannot chroot, so the
/// release directory becomes the sftp start directory instead (`-d`), which the boxes
/// use the same way (they only ask for relative paths). Fails if the kit's lines change.
pub fn sftp_without_chroot(block: &str, releases: &std::path::Path) -> Result<String> {
    let chroot = block
        .lines()
        .find(|l| l.trim_start().starts_with("ChrootDirectory "))
        .context("the hub kit's Match block has no ChrootDirectory line")?;
    if !block.contains("internal-sftp -R -d / ") {
        bail!("the hub kit's Match block has no `internal-sftp -R -d /` line");
    }
    Ok(block.replace(&format!("{chroot}\n"), "").replace(
        "internal-sftp -R -d / ",
        &format!("internal-sftp -R -d {} ", releases.display()),
    ))
}

/// Whether something answering with an SSH banner listens on the port.
fn banner(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 8];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"SSH-2.0-")
}
