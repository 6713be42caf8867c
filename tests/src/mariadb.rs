//! MariaDB for the harness: the sites a database stands for, and what is MariaDB's own
//! in starting one (`db` has the server both families share): its options, its data
//! dir template (made once per machine by mariadb-install-db) and its client.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;

use crate::db::{DbOptions, template_dir};
use crate::process::{RunAs, program};

/// Which site a database stands for; decides its server_id, offset and GTID domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    Hub,
    Office,
}

impl Site {
    pub fn name(self) -> &'static str {
        match self {
            Site::Hub => "hub",
            Site::Office => "office",
        }
    }

    /// auto_increment_offset and gtid_domain_id.
    pub fn number(self) -> u32 {
        match self {
            Site::Hub => 1,
            Site::Office => 2,
        }
    }

    /// server_id: distinct, and not the servers' default 1 (the doctor warns about it).
    pub fn server_id(self) -> u32 {
        10 + self.number()
    }
}

/// The server options for one MariaDB of the harness.
pub fn server_args(
    opts: &DbOptions,
    server_id: u32,
    data: &Path,
    socket: &Path,
    log: &Path,
    dir: &Path,
    port: u16,
) -> Vec<String> {
    let n = opts.site.number();
    // A bare server keeps MariaDB's own defaults for what `tether setup` sets.
    let site_settings = if opts.bare {
        vec!["--binlog-format=MIXED".to_string()]
    } else {
        vec![
            "--binlog-format=ROW".to_string(),
            "--auto-increment-increment=10".into(),
            format!("--auto-increment-offset={n}"),
            format!("--gtid-domain-id={n}"),
        ]
    };
    let mut args = vec![
        "--no-defaults".to_string(),
        format!("--datadir={}", data.display()),
        format!("--socket={}", socket.display()),
        format!("--port={port}"),
        "--bind-address=127.0.0.1".into(),
        format!("--pid-file={}", dir.join("mysqld.pid").display()),
        format!("--log-error={}", log.display()),
        format!("--tmpdir={}", dir.display()),
        "--skip-name-resolve".into(),
        format!("--server-id={server_id}"),
        format!("--log-bin={}", dir.join("binlog").display()),
        "--innodb-buffer-pool-size=32M".into(),
        "--innodb-flush-log-at-trx-commit=2".into(),
        "--sync-binlog=0".into(),
        "--performance-schema=OFF".into(),
        "--max-connections=100".into(),
        "--skip-log-slave-updates".into(),
    ];
    args.extend(site_settings);
    args.extend(opts.extra_args.iter().cloned());
    args
}

/// A fresh data dir made once per machine (mariadb-install-db takes seconds), copied per
/// server (`db::template_dir`).
pub fn template(run_as: &RunAs) -> Result<PathBuf> {
    let bin = program("mariadbd", "mariadb-server")?;
    template_dir(
        "mariadb",
        &bin,
        run_as,
        |dir| dir.join("mysql").is_dir(),
        |work, data| {
            // Its own temporary directory: the bootstrap's temporary tables must not live
            // in the shared /tmp, where another process's clean-up can take them
            // mid-install.
            let tmp = work.join("tmp");
            std::fs::create_dir_all(&tmp)?;
            run_as.own(&tmp)?;
            let mut cmd = Command::new(program("mariadb-install-db", "mariadb-server")?);
            cmd.args([
                "--no-defaults",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()));
            run_as.run("mariadb-install-db", &mut cmd).map(drop)
        },
    )
}
