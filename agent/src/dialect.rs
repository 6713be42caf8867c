//! Each database family's dialect: which server a connection reached (MariaDB or MySQL,
//! and which version), and every replication statement and variable name in that family's
//! words, for the default channel or a named one (a MariaDB multi-source connection name, a
//! MySQL `FOR CHANNEL`).
//!
//! Everything here is pure except [`Dialect::query`] (one bounded query on a connection)
//! and [`Dialect::of_server`] (reads a server's greeting, which needs no account).

use std::time::Duration;

/// The two families tether speaks. Their GTIDs do not mix: both sites must run the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Family {
    #[serde(rename = "mariadb")]
    MariaDb,
    #[serde(rename = "mysql")]
    MySql,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::MariaDb, Family::MySql];

    /// The product's name, for people.
    pub fn name(self) -> &'static str {
        match self {
            Family::MariaDb => "MariaDB",
            Family::MySql => "MySQL",
        }
    }

    /// The lowercase key used in configs, lab.json and test names.
    pub fn key(self) -> &'static str {
        match self {
            Family::MariaDb => "mariadb",
            Family::MySql => "mysql",
        }
    }

    /// Parses [`Family::key`].
    pub fn parse(s: &str) -> Option<Family> {
        Family::BOTH.into_iter().find(|f| f.key() == s)
    }

    /// The oldest version of this family tether supports.
    pub fn oldest_supported(self) -> Version {
        match self {
            Family::MariaDb => OLDEST_MARIADB,
            Family::MySql => OLDEST_MYSQL,
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A server version, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    /// The leading `X.Y.Z` of a version string (`10.11.6-MariaDB-0+deb12u1`, `9.7.4-2`);
    /// missing parts are 0.
    pub fn parse(text: &str) -> Option<Version> {
        let digits: Vec<u32> = text
            .split(|c: char| !c.is_ascii_digit() && c != '.')
            .next()?
            .split('.')
            .take(3)
            .map(|p| p.parse().ok())
            .collect::<Option<Vec<u32>>>()?;
        match digits.as_slice() {
            [a, b, c] => Some(Version(*a, *b, *c)),
            [a, b] => Some(Version(*a, *b, 0)),
            [a] => Some(Version(*a, 0, 0)),
            _ => None,
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// A replication channel (MySQL) or connection name (MariaDB multi-source); `None` is
/// the default, unnamed one.
pub type Channel<'a> = Option<&'a str>;

/// Longest connection name MariaDB keeps, and longest channel name MySQL accepts.
pub const CHANNEL_NAME_MAX: usize = 64;

/// Why `name` cannot name a replication connection on both families, if it cannot:
/// 1 to 64 characters of letters, digits, `_` and `-` (a site id always fits), and none
/// of the names MySQL keeps for group replication. Pure.
pub fn channel_name_problem(name: &str) -> Option<String> {
    let shown = name.escape_default();
    if name.is_empty() || name.len() > CHANNEL_NAME_MAX {
        return Some(format!(
            "`{shown}` must be 1 to {CHANNEL_NAME_MAX} characters (a MariaDB connection name or MySQL channel name; the site id is a good choice)"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Some(format!(
            "`{shown}` may hold only letters, digits, _ and - (it names the hub's replication connection for this office)"
        ));
    }
    if name.to_ascii_lowercase().starts_with("group_replication_") {
        return Some(format!(
            "`{shown}`: MySQL keeps the group_replication_ names for itself; use the site id"
        ));
    }
    None
}

/// Oldest versions tether supports: MariaDB with GTID `slave_pos` and `SHOW REPLICA
/// STATUS`, MySQL with `CHANGE REPLICATION SOURCE TO`.
/// MariaDB's own statement and variable words, which MySQL 8.4 does not understand: nothing
/// tether shows a MySQL user may hold one (the doctor's tests check every finding against
/// them, on recorded facts and on real servers).
pub const MARIADB_ONLY_WORDS: &[&str] = &[
    "SLAVE;",
    "START SLAVE",
    "STOP SLAVE",
    "SHOW SLAVE",
    "CHANGE MASTER",
    "MASTER_",
    "slave_net_timeout",
    "log_slave_updates",
    "gtid_domain_id",
    "expire_logs_days",
    "annotate",
];

/// The first of [`MARIADB_ONLY_WORDS`] in `text`, if any.
pub fn mariadb_word_in(text: &str) -> Option<&'static str> {
    MARIADB_ONLY_WORDS
        .iter()
        .copied()
        .find(|w| text.contains(w))
}

pub const OLDEST_MARIADB: Version = Version(10, 5, 1);
pub const OLDEST_MYSQL: Version = Version(8, 0, 23);

/// MySQL's error of an applier worker that stopped only because an earlier worker failed
/// (`ER_RPL_REPLICA_WORKER_STOPPED_PREVIOUS_THD_ERROR`, with `replica_preserve_commit_order`).
pub const WORKER_STOPPED_AFTER_ANOTHER: u32 = 3030;

/// How to speak to one server: its family and version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dialect {
    pub family: Family,
    pub version: Version,
}

/// A thread of the replica: what `STOP`/`START` act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    Both,
    Io,
}

impl Dialect {
    pub fn new(family: Family, version: Version) -> Dialect {
        Dialect { family, version }
    }

    /// The dialect printed for a family whose server was not asked: its current LTS.
    pub fn current(family: Family) -> Dialect {
        match family {
            Family::MariaDb => Dialect::new(family, Version(10, 11, 0)),
            Family::MySql => Dialect::new(family, Version(8, 4, 0)),
        }
    }

    /// From `SELECT VERSION(), @@version_comment`: MariaDB names itself in one of them
    /// (`10.11.6-MariaDB-0+deb12u1`, `mariadb.org binary distribution`); anything else
    /// speaking the protocol is MySQL or a MySQL build (Oracle, Debian, Percona).
    pub fn detect(version: &str, comment: &str) -> Dialect {
        let maria = [version, comment]
            .iter()
            .any(|t| t.to_ascii_lowercase().contains("mariadb"));
        // MariaDB's wire greeting prefixes "5.5.5-" for old clients; VERSION() does not,
        // but a proxy might pass the greeting's string on.
        let text = match version.strip_prefix("5.5.5-") {
            Some(rest) if maria => rest,
            _ => version,
        };
        let family = if maria {
            Family::MariaDb
        } else {
            Family::MySql
        };
        Dialect::new(family, Version::parse(text).unwrap_or(Version(0, 0, 0)))
    }

    /// From the server version in a wire greeting (no login needed): MariaDB's says so
    /// (`5.5.5-10.11.6-MariaDB-...`), MySQL's does not (`9.7.4-2`, `8.4.0`).
    pub fn from_greeting(server_version: &str) -> Dialect {
        Dialect::detect(server_version, "")
    }

    /// For people: `MariaDB 10.11.6`, `MySQL 9.7.4`.
    pub fn describe(&self) -> String {
        format!("{} {}", self.family, self.version)
    }

    /// Why tether cannot work with this server, if it is older than the oldest supported.
    pub fn unsupported(&self) -> Option<String> {
        let oldest = self.family.oldest_supported();
        (self.version < oldest).then(|| {
            format!(
                "{} is older than {} {oldest}, the oldest tether supports; upgrade it (both sites must run the same family)",
                self.describe(),
                self.family
            )
        })
    }

    /// `SHOW REPLICA STATUS` and `START`/`STOP REPLICA` exist (MariaDB 10.5.1, MySQL
    /// 8.0.22); older servers only know the SLAVE spelling.
    fn has_replica_words(&self) -> bool {
        match self.family {
            Family::MariaDb => self.version >= OLDEST_MARIADB,
            Family::MySql => self.version >= Version(8, 0, 22),
        }
    }

    /// `CHANGE REPLICATION SOURCE TO` and the `SOURCE_*` options (MySQL 8.0.23).
    pub fn has_source_words(&self) -> bool {
        self.family == Family::MySql && self.version >= OLDEST_MYSQL
    }

    /// Whether where a replica starts is one position for the whole server, shared by
    /// every connection: MariaDB's `gtid_slave_pos` (only set with every replica
    /// stopped), so a hub that adds an office must merge that office's position into
    /// it; MySQL's channels use `SOURCE_AUTO_POSITION` over `gtid_executed`, so nothing
    /// global moves when a channel is added.
    pub fn replica_position_is_server_wide(&self) -> bool {
        self.family == Family::MariaDb
    }

    /// The replica status of one channel.
    pub fn show_replica_status(&self, channel: Channel) -> String {
        let noun = if self.has_replica_words() {
            "REPLICA"
        } else {
            "SLAVE"
        };
        match (self.family, channel) {
            (Family::MariaDb, Some(name)) => format!("SHOW {noun} {} STATUS", quote(name)),
            (Family::MySql, Some(name)) => {
                format!("SHOW {noun} STATUS FOR CHANNEL {}", quote(name))
            }
            (_, None) => format!("SHOW {noun} STATUS"),
        }
    }

    /// `START`/`STOP` (the `verb`) of the replica's threads on one channel. MariaDB keeps
    /// the SLAVE spelling it has always been sent.
    fn thread_statement(&self, verb: &str, threads: Threads, channel: Channel) -> String {
        let which = match threads {
            Threads::Both => "",
            Threads::Io => " IO_THREAD",
        };
        match self.family {
            Family::MariaDb => {
                let name = channel
                    .map(|n| format!(" {}", quote(n)))
                    .unwrap_or_default();
                format!("{verb} SLAVE{name}{which}")
            }
            Family::MySql => {
                let noun = if self.has_replica_words() {
                    "REPLICA"
                } else {
                    "SLAVE"
                };
                format!("{verb} {noun}{which}{}", for_channel(channel))
            }
        }
    }

    pub fn start_replica(&self, threads: Threads, channel: Channel) -> String {
        self.thread_statement("START", threads, channel)
    }

    pub fn stop_replica(&self, threads: Threads, channel: Channel) -> String {
        self.thread_statement("STOP", threads, channel)
    }

    /// Stops and starts the IO thread in one round trip (a thread waiting to retry
    /// connects at once).
    pub fn restart_io_thread(&self, channel: Channel) -> String {
        format!(
            "{}; {}",
            self.stop_replica(Threads::Io, channel),
            self.start_replica(Threads::Io, channel)
        )
    }

    /// `CHANGE MASTER TO` / `CHANGE REPLICATION SOURCE TO` with `options`, already spelled
    /// in this family's words (see [`Dialect::option`]).
    pub fn change_source(&self, channel: Channel, options: &[String]) -> String {
        let options = options.join(", ");
        match self.family {
            Family::MariaDb => {
                let name = channel
                    .map(|n| format!(" {}", quote(n)))
                    .unwrap_or_default();
                format!("CHANGE MASTER{name} TO {options}")
            }
            Family::MySql if self.has_source_words() => format!(
                "CHANGE REPLICATION SOURCE TO {options}{}",
                for_channel(channel)
            ),
            Family::MySql => format!("CHANGE MASTER TO {options}{}", for_channel(channel)),
        }
    }

    /// An option of [`Dialect::change_source`] by its MySQL 8.0.23+ name (`SOURCE_HOST`,
    /// `SOURCE_CONNECT_RETRY`, `GET_SOURCE_PUBLIC_KEY`, ...) in this server's words.
    pub fn option(&self, source_name: &str) -> String {
        if self.has_source_words() {
            source_name.to_owned()
        } else {
            source_name.replace("SOURCE", "MASTER")
        }
    }

    /// The seconds of silence after which a replica drops its connection.
    pub fn net_timeout_variable(&self) -> &'static str {
        match self.family {
            Family::MySql if self.version >= Version(8, 0, 26) => "replica_net_timeout",
            _ => "slave_net_timeout",
        }
    }

    /// Whether the replica logs what it applies into its own binary log.
    pub fn log_replica_updates_variable(&self) -> &'static str {
        match self.family {
            Family::MySql if self.version >= Version(8, 0, 26) => "log_replica_updates",
            _ => "log_slave_updates",
        }
    }

    /// This server's heartbeat row written (or overwritten) with its own clock. MySQL
    /// deprecated `VALUES()` in `ON DUPLICATE KEY UPDATE` (8.0.20) for a row alias (8.0.19).
    pub fn heartbeat_upsert(&self) -> &'static str {
        match self.family {
            Family::MySql if self.version >= Version(8, 0, 19) => {
                "INSERT INTO heartbeat (server_id, beat_us) VALUES (@@server_id, CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)) AS new ON DUPLICATE KEY UPDATE beat_us = new.beat_us"
            }
            _ => {
                "INSERT INTO heartbeat (server_id, beat_us) VALUES (@@server_id, CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)) ON DUPLICATE KEY UPDATE beat_us = VALUES(beat_us)"
            }
        }
    }

    /// [`Dialect::heartbeat_upsert`] for a row several writers share (a hub's, written by
    /// the agent of every office it replicates from): the row changes only when it is at
    /// least `spacing` old, so the servers log about one change per `spacing` whoever
    /// writes, not one per writer. An unchanged row is no change: nothing is logged,
    /// nothing replicated.
    pub fn heartbeat_upsert_spaced(&self, spacing: Duration) -> String {
        let min_us = spacing.as_micros();
        let (alias, new) = match self.family {
            Family::MySql if self.version >= Version(8, 0, 19) => (" AS new", "new.beat_us"),
            _ => ("", "VALUES(beat_us)"),
        };
        format!(
            "INSERT INTO heartbeat (server_id, beat_us) VALUES (@@server_id, CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)){alias} ON DUPLICATE KEY UPDATE beat_us = IF({new} - heartbeat.beat_us >= {min_us}, {new}, heartbeat.beat_us)"
        )
    }

    /// MySQL's applier workers' first error (number, message) for one channel, where the
    /// table and key are when the coordinator's own message hides them behind "Coordinator
    /// stopped because there were error(s) in the worker(s)". MariaDB reports the error
    /// itself. A worker that stopped only because an earlier one failed says so with
    /// error 3030 (`replica_preserve_commit_order`), naming its own transaction (often the
    /// heartbeat row's update), and later: the root cause is the first error that is not
    /// 3030.
    pub fn worker_error_query(&self, channel: Channel) -> Option<String> {
        (self.family == Family::MySql).then(|| {
            format!(
                "SELECT LAST_ERROR_NUMBER, LAST_ERROR_MESSAGE FROM performance_schema.replication_applier_status_by_worker \
                 WHERE LAST_ERROR_NUMBER <> 0 AND CHANNEL_NAME = {} \
                 ORDER BY LAST_ERROR_NUMBER = {WORKER_STOPPED_AFTER_ANOTHER}, LAST_ERROR_TIMESTAMP LIMIT 1",
                quote(channel.unwrap_or(""))
            )
        })
    }

    /// MySQL's replica connection settings for one channel, by column name: the heartbeat
    /// period (which `SHOW REPLICA STATUS` does not show), the retry count, whether it asks
    /// for the source's public key, TLS and protocol compression. MariaDB shows its
    /// heartbeat period in the replica status and has none of the others.
    pub fn connection_settings_query(&self, channel: Channel) -> Option<String> {
        (self.family == Family::MySql).then(|| {
            format!(
                "SELECT HEARTBEAT_INTERVAL, CONNECTION_RETRY_COUNT, GET_PUBLIC_KEY, PUBLIC_KEY_PATH, SSL_ALLOWED, COMPRESSION_ALGORITHM \
                 FROM performance_schema.replication_connection_configuration WHERE CHANNEL_NAME = {}",
                quote(channel.unwrap_or(""))
            )
        })
    }

    /// `on the channel 'x'`, or nothing for the default one (for sentences).
    pub fn channel_words(&self, channel: Channel) -> String {
        match (self.family, channel) {
            (_, None) => String::new(),
            (Family::MariaDb, Some(n)) => format!(" (connection {})", quote(n)),
            (Family::MySql, Some(n)) => format!(" (channel {})", quote(n)),
        }
    }

    /// The query that tells the family and version: [`Dialect::detect`] reads its answer.
    pub const QUERY: &'static str = "SELECT VERSION(), @@version_comment";

    /// Asks a server which family and version it is (one bounded round trip).
    pub async fn query(c: &mut mysql_async::Conn, timeout: Duration) -> Result<Dialect, String> {
        use mysql_async::prelude::Queryable;
        let row: Option<(String, Option<String>)> =
            crate::replication::bounded(timeout, "server version", c.query_first(Self::QUERY))
                .await?;
        let (version, comment) = row.ok_or("server version: no answer")?;
        Ok(Dialect::detect(&version, comment.as_deref().unwrap_or("")))
    }

    /// Which family and version the server at `host:port` is, from its greeting: no
    /// account is needed, so this works before the agent's account exists.
    pub async fn of_server(host: &str, port: u16, timeout: Duration) -> Result<Dialect, String> {
        let mut stream =
            tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port)))
                .await
                .map_err(|_| format!("{host}:{port}: no connection within {timeout:?}"))?
                .map_err(|e| format!("{host}:{port}: {e}"))?;
        let greeting = crate::tunnel::read_greeting(&mut stream, timeout)
            .await
            .map_err(|e| format!("{host}:{port}: {e}"))?;
        Ok(Dialect::from_greeting(&greeting.server_version))
    }
}

/// A string literal for SQL: quotes and backslashes escaped (the form both families read
/// in their default SQL mode).
pub fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn for_channel(channel: Channel) -> String {
    channel
        .map(|n| format!(" FOR CHANNEL {}", quote(n)))
        .unwrap_or_default()
}

/// Why two sides cannot replicate with each other, if they cannot (different families):
/// what is wrong, and what to do instead.
pub fn mismatch_words(office: &Dialect, hub: &Dialect) -> Option<(String, String)> {
    (office.family != hub.family).then(|| {
        (
            format!(
                "The office database is {} and the hub's is {}: their GTIDs do not mix, so replication between them cannot work and tether leaves it alone.",
                office.describe(),
                hub.describe(),
            ),
            format!(
                "Run the same family at both sites: for example move the office's data to a {hub_family} server (dump it and load it there) so both sites run {hub_family}, then set replication up again with the SQL `tether enroll` prints.",
                hub_family = hub.family
            ),
        )
    })
}

/// [`mismatch_words`] as one sentence (what replication shows on both directions).
pub fn mismatch(office: &Dialect, hub: &Dialect) -> Option<String> {
    mismatch_words(office, hub).map(|(why, fix)| format!("{why} {fix}"))
}

/// A server of each family as the tests of other modules record them.
#[cfg(test)]
pub(crate) mod samples {
    use super::{Dialect, Family, Version};

    pub const MARIADB: Dialect = Dialect {
        family: Family::MariaDb,
        version: Version(10, 11, 6),
    };
    pub const MYSQL: Dialect = Dialect {
        family: Family::MySql,
        version: Version(9, 7, 4),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::dialect::samples::{MARIADB, MYSQL};

    #[test]
    fn family_and_version_from_what_servers_say() {
        assert_eq!(
            Dialect::detect("10.11.6-MariaDB-0+deb12u1", "Debian 12"),
            MARIADB
        );
        assert_eq!(
            Dialect::detect("11.4.2-MariaDB", "mariadb.org binary distribution"),
            Dialect::new(Family::MariaDb, Version(11, 4, 2))
        );
        assert_eq!(Dialect::detect("9.7.4-2", "(Debian)"), MYSQL);
        assert_eq!(
            Dialect::detect("8.4.0", "MySQL Community Server - GPL"),
            Dialect::new(Family::MySql, Version(8, 4, 0))
        );
        assert_eq!(
            Dialect::detect("8.0.36-28", "Percona Server (GPL), Release 28"),
            Dialect::new(Family::MySql, Version(8, 0, 36))
        );
        assert_eq!(
            Dialect::from_greeting("5.5.5-10.11.6-MariaDB-0+deb12u1"),
            MARIADB
        );
        assert_eq!(Dialect::from_greeting("9.7.4-2"), MYSQL);
        assert_eq!(MYSQL.describe(), "MySQL 9.7.4");
    }

    #[test]
    fn old_servers_are_named_as_unsupported() {
        assert!(MARIADB.unsupported().is_none());
        assert!(MYSQL.unsupported().is_none());
        let old = Dialect::new(Family::MySql, Version(8, 0, 22));
        let why = old.unsupported().unwrap();
        assert!(
            why.contains("MySQL 8.0.22") && why.contains("8.0.23"),
            "{why}"
        );
        assert!(
            Dialect::new(Family::MariaDb, Version(10, 4, 30))
                .unsupported()
                .is_some()
        );
    }

    /// Every statement, both families, with and without a channel name.
    #[test]
    fn statements_in_each_familys_words() {
        let cases: [(Dialect, Channel, [&str; 5]); 4] = [
            (
                MARIADB,
                None,
                [
                    "SHOW REPLICA STATUS",
                    "STOP SLAVE IO_THREAD; START SLAVE IO_THREAD",
                    "START SLAVE",
                    "STOP SLAVE",
                    "CHANGE MASTER TO MASTER_HOST='h'",
                ],
            ),
            (
                MARIADB,
                Some("office7"),
                [
                    "SHOW REPLICA 'office7' STATUS",
                    "STOP SLAVE 'office7' IO_THREAD; START SLAVE 'office7' IO_THREAD",
                    "START SLAVE 'office7'",
                    "STOP SLAVE 'office7'",
                    "CHANGE MASTER 'office7' TO MASTER_HOST='h'",
                ],
            ),
            (
                MYSQL,
                None,
                [
                    "SHOW REPLICA STATUS",
                    "STOP REPLICA IO_THREAD; START REPLICA IO_THREAD",
                    "START REPLICA",
                    "STOP REPLICA",
                    "CHANGE REPLICATION SOURCE TO SOURCE_HOST='h'",
                ],
            ),
            (
                MYSQL,
                Some("office7"),
                [
                    "SHOW REPLICA STATUS FOR CHANNEL 'office7'",
                    "STOP REPLICA IO_THREAD FOR CHANNEL 'office7'; START REPLICA IO_THREAD FOR CHANNEL 'office7'",
                    "START REPLICA FOR CHANNEL 'office7'",
                    "STOP REPLICA FOR CHANNEL 'office7'",
                    "CHANGE REPLICATION SOURCE TO SOURCE_HOST='h' FOR CHANNEL 'office7'",
                ],
            ),
        ];
        for (d, ch, [show, restart, start, stop, change]) in cases {
            assert_eq!(d.show_replica_status(ch), show);
            assert_eq!(d.restart_io_thread(ch), restart);
            assert_eq!(d.start_replica(Threads::Both, ch), start);
            assert_eq!(d.stop_replica(Threads::Both, ch), stop);
            let host = format!("{}='h'", d.option("SOURCE_HOST"));
            assert_eq!(d.change_source(ch, &[host]), change);
        }
        // A name is a quoted literal, whatever it holds.
        assert_eq!(
            MYSQL.start_replica(Threads::Io, Some("a'b")),
            "START REPLICA IO_THREAD FOR CHANNEL 'a\\'b'"
        );
    }

    #[test]
    fn older_servers_get_the_spelling_they_know() {
        let maria_10_4 = Dialect::new(Family::MariaDb, Version(10, 4, 30));
        assert_eq!(maria_10_4.show_replica_status(None), "SHOW SLAVE STATUS");
        let mysql_8_0_22 = Dialect::new(Family::MySql, Version(8, 0, 22));
        assert_eq!(
            mysql_8_0_22.show_replica_status(None),
            "SHOW REPLICA STATUS"
        );
        assert_eq!(mysql_8_0_22.option("SOURCE_PORT"), "MASTER_PORT");
        assert_eq!(
            mysql_8_0_22.change_source(None, &["MASTER_PORT=1".into()]),
            "CHANGE MASTER TO MASTER_PORT=1"
        );
        let mysql_5_7 = Dialect::new(Family::MySql, Version(5, 7, 44));
        assert_eq!(
            mysql_5_7.restart_io_thread(Some("c")),
            "STOP SLAVE IO_THREAD FOR CHANNEL 'c'; START SLAVE IO_THREAD FOR CHANNEL 'c'"
        );
        assert_eq!(
            Dialect::new(Family::MySql, Version(8, 0, 25)).net_timeout_variable(),
            "slave_net_timeout"
        );
        assert_eq!(MYSQL.net_timeout_variable(), "replica_net_timeout");
        assert_eq!(MARIADB.net_timeout_variable(), "slave_net_timeout");
        assert_eq!(MYSQL.log_replica_updates_variable(), "log_replica_updates");
    }

    #[test]
    fn a_shared_heartbeat_row_changes_at_most_once_a_spacing() {
        for (d, new) in [(MARIADB, "VALUES(beat_us)"), (MYSQL, "new.beat_us")] {
            let sql = d.heartbeat_upsert_spaced(Duration::from_millis(750));
            assert!(
                sql.ends_with(&format!(
                    "ON DUPLICATE KEY UPDATE beat_us = IF({new} - heartbeat.beat_us >= 750000, {new}, heartbeat.beat_us)"
                )),
                "{sql}"
            );
            assert!(
                sql.starts_with(d.heartbeat_upsert().split(" ON DUPLICATE").next().unwrap()),
                "{sql}"
            );
        }
    }

    #[test]
    fn a_channel_name_is_one_both_families_take() {
        for good in ["office-1", "Branch_7", "a", &"x".repeat(64)] {
            assert_eq!(channel_name_problem(good), None, "{good}");
        }
        for (bad, says) in [
            ("", "1 to 64"),
            (&"x".repeat(65) as &str, "1 to 64"),
            ("office 1", "only letters"),
            ("o'ffice", "only letters"),
            ("büro", "only letters"),
            ("Group_Replication_applier", "keeps"),
        ] {
            let why = channel_name_problem(bad).unwrap_or_default();
            assert!(why.contains(says), "{bad}: {why}");
        }
    }

    #[test]
    fn the_worker_table_is_read_on_mysql_only_and_per_channel() {
        assert!(MARIADB.worker_error_query(None).is_none());
        let q = MYSQL.worker_error_query(Some("x")).unwrap();
        assert!(q.contains("replication_applier_status_by_worker"), "{q}");
        assert!(q.contains("CHANNEL_NAME = 'x'"), "{q}");
        // The root cause first: workers stopped after another's error come last.
        assert!(
            q.contains("ORDER BY LAST_ERROR_NUMBER = 3030, LAST_ERROR_TIMESTAMP LIMIT 1"),
            "{q}"
        );
        assert!(
            MYSQL
                .worker_error_query(None)
                .unwrap()
                .contains("CHANNEL_NAME = ''")
        );
    }

    #[test]
    fn different_families_are_refused_with_what_to_do() {
        assert!(mismatch(&MYSQL, &Dialect::new(Family::MySql, Version(8, 4, 0))).is_none());
        let why = mismatch(&MARIADB, &MYSQL).unwrap();
        assert!(
            why.contains("MariaDB 10.11.6") && why.contains("MySQL 9.7.4"),
            "{why}"
        );
        assert!(why.contains("GTIDs do not mix"), "{why}");
        assert!(why.contains("same family"), "{why}");
        let (problem, fix) = mismatch_words(&MARIADB, &MYSQL).unwrap();
        assert!(why.starts_with(&problem) && why.ends_with(&fix), "{why}");
        assert!(
            fix.contains("a MySQL server") && fix.contains("tether enroll"),
            "what to do instead: {fix}"
        );
    }

    #[test]
    fn mysqls_connection_settings_are_read_per_channel_where_the_heartbeat_is() {
        assert!(MARIADB.connection_settings_query(None).is_none());
        let q = MYSQL.connection_settings_query(Some("x")).unwrap();
        assert!(
            q.contains("performance_schema.replication_connection_configuration")
                && q.contains("HEARTBEAT_INTERVAL")
                && q.contains("CHANNEL_NAME = 'x'"),
            "{q}"
        );
    }
}
