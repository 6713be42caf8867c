//! Before a seed changes anything: what both servers are and hold (`gather`, read-only,
//! with the administrator logins) and whether to go ahead (`judge`, pure). Every refusal
//! is one plain sentence with what to do; nothing has been changed when one is given.

use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;

use super::dialect::{self, Family};
use super::job::Direction;
use super::progress::{bytes_words, duration_words};
use super::sql::{Column, ColumnKind, TablePlan, ident, literal};
use crate::replication::bounded;

/// Schemas never seeded: the servers' own, and the agent's.
pub const SYSTEM_SCHEMAS: &[&str] = &["mysql", "information_schema", "performance_schema", "sys"];

/// One server as the seed sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerFacts {
    pub family: Family,
    pub version: String,
    pub log_bin: bool,
    /// How long binary logs are kept; `None`: never purged.
    pub retention: Option<Duration>,
    pub max_allowed_packet: u64,
}

/// A column as information_schema describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnFacts {
    pub name: String,
    pub data_type: String,
    pub generated: bool,
}

/// One table on the source (the hub; the office when a new hub is filled).
#[derive(Debug, Clone, PartialEq)]
pub struct TableFacts {
    pub schema: String,
    pub name: String,
    pub engine: String,
    pub rows_estimate: u64,
    pub data_length: u64,
    pub avg_row_length: u64,
    pub columns: Vec<ColumnFacts>,
    /// Primary key columns in key order (empty: none).
    pub primary: Vec<String>,
    pub create_sql: String,
}

/// A sample chunk sent through the tunnel: what the link carries a second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkSample {
    pub rows: u64,
    pub text_bytes: u64,
    pub wire_bytes: u64,
    pub elapsed: Duration,
    /// `avg_row_length` of the sampled table, to scale the others by.
    pub avg_row_length: u64,
}

/// Everything `judge` needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    /// Which way the copy would go.
    pub direction: Direction,
    pub hub: ServerFacts,
    pub office: ServerFacts,
    /// The source's tables.
    pub tables: Vec<TableFacts>,
    /// The target's tables (in the seeded schemas) that hold rows, `schema.table`.
    pub target_rows_in: Vec<String>,
    /// Whether the target holds the progress of an earlier seed in this direction (so
    /// its rows came from that copy, not from applications).
    pub target_had_seed: bool,
    pub sample: Option<LinkSample>,
}

impl Facts {
    /// (source, target) servers.
    pub fn sides(&self) -> (&ServerFacts, &ServerFacts) {
        match self.direction {
            Direction::HubToOffice => (&self.hub, &self.office),
            Direction::OfficeToHub => (&self.office, &self.hub),
        }
    }
}

/// What the seed will do, with its estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub direction: Direction,
    pub tables: Vec<TablePlan>,
    pub rows_estimate: u64,
    pub data_bytes: u64,
    pub wire_bytes_estimate: u64,
    /// Compressed bytes a second the link carried in the sample.
    pub link_rate: Option<f64>,
    pub time_estimate: Option<Duration>,
    /// The target's tables whose rows are replaced (`--replace` at the office, or an
    /// earlier copy on a new hub).
    pub target_rows_in: Vec<String>,
}

impl Plan {
    /// The plan in words for the person starting the seed.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "The {} holds {} in {} tables (about {} rows).\n",
            self.direction.source_side(),
            bytes_words(self.data_bytes),
            self.tables.len(),
            self.rows_estimate
        );
        match (self.link_rate, self.time_estimate) {
            (Some(rate), Some(time)) => out.push_str(&format!(
                "The link carried {}/s of compressed rows in a sample; the copy is about {} compressed: about {} (plus a short check at the end).\n",
                bytes_words(rate as u64),
                bytes_words(self.wire_bytes_estimate),
                duration_words(time)
            )),
            _ => out.push_str(&format!(
                "The {}'s tables are empty: the copy takes moments.\n",
                self.direction.source_side()
            )),
        }
        out
    }
}

/// Options of the person starting the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Options {
    /// Replace the office's data (after a local backup).
    pub replace: bool,
}

/// Decides whether to go ahead: the plan, or every reason not to (each a sentence with
/// what to do).
pub fn judge(facts: &Facts, options: Options) -> Result<Plan, Vec<String>> {
    let mut refusals = Vec::new();
    let (hub, office) = (&facts.hub, &facts.office);
    let (source, _) = facts.sides();
    let (to, from) = (
        facts.direction.replica_side(),
        facts.direction.source_side(),
    );
    if hub.family != office.family {
        refusals.push(format!(
            "The hub runs {} ({}) and the office {} ({}): tether replicates only between servers of the same family. Install the hub's family at the office (or the other way round) and run the seed again.",
            hub.family.name(),
            hub.version,
            office.family.name(),
            office.version
        ));
    }
    if !source.log_bin {
        refusals.push(format!(
            "The {from}'s binary log is off (log_bin), so there is no position for the {to} to replicate from. Turn it on in the {from}'s configuration (log_bin, binlog_format = ROW) and restart it."
        ));
    }
    let mut tables = Vec::new();
    for t in &facts.tables {
        let name = format!("{}.{}", t.schema, t.name);
        if !t.engine.eq_ignore_ascii_case("InnoDB") {
            refusals.push(format!(
                "Table {name} uses the {} engine, which cannot be read in a consistent snapshot without locking the {from}'s writers. Convert it on the {from} with `ALTER TABLE {} ENGINE=InnoDB` (at a quiet time: it rewrites the table).",
                t.engine,
                qualified(t)
            ));
            continue;
        }
        if t.primary.is_empty() {
            refusals.push(format!(
                "Table {name} has no primary key. Tether copies and checks tables in primary key order, and row-based replication of a table without one makes each server scan the whole table for every row changed at the other, which on a slow line means replication falls ever further behind. Add one on the {from}, for example `ALTER TABLE {} ADD COLUMN id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY` (or make an existing unique NOT NULL column the primary key), then run the seed again.",
                qualified(t)
            ));
            continue;
        }
        let columns: Vec<Column> = t
            .columns
            .iter()
            .filter(|c| !c.generated)
            .map(|c| Column {
                name: c.name.clone(),
                kind: ColumnKind::from_data_type(&c.data_type),
            })
            .collect();
        let mut key = Vec::new();
        for k in &t.primary {
            match columns.iter().position(|c| &c.name == k) {
                Some(i) if columns[i].kind.usable_in_key() => key.push(i),
                _ => {
                    refusals.push(format!(
                        "Table {name} has a primary key column `{k}` of a type tether cannot order by; give the table a numeric or text primary key."
                    ));
                    break;
                }
            }
        }
        if key.len() != t.primary.len() {
            continue;
        }
        let uncovered = super::sql::uncovered_columns(&t.create_sql, &columns);
        if !uncovered.is_empty() {
            refusals.push(format!(
                "Table {name} has columns tether would neither copy nor check ({}): their definition is not one it knows. Report this with the table's `SHOW CREATE TABLE`.",
                uncovered.join(", ")
            ));
            continue;
        }
        tables.push(TablePlan {
            schema: t.schema.clone(),
            name: t.name.clone(),
            columns,
            key,
            create_sql: t.create_sql.clone(),
            family: source.family,
        });
    }
    let list = &facts.target_rows_in;
    let listed = || {
        format!(
            "{}{}",
            list.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
            if list.len() > 3 {
                format!(" and {} more tables", list.len() - 3)
            } else {
                String::new()
            }
        )
    };
    match facts.direction {
        Direction::HubToOffice if !list.is_empty() && !options.replace => {
            refusals.push(format!(
                "The office database already holds data ({}). A seed starts from an empty office. If the office's data can go, run `tether seed --replace`: it first saves the office's data to a backup file it names, then replaces it with the hub's. If instead the hub is new and must be filled from the office, do not use `--replace` (the office's data would be replaced by the hub's): run `tether seed --to-hub`, or `tether setup`, which chooses that when the hub is empty.",
                listed()
            ));
        }
        Direction::OfficeToHub if !list.is_empty() && !facts.target_had_seed => {
            refusals.push(format!(
                "The hub database already holds data ({}). Tether fills only an empty hub from the office, so that nothing on the hub is lost. If the hub's data is the one to keep, copy the hub to the office instead (`tether seed`, with `--replace` to back the office's data up first); if the hub's data can go, empty those tables on the hub yourself, then run this again.",
                listed()
            ));
        }
        _ => {}
    }
    let rows_estimate: u64 = facts.tables.iter().map(|t| t.rows_estimate).sum();
    let data_bytes: u64 = facts.tables.iter().map(|t| t.data_length).sum();
    let (wire_bytes_estimate, link_rate, time_estimate) = estimate(facts);
    if let (Some(keep), Some(time)) = (source.retention, time_estimate)
        && keep < time
    {
        refusals.push(format!(
            "The {from} keeps its binary logs for {} (binlog_expire_logs_seconds), less than the estimated copy time of {} ({} at the {}/s the link carried in a sample). The {to} could not catch up afterwards. Raise it on the {from} to at least twice the copy time, for example `SET GLOBAL binlog_expire_logs_seconds = {}` and the same in its configuration file, then run the seed again.",
            duration_words(keep),
            duration_words(time),
            bytes_words(wire_bytes_estimate),
            bytes_words(link_rate.unwrap_or(0.0) as u64),
            (time.as_secs() * 2).max(86_400)
        ));
    }
    if !refusals.is_empty() {
        return Err(refusals);
    }
    Ok(Plan {
        direction: facts.direction,
        tables,
        rows_estimate,
        data_bytes,
        wire_bytes_estimate,
        link_rate,
        time_estimate,
        target_rows_in: facts.target_rows_in.clone(),
    })
}

/// (compressed bytes, link rate, time) for the whole copy, from the sample scaled by each
/// table's rows and average row length.
fn estimate(facts: &Facts) -> (u64, Option<f64>, Option<Duration>) {
    let Some(s) = facts.sample.filter(|s| s.rows > 0 && s.wire_bytes > 0) else {
        return (0, None, None);
    };
    let wire_per_row = s.wire_bytes as f64 / s.rows as f64;
    let per_avg_byte = wire_per_row / s.avg_row_length.max(1) as f64;
    let wire: f64 = facts
        .tables
        .iter()
        .map(|t| {
            if t.avg_row_length > 0 {
                t.rows_estimate as f64 * t.avg_row_length as f64 * per_avg_byte
            } else {
                t.rows_estimate as f64 * wire_per_row
            }
        })
        .sum();
    let rate = s.wire_bytes as f64 / s.elapsed.as_secs_f64().max(0.001);
    (
        wire as u64,
        Some(rate),
        Some(Duration::from_secs_f64(wire / rate)),
    )
}

fn qualified(t: &TableFacts) -> String {
    format!("{}.{}", ident(&t.schema), ident(&t.name))
}

/// Reads one server's facts.
pub async fn server_facts(c: &mut mysql_async::Conn, t: Duration) -> Result<ServerFacts, String> {
    let (family, version) = dialect::family(c, t).await?;
    let row: Option<(u64, u64)> = bounded(
        t,
        "server settings",
        c.query_first("SELECT @@GLOBAL.log_bin, @@GLOBAL.max_allowed_packet"),
    )
    .await?;
    let (log_bin, max_allowed_packet) = row.unwrap_or((0, 16 << 20));
    Ok(ServerFacts {
        family,
        version,
        log_bin: log_bin != 0,
        retention: dialect::binlog_retention(c, t).await?,
        max_allowed_packet,
    })
}

/// The schemas to seed: every one on the source but the servers' own and the agent's
/// (its name on either side).
pub async fn source_schemas(
    source: &mut mysql_async::Conn,
    agent_schemas: &[&str],
    t: Duration,
) -> Result<Vec<String>, String> {
    let names: Vec<String> = bounded(
        t,
        "list schemas",
        source.query("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA ORDER BY SCHEMA_NAME"),
    )
    .await?;
    Ok(names
        .into_iter()
        .filter(|n| !SYSTEM_SCHEMAS.contains(&n.as_str()) && !agent_schemas.contains(&n.as_str()))
        .collect())
}

fn in_list(schemas: &[String]) -> String {
    let quoted: Vec<String> = schemas.iter().map(|s| literal(s)).collect();
    if quoted.is_empty() {
        "(NULL)".into()
    } else {
        format!("({})", quoted.join(","))
    }
}

/// The source's base tables in these schemas, with columns, keys and definitions.
pub async fn source_tables(
    source: &mut mysql_async::Conn,
    schemas: &[String],
    t: Duration,
) -> Result<Vec<TableFacts>, String> {
    let list = in_list(schemas);
    /// schema, table, engine, rows, data length, average row length
    type TableRow = (
        String,
        String,
        Option<String>,
        Option<u64>,
        Option<u64>,
        Option<u64>,
    );
    let rows: Vec<TableRow> =
        bounded(
            t,
            "list tables",
            source.query(format!(
                "SELECT TABLE_SCHEMA, TABLE_NAME, ENGINE, TABLE_ROWS, DATA_LENGTH, AVG_ROW_LENGTH FROM information_schema.TABLES WHERE TABLE_SCHEMA IN {list} AND TABLE_TYPE IN ('BASE TABLE', 'SEQUENCE', 'SYSTEM VERSIONED') ORDER BY TABLE_SCHEMA, TABLE_NAME"
            )),
        )
        .await?;
    let columns: Vec<(String, String, String, String, String)> = bounded(
        t,
        "list columns",
        source.query(format!(
            "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME, DATA_TYPE, IFNULL(EXTRA, '') FROM information_schema.COLUMNS WHERE TABLE_SCHEMA IN {list} ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION"
        )),
    )
    .await?;
    let keys: Vec<(String, String, String)> = bounded(
        t,
        "list primary keys",
        source.query(format!(
            "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE WHERE TABLE_SCHEMA IN {list} AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION"
        )),
    )
    .await?;
    let mut out = Vec::new();
    for (schema, name, engine, rows, data, avg) in rows {
        let create: Option<(String, String)> = bounded(
            t,
            "read a table definition",
            source.query_first(format!(
                "SHOW CREATE TABLE {}.{}",
                ident(&schema),
                ident(&name)
            )),
        )
        .await?;
        out.push(TableFacts {
            columns: columns
                .iter()
                .filter(|c| c.0 == schema && c.1 == name)
                .map(|c| ColumnFacts {
                    name: c.2.clone(),
                    data_type: c.3.clone(),
                    generated: super::sql::is_generated(&c.4),
                })
                .collect(),
            primary: keys
                .iter()
                .filter(|k| k.0 == schema && k.1 == name)
                .map(|k| k.2.clone())
                .collect(),
            engine: engine.unwrap_or_else(|| "none".into()),
            rows_estimate: rows.unwrap_or(0),
            data_length: data.unwrap_or(0),
            avg_row_length: avg.unwrap_or(0),
            create_sql: create.map(|(_, sql)| sql).unwrap_or_default(),
            schema,
            name,
        });
    }
    Ok(out)
}

/// The target's tables (in these schemas) that hold at least one row, `schema.table`.
pub async fn tables_with_rows(
    target: &mut mysql_async::Conn,
    schemas: &[String],
    t: Duration,
) -> Result<Vec<String>, String> {
    let tables: Vec<(String, String)> = bounded(
        t,
        "list the target's tables",
        target.query(format!(
            "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA IN {} AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_SCHEMA, TABLE_NAME",
            in_list(schemas)
        )),
    )
    .await?;
    let mut out = Vec::new();
    for (schema, name) in tables {
        let any: Option<u8> = bounded(
            t,
            "look for rows on the target",
            target.query_first(format!(
                "SELECT 1 FROM {}.{} LIMIT 1",
                ident(&schema),
                ident(&name)
            )),
        )
        .await?;
        if any.is_some() {
            out.push(format!("{schema}.{name}"));
        }
    }
    Ok(out)
}

/// Reads chunks of the largest table through the tunnel to measure what the link
/// carries: a small one first (connection and slow start), then one sized for about two
/// seconds at the first one's rate. When the source is the office (a new hub), each
/// chunk is read locally and its compressed bytes are sent to the hub (`upload_to`), so
/// the line is measured in the direction the copy goes.
pub async fn sample_link(
    source: &mut mysql_async::Conn,
    mut upload_to: Option<&mut mysql_async::Conn>,
    facts: &[TableFacts],
    plans: &[TablePlan],
    t: Duration,
) -> Result<Option<LinkSample>, String> {
    let Some(big) = facts
        .iter()
        .filter(|f| {
            plans
                .iter()
                .any(|p| p.schema == f.schema && p.name == f.name)
        })
        .max_by_key(|f| f.data_length)
    else {
        return Ok(None);
    };
    let Some(plan) = plans
        .iter()
        .find(|p| p.schema == big.schema && p.name == big.name)
    else {
        return Ok(None);
    };
    let mut rows = 50u64;
    let mut last = None;
    let upload = match upload_to.as_deref_mut() {
        Some(hub) => Some(bounded(t, "sample the link", hub.prep("DO LENGTH(?)")).await?),
        None => None,
    };
    for _ in 0..2 {
        let asked = Instant::now();
        let sets = super::run::result_sets(
            source,
            &plan.chunk_sql(&super::sql::Range::ALL, rows),
            "sample the link",
            t,
        )
        .await?;
        let mut elapsed = asked.elapsed();
        let Some(row) = sets.first().and_then(|s| s.first()) else {
            return Ok(None);
        };
        let chunk = super::run::unpack_chunk(row, plan.columns.len())?;
        if chunk.rows == 0 {
            return Ok(None);
        }
        if let (Some(hub), Some(stmt)) = (upload_to.as_deref_mut(), upload.as_ref()) {
            let compressed: Vec<u8> = match row.as_ref(2) {
                Some(mysql_async::Value::Bytes(b)) => b.clone(),
                _ => Vec::new(),
            };
            let sent = Instant::now();
            bounded(t, "sample the link", hub.exec_drop(stmt, (compressed,))).await?;
            elapsed = sent.elapsed();
        }
        last = Some(LinkSample {
            rows: chunk.rows,
            text_bytes: chunk.text.len() as u64,
            wire_bytes: chunk.wire,
            elapsed,
            avg_row_length: big.avg_row_length,
        });
        if chunk.rows < rows {
            break;
        }
        let rate = chunk.wire as f64 / elapsed.as_secs_f64().max(0.001);
        let per_row = (chunk.wire as f64 / chunk.rows as f64).max(1.0);
        rows = ((rate * 2.0 / per_row) as u64).clamp(50, 20_000);
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(family: Family) -> ServerFacts {
        ServerFacts {
            family,
            version: match family {
                Family::MariaDb => "10.11.19-MariaDB".into(),
                Family::MySql => "8.4.3".into(),
            },
            log_bin: true,
            retention: None,
            max_allowed_packet: 16 << 20,
        }
    }

    fn table(name: &str, primary: &[&str]) -> TableFacts {
        TableFacts {
            schema: "app".into(),
            name: name.into(),
            engine: "InnoDB".into(),
            rows_estimate: 100_000,
            data_length: 10_000_000,
            avg_row_length: 100,
            columns: vec![
                ColumnFacts {
                    name: "id".into(),
                    data_type: "int".into(),
                    generated: false,
                },
                ColumnFacts {
                    name: "name".into(),
                    data_type: "varchar".into(),
                    generated: false,
                },
                ColumnFacts {
                    name: "upper_name".into(),
                    data_type: "varchar".into(),
                    generated: true,
                },
            ],
            primary: primary.iter().map(|s| (*s).to_owned()).collect(),
            create_sql: "CREATE TABLE ...".into(),
        }
    }

    fn facts() -> Facts {
        Facts {
            direction: Direction::HubToOffice,
            hub: server(Family::MariaDb),
            office: server(Family::MariaDb),
            tables: vec![table("customers", &["id"])],
            target_rows_in: Vec::new(),
            target_had_seed: false,
            // 1000 rows of 100 bytes each took 40 kB on the wire in 2 s.
            sample: Some(LinkSample {
                rows: 1000,
                text_bytes: 150_000,
                wire_bytes: 40_000,
                elapsed: Duration::from_secs(2),
                avg_row_length: 100,
            }),
        }
    }

    #[test]
    fn a_good_pair_gets_a_plan_with_an_estimate() {
        let plan = judge(&facts(), Options::default()).unwrap();
        assert_eq!(plan.tables.len(), 1);
        let t = &plan.tables[0];
        assert_eq!(t.columns.len(), 2, "generated columns are not copied");
        assert_eq!(t.key, vec![0]);
        // 100k rows x 40 B = 4 MB at 20 kB/s: 200 s.
        assert_eq!(plan.wire_bytes_estimate, 4_000_000);
        assert_eq!(plan.time_estimate, Some(Duration::from_secs(200)));
        let words = plan.describe();
        assert!(words.contains("10.0 MB in 1 tables"), "{words}");
        assert!(words.contains("20 kB/s"), "{words}");
    }

    fn refused(f: &Facts, options: Options) -> String {
        judge(f, options).unwrap_err().join("\n")
    }

    #[test]
    fn an_office_with_data_is_refused_unless_told_to_replace_it() {
        let mut f = facts();
        f.target_rows_in = vec![
            "app.a".into(),
            "app.b".into(),
            "app.c".into(),
            "app.d".into(),
        ];
        let why = refused(&f, Options::default());
        assert!(
            why.contains("already holds data (app.a, app.b, app.c and 1 more tables)"),
            "{why}"
        );
        assert!(why.contains("--replace"), "{why}");
        // A new hub filled from the office is not a case for --replace.
        assert!(
            why.contains("If instead the hub is new and must be filled from the office, do not use `--replace`"),
            "{why}"
        );
        assert!(why.contains("`tether seed --to-hub`"), "{why}");
        assert!(judge(&f, Options { replace: true }).is_ok());
    }

    /// A new hub is filled from the office only while it holds no data of its own (rows
    /// a person or an application put there); rows of an earlier copy of the office's
    /// data are replaced.
    #[test]
    fn a_hub_with_data_is_never_filled_from_the_office() {
        let mut f = facts();
        f.direction = Direction::OfficeToHub;
        assert!(judge(&f, Options::default()).is_ok());
        f.target_rows_in = vec!["app.orders".into()];
        let why = refused(&f, Options { replace: true });
        assert!(
            why.contains("The hub database already holds data (app.orders)"),
            "{why}"
        );
        assert!(why.contains("fills only an empty hub"), "{why}");
        f.target_had_seed = true;
        let plan = judge(&f, Options::default()).unwrap();
        assert_eq!(plan.target_rows_in, vec!["app.orders".to_owned()]);
        assert!(
            plan.describe().starts_with("The office holds 10.0 MB"),
            "{}",
            plan.describe()
        );
    }

    /// Filling a new hub, the office is read: its binary log and how long it keeps it
    /// are what the hub's replication starts from.
    #[test]
    fn filling_a_hub_checks_the_offices_binary_log() {
        let mut f = facts();
        f.direction = Direction::OfficeToHub;
        f.hub.log_bin = false;
        f.hub.retention = Some(Duration::from_secs(60));
        assert!(judge(&f, Options::default()).is_ok());
        f.office.retention = Some(Duration::from_secs(60));
        f.office.log_bin = false;
        let why = refused(&f, Options::default());
        assert!(
            why.contains("The office keeps its binary logs for 1m 00s"),
            "{why}"
        );
        assert!(why.contains("The hub could not catch up"), "{why}");
        assert!(
            why.contains(
                "The office's binary log is off (log_bin), so there is no position for the hub"
            ),
            "{why}"
        );
    }

    #[test]
    fn binary_logs_kept_less_than_the_copy_time_are_refused_with_both_figures() {
        let mut f = facts();
        f.hub.retention = Some(Duration::from_secs(60));
        let why = refused(&f, Options::default());
        assert!(why.contains("keeps its binary logs for 1m 00s"), "{why}");
        assert!(why.contains("estimated copy time of 3m 20s"), "{why}");
        assert!(why.contains("4.0 MB at the 20 kB/s"), "{why}");
        f.hub.retention = Some(Duration::from_secs(3600));
        assert!(judge(&f, Options::default()).is_ok());
    }

    #[test]
    fn a_table_without_a_primary_key_is_refused_with_its_cost_and_the_fix() {
        let mut f = facts();
        f.tables.push(table("log", &[]));
        let why = refused(&f, Options::default());
        assert!(why.contains("Table app.log has no primary key"), "{why}");
        assert!(why.contains("scan the whole table"), "{why}");
        assert!(
            why.contains("ADD COLUMN id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY"),
            "{why}"
        );
    }

    #[test]
    fn a_stored_column_left_out_of_the_plan_is_refused() {
        let mut f = facts();
        let create = "CREATE TABLE `t` (\n  `id` int NOT NULL,\n  `name` varchar(20) NOT NULL,\n  `upper_name` varchar(20) GENERATED ALWAYS AS (upper(`name`)) VIRTUAL,\n  `created` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP,\n  PRIMARY KEY (`id`)\n) ENGINE=InnoDB";
        f.tables[0].create_sql = create.into();
        // As if information_schema had called `created` computed.
        let why = refused(&f, Options::default());
        assert!(
            why.contains("would neither copy nor check (created)"),
            "{why}"
        );
        f.tables[0].columns.push(ColumnFacts {
            name: "created".into(),
            data_type: "timestamp".into(),
            generated: false,
        });
        assert!(judge(&f, Options::default()).is_ok());
    }

    #[test]
    fn servers_of_different_families_are_refused() {
        let mut f = facts();
        f.office = server(Family::MySql);
        let why = refused(&f, Options::default());
        assert!(why.contains("The hub runs MariaDB"), "{why}");
        assert!(why.contains("the office MySQL (8.4.3)"), "{why}");
        assert!(why.contains("same family"), "{why}");
    }

    #[test]
    fn non_transactional_tables_and_a_hub_without_binlog_are_refused() {
        let mut f = facts();
        f.tables[0].engine = "MyISAM".into();
        f.hub.log_bin = false;
        let why = refused(&f, Options::default());
        assert!(why.contains("uses the MyISAM engine"), "{why}");
        assert!(why.contains("binary log is off"), "{why}");
    }
}
