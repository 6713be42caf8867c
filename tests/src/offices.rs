//! A hub and N offices that really replicate through the hub, MariaDB or MySQL: one hub
//! database relaying each office's changes to the others (`log_slave_updates` /
//! `log_replica_updates`, one named replication connection (MariaDB) or channel (MySQL)
//! per office, named after its site id), N office databases (each its own `server_id`,
//! `auto_increment_offset` and, on MariaDB, GTID domain; `auto_increment_increment` sized
//! for the sites planned), one sshd, one broker, and per office a link simulator and an
//! agent with its own device key, site id and remote-forward port; each office replicates
//! from the hub through its own agent's local forward.
//!
//! Every database is set up with the statements `tether enroll` prints for that
//! office's config (`replication.hub_connection` = the site id, so the hub's statements
//! name the office's connection), and every agent logs in to the hub with the one agent
//! account of the hub kit: each reads and restarts only its own connection there.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mysql_async::prelude::Queryable;
use tokio_util::sync::CancellationToken;

use crate::db::{DbOptions, DbServer, Family};
use crate::lab::{Agent, AgentEnds, AgentMode, agent_config_between, enroll_blocks};
use crate::linksim::{LinkOptions, LinkSim};
use crate::mariadb::Site;
use crate::mosquitto::Mosquitto;
use crate::process::reserve_port;
use crate::sshd::{Sshd, SshdOptions, new_device_key};
use crate::workload::{SiteCounts, checksum};

/// The hub's number: its `server_id`, GTID domain and `auto_increment_offset`.
pub const HUB_NUMBER: u32 = 1;

/// The site id of office `i` (0-based): `office-1`, `office-2`, ...
pub fn site_id(i: usize) -> String {
    format!("office-{}", i + 1)
}

/// What to start.
#[derive(Debug, Clone)]
pub struct OfficesOptions {
    /// Config, sockets, keys and agent logs go here.
    pub dir: PathBuf,
    /// Every server's family: MariaDB (a named connection per office on the hub) or
    /// MySQL (a channel per office).
    pub family: Family,
    pub offices: usize,
    /// `auto_increment_increment` on every server: the most sites ever planned, hub
    /// included (changing it later means changing every server at once).
    pub planned_sites: u32,
    /// Each office's link: bytes per second each way, and round-trip delay.
    pub rate: Option<u64>,
    pub delay: Duration,
    pub agent: AgentMode,
    /// The hub logs every statement it receives to `mysql.general_log` from its start
    /// (for tests that read what the agents sent; a session started before it was turned
    /// on would not be logged).
    pub hub_general_log: bool,
    /// Bound on the whole start, replication running everywhere included.
    pub ready_timeout: Duration,
    /// The last this many offices start bare, as a new office is before `tether setup`:
    /// their database with the server's own defaults and no accounts, nothing set up
    /// on the hub for them, their agent running with the tunnel up (logging in to the
    /// hub with the one agent account the other boxes share).
    pub bare_offices: usize,
}

impl OfficesOptions {
    /// `offices` offices on the office line (128 kbit/s, 300 ms), in-process agents, ten
    /// sites planned.
    pub fn new(dir: PathBuf, offices: usize) -> Self {
        OfficesOptions {
            dir,
            family: Family::MariaDb,
            offices,
            planned_sites: 10,
            rate: Some(16_000),
            delay: Duration::from_millis(300),
            agent: AgentMode::InProcess,
            hub_general_log: false,
            ready_timeout: Duration::from_secs(180),
            bare_offices: 0,
        }
    }
}

/// One office: its database, link, agent and where they meet the hub.
pub struct Office {
    pub site: String,
    /// Its `server_id`, GTID domain and `auto_increment_offset`.
    pub number: u32,
    pub db: DbServer,
    /// The office's line to the hub (in front of the hub's sshd).
    pub link: LinkSim,
    pub config: tether::config::Config,
    pub config_path: PathBuf,
    pub dir: PathBuf,
    /// The box's local forward (the office DB replicates from the hub through it).
    pub local_port: u16,
    /// The hub's end of the remote forward (the hub's connection for this office).
    pub remote_port: u16,
    /// Started bare ([`OfficesOptions::bare_offices`]): not replicating until set up.
    pub bare: bool,
    agent: Option<Agent>,
}

impl Office {
    /// The agent's current state document.
    pub async fn state(&self) -> Result<serde_json::Value> {
        let doc = tether::status::query(&self.config.status.socket, Duration::from_secs(2)).await?;
        Ok(serde_json::from_str(doc.trim())?)
    }

    /// Polls the agent's state until `pred` holds or `timeout` passes.
    pub async fn wait_state(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        let mut last = serde_json::Value::Null;
        loop {
            if let Ok(doc) = self.state().await {
                if pred(&doc) {
                    return Ok(doc);
                }
                last = doc;
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: timed out after {timeout:?} waiting for {what}; last state: {last:#}",
                    self.site
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_verdict(
        &self,
        verdict: &str,
        timeout: Duration,
    ) -> Result<serde_json::Value> {
        self.wait_state(&format!("verdict {verdict}"), timeout, |d| {
            d["verdict"] == verdict
        })
        .await
    }

    /// The agent's process id (this process's for an in-process agent).
    pub fn agent_pid(&self) -> Option<u32> {
        match &self.agent {
            Some(Agent::Process(p)) => p.pid(),
            Some(Agent::Task { .. }) => Some(std::process::id()),
            None => None,
        }
    }

    /// An error if a binary agent has exited on its own.
    pub fn check_agent_alive(&mut self) -> Result<()> {
        match &mut self.agent {
            Some(agent) => agent.check_alive(),
            None => bail!("{}: no agent running", self.site),
        }
    }
}

/// A running hub with its offices; dropping it tears everything down.
pub struct Offices {
    pub hub_db: DbServer,
    pub sshd: Sshd,
    pub broker: Mosquitto,
    pub offices: Vec<Office>,
    pub opts: OfficesOptions,
}

impl Offices {
    pub async fn start(opts: OfficesOptions) -> Result<Offices> {
        let started = Instant::now();
        if opts.offices == 0 {
            bail!("a hub needs at least one office");
        }
        let sites = opts.offices as u32 + 1;
        if opts.planned_sites < sites {
            bail!(
                "auto_increment_increment {} is fewer than the {sites} sites (hub included)",
                opts.planned_sites
            );
        }
        std::fs::create_dir_all(&opts.dir)
            .with_context(|| format!("cannot create {}", opts.dir.display()))?;
        // Held until each office's agent starts: the hub's sshd binds these only when the
        // agent asks, long after dozens of servers have picked their own free ports.
        let mut reserved: Vec<Option<std::net::TcpListener>> = (0..opts.offices)
            .map(|_| Ok(Some(reserve_port()?)))
            .collect::<Result<_>>()?;
        let remote_ports: Vec<u16> = reserved
            .iter()
            .flatten()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<std::io::Result<_>>()?;
        let (hub_db, office_dbs, broker) = {
            let planned = opts.planned_sites;
            let n = opts.offices;
            let general_log = opts.hub_general_log;
            let family = opts.family;
            let bare = opts.bare_offices.min(n);
            tokio::task::spawn_blocking(move || {
                start_servers(family, n, bare, planned, general_log)
            })
            .await??
        };
        let sshd = {
            let listens: Vec<String> = remote_ports
                .iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect();
            let open = format!("127.0.0.1:{}", hub_db.port);
            tokio::task::spawn_blocking(move || {
                Sshd::start(SshdOptions {
                    permit_listen: listens.join(" "),
                    permit_open: open,
                    client_alive_interval: None,
                })
            })
            .await??
        };
        let mut keys = Vec::new();
        let mut offices = Vec::new();
        let mut reserved_local: Vec<Option<std::net::TcpListener>> = Vec::new();
        for (i, (db, remote_port)) in office_dbs.into_iter().zip(remote_ports).enumerate() {
            let site = site_id(i);
            let bare = i + opts.bare_offices >= opts.offices;
            let dir = opts.dir.join(&site);
            std::fs::create_dir_all(&dir)?;
            let key = dir.join("device_key");
            let public = new_device_key(&key, &format!("tether@{site}"))?;
            keys.push((public, format!("127.0.0.1:{remote_port}")));
            let link = LinkSim::start(
                tokio::net::TcpListener::bind("127.0.0.1:0").await?,
                format!("127.0.0.1:{}", sshd.port).parse::<SocketAddr>()?,
                LinkOptions {
                    rate: opts.rate,
                    delay: opts.delay,
                    control_socket: Some(dir.join("link.sock")),
                    ..LinkOptions::default()
                },
            )
            .await?;
            // Held until the agent binds it, like the remote ports.
            let local = reserve_port()?;
            let local_port = local.local_addr()?.port();
            reserved_local.push(Some(local));
            let mut c = agent_config_between(
                AgentEnds {
                    sshd: &sshd,
                    hub_db: &hub_db,
                    office_db: &db,
                    broker: Some(&broker),
                    remote_listen_port: remote_port,
                },
                link.local_addr(),
                local_port,
                &dir,
            )?;
            c.site.id = site.clone();
            c.site.name = Some(format!("Office {}", i + 1));
            c.hub.key_path = Some(key);
            c.board.backend = tether::config::BoardBackend::None;
            c.board.sim_socket = None;
            c.replication.hub_connection = Some(site.clone());
            c.site.planned_sites = opts.planned_sites;
            let config_path = dir.join("tether.toml");
            std::fs::write(&config_path, toml::to_string(&c)?)?;
            offices.push(Office {
                site,
                number: HUB_NUMBER + 1 + i as u32,
                db,
                link,
                config: c,
                config_path,
                dir,
                local_port,
                remote_port,
                bare,
                agent: None,
            });
        }
        sshd.authorize_sites(&keys, &format!("127.0.0.1:{}", hub_db.port))?;
        let mut hub = Offices {
            hub_db,
            sshd,
            broker,
            offices,
            opts,
        };
        for (i, (port, local)) in reserved.iter_mut().zip(&mut reserved_local).enumerate() {
            drop((port.take(), local.take()));
            hub.start_agent(i).await?;
        }
        let budget = hub.opts.ready_timeout;
        let left = |what: &str| {
            hub_left(started, budget).with_context(|| format!("starting a hub and offices: {what}"))
        };
        for o in &hub.offices {
            o.wait_state("the tunnel up", left("tunnels")?, |d| {
                d["tunnel"]["up"] == true
            })
            .await?;
        }
        hub.setup_replication()?;
        hub.wait_replicating(left("replication")?).await?;
        for o in hub.offices.iter().filter(|o| !o.bare) {
            o.wait_verdict("in_sync", left("in_sync")?).await?;
        }
        Ok(hub)
    }

    /// Plays the service manager for office `i` while `done` runs (`tether setup`, which
    /// asks for the agent to be restarted once it wrote the agent's passwords): whenever
    /// its config file changes, the agent restarts with it. Returns what `done` returned.
    pub async fn restarting_on_config_change<T>(
        &mut self,
        i: usize,
        done: impl std::future::Future<Output = T>,
    ) -> Result<T> {
        tokio::pin!(done);
        let path = self.offices[i].config_path.clone();
        let mut seen = std::fs::read(&path)?;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                out = &mut done => return Ok(out),
                _ = tick.tick() => {
                    let now = std::fs::read(&path).unwrap_or_default();
                    if now != seen && !now.is_empty() {
                        self.offices[i].config = tether::config::Config::load(&path)
                            .map_err(|e| anyhow::anyhow!("{e}"))?;
                        self.start_agent(i).await?;
                        seen = std::fs::read(&path)?;
                    }
                }
            }
        }
    }

    /// Starts (or restarts) office `i`'s agent with its `config`.
    pub async fn start_agent(&mut self, i: usize) -> Result<()> {
        self.stop_agent(i).await;
        let o = &mut self.offices[i];
        std::fs::write(&o.config_path, toml::to_string(&o.config)?)?;
        let agent = Agent::start(
            &self.opts.agent,
            &o.config,
            &o.config_path,
            o.local_port,
            &[],
            &o.dir.join("agent.log"),
        )
        .await?;
        o.agent = Some(agent);
        Ok(())
    }

    /// Stops office `i`'s agent, bounded.
    pub async fn stop_agent(&mut self, i: usize) {
        if let Some(agent) = self.offices[i].agent.take() {
            agent.stop().await;
        }
    }

    /// Every office replicates from the hub through its agent's local forward; the hub
    /// replicates from each office through that office's remote forward on the
    /// connection named after the site (`replication.hub_connection`): the statements
    /// `tether enroll` prints for each office's config, verbatim but for the password
    /// placeholder.
    pub fn setup_replication(&self) -> Result<()> {
        let d = tether::dialect::Dialect::current(self.opts.family);
        for o in self.offices.iter().filter(|o| !o.bare) {
            let printed = tether::hubkit::replication_setup_for(&d, &o.config);
            let (office_sql, hub_sql) = enroll_blocks(&printed)?;
            o.db.sql(&office_sql.replace("{{REPL_PASSWORD}}", &self.hub_db.repl_password))?;
            self.hub_db
                .sql(&hub_sql.replace("{{REPL_PASSWORD}}", &o.db.repl_password))?;
        }
        Ok(())
    }

    /// Waits until every replication thread on every server runs: the hub's connection
    /// for each office and each office's from the hub.
    pub async fn wait_replicating(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut waiting = Vec::new();
            let set_up = self
                .servers()
                .into_iter()
                .filter(|(name, _)| self.office(name).is_none_or(|o| !o.bare));
            for (name, db) in set_up {
                match replica_statuses(db).await {
                    Ok(rows) if !rows.is_empty() => {
                        for r in rows.iter().filter(|r| !running(r)) {
                            waiting.push(format!("{name} connection '{}'", connection_name(r)));
                        }
                    }
                    Ok(_) => waiting.push(format!("{name}: no replication")),
                    Err(e) => waiting.push(format!("{name}: {e:#}")),
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "replication not running everywhere within {timeout:?}: {}",
                    waiting.join("; ")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every database, hub first, with its site id (`hub` for the hub).
    pub fn servers(&self) -> Vec<(&str, &DbServer)> {
        std::iter::once(("hub", &self.hub_db))
            .chain(self.offices.iter().map(|o| (o.site.as_str(), &o.db)))
            .collect()
    }

    /// Where replication stopped on error `errno` (1062: a duplicate key), from the
    /// servers themselves: `(site, "hub")` for an office's connection on the hub,
    /// `(site, "office")` for an office's replica from the hub.
    pub async fn stopped_on(&self, errno: u32) -> Result<Vec<(String, &'static str)>> {
        let errno = errno.to_string();
        let mut stopped = Vec::new();
        for row in replica_statuses(&self.hub_db).await? {
            if stopped_errno(&self.hub_db, &row).await? == errno {
                stopped.push((connection_name(&row).to_owned(), "hub"));
            }
        }
        for o in &self.offices {
            for row in replica_statuses(&o.db).await? {
                if stopped_errno(&o.db, &row).await? == errno {
                    stopped.push((o.site.clone(), "office"));
                }
            }
        }
        stopped.sort();
        Ok(stopped)
    }

    pub fn office(&self, site: &str) -> Option<&Office> {
        self.offices.iter().find(|o| o.site == site)
    }
}

fn hub_left(started: Instant, budget: Duration) -> Result<Duration> {
    let left = budget.saturating_sub(started.elapsed());
    if left.is_zero() {
        bail!("the start took longer than {budget:?}");
    }
    Ok(left)
}

/// The hub (relaying: `log_slave_updates`), `n` offices and the broker, in parallel.
fn start_servers(
    family: Family,
    n: usize,
    bare: usize,
    planned: u32,
    general_log: bool,
) -> Result<(DbServer, Vec<DbServer>, Mosquitto)> {
    let increment = format!("--auto-increment-increment={planned}");
    std::thread::scope(|s| {
        let hub = s.spawn(|| {
            let mut o = DbOptions::new(family, Site::Hub);
            o.server_id = Some(HUB_NUMBER);
            o.extra_args = numbered_args(family, HUB_NUMBER, &increment);
            // The hub passes each office's changes on to the other offices.
            o.extra_args.push(match family {
                Family::MariaDb => "--log-slave-updates".into(),
                Family::MySql => "--log-replica-updates".into(),
            });
            // Each office: its replica's binlog dump, the agent's two sessions, slack.
            o.extra_args
                .push(format!("--max-connections={}", 100 + 8 * n));
            if general_log {
                o.extra_args
                    .extend(["--general-log".into(), "--log-output=TABLE".into()]);
            }
            DbServer::start(o)
        });
        let offices: Vec<_> = (0..n)
            .map(|i| {
                let increment = increment.clone();
                s.spawn(move || {
                    let number = HUB_NUMBER + 1 + i as u32;
                    let mut o = DbOptions::new(family, Site::Office);
                    if i + bare >= n {
                        o.bare = true;
                    } else {
                        o.server_id = Some(number);
                        o.extra_args = numbered_args(family, number, &increment);
                    }
                    let mut db = DbServer::start(o)?;
                    db.name = format!("{} {family}", site_id(i));
                    Ok::<_, anyhow::Error>(db)
                })
            })
            .collect();
        let broker = s.spawn(|| Mosquitto::start(&[]));
        let hub = hub.join().expect("hub DB thread");
        let offices: Vec<Result<DbServer>> = offices
            .into_iter()
            .map(|t| t.join().expect("office DB thread"))
            .collect();
        let broker = broker.join().expect("broker thread");
        Ok((
            hub?,
            offices.into_iter().collect::<Result<Vec<_>>>()?,
            broker?,
        ))
    })
}

/// A site's offset and (MariaDB) GTID domain (its `server_id` is set beside these), and
/// the increment every site shares. Later arguments win over the harness's defaults.
/// MySQL's GTIDs carry each server's own server_uuid: no domain to give.
fn numbered_args(family: Family, number: u32, increment: &str) -> Vec<String> {
    let mut args = vec![
        format!("--auto-increment-offset={number}"),
        increment.to_owned(),
    ];
    if family == Family::MariaDb {
        args.push(format!("--gtid-domain-id={number}"));
    }
    args
}

/// Every replication connection of a server (MariaDB's `SHOW ALL SLAVES STATUS`, MySQL's
/// `SHOW REPLICA STATUS`: a row per channel), each row by column name; an office's one
/// connection has the empty name ([`connection_name`]).
pub async fn replica_statuses(db: &DbServer) -> Result<Vec<BTreeMap<String, String>>> {
    let statement = match db.family {
        Family::MariaDb => "SHOW ALL SLAVES STATUS",
        Family::MySql => "SHOW REPLICA STATUS",
    };
    let mut c = tokio::time::timeout(
        Duration::from_secs(5),
        mysql_async::Conn::from_url(db.root_url()),
    )
    .await
    .with_context(|| format!("{}: connect timed out", db.name))??;
    let rows: Vec<mysql_async::Row> =
        tokio::time::timeout(Duration::from_secs(5), c.query(statement))
            .await
            .with_context(|| format!("{}: {statement} timed out", db.name))??;
    let _ = tokio::time::timeout(Duration::from_secs(1), c.disconnect()).await;
    Ok(rows
        .iter()
        .map(|row| {
            row.columns_ref()
                .iter()
                .enumerate()
                .filter_map(|(i, col)| {
                    let v = match row.as_ref(i)? {
                        mysql_async::Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
                        mysql_async::Value::Int(n) => n.to_string(),
                        mysql_async::Value::UInt(n) => n.to_string(),
                        _ => return None,
                    };
                    Some((col.name_str().into_owned(), v))
                })
                .collect()
        })
        .collect())
}

fn running(row: &BTreeMap<String, String>) -> bool {
    let yes = |maria: &str, mysql: &str| {
        row.get(maria)
            .or_else(|| row.get(mysql))
            .map(String::as_str)
            == Some("Yes")
    };
    yes("Slave_IO_Running", "Replica_IO_Running") && yes("Slave_SQL_Running", "Replica_SQL_Running")
}

/// The connection (MariaDB) or channel (MySQL) a replica status row is of.
/// The error a replica's applier stopped on ("0" when none): its `Last_SQL_Errno`, or on
/// MySQL the first failed applier worker's, as the agent reads it (the coordinator reports
/// the most recent worker's, which may be one that stopped only because the first had:
/// 3030).
pub async fn stopped_errno(db: &DbServer, row: &BTreeMap<String, String>) -> Result<String> {
    let last = row.get("Last_SQL_Errno").cloned().unwrap_or_default();
    if last.is_empty() || last == "0" {
        return Ok("0".into());
    }
    let dialect = tether::dialect::Dialect::current(db.family);
    let Some(query) = dialect.worker_error_query(Some(connection_name(row))) else {
        return Ok(last);
    };
    let first = db.sql(&query)?;
    Ok(first
        .split('\t')
        .next()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map_or(last, str::to_owned))
}

pub fn connection_name(row: &BTreeMap<String, String>) -> &str {
    row.get("Connection_name")
        .or_else(|| row.get("Channel_Name"))
        .map_or("", String::as_str)
}

/// The table every site's writer fills: ids from the server's auto-increment (so two
/// sites with the same `auto_increment_offset` would collide), a per-site counter, and a
/// value that updates change.
pub const TABLE: &str = "app.site_orders";

/// Creates [`TABLE`] on the hub and waits until every office has it.
pub async fn create_table(hub: &Offices, timeout: Duration) -> Result<()> {
    hub.hub_db.sql(&format!(
        "CREATE TABLE IF NOT EXISTS {TABLE} (id BIGINT AUTO_INCREMENT PRIMARY KEY, site VARCHAR(32) NOT NULL, n INT NOT NULL, v INT NOT NULL DEFAULT 0, UNIQUE KEY site_n (site, n)) ENGINE=InnoDB"
    ))?;
    let deadline = Instant::now() + timeout;
    for o in hub.offices.iter().filter(|o| !o.bare) {
        while o.db.count(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema='app' AND table_name='site_orders'",
        ) < 1
        {
            if Instant::now() > deadline {
                bail!("{TABLE} did not reach {} within {timeout:?}", o.site);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// A writer on every site at once: inserts (ids from auto-increment) and updates of
/// the site's own rows, only acknowledged ones counted.
pub struct Writers {
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Per site id (`hub` for the hub), in [`Offices::servers`] order.
    pub counts: Vec<(String, Arc<SiteCounts>)>,
}

impl Writers {
    /// `rows_per_s` statements a second on each site, one in four an update.
    pub fn start(hub: &Offices, rows_per_s: u32) -> Writers {
        let all: Vec<&str> = hub.servers().into_iter().map(|(s, _)| s).collect();
        Writers::start_on(hub, &all, rows_per_s)
    }

    /// The same on the sites `among` only (site ids, `hub` for the hub).
    pub fn start_on(hub: &Offices, among: &[&str], rows_per_s: u32) -> Writers {
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        let mut counts = Vec::new();
        for (site, db) in hub.servers().into_iter().filter(|(s, _)| among.contains(s)) {
            let c = Arc::new(SiteCounts::default());
            tasks.push(tokio::spawn(write(
                db.root_url(),
                site.to_owned(),
                rows_per_s,
                c.clone(),
                stop.clone(),
            )));
            counts.push((site.to_owned(), c));
        }
        Writers {
            stop,
            tasks,
            counts,
        }
    }

    /// Stops writing; returns once every writer has ended.
    pub async fn stop(&mut self) {
        self.stop.cancel();
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }

    /// Rows acknowledged so far, per site.
    pub fn inserted(&self) -> BTreeMap<String, u64> {
        self.counts
            .iter()
            .map(|(s, c)| (s.clone(), c.inserted.load(Ordering::Relaxed)))
            .collect()
    }

    pub fn updated(&self) -> u64 {
        self.counts
            .iter()
            .map(|(_, c)| c.updated.load(Ordering::Relaxed))
            .sum()
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn write(
    url: String,
    site: String,
    rows_per_s: u32,
    counts: Arc<SiteCounts>,
    stop: CancellationToken,
) {
    let Ok(opts) = mysql_async::Opts::from_url(&url) else {
        return;
    };
    let mut conn: Option<mysql_async::Conn> = None;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rows_per_s)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut i: u64 = 0;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if conn.is_none() {
            match tokio::time::timeout(Duration::from_secs(2), mysql_async::Conn::new(opts.clone()))
                .await
            {
                Ok(Ok(c)) => conn = Some(c),
                _ => {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let inserted = counts.inserted.load(Ordering::Relaxed);
        i += 1;
        let is_insert = !(i.is_multiple_of(4) && inserted > 0);
        let sql = if is_insert {
            format!(
                "INSERT INTO {TABLE} (site, n) VALUES ('{site}', {})",
                inserted + 1
            )
        } else {
            let n = 1 + (i * 7919) % inserted;
            format!("UPDATE {TABLE} SET v = v + 1 WHERE site = '{site}' AND n = {n}")
        };
        match tokio::time::timeout(Duration::from_secs(5), c.query_drop(sql)).await {
            Ok(Ok(())) => {
                let n = if is_insert {
                    &counts.inserted
                } else {
                    &counts.updated
                };
                n.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(mysql_async::Error::Server(e))) if e.code == 1062 && is_insert => {
                // The insert committed but its answer was lost with the connection.
                counts.inserted.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
        }
    }
    if let Some(c) = conn {
        let _ = tokio::time::timeout(Duration::from_secs(1), c.disconnect()).await;
    }
}

/// Rows of each site in [`TABLE`] on one server.
fn rows_by_site(db: &DbServer) -> BTreeMap<String, u64> {
    db.sql(&format!("SELECT site, COUNT(*) FROM {TABLE} GROUP BY site"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (site, n) = l.split_once('\t')?;
            Some((site.to_owned(), n.trim().parse().ok()?))
        })
        .collect()
}

/// Waits until `among` (site ids, `hub` for the hub) all hold at least `acked` rows of
/// each of those sites; returns how long that took. For rows crossing while writers run.
pub async fn wait_arrived(
    hub: &Offices,
    among: &[&str],
    acked: &BTreeMap<String, u64>,
    timeout: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let mut short = Vec::new();
        for (site, db) in hub.servers().into_iter().filter(|(s, _)| among.contains(s)) {
            let have = rows_by_site(db);
            for from in among {
                let want = acked.get(*from).copied().unwrap_or(0);
                let got = have.get(*from).copied().unwrap_or(0);
                if got < want {
                    short.push(format!("{site} has {got} of {from}'s {want}"));
                }
            }
        }
        if short.is_empty() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            bail!("rows not across within {timeout:?}: {}", short.join(", "));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (after the writers stopped) until every server holds every acknowledged row of
/// every site, the same number of each site's rows, and `CHECKSUM TABLE` agrees on
/// every server; returns how long that took, or an error with each server's replicas.
pub async fn wait_converged(
    hub: &Offices,
    acked: &BTreeMap<String, u64>,
    timeout: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let servers = hub.servers();
        let rows: Vec<BTreeMap<String, u64>> =
            servers.iter().map(|(_, db)| rows_by_site(db)).collect();
        let complete = rows.iter().all(|have| {
            acked
                .iter()
                .all(|(site, want)| have.get(site).copied().unwrap_or(0) >= *want)
        }) && rows.windows(2).all(|w| w[0] == w[1]);
        if complete {
            let sums: Vec<String> = servers.iter().map(|(_, db)| checksum(db, TABLE)).collect();
            if !sums[0].is_empty() && sums.iter().all(|s| *s == sums[0]) {
                return Ok(started.elapsed());
            }
        }
        if started.elapsed() > timeout {
            let sums: Vec<String> = servers
                .iter()
                .map(|(site, db)| format!("{site} {}", checksum(db, TABLE)))
                .collect();
            let mut replicas = Vec::new();
            for (site, db) in &servers {
                for r in replica_statuses(db).await.unwrap_or_default() {
                    let col = |a: &str, b: &str| {
                        r.get(a).or_else(|| r.get(b)).cloned().unwrap_or_default()
                    };
                    replicas.push(format!(
                        "{site} '{}': IO {} SQL {} {:?} {:?}",
                        connection_name(&r),
                        col("Slave_IO_Running", "Replica_IO_Running"),
                        col("Slave_SQL_Running", "Replica_SQL_Running"),
                        col("Last_IO_Error", "Last_IO_Error"),
                        col("Last_SQL_Error", "Last_SQL_Error"),
                    ));
                }
            }
            bail!(
                "not converged within {timeout:?}: acknowledged {acked:?}; rows per server {:?}; checksums {}; replicas:\n  {}",
                servers
                    .iter()
                    .map(|(s, _)| *s)
                    .zip(&rows)
                    .collect::<Vec<_>>(),
                sums.join(", "),
                replicas.join("\n  ")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
