//! The doctor's judgement: pure functions from what both databases said (and what the
//! agent recorded, such as the longest outage) to findings with their fixes, each in the
//! words of the server's family (MariaDB or MySQL: its statements, variable names and
//! config lines). One function per topic: the families and versions, server identity,
//! auto-increment, GTIDs (MySQL's mode and consistency), the binary log, the replicas'
//! settings, GTID domains (MariaDB), the replication account's grants, time; and the two
//! checks of data, the divergence comparison and the minute that equals the month.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::dialect::{Dialect, Family, Threads};
use crate::events::{Finding, Severity};

/// What one side's database told the doctor.
#[derive(Debug, Clone, PartialEq)]
pub struct SideFacts {
    /// "office" or "hub".
    pub side: String,
    /// The server's family and version: every check and fix is in its words.
    pub dialect: Dialect,
    /// The replication connection (MariaDB) or channel (MySQL) this side's replica was
    /// read on and its fixes name; `None`: the default one.
    pub channel: Option<String>,
    pub vars: BTreeMap<String, String>,
    /// Server clock minus this machine's clock, milliseconds.
    pub clock_offset_ms: Option<i64>,
    /// The account this side replicates with (from its replica status), if set up.
    pub replica_user: Option<String>,
    /// The grants of the account the *other* side replicates with, when readable here
    /// (the shipped agent account cannot read them; a DBA's account can).
    pub peer_user_grants: Option<Result<Vec<String>, String>>,
    /// This side's replica: seconds between its connection attempts, and the heartbeat
    /// period it asked its primary for (MariaDB: its replica status; MySQL:
    /// `performance_schema.replication_connection_configuration`), if set up.
    pub connect_retry_s: Option<u64>,
    pub heartbeat_period_s: Option<f64>,
    /// MySQL's replica connection settings (`SOURCE_RETRY_COUNT`, `GET_SOURCE_PUBLIC_KEY`
    /// or a key file, `SOURCE_SSL`, `SOURCE_COMPRESSION_ALGORITHMS`), if set up and read.
    pub retry_count: Option<u64>,
    pub gets_public_key: Option<bool>,
    pub tls: Option<bool>,
    pub compression: Option<String>,
    /// Why MySQL's replica connection settings could not be read, if they could not.
    pub connection_settings_unread: Option<String>,
    /// On a hub that replicates from several offices: the other offices it replicates
    /// from (every connection but this office's), with their numbers.
    pub other_offices: Vec<crate::site_numbers::OtherOffice>,
}

impl SideFacts {
    /// Facts with nothing read yet but the side's name and its server's dialect.
    pub fn new(side: &str, dialect: Dialect) -> SideFacts {
        SideFacts {
            side: side.to_owned(),
            dialect,
            channel: None,
            vars: BTreeMap::new(),
            clock_offset_ms: None,
            replica_user: None,
            peer_user_grants: None,
            connect_retry_s: None,
            heartbeat_period_s: None,
            retry_count: None,
            gets_public_key: None,
            tls: None,
            compression: None,
            connection_settings_unread: None,
            other_offices: Vec::new(),
        }
    }

    /// `START SLAVE` / `START REPLICA` of this side's replica, on its channel.
    fn start_replica(&self) -> String {
        self.dialect
            .start_replica(Threads::Both, self.channel.as_deref())
    }

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

    fn mysql(&self) -> bool {
        self.dialect.family == Family::MySql
    }

    /// The side it replicates from.
    fn peer(&self) -> &'static str {
        if self.side == "office" {
            "hub"
        } else {
            "office"
        }
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

    /// The time zone the server's NOW() uses.
    fn zone(&self) -> String {
        let tz = self.var("time_zone").unwrap_or("");
        if tz.eq_ignore_ascii_case("SYSTEM") {
            self.var("system_time_zone").unwrap_or("").to_owned()
        } else {
            tz.to_owned()
        }
    }

    /// `STOP ...; CHANGE ... TO <options>; START ...;` on this side's replica, in its words;
    /// `options` by their MySQL 8.0.23+ names with their values (`SOURCE_CONNECT_RETRY=1`).
    fn change_replica(&self, options: &[(&str, &str)]) -> String {
        let d = &self.dialect;
        let channel = self.channel.as_deref();
        let options: Vec<String> = options
            .iter()
            .map(|(name, value)| format!("{}={value}", d.option(name)))
            .collect();
        format!(
            "{}; {}; {};",
            d.stop_replica(Threads::Both, channel),
            d.change_source(channel, &options),
            d.start_replica(Threads::Both, channel)
        )
    }
}

/// What the judgement needs besides the facts.
#[derive(Debug, Clone)]
pub struct Expectations {
    /// How many sites will ever write, hub included (`site.planned_sites`):
    /// auto_increment_increment must be at least this.
    pub sites: u64,
    /// The longest link outage the agent recorded (binary logs must outlive it, with
    /// [`RETENTION_MARGIN`]).
    pub longest_outage: Duration,
    /// Largest acceptable clock difference between the two servers.
    pub max_skew: Duration,
    /// The hub's connection (MariaDB) or channel (MySQL) for this office
    /// (`replication.hub_connection`): the hub's replica is read on it and its fixes
    /// name it. `None`: the hub's default one.
    pub hub_connection: Option<String>,
    /// Whether the hub's other connections are read for the other offices' numbers
    /// (`tether doctor`, `tether setup`): a one-shot look by a person's command. The
    /// running agent's checks never read another office's connection.
    pub other_offices: bool,
}

impl Default for Expectations {
    fn default() -> Self {
        Expectations {
            sites: 2,
            longest_outage: Duration::ZERO,
            max_skew: Duration::from_secs(2),
            hub_connection: None,
            other_offices: false,
        }
    }
}

/// Binary logs must be kept this many times the longest recorded outage: the next one
/// can be longer.
pub const RETENTION_MARGIN: u32 = 2;
/// ... and never less than this, whatever was recorded (a new box has seen no outage).
pub const RETENTION_FLOOR: Duration = Duration::from_secs(7 * 86_400);

/// The retention both sides' binary logs need, after `longest_outage`.
pub fn retention_needed(longest_outage: Duration) -> Duration {
    (longest_outage * RETENTION_MARGIN).max(RETENTION_FLOOR)
}

/// A MySQL replica that gives up reconnecting sooner than this into an outage is worth a
/// note: it then stays stopped until someone (or tether, while it runs) starts it.
pub const GIVE_UP_NOTE_BELOW: Duration = Duration::from_secs(86_400);

pub(crate) fn finding(
    severity: Severity,
    code: &str,
    message: String,
    fix: impl Into<String>,
) -> Finding {
    Finding {
        severity,
        code: code.into(),
        message,
        fix: fix.into(),
    }
}

/// Judges both sides' facts, topic by topic. A pair of different families is refused
/// with that one finding: nothing else about such a pair would help.
pub fn judge(office: &SideFacts, hub: &SideFacts, expect: &Expectations) -> Vec<Finding> {
    if let Some(refused) = families(office, hub) {
        return vec![refused];
    }
    let sides = [office, hub];
    let mut out: Vec<Finding> = sides.into_iter().filter_map(version).collect();
    out.extend(server_ids(office, hub));
    out.extend(server_uuids(office, hub));
    out.extend(auto_increments(office, hub, expect.sites));
    for side in sides {
        out.extend(gtid_mode(side));
    }
    for side in sides {
        // A hub with a connection per office passes each office's changes on to the others.
        let relays = side.side == "hub" && expect.hub_connection.is_some();
        out.extend(binary_log(side, expect.longest_outage, relays));
    }
    for side in sides {
        out.extend(replica_settings(side));
    }
    out.extend(gtid_domains(office, hub, expect.sites));
    out.extend(crate::site_numbers::conflicts(
        office.num("server_id"),
        (!office.mysql())
            .then(|| office.num("gtid_domain_id"))
            .flatten(),
        &hub.other_offices,
        office.dialect.family,
    ));
    for side in sides {
        out.extend(replication_grants(side));
    }
    out.extend(time(office, hub, expect.max_skew));
    out
}

/// Both sites on one family: MariaDB's and MySQL's GTIDs do not mix.
fn families(office: &SideFacts, hub: &SideFacts) -> Option<Finding> {
    let (why, fix) = crate::dialect::mismatch_words(&office.dialect, &hub.dialect)?;
    Some(finding(
        Severity::NeedsAttention,
        "families_differ",
        why,
        fix,
    ))
}

/// A server older than the oldest version of its family tether speaks to.
fn version(side: &SideFacts) -> Option<Finding> {
    let d = &side.dialect;
    d.unsupported()?;
    Some(finding(
        Severity::NeedsAttention,
        "version_unsupported",
        format!(
            "The {} database runs {}, older than {} {}, the oldest tether supports: some of the statements tether sends and prints do not exist there.",
            side.side,
            d.describe(),
            d.family,
            d.family.oldest_supported()
        ),
        format!(
            "Upgrade the {} database to {} {} or later (both sites must run the same family).",
            side.side,
            d.family,
            d.family.oldest_supported()
        ),
    ))
}

/// server_id: distinct and not the default.
fn server_ids(office: &SideFacts, hub: &SideFacts) -> Vec<Finding> {
    let mut out = Vec::new();
    for side in [office, hub] {
        let name = &side.side;
        match side.num("server_id") {
            Some(0) => out.push(finding(
                Severity::NeedsAttention,
                "server_id_zero",
                format!("The {name} database has server_id = 0: it cannot replicate."),
                format!("Set `server_id` to a unique number in the {name} server's config and restart it."),
            )),
            Some(1) => out.push(finding(
                Severity::Warning,
                "server_id_default",
                format!("The {name} database still has the default server_id = 1."),
                format!("Give every server its own `server_id` (`tether setup` does: 11 for a hub left at the default, and each office its site number, 2, 3, ...); set it in the {name} server's config."),
            )),
            _ => {}
        }
    }
    if let (Some(office_id), Some(hub_id)) = (office.num("server_id"), hub.num("server_id"))
        && office_id == hub_id
    {
        let d = &office.dialect;
        let (errno, config) = match d.family {
            Family::MariaDb => ("1593", "server config"),
            Family::MySql => ("13117", "server config ([mysqld])"),
        };
        out.push(finding(
            Severity::NeedsAttention,
            "server_id_equal",
            format!("Both databases have server_id = {office_id}: each ignores the other's changes as its own (error {errno})."),
            format!(
                "Give the office a different `server_id` in its {config}, restart it, then {}.",
                start_on_both(office, hub)
            ),
        ));
    }
    out
}

/// Starting replication on both sides, each on its own channel: "`START SLAVE` on both",
/// or each side's statement where they differ (the hub's names the office's connection).
fn start_on_both(office: &SideFacts, hub: &SideFacts) -> String {
    let (on_office, on_hub) = (office.start_replica(), hub.start_replica());
    if on_office == on_hub {
        format!("`{on_office}` on both")
    } else {
        format!("`{on_office}` on the office and `{on_hub}` on the hub")
    }
}

/// server_uuid (MySQL): distinct, or one data directory was copied from the other.
fn server_uuids(office: &SideFacts, hub: &SideFacts) -> Option<Finding> {
    if !(office.mysql() && hub.mysql()) {
        return None;
    }
    let (office_uuid, hub_uuid) = (office.var("server_uuid")?, hub.var("server_uuid")?);
    (office_uuid == hub_uuid).then(|| finding(
        Severity::NeedsAttention,
        "server_uuid_equal",
        format!("Both databases have server_uuid = {office_uuid}: one data directory was copied from the other (with its auto.cnf), and MySQL refuses to replicate between them (error 13117)."),
        format!(
            "On the server whose data directory is the copy: stop MySQL, delete `auto.cnf` in its data directory (MySQL makes a new server_uuid at the next start), start it again, then {}.",
            start_on_both(office, hub)
        ),
    ))
}

/// auto_increment: the increment the same on both and at least the number of sites
/// planned, each offset within it, offsets distinct.
fn auto_increments(office: &SideFacts, hub: &SideFacts, sites: u64) -> Vec<Finding> {
    let mut out = Vec::new();
    let painful = "Size it for the most sites that will ever write, hub included (`site.planned_sites` in tether.toml): changing it later means changing every server at the same moment with writes stopped everywhere.";
    for side in [office, hub] {
        if let Some(increment) = side.num("auto_increment_increment")
            && increment < sites
        {
            out.push(finding(
                Severity::NeedsAttention,
                "auto_increment_increment",
                format!(
                    "The {} database has auto_increment_increment = {increment}, fewer than the {sites} sites planned: two sites can create the same id and replication stops on a duplicate key.",
                    side.side
                ),
                if sites <= 2 {
                    format!("Set `auto_increment_increment = 10` on both servers (room for more sites) and distinct `auto_increment_offset`s; here on the {}. {painful}", side.side)
                } else {
                    format!("Set `auto_increment_increment = {sites}` or more on every server, the same everywhere, each site with its own `auto_increment_offset`; here on the {}. {painful}", side.side)
                },
            ));
        }
    }
    if let (Some(office_increment), Some(hub_increment)) = (
        office.num("auto_increment_increment"),
        hub.num("auto_increment_increment"),
    ) && office_increment != hub_increment
    {
        out.push(finding(
            Severity::NeedsAttention,
            "auto_increment_increment_differs",
            format!("The office database has auto_increment_increment = {office_increment}, the hub {hub_increment}: the sites' ids do not keep to lanes of their own and can collide."),
            format!("Use one `auto_increment_increment` on every server (at least {sites}). {painful}"),
        ));
    }
    for side in [office, hub] {
        if let (Some(offset), Some(increment)) = (
            side.num("auto_increment_offset"),
            side.num("auto_increment_increment"),
        ) && offset > increment
        {
            out.push(finding(
                Severity::NeedsAttention,
                "auto_increment_offset_too_large",
                format!(
                    "The {} database has auto_increment_offset = {offset}, above auto_increment_increment = {increment}: the server then ignores the offset and its ids fall in another site's lane.",
                    side.side
                ),
                format!("Give the {} an `auto_increment_offset` from 1 to {increment} that no other site uses, or raise `auto_increment_increment` on every server. {painful}", side.side),
            ));
        }
    }
    if let (Some(office_offset), Some(hub_offset)) = (
        office.num("auto_increment_offset"),
        hub.num("auto_increment_offset"),
    ) && office_offset == hub_offset
    {
        out.push(finding(
            Severity::NeedsAttention,
            "auto_increment_offset_equal",
            format!("Both databases use auto_increment_offset = {office_offset}: new rows on both sites get the same ids."),
            if sites <= 2 {
                "Set `auto_increment_offset = 1` on the hub and `2` on the office (each below auto_increment_increment).".to_owned()
            } else {
                "Give every site its own `auto_increment_offset` (the hub 1, office n n + 1, each at most auto_increment_increment) and never reuse a retired site's; here the office's must change.".to_owned()
            },
        ));
    }
    out
}

/// MySQL's GTIDs: `gtid_mode = ON` needs `enforce_gtid_consistency = ON`, and the
/// replica's `SOURCE_AUTO_POSITION=1` (resuming from the exact transaction) needs both.
fn gtid_mode(side: &SideFacts) -> Vec<Finding> {
    let mut out = Vec::new();
    if !side.mysql() {
        return out;
    }
    let name = &side.side;
    let upper = |v: &str| v.trim().to_ascii_uppercase();
    let enforce = side.var("enforce_gtid_consistency").map(upper);
    let enforce_step = "SET PERSIST enforce_gtid_consistency = ON;";
    if let Some(enforce) = enforce.as_deref().filter(|v| *v != "ON") {
        out.push(finding(
            Severity::NeedsAttention,
            "enforce_gtid_consistency",
            format!("The {name} database has enforce_gtid_consistency = {enforce}: it lets through statements that GTIDs cannot log safely, so gtid_mode cannot be ON and the replicas cannot resume by GTID."),
            format!("On the {name}: {enforce_step} (MySQL then refuses such statements, for example CREATE TABLE ... SELECT: if unsure, set it to WARN for a while first and read the error log for them). SET PERSIST keeps it across restarts; `enforce_gtid_consistency = ON` in its [mysqld] section does too."),
        ));
    }
    if let Some(mode) = side.var("gtid_mode").map(upper).filter(|v| v != "ON") {
        // MySQL moves gtid_mode one step at a time: OFF, OFF_PERMISSIVE, ON_PERMISSIVE, ON.
        const STEPS: [&str; 4] = ["OFF", "OFF_PERMISSIVE", "ON_PERMISSIVE", "ON"];
        let from = STEPS.iter().position(|s| *s == mode).unwrap_or(0);
        let mut steps: Vec<String> = Vec::new();
        if enforce.as_deref() != Some("ON") {
            steps.push(enforce_step.to_owned());
        }
        for step in &STEPS[from + 1..STEPS.len() - 1] {
            steps.push(format!("SET PERSIST gtid_mode = {step};"));
        }
        steps.push("then, once SHOW GLOBAL STATUS LIKE 'Ongoing_anonymous_transaction_count' shows 0, SET PERSIST gtid_mode = ON;".to_owned());
        out.push(finding(
            Severity::NeedsAttention,
            "gtid_mode",
            format!("The {name} database has gtid_mode = {mode}: without GTIDs a replica cannot resume from the exact transaction after an outage (SOURCE_AUTO_POSITION=1 needs gtid_mode = ON on both servers)."),
            format!(
                "On the {name} (MySQL changes gtid_mode one step at a time): {} Or put `gtid_mode = ON` and `enforce_gtid_consistency = ON` in its [mysqld] section and restart it.",
                steps.join(" ")
            ),
        ));
    }
    out
}

/// The binary log: on, ROW, lean on a slow link, kept long enough, not echoed back.
fn binary_log(side: &SideFacts, longest_outage: Duration, relays: bool) -> Vec<Finding> {
    let name = &side.side;
    let mysql = side.mysql();
    let mut out = Vec::new();
    if side.on("log_bin") == Some(false) {
        out.push(finding(
            Severity::NeedsAttention,
            "log_bin_off",
            format!("The {name} database has its binary log off: the other side has nothing to replicate from it."),
            if mysql {
                format!("Remove `skip-log-bin` (or `disable-log-bin`) from the {name} server's [mysqld] config and restart it: MySQL keeps a binary log unless told not to.")
            } else {
                format!("Set `log_bin` (and `binlog_format = ROW`) in the {name} server's config and restart it.")
            },
        ));
    }
    // MySQL deprecates binlog_format (ROW is its only future); where it still exists it
    // must still be ROW.
    if let Some(format) = side.var("binlog_format")
        && !format.eq_ignore_ascii_case("ROW")
    {
        out.push(finding(
            Severity::Warning,
            "binlog_format",
            format!("The {name} database logs in {format} format; statements can apply differently on the other side."),
            if mysql {
                format!("On the {name}: SET PERSIST binlog_format = 'ROW';")
            } else {
                format!("Set `binlog_format = ROW` on the {name}.")
            },
        ));
    }
    if let Some(image) = side.var("binlog_row_image")
        && image.eq_ignore_ascii_case("FULL")
    {
        out.push(finding(
            Severity::Info,
            "binlog_row_image",
            format!("The {name} database writes full row images; on a slow link `MINIMAL` sends less."),
            if mysql {
                format!("Unless another tool needs full images, on the {name}: SET PERSIST binlog_row_image = 'MINIMAL';")
            } else {
                format!("Consider `binlog_row_image = MINIMAL` on the {name} (only if no other tool needs full images).")
            },
        ));
    }
    if side.on("binlog_annotate_row_events") == Some(true) {
        out.push(finding(
            Severity::Info,
            "binlog_annotate",
            format!("The {name} database sends each statement's text beside its row changes (binlog_annotate_row_events); on a slow link that is bytes for nothing."),
            format!("Set `binlog_annotate_row_events = OFF` on the {name}."),
        ));
    }
    if mysql && side.on("binlog_rows_query_log_events") == Some(true) {
        out.push(finding(
            Severity::Info,
            "binlog_rows_query",
            format!("The {name} database logs each statement's text beside its row changes (binlog_rows_query_log_events); on a slow link that is bytes for nothing."),
            format!("On the {name}: SET PERSIST binlog_rows_query_log_events = OFF;"),
        ));
    }
    if let Some(kept) = side.retention() {
        let needed = retention_needed(longest_outage);
        if kept < needed {
            out.push(finding(
                Severity::Warning,
                "binlog_retention",
                format!(
                    "The {name} database keeps binary logs for {}, less than {}: {RETENTION_MARGIN} times the longest link outage recorded ({}), and at least {}. After an outage longer than the retention the other side cannot catch up (error 1236).",
                    words_for(kept),
                    words_for(needed),
                    if longest_outage.is_zero() { "none yet".to_owned() } else { words_for(longest_outage) },
                    words_for(RETENTION_FLOOR),
                ),
                if mysql {
                    format!(
                        "On the {name}: SET PERSIST binlog_expire_logs_seconds = {};",
                        needed.as_secs()
                    )
                } else {
                    format!(
                        "Raise `binlog_expire_logs_seconds` (or `expire_logs_days`) on the {name} to at least {} seconds.",
                        needed.as_secs()
                    )
                },
            ));
        }
    }
    // Logging what it replicates is needed only where a third server replicates from this
    // one (a chain); between two sites each change travels back and is discarded.
    let log_updates = side.dialect.log_replica_updates_variable();
    if relays {
        if side.on(log_updates) == Some(false) {
            out.push(finding(
                Severity::NeedsAttention,
                "log_slave_updates_relay",
                format!("The {name} database does not log what it replicates ({log_updates} = OFF): it replicates from several offices (replication.hub_connection), and without this no office's changes reach the other offices."),
                if mysql {
                    format!("Put `{log_updates} = ON` in the {name}'s [mysqld] section and restart it (or SET PERSIST_ONLY {log_updates} = ON; then restart it).")
                } else {
                    format!("Set `{log_updates} = ON` in the {name} server's config and restart it.")
                },
            ));
        }
    } else if side.on(log_updates) == Some(true) {
        out.push(finding(
            Severity::Info,
            "log_slave_updates",
            format!("The {name} database logs what it replicates ({log_updates}): each change travels back over the link and is discarded there."),
            if mysql {
                format!("Unless another server replicates from the {name}: put `{log_updates} = OFF` in its [mysqld] section and restart it (or SET PERSIST_ONLY {log_updates} = OFF; then restart it).")
            } else {
                format!("Turn `{log_updates}` off on the {name} unless another server replicates from it.")
            },
        ));
    }
    out
}

/// A duration for people, to the second.
fn words_for(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// The replica's own settings that decide how fast it notices a dead link and resumes
/// (and, on MySQL, whether it keeps trying and can still log in after a restart).
fn replica_settings(side: &SideFacts) -> Vec<Finding> {
    let mut out = Vec::new();
    if side.replica_user.is_none() {
        return out;
    }
    let (name, peer, mysql) = (&side.side, side.peer(), side.mysql());
    if let Some(retry) = side.connect_retry_s
        && retry > 10
    {
        out.push(finding(
            Severity::Warning,
            "replica_connect_retry",
            format!("The {name} replica tries to reach the {peer} only every {retry} s: after an outage it can wait that long before replication starts again."),
            format!("On the {name}: {}", side.change_replica(&[("SOURCE_CONNECT_RETRY", "1")])),
        ));
    }
    let net_timeout = side.dialect.net_timeout_variable();
    if let Some(timeout) = side.num(net_timeout)
        && timeout > 30
    {
        out.push(finding(
            Severity::Warning,
            "replica_net_timeout",
            format!("The {name} replica waits {timeout} s of silence before it gives up on a dead connection ({net_timeout})."),
            if mysql {
                format!("On the {name}: SET PERSIST {net_timeout} = 15;")
            } else {
                format!("On the {name}: SET GLOBAL {net_timeout} = 15, and put `{net_timeout} = 15` in its config.")
            },
        ));
    }
    if let Some(period) = side.heartbeat_period_s
        && !(0.5..=10.0).contains(&period)
    {
        out.push(finding(
            Severity::Info,
            "replica_heartbeat",
            format!("The {name} replica asks the {peer} for a heartbeat every {period} s (0 means never): an idle link that died is noticed late."),
            format!("On the {name}: {}", side.change_replica(&[("SOURCE_HEARTBEAT_PERIOD", "5")])),
        ));
    }
    if let (Some(count), Some(retry)) = (side.retry_count, side.connect_retry_s) {
        let gives_up_after = Duration::from_secs(count.saturating_mul(retry.max(1)));
        if gives_up_after < GIVE_UP_NOTE_BELOW {
            out.push(finding(
                Severity::Info,
                "replica_retry_count",
                format!(
                    "The {name} replica gives up reconnecting after {count} attempts {retry} s apart (about {} into an outage) and then stays stopped until it is started again; tether starts it again once the link is back, but only while tether runs.",
                    words_for(gives_up_after)
                ),
                format!("On the {name}: {}", side.change_replica(&[("SOURCE_RETRY_COUNT", &u64::MAX.to_string())])),
            ));
        }
    }
    if side.tls == Some(false) && side.gets_public_key == Some(false) {
        out.push(finding(
            Severity::Warning,
            "replica_public_key",
            format!("The {name} replica neither asks the {peer} for its public key nor uses TLS: with caching_sha2_password (MySQL's default for the replication account) it can log in only while the {peer}'s password cache holds the account, so replication stops with error 2061 after the {peer} database restarts."),
            format!("On the {name}: {}", side.change_replica(&[("GET_SOURCE_PUBLIC_KEY", "1")])),
        ));
    }
    if side.tls == Some(true) {
        out.push(finding(
            Severity::Info,
            "replica_tls",
            format!("The {name} replica uses TLS inside the SSH tunnel: the link carries its traffic encrypted twice, and the tunnel's compression finds nothing left to compress."),
            format!(
                "If the office database reaches this box over a LAN you trust, on the {name}: {}",
                side.change_replica(&[("SOURCE_SSL", "0"), ("GET_SOURCE_PUBLIC_KEY", "1")])
            ),
        ));
    }
    if let Some(algorithms) = side
        .compression
        .as_deref()
        .filter(|a| !a.eq_ignore_ascii_case("uncompressed"))
    {
        out.push(finding(
            Severity::Info,
            "replica_compression",
            format!("The {name} replica compresses its connection ({algorithms}) inside the tunnel, which compresses the whole stream already (hub.compression): twice costs CPU and sends more, not less."),
            format!("On the {name}: {}", side.change_replica(&[("SOURCE_COMPRESSION_ALGORITHMS", "'uncompressed'")])),
        ));
    }
    if let Some(error) = &side.connection_settings_unread {
        out.push(finding(
            Severity::Warning,
            "replica_settings_unread",
            format!("The {name} replica's connection settings (heartbeat, retry count, public key, TLS) could not be read, so they were not checked: {error}"),
            "Grant the agent's account SELECT on performance_schema.replication_connection_configuration there (the agent-user SQL `tether enroll` prints does).",
        ));
    }
    out
}

/// GTID domains (MariaDB): distinct, or the two streams' positions get mixed up.
fn gtid_domains(office: &SideFacts, hub: &SideFacts, sites: u64) -> Option<Finding> {
    let (office_domain, hub_domain) = (office.num("gtid_domain_id")?, hub.num("gtid_domain_id")?);
    if office_domain != hub_domain {
        return None;
    }
    // Between two sites one domain still replicates; through a hub relaying several
    // offices, two sites in one domain make each other's positions unreadable.
    Some(if sites <= 2 {
        finding(
            Severity::Warning,
            "gtid_domain_id_equal",
            format!(
                "Both databases use gtid_domain_id = {office_domain}; with two writing sites each needs its own."
            ),
            "Set `gtid_domain_id = 1` on the hub and `2` on the office.",
        )
    } else {
        finding(
            Severity::NeedsAttention,
            "gtid_domain_id_equal",
            format!(
                "Both databases use gtid_domain_id = {office_domain}: with {sites} writing sites planned, each needs its own domain, or the hub cannot keep the offices' positions apart."
            ),
            "Give every writing site its own `gtid_domain_id` (the hub 1, office n n + 1) in its config, and never reuse a retired site's; here the office's must change.",
        )
    })
}

/// The replication account's grants, where the server let us read them. Unreadable with
/// the shipped agent account (no access to `mysql`): a refused replication login is
/// reported by the replica's status as it happens.
fn replication_grants(side: &SideFacts) -> Option<Finding> {
    let Some(Ok(grants)) = &side.peer_user_grants else {
        return None;
    };
    let may_replicate = grants.iter().any(|grant| {
        let grant = grant.to_ascii_uppercase();
        grant.contains("REPLICATION SLAVE")
            || grant.contains("REPLICATION REPLICA")
            || grant.contains("ALL PRIVILEGES ON *.*")
    });
    let kit = match side.dialect.family {
        Family::MariaDb => "usr/share/tether/hub/replication_user.sql",
        Family::MySql => "/usr/share/tether/hub/replication_user_mysql.sql",
    };
    (!may_replicate).then(|| {
        finding(
            Severity::NeedsAttention,
            "replication_grants",
            format!(
                "The replication account on the {} database lacks REPLICATION SLAVE: {}",
                side.side,
                grants.join("; ")
            ),
            format!("Run the replication-user SQL from the hub kit ({kit}) on that database."),
        )
    })
}

/// Time: the same zone and clocks close together.
fn time(office: &SideFacts, hub: &SideFacts, max_skew: Duration) -> Vec<Finding> {
    let mut out = Vec::new();
    let (office_zone, hub_zone) = (office.zone(), hub.zone());
    if !office_zone.is_empty() && !hub_zone.is_empty() && office_zone != hub_zone {
        out.push(finding(
            Severity::Warning,
            "time_zone",
            format!("The office database runs in time zone {office_zone}, the hub's in {hub_zone}: NOW() and TIMESTAMP columns differ between the sites."),
            "Set the same `default_time_zone` (for example '+00:00') on both servers.",
        ));
    }
    if let (Some(office_ms), Some(hub_ms)) = (office.clock_offset_ms, hub.clock_offset_ms) {
        let skew = Duration::from_millis(office_ms.abs_diff(hub_ms));
        if skew > max_skew {
            out.push(finding(
                Severity::Warning,
                "clock_skew",
                format!(
                    "The two database servers' clocks differ by {:.1} s (more than {:.1} s).",
                    skew.as_secs_f64(),
                    max_skew.as_secs_f64()
                ),
                "Run NTP (systemd-timesyncd or chrony) on both machines. Tether's lag figures correct for the difference; the data's timestamps do not.",
            ));
        }
    }
    out
}

/// What one table's comparison found.
pub fn judge_checksums(
    table: &str,
    office: &Result<Option<u64>, String>,
    hub: &Result<Option<u64>, String>,
) -> Option<Finding> {
    match (office, hub) {
        (Ok(office_sum), Ok(hub_sum)) if office_sum == hub_sum => None,
        (Ok(office_sum), Ok(hub_sum)) => Some(finding(
            Severity::NeedsAttention,
            "divergence",
            format!(
                "Table `{table}` differs between the sites (CHECKSUM TABLE office {}, hub {}) although replication reports no error: the data has diverged.",
                office_sum.map_or("missing".into(), |v| v.to_string()),
                hub_sum.map_or("missing".into(), |v| v.to_string())
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

/// The seed's puzzle: a column whose minute always equals its month, the mark of a date
/// format that wrote `%m` (month) where minutes (`%i` in MySQL, `%M` in strftime) were
/// meant. Needs enough samples and more than one minute value to say so.
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
    if !all_equal {
        return None;
    }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::SETUP_CODES;

    use crate::dialect::samples::{MARIADB, MYSQL};

    fn side(name: &str, vars: &[(&str, &str)]) -> SideFacts {
        side_of(MARIADB, name, vars)
    }

    fn side_of(dialect: Dialect, name: &str, vars: &[(&str, &str)]) -> SideFacts {
        SideFacts {
            vars: vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            clock_offset_ms: Some(0),
            ..SideFacts::new(name, dialect)
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
    fn another_offices_server_id_or_domain_seen_at_the_hub_is_refused() {
        let mut hub = good("hub", "1", "1");
        hub.other_offices = vec![crate::site_numbers::OtherOffice {
            connection: "office-1".into(),
            server_id: Some(2),
            domains: vec![2],
        }];
        let expect = Expectations {
            sites: 10,
            hub_connection: Some("office-2".into()),
            ..Expectations::default()
        };
        let f = judge(&good("office", "2", "2"), &hub, &expect);
        for code in ["server_id_taken", "gtid_domain_taken"] {
            let taken = f.iter().find(|f| f.code == code).unwrap();
            assert_eq!(taken.severity, Severity::NeedsAttention);
            assert!(taken.message.contains("'office-1'"), "{}", taken.message);
        }
        let f = judge(&good("office", "3", "3"), &hub, &expect);
        assert!(
            !codes(&f).iter().any(|c| c.ends_with("_taken")),
            "{:?}",
            codes(&f)
        );
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
        let expect = Expectations::default();
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
            let f = judge(&o, &h, &expect);
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
        let f = judge(&o, &h, &expect);
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
    fn the_nth_office_is_checked_against_the_sites_planned() {
        // A hub relaying four offices, twenty sites planned; office-3 is number 4.
        let expect = Expectations {
            sites: 20,
            hub_connection: Some("office-3".into()),
            ..Expectations::default()
        };
        let with = |f: fn(&mut SideFacts)| {
            let mut o = good("office", "4", "4");
            let mut h = good("hub", "1", "1");
            for s in [&mut o, &mut h] {
                s.vars
                    .insert("auto_increment_increment".into(), "20".into());
                s.vars.insert("server_id".into(), "1".into());
            }
            o.vars.insert("server_id".into(), "4".into());
            h.vars.insert("log_slave_updates".into(), "ON".into());
            f(&mut o);
            judge(&o, &h, &expect)
        };
        let clean = with(|_| {});
        assert!(
            codes(&clean).iter().all(|c| *c == "server_id_default"),
            "a relaying hub and a well-numbered office: {clean:?}"
        );
        // The increment the first offices were set up with is too small for twenty.
        let f = with(|o| {
            o.vars
                .insert("auto_increment_increment".into(), "10".into());
        });
        let small = f
            .iter()
            .find(|f| f.code == "auto_increment_increment")
            .unwrap();
        assert_eq!(small.severity, Severity::NeedsAttention);
        assert!(
            small.message.contains("fewer than the 20 sites planned"),
            "{}",
            small.message
        );
        assert!(
            small.fix.contains("`auto_increment_increment = 20`")
                && small.fix.contains("site.planned_sites")
                && small
                    .fix
                    .contains("changing it later means changing every server"),
            "{}",
            small.fix
        );
        assert!(
            codes(&f).contains(&"auto_increment_increment_differs"),
            "{f:?}"
        );
        // Each number another site already has is refused, saying which.
        for (code, f) in [
            (
                "server_id_equal",
                with(|o| {
                    o.vars.insert("server_id".into(), "1".into());
                }),
            ),
            (
                "gtid_domain_id_equal",
                with(|o| {
                    o.vars.insert("gtid_domain_id".into(), "1".into());
                }),
            ),
            (
                "auto_increment_offset_equal",
                with(|o| {
                    o.vars.insert("auto_increment_offset".into(), "1".into());
                }),
            ),
            (
                "auto_increment_offset_too_large",
                with(|o| {
                    o.vars.insert("auto_increment_offset".into(), "21".into());
                }),
            ),
        ] {
            let found = f
                .iter()
                .find(|f| f.code == code)
                .unwrap_or_else(|| panic!("{code}: {f:?}"));
            assert_eq!(found.severity, Severity::NeedsAttention, "{code}");
        }
        let f = with(|o| {
            o.vars.insert("gtid_domain_id".into(), "1".into());
        });
        let domain = f.iter().find(|f| f.code == "gtid_domain_id_equal").unwrap();
        assert!(
            domain.message.contains("= 1") && domain.fix.contains("never reuse"),
            "{domain:?}"
        );
        // The hub must pass each office's changes on.
        let mut o = good("office", "4", "4");
        o.vars
            .insert("auto_increment_increment".into(), "20".into());
        let mut h = good("hub", "11", "1");
        h.vars
            .insert("auto_increment_increment".into(), "20".into());
        let f = judge(&o, &h, &expect);
        let relay = f
            .iter()
            .find(|f| f.code == "log_slave_updates_relay")
            .unwrap();
        assert_eq!(relay.severity, Severity::NeedsAttention);
        assert!(
            relay.fix.contains("log_slave_updates = ON"),
            "{}",
            relay.fix
        );
        h.vars.insert("log_slave_updates".into(), "ON".into());
        let f = judge(&o, &h, &expect);
        assert!(
            !codes(&f).iter().any(|c| c.starts_with("log_slave_updates")),
            "{f:?}"
        );
    }

    #[test]
    fn replica_settings_that_slow_the_resume_point_at_the_setup() {
        let replica = |name: &str, id: &str, offset: &str, retry: u64, beat: f64| SideFacts {
            replica_user: Some("repl".into()),
            connect_retry_s: Some(retry),
            heartbeat_period_s: Some(beat),
            ..good(name, id, offset)
        };
        let expect = Expectations::default();
        let f = judge(
            &replica("office", "2", "2", 1, 5.0),
            &replica("hub", "3", "1", 1, 5.0),
            &expect,
        );
        assert!(f.is_empty(), "recommended settings: {f:?}");
        // MariaDB's defaults on the hub.
        let mut h = replica("hub", "3", "1", 60, 30.0);
        h.vars.insert("slave_net_timeout".into(), "60".into());
        h.vars
            .insert("binlog_annotate_row_events".into(), "ON".into());
        h.vars.insert("binlog_row_image".into(), "FULL".into());
        let f = judge(&replica("office", "2", "2", 1, 5.0), &h, &expect);
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
    fn the_hubs_fixes_name_this_offices_connection_there() {
        let replica = |name: &str, id: &str, offset: &str, retry: u64| SideFacts {
            replica_user: Some("repl".into()),
            connect_retry_s: Some(retry),
            heartbeat_period_s: Some(5.0),
            ..good(name, id, offset)
        };
        let office = replica("office", "2", "2", 1);
        let mut hub = replica("hub", "2", "1", 60);
        hub.channel = Some("office-2".into());
        let f = judge(&office, &hub, &Expectations::default());
        let retry = f
            .iter()
            .find(|f| f.code == "replica_connect_retry")
            .unwrap();
        assert_eq!(
            retry.fix,
            "On the hub: STOP SLAVE 'office-2'; CHANGE MASTER 'office-2' TO MASTER_CONNECT_RETRY=1; START SLAVE 'office-2';"
        );
        let equal = f.iter().find(|f| f.code == "server_id_equal").unwrap();
        assert!(
            equal.fix.ends_with(
                "then `START SLAVE` on the office and `START SLAVE 'office-2'` on the hub."
            ),
            "{}",
            equal.fix
        );
    }

    #[test]
    fn retention_is_judged_against_the_longest_outage() {
        let expect = Expectations {
            longest_outage: Duration::from_secs(10 * 86_400),
            ..Expectations::default()
        };
        let f = judge(&good("office", "2", "2"), &good("hub", "3", "1"), &expect);
        assert_eq!(codes(&f), ["binlog_retention", "binlog_retention"], "{f:?}");
        let (message, fix) = (&f[0].message, &f[0].fix);
        assert!(
            message.contains("keeps binary logs for 7days, less than 20days"),
            "{message}"
        );
        assert!(
            message.contains("2 times the longest link outage recorded (10days)"),
            "{message}"
        );
        assert!(message.contains("at least 7days"), "{message}");
        assert!(fix.contains("at least 1728000 seconds"), "{fix}");
        // Without a recorded outage the floor decides: a week is enough, a day is not.
        let mut short = good("hub", "3", "1");
        short.vars.insert("expire_logs_days".into(), "1".into());
        let f = judge(&good("office", "2", "2"), &short, &Expectations::default());
        assert_eq!(codes(&f), ["binlog_retention"], "{f:?}");
        assert!(f[0].message.contains("(none yet)"), "{}", f[0].message);
        // Three days of outage need six days: the floor still rules.
        assert_eq!(
            retention_needed(Duration::from_secs(3 * 86_400)),
            RETENTION_FLOOR
        );
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

    /// A MySQL 9.7 server set up as `tether enroll` says, with a replica (as recorded from
    /// the lab, but for `slave_net_timeout`: the server shows the same value under both
    /// names; 60 here tells which one is read).
    fn good_mysql(name: &str, id: &str, offset: &str) -> SideFacts {
        SideFacts {
            replica_user: Some("repl".into()),
            connect_retry_s: Some(1),
            heartbeat_period_s: Some(5.0),
            retry_count: Some(u64::MAX),
            gets_public_key: Some(true),
            tls: Some(false),
            compression: Some("uncompressed".into()),
            ..side_of(
                MYSQL,
                name,
                &[
                    ("server_id", id),
                    (
                        "server_uuid",
                        &format!("9885b0a3-f1d6-11f1-a977-02fc000000{id}"),
                    ),
                    ("auto_increment_increment", "10"),
                    ("auto_increment_offset", offset),
                    ("gtid_mode", "ON"),
                    ("enforce_gtid_consistency", "ON"),
                    ("log_bin", "ON"),
                    ("binlog_format", "ROW"),
                    ("binlog_row_image", "MINIMAL"),
                    ("binlog_rows_query_log_events", "OFF"),
                    ("binlog_expire_logs_seconds", "2592000"),
                    ("log_replica_updates", "OFF"),
                    ("log_slave_updates", "OFF"),
                    ("replica_net_timeout", "15"),
                    ("slave_net_timeout", "60"),
                    ("time_zone", "SYSTEM"),
                    ("system_time_zone", "UTC"),
                ],
            )
        }
    }

    fn assert_mysql_words(f: &Finding) {
        let word = crate::dialect::mariadb_word_in(&f.fix)
            .or_else(|| crate::dialect::mariadb_word_in(&f.message));
        assert!(
            word.is_none(),
            "{}: MariaDB's `{}` shown to a MySQL user: {} / {}",
            f.code,
            word.unwrap_or_default(),
            f.message,
            f.fix
        );
    }

    #[test]
    fn a_well_set_mysql_pair_has_no_findings() {
        let f = judge(
            &good_mysql("office", "12", "2"),
            &good_mysql("hub", "11", "1"),
            &Expectations::default(),
        );
        assert!(f.is_empty(), "{f:?}");
    }

    /// Each MySQL misconfiguration on one side: its code, how bad it is, and the fix in
    /// MySQL's statements and variable names.
    #[test]
    fn each_mysql_misconfiguration_is_named_with_its_fix_in_mysql_words() {
        type Change = fn(&mut SideFacts);
        let cases: Vec<(&str, Severity, Change, &[&str])> = vec![
            (
                "gtid_mode",
                Severity::NeedsAttention,
                |s| {
                    s.vars.insert("gtid_mode".into(), "OFF".into());
                },
                &[
                    "SET PERSIST gtid_mode = OFF_PERMISSIVE; SET PERSIST gtid_mode = ON_PERMISSIVE; then",
                    "SET PERSIST gtid_mode = ON;",
                    "`gtid_mode = ON` and `enforce_gtid_consistency = ON` in its [mysqld] section",
                ],
            ),
            (
                "enforce_gtid_consistency",
                Severity::NeedsAttention,
                |s| {
                    s.vars.insert("gtid_mode".into(), "OFF".into());
                    s.vars
                        .insert("enforce_gtid_consistency".into(), "OFF".into());
                },
                &["SET PERSIST enforce_gtid_consistency = ON;"],
            ),
            (
                "server_id_equal",
                Severity::NeedsAttention,
                |s| {
                    s.vars.insert("server_id".into(), "11".into());
                },
                &["[mysqld]", "`START REPLICA` on both"],
            ),
            (
                "server_uuid_equal",
                Severity::NeedsAttention,
                |s| {
                    s.vars.insert(
                        "server_uuid".into(),
                        "9885b0a3-f1d6-11f1-a977-02fc00000011".into(),
                    );
                },
                &["delete `auto.cnf`", "`START REPLICA` on both"],
            ),
            (
                "replica_net_timeout",
                Severity::Warning,
                |s| {
                    s.vars.insert("replica_net_timeout".into(), "60".into());
                },
                &["SET PERSIST replica_net_timeout = 15;"],
            ),
            (
                "replica_connect_retry",
                Severity::Warning,
                |s| s.connect_retry_s = Some(60),
                &[
                    "STOP REPLICA; CHANGE REPLICATION SOURCE TO SOURCE_CONNECT_RETRY=1; START REPLICA;",
                ],
            ),
            (
                "replica_heartbeat",
                Severity::Info,
                |s| s.heartbeat_period_s = Some(30.0),
                &[
                    "STOP REPLICA; CHANGE REPLICATION SOURCE TO SOURCE_HEARTBEAT_PERIOD=5; START REPLICA;",
                ],
            ),
            (
                "replica_retry_count",
                Severity::Info,
                |s| s.retry_count = Some(10),
                &["CHANGE REPLICATION SOURCE TO SOURCE_RETRY_COUNT=18446744073709551615;"],
            ),
            (
                "replica_public_key",
                Severity::Warning,
                |s| s.gets_public_key = Some(false),
                &[
                    "STOP REPLICA; CHANGE REPLICATION SOURCE TO GET_SOURCE_PUBLIC_KEY=1; START REPLICA;",
                ],
            ),
            (
                "replica_tls",
                Severity::Info,
                |s| s.tls = Some(true),
                &["CHANGE REPLICATION SOURCE TO SOURCE_SSL=0, GET_SOURCE_PUBLIC_KEY=1;"],
            ),
            (
                "replica_compression",
                Severity::Info,
                |s| s.compression = Some("zstd".into()),
                &["SOURCE_COMPRESSION_ALGORITHMS='uncompressed'"],
            ),
            (
                "replica_settings_unread",
                Severity::Warning,
                |s| {
                    s.heartbeat_period_s = None;
                    s.connection_settings_unread =
                        Some("replica connection settings: ERROR 1142".into());
                },
                &["performance_schema.replication_connection_configuration"],
            ),
            (
                "log_slave_updates",
                Severity::Info,
                |s| {
                    s.vars.insert("log_replica_updates".into(), "ON".into());
                },
                &["`log_replica_updates = OFF` in its [mysqld] section"],
            ),
            (
                "binlog_retention",
                Severity::Warning,
                |s| {
                    s.vars
                        .insert("binlog_expire_logs_seconds".into(), "3600".into());
                },
                &["SET PERSIST binlog_expire_logs_seconds = 604800;"],
            ),
            (
                "binlog_format",
                Severity::Warning,
                |s| {
                    s.vars.insert("binlog_format".into(), "MIXED".into());
                },
                &["SET PERSIST binlog_format = 'ROW';"],
            ),
            (
                "binlog_rows_query",
                Severity::Info,
                |s| {
                    s.vars
                        .insert("binlog_rows_query_log_events".into(), "ON".into());
                },
                &["SET PERSIST binlog_rows_query_log_events = OFF;"],
            ),
            (
                "log_bin_off",
                Severity::NeedsAttention,
                |s| {
                    s.vars.insert("log_bin".into(), "OFF".into());
                },
                &["`skip-log-bin`"],
            ),
            (
                "version_unsupported",
                Severity::NeedsAttention,
                |s| s.dialect.version = crate::dialect::Version(8, 0, 22),
                &["MySQL 8.0.23 or later"],
            ),
        ];
        for (code, severity, change, words) in cases {
            let mut office = good_mysql("office", "12", "2");
            change(&mut office);
            let f = judge(
                &office,
                &good_mysql("hub", "11", "1"),
                &Expectations::default(),
            );
            let found = f
                .iter()
                .find(|f| f.code == code)
                .unwrap_or_else(|| panic!("{code} not found: {f:?}"));
            assert_eq!(found.severity, severity, "{code}");
            for word in words {
                assert!(
                    found.fix.contains(word),
                    "{code}: `{word}` not in: {}",
                    found.fix
                );
            }
            assert_mysql_words(found);
        }
    }

    #[test]
    fn gtid_mode_is_raised_one_step_at_a_time_from_where_it_is() {
        let mut office = good_mysql("office", "12", "2");
        office
            .vars
            .insert("gtid_mode".into(), "ON_PERMISSIVE".into());
        let f = judge(
            &office,
            &good_mysql("hub", "11", "1"),
            &Expectations::default(),
        );
        assert_eq!(codes(&f), ["gtid_mode"]);
        assert!(
            !f[0].fix.contains("OFF_PERMISSIVE")
                && !f[0].fix.contains("enforce_gtid_consistency = ON;"),
            "{}",
            f[0].fix
        );
        office.vars.insert("gtid_mode".into(), "OFF".into());
        office
            .vars
            .insert("enforce_gtid_consistency".into(), "WARN".into());
        let f = judge(
            &office,
            &good_mysql("hub", "11", "1"),
            &Expectations::default(),
        );
        assert_eq!(codes(&f), ["enforce_gtid_consistency", "gtid_mode"]);
        assert!(
            f[1].fix.contains(
                "SET PERSIST enforce_gtid_consistency = ON; SET PERSIST gtid_mode = OFF_PERMISSIVE;"
            ),
            "enforcement first: {}",
            f[1].fix
        );
        assert!(f[0].message.contains("= WARN"), "{}", f[0].message);
    }

    #[test]
    fn a_pair_of_different_families_is_refused_and_nothing_else_is_judged() {
        let mut office = good("office", "12", "2");
        office
            .vars
            .insert("auto_increment_offset".into(), "1".into());
        let f = judge(
            &office,
            &good_mysql("hub", "11", "1"),
            &Expectations::default(),
        );
        assert_eq!(codes(&f), ["families_differ"], "{f:?}");
        assert_eq!(f[0].severity, Severity::NeedsAttention);
        assert!(
            f[0].message.contains("MariaDB 10.11.6") && f[0].message.contains("MySQL 9.7.4"),
            "{}",
            f[0].message
        );
        assert!(
            f[0].message.contains("GTIDs do not mix"),
            "{}",
            f[0].message
        );
        assert!(
            f[0].fix.contains("same family") && f[0].fix.contains("MySQL server"),
            "{}",
            f[0].fix
        );
    }

    /// MariaDB's findings keep the words they always had.
    #[test]
    fn mariadb_fixes_are_the_words_they_always_were() {
        let replica = |name: &str, id: &str, offset: &str| SideFacts {
            replica_user: Some("repl".into()),
            connect_retry_s: Some(60),
            heartbeat_period_s: Some(30.0),
            ..good(name, id, offset)
        };
        let mut o = replica("office", "3", "2");
        o.vars.insert("log_bin".into(), "OFF".into());
        o.vars.insert("binlog_format".into(), "MIXED".into());
        o.vars.insert("log_slave_updates".into(), "ON".into());
        o.vars.insert("expire_logs_days".into(), "0.5".into());
        o.vars.insert("gtid_domain_id".into(), "3".into());
        let mut h = replica("hub", "3", "1");
        h.vars.insert("slave_net_timeout".into(), "60".into());
        h.vars
            .insert("binlog_annotate_row_events".into(), "ON".into());
        h.vars.insert("binlog_row_image".into(), "FULL".into());
        h.peer_user_grants = Some(Ok(vec!["GRANT USAGE ON *.* TO `repl`@`%`".into()]));
        let f = judge(&o, &h, &Expectations::default());
        let fix = |code: &str, side: &str| {
            f.iter()
                .find(|f| {
                    f.code == code
                        && (f.fix.contains(side)
                            || f.message.contains(&format!("the {side} database")))
                })
                .unwrap_or_else(|| panic!("{code} on the {side}: {f:?}"))
                .fix
                .as_str()
        };
        for (code, side, words) in [
            (
                "server_id_equal",
                "office",
                "Give the office a different `server_id` in its server config, restart it, then `START SLAVE` on both.",
            ),
            (
                "log_bin_off",
                "office",
                "Set `log_bin` (and `binlog_format = ROW`) in the office server's config and restart it.",
            ),
            (
                "binlog_format",
                "office",
                "Set `binlog_format = ROW` on the office.",
            ),
            (
                "log_slave_updates",
                "office",
                "Turn `log_slave_updates` off on the office unless another server replicates from it.",
            ),
            (
                "binlog_retention",
                "office",
                "Raise `binlog_expire_logs_seconds` (or `expire_logs_days`) on the office to at least 604800 seconds.",
            ),
            (
                "replica_connect_retry",
                "hub",
                "On the hub: STOP SLAVE; CHANGE MASTER TO MASTER_CONNECT_RETRY=1; START SLAVE;",
            ),
            (
                "replica_net_timeout",
                "hub",
                "On the hub: SET GLOBAL slave_net_timeout = 15, and put `slave_net_timeout = 15` in its config.",
            ),
            (
                "replica_heartbeat",
                "hub",
                "On the hub: STOP SLAVE; CHANGE MASTER TO MASTER_HEARTBEAT_PERIOD=5; START SLAVE;",
            ),
            (
                "binlog_row_image",
                "hub",
                "Consider `binlog_row_image = MINIMAL` on the hub (only if no other tool needs full images).",
            ),
            (
                "binlog_annotate",
                "hub",
                "Set `binlog_annotate_row_events = OFF` on the hub.",
            ),
            (
                "replication_grants",
                "hub",
                "Run the replication-user SQL from the hub kit (usr/share/tether/hub/replication_user.sql) on that database.",
            ),
            (
                "gtid_domain_id_equal",
                "hub",
                "Set `gtid_domain_id = 1` on the hub and `2` on the office.",
            ),
        ] {
            assert_eq!(fix(code, side), words, "{code}");
        }
        let equal = f.iter().find(|f| f.code == "server_id_equal").unwrap();
        assert!(equal.message.contains("(error 1593)"), "{}", equal.message);
        let timeout = f.iter().find(|f| f.code == "replica_net_timeout").unwrap();
        assert!(
            timeout.message.ends_with("(slave_net_timeout)."),
            "{}",
            timeout.message
        );
        // MySQL's own checks say nothing about a MariaDB server.
        for code in [
            "gtid_mode",
            "server_uuid_equal",
            "replica_public_key",
            "replica_retry_count",
        ] {
            assert!(!codes(&f).contains(&code), "{code}: {f:?}");
        }
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
