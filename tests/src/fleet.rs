//! A fleet on one machine: N agents (each with its own device key, site id and hub port)
//! against one hub sshd and one broker, every forward ending at one shared pair of
//! MariaDB servers that replicate with each other directly. Measures the time to
//! all-green, the sshd's and broker's CPU and memory per site, and the time to
//! all-green again after the hub's sshd restarts and ends every session.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::db::{DbOptions, DbServer, Family};
use crate::fixture::Fixture;
use crate::lab::{agent_config_for, change_master};
use crate::mariadb::Site;
use crate::mosquitto::Mosquitto;
use crate::process::{Proc, RunAs, free_port};
use crate::sshd::{Sshd, SshdOptions};

#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub sites: usize,
    pub dir: PathBuf,
    pub tether: PathBuf,
    /// Bound on every agent reaching `in_sync`.
    pub green_within: Duration,
    /// How long CPU is measured in the steady state.
    pub steady: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub processes: usize,
    pub cpu_pct: f64,
    /// Proportional set size: shared pages split between the processes sharing them.
    pub pss_kb: u64,
    pub cpu_pct_per_site: f64,
    pub pss_kb_per_site: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    pub sites: usize,
    pub all_green_after_start_s: f64,
    pub slowest_site_s: f64,
    pub steady_window_s: f64,
    pub sshd: Usage,
    pub broker: Usage,
    pub agent_rss_kb_mean: f64,
    pub all_green_after_sshd_restart_s: f64,
}

fn ticks_and_pss(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based), so 11 and 12.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // PSS: shared pages (the sshd binary and libraries in every session) counted once
    // in all, not once per process as RSS would.
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let pss = rollup
        .lines()
        .find(|l| l.starts_with("Pss:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((ticks, pss))
}

/// CPU (percent of one core) and memory (PSS) of a set of processes over `window`.
async fn usage(pids: impl Fn() -> Vec<u32>, window: Duration, sites: usize) -> Usage {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let before: Vec<(u32, u64)> = pids()
        .into_iter()
        .filter_map(|p| Some((p, ticks_and_pss(p)?.0)))
        .collect();
    tokio::time::sleep(window).await;
    let mut ticks = 0;
    let mut rss = 0;
    let now = pids();
    for p in &now {
        if let Some((t, r)) = ticks_and_pss(*p) {
            let was = before.iter().find(|(q, _)| q == p).map_or(t, |(_, t0)| *t0);
            ticks += t.saturating_sub(was);
            rss += r;
        }
    }
    let cpu = ticks as f64 / hz / window.as_secs_f64() * 100.0;
    Usage {
        processes: now.len(),
        cpu_pct: cpu,
        pss_kb: rss,
        cpu_pct_per_site: cpu / sites as f64,
        pss_kb_per_site: rss as f64 / sites as f64,
    }
}

struct Member {
    socket: PathBuf,
    agent: Proc,
}

async fn state(socket: &Path) -> Option<serde_json::Value> {
    let doc = tether::status::query(socket, Duration::from_secs(2))
        .await
        .ok()?;
    serde_json::from_str(doc.trim()).ok()
}

fn reconnects(doc: &serde_json::Value) -> u64 {
    doc["tunnel"]["reconnects"].as_u64().unwrap_or(0)
}

/// Waits until every site says `in_sync` with its tunnel up and `fresh(site, state)`
/// holds; returns the time since `started` and the slowest site's.
async fn all_green(
    sites: &mut [Member],
    started: Instant,
    within: Duration,
    fresh: impl Fn(usize, &serde_json::Value) -> bool,
) -> Result<(Duration, Duration)> {
    let mut green: Vec<Option<Duration>> = vec![None; sites.len()];
    loop {
        for (i, s) in sites.iter_mut().enumerate() {
            if green[i].is_none()
                && state(&s.socket).await.is_some_and(|d| {
                    d["verdict"] == "in_sync" && d["tunnel"]["up"] == true && fresh(i, &d)
                })
            {
                green[i] = Some(started.elapsed());
            }
            s.agent.check_alive()?;
        }
        if green.iter().all(Option::is_some) {
            let slowest = green.iter().flatten().max().copied().unwrap_or_default();
            return Ok((started.elapsed(), slowest));
        }
        if started.elapsed() > within {
            let missing: Vec<usize> = (0..sites.len()).filter(|i| green[*i].is_none()).collect();
            bail!(
                "{} of {} sites not in_sync within {within:?} (sites {missing:?})",
                missing.len(),
                sites.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn run(opts: FleetOptions) -> Result<FleetReport> {
    std::fs::create_dir_all(&opts.dir)?;
    let n = opts.sites;
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect::<Result<_>>()?;
    let listens: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let (hub, office, broker) = std::thread::scope(|s| {
        let hub = s.spawn(|| DbServer::start(DbOptions::new(Family::MariaDb, Site::Hub)));
        let office = s.spawn(|| DbServer::start(DbOptions::new(Family::MariaDb, Site::Office)));
        let broker = s.spawn(|| Mosquitto::start(&[]));
        (
            hub.join().expect("hub DB thread"),
            office.join().expect("office DB thread"),
            broker.join().expect("broker thread"),
        )
    });
    let (hub, office, broker) = (hub?, office?, broker?);
    let sshd = Sshd::start(SshdOptions {
        permit_listen: listens.join(" "),
        permit_open: format!("127.0.0.1:{}", hub.port),
        client_alive_interval: None,
    })?;
    // The two databases replicate with each other directly; every site's forwards end
    // at them, so each agent sees both directions running.
    hub.sql(&change_master(
        hub.family,
        office.port,
        &office.repl_password,
    ))?;
    office.sql(&change_master(office.family, hub.port, &hub.repl_password))?;
    let mut fixture = Fixture {
        hub_db: Some(hub),
        office_db: Some(office),
        sshd: Some(sshd),
        broker: Some(broker),
        remote_listen_port: ports[0],
        started_in: Duration::ZERO,
    };
    let hub_addr = format!("127.0.0.1:{}", fixture.sshd().port).parse()?;
    let mut keys = Vec::new();
    let mut configs = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let dir = opts.dir.join(format!("site-{i:03}"));
        std::fs::create_dir_all(&dir)?;
        let key = dir.join("device_key");
        let out = Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                &format!("site-{i}"),
                "-f",
            ])
            .arg(&key)
            .output()
            .context("ssh-keygen")?;
        if !out.status.success() {
            bail!("ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
        }
        let public = std::fs::read_to_string(key.with_extension("pub"))?;
        keys.push((public.trim().to_owned(), format!("127.0.0.1:{port}")));
        let mut c = agent_config_for(&fixture, hub_addr, free_port()?, &dir)?;
        c.site.id = format!("site-{i:03}");
        c.site.name = Some(format!("Site {i}"));
        c.hub.key_path = Some(key);
        c.forwards.remote_listen = tether::config::Addr::new("127.0.0.1", *port);
        c.board.backend = tether::config::BoardBackend::None;
        c.board.sim_socket = None;
        let path = dir.join("tether.toml");
        std::fs::write(&path, toml::to_string(&c)?)?;
        configs.push((path, c.status.socket.clone(), dir));
    }
    let hub_db_port = fixture.hub_db().port;
    fixture
        .sshd()
        .authorize_sites(&keys, &format!("127.0.0.1:{hub_db_port}"))?;
    let me = RunAs {
        name: String::new(),
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        switch: false,
    };
    let started = Instant::now();
    let mut sites = Vec::new();
    for (path, socket, dir) in &configs {
        let mut cmd = Command::new(&opts.tether);
        cmd.arg("run").arg("--config").arg(path);
        let agent = Proc::spawn("tether agent", &me, &mut cmd, &dir.join("agent.log"))?;
        sites.push(Member {
            socket: socket.clone(),
            agent,
        });
    }
    let (_, slowest) = all_green(&mut sites, started, opts.green_within, |_, _| true).await?;
    let all_green_after_start = started.elapsed();
    eprintln!("fleet: {n} sites in_sync {all_green_after_start:.1?} after starting them");

    let sshd_usage = {
        let sshd = fixture.sshd();
        usage(|| sshd.process_tree(), opts.steady, n).await
    };
    let broker_pid = fixture.broker().pid();
    let broker_usage = usage(|| broker_pid.into_iter().collect(), opts.steady, n).await;
    // One agent per box: its whole resident set is what a box pays (PSS would split the
    // binary's pages between the fleet's agents on this one machine).
    // The agent is the launcher's child (`tether run` supervises it).
    let agent_rss: Vec<u64> = sites
        .iter()
        .filter_map(|s| {
            let launcher = s.agent.pid()?;
            let agent = crate::fixture::descendants_of(launcher)
                .into_iter()
                .next()?;
            crate::process::rss_kib(agent)
        })
        .collect();
    let agent_rss_mean = agent_rss.iter().sum::<u64>() as f64 / agent_rss.len().max(1) as f64;

    let mut before = Vec::new();
    for s in &sites {
        before.push(state(&s.socket).await.map_or(0, |d| reconnects(&d)));
    }
    let restarted = Instant::now();
    let sshd = fixture.sshd.as_mut().context("no sshd")?;
    tokio::task::block_in_place(|| sshd.restart_with_sessions())?;
    // Green again means reconnected: every site's tunnel is a new session.
    all_green(&mut sites, restarted, opts.green_within, |i, d| {
        reconnects(d) > before[i]
    })
    .await?;
    let after_restart = restarted.elapsed();
    eprintln!("fleet: all {n} in_sync again {after_restart:.1?} after the hub sshd restart");
    let report = FleetReport {
        sites: n,
        all_green_after_start_s: all_green_after_start.as_secs_f64(),
        slowest_site_s: slowest.as_secs_f64(),
        steady_window_s: opts.steady.as_secs_f64(),
        sshd: sshd_usage,
        broker: broker_usage,
        agent_rss_kb_mean: agent_rss_mean,
        all_green_after_sshd_restart_s: after_restart.as_secs_f64(),
    };
    std::fs::write(
        opts.dir.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    for mut s in sites {
        tokio::task::spawn_blocking(move || s.agent.stop()).await?;
    }
    drop(fixture);
    Ok(report)
}
