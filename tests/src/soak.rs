//! The flapping-link soak: the lab with writers on both sites, the link simulator driven
//! through a seeded random schedule of cut, blackhole, throttle and heal; afterwards zero
//! lost rows, `CHECKSUM TABLE` equal on every table, `in_sync` again after each heal
//! within a bound, and the agent's memory stable. Samples of verdict, lag per direction
//! and memory go to a JSON report and an SVG plot. Used by `cargo xtask soak` and by the
//! short soak in the tests.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::lab::{AgentMode, Lab, LabOptions};
use crate::workload::{self, Workload};

#[derive(Debug, Clone)]
pub struct SoakOptions {
    pub faults: usize,
    pub seed: u64,
    /// Where the lab lives and the report goes.
    pub dir: PathBuf,
    pub tether: PathBuf,
    /// Statements a second on each site (a quarter of them updates).
    pub rows_per_s: u32,
    /// How long each fault lasts, and the quiet time after each recovery.
    pub fault_len: (Duration, Duration),
    pub gap: (Duration, Duration),
    /// Bound on `in_sync` after each heal.
    pub recover_within: Duration,
    /// The throttled rate, bytes a second.
    pub throttle: u64,
}

impl SoakOptions {
    pub fn new(faults: usize, seed: u64, dir: PathBuf, tether: PathBuf) -> Self {
        SoakOptions {
            faults,
            seed,
            dir,
            tether,
            rows_per_s: 150,
            fault_len: (Duration::from_secs(2), Duration::from_secs(12)),
            gap: (Duration::from_secs(1), Duration::from_secs(5)),
            recover_within: Duration::from_secs(60),
            throttle: 16_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    Cut,
    Blackhole,
    Throttle,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    pub kind: Fault,
    pub start_s: f64,
    pub heal_s: f64,
    /// From the heal to `in_sync` (both directions running, lag within bounds).
    pub recovered_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub verdict: String,
    pub lag_hub_to_office_s: Option<u64>,
    pub lag_office_to_hub_s: Option<u64>,
    pub agent_rss_kb: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub seed: u64,
    pub faults: Vec<FaultRecord>,
    pub duration_s: f64,
    pub rows_acknowledged: (u64, u64),
    pub updates_acknowledged: (u64, u64),
    pub write_rate_per_s: f64,
    pub lost_rows: u64,
    pub checksums_equal: Vec<String>,
    pub max_recovery_s: f64,
    pub rss_start_kb: u64,
    pub rss_end_kb: u64,
    pub rss_growth_pct: f64,
    /// Configured secrets found in the agent's trace log, the journal or MQTT payloads.
    pub leaks: Vec<String>,
    pub samples: Vec<Sample>,
}

fn sample(doc: &serde_json::Value, t: f64, rss: Option<u64>) -> Sample {
    Sample {
        t_s: t,
        verdict: doc["verdict"].as_str().unwrap_or("unknown").to_owned(),
        lag_hub_to_office_s: doc["replication"]["hub_to_office"]["lag_s"].as_u64(),
        lag_office_to_hub_s: doc["replication"]["office_to_hub"]["lag_s"].as_u64(),
        agent_rss_kb: rss,
    }
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// Runs the soak; the report is returned and written to `dir/report.json` and
/// `dir/report.svg`. Fails when a check fails (the report is written first).
pub async fn run(opts: SoakOptions) -> Result<SoakReport> {
    std::fs::create_dir_all(&opts.dir)?;
    let mut lab_opts =
        LabOptions::office_link(opts.dir.join("lab"), AgentMode::Binary(opts.tether.clone()));
    // The line is fast between faults (a few hundred rows a second do not fit in 128
    // kbit/s); throttling to the office line's rate is one of the faults.
    lab_opts.rate = None;
    lab_opts.delay = Duration::from_millis(40);
    lab_opts.agent_env = vec![("RUST_LOG".into(), "trace".into())];
    let lab = Lab::start(lab_opts)
        .await
        .context("the lab did not come up")?;
    let broker = lab.fixture.broker();
    let tap =
        crate::secrets::MqttTap::start(&broker.host, broker.port, &opts.dir.join("mqtt.txt"))?;
    let (hub, office) = (lab.fixture.hub_db(), lab.fixture.office_db());
    workload::create_table(hub, office, Duration::from_secs(30)).await?;
    let mut writers = Workload::start(hub, office, opts.rows_per_s);
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut faults = Vec::new();
    let pid = lab.agent_pid().context("no agent pid")?;
    let t = |started: Instant| started.elapsed().as_secs_f64();

    // Warm-up: a minute's worth of steady writes is not needed; one quiet gap is.
    let keep_sampling = async |until: Instant, samples: &mut Vec<Sample>| {
        while Instant::now() < until {
            if let Ok(doc) = lab.state().await {
                samples.push(sample(&doc, t(started), crate::process::rss_kib(pid)));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    keep_sampling(Instant::now() + Duration::from_secs(3), &mut samples).await;
    let mut failure = None;
    for i in 0..opts.faults {
        let kind = match rng.random_range(0..3) {
            0 => Fault::Cut,
            1 => Fault::Blackhole,
            _ => Fault::Throttle,
        };
        let len = rng.random_range(opts.fault_len.0..=opts.fault_len.1);
        let gap = rng.random_range(opts.gap.0..=opts.gap.1);
        let start_s = t(started);
        match kind {
            Fault::Cut => lab.link.cut(),
            Fault::Blackhole => lab.link.blackhole(),
            Fault::Throttle => lab.link.set_rate(Some(opts.throttle)),
        }
        keep_sampling(Instant::now() + len, &mut samples).await;
        lab.link.heal();
        lab.link.set_rate(None);
        let heal_s = t(started);
        let healed = Instant::now();
        let recovered = loop {
            if let Ok(doc) = lab.state().await {
                samples.push(sample(&doc, t(started), crate::process::rss_kib(pid)));
                if doc["verdict"] == "in_sync" && doc["tunnel"]["up"] == true {
                    break Some(healed.elapsed());
                }
            }
            if healed.elapsed() > opts.recover_within {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let Some(recovered) = recovered else {
            failure = Some(format!(
                "fault {} ({kind:?} for {len:?}): not in_sync within {:?} of the heal",
                i + 1,
                opts.recover_within
            ));
            break;
        };
        eprintln!(
            "soak: fault {}/{} {kind:?} for {len:.1?}: in_sync {recovered:.1?} after the heal",
            i + 1,
            opts.faults
        );
        faults.push(FaultRecord {
            kind,
            start_s,
            heal_s,
            recovered_s: recovered.as_secs_f64(),
        });
        keep_sampling(Instant::now() + gap, &mut samples).await;
    }
    writers.stop().await;
    let counts = writers.inserted();
    let updates = writers.updated();
    let duration_s = t(started);
    let converged = workload::wait_converged(hub, office, counts, Duration::from_secs(120)).await;
    let mut lost = 0;
    for (db, site, want) in [
        (hub, "hub", counts.0),
        (hub, "office", counts.1),
        (office, "hub", counts.0),
        (office, "office", counts.1),
    ] {
        let have = db.count(&format!(
            "SELECT COUNT(*) FROM {} WHERE site = '{site}'",
            workload::TABLE
        ));
        lost += want.saturating_sub(have);
    }
    // Every table of the application schema, compared on both sides.
    let tables = hub
        .sql("SELECT CONCAT(table_schema, '.', table_name) FROM information_schema.tables WHERE table_schema = 'app'")
        .unwrap_or_default();
    let mut equal = Vec::new();
    for table in tables.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (a, b) = (
            workload::checksum(hub, table),
            workload::checksum(office, table),
        );
        if a.is_empty() || a != b {
            failure.get_or_insert(format!("CHECKSUM TABLE {table}: hub {a}, office {b}"));
        } else {
            equal.push(table.to_owned());
        }
    }
    // Memory: the agent after the first fault against its end, medians of the samples.
    let rss: Vec<(f64, u64)> = samples
        .iter()
        .filter_map(|s| Some((s.t_s, s.agent_rss_kb?)))
        .collect();
    let first_heal = faults.first().map_or(0.0, |f| f.heal_s);
    let after: Vec<(f64, u64)> = rss
        .iter()
        .copied()
        .filter(|(t, _)| *t >= first_heal)
        .collect();
    let n = (after.len() / 5).max(1);
    let rss_start = median(after.iter().take(n).map(|x| x.1).collect());
    let rss_end = median(after.iter().rev().take(n).map(|x| x.1).collect());
    let growth = if rss_start > 0 {
        (rss_end as f64 - rss_start as f64) / rss_start as f64 * 100.0
    } else {
        0.0
    };
    drop(tap);
    let mut secrets = crate::secrets::Secrets::of_fixture(&lab.fixture)?;
    secrets.add("hub agent password", lab.config.hub_db.password.expose());
    let mut leaks = secrets.scan_file("agent log", &lab.dir().join("agent.log"));
    leaks.extend(secrets.scan_file("MQTT payloads", &opts.dir.join("mqtt.txt")));
    leaks.extend(secrets.scan_file(
        "journal",
        &lab.config.data.dir.join(tether::journal::FILE_NAME),
    ));
    let report = SoakReport {
        seed: opts.seed,
        max_recovery_s: faults.iter().map(|f| f.recovered_s).fold(0.0, f64::max),
        faults,
        duration_s,
        rows_acknowledged: counts,
        updates_acknowledged: updates,
        write_rate_per_s: (counts.0 + counts.1 + updates.0 + updates.1) as f64 / duration_s,
        lost_rows: lost,
        checksums_equal: equal,
        rss_start_kb: rss_start,
        rss_end_kb: rss_end,
        rss_growth_pct: growth,
        leaks: leaks.clone(),
        samples,
    };
    std::fs::write(
        opts.dir.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(opts.dir.join("report.svg"), svg(&report))?;
    drop(lab);
    if let Err(e) = converged {
        failure.get_or_insert(format!("{e:#}"));
    }
    if !leaks.is_empty() {
        failure.get_or_insert(format!("secrets leaked: {leaks:?}"));
    }
    if lost > 0 {
        failure.get_or_insert(format!("{lost} rows lost"));
    }
    if growth >= 10.0 {
        failure.get_or_insert(format!(
            "agent memory grew {growth:.1}% ({rss_start} kB -> {rss_end} kB)"
        ));
    }
    if let Some(f) = failure {
        bail!("soak (seed {}): {f}", opts.seed);
    }
    Ok(report)
}

/// The plot: verdict as a coloured band, lag per direction as lines, faults shaded.
pub fn svg(r: &SoakReport) -> String {
    let (w, h, left, top, plot_h) = (1000.0, 360.0, 60.0, 30.0, 250.0);
    let plot_w = w - left - 20.0;
    let end = r.samples.last().map_or(1.0, |s| s.t_s).max(1.0);
    let max_lag = r
        .samples
        .iter()
        .flat_map(|s| [s.lag_hub_to_office_s, s.lag_office_to_hub_s])
        .flatten()
        .max()
        .unwrap_or(0)
        .max(10) as f64;
    let x = |t: f64| left + t / end * plot_w;
    let y = |lag: f64| top + plot_h - lag / max_lag * plot_h;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        s,
        r#"<text x="{left}" y="18">tether soak, seed {}: {} faults, verdict and replication lag per direction</text>"#,
        r.seed,
        r.faults.len()
    );
    for f in &r.faults {
        let colour = match f.kind {
            Fault::Cut => "#f4cccc",
            Fault::Blackhole => "#d9d2e9",
            Fault::Throttle => "#fff2cc",
        };
        let _ = write!(
            s,
            r#"<rect x="{:.1}" y="{top}" width="{:.1}" height="{plot_h}" fill="{colour}"><title>{:?}</title></rect>"#,
            x(f.start_s),
            (x(f.heal_s) - x(f.start_s)).max(1.0),
            f.kind
        );
    }
    // The verdict band under the plot, one rectangle per run of the same verdict.
    let mut runs: Vec<(f64, f64, &str)> = Vec::new();
    for pair in r.samples.windows(2) {
        match runs.last_mut() {
            Some(run) if run.2 == pair[0].verdict => run.1 = pair[1].t_s,
            _ => runs.push((pair[0].t_s, pair[1].t_s, pair[0].verdict.as_str())),
        }
    }
    for (from, to, verdict) in runs {
        let colour = match verdict {
            "in_sync" => "#2e7d32",
            "catching_up" => "#9ccc65",
            "link_down" => "#ffa000",
            "needs_attention" => "#c62828",
            _ => "#9e9e9e",
        };
        let _ = write!(
            s,
            r#"<rect x="{:.1}" y="{}" width="{:.1}" height="14" fill="{colour}"><title>{verdict}</title></rect>"#,
            x(from),
            top + plot_h + 10.0,
            (x(to) - x(from)).max(0.5)
        );
    }
    for (pick, colour, label) in [
        (0usize, "#1565c0", "lag hub to office (s)"),
        (1, "#6a1b9a", "lag office to hub (s)"),
    ] {
        let mut d = String::new();
        for sm in &r.samples {
            let lag = if pick == 0 {
                sm.lag_hub_to_office_s
            } else {
                sm.lag_office_to_hub_s
            };
            if let Some(l) = lag {
                let _ = write!(
                    d,
                    "{}{:.1},{:.1} ",
                    if d.is_empty() { "M" } else { "L" },
                    x(sm.t_s),
                    y(l as f64)
                );
            }
        }
        let _ = write!(
            s,
            r#"<path d="{d}" fill="none" stroke="{colour}" stroke-width="1.5"/>"#
        );
        let ly = top + 14.0 + pick as f64 * 16.0;
        let _ = write!(
            s,
            r#"<line x1="{:.0}" y1="{ly}" x2="{:.0}" y2="{ly}" stroke="{colour}" stroke-width="2"/><text x="{:.0}" y="{:.0}">{label}</text>"#,
            w - 230.0,
            w - 210.0,
            w - 205.0,
            ly + 4.0
        );
    }
    let _ = write!(
        s,
        r#"<line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/><line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
        top + plot_h,
        top + plot_h,
        left + plot_w,
        top + plot_h
    );
    let _ = write!(
        s,
        r#"<text x="5" y="{:.0}">{max_lag:.0} s</text><text x="5" y="{:.0}">0 s</text><text x="{left}" y="{:.0}">0 s</text><text x="{:.0}" y="{:.0}">{end:.0} s</text>"#,
        top + 10.0,
        top + plot_h,
        top + plot_h + 40.0,
        left + plot_w - 40.0,
        top + plot_h + 40.0
    );
    let _ = write!(
        s,
        r##"<text x="{left}" y="{:.0}">verdict: <tspan fill="#2e7d32">in_sync</tspan> <tspan fill="#9ccc65">catching_up</tspan> <tspan fill="#ffa000">link_down</tspan> <tspan fill="#c62828">needs_attention</tspan>; faults shaded: <tspan fill="#e06666">cut</tspan> <tspan fill="#8e7cc3">blackhole</tspan> <tspan fill="#bf9000">throttle</tspan>; agent RSS {} kB to {} kB ({:+.1}%)</text>"##,
        top + plot_h + 60.0,
        r.rss_start_kb,
        r.rss_end_kb,
        r.rss_growth_pct
    );
    s.push_str("</svg>\n");
    s
}

/// The report's summary in a few lines.
pub fn summary(r: &SoakReport, dir: &Path) -> String {
    format!(
        "soak seed {}: {} faults in {:.0} s; secrets found {}; rows acknowledged (hub, office) {:?}, updates {:?}, {:.0} writes/s; lost {}; CHECKSUM TABLE equal on {:?}; in_sync at most {:.1} s after a heal; agent RSS {} -> {} kB ({:+.1}%); report {}",
        r.seed,
        r.faults.len(),
        r.duration_s,
        r.leaks.len(),
        r.rows_acknowledged,
        r.updates_acknowledged,
        r.write_rate_per_s,
        r.lost_rows,
        r.checksums_equal,
        r.max_recovery_s,
        r.rss_start_kb,
        r.rss_end_kb,
        r.rss_growth_pct,
        dir.join("report.svg").display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plot_has_both_lags_the_faults_and_one_band_per_verdict_run() {
        let at = |t: f64, verdict: &str, lag: Option<u64>| Sample {
            t_s: t,
            verdict: verdict.into(),
            lag_hub_to_office_s: lag,
            lag_office_to_hub_s: lag.map(|l| l + 1),
            agent_rss_kb: Some(15_000),
        };
        let report = SoakReport {
            seed: 7,
            faults: vec![FaultRecord {
                kind: Fault::Cut,
                start_s: 1.0,
                heal_s: 3.0,
                recovered_s: 1.5,
            }],
            duration_s: 6.0,
            rows_acknowledged: (10, 10),
            updates_acknowledged: (2, 2),
            write_rate_per_s: 4.0,
            lost_rows: 0,
            checksums_equal: vec!["app.soak".into()],
            max_recovery_s: 1.5,
            rss_start_kb: 15_000,
            rss_end_kb: 15_000,
            rss_growth_pct: 0.0,
            leaks: Vec::new(),
            samples: vec![
                at(0.0, "in_sync", Some(0)),
                at(1.0, "in_sync", Some(0)),
                at(2.0, "link_down", None),
                at(3.0, "link_down", None),
                at(4.0, "catching_up", Some(12)),
                at(5.0, "in_sync", Some(1)),
                at(6.0, "in_sync", Some(0)),
            ],
        };
        let svg = svg(&report);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<path").count(), 2);
        assert_eq!(svg.matches("<title>in_sync</title>").count(), 2);
        assert_eq!(svg.matches("<title>link_down</title>").count(), 1);
        assert_eq!(svg.matches("<title>Cut</title>").count(), 1);
    }
}
