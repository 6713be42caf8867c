//! The two-site lab: both databases (MariaDB or MySQL), the hub's sshd, the broker, the
//! link simulator in front of the hub, the agent, and two-way replication through the
//! agent's tunnel, set up from the SQL `tether enroll` prints. Used by `cargo xtask lab`
//! and by the end-to-end tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio_util::sync::CancellationToken;

use crate::db::{DbServer, Family};
use crate::fixture::{Fixture, FixtureOptions};
use crate::linksim::{LinkOptions, LinkSim};
use crate::mosquitto::Mosquitto;
use crate::process::{Proc, RunAs, free_port};
use crate::sshd::Sshd;

/// How the agent runs.
#[derive(Debug, Clone)]
pub enum AgentMode {
    /// As a task of this process (tests).
    InProcess,
    /// As its own process from this binary (the lab): it can be killed and restarted.
    Binary(PathBuf),
}

/// Lab settings.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Where the config, sockets and lab.json go.
    pub dir: PathBuf,
    /// The office link: bytes per second each way (128 kbit/s = 16000).
    pub rate: Option<u64>,
    /// Round-trip latency added by the link.
    pub delay: Duration,
    pub agent: AgentMode,
    /// Bound on reaching `in_sync` after start.
    pub ready_timeout: Duration,
    /// Extra environment for a binary agent (`RUST_LOG=trace`, for example).
    pub agent_env: Vec<(String, String)>,
    /// The family both sites' databases run.
    pub family: Family,
}

impl LabOptions {
    /// The office link the lab stands for: 128 kbit/s, 300 ms.
    pub fn office_link(dir: PathBuf, agent: AgentMode) -> Self {
        LabOptions {
            dir,
            rate: Some(16_000),
            delay: Duration::from_millis(300),
            agent,
            ready_timeout: Duration::from_secs(90),
            agent_env: Vec::new(),
            family: Family::MariaDb,
        }
    }
}

/// Binds an in-process agent's local forward port, which the harness held until a moment
/// ago. Should something else have it in that moment, what holds it is printed (for the
/// record) and the bind is tried again for up to 5 s before giving up with the same.
async fn bind_local(port: u16) -> Result<tokio::net::TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => return Ok(l),
            Err(e) => {
                let holders = crate::process::sockets_on(port);
                if Instant::now() >= deadline {
                    anyhow::bail!(
                        "cannot bind the agent's local port {port}: {e}; sockets on it now:\n{holders}"
                    );
                }
                eprintln!(
                    "harness: the agent's local port {port} is taken ({e}), trying again; sockets on it:\n{holders}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A running agent, in this process or as its own; dropping it stops it (a task is
/// cancelled, a process stopped).
pub enum Agent {
    Task {
        /// Cancels the agent when dropped.
        stop: tokio_util::sync::DropGuard,
        task: tokio::task::JoinHandle<Result<()>>,
    },
    Process(Proc),
}

impl Agent {
    /// Starts an agent with `config` (already written to `config_path` for a binary
    /// agent), its local forward on `local_port`; a binary agent logs to `log`.
    pub async fn start(
        mode: &AgentMode,
        config: &tether::config::Config,
        config_path: &Path,
        local_port: u16,
        env: &[(String, String)],
        log: &Path,
    ) -> Result<Agent> {
        Ok(match mode {
            AgentMode::InProcess => {
                let listener = bind_local(local_port).await?;
                let stop = CancellationToken::new();
                let task = tokio::spawn(tether::app::run(config.clone(), listener, stop.clone()));
                Agent::Task {
                    stop: stop.drop_guard(),
                    task,
                }
            }
            AgentMode::Binary(bin) => {
                let me = RunAs {
                    name: String::new(),
                    uid: nix::unistd::geteuid().as_raw(),
                    gid: nix::unistd::getegid().as_raw(),
                    switch: false,
                };
                let mut cmd = std::process::Command::new(bin);
                cmd.arg("run").arg("--config").arg(config_path);
                cmd.envs(env.iter().map(|(k, v)| (k, v)));
                Agent::Process(Proc::spawn("tether agent", &me, &mut cmd, log)?)
            }
        })
    }

    /// Stops it (SIGTERM or cancel), bounded.
    pub async fn stop(self) {
        match self {
            Agent::Task { stop, task } => {
                drop(stop);
                let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
            }
            Agent::Process(mut p) => {
                tokio::task::spawn_blocking(move || p.stop()).await.ok();
            }
        }
    }

    /// An error if a binary agent has exited on its own.
    pub fn check_alive(&mut self) -> Result<()> {
        match self {
            Agent::Process(p) => p.check_alive(),
            Agent::Task { .. } => Ok(()),
        }
    }
}

/// A running lab; dropping it tears everything down.
pub struct Lab {
    pub fixture: Fixture,
    pub link: LinkSim,
    pub config: tether::config::Config,
    pub config_path: PathBuf,
    pub control_socket: PathBuf,
    pub local_port: u16,
    agent: Option<Agent>,
    opts: LabOptions,
}

impl Lab {
    /// The lab in sync: [`Lab::start_unreplicated`], then replication set up both ways
    /// from the SQL `tether enroll` prints.
    pub async fn start(opts: LabOptions) -> Result<Lab> {
        let family = opts.family;
        let lab = Lab::start_unreplicated(opts, FixtureOptions::of(family)).await?;
        lab.setup_replication().await?;
        let ready = lab.opts.ready_timeout;
        lab.wait_verdict("in_sync", ready).await?;
        Ok(lab)
    }

    /// An unconfigured pair, where `tether setup` starts: both servers bare (no
    /// replication or agent account; MariaDB's own defaults for server_id,
    /// auto_increment, GTID domain and binlog format), the link, and the agent with its
    /// tunnel up; the database passwords in its config are not known to either server.
    pub async fn start_bare(opts: LabOptions) -> Result<Lab> {
        let fixture = FixtureOptions {
            bare: true,
            ..FixtureOptions::of(opts.family)
        };
        Lab::start_unreplicated(opts, fixture).await
    }

    /// Restarts the agent with the config file as it is now (as a service manager would
    /// after `tether setup` wrote its passwords there).
    pub async fn restart_agent_from_file(&mut self) -> Result<()> {
        self.config =
            tether::config::Config::load(&self.config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
        self.start_agent().await
    }

    /// Plays the service manager while `done` runs (`tether setup`, which asks for the
    /// agent to be restarted once it wrote the agent's passwords): whenever the config
    /// file changes, `on_change` sees it first, then the agent restarts with it. Returns
    /// what `done` returned.
    pub async fn restarting_on_config_change<T>(
        &mut self,
        done: impl std::future::Future<Output = T>,
        mut on_change: impl FnMut(&Path),
    ) -> Result<T> {
        tokio::pin!(done);
        let mut seen = std::fs::read(&self.config_path)?;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                out = &mut done => return Ok(out),
                _ = tick.tick() => {
                    let now = std::fs::read(&self.config_path).unwrap_or_default();
                    if now != seen && !now.is_empty() {
                        on_change(&self.config_path);
                        self.restart_agent_from_file().await?;
                        seen = std::fs::read(&self.config_path)?;
                    }
                }
            }
        }
    }

    /// Servers started as `fixture` says, the link and the agent, once the tunnel is up;
    /// replication is not set up.
    pub async fn start_unreplicated(opts: LabOptions, fixture: FixtureOptions) -> Result<Lab> {
        std::fs::create_dir_all(&opts.dir)
            .with_context(|| format!("cannot create {}", opts.dir.display()))?;
        let fixture = tokio::task::spawn_blocking(move || Fixture::start(fixture)).await??;
        let control_socket = opts.dir.join("link.sock");
        let upstream: SocketAddr = format!("127.0.0.1:{}", fixture.sshd().port).parse()?;
        let link = LinkSim::start(
            tokio::net::TcpListener::bind("127.0.0.1:0").await?,
            upstream,
            LinkOptions {
                rate: opts.rate,
                delay: opts.delay,
                control_socket: Some(control_socket.clone()),
                ..LinkOptions::default()
            },
        )
        .await?;
        let local_port = free_port()?;
        let config = agent_config(&fixture, &link, local_port, &opts.dir)?;
        let config_path = opts.dir.join("tether.toml");
        std::fs::write(&config_path, toml::to_string(&config)?)?;
        let mut lab = Lab {
            fixture,
            link,
            config,
            config_path,
            control_socket,
            local_port,
            agent: None,
            opts,
        };
        lab.start_agent().await?;
        lab.wait_tunnel_up(Duration::from_secs(60)).await?;
        Ok(lab)
    }

    /// Starts (or restarts) the agent with `self.config` (written to `config_path` first,
    /// so a changed config reaches a binary agent too).
    pub async fn start_agent(&mut self) -> Result<()> {
        self.stop_agent().await;
        std::fs::write(&self.config_path, toml::to_string(&self.config)?)?;
        let agent = Agent::start(
            &self.opts.agent,
            &self.config,
            &self.config_path,
            self.local_port,
            &self.opts.agent_env,
            &self.opts.dir.join("agent.log"),
        )
        .await?;
        self.agent = Some(agent);
        Ok(())
    }

    /// Stops the agent (SIGTERM or cancel), bounded.
    pub async fn stop_agent(&mut self) {
        if let Some(agent) = self.agent.take() {
            agent.stop().await;
        }
    }

    /// SIGKILL to a binary agent, no goodbye (crash tests); an in-process agent is
    /// aborted.
    pub fn kill_agent_hard(&mut self) {
        match self.agent.take() {
            Some(Agent::Process(mut p)) => p.kill_hard(),
            Some(Agent::Task { task, .. }) => task.abort(),
            None => {}
        }
    }

    /// An error if a binary agent has exited on its own.
    pub fn check_agent_alive(&mut self) -> Result<()> {
        match &mut self.agent {
            Some(agent) => agent.check_alive(),
            None => Ok(()),
        }
    }

    /// The agent process: for a binary agent, the child of `tether run` (the launcher),
    /// or the launcher itself in the moment between two children.
    pub fn agent_pid(&self) -> Option<u32> {
        match &self.agent {
            Some(Agent::Process(p)) => {
                let launcher = p.pid()?;
                Some(
                    crate::fixture::descendants_of(launcher)
                        .into_iter()
                        .next()
                        .unwrap_or(launcher),
                )
            }
            _ => Some(std::process::id()),
        }
    }

    /// The launcher (`tether run`) of a binary agent.
    pub fn launcher_pid(&self) -> Option<u32> {
        match &self.agent {
            Some(Agent::Process(p)) => p.pid(),
            _ => None,
        }
    }

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
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = serde_json::Value::Null;
        loop {
            if let Ok(doc) = self.state().await {
                if pred(&doc) {
                    return Ok(doc);
                }
                last = doc;
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("timed out after {timeout:?} waiting for {what}; last state: {last:#}");
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

    async fn wait_tunnel_up(&self, timeout: Duration) -> Result<()> {
        self.wait_state("the tunnel up", timeout, |d| d["tunnel"]["up"] == true)
            .await?;
        Ok(())
    }

    /// Points each database at the other through the tunnel and starts replication, with
    /// the statements `tether enroll` prints for this box's config (the office server
    /// asked for its family, as `office_db.family = "auto"` does), verbatim but for the
    /// password placeholder.
    pub async fn setup_replication(&self) -> Result<()> {
        let office = self.fixture.office_db();
        let hub = self.fixture.hub_db();
        let dialect = tether::enroll::setup_dialect(&self.config).await?;
        let printed = tether::hubkit::replication_setup_for(&dialect, &self.config);
        let (office_sql, hub_sql) = enroll_blocks(&printed)?;
        // The office replicates from the hub with the hub's replication account, and back.
        let office_sql = office_sql.replace("{{REPL_PASSWORD}}", &hub.repl_password);
        let hub_sql = hub_sql.replace("{{REPL_PASSWORD}}", &office.repl_password);
        let (o, h) = (office.sql_clone(), hub.sql_clone());
        tokio::task::spawn_blocking(move || -> Result<()> {
            o(&office_sql)?;
            h(&hub_sql)?;
            Ok(())
        })
        .await??;
        Ok(())
    }

    /// The document outside scripts read (target/lab/lab.json).
    pub fn lab_json(&self) -> serde_json::Value {
        let db = |d: &DbServer| {
            serde_json::json!({
                "host": d.host, "port": d.port, "user": "root",
                "password": d.root_password, "database": "app",
                "socket": d.socket,
            })
        };
        let f = &self.fixture;
        serde_json::json!({
            "ready": true,
            "site": self.config.site.id,
            "family": f.office_db().family.key(),
            "office_db": db(f.office_db()),
            "hub_db": db(f.hub_db()),
            "hub_ssh": {"host": f.sshd().host, "port": f.sshd().port, "user": f.sshd().user,
                        "host_key": f.sshd().host_key, "log": f.sshd().log},
            "mqtt": {"host": f.broker().host, "port": f.broker().port},
            "link": {"listen_port": self.link.local_addr().port(), "control": self.control_socket,
                     "rate": self.opts.rate, "delay_ms": self.opts.delay.as_millis() as u64},
            "forwards": {"local_listen_port": self.local_port, "remote_listen_port": f.remote_listen_port},
            "web": {"url": self.web_url()},
            "agent": {"pid": self.agent_pid(), "config": self.config_path,
                      "status_socket": self.config.status.socket,
                      "board_socket": self.config.board.sim_socket},
        })
    }

    /// The status page's address (the lab always configures it on a loopback port).
    pub fn web_url(&self) -> Option<String> {
        self.config
            .web
            .listen
            .as_ref()
            .map(|a| format!("http://{a}/"))
    }

    pub fn dir(&self) -> &Path {
        &self.opts.dir
    }
}

/// The SQL that points a database of `family` at its peer through `port` on loopback and
/// starts replication: exactly the hub kit's setup helper.
pub fn change_master(family: Family, port: u16, password: &str) -> String {
    tether::hubkit::replication_setup_sql(
        &tether::dialect::Dialect::current(family),
        None,
        "127.0.0.1",
        port,
        "repl",
        password,
    )
}

/// The office's and the hub's statements in the setup `tether enroll` prints: the lines
/// under each heading up to the next blank line, comments left out.
pub fn enroll_blocks(printed: &str) -> Result<(String, String)> {
    let block = |heading: &str| -> Result<String> {
        let after = printed
            .split_once(heading)
            .with_context(|| format!("`{heading}` is not in the printed setup:\n{printed}"))?
            .1;
        let sql: Vec<&str> = after
            .trim_start_matches('\n')
            .lines()
            .take_while(|l| !l.trim().is_empty())
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect();
        if sql.is_empty() {
            bail!("no statements under `{heading}`:\n{printed}");
        }
        Ok(sql.join("\n"))
    };
    Ok((
        block(tether::hubkit::OFFICE_SETUP_HEADING)?,
        block(tether::hubkit::HUB_SETUP_HEADING)?,
    ))
}

/// The agent's configuration for this lab.
fn agent_config(
    f: &Fixture,
    link: &LinkSim,
    local_port: u16,
    dir: &Path,
) -> Result<tether::config::Config> {
    agent_config_for(f, link.local_addr(), local_port, dir)
}

/// An agent configuration for a fixture, reaching the hub's sshd at `hub` (directly or
/// through a link simulator), with its local forward on `local_port`.
pub fn agent_config_for(
    f: &Fixture,
    hub: SocketAddr,
    local_port: u16,
    dir: &Path,
) -> Result<tether::config::Config> {
    agent_config_between(
        AgentEnds {
            sshd: f.sshd(),
            hub_db: f.hub_db(),
            office_db: f.office_db(),
            broker: f.broker.as_ref(),
            remote_listen_port: f.remote_listen_port,
        },
        hub,
        local_port,
        dir,
    )
}

/// What one agent connects: the hub's sshd and database, its office's database, the
/// broker (if any) and the hub port its remote forward listens on.
#[derive(Clone, Copy)]
pub struct AgentEnds<'a> {
    pub sshd: &'a Sshd,
    pub hub_db: &'a DbServer,
    pub office_db: &'a DbServer,
    pub broker: Option<&'a Mosquitto>,
    pub remote_listen_port: u16,
}

/// An agent configuration between `ends`, reaching the hub's sshd at `hub`, with its
/// local forward on `local_port`, its files in `dir`.
pub fn agent_config_between(
    ends: AgentEnds<'_>,
    hub: SocketAddr,
    local_port: u16,
    dir: &Path,
) -> Result<tether::config::Config> {
    use tether::config::{Addr, BoardBackend};
    let mut c = tether::config::Config::example();
    let sshd = ends.sshd;
    c.site.id = "office".into();
    c.site.name = Some("Lab office".into());
    c.hub.host = "127.0.0.1".into();
    c.hub.port = hub.port();
    c.hub.user = sshd.user.clone();
    c.hub.key_path = Some(sshd.device_key.clone());
    c.hub.host_key = Some(sshd.host_key.clone());
    c.forwards.remote_listen = Addr::new("127.0.0.1", ends.remote_listen_port);
    c.forwards.remote_target = Addr::new("127.0.0.1", ends.office_db.port);
    c.forwards.local_listen = Addr::new("127.0.0.1", local_port);
    c.forwards.local_target = Addr::new("127.0.0.1", ends.hub_db.port);
    c.office_db.host = "127.0.0.1".into();
    c.office_db.port = ends.office_db.port;
    c.office_db.password = tether::secret::Secret::new(ends.office_db.agent_password.clone());
    c.hub_db.password = tether::secret::Secret::new(ends.hub_db.agent_password.clone());
    if let Some(b) = ends.broker {
        c.mqtt.host = b.host.clone();
        c.mqtt.port = b.port;
    }
    c.board.backend = BoardBackend::Sim;
    c.board.sim_socket = Some(dir.join("board.sock"));
    c.data.dir = dir.join("data");
    c.status.socket = dir.join("tether.sock");
    c.timings.settle = Duration::from_secs(2);
    // The status page on a free loopback port (the lab prints its address).
    c.web.listen = Some(Addr::new("127.0.0.1", free_port()?));
    // Check it the way the agent will.
    tether::config::Config::parse(&toml::to_string(&c)?, dir.join("tether.toml"))
        .map_err(|e| anyhow::anyhow!("the lab wrote a bad config: {e}"))
}
