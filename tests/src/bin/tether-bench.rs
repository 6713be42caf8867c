//! `tether-bench`: the figures of `cargo xtask bench`, each beside its reference measured
//! in the same run on this machine: tunnel throughput against OpenSSH's `ssh -L` (same
//! cipher), detection times against ssh keepalives, memory against ssh + autossh.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::{Value, json};
use tether_harness::lab::{AgentMode, Lab, LabOptions};
use tether_harness::linksim::{LinkOptions, LinkSim};
use tether_harness::process::{Proc, RunAs, free_port};
use tether_harness::sshd::{Sshd, SshdOptions};

#[derive(Parser)]
struct Args {
    /// The release `tether` binary to measure.
    #[arg(long)]
    tether: PathBuf,
    /// Where to write the results.
    #[arg(long, default_value = "target/bench/results.json")]
    out: PathBuf,
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
}

fn me() -> RunAs {
    RunAs {
        name: String::new(),
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        switch: false,
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn wait_port(port: u16, timeout: Duration) -> Result<()> {
    tether_harness::wait_for(&format!("port {port}"), timeout, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
}

/// Bits per second received, one stream, `reverse` for download.
fn iperf(port: u16, seconds: u32, reverse: bool) -> Result<f64> {
    let mut cmd = Command::new("iperf3");
    cmd.args([
        "-c",
        "127.0.0.1",
        "-J",
        "-t",
        &seconds.to_string(),
        "-p",
        &port.to_string(),
    ]);
    if reverse {
        cmd.arg("-R");
    }
    let out = cmd.output().context("iperf3")?;
    let v: Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3 gave no result: {}", v["error"]))
}

fn ssh_args(sshd: &Sshd, known: &Path) -> Vec<String> {
    vec![
        "-N".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        format!("UserKnownHostsFile={}", known.display()),
        "-i".into(),
        sshd.device_key.display().to_string(),
        "-l".into(),
        sshd.user.clone(),
    ]
}

struct Throughput {
    up: f64,
    down: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut results = serde_json::Map::new();
    let dir = tempfile::tempdir()?;

    // 1. Throughput and memory while moving data: iperf3 through OpenSSH and through tether.
    let iperf_port = free_port()?;
    let _iperf = Proc::spawn(
        "iperf3 server",
        &me(),
        Command::new("iperf3").args(["-s", "-p", &iperf_port.to_string()]),
        &dir.path().join("iperf3.log"),
    )?;
    wait_port(iperf_port, Duration::from_secs(10))?;
    let listen_port = free_port()?;
    let sshd = Sshd::start(SshdOptions {
        permit_listen: format!("127.0.0.1:{listen_port}"),
        permit_open: format!("127.0.0.1:{iperf_port}"),
        client_alive_interval: None,
    })?;
    let known = dir.path().join("known_hosts");
    std::fs::write(
        &known,
        format!("[127.0.0.1]:{} {}\n", sshd.port, sshd.host_key),
    )?;

    let ssh_port = free_port()?;
    let ssh = Proc::spawn(
        "ssh -L",
        &me(),
        Command::new("ssh")
            .args(ssh_args(&sshd, &known))
            .args(["-c", "aes128-gcm@openssh.com", "-p", &sshd.port.to_string()])
            .arg("-L")
            .arg(format!("127.0.0.1:{ssh_port}:127.0.0.1:{iperf_port}"))
            .arg("127.0.0.1"),
        &dir.path().join("ssh.log"),
    )?;
    wait_port(ssh_port, Duration::from_secs(15))?;
    let openssh = Throughput {
        up: iperf(ssh_port, args.seconds, false)?,
        down: iperf(ssh_port, args.seconds, true)?,
    };
    drop(ssh);

    let tether_port = free_port()?;
    let config = bench_config(&sshd, dir.path(), tether_port, iperf_port, listen_port)?;
    let cfg_path = dir.path().join("tether.toml");
    std::fs::write(&cfg_path, toml::to_string(&config)?)?;
    let agent = Proc::spawn(
        "tether",
        &me(),
        Command::new(&args.tether)
            .arg("run")
            .arg("--config")
            .arg(&cfg_path),
        &dir.path().join("tether.log"),
    )?;
    let pid = agent.pid().context("tether has no pid")?;
    rt.block_on(wait_up(&config.status.socket))?;
    let (peak_tx, peak_rx) = std::sync::mpsc::channel();
    let sampler = std::thread::spawn(move || {
        let mut peak = 0;
        while peak_rx.recv_timeout(Duration::from_millis(100)).is_err() {
            peak = peak.max(rss_kib(pid).unwrap_or(0));
        }
        peak
    });
    let tether = Throughput {
        up: iperf(tether_port, args.seconds, false)?,
        down: iperf(tether_port, args.seconds, true)?,
    };
    let _ = peak_tx.send(());
    let moving_rss = sampler.join().unwrap_or(0);
    drop(agent);

    let gbit = |b: f64| (b / 1e9 * 100.0).round() / 100.0;
    let ratio = (tether.up / openssh.up).min(tether.down / openssh.down);
    results.insert("openssh_up_gbit_s".into(), json!(gbit(openssh.up)));
    results.insert("openssh_down_gbit_s".into(), json!(gbit(openssh.down)));
    results.insert("tether_up_gbit_s".into(), json!(gbit(tether.up)));
    results.insert("tether_down_gbit_s".into(), json!(gbit(tether.down)));
    results.insert(
        "tunnel_throughput_ratio_vs_openssh".into(),
        json!((ratio * 100.0).round() / 100.0),
    );
    results.insert("agent_rss_moving_data_kib".into(), json!(moving_rss));

    // 2. The recipe it replaces, idle: autossh + its ssh child.
    let auto_port = free_port()?;
    let autossh = Proc::spawn(
        "autossh",
        &me(),
        Command::new("autossh")
            .env("AUTOSSH_GATETIME", "0")
            .args(["-M", "0"])
            .args(ssh_args(&sshd, &known))
            .args([
                "-o",
                "ServerAliveInterval=15",
                "-o",
                "ServerAliveCountMax=3",
                "-p",
                &sshd.port.to_string(),
            ])
            .arg("-L")
            .arg(format!("127.0.0.1:{auto_port}:127.0.0.1:{iperf_port}"))
            .arg("127.0.0.1"),
        &dir.path().join("autossh.log"),
    )?;
    wait_port(auto_port, Duration::from_secs(15))?;
    let auto_pid = autossh.pid().context("autossh pid")?;
    let mut openssh_rss = rss_kib(auto_pid).unwrap_or(0);
    for child in tether_harness::fixture::descendants_of(auto_pid) {
        openssh_rss += rss_kib(child).unwrap_or(0);
    }
    drop(autossh);
    results.insert("openssh_rss_kib".into(), json!(openssh_rss));
    drop(sshd);

    // 3. The whole agent in the lab: steady memory, detection of a blackhole and a cut,
    //    and ssh's own keepalives against the same hub for reference.
    let lab_dir = dir.path().join("lab");
    let figures = rt.block_on(lab_figures(&args.tether, &lab_dir))?;
    results.extend(figures);

    let doc = Value::Object(results);
    if let Some(d) = args.out.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&doc)? + "\n")?;
    println!("{}", serde_json::to_string_pretty(&doc)?);
    println!("written to {}", args.out.display());
    Ok(())
}

async fn wait_up(socket: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(doc) = tether::status::query(socket, Duration::from_secs(1)).await
            && serde_json::from_str::<Value>(doc.trim()).is_ok_and(|d| d["tunnel"]["up"] == true)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the tunnel did not come up within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn bench_config(
    sshd: &Sshd,
    dir: &Path,
    local: u16,
    target: u16,
    listen: u16,
) -> Result<tether::config::Config> {
    use tether::config::{Addr, Cipher};
    let mut c = tether::config::Config::example();
    c.hub.host = "127.0.0.1".into();
    c.hub.port = sshd.port;
    c.hub.user = sshd.user.clone();
    c.hub.key_path = Some(sshd.device_key.clone());
    c.hub.host_key = Some(sshd.host_key.clone());
    c.hub.cipher = Cipher::Aes128Gcm;
    c.hub.compression = false;
    c.forwards.local_listen = Addr::new("127.0.0.1", local);
    c.forwards.local_target = Addr::new("127.0.0.1", target);
    c.forwards.remote_listen = Addr::new("127.0.0.1", listen);
    c.forwards.remote_target = Addr::new("127.0.0.1", target);
    c.mqtt.enabled = false;
    c.data.dir = dir.join("data");
    c.status.socket = dir.join("tether.sock");
    c.log.level = "warn".into();
    Ok(c)
}

async fn lab_figures(tether: &Path, dir: &Path) -> Result<serde_json::Map<String, Value>> {
    let mut out = serde_json::Map::new();
    let mut opts =
        LabOptions::office_link(dir.to_path_buf(), AgentMode::Binary(tether.to_path_buf()));
    opts.ready_timeout = Duration::from_secs(120);
    let lab = Lab::start(opts).await?;

    // ssh with the usual keepalive advice, through its own simulated link to the same hub.
    let sshd = lab.fixture.sshd();
    let known = dir.join("known_hosts");
    std::fs::write(
        &known,
        format!("[127.0.0.1]:{} {}\n", sshd.port, sshd.host_key),
    )?;
    let upstream: SocketAddr = format!("127.0.0.1:{}", sshd.port).parse()?;
    let ssh_link = LinkSim::start(
        tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        upstream,
        LinkOptions::default(),
    )
    .await?;
    let ssh_port = free_port()?;
    let mut ssh = Command::new("ssh")
        .args(ssh_args(sshd, &known))
        .args([
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=3",
        ])
        .args(["-p", &ssh_link.local_addr().port().to_string()])
        .arg("-L")
        .arg(format!(
            "127.0.0.1:{ssh_port}:127.0.0.1:{}",
            lab.fixture.hub_db().port
        ))
        .arg("127.0.0.1")
        .stderr(std::process::Stdio::null())
        .spawn()?;
    wait_port(ssh_port, Duration::from_secs(15))?;

    // Steady memory with every job running.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let pid = lab.agent_pid().context("agent pid")?;
    out.insert("agent_rss_kib".into(), json!(rss_kib(pid).unwrap_or(0)));

    let ssh_start = Instant::now();
    ssh_link.blackhole();
    let down = |d: &Value| d["tunnel"]["up"] == false;
    let at = Instant::now();
    lab.link.blackhole();
    lab.wait_state("the blackhole noticed", Duration::from_secs(30), down)
        .await?;
    out.insert("blackhole_detect_s".into(), json!(round1(at.elapsed())));
    lab.link.heal();
    lab.wait_state("up again", Duration::from_secs(90), |d| {
        d["tunnel"]["up"] == true
    })
    .await?;
    lab.wait_verdict("in_sync", Duration::from_secs(90)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let at = Instant::now();
    lab.link.cut();
    lab.wait_state("the cut noticed", Duration::from_secs(30), down)
        .await?;
    out.insert("cut_detect_s".into(), json!(round1(at.elapsed())));
    lab.link.heal();

    let deadline = Instant::now() + Duration::from_secs(180);
    while ssh.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = ssh.kill();
            bail!("ssh did not notice the blackhole within 180 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out.insert(
        "ssh_keepalive_blackhole_detect_s".into(),
        json!(round1(ssh_start.elapsed())),
    );
    out.insert("autossh_default_poll_s".into(), json!(600));
    Ok(out)
}

fn round1(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}
