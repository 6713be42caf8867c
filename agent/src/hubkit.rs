//! What the hub's admin installs, as text: the restricted `authorized_keys` line, the sshd
//! `Match User` block and the SQL for the users. The test harness's sshd and databases
//! use exactly these texts, so they are tested. Each SQL text is in the words of the
//! family it is for (MariaDB or MySQL).

use crate::dialect::{self, Channel, Dialect, Family, Threads};

/// The sshd `Match User` block, with `{{USER}}`, `{{LISTEN}}` and `{{OPEN}}` placeholders.
pub const SSHD_MATCH_TEMPLATE: &str = include_str!("../../systemd/hub/sshd_match.conf");

/// SQL for the replication account (MariaDB), with `{{PASSWORD}}` in it.
pub const REPLICATION_USER_TEMPLATE: &str = include_str!("../../systemd/hub/replication_user.sql");
/// SQL for the agent's monitoring account (MariaDB), with `{{PASSWORD}}` in it.
pub const AGENT_USER_TEMPLATE: &str = include_str!("../../systemd/hub/agent_user.sql");
/// SQL for the replication account (MySQL), with `{{PASSWORD}}` in it.
pub const REPLICATION_USER_MYSQL_TEMPLATE: &str =
    include_str!("../../systemd/hub/replication_user_mysql.sql");
/// SQL for the agent's monitoring account (MySQL), with `{{PASSWORD}}` in it.
pub const AGENT_USER_MYSQL_TEMPLATE: &str = include_str!("../../systemd/hub/agent_user_mysql.sql");

/// The replication account's SQL for `family` with its password filled in.
pub fn replication_user_sql(family: Family, password: &str) -> String {
    let template = match family {
        Family::MariaDb => REPLICATION_USER_TEMPLATE,
        Family::MySql => REPLICATION_USER_MYSQL_TEMPLATE,
    };
    template.replace("{{PASSWORD}}", &escaped(password))
}

/// The agent account's SQL for `family` with its password filled in.
pub fn agent_user_sql(family: Family, password: &str) -> String {
    let template = match family {
        Family::MariaDb => AGENT_USER_TEMPLATE,
        Family::MySql => AGENT_USER_MYSQL_TEMPLATE,
    };
    template.replace("{{PASSWORD}}", &escaped(password))
}

/// The inside of a quoted SQL string literal.
fn escaped(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\'', "\\'")
}

/// The restricted key line: forwarding only, only to and from the two database ports.
/// `listen` is the remote forward's `host:port` on the hub; `open` the hub DB's. The
/// remote forward's own address is also permitted to open, so the agent can probe the
/// hub-to-office path end to end through the hub.
pub fn authorized_keys_line(public_key_line: &str, listen: &str, open: &str) -> String {
    format!(
        "restrict,port-forwarding,command=\"/bin/false\",permitlisten=\"{listen}\",permitopen=\"{open}\",permitopen=\"{listen}\" {}",
        public_key_line.trim()
    )
}

/// The sshd `Match User` block for the appliance's account.
pub fn sshd_match_block(user: &str, listen: &str, open: &str) -> String {
    SSHD_MATCH_TEMPLATE
        .replace("{{USER}}", user)
        .replace("{{LISTEN}}", listen)
        .replace("{{OPEN}}", open)
}

/// The replication settings tether recommends for a server of dialect `d`, each with
/// why, applied by [`replication_setup_sql`] (the lab uses exactly that) and printed by
/// `tether enroll`.
pub fn replication_settings(d: &Dialect) -> Vec<(String, &'static str)> {
    const RETRY: &str = "retry every second instead of every 60 s: each attempt only reaches the tunnel's end on the same machine, so it costs nothing while the link is down, and replication starts again within a second of the tunnel's return (tether also restarts an IO thread still waiting)";
    const HEARTBEAT: &str =
        "the primary sends a heartbeat every 5 s when idle, so a dead link is noticed";
    const NET_TIMEOUT: &str =
        "the replica gives up on a silent connection after 15 s instead of 60 s";
    const ROW_IMAGE: &str =
        "row events carry the key and the changed columns only: far fewer bytes on a slow link";
    const ONE_COMPRESSION: &str = "tether compresses the whole SSH stream (hub.compression); compressing twice costs CPU for nothing";
    let net_timeout = format!("{}=15", d.net_timeout_variable());
    match d.family {
        Family::MariaDb => vec![
            (
                "MASTER_USE_GTID=slave_pos".into(),
                "resume from the exact transaction after an outage of any length (MariaDB GTID)",
            ),
            ("MASTER_CONNECT_RETRY=1".into(), RETRY),
            ("MASTER_HEARTBEAT_PERIOD=5".into(), HEARTBEAT),
            (net_timeout, NET_TIMEOUT),
            ("binlog_row_image=MINIMAL".into(), ROW_IMAGE),
            (
                "binlog_annotate_row_events=OFF".into(),
                "no copy of each statement's text beside its row events: it would only be shown in binlog dumps",
            ),
            ("slave_compressed_protocol=OFF".into(), ONE_COMPRESSION),
        ],
        Family::MySql => vec![
            (
                format!("{}=1", d.option("SOURCE_AUTO_POSITION")),
                "resume from the exact transaction after an outage of any length (MySQL GTID: gtid_mode=ON and enforce_gtid_consistency=ON on both servers)",
            ),
            (format!("{}=1", d.option("SOURCE_CONNECT_RETRY")), RETRY),
            (
                format!("{}={}", d.option("SOURCE_RETRY_COUNT"), u64::MAX),
                "never give up reconnecting: MySQL's default of 10 attempts stops the IO thread about 10 s into an outage with the 1 s retry, and it then stays stopped (tether restarts such a thread too)",
            ),
            (
                format!("{}=5", d.option("SOURCE_HEARTBEAT_PERIOD")),
                HEARTBEAT,
            ),
            (
                format!("{}=1", d.option("GET_SOURCE_PUBLIC_KEY")),
                "caching_sha2_password (MySQL's default) over the tunnel's plain TCP: without it replication works until a server restart empties the password cache, then stops with error 2061",
            ),
            (
                format!("{}=0", d.option("SOURCE_SSL")),
                "the SSH tunnel already encrypts; TLS inside it (MySQL's default when the server has certificates) would leave SSH's compression nothing to compress. If the office database reaches this box over a LAN you do not trust, use 1 instead and accept more bytes on the link",
            ),
            (
                format!(
                    "{}='uncompressed'",
                    d.option("SOURCE_COMPRESSION_ALGORITHMS")
                ),
                ONE_COMPRESSION,
            ),
            (net_timeout, NET_TIMEOUT),
            ("binlog_row_image=MINIMAL".into(), ROW_IMAGE),
        ],
    }
}

/// Points one database of dialect `d` at its peer through `host:port` (the tunnel's
/// forward on that side) with the recommended settings, and starts replication on
/// `channel` (the default one when `None`). `password` is the replication account's.
/// A named channel is not stopped first: stopping one that does not exist yet is an error.
pub fn replication_setup_sql(
    d: &Dialect,
    channel: Channel,
    host: &str,
    port: u16,
    user: &str,
    password: &str,
) -> String {
    let settings = replication_settings(d);
    let mut options = vec![
        format!("{}={}", d.option("SOURCE_HOST"), dialect::quote(host)),
        format!("{}={port}", d.option("SOURCE_PORT")),
        format!("{}={}", d.option("SOURCE_USER"), dialect::quote(user)),
        format!(
            "{}={}",
            d.option("SOURCE_PASSWORD"),
            dialect::quote(password)
        ),
    ];
    let mut globals = Vec::new();
    for (setting, _) in &settings {
        let (name, value) = setting.split_once('=').unwrap_or((setting, ""));
        if name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
            options.push(setting.clone());
        } else {
            let value = match value {
                "MINIMAL" => "'MINIMAL'",
                v => v,
            };
            globals.push(format!("SET GLOBAL {name} = {value}; "));
        }
    }
    let stop = match channel {
        None => format!("{}; ", d.stop_replica(Threads::Both, None)),
        Some(_) => String::new(),
    };
    format!(
        "{stop}{}{}; {};",
        globals.concat(),
        d.change_source(channel, &options),
        d.start_replica(Threads::Both, channel)
    )
}

/// The `[mysqld]` lines that keep the settings across a restart, as comment lines.
pub fn config_lines(d: &Dialect) -> String {
    match d.family {
        Family::MariaDb => "-- In each server's config ([mysqld]) as well, so they survive a restart:\n\
             --   slave_net_timeout = 15, binlog_row_image = MINIMAL, binlog_format = ROW,\n\
             --   binlog_annotate_row_events = OFF, master_retry_count = 0 (never give up retrying:\n\
             --   the default gives up after 100000 attempts, 28 hours at one a second)\n"
            .to_owned(),
        Family::MySql => format!(
            "-- In each server's config ([mysqld]) as well, so they survive a restart:\n\
             --   {} = 15, binlog_row_image = MINIMAL, gtid_mode = ON,\n\
             --   enforce_gtid_consistency = ON, {} = OFF (MySQL's default ON sends each\n\
             --   change back over the link; keep it ON only where a third server replicates from\n\
             --   this one), and a server_id of its own (the binary log is on by default).\n\
             --   The CHANGE REPLICATION SOURCE settings are kept by the server itself.\n",
            d.net_timeout_variable(),
            d.log_replica_updates_variable()
        ),
    }
}

/// Marks the start of the office database's statements in [`replication_setup_explained`].
pub const OFFICE_SETUP_HEADING: &str =
    "-- On the office database (replicates from the hub through this box):";
/// Marks the start of the hub database's statements in [`replication_setup_explained`].
pub const HUB_SETUP_HEADING: &str =
    "-- On the hub database (replicates from the office through the tunnel):";

/// The setup for both databases (of dialect `d`), explained, for people (`tether
/// enroll`): the office reaches the hub at `office_to_box` (the box's local forward), the
/// hub reaches the office at 127.0.0.1:`hub_to_office` (the remote forward). The password
/// stays a placeholder: it is never printed.
pub fn replication_setup_explained(
    d: &Dialect,
    office_to_box: (&str, u16),
    hub_to_office: u16,
) -> String {
    let mut out = format!(
        "-- For {} at both sites ({} or later; the two sites must run the same family: their GTIDs do not mix).\n-- Why these settings:\n",
        d.family,
        d.family.oldest_supported()
    );
    for (setting, why) in replication_settings(d) {
        out.push_str(&format!("--   {setting}: {why}\n"));
    }
    out.push_str(&config_lines(d));
    out.push_str(&format!("\n{OFFICE_SETUP_HEADING}\n"));
    let (host, port) = office_to_box;
    out.push_str(&replication_setup_sql(
        d,
        None,
        host,
        port,
        "repl",
        "{{REPL_PASSWORD}}",
    ));
    out.push_str(&format!("\n\n{HUB_SETUP_HEADING}\n"));
    out.push_str(&replication_setup_sql(
        d,
        None,
        "127.0.0.1",
        hub_to_office,
        "repl",
        "{{REPL_PASSWORD}}",
    ));
    out.push('\n');
    out
}

/// [`replication_setup_explained`] for this box's forwards: the office database reaches
/// the box at `forwards.local_listen` (its LAN address when that listens on every
/// address), the hub reaches the office at `forwards.remote_listen`'s port.
pub fn replication_setup_for(d: &Dialect, forwards: &crate::config::Forwards) -> String {
    replication_setup_explained(
        d,
        (
            match forwards.local_listen.host.as_str() {
                "0.0.0.0" | "::" => "{{BOX_LAN_ADDRESS}}",
                host => host,
            },
            forwards.local_listen.port,
        ),
        forwards.remote_listen.port,
    )
}

/// Both accounts' SQL for `family`, passwords as placeholders (`tether enroll`).
pub fn accounts_explained(family: Family) -> String {
    format!(
        "-- On BOTH databases: the replication account (replace {{{{REPL_PASSWORD}}}}):\n{}\n-- and the agent's monitoring account (replace {{{{AGENT_PASSWORD}}}}, the password in the office_db and hub_db sections of tether.toml):\n{}",
        replication_user_sql(family, "{{REPL_PASSWORD}}"),
        agent_user_sql(family, "{{AGENT_PASSWORD}}")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARIADB: Dialect = Dialect {
        family: Family::MariaDb,
        version: dialect::Version(10, 11, 6),
    };
    const MYSQL: Dialect = Dialect {
        family: Family::MySql,
        version: dialect::Version(9, 7, 4),
    };

    #[test]
    fn replication_setup_applies_every_recommended_setting() {
        for d in [MARIADB, MYSQL] {
            let sql = replication_setup_sql(&d, None, "127.0.0.1", 3307, "repl", "pa'ss");
            for (setting, _) in replication_settings(&d) {
                let (name, value) = setting.split_once('=').unwrap();
                assert!(
                    sql.contains(&format!("{name}={value}"))
                        || sql.contains(&format!("{name} = {value}"))
                        || sql.contains(&format!("{name} = '{value}'")),
                    "{setting} is not applied: {sql}"
                );
            }
            assert!(sql.contains(&format!("{}=3307", d.option("SOURCE_PORT"))));
            assert!(
                sql.contains(&format!("{}='pa\\'ss'", d.option("SOURCE_PASSWORD"))),
                "quoted: {sql}"
            );
            let told = replication_setup_explained(&d, ("192.168.1.5", 3307), 3308);
            assert!(
                told.contains(&format!(
                    "{}='192.168.1.5', {}=3307",
                    d.option("SOURCE_HOST"),
                    d.option("SOURCE_PORT")
                )),
                "{told}"
            );
            assert!(told.contains("{{REPL_PASSWORD}}") && !told.contains("pa'ss"));
            assert!(told.contains(&format!("{}=3308", d.option("SOURCE_PORT"))));
            assert!(told.contains(OFFICE_SETUP_HEADING) && told.contains(HUB_SETUP_HEADING));
        }
    }

    #[test]
    fn mariadb_setup_is_the_statements_it_always_was() {
        assert_eq!(
            replication_setup_sql(&MARIADB, None, "127.0.0.1", 3307, "repl", "pw"),
            "STOP SLAVE; SET GLOBAL slave_net_timeout = 15; SET GLOBAL binlog_row_image = 'MINIMAL'; \
             SET GLOBAL binlog_annotate_row_events = OFF; SET GLOBAL slave_compressed_protocol = OFF; \
             CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=3307, MASTER_USER='repl', MASTER_PASSWORD='pw', \
             MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1, MASTER_HEARTBEAT_PERIOD=5; START SLAVE;"
        );
    }

    #[test]
    fn mysql_setup_speaks_source_and_replica_and_never_gives_up() {
        let sql = replication_setup_sql(&MYSQL, None, "127.0.0.1", 3307, "repl", "pw");
        assert_eq!(
            sql,
            "STOP REPLICA; SET GLOBAL replica_net_timeout = 15; SET GLOBAL binlog_row_image = 'MINIMAL'; \
             CHANGE REPLICATION SOURCE TO SOURCE_HOST='127.0.0.1', SOURCE_PORT=3307, SOURCE_USER='repl', SOURCE_PASSWORD='pw', \
             SOURCE_AUTO_POSITION=1, SOURCE_CONNECT_RETRY=1, SOURCE_RETRY_COUNT=18446744073709551615, SOURCE_HEARTBEAT_PERIOD=5, \
             GET_SOURCE_PUBLIC_KEY=1, SOURCE_SSL=0, SOURCE_COMPRESSION_ALGORITHMS='uncompressed'; START REPLICA;"
        );
        for gone in ["MASTER", "SLAVE", "annotate", "slave_", "MASTER_USE_GTID"] {
            assert!(!sql.contains(gone), "{gone} in {sql}");
        }
        let lines = config_lines(&MYSQL);
        assert!(
            !lines.contains("annotate")
                && lines.contains("gtid_mode = ON")
                && lines.contains("log_replica_updates = OFF"),
            "{lines}"
        );
    }

    #[test]
    fn a_named_channel_is_set_up_on_its_own() {
        let sql = replication_setup_sql(&MYSQL, Some("office7"), "127.0.0.1", 3307, "repl", "pw");
        assert!(sql.starts_with("SET GLOBAL"), "{sql}");
        assert!(
            sql.ends_with("FOR CHANNEL 'office7'; START REPLICA FOR CHANNEL 'office7';"),
            "{sql}"
        );
        let sql = replication_setup_sql(&MARIADB, Some("office7"), "127.0.0.1", 3307, "repl", "pw");
        assert!(
            sql.contains("CHANGE MASTER 'office7' TO") && sql.ends_with("START SLAVE 'office7';"),
            "{sql}"
        );
    }

    #[test]
    fn account_sql_uses_each_familys_privilege_names() {
        let maria = agent_user_sql(Family::MariaDb, "x");
        assert!(maria.contains("SLAVE MONITOR"), "{maria}");
        let mysql = agent_user_sql(Family::MySql, "p'w");
        for word in ["SLAVE MONITOR", "BINLOG MONITOR", "SUPER", "ALL"] {
            assert!(!mysql.contains(word), "{word} in {mysql}");
        }
        assert!(
            mysql.contains("REPLICATION_SLAVE_ADMIN") && mysql.contains("'p\\'w'"),
            "{mysql}"
        );
        let repl = replication_user_sql(Family::MySql, "x");
        assert!(repl.contains("caching_sha2_password") && repl.contains("REPLICATION SLAVE"));
        let told = accounts_explained(Family::MySql);
        assert!(
            told.contains("{{REPL_PASSWORD}}") && told.contains("{{AGENT_PASSWORD}}"),
            "{told}"
        );
    }

    #[test]
    fn key_line_is_restricted() {
        let l = authorized_keys_line("ssh-ed25519 AAAA x@y\n", "127.0.0.1:3307", "127.0.0.1:3306");
        assert_eq!(
            l,
            "restrict,port-forwarding,command=\"/bin/false\",permitlisten=\"127.0.0.1:3307\",permitopen=\"127.0.0.1:3306\",permitopen=\"127.0.0.1:3307\" ssh-ed25519 AAAA x@y"
        );
    }

    #[test]
    fn match_block_has_the_keepalives_that_free_stale_listeners() {
        let b = sshd_match_block("tether", "127.0.0.1:3307", "127.0.0.1:3306");
        assert!(b.contains("Match User tether"));
        assert!(b.contains("ClientAliveInterval 15"));
        assert!(b.contains("ClientAliveCountMax 3"));
        assert!(b.contains("PermitListen 127.0.0.1:3307"));
        assert!(!b.contains("{{"));
    }
}
