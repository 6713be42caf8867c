//! `tether-bench`: the figures of `cargo xtask bench`, each beside its reference measured
//! in the same run on this machine: tunnel throughput against OpenSSH's `ssh -L` (same
//! cipher), detection times against ssh keepalives, memory against ssh + autossh,
//! replication's resume against MariaDB's and MySQL's own defaults.

#[path = "tether-bench/seed.rs"]
mod seed;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::{Value, json};
use tether_harness::db::Family;
use tether_harness::lab::{AgentMode, Lab, LabOptions};
use tether_harness::linksim::{LinkOptions, LinkSim};
use tether_harness::process::{Proc, RunAs, free_port, pss_kib, rss_kib};
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
    /// Interleaved iperf3 rounds per direction and tunnel in the throughput comparison.
    #[arg(long, default_value_t = 9)]
    rounds: usize,
    /// Run only one measurement and merge its keys into `--out`: `tunnel` (throughput
    /// and memory against OpenSSH, about three minutes), `status-page`, `resume-mysql`
    /// (the MySQL resume beside MySQL's defaults), or, to find where
    /// time and bytes go, `resume` (five 10 s cuts with the servers' timelines) and `wire`
    /// (the wire-bytes workload with tether's settings, split by direction). `wire` runs
    /// the SQL in `TETHER_BENCH_WIRE_SQL`, if set, on both servers first; `seed` (the
    /// office's first copy against `mariadb-dump | gzip -6` over ssh, about six minutes).
    #[arg(long)]
    only: Option<String>,
}

fn me() -> RunAs {
    RunAs {
        name: String::new(),
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        switch: false,
    }
}

/// Waits until something listens on the port, without connecting to it (a stray
/// connection would take iperf3's one test slot).
fn wait_port(port: u16, timeout: Duration) -> Result<()> {
    tether_harness::wait_for(&format!("a listener on port {port}"), timeout, || {
        listening(port)
    })
}

fn listening(port: u16) -> bool {
    let want = format!(":{port:04X} ");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines().any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() > 3 && format!("{} ", cols[1]).ends_with(&want) && cols[3] == "0A"
            })
        })
    })
}

/// Bits per second received, one stream, `reverse` for download. The server takes one
/// test at a time and notices the end of the last one only when its connections have
/// closed (through a tunnel, a moment later): a busy answer is asked again, a few times.
fn iperf(port: u16, seconds: u32, reverse: bool) -> Result<f64> {
    let mut tries = 0;
    loop {
        match iperf_once(port, seconds, reverse) {
            Err(e) if tries < 10 && format!("{e:#}").contains("busy") => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

fn iperf_once(port: u16, seconds: u32, reverse: bool) -> Result<f64> {
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
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
    // The in-process tunnel's warnings, kept beside the results.
    let log = args.out.with_extension("log");
    if let Some(d) = log.parent() {
        std::fs::create_dir_all(d)?;
    }
    tracing_subscriber::fmt()
        .with_writer(std::sync::Mutex::new(std::fs::File::create(&log)?))
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_ansi(false)
        .init();
    let only_tunnel = match args.only.as_deref() {
        None => false,
        Some("tunnel") => true,
        Some("status-page") => {
            let figures = rt.block_on(status_page_rss(&args.tether, &dir.path().join("lab")))?;
            return merge(&args.out, figures);
        }
        Some("wire") => {
            let figures = rt.block_on(wire_only(&args.tether, &dir.path().join("lab")))?;
            return merge(&args.out, figures);
        }
        Some("seed") => {
            let figures = rt.block_on(seed::figures(&args.tether, &dir.path().join("lab-seed")))?;
            return merge(&args.out, figures);
        }
        Some("resume-mysql") => {
            let figures = rt.block_on(mysql_resume(&args.tether, &dir.path().join("lab-mysql")))?;
            return merge(&args.out, figures);
        }
        Some("resume") => {
            let keep = args.out.with_file_name("resume-agent.log");
            let figures = rt.block_on(resume_only(&args.tether, &dir.path().join("lab"), &keep))?;
            return merge(&args.out, figures);
        }
        Some(other) => {
            bail!(
                "--only {other}: the selectable measurements are tunnel, resume, resume-mysql, wire, seed and status-page"
            )
        }
    };
    // 0. MQTT's steady-state traffic, in the background while the rest runs (it is idle
    //    traffic: a busy machine does not change its bytes).
    let mqtt = (!only_tunnel).then(|| rt.spawn(mqtt_bytes()));

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
    wait_port(ssh_port, Duration::from_secs(15)).context("ssh -L")?;

    // tether's tunnel alone (no replication tasks, which would dial the forward every
    // second), on the agent's own runtime flavour: one current-thread runtime.
    let tether_port = free_port()?;
    let settings = tunnel_only(&sshd, iperf_port, listen_port)?;
    let stop = tokio_util::sync::CancellationToken::new();
    let (up_tx, up_rx) = std::sync::mpsc::channel();
    let tunnel = {
        let stop = stop.clone();
        std::thread::spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", tether_port)).await?;
                let (tx, mut rx) = tokio::sync::mpsc::channel(64);
                let (_ctx, crx) = tokio::sync::mpsc::channel(1);
                let run = tokio::spawn(tether::tunnel::run(
                    std::sync::Arc::new(settings),
                    listener,
                    tx,
                    crx,
                    stop,
                ));
                while let Some(ev) = rx.recv().await {
                    if ev == tether::events::TunnelEvent::Up {
                        let _ = up_tx.send(());
                    }
                }
                let _ = run.await;
                Ok(())
            })
        })
    };
    up_rx
        .recv_timeout(Duration::from_secs(20))
        .context("tether's tunnel did not come up")?;
    // The probe at connect went through the forward to iperf3, which took it for a client;
    // let it time out (1 s) before measuring.
    std::thread::sleep(Duration::from_millis(2500));
    let rss_before = rss_kib(std::process::id()).unwrap_or(0);
    // Interleaved rounds: in each, both tunnels back to back per direction (which goes
    // first alternates), so a load that comes and goes on the machine falls on a pair
    // alike. The figure is the median of the pairs' ratios.
    let mut runs: [Vec<f64>; 4] = Default::default();
    let mut cpu: [Vec<(f64, f64)>; 4] = Default::default();
    let kinds = [
        (ssh_port, false, "through ssh -L, upload"),
        (tether_port, false, "through tether, upload"),
        (ssh_port, true, "through ssh -L, download"),
        (tether_port, true, "through tether, download"),
    ];
    let sshd_pids = || {
        let root = sshd.pid().unwrap_or(0);
        let mut v = tether_harness::fixture::descendants_of(root);
        v.push(root);
        v
    };
    for round in 0..args.rounds {
        let order: [usize; 4] = if round % 2 == 0 {
            [0, 1, 2, 3]
        } else {
            [1, 0, 3, 2]
        };
        for i in order {
            let (port, reverse, what) = kinds[i];
            let client = [if i % 2 == 0 {
                ssh.pid().unwrap_or(0)
            } else {
                std::process::id()
            }];
            let (hub0, client0) = (
                tether_harness::process::cpu_seconds(&sshd_pids()),
                tether_harness::process::cpu_seconds(&client),
            );
            let bps = iperf(port, args.seconds, reverse)
                .with_context(|| format!("{what}, round {round}"))?;
            let gb = bps * f64::from(args.seconds) / 8e9;
            let hub_cpu = (tether_harness::process::cpu_seconds(&sshd_pids()) - hub0) / gb;
            let client_cpu = (tether_harness::process::cpu_seconds(&client) - client0) / gb;
            eprintln!(
                "{what}: {:.2} Gbit/s, CPU seconds a GB: sshd {hub_cpu:.3}, client {client_cpu:.3}",
                bps / 1e9
            );
            cpu[i].push((hub_cpu, client_cpu));
            runs[i].push(bps);
        }
    }
    let rss_after = rss_kib(std::process::id()).unwrap_or(0);
    drop(ssh);
    let paired = |ssh: usize, tether: usize| {
        median(
            runs[ssh]
                .iter()
                .zip(&runs[tether])
                .map(|(s, t)| t / s)
                .collect(),
        )
    };
    let (paired_up, paired_down) = (paired(0, 1), paired(2, 3));
    let [ssh_up, tether_up, ssh_down, tether_down] = runs.map(median);
    // CPU a GB moved, medians: the hub's sshd and the client side, per tunnel and
    // direction (a client that reads or writes in small pieces costs sshd more too).
    for (i, key) in ["ssh_up", "tether_up", "ssh_down", "tether_down"]
        .iter()
        .enumerate()
    {
        let hub = median(cpu[i].iter().map(|c| c.0).collect());
        let client = median(cpu[i].iter().map(|c| c.1).collect());
        let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
        results.insert(format!("cpu_s_per_gb_{key}_sshd"), json!(r3(hub)));
        results.insert(format!("cpu_s_per_gb_{key}_client"), json!(r3(client)));
    }
    let openssh = Throughput {
        up: ssh_up,
        down: ssh_down,
    };
    let tether = Throughput {
        up: tether_up,
        down: tether_down,
    };
    results.insert("tunnel_throughput_rounds".into(), json!(args.rounds));
    // The machine's TCP congestion control sets how much the hub's sshd pays to send on
    // loopback (BBR paces; measured here: sshd's CPU a GB on download about 1.2 s with
    // BBR, 0.87 with CUBIC), so the figures above are only comparable under the same one.
    results.insert(
        "tcp_congestion_control".into(),
        json!(
            std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        ),
    );
    stop.cancel();
    let _ = tunnel.join();
    results.insert(
        "bench_process_rss_growth_while_moving_data_kib".into(),
        json!(rss_after.saturating_sub(rss_before)),
    );

    let gbit = |b: f64| (b / 1e9 * 100.0).round() / 100.0;
    let r2 = |x: f64| (x * 100.0).round() / 100.0;
    results.insert("tunnel_throughput_ratio_up".into(), json!(r2(paired_up)));
    results.insert(
        "tunnel_throughput_ratio_down".into(),
        json!(r2(paired_down)),
    );
    // Beside it, the ratio of the medians (rounds not paired).
    results.insert(
        "tunnel_throughput_ratio_of_medians".into(),
        json!(r2((tether.up / openssh.up).min(tether.down / openssh.down))),
    );
    let ratio = paired_up.min(paired_down);
    results.insert("openssh_up_gbit_s".into(), json!(gbit(openssh.up)));
    results.insert("openssh_down_gbit_s".into(), json!(gbit(openssh.down)));
    results.insert("tether_up_gbit_s".into(), json!(gbit(tether.up)));
    results.insert("tether_down_gbit_s".into(), json!(gbit(tether.down)));
    results.insert(
        "tunnel_throughput_ratio_vs_openssh".into(),
        json!((ratio * 100.0).round() / 100.0),
    );

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
    wait_port(auto_port, Duration::from_secs(15)).context("autossh's forward")?;
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
    let Some(mqtt) = mqtt else {
        return merge(&args.out, results);
    };
    // From here each measurement stands alone: one that fails is reported and the others
    // still run, and the figures so far are written after each, so a failure late in a
    // long run loses nothing measured before it.
    save(&args.out, &results)?;
    let lab_dir = dir.path().join("lab");
    let mut failed: Vec<String> = Vec::new();
    let mut section = |name: &str, figures: Result<serde_json::Map<String, Value>>| {
        match figures {
            Ok(f) => results.extend(f),
            Err(e) => {
                eprintln!("tether-bench: {name} FAILED: {e:#}");
                failed.push(format!("{name}: {e:#}"));
            }
        }
        save(&args.out, &results)
    };
    section(
        "the agent in the lab",
        rt.block_on(lab_figures(&args.tether, &lab_dir)),
    )?;
    // 4. The same resume on MySQL, beside MySQL's own defaults, through the same link.
    section(
        "resume on MySQL",
        rt.block_on(mysql_resume(&args.tether, &dir.path().join("lab-mysql"))),
    )?;
    section(
        "the status page's memory",
        rt.block_on(status_page_rss(
            &args.tether,
            &dir.path().join("lab-status-page"),
        )),
    )?;
    section(
        "the seed",
        rt.block_on(seed::figures(&args.tether, &dir.path().join("lab-seed"))),
    )?;
    section(
        "MQTT's steady traffic",
        rt.block_on(mqtt)
            .context("the MQTT measurement")
            .and_then(|r| r),
    )?;

    println!("{}", serde_json::to_string_pretty(&Value::Object(results))?);
    println!("written to {}", args.out.display());
    if !failed.is_empty() {
        bail!(
            "{} measurement(s) failed (the others are in {}):\n  {}",
            failed.len(),
            args.out.display(),
            failed.join("\n  ")
        );
    }
    Ok(())
}

/// Writes the figures so far as the results file.
fn save(out: &Path, results: &serde_json::Map<String, Value>) -> Result<()> {
    if let Some(d) = out.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(
        out,
        serde_json::to_string_pretty(&Value::Object(results.clone()))? + "\n",
    )?;
    Ok(())
}

/// Adds `figures` to the results file (keeping the keys of earlier runs).
fn merge(out: &Path, figures: serde_json::Map<String, Value>) -> Result<()> {
    let mut doc = std::fs::read_to_string(out)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Map<String, Value>>(&t).ok())
        .unwrap_or_default();
    println!("{}", serde_json::to_string_pretty(&figures)?);
    doc.extend(figures);
    if let Some(d) = out.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(
        out,
        serde_json::to_string_pretty(&Value::Object(doc))? + "\n",
    )?;
    println!("merged into {}", out.display());
    Ok(())
}

/// `status_page_rss_kib`: the agent's steady memory with the status page configured,
/// holding a full week of history and polled every second (page, timeline, JSON,
/// metrics), minus the same agent without the page. Each side is the median of several
/// readings after a warm-up, in the same lab.
async fn status_page_rss(tether: &Path, dir: &Path) -> Result<serde_json::Map<String, Value>> {
    use tether::health::Verdict;
    use tether::history::{History, HistoryFile, Sample};
    let mut out = serde_json::Map::new();
    let mut lab = office_lab(tether, dir, Vec::new()).await?;
    let url = lab.web_url().context("the lab configures the page")?;
    let authority = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();

    // A full ring: a week of minutes with lag and an outage an hour.
    lab.stop_agent().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut week = History::new();
    let minutes = tether::history::CAPACITY as u64;
    for m in 0..minutes {
        let at = now - (minutes - m) * 60;
        let down = m % 60 < 2;
        week.observe(
            at,
            &Sample {
                verdict: if down {
                    Verdict::LinkDown
                } else {
                    Verdict::InSync
                },
                tunnel_up: !down,
                lag_s: [Some(m % 7), Some(m % 5)],
            },
        );
    }
    HistoryFile::new(&lab.config.data.dir).save(&week)?;
    let file_bytes = std::fs::metadata(HistoryFile::new(&lab.config.data.dir).path())?.len();
    out.insert("status_page_history_file_bytes".into(), json!(file_bytes));

    let mut medians = Vec::new();
    for with_page in [true, false] {
        if !with_page {
            lab.config.web.listen = None;
        }
        lab.start_agent().await?;
        lab.wait_verdict("in_sync", Duration::from_secs(120))
            .await?;
        let pid = lab.agent_pid().context("agent pid")?;
        let mut readings = Vec::new();
        for second in 0..25 {
            if with_page {
                for path in ["/", "/timeline.svg", "/status.json", "/metrics"] {
                    let answer = http_get(&authority, path).await?;
                    if !answer.starts_with("HTTP/1.1 200") {
                        bail!("{path}: {}", answer.lines().next().unwrap_or_default());
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            // The first 15 s are the warm-up.
            if second >= 15 {
                readings.push(rss_kib(pid).unwrap_or(0));
            }
        }
        readings.sort_unstable();
        medians.push(readings[readings.len() / 2]);
        lab.stop_agent().await;
    }
    let (with, without) = (medians[0] as i64, medians[1] as i64);
    out.insert("agent_rss_with_status_page_kib".into(), json!(with));
    out.insert("agent_rss_without_status_page_kib".into(), json!(without));
    out.insert("status_page_rss_kib".into(), json!(with - without));
    Ok(out)
}

/// A plain HTTP GET over loopback: the whole answer, bounded.
async fn http_get(authority: &str, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(authority).await?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
            .await?;
        let mut body = Vec::new();
        s.read_to_end(&mut body).await?;
        anyhow::Ok(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .context("the status page did not answer within 10 s")?
}

fn tunnel_only(sshd: &Sshd, target: u16, listen: u16) -> Result<tether::tunnel::TunnelSettings> {
    use tether::tunnel::{Endpoint, HostKeyPin, TunnelSettings};
    let key = russh::keys::load_secret_key(&sshd.device_key, None)?;
    let mut s = TunnelSettings::new(
        Endpoint::new("127.0.0.1", sshd.port),
        sshd.user.clone(),
        std::sync::Arc::new(key),
        Some(HostKeyPin::parse(&sshd.host_key).map_err(anyhow::Error::msg)?),
        Endpoint::new("127.0.0.1", listen),
        // Nothing listens there: the remote probe fails fast instead of visiting iperf3.
        Endpoint::new("127.0.0.1", 1),
        Endpoint::new("127.0.0.1", target),
    );
    s.ssh.compression = false;
    s.ssh.ciphers = vec![russh::cipher::AES_128_GCM];
    // The probe would reach iperf3 through the forward and take its test slot.
    s.probe_interval = Duration::from_secs(3600);
    s.probe_timeout = Duration::from_secs(1);
    Ok(s)
}

/// The lab on the office link with the agent binary, `env` in its environment.
async fn office_lab(tether: &Path, dir: &Path, env: Vec<(String, String)>) -> Result<Lab> {
    office_lab_of(Family::MariaDb, tether, dir, env).await
}

/// [`office_lab`] with both sites on `family`.
async fn office_lab_of(
    family: Family,
    tether: &Path,
    dir: &Path,
    env: Vec<(String, String)>,
) -> Result<Lab> {
    let mut opts =
        LabOptions::office_link(dir.to_path_buf(), AgentMode::Binary(tether.to_path_buf()));
    opts.ready_timeout = Duration::from_secs(120);
    opts.agent_env = env;
    opts.family = family;
    Lab::start(opts).await
}

/// `replication_resume_mysql_s` / `replication_resume_mysql_default_s`: from link heal to
/// a row written at each site during a 60 s cut arriving at the other, on MySQL, first
/// as `tether enroll` sets it up (and the agent restarting IO threads), then with MySQL's
/// own defaults (`SOURCE_CONNECT_RETRY` 60, `SOURCE_RETRY_COUNT` 10, heartbeat 30 s,
/// `replica_net_timeout` 60, TLS) through the same tunnel without compression.
async fn mysql_resume(tether: &Path, dir: &Path) -> Result<serde_json::Map<String, Value>> {
    let mut out = serde_json::Map::new();
    let mut lab = office_lab_of(Family::MySql, tether, dir, Vec::new()).await?;
    let outage = Duration::from_secs(60);
    create_everywhere(
        &lab,
        "app.resume",
        "CREATE TABLE IF NOT EXISTS app.resume (id INT AUTO_INCREMENT PRIMARY KEY, tag VARCHAR(32) NOT NULL)",
    )?;
    let resume = one_outage(&lab, outage, "tether").await?;

    lab.stop_agent().await;
    lab.config.replication.restart_on_reconnect = false;
    lab.config.hub.compression = false;
    for db in [lab.fixture.hub_db(), lab.fixture.office_db()] {
        db.sql(
            "STOP REPLICA; SET GLOBAL replica_net_timeout = 60; SET GLOBAL binlog_row_image = 'FULL'; \
             CHANGE REPLICATION SOURCE TO SOURCE_CONNECT_RETRY = 60, SOURCE_RETRY_COUNT = 10, \
             SOURCE_HEARTBEAT_PERIOD = 30, SOURCE_SSL = 1; START REPLICA;",
        )?;
    }
    lab.start_agent().await?;
    lab.wait_verdict("in_sync", Duration::from_secs(180))
        .await?;
    let resume_default = one_outage(&lab, outage, "default").await?;
    out.insert(
        "replication_resume_mysql_version".into(),
        json!(
            lab.fixture
                .hub_db()
                .sql("SELECT VERSION()")?
                .trim()
                .to_owned()
        ),
    );
    out.insert("replication_resume_mysql_s".into(), json!(resume));
    out.insert(
        "replication_resume_mysql_default_s".into(),
        json!(resume_default),
    );
    Ok(out)
}

async fn lab_figures(tether: &Path, dir: &Path) -> Result<serde_json::Map<String, Value>> {
    let mut out = serde_json::Map::new();
    let mut lab = office_lab(tether, dir, Vec::new()).await?;

    // ssh with the usual keepalive advice, through its own simulated link to the same hub.
    let sshd = lab.fixture.sshd();
    let upstream: SocketAddr = format!("127.0.0.1:{}", sshd.port).parse()?;
    let ssh_link = LinkSim::start(
        tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        upstream,
        LinkOptions::default(),
    )
    .await?;
    let known = dir.join("known_hosts");
    let line = format!(
        "[127.0.0.1]:{} {}\n",
        ssh_link.local_addr().port(),
        sshd.host_key
    );
    std::fs::write(&known, line)?;
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
        .stderr(std::fs::File::create(dir.join("ssh-keepalive.log"))?)
        .spawn()?;
    wait_port(ssh_port, Duration::from_secs(15)).with_context(|| {
        format!(
            "ssh through the link: {}",
            std::fs::read_to_string(dir.join("ssh-keepalive.log")).unwrap_or_default()
        )
    })?;

    // Steady memory with every job running.
    tokio::time::sleep(Duration::from_secs(10)).await;
    // The agent, and apart from it its launcher (`tether run`, the parent that rolls a
    // failed update back): RSS each, and their PSS together (the binary's pages they share
    // counted once).
    let pid = lab.agent_pid().context("agent pid")?;
    out.insert("agent_rss_kib".into(), json!(rss_kib(pid).unwrap_or(0)));
    if let Some(launcher) = lab.launcher_pid() {
        out.insert(
            "launcher_rss_kib".into(),
            json!(rss_kib(launcher).unwrap_or(0)),
        );
        out.insert(
            "agent_and_launcher_pss_kib".into(),
            json!(pss_kib(pid).unwrap_or(0) + pss_kib(launcher).unwrap_or(0)),
        );
    }

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
    let ssh_detect = round1(ssh_start.elapsed());
    out.insert("first_state_s".into(), json!(first_state(&mut lab).await?));
    replication_figures(&mut lab, &mut out).await?;
    out.insert("ssh_keepalive_blackhole_detect_s".into(), json!(ssh_detect));
    out.insert("autossh_default_poll_s".into(), json!(600));
    Ok(out)
}

/// Replication through the lab link, first as tether sets it up (recommended settings,
/// zlib on the SSH stream, IO threads restarted when the tunnel is back), then with
/// MariaDB's defaults through the same tunnel without compression:
/// - `replication_resume_s` / `replication_resume_default_s`: from link heal to a row
///   written at each site during a 60 s cut arriving at the other;
/// - `replication_wire_bytes_ratio`: bytes through the link for the same mixed workload
///   written live (paced) at both sites, tether over defaults; and
///   `replication_wire_bytes_catchup_ratio`: the same workload written during a cut and
///   caught up after the heal.
async fn replication_figures(
    lab: &mut Lab,
    out: &mut serde_json::Map<String, Value>,
) -> Result<()> {
    let outage = Duration::from_secs(60);
    lab.wait_verdict("in_sync", Duration::from_secs(120))
        .await?;
    create_everywhere(
        lab,
        "app.resume",
        "CREATE TABLE IF NOT EXISTS app.resume (id INT AUTO_INCREMENT PRIMARY KEY, tag VARCHAR(32) NOT NULL)",
    )?;
    let resume = one_outage(lab, outage, "tether").await?;
    let tether = wire_bytes(lab, "tether").await?;

    lab.stop_agent().await;
    lab.config.replication.restart_on_reconnect = false;
    lab.config.hub.compression = false;
    std::fs::write(&lab.config_path, toml::to_string(&lab.config)?)?;
    for db in [lab.fixture.hub_db(), lab.fixture.office_db()] {
        db.sql(
            "STOP SLAVE; SET GLOBAL slave_net_timeout = 60; SET GLOBAL binlog_row_image = 'FULL'; \
             SET GLOBAL binlog_annotate_row_events = ON; \
             CHANGE MASTER TO MASTER_CONNECT_RETRY = 60, MASTER_HEARTBEAT_PERIOD = 30; START SLAVE;",
        )?;
    }
    lab.start_agent().await?;
    lab.wait_verdict("in_sync", Duration::from_secs(180))
        .await?;
    let default = wire_bytes(lab, "default").await?;
    let resume_default = one_outage(lab, outage, "default").await?;

    out.insert(
        "replication_resume_outage_s".into(),
        json!(outage.as_secs()),
    );
    out.insert("replication_resume_s".into(), json!(resume));
    out.insert("replication_resume_default_s".into(), json!(resume_default));
    let ratio = |a: u64, b: u64| (a as f64 / b.max(1) as f64 * 100.0).round() / 100.0;
    out.insert(
        "replication_wire_transactions".into(),
        json!(2 * WORKLOAD_STEPS),
    );
    for (key, w) in [("", &tether), ("_default", &default)] {
        out.insert(
            format!("agent_idle_link_bytes_per_s{key}"),
            json!(w.idle_per_s.round()),
        );
        out.insert(format!("replication_wire_bytes_live{key}"), json!(w.live.1));
        out.insert(
            format!("replication_wire_bytes_live_all{key}"),
            json!(w.live.0),
        );
        out.insert(
            format!("replication_wire_bytes_catchup{key}"),
            json!(w.backlog.1),
        );
        out.insert(
            format!("replication_wire_bytes_catchup_all{key}"),
            json!(w.backlog.0),
        );
    }
    // Replication's own bytes (the agent's idle traffic over the same time taken out),
    // and, beside it, everything that crossed the link.
    out.insert(
        "replication_wire_bytes_ratio".into(),
        json!(ratio(tether.live.1, default.live.1)),
    );
    out.insert(
        "replication_wire_bytes_catchup_ratio".into(),
        json!(ratio(tether.backlog.1, default.backlog.1)),
    );
    out.insert(
        "link_bytes_ratio_live_with_monitoring".into(),
        json!(ratio(tether.live.0, default.live.0)),
    );
    Ok(())
}

/// Statements per site in the wire-bytes workload (500 inserts, 300 updates, 50 deletes).
const WORKLOAD_STEPS: usize = 850;

/// Creates `table` at the hub and waits until replication has created it at the office.
fn create_everywhere(lab: &Lab, table: &str, ddl: &str) -> Result<()> {
    lab.fixture.hub_db().sql(ddl)?;
    let (db, name) = table.split_once('.').context("db.table")?;
    tether_harness::wait_for(
        &format!("{table} at the office"),
        Duration::from_secs(60),
        || {
            lab.fixture.office_db().count(&format!(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema='{db}' AND table_name='{name}'"
        )) == 1
        },
    )
}

/// Bytes through the office link for the workload written live at 12.5 statements a
/// second at each site, then for the same workload written during a cut and caught up
/// after the heal. Each ends when both sites hold the same rows.
async fn wire_bytes(lab: &Lab, tag: &str) -> Result<Wire> {
    use tether_harness::mixed as workload;
    let (hub, office) = (lab.fixture.hub_db(), lab.fixture.office_db());
    let on_link = || {
        let s = lab.link.stats();
        s.bytes_up + s.bytes_down
    };
    // The agent's own traffic with no writes (heartbeats, status, probes, keepalives),
    // counted so the replication's share can be told apart.
    let (at, before, split) = (Instant::now(), on_link(), lab.link.stats());
    tokio::time::sleep(IDLE_WINDOW).await;
    let idle_per_s = (on_link() - before) as f64 / at.elapsed().as_secs_f64();
    eprintln!(
        "{tag} idle: {idle_per_s:.0} B/s over {:.1} s; {}",
        at.elapsed().as_secs_f64(),
        split_since(&split, &lab.link.stats())
    );
    let mut figures = Vec::new();
    for phase in ["live", "backlog"] {
        let table = format!("app.wire_{tag}_{phase}");
        create_everywhere(lab, &table, &workload::create_table(&table))?;
        let at_hub = workload::statements(&table, 0, WORKLOAD_STEPS, 42);
        let at_office = workload::statements(&table, 1, WORKLOAD_STEPS, 42);
        let rows = [&at_hub, &at_office]
            .iter()
            .flat_map(|v| v.iter())
            .map(|s| match s.split(' ').next() {
                Some("INSERT") => 1i64,
                Some("DELETE") => -1,
                _ => 0,
            })
            .sum::<i64>() as u64;
        let (before, started);
        let split_before = lab.link.stats();
        if phase == "live" {
            (before, started) = (on_link(), Instant::now());
            let pace = Duration::from_millis(80);
            tokio::try_join!(
                workload::run(hub, &at_hub, pace),
                workload::run(office, &at_office, pace)
            )?;
        } else {
            lab.link.cut();
            lab.wait_state("the cut noticed", Duration::from_secs(10), |d| {
                d["tunnel"]["up"] == false
            })
            .await?;
            tokio::try_join!(
                workload::run(hub, &at_hub, Duration::ZERO),
                workload::run(office, &at_office, Duration::ZERO)
            )?;
            (before, started) = (on_link(), Instant::now());
            lab.link.heal();
        }
        let count = format!("SELECT COUNT(*) FROM {table}");
        let sum = |db| tether_harness::workload::checksum(db, &table);
        let same_checksum = |a: String, b: String| !a.is_empty() && a == b;
        let deadline = Instant::now() + Duration::from_secs(600);
        while !(hub.count(&count) == rows
            && office.count(&count) == rows
            && same_checksum(sum(hub), sum(office)))
        {
            if Instant::now() > deadline {
                bail!("{table}: the sites did not hold the same {rows} rows within 600 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let bytes = on_link() - before;
        let idle = (idle_per_s * started.elapsed().as_secs_f64()) as u64;
        eprintln!(
            "{tag} {phase}: {bytes} B ({idle} idle) in {:.1} s; {}",
            started.elapsed().as_secs_f64(),
            split_since(&split_before, &lab.link.stats())
        );
        figures.push((bytes, bytes.saturating_sub(idle)));
    }
    Ok(Wire {
        idle_per_s,
        live: figures[0],
        backlog: figures[1],
    })
}

/// The link's bytes and reads a direction between two readings.
fn split_since(
    before: &tether_harness::linksim::Stats,
    after: &tether_harness::linksim::Stats,
) -> String {
    format!(
        "up {} B in {} reads, down {} B in {} reads",
        after.bytes_up - before.bytes_up,
        after.reads_up - before.reads_up,
        after.bytes_down - before.bytes_down,
        after.reads_down - before.reads_down
    )
}

/// Quiet time before the workload over which the agent's own traffic is counted.
const IDLE_WINDOW: Duration = Duration::from_secs(30);

/// Link bytes of one configuration: (all, all minus the agent's idle rate over the
/// same time) for the live and the backlog phase.
struct Wire {
    idle_per_s: f64,
    live: (u64, u64),
    backlog: (u64, u64),
}

/// Cuts the link for `outage` with a row written at each site meanwhile; returns the
/// seconds from heal until both rows have crossed.
async fn one_outage(lab: &Lab, outage: Duration, tag: &str) -> Result<f64> {
    Ok(outage_timed(lab, outage, tag).await?.0)
}

/// [`one_outage`], with the wall-clock time of the heal.
async fn outage_timed(
    lab: &Lab,
    outage: Duration,
    tag: &str,
) -> Result<(f64, std::time::SystemTime)> {
    let (hub, office) = (lab.fixture.hub_db(), lab.fixture.office_db());
    lab.link.cut();
    lab.wait_state("the cut noticed", Duration::from_secs(10), |d| {
        d["tunnel"]["up"] == false
    })
    .await?;
    hub.sql(&format!(
        "INSERT INTO app.resume (tag) VALUES ('{tag} hub')"
    ))?;
    office.sql(&format!(
        "INSERT INTO app.resume (tag) VALUES ('{tag} office')"
    ))?;
    // The outage itself (what is measured comes after it).
    tokio::time::sleep(outage).await;
    lab.link.heal();
    let healed = Instant::now();
    let healed_wall = std::time::SystemTime::now();
    let arrived = |db: &tether_harness::db::DbServer, site: &str| {
        db.count(&format!(
            "SELECT COUNT(*) FROM app.resume WHERE tag = '{tag} {site}'"
        )) == 1
    };
    while !(arrived(office, "hub") && arrived(hub, "office")) {
        if healed.elapsed() > Duration::from_secs(300) {
            bail!("rows written during the {tag} outage did not cross within 300 s of the heal");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((round1(healed.elapsed()), healed_wall))
}

/// `--only wire`: the wire-bytes workload with tether's settings only (the reference
/// run takes as long again), with each phase's bytes and reads per direction.
async fn wire_only(tether: &Path, dir: &Path) -> Result<serde_json::Map<String, Value>> {
    let lab = office_lab(tether, dir, Vec::new()).await?;
    lab.wait_verdict("in_sync", Duration::from_secs(120))
        .await?;
    if let Ok(sql) = std::env::var("TETHER_BENCH_WIRE_SQL") {
        for db in [lab.fixture.hub_db(), lab.fixture.office_db()] {
            db.sql(&sql)?;
        }
        lab.wait_verdict("in_sync", Duration::from_secs(120))
            .await?;
    }
    let w = wire_bytes(&lab, "tether").await?;
    let mut out = serde_json::Map::new();
    out.insert("wire_only_live".into(), json!(w.live.1));
    out.insert("wire_only_catchup".into(), json!(w.backlog.1));
    out.insert("wire_only_idle_per_s".into(), json!(w.idle_per_s));
    Ok(out)
}

/// `--only resume`: replication resume after five 10 s cuts on the lab link, each with a
/// timeline of what the two servers heard after the heal (their general logs), so the
/// round trips that make up the figure can be read off; the agent's debug log is kept
/// as `resume-agent.log` beside `--out`.
async fn resume_only(
    tether: &Path,
    dir: &Path,
    keep_log: &Path,
) -> Result<serde_json::Map<String, Value>> {
    let env = vec![("RUST_LOG".into(), "info,tether=debug".into())];
    let lab = office_lab(tether, dir, env).await?;
    lab.wait_verdict("in_sync", Duration::from_secs(120))
        .await?;
    create_everywhere(
        &lab,
        "app.resume",
        "CREATE TABLE IF NOT EXISTS app.resume (id INT AUTO_INCREMENT PRIMARY KEY, tag VARCHAR(32) NOT NULL)",
    )?;
    for db in [lab.fixture.hub_db(), lab.fixture.office_db()] {
        db.sql("SET GLOBAL log_output = 'TABLE'; SET SESSION sql_log_bin = 0; TRUNCATE mysql.general_log; SET GLOBAL general_log = ON;")?;
    }
    let mut figures = Vec::new();
    for round in 0..5 {
        let (took, heal_wall) =
            outage_timed(&lab, Duration::from_secs(10), &format!("r{round}")).await?;
        let healed = heal_wall
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs_f64();
        eprintln!("round {round}: {took} s (healed at {healed:.3} s after the epoch)");
        for (name, db) in [
            ("hub", lab.fixture.hub_db()),
            ("office", lab.fixture.office_db()),
        ] {
            let rows = db.sql(&format!(
                "SELECT CONCAT(ROUND(UNIX_TIMESTAMP(event_time) - {healed:.3}, 3), ' ', thread_id, ' ', command_type, ' ', LEFT(REPLACE(CONVERT(argument USING utf8mb4), '\n', ' '), 90)) \
                 FROM mysql.general_log WHERE UNIX_TIMESTAMP(event_time) > {healed:.3} - 0.1 ORDER BY event_time"
            ))?;
            eprintln!("  {name} heard (s after heal):\n{rows}");
            db.sql("SET SESSION sql_log_bin = 0; TRUNCATE mysql.general_log")?;
        }
        figures.push(took);
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    // The agent's debug log, with the tunnel's steps, kept beside the results.
    std::fs::copy(dir.join("agent.log"), keep_log)?;
    eprintln!("the agent's log: {}", keep_log.display());
    let mut out = serde_json::Map::new();
    out.insert("replication_resume_10s_rounds".into(), json!(figures));
    out.insert(
        "replication_resume_10s_median".into(),
        json!(median(figures)),
    );
    Ok(out)
}

/// From starting the agent process to its first retained state at the broker, with the
/// databases and the hub up.
async fn first_state(lab: &mut Lab) -> Result<f64> {
    let broker = lab.fixture.broker();
    let (host, port) = (broker.host.clone(), broker.port.to_string());
    lab.stop_agent().await;
    let topic = format!("tether/{}/state", lab.config.site.id);
    // Clear the retained copy, then wait for the next one.
    let cleared = Command::new("mosquitto_pub")
        .args(["-h", &host, "-p", &port, "-t", &topic, "-r", "-n"])
        .status()?;
    if !cleared.success() {
        bail!("mosquitto_pub could not clear the retained state");
    }
    let mut sub = tokio::process::Command::new("mosquitto_sub")
        .args([
            "-h", &host, "-p", &port, "-t", &topic, "-C", "1", "-W", "30",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    // Let the subscription settle before the agent starts (a bounded, generous pause).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    lab.start_agent().await?;
    let mut out = sub.stdout.take().context("mosquitto_sub stdout")?;
    let mut line = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut out, &mut line).await?;
    let took = started.elapsed();
    let _ = sub.wait().await;
    if line.is_empty() {
        bail!("no state reached the broker within 30 s of starting the agent");
    }
    Ok((took.as_secs_f64() * 100.0).round() / 100.0)
}

/// The steady-state window: one full republish period at the defaults, plus margin.
const MQTT_WINDOW: Duration = Duration::from_secs(305);

/// `mqtt_bytes_per_day`: the agent's MQTT client with the product defaults (keepalive
/// 30 s, republish 300 s, discovery on) and an in_sync state document of the real shape,
/// against mosquitto through a counting link. After the connect burst (status, state,
/// discovery) it counts every byte both ways for one republish period and scales that
/// to a day. Bytes are TCP payload (MQTT on the wire, no TLS).
async fn mqtt_bytes() -> Result<serde_json::Map<String, Value>> {
    use tether::events::{Direction, Event, ReplicationStatus, Stamp, TunnelEvent};
    use tether::health::{HealthMachine, HealthSettings};
    let broker =
        tokio::task::spawn_blocking(|| tether_harness::mosquitto::Mosquitto::start(&[])).await??;
    let link = LinkSim::start(
        tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        format!("127.0.0.1:{}", broker.port).parse()?,
        LinkOptions::default(),
    )
    .await?;
    let at = |s: u64| Stamp {
        mono: Duration::from_secs(s),
        wall: std::time::SystemTime::now(),
    };
    let mut machine = HealthMachine::new(
        HealthSettings {
            settle: Duration::from_secs(10),
            alert_after: Duration::from_secs(300),
            lag_ok: Duration::from_secs(30),
        },
        at(0),
    );
    machine.handle(Event::Tunnel(TunnelEvent::Up), at(1));
    for direction in Direction::BOTH {
        let status = ReplicationStatus {
            io_running: Some(true),
            sql_running: Some(true),
            lag_s: Some(1),
            seconds_behind_master: Some(0),
            ..ReplicationStatus::default()
        };
        machine.handle(Event::Replication { direction, status }, at(2));
    }
    let doc = tether::app::state_document(machine.health(), Duration::from_secs(3600), None);
    let (_doc_tx, doc_rx) = tokio::sync::watch::channel(doc.to_string());
    let (ev_tx, mut ev_rx) = tokio::sync::mpsc::channel(16);
    let settings =
        tether::mqtt::MqttSettings::new("127.0.0.1", link.local_addr().port(), "bench", "Bench");
    let stop = tokio_util::sync::CancellationToken::new();
    let client = tokio::spawn(tether::mqtt::run(settings, doc_rx, ev_tx, stop.clone()));
    let drain = tokio::spawn(async move { while ev_rx.recv().await.is_some() {} });
    // The connect burst: wait until the retained state is at the broker, then a bounded
    // moment for the discovery messages behind it.
    let topic = "tether/bench/state";
    let port = broker.port.to_string();
    tokio::task::spawn_blocking(move || {
        tether_harness::wait_for(
            "the retained state at the broker",
            Duration::from_secs(30),
            || {
                Command::new("mosquitto_sub")
                    .args(["-h", "127.0.0.1", "-p", &port, "-t", topic])
                    .args(["-C", "1", "-W", "1"])
                    .output()
                    .is_ok_and(|o| !o.stdout.is_empty())
            },
        )
    })
    .await??;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = link.stats();
    tokio::time::sleep(MQTT_WINDOW).await;
    let after = link.stats();
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(3), client).await;
    drain.abort();
    let window = (after.bytes_up + after.bytes_down) - (before.bytes_up + before.bytes_down);
    let per_day = window as f64 * 86_400.0 / MQTT_WINDOW.as_secs_f64();
    let mut out = serde_json::Map::new();
    out.insert(
        "mqtt_connect_burst_bytes".into(),
        json!(before.bytes_up + before.bytes_down),
    );
    out.insert("mqtt_window_s".into(), json!(MQTT_WINDOW.as_secs()));
    out.insert("mqtt_window_bytes".into(), json!(window));
    out.insert("mqtt_state_bytes".into(), json!(doc.to_string().len()));
    out.insert("mqtt_bytes_per_day".into(), json!(per_day.round() as u64));
    Ok(out)
}

fn round1(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}
