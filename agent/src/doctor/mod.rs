//! The doctor: one-shot checks of both databases, each finding with its fix in plain
//! words. Run by `tether doctor` and by the agent once the tunnel is up (and every few
//! hours); its findings feed health, where `NeedsAttention` ones make the box red.
//!
//! Gathering ([`gather`]) is the only I/O; the judgement ([`judge`],
//! [`minute_equals_month`]) is pure and tested on recorded facts.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use mysql_async::prelude::Queryable;

use crate::events::{Finding, Severity};
use crate::replication::{DbTarget, bounded, opts};

/// The server variables the checks read (`SHOW GLOBAL VARIABLES` works on MariaDB and
/// MySQL alike; a name the server does not know is simply absent).
pub const VARIABLES: &[&str] = &[
    "server_id",
    "auto_increment_increment",
    "auto_increment_offset",
    "log_bin",
    "binlog_format",
    "binlog_row_image",
    "expire_logs_days",
    "binlog_expire_logs_seconds",
    "gtid_domain_id",
    "log_slave_updates",
    "log_replica_updates",
    "time_zone",
    "system_time_zone",
    "version",
    "slave_net_timeout",
    "binlog_annotate_row_events",
];

/// Codes of the findings that the recommended replication setup (printed by `tether
/// enroll` and by `tether doctor` when one of them is found) puts right.
pub const SETUP_CODES: &[&str] = &[
    "replica_connect_retry",
    "replica_net_timeout",
    "replica_heartbeat",
    "binlog_row_image",
    "binlog_annotate",
];

/// What one side's database told the doctor.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SideFacts {
    /// "office" or "hub".
    pub side: String,
    pub vars: BTreeMap<String, String>,
    /// Server clock minus this machine's clock, milliseconds.
    pub clock_offset_ms: Option<i64>,
    /// The account this side replicates with (from its replica status), if set up.
    pub replica_user: Option<String>,
    /// The grants of the account the *other* side replicates with, when readable here
    /// (the shipped agent account cannot read them; a DBA's account can).
    pub peer_user_grants: Option<Result<Vec<String>, String>>,
    /// This side's replica: seconds between its connection attempts, and the heartbeat
    /// period it asked its primary for (from its replica status), if set up.
    pub connect_retry_s: Option<u64>,
    pub heartbeat_period_s: Option<f64>,
}

impl SideFacts {
    fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    fn num(&self, name: &str) -> Option<u64> {
        self.var(name).and_then(|v| v.trim().parse().ok())
    }

    fn on(&self, name: &str) -> Option<bool> {
        self.var(name)
            .map(|v| matches!(v.to_ascii_uppercase().as_str(), "ON" | "1"))
    }

    /// Binary log retention; `None` when logs are never purged automatically.
    fn retention(&self) -> Option<Duration> {
        let secs = self.num("binlog_expire_logs_seconds").unwrap_or(0);
        let days = self
            .var("expire_logs_days")
            .and_then(|d| d.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        let secs = if secs > 0 {
            secs
        } else {
            (days * 86_400.0) as u64
        };
        (secs > 0).then(|| Duration::from_secs(secs))
    }
}

/// What the judgement needs besides the facts.
#[derive(Debug, Clone)]
pub struct Expectations {
    /// How many sites write (auto_increment_increment must be at least this).
    pub sites: u64,
    /// The longest link outage seen so far (binary logs must outlive it).
    pub longest_outage: Duration,
    /// Largest acceptable clock difference between the two servers.
    pub max_skew: Duration,
}

impl Default for Expectations {
    fn default() -> Self {
        Expectations {
            sites: 2,
            longest_outage: Duration::ZERO,
            max_skew: Duration::from_secs(2),
        }
    }
}

fn finding(severity: Severity, code: &str, message: String, fix: impl Into<String>) -> Finding {
    Finding {
        severity,
        code: code.into(),
        message,
        fix: fix.into(),
    }
}

/// Judges both sides' facts. Pure.
pub fn judge(office: &SideFacts, hub: &SideFacts, x: &Expectations) -> Vec<Finding> {
    use Severity::{Info, NeedsAttention, Warning};
    let mut out = Vec::new();
    let both = [office, hub];

    // server_id: distinct and not the default.
    for s in both {
        match s.num("server_id") {
            Some(0) => out.push(finding(
                NeedsAttention,
                "server_id_zero",
                format!("The {} database has server_id = 0: it cannot replicate.", s.side),
                format!("Set `server_id` to a unique number in the {} server's config and restart it.", s.side),
            )),
            Some(1) => out.push(finding(
                Warning,
                "server_id_default",
                format!("The {} database still has the default server_id = 1.", s.side),
                format!("Give every server its own `server_id` (for example 11 for the hub, 12 for the office); set it in the {} server's config.", s.side),
            )),
            _ => {}
        }
    }
    if let (Some(a), Some(b)) = (office.num("server_id"), hub.num("server_id"))
        && a == b
    {
        out.push(finding(
            NeedsAttention,
            "server_id_equal",
            format!("Both databases have server_id = {a}: each ignores the other's changes as its own (error 1593)."),
            "Give the office a different `server_id` in its server config, restart it, then `START SLAVE` on both.",
        ));
    }

    // auto_increment: increment at least the number of sites, offsets distinct.
    for s in both {
        if let Some(inc) = s.num("auto_increment_increment")
            && inc < x.sites
        {
            out.push(finding(
                NeedsAttention,
                "auto_increment_increment",
                format!(
                    "The {} database has auto_increment_increment = {inc}, fewer than the {} sites: both sites can create the same id and replication stops on a duplicate key.",
                    s.side, x.sites
                ),
                format!("Set `auto_increment_increment = 10` on both servers (room for more sites) and distinct `auto_increment_offset`s; here on the {}.", s.side),
            ));
        }
    }
    if let (Some(a), Some(b)) = (
        office.num("auto_increment_offset"),
        hub.num("auto_increment_offset"),
    ) && a == b
    {
        out.push(finding(
            NeedsAttention,
            "auto_increment_offset_equal",
            format!("Both databases use auto_increment_offset = {a}: new rows on both sites get the same ids."),
            "Set `auto_increment_offset = 1` on the hub and `2` on the office (each below auto_increment_increment).",
        ));
    }

    // Binary log: on, ROW, kept longer than the longest outage.
    for s in both {
        if s.on("log_bin") == Some(false) {
            out.push(finding(
                NeedsAttention,
                "log_bin_off",
                format!("The {} database has its binary log off: the other side has nothing to replicate from it.", s.side),
                format!("Set `log_bin` (and `binlog_format = ROW`) in the {} server's config and restart it.", s.side),
            ));
        }
        if let Some(f) = s.var("binlog_format")
            && !f.eq_ignore_ascii_case("ROW")
        {
            out.push(finding(
                Warning,
                "binlog_format",
                format!("The {} database logs in {f} format; statements can apply differently on the other side.", s.side),
                format!("Set `binlog_format = ROW` on the {}.", s.side),
            ));
        }
        if let Some(img) = s.var("binlog_row_image")
            && img.eq_ignore_ascii_case("FULL")
        {
            out.push(finding(
                Info,
                "binlog_row_image",
                format!("The {} database writes full row images; on a slow link `MINIMAL` sends less.", s.side),
                format!("Consider `binlog_row_image = MINIMAL` on the {} (only if no other tool needs full images).", s.side),
            ));
        }
        if let Some(a) = s.on("binlog_annotate_row_events")
            && a
        {
            out.push(finding(
                Info,
                "binlog_annotate",
                format!("The {} database sends each statement's text beside its row changes (binlog_annotate_row_events); on a slow link that is bytes for nothing.", s.side),
                format!("Set `binlog_annotate_row_events = OFF` on the {}.", s.side),
            ));
        }
        if s.replica_user.is_some() {
            let peer = if s.side == "office" { "hub" } else { "office" };
            if let Some(r) = s.connect_retry_s
                && r > 10
            {
                out.push(finding(
                    Warning,
                    "replica_connect_retry",
                    format!("The {} replica tries to reach the {peer} only every {r} s: after an outage it can wait that long before replication starts again.", s.side),
                    format!("On the {}: STOP SLAVE; CHANGE MASTER TO MASTER_CONNECT_RETRY=1; START SLAVE;", s.side),
                ));
            }
            if let Some(t) = s.num("slave_net_timeout")
                && t > 30
            {
                out.push(finding(
                    Warning,
                    "replica_net_timeout",
                    format!("The {} replica waits {t} s of silence before it gives up on a dead connection (slave_net_timeout).", s.side),
                    format!("On the {}: SET GLOBAL slave_net_timeout = 15, and put `slave_net_timeout = 15` in its config.", s.side),
                ));
            }
            if let Some(h) = s.heartbeat_period_s
                && !(0.5..=10.0).contains(&h)
            {
                out.push(finding(
                    Info,
                    "replica_heartbeat",
                    format!("The {} replica asks the {peer} for a heartbeat every {h} s (0 means never): an idle link that died is noticed late.", s.side),
                    format!("On the {}: STOP SLAVE; CHANGE MASTER TO MASTER_HEARTBEAT_PERIOD=5; START SLAVE;", s.side),
                ));
            }
        }
        if let Some(keep) = s.retention() {
            let need = x.longest_outage.max(Duration::from_secs(86_400));
            if keep < need {
                out.push(finding(
                    Warning,
                    "binlog_retention",
                    format!(
                        "The {} database keeps binary logs for {}, less than {} (the longest outage seen, or a day): after a longer outage the other side cannot catch up (error 1236).",
                        s.side,
                        humantime::format_duration(keep),
                        humantime::format_duration(need)
                    ),
                    format!("Raise `binlog_expire_logs_seconds` (or `expire_logs_days`) on the {} to several days.", s.side),
                ));
            }
        }
        let echo = s.on("log_slave_updates").or(s.on("log_replica_updates"));
        if echo == Some(true) {
            out.push(finding(
                Info,
                "log_slave_updates",
                format!("The {} database logs what it replicates (log_slave_updates): each change travels back over the link and is discarded there.", s.side),
                format!("Turn `log_slave_updates` off on the {} unless another server replicates from it.", s.side),
            ));
        }
    }

    // GTID domains (MariaDB): distinct, or the two streams' positions get mixed up.
    if let (Some(a), Some(b)) = (office.num("gtid_domain_id"), hub.num("gtid_domain_id"))
        && a == b
    {
        out.push(finding(
            Warning,
            "gtid_domain_id_equal",
            format!("Both databases use gtid_domain_id = {a}; with two writing sites each needs its own."),
            "Set `gtid_domain_id = 1` on the hub and `2` on the office.",
        ));
    }

    // The replication account's grants, where the server let us read them.
    for s in both {
        match &s.peer_user_grants {
            Some(Ok(grants))
                if !grants.iter().any(|g| {
                    let g = g.to_ascii_uppercase();
                    g.contains("REPLICATION SLAVE")
                        || g.contains("REPLICATION REPLICA")
                        || g.contains("ALL PRIVILEGES ON *.*")
                }) =>
            {
                out.push(finding(
                    NeedsAttention,
                    "replication_grants",
                    format!("The replication account on the {} database lacks REPLICATION SLAVE: {}", s.side, grants.join("; ")),
                    "Run the replication-user SQL from the hub kit (usr/share/tether/hub/replication_user.sql) on that database.",
                ));
            }
            // Unreadable with the shipped agent account (no access to `mysql`): a refused
            // replication login is reported by the replica's status as it happens.
            _ => {}
        }
    }

    // Time: the same zone and clocks close together.
    let zone = |s: &SideFacts| {
        let tz = s.var("time_zone").unwrap_or("");
        if tz.eq_ignore_ascii_case("SYSTEM") {
            s.var("system_time_zone").unwrap_or("").to_owned()
        } else {
            tz.to_owned()
        }
    };
    let (oz, hz) = (zone(office), zone(hub));
    if !oz.is_empty() && !hz.is_empty() && oz != hz {
        out.push(finding(
            Warning,
            "time_zone",
            format!("The office database runs in time zone {oz}, the hub's in {hz}: NOW() and TIMESTAMP columns differ between the sites."),
            "Set the same `default_time_zone` (for example '+00:00') on both servers.",
        ));
    }
    if let (Some(a), Some(b)) = (office.clock_offset_ms, hub.clock_offset_ms) {
        let skew = Duration::from_millis(a.abs_diff(b));
        if skew > x.max_skew {
            out.push(finding(
                Warning,
                "clock_skew",
                format!(
                    "The two database servers' clocks differ by {:.1} s (more than {:.1} s).",
                    skew.as_secs_f64(),
                    x.max_skew.as_secs_f64()
                ),
                "Run NTP (systemd-timesyncd or chrony) on both machines. Tether's lag figures correct for the difference; the data's timestamps do not.",
            ));
        }
    }
    out
}

/// The seed's puzzle: a column whose minute always equals its month, the mark of a date
/// format that wrote `%m` (month) where minutes (`%i` in MySQL, `%M` in strftime) were
/// meant. Needs enough samples and more than one minute value to say so. Pure.
pub fn minute_equals_month(column: &str, samples: &[String]) -> Option<Finding> {
    let parsed: Vec<(u32, u32)> = samples
        .iter()
        .filter_map(|v| {
            // "YYYY-MM-DD HH:MM[:SS...]"
            let v = v.trim();
            let month = v.get(5..7)?.parse().ok()?;
            let minute = v.get(14..16)?.parse().ok()?;
            (v.as_bytes().get(4) == Some(&b'-') && v.as_bytes().get(13) == Some(&b':'))
                .then_some((month, minute))
        })
        .collect();
    if parsed.len() < 20 {
        return None;
    }
    let all_equal = parsed.iter().all(|(month, minute)| month == minute);
    let months: std::collections::BTreeSet<u32> = parsed.iter().map(|(m, _)| *m).collect();
    // Within a single month every value agreeing could be chance only if few minutes appear;
    // with minutes spread over the hour it cannot be.
    if all_equal {
        let spread = if months.len() > 1 {
            format!("over {} different months", months.len())
        } else {
            "all in one month, every one at the same minute".to_owned()
        };
        Some(finding(
            Severity::Warning,
            "minute_equals_month",
            format!(
                "In {column}, the minute always equals the month ({} of {} values sampled, {spread}): the program writing it formats the time with `%m` (month) where it meant minutes.",
                parsed.len(),
                samples.len()
            ),
            "Fix the writer's date format: minutes are `%i` in MySQL's DATE_FORMAT and `%M` in strftime/Python; `%m` is the month. The stored minutes are lost; the date and hour are right.",
        ))
    } else {
        None
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Reads one side's facts over `c`, every query bounded by `timeout`; the grants are
/// filled in by [`examine`], which knows the other side's replication account.
pub async fn gather(
    side: &str,
    c: &mut mysql_async::Conn,
    timeout: Duration,
) -> Result<SideFacts, String> {
    let list = VARIABLES
        .iter()
        .map(|v| format!("'{v}'"))
        .collect::<Vec<_>>()
        .join(",");
    let rows: Vec<(String, String)> = bounded(
        timeout,
        "server variables",
        c.query(format!(
            "SHOW GLOBAL VARIABLES WHERE Variable_name IN ({list})"
        )),
    )
    .await?;
    let before = SystemTime::now();
    let server_ms: Option<i64> = bounded(
        timeout,
        "server clock",
        c.query_first("SELECT CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)"),
    )
    .await?;
    let after = SystemTime::now();
    let mid = unix_ms(before) / 2 + unix_ms(after) / 2;
    let row = crate::replication::read_status_row(c, timeout)
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    let col = |maria: &str, mysql: &str| row.get(maria).or_else(|| row.get(mysql));
    let replica_user = col("Master_User", "Source_User")
        .cloned()
        .filter(|u| !u.is_empty());
    let connect_retry_s = col("Connect_Retry", "Source_Connect_Retry").and_then(|v| v.parse().ok());
    let heartbeat_period_s =
        col("Slave_Heartbeat_Period", "Replica_Heartbeat_Period").and_then(|v| v.parse().ok());
    Ok(SideFacts {
        side: side.to_owned(),
        vars: rows.into_iter().collect(),
        clock_offset_ms: server_ms.map(|s| s - mid),
        replica_user,
        peer_user_grants: None,
        connect_retry_s,
        heartbeat_period_s,
    })
}

/// The grants of `user` (any host) as `c`'s server reports them.
async fn grants_of(
    c: &mut mysql_async::Conn,
    timeout: Duration,
    user: &str,
) -> Result<Vec<String>, String> {
    let q = format!("SHOW GRANTS FOR '{}'@'%'", user.replace('\'', ""));
    bounded(timeout, "grants", c.query::<String, _>(q)).await
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
    let mut c = bounded(
        timeout,
        "connect",
        mysql_async::Conn::new(opts(db, timeout)),
    )
    .await?;
    let q = format!(
        "SELECT CAST(`{col}` AS CHAR) FROM `{schema}`.`{table}` WHERE `{col}` IS NOT NULL ORDER BY `{col}` DESC LIMIT 200"
    );
    let rows: Vec<String> = bounded(timeout, "sample", c.query(q))
        .await
        .map_err(|e| format!("{e} (the account in the config needs SELECT on {schema}.{table})"))?;
    let _ = tokio::time::timeout(Duration::from_millis(300), c.disconnect()).await;
    Ok(rows)
}

/// Gathers both sides (the hub through `hub`, normally the agent's local forward) and
/// judges them. A side that cannot be reached is itself a finding.
pub async fn examine(
    office: &DbTarget,
    hub: &DbTarget,
    timeout: Duration,
    x: &Expectations,
) -> Vec<Finding> {
    let connect = |db: &DbTarget| {
        bounded(
            timeout,
            "connect",
            mysql_async::Conn::new(opts(db, timeout)),
        )
    };
    let (mut oc, mut hc) = (connect(office).await, connect(hub).await);
    let mut o = match &mut oc {
        Ok(c) => gather("office", c, timeout).await,
        Err(e) => Err(e.clone()),
    };
    let mut h = match &mut hc {
        Ok(c) => gather("hub", c, timeout).await,
        Err(e) => Err(e.clone()),
    };
    // Each side's grants are those of the account the *other* side logs in with.
    if let (Ok(of), Ok(hf), Ok(oconn), Ok(hconn)) = (&mut o, &mut h, &mut oc, &mut hc) {
        if let Some(user) = hf.replica_user.clone() {
            of.peer_user_grants = Some(grants_of(oconn, timeout, &user).await);
        }
        if let Some(user) = of.replica_user.clone() {
            hf.peer_user_grants = Some(grants_of(hconn, timeout, &user).await);
        }
    }
    for c in [oc, hc].into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_millis(300), c.disconnect()).await;
    }
    let mut out = Vec::new();
    match (&o, &h) {
        (Ok(o), Ok(h)) => out.extend(judge(o, h, x)),
        _ => {
            for (name, r, how) in [
                ("office", &o, "directly"),
                (
                    "hub",
                    &h,
                    "through the tunnel's local forward (is the agent running and the link up?)",
                ),
            ] {
                if let Err(e) = r {
                    out.push(finding(
                        Severity::Warning,
                        "unreachable",
                        format!("Cannot examine the {name} database, reached {how}: {e}"),
                        "Check the address and the agent account in the config, and that the database runs.",
                    ));
                }
            }
        }
    }
    out
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
    let mut c = bounded(
        timeout,
        "connect",
        mysql_async::Conn::new(opts(db, timeout)),
    )
    .await?;
    let row: Option<(String, Option<u64>)> = bounded(
        timeout,
        "checksum",
        c.query_first(format!(
            "CHECKSUM TABLE `{}`.`{}`",
            schema.replace('`', ""),
            name.replace('`', "")
        )),
    )
    .await
    .map_err(|e| format!("{e} (the agent's account needs SELECT on {table})"))?;
    let _ = tokio::time::timeout(Duration::from_millis(300), c.disconnect()).await;
    Ok(row.and_then(|(_, sum)| sum))
}

/// What one table's comparison found. Pure.
pub fn judge_checksums(
    table: &str,
    office: &Result<Option<u64>, String>,
    hub: &Result<Option<u64>, String>,
) -> Option<Finding> {
    match (office, hub) {
        (Ok(a), Ok(b)) if a == b => None,
        (Ok(a), Ok(b)) => Some(finding(
            Severity::NeedsAttention,
            "divergence",
            format!(
                "Table `{table}` differs between the sites (CHECKSUM TABLE office {}, hub {}) although replication reports no error: the data has diverged.",
                a.map_or("missing".into(), |v| v.to_string()),
                b.map_or("missing".into(), |v| v.to_string())
            ),
            format!(
                "A database administrator must find the differing rows (for example with pt-table-checksum, or by comparing `SELECT * FROM {table} ORDER BY` its key on both sides) and correct them on the wrong side; tether changes no data."
            ),
        )),
        (Err(e), _) | (_, Err(e)) => Some(finding(
            Severity::Warning,
            "divergence_unchecked",
            format!("Could not compare `{table}` between the sites: {e}"),
            "Check that the table exists on both sides and that the agent's account may read it.",
        )),
    }
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
            let o = checksum_table(office, timeout, table).await;
            let h = checksum_table(hub, timeout, table).await;
            verdict = judge_checksums(table, &o, &h);
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

    fn side(name: &str, vars: &[(&str, &str)]) -> SideFacts {
        SideFacts {
            side: name.into(),
            vars: vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            clock_offset_ms: Some(0),
            ..SideFacts::default()
        }
    }

    fn good(name: &str, id: &str, offset: &str) -> SideFacts {
        side(
            name,
            &[
                ("server_id", id),
                ("auto_increment_increment", "10"),
                ("auto_increment_offset", offset),
                ("log_bin", "ON"),
                ("binlog_format", "ROW"),
                ("binlog_row_image", "MINIMAL"),
                ("expire_logs_days", "7.000000"),
                ("gtid_domain_id", id),
                ("log_slave_updates", "OFF"),
                ("time_zone", "SYSTEM"),
                ("system_time_zone", "UTC"),
                ("slave_net_timeout", "15"),
                ("binlog_annotate_row_events", "OFF"),
            ],
        )
    }

    fn codes(f: &[Finding]) -> Vec<&str> {
        f.iter().map(|f| f.code.as_str()).collect()
    }

    #[test]
    fn a_well_set_pair_has_no_findings() {
        let f = judge(
            &good("office", "2", "2"),
            &good("hub", "3", "1"),
            &Expectations::default(),
        );
        assert!(f.is_empty(), "{f:?}");
    }

    #[test]
    fn each_misconfiguration_is_named_with_its_fix() {
        let x = Expectations::default();
        let cases: Vec<(&str, SideFacts, SideFacts)> = vec![
            (
                "server_id_equal",
                good("office", "3", "2"),
                good("hub", "3", "1"),
            ),
            (
                "server_id_default",
                good("office", "1", "2"),
                good("hub", "3", "1"),
            ),
            (
                "server_id_zero",
                good("office", "0", "2"),
                good("hub", "3", "1"),
            ),
            (
                "auto_increment_offset_equal",
                good("office", "2", "1"),
                good("hub", "3", "1"),
            ),
            ("time_zone", good("office", "2", "2"), {
                let mut h = good("hub", "3", "1");
                h.vars.insert("system_time_zone".into(), "CET".into());
                h
            }),
        ];
        for (code, o, h) in cases {
            let f = judge(&o, &h, &x);
            assert!(codes(&f).contains(&code), "{code}: {f:?}");
            assert!(
                f.iter().all(|f| !f.fix.is_empty()),
                "every finding has a fix"
            );
        }
        let mut o = good("office", "2", "2");
        o.vars.insert("auto_increment_increment".into(), "1".into());
        o.vars.insert("log_bin".into(), "OFF".into());
        o.vars.insert("binlog_format".into(), "MIXED".into());
        o.vars.insert("log_slave_updates".into(), "ON".into());
        o.vars.insert("expire_logs_days".into(), "0.5".into());
        let mut h = good("hub", "3", "1");
        h.vars.insert("gtid_domain_id".into(), "2".into());
        h.clock_offset_ms = Some(5_000);
        let f = judge(&o, &h, &x);
        for code in [
            "auto_increment_increment",
            "log_bin_off",
            "binlog_format",
            "log_slave_updates",
            "binlog_retention",
            "gtid_domain_id_equal",
            "clock_skew",
        ] {
            assert!(codes(&f).contains(&code), "{code}: {f:?}");
        }
        let bad = f
            .iter()
            .find(|f| f.code == "auto_increment_increment")
            .unwrap();
        assert_eq!(bad.severity, Severity::NeedsAttention);
        assert!(bad.message.contains("office"), "{}", bad.message);
    }

    #[test]
    fn replica_settings_that_slow_the_resume_point_at_the_setup() {
        let replica = |name: &str, id: &str, offset: &str, retry: u64, beat: f64| SideFacts {
            replica_user: Some("repl".into()),
            connect_retry_s: Some(retry),
            heartbeat_period_s: Some(beat),
            ..good(name, id, offset)
        };
        let x = Expectations::default();
        let f = judge(
            &replica("office", "2", "2", 1, 5.0),
            &replica("hub", "3", "1", 1, 5.0),
            &x,
        );
        assert!(f.is_empty(), "recommended settings: {f:?}");
        // MariaDB's defaults on the hub.
        let mut h = replica("hub", "3", "1", 60, 30.0);
        h.vars.insert("slave_net_timeout".into(), "60".into());
        h.vars
            .insert("binlog_annotate_row_events".into(), "ON".into());
        h.vars.insert("binlog_row_image".into(), "FULL".into());
        let f = judge(&replica("office", "2", "2", 1, 5.0), &h, &x);
        let mut got = codes(&f);
        got.sort();
        assert_eq!(
            got,
            [
                "binlog_annotate",
                "binlog_row_image",
                "replica_connect_retry",
                "replica_heartbeat",
                "replica_net_timeout"
            ]
        );
        assert!(
            f.iter()
                .all(|f| SETUP_CODES.contains(&f.code.as_str()) && f.message.contains("hub"))
        );
        let retry = f
            .iter()
            .find(|f| f.code == "replica_connect_retry")
            .unwrap();
        assert!(retry.message.contains("every 60 s"), "{}", retry.message);
        assert!(
            retry.fix.contains("MASTER_CONNECT_RETRY=1"),
            "{}",
            retry.fix
        );
    }

    #[test]
    fn retention_is_judged_against_the_longest_outage() {
        let x = Expectations {
            longest_outage: Duration::from_secs(10 * 86_400),
            ..Expectations::default()
        };
        let f = judge(&good("office", "2", "2"), &good("hub", "3", "1"), &x);
        assert_eq!(codes(&f), ["binlog_retention", "binlog_retention"], "{f:?}");
        assert!(f[0].message.contains("10days"), "{}", f[0].message);
    }

    #[test]
    fn a_replication_account_without_replication_slave_needs_attention() {
        let mut h = good("hub", "3", "1");
        h.peer_user_grants = Some(Ok(vec!["GRANT USAGE ON *.* TO `repl`@`%`".into()]));
        let f = judge(&good("office", "2", "2"), &h, &Expectations::default());
        assert_eq!(codes(&f), ["replication_grants"]);
        h.peer_user_grants = Some(Ok(vec![
            "GRANT REPLICATION SLAVE ON *.* TO `repl`@`%`".into(),
        ]));
        assert!(judge(&good("office", "2", "2"), &h, &Expectations::default()).is_empty());
    }

    #[test]
    fn mysql_8_spellings_are_read() {
        let mut o = good("office", "2", "2");
        o.vars.remove("expire_logs_days");
        o.vars.remove("log_slave_updates");
        o.vars.remove("gtid_domain_id");
        o.vars
            .insert("binlog_expire_logs_seconds".into(), "3600".into());
        o.vars.insert("log_replica_updates".into(), "ON".into());
        let f = judge(&o, &good("hub", "3", "1"), &Expectations::default());
        assert_eq!(
            codes(&f),
            ["binlog_retention", "log_slave_updates"],
            "{f:?}"
        );
    }

    #[test]
    fn checksums_that_differ_need_attention_and_name_the_table() {
        assert!(judge_checksums("app.t", &Ok(Some(7)), &Ok(Some(7))).is_none());
        let f = judge_checksums("app.t", &Ok(Some(7)), &Ok(Some(8))).unwrap();
        assert_eq!(f.severity, Severity::NeedsAttention);
        assert!(f.message.contains("`app.t`") && f.message.contains("office 7, hub 8"));
        let f = judge_checksums("app.t", &Ok(Some(7)), &Ok(None)).unwrap();
        assert!(f.message.contains("hub missing"), "{}", f.message);
        let f = judge_checksums("app.t", &Err("denied".into()), &Ok(Some(1))).unwrap();
        assert_eq!(f.severity, Severity::Warning);
    }

    #[test]
    fn the_check_waits_for_its_hour() {
        assert_eq!(until_hour(0, 3), Duration::from_secs(3 * 3600));
        assert_eq!(until_hour(3 * 3600, 3), Duration::from_secs(86_400));
        assert_eq!(until_hour(23 * 3600, 3), Duration::from_secs(4 * 3600));
        assert_eq!(until_hour(3 * 3600 - 1, 3), Duration::from_secs(1));
    }

    #[test]
    fn the_minute_that_always_equals_the_month_is_recognised() {
        let bad: Vec<String> = (0..60)
            .map(|i| {
                let month = i % 12 + 1;
                format!(
                    "2026-{month:02}-{:02} {:02}:{month:02}:{:02}",
                    i % 28 + 1,
                    i % 24,
                    i
                )
            })
            .collect();
        let f = minute_equals_month("app.orders.created", &bad).expect("recognised");
        assert!(
            f.message.contains("minute always equals the month"),
            "{}",
            f.message
        );
        assert!(f.fix.contains("%i"), "{}", f.fix);
        let good: Vec<String> = (0..60)
            .map(|i| format!("2026-03-{:02} 10:{:02}:00", i % 28 + 1, i))
            .collect();
        assert!(minute_equals_month("app.orders.created", &good).is_none());
        assert!(
            minute_equals_month("x", &bad[..5]).is_none(),
            "too few samples to say"
        );
    }
}
