//! The short soak of the test command: ten seeded faults (cut, blackhole, throttle) on
//! the lab's link while both sites write; nothing lost, checksums equal, `in_sync` after
//! each heal within the bound, agent memory stable. `cargo xtask soak --faults 50` is
//! the long one.

use std::time::Duration;

use tether_harness::process::tether_bin;
use tether_harness::soak::{self, SoakOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_faults_on_a_flapping_link_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let seed = std::env::var("TETHER_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let mut opts = SoakOptions::new(10, seed, dir.path().to_path_buf(), tether_bin());
    opts.rows_per_s = 100;
    opts.fault_len = (Duration::from_secs(2), Duration::from_secs(5));
    opts.gap = (Duration::from_secs(1), Duration::from_secs(2));
    let report = soak::run(opts).await.unwrap();
    eprintln!("{}", soak::summary(&report, dir.path()));
    assert_eq!(report.faults.len(), 10);
    assert_eq!(report.lost_rows, 0);
    assert!(report.checksums_equal.iter().any(|t| t == "app.soak"));
    let svg = std::fs::read_to_string(dir.path().join("report.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<path"));
}
