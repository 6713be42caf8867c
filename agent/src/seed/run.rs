//! The seed job at the edge: plans, copies chunks with parallel workers, hands over to
//! verification, and finally points the target's replica at the copy's exact position.
//! The source is the side read (the hub; the office when a new hub is filled), the target
//! the side written (without binary logging). Every step resumes from what the target
//! has committed; nothing here decides health, it only reports progress.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::dialect;
use super::job::{Direction, JOB_TABLE, Job, PROGRESS_TABLE, Phase};
use super::progress::{ChunkSizer, RateWindow};
use super::sql::{Key, Range, TablePlan, ident};
use crate::replication::{DbTarget, LinkState, bounded};

/// Bound on a chunk's request and answer (a dead link is noticed by the tunnel sooner:
/// it closes every forwarded connection when the session ends).
pub(super) const CHUNK_TIMEOUT: Duration = Duration::from_secs(180);
/// Bound on a small query through the tunnel: it may queue behind other readers' chunks.
pub(super) const HUB_TIMEOUT: Duration = Duration::from_secs(60);

/// Delays between attempts after a failure that may pass (link, server restart).
const RETRY: crate::backoff::BackoffPolicy = crate::backoff::BackoffPolicy {
    min: Duration::from_millis(500),
    max: Duration::from_secs(15),
    jitter_pct: 20,
};

/// Why a step failed: retried, or the job stops and a person must act.
#[derive(Debug)]
pub(super) enum Failure {
    Retry(String),
    Fatal(String),
}

impl Failure {
    /// Errors a retry cannot cure: refused logins and missing privileges, tables or
    /// columns that should be there, SQL the server does not understand.
    pub(super) fn classify(e: String) -> Failure {
        const FATAL: &[&str] = &[
            "1044", "1045", "1142", "1143", "1227", "1370", "1146", "1054", "1064", "1366", "1406",
        ];
        if FATAL
            .iter()
            .any(|code| e.contains(&format!("ERROR {code} ")))
        {
            Failure::Fatal(e)
        } else {
            Failure::Retry(e)
        }
    }
}

impl From<String> for Failure {
    fn from(e: String) -> Self {
        Failure::classify(e)
    }
}

/// Live figures of the running job, rebuilt from the target's progress tables at start.
#[derive(Debug)]
pub(super) struct Live {
    pub phase: Phase,
    pub waiting_for_link: bool,
    pub rows_total: u64,
    pub rows_done: u64,
    pub text_bytes: u64,
    pub wire_bytes: u64,
    pub chunks: u64,
    pub resent_bytes: u64,
    pub resent_chunks: u64,
    pub window: RateWindow,
    pub verify_passes: u64,
    pub verify_ranges: u64,
    pub verify_rows: u64,
    pub verify_bytes: u64,
    pub verify_ms: u64,
    pub copy_ms: u64,
    pub last_error: Option<String>,
    pub started: Instant,
    /// Whether the target's replica was started at the copy's position (`false`: it has
    /// no replication from the source configured yet; the position is set for it).
    pub replica_started: Option<bool>,
}

impl Live {
    pub fn new() -> Self {
        Live {
            phase: Phase::Plan,
            waiting_for_link: false,
            rows_total: 0,
            rows_done: 0,
            text_bytes: 0,
            wire_bytes: 0,
            chunks: 0,
            resent_bytes: 0,
            resent_chunks: 0,
            window: RateWindow::new(Duration::from_secs(60)),
            verify_passes: 0,
            verify_ranges: 0,
            verify_rows: 0,
            verify_bytes: 0,
            verify_ms: 0,
            copy_ms: 0,
            last_error: None,
            started: Instant::now(),
            replica_started: None,
        }
    }
}

/// What every part of a running job shares.
pub(super) struct Shared {
    pub job: Job,
    /// The side read: the hub (through the tunnel), or the office for a new hub.
    pub source: DbTarget,
    /// The side written: the office, or a new hub (through the tunnel).
    pub target: DbTarget,
    /// The agent's own schema on the target (progress tables, heartbeat).
    pub target_schema: String,
    /// The agent's own schema on the source (its heartbeat rows).
    pub source_schema: String,
    pub timeout: Duration,
    pub live: Mutex<Live>,
    pub link: watch::Receiver<LinkState>,
    pub shutdown: CancellationToken,
}

impl Shared {
    pub fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn table(&self, i: usize) -> &TablePlan {
        &self.job.tables[i]
    }

    fn progress_table(&self) -> String {
        format!("{}.{PROGRESS_TABLE}", ident(&self.target_schema))
    }

    pub fn job_table(&self) -> String {
        format!("{}.{JOB_TABLE}", ident(&self.target_schema))
    }

    /// Whether the source is the hub, reached through the tunnel (the usual direction);
    /// otherwise the target is.
    pub fn source_is_remote(&self) -> bool {
        self.job.direction == Direction::HubToOffice
    }

    /// The side read, in words.
    pub fn source_name(&self) -> &'static str {
        self.job.direction.source_side()
    }

    /// Bound on a small query to the source.
    pub fn source_timeout(&self) -> Duration {
        if self.source_is_remote() {
            HUB_TIMEOUT
        } else {
            local_timeout(self)
        }
    }

    /// Bound on a write to the target (through the tunnel, a chunk's worth of the line).
    pub fn target_timeout(&self) -> Duration {
        if self.source_is_remote() {
            local_timeout(self)
        } else {
            CHUNK_TIMEOUT
        }
    }

    /// Waits until the tunnel is up; returns its `downs` count (a connection through it
    /// is good until that changes).
    pub async fn link_up(&self, link: &mut watch::Receiver<LinkState>) -> Result<u64, Failure> {
        if !link.borrow().up {
            self.live().waiting_for_link = true;
        }
        let r = tokio::select! {
            () = self.shutdown.cancelled() => Err(Failure::Retry("stopping".into())),
            r = link.wait_for(|l| l.up) => r.map(|l| l.downs).map_err(|_| Failure::Retry("stopping".into())),
        };
        self.live().waiting_for_link = false;
        r
    }

    /// A connection to the source with the seed's session settings.
    pub async fn connect_source(&self) -> Result<mysql_async::Conn, Failure> {
        let t = if self.source_is_remote() {
            HUB_TIMEOUT
        } else {
            self.timeout.max(Duration::from_secs(10))
        };
        connect(&self.source, &self.session(), t, false).await
    }

    /// A connection to the target whose writes are never binary-logged (so nothing the
    /// seed writes replicates back to the source). Through the tunnel (a new hub), with
    /// the client protocol's compression: the rows reach the worker compressed by the
    /// source, but cross to the hub as statement text.
    pub async fn connect_target(&self) -> Result<mysql_async::Conn, Failure> {
        let session = format!("{}; SET SESSION sql_log_bin = 0", self.session());
        let (t, compress) = if self.source_is_remote() {
            (self.timeout.max(Duration::from_secs(10)), false)
        } else {
            (HUB_TIMEOUT, true)
        };
        connect(&self.target, &session, t, compress).await
    }

    fn session(&self) -> String {
        dialect::session_sql(self.job.family, self.job.max_chunk_text)
    }

    /// Sleeps the retry delay, or returns early at shutdown.
    pub async fn pause(&self, backoff: &mut crate::backoff::Backoff, why: &str) {
        let delay = backoff.next_delay(rand::random::<f64>());
        tracing::info!(error = %why, retry_in = ?delay, "seed: retrying");
        self.live().last_error = Some(why.to_owned());
        tokio::select! {
            () = self.shutdown.cancelled() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Connects and applies the session settings, bounded; `compress`: the client protocol's
/// compression (zlib) on everything sent and received.
pub(super) async fn connect(
    target: &DbTarget,
    session: &str,
    t: Duration,
    compress: bool,
) -> Result<mysql_async::Conn, Failure> {
    let mut opts = mysql_async::OptsBuilder::from_opts(crate::replication::opts(target, t));
    if compress {
        opts = opts.compression(mysql_async::Compression::default());
    }
    let mut c = bounded(
        t,
        &format!("connect to {}:{}", target.host, target.port),
        mysql_async::Conn::new(opts),
    )
    .await?;
    bounded(t, "session settings", c.query_drop(session)).await?;
    Ok(c)
}

/// Runs a multi-statement text query and returns the result sets that have columns.
pub(super) async fn result_sets(
    c: &mut mysql_async::Conn,
    sql: &str,
    what: &str,
    t: Duration,
) -> Result<Vec<Vec<mysql_async::Row>>, String> {
    bounded(t, what, async {
        let mut r = c.query_iter(sql).await?;
        let mut sets = Vec::new();
        while !r.is_empty() {
            let has_columns = !r.columns_ref().is_empty();
            let rows: Vec<mysql_async::Row> = r.collect().await?;
            if has_columns {
                sets.push(rows);
            }
        }
        Ok(sets)
    })
    .await
}

/// A text column as a string (NULL as empty).
pub(super) fn text(row: &mysql_async::Row, i: usize) -> String {
    match row.as_ref(i) {
        Some(mysql_async::Value::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(mysql_async::Value::Int(n)) => n.to_string(),
        Some(mysql_async::Value::UInt(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// A numeric column (text protocol), 0 when NULL.
pub(super) fn number(row: &mysql_async::Row, i: usize) -> u64 {
    text(row, i).parse().unwrap_or(0)
}

/// A key from `n` literal columns starting at `from`.
pub(super) fn key_at(row: &mysql_async::Row, from: usize, n: usize) -> Key {
    (from..from + n).map(|i| text(row, i)).collect()
}

/// One chunk as the source sent it.
pub(super) struct Chunk {
    pub rows: u64,
    pub text: Vec<u8>,
    pub wire: u64,
}

/// Reads the (rows, bytes of values, compressed values) row of a chunk query of a table
/// with `columns` copied columns; the chunk's text is its rows', ready for REPLACE.
pub(super) fn unpack_chunk(row: &mysql_async::Row, columns: usize) -> Result<Chunk, String> {
    let rows = number(row, 0);
    let values_len = number(row, 1);
    let compressed: Vec<u8> = match row.as_ref(2) {
        Some(mysql_async::Value::Bytes(b)) => b.clone(),
        _ => Vec::new(),
    };
    let values = uncompress(&compressed)?;
    let count = rows * columns as u64;
    let expected = if count == 0 {
        0
    } else {
        values_len + count - 1
    };
    if values.len() as u64 != expected {
        return Err(format!(
            "a chunk of {rows} rows arrived with {} bytes of values instead of {expected} (cut short by group_concat_max_len?)",
            values.len()
        ));
    }
    Ok(Chunk {
        rows,
        wire: compressed.len() as u64,
        text: super::sql::rows_from_columns(&values, rows as usize, columns)?,
    })
}

/// The bytes `data` takes compressed as the client protocol compresses it (zlib, level 6).
fn zlib_len(data: &[u8]) -> u64 {
    use std::io::Write;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = z.write_all(data);
    z.finish().map_or(data.len() as u64, |c| c.len() as u64)
}

/// Undoes the server's `COMPRESS()`: four bytes of length (little endian), a zlib stream.
pub fn uncompress(data: &[u8]) -> Result<Vec<u8>, String> {
    if data.is_empty() {
        return Ok(Vec::new());
    }
    if data.len() < 4 {
        return Err("a compressed chunk shorter than its header".into());
    }
    let len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize & 0x3FFF_FFFF;
    let mut out = Vec::with_capacity(len);
    flate2::read::ZlibDecoder::new(&data[4..])
        .read_to_end(&mut out)
        .map_err(|e| format!("a chunk did not decompress: {e}"))?;
    if out.len() != len {
        return Err(format!(
            "a chunk decompressed to {} bytes instead of {len}",
            out.len()
        ));
    }
    Ok(out)
}

/// Writes rows (their SQL text) into a table on the target, in the open transaction.
pub(super) async fn replace_rows(
    target: &mut mysql_async::Conn,
    table: &TablePlan,
    rows_text: &[u8],
    t: Duration,
) -> Result<(), String> {
    if rows_text.is_empty() {
        return Ok(());
    }
    bounded(
        t,
        &format!("write rows into {}", table.display()),
        target.query_drop(replace_statement(table, rows_text)),
    )
    .await
}

/// The statement writing rows' text into a table. MariaDB's row text is each value's
/// bytes, read as bytes (`SET NAMES binary`), so each value lands in its column as the
/// source stored it; then back to utf8mb4, in which key literals compare in the columns'
/// collations. MySQL's is utf8mb4 text (and hex literals for bytes), read as such.
fn replace_statement(table: &TablePlan, rows_text: &[u8]) -> Vec<u8> {
    let (prefix, suffix): (String, &[u8]) = match table.family {
        crate::dialect::Family::MariaDb => (
            format!("SET NAMES binary; {}", table.replace_prefix()),
            b"; SET NAMES utf8mb4",
        ),
        crate::dialect::Family::MySql => (table.replace_prefix(), b""),
    };
    let mut stmt = Vec::with_capacity(prefix.len() + rows_text.len() + suffix.len());
    stmt.extend_from_slice(prefix.as_bytes());
    stmt.extend_from_slice(rows_text);
    stmt.extend_from_slice(suffix);
    stmt
}

/// The bound on one local write of a chunk (a big chunk takes a moment).
pub(super) fn local_timeout(sh: &Shared) -> Duration {
    sh.timeout.max(Duration::from_secs(120))
}

/// A worker's connections to both sides, made together while the tunnel is up.
struct Pair {
    source: mysql_async::Conn,
    target: mysql_async::Conn,
    /// The tunnel's `downs` when they were made: the remote one is dead once that changes.
    downs: u64,
    /// Statements PREPAREd on the source (they live as long as the connection).
    prepared: std::collections::HashSet<String>,
}

/// A segment of a table: the rows in (lo, hi], copied in key order.
#[derive(Debug, Clone)]
pub(super) struct Segment {
    pub table: usize,
    pub seg: i64,
    pub hi: Option<Key>,
    /// The last key copied (the segment's `lo` before the first chunk).
    pub after: Option<Key>,
    /// A chunk's row count recorded before it was asked for and cleared when it was
    /// stored: non-zero at resume means that chunk was lost and is sent again.
    pub pending_rows: u64,
    /// The next chunk's row count, recorded as in flight by the transaction that stored
    /// the chunk before it (so it costs no round trip of its own); `None` when not
    /// recorded yet.
    pub next_rows: Option<u64>,
    pub done: bool,
}

fn key_json(key: &Option<Key>) -> Option<String> {
    key.as_ref()
        .map(|k| serde_json::to_string(k).unwrap_or_default())
}

fn key_from_json(text: Option<String>) -> Result<Option<Key>, String> {
    match text {
        None => Ok(None),
        Some(t) => serde_json::from_str(&t)
            .map(Some)
            .map_err(|e| format!("a stored key is not readable ({e})")),
    }
}

/// The job's phase as the target has it (`None`: not planned yet).
pub(super) async fn load_phase(
    sh: &Shared,
    target: &mut mysql_async::Conn,
) -> Result<Option<Phase>, Failure> {
    let t = sh.timeout;
    let row: Option<(String, u64, u64, u64, u64, u64, u64)> = bounded(
        t,
        "read the seed's phase",
        target.exec_first(
            format!(
                "SELECT phase, rows_total, verify_passes, verify_bytes, verify_rows, verify_ms, copy_ms FROM {} WHERE job = ?",
                sh.job_table()
            ),
            (sh.job.id.as_str(),),
        ),
    )
    .await?;
    let Some((phase, total, passes, vbytes, vrows, vms, cms)) = row else {
        return Ok(None);
    };
    let phase = Phase::parse(&phase).ok_or_else(|| {
        Failure::Fatal(format!(
            "unknown seed phase `{phase}` on the {}",
            sh.job.direction.replica_side()
        ))
    })?;
    let sums: Option<(u64, u64, u64, u64, u64, u64)> = bounded(
        t,
        "read the seed's progress",
        target.exec_first(
            format!(
                "SELECT CAST(IFNULL(SUM(rows_done),0) AS UNSIGNED), CAST(IFNULL(SUM(text_bytes),0) AS UNSIGNED), CAST(IFNULL(SUM(wire_bytes),0) AS UNSIGNED), CAST(IFNULL(SUM(chunks),0) AS UNSIGNED), CAST(IFNULL(SUM(resent_bytes),0) AS UNSIGNED), CAST(IFNULL(SUM(resent_chunks),0) AS UNSIGNED) FROM {} WHERE job = ?",
                sh.progress_table()
            ),
            (sh.job.id.as_str(),),
        ),
    )
    .await?;
    let (rows, text, wire, chunks, resent, resent_chunks) = sums.unwrap_or_default();
    let mut live = sh.live();
    live.phase = phase;
    live.rows_total = total;
    live.rows_done = rows;
    live.text_bytes = text;
    live.wire_bytes = wire;
    live.chunks = chunks;
    live.resent_bytes = resent;
    live.resent_chunks = resent_chunks;
    live.verify_passes = passes;
    live.verify_bytes = vbytes;
    live.verify_rows = vrows;
    live.verify_ms = vms;
    live.copy_ms = cms;
    Ok(Some(phase))
}

/// Moves the job to `phase` on the target.
pub(super) async fn set_phase(
    sh: &Shared,
    target: &mut mysql_async::Conn,
    phase: Phase,
) -> Result<(), Failure> {
    let copy_ms = sh.live().copy_ms;
    bounded(
        sh.timeout,
        "record the seed's phase",
        target.exec_drop(
            format!(
                "UPDATE {} SET phase = ?, copy_ms = ? WHERE job = ?",
                sh.job_table()
            ),
            (phase.as_str(), copy_ms, sh.job.id.as_str()),
        ),
    )
    .await?;
    sh.live().phase = phase;
    Ok(())
}

/// Counts every table's rows in one snapshot and cuts each into segments for the
/// parallel workers; recorded on the target in one transaction with the phase.
pub(super) async fn plan(sh: &Shared, target: &mut mysql_async::Conn) -> Result<(), Failure> {
    let mut link = sh.link.clone();
    sh.link_up(&mut link).await?;
    let mut source = sh.connect_source().await?;
    let st = sh.source_timeout();
    bounded(
        st,
        "open a snapshot",
        source.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT"),
    )
    .await?;
    let counts_sql: Vec<String> = sh
        .job
        .tables
        .iter()
        .map(|t| format!("SELECT COUNT(*) FROM {}", t.qualified()))
        .collect();
    // A source without tables has nothing to count (an empty query is an error).
    let sets = if counts_sql.is_empty() {
        Vec::new()
    } else {
        result_sets(&mut source, &counts_sql.join("; "), "count rows", st * 5).await?
    };
    let counts: Vec<u64> = sets
        .iter()
        .map(|s| s.first().map(|r| number(r, 0)).unwrap_or(0))
        .collect();
    if counts.len() != sh.job.tables.len() {
        return Err(Failure::Retry(
            "the source answered fewer row counts than tables".into(),
        ));
    }
    let workers = u64::from(sh.job.workers.max(1));
    let mut segments: Vec<(usize, Range, u64)> = Vec::new();
    for (i, table) in sh.job.tables.iter().enumerate() {
        let rows = counts[i];
        let pieces = rows.div_ceil(10_000).clamp(1, workers * 4);
        if pieces == 1 {
            segments.push((i, Range::ALL, rows));
            continue;
        }
        let step = rows.div_ceil(pieces);
        let sets = result_sets(
            &mut source,
            &table.split_keys_sql(&[(0, &Range::ALL, step)]),
            "cut a table into segments",
            st * 5,
        )
        .await?;
        let mut keyed: Vec<(u64, Key)> = sets
            .into_iter()
            .flatten()
            .map(|r| (number(&r, 1), key_at(&r, 2, table.key.len())))
            .collect();
        keyed.sort_by_key(|(rn, _)| *rn);
        let keys: Vec<Key> = keyed.into_iter().map(|(_, k)| k).collect();
        for range in Range::ALL.split_at(&keys) {
            segments.push((i, range, step));
        }
    }
    let _ = bounded(st, "end the snapshot", source.query_drop("COMMIT")).await;
    let total: u64 = counts.iter().sum();
    let t = sh.target_timeout();
    let id = sh.job.id.as_str();
    bounded(t, "record the plan", async {
        target.query_drop("START TRANSACTION").await?;
        target
            .exec_drop(format!("DELETE FROM {} WHERE job <> ?", sh.progress_table()), (id,))
            .await?;
        target
            .exec_drop(format!("DELETE FROM {} WHERE job = ?", sh.progress_table()), (id,))
            .await?;
        target
            .exec_drop(format!("DELETE FROM {}", sh.job_table()), ())
            .await?;
        target
            .exec_drop(
                format!(
                    "INSERT INTO {} (job, phase, rows_total) VALUES (?, 'copy', ?)",
                    sh.job_table()
                ),
                (id, total),
            )
            .await?;
        for (n, (table, range, rows)) in segments.iter().enumerate() {
            target
                .exec_drop(
                    format!(
                        "INSERT INTO {} (job, tbl, seg, lo, hi, rows_total) VALUES (?, ?, ?, ?, ?, ?)",
                        sh.progress_table()
                    ),
                    (
                        id,
                        *table as u64,
                        n as u64,
                        key_json(&range.lo),
                        key_json(&range.hi),
                        *rows,
                    ),
                )
                .await?;
        }
        target.query_drop("COMMIT").await
    })
    .await?;
    let mut live = sh.live();
    live.phase = Phase::Copy;
    live.rows_total = total;
    tracing::info!(rows = total, segments = segments.len(), "seed: planned");
    Ok(())
}

/// Copies every segment not yet done, with the job's number of parallel readers.
pub(super) async fn copy(sh: &Arc<Shared>, target: &mut mysql_async::Conn) -> Result<(), Failure> {
    /// table, segment, lo, hi, last key, pending rows, done
    type SegmentRow = (
        u64,
        i64,
        Option<String>,
        Option<String>,
        Option<String>,
        u64,
        u8,
    );
    let rows: Vec<SegmentRow> = bounded(
        sh.timeout,
        "read the segments",
        target.exec(
            format!(
                "SELECT tbl, seg, lo, hi, last_key, pending_rows, done FROM {} WHERE job = ? ORDER BY seg",
                sh.progress_table()
            ),
            (sh.job.id.as_str(),),
        ),
    )
    .await?;
    let mut queue = VecDeque::new();
    for (tbl, seg, lo, hi, last, pending, done) in rows {
        if done != 0 {
            continue;
        }
        let table = tbl as usize;
        if table >= sh.job.tables.len() {
            return Err(Failure::Fatal(format!(
                "the seed's progress names table {table}, which this job does not have"
            )));
        }
        let lo = key_from_json(lo).map_err(Failure::Fatal)?;
        let last = key_from_json(last).map_err(Failure::Fatal)?;
        queue.push_back(Segment {
            table,
            seg,
            hi: key_from_json(hi).map_err(Failure::Fatal)?,
            after: last.or(lo),
            pending_rows: pending,
            next_rows: None,
            done: false,
        });
    }
    let queue = Arc::new(Mutex::new(queue));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..sh.job.workers.max(1) {
        let (sh, queue) = (sh.clone(), queue.clone());
        workers.spawn(async move { copy_worker(&sh, &queue).await });
    }
    while let Some(r) = workers.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(Failure::Fatal(format!("a copy worker failed: {e}"))),
        }
    }
    if sh.shutdown.is_cancelled() {
        return Err(Failure::Retry("stopping".into()));
    }
    // From the job's creation, whatever restarts and outages happened in between.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    sh.live().copy_ms = now.saturating_sub(sh.job.created_unix) * 1000;
    if sh.source_is_remote() {
        set_phase(sh, target, Phase::Verify).await
    } else {
        // A new hub's connection from before the copy may have died with a cut since.
        let mut fresh = sh.connect_target().await?;
        set_phase(sh, &mut fresh, Phase::Verify).await
    }
}

/// One worker: takes segments from the queue and copies each to its end.
async fn copy_worker(sh: &Shared, queue: &Mutex<VecDeque<Segment>>) -> Result<(), Failure> {
    let mut link = sh.link.clone();
    let mut pair: Option<Pair> = None;
    let mut sizers: HashMap<usize, ChunkSizer> = HashMap::new();
    let mut backoff = crate::backoff::Backoff::new(RETRY);
    loop {
        let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        let Some(mut seg) = next else {
            return Ok(());
        };
        // After a failure the segment is read again from the target: a store cut off
        // through the tunnel (a new hub) may have committed or not.
        let mut reread = false;
        while !seg.done {
            if sh.shutdown.is_cancelled() {
                return Ok(());
            }
            let sizer = sizers.entry(seg.table).or_insert_with(|| {
                ChunkSizer::new(sh.job.estimated_wire_bytes, sh.job.max_chunk_text)
            });
            match copy_chunk(sh, &mut link, &mut seg, &mut pair, sizer, reread).await {
                Ok(()) => {
                    backoff.reset();
                    reread = false;
                }
                Err(Failure::Fatal(e)) => return Err(Failure::Fatal(e)),
                Err(Failure::Retry(e)) => {
                    pair = None;
                    reread = true;
                    sh.pause(&mut backoff, &e).await;
                }
            }
        }
    }
}

/// Reads a segment's progress as the target has it.
async fn reread_segment(
    sh: &Shared,
    target: &mut mysql_async::Conn,
    seg: &mut Segment,
) -> Result<(), Failure> {
    let row: Option<(Option<String>, Option<String>, u64, u8)> = bounded(
        sh.target_timeout(),
        "read a segment's progress",
        target.exec_first(
            format!(
                "SELECT lo, last_key, pending_rows, done FROM {} WHERE job = ? AND tbl = ? AND seg = ?",
                sh.progress_table()
            ),
            (sh.job.id.as_str(), seg.table as u64, seg.seg),
        ),
    )
    .await?;
    let Some((lo, last, pending, done)) = row else {
        return Err(Failure::Fatal(format!(
            "the seed's progress lost segment {} of {}",
            seg.seg,
            sh.table(seg.table).display()
        )));
    };
    let lo = key_from_json(lo).map_err(Failure::Fatal)?;
    let last = key_from_json(last).map_err(Failure::Fatal)?;
    seg.after = last.or(lo);
    seg.pending_rows = pending;
    seg.next_rows = None;
    seg.done = done != 0;
    Ok(())
}

/// Reads the segment's next chunk from the source and stores it on the target with its
/// progress, in one target transaction.
async fn copy_chunk(
    sh: &Shared,
    link: &mut watch::Receiver<LinkState>,
    seg: &mut Segment,
    pair: &mut Option<Pair>,
    sizer: &mut ChunkSizer,
    reread: bool,
) -> Result<(), Failure> {
    if pair
        .as_ref()
        .is_some_and(|p| p.downs != link.borrow().downs)
    {
        *pair = None;
    }
    if pair.is_none() {
        let downs = sh.link_up(link).await?;
        *pair = Some(Pair {
            source: sh.connect_source().await?,
            target: sh.connect_target().await?,
            downs,
            prepared: std::collections::HashSet::new(),
        });
    }
    let Some(p) = pair.as_mut() else {
        return Err(Failure::Retry("no connection".into()));
    };
    if reread {
        reread_segment(sh, &mut p.target, seg).await?;
        if seg.done {
            return Ok(());
        }
    }
    let table = sh.table(seg.table);
    let resend = seg.pending_rows > 0;
    {
        let l = sh.live();
        sizer.set_total(super::progress::copy_estimate(
            sh.job.estimated_wire_bytes,
            l.wire_bytes,
            l.rows_done,
            l.rows_total,
        ));
    }
    let limit = if resend {
        sizer.lost(seg.pending_rows);
        seg.pending_rows
    } else if let Some(n) = seg.next_rows.take() {
        seg.pending_rows = n;
        n
    } else {
        let n = sizer.rows();
        bounded(
            sh.target_timeout(),
            "mark a chunk in flight",
            p.target.exec_drop(
                format!(
                    "UPDATE {} SET pending_rows = ? WHERE job = ? AND tbl = ? AND seg = ?",
                    sh.progress_table()
                ),
                (n, sh.job.id.as_str(), seg.table as u64, seg.seg),
            ),
        )
        .await?;
        seg.pending_rows = n;
        n
    };
    let range = Range {
        lo: seg.after.clone(),
        hi: seg.hi.clone(),
    };
    let statements = table.chunk_statements(seg.table, &range, limit);
    let mut sql = String::new();
    if !statements.names.iter().all(|n| p.prepared.contains(n)) {
        for prepare in &statements.prepare {
            sql.push_str(prepare);
            sql.push_str("; ");
        }
    }
    sql.push_str(&format!(
        "START TRANSACTION WITH CONSISTENT SNAPSHOT; {}; COMMIT",
        statements.execute
    ));
    let my_downs = p.downs;
    let what = format!("read a chunk of {}", table.display());
    let work = async {
        let asked = Instant::now();
        let sets = result_sets(&mut p.source, &sql, &what, CHUNK_TIMEOUT).await?;
        let read = asked.elapsed();
        p.prepared.extend(statements.names.iter().cloned());
        let [end, chunk] = sets.as_slice() else {
            return Err(Failure::Retry(format!(
                "a chunk query gave {} result sets instead of 2",
                sets.len()
            )));
        };
        let end_key = end.first().map(|r| key_at(r, 0, table.key.len()));
        let chunk = chunk
            .first()
            .ok_or_else(|| Failure::Retry("a chunk query gave no row".into()))
            .and_then(|r| unpack_chunk(r, table.columns.len()).map_err(Failure::Retry))?;
        let done = end_key.is_none();
        let last_key = end_key
            .clone()
            .or_else(|| seg.hi.clone())
            .or(seg.after.clone());
        let text_len = chunk.text.len() as u64;
        let rows_statement = if chunk.text.is_empty() {
            Vec::new()
        } else {
            replace_statement(table, &chunk.text)
        };
        // What crosses the line: the chunk as the hub compressed it, or, to a new hub, the
        // statement as the client protocol compresses it (rows after rows compress less
        // well than the hub's column after column).
        let wire = if sh.source_is_remote() {
            chunk.wire
        } else {
            zlib_len(&rows_statement)
        };
        let (resent_bytes, resent_chunks) = if resend { (wire, 1u64) } else { (0, 0) };
        // The next chunk's size, recorded as in flight in the same transaction.
        let next = if done { 0 } else { sizer.rows() };
        // One round trip: on a new hub each statement would cost one across the line.
        let mut store = b"START TRANSACTION; ".to_vec();
        if !rows_statement.is_empty() {
            store.extend(rows_statement);
            store.extend_from_slice(b"; ");
        }
        store.extend(
            format!(
                "UPDATE {} SET last_key = {}, rows_done = rows_done + {}, text_bytes = text_bytes + {text_len}, wire_bytes = wire_bytes + {}, chunks = chunks + 1, resent_bytes = resent_bytes + {resent_bytes}, resent_chunks = resent_chunks + {resent_chunks}, pending_rows = {next}, done = {} WHERE job = {} AND tbl = {} AND seg = {}; COMMIT",
                sh.progress_table(),
                key_json(&last_key).map_or_else(|| "NULL".to_owned(), |k| super::sql::literal(&k)),
                chunk.rows,
                wire,
                u8::from(done),
                super::sql::literal(&sh.job.id),
                seg.table,
                seg.seg,
            )
            .into_bytes(),
        );
        let stored = Instant::now();
        bounded(
            sh.target_timeout(),
            &format!("store a chunk of {}", table.display()),
            p.target.query_drop(store),
        )
        .await?;
        // The time the line took: reading from a hub, or storing on one.
        let elapsed = if sh.source_is_remote() {
            read
        } else {
            stored.elapsed()
        };
        Ok((
            chunk.rows,
            wire,
            done,
            last_key,
            next,
            text_len,
            resent_bytes,
            resent_chunks,
            elapsed,
        ))
    };
    let (rows, wire, done, last_key, next, text_len, resent_bytes, resent_chunks, elapsed) = tokio::select! {
        r = work => r?,
        _ = link.wait_for(|l| l.downs != my_downs) => {
            return Err(Failure::Retry("the link went down during a chunk".into()));
        }
        () = sh.shutdown.cancelled() => return Err(Failure::Retry("stopping".into())),
    };
    sizer.observe(rows, text_len, wire, elapsed);
    seg.after = last_key;
    seg.pending_rows = 0;
    seg.next_rows = (!done).then_some(next);
    seg.done = done;
    let mut live = sh.live();
    live.rows_done += rows;
    live.text_bytes += text_len;
    live.wire_bytes += wire;
    live.chunks += 1;
    live.resent_bytes += resent_bytes;
    live.resent_chunks += resent_chunks;
    let now = live.started.elapsed();
    live.window.add(now, rows, wire);
    live.last_error = None;
    Ok(())
}

/// Points the target's replica at the copy's position, once the target equals the final
/// snapshot (recorded by verification with that position). Safe to repeat after a
/// restart: the replica is moved only if it is still where the seed found it.
pub(super) async fn finish(sh: &Shared, target: &mut mysql_async::Conn) -> Result<(), Failure> {
    let t = sh.timeout.max(Duration::from_secs(10));
    let gtid: Option<Option<String>> = bounded(
        t,
        "read the copy's position",
        target.exec_first(
            format!("SELECT gtid FROM {} WHERE job = ?", sh.job_table()),
            (sh.job.id.as_str(),),
        ),
    )
    .await?;
    let Some(Some(gtid)) = gtid else {
        return Err(Failure::Fatal(
            "no position is recorded for the finished copy".into(),
        ));
    };
    for trigger in &sh.job.triggers {
        bounded(t, "create a trigger", target.query_drop(trigger.as_str())).await?;
    }
    let row = dialect::replica_status(target, sh.job.family, t).await?;
    let running = row
        .as_ref()
        .and_then(|r| {
            r.get("Slave_SQL_Running")
                .or_else(|| r.get("Replica_SQL_Running"))
        })
        .is_some_and(|v| v == "Yes");
    let now = dialect::replica_position(target, sh.job.family, t).await?;
    if !running && (now == sh.job.target_replica_before || now == gtid) {
        if let Some(r) = &row {
            dialect::use_gtid_positions(target, sh.job.family, r, t).await?;
        }
        let started = dialect::start_replica_at(target, sh.job.family, &gtid, t).await?;
        tracing::info!(%gtid, started, target = sh.job.direction.replica_side(), "seed: the target's replica starts at the copy's position");
        sh.live().replica_started = Some(started);
    } else {
        sh.live().replica_started = Some(row.is_some());
    }
    set_phase(sh, target, Phase::Done).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// What the server's COMPRESS() returns: the length, then a zlib stream (and a '.'
    /// when the stream ends in a space).
    fn compress(text: &[u8]) -> Vec<u8> {
        let mut out = (text.len() as u32).to_le_bytes().to_vec();
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
        z.write_all(text).unwrap();
        out.extend(z.finish().unwrap());
        out.push(b'.');
        out
    }

    #[test]
    fn chunks_decompress_as_the_server_compressed_them() {
        let text = b"(1,_binary'a\\'b',NULL),(2,_binary'\\0\xff',3.5)";
        assert_eq!(uncompress(&compress(text)).unwrap(), text);
        assert_eq!(uncompress(&[]).unwrap(), Vec::<u8>::new());
        assert!(uncompress(&[1, 2]).is_err());
        let mut wrong = compress(text);
        wrong[0] ^= 1;
        assert!(uncompress(&wrong).unwrap_err().contains("instead of"));
    }

    #[test]
    fn refusals_and_broken_sql_stop_the_job_while_the_link_is_retried() {
        for fatal in [
            "store a chunk: ERROR 1045 (28000): Access denied for user 'tether_seed'",
            "read a chunk: ERROR 1146 (42S02): Table 'app.t' doesn't exist",
            "read a chunk: ERROR 1142 (42000): SELECT command denied",
        ] {
            assert!(
                matches!(Failure::classify(fatal.into()), Failure::Fatal(_)),
                "{fatal}"
            );
        }
        for retry in [
            "read a chunk: Input/output error: connection reset",
            "connect to 127.0.0.1:3307: no answer within 60s",
            "store a chunk: ERROR 1213 (40001): Deadlock found",
        ] {
            assert!(
                matches!(Failure::classify(retry.into()), Failure::Retry(_)),
                "{retry}"
            );
        }
    }
}
