//! A private MariaDB server: its own data dir (copied from a cached fresh install), port,
//! socket and log, set up for multi-master replication the way DESIGN.md describes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::process::{Proc, RunAs, TempDir, on_free_port, program, set_mode};

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

/// Options for one server.
#[derive(Debug, Clone)]
pub struct MariaDbOptions {
    pub site: Site,
    /// Overrides the site's server_id (the doctor's equal-id test).
    pub server_id: Option<u32>,
    /// Extra `--option=value` arguments.
    pub extra_args: Vec<String>,
}

impl MariaDbOptions {
    pub fn new(site: Site) -> Self {
        MariaDbOptions {
            site,
            server_id: None,
            extra_args: Vec::new(),
        }
    }
}

/// A running MariaDB.
#[derive(Debug)]
pub struct MariaDb {
    pub site: Site,
    pub name: String,
    pub host: String,
    pub port: u16,
    pub socket: PathBuf,
    pub root_password: String,
    pub repl_password: String,
    pub agent_password: String,
    pub server_id: u32,
    proc: Proc,
    run_as: RunAs,
    dir: TempDir,
    args: Vec<String>,
}

const START_TIMEOUT: Duration = Duration::from_secs(30);

impl MariaDb {
    pub fn start(opts: MariaDbOptions) -> Result<MariaDb> {
        let run_as = RunAs::detect()?;
        let name = format!("{} MariaDB", opts.site.name());
        let template =
            template(&run_as).with_context(|| format!("{name}: cannot prepare a data dir"))?;
        let dir = TempDir::new(&format!("mariadb-{}-", opts.site.name()), &run_as)?;
        let data = dir.path().join("data");
        let status = Command::new("cp")
            .args(["-a"])
            .arg(&template)
            .arg(&data)
            .status()?;
        if !status.success() {
            bail!("{name}: cannot copy the data dir template");
        }
        let server_id = opts.server_id.unwrap_or(opts.site.server_id());
        let socket = dir.path().join("mysqld.sock");
        let log = dir.path().join("error.log");
        let mariadbd = program("mariadbd", "mariadb-server")?;
        let mut args = Vec::new();
        let (port, proc) = on_free_port(&name, &log, |port| {
            args = server_args(&opts, server_id, &data, &socket, &log, dir.path(), port);
            let mut cmd = Command::new(&mariadbd);
            cmd.args(&args);
            let mut proc = Proc::spawn(&name, &run_as, &mut cmd, &dir.path().join("stdout.log"))?;
            proc.log = log.clone();
            proc.wait_ready(START_TIMEOUT, || cli(&socket, None, "SELECT 1").is_ok())?;
            Ok(proc)
        })?;
        let mut db = MariaDb {
            site: opts.site,
            name: name.clone(),
            host: "127.0.0.1".into(),
            port,
            socket,
            root_password: random_password(),
            repl_password: random_password(),
            agent_password: random_password(),
            server_id,
            proc,
            run_as,
            dir,
            args,
        };
        db.setup()
            .with_context(|| format!("{name}: setup failed"))?;
        Ok(db)
    }

    fn setup(&mut self) -> Result<()> {
        let sql = format!(
            "SET SESSION sql_log_bin=0;
             DELETE FROM mysql.global_priv WHERE User='' OR (User='root' AND Host<>'localhost');
             FLUSH PRIVILEGES;
             ALTER USER 'root'@'localhost' IDENTIFIED BY '{root}';
             CREATE USER 'root'@'127.0.0.1' IDENTIFIED BY '{root}';
             GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
             CREATE DATABASE IF NOT EXISTS app;
             {repl}
             {agent}",
            root = self.root_password,
            repl = tether::hubkit::replication_user_sql(&self.repl_password),
            agent = tether::hubkit::agent_user_sql(&self.agent_password),
        );
        cli(&self.socket, None, &sql)?;
        Ok(())
    }

    /// Runs SQL as root through the socket; returns tab-separated output.
    pub fn sql(&self, sql: &str) -> Result<String> {
        cli(&self.socket, Some(&self.root_password), sql)
            .with_context(|| format!("{}: {sql}", self.name))
    }

    /// A single-number query's answer (0 when it fails or is not a number).
    pub fn count(&self, sql: &str) -> u64 {
        self.sql(sql)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// A runner for SQL as root that can move to another thread.
    pub fn sql_clone(&self) -> impl Fn(&str) -> Result<String> + Send + 'static {
        let (socket, pw, name) = (
            self.socket.clone(),
            self.root_password.clone(),
            self.name.clone(),
        );
        move |sql: &str| cli(&socket, Some(&pw), sql).with_context(|| format!("{name}: {sql}"))
    }

    /// A `mysql_async` connection URL for root over TCP.
    pub fn root_url(&self) -> String {
        format!(
            "mysql://root:{}@{}:{}/app",
            self.root_password, self.host, self.port
        )
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    pub fn log_tail(&self) -> String {
        crate::process::tail(&self.proc.log, 20)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server (SIGTERM) without removing its data.
    pub fn stop(&mut self) {
        self.proc.stop();
    }

    /// Starts it again on the same port with the same data.
    pub fn restart(&mut self) -> Result<()> {
        self.proc.stop();
        let mut cmd = Command::new(program("mariadbd", "mariadb-server")?);
        cmd.args(&self.args);
        let log = self.proc.log.clone();
        let mut proc = Proc::spawn(
            &self.name,
            &self.run_as,
            &mut cmd,
            &self.dir.path().join("stdout.log"),
        )?;
        proc.log = log;
        let sock = self.socket.clone();
        let pw = self.root_password.clone();
        proc.wait_ready(START_TIMEOUT, || cli(&sock, Some(&pw), "SELECT 1").is_ok())?;
        self.proc = proc;
        Ok(())
    }
}

fn server_args(
    opts: &MariaDbOptions,
    server_id: u32,
    data: &Path,
    socket: &Path,
    log: &Path,
    dir: &Path,
    port: u16,
) -> Vec<String> {
    let n = opts.site.number();
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
        "--binlog-format=ROW".into(),
        "--auto-increment-increment=10".into(),
        format!("--auto-increment-offset={n}"),
        format!("--gtid-domain-id={n}"),
        "--innodb-buffer-pool-size=32M".into(),
        "--innodb-flush-log-at-trx-commit=2".into(),
        "--sync-binlog=0".into(),
        "--performance-schema=OFF".into(),
        "--max-connections=100".into(),
        "--skip-log-slave-updates".into(),
    ];
    args.extend(opts.extra_args.iter().cloned());
    args
}

/// Runs SQL with the `mariadb` client over the socket.
fn cli(socket: &Path, password: Option<&str>, sql: &str) -> Result<String> {
    let mut cmd = Command::new(program("mariadb", "mariadb-client")?);
    cmd.arg("--no-defaults")
        .arg(format!("--socket={}", socket.display()))
        .args([
            "-uroot",
            "--batch",
            "--skip-column-names",
            "--connect-timeout=5",
        ]);
    if let Some(pw) = password {
        cmd.env("MYSQL_PWD", pw);
    }
    cmd.args(["-e", sql]);
    let out = cmd.stdin(std::process::Stdio::null()).output()?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn random_password() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..20)
        .map(|_| {
            let chars = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
            chars[rng.random_range(0..chars.len())] as char
        })
        .collect()
}

/// A fresh data dir made once per machine (mariadb-install-db takes seconds), copied per
/// server. Keyed by the server binary so an upgrade makes a new one.
fn template(run_as: &RunAs) -> Result<PathBuf> {
    let bin = program("mariadbd", "mariadb-server")?;
    let meta = std::fs::metadata(&bin)?;
    let key = format!(
        "{}-{}-{}",
        meta.len(),
        meta.modified()?
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
        run_as.uid
    );
    let base = std::env::temp_dir().join("tether-harness");
    std::fs::create_dir_all(&base)?;
    set_mode(&base, 0o755)?;
    let done = base.join(format!("mariadb-template-{key}"));
    if done.join("mysql").is_dir() {
        return Ok(done);
    }
    let work = tempfile::Builder::new()
        .prefix("mariadb-template-build-")
        .tempdir_in(&base)?
        .keep();
    set_mode(&work, 0o755)?;
    run_as.own(&work)?;
    let data = work.join("data");
    // Its own temporary directory: the bootstrap's temporary tables must not live in the
    // shared /tmp, where another process's clean-up can take them mid-install.
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
    run_as.run("mariadb-install-db", &mut cmd)?;
    // Another test may have finished first; either copy is as good.
    if std::fs::rename(&data, &done).is_err() && !done.join("mysql").is_dir() {
        bail!(
            "cannot put the MariaDB template in place at {}",
            done.display()
        );
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(done)
}
