//! A seed job as it is kept: the plan in `seed.job` in the data dir (mode 0600: it holds
//! the seeding accounts' generated passwords, never an administrator's), and the progress
//! in two tables in the agent's own schema on the side being filled (the target: the
//! office, or a new hub), written in the same transaction as the rows they describe, so a
//! kill at any moment leaves data and progress agreeing.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::dialect::Family;
use super::sql::{TablePlan, ident};
pub use crate::events::Direction;
use crate::secret::Secret;

/// The job file's name in the data dir.
pub const FILE_NAME: &str = "seed.job";

/// The progress tables, in the target's agent schema (`office_db.database` or
/// `hub_db.database`).
pub const JOB_TABLE: &str = "seed_job";
pub const PROGRESS_TABLE: &str = "seed_progress";

/// A dedicated account the seed uses on one side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Login {
    pub user: String,
    /// Generated for this job; forgotten (set to `None`) once the job has ended.
    pub password: Option<Secret>,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub ok: bool,
    /// One sentence for people: the summary, or what went wrong and what to do.
    pub message: String,
    pub finished_unix: u64,
}

/// Everything the agent needs to run (or resume) a seed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// Unique per job; progress rows of other jobs are ignored.
    pub id: String,
    pub created_unix: u64,
    pub family: Family,
    /// Which way the copy goes: the office from the hub (the usual first copy), or a new,
    /// empty hub from the office.
    #[serde(default = "hub_to_office")]
    pub direction: Direction,
    pub hub: Login,
    pub office: Login,
    pub tables: Vec<TablePlan>,
    /// `CREATE OR REPLACE TRIGGER` statements, run on the target once the data is in
    /// (a trigger there would fire on every copied row).
    pub triggers: Vec<String>,
    /// The target replica's position before the seed, to tell after a restart whether
    /// the seed already moved it.
    #[serde(alias = "office_replica_before")]
    pub target_replica_before: String,
    /// Estimated compressed bytes of the whole copy (from the link sample at the start):
    /// chunks are kept to a small share of it, so a cut loses little.
    pub estimated_wire_bytes: u64,
    /// Parallel chunk readers: while one waits for the hub's answer (a round trip on a
    /// slow line), another's data is crossing.
    pub workers: u32,
    /// Largest chunk, in bytes of row text (below both servers' max_allowed_packet).
    pub max_chunk_text: u64,
    pub outcome: Option<Outcome>,
}

fn hub_to_office() -> Direction {
    Direction::HubToOffice
}

impl Job {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE_NAME)
    }

    /// Reads the job in `data_dir`, if there is one.
    pub fn load(data_dir: &Path) -> Result<Option<Job>, String> {
        crate::journal::read_json(&Job::path(data_dir), "a seed job")
    }

    /// Writes the job atomically with mode 0600, owned like the data dir (the command may
    /// run as root; the agent runs as its own user).
    pub fn save(&self, data_dir: &Path) -> Result<(), String> {
        crate::journal::write_json_owned(data_dir, &Job::path(data_dir), self)
    }

    /// Whether the job still has work to do.
    pub fn active(&self) -> bool {
        self.outcome.is_none()
    }

    /// Marks the job ended and forgets the seeding passwords.
    pub fn end(&mut self, ok: bool, message: String, now_unix: u64) {
        self.hub.password = None;
        self.office.password = None;
        self.outcome = Some(Outcome {
            ok,
            message,
            finished_unix: now_unix,
        });
    }
}

/// The progress tables, created on the target (without binary logging) by the command
/// that starts a seed.
pub fn progress_tables_sql(schema: &str) -> Vec<String> {
    let s = ident(schema);
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {s}.{JOB_TABLE} (\
               job VARCHAR(64) NOT NULL PRIMARY KEY, \
               phase VARCHAR(16) NOT NULL, \
               rows_total BIGINT NOT NULL DEFAULT 0, \
               gtid TEXT NULL, \
               verify_passes INT NOT NULL DEFAULT 0, \
               verify_bytes BIGINT NOT NULL DEFAULT 0, \
               verify_rows BIGINT NOT NULL DEFAULT 0, \
               verify_ms BIGINT NOT NULL DEFAULT 0, \
               copy_ms BIGINT NOT NULL DEFAULT 0, \
               detail TEXT NULL\
             ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {s}.{PROGRESS_TABLE} (\
               job VARCHAR(64) NOT NULL, \
               tbl INT NOT NULL, \
               seg INT NOT NULL, \
               lo MEDIUMTEXT NULL, \
               hi MEDIUMTEXT NULL, \
               last_key MEDIUMTEXT NULL, \
               rows_total BIGINT NOT NULL DEFAULT 0, \
               rows_done BIGINT NOT NULL DEFAULT 0, \
               text_bytes BIGINT NOT NULL DEFAULT 0, \
               wire_bytes BIGINT NOT NULL DEFAULT 0, \
               chunks INT NOT NULL DEFAULT 0, \
               resent_bytes BIGINT NOT NULL DEFAULT 0, \
               resent_chunks INT NOT NULL DEFAULT 0, \
               pending_rows BIGINT NOT NULL DEFAULT 0, \
               done TINYINT NOT NULL DEFAULT 0, \
               PRIMARY KEY (job, tbl, seg)\
             ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        ),
    ]
}

/// A job's phase as kept in the target's job table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Counting rows and cutting tables into segments.
    Plan,
    /// Copying chunks.
    Copy,
    /// Comparing the target with one final snapshot of the source and repairing
    /// differences.
    Verify,
    /// Equal to the final snapshot; replication being pointed at it.
    Finishing,
    Done,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Plan => "plan",
            Phase::Copy => "copy",
            Phase::Verify => "verify",
            Phase::Finishing => "finishing",
            Phase::Done => "done",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        [
            Phase::Plan,
            Phase::Copy,
            Phase::Verify,
            Phase::Finishing,
            Phase::Done,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn job() -> Job {
        Job {
            id: "j1".into(),
            created_unix: 1,
            family: Family::MariaDb,
            direction: Direction::HubToOffice,
            hub: Login {
                user: "tether_seed".into(),
                password: Some(Secret::new("hub-secret")),
            },
            office: Login {
                user: "tether_seed".into(),
                password: Some(Secret::new("office-secret")),
            },
            tables: Vec::new(),
            triggers: Vec::new(),
            target_replica_before: String::new(),
            estimated_wire_bytes: 0,
            workers: 3,
            max_chunk_text: 1 << 20,
            outcome: None,
        }
    }

    #[test]
    fn the_job_file_is_private_and_forgets_its_passwords_when_ended() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = job();
        j.save(dir.path()).unwrap();
        let mode = std::fs::metadata(Job::path(dir.path()))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(Job::load(dir.path()).unwrap(), Some(j.clone()));
        j.end(true, "done".into(), 2);
        j.save(dir.path()).unwrap();
        let text = std::fs::read_to_string(Job::path(dir.path())).unwrap();
        assert!(!text.contains("secret"), "{text}");
        assert!(!Job::load(dir.path()).unwrap().unwrap().active());
        assert_eq!(Job::load(&dir.path().join("none")).unwrap(), None);
    }

    /// A job file written before seeds had a direction is the office's copy of the hub.
    #[test]
    fn a_job_without_a_direction_copies_the_hub_to_the_office() {
        let mut value = serde_json::to_value(job()).unwrap();
        let fields = value.as_object_mut().unwrap();
        fields.remove("direction");
        let before = fields.remove("target_replica_before").unwrap();
        fields.insert("office_replica_before".into(), before);
        let old: Job = serde_json::from_value(value).unwrap();
        assert_eq!(old, job());
    }

    #[test]
    fn phases_round_trip() {
        for p in [
            Phase::Plan,
            Phase::Copy,
            Phase::Verify,
            Phase::Finishing,
            Phase::Done,
        ] {
            assert_eq!(Phase::parse(p.as_str()), Some(p));
        }
    }
}
