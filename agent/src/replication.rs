//! Replication supervision at the edge: one small task per database (the office DB
//! directly, the hub DB through the local forward) that writes this side's heartbeat row,
//! reads the replica status of the direction this side applies, measures true lag from
//! the other side's heartbeat corrected by the servers' clock offset, and restarts the IO
//! thread the moment the tunnel is back (and, on MySQL, one that gave up reconnecting). It
//! asks each server which family and version it is when it connects and speaks that
//! family's dialect (`dialect`); a pair of different families is refused and left alone.
//! It never skips an event or changes data.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use mysql_async::prelude::Queryable;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::dialect::{Channel, Dialect, Family, Threads};
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
    /// The replication channel (MySQL) or connection name (MariaDB multi-source) this
    /// side's replica applies the other side's changes on; `None` is the default one.
    pub channel: Option<String>,
}

/// What the two sides' tasks know of their servers, shared by both: each server's clock
/// offset (server minus agent wall clock, µs) and dialect, indexed by side.
#[derive(Debug, Default)]
pub struct Sides {
    pub offsets: [Option<i64>; 2],
    pub dialects: [Option<Dialect>; 2],
}

/// [`Sides`], shared by both tasks.
pub type Shared = Arc<Mutex<Sides>>;

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

/// A side's memory between rounds.
#[derive(Debug, Default)]
struct SideState {
    /// Whether the heartbeat table is known to exist on this connection.
    table_ready: bool,
    /// When the tunnel last came back, until this side has decided whether to restart.
    restart_pending: Option<Instant>,
    last_poll: Option<Instant>,
    /// When an IO thread that gave up reconnecting was last started again.
    last_give_up_start: Option<Instant>,
    /// Since when the IO thread has been stopped on transactions this side already holds
    /// (MySQL's 13114 race, see [`purge_race_gtids`]), while it is being started again.
    purge_race_since: Option<Instant>,
}

/// Runs one side until shutdown.
pub async fn run_side(
    s: SideSettings,
    shared: Shared,
    mut link: watch::Receiver<LinkState>,
    events: mpsc::Sender<Event>,
    shutdown: CancellationToken,
) {
    let mut ups = link.borrow_and_update().ups;
    let mut conn: Option<(mysql_async::Conn, Dialect)> = None;
    let mut heartbeat = tokio::time::interval(s.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut state = SideState::default();
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
                state.restart_pending = s.restart_on_reconnect.then(Instant::now);
            }
        }
        if conn.is_none() {
            if connect_after.is_some_and(|t| Instant::now() < t) {
                continue;
            }
            let known = shared
                .lock()
                .ok()
                .and_then(|sides| sides.dialects[side_index(s.direction)]);
            match connect(&s, known).await {
                Ok((c, dialect)) => {
                    if let Ok(mut sides) = shared.lock() {
                        sides.dialects[side_index(s.direction)] = Some(dialect);
                    }
                    conn = Some((c, dialect));
                    conn_downs = link.borrow().downs;
                    state.table_ready = false;
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
        let Some((c, dialect)) = conn.as_mut() else {
            continue;
        };
        let link_up = link.borrow().up;
        let res = side_round(c, dialect, link_up, &s, &shared, &mut state).await;
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
    if let Some((c, _)) = conn {
        let _ = tokio::time::timeout(Duration::from_millis(300), c.disconnect()).await;
    }
}

/// Connects to this side's database and asks which family and version it is, unless
/// the handshake shows the same version as `known`, the dialect of this side's last
/// connection (the same server: a reconnect through the tunnel saves a round trip).
async fn connect(
    s: &SideSettings,
    known: Option<Dialect>,
) -> Result<(mysql_async::Conn, Dialect), String> {
    let t = s.query_timeout;
    let mut c = bounded(t, "connect", mysql_async::Conn::new(opts(&s.db, t))).await?;
    let (major, minor, patch) = c.server_version();
    let greeted = crate::dialect::Version(major.into(), minor.into(), patch.into());
    let dialect = match known {
        Some(d) if d.version == greeted => d,
        _ => Dialect::query(&mut c, t).await?,
    };
    let side = s.direction.replica_side();
    match dialect.unsupported() {
        Some(why) => tracing::warn!(side, "{why}"),
        None => tracing::debug!(side, server = %dialect.describe(), "connected"),
    }
    Ok((c, dialect))
}

/// The heartbeat table, in the agent's schema on each side (`tether setup` creates it
/// too, before the seed, which copies the hub's rows as of its snapshot).
pub const HEARTBEAT_TABLE_SQL: &str = "CREATE TABLE IF NOT EXISTS heartbeat (server_id INT UNSIGNED PRIMARY KEY, beat_us BIGINT NOT NULL) ENGINE=InnoDB";

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

/// Replica errors that mean "cannot reach the primary" (client errors 2003, 2005, 2006,
/// 2013, 2026; network read and write errors 1158-1161): the link's business, not a
/// person's.
pub fn is_link_errno(errno: u32) -> bool {
    matches!(
        errno,
        2003 | 2005 | 2006 | 2013 | 2026 | 1158 | 1159 | 1160 | 1161
    )
}

/// The least time between two starts of an IO thread that gave up reconnecting: each
/// start gives it its whole retry count again, so this only bounds a primary that stays
/// unreachable while the tunnel is up.
const GIVE_UP_RESTART_EVERY: Duration = Duration::from_secs(10);

/// How long an IO thread stopped on the 13114 race reads as reconnecting rather than as
/// its error: long enough for a few starts again, short enough that a race that does not
/// clear is shown to a person as it is.
const PURGE_RACE_SHOWN_AS_RECONNECTING: Duration = Duration::from_secs(60);

async fn side_round(
    c: &mut mysql_async::Conn,
    d: &Dialect,
    link_up: bool,
    s: &SideSettings,
    shared: &Shared,
    state: &mut SideState,
) -> Result<Option<ReplicationStatus>, String> {
    let t = s.query_timeout;
    let channel = s.channel.as_deref();
    // A pair of different families cannot replicate: say so, and touch nothing.
    let refusal = {
        let sides = shared
            .lock()
            .map_err(|_| "shared state poisoned".to_string())?;
        let i = side_index(s.direction);
        sides.dialects[1 - i].and_then(|peer| match s.direction {
            Direction::HubToOffice => crate::dialect::mismatch(d, &peer),
            Direction::OfficeToHub => crate::dialect::mismatch(&peer, d),
        })
    };
    // First thing when the tunnel is back: every round trip before this delays the data.
    if let Some(up) = state.restart_pending.take()
        && refusal.is_none()
    {
        let row = read_status_row_with(c, t, d, channel).await?;
        if let Some(row) = &row {
            act_on_io_thread(c, t, d, s, row, Some(up.elapsed()), state).await?;
        }
    }
    if !state.table_ready {
        bounded(
            t,
            "create heartbeat table",
            c.query_drop(HEARTBEAT_TABLE_SQL),
        )
        .await?;
        state.table_ready = true;
    }
    // This side's heartbeat, stamped with this server's clock, and the clock offset.
    let before = SystemTime::now();
    // One round trip for the row and the clock reading: through the tunnel each one
    // costs the link a request and an answer, and the reading then sits in the middle of
    // the round trip measured around it, where the offset estimate assumes it is.
    let clock = "SELECT CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)";
    let sql = if link_up {
        // A hub that replicates from several offices (this office's on a connection of
        // its own) has its row written by every office's agent: spaced, so the hub logs
        // and relays to every office about one change a beat, not one per office.
        let upsert = match (s.direction, &s.channel) {
            (Direction::OfficeToHub, Some(_)) => {
                d.heartbeat_upsert_spaced(s.heartbeat_interval * 3 / 4)
            }
            _ => d.heartbeat_upsert().to_owned(),
        };
        format!("{upsert}; {clock}")
    } else {
        clock.to_owned()
    };
    let now_us: Option<i64> = bounded(t, "heartbeat", async {
        let mut result = c.query_iter(sql).await?;
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
        if let Ok(mut sides) = shared.lock() {
            sides.offsets[side_index(s.direction)] = Some(server_us - mid);
        }
    }
    if state
        .last_poll
        .is_some_and(|p| p.elapsed() < s.poll_interval)
    {
        return Ok(None);
    }
    state.last_poll = Some(Instant::now());
    let Some(row) = read_status_row_with(c, t, d, channel).await? else {
        return Ok(Some(ReplicationStatus {
            explanation: refusal,
            ..ReplicationStatus::default()
        }));
    };
    let racing = if link_up && refusal.is_none() {
        act_on_io_thread(c, t, d, s, &row, None, state).await?
    } else {
        false
    };
    let mut status =
        RawStatus::from_columns(row.iter().map(|(k, v)| (k.as_str(), Some(v.clone()))));
    // Not a purge: the thread is being started again, so the box stays amber
    // ("reconnecting") instead of flashing "must be re-seeded" for a poll; bounded, so a
    // race that does not clear shows its error after all.
    state.purge_race_since = racing.then(|| state.purge_race_since.unwrap_or_else(Instant::now));
    if state
        .purge_race_since
        .is_some_and(|since| since.elapsed() < PURGE_RACE_SHOWN_AS_RECONNECTING)
    {
        status.last_io_errno = 0;
        status.last_io_error.clear();
    }
    if status.last_sql_error.starts_with(COORDINATOR_STOPPED)
        && let Some((errno, error)) = worker_error(c, t, d, channel).await
    {
        status.last_sql_errno = errno;
        status.last_sql_error = error;
    }
    status.lag_s = heartbeat_lag(c, s, shared, status.master_server_id).await?;
    let mut event = status.into_event(d, channel);
    if refusal.is_some() {
        event.explanation = refusal;
    }
    Ok(Some(event))
}

/// How MySQL's coordinator reports an applier worker's error: the table and key are only
/// in the worker's own message (`performance_schema.replication_applier_status_by_worker`).
const COORDINATOR_STOPPED: &str =
    "Coordinator stopped because there were error(s) in the worker(s)";

/// The applier workers' first error on MySQL (the root cause, not a worker stopped after
/// it), if it can be read (the agent's account needs SELECT on that table; without it the
/// coordinator's message stays).
async fn worker_error(
    c: &mut mysql_async::Conn,
    t: Duration,
    d: &Dialect,
    channel: Channel<'_>,
) -> Option<(u32, String)> {
    let sql = d.worker_error_query(channel)?;
    match bounded(
        t,
        "applier worker errors",
        c.query_first::<(u32, String), _>(sql),
    )
    .await
    {
        Ok(row) => row,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the applier workers' errors; the table and key stay unknown");
            None
        }
    }
}

/// Restarts or starts this side's IO thread where [`io_action`] says it helps. True when
/// the thread is stopped only on transactions this side already holds (the 13114 race).
async fn act_on_io_thread(
    c: &mut mysql_async::Conn,
    t: Duration,
    d: &Dialect,
    s: &SideSettings,
    row: &std::collections::BTreeMap<String, String>,
    since_up: Option<Duration>,
    state: &mut SideState,
) -> Result<bool, String> {
    let channel = s.channel.as_deref();
    if let Some(missing) = purge_race_gtids(row, d) {
        let here: Option<u8> = bounded(
            t,
            "check the missing transactions",
            c.exec_first(
                "SELECT GTID_SUBSET(?, @@GLOBAL.gtid_executed)",
                (missing.to_owned(),),
            ),
        )
        .await?;
        if here == Some(1)
            && state
                .last_give_up_start
                .is_none_or(|at| at.elapsed() >= GIVE_UP_RESTART_EVERY)
        {
            state.last_give_up_start = Some(Instant::now());
            tracing::info!(direction = ?s.direction, "the source has no longer logged transactions this side already holds (they reached it the other way while it connected): starting the IO thread again");
            bounded(
                t,
                "start IO thread",
                c.query_drop(d.start_replica(Threads::Io, channel)),
            )
            .await?;
        }
        return Ok(here == Some(1));
    }
    match io_action(row, d, since_up) {
        IoAction::Leave => {}
        IoAction::Restart => {
            tracing::info!(direction = ?s.direction, "tunnel is back: restarting the replication IO thread");
            bounded(
                t,
                "restart IO thread",
                c.query_drop(d.restart_io_thread(channel)),
            )
            .await?;
        }
        IoAction::Start => {
            if state
                .last_give_up_start
                .is_some_and(|at| at.elapsed() < GIVE_UP_RESTART_EVERY)
            {
                return Ok(false);
            }
            state.last_give_up_start = Some(Instant::now());
            tracing::info!(direction = ?s.direction, "the replication IO thread gave up reconnecting: starting it again");
            bounded(
                t,
                "start IO thread",
                c.query_drop(d.start_replica(Threads::Io, channel)),
            )
            .await?;
        }
    }
    Ok(false)
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
    shared: &Shared,
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
        let sides = shared
            .lock()
            .map_err(|_| "shared state poisoned".to_string())?;
        let i = side_index(s.direction);
        (sides.offsets[i], sides.offsets[1 - i])
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

    fn into_event(self, d: &Dialect, channel: Channel) -> ReplicationStatus {
        let explanation = explain_status(&self, d, channel);
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

/// What to do with a replica's IO thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IoAction {
    Leave,
    /// Stop and start it: it is waiting to retry and the tunnel is back.
    Restart,
    /// Start it: it gave up reconnecting.
    Start,
}

/// What to do with the IO thread whose status is `row`; `since_up` is how long ago the
/// tunnel came back when that is the news. Pure.
pub(crate) fn io_action(
    row: &std::collections::BTreeMap<String, String>,
    d: &Dialect,
    since_up: Option<Duration>,
) -> IoAction {
    if gave_up(row, d) {
        IoAction::Start
    } else if since_up.is_some_and(|up| restart_helps(row, up)) {
        IoAction::Restart
    } else {
        IoAction::Leave
    }
}

/// Whether restarting the IO thread now, `since_up` after the tunnel came back, brings
/// the data sooner than leaving it alone. Only a thread waiting to retry qualifies, and
/// only if its own retry has not come round since the tunnel returned (a thread already
/// in its handshake would have to start it again). A stopped thread ("No") is left to
/// [`gave_up`].
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

/// Whether a stopped IO thread stopped because it spent its retry count on a connection
/// error, and nothing else: MySQL says "This was attempt 10/10" then (a person's `STOP
/// REPLICA` in the middle of the retries leaves "attempt 3/10"; an error that needs a
/// person, such as a refused login, is not a connection error). MariaDB does not say how
/// many attempts were made, so there a stopped thread is always left alone (its
/// `master_retry_count = 0` never gives up).
pub(crate) fn gave_up(row: &std::collections::BTreeMap<String, String>, d: &Dialect) -> bool {
    let col = |maria: &str, mysql: &str| row.get(maria).or_else(|| row.get(mysql));
    let io = col("Slave_IO_Running", "Replica_IO_Running").map(String::as_str);
    let errno = row
        .get("Last_IO_Errno")
        .and_then(|e| e.parse().ok())
        .unwrap_or(0);
    let error = row.get("Last_IO_Error").map(String::as_str).unwrap_or("");
    d.family == Family::MySql && io == Some("No") && is_link_errno(errno) && attempts_spent(error)
}

/// The transactions a MySQL source said it no longer has in its binary logs (error 13114:
/// "... the missing transactions are '<GTID set>'"), when that stopped this IO thread.
/// A source whose `log_replica_updates` is off never logs what it replicated, so it
/// cannot send those back; when they are transactions this side already holds (they
/// reached the source from here, or through the hub, while this thread was connecting
/// and sending its own set), the error is a race and starting the thread again ends it.
/// Whether they are held is the server's to say (`GTID_SUBSET`), not this function's.
pub(crate) fn purge_race_gtids<'a>(
    row: &'a std::collections::BTreeMap<String, String>,
    d: &Dialect,
) -> Option<&'a str> {
    let col = |maria: &str, mysql: &str| row.get(maria).or_else(|| row.get(mysql));
    let io = col("Slave_IO_Running", "Replica_IO_Running").map(String::as_str);
    if d.family != Family::MySql
        || io != Some("No")
        || row.get("Last_IO_Errno").map(String::as_str) != Some("13114")
    {
        return None;
    }
    let error = row.get("Last_IO_Error")?;
    let (_, rest) = error.split_once("the missing transactions are '")?;
    let (set, _) = rest.split_once('\'')?;
    Some(set.trim()).filter(|s| !s.is_empty())
}

/// "... This was attempt 10/10, with a delay of 1 seconds between attempts. ...": the
/// last attempt of the count was made.
fn attempts_spent(error: &str) -> bool {
    error.split("attempt ").skip(1).any(|rest| {
        let spec = rest.split([',', ' ', '.']).next().unwrap_or("");
        match spec.split_once('/') {
            Some((made, allowed)) => match (made.parse::<u64>(), allowed.parse::<u64>()) {
                (Ok(made), Ok(allowed)) => allowed > 0 && made >= allowed,
                _ => false,
            },
            None => false,
        }
    })
}

/// The replica status row of `channel` on a server of dialect `d`, every non-NULL column
/// by name (MariaDB and MySQL spellings alike); `None` when it replicates from nothing.
/// A failure is reported as it is (a missing privilege must not look like "no status").
pub async fn read_status_row_with(
    c: &mut mysql_async::Conn,
    t: Duration,
    d: &Dialect,
    channel: Channel<'_>,
) -> Result<Option<std::collections::BTreeMap<String, String>>, String> {
    let row: Option<mysql_async::Row> = bounded(
        t,
        "replica status",
        c.query_first(d.show_replica_status(channel)),
    )
    .await?;
    Ok(row.as_ref().map(by_name))
}

/// A row's non-NULL columns by name, as text.
pub(crate) fn by_name(row: &mysql_async::Row) -> std::collections::BTreeMap<String, String> {
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
    out
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

/// The statements a person runs to look at and to restart replication on this side, in
/// its family's words (MariaDB's as they have always been printed).
fn words(d: &Dialect, channel: Channel) -> (String, String) {
    match d.family {
        Family::MariaDb => {
            let name = channel
                .map(|n| format!(" {}", crate::dialect::quote(n)))
                .unwrap_or_default();
            (
                format!("SHOW SLAVE{name} STATUS"),
                format!("START SLAVE{name}"),
            )
        }
        Family::MySql => (
            d.show_replica_status(channel),
            d.start_replica(Threads::Both, channel),
        ),
    }
}

/// The sentence for a whole status, in the server family's words: the error's own
/// explanation, else one for any other error that needs a person, and for an applier
/// stopped without one (a person stopped it, or it was never started).
fn explain_status(s: &RawStatus, d: &Dialect, channel: Channel) -> Option<String> {
    explain(s.last_sql_errno, &s.last_sql_error, d, channel)
        .or_else(|| explain(s.last_io_errno, &s.last_io_error, d, channel))
        .or_else(|| {
            let (show, start) = words(d, channel);
            let (errno, error) = if s.last_sql_errno != 0 {
                (s.last_sql_errno, &s.last_sql_error)
            } else {
                (s.last_io_errno, &s.last_io_error)
            };
            let applier = match d.family {
                Family::MariaDb => "SQL thread",
                Family::MySql => "applier thread",
            };
            if errno != 0 && !is_link_errno(errno) {
                Some(format!(
                    "Replication stopped with this error: {error} A database administrator must look at it (`{show}` there shows it), correct the cause, then run {start}; tether never skips events."
                ))
            } else if s.sql_running == Some(false) {
                Some(format!(
                    "Replication is stopped (the {applier} is not running). Start it with `{start};` once the cause is known."
                ))
            } else {
                None
            }
        })
}

/// A sentence for people for the errors that need one, in the words of the server's
/// family `d`, for replication `channel`. Never suggests skipping events.
pub fn explain(errno: u32, error: &str, d: &Dialect, channel: Channel) -> Option<String> {
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
    let (show, start) = words(d, channel);
    let change = match d.family {
        Family::MariaDb => "CHANGE MASTER",
        Family::MySql => "CHANGE REPLICATION SOURCE",
    };
    let purged = "The other side no longer has the binary logs this side needs (they were purged while this site was offline longer than their retention). This side must be re-seeded from a fresh copy of the other side's data (tether never skips the missing transactions); raise binlog retention (binlog_expire_logs_seconds) above the longest outage you expect.";
    match errno {
        1062 => Some(format!(
            "Replication stopped on a duplicate key{}{}: the same row was inserted at both sites while the link was down. A database administrator must compare that row on both sides (`{show}` shows the event; `SELECT` the row by that key on each side), decide which to keep, correct the data on this side, then run {start}. Tether never skips events.",
            table.as_ref().map(|t| format!(" in table `{t}`")).unwrap_or_default(),
            key.as_ref().map(|k| format!(" (key {k})")).unwrap_or_default()
        )),
        1032 => Some(format!(
            "Replication stopped because a row to change is missing{}: the sites have diverged. A database administrator must restore that row (compare with CHECKSUM TABLE on both sides), then run {start}.",
            table.as_ref().map(|t| format!(" in table `{t}`")).unwrap_or_default()
        )),
        1236 => Some(purged.into()),
        // MySQL's "Got fatal error 1236 from source when reading data from binary log".
        13114 if error.contains("purged") => Some(purged.into()),
        13114 => Some(format!(
            "The other side stopped sending its binary log: {error} This side cannot go on from where it is; if the message says transactions are missing, it must be re-seeded from a fresh copy of the other side's data. Tether never skips events."
        )),
        1593 => Some(format!(
            "Both databases have the same server_id, so replication refuses to run. Give each site a distinct server_id in its {} configuration and restart it.",
            d.family
        )),
        13117 if error.contains("UUID") => Some(
            "Both databases have the same server_uuid (one data directory was copied from the other), so replication refuses to run. Stop the server whose data directory is the copy, delete its auto.cnf (a new server_uuid is made at the next start), and start it again.".into(),
        ),
        13117 => Some(format!(
            "Both databases have the same server_id, so replication refuses to run. Give each site a distinct server_id in its {} configuration and restart it.",
            d.family
        )),
        1045 => Some(format!(
            "The replication user was refused (wrong password or missing grants). Re-create it with the SQL printed by `tether enroll` and the same password in {change}."
        )),
        2061 => Some(format!(
            "This side's replica cannot log in to the other side: the replication account uses caching_sha2_password, which over the tunnel's plain TCP needs the server's public key once the server's password cache is empty (as after a restart). Run on this side: {}; {}; {};",
            d.stop_replica(Threads::Both, channel),
            d.change_source(channel, &[format!("{}=1", d.option("GET_SOURCE_PUBLIC_KEY"))]),
            d.start_replica(Threads::Both, channel)
        )),
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

    use crate::dialect::samples::{MARIADB, MYSQL};

    #[test]
    fn duplicate_key_names_table_and_key_and_never_suggests_skipping() {
        let e = "Could not execute Write_rows_v1 event on table app.orders; Duplicate entry '42' for key 'PRIMARY', Error_code: 1062; handler error HA_ERR_FOUND_DUPP_KEY; the event's master log binlog.000002, end_log_pos 1234";
        let x = explain(1062, e, &MARIADB, None).unwrap();
        assert!(x.contains("`app.orders`"), "{x}");
        assert!(x.contains("'42'"), "{x}");
        assert!(
            x.contains("`SHOW SLAVE STATUS`") && x.contains("START SLAVE."),
            "{x}"
        );
        assert!(!x.to_lowercase().contains("skip_counter"));
        assert!(
            explain(1236, "", &MARIADB, None)
                .unwrap()
                .contains("re-seeded")
        );
    }

    /// Recorded from MySQL 9.7 with four parallel workers: the coordinator's message has
    /// neither table nor key; the worker's (read from performance_schema) has both.
    #[test]
    fn mysql_words_and_the_workers_table_and_key() {
        let worker = "Worker 1 failed executing transaction '13b14122-f1c2-11f1-87ac-02fc00000001:1' at source log , end_log_pos 406; Could not execute Write_rows event on table app.t; Duplicate entry 'A-7' for key 't.code', Error_code: 1062; handler error HA_ERR_FOUND_DUPP_KEY; the event's source log binlog.000003, end_log_pos 406";
        let x = explain(1062, worker, &MYSQL, None).unwrap();
        assert!(x.contains("`app.t`") && x.contains("'A-7'"), "{x}");
        assert!(
            x.contains("`SHOW REPLICA STATUS`") && x.contains("START REPLICA."),
            "{x}"
        );
        assert!(!x.contains("SLAVE"), "{x}");
        let coordinator = "Coordinator stopped because there were error(s) in the worker(s). The most recent failure being: Worker 1 failed executing transaction '13b14122-f1c2-11f1-87ac-02fc00000001:1' at source log , end_log_pos 406. See error log and/or performance_schema.replication_applier_status_by_worker table for more details about this failure or others, if any.";
        assert!(coordinator.starts_with(COORDINATOR_STOPPED));
        let x = explain(1062, worker, &MYSQL, Some("office7")).unwrap();
        assert!(x.contains("START REPLICA FOR CHANNEL 'office7'"), "{x}");
    }

    #[test]
    fn a_purged_binary_log_on_mysql_means_re_seeding_not_correcting_data() {
        let e = "Got fatal error 1236 from source when reading data from binary log: 'Cannot replicate because the source purged required binary logs. Replicate the missing transactions from elsewhere, or provision a new replica from backup. Consider increasing the source's binary log expiration period. The GTID set sent by the replica is '133a74a6-f1c2-11f1-b148-02fc00000001:1', and the missing transactions are '13b14122-f1c2-11f1-87ac-02fc00000001:2''";
        let x = explain(13114, e, &MYSQL, None).unwrap();
        assert!(x.contains("must be re-seeded"), "{x}");
        assert!(!x.contains("correct the data"), "{x}");
        let other = explain(
            13114,
            "Got fatal error 1236 from source: 'binary log is not open'",
            &MYSQL,
            None,
        )
        .unwrap();
        assert!(other.contains("binary log is not open"), "{other}");
    }

    #[test]
    fn error_2061_says_how_to_get_the_public_key_in_the_familys_words() {
        let e = "Error connecting to source 'repl@127.0.0.1:41002'. This was attempt 3/3, with a delay of 1 seconds between attempts. Message: Authentication plugin 'caching_sha2_password' reported error: Authentication requires secure connection.";
        let x = explain(2061, e, &MYSQL, None).unwrap();
        assert!(
            x.contains(
                "STOP REPLICA; CHANGE REPLICATION SOURCE TO GET_SOURCE_PUBLIC_KEY=1; START REPLICA;"
            ),
            "{x}"
        );
        let equal = "Fatal error: The replica I/O thread stops because source and replica have equal MySQL server UUIDs; these UUIDs must be different for replication to work.";
        assert!(
            explain(13117, equal, &MYSQL, None)
                .unwrap()
                .contains("auto.cnf")
        );
        let ids = "Fatal error: The replica I/O thread stops because source and replica have equal MySQL server ids; these ids must be different for replication to work";
        assert!(
            explain(13117, ids, &MYSQL, None)
                .unwrap()
                .contains("MySQL configuration")
        );
    }

    /// A stopped applier and an error without an explanation of its own, in each family's
    /// words; an IO error on the link is the link's business, but an applier stopped
    /// beside it still needs a person.
    #[test]
    fn each_family_gets_its_own_words_for_a_stopped_applier_and_any_other_error() {
        let stopped = RawStatus {
            io_running: Some(true),
            sql_running: Some(false),
            ..RawStatus::default()
        };
        let x = explain_status(&stopped, &MARIADB, None).unwrap();
        assert!(
            x.contains("SQL thread is not running") && x.contains("`START SLAVE;`"),
            "{x}"
        );
        let x = explain_status(&stopped, &MYSQL, None).unwrap();
        assert!(
            x.contains("applier thread is not running") && x.contains("`START REPLICA;`"),
            "{x}"
        );
        assert!(!x.contains("SLAVE"), "{x}");
        let odd = RawStatus {
            last_sql_errno: 1146,
            last_sql_error: "Table 'app.x' doesn't exist".into(),
            ..stopped.clone()
        };
        let x = explain_status(&odd, &MARIADB, None).unwrap();
        assert!(
            x.contains("app.x") && x.contains("`SHOW SLAVE STATUS`") && x.contains("START SLAVE;"),
            "{x}"
        );
        let x = explain_status(&odd, &MYSQL, Some("office7")).unwrap();
        assert!(
            x.contains("app.x")
                && x.contains("`SHOW REPLICA STATUS FOR CHANNEL 'office7'`")
                && x.contains("START REPLICA FOR CHANNEL 'office7';"),
            "{x}"
        );
        let link = RawStatus {
            io_running: Some(false),
            sql_running: Some(true),
            last_io_errno: 2003,
            ..RawStatus::default()
        };
        for d in [MARIADB, MYSQL] {
            assert!(
                explain_status(&link, &d, None).is_none(),
                "the link's business"
            );
        }
        let stopped_in_an_outage = RawStatus {
            sql_running: Some(false),
            ..link
        };
        let x = explain_status(&stopped_in_an_outage, &MYSQL, None).unwrap();
        assert!(x.contains("`START REPLICA;`"), "{x}");
    }

    /// Recorded from MySQL 9.7 (SOURCE_RETRY_COUNT=3, SOURCE_CONNECT_RETRY=1, the
    /// source stopped): the thread that gave up, and one a person stopped mid-retry.
    #[test]
    fn only_a_mysql_io_thread_that_spent_its_retries_on_the_link_is_started_again() {
        let gave_up_row = row(&[
            ("Replica_IO_Running", "No"),
            ("Replica_SQL_Running", "Yes"),
            ("Last_IO_Errno", "2003"),
            (
                "Last_IO_Error",
                "Error reconnecting to source 'repl@127.0.0.1:41002'. This was attempt 3/3, with a delay of 1 seconds between attempts. Message: Can't connect to MySQL server on '127.0.0.1:41002' (111)",
            ),
        ]);
        assert!(gave_up(&gave_up_row, &MYSQL));
        assert_eq!(io_action(&gave_up_row, &MYSQL, None), IoAction::Start);
        assert_eq!(
            io_action(&gave_up_row, &MYSQL, Some(Duration::from_millis(5))),
            IoAction::Start
        );
        let mut stopped_by_a_person = gave_up_row.clone();
        stopped_by_a_person.insert("Last_IO_Error".into(), "Error connecting to source 'repl@127.0.0.1:41002'. This was attempt 2/3, with a delay of 1 seconds between attempts. Message: Can't connect to MySQL server on '127.0.0.1:41002' (111)".into());
        assert!(!gave_up(&stopped_by_a_person, &MYSQL));
        let mut cleanly_stopped = gave_up_row.clone();
        cleanly_stopped.insert("Last_IO_Errno".into(), "0".into());
        cleanly_stopped.insert("Last_IO_Error".into(), String::new());
        assert!(!gave_up(&cleanly_stopped, &MYSQL));
        let mut refused = gave_up_row.clone();
        refused.insert("Last_IO_Errno".into(), "2061".into());
        assert!(!gave_up(&refused, &MYSQL), "needs a person");
        assert!(!gave_up(&gave_up_row, &MARIADB), "MariaDB never says");
        let mut forever = gave_up_row.clone();
        forever.insert("Replica_IO_Running".into(), "Connecting".into());
        forever.insert("Last_IO_Error".into(), "Error reconnecting to source 'repl@127.0.0.1:3307'. This was attempt 7/18446744073709551615, with a delay of 1 seconds between attempts.".into());
        assert!(!gave_up(&forever, &MYSQL));
        assert_eq!(io_action(&forever, &MYSQL, None), IoAction::Leave);
    }

    #[test]
    fn a_purge_error_names_the_missing_transactions_for_the_server_to_check() {
        let error = "Got fatal error 1236 from source when reading data from binary log: 'Cannot replicate because the source purged required binary logs. Replicate the missing transactions from elsewhere, or provision a new replica from backup. Consider increasing the source's binary log expiration period. The GTID set sent by the replica is '67eec892-f1f0-11f1-bfdf-02fc00000001:1-453,\n6811712f-f1f0-11f1-91c0-02fc00000001:1-448', and the missing transactions are '6811712f-f1f0-11f1-91c0-02fc00000001:449''";
        let stopped = row(&[
            ("Replica_IO_Running", "No"),
            ("Last_IO_Errno", "13114"),
            ("Last_IO_Error", error),
        ]);
        assert_eq!(
            purge_race_gtids(&stopped, &MYSQL),
            Some("6811712f-f1f0-11f1-91c0-02fc00000001:449")
        );
        assert_eq!(purge_race_gtids(&stopped, &MARIADB), None);
        let mut running = stopped.clone();
        running.insert("Replica_IO_Running".into(), "Yes".into());
        assert_eq!(purge_race_gtids(&running, &MYSQL), None);
        let mut other = stopped.clone();
        other.insert("Last_IO_Error".into(), "purged, nothing named".into());
        assert_eq!(purge_race_gtids(&other, &MYSQL), None);
    }
}
