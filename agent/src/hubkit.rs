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

#[cfg(test)]
mod tests {
    use super::*;

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
