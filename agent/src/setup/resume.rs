//! What a stopped `tether setup` left to do. The seed can take hours over the office's
//! line, and the person's terminal (or their own connection to the box) may go long
//! before it ends; the copy goes on in the agent. `setup.json` in the data dir says that
//! a setup handed a copy to the agent and how far it got after it, so running `tether
//! setup` again goes on from there instead of refusing the office's (partly) copied rows
//! or, worse, pointing a replica that already ran at a new position.
//!
//! One writer: the `tether setup` command. It holds no secret (the replication passwords
//! are made again when a setup goes on: nothing replicates with them yet).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::events::Direction;
use crate::seed::job::Job;

pub const FILE_NAME: &str = "setup.json";

/// How far after handing the copy to the agent a setup got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// The copy is the agent's (or is being handed to it).
    Copy,
    /// Each replica's start position is set (the one the copy filled by the copy, the
    /// other by the setup); neither replica was started by the setup yet.
    Positioned,
    /// Both replicas are configured and started: only in_sync is awaited.
    Configured,
}

/// The setup's record in the data dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The seed job it handed to the agent; `None` for the moment before the job exists.
    pub job: Option<String>,
    pub created_unix: u64,
    pub direction: Direction,
    /// On a hub with several offices: where the hub's new connection starts reading this
    /// office, taken before the office's agent first logged in with its new account.
    pub office_start: Option<String>,
    pub step: Step,
}

impl Pending {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE_NAME)
    }

    pub fn load(data_dir: &Path) -> Result<Option<Pending>, String> {
        crate::journal::read_json(&Pending::path(data_dir), "a setup record")
            .map_err(|e| format!("{e}; remove it to start the setup afresh"))
    }

    /// Written atomically, owned like the data dir (the command may run as root).
    pub fn save(&self, data_dir: &Path) -> Result<(), String> {
        crate::journal::write_json_owned(data_dir, &Pending::path(data_dir), self)
    }

    pub fn clear(data_dir: &Path) -> Result<(), String> {
        let path = Pending::path(data_dir);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
        }
    }
}

pub const LOCK_NAME: &str = "setup.lock";

/// The box's one running setup: an exclusive lock on `setup.lock` in the data dir, held
/// while the returned file is (the kernel lets it go with the process, however it ends).
pub fn only_one(data_dir: &Path) -> Result<std::fs::File, String> {
    let path = data_dir.join(LOCK_NAME);
    // Owned like the data dir, as the other files there, so a setup run as the service's
    // user after one run as root can open it too; a lock needs no write access.
    let file = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
    {
        Ok(f) => {
            if let Ok(meta) = std::fs::metadata(data_dir) {
                use std::os::unix::fs::MetadataExt;
                let _ = std::os::unix::fs::chown(&path, Some(meta.uid()), Some(meta.gid()));
            }
            f
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => std::fs::File::open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?,
        Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
    };
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "Another `tether setup` is running on this box (it holds {}). Let it finish, or end it (Ctrl-C in its terminal) and run this again: the setup goes on where it was. Nothing was changed.",
            path.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

/// What a new run of the setup does with what an earlier one left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Earlier {
    /// Nothing left: the setup starts afresh.
    Nothing,
    /// A record that no longer matches the seed job (the copy was cancelled or never
    /// handed over, or another seed was started since): it goes, and the setup starts
    /// afresh.
    Stale,
    /// The earlier setup's copy ended in failure: said, and the record goes so the next
    /// run starts afresh.
    Failed { message: String },
    /// The earlier setup goes on from its step with this job (running or done).
    GoOn(Pending),
}

/// Judges the setup record against the seed job in the data dir.
pub fn judge(pending: Option<Pending>, job: Option<&Job>) -> Earlier {
    let Some(pending) = pending else {
        return Earlier::Nothing;
    };
    let Some(job) = job else {
        return Earlier::Stale;
    };
    let same_job = match &pending.job {
        Some(id) => *id == job.id,
        // Handed over at the moment the setup stopped: the job made after the record.
        None => job.created_unix >= pending.created_unix,
    };
    if !same_job || job.direction != pending.direction {
        return Earlier::Stale;
    }
    match &job.outcome {
        Some(outcome) if !outcome.ok => Earlier::Failed {
            message: outcome.message.clone(),
        },
        _ => Earlier::GoOn(Pending {
            job: Some(job.id.clone()),
            ..pending
        }),
    }
}

/// What is left, in words, for the person running the setup again.
pub fn describe(pending: &Pending, job: &Job) -> String {
    let copy = format!(
        "the {}'s copy of the {}'s data (seed {})",
        pending.direction.replica_side(),
        pending.direction.source_side(),
        job.id
    );
    match (pending.step, job.active()) {
        (Step::Copy, true) => format!(
            "An earlier `tether setup` stopped while {copy} was under way; the copy went on in the agent. The setup goes on from there: it waits for the copy, then starts replication both ways (with new replication passwords; the agent's stay)."
        ),
        (Step::Copy, false) => format!(
            "An earlier `tether setup` stopped after {copy}, which has finished. The setup goes on from there: it starts replication both ways (with new replication passwords; the agent's stay)."
        ),
        (Step::Positioned, _) => format!(
            "An earlier `tether setup` stopped after {copy} finished, while it was starting replication. The setup goes on from there: it configures both replicas at the positions already set (with new replication passwords)."
        ),
        (Step::Configured, _) => "An earlier `tether setup` stopped after starting replication both ways; it goes on waiting for in_sync.".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::job::Outcome;

    fn job(id: &str, created: u64, direction: Direction, outcome: Option<Outcome>) -> Job {
        let mut j: Job = serde_json::from_value(serde_json::json!({
            "id": id,
            "created_unix": created,
            "family": "mariadb",
            "direction": direction,
            "hub": {"user": "s", "password": null},
            "office": {"user": "s", "password": null},
            "tables": [],
            "triggers": [],
            "target_replica_before": "",
            "estimated_wire_bytes": 0,
            "workers": 3,
            "max_chunk_text": 65536,
            "outcome": null
        }))
        .unwrap();
        j.outcome = outcome;
        j
    }

    fn pending(job: Option<&str>, created: u64, step: Step) -> Pending {
        Pending {
            job: job.map(str::to_owned),
            created_unix: created,
            direction: Direction::HubToOffice,
            office_start: Some("0-2-5".into()),
            step,
        }
    }

    #[test]
    fn no_record_is_a_fresh_setup_whatever_the_job() {
        let j = job("a", 10, Direction::HubToOffice, None);
        assert_eq!(judge(None, Some(&j)), Earlier::Nothing);
        assert_eq!(judge(None, None), Earlier::Nothing);
    }

    #[test]
    fn the_record_goes_on_with_its_own_job_running_or_done() {
        let p = pending(Some("a"), 10, Step::Copy);
        let running = job("a", 10, Direction::HubToOffice, None);
        assert_eq!(
            judge(Some(p.clone()), Some(&running)),
            Earlier::GoOn(p.clone())
        );
        let done = job(
            "a",
            10,
            Direction::HubToOffice,
            Some(Outcome {
                ok: true,
                message: "equal".into(),
                finished_unix: 20,
            }),
        );
        let later = Pending {
            step: Step::Positioned,
            ..p
        };
        assert_eq!(
            judge(Some(later.clone()), Some(&done)),
            Earlier::GoOn(later)
        );
    }

    #[test]
    fn a_job_handed_over_as_the_setup_stopped_is_adopted_only_if_made_after_the_record() {
        let p = pending(None, 10, Step::Copy);
        let after = job("b", 11, Direction::HubToOffice, None);
        match judge(Some(p.clone()), Some(&after)) {
            Earlier::GoOn(q) => assert_eq!(q.job.as_deref(), Some("b")),
            other => panic!("{other:?}"),
        }
        let before = job("c", 9, Direction::HubToOffice, None);
        assert_eq!(judge(Some(p), Some(&before)), Earlier::Stale);
    }

    #[test]
    fn another_job_another_direction_or_none_make_the_record_stale() {
        let p = pending(Some("a"), 10, Step::Copy);
        assert_eq!(judge(Some(p.clone()), None), Earlier::Stale);
        let other = job("b", 11, Direction::HubToOffice, None);
        assert_eq!(judge(Some(p.clone()), Some(&other)), Earlier::Stale);
        let reverse = job("a", 10, Direction::OfficeToHub, None);
        assert_eq!(judge(Some(p), Some(&reverse)), Earlier::Stale);
    }

    #[test]
    fn a_failed_copy_is_said_and_not_gone_on_with() {
        let p = pending(Some("a"), 10, Step::Copy);
        let failed = job(
            "a",
            10,
            Direction::HubToOffice,
            Some(Outcome {
                ok: false,
                message: "the hub purged its binary logs".into(),
                finished_unix: 20,
            }),
        );
        assert_eq!(
            judge(Some(p), Some(&failed)),
            Earlier::Failed {
                message: "the hub purged its binary logs".into()
            }
        );
    }

    #[test]
    fn one_setup_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let held = only_one(dir.path()).unwrap();
        let second = only_one(dir.path()).unwrap_err();
        assert!(
            second.contains("Another `tether setup` is running"),
            "{second}"
        );
        drop(held);
        only_one(dir.path()).unwrap();
    }

    #[test]
    fn the_record_holds_no_password_and_reads_back() {
        let p = pending(Some("a"), 10, Step::Positioned);
        let text = serde_json::to_string(&p).unwrap();
        assert!(text.contains("\"step\":\"positioned\""), "{text}");
        assert!(!text.to_lowercase().contains("password"), "{text}");
        assert_eq!(serde_json::from_str::<Pending>(&text).unwrap(), p);
    }
}
