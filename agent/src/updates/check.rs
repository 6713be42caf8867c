//! The agent's update task: on its schedule, through the live SSH session, it reads the
//! hub's `rollout.toml` and, when the site's version is newer than the running one, the
//! release's signed manifest; downloads the binary into the data dir, resuming where a
//! cut left off; checks it against the manifest; installs it and asks the launcher to
//! switch. Every refusal leaves the box as it was and says why in the update status.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use russh::keys::ssh_key::PublicKey;
use russh_sftp::client::RawSftpSession;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::install::{self, FileCheck};
use super::state::{LauncherState, Layout, SwitchRequest};
use super::{Supervised, UpdateStatus};
use crate::health::Health;
use crate::release::{
    self, MANIFEST_FILE, Manifest, ROLLOUT_FILE, Refusal, SIGNATURE_FILE, SMALL_FILE_MAX,
    THIS_ARCH, Version,
};
use crate::tunnel::HubChannels;

/// Bound on opening the sftp channel and on each request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes asked for in one read: one request in flight at a time keeps the link's queue
/// short for replication (16 KiB is about a second of a 128 kbit/s line).
const CHUNK: u32 = 16 * 1024;
/// Room left free on the data partition beyond the download.
const SPACE_MARGIN: u64 = 2 * 1024 * 1024;
/// The first check waits for the tunnel to have been up this long (or `check_every`).
const FIRST_CHECK_MAX: Duration = Duration::from_secs(60);
/// Retry after a check that failed on the way (link cut, hub busy).
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// How long the launcher may take to record a proof (it writes its state file as soon as
/// it reads the line: milliseconds).
const PROOF_RECORDED_WITHIN: Duration = Duration::from_secs(10);

/// What the update task needs from the config.
#[derive(Debug, Clone)]
pub struct UpdateSettings {
    pub enabled: bool,
    pub check_every: Duration,
    pub release_key: PathBuf,
    pub max_rate: u64,
    pub site: String,
    pub data_dir: PathBuf,
}

impl UpdateSettings {
    pub fn from_config(config: &crate::config::Config) -> Self {
        let u = &config.updates;
        UpdateSettings {
            enabled: u.enabled,
            check_every: u.check_every,
            release_key: u.release_key.clone(),
            max_rate: u.max_rate,
            site: config.site.id.clone(),
            data_dir: config.data.dir.clone(),
        }
    }
}

/// The update task: reports through `status`, proves this version to the launcher,
/// checks on schedule, and cancels `shutdown` once a switch is requested (the agent then
/// exits for the launcher to start the new version).
pub async fn run(
    settings: UpdateSettings,
    hub: HubChannels,
    health: watch::Receiver<Option<Health>>,
    status: watch::Sender<UpdateStatus>,
    shutdown: CancellationToken,
) {
    let layout = Layout::new(&settings.data_dir);
    let (launcher_state, problem) = layout.load_state();
    if let Some(p) = problem {
        tracing::warn!("updates: {p}");
    }
    let mut report = UpdateStatus::after(launcher_state.last.as_ref());
    let supervised = Supervised::from_env();
    let (proven_tx, mut proven) = watch::channel(false);
    let on_trial = supervised.as_ref().is_some_and(|s| s.trial.is_some());
    if let Some(s) = supervised {
        tokio::spawn(super::proof::report(
            s.reports,
            s.trial,
            health.clone(),
            proven_tx,
            shutdown.clone(),
        ));
    }
    let off = |why: String, report: &mut UpdateStatus| {
        report.state = "off".into();
        report.error = Some(why);
        status.send_replace(report.clone());
    };
    if !settings.enabled {
        return off(
            "updates are off in the config (updates.enabled)".into(),
            &mut report,
        );
    }
    if std::env::var_os(super::launcher::ENV_SUPERVISOR).is_none() {
        return off(
            "this agent was not started by tether's launcher (`tether run`), which alone can switch versions".into(),
            &mut report,
        );
    }
    let keys = match super::load_release_keys(&settings.release_key) {
        Ok(k) if !k.is_empty() => k,
        Ok(_) => {
            return off(
                "no release key in updates.release_key: this box installs no update".into(),
                &mut report,
            );
        }
        Err(e) => return off(format!("no usable release key: {e}"), &mut report),
    };
    if on_trial {
        report.state = "on_trial".into();
        status.send_replace(report.clone());
        tokio::select! {
            () = shutdown.cancelled() => return,
            r = proven.wait_for(|p| *p) => if r.is_err() { return },
        }
        // "installed" once the launcher has recorded the proof, not before: a power cut
        // in between starts the version on trial again, one start nearer its rollback.
        let version = crate::version::current();
        let deadline = tokio::time::Instant::now() + PROOF_RECORDED_WITHIN;
        while layout
            .load_state()
            .0
            .trial
            .is_some_and(|t| t.version == version)
        {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    within = ?PROOF_RECORDED_WITHIN,
                    "updates: the launcher has not recorded this version's proof; it is reported installed anyway"
                );
                break;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        report.state = "idle".into();
        report.last_result = Some("installed".into());
        report.last_version = Some(crate::version::current().to_owned());
        report.error = None;
    }
    status.send_replace(report.clone());

    let mut checker = Checker {
        settings,
        layout,
        keys,
        hub,
        health,
        status,
        report,
        refused: HashSet::new(),
    };
    let mut wait = checker.settings.check_every.min(FIRST_CHECK_MAX);
    loop {
        // Wait for the tunnel, then `wait` more while nothing stops us.
        let mut hub = checker.hub.clone();
        tokio::select! {
            () = shutdown.cancelled() => return,
            up = hub.wait_up() => if !up { return },
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        if !checker.hub.is_up() {
            continue;
        }
        let outcome = tokio::select! {
            () = shutdown.cancelled() => return,
            o = checker.check() => o,
        };
        wait = match outcome {
            Checked::Switch => {
                tracing::info!("updates: restarting into the new version");
                shutdown.cancel();
                return;
            }
            Checked::Done => jittered(checker.settings.check_every),
            Checked::Retry => RETRY_AFTER.min(checker.settings.check_every),
        };
    }
}

/// Up to a tenth shorter, so a fleet's checks spread out.
fn jittered(every: Duration) -> Duration {
    every.mul_f64(1.0 - rand::random::<f64>() * 0.1)
}

enum Checked {
    /// Nothing more to do until the next check.
    Done,
    /// Failed on the way (link, hub): try again soon.
    Retry,
    /// A new version is installed and the switch requested.
    Switch,
}

struct Checker {
    settings: UpdateSettings,
    layout: Layout,
    keys: Vec<PublicKey>,
    hub: HubChannels,
    health: watch::Receiver<Option<Health>>,
    status: watch::Sender<UpdateStatus>,
    report: UpdateStatus,
    /// Downloads refused in this run (version and digest): not fetched again until the
    /// hub offers something else.
    refused: HashSet<(Version, [u8; 32])>,
}

/// A failure on the way, worth a retry.
struct Trouble(String);

impl Checker {
    fn publish(&mut self, state: &str) {
        self.report.state = state.into();
        self.status.send_replace(self.report.clone());
    }

    fn refuse(&mut self, version: &Version, why: &Refusal) -> Checked {
        let text = format!("release {version} refused: {why}; nothing was changed");
        if self.report.error.as_deref() != Some(text.as_str()) {
            tracing::warn!("updates: {text}");
        }
        if !matches!(why, Refusal::FailedBefore(_)) {
            self.report.last_result = Some("refused".into());
            self.report.last_version = Some(version.to_string());
        }
        self.report.error = Some(text);
        self.publish("idle");
        Checked::Done
    }

    async fn check(&mut self) -> Checked {
        match self.try_check().await {
            Ok(c) => c,
            Err(Trouble(why)) => {
                tracing::info!("updates: {why}");
                self.report.error = Some(why);
                let state = if self.report.state == "downloading" {
                    "downloading"
                } else {
                    "idle"
                };
                self.publish(state);
                Checked::Retry
            }
        }
    }

    async fn try_check(&mut self) -> Result<Checked, Trouble> {
        let (launcher, _) = self.layout.load_state();
        let running = release::parse_version(crate::version::current())
            .map_err(|e| Trouble(format!("this version cannot be compared: {e}")))?;
        let sftp = open_sftp(&self.hub).await?;
        let Some(rollout) = read_small(&sftp, ROLLOUT_FILE).await? else {
            self.report.target = None;
            self.report.error = None;
            self.publish("idle");
            self.prune(&launcher, None);
            return Ok(Checked::Done);
        };
        let target = std::str::from_utf8(&rollout)
            .map_err(|_| "rollout.toml is not UTF-8 text".to_owned())
            .and_then(release::Rollout::parse)
            .and_then(|r| r.target(&self.settings.site));
        let target = match target {
            Ok(t) => t.version,
            Err(e) => {
                return Err(Trouble(format!("the hub's rollout cannot be used: {e}")));
            }
        };
        self.report.target = Some(target.to_string());
        if !release::newer(&target, &running) {
            if target.cmp_precedence(&running) == std::cmp::Ordering::Less {
                let why = Refusal::Older {
                    offered: target.clone(),
                    running,
                };
                self.prune(&launcher, None);
                return Ok(self.refuse(&target, &why));
            }
            self.report.error = None;
            self.publish("idle");
            self.prune(&launcher, None);
            return Ok(Checked::Done);
        }
        if let Some(why) = launcher.failed_reason(&target.to_string()) {
            self.prune(&launcher, None);
            return Ok(self.refuse(&target, &Refusal::FailedBefore(why.to_owned())));
        }
        let dir = release::release_dir(&target, THIS_ARCH);
        let (Some(text), Some(sig)) = (
            read_small(&sftp, &format!("{dir}/{MANIFEST_FILE}")).await?,
            read_small(&sftp, &format!("{dir}/{SIGNATURE_FILE}")).await?,
        ) else {
            return Err(Trouble(format!(
                "the hub has no release {target} for {THIS_ARCH} (no {dir}/{MANIFEST_FILE} and {SIGNATURE_FILE})"
            )));
        };
        let manifest = match release::verify_manifest(&text, &sig, &self.keys) {
            Ok(m) => m,
            Err(why) => return Ok(self.refuse(&target, &why)),
        };
        if manifest.version != target {
            let why = Refusal::WrongDirectory {
                dir,
                found: manifest.version.clone(),
            };
            return Ok(self.refuse(&target, &why));
        }
        if let Err(why) = release::check_offer(&manifest, &running, THIS_ARCH) {
            return Ok(self.refuse(&target, &why));
        }
        if self
            .refused
            .contains(&(manifest.version.clone(), manifest.sha256))
        {
            return Ok(Checked::Done);
        }
        let partial = self.layout.downloads().join(format!(
            "{}-{}-{}.partial",
            manifest.version,
            manifest.arch,
            &release::hex(&manifest.sha256)[..16]
        ));
        self.prune(&launcher, Some(&partial));
        self.publish("downloading");
        self.download(
            &sftp,
            &format!("{dir}/{}", manifest.file),
            &manifest,
            &partial,
        )
        .await?;
        drop(sftp);
        match check_file_blocking(manifest.clone(), partial.clone()).await {
            Ok(()) => {}
            Err(FileCheck::Refused(why)) => {
                // Never installed, never resumed: the next offer starts from zero.
                let _ = std::fs::remove_file(&partial);
                self.refused
                    .insert((manifest.version.clone(), manifest.sha256));
                return Ok(self.refuse(&manifest.version, &why));
            }
            Err(FileCheck::Io(e)) => return Err(Trouble(format!("cannot read the download: {e}"))),
        }
        self.publish("installing");
        let baseline = self
            .health
            .borrow()
            .as_ref()
            .map(|h| h.verdict)
            .unwrap_or(crate::health::Verdict::LinkDown);
        let request = SwitchRequest {
            version: manifest.version.to_string(),
            baseline: baseline.as_str().into(),
            from: running.to_string(),
        };
        let steps = install::install_steps(&self.layout, &text, &sig, &manifest, &partial, request);
        let layout = self.layout.clone();
        let installed = tokio::task::spawn_blocking(move || {
            steps.iter().try_for_each(|s| install::apply(&layout, s))
        })
        .await;
        match installed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Trouble(format!("cannot install {}: {e}", manifest.version))),
            Err(e) => return Err(Trouble(format!("the install stopped: {e}"))),
        }
        tracing::info!(version = %manifest.version, baseline = baseline.as_str(), "updates: installed; switching");
        self.report.error = None;
        self.publish("restarting");
        Ok(Checked::Switch)
    }

    /// Keeps the running, current and previous versions and `download`; removes the rest.
    fn prune(&self, launcher: &LauncherState, download: Option<&Path>) {
        let keep: Vec<String> = [
            Some(crate::version::current().to_owned()),
            launcher.current.clone(),
            launcher.previous.clone(),
        ]
        .into_iter()
        .flatten()
        .collect();
        for p in install::prune(&self.layout, &keep, download) {
            tracing::debug!(removed = %p.display(), "updates: pruned");
        }
    }

    /// Fetches `remote` into `partial`, continuing from what is already there.
    async fn download(
        &mut self,
        sftp: &RawSftpSession,
        remote: &str,
        manifest: &Manifest,
        partial: &Path,
    ) -> Result<(), Trouble> {
        // The data dir's path is a config value: the state document names its key.
        let io = |e: std::io::Error| {
            tracing::warn!(file = %partial.display(), error = %e, "updates: cannot keep the download");
            Trouble(format!("cannot keep the download in data.dir ({e})"))
        };
        tokio::fs::create_dir_all(self.layout.downloads())
            .await
            .map_err(io)?;
        let mut have = tokio::fs::metadata(partial)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        if have > manifest.size {
            tokio::fs::remove_file(partial).await.map_err(io)?;
            have = 0;
        }
        let need = manifest.size - have + SPACE_MARGIN;
        if let Some(free) = free_bytes(&self.layout.dir)
            && free < need
        {
            return Err(Trouble(format!(
                "the data partition has {} MB free; release {} needs {} MB",
                free / 1_000_000,
                manifest.version,
                need.div_ceil(1_000_000)
            )));
        }
        if have > 0 {
            tracing::info!(version = %manifest.version, from = have, of = manifest.size, "updates: resuming the download");
        } else {
            tracing::info!(version = %manifest.version, bytes = manifest.size, "updates: downloading");
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(partial)
            .await
            .map_err(io)?;
        let handle = request(sftp.open(remote, OpenFlags::READ, FileAttributes::default()))
            .await
            .map_err(|e| Trouble(format!("cannot open {remote} on the hub: {e}")))?
            .handle;
        let started = tokio::time::Instant::now();
        let at_start = have;
        let interrupted = |e: String, have: u64| {
            Trouble(format!(
                "the download of {} stopped at {}% ({e}); it resumes from there",
                manifest.version,
                have * 100 / manifest.size.max(1)
            ))
        };
        while have < manifest.size {
            let len = (manifest.size - have).min(u64::from(CHUNK)) as u32;
            let data = match request(sftp.read(handle.as_str(), have, len)).await {
                Ok(d) => d.data,
                Err(SftpFailure::Status(StatusCode::Eof, _)) => break,
                Err(e) => {
                    file.flush().await.map_err(io)?;
                    let why = if self.hub.is_up() {
                        e.to_string()
                    } else {
                        "the link to the hub went down".to_owned()
                    };
                    return Err(interrupted(why, have));
                }
            };
            if data.is_empty() {
                break;
            }
            file.write_all(&data).await.map_err(io)?;
            have += data.len() as u64;
            if self.settings.max_rate > 0 {
                let due = Duration::from_secs_f64(
                    (have - at_start) as f64 / self.settings.max_rate as f64,
                );
                tokio::time::sleep_until(started + due).await;
            }
        }
        file.sync_all().await.map_err(io)?;
        let _ = request(sftp.close(handle.as_str())).await;
        tracing::info!(version = %manifest.version, fetched = have - at_start, resumed_from = at_start, "updates: download complete");
        Ok(())
    }
}

/// An sftp request's failure, in the two kinds that matter here.
#[derive(Debug)]
enum SftpFailure {
    Status(StatusCode, String),
    Other(String),
}

impl std::fmt::Display for SftpFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SftpFailure::Status(code, msg) if msg.is_empty() => write!(f, "{code:?}"),
            SftpFailure::Status(_, msg) => f.write_str(msg),
            SftpFailure::Other(e) => f.write_str(e),
        }
    }
}

/// Bounds one sftp request (russh-sftp's own timeout counts whole seconds).
async fn request<T>(
    fut: impl std::future::Future<Output = Result<T, russh_sftp::client::error::Error>>,
) -> Result<T, SftpFailure> {
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(russh_sftp::client::error::Error::Status(s))) => {
            Err(SftpFailure::Status(s.status_code, s.error_message))
        }
        Ok(Err(e)) => Err(SftpFailure::Other(e.to_string())),
        Err(_) => Err(SftpFailure::Other(format!(
            "no answer within {REQUEST_TIMEOUT:?}"
        ))),
    }
}

/// An sftp session on the live SSH connection.
async fn open_sftp(hub: &HubChannels) -> Result<RawSftpSession, Trouble> {
    let channel = hub
        .open_subsystem("sftp", REQUEST_TIMEOUT)
        .await
        .map_err(|e| Trouble(format!("cannot reach the hub's releases: {e}")))?;
    let sftp = RawSftpSession::new(channel.into_stream());
    sftp.set_timeout(REQUEST_TIMEOUT.as_secs());
    request(sftp.init()).await.map_err(|e| {
        Trouble(format!(
            "the hub does not serve releases over sftp ({e}); its sshd needs the hub kit's `ForceCommand internal-sftp` line"
        ))
    })?;
    Ok(sftp)
}

/// A small file from the hub, or `None` when it is not there.
async fn read_small(sftp: &RawSftpSession, path: &str) -> Result<Option<Vec<u8>>, Trouble> {
    let handle = match request(sftp.open(path, OpenFlags::READ, FileAttributes::default())).await {
        Ok(h) => h.handle,
        Err(SftpFailure::Status(StatusCode::NoSuchFile, _)) => return Ok(None),
        Err(e) => return Err(Trouble(format!("cannot read {path} on the hub: {e}"))),
    };
    let mut out = Vec::new();
    loop {
        match request(sftp.read(handle.as_str(), out.len() as u64, CHUNK)).await {
            Ok(d) if d.data.is_empty() => break,
            Ok(d) => out.extend_from_slice(&d.data),
            Err(SftpFailure::Status(StatusCode::Eof, _)) => break,
            Err(e) => return Err(Trouble(format!("cannot read {path} on the hub: {e}"))),
        }
        if out.len() as u64 > SMALL_FILE_MAX {
            return Err(Trouble(format!(
                "{path} on the hub is larger than {SMALL_FILE_MAX} bytes"
            )));
        }
    }
    let _ = request(sftp.close(handle.as_str())).await;
    Ok(Some(out))
}

async fn check_file_blocking(manifest: Manifest, path: PathBuf) -> Result<(), FileCheck> {
    tokio::task::spawn_blocking(move || install::check_file(&manifest, &path))
        .await
        .unwrap_or_else(|e| Err(FileCheck::Io(e.to_string())))
}

fn free_bytes(dir: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(s.blocks_available() as u64 * s.fragment_size() as u64)
}
