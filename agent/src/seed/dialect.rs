//! The seed's server-family specific SQL, in a few small functions: which family a server
//! is, how a read snapshot and its exact binary log position are taken, how the target's
//! replica is told where to start, how long the source keeps its binary logs. Everything
//! else in the seed is plain SQL both families speak.
//!
//! MariaDB gives a snapshot's exact position without any lock (`binlog_snapshot_*`) and
//! starts the target's replica at `gtid_slave_pos`. MySQL has no such status: the
//! snapshot is opened under a brief `FLUSH TABLES WITH READ LOCK` (bounded by
//! `lock_wait_timeout`; writes wait only while the snapshot opens, as with `mysqldump
//! --single-transaction --set-gtid-purged`), and the target's replica (auto-position)
//! starts after the source's transactions the copy holds, added to the target's
//! `gtid_purged`.

use mysql_async::prelude::Queryable;

use crate::replication::bounded;

pub use crate::dialect::Family;

/// A GTID set as MySQL prints it (`uuid:1-5,\nuuid:1-3`) without its whitespace, so two
/// readings of the same set compare equal.
pub fn gtid_set(text: &str) -> String {
    text.chars().filter(|c| !c.is_whitespace()).collect()
}

/// The replica status row of the default channel, every column by name (`None` when the
/// server replicates from nothing).
pub async fn replica_status(
    c: &mut mysql_async::Conn,
    family: Family,
    t: std::time::Duration,
) -> Result<Option<std::collections::BTreeMap<String, String>>, String> {
    let d = crate::dialect::Dialect::current(family);
    crate::replication::read_status_row_with(c, t, &d, None).await
}

/// Reads the server's family and version.
pub async fn family(
    c: &mut mysql_async::Conn,
    t: std::time::Duration,
) -> Result<(Family, String), String> {
    let row: Option<(String, Option<String>)> =
        bounded(t, "version", c.query_first(crate::dialect::Dialect::QUERY)).await?;
    let (v, comment) = row.unwrap_or_default();
    let d = crate::dialect::Dialect::detect(&v, comment.as_deref().unwrap_or(""));
    Ok((d.family, v))
}

/// Opens a consistent read snapshot on this (source) connection and returns the binary log
/// position it corresponds to exactly, as a GTID position. MariaDB gives it without any
/// lock: `binlog_snapshot_file`/`_position` belong to the snapshot.
pub async fn open_snapshot(
    c: &mut mysql_async::Conn,
    family: Family,
    t: std::time::Duration,
) -> Result<String, String> {
    if family == Family::MySql {
        return open_snapshot_mysql(c, t).await;
    }
    let pos: Option<Option<String>> = bounded(
        t,
        "open a snapshot",
        async {
            let mut r = c
                .query_iter(
                    "START TRANSACTION WITH CONSISTENT SNAPSHOT; \
                     SELECT BINLOG_GTID_POS(\
                       (SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'BINLOG_SNAPSHOT_FILE'), \
                       (SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'BINLOG_SNAPSHOT_POSITION'))",
                )
                .await?;
            let mut pos = None;
            while !r.is_empty() {
                let rows: Vec<Option<String>> = r.collect().await?;
                if let Some(p) = rows.into_iter().next() {
                    pos = Some(p);
                }
            }
            Ok(pos)
        },
    )
    .await?;
    match pos {
        Some(Some(p)) => Ok(p),
        _ => Err(
            "the source gave no binary log position for the snapshot: is its binary log on (log_bin)?"
                .into(),
        ),
    }
}

/// MySQL: the snapshot opened while writes wait (`FLUSH TABLES WITH READ LOCK`), and the
/// source's `gtid_executed` at that moment, which is exactly what the snapshot holds. The
/// lock waits for statements already running; writers queue behind it meanwhile, so it
/// is given up after 2 s (`lock_wait_timeout`, error 1205, retried with the backoff)
/// rather than keeping the source's applications waiting behind a long query.
async fn open_snapshot_mysql(
    c: &mut mysql_async::Conn,
    t: std::time::Duration,
) -> Result<String, String> {
    let taken: Result<Option<String>, String> = bounded(t, "open a snapshot", async {
        let mut r = c
            .query_iter(
                "SET SESSION lock_wait_timeout = 2; \
                 FLUSH TABLES WITH READ LOCK; \
                 START TRANSACTION WITH CONSISTENT SNAPSHOT; \
                 SELECT @@GLOBAL.gtid_executed; \
                 UNLOCK TABLES",
            )
            .await?;
        let mut pos = None;
        while !r.is_empty() {
            let rows: Vec<Option<String>> = r.collect().await?;
            if let Some(Some(p)) = rows.into_iter().next() {
                pos = Some(p);
            }
        }
        Ok(pos)
    })
    .await;
    if taken.is_err() {
        // Never leave the source's writers waiting on this connection's lock.
        let _ = bounded(t, "unlock", c.query_drop("UNLOCK TABLES")).await;
    }
    match taken? {
        Some(p) => Ok(gtid_set(&p)),
        None => Err("the source gave no GTID set for the snapshot: is gtid_mode ON?".into()),
    }
}

/// The target's replica position now (to tell, after a restart, whether it was already
/// moved to the seed's position).
pub async fn replica_position(
    c: &mut mysql_async::Conn,
    family: Family,
    t: std::time::Duration,
) -> Result<String, String> {
    let sql = match family {
        Family::MariaDb => "SELECT @@GLOBAL.gtid_slave_pos",
        // What the target counts as done without having executed it: the seed adds the
        // copy's transactions there.
        Family::MySql => "SELECT @@GLOBAL.gtid_purged",
    };
    let p: Option<String> = bounded(t, "read the replica's position", c.query_first(sql)).await?;
    Ok(gtid_set(&p.unwrap_or_default()))
}

/// Stops the server's replication (its default connection), if it is configured.
pub async fn stop_replica(
    c: &mut mysql_async::Conn,
    family: Family,
    t: std::time::Duration,
) -> Result<(), String> {
    match family {
        Family::MariaDb => bounded(t, "stop replication", c.query_drop("STOP SLAVE")).await,
        Family::MySql => bounded(t, "stop replication", c.query_drop("STOP REPLICA")).await,
    }
}

/// Sets where the target's replica starts (the seed's final snapshot) and starts it, if
/// replication is configured there. Returns whether it was started.
pub async fn start_replica_at(
    c: &mut mysql_async::Conn,
    family: Family,
    position: &str,
    t: std::time::Duration,
) -> Result<bool, String> {
    stop_replica(c, family, t).await?;
    match family {
        Family::MariaDb => {
            bounded(
                t,
                "set gtid_slave_pos",
                c.exec_drop("SET GLOBAL gtid_slave_pos = ?", (position,)),
            )
            .await?;
        }
        Family::MySql => {
            // Only what the target has not executed (a repeat after a restart adds nothing).
            let missing: Option<String> = bounded(
                t,
                "compare GTID sets",
                c.exec_first(
                    "SELECT GTID_SUBTRACT(?, @@GLOBAL.gtid_executed)",
                    (position,),
                ),
            )
            .await?;
            let missing = gtid_set(&missing.unwrap_or_default());
            if !missing.is_empty() {
                bounded(
                    t,
                    "add the copy's transactions to gtid_purged",
                    c.exec_drop("SET GLOBAL gtid_purged = CONCAT('+', ?)", (missing,)),
                )
                .await?;
            }
        }
    }
    let configured = replica_status(c, family, t).await?.is_some();
    if configured {
        let start = match family {
            Family::MariaDb => "START SLAVE",
            Family::MySql => "START REPLICA",
        };
        bounded(t, "start replication", c.query_drop(start)).await?;
    }
    Ok(configured)
}

/// The global privileges the source's seeding account needs besides reading the seeded
/// schemas: on MySQL, the brief read lock that pins a snapshot's position.
pub fn source_privileges(family: Family) -> Option<&'static str> {
    match family {
        Family::MariaDb => None,
        Family::MySql => Some("RELOAD"),
    }
}

/// The global privileges of the target's seeding account: writing without binary
/// logging, and controlling its replica; with triggers to create, acting for their
/// definers.
pub fn target_privileges(family: Family, triggers: bool) -> &'static str {
    match (family, triggers) {
        (Family::MariaDb, false) => "BINLOG ADMIN, REPLICATION SLAVE ADMIN, SLAVE MONITOR",
        (Family::MariaDb, true) => "BINLOG ADMIN, REPLICATION SLAVE ADMIN, SLAVE MONITOR, SET USER",
        (Family::MySql, false) => {
            "SYSTEM_VARIABLES_ADMIN, REPLICATION_SLAVE_ADMIN, REPLICATION CLIENT"
        }
        (Family::MySql, true) => {
            "SYSTEM_VARIABLES_ADMIN, REPLICATION_SLAVE_ADMIN, REPLICATION CLIENT, SET_USER_ID"
        }
    }
}

/// Makes the target's replica follow GTID positions (the seed sets one), if it does not.
pub async fn use_gtid_positions(
    c: &mut mysql_async::Conn,
    family: Family,
    status: &std::collections::BTreeMap<String, String>,
    t: std::time::Duration,
) -> Result<(), String> {
    if family == Family::MySql {
        if status.get("Auto_Position").is_some_and(|v| v != "1") {
            stop_replica(c, family, t).await?;
            bounded(
                t,
                "use GTID auto-positioning",
                c.query_drop("CHANGE REPLICATION SOURCE TO SOURCE_AUTO_POSITION = 1"),
            )
            .await?;
        }
        return Ok(());
    }
    if status
        .get("Using_Gtid")
        .is_some_and(|v| !v.eq_ignore_ascii_case("Slave_Pos"))
    {
        stop_replica(c, family, t).await?;
        bounded(
            t,
            "use GTID positions",
            c.query_drop("CHANGE MASTER TO MASTER_USE_GTID = slave_pos"),
        )
        .await?;
    }
    Ok(())
}

/// How long the server keeps its binary logs; `None` when it never purges them.
pub async fn binlog_retention(
    c: &mut mysql_async::Conn,
    t: std::time::Duration,
) -> Result<Option<std::time::Duration>, String> {
    // Both families know binlog_expire_logs_seconds (MariaDB from 10.6); older MariaDB
    // only expire_logs_days.
    let secs: Option<u64> = match bounded(
        t,
        "binlog retention",
        c.query_first("SELECT @@GLOBAL.binlog_expire_logs_seconds"),
    )
    .await
    {
        Ok(s) => s,
        Err(_) => {
            let days: Option<f64> = bounded(
                t,
                "binlog retention",
                c.query_first("SELECT @@GLOBAL.expire_logs_days"),
            )
            .await?;
            days.map(|d| (d * 86_400.0) as u64)
        }
    };
    Ok(secs.filter(|s| *s > 0).map(std::time::Duration::from_secs))
}

/// The session every seed connection uses: UTC (timestamps are written and compared as
/// text, the same on both sides), no SQL mode surprises (backslash escapes on, zeros kept
/// in AUTO_INCREMENT columns, zero dates accepted as the source stored them), chunks up to
/// `max_chunk` bytes of text, and no foreign key checks on the writes (tables arrive in
/// any order; the final snapshot is consistent).
pub fn session_sql(family: Family, max_chunk: u64) -> String {
    let no_statement_limit = match family {
        Family::MariaDb => "max_statement_time = 0",
        Family::MySql => "max_execution_time = 0",
    };
    format!(
        "SET NAMES utf8mb4; \
         SET SESSION time_zone = '+00:00', \
           sql_mode = 'NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION', \
           group_concat_max_len = {}, \
           foreign_key_checks = 0, \
           net_read_timeout = 600, net_write_timeout = 600, wait_timeout = 28800, \
           {no_statement_limit}; \
         SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        max_chunk.max(1024) * 2
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtid_sets_compare_without_their_line_breaks() {
        assert_eq!(
            gtid_set(
                "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5,\n4e11fa47-71ca-11e1-9e33-c80aa9429562:1-3"
            ),
            "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5,4e11fa47-71ca-11e1-9e33-c80aa9429562:1-3"
        );
    }
}
