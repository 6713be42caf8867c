//! The seed: the office's first copy of the hub's data, over the slow, flaky line (or,
//! for a new and empty hub, the hub's first copy of the office's data: the same job with
//! the roles swapped, `job::Job::direction`).
//!
//! `tether seed` (module `command`) checks both servers (`preflight`), creates two
//! narrowly granted seeding accounts with generated passwords and writes the job
//! (`job::Job`, in the data dir). The agent runs the job as one of its edge tasks
//! (`run` here), so it survives a dropped terminal and resumes after a restart by itself:
//! a plan (row counts and segments, in one snapshot), parallel chunk copies by primary
//! key (each chunk compressed on the hub, written on the office without binary logging
//! in one transaction with its progress), a verification against one final snapshot
//! that leaves the office exactly equal to it (`verify`), and the office's replica
//! started at that snapshot's position. Progress goes to health as one event kind and,
//! in detail, to `seed.sock` beside the status socket, which `tether seed` draws as a
//! progress bar.

pub mod command;
pub mod dialect;
pub mod job;
pub mod preflight;
pub mod progress;
mod run;
pub mod sql;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::events::{Event, SeedReport, Seeding};
use crate::replication::{DbTarget, LinkState};
use job::{Direction, Job, Phase};
use run::{Failure, Live, Shared};

/// How often the job file is looked at for a new or cancelled job.
const POLL: Duration = Duration::from_secs(2);
/// How often progress is published.
const PUBLISH: Duration = Duration::from_millis(500);

/// Where and how the seed task reaches things.
#[derive(Debug, Clone)]
pub struct SeedSettings {
    pub data_dir: PathBuf,
    /// The detailed progress socket.
    pub socket: PathBuf,
    /// The hub database through the tunnel's local forward.
    pub hub_host: String,
    pub hub_port: u16,
    /// The agent's own schema on each side.
    pub hub_schema: String,
    pub office_host: String,
    pub office_port: u16,
    pub office_schema: String,
    pub timeout: Duration,
}

impl SeedSettings {
    pub fn from_config(config: &Config) -> Self {
        SeedSettings {
            data_dir: config.data.dir.clone(),
            socket: socket_path(&config.status.socket),
            hub_host: config.forwards.local_listen.host.clone(),
            hub_port: config.forwards.local_listen.port,
            hub_schema: config.hub_db.database.clone(),
            office_host: config.office_db.host.clone(),
            office_port: config.office_db.port,
            office_schema: config.office_db.database.clone(),
            timeout: config
                .replication
                .query_timeout
                .max(Duration::from_secs(10)),
        }
    }
}

/// The detailed progress socket: `seed.sock` beside the status socket.
pub fn socket_path(status_socket: &Path) -> PathBuf {
    status_socket.with_file_name("seed.sock")
}

/// Wires the seed task into the agent (called by `app` before the replication pollers
/// start): reports a pending job to health at once, so the office's stopped replication
/// from the hub never shows as a fault, then serves progress and runs jobs until
/// shutdown.
pub fn spawn(
    config: &Config,
    tasks: &mut tokio::task::JoinSet<()>,
    events: &mpsc::Sender<Event>,
    link: watch::Receiver<LinkState>,
    shutdown: CancellationToken,
) {
    let settings = SeedSettings::from_config(config);
    let first = match Job::load(&settings.data_dir) {
        Ok(Some(job)) => report_of_ended(&job),
        Ok(None) => None,
        Err(e) => Some(unknown_job(SeedReport::Failed(unreadable(&e)))),
    };
    if first.is_some() {
        let _ = events.try_send(Event::Seed(first));
    }
    let (doc_tx, doc_rx) = watch::channel(idle_doc());
    match crate::status::bind(&settings.socket) {
        Ok(listener) => {
            tasks.spawn(crate::status::serve(
                listener,
                settings.socket.clone(),
                doc_rx,
                shutdown.clone(),
            ));
        }
        Err(e) => {
            tracing::warn!(socket = %settings.socket.display(), error = %e, "seed: cannot open the progress socket")
        }
    }
    tasks.spawn(run(settings, link, events.clone(), doc_tx, shutdown));
}

fn unreadable(e: &str) -> String {
    format!("{e}. Run `tether seed --cancel` to forget it.")
}

/// What health shows for a job file as it is (before the task has looked closer).
fn report_of_ended(job: &Job) -> Option<Seeding> {
    let report = match &job.outcome {
        None => SeedReport::Copying {
            percent: None,
            eta: None,
        },
        Some(o) if o.ok => return None,
        Some(o) => SeedReport::Failed(o.message.clone()),
    };
    Some(Seeding {
        direction: job.direction,
        report,
    })
}

/// A report about a job file that cannot be read (so its direction is not known either:
/// the usual one).
fn unknown_job(report: SeedReport) -> Seeding {
    Seeding {
        direction: Direction::HubToOffice,
        report,
    }
}

fn idle_doc() -> String {
    serde_json::json!({"state": "idle"}).to_string()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The job file's identity, to notice a new or removed job.
fn stamp(data_dir: &Path) -> Option<(u64, SystemTime)> {
    let m = std::fs::metadata(Job::path(data_dir)).ok()?;
    Some((m.len(), m.modified().ok()?))
}

/// Runs jobs until shutdown.
pub async fn run(
    s: SeedSettings,
    link: watch::Receiver<LinkState>,
    events: mpsc::Sender<Event>,
    doc: watch::Sender<String>,
    shutdown: CancellationToken,
) {
    let mut reported: Option<Option<Seeding>> = None;
    loop {
        let seen = stamp(&s.data_dir);
        match Job::load(&s.data_dir) {
            Ok(Some(job)) if job.active() => {
                let first = Some(Seeding {
                    direction: job.direction,
                    report: SeedReport::Copying {
                        percent: None,
                        eta: None,
                    },
                });
                report(&events, &mut reported, first).await;
                match run_job(&s, job.clone(), &link, &events, &doc, &shutdown).await {
                    JobEnd::Stopping => return,
                    JobEnd::Replaced => continue,
                    JobEnd::Ended { ok, message } => {
                        if ok {
                            tracing::info!(summary = %message, "seed: done");
                        } else {
                            tracing::warn!(reason = %message, "seed: stopped; a person must act");
                        }
                        // Only over the same job: `tether seed --replace` may have
                        // written a new one meanwhile.
                        if matches!(Job::load(&s.data_dir), Ok(Some(j)) if j.id == job.id) {
                            let mut ended = job;
                            ended.end(ok, message, unix_now());
                            if let Err(e) = ended.save(&s.data_dir) {
                                tracing::warn!(error = %e, "seed: cannot record the outcome");
                            }
                        }
                        continue;
                    }
                }
            }
            Ok(Some(job)) => {
                let o = job.outcome.clone().unwrap_or(job::Outcome {
                    ok: false,
                    message: String::new(),
                    finished_unix: 0,
                });
                doc.send_replace(
                    serde_json::json!({
                        "state": if o.ok { "done" } else { "failed" },
                        "job": job.id,
                        "message": o.message,
                        "finished_unix": o.finished_unix,
                    })
                    .to_string(),
                );
                report(&events, &mut reported, report_of_ended(&job)).await;
            }
            Ok(None) => {
                doc.send_replace(idle_doc());
                report(&events, &mut reported, None).await;
            }
            Err(e) => {
                doc.send_replace(
                    serde_json::json!({"state": "failed", "message": unreadable(&e)}).to_string(),
                );
                report(
                    &events,
                    &mut reported,
                    Some(unknown_job(SeedReport::Failed(unreadable(&e)))),
                )
                .await;
            }
        }
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(POLL) => {}
            }
            if stamp(&s.data_dir) != seen {
                break;
            }
        }
    }
}

/// Sends a report to health when it differs from the last one sent.
async fn report(
    events: &mpsc::Sender<Event>,
    last: &mut Option<Option<Seeding>>,
    r: Option<Seeding>,
) {
    if last.as_ref() != Some(&r) {
        *last = Some(r.clone());
        let _ = events.send(Event::Seed(r)).await;
    }
}

enum JobEnd {
    Stopping,
    /// The job file was replaced or removed while the job ran.
    Replaced,
    Ended {
        ok: bool,
        message: String,
    },
}

async fn run_job(
    s: &SeedSettings,
    job: Job,
    link: &watch::Receiver<LinkState>,
    events: &mpsc::Sender<Event>,
    doc: &watch::Sender<String>,
    shutdown: &CancellationToken,
) -> JobEnd {
    let stop = shutdown.child_token();
    let target = |host: &str, port: u16, login: &job::Login, database: &str| DbTarget {
        host: host.to_owned(),
        port,
        user: login.user.clone(),
        password: login.password.clone().unwrap_or_default(),
        database: database.to_owned(),
    };
    let hub = target(&s.hub_host, s.hub_port, &job.hub, &s.hub_schema);
    let office = target(&s.office_host, s.office_port, &job.office, &s.office_schema);
    let (source, target, source_schema, target_schema) = match job.direction {
        Direction::HubToOffice => (hub, office, &s.hub_schema, &s.office_schema),
        Direction::OfficeToHub => (office, hub, &s.office_schema, &s.hub_schema),
    };
    let sh = Arc::new(Shared {
        source,
        target,
        source_schema: source_schema.clone(),
        target_schema: target_schema.clone(),
        timeout: s.timeout,
        live: std::sync::Mutex::new(Live::new()),
        link: link.clone(),
        shutdown: stop.clone(),
        job,
    });
    tracing::info!(job = %sh.job.id, tables = sh.job.tables.len(), "seed: running");
    let publisher = publish(&sh, events, doc);
    let changed = async {
        let id = sh.job.id.clone();
        loop {
            tokio::time::sleep(POLL).await;
            match Job::load(&s.data_dir) {
                Ok(Some(j)) if j.id == id && j.active() => {}
                _ => return,
            }
        }
    };
    let end = tokio::select! {
        r = drive(&sh) => match r {
            _ if shutdown.is_cancelled() => JobEnd::Stopping,
            Ok(summary) => JobEnd::Ended { ok: true, message: summary },
            Err(why) => JobEnd::Ended { ok: false, message: why },
        },
        () = publisher => JobEnd::Stopping,
        () = changed => JobEnd::Replaced,
        () = shutdown.cancelled() => JobEnd::Stopping,
    };
    stop.cancel();
    end
}

/// Runs the job's phases from wherever the target says it is.
async fn drive(sh: &Arc<Shared>) -> Result<String, String> {
    let mut backoff = crate::backoff::Backoff::new(crate::backoff::BackoffPolicy {
        min: Duration::from_secs(1),
        max: Duration::from_secs(30),
        jitter_pct: 20,
    });
    loop {
        if sh.shutdown.is_cancelled() {
            return Err("stopping".into());
        }
        let result = async {
            let mut link = sh.link.clone();
            let mut downs = sh.link_up(&mut link).await?;
            let mut target = sh.connect_target().await?;
            loop {
                // A new hub is reached through the tunnel: a connection made before a cut
                // is dead after it (and may not say so before a timeout).
                if !sh.source_is_remote() && link.borrow().downs != downs {
                    downs = sh.link_up(&mut link).await?;
                    target = sh.connect_target().await?;
                }
                match run::load_phase(sh, &mut target).await? {
                    None | Some(Phase::Plan) => run::plan(sh, &mut target).await?,
                    Some(Phase::Copy) => run::copy(sh, &mut target).await?,
                    Some(Phase::Verify) => verify::run(sh).await.map_err(|e| {
                        if sh.shutdown.is_cancelled() {
                            Failure::Retry(e)
                        } else {
                            Failure::Fatal(e)
                        }
                    })?,
                    Some(Phase::Finishing) => run::finish(sh, &mut target).await?,
                    Some(Phase::Done) => {
                        return Ok::<_, Failure>(summary(sh.job.direction, &sh.live()));
                    }
                }
            }
        }
        .await;
        match result {
            Ok(summary) => return Ok(summary),
            Err(Failure::Fatal(e)) => return Err(explain(sh.job.direction, &e)),
            Err(Failure::Retry(e)) => sh.pause(&mut backoff, &e).await,
        }
    }
}

/// The command that starts a seed in this direction over again.
pub fn start_again(direction: Direction) -> &'static str {
    match direction {
        Direction::HubToOffice => "tether seed --replace",
        Direction::OfficeToHub => "tether seed --to-hub",
    }
}

/// A fatal error in words for people.
fn explain(direction: Direction, e: &str) -> String {
    if crate::replication::is_refusal(e) || e.contains("ERROR 1142 ") || e.contains("ERROR 1143 ") {
        format!(
            "the seeding account was refused ({e}); run `{}` to start again with new accounts.",
            start_again(direction)
        )
    } else {
        format!("{e}.")
    }
}

/// How a finished seed's summary ends when the target had no replication from the
/// source configured: its start position is set, and whoever configures it next
/// (`tether setup`, or a person after `tether seed`) starts it from there.
pub const REPLICA_WAITS: &str =
    "is not configured yet; its start position is set to where the copy ends";

/// The summary of a finished seed.
fn summary(direction: Direction, l: &Live) -> String {
    let (to, from) = (direction.replica_side(), direction.source_side());
    use progress::{bytes_words, duration_words};
    let resent_pct = if l.wire_bytes > 0 {
        l.resent_bytes as f64 * 100.0 / l.wire_bytes as f64
    } else {
        0.0
    };
    format!(
        "copied {} rows ({} of rows, {} compressed) in {}; {} chunks were sent again after cuts ({}, {resent_pct:.1} % of the copy); the check against the {from}'s final snapshot took {}, exchanged {} of SQL with the hub (before the tunnel's compression) and repaired {} rows; {}",
        l.rows_done,
        bytes_words(l.text_bytes),
        bytes_words(l.wire_bytes),
        duration_words(Duration::from_millis(l.copy_ms)),
        l.resent_chunks,
        bytes_words(l.resent_bytes),
        duration_words(Duration::from_millis(l.verify_ms)),
        bytes_words(l.verify_bytes),
        l.verify_rows,
        if l.replica_started == Some(false) {
            format!("the {to}'s replication from the {from} {REPLICA_WAITS}")
        } else {
            format!("the {to} replicates from the {from} from that snapshot on")
        }
    )
}

/// Publishes the detailed progress every half second and the coarse report to health on
/// change; never returns.
async fn publish(sh: &Shared, events: &mpsc::Sender<Event>, doc: &watch::Sender<String>) {
    let mut last: Option<Option<Seeding>> = None;
    loop {
        let (detail, report) = {
            let l = sh.live();
            let now = l.started.elapsed();
            let rates = l.window.rates(now, Duration::from_secs(20));
            let remaining = l.rows_total.saturating_sub(l.rows_done);
            let eta = if l.waiting_for_link {
                None
            } else {
                rates.and_then(|(rows, _)| progress::eta(remaining, rows))
            };
            let percent = progress::percent(l.rows_done, l.rows_total);
            let phase = if l.waiting_for_link {
                "waiting"
            } else {
                l.phase.as_str()
            };
            let detail = serde_json::json!({
                "state": "running",
                "job": sh.job.id,
                "source": sh.source_name(),
                "phase": phase,
                "percent": percent,
                "rows_done": l.rows_done,
                "rows_total": l.rows_total,
                "text_bytes": l.text_bytes,
                "wire_bytes": l.wire_bytes,
                "chunks": l.chunks,
                "rows_per_s": rates.map(|r| r.0),
                "bytes_per_s": rates.map(|r| r.1),
                "eta_s": eta.map(|e| e.as_secs()),
                "resent_bytes": l.resent_bytes,
                "resent_chunks": l.resent_chunks,
                "verify_passes": l.verify_passes,
                "verify_ranges": l.verify_ranges,
                "verify_rows": l.verify_rows,
                "verify_bytes": l.verify_bytes,
                "last_error": l.last_error,
            });
            let report = match l.phase {
                Phase::Plan => SeedReport::Copying {
                    percent: None,
                    eta: None,
                },
                Phase::Copy => SeedReport::Copying {
                    percent: Some(percent),
                    eta,
                },
                Phase::Verify | Phase::Finishing | Phase::Done => SeedReport::Verifying,
            };
            (detail.to_string(), report)
        };
        doc.send_replace(detail);
        let seeding = Seeding {
            direction: sh.job.direction,
            report,
        };
        self::report(events, &mut last, Some(seeding)).await;
        tokio::time::sleep(PUBLISH).await;
    }
}
