//! `tether doctor`: the checks once, from the command line, against the config's
//! databases (the hub's through the running agent's local forward), judged against the
//! outages the agent recorded in its journal.

use std::time::Duration;

use anyhow::Result;

use crate::config::Config;
use crate::events::{Finding, Severity};

/// Bound on one CHECKSUM TABLE (it reads the whole table).
pub const CHECKSUM_TIMEOUT: Duration = Duration::from_secs(600);

/// What the doctor expects of this site: two sites, and binary logs that outlast the
/// longest outage recorded in the journal (read only: the running agent owns the file).
pub fn expectations(config: &Config) -> super::Expectations {
    let journal = crate::journal::Journal::new(&config.data.dir);
    let longest_outage = match journal.read() {
        Ok(state) => state
            .longest_outage
            .map_or(Duration::ZERO, |o| Duration::from_millis(o.length_ms)),
        Err(e) => {
            eprintln!("The state journal cannot be read ({e}); no outage is taken into account.");
            Duration::ZERO
        }
    };
    super::Expectations {
        longest_outage,
        other_offices: true,
        ..super::expectations_of(config)
    }
}

/// Examines both databases and, with `timestamps`, samples that column for the
/// minute-equals-month mistake. Returns the findings.
pub async fn doctor(config: &Config, timestamps: Option<&str>) -> Result<Vec<Finding>> {
    let (office, hub) = crate::app::db_targets(config);
    let timeout = config.replication.query_timeout.max(Duration::from_secs(5));
    let mut findings = super::examine(&office, &hub, timeout, &expectations(config)).await;
    if let Some(column) = timestamps {
        let samples = super::sample_column(&office, timeout, column)
            .await
            .map_err(anyhow::Error::msg)?;
        match super::minute_equals_month(column, &samples) {
            Some(f) => findings.push(f),
            None => println!(
                "{column}: {} values sampled; minutes and months look independent.",
                samples.len()
            ),
        }
    }
    if findings
        .iter()
        .any(|f| super::SETUP_CODES.contains(&f.code.as_str()))
    {
        println!("The recommended replication setup, with reasons:\n");
        match crate::enroll::setup_dialect(config).await {
            Ok(d) => println!("{}\n", crate::hubkit::replication_setup_for(&d, config)),
            Err(e) => println!("{e:#}\n"),
        }
    }
    Ok(findings)
}

/// The divergence check now (what the agent runs daily at `checksum_hour`): each
/// configured table compared on both sides, a difference checked `tries` times, `settle`
/// apart.
pub async fn divergence(config: &Config, tries: u32, settle: Duration) -> Vec<Finding> {
    let (office, hub) = crate::app::db_targets(config);
    super::compare_tables(
        &office,
        &hub,
        &config.replication.checksum_tables,
        CHECKSUM_TIMEOUT,
        tries,
        settle,
    )
    .await
}

/// The exit status the findings call for: 1 when a person must act, which includes a
/// check that could not run at all.
pub fn needs_a_person(findings: &[Finding]) -> bool {
    findings
        .iter()
        .any(|f| f.severity == Severity::NeedsAttention || super::could_not_run(f))
}
