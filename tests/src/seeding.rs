//! For the seed's tests and bench: a hub full of data (several tables with secondary
//! unique keys, a blob column, a composite key, a text key in a case-insensitive
//! collation, NULLs, binary data and time zones), a writer that keeps the hub busy while
//! the seed runs (inserts, updates, deletes, and unique values moving between rows),
//! `tether seed` run as a process with the administrators' passwords on its stdin, and
//! the comparisons that prove the office equals the hub.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mysql_async::prelude::Queryable;
use tokio_util::sync::CancellationToken;

use crate::db::{DbServer, Family};

/// The seeded tables.
pub const TABLES: &[&str] = &[
    "app.customers",
    "app.documents",
    "app.order_lines",
    "app.settings",
];

/// How many rows of each kind.
#[derive(Debug, Clone, Copy)]
pub struct DataSize {
    pub customers: u64,
    pub documents: u64,
    pub order_lines: u64,
    pub settings: u64,
}

impl DataSize {
    /// The size the issue asks for: 201,000 rows in four tables.
    pub const FULL: DataSize = DataSize {
        customers: 100_000,
        documents: 20_000,
        order_lines: 80_000,
        settings: 1_000,
    };

    pub fn rows(&self) -> u64 {
        self.customers + self.documents + self.order_lines + self.settings
    }

    pub fn scaled(self, f: f64) -> DataSize {
        let s = |n: u64| ((n as f64 * f) as u64).max(10);
        DataSize {
            customers: s(self.customers),
            documents: s(self.documents),
            order_lines: s(self.order_lines),
            settings: s(self.settings),
        }
    }
}

/// Creates and fills the tables on `db` (`binlog` false: without binary logging, so
/// nothing replicates).
pub fn create_data(db: &DbServer, size: DataSize, binlog: bool) -> Result<()> {
    let log = if binlog {
        ""
    } else {
        "SET SESSION sql_log_bin = 0;"
    };
    let sql = format!(
        "{log}
        USE app;
        SET SESSION time_zone = '+02:00';
        CREATE TABLE app.customers (
          id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
          email VARCHAR(80) NOT NULL UNIQUE,
          name VARCHAR(80) CHARACTER SET utf8mb4 NOT NULL,
          country CHAR(2) CHARACTER SET latin1 NULL,
          balance DECIMAL(12,2) NOT NULL DEFAULT 0,
          score DOUBLE NULL,
          ratio FLOAT NULL,
          created TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
          birthday DATE NULL,
          flags BIT(8) NOT NULL DEFAULT b'0',
          status ENUM('new','active','gone') NOT NULL DEFAULT 'new',
          tags SET('a','b','c') NOT NULL DEFAULT '',
          note TEXT NULL
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
        CREATE TABLE app.documents (
          id BIGINT NOT NULL PRIMARY KEY,
          customer_id INT UNSIGNED NOT NULL,
          title VARCHAR(200) NOT NULL,
          body BLOB NULL,
          digest BINARY(16) NOT NULL UNIQUE,
          updated DATETIME(3) NULL,
          KEY (customer_id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
        CREATE TABLE app.order_lines (
          order_id INT NOT NULL,
          line SMALLINT NOT NULL,
          sku CHAR(8) NOT NULL,
          qty INT NOT NULL,
          price DECIMAL(10,2) NOT NULL,
          shipped TIME(3) NULL,
          PRIMARY KEY (order_id, line)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
        CREATE TABLE app.settings (
          name VARCHAR(64) NOT NULL PRIMARY KEY,
          value TEXT NULL
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;
        INSERT INTO app.customers (id, email, name, country, balance, score, ratio, created, birthday, flags, status, tags, note)
          SELECT seq, CONCAT('c', seq, '@example.com'), CONCAT('Customer ', seq, IF(seq % 7 = 0, ' Zoë ☃', '')),
                 IF(seq % 11 = 0, NULL, ELT(1 + seq % 4, 'DE', 'FR', 'CH', 'ES')), (seq * 37 % 100000) / 100,
                 IF(seq % 13 = 0, NULL, seq / 7), IF(seq % 5 = 0, NULL, 1 / (seq + 2)),
                 FROM_UNIXTIME(1700000000 + seq * 61 + seq % 1000 / 1000), IF(seq % 3 = 0, NULL, '1980-01-01' + INTERVAL seq % 10000 DAY),
                 seq % 256, ELT(1 + seq % 3, 'new', 'active', 'gone'), ELT(1 + seq % 4, '', 'a', 'a,b', 'c'),
                 IF(seq % 2 = 0, NULL, CONCAT('note ', REPEAT(MD5(seq), 1 + seq % 3)))
          FROM seq_1_to_{customers};
        INSERT INTO app.documents (id, customer_id, title, body, digest, updated)
          SELECT seq * 3, 1 + seq % {customers}, CONCAT('Document ', seq),
                 IF(seq % 9 = 0, NULL, CONCAT(RANDOM_BYTES(1 + seq % 200), REPEAT(CONCAT('line ', seq, '\\n'), 1 + seq % 20), X'00FF5C27')),
                 UNHEX(MD5(seq)), IF(seq % 4 = 0, NULL, FROM_UNIXTIME(1600000000 + seq * 17.125))
          FROM seq_1_to_{documents};
        INSERT INTO app.order_lines (order_id, line, sku, qty, price, shipped)
          SELECT 1 + seq DIV 4, seq % 4, CONCAT('SKU', LPAD(seq % 9973, 5, '0')), 1 + seq % 17, (seq % 5000) / 10,
                 IF(seq % 6 = 0, NULL, SEC_TO_TIME(seq % 86400 + 0.125))
          FROM seq_0_to_{last_line};
        INSERT INTO app.settings (name, value)
          SELECT CONCAT(IF(seq % 2 = 0, 'Key', 'key'), '-', seq), IF(seq % 5 = 0, NULL, JSON_OBJECT('n', seq, 's', CONCAT('v', seq)))
          FROM seq_1_to_{settings};",
        customers = size.customers,
        documents = size.documents,
        last_line = size.order_lines - 1,
        settings = size.settings,
    );
    let sql = match db.family {
        Family::MariaDb => sql,
        // MySQL 9 has no MD5() in the server (a component has it).
        Family::MySql => {
            without_sequences(&sql, size).replace("MD5(seq)", "LEFT(SHA2(seq, 256), 32)")
        }
    };
    db.sql(&sql)?;
    Ok(())
}

/// MariaDB's sequence tables (`seq_1_to_N`) for MySQL, which has none: the numbers in a
/// temporary table (made by a recursive CTE), each `seq_A_to_B` a range of it.
fn without_sequences(sql: &str, size: DataSize) -> String {
    let top = size
        .customers
        .max(size.documents)
        .max(size.order_lines)
        .max(size.settings);
    let mut out = format!(
        "SET SESSION cte_max_recursion_depth = {depth};
        CREATE TEMPORARY TABLE app.tether_numbers (seq INT UNSIGNED PRIMARY KEY);
        INSERT INTO app.tether_numbers WITH RECURSIVE n (seq) AS (SELECT 0 UNION ALL SELECT seq + 1 FROM n WHERE seq < {top}) SELECT seq FROM n;",
        depth = top + 10
    );
    let mut rest = sql;
    while let Some(at) = rest.find("seq_") {
        out.push_str(&rest[..at]);
        let token_end = rest[at..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(rest.len(), |e| at + e);
        let token = &rest[at..token_end];
        let range = token
            .strip_prefix("seq_")
            .and_then(|r| r.split_once("_to_"))
            .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
        match range {
            Some((a, b)) => out.push_str(&format!(
                "(SELECT seq FROM app.tether_numbers WHERE seq BETWEEN {a} AND {b}) AS tether_seq"
            )),
            None => out.push_str(token),
        }
        rest = &rest[token_end..];
    }
    out.push_str(rest);
    out
}

/// `CHECKSUM TABLE` of every seeded table on both sides: the tables that differ.
pub fn differing_tables(hub: &DbServer, office: &DbServer) -> Vec<String> {
    TABLES
        .iter()
        .filter(|t| {
            let (a, b) = (
                crate::workload::checksum(hub, t),
                crate::workload::checksum(office, t),
            );
            a.is_empty() || a != b
        })
        .map(|t| (*t).to_owned())
        .collect()
}

/// Waits until every seeded table has the same checksum on both sides.
pub async fn wait_equal(hub: &DbServer, office: &DbServer, timeout: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let differ = differing_tables(hub, office);
        if differ.is_empty() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            let rows: Vec<String> = differ
                .iter()
                .map(|t| first_differing_rows(hub, office, t))
                .collect();
            bail!(
                "tables still differ after {timeout:?}: {differ:?}\n{}",
                rows.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The first rows of `table` that differ between the sides, as each side has them (for
/// a failure message).
fn first_differing_rows(hub: &DbServer, office: &DbServer, table: &str) -> String {
    let dump = |db: &DbServer| {
        db.sql(&format!("SELECT * FROM {table} ORDER BY 1, 2"))
            .unwrap_or_default()
    };
    let (h, o) = (dump(hub), dump(office));
    let hub_rows: std::collections::BTreeSet<&str> = h.lines().collect();
    let office_rows: std::collections::BTreeSet<&str> = o.lines().collect();
    let only_hub: Vec<&&str> = hub_rows.difference(&office_rows).take(3).collect();
    let only_office: Vec<&&str> = office_rows.difference(&hub_rows).take(3).collect();
    format!(
        "{table}: {} rows only at the hub, {} only at the office; hub: {only_hub:?}; office: {only_office:?}",
        hub_rows.difference(&office_rows).count(),
        office_rows.difference(&hub_rows).count()
    )
}

/// What the hub writer did.
#[derive(Debug, Default)]
pub struct WriterCounts {
    pub inserts: AtomicU64,
    pub updates: AtomicU64,
    pub deletes: AtomicU64,
    /// Unique values moved from one row to another (two updates each).
    pub moves: AtomicU64,
    pub failed: AtomicU64,
}

impl WriterCounts {
    /// Rows written (each insert, update and delete once, a move twice).
    pub fn rows(&self) -> u64 {
        self.inserts.load(Ordering::Relaxed)
            + self.updates.load(Ordering::Relaxed)
            + self.deletes.load(Ordering::Relaxed)
            + 2 * self.moves.load(Ordering::Relaxed)
    }
}

/// Writes `per_s` changes a second on a server (the hub; the office when a new hub is
/// filled from it) until stopped: new customers and order
/// lines, updated balances and document bodies, deleted order lines, and emails (a
/// unique key) moved from one customer to another.
pub struct HubWriter {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    pub counts: Arc<WriterCounts>,
}

impl HubWriter {
    pub fn start(hub: &DbServer, per_s: u32, size: DataSize) -> HubWriter {
        let stop = CancellationToken::new();
        let counts = Arc::new(WriterCounts::default());
        let task = tokio::spawn(write(
            hub.root_url(),
            per_s,
            size,
            counts.clone(),
            stop.clone(),
        ));
        HubWriter {
            stop,
            task: Some(task),
            counts,
        }
    }

    pub async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

impl Drop for HubWriter {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn write(
    url: String,
    per_s: u32,
    size: DataSize,
    counts: Arc<WriterCounts>,
    stop: CancellationToken,
) {
    let Ok(opts) = mysql_async::Opts::from_url(&url) else {
        return;
    };
    let mut conn: Option<mysql_async::Conn> = None;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(per_s.max(1))));
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
        i += 1;
        // Spread over the key space: a prime stride.
        let pick = |n: u64| 1 + (i * 7919 + n * 104_729) % size.customers;
        let (sql, counter): (String, &AtomicU64) = match i % 6 {
            0 => (
                format!(
                    "INSERT INTO app.customers (email, name, country, balance, created) VALUES ('new-{i}@example.com', 'New {i}', 'DE', {i}, NOW(6))"
                ),
                &counts.inserts,
            ),
            1 => (
                format!(
                    "UPDATE app.customers SET balance = balance + 1, name = CONCAT(name, '!'), ratio = ratio * 1.5 WHERE id = {}",
                    pick(1)
                ),
                &counts.updates,
            ),
            2 => {
                // A unique value moves: A takes a fresh email, B takes A's old one.
                let (a, b) = (pick(2), pick(3));
                (
                    format!(
                        "SET @moved = NULL;
                         START TRANSACTION;
                         SELECT email INTO @moved FROM app.customers WHERE id = {a};
                         UPDATE app.customers SET email = CONCAT('moved-{i}-', id, '@example.com') WHERE id = {a};
                         UPDATE app.customers SET email = @moved WHERE id = {b} AND @moved IS NOT NULL;
                         COMMIT"
                    ),
                    &counts.moves,
                )
            }
            3 => (
                format!(
                    "INSERT INTO app.order_lines (order_id, line, sku, qty, price) VALUES ({}, 100 + {i} % 1000, 'NEW', 1, 9.99) ON DUPLICATE KEY UPDATE qty = qty + 1",
                    1 + i % (size.order_lines / 4 + 1)
                ),
                &counts.inserts,
            ),
            4 => (
                format!(
                    "UPDATE app.documents SET body = CONCAT(IFNULL(body, ''), RANDOM_BYTES(8)), updated = NOW(3) WHERE id = {}",
                    3 * (1 + i * 31 % size.documents)
                ),
                &counts.updates,
            ),
            _ => (
                format!(
                    "DELETE FROM app.order_lines WHERE order_id = {} AND line = {}",
                    1 + (i * 13) % (size.order_lines / 4),
                    i % 4
                ),
                &counts.deletes,
            ),
        };
        match tokio::time::timeout(Duration::from_secs(5), c.query_drop(sql)).await {
            Ok(Ok(())) => {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
        }
    }
}

/// `tether seed` as a process, the administrators' passwords on its stdin (hub first).
pub fn seed_command(
    bin: &Path,
    config: &Path,
    hub_password: &str,
    office_password: &str,
    args: &[&str],
    output: &Path,
) -> Result<Child> {
    let out = std::fs::File::create(output)?;
    let err = out.try_clone()?;
    let mut child = Command::new(bin)
        .arg("seed")
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(err)
        .spawn()
        .context("tether seed")?;
    use std::io::Write;
    let mut stdin = child.stdin.take().context("stdin")?;
    writeln!(stdin, "{hub_password}")?;
    writeln!(stdin, "{office_password}")?;
    Ok(child)
}

/// Runs `tether seed` to its end (bounded); returns (success, everything it printed).
pub async fn run_seed(
    bin: &Path,
    config: &Path,
    passwords: (&str, &str),
    args: &[&str],
    output: &Path,
    timeout: Duration,
) -> Result<(bool, String)> {
    let mut child = seed_command(bin, config, passwords.0, passwords.1, args, output)?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok((status.success(), std::fs::read_to_string(output)?));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            bail!(
                "tether seed did not end within {timeout:?}; it printed: {}",
                std::fs::read_to_string(output).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The agent's detailed seed progress (its `seed.sock`).
pub async fn progress(status_socket: &Path) -> Result<serde_json::Value> {
    let doc = tether::status::query(
        &tether::seed::socket_path(status_socket),
        Duration::from_secs(2),
    )
    .await?;
    Ok(serde_json::from_str(doc.trim())?)
}

/// The seed's figures as the target recorded them: (rows, text bytes, compressed bytes,
/// chunks, bytes sent again, chunks sent again, verification bytes, rows repaired,
/// verification passes).
pub fn recorded(target: &DbServer) -> Result<Recorded> {
    let p = target.sql(
        "SELECT SUM(rows_done), SUM(text_bytes), SUM(wire_bytes), SUM(chunks), SUM(resent_bytes), SUM(resent_chunks) FROM tether.seed_progress",
    )?;
    let j = target.sql(
        "SELECT verify_bytes, verify_rows, verify_passes, verify_ms, copy_ms, phase FROM tether.seed_job",
    )?;
    let n = |s: &str| s.trim().parse::<u64>().unwrap_or(0);
    let p: Vec<&str> = p.trim().split('\t').collect();
    let j: Vec<&str> = j.trim().split('\t').collect();
    if p.len() < 6 || j.len() < 6 {
        bail!("{} has no seed figures: {p:?} {j:?}", target.name);
    }
    Ok(Recorded {
        rows: n(p[0]),
        text_bytes: n(p[1]),
        wire_bytes: n(p[2]),
        chunks: n(p[3]),
        resent_bytes: n(p[4]),
        resent_chunks: n(p[5]),
        verify_bytes: n(j[0]),
        verify_rows: n(j[1]),
        verify_passes: n(j[2]),
        verify_ms: n(j[3]),
        copy_ms: n(j[4]),
        phase: j[5].to_owned(),
    })
}

/// The seed's figures as the target recorded them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Recorded {
    pub rows: u64,
    pub text_bytes: u64,
    pub wire_bytes: u64,
    pub chunks: u64,
    pub resent_bytes: u64,
    pub resent_chunks: u64,
    pub verify_bytes: u64,
    pub verify_rows: u64,
    pub verify_passes: u64,
    pub verify_ms: u64,
    pub copy_ms: u64,
    pub phase: String,
}

/// One office row changed behind the seed's back, to prove verification finds it.
#[derive(Debug, Clone)]
pub struct Alteration {
    /// The column type the change is in, for messages.
    pub kind: &'static str,
    pub table: &'static str,
    /// The primary key column (a single column in these tables).
    pub key: &'static str,
    /// Which rows may be picked (they have a value of that kind; each kind its own rows).
    pub pick: &'static str,
    /// The `SET` text changing it slightly.
    pub change: &'static str,
    /// The changed value, read exactly (a FLOAT prints with six digits only).
    pub exact: &'static str,
}

/// One row per column type the seed must carry exactly, each changed by the least that
/// still changes its stored value: a microsecond of a TIMESTAMP(6) (changed in another
/// time zone, too), a millisecond of a DATETIME(3), a cent, a few units in the last place
/// of a DOUBLE and of a FLOAT, one byte of a blob, an accent (equal in the column's
/// accent-insensitive collation, not in bytes), and NULL turned into an empty string.
pub const ALTERATIONS: &[Alteration] = &[
    Alteration {
        kind: "timestamp(6)",
        table: "app.customers",
        key: "id",
        pick: "id % 10 = 1",
        change: "created = created + INTERVAL 1 MICROSECOND",
        exact: "created",
    },
    Alteration {
        kind: "decimal",
        table: "app.customers",
        key: "id",
        pick: "id % 10 = 2",
        change: "balance = balance + 0.01",
        exact: "balance",
    },
    Alteration {
        kind: "double",
        table: "app.customers",
        key: "id",
        pick: "id % 10 = 3 AND score > 0",
        change: "score = score + score * 1e-15",
        exact: "score",
    },
    Alteration {
        kind: "float",
        table: "app.customers",
        key: "id",
        pick: "id % 10 = 4 AND ratio > 0",
        change: "ratio = ratio * 1.0000003",
        exact: "CAST(ratio AS DOUBLE)",
    },
    Alteration {
        kind: "text with non-ASCII characters",
        table: "app.customers",
        key: "id",
        pick: "id % 10 = 7 AND id % 7 = 0",
        change: "name = REPLACE(name, 'ë', 'e')",
        exact: "HEX(name)",
    },
    Alteration {
        kind: "NULL against an empty string",
        table: "app.customers",
        key: "id",
        pick: "id % 10 = 8 AND note IS NULL",
        change: "note = ''",
        exact: "IFNULL(note, 'is null')",
    },
    Alteration {
        kind: "datetime(3)",
        table: "app.documents",
        key: "id",
        pick: "id % 2 = 0 AND updated IS NOT NULL",
        change: "updated = updated + INTERVAL 1000 MICROSECOND",
        exact: "updated",
    },
    Alteration {
        kind: "blob",
        table: "app.documents",
        key: "id",
        pick: "id % 2 = 1 AND LENGTH(body) > 4",
        change: "body = CONCAT(LEFT(body, LENGTH(body) - 1), X'28')",
        exact: "HEX(body)",
    },
];

/// The rows altered so far, for [`ALTERATIONS`] by index: (key, the hub's row then).
#[derive(Debug, Default)]
pub struct Altered {
    rows: Vec<Option<(String, String)>>,
}

impl Alteration {
    /// The row as `db` has it (tab-separated text), empty when it has none.
    fn read(&self, db: &DbServer, key: &str) -> String {
        db.sql(&format!(
            "SET SESSION time_zone = '+00:00'; SELECT *, {} FROM {} WHERE {} = {key}",
            self.exact, self.table, self.key
        ))
        .unwrap_or_default()
    }
}

impl Altered {
    /// Alters, on the target (the side the seed fills) and without binary logging
    /// (nothing of it replicates), one row of each kind not yet altered whose table
    /// already has a row to pick there (the copy stored it), checking that each change did
    /// change the stored row.
    pub fn alter_stored_rows(&mut self, source: &DbServer, target: &DbServer) -> Result<()> {
        self.rows.resize(ALTERATIONS.len(), None);
        for (i, a) in ALTERATIONS.iter().enumerate() {
            if self.rows[i].is_some() {
                continue;
            }
            let key = target.sql(&format!(
                "SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT 1",
                a.key, a.table, a.pick, a.key
            ))?;
            let key = key.trim().to_owned();
            if key.is_empty() {
                continue;
            }
            let before = a.read(target, &key);
            let changed = target.sql(&format!(
                "SET SESSION sql_log_bin = 0; SET SESSION time_zone = '+05:00'; UPDATE {} SET {} WHERE {} = {key}; SELECT ROW_COUNT()",
                a.table, a.change, a.key
            ))?;
            if changed.trim() != "1" || a.read(target, &key) == before {
                bail!(
                    "altering the {} row {key} changed {} rows: {before}",
                    a.kind,
                    changed.trim()
                );
            }
            self.rows[i] = Some((key.clone(), a.read(source, &key)));
        }
        Ok(())
    }

    /// The kinds not altered yet.
    pub fn missing(&self) -> Vec<&'static str> {
        ALTERATIONS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.rows.get(*i).is_none_or(Option::is_none))
            .map(|(_, a)| a.kind)
            .collect()
    }

    /// After the seed: each altered row equals the source's. Returns the kinds whose row
    /// the source did not change since the alteration: for those, only the seed's
    /// verification can have repaired the target's row (replication carries only what the
    /// source changes).
    pub fn check(&self, source: &DbServer, target: &DbServer) -> Result<Vec<&'static str>> {
        let mut proven = Vec::new();
        for (a, row) in ALTERATIONS.iter().zip(&self.rows) {
            let Some((key, then)) = row else {
                bail!("no {} row was altered", a.kind);
            };
            let (h, o) = (a.read(source, key), a.read(target, key));
            if h != o {
                bail!(
                    "the target's altered {} row {key} was not repaired: source {h:?}, target {o:?}",
                    a.kind
                );
            }
            if &h == then {
                proven.push(a.kind);
            }
        }
        Ok(proven)
    }
}
