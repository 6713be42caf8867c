//! Verification: makes the target equal to one final snapshot of the source, exactly.
//!
//! The copy read each chunk at its own moment while the source kept writing, so the
//! target holds a mix of moments. One snapshot is opened on the source, with the binary
//! log position it corresponds to; each table is compared by range on both sides (row
//! count and XOR of 64-bit row hashes, a few bytes a range), a differing range is cut
//! into smaller ones (16 each, up to 256 for a big one, at keys read from the side with
//! more rows), and small ranges are compared row by row (key and hash), so that only rows
//! that differ cross again: the target deletes rows the snapshot does not have and takes
//! the snapshot's version of the others. A range the target has no rows of is copied
//! whole; one the source has none of is emptied. A last comparison of every table that
//! differed, in the same snapshot, must then find nothing; the snapshot's position is
//! recorded in the same target transaction as the source's heartbeat rows as of that
//! snapshot, and replication starts from there: nothing written on the source is lost or
//! applied twice.
//!
//! A cut ends the snapshot; the next pass opens a new one and starts over (rows repaired
//! so far stay repaired: the new pass finds only what changed since).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;

use super::dialect;
use super::job::Phase;
use super::progress::ChunkSizer;
use super::run::{
    Failure, HUB_TIMEOUT, Shared, key_at, number, replace_rows, result_sets, text, unpack_chunk,
};
use super::sql::{Key, Range, comparable_definition};
use crate::replication::bounded;

/// How many pieces a differing range is cut into (at least).
const FAN_OUT: u64 = 16;
/// Ranges with at most this many rows on both sides are compared row by row.
const LEAF_ROWS: u64 = 64;
/// Rows a range is cut down to before that (below LEAF_ROWS: rows the source inserted since
/// the copy, and rounding, must not cost another level).
const LEAF_TARGET: u64 = 48;
/// Ranges (or keys) per statement.
const BATCH: usize = 64;
/// Passes before giving up (each one ends with a cut, or with a table that still
/// differs, which means something else writes to the target's copy).
const MAX_PASSES: usize = 50;

/// Runs passes until one completes; the phase is then `finishing` on the target.
pub(super) async fn run(sh: &Shared) -> Result<(), String> {
    let mut backoff = crate::backoff::Backoff::new(crate::backoff::BackoffPolicy {
        min: Duration::from_millis(500),
        max: Duration::from_secs(15),
        jitter_pct: 20,
    });
    for _ in 0..MAX_PASSES {
        if sh.shutdown.is_cancelled() {
            return Err("stopping".into());
        }
        match pass(sh).await {
            Ok(()) => return Ok(()),
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Retry(e)) => sh.pause(&mut backoff, &e).await,
        }
    }
    Err(format!(
        "the check against the {} did not complete in {MAX_PASSES} attempts (last: {}); if something writes to the seeded tables on the {}, stop it and restart the agent",
        sh.source_name(),
        sh.live().last_error.clone().unwrap_or_default(),
        sh.job.direction.replica_side()
    ))
}

/// Aggregate of a range: (rows, XOR of row hashes).
type Aggregate = (u64, u64);

/// One pass against one snapshot.
async fn pass(sh: &Shared) -> Result<(), Failure> {
    let started = Instant::now();
    let mut link = sh.link.clone();
    let downs = sh.link_up(&mut link).await?;
    let mut source = sh.connect_source().await?;
    let mut target = sh.connect_target().await?;
    let position = dialect::open_snapshot(&mut source, sh.job.family, sh.source_timeout())
        .await
        .map_err(Failure::classify)?;
    sh.live().verify_passes += 1;
    let before = session_bytes(sh, &mut source, &mut target).await?;
    let work = async {
        check_definitions(sh, &mut source).await?;
        let mut level: Vec<(usize, Range)> =
            (0..sh.job.tables.len()).map(|i| (i, Range::ALL)).collect();
        let mut repaired = BTreeSet::new();
        while !level.is_empty() {
            level = compare_level(sh, &mut source, &mut target, level, &mut repaired).await?;
        }
        // The proof: every table that differed, compared whole again in the same snapshot
        // (the others were equal and nothing touched them since).
        let whole: Vec<(usize, Range)> = repaired.iter().map(|i| (*i, Range::ALL)).collect();
        let left = compare_level(sh, &mut source, &mut target, whole, &mut BTreeSet::new()).await?;
        if !left.is_empty() {
            return Err(Failure::Retry(
                "a table still differed from the snapshot after repair; checking again".into(),
            ));
        }
        let beats = source_heartbeats(sh, &mut source, &mut target).await?;
        Ok::<_, Failure>(beats)
    };
    let beats = tokio::select! {
        r = work => r?,
        _ = link.wait_for(|l| l.downs != downs) => {
            return Err(Failure::Retry("the link went down during verification".into()));
        }
        () = sh.shutdown.cancelled() => return Err(Failure::Retry("stopping".into())),
    };
    let after = session_bytes(sh, &mut source, &mut target).await?;
    let t = sh.target_timeout();
    let (passes, bytes, rows, ms) = {
        let mut live = sh.live();
        live.verify_bytes += after.saturating_sub(before);
        live.verify_ms += started.elapsed().as_millis() as u64;
        (
            live.verify_passes,
            live.verify_bytes,
            live.verify_rows,
            live.verify_ms,
        )
    };
    // The target equals the snapshot: record its position with the source's heartbeat as
    // of the snapshot (the replica's first update of that row must find it).
    let heartbeat = format!("{}.heartbeat", super::sql::ident(&sh.target_schema));
    bounded(t, "record the copy's position", async {
        target.query_drop("START TRANSACTION").await?;
        for (server_id, beat) in &beats {
            target
                .exec_drop(
                    format!("INSERT INTO {heartbeat} (server_id, beat_us) VALUES (?, ?) ON DUPLICATE KEY UPDATE beat_us = VALUES(beat_us)"),
                    (*server_id, *beat),
                )
                .await?;
        }
        target
            .exec_drop(
                format!(
                    "UPDATE {} SET phase = ?, gtid = ?, verify_passes = ?, verify_bytes = ?, verify_rows = ?, verify_ms = ? WHERE job = ?",
                    sh.job_table()
                ),
                (
                    Phase::Finishing.as_str(),
                    position.as_str(),
                    passes,
                    bytes,
                    rows,
                    ms,
                    sh.job.id.as_str(),
                ),
            )
            .await?;
        target.query_drop("COMMIT").await
    })
    .await?;
    sh.live().phase = Phase::Finishing;
    let _ = bounded(
        sh.source_timeout(),
        "end the snapshot",
        source.query_drop("COMMIT"),
    )
    .await;
    tracing::info!(%position, passes, bytes, rows, ms, "seed: the target equals the source's snapshot");
    Ok(())
}

/// Bytes the hub sent and received on its connection (the one through the tunnel) so
/// far.
async fn session_bytes(
    sh: &Shared,
    source: &mut mysql_async::Conn,
    target: &mut mysql_async::Conn,
) -> Result<u64, Failure> {
    let hub = if sh.source_is_remote() {
        source
    } else {
        target
    };
    let rows: Vec<(String, String)> = bounded(
        HUB_TIMEOUT,
        "read the session's bytes",
        hub.query("SHOW SESSION STATUS WHERE Variable_name IN ('Bytes_sent', 'Bytes_received')"),
    )
    .await?;
    Ok(rows.iter().filter_map(|(_, v)| v.parse::<u64>().ok()).sum())
}

/// Stops the seed when a table's definition on the source changed since it was planned (the
/// copy would no longer fit it), or when the plan leaves out a stored column: the
/// comparison covers exactly the copied columns, so "equal" must mean every stored value.
async fn check_definitions(sh: &Shared, source: &mut mysql_async::Conn) -> Result<(), Failure> {
    for table in &sh.job.tables {
        let uncovered = super::sql::uncovered_columns(&table.create_sql, &table.columns);
        if !uncovered.is_empty() {
            return Err(Failure::Fatal(format!(
                "the seed's plan for {} leaves out the columns {}, so it can neither copy nor check them; start it again with `{}`",
                table.display(),
                uncovered.join(", "),
                super::start_again(sh.job.direction)
            )));
        }
        let row: Option<(String, String)> = bounded(
            sh.source_timeout(),
            "read a table definition",
            source.query_first(format!("SHOW CREATE TABLE {}", table.qualified())),
        )
        .await?;
        let now = row.map(|(_, sql)| sql).unwrap_or_default();
        if comparable_definition(&now) != comparable_definition(&table.create_sql) {
            return Err(Failure::Fatal(format!(
                "the definition of {} changed on the {} during the seed; start it again with `{}`",
                table.display(),
                sh.source_name(),
                super::start_again(sh.job.direction)
            )));
        }
    }
    Ok(())
}

/// The source's heartbeat rows as of the snapshot, except the target's own.
async fn source_heartbeats(
    sh: &Shared,
    source: &mut mysql_async::Conn,
    target: &mut mysql_async::Conn,
) -> Result<Vec<(u64, i64)>, Failure> {
    let target_id: Option<u64> = bounded(
        sh.timeout,
        "target server_id",
        target.query_first("SELECT @@server_id"),
    )
    .await?;
    let sql = format!(
        "SELECT server_id, beat_us FROM {}.heartbeat WHERE server_id <> {}",
        super::sql::ident(&sh.source_schema),
        target_id.unwrap_or(0)
    );
    match bounded(
        sh.source_timeout(),
        "read the source's heartbeat",
        source.query(sql),
    )
    .await
    {
        Ok(rows) => Ok(rows),
        // No heartbeat table on the source yet: nothing of it will replicate either.
        Err(e) if e.contains("ERROR 1146 ") => Ok(Vec::new()),
        Err(e) => Err(Failure::classify(e)),
    }
}

/// Compares the given ranges on both sides (one round trip to the source for all of them,
/// the target's answer computed meanwhile), repairs what can be repaired at this level
/// and returns the smaller ranges to compare next.
async fn compare_level(
    sh: &Shared,
    source: &mut mysql_async::Conn,
    target: &mut mysql_async::Conn,
    level: Vec<(usize, Range)>,
    differed: &mut BTreeSet<usize>,
) -> Result<Vec<(usize, Range)>, Failure> {
    let started = Instant::now();
    let sql = per_table(sh, &level, |table, ranges| table.aggregates_sql(ranges));
    let (at_source, at_target) = tokio::try_join!(
        aggregates(source, &sql, level.len(), sh.source_timeout()),
        aggregates(target, &sql, level.len(), sh.target_timeout()),
    )?;
    sh.live().verify_ranges += level.len() as u64;
    let mut leaves = Vec::new();
    let mut split_target = Vec::new();
    let mut split_source = Vec::new();
    let mut differ = 0;
    for (i, (t, range)) in level.iter().enumerate() {
        let (h, o) = (at_source[i], at_target[i]);
        if h == o {
            continue;
        }
        differ += 1;
        differed.insert(*t);
        if h.0 == 0 {
            delete_range(sh, target, *t, range, o.0).await?;
        } else if o.0 == 0 {
            copy_range(sh, source, target, *t, range).await?;
        } else if h.0 <= LEAF_ROWS && o.0 <= LEAF_ROWS {
            leaves.push((*t, range.clone()));
        } else if o.0 * 2 >= h.0 {
            split_target.push((*t, range.clone(), o.0));
        } else {
            split_source.push((*t, range.clone(), h.0));
        }
    }
    repair_rows(sh, source, target, &leaves).await?;
    let mut next = Vec::new();
    for (list, at_source) in [(split_target, false), (split_source, true)] {
        if list.is_empty() {
            continue;
        }
        let (conn, timeout) = if at_source {
            (&mut *source, sh.source_timeout())
        } else {
            (&mut *target, sh.target_timeout())
        };
        let keys = split_keys(sh, conn, &list, timeout).await?;
        for (i, (t, range, _)) in list.iter().enumerate() {
            let cuts = keys.get(&i).cloned().unwrap_or_default();
            for piece in range.split_at(&cuts) {
                next.push((*t, piece));
            }
        }
    }
    tracing::info!(
        ranges = level.len(),
        differ,
        leaves = leaves.len(),
        next = next.len(),
        ms = started.elapsed().as_millis() as u64,
        "seed: verification level"
    );
    Ok(next)
}

/// One multi-statement text for ranges of several tables: `each` builds one table's
/// statement for (global index, range) pairs; statements hold at most BATCH ranges.
fn per_table<'a>(
    sh: &Shared,
    items: &'a [(usize, Range)],
    each: impl Fn(&super::sql::TablePlan, &[(usize, &'a Range)]) -> String,
) -> Vec<String> {
    let mut by_table: BTreeMap<usize, Vec<(usize, &Range)>> = BTreeMap::new();
    for (i, (t, r)) in items.iter().enumerate() {
        by_table.entry(*t).or_default().push((i, r));
    }
    let mut statements = Vec::new();
    for (t, ranges) in by_table {
        for batch in ranges.chunks(BATCH) {
            statements.push(each(sh.table(t), batch));
        }
    }
    // A few statements a request: one round trip, a bounded request size.
    statements
        .chunks(16)
        .map(|group| group.join("; "))
        .collect()
}

/// (rows, XOR of row hashes) per range, by global index.
async fn aggregates(
    c: &mut mysql_async::Conn,
    requests: &[String],
    n: usize,
    t: Duration,
) -> Result<Vec<Aggregate>, Failure> {
    let mut out = vec![(0u64, 0u64); n];
    for sql in requests {
        for row in result_sets(c, sql, "compare ranges", t)
            .await?
            .into_iter()
            .flatten()
        {
            let i = number(&row, 0) as usize;
            if i < n {
                out[i] = (number(&row, 1), number(&row, 2));
            }
        }
    }
    Ok(out)
}

/// How many pieces a differing range of `rows` rows is cut into: FAN_OUT, or more for a
/// big range (up to 256), so that two cuts reach ranges compared row by row. Each level
/// reads every row of its ranges on both servers: fewer levels, fewer reads.
fn pieces(rows: u64) -> u64 {
    rows.div_ceil(LEAF_TARGET * FAN_OUT).clamp(FAN_OUT, 256)
}

/// Keys cutting each range into `pieces`, by index into `list`.
async fn split_keys(
    sh: &Shared,
    c: &mut mysql_async::Conn,
    list: &[(usize, Range, u64)],
    t: Duration,
) -> Result<HashMap<usize, Vec<Key>>, Failure> {
    let mut by_table: BTreeMap<usize, Vec<(usize, &Range, u64)>> = BTreeMap::new();
    for (i, (table, r, rows)) in list.iter().enumerate() {
        by_table
            .entry(*table)
            .or_default()
            .push((i, r, rows.div_ceil(pieces(*rows)).max(1)));
    }
    let mut keyed: Vec<(usize, u64, Key)> = Vec::new();
    for (table, ranges) in by_table {
        let plan = sh.table(table);
        for batch in ranges.chunks(BATCH) {
            let sets = result_sets(c, &plan.split_keys_sql(batch), "cut ranges", t).await?;
            keyed.extend(sets.into_iter().flatten().map(|r| {
                (
                    number(&r, 0) as usize,
                    number(&r, 1),
                    key_at(&r, 2, plan.key.len()),
                )
            }));
        }
    }
    keyed.sort_by_key(|(i, rn, _)| (*i, *rn));
    let mut out: HashMap<usize, Vec<Key>> = HashMap::new();
    for (i, _, k) in keyed {
        out.entry(i).or_default().push(k);
    }
    Ok(out)
}

/// Empties a range on the target (the snapshot has no rows there).
async fn delete_range(
    sh: &Shared,
    target: &mut mysql_async::Conn,
    t: usize,
    range: &Range,
    rows: u64,
) -> Result<(), Failure> {
    let table = sh.table(t);
    bounded(
        sh.target_timeout(),
        "delete rows the source no longer has",
        target.query_drop(table.delete_range_sql(range)),
    )
    .await?;
    sh.live().verify_rows += rows;
    Ok(())
}

/// Copies a whole range from the snapshot (the target has none of its rows).
async fn copy_range(
    sh: &Shared,
    source: &mut mysql_async::Conn,
    target: &mut mysql_async::Conn,
    t: usize,
    range: &Range,
) -> Result<(), Failure> {
    let table = sh.table(t);
    let mut sizer = ChunkSizer::new(sh.job.estimated_wire_bytes, sh.job.max_chunk_text);
    {
        let l = sh.live();
        sizer.set_total(super::progress::copy_estimate(
            sh.job.estimated_wire_bytes,
            l.wire_bytes,
            l.rows_done,
            l.rows_total,
        ));
    }
    let mut after = range.lo.clone();
    loop {
        let piece = Range {
            lo: after.clone(),
            hi: range.hi.clone(),
        };
        let limit = sizer.rows();
        let asked = Instant::now();
        let sql = format!(
            "{}; {}",
            table.chunk_end_sql(&piece, limit),
            table.chunk_sql(&piece, limit)
        );
        let sets = result_sets(source, &sql, "copy a range", super::run::CHUNK_TIMEOUT).await?;
        let [end, chunk] = sets.as_slice() else {
            return Err(Failure::Retry(
                "a range copy gave an unexpected answer".into(),
            ));
        };
        let end_key = end.first().map(|r| key_at(r, 0, table.key.len()));
        let chunk = chunk
            .first()
            .ok_or_else(|| Failure::Retry("a range copy gave no row".into()))
            .and_then(|r| unpack_chunk(r, table.columns.len()).map_err(Failure::Retry))?;
        sizer.observe(
            chunk.rows,
            chunk.text.len() as u64,
            chunk.wire,
            asked.elapsed(),
        );
        let ot = sh.target_timeout();
        bounded(ot, "store a range", async {
            target.query_drop("START TRANSACTION").await?;
            Ok(())
        })
        .await?;
        replace_rows(target, table, &chunk.text, ot).await?;
        bounded(ot, "store a range", target.query_drop("COMMIT")).await?;
        sh.live().verify_rows += chunk.rows;
        match end_key {
            Some(k) => after = Some(k),
            None => return Ok(()),
        }
    }
}

/// Compares small ranges row by row (one round trip to the source for all of them) and
/// repairs the rows that differ.
async fn repair_rows(
    sh: &Shared,
    source: &mut mysql_async::Conn,
    target: &mut mysql_async::Conn,
    leaves: &[(usize, Range)],
) -> Result<(), Failure> {
    if leaves.is_empty() {
        return Ok(());
    }
    let sql = per_table(sh, leaves, |table, ranges| table.row_hashes_sql(ranges));
    let (at_source, at_target) = tokio::try_join!(
        row_hashes(sh, source, &sql, leaves, sh.source_timeout()),
        row_hashes(sh, target, &sql, leaves, sh.target_timeout()),
    )?;
    let mut by_table: BTreeMap<usize, (Vec<Key>, Vec<Key>)> = BTreeMap::new();
    for ((t, key), hash) in &at_source {
        if at_target.get(&(*t, key.clone())) != Some(hash) {
            by_table.entry(*t).or_default().0.push(key.clone());
        }
    }
    for (t, key) in at_target.keys() {
        if !at_source.contains_key(&(*t, key.clone())) {
            by_table.entry(*t).or_default().1.push(key.clone());
        }
    }
    let ot = sh.target_timeout();
    for (t, (wanted, stale)) in by_table {
        let table = sh.table(t);
        for batch in stale.chunks(BATCH * 4) {
            bounded(
                ot,
                "delete rows the source no longer has",
                target.query_drop(table.delete_keys_sql(batch)),
            )
            .await?;
        }
        for batch in wanted.chunks(BATCH * 4) {
            let sets = result_sets(
                source,
                &table.rows_by_key_sql(batch),
                "copy rows again",
                super::run::CHUNK_TIMEOUT,
            )
            .await?;
            let chunk = sets
                .first()
                .and_then(|s| s.first())
                .ok_or_else(|| Failure::Retry("a row copy gave no row".into()))
                .and_then(|r| unpack_chunk(r, table.columns.len()).map_err(Failure::Retry))?;
            bounded(ot, "replace rows", async {
                target.query_drop("START TRANSACTION").await?;
                target.query_drop(table.delete_keys_sql(batch)).await
            })
            .await?;
            replace_rows(target, table, &chunk.text, ot).await?;
            bounded(ot, "replace rows", target.query_drop("COMMIT")).await?;
        }
        sh.live().verify_rows += (stale.len() + wanted.len()) as u64;
    }
    Ok(())
}

/// Every row's hash in the leaves, by (table, key).
async fn row_hashes(
    sh: &Shared,
    c: &mut mysql_async::Conn,
    requests: &[String],
    leaves: &[(usize, Range)],
    t: Duration,
) -> Result<HashMap<(usize, Key), String>, Failure> {
    let mut out = HashMap::new();
    for sql in requests {
        for row in result_sets(c, sql, "compare rows", t)
            .await?
            .into_iter()
            .flatten()
        {
            let Some((table, _)) = leaves.get(number(&row, 0) as usize) else {
                continue;
            };
            let n = sh.table(*table).key.len();
            out.insert((*table, key_at(&row, 1, n)), text(&row, 1 + n));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_ranges_are_cut_finer_so_two_cuts_reach_the_leaves() {
        assert_eq!(pieces(100), FAN_OUT);
        assert_eq!(pieces(100_000), 131);
        assert_eq!(pieces(10_000_000), 256);
        for rows in [1_000u64, 20_000, 80_000, 100_000, 196_000] {
            // Cut sizes round up: ceil(rows / pieces), then ceil(that / 16).
            let first = rows.div_ceil(pieces(rows));
            let second = first.div_ceil(pieces(first));
            assert!(second <= LEAF_TARGET + 1, "{rows}: {second}");
            assert!(
                second + 10 <= LEAF_ROWS,
                "{rows}: room for rows inserted since"
            );
        }
    }
}
