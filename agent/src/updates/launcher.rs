//! The launcher: what `tether run` is when systemd (or a person) starts it. It is always
//! the factory binary (`/usr/bin/tether`, from the read-only root or the .deb), never a
//! downloaded one, and it runs the agent as its child: the factory binary itself, or an
//! installed release. It never trusts a new version to roll itself back: it gives a
//! version on trial a bounded time to prove itself, and otherwise stops it, switches
//! back and records why.
//!
//! The protocol with the child (version 1, kept by every later version):
//! - environment `TETHER_SUPERVISOR=1:<fd>`: the child runs as the agent (not as a
//!   launcher) and writes lines to that pipe: `seen tunnel=<up|down> verdict=<v>` when
//!   they change, and `proven <version>` once it has held the tunnel and a verdict no
//!   worse than `TETHER_TRIAL` for [`super::PROOF_HOLD`];
//! - environment `TETHER_TRIAL=<verdict>`: the child is on trial against that verdict;
//! - the child asks for a switch by writing `request.json` and exiting with
//!   [`SWITCH_EXIT`].
//!
//! Decisions are pure ([`plan`], [`on_proof`], [`after_run`]) and tested without
//! processes; [`main`] is the edge: files, signals, the child.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::state::{LauncherState, Layout, Outcome, SwitchRequest, Trial};
use crate::release::{Version, newer, parse_version};

/// The child's exit status that asks for a switch to the requested version.
pub const SWITCH_EXIT: u8 = 75;
/// Starts a version on trial gets before it counts as failed (power cuts included).
pub const MAX_TRIAL_STARTS: u32 = 3;
/// Abnormal exits in a row, each before reaching the hub, after which a proven installed
/// version is given up.
pub const MAX_CRASHES: u32 = 3;
/// How long a child may take to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(4);

/// The environment variable that makes `tether run` the agent, with the pipe's fd.
pub const ENV_SUPERVISOR: &str = "TETHER_SUPERVISOR";
/// The environment variable that puts the child on trial against a verdict.
pub const ENV_TRIAL: &str = "TETHER_TRIAL";

/// What to run next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// An installed version; `None`: the factory binary.
    pub version: Option<String>,
    /// Set while that version is on trial: the verdict it must match.
    pub trial: Option<String>,
}

/// Decides what to start from the launcher's record and a pending switch request, and
/// updates the record. `verify` says whether an installed version's files still verify
/// (signature, size, digest, architecture). Returns the plan and what happened, in
/// words, for the log.
pub fn plan(
    state: &mut LauncherState,
    factory: &Version,
    request: Option<&SwitchRequest>,
    verify: &dyn Fn(&str) -> Result<(), String>,
    now_unix_s: u64,
) -> (Plan, Vec<String>) {
    let mut said = Vec::new();
    if let Some(req) = request {
        match accept_request(state, factory, req, verify) {
            Ok(()) => {
                said.push(format!(
                    "switching to {} on trial (before it: {}, {})",
                    req.version,
                    state.previous.as_deref().unwrap_or("the factory version"),
                    req.baseline
                ));
                state.previous = state.current.take();
                state.current = Some(req.version.clone());
                state.trial = Some(Trial {
                    version: req.version.clone(),
                    baseline: req.baseline.clone(),
                    starts: 0,
                });
                state.crashes = 0;
            }
            Err(why) => said.push(format!(
                "the request to run {} is ignored: {why}",
                req.version
            )),
        }
    }
    // A newer package (or image) supersedes every older installed version.
    if let Some(v) = state.current.clone()
        && !parse_version(&v).is_ok_and(|v| newer(&v, factory))
    {
        said.push(format!(
            "the factory version {factory} supersedes the installed {v}"
        ));
        state.last = Some(Outcome {
            version: v,
            result: "superseded".into(),
            reason: Some(format!(
                "the installed package's version {factory} is as new or newer"
            )),
            at_unix_s: now_unix_s,
        });
        state.current = None;
        state.trial = None;
        state.crashes = 0;
    }
    if let Some(p) = state.previous.clone()
        && !parse_version(&p).is_ok_and(|p| newer(&p, factory))
    {
        state.previous = None;
    }
    // Until what is current verifies and may start (each rollback may reveal another).
    while let Some(v) = state.current.clone() {
        if let Err(why) = verify(&v) {
            let reason = format!("its files no longer verify ({why})");
            said.push(format!("{v}: {reason}; going back"));
            roll_back(state, "damaged", &reason, now_unix_s);
            continue;
        }
        match &mut state.trial {
            Some(t) if t.version == v => {
                if t.starts >= MAX_TRIAL_STARTS {
                    let reason = format!("it did not prove itself in {MAX_TRIAL_STARTS} starts");
                    said.push(format!("{v}: {reason}; going back"));
                    roll_back(state, "rolled_back", &reason, now_unix_s);
                    continue;
                }
                t.starts += 1;
            }
            Some(_) => state.trial = None,
            None => {}
        }
        break;
    }
    if state.current.is_none() {
        state.trial = None;
    }
    let plan = Plan {
        version: state.current.clone(),
        trial: state.trial.as_ref().map(|t| t.baseline.clone()),
    };
    (plan, said)
}

fn accept_request(
    state: &LauncherState,
    factory: &Version,
    req: &SwitchRequest,
    verify: &dyn Fn(&str) -> Result<(), String>,
) -> Result<(), String> {
    let v = parse_version(&req.version)?;
    if let Some(why) = state.failed_reason(&req.version) {
        return Err(format!("it failed here before ({why})"));
    }
    let running = match &state.current {
        Some(c) => parse_version(c).unwrap_or_else(|_| factory.clone()),
        None => factory.clone(),
    };
    if !newer(&v, &running) || !newer(&v, factory) {
        return Err(format!(
            "it is not newer than {running} (factory {factory})"
        ));
    }
    if crate::health::Verdict::parse(&req.baseline).is_none() {
        return Err(format!("`{}` is not a verdict", req.baseline));
    }
    verify(&req.version)
}

/// Gives up `current`: remembered as failed with `reason`, `previous` (or the factory
/// version) runs instead.
fn roll_back(state: &mut LauncherState, result: &str, reason: &str, now_unix_s: u64) {
    let Some(v) = state.current.take() else {
        return;
    };
    state.remember_failure(&v, reason);
    state.last = Some(Outcome {
        version: v,
        result: result.into(),
        reason: Some(reason.into()),
        at_unix_s: now_unix_s,
    });
    state.current = state.previous.take();
    state.trial = None;
    state.crashes = 0;
}

/// The child reported `proven <version>`. Returns whether the record changed.
pub fn on_proof(state: &mut LauncherState, plan: &Plan, reported: &str, now_unix_s: u64) -> bool {
    if plan.version.as_deref().is_some_and(|v| v != reported) {
        return false;
    }
    let before = state.clone();
    if let Some(t) = &state.trial
        && Some(&t.version) == plan.version.as_ref()
    {
        state.last = Some(Outcome {
            version: t.version.clone(),
            result: "installed".into(),
            reason: None,
            at_unix_s: now_unix_s,
        });
        state.trial = None;
    }
    state.crashes = 0;
    *state != before
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Code(i32),
    Signal(i32),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Code(c) => write!(f, "exited with status {c}"),
            Ended::Signal(s) => {
                let name = nix::sys::signal::Signal::try_from(*s)
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_else(|_| format!("signal {s}"));
                write!(f, "was killed by {name}")
            }
        }
    }
}

/// What was seen during one run of a child.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFacts {
    /// It reported `proven` for the planned version.
    pub proven: bool,
    /// The launcher was asked to stop (SIGTERM, SIGINT).
    pub stopping: bool,
    /// Its trial time ran out (it was stopped for that).
    pub timed_out: bool,
    /// A switch request is waiting.
    pub request_pending: bool,
    /// Its last `seen` report.
    pub last_seen: Option<Seen>,
}

/// A child's `seen` report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub tunnel_up: bool,
    pub verdict: String,
}

impl Seen {
    /// Parses `seen tunnel=up verdict=in_sync`.
    pub fn parse(line: &str) -> Option<Seen> {
        let rest = line.strip_prefix("seen ")?;
        let mut tunnel = None;
        let mut verdict = None;
        for part in rest.split_whitespace() {
            match part.split_once('=') {
                Some(("tunnel", t)) => tunnel = Some(t == "up"),
                Some(("verdict", v)) => verdict = Some(v.to_owned()),
                _ => {}
            }
        }
        Some(Seen {
            tunnel_up: tunnel?,
            verdict: verdict?,
        })
    }
}

/// What to do once a child has ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Plan again and start the next child now.
    Again,
    /// Exit with this status (systemd's `Restart=` decides what follows).
    Exit(u8),
}

/// Decides what follows a child's end and updates the record.
pub fn after_run(
    state: &mut LauncherState,
    plan: &Plan,
    ended: Ended,
    facts: &RunFacts,
    trial_bound: Duration,
    now_unix_s: u64,
) -> Next {
    if facts.stopping {
        return Next::Exit(0);
    }
    if let (Some(version), Some(baseline)) = (&plan.version, &plan.trial)
        && !facts.proven
    {
        let reason = if facts.timed_out {
            format!(
                "it did not prove itself within {}: {}",
                humantime::format_duration(trial_bound),
                missing(baseline, facts.last_seen.as_ref())
            )
        } else {
            format!("it {ended} before it proved itself")
        };
        let _ = version;
        roll_back(state, "rolled_back", &reason, now_unix_s);
        return Next::Again;
    }
    if facts.request_pending {
        return Next::Again;
    }
    let code = match ended {
        Ended::Code(0) => return Next::Exit(0),
        Ended::Code(c) => u8::try_from(c).unwrap_or(1),
        Ended::Signal(s) => u8::try_from(128 + s).unwrap_or(1),
    };
    if code == crate::cli::EXIT_USAGE {
        return Next::Exit(code);
    }
    if let Some(v) = &plan.version
        && !facts.proven
    {
        state.crashes += 1;
        if state.crashes >= MAX_CRASHES {
            let reason = format!(
                "it stopped {} times in a row before reaching the hub (last: it {ended})",
                state.crashes
            );
            let _ = v;
            roll_back(state, "rolled_back", &reason, now_unix_s);
            return Next::Again;
        }
    }
    Next::Exit(code)
}

/// What a version on trial was missing at its deadline, in words.
fn missing(baseline: &str, seen: Option<&Seen>) -> String {
    match seen {
        None => "it never reported its health".into(),
        Some(s) if !s.tunnel_up => "the tunnel to the hub was down".into(),
        Some(s) => format!(
            "its verdict was {} (before the update: {baseline})",
            s.verdict
        ),
    }
}

/// The launcher's view of the config: the few keys it needs, read leniently (the file may
/// be written for a newer version of the agent; the agent itself checks it strictly).
#[derive(Debug, Clone)]
pub struct LauncherConfig {
    pub data_dir: PathBuf,
    pub trial: Duration,
    pub release_key: PathBuf,
    pub log_level: String,
}

impl LauncherConfig {
    /// Reads what it can; anything unreadable keeps its default.
    pub fn load(path: &Path) -> LauncherConfig {
        let defaults = crate::config::Updates::default();
        let mut c = LauncherConfig {
            data_dir: crate::config::Data::default().dir,
            trial: defaults.trial,
            release_key: defaults.release_key,
            log_level: "info".into(),
        };
        let Ok(text) = std::fs::read_to_string(path) else {
            return c;
        };
        let Ok(doc) = text.parse::<toml::Table>() else {
            return c;
        };
        let get = |table: &str, key: &str| doc.get(table)?.get(key)?.as_str().map(str::to_owned);
        if let Some(d) = get("data", "dir") {
            c.data_dir = d.into();
        }
        if let Some(t) = get("updates", "trial").and_then(|t| humantime::parse_duration(&t).ok()) {
            c.trial = t;
        }
        if let Some(k) = get("updates", "release_key") {
            c.release_key = k.into();
        }
        if let Some(l) = get("log", "level") {
            c.log_level = l;
        }
        c
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `tether run` as started by systemd: runs the selected version as a child until told
/// to stop; returns the exit status for the service manager.
pub fn main(config_path: &Path) -> ExitCode {
    let config = LauncherConfig::load(config_path);
    crate::logging::init(&config.log_level);
    match supervise(config_path, &config) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            tracing::error!("launcher: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn supervise(config_path: &Path, config: &LauncherConfig) -> anyhow::Result<u8> {
    use anyhow::Context;
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};

    let factory = parse_version(crate::version::current()).map_err(anyhow::Error::msg)?;
    let exe = std::env::current_exe().context("cannot find the launcher's own binary")?;
    let layout = Layout::new(&config.data_dir);
    // Read when a version must be verified, not before: a box without an installed
    // release never needs them, and a config error is then the first thing said.
    let keys = std::cell::OnceCell::new();

    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        mask.add(s);
    }
    mask.thread_block().context("cannot block signals")?;
    let mut signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .context("cannot open a signalfd")?;

    loop {
        let (mut state, problem) = layout.load_state();
        if let Some(p) = problem {
            tracing::warn!("launcher: {p}; running the factory version");
        }
        let request = layout.load_request();
        let before = state.clone();
        let verify =
            |v: &str| match keys.get_or_init(|| super::load_release_keys(&config.release_key)) {
                Ok(keys) => super::install::verify_installed(&layout, v, keys),
                Err(e) => Err(e.clone()),
            };
        let (plan, said) = plan(&mut state, &factory, request.as_ref(), &verify, unix_now());
        for line in &said {
            tracing::info!("launcher: {line}");
        }
        if state != before {
            save(&layout, &state);
        }
        if request.is_some()
            && let Err(e) = layout.clear_request()
        {
            tracing::warn!("launcher: cannot remove the handled switch request: {e}");
        }
        let binary = match &plan.version {
            Some(v) => super::install::binary_path(&layout, v),
            None => exe.clone(),
        };
        let shown = plan.version.clone().unwrap_or_else(|| factory.to_string());
        let status = match &plan.trial {
            Some(b) => format!("STATUS=starting tether {shown} on trial (must reach {b})"),
            None => format!("STATUS=starting tether {shown}"),
        };
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Custom(&status)]);
        if plan.trial.is_some() {
            tracing::info!(version = %shown, trial = ?plan.trial, "launcher: starting the agent on trial");
        } else {
            tracing::debug!(version = %shown, "launcher: starting the agent");
        }
        let run = run_child(
            &binary,
            config_path,
            &plan,
            config.trial,
            &mut signals,
            &layout,
            &mut state,
        );
        let (facts, ended) = match run {
            Ok(r) => r,
            // An installed version that cannot even be started is given up; the factory
            // binary failing to start is the service's failure.
            Err(e) if plan.version.is_some() => {
                // The OS's words only: the context names a path in the data dir, and
                // the reason is shown in the state document (the log has it all).
                let reason = format!("it could not be started ({})", e.root_cause());
                tracing::warn!(version = %shown, error = %format!("{e:#}"), "launcher: {reason}; going back");
                roll_back(&mut state, "rolled_back", &reason, unix_now());
                save(&layout, &state);
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut facts = facts;
        facts.request_pending = layout.load_request().is_some();
        let before = state.clone();
        let next = after_run(&mut state, &plan, ended, &facts, config.trial, unix_now());
        if let Some(last) = &state.last
            && before.last.as_ref() != Some(last)
        {
            tracing::warn!(version = %last.version, result = %last.result, reason = ?last.reason, "launcher: update result");
        }
        if state != before {
            save(&layout, &state);
        }
        match (&next, facts.stopping) {
            (Next::Exit(0 | 2), _) | (_, true) => {
                tracing::debug!(version = %shown, %ended, ?next, "launcher: the agent ended")
            }
            _ => tracing::info!(version = %shown, %ended, ?next, "launcher: the agent ended"),
        }
        match next {
            Next::Again => continue,
            Next::Exit(code) => return Ok(code),
        }
    }
}

fn save(layout: &Layout, state: &LauncherState) {
    if let Err(e) = layout.save_state(state) {
        tracing::error!("launcher: cannot save {}: {e}", layout.state().display());
    }
}

/// Runs one child until it ends: reads its reports, enforces the trial's deadline and
/// passes a stop request on.
fn run_child(
    binary: &Path,
    config_path: &Path,
    plan: &Plan,
    trial_bound: Duration,
    signals: &mut nix::sys::signalfd::SignalFd,
    layout: &Layout,
    state: &mut LauncherState,
) -> anyhow::Result<(RunFacts, Ended)> {
    use std::io::Read;
    use std::os::fd::{AsFd, AsRawFd};
    use std::os::unix::process::{CommandExt, ExitStatusExt};

    use anyhow::Context;
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let (read_end, write_end) = nix::unistd::pipe().context("cannot make the report pipe")?;
    nix::fcntl::fcntl(
        &read_end,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    nix::fcntl::fcntl(
        &read_end,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    let mut cmd = std::process::Command::new(binary);
    cmd.arg("run")
        .arg("--config")
        .arg(config_path)
        .env(ENV_SUPERVISOR, format!("1:{}", write_end.as_raw_fd()))
        .env_remove(ENV_TRIAL);
    if let Some(baseline) = &plan.trial {
        cmd.env(ENV_TRIAL, baseline);
    }
    // SAFETY: sigemptyset, sigprocmask and prctl are async-signal-safe; nothing else
    // runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // The launcher blocks the signals it reads from its signalfd; the agent
            // handles them itself, so it starts with none blocked.
            let mut none = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(none.as_mut_ptr());
            if libc::sigprocmask(libc::SIG_SETMASK, none.as_ptr(), std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The agent goes when the launcher goes, even if the launcher is killed.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    drop(write_end);
    let pid = Pid::from_raw(child.id() as i32);
    let mut reports = std::fs::File::from(read_end);
    let mut pipe_open = true;
    let mut pending = String::new();
    let mut facts = RunFacts::default();
    let trial_deadline = plan.trial.as_ref().map(|_| Instant::now() + trial_bound);
    let mut kill_at: Option<Instant> = None;

    let ended = loop {
        if let Some(status) = child.try_wait()? {
            break match (status.code(), status.signal()) {
                (Some(c), _) => Ended::Code(c),
                (None, Some(s)) => Ended::Signal(s),
                (None, None) => Ended::Code(1),
            };
        }
        let now = Instant::now();
        if let Some(at) = kill_at
            && now >= at
        {
            let _ = kill(pid, Signal::SIGKILL);
            kill_at = None;
        }
        if let Some(deadline) = trial_deadline
            && !facts.proven
            && !facts.timed_out
            && now >= deadline
        {
            tracing::warn!(
                "launcher: the version on trial did not prove itself in time; stopping it"
            );
            facts.timed_out = true;
            let _ = kill(pid, Signal::SIGTERM);
            kill_at = Some(now + STOP_GRACE);
        }
        let wake = [
            kill_at,
            trial_deadline.filter(|_| !facts.proven && !facts.timed_out),
        ]
        .into_iter()
        .flatten()
        .min();
        let timeout = match wake {
            Some(at) => PollTimeout::try_from(
                at.saturating_duration_since(now).as_millis().min(60_000) as i32 + 1,
            )
            .unwrap_or(PollTimeout::MAX),
            None => PollTimeout::NONE,
        };
        let (sig_ready, pipe_ready) = {
            let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
            if pipe_open {
                fds.push(PollFd::new(reports.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), fds.get(1).is_some_and(ready))
        };
        if pipe_ready {
            let mut buf = [0u8; 512];
            match reports.read(&mut buf) {
                Ok(0) => pipe_open = false,
                Ok(n) => {
                    pending.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if pending.len() > 4096 && !pending.contains('\n') {
                        // Not the protocol: drop it rather than grow.
                        pending.clear();
                    }
                    while let Some(nl) = pending.find('\n') {
                        let line: String = pending.drain(..=nl).collect();
                        let line = line.trim();
                        if let Some(seen) = Seen::parse(line) {
                            facts.last_seen = Some(seen);
                        } else if let Some(v) = line.strip_prefix("proven ") {
                            let expected = plan
                                .version
                                .clone()
                                .unwrap_or_else(|| crate::version::current().to_owned());
                            if v == expected {
                                if !facts.proven {
                                    tracing::info!(
                                        version = v,
                                        "launcher: the agent proved itself"
                                    );
                                }
                                facts.proven = true;
                                if on_proof(state, plan, v, unix_now()) {
                                    save(layout, state);
                                }
                            }
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => pipe_open = false,
            }
        }
        if sig_ready {
            while let Ok(Some(info)) = signals.read_signal() {
                let signo = info.ssi_signo as i32;
                if signo == libc::SIGCHLD {
                    continue;
                }
                if !facts.stopping {
                    tracing::info!(signal = signo, "launcher: stopping the agent");
                    facts.stopping = true;
                    let _ = kill(pid, Signal::SIGTERM);
                    kill_at = Some(Instant::now() + STOP_GRACE);
                }
            }
        }
    };
    Ok((facts, ended))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        parse_version(s).unwrap()
    }

    fn ok(_: &str) -> Result<(), String> {
        Ok(())
    }

    fn request(version: &str) -> SwitchRequest {
        SwitchRequest {
            version: version.into(),
            baseline: "in_sync".into(),
            from: String::new(),
        }
    }

    const BOUND: Duration = Duration::from_secs(120);

    #[test]
    fn a_fresh_box_runs_the_factory_version() {
        let mut s = LauncherState::default();
        let (p, _) = plan(&mut s, &v("0.1.0"), None, &ok, 0);
        assert_eq!(
            p,
            Plan {
                version: None,
                trial: None
            }
        );
        assert_eq!(s, LauncherState::default());
    }

    #[test]
    fn a_request_puts_the_new_version_on_trial_and_proof_installs_it() {
        let mut s = LauncherState::default();
        let (p, _) = plan(&mut s, &v("0.1.0"), Some(&request("0.1.1")), &ok, 10);
        assert_eq!(
            p,
            Plan {
                version: Some("0.1.1".into()),
                trial: Some("in_sync".into())
            }
        );
        assert_eq!(s.previous, None);
        assert_eq!(s.trial.as_ref().unwrap().starts, 1);
        assert!(on_proof(&mut s, &p, "0.1.1", 20));
        assert_eq!(s.trial, None);
        assert_eq!(s.last.as_ref().unwrap().result, "installed");
        // Next start: no trial any more.
        let (p, _) = plan(&mut s, &v("0.1.0"), None, &ok, 30);
        assert_eq!(
            p,
            Plan {
                version: Some("0.1.1".into()),
                trial: None
            }
        );
        // A second update keeps the first as the one to go back to.
        let (p, _) = plan(&mut s, &v("0.1.0"), Some(&request("0.1.2")), &ok, 40);
        assert_eq!(p.version.as_deref(), Some("0.1.2"));
        assert_eq!(s.previous.as_deref(), Some("0.1.1"));
    }

    #[test]
    fn a_version_that_exits_before_proving_itself_is_rolled_back_at_once() {
        let mut s = LauncherState {
            current: Some("0.1.1".into()),
            ..Default::default()
        };
        let (p, _) = plan(&mut s, &v("0.1.0"), Some(&request("0.1.2")), &ok, 0);
        let next = after_run(&mut s, &p, Ended::Code(1), &RunFacts::default(), BOUND, 5);
        assert_eq!(next, Next::Again);
        assert_eq!(s.current.as_deref(), Some("0.1.1"));
        let last = s.last.clone().unwrap();
        assert_eq!(last.result, "rolled_back");
        assert_eq!(
            last.reason.as_deref(),
            Some("it exited with status 1 before it proved itself")
        );
        assert!(s.failed_reason("0.1.2").is_some());
        let (p, _) = plan(&mut s, &v("0.1.0"), None, &ok, 6);
        assert_eq!(
            p,
            Plan {
                version: Some("0.1.1".into()),
                trial: None
            }
        );
        // The failed version is not tried again.
        let (p, said) = plan(&mut s, &v("0.1.0"), Some(&request("0.1.2")), &ok, 7);
        assert_eq!(p.version.as_deref(), Some("0.1.1"));
        assert!(said[0].contains("failed here before"), "{said:?}");
    }

    #[test]
    fn a_version_that_times_out_is_rolled_back_with_what_it_lacked() {
        let mut s = LauncherState::default();
        let (p, _) = plan(&mut s, &v("0.1.0"), Some(&request("0.1.1")), &ok, 0);
        let facts = RunFacts {
            timed_out: true,
            last_seen: Seen::parse("seen tunnel=down verdict=link_down"),
            ..Default::default()
        };
        assert_eq!(
            after_run(&mut s, &p, Ended::Code(0), &facts, BOUND, 130),
            Next::Again
        );
        assert_eq!(s.current, None);
        assert_eq!(
            s.last.unwrap().reason.unwrap(),
            "it did not prove itself within 2m: the tunnel to the hub was down"
        );
        assert_eq!(
            missing(
                "in_sync",
                Seen::parse("seen tunnel=up verdict=catching_up").as_ref()
            ),
            "its verdict was catching_up (before the update: in_sync)"
        );
    }

    #[test]
    fn power_cuts_during_a_trial_count_as_starts() {
        let mut s = LauncherState::default();
        plan(&mut s, &v("0.1.0"), Some(&request("0.1.1")), &ok, 0);
        for _ in 1..MAX_TRIAL_STARTS {
            let (p, _) = plan(&mut s, &v("0.1.0"), None, &ok, 0);
            assert_eq!(p.version.as_deref(), Some("0.1.1"));
        }
        let (p, said) = plan(&mut s, &v("0.1.0"), None, &ok, 0);
        assert_eq!(
            p,
            Plan {
                version: None,
                trial: None
            }
        );
        assert!(
            said[0].contains("did not prove itself in 3 starts"),
            "{said:?}"
        );
    }

    #[test]
    fn stopping_the_service_during_a_trial_is_not_a_failure() {
        let mut s = LauncherState::default();
        let (p, _) = plan(&mut s, &v("0.1.0"), Some(&request("0.1.1")), &ok, 0);
        let facts = RunFacts {
            stopping: true,
            ..Default::default()
        };
        assert_eq!(
            after_run(&mut s, &p, Ended::Code(0), &facts, BOUND, 1),
            Next::Exit(0)
        );
        assert_eq!(s.current.as_deref(), Some("0.1.1"));
        assert!(s.trial.is_some());
    }

    #[test]
    fn a_proven_version_that_keeps_crashing_is_given_up() {
        let mut s = LauncherState {
            current: Some("0.1.2".into()),
            previous: Some("0.1.1".into()),
            ..Default::default()
        };
        let (p, _) = plan(&mut s, &v("0.1.0"), None, &ok, 0);
        for _ in 1..MAX_CRASHES {
            assert_eq!(
                after_run(
                    &mut s,
                    &p,
                    Ended::Signal(11),
                    &RunFacts::default(),
                    BOUND,
                    0
                ),
                Next::Exit(139)
            );
        }
        assert_eq!(
            after_run(
                &mut s,
                &p,
                Ended::Signal(11),
                &RunFacts::default(),
                BOUND,
                0
            ),
            Next::Again
        );
        assert_eq!(s.current.as_deref(), Some("0.1.1"));
        assert!(s.last.unwrap().reason.unwrap().contains("SIGSEGV"));
        // A run that reached the hub resets the count.
        let mut s = LauncherState {
            current: Some("0.1.2".into()),
            crashes: 2,
            ..Default::default()
        };
        let (p, _) = plan(&mut s, &v("0.1.0"), None, &ok, 0);
        assert!(on_proof(&mut s, &p, "0.1.2", 0));
        assert_eq!(s.crashes, 0);
    }

    #[test]
    fn a_switch_request_and_config_errors_are_passed_on() {
        let mut s = LauncherState::default();
        let p = Plan {
            version: None,
            trial: None,
        };
        let facts = RunFacts {
            request_pending: true,
            ..Default::default()
        };
        assert_eq!(
            after_run(
                &mut s,
                &p,
                Ended::Code(SWITCH_EXIT as i32),
                &facts,
                BOUND,
                0
            ),
            Next::Again
        );
        assert_eq!(
            after_run(&mut s, &p, Ended::Code(2), &RunFacts::default(), BOUND, 0),
            Next::Exit(2)
        );
        assert_eq!(
            after_run(&mut s, &p, Ended::Code(0), &RunFacts::default(), BOUND, 0),
            Next::Exit(0)
        );
        // A switch exit without a request is an exit like any other.
        assert_eq!(
            after_run(&mut s, &p, Ended::Code(75), &RunFacts::default(), BOUND, 0),
            Next::Exit(75)
        );
    }

    #[test]
    fn a_newer_package_supersedes_installed_versions() {
        let mut s = LauncherState {
            current: Some("0.1.2".into()),
            previous: Some("0.1.1".into()),
            ..Default::default()
        };
        let (p, said) = plan(&mut s, &v("0.2.0"), None, &ok, 0);
        assert_eq!(p.version, None);
        assert_eq!(s.previous, None);
        assert_eq!(s.last.unwrap().result, "superseded");
        assert!(said[0].contains("supersedes"), "{said:?}");
        // Requests for versions the package already beats are ignored.
        let mut s = LauncherState::default();
        let (p, _) = plan(&mut s, &v("0.2.0"), Some(&request("0.1.5")), &ok, 0);
        assert_eq!(p.version, None);
    }

    #[test]
    fn damaged_files_fall_back_to_what_still_verifies() {
        let mut s = LauncherState {
            current: Some("0.1.2".into()),
            previous: Some("0.1.1".into()),
            ..Default::default()
        };
        let broken = |v: &str| {
            if v == "0.1.2" {
                Err("digest differs".to_owned())
            } else {
                Ok(())
            }
        };
        let (p, _) = plan(&mut s, &v("0.1.0"), None, &broken, 0);
        assert_eq!(p.version.as_deref(), Some("0.1.1"));
        assert_eq!(s.last.as_ref().unwrap().result, "damaged");
        let none = |_: &str| Err::<(), _>("no key".to_owned());
        let (p, _) = plan(&mut s, &v("0.1.0"), None, &none, 0);
        assert_eq!(p.version, None);
        // A request for a version that does not verify is ignored.
        let mut s = LauncherState::default();
        let (p, said) = plan(&mut s, &v("0.1.0"), Some(&request("0.1.2")), &broken, 0);
        assert_eq!(p.version, None);
        assert!(said[0].contains("digest differs"), "{said:?}");
    }

    #[test]
    fn seen_reports_parse() {
        assert_eq!(
            Seen::parse("seen tunnel=up verdict=in_sync"),
            Some(Seen {
                tunnel_up: true,
                verdict: "in_sync".into()
            })
        );
        assert_eq!(Seen::parse("proven 0.1.1"), None);
        assert_eq!(Seen::parse("seen verdict=x"), None);
    }
}
