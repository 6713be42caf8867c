//! Enrolment: the device key, the hub's host key, and what the hub admin must install
//! (`tether enroll` prints it, filled in from the config).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::keys::{Algorithm, PrivateKey, PublicKey, PublicKeyOrCertificate};

use crate::tunnel::Endpoint;

/// Why enrolment could not proceed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("{path}: {what}: {source}")]
    Io {
        path: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{path}: not a usable private key: {why}")]
    BadKey { path: String, why: String },
    #[error("cannot generate a key: {0}")]
    Generate(String),
    #[error("{hub}: {why}")]
    Hub { hub: String, why: String },
}

/// Loads the device key, creating an ed25519 key (mode 0600) if there is none.
/// Returns the key and whether it was created now.
pub fn ensure_device_key(path: &Path) -> Result<(PrivateKey, bool), EnrollError> {
    let shown = path.display().to_string();
    if path.exists() {
        let key = russh::keys::load_secret_key(path, None).map_err(|e| EnrollError::BadKey {
            path: shown.clone(),
            why: e.to_string(),
        })?;
        return Ok((key, false));
    }
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(|source| EnrollError::Io {
            path: dir.display().to_string(),
            what: "cannot create the key's directory",
            source,
        })?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    let key = PrivateKey::random(&mut russh::keys::key::safe_rng(), Algorithm::Ed25519)
        .map_err(|e| EnrollError::Generate(e.to_string()))?;
    let text = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .map_err(|e| EnrollError::Generate(e.to_string()))?;
    let io = |what| {
        let shown = shown.clone();
        move |source| EnrollError::Io {
            path: shown,
            what,
            source,
        }
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io("cannot create the device key"))?;
    f.write_all(text.as_bytes())
        .map_err(io("cannot write the device key"))?;
    f.sync_all().map_err(io("cannot write the device key"))?;
    Ok((key, true))
}

/// The device's public key line, `ssh-ed25519 AAAA... tether@<site>`.
pub fn public_line(key: &PrivateKey, site: &str) -> String {
    let mut public = key.public_key().clone();
    public.set_comment(format!("tether@{site}"));
    public.to_openssh().unwrap_or_default()
}

/// Connects to the hub just far enough to see its host key, then hangs up.
pub async fn fetch_host_key(hub: &Endpoint, timeout: Duration) -> Result<PublicKey, EnrollError> {
    struct Grab(Arc<Mutex<Option<PublicKey>>>);
    impl russh::client::Handler for Grab {
        type Error = russh::Error;
        async fn check_server_key(
            &mut self,
            key: &PublicKeyOrCertificate,
        ) -> Result<bool, Self::Error> {
            if let PublicKeyOrCertificate::PublicKey { key, .. } = key
                && let Ok(mut slot) = self.0.lock()
            {
                *slot = Some(key.clone());
            }
            Ok(false)
        }
    }
    let slot = Arc::new(Mutex::new(None));
    let err = |why: String| EnrollError::Hub {
        hub: hub.to_string(),
        why,
    };
    let fut = async {
        let tcp = tokio::net::TcpStream::connect((hub.host.as_str(), hub.port))
            .await
            .map_err(|e| err(format!("cannot connect: {e}")))?;
        let _ = russh::client::connect_stream(
            Arc::new(russh::client::Config::default()),
            tcp,
            Grab(slot.clone()),
        )
        .await;
        Ok::<(), EnrollError>(())
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| err(format!("no SSH handshake within {timeout:?}")))??;
    let key = slot.lock().ok().and_then(|s| s.clone());
    key.ok_or_else(|| err("the hub presented no plain host key".into()))
}

/// `tether enroll`: creates the device key if missing and prints what the hub admin must
/// install; with `pin`, fetches the hub's host key and pins it in the journal.
pub async fn run(
    config: &crate::config::Config,
    pin: bool,
    site_number: Option<u64>,
) -> anyhow::Result<()> {
    let key_path = config.key_path();
    let (key, created) = ensure_device_key(&key_path)?;
    if created {
        println!("Created the device key {}.", key_path.display());
    }
    let line = public_line(&key, &config.site.id);
    let f = &config.forwards;
    println!(
        "\n# 1. On the hub, append this line to ~{}/.ssh/authorized_keys:\n",
        config.hub.user
    );
    println!(
        "{}",
        crate::hubkit::authorized_keys_line(
            &line,
            &f.remote_listen.to_string(),
            &f.local_target.to_string()
        )
    );
    println!("\n# 2. On the hub, add this to /etc/ssh/sshd_config and reload sshd:\n");
    println!(
        "{}",
        crate::hubkit::sshd_match_block(
            &config.hub.user,
            &f.remote_listen.to_string(),
            &f.local_target.to_string()
        )
    );
    println!(
        "# 3. Pin the hub's host key: set hub.host_key in the config, or run `tether enroll --pin`."
    );
    let dialect = setup_dialect(config).await;
    if let (Some(connection), Ok(d)) = (&config.replication.hub_connection, &dialect) {
        println!(
            "\n# This office's numbers on a hub with several offices (its connection there: '{connection}'):\n"
        );
        match office_numbers(config, site_number).await {
            Ok((numbers, how)) => {
                println!("-- {how}");
                println!(
                    "-- In the office server's config ([mysqld]), then restart it (`tether setup` sets them live too):"
                );
                for line in numbers.config_lines(d.family) {
                    println!("{line}");
                }
                println!(
                    "-- auto_increment_increment = site.planned_sites ({}), the same on every server, hub included: changing it later means changing every server at the same moment with writes stopped everywhere. Never reuse a retired office's number.",
                    numbers.increment
                );
            }
            Err(why) => println!("-- {why}"),
        }
    }
    match &dialect {
        Ok(d) => {
            println!("\n# 4. The accounts, on both databases ({}):\n", d.family);
            println!("{}", crate::hubkit::accounts_explained(d.family));
            println!(
                "\n# 5. Replication, both ways through the tunnel (replace {{{{REPL_PASSWORD}}}}):\n"
            );
            println!("{}", crate::hubkit::replication_setup_for(d, config));
        }
        Err(e) => println!("\n# 4. The accounts and replication setup: {e:#}\n"),
    }
    if pin {
        let hub = Endpoint::new(config.hub.host.clone(), config.hub.port);
        let key = fetch_host_key(&hub, config.timings.handshake_timeout).await?;
        let fp = crate::tunnel::fingerprint(&key);
        println!("\nThe hub {hub} presents host key {fp}.");
        println!("Compare it with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the hub.");
        std::fs::create_dir_all(&config.data.dir)?;
        let journal = crate::journal::Journal::new(&config.data.dir);
        let mut state = journal.load().state;
        state.hub_key_fingerprint = Some(fp);
        journal.save(&state)?;
        println!("Pinned in {}.", journal.path().display());
    }
    dialect.map(|_| ())
}

/// This office's numbers on a hub with several offices, and how they were chosen:
/// `site_number` when given (checked against the hub when it can be read), else the next
/// number the hub shows free, read through the running agent's local forward with the
/// agent's account (the hub's own numbers, every office connection's source server id,
/// and on MariaDB the GTID domains those ids wrote).
async fn office_numbers(
    config: &crate::config::Config,
    site_number: Option<u64>,
) -> Result<(crate::site_numbers::SiteNumbers, String), String> {
    use crate::site_numbers::{check_number, propose};
    let planned = u64::from(config.site.planned_sites);
    let seen = hub_numbers(config).await;
    match (site_number, seen) {
        (Some(n), Ok((id, domain, others))) => check_number(n, id, domain, &others, planned)
            .map(|numbers| {
                (
                    numbers,
                    format!(
                        "Site number {n} (--site-number), checked against the hub and its {} other offices.",
                        others.len()
                    ),
                )
            }),
        (Some(n), Err(e)) => check_number(n, None, None, &[], planned).map(|numbers| {
            (
                numbers,
                format!(
                    "Site number {n} (--site-number); NOT checked against the other offices: the hub could not be read ({e})."
                ),
            )
        }),
        (None, Ok((id, domain, others))) => {
            let numbers = propose(id, domain, &others, planned)?;
            let used: Vec<String> = others
                .iter()
                .map(|o| {
                    format!(
                        "'{}' server_id {}",
                        o.connection,
                        o.server_id.map_or("unknown".into(), |i| i.to_string())
                    )
                })
                .collect();
            Ok((
                numbers,
                format!(
                    "The next free number at the hub (the hub is 1; other offices: {}).",
                    if used.is_empty() {
                        "none".to_owned()
                    } else {
                        used.join(", ")
                    }
                ),
            ))
        }
        (None, Err(e)) => Err(format!(
            "The other offices' numbers cannot be read from the hub ({e}): start the agent (the hub is read through its tunnel with the agent's account) and run `tether enroll` again, or give this office's number with `--site-number N` (2 for the first office, then 3, ...; never a retired office's)."
        )),
    }
}

/// The hub's `server_id`, GTID domain and its other offices, read through the running
/// agent's local forward with the agent's account.
async fn hub_numbers(
    config: &crate::config::Config,
) -> Result<
    (
        Option<u64>,
        Option<u64>,
        Vec<crate::site_numbers::OtherOffice>,
    ),
    String,
> {
    use mysql_async::prelude::Queryable;
    let timeout = Duration::from_secs(5);
    let (_, hub) = crate::app::db_targets(config);
    let mut conn = crate::replication::bounded(
        timeout,
        "connect",
        mysql_async::Conn::new(crate::replication::opts(&hub, timeout)),
    )
    .await?;
    let dialect = crate::dialect::Dialect::query(&mut conn, timeout).await?;
    let own = config.replication.hub_connection.as_deref().unwrap_or("");
    let others = crate::doctor::other_offices(&mut conn, timeout, &dialect, own).await?;
    let id: Option<u64> = crate::replication::bounded(
        timeout,
        "the hub's server_id",
        conn.query_first("SELECT @@GLOBAL.server_id"),
    )
    .await?;
    let domain: Option<u64> = match dialect.family {
        crate::dialect::Family::MariaDb => {
            crate::replication::bounded(
                timeout,
                "the hub's GTID domain",
                conn.query_first("SELECT @@GLOBAL.gtid_domain_id"),
            )
            .await?
        }
        crate::dialect::Family::MySql => None,
    };
    let _ = tokio::time::timeout(Duration::from_millis(300), conn.disconnect()).await;
    Ok((id, domain, others))
}

/// The dialect the printed setup SQL is for: `office_db.family`, else the office server's
/// own greeting (no account needed, so this works before the accounts exist).
pub async fn setup_dialect(
    config: &crate::config::Config,
) -> anyhow::Result<crate::dialect::Dialect> {
    use crate::dialect::Dialect;
    if let Some(family) = config.office_db.family.family() {
        return Ok(Dialect::current(family));
    }
    let (host, port) = (&config.office_db.host, config.office_db.port);
    Dialect::of_server(host, port, std::time::Duration::from_secs(5))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot tell whether the office database is MariaDB or MySQL ({e}): start it, or set office_db.family = \"mariadb\" or \"mysql\" in the config"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_with_mode_0600_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/device_key");
        let (k1, created) = ensure_device_key(&path).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (k2, created) = ensure_device_key(&path).unwrap();
        assert!(!created);
        assert_eq!(k1.public_key(), k2.public_key());
        let line = public_line(&k1, "office");
        assert!(line.starts_with("ssh-ed25519 AAAA"), "{line}");
        assert!(line.ends_with("tether@office"), "{line}");
    }

    #[test]
    fn a_broken_key_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device_key");
        std::fs::write(&path, "not a key").unwrap();
        let err = ensure_device_key(&path).unwrap_err().to_string();
        assert!(
            err.contains("device_key") && err.contains("not a usable private key"),
            "{err}"
        );
    }
}
