//! The command line: `run`, `check-config`, `doctor`, `status`, `enroll`, `version`.
//!
//! Exit codes: 0 ok, 1 a run-time failure, 2 a usage or configuration error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::Config;

const DEFAULT_CONFIG: &str = "/etc/tether/tether.toml";

#[derive(Parser, Debug)]
#[command(
    name = "tether",
    version,
    about = "Keeps an office database and its hub in sync over one supervised SSH connection"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the agent (what the systemd unit starts).
    Run {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Check a configuration file: exit 0 if good, else print where it is wrong.
    CheckConfig { path: PathBuf },
    /// One-shot checks of both databases and the link, each finding with its fix.
    Doctor {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Sample DB.TABLE.COLUMN and look for timestamps whose minute always equals the month.
        #[arg(long, value_name = "DB.TABLE.COLUMN")]
        timestamps: Option<String>,
    },
    /// The running agent's health (or the last saved one, marked stale).
    Status {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The MQTT state document instead of words.
        #[arg(long)]
        json: bool,
    },
    /// Create the device key if missing and print what the hub admin must install.
    Enroll {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Connect to the hub, show its host key fingerprint and pin it.
        #[arg(long)]
        pin: bool,
    },
    /// Print the version.
    Version,
}

/// Parses the arguments and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Version => {
            println!(
                "tether {} ({}-{})",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::ARCH,
                std::env::consts::OS
            );
            ExitCode::SUCCESS
        }
        Cmd::CheckConfig { path } => match Config::load(&path) {
            Ok(_) => {
                println!("{}: ok", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Cmd::Run { config } => with_config(&config, |c| {
            crate::logging::init(&c.log.level);
            runtime()?.block_on(crate::app::run_until_signal(c))
        }),
        Cmd::Status { config, json } => with_config(&config, |c| status(&c, json)),
        Cmd::Enroll { config, pin } => with_config(&config, |c| {
            crate::logging::init(&c.log.level);
            runtime()?.block_on(crate::app::enroll(c, pin))
        }),
        Cmd::Doctor { config, .. } => with_config(&config, |_| {
            eprintln!("tether doctor: not implemented yet (comes with replication supervision)");
            Err(anyhow::anyhow!("doctor is not available in this build").context(Usage))
        }),
    }
}

/// Marks an error as a usage error (exit 2).
#[derive(Debug)]
pub struct Usage;

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("usage")
    }
}

fn with_config(path: &Path, f: impl FnOnce(Config) -> anyhow::Result<()>) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match f(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Usage>().is_some() => ExitCode::from(2),
        Err(e) => {
            eprintln!("tether: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The agent's runtime: one thread is plenty for a 128 kbit/s link and measured fastest
/// for bulk forwarding too.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn status(config: &Config, json: bool) -> anyhow::Result<()> {
    let rt = runtime()?;
    let live = rt.block_on(crate::status::query(
        &config.status.socket,
        Duration::from_secs(3),
    ));
    let (doc, stale) = match live {
        Ok(doc) => (
            serde_json::from_str::<serde_json::Value>(doc.trim())?,
            false,
        ),
        Err(_) => {
            let journal = crate::journal::Journal::new(&config.data.dir).load();
            (crate::app::stale_document(&journal.state), true)
        }
    };
    if json {
        println!("{doc}");
    } else {
        print!("{}", crate::app::describe(&doc, stale));
    }
    Ok(())
}
