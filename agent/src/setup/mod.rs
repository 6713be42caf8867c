//! `tether setup`: a site from "tunnel up, two database servers" to in sync in one guided
//! command. This module is its pure part: what to change on each server (from the
//! doctor's facts and findings: live changes, lines that need a restart, what stops the
//! setup), the accounts' SQL, and the agent's passwords written into `tether.toml`
//! keeping the file's comments and mode. [`command`] runs it against the servers.

pub mod command;
pub mod config_file;
pub mod resume;

use crate::dialect::{Dialect, Family};
pub use crate::doctor::Side;
use crate::doctor::SideFacts;
use crate::events::{Finding, Severity};

/// One server variable the setup changes while the server runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub side: Side,
    pub variable: String,
    /// What it is now, as the server said.
    pub from: String,
    /// The value, as SQL (`10`, `'ROW'`).
    pub to: String,
    pub why: String,
}

impl Change {
    /// The statement on a server of `family`: MySQL keeps it across restarts itself
    /// (`SET PERSIST`); MariaDB needs the config line too ([`Change::config_line`]).
    pub fn statement(&self, family: Family) -> String {
        match family {
            Family::MariaDb => format!("SET GLOBAL {} = {}", self.variable, self.to),
            Family::MySql => format!("SET PERSIST {} = {}", self.variable, self.to),
        }
    }

    /// The `[mysqld]` line that keeps the change across a restart.
    pub fn config_line(&self) -> String {
        format!("{} = {}", self.variable, self.to.trim_matches('\''))
    }
}

/// What the setup will do to the servers' settings, or why it cannot go on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SettingsPlan {
    /// Changed live, after showing them (and asking, unless `--yes`).
    pub changes: Vec<Change>,
    /// Lines for a server's `[mysqld]` section that only take effect after a restart:
    /// the setup stops, to be run again once the server restarted.
    pub restart: Vec<(Side, String, String)>,
    /// Findings the setup cannot put right: it stops, each with its fix.
    pub blocking: Vec<Finding>,
    /// Findings shown for information; the setup goes on.
    pub notes: Vec<Finding>,
}

impl SettingsPlan {
    /// Whether the setup can go on (nothing blocks and no restart is needed).
    pub fn can_go_on(&self) -> bool {
        self.blocking.is_empty() && self.restart.is_empty()
    }

    /// The plan in words: what stops it, what needs a restart, what will change.
    pub fn describe(&self, family: Family) -> String {
        let mut out = String::new();
        for f in &self.blocking {
            out.push_str(&format!("Cannot go on: {}\n  Fix: {}\n", f.message, f.fix));
        }
        for side in [Side::Office, Side::Hub] {
            let lines: Vec<&(Side, String, String)> =
                self.restart.iter().filter(|(s, _, _)| *s == side).collect();
            if lines.is_empty() {
                continue;
            }
            out.push_str(&format!(
                "The {} database needs these settings, which only take effect after a restart; put them in its server config and restart it, then run `tether setup` again:\n[mysqld]\n",
                side.name()
            ));
            for (_, line, why) in lines {
                out.push_str(&format!("{line}    # {why}\n"));
            }
        }
        if !self.changes.is_empty() {
            out.push_str("Settings it changes while the servers run:\n");
            for c in &self.changes {
                out.push_str(&format!(
                    "  {}: {};  (now {}: {})\n",
                    c.side.name(),
                    c.statement(family),
                    c.from,
                    c.why
                ));
            }
        }
        for f in &self.notes {
            out.push_str(&format!("Note: {} {}\n", f.message, f.fix));
        }
        out
    }

    /// The `[mysqld]` lines that keep the live changes of `side` across a restart
    /// (MariaDB has no `SET PERSIST`); empty on MySQL.
    pub fn config_lines(&self, side: Side, family: Family) -> Vec<String> {
        if family == Family::MySql {
            return Vec::new();
        }
        self.changes
            .iter()
            .filter(|c| c.side == side)
            .map(Change::config_line)
            .collect()
    }
}

/// Findings the setup's own steps put right: its live changes, its accounts and its
/// replication setup.
const PUT_RIGHT: &[&str] = &[
    "server_id_zero",
    "server_id_default",
    "server_id_equal",
    "auto_increment_increment",
    "auto_increment_offset_equal",
    "gtid_domain_id_equal",
    "enforce_gtid_consistency",
    "gtid_mode",
    "binlog_format",
    "binlog_retention",
    "replication_grants",
    "server_id_taken",
    "gtid_domain_taken",
];

/// The numbers the setup gives an office on a hub with several offices
/// (`replication.hub_connection` set): the ones it has when they are already one free
/// number for all three, else the next free one the hub shows
/// ([`crate::site_numbers::propose`]). The increment is the hub's (every office shares
/// it), which must leave a lane for each site planned. Pure.
pub fn office_numbers(
    office: &SideFacts,
    hub: &SideFacts,
    planned_sites: u64,
) -> Result<crate::site_numbers::SiteNumbers, Finding> {
    let maria = hub.dialect.family == Family::MariaDb;
    let hub_id = num(hub, "server_id");
    let hub_domain = if maria {
        num(hub, "gtid_domain_id")
    } else {
        None
    };
    let increment = match num(hub, "auto_increment_increment") {
        Some(i) if i >= 2 => i,
        _ => planned_sites,
    };
    if increment < planned_sites {
        return Err(Finding {
            severity: Severity::NeedsAttention,
            code: "increment_too_small_for_planned".into(),
            message: format!(
                "The hub's auto_increment_increment is {increment}, but site.planned_sites is {planned_sites}: the offices cannot each have a lane of their own."
            ),
            fix: "Either set site.planned_sites in tether.toml to at most the hub's increment, or raise auto_increment_increment on every server at the same moment with writes stopped everywhere (README \"Several offices on one hub\").".into(),
        });
    }
    let others = &hub.other_offices;
    if let Some(n) = num(office, "server_id")
        && num(office, "auto_increment_offset") == Some(n)
        && (!maria || num(office, "gtid_domain_id") == Some(n))
        && let Ok(kept) =
            crate::site_numbers::check_number(n, hub_id, hub_domain, others, increment)
    {
        return Ok(kept);
    }
    crate::site_numbers::propose(hub_id, hub_domain, others, increment).map_err(|why| Finding {
        severity: Severity::NeedsAttention,
        code: "no_site_number_left".into(),
        message: format!("This office cannot be given a number: {why}"),
        fix: "Retire an office for good only if its rows' lane may be reused, else plan for more sites (README \"Several offices on one hub\").".into(),
    })
}

/// Judges what the setup does about both servers' settings, from the doctor's facts and
/// its findings on them (pure).
/// `numbers`: the office's numbers on a hub with several offices ([`office_numbers`]);
/// `None` for a hub and its one office.
pub fn plan_settings(
    office: &SideFacts,
    hub: &SideFacts,
    findings: &[Finding],
    numbers: Option<crate::site_numbers::SiteNumbers>,
    planned_sites: u64,
) -> SettingsPlan {
    let mut plan = SettingsPlan::default();
    for f in findings {
        let code = f.code.as_str();
        if PUT_RIGHT.contains(&code) || crate::doctor::SETUP_CODES.contains(&code) {
            continue;
        }
        // The office's numbers on a hub with several offices put these right as well.
        if numbers.is_some()
            && matches!(
                code,
                "auto_increment_increment_differs" | "auto_increment_offset_too_large"
            )
        {
            continue;
        }
        match code {
            // Needs a restart: handled below as config lines.
            "log_bin_off" | "server_uuid_equal" => {}
            "log_slave_updates" => plan.notes.push(f.clone()),
            _ if f.severity == Severity::NeedsAttention => plan.blocking.push(f.clone()),
            _ => plan.notes.push(f.clone()),
        }
    }
    if !plan.blocking.is_empty() && findings.iter().any(|f| f.code == "families_differ") {
        // A mixed pair: nothing else about it would help.
        return plan;
    }
    for side in [office, hub] {
        let s = side_of(side);
        if var(side, "log_bin").is_some_and(|v| !on(v)) {
            let (line, why) = match side.dialect.family {
                Family::MariaDb => (
                    "log_bin = binlog\nbinlog_format = ROW".to_owned(),
                    "the other side replicates from this server's binary log",
                ),
                Family::MySql => (
                    "# remove skip-log-bin / disable-log-bin".to_owned(),
                    "MySQL keeps a binary log unless told not to; the other side replicates from it",
                ),
            };
            plan.restart.push((s, line, why.into()));
        }
    }
    if office.dialect.family == Family::MySql
        && let (Some(a), Some(b)) = (var(office, "server_uuid"), var(hub, "server_uuid"))
        && a == b
    {
        plan.restart.push((
            Side::Office,
            "# delete auto.cnf in the data directory".into(),
            "its data directory is a copy of the hub's (the same server_uuid): MySQL makes a new one at the next start".into(),
        ));
    }
    plan.changes = match numbers {
        Some(numbers) => numbered_changes(office, hub, numbers),
        None => live_changes(office, hub, planned_sites),
    };
    plan
}

/// The live changes for an office on a hub with several offices: the office gets its
/// numbers; the hub, which the other offices share, keeps its ids and increment (only
/// its own binary log format and retention may change).
fn numbered_changes(
    office: &SideFacts,
    hub: &SideFacts,
    numbers: crate::site_numbers::SiteNumbers,
) -> Vec<Change> {
    let mut out = Vec::new();
    let n = numbers.number.to_string();
    let mut wanted = vec![
        (
            "server_id",
            n.clone(),
            "every server needs its own id; this is this office's number at the hub",
        ),
        (
            "auto_increment_offset",
            n.clone(),
            "new rows at this office get ids in a lane of their own",
        ),
        (
            "auto_increment_increment",
            numbers.increment.to_string(),
            "the same on every server: one lane per site planned",
        ),
    ];
    if office.dialect.family == Family::MariaDb {
        wanted.push((
            "gtid_domain_id",
            n,
            "each site's changes in a GTID domain of their own, so the hub keeps each office's position apart",
        ));
    }
    for (variable, to, why) in wanted {
        if var(office, variable).map(str::trim) != Some(to.as_str()) {
            out.push(Change {
                side: Side::Office,
                variable: variable.into(),
                from: var(office, variable).unwrap_or("unset").to_owned(),
                to,
                why: why.into(),
            });
        }
    }
    for side in [office, hub] {
        if var(side, "binlog_format").is_some_and(|f| !f.eq_ignore_ascii_case("ROW")) {
            out.push(Change {
                side: side_of(side),
                variable: "binlog_format".into(),
                from: var(side, "binlog_format").unwrap_or("unset").to_owned(),
                to: "'ROW'".into(),
                why: "statements can apply differently on the other side; rows cannot".into(),
            });
        }
        out.extend(retention_change(side));
        if side.dialect.family == Family::MySql {
            out.extend(gtid_steps(side));
        }
    }
    out
}

/// The live changes both servers need.
/// The least `auto_increment_increment` a fresh pair gets: room to add offices later
/// without the painful change of every server's increment at once.
const MIN_LANES: u64 = 10;

fn live_changes(office: &SideFacts, hub: &SideFacts, planned_sites: u64) -> Vec<Change> {
    let mut out = Vec::new();
    let change = |side: &SideFacts, variable: &str, to: String, why: &str| Change {
        side: side_of(side),
        variable: variable.into(),
        from: var(side, variable).unwrap_or("unset").to_owned(),
        to,
        why: why.into(),
    };
    // server_id: not 0, not the default 1 (a forgotten config), and distinct.
    let mut hub_id = num(hub, "server_id");
    if matches!(hub_id, Some(0 | 1)) {
        out.push(change(
            hub,
            "server_id",
            "11".into(),
            "every server needs its own id; 0 cannot replicate, 1 is every server's default",
        ));
        hub_id = Some(11);
    }
    if let Some(office_id) = num(office, "server_id")
        && (office_id <= 1 || Some(office_id) == hub_id)
    {
        // The office's number, as its offset below: the hub shows its server id to a
        // later office's setup, which then knows that lane is taken.
        let new = if hub_id == Some(2) { 3 } else { 2 };
        out.push(change(
            office,
            "server_id",
            new.to_string(),
            "each server needs its own id, or each ignores the other's changes as its own",
        ));
    }
    // auto_increment: a lane for every site planned (`site.planned_sites`, the
    // integrator's answer), at least ten, distinct offsets.
    let lanes = planned_sites.max(MIN_LANES);
    for side in [office, hub] {
        if num(side, "auto_increment_increment").is_some_and(|i| i < 2) {
            out.push(change(
                side,
                "auto_increment_increment",
                lanes.to_string(),
                &format!("both sites create rows: ids must not collide (room for {lanes} sites; site.planned_sites is {planned_sites}, and changing the increment later means stopping writes everywhere)"),
            ));
        }
    }
    let hub_offset = num(hub, "auto_increment_offset");
    if let Some(o) = num(office, "auto_increment_offset")
        && Some(o) == hub_offset
    {
        let new = if o == 1 { 2 } else { 1 };
        out.push(change(
            office,
            "auto_increment_offset",
            new.to_string(),
            "new rows at each site get ids of their own",
        ));
    }
    // MariaDB's GTID domains: one per site.
    if office.dialect.family == Family::MariaDb
        && let (Some(o), Some(h)) = (num(office, "gtid_domain_id"), num(hub, "gtid_domain_id"))
        && o == h
    {
        out.push(change(
            office,
            "gtid_domain_id",
            (h + 1).to_string(),
            "each site's changes in a GTID domain of their own, so both can be tracked at once",
        ));
    }
    for side in [office, hub] {
        if var(side, "binlog_format").is_some_and(|f| !f.eq_ignore_ascii_case("ROW")) {
            out.push(change(
                side,
                "binlog_format",
                "'ROW'".into(),
                "statements can apply differently on the other side; rows cannot",
            ));
        }
        out.extend(retention_change(side));
        if side.dialect.family == Family::MySql {
            out.extend(gtid_steps(side));
        }
    }
    out
}

/// Raises the binary log retention to the doctor's floor (7 days): after an outage
/// longer than it the other side cannot catch up.
fn retention_change(side: &SideFacts) -> Option<Change> {
    let needed = crate::doctor::retention_needed(std::time::Duration::ZERO);
    let secs = num(side, "binlog_expire_logs_seconds").unwrap_or(0);
    let days = var(side, "expire_logs_days")
        .and_then(|d| d.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    let kept = if secs > 0 {
        secs
    } else {
        (days * 86_400.0) as u64
    };
    if kept == 0 || kept >= needed.as_secs() {
        // 0: never purged automatically.
        return None;
    }
    let why = "after an outage longer than the retention the other side cannot catch up";
    let (variable, to) = if side.vars.contains_key("binlog_expire_logs_seconds") {
        ("binlog_expire_logs_seconds", needed.as_secs().to_string())
    } else {
        (
            "expire_logs_days",
            needed.as_secs().div_ceil(86_400).to_string(),
        )
    };
    Some(Change {
        side: side_of(side),
        variable: variable.into(),
        from: var(side, variable).unwrap_or("unset").to_owned(),
        to,
        why: why.into(),
    })
}

/// MySQL's GTIDs on: `enforce_gtid_consistency` first, then `gtid_mode` one step at a
/// time (MySQL refuses a jump).
fn gtid_steps(side: &SideFacts) -> Vec<Change> {
    const STEPS: [&str; 4] = ["OFF", "OFF_PERMISSIVE", "ON_PERMISSIVE", "ON"];
    let mut out = Vec::new();
    let enforce = var(side, "enforce_gtid_consistency").map(|v| v.trim().to_ascii_uppercase());
    if enforce.as_deref().is_some_and(|v| v != "ON") {
        out.push(Change {
            side: side_of(side),
            variable: "enforce_gtid_consistency".into(),
            from: enforce.clone().unwrap_or_default(),
            to: "ON".into(),
            why: "gtid_mode = ON needs it".into(),
        });
    }
    if let Some(mode) = var(side, "gtid_mode").map(|v| v.trim().to_ascii_uppercase())
        && mode != "ON"
    {
        let from = STEPS.iter().position(|s| *s == mode).unwrap_or(0);
        let mut now = mode.clone();
        for step in &STEPS[from + 1..] {
            out.push(Change {
                side: side_of(side),
                variable: "gtid_mode".into(),
                from: now.clone(),
                to: (*step).into(),
                why: "replicas resume from the exact transaction after an outage (one step at a time)".into(),
            });
            now = (*step).into();
        }
    }
    out
}

fn side_of(facts: &SideFacts) -> Side {
    if facts.side == "hub" {
        Side::Hub
    } else {
        Side::Office
    }
}

fn var<'a>(side: &'a SideFacts, name: &str) -> Option<&'a str> {
    side.vars.get(name).map(String::as_str)
}

fn num(side: &SideFacts, name: &str) -> Option<u64> {
    var(side, name).and_then(|v| v.trim().parse().ok())
}

fn on(v: &str) -> bool {
    matches!(v.to_ascii_uppercase().as_str(), "ON" | "1")
}

/// The replication account's user name (the hub kit's).
pub const REPL_USER: &str = "repl";

/// The account an office's replica logs in to the hub with: the hub kit's `repl` for a
/// hub and its one office; on a hub with several offices one per office, `repl_<number>`,
/// so setting one office up never re-keys the account the other offices' replicas use.
pub fn hub_repl_user(numbers: Option<crate::site_numbers::SiteNumbers>) -> String {
    match numbers {
        Some(n) => format!("{REPL_USER}_{}", n.number),
        None => REPL_USER.to_owned(),
    }
}

/// The SQL that creates (or, when they exist, re-keys) the replication account
/// `repl_user` and, unless `agent` is `None` (an agent account shared with other offices
/// and left alone), the agent's monitoring account on a server of `family`: the hub
/// kit's texts for the configured agent user and schema, then `ALTER USER` so an account
/// left from before gets the new password too.
pub fn accounts_sql(
    d: &Dialect,
    repl_user: &str,
    repl_password: &crate::secret::Secret,
    agent: Option<(&str, &str, &crate::secret::Secret)>,
) -> Vec<String> {
    let quoted_repl = crate::dialect::quote(repl_user);
    let repl = crate::hubkit::replication_user_sql(d.family, repl_password.expose())
        .replace("'repl'@", &format!("{quoted_repl}@"));
    let mut out: Vec<String> = statements(&repl);
    let hosts: &[&str] = match d.family {
        Family::MariaDb => &["%", "localhost", "127.0.0.1"],
        Family::MySql => &["%"],
    };
    let mut alter = |user: &str, password: &crate::secret::Secret| {
        for host in hosts {
            out.push(format!(
                "ALTER USER IF EXISTS {user}@{} IDENTIFIED BY {}",
                crate::dialect::quote(host),
                crate::dialect::quote(password.expose())
            ));
        }
    };
    alter(&quoted_repl, repl_password);
    if let Some((agent_user, agent_schema, agent_password)) = agent {
        let quoted_user = crate::dialect::quote(agent_user);
        let schema = crate::seed::sql::ident(agent_schema);
        let sql = crate::hubkit::agent_user_sql(d.family, agent_password.expose())
            .replace("'tether'@", &format!("{quoted_user}@"))
            .replace(" tether.*", &format!(" {schema}.*"))
            .replace("EXISTS tether;", &format!("EXISTS {schema};"));
        alter(&quoted_user, agent_password);
        let alters = out.split_off(out.len() - hosts.len());
        out.extend(statements(&sql));
        out.extend(alters);
    }
    out
}

/// The statements of an SQL text: comment lines left out, split at `;` line ends.
fn statements(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("--"))
        .map(|l| l.trim_end_matches(';').to_owned())
        .collect()
}

/// A source's binary log position for a replica to start from: the source's own GTID
/// domains only (MariaDB `gtid_binlog_pos`, without the replica's domain), so the replica
/// starts with what the source writes from now on (the hub from the office's, or, after
/// a new hub was filled from the office, the office from the hub's).
pub fn start_position(source_binlog_pos: &str, replica_domain: u64) -> String {
    source_binlog_pos
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .filter(|g| {
            g.split('-')
                .next()
                .and_then(|d| d.parse::<u64>().ok())
                .is_some_and(|d| d != replica_domain)
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The hub's new `gtid_slave_pos` (MariaDB, where it covers every connection) once an
/// office joins a hub that replicates from other offices: every domain the hub's position
/// already holds kept exactly, plus the office's own domains from its `gtid_binlog_pos`,
/// those the hub has never seen written (`hub_known`: the hub's own domain and every
/// domain of its `gtid_binlog_state`), so the office's new connection starts with what
/// the office writes from now on and no other office's position moves.
pub fn merged_hub_position(
    hub_slave_pos: &str,
    hub_known: &[u64],
    office_binlog_pos: &str,
) -> String {
    let domain = |g: &str| {
        g.split('-')
            .next()
            .and_then(|d| d.trim().parse::<u64>().ok())
    };
    let gtids = |text: &str| -> Vec<(u64, String)> {
        text.split(',')
            .map(str::trim)
            .filter_map(|g| Some((domain(g)?, g.to_owned())))
            .collect()
    };
    let mut out = gtids(hub_slave_pos);
    for (d, g) in gtids(office_binlog_pos) {
        if !hub_known.contains(&d) && !out.iter().any(|(have, _)| *have == d) {
            out.push((d, g));
        }
    }
    out.sort_by_key(|(d, _)| *d);
    out.into_iter()
        .map(|(_, g)| g)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::Version;

    #[test]
    fn the_merged_position_keeps_every_other_domain_exactly() {
        // The hub (domain 1) holds office-1's domain 2; office-2 writes in 3 and, before
        // the setup gave it its domain, wrote in 0; it also relays... nothing of 2.
        assert_eq!(
            merged_hub_position("2-2-917", &[1, 2], "0-1-4,3-3-12"),
            "0-1-4,2-2-917,3-3-12"
        );
        // A domain the hub already knows is never taken from the office.
        assert_eq!(
            merged_hub_position("2-2-917", &[1, 2], "2-3-5,1-3-1"),
            "2-2-917"
        );
        assert_eq!(merged_hub_position("", &[1], ""), "");
    }

    #[test]
    fn each_office_on_a_hub_with_several_gets_a_replication_account_of_its_own() {
        let n = crate::site_numbers::SiteNumbers {
            number: 3,
            increment: 10,
        };
        assert_eq!(hub_repl_user(Some(n)), "repl_3");
        assert_eq!(hub_repl_user(None), "repl");
        let d = Dialect::new(Family::MariaDb, Version(10, 11, 6));
        let sql = accounts_sql(&d, "repl_3", &crate::secret::Secret::new("r"), None);
        assert!(
            sql.contains(&"CREATE USER IF NOT EXISTS 'repl_3'@'%' IDENTIFIED BY 'r'".to_owned()),
            "{sql:?}"
        );
        assert!(
            sql.iter()
                .all(|s| !s.contains("'repl'@") && !s.contains("tether")),
            "{sql:?}"
        );
    }

    fn maria(side: &str, vars: &[(&str, &str)]) -> SideFacts {
        let mut f = SideFacts::new(side, Dialect::new(Family::MariaDb, Version(10, 11, 6)));
        f.vars = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        f
    }

    fn fresh(side: &str) -> SideFacts {
        maria(
            side,
            &[
                ("server_id", "1"),
                ("auto_increment_increment", "1"),
                ("auto_increment_offset", "1"),
                ("gtid_domain_id", "0"),
                ("log_bin", "ON"),
                ("binlog_format", "MIXED"),
                ("binlog_expire_logs_seconds", "86400"),
                ("expire_logs_days", "1"),
            ],
        )
    }

    fn judged(office: &SideFacts, hub: &SideFacts) -> SettingsPlan {
        let findings = crate::doctor::judge(office, hub, &Default::default());
        plan_settings(office, hub, &findings, None, 2)
    }

    #[test]
    fn a_fresh_pair_gets_a_lane_for_every_site_planned_and_at_least_ten() {
        let findings = crate::doctor::judge(&fresh("office"), &fresh("hub"), &Default::default());
        let increments = |planned| -> Vec<String> {
            plan_settings(&fresh("office"), &fresh("hub"), &findings, None, planned)
                .changes
                .iter()
                .filter(|c| c.variable == "auto_increment_increment")
                .map(|c| c.to.clone())
                .collect()
        };
        assert_eq!(increments(2), ["10", "10"]);
        assert_eq!(increments(16), ["16", "16"]);
    }

    #[test]
    fn a_fresh_mariadb_pair_is_set_live_with_distinct_ids_offsets_and_domains() {
        let plan = judged(&fresh("office"), &fresh("hub"));
        assert!(plan.can_go_on(), "{plan:?}");
        let office: Vec<String> = plan
            .changes
            .iter()
            .filter(|c| c.side == Side::Office)
            .map(|c| c.statement(Family::MariaDb))
            .collect();
        assert_eq!(
            office,
            [
                "SET GLOBAL server_id = 2",
                "SET GLOBAL auto_increment_increment = 10",
                "SET GLOBAL auto_increment_offset = 2",
                "SET GLOBAL gtid_domain_id = 1",
                "SET GLOBAL binlog_format = 'ROW'",
                "SET GLOBAL binlog_expire_logs_seconds = 604800",
            ]
        );
        let hub: Vec<String> = plan
            .changes
            .iter()
            .filter(|c| c.side == Side::Hub)
            .map(|c| c.variable.clone())
            .collect();
        assert_eq!(
            hub,
            [
                "server_id",
                "auto_increment_increment",
                "binlog_format",
                "binlog_expire_logs_seconds"
            ]
        );
        assert!(plan.notes.is_empty(), "{:?}", plan.notes);
        assert!(
            plan.config_lines(Side::Office, Family::MariaDb)
                .contains(&"binlog_format = ROW".to_owned())
        );
        let words = plan.describe(Family::MariaDb);
        assert!(
            words.contains("office: SET GLOBAL server_id = 2;  (now 1:"),
            "{words}"
        );
    }

    #[test]
    fn the_nth_office_gets_its_number_and_the_shared_hub_is_left_alone() {
        let office = fresh("office");
        let mut hub = maria(
            "hub",
            &[
                ("server_id", "1"),
                ("auto_increment_increment", "10"),
                ("auto_increment_offset", "1"),
                ("gtid_domain_id", "1"),
                ("log_bin", "ON"),
                ("log_slave_updates", "ON"),
                ("binlog_format", "ROW"),
                ("binlog_expire_logs_seconds", "0"),
            ],
        );
        hub.other_offices = vec![crate::site_numbers::OtherOffice {
            connection: "office-1".into(),
            server_id: Some(2),
            domains: vec![2],
        }];
        let numbers = office_numbers(&office, &hub, 10).unwrap();
        assert_eq!(numbers.number, 3);
        let expect = crate::doctor::Expectations {
            sites: 10,
            hub_connection: Some("office-2".into()),
            ..Default::default()
        };
        let findings = crate::doctor::judge(&office, &hub, &expect);
        let plan = plan_settings(&office, &hub, &findings, Some(numbers), 10);
        assert!(plan.can_go_on(), "{plan:?}");
        let changes: Vec<String> = plan
            .changes
            .iter()
            .map(|c| format!("{}: {}", c.side.name(), c.statement(Family::MariaDb)))
            .collect();
        assert_eq!(
            changes,
            [
                "office: SET GLOBAL server_id = 3",
                "office: SET GLOBAL auto_increment_offset = 3",
                "office: SET GLOBAL auto_increment_increment = 10",
                "office: SET GLOBAL gtid_domain_id = 3",
                "office: SET GLOBAL binlog_format = 'ROW'",
                "office: SET GLOBAL binlog_expire_logs_seconds = 604800",
            ]
        );
        // An office already on a free number keeps it.
        let mut kept = office.clone();
        for v in ["server_id", "auto_increment_offset", "gtid_domain_id"] {
            kept.vars.insert(v.into(), "7".into());
        }
        assert_eq!(office_numbers(&kept, &hub, 10).unwrap().number, 7);
        // More sites planned than the hub's increment leaves lanes for: refused.
        let f = office_numbers(&office, &hub, 12).unwrap_err();
        assert_eq!(f.severity, Severity::NeedsAttention);
        assert!(
            f.message.contains("is 10, but site.planned_sites is 12"),
            "{}",
            f.message
        );
    }

    #[test]
    fn a_well_set_pair_needs_no_change() {
        let good = |side: &str, id: &str, n: &str| {
            maria(
                side,
                &[
                    ("server_id", id),
                    ("auto_increment_increment", "10"),
                    ("auto_increment_offset", n),
                    ("gtid_domain_id", n),
                    ("log_bin", "ON"),
                    ("binlog_format", "ROW"),
                    ("binlog_expire_logs_seconds", "0"),
                ],
            )
        };
        let plan = judged(&good("office", "12", "2"), &good("hub", "11", "1"));
        assert_eq!(plan.changes, []);
        assert!(plan.can_go_on());
    }

    #[test]
    fn a_binary_log_that_is_off_needs_a_restart_and_stops_the_setup() {
        let mut office = fresh("office");
        office.vars.insert("log_bin".into(), "OFF".into());
        let plan = judged(&office, &fresh("hub"));
        assert!(!plan.can_go_on());
        assert_eq!(plan.restart.len(), 1);
        let words = plan.describe(Family::MariaDb);
        assert!(words.contains("[mysqld]\nlog_bin = binlog"), "{words}");
        assert!(words.contains("run `tether setup` again"), "{words}");
    }

    #[test]
    fn a_mixed_pair_stops_with_that_one_reason() {
        let office = fresh("office");
        let mut hub = fresh("hub");
        hub.dialect = Dialect::new(Family::MySql, Version(8, 4, 3));
        let plan = judged(&office, &hub);
        assert_eq!(plan.blocking.len(), 1);
        assert_eq!(plan.blocking[0].code, "families_differ");
        assert!(plan.changes.is_empty() && plan.restart.is_empty());
    }

    #[test]
    fn mysql_gets_its_gtids_one_step_at_a_time_and_persisted() {
        let mut office = fresh("office");
        office.dialect = Dialect::new(Family::MySql, Version(8, 4, 3));
        office.vars.insert("gtid_mode".into(), "OFF".into());
        office
            .vars
            .insert("enforce_gtid_consistency".into(), "OFF".into());
        let steps: Vec<String> = gtid_steps(&office)
            .iter()
            .map(|c| c.statement(Family::MySql))
            .collect();
        assert_eq!(
            steps,
            [
                "SET PERSIST enforce_gtid_consistency = ON",
                "SET PERSIST gtid_mode = OFF_PERMISSIVE",
                "SET PERSIST gtid_mode = ON_PERMISSIVE",
                "SET PERSIST gtid_mode = ON",
            ]
        );
    }

    #[test]
    fn accounts_are_created_and_re_keyed_for_the_configured_user() {
        let d = Dialect::new(Family::MariaDb, Version(10, 11, 6));
        let sql = accounts_sql(
            &d,
            REPL_USER,
            &crate::secret::Secret::new("r"),
            Some(("monitor", "mon", &crate::secret::Secret::new("a'b"))),
        );
        assert!(sql.iter().all(|s| !s.contains("'tether'")), "{sql:?}");
        assert!(
            sql.contains(&"CREATE DATABASE IF NOT EXISTS `mon`".to_owned()),
            "{sql:?}"
        );
        assert!(
            sql.contains(&"ALTER USER IF EXISTS 'monitor'@'%' IDENTIFIED BY 'a\\'b'".to_owned())
        );
        assert!(
            sql.contains(&"ALTER USER IF EXISTS 'repl'@'127.0.0.1' IDENTIFIED BY 'r'".to_owned())
        );
        assert!(
            sql.iter()
                .any(|s| s.starts_with("GRANT ALL ON `mon`.* TO 'monitor'@'%'"))
        );
    }

    #[test]
    fn the_hub_starts_from_the_offices_own_domains() {
        assert_eq!(start_position("0-1-5,1-11-900,2-12-40", 1), "0-1-5,2-12-40");
        assert_eq!(start_position("", 1), "");
    }
}
