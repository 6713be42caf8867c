//! Writes on both sites at once, each on its own keys (inserts and updates), counting only
//! what the database acknowledged, and the checks that nothing was lost: every
//! acknowledged row on both sides and `CHECKSUM TABLE` equal.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use mysql_async::prelude::Queryable;
use tokio_util::sync::CancellationToken;

use crate::db::DbServer;

/// The table every site writes its own keys into.
pub const TABLE: &str = "app.soak";

/// Counters of one site's writer.
#[derive(Debug, Default)]
pub struct SiteCounts {
    /// Rows inserted and acknowledged; the keys are 1..=inserted.
    pub inserted: AtomicU64,
    pub updated: AtomicU64,
    /// Statements that failed (the server was away); they are retried.
    pub failed: AtomicU64,
}

/// Writers on both databases.
pub struct Workload {
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub hub: Arc<SiteCounts>,
    pub office: Arc<SiteCounts>,
}

/// Creates the table on the hub and waits until it has replicated to the office.
pub async fn create_table(hub: &DbServer, office: &DbServer, timeout: Duration) -> Result<()> {
    hub.sql(&format!(
        "CREATE TABLE IF NOT EXISTS {TABLE} (site VARCHAR(8) NOT NULL, n INT NOT NULL, v INT NOT NULL DEFAULT 0, PRIMARY KEY (site, n)) ENGINE=InnoDB"
    ))?;
    let deadline = Instant::now() + timeout;
    while office.count(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema='app' AND table_name='soak'",
    ) < 1
    {
        if Instant::now() > deadline {
            bail!("{TABLE} did not reach the office within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

impl Workload {
    /// `rows_per_s` statements a second on each site, one in four an update of one of the
    /// site's own rows. Each statement is its own transaction.
    pub fn start(hub: &DbServer, office: &DbServer, rows_per_s: u32) -> Workload {
        let stop = CancellationToken::new();
        let (hc, oc) = (
            Arc::new(SiteCounts::default()),
            Arc::new(SiteCounts::default()),
        );
        let tasks = vec![
            tokio::spawn(write(
                hub.root_url(),
                "hub",
                rows_per_s,
                hc.clone(),
                stop.clone(),
            )),
            tokio::spawn(write(
                office.root_url(),
                "office",
                rows_per_s,
                oc.clone(),
                stop.clone(),
            )),
        ];
        Workload {
            stop,
            tasks,
            hub: hc,
            office: oc,
        }
    }

    /// Stops writing; returns once both writers have ended.
    pub async fn stop(&mut self) {
        self.stop.cancel();
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }

    pub fn inserted(&self) -> (u64, u64) {
        (
            self.hub.inserted.load(Ordering::Relaxed),
            self.office.inserted.load(Ordering::Relaxed),
        )
    }

    /// Updates acknowledged so far (hub, office).
    pub fn updated(&self) -> (u64, u64) {
        (
            self.hub.updated.load(Ordering::Relaxed),
            self.office.updated.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn write(
    url: String,
    site: &'static str,
    rows_per_s: u32,
    counts: Arc<SiteCounts>,
    stop: CancellationToken,
) {
    let Ok(opts) = mysql_async::Opts::from_url(&url) else {
        return;
    };
    let mut conn: Option<mysql_async::Conn> = None;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rows_per_s)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut i: u64 = 0;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if conn.is_none() {
            match tokio::time::timeout(Duration::from_secs(2), mysql_async::Conn::new(opts.clone()))
                .await
            {
                Ok(Ok(c)) => conn = Some(c),
                _ => {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let inserted = counts.inserted.load(Ordering::Relaxed);
        i += 1;
        let (sql, is_insert) = if i.is_multiple_of(4) && inserted > 0 {
            let n = 1 + (i * 7919) % inserted;
            (
                format!("UPDATE {TABLE} SET v = v + 1 WHERE site = '{site}' AND n = {n}"),
                false,
            )
        } else {
            (
                format!(
                    "INSERT INTO {TABLE} (site, n, v) VALUES ('{site}', {}, 0)",
                    inserted + 1
                ),
                true,
            )
        };
        match tokio::time::timeout(Duration::from_secs(5), c.query_drop(sql)).await {
            Ok(Ok(())) => {
                let n = if is_insert {
                    &counts.inserted
                } else {
                    &counts.updated
                };
                n.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(mysql_async::Error::Server(e))) if e.code == 1062 => {
                // The insert committed but its answer was lost with the connection.
                counts.inserted.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
        }
    }
    if let Some(c) = conn {
        let _ = tokio::time::timeout(Duration::from_secs(1), c.disconnect()).await;
    }
}

/// `CHECKSUM TABLE` of one table on one server.
pub fn checksum(db: &DbServer, table: &str) -> String {
    db.sql(&format!("CHECKSUM TABLE {table}"))
        .map(|s| s.split_whitespace().last().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

/// Rows of `site` in the workload's table on `db` (0 when the query fails).
fn site_rows(db: &DbServer, site: &str) -> u64 {
    db.count(&format!(
        "SELECT COUNT(*) FROM {TABLE} WHERE site = '{site}'"
    ))
}

/// Waits until both sides hold at least `counts` rows of each site (while the writers
/// run: checksums of a moving table only agree by chance); returns how long it took.
pub async fn wait_arrived(
    hub: &DbServer,
    office: &DbServer,
    counts: (u64, u64),
    timeout: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let seen = [site_rows(office, "hub"), site_rows(hub, "office")];
        if seen[0] >= counts.0 && seen[1] >= counts.1 {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            bail!(
                "rows acknowledged (hub, office) {counts:?} not across within {timeout:?}: the office has {} of the hub's, the hub {} of the office's",
                seen[0],
                seen[1]
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until both sides hold every acknowledged row of both sites and the checksums of
/// the table agree (after the writers stopped); returns how long that took.
pub async fn wait_converged(
    hub: &DbServer,
    office: &DbServer,
    counts: (u64, u64),
    timeout: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    let (h, o) = counts;
    loop {
        let seen = [
            site_rows(hub, "hub"),
            site_rows(hub, "office"),
            site_rows(office, "hub"),
            site_rows(office, "office"),
        ];
        if seen[0] >= h && seen[1] >= o && seen[2] >= h && seen[3] >= o {
            let (a, b) = (checksum(hub, TABLE), checksum(office, TABLE));
            if !a.is_empty() && a == b && seen[0] == seen[2] && seen[1] == seen[3] {
                return Ok(started.elapsed());
            }
        }
        if started.elapsed() > timeout {
            bail!(
                "not converged within {timeout:?}: acknowledged hub {h}, office {o}; rows (hub: hub, office; office: hub, office) = {seen:?}; checksums {} / {}",
                checksum(hub, TABLE),
                checksum(office, TABLE)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
