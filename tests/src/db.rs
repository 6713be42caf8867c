//! A private database server of either family (MariaDB or MySQL): its own data dir
//! (copied from a template made once per machine), port, socket and log, set up for
//! multi-master replication the way DESIGN.md describes, with the replication and agent
//! accounts created from the hub kit's SQL for its family. What differs between the
//! families is in `mariadb` and `mysql`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
pub use tether::dialect::Family;

use crate::mariadb::Site;
use crate::mysql::MySqlRoot;
use crate::process::{Proc, RunAs, TempDir, on_free_port, program, set_mode};

/// Options for one server.
#[derive(Debug, Clone)]
pub struct DbOptions {
    pub family: Family,
    pub site: Site,
    /// Overrides the site's server_id (the doctor's equal-id test).
    pub server_id: Option<u32>,
    /// Extra `--option=value` arguments.
    pub extra_args: Vec<String>,
    /// Unconfigured, as a server is before `tether setup`: no replication or agent
    /// account, and (MariaDB) the server's own defaults for server_id, auto_increment,
    /// GTID domain and binlog format; only the binary log is on.
    pub bare: bool,
}

impl DbOptions {
    pub fn new(family: Family, site: Site) -> Self {
        DbOptions {
            family,
            site,
            server_id: None,
            extra_args: Vec::new(),
            bare: false,
        }
    }
}

/// How a family's server and client are run.
#[derive(Debug, Clone)]
enum Engine {
    MariaDb,
    MySql(MySqlRoot),
}

impl Engine {
    fn of(family: Family) -> Result<Engine> {
        Ok(match family {
            Family::MariaDb => Engine::MariaDb,
            Family::MySql => Engine::MySql(MySqlRoot::find()?),
        })
    }

    /// The server command, before the per-server options.
    fn server(&self) -> Result<Command> {
        match self {
            Engine::MariaDb => Ok(Command::new(program("mariadbd", "mariadb-server")?)),
            Engine::MySql(root) => Ok(root.mysqld()),
        }
    }

    fn template(&self, run_as: &RunAs) -> Result<PathBuf> {
        match self {
            Engine::MariaDb => crate::mariadb::template(run_as),
            Engine::MySql(root) => crate::mysql::template(root, run_as),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn args(
        &self,
        opts: &DbOptions,
        server_id: u32,
        data: &Path,
        socket: &Path,
        log: &Path,
        dir: &Path,
        port: u16,
    ) -> Vec<String> {
        match self {
            Engine::MariaDb => {
                crate::mariadb::server_args(opts, server_id, data, socket, log, dir, port)
            }
            Engine::MySql(_) => {
                crate::mysql::server_args(opts, server_id, data, socket, log, dir, port)
            }
        }
    }

    /// Runs SQL with the family's client over the socket as root; tab-separated rows,
    /// with the column names first when `names`.
    fn client(
        &self,
        socket: &Path,
        password: Option<&str>,
        sql: &str,
        names: bool,
    ) -> Result<String> {
        let mut cmd = match self {
            Engine::MariaDb => Command::new(program("mariadb", "mariadb-client")?),
            Engine::MySql(root) => root.command("usr/bin/mysql"),
        };
        cmd.arg("--no-defaults")
            .arg(format!("--socket={}", socket.display()))
            .args(["-uroot", "--batch", "--connect-timeout=5"]);
        if !names {
            cmd.arg("--skip-column-names");
        }
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

    fn cli(&self, socket: &Path, password: Option<&str>, sql: &str) -> Result<String> {
        self.client(socket, password, sql, false)
    }
}

/// A running database server.
#[derive(Debug)]
pub struct DbServer {
    pub family: Family,
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
    engine: Engine,
    args: Vec<String>,
}

const START_TIMEOUT: Duration = Duration::from_secs(30);

impl DbServer {
    pub fn start(opts: DbOptions) -> Result<DbServer> {
        let run_as = RunAs::detect()?;
        let name = format!("{} {}", opts.site.name(), opts.family);
        let engine = Engine::of(opts.family).with_context(|| name.clone())?;
        let template = engine
            .template(&run_as)
            .with_context(|| format!("{name}: cannot prepare a data dir"))?;
        let dir = TempDir::new(
            &format!("{}-{}-", opts.family.key(), opts.site.name()),
            &run_as,
        )?;
        let data = dir.path().join("data");
        let status = Command::new("cp")
            .args(["-a"])
            .arg(&template)
            .arg(&data)
            .status()?;
        if !status.success() {
            bail!("{name}: cannot copy the data dir template");
        }
        let server_id = match (opts.server_id, opts.bare) {
            (Some(id), _) => id,
            (None, true) => 1,
            (None, false) => opts.site.server_id(),
        };
        let socket = dir.path().join("mysqld.sock");
        let log = dir.path().join("error.log");
        let mut args = Vec::new();
        let (port, proc) = on_free_port(&name, &log, |port| {
            args = engine.args(&opts, server_id, &data, &socket, &log, dir.path(), port);
            let mut cmd = engine.server()?;
            cmd.args(&args);
            let mut proc = Proc::spawn(&name, &run_as, &mut cmd, &dir.path().join("stdout.log"))?;
            proc.log = log.clone();
            proc.wait_ready(START_TIMEOUT, || {
                engine.cli(&socket, None, "SELECT 1").is_ok()
            })?;
            Ok(proc)
        })?;
        let mut db = DbServer {
            family: opts.family,
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
            engine,
            args,
        };
        db.setup(opts.bare)
            .with_context(|| format!("{name}: setup failed"))?;
        Ok(db)
    }

    /// Root's password, root over TCP from 127.0.0.1, the `app` schema and (unless
    /// `bare`) both accounts from the hub kit's SQL for this family; none of it goes to
    /// the binary log.
    fn setup(&mut self, bare: bool) -> Result<()> {
        let users = match self.family {
            // A fresh MariaDB has anonymous users that would shadow '%' accounts for
            // connections from 127.0.0.1.
            Family::MariaDb => {
                "DELETE FROM mysql.global_priv WHERE User='' OR (User='root' AND Host<>'localhost');
                 FLUSH PRIVILEGES;"
            }
            // MySQL has none; its root is only root@localhost.
            Family::MySql => "",
        };
        let sql = format!(
            "SET SESSION sql_log_bin=0;
             {users}
             ALTER USER 'root'@'localhost' IDENTIFIED BY '{root}';
             CREATE USER 'root'@'127.0.0.1' IDENTIFIED BY '{root}';
             GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
             CREATE DATABASE IF NOT EXISTS app;
             {repl}
             {agent}",
            root = self.root_password,
            repl = if bare {
                String::new()
            } else {
                tether::hubkit::replication_user_sql(self.family, &self.repl_password)
            },
            agent = if bare {
                String::new()
            } else {
                tether::hubkit::agent_user_sql(self.family, &self.agent_password)
            },
        );
        self.engine.cli(&self.socket, None, &sql)?;
        Ok(())
    }

    /// Runs SQL as root through the socket; returns tab-separated output.
    pub fn sql(&self, sql: &str) -> Result<String> {
        self.engine
            .cli(&self.socket, Some(&self.root_password), sql)
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
        let (engine, socket, pw, name) = (
            self.engine.clone(),
            self.socket.clone(),
            self.root_password.clone(),
            self.name.clone(),
        );
        move |sql: &str| {
            engine
                .cli(&socket, Some(&pw), sql)
                .with_context(|| format!("{name}: {sql}"))
        }
    }

    /// A `mysql_async` connection URL for root over TCP.
    pub fn root_url(&self) -> String {
        format!(
            "mysql://root:{}@{}:{}/app",
            self.root_password, self.host, self.port
        )
    }

    /// The replica status of the default channel, by column name (as root).
    pub fn replica_status(&self) -> Result<std::collections::BTreeMap<String, String>> {
        let statement = tether::dialect::Dialect::current(self.family).show_replica_status(None);
        let text = self
            .engine
            .client(&self.socket, Some(&self.root_password), &statement, true)
            .with_context(|| format!("{}: {statement}", self.name))?;
        let mut lines = text.lines();
        let names = lines.next().unwrap_or_default().split('\t');
        let values = lines.next().unwrap_or_default().split('\t');
        Ok(names
            .zip(values)
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect())
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
        let mut cmd = self.engine.server()?;
        cmd.args(&self.args);
        let log = self.proc.log.clone();
        let mut proc = Proc::spawn(
            &self.name,
            &self.run_as,
            &mut cmd,
            &self.dir.path().join("stdout.log"),
        )?;
        proc.log = log;
        let (engine, sock, pw) = (&self.engine, &self.socket, &self.root_password);
        proc.wait_ready(START_TIMEOUT, || {
            engine.cli(sock, Some(pw), "SELECT 1").is_ok()
        })?;
        self.proc = proc;
        Ok(())
    }
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

/// A fresh data dir made once per machine by `init` and copied per server. Keyed by the
/// server binary (an upgrade makes a new one) and the account the servers run as; made
/// in a work dir of its own and renamed into place, so a test that finds `ready(dir)`
/// true uses a finished one, and two tests making it at once both succeed.
/// `init(work, data)` must create the data dir `data` inside the work dir `work`.
pub(crate) fn template_dir(
    name: &str,
    server_binary: &Path,
    run_as: &RunAs,
    ready: fn(&Path) -> bool,
    init: impl FnOnce(&Path, &Path) -> Result<()>,
) -> Result<PathBuf> {
    let meta = std::fs::metadata(server_binary)
        .with_context(|| format!("cannot read {}", server_binary.display()))?;
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
    let done = base.join(format!("{name}-template-{key}"));
    if ready(&done) {
        return Ok(done);
    }
    let work = tempfile::Builder::new()
        .prefix(&format!("{name}-template-build-"))
        .tempdir_in(&base)?
        .keep();
    set_mode(&work, 0o755)?;
    run_as.own(&work)?;
    let data = work.join("data");
    init(&work, &data)?;
    // Another test may have finished first; either copy is as good.
    if std::fs::rename(&data, &done).is_err() && !ready(&done) {
        bail!(
            "cannot put the {name} data dir template in place at {}",
            done.display()
        );
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(done)
}
