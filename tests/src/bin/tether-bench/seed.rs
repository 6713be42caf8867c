//! `--only seed`: the seed over the office line (128 kbit/s, 300 ms) against the reference
//! a person would use, on the same data and link in the same run:
//! `mariadb-dump --single-transaction | gzip -6` on the hub, carried by OpenSSH's `ssh`
//! through its own link simulator with the same rate and delay.
//!
//! - `seed_wire_bytes_ratio`: the link's bytes (both ways) while `tether seed` runs, from
//!   its start (the checks and the link sample included) to done, less the agent's own
//!   traffic at its idle rate measured just before (heartbeats, status, the office's
//!   replication to the hub: about 200-300 B/s, there with or without a seed), over the
//!   reference's; `_raw` without that subtraction;
//! - `seed_rows_per_s`: rows over that time;
//! - `seed_resent_ratio`: in a second seed (`--replace`) with five cuts during the copy
//!   and the hub writing 10 rows a second, the compressed bytes of the chunks that were in
//!   flight at a cut and asked for again, over the copy's compressed bytes (an upper
//!   bound: a chunk counts whole however little of it had crossed);
//! - `seed_verify_link_bytes` and `_ratio`: what the check against the final snapshot
//!   cost on the link in that second seed (its bytes while in that phase);
//! - `seed_to_hub_wire_bytes_ratio` and `seed_to_hub_rows_per_s`: a new, emptied hub
//!   filled from the office (`tether seed --to-hub`) on the same rows, against the same
//!   reference (a dump carries the same bytes whichever way it goes). A failure there is
//!   reported and leaves the figures above.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tether_harness::lab::{AgentMode, Lab, LabOptions};
use tether_harness::linksim::{LinkOptions, LinkSim};
use tether_harness::process::{Proc, free_port};
use tether_harness::seeding::{self, DataSize, HubWriter};
use tether_harness::sshd::{Sshd, SshdOptions};

/// A seventh of the 201,000 rows: about two minutes a copy on the office line.
const SCALE: f64 = 0.15;
/// How long the agent's own traffic is measured before the seed.
const IDLE: Duration = Duration::from_secs(30);

pub async fn figures(tether: &Path, dir: &Path) -> Result<serde_json::Map<String, Value>> {
    let mut out = serde_json::Map::new();
    let mut opts =
        LabOptions::office_link(dir.to_path_buf(), AgentMode::Binary(tether.to_path_buf()));
    opts.ready_timeout = Duration::from_secs(120);
    let lab = Lab::start(opts).await?;
    let (hub, office) = (lab.fixture.hub_db(), lab.fixture.office_db());
    office.sql("STOP SLAVE")?;
    let size = DataSize::FULL.scaled(SCALE);
    seeding::create_data(hub, size, true)?;
    out.insert("seed_bench_rows".into(), json!(size.rows()));

    // 1. The reference.
    let (dump_link, dump_bytes, dump_s) = reference(&lab, dir).await?;
    out.insert("seed_dump_gzip_link_bytes".into(), json!(dump_link));
    out.insert("seed_dump_gzip_bytes".into(), json!(dump_bytes));
    out.insert("seed_dump_gzip_s".into(), json!(round1(dump_s)));

    // 2. The seed, nothing else happening. The agent's own traffic on the link (its
    //    heartbeats and replication status, the office's replication to the hub) goes on
    //    beside it: measured first, for as long, in the same state (the office's
    //    replication from the hub stopped), to tell the seed's bytes from it.
    let idle_from = link_bytes(&lab.link);
    tokio::time::sleep(IDLE).await;
    let idle_per_s = (link_bytes(&lab.link) - idle_from) as f64 / IDLE.as_secs_f64();
    out.insert(
        "seed_idle_link_bytes_per_s".into(),
        json!(idle_per_s.round()),
    );
    let passwords = (hub.root_password.as_str(), office.root_password.as_str());
    let before = link_bytes(&lab.link);
    let (down0, up0) = (lab.link.stats().bytes_down, lab.link.stats().bytes_up);
    let started = Instant::now();
    let (ok, printed) = seeding::run_seed(
        tether,
        &lab.config_path,
        passwords,
        &["--yes"],
        &dir.join("seed-clean.out"),
        Duration::from_secs(1800),
    )
    .await?;
    if !ok {
        bail!("the seed failed: {printed}");
    }
    let seed_s = started.elapsed().as_secs_f64();
    let seed_link = link_bytes(&lab.link) - before;
    out.insert(
        "seed_link_bytes_down".into(),
        json!(lab.link.stats().bytes_down - down0),
    );
    out.insert(
        "seed_link_bytes_up".into(),
        json!(lab.link.stats().bytes_up - up0),
    );
    seeding::wait_equal(hub, office, Duration::from_secs(120)).await?;
    let r = seeding::recorded(office)?;
    out.insert("seed_link_bytes".into(), json!(seed_link));
    let seed_own = seed_link as f64 - idle_per_s * seed_s;
    out.insert(
        "seed_wire_bytes_ratio".into(),
        json!(round3(seed_own / dump_link as f64)),
    );
    out.insert(
        "seed_wire_bytes_ratio_raw".into(),
        json!(round3(seed_link as f64 / dump_link as f64)),
    );
    out.insert("seed_s".into(), json!(round1(seed_s)));
    out.insert(
        "seed_rows_per_s".into(),
        json!((r.rows as f64 / seed_s).round()),
    );
    out.insert("seed_compressed_bytes".into(), json!(r.wire_bytes));
    out.insert(
        "seed_compressed_vs_gzip_ratio".into(),
        json!(round3(r.wire_bytes as f64 / dump_bytes as f64)),
    );
    out.insert("seed_text_bytes".into(), json!(r.text_bytes));

    // 3. Again over the office's copy (`--replace`), with five cuts and the hub writing.
    let mut writer = HubWriter::start(hub, 10, size);
    let mut child = seeding::seed_command(
        tether,
        &lab.config_path,
        passwords.0,
        passwords.1,
        &["--yes", "--replace"],
        &dir.join("seed-cuts.out"),
    )?;
    let before = link_bytes(&lab.link);
    let cuts_at = [12u64, 28, 44, 60, 76];
    let mut cuts = 0;
    let mut verify_from: Option<(u64, Instant)> = None;
    let mut verify = (0u64, 0.0f64);
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!(
                    "the seed with cuts failed: {}",
                    std::fs::read_to_string(dir.join("seed-cuts.out")).unwrap_or_default()
                );
            }
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the seed with cuts did not end within 30 minutes");
        }
        let p = seeding::progress(&lab.config.status.socket).await.ok();
        let phase = p
            .as_ref()
            .and_then(|p| p["phase"].as_str().map(str::to_owned));
        let running = p.as_ref().is_some_and(|p| p["state"] == "running");
        match (running, phase.as_deref(), &verify_from) {
            (true, Some("copy"), _) if cuts < cuts_at.len() => {
                let percent = p.as_ref().and_then(|p| p["percent"].as_u64()).unwrap_or(0);
                if percent >= cuts_at[cuts] {
                    lab.link.cut();
                    lab.wait_state("the cut noticed", Duration::from_secs(15), |d| {
                        d["tunnel"]["up"] == false
                    })
                    .await?;
                    lab.link.heal();
                    cuts += 1;
                }
            }
            (true, Some("verify"), None) => {
                verify_from = Some((link_bytes(&lab.link), Instant::now()));
            }
            (true, Some("finishing"), Some((from, at))) | (false, _, Some((from, at)))
                if verify.0 == 0 =>
            {
                verify = (link_bytes(&lab.link) - from, at.elapsed().as_secs_f64());
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cut_link = link_bytes(&lab.link) - before;
    writer.stop().await;
    if cuts < cuts_at.len() {
        bail!("only {cuts} of the 5 cuts hit the copy");
    }
    seeding::wait_equal(hub, office, Duration::from_secs(180)).await?;
    let r = seeding::recorded(office)?;
    out.insert(
        "seed_resent_ratio".into(),
        json!(round3(r.resent_bytes as f64 / r.wire_bytes.max(1) as f64)),
    );
    out.insert("seed_resent_bytes".into(), json!(r.resent_bytes));
    out.insert("seed_resent_chunks".into(), json!(r.resent_chunks));
    out.insert("seed_chunks".into(), json!(r.chunks));
    out.insert("seed_cuts_link_bytes".into(), json!(cut_link));
    out.insert("seed_cuts_hub_writes".into(), json!(writer.counts.rows()));
    out.insert("seed_verify_link_bytes".into(), json!(verify.0));
    out.insert(
        "seed_verify_link_ratio".into(),
        json!(round3(verify.0 as f64 / cut_link.max(1) as f64)),
    );
    out.insert("seed_verify_s".into(), json!(round1(verify.1)));
    out.insert("seed_verify_rows".into(), json!(r.verify_rows));
    out.insert("seed_verify_session_bytes".into(), json!(r.verify_bytes));

    // 4. A new hub filled from the office, on the same rows.
    match to_hub(tether, &lab, dir, idle_per_s, dump_link).await {
        Ok(figures) => out.extend(figures),
        Err(e) => {
            eprintln!("tether-bench: seed_to_hub FAILED: {e:#}");
            out.insert("seed_to_hub_failed".into(), json!(format!("{e:#}")));
        }
    }
    Ok(out)
}

/// The hub emptied (without binary logging) and its replication from the office
/// stopped, then `tether seed --to-hub`: its link bytes (less the agent's idle traffic)
/// over the reference's, and its rows a second.
async fn to_hub(
    tether: &Path,
    lab: &Lab,
    dir: &Path,
    idle_per_s: f64,
    dump_link: u64,
) -> Result<serde_json::Map<String, Value>> {
    let mut out = serde_json::Map::new();
    let (hub, office) = (lab.fixture.hub_db(), lab.fixture.office_db());
    hub.sql("STOP SLAVE")?;
    hub.sql("SET SESSION sql_log_bin = 0; DROP DATABASE app")?;
    let passwords = (hub.root_password.as_str(), office.root_password.as_str());
    let before = link_bytes(&lab.link);
    let started = Instant::now();
    let (ok, printed) = seeding::run_seed(
        tether,
        &lab.config_path,
        passwords,
        &["--yes", "--to-hub"],
        &dir.join("seed-to-hub.out"),
        Duration::from_secs(1800),
    )
    .await?;
    if !ok {
        bail!("the seed of the hub failed: {printed}");
    }
    let secs = started.elapsed().as_secs_f64();
    let link = link_bytes(&lab.link) - before;
    seeding::wait_equal(hub, office, Duration::from_secs(120)).await?;
    let r = seeding::recorded(hub)?;
    out.insert("seed_to_hub_link_bytes".into(), json!(link));
    out.insert(
        "seed_to_hub_wire_bytes_ratio".into(),
        json!(round3((link as f64 - idle_per_s * secs) / dump_link as f64)),
    );
    out.insert("seed_to_hub_s".into(), json!(round1(secs)));
    out.insert(
        "seed_to_hub_rows_per_s".into(),
        json!((r.rows as f64 / secs).round()),
    );
    out.insert("seed_to_hub_compressed_bytes".into(), json!(r.wire_bytes));
    Ok(out)
}

fn link_bytes(link: &LinkSim) -> u64 {
    let s = link.stats();
    s.bytes_down + s.bytes_up
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `mariadb-dump --single-transaction | gzip -6` on the hub, read through OpenSSH's
/// `ssh -L` over a link simulator like the lab's: (link bytes both ways, gzip bytes,
/// seconds).
async fn reference(lab: &Lab, dir: &Path) -> Result<(u64, u64, f64)> {
    let hub = lab.fixture.hub_db();
    // The hub side: one connection, answered with the gzipped dump.
    let dump_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let dump_port = dump_listener.local_addr()?.port();
    let (socket, password) = (hub.socket.clone(), hub.root_password.clone());
    let server = std::thread::spawn(move || -> Result<()> {
        let (mut conn, _) = dump_listener.accept()?;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "mariadb-dump --no-defaults --socket={} -uroot --single-transaction --databases app | gzip -6",
                socket.display()
            ))
            .env("MYSQL_PWD", password)
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut out = child.stdout.take().context("dump output")?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = out.read(&mut buf)?;
            if n == 0 {
                break;
            }
            conn.write_all(&buf[..n])?;
        }
        if !child.wait()?.success() {
            bail!("mariadb-dump | gzip failed");
        }
        Ok(())
    });
    let sshd = Sshd::start(SshdOptions {
        permit_listen: format!("127.0.0.1:{}", free_port()?),
        permit_open: format!("127.0.0.1:{dump_port}"),
        client_alive_interval: None,
    })?;
    let upstream: SocketAddr = format!("127.0.0.1:{}", sshd.port).parse()?;
    let link = LinkSim::start(
        tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        upstream,
        LinkOptions {
            rate: lab.link.stats().rate,
            delay: Duration::from_millis(lab.link.stats().delay_ms),
            ..LinkOptions::default()
        },
    )
    .await?;
    let known = dir.join("dump_known_hosts");
    std::fs::write(
        &known,
        format!(
            "[127.0.0.1]:{} {}\n",
            link.local_addr().port(),
            sshd.host_key
        ),
    )?;
    let local = free_port()?;
    let me = tether_harness::process::RunAs {
        name: String::new(),
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        switch: false,
    };
    let started = Instant::now();
    let _ssh = Proc::spawn(
        "ssh -L (dump)",
        &me,
        Command::new("ssh").args([
            "-N",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            &format!("UserKnownHostsFile={}", known.display()),
            "-i",
            &sshd.device_key.display().to_string(),
            "-l",
            &sshd.user,
            "-p",
            &link.local_addr().port().to_string(),
            "-L",
            &format!("127.0.0.1:{local}:127.0.0.1:{dump_port}"),
            "127.0.0.1",
        ]),
        &dir.join("ssh-dump.log"),
    )?;
    // The forward is there once ssh has logged in: connect until it answers with data.
    let deadline = Instant::now() + Duration::from_secs(60);
    let bytes = loop {
        let got = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
            let mut c = std::net::TcpStream::connect(("127.0.0.1", local))?;
            c.set_read_timeout(Some(Duration::from_secs(600)))?;
            let mut total = 0u64;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = c.read(&mut buf)?;
                if n == 0 {
                    return Ok(total);
                }
                total += n as u64;
            }
        })
        .await?;
        match got {
            Ok(n) if n > 0 => break n,
            _ if Instant::now() > deadline => bail!("the reference dump never arrived through ssh"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let secs = started.elapsed().as_secs_f64();
    server
        .join()
        .map_err(|_| anyhow::anyhow!("the dump server panicked"))??;
    let s = link.stats();
    Ok((s.bytes_down + s.bytes_up, bytes, secs))
}
