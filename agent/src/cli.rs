//! The command line: `run`, `check-config`, `doctor`, `status`, `enroll`, `seed`,
//! `setup`, `web-passwd`, `fleet`, `version`.
//!
//! Exit codes: 0 ok, 1 a run-time failure, 2 a usage or configuration error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::Config;

/// Where `run`, `doctor`, `status` and `enroll` look without `--config`.
pub const DEFAULT_CONFIG: &str = "/etc/tether/tether.toml";

/// The parsed command line.
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
    /// Run the agent (what the systemd unit starts): the launcher, which runs the
    /// installed version as its child and rolls a failed update back.
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
        /// Also compare `replication.checksum_tables` on both sides now (CHECKSUM TABLE).
        #[arg(long)]
        checksums: bool,
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
        /// This office's number on a hub with several offices (its server_id, GTID
        /// domain and auto_increment_offset; the hub is 1): instead of the next free one
        /// read from the hub through the running agent's tunnel.
        #[arg(long, value_name = "N")]
        site_number: Option<u64>,
    },
    /// The office's first copy of the hub's data (or, with --to-hub, a new and empty
    /// hub's first copy of the office's): checks both databases, prepares the side to
    /// fill, hands the copy to the running agent and shows its progress. Asks for an
    /// administrator password of each database (from the terminal, or one line each on
    /// stdin, the hub's first) and never stores them.
    Seed {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Fill a new, empty hub from the office's data instead (the hub must hold no
        /// data).
        #[arg(long, conflicts_with_all = ["replace", "backup"])]
        to_hub: bool,
        /// Replace the office's data with the hub's, after saving it to a backup file.
        #[arg(long)]
        replace: bool,
        /// Where that backup goes (default: the data dir, named after the moment).
        #[arg(long, value_name = "FILE")]
        backup: Option<PathBuf>,
        /// The hub database's administrator.
        #[arg(long, default_value = "root", value_name = "USER")]
        hub_admin: String,
        /// The office database's administrator.
        #[arg(long, default_value = "root", value_name = "USER")]
        office_admin: String,
        /// Start without asking.
        #[arg(long)]
        yes: bool,
        /// Return once the agent has the seed (`tether seed` shows it again).
        #[arg(long)]
        detach: bool,
        /// Stop and forget the seed, and drop its accounts.
        #[arg(long, conflicts_with = "replace")]
        cancel: bool,
    },
    /// Set the site up from "tunnel up, two database servers" to in sync: the doctor's
    /// checks, the settings a server can change live, the replication and monitoring
    /// accounts (the agent's passwords written into the config), the office's first copy
    /// of the hub's data, and replication both ways. Asks for an administrator password
    /// of each database (or reads them from `--admin-passwords` or the environment
    /// variables TETHER_HUB_ADMIN_PASSWORD and TETHER_OFFICE_ADMIN_PASSWORD) and never
    /// stores them.
    Setup {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The hub database's administrator.
        #[arg(long, default_value = "root", value_name = "USER")]
        hub_admin: String,
        /// The office database's administrator.
        #[arg(long, default_value = "root", value_name = "USER")]
        office_admin: String,
        /// A file holding the two administrator passwords: the hub's on the first line,
        /// the office's on the second.
        #[arg(long, value_name = "FILE")]
        admin_passwords: Option<PathBuf>,
        /// Go ahead without asking.
        #[arg(long)]
        yes: bool,
        /// Replace the office's data with the hub's, after saving it to a backup file.
        #[arg(long)]
        replace: bool,
        /// Where that backup goes (default: the data dir, named after the moment).
        #[arg(long, value_name = "FILE")]
        backup: Option<PathBuf>,
    },
    /// Hash a password for the status page's basic auth (`web.password_hash`): reads it
    /// twice from the terminal (or once from a pipe) and prints the config lines.
    #[cfg(feature = "web")]
    WebPasswd {
        /// The user to write into `web.user`.
        #[arg(long, default_value = "office")]
        user: String,
    },
    /// The whole fleet from the broker's retained states, for the person who runs the
    /// hub: every site's verdict and since when, lag per direction, last error, and which
    /// boxes went silent (a table, `--json`, or a Prometheus exporter with `--listen`).
    Fleet {
        /// The fleet view's file (default /etc/tether/fleet.toml if it exists, else the
        /// broker on this machine with the sites' defaults).
        #[arg(long)]
        config: Option<PathBuf>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Keep running and serve /metrics (Prometheus, labelled by site), / and
        /// /fleet.json here, e.g. 127.0.0.1:9187.
        #[arg(long, value_name = "HOST:PORT")]
        listen: Option<crate::config::Addr>,
    },
    /// Print the version.
    Version,
}

/// Exit code of a usage or configuration error.
pub const EXIT_USAGE: u8 = 2;

/// Runs the parsed command line; `main.rs` only parses.
pub fn main(cli: Cli) -> ExitCode {
    match cli.cmd {
        Cmd::Version => {
            println!(
                "{} {} {}",
                env!("CARGO_PKG_NAME"),
                crate::version::current(),
                target_triple()
            );
            ExitCode::SUCCESS
        }
        #[cfg(feature = "web")]
        Cmd::WebPasswd { user } => match web_passwd(&user) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tether web-passwd: {e}");
                ExitCode::from(EXIT_USAGE)
            }
        },
        Cmd::Fleet {
            config,
            json,
            listen,
        } => crate::fleet::command(config, json, listen),
        Cmd::CheckConfig { path } => match Config::load(&path) {
            Ok(_) => {
                println!("{}: ok", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_USAGE)
            }
        },
        // Started by a person or the service manager: the launcher. Started by the
        // launcher (its pipe in the environment): the agent.
        Cmd::Run { config }
            if std::env::var_os(crate::updates::launcher::ENV_SUPERVISOR).is_none() =>
        {
            crate::updates::launcher::main(&config)
        }
        Cmd::Run { config } => with_config(&config, |c| {
            crate::logging::init(&c.log.level);
            crate::leds::install_panic_hook();
            let data_dir = c.data.dir.clone();
            runtime()?.block_on(crate::app::run_until_signal(c))?;
            Ok(if crate::updates::switch_requested(&data_dir) {
                ExitCode::from(crate::updates::launcher::SWITCH_EXIT)
            } else {
                ExitCode::SUCCESS
            })
        }),
        Cmd::Seed {
            config,
            to_hub,
            replace,
            backup,
            hub_admin,
            office_admin,
            yes,
            detach,
            cancel,
        } => with_config(&config, |c| {
            crate::logging::init(&c.log.level);
            let args = crate::seed::command::SeedArgs {
                to_hub,
                replace,
                backup,
                hub_admin,
                office_admin,
                yes,
                detach,
                cancel,
            };
            Ok(crate::seed::command::main(&c, &args))
        }),
        Cmd::Setup {
            config,
            hub_admin,
            office_admin,
            admin_passwords,
            yes,
            replace,
            backup,
        } => with_config(&config, |c| {
            crate::logging::init(&c.log.level);
            let args = crate::setup::command::SetupArgs {
                config_path: config.clone(),
                hub_admin,
                office_admin,
                admin_passwords,
                yes,
                replace,
                backup,
            };
            Ok(crate::setup::command::main(&c, &args))
        }),
        Cmd::Status { config, json } => with_config(&config, |c| {
            status(&c, json)?;
            Ok(ExitCode::SUCCESS)
        }),
        Cmd::Enroll {
            config,
            pin,
            site_number,
        } => with_config(&config, |c| {
            crate::logging::init(&c.log.level);
            runtime()?.block_on(crate::enroll::run(&c, pin, site_number))?;
            Ok(ExitCode::SUCCESS)
        }),
        Cmd::Doctor {
            config,
            timestamps,
            checksums,
        } => with_config(&config, |c| {
            if let Some(Err(e)) = timestamps.as_deref().map(crate::doctor::parse_column) {
                eprintln!("tether doctor: {e}");
                return Ok(ExitCode::from(EXIT_USAGE));
            }
            let rt = runtime()?;
            let mut findings =
                rt.block_on(crate::doctor::command::doctor(&c, timestamps.as_deref()))?;
            if checksums {
                findings.extend(rt.block_on(crate::doctor::command::divergence(
                    &c,
                    3,
                    Duration::from_secs(10),
                )));
            }
            print!("{}", crate::doctor::describe(&findings));
            Ok(if crate::doctor::command::needs_a_person(&findings) {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }),
    }
}

/// The target this binary was built for, e.g. `aarch64-unknown-linux-gnu`.
///
/// Composed from `cfg` values (exact for the Linux targets the product ships for) so the
/// crate needs no build script.
pub fn target_triple() -> String {
    let vendor = if cfg!(target_vendor = "apple") {
        "apple"
    } else if cfg!(target_vendor = "pc") {
        "pc"
    } else {
        "unknown"
    };
    let env = if cfg!(target_env = "gnu") {
        "gnu"
    } else if cfg!(target_env = "musl") {
        "musl"
    } else if cfg!(target_env = "msvc") {
        "msvc"
    } else {
        ""
    };
    let abi = if cfg!(target_abi = "eabihf") {
        "eabihf"
    } else if cfg!(target_abi = "eabi") {
        "eabi"
    } else {
        ""
    };
    let mut triple = format!(
        "{}-{vendor}-{}",
        std::env::consts::ARCH,
        std::env::consts::OS
    );
    if !env.is_empty() || !abi.is_empty() {
        triple.push('-');
        triple.push_str(env);
        triple.push_str(abi);
    }
    triple
}

/// Loads the config (a located error and exit 2 if it is bad), then runs `f`: its error
/// is a run-time failure (exit 1).
fn with_config(path: &Path, f: impl FnOnce(Config) -> anyhow::Result<ExitCode>) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            crate::logging::fatal(&e.to_string());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match f(config) {
        Ok(code) => code,
        Err(e) => {
            crate::logging::fatal(&format!("tether: {e:#}"));
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
            // Read only: the file belongs to the agent, which may start any moment.
            let state = crate::journal::Journal::new(&config.data.dir)
                .read()
                .unwrap_or_else(|e| {
                    eprintln!("The state journal cannot be read ({e}).");
                    crate::journal::State::default()
                });
            (crate::status::words::stale_document(&state), true)
        }
    };
    if json {
        println!("{doc}");
    } else {
        print!("{}", crate::status::words::describe(&doc, stale));
    }
    Ok(())
}

/// `tether web-passwd`: the `[web]` lines for a user and a password read from stdin.
#[cfg(feature = "web")]
fn web_passwd(user: &str) -> anyhow::Result<()> {
    use crate::secret::Secret;
    use std::io::{BufRead, IsTerminal, Write};
    if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) {
        anyhow::bail!("the user must be non-empty, without `:` or control characters");
    }
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    let read = |prompt: &str| -> anyhow::Result<String> {
        if tty {
            eprint!("{prompt}");
            std::io::stderr().flush()?;
        }
        let _echo = tty.then(EchoOff::new);
        let mut line = String::new();
        stdin.lock().read_line(&mut line)?;
        if tty {
            eprintln!();
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    };
    let password: Secret = read("Password for the status page: ")?.into();
    if tty && read("Again: ")? != password.expose() {
        anyhow::bail!("the two passwords differ");
    }
    if password.expose().chars().count() < 8 {
        anyhow::bail!("use at least 8 characters");
    }
    let hash = crate::passwd::PasswordHash::create(&password, crate::passwd::DEFAULT_ITERATIONS);
    println!(
        "[web]\nuser = \"{user}\"\npassword_hash = \"{}\"",
        hash.to_phc().expose()
    );
    Ok(())
}

/// Turns terminal echo off on stdin until dropped.
pub(crate) struct EchoOff(Option<libc::termios>);

impl EchoOff {
    pub(crate) fn new() -> Self {
        // SAFETY: tcgetattr/tcsetattr only read and write the termios struct on this
        // stack frame; fd 0 is stdin.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return EchoOff(None);
            }
            let saved = t;
            t.c_lflag &= !libc::ECHO;
            libc::tcsetattr(0, libc::TCSANOW, &t);
            EchoOff(Some(saved))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(t) = self.0 {
            // SAFETY: restores the settings read in `new`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, &t);
            }
        }
    }
}
