//! The files of the update machinery in the data dir, and who writes each: the launcher
//! alone writes `state.json` (which version runs, the trial, the last result); the agent
//! alone writes `request.json` (switch to this installed version) and the releases under
//! `versions/`. One writer per file, each write atomic, so a power cut at any moment
//! leaves every file old or new.
//!
//! These files are read by other versions of tether than the one that wrote them (a
//! factory launcher reads what a newer agent wrote, and the other way round): fields are
//! only ever added, and a reader ignores the ones it does not know.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::release::Version;

/// Where everything lives: `<data.dir>/updates/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(data_dir: &Path) -> Layout {
        Layout {
            dir: data_dir.join("updates"),
        }
    }

    /// The launcher's record ([`LauncherState`]).
    pub fn state(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// The agent's request to switch ([`SwitchRequest`]).
    pub fn request(&self) -> PathBuf {
        self.dir.join("request.json")
    }

    /// Installed releases, one directory each.
    pub fn versions(&self) -> PathBuf {
        self.dir.join("versions")
    }

    pub fn version_dir(&self, v: &Version) -> PathBuf {
        self.versions().join(v.to_string())
    }

    /// Downloads in progress (`<version>-<arch>-<digest>.partial`).
    pub fn downloads(&self) -> PathBuf {
        self.dir.join("downloads")
    }

    /// Reads the launcher's record. A missing file is a box that never updated; an
    /// unreadable one is reported and treated the same (the factory version runs).
    pub fn load_state(&self) -> (LauncherState, Option<String>) {
        match std::fs::read(self.state()) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(s) => (s, None),
                Err(e) => (
                    LauncherState::default(),
                    Some(format!("{} is unreadable ({e})", self.state().display())),
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (LauncherState::default(), None),
            Err(e) => (
                LauncherState::default(),
                Some(format!("cannot read {}: {e}", self.state().display())),
            ),
        }
    }

    /// Saves the launcher's record (the launcher only).
    pub fn save_state(&self, state: &LauncherState) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let text = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
        crate::journal::write_atomic(&self.state(), &text, None)
    }

    /// The pending switch request, if any (an unreadable one is none).
    pub fn load_request(&self) -> Option<SwitchRequest> {
        let bytes = std::fs::read(self.request()).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Asks the launcher to switch (the agent only).
    pub fn save_request(&self, request: &SwitchRequest) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let text = serde_json::to_vec_pretty(request).map_err(std::io::Error::other)?;
        crate::journal::write_atomic(&self.request(), &text, None)
    }

    /// Removes a handled request (the launcher, after saving its record).
    pub fn clear_request(&self) -> std::io::Result<()> {
        match std::fs::remove_file(self.request()) {
            Ok(()) => crate::journal::sync_dir_of(&self.request()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// What the launcher remembers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LauncherState {
    /// The installed version that runs; `None`: the factory binary.
    #[serde(default)]
    pub current: Option<String>,
    /// What runs if `current` fails; `None`: the factory binary.
    #[serde(default)]
    pub previous: Option<String>,
    /// `current` is on trial: it has not proved itself yet.
    #[serde(default)]
    pub trial: Option<Trial>,
    /// Abnormal exits of a proven `current` in a row, each before it reached the hub.
    #[serde(default)]
    pub crashes: u32,
    /// The last update's result.
    #[serde(default)]
    pub last: Option<Outcome>,
    /// Versions that failed on this box (newest last): never tried again.
    #[serde(default)]
    pub failed: Vec<Failure>,
}

/// A version proving itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    pub version: String,
    /// The verdict before the switch: the new version must do at least as well.
    pub baseline: String,
    /// Starts so far (a power cut during the trial is a start too).
    #[serde(default)]
    pub starts: u32,
}

/// The result of an update, for `tether status`, MQTT and the status page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub version: String,
    /// `installed`, `rolled_back`, `superseded` (a newer package replaced it) or
    /// `damaged` (its files no longer verify).
    pub result: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub at_unix_s: u64,
}

/// A version that failed here, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub version: String,
    pub reason: String,
}

/// How many failed versions are remembered.
pub const FAILED_KEPT: usize = 16;

impl LauncherState {
    /// Why `version` failed here before, if it did.
    pub fn failed_reason(&self, version: &str) -> Option<&str> {
        self.failed
            .iter()
            .rev()
            .find(|f| f.version == version)
            .map(|f| f.reason.as_str())
    }

    /// Remembers a failure (the oldest ones are forgotten).
    pub fn remember_failure(&mut self, version: &str, reason: &str) {
        self.failed.retain(|f| f.version != version);
        self.failed.push(Failure {
            version: version.to_owned(),
            reason: reason.to_owned(),
        });
        let excess = self.failed.len().saturating_sub(FAILED_KEPT);
        self.failed.drain(..excess);
    }
}

/// The agent's request: run this installed version, on trial against this verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchRequest {
    pub version: String,
    /// The verdict when the switch was asked for.
    pub baseline: String,
    /// The version that asked (it becomes `previous`).
    #[serde(default)]
    pub from: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_ignores_keys_it_does_not_know() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(dir.path());
        assert_eq!(l.load_state(), (LauncherState::default(), None));
        let mut s = LauncherState {
            current: Some("0.2.0".into()),
            trial: Some(Trial {
                version: "0.2.0".into(),
                baseline: "in_sync".into(),
                starts: 1,
            }),
            ..Default::default()
        };
        s.remember_failure("0.1.9", "exited at start");
        l.save_state(&s).unwrap();
        assert_eq!(l.load_state(), (s.clone(), None));
        let later = r#"{"current":"0.2.0","a_later_field":{"x":1},"failed":[]}"#;
        std::fs::write(l.state(), later).unwrap();
        assert_eq!(l.load_state().0.current.as_deref(), Some("0.2.0"));
        std::fs::write(l.state(), "{not json").unwrap();
        let (fresh, problem) = l.load_state();
        assert_eq!(fresh, LauncherState::default());
        assert!(problem.unwrap().contains("unreadable"));
    }

    #[test]
    fn failures_are_remembered_newest_last_and_bounded() {
        let mut s = LauncherState::default();
        for i in 0..20 {
            s.remember_failure(&format!("0.{i}.0"), "why");
        }
        s.remember_failure("0.5.0", "again");
        assert_eq!(s.failed.len(), FAILED_KEPT);
        assert_eq!(s.failed_reason("0.5.0"), Some("again"));
        assert_eq!(s.failed_reason("0.1.0"), None);
    }

    #[test]
    fn requests_are_written_read_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(dir.path());
        assert_eq!(l.load_request(), None);
        let r = SwitchRequest {
            version: "0.2.0".into(),
            baseline: "in_sync".into(),
            from: "0.1.0".into(),
        };
        l.save_request(&r).unwrap();
        assert_eq!(l.load_request(), Some(r));
        l.clear_request().unwrap();
        l.clear_request().unwrap();
        assert_eq!(l.load_request(), None);
    }
}
