//! Log set-up: tracing to stderr, level from the config, `RUST_LOG` overriding it.

use tracing_subscriber::EnvFilter;

/// The filter in force: `RUST_LOG` if set and valid, else the config's level, else `info`.
///
/// An invalid `RUST_LOG` is ignored rather than fatal: it comes from whoever started the
/// process, and the config level has already been checked.
pub fn filter(level_from_config: &str, rust_log: Option<&str>) -> EnvFilter {
    rust_log
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(level_from_config).ok())
        .unwrap_or_else(|| EnvFilter::new("info"))
}

/// Installs the global subscriber, writing to stderr. Only the first call installs
/// anything; later calls (tests, a second command in one process) are no-ops.
pub fn init(level_from_config: &str) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(level_from_config, rust_log.as_deref()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_overrides_the_config() {
        assert_eq!(
            filter("info", Some("tether=trace")).to_string(),
            "tether=trace"
        );
        assert_eq!(filter("debug", None).to_string(), "debug");
        assert_eq!(filter("debug", Some("")).to_string(), "debug");
        assert_eq!(filter("debug", Some("=[bad")).to_string(), "debug");
        assert_eq!(filter("=[bad", None).to_string(), "info");
    }

    #[test]
    fn init_twice_does_not_panic() {
        init("info");
        init("debug");
        tracing::info!("logging works after a second init");
    }
}
