//! Replication supervision at the edge: one small task per database (the office DB
//! directly, the hub DB through the local forward) that writes this side's heartbeat row,
//! reads the replica status of the direction this side applies, measures true lag from
//! the other side's heartbeat corrected by the servers' clock offset, and restarts the IO
//! thread the moment the tunnel is back. It never skips an event or changes data.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use mysql_async::prelude::Queryable;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::events::{Direction, Event, ReplicationStatus};

/// How to reach one side's database.
#[derive(Clone)]
pub struct DbTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: crate::secret::Secret,
    pub database: String,
}

/// What the task needs to know.
#[derive(Clone)]
pub struct SideSettings {
    /// The direction this database applies (it is that direction's replica).
    pub direction: Direction,
    pub db: DbTarget,
    pub poll_interval: Duration,
    pub heartbeat_interval: Duration,
    pub query_timeout: Duration,
    /// Restart the IO thread when the tunnel is back.
    pub restart_on_reconnect: bool,
}

/// Clock offsets (server minus agent wall clock, µs), one per side, shared by both tasks.
pub type Offsets = Arc<Mutex<[Option<i64>; 2]>>;

fn side_index(d: Direction) -> usize {
    match d {
        Direction::HubToOffice => 0,
        Direction::OfficeToHub => 1,
    }
}

pub(crate) fn opts(db: &DbTarget, timeout: Duration) -> mysql_async::Opts {
    mysql_async::OptsBuilder::default()
        .ip_or_hostname(db.host.clone())
        .tcp_port(db.port)
        .user(Some(db.user.clone()))
        .pass(Some(db.password.expose().to_owned()))
        .db_name(Some(db.database.clone()))
        .prefer_socket(false)
        .tcp_nodelay(true)
        .wait_timeout(Some(60))
        .stmt_cache_size(Some(0))
        .conn_ttl(Some(timeout * 4))
        .into()
}

/// A bounded query helper: every call has its own deadline.
pub(crate) async fn bounded<T>(
    timeout: Duration,
    what: &str,
    fut: impl std::future::Future<Output = mysql_async::Result<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {timeout:?}")),
    }
}

/// What replication needs to know of the tunnel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkState {
    /// Tunnel (re)connections so far: a change means "the link is back, restart the IO
    /// thread now".
    pub ups: u64,
    /// Whether the tunnel is up now. While it is down the office's heartbeat is not
    /// written: nobody can read it, and each row would wait in the binary log and cross
    /// the link on the heal, in front of the data.
    pub up: bool,
    /// Times the tunnel went down: a connection through it made before the last one is
    /// dead, one made since is on the current session.
    pub downs: u64,
}

/// Runs one side until shutdown.
pub async fn run_side(
    s: SideSettings,
    offsets: Offsets,
    mut link: watch::Receiver<LinkState>,
    events: mpsc::Sender<Event>,
    shutdown: CancellationToken,
) {
    let mut ups = link.borrow_and_update().ups;
    let mut conn: Option<mysql_async::Conn> = None;
    let mut heartbeat = tokio::time::interval(s.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_poll: Option<Instant> = None;
    let mut table_ready = false;
    // When the tunnel last came back, until this side has decided whether to restart.
    let mut restart_pending: Option<Instant> = None;
    // A refused login will not fix itself: retry it on a growing delay (up to a minute),
    // not on every heartbeat, so the server's log is not flooded with refusals.
    let mut refused = crate::backoff::Backoff::new(REFUSED_BACKOFF);
    let mut connect_after: Option<Instant> = None;
    // The tunnel's `downs` when `conn` was made.
    let mut conn_downs = link.borrow().downs;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = heartbeat.tick() => {}
            r = link.changed() => {
                if r.is_err() { break; }
                let now = *link.borrow_and_update();
                // A connection through the tunnel dies with its session. One made since the
                // last down (the heartbeat tick can connect as soon as a new session is
                // logged in, before "up" arrives here) is kept: dropping it would cost the
                // link a new connection and delay the restart check below by its round.
                if s.direction == Direction::OfficeToHub && now.downs != conn_downs {
                    conn = None;
                }
                if now.ups == ups { continue; }
                ups = now.ups;
                restart_pending = s.restart_on_reconnect.then(Instant::now);
            }
        }
        if conn.is_none() {
            if connect_after.is_some_and(|t| Instant::now() < t) {
                continue;
            }
            match bounded(
                s.query_timeout,
                "connect",
                mysql_async::Conn::new(opts(&s.db, s.query_timeout)),
            )
            .await
            {
                Ok(c) => {
                    conn = Some(c);
                    conn_downs = link.borrow().downs;
                    table_ready = false;
                    refused.reset();
                    connect_after = None;
                }
                Err(e) => {
                    connect_after = is_refusal(&e)
                        .then(|| Instant::now() + refused.next_delay(rand::random::<f64>()));
                    let _ = events
                        .send(Event::ReplicationUnreachable {
                            direction: s.direction,
                            error: e,
                        })
                        .await;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let link_up = link.borrow().up;
        let res = side_round(
            c,
            link_up,
            &s,
            &offsets,
            &mut table_ready,
            &mut restart_pending,
            &mut last_poll,
        )
        .await;
        match res {
            Ok(Some(status)) => {
                let _ = events
                    .send(Event::Replication {
                        direction: s.direction,
                        status,
                    })
                    .await;
            }
            Ok(None) => {}
            Err(e) => {
                conn = None;
                let _ = events
                    .send(Event::ReplicationUnreachable {
                        direction: s.direction,
                        error: e,
                    })
                    .await;
            }
        }
    }
    if let Some(c) = conn {
        let _ = tokio::time::timeout(Duration::from_millis(300), c.disconnect()).await;
    }
}

/// Delays between attempts after the database refused the agent's login.
const REFUSED_BACKOFF: crate::backoff::BackoffPolicy = crate::backoff::BackoffPolicy {
    min: Duration::from_secs(2),
    max: Duration::from_secs(60),
    jitter_pct: 20,
};

/// Errors a retry cannot cure: access denied (1045), no access to the schema (1044),
/// missing privilege (1227).
pub fn is_refusal(error: &str) -> bool {
    ["1044", "1045", "1227"]
        .iter()
        .any(|code| error.contains(code))
}

async fn side_round(
    c: &mut mysql_async::Conn,
    link_up: bool,
    s: &SideSettings,
    offsets: &Offsets,
    table_ready: &mut bool,
    restart_pending: &mut Option<Instant>,
    last_poll: &mut Option<Instant>,
) -> Result<Option<ReplicationStatus>, String> {
    let t = s.query_timeout;
    // First thing when the tunnel is back: every round trip before this delays the data.
    if let Some(up) = restart_pending.take() {
        let row = read_status_row(c, t).await?;
        if row.as_ref().is_some_and(|r| restart_helps(r, up.elapsed())) {
            tracing::info!(direction = ?s.direction, "tunnel is back: restarting the replication IO thread");
            bounded(
                t,
                "restart IO thread",
                c.query_drop("STOP SLAVE IO_THREAD; START SLAVE IO_THREAD"),
            )
            .await?;
        }
    }
    if !*table_ready {
        bounded(t, "create heartbeat table", c.query_drop(
            "CREATE TABLE IF NOT EXISTS heartbeat (server_id INT UNSIGNED PRIMARY KEY, beat_us BIGINT NOT NULL) ENGINE=InnoDB",
        ))
        .await?;
        *table_ready = true;
    }
    // This side's heartbeat, stamped with this server's clock, and the clock offset.
    let before = SystemTime::now();
    // One round trip for the row and the clock reading: through the tunnel each one
    // costs the link a request and an answer, and the reading then sits in the middle of
    // the round trip measured around it, where the offset estimate assumes it is.
    let now_us: Option<i64> = bounded(t, "heartbeat", async {
        let mut result = c
            .query_iter(if link_up {
                concat!(
                    "INSERT INTO heartbeat (server_id, beat_us) VALUES (@@server_id, CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)) ON DUPLICATE KEY UPDATE beat_us = VALUES(beat_us); ",
                    "SELECT CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)"
                )
            } else {
                "SELECT CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)"
            })
            .await?;
        let mut now = None;
        while !result.is_empty() {
            let rows: Vec<i64> = result.collect().await?;
            now = rows.into_iter().next().or(now);
        }
        Ok::<_, mysql_async::Error>(now)
    })
    .await?;
    let after = SystemTime::now();
    if let Some(server_us) = now_us {
        let mid = unix_us(before) / 2 + unix_us(after) / 2;
        if let Ok(mut o) = offsets.lock() {
            o[side_index(s.direction)] = Some(server_us - mid);
        }
    }
    if last_poll.is_some_and(|p| p.elapsed() < s.poll_interval) {
        return Ok(None);
    }
    *last_poll = Some(Instant::now());
    let Some(mut status) = read_status(c, t).await? else {
        return Ok(Some(ReplicationStatus::default()));
    };
    status.lag_s = heartbeat_lag(c, s, offsets, status.master_server_id).await?;
    Ok(Some(status.into_event()))
}

fn unix_us(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Lag from the primary's heartbeat row as this replica sees it, corrected by the clock
/// offset between the two servers (which the agent measured against its own clock).
async fn heartbeat_lag(
    c: &mut mysql_async::Conn,
    s: &SideSettings,
    offsets: &Offsets,
    primary_id: Option<u32>,
) -> Result<Option<u64>, String> {
    let Some(primary_id) = primary_id else {
        return Ok(None);
    };
    let row: Option<(i64, i64)> = bounded(
        s.query_timeout,
        "read heartbeat",
        c.exec_first(
            "SELECT beat_us, CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED) FROM heartbeat WHERE server_id = ?",
            (primary_id,),
        ),
    )
    .await?;
    let Some((beat_us, replica_now_us)) = row else {
        return Ok(None);
    };
    let (mine, theirs) = {
        let o = offsets.lock().map_err(|_| "offsets poisoned".to_string())?;
        let i = side_index(s.direction);
        (o[i], o[1 - i])
    };
    Ok(Some(lag_seconds(
        beat_us,
        replica_now_us,
        mine.unwrap_or(0),
        theirs.unwrap_or(0),
    )))
}

/// Whole seconds between the primary writing its beat and the replica reading it,
/// in one time base: `replica_offset`/`primary_offset` are server minus agent clock.
pub fn lag_seconds(
    beat_us: i64,
    replica_now_us: i64,
    replica_offset: i64,
    primary_offset: i64,
) -> u64 {
    let replica_now_agent = replica_now_us - replica_offset;
    let beat_agent = beat_us - primary_offset;
    let lag_us = (replica_now_agent - beat_agent).max(0);
    (lag_us / 1_000_000) as u64
}

/// The replica status row, by column name, in MariaDB or MySQL spelling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawStatus {
    pub io_running: Option<bool>,
    pub sql_running: Option<bool>,
    pub seconds_behind: Option<u64>,
    pub last_io_errno: u32,
    pub last_io_error: String,
    pub last_sql_errno: u32,
    pub last_sql_error: String,
    pub master_server_id: Option<u32>,
    pub lag_s: Option<u64>,
}

impl RawStatus {
    /// Parses `(column, value)` pairs; unknown columns are ignored.
    pub fn from_columns<'a>(
        cols: impl IntoIterator<Item = (&'a str, Option<String>)>,
    ) -> RawStatus {
        let mut s = RawStatus::default();
        for (name, value) in cols {
            let v = value.unwrap_or_default();
            match name {
                "Slave_IO_Running" | "Replica_IO_Running" => s.io_running = Some(v == "Yes"),
                "Slave_SQL_Running" | "Replica_SQL_Running" => s.sql_running = Some(v == "Yes"),
                "Seconds_Behind_Master" | "Seconds_Behind_Source" => {
                    s.seconds_behind = v.parse().ok()
                }
                "Last_IO_Errno" => s.last_io_errno = v.parse().unwrap_or(0),
                "Last_IO_Error" => s.last_io_error = v,
                "Last_SQL_Errno" => s.last_sql_errno = v.parse().unwrap_or(0),
                "Last_SQL_Error" => s.last_sql_error = v,
                "Master_Server_Id" | "Source_Server_Id" => s.master_server_id = v.parse().ok(),
                _ => {}
            }
        }
        s
    }

    fn into_event(self) -> ReplicationStatus {
        let explanation = explain(self.last_sql_errno, &self.last_sql_error)
            .or_else(|| explain(self.last_io_errno, &self.last_io_error));
        ReplicationStatus {
            io_running: self.io_running,
            sql_running: self.sql_running,
            lag_s: self.lag_s,
            seconds_behind_master: self.seconds_behind,
            last_io_errno: self.last_io_errno,
            last_io_error: self.last_io_error,
            last_sql_errno: self.last_sql_errno,
            last_sql_error: self.last_sql_error,
            explanation,
        }
    }
}

/// Whether restarting the IO thread now, `since_up` after the tunnel came back, brings
/// the data sooner than leaving it alone. Only a thread waiting to retry qualifies, and
/// only if its own retry has not come round since the tunnel returned (a thread already
/// in its handshake would have to start it again). A stopped thread ("No") is never
/// started: a person or a data error stopped it, and the two cannot be told from one that
/// gave up retrying (which `master_retry_count = 0` prevents).
pub(crate) fn restart_helps(
    row: &std::collections::BTreeMap<String, String>,
    since_up: Duration,
) -> bool {
    let col = |maria: &str, mysql: &str| row.get(maria).or_else(|| row.get(mysql));
    let io = col("Slave_IO_Running", "Replica_IO_Running").map(String::as_str);
    let retry = col("Connect_Retry", "Source_Connect_Retry")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(60));
    io == Some("Connecting") && since_up < retry
}

/// The replica status row, every non-NULL column by name (MariaDB and MySQL spellings
/// alike); `None` when this server replicates from nothing.
pub(crate) async fn read_status_row(
    c: &mut mysql_async::Conn,
    t: Duration,
) -> Result<Option<std::collections::BTreeMap<String, String>>, String> {
    let row: Option<mysql_async::Row> =
        match bounded(t, "replica status", c.query_first("SHOW REPLICA STATUS")).await {
            Ok(r) => r,
            // MariaDB before 10.5 and old MySQL only know the SLAVE spelling.
            Err(_) => bounded(t, "replica status", c.query_first("SHOW SLAVE STATUS")).await?,
        };
    let Some(row) = row else { return Ok(None) };
    let mut out = std::collections::BTreeMap::new();
    for (i, col) in row.columns_ref().iter().enumerate() {
        let value = match row.as_ref(i) {
            Some(mysql_async::Value::Bytes(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            Some(mysql_async::Value::Int(n)) => Some(n.to_string()),
            Some(mysql_async::Value::UInt(n)) => Some(n.to_string()),
            _ => None,
        };
        if let Some(v) = value {
            out.insert(col.name_str().into_owned(), v);
        }
    }
    Ok(Some(out))
}

async fn read_status(c: &mut mysql_async::Conn, t: Duration) -> Result<Option<RawStatus>, String> {
    let Some(row) = read_status_row(c, t).await? else {
        return Ok(None);
    };
    let pairs: Vec<(&str, Option<String>)> = row
        .iter()
        .map(|(name, value)| (known_column(name), Some(value.clone())))
        .collect();
    Ok(Some(RawStatus::from_columns(pairs)))
}

/// Column names we care about are a fixed set; map others to "".
fn known_column(name: &str) -> &'static str {
    KNOWN_COLUMNS
        .iter()
        .find(|k| **k == name)
        .copied()
        .unwrap_or("")
}

/// The status columns the parser reads, in both spellings.
pub(crate) const KNOWN_COLUMNS: &[&str] = &[
    "Slave_IO_Running",
    "Replica_IO_Running",
    "Slave_SQL_Running",
    "Replica_SQL_Running",
    "Seconds_Behind_Master",
    "Seconds_Behind_Source",
    "Last_IO_Errno",
    "Last_IO_Error",
    "Last_SQL_Errno",
    "Last_SQL_Error",
    "Master_Server_Id",
    "Source_Server_Id",
];

/// A sentence for people for the errors that need one. Never suggests skipping events.
pub fn explain(errno: u32, error: &str) -> Option<String> {
    let table = error
        .split("on table ")
        .nth(1)
        .and_then(|r| r.split([';', ' ']).next())
        .map(|t| t.trim_end_matches('.').to_owned());
    let key = error
        .split("Duplicate entry ")
        .nth(1)
        .and_then(|r| r.split(" for key").next())
        .map(str::to_owned);
    match errno {
        1062 => Some(format!(
            "Replication stopped on a duplicate key{}{}: the same row was inserted at both sites while the link was down. A database administrator must compare that row on both sides (`SHOW SLAVE STATUS` shows the event; `SELECT` the row by that key on each side), decide which to keep, correct the data on this side, then run START SLAVE. Tether never skips events.",
            table.as_ref().map(|t| format!(" in table `{t}`")).unwrap_or_default(),
            key.as_ref().map(|k| format!(" (key {k})")).unwrap_or_default()
        )),
        1032 => Some(format!(
            "Replication stopped because a row to change is missing{}: the sites have diverged. A database administrator must restore that row (compare with CHECKSUM TABLE on both sides), then run START SLAVE.",
            table.as_ref().map(|t| format!(" in table `{t}`")).unwrap_or_default()
        )),
        1236 => Some(
            "The other side no longer has the binary logs this side needs (they were purged while this site was offline longer than their retention). The replica must be re-synchronised from a fresh copy; raise binlog retention (binlog_expire_logs_seconds) above the longest outage you expect.".into(),
        ),
        1593 => Some(
            "Both databases have the same server_id, so replication refuses to run. Give each site a distinct server_id in its MariaDB configuration and restart it.".into(),
        ),
        1045 => Some(
            "The replication user was refused (wrong password or missing grants). Re-create it with the SQL printed by `tether enroll` and the same password in CHANGE MASTER.".into(),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mariadb_and_mysql_spellings() {
        let maria = RawStatus::from_columns([
            ("Slave_IO_Running", Some("Yes".into())),
            ("Slave_SQL_Running", Some("No".into())),
            ("Seconds_Behind_Master", None),
            ("Last_SQL_Errno", Some("1062".into())),
            ("Master_Server_Id", Some("1".into())),
        ]);
        assert_eq!(maria.io_running, Some(true));
        assert_eq!(maria.sql_running, Some(false));
        assert_eq!(maria.seconds_behind, None);
        assert_eq!(maria.last_sql_errno, 1062);
        assert_eq!(maria.master_server_id, Some(1));
        let mysql = RawStatus::from_columns([
            ("Replica_IO_Running", Some("Connecting".into())),
            ("Replica_SQL_Running", Some("Yes".into())),
            ("Seconds_Behind_Source", Some("7".into())),
            ("Source_Server_Id", Some("3".into())),
        ]);
        assert_eq!(mysql.io_running, Some(false));
        assert_eq!(mysql.seconds_behind, Some(7));
        assert_eq!(mysql.master_server_id, Some(3));
    }

    fn row(cols: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
        cols.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_restart_only_where_it_brings_the_data_sooner() {
        let ms = Duration::from_millis;
        // Waiting to retry, right after the tunnel returned: restart.
        let waiting = row(&[("Slave_IO_Running", "Connecting"), ("Connect_Retry", "60")]);
        assert!(restart_helps(&waiting, ms(10)));
        // Its own one-second retry has come round since: it is in its handshake already.
        let quick = row(&[("Slave_IO_Running", "Connecting"), ("Connect_Retry", "1")]);
        assert!(restart_helps(&quick, ms(10)));
        assert!(!restart_helps(&quick, ms(2500)));
        // MySQL spelling.
        let mysql = row(&[
            ("Replica_IO_Running", "Connecting"),
            ("Source_Connect_Retry", "60"),
        ]);
        assert!(restart_helps(&mysql, ms(2500)));
        // Running, or stopped (by a person, an error, or after giving up): leave alone.
        assert!(!restart_helps(&row(&[("Slave_IO_Running", "Yes")]), ms(10)));
        assert!(!restart_helps(
            &row(&[("Slave_IO_Running", "No"), ("Last_IO_Errno", "0")]),
            ms(10)
        ));
        assert!(!restart_helps(
            &row(&[("Slave_IO_Running", "No"), ("Last_IO_Errno", "2003")]),
            ms(10)
        ));
    }

    #[test]
    fn lag_is_corrected_by_the_clock_offsets() {
        // Primary clock 5 s ahead of the agent, replica 2 s behind; real lag 3 s.
        let agent_beat = 1_000_000_000_000i64;
        let beat = agent_beat + 5_000_000;
        let replica_now = agent_beat + 3_000_000 - 2_000_000;
        assert_eq!(lag_seconds(beat, replica_now, -2_000_000, 5_000_000), 3);
        assert_eq!(lag_seconds(beat, beat - 10, 0, 0), 0, "never negative");
    }

    #[test]
    fn duplicate_key_names_table_and_key_and_never_suggests_skipping() {
        let e = "Could not execute Write_rows_v1 event on table app.orders; Duplicate entry '42' for key 'PRIMARY', Error_code: 1062; handler error HA_ERR_FOUND_DUPP_KEY; the event's master log binlog.000002, end_log_pos 1234";
        let x = explain(1062, e).unwrap();
        assert!(x.contains("`app.orders`"), "{x}");
        assert!(x.contains("'42'"), "{x}");
        assert!(!x.to_lowercase().contains("skip_counter"));
        assert!(explain(1236, "").unwrap().contains("re-synchronised"));
    }
}
