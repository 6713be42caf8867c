//! The doctor: one-shot checks of both databases, each finding with its fix in plain
//! words. Run by `tether doctor` and by the agent once the tunnel is up (and every few
//! hours); its findings feed health, where `NeedsAttention` ones make the box red.
//!
//! Gathering ([`gather`], [`examine`], the samples and checksums) is the only I/O here;
//! the judgement ([`judge`]: one function per topic) is pure and tested on recorded
//! facts; [`command`] is `tether doctor` itself.

pub mod command;
pub mod judge;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use mysql_async::prelude::Queryable;

pub use judge::{
    Expectations, SideFacts, judge, judge_checksums, minute_equals_month, retention_needed,
};

use crate::dialect::{Channel, Dialect};
use crate::events::{Finding, Severity};
use crate::replication::{DbTarget, bounded, by_name, opts};
use judge::finding;

/// The server variables the checks read (`SHOW GLOBAL VARIABLES` works on MariaDB and
/// MySQL alike; a name the server does not know is simply absent). Both families' names
/// are asked for; the judgement reads the ones of the server's own family.
pub const VARIABLES: &[&str] = &[
    "server_id",
    "server_uuid",
    "auto_increment_increment",
    "auto_increment_offset",
    "gtid_mode",
    "enforce_gtid_consistency",
    "log_bin",
    "binlog_format",
    "binlog_row_image",
    "binlog_rows_query_log_events",
    "expire_logs_days",
    "binlog_expire_logs_seconds",
    "gtid_domain_id",
    "log_slave_updates",
    "log_replica_updates",
    "time_zone",
    "system_time_zone",
    "version",
    "slave_net_timeout",
    "replica_net_timeout",
    "binlog_annotate_row_events",
];

/// Codes of the findings that the recommended replication setup (printed by `tether
/// enroll` and by `tether doctor` when one of them is found) puts right.
pub const SETUP_CODES: &[&str] = &[
    "replica_connect_retry",
    "replica_net_timeout",
    "replica_heartbeat",
    "replica_retry_count",
    "replica_public_key",
    "replica_tls",
    "replica_compression",
    "binlog_row_image",
    "binlog_annotate",
];

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Reads one side's facts over `conn`, every query bounded by `timeout`: first which
/// family and version the server is (everything after is read and judged in its words),
/// its replica on `channel` (the default one when `None`); the grants are filled in by
/// [`examine`], which knows the other side's replication account.
pub async fn gather(
    side: &str,
    conn: &mut mysql_async::Conn,
    timeout: Duration,
    channel: Channel<'_>,
) -> Result<SideFacts, String> {
    let dialect = Dialect::query(conn, timeout).await?;
    let mut facts = SideFacts::new(side, dialect);
    facts.channel = channel.map(str::to_owned);
    let list = VARIABLES
        .iter()
        .map(|v| format!("'{v}'"))
        .collect::<Vec<_>>()
        .join(",");
    let rows: Vec<(String, String)> = bounded(
        timeout,
        "server variables",
        conn.query(format!(
            "SHOW GLOBAL VARIABLES WHERE Variable_name IN ({list})"
        )),
    )
    .await?;
    facts.vars = rows.into_iter().collect();
    let before = SystemTime::now();
    let server_ms: Option<i64> = bounded(
        timeout,
        "server clock",
        conn.query_first("SELECT CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)"),
    )
    .await?;
    let after = SystemTime::now();
    // The server read its clock about halfway through the round trip.
    let local_mid_ms = unix_ms(before) / 2 + unix_ms(after) / 2;
    facts.clock_offset_ms = server_ms.map(|server| server - local_mid_ms);
    let row = crate::replication::read_status_row_with(conn, timeout, &dialect, channel)
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    let column = |maria: &str, mysql: &str| row.get(maria).or_else(|| row.get(mysql));
    facts.replica_user = column("Master_User", "Source_User")
        .cloned()
        .filter(|u| !u.is_empty());
    facts.connect_retry_s =
        column("Connect_Retry", "Source_Connect_Retry").and_then(|v| v.parse().ok());
    // MariaDB shows the heartbeat period in its replica status; MySQL keeps it, with the
    // rest of the replica's connection settings, in performance_schema.
    facts.heartbeat_period_s = row
        .get("Slave_Heartbeat_Period")
        .and_then(|v| v.parse().ok());
    if facts.replica_user.is_some()
        && let Some(sql) = dialect.connection_settings_query(channel)
    {
        match bounded(
            timeout,
            "replica connection settings",
            conn.query_first::<mysql_async::Row, _>(sql),
        )
        .await
        {
            Ok(Some(row)) => read_connection_settings(&mut facts, &by_name(&row)),
            Ok(None) => {}
            Err(e) => facts.connection_settings_unread = Some(e),
        }
    }
    Ok(facts)
}

/// The other offices a hub replicates from (every connection or channel but `own`): read
/// by a person's one-shot commands only (`tether doctor`, `enroll`, `setup`), never by
/// the running agent, which keeps to its own connection. With
/// their source's `server_id` and, on MariaDB, the GTID domains that id wrote in the
/// hub's `gtid_binlog_state`.
pub async fn other_offices(
    conn: &mut mysql_async::Conn,
    timeout: Duration,
    dialect: &Dialect,
    own: &str,
) -> Result<Vec<crate::site_numbers::OtherOffice>, String> {
    let (list, state_query) = match dialect.family {
        crate::dialect::Family::MariaDb => (
            "SHOW ALL SLAVES STATUS",
            "SELECT @@GLOBAL.gtid_binlog_state",
        ),
        crate::dialect::Family::MySql => ("SHOW REPLICA STATUS", "SELECT ''"),
    };
    let rows: Vec<mysql_async::Row> = bounded(
        timeout,
        "the hub's replication connections",
        conn.query(list),
    )
    .await?;
    let connections: Vec<(String, Option<u64>)> = rows
        .iter()
        .map(|row| {
            let row = by_name(row);
            let name = row
                .get("Connection_name")
                .or_else(|| row.get("Channel_Name"))
                .cloned()
                .unwrap_or_default();
            let id = row
                .get("Master_Server_Id")
                .or_else(|| row.get("Source_Server_Id"))
                .and_then(|v| v.parse().ok());
            (name, id)
        })
        .collect();
    let state: Option<String> = bounded(
        timeout,
        "the hub's GTID state",
        conn.query_first(state_query),
    )
    .await?;
    Ok(crate::site_numbers::other_offices(
        &connections,
        &state.unwrap_or_default(),
        own,
    ))
}

/// MySQL's `performance_schema.replication_connection_configuration` row into the facts.
fn read_connection_settings(facts: &mut SideFacts, row: &BTreeMap<String, String>) {
    let yes = |name: &str| row.get(name).map(|v| v.eq_ignore_ascii_case("YES"));
    facts.heartbeat_period_s = row.get("HEARTBEAT_INTERVAL").and_then(|v| v.parse().ok());
    facts.retry_count = row
        .get("CONNECTION_RETRY_COUNT")
        .and_then(|v| v.parse().ok());
    // A key file configured on the replica serves as well as asking for the key.
    let key_file = row.get("PUBLIC_KEY_PATH").is_some_and(|p| !p.is_empty());
    facts.gets_public_key = yes("GET_PUBLIC_KEY").map(|asks| asks || key_file);
    facts.tls = yes("SSL_ALLOWED");
    facts.compression = row.get("COMPRESSION_ALGORITHM").cloned();
}

/// The grants of `user` (any host) as `conn`'s server reports them.
async fn grants_of(
    conn: &mut mysql_async::Conn,
    timeout: Duration,
    user: &str,
) -> Result<Vec<String>, String> {
    let q = format!("SHOW GRANTS FOR '{}'@'%'", user.replace('\'', ""));
    bounded(timeout, "grants", conn.query::<String, _>(q)).await
}

/// `DB.TABLE.COLUMN`, each a plain identifier (they end up quoted in a query).
pub fn parse_column(column: &str) -> Result<[&str; 3], String> {
    let ok = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    };
    let parts: Vec<&str> = column.split('.').collect();
    let [schema, table, col] = parts.as_slice() else {
        return Err(format!("--timestamps {column}: expected DB.TABLE.COLUMN"));
    };
    if !(ok(schema) && ok(table) && ok(col)) {
        return Err(format!(
            "--timestamps {column}: names may hold only letters, digits, `_` and `$`"
        ));
    }
    Ok([schema, table, col])
}

/// Samples up to 200 recent values of `DB.TABLE.COLUMN` as text.
pub async fn sample_column(
    db: &DbTarget,
    timeout: Duration,
    column: &str,
) -> Result<Vec<String>, String> {
    let [schema, table, col] = parse_column(column)?;
    let mut conn = bounded(
        timeout,
        "connect",
        mysql_async::Conn::new(opts(db, timeout)),
    )
    .await?;
    let q = format!(
        "SELECT CAST(`{col}` AS CHAR) FROM `{schema}`.`{table}` WHERE `{col}` IS NOT NULL ORDER BY `{col}` DESC LIMIT 200"
    );
    let rows: Vec<String> = bounded(timeout, "sample", conn.query(q))
        .await
        .map_err(|e| format!("{e} (the account in the config needs SELECT on {schema}.{table})"))?;
    let _ = tokio::time::timeout(Duration::from_millis(300), conn.disconnect()).await;
    Ok(rows)
}

/// What this site's config tells the doctor to expect (the outage is added by the
/// caller, which knows it): the sites planned, the hub's replica read on
/// `replication.hub_connection`.
pub fn expectations_of(config: &crate::config::Config) -> Expectations {
    Expectations {
        sites: u64::from(config.site.planned_sites),
        hub_connection: config.replication.hub_connection.clone(),
        ..Expectations::default()
    }
}

/// Gathers both sides (the hub through `hub`, normally the agent's local forward) and
/// judges them. A side that cannot be examined is itself a finding that needs a person
/// ([`could_not_run`]).
pub async fn examine(
    office: &DbTarget,
    hub: &DbTarget,
    timeout: Duration,
    expect: &Expectations,
) -> Vec<Finding> {
    let connect = |db: &DbTarget| {
        bounded(
            timeout,
            "connect",
            mysql_async::Conn::new(opts(db, timeout)),
        )
    };
    let (mut office_conn, mut hub_conn) = (connect(office).await, connect(hub).await);
    let mut office_facts = match &mut office_conn {
        Ok(conn) => gather("office", conn, timeout, None).await,
        Err(e) => Err(e.clone()),
    };
    let mut hub_facts = match &mut hub_conn {
        Ok(conn) => gather("hub", conn, timeout, expect.hub_connection.as_deref()).await,
        Err(e) => Err(e.clone()),
    };
    if let (Ok(facts), Ok(conn), Some(own), true) = (
        &mut hub_facts,
        &mut hub_conn,
        expect.hub_connection.as_deref(),
        expect.other_offices,
    ) {
        // Best effort: an account that cannot list them just leaves the check out.
        facts.other_offices = other_offices(conn, timeout, &facts.dialect, own)
            .await
            .unwrap_or_default();
    }
    // Each side's grants are those of the account the *other* side logs in with.
    if let (Ok(office_facts), Ok(hub_facts), Ok(office_conn), Ok(hub_conn)) = (
        &mut office_facts,
        &mut hub_facts,
        &mut office_conn,
        &mut hub_conn,
    ) {
        if let Some(user) = hub_facts.replica_user.clone() {
            office_facts.peer_user_grants = Some(grants_of(office_conn, timeout, &user).await);
        }
        if let Some(user) = office_facts.replica_user.clone() {
            hub_facts.peer_user_grants = Some(grants_of(hub_conn, timeout, &user).await);
        }
    }
    for conn in [office_conn, hub_conn].into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_millis(300), conn.disconnect()).await;
    }
    match (&office_facts, &hub_facts) {
        (Ok(office_facts), Ok(hub_facts)) => judge(office_facts, hub_facts, expect),
        _ => [
            (Side::Office, &office_facts, office),
            (Side::Hub, &hub_facts, hub),
        ]
        .into_iter()
        .filter_map(|(side, facts, target)| {
            let error = facts.as_ref().err()?;
            Some(could_not_examine(side, &target.user, error))
        })
        .collect(),
    }
}

/// Which database, as the config names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Office,
    Hub,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Office => "office",
            Side::Hub => "hub",
        }
    }

    /// The config section that says how the agent reaches and logs in to it.
    pub fn section(self) -> &'static str {
        match self {
            Side::Office => "office_db",
            Side::Hub => "hub_db",
        }
    }
}

/// Codes of the findings that say a check could not run at all: they need a person
/// (`tether doctor` exits 1), but in the running agent the replication pollers already
/// report the same trouble, so there they are logged, not shown.
pub const COULD_NOT_RUN: &[&str] = &["login_refused", "unreachable"];

/// True when the finding says the checks could not run.
pub fn could_not_run(f: &Finding) -> bool {
    COULD_NOT_RUN.contains(&f.code.as_str())
}

/// Why one side could not be examined, with the config keys and the account to check.
/// Pure.
pub fn could_not_examine(side: Side, user: &str, error: &str) -> Finding {
    let (name, section) = (side.name(), side.section());
    // The account as the server saw it (`'tether'@'127.0.0.1'`), else as configured.
    let account = refused_account(error).unwrap_or_else(|| format!("'{user}'"));
    if crate::replication::is_refusal(error) {
        let fix = if error.contains("1045") {
            format!(
                "Check `{section}.password` (and `{section}.user`) in tether.toml for {account}: the password must match the account's on the {name} database, and the account must exist for the address the agent connects from (create it with the agent-user SQL from the hub kit)."
            )
        } else {
            format!(
                "Grant {account} what the agent-user SQL from the hub kit grants, on the {name} database (the schema is `{section}.database` in tether.toml)."
            )
        };
        return finding(
            Severity::NeedsAttention,
            "login_refused",
            format!(
                "The {name} database refused the agent's login, so it could not be examined: {error}"
            ),
            fix,
        );
    }
    let (how, fix) = match side {
        Side::Office => (
            "directly",
            "Check `office_db.host` and `office_db.port` in tether.toml, and that the office database runs and accepts connections from this box.".to_owned(),
        ),
        Side::Hub => (
            "through the tunnel's local forward",
            "The hub database is reached through the running agent's tunnel (`forwards.local_listen` in tether.toml): check that the agent runs and `tether status` shows the tunnel up, and that the hub database runs.".to_owned(),
        ),
    };
    finding(
        Severity::NeedsAttention,
        "unreachable",
        format!("Cannot examine the {name} database, reached {how}: {error}"),
        fix,
    )
}

/// `'user'@'host'` from a server's "Access denied for user 'user'@'host' ..." error.
fn refused_account(error: &str) -> Option<String> {
    let rest = &error[error.find("for user ")? + "for user ".len()..];
    let account = rest.split_whitespace().next()?;
    (account.starts_with('\'') && account.contains('@')).then(|| account.to_owned())
}

/// `CHECKSUM TABLE` of one `db.table` on one side; `None` when the table is missing.
pub async fn checksum_table(
    db: &DbTarget,
    timeout: Duration,
    table: &str,
) -> Result<Option<u64>, String> {
    let Some((schema, name)) = table.split_once('.') else {
        return Err(format!("{table}: expected db.table"));
    };
    let mut conn = bounded(
        timeout,
        "connect",
        mysql_async::Conn::new(opts(db, timeout)),
    )
    .await?;
    let row: Option<(String, Option<u64>)> = bounded(
        timeout,
        "checksum",
        conn.query_first(format!(
            "CHECKSUM TABLE `{}`.`{}`",
            schema.replace('`', ""),
            name.replace('`', "")
        )),
    )
    .await
    .map_err(|e| format!("{e} (the agent's account needs SELECT on {table})"))?;
    let _ = tokio::time::timeout(Duration::from_millis(300), conn.disconnect()).await;
    Ok(row.and_then(|(_, sum)| sum))
}

/// Compares each table on both sides; a difference is checked again up to `tries`
/// times, `settle` apart, so replication in flight is not taken for divergence.
pub async fn compare_tables(
    office: &DbTarget,
    hub: &DbTarget,
    tables: &[String],
    timeout: Duration,
    tries: u32,
    settle: Duration,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for table in tables {
        let mut verdict = None;
        for attempt in 0..tries.max(1) {
            if attempt > 0 {
                tokio::time::sleep(settle).await;
            }
            let office_sum = checksum_table(office, timeout, table).await;
            let hub_sum = checksum_table(hub, timeout, table).await;
            verdict = judge_checksums(table, &office_sum, &hub_sum);
            if verdict.is_none() {
                break;
            }
        }
        out.extend(verdict);
    }
    out
}

/// How long from `now` (seconds since local midnight) until the next `hour`:00. Pure.
pub fn until_hour(now: u32, hour: u8) -> Duration {
    let target = u32::from(hour) * 3600;
    let now = now % 86_400;
    let secs = if now < target {
        target - now
    } else {
        86_400 - now + target
    };
    Duration::from_secs(u64::from(secs))
}

/// Seconds since local midnight, from the system's time zone.
pub fn local_seconds_of_day() -> u32 {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as libc::time_t)
        .unwrap_or(0);
    // SAFETY: localtime_r writes only into `tm`, which lives on this stack frame.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&now, &mut tm).is_null() };
    if ok {
        (tm.tm_hour * 3600 + tm.tm_min * 60 + tm.tm_sec) as u32
    } else {
        (now % 86_400) as u32
    }
}

/// Findings as people read them, worst first.
pub fn describe(findings: &[Finding]) -> String {
    if findings.is_empty() {
        return "No problems found.\n".into();
    }
    let mut sorted: Vec<&Finding> = findings.iter().collect();
    sorted.sort_by_key(|f| std::cmp::Reverse(f.severity));
    let mut out = String::new();
    for f in sorted {
        let tag = match f.severity {
            Severity::NeedsAttention => "PROBLEM",
            Severity::Warning => "warning",
            Severity::Info => "note",
        };
        out.push_str(&format!("{tag}: {}\n  fix: {}\n", f.message, f.fix));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_login_names_the_config_key_and_the_account() {
        let f = could_not_examine(
            Side::Office,
            "tether",
            "connect: ERROR 1045 (28000): Access denied for user 'tether'@'127.0.0.1' (using password: YES)",
        );
        assert_eq!(f.severity, Severity::NeedsAttention);
        assert_eq!(f.code, "login_refused");
        assert!(could_not_run(&f));
        assert!(
            f.fix.contains("`office_db.password`") && f.fix.contains("'tether'@'127.0.0.1'"),
            "{}",
            f.fix
        );
        let f = could_not_examine(
            Side::Hub,
            "agent",
            "connect: ERROR 1044 (42000): Access denied for user 'agent'@'%' to database 'tether'",
        );
        assert!(
            f.fix.contains("'agent'@'%'") && f.fix.contains("`hub_db.database`"),
            "{}",
            f.fix
        );
    }

    #[test]
    fn an_unreachable_side_needs_a_person_and_says_where_to_look() {
        let f = could_not_examine(Side::Hub, "tether", "connect: Connection refused");
        assert_eq!(
            (f.severity, f.code.as_str()),
            (Severity::NeedsAttention, "unreachable")
        );
        assert!(f.fix.contains("forwards.local_listen"), "{}", f.fix);
        let f = could_not_examine(Side::Office, "tether", "connect: no answer within 5s");
        assert!(f.fix.contains("`office_db.host`"), "{}", f.fix);
    }

    /// Recorded from MySQL 9.7.4: a replica with MySQL's defaults, then as `tether enroll`
    /// sets it up.
    #[test]
    fn mysql_connection_settings_are_read_from_performance_schema() {
        let row = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let dialect = Dialect::current(crate::dialect::Family::MySql);
        let mut facts = SideFacts::new("office", dialect);
        read_connection_settings(
            &mut facts,
            &row(&[
                ("HEARTBEAT_INTERVAL", "30.000"),
                ("CONNECTION_RETRY_COUNT", "10"),
                ("GET_PUBLIC_KEY", "NO"),
                ("PUBLIC_KEY_PATH", ""),
                ("SSL_ALLOWED", "YES"),
                ("COMPRESSION_ALGORITHM", "uncompressed"),
            ]),
        );
        assert_eq!(facts.heartbeat_period_s, Some(30.0));
        assert_eq!(facts.retry_count, Some(10));
        assert_eq!(
            (facts.gets_public_key, facts.tls),
            (Some(false), Some(true))
        );
        read_connection_settings(
            &mut facts,
            &row(&[
                ("HEARTBEAT_INTERVAL", "5.000"),
                ("CONNECTION_RETRY_COUNT", "18446744073709551615"),
                ("GET_PUBLIC_KEY", "NO"),
                ("PUBLIC_KEY_PATH", "/etc/mysql/hub.pem"),
                ("SSL_ALLOWED", "NO"),
                ("COMPRESSION_ALGORITHM", "uncompressed"),
            ]),
        );
        assert_eq!(facts.heartbeat_period_s, Some(5.0));
        assert_eq!(facts.retry_count, Some(u64::MAX));
        assert_eq!(
            (facts.gets_public_key, facts.tls),
            (Some(true), Some(false)),
            "a key file serves as well"
        );
    }

    #[test]
    fn the_check_waits_for_its_hour() {
        assert_eq!(until_hour(0, 3), Duration::from_secs(3 * 3600));
        assert_eq!(until_hour(3 * 3600, 3), Duration::from_secs(86_400));
        assert_eq!(until_hour(23 * 3600, 3), Duration::from_secs(4 * 3600));
        assert_eq!(until_hour(3 * 3600 - 1, 3), Duration::from_secs(1));
    }
}
