//! MySQL for the harness: Debian's `mysql-server-core` lives in a small root of its own
//! (its unstable suite builds it for a newer C library than this machine's), which
//! `cargo xtask install` makes once per machine with mmdebstrap. The harness runs the
//! root's `mysqld` and `mysql` through the root's own dynamic loader, without chroot, so
//! data dirs, sockets and logs are ordinary host paths and the server listens on the
//! host's loopback like MariaDB does.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::db::template_dir;
use crate::process::RunAs;

/// What the root holds; its directory name is keyed by this, so a changed recipe gets a
/// root of its own and an unchanged one is reused.
pub const ROOT_SUITE: &str = "sid";
pub const ROOT_PACKAGES: &[&str] = &["mysql-server-core", "mysql-client-core"];
/// Bumped when the way the root is made changes without its packages changing.
const ROOT_RECIPE_VERSION: u32 = 1;

/// Where roots are kept: outside any checkout, shared by every worktree on the machine.
pub const ROOTS_DIR: &str = "/var/lib/tether-lab";

/// Overrides where the harness looks for the root (a root made elsewhere).
pub const ROOT_ENV: &str = "TETHER_MYSQL_ROOT";

/// The recipe as text (what the key hashes).
pub fn recipe() -> String {
    format!(
        "suite={ROOT_SUITE} packages={} variant=minbase recipe={ROOT_RECIPE_VERSION}",
        ROOT_PACKAGES.join(",")
    )
}

/// The root this recipe builds: `/var/lib/tether-lab/mysql-root-<hash of the recipe>`.
pub fn root_dir() -> PathBuf {
    // FNV-1a: stable across Rust versions, unlike the std hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in recipe().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Path::new(ROOTS_DIR).join(format!("mysql-root-{:012x}", h >> 16))
}

/// Whether `dir` is a finished root.
pub fn is_root(dir: &Path) -> bool {
    dir.join("usr/sbin/mysqld").is_file() && dir.join("usr/bin/mysql").is_file()
}

/// The machine's MySQL root.
#[derive(Debug, Clone)]
pub struct MySqlRoot {
    pub dir: PathBuf,
}

impl MySqlRoot {
    /// The root `cargo xtask install` made (or the one `TETHER_MYSQL_ROOT` names).
    pub fn find() -> Result<MySqlRoot> {
        let dir = std::env::var_os(ROOT_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(root_dir);
        if !is_root(&dir) {
            bail!(
                "no MySQL root at {}: run `cargo xtask install` as root (it builds it once per machine with mmdebstrap, about a minute), or point {ROOT_ENV} at one",
                dir.display()
            );
        }
        Ok(MySqlRoot { dir })
    }

    fn multiarch() -> &'static str {
        if cfg!(target_arch = "aarch64") {
            "aarch64-linux-gnu"
        } else {
            "x86_64-linux-gnu"
        }
    }

    fn loader(&self) -> PathBuf {
        let name = if cfg!(target_arch = "aarch64") {
            "ld-linux-aarch64.so.1"
        } else {
            "ld-linux-x86-64.so.2"
        };
        self.dir.join("usr/lib").join(Self::multiarch()).join(name)
    }

    /// Runs `program` (a path inside the root, like `usr/sbin/mysqld`) with the root's own
    /// loader and libraries; arguments follow.
    pub fn command(&self, program: &str) -> Command {
        let libs = self.dir.join("usr/lib").join(Self::multiarch());
        let mut cmd = Command::new(self.loader());
        cmd.arg("--library-path")
            .arg(&libs)
            .arg(self.dir.join(program));
        cmd
    }

    /// `mysqld` with `--no-defaults` (it must come first) and the root's own directories.
    pub fn mysqld(&self) -> Command {
        let mut cmd = self.command("usr/sbin/mysqld");
        cmd.arg("--no-defaults")
            .arg(format!("--basedir={}", self.dir.join("usr").display()))
            .arg(format!(
                "--lc-messages-dir={}",
                self.dir.join("usr/share/mysql").display()
            ))
            .arg(format!(
                "--plugin-dir={}",
                self.dir.join("usr/lib/mysql/plugin").display()
            ))
            .arg(format!(
                "--character-sets-dir={}",
                self.dir.join("usr/share/mysql/charsets").display()
            ));
        cmd
    }

    /// The server binary (its size and time key the data dir template).
    pub fn mysqld_path(&self) -> PathBuf {
        self.dir.join("usr/sbin/mysqld")
    }
}

/// The server options for one MySQL of the harness (after [`MySqlRoot::mysqld`]'s).
pub fn server_args(
    opts: &crate::db::DbOptions,
    server_id: u32,
    data: &Path,
    socket: &Path,
    log: &Path,
    dir: &Path,
    port: u16,
) -> Vec<String> {
    let n = opts.site.number();
    let mut args = vec![
        format!("--datadir={}", data.display()),
        format!("--socket={}", socket.display()),
        format!("--port={port}"),
        "--bind-address=127.0.0.1".into(),
        format!("--pid-file={}", dir.join("mysqld.pid").display()),
        format!("--log-error={}", log.display()),
        format!("--tmpdir={}", dir.display()),
        // No X protocol listener (another port), no secure-file-priv dir (it aborts
        // without /var/lib/mysql-files).
        "--mysqlx=OFF".into(),
        "--secure-file-priv=".into(),
        "--skip-name-resolve".into(),
        format!("--server-id={server_id}"),
        format!("--log-bin={}", dir.join("binlog").display()),
        format!("--relay-log={}", dir.join("relay").display()),
        "--gtid-mode=ON".into(),
        "--enforce-gtid-consistency=ON".into(),
        "--auto-increment-increment=10".into(),
        format!("--auto-increment-offset={n}"),
        "--innodb-buffer-pool-size=32M".into(),
        "--innodb-redo-log-capacity=8M".into(),
        "--innodb-flush-log-at-trx-commit=2".into(),
        "--sync-binlog=0".into(),
        "--max-connections=100".into(),
        "--skip-log-replica-updates".into(),
        // performance_schema stays on (the agent reads the applier workers' errors from
        // it) without the statement history nobody reads here.
        "--performance-schema-events-statements-history-size=0".into(),
        "--performance-schema-events-statements-history-long-size=0".into(),
        "--performance-schema-max-digest-length=0".into(),
        "--performance-schema-digests-size=0".into(),
        "--performance-schema-max-sql-text-length=0".into(),
    ];
    args.extend(opts.extra_args.iter().cloned());
    args
}

/// A fresh data dir made once per machine (`mysqld --initialize-insecure`, a few
/// seconds), copied per server (`db::template_dir`). Its `auto.cnf` is removed so each
/// copy makes a server_uuid of its own.
pub fn template(root: &MySqlRoot, run_as: &RunAs) -> Result<PathBuf> {
    template_dir(
        "mysql",
        &root.mysqld_path(),
        run_as,
        |dir| dir.join("mysql.ibd").is_file(),
        |work, data| {
            let mut cmd = root.mysqld();
            cmd.arg("--initialize-insecure")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--log-error={}", work.join("init.log").display()))
                .arg("--innodb-redo-log-capacity=8M");
            run_as
                .run("mysqld --initialize-insecure", &mut cmd)
                .with_context(|| crate::process::tail(&work.join("init.log"), 20))?;
            let _ = std::fs::remove_file(data.join("auto.cnf"));
            Ok(())
        },
    )
}
