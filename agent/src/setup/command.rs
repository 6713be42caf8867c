//! `tether setup`: the guided setup of a site, from "tunnel up, two database servers" to
//! in sync.
//!
//! In order, and nothing changed before the person said yes (or `--yes`):
//! 1. an administrator login to each database (the hub's through the running agent's
//!    tunnel), used by this process only, never stored or logged;
//! 2. the doctor's checks on both servers: what would make replication unsafe stops it
//!    with its fix, what needs a restart is printed as `[mysqld]` lines (run it again
//!    after the restart), what a server can change live is shown;
//! 3. which way the first copy goes: the office from the hub, or, when the hub holds no
//!    data and the office does (a new hub), the hub from the office; then the seed's own
//!    checks (its refusals: data where the copy goes, retention against the estimated
//!    copy, tables without a primary key, different families);
//! 4. after one confirmation: the live settings, the replication and monitoring accounts
//!    with generated passwords (the agent's written into `tether.toml`, the replication
//!    ones only into the servers' replica settings), the agent restarted to read them,
//!    the seed (the existing job, with its progress bar), then both directions started
//!    and the agent's verdict awaited until `in_sync`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;

use super::resume::{self, Earlier, Pending, Step};
use super::{Side, accounts_sql, plan_settings};
use crate::config::Config;
use crate::dialect::{Dialect, Family, Threads};
use crate::events::Direction;
use crate::replication::bounded;
use crate::secret::Secret;
use crate::seed::command::{Admin, Admins, Attached, Refused, SeedArgs, confirm};
use crate::seed::job::Job;

/// Bound on each administrative query.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the agent may take to come back after its restart.
const RESTART_BOUND: Duration = Duration::from_secs(600);
/// How long replication may take to reach in_sync once both directions run.
const IN_SYNC_BOUND: Duration = Duration::from_secs(600);
/// Environment variables that may hold the administrator passwords (for unattended use;
/// never the command line, where every user of the machine can read them).
pub const HUB_ADMIN_PASSWORD_ENV: &str = "TETHER_HUB_ADMIN_PASSWORD";
pub const OFFICE_ADMIN_PASSWORD_ENV: &str = "TETHER_OFFICE_ADMIN_PASSWORD";

/// What the person asked for.
#[derive(Debug, Clone)]
pub struct SetupArgs {
    /// The config file (its agent passwords are rewritten).
    pub config_path: PathBuf,
    pub hub_admin: String,
    pub office_admin: String,
    /// A file with the two administrator passwords, the hub's on the first line.
    pub admin_passwords: Option<PathBuf>,
    pub yes: bool,
    pub replace: bool,
    pub backup: Option<PathBuf>,
}

/// `tether setup`: exit 0 in sync, 1 when it stopped (refused, restart needed, failed).
pub fn main(config: &Config, args: &SetupArgs) -> std::process::ExitCode {
    crate::seed::command::run_to_exit("tether setup", setup(config, args))
}

async fn setup(config: &Config, args: &SetupArgs) -> Result<(), Refused> {
    let t = ADMIN_TIMEOUT;
    let mut seed_args = SeedArgs {
        to_hub: false,
        replace: args.replace,
        backup: args.backup.clone(),
        hub_admin: args.hub_admin.clone(),
        office_admin: args.office_admin.clone(),
        yes: args.yes,
        detach: false,
        cancel: false,
    };
    let data_dir = &config.data.dir;
    // Held to the end: a second setup on the box (run again from another terminal while
    // this one still runs) would position a replica this one has started.
    let _only_one = resume::only_one(data_dir)?;
    let earlier_job = Job::load(data_dir)?;
    let going_on = match resume::judge(Pending::load(data_dir)?, earlier_job.as_ref()) {
        Earlier::Nothing => None,
        Earlier::Stale => {
            Pending::clear(data_dir)?;
            None
        }
        Earlier::Failed { message } => {
            Pending::clear(data_dir)?;
            let direction = earlier_job
                .as_ref()
                .map_or(Direction::HubToOffice, |j| j.direction);
            return Err(Refused(vec![
                format!(
                    "An earlier `tether setup` handed the {}'s copy of the {}'s data to the agent, and the copy stopped: {message}",
                    direction.replica_side(),
                    direction.source_side()
                ),
                match direction {
                    Direction::HubToOffice => "Once that is put right, `tether setup --replace` starts the copy over (it saves the office's partly copied rows to a backup file first).".to_owned(),
                    Direction::OfficeToHub => "Once that is put right, `tether setup` starts the copy over (the hub's partly copied rows are replaced).".to_owned(),
                },
            ]));
        }
        Earlier::GoOn(pending) => Some(pending),
    };
    if args.replace && going_on.is_some() {
        return Err(Refused(vec![
            "An earlier `tether setup` on this box is not finished: run `tether setup` without --replace to finish it, or `tether seed --cancel` first to start over. Nothing was changed.".into(),
        ]));
    }
    let (hub_admin, office_admin) = admin_logins(args, &seed_args)?;
    println!("Step 1 of 5: checking both databases.");
    let admins = Admins::connect(config, &hub_admin, &office_admin).await?;
    let mut office = admins.open(&admins.office).await?;
    let mut hub = admins.open(&admins.hub).await?;
    let office_facts = crate::doctor::gather("office", &mut office, t, None).await?;
    let mut hub_facts = crate::doctor::gather(
        "hub",
        &mut hub,
        t,
        config.replication.hub_connection.as_deref(),
    )
    .await?;
    if let Some(own) = config.replication.hub_connection.as_deref() {
        hub_facts.other_offices =
            crate::doctor::other_offices(&mut hub, t, &hub_facts.dialect, own).await?;
    }
    let findings = crate::doctor::judge(
        &office_facts,
        &hub_facts,
        &crate::doctor::command::expectations(config),
    );
    // On a hub with several offices: this office's numbers, and whether the hub's agent
    // account (shared with the other offices' boxes when they use the same name) is
    // kept as it is.
    let numbers = match &config.replication.hub_connection {
        Some(_) => Some(
            super::office_numbers(
                &office_facts,
                &hub_facts,
                u64::from(config.site.planned_sites),
            )
            .map_err(|f| {
                Refused(vec![
                    format!("{} {}", f.message, f.fix),
                    "Nothing was changed.".into(),
                ])
            })?,
        ),
        None => None,
    };
    let hub_agent = match (numbers, &going_on) {
        (Some(_), None) => hub_agent_account(config, &mut hub).await?,
        // Going on: the earlier run made or kept it, and it is left as it is.
        (Some(_), Some(_)) => HubAgent::Keep,
        (None, _) => HubAgent::Create,
    };
    let settings = plan_settings(
        &office_facts,
        &hub_facts,
        &findings,
        numbers,
        u64::from(config.site.planned_sites),
    );
    let family = hub_facts.dialect.family;
    print!("{}", settings.describe(family));
    if !settings.can_go_on() {
        return Err(Refused(vec![
            "The setup stopped before changing anything; run it again once that is done.".into(),
        ]));
    }
    let (direction, seed) = match (&going_on, &earlier_job) {
        (Some(pending), Some(job)) => {
            println!("{}", resume::describe(pending, job));
            (pending.direction, None)
        }
        _ => {
            let direction = copy_direction(config, &mut hub, &mut office).await?;
            seed_args.to_hub = direction == Direction::OfficeToHub;
            if seed_args.to_hub {
                if args.replace {
                    return Err(Refused(vec![
                        "The hub holds no data and the office does, so the hub is filled from the office; --replace (which replaces the office's data with the hub's) does not apply. Run it again without --replace. Nothing was changed.".into(),
                    ]));
                }
                println!(
                    "The hub holds no data and the office does: the hub is new, so it is filled from the office's data (the office's data stays as it is)."
                );
            }
            let seed = crate::seed::command::check(config, &seed_args, &admins).await?;
            println!(
                "It will create the replication account `{}` and the agent's account `{}` on both databases with generated passwords (the agent's written into {}), restart the agent, copy the {}'s data to the {}, then start replication both ways.",
                super::REPL_USER,
                config.office_db.user,
                args.config_path.display(),
                direction.source_side(),
                direction.replica_side(),
            );
            (direction, Some(seed))
        }
    };
    if let (Some(n), Some(connection), None) =
        (numbers, &config.replication.hub_connection, &going_on)
    {
        // Each family's word: MariaDB's named connections, MySQL's channels.
        let kind = match family {
            Family::MariaDb => "connection",
            Family::MySql => "channel",
        };
        let others: Vec<String> = hub_facts
            .other_offices
            .iter()
            .map(|o| format!("'{}'", o.connection))
            .collect();
        println!(
            "This office joins a hub that replicates from {} other office(s) ({}): it becomes site number {} (server_id, {}auto_increment_offset {}; auto_increment_increment {}), with its own {kind} '{connection}' and replication account `{}` on the hub. The hub's agent account `{}` {}. No other office's settings, {kind}s or accounts change.",
            others.len(),
            if others.is_empty() {
                "none yet".to_owned()
            } else {
                others.join(", ")
            },
            n.number,
            if family == Family::MariaDb {
                "gtid_domain_id "
            } else {
                ""
            },
            n.number,
            n.increment,
            super::hub_repl_user(numbers),
            config.hub_db.user,
            match hub_agent {
                HubAgent::Keep => "is kept as it is (the password in tether.toml opens it)",
                HubAgent::Create => "is created",
            }
        );
        if hub_facts.dialect.replica_position_is_server_wide() {
            println!(
                "To set where the hub starts reading this office, {} needs every replication connection on the hub stopped at once (its gtid_slave_pos covers them all): the other offices' connections pause for a moment and resume exactly where they were.",
                hub_facts.dialect.family
            );
        }
    }
    if !args.yes && !confirm("Go ahead?")? {
        return Err(Refused(vec!["Not started; nothing was changed.".into()]));
    }

    let resumed = going_on.is_some();
    println!("Step 2 of 5: settings and accounts.");
    for change in &settings.changes {
        let conn = match change.side {
            Side::Office => &mut office,
            Side::Hub => &mut hub,
        };
        let sql = change.statement(family);
        bounded(
            t,
            &format!("{} on the {}", sql, change.side.name()),
            conn.query_drop(&sql),
        )
        .await?;
        println!("  {}: {sql}", change.side.name());
    }
    if settings
        .changes
        .iter()
        .any(|c| c.variable.starts_with("auto_increment") || c.variable == "binlog_format")
    {
        println!(
            "  Connections open now keep their old auto_increment and binlog_format values until they reconnect: restart the applications that write, or have them reconnect."
        );
    }
    for side in [Side::Office, Side::Hub] {
        let lines = settings.config_lines(side, family);
        if !lines.is_empty() {
            println!(
                "  Put these in the {} server's config ([mysqld]) as well, so they survive a restart:\n    {}",
                side.name(),
                lines.join("\n    ")
            );
        }
    }
    let hub_repl = super::hub_repl_user(numbers);
    let (passwords, office_start, pending) = match going_on {
        Some(pending) => {
            // The agent's accounts and passwords stay as the earlier run left them (the
            // agent uses them). The replication accounts get new passwords, since only the
            // replica settings ever held the earlier ones: unless replication already runs
            // with them.
            let passwords = Passwords {
                office_agent: config.office_db.password.clone(),
                hub_agent: config.hub_db.password.clone(),
                ..Passwords::generate()
            };
            if pending.step < Step::Configured {
                for (side, conn, dialect, repl_user) in [
                    (
                        Side::Office,
                        &mut office,
                        office_facts.dialect,
                        super::REPL_USER,
                    ),
                    (Side::Hub, &mut hub, hub_facts.dialect, hub_repl.as_str()),
                ] {
                    let (_, repl_pw) = passwords.of(side);
                    for sql in accounts_sql(&dialect, repl_user, repl_pw, None) {
                        bounded(
                            t,
                            &format!("the {}'s replication account", side.name()),
                            conn.query_drop(sql),
                        )
                        .await?;
                    }
                }
                println!(
                    "  The replication accounts have new passwords; the agent's accounts stay as they are."
                );
            }
            drop((office, hub));
            println!("Step 3 of 5: the agent keeps running with its accounts.");
            (passwords, pending.office_start.clone(), pending)
        }
        None => {
            let mut passwords = Passwords::generate();
            if hub_agent == HubAgent::Keep {
                passwords.hub_agent = config.hub_db.password.clone();
            }
            for (side, conn, dialect, repl_user, agent_user, agent_schema) in [
                (
                    Side::Office,
                    &mut office,
                    office_facts.dialect,
                    super::REPL_USER,
                    &config.office_db.user,
                    &config.office_db.database,
                ),
                (
                    Side::Hub,
                    &mut hub,
                    hub_facts.dialect,
                    hub_repl.as_str(),
                    &config.hub_db.user,
                    &config.hub_db.database,
                ),
            ] {
                let (agent_pw, repl_pw) = passwords.of(side);
                let agent = (side == Side::Office || hub_agent == HubAgent::Create).then_some((
                    agent_user.as_str(),
                    agent_schema.as_str(),
                    agent_pw,
                ));
                for sql in accounts_sql(&dialect, repl_user, repl_pw, agent) {
                    bounded(
                        t,
                        &format!("create the {}'s accounts", side.name()),
                        conn.query_drop(sql),
                    )
                    .await?;
                }
                // The agent makes it at its first round too; made here, it is there before the
                // seed looks for it on either side.
                bounded(
                    t,
                    "create the heartbeat table",
                    conn.query_drop(format!(
                        "USE {}; {}",
                        crate::seed::sql::ident(agent_schema),
                        crate::replication::HEARTBEAT_TABLE_SQL
                    )),
                )
                .await?;
            }
            // On a hub with several offices, the hub's new connection starts where the
            // office's binary log is now (MariaDB: its `gtid_binlog_pos`; MySQL: its
            // `gtid_executed`, counted as done on the hub), before its agent can log in:
            // everything the agent writes from here on (its heartbeat row) crosses to the
            // hub and, relayed, to the other offices, which must have its row before its
            // updates arrive.
            let office_start = match numbers {
                Some(_) => {
                    let pos: Option<String> = bounded(
                        t,
                        "the office's binary log position",
                        office.query_first(
                            if hub_facts.dialect.replica_position_is_server_wide() {
                                "SELECT @@GLOBAL.gtid_binlog_pos"
                            } else {
                                "SELECT @@GLOBAL.gtid_executed"
                            },
                        ),
                    )
                    .await?;
                    Some(pos.unwrap_or_default())
                }
                None => None,
            };
            super::config_file::write_passwords(
                &args.config_path,
                &passwords.office_agent,
                &passwords.hub_agent,
            )?;
            println!(
                "  The accounts are created; the agent's passwords are in {}.",
                args.config_path.display()
            );
            drop((office, hub));

            println!("Step 3 of 5: the agent restarts to use its accounts.");
            restart_agent(config).await?;
            // From here on a setup that stops goes on where it was when run again.
            let pending = Pending {
                job: None,
                created_unix: unix_now(),
                direction,
                office_start: office_start.clone(),
                step: Step::Copy,
            };
            pending.save(data_dir)?;
            (passwords, office_start, pending)
        }
    };

    println!(
        "Step 4 of 5: the {}'s first copy of the {}'s data.",
        direction.replica_side(),
        direction.source_side()
    );
    let job_id = match (seed, &pending.job) {
        (Some(seed), _) => {
            let job = crate::seed::command::begin(config, &seed_args, &admins, seed).await?;
            Pending {
                job: Some(job.id.clone()),
                ..pending.clone()
            }
            .save(data_dir)?;
            job.id
        }
        (None, Some(id)) => id.clone(),
        (None, None) => unreachable!("a setup that goes on has its job"),
    };
    if pending.step == Step::Copy {
        let attached = crate::seed::command::attach(config, &job_id, Some(&admins)).await?;
        if attached == Attached::Left {
            return Err(Refused(vec![
                "The setup is not finished: the copy goes on in the agent, and replication is started once it is done. Run `tether setup` again to finish it (now or later: it shows the copy's progress and goes on from there).".into(),
            ]));
        }
    } else {
        println!("  The copy is done (seed {job_id}).");
    }

    println!("Step 5 of 5: replication both ways.");
    let mut pending = Pending {
        job: Some(job_id),
        ..pending
    };
    if pending.step < Step::Positioned {
        position_replicas(config, &admins, direction, office_start.as_deref()).await?;
        pending.step = Step::Positioned;
        pending.save(data_dir)?;
    }
    if pending.step < Step::Configured {
        configure_replicas(config, &admins, &passwords, numbers, resumed).await?;
        pending.step = Step::Configured;
        pending.save(data_dir)?;
    }
    wait_in_sync(config).await?;
    Pending::clear(data_dir)?;
    println!(
        "The site is set up and in sync. `tether status` and `tether doctor` show how it is doing."
    );
    Ok(())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The generated passwords: the agent's account and the replication account on each side.
struct Passwords {
    office_agent: Secret,
    hub_agent: Secret,
    office_repl: Secret,
    hub_repl: Secret,
}

impl Passwords {
    fn generate() -> Passwords {
        Passwords {
            office_agent: crate::seed::command::generate_password(),
            hub_agent: crate::seed::command::generate_password(),
            office_repl: crate::seed::command::generate_password(),
            hub_repl: crate::seed::command::generate_password(),
        }
    }

    /// The agent's and the replication account's password on `side`.
    fn of(&self, side: Side) -> (&Secret, &Secret) {
        match side {
            Side::Office => (&self.office_agent, &self.office_repl),
            Side::Hub => (&self.hub_agent, &self.hub_repl),
        }
    }
}

/// The administrator logins: from `--admin-passwords FILE` (the hub's first line, the
/// office's second), else from the environment, else asked for (the seed's prompt).
fn admin_logins(args: &SetupArgs, seed_args: &SeedArgs) -> Result<(Admin, Admin), Refused> {
    let admin = |user: &str, password: Secret| Admin {
        user: user.to_owned(),
        password,
    };
    if let Some(file) = &args.admin_passwords {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read the password file {}: {e}", file.display()))?;
        let mut lines = text.lines();
        let (Some(hub), Some(office)) = (lines.next(), lines.next()) else {
            return Err(Refused(vec![format!(
                "{}: it must hold two lines, the hub administrator's password and then the office's",
                file.display()
            )]));
        };
        return Ok((
            admin(&args.hub_admin, Secret::new(hub)),
            admin(&args.office_admin, Secret::new(office)),
        ));
    }
    if let (Ok(hub), Ok(office)) = (
        std::env::var(HUB_ADMIN_PASSWORD_ENV),
        std::env::var(OFFICE_ADMIN_PASSWORD_ENV),
    ) {
        return Ok((
            admin(&args.hub_admin, Secret::new(hub)),
            admin(&args.office_admin, Secret::new(office)),
        ));
    }
    crate::seed::command::ask_passwords(seed_args)
}

/// What the setup does with the hub's agent account on a hub with several offices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HubAgent {
    /// It does not exist yet (or this is a hub and its one office): made with a new
    /// password.
    Create,
    /// It exists and the password in tether.toml opens it: left as it is, since other
    /// offices' boxes may log in with it too.
    Keep,
}

/// Whether the hub's agent account (`hub_db.user`) is made or kept: kept when the
/// config's password opens it; refused when it exists with another password, since
/// re-keying it would lock out every other box that shares it.
async fn hub_agent_account(
    config: &Config,
    hub_admin: &mut mysql_async::Conn,
) -> Result<HubAgent, Refused> {
    let user = &config.hub_db.user;
    let exists: Option<u64> = bounded(
        ADMIN_TIMEOUT,
        "look for the hub's agent account",
        hub_admin.exec_first("SELECT COUNT(*) FROM mysql.user WHERE User = ?", (user,)),
    )
    .await?;
    if exists.unwrap_or(0) == 0 {
        return Ok(HubAgent::Create);
    }
    let (_, target) = crate::app::db_targets(config);
    let t = Duration::from_secs(10);
    match bounded(
        t,
        "log in with the agent's account",
        mysql_async::Conn::new(crate::replication::opts(&target, t)),
    )
    .await
    {
        Ok(c) => {
            let _ = tokio::time::timeout(Duration::from_millis(300), c.disconnect()).await;
            Ok(HubAgent::Keep)
        }
        Err(e) if crate::replication::is_refusal(&e) => Err(Refused(vec![
            format!(
                "The hub already has the agent account `{user}` (hub_db.user), and the password in tether.toml does not open it. On a hub with several offices it may be shared with the other offices' boxes, so tether setup does not give it a new password: that would lock them out."
            ),
            format!(
                "Either put that account's password in hub_db.password (the one the other boxes have), or give this box an account of its own: hub_db.user = \"tether-{}\" in tether.toml, which the setup then creates. Nothing was changed.",
                config.site.id
            ),
        ])),
        Err(e) => Err(Refused(vec![format!(
            "Cannot log in to the hub with the agent's account through the tunnel: {e}. Nothing was changed."
        )])),
    }
}

/// The agent's state document, if it answers.
async fn agent_state(config: &Config) -> Option<serde_json::Value> {
    crate::status::query(&config.status.socket, Duration::from_secs(3))
        .await
        .ok()
        .and_then(|d| serde_json::from_str(d.trim()).ok())
}

/// Restarts the agent so it reads its new passwords: through systemd where it runs the
/// service, else by asking the person; then waits until the restarted agent has its
/// tunnel up again.
async fn restart_agent(config: &Config) -> Result<(), Refused> {
    let asked = Instant::now();
    if Path::new("/run/systemd/system").is_dir() {
        let status = tokio::time::timeout(
            Duration::from_secs(120),
            tokio::process::Command::new("systemctl")
                .args(["restart", "tether.service"])
                .status(),
        )
        .await;
        match status {
            Ok(Ok(s)) if s.success() => {}
            Ok(Ok(s)) => {
                return Err(Refused(vec![format!(
                    "`systemctl restart tether.service` {s}: restart the agent yourself, then run `tether setup` again (its accounts are made; it makes them again)."
                )]));
            }
            Ok(Err(e)) => return Err(Refused(vec![format!("cannot run systemctl: {e}")])),
            Err(_) => {
                return Err(Refused(vec![
                    "systemctl did not finish within 2 minutes".into(),
                ]));
            }
        }
    } else {
        println!(
            "  Restart the agent now so it reads its new accounts (it is not run by systemd here); waiting for it, at most {} minutes.",
            RESTART_BOUND.as_secs() / 60
        );
    }
    let deadline = Instant::now() + RESTART_BOUND;
    loop {
        if let Some(doc) = agent_state(config).await {
            let restarted = doc["agent"]["uptime_s"]
                .as_u64()
                .is_some_and(|up| Duration::from_secs(up) < asked.elapsed());
            if restarted && doc["tunnel"]["up"] == true {
                println!("  The agent is back with its tunnel up.");
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(Refused(vec![format!(
                "The agent did not come back with its tunnel up within {} minutes of being restarted. Its accounts are made and its config written; start it, then run `tether setup` again.",
                RESTART_BOUND.as_secs() / 60
            )]));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Where the office database reaches this box's forward to the hub: the configured
/// listen address, or, when it listens on every address, this box's own address as seen
/// from the office database (the local end of a connection to it).
async fn box_address_for_office(config: &Config) -> Result<String, String> {
    let host = config.forwards.local_listen.host.as_str();
    if !matches!(host, "0.0.0.0" | "::") {
        return Ok(host.to_owned());
    }
    let stream = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect((config.office_db.host.as_str(), config.office_db.port)),
    )
    .await
    .map_err(|_| "the office database did not answer within 10 s".to_owned())?
    .map_err(|e| format!("cannot reach the office database: {e}"))?;
    let ip = stream.local_addr().map_err(|e| e.to_string())?.ip();
    Ok(ip.to_string())
}

/// Points each database at the other through the tunnel with the recommended settings
/// and starts both directions. The side the seed filled starts where the seed left its
/// replica; the other from its source's binary log as it is now (MariaDB: `gtid_slave_pos`
/// at the source's own domains' positions; MySQL: the source's own transactions added to
/// the replica's `gtid_purged`), so nothing the source had logged before the copy crosses.
/// Administrator connections to the office and the hub, each with its dialect.
async fn open_both(
    admins: &Admins,
) -> Result<((mysql_async::Conn, Dialect), (mysql_async::Conn, Dialect)), Refused> {
    let mut office = admins.open(&admins.office).await?;
    let mut hub = admins.open(&admins.hub).await?;
    let office_d = Dialect::query(&mut office, ADMIN_TIMEOUT).await?;
    let hub_d = Dialect::query(&mut hub, ADMIN_TIMEOUT).await?;
    Ok(((office, office_d), (hub, hub_d)))
}

/// Sets where each replica starts: the one the copy filled is where the copy left it;
/// the other starts at its source's binary log as it is now (on a hub with several
/// offices, at `office_start`), the source's own heartbeat row copied across. Neither
/// replica is started here.
async fn position_replicas(
    config: &Config,
    admins: &Admins,
    direction: Direction,
    office_start: Option<&str>,
) -> Result<(), Refused> {
    let ((mut office, office_d), (mut hub, hub_d)) = open_both(admins).await?;
    let (hub_schema, office_schema) = (&config.hub_db.database, &config.office_db.database);
    match direction {
        Direction::HubToOffice => {
            let several = config
                .replication
                .hub_connection
                .as_deref()
                .zip(office_start);
            match several.filter(|_| hub_d.replica_position_is_server_wide()) {
                Some((own, start)) => merge_into_hub_position(&mut hub, &hub_d, own, start).await?,
                // On a hub with several offices (MySQL), only what the office had
                // executed before its agent logged in.
                None => {
                    start_at_source_now(
                        &mut office,
                        &mut hub,
                        &hub_d,
                        config.replication.hub_connection.as_deref(),
                        office_start.map(str::to_owned),
                    )
                    .await?
                }
            }
            // On a hub with several offices the new connection starts before the office's
            // agent wrote its heartbeat row, so the row crosses as an ordinary write
            // instead (a copy here would stay on the hub: the other offices' appliers
            // would then stop on the office's first update of a row they never got).
            if several.is_none() {
                copy_own_heartbeat(&mut office, office_schema, &mut hub, hub_schema).await?;
            }
        }
        Direction::OfficeToHub => {
            // The hub starts where the seed left it (the office's final snapshot); the
            // office from what the hub logged, which is only the hub's own writes (the
            // copy was written without binary logging).
            start_at_source_now(&mut hub, &mut office, &office_d, None, None).await?;
            copy_own_heartbeat(&mut hub, hub_schema, &mut office, office_schema).await?;
        }
    }
    Ok(())
}

/// Points each server at the other through the tunnel with the replication accounts'
/// passwords and starts both replicas. `resumed`: an earlier setup may have got part way
/// (the hub's own connection configured and started), so it is stopped first.
async fn configure_replicas(
    config: &Config,
    admins: &Admins,
    passwords: &Passwords,
    numbers: Option<crate::site_numbers::SiteNumbers>,
    resumed: bool,
) -> Result<(), Refused> {
    let ((mut office, office_d), (mut hub, hub_d)) = open_both(admins).await?;
    let box_host = box_address_for_office(config).await?;
    let office_sql = crate::hubkit::replication_setup_sql(
        &office_d,
        None,
        &box_host,
        config.forwards.local_listen.port,
        &super::hub_repl_user(numbers),
        passwords.hub_repl.expose(),
    );
    let connection = config.replication.hub_connection.as_deref();
    let hub_sql = crate::hubkit::replication_setup_sql(
        &hub_d,
        connection,
        "127.0.0.1",
        config.forwards.remote_listen.port,
        super::REPL_USER,
        passwords.office_repl.expose(),
    );
    bounded(
        ADMIN_TIMEOUT,
        "set the office's replica up",
        office.query_drop(office_sql),
    )
    .await?;
    if resumed && connection.is_some() {
        stop_if_configured(&mut hub, &hub_d, connection).await?;
    }
    bounded(
        ADMIN_TIMEOUT,
        "set the hub's replica up",
        hub.query_drop(hub_sql),
    )
    .await?;
    println!(
        "  The office replicates from the hub through this box ({box_host}:{}), the hub from the office through the tunnel.",
        config.forwards.local_listen.port
    );
    println!(
        "  Put these in both servers' config ([mysqld]) as well:\n{}",
        crate::hubkit::config_lines(&office_d)
    );
    Ok(())
}

/// Stops a replica (its `connection`, else the default one), if it is configured at all.
async fn stop_if_configured(
    replica: &mut mysql_async::Conn,
    replica_d: &Dialect,
    connection: Option<&str>,
) -> Result<(), Refused> {
    bounded(
        ADMIN_TIMEOUT,
        "stop the replica",
        replica.query_drop(replica_d.stop_replica(Threads::Both, connection)),
    )
    .await
    .or_else(|e| {
        // Not configured yet: nothing to stop.
        if e.contains("3074") || e.contains("1617") || e.contains("1200") {
            Ok(())
        } else {
            Err(e)
        }
    })?;
    Ok(())
}

/// Sets where `replica` starts reading `source` (on `connection`, else its default one):
/// at the source's binary log as it is now, or, on MySQL, after `source_done` when given
/// (what the source had executed at an earlier moment). MariaDB: the replica's
/// `gtid_slave_pos` at the source's own domains' positions; MySQL: what the source
/// executed and the replica has not, added to the replica's `gtid_purged`.
async fn start_at_source_now(
    source: &mut mysql_async::Conn,
    replica: &mut mysql_async::Conn,
    replica_d: &Dialect,
    connection: Option<&str>,
    source_done: Option<String>,
) -> Result<(), Refused> {
    let t = ADMIN_TIMEOUT;
    stop_if_configured(replica, replica_d, connection).await?;
    if replica_d.family == Family::MariaDb {
        let pos: Option<String> = bounded(
            t,
            "the source's binary log position",
            source.query_first("SELECT @@GLOBAL.gtid_binlog_pos"),
        )
        .await?;
        let domain: Option<u64> = bounded(
            t,
            "the replica's GTID domain",
            replica.query_first("SELECT @@GLOBAL.gtid_domain_id"),
        )
        .await?;
        let start = super::start_position(&pos.unwrap_or_default(), domain.unwrap_or(0));
        bounded(
            t,
            "set the replica's position",
            replica.exec_drop("SET GLOBAL gtid_slave_pos = ?", (start,)),
        )
        .await?;
        return Ok(());
    }
    let done = match source_done {
        Some(done) => Some(done),
        None => {
            bounded(
                t,
                "the source's executed transactions",
                source.query_first("SELECT @@GLOBAL.gtid_executed"),
            )
            .await?
        }
    };
    let missing: Option<String> = bounded(
        t,
        "compare GTID sets",
        replica.exec_first(
            "SELECT GTID_SUBTRACT(?, @@GLOBAL.gtid_executed)",
            (done.unwrap_or_default(),),
        ),
    )
    .await?;
    let missing = crate::seed::dialect::gtid_set(&missing.unwrap_or_default());
    if !missing.is_empty() {
        bounded(
            t,
            "set the replica's position",
            replica.exec_drop("SET GLOBAL gtid_purged = CONCAT('+', ?)", (missing,)),
        )
        .await?;
    }
    Ok(())
}

/// Copies a server's own heartbeat row (the one with its server_id) to the other as it is
/// now: what crosses from here on updates it, and a row update needs its row there. Only
/// its own: the seeded side's table holds the other rows already, as of the copy.
async fn copy_own_heartbeat(
    from: &mut mysql_async::Conn,
    from_schema: &str,
    to: &mut mysql_async::Conn,
    to_schema: &str,
) -> Result<(), Refused> {
    let t = ADMIN_TIMEOUT;
    let beats: Vec<(u64, i64)> = bounded(
        t,
        "read a heartbeat row",
        from.query(format!(
            "SELECT server_id, beat_us FROM {}.heartbeat WHERE server_id = @@GLOBAL.server_id",
            crate::seed::sql::ident(from_schema),
        )),
    )
    .await?;
    for (id, beat) in beats {
        bounded(
            t,
            "copy a heartbeat row",
            to.exec_drop(
                format!(
                    "INSERT INTO {}.heartbeat (server_id, beat_us) VALUES (?, ?) ON DUPLICATE KEY UPDATE beat_us = VALUES(beat_us)",
                    crate::seed::sql::ident(to_schema)
                ),
                (id, beat),
            ),
        )
        .await?;
    }
    Ok(())
}

/// Which way the first copy goes: the hub from the office when the hub holds no data of
/// its own (none, or only an earlier unfinished copy of the office's) and the office
/// does; the office from the hub otherwise (a hub with several offices always).
async fn copy_direction(
    config: &Config,
    hub: &mut mysql_async::Conn,
    office: &mut mysql_async::Conn,
) -> Result<Direction, Refused> {
    if config.replication.hub_connection.is_some() {
        return Ok(Direction::HubToOffice);
    }
    let t = ADMIN_TIMEOUT;
    let agent = [
        config.hub_db.database.as_str(),
        config.office_db.database.as_str(),
    ];
    let office_schemas = crate::seed::preflight::source_schemas(office, &agent, t).await?;
    let office_rows = crate::seed::preflight::tables_with_rows(office, &office_schemas, t).await?;
    if office_rows.is_empty() {
        return Ok(Direction::HubToOffice);
    }
    let hub_schemas = crate::seed::preflight::source_schemas(hub, &agent, t).await?;
    let hub_rows = crate::seed::preflight::tables_with_rows(hub, &hub_schemas, t).await?;
    if hub_rows.is_empty()
        || crate::seed::command::earlier_seed(hub, &config.hub_db.database, Direction::OfficeToHub)
            .await?
    {
        Ok(Direction::OfficeToHub)
    } else {
        Ok(Direction::HubToOffice)
    }
}

/// How often the hub's position is tried again when a connection was started between
/// the stop and the set (another office's agent restarting its own).
const MERGE_TRIES: u32 = 5;

/// Merges the office's own position into the hub's server-wide `gtid_slave_pos`
/// (MariaDB), which can only be set with every replication connection stopped: stops
/// them all, sets the merged value (every other domain's position kept exactly), and
/// starts again each connection that was running, for the shortest moment. When one was
/// started in between (MariaDB refuses the set with error 1198), the running ones are
/// started again and the whole is retried, at most [`MERGE_TRIES`] times.
async fn merge_into_hub_position(
    hub: &mut mysql_async::Conn,
    d: &Dialect,
    own: &str,
    office_binlog_pos: &str,
) -> Result<(), Refused> {
    let t = ADMIN_TIMEOUT;
    let hub_domain: Option<u64> = bounded(
        t,
        "the hub's GTID domain",
        hub.query_first("SELECT @@GLOBAL.gtid_domain_id"),
    )
    .await?;
    for attempt in 1..=MERGE_TRIES {
        let rows: Vec<mysql_async::Row> = bounded(
            t,
            "the hub's replication connections",
            hub.query("SHOW ALL SLAVES STATUS"),
        )
        .await?;
        // Each connection's threads as they are: started again exactly so (an IO thread
        // still connecting counts as running; an applier stopped on an error stays so).
        let running: Vec<(String, &'static str)> = rows
            .iter()
            .map(crate::replication::by_name)
            .filter_map(|r| {
                let name = r.get("Connection_name")?.clone();
                let on = |column: &str| r.get(column).is_some_and(|v| v != "No");
                let threads = match (on("Slave_IO_Running"), on("Slave_SQL_Running")) {
                    (true, true) => "",
                    (true, false) => " IO_THREAD",
                    (false, true) => " SQL_THREAD",
                    (false, false) => return None,
                };
                (name != own).then_some((name, threads))
            })
            .collect();
        let started = Instant::now();
        bounded(
            t,
            "stop the hub's connections",
            hub.query_drop("STOP ALL SLAVES"),
        )
        .await?;
        let (slave_pos, binlog_state): (Option<String>, Option<String>) = bounded(
            t,
            "the hub's positions",
            hub.query_first("SELECT @@GLOBAL.gtid_slave_pos, @@GLOBAL.gtid_binlog_state"),
        )
        .await?
        .unwrap_or_default();
        let mut known: Vec<u64> =
            crate::site_numbers::writers_of_binlog_state(&binlog_state.unwrap_or_default())
                .into_iter()
                .map(|(_, domain)| domain)
                .collect();
        known.extend(hub_domain);
        let merged =
            super::merged_hub_position(&slave_pos.unwrap_or_default(), &known, office_binlog_pos);
        let set = bounded(
            t,
            "set the hub's replica position",
            hub.exec_drop("SET GLOBAL gtid_slave_pos = ?", (merged.as_str(),)),
        )
        .await;
        for (name, threads) in &running {
            let channel = (!name.is_empty()).then_some(name.as_str());
            let start = format!("{}{threads}", d.start_replica(Threads::Both, channel));
            bounded(
                t,
                &format!("start the hub's connection '{name}' again"),
                hub.query_drop(start),
            )
            .await?;
        }
        match set {
            Ok(()) => {
                println!(
                    "  The hub's replica position now includes this office's ({merged}); the other offices' {} connection(s) were paused for {} ms.",
                    running.len(),
                    started.elapsed().as_millis()
                );
                return Ok(());
            }
            Err(e) if e.contains("1198") && attempt < MERGE_TRIES => {
                println!(
                    "  A connection on the hub was started while the position was being set (another office's agent); trying again ({attempt} of {MERGE_TRIES})."
                );
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            Err(e) => {
                return Err(Refused(vec![format!(
                    "Could not set the hub's replica position ({e}); every connection that was running there was started again, nothing of the other offices moved. Run `tether setup` again."
                )]));
            }
        }
    }
    unreachable!("the last attempt returns")
}

/// Waits for the agent's verdict `in_sync`, showing what it says meanwhile.
async fn wait_in_sync(config: &Config) -> Result<(), Refused> {
    let deadline = Instant::now() + IN_SYNC_BOUND;
    let mut last = String::new();
    loop {
        let doc = agent_state(config).await.unwrap_or_default();
        let verdict = doc["verdict"].as_str().unwrap_or("no answer").to_owned();
        if verdict == "in_sync" {
            println!("  in_sync");
            return Ok(());
        }
        let reasons: Vec<&str> = doc["reasons"]
            .as_array()
            .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        let said = format!("{verdict}: {}", reasons.join("; "));
        if said != last {
            println!("  {said}");
            last = said;
        }
        if Instant::now() >= deadline {
            return Err(Refused(vec![format!(
                "Replication did not reach in_sync within {} minutes; the agent says {last}. `tether doctor` shows what is wrong.",
                IN_SYNC_BOUND.as_secs() / 60
            )]));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
