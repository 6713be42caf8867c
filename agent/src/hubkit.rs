//! What the hub's admin installs, as text: the restricted `authorized_keys` line, the sshd
//! `Match User` block and the SQL for the users. The test harness's sshd and databases
//! use exactly these texts, so they are tested.

/// The sshd `Match User` block, with `{{USER}}`, `{{LISTEN}}` and `{{OPEN}}` placeholders.
pub const SSHD_MATCH_TEMPLATE: &str = include_str!("../../systemd/hub/sshd_match.conf");

/// SQL for the replication account, with `{{PASSWORD}}` in it.
pub const REPLICATION_USER_TEMPLATE: &str = include_str!("../../systemd/hub/replication_user.sql");
/// SQL for the agent's monitoring account, with `{{PASSWORD}}` in it.
pub const AGENT_USER_TEMPLATE: &str = include_str!("../../systemd/hub/agent_user.sql");

/// The replication account's SQL with its password filled in.
pub fn replication_user_sql(password: &str) -> String {
    REPLICATION_USER_TEMPLATE.replace(
        "{{PASSWORD}}",
        &password.replace('\\', "\\\\").replace('\'', "\\'"),
    )
}

/// The agent account's SQL with its password filled in.
pub fn agent_user_sql(password: &str) -> String {
    AGENT_USER_TEMPLATE.replace(
        "{{PASSWORD}}",
        &password.replace('\\', "\\\\").replace('\'', "\\'"),
    )
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

/// The replication settings tether recommends, each with why, applied by
/// [`replication_setup_sql`] (the lab uses exactly that) and printed by `tether enroll`.
pub const REPLICATION_SETTINGS: &[(&str, &str)] = &[
    (
        "MASTER_USE_GTID=slave_pos",
        "resume from the exact transaction after an outage of any length (MariaDB GTID)",
    ),
    (
        "MASTER_CONNECT_RETRY=1",
        "retry every second instead of every 60 s: each attempt only reaches the tunnel's end on the same machine, so it costs nothing while the link is down, and replication starts again within a second of the tunnel's return (tether also restarts an IO thread still waiting)",
    ),
    (
        "MASTER_HEARTBEAT_PERIOD=5",
        "the primary sends a heartbeat every 5 s when idle, so a dead link is noticed",
    ),
    (
        "slave_net_timeout=15",
        "the replica gives up on a silent connection after 15 s instead of 60 s",
    ),
    (
        "binlog_row_image=MINIMAL",
        "row events carry the key and the changed columns only: far fewer bytes on a slow link",
    ),
    (
        "binlog_annotate_row_events=OFF",
        "no copy of each statement's text beside its row events: it would only be shown in binlog dumps",
    ),
    (
        "slave_compressed_protocol=OFF",
        "tether compresses the whole SSH stream (hub.compression); compressing twice costs CPU for nothing",
    ),
];

/// Points one database at its peer through `host:port` (the tunnel's forward on that
/// side) with the recommended settings, and starts replication. `password` is the
/// replication account's.
pub fn replication_setup_sql(host: &str, port: u16, user: &str, password: &str) -> String {
    let q = |v: &str| v.replace('\\', "\\\\").replace('\'', "\\'");
    format!(
        "STOP SLAVE; \
         SET GLOBAL slave_net_timeout = 15; \
         SET GLOBAL binlog_row_image = 'MINIMAL'; \
         SET GLOBAL binlog_annotate_row_events = OFF; \
         SET GLOBAL slave_compressed_protocol = OFF; \
         CHANGE MASTER TO MASTER_HOST='{}', MASTER_PORT={port}, MASTER_USER='{}', MASTER_PASSWORD='{}', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1, MASTER_HEARTBEAT_PERIOD=5; \
         START SLAVE;",
        q(host),
        q(user),
        q(password)
    )
}

/// The setup for both databases, explained, for people (`tether enroll`): the office
/// reaches the hub at `office_to_box` (the box's local forward), the hub reaches the
/// office at 127.0.0.1:`hub_to_office` (the remote forward). The password stays a
/// placeholder: it is never printed.
pub fn replication_setup_explained(office_to_box: (&str, u16), hub_to_office: u16) -> String {
    let mut out = String::from("-- Why these settings:\n");
    for (setting, why) in REPLICATION_SETTINGS {
        out.push_str(&format!("--   {setting}: {why}\n"));
    }
    out.push_str(
        "-- In each server's config ([mysqld]) as well, so they survive a restart:\n\
         --   slave_net_timeout = 15, binlog_row_image = MINIMAL, binlog_format = ROW,\n\
         --   binlog_annotate_row_events = OFF, master_retry_count = 0 (never give up retrying:\n\
         --   the default gives up after 100000 attempts, 28 hours at one a second)\n",
    );
    out.push_str("\n-- On the office database (replicates from the hub through this box):\n");
    let (host, port) = office_to_box;
    out.push_str(&replication_setup_sql(
        host,
        port,
        "repl",
        "{{REPL_PASSWORD}}",
    ));
    out.push_str("\n\n-- On the hub database (replicates from the office through the tunnel):\n");
    out.push_str(&replication_setup_sql(
        "127.0.0.1",
        hub_to_office,
        "repl",
        "{{REPL_PASSWORD}}",
    ));
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_setup_applies_every_recommended_setting() {
        let sql = replication_setup_sql("127.0.0.1", 3307, "repl", "pa'ss");
        for (setting, _) in REPLICATION_SETTINGS {
            let (name, value) = setting.split_once('=').unwrap();
            assert!(
                sql.contains(&format!("{name}={value}"))
                    || sql.contains(&format!("{name} = {value}"))
                    || sql.contains(&format!("{name} = '{value}'")),
                "{setting} is not applied: {sql}"
            );
        }
        assert!(sql.contains("MASTER_PORT=3307"));
        assert!(sql.contains("MASTER_PASSWORD='pa\\'ss'"), "quoted: {sql}");
        let told = replication_setup_explained(("192.168.1.5", 3307), 3308);
        assert!(
            told.contains("MASTER_HOST='192.168.1.5', MASTER_PORT=3307"),
            "{told}"
        );
        assert!(told.contains("{{REPL_PASSWORD}}") && !told.contains("pa'ss"));
        assert!(told.contains("MASTER_PORT=3308"));
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
