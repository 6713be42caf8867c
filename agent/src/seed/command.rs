//! `tether seed`: starts the office's first copy of the hub's data (or, with
//! `--to-hub`, a new and empty hub's first copy of the office's) and shows its progress.
//!
//! It asks once for an administrator login to each database (the hub's through the
//! running agent's tunnel), uses it only while it runs and never stores or logs it. It
//! checks both servers (`preflight`) and refuses, with nothing changed, when a seed would
//! go wrong; otherwise it shows the plan, prepares the target (empty tables as the source
//! defines them, the progress tables, its replication stopped), creates one
//! narrowly granted seeding account per side with a generated password, and writes the
//! job for the agent. Then it draws the agent's progress until the seed is done, and
//! drops the seeding accounts. Everything it writes on either server is written without
//! binary logging, so none of it replicates.
//!
//! The guided `tether setup` calls [`check`], [`begin`] and [`attach`] the same way.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;

use super::dialect::Family;
use super::job::{Direction, Job, Login};
use super::preflight::{self, Facts, Options, Plan};
use super::sql::{ident, literal};
use crate::config::Config;
use crate::replication::{DbTarget, bounded};
use crate::secret::Secret;

/// The seeding accounts' user name (one per side).
pub const SEED_USER: &str = "tether_seed";
/// Hosts the seeding accounts are created for: any, and the loopback names (a fresh
/// server's anonymous users would otherwise shadow `%` for local connections).
const SEED_HOSTS: &[&str] = &["%", "localhost", "127.0.0.1"];
/// Parallel chunk readers.
const WORKERS: u32 = 3;
/// Bound on each administrative query.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);

/// What the person asked for.
#[derive(Debug, Clone)]
pub struct SeedArgs {
    /// Fill a new, empty hub from the office instead of the office from the hub.
    pub to_hub: bool,
    pub replace: bool,
    pub backup: Option<PathBuf>,
    pub hub_admin: String,
    pub office_admin: String,
    pub yes: bool,
    pub detach: bool,
    pub cancel: bool,
}

/// An administrator login, held only while the command runs.
#[derive(Debug, Clone)]
pub struct Admin {
    pub user: String,
    pub password: Secret,
}

/// A refusal or failure of the command, in words for people.
#[derive(Debug)]
pub struct Refused(pub Vec<String>);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl SeedArgs {
    /// Which way the copy goes.
    pub fn direction(&self) -> Direction {
        if self.to_hub {
            Direction::OfficeToHub
        } else {
            Direction::HubToOffice
        }
    }
}

impl From<String> for Refused {
    fn from(e: String) -> Self {
        Refused(vec![e])
    }
}

/// `tether seed`: exit 0 when the seed is done (or detached), 1 when refused or failed.
pub fn main(config: &Config, args: &SeedArgs) -> std::process::ExitCode {
    run_to_exit("tether seed", seed(config, args))
}

/// Runs a command that ends done or refused (`tether seed`, `tether setup`) on a runtime
/// of its own: exit 0 when done, 1 with the reasons on stderr when refused or failed.
pub fn run_to_exit(
    command: &str,
    work: impl std::future::Future<Output = Result<(), Refused>>,
) -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{command}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(work) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(r) => {
            eprintln!("{r}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn seed(config: &Config, args: &SeedArgs) -> Result<(), Refused> {
    let existing = Job::load(&config.data.dir)?;
    if let Some(job) = existing.as_ref().filter(|j| j.active())
        && !args.replace
        && !args.cancel
    {
        println!(
            "A seed is already running ({}); showing its progress.",
            job.id
        );
        if let Attached::Done { replica_waits } = attach(config, &job.id, None).await? {
            explain_replica_start(job.family, job.direction, replica_waits);
        }
        return Ok(());
    }
    let (hub_admin, office_admin) = ask_passwords(args)?;
    let admins = Admins::connect(config, &hub_admin, &office_admin).await?;
    if let Some(old) = &existing {
        if old.active() {
            stop_running(config, &old.id).await?;
        }
        drop_accounts(&admins, old).await?;
    }
    if args.cancel {
        match std::fs::remove_file(Job::path(&config.data.dir)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Refused(vec![format!("cannot remove the seed job: {e}")])),
        }
        let direction = existing
            .as_ref()
            .map_or(Direction::HubToOffice, |j| j.direction);
        println!(
            "The seed is cancelled and its accounts dropped. The {to} keeps the rows copied so far and its replication from the {from} stays stopped; `{}` starts over.",
            super::start_again(direction),
            to = direction.replica_side(),
            from = direction.source_side(),
        );
        return Ok(());
    }
    let job = start(config, args, &admins).await?;
    if args.detach {
        println!(
            "The agent runs the seed; `tether seed` shows its progress, `tether status` its state."
        );
        return Ok(());
    }
    if let Attached::Done { replica_waits } = attach(config, &job.id, Some(&admins)).await? {
        explain_replica_start(job.family, job.direction, replica_waits);
    }
    Ok(())
}

/// After `tether seed` alone (not `tether setup`, which configures replication next): how
/// to start the target's replication from where the copy ends, in its family's words.
fn explain_replica_start(
    family: super::dialect::Family,
    direction: Direction,
    replica_waits: bool,
) {
    if !replica_waits {
        return;
    }
    let how = match family {
        super::dialect::Family::MariaDb => {
            "CHANGE MASTER TO ... MASTER_USE_GTID = slave_pos, then START SLAVE"
        }
        super::dialect::Family::MySql => {
            "CHANGE REPLICATION SOURCE TO ... SOURCE_AUTO_POSITION = 1, then START REPLICA"
        }
    };
    println!(
        "To start the {to}'s replication from the {from}, configure it on the {to} with {how} (`tether enroll` prints the full statements), or let `tether setup` do it.",
        to = direction.replica_side(),
        from = direction.source_side(),
    );
}

/// Takes a running job away from the agent (its file goes; the agent notices within
/// seconds and stops it) and waits until it has stopped, so that it cannot record its end
/// over a new job.
async fn stop_running(config: &Config, id: &str) -> Result<(), Refused> {
    let path = Job::path(&config.data.dir);
    std::fs::remove_file(&path)
        .map_err(|e| format!("cannot remove the seed job {}: {e}", path.display()))?;
    let socket = super::socket_path(&config.status.socket);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let doc = crate::status::query(&socket, Duration::from_secs(3))
            .await
            .ok()
            .and_then(|d| serde_json::from_str::<serde_json::Value>(d.trim()).ok())
            .unwrap_or_default();
        if !(doc["state"] == "running" && doc["job"] == id) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Refused(vec![
                "The agent did not stop the running seed within 15 s; try again.".into(),
            ]));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Reads the two administrator passwords: from the terminal without echo, or one line
/// each from a pipe (hub first).
pub(crate) fn ask_passwords(args: &SeedArgs) -> Result<(Admin, Admin), Refused> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    let read = |prompt: &str| -> Result<Secret, Refused> {
        if tty {
            eprint!("{prompt}");
            let _ = std::io::stderr().flush();
        }
        let _echo = tty.then(crate::cli::EchoOff::new);
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password: {e}"))?;
        if tty {
            eprintln!();
        }
        Ok(Secret::new(line.trim_end_matches(['\r', '\n'])))
    };
    let hub = read(&format!(
        "Password of the hub database's administrator `{}` (used for this setup only, never stored): ",
        args.hub_admin
    ))?;
    let office = read(&format!(
        "Password of the office database's administrator `{}`: ",
        args.office_admin
    ))?;
    Ok((
        Admin {
            user: args.hub_admin.clone(),
            password: hub,
        },
        Admin {
            user: args.office_admin.clone(),
            password: office,
        },
    ))
}

/// The administrator connections: the office directly, the hub through the agent's tunnel.
pub struct Admins {
    pub hub: DbTarget,
    pub office: DbTarget,
}

impl Admins {
    /// Checks both logins; a refusal says which side refused.
    pub async fn connect(config: &Config, hub: &Admin, office: &Admin) -> Result<Admins, Refused> {
        let (office_db, hub_db) = crate::app::db_targets(config);
        let admins = Admins {
            hub: DbTarget {
                user: hub.user.clone(),
                password: hub.password.clone(),
                ..hub_db
            },
            office: DbTarget {
                user: office.user.clone(),
                password: office.password.clone(),
                ..office_db
            },
        };
        let mut refusals = Vec::new();
        let tunnel_up = crate::status::query(&config.status.socket, Duration::from_secs(3))
            .await
            .ok()
            .and_then(|d| serde_json::from_str::<serde_json::Value>(d.trim()).ok())
            .is_some_and(|d| d["tunnel"]["up"] == true);
        if !tunnel_up {
            refusals.push(format!(
                "The agent's tunnel to the hub is not up (its status socket {} says otherwise or does not answer): start the agent and wait until `tether status` shows the tunnel up, then run the seed again. Nothing was changed.",
                config.status.socket.display()
            ));
            return Err(Refused(refusals));
        }
        for (side, target) in [("office", &admins.office), ("hub", &admins.hub)] {
            if let Err(e) = admins.open(target).await {
                refusals.push(if crate::replication::is_refusal(&e) {
                    format!(
                        "The {side} database refused the administrator login `{}` ({e}): check the user and password. Nothing was changed.",
                        target.user
                    )
                } else {
                    format!("Cannot reach the {side} database as `{}`: {e}. Nothing was changed.", target.user)
                });
            }
        }
        if refusals.is_empty() {
            Ok(admins)
        } else {
            Err(Refused(refusals))
        }
    }

    /// A new administrator connection (binary logging off for its writes).
    pub async fn open(&self, target: &DbTarget) -> Result<mysql_async::Conn, String> {
        let mut c = bounded(
            ADMIN_TIMEOUT,
            "connect",
            mysql_async::Conn::new(crate::replication::opts(
                &DbTarget {
                    database: String::new(),
                    ..target.clone()
                },
                ADMIN_TIMEOUT,
            )),
        )
        .await?;
        bounded(
            ADMIN_TIMEOUT,
            "session settings",
            c.query_drop("SET SESSION sql_log_bin = 0, time_zone = '+00:00', wait_timeout = 28800"),
        )
        .await?;
        Ok(c)
    }
}

/// Checks, prepares and writes a new job; returns it. Refuses with nothing changed.
pub async fn start(config: &Config, args: &SeedArgs, admins: &Admins) -> Result<Job, Refused> {
    let checked = check(config, args, admins).await?;
    if !args.yes && !confirm("Start the seed?")? {
        return Err(Refused(vec!["Not started; nothing was changed.".into()]));
    }
    begin(config, args, admins, checked).await
}

/// What [`check`] found and [`begin`] needs: the servers' facts, the judged plan, and the
/// hub's schemas, views and triggers.
pub struct Checked {
    facts: Facts,
    plan: Plan,
    schemas: Vec<String>,
    views: Vec<String>,
    triggers: Vec<String>,
}

/// Reads both servers and judges whether a seed can start (every refusal, with nothing
/// changed); prints the plan. `tether setup` calls it before changing anything.
pub async fn check(config: &Config, args: &SeedArgs, admins: &Admins) -> Result<Checked, Refused> {
    let t = ADMIN_TIMEOUT;
    let direction = args.direction();
    if direction == Direction::OfficeToHub && config.replication.hub_connection.is_some() {
        return Err(Refused(vec![format!(
            "This office is one of several on its hub (replication.hub_connection is set), and a hub that serves other offices is never new: it is not filled from this office. Copy the hub to this office instead (`tether seed`). Nothing was changed."
        )]));
    }
    let mut hub = admins.open(&admins.hub).await?;
    let mut office = admins.open(&admins.office).await?;
    let hub_facts = preflight::server_facts(&mut hub, t).await?;
    let office_facts = preflight::server_facts(&mut office, t).await?;
    let agent_schemas = [
        config.hub_db.database.as_str(),
        config.office_db.database.as_str(),
    ];
    let (source, target, target_schema) = match direction {
        Direction::HubToOffice => (&mut hub, &mut office, &config.office_db.database),
        Direction::OfficeToHub => (&mut office, &mut hub, &config.hub_db.database),
    };
    let schemas = preflight::source_schemas(source, &agent_schemas, t).await?;
    let tables = preflight::source_tables(source, &schemas, t).await?;
    let target_rows_in = preflight::tables_with_rows(target, &schemas, t).await?;
    let target_had_seed =
        !target_rows_in.is_empty() && earlier_seed(target, target_schema, direction).await?;
    let mut facts = Facts {
        direction,
        hub: hub_facts,
        office: office_facts,
        tables,
        target_rows_in,
        target_had_seed,
        sample: None,
    };
    let options = Options {
        replace: args.replace,
    };
    // The plan without the estimate first: its table plans drive the link sample.
    let unsampled = preflight::judge(&facts, Options { replace: true });
    if let Ok(p) = &unsampled {
        let session = super::dialect::session_sql(facts.hub.family, 4 << 20);
        bounded(t, "session settings", hub.query_drop(&session)).await?;
        facts.sample = match direction {
            Direction::HubToOffice => {
                preflight::sample_link(&mut hub, None, &facts.tables, &p.tables, t).await?
            }
            Direction::OfficeToHub => {
                bounded(t, "session settings", office.query_drop(session)).await?;
                preflight::sample_link(&mut office, Some(&mut hub), &facts.tables, &p.tables, t)
                    .await?
            }
        };
    }
    let plan = preflight::judge(&facts, options).map_err(|mut why| {
        why.push("Nothing was changed.".into());
        Refused(why)
    })?;
    print!("{}", plan.describe());
    let source = match direction {
        Direction::HubToOffice => &mut hub,
        Direction::OfficeToHub => &mut office,
    };
    let (views, triggers, others) = schema_objects(source, &schemas).await?;
    if others > 0 {
        println!(
            "Note: {others} stored routines and events are not copied; copy them with `{} --no-data --no-create-info --skip-triggers --routines --events`.",
            match facts.hub.family {
                super::dialect::Family::MariaDb => "mariadb-dump",
                super::dialect::Family::MySql => "mysqldump",
            }
        );
    }
    if !plan.target_rows_in.is_empty() {
        println!(
            "{}",
            match direction {
                Direction::HubToOffice => format!(
                    "The office's data in {} tables will be saved to a backup file, then replaced.",
                    plan.target_rows_in.len()
                ),
                Direction::OfficeToHub => format!(
                    "The hub's {} tables hold an earlier, unfinished copy of the office's data; it will be replaced.",
                    plan.target_rows_in.len()
                ),
            }
        );
    }
    Ok(Checked {
        facts,
        plan,
        schemas,
        views,
        triggers,
    })
}

/// Whether the target's agent schema holds an earlier seed in this direction that never
/// finished (its rows came from that copy, and nothing else wrote there since: a finished
/// copy's hub has been in use).
pub async fn earlier_seed(
    target: &mut mysql_async::Conn,
    schema: &str,
    direction: Direction,
) -> Result<bool, String> {
    let n: Option<u64> = bounded(
        ADMIN_TIMEOUT,
        "look for an earlier seed",
        target.query_first(format!(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {}",
            literal(schema),
            literal(super::job::JOB_TABLE)
        )),
    )
    .await?;
    if n.unwrap_or(0) == 0 {
        return Ok(false);
    }
    // Only a new hub is filled from the office; the office's job table says nothing of
    // where its rows came from when it is the target (`--replace` decides there).
    let jobs: Option<u64> = bounded(
        ADMIN_TIMEOUT,
        "look for an earlier seed",
        target.query_first(format!(
            "SELECT COUNT(*) FROM {}.{} WHERE phase <> {}",
            ident(schema),
            ident(super::job::JOB_TABLE),
            literal(super::job::Phase::Done.as_str())
        )),
    )
    .await?;
    Ok(direction == Direction::OfficeToHub && jobs.unwrap_or(0) > 0)
}

/// Prepares the target (after the office's backup, with `--replace`), creates the
/// seeding accounts and hands the job to the agent: from here on, things change.
pub async fn begin(
    config: &Config,
    args: &SeedArgs,
    admins: &Admins,
    checked: Checked,
) -> Result<Job, Refused> {
    let t = ADMIN_TIMEOUT;
    let Checked {
        facts,
        plan,
        schemas,
        views,
        triggers,
    } = checked;
    let direction = plan.direction;
    let mut hub = admins.open(&admins.hub).await?;
    let mut office = admins.open(&admins.office).await?;
    if direction == Direction::HubToOffice && !plan.target_rows_in.is_empty() {
        let file = backup(config, args, admins, &schemas, facts.office.family).await?;
        println!("The office's data is saved in {}.", file.display());
    }
    let (target, target_schema) = match direction {
        Direction::HubToOffice => (&mut office, &config.office_db.database),
        Direction::OfficeToHub => (&mut hub, &config.hub_db.database),
    };
    prepare_target(
        target,
        target_schema,
        &schemas,
        &plan,
        &views,
        facts.hub.family,
    )
    .await?;
    let target_replica_before =
        super::dialect::replica_position(target, facts.hub.family, t).await?;
    let job = Job {
        id: job_id(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        family: facts.hub.family,
        direction,
        hub: Login {
            user: SEED_USER.into(),
            password: Some(generate_password()),
        },
        office: Login {
            user: SEED_USER.into(),
            password: Some(generate_password()),
        },
        tables: plan.tables.clone(),
        triggers,
        target_replica_before,
        estimated_wire_bytes: plan.wire_bytes_estimate,
        workers: WORKERS,
        // Below both servers' packet limit, and small enough for a Pi's memory with
        // three workers (each holds a chunk compressed, as columns and as rows).
        max_chunk_text: (facts
            .hub
            .max_allowed_packet
            .min(facts.office.max_allowed_packet)
            / 4)
        .clamp(64 << 10, 1 << 20),
        outcome: None,
    };
    create_accounts(config, &mut hub, &mut office, &job, &schemas).await?;
    job.save(&config.data.dir)?;
    println!("Seed {} handed to the agent.", job.id);
    Ok(job)
}

/// Views (as `CREATE OR REPLACE` statements with their schema), triggers (the same, for
/// the end of the seed) and how many routines and events there are.
async fn schema_objects(
    hub: &mut mysql_async::Conn,
    schemas: &[String],
) -> Result<(Vec<String>, Vec<String>, u64), String> {
    let t = ADMIN_TIMEOUT;
    let mut views = Vec::new();
    let names: Vec<(String, String)> = bounded(
        t,
        "list views",
        hub.query("SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.VIEWS ORDER BY 1, 2"),
    )
    .await?;
    for (schema, name) in names.into_iter().filter(|(s, _)| schemas.contains(s)) {
        let row: Option<mysql_async::Row> = bounded(
            t,
            "read a view",
            hub.query_first(format!(
                "SHOW CREATE VIEW {}.{}",
                ident(&schema),
                ident(&name)
            )),
        )
        .await?;
        if let Some(sql) = row.and_then(|r| r.get::<String, _>(1)) {
            views.push(format!("USE {}; {}", ident(&schema), or_replace(&sql)));
        }
    }
    let mut triggers = Vec::new();
    let names: Vec<(String, String)> = bounded(
        t,
        "list triggers",
        hub.query(
            "SELECT TRIGGER_SCHEMA, TRIGGER_NAME FROM information_schema.TRIGGERS ORDER BY 1, 2",
        ),
    )
    .await?;
    for (schema, name) in names.into_iter().filter(|(s, _)| schemas.contains(s)) {
        let row: Option<mysql_async::Row> = bounded(
            t,
            "read a trigger",
            hub.query_first(format!(
                "SHOW CREATE TRIGGER {}.{}",
                ident(&schema),
                ident(&name)
            )),
        )
        .await?;
        if let Some(sql) = row.and_then(|r| r.get::<String, _>(2)) {
            triggers.push(format!("USE {}; {}", ident(&schema), or_replace(&sql)));
        }
    }
    let others: Option<u64> = bounded(
        t,
        "count routines and events",
        hub.query_first(format!(
            "SELECT (SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA IN {list}) + (SELECT COUNT(*) FROM information_schema.EVENTS WHERE EVENT_SCHEMA IN {list})",
            list = in_list(schemas)
        )),
    )
    .await?;
    Ok((views, triggers, others.unwrap_or(0)))
}

fn in_list(schemas: &[String]) -> String {
    if schemas.is_empty() {
        return "(NULL)".into();
    }
    let q: Vec<String> = schemas.iter().map(|s| literal(s)).collect();
    format!("({})", q.join(","))
}

/// `CREATE ...` as `CREATE OR REPLACE ...`, so creating it again is harmless.
fn or_replace(create: &str) -> String {
    match create.strip_prefix("CREATE ") {
        Some(rest) if !rest.starts_with("OR REPLACE") => format!("CREATE OR REPLACE {rest}"),
        _ => create.to_owned(),
    }
}

/// Asks yes/no on the terminal; without one, `--yes` is required (`tether seed`, `tether
/// setup`).
pub(crate) fn confirm(question: &str) -> Result<bool, Refused> {
    if !std::io::stdin().is_terminal() {
        return Err(Refused(vec![
            "Not started (no terminal to ask on): add --yes to start without asking. Nothing was changed.".into(),
        ]));
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the answer: {e}"))?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "Yes"))
}

/// Saves the office's seeded schemas with its family's dump (`mariadb-dump` or `mysqldump`), gzipped, to a
/// file named after the moment; returns its path. The password reaches the dump through
/// its environment, never its command line.
async fn backup(
    config: &Config,
    args: &SeedArgs,
    admins: &Admins,
    schemas: &[String],
    family: Family,
) -> Result<PathBuf, Refused> {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(':', "");
    let path = args.backup.clone().unwrap_or_else(|| {
        config
            .data
            .dir
            .join(format!("office-before-seed-{stamp}.sql.gz"))
    });
    // The office family's own dump first (each knows its server's dialect best).
    let names = match family {
        Family::MariaDb => ["mariadb-dump", "mysqldump"],
        Family::MySql => ["mysqldump", "mariadb-dump"],
    };
    let dump = names
        .iter()
        .find_map(|name| find_program(name))
        .ok_or_else(|| {
            format!(
                "Cannot back the office's data up: neither `mariadb-dump` nor `mysqldump` is installed (Debian: apt-get install {}). Nothing was changed.",
                match family {
                    Family::MariaDb => "mariadb-client",
                    Family::MySql => "mysql-client",
                }
            )
        })?;
    let o = &admins.office;
    let (path2, schemas, host, port, user) = (
        path.clone(),
        schemas.to_vec(),
        o.host.clone(),
        o.port,
        o.user.clone(),
    );
    let password: Secret = o.password.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<(), String> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path2)
            .map_err(|e| format!("cannot create {}: {e}", path2.display()))?;
        let mut child = std::process::Command::new(&dump)
            .arg("--no-defaults")
            .arg(format!("--host={host}"))
            .arg(format!("--port={port}"))
            .arg(format!("--user={user}"))
            .args([
                "--protocol=tcp",
                "--single-transaction",
                "--routines",
                "--triggers",
                "--events",
                "--databases",
            ])
            .args(&schemas)
            .env("MYSQL_PWD", password.expose())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", dump.display()))?;
        let mut out = child.stdout.take().ok_or("no output from the dump")?;
        let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::new(6));
        std::io::copy(&mut out, &mut gz).map_err(|e| format!("writing the backup: {e}"))?;
        gz.finish()
            .and_then(|f| f.sync_all())
            .map_err(|e| format!("writing the backup: {e}"))?;
        let done = child.wait_with_output().map_err(|e| e.to_string())?;
        if !done.status.success() {
            return Err(format!(
                "the dump failed: {}",
                String::from_utf8_lossy(&done.stderr).trim()
            ));
        }
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())?;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&path);
        return Err(Refused(vec![format!(
            "Cannot back the office's data up to {}: {e}. Nothing was changed.",
            path.display()
        )]));
    }
    Ok(path)
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/local/bin"].iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Empties the target's seeded schemas and creates the source's tables and views there,
/// the progress tables in the agent's schema, and stops its replication; all without
/// binary logging (the target replicates to the source).
async fn prepare_target(
    target: &mut mysql_async::Conn,
    agent_schema: &str,
    schemas: &[String],
    plan: &Plan,
    views: &[String],
    family: Family,
) -> Result<(), Refused> {
    let t = ADMIN_TIMEOUT;
    super::dialect::stop_replica(target, family, t)
        .await
        .or_else(|e| {
            // Not configured yet: nothing to stop (the seed sets its start position anyway).
            if e.contains("ERROR 1200 ") || e.contains("ERROR 1617 ") {
                Ok(())
            } else {
                Err(e)
            }
        })?;
    let existing: Vec<(String, String, String)> = bounded(
        t,
        "list the target's tables",
        target.query(format!(
            "SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA IN {}",
            in_list(schemas)
        )),
    )
    .await?;
    bounded(
        t,
        "prepare",
        target.query_drop("SET SESSION foreign_key_checks = 0"),
    )
    .await?;
    for (schema, name, kind) in existing {
        let what = if kind == "VIEW" { "VIEW" } else { "TABLE" };
        bounded(
            t,
            "empty the target",
            target.query_drop(format!(
                "DROP {what} IF EXISTS {}.{}",
                ident(&schema),
                ident(&name)
            )),
        )
        .await?;
    }
    for schema in schemas {
        bounded(
            t,
            "create a schema",
            target.query_drop(format!("CREATE DATABASE IF NOT EXISTS {}", ident(schema))),
        )
        .await?;
    }
    for table in &plan.tables {
        bounded(
            t,
            &format!("create {}", table.display()),
            target.query_drop(format!(
                "USE {}; {}",
                ident(&table.schema),
                table.create_sql
            )),
        )
        .await?;
    }
    // Views may use each other: create them until none is left or none succeeds.
    let mut left: Vec<&String> = views.iter().collect();
    while !left.is_empty() {
        let mut failed = Vec::new();
        let mut last = String::new();
        for v in &left {
            if let Err(e) = bounded(t, "create a view", target.query_drop(v.as_str())).await {
                last = e;
                failed.push(*v);
            }
        }
        if failed.len() == left.len() {
            return Err(Refused(vec![format!(
                "Cannot create the {}'s views on the {}: {last}",
                plan.direction.source_side(),
                plan.direction.replica_side()
            )]));
        }
        left = failed;
    }
    let schema = agent_schema;
    bounded(
        t,
        "create the agent's schema",
        target.query_drop(format!("CREATE DATABASE IF NOT EXISTS {}", ident(schema))),
    )
    .await?;
    for sql in super::job::progress_tables_sql(schema) {
        bounded(t, "create the progress tables", target.query_drop(sql)).await?;
    }
    Ok(())
}

/// Creates the two seeding accounts: on the source, reading the seeded schemas (and the
/// agent's heartbeat); on the target, writing them, its progress and heartbeat, with
/// binary logging off and control of its replica. Any left from an earlier seed go first.
async fn create_accounts(
    config: &Config,
    hub: &mut mysql_async::Conn,
    office: &mut mysql_async::Conn,
    job: &Job,
    schemas: &[String],
) -> Result<(), Refused> {
    let t = ADMIN_TIMEOUT;
    let accounts = |login: &Login| -> Vec<String> {
        SEED_HOSTS
            .iter()
            .map(|h| format!("{}@{}", literal(&login.user), literal(h)))
            .collect()
    };
    let table_exists = |schema: &str, table: &str| {
        format!(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {}",
            literal(schema),
            literal(table)
        )
    };
    let source_side = job.direction.source_side();
    for (conn, login, side, agent_schema) in [
        (&mut *hub, &job.hub, "hub", &config.hub_db.database),
        (
            &mut *office,
            &job.office,
            "office",
            &config.office_db.database,
        ),
    ] {
        let is_source = side == source_side;
        let password: Secret = login.password.clone().unwrap_or_default();
        let mut sql = vec![format!(
            "DROP USER IF EXISTS {}",
            accounts(login).join(", ")
        )];
        for a in accounts(login) {
            sql.push(format!(
                "CREATE USER {a} IDENTIFIED BY {}",
                literal(password.expose())
            ));
        }
        let own = if is_source {
            "SELECT"
        } else {
            "SELECT, INSERT, UPDATE"
        };
        let has_heartbeat: Option<u64> = bounded(
            t,
            "look for the heartbeat table",
            conn.query_first(table_exists(agent_schema, "heartbeat")),
        )
        .await?;
        for a in accounts(login) {
            for s in schemas {
                let privileges = if is_source {
                    "SELECT"
                } else if job.triggers.is_empty() {
                    "SELECT, INSERT, DELETE"
                } else {
                    "SELECT, INSERT, DELETE, TRIGGER"
                };
                sql.push(format!("GRANT {privileges} ON {}.* TO {a}", ident(s)));
            }
            if has_heartbeat.unwrap_or(0) > 0 {
                sql.push(format!(
                    "GRANT {own} ON {}.heartbeat TO {a}",
                    ident(agent_schema)
                ));
            }
            if is_source && let Some(privileges) = super::dialect::source_privileges(job.family) {
                sql.push(format!("GRANT {privileges} ON *.* TO {a}"));
            }
            if !is_source {
                for table in [super::job::JOB_TABLE, super::job::PROGRESS_TABLE] {
                    sql.push(format!(
                        "GRANT SELECT, INSERT, UPDATE, DELETE ON {}.{table} TO {a}",
                        ident(agent_schema)
                    ));
                }
                sql.push(format!(
                    "GRANT {} ON *.* TO {a}",
                    super::dialect::target_privileges(job.family, !job.triggers.is_empty())
                ));
            }
        }
        for s in sql {
            bounded(
                t,
                &format!("create the {side}'s seeding account"),
                conn.query_drop(s),
            )
            .await
            .map_err(|e| {
                Refused(vec![format!(
                    "Cannot create the seeding account on the {side} database: {e}"
                )])
            })?;
        }
    }
    Ok(())
}

/// Drops a job's seeding accounts on both sides (they are useless once it has ended).
pub async fn drop_accounts(admins: &Admins, job: &Job) -> Result<(), Refused> {
    for (target, login, side) in [
        (&admins.hub, &job.hub, "hub"),
        (&admins.office, &job.office, "office"),
    ] {
        let list: Vec<String> = SEED_HOSTS
            .iter()
            .map(|h| format!("{}@{}", literal(&login.user), literal(h)))
            .collect();
        let mut c = admins.open(target).await?;
        bounded(
            ADMIN_TIMEOUT,
            &format!("drop the {side}'s seeding account"),
            c.query_drop(format!("DROP USER IF EXISTS {}", list.join(", "))),
        )
        .await?;
    }
    Ok(())
}

pub(crate) fn generate_password() -> Secret {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    Secret::new(
        (0..32)
            .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
            .collect::<String>(),
    )
}

fn job_id() -> String {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace([':', '-'], "");
    format!("{stamp}-{:04x}", rand::random::<u16>())
}

/// How long the agent may take to pick a new job up (it looks every 2 s).
const PICKUP: Duration = Duration::from_secs(20);

/// How [`attach`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    /// The seed is done; `replica_waits` when the target's replication from the source is
    /// still to be configured.
    Done { replica_waits: bool },
    /// Ctrl-C: the seed goes on in the agent, unwatched.
    Left,
}

/// Draws the agent's progress for job `id` until it ends; with the administrators'
/// logins, drops the seeding accounts then. Ctrl-C leaves the seed running.
pub async fn attach(
    config: &Config,
    id: &str,
    admins: Option<&Admins>,
) -> Result<Attached, Refused> {
    let socket = super::socket_path(&config.status.socket);
    let tty = std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut last_line = String::new();
    let mut last_print = Instant::now() - Duration::from_secs(60);
    let mut last_phase = String::new();
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    loop {
        let doc = crate::status::query(&socket, Duration::from_secs(3))
            .await
            .ok()
            .and_then(|d| serde_json::from_str::<serde_json::Value>(d.trim()).ok())
            .unwrap_or_default();
        let ours = doc["job"] == id;
        match doc["state"].as_str() {
            Some("running") if ours => {
                let line = super::progress::bar_line(&doc, 30);
                let phase = doc["phase"].as_str().unwrap_or("").to_owned();
                if tty {
                    print!("\r{line}\x1b[K");
                    let _ = std::io::stdout().flush();
                } else if phase != last_phase || last_print.elapsed() >= Duration::from_secs(10) {
                    println!("{line}");
                    last_print = Instant::now();
                }
                last_line = line;
                last_phase = phase;
            }
            Some("done") if ours => {
                if tty && !last_line.is_empty() {
                    println!();
                }
                let message = doc["message"].as_str().unwrap_or("");
                println!("Seed done: {message}.");
                if let Some(a) = admins
                    && let Ok(Some(job)) = Job::load(&config.data.dir)
                {
                    drop_accounts(a, &job).await?;
                    println!("The seeding accounts are dropped.");
                }
                return Ok(Attached::Done {
                    replica_waits: message.contains(super::REPLICA_WAITS),
                });
            }
            Some("failed") if ours => {
                if tty && !last_line.is_empty() {
                    println!();
                }
                return Err(Refused(vec![format!(
                    "The seed stopped: {}",
                    doc["message"].as_str().unwrap_or("")
                )]));
            }
            _ if started.elapsed() > PICKUP && last_line.is_empty() => {
                return Err(Refused(vec![format!(
                    "The agent has not started the seed within {PICKUP:?} (its progress socket {} shows {}): is it running? It starts the seed by itself once it runs.",
                    socket.display(),
                    doc
                )]));
            }
            _ => {}
        }
        tokio::select! {
            _ = &mut interrupt => {
                println!("\nThe seed goes on in the agent; `tether seed` shows it again, `tether status` says how it is doing.");
                return Ok(Attached::Left);
            }
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_become_create_or_replace() {
        assert_eq!(
            or_replace(
                "CREATE DEFINER=`root`@`localhost` TRIGGER t BEFORE INSERT ON x FOR EACH ROW SET NEW.a = 1"
            ),
            "CREATE OR REPLACE DEFINER=`root`@`localhost` TRIGGER t BEFORE INSERT ON x FOR EACH ROW SET NEW.a = 1"
        );
        assert_eq!(
            or_replace("CREATE OR REPLACE VIEW v AS SELECT 1"),
            "CREATE OR REPLACE VIEW v AS SELECT 1"
        );
    }

    #[test]
    fn generated_passwords_are_long_and_masked() {
        let p = generate_password();
        assert_eq!(p.expose().len(), 32);
        assert_eq!(format!("{p:?}"), "***");
        assert_ne!(p.expose(), generate_password().expose());
    }
}
