//! Signed updates through the hub, installed atomically, with automatic rollback.
//!
//! - [`launcher`]: what `tether run` is: the factory binary, running the selected version
//!   as its child and enforcing a new version's trial.
//! - [`check`]: the agent's update task: reads the hub's rollout and releases over the
//!   live SSH session (the `sftp` subsystem), downloads with resume, verifies, installs
//!   and asks the launcher to switch.
//! - [`proof`]: how a running agent tells its launcher it has proved itself.
//! - [`install`], [`state`]: the files in the data dir and who writes them.
//!
//! See ARCHITECTURE.md ("Updates") for the design and its reasons.

pub mod check;
pub mod install;
pub mod launcher;
pub mod proof;
pub mod state;

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use russh::keys::PublicKey;
use serde::{Deserialize, Serialize};

pub use check::{UpdateSettings, run as run_updates};
pub use state::Layout;

/// How long a version must hold the tunnel and its verdict before it counts as proven.
pub const PROOF_HOLD: Duration = Duration::from_secs(10);

/// The update block of the state document (`tether status`, MQTT, the status page).
/// Changes only when something happens, so it adds nothing periodic to MQTT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    /// `off`, `idle`, `downloading`, `installing`, `restarting` (into the new version) or
    /// `on_trial` (this version is proving itself).
    pub state: String,
    /// The version the hub's rollout gives this site, once a check has read it.
    pub target: Option<String>,
    /// The last update's result: `installed`, `rolled_back`, `refused`, `superseded` or
    /// `damaged`.
    pub last_result: Option<String>,
    /// The version that result is about.
    pub last_version: Option<String>,
    /// What stands in the way now, in words (a refusal's reason, a rollback's, a failed
    /// check); `null` when nothing does.
    pub error: Option<String>,
}

impl UpdateStatus {
    pub fn new(state: &str) -> Self {
        UpdateStatus {
            state: state.into(),
            target: None,
            last_result: None,
            last_version: None,
            error: None,
        }
    }

    /// An idle status reporting the launcher's record of the last update: its reason is
    /// the error unless it was installed.
    pub fn after(last: Option<&state::Outcome>) -> Self {
        let mut status = UpdateStatus::new("idle");
        if let Some(last) = last {
            status.last_result = Some(last.result.clone());
            status.last_version = Some(last.version.clone());
            if last.result != "installed" {
                status.error = last.reason.clone();
            }
        }
        status
    }
}

/// A last update's result (`UpdateStatus::last_result`) in words for people: `tether
/// status` and the status page both say it this way.
pub fn result_words(result: &str) -> &str {
    match result {
        "rolled_back" => "rolled back",
        "superseded" => "replaced by the installed package",
        "damaged" => "set aside (its files no longer verify)",
        other => other,
    }
}

/// The launcher's pipe and trial, as the child finds them in its environment.
#[derive(Debug)]
pub struct Supervised {
    /// Where `seen` and `proven` lines go.
    pub reports: std::fs::File,
    /// Set when this run is a trial: the verdict to match.
    pub trial: Option<crate::health::Verdict>,
}

impl Supervised {
    /// Takes the launcher's pipe from the environment (`TETHER_SUPERVISOR=1:<fd>`). Call
    /// once per process: the fd is owned from then on.
    pub fn from_env() -> Option<Supervised> {
        let value = std::env::var(launcher::ENV_SUPERVISOR).ok()?;
        let fd: i32 = value.strip_prefix("1:")?.parse().ok()?;
        if fd < 3 {
            return None;
        }
        // The fd must be open and a pipe (not some other file that took its number).
        let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat only writes the buffer; an fd that is not open gives EBADF.
        if unsafe { libc::fstat(fd, stat.as_mut_ptr()) } != 0 {
            return None;
        }
        // SAFETY: fstat succeeded, so it filled the buffer.
        let stat = unsafe { stat.assume_init() };
        if stat.st_mode & libc::S_IFMT != libc::S_IFIFO {
            return None;
        }
        // SAFETY: the launcher passed this fd to us for our own use; it is open (checked
        // above) and nothing else in this process owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let _ = nix::fcntl::fcntl(
            &owned,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        let trial = std::env::var(launcher::ENV_TRIAL)
            .ok()
            .and_then(|v| crate::health::Verdict::parse(&v));
        Some(Supervised {
            reports: std::fs::File::from(owned),
            trial,
        })
    }
}

/// The trusted release keys from the file `updates.release_key` names (see
/// [`crate::release::parse_release_keys`]). Shared by the launcher and the update task.
/// An error names the config key, not the path: it reaches the state document's `update`
/// block, which carries no config values; the log has the path.
pub fn load_release_keys(path: &std::path::Path) -> Result<Vec<PublicKey>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        tracing::warn!(path = %path.display(), error = %e, "updates: cannot read the release keys");
        format!("cannot read updates.release_key ({e})")
    })?;
    crate::release::parse_release_keys(&text).map_err(|e| format!("updates.release_key, {e}"))
}

/// Whether the agent that just stopped asked for a switch (then `tether run` exits with
/// [`launcher::SWITCH_EXIT`]).
pub fn switch_requested(data_dir: &std::path::Path) -> bool {
    Layout::new(data_dir).load_request().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(update: &UpdateStatus) -> serde_json::Value {
        serde_json::json!({
            "agent": {"version": "0.2.1"},
            "update": update,
        })
    }

    #[test]
    fn status_words_say_what_the_last_update_did() {
        let mut u = UpdateStatus::new("idle");
        u.last_result = Some("rolled_back".into());
        u.last_version = Some("0.2.2".into());
        u.error = Some("it exited with status 1 before it proved itself".into());
        let words = crate::status::words::describe_update(&doc(&u));
        assert_eq!(
            words,
            "Software: tether 0.2.1\nLast update: 0.2.2 rolled back\n  \
             Update: it exited with status 1 before it proved itself\n"
        );
        u.state = "on_trial".into();
        assert!(
            crate::status::words::describe_update(&doc(&u))
                .starts_with("Software: tether 0.2.1 (new; proving itself before it is kept)\n")
        );
        let quiet = crate::status::words::describe_update(&doc(&UpdateStatus::new("idle")));
        assert_eq!(quiet, "Software: tether 0.2.1\n");
    }

    #[cfg(feature = "web")]
    #[test]
    fn the_status_page_line_says_the_same() {
        let mut u = UpdateStatus::new("downloading");
        u.target = Some("0.2.3".into());
        let line = crate::web::page::software_words(Some(&u));
        assert_eq!(
            line,
            format!("tether {}, downloading 0.2.3", crate::version::current())
        );
        u.state = "idle".into();
        u.last_result = Some("refused".into());
        u.last_version = Some("0.2.3".into());
        u.error = Some("release 0.2.3 refused: no downgrades".into());
        assert!(
            crate::web::page::software_words(Some(&u))
                .ends_with("; last update: 0.2.3 refused (release 0.2.3 refused: no downgrades)")
        );
    }

    #[test]
    fn the_update_block_round_trips_through_the_state_document() {
        let mut u = UpdateStatus::new("restarting");
        u.target = Some("1.0.0".into());
        let v = serde_json::to_value(&u).unwrap();
        assert_eq!(v["state"], "restarting");
        assert!(v["error"].is_null());
        assert_eq!(serde_json::from_value::<UpdateStatus>(v).unwrap(), u);
    }
}
